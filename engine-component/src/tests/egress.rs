//! Group F (egress pods and ref-counting), plus 11 and 12 (outbound create, kind collision).

use super::common::*;
use crate::egress::pod::update_actions;
use crate::egress::FinalizerDecision;
use crate::names::{REASON_INVALID_EGRESS_LABEL, REASON_INVALID_POD_IP, REASON_NO_NODE_LOCATION, REASON_RESERVED_EGRESS_LABEL};

const L1: &str = "10.0.0.1";

#[test]
fn s011_outbound_create_pips_then_nat_then_registration() {
    let mut h = harness();
    let p = epod("a", "u1", EG, "10.1.0.1");
    admit(&mut h, &p);
    // IPv4-only cluster: one public IP.
    let c = h.find("PUT publicIPAddresses").unwrap();
    assert_eq!(h.outstanding[&c], Call::Cloud(CloudCall::PutPublicIp { name: format!("{EG}-pip"), version: IpVersion::V4 }));
    assert_eq!(h.labels(), vec!["PUT publicIPAddresses"], "no finalizer on any object, nothing else before the PIP");
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    assert_eq!(
        h.outstanding[&c],
        Call::Cloud(CloudCall::PutNatGateway(NatGatewaySpec {
            name: EG.into(),
            public_ips: vec![format!("{EG}-pip")],
            public_ips_v6: vec![]
        }))
    );
    // A failing NAT PUT records nothing and retries.
    h.fail(c, transient());
    assert!(!h.engine.nrp().has_nat_gateway(&id(EG)));
    assert_eq!(state(&h, EG), Some(ResourceState::NotStarted));
    assert_eq!(h.engine.operation(&id(EG)).unwrap().retry_count, 1);
    assert!(h.engine.desired().keys_of(&id(EG)).next().is_none(), "the pod stays buffered");
    h.wake();
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    h.ok(c);
    let c = h.find("POST updateServices").unwrap();
    assert_eq!(
        h.outstanding[&c],
        Call::Cloud(CloudCall::UpdateServices(vec![SgwServiceRequest {
            name: EG.into(),
            service_type: ServiceType::Outbound,
            is_delete: false,
            backend_pools: vec![],
            nat_gateway: NatReference::Set(EG.into()),
            is_default: None,
        }]))
    );
    // Registration failing records nothing either.
    h.fail(c, transient());
    assert!(!h.engine.nrp().has_nat_gateway(&id(EG)));
    h.wake();
    create_nat(&mut h, EG);
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(
        body,
        vec![LocationUpdate {
            location: L1.into(),
            action: UpdateAction::FullUpdate,
            addresses: vec![AddressUpdate { address: "10.1.0.1".into(), services: vec![EG.into()] }]
        }]
    );
    assert_eq!(
        metric(&h, "service_operations_total", &[("operation", "create"), ("service_type", "outbound"), ("result", "success")]),
        1.0
    );
    inv(&h);

    // With an IPv6 node in the cluster, a new identity gets both families.
    let mut h = dual_harness();
    admit(&mut h, &egress_pod("ns/d", "u2", EG2, &["10.1.3.1", "fd01::1"], &["10.0.0.3", "fd00::3"]));
    let labels: Vec<Call> = h.outstanding.values().cloned().collect();
    assert_eq!(labels, vec![Call::Cloud(CloudCall::PutPublicIp { name: format!("{EG2}-pip"), version: IpVersion::V4 })]);
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.ok(c);
    let c = h.find("PUT publicIPAddresses").unwrap();
    assert_eq!(h.outstanding[&c], Call::Cloud(CloudCall::PutPublicIp { name: format!("{EG2}-pip-v6"), version: IpVersion::V6 }));
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    assert_eq!(
        h.outstanding[&c],
        Call::Cloud(CloudCall::PutNatGateway(NatGatewaySpec {
            name: EG2.into(),
            public_ips: vec![format!("{EG2}-pip")],
            public_ips_v6: vec![format!("{EG2}-pip-v6")]
        }))
    );
}

