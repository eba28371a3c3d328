//! The registrar: the workers' `updateServices` requests, batched (ENGINE.md 5.5).
//!
//! A worker whose next step is a ServiceGateway registration change (register, detach the pool,
//! unregister, the outbound ones) does not start its own call: its request joins the queue
//! here, and the worker waits at that step without a call. At most one `updateServices` is in
//! flight; when none is, the queued requests go as one call (in queue order, as many as fit the
//! tenant's request budget), and its completion is applied to every member as if it had been
//! that member's own call, so the step machines of `workers.rs` are unchanged. Requests queue up
//! while a batch is in flight, which is what makes the batches: a burst of creates registers
//! in a handful of calls instead of one per Service.
//!
//! NRP validates a whole request before it changes anything, so one service's refusal (a 404 on
//! an unregistration that already happened, the overlay rejection, an invalid reference) refuses
//! every service of the batch. Such an answer (a 4xx other than 408 and 429) is therefore not
//! given to the members: each is sent again alone, at once, as its own call, so the refusal
//! reaches only the worker it belongs to. Answers that say nothing about one service
//! (throttling, 5xx, a timeout, a transport failure) are every member's own answer.
//!
//! Batches are paced like location syncs: one starts no sooner than the tenant's ServiceGateway
//! POST interval after the previous one started, so registrations that arrive one by one share
//! a call; but when every running worker waits for the registrar and more work waits for a
//! slot, the batch goes at once (waiting would only hold the backlog up).
//!
//! Ordering (5.5) is per service and is kept by the step machines: a member's next step starts
//! only from its completion, exactly as before.

use crate::backoff::OPERATION_TIMEOUT_MS;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{json_string_bytes, Call, CallError, CallId, CallOutput, CloudCall, ErrorKind, Io, NatReference, SgwServiceRequest};
use crate::metrics;
use crate::timers::{Timer, TimerTable};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// `{"action":"PartialUpdate","serviceRequests":[]}`: an `updateServices` body without its
/// requests.
const ENVELOPE_BYTES: u64 = 46;

/// The most one resource ID the host builds can take beyond the names the engine knows: ARM's
/// own limits (a 36-character subscription, a resource group of at most 90 characters, a
/// virtual network of at most 64) in the longest ID shape the host writes, rounded up.
const ARM_ID_BYTES: u64 = 320;

/// One request queued or in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub id: Identity,
    pub request: SgwServiceRequest,
}

/// The batch in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightBatch {
    pub call: CallId,
    pub members: Vec<Queued>,
    /// Its own attempt deadline: a batch that never completes must not hold the queue.
    pub deadline_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registrar {
    /// Waiting requests, oldest first; one per identity (one worker per identity).
    pub queue: VecDeque<Queued>,
    pub in_flight: Option<InFlightBatch>,
    /// The POST interval after the last batch started: the next waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced_until_ms: Option<u64>,
}

impl Registrar {
    /// Nothing queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_none()
    }

    /// Nothing a snapshot must carry (snapshots of an engine that never batched stay as they were).
    pub fn is_unused(&self) -> bool {
        self.is_idle() && self.paced_until_ms.is_none()
    }

    /// Drops `id`'s waiting request (its worker ended while it waited).
    pub(crate) fn forget(&mut self, id: &Identity, timers: &mut TimerTable) {
        self.queue.retain(|q| &q.id != id);
        self.rearm(timers);
    }

    /// Arms the table from this state: the batch's deadline while one is in flight, else the
    /// end of the interval while requests wait for it.
    pub(crate) fn rearm(&self, timers: &mut TimerTable) {
        timers.stop(&Timer::RegistrationTimeout);
        timers.stop(&Timer::RegistrationPace);
        match (&self.in_flight, self.paced_until_ms) {
            (Some(b), _) => timers.set(Timer::RegistrationTimeout, b.deadline_ms),
            (None, Some(at)) if !self.queue.is_empty() => timers.set(Timer::RegistrationPace, at),
            (None, _) => {}
        }
    }

    /// Takes the longest prefix of the queue that fits `budget` (at least one request).
    fn take_batch(&mut self, budget: &crate::io::RequestBudget) -> Vec<Queued> {
        let mut bytes = ENVELOPE_BYTES;
        let mut batch = Vec::new();
        while let Some(next) = self.queue.front() {
            let cost = request_bytes(&next.request);
            if !batch.is_empty() && !budget.fits(bytes + cost, batch.len() as u64 + 1) {
                break;
            }
            bytes += cost;
            batch.extend(self.queue.pop_front());
        }
        batch
    }
}

