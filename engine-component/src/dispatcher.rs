//! The ServiceUpdater (ENGINE.md 4.3, 6): which operations run, and when.
//!
//! Upstream scans every op on each trigger; here a trigger names its identity and lands in a
//! FIFO runnable queue (deduplicated), and retry/park timers live in an ordered set of
//! `(deadline, identity)` with one timer per identity. On each tick the dispatcher pops runnable
//! identities, applies `retryGate`, and starts a worker while fewer than
//! the tenant's cap ([`MAX_CONCURRENT_OPERATIONS`] by default) are in flight. A started worker holds the identity's active slot
//! until its completion has been applied, so there is at most one worker per identity.

use crate::backoff::{MAX_SERVICE_RETRIES, OPERATION_TIMEOUT_MS, PARK_COOLDOWN_MS};
use crate::config::ServiceKind;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{CallId, Io};
use crate::metrics;
use crate::state::ResourceState;
use crate::timers::{Timer, TimerTable};
use crate::workers::{ActiveOp, AttemptFailure, Work, WorkerResult};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// The ServiceUpdater semaphore.
pub const MAX_CONCURRENT_OPERATIONS: usize = 10;

/// Its deadlines (retry timers, attempt deadlines) are armed in the engine's [`TimerTable`]
/// too; the snapshot keeps the ordered sets it had before that table existed (`timers`,
/// `deadlines`), written from `retry_at` and the workers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "DispatcherSnapshot")]
pub struct Dispatcher {
    runnable: VecDeque<Identity>,
    queued: BTreeSet<Identity>,
    /// `retryGate`'s timer per identity.
    retry_at: BTreeMap<Identity, u64>,
    pub(crate) active: BTreeMap<Identity, ActiveOp>,
    /// Call id -> identity of the worker awaiting it.
    pub(crate) calls: BTreeMap<CallId, Identity>,
}

/// The dispatcher as snapshots hold it.
#[derive(Deserialize)]
struct DispatcherSnapshot {
    runnable: VecDeque<Identity>,
    queued: BTreeSet<Identity>,
    /// Derived from `timer_of`; read so a snapshot keeps being checked as before.
    #[allow(dead_code)]
    timers: BTreeSet<(u64, Identity)>,
    timer_of: BTreeMap<Identity, u64>,
    active: BTreeMap<Identity, ActiveOp>,
    /// Derived from the workers' deadlines; read for the same reason.
    #[allow(dead_code)]
    deadlines: BTreeSet<(u64, Identity)>,
    calls: BTreeMap<CallId, Identity>,
}

impl From<DispatcherSnapshot> for Dispatcher {
    fn from(s: DispatcherSnapshot) -> Dispatcher {
        Dispatcher { runnable: s.runnable, queued: s.queued, retry_at: s.timer_of, active: s.active, calls: s.calls }
    }
}

impl Serialize for Dispatcher {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let timers: BTreeSet<(u64, &Identity)> = self.retry_at.iter().map(|(id, at)| (*at, id)).collect();
        let deadlines: BTreeSet<(u64, &Identity)> = self.active.iter().map(|(id, a)| (a.deadline_ms, id)).collect();
        let mut s = serializer.serialize_struct("Dispatcher", 7)?;
        s.serialize_field("runnable", &self.runnable)?;
        s.serialize_field("queued", &self.queued)?;
        s.serialize_field("timers", &timers)?;
        s.serialize_field("timer_of", &self.retry_at)?;
        s.serialize_field("active", &self.active)?;
        s.serialize_field("deadlines", &deadlines)?;
        s.serialize_field("calls", &self.calls)?;
        s.end()
    }
}

