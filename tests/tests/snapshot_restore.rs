//! Snapshot in the middle of an operation, restore into a fresh component instance: the new
//! instance finishes the operation and accepts completions of calls started before the snapshot.

use difftracker_engine::io::KubeEvent;
use difftracker_tests::label::*;
use difftracker_tests::*;

const UID: &str = "5e5e5e5e-0000-4000-8000-000000000005";

fn cluster(h: &mut Harness) -> difftracker_engine::io::Service {
    let svc = sample_service("default", "api", UID);
    h.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
    ])
    .unwrap();
    svc
}

#[test]
fn restored_instance_accepts_the_completion_of_a_call_started_before_the_snapshot() {
    let mut h = Harness::wasm();
    h.script.hold(PUT_LB, 3);
    cluster(&mut h);
    h.run_until(50, |h| h.first(PUT_LB).is_some()).unwrap();
    let lb_call = h.calls(PUT_LB)[0].id;
    assert_eq!(h.in_flight(), 1, "PUT loadBalancers is in flight at the snapshot");

    h.swap_to_fresh_instance().unwrap();
    h.run_until_idle(100).unwrap();

    assert!(h.completed.iter().any(|c| c.id == lb_call && c.ok), "the pre-snapshot call completed into the new instance");
    assert_eq!(h.calls(PUT_LB).len(), 1, "the new instance did not start the load balancer again: {:?}", h.labels());
    assert_eq!(h.labels(), vec![ADD_FINALIZERS, PUT_PIP, PUT_LB, UPDATE_SERVICES, PATCH_INGRESS, UPDATE_LOCATIONS]);
    assert_eq!(h.state_count("created"), 1);
}

#[test]
fn call_ids_stay_unique_across_the_swap() {
    let mut h = Harness::wasm();
    h.script.hold(PUT_PIP, 2);
    cluster(&mut h);
    h.run_until(50, |h| h.first(PUT_PIP).is_some()).unwrap();
    h.swap_to_fresh_instance().unwrap();
    h.run_until_idle(100).unwrap();
    let mut ids: Vec<u64> = h.started.iter().map(|s| s.id).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate call ids: {:?}", h.started);
}

#[test]
fn restored_instance_finishes_a_delete_started_before_the_snapshot() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h);
    h.run_until_idle(100).unwrap();
    h.script.hold(DELETE_LB, 2);
    h.deliver(vec![KubeEvent::ServiceApplied(deleting(&svc))]).unwrap();
    h.run_until(50, |h| h.first(DELETE_LB).is_some()).unwrap();

    h.swap_to_fresh_instance().unwrap();
    h.run_until_idle(100).unwrap();
    assert_eq!(h.calls(DELETE_LB).len(), 1);
    assert_eq!(h.labels().last(), Some(&REMOVE_FINALIZERS));
    assert!(h.status().unwrap().states.iter().all(|(_, n)| *n == 0));
}

#[test]
fn snapshot_and_restore_round_trip_byte_for_byte() {
    let mut h = Harness::wasm();
    h.script.hold(UPDATE_SERVICES, 2);
    cluster(&mut h);
    h.run_until(50, |h| h.first(UPDATE_SERVICES).is_some()).unwrap();
    let before = h.engine.snapshot().unwrap();
    h.swap_to_fresh_instance().unwrap();
    assert_eq!(h.engine.snapshot().unwrap(), before);
}

#[test]
fn a_garbage_snapshot_is_refused_and_the_instance_keeps_working() {
    let mut h = Harness::wasm();
    cluster(&mut h);
    h.step().unwrap();
    let err = h.engine.restore(b"{\"not\": \"a snapshot\"}").unwrap_err();
    assert!(format!("{err:#}").contains("restore"), "{err:#}");
    h.run_until_idle(100).unwrap();
    assert_eq!(h.state_count("created"), 1);
}
