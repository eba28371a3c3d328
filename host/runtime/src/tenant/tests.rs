//! Trap recovery with a native engine that panics where a guest would trap.

use super::recovery::{GuardedEngine, Input, TickReport};
use super::*;
use crate::driver::{CallIds, Intercept, Intercepted, NativeEngine, TickResult};
use crate::k8s::KubeObject;
use difftracker_engine::io::{Completion, TenantConfig};

/// Panics on a Service named `poison` and on the completion of call `bad_call`, as a guest
/// would trap.
struct Poisonable {
    bad_call: Option<CallId>,
}

impl Intercept for Poisonable {
    fn deliver(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
        if events.iter().any(|e| matches!(e, KubeEvent::ServiceApplied(s) if s.meta.name == "poison")) {
            panic!("poisoned event");
        }
        inner.deliver(now_ms, events)
    }
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        if completions.iter().any(|c| Some(c.id) == self.bad_call) {
            panic!("poisoned completion");
        }
        inner.tick(now_ms, completions)
    }
}

fn poisonable(ids: CallIds, bad_call: Option<CallId>) -> Box<dyn EngineDriver> {
    Box::new(Intercepted::new(Box::new(NativeEngine::new(ids)), Poisonable { bad_call }))
}

fn engine(bad_call: Option<CallId>, snapshots: SnapshotPolicy) -> GuardedEngine {
    let mut first = poisonable(CallIds::default(), bad_call);
    first.create(&TenantConfig { tenant: "t".into(), seed: 3, ..TenantConfig::default() }).unwrap();
    let recovery = Recovery::new(move |ids| Ok(poisonable(ids, bad_call))).with_snapshots(snapshots);
    GuardedEngine::new("t".into(), first, Some(recovery))
}

/// An engine started up against an empty cloud and cluster: the marker delivered, its five
/// list calls (ids 1-5) answered with empty lists.
fn booted(bad_call: Option<CallId>, snapshots: SnapshotPolicy) -> GuardedEngine {
    let mut k = engine(bad_call, snapshots);
    let mut out = TickReport::default();
    k.iterate(0, 500, vec![KubeEvent::InitialListsComplete], vec![], &mut out).unwrap();
    let lists: Vec<Completion> = out.tick.started.iter().map(|(id, call)| Completion { id: *id, outcome: Ok(empty_list(call)) }).collect();
    assert_eq!(lists.len(), 5);
    let mut out = TickReport::default();
    k.iterate(0, 600, vec![], lists, &mut out).unwrap();
    assert_eq!(out.status.initialization.phase, difftracker_engine::io::InitPhase::Ready);
    k
}

fn empty_list(call: &difftracker_engine::io::Call) -> difftracker_engine::io::CallOutput {
    use difftracker_engine::io::{Call, CallOutput, CloudCall};
    match call {
        Call::Cloud(CloudCall::GetSgwServices) => CallOutput::SgwServices(vec![]),
        Call::Cloud(CloudCall::GetAddressLocations) => CallOutput::AddressLocations(vec![]),
        Call::Cloud(CloudCall::ListPublicIps) => CallOutput::PublicIps(vec![]),
        _ => CallOutput::Names(vec![]),
    }
}

fn failed(id: CallId) -> Completion {
    Completion { id, outcome: Err(CallError::http(500, "InternalServerError", "try again")) }
}

/// A Kubernetes object as the API server prints it, as the engine receives it.
fn object(json: serde_json::Value) -> KubeEvent {
    KubeObject::from_json(&json).unwrap().unwrap().applied()
}

fn service(name: &str, n: u32) -> KubeEvent {
    object(serde_json::json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"namespace": "default", "name": name, "uid": format!("aaaa0000-0000-4000-8000-{n:012}"), "resourceVersion": "1"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}}))
}

