//! Group G (pod finalizers and drain gating), plus 40 (a last-pod record added after the delete
//! worker's sweep).

use super::common::*;
use crate::egress::FinalizerDecision;
use crate::names::REASON_FINALIZER_ADD_FAILED;

const L1: &str = "10.0.0.1";

fn remove_call(h: &Harness, uid: &str) -> Option<CallId> {
    h.find_by(|c| is_remove_fin(c, uid))
}

/// Runs location syncs (successes) until none is outstanding.
fn drain_syncs(h: &mut Harness) {
    for _ in 0..5 {
        h.tick();
        if sync_ok(h).is_none() {
            break;
        }
    }
}

#[test]
fn s040_last_pod_record_after_the_sweep_redispatches_the_delete() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    delete_event(&mut h, &a);
    drain_syncs(&mut h);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    // Run the delete up to the last-pod finalizer removal (the sweep happened).
    for _ in 0..8 {
        if remove_call(&h, "u1").is_some() {
            break;
        }
        let c = *h.outstanding.keys().next().expect("delete step outstanding");
        h.ok(c);
    }
    let c = remove_call(&h, "u1").expect("last pod released after the NAT delete");
    assert!(h.log.iter().any(|(_, c)| matches!(c, Call::Cloud(CloudCall::DeleteNatGateway { name }) if name == EG)));
    // Meanwhile a new pod arrives (buffered: the delete runs) and is deleted again: a last-pod
    // record the worker's sweep did not see.
    let b = epod("b", "u2", EG, "10.1.0.2");
    admit(&mut h, &b);
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1);
    delete_event(&mut h, &b);
    h.tick();
    assert!(h.engine.pod_deletion("ns/b").unwrap().is_last_pod);
    assert!(h.engine.buffered_pods(&id(EG)).is_empty());
    h.ok(c);
    // Delete success with a record pending: re-dispatched, tracking kept.
    assert!(h.engine.is_service_tracked(&id(EG)));
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    assert!(h.find("GET services").is_some(), "re-run: {:?}", h.labels());
    finish_nat_delete(&mut h, EG);
    assert!(removals_started(&h).contains(&"u2".to_string()));
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert!(h.engine.pod_deletions().is_empty());
    inv(&h);
}

#[test]
fn s082_non_last_pod_finalizer_waits_for_drain() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let b = epod("b", "u2", EG, "10.1.0.2");
    live_egress(&mut h, EG, &[a.clone(), b]);
    delete_event(&mut h, &a);
    let rec = h.engine.pod_deletion("ns/a").unwrap().clone();
    assert!(!rec.is_last_pod);
    assert_eq!(rec.addresses, vs(&["10.1.0.1"]));
    h.tick();
    assert!(remove_call(&h, "u1").is_none(), "address still in NRP: finalizer kept");
    let sync = h.find("POST updateAddressLocations").unwrap();
    h.fail(sync, transient());
    assert!(h.engine.nrp().maps_address_to(&id(EG), "10.1.0.1"));
    assert!(remove_call(&h, "u1").is_none(), "a failed sync drains nothing");
    h.wake();
    sync_ok(&mut h).unwrap();
    assert!(!h.engine.nrp().maps_address_to(&id(EG), "10.1.0.1"));
    let c = remove_call(&h, "u1").expect("released after the drain");
    assert_eq!(
        h.outstanding[&c],
        Call::Kube(KubeCall::RemovePodFinalizer(ObjectRef { namespace: "ns".into(), name: "a".into(), uid: "u1".into() }))
    );
    h.ok(c);
    assert!(h.engine.pod_deletion("ns/a").is_none());
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    inv(&h);

    // A sync already in flight when the pod goes (publishing another pod) does not drain it:
    // its success must not release the finalizer.
    let c3 = epod("c", "u3", EG, "10.1.0.3");
    admit(&mut h, &c3);
    let inflight = h.find("POST updateAddressLocations").expect("publishing c");
    let b = epod("b", "u2", EG, "10.1.0.2");
    delete_event(&mut h, &b);
    h.tick();
    h.ok(inflight);
    assert!(h.engine.nrp().maps_address_to(&id(EG), "10.1.0.2"));
    assert!(remove_call(&h, "u2").is_none(), "released while its address is still mapped");
    sync_ok(&mut h).expect("the unbind follows");
    assert!(remove_call(&h, "u2").is_some());
    inv(&h);
}

