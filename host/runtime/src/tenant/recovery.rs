//! Trap recovery.
//!
//! A trap (or a sandbox limit, or a panic of a native engine) leaves the instance unusable
//! ([`EngineDriver::is_poisoned`]). A tenant started with a [`Recovery`] rebuilds it, the way a
//! hot swap does, instead of stopping:
//!
//! - It keeps a **checkpoint**: the engine's last good snapshot and the call id that came next,
//!   plus a **replay log** of every input applied since (each `deliver` and each `tick` with its
//!   completions and `now`). The engine is deterministic, so the snapshot plus the log reproduce
//!   the state exactly, call ids included (when the host numbers the calls, the tenant's
//!   [`CallIds`] is rewound to the snapshot's next id for the replay; a WIT 0.3.0 engine, which
//!   numbers its own, has its counter back from the snapshot; either way every replayed tick must
//!   start the calls the log recorded, ids included, or the recovery fails). A snapshot costs far more than a tick (see [`SnapshotPolicy`]), so a new
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

use super::summary::{brief_reason, completion_summary, event_summary, quarantine_warning, short};
use super::{Quarantined, QuarantinedKind};
use crate::driver::{CallIds, EngineDriver, TickResult, WasmEngine};
use crate::wasm::EngineComponent;
use anyhow::{anyhow, bail, Context, Result};
use difftracker_engine::io::{CallId, Completion, EngineStatus, KubeEvent, KubeEventRecord, OperationStatus};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
///
/// The log's cap grows with the state: `max_logged_inputs`, or `logged_inputs_per_snapshot_kib`
/// per KiB of the last snapshot when that is more. A fixed cap would snapshot a big tenant every
/// few thousand inputs however long each snapshot takes, which makes the snapshots' share of the
/// time grow with the tenant (at 10,000 Services they took half the replay's time); scaled, the
/// log stays within a small multiple of the state's own size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot when applying the logged inputs took this many times the last snapshot's time.
    pub cost_ratio: u32,
    /// Snapshot at the latest when the log holds this many inputs (each tick counts one, plus one
    /// per event and per completion)...
    pub max_logged_inputs: usize,
    /// ...or this many per KiB of the last snapshot, when that is more.
    pub logged_inputs_per_snapshot_kib: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { cost_ratio: 20, max_logged_inputs: 4096, logged_inputs_per_snapshot_kib: 16 }
    }
}

impl SnapshotPolicy {
    /// A snapshot after every tick (no replay log to speak of).
    pub fn every_tick() -> Self {
        SnapshotPolicy { cost_ratio: 0, max_logged_inputs: 0, logged_inputs_per_snapshot_kib: 0 }
    }

    /// A snapshot whenever the log holds `inputs` inputs, whatever the timing (deterministic).
    pub fn every_inputs(inputs: usize) -> Self {
        SnapshotPolicy { cost_ratio: u32::MAX, max_logged_inputs: inputs, logged_inputs_per_snapshot_kib: 0 }
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
        Recovery::of_factory(Arc::new(factory))
    }

    /// [`Recovery::new`] of a factory already shared.
    pub fn of_factory(factory: EngineFactory) -> Recovery {
        Recovery { factory, snapshots: SnapshotPolicy::default(), max_restarts: 3, restart_window_ticks: 100, quarantine_capacity: 32 }
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
    pub fn map_instances(mut self, wrap: impl Fn(Box<dyn EngineDriver>) -> Box<dyn EngineDriver> + Send + Sync + 'static) -> Recovery {
        let inner = self.factory;
        self.factory = Arc::new(move |ids| inner(ids).map(&wrap));
        self
    }
}

/// Quarantined inputs rebuilt around in one recovery before the tenant gives up.
const MAX_QUARANTINED_PER_RECOVERY: usize = 16;

/// Whether a tick reads the engine's status after it. The status carries every engine metric
/// sample, formatted in the guest and lifted across the component boundary: read after every tick
/// it was a third of a wasm replay's time, so a loop that does not look at it each tick skips it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusRead {
    AfterTick,
    Skip,
}

