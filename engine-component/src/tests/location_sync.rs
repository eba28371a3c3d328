//! Groups H and I: location diff through the engine, and the LocationsUpdater.

use super::common::*;
use crate::backoff::OPERATION_TIMEOUT_MS;

const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";

fn sync_call(h: &Harness) -> Option<CallId> {
    h.find("POST updateAddressLocations")
}

#[test]
fn s102_parked_live_lb_syncs_new_lb_is_withheld() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[65535]))]);
    h.tick();
    assert!(h.engine.operation(&id(UID)).unwrap().creation_failed_terminal);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(B, &[80]))]);
    h.tick();
    // Both services back the same pod; B's create is not registered yet.
    let mut sl = slice("a", UID, &[("10.1.0.1", "n1")]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sl.clone())]);
    sl.meta.name = "b".into();
    sl.owner_references[0].uid = B.into();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sl)]);
    h.tick();
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(body.len(), 1);
    assert_eq!(body[0].addresses, vec![AddressUpdate { address: "10.1.0.1".into(), services: vec![UID.into()] }]);
}

#[test]
fn s103_update_in_progress_is_ready() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    h.tick();
    assert_eq!(state(&h, UID), Some(ResourceState::UpdateInProgress));
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    h.tick();
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(body[0].addresses[0].services, vec![UID.to_string()]);
}

#[test]
fn s106_failed_sync_retries_with_backoff_and_trigger_cuts_short() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1"), ("10.1.0.2", "n1")]))]);
    h.tick();
    let c = sync_call(&h).unwrap();
    h.fail(c, CallError::http(503, "", "unavailable"));
    assert!(sync_call(&h).is_none());
    let retry_at = h.engine.locations_updater().retry_at_ms.unwrap();
    assert!(retry_at >= h.now + 1_000 && retry_at <= h.now + 1_200);
    assert_eq!(h.last.next_wake_ms, Some(retry_at));
    let s = h.wake();
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"], "automatic retry");
    let c = sync_call(&h).unwrap();
    h.fail(c, CallError::http(503, "", "unavailable"));
    assert!(h.engine.locations_updater().retry_at_ms.unwrap() >= h.now + 2_000);
    // A new trigger cuts the wait short.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1"), ("10.1.0.2", "n1"), ("10.1.0.3", "n1")]))]);
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"]);
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(body[0].addresses.len(), 2, "nothing lost from the failed passes");
    assert_eq!(h.engine.locations_updater().failures, 0);
    inv(&h);
}

#[test]
fn s107_hung_sync_times_out_and_retries() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.2", "n1")]))]);
    h.tick();
    let hung = sync_call(&h).unwrap();
    assert_eq!(h.last.next_wake_ms, Some(h.now + OPERATION_TIMEOUT_MS));
    h.wake();
    assert!(h.engine.locations_updater().in_flight.is_none());
    let s = h.wake();
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"]);
    // The late completion of the hung call is ignored.
    h.outstanding.insert(hung, Call::Cloud(CloudCall::UpdateAddressLocations(vec![])));
    h.ok(hung);
    assert_eq!(metric(&h, "ignored_completions_total", &[]), 1.0);
    sync_ok(&mut h).unwrap();
    assert_eq!(h.engine.nrp().keys_of(&id(UID)).count(), 1);
    inv(&h);
}

#[test]
fn s108_terminal_400_422_abandons_unless_a_deletion_waits() {
    for status in [400, 422] {
        let mut h = harness();
        create_published(&mut h, UID, "s", "10.1.0.1");
        h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.2", "n1")]))]);
        h.tick();
        let c = sync_call(&h).unwrap();
        h.fail(c, CallError::http(status, "InvalidRequest", "bad"));
        assert_eq!(metric(&h, "location_sync_terminal_errors_total", &[]), 1.0);
        assert!(h.engine.locations_updater().retry_at_ms.is_none(), "not retried");
        assert!(h.advance(3_600_000).is_empty());
        // The next change recomputes everything, including the abandoned batch.
        h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.2", "n1"), ("10.1.0.3", "n1")]))]);
        h.tick();
        let body = sync_ok(&mut h).unwrap();
        assert!(body[0].addresses.len() >= 2);
    }
    // With a deletion waiting it keeps retrying, also past 12 attempts.
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    for i in 1..=14 {
        let c = sync_call(&h).unwrap_or_else(|| panic!("attempt {i}"));
        h.fail(c, CallError::http(422, "", "unprocessable"));
        assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
        h.wake();
    }
    assert_eq!(metric(&h, "location_sync_abandoned_total", &[("reason", "drain_attempts_exhausted")]), 1.0);
    sync_ok(&mut h).unwrap();
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
}

