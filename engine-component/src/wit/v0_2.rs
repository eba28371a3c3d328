//! The `clb:difftracker@0.2.0` generation (cargo feature `wit-0-2`): exports [`Engine`] as the
//! free functions of the `engine` interface and implements [`io::Io`] on the `cloud` and `kube`
//! imports, which return the ids the host allocates.
//!
//! One component instance is one tenant, so the engine lives in a single thread-local cell.
//! Every export reports misuse (`create` twice, `tick` before `create`, a bad snapshot) as
//! `Err(String)`.

use super::domain::*;
use crate::engine::Engine;
use crate::io;
use std::cell::RefCell;

wit_bindgen::generate!({
    world: "difftracker-engine",
    path: "../wit/0.2.0",
});

pub(super) use clb::difftracker::{cloud, kube, types as w};
pub(super) use exports::clb::difftracker::engine as wx;
use exports::clb::difftracker::engine::Guest;

struct Component;

export!(Component);

thread_local! {
    /// The tenant's engine; `None` until `create` or `restore`.
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// Runs `f` on the engine, or fails when there is none yet.
fn with_engine<R>(f: impl FnOnce(&mut Engine) -> R) -> Result<R, String> {
    ENGINE.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| "engine re-entered".to_string())?;
        match slot.as_mut() {
            Some(engine) => Ok(f(engine)),
            None => Err("no engine in this instance: call create or restore first".to_string()),
        }
    })
}

impl Guest for Component {
    fn create(config: wx::TenantConfig) -> Result<(), String> {
        ENGINE.with(|cell| {
            let mut slot = cell.try_borrow_mut().map_err(|_| "engine re-entered".to_string())?;
            if slot.is_some() {
                return Err("an engine already exists in this instance".to_string());
            }
            *slot = Some(Engine::new(config_in(config)));
            Ok(())
        })
    }

    fn deliver(now_ms: u64, events: Vec<w::KubeEvent>) -> Result<(), String> {
        let events = events.into_iter().map(kube_event_in).collect();
        with_engine(|engine| engine.deliver(now_ms, events))
    }

    fn tick(now_ms: u64, completions: Vec<w::Completion>) -> Result<wx::TickOutcome, String> {
        let completions = completions.into_iter().map(completion_in).collect();
        let outcome = with_engine(|engine| engine.tick(now_ms, completions, &mut WitIo))?;
        Ok(wx::TickOutcome { next_wake_ms: outcome.next_wake_ms, calls_in_flight: outcome.calls_in_flight })
    }

    fn snapshot() -> Result<Vec<u8>, String> {
        with_engine(|engine| engine.snapshot())
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        let engine = Engine::restore(&snapshot).map_err(|e| e.to_string())?;
        ENGINE.with(|cell| {
            let mut slot = cell.try_borrow_mut().map_err(|_| "engine re-entered".to_string())?;
            *slot = Some(engine);
            Ok(())
        })
    }

    fn status() -> Result<w::EngineStatus, String> {
        with_engine(|engine| status_out(engine.status(), metric_out))
    }

    fn operations() -> Result<Vec<w::OperationStatus>, String> {
        with_engine(|engine| engine.operation_statuses().into_iter().map(operation_out).collect())
    }
}

// ------------------------------------------------------------------------ io::Io on the imports

/// Starts calls through the `cloud` and `kube` imports; the host allocates the ids.
struct WitIo;

impl io::Io for WitIo {
    fn start(&mut self, call: io::Call) -> io::CallId {
        match call {
            io::Call::Cloud(c) => start_cloud!(c),
            io::Call::Kube(k) => start_kube!(k),
        }
    }

    fn record_event(&mut self, event: io::KubeEventRecord) {
        record_event(event)
    }
}

// ------------------------------------------------------------------------ what 0.2.0 has of its own

/// 0.2.0 samples carry no kind: the host tells gauges from counters by name.
fn metric_out(m: io::MetricSample) -> w::MetricSample {
    w::MetricSample { name: m.name, labels: m.labels, value: m.value }
}

fn error_in(e: w::CallError) -> io::CallError {
    use w::ErrorKind as K;
    io::CallError {
        kind: match e.kind {
            K::Http => io::ErrorKind::Http,
            K::Throttled => io::ErrorKind::Throttled,
            K::Timeout => io::ErrorKind::Timeout,
            K::Transport => io::ErrorKind::Transport,
            K::InvalidResponse => io::ErrorKind::InvalidResponse,
            K::OperationFailed => io::ErrorKind::OperationFailed,
            K::NotFound => io::ErrorKind::NotFound,
            K::Replaced => io::ErrorKind::Replaced,
            K::Conflict => io::ErrorKind::Conflict,
        },
        status: e.status,
        code: e.code,
        message: e.message,
        retry_after_ms: e.retry_after_ms,
    }
}

fn completion_in(c: w::Completion) -> io::Completion {
    io::Completion { id: c.id, outcome: c.outcome.map(output_in).map_err(error_in) }
}
