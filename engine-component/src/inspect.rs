//! Per-operation inspection: [`Engine::operation_statuses`], the engine's own account of each
//! tracked Service and egress identity (state, retries, next attempt, what it waits for). The
//! host shows it on its status page and in `difftracker explain`, and the replay draws it on its
//! timeline. Read-only and O(operations).

use crate::engine::Engine;
use crate::io::OperationStatus;
use crate::state::ResourceState;
use std::collections::BTreeMap;

impl Engine {
    /// Every tracked operation, in identity order.
    pub fn operation_statuses(&self) -> Vec<OperationStatus> {
        let mut draining: BTreeMap<&str, usize> = BTreeMap::new();
        for record in self.egress.records.all().values() {
            *draining.entry(record.service_uid.as_str()).or_insert(0) += 1;
        }
        let ready = self.startup.is_ready();
        self.operations()
            .map(|(id, op)| {
                let timer = self.dispatcher.timer(id);
                let next_retry_at_ms = match (timer, op.not_before_ms) {
                    (Some(t), Some(n)) => Some(t.max(n)),
                    (t, n) => t.or(n),
                };
                let in_flight = self.dispatcher.is_active(id);
                let queued = self.dispatcher.is_queued(id);
                let buffered = self.buffered_endpoints(id).len() as u32;
                let pending_deletion = self.pending_deletion(id);
                let drains = draining.get(id.as_str()).copied().unwrap_or(0);
                // The first thing that holds it, in the order the engine would clear them.
                let waiting_for = if !ready {
                    "the init gate: the start-up pass has not finished".to_string()
                } else if in_flight {
                    "its cloud call in flight".to_string()
                } else if op.creation_failed_terminal {
                    "a spec change: the last attempt failed with a terminal error".to_string()
                } else if let Some(at) = next_retry_at_ms.filter(|_| op.retries_exhausted) {
                    format!("the park cooldown: retries exhausted, re-armed at {at} ms")
                } else if let Some(at) = next_retry_at_ms {
                    match op.not_before_ms {
                        Some(n) if n >= timer.unwrap_or(0) => format!("the server's Retry-After, until {n} ms"),
                        _ => format!("its retry timer, at {at} ms"),
                    }
                } else if queued {
                    format!("a dispatch slot ({} of {} in use)", self.dispatcher.in_flight(), self.config.operations_cap())
                } else if drains > 0 {
                    format!("a drain: {drains} terminating pod(s) keep their finalizer until their addresses are unmapped")
                } else if let Some(p) = pending_deletion {
                    format!("a drain: its addresses to leave NRP through a location sync (pending since {} ms)", p.at_ms)
                } else if matches!(op.state, ResourceState::DeletionPending) {
                    "its deletion to be dispatched".to_string()
                } else {
                    String::new()
                };
                OperationStatus {
                    identity: id.as_str().to_string(),
                    kind: op.config.kind().label().to_string(),
                    namespace: op.config.object.namespace.clone(),
                    name: op.config.object.name.clone(),
                    state: op.state.label().to_string(),
                    retry_count: op.retry_count,
                    last_attempt_ms: op.last_attempt_ms,
                    next_retry_at_ms,
                    retries_exhausted: op.retries_exhausted,
                    terminal: op.creation_failed_terminal,
                    in_flight,
                    buffered_endpoints: buffered,
                    waiting_for,
                    correlation_id: op.correlation_id.clone(),
                }
            })
            .collect()
    }
}