#[test]
fn s012_egress_label_equal_to_inbound_identity_is_rejected() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    let before = h.engine.operation(&id(UID)).cloned();
    // Through the informer: no finalizer, no registration.
    h.deliver(vec![KubeEvent::PodApplied(epod("p", "pod-1", &UID.to_uppercase(), "10.1.0.9"))]);
    assert!(h.tick().iter().all(|(_, c)| !matches!(c, Call::Kube(KubeCall::AddPodFinalizer(_)))));
    // Directly: AddPod and DeletePod are rejected.
    h.engine.add_pod(&id(UID), "ns/p", "pod-1", L1, "10.1.0.9");
    let r = h.engine.delete_pod(&id(UID), L1, &vs(&["10.1.0.1"]), "ns", "p", "pod-1");
    assert_eq!(r.decision, FinalizerDecision::Reject);
    assert!(!r.is_last_pod && !r.enqueued);
    let r = h.engine.delete_pod_without_addresses(&id(UID), "ns", "p", "pod-1");
    assert_eq!(r.decision, FinalizerDecision::Reject);
    assert_eq!(h.engine.operation(&id(UID)).cloned(), before);
    assert!(h.engine.desired().get(L1, "10.1.0.9").is_none());
    assert!(h.engine.desired().holds(&id(UID), L1, "10.1.0.1"), "inbound address untouched");
    assert!(h.engine.pod_deletions().is_empty());
    inv(&h);
}

#[test]
fn s062_nat_in_nrp_untracked_applies_pod_immediately() {
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert!(h.engine.buffered_pods(&id(EG)).is_empty());
    assert!(h.engine.desired().holds(&id(EG), L1, "10.1.0.1"));
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    assert!(location_sync_triggered(&h));
    let body = {
        h.tick();
        sync_ok(&mut h).unwrap()
    };
    assert_eq!(body[0].addresses[0].services, vec![EG.to_string()], "adopted NAT is ready: published at once");
    inv(&h);
}

#[test]
fn s063_unknown_identity_creates_op_and_buffers() {
    let mut h = harness();
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    let op = h.engine.operation(&id(EG)).unwrap();
    assert_eq!(op.state, ResourceState::NotStarted);
    assert_eq!(op.kind(), crate::config::ServiceKind::Outbound);
    assert_eq!(op.triggering_pod, Some(("ns".to_string(), "a".to_string())));
    assert_eq!(op.config.outbound_config().unwrap().ip_families, vec![IpVersion::V4]);
    assert!(queued_for_update(&h, EG));
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 0, "buffered pods are not counted");
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.2");
    h.tick();
    assert_eq!(state(&h, EG), Some(ResourceState::CreationInProgress));
    h.engine.add_pod(&id(EG), "ns/c", "u3", L1, "10.1.0.3");
    let keys: Vec<&str> = h.engine.buffered_pods(&id(EG)).iter().map(|b| b.pod_key.as_str()).collect();
    assert_eq!(keys, vec!["ns/a", "ns/b", "ns/c"]);
    assert!(h.engine.desired().keys_of(&id(EG)).next().is_none());
    create_nat(&mut h, EG);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 3, "promoted on create success");
    assert!(h.engine.buffered_pods(&id(EG)).is_empty());
    inv(&h);
}

#[test]
fn s064_duplicate_add_counts_once_and_last_pod_is_reported_once() {
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(r.is_last_pod && r.enqueued);
    assert_eq!(r.decision, FinalizerDecision::HoldForServiceDeletion);
    assert!(!h.engine.desired().ref_counts().contains_key(&id(EG)), "counter key deleted");
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionPending));
    assert!(h.engine.pending_deletion(&id(EG)).is_some());
    let op = h.engine.operation(&id(EG)).cloned();
    let pending = h.engine.pending_deletion(&id(EG)).cloned();
    // A duplicate delete changes nothing and never goes negative.
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "", "", "");
    assert!(!r.is_last_pod && !r.enqueued);
    assert_eq!(h.engine.operation(&id(EG)).cloned(), op);
    assert_eq!(h.engine.pending_deletion(&id(EG)).cloned(), pending);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 0);
    inv(&h);
}

#[test]
fn s065_first_of_two_is_not_last_second_is() {
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.2");
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 2);
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(!r.is_last_pod);
    assert_eq!(r.decision, FinalizerDecision::HoldForDrain);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.2"]), "ns", "b", "u2");
    assert!(r.is_last_pod);
    assert!(!h.engine.desired().ref_counts().contains_key(&id(EG)));
    inv(&h);
}

