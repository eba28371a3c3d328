//! The replay itself: the engine (through the host's [`EngineDriver`], the component in wasmtime
//! or the native build), the in-process ARM/NRP emulator and the simulated cluster, driven by a
//! trace in virtual time.
//!
//! The host starts at the trace's first instant: the trace events of that instant are applied to
//! the cluster, and the engine receives the cluster's objects as its initial lists, then the
//! marker that they are complete (its start-up pass lists the emulator itself).
//!
//! A single-threaded discrete-event loop. At each instant `now`: the trace events due are applied
//! to the cluster; the watch events the cluster produced are delivered; the engine ticks with the
//! completions due (in `(completion time, call id)` order); every call it starts is performed at
//! once (cloud calls on the emulator, which decides faults and latency from `now`; Kubernetes
//! writes on the cluster) and completes at `now + latency` (0 without a latency rule), so it is
//! handed back in a later tick. When nothing is left at `now`, the clock jumps to the earliest of
//! the next trace event, the next completion and the engine's `next_wake_ms`. No wall time
//! passes for backoffs or latencies.
//!
//! The replay stops when the trace is exhausted and the system has settled (engine status
//! `settled`, no call in flight, no watch event undelivered, no trace event held back, nothing
//! stuck deleting), or at the virtual time limit (`converged: false`), or as soon as nothing can
//! happen any more (nothing in flight, no wake-up asked for) without having settled
//! (`converged: false` too).

use super::cluster::Cluster;
use super::oracle;
use super::report::{self, Report};
use super::trace::Trace;
use crate::emulator::{Emulator, EmulatorBackend, EmulatorOptions, FaultPlan};
use anyhow::{Context, Result};
use difftracker_engine::io::{Call, CallId, Completion, EngineStatus, TenantConfig};
use difftracker_runtime::driver::{CallIds, EngineDriver, EngineKind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Six hours of virtual time.
pub const DEFAULT_UNTIL_MS: u64 = 6 * 60 * 60 * 1000;

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Seeds the engine's backoff jitter.
    pub seed: u64,
    pub engine: EngineKind,
    /// Virtual time limit.
    pub until_ms: u64,
    /// Fault injection on the emulator (its own `until_ms` stops the faults).
    pub faults: Option<FaultPlan>,
    /// The tenant name given to the engine.
    pub tenant: String,
    /// The engine's request budget (`TenantConfig::max_request_bytes`, `max_request_entries`);
    /// the defaults when `None`.
    pub max_request_bytes: Option<u64>,
    pub max_request_entries: Option<u32>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            seed: 1,
            engine: EngineKind::Wasm,
            until_ms: DEFAULT_UNTIL_MS,
            faults: None,
            tenant: "replay".into(),
            max_request_bytes: None,
            max_request_entries: None,
        }
    }
}

/// Everything a replay ends with.
pub struct ReplayOutcome {
    pub report: Report,
    /// The final cluster (for the oracle and for inspection).
    pub cluster: Cluster,
    /// The emulator's inventory before the engine ran.
    pub baseline: Value,
    /// The emulator's final inventory.
    pub inventory: Value,
    pub status: EngineStatus,
}

/// Counters of the loop, for the report.
#[derive(Clone, Debug, Default)]
pub struct LoopStats {
    pub ticks: u64,
    pub cloud_calls: BTreeMap<String, u64>,
    pub cloud_errors: BTreeMap<String, u64>,
    /// Times the engine asked to be woken at or before the instant it had just been ticked at
    /// (the loop then wakes it 1 ms later, so time always advances).
    pub stale_wakes: u64,
}

/// Replays `trace` with a fresh engine of `options.engine`.
pub fn replay(trace: &Trace, options: &ReplayOptions) -> Result<ReplayOutcome> {
    let driver = options.engine.new_driver(CallIds::default())?;
    replay_with(trace, options, driver)
}