#[test]
fn s083_last_pod_finalizer_only_after_nat_delete() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    delete_event(&mut h, &a);
    assert!(h.engine.pod_deletion("ns/a").unwrap().is_last_pod);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionPending));
    drain_syncs(&mut h);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    assert!(remove_call(&h, "u1").is_none(), "drained but the NAT still exists");
    // GET services -> clear the NAT reference -> GET NAT -> detach -> unregister -> NAT delete (fails).
    let c = h.find("GET services").unwrap();
    h.complete(
        c,
        Ok(CallOutput::SgwServices(vec![SgwService {
            name: EG.into(),
            service_type: ServiceType::Outbound,
            backend_pools: vec![],
            nat_gateway: Some(EG.into()),
            is_default: false,
        }])),
    );
    let c = h.find("POST updateServices").unwrap();
    assert_eq!(
        h.outstanding[&c],
        Call::Cloud(CloudCall::UpdateServices(vec![SgwServiceRequest {
            name: EG.into(),
            service_type: ServiceType::Outbound,
            is_delete: false,
            backend_pools: vec![],
            nat_gateway: NatReference::Clear,
            is_default: None
        }]))
    );
    h.ok(c);
    let c = h.find("GET natGateways").unwrap();
    h.complete(
        c,
        Ok(CallOutput::NatGateway(Some(NatGatewayInfo { name: EG.into(), references_service_gateway: true, raw: "{\"raw\":1}".into() }))),
    );
    let c = h.find("PUT natGateways").unwrap();
    assert_eq!(h.outstanding[&c], Call::Cloud(CloudCall::DetachNatGateway { name: EG.into(), raw: "{\"raw\":1}".into() }));
    h.ok(c);
    let c = h.find_by(|c| is_unregister(c, EG)).unwrap();
    h.ok(c);
    let c = h.find("DELETE natGateways").unwrap();
    h.fail(c, transient());
    // Public IPs are still deleted (steps continue), then the attempt fails.
    for name in [format!("{EG}-pip"), format!("{EG}-pip-v6")] {
        let c = h.find_by(|c| matches!(c, Call::Cloud(CloudCall::DeletePublicIp { name: n }) if *n == name)).unwrap();
        h.fail(c, CallError::http(404, "NotFound", "gone"));
    }
    assert!(remove_call(&h, "u1").is_none(), "NAT delete failed: finalizer stays");
    assert!(h.engine.pod_deletion("ns/a").is_some());
    assert!(h.engine.nrp().has_nat_gateway(&id(EG)), "NRP entry kept");
    assert_eq!(h.engine.operation(&id(EG)).unwrap().retry_count, 1);
    assert_eq!(metric(&h, "delete_substep_failures_total", &[("step", "disassociate_nat_gateway")]), 0.0);
    // The retry succeeds and releases it.
    h.wake();
    finish_nat_delete(&mut h, EG);
    assert_eq!(removals_started(&h), vec!["u1".to_string()]);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert!(!h.engine.nrp().has_nat_gateway(&id(EG)));
    assert!(h.engine.pod_deletions().is_empty());
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "delete"), ("service_type", "outbound"), ("result", "error")]), 1.0);
    assert_eq!(
        metric(&h, "service_operations_total", &[("operation", "delete"), ("service_type", "outbound"), ("result", "success")]),
        1.0
    );
    inv(&h);
}

