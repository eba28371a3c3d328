//! Group D: retries, backoff, parking.

use super::common::*;
use crate::backoff::{base_delay_ms, PARK_COOLDOWN_MS};

/// Fails the create at its first step `n` times, waking at each backoff deadline.
fn fail_create(h: &mut Harness, n: u32) {
    for i in 0..n {
        let c = h.find("add-service-finalizers").expect("create dispatched");
        h.fail(c, transient());
        if i + 1 < n && h.find("add-service-finalizers").is_none() {
            h.wake();
        }
    }
}

#[test]
fn s042_transient_failures_back_off_then_park_at_twelve() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    let mut last_delay = 0;
    for n in 1..=12u32 {
        let c = h.find("add-service-finalizers").expect("create dispatched");
        let t0 = h.now;
        h.fail(c, transient());
        let op = h.engine.operation(&id(UID)).unwrap().clone();
        assert_eq!(op.state, ResourceState::NotStarted);
        assert_eq!(op.retry_count, n);
        let at = op.next_retry_at_ms.unwrap();
        if n == 12 {
            // The failure's trigger reaches retryGate at once: parked.
            assert!(op.retries_exhausted);
            assert_eq!(at, t0 + PARK_COOLDOWN_MS);
            break;
        }
        let delay = at - t0;
        assert!(delay >= base_delay_ms(n) && delay <= base_delay_ms(n) * 6 / 5, "{n}: {delay}");
        assert!(delay >= last_delay || base_delay_ms(n) == base_delay_ms(n - 1));
        last_delay = delay;
        // Skipped during backoff; the slot is free.
        assert!(h.tick().is_empty());
        assert!(!h.engine.dispatcher().is_active(&id(UID)));
        assert_eq!(h.engine.dispatcher().timer(&id(UID)), Some(at));
        h.now = at - 1;
        assert!(h.tick().is_empty(), "not before the deadline");
        let s = h.wake();
        assert_eq!(started_labels(&s), vec!["add-service-finalizers"]);
    }
    assert_eq!(metric(&h, "service_operations_parked_total", &[("reason", "retries_exceeded")]), 1.0);
    assert_eq!(metric(&h, "service_operation_retries_count", &[("operation", "create")]), 1.0);
    h.advance(60_000);
    assert!(h.find("add-service-finalizers").is_none());
}

#[test]
fn s043_parked_op_re_arms_itself_after_cooldown() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    fail_create(&mut h, 12);
    assert!(h.engine.operation(&id(UID)).unwrap().retries_exhausted);
    let until = h.engine.operation(&id(UID)).unwrap().next_retry_at_ms.unwrap();
    h.now = until - 1;
    assert!(h.tick().is_empty(), "within the cooldown it stays parked");
    assert_eq!(h.last.next_wake_ms, Some(until));
    let s = h.wake();
    assert_eq!(started_labels(&s), vec!["add-service-finalizers"], "dispatched without any external event");
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(!op.retries_exhausted);
    assert_eq!(op.retry_count, 0);
}

#[test]
fn s043_parked_update_and_delete_also_re_arm() {
    for deleting in [false, true] {
        let mut h = harness();
        create(&mut h, UID, &[80]);
        if deleting {
            h.engine.delete_service(&id(UID), true, false);
        } else {
            h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
        }
        h.engine.update_op(&id(UID), |op| op.retry_count = 12);
        assert!(h.tick().is_empty());
        assert!(h.engine.operation(&id(UID)).unwrap().retries_exhausted);
        let s = h.wake();
        assert_eq!(s.len(), 1, "re-armed after the cooldown");
    }
}

#[test]
fn s044_resync_within_cooldown_keeps_park_after_cooldown_re_arms() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    fail_create(&mut h, 12);
    assert!(h.engine.operation(&id(UID)).unwrap().retries_exhausted);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    assert!(h.engine.operation(&id(UID)).unwrap().retries_exhausted, "kept within cooldown");
    assert!(h.tick().is_empty());
    h.now += PARK_COOLDOWN_MS;
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    assert!(!h.engine.operation(&id(UID)).unwrap().retries_exhausted);
    assert!(queued_for_update(&h, UID));
    // Spec change re-arms immediately.
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    fail_create(&mut h, 12);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(!op.retries_exhausted);
    assert_eq!(op.retry_count, 0);
    assert_eq!(started_labels(&h.tick()), vec!["add-service-finalizers"]);
}

#[test]
fn s045_delete_of_retry_parked_create_gets_fresh_budget() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    fail_create(&mut h, 12);
    h.engine.delete_service(&id(UID), true, false);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::DeletionInProgress);
    assert_eq!(op.retry_count, 0);
    assert!(!op.retries_exhausted);
    assert_eq!(started_labels(&h.tick()), vec!["POST updateServices"]);
}

#[test]
fn s046_repeated_delete_re_arms_parked_delete() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.engine.update_op(&id(UID), |op| op.retry_count = 12);
    h.tick();
    assert!(h.engine.operation(&id(UID)).unwrap().retries_exhausted);
    h.engine.delete_service(&id(UID), true, false);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(!op.retries_exhausted);
    assert_eq!(op.retry_count, 0);
    assert!(queued_for_update(&h, UID));
    assert_eq!(h.tick().len(), 1);
}

