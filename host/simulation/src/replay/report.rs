//! The replay report: one JSON document with a stable key order (every map is sorted), the same
//! bytes for the same trace, faults and seed, whichever engine build ran.
//!
//! ```text
//! {"cloud_calls": {"<METHOD> <kind>": n}, "cloud_errors": {"<METHOD> <kind> <status> <code>": n},
//!  "converged": bool,
//!  "duplicate_creations": {"adoption": n, "after_lost_completion": n, "by_call": {..}, "rejected": n},
//!  "engine": {"metrics": {"<name>{<labels>}": value}, "operations_in_flight": n,
//!             "pending_deletions": n, "settled": bool, "states": {"<state>": n}},
//!  "inventory": {...the emulator's inventory...},
//!  "kubernetes": {"events": {"<reason>": n}, "objects": {"<kind>": n},
//!                 "service_ingress": {"<ns>/<name>": ["<ip>"]}, "stuck_deleting": ["<kind>/<ns>/<name>"],
//!                 "trace_events": {...}, "writes": {"<call> <outcome>": n}},
//!  "operations": {"<identity>": {"kind", "namespace", "name", "state", "retry_count", "last_attempt_ms",
//!                  "next_retry_at_ms", "retries_exhausted", "terminal", "in_flight", "buffered_endpoints",
//!                  "waiting_for", "correlation_id",
//!                  "calls": {"calls": n, "failed": n, "last_call": {..}|null, "last_error": {..}|null}}},
//!  "oracle": {"differences": ["..."], "matches": bool},
//!  "replay": {"calls_in_flight": n, "cloud_state": bool, "crash_at_ms": [n], "downtime_ms": n, "faults": bool, "seed": n, "stale_wakes": n, "ticks": n,
//!             "trace_events_left": n, "until_ms": n, "writes_paced": n (when paced)},
//!  "restarts": [{"crashed_at_ms": n, "completions_lost": n, "started_at_ms": n, "startup_ms": n|null,
//!                "startup_cloud_calls": n, "startup_list_calls": n, "startup_kube_writes": n}],
//!  "startup": {"started_at_ms": n, "startup_ms": n|null, "startup_cloud_calls": n, ...},
//!  "trace": {"end_ms": n, "events": n, "ordered_by": "at_ms"|"resourceVersion"|"file",
//!            "skipped": {"<kind>": n}},
//!  "virtual_ms": n}
//! ```

use super::cluster::Cluster;
use super::run::{LoopStats, ReplayOptions};
use super::trace::Trace;
use difftracker_engine::io::{EngineStatus, OperationStatus};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The report as a JSON value (serde_json's map is ordered by key).
pub type Report = Value;

pub(crate) struct Inputs<'a> {
    pub converged: bool,
    pub virtual_ms: u64,
    pub options: &'a ReplayOptions,
    pub trace: &'a Trace,
    pub inventory: &'a Value,
    pub cluster: &'a Cluster,
    pub status: &'a EngineStatus,
    pub stats: &'a LoopStats,
    pub in_flight: usize,
    pub trace_left: usize,
    pub differences: &'a [String],
    pub operations: &'a [OperationStatus],
}

/// `name{k="v",...}` as Prometheus prints a sample.
pub fn metric_key(name: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let mut sorted: Vec<&(String, String)> = labels.iter().collect();
    sorted.sort();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn number(v: f64) -> Value {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else if v.is_finite() {
        json!(v)
    } else {
        // JSON has no NaN or infinity.
        json!(v.to_string())
    }
}

pub(crate) fn build(i: Inputs<'_>) -> Report {
    let metrics: Map<String, Value> = i.status.metrics.iter().map(|m| (metric_key(&m.name, &m.labels), number(m.value))).collect();
    let states: BTreeMap<String, u32> = i.status.states.iter().cloned().collect();
    let mut objects: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, _) in i.cluster.objects() {
        *objects.entry(key.kind).or_insert(0) += 1;
    }
    let cs = i.cluster.stats();
    let mut report = json!({
        "cloud_calls": i.stats.cloud_calls,
        "cloud_errors": i.stats.cloud_errors,
        "converged": i.converged,
        "duplicate_creations": i.stats.duplicates,
        "engine": {
            "metrics": metrics,
            "operations_in_flight": i.status.operations_in_flight,
            "pending_deletions": i.status.pending_deletions,
            "settled": i.status.settled,
            "states": states,
        },
        "inventory": i.inventory,
        "kubernetes": {
            "events": i.cluster.event_reasons(),
            "objects": objects,
            "service_ingress": i.cluster.service_ingress(),
            "stuck_deleting": i.cluster.stuck_deleting(),
            "trace_events": {
                "applied": cs.trace_events_applied,
                "deferred": cs.trace_events_deferred,
                "garbage_collected": cs.garbage_collected,
                "ignored": cs.trace_events_ignored,
            },
            "writes": cs.writes,
        },
        "operations": operations(i.operations, &i.stats.calls_by_identity),
        "oracle": {
            "differences": i.differences,
            "matches": i.differences.is_empty(),
        },
        "replay": {
            "calls_in_flight": i.in_flight,
            "crash_at_ms": i.options.crashes.times(),
            "downtime_ms": i.options.crashes.downtime_ms,
            "cloud_state": i.options.cloud_state.is_some(),
            "faults": i.options.faults.is_some(),
            "seed": i.options.seed,
            "stale_wakes": i.stats.stale_wakes,
            "ticks": i.stats.ticks,
            "trace_events_left": i.trace_left,
            "until_ms": i.options.until_ms,
        },
        "restarts": i.stats.starts.get(1..).unwrap_or_default(),
        "startup": i.stats.starts.first(),
        "trace": {
            "end_ms": i.trace.end_ms(),
            "events": i.trace.events.len(),
            "ordered_by": i.trace.order.as_str(),
            "skipped": i.trace.skipped,
        },
        "virtual_ms": i.virtual_ms,
    });
    if i.options.write_budget.is_some() {
        report["replay"]["writes_paced"] = json!(i.stats.writes_paced);
    }
    report
}

/// The `operations` section: every identity the engine tracks at the end or made a call for,
/// with the engine's account of it ([`OperationStatus`]) and the calls made for it (see
/// [`CallSummary`](super::timeline::CallSummary)). An identity the engine no longer tracks (a
/// deleted Service) has the state `not_tracked`.
fn operations(ops: &[OperationStatus], calls: &BTreeMap<String, super::timeline::CallSummary>) -> Value {
    let mut out = Map::new();
    let none = super::timeline::CallSummary::default();
    for op in ops {
        out.insert(op.identity.clone(), crate::explain::entry(op, Some(calls.get(&op.identity).unwrap_or(&none))));
    }
    for (id, summary) in calls {
        if !out.contains_key(id) {
            out.insert(id.clone(), json!({"state": "not_tracked", "calls": summary}));
        }
    }
    Value::Object(out)
}

/// The report's bytes: pretty-printed JSON and a final newline.
pub fn to_bytes(report: &Report) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(report).unwrap_or_default();
    out.push(b'\n');
    out
}
