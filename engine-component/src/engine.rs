//! The engine's public surface: one tenant's diff tracker, driven from outside.
//!
//! [`Engine::deliver`] applies Kubernetes events, [`Engine::tick`] applies completions, fires
//! timers and starts calls through [`Io`]. The entry points of ENGINE.md 4.2 (`add_service`,
//! `update_service`, `delete_service`, `update_endpoints`, `on_service_creation_complete`,
//! `check_pending_service_deletions`) are public methods too, as are the egress ones of
//! [`crate::egress`] (`add_pod`, `delete_pod`, `delete_pod_without_addresses`,
//! `check_pending_pod_deletions`), so tests can drive the state machine directly; they start no
//! call themselves (the next tick does).
//!
//! Every mutation of an operation or of the NRP service sets goes through a helper that watches
//! the identity's readiness (5.3): when it flips, the identity's addresses are marked dirty for
//! the next location sync.

use crate::backoff::{backoff_ms, SplitMix64};
use crate::config::{ServiceConfig, ServiceKind};
use crate::desired::{Desired, Key};
use crate::dispatcher::{Dispatcher, MAX_CONCURRENT_OPERATIONS};
use crate::endpoints::{removals, EndpointCache, EndpointMap};
use crate::egress::{Egress, PendingPods};
use crate::identity::Identity;
use crate::io::{
    CallId, Completion, EngineStatus, EventType, Io, KubeEvent, KubeEventRecord, ObjectKind, ObjectRef, Service, TenantConfig, TickOutcome,
};
use crate::locations::LocationsUpdater;
use crate::metrics::{self, Metrics};
use crate::names::REASON_CONFIGURATION_REJECTED;
use crate::nrp::NrpMirror;
use crate::readiness::is_ready;
use crate::state::{OpTable, Operation, ResourceState, STATE_LABELS};
use crate::timers::{Timer, TimerTable};
use crate::workers::{ActiveOp, AttemptFailure, AttemptResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot restore snapshot: {}", self.0)
    }
}

impl std::error::Error for SnapshotError {}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    pub(crate) config: TenantConfig,
    pub(crate) now_ms: u64,
    pub(crate) rng: SplitMix64,
    pub(crate) ops: OpTable,
    pub(crate) desired: Desired,
    pub(crate) nrp: NrpMirror,
    pub(crate) endpoints: EndpointCache,
    /// Latest Service objects of interest (LoadBalancer ones and tracked ones).
    pub(crate) services: BTreeMap<Identity, Service>,
    pub(crate) buffers: BTreeMap<Identity, Vec<EndpointDelta>>,
    #[serde(skip)]
    pub(crate) buffered_deltas: usize,
    /// `pendingPods`: egress pod addresses waiting for their NAT gateway.
    pub(crate) pending_pods: PendingPods,
    /// `pendingServiceDeletions`.
    pub(crate) pending_deletions: BTreeMap<Identity, PendingDeletion>,
    /// The rest of the egress state (pod deletion records, the pod informer's objects, calls
    /// and shadows, the IPv6 decision), its fields inline in the snapshot.
    #[serde(flatten)]
    pub(crate) egress: Egress,
    /// Pending deletions whose NRP addresses may have drained (checked by the next
    /// CheckPendingServiceDeletions instead of scanning every pending deletion).
    pub(crate) drain_candidates: BTreeSet<Identity>,
    /// `services_blocked_by_locations`, as set by the last CheckPendingServiceDeletions.
    pub(crate) blocked_by_locations: u64,
    /// (location, address) keys that may differ between desired state and NRP.
    pub(crate) dirty: BTreeSet<Key>,
    /// The ServiceUpdater.
    #[serde(rename = "su")]
    pub(crate) dispatcher: Dispatcher,
    /// The LocationsUpdater.
    #[serde(rename = "lu")]
    pub(crate) locations_updater: LocationsUpdater,
    pub(crate) metrics: Metrics,
    /// Events raised outside a tick, emitted by the next one.
    pub(crate) queued_events: Vec<KubeEventRecord>,
    /// Every deadline above, ordered (derived).
    #[serde(skip)]
    pub(crate) timers: TimerTable,
}

