//! ARM's per-subscription budgets and the host's pacing under them (issue 15 item 4), on both
//! faces: the HTTP emulator answers every request with the subscription's remaining writes or
//! reads and refuses a write over the budget with `429` and `Retry-After`; the host's transport
//! spreads a burst over the budget (shared by every tenant of the subscription) so none is
//! refused; and the replay, in virtual time, paces the same way and converges as fast as the
//! budget allows.

#[path = "emulator_support/mod.rs"]
mod support;

use difftracker_engine::io::*;
use difftracker_runtime::driver::EngineKind;
use difftracker_runtime::transport::pacing::{self, Budget};
use difftracker_runtime::transport::{ArmTransport, TransportOptions};
use difftracker_simulation::emulator::throttle::RateLimits;
use difftracker_simulation::emulator::EmulatorOptions;
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions};
use difftracker_simulation::replay::{parse_trace, replay, ReplayOptions, Trace};
use serde_json::Value;
use support::*;

fn limits(writes: Budget) -> RateLimits {
    RateLimits { writes, ..RateLimits::default() }
}

#[tokio::test]
async fn every_answer_says_what_is_left_and_a_write_over_the_budget_is_429_with_retry_after() {
    let (handle, _) =
        start(EmulatorOptions { rate_limits: Some(limits(Budget { capacity: 2, refill_per_s: 1 })), ..Default::default() }).await;
    let sub = handle.tenant_config().network_subscription().to_string();
    let rg = handle.tenant_config().resource_group.clone();
    let path = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/publicIPAddresses");
    let body = r#"{"location":"eastus2","sku":{"name":"Standard"},"properties":{"publicIPAllocationMethod":"Static","publicIPAddressVersion":"IPv4"}}"#;
    let mut left = Vec::new();
    for i in 0..3 {
        let (status, head, _) = raw_http(handle.addr(), "PUT", &format!("{path}/pip-{i}?api-version=2025-05-01"), Some(body)).await;
        left.push((
            status,
            header(&head, "x-ms-ratelimit-remaining-subscription-writes").map(str::to_string),
            header(&head, "retry-after").map(str::to_string),
        ));
    }
    assert!(matches!(left[0], (200 | 201, Some(ref n), None) if n == "1"), "{left:?}");
    assert!(matches!(left[1], (200 | 201, Some(ref n), None) if n == "0"), "{left:?}");
    assert_eq!((left[2].0, left[2].1.as_deref(), left[2].2.as_deref()), (429, Some("0"), Some("1")), "the third write is refused");
    // Reads have their own budget (250 by default), reported on every read.
    let (status, head, _) = raw_http(handle.addr(), "GET", &format!("{path}?api-version=2025-05-01"), None).await;
    assert_eq!((status, header(&head, "x-ms-ratelimit-remaining-subscription-reads")), (200, Some("249")));
    let ours = handle.inventory()["public_ips"].as_object().unwrap().keys().filter(|k| k.starts_with("pip-")).count();
    assert_eq!(ours, 2, "the refused write changed nothing");
}

/// `n` public IP PUTs at once through `transport`; the emulator's answers to them.
async fn burst(transport: &ArmTransport, prefix: &str, n: usize) -> Vec<Result<CallOutput, CallError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let t = transport.clone();
        let call = put_pip(&format!("{prefix}-{i}-pip"), IpVersion::V4);
        tasks.spawn(async move { t.perform(call).await });
    }
    tasks.join_all().await
}

fn throttled_answers(handle: &difftracker_simulation::emulator::EmulatorHandle) -> usize {
    handle.emulator().recent_requests().iter().filter(|r| r.status == 429).count()
}

#[tokio::test]
async fn a_paced_burst_gets_no_429_and_an_unpaced_one_does() {
    let budget = Budget { capacity: 4, refill_per_s: 20 };
    let (handle, _) = start(EmulatorOptions { rate_limits: Some(limits(budget)), ..Default::default() }).await;
    let paced = ArmTransport::unauthenticated(
        handle.tenant_config(),
        TransportOptions { write_budget: Some(budget), ..TransportOptions::fast_for_tests() },
    )
    .unwrap();
    let answers = burst(&paced, "burst", 30).await;
    assert!(answers.iter().all(Result::is_ok), "{:?}", answers.iter().find(|a| a.is_err()));
    assert_eq!(throttled_answers(&handle), 0, "the pacer spread 30 writes over a budget of 4 + 20/s");
    let sub = handle.tenant_config().network_subscription().to_ascii_lowercase();
    assert!(pacing::remaining_writes().iter().any(|(s, _)| *s == sub), "the remaining-writes gauge has the subscription");

    // The same burst without pacing: ARM refuses what exceeds the bucket.
    let (handle, _) = start(EmulatorOptions { rate_limits: Some(limits(budget)), ..Default::default() }).await;
    let unpaced = ArmTransport::unauthenticated(
        handle.tenant_config(),
        TransportOptions { write_budget: None, ..TransportOptions::fast_for_tests() },
    )
    .unwrap();
    let _ = burst(&unpaced, "burst", 30).await;
    assert!(throttled_answers(&handle) > 0, "without pacing the burst is throttled");
}

