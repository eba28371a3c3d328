//! The starred scenarios of ENGINE.md section 13, run through the real component in the in-host
//! harness (scripted imports, virtual time). Each drives the `.wasm` only through its exports;
//! where a scenario speaks of internal state (an operation's state, its retry count, a pending
//! deletion) the test reads it from the component's own snapshot, restored into the engine crate.

use difftracker_engine::io::{
    Call, CloudCall, KubeCall, KubeEvent, LocationUpdate, ObjectMeta, Pod, Service, UpdateAction,
};
use difftracker_engine::{Engine, Identity, ResourceState};
use difftracker_tests::label::*;
use difftracker_tests::*;

const UID: &str = "5e0c3a1b-0000-4000-8000-0000000000aa";
const OVERLAY: &str = "ServiceWithOverlayMappingsCannotBeDeleted";
const ADD_POD_FINALIZER: &str = "add-pod-finalizer";
const DELETE_NAT: &str = "DELETE natGateways";
use difftracker_engine::names::{EGRESS_LABEL, POD_FINALIZER};

/// The component's state, read through its snapshot.
fn view(h: &mut Harness) -> Engine {
    Engine::restore(&h.engine.snapshot().expect("snapshot")).expect("the component's snapshot restores natively")
}

fn state(h: &mut Harness, uid: &str) -> Option<ResourceState> {
    view(h).operation(&Identity::new(uid)).map(|op| op.state)
}

/// Node `node-1` (10.0.0.4), the Service and its slice with the given ready endpoints on it.
fn cluster(h: &mut Harness, endpoints: &[&str]) -> Service {
    let svc = sample_service("default", "web", UID);
    let eps: Vec<(&str, &str)> = endpoints.iter().map(|ip| (*ip, "node-1")).collect();
    h.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &eps)),
    ])
    .unwrap();
    svc
}

fn locations(started: &Started) -> &[LocationUpdate] {
    match &started.call {
        Call::Cloud(CloudCall::UpdateAddressLocations(l)) => l,
        other => panic!("not a location sync: {other:?}"),
    }
}

fn is_unregister(started: &Started) -> bool {
    matches!(&started.call, Call::Cloud(CloudCall::UpdateServices(r)) if r.iter().any(|r| r.is_delete))
}

/// Index of the first started call matching `pred`.
fn position(h: &Harness, pred: impl Fn(&Started) -> bool) -> Option<usize> {
    h.started.iter().position(pred)
}

#[test]
fn s024_delete_waits_for_the_drain_then_runs() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h, &["10.244.1.7"]);
    h.run_until_idle(100).unwrap();
    let published = h.calls(UPDATE_LOCATIONS).len();
    assert_eq!(published, 1);

    h.deliver(vec![KubeEvent::ServiceDeleted(svc)]).unwrap();
    // Addresses are still in NRP: DeletionPending with a pending-deletion entry, nothing started.
    let v = view(&mut h);
    assert_eq!(v.operation(&Identity::new(UID)).map(|o| o.state), Some(ResourceState::DeletionPending));
    assert!(v.pending_deletion(&Identity::new(UID)).is_some());

    h.step().unwrap();
    // The LocationsUpdater runs, not the ServiceUpdater: the drain is the only call.
    let drain = h.started[h.started.len() - 1].clone();
    assert_eq!(drain.call.label(), UPDATE_LOCATIONS);
    assert!(locations(&drain).iter().all(|l| l.addresses.iter().all(|a| a.services.is_empty())), "{drain:?}");
    assert_eq!(h.calls(UPDATE_SERVICES).len(), 1, "no delete step before the drain");

    h.step().unwrap();
    // The drain completed: DeletionInProgress, the entry removed, the delete sequence started.
    let v = view(&mut h);
    assert_eq!(v.operation(&Identity::new(UID)).map(|o| o.state), Some(ResourceState::DeletionInProgress));
    assert!(v.pending_deletion(&Identity::new(UID)).is_none());
    h.run_until_idle(100).unwrap();
    let drained = position(&h, |s| s.id == drain.id).unwrap();
    let unregister = position(&h, is_unregister).expect("unregistered");
    assert!(drained < unregister);
    assert_eq!(state(&mut h, UID), None, "tracking dropped after the delete");
}

