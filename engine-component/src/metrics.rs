//! The metrics of ENGINE.md section 12 (subsystem `difftracker_engine`), inbound and outbound.
//!
//! Counters and histograms live in ordered maps keyed by their series text and are part of the
//! snapshot, so they survive restore. Gauges are not stored: the engine derives them from its
//! incrementally maintained indexes whenever status is read (always fresh, never negative).

use crate::io::{MetricKind, MetricSample};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const PREFIX: &str = "difftracker_engine_";

// Counters.
pub const SERVICE_OPERATIONS_TOTAL: &str = "service_operations_total";
pub const ORPHANED_RESOURCES_CLEANED_TOTAL: &str = "orphaned_resources_cleaned_total";
pub const FINALIZERS_RECOVERED_TOTAL: &str = "finalizers_recovered_total";
pub const FINALIZERS_RECOVERY_SCHEDULED_TOTAL: &str = "finalizers_recovery_scheduled_total";
pub const SERVICE_FINALIZER_REMOVE_FAILED_TOTAL: &str = "service_finalizer_remove_failed_total";
pub const POD_FINALIZER_ADD_FAILED_TOTAL: &str = "pod_finalizer_add_failed_total";
pub const POD_FINALIZER_REMOVE_FAILED_TOTAL: &str = "pod_finalizer_remove_failed_total";
pub const SERVICE_OPERATIONS_PARKED_TOTAL: &str = "service_operations_parked_total";
pub const OUTBOUND_SERVICE_UPDATES_SKIPPED_TOTAL: &str = "outbound_service_updates_skipped_total";
pub const LOCATION_SYNC_TERMINAL_ERRORS_TOTAL: &str = "location_sync_terminal_errors_total";
pub const LOCATION_SYNC_ABANDONED_TOTAL: &str = "location_sync_abandoned_total";
/// Not upstream: `updateAddressLocations` requests sent, one per batch of a location sync
/// (ENGINE.md 5.5); more than the syncs when a diff exceeds the request budget.
pub const LOCATION_SYNC_BATCHES_TOTAL: &str = "location_sync_batches_total";
/// Not upstream: `updateServices` requests the workers' registration changes went out in, one
/// per batch (ENGINE.md 5.5); fewer than the changes when several wait together.
pub const SERVICE_UPDATE_BATCHES_TOTAL: &str = "service_update_batches_total";
/// Not upstream: batches refused for one of their services and sent again one service per call.
pub const SERVICE_UPDATE_BATCH_SPLITS_TOTAL: &str = "service_update_batch_splits_total";
pub const DELETE_SUBSTEP_FAILURES_TOTAL: &str = "delete_substep_failures_total";
pub const SERVICE_EXTERNAL_IP_RECOVERY_FAILED_TOTAL: &str = "service_external_ip_recovery_failed_total";
/// Not upstream: completions whose call id the engine no longer awaits (late, duplicate, junk).
pub const IGNORED_COMPLETIONS_TOTAL: &str = "ignored_completions_total";
/// Not upstream: start-up list calls that failed (label `call`); the start-up is retried.
pub const INITIALIZATION_FAILURES_TOTAL: &str = "initialization_failures_total";
/// Not upstream: orphan public IPs the start-up sweep (step 13) deleted.
pub const ORPHAN_PUBLIC_IPS_SWEPT_TOTAL: &str = "orphan_public_ips_swept_total";

// Histograms.
pub const SERVICE_OPERATION_DURATION_SECONDS: &str = "service_operation_duration_seconds";
pub const SERVICE_OPERATION_RETRIES: &str = "service_operation_retries";
pub const DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
pub const RETRY_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0];
/// The buckets' `le` label values, written once rather than formatted on every status read.
const DURATION_LE: &[&str] = &["0.1", "0.5", "1", "2.5", "5", "10", "30", "60", "120"];
const RETRY_LE: &[&str] = &["0", "1", "2", "3", "5", "10", "20"];

