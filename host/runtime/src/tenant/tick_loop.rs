//! The tick loop itself: sleep until events, a completion, a control request or the engine's
//! next wake-up; then tick on the blocking pool and hand the started calls to the executor.

use super::recovery::{GuardedEngine, Input, StatusRead, TickReport};
use super::summary::{brief_reason, completion_summary, event_summary, quarantine_warning, short};
use super::swap::{self, swap_blocking, Next, PendingSwap, SwapError, TakeOver};
use super::{BackoffPolicy, Control, Quarantined, QuarantinedKind, TenantEvent, TenantStatus};
use crate::driver::{EngineDriver, TickResult};
use crate::executor::{call_identity, CallRunner, Executor};
use anyhow::{anyhow, Result};
use difftracker_engine::io::{CallId, Completion, EngineStatus, KubeEvent};
use std::collections::HashMap;
use tokio::sync::{mpsc, watch};

pub(super) struct TenantLoop {
    pub(super) name: String,
    pub(super) executor: Executor,
    pub(super) runner: CallRunner,
    pub(super) inputs: mpsc::UnboundedReceiver<Vec<KubeEvent>>,
    pub(super) control: mpsc::UnboundedReceiver<Control>,
    pub(super) completions: mpsc::UnboundedReceiver<Completion>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) status: watch::Sender<TenantStatus>,
    pub(super) observer: Option<mpsc::UnboundedSender<TenantEvent>>,
    pub(super) outstanding: usize,
    /// Labels of the calls in flight, to name a quarantined completion.
    pub(super) labels: HashMap<CallId, &'static str>,
    pub(super) quarantine_capacity: usize,
    pub(super) backoff: Option<BackoffPolicy>,
    /// Clean ticks since the last one that trapped.
    pub(super) clean_ticks: u32,
    /// While backed off: the clock's time of the next tick.
    pub(super) backoff_until: Option<u64>,
}