impl Dispatcher {
    pub fn is_queued(&self, id: &Identity) -> bool {
        self.queued.contains(id)
    }
    pub fn runnable_len(&self) -> usize {
        self.runnable.len()
    }
    /// When `id`'s retry timer fires, if armed.
    pub fn timer(&self, id: &Identity) -> Option<u64> {
        self.retry_at.get(id).copied()
    }
    pub fn timer_count(&self) -> usize {
        self.retry_at.len()
    }
    pub fn in_flight(&self) -> usize {
        self.active.len()
    }
    pub fn is_active(&self, id: &Identity) -> bool {
        self.active.contains_key(id)
    }
    pub fn active_op(&self, id: &Identity) -> Option<&ActiveOp> {
        self.active.get(id)
    }
    pub fn awaited_calls(&self) -> usize {
        self.calls.len()
    }
    pub fn has_runnable(&self) -> bool {
        !self.runnable.is_empty()
    }
    pub(crate) fn push(&mut self, id: &Identity) -> bool {
        if self.queued.insert(id.clone()) {
            self.runnable.push_back(id.clone());
            true
        } else {
            false
        }
    }
    fn pop(&mut self) -> Option<Identity> {
        let id = self.runnable.pop_front()?;
        self.queued.remove(&id);
        Some(id)
    }
    /// Arms (or re-arms) `id`'s retry timer.
    pub(crate) fn arm(&mut self, timers: &mut TimerTable, id: &Identity, at: u64) {
        self.retry_at.insert(id.clone(), at);
        timers.set(Timer::OperationRetry(id.clone()), at);
    }
    pub(crate) fn disarm(&mut self, timers: &mut TimerTable, id: &Identity) {
        if self.retry_at.remove(id).is_some() {
            timers.stop(&Timer::OperationRetry(id.clone()));
        }
    }
    /// Stops and returns every retry timer due at `now`, earliest first.
    fn take_due_retries(&mut self, timers: &mut TimerTable, now: u64) -> Vec<Identity> {
        let due: Vec<Identity> = timers
            .expired(now)
            .filter_map(|t| match t {
                Timer::OperationRetry(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        for id in &due {
            self.disarm(timers, id);
        }
        due
    }
    pub(crate) fn add_active(&mut self, timers: &mut TimerTable, id: &Identity, op: ActiveOp) {
        timers.set(Timer::OperationTimeout(id.clone()), op.deadline_ms);
        self.active.insert(id.clone(), op);
    }
    pub(crate) fn remove_active(&mut self, timers: &mut TimerTable, id: &Identity) -> Option<ActiveOp> {
        let op = self.active.remove(id)?;
        timers.stop(&Timer::OperationTimeout(id.clone()));
        if let Some(c) = op.call {
            self.calls.remove(&c);
        }
        Some(op)
    }
    /// Arms the table from this state (after a restore).
    pub(crate) fn rearm(&self, timers: &mut TimerTable) {
        for (id, at) in &self.retry_at {
            timers.set(Timer::OperationRetry(id.clone()), *at);
        }
        for (id, a) in &self.active {
            timers.set(Timer::OperationTimeout(id.clone()), a.deadline_ms);
        }
    }
}

/// What retryGate decided.
enum Gate {
    Dispatch,
    Skip,
}

impl Engine {
    /// The ServiceUpdater trigger: makes `id` dispatchable on the next dispatcher pass.
    pub(crate) fn trigger_dispatch(&mut self, id: &Identity) {
        self.dispatcher.push(id);
    }

    /// Moves due retry/park timers to the runnable queue.
    pub(crate) fn fire_retry_timers(&mut self) {
        for id in self.dispatcher.take_due_retries(&mut self.timers, self.now_ms) {
            self.dispatcher.push(&id);
        }
    }

    /// Fails every operation whose 5-minute attempt deadline passed (a transient `timeout`);
    /// its late completion is then ignored.
    pub(crate) fn fire_operation_timeouts(&mut self) {
        let expired: Vec<Identity> = self
            .timers
            .expired(self.now_ms)
            .filter_map(|t| match t {
                Timer::OperationTimeout(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        for id in expired {
            self.finish_worker(&id, WorkerResult::Failed(AttemptFailure::timeout()));
        }
    }

    /// One dispatcher pass: pops runnable identities while worker slots are free.
    pub(crate) fn dispatch(&mut self, io: &mut dyn Io) {
        while self.dispatcher.active.len() < self.config.operations_cap() {
            let Some(id) = self.dispatcher.pop() else { break };
            self.dispatch_one(&id, io);
        }
    }

    fn dispatch_one(&mut self, id: &Identity, io: &mut dyn Io) {
        if self.dispatcher.is_active(id) {
            return; // The completion re-queues it.
        }
        let Some(op) = self.ops.get(id) else { return };
        let kind = op.kind();
        let needs_families = kind == ServiceKind::Outbound && op.config.outbound_config().is_none();
        let work = match op.state {
            ResourceState::NotStarted => {
                if op.creation_failed_terminal {
                    return;
                }
                Work::Create
            }
            ResourceState::UpdateInProgress => Work::Update,
            ResourceState::DeletionInProgress => Work::Delete,
            _ => return,
        };
        if let Gate::Skip = self.retry_gate(id) {
            return;
        }
        // An outbound create without decided families (an op created for a deletion, then
        // recreated) decides them now, once for this creation (2.6).
        let families = (needs_families && work == Work::Create).then(|| self.outbound_ip_families());
        let now = self.now_ms;
        let Some(config) = self.update_op(id, |op| {
            if let Some(f) = families {
                op.config = Arc::new(crate::config::ServiceConfig::outbound(op.config.identity.clone(), f, op.triggering_pod.clone()));
            }
            if work == Work::Create {
                op.state = ResourceState::CreationInProgress;
            }
            if work != Work::Delete {
                op.in_flight_config = Some(op.config.clone());
            }
            op.operation_started_at_ms = Some(now);
            op.last_attempt_ms = Some(now);
            op.not_before_ms = None;
            op.config.clone()
        }) else {
            return;
        };
        self.dispatcher.disarm(&mut self.timers, id);
        let active = ActiveOp::new(work, config, now, now.saturating_add(OPERATION_TIMEOUT_MS));
        self.dispatcher.add_active(&mut self.timers, id, active);
        self.start_worker(id, io);
    }

    /// `retryGate` (4.3), for NotStarted, UpdateInProgress and DeletionInProgress; first of all
    /// the server's `Retry-After` hold.
    fn retry_gate(&mut self, id: &Identity) -> Gate {
        let now = self.now_ms;
        let Some(op) = self.ops.get(id) else { return Gate::Skip };
        let (count, parked, next, kind, state) = (op.retry_count, op.retries_exhausted, op.next_retry_at_ms, op.kind(), op.state);
        if let Some(at) = op.not_before_ms.filter(|at| now < *at) {
            // The server's Retry-After: nothing (not even fresh intent) starts earlier.
            self.dispatcher.arm(&mut self.timers, id, at);
            return Gate::Skip;
        }
        if count >= MAX_SERVICE_RETRIES && !parked {
            self.update_op(id, |op| {
                op.retries_exhausted = true;
                op.next_retry_at_ms = Some(now.saturating_add(PARK_COOLDOWN_MS));
            });
            self.metrics.inc(metrics::SERVICE_OPERATIONS_PARKED_TOTAL, &[("reason", "retries_exceeded")]);
            let operation = match state {
                ResourceState::DeletionInProgress => "delete",
                ResourceState::UpdateInProgress => "update",
                _ => "create",
            };
            self.metrics.observe(
                metrics::SERVICE_OPERATION_RETRIES,
                &[("operation", operation), ("service_type", kind.label())],
                metrics::RETRY_BUCKETS,
                count as f64,
            );
            self.dispatcher.arm(&mut self.timers, id, now.saturating_add(PARK_COOLDOWN_MS));
            return Gate::Skip;
        }
        if parked {
            let until = next.unwrap_or(now);
            if now >= until {
                self.update_op(id, |op| op.reset());
                return Gate::Dispatch;
            }
            self.dispatcher.arm(&mut self.timers, id, until);
            return Gate::Skip;
        }
        if let Some(at) = next {
            if now < at {
                self.dispatcher.arm(&mut self.timers, id, at);
                return Gate::Skip;
            }
        }
        Gate::Dispatch
    }
}
