//! The start-up pass (ENGINE.md 9), on the path every host uses: a new engine ([`Engine::new`])
//! rebuilds its view from the cloud and the cluster before it runs any operation.
//!
//! 1. **Listing** (steps 2-3). The first tick starts the five list calls (SGW `GetServices`,
//!    `GetAddressLocations`, load balancers, NAT gateways, public IPs). Meanwhile the host
//!    delivers every object of its initial Kubernetes lists as ordinary applied events, then
//!    [`KubeEvent::InitialListsComplete`]; those objects are kept, not applied. Any list failure
//!    (an error, a timeout, a response of the wrong shape; the host turns an unknown service type
//!    or a malformed page into an `invalid-response` error) fails the attempt loudly (status,
//!    `initialization_failures_total{call}`), and the five lists are retried with backoff. Nothing
//!    runs meanwhile: the engine never works from a partial view.
//! 2. **The pass** (steps 3-10), once the lists and the marker are in, [`STARTUP_SLICE`] objects
//!    per tick, so that no tick's work grows with the cluster (the phase stays `listing` and
//!    nothing starts until the pass is through, so the slices decide what one uncut pass would).
//!    The NRP mirror is seeded; the initial Nodes and EndpointSlices fill the caches; stuck Service finalizers are recovered
//!    (step 5: with an Azure trace the diff or the orphan path finishes the Service, without one
//!    the finalizers are removed at once); the initial Services go through the ordinary entry
//!    points, which adopt what NRP holds (one load balancer re-PUT each), create what is missing
//!    and delete what is no longer wanted; registrations nobody wants any more are removed (the
//!    service-level diff of 5.1); terminating egress pods get their recovered drain records, the
//!    others are admitted; orphans carrying our naming are scheduled for deletion (step 9); and a
//!    location sync is triggered (step 10).
//! 3. **Reconciling** (step 11): the operations scheduled by the pass run; watch events that
//!    arrive after the marker are held. The init gate (4.4) opens when every operation is
//!    Created or parked, no location sync is due or in flight, no pod deletion record is left and
//!    no start-up call is outstanding.
//! 4. **Finishing** (steps 12-13): missing ingress IPs are backfilled from the public IP list
//!    and unattached orphan public IPs are swept, at most [`STARTUP_CONCURRENCY`] calls at a time.
//! 5. **Ready** (step 14): `initialization_duration_seconds` is set and the held watch events
//!    are applied in order.
//!
//! Nothing here iterates a hash map: every set and map is ordered, so the calls are the same for
//! the same inputs.

use crate::backoff::{backoff_ms, OPERATION_TIMEOUT_MS};
use crate::config::ServiceKind;
use crate::desired::{Key, Text};
use crate::egress::pod::{egress_identity, has_pod_finalizer, is_valid, location_for, locations_by_family, pod_addresses, pod_key};
use crate::egress::{PodCallKind, PodDeletionRecord};
use crate::endpoints::slice_key;
use crate::engine::Engine;
use crate::events::needs_load_balancer;
use crate::identity::{canonical, check_egress_identity, family, parse_ip, Family, Identity};
use crate::io::IpVersion;
use crate::io::{
    AddressLocation, Call, CallError, CallId, CallOutput, CloudCall, EndpointSlice, ErrorKind, InitPhase, Initialization, Io, KubeCall,
    KubeEvent, LoadBalancerIngress, Node, Pod, PublicIpInfo, Service, ServiceType, SgwService,
};
use crate::metrics;
use crate::names::SERVICE_CLEANUP_FINALIZER;
use crate::nrp::NrpLocations;
use crate::timers::{Timer, TimerTable};
use crate::workers::merged_ingress;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

/// Start-up calls (finalizer recoveries, backfills, sweeps) in flight at once: upstream's
/// orphan sweep worker pool.
pub const STARTUP_CONCURRENCY: usize = 10;
/// Attempts of one start-up Kubernetes write or sweep deletion before it is given up.
pub const STARTUP_TASK_ATTEMPTS: u32 = 5;
/// Initial objects (Nodes, EndpointSlices, Services, registrations, Pods) the pass takes per
/// tick: a tick's work stays bounded (a guest call has a CPU deadline) however big the cluster.
pub const STARTUP_SLICE: usize = 1_000;

/// The five list calls of step 3, in the order they start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ListKind {
    SgwServices,
    AddressLocations,
    LoadBalancers,
    NatGateways,
    PublicIps,
}

impl ListKind {
    pub const ALL: [ListKind; 5] =
        [ListKind::SgwServices, ListKind::AddressLocations, ListKind::LoadBalancers, ListKind::NatGateways, ListKind::PublicIps];

    pub fn call(self) -> CloudCall {
        match self {
            ListKind::SgwServices => CloudCall::GetSgwServices,
            ListKind::AddressLocations => CloudCall::GetAddressLocations,
            ListKind::LoadBalancers => CloudCall::ListLoadBalancers,
            ListKind::NatGateways => CloudCall::ListNatGateways,
            ListKind::PublicIps => CloudCall::ListPublicIps,
        }
    }

    /// The metric label (`call`): the call's label, made unique for the two NAT reads.
    pub fn label(self) -> &'static str {
        match self {
            ListKind::SgwServices => "GET services",
            ListKind::AddressLocations => "GET addressLocations",
            ListKind::LoadBalancers => "GET loadBalancers",
            ListKind::NatGateways => "GET natGateways",
            ListKind::PublicIps => "GET publicIPAddresses",
        }
    }

    fn accepts(self, out: &CallOutput) -> bool {
        matches!(
            (self, out),
            (ListKind::SgwServices, CallOutput::SgwServices(_))
                | (ListKind::AddressLocations, CallOutput::AddressLocations(_))
                | (ListKind::LoadBalancers | ListKind::NatGateways, CallOutput::Names(_))
                | (ListKind::PublicIps, CallOutput::PublicIps(_))
        )
    }
}