impl TenantLoop {
    pub(super) async fn run(mut self, mut engine: GuardedEngine) -> Result<Box<dyn EngineDriver>> {
        let clock = self.executor.clock().clone();
        // Tick once at start: a restored engine may have calls due.
        let mut wake_now = true;
        let mut next_wake: Option<u64> = None;
        let mut events: Vec<KubeEvent> = Vec::new();
        let mut completions: Vec<Completion> = Vec::new();
        // A background swap under way (its replay runs on the blocking pool between our ticks).
        let mut pending: Option<PendingSwap> = None;
        loop {
            if !wake_now {
                // A backed-off tenant ticks no earlier than its backoff's end: then if inputs
                // wait, else at its next wake-up.
                let waiting = !events.is_empty() || !completions.is_empty();
                let wake_at = match self.backoff_until {
                    Some(until) if waiting => Some(until),
                    Some(until) => next_wake.map(|at| at.max(until)),
                    None => next_wake,
                };
                let sleep = wake_at.map(|at| clock.sleep_until(at));
                tokio::select! {
                    _ = self.stop.changed() => break,
                    Some(batch) = self.inputs.recv() => events.extend(batch),
                    Some(control) = self.control.recv() => match control {
                        Control::Swap(_, _, reply) if pending.is_some() => {
                            let _ = reply.send(Err(SwapError::Busy.into()));
                            self.count_swap(Err(SwapError::Busy.to_string()));
                            continue;
                        }
                        Control::Swap(fresh, factory, reply) => {
                            let tick_no = self.status.borrow().ticks + 1;
                            let (returned, report, result, outcome) = swap_blocking(engine, tick_no, fresh, factory, reply).await;
                            self.record_recovery(tick_no, clock.now_ms(), &report);
                            self.count_swap(outcome);
                            match (returned, result) {
                                (Some(returned), Ok(())) => engine = returned,
                                (_, Err(e)) => return Err(self.fail(e)),
                                (None, Ok(())) => return Err(self.fail(anyhow!("tenant {}: the engine was lost in a swap", self.name))),
                            }
                            // Tick the new instance at once: it may have work due.
                        }
                        Control::HotSwap(_, _, reply) if pending.is_some() => {
                            let _ = reply.send(Err(SwapError::Busy));
                            self.count_swap(Err(SwapError::Busy.to_string()));
                            continue;
                        }
                        Control::HotSwap(factory, options, reply) => {
                            let (returned, started) = swap::begin(engine, factory, options, reply).await;
                            let Some(returned) = returned else {
                                return Err(self.fail(anyhow!("tenant {}: the engine was lost in a swap", self.name)));
                            };
                            engine = returned;
                            match started {
                                Ok(swap) => pending = Some(swap),
                                Err(error) => self.count_swap(Err(error.to_string())),
                            }
                            continue;
                        }
                    },
                    round = async { pending.as_mut().expect("guarded").round().await }, if pending.is_some() => {
                        let swap = pending.take().expect("guarded");
                        let forced = match swap::after_round(&mut engine, swap, round) {
                            Next::Again(swap) => {
                                pending = Some(swap);
                                continue;
                            }
                            Next::Refused(error) => {
                                self.count_swap(Err(error.to_string()));
                                continue;
                            }
                            Next::Force(swap, diff) => Some((swap, diff)),
                            Next::TakeOver(swap, fresh) => {
                                let (returned, outcome) = swap::take_over(engine, swap, fresh).await;
                                let Some(returned) = returned else {
                                    return Err(self.fail(anyhow!("tenant {}: the engine was lost in a swap", self.name)));
                                };
                                engine = returned;
                                match outcome {
                                    TakeOver::Force(swap, diff) => Some((swap, diff)),
                                    TakeOver::Done(outcome) => {
                                        let failed = outcome.is_err();
                                        self.count_swap(outcome.map_err(|e| e.to_string()));
                                        if failed {
                                            continue;
                                        }
                                        None
                                    }
                                }
                            }
                        };
                        if let Some((swap, diff)) = forced {
                            let tick_no = self.status.borrow().ticks + 1;
                            let (returned, report, result, outcome) = swap::force(engine, swap, diff.clone(), tick_no).await;
                            self.record_recovery(tick_no, clock.now_ms(), &report);
                            let failed = outcome.is_err();
                            self.count_swap(outcome.map_err(|e| e.to_string()));
                            match (returned, result) {
                                (Some(returned), Ok(())) => engine = returned,
                                (_, Err(e)) => return Err(self.fail(e)),
                                (None, Ok(())) => return Err(self.fail(anyhow!("tenant {}: the engine was lost in a swap", self.name))),
                            }
                            if failed {
                                continue;
                            }
                            self.status.send_modify(|s| {
                                s.swaps_forced += 1;
                                s.last_swap_divergence = Some(diff);
                            });
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
            // Inputs that arrive during a backoff wait for the tick that ends it.
            if self.backoff_until.is_some_and(|until| clock.now_ms() < until) {
                continue;
            }
            self.backoff_until = None;
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
            let job = move || {
                let mut report = TickReport::default();
                let result = engine.iterate(tick_no, now, (events, completions), StatusRead::AfterTick, &mut report);
                (engine, report, result)
            };
            let demoted = self.backoff.is_some_and(|p| p.low_priority) && self.status.borrow().consecutive_traps > 0;
            let work =
                if demoted { on_low_priority_thread(job).await } else { tokio::task::spawn_blocking(job).await.map_err(|e| e.to_string()) };
            let (returned, report, result) = match work {
                Ok(done) => done,
                // Guest calls run under `catch_unwind`; only the host's own code could get here.
                Err(e) => return Err(self.fail(anyhow!("tenant {}: the tick task failed: {e}", self.name))),
            };
            engine = returned;
            self.record_recovery(tick_no, now, &report);
            for id in completed {
                self.labels.remove(&id);
            }
            if let Err(e) = result {
                return Err(self.fail(e));
            }
            next_wake = report.tick.outcome.next_wake_ms;
            let backoff = self.back_off(now, report.last_trap.as_deref());
            self.after_tick(now, report.tick, report.status.unwrap_or_default(), backoff, engine.driver.wit_package());
        }
        self.status.send_modify(|s| s.stopped = true);
        Ok(engine.driver)
    }

    /// Counts a swap or a refusal in the status.
    fn count_swap(&self, outcome: std::result::Result<(), String>) {
        self.status.send_modify(|s| match outcome {
            Ok(()) => s.swaps += 1,
            Err(e) => {
                s.swaps_refused += 1;
                s.last_swap_error = Some(brief_reason(&e));
            }
        });
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

    /// After a tick the tenant went on from: when the engine trapped in it, delays the next tick
    /// (longer for each such tick in a row); after enough clean ticks, forgets the traps. What
    /// changes in the status is published with the tick ([`TenantLoop::after_tick`]), so that a
    /// reader never sees the tick without its backoff.
    fn back_off(&mut self, now: u64, trap: Option<&str>) -> Option<BackoffChange> {
        let policy = self.backoff?;
        let Some(trap) = trap else {
            self.clean_ticks = self.clean_ticks.saturating_add(1);
            if self.clean_ticks >= policy.reset_after_clean_ticks && self.status.borrow().consecutive_traps > 0 {
                tracing::info!(tenant = %self.name, clean_ticks = self.clean_ticks, "engine ticks cleanly again; backoff over");
                return Some(BackoffChange { consecutive_traps: 0, backoff: None, warning: None });
            }
            return None;
        };
        self.clean_ticks = 0;
        let consecutive = self.status.borrow().consecutive_traps.saturating_add(1);
        let delay = policy.delay(consecutive);
        self.backoff_until = Some(now.saturating_add(delay.as_millis().min(u64::MAX as u128) as u64));
        let warning = format!(
            "the engine trapped or hit a sandbox limit in {consecutive} tick(s) in a row; its next tick waits {} (last: {trap})",
            humanize(delay)
        );
        tracing::warn!(tenant = %self.name, consecutive_traps = consecutive, backoff_ms = delay.as_millis() as u64, reason = %trap, "engine backed off");
        Some(BackoffChange { consecutive_traps: consecutive, backoff: Some(delay), warning: Some(warning) })
    }

    /// Publishes the traps, restarts and quarantined inputs of one tick.
    fn record_recovery(&mut self, tick_no: u64, now: u64, report: &TickReport) {
        if let Some(bytes) = report.checkpoint_bytes {
            self.status.send_modify(|s| s.checkpoint_bytes = bytes as u64);
        }
        if report.traps > 0 {
            self.status.send_modify(|s| s.traps += report.traps);
        }
        if report.restarts == 0 && report.quarantined.is_empty() {
            return;
        }
        let mut dropped = Vec::new();
        for d in &report.quarantined {
            let (kind, summary) = match &d.input {
                Input::Event(e) => (QuarantinedKind::Event, event_summary(e)),
                Input::Completion(c) => (QuarantinedKind::Completion(c.id), completion_summary(c, self.labels.get(&c.id).copied())),
            };
            let reason = brief_reason(&d.reason);
            tracing::error!(tenant = %self.name, input = %summary, reason = %reason, "input quarantined: the engine traps on it");
            if let Input::Event(e) = &d.input {
                if let Some(warning) = quarantine_warning(e, &d.reason) {
                    self.observe(TenantEvent::EventRecorded(warning.clone()));
                    self.runner.backends.kube.record_event(warning);
                }
            }
            dropped.push(Quarantined { tick: tick_no, at_ms: now, kind, summary, reason });
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

    fn after_tick(&mut self, now: u64, tick: TickResult, engine: EngineStatus, backoff: Option<BackoffChange>, wit: Option<&'static str>) {
        for (id, call) in tick.started {
            tracing::info!(tenant = %self.name, call_id = id, label = call.label(), identity = %call_identity(&call), "call started");
            self.observe(TenantEvent::CallStarted { id, call: call.clone() });
            self.outstanding += 1;
            self.labels.insert(id, call.label());
            self.runner.spawn(id, call);
        }
        for event in tick.events {
            tracing::info!(
                tenant = %self.name,
                reason = %short(&event.reason, 128),
                object = %short(&event.target.name, 128),
                "event recorded"
            );
            self.observe(TenantEvent::EventRecorded(event.clone()));
            self.runner.backends.kube.record_event(event);
        }
        let previous_init = self.status.borrow().engine.initialization.clone();
        if engine.initialization != previous_init {
            match &engine.initialization.error {
                Some(e) if previous_init.error.as_ref() != Some(e) => {
                    tracing::warn!(tenant = %self.name, error = %e, attempts = engine.initialization.failed_attempts, "engine start-up failed; retrying")
                }
                _ if engine.initialization.phase != previous_init.phase => {
                    tracing::info!(tenant = %self.name, phase = engine.initialization.phase.label(), "engine start-up phase")
                }
                _ => {}
            }
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
            s.wit = wit;
            if let Some(change) = backoff {
                s.consecutive_traps = change.consecutive_traps;
                s.backoff = change.backoff;
                s.warning = change.warning;
            }
        });
    }

    fn observe(&self, event: TenantEvent) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(event);
        }
    }
}

/// The backoff fields of the status after a tick.
struct BackoffChange {
    consecutive_traps: u32,
    backoff: Option<std::time::Duration>,
    warning: Option<String>,
}

/// `250 ms`, `1.6 s`, `30 s`.
fn humanize(delay: std::time::Duration) -> String {
    if delay < std::time::Duration::from_secs(1) {
        format!("{} ms", delay.as_millis())
    } else {
        format!("{:.1} s", delay.as_secs_f64())
    }
}

/// Runs `job` on a thread of its own at the lowest CPU priority (nice 19; Linux sets it per
/// thread), so that the ticks of a tenant whose engine keeps hitting its CPU deadline yield the
/// cores to every other tenant's instead of taking their share. A thread per tick, since an
/// unprivileged thread cannot raise its priority again (starting one costs tens of microseconds;
/// a backed-off tenant ticks rarely).
async fn on_low_priority_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tick-low-priority".into())
        .spawn(move || {
            lower_this_threads_priority();
            let _ = tx.send(job());
        })
        .map_err(|e| format!("cannot start a low-priority thread for the tick: {e}"))?;
    rx.await.map_err(|_| "the low-priority tick thread ended without an answer".to_string())
}

fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id; a failure leaves the priority as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
            tracing::debug!("cannot lower the tick thread's priority");
        }
    }
}
