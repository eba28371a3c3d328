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
//! # Trap recovery
//!
//! A trap (or a sandbox limit, or a panic of a native engine) leaves the instance unusable
//! ([`EngineDriver::is_poisoned`]). A tenant started with a [`Recovery`] rebuilds it, the way a
//! hot swap does, instead of stopping:
//!
//! - It keeps a **checkpoint**: the engine's last good snapshot and the call id that came next,
//!   plus a **replay log** of every input applied since (each `deliver` and each `tick` with its
//!   completions and `now`). The engine is deterministic, so the snapshot plus the log reproduce
//!   the state exactly, call ids included (the tenant's [`CallIds`] is rewound to the snapshot's
//!   next id for the replay; every replayed tick must start the calls the log recorded, or the
//!   recovery fails). A snapshot costs far more than a tick (see [`SnapshotPolicy`]), so a new
//!   checkpoint is taken only when replaying the log would cost a multiple of a snapshot.
//! - When a guest call traps, the tenant builds a fresh instance with the factory of its
//!   [`Recovery`] (same component, same call-id counter), restores the checkpoint and replays the
//!   log: everything applied before the failing call. Then it applies that tick's inputs again,
//!   one at a time on the fresh instance: each event as a `deliver` of it alone followed by a tick
//!   with no completions, then each completion in a tick of its own. An input that traps again
//!   there is **quarantined** (dropped, kept in [`TenantStatus::quarantined`], logged at error
//!   level with the tenant and a summary), and the instance is rebuilt once more without it; the
//!   other inputs of the tick are applied normally, so the completions of calls other operations
//!   wait for are not lost because an event beside them was bad. A quarantined completion makes
//!   its call look lost to the engine; its per-operation timeout (5 minutes) recovers it. A trap
//!   that does not recur on the fresh instance (a CPU deadline under load) drops nothing.
//! - Calls in flight complete into the new instance: the replay re-creates them with their ids.
//! - Each recovery counts one restart ([`TenantStatus::restarts`]; the observatory turns it into
//!   `difftracker_host_engine_restarts_total`). A tenant whose engine traps again after
//!   [`Recovery::max_restarts`] restarts within [`Recovery::restart_window_ticks`] ticks stops
//!   with an error instead of looping; so does one whose fresh instance traps with no new input
//!   at all, or that has no good snapshot yet.
//!
//! Errors that do not poison the instance (the engine refusing a call, e.g. `tick` before
//! `create`) stop the tenant as before: a fresh instance would refuse it too.

use crate::driver::{CallIds, EngineDriver, TickResult, WasmEngine};
use crate::executor::{call_identity, Backends, CallRunner, Executor, DEFAULT_TENANT_CAP};
use crate::runtime::EngineComponent;
use anyhow::{anyhow, bail, Context, Result};
use difftracker_engine::io::{
    Call, CallError, CallId, CallOutput, Completion, EngineStatus, KubeEvent, KubeEventRecord,
};
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

/// Requests to a running tenant loop, handled between ticks.
enum Control {
    /// Move the engine's state into this fresh instance and continue with it; recover later
    /// instances with this factory when one is given (a new component).
    Swap(Box<dyn EngineDriver>, Option<EngineFactory>, oneshot::Sender<Result<()>>),
}

/// Builds a fresh, empty instance of a tenant's engine (the same component as the running one)
/// that allocates call ids from the counter it is given: the tenant's own, so ids stay unique
/// across restarts. The tenant restores a snapshot into it; the factory must not `create` it.
pub type EngineFactory = Arc<dyn Fn(CallIds) -> Result<Box<dyn EngineDriver>> + Send + Sync>;

/// When a recovering tenant takes the snapshot it would recover from.
///
/// A snapshot of the component costs far more than a tick (measured with the release build:
/// 25 KB in 0.3 ms with 10 Services, 230 KB in 1 ms with 100, 2.3 MB in 5.6 ms with 1000, against
/// 50-160 µs for a tick with its status), so the tenant snapshots only once the inputs logged
/// since the last snapshot took `cost_ratio` times as long to apply as that snapshot took, or once
/// the log holds `max_logged_inputs` inputs. Snapshots then cost about 1/`cost_ratio` of the
/// guest's time, and a recovery replays at most about `cost_ratio` snapshots' worth of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot when applying the logged inputs took this many times the last snapshot's time.
    pub cost_ratio: u32,
    /// Snapshot at the latest when the log holds this many inputs (each tick counts one, plus one
    /// per event and per completion).
    pub max_logged_inputs: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { cost_ratio: 20, max_logged_inputs: 4096 }
    }
}

impl SnapshotPolicy {
    /// A snapshot after every tick (no replay log to speak of).
    pub fn every_tick() -> Self {
        SnapshotPolicy { cost_ratio: 0, max_logged_inputs: 0 }
    }

    /// A snapshot whenever the log holds `inputs` inputs, whatever the timing (deterministic).
    pub fn every_inputs(inputs: usize) -> Self {
        SnapshotPolicy { cost_ratio: u32::MAX, max_logged_inputs: inputs }
    }
}

/// How a tenant recovers from a trap: see the module docs.
#[derive(Clone)]
pub struct Recovery {
    /// Builds the fresh instances.
    pub factory: EngineFactory,
    pub snapshots: SnapshotPolicy,
    /// Restarts allowed within `restart_window_ticks` ticks; a trap beyond them stops the tenant.
    pub max_restarts: u32,
    pub restart_window_ticks: u64,
    /// Quarantined inputs kept in the status, the most recent ones.
    pub quarantine_capacity: usize,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("snapshots", &self.snapshots)
            .field("max_restarts", &self.max_restarts)
            .field("restart_window_ticks", &self.restart_window_ticks)
            .field("quarantine_capacity", &self.quarantine_capacity)
            .finish_non_exhaustive()
    }
}

