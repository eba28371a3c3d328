//! The ServiceUpdater (ENGINE.md 4.3, 6): which operations run, and when.
//!
//! Upstream scans every op on each trigger; here a trigger names its identity and lands in a
//! FIFO runnable queue (deduplicated), and retry/park timers live in an ordered set of
//! `(deadline, identity)` with one timer per identity. On each tick the dispatcher pops runnable
//! identities, applies `retryGate`, and starts a worker while fewer than
//! [`MAX_CONCURRENT_OPERATIONS`] are in flight. A started worker holds the identity's active slot
//! until its completion has been applied, so there is at most one worker per identity.

use crate::backoff::{MAX_SERVICE_RETRIES, OPERATION_TIMEOUT_MS, PARK_COOLDOWN_MS};
use crate::config::ServiceKind;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{CallId, Io};
use crate::metrics;
use crate::state::ResourceState;
use crate::workers::{ActiveOp, Work};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The ServiceUpdater semaphore.
pub const MAX_CONCURRENT_OPERATIONS: usize = 10;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Dispatcher {
    runnable: VecDeque<Identity>,
    queued: BTreeSet<Identity>,
    timers: BTreeSet<(u64, Identity)>,
    timer_of: BTreeMap<Identity, u64>,
    pub(crate) active: BTreeMap<Identity, ActiveOp>,
    deadlines: BTreeSet<(u64, Identity)>,
    /// Call id -> identity of the worker awaiting it.
    pub(crate) calls: BTreeMap<CallId, Identity>,
}

impl Dispatcher {
    pub fn is_queued(&self, id: &Identity) -> bool {
        self.queued.contains(id)
    }
    pub fn runnable_len(&self) -> usize {
        self.runnable.len()
    }
    pub fn timer(&self, id: &Identity) -> Option<u64> {
        self.timer_of.get(id).copied()
    }
    pub fn timer_count(&self) -> usize {
        self.timers.len()
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
    pub(crate) fn arm(&mut self, id: &Identity, at: u64) {
        if let Some(old) = self.timer_of.insert(id.clone(), at) {
            self.timers.remove(&(old, id.clone()));
        }
        self.timers.insert((at, id.clone()));
    }
    pub(crate) fn disarm(&mut self, id: &Identity) {
        if let Some(old) = self.timer_of.remove(id) {
            self.timers.remove(&(old, id.clone()));
        }
    }
    /// Pops every timer due at `now`.
    fn due_timers(&mut self, now: u64) -> Vec<Identity> {
        let mut out = Vec::new();
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id.clone()));
            self.timer_of.remove(&id);
            out.push(id);
        }
        out
    }
    pub(crate) fn add_active(&mut self, id: &Identity, op: ActiveOp) {
        self.deadlines.insert((op.deadline_ms, id.clone()));
        self.active.insert(id.clone(), op);
    }
    pub(crate) fn remove_active(&mut self, id: &Identity) -> Option<ActiveOp> {
        let op = self.active.remove(id)?;
        self.deadlines.remove(&(op.deadline_ms, id.clone()));
        if let Some(c) = op.call {
            self.calls.remove(&c);
        }
        Some(op)
    }
    fn expired(&self, now: u64) -> Vec<Identity> {
        self.deadlines.iter().take_while(|(d, _)| *d <= now).map(|(_, id)| id.clone()).collect()
    }
    /// Earliest timer or op deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        let t = self.timers.first().map(|(t, _)| *t);
        let d = self.deadlines.first().map(|(d, _)| *d);
        match (t, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    pub fn has_runnable(&self) -> bool {
        !self.runnable.is_empty()
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
    pub(crate) fn fire_timers(&mut self) {
        for id in self.dispatcher.due_timers(self.now_ms) {
            self.dispatcher.push(&id);
        }
    }

    /// Fails every operation whose 5-minute attempt deadline passed (a transient `timeout`);
    /// its late completion is then ignored.
    pub(crate) fn fire_timeouts(&mut self) {
        for id in self.dispatcher.expired(self.now_ms) {
            self.finish_worker(&id, crate::workers::WorkerResult::Failed(crate::workers::AttemptFailure::timeout()));
        }
    }

    /// One dispatcher pass: pops runnable identities while worker slots are free.
    pub(crate) fn dispatch(&mut self, io: &mut dyn Io) {
        while self.dispatcher.active.len() < MAX_CONCURRENT_OPERATIONS {
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
        let Some(config) = self
            .update_op(id, |op| {
                if let Some(f) = families {
                    op.config = crate::config::ServiceConfig::outbound(op.config.identity.clone(), f, op.triggering_pod.clone());
                }
                if work == Work::Create {
                    op.state = ResourceState::CreationInProgress;
                }
                if work != Work::Delete {
                    op.in_flight_config = Some(op.config.clone());
                }
                op.operation_started_at_ms = Some(now);
                op.last_attempt_ms = Some(now);
                op.config.clone()
            })
        else {
            return;
        };
        self.dispatcher.disarm(id);
        let active = ActiveOp::new(work, config, now, now.saturating_add(OPERATION_TIMEOUT_MS));
        self.dispatcher.add_active(id, active);
        self.start_worker(id, io);
    }

    /// `retryGate` (4.3), for NotStarted, UpdateInProgress and DeletionInProgress.
    fn retry_gate(&mut self, id: &Identity) -> Gate {
        let now = self.now_ms;
        let Some(op) = self.ops.get(id) else { return Gate::Skip };
        let (count, parked, next, kind, state) = (op.retry_count, op.retries_exhausted, op.next_retry_at_ms, op.kind(), op.state);
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
            self.metrics.observe(metrics::SERVICE_OPERATION_RETRIES, &[("operation", operation), ("service_type", kind.label())], metrics::RETRY_BUCKETS, count as f64);
            self.dispatcher.arm(id, now.saturating_add(PARK_COOLDOWN_MS));
            return Gate::Skip;
        }
        if parked {
            let until = next.unwrap_or(now);
            if now >= until {
                self.update_op(id, |op| op.reset());
                return Gate::Dispatch;
            }
            self.dispatcher.arm(id, until);
            return Gate::Skip;
        }
        if let Some(at) = next {
            if now < at {
                self.dispatcher.arm(id, at);
                return Gate::Skip;
            }
        }
        Gate::Dispatch
    }
}
