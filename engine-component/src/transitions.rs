//! The service rows of the transition table (ENGINE.md 4.2): `AddService`, `UpdateService`,
//! `DeleteService`, `UpdateEndpoints`, `OnServiceCreationComplete` (the end of every worker
//! attempt, either kind) and `CheckPendingServiceDeletions`, with the state they own: the endpoint
//! deltas buffered while a service is not live (3.4) and the pending service deletions (3.5).
//!
//! They start no call themselves: they queue work for the dispatcher and the LocationsUpdater,
//! which the next tick runs.

use crate::backoff::{backoff_ms, throttle_hold_ms};
use crate::config::{ServiceConfig, ServiceKind};
use crate::endpoints::{removals, EndpointMap};
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::ObjectRef;
use crate::metrics;
use crate::names::REASON_CONFIGURATION_REJECTED;
use crate::state::ResourceState;
use crate::workers::{ActiveOp, AttemptFailure, AttemptResult};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An endpoint delta buffered while the service is not live (`pendingEndpoints`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDelta {
    pub old: EndpointMap,
    pub new: EndpointMap,
    pub at_ms: u64,
}

/// A `pendingServiceDeletions` entry: waiting for the service's NRP addresses to drain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDeletion {
    pub is_inbound: bool,
    pub at_ms: u64,
}

impl Engine {
    // ------------------------------------------------------------------ entry points

    /// `AddService`: starts tracking an unknown identity in NotStarted.
    pub fn add_service(&mut self, config: ServiceConfig) {
        let id = config.identity.clone();
        if id.is_empty() || id.is_reserved() || self.ops.contains(&id) {
            return;
        }
        match config.kind() {
            ServiceKind::Inbound => {
                if self.nrp.has_load_balancer(&id) {
                    return;
                }
            }
            // Outbound ops are created by the egress half (AddPod).
            ServiceKind::Outbound => return,
        }
        let op = self.new_op(config, ResourceState::NotStarted);
        self.insert_op(&id, op);
        let seed = self.endpoints.seed(&id);
        if !seed.is_empty() {
            self.update_endpoints(&id, &EndpointMap::new(), &seed);
        }
        self.trigger_dispatch(&id);
    }

    /// `UpdateService` (inbound only; delegates to `AddService` when unknown).
    pub fn update_service(&mut self, config: ServiceConfig) {
        if config.kind() != ServiceKind::Inbound {
            return;
        }
        let id = config.identity.clone();
        if id.is_empty() {
            return;
        }
        let now = self.now_ms;
        if self.ops.get(&id).is_some_and(|o| o.kind() != ServiceKind::Inbound) {
            // An egress identity equal to this UID: the Service is not provisioned over it.
            return;
        }
        let Some(op) = self.ops.get(&id) else {
            if self.nrp.has_load_balancer(&id) {
                // Adopt a registered LB: one re-PUT (no LastAppliedConfig).
                let op = self.new_op(config, ResourceState::UpdateInProgress);
                self.insert_op(&id, op);
                let seed = self.endpoints.seed(&id);
                if !seed.is_empty() {
                    self.update_endpoints(&id, &EndpointMap::new(), &seed);
                }
                self.trigger_dispatch(&id);
            } else {
                self.add_service(config);
            }
            return;
        };
        match op.state {
            ResourceState::Created => {
                let changed = op.last_applied_config.as_ref().is_none_or(|l| !l.same_spec(&config));
                if changed {
                    self.update_op(&id, |op| {
                        op.config = Arc::new(config);
                        op.state = ResourceState::UpdateInProgress;
                        op.reset();
                    });
                    self.trigger_dispatch(&id);
                }
            }
            ResourceState::NotStarted if op.creation_failed_terminal => {
                if !op.config.same_spec(&config) {
                    self.update_op(&id, |op| {
                        op.config = Arc::new(config);
                        op.creation_failed_terminal = false;
                        op.state = ResourceState::NotStarted;
                        op.reset();
                    });
                    self.trigger_dispatch(&id);
                }
            }
            ResourceState::NotStarted | ResourceState::CreationInProgress | ResourceState::UpdateInProgress => {
                let changed = !op.config.same_spec(&config);
                let parked = op.retries_exhausted;
                let cooled = parked && op.next_retry_at_ms.is_none_or(|t| now >= t);
                self.update_op(&id, |op| {
                    op.config = Arc::new(config);
                    if changed || cooled {
                        op.reset();
                    }
                });
                if (changed && parked) || (!changed && cooled) {
                    self.trigger_dispatch(&id);
                }
            }
            ResourceState::DeletionPending | ResourceState::DeletionInProgress => {
                self.update_op(&id, |op| {
                    op.config = Arc::new(config);
                    op.recreate_after_deletion = true;
                });
                let seed = self.endpoints.seed(&id);
                if !seed.is_empty() {
                    self.buffer_delta(&id, &EndpointMap::new(), &seed);
                }
            }
            ResourceState::Unknown(_) => {}
        }
    }

