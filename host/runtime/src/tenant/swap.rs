//! Hot swap: the tenant's engine replaced by a new instance (often of a newer component) while the
//! tenant runs.
//!
//! - **Background swap** ([`TenantHandle::hot_swap`](super::TenantHandle::hot_swap)), built on trap
//!   recovery's checkpoint and input log ([`super::recovery`]): at a tick boundary the loop takes a
//!   base (the checkpoint and its log, copied; a snapshot when the tenant keeps no checkpoint) and
//!   from then on also keeps every input the running instance applies (the tail). On the blocking
//!   pool a new instance, numbering its calls from a counter of its own set to the base's next
//!   id (or, of WIT 0.3.0, from the engine's counter in the base snapshot, which its counter
//!   mirrors), restores the base and replays its log while the old instance keeps ticking. When that is
//!   done the loop hands it the tail in further background rounds until the tail is short, then,
//!   at a tick boundary, replays the last few inputs and takes over. The pause is that last step.
//!   Every replayed tick must start the calls (labels and ids) the running instance started for
//!   the same inputs, so the new instance awaits exactly the calls in flight, which complete into
//!   it; a new component that behaves differently is refused ([`SwapError::Divergence`]), or,
//!   with [`SwapOptions::allow_divergence`] (a deliberate change of behaviour), swapped in from a
//!   snapshot taken at that tick boundary (a plain swap's pause), the first difference recorded
//!   in the report, the tenant's status and a warning. This holds across WIT generations: a
//!   0.2.0 engine's counter follows the ids its host allocates and is in its snapshot, so a 0.3.0
//!   engine restored from it numbers its calls exactly where the 0.2.0 instance's host would
//!   have, and the other way round the new 0.2.0 instance's counter starts at the 0.3.0 engine's
//!   next id.
//! - **Plain swap** ([`TenantHandle::swap_engine`](super::TenantHandle::swap_engine)): the loop
//!   stops, snapshots the running instance, restores the snapshot into the fresh one, switches.
//!   The pause is a snapshot plus a restore; `difftracker bench-swap` measures both beside each
//!   other.
//!
//! A failed swap changes nothing: the old instance keeps running, the caller gets a typed
//! [`SwapError`], the tenant logs a warning and counts the refusal ([`super::TenantStatus`]).

use super::recovery::{guarded, replay_log, Checkpoint, EngineFactory, GuardedEngine, GuestFailure, LogEntry, ReplayError, TickReport};
use crate::driver::{CallIds, EngineDriver};
use anyhow::{anyhow, Result};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A tail of at most this many logged inputs is replayed at the tick boundary (the pause); a
/// longer one goes to the new instance in another background round first. A tick costs well
/// under a millisecond at 10,000 Services, so this bounds the pause to a few ticks' worth.
pub const CATCH_UP_INPUTS: usize = 8;

/// Background rounds before the swap takes over with whatever tail is left (a tenant whose
/// inputs arrive faster than the new instance replays them would otherwise never switch).
const MAX_CATCH_UP_ROUNDS: u32 = 16;

/// Why a swap was refused. The old instance keeps running in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    /// The new instance could not be built: the component does not compile or load, exports
    /// another WIT version, or the pooling allocator has no slot for a second instance.
    #[error("building the new instance failed: {0}")]
    Build(String),
    /// The new instance refused the base snapshot (an unknown schema version, an inconsistent
    /// state) or the running instance could not write one.
    #[error("the new instance refused the snapshot: {0}")]
    Restore(String),
    /// The new instance trapped or refused an input while replaying the log.
    #[error("the new instance failed replaying the tenant's inputs: {0}")]
    Replay(String),
    /// The new instance started other calls than the running one for the same inputs.
    #[error("the new instance diverges from the running one: {0}")]
    Divergence(String),
    /// The running instance was rebuilt after a trap during the swap; try again.
    #[error("the running instance was restarted during the swap ({0}); try again")]
    Interrupted(String),
    /// Another swap of this tenant is in progress.
    #[error("another swap of this tenant is in progress")]
    Busy,
    /// The tenant is not running (stopped, or stopped during the swap).
    #[error("the tenant is not running")]
    NotRunning,
}

impl SwapError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SwapError::Build(_) => "build",
            SwapError::Restore(_) => "restore",
            SwapError::Replay(_) => "replay",
            SwapError::Divergence(_) => "divergence",
            SwapError::Interrupted(_) => "interrupted",
            SwapError::Busy => "busy",
            SwapError::NotRunning => "not_running",
        }
    }
}