#[test]
fn s028_create_completing_after_a_fast_path_delete_goes_on_deleting() {
    let mut h = Harness::wasm();
    h.script.hold(PUT_LB, 3);
    let svc = cluster(&mut h, &[]);
    h.run_until(100, |h| h.calls(PUT_LB).len() == 1).unwrap();

    // No address in NRP: the delete takes the fast path while the create is in flight.
    h.deliver(vec![KubeEvent::ServiceDeleted(svc)]).unwrap();
    assert_eq!(state(&mut h, UID), Some(ResourceState::DeletionInProgress));
    h.run_until_idle(200).unwrap();

    // The create's completion was routed into the deletion: the resources it made are deleted
    // and the finalizers released; nothing is left tracked.
    let put_lb = h.first(PUT_LB).unwrap();
    let delete_lb = h.first(DELETE_LB).expect("the load balancer is deleted");
    assert!(put_lb < delete_lb);
    assert!(h.first(DELETE_PIP).is_some());
    assert!(h.first(REMOVE_FINALIZERS).expect("finalizers released") > delete_lb);
    assert_eq!(state(&mut h, UID), None);
    assert_eq!(h.calls(PUT_LB).len(), 1, "the create is not read as a delete success and re-run");
}

#[test]
fn s029_delete_racing_an_update_and_a_sync_drains_before_unregistering() {
    let mut h = Harness::wasm();
    let mut svc = cluster(&mut h, &[]);
    h.run_until_idle(100).unwrap();

    // An update (new port) and a sync publishing a new endpoint, both held in flight.
    h.script.hold(PUT_LB, 4);
    h.script.hold(UPDATE_LOCATIONS, 4);
    svc.ports[0].port = 81;
    h.deliver(vec![
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.8", "node-1")])),
    ])
    .unwrap();
    h.run_until(20, |h| h.calls(PUT_LB).len() == 2 && h.in_flight() == 2).unwrap();

    h.deliver(vec![KubeEvent::ServiceDeleted(svc)]).unwrap();
    h.run_until_idle(300).unwrap();

    // The published address is drained before the service is unregistered, and everything ends.
    let last_publish = position(&h, |s| {
        s.call.label() == UPDATE_LOCATIONS && locations(s).iter().any(|l| l.addresses.iter().any(|a| !a.services.is_empty()))
    })
    .expect("the endpoint was published");
    let drain = h
        .started
        .iter()
        .enumerate()
        .skip(last_publish + 1)
        .find(|(_, s)| s.call.label() == UPDATE_LOCATIONS)
        .map(|(i, _)| i)
        .expect("a drain after the publish");
    let unregister = position(&h, is_unregister).expect("unregistered");
    assert!(drain < unregister, "drain at {drain}, unregister at {unregister}");
    assert_eq!(state(&mut h, UID), None);
}

