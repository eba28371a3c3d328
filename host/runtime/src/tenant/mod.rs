//! One tenant's tick loop.
//!
//! A tenant owns one engine ([`EngineDriver`], already created or restored) and runs on tokio:
//! it sleeps until Kubernetes events arrive, a call completes, or the engine's `next_wake_ms`
//! comes, then delivers the events and ticks with every completion gathered so far. The calls the
//! tick started go to the executor ([`crate::executor`]); the Events it recorded go to the Kube
//! backend. Ticks of one tenant run one at a time (the loop owns the engine); ticks of different
//! tenants run in parallel, each on tokio's blocking pool, since a guest call is synchronous CPU
//! work bounded by the sandbox's deadline.
//!
//! Progress is published on a `watch` channel ([`TenantStatus`]) and, when an observer is
//! attached, as a stream of [`TenantEvent`]s (what the demo prints). A failing guest call ends the
//! loop with the error, unless the tenant recovers from it (below); other tenants are unaffected.
//!
//! **Backoff** (fair share): a tick in which the engine trapped or hit its CPU deadline, and the
//! tenant recovered, makes the tenant wait before its next tick, longer after each such tick in a
//! row ([`BackoffPolicy`]: 100 ms doubling to 30 s, forgotten after a run of clean ticks), so a
//! misbehaving engine cannot take a core in a loop; inputs arriving meanwhile wait for that tick.
//! While backed off, its ticks run at the lowest CPU priority, so its guest calls take only the
//! CPU the other tenants leave.
//! [`TenantStatus::backoff`], [`TenantStatus::consecutive_traps`] and [`TenantStatus::warning`]
//! say so. The bound stays [`Recovery::max_restarts`]: past it the tenant stops with the reason
//! in [`TenantStatus::error`].
//!
//! - `tick_loop`: the loop; `recovery`: trap recovery (checkpoint, input log, quarantine);
//!   `swap`: hot swap (in the background, or plain); `summary`: one-line summaries for logs and the status page.

mod recovery;
mod summary;
mod swap;
#[cfg(test)]
mod tests;
mod tick_loop;

pub use recovery::{EngineFactory, RecoveredTick, RecoveringEngine, Recovery, SnapshotPolicy, StatusRead};
pub use summary::{brief_reason, completion_summary, event_summary, one_line, quarantine_warning, short, REASON_INPUT_QUARANTINED};
pub use swap::{SwapError, SwapOptions, SwapReport, CATCH_UP_INPUTS};

use crate::driver::EngineDriver;
use crate::executor::{Backends, CallRunner, Executor, DEFAULT_TENANT_CAP};
use anyhow::{anyhow, Result};
use difftracker_engine::io::{Call, CallError, CallId, CallOutput, EngineStatus, KubeEvent, KubeEventRecord};
use recovery::GuardedEngine;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tick_loop::TenantLoop;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

/// Requests to a running tenant loop, handled between ticks.
enum Control {
    /// Move the engine's state into this fresh instance and continue with it; recover later
    /// instances with this factory when one is given (a new component).
    Swap(Box<dyn EngineDriver>, Option<EngineFactory>, oneshot::Sender<Result<SwapReport>>),
    /// Swap in the background to an instance this factory builds (see `swap`).
    HotSwap(EngineFactory, SwapOptions, oneshot::Sender<std::result::Result<SwapReport, SwapError>>),
}

/// How a tenant runs.
#[derive(Clone, Debug)]
pub struct TenantOptions {
    /// Names the tenant in logs.
    pub name: String,
    /// Calls of this tenant in flight at once.
    pub max_calls_in_flight: usize,
    /// Rebuild the engine after a trap instead of stopping (see the module docs).
    pub recovery: Option<Recovery>,
    /// How long a tenant whose engine trapped waits before its next tick; `None` ticks again at
    /// once (only to measure what the backoff buys, as `bench-tenants --no-backoff` does).
    pub backoff: Option<BackoffPolicy>,
}

impl TenantOptions {
    pub fn new(name: impl Into<String>) -> Self {
        TenantOptions {
            name: name.into(),
            max_calls_in_flight: DEFAULT_TENANT_CAP,
            recovery: None,
            backoff: Some(BackoffPolicy::default()),
        }
    }

    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    pub fn with_backoff(mut self, backoff: Option<BackoffPolicy>) -> Self {
        self.backoff = backoff;
        self
    }
}

/// The delay before the next tick of a tenant whose engine keeps trapping (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The delay after the first trapping tick; it doubles with each further one in a row.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Clean ticks in a row after which the traps are forgotten (the next one waits `initial`).
    pub reset_after_clean_ticks: u32,
    /// While backed off, tick on a thread of the lowest CPU priority (nice 19), so that a guest
    /// looping until its CPU deadline takes only the CPU no other tenant wants.
    pub low_priority: bool,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { initial: Duration::from_millis(100), max: Duration::from_secs(30), reset_after_clean_ticks: 10, low_priority: true }
    }
}

