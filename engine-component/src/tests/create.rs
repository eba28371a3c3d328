//! Group A: creation, tracking, idempotency.

use super::common::*;

#[test]
fn s001_add_service_creates_not_started_op_and_one_trigger() {
    let mut h = harness();
    h.engine.add_service(inbound_cfg(UID, &[80]));
    assert_eq!(state(&h, UID), Some(ResourceState::NotStarted));
    assert!(queued_for_update(&h, UID));
    assert_eq!(h.engine.dispatcher().runnable_len(), 1);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.correlation_id.len(), 36);
    h.engine.add_service(inbound_cfg(UID, &[80]));
    assert_eq!(h.engine.dispatcher().runnable_len(), 1);
}

#[test]
fn s002_add_service_for_registered_lb_is_a_no_op() {
    let mut h = harness();
    h.engine.nrp.set_load_balancer(&id(UID), true);
    h.engine.add_service(inbound_cfg(UID, &[80]));
    assert!(!h.engine.is_service_tracked(&id(UID)));
    assert!(!queued_for_update(&h, UID));
    assert!(h.tick().is_empty());
}

#[test]
fn s003_add_service_again_leaves_in_flight_op_untouched() {
    let mut h = harness();
    h.engine.add_service(inbound_cfg(UID, &[80]));
    h.tick();
    assert_eq!(state(&h, UID), Some(ResourceState::CreationInProgress));
    h.engine.update_op(&id(UID), |op| op.retry_count = 3);
    h.engine.add_service(inbound_cfg(UID, &[81]));
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::CreationInProgress);
    assert_eq!(op.retry_count, 3);
    assert!(op.config.same_spec(&inbound_cfg(UID, &[80])));
    assert!(!queued_for_update(&h, UID));
}

#[test]
fn s004_empty_uid_creates_nothing() {
    let mut h = harness();
    let mut cfg = inbound_cfg(UID, &[80]);
    cfg.identity = id("");
    h.engine.add_service(cfg.clone());
    h.engine.update_service(cfg);
    h.engine.update_endpoints(&id(""), &emap(&[]), &emap(&[("10.1.0.1", "10.0.0.1")]));
    h.engine.delete_service(&id(""), true, true);
    let mut s = lb_service("", &[80]);
    s.meta.uid = String::new();
    h.deliver(vec![KubeEvent::ServiceApplied(s)]);
    assert_eq!(h.engine.operations().count(), 0);
    assert_eq!(h.engine.dispatcher().runnable_len(), 0);
    assert!(!location_sync_triggered(&h));
    assert!(h.engine.desired().is_empty());
}

#[test]
fn s005_service_with_deletion_timestamp_is_never_provisioned() {
    let mut h = harness();
    h.deliver(vec![deleting(UID, &[80])]);
    assert!(!h.engine.is_service_tracked(&id(UID)));
    assert!(h.tick().is_empty());
    // Tracked and already deleting: no recreate intent.
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![deleting(UID, &[80])]);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
    h.deliver(vec![deleting(UID, &[80, 81])]);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(!op.recreate_after_deletion);
    assert_eq!(op.state, ResourceState::DeletionPending);
}

#[test]
fn s006_zero_port_service_is_not_tracked() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[]))]);
    assert!(!h.engine.is_service_tracked(&id(UID)));
    h.tick();
    assert!(h.io.events.is_empty(), "no error event");
}

#[test]
fn s007_service_gone_before_first_step_drops_tracking_silently() {
    for kind in [ErrorKind::NotFound, ErrorKind::Replaced] {
        let mut h = harness();
        h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
        h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
        let s = h.tick();
        assert_eq!(started_labels(&s), vec!["add-service-finalizers"]);
        let s = h.fail(s[0].0, CallError::of_kind(kind, "gone"));
        assert!(s.is_empty(), "no Azure call");
        assert!(!h.engine.is_service_tracked(&id(UID)));
        assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
        assert_eq!(metric(&h, "service_operations_total", &[]), 0.0, "no completion reported");
        inv(&h);
    }
}

#[test]
fn s008_transient_lookup_error_fails_before_any_pip() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let s = h.tick();
    let s = h.fail(s[0].0, CallError::of_kind(ErrorKind::Transport, "apiserver unavailable"));
    assert!(s.is_empty());
    assert!(h.log.iter().all(|(_, c)| c.label() != "PUT publicIPAddresses"));
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::NotStarted);
    assert_eq!(op.retry_count, 1);
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "create"), ("result", "error")]), 1.0);
}

#[test]
fn s009_status_patch_failure_is_retried_but_lb_stays_published() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices"] {
        h.tick();
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    let c = h.find("patch-service-ingress").unwrap();
    h.fail(c, CallError::of_kind(ErrorKind::Conflict, "conflict"));
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::NotStarted);
    assert_eq!(op.retry_count, 1);
    assert!(h.engine.nrp().has_load_balancer(&id(UID)), "LB stays recorded");
    // Endpoints keep syncing.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"]);
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(body[0].addresses[0].services, vec![UID.to_string()]);
    inv(&h);
}

#[test]
fn s010_create_writes_ingress_and_records_last_applied() {
    let mut h = harness();
    let mut svc = lb_service(UID, &[80]);
    svc.ingress = vec![LoadBalancerIngress { ip: String::new(), hostname: "keep.example.com".into() }];
    h.deliver(vec![KubeEvent::ServiceApplied(svc)]);
    h.tick();
    let mut pip = None;
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices"] {
        let c = h.find(label).unwrap();
        if label == "PUT publicIPAddresses" {
            h.complete(
                c,
                Ok(CallOutput::PublicIp(PublicIpInfo {
                    name: format!("{UID}-pip"),
                    ip_address: Some("20.1.2.3".into()),
                    version: IpVersion::V4,
                    attached: false,
                })),
            );
            pip = Some(());
        } else {
            h.ok(c);
        }
    }
    assert!(pip.is_some());
    let c = h.find("patch-service-ingress").unwrap();
    match h.outstanding.get(&c).unwrap() {
        Call::Kube(KubeCall::PatchServiceIngress(r, ing)) => {
            assert_eq!(r.name, format!("svc-{UID}"));
            assert_eq!(
                ing,
                &vec![
                    LoadBalancerIngress { ip: String::new(), hostname: "keep.example.com".into() },
                    LoadBalancerIngress { ip: "20.1.2.3".into(), hostname: String::new() }
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    h.ok(c);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::Created);
    assert!(op.last_applied_config.as_ref().unwrap().same_spec(&inbound_cfg(UID, &[80])));
    assert!(op.in_flight_config.is_none());
}

#[test]
fn s010_status_write_skipped_when_ingress_already_equal() {
    let mut h = harness();
    let mut svc = lb_service(UID, &[80]);
    let ip = match ok_output(&Call::Cloud(CloudCall::PutPublicIp { name: format!("{UID}-pip"), version: IpVersion::V4 })) {
        CallOutput::PublicIp(i) => i.ip_address.unwrap(),
        _ => unreachable!(),
    };
    svc.ingress = vec![LoadBalancerIngress { ip, hostname: String::new() }];
    h.deliver(vec![KubeEvent::ServiceApplied(svc)]);
    h.tick();
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    assert_eq!(state(&h, UID), Some(ResourceState::Created));
    assert!(h.log.iter().all(|(_, c)| c.label() != "patch-service-ingress"));
}
