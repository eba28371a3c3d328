//! What 0.3.0 converts its own way: a call error is a variant whose cases carry what each failure
//! has (`status: none` where the engine's record says 0, "no response"), and metric samples say
//! their kind. The rest is the shared `domain`.

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
        match e.kind {
            K::Http => w::CallError::Http(answered(e)),
            K::Throttled => w::CallError::Throttled(answered(e)),
            K::Timeout => w::CallError::Timeout(failed(e)),
            K::Transport => w::CallError::Transport(failed(e)),
            K::InvalidResponse => w::CallError::InvalidResponse(failed(e)),
            K::OperationFailed => w::CallError::OperationFailed(failed(e)),
            K::NotFound => w::CallError::NotFound(failed(e)),
            K::Replaced => w::CallError::Replaced(failed(e)),
            K::Conflict => w::CallError::Conflict(failed(e)),
        }
    }
}

fn answered(e: io::CallError) -> w::HttpFailure {
    w::HttpFailure { status: e.status, code: e.code, message: e.message, retry_after_ms: e.retry_after_ms }
}

fn failed(e: io::CallError) -> w::Failure {
    w::Failure { status: (e.status != 0).then_some(e.status), code: e.code, message: e.message, retry_after_ms: e.retry_after_ms }
}

impl From<w::MetricSample> for io::MetricSample {
    fn from(m: w::MetricSample) -> io::MetricSample {
        let kind = match m.kind {
            w::MetricKind::Gauge => io::MetricKind::Gauge,
            w::MetricKind::Counter => io::MetricKind::Counter,
        };
        io::MetricSample { name: m.name, labels: m.labels, value: m.value, kind }
    }
}

/// The tenant configuration, field by field (0.3.0 carries the ServiceGateway POST interval too.)
impl From<&io::TenantConfig> for wx::TenantConfig {
    fn from(c: &io::TenantConfig) -> wx::TenantConfig {
        wx::TenantConfig {
            tenant: c.tenant.clone(),
            seed: c.seed,
            max_retry_after_ms: c.max_retry_after_ms,
            max_request_bytes: c.max_request_bytes,
            max_request_entries: c.max_request_entries,
            max_operations_in_flight: c.max_operations_in_flight,
            sgw_post_interval_ms: c.sgw_post_interval_ms,
        }
    }
}
