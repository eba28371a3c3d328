//! The `clb:difftracker@0.3.0` generation (the default): exports [`Engine`] as the `engine`
//! resource and implements [`io::NumberedIo`] on the `cloud` and `kube` imports, which take the
//! id the engine allocated for each call.
//!
//! The resource holds its engine in a `RefCell`: the component model never re-enters an
//! instance, so a failed borrow only reports a broken host (`engine-error.reentered`).

use super::domain::*;
use crate::engine::Engine;
use crate::io;
use std::cell::RefCell;

wit_bindgen::generate!({
    world: "difftracker-engine",
    path: "../wit/0.3.0",
});

pub(super) use clb::difftracker::{cloud, kube, types as w};
pub(super) use exports::clb::difftracker::engine as wx;
use exports::clb::difftracker::engine::{EngineError, Guest, GuestEngine};

struct Component;

export!(Component);

impl Guest for Component {
    type Engine = EngineResource;
}

/// One tenant's engine, as the host holds it.
struct EngineResource(RefCell<Engine>);

impl EngineResource {
    fn with<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> Result<R, EngineError> {
        let mut engine = self.0.try_borrow_mut().map_err(|_| EngineError::Reentered)?;
        Ok(f(&mut engine))
    }
}

impl GuestEngine for EngineResource {
    fn new(config: wx::TenantConfig) -> EngineResource {
        EngineResource(RefCell::new(Engine::new(config_in(config))))
    }

    fn restore(snapshot: Vec<u8>) -> Result<wx::Engine, EngineError> {
        let engine = Engine::restore(&snapshot).map_err(|e| EngineError::SnapshotRefused(e.to_string()))?;
        Ok(wx::Engine::new(EngineResource(RefCell::new(engine))))
    }

    fn deliver(&self, now_ms: u64, events: Vec<w::KubeEvent>) -> Result<(), EngineError> {
        let events = events.into_iter().map(kube_event_in).collect();
        self.with(|engine| engine.deliver(now_ms, events))
    }

    fn tick(&self, now_ms: u64, completions: Vec<w::Completion>) -> Result<wx::TickOutcome, EngineError> {
        let completions = completions.into_iter().map(completion_in).collect();
        let outcome = self.with(|engine| engine.tick_numbered(now_ms, completions, &mut WitIo))?;
        Ok(wx::TickOutcome { next_wake_ms: outcome.next_wake_ms, calls_in_flight: outcome.calls_in_flight })
    }

    fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let bytes = self.with(|engine| engine.snapshot())?;
        // The encoder gives nothing rather than a snapshot that would not restore.
        if bytes.is_empty() {
            return Err(EngineError::SnapshotFailed("the engine state could not be encoded".into()));
        }
        Ok(bytes)
    }

    fn status(&self) -> Result<w::EngineStatus, EngineError> {
        self.with(|engine| status_out(engine.status(), metric_out))
    }

    fn operations(&self) -> Result<Vec<w::OperationStatus>, EngineError> {
        self.with(|engine| engine.operation_statuses().into_iter().map(operation_out).collect())
    }

    fn next_call_id(&self) -> Result<io::CallId, EngineError> {
        self.with(|engine| engine.next_call_id())
    }
}

// ------------------------------------------------------------------------ io::NumberedIo on the imports

/// Starts calls through the `cloud` and `kube` imports with the engine's ids.
struct WitIo;

impl io::NumberedIo for WitIo {
    fn start(&mut self, id: io::CallId, call: io::Call) {
        match call {
            io::Call::Cloud(c) => start_cloud!(c, id),
            io::Call::Kube(k) => start_kube!(k, id),
        }
    }

    fn record_event(&mut self, event: io::KubeEventRecord) {
        record_event(event)
    }
}

// ------------------------------------------------------------------------ what 0.3.0 has of its own

fn metric_out(m: io::MetricSample) -> w::MetricSample {
    let kind = match m.kind {
        io::MetricKind::Gauge => w::MetricKind::Gauge,
        io::MetricKind::Counter => w::MetricKind::Counter,
    };
    w::MetricSample { name: m.name, labels: m.labels, value: m.value, kind }
}

/// The variant's cases back into the engine's one error record; `status: none` is the
/// engine's 0 ("no response").
fn error_in(e: w::CallError) -> io::CallError {
    use io::ErrorKind as K;
    use w::CallError as E;
    let answered = |kind, f: w::HttpFailure| io::CallError {
        kind,
        status: f.status,
        code: f.code,
        message: f.message,
        retry_after_ms: f.retry_after_ms,
    };
    let failed = |kind, f: w::Failure| io::CallError {
        kind,
        status: f.status.unwrap_or(0),
        code: f.code,
        message: f.message,
        retry_after_ms: f.retry_after_ms,
    };
    match e {
        E::Http(f) => answered(K::Http, f),
        E::Throttled(f) => answered(K::Throttled, f),
        E::Timeout(f) => failed(K::Timeout, f),
        E::Transport(f) => failed(K::Transport, f),
        E::InvalidResponse(f) => failed(K::InvalidResponse, f),
        E::OperationFailed(f) => failed(K::OperationFailed, f),
        E::NotFound(f) => failed(K::NotFound, f),
        E::Replaced(f) => failed(K::Replaced, f),
        E::Conflict(f) => failed(K::Conflict, f),
    }
}

fn completion_in(c: w::Completion) -> io::Completion {
    io::Completion { id: c.id, outcome: c.outcome.map(output_in).map_err(error_in) }
}