#[test]
fn s066_stale_delete_while_another_pod_holds_the_count() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    let b = epod("b", "u2", EG, "10.1.0.2");
    live_egress(&mut h, EG, &[a.clone(), b]);
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(!r.is_last_pod);
    h.tick();
    sync_ok(&mut h);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    // Stale duplicate: nothing live, nothing in NRP for it.
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "", "", "");
    assert!(!r.is_last_pod && !r.enqueued);
    assert_eq!(r.decision, FinalizerDecision::ReleaseNoDrain);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    inv(&h);
}

#[test]
fn s067_revive_of_pending_deletion_or_buffer_after_an_attempt() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, &[a]);
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(r.is_last_pod);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionPending));
    // Another departed pod with a last-pod record (seen without IPs).
    let r = h.engine.delete_pod_without_addresses(&id(EG), "ns", "gone", "u9");
    assert!(r.is_last_pod && r.enqueued);
    assert!(h.engine.pod_deletion("ns/gone").unwrap().is_last_pod);
    // The sole pod comes back with a new IP: revive.
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.5");
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    assert!(h.engine.pending_deletion(&id(EG)).is_none());
    assert!(h.engine.pod_deletion("ns/a").is_none(), "the live pod's own record is dropped");
    assert!(!h.engine.pod_deletion("ns/gone").unwrap().is_last_pod, "demoted to an ordinary drain record");
    assert!(h.engine.desired().holds(&id(EG), L1, "10.1.0.5"));
    assert!(location_sync_triggered(&h));
    inv(&h);

    // A delete already attempted (RetryCount > 0): buffer instead.
    let mut h = harness();
    live_egress(&mut h, EG, &[epod("a", "u1", EG, "10.1.0.1")]);
    h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    h.engine.update_op(&id(EG), |op| op.retry_count = 1);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.5");
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionPending));
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1);
    assert!(!h.engine.desired().holds(&id(EG), L1, "10.1.0.5"));
    inv(&h);
}

#[test]
fn s068_pod_during_delete_is_buffered_then_recreated() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    delete_event(&mut h, &a);
    h.tick();
    sync_ok(&mut h);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    assert!(h.engine.active_operation(&id(EG)).is_some(), "delete worker running");
    let b = epod("b", "u2", EG, "10.1.0.2");
    admit(&mut h, &b);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1);
    finish_nat_delete(&mut h, EG);
    assert!(removals_started(&h).contains(&"u1".to_string()), "the last pod released after the NAT delete");
    // Re-created fresh (NotStarted, then dispatched by the same tick).
    assert_eq!(state(&h, EG), Some(ResourceState::CreationInProgress));
    assert_eq!(h.engine.operation(&id(EG)).unwrap().retry_count, 0);
    assert!(h.engine.operation(&id(EG)).unwrap().last_applied_config.is_none());
    assert!(h.find("PUT publicIPAddresses").is_some());
    create_nat(&mut h, EG);
    assert!(h.engine.desired().holds(&id(EG), L1, "10.1.0.2"), "buffered pod promoted");
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(body[0].addresses[0].address, "10.1.0.2");
    assert!(!removals_started(&h).contains(&"u2".to_string()));
    inv(&h);
}

#[test]
fn s069_only_buffered_pod_deleted_before_dispatch_aborts() {
    let mut h = harness();
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert_eq!(r.decision, FinalizerDecision::ReleaseNoDrain);
    assert!(!r.enqueued && !r.is_last_pod);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert!(h.engine.buffered_pods(&id(EG)).is_empty());
    assert!(h.engine.pod_deletions().is_empty());
    assert!(h.engine.pending_deletion(&id(EG)).is_none());
    assert!(h.tick().is_empty(), "no Azure resource is ever created");
    inv(&h);

    // Through the informer: the delete waits for the finalizer add, then aborts the create
    // before it is dispatched and releases the finalizer directly.
    let mut h = harness();
    let p = epod("a", "u1", EG, "10.1.0.1");
    h.deliver(vec![KubeEvent::PodApplied(p.clone())]);
    h.tick();
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    h.deliver(vec![KubeEvent::PodApplied(terminating(&p))]);
    assert!(h.engine.is_pod_busy("ns/a"));
    let started = h.ok(c);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(is_remove_fin(&started[0].1, "u1"));
    assert!(h.log.iter().all(|(_, c)| !matches!(c, Call::Cloud(_))), "no Azure call at all");
    inv(&h);
}