#[test]
fn s032_load_balancer_flip_during_delete_recreates_with_endpoints() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h, &["10.244.1.7"]);
    h.run_until_idle(100).unwrap();

    // LoadBalancer -> ClusterIP: a delete; held at the load balancer delete.
    h.script.hold(DELETE_LB, 3);
    let mut cluster_ip = svc.clone();
    cluster_ip.service_type = "ClusterIP".into();
    h.deliver(vec![KubeEvent::ServiceApplied(cluster_ip)]).unwrap();
    h.run_until(50, |h| h.calls(DELETE_LB).len() == 1).unwrap();
    // ... and back to LoadBalancer while the delete runs.
    h.deliver(vec![KubeEvent::ServiceApplied(svc)]).unwrap();
    assert!(view(&mut h).operation(&Identity::new(UID)).unwrap().recreate_after_deletion);
    h.run_until_idle(200).unwrap();

    // The delete finished, then a fresh create ran and the endpoint came back from the cache.
    let delete_pip = h.first(DELETE_PIP).expect("the delete ran to its end");
    let second_pip = h.calls(PUT_PIP).get(1).map(|s| s.id).expect("a second create");
    assert!(delete_pip < position(&h, |s| s.id == second_pip).unwrap());
    assert_eq!(state(&mut h, UID), Some(ResourceState::Created));
    let last_sync = h.calls(UPDATE_LOCATIONS).last().copied().unwrap().clone();
    assert!(
        locations(&last_sync).iter().any(|l| l.addresses.iter().any(|a| a.address == "10.244.1.7" && a.services == [UID])),
        "{last_sync:?}"
    );
}

#[test]
fn s035_overlay_rejection_goes_back_to_draining() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h, &["10.244.1.7"]);
    let other = sample_service("default", "api", "5e0c3a1b-0000-4000-8000-0000000000cc");
    h.deliver(vec![KubeEvent::ServiceApplied(other.clone())]).unwrap();
    h.run_until_idle(100).unwrap();

    // The delete: pool detach succeeds, the unregister is rejected with the overlay code. A sync
    // for another service is held in flight meanwhile, so the re-drain pass cannot run at once
    // and the state the rejection leads to can be seen.
    h.script.then(UPDATE_SERVICES, Behavior::Succeed);
    h.script.then(UPDATE_SERVICES, Behavior::Hold(2, Box::new(Behavior::http(400, OVERLAY))));
    h.script.then(UPDATE_LOCATIONS, Behavior::Succeed);
    h.script.hold(UPDATE_LOCATIONS, 10);
    h.deliver(vec![KubeEvent::ServiceDeleted(svc)]).unwrap();
    h.run_until(100, |h| h.first(DELETE_LB).is_some()).unwrap();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sample_slice(&other, &[("10.244.1.20", "node-1")]))]).unwrap();
    // The delete goes on past the rejection (public IP) and then fails as a whole.
    h.run_until(100, |h| h.completed.iter().any(|c| c.label == DELETE_PIP)).unwrap();
    assert!(h.completed.iter().any(|c| c.label == UPDATE_SERVICES && !c.ok));

    let v = view(&mut h);
    let op = v.operation(&Identity::new(UID)).expect("still tracked");
    assert_eq!(op.state, ResourceState::DeletionPending);
    assert_eq!(op.retry_count, 1);
    assert!(op.next_retry_at_ms.is_some_and(|t| t > h.now_ms), "a backoff deadline");
    assert!(v.pending_deletion(&Identity::new(UID)).is_some());
    assert_eq!(h.calls(REMOVE_FINALIZERS).len(), 0);

    // Once the sync lands, the drain check promotes it again and the retried unregister succeeds.
    h.run_until_idle(200).unwrap();
    assert_eq!(h.calls(UPDATE_SERVICES).iter().filter(|s| is_unregister(s)).count(), 2);
    assert_eq!(h.calls(REMOVE_FINALIZERS).len(), 1);
    assert_eq!(state(&mut h, UID), None);
}

#[test]
fn s037_load_balancer_delete_failure_fails_the_delete_even_if_the_pip_goes() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h, &[]);
    h.run_until_idle(100).unwrap();
    h.script.fail(DELETE_LB, 1, 500, "InternalServerError");
    h.deliver(vec![KubeEvent::ServiceDeleted(svc)]).unwrap();
    h.run_until(100, |h| h.completed.iter().any(|c| c.label == DELETE_PIP)).unwrap();
    h.step().unwrap();

    // The later steps ran (continue past failures) and the PIP delete succeeded, yet the delete
    // failed with the LB error: still tracked, retry scheduled, finalizers kept.
    assert!(h.completed.iter().any(|c| c.label == DELETE_PIP && c.ok));
    let op = view(&mut h).operation(&Identity::new(UID)).cloned().expect("tracking kept");
    assert_eq!(op.state, ResourceState::DeletionInProgress);
    assert_eq!(op.retry_count, 1);
    assert_eq!(h.calls(REMOVE_FINALIZERS).len(), 0);

    h.run_until_idle(200).unwrap();
    assert_eq!(h.calls(DELETE_LB).len(), 2);
    assert_eq!(h.calls(REMOVE_FINALIZERS).len(), 1);
    assert_eq!(state(&mut h, UID), None);
}