impl BackoffPolicy {
    /// The delay after `consecutive_traps` trapping ticks in a row (at least one).
    pub fn delay(&self, consecutive_traps: u32) -> Duration {
        let doublings = consecutive_traps.saturating_sub(1).min(63);
        self.initial.saturating_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX)).min(self.max)
    }
}

/// What happened in a tenant, in order (for observers such as the demo's printer).
#[derive(Clone, Debug, PartialEq)]
pub enum TenantEvent {
    CallStarted {
        id: CallId,
        call: Call,
    },
    CallCompleted {
        id: CallId,
        outcome: Result<CallOutput, CallError>,
    },
    EventRecorded(KubeEventRecord),
    /// The engine's count of operations per state changed.
    StatesChanged(Vec<(String, u32)>),
}

/// What kind of input was quarantined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarantinedKind {
    /// A Kubernetes event.
    Event,
    /// The completion of this call (which the engine now sees as lost).
    Completion(CallId),
}

/// An input the engine trapped on twice (on the running instance, then on a fresh one), dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The tenant tick (as counted in [`TenantStatus::ticks`]) that dropped it.
    pub tick: u64,
    /// That tick's `now`.
    pub at_ms: u64,
    pub kind: QuarantinedKind,
    /// What it was (kind, object or call, size), short.
    pub summary: String,
    /// The trap, on one line ([`brief_reason`]).
    pub reason: String,
}

/// The tenant's latest progress.
#[derive(Clone, Debug, Default)]
pub struct TenantStatus {
    pub ticks: u64,
    pub last_tick_ms: u64,
    pub next_wake_ms: Option<u64>,
    /// Calls started and not yet handed back to the engine.
    pub calls_outstanding: usize,
    pub engine: EngineStatus,
    /// Set when the loop stopped on an error.
    pub error: Option<String>,
    pub stopped: bool,
    /// Times the engine was rebuilt from its last good snapshot after a trap.
    pub restarts: u64,
    /// The most recent quarantined inputs, oldest first (at most
    /// [`Recovery::quarantine_capacity`]).
    pub quarantined: Vec<Quarantined>,
    /// Inputs quarantined since the tenant started.
    pub quarantined_total: u64,
    /// The WIT package of the running instance's component (`clb:difftracker@0.3.0`), as of the
    /// last tick; none for the native engine.
    pub wit: Option<&'static str>,
    /// Bytes of the latest checkpoint (the snapshot trap recovery and hot swap start from).
    pub checkpoint_bytes: u64,
    /// Swaps that replaced the engine instance.
    pub swaps: u64,
    /// Of those, swaps forced past a divergence of the shadow gate ([`SwapOptions`]), and the
    /// latest one's first difference.
    pub swaps_forced: u64,
    pub last_swap_divergence: Option<String>,
    /// Swaps refused (the old instance kept running), and the latest refusal's reason.
    pub swaps_refused: u64,
    pub last_swap_error: Option<String>,
    /// Guest calls that trapped or hit a sandbox limit (the CPU deadline, memory) in a tenant
    /// with trap recovery, recovered from or not (without recovery the first one stops it).
    pub traps: u64,
    /// Ticks in a row that trapped (reset by [`BackoffPolicy::reset_after_clean_ticks`] clean ones).
    pub consecutive_traps: u32,
    /// While set, the tenant waits this long after its last tick before the next one.
    pub backoff: Option<Duration>,
    /// Why the tenant is backed off, for people (logs and the status page).
    pub warning: Option<String>,
}

impl TenantStatus {
    /// Nothing in flight on either side and the engine says it has nothing left to do.
    pub fn is_idle(&self) -> bool {
        self.engine.settled && self.calls_outstanding == 0
    }

    pub fn state_count(&self, state: &str) -> u32 {
        self.engine.states.iter().find(|(s, _)| s == state).map(|(_, n)| *n).unwrap_or(0)
    }
}

/// The handle of a running tenant. Dropping it stops the loop.
pub struct TenantHandle {
    name: String,
    inputs: mpsc::UnboundedSender<Vec<KubeEvent>>,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<TenantStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Box<dyn EngineDriver>>>,
}