#[test]
fn s070_only_buffered_pod_deleted_during_create_schedules_delete() {
    let mut h = harness();
    let p = epod("a", "u1", EG, "10.1.0.1");
    admit(&mut h, &p);
    assert_eq!(state(&h, EG), Some(ResourceState::CreationInProgress));
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(r.is_last_pod);
    assert_eq!(r.decision, FinalizerDecision::HoldForServiceDeletion);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    assert!(h.engine.pod_deletion("ns/a").unwrap().is_last_pod);
    // The create completes: routed into the delete.
    create_nat(&mut h, EG);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    h.tick();
    assert!(h.find("GET services").is_some(), "the delete runs: {:?}", h.labels());
    assert!(removals_started(&h).is_empty(), "finalizer held until the NAT is deleted");
    finish_nat_delete(&mut h, EG);
    assert_eq!(removals_started(&h), vec!["u1".to_string()]);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert!(h.engine.pod_deletions().is_empty());
    inv(&h);
}

#[test]
fn s071_non_last_buffered_pod_deleted_after_dispatch() {
    let mut h = harness();
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.2");
    h.tick();
    assert_eq!(state(&h, EG), Some(ResourceState::CreationInProgress));
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert!(!r.is_last_pod && r.enqueued);
    let rec = h.engine.pod_deletion("ns/a").unwrap();
    assert!(!rec.is_last_pod);
    assert_eq!(rec.addresses, vs(&["10.1.0.1"]));
    let left: Vec<&str> = h.engine.buffered_pods(&id(EG)).iter().map(|b| b.pod_key.as_str()).collect();
    assert_eq!(left, vec!["ns/b"]);
    assert_eq!(state(&h, EG), Some(ResourceState::CreationInProgress));
    inv(&h);
}

#[test]
fn s072_failed_create_losing_last_buffered_pod_tears_down() {
    let mut h = harness();
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.tick();
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.fail(c, transient());
    assert_eq!(state(&h, EG), Some(ResourceState::NotStarted));
    assert_eq!(h.engine.operation(&id(EG)).unwrap().retry_count, 1);
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    assert!(h.engine.pending_deletion(&id(EG)).is_some());
    assert!(queued_for_update(&h, EG));
    assert_eq!(r.decision, FinalizerDecision::HoldForServiceDeletion, "finalizer held until the teardown");
    inv(&h);
    h.wake();
    finish_nat_delete(&mut h, EG);
    assert_eq!(removals_started(&h), vec!["u1".to_string()]);
    assert!(!h.engine.is_service_tracked(&id(EG)));

    // Never while live pods hold the ref-count.
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/live", "u0", L1, "10.1.0.9");
    let mut op =
        crate::state::Operation::new(ServiceConfig::outbound(id(EG), vec![IpVersion::V4], None), ResourceState::NotStarted, 0, "c".into());
    op.retry_count = 2;
    h.engine.insert_op(&id(EG), op);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1);
    h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    assert_eq!(state(&h, EG), Some(ResourceState::NotStarted));
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    inv(&h);
}

#[test]
fn s073_buffered_ip_reuse_and_cancel_by_address() {
    let mut h = harness();
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    h.tick(); // create dispatched: a later cancel may have reached NRP
    h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    // The IP is reused by another pod while still buffered.
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.1");
    h.engine.add_pod(&id(EG), "ns/c", "u3", L1, "10.1.0.3");
    // The delayed delete of a (again) cancels nothing of b's.
    h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "a", "u1");
    let keys: Vec<&str> = h.engine.buffered_pods(&id(EG)).iter().map(|b| b.pod_key.as_str()).collect();
    assert_eq!(keys, vec!["ns/b", "ns/c"]);
    // Without identity the address alone matches.
    h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "", "", "");
    let keys: Vec<&str> = h.engine.buffered_pods(&id(EG)).iter().map(|b| b.pod_key.as_str()).collect();
    assert_eq!(keys, vec!["ns/c"]);
    // A matching-UID delete cancels.
    h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.3"]), "ns", "c", "u3");
    assert!(h.engine.buffered_pods(&id(EG)).is_empty());
    inv(&h);
}