impl Engine {
    pub fn new(config: TenantConfig) -> Engine {
        Engine {
            rng: SplitMix64::new(config.seed),
            config,
            now_ms: 0,
            ops: OpTable::default(),
            desired: Desired::default(),
            nrp: NrpMirror::default(),
            endpoints: EndpointCache::default(),
            services: BTreeMap::new(),
            buffers: BTreeMap::new(),
            buffered_deltas: 0,
            pending_pods: PendingPods::default(),
            pending_deletions: BTreeMap::new(),
            egress: Egress::default(),
            drain_candidates: BTreeSet::new(),
            blocked_by_locations: 0,
            dirty: BTreeSet::new(),
            dispatcher: Dispatcher::default(),
            locations_updater: LocationsUpdater::default(),
            metrics: Metrics::default(),
            queued_events: Vec::new(),
            timers: TimerTable::default(),
        }
    }

    /// Applies Kubernetes watch events; starts no call.
    pub fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) {
        self.advance_clock(now_ms);
        for ev in events {
            self.handle_kube_event(ev);
        }
    }

    /// Applies completions, fires due timers and starts the calls that are due through `io`.
    pub fn tick(&mut self, now_ms: u64, completions: Vec<Completion>, io: &mut dyn Io) -> TickOutcome {
        self.advance_clock(now_ms);
        for c in completions {
            self.on_completion(c, io);
        }
        self.fire_timers();
        for _ in 0..4 {
            self.run_deferred_pod_events();
            self.run_locations(io);
            self.dispatch(io);
            self.start_pod_calls(io);
            if !(self.locations_updater.triggered && self.locations_updater.in_flight.is_none()) && self.egress.calls.released.is_empty() {
                break;
            }
        }
        self.start_pod_calls(io);
        for ev in std::mem::take(&mut self.queued_events) {
            io.record_event(ev);
        }
        TickOutcome { next_wake_ms: self.next_wake(), calls_in_flight: self.calls_in_flight() as u32 }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        crate::snapshot::encode(self)
    }

    pub fn restore(bytes: &[u8]) -> Result<Engine, SnapshotError> {
        crate::snapshot::decode(bytes)
    }

    pub fn status(&self) -> EngineStatus {
        let states = STATE_LABELS
            .iter()
            .enumerate()
            .map(|(i, l)| (l.to_string(), (self.ops.count(i, ServiceKind::Inbound) + self.ops.count(i, ServiceKind::Outbound)) as u32))
            .collect();
        let mut samples = Vec::new();
        self.gauges(&mut samples);
        self.metrics.samples(&mut samples);
        EngineStatus {
            states,
            operations_in_flight: self.dispatcher.in_flight() as u32,
            calls_in_flight: self.calls_in_flight() as u32,
            pending_deletions: self.pending_deletions.len() as u32,
            pending_pod_deletions: self.egress.records.len() as u32,
            buffered_endpoint_deltas: self.buffered_deltas as u32,
            location_sync_in_flight: self.locations_updater.in_flight.is_some(),
            settled: self.is_settled(),
            metrics: samples,
        }
    }

    // ------------------------------------------------------------------ inspection

    /// The engine clock (the latest `now_ms` seen).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }
    pub fn tenant(&self) -> &TenantConfig {
        &self.config
    }
    pub fn operation(&self, id: &Identity) -> Option<&Operation> {
        self.ops.get(id)
    }
    pub fn operations(&self) -> impl Iterator<Item = (&Identity, &Operation)> {
        self.ops.iter()
    }
    /// `IsServiceTracked`.
    pub fn is_service_tracked(&self, id: &Identity) -> bool {
        self.ops.contains(id)
    }
    pub fn nrp(&self) -> &NrpMirror {
        &self.nrp
    }
    pub fn desired(&self) -> &Desired {
        &self.desired
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn pending_deletion(&self, id: &Identity) -> Option<&PendingDeletion> {
        self.pending_deletions.get(id)
    }
    pub fn buffered_endpoints(&self, id: &Identity) -> &[EndpointDelta] {
        self.buffers.get(id).map(|v| v.as_slice()).unwrap_or(&[])
    }
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }
    pub fn locations_updater(&self) -> &LocationsUpdater {
        &self.locations_updater
    }
    pub fn active_operation(&self, id: &Identity) -> Option<&ActiveOp> {
        self.dispatcher.active_op(id)
    }
    /// The latest Service object seen for `id`.
    pub fn service_object(&self, id: &Identity) -> Option<&Service> {
        self.services.get(id)
    }
    /// Whether the engine still awaits the completion of call `id` (a timed-out call's late
    /// completion is ignored).
    pub fn awaits(&self, id: CallId) -> bool {
        self.locations_updater.in_flight.as_ref().is_some_and(|f| f.call == id) || self.egress.calls.in_flight.contains_key(&id) || self.dispatcher.calls.contains_key(&id)
    }
    pub fn calls_in_flight(&self) -> usize {
        self.dispatcher.awaited_calls() + usize::from(self.locations_updater.in_flight.is_some()) + self.egress.calls.in_flight.len()
    }

    /// Nothing in flight, waiting or pending: every op Created or terminal-parked.
    pub fn is_settled(&self) -> bool {
        self.calls_in_flight() == 0
            && !self.dispatcher.has_runnable()
            && self.ops.unsettled() == 0
            && self.pending_deletions.is_empty()
            && self.egress.records.is_empty()
            && self.egress.calls.queue.is_empty()
            && self.egress.calls.deferred.is_empty()
            && self.locations_updater.is_idle()
    }

    /// Checks internal consistency (indexes equal a rebuild, bounds, cross references). Meant
    /// for tests and debugging: it is O(state).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.ops.check_indexes()?;
        self.desired.check_index()?;
        self.nrp.check_index()?;
        if self.dispatcher.in_flight() > MAX_CONCURRENT_OPERATIONS {
            return Err(format!("{} operations in flight", self.dispatcher.in_flight()));
        }
        for id in self.pending_deletions.keys() {
            if !self.ops.contains(id) {
                return Err(format!("pending deletion without an op: {id}"));
            }
        }
        for (call, id) in &self.dispatcher.calls {
            if self.dispatcher.active_op(id).and_then(|a| a.call) != Some(*call) {
                return Err(format!("call {call} routed to {id}, which does not await it"));
            }
        }
        for id in self.dispatcher.active.keys() {
            if !self.ops.contains(id) {
                return Err(format!("worker without an op: {id}"));
            }
        }
        let buffered: usize = self.buffers.values().map(|v| v.len()).sum();
        if buffered != self.buffered_deltas {
            return Err("buffered delta count drifted".into());
        }
        self.check_egress_invariants()?;
        if self.timers != self.expected_timers() {
            return Err("timer table drifted".into());
        }
        for (loc, addrs) in self.nrp.locations() {
            for (addr, services) in addrs {
                for id in services {
                    if !self.nrp.has_load_balancer(id) && !self.nrp.has_nat_gateway(id) {
                        return Err(format!("{addr}@{loc} published for unregistered {id}"));
                    }
                }
            }
        }
        let inc = self.pending_location_diff();
        let full = self.full_location_diff();
        if inc != full {
            return Err(format!("incremental diff {inc:?} != full diff {full:?}"));
        }
        Ok(())
    }

    // ------------------------------------------------------------------ plumbing

    fn advance_clock(&mut self, now_ms: u64) {
        if now_ms > self.now_ms {
            self.now_ms = now_ms;
        }
    }

    pub(crate) fn rebuild_indexes(&mut self) {
        self.ops.rebuild();
        self.desired.rebuild_index();
        self.nrp.rebuild_index();
        self.endpoints.rebuild_index();
        self.buffered_deltas = self.buffers.values().map(|v| v.len()).sum();
        self.pending_pods.rebuild_index();
        self.egress.records.rebuild_index();
        self.timers = self.expected_timers();
    }

    /// Fires the due timers, one kind after the other in this order: attempts first (a
    /// timed-out worker frees its slot), retries last (they only queue work).
    fn fire_timers(&mut self) {
        self.fire_operation_timeouts();
        self.fire_pod_call_timeouts();
        self.fire_location_timeout();
        self.fire_retry_timers();
    }

    /// The table as the owners' state says it should be.
    fn expected_timers(&self) -> TimerTable {
        let mut timers = TimerTable::default();
        self.dispatcher.rearm(&mut timers);
        self.locations_updater.rearm(&mut timers);
        for (id, c) in &self.egress.calls.in_flight {
            timers.set(Timer::PodCallTimeout(*id), c.deadline_ms);
        }
        timers
    }

    fn next_wake(&self) -> Option<u64> {
        let mut wake = self.timers.next_timeout();
        let sync_due = (self.locations_updater.triggered && self.locations_updater.in_flight.is_none()) || !self.egress.calls.queue.is_empty() || !self.egress.calls.released.is_empty();
        let dispatch_due = self.dispatcher.has_runnable() && self.dispatcher.in_flight() < MAX_CONCURRENT_OPERATIONS;
        if sync_due || dispatch_due {
            wake = Some(self.now_ms);
        }
        wake
    }

    fn on_completion(&mut self, c: Completion, io: &mut dyn Io) {
        if self.locations_updater.in_flight.as_ref().is_some_and(|f| f.call == c.id) {
            self.complete_location_sync(c.outcome);
            return;
        }
        if self.complete_pod_call(c.id, &c.outcome) {
            return;
        }
        match self.dispatcher.calls.remove(&c.id) {
            Some(id) if self.dispatcher.active_op(&id).and_then(|a| a.call) == Some(c.id) => self.complete_worker_call(&id, c.outcome, io),
            _ => self.metrics.inc(metrics::IGNORED_COMPLETIONS_TOTAL, &[]),
        }
    }

    pub(crate) fn queue_event(&mut self, target: ObjectRef, reason: &str, message: String) {
        self.queued_events.push(KubeEventRecord { target, kind: ObjectKind::Service, event_type: EventType::Warning, reason: reason.to_string(), message });
    }

    fn readiness(&self, id: &Identity) -> (bool, bool) {
        (is_ready(&self.ops, &self.nrp, id, ServiceKind::Inbound), is_ready(&self.ops, &self.nrp, id, ServiceKind::Outbound))
    }

    fn watch<R>(&mut self, id: &Identity, f: impl FnOnce(&mut Self) -> R) -> R {
        let before = self.readiness(id);
        let r = f(self);
        if self.readiness(id) != before {
            self.mark_identity_dirty(id);
        }
        r
    }

    /// Mutates an op (readiness-watched, indexes kept exact).
    pub(crate) fn update_op<R>(&mut self, id: &Identity, f: impl FnOnce(&mut Operation) -> R) -> Option<R> {
        self.watch(id, |e| e.ops.update(id, f))
    }

    pub(crate) fn insert_op(&mut self, id: &Identity, op: Operation) {
        self.watch(id, |e| e.ops.insert(id.clone(), op));
    }

    pub(crate) fn remove_op(&mut self, id: &Identity) -> Option<Operation> {
        let op = self.watch(id, |e| e.ops.remove(id));
        self.dispatcher.disarm(&mut self.timers, id);
        op
    }

    /// `UpdateNRPLoadBalancers` for one identity.
    pub(crate) fn set_nrp_load_balancer(&mut self, id: &Identity, present: bool) {
        self.watch(id, |e| e.nrp.set_load_balancer(id, present));
    }

    /// `UpdateNRPNATGateways` for one identity (never the reserved one).
    pub(crate) fn set_nrp_nat_gateway(&mut self, id: &Identity, present: bool) {
        if id.is_reserved() {
            return;
        }
        self.watch(id, |e| e.nrp.set_nat_gateway(id, present));
    }

    pub(crate) fn new_op(&mut self, config: ServiceConfig, state: ResourceState) -> Operation {
        let cid = self.rng.uuid();
        Operation::new(config, state, self.now_ms, cid)
    }

    pub(crate) fn mark_dirty(&mut self, loc: &str, addr: &str) {
        self.dirty.insert((loc.to_string(), addr.to_string()));
        self.trigger_location_sync();
    }

    fn mark_identity_dirty(&mut self, id: &Identity) {
        let keys: Vec<Key> = self.desired.keys_of(id).chain(self.nrp.keys_of(id)).cloned().collect();
        if keys.is_empty() {
            return;
        }
        self.dirty.extend(keys);
        self.trigger_location_sync();
    }

    /// Whether NRP may reference `id` on some address: the mirror says so, or the sync in
    /// flight lists it (it may land after we decide).
    pub(crate) fn may_have_nrp_addresses(&self, id: &Identity) -> bool {
        self.nrp.has_addresses_for(id) || self.locations_updater.in_flight.as_ref().is_some_and(|f| f.identities.contains(id))
    }

    /// Whether NRP maps `addr` to `id`, or the sync in flight may.
    pub(crate) fn may_map(&self, id: &Identity, addr: &str) -> bool {
        self.nrp.maps_address_to(id, addr)
            || self.locations_updater.in_flight.as_ref().is_some_and(|f| f.diff.locations.values().any(|l| l.addresses.get(addr).is_some_and(|s| s.contains(id))))
    }

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

    pub(crate) fn strip_desired(&mut self, id: &Identity) {
        for (loc, addr) in self.desired.strip(id) {
            self.mark_dirty(&loc, &addr);
        }
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
        self.metrics.observe(metrics::SERVICE_OPERATION_DURATION_SECONDS, &[("operation", operation), ("service_type", kind.label())], metrics::DURATION_BUCKETS, secs);
    }

    fn observe_retries(&mut self, operation: &str, kind: ServiceKind, retries: u32) {
        self.metrics.observe(metrics::SERVICE_OPERATION_RETRIES, &[("operation", operation), ("service_type", kind.label())], metrics::RETRY_BUCKETS, retries as f64);
    }

    fn gauges(&self, out: &mut Vec<crate::io::MetricSample>) {
        use metrics::gauge;
        for kind in [ServiceKind::Inbound, ServiceKind::Outbound] {
            for (i, label) in STATE_LABELS.iter().enumerate() {
                let labels = [("state", *label), ("service_type", kind.label())];
                out.push(gauge(metrics::PENDING_SERVICE_OPERATIONS, &labels, self.ops.count(i, kind) as f64));
                let age = self.ops.oldest_created_at(i, kind).map_or(0.0, |t| self.now_ms.saturating_sub(t) as f64 / 1000.0);
                out.push(gauge(metrics::PENDING_OPERATION_OLDEST_AGE_SECONDS, &labels, age));
            }
        }
        out.push(gauge(metrics::PENDING_DELETIONS, &[], self.pending_deletions.len() as f64));
        out.push(gauge(metrics::SERVICES_BLOCKED_BY_LOCATIONS, &[], self.blocked_by_locations as f64));
        out.push(gauge(metrics::TRACKED_SERVICES_TOTAL, &[("state", "k8s_services")], 0.0));
        out.push(gauge(metrics::TRACKED_SERVICES_TOTAL, &[("state", "nrp_loadbalancers")], self.nrp.load_balancers().len() as f64));
        out.push(gauge(metrics::TRACKED_SERVICES_TOTAL, &[("state", "nrp_natgateways")], self.nrp.nat_gateways().len() as f64));
        out.push(gauge(metrics::LOCATIONS_TOTAL, &[], self.nrp.location_count() as f64));
        out.push(gauge(metrics::ADDRESSES_TOTAL, &[], self.nrp.address_count() as f64));
        out.push(gauge(metrics::SERVICEGATEWAY_ENABLED, &[], 1.0));
        out.push(gauge(metrics::INITIALIZATION_DURATION_SECONDS, &[], 0.0));
    }

    // ------------------------------------------------------------------ entry points (4.2)

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
                        op.config = config;
                        op.state = ResourceState::UpdateInProgress;
                        op.reset();
                    });
                    self.trigger_dispatch(&id);
                }
            }
            ResourceState::NotStarted if op.creation_failed_terminal => {
                if !op.config.same_spec(&config) {
                    self.update_op(&id, |op| {
                        op.config = config;
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
                    op.config = config;
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
                    op.config = config;
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
            Some((ResourceState::NotStarted | ResourceState::CreationInProgress | ResourceState::Created | ResourceState::UpdateInProgress, _)) => {
                self.update_op(id, |op| {
                    op.state = ResourceState::DeletionPending;
                    op.reset();
                });
                self.deletion_tail(id, inbound);
            }
            Some((ResourceState::DeletionPending | ResourceState::DeletionInProgress, parked)) => {
                self.update_op(id, |op| {
                    op.recreate_after_deletion = false;
                    if parked {
                        op.reset();
                    }
                });
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
        let now = self.now_ms;
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
                            self.queue_event(object, REASON_CONFIGURATION_REJECTED, format!("ServiceGateway rejected the Service configuration: {}", f.message));
                        }
                    }
                    Err(_) => {
                        let n = retries.saturating_add(1);
                        let delay = backoff_ms(n, &mut self.rng);
                        self.update_op(id, |op| {
                            op.in_flight_config = None;
                            if op.state == ResourceState::CreationInProgress {
                                op.state = ResourceState::NotStarted;
                            }
                            op.retry_count = n;
                            op.next_retry_at_ms = Some(now.saturating_add(delay));
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
                        let delay = backoff_ms(n, &mut self.rng);
                        self.update_op(id, |op| {
                            op.retry_count = n;
                            op.next_retry_at_ms = Some(now.saturating_add(delay));
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
}