#[test]
fn s084_last_pod_finalizer_failure_fails_the_delete() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    delete_event(&mut h, &a);
    drain_syncs(&mut h);
    for _ in 0..8 {
        if remove_call(&h, "u1").is_some() {
            break;
        }
        let c = *h.outstanding.keys().next().unwrap();
        h.ok(c);
    }
    let c = remove_call(&h, "u1").unwrap();
    h.fail(c, CallError::of_kind(ErrorKind::Conflict, "conflict after retries"));
    assert!(h.engine.pod_deletion("ns/a").is_some(), "record kept");
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    assert_eq!(h.engine.operation(&id(EG)).unwrap().retry_count, 1, "the delete reports failure");
    assert!(!h.engine.nrp().has_nat_gateway(&id(EG)), "the NAT itself is gone");
    h.wake();
    finish_nat_delete(&mut h, EG);
    assert_eq!(removals_started(&h), vec!["u1".to_string(), "u1".to_string()]);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    inv(&h);
}

#[test]
fn s085_last_pod_finalizers_are_per_identity() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let b = epod("b", "u2", EG2, "10.1.0.2");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    live_egress(&mut h, EG2, std::slice::from_ref(&b));
    delete_event(&mut h, &a);
    delete_event(&mut h, &b);
    assert!(h.engine.pod_deletion("ns/a").unwrap().is_last_pod);
    assert!(h.engine.pod_deletion("ns/b").unwrap().is_last_pod);
    drain_syncs(&mut h);
    finish_nat_delete(&mut h, EG);
    assert_eq!(removals_started(&h), vec!["u1".to_string()]);
    assert!(h.engine.pod_deletion("ns/b").is_some(), "the other identity keeps its record");
    assert_eq!(state(&h, EG2), Some(ResourceState::DeletionInProgress));
    finish_nat_delete(&mut h, EG2);
    assert_eq!(removals_started(&h), vec!["u1".to_string(), "u2".to_string()]);
    inv(&h);
}

#[test]
fn s086_transient_errors_keep_the_record_not_found_drops_it() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let c2 = epod("c", "u3", EG, "10.1.0.3");
    let b = epod("b", "u2", EG, "10.1.0.2");
    live_egress(&mut h, EG, &[a.clone(), b.clone(), c2]);
    delete_event(&mut h, &a);
    drain_syncs(&mut h);
    let c = remove_call(&h, "u1").unwrap();
    // A transient error (reading or updating the pod): kept for the next cycle.
    h.fail(c, CallError::http(503, "", "etcd timeout"));
    assert!(h.engine.pod_deletion("ns/a").is_some());
    assert!(h.engine.locations_updater().retry_at_ms.is_some(), "the LocationsUpdater retries");
    h.wake();
    let c = remove_call(&h, "u1").expect("retried by the next pass");
    h.fail(c, CallError::of_kind(ErrorKind::Conflict, "update conflict"));
    assert!(h.engine.pod_deletion("ns/a").is_some());
    h.wake();
    let c = remove_call(&h, "u1").unwrap();
    // NotFound: the pod is gone, the record with it.
    h.fail(c, CallError::of_kind(ErrorKind::NotFound, "gone"));
    assert!(h.engine.pod_deletion("ns/a").is_none());
    // Same for another pod with a plain success.
    delete_event(&mut h, &b);
    drain_syncs(&mut h);
    let c = remove_call(&h, "u2").unwrap();
    h.ok(c);
    assert!(h.engine.pod_deletions().is_empty());
    inv(&h);
}