#[test]
fn s074_stale_uid_delete_keeps_the_replacement() {
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/p", "u2", L1, "10.1.0.1");
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.1"]), "ns", "p", "u1");
    assert_eq!(r.decision, FinalizerDecision::ReleaseNoDrain);
    assert!(!r.enqueued && !r.is_last_pod);
    let pod = h.engine.desired().get(L1, "10.1.0.1").unwrap();
    assert_eq!(pod.outbound_pod_uid.as_deref(), Some("u2"));
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    inv(&h);
}

#[test]
fn s075_same_identity_ip_replacement_never_schedules_nat_deletion() {
    // Through the informer: the sole pod's IP changes.
    let mut h = harness();
    let p = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&p));
    let mut moved = p.clone();
    moved.pod_ip = "10.1.0.7".into();
    moved.pod_ips = vs(&["10.1.0.7"]);
    h.deliver(vec![KubeEvent::PodApplied(moved)]);
    assert_eq!(state(&h, EG), Some(ResourceState::Created), "no deletion in the drain/add gap");
    assert!(h.engine.pending_deletion(&id(EG)).is_none());
    assert!(!h.engine.desired().holds(&id(EG), L1, "10.1.0.1"));
    assert!(h.engine.pod_deletion("ns/a").is_none(), "no record for a live pod");
    h.tick();
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    h.ok(c);
    assert!(h.engine.desired().holds(&id(EG), L1, "10.1.0.7"));
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    sync_ok(&mut h);
    assert!(removals_started(&h).is_empty(), "the pod keeps its finalizer");
    inv(&h);

    // Directly: replacement drain, then the new UID registers.
    let mut h = harness();
    h.engine.set_nrp_nat_gateway(&id(EG), true);
    h.engine.add_pod(&id(EG), "ns/a", "u1", L1, "10.1.0.1");
    let r = h.engine.delete_pod_for_replacement(&id(EG), L1, &vs(&["10.1.0.1"]), "", "", "");
    assert!(!r.is_last_pod);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    h.engine.add_pod(&id(EG), "ns/a", "u2", L1, "10.1.0.2");
    assert_eq!(h.engine.desired().get(L1, "10.1.0.2").unwrap().outbound_pod_uid.as_deref(), Some("u2"));
    assert!(h.engine.desired().get(L1, "10.1.0.1").is_none());
    inv(&h);
}

#[test]
fn s076_dual_stack_gaining_a_family_keeps_the_shared_address() {
    let mut h = dual_harness();
    let p = egress_pod("ns/d", "u1", EG, &["10.1.3.1"], &["10.0.0.3", "fd00::3"]);
    live_egress(&mut h, EG, std::slice::from_ref(&p));
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1);
    let mut dual = p.clone();
    dual.pod_ips = vs(&["10.1.3.1", "fd01::1"]);
    h.deliver(vec![KubeEvent::PodApplied(dual)]);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 1, "the IPv4 address was not drained");
    assert!(h.engine.desired().holds(&id(EG), "10.0.0.3", "10.1.3.1"));
    h.tick();
    let c = h.find_by(|c| is_add_fin(c, "u1")).unwrap();
    h.ok(c);
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 2);
    assert!(h.engine.desired().holds(&id(EG), "fd00::3", "fd01::1"));
    inv(&h);
}

#[test]
fn s077_new_pod_during_in_flight_delete_is_not_revived() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    delete_event(&mut h, &a);
    h.tick();
    sync_ok(&mut h);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    // A recovered drain (NRP still maps an old address) while the delete is in flight.
    h.engine
        .nrp
        .set_locations([(L1.into(), [("10.1.0.8".into(), [id(EG)].into_iter().collect())].into_iter().collect())].into_iter().collect());
    h.engine.mark_dirty(L1, "10.1.0.8");
    let r = h.engine.delete_pod(&id(EG), L1, &vs(&["10.1.0.8"]), "ns", "old", "u0");
    assert!(r.is_last_pod);
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress), "never demoted");
    h.engine.add_pod(&id(EG), "ns/b", "u2", L1, "10.1.0.2");
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress), "not revived");
    assert_eq!(h.engine.buffered_pods(&id(EG)).len(), 1);
    inv(&h);
}

