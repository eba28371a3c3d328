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
    k.iterate(0, 500, (vec![KubeEvent::InitialListsComplete], vec![]), StatusRead::AfterTick, &mut out).unwrap();
    let lists: Vec<Completion> = out.tick.started.iter().map(|(id, call)| Completion { id: *id, outcome: Ok(empty_list(call)) }).collect();
    assert_eq!(lists.len(), 5);
    let mut out = TickReport::default();
    k.iterate(0, 600, (vec![], lists), StatusRead::AfterTick, &mut out).unwrap();
    assert_eq!(out.status.as_ref().unwrap().initialization.phase, difftracker_engine::io::InitPhase::Ready);
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
        k.iterate(1, 1_000, (vec![node(), service("a", 1)], vec![]), StatusRead::AfterTick, &mut first).unwrap();
        assert_eq!(first.restarts, 0);
        let first_ids: Vec<CallId> = first.tick.started.iter().map(|(id, _)| *id).collect();
        assert!(!first_ids.is_empty());

        // The poisoned Service between two good ones, and a failed completion of a's first call.
        let mut second = TickReport::default();
        let events = vec![service("b", 2), service("poison", 3), service("c", 4)];
        k.iterate(2, 2_000, (events, vec![failed(first_ids[0])]), StatusRead::AfterTick, &mut second).unwrap();
        assert_eq!(second.restarts, 1);
        assert_eq!(second.quarantined.len(), 1);
        assert!(matches!(&second.quarantined[0].input, Input::Event(e) if event_summary(e).contains("default/poison")));
        assert!(second.quarantined[0].reason.contains("poisoned event"), "{}", second.quarantined[0].reason);
        // a, b and c are tracked; call ids went on from where they were, none reused.
        let tracked: u32 = second.status.as_ref().unwrap().states.iter().map(|(_, n)| n).sum();
        assert_eq!(tracked, 3, "{:?}", second.status.as_ref().unwrap().states);
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
    k.iterate(1, 1_000, (vec![node(), service("a", 1)], vec![]), StatusRead::AfterTick, &mut first).unwrap();
    assert_eq!(first.tick.started[0].0, 6);
    let others: Vec<Completion> = first.tick.started[1..].iter().map(|(id, _)| failed(*id)).collect();
    let mut completions = vec![failed(6)];
    completions.extend(others.clone());

    let mut second = TickReport::default();
    k.iterate(2, 2_000, (vec![service("b", 2)], completions), StatusRead::AfterTick, &mut second).unwrap();
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
    let tracked: u32 = second.status.as_ref().unwrap().states.iter().map(|(_, n)| n).sum();
    assert_eq!(tracked, 2, "b was applied: {:?}", second.status.as_ref().unwrap().states);
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
    let err = k.iterate(1, 1_000, (vec![], vec![]), StatusRead::AfterTick, &mut out).unwrap_err();
    assert!(format!("{err:#}").contains("with no new input"), "{err:#}");
    assert_eq!(out.restarts, 1);
}

#[test]
fn snapshots_follow_the_policy() {
    let mut k = engine(None, SnapshotPolicy::every_inputs(3));
    let mut out = TickReport::default();
    k.iterate(1, 1_000, (vec![node()], vec![]), StatusRead::AfterTick, &mut out).unwrap();
    // deliver (2 inputs) + tick (1): due, taken, log empty.
    assert!(k.recovery.as_ref().unwrap().log_len() == 0);
    k.iterate(2, 2_000, (vec![], vec![]), StatusRead::AfterTick, &mut out).unwrap();
    assert_eq!(k.recovery.as_ref().unwrap().log_len(), 1);
    k.iterate(3, 3_000, (vec![], vec![]), StatusRead::AfterTick, &mut out).unwrap();
    assert_eq!(k.recovery.as_ref().unwrap().log_len(), 2);
    k.iterate(4, 4_000, (vec![], vec![]), StatusRead::AfterTick, &mut out).unwrap();
    assert!(k.recovery.as_ref().unwrap().log_len() == 0);
}

