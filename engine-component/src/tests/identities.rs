//! Identities Azure or the engine cannot use: a UID whose derived names (`<uid>`, `<uid>-pip`)
//! break Azure's naming rule is rejected at admission with a Warning Event (never retried, and a
//! deleting Service's finalizers are released: nothing was created); a UID another live Service
//! already owns is ignored with a Warning Event (the owner's load balancer is neither adopted
//! nor torn down).

use super::common::*;
use crate::names::{REASON_CONFIGURATION_REJECTED, REASON_DUPLICATE_UID, REASON_INVALID_RESOURCE_NAME, SERVICE_FINALIZERS};

/// UIDs whose inbound names Azure refuses.
fn illegal_uids() -> Vec<String> {
    vec![
        "0f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6ü".into(),
        "x".repeat(77),
        "a/b".into(),
        "a?b".into(),
        "a#b".into(),
        "a%2fb".into(),
        "a b".into(),
        "trailing.".into(),
        "..".into(),
    ]
}

fn service_events(h: &Harness, reason: &str) -> Vec<KubeEventRecord> {
    h.io.events.iter().filter(|e| e.reason == reason && e.kind == ObjectKind::Service).cloned().collect()
}

fn with_our_finalizers(mut s: Service) -> Service {
    s.meta.finalizers = SERVICE_FINALIZERS.iter().map(|f| f.to_string()).collect();
    s
}

#[test]
fn a_uid_azure_cannot_name_is_rejected_at_admission_with_a_warning() {
    for uid in illegal_uids() {
        let mut h = harness();
        h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", &uid, &[("10.1.0.1", "n1")]))]);
        h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&uid, &[80]))]);
        let started = h.tick();
        assert!(started.is_empty(), "{uid:?}: nothing is sent, not even a finalizer: {:?}", started_labels(&started));
        assert!(!h.engine.is_service_tracked(&id(&uid)), "{uid:?}: not tracked");
        let events = service_events(&h, REASON_INVALID_RESOURCE_NAME);
        assert_eq!(events.len(), 1, "{uid:?}: one Warning Event");
        assert_eq!(events[0].event_type, EventType::Warning);
        assert_eq!(events[0].target.uid, uid);
        // Terminal: time passing retries nothing.
        h.advance(20 * 60 * 1_000);
        assert!(h.outstanding.is_empty(), "{uid:?}");
        assert!(h.engine.is_settled(), "{uid:?}");
        inv(&h);
    }
    // The longest legal UID: `<76 chars>-pip` is exactly 80.
    let mut h = harness();
    let uid = "x".repeat(76);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&uid, &[80]))]);
    h.tick();
    assert!(h.engine.is_service_tracked(&id(&uid)));
    assert!(service_events(&h, REASON_INVALID_RESOURCE_NAME).is_empty());
}

#[test]
fn a_deleting_service_with_an_illegal_name_gets_its_finalizers_back() {
    for uid in illegal_uids() {
        let mut h = harness();
        h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&uid, &[80]))]);
        h.tick();
        // The Service carries our finalizers (added by an engine that did not check names).
        let mut gone = with_our_finalizers(lb_service(&uid, &[80]));
        gone.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        h.deliver(vec![KubeEvent::ServiceApplied(gone)]);
        let started = h.tick();
        assert_eq!(started_labels(&started), vec!["remove-service-finalizers"], "{uid:?}: no Azure call, only the finalizers");
        let c = h.find("remove-service-finalizers").unwrap();
        assert!(matches!(&h.outstanding[&c], Call::Kube(KubeCall::RemoveServiceFinalizers(r)) if r.uid == uid));
        h.ok(c);
        assert!(!h.engine.is_service_tracked(&id(&uid)), "{uid:?}: done");
        assert!(h.engine.is_settled(), "{uid:?}");
        inv(&h);
    }
    // Without our finalizers there is nothing to release.
    let mut h = harness();
    let uid = "a/b";
    h.deliver(vec![deleting(uid, &[80])]);
    assert!(h.tick().is_empty());
    assert!(!h.engine.is_service_tracked(&id(uid)));
}