// Gauges (derived at read time).
pub const PENDING_SERVICE_OPERATIONS: &str = "pending_service_operations";
pub const PENDING_DELETIONS: &str = "pending_deletions";
pub const SERVICES_BLOCKED_BY_LOCATIONS: &str = "services_blocked_by_locations";
pub const TRACKED_SERVICES_TOTAL: &str = "tracked_services_total";
pub const LOCATIONS_TOTAL: &str = "locations_total";
pub const ADDRESSES_TOTAL: &str = "addresses_total";
pub const SERVICEGATEWAY_ENABLED: &str = "servicegateway_enabled";
pub const INITIALIZATION_DURATION_SECONDS: &str = "initialization_duration_seconds";
pub const PENDING_OPERATION_OLDEST_AGE_SECONDS: &str = "pending_operation_oldest_age_seconds";

/// Unlabelled counters exported (at 0) from the start, as a Prometheus registry would.
const PLAIN_COUNTERS: &[&str] = &[
    ORPHANED_RESOURCES_CLEANED_TOTAL,
    FINALIZERS_RECOVERED_TOTAL,
    FINALIZERS_RECOVERY_SCHEDULED_TOTAL,
    SERVICE_FINALIZER_REMOVE_FAILED_TOTAL,
    POD_FINALIZER_ADD_FAILED_TOTAL,
    POD_FINALIZER_REMOVE_FAILED_TOTAL,
    OUTBOUND_SERVICE_UPDATES_SKIPPED_TOTAL,
    LOCATION_SYNC_TERMINAL_ERRORS_TOTAL,
    SERVICE_EXTERNAL_IP_RECOVERY_FAILED_TOTAL,
    IGNORED_COMPLETIONS_TOTAL,
    ORPHAN_PUBLIC_IPS_SWEPT_TOTAL,
];

pub type Labels = Vec<(String, String)>;

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut k = String::from(name);
    for (n, v) in labels {
        k.push('|');
        k.push_str(n);
        k.push('=');
        k.push_str(v);
    }
    k
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CounterSeries {
    pub name: String,
    pub labels: Labels,
    pub value: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramSeries {
    pub name: String,
    pub labels: Labels,
    /// Non-cumulative counts per bucket of [`bounds`] (the last one is +Inf).
    pub buckets: Vec<u64>,
    /// Sum of the observations in thousandths (exact integers, so snapshots round-trip).
    pub sum_milli: u64,
    pub count: u64,
}

/// The bucket bounds of a histogram, by name.
pub fn bounds(name: &str) -> &'static [f64] {
    match name {
        SERVICE_OPERATION_RETRIES => RETRY_BUCKETS,
        _ => DURATION_BUCKETS,
    }
}

fn le_labels(name: &str) -> &'static [&'static str] {
    match name {
        SERVICE_OPERATION_RETRIES => RETRY_LE,
        _ => DURATION_LE,
    }
}

/// `difftracker_engine_<name><suffix>`, without the formatting machinery (status is read often).
fn full_name(name: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(PREFIX.len() + name.len() + suffix.len());
    s.push_str(PREFIX);
    s.push_str(name);
    s.push_str(suffix);
    s
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    counters: BTreeMap<String, CounterSeries>,
    histograms: BTreeMap<String, HistogramSeries>,
}

