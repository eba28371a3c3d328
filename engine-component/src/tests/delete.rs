//! Group C: deletion, pre-emption, recreate.

use super::common::*;

#[test]
fn s024_delete_waits_for_drain() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
    assert!(h.engine.pending_deletion(&id(UID)).is_some());
    assert!(h.engine.desired().keys_of(&id(UID)).next().is_none(), "stripped from desired pods");
    assert!(location_sync_triggered(&h));
    assert!(!queued_for_update(&h, UID));
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"], "only the drain");
    sync_ok(&mut h);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    assert!(h.engine.pending_deletion(&id(UID)).is_none());
    assert!(h.find("POST updateServices").is_some(), "delete worker dispatched");
    inv(&h);
}

#[test]
fn s025_delete_without_addresses_goes_straight_to_in_progress() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    assert!(h.engine.pending_deletion(&id(UID)).is_none());
    assert!(queued_for_update(&h, UID));
}

#[test]
fn s026_untracked_unregistered_delete_is_a_no_op_unless_orphan() {
    let mut h = harness();
    h.engine.delete_service(&id(UID), true, false);
    assert!(!h.engine.is_service_tracked(&id(UID)));
    h.engine.delete_service(&id(UID), true, true);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(op.is_orphan);
    assert_eq!(op.state, ResourceState::DeletionInProgress);
    assert!(queued_for_update(&h, UID));
}

#[test]
fn s027_repeated_delete_changes_nothing() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.engine.delete_service(&id(UID), true, false);
    h.engine.update_op(&id(UID), |op| op.retry_count = 2);
    let before = (h.engine.operation(&id(UID)).cloned(), h.engine.pending_deletion(&id(UID)).cloned());
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!((h.engine.operation(&id(UID)).cloned(), h.engine.pending_deletion(&id(UID)).cloned()), before);
    sync_ok(&mut h);
    h.tick();
    sync_ok(&mut h);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    let before = h.engine.operation(&id(UID)).cloned();
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(h.engine.operation(&id(UID)).cloned(), before);
}

#[test]
fn s028_create_success_after_fast_path_delete_routes_into_deletion() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    let s = h.tick();
    assert!(s.is_empty(), "the create worker still holds the slot");
    let c = h.find("POST updateServices").unwrap();
    let s = h.ok(c);
    // Register succeeded; the remaining status step runs, then the completion is pre-empted.
    let s = if let Some((c, _)) = s.iter().find(|(_, c)| c.label() == "patch-service-ingress") { h.ok(*c) } else { s };
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    assert!(h.engine.operation(&id(UID)).unwrap().in_flight_config.is_none());
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "create"), ("result", "success")]), 1.0);
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "delete")]), 0.0);
    assert_eq!(started_labels(&s), vec!["POST updateServices"], "exactly one delete dispatched (detach)");
    finish_delete(&mut h, UID);
    assert!(!h.engine.is_service_tracked(&id(UID)));
    inv(&h);
}

#[test]
fn s029_update_completion_after_republish_returns_to_pending() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    let s = h.tick();
    let put = s[0].0;
    // Drain happened meanwhile: NRP has nothing for the service; the delete takes the fast path.
    let mut drain = crate::diff::LocationDiff::default();
    drain
        .locations
        .insert("10.0.0.1".into(), crate::diff::LocationChange { action: UpdateAction::PartialUpdate, addresses: Default::default() });
    h.engine.nrp.apply(&drain);
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    assert!(h.engine.pending_deletion(&id(UID)).is_none());
    // An older sync re-publishes an address of the service.
    let mut republish = crate::diff::LocationDiff::default();
    republish.locations.insert(
        "10.0.0.1".into(),
        crate::diff::LocationChange { action: UpdateAction::FullUpdate, addresses: [("10.1.0.1".into(), [id(UID)].into())].into() },
    );
    h.engine.nrp.apply(&republish);
    h.ok(put);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
    assert!(h.engine.pending_deletion(&id(UID)).is_some(), "pending entry re-created");
    sync_ok(&mut h).expect("re-drain");
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
}

#[test]
fn s029_fast_path_is_not_taken_while_a_sync_listing_the_service_is_in_flight() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    // Keep the post-create sync in flight, then add an endpoint (the sync lists the service).
    let _ = sync_ok(&mut h);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    h.tick();
    assert!(h.engine.locations_updater().in_flight.is_some());
    assert!(!h.engine.nrp().has_addresses_for(&id(UID)));
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending), "the in-flight sync may publish it");
    sync_ok(&mut h);
    assert!(h.engine.nrp().has_addresses_for(&id(UID)));
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
    sync_ok(&mut h).expect("drain");
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    inv(&h);
}

