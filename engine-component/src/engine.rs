//! The engine's state and its driving: one tenant's diff tracker.
//!
//! [`Engine::deliver`] applies Kubernetes events, [`Engine::tick`] applies completions, fires
//! timers and starts calls through [`Io`]. The entry points of ENGINE.md 4.2 (in
//! [`crate::transitions`] and [`crate::egress`]) are public methods too, so tests can drive the
//! state machine directly; they start no call themselves (the next tick does).
//!
//! Every mutation of an operation or of the NRP service sets goes through a helper here that
//! watches the identity's readiness (5.3): when it flips, the identity's addresses are marked
//! dirty for the next location sync.

use crate::backoff::SplitMix64;
use crate::config::{ServiceConfig, ServiceKind};
use crate::desired::{Desired, Key};
use crate::dispatcher::Dispatcher;
use crate::egress::{Egress, PendingPods};
use crate::endpoints::EndpointCache;
use crate::identity::Identity;
use crate::io::{
    Call, CallId, Completion, EngineStatus, EventType, InitPhase, Io, KubeEvent, KubeEventRecord, NumberedIo, ObjectKind, ObjectRef,
    Service, TenantConfig, TickOutcome,
};
use crate::locations::LocationsUpdater;
use crate::metrics::{self, Metrics};
use crate::nrp::NrpMirror;
use crate::readiness::is_ready;
use crate::registrar::Registrar;
use crate::startup::Startup;
use crate::state::{OpTable, Operation, ResourceState, STATE_LABELS};
use crate::timers::{Timer, TimerTable};
use crate::transitions::{EndpointDelta, PendingDeletion};
use crate::workers::ActiveOp;
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

/// One tenant's engine. Its serialised form is the snapshot (`snapshot`), field by field in this
/// order; `#[serde(skip)]` fields are indexes rebuilt on restore.
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
    /// `pendingEndpoints`: endpoint deltas of services not live yet.
    pub(crate) buffers: BTreeMap<Identity, Vec<EndpointDelta>>,
    /// How many deltas `buffers` holds (derived).
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
    /// The workers' `updateServices` requests, batched; empty in snapshots that predate it.
    #[serde(default, rename = "sr", skip_serializing_if = "Registrar::is_unused")]
    pub(crate) registrar: Registrar,
    pub(crate) metrics: Metrics,
    /// The start-up pass (ENGINE.md 9); `Ready` in snapshots that predate it.
    #[serde(default)]
    pub(crate) startup: Startup,
    /// Events raised outside a tick, emitted by the next one.
    pub(crate) queued_events: Vec<KubeEventRecord>,
    /// The id of the engine's next call: above every id a call of this engine ever carried,
    /// whoever allocated it. A host that takes the engine's ids (WIT 0.3.0) numbers calls from it;
    /// for one that allocates its own (WIT 0.2.0) it follows the ids the host returns. Carried in
    /// the snapshot, so an engine restored from a 0.2.0 instance's snapshot numbers its calls
    /// where that host's counter stood and never reuses the id of a call in flight. Absent (0)
    /// in snapshots that predate it: [`Engine::restore`] starts it above every awaited call.
    #[serde(default)]
    pub(crate) next_call_id: CallId,
    /// Every deadline above, ordered (derived).
    #[serde(skip)]
    pub(crate) timers: TimerTable,
}

impl Engine {
    /// A new engine for a tenant. It starts with the start-up pass of ENGINE.md 9: its first
    /// tick starts the five list calls, the host delivers its initial Kubernetes lists (as
    /// applied events) and then [`KubeEvent::InitialListsComplete`]; no operation runs before
    /// both are in.
    pub fn new(config: TenantConfig) -> Engine {
        Engine { startup: Startup::listing(), ..Engine::empty(config) }
    }

    /// An engine that skips the start-up pass: initialized at once with an empty view of the
    /// cloud. For tests that drive the state machine directly.
    #[cfg(test)]
    pub(crate) fn initialized(config: TenantConfig) -> Engine {
        Engine::empty(config)
    }