#[tokio::test]
async fn tenants_of_one_subscription_share_its_budget() {
    let budget = Budget { capacity: 3, refill_per_s: 20 };
    let (handle, _) = start(EmulatorOptions { rate_limits: Some(limits(budget)), ..Default::default() }).await;
    let options = TransportOptions { write_budget: Some(budget), ..TransportOptions::fast_for_tests() };
    let a = ArmTransport::unauthenticated(handle.tenant_config(), options.clone()).unwrap();
    let b = ArmTransport::unauthenticated(handle.tenant_config(), options).unwrap();
    let (ra, rb) = tokio::join!(burst(&a, "one", 12), burst(&b, "other", 12));
    assert!(ra.iter().chain(rb.iter()).all(Result::is_ok));
    assert_eq!(throttled_answers(&handle), 0, "two tenants, one budget, no 429");
}

fn burst_trace(services: usize) -> Trace {
    let mut buf = Vec::new();
    write_trace(&GenOptions { services, nodes: 10, egress: 0, churn: Churn::None, seed: 3, endpoints: 4 }, &mut buf).unwrap();
    parse_trace(&buf).unwrap()
}

fn writes_of(report: &Value) -> u64 {
    report["cloud_calls"].as_object().unwrap().iter().filter(|(k, _)| !k.starts_with("GET ")).map(|(_, v)| v.as_u64().unwrap()).sum()
}

fn throttled_of(report: &Value) -> u64 {
    report["cloud_errors"].as_object().unwrap().iter().filter(|(k, _)| k.contains(" 429")).map(|(_, v)| v.as_u64().unwrap()).sum()
}

#[test]
fn a_paced_replay_burst_gets_no_429_and_converges_within_the_budgets_time() {
    let trace = burst_trace(200);
    let budget = Budget { capacity: 50, refill_per_s: 2 };
    let options = ReplayOptions {
        engine: EngineKind::Native,
        rate_limits: Some(limits(budget)),
        write_budget: Some(budget),
        ..ReplayOptions::default()
    };
    let paced = replay(&trace, &options).unwrap().report;
    assert_eq!(paced["converged"], true, "{}", paced["oracle"]);
    assert_eq!(paced["oracle"]["matches"], true);
    assert_eq!(throttled_of(&paced), 0, "{}", paced["cloud_errors"]);
    assert!(paced["replay"]["writes_paced"].as_u64().unwrap() > 0);
    // The budget allows W writes no sooner than (W - burst) / refill after the first; the run
    // takes at most 1.1x that (the trace starts at its first event).
    let writes = writes_of(&paced);
    let bound_ms = (writes - u64::from(budget.capacity)) * 1000 / u64::from(budget.refill_per_s);
    let start = trace.events.first().map_or(0, |e| e.at_ms);
    let took = paced["virtual_ms"].as_u64().unwrap() - start;
    assert!(took >= bound_ms, "{took} ms for {writes} writes: faster than the budget allows ({bound_ms} ms)?");
    assert!(took * 10 <= bound_ms * 11, "{took} ms for {writes} writes, the budget allows {bound_ms} ms");

    // Unpaced, the same run is refused again and again (and still converges, by retrying).
    let unpaced = replay(&trace, &ReplayOptions { write_budget: None, ..options.clone() }).unwrap().report;
    assert!(throttled_of(&unpaced) > 0, "{}", unpaced["cloud_errors"]);
    // The wasm engine is paced the same: byte-identical reports.
    let wasm = replay(&trace, &ReplayOptions { engine: EngineKind::Wasm, ..options }).unwrap().report;
    assert_eq!(difftracker_simulation::replay::report::to_bytes(&wasm), difftracker_simulation::replay::report::to_bytes(&paced));
}