#[test]
fn s087_same_name_replacement_is_never_stripped() {
    let mut h = harness();
    let a = epod("p", "u1", EG, "10.1.0.1");
    let keep = epod("k", "uk", EG, "10.1.0.9");
    live_egress(&mut h, EG, &[a.clone(), keep]);
    delete_event(&mut h, &a);
    drain_syncs(&mut h);
    // Every removal names the recorded UID: the host's UID guard answers Replaced for a
    // same-name replacement, which drops the stale record without touching it.
    let c = remove_call(&h, "u1").unwrap();
    // While that call is outstanding, the replacement (u2) is registered and deleted: its own
    // record must survive the stale completion (compare-and-delete on the UID).
    h.engine.add_pod(&id(EG), "ns/p", "u2", L1, "10.1.0.5");
    assert_eq!(h.engine.pod_deletion("ns/p").unwrap().uid, "u1", "another UID's add does not drop u1's record");
    let _ = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.5"]), "ns", "p", "u2");
    assert_eq!(h.engine.pod_deletion("ns/p").unwrap().uid, "u2");
    h.fail(c, CallError::of_kind(ErrorKind::Replaced, "uid mismatch"));
    assert_eq!(h.engine.pod_deletion("ns/p").unwrap().uid, "u2", "not clobbered");
    // u2's own (drained) record is released under its own UID, never through u1's.
    assert_eq!(removals_started(&h), vs(&["u1", "u2"]));
    // A direct removal for a stale event also names the stale UID.
    let stale = epod("q", "uq-old", EG, "10.1.0.77");
    h.deliver(vec![KubeEvent::PodDeleted(terminating(&stale))]);
    let started = h.tick();
    assert!(started.iter().any(|(_, c)| is_remove_fin(c, "uq-old")), "{started:?}");
    inv(&h);
}

#[test]
fn s088_duplicate_terminating_event_stays_enqueued() {
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.2");
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert_eq!(r.decision, FinalizerDecision::HoldForDrain);
    // A later event drains nothing new but must still hold the finalizer.
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(r.enqueued);
    assert_eq!(r.decision, FinalizerDecision::HoldForDrain);
    let r = h.engine.delete_pod_without_addresses(&id(EG), "ns", "a", "u1");
    assert_eq!(r.decision, FinalizerDecision::HoldForDrain);
    // A different UID is not gated by that record.
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u-other");
    assert!(!r.enqueued);
    assert_eq!(r.decision, FinalizerDecision::ReleaseNoDrain);
    assert_eq!(h.engine.pod_deletion("ns/a").unwrap().uid, "u1");
    inv(&h);
}

#[test]
fn s089_dual_stack_delete_is_one_atomic_record() {
    let mut h = dual_harness();
    let p = egress_pod("ns/d", "u1", EG, &["10.1.3.1", "fd01::1"], &["10.0.0.3", "fd00::3"]);
    live_egress(&mut h, EG, &[p]);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 2);
    // The hint is the primary (IPv4) host IP; the v6 address is found under its own location.
    let r = h.engine.delete_pod(&id(EG), "10.0.0.3", &vs(&["10.1.3.1", "fd01::1", "10.1.3.1", "10.9.9.9"]), "ns", "d", "u1");
    assert!(r.is_last_pod && r.enqueued);
    let rec = h.engine.pod_deletion("ns/d").unwrap();
    assert_eq!(rec.addresses, vs(&["10.1.3.1", "fd01::1"]), "both families, no duplicates, nothing never registered");
    assert!(rec.is_last_pod);
    assert_eq!(h.engine.pod_deletions().len(), 1);
    assert!(h.engine.desired().is_empty());
    assert!(!h.engine.desired().ref_counts().contains_key(&id(EG)));
    inv(&h);
}