/// How a background swap treats the shadow gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapOptions {
    /// Swap even when the new instance starts other calls than the running one for the same
    /// inputs: the background instance is dropped and the new component takes over from a
    /// snapshot of the running one (so it awaits exactly the calls in flight).
    pub allow_divergence: bool,
}

/// What one successful swap cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwapReport {
    /// How long the tick loop stood still for the swap (taking the base plus taking over, for a
    /// background swap; the snapshot plus the restore, for a plain one).
    pub pause: Duration,
    /// From the request to the switch.
    pub total: Duration,
    /// Bytes of the snapshot the new instance started from.
    pub snapshot_bytes: usize,
    /// Inputs (ticks and delivers) the new instance replayed in the background.
    pub replayed_in_background: usize,
    /// Inputs it replayed at the tick boundary, during the pause.
    pub replayed_in_pause: usize,
    /// A swap forced past the shadow gate: where the new instance diverged.
    pub divergence: Option<String>,
}

/// What a background replay round hands back.
type Round = (Option<Box<dyn EngineDriver>>, std::result::Result<usize, SwapError>);

/// A background swap under way, owned by the tick loop.
pub(super) struct PendingSwap {
    job: JoinHandle<Round>,
    factory: EngineFactory,
    /// The new instance's own counter: its replayed calls get the ids the log recorded.
    ids: CallIds,
    reply: oneshot::Sender<std::result::Result<SwapReport, SwapError>>,
    began: Instant,
    report: SwapReport,
    rounds: u32,
    options: SwapOptions,
}

impl PendingSwap {
    /// Waits for the current background round.
    pub(super) async fn round(&mut self) -> Round {
        match (&mut self.job).await {
            Ok(round) => round,
            Err(e) => (None, Err(SwapError::Replay(format!("the replay task failed: {e}")))),
        }
    }
}

/// Builds a new instance with `factory` and restores `snapshot` into it (a panic is an error).
fn build_and_restore(factory: &EngineFactory, ids: &CallIds, snapshot: &[u8]) -> std::result::Result<Box<dyn EngineDriver>, SwapError> {
    let mut fresh = match std::panic::catch_unwind(AssertUnwindSafe(|| factory(ids.clone()))) {
        Ok(Ok(fresh)) => fresh,
        Ok(Err(e)) => return Err(SwapError::Build(format!("{e:#}"))),
        Err(_) => return Err(SwapError::Build("the engine factory panicked".into())),
    };
    guarded(&mut fresh, |d| d.restore(snapshot)).map_err(|f| SwapError::Restore(format!("{:#}", f.into_error())))?;
    Ok(fresh)
}

fn replay_error(e: ReplayError) -> SwapError {
    match e {
        ReplayError::Failed(e) => SwapError::Replay(format!("{e:#}")),
        ReplayError::Diverged(text) => SwapError::Divergence(text),
    }
}

/// Replays `log` into `fresh` on the blocking pool.
fn spawn_round(mut fresh: Box<dyn EngineDriver>, ids: CallIds, log: Vec<LogEntry>) -> JoinHandle<Round> {
    tokio::task::spawn_blocking(move || match replay_log(&mut fresh, &ids, &log) {
        Ok(()) => (Some(fresh), Ok(log.len())),
        Err(e) => (None, Err(replay_error(e))),
    })
}

