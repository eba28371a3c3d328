//! ENGINE.md 4.3 and 7: a throttled completion's `retry_after_ms` (ARM's `Retry-After`) is
//! honoured, capped by the tenant's `max_retry_after_ms` (default 5 minutes): the next attempt
//! of that operation or location sync is no earlier than `now + min(retry_after, cap)`, and no
//! earlier than the ordinary backoff either.

use super::common::*;
use crate::backoff::{base_delay_ms, PARK_COOLDOWN_MS};

const MINUTE: u64 = 60 * 1_000;

fn throttled(retry_after_ms: u64) -> CallError {
    CallError {
        kind: ErrorKind::Throttled,
        status: 429,
        code: "TooManyRequests".into(),
        message: "throttled".into(),
        retry_after_ms: Some(retry_after_ms),
    }
}

/// Answers every call labelled `label` with `err` and every other call with success, jumping to
/// each wake-up, until `until_ms`. Returns when each `label` call started.
fn throttle_until(h: &mut Harness, label: &str, err: &CallError, until_ms: u64) -> Vec<u64> {
    let mut starts = Vec::new();
    let mut seen = 0;
    h.tick();
    while h.now < until_ms {
        for (_, c) in &h.log[seen..] {
            if c.label() == label {
                starts.push(h.now);
            }
        }
        seen = h.log.len();
        if h.outstanding.is_empty() {
            match h.last.next_wake_ms {
                Some(w) if w > h.now => h.now = w,
                Some(_) => panic!("asked to be woken now with nothing to do: a busy loop"),
                None => break,
            }
            h.tick();
            continue;
        }
        let completions: Vec<Completion> = h
            .outstanding
            .iter()
            .map(|(id, c)| Completion { id: *id, outcome: if c.label() == label { Err(err.clone()) } else { Ok(ok_output(c)) } })
            .collect();
        h.tick_with(completions);
    }
    starts
}

#[test]
fn a_huge_retry_after_holds_the_operation_for_the_cap() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let start = h.now;
    let starts = throttle_until(&mut h, "PUT publicIPAddresses", &throttled(999_999 * 1_000), start + 10 * MINUTE + 1);
    // t=0, then one attempt per 5-minute cap: 3 PUTs in 10 minutes (upstream backoff: 19).
    assert_eq!(starts, vec![start, start + PARK_COOLDOWN_MS, start + 2 * PARK_COOLDOWN_MS], "{starts:?}");
    assert!(!h.engine.operation(&id(UID)).unwrap().retries_exhausted, "three attempts: far from parking");
    inv(&h);
}

#[test]
fn the_next_attempt_is_no_earlier_than_retry_after_nor_than_the_backoff() {
    // Retry-After longer than the backoff: it decides.
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    let c = h.find("add-service-finalizers").unwrap();
    h.ok(c);
    let c = h.find("PUT publicIPAddresses").unwrap();
    let t0 = h.now;
    h.fail(c, throttled(45_000));
    let op = h.engine.operation(&id(UID)).unwrap();
    assert_eq!(op.next_retry_at_ms, Some(t0 + 45_000));
    assert_eq!(h.last.next_wake_ms, Some(t0 + 45_000));
    h.now = t0 + 44_999;
    assert!(h.tick().is_empty(), "not before Retry-After");
    h.now = t0 + 45_000;
    assert_eq!(started_labels(&h.tick()), vec!["add-service-finalizers"]);

    // Retry-After shorter than the backoff: the backoff decides.
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    let c = h.find("add-service-finalizers").unwrap();
    let t0 = h.now;
    h.fail(c, throttled(10));
    let at = h.engine.operation(&id(UID)).unwrap().next_retry_at_ms.unwrap();
    assert!(at >= t0 + base_delay_ms(1), "{}", at - t0);
}