#[test]
fn s109_persistent_retryable_error_never_gives_up() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.2", "n1")]))]);
    h.tick();
    for i in 1..=20 {
        let c = sync_call(&h).unwrap_or_else(|| panic!("attempt {i}"));
        h.fail(c, CallError::of_kind(ErrorKind::Throttled, "429"));
        assert!(!h.engine.is_settled());
        h.wake();
    }
    assert!(h.engine.locations_updater().failures >= 20);
    sync_ok(&mut h).unwrap();
    assert!(h.engine.is_settled());
}

#[test]
fn s110_only_400_and_422_are_terminal() {
    for (err, terminal) in [
        (CallError::http(400, "", ""), true),
        (CallError::http(422, "", ""), true),
        (CallError::http(404, "", ""), false),
        (CallError::http(409, "", ""), false),
        (CallError::http(429, "", ""), false),
        (CallError::http(500, "", ""), false),
        (CallError::http(503, "", ""), false),
        (CallError::of_kind(ErrorKind::Timeout, ""), false),
        (CallError::of_kind(ErrorKind::Transport, ""), false),
    ] {
        let mut h = harness();
        create_published(&mut h, UID, "s", "10.1.0.1");
        h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.2", "n1")]))]);
        h.tick();
        let c = sync_call(&h).unwrap();
        h.fail(c, err.clone());
        assert_eq!(h.engine.locations_updater().retry_at_ms.is_none(), terminal, "{err}");
    }
}

#[test]
fn s111_sent_request_has_exact_content() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::NodeApplied(node("n6", &["FD00:10:224::6", "10.0.0.6"]))]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.7", "n6"), ("FD00:10:244:2::9", "n6")]))]);
    create(&mut h, UID, &[80]);
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(
        body,
        vec![
            LocationUpdate {
                location: "10.0.0.6".into(),
                action: UpdateAction::FullUpdate,
                addresses: vec![AddressUpdate { address: "10.1.0.7".into(), services: vec![UID.into()] }]
            },
            LocationUpdate {
                location: "fd00:10:224::6".into(),
                action: UpdateAction::FullUpdate,
                addresses: vec![AddressUpdate { address: "fd00:10:244:2::9".into(), services: vec![UID.into()] }]
            },
        ]
    );
}

/// Go's `Stop` cancels the LocationsUpdater and waits for the pass in flight. The engine has no
/// goroutine to stop: a host stops it by feeding no new input and ticking until the engine
/// reports nothing in flight. So the engine's side of "Stop waits" is that a sync in flight keeps
/// it from looking stoppable: every tick reports the call, the engine is not settled, its next
/// wake-up is the attempt deadline (the wait is bounded) and nothing else starts; the
/// completion, however late within the attempt, is applied before it reports idle.
#[test]
fn s112_stop_waits_for_the_sync_in_flight() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    let _ = sync_ok(&mut h);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    h.tick();
    let c = sync_call(&h).unwrap();
    let deadline = h.now + OPERATION_TIMEOUT_MS;
    // A stop drains: no new input, only ticks, while NRP takes four minutes to answer.
    for _ in 0..8 {
        assert!(h.advance(30_000).is_empty(), "nothing starts while the sync is in flight");
        assert_eq!(h.last.calls_in_flight, 1, "the tick reports the sync in flight");
        assert_eq!(h.last.next_wake_ms, Some(deadline), "the wait ends at the attempt deadline");
        assert!(h.engine.status().location_sync_in_flight);
        assert!(!h.engine.is_settled(), "a stop would go on waiting");
    }
    h.ok(c);
    assert_eq!(h.last.calls_in_flight, 0);
    assert!(h.engine.is_settled(), "the stop can return once the sync completed");
    assert_eq!(h.engine.nrp().address_count(), 1, "the late completion was applied");
    assert_eq!(metric(&h, "ignored_completions_total", &[]), 0.0);
}