/// Starts a background swap: takes the base at this tick boundary (on the blocking pool, since
/// it may snapshot) and spawns the first round. `Err` hands the engine back with the refusal
/// already sent; a poisoned running instance is left for the next tick to recover.
pub(super) async fn begin(
    engine: GuardedEngine,
    factory: EngineFactory,
    options: SwapOptions,
    reply: oneshot::Sender<std::result::Result<SwapReport, SwapError>>,
) -> (Option<GuardedEngine>, std::result::Result<PendingSwap, SwapError>) {
    let began = Instant::now();
    let work = tokio::task::spawn_blocking(move || {
        let mut engine = engine;
        let base = engine.begin_swap();
        (engine, base)
    });
    let (engine, base) = match work.await {
        Ok(done) => done,
        Err(e) => {
            let error = SwapError::Restore(format!("the swap task failed: {e}"));
            let _ = reply.send(Err(error.clone()));
            return (None, Err(error));
        }
    };
    let pause = began.elapsed();
    let base = match base {
        Ok(base) => base,
        Err(failure) => {
            let error = SwapError::Restore(format!("taking the running engine's snapshot: {:#}", failure.into_error()));
            refused(&engine.name, &error);
            let _ = reply.send(Err(error.clone()));
            return (Some(engine), Err(error));
        }
    };
    let ids = CallIds::starting_at(base.next_call_id);
    let report = SwapReport { pause, snapshot_bytes: base.snapshot.len(), replayed_in_background: base.log.len(), ..SwapReport::default() };
    let job = {
        let (factory, ids) = (factory.clone(), ids.clone());
        tokio::task::spawn_blocking(move || match build_and_restore(&factory, &ids, &base.snapshot) {
            Ok(mut fresh) => match replay_log(&mut fresh, &ids, &base.log) {
                Ok(()) => (Some(fresh), Ok(base.log.len())),
                Err(e) => (None, Err(replay_error(e))),
            },
            Err(e) => (None, Err(e)),
        })
    };
    (Some(engine), Ok(PendingSwap { job, factory, ids, reply, began, report, rounds: 0, options }))
}

/// What the loop does when a background round ends.
pub(super) enum Next {
    /// Another round runs (the tail was long); keep the swap.
    Again(PendingSwap),
    /// Take over at this tick boundary with this instance.
    TakeOver(PendingSwap, Box<dyn EngineDriver>),
    /// The new instance diverged and the swap allows it: force it at this tick boundary.
    Force(PendingSwap, String),
    /// The swap is refused (the reply is sent).
    Refused(SwapError),
}

/// Decides after a background round: refuse, run another round on the tail, or take over.
pub(super) fn after_round(engine: &mut GuardedEngine, mut swap: PendingSwap, round: Round) -> Next {
    let fresh = match round {
        (Some(fresh), Ok(_)) => fresh,
        (fresh, Err(SwapError::Divergence(diff))) if swap.options.allow_divergence => {
            drop(fresh);
            engine.swap_tail = None;
            return Next::Force(swap, diff);
        }
        (fresh, result) => {
            let error = result.err().unwrap_or_else(|| SwapError::Replay("the replay lost the new instance".into()));
            drop(fresh);
            engine.swap_tail = None;
            refused(&engine.name, &error);
            let _ = swap.reply.send(Err(error.clone()));
            return Next::Refused(error);
        }
    };
    let tail_len = engine.swap_tail.as_ref().map_or(0, |t| t.log.len());
    if tail_len > CATCH_UP_INPUTS && swap.rounds < MAX_CATCH_UP_ROUNDS {
        let log = engine.swap_tail.as_mut().map(|t| std::mem::take(&mut t.log)).unwrap_or_default();
        swap.rounds += 1;
        swap.report.replayed_in_background += log.len();
        swap.job = spawn_round(fresh, swap.ids.clone(), log);
        return Next::Again(swap);
    }
    Next::TakeOver(swap, fresh)
}

/// How taking over ended.
pub(super) enum TakeOver {
    /// Swapped, or refused (the reply is sent).
    Done(std::result::Result<(), SwapError>),
    /// The last inputs diverged and the swap allows it: force it ([`force`]).
    Force(PendingSwap, String),
}