/// One list of the current attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ListState {
    InFlight,
    Done(CallOutput),
    Failed,
}

/// What a start-up Kubernetes write or deletion is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Step 5: the finalizers of a Service no longer wanted, with no Azure trace left.
    RecoverFinalizers(Identity),
    /// Step 5 (this engine): the ingress we wrote on a live Service whose cloud resources are
    /// gone.
    ClearIngress,
    /// Step 12: a desired Service registered in NRP without its ingress IP.
    BackfillIngress,
    /// Step 13: an unattached public IP of our naming that nothing explains.
    SweepPublicIp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub kind: TaskKind,
    pub call: Call,
    /// Failed attempts so far.
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    List(ListKind),
    Task(Task),
}

/// A start-up call in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupCall {
    pub purpose: Purpose,
    pub deadline_ms: u64,
}

/// The cluster as the initial lists showed it: the latest object per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialObjects {
    pub nodes: BTreeMap<String, Node>,
    pub slices: BTreeMap<String, EndpointSlice>,
    pub services: BTreeMap<String, Service>,
    pub pods: BTreeMap<String, Pod>,
}

impl InitialObjects {
    fn apply(&mut self, ev: KubeEvent) {
        match ev {
            KubeEvent::NodeApplied(n) => {
                self.nodes.insert(n.name.clone(), n);
            }
            KubeEvent::NodeDeleted(n) => {
                self.nodes.remove(&n.name);
            }
            KubeEvent::EndpointSliceApplied(s) => {
                self.slices.insert(slice_key(&s), s);
            }
            KubeEvent::EndpointSliceDeleted(s) => {
                self.slices.remove(&slice_key(&s));
            }
            KubeEvent::ServiceApplied(s) => {
                self.services.insert(service_key(&s), s);
            }
            KubeEvent::ServiceDeleted(s) => {
                self.services.remove(&service_key(&s));
            }
            KubeEvent::PodApplied(p) => {
                self.pods.insert(pod_key(&p), p);
            }
            KubeEvent::PodDeleted(p) => {
                self.pods.remove(&pod_key(&p));
            }
            KubeEvent::InitialListsComplete => {}
        }
    }
}

/// The pass of steps 4-10 between ticks: the initial cluster, what the lists showed, and how
/// far it got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pass {
    pub stage: PassStage,
    pub objs: InitialObjects,
    /// Step 2: the inbound and egress identities Kubernetes wants.
    pub desired_in: BTreeSet<Identity>,
    pub desired_eg: BTreeSet<Identity>,
    /// Every initial Service's key, by UID.
    pub uids: BTreeMap<Identity, String>,
    /// Step 3: what NRP registers and what Azure holds, public IPs by lower-cased name.
    pub nrp_lbs: BTreeSet<Identity>,
    pub nrp_nats: BTreeSet<Identity>,
    pub azure_lbs: BTreeSet<Identity>,
    pub azure_nats: BTreeSet<Identity>,
    pub pips: BTreeMap<String, PublicIpInfo>,
}

/// Where the pass is, in its order; a cursor is the last key a stage took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PassStage {
    Nodes,
    Slices,
    Finalizers(Option<String>),
    Services(Option<String>),
    LoadBalancerRemovals(Option<Identity>),
    NatGatewayRemovals(Option<Identity>),
    Pods,
}

impl Pass {
    fn wanted(&self, id: &Identity) -> bool {
        self.desired_in.contains(id) || self.desired_eg.contains(id)
    }

    /// Step 5's test: NRP, Azure or a public IP by name still knows `id`.
    fn has_azure_trace(&self, id: &Identity) -> bool {
        self.nrp_lbs.contains(id)
            || self.nrp_nats.contains(id)
            || self.azure_lbs.contains(id)
            || self.azure_nats.contains(id)
            || self.pips.contains_key(&id.pip_name())
    }
}

/// An ordered collection walked a key at a time.
trait KeysAfter<K> {
    /// The first key after `after` (the first of all without one).
    fn first_after(&self, after: Option<&K>) -> Option<K>;
}

impl<K: Ord + Clone, V> KeysAfter<K> for BTreeMap<K, V> {
    fn first_after(&self, after: Option<&K>) -> Option<K> {
        match after {
            Some(k) => self.range((Bound::Excluded(k), Bound::Unbounded)).next().map(|(k, _)| k.clone()),
            None => self.keys().next().cloned(),
        }
    }
}

impl<K: Ord + Clone> KeysAfter<K> for BTreeSet<K> {
    fn first_after(&self, after: Option<&K>) -> Option<K> {
        match after {
            Some(k) => self.range((Bound::Excluded(k), Bound::Unbounded)).next().cloned(),
            None => self.first().cloned(),
        }
    }
}

fn service_key(s: &Service) -> String {
    format!("{}/{}", s.meta.namespace, s.meta.name)
}

/// The start-up state. A restored snapshot of a schema without it is an engine that was already
/// running: [`Startup::default`] is `Ready`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Startup {
    pub phase: InitPhase,
    /// `InitialListsComplete` was delivered.
    pub marker: bool,
    /// The engine clock at the first tick, when the lists start (for
    /// `initialization_duration_seconds`).
    pub started_at_ms: Option<u64>,
    /// How long initialization took, once Ready.
    pub duration_ms: Option<u64>,
    /// The current attempt's lists (empty between attempts).
    pub lists: BTreeMap<ListKind, ListState>,
    /// Failed list attempts.
    pub failures: u32,
    /// When the next attempt starts, after a failure.
    pub retry_at_ms: Option<u64>,
    /// Why the latest attempt failed.
    pub error: Option<String>,
    /// The initial cluster, until the pass takes it.
    pub initial: InitialObjects,
    /// The pass under way, between the lists and `reconciling`.
    #[serde(default)]
    pub pass: Option<Pass>,
    /// Watch events delivered after the marker, applied once Ready.
    pub held: Vec<KubeEvent>,
    /// `K8sResources.Services`: inbound identities desired at start-up.
    pub k8s_services: u64,
    /// Start-up calls in flight.
    pub calls: BTreeMap<CallId, StartupCall>,
    /// Start-up calls to start (at most [`STARTUP_CONCURRENCY`] in flight).
    pub queue: VecDeque<Task>,
    /// Failed start-up calls waiting for their retry: (not before, task).
    pub waiting: Vec<(u64, Task)>,
    /// Steps 12 and 13, queued when the init gate opens.
    pub finish: Vec<Task>,
    /// `recoveredServiceFinalizers`: stuck finalizers the pass handed to the diff or orphan path.
    pub recovered_services: BTreeSet<Identity>,
}