    /// `DeleteService(identity, inbound, orphan)`.
    pub fn delete_service(&mut self, id: &Identity, inbound: bool, orphan: bool) {
        if id.is_empty() || id.is_reserved() {
            return;
        }
        let kind = if inbound { ServiceKind::Inbound } else { ServiceKind::Outbound };
        if self.ops.get(id).is_some_and(|o| o.kind() != kind) {
            // Kind collision (one key space): never tear down the other kind's service.
            return;
        }
        match self.ops.get(id).map(|o| (o.state, o.retries_exhausted)) {
            Some((
                ResourceState::NotStarted | ResourceState::CreationInProgress | ResourceState::Created | ResourceState::UpdateInProgress,
                _,
            )) => {
                self.update_op(id, |op| {
                    op.state = ResourceState::DeletionPending;
                    op.reset();
                });
                self.deletion_tail(id, inbound);
            }
            Some((ResourceState::DeletionPending | ResourceState::DeletionInProgress, parked)) => {
                let cancelled = self
                    .update_op(id, |op| {
                        let cancelled = std::mem::replace(&mut op.recreate_after_deletion, false);
                        if parked {
                            op.reset();
                        }
                        cancelled
                    })
                    .unwrap_or(false);
                if cancelled {
                    // The endpoint deltas buffered for the cancelled recreate are stale: a later
                    // recreate re-seeds from the slice cache.
                    self.drop_buffers(id);
                }
                if parked {
                    self.trigger_dispatch(id);
                }
            }
            Some((ResourceState::Unknown(_), _)) => {}
            None => {
                let exists = if inbound { self.nrp.has_load_balancer(id) } else { self.nrp.has_nat_gateway(id) };
                if !exists && !orphan {
                    return;
                }
                let kind = if inbound { ServiceKind::Inbound } else { ServiceKind::Outbound };
                let object = self.services.get(id).map(|s| s.meta.object_ref()).unwrap_or_default();
                let mut op = self.new_op(ServiceConfig::bare(id.clone(), kind, object), ResourceState::DeletionPending);
                op.is_orphan = orphan;
                self.insert_op(id, op);
                self.deletion_tail(id, inbound);
            }
        }
    }

    fn deletion_tail(&mut self, id: &Identity, inbound: bool) {
        self.drop_buffers(id);
        self.pending_pods.remove(id);
        self.add_pending_deletion(id, inbound);
        self.strip_desired(id);
        if !self.may_have_nrp_addresses(id) {
            self.update_op(id, |op| op.state = ResourceState::DeletionInProgress);
            self.remove_pending_deletion(id);
            self.trigger_dispatch(id);
        } else {
            self.trigger_location_sync();
        }
    }

    /// `UpdateEndpoints(uid, old, new)` for an inbound service.
    pub fn update_endpoints(&mut self, id: &Identity, old: &EndpointMap, new: &EndpointMap) {
        if id.is_empty() || (old.is_empty() && new.is_empty()) {
            return;
        }
        let Some(op) = self.ops.get(id) else {
            if self.nrp.has_load_balancer(id) {
                self.apply_live(id, old, new);
            }
            return;
        };
        let in_nrp = self.nrp.has_load_balancer(id);
        match (op.state, op.recreate_after_deletion) {
            (ResourceState::Created | ResourceState::UpdateInProgress, _) => self.apply_live(id, old, new),
            (ResourceState::NotStarted | ResourceState::CreationInProgress, _) => {
                if in_nrp {
                    self.apply_live(id, old, new);
                } else {
                    self.buffer_delta(id, old, new);
                }
            }
            (ResourceState::DeletionPending | ResourceState::DeletionInProgress, true) => self.buffer_delta(id, old, new),
            (ResourceState::DeletionPending, false) => {
                // Only removals: nothing may leak back after the delete succeeds.
                self.apply_delta(id, old, &EndpointMap::new());
            }
            (ResourceState::DeletionInProgress, false) | (ResourceState::Unknown(_), _) => {}
        }
    }