/// Replays the rest of the tail into `fresh` and switches, at a tick boundary, on the blocking
/// pool. Returns the engine (switched or not; none if the task failed) and how the swap ended.
pub(super) async fn take_over(engine: GuardedEngine, swap: PendingSwap, fresh: Box<dyn EngineDriver>) -> (Option<GuardedEngine>, TakeOver) {
    let paused = Instant::now();
    let (factory, ids) = (swap.factory.clone(), swap.ids.clone());
    let work = tokio::task::spawn_blocking(move || {
        let mut engine = engine;
        let result = engine.switch_to(fresh, &ids, factory);
        (engine, result)
    });
    match work.await {
        Ok((engine, Err(SwapError::Divergence(diff)))) if swap.options.allow_divergence => (Some(engine), TakeOver::Force(swap, diff)),
        Ok((engine, result)) => {
            let PendingSwap { reply, began, mut report, .. } = swap;
            let mut retired = None;
            let reply_with = match result {
                Ok((replayed, old)) => {
                    report.pause += paused.elapsed();
                    retired = Some(old);
                    report.total = began.elapsed();
                    report.replayed_in_pause = replayed;
                    tracing::info!(
                        tenant = %engine.name,
                        pause_us = report.pause.as_micros() as u64,
                        snapshot_bytes = report.snapshot_bytes,
                        replayed = report.replayed_in_background + replayed,
                        "engine swapped in the background"
                    );
                    Ok(report)
                }
                Err(error) => {
                    refused(&engine.name, &error);
                    Err(error)
                }
            };
            let outcome = reply_with.as_ref().map(|_| ()).map_err(Clone::clone);
            let _ = reply.send(reply_with);
            // Freeing the old instance returns its memory to the pool page by page (hundreds of
            // MiB at 10,000 Services): off the tenant's path, after the pause.
            if let Some(old) = retired {
                tokio::task::spawn_blocking(move || drop(old));
            }
            (Some(engine), TakeOver::Done(outcome))
        }
        Err(e) => {
            let error = SwapError::Replay(format!("the swap task failed: {e}"));
            let _ = swap.reply.send(Err(error.clone()));
            (None, TakeOver::Done(Err(error)))
        }
    }
}

/// A swap forced past the shadow gate: a fresh instance of the new component restores a
/// snapshot of the running one at this tick boundary (a plain swap, so it awaits exactly the
/// calls in flight) and takes over; the report carries `diff`. Returns what
/// [`swap_blocking`] does, with the swap's own outcome.
pub(super) async fn force(
    engine: GuardedEngine,
    swap: PendingSwap,
    diff: String,
    tick_no: u64,
) -> (Option<GuardedEngine>, TickReport, Result<()>, std::result::Result<(), SwapError>) {
    let PendingSwap { factory, reply, began, mut report, .. } = swap;
    tracing::warn!(tenant = %engine.name, divergence = %diff, "the new instance diverges from the running one; swapping anyway (divergence allowed)");
    let paused = Instant::now();
    let work = tokio::task::spawn_blocking(move || {
        let mut engine = engine;
        let mut out = TickReport::default();
        let ids = engine.driver.call_ids().clone();
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| factory(ids))) {
            Ok(Ok(fresh)) => engine.swap(tick_no, fresh, Some(factory), &mut out),
            Ok(Err(e)) => Ok(Err(e.context("building the new instance"))),
            Err(_) => Ok(Err(anyhow!("the engine factory panicked"))),
        };
        (engine, out, result)
    });
    match work.await {
        Ok((engine, out, Ok(Ok(bytes)))) => {
            report.pause += paused.elapsed();
            report.total = began.elapsed();
            report.snapshot_bytes = bytes;
            report.divergence = Some(diff);
            let _ = reply.send(Ok(report));
            (Some(engine), out, Ok(()), Ok(()))
        }
        Ok((engine, out, Ok(Err(e)))) => {
            let error = SwapError::Restore(format!("forcing the swap past a divergence ({diff}): {e:#}"));
            refused(&engine.name, &error);
            let _ = reply.send(Err(error.clone()));
            (Some(engine), out, Ok(()), Err(error))
        }
        Ok((engine, out, Err(fatal))) => {
            let error = SwapError::Interrupted(format!("the running instance could not be recovered: {fatal:#}"));
            let _ = reply.send(Err(error.clone()));
            (Some(engine), out, Err(fatal), Err(error))
        }
        Err(e) => {
            let error = SwapError::Replay(format!("the swap task failed: {e}"));
            let _ = reply.send(Err(error.clone()));
            (None, TickReport::default(), Err(anyhow!("the swap task failed: {e}")), Err(error))
        }
    }
}

fn refused(tenant: &str, error: &SwapError) {
    tracing::warn!(tenant = %tenant, reason = error.reason(), error = %error, "engine swap refused; the old instance keeps running");
}