impl Default for Startup {
    fn default() -> Startup {
        Startup { phase: InitPhase::Ready, ..Startup::listing() }
    }
}

impl Startup {
    /// A new engine's: nothing listed yet.
    pub fn listing() -> Startup {
        Startup {
            phase: InitPhase::Listing,
            marker: false,
            started_at_ms: None,
            duration_ms: None,
            lists: BTreeMap::new(),
            failures: 0,
            retry_at_ms: None,
            error: None,
            initial: InitialObjects::default(),
            pass: None,
            held: Vec::new(),
            k8s_services: 0,
            calls: BTreeMap::new(),
            queue: VecDeque::new(),
            waiting: Vec::new(),
            finish: Vec::new(),
            recovered_services: BTreeSet::new(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.phase == InitPhase::Ready
    }

    /// Arms the table from this state: every call's deadline and the earliest retry.
    pub(crate) fn rearm(&self, timers: &mut TimerTable) {
        for (id, c) in &self.calls {
            timers.set(Timer::StartupCallTimeout(*id), c.deadline_ms);
        }
        timers.stop(&Timer::StartupRetry);
        if let Some(at) = self.retry_at_ms.into_iter().chain(self.waiting.iter().map(|(at, _)| *at)).min() {
            timers.set(Timer::StartupRetry, at);
        }
    }

    fn all_listed(&self) -> bool {
        self.lists.len() == ListKind::ALL.len() && self.lists.values().all(|s| matches!(s, ListState::Done(_)))
    }
}

/// The NRP snapshot of startup step 3: which identities are registered, per kind, and the
/// address locations, canonicalised. `default-natgw` never enters it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NrpSnapshot {
    pub load_balancers: Vec<Identity>,
    pub nat_gateways: Vec<Identity>,
    pub locations: NrpLocations,
}

/// Builds the snapshot: `Inbound` entries are load balancers, `Outbound` NAT gateways,
/// `InboundOutbound` both; the reserved identity is skipped everywhere; location keys and
/// addresses are canonical, service names lower-cased; empty entries are dropped.
pub fn nrp_snapshot(services: &[SgwService], locations: &[AddressLocation]) -> NrpSnapshot {
    let mut snap = NrpSnapshot::default();
    for s in services {
        let id = Identity::new(&s.name);
        if id.is_empty() || id.is_reserved() {
            continue;
        }
        if matches!(s.service_type, ServiceType::Inbound | ServiceType::InboundOutbound) {
            snap.load_balancers.push(id.clone());
        }
        if matches!(s.service_type, ServiceType::Outbound | ServiceType::InboundOutbound) {
            snap.nat_gateways.push(id);
        }
    }
    for l in locations {
        let loc = canonical(l.location.trim());
        for a in &l.addresses {
            let services: BTreeSet<Identity> =
                a.services.iter().map(|s| Identity::new(s)).filter(|id| !id.is_empty() && !id.is_reserved()).collect();
            if services.is_empty() {
                continue;
            }
            snap.locations
                .entry(Text::from(loc.as_str()))
                .or_default()
                .entry(Text::from(canonical(a.address.trim())))
                .or_default()
                .extend(services);
        }
    }
    snap
}

/// A Service UID as Kubernetes writes it (8-4-4-4-12 hex digits, any case): the names of our
/// load balancers and of their public IPs.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// Whether `id` is named as this controller names what it owns: a Service UID or an admissible
/// egress identity (never `default-natgw`).
pub fn is_our_naming(id: &Identity) -> bool {
    !id.is_reserved() && (is_uuid(id.as_str()) || check_egress_identity(id.as_str()).is_ok())
}

/// The identity a public IP name belongs to (`<id>-pip-v6` is tested first), if any.
pub fn public_ip_identity(name: &str) -> Option<Identity> {
    let lower = name.to_ascii_lowercase();
    let id = lower.strip_suffix("-pip-v6").or_else(|| lower.strip_suffix("-pip"))?;
    (!id.is_empty()).then(|| Identity::new(id))
}

/// The egress identity `pod` makes desired at start-up (step 2): a live Running/Pending pod with
/// an admissible label and at least one address placed under a same-family host IP.
pub fn desired_egress_identity(pod: &Pod) -> Option<Identity> {
    if !is_valid(pod) {
        return None;
    }
    let label = egress_identity(pod);
    if label.is_empty() || check_egress_identity(&label).is_err() || parse_ip(pod.host_ip.trim()).is_none() {
        return None;
    }
    let locs = locations_by_family(pod);
    pod_addresses(pod).iter().any(|a| parse_ip(a).is_some() && location_for(&locs, a).is_some()).then(|| Identity::new(&label))
}

/// The family of the public IP we create for `svc` (its single IP family; IPv4 by default).
pub fn service_family(svc: &Service) -> Family {
    if svc.ip_families.first().is_some_and(|f| f.eq_ignore_ascii_case("IPv6")) {
        Family::V6
    } else {
        Family::V4
    }
}

/// `current` without our entry: the IP `ours` when we know it; otherwise every IP entry of our
/// family, unless another controller owns the Service's status (`foreign`: it has a
/// `loadBalancerClass`). Hostnames and the other family's entries always stay (scenario 134).
pub fn ingress_without_ours(current: &[LoadBalancerIngress], ours: Option<&str>, fam: Family, foreign: bool) -> Vec<LoadBalancerIngress> {
    current
        .iter()
        .filter(|e| {
            if e.ip.is_empty() {
                return true;
            }
            match ours {
                Some(ip) => canonical(e.ip.trim()) != canonical(ip.trim()),
                None => foreign || parse_ip(e.ip.trim()).map(|a| family(&a)) != Some(fam),
            }
        })
        .cloned()
        .collect()
}

/// The outputs of a successful attempt.
struct Listed {
    services: Vec<SgwService>,
    locations: Vec<AddressLocation>,
    load_balancers: Vec<String>,
    nat_gateways: Vec<String>,
    public_ips: Vec<PublicIpInfo>,
}

fn is_gone(e: &CallError) -> bool {
    matches!(e.kind, ErrorKind::NotFound | ErrorKind::Replaced) || e.status == 404
}

impl Engine {
    // ------------------------------------------------------------------ inspection