#[test]
fn s078_pod_update_decision_table() {
    let base = egress_pod("ns/p", "u1", EG, &["10.1.0.1"], &["10.0.0.1"]);
    let with = |f: &dyn Fn(&mut Pod)| {
        let mut p = base.clone();
        f(&mut p);
        p
    };
    let no_ips = with(&|p| {
        p.pod_ip.clear();
        p.pod_ips.clear();
    });
    let no_host = with(&|p| {
        p.host_ip.clear();
        p.host_ips.clear();
    });
    let label = |l: &str| with(&|p| p.meta.labels = vec![(crate::names::EGRESS_LABEL.into(), l.into())]);
    let phase = |ph: &str| with(&|p| p.phase = ph.into());
    let deleting = with(&|p| p.meta.deletion_timestamp = Some("t".into()));
    let moved = with(&|p| {
        p.host_ip = "10.0.0.2".into();
        p.host_ips = vs(&["10.0.0.2"]);
    });
    let new_ip = with(&|p| {
        p.pod_ip = "10.1.0.2".into();
        p.pod_ips = vs(&["10.1.0.2"]);
    });
    let dual = with(&|p| {
        p.pod_ips = vs(&["10.1.0.1", "fd01::1"]);
        p.host_ips = vs(&["10.0.0.1", "fd00::1"]);
    });
    let dual_v6_moved = with(&|p| {
        p.pod_ips = vs(&["10.1.0.1", "fd01::1"]);
        p.host_ips = vs(&["10.0.0.1", "fd00::9"]);
    });
    let cases: Vec<(&str, Pod, Pod, (bool, bool))> = vec![
        ("label change", base.clone(), label("egress-b"), (true, true)),
        (
            "label change, new invalid",
            base.clone(),
            with(&|p| {
                p.meta.labels = vec![(crate::names::EGRESS_LABEL.into(), "egress-b".into())];
                p.phase = "Failed".into();
            }),
            (true, false),
        ),
        ("label removed", base.clone(), label(""), (true, false)),
        ("label set on a pod without IPs", label(""), no_ips.clone(), (false, false)),
        ("label gained", label(""), base.clone(), (false, true)),
        (
            "empty label unchanged",
            label(""),
            with(&|p| {
                p.meta.labels = vec![(crate::names::EGRESS_LABEL.into(), "".into())];
                p.phase = "Failed".into();
            }),
            (false, false),
        ),
        ("Failed", base.clone(), phase("Failed"), (true, false)),
        ("Succeeded", base.clone(), phase("Succeeded"), (true, false)),
        ("Unknown", base.clone(), phase("Unknown"), (true, false)),
        ("deletionTimestamp", base.clone(), deleting.clone(), (true, false)),
        (
            "invalid without IPs stays quiet",
            no_ips.clone(),
            with(&|p| {
                p.pod_ip.clear();
                p.pod_ips.clear();
                p.phase = "Failed".into();
            }),
            (false, false),
        ),
        ("gained IPs", no_ips.clone(), base.clone(), (false, true)),
        ("gained hostIP", no_host.clone(), base.clone(), (false, true)),
        ("gained IPs while invalid", no_ips.clone(), phase("Failed"), (false, false)),
        ("lost IPs", base.clone(), no_ips.clone(), (true, false)),
        ("lost hostIP", base.clone(), no_host.clone(), (true, false)),
        ("regained validity, same IPs", phase("Unknown"), base.clone(), (false, true)),
        ("moved node", base.clone(), moved.clone(), (true, true)),
        ("new pod IP", base.clone(), new_ip.clone(), (true, true)),
        ("gained a family", base.clone(), dual.clone(), (true, true)),
        ("secondary-family hostIP change", dual.clone(), dual_v6_moved.clone(), (true, true)),
        ("lost a family", dual.clone(), base.clone(), (true, true)),
        ("invalid to invalid with IPs", phase("Unknown"), phase("Failed"), (true, false)),
        ("no-op resync", base.clone(), base.clone(), (false, false)),
        ("Pending to Running", phase("Pending"), base.clone(), (false, false)),
    ];
    for (name, old, new, want) in cases {
        assert_eq!(update_actions(&old, &new), want, "{name}");
    }
}