impl Recovery {
    /// Default limits: 3 restarts per 100 ticks, the last 32 quarantined inputs.
    pub fn new(factory: impl Fn(CallIds) -> Result<Box<dyn EngineDriver>> + Send + Sync + 'static) -> Recovery {
        Recovery {
            factory: Arc::new(factory),
            snapshots: SnapshotPolicy::default(),
            max_restarts: 3,
            restart_window_ticks: 100,
            quarantine_capacity: 32,
        }
    }

    /// Fresh [`WasmEngine`] instances of `component`.
    pub fn for_component(component: &EngineComponent) -> Recovery {
        let component = component.clone();
        Recovery::new(move |ids| Ok(Box::new(WasmEngine::new(&component, ids)?) as Box<dyn EngineDriver>))
    }

    pub fn with_snapshots(mut self, policy: SnapshotPolicy) -> Recovery {
        self.snapshots = policy;
        self
    }

    /// Passes every instance the factory builds through `wrap` (e.g. to instrument it).
    pub fn map_instances(
        mut self,
        wrap: impl Fn(Box<dyn EngineDriver>) -> Box<dyn EngineDriver> + Send + Sync + 'static,
    ) -> Recovery {
        let inner = self.factory;
        self.factory = Arc::new(move |ids| inner(ids).map(&wrap));
        self
    }
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
}

impl TenantOptions {
    pub fn new(name: impl Into<String>) -> Self {
        TenantOptions { name: name.into(), max_calls_in_flight: DEFAULT_TENANT_CAP, recovery: None }
    }

    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }
}

/// What happened in a tenant, in order (for observers such as the demo's printer).
#[derive(Clone, Debug, PartialEq)]
pub enum TenantEvent {
    CallStarted { id: CallId, call: Call },
    CallCompleted { id: CallId, outcome: Result<CallOutput, CallError> },
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

    pub fn status(&self) -> TenantStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<TenantStatus> {
        self.status.clone()
    }

    /// Waits until `done` holds for the tenant's status; fails if the loop stops first.
    pub async fn wait_for(&self, mut done: impl FnMut(&TenantStatus) -> bool) -> Result<TenantStatus> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| done(s) || s.stopped)
            .await
            .map_err(|_| anyhow!("tenant {} stopped", self.name))?
            .clone();
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
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Swap(fresh, factory, tx))
            .map_err(|_| anyhow!("tenant {} is not running", self.name))?;
        rx.await.map_err(|_| anyhow!("tenant {} stopped during the swap", self.name))?
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
    let keeper = Keeper::new(options.name.clone(), driver, options.recovery);
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
    };
    let task = tokio::spawn(tenant.run(keeper));
    TenantHandle { name: options.name, inputs: inputs_tx, control: control_tx, status: status_rx, stop: stop_tx, task }
}

struct TenantLoop {
    name: String,
    executor: Executor,
    runner: CallRunner,
    inputs: mpsc::UnboundedReceiver<Vec<KubeEvent>>,
    control: mpsc::UnboundedReceiver<Control>,
    completions: mpsc::UnboundedReceiver<Completion>,
    stop: watch::Receiver<bool>,
    status: watch::Sender<TenantStatus>,
    observer: Option<mpsc::UnboundedSender<TenantEvent>>,
    outstanding: usize,
    /// Labels of the calls in flight, to name a quarantined completion.
    labels: HashMap<CallId, &'static str>,
    quarantine_capacity: usize,
}

impl TenantLoop {
    async fn run(mut self, mut keeper: Keeper) -> Result<Box<dyn EngineDriver>> {
        let clock = self.executor.clock().clone();
        // Tick once at start: a restored engine may have calls due.
        let mut wake_now = true;
        let mut next_wake: Option<u64> = None;
        let mut events: Vec<KubeEvent> = Vec::new();
        let mut completions: Vec<Completion> = Vec::new();
        loop {
            if !wake_now {
                let sleep = next_wake.map(|at| clock.sleep_until(at));
                tokio::select! {
                    _ = self.stop.changed() => break,
                    Some(batch) = self.inputs.recv() => events.extend(batch),
                    Some(Control::Swap(fresh, factory, reply)) = self.control.recv() => {
                        let tick_no = self.status.borrow().ticks + 1;
                        let (returned, report, result) = swap_blocking(keeper, tick_no, fresh, factory, reply).await;
                        self.record_recovery(tick_no, clock.now_ms(), &report);
                        match (returned, result) {
                            (Some(returned), Ok(())) => keeper = returned,
                            (_, Err(e)) => return Err(self.fail(e)),
                            (None, Ok(())) => return Err(self.fail(anyhow!("tenant {}: the engine was lost in a swap", self.name))),
                        }
                        // Tick the new instance at once: it may have work due.
                    }
                    Some(completion) = self.completions.recv() => completions.push(completion),
                    _ = async { sleep.expect("guarded").await }, if sleep.is_some() => {}
                }
            }
            if *self.stop.borrow() {
                break;
            }
            wake_now = false;
            while let Ok(batch) = self.inputs.try_recv() {
                events.extend(batch);
            }
            while let Ok(completion) = self.completions.try_recv() {
                completions.push(completion);
            }
            self.outstanding = self.outstanding.saturating_sub(completions.len());
            for c in &completions {
                self.observe(TenantEvent::CallCompleted { id: c.id, outcome: c.outcome.clone() });
            }
            let completed: Vec<CallId> = completions.iter().map(|c| c.id).collect();

            let now = clock.now_ms();
            let tick_no = self.status.borrow().ticks + 1;
            let events = std::mem::take(&mut events);
            let completions = std::mem::take(&mut completions);
            let work = tokio::task::spawn_blocking(move || {
                let mut report = Iteration::default();
                let result = keeper.iterate(tick_no, now, events, completions, &mut report);
                (keeper, report, result)
            });
            let (returned, report, result) = match work.await {
                Ok(done) => done,
                // Guest calls run under `catch_unwind`; only the host's own code could get here.
                Err(e) => return Err(self.fail(anyhow!("tenant {}: the tick task failed: {e}", self.name))),
            };
            keeper = returned;
            self.record_recovery(tick_no, now, &report);
            for id in completed {
                self.labels.remove(&id);
            }
            if let Err(e) = result {
                return Err(self.fail(e));
            }
            next_wake = report.tick.outcome.next_wake_ms;
            self.after_tick(now, report.tick, report.status);
        }
        self.status.send_modify(|s| s.stopped = true);
        Ok(keeper.driver)
    }