    /// Whether the start-up pass is over (the engine applies watch events as they come).
    pub fn is_initialized(&self) -> bool {
        self.startup.is_ready()
    }

    pub fn initialization(&self) -> Initialization {
        Initialization {
            phase: self.startup.phase,
            initial_lists_complete: self.startup.marker || self.startup.is_ready(),
            failed_attempts: self.startup.failures,
            error: self.startup.error.clone(),
        }
    }

    /// Watch events held until initialization completes.
    pub fn held_events(&self) -> usize {
        self.startup.held.len()
    }

    // ------------------------------------------------------------------ inputs

    pub(crate) fn note_first_input(&mut self) {
        if !self.startup.is_ready() && self.startup.started_at_ms.is_none() {
            self.startup.started_at_ms = Some(self.now_ms);
        }
    }

    /// A Kubernetes event delivered before initialization completed.
    pub(crate) fn startup_event(&mut self, ev: KubeEvent) {
        match ev {
            KubeEvent::InitialListsComplete => self.startup.marker = true,
            ev if !self.startup.marker => self.startup.initial.apply(ev),
            ev => self.startup.held.push(ev),
        }
    }

    /// Whether `id` is a start-up call.
    pub(crate) fn awaits_startup_call(&self, id: CallId) -> bool {
        self.startup.calls.contains_key(&id)
    }

    /// Whether the start-up step has work to start at `now` (the engine wants a tick).
    pub(crate) fn startup_due(&self) -> bool {
        let s = &self.startup;
        match s.phase {
            InitPhase::Ready => false,
            InitPhase::Listing if s.pass.is_some() => true,
            InitPhase::Listing if s.lists.is_empty() && s.retry_at_ms.is_none_or(|t| t <= self.now_ms) => true,
            _ => !s.queue.is_empty() && s.calls.len() < STARTUP_CONCURRENCY,
        }
    }

    fn arm_startup_timers(&mut self) {
        self.startup.rearm(&mut self.timers);
    }

    // ------------------------------------------------------------------ completions

    /// Applies the completion of a start-up call. False if `id` is not one.
    pub(crate) fn complete_startup_call(&mut self, id: CallId, outcome: Result<CallOutput, CallError>) -> bool {
        let Some(call) = self.startup.calls.remove(&id) else { return false };
        self.timers.stop(&Timer::StartupCallTimeout(id));
        match call.purpose {
            Purpose::List(kind) => {
                match outcome {
                    Ok(out) if kind.accepts(&out) => {
                        self.startup.lists.insert(kind, ListState::Done(out));
                    }
                    Ok(out) => self.list_failed(kind, &format!("unexpected response {}", output_kind(&out))),
                    Err(e) => self.list_failed(kind, &e.to_string()),
                }
                self.end_attempt_if_failed();
            }
            Purpose::Task(task) => self.complete_task(task, outcome),
        }
        self.arm_startup_timers();
        true
    }

    fn list_failed(&mut self, kind: ListKind, message: &str) {
        self.startup.lists.insert(kind, ListState::Failed);
        self.metrics.inc(metrics::INITIALIZATION_FAILURES_TOTAL, &[("call", kind.label())]);
        // The first failure of an attempt names it.
        if self.startup.lists.values().filter(|s| matches!(s, ListState::Failed)).count() == 1 {
            self.startup.error = Some(format!("not initialized: start-up list {} failed: {message}", kind.label()));
        }
    }

    /// Once every list of a failed attempt is back, the next attempt is scheduled.
    fn end_attempt_if_failed(&mut self) {
        let s = &self.startup;
        if s.lists.values().any(|l| matches!(l, ListState::InFlight)) || !s.lists.values().any(|l| matches!(l, ListState::Failed)) {
            return;
        }
        self.startup.failures = self.startup.failures.saturating_add(1);
        let delay = backoff_ms(self.startup.failures, &mut self.rng);
        let at = self.now_ms.saturating_add(delay);
        self.startup.lists.clear();
        self.startup.retry_at_ms = Some(at);
        if let Some(e) = &mut self.startup.error {
            e.push_str(&format!(" (attempt {}; retrying in {} ms)", self.startup.failures, delay));
        }
    }