#[test]
fn fresh_intent_resets_the_budget_but_not_the_servers_hold() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    let c = h.find("add-service-finalizers").unwrap();
    let t0 = h.now;
    h.fail(c, throttled(2 * MINUTE));
    // A spec change resets the retry budget; the server said not before two minutes.
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[81]))]);
    assert_eq!(h.engine.operation(&id(UID)).unwrap().retry_count, 0);
    assert!(h.tick().is_empty(), "held");
    h.now = t0 + MINUTE;
    assert!(h.tick().is_empty(), "still held");
    assert_eq!(h.last.next_wake_ms, Some(t0 + 2 * MINUTE));
    h.wake();
    assert!(h.find("add-service-finalizers").is_some());
    inv(&h);
}

#[test]
fn a_throttled_step_of_a_delete_holds_the_next_attempt_even_if_a_later_step_fails_otherwise() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.engine.delete_service(&id(UID), true, false);
    h.tick();
    let c = h.find("POST updateServices").unwrap();
    h.ok(c);
    let c = h.find("DELETE loadBalancers").unwrap();
    let t0 = h.now;
    h.fail(c, throttled(3 * MINUTE));
    let c = h.find("POST updateServices").unwrap();
    h.ok(c);
    let c = h.find("DELETE publicIPAddresses").unwrap();
    h.fail(c, transient());
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    assert_eq!(h.engine.operation(&id(UID)).unwrap().next_retry_at_ms, Some(t0 + 3 * MINUTE));
}

#[test]
fn the_cap_comes_from_the_tenant_config() {
    for (cap, want) in [(Some(MINUTE), MINUTE), (Some(0), 0), (None, PARK_COOLDOWN_MS)] {
        let mut h = Harness::with_config(TenantConfig { tenant: "t".into(), seed: 7, max_retry_after_ms: cap, ..TenantConfig::default() });
        h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"]))]);
        h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
        h.tick();
        let c = h.find("add-service-finalizers").unwrap();
        let t0 = h.now;
        h.fail(c, throttled(24 * 60 * MINUTE));
        let delay = h.engine.operation(&id(UID)).unwrap().next_retry_at_ms.unwrap() - t0;
        assert!(delay >= want && delay <= want.max(base_delay_ms(1) * 6 / 5), "cap {cap:?}: {delay}");
    }
}

#[test]
fn a_throttled_location_sync_waits_for_retry_after_and_triggers_do_not_cut_it_short() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    h.tick();
    let c = h.find("POST updateAddressLocations").unwrap();
    let t0 = h.now;
    h.fail(c, throttled(2 * MINUTE));
    assert_eq!(h.engine.locations_updater().retry_at_ms, Some(t0 + 2 * MINUTE));
    // New endpoints (a trigger) do not cut the server's hold short, and nothing spins.
    h.now = t0 + 10_000;
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1"), ("10.1.0.2", "n2")]))]);
    assert!(h.tick().is_empty(), "held");
    assert_eq!(h.last.next_wake_ms, Some(t0 + 2 * MINUTE), "woken when the hold ends, not now");
    h.wake();
    let body = sync_ok(&mut h).expect("the sync is retried when the hold ends");
    assert_eq!(body.iter().map(|l| l.addresses.len()).sum::<usize>(), 2, "with everything that changed meanwhile");
    assert_eq!(h.engine.nrp().address_count(), 2);
    // Without Retry-After a trigger still cuts the backoff short (post-init, 7).
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    h.tick();
    let c = h.find("POST updateAddressLocations").unwrap();
    h.fail(c, transient());
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[]))]);
    assert!(h.tick().iter().any(|(_, c)| c.label() == "POST updateAddressLocations"));
    inv(&h);
}

#[test]
fn always_throttled_location_syncs_are_spaced_by_the_cap() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    let start = h.now;
    let starts = throttle_until(&mut h, "POST updateAddressLocations", &throttled(999_999 * 1_000), start + 10 * MINUTE + 1);
    assert_eq!(starts, vec![start, start + PARK_COOLDOWN_MS, start + 2 * PARK_COOLDOWN_MS], "{starts:?}");
}
