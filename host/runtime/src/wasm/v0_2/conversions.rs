//! What 0.2.0 converts its own way: a call error is one record (`status = 0`: no response),
//! metric samples carry no kind, so the host tells gauges from counters by name, as every host
//! of 0.2.0 did. The rest is the shared `domain`.

use super::{w, wx};
use difftracker_engine::io;

// The same text over this generation's own generated types (which are distinct Rust types even
// where the WIT is identical): included once per generation on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "../domain.rs"]
mod domain;

impl From<io::CallError> for w::CallError {
    fn from(e: io::CallError) -> w::CallError {
        use io::ErrorKind as K;
        w::CallError {
            kind: match e.kind {
                K::Http => w::ErrorKind::Http,
                K::Throttled => w::ErrorKind::Throttled,
                K::Timeout => w::ErrorKind::Timeout,
                K::Transport => w::ErrorKind::Transport,
                K::InvalidResponse => w::ErrorKind::InvalidResponse,
                K::OperationFailed => w::ErrorKind::OperationFailed,
                K::NotFound => w::ErrorKind::NotFound,
                K::Replaced => w::ErrorKind::Replaced,
                K::Conflict => w::ErrorKind::Conflict,
            },
            status: e.status,
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

impl From<w::MetricSample> for io::MetricSample {
    fn from(m: w::MetricSample) -> io::MetricSample {
        let kind = legacy_kind(&m.name);
        io::MetricSample { name: m.name, labels: m.labels, value: m.value, kind }
    }
}

/// The engine gauges whose names end in `_total`; every other name ending in `_total` is a
/// counter, and so are a histogram's parts (`_bucket`, `_sum`, `_count`). The rule of the 0.2.0
/// hosts, kept for 0.2.0 components only: a 0.3.0 sample says its kind itself.
const LEGACY_GAUGES_TOTAL: &[&str] = {
    use difftracker_engine::metrics as m;
    &[m::TRACKED_SERVICES_TOTAL, m::LOCATIONS_TOTAL, m::ADDRESSES_TOTAL]
};

fn legacy_kind(name: &str) -> io::MetricKind {
    let Some(base) = name.strip_prefix(difftracker_engine::metrics::PREFIX) else { return io::MetricKind::Gauge };
    let counter = ["_bucket", "_sum", "_count"].iter().any(|suffix| base.ends_with(suffix))
        || (base.ends_with("_total") && !LEGACY_GAUGES_TOTAL.contains(&base));
    if counter {
        io::MetricKind::Counter
    } else {
        io::MetricKind::Gauge
    }
}

/// The tenant configuration, field by field (0.2.0's record has no POST interval: a 0.2.0 component posts at once, as it always did.)
impl From<&io::TenantConfig> for wx::TenantConfig {
    fn from(c: &io::TenantConfig) -> wx::TenantConfig {
        wx::TenantConfig {
            tenant: c.tenant.clone(),
            seed: c.seed,
            max_retry_after_ms: c.max_retry_after_ms,
            max_request_bytes: c.max_request_bytes,
            max_request_entries: c.max_request_entries,
            max_operations_in_flight: c.max_operations_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of the 0.2.0 fixture get the kinds the engine gives them natively.
    #[test]
    fn legacy_kinds_match_the_engines_own() {
        let mut engine = difftracker_engine::Engine::new(io::TenantConfig::default());
        engine.deliver(0, vec![]);
        let status = engine.status();
        assert!(status.metrics.iter().any(|s| s.kind == io::MetricKind::Gauge));
        assert!(status.metrics.iter().any(|s| s.kind == io::MetricKind::Counter));
        for sample in status.metrics {
            assert_eq!(legacy_kind(&sample.name), sample.kind, "{}", sample.name);
        }
    }
}