#[test]
fn an_op_with_an_illegal_name_from_before_the_rule_is_terminal_and_its_delete_sends_nothing_to_azure() {
    // An op restored from an engine without the naming rule, retrying its create.
    let uid = "a b";
    let mut h = harness();
    let s = lb_service(uid, &[80]);
    let cfg = ServiceConfig::inbound(s.meta.object_ref(), crate::admission::extract(&s));
    let op = crate::state::Operation::new(cfg, ResourceState::NotStarted, h.now, "cid".into());
    h.engine.insert_op(&id(uid), op);
    h.engine.trigger_dispatch(&id(uid));
    let started = h.tick();
    assert!(started.is_empty(), "no finalizer, no Azure call: {:?}", started_labels(&started));
    let op = h.engine.operation(&id(uid)).unwrap();
    assert!(op.creation_failed_terminal, "terminal park");
    assert_eq!(service_events(&h, REASON_CONFIGURATION_REJECTED).len(), 1);
    h.advance(20 * 60 * 1_000);
    assert!(h.outstanding.is_empty());
    // Its deletion releases the finalizers without any Azure call.
    let mut gone = with_our_finalizers(lb_service(uid, &[80]));
    gone.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    h.deliver(vec![KubeEvent::ServiceApplied(gone)]);
    let started = h.tick();
    assert_eq!(started_labels(&started), vec!["remove-service-finalizers"]);
    let c = h.find("remove-service-finalizers").unwrap();
    h.ok(c);
    assert!(!h.engine.is_service_tracked(&id(uid)));
    inv(&h);
}

/// A second Service (another namespace/name) with `uid`.
fn impostor(uid: &str, ports: &[i32]) -> Service {
    let mut s = lb_service(uid, ports);
    s.meta.namespace = "other".into();
    s.meta.name = "copy".into();
    s
}

#[test]
fn a_second_service_with_the_same_uid_never_touches_the_first_ones_load_balancer() {
    for second_uid in [UID.to_string(), UID.to_ascii_uppercase()] {
        let mut h = harness();
        create_published(&mut h, UID, "s", "10.1.0.1");
        let before = h.engine.operation(&id(UID)).cloned();
        let owner = h.engine.service_object(&id(UID)).cloned();

        // Applied as a LoadBalancer with other ports: not adopted (no update of the first LB).
        h.deliver(vec![KubeEvent::ServiceApplied(impostor(&second_uid, &[8443]))]);
        // Changed to ClusterIP: not a delete of the first LB.
        let mut cluster_ip = impostor(&second_uid, &[8443]);
        cluster_ip.service_type = "ClusterIP".into();
        h.deliver(vec![KubeEvent::ServiceApplied(cluster_ip)]);
        // Marked for deletion, then deleted: neither.
        let mut going = impostor(&second_uid, &[8443]);
        going.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        h.deliver(vec![KubeEvent::ServiceApplied(going.clone())]);
        h.deliver(vec![KubeEvent::ServiceDeleted(going)]);
        assert!(h.tick().is_empty(), "{second_uid}: nothing is sent for the first Service's identity");
        assert_eq!(h.engine.operation(&id(UID)).cloned(), before, "{second_uid}");
        assert_eq!(h.engine.service_object(&id(UID)).cloned(), owner, "{second_uid}: the owner's object is kept");
        assert!(h.engine.nrp().has_load_balancer(&id(UID)));
        assert!(h.engine.nrp().has_addresses_for(&id(UID)));
        let events = service_events(&h, REASON_DUPLICATE_UID);
        assert_eq!(events.len(), 3, "{second_uid}: a Warning Event on each event of the second Service that would act");
        assert!(events.iter().all(|e| e.target.namespace == "other" && e.target.name == "copy"));

        // The owner itself still works: an update, then its deletion.
        h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
        assert_eq!(state(&h, UID), Some(ResourceState::UpdateInProgress));
        h.deliver(vec![deleting(UID, &[81])]);
        assert!(h.engine.operation(&id(UID)).unwrap().state.is_deleting());
        inv(&h);
    }
}

#[test]
fn once_the_owner_is_gone_the_uid_is_free() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceDeleted(lb_service(UID, &[80]))]);
    assert!(h.run_ok(20));
    assert!(!h.engine.is_service_tracked(&id(UID)));
    h.deliver(vec![KubeEvent::ServiceApplied(impostor(UID, &[80]))]);
    assert!(h.engine.is_service_tracked(&id(UID)));
    assert_eq!(h.engine.operation(&id(UID)).unwrap().config.object.namespace, "other");
    assert!(service_events(&h, REASON_DUPLICATE_UID).is_empty());
}