#[test]
fn s030_delete_during_update_with_addresses_keeps_in_flight_config() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    let s = h.tick();
    h.engine.delete_service(&id(UID), true, false);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::DeletionPending);
    assert!(op.in_flight_config.is_some());
    h.ok(s[0].0);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(op.in_flight_config.is_none());
    assert_eq!(op.state, ResourceState::DeletionPending);
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "update")]), 1.0);
}

#[test]
fn s031_genuine_delete_completion_removes_everything() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![deleting(UID, &[80])]);
    h.tick();
    sync_ok(&mut h);
    finish_delete(&mut h, UID);
    assert!(!h.engine.is_service_tracked(&id(UID)));
    assert!(h.engine.pending_deletion(&id(UID)).is_none());
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
    assert!(h.engine.is_settled());
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "delete"), ("result", "success")]), 1.0);
}

#[test]
fn s032_lb_clusterip_lb_flip_recreates_after_delete() {
    for running in [false, true] {
        let mut h = harness();
        create_published(&mut h, UID, "s", "10.1.0.1");
        h.deliver(vec![as_cluster_ip(UID)]);
        assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
        if running {
            h.tick();
            sync_ok(&mut h);
            assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
        }
        h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
        assert!(h.engine.operation(&id(UID)).unwrap().recreate_after_deletion);
        assert_eq!(h.engine.buffered_endpoints(&id(UID)).len(), 1, "re-seeded from the slice cache");
        h.tick();
        sync_ok(&mut h);
        // Delete succeeds.
        let mut done = 0;
        while let Some(c) = h.find_by(|c| {
            matches!(
                c,
                Call::Cloud(CloudCall::UpdateServices(_))
                    | Call::Cloud(CloudCall::DeleteLoadBalancer { .. })
                    | Call::Cloud(CloudCall::DeletePublicIp { .. })
                    | Call::Kube(KubeCall::RemoveServiceFinalizers(_))
            )
        }) {
            if h.engine.operation(&id(UID)).unwrap().state != ResourceState::DeletionInProgress {
                break;
            }
            h.ok(c);
            done += 1;
        }
        assert_eq!(done, 5);
        let op = h.engine.operation(&id(UID)).unwrap();
        assert_eq!(op.state, ResourceState::CreationInProgress, "fresh create dispatched");
        assert_eq!(op.retry_count, 0);
        assert!(op.last_applied_config.is_none());
        assert!(!op.recreate_after_deletion);
        assert_eq!(started_labels(&[(0, h.log.last().unwrap().1.clone())]), vec!["add-service-finalizers"]);
        for label in
            ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices", "patch-service-ingress"]
        {
            let c = h.find(label).unwrap();
            h.ok(c);
        }
        assert_eq!(state(&h, UID), Some(ResourceState::Created));
        let body = sync_ok(&mut h).expect("replayed endpoints published");
        assert_eq!(body[0].addresses[0].address, "10.1.0.1");
        inv(&h);
    }
}

#[test]
fn s033_second_delete_clears_recreate_intent() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![as_cluster_ip(UID)]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    assert!(h.engine.operation(&id(UID)).unwrap().recreate_after_deletion);
    h.deliver(vec![as_cluster_ip(UID)]);
    assert!(!h.engine.operation(&id(UID)).unwrap().recreate_after_deletion);
    h.tick();
    sync_ok(&mut h);
    finish_delete(&mut h, UID);
    assert!(!h.engine.is_service_tracked(&id(UID)));
}

#[test]
fn s034_terminal_park_cleared_by_delete_and_recreate() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[65535]))]);
    let s = h.tick();
    h.ok(s[0].0); // finalizers; the build then fails
    assert!(h.engine.operation(&id(UID)).unwrap().creation_failed_terminal);
    h.deliver(vec![as_cluster_ip(UID)]);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[65535]))]);
    h.tick();
    finish_delete(&mut h, UID);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(!op.creation_failed_terminal, "recreate clears the terminal flag");
    // Same (still invalid) spec was recreated: it runs the create path again and re-parks.
    let c = h.find("add-service-finalizers").expect("create dispatched");
    h.ok(c);
    assert!(h.engine.operation(&id(UID)).unwrap().creation_failed_terminal);
    // A fixed spec provisions normally.
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    assert!(h.run_ok(20));
    assert_eq!(state(&h, UID), Some(ResourceState::Created));
}