#[test]
fn s042_transient_create_failures_back_off_then_park_after_twelve() {
    let mut h = Harness::wasm();
    h.script.fail(PUT_PIP, 40, 500, "InternalServerError");
    cluster(&mut h, &[]);
    // Run until the twelfth failure, then let the engine settle into its park.
    h.run_until(2_000, |h| h.completed.iter().filter(|c| c.label == PUT_PIP).count() == 12).unwrap();
    h.step().unwrap();

    let times: Vec<u64> = h.calls(PUT_PIP).iter().map(|s| s.at_ms).collect();
    assert_eq!(times.len(), 12);
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s doubling to 30 s, up to 20 % jitter on top.
    for (i, gap) in gaps.iter().enumerate() {
        let base = (1000u64 << i.min(5)).min(30_000);
        assert!(*gap >= base && *gap <= base + base / 5 + 1, "gap {i} is {gap} ms, base {base}: {gaps:?}");
    }
    let op = view(&mut h).operation(&Identity::new(UID)).cloned().unwrap();
    assert_eq!(op.state, ResourceState::NotStarted);
    assert!(op.retries_exhausted, "parked after 12 failures");
    let parked = h.statuses.last().unwrap().metrics.iter().any(|m| {
        m.name == "difftracker_engine_service_operations_parked_total"
            && m.labels.iter().any(|(k, v)| k == "reason" && v == "retries_exceeded")
            && m.value == 1.0
    });
    assert!(parked);

    // Parked: nothing is dispatched before the 5 minute cooldown.
    h.advance(4 * 60_000);
    h.step().unwrap();
    assert_eq!(h.calls(PUT_PIP).len(), 12);
}

#[test]
fn s048_terminal_create_failure_parks_until_the_spec_changes() {
    let mut h = Harness::wasm();
    let mut svc = sample_service("default", "web", UID);
    svc.ports[0].port = 65535; // admitted, but outside the frontend range 1-65534: a build error
    h.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::ServiceApplied(svc.clone())]).unwrap();
    h.run_until_idle(100).unwrap();

    assert_eq!(h.calls(PUT_PIP).len(), 0, "no Azure call for an invalid spec");
    let op = view(&mut h).operation(&Identity::new(UID)).cloned().unwrap();
    assert_eq!(op.state, ResourceState::NotStarted);
    assert!(op.creation_failed_terminal);
    assert!(h.events.iter().any(|e| e.reason == "ServiceGatewayConfigurationRejected"), "{:?}", h.events);

    // An unchanged resync keeps it parked, even much later.
    h.advance(10 * 60_000);
    h.deliver(vec![KubeEvent::ServiceApplied(svc.clone())]).unwrap();
    h.run_until_idle(100).unwrap();
    assert_eq!(h.calls(PUT_PIP).len(), 0);

    // A changed spec clears the park and provisions.
    svc.ports[0].port = 443;
    h.deliver(vec![KubeEvent::ServiceApplied(svc)]).unwrap();
    h.run_until_idle(100).unwrap();
    assert_eq!(h.calls(PUT_PIP).len(), 1);
    assert_eq!(state(&mut h, UID), Some(ResourceState::Created));
}