    /// `OnServiceCreationComplete(identity, success, err)`: the end of one worker attempt.
    pub fn on_service_creation_complete(&mut self, id: &Identity, result: AttemptResult) {
        self.complete_attempt(id, result, true)
    }

    /// `OnServiceCreationComplete`, optionally without recording an Azure attempt.
    pub(crate) fn complete_attempt(&mut self, id: &Identity, result: AttemptResult, record: bool) {
        let Some(op) = self.ops.get(id) else {
            self.metrics.inc(metrics::IGNORED_COMPLETIONS_TOTAL, &[]);
            return;
        };
        let kind = op.kind();
        let state = op.state;
        let orphan = op.is_orphan;
        let started = op.operation_started_at_ms;
        let retries = op.retry_count;
        let object = op.config.object.clone();

        // Pre-emption: a create/update completion arriving after a delete took over.
        if state == ResourceState::DeletionPending || (state == ResourceState::DeletionInProgress && op.in_flight_config.is_some()) {
            let operation = if op.last_applied_config.is_none() { "create" } else { "update" };
            if record {
                self.record_attempt(operation, kind, &result, orphan, started);
            }
            self.observe_retries(operation, kind, retries);
            self.update_op(id, |op| op.in_flight_config = None);
            if !self.may_have_nrp_addresses(id) {
                self.update_op(id, |op| op.state = ResourceState::DeletionInProgress);
                self.remove_pending_deletion(id);
                self.trigger_dispatch(id);
            } else {
                self.update_op(id, |op| op.state = ResourceState::DeletionPending);
                self.add_pending_deletion(id, kind == ServiceKind::Inbound);
                self.trigger_location_sync();
            }
            return;
        }

        match state {
            ResourceState::CreationInProgress | ResourceState::UpdateInProgress => {
                let operation = if state == ResourceState::CreationInProgress { "create" } else { "update" };
                if record {
                    self.record_attempt(operation, kind, &result, orphan, started);
                }
                match result {
                    Ok(()) => {
                        self.observe_retries(operation, kind, retries);
                        let drift = self
                            .update_op(id, |op| {
                                let applied = op.in_flight_config.take().unwrap_or_else(|| op.config.clone());
                                let drift = !op.config.same_spec(&applied);
                                op.last_applied_config = Some(applied);
                                op.reset();
                                op.state = if drift { ResourceState::UpdateInProgress } else { ResourceState::Created };
                                drift
                            })
                            .unwrap_or(false);
                        if drift {
                            self.trigger_dispatch(id);
                        }
                        if state == ResourceState::CreationInProgress {
                            self.replay_buffer(id);
                            self.replay_pods(id);
                            self.trigger_location_sync();
                        }
                    }
                    Err(f) if f.terminal => {
                        let drift = self
                            .update_op(id, |op| {
                                let drift = op.in_flight_config.as_ref().is_some_and(|c| !c.same_spec(&op.config));
                                op.in_flight_config = None;
                                op.state = ResourceState::NotStarted;
                                if drift {
                                    op.reset();
                                } else {
                                    op.creation_failed_terminal = true;
                                }
                                drift
                            })
                            .unwrap_or(false);
                        if drift {
                            self.trigger_dispatch(id);
                        } else {
                            self.metrics.inc(metrics::SERVICE_OPERATIONS_PARKED_TOTAL, &[("reason", "terminal_error")]);
                            self.observe_retries(operation, kind, retries);
                            self.queue_event(
                                object,
                                REASON_CONFIGURATION_REJECTED,
                                format!("ServiceGateway rejected the Service configuration: {}", f.message),
                            );
                        }
                    }
                    Err(f) => {
                        let n = retries.saturating_add(1);
                        let (next, not_before) = self.retry_times(n, &f);
                        self.update_op(id, |op| {
                            op.in_flight_config = None;
                            if op.state == ResourceState::CreationInProgress {
                                op.state = ResourceState::NotStarted;
                            }
                            op.retry_count = n;
                            op.next_retry_at_ms = Some(next);
                            op.not_before_ms = op.not_before_ms.max(not_before);
                        });
                        self.trigger_dispatch(id);
                    }
                }
            }
            ResourceState::DeletionInProgress => {
                if record {
                    self.record_attempt("delete", kind, &result, orphan, started);
                }
                match result {
                    Ok(()) => {
                        self.observe_retries("delete", kind, retries);
                        let recreate = self.ops.get(id).is_some_and(|o| o.recreate_after_deletion) || self.pending_pods.has_pods(id);
                        if self.egress.records.has_last_pod(id) {
                            // A last pod arrived after the worker's sweep: re-run (idempotent).
                            self.update_op(id, |op| {
                                op.reset();
                                op.creation_failed_terminal = false;
                            });
                            self.trigger_dispatch(id);
                        } else if recreate {
                            self.update_op(id, |op| {
                                op.state = ResourceState::NotStarted;
                                op.reset();
                                op.creation_failed_terminal = false;
                                op.in_flight_config = None;
                                op.last_applied_config = None;
                                op.recreate_after_deletion = false;
                                op.public_ip = None;
                            });
                            self.remove_pending_deletion(id);
                            self.trigger_dispatch(id);
                        } else {
                            self.remove_op(id);
                            self.drop_buffers(id);
                            self.pending_pods.remove(id);
                            self.remove_pending_deletion(id);
                            if orphan {
                                self.metrics.inc(metrics::ORPHANED_RESOURCES_CLEANED_TOTAL, &[]);
                            }
                        }
                    }
                    Err(f) => {
                        let n = retries.saturating_add(1);
                        let (next, not_before) = self.retry_times(n, &f);
                        self.update_op(id, |op| {
                            op.retry_count = n;
                            op.next_retry_at_ms = Some(next);
                            op.not_before_ms = op.not_before_ms.max(not_before);
                            if f.overlay {
                                op.state = ResourceState::DeletionPending;
                            }
                        });
                        if f.overlay {
                            self.strip_desired(id);
                            self.add_pending_deletion(id, kind == ServiceKind::Inbound);
                            self.trigger_location_sync();
                        } else {
                            self.trigger_dispatch(id);
                        }
                    }
                }
            }
            _ => self.metrics.inc(metrics::IGNORED_COMPLETIONS_TOTAL, &[]),
        }
    }

