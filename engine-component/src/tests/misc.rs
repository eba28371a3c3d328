//! Groups K and L: admission/naming/misc through the engine, and metrics exactness.

use super::common::*;
use crate::config::{OutboundConfig, ServiceDetails};

fn uid(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-000000000000")
}

#[test]
fn s131_rejected_service_gets_warning_event_and_no_op() {
    let mut h = harness();
    let mut s = lb_service(UID, &[80]);
    s.meta.annotations.push((crate::names::ANNOTATION_INTERNAL.into(), "TRUE".into()));
    h.deliver(vec![KubeEvent::ServiceApplied(s)]);
    assert!(!h.engine.is_service_tracked(&id(UID)));
    assert!(h.io.events.is_empty(), "events are emitted by the next tick");
    h.tick();
    assert_eq!(h.io.events.len(), 1);
    assert_eq!(h.io.events[0].reason, "UnsupportedInternalLoadBalancer");
    assert_eq!(h.io.events[0].kind, ObjectKind::Service);
    assert_eq!(h.io.events[0].event_type, EventType::Warning);
    let mut s = lb_service(UID, &[80]);
    s.external_traffic_policy = "Local".into();
    h.deliver(vec![KubeEvent::ServiceApplied(s)]);
    assert!(h.engine.is_service_tracked(&id(UID)));
}

#[test]
fn s132_collision_rejected_at_runtime() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service_targets(UID, &[(80, 8080), (81, 8080)]))]);
    h.tick();
    assert!(!h.engine.is_service_tracked(&id(UID)));
    assert_eq!(h.io.events[0].reason, "UnsupportedBackendPortCollision");
}

/// The 200-vs-poll distinction is the host's; the engine sees a completion. A success
/// completion of updateServices is success; any error completion (e.g. a 200 carrying an error
/// code, reported as operation-failed) is a failure.
#[test]
fn s133_register_completion_success_and_failure_shapes() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    let c = h.find("POST updateServices").unwrap();
    h.fail(
        c,
        CallError {
            kind: ErrorKind::OperationFailed,
            status: 200,
            code: "SomeError".into(),
            message: "poll failed".into(),
            retry_after_ms: None,
        },
    );
    assert!(!h.engine.nrp().has_load_balancer(&id(UID)));
    assert_eq!(h.engine.operation(&id(UID)).unwrap().retry_count, 1);
    assert!(h.run_ok(30));
    assert!(h.engine.nrp().has_load_balancer(&id(UID)));
}

/// Service lookup by UID is the host's (UID-guarded writes); a replaced Service surfaces as a
/// `replaced` error: at create it drops tracking, at delete the replacement is never touched
/// and the delete completes.
#[test]
fn s135_uid_guard_outcomes() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let s = h.tick();
    h.fail(s[0].0, CallError::of_kind(ErrorKind::Replaced, "uid mismatch"));
    assert!(!h.engine.is_service_tracked(&id(UID)));
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    for label in ["POST updateServices", "DELETE loadBalancers", "POST updateServices", "DELETE publicIPAddresses"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    let c = h.find("remove-service-finalizers").unwrap();
    h.fail(c, CallError::of_kind(ErrorKind::Replaced, "uid mismatch"));
    assert!(!h.engine.is_service_tracked(&id(UID)));
}

/// Completes every outstanding call except `hung` with its default success, until none is left.
fn run_ok_except(h: &mut Harness, hung: CallId) {
    for _ in 0..50 {
        let ids: Vec<CallId> = h.outstanding.keys().copied().filter(|c| *c != hung).collect();
        if ids.is_empty() {
            return;
        }
        for c in ids {
            h.ok(c);
        }
    }
}