/// The log's cap grows with the snapshot: a tenant whose snapshot is some KiB big logs that
/// many times `logged_inputs_per_snapshot_kib` inputs before the next snapshot, not the floor.
#[test]
fn the_log_cap_grows_with_the_snapshot() {
    let floor = SnapshotPolicy { cost_ratio: u32::MAX, max_logged_inputs: 3, logged_inputs_per_snapshot_kib: 0 };
    let scaled = SnapshotPolicy { logged_inputs_per_snapshot_kib: 1_000, ..floor };
    let logged_after = |policy| {
        let mut k = engine(None, policy);
        let mut out = TickReport::default();
        // Enough Services for a snapshot of some KiB; the first iterate takes the checkpoint.
        let services: Vec<KubeEvent> = (0..200).map(|i| service(&format!("svc-{i}"), i)).collect();
        k.iterate(1, 1_000, (services, vec![]), StatusRead::AfterTick, &mut out).unwrap();
        k.iterate(2, 1_500, (vec![], vec![]), StatusRead::AfterTick, &mut out).unwrap();
        assert!(out.checkpoint_bytes.unwrap_or(0) >= 1024, "the snapshot is at least a KiB");
        for t in 3..10 {
            k.iterate(t, 1_000 * t, (vec![], vec![]), StatusRead::AfterTick, &mut out).unwrap();
        }
        k.recovery.as_ref().unwrap().log_len()
    };
    // With the floor alone a snapshot comes every 3 inputs; scaled, the 8 ticks stay logged.
    assert!(logged_after(floor) < 3);
    assert_eq!(logged_after(scaled), 8);
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

// ------------------------------------------------------------------------ backoff

use crate::backend::{CallFuture, CloudBackend, KubeBackend};
use crate::executor::{Backends, Executor, ManualClock};
use std::time::Duration;

/// Answers every call at once: empty lists, `Done` otherwise.
struct InstantBackend;

impl CloudBackend for InstantBackend {
    fn call(&self, call: difftracker_engine::io::CloudCall) -> CallFuture {
        let output = empty_list(&difftracker_engine::io::Call::Cloud(call));
        Box::pin(async move { Ok(output) })
    }
}

impl KubeBackend for InstantBackend {
    fn call(&self, _call: difftracker_engine::io::KubeCall) -> CallFuture {
        Box::pin(async move { Ok(difftracker_engine::io::CallOutput::Done) })
    }
    fn record_event(&self, _event: KubeEventRecord) {}
}

/// A tenant on a manual clock whose engine traps on every Service named `poison`.
fn poisonable_tenant(clock: &ManualClock, backoff: Option<BackoffPolicy>, max_restarts: u32) -> TenantHandle {
    let mut first = poisonable(CallIds::default(), None);
    first.create(&TenantConfig { tenant: "t".into(), seed: 3, ..TenantConfig::default() }).unwrap();
    let mut recovery = Recovery::new(|ids| Ok(poisonable(ids, None)));
    recovery.max_restarts = max_restarts;
    let options = TenantOptions::new("t").with_recovery(recovery).with_backoff(backoff);
    let backend = Arc::new(InstantBackend);
    spawn_tenant(&Executor::new(Arc::new(clock.clone()), 16), options, first, Backends { cloud: backend.clone(), kube: backend }, None)
}

const POLICY: BackoffPolicy =
    BackoffPolicy { initial: Duration::from_millis(100), max: Duration::from_millis(300), reset_after_clean_ticks: 3, low_priority: true };

#[test]
fn the_backoff_doubles_up_to_its_bound() {
    let delays: Vec<u128> = (1..=5).map(|n| POLICY.delay(n).as_millis()).collect();
    assert_eq!(delays, vec![100, 200, 300, 300, 300]);
    let default = BackoffPolicy::default();
    assert_eq!(default.delay(1), Duration::from_millis(100));
    assert_eq!(default.delay(9), Duration::from_millis(25_600));
    assert_eq!(default.delay(10), Duration::from_secs(30));
    assert_eq!(default.delay(u32::MAX), Duration::from_secs(30), "no overflow");
}

/// A trapping tick delays the next one by the backoff, longer for each one in a row; inputs
/// that arrive meanwhile wait for the tick at the backoff's end; clean ticks forget it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_tenant_waits_longer_before_each_tick_and_clean_ticks_forget_it() {
    let clock = ManualClock::new(1_000);
    let tenant = poisonable_tenant(&clock, Some(POLICY), 10);
    tenant.wait_for(|s| s.ticks >= 1).await.unwrap();

    tenant.deliver(vec![service("poison", 1)]).unwrap();
    let first = tenant.wait_for(|s| s.consecutive_traps == 1).await.unwrap();
    assert_eq!(first.backoff, Some(Duration::from_millis(100)));
    assert_eq!((first.traps, first.restarts, first.last_tick_ms), (1, 1, 1_000));
    let warning = first.warning.clone().unwrap_or_default();
    assert!(warning.contains("1 tick(s) in a row") && warning.contains("100 ms") && warning.contains("poisoned event"), "{warning}");

    // Delivered at once, the next poison waits for the backoff's end (1,100) to be ticked.
    tenant.deliver(vec![service("poison", 2)]).unwrap();
    clock.advance(99);
    tenant.deliver(vec![service("poison", 3)]).unwrap();
    clock.advance(1);
    let second = tenant.wait_for(|s| s.consecutive_traps == 2).await.unwrap();
    assert_eq!(second.last_tick_ms, 1_100, "ticked when the backoff ended: {second:?}");
    assert_eq!(second.ticks, first.ticks + 1, "both poisons in one tick");
    assert_eq!(second.backoff, Some(Duration::from_millis(200)));

    clock.advance(200);
    tenant.deliver(vec![service("poison", 4)]).unwrap();
    let third = tenant.wait_for(|s| s.consecutive_traps == 3).await.unwrap();
    assert_eq!(third.backoff, Some(Duration::from_millis(300)));
    clock.advance(300);
    tenant.deliver(vec![service("poison", 5)]).unwrap();
    let fourth = tenant.wait_for(|s| s.consecutive_traps == 4).await.unwrap();
    assert_eq!(fourth.backoff, Some(Duration::from_millis(300)), "bounded");
    assert_eq!(fourth.traps, 4);

    // Three clean ticks after the backoff: forgotten.
    clock.advance(300);
    for n in 0..3u32 {
        let ticks = tenant.status().ticks;
        tenant.deliver(vec![service(&format!("good-{n}"), 10 + n)]).unwrap();
        tenant.wait_for(|s| s.ticks > ticks).await.unwrap();
    }
    let clean = tenant.wait_for(|s| s.consecutive_traps == 0).await.unwrap();
    assert_eq!((clean.backoff, clean.warning.as_deref()), (None, None));
    assert!(!clean.stopped && clean.error.is_none());
    tenant.stop().await.unwrap();
}