#[test]
fn s079_invalid_and_reserved_labels_are_refused() {
    let mut h = harness();
    let cases = [
        ("default-natgw", REASON_RESERVED_EGRESS_LABEL),
        ("Default-NatGW", REASON_RESERVED_EGRESS_LABEL),
        ("ns/path", REASON_INVALID_EGRESS_LABEL),
    ];
    let long = "x".repeat(74);
    let mut all: Vec<(String, &str)> = cases.iter().map(|(l, r)| (l.to_string(), *r)).collect();
    all.push((long, REASON_INVALID_EGRESS_LABEL));
    all.push(("-bad".into(), REASON_INVALID_EGRESS_LABEL));
    for (i, (label, reason)) in all.iter().enumerate() {
        let before = pod_events(&h, reason);
        h.deliver(vec![KubeEvent::PodApplied(epod(&format!("p{i}"), &format!("u{i}"), label, "10.1.0.1"))]);
        let started = h.tick();
        assert!(started.is_empty(), "{label}: nothing started");
        assert_eq!(pod_events(&h, reason), before + 1, "{label}");
    }
    assert_eq!(h.engine.operations().count(), 0);
    assert!(h.engine.desired().is_empty());
    // Ordinary labels are accepted (upper case is lower-cased).
    h.deliver(vec![KubeEvent::PodApplied(epod("ok", "u-ok", "Egress-A.b_c", "10.1.0.2"))]);
    assert!(h.tick().iter().any(|(_, c)| is_add_fin(c, "u-ok")));
    let c = h.find_by(|c| is_add_fin(c, "u-ok")).unwrap();
    h.ok(c);
    assert!(h.engine.is_service_tracked(&id("egress-a.b_c")));
    inv(&h);
}

#[test]
fn s080_malformed_host_or_pod_ip_is_skipped_with_an_event() {
    let mut h = harness();
    let bad_host = egress_pod("ns/h", "u1", EG, &["10.1.0.1"], &["10.0.0.x"]);
    h.deliver(vec![KubeEvent::PodApplied(bad_host)]);
    assert!(h.tick().is_empty());
    assert_eq!(pod_events(&h, REASON_INVALID_POD_IP), 1);
    let mixed = egress_pod("ns/m", "u2", EG, &["junk", "10.1.0.2"], &["10.0.0.1"]);
    admit(&mut h, &mixed);
    assert_eq!(pod_events(&h, REASON_INVALID_POD_IP), 2, "one event per malformed address");
    let keys: Vec<&str> = h.engine.buffered_pods(&id(EG)).iter().map(|b| b.address.as_str()).collect();
    assert_eq!(keys, vec!["10.1.0.2"], "the valid peer is registered");
    let all_bad = egress_pod("ns/b", "u3", EG, &["junk"], &["10.0.0.1"]);
    h.deliver(vec![KubeEvent::PodApplied(all_bad)]);
    assert!(h.tick().iter().all(|(_, c)| !is_add_fin(c, "u3")));
    inv(&h);
}

#[test]
fn s081_dual_stack_pod_files_each_family_under_its_own_node_ip() {
    let mut h = dual_harness();
    // hostIPs deliberately list IPv6 second; the v6 address must never go under the v4 host IP.
    let p = egress_pod("ns/d", "u1", EG, &["10.1.3.1", "FD01:0:0::1"], &["10.0.0.3", "FD00::3"]);
    live_egress(&mut h, EG, &[p]);
    assert!(h.engine.desired().holds(&id(EG), "10.0.0.3", "10.1.3.1"));
    assert!(h.engine.desired().holds(&id(EG), "fd00::3", "fd01::1"));
    assert!(h.engine.desired().get("10.0.0.3", "fd01::1").is_none());
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 2);
    assert!(h.engine.nrp().services_at("fd00::3", "fd01::1").is_some_and(|s| s.contains(&id(EG))));
    // A v6 address with no v6 host IP is skipped with an event.
    let v4_host = egress_pod("ns/e", "u2", EG, &["10.1.0.5", "fd01::5"], &["10.0.0.1"]);
    admit(&mut h, &v4_host);
    assert_eq!(pod_events(&h, REASON_NO_NODE_LOCATION), 1);
    assert!(h.engine.desired().holds(&id(EG), L1, "10.1.0.5"));
    assert!(h.engine.desired().get(L1, "fd01::5").is_none());
    inv(&h);
}