    fn complete_task(&mut self, mut task: Task, outcome: Result<CallOutput, CallError>) {
        let ok = match &outcome {
            Ok(_) => true,
            Err(e) => is_gone(e),
        };
        match (&task.kind, ok) {
            (TaskKind::RecoverFinalizers(_), true) => self.metrics.inc(metrics::FINALIZERS_RECOVERED_TOTAL, &[]),
            // Retried only at the next restart (upstream).
            (TaskKind::RecoverFinalizers(_), false) => self.metrics.inc(metrics::SERVICE_FINALIZER_REMOVE_FAILED_TOTAL, &[]),
            (TaskKind::SweepPublicIp, true) => self.metrics.inc(metrics::ORPHAN_PUBLIC_IPS_SWEPT_TOTAL, &[]),
            (_, true) => {}
            (kind, false) => {
                task.attempts += 1;
                if task.attempts < STARTUP_TASK_ATTEMPTS {
                    let at = self.now_ms.saturating_add(backoff_ms(task.attempts, &mut self.rng));
                    self.startup.waiting.push((at, task));
                } else if *kind == TaskKind::BackfillIngress {
                    self.metrics.inc(metrics::SERVICE_EXTERNAL_IP_RECOVERY_FAILED_TOTAL, &[]);
                }
            }
        }
    }

    /// Fails every start-up call whose deadline passed.
    pub(crate) fn fire_startup_timeouts(&mut self) {
        let expired: Vec<CallId> = self
            .timers
            .expired(self.now_ms)
            .filter_map(|t| match t {
                Timer::StartupCallTimeout(id) => Some(*id),
                _ => None,
            })
            .collect();
        for id in expired {
            self.complete_startup_call(id, Err(CallError::of_kind(ErrorKind::Timeout, "start-up call timed out after 5m")));
        }
    }

    // ------------------------------------------------------------------ the steps

    /// Starts the lists when due, runs the pass once the lists and the marker are in, and starts
    /// queued start-up calls.
    pub(crate) fn run_startup(&mut self, io: &mut dyn Io) {
        if self.startup.is_ready() {
            return;
        }
        if self.startup.phase == InitPhase::Listing {
            let due =
                self.startup.pass.is_none() && self.startup.lists.is_empty() && self.startup.retry_at_ms.is_none_or(|t| t <= self.now_ms);
            if due {
                self.startup.retry_at_ms = None;
                let deadline = self.now_ms.saturating_add(OPERATION_TIMEOUT_MS);
                for kind in ListKind::ALL {
                    let id = io.start(Call::Cloud(kind.call()));
                    self.startup.calls.insert(id, StartupCall { purpose: Purpose::List(kind), deadline_ms: deadline });
                    self.startup.lists.insert(kind, ListState::InFlight);
                }
            }
            if self.startup.marker && self.startup.all_listed() {
                self.begin_pass();
            }
            self.run_pass_slice();
        }
        // Calls the pass queued wait for its end, so no answer lands in the middle of it.
        if self.startup.pass.is_none() {
            self.start_startup_tasks(io);
        }
        self.arm_startup_timers();
    }

    fn start_startup_tasks(&mut self, io: &mut dyn Io) {
        let now = self.now_ms;
        if self.startup.waiting.iter().any(|(at, _)| *at <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.startup.waiting).into_iter().partition(|(at, _)| *at <= now);
            self.startup.waiting = later;
            self.startup.queue.extend(due.into_iter().map(|(_, t)| t));
        }
        while self.startup.calls.len() < STARTUP_CONCURRENCY {
            let Some(task) = self.startup.queue.pop_front() else { break };
            let id = io.start(task.call.clone());
            self.startup
                .calls
                .insert(id, StartupCall { purpose: Purpose::Task(task), deadline_ms: now.saturating_add(OPERATION_TIMEOUT_MS) });
        }
    }

