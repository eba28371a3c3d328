//! `difftracker explain`: for every state a Service can be in (docs/ENGINE.md 4.1), the real
//! component's `operations` export says so, and explain's lines say the state, what it means,
//! the next retry and what the operation waits for; from a replay report, the last error with
//! its ARM code. Issue 16, item 3.

use difftracker_engine::io::{InitPhase, KubeEvent, OperationStatus};
use difftracker_simulation::explain::{entry, explain, find, state_meaning};
use difftracker_simulation::replay::{replay, ReplayOptions};
use difftracker_simulation::samples::{deleting, sample_faults, sample_trace};
use difftracker_tests::label::*;
use difftracker_tests::*;
use serde_json::{json, Value};

const UID: &str = "6f1c2a9e-0000-4000-8000-00000000e001";

fn cluster(h: &mut Harness, uid: &str, name: &str) -> difftracker_engine::io::Service {
    let svc = sample_service("default", name, uid);
    h.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
    ])
    .unwrap();
    svc
}

fn operation(h: &mut Harness, uid: &str) -> OperationStatus {
    let ops = h.engine.operations().expect("the operations export answers");
    ops.into_iter().find(|o| o.identity == uid).unwrap_or_else(|| panic!("{uid} is not tracked"))
}

/// Ticks until the operation of `uid` is in `state` (at most 50 ticks), then checks explain's
/// lines against the engine's account and its status counts; returns the lines.
fn reach(h: &mut Harness, uid: &str, state: &str) -> (OperationStatus, Vec<String>) {
    h.run_until(50, |h| h.statuses.last().is_some_and(|s| s.states.iter().any(|(l, n)| l == state && *n > 0))).unwrap();
    let status = h.engine.status().unwrap();
    assert!(status.states.iter().any(|(l, n)| l == state && *n > 0), "never reached {state}: {:?}", status.states);
    let op = operation(h, uid);
    assert_eq!(op.state, state);
    let lines = explain(uid, &entry(&op, None));
    assert!(lines[0].starts_with(&format!("Service default/{} (UID {uid}): {state} — {}", op.name, state_meaning(state))), "{lines:#?}");
    let waiting = lines.iter().find(|l| l.starts_with("waiting for: ")).expect("a waiting-for line");
    let expected = if op.waiting_for.is_empty() { "nothing" } else { op.waiting_for.as_str() };
    assert_eq!(waiting, &format!("waiting for: {expected}"));
    let next = lines.iter().find(|l| l.starts_with("next retry: ")).expect("a next-retry line");
    assert_eq!(next.starts_with("next retry: at "), op.next_retry_at_ms.is_some(), "{next} / {op:?}");
    (op, lines)
}

#[test]
fn every_state_of_one_service_is_explained_from_the_engines_own_account() {
    let mut h = Harness::wasm();
    h.script.hold(PUT_PIP, 3);
    let svc = cluster(&mut h, UID, "web");

    let (op, _) = reach(&mut h, UID, "creation_in_progress");
    assert!(op.in_flight, "its create runs: {op:?}");
    assert_eq!(op.waiting_for, "its cloud call in flight");

    reach(&mut h, UID, "created");
    h.run_until_idle(100).unwrap();
    let op = operation(&mut h, UID);
    assert_eq!((op.state.as_str(), op.waiting_for.as_str()), ("created", ""), "a created, idle Service waits for nothing");

    // A spec change while created: the load balancer is PUT again.
    let mut changed = svc.clone();
    changed.ports[0].port = 8443;
    changed.meta.resource_version = "2".into();
    h.script.hold(PUT_LB, 3);
    h.deliver(vec![KubeEvent::ServiceApplied(changed.clone())]).unwrap();
    reach(&mut h, UID, "update_in_progress");
    h.run_until_idle(100).unwrap();
    assert_eq!(operation(&mut h, UID).state, "created");

    // Deletion: its addresses drain from NRP first (a location sync, held here), then its
    // cloud deletion runs.
    h.script.hold(UPDATE_LOCATIONS, 3);
    h.script.hold(DELETE_LB, 3);
    h.deliver(vec![KubeEvent::ServiceApplied(deleting(&changed))]).unwrap();
    let (op, _) = reach(&mut h, UID, "deletion_pending");
    assert!(op.waiting_for.starts_with("a drain: its addresses to leave NRP"), "{op:?}");
    let (op, _) = reach(&mut h, UID, "deletion_in_progress");
    assert!(op.in_flight || !op.waiting_for.is_empty(), "a running deletion waits for something: {op:?}");
    h.run_until_idle(200).unwrap();
    assert!(h.engine.operations().unwrap().iter().all(|o| o.identity != UID), "deleted, no longer tracked");
}

#[test]
fn a_failed_create_names_its_next_retry_and_its_cause() {
    let mut h = Harness::wasm();
    h.script.fail(PUT_PIP, 1, 500, "InternalServerError");
    cluster(&mut h, UID, "web");
    h.run_until(50, |h| h.completed.iter().any(|c| c.label == PUT_PIP && !c.ok)).unwrap();
    h.step().unwrap();
    let op = operation(&mut h, UID);
    assert_eq!(op.retry_count, 1, "{op:?}");
    let at = op.next_retry_at_ms.expect("a retry is scheduled after a 500");
    let lines = explain(UID, &entry(&op, None));
    let next = lines.iter().find(|l| l.starts_with("next retry: ")).unwrap();
    assert!(next.contains("1 failed attempt(s) in this burst"), "{next}");
    let waiting = lines.iter().find(|l| l.starts_with("waiting for: ")).unwrap();
    assert!(waiting.contains(&format!("{at} ms")), "{waiting} / {op:?}");
}

