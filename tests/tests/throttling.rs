//! `Retry-After` through the real component: a throttled completion's `retry-after-ms` holds
//! the next attempt (capped by the tenant config's `max-retry-after-ms`, 5 minutes by default),
//! for operations and for the location sync alike.

use difftracker_engine::io::{KubeEvent, TenantConfig};
use difftracker_runtime::driver::{CallIds, EngineDriver, WasmEngine};
use difftracker_tests::label::*;
use difftracker_tests::*;

const UID: &str = "0a0b0c0d-0000-4000-8000-000000000077";
const MINUTE: u64 = 60 * 1000;
/// ARM's `Retry-After: 999999` (seconds).
const HUGE: u64 = 999_999 * 1000;

fn cluster(h: &mut Harness) {
    let svc = sample_service("shop", "cart", UID);
    h.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
    ])
    .unwrap();
}

/// Runs for `minutes` of virtual time; returns the virtual times (relative to the start) at
/// which calls labelled `label` started.
fn starts_within(h: &mut Harness, label: &str, minutes: u64) -> Vec<u64> {
    let start = h.now_ms;
    let end = start + minutes * MINUTE;
    h.run_until(10_000, |h| h.now_ms > end || h.last_outcome.next_wake_ms.is_some_and(|w| w > end) && h.in_flight() == 0).unwrap();
    h.calls(label).iter().map(|s| s.at_ms - start).filter(|t| *t <= minutes * MINUTE).collect()
}

#[test]
fn a_throttled_put_is_retried_once_per_capped_retry_after() {
    let mut h = Harness::wasm();
    for _ in 0..40 {
        h.script.then(PUT_PIP, throttled(HUGE));
    }
    cluster(&mut h);
    let starts = starts_within(&mut h, PUT_PIP, 10);
    // Upstream's backoff ignores Retry-After: 19 PUTs in these 10 minutes.
    assert_eq!(starts, vec![0, 5 * MINUTE, 10 * MINUTE], "{starts:?}");
    assert!(h.first(PUT_LB).is_none());
}

#[test]
fn the_cap_is_the_tenant_configs() {
    let mut engine = WasmEngine::new(component(), CallIds::default()).unwrap();
    engine.create(&TenantConfig { max_retry_after_ms: Some(MINUTE), ..tenant_config() }).unwrap();
    engine.deliver(0, vec![KubeEvent::InitialListsComplete]).unwrap();
    let mut h = Harness::initialized(Harness::with_engine(Box::new(engine)));
    for _ in 0..40 {
        h.script.then(PUT_PIP, throttled(HUGE));
    }
    cluster(&mut h);
    let starts = starts_within(&mut h, PUT_PIP, 5);
    assert_eq!(starts, (0..=5).map(|m| m * MINUTE).collect::<Vec<_>>(), "{starts:?}");
}

#[test]
fn a_throttled_location_sync_waits_for_retry_after_then_converges() {
    let mut h = Harness::wasm();
    h.script.then(UPDATE_LOCATIONS, throttled(90_000)).then(UPDATE_LOCATIONS, throttled(90_000));
    cluster(&mut h);
    let start = h.now_ms;
    h.run_until_idle(500).unwrap();
    let syncs: Vec<u64> = h.calls(UPDATE_LOCATIONS).iter().map(|s| s.at_ms - start).collect();
    assert_eq!(syncs.len(), 3, "{syncs:?}");
    assert!(syncs[1] - syncs[0] >= 90_000 && syncs[2] - syncs[1] >= 90_000, "{syncs:?}");
    assert!(h.statuses.last().unwrap().settled);
}