impl TenantHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues Kubernetes events for the next tick.
    pub fn deliver(&self, events: Vec<KubeEvent>) -> Result<()> {
        self.inputs.send(events).map_err(|_| anyhow!("tenant {} is not running", self.name))
    }

    /// Where [`TenantHandle::deliver`] sends, for a feeder task of its own.
    pub fn input_sender(&self) -> mpsc::UnboundedSender<Vec<KubeEvent>> {
        self.inputs.clone()
    }

    pub fn status(&self) -> TenantStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<TenantStatus> {
        self.status.clone()
    }

    /// Waits until `done` holds for the tenant's status; fails if the loop stops first.
    pub async fn wait_for(&self, mut done: impl FnMut(&TenantStatus) -> bool) -> Result<TenantStatus> {
        let mut rx = self.status.clone();
        let status = rx.wait_for(|s| done(s) || s.stopped).await.map_err(|_| anyhow!("tenant {} stopped", self.name))?.clone();
        match (&status.error, status.stopped && !done(&status)) {
            (Some(e), _) => Err(anyhow!("tenant {} failed: {e}", self.name)),
            (None, true) => Err(anyhow!("tenant {} stopped", self.name)),
            _ => Ok(status),
        }
    }

    /// Replaces the running engine with `fresh` (a new, empty instance, possibly of a newer
    /// component) between two ticks: snapshot of the old one, restore into the new one, switch.
    /// If that fails the old instance keeps running. Calls in flight complete into the new one.
    /// A recovering tenant keeps building its fresh instances with the factory it has: use
    /// [`TenantHandle::swap_component`] when `fresh` runs another component.
    pub async fn swap_engine(&self, fresh: Box<dyn EngineDriver>) -> Result<()> {
        self.send_swap(fresh, None).await
    }

    /// [`TenantHandle::swap_engine`] to another component, whose fresh instances `factory` builds
    /// from now on when the tenant recovers from a trap.
    pub async fn swap_component(&self, fresh: Box<dyn EngineDriver>, factory: EngineFactory) -> Result<()> {
        self.send_swap(fresh, Some(factory)).await
    }

    async fn send_swap(&self, fresh: Box<dyn EngineDriver>, factory: Option<EngineFactory>) -> Result<()> {
        self.plain_swap(fresh, factory).await.map(|_| ())
    }

    /// [`TenantHandle::swap_engine`] (`factory` as in [`TenantHandle::swap_component`]), saying
    /// what it cost: the pause is a snapshot plus a restore.
    pub async fn plain_swap(&self, fresh: Box<dyn EngineDriver>, factory: Option<EngineFactory>) -> Result<SwapReport> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Swap(fresh, factory, tx)).map_err(|_| anyhow!("tenant {} is not running", self.name))?;
        rx.await.map_err(|_| anyhow!("tenant {} stopped during the swap", self.name))?
    }

    /// Swaps the engine in the background, without pausing the tenant for more than a few
    /// ticks' worth of work: an instance `factory` builds (from a counter of its own) restores
    /// the tenant's checkpoint and replays its input log while the old instance keeps ticking,
    /// then takes over at a tick boundary; calls in flight complete into it, and `factory` builds
    /// the tenant's instances after a trap from then on. A refusal leaves the old instance
    /// running and says why. A tenant with trap recovery swaps from its checkpoint; one without
    /// takes a snapshot first (that snapshot is then part of the pause).
    ///
    /// The request is queued at once; the future only waits for the answer, so it may outlive
    /// the borrow of the handle.
    pub fn hot_swap(&self, factory: EngineFactory) -> impl Future<Output = std::result::Result<SwapReport, SwapError>> + Send + 'static {
        self.hot_swap_with(factory, SwapOptions::default())
    }

    /// [`TenantHandle::hot_swap`] with options: with `allow_divergence`, a new instance whose
    /// calls diverge from the running one's is swapped in all the same (a deliberate change of
    /// behaviour), from a snapshot taken at that tick boundary, and the report says where it
    /// diverged.
    pub fn hot_swap_with(
        &self,
        factory: EngineFactory,
        options: SwapOptions,
    ) -> impl Future<Output = std::result::Result<SwapReport, SwapError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.control.send(Control::HotSwap(factory, options, tx)).is_ok();
        async move {
            if !sent {
                return Err(SwapError::NotRunning);
            }
            rx.await.map_err(|_| SwapError::NotRunning)?
        }
    }

    /// Stops the loop after its current tick and hands the engine back (for a swap or a final
    /// snapshot). Calls still in flight complete into nothing.
    pub async fn stop(self) -> Result<Box<dyn EngineDriver>> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| anyhow!("tenant {} task failed: {e}", self.name))?
    }
}

/// Starts the tick loop of a tenant whose engine is already created (or restored).
pub fn spawn_tenant(
    executor: &Executor,
    options: TenantOptions,
    driver: Box<dyn EngineDriver>,
    backends: Backends,
    observer: Option<mpsc::UnboundedSender<TenantEvent>>,
) -> TenantHandle {
    let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(TenantStatus::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let runner = CallRunner {
        tenant: options.name.clone(),
        backends,
        tenant_cap: Arc::new(Semaphore::new(options.max_calls_in_flight.max(1))),
        global: executor.global_semaphore(),
        done: done_tx,
    };
    let quarantine_capacity = options.recovery.as_ref().map(|r| r.quarantine_capacity).unwrap_or(0);
    let engine = GuardedEngine::new(options.name.clone(), driver, options.recovery);
    let tenant = TenantLoop {
        name: options.name.clone(),
        executor: executor.clone(),
        runner,
        inputs: inputs_rx,
        control: control_rx,
        completions: done_rx,
        stop: stop_rx,
        status: status_tx,
        observer,
        outstanding: 0,
        labels: HashMap::new(),
        quarantine_capacity,
        backoff: options.backoff,
        clean_ticks: 0,
        backoff_until: None,
    };
    let task = tokio::spawn(tenant.run(engine));
    TenantHandle { name: options.name, inputs: inputs_tx, control: control_tx, status: status_rx, stop: stop_tx, task }
}