#[test]
fn outbound_delete_disassociation_is_best_effort_and_counted_once() {
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    delete_event(&mut h, &a);
    h.tick();
    sync_ok(&mut h).unwrap();
    assert_eq!(state(&h, EG), Some(ResourceState::DeletionInProgress));
    // The services read fails: no clear, but the NAT is still read and detached.
    let c = h.find("GET services").unwrap();
    h.fail(c, transient());
    let c = h.find("GET natGateways").unwrap();
    h.complete(c, Ok(CallOutput::NatGateway(Some(NatGatewayInfo { name: EG.into(), references_service_gateway: true, raw: "{}".into() }))));
    let c = h.find("PUT natGateways").unwrap();
    h.fail(c, transient());
    // Both sub-steps failed: counted once, and the delete goes on.
    assert_eq!(metric(&h, "delete_substep_failures_total", &[("step", "disassociate_nat_gateway")]), 1.0);
    let c = h.find_by(|c| is_unregister(c, EG)).expect("unregister follows");
    assert_eq!(
        h.outstanding[&c],
        Call::Cloud(CloudCall::UpdateServices(vec![SgwServiceRequest {
            name: EG.into(),
            service_type: ServiceType::Outbound,
            is_delete: true,
            backend_pools: vec![],
            nat_gateway: NatReference::Absent,
            is_default: None
        }]))
    );
    // 404s everywhere are successes.
    h.fail(c, CallError::http(404, "NotFound", "gone"));
    let c = h.find("DELETE natGateways").unwrap();
    h.fail(c, CallError::http(404, "NotFound", "gone"));
    for _ in 0..2 {
        let c = h.find("DELETE publicIPAddresses").unwrap();
        h.fail(c, CallError::http(404, "NotFound", "gone"));
    }
    let c = h.find_by(|c| is_remove_fin(c, "u1")).unwrap();
    h.ok(c);
    assert!(!h.engine.is_service_tracked(&id(EG)));
    assert_eq!(
        metric(&h, "service_operations_total", &[("operation", "delete"), ("service_type", "outbound"), ("result", "success")]),
        1.0
    );
    // A services read without our entry and a NAT that is gone: no clear, no detach, no count.
    let mut h = harness();
    let a = epod("a", "u1", EG, "10.1.0.1");
    live_egress(&mut h, EG, std::slice::from_ref(&a));
    delete_event(&mut h, &a);
    h.tick();
    sync_ok(&mut h).unwrap();
    let c = h.find("GET services").unwrap();
    h.ok(c);
    let c = h.find("GET natGateways").unwrap();
    h.ok(c);
    assert!(h.find_by(|c| is_unregister(c, EG)).is_some());
    assert_eq!(metric(&h, "delete_substep_failures_total", &[("step", "disassociate_nat_gateway")]), 0.0);
    inv(&h);
}

#[test]
fn s012_a_service_never_acts_on_an_egress_op_of_the_same_identity() {
    // The other direction of the one-key-space guard.
    let mut h = harness();
    let name = "0f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f";
    live_egress(&mut h, name, &[epod("a", "u1", name, "10.1.0.1")]);
    let before = h.engine.operation(&id(name)).cloned();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(name, &[80]))]);
    h.deliver(vec![as_cluster_ip(name)]);
    h.deliver(vec![KubeEvent::ServiceDeleted(lb_service(name, &[80]))]);
    h.engine.delete_service(&id(name), true, false);
    assert_eq!(h.engine.operation(&id(name)).cloned(), before);
    assert!(h.tick().is_empty());
    inv(&h);
}