#[test]
fn s090_nrp_only_address_reconstructs_a_drain_record() {
    // Last: no other live or buffered pod.
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, &[a]);
    // Local state loses the address (a replacement drain), NRP still maps it.
    h.engine.delete_pod_for_replacement(&id(EG), L1, &vs(&["10.1.0.1"]), "", "", "");
    assert!(h.engine.nrp().maps_address_to(&id(EG), "10.1.0.1"));
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(r.is_last_pod && r.enqueued);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionPending), "NAT deletion scheduled");
    assert_eq!(h.engine.pod_deletion("ns/a").unwrap().addresses, vs(&["10.1.0.1"]));
    inv(&h);

    // Non-last: another pod is live.
    let mut h = harness();
    live_egress(&mut h, EG, &[epod("a", "u1", EG, "10.1.0.1"), epod("b", "u2", EG, "10.1.0.2")]);
    h.engine.delete_pod_for_replacement(&id(EG), L1, &vs(&["10.1.0.1"]), "", "", "");
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(!r.is_last_pod && r.enqueued);
    assert_eq!(r.decision, FinalizerDecision::HoldForDrain);
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    inv(&h);
}

#[test]
fn s091_missing_or_zero_ref_count_still_drain_gates() {
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.2");
    h.engine.desired.force_ref_count(&id(EG), None);
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(h.engine.desired().get(L1, "10.1.0.1").is_none(), "removed");
    assert_eq!(r.decision, FinalizerDecision::HoldForDrain);
    assert!(!h.engine.desired().ref_counts().contains_key(&id(EG)), "never negative, no key conjured");
    h.engine.desired.force_ref_count(&id(EG), Some(0));
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.2"]), "ns", "b", "u2");
    assert!(h.engine.desired().get(L1, "10.1.0.2").is_none());
    assert!(r.enqueued && r.is_last_pod, "{r:?}");
    assert_eq!(r.decision, FinalizerDecision::HoldForServiceDeletion);
    inv(&h);
}

#[test]
fn s092_no_ip_terminating_pod_with_or_without_pending_drain() {
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.2");
    h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    // The kubelet cleared the IPs of the terminating pod: the older drain keeps it.
    let mut noip = terminating(&epod("a", "u1", EG, "10.1.0.1"));
    noip.pod_ip.clear();
    noip.pod_ips.clear();
    h.deliver(vec![KubeEvent::PodDeleted(noip)]);
    assert!(h.tick().iter().all(|(_, c)| !is_remove_fin(c, "u1")), "finalizer kept");
    assert!(h.engine.pod_deletion("ns/a").is_some());

    // Nothing pending, nothing possibly in NRP: stripped directly.
    let mut h = harness();
    let mut noip = terminating(&epod("z", "uz", EG, "10.1.0.1"));
    noip.pod_ip.clear();
    noip.pod_ips.clear();
    h.deliver(vec![KubeEvent::PodApplied(noip)]);
    let started = h.tick();
    assert_eq!(started.len(), 1);
    assert!(is_remove_fin(&started[0].1, "uz"));
    assert!(h.engine.pod_deletions().is_empty());
    assert!(!h.engine.is_service_tracked(&id(EG)));
}

#[test]
fn s093_no_ip_pod_waits_for_unbacked_nrp_addresses() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let b = epod("b", "u2", EG, "10.1.0.2");
    live_egress(&mut h, EG, &[a, b]);
    // Pod a's address leaves local state without a record (lost), NRP still maps it.
    h.engine.delete_pod_for_replacement(&id(EG), L1, &vs(&["10.1.0.1"]), "", "", "");
    h.engine.dirty.clear(); // pretend the sync removing it has not been computed yet
    h.engine.dirty.insert((L1.into(), "10.1.0.1".into()));
    // A no-IP terminating pod of the identity: nothing known to drain, verify at service level.
    let r = h.engine.delete_pod_without_addresses(&id(EG), "ns", "x", "ux");
    assert!(r.enqueued && !r.is_last_pod);
    let rec = h.engine.pod_deletion("ns/x").unwrap();
    assert!(rec.verify_service_drain && rec.addresses.is_empty());
    // The pass that is due still runs its checks before the sync lands: the unbacked address
    // (10.1.0.1) holds the finalizer; the backed one (10.1.0.2) does not.
    h.engine.check_pending_pod_deletions();
    h.tick();
    assert!(remove_call(&h, "ux").is_none(), "unbacked address still in NRP");
    sync_ok(&mut h).unwrap();
    assert!(!h.engine.nrp().maps_address_to(&id(EG), "10.1.0.1"));
    assert!(h.engine.nrp().maps_address_to(&id(EG), "10.1.0.2"), "backed by live pod b");
    let c = remove_call(&h, "ux").expect("released once the unbacked address is gone");
    h.ok(c);
    assert!(h.engine.pod_deletions().is_empty());
    inv(&h);
}