/// Go holds no state lock across an ARM call, so a slow call stalls nobody else. The engine has
/// no lock; the analogue is that a call in flight blocks nothing: with one Service's public IP
/// PUT hanging, another Service is created, published, drained and deleted, and the hung
/// Service itself takes a spec change, all while the call stays outstanding; when it finally
/// completes, that create goes on and the spec change follows as an update.
#[test]
fn s136_a_hung_arm_call_blocks_nothing_else() {
    let mut h = harness();
    let (a, b) = (uid(1), uid(2));
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&a, &[80]))]);
    h.tick();
    let c = h.find("add-service-finalizers").unwrap();
    h.ok(c);
    let hung = h.find("PUT publicIPAddresses").unwrap();

    h.deliver(vec![
        KubeEvent::ServiceApplied(lb_service(&b, &[80])),
        KubeEvent::EndpointSliceApplied(slice("b", &b, &[("10.1.0.2", "n1")])),
    ]);
    h.tick();
    run_ok_except(&mut h, hung);
    assert_eq!(state(&h, &b), Some(ResourceState::Created), "B is created while A's call hangs");
    assert!(h.engine.nrp().has_addresses_for(&id(&b)), "and B's address is synced");

    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&a, &[81]))]);
    h.deliver(vec![deleting(&b, &[80])]);
    h.tick();
    run_ok_except(&mut h, hung);
    assert!(!h.engine.is_service_tracked(&id(&b)), "B is drained and deleted while A's call hangs");
    assert!(!h.engine.nrp().has_load_balancer(&id(&b)));
    assert!(h.engine.awaits(hung) && h.outstanding.len() == 1, "only A's call is left: {:?}", h.labels());

    h.ok(hung);
    assert!(h.run_ok(30));
    assert_eq!(state(&h, &a), Some(ResourceState::Created));
    let puts: Vec<Vec<u16>> = h
        .log
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Cloud(CloudCall::PutLoadBalancer(lb)) if lb.name == a => Some(lb.rules.iter().map(|r| r.frontend_port).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(puts, vec![vec![80], vec![81]], "the create applies its snapshot, then the spec change made while the call hung");
}

/// The ServiceUpdater semaphore bounds how many operations one tick starts.
#[test]
fn at_most_ten_operations_start_at_once() {
    let mut h = harness();
    for i in 0..20 {
        h.deliver(vec![
            KubeEvent::ServiceApplied(lb_service(&uid(i), &[80])),
            KubeEvent::EndpointSliceApplied(slice(&format!("s{i}"), &uid(i), &[(&format!("10.1.0.{i}"), "n1")])),
        ]);
        h.engine.delete_service(&id(&uid(i + 100)), true, true);
    }
    let s = h.tick();
    assert_eq!(h.engine.status().operations_in_flight, 10, "the semaphore bounds the started operations");
    // Five creates add their finalizers; five deletes detach their pools, in one batched call.
    let labels = started_labels(&s);
    assert_eq!(labels.iter().filter(|l| **l == "add-service-finalizers").count(), 5, "{labels:?}");
    let detached: usize = s
        .iter()
        .map(|(_, c)| match c {
            Call::Cloud(CloudCall::UpdateServices(r)) => r.len(),
            _ => 0,
        })
        .sum();
    assert_eq!((labels.len(), detached), (6, 5), "{labels:?}");
}

/// A tenant's own cap on operations in flight replaces the upstream 10.
#[test]
fn a_tenant_cap_on_operations_in_flight_bounds_what_one_tick_starts() {
    let mut h =
        Harness::with_config(TenantConfig { tenant: "t".into(), seed: 7, max_operations_in_flight: Some(3), ..TenantConfig::default() });
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"]))]);
    for i in 0..8 {
        h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&uid(i), &[80]))]);
    }
    let s = h.tick();
    assert_eq!(s.len(), 3, "three operations start: {:?}", h.labels());
    assert_eq!(h.engine.status().operations_in_flight, 3);
    assert!(h.engine.check_invariants().is_ok());
}

#[test]
fn s137_storm_of_entry_points_keeps_invariants_and_frees_everything() {
    let mut h = harness();
    let n = 30;
    for round in 0..3 {
        for i in 0..n {
            let u = uid(i);
            match (i + round) % 5 {
                0 => h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&u, &[80 + round as i32]))]),
                1 => h.deliver(vec![KubeEvent::EndpointSliceApplied(slice(
                    &format!("s{i}"),
                    &u,
                    &[(&format!("10.1.{round}.{i}"), if i % 2 == 0 { "n1" } else { "n2" })],
                ))]),
                2 => h.engine.delete_service(&id(&u), true, i % 3 == 0),
                3 => h.deliver(vec![as_cluster_ip(&u), KubeEvent::ServiceApplied(lb_service(&u, &[80]))]),
                _ => h.engine.update_endpoints(&id(&u), &emap(&[]), &emap(&[(&format!("10.2.0.{i}"), "10.0.0.1")])),
            }
            inv(&h);
        }
        for _ in 0..5 {
            let ids: Vec<CallId> = h.outstanding.keys().take(7).cloned().collect();
            for c in ids {
                if c % 3 == 0 {
                    h.fail(c, transient());
                } else {
                    h.ok(c);
                }
                inv(&h);
            }
        }
    }
    assert!(h.run_ok(500), "settles once faults stop");
    inv(&h);
    // Symmetric teardown frees every node, address and op.
    for i in 0..n {
        h.deliver(vec![deleting(&uid(i), &[80])]);
        h.deliver(vec![KubeEvent::EndpointSliceDeleted(slice(&format!("s{i}"), &uid(i), &[]))]);
        h.engine.delete_service(&id(&uid(i)), true, false);
    }
    assert!(h.run_ok(500));
    assert!(h.engine.desired().is_empty());
    assert_eq!(h.engine.nrp().address_count(), 0);
    assert_eq!(h.engine.nrp().location_count(), 0);
    assert!(h.engine.nrp().load_balancers().is_empty());
    assert_eq!(h.engine.operations().count(), 0);
    inv(&h);
}