    /// Marks the tenant stopped on `error`.
    fn fail(&self, error: anyhow::Error) -> anyhow::Error {
        tracing::error!(tenant = %self.name, error = %format!("{error:#}"), "engine failed; tenant stopped");
        self.status.send_modify(|s| {
            s.error = Some(format!("{error:#}"));
            s.stopped = true;
        });
        error
    }

    /// Publishes the restarts and quarantined inputs of one tick.
    fn record_recovery(&mut self, tick_no: u64, now: u64, report: &Iteration) {
        if report.restarts == 0 && report.quarantined.is_empty() {
            return;
        }
        let mut dropped = Vec::new();
        for d in &report.quarantined {
            let (kind, summary) = match &d.input {
                Input::Event(e) => (QuarantinedKind::Event, event_summary(e)),
                Input::Completion(c) => (QuarantinedKind::Completion(c.id), completion_summary(c, self.labels.get(&c.id).copied())),
            };
            tracing::error!(tenant = %self.name, input = %summary, reason = %d.reason, "input quarantined: the engine traps on it");
            dropped.push(Quarantined { tick: tick_no, at_ms: now, kind, summary, reason: brief_reason(&d.reason) });
        }
        let capacity = self.quarantine_capacity.max(1);
        self.status.send_modify(|s| {
            s.restarts += report.restarts;
            s.quarantined_total += dropped.len() as u64;
            s.quarantined.extend(dropped);
            let excess = s.quarantined.len().saturating_sub(capacity);
            s.quarantined.drain(..excess);
        });
    }

    fn after_tick(&mut self, now: u64, tick: TickResult, engine: EngineStatus) {
        for (id, call) in tick.started {
            tracing::info!(tenant = %self.name, call_id = id, label = call.label(), identity = %call_identity(&call), "call started");
            self.observe(TenantEvent::CallStarted { id, call: call.clone() });
            self.outstanding += 1;
            self.labels.insert(id, call.label());
            self.runner.spawn(id, call);
        }
        for event in tick.events {
            tracing::info!(tenant = %self.name, reason = %event.reason, object = %event.target.name, "event recorded");
            self.observe(TenantEvent::EventRecorded(event.clone()));
            self.runner.backends.kube.record_event(event);
        }
        let states_changed = self.status.borrow().engine.states != engine.states;
        if states_changed {
            tracing::info!(tenant = %self.name, states = ?engine.states, "operation states changed");
            self.observe(TenantEvent::StatesChanged(engine.states.clone()));
        }
        let outstanding = self.outstanding;
        self.status.send_modify(|s| {
            s.ticks += 1;
            s.last_tick_ms = now;
            s.next_wake_ms = tick.outcome.next_wake_ms;
            s.calls_outstanding = outstanding;
            s.engine = engine;
        });
    }

    fn observe(&self, event: TenantEvent) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(event);
        }
    }
}

/// Restores the running engine's snapshot into `fresh` on the blocking pool; keeps the old engine
/// if anything fails (a recovering tenant rebuilds it if taking its snapshot trapped).
async fn swap_blocking(
    mut keeper: Keeper,
    tick_no: u64,
    fresh: Box<dyn EngineDriver>,
    factory: Option<EngineFactory>,
    reply: oneshot::Sender<Result<()>>,
) -> (Option<Keeper>, Iteration, Result<()>) {
    let work = tokio::task::spawn_blocking(move || {
        let mut report = Iteration::default();
        let result = keeper.swap(tick_no, fresh, factory, &mut report);
        (keeper, report, result)
    });
    match work.await {
        Ok((keeper, report, Ok(swapped))) => {
            if let Err(e) = &swapped {
                tracing::warn!(tenant = %keeper.name, error = %format!("{e:#}"), "engine swap failed; the old instance keeps running");
            }
            let _ = reply.send(swapped);
            (Some(keeper), report, Ok(()))
        }
        Ok((keeper, report, Err(fatal))) => {
            let _ = reply.send(Err(anyhow!("the swap failed and the old instance could not be recovered: {fatal:#}")));
            (Some(keeper), report, Err(fatal))
        }
        Err(e) => {
            let _ = reply.send(Err(anyhow!("the swap task failed: {e}")));
            (None, Iteration::default(), Err(anyhow!("the swap task failed: {e}")))
        }
    }
}

// ------------------------------------------------------------------------ recovery

/// Quarantined inputs rebuilt around in one recovery before the tenant gives up.
const MAX_QUARANTINED_PER_RECOVERY: usize = 16;

/// What one tick of the loop produced.
#[derive(Default)]
struct Iteration {
    /// Every call started and Event recorded; the outcome of the last engine tick.
    tick: TickResult,
    status: EngineStatus,
    restarts: u64,
    quarantined: Vec<Dropped>,
}

impl Iteration {
    fn merge(&mut self, tick: TickResult) {
        self.tick.started.extend(tick.started);
        self.tick.events.extend(tick.events);
        self.tick.outcome = tick.outcome;
    }
}

enum Input {
    Event(Box<KubeEvent>),
    Completion(Completion),
}

struct Dropped {
    input: Input,
    reason: String,
}