    fn empty(config: TenantConfig) -> Engine {
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
            registrar: Registrar::default(),
            metrics: Metrics::default(),
            startup: Startup::default(),
            queued_events: Vec::new(),
            next_call_id: 1,
            timers: TimerTable::default(),
        }
    }

    /// Applies Kubernetes events; starts no call. Before initialization completes they are
    /// kept: the initial lists up to [`KubeEvent::InitialListsComplete`], then the watch events
    /// that follow (applied, in order, once initialized).
    pub fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) {
        self.advance_clock(now_ms);
        for ev in events {
            if self.startup.is_ready() {
                self.handle_kube_event(ev);
            } else {
                self.startup_event(ev);
            }
        }
    }

    /// Applies completions, fires due timers and starts the calls that are due through `io`,
    /// which numbers them (WIT 0.2.0, the native host); the engine's counter follows its ids.
    pub fn tick(&mut self, now_ms: u64, completions: Vec<Completion>, io: &mut dyn Io) -> TickOutcome {
        let mut port = FollowIds { io, next: self.next_call_id };
        let outcome = self.run_tick(now_ms, completions, &mut port);
        self.next_call_id = port.next;
        outcome
    }

    /// [`Engine::tick`] for a host that takes the engine's call ids (WIT 0.3.0): every call is
    /// numbered from the engine's own counter.
    pub fn tick_numbered(&mut self, now_ms: u64, completions: Vec<Completion>, io: &mut dyn NumberedIo) -> TickOutcome {
        let mut port = AllocateIds { io, next: self.next_call_id };
        let outcome = self.run_tick(now_ms, completions, &mut port);
        self.next_call_id = port.next;
        outcome
    }

    /// The id the engine's next call will carry (under [`Engine::tick_numbered`]; at least that
    /// under [`Engine::tick`]).
    pub fn next_call_id(&self) -> CallId {
        self.next_call_id
    }

    fn run_tick(&mut self, now_ms: u64, completions: Vec<Completion>, io: &mut dyn Io) -> TickOutcome {
        self.advance_clock(now_ms);
        self.note_first_input();
        for c in completions {
            self.on_completion(c, io);
        }
        self.fire_timers();
        self.run_startup(io);
        if self.startup.phase != InitPhase::Listing {
            self.run_work(io);
            if self.finish_startup(io) {
                // Initialized: the held watch events were just applied.
                self.run_work(io);
            }
        }
        for ev in std::mem::take(&mut self.queued_events) {
            io.record_event(ev);
        }
        TickOutcome { next_wake_ms: self.next_wake(), calls_in_flight: self.calls_in_flight() as u32 }
    }

    /// The updaters and the pod calls, until nothing more is due at this instant.
    fn run_work(&mut self, io: &mut dyn Io) {
        for _ in 0..4 {
            self.run_deferred_pod_events();
            self.run_locations(io);
            self.dispatch(io);
            self.run_registrations(io);
            self.start_pod_calls(io);
            if !self.locations_updater.pass_due(self.now_ms) && self.egress.calls.released.is_empty() {
                break;
            }
        }
        self.start_pod_calls(io);
    }

    /// The compact binary snapshot (what hot swap and trap recovery move; see `snapshot.rs`).
    pub fn snapshot(&self) -> Vec<u8> {
        crate::snapshot::encode(self)
    }

    /// The same state as JSON, for humans and golden files; [`Engine::restore`] reads it too.
    pub fn snapshot_json(&self) -> Vec<u8> {
        crate::snapshot::encode_json(self)
    }

    pub fn restore(bytes: &[u8]) -> Result<Engine, SnapshotError> {
        let mut engine = crate::snapshot::decode(bytes)?;
        // A snapshot that predates the counter (or a forged one) must still never reuse the id
        // of a call the engine awaits.
        engine.next_call_id = engine.next_call_id.max(engine.highest_awaited_call().map_or(1, |id| id.saturating_add(1)));
        Ok(engine)
    }

    /// The highest id of a call the engine awaits.
    fn highest_awaited_call(&self) -> Option<CallId> {
        [
            self.locations_updater.in_flight.as_ref().map(|f| f.call),
            self.registrar.in_flight.as_ref().map(|b| b.call),
            self.egress.calls.in_flight.keys().next_back().copied(),
            self.dispatcher.calls.keys().next_back().copied(),
            self.startup.calls.keys().next_back().copied(),
        ]
        .into_iter()
        .flatten()
        .max()
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
            initialization: self.initialization(),
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
        self.locations_updater.in_flight.as_ref().is_some_and(|f| f.call == id)
            || self.awaits_registration(id)
            || self.egress.calls.in_flight.contains_key(&id)
            || self.dispatcher.calls.contains_key(&id)
            || self.awaits_startup_call(id)
    }
    pub fn calls_in_flight(&self) -> usize {
        self.dispatcher.awaited_calls()
            + usize::from(self.locations_updater.in_flight.is_some())
            + usize::from(self.registrar.in_flight.is_some())
            + self.egress.calls.in_flight.len()
            + self.startup.calls.len()
    }

    /// Initialized, and nothing in flight, waiting or pending: every op Created or
    /// terminal-parked.
    pub fn is_settled(&self) -> bool {
        self.startup.is_ready()
            && self.calls_in_flight() == 0
            && !self.dispatcher.has_runnable()
            && self.ops.unsettled() == 0
            && self.pending_deletions.is_empty()
            && self.egress.records.is_empty()
            && self.egress.calls.queue.is_empty()
            && self.egress.calls.deferred.is_empty()
            && self.locations_updater.is_idle()
            && self.registrar.is_idle()
    }

    /// Checks internal consistency (indexes equal a rebuild, bounds, cross references). Meant
    /// for tests and debugging: it is O(state).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.ops.check_indexes()?;
        self.desired.check_index()?;
        self.nrp.check_index()?;
        if self.dispatcher.in_flight() > self.config.operations_cap() {
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
        self.check_registrar_invariants()?;
        self.check_egress_invariants()?;
        self.check_startup_invariants()?;
        if self.timers != self.expected_timers() {
            return Err("timer table drifted".into());
        }
        for (loc, addrs) in self.nrp.locations() {
            for (addr, services) in addrs {
                for id in services {
                    // NRP may hold a foreign leftover at start-up (an address mapped to a name it
                    // has no registration for): the diff unbinds it. Ours is never published
                    // before its registration.
                    let ours = self.ops.contains(id) || self.desired.keys_of(id).next().is_some();
                    if ours && !self.nrp.has_load_balancer(id) && !self.nrp.has_nat_gateway(id) {
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
        self.fire_startup_timeouts();
        self.fire_operation_timeouts();
        self.fire_pod_call_timeouts();
        self.fire_location_timeout();
        self.fire_location_pace();
        self.fire_registration_timeout();
        self.fire_retry_timers();
    }

    /// The table as the owners' state says it should be.
    fn expected_timers(&self) -> TimerTable {
        let mut timers = TimerTable::default();
        self.dispatcher.rearm(&mut timers);
        self.locations_updater.rearm(&mut timers);
        self.registrar.rearm(&mut timers);
        for (id, c) in &self.egress.calls.in_flight {
            timers.set(Timer::PodCallTimeout(*id), c.deadline_ms);
        }
        self.startup.rearm(&mut timers);
        timers
    }

    fn next_wake(&self) -> Option<u64> {
        let mut wake = self.timers.next_timeout();
        let sync_due =
            self.locations_updater.pass_due(self.now_ms) || !self.egress.calls.queue.is_empty() || !self.egress.calls.released.is_empty();
        let dispatch_due =
            (self.dispatcher.has_runnable() && self.dispatcher.in_flight() < self.config.operations_cap()) || self.registration_due();
        let startup_due = self.startup_due();
        let work_due = self.startup.phase != InitPhase::Listing && (sync_due || dispatch_due);
        if work_due || startup_due {
            wake = Some(self.now_ms);
        }
        wake
    }

    fn on_completion(&mut self, c: Completion, io: &mut dyn Io) {
        if self.awaits_startup_call(c.id) {
            self.complete_startup_call(c.id, c.outcome);
            return;
        }
        if self.locations_updater.in_flight.as_ref().is_some_and(|f| f.call == c.id) {
            self.complete_location_sync(c.outcome);
            return;
        }
        if self.awaits_registration(c.id) {
            self.complete_registration(c.outcome, io);
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
        self.queued_events.push(KubeEventRecord {
            target,
            kind: ObjectKind::Service,
            event_type: EventType::Warning,
            reason: reason.to_string(),
            message,
        });
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
        // The text of the key is the model's when either holds the address.
        let key = self.desired.key(loc, addr).or_else(|| self.nrp.key(loc, addr)).unwrap_or_else(|| (loc.into(), addr.into()));
        self.dirty.insert(key);
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
            || self
                .locations_updater
                .in_flight
                .as_ref()
                .is_some_and(|f| f.diff.locations.values().any(|l| l.addresses.get(addr).is_some_and(|s| s.contains(id))))
    }

    pub(crate) fn strip_desired(&mut self, id: &Identity) {
        let keys = self.desired.strip(id);
        if !keys.is_empty() {
            self.dirty.extend(keys);
            self.trigger_location_sync();
        }
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
        out.push(gauge(metrics::TRACKED_SERVICES_TOTAL, &[("state", "k8s_services")], self.startup.k8s_services as f64));
        out.push(gauge(metrics::TRACKED_SERVICES_TOTAL, &[("state", "nrp_loadbalancers")], self.nrp.load_balancers().len() as f64));
        out.push(gauge(metrics::TRACKED_SERVICES_TOTAL, &[("state", "nrp_natgateways")], self.nrp.nat_gateways().len() as f64));
        out.push(gauge(metrics::LOCATIONS_TOTAL, &[], self.nrp.location_count() as f64));
        out.push(gauge(metrics::ADDRESSES_TOTAL, &[], self.nrp.address_count() as f64));
        out.push(gauge(metrics::SERVICEGATEWAY_ENABLED, &[], if self.startup.is_ready() { 1.0 } else { 0.0 }));
        out.push(gauge(metrics::INITIALIZATION_DURATION_SECONDS, &[], self.startup.duration_ms.map_or(0.0, |ms| ms as f64 / 1000.0)));
    }
}

/// The port of [`Engine::tick`]: the host numbers calls, the engine's counter follows.
struct FollowIds<'a> {
    io: &'a mut dyn Io,
    next: CallId,
}

impl Io for FollowIds<'_> {
    fn start(&mut self, call: Call) -> CallId {
        let id = self.io.start(call);
        self.next = self.next.max(id.saturating_add(1));
        id
    }
    fn record_event(&mut self, event: KubeEventRecord) {
        self.io.record_event(event)
    }
}

/// The port of [`Engine::tick_numbered`]: the engine numbers calls from its counter.
struct AllocateIds<'a> {
    io: &'a mut dyn NumberedIo,
    next: CallId,
}

impl Io for AllocateIds<'_> {
    fn start(&mut self, call: Call) -> CallId {
        let id = self.next;
        self.next = id.saturating_add(1);
        self.io.start(id, call);
        id
    }
    fn record_event(&mut self, event: KubeEventRecord) {
        self.io.record_event(event)
    }
}