#[test]
fn s054_endpoints_during_create_are_buffered_and_replayed_in_order() {
    let mut h = Harness::wasm();
    h.script.hold(PUT_LB, 3);
    let svc = cluster(&mut h, &["10.244.1.7"]);
    h.run_until(50, |h| h.calls(PUT_LB).len() == 1).unwrap();
    // While the create runs: an address added, then removed again.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1"), ("10.244.1.9", "node-1")]))])
        .unwrap();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")]))]).unwrap();
    assert!(!view(&mut h).buffered_endpoints(&Identity::new(UID)).is_empty());
    assert_eq!(h.calls(UPDATE_LOCATIONS).len(), 0, "nothing published before registration");
    h.run_until_idle(100).unwrap();

    let published: Vec<&str> = h
        .calls(UPDATE_LOCATIONS)
        .iter()
        .flat_map(|s| locations(s).iter().flat_map(|l| l.addresses.iter().map(|a| a.address.as_str())))
        .collect();
    assert_eq!(published, ["10.244.1.7"], "the removed address never leaks");
    assert!(view(&mut h).buffered_endpoints(&Identity::new(UID)).is_empty());
}

#[test]
fn s099_gone_node_and_gone_address_are_sent_as_empty_lists() {
    let mut h = Harness::wasm();
    let svc = sample_service("default", "web", UID);
    h.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::NodeApplied(sample_node("node-2", "10.0.0.5")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1"), ("10.244.1.8", "node-1"), ("10.244.2.9", "node-2")])),
    ])
    .unwrap();
    h.run_until_idle(100).unwrap();

    h.deliver(vec![
        KubeEvent::NodeDeleted(sample_node("node-2", "10.0.0.5")),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1"), ("10.244.2.9", "node-2")])),
    ])
    .unwrap();
    h.run_until_idle(100).unwrap();
    let sync = h.calls(UPDATE_LOCATIONS).last().copied().unwrap().clone();
    let locs = locations(&sync);
    let gone_node = locs.iter().find(|l| l.location == "10.0.0.5").expect("the gone node is sent");
    assert_eq!(gone_node.action, UpdateAction::PartialUpdate);
    assert!(gone_node.addresses.is_empty());
    let node1 = locs.iter().find(|l| l.location == "10.0.0.4").expect("the node that lost an address");
    assert_eq!(node1.action, UpdateAction::PartialUpdate);
    let unbound = node1.addresses.iter().find(|a| a.address == "10.244.1.8").expect("the gone address");
    assert!(unbound.services.is_empty());
    assert_eq!(node1.addresses.len(), 1, "unchanged addresses are not resent");
}

#[test]
fn s108_rejected_sync_is_abandoned_unless_a_deletion_waits() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h, &["10.244.1.7"]);
    h.run_until_idle(100).unwrap();

    // A 400 on an ordinary change: abandoned, no retry.
    h.script.fail(UPDATE_LOCATIONS, 1, 400, "InvalidRequestFormat");
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1"), ("10.244.1.8", "node-1")]))])
        .unwrap();
    h.run_until_idle(100).unwrap();
    assert_eq!(h.calls(UPDATE_LOCATIONS).len(), 2);
    assert_eq!(h.last_outcome.next_wake_ms, None, "nothing rescheduled");

    // With a deletion waiting on the drain, 400s and 422s are retried, past the 12-attempt mark.
    let before = h.calls(UPDATE_LOCATIONS).len();
    for i in 0..14 {
        h.script.fail(UPDATE_LOCATIONS, 1, if i % 2 == 0 { 400 } else { 422 }, "InvalidRequestFormat");
    }
    h.deliver(vec![KubeEvent::ServiceDeleted(svc)]).unwrap();
    h.run_until_idle(500).unwrap();
    assert_eq!(h.calls(UPDATE_LOCATIONS).len() - before, 15, "14 rejected drains, then one that succeeded");
    assert!(position(&h, is_unregister).is_some());
    assert_eq!(state(&mut h, UID), None);
}

// ------------------------------------------------------------------------ egress