/// A failed guest call, by what it means for the instance.
enum Failure {
    /// The instance is unusable (a trap, a sandbox limit, a panic): rebuild it.
    Poisoned(String),
    /// The engine refused the call; the instance is intact (a fresh one would refuse it too).
    Refused(anyhow::Error),
}

impl Failure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Poisoned(reason) => anyhow!(reason),
            Failure::Refused(e) => e,
        }
    }
}

/// Runs one call into the engine; a panic (of a native engine) poisons it like a trap.
fn guarded<R>(
    driver: &mut Box<dyn EngineDriver>,
    f: impl FnOnce(&mut dyn EngineDriver) -> Result<R>,
) -> std::result::Result<R, Failure> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(driver.as_mut()))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if driver.is_poisoned() => Err(Failure::Poisoned(format!("{e:#}"))),
        Ok(Err(e)) => Err(Failure::Refused(e)),
        Err(panic) => Err(Failure::Poisoned(format!("engine panicked: {}", panic_message(panic.as_ref())))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// One applied input, as the replay needs it.
enum Entry {
    Deliver { now_ms: u64, events: Vec<KubeEvent> },
    Tick {
        now_ms: u64,
        completions: Vec<Completion>,
        /// The calls it started, to check the replay against.
        started: Vec<(CallId, &'static str)>,
        /// The counter after it.
        next_call_id: CallId,
    },
}

impl Entry {
    fn inputs(&self) -> usize {
        1 + match self {
            Entry::Deliver { events, .. } => events.len(),
            Entry::Tick { completions, .. } => completions.len(),
        }
    }
}

/// The last good snapshot.
struct Checkpoint {
    snapshot: Vec<u8>,
    /// The call id the engine's next call would get when the snapshot was taken.
    next_call_id: CallId,
}

/// A position in the replay log.
#[derive(Clone, Copy)]
struct Mark {
    len: usize,
    inputs: usize,
    guest_time: Duration,
}

/// What a recovering tenant keeps.
struct Recoverer {
    options: Recovery,
    checkpoint: Option<Checkpoint>,
    /// Inputs applied since the checkpoint.
    log: Vec<Entry>,
    log_inputs: usize,
    /// Time the logged inputs took to apply (about what replaying them costs).
    guest_time: Duration,
    /// Time the last snapshot took.
    snapshot_cost: Duration,
    /// Ticks (tenant tick numbers) of the recent restarts.
    restarts: VecDeque<u64>,
}

impl Recoverer {
    fn record(&mut self, entry: Entry, took: Duration) {
        if self.checkpoint.is_none() {
            return;
        }
        self.log_inputs += entry.inputs();
        self.guest_time += took;
        self.log.push(entry);
    }

    fn mark(&self) -> Mark {
        Mark { len: self.log.len(), inputs: self.log_inputs, guest_time: self.guest_time }
    }

    /// Drops the entries after `mark`; returns the events they delivered.
    fn truncate(&mut self, mark: Mark) -> Vec<KubeEvent> {
        let mut events = Vec::new();
        for entry in self.log.drain(mark.len.min(self.log.len())..) {
            if let Entry::Deliver { events: delivered, .. } = entry {
                events.extend(delivered);
            }
        }
        self.log_inputs = mark.inputs;
        self.guest_time = mark.guest_time;
        events
    }

    fn snapshot_due(&self) -> bool {
        if self.checkpoint.is_none() {
            return true;
        }
        !self.log.is_empty()
            && (self.log_inputs >= self.options.snapshots.max_logged_inputs
                || self.guest_time >= self.snapshot_cost.saturating_mul(self.options.snapshots.cost_ratio))
    }
}

/// The tenant's engine and, when it recovers from traps, what it takes to rebuild it. Moves to
/// the blocking pool for every tick and back.
struct Keeper {
    name: String,
    driver: Box<dyn EngineDriver>,
    recovery: Option<Recoverer>,
}

impl Keeper {
    fn new(name: String, driver: Box<dyn EngineDriver>, recovery: Option<Recovery>) -> Keeper {
        let recovery = recovery.map(|options| Recoverer {
            options,
            checkpoint: None,
            log: Vec::new(),
            log_inputs: 0,
            guest_time: Duration::ZERO,
            snapshot_cost: Duration::ZERO,
            restarts: VecDeque::new(),
        });
        Keeper { name, driver, recovery }
    }

    /// One tick of the loop: deliver the events, tick with the completions, read the status,
    /// checkpoint when due. Recovers from traps when it can; an error stops the tenant.
    fn iterate(
        &mut self,
        tick_no: u64,
        now: u64,
        events: Vec<KubeEvent>,
        completions: Vec<Completion>,
        out: &mut Iteration,
    ) -> Result<()> {
        if self.recovery.as_ref().is_some_and(|r| r.checkpoint.is_none()) {
            self.checkpoint(tick_no, out)?;
        }
        let mark = self.mark();
        let delivered = if events.is_empty() { Ok(()) } else { self.deliver(now, events) };
        let trapped = match delivered {
            Err((failure, events)) => Some((self.poison(failure)?, events, completions)),
            Ok(()) => match self.tick(now, completions) {
                Ok(tick) => {
                    out.merge(tick);
                    None
                }
                Err((failure, completions)) => {
                    let reason = self.poison(failure)?;
                    // The events were delivered to the instance that trapped: apply them again.
                    let events = self.truncate(mark);
                    Some((reason, events, completions))
                }
            },
        };
        if let Some((reason, events, completions)) = trapped {
            self.restart(tick_no, &reason, out)?;
            self.apply_one_by_one(now, events, completions, out)?;
        }
        out.status = match guarded(&mut self.driver, |d| d.status()) {
            Ok(status) => status,
            Err(failure) => {
                let reason = self.poison(failure)?;
                self.restart(tick_no, &reason, out)?;
                guarded(&mut self.driver, |d| d.status()).map_err(|f| {
                    f.into_error().context("the engine traps reading its status on a fresh instance too")
                })?
            }
        };
        if self.recovery.as_ref().is_some_and(Recoverer::snapshot_due) {
            self.checkpoint(tick_no, out)?;
        }
        Ok(())
    }

    fn mark(&self) -> Option<Mark> {
        self.recovery.as_ref().map(Recoverer::mark)
    }

    fn truncate(&mut self, mark: Option<Mark>) -> Vec<KubeEvent> {
        match (&mut self.recovery, mark) {
            (Some(recovery), Some(mark)) => recovery.truncate(mark),
            _ => Vec::new(),
        }
    }

    /// The reason to rebuild the instance, or the error that stops the tenant.
    fn poison(&self, failure: Failure) -> Result<String> {
        match failure {
            Failure::Poisoned(reason) if self.recovery.is_some() => Ok(reason),
            other => Err(other.into_error()),
        }
    }

    /// `deliver`, logged; on failure the events come back (when recovering).
    fn deliver(&mut self, now: u64, events: Vec<KubeEvent>) -> std::result::Result<(), (Failure, Vec<KubeEvent>)> {
        let Some(recovery) = &mut self.recovery else {
            return guarded(&mut self.driver, |d| d.deliver(now, events)).map_err(|f| (f, Vec::new()));
        };
        let began = Instant::now();
        match guarded(&mut self.driver, |d| d.deliver(now, events.clone())) {
            Ok(()) => {
                recovery.record(Entry::Deliver { now_ms: now, events }, began.elapsed());
                Ok(())
            }
            Err(failure) => Err((failure, events)),
        }
    }

    /// `tick`, logged; on failure the completions come back (when recovering).
    fn tick(&mut self, now: u64, completions: Vec<Completion>) -> std::result::Result<TickResult, (Failure, Vec<Completion>)> {
        let Some(recovery) = &mut self.recovery else {
            return guarded(&mut self.driver, |d| d.tick(now, completions)).map_err(|f| (f, Vec::new()));
        };
        let began = Instant::now();
        match guarded(&mut self.driver, |d| d.tick(now, completions.clone())) {
            Ok(tick) => {
                let started = tick.started.iter().map(|(id, call)| (*id, call.label())).collect();
                let next_call_id = self.driver.call_ids().peek();
                recovery.record(Entry::Tick { now_ms: now, completions, started, next_call_id }, began.elapsed());
                Ok(tick)
            }
            Err(failure) => Err((failure, completions)),
        }
    }

    /// Takes a new checkpoint. A snapshot that traps costs a restart (the log still has every
    /// input since the previous checkpoint); one the engine refuses leaves the old checkpoint.
    fn checkpoint(&mut self, tick_no: u64, out: &mut Iteration) -> Result<()> {
        let Some(recovery) = &mut self.recovery else { return Ok(()) };
        let began = Instant::now();
        match guarded(&mut self.driver, |d| d.snapshot()) {
            Ok(snapshot) => {
                recovery.snapshot_cost = began.elapsed();
                recovery.checkpoint = Some(Checkpoint { snapshot, next_call_id: self.driver.call_ids().peek() });
                recovery.log.clear();
                recovery.log_inputs = 0;
                recovery.guest_time = Duration::ZERO;
                Ok(())
            }
            Err(Failure::Refused(e)) => {
                if recovery.checkpoint.is_some() {
                    tracing::warn!(tenant = %self.name, error = %format!("{e:#}"), "engine snapshot refused; keeping the previous one");
                }
                Ok(())
            }
            Err(Failure::Poisoned(reason)) => self.restart(tick_no, &format!("taking a snapshot: {reason}"), out),
        }
    }

    /// Counts a restart, unless there were too many lately, and rebuilds the instance.
    fn restart(&mut self, tick_no: u64, reason: &str, out: &mut Iteration) -> Result<()> {
        let Some(recovery) = &mut self.recovery else { bail!("{reason}") };
        let window = recovery.options.restart_window_ticks;
        while recovery.restarts.front().is_some_and(|&t| t.saturating_add(window) <= tick_no) {
            recovery.restarts.pop_front();
        }
        if recovery.restarts.len() >= recovery.options.max_restarts as usize {
            bail!(
                "the engine trapped again after {} restart(s) within {window} ticks; the tenant is stopped instead of \
                 restarting it in a loop. Last trap: {reason}",
                recovery.restarts.len()
            );
        }
        if recovery.checkpoint.is_none() {
            bail!("{reason}; no good snapshot of the engine to recover from");
        }
        recovery.restarts.push_back(tick_no);
        out.restarts += 1;
        tracing::error!(tenant = %self.name, error = %reason, "engine instance unusable; restarting it from its last good snapshot");
        self.rebuild()
    }

    /// Replaces the instance with a fresh one holding the checkpoint plus the logged inputs.
    fn rebuild(&mut self) -> Result<()> {
        let Some(recovery) = &self.recovery else { bail!("no recovery configured") };
        let Some(checkpoint) = &recovery.checkpoint else { bail!("no good snapshot of the engine to recover from") };
        let ids = self.driver.call_ids().clone();
        let high = ids.peek();
        let mut last = None;
        // Once more if it fails: a replayed input that passed before can only trap again by
        // chance (a CPU deadline under load).
        for _ in 0..2 {
            match replay(&recovery.options.factory, &ids, checkpoint, &recovery.log) {
                Ok(fresh) => {
                    self.driver = fresh;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(tenant = %self.name, error = %format!("{e:#}"), "rebuilding the engine failed");
                    last = Some(e);
                }
            }
        }
        ids.set_next(ids.peek().max(high));
        Err(last.unwrap_or_else(|| anyhow!("rebuild failed")).context("rebuilding the engine from its last good snapshot"))
    }

    /// After a restart: applies the inputs of the tick that trapped one by one, quarantining each
    /// that traps again (and rebuilding without it). Each event goes with a tick of its own so
    /// that a trap while the engine acts on it is pinned on it, not on a completion.
    fn apply_one_by_one(&mut self, now: u64, events: Vec<KubeEvent>, completions: Vec<Completion>, out: &mut Iteration) -> Result<()> {
        let mut ticked = false;
        let mut dropped = 0usize;
        for event in events {
            let mark = self.mark();
            let failed = match self.deliver(now, vec![event]) {
                Err((failure, mut back)) => Some((failure, back.pop())),
                Ok(()) => match self.tick(now, Vec::new()) {
                    Ok(tick) => {
                        out.merge(tick);
                        ticked = true;
                        None
                    }
                    Err((failure, _)) => Some((failure, self.truncate(mark).pop())),
                },
            };
            if let Some((failure, event)) = failed {
                let reason = self.poison(failure)?;
                if let Some(event) = event {
                    out.quarantined.push(Dropped { input: Input::Event(Box::new(event)), reason });
                }
                dropped += 1;
                self.rebuild_after_quarantine(dropped)?;
            }
        }
        for completion in completions {
            match self.tick(now, vec![completion]) {
                Ok(tick) => {
                    out.merge(tick);
                    ticked = true;
                }
                Err((failure, mut back)) => {
                    let reason = self.poison(failure)?;
                    if let Some(completion) = back.pop() {
                        out.quarantined.push(Dropped { input: Input::Completion(completion), reason });
                    }
                    dropped += 1;
                    self.rebuild_after_quarantine(dropped)?;
                }
            }
        }
        if !ticked {
            let tick = self.tick(now, Vec::new()).map_err(|(failure, _)| {
                failure.into_error().context(
                    "the engine traps on a fresh instance restored from its last good snapshot with no new input",
                )
            })?;
            out.merge(tick);
        }
        Ok(())
    }

    fn rebuild_after_quarantine(&mut self, dropped: usize) -> Result<()> {
        if dropped > MAX_QUARANTINED_PER_RECOVERY {
            bail!("the engine trapped on more than {MAX_QUARANTINED_PER_RECOVERY} inputs of one tick; the tenant is stopped");
        }
        self.rebuild()
    }

    /// Hot swap: the running instance's snapshot restored into `fresh`, which becomes the running
    /// instance (and that snapshot the checkpoint). `Ok(Err(_))`: the swap failed and the old
    /// instance keeps running; `Err(_)`: nothing is left to run.
    fn swap(
        &mut self,
        tick_no: u64,
        mut fresh: Box<dyn EngineDriver>,
        factory: Option<EngineFactory>,
        out: &mut Iteration,
    ) -> Result<Result<()>> {
        let snapshot = match guarded(&mut self.driver, |d| d.snapshot()) {
            Ok(snapshot) => snapshot,
            Err(Failure::Refused(e)) => return Ok(Err(e.context("taking the running engine's snapshot"))),
            Err(Failure::Poisoned(reason)) => {
                let error = anyhow!("taking the running engine's snapshot: {reason}");
                if self.recovery.is_some() {
                    self.restart(tick_no, &format!("{error:#}"), out)?;
                }
                return Ok(Err(error));
            }
        };
        if let Err(failure) = guarded(&mut fresh, |d| d.restore(&snapshot)) {
            return Ok(Err(failure.into_error().context("restoring the snapshot into the new instance")));
        }
        let next_call_id = fresh.call_ids().peek();
        self.driver = fresh;
        if let Some(recovery) = &mut self.recovery {
            if let Some(factory) = factory {
                recovery.options.factory = factory;
            }
            // The log belonged to the old instance's checkpoint: start over from this snapshot.
            recovery.checkpoint = Some(Checkpoint { snapshot, next_call_id });
            recovery.log.clear();
            recovery.log_inputs = 0;
            recovery.guest_time = Duration::ZERO;
        }
        Ok(Ok(()))
    }
}

/// A fresh instance: the checkpoint restored, the log replayed, the call ids checked.
fn replay(factory: &EngineFactory, ids: &CallIds, checkpoint: &Checkpoint, log: &[Entry]) -> Result<Box<dyn EngineDriver>> {
    ids.set_next(checkpoint.next_call_id);
    let mut fresh = match std::panic::catch_unwind(AssertUnwindSafe(|| factory(ids.clone()))) {
        Ok(built) => built.context("building a fresh engine instance")?,
        Err(panic) => bail!("the engine factory panicked: {}", panic_message(panic.as_ref())),
    };
    guarded(&mut fresh, |d| d.restore(&checkpoint.snapshot))
        .map_err(|f| f.into_error().context("restoring the last good snapshot"))?;
    for (i, entry) in log.iter().enumerate() {
        match entry {
            Entry::Deliver { now_ms, events } => guarded(&mut fresh, |d| d.deliver(*now_ms, events.clone()))
                .map_err(|f| f.into_error().context(format!("replaying input {i} (a deliver)")))?,
            Entry::Tick { now_ms, completions, started, next_call_id } => {
                let tick = guarded(&mut fresh, |d| d.tick(*now_ms, completions.clone()))
                    .map_err(|f| f.into_error().context(format!("replaying input {i} (a tick)")))?;
                let replayed: Vec<(CallId, &'static str)> = tick.started.iter().map(|(id, call)| (*id, call.label())).collect();
                if replayed != *started || ids.peek() != *next_call_id {
                    bail!(
                        "replaying input {i} (a tick) diverged: it started {replayed:?} (next id {}), the log has {started:?} \
                         (next id {next_call_id}); the engine is not deterministic or the factory does not use the tenant's call ids",
                        ids.peek()
                    );
                }
            }
        }
    }
    Ok(fresh)
}

// ------------------------------------------------------------------------ summaries

/// A failure on one line: its first line and its causes, without wasmtime's wasm backtrace.
/// `guest failed in `deliver`: error while executing at wasm backtrace (forcing trap when
/// growing memory to 17956864 bytes)`.
pub fn brief_reason(reason: &str) -> String {
    let mut lines = reason.lines();
    let first = lines.next().unwrap_or_default().trim_end().trim_end_matches(':').to_string();
    let causes: Vec<&str> = lines
        .skip_while(|l| l.trim() != "Caused by:")
        .skip(1)
        .map(|l| {
            let l = l.trim();
            // anyhow numbers the causes when there are several: `0: ...`.
            match l.split_once(": ") {
                Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => rest,
                _ => l,
            }
        })
        .filter(|l| !l.is_empty())
        .collect();
    let line = if causes.is_empty() { first } else { format!("{first} ({})", causes.join("; ")) };
    short(&line, 300)
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

fn encoded_size(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// `ServiceApplied default/web (1234 bytes)`.
pub fn event_summary(event: &KubeEvent) -> String {
    let (kind, namespace, name) = match event {
        KubeEvent::ServiceApplied(s) => ("ServiceApplied", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::ServiceDeleted(s) => ("ServiceDeleted", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::EndpointSliceApplied(s) => ("EndpointSliceApplied", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::EndpointSliceDeleted(s) => ("EndpointSliceDeleted", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::NodeApplied(n) => ("NodeApplied", "", n.name.as_str()),
        KubeEvent::NodeDeleted(n) => ("NodeDeleted", "", n.name.as_str()),
        KubeEvent::PodApplied(p) => ("PodApplied", p.meta.namespace.as_str(), p.meta.name.as_str()),
        KubeEvent::PodDeleted(p) => ("PodDeleted", p.meta.namespace.as_str(), p.meta.name.as_str()),
    };
    let object = if namespace.is_empty() { short(name, 64) } else { format!("{}/{}", short(namespace, 64), short(name, 64)) };
    format!("{kind} {object} ({} bytes)", encoded_size(event))
}

/// `completion of call #12 (PUT publicIPAddresses): error 500 InternalServerError (345 bytes)`.
pub fn completion_summary(completion: &Completion, label: Option<&str>) -> String {
    let outcome = match &completion.outcome {
        Ok(CallOutput::Done) => "ok".to_string(),
        Ok(CallOutput::PublicIp(ip)) => format!("ok, public IP {}", short(&ip.name, 64)),
        Ok(CallOutput::NatGateway(_)) => "ok, NAT gateway".to_string(),
        Ok(CallOutput::PublicIps(v)) => format!("ok, {} public IP(s)", v.len()),
        Ok(CallOutput::Names(v)) => format!("ok, {} name(s)", v.len()),
        Ok(CallOutput::SgwServices(v)) => format!("ok, {} ServiceGateway service(s)", v.len()),
        Ok(CallOutput::AddressLocations(v)) => format!("ok, {} address location(s)", v.len()),
        Err(e) => format!("error {} {}", e.status, short(&e.code, 64)),
    };
    format!(
        "completion of call #{} ({}): {outcome} ({} bytes)",
        completion.id,
        label.unwrap_or("unknown call"),
        encoded_size(completion)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{sample_node, sample_service};
    use crate::driver::NativeEngine;
    use difftracker_engine::io::TenantConfig;

    /// The native engine, panicking on a Service named `poison` and on the completion of call
    /// `bad_call`, as a guest would trap.
    struct Poisonable {
        inner: NativeEngine,
        bad_call: Option<CallId>,
    }

    impl EngineDriver for Poisonable {
        fn kind(&self) -> &'static str {
            "native"
        }
        fn create(&mut self, config: &TenantConfig) -> Result<()> {
            self.inner.create(config)
        }
        fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
            if events.iter().any(|e| matches!(e, KubeEvent::ServiceApplied(s) if s.meta.name == "poison")) {
                panic!("poisoned event");
            }
            self.inner.deliver(now_ms, events)
        }
        fn tick(&mut self, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
            if completions.iter().any(|c| Some(c.id) == self.bad_call) {
                panic!("poisoned completion");
            }
            self.inner.tick(now_ms, completions)
        }
        fn snapshot(&mut self) -> Result<Vec<u8>> {
            self.inner.snapshot()
        }
        fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
            self.inner.restore(snapshot)
        }
        fn status(&mut self) -> Result<EngineStatus> {
            self.inner.status()
        }
        fn call_ids(&self) -> &CallIds {
            self.inner.call_ids()
        }
    }

    fn keeper(bad_call: Option<CallId>, snapshots: SnapshotPolicy) -> Keeper {
        let mut first = Poisonable { inner: NativeEngine::new(CallIds::default()), bad_call };
        first.create(&TenantConfig { tenant: "t".into(), seed: 3 }).unwrap();
        let recovery = Recovery::new(move |ids| Ok(Box::new(Poisonable { inner: NativeEngine::new(ids), bad_call }) as Box<dyn EngineDriver>))
            .with_snapshots(snapshots);
        Keeper::new("t".into(), Box::new(first), Some(recovery))
    }

    fn failed(id: CallId) -> Completion {
        Completion { id, outcome: Err(CallError::http(500, "InternalServerError", "try again")) }
    }

    fn service(name: &str, n: u32) -> KubeEvent {
        KubeEvent::ServiceApplied(sample_service("default", name, &format!("aaaa0000-0000-4000-8000-{n:012}")))
    }

    #[test]
    fn a_panicking_event_is_quarantined_and_the_rest_of_the_tick_applied() {
        for snapshots in [SnapshotPolicy::every_tick(), SnapshotPolicy::every_inputs(usize::MAX)] {
            let mut k = keeper(None, snapshots);
            let mut first = Iteration::default();
            k.iterate(1, 1_000, vec![KubeEvent::NodeApplied(sample_node("n1", "10.0.0.4")), service("a", 1)], vec![], &mut first).unwrap();
            assert_eq!(first.restarts, 0);
            let first_ids: Vec<CallId> = first.tick.started.iter().map(|(id, _)| *id).collect();
            assert!(!first_ids.is_empty());

            // The poisoned Service between two good ones, and a failed completion of a's first call.
            let mut second = Iteration::default();
            let events = vec![service("b", 2), service("poison", 3), service("c", 4)];
            k.iterate(2, 2_000, events, vec![failed(first_ids[0])], &mut second).unwrap();
            assert_eq!(second.restarts, 1);
            assert_eq!(second.quarantined.len(), 1);
            assert!(matches!(&second.quarantined[0].input, Input::Event(e) if event_summary(e).contains("default/poison")));
            assert!(second.quarantined[0].reason.contains("poisoned event"), "{}", second.quarantined[0].reason);
            // a, b and c are tracked; call ids went on from where they were, none reused.
            let tracked: u32 = second.status.states.iter().map(|(_, n)| n).sum();
            assert_eq!(tracked, 3, "{:?}", second.status.states);
            let max_first = *first_ids.iter().max().unwrap();
            assert!(second.tick.started.iter().all(|(id, _)| *id > max_first), "{:?}", second.tick.started);
            assert!(!k.driver.is_poisoned());
        }
    }

    #[test]
    fn a_panicking_completion_is_retried_once_then_quarantined() {
        // Call 1 is the first call the engine starts.
        let mut k = keeper(Some(1), SnapshotPolicy::every_inputs(usize::MAX));
        let mut first = Iteration::default();
        k.iterate(1, 1_000, vec![KubeEvent::NodeApplied(sample_node("n1", "10.0.0.4")), service("a", 1)], vec![], &mut first).unwrap();
        assert_eq!(first.tick.started[0].0, 1);
        let others: Vec<Completion> = first.tick.started[1..].iter().map(|(id, _)| failed(*id)).collect();
        let mut completions = vec![failed(1)];
        completions.extend(others.clone());

        let mut second = Iteration::default();
        k.iterate(2, 2_000, vec![service("b", 2)], completions, &mut second).unwrap();
        assert_eq!(second.restarts, 1);
        let dropped: Vec<CallId> = second
            .quarantined
            .iter()
            .map(|d| match &d.input {
                Input::Completion(c) => c.id,
                Input::Event(_) => panic!("an event was quarantined"),
            })
            .collect();
        assert_eq!(dropped, vec![1], "only the poisoned completion is dropped");
        let tracked: u32 = second.status.states.iter().map(|(_, n)| n).sum();
        assert_eq!(tracked, 2, "b was applied: {:?}", second.status.states);
    }

    #[test]
    fn a_tick_that_panics_with_no_input_on_a_fresh_instance_stops_the_tenant() {
        struct AlwaysPanics(NativeEngine);
        impl EngineDriver for AlwaysPanics {
            fn kind(&self) -> &'static str {
                "native"
            }
            fn create(&mut self, config: &TenantConfig) -> Result<()> {
                self.0.create(config)
            }
            fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
                self.0.deliver(now_ms, events)
            }
            fn tick(&mut self, _: u64, _: Vec<Completion>) -> Result<TickResult> {
                panic!("always")
            }
            fn snapshot(&mut self) -> Result<Vec<u8>> {
                self.0.snapshot()
            }
            fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
                self.0.restore(snapshot)
            }
            fn status(&mut self) -> Result<EngineStatus> {
                self.0.status()
            }
            fn call_ids(&self) -> &CallIds {
                self.0.call_ids()
            }
        }
        let mut first = AlwaysPanics(NativeEngine::new(CallIds::default()));
        first.create(&TenantConfig { tenant: "t".into(), seed: 3 }).unwrap();
        let recovery = Recovery::new(|ids| Ok(Box::new(AlwaysPanics(NativeEngine::new(ids))) as Box<dyn EngineDriver>));
        let mut k = Keeper::new("t".into(), Box::new(first), Some(recovery));
        let mut out = Iteration::default();
        let err = k.iterate(1, 1_000, vec![], vec![], &mut out).unwrap_err();
        assert!(format!("{err:#}").contains("with no new input"), "{err:#}");
        assert_eq!(out.restarts, 1);
    }

    #[test]
    fn snapshots_follow_the_policy() {
        let mut k = keeper(None, SnapshotPolicy::every_inputs(3));
        let mut out = Iteration::default();
        k.iterate(1, 1_000, vec![KubeEvent::NodeApplied(sample_node("n1", "10.0.0.4"))], vec![], &mut out).unwrap();
        // deliver (2 inputs) + tick (1): due, taken, log empty.
        assert!(k.recovery.as_ref().unwrap().log.is_empty());
        k.iterate(2, 2_000, vec![], vec![], &mut out).unwrap();
        assert_eq!(k.recovery.as_ref().unwrap().log.len(), 1);
        k.iterate(3, 3_000, vec![], vec![], &mut out).unwrap();
        assert_eq!(k.recovery.as_ref().unwrap().log.len(), 2);
        k.iterate(4, 4_000, vec![], vec![], &mut out).unwrap();
        assert!(k.recovery.as_ref().unwrap().log.is_empty());
    }

    #[test]
    fn reasons_are_one_line_without_the_wasm_backtrace() {
        let reason = "guest failed in `deliver`: error while executing at wasm backtrace:\n    0: 0x121810 - e.wasm!sbrk\n    1: 0x1222ee - e.wasm!dlmalloc\n\nCaused by:\n    forcing trap when growing memory to 17956864 bytes\n";
        assert_eq!(
            brief_reason(reason),
            "guest failed in `deliver`: error while executing at wasm backtrace (forcing trap when growing memory to 17956864 bytes)"
        );
        assert_eq!(brief_reason("engine panicked: boom"), "engine panicked: boom");
    }
}