#[test]
fn s035_overlay_rejection_re_drains() {
    // The transition itself, through the entry point.
    let mut h = harness();
    put_op(&mut h, UID, ResourceState::DeletionInProgress);
    h.engine.on_service_creation_complete(
        &id(UID),
        Err(crate::workers::AttemptFailure::from_call(&CallError::http(400, crate::workers::OVERLAY_ERROR_CODE, "mapped"))),
    );
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::DeletionPending);
    assert_eq!(op.retry_count, 1);
    assert!(op.next_retry_at_ms.unwrap() > h.now);
    assert!(h.engine.pending_deletion(&id(UID)).is_some());
    assert!(location_sync_triggered(&h));
    assert!(!queued_for_update(&h, UID));

    // Through the worker: steps continue past the failure; the LU pass (nothing left in the
    // mirror) promotes it back and the retry waits out the backoff.
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    let c = h.find("POST updateServices").unwrap();
    h.ok(c);
    let c = h.find("DELETE loadBalancers").unwrap();
    h.ok(c);
    let c = h.find_by(|c| is_unregister(c, UID)).unwrap();
    h.fail(c, CallError::http(400, crate::workers::OVERLAY_ERROR_CODE, "addresses still mapped"));
    let c = h.find("DELETE publicIPAddresses").expect("steps continue past failures");
    h.ok(c);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.retry_count, 1);
    assert!(h.engine.nrp().has_load_balancer(&id(UID)), "NRP entry kept");
    assert_eq!(op.state, ResourceState::DeletionInProgress);
    assert!(h.engine.pending_deletion(&id(UID)).is_none());
    assert!(h.find("POST updateServices").is_none());
    let s = h.wake();
    assert_eq!(started_labels(&s), vec!["POST updateServices"]);

    // Any other delete error stays DeletionInProgress for a direct retry.
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    for label in ["POST updateServices", "DELETE loadBalancers"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    let c = h.find_by(|c| is_unregister(c, UID)).unwrap();
    h.fail(c, transient());
    let c = h.find("DELETE publicIPAddresses").unwrap();
    h.ok(c);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::DeletionInProgress);
    assert_eq!(op.retry_count, 1);
    assert!(h.engine.pending_deletion(&id(UID)).is_none());
    assert!(h.engine.dispatcher().timer(&id(UID)).is_some());
}

#[test]
fn s035_overlay_with_addresses_waits_for_the_drain() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    for label in ["POST updateServices", "DELETE loadBalancers"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    // NRP turns out to still hold an address (e.g. it landed late).
    let mut republish = crate::diff::LocationDiff::default();
    republish.locations.insert(
        "10.0.0.1".into(),
        crate::diff::LocationChange { action: UpdateAction::FullUpdate, addresses: [("10.1.0.1".into(), [id(UID)].into())].into() },
    );
    h.engine.nrp.apply(&republish);
    h.engine.dirty.insert(("10.0.0.1".into(), "10.1.0.1".into()));
    let c = h.find_by(|c| is_unregister(c, UID)).unwrap();
    h.fail(c, CallError::http(409, "", &format!("{} : overlay", crate::workers::OVERLAY_ERROR_CODE)));
    let c = h.find("DELETE publicIPAddresses").unwrap();
    let s = h.ok(c);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"], "LU triggered to re-drain");
    sync_ok(&mut h);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
}

#[test]
fn s037_lb_delete_failure_fails_the_delete_even_if_pip_delete_succeeds() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    let c = h.find("POST updateServices").unwrap();
    h.ok(c);
    let c = h.find("DELETE loadBalancers").unwrap();
    h.fail(c, CallError::http(409, "Conflict", "LB busy"));
    let c = h.find_by(|c| is_unregister(c, UID)).unwrap();
    h.ok(c);
    let c = h.find("DELETE publicIPAddresses").unwrap();
    h.ok(c);
    assert!(h.find("remove-service-finalizers").is_none());
    assert!(h.engine.is_service_tracked(&id(UID)));
    assert!(h.engine.nrp().has_load_balancer(&id(UID)));
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "delete"), ("result", "error"), ("error_code", "conflict")]), 1.0);
}