fn egress_pod(name: &str, uid: &str, ip: &str) -> Pod {
    Pod {
        meta: ObjectMeta {
            namespace: "apps".into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: "1".into(),
            labels: vec![(EGRESS_LABEL.into(), "egress-a".into())],
            ..ObjectMeta::default()
        },
        node_name: "node-1".into(),
        phase: "Running".into(),
        pod_ip: ip.into(),
        pod_ips: vec![ip.into()],
        host_ip: "10.0.0.4".into(),
        host_ips: vec!["10.0.0.4".into()],
    }
}

fn terminating(pod: &Pod) -> Pod {
    let mut p = pod.clone();
    p.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    p.meta.finalizers = vec![POD_FINALIZER.into()];
    p
}

fn removes_finalizer_of(s: &Started, uid: &str) -> bool {
    matches!(&s.call, Call::Kube(KubeCall::RemovePodFinalizer(r)) if r.uid == uid)
}

fn egress_cluster(h: &mut Harness, pods: &[&Pod]) {
    let mut events = vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4"))];
    events.extend(pods.iter().map(|p| KubeEvent::PodApplied((*p).clone())));
    h.deliver(events).unwrap();
    h.run_until_idle(200).unwrap();
    assert_eq!(h.calls(ADD_POD_FINALIZER).len(), pods.len());
    assert_eq!(state(h, "egress-a"), Some(ResourceState::Created));
}

#[test]
fn s082_non_last_pod_keeps_its_finalizer_until_its_address_left_nrp() {
    let mut h = Harness::wasm();
    let (a, b) = (egress_pod("a", "uid-a", "10.244.1.7"), egress_pod("b", "uid-b", "10.244.1.8"));
    egress_cluster(&mut h, &[&a, &b]);

    h.script.hold(UPDATE_LOCATIONS, 3);
    h.deliver(vec![KubeEvent::PodApplied(terminating(&a))]).unwrap();
    h.run_until(20, |h| h.in_flight() == 1 && h.started.last().is_some_and(|s| s.call.label() == UPDATE_LOCATIONS)).unwrap();
    let drain = h.started.last().unwrap().id;
    h.step().unwrap();
    assert!(!h.started.iter().any(|s| removes_finalizer_of(s, "uid-a")), "finalizer kept while the address is published");

    h.run_until_idle(100).unwrap();
    let drained = h.completed.iter().position(|c| c.id == drain && c.ok).expect("the drain succeeded");
    let drained_tick = h.completed[drained].tick;
    let removal = h.started.iter().find(|s| removes_finalizer_of(s, "uid-a")).expect("finalizer removed after the drain");
    assert!(removal.tick >= drained_tick);
    assert_eq!(h.calls(DELETE_NAT).len(), 0, "a pod is left: the NAT gateway stays");
    assert!(!h.started.iter().any(|s| removes_finalizer_of(s, "uid-b")));
}

#[test]
fn s083_last_pod_finalizer_waits_for_the_nat_gateway_delete() {
    let mut h = Harness::wasm();
    let a = egress_pod("a", "uid-a", "10.244.1.7");
    egress_cluster(&mut h, &[&a]);

    h.script.fail(DELETE_NAT, 1, 500, "InternalServerError");
    h.deliver(vec![KubeEvent::PodApplied(terminating(&a))]).unwrap();
    h.run_until(200, |h| h.completed.iter().any(|c| c.label == DELETE_NAT)).unwrap();
    h.step().unwrap();
    assert!(!h.started.iter().any(|s| removes_finalizer_of(s, "uid-a")), "the NAT delete failed: finalizer kept");

    h.run_until_idle(300).unwrap();
    let nat_deleted = h.completed.iter().filter(|c| c.label == DELETE_NAT && c.ok).map(|c| c.tick).next().expect("retried");
    let removal = h.started.iter().find(|s| removes_finalizer_of(s, "uid-a")).expect("released after the NAT delete");
    assert!(removal.tick >= nat_deleted);
    assert_eq!(state(&mut h, "egress-a"), None);
}