fn node() -> KubeEvent {
    object(serde_json::json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n1", "uid": "node-uid-n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.4"}]}}))
}

#[test]
fn a_panicking_event_is_quarantined_and_the_rest_of_the_tick_applied() {
    for snapshots in [SnapshotPolicy::every_tick(), SnapshotPolicy::every_inputs(usize::MAX)] {
        let mut k = booted(None, snapshots);
        let mut first = TickReport::default();
        k.iterate(1, 1_000, vec![node(), service("a", 1)], vec![], &mut first).unwrap();
        assert_eq!(first.restarts, 0);
        let first_ids: Vec<CallId> = first.tick.started.iter().map(|(id, _)| *id).collect();
        assert!(!first_ids.is_empty());

        // The poisoned Service between two good ones, and a failed completion of a's first call.
        let mut second = TickReport::default();
        let events = vec![service("b", 2), service("poison", 3), service("c", 4)];
        k.iterate(2, 2_000, events, vec![failed(first_ids[0])], &mut second).unwrap();
        assert_eq!(second.restarts, 1);
        assert_eq!(second.quarantined.len(), 1);
        assert!(matches!(&second.quarantined[0].input, Input::Event(e) if event_summary(e).contains("default/poison")));
        assert!(second.quarantined[0].reason.contains("poisoned event"), "{}", second.quarantined[0].reason);
        // a, b and c are tracked; call ids went on from where they were, none reused.
        let tracked: u32 = second.status.states.iter().map(|(_, n)| n).sum();
        assert_eq!(tracked, 3, "{:?}", second.status.states);
        let max_first = *first_ids.iter().max().unwrap();
        assert!(second.tick.started.iter().all(|(id, _)| *id > max_first), "{:?}", second.tick.started);
        assert!(!k.driver.is_poisoned());
    }
}

#[test]
fn a_panicking_completion_is_retried_once_then_quarantined() {
    // Call 6 is the first call the engine starts after its five start-up lists.
    let mut k = booted(Some(6), SnapshotPolicy::every_inputs(usize::MAX));
    let mut first = TickReport::default();
    k.iterate(1, 1_000, vec![node(), service("a", 1)], vec![], &mut first).unwrap();
    assert_eq!(first.tick.started[0].0, 6);
    let others: Vec<Completion> = first.tick.started[1..].iter().map(|(id, _)| failed(*id)).collect();
    let mut completions = vec![failed(6)];
    completions.extend(others.clone());

    let mut second = TickReport::default();
    k.iterate(2, 2_000, vec![service("b", 2)], completions, &mut second).unwrap();
    assert_eq!(second.restarts, 1);
    let dropped: Vec<CallId> = second
        .quarantined
        .iter()
        .map(|d| match &d.input {
            Input::Completion(c) => c.id,
            Input::Event(_) => panic!("an event was quarantined"),
        })
        .collect();
    assert_eq!(dropped, vec![6], "only the poisoned completion is dropped");
    let tracked: u32 = second.status.states.iter().map(|(_, n)| n).sum();
    assert_eq!(tracked, 2, "b was applied: {:?}", second.status.states);
}

#[test]
fn a_tick_that_panics_with_no_input_on_a_fresh_instance_stops_the_tenant() {
    struct AlwaysPanics;
    impl Intercept for AlwaysPanics {
        fn tick(&mut self, _: &mut dyn EngineDriver, _: u64, _: Vec<Completion>) -> Result<TickResult> {
            panic!("always")
        }
    }
    let always_panics = |ids| -> Box<dyn EngineDriver> { Box::new(Intercepted::new(Box::new(NativeEngine::new(ids)), AlwaysPanics)) };
    let mut first = always_panics(CallIds::default());
    first.create(&TenantConfig { tenant: "t".into(), seed: 3, ..TenantConfig::default() }).unwrap();
    let recovery = Recovery::new(move |ids| Ok(always_panics(ids)));
    let mut k = GuardedEngine::new("t".into(), first, Some(recovery));
    let mut out = TickReport::default();
    let err = k.iterate(1, 1_000, vec![], vec![], &mut out).unwrap_err();
    assert!(format!("{err:#}").contains("with no new input"), "{err:#}");
    assert_eq!(out.restarts, 1);
}

#[test]
fn snapshots_follow_the_policy() {
    let mut k = engine(None, SnapshotPolicy::every_inputs(3));
    let mut out = TickReport::default();
    k.iterate(1, 1_000, vec![node()], vec![], &mut out).unwrap();
    // deliver (2 inputs) + tick (1): due, taken, log empty.
    assert!(k.recovery.as_ref().unwrap().log_len() == 0);
    k.iterate(2, 2_000, vec![], vec![], &mut out).unwrap();
    assert_eq!(k.recovery.as_ref().unwrap().log_len(), 1);
    k.iterate(3, 3_000, vec![], vec![], &mut out).unwrap();
    assert_eq!(k.recovery.as_ref().unwrap().log_len(), 2);
    k.iterate(4, 4_000, vec![], vec![], &mut out).unwrap();
    assert!(k.recovery.as_ref().unwrap().log_len() == 0);
}

#[test]
fn reasons_are_one_line_without_the_wasm_backtrace() {
    let reason = "guest failed in `deliver`: error while executing at wasm backtrace:\n    0: 0x121810 - e.wasm!sbrk\n    1: 0x1222ee - e.wasm!dlmalloc\n\nCaused by:\n    forcing trap when growing memory to 17956864 bytes\n";
    assert_eq!(
        brief_reason(reason),
        "guest failed in `deliver`: error while executing at wasm backtrace (forcing trap when growing memory to 17956864 bytes)"
    );
    assert_eq!(brief_reason("engine panicked: boom"), "engine panicked: boom");
}
