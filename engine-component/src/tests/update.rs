//! Group B: updates and config drift.

use super::common::*;
use crate::config::{OutboundConfig, ServiceDetails, ServiceKind};

fn lb_rules(c: &Call) -> Vec<LbRule> {
    match c {
        Call::Cloud(CloudCall::PutLoadBalancer(lb)) => lb.rules.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn s013_changed_port_moves_created_to_update() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    assert_eq!(state(&h, UID), Some(ResourceState::Created));
    assert!(!queued_for_update(&h, UID));
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80, 443]))]);
    assert_eq!(state(&h, UID), Some(ResourceState::UpdateInProgress));
    assert!(queued_for_update(&h, UID));
    assert_eq!(h.engine.dispatcher().runnable_len(), 1);
}

#[test]
fn s014_update_in_each_state_records_config_without_trigger() {
    for st in [
        ResourceState::NotStarted,
        ResourceState::CreationInProgress,
        ResourceState::UpdateInProgress,
        ResourceState::DeletionPending,
        ResourceState::DeletionInProgress,
    ] {
        let mut h = harness();
        put_op(&mut h, UID, st);
        h.engine.update_service(inbound_cfg(UID, &[8080]));
        let op = h.engine.operation(&id(UID)).unwrap();
        assert_eq!(op.state, st);
        assert!(op.config.same_spec(&inbound_cfg(UID, &[8080])), "{st:?}");
        assert!(!queued_for_update(&h, UID), "{st:?}");
        assert_eq!(op.recreate_after_deletion, st.is_deleting(), "{st:?}");
    }
}

#[test]
fn s015_registered_untracked_lb_is_adopted_into_update() {
    let mut h = harness();
    h.engine.nrp.set_load_balancer(&id(UID), true);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::UpdateInProgress);
    assert!(op.last_applied_config.is_none());
    assert!(queued_for_update(&h, UID));
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["PUT loadBalancers"]);
    h.ok(s[0].0);
    assert_eq!(state(&h, UID), Some(ResourceState::Created));
}

#[test]
fn s016_outbound_update_is_ignored() {
    let mut h = harness();
    let cfg = ServiceConfig {
        identity: id("egress-a"),
        object: ObjectRef::default(),
        details: ServiceDetails::Outbound(OutboundConfig { ip_families: vec![IpVersion::V4], triggering_pod: None }),
    };
    h.engine.update_service(cfg);
    assert!(!h.engine.is_service_tracked(&id("egress-a")));
    assert!(!queued_for_update(&h, "egress-a"));
    let _ = ServiceKind::Outbound;
}

#[test]
fn s017_update_success_applies_in_flight_snapshot_and_detects_drift() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    let s = h.tick();
    assert_eq!(lb_rules(&s[0].1)[0].frontend_port, 81);
    h.ok(s[0].0);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::Created);
    assert!(op.last_applied_config.as_ref().unwrap().same_spec(&inbound_cfg(UID, &[81])));
    // Drift during flight.
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[82]))]);
    let s = h.tick();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[83]))]);
    assert!(!queued_for_update(&h, UID));
    h.complete(s[0].0, Ok(CallOutput::Done));
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::UpdateInProgress);
    assert!(op.last_applied_config.as_ref().unwrap().same_spec(&inbound_cfg(UID, &[82])));
    let c = h.find("PUT loadBalancers").expect("re-dispatched");
    assert_eq!(lb_rules(&h.outstanding[&c])[0].frontend_port, 83);
}

#[test]
fn s018_create_completing_with_newer_config_schedules_update() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[9090]))]);
    let c = h.find("patch-service-ingress").unwrap();
    let s = h.ok(c);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::UpdateInProgress, "Created, then immediately an update");
    assert!(op.last_applied_config.as_ref().unwrap().same_spec(&inbound_cfg(UID, &[80])));
    let put = s.iter().find(|(_, c)| c.label() == "PUT loadBalancers").expect("update dispatched");
    assert_eq!(lb_rules(&put.1)[0].frontend_port, 9090);
}

#[test]
fn s019_update_transient_failure_backs_off_in_update_state() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    let s = h.tick();
    h.fail(s[0].0, transient());
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::UpdateInProgress);
    assert_eq!(op.retry_count, 1);
    assert!(op.next_retry_at_ms.unwrap() > h.now);
    assert!(h.engine.dispatcher().timer(&id(UID)).is_some());
}

#[test]
fn s020_terminal_update_parks_but_live_lb_keeps_syncing() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[65535]))]);
    let s = h.tick();
    assert!(s.is_empty(), "build error: no call");
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::NotStarted);
    assert!(op.creation_failed_terminal);
    // Endpoints are applied live, not buffered.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
    h.tick();
    let body = sync_ok(&mut h).expect("sync");
    assert_eq!(body[0].addresses[0].services, vec![UID.to_string()]);
}

#[test]
fn s021_port_removal_re_puts_only_the_lb() {
    let mut h = harness();
    create(&mut h, UID, &[80, 443]);
    let before = h.log.len();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[443]))]);
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["PUT loadBalancers"]);
    let rules = lb_rules(&s[0].1);
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].frontend_port, 443);
    h.ok(s[0].0);
    assert_eq!(h.log.len(), before + 1, "no PIP, no registration");
}

#[test]
fn s022_unknown_state_is_a_no_op_everywhere() {
    let mut h = harness();
    put_op(&mut h, UID, ResourceState::Unknown(42));
    let before = h.engine.operation(&id(UID)).cloned();
    h.engine.update_service(inbound_cfg(UID, &[81]));
    h.engine.delete_service(&id(UID), true, false);
    h.engine.add_service(inbound_cfg(UID, &[82]));
    h.engine.update_endpoints(&id(UID), &emap(&[]), &emap(&[("10.1.0.1", "10.0.0.1")]));
    assert_eq!(h.engine.operation(&id(UID)).cloned(), before);
    assert!(!queued_for_update(&h, UID));
    assert!(h.engine.pending_deletion(&id(UID)).is_none());
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
    assert!(h.tick().is_empty());
    assert_eq!(metric(&h, "pending_service_operations", &[("state", "unknown"), ("service_type", "inbound")]), 1.0);
}