/// What one tick of the loop produced.
#[derive(Default)]
pub(super) struct TickReport {
    /// Every call started and Event recorded; the outcome of the last engine tick.
    pub(super) tick: TickResult,
    /// The engine's status after the tick, when it was asked for ([`StatusRead`]).
    pub(super) status: Option<EngineStatus>,
    pub(super) restarts: u64,
    pub(super) quarantined: Vec<QuarantinedInput>,
    /// Guest calls that trapped or hit a sandbox limit, recovered from or not.
    pub(super) traps: u64,
    /// The last of them, on one line.
    pub(super) last_trap: Option<String>,
    /// The size of the checkpoint taken in this tick, if one was.
    pub(super) checkpoint_bytes: Option<usize>,
}

impl TickReport {
    fn merge(&mut self, tick: TickResult) {
        self.tick.started.extend(tick.started);
        self.tick.events.extend(tick.events);
        self.tick.outcome = tick.outcome;
    }
}

pub(super) enum Input {
    Event(Box<KubeEvent>),
    Completion(Completion),
}

pub(super) struct QuarantinedInput {
    pub(super) input: Input,
    pub(super) reason: String,
}

/// A failed guest call, by what it means for the instance.
pub(super) enum GuestFailure {
    /// The instance is unusable (a trap, a sandbox limit, a panic): rebuild it.
    Poisoned(String),
    /// The engine refused the call; the instance is intact (a fresh one would refuse it too).
    Refused(anyhow::Error),
}

impl GuestFailure {
    pub(super) fn into_error(self) -> anyhow::Error {
        match self {
            GuestFailure::Poisoned(reason) => anyhow!(reason),
            GuestFailure::Refused(e) => e,
        }
    }
}

/// Runs one call into the engine; a panic (of a native engine) poisons it like a trap.
pub(super) fn guarded<R>(
    driver: &mut Box<dyn EngineDriver>,
    f: impl FnOnce(&mut dyn EngineDriver) -> Result<R>,
) -> std::result::Result<R, GuestFailure> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(driver.as_mut()))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if driver.is_poisoned() => Err(GuestFailure::Poisoned(format!("{e:#}"))),
        Ok(Err(e)) => Err(GuestFailure::Refused(e)),
        Err(panic) => Err(GuestFailure::Poisoned(format!("engine panicked: {}", panic_message(panic.as_ref())))),
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
#[derive(Clone)]
pub(super) enum LoggedInput {
    Deliver {
        now_ms: u64,
        events: Vec<KubeEvent>,
    },
    Tick {
        now_ms: u64,
        completions: Vec<Completion>,
        /// The calls it started, to check the replay against.
        started: Vec<(CallId, &'static str)>,
        /// The counter after it.
        next_call_id: CallId,
    },
}

impl LoggedInput {
    fn inputs(&self) -> usize {
        1 + match self {
            LoggedInput::Deliver { events, .. } => events.len(),
            LoggedInput::Tick { completions, .. } => completions.len(),
        }
    }
}

/// A logged input, shared: a background swap takes the checkpoint's log as its base without
/// copying it (at 10,000 Services that copy was most of the swap's pause).
pub(super) type LogEntry = Arc<LoggedInput>;

/// Where a background swap's new instance starts: a snapshot, the call id that came next, and the
/// inputs applied since.
pub(super) struct SwapBase {
    pub(super) snapshot: Arc<[u8]>,
    pub(super) next_call_id: CallId,
    pub(super) log: Vec<LogEntry>,
}

/// The last good snapshot.
pub(super) struct Checkpoint {
    pub(super) snapshot: Arc<[u8]>,
    /// The call id the engine's next call would get when the snapshot was taken.
    pub(super) next_call_id: CallId,
}

/// What a background swap ([`super::swap`]) keeps while the new instance catches up: every
/// input the running instance applied since the swap took its base.
#[derive(Default)]
pub(super) struct SwapTail {
    pub(super) log: Vec<LogEntry>,
    /// Set when the running instance was rebuilt meanwhile (a trap): the tail no longer
    /// describes one history, and the swap is refused.
    pub(super) interrupted: Option<String>,
}

/// A position in the replay log.
#[derive(Clone, Copy)]
struct LogPosition {
    len: usize,
    inputs: usize,
    guest_time: Duration,
}

/// What a recovering tenant keeps.
pub(super) struct RecoveryState {
    pub(super) options: Recovery,
    checkpoint: Option<Checkpoint>,
    /// Inputs applied since the checkpoint.
    log: Vec<LogEntry>,
    log_inputs: usize,
    /// Time the logged inputs took to apply (about what replaying them costs).
    guest_time: Duration,
    /// Time the last snapshot took.
    snapshot_cost: Duration,
    /// Ticks (tenant tick numbers) of the recent restarts.
    restarts: VecDeque<u64>,
}

impl RecoveryState {
    fn record(&mut self, entry: LogEntry, took: Duration) {
        if self.checkpoint.is_none() {
            return;
        }
        self.log_inputs += entry.inputs();
        self.guest_time += took;
        self.log.push(entry);
    }