#[test]
fn s094_no_ip_pod_recovers_its_stale_live_address() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, &[a]);
    let r = h.engine.delete_pod_without_addresses(&id(EG), "ns", "a", "u1");
    assert!(r.enqueued && r.is_last_pod);
    let rec = h.engine.pod_deletion("ns/a").unwrap();
    assert_eq!(rec.addresses, vs(&["10.1.0.1"]));
    assert!(!rec.verify_service_drain && rec.is_last_pod);
    assert!(h.engine.desired().get(L1, "10.1.0.1").is_none(), "removed from desired state");
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionPending));
    inv(&h);
}

#[test]
fn s095_direct_removal_failure_is_counted_and_retried() {
    let mut h = harness();
    // Nothing tracked: release-no-drain, removed directly.
    let p = epod("a", "u1", EG, "10.1.0.1");
    h.deliver(vec![KubeEvent::PodDeleted(terminating(&p))]);
    h.tick();
    let c = remove_call(&h, "u1").unwrap();
    h.fail(c, transient());
    assert_eq!(metric(&h, "pod_finalizer_remove_failed_total", &[]), 1.0);
    let rec = h.engine.pod_deletion("ns/a").expect("retry record queued").clone();
    assert!(rec.addresses.is_empty() && !rec.is_last_pod && !rec.verify_service_drain);
    // The retry record is ready at once (no address): the next pass (run by this very tick)
    // starts the removal again.
    let c = remove_call(&h, "u1").expect("retried by the next pass");
    h.ok(c);
    assert!(h.engine.pod_deletions().is_empty());
    assert_eq!(metric(&h, "pod_finalizer_remove_failed_total", &[]), 1.0, "record removals are not direct ones");

    // A pod whose label value was emptied but still carries our finalizer.
    let mut q = terminating(&epod("q", "uq", "", "10.1.0.2"));
    q.meta.deletion_timestamp = None;
    h.deliver(vec![KubeEvent::PodDeleted(q.clone())]);
    let started = h.tick();
    assert!(started.iter().any(|(_, c)| is_remove_fin(c, "uq")), "{started:?}");
    // A pod deleted from the API (its final object lists no finalizer): nothing to remove.
    let gone = epod("g", "ug", EG, "10.1.0.3");
    let mut gone_final = gone.clone();
    gone_final.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    h.deliver(vec![KubeEvent::PodDeleted(gone_final)]);
    assert!(h.tick().is_empty());
    // Without our finalizer: ignored.
    let mut r = q.clone();
    r.meta.name = "r".into();
    r.meta.uid = "ur".into();
    r.meta.finalizers.clear();
    h.deliver(vec![KubeEvent::PodDeleted(r)]);
    assert!(h.tick().is_empty());
    inv(&h);
}

#[test]
fn s096_finalizer_add_failure_still_registers() {
    let mut h = harness();
    let p = epod("a", "u1", EG, "10.1.0.1");
    h.deliver(vec![KubeEvent::PodApplied(p)]);
    h.tick();
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    // A 409 outlived the host's fresh-copy retries.
    h.fail(c, CallError::of_kind(ErrorKind::Conflict, "conflict after 5 attempts"));
    assert_eq!(metric(&h, "pod_finalizer_add_failed_total", &[]), 1.0);
    assert_eq!(pod_events(&h, REASON_FINALIZER_ADD_FAILED), 1);
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1, "registered anyway");
    // A stale add for a replaced (or gone) pod registers nothing.
    for (uid, err) in [("u2", ErrorKind::Replaced), ("u3", ErrorKind::NotFound)] {
        h.deliver(vec![KubeEvent::PodApplied(epod(&format!("p-{uid}"), uid, EG, "10.1.0.9"))]);
        h.tick();
        let c = h.find_by(|c| is_add_fin(c, uid)).unwrap();
        h.fail(c, CallError::of_kind(err, "gone or replaced"));
    }
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1);
    assert_eq!(metric(&h, "pod_finalizer_add_failed_total", &[]), 1.0);
    inv(&h);
}