/// The estimated bytes one service request adds to an `updateServices` body (its separating
/// comma included): never less than the host's compact encoding, whose resource IDs add at most
/// [`ARM_ID_BYTES`] each to the names they are built from.
pub fn request_bytes(r: &SgwServiceRequest) -> u64 {
    // `{"isDelete":false,"service":{"name":N,"properties":{"serviceType":"Outbound",
    // "loadBalancerBackendPools":[],"publicNatGatewayId":null,"isDefault":false}}},`
    let fixed = 160 + json_string_bytes(&r.name);
    // `{"id":ID,"name":P,"properties":{"virtualNetwork":{"id":VNET}}},`
    let pools: u64 =
        r.backend_pools.iter().map(|p| 64 + 2 * ARM_ID_BYTES + json_string_bytes(&p.load_balancer) + 2 * json_string_bytes(&p.pool)).sum();
    let nat = match &r.nat_gateway {
        NatReference::Set(name) => ARM_ID_BYTES + json_string_bytes(name),
        NatReference::Absent | NatReference::Clear => 0,
    };
    fixed + pools + nat
}

/// An answer about one service of a request NRP validated as a whole: it must reach only that
/// service, so a batch answered with it is split.
fn is_per_service_refusal(e: &CallError) -> bool {
    crate::workers::is_overlay_error(e)
        || matches!(e.kind, ErrorKind::NotFound | ErrorKind::Conflict)
        || (e.kind == ErrorKind::Http && (400..500).contains(&e.status) && e.status != 408 && e.status != 429)
}

impl Engine {
    /// Queues worker `id`'s registration request; the worker waits at its step without a call.
    pub(crate) fn queue_registration(&mut self, id: &Identity, request: SgwServiceRequest) {
        self.registrar.queue.retain(|q| &q.id != id);
        self.registrar.queue.push_back(Queued { id: id.clone(), request });
        self.registrar.rearm(&mut self.timers);
    }

    /// Whether a batch may start now: requests wait, none is in flight, and the interval is over
    /// or every running worker waits here while more work waits for a slot.
    pub(crate) fn registration_due(&self) -> bool {
        let r = &self.registrar;
        if r.in_flight.is_some() || r.queue.is_empty() {
            return false;
        }
        let interval_over = r.paced_until_ms.is_none_or(|t| self.now_ms >= t);
        let backlog = r.queue.len() >= self.dispatcher.in_flight() && self.dispatcher.has_runnable();
        interval_over || backlog
    }

    /// Starts a batch if one is due.
    pub(crate) fn run_registrations(&mut self, io: &mut dyn Io) {
        if !self.registration_due() {
            return;
        }
        let interval = self.config.sgw_post_interval_ms();
        self.registrar.paced_until_ms = (interval > 0).then(|| self.now_ms.saturating_add(interval));
        let members = self.registrar.take_batch(&self.config.request_budget());
        let call = io.start(Call::Cloud(CloudCall::UpdateServices(members.iter().map(|m| m.request.clone()).collect())));
        self.metrics.inc(metrics::SERVICE_UPDATE_BATCHES_TOTAL, &[]);
        for m in &members {
            if let Some(a) = self.dispatcher.active.get_mut(&m.id) {
                a.call = Some(call);
            }
        }
        self.registrar.in_flight = Some(InFlightBatch { call, members, deadline_ms: self.now_ms.saturating_add(OPERATION_TIMEOUT_MS) });
        self.registrar.rearm(&mut self.timers);
    }

    pub(crate) fn awaits_registration(&self, call: CallId) -> bool {
        self.registrar.in_flight.as_ref().is_some_and(|b| b.call == call)
    }