    fn log_position(&self) -> LogPosition {
        LogPosition { len: self.log.len(), inputs: self.log_inputs, guest_time: self.guest_time }
    }

    /// Drops the entries after `mark`; returns the events they delivered.
    fn truncate(&mut self, mark: LogPosition) -> Vec<KubeEvent> {
        let mut events = Vec::new();
        for entry in self.log.drain(mark.len.min(self.log.len())..) {
            if let LoggedInput::Deliver { events: delivered, .. } = &*entry {
                events.extend(delivered.iter().cloned());
            }
        }
        self.log_inputs = mark.inputs;
        self.guest_time = mark.guest_time;
        events
    }

    /// How many entries the log holds since the checkpoint.
    #[cfg(test)]
    pub(super) fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Makes `checkpoint` the one to recover from, with an empty log.
    pub(super) fn start_over(&mut self, checkpoint: Checkpoint) {
        self.checkpoint = Some(checkpoint);
        self.log.clear();
        self.log_inputs = 0;
        self.guest_time = Duration::ZERO;
    }

    /// How many inputs the log may hold before a snapshot is due ([`SnapshotPolicy`]).
    fn log_cap(&self) -> usize {
        let policy = &self.options.snapshots;
        let kib = self.checkpoint.as_ref().map_or(0, |c| c.snapshot.len() / 1024);
        policy.max_logged_inputs.max(kib.saturating_mul(policy.logged_inputs_per_snapshot_kib))
    }

    fn snapshot_due(&self) -> bool {
        if self.checkpoint.is_none() {
            return true;
        }
        !self.log.is_empty()
            && (self.log_inputs >= self.log_cap()
                || self.guest_time >= self.snapshot_cost.saturating_mul(self.options.snapshots.cost_ratio))
    }
}

/// The tenant's engine and, when it recovers from traps, what it takes to rebuild it. Moves to
/// the blocking pool for every tick and back.
pub(super) struct GuardedEngine {
    pub(super) name: String,
    pub(super) driver: Box<dyn EngineDriver>,
    pub(super) recovery: Option<RecoveryState>,
    /// While a background swap runs: the inputs its new instance has yet to apply.
    pub(super) swap_tail: Option<SwapTail>,
}

impl GuardedEngine {
    pub(super) fn new(name: String, driver: Box<dyn EngineDriver>, recovery: Option<Recovery>) -> GuardedEngine {
        let recovery = recovery.map(|options| RecoveryState {
            options,
            checkpoint: None,
            log: Vec::new(),
            log_inputs: 0,
            guest_time: Duration::ZERO,
            snapshot_cost: Duration::ZERO,
            restarts: VecDeque::new(),
        });
        GuardedEngine { name, driver, recovery, swap_tail: None }
    }

    /// One tick of the loop: deliver the events, tick with the completions, read the status if
    /// asked, checkpoint when due. Recovers from traps when it can; an error stops the tenant.
    pub(super) fn iterate(
        &mut self,
        tick_no: u64,
        now: u64,
        (events, completions): (Vec<KubeEvent>, Vec<Completion>),
        read: StatusRead,
        out: &mut TickReport,
    ) -> Result<()> {
        if self.recovery.as_ref().is_some_and(|r| r.checkpoint.is_none()) {
            self.checkpoint(tick_no, out)?;
        }
        let mark = self.log_position();
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
        if read == StatusRead::AfterTick {
            out.status = Some(match guarded(&mut self.driver, |d| d.status()) {
                Ok(status) => status,
                Err(failure) => {
                    let reason = self.poison(failure)?;
                    self.restart(tick_no, &reason, out)?;
                    guarded(&mut self.driver, |d| d.status())
                        .map_err(|f| f.into_error().context("the engine traps reading its status on a fresh instance too"))?
                }
            });
        }
        if self.recovery.as_ref().is_some_and(RecoveryState::snapshot_due) {
            self.checkpoint(tick_no, out)?;
        }
        Ok(())
    }