#[test]
fn s097_identity_move_drops_the_stale_record() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let b2 = epod("b2", "u9", EG, "10.1.0.9");
    live_egress(&mut h, EG, &[a.clone(), b2]);
    // Unknown phase: removed, with a drain record under EG.
    let mut unknown = a.clone();
    unknown.phase = "Unknown".into();
    h.deliver(vec![KubeEvent::PodApplied(unknown.clone())]);
    assert_eq!(h.engine.pod_deletion("ns/a").unwrap().service_uid, id(EG));
    // Back to Running under another identity.
    let mut moved = a.clone();
    moved.meta.labels = vec![(crate::names::EGRESS_LABEL.into(), EG2.into())];
    h.deliver(vec![KubeEvent::PodApplied(moved)]);
    h.tick();
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    h.ok(c);
    assert!(h.engine.pod_deletion("ns/a").is_none(), "stale record dropped");
    create_nat(&mut h, EG2);
    drain_syncs(&mut h);
    assert!(!removals_started(&h).contains(&"u1".to_string()), "its finalizer is never stripped");
    assert!(h.engine.desired().holds(&id(EG2), L1, "10.1.0.1"));
    inv(&h);
}

#[test]
fn s098_failed_ready_removal_reschedules_the_locations_updater() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let b = epod("b", "u2", EG, "10.1.0.2");
    live_egress(&mut h, EG, &[a.clone(), b]);
    delete_event(&mut h, &a);
    h.tick();
    sync_ok(&mut h).unwrap();
    assert_eq!(h.engine.locations_updater().failures, 0, "the sync itself succeeded");
    let c = remove_call(&h, "u1").unwrap();
    h.fail(c, transient());
    let lu = h.engine.locations_updater();
    assert!(lu.retry_at_ms.is_some_and(|t| t > h.now), "a retry is scheduled instead of reporting success");
    assert_eq!(lu.failures, 1);
    assert!(!h.engine.is_settled());
    assert!(h.tick().is_empty(), "backoff: nothing before the deadline");
    h.wake();
    let c = remove_call(&h, "u1").expect("the retry pass re-runs the check");
    h.ok(c);
    assert!(h.engine.pod_deletions().is_empty());
    assert!(h.run_ok(10));
    inv(&h);
}

// ---------------------------------------------------------------- regressions found by the
// egress property test

#[test]
fn label_change_to_an_unusable_value_is_a_drain_gated_removal() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let b = epod("b", "u2", EG, "10.1.0.2");
    live_egress(&mut h, EG, &[a.clone(), b]);
    let mut reserved = a.clone();
    reserved.meta.labels = vec![(crate::names::EGRESS_LABEL.into(), "default-natgw".into())];
    reserved.meta.finalizers = vec![crate::names::POD_FINALIZER.into()];
    h.deliver(vec![KubeEvent::PodApplied(reserved.clone())]);
    assert_eq!(h.engine.pod_deletion("ns/a").unwrap().addresses, vs(&["10.1.0.1"]), "a record holds the finalizer");
    h.tick();
    assert_eq!(pod_events(&h, crate::names::REASON_RESERVED_EGRESS_LABEL), 1);
    // Deleted before the drain landed: the record still owns the finalizer.
    h.deliver(vec![KubeEvent::PodApplied(terminating(&reserved))]);
    h.tick();
    assert!(remove_call(&h, "u1").is_none());
    sync_ok(&mut h).unwrap();
    assert!(remove_call(&h, "u1").is_some());
    inv(&h);
}