impl Metrics {
    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        let key = series_key(name, labels);
        let s = self.counters.entry(key).or_insert_with(|| CounterSeries { name: name.to_string(), labels: owned(labels), value: 0 });
        s.value = s.value.saturating_add(v);
    }

    pub fn inc(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    /// Observes `value` (`bounds` must be [`bounds`]`(name)`; kept as a parameter for clarity).
    pub fn observe(&mut self, name: &str, labels: &[(&str, &str)], bounds: &[f64], value: f64) {
        let value = if value.is_finite() && value > 0.0 { value } else { 0.0 };
        let key = series_key(name, labels);
        let h = self.histograms.entry(key).or_insert_with(|| HistogramSeries {
            name: name.to_string(),
            labels: owned(labels),
            buckets: vec![0; bounds.len() + 1],
            sum_milli: 0,
            count: 0,
        });
        let idx = bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len());
        if let Some(b) = h.buckets.get_mut(idx) {
            *b += 1;
        }
        h.sum_milli = h.sum_milli.saturating_add((value * 1000.0).round() as u64);
        h.count += 1;
    }

    /// A counter's value (0 when never touched).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.get(&series_key(name, labels)).map_or(0, |s| s.value)
    }

    /// Sum of a counter over all its label sets.
    pub fn counter_total(&self, name: &str) -> u64 {
        self.counters.values().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<&HistogramSeries> {
        self.histograms.get(&series_key(name, labels))
    }

    /// Counter and histogram samples with full names (`_bucket{le}`, `_sum`, `_count`).
    pub fn samples(&self, out: &mut Vec<MetricSample>) {
        for name in PLAIN_COUNTERS {
            if !self.counters.contains_key(*name) {
                out.push(MetricSample { name: full_name(name, ""), labels: vec![], value: 0.0, kind: MetricKind::Counter });
            }
        }
        for s in self.counters.values() {
            out.push(MetricSample {
                name: full_name(&s.name, ""),
                labels: s.labels.clone(),
                value: s.value as f64,
                kind: MetricKind::Counter,
            });
        }
        for h in self.histograms.values() {
            let mut cumulative = 0u64;
            let les = le_labels(&h.name);
            for (i, c) in h.buckets.iter().enumerate() {
                cumulative += c;
                let mut labels = h.labels.clone();
                labels.push(("le".into(), les.get(i).copied().unwrap_or("+Inf").to_string()));
                out.push(MetricSample { name: full_name(&h.name, "_bucket"), labels, value: cumulative as f64, kind: MetricKind::Counter });
            }
            out.push(MetricSample {
                name: full_name(&h.name, "_sum"),
                labels: h.labels.clone(),
                value: h.sum_milli as f64 / 1000.0,
                kind: MetricKind::Counter,
            });
            out.push(MetricSample {
                name: full_name(&h.name, "_count"),
                labels: h.labels.clone(),
                value: h.count as f64,
                kind: MetricKind::Counter,
            });
        }
    }
}

/// A gauge sample with the full name.
pub fn gauge(name: &str, labels: &[(&str, &str)], value: f64) -> MetricSample {
    MetricSample { name: full_name(name, ""), labels: owned(labels), value, kind: MetricKind::Gauge }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_label_names_its_bound() {
        for (bounds, les) in [(DURATION_BUCKETS, DURATION_LE), (RETRY_BUCKETS, RETRY_LE)] {
            assert_eq!(bounds.len(), les.len());
            for (b, le) in bounds.iter().zip(les) {
                assert_eq!(le.parse::<f64>().unwrap(), *b, "{le}");
            }
        }
    }

    #[test]
    fn histogram_export_is_cumulative() {
        let mut m = Metrics::default();
        m.observe(SERVICE_OPERATION_RETRIES, &[("operation", "create")], RETRY_BUCKETS, 0.0);
        m.observe(SERVICE_OPERATION_RETRIES, &[("operation", "create")], RETRY_BUCKETS, 4.0);
        m.observe(SERVICE_OPERATION_RETRIES, &[("operation", "create")], RETRY_BUCKETS, 99.0);
        let mut out = vec![];
        m.samples(&mut out);
        let bucket = |le: &str| {
            out.iter().find(|s| s.name.ends_with("retries_bucket") && s.labels.iter().any(|(k, v)| k == "le" && v == le)).map(|s| s.value)
        };
        assert_eq!(bucket("0"), Some(1.0));
        assert_eq!(bucket("3"), Some(1.0));
        assert_eq!(bucket("5"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert!(out.iter().any(|s| s.name == "difftracker_engine_service_operation_retries_count" && s.value == 3.0));
        assert!(out.iter().any(|s| s.name == "difftracker_engine_service_operation_retries_sum" && s.value == 103.0));
        assert!(out.iter().any(|s| s.name == "difftracker_engine_orphaned_resources_cleaned_total" && s.value == 0.0));
    }
}