    fn log_position(&self) -> Option<LogPosition> {
        self.recovery.as_ref().map(RecoveryState::log_position)
    }

    fn truncate(&mut self, mark: Option<LogPosition>) -> Vec<KubeEvent> {
        match (&mut self.recovery, mark) {
            (Some(recovery), Some(mark)) => recovery.truncate(mark),
            _ => Vec::new(),
        }
    }

    /// The reason to rebuild the instance, or the error that stops the tenant.
    fn poison(&self, failure: GuestFailure) -> Result<String> {
        match failure {
            GuestFailure::Poisoned(reason) if self.recovery.is_some() => Ok(reason),
            other => Err(other.into_error()),
        }
    }

    /// Whether applied inputs are logged (for trap recovery, or for a background swap).
    fn logging(&self) -> bool {
        self.recovery.is_some() || self.swap_tail.is_some()
    }

    fn record(&mut self, entry: LoggedInput, took: Duration) {
        let entry = Arc::new(entry);
        match (&mut self.recovery, &mut self.swap_tail) {
            (Some(recovery), Some(tail)) => {
                tail.log.push(entry.clone());
                recovery.record(entry, took);
            }
            (Some(recovery), None) => recovery.record(entry, took),
            (None, Some(tail)) => tail.log.push(entry),
            (None, None) => {}
        }
    }

    /// `deliver`, logged; on failure the events come back (when logging).
    fn deliver(&mut self, now: u64, events: Vec<KubeEvent>) -> std::result::Result<(), (GuestFailure, Vec<KubeEvent>)> {
        if !self.logging() {
            return guarded(&mut self.driver, |d| d.deliver(now, events)).map_err(|f| (f, Vec::new()));
        }
        let began = Instant::now();
        match guarded(&mut self.driver, |d| d.deliver(now, events.clone())) {
            Ok(()) => {
                self.record(LoggedInput::Deliver { now_ms: now, events }, began.elapsed());
                Ok(())
            }
            Err(failure) => Err((failure, events)),
        }
    }

    /// `tick`, logged; on failure the completions come back (when logging).
    fn tick(&mut self, now: u64, completions: Vec<Completion>) -> std::result::Result<TickResult, (GuestFailure, Vec<Completion>)> {
        if !self.logging() {
            return guarded(&mut self.driver, |d| d.tick(now, completions)).map_err(|f| (f, Vec::new()));
        }
        let began = Instant::now();
        match guarded(&mut self.driver, |d| d.tick(now, completions.clone())) {
            Ok(tick) => {
                let started = tick.started.iter().map(|(id, call)| (*id, call.label())).collect();
                let next_call_id = self.driver.call_ids().peek();
                self.record(LoggedInput::Tick { now_ms: now, completions, started, next_call_id }, began.elapsed());
                Ok(tick)
            }
            Err(failure) => Err((failure, completions)),
        }
    }

    /// The base a background swap starts from: the checkpoint and its log when the tenant
    /// recovers from traps (copies, no guest call), else a snapshot taken now. From here on the
    /// applied inputs are also kept for the swap ([`SwapTail`]).
    pub(super) fn begin_swap(&mut self) -> std::result::Result<SwapBase, GuestFailure> {
        let base = match self.recovery.as_ref().and_then(|r| r.checkpoint.as_ref().map(|c| (c, &r.log))) {
            Some((checkpoint, log)) => {
                SwapBase { snapshot: Arc::clone(&checkpoint.snapshot), next_call_id: checkpoint.next_call_id, log: log.clone() }
            }
            None => {
                let snapshot = guarded(&mut self.driver, |d| d.snapshot())?;
                SwapBase { snapshot: snapshot.into(), next_call_id: self.driver.call_ids().peek(), log: Vec::new() }
            }
        };
        self.swap_tail = Some(SwapTail::default());
        Ok(base)
    }