#[test]
fn s067_pod_added_to_a_draining_egress_service_revives_it() {
    let mut h = Harness::wasm();
    let a = egress_pod("a", "uid-a", "10.244.1.7");
    egress_cluster(&mut h, &[&a]);

    // The sole pod goes; its drain is held, so the service waits in DeletionPending.
    h.script.hold(UPDATE_LOCATIONS, 5);
    h.deliver(vec![KubeEvent::PodApplied(terminating(&a))]).unwrap();
    h.step().unwrap();
    assert_eq!(state(&mut h, "egress-a"), Some(ResourceState::DeletionPending));

    // A new pod arrives before any delete was attempted: revived, no NAT delete ever.
    let b = egress_pod("b", "uid-b", "10.244.1.9");
    h.deliver(vec![KubeEvent::PodApplied(b)]).unwrap();
    h.run_until_idle(200).unwrap();
    assert_eq!(state(&mut h, "egress-a"), Some(ResourceState::Created));
    assert_eq!(h.calls(DELETE_NAT).len(), 0);
    assert!(h.started.iter().any(|s| removes_finalizer_of(s, "uid-a")), "the old pod is released after its drain");
}

#[test]
fn s113_dual_stack_node_files_each_address_under_its_family() {
    let mut h = Harness::wasm();
    let v6_uid = "5e0c3a1b-0000-4000-8000-0000000000bb";
    let v4 = sample_service("default", "web4", UID);
    let mut v6 = sample_service("default", "web6", v6_uid);
    v6.ip_families = vec!["IPv6".into()];
    let mut node = sample_node("node-1", "10.0.0.4");
    node.internal_ips.push("FD00:10:224:0::5".into());
    let mut slice6 = sample_slice(&v6, &[("FD00:10:244:2:0:0:0:9", "node-1")]);
    slice6.address_type = "IPv6".into();
    h.deliver(vec![
        KubeEvent::NodeApplied(node),
        KubeEvent::ServiceApplied(v4.clone()),
        KubeEvent::ServiceApplied(v6),
        KubeEvent::EndpointSliceApplied(sample_slice(&v4, &[("10.244.1.7", "node-1")])),
        KubeEvent::EndpointSliceApplied(slice6),
    ])
    .unwrap();
    h.run_until_idle(200).unwrap();

    let mut placed: Vec<(String, String, Vec<String>)> = h
        .calls(UPDATE_LOCATIONS)
        .iter()
        .flat_map(|s| locations(s).iter().flat_map(|l| l.addresses.iter().map(|a| (l.location.clone(), a.address.clone(), a.services.clone()))))
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            ("10.0.0.4".to_string(), "10.244.1.7".to_string(), vec![UID.to_string()]),
            ("fd00:10:224::5".to_string(), "fd00:10:244:2::9".to_string(), vec![v6_uid.to_string()]),
        ]
    );
    // Nothing left to send: the engine's view equals what it published.
    assert!(view(&mut h).full_location_diff().is_empty());
}

#[test]
fn s116_default_natgw_is_never_touched() {
    let mut h = Harness::wasm();
    let mut pod = egress_pod("a", "uid-a", "10.244.1.7");
    pod.meta.labels = vec![(EGRESS_LABEL.into(), "Default-NatGW".into())];
    h.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::PodApplied(pod.clone())]).unwrap();
    h.run_until_idle(100).unwrap();
    h.deliver(vec![KubeEvent::PodApplied(terminating(&pod))]).unwrap();
    h.run_until_idle(100).unwrap();

    assert!(h.events.iter().any(|e| e.reason == "ServiceGatewayReservedEgressLabel"), "{:?}", h.events);
    assert!(
        !h.started.iter().any(|s| matches!(s.call, Call::Cloud(_))),
        "no cloud call at all: {:?}",
        h.labels()
    );
    assert_eq!(state(&mut h, "default-natgw"), None);
}