impl GuardedEngine {
    /// The last step of a background swap: `fresh` applies the inputs left in the tail and
    /// becomes the running instance, its counter numbering the tenant's calls from now on, and
    /// `factory` building the tenant's instances after a trap. The checkpoint and its log stay:
    /// they describe the same state, which the new instance reproduced from them. Returns the
    /// inputs replayed and the retired instance, for the caller to free after the pause.
    fn switch_to(
        &mut self,
        mut fresh: Box<dyn EngineDriver>,
        ids: &CallIds,
        factory: EngineFactory,
    ) -> std::result::Result<(usize, Box<dyn EngineDriver>), SwapError> {
        let Some(tail) = self.swap_tail.take() else { return Err(SwapError::Interrupted("the swap's log was dropped".into())) };
        if let Some(reason) = tail.interrupted {
            return Err(SwapError::Interrupted(reason));
        }
        replay_log(&mut fresh, ids, &tail.log).map_err(replay_error)?;
        let (new_next, old_next) = (ids.peek(), self.driver.call_ids().peek());
        if new_next != old_next {
            return Err(SwapError::Divergence(format!(
                "after the replay the new instance's next call id is {new_next}, the running one's {old_next}"
            )));
        }
        let old = std::mem::replace(&mut self.driver, fresh);
        if let Some(recovery) = &mut self.recovery {
            recovery.options.factory = factory;
        }
        Ok((tail.log.len(), old))
    }
}

/// A plain swap on the blocking pool: snapshot, restore, switch; keeps the old engine if
/// anything fails (a recovering tenant rebuilds it if taking its snapshot trapped).
pub(super) async fn swap_blocking(
    mut engine: GuardedEngine,
    tick_no: u64,
    fresh: Box<dyn EngineDriver>,
    factory: Option<EngineFactory>,
    reply: oneshot::Sender<Result<SwapReport>>,
) -> (Option<GuardedEngine>, TickReport, Result<()>, std::result::Result<(), String>) {
    let began = Instant::now();
    let work = tokio::task::spawn_blocking(move || {
        let mut report = TickReport::default();
        let result = engine.swap(tick_no, fresh, factory, &mut report);
        (engine, report, result)
    });
    match work.await {
        Ok((engine, report, Ok(swapped))) => {
            let outcome = swapped.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
            if let Err(e) = &outcome {
                tracing::warn!(tenant = %engine.name, error = %e, "engine swap failed; the old instance keeps running");
            }
            let pause = began.elapsed();
            let _ = reply.send(swapped.map(|snapshot_bytes| SwapReport { pause, total: pause, snapshot_bytes, ..SwapReport::default() }));
            (Some(engine), report, Ok(()), outcome)
        }
        Ok((engine, report, Err(fatal))) => {
            let _ = reply.send(Err(anyhow!("the swap failed and the old instance could not be recovered: {fatal:#}")));
            (Some(engine), report, Err(fatal), Err("the old instance could not be recovered".into()))
        }
        Err(e) => {
            let _ = reply.send(Err(anyhow!("the swap task failed: {e}")));
            (None, TickReport::default(), Err(anyhow!("the swap task failed: {e}")), Err(format!("the swap task failed: {e}")))
        }
    }
}

impl GuardedEngine {
    /// Plain swap: the running instance's snapshot restored into `fresh`, which becomes the
    /// running instance (and that snapshot the checkpoint). `Ok(Ok(bytes))`: swapped, from a
    /// snapshot of that size; `Ok(Err(_))`: the swap failed and the old instance keeps running;
    /// `Err(_)`: nothing is left to run.
    fn swap(
        &mut self,
        tick_no: u64,
        mut fresh: Box<dyn EngineDriver>,
        factory: Option<EngineFactory>,
        out: &mut TickReport,
    ) -> Result<Result<usize>> {
        let snapshot = match guarded(&mut self.driver, |d| d.snapshot()) {
            Ok(snapshot) => snapshot,
            Err(GuestFailure::Refused(e)) => return Ok(Err(e.context("taking the running engine's snapshot"))),
            Err(GuestFailure::Poisoned(reason)) => {
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
        let bytes = snapshot.len();
        // A fresh instance the host numbers calls for never numbers below the running one (its
        // calls in flight keep their ids); one that numbers its own has the snapshot's counter.
        if !fresh.numbers_own_calls() {
            let next = fresh.call_ids().peek().max(self.driver.call_ids().peek());
            fresh.call_ids().set_next(next);
        }
        let next_call_id = fresh.call_ids().peek();
        self.driver = fresh;
        if let Some(recovery) = &mut self.recovery {
            if let Some(factory) = factory {
                recovery.options.factory = factory;
            }
            // The log belonged to the old instance's checkpoint: start over from this snapshot.
            recovery.start_over(Checkpoint { snapshot: snapshot.into(), next_call_id });
        }
        Ok(Ok(bytes))
    }
}