/// A hot swap while a sync is in flight: the snapshot restores into an engine that still awaits
/// that call and applies its completion.
#[test]
fn snapshot_with_sync_in_flight_keeps_awaiting_it() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    let _ = sync_ok(&mut h);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    h.tick();
    let c = sync_call(&h).unwrap();
    assert!(h.engine.status().location_sync_in_flight);
    let restored = crate::Engine::restore(&h.engine.snapshot()).unwrap();
    h.engine = restored;
    assert!(h.engine.status().location_sync_in_flight);
    assert!(h.tick().is_empty(), "no second sync while one is in flight");
    h.ok(c);
    assert_eq!(h.engine.nrp().address_count(), 1);
    assert_eq!(metric(&h, "ignored_completions_total", &[]), 0.0);
    inv(&h);
}

#[test]
fn never_more_than_one_sync_in_flight() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    for i in 0..5 {
        h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[(&format!("10.1.0.{i}"), "n1")]))]);
        h.tick();
        assert!(h.outstanding.values().filter(|c| c.label() == "POST updateAddressLocations").count() <= 1);
    }
}

/// A readiness flip (here: registration of an identity whose addresses are already desired)
/// marks its addresses dirty, so the incremental diff sees them.
#[test]
fn readiness_flip_marks_addresses_dirty() {
    let mut h = harness();
    put_op(&mut h, UID, ResourceState::CreationInProgress);
    h.engine.desired.add_inbound(&id(UID), "10.0.0.1", "10.1.0.1");
    assert!(h.engine.pending_location_diff().is_empty());
    assert!(h.engine.full_location_diff().is_empty(), "not ready yet");
    h.engine.set_nrp_load_balancer(&id(UID), true);
    assert!(!h.engine.full_location_diff().is_empty());
    assert_eq!(h.engine.pending_location_diff(), h.engine.full_location_diff());
    assert!(location_sync_triggered(&h));
}

/// Scenario 159: the default ServiceGateway POST interval. A triggered sync starts at once when
/// none started within the interval; changes within it wait and go out together at its end; the
/// retry after a failure is not held by it.
#[test]
fn s159_triggered_syncs_are_paced_by_the_interval_and_changes_within_it_go_together() {
    let mut h = Harness::with_config(TenantConfig { tenant: "t".into(), seed: 7, ..TenantConfig::default() });
    assert_eq!(TenantConfig::default().sgw_post_interval_ms(), DEFAULT_SGW_POST_INTERVAL_MS);
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"]))]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    create(&mut h, UID, &[80]);
    let first = sync_ok(&mut h).expect("the first sync starts at once");
    assert_eq!(first[0].addresses.len(), 1);
    // Three changes within the interval: no sync until it ends, then one with all three.
    for (i, ms) in [(2, 100u64), (3, 300), (4, 200)] {
        let eps: Vec<(String, &str)> = (1..=i).map(|k| (format!("10.1.0.{k}"), "n1")).collect();
        let refs: Vec<(&str, &str)> = eps.iter().map(|(a, n)| (a.as_str(), *n)).collect();
        h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &refs))]);
        h.advance(ms);
        assert!(sync_call(&h).is_none(), "held by the interval at +{ms} ms");
    }
    assert_eq!(h.last.next_wake_ms, Some(1_000_000 + DEFAULT_SGW_POST_INTERVAL_MS), "the engine asks to be woken at its end");
    h.wake();
    let body = sync_ok(&mut h).expect("the interval is over");
    let addrs: Vec<&str> = body[0].addresses.iter().map(|a| a.address.as_str()).collect();
    assert_eq!(addrs, vec!["10.1.0.2", "10.1.0.3", "10.1.0.4"], "one request for the three changes");
    assert_eq!(metric(&h, "location_sync_batches_total", &[]), 2.0);
    // A failed pass retries after its backoff, which the interval does not lengthen.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.9", "n1")]))]);
    h.advance(DEFAULT_SGW_POST_INTERVAL_MS);
    let c = sync_call(&h).unwrap();
    h.fail(c, CallError::http(500, "InternalServerError", "down"));
    let retry_at = h.last.next_wake_ms.unwrap();
    assert!(retry_at - h.now <= 1_200, "backoff of about a second, then the retry");
    h.wake();
    assert!(sync_call(&h).is_some(), "the retry starts when its backoff ends");
    inv(&h);
}