    /// When retry `n` after failure `f` is due (`NextRetryAt`: the backoff, or the server's
    /// capped `Retry-After` if longer) and the hold no reset may cut short (4.3).
    fn retry_times(&mut self, n: u32, f: &AttemptFailure) -> (u64, Option<u64>) {
        let backoff = backoff_ms(n, &mut self.rng);
        let hold = throttle_hold_ms(f.retry_after_ms, self.config.retry_after_cap_ms());
        let next = self.now_ms.saturating_add(backoff.max(hold.unwrap_or(0)));
        (next, hold.map(|h| self.now_ms.saturating_add(h)))
    }

    /// `CheckPendingServiceDeletions`: promotes drained deletions to DeletionInProgress.
    pub fn check_pending_service_deletions(&mut self) {
        let candidates = std::mem::take(&mut self.drain_candidates);
        for id in candidates {
            let Some(p) = self.pending_deletions.get(&id) else { continue };
            if self.may_have_nrp_addresses(&id) {
                continue;
            }
            let inbound = p.is_inbound;
            match self.ops.get(&id).map(|o| o.state) {
                None => {
                    let kind = if inbound { ServiceKind::Inbound } else { ServiceKind::Outbound };
                    let op = self.new_op(ServiceConfig::bare(id.clone(), kind, ObjectRef::default()), ResourceState::DeletionInProgress);
                    self.insert_op(&id, op);
                }
                Some(ResourceState::DeletionPending) => {
                    self.update_op(&id, |op| op.state = ResourceState::DeletionInProgress);
                }
                _ => {}
            }
            self.remove_pending_deletion(&id);
            self.trigger_dispatch(&id);
        }
        self.blocked_by_locations = self.pending_deletions.len() as u64;
    }