/// Scenario 37 on a Service another controller now owns (it gained a `loadBalancerClass`):
/// the public IP is still deleted after the load balancer's deletion failed, but our address
/// leaves the status first, while the engine knows it. Found by the crash property test: the
/// engine used to skip the early clearing after a failed step, and a host that crashed once the
/// public IP was gone restarted into an engine that could no longer tell our address from the
/// other controller's, and left it on the Service.
#[test]
fn s037_a_failed_lb_delete_still_clears_our_address_before_the_public_ip_goes() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    let ours = h.engine.operation(&id(UID)).unwrap().public_ip.clone().unwrap();
    let mut classed = lb_service(UID, &[80]);
    classed.load_balancer_class = Some("example.com/other-lb".into());
    classed.ingress = vec![LoadBalancerIngress { ip: ours.clone(), ..Default::default() }];
    h.deliver(vec![KubeEvent::ServiceApplied(classed)]);
    h.tick();
    let c = h.find("POST updateServices").unwrap();
    h.ok(c);
    let c = h.find("DELETE loadBalancers").unwrap();
    h.fail(c, CallError::http(409, "Conflict", "LB busy"));
    let c = h.find_by(|c| is_unregister(c, UID)).unwrap();
    h.ok(c);
    assert!(h.find("DELETE publicIPAddresses").is_none(), "the status first: {:?}", h.labels());
    let c = h.find("patch-service-ingress").expect("our address is cleared before the public IP goes");
    match &h.outstanding[&c] {
        Call::Kube(KubeCall::PatchServiceIngress(_, want)) => assert!(want.iter().all(|e| e.ip != ours), "{want:?}"),
        other => panic!("{other:?}"),
    }
    h.ok(c);
    let c = h.find("DELETE publicIPAddresses").unwrap();
    h.ok(c);
    assert!(h.find("remove-service-finalizers").is_none(), "the failed step fails the attempt");
    assert!(h.engine.is_service_tracked(&id(UID)));
    inv(&h);
}

#[test]
fn s038_finalizer_removal_failure_keeps_tracking() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    for label in ["POST updateServices", "DELETE loadBalancers", "POST updateServices", "DELETE publicIPAddresses"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    let c = h.find("remove-service-finalizers").unwrap();
    h.fail(c, CallError::of_kind(ErrorKind::Conflict, "conflict"));
    assert!(h.engine.is_service_tracked(&id(UID)));
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    h.wake();
    finish_delete(&mut h, UID);
    assert!(!h.engine.is_service_tracked(&id(UID)));
}

#[test]
fn s039_transient_lookup_after_cleanup_fails_but_not_found_succeeds() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    for label in ["POST updateServices", "DELETE loadBalancers", "POST updateServices", "DELETE publicIPAddresses"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    let c = h.find("remove-service-finalizers").unwrap();
    h.fail(c, CallError::of_kind(ErrorKind::Transport, "apiserver down"));
    assert!(h.engine.is_service_tracked(&id(UID)));
    h.wake();
    for label in ["POST updateServices", "DELETE loadBalancers", "POST updateServices", "DELETE publicIPAddresses"] {
        let c = h.find(label).unwrap();
        h.fail(c, CallError::http(404, "NotFound", "gone"));
    }
    let c = h.find("remove-service-finalizers").unwrap();
    h.fail(c, CallError::of_kind(ErrorKind::NotFound, "gone"));
    assert!(!h.engine.is_service_tracked(&id(UID)));
}

#[test]
fn s041_endpoints_during_deletion() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1"), ("10.1.0.2", "n1")]))]);
    assert!(h.engine.desired().keys_of(&id(UID)).next().is_none(), "additions ignored while pending");
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
    h.tick();
    sync_ok(&mut h);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.3", "n1")]))]);
    assert!(h.engine.desired().keys_of(&id(UID)).next().is_none());
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty(), "ignored entirely");
    // With a recreate queued, deltas are buffered.
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let n = h.engine.buffered_endpoints(&id(UID)).len();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.4", "n1")]))]);
    assert_eq!(h.engine.buffered_endpoints(&id(UID)).len(), n + 1);
    finish_delete(&mut h, UID);
    assert!(h.run_ok(20));
    let addrs: Vec<_> = h.engine.nrp().keys_of(&id(UID)).map(|(_, a)| a.to_string()).collect();
    assert_eq!(addrs, vec!["10.1.0.4".to_string()], "nothing leaked back");
}