/// Past `Recovery::max_restarts` the tenant stops, the reason in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_keeps_trapping_through_its_backoff_stops_with_the_reason() {
    let clock = ManualClock::new(1_000);
    let tenant = poisonable_tenant(&clock, Some(POLICY), 2);
    tenant.wait_for(|s| s.ticks >= 1).await.unwrap();
    for n in 1..=2u32 {
        tenant.deliver(vec![service("poison", n)]).unwrap();
        let status = tenant.wait_for(|s| s.consecutive_traps == n).await.unwrap();
        clock.advance(status.backoff.unwrap().as_millis() as u64);
    }
    tenant.deliver(vec![service("poison", 3)]).unwrap();
    assert!(tenant.wait_for(|_| false).await.is_err());
    let status = tenant.status();
    assert!(status.stopped);
    let error = status.error.clone().unwrap_or_default();
    assert!(error.contains("trapped again after 2 restart(s)") && error.contains("poisoned event"), "{error}");
    assert_eq!((status.traps, status.restarts), (3, 2));
}

/// Without a backoff (the comparison of `bench-tenants --no-backoff`), the next tick is not delayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backoff_the_next_tick_comes_at_once() {
    let clock = ManualClock::new(1_000);
    let tenant = poisonable_tenant(&clock, None, 10);
    tenant.wait_for(|s| s.ticks >= 1).await.unwrap();
    for n in 1..=3u64 {
        tenant.deliver(vec![service("poison", n as u32)]).unwrap();
        let status = tenant.wait_for(|s| s.traps == n).await.unwrap();
        assert_eq!((status.backoff, status.consecutive_traps, status.last_tick_ms), (None, 0, 1_000));
    }
    tenant.stop().await.unwrap();
}