#[test]
fn s047_parked_delete_in_cooldown_launches_nothing() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.engine.update_op(&id(UID), |op| op.retry_count = 12);
    h.tick();
    h.engine.trigger_dispatch(&id(UID));
    let s = h.advance(1_000);
    assert!(s.is_empty());
    assert!(!h.engine.dispatcher().is_active(&id(UID)));
    assert!(h.log.iter().all(|(_, c)| !matches!(c, Call::Kube(KubeCall::RemoveServiceFinalizers(_)))));
}

#[test]
fn s048_terminal_create_failure_parks_with_warning() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[65535]))]);
    let s = h.tick();
    h.ok(s[0].0);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::NotStarted);
    assert!(op.creation_failed_terminal);
    assert_eq!(op.retry_count, 0, "terminal errors are not retries");
    assert_eq!(h.io.events.len(), 1);
    assert_eq!(h.io.events[0].reason, crate::names::REASON_CONFIGURATION_REJECTED);
    assert_eq!(h.io.events[0].event_type, EventType::Warning);
    assert_eq!(h.io.events[0].target.uid, UID);
    assert_eq!(metric(&h, "service_operations_parked_total", &[("reason", "terminal_error")]), 1.0);
    assert_eq!(metric(&h, "service_operations_total", &[("error_code", "ValidationError")]), 1.0);
    h.engine.trigger_dispatch(&id(UID));
    assert!(h.advance(3_600_000).is_empty(), "never re-dispatched");
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[65535]))]);
    assert!(h.engine.operation(&id(UID)).unwrap().creation_failed_terminal);
    assert!(h.tick().is_empty());
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(!op.creation_failed_terminal);
    assert!(queued_for_update(&h, UID));
    assert!(!h.engine.is_settled());
    assert!(h.run_ok(20));
}

#[test]
fn s049_terminal_failure_of_replaced_config_redispatches() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let s = h.tick();
    // The in-flight snapshot is valid; simulate a terminal result for it after a spec change.
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    h.engine.dispatcher.remove_active(&mut h.engine.timers, &id(UID));
    h.engine.on_service_creation_complete(&id(UID), Err(crate::workers::AttemptFailure::terminal("bad")));
    let op = h.engine.operation(&id(UID)).unwrap();
    assert!(!op.creation_failed_terminal);
    assert_eq!(op.state, ResourceState::NotStarted);
    assert!(queued_for_update(&h, UID));
    let _ = s;
    // Through the worker: an update whose config changed during a terminal build.
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    h.engine.update_op(&id(UID), |op| op.in_flight_config = Some(std::sync::Arc::new(inbound_cfg(UID, &[65535]))));
    h.engine.on_service_creation_complete(&id(UID), Err(crate::workers::AttemptFailure::terminal("bad port")));
    assert!(!h.engine.operation(&id(UID)).unwrap().creation_failed_terminal);
    assert!(queued_for_update(&h, UID));
}

#[test]
fn s050_failed_create_clears_in_flight_snapshot() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let s = h.tick();
    assert!(h.engine.operation(&id(UID)).unwrap().in_flight_config.is_some());
    h.fail(s[0].0, transient());
    assert!(h.engine.operation(&id(UID)).unwrap().in_flight_config.is_none());
    // A later delete completion is a genuine delete, not a pre-empted create.
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    finish_delete(&mut h, UID);
    assert!(!h.engine.is_service_tracked(&id(UID)));
}

/// Go recovers a worker panic into a failed completion. Here there is nothing to panic: any
/// completion of any shape (an unexpected output, an odd error, an unknown or repeated id) is
/// handled as data and at worst reported as a failure.
#[test]
fn s051_garbage_completions_are_failures_never_panics() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let s = h.tick();
    h.complete(s[0].0, Ok(CallOutput::Names(vec!["x".into()])));
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.complete(c, Ok(CallOutput::SgwServices(vec![]))); // no address in the output
    let c = h.find("PUT loadBalancers").unwrap();
    h.complete(c, Ok(CallOutput::PublicIps(vec![])));
    let c = h.find("POST updateServices").unwrap();
    h.complete(c, Ok(CallOutput::Done));
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.state, ResourceState::NotStarted, "no allocated address = failed attempt");
    assert_eq!(op.retry_count, 1);
    // Unknown and repeated ids.
    h.complete(987_654, Ok(CallOutput::Done));
    h.complete(
        c,
        Err(CallError {
            kind: ErrorKind::InvalidResponse,
            status: 0,
            code: "\u{0}".into(),
            message: "garbage".into(),
            retry_after_ms: Some(u64::MAX),
        }),
    );
    assert_eq!(metric(&h, "ignored_completions_total", &[]), 2.0);
    inv(&h);
}

#[test]
fn s052_one_timer_per_identity() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    for _ in 0..3 {
        let c = h.find("add-service-finalizers").unwrap();
        h.fail(c, transient());
        h.engine.trigger_dispatch(&id(UID));
        h.tick();
        h.engine.trigger_dispatch(&id(UID));
        h.tick();
        assert_eq!(h.engine.dispatcher().timer_count(), 1);
        h.wake();
    }
    // A timer of an op that is gone does nothing.
    let c = h.find("add-service-finalizers").unwrap();
    h.fail(c, transient());
    h.tick();
    h.engine.remove_op(&id(UID));
    assert_eq!(h.engine.dispatcher().timer_count(), 0);
    assert!(h.advance(60_000).is_empty());
}

#[test]
fn s053_transient_failure_emits_no_warning() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let s = h.tick();
    h.fail(s[0].0, transient());
    h.tick();
    assert!(h.io.events.is_empty());
}