#[test]
fn s138_one_attempt_per_completion_path() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    assert_eq!(
        metric(
            &h,
            "service_operations_total",
            &[("operation", "create"), ("result", "success"), ("service_type", "inbound"), ("error_code", ""), ("is_orphan", "false")]
        ),
        1.0
    );
    assert_eq!(metric(&h, "service_operations_total", &[]), 1.0);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    let s = h.tick();
    h.fail(s[0].0, CallError::of_kind(ErrorKind::Throttled, "429"));
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "update"), ("result", "error"), ("error_code", "throttled")]), 1.0);
    let s = h.wake();
    // Pre-empted update: recorded once, as update.
    h.engine.delete_service(&id(UID), true, false);
    h.ok(s[0].0);
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "update")]), 2.0);
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "update"), ("result", "success")]), 1.0);
    finish_delete(&mut h, UID);
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "delete"), ("result", "success")]), 1.0);
    assert_eq!(metric(&h, "service_operations_total", &[]), 4.0);
    assert_eq!(metric(&h, "service_operation_duration_seconds_count", &[]), 4.0);
    assert_eq!(metric(&h, "orphaned_resources_cleaned_total", &[]), 0.0);
    // Orphan delete.
    h.engine.delete_service(&id(B), true, true);
    h.tick();
    finish_delete(&mut h, B);
    assert_eq!(metric(&h, "orphaned_resources_cleaned_total", &[]), 1.0);
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "delete"), ("is_orphan", "true")]), 1.0);
}

const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";

#[test]
fn s139_retries_observed_once_at_terminal_outcome() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    assert_eq!(metric(&h, "service_operation_retries_count", &[("operation", "create")]), 1.0);
    assert_eq!(metric(&h, "service_operation_retries_bucket", &[("operation", "create"), ("le", "0")]), 1.0);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(B, &[80]))]);
    h.tick();
    for _ in 0..2 {
        let c = h.find("add-service-finalizers").unwrap();
        h.fail(c, transient());
        h.wake();
    }
    assert_eq!(metric(&h, "service_operation_retries_count", &[("operation", "create")]), 1.0, "not per attempt");
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices", "patch-service-ingress"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    assert_eq!(metric(&h, "service_operation_retries_count", &[("operation", "create")]), 2.0);
    assert_eq!(metric(&h, "service_operation_retries_sum", &[("operation", "create")]), 2.0);
    assert_eq!(metric(&h, "service_operation_retries_bucket", &[("operation", "create"), ("le", "1")]), 1.0);
    assert_eq!(metric(&h, "service_operation_retries_bucket", &[("operation", "create"), ("le", "2")]), 2.0);
}

#[test]
fn s140_outbound_update_records_only_the_skip() {
    let mut h = harness();
    let cfg = ServiceConfig {
        identity: id("egress-a"),
        object: ObjectRef::default(),
        details: ServiceDetails::Outbound(OutboundConfig { ip_families: vec![IpVersion::V4], triggering_pod: None }),
    };
    let op = crate::state::Operation::new(cfg, ResourceState::UpdateInProgress, h.now, "c".into());
    h.engine.insert_op(&id("egress-a"), op);
    h.engine.trigger_dispatch(&id("egress-a"));
    let s = h.tick();
    assert!(s.is_empty());
    assert_eq!(state(&h, "egress-a"), Some(ResourceState::Created));
    assert_eq!(metric(&h, "outbound_service_updates_skipped_total", &[]), 1.0);
    assert_eq!(metric(&h, "service_operations_total", &[]), 0.0);
}