    /// Moves past the init gate (4.4) when it opens, and to Ready once the finishing calls are
    /// done. Returns true when the engine just became Ready (held events were applied).
    pub(crate) fn finish_startup(&mut self, io: &mut dyn Io) -> bool {
        loop {
            match self.startup.phase {
                InitPhase::Reconciling if self.init_gate_open() => {
                    let finish = std::mem::take(&mut self.startup.finish);
                    self.startup.queue.extend(finish);
                    self.startup.phase = InitPhase::Finishing;
                    self.start_startup_tasks(io);
                    self.arm_startup_timers();
                }
                InitPhase::Finishing
                    if self.startup.calls.is_empty() && self.startup.queue.is_empty() && self.startup.waiting.is_empty() =>
                {
                    self.become_ready();
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// 4.4: every op Created or parked (terminal or retries), nothing due for either updater,
    /// no pod deletion record, no start-up call outstanding.
    fn init_gate_open(&self) -> bool {
        self.ops.blocking_init() == 0
            && self.dispatcher.in_flight() == 0
            && !self.dispatcher.has_runnable()
            && self.locations_updater.is_idle()
            && self.egress.records.is_empty()
            && self.egress.calls.queue.is_empty()
            && self.egress.calls.in_flight.is_empty()
            && self.egress.calls.deferred.is_empty()
            && self.startup.calls.is_empty()
            && self.startup.queue.is_empty()
            && self.startup.waiting.is_empty()
    }

    fn become_ready(&mut self) {
        self.startup.phase = InitPhase::Ready;
        self.startup.duration_ms = Some(self.now_ms.saturating_sub(self.startup.started_at_ms.unwrap_or(self.now_ms)));
        self.startup.error = None;
        self.arm_startup_timers();
        for ev in std::mem::take(&mut self.startup.held) {
            self.handle_kube_event(ev);
        }
    }

    /// Steps 2-3 once the lists and the marker are in: the NRP mirror is seeded and the pass is
    /// set up; [`Engine::run_pass_slice`] then takes it on, a slice per tick.
    fn begin_pass(&mut self) {
        let mut listed = Listed { services: vec![], locations: vec![], load_balancers: vec![], nat_gateways: vec![], public_ips: vec![] };
        for (kind, state) in std::mem::take(&mut self.startup.lists) {
            match (kind, state) {
                (ListKind::SgwServices, ListState::Done(CallOutput::SgwServices(v))) => listed.services = v,
                (ListKind::AddressLocations, ListState::Done(CallOutput::AddressLocations(v))) => listed.locations = v,
                (ListKind::LoadBalancers, ListState::Done(CallOutput::Names(v))) => listed.load_balancers = v,
                (ListKind::NatGateways, ListState::Done(CallOutput::Names(v))) => listed.nat_gateways = v,
                (ListKind::PublicIps, ListState::Done(CallOutput::PublicIps(v))) => listed.public_ips = v,
                _ => {}
            }
        }
        self.startup.error = None;
        let objs = std::mem::take(&mut self.startup.initial);

        // Step 3: the NRP mirror.
        self.seed_nrp(&listed.services, &listed.locations);
        // Step 2: what Kubernetes wants.
        let desired_in: BTreeSet<Identity> = objs
            .services
            .values()
            .filter(|s| needs_load_balancer(s))
            .map(|s| Identity::new(&s.meta.uid))
            .filter(|id| !id.is_empty())
            .collect();
        let desired_eg: BTreeSet<Identity> = objs.pods.values().filter_map(desired_egress_identity).collect();
        self.startup.k8s_services = desired_in.len() as u64;
        let uids = objs.services.iter().map(|(key, s)| (Identity::new(&s.meta.uid), key.clone())).collect();
        let azure_lbs: BTreeSet<Identity> = listed.load_balancers.iter().map(|n| Identity::new(n)).collect();
        let pips: BTreeMap<String, PublicIpInfo> = listed.public_ips.into_iter().map(|p| (p.name.to_ascii_lowercase(), p)).collect();
        let nrp_lbs = self.nrp.load_balancers().clone();
        // A desired Service registered in NRP whose load balancer or public IP is gone (a delete
        // that failed at the unregistration, then a crash) is created again rather than adopted:
        // its adoption re-PUT would reference a public IP that no longer exists, forever. The
        // create re-sends the registration, which NRP takes as a no-op.
        for id in nrp_lbs.iter().filter(|id| desired_in.contains(*id)) {
            if !azure_lbs.contains(id) || !pips.contains_key(&id.pip_name()) {
                self.set_nrp_load_balancer(id, false);
            }
        }
        self.startup.pass = Some(Pass {
            stage: PassStage::Nodes,
            nrp_lbs,
            nrp_nats: self.nrp.nat_gateways().clone(),
            azure_lbs,
            azure_nats: listed.nat_gateways.iter().map(|n| Identity::new(n)).collect(),
            pips,
            desired_in,
            desired_eg,
            uids,
            objs,
        });
    }

    /// Runs the pass (steps 4-10) for at most [`STARTUP_SLICE`] objects; once it is through, the
    /// engine moves on to `reconciling`. Nothing starts meanwhile (the phase stays `listing`),
    /// so a pass cut into slices decides exactly what one uncut pass would.
    fn run_pass_slice(&mut self) {
        let Some(mut pass) = self.startup.pass.take() else { return };
        let mut budget = STARTUP_SLICE;
        while budget > 0 {
            match pass.stage.clone() {
                // Step 4: the caches.
                PassStage::Nodes => match pass.objs.nodes.pop_first() {
                    Some((_, n)) => self.handle_kube_event(KubeEvent::NodeApplied(n)),
                    None => pass.stage = PassStage::Slices,
                },
                PassStage::Slices => match pass.objs.slices.pop_first() {
                    Some((_, s)) => self.handle_kube_event(KubeEvent::EndpointSliceApplied(s)),
                    None => pass.stage = PassStage::Finalizers(None),
                },
                // Step 5: stuck Service finalizers (keyed on the finalizer, not on the type).
                PassStage::Finalizers(after) => match pass.objs.services.first_after(after.as_ref()) {
                    Some(key) => {
                        self.recover_service_finalizer(&pass, &key);
                        pass.stage = PassStage::Finalizers(Some(key));
                    }
                    None => pass.stage = PassStage::Services(None),
                },
                // Steps 6-8: the initial Services through the ordinary entry points (adopt what
                // NRP holds, create what is missing, delete what is no longer wanted) ...
                PassStage::Services(after) => match pass.objs.services.first_after(after.as_ref()) {
                    Some(key) => {
                        self.handle_kube_event(KubeEvent::ServiceApplied(pass.objs.services[&key].clone()));
                        pass.stage = PassStage::Services(Some(key));
                    }
                    None => pass.stage = PassStage::LoadBalancerRemovals(None),
                },
                // ... and the registrations no Service or pod explains (5.1, removals).
                PassStage::LoadBalancerRemovals(after) => match pass.nrp_lbs.first_after(after.as_ref()) {
                    Some(id) => {
                        if !pass.wanted(&id) {
                            self.delete_service(&id, true, false);
                        }
                        pass.stage = PassStage::LoadBalancerRemovals(Some(id));
                    }
                    None => pass.stage = PassStage::NatGatewayRemovals(None),
                },
                PassStage::NatGatewayRemovals(after) => match pass.nrp_nats.first_after(after.as_ref()) {
                    Some(id) => {
                        if !pass.wanted(&id) {
                            self.delete_service(&id, false, false);
                        }
                        pass.stage = PassStage::NatGatewayRemovals(Some(id));
                    }
                    None => pass.stage = PassStage::Pods,
                },
                // Egress pods: terminating ones recover their drain records (never last-pod: the
                // NAT gateway's removal comes from the diff), the others are registered at once.
                PassStage::Pods => match pass.objs.pods.pop_first() {
                    Some((key, pod)) => {
                        if pod.meta.deletion_timestamp.is_none() {
                            self.startup_admit_pod(&pod);
                        } else if has_pod_finalizer(&pod) {
                            self.egress.pod_objects.insert(key, pod.clone());
                            self.recover_pod_finalizer(&pod);
                        }
                    }
                    None => {
                        // Steps 9 and 10, and what the finishing steps will need: linear in the
                        // cloud's size but cheap per object, so they take one slice.
                        self.finish_pass(&pass);
                        return;
                    }
                },
            }
            budget -= 1;
        }
        self.startup.pass = Some(pass);
    }

    /// Step 5 for one initial Service: one we no longer serve but whose cleanup finalizer is
    /// still on it. With an Azure trace the diff or the orphan path finishes it; without one its
    /// finalizers are removed (and its ingress cleared of our entries) at once.
    fn recover_service_finalizer(&mut self, pass: &Pass, key: &str) {
        let svc = &pass.objs.services[key];
        let id = Identity::new(&svc.meta.uid);
        if id.is_empty() || needs_load_balancer(svc) || !svc.meta.finalizers.iter().any(|f| f == SERVICE_CLEANUP_FINALIZER) {
            return;
        }
        if pass.has_azure_trace(&id) {
            self.startup.recovered_services.insert(id);
            self.metrics.inc(metrics::FINALIZERS_RECOVERY_SCHEDULED_TOTAL, &[]);
            return;
        }
        let target = svc.meta.object_ref();
        if svc.meta.deletion_timestamp.is_none() && svc.load_balancer_class.is_none() {
            let want = ingress_without_ours(&svc.ingress, None, service_family(svc), false);
            if want != svc.ingress {
                self.startup_task(TaskKind::ClearIngress, Call::Kube(KubeCall::PatchServiceIngress(target.clone(), want)));
            }
        }
        self.startup_task(TaskKind::RecoverFinalizers(id), Call::Kube(KubeCall::RemoveServiceFinalizers(target)));
    }

    /// The pass's last slice: IPv6 widening of adopted NAT gateways, orphans (step 9), the public
    /// IPs the list knows, the finishing steps' tasks (12 and 13) and the first location sync
    /// (step 10). Then `reconciling` begins.
    fn finish_pass(&mut self, pass: &Pass) {
        let Pass { nrp_lbs, nrp_nats, azure_lbs, azure_nats, pips, objs, .. } = pass;
        // A NAT gateway left IPv4-only in a cluster that has IPv6 (its widening, 2.6, was lost
        // with the instance that started it) is widened now.
        let families = self.outbound_ip_families();
        if families.contains(&IpVersion::V6) {
            let narrow: Vec<Identity> =
                nrp_nats.iter().filter(|id| !self.ops.contains(id) && !pips.contains_key(&id.pip_v6_name())).cloned().collect();
            for id in narrow {
                self.widen_untracked_nat_gateway(&id, &families);
            }
        }

        // Step 9: orphans carrying our naming that nothing explains, in dependency order (each
        // delete unregisters, then deletes the LB or NAT gateway, then its public IPs).
        let mut orphan_lbs = BTreeSet::new();
        for id in azure_lbs {
            if is_uuid(id.as_str()) && !id.is_reserved() && !pass.wanted(id) && !nrp_lbs.contains(id) && !self.ops.contains(id) {
                self.schedule_orphan(id, true, pass);
                orphan_lbs.insert(id.clone());
            }
        }
        for id in azure_nats {
            if is_our_naming(id) && !pass.wanted(id) && !nrp_nats.contains(id) && !self.ops.contains(id) {
                self.schedule_orphan(id, false, pass);
            }
        }
        for name in pips.keys() {
            let Some(id) = name.strip_suffix("-pip").map(Identity::new) else { continue };
            let anywhere = nrp_lbs.contains(&id) || nrp_nats.contains(&id) || azure_lbs.contains(&id) || azure_nats.contains(&id);
            if is_uuid(id.as_str())
                && !id.is_reserved()
                && !anywhere
                && !pass.wanted(&id)
                && !orphan_lbs.contains(&id)
                && !self.ops.contains(&id)
            {
                self.schedule_orphan(&id, true, pass);
            }
        }

        // What the start-up list says each inbound public IP holds.
        let known: Vec<(Identity, String)> = self
            .ops
            .iter()
            .filter(|(_, op)| op.kind() == ServiceKind::Inbound && op.public_ip.is_none())
            .filter_map(|(id, _)| pips.get(&id.pip_name()).and_then(|p| p.ip_address.clone()).map(|ip| (id.clone(), ip)))
            .collect();
        for (id, ip) in known {
            self.update_op(&id, |op| op.public_ip = Some(ip));
        }

        // Step 12, prepared: desired Services registered in NRP whose ingress lacks their IP.
        for svc in objs.services.values().filter(|s| needs_load_balancer(s)) {
            let id = Identity::new(&svc.meta.uid);
            let Some(ip) = nrp_lbs.contains(&id).then(|| pips.get(&id.pip_name())).flatten().and_then(|p| p.ip_address.clone()) else {
                continue;
            };
            let want = merged_ingress(&svc.ingress, &ip);
            if want != svc.ingress {
                self.startup.finish.push(Task {
                    kind: TaskKind::BackfillIngress,
                    call: Call::Kube(KubeCall::PatchServiceIngress(svc.meta.object_ref(), want)),
                    attempts: 0,
                });
            }
        }
        // Step 13, prepared: unattached public IPs of our naming that nothing explains.
        for (name, pip) in pips {
            let Some(id) = public_ip_identity(name) else { continue };
            if pip.attached || !is_our_naming(&id) || pass.wanted(&id) || nrp_lbs.contains(&id) || nrp_nats.contains(&id) {
                continue;
            }
            // A delete scheduled above removes its own public IPs.
            let covered = self.ops.get(&id).is_some_and(|op| op.kind() == ServiceKind::Outbound || *name == id.pip_name());
            if covered {
                continue;
            }
            self.startup.finish.push(Task {
                kind: TaskKind::SweepPublicIp,
                call: Call::Cloud(CloudCall::DeletePublicIp { name: pip.name.clone() }),
                attempts: 0,
            });
        }

        // Step 10.
        self.trigger_location_sync();
        self.startup.phase = InitPhase::Reconciling;
    }

    fn startup_task(&mut self, kind: TaskKind, call: Call) {
        self.startup.queue.push_back(Task { kind, call, attempts: 0 });
    }

    /// `DeleteService(id, inbound, isOrphan=true)`, with the Service object when one exists
    /// (its finalizers are released and its ingress cleared by the delete).
    fn schedule_orphan(&mut self, id: &Identity, inbound: bool, pass: &Pass) {
        if inbound {
            if let Some(svc) = pass.uids.get(id).and_then(|key| pass.objs.services.get(key)) {
                self.services.insert(id.clone(), svc.clone());
            }
        }
        self.delete_service(id, inbound, true);
    }

    // ------------------------------------------------------------------ pieces

    /// Seeds the NRP mirror from the ServiceGateway's services and address locations (startup
    /// step 3), replacing what the mirror held. Every key of either model is re-examined by the
    /// next location sync, so a restart against unchanged state syncs nothing (AlreadyInSync).
    pub fn seed_nrp(&mut self, services: &[SgwService], locations: &[AddressLocation]) {
        let snap = nrp_snapshot(services, locations);
        let before: Vec<Identity> = self.nrp.load_balancers().iter().chain(self.nrp.nat_gateways().iter()).cloned().collect();
        for id in before {
            self.set_nrp_load_balancer(&id, false);
            self.set_nrp_nat_gateway(&id, false);
        }
        for id in &snap.load_balancers {
            self.set_nrp_load_balancer(id, true);
        }
        for id in &snap.nat_gateways {
            self.set_nrp_nat_gateway(id, true);
        }
        let old: Vec<Key> = self.nrp.locations().iter().flat_map(|(l, a)| a.keys().map(move |x| (l.clone(), x.clone()))).collect();
        self.dirty.extend(old);
        self.nrp.set_locations(snap.locations);
        let keys: Vec<Key> = self
            .nrp
            .locations()
            .iter()
            .flat_map(|(l, a)| a.keys().map(move |x| (l.clone(), x.clone())))
            .chain(self.desired.nodes().iter().flat_map(|(l, p)| p.keys().map(move |x| (l.clone(), x.clone()))))
            .collect();
        self.dirty.extend(keys);
        self.trigger_location_sync();
    }

    /// Startup step 5 for one egress pod: a terminating pod carrying the cleanup finalizer gets a
    /// non-last drain record with every family's address (or a service-level verification when
    /// it has no IPs), marked recovered; an unlabelled one has its finalizer removed directly.
    /// Returns true when something was scheduled.
    pub fn recover_pod_finalizer(&mut self, pod: &Pod) -> bool {
        if pod.meta.deletion_timestamp.is_none() || !has_pod_finalizer(pod) {
            return false;
        }
        let key = pod_key(pod);
        let label = egress_identity(pod);
        if label.is_empty() || check_egress_identity(&label).is_err() {
            let identity = Identity::new(&label);
            let identity = if identity.is_reserved() { Identity::default() } else { identity };
            self.queue_pod_call(&key, pod.meta.object_ref(), PodCallKind::RemoveDirect { identity });
            return true;
        }
        let addrs = pod_addresses(pod);
        let no_ips = pod.host_ip.is_empty() || addrs.is_empty();
        let addresses = if no_ips { Vec::new() } else { addrs };
        let rec = PodDeletionRecord::new(pod.meta.object_ref(), Identity::new(&label), addresses, self.now_ms)
            .verify_service_drain(no_ips)
            .recovered(true);
        self.put_pod_record(&key, rec);
        self.metrics.inc(metrics::FINALIZERS_RECOVERY_SCHEDULED_TOTAL, &[]);
        self.trigger_location_sync();
        true
    }

    /// Start-up consistency (tests): list calls match the attempt, nothing runs while listing.
    pub(crate) fn check_startup_invariants(&self) -> Result<(), String> {
        let s = &self.startup;
        let in_flight_lists: BTreeSet<ListKind> = s
            .calls
            .values()
            .filter_map(|c| match c.purpose {
                Purpose::List(k) => Some(k),
                Purpose::Task(_) => None,
            })
            .collect();
        let marked: BTreeSet<ListKind> = s.lists.iter().filter(|(_, st)| matches!(st, ListState::InFlight)).map(|(k, _)| *k).collect();
        if in_flight_lists != marked {
            return Err(format!("start-up lists in flight {in_flight_lists:?} != {marked:?}"));
        }
        if s.phase != InitPhase::Listing && (!s.lists.is_empty() || !s.initial.services.is_empty() || !s.initial.pods.is_empty()) {
            return Err("start-up lists or initial objects kept after the pass".into());
        }
        let started = self.dispatcher.in_flight() > 0 || self.locations_updater.in_flight.is_some();
        if s.phase == InitPhase::Listing && (started || (s.pass.is_none() && self.ops.iter().next().is_some())) {
            return Err("an operation runs before the start-up pass is through".into());
        }
        if s.pass.is_some() && (s.phase != InitPhase::Listing || s.calls.values().any(|c| matches!(c.purpose, Purpose::Task(_)))) {
            return Err("a start-up call runs in the middle of the pass".into());
        }
        if s.phase == InitPhase::Ready && (!s.held.is_empty() || !s.calls.is_empty() || !s.queue.is_empty() || !s.finish.is_empty()) {
            return Err("start-up work left after Ready".into());
        }
        Ok(())
    }
}

fn output_kind(out: &CallOutput) -> &'static str {
    match out {
        CallOutput::Done => "done",
        CallOutput::PublicIp(_) => "public-ip",
        CallOutput::NatGateway(_) => "nat-gateway",
        CallOutput::PublicIps(_) => "public-ips",
        CallOutput::Names(_) => "names",
        CallOutput::SgwServices(_) => "sgw-services",
        CallOutput::AddressLocations(_) => "address-locations",
    }
}