#[test]
fn a_service_beyond_the_dispatch_slots_is_not_started_and_waits_for_a_slot() {
    let mut h = Harness::wasm();
    // Eleven Services, each create held: ten slots run, the eleventh waits.
    for _ in 0..11 {
        h.script.hold(PUT_PIP, 20);
    }
    let mut events = vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4"))];
    let uids: Vec<String> = (0..11).map(|i| format!("6f1c2a9e-0000-4000-8000-0000000010{i:02}")).collect();
    for (i, uid) in uids.iter().enumerate() {
        events.push(KubeEvent::ServiceApplied(sample_service("default", &format!("svc-{i:02}"), uid)));
    }
    h.deliver(events).unwrap();
    for _ in 0..3 {
        h.step().unwrap();
    }
    let ops = h.engine.operations().unwrap();
    assert_eq!(ops.len(), 11);
    let waiting: Vec<&OperationStatus> = ops.iter().filter(|o| o.state == "not_started").collect();
    assert_eq!(waiting.len(), 1, "{ops:#?}");
    let lines = explain(&waiting[0].identity, &entry(waiting[0], None));
    assert!(lines[0].contains(": not_started — tracked, its create not started yet"), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "waiting for: a dispatch slot (10 of 10 in use)"), "{lines:#?}");
    assert_eq!(ops.iter().filter(|o| o.in_flight).count(), 10);
}

#[test]
fn an_operation_of_the_start_up_pass_waits_for_the_init_gate() {
    let mut h = Harness::wasm_starting();
    h.script.hold(PUT_PIP, 5);
    let svc = sample_service("default", "web", UID);
    h.start(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::ServiceApplied(svc)]).unwrap();
    h.run_until(30, |h| {
        h.statuses.last().is_some_and(|s| s.initialization.phase != InitPhase::Listing && s.states.iter().any(|(_, n)| *n > 0))
    })
    .unwrap();
    let phase = h.statuses.last().unwrap().initialization.phase;
    assert_ne!(phase, InitPhase::Ready, "the start-up pass is still running");
    let op = operation(&mut h, UID);
    let lines = explain(UID, &entry(&op, None));
    assert!(lines.iter().any(|l| l.starts_with("waiting for: the init gate")), "{lines:#?}");
}

#[test]
fn the_component_and_the_native_build_describe_the_same_operations() {
    let mut outs = Vec::new();
    for mut h in [Harness::wasm(), Harness::native()] {
        h.script.fail(PUT_LB, 2, 429, "TooManyRequests");
        cluster(&mut h, UID, "web");
        for _ in 0..6 {
            h.step().unwrap();
        }
        outs.push(h.engine.operations().unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0].len(), 1);
}

#[test]
fn states_no_input_reaches_are_still_explained() {
    // `unknown` comes only from a snapshot of a newer engine; `not_tracked` is a report's entry
    // for a Service whose cleanup finished.
    let unknown = json!({"kind": "inbound", "namespace": "default", "name": "web", "state": "unknown", "retry_count": 0,
                         "next_retry_at_ms": null, "waiting_for": "", "calls": {"calls": 0, "failed": 0, "last_call": null, "last_error": null}});
    let lines = explain(UID, &unknown);
    assert_eq!(lines[0], format!("Service default/web (UID {UID}): unknown — {}", state_meaning("unknown")));
    assert!(lines.contains(&"waiting for: nothing".to_string()));
    let gone = json!({"state": "not_tracked", "calls": {"calls": 7, "failed": 0,
        "last_call": {"at_ms": 61000, "call": "remove-service-finalizers", "done_ms": 61000, "result": "ok"}, "last_error": null}});
    let lines = explain(UID, &gone);
    assert!(lines[0].ends_with(state_meaning("not_tracked")), "{lines:#?}");
    assert_eq!(lines[1], "history: 7 call(s) for it, 0 failed; the last: remove-service-finalizers at 1m01.000s → ok");
}

#[test]
fn from_a_replay_report_the_last_error_carries_its_arm_code() {
    let trace = sample_trace().unwrap();
    let options = ReplayOptions {
        engine: difftracker_runtime::driver::EngineKind::Native,
        faults: Some(sample_faults().unwrap()),
        ..ReplayOptions::default()
    };
    let report = replay(&trace, &options).unwrap().report;
    let ops = report["operations"].as_object().expect("the report has an operations section");
    assert!(!ops.is_empty());
    // Every call the report counts for an identity is in the cloud and Kubernetes totals.
    let cloud = |op: &Value| {
        op["calls"]["last_error"]["call"].as_str().is_some_and(|c| ["PUT ", "DELETE ", "GET ", "POST "].iter().any(|m| c.starts_with(m)))
    };
    let (id, op) = ops.iter().find(|(_, op)| cloud(op)).expect("the sample faults fail some cloud call");
    let error = &op["calls"]["last_error"];
    let result = error["result"].as_str().unwrap();
    let key = format!("{} {result}", error["call"].as_str().unwrap());
    assert!(report["cloud_errors"].get(&key).is_some_and(|n| n.as_u64() > Some(0)), "{key} in {}", report["cloud_errors"]);
    let (found, entry) = find(&report["operations"], id).unwrap();
    let lines = explain(&found, &entry);
    let (status, code) = result.split_once(' ').unwrap_or((result, "none"));
    let last = lines.iter().find(|l| l.starts_with("last error: ")).unwrap();
    assert!(last.contains(&format!("HTTP {status}, ARM code {code}")), "{last}");
    // By namespace/name too, for a Service.
    if let (Some(ns), Some(name)) = (op["namespace"].as_str().filter(|s| !s.is_empty()), op["name"].as_str()) {
        assert_eq!(find(&report["operations"], &format!("{ns}/{name}")).unwrap().0, *id);
    }
    assert!(find(&report["operations"], "nobody/here").is_err());
}