    /// Takes a new checkpoint. A snapshot that traps costs a restart (the log still has every
    /// input since the previous checkpoint); one the engine refuses leaves the old checkpoint.
    fn checkpoint(&mut self, tick_no: u64, out: &mut TickReport) -> Result<()> {
        let Some(recovery) = &mut self.recovery else { return Ok(()) };
        let began = Instant::now();
        match guarded(&mut self.driver, |d| d.snapshot()) {
            Ok(snapshot) => {
                recovery.snapshot_cost = began.elapsed();
                out.checkpoint_bytes = Some(snapshot.len());
                recovery.start_over(Checkpoint { snapshot: snapshot.into(), next_call_id: self.driver.call_ids().peek() });
                Ok(())
            }
            Err(GuestFailure::Refused(e)) => {
                if recovery.checkpoint.is_some() {
                    tracing::warn!(tenant = %self.name, error = %format!("{e:#}"), "engine snapshot refused; keeping the previous one");
                }
                Ok(())
            }
            Err(GuestFailure::Poisoned(reason)) => self.restart(tick_no, &format!("taking a snapshot: {reason}"), out),
        }
    }

    /// Counts a restart, unless there were too many lately, and rebuilds the instance.
    pub(super) fn restart(&mut self, tick_no: u64, reason: &str, out: &mut TickReport) -> Result<()> {
        out.traps += 1;
        out.last_trap = Some(super::summary::brief_reason(reason));
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
        if let Some(tail) = &mut self.swap_tail {
            tail.interrupted.get_or_insert_with(|| super::summary::brief_reason(reason));
        }
        tracing::error!(
            tenant = %self.name,
            error = %super::summary::brief_reason(reason),
            "engine instance unusable; restarting it from its last good snapshot"
        );
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
            match rebuild_from_checkpoint(&recovery.options.factory, &ids, checkpoint, &recovery.log) {
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
    fn apply_one_by_one(&mut self, now: u64, events: Vec<KubeEvent>, completions: Vec<Completion>, out: &mut TickReport) -> Result<()> {
        let mut ticked = false;
        let mut dropped = 0usize;
        for event in events {
            let mark = self.log_position();
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
                    out.quarantined.push(QuarantinedInput { input: Input::Event(Box::new(event)), reason });
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
                        out.quarantined.push(QuarantinedInput { input: Input::Completion(completion), reason });
                    }
                    dropped += 1;
                    self.rebuild_after_quarantine(dropped)?;
                }
            }
        }
        if !ticked {
            let tick = self.tick(now, Vec::new()).map_err(|(failure, _)| {
                failure.into_error().context("the engine traps on a fresh instance restored from its last good snapshot with no new input")
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
}

/// A fresh instance: the checkpoint restored, the log replayed, the call ids checked.
fn rebuild_from_checkpoint(
    factory: &EngineFactory,
    ids: &CallIds,
    checkpoint: &Checkpoint,
    log: &[LogEntry],
) -> Result<Box<dyn EngineDriver>> {
    let mut fresh = match std::panic::catch_unwind(AssertUnwindSafe(|| factory(ids.clone()))) {
        Ok(built) => built.context("building a fresh engine instance")?,
        Err(panic) => bail!("the engine factory panicked: {}", panic_message(panic.as_ref())),
    };
    // Only a counter the host allocates from goes back; an engine that numbers its own calls
    // sets its mirror from the snapshot it restores.
    if !fresh.numbers_own_calls() {
        ids.set_next(checkpoint.next_call_id);
    }
    guarded(&mut fresh, |d| d.restore(&checkpoint.snapshot)).map_err(|f| f.into_error().context("restoring the last good snapshot"))?;
    replay_log(&mut fresh, ids, log).map_err(|e| match e {
        ReplayError::Failed(e) => e,
        ReplayError::Diverged(text) => {
            anyhow!("{text}; the engine is not deterministic or the factory does not use the tenant's call ids")
        }
    })?;
    Ok(fresh)
}

/// Why replaying a log into an instance failed.
pub(super) enum ReplayError {
    /// A guest call failed (a trap, a refusal).
    Failed(anyhow::Error),
    /// A tick started other calls (or ids) than the log recorded: the first difference, readable.
    Diverged(String),
}

/// Applies `log` to `fresh` (whose calls are numbered by `ids`), checking that every tick starts
/// exactly the calls the log recorded.
pub(super) fn replay_log(fresh: &mut Box<dyn EngineDriver>, ids: &CallIds, log: &[LogEntry]) -> std::result::Result<(), ReplayError> {
    for (i, entry) in log.iter().enumerate() {
        match &**entry {
            LoggedInput::Deliver { now_ms, events } => guarded(fresh, |d| d.deliver(*now_ms, events.clone()))
                .map_err(|f| ReplayError::Failed(f.into_error().context(format!("replaying input {i} (a deliver)"))))?,
            LoggedInput::Tick { now_ms, completions, started, next_call_id } => {
                let tick = guarded(fresh, |d| d.tick(*now_ms, completions.clone()))
                    .map_err(|f| ReplayError::Failed(f.into_error().context(format!("replaying input {i} (a tick)"))))?;
                let replayed: Vec<(CallId, &'static str)> = tick.started.iter().map(|(id, call)| (*id, call.label())).collect();
                if replayed != *started || ids.peek() != *next_call_id {
                    let inputs: Vec<String> = completions.iter().map(|c| completion_summary(c, None)).collect();
                    return Err(ReplayError::Diverged(format!(
                        "replaying input {i} (a tick at {now_ms} ms with completions [{}]) diverged: it started {} \
                         (next id {}), the log has {} (next id {next_call_id})",
                        short(&inputs.join(", "), 400),
                        short(&format!("{replayed:?}"), 400),
                        ids.peek(),
                        short(&format!("{started:?}"), 400)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The tenant's trap recovery for a loop of its own (the replay's virtual-time loop): the same
/// checkpoint, log and quarantine as a tenant, one [`RecoveringEngine::step`] per tick.
pub struct RecoveringEngine {
    guarded: GuardedEngine,
    ticks: u64,
}

/// What one [`RecoveringEngine::step`] produced.
pub struct RecoveredTick {
    /// Every call started and Event recorded, and the outcome of the engine's last tick.
    pub tick: TickResult,
    /// The status after the step, if it was asked for.
    pub status: Option<EngineStatus>,
    /// Instances rebuilt during the step.
    pub restarts: u64,
    /// Inputs dropped during the step, and for those that name an object the Warning Event to
    /// record on it ([`quarantine_warning`](super::quarantine_warning)).
    pub quarantined: Vec<(Quarantined, Option<KubeEventRecord>)>,
}

impl RecoveringEngine {
    /// `driver` is created (and has its initial lists, if any); `recovery` rebuilds it.
    pub fn new(name: &str, driver: Box<dyn EngineDriver>, recovery: Recovery) -> RecoveringEngine {
        RecoveringEngine { guarded: GuardedEngine::new(name.to_string(), driver, Some(recovery)), ticks: 0 }
    }

    /// Delivers `events` (if any), then ticks with `completions`, then reads the status if `read`
    /// asks; an input the engine traps on twice is quarantined. `label` names the call of a
    /// quarantined completion. An error means the engine cannot go on (restarts exhausted, no good
    /// snapshot).
    pub fn step(
        &mut self,
        now: u64,
        inputs: (Vec<KubeEvent>, Vec<Completion>),
        read: StatusRead,
        label: impl Fn(CallId) -> Option<&'static str>,
    ) -> Result<RecoveredTick> {
        self.ticks += 1;
        let mut out = TickReport::default();
        self.guarded.iterate(self.ticks, now, inputs, read, &mut out)?;
        let quarantined = out
            .quarantined
            .iter()
            .map(|q| {
                let (kind, summary, warning) = match &q.input {
                    Input::Event(e) => (QuarantinedKind::Event, event_summary(e), quarantine_warning(e, &q.reason)),
                    Input::Completion(c) => (QuarantinedKind::Completion(c.id), completion_summary(c, label(c.id)), None),
                };
                (Quarantined { tick: self.ticks, at_ms: now, kind, summary, reason: brief_reason(&q.reason) }, warning)
            })
            .collect();
        Ok(RecoveredTick { tick: out.tick, status: out.status, restarts: out.restarts, quarantined })
    }

    /// The engine's status, read without a tick.
    pub fn status(&mut self) -> Result<EngineStatus> {
        guarded(&mut self.guarded.driver, |d| d.status()).map_err(GuestFailure::into_error)
    }

    /// Every tracked operation, read without a tick.
    pub fn operations(&mut self) -> Result<Vec<OperationStatus>> {
        guarded(&mut self.guarded.driver, |d| d.operations()).map_err(GuestFailure::into_error)
    }
}