#[test]
fn finalizer_waits_for_addresses_left_under_a_previous_identity() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    // Moves to another identity: the old address is drained without a record...
    let mut moved = a.clone();
    moved.meta.labels = vec![(crate::names::EGRESS_LABEL.into(), EG2.into())];
    h.deliver(vec![KubeEvent::PodApplied(moved.clone())]);
    h.tick();
    let unbind = h.find("POST updateAddressLocations").unwrap();
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    h.ok(c);
    assert_eq!(state(&h, EG2), Some(ResourceState::CreationInProgress));
    // ... and the pod is deleted before EG2 exists, while the unbind of EG fails.
    delete_event(&mut h, &moved);
    h.fail(unbind, transient());
    assert!(h.engine.nrp().maps_address_to(&id(EG), "10.1.0.1"));
    let rec = h.engine.pod_deletion("ns/a").unwrap();
    assert!(rec.other_addresses.contains(&(id(EG), "10.1.0.1".to_string())), "{rec:?}");
    // EG2's create is pre-empted into its delete; its NAT goes, but the finalizer waits for EG.
    create_nat(&mut h, EG2);
    h.tick();
    finish_nat_delete(&mut h, EG2);
    assert!(h.engine.nrp().maps_address_to(&id(EG), "10.1.0.1"));
    assert!(remove_call(&h, "u1").is_none() && !removals_started(&h).contains(&"u1".to_string()));
    assert!(!h.engine.pod_deletion("ns/a").unwrap().is_last_pod, "demoted to a drain record");
    for _ in 0..5 {
        if remove_call(&h, "u1").is_some() {
            break;
        }
        h.wake();
        sync_ok(&mut h);
    }
    assert!(remove_call(&h, "u1").is_some());
    assert!(!h.engine.nrp().maps_address_to(&id(EG), "10.1.0.1"), "released only once the old address left NRP");
    inv(&h);
}

#[test]
fn replacement_that_registers_nothing_schedules_the_nat_deletion() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    let mut moved = a.clone();
    moved.pod_ip = "10.1.0.7".into();
    moved.pod_ips = vs(&["10.1.0.7"]);
    h.deliver(vec![KubeEvent::PodApplied(moved)]);
    h.tick();
    assert_eq!(state(&h, EG), Some(ResourceState::Created), "the replacement gap keeps the NAT");
    // The pod is gone before its re-registration: nothing registers.
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    h.fail(c, CallError::of_kind(ErrorKind::NotFound, "gone"));
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionPending), "no pod holds the identity: the NAT goes");
    assert_eq!(h.engine.pod_deletion("ns/a").unwrap().addresses, vs(&["10.1.0.1"]));
    assert!(h.run_ok(30));
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert!(!h.engine.nrp().has_nat_gateway(&id(EG)));
    inv(&h);
}

#[test]
fn a_hung_pod_call_times_out() {
    let mut h = harness();
    let p = epod("a", "u1", EG, "10.1.0.1");
    h.deliver(vec![KubeEvent::PodApplied(p)]);
    h.tick();
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    assert_eq!(h.last.next_wake_ms, Some(h.now + 300_000));
    h.advance(299_999);
    assert!(h.engine.is_pod_busy("ns/a"));
    h.advance(1);
    // Timed out: a failure after retries, so the pod is registered without the finalizer.
    assert!(!h.engine.is_pod_busy("ns/a"));
    assert_eq!(metric(&h, "pod_finalizer_add_failed_total", &[]), 1.0);
    assert!(h.engine.is_service_tracked(&id(EG)));
    // Its late completion is ignored.
    h.ok(c);
    assert_eq!(metric(&h, "ignored_completions_total", &[]), 1.0);
    inv(&h);
}