/// Replays `trace` with the given (not yet created) engine.
pub fn replay_with(trace: &Trace, options: &ReplayOptions, mut driver: Box<dyn EngineDriver>) -> Result<ReplayOutcome> {
    let emulator_options = EmulatorOptions { faults: options.faults.clone(), ..EmulatorOptions::default() };
    let scope = emulator_options.scope.clone();
    let emulator: Arc<Emulator> = Emulator::new(emulator_options);
    let baseline = emulator.inventory();
    let backend = EmulatorBackend::new(emulator.clone(), scope.tenant_config("http://emulator.replay.invalid"))
        // The CloudBackend side is not used: every call goes through `perform_at(now)`.
        .with_clock(Arc::new(|| 0));
    let mut cluster = Cluster::new();
    let mut stats = LoopStats::default();

    driver
        .create(&TenantConfig {
            tenant: options.tenant.clone(),
            seed: options.seed,
            max_request_bytes: options.max_request_bytes,
            max_request_entries: options.max_request_entries,
            ..TenantConfig::default()
        })
        .context("creating the engine")?;

    let events = &trace.events;
    let mut next_event = 0usize;
    let mut in_flight: BTreeMap<(u64, CallId), Completion> = BTreeMap::new();
    let mut wake: Option<u64> = None;
    // The host starts at the trace's first instant: what the cluster holds then is the engine's
    // initial lists, followed by the marker; everything later arrives as watch events.
    let mut now = events.first().map_or(0, |e| e.at_ms);
    while next_event < events.len() && events[next_event].at_ms <= now {
        let e = &events[next_event];
        cluster.apply(now, e.event_type, e.object.clone());
        next_event += 1;
    }
    driver.deliver(now, cluster.initial_lists()).with_context(|| format!("engine deliver of the initial lists at {now} ms"))?;
    let mut must_tick = true;
    let converged;
    // A failing engine (a trap, a limit) ends the run, but the report is still written and says so.
    let mut engine_failure: Option<String> = None;
    loop {
        while next_event < events.len() && events[next_event].at_ms <= now {
            let e = &events[next_event];
            cluster.apply(now, e.event_type, e.object.clone());
            next_event += 1;
        }
        let kube_events = cluster.take_events();
        let delivered = !kube_events.is_empty();
        if delivered {
            if let Err(e) = driver.deliver(now, kube_events) {
                engine_failure = Some(failure(now, "deliver", &e));
                converged = false;
                break;
            }
        }
        let mut due = Vec::new();
        while let Some(entry) = in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        let woken = wake.is_some_and(|w| w <= now);
        if delivered || !due.is_empty() || woken || must_tick {
            must_tick = false;
            let result = match driver.tick(now, due) {
                Ok(result) => result,
                Err(e) => {
                    engine_failure = Some(failure(now, "tick", &e));
                    converged = false;
                    break;
                }
            };
            stats.ticks += 1;
            for record in result.events {
                cluster.record_event(record);
            }
            for (id, call) in result.started {
                let label = call.label();
                let (at, outcome) = match call {
                    Call::Cloud(c) => {
                        *stats.cloud_calls.entry(label.to_string()).or_insert(0) += 1;
                        let decided = backend.perform_at(now, &c);
                        if let Err(e) = &decided.outcome {
                            let key = if e.code.is_empty() {
                                format!("{label} {}", e.status)
                            } else {
                                format!("{label} {} {}", e.status, e.code)
                            };
                            *stats.cloud_errors.entry(key).or_insert(0) += 1;
                        }
                        (now.saturating_add(decided.latency_ms), decided.outcome)
                    }
                    Call::Kube(k) => (now, cluster.perform(now, &k)),
                };
                in_flight.insert((at, id), Completion { id, outcome });
            }
            wake = result.outcome.next_wake_ms;
            if let Some(w) = wake {
                if w <= now {
                    stats.stale_wakes += 1;
                    wake = Some(now + 1);
                }
            }
            continue;
        }
        // Nothing more at `now`.
        let next_trace = events.get(next_event).map(|e| e.at_ms);
        if next_trace.is_none() && in_flight.is_empty() && !cluster.has_events() {
            let status = match driver.status() {
                Ok(status) => status,
                Err(e) => {
                    engine_failure = Some(failure(now, "status", &e));
                    converged = false;
                    break;
                }
            };
            if status.settled && cluster.stuck_deleting().is_empty() && !cluster.has_deferred() {
                converged = true;
                break;
            }
            if wake.is_none() {
                // Nothing will ever happen again.
                converged = false;
                break;
            }
        }
        let next = [next_trace, in_flight.keys().next().map(|k| k.0), wake].into_iter().flatten().min();
        match next {
            None => {
                converged = false;
                break;
            }
            Some(t) if t > options.until_ms => {
                now = now.max(options.until_ms);
                converged = false;
                break;
            }
            Some(t) => now = t,
        }
    }

    let status = if engine_failure.is_some() { EngineStatus::default() } else { driver.status().context("engine status")? };
    let inventory = emulator.inventory();
    let differences = oracle::check(&cluster, &inventory, &baseline);
    let report = report::build(report::Inputs {
        converged,
        virtual_ms: now,
        options,
        trace,
        inventory: &inventory,
        cluster: &cluster,
        status: &status,
        stats: &stats,
        in_flight: in_flight.len(),
        trace_left: events.len() - next_event,
        differences: &differences,
    });
    let mut report = report;
    if let Some(f) = engine_failure {
        // Only a failed run carries the key, so the reports of healthy runs keep their bytes.
        report["engine_failure"] = Value::String(f);
    }
    Ok(ReplayOutcome { report, cluster, baseline, inventory, status })
}

/// One line on a failed guest call, bounded.
fn failure(now: u64, call: &str, e: &anyhow::Error) -> String {
    format!("engine {call} at {now} ms failed: {}", difftracker_runtime::tenant::brief_reason(&format!("{e:#}")))
}