#[test]
fn s141_gauges_are_exact_and_never_negative() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    h.now += 10_000;
    h.tick();
    assert_eq!(metric(&h, "pending_service_operations", &[("state", "update_in_progress"), ("service_type", "inbound")]), 1.0);
    let age = metric(&h, "pending_operation_oldest_age_seconds", &[("state", "update_in_progress"), ("service_type", "inbound")]);
    assert!(age >= 10.0, "age since CreatedAt: {age}");
    assert_eq!(metric(&h, "pending_operation_oldest_age_seconds", &[("state", "created")]), 0.0);
    assert_eq!(metric(&h, "locations_total", &[]), 1.0);
    assert_eq!(metric(&h, "addresses_total", &[]), 1.0);
    assert_eq!(metric(&h, "tracked_services_total", &[("state", "nrp_loadbalancers")]), 1.0);
    put_op(&mut h, B, ResourceState::Unknown(77));
    assert_eq!(metric(&h, "pending_service_operations", &[("state", "unknown")]), 1.0);
    let c = h.find("PUT loadBalancers").unwrap();
    h.engine.delete_service(&id(UID), true, false);
    assert_eq!(metric(&h, "pending_deletions", &[]), 1.0);
    h.ok(c);
    sync_ok(&mut h);
    assert_eq!(metric(&h, "pending_deletions", &[]), 0.0);
    assert_eq!(metric(&h, "services_blocked_by_locations", &[]), 0.0);
    assert_eq!(metric(&h, "addresses_total", &[]), 0.0);
    let status = h.engine.status();
    assert!(status.metrics.iter().all(|m| m.value >= 0.0 && m.value.is_finite()));
    assert_eq!(status.metrics.iter().filter(|m| m.name == "difftracker_engine_pending_service_operations").count(), 14);
    h.engine.ops.check_indexes().unwrap();
}

#[test]
fn s141_blocked_gauge_counts_undrained_deletions() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    let c = h.find("POST updateAddressLocations").unwrap();
    h.fail(c, CallError::http(400, "", ""));
    assert_eq!(metric(&h, "services_blocked_by_locations", &[]), 1.0);
}

#[test]
fn s142_routine_deletions_do_not_count_as_recovered_finalizers() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    finish_delete(&mut h, UID);
    assert_eq!(metric(&h, "finalizers_recovered_total", &[]), 0.0);
    assert_eq!(metric(&h, "finalizers_recovery_scheduled_total", &[]), 0.0);
}

#[test]
fn extreme_and_malformed_inputs_never_panic() {
    let mut h = harness();
    let mut weird = slice("w", UID, &[("not-an-ip", "n1"), ("10.1.0.1", "")]);
    weird.owner_references.push(OwnerReference { kind: "Service".into(), name: "other".into(), uid: String::new() });
    weird.endpoints.push(Endpoint { addresses: vec![], ready: None, node_name: Some("n1".into()) });
    let mut svc = lb_service(UID, &[0, -5, 70000]);
    svc.ports.push(ServicePort { name: String::new(), protocol: "tcp".into(), port: 80, target_port: Some(IntOrString::Int(-1)) });
    svc.ip_families = vec!["IPv9".into()];
    h.deliver(vec![
        KubeEvent::NodeApplied(node("n1", &["", "::ffff:1.2.3.4", "300.1.1.1"])),
        KubeEvent::EndpointSliceApplied(weird.clone()),
        KubeEvent::ServiceApplied(svc),
        KubeEvent::EndpointSliceDeleted(weird),
        KubeEvent::ServiceDeleted(lb_service("", &[])),
    ]);
    h.now = u64::MAX - 1_000;
    // At the end of time the malformed Service is dispatched (its attempt deadline saturates),
    // fails its build and is parked with a Warning Event; nothing reaches the cloud and the
    // engine settles instead of spinning.
    assert!(h.run_ok(50), "the engine settles at the end of time: {:?}", h.engine.status());
    assert_eq!(started_labels(&h.log), vec!["add-service-finalizers"], "nothing is provisioned for the malformed Service");
    assert_eq!(h.io.events.iter().filter(|e| e.reason == "ServiceGatewayConfigurationRejected").count(), 1);
    // A valid Service still goes all the way at that clock, and the junk published nothing.
    let ok = uid(7);
    h.deliver(vec![
        KubeEvent::ServiceApplied(lb_service(&ok, &[80])),
        KubeEvent::EndpointSliceApplied(slice("ok", &ok, &[("10.1.0.9", "n2")])),
    ]);
    assert!(h.run_ok(50), "{:?}", h.engine.status());
    assert_eq!(state(&h, &ok), Some(ResourceState::Created));
    assert_eq!(h.engine.nrp().address_count(), 1);
    assert!(h.engine.nrp().has_addresses_for(&id(&ok)));
    // Completions of calls never started are ignored, not trusted.
    let ignored = metric(&h, "ignored_completions_total", &[]);
    for _ in 0..3 {
        h.tick_with(vec![Completion { id: u64::MAX, outcome: Err(CallError::http(u16::MAX, "", "")) }]);
    }
    assert_eq!(metric(&h, "ignored_completions_total", &[]), ignored + 3.0);
    inv(&h);
    let _ = h.engine.status();
    let restored = crate::Engine::restore(&h.engine.snapshot()).unwrap();
    restored.check_invariants().unwrap();
}