    /// Applies the completion of the batch in flight to its members that still await it.
    pub(crate) fn complete_registration(&mut self, outcome: Result<CallOutput, CallError>, io: &mut dyn Io) {
        let Some(batch) = self.registrar.in_flight.take() else { return };
        self.registrar.rearm(&mut self.timers);
        let waiting: Vec<Queued> =
            batch.members.into_iter().filter(|m| self.dispatcher.active_op(&m.id).and_then(|a| a.call) == Some(batch.call)).collect();
        match outcome {
            Err(e) if waiting.len() > 1 && is_per_service_refusal(&e) => {
                self.metrics.inc(metrics::SERVICE_UPDATE_BATCH_SPLITS_TOTAL, &[]);
                for m in waiting {
                    let call = io.start(Call::Cloud(CloudCall::UpdateServices(vec![m.request])));
                    if let Some(a) = self.dispatcher.active.get_mut(&m.id) {
                        a.call = Some(call);
                        self.dispatcher.calls.insert(call, m.id);
                    }
                }
            }
            outcome => {
                for m in waiting {
                    self.complete_worker_call(&m.id, outcome.clone(), io);
                }
            }
        }
    }

    /// The batch in flight outlived its deadline: the queue moves on. Its members' own attempt
    /// deadlines, which started earlier, have ended their workers already; a late completion
    /// is ignored.
    pub(crate) fn fire_registration_timeout(&mut self) {
        if self.timers.is_expired(&Timer::RegistrationTimeout, self.now_ms) {
            self.registrar.in_flight = None;
            self.registrar.rearm(&mut self.timers);
        }
        if self.timers.is_expired(&Timer::RegistrationPace, self.now_ms) {
            self.registrar.paced_until_ms = None;
            self.registrar.rearm(&mut self.timers);
        }
    }

    pub(crate) fn check_registrar_invariants(&self) -> Result<(), String> {
        for q in &self.registrar.queue {
            match self.dispatcher.active_op(&q.id) {
                Some(a) if a.call.is_none() => {}
                _ => return Err(format!("queued registration of {} has no waiting worker", q.id)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{BackendPool, RequestBudget, ServiceType};

    fn request(name: &str) -> SgwServiceRequest {
        SgwServiceRequest {
            name: name.into(),
            service_type: ServiceType::Inbound,
            is_delete: false,
            backend_pools: vec![BackendPool { load_balancer: name.into(), pool: name.into() }],
            nat_gateway: NatReference::Absent,
            is_default: None,
        }
    }

    #[test]
    fn the_estimate_is_never_below_the_wire_encoding_with_the_longest_arm_names() {
        // The host's encoding with a 90-character resource group and a 64-character VNet.
        let name = "3f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f";
        let sub = "00000000-0000-0000-0000-000000000000";
        let rg = "r".repeat(90);
        let vnet = "v".repeat(64);
        let lb_id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/loadBalancers/{name}");
        let wire = serde_json::json!({"isDelete": false, "service": {"name": name, "properties": {
            "loadBalancerBackendPools": [{"id": format!("{lb_id}/backendAddressPools/{name}"), "name": name,
                "properties": {"virtualNetwork": {"id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}")}}}],
            "serviceType": "Inbound"}}});
        let real = serde_json::to_vec(&wire).unwrap().len() as u64 + 1;
        assert!(request_bytes(&request(name)) >= real, "{} < {real}", request_bytes(&request(name)));
    }

    #[test]
    fn a_batch_takes_what_fits_and_at_least_one() {
        let mut r = Registrar::default();
        for i in 0..5 {
            r.queue.push_back(Queued { id: Identity::new(&format!("svc-{i}")), request: request(&format!("svc-{i}")) });
        }
        let one = request_bytes(&request("svc-0"));
        let two = RequestBudget { max_bytes: ENVELOPE_BYTES + 2 * one, max_entries: 100 };
        assert_eq!(r.take_batch(&two).len(), 2);
        let none_fit = RequestBudget { max_bytes: 1, max_entries: 100 };
        assert_eq!(r.take_batch(&none_fit).len(), 1, "one request goes whatever the budget");
        let entries = RequestBudget { max_bytes: u64::MAX, max_entries: 1 };
        assert_eq!(r.take_batch(&entries).len(), 1);
        assert_eq!(r.queue.len(), 1);
    }
}