    /// The Service (or other worker target) is gone before any Azure call: forget it.
    pub(crate) fn drop_tracking(&mut self, id: &Identity, _active: &ActiveOp) {
        match self.ops.get(id).map(|o| o.state) {
            Some(s) if s.is_deleting() => {
                // A delete took over meanwhile: let it run (deletes are 404-safe).
                self.on_service_creation_complete(id, Err(AttemptFailure::transient("not_found", "service gone or replaced")));
            }
            Some(_) => {
                self.remove_op(id);
                self.drop_buffers(id);
                self.remove_pending_deletion(id);
            }
            None => {}
        }
    }

    // ------------------------------------------------------------------ pending deletions

    pub(crate) fn note_drain_candidate(&mut self, id: &Identity) {
        if self.pending_deletions.contains_key(id) && !self.nrp.has_addresses_for(id) {
            self.drain_candidates.insert(id.clone());
        }
    }

    pub(crate) fn add_pending_deletion(&mut self, id: &Identity, is_inbound: bool) {
        let now = self.now_ms;
        self.pending_deletions.entry(id.clone()).or_insert(PendingDeletion { is_inbound, at_ms: now });
        self.note_drain_candidate(id);
    }

    pub(crate) fn remove_pending_deletion(&mut self, id: &Identity) {
        self.pending_deletions.remove(id);
        self.drain_candidates.remove(id);
    }

    // ------------------------------------------------------------------ endpoint buffers

    pub(crate) fn drop_buffers(&mut self, id: &Identity) {
        if let Some(v) = self.buffers.remove(id) {
            self.buffered_deltas -= v.len();
        }
    }

    fn buffer_delta(&mut self, id: &Identity, old: &EndpointMap, new: &EndpointMap) {
        let at_ms = self.now_ms;
        self.buffers.entry(id.clone()).or_default().push(EndpointDelta { old: old.clone(), new: new.clone(), at_ms });
        self.buffered_deltas += 1;
    }

    /// Applies an endpoint delta to desired state: removals, then additions (all of `new`, so an
    /// address an earlier add skipped is recorded now).
    fn apply_delta(&mut self, id: &Identity, old: &EndpointMap, new: &EndpointMap) {
        for (addr, loc) in removals(old, new) {
            if self.desired.remove_inbound(id, loc, addr) {
                self.mark_dirty(loc, addr);
            }
        }
        for (addr, loc) in new {
            if self.desired.add_inbound(id, loc, addr) {
                self.mark_dirty(loc, addr);
            }
        }
    }

    /// Replays buffered deltas in order.
    fn replay_buffer(&mut self, id: &Identity) {
        let Some(deltas) = self.buffers.remove(id) else { return };
        self.buffered_deltas -= deltas.len();
        for d in deltas {
            self.apply_delta(id, &d.old, &d.new);
        }
        self.trigger_location_sync();
    }

    fn apply_live(&mut self, id: &Identity, old: &EndpointMap, new: &EndpointMap) {
        // Older buffered deltas go first, so nothing is applied out of order.
        self.replay_buffer(id);
        self.apply_delta(id, old, new);
        self.trigger_location_sync();
    }

    // ------------------------------------------------------------------ attempt metrics

    fn record_attempt(&mut self, operation: &str, kind: ServiceKind, result: &AttemptResult, is_orphan: bool, started: Option<u64>) {
        let (res, code) = match result {
            Ok(()) => ("success", ""),
            Err(f) => ("error", f.error_code.as_str()),
        };
        let orphan = if is_orphan { "true" } else { "false" };
        self.metrics.inc(
            metrics::SERVICE_OPERATIONS_TOTAL,
            &[("operation", operation), ("service_type", kind.label()), ("result", res), ("error_code", code), ("is_orphan", orphan)],
        );
        let secs = started.map_or(0.0, |s| self.now_ms.saturating_sub(s) as f64 / 1000.0);
        self.metrics.observe(
            metrics::SERVICE_OPERATION_DURATION_SECONDS,
            &[("operation", operation), ("service_type", kind.label())],
            metrics::DURATION_BUCKETS,
            secs,
        );
    }

    fn observe_retries(&mut self, operation: &str, kind: ServiceKind, retries: u32) {
        self.metrics.observe(
            metrics::SERVICE_OPERATION_RETRIES,
            &[("operation", operation), ("service_type", kind.label())],
            metrics::RETRY_BUCKETS,
            retries as f64,
        );
    }
}
