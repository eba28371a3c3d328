//! The replay itself: the engine (through the host's [`EngineDriver`], the component in wasmtime
//! or the native build), the in-process ARM/NRP emulator and the simulated cluster, driven by a
//! trace in virtual time.
//!
//! The host starts at the trace's first instant: the trace events of that instant are applied to
//! the cluster, and the engine receives the cluster's objects as its initial lists, then the
//! marker that they are complete (its start-up pass lists the emulator itself).
//!
//! A single-threaded discrete-event loop. At each instant `now`: the trace events due are applied
//! to the cluster; the watch events the cluster produced are delivered; the engine ticks with the
//! completions due (in `(completion time, call id)` order); every call it starts is performed at
//! once (cloud calls on the emulator, which decides faults and latency from `now`; Kubernetes
//! writes on the cluster) and completes at `now + latency` (0 without a latency rule), so it is
//! handed back in a later tick. When nothing is left at `now`, the clock jumps to the earliest of
//! the next trace event, the next completion and the engine's `next_wake_ms`. No wall time
//! passes for backoffs or latencies.
//!
//! **Crashes** ([`CrashPlan`], `--crash-at-ms`, `--downtime-ms`): at each crash time the host is
//! killed between two instants: the engine, its snapshot and the completions of the calls it had
//! in flight are lost (the emulator already applied those calls, as Azure finishes the operations
//! it accepted; their answers are simply never delivered). The cluster keeps its state, like an
//! API server. While the host is down the trace goes on and nobody watches. A fresh host then
//! starts from nothing but the cloud and the cluster: a new engine, the cluster's objects as its
//! initial lists, the marker, and its start-up pass. Each restart is reported (`restarts`): when,
//! the completions lost, how long the start-up pass took in virtual time and the calls it made.
//! A PUT of a resource whose previous PUT's answer a crash swallowed is counted as a duplicate
//! creation (`duplicate_creations`); it must be idempotent. Throughout, every finalizer removal
//! is checked against the emulator: a Service's finalizer must not be removed while its load
//! balancer, public IP or registration exists, an egress pod's while one of its addresses is
//! still mapped to its identity; a violation is an oracle difference.
//!
//! The replay stops when the trace is exhausted and the system has settled (engine status
//! `settled`, no call in flight, no watch event undelivered, no trace event held back, nothing
//! stuck deleting), or at the virtual time limit (`converged: false`), or as soon as nothing can
//! happen any more (nothing in flight, no wake-up asked for) without having settled
//! (`converged: false` too). A crash still due keeps it going: a settled system is crashed and
//! restarted, and must settle again.

use super::cluster::{Cluster, ObjectKey};
use super::oracle;
use super::report::{self, Report};
use super::timeline::{self, CallSummary, Timeline};
use super::trace::Trace;
use crate::emulator::throttle::{Budget, RateLimits};
use crate::emulator::{CloudState, Decided, Emulator, EmulatorBackend, EmulatorOptions, FaultPlan, ScopeKey};
use anyhow::{Context, Result};
use difftracker_engine::io::{
    Call, CallError, CallId, CallOutput, CloudCall, Completion, EngineStatus, InitPhase, KubeCall, KubeEvent, Pod, TenantConfig,
};
use difftracker_runtime::driver::{CallIds, EngineDriver, EngineKind};
use difftracker_runtime::k8s::{KubeObject, EGRESS_LABEL};
use difftracker_runtime::tenant::{Quarantined, RecoveringEngine, Recovery, StatusRead};
use difftracker_runtime::transport::config::ResourceKind;
use difftracker_runtime::transport::pacing::WritePacer;
use difftracker_runtime::wasm::SandboxLimits;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Six hours of virtual time.
pub const DEFAULT_UNTIL_MS: u64 = 6 * 60 * 60 * 1000;

/// When the host is killed during a replay, and for how long it stays down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashPlan {
    /// Virtual times (ms) at which the host is killed; order and repeats do not matter. A crash
    /// due while the host is still down from the previous one is merged into it.
    pub at_ms: Vec<u64>,
    /// How long the host stays down after each crash (ms).
    pub downtime_ms: u64,
}

impl CrashPlan {
    /// The crash times, sorted and without repeats.
    pub fn times(&self) -> Vec<u64> {
        let mut t = self.at_ms.clone();
        t.sort_unstable();
        t.dedup();
        t
    }

    pub fn is_empty(&self) -> bool {
        self.at_ms.is_empty()
    }
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Seeds the engine's backoff jitter.
    pub seed: u64,
    pub engine: EngineKind,
    /// Virtual time limit.
    pub until_ms: u64,
    /// Fault injection on the emulator (its own `until_ms` stops the faults).
    pub faults: Option<FaultPlan>,
    /// The tenant name given to the engine.
    pub tenant: String,
    /// The engine's request budget (`TenantConfig::max_request_bytes`, `max_request_entries`);
    /// the defaults when `None`.
    pub max_request_bytes: Option<u64>,
    pub max_request_entries: Option<u32>,
    /// Operations the engine runs at once (`TenantConfig::max_operations_in_flight`; 10 when
    /// `None`, as upstream).
    pub max_operations_in_flight: Option<u32>,
    /// The component's sandbox (guest memory, CPU deadline; `--engine wasm`).
    pub sandbox: SandboxLimits,
    /// Host crashes and restarts.
    pub crashes: CrashPlan,
    /// Resources of "a previous controller" the emulator starts with.
    pub cloud_state: Option<CloudState>,
    /// Record a [`Timeline`] for `--html`, sampling the operations' states at most once per this
    /// many virtual ms; `None` (the default) records none of it.
    pub timeline: Option<u64>,
    /// Told now and then how far the replay is, for a progress bar.
    pub progress: Option<Progress>,
    /// The per-subscription budgets the emulator enforces (`429` beyond them); none by default.
    pub rate_limits: Option<RateLimits>,
    /// The write budget the host paces its writes under, in virtual time, as a live host does
    /// (`transport::pacing`); none (unpaced) by default.
    pub write_budget: Option<Budget>,
}

/// A progress callback: `(virtual now ms, trace events applied, trace events in all)`.
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(u64, usize, usize) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Loop iterations between two progress calls.
const PROGRESS_EVERY: u64 = 512;

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            seed: 1,
            engine: EngineKind::Wasm,
            until_ms: DEFAULT_UNTIL_MS,
            faults: None,
            tenant: "replay".into(),
            max_request_bytes: None,
            max_request_entries: None,
            max_operations_in_flight: None,
            sandbox: SandboxLimits::default(),
            crashes: CrashPlan::default(),
            cloud_state: None,
            rate_limits: None,
            write_budget: None,
            timeline: None,
            progress: None,
        }
    }
}

/// Everything a replay ends with.
pub struct ReplayOutcome {
    pub report: Report,
    /// The final cluster (for the oracle and for inspection).
    pub cluster: Cluster,
    /// The emulator's inventory before the engine ran (without what a cloud state seeded that
    /// the controller must adopt or sweep; see [`oracle::baseline_with`]).
    pub baseline: Value,
    /// The emulator's final inventory.
    pub inventory: Value,
    pub status: EngineStatus,
    /// Wall time each start-up pass took (the first start, then each restart; `None` when it
    /// never became ready). Not in the report, which must not depend on the machine.
    pub startup_wall: Vec<Option<Duration>>,
    /// What `--html` draws (when [`ReplayOptions::timeline`] asked for it).
    pub timeline: Option<Timeline>,
}

/// One start of the host: the first one, or a restart after a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StartRecord {
    /// The crash this start follows (absent for the first start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crashed_at_ms: Option<u64>,
    /// Completions of calls in flight at the crash, never delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completions_lost: Option<u64>,
    pub started_at_ms: u64,
    /// Virtual time from the start to the start-up pass's `ready` (absent if it never got there).
    pub startup_ms: Option<u64>,
    /// Cloud calls started from the start to `ready` (all of them, the lists included).
    pub startup_cloud_calls: u64,
    /// Of those, the list calls (`GET` of the five collections the pass lists).
    pub startup_list_calls: u64,
    /// Kubernetes writes started from the start to `ready`.
    pub startup_kube_writes: u64,
}

/// PUTs of resources that already existed, counted as the report's `duplicate_creations`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Duplicates {
    /// PUTs of a resource whose previous PUT's answer was lost in a crash: a crash-caused
    /// duplicate creation (idempotent: the resource is updated in place, never a second one).
    pub after_lost_completion: u64,
    /// Other PUTs of an existing resource during a start-up pass after a restart (the pass
    /// adopts load balancers by re-PUTting them on purpose): not crash-caused duplicates.
    pub adoption: u64,
    /// Duplicate PUTs (of either kind) the emulator itself answered with a conflict (409) or a
    /// failed precondition (412), not an injected fault: a duplicate that was not idempotent.
    /// Must stay 0.
    pub rejected: u64,
    /// By `<METHOD> <kind>` (crash-caused only).
    pub by_call: BTreeMap<String, u64>,
}

/// Counters of the loop, for the report.
#[derive(Clone, Debug, Default)]
pub struct LoopStats {
    pub ticks: u64,
    pub cloud_calls: BTreeMap<String, u64>,
    pub cloud_errors: BTreeMap<String, u64>,
    /// Times the engine asked to be woken at or before the instant it had just been ticked at
    /// (the loop then wakes it 1 ms later, so time always advances).
    pub stale_wakes: u64,
    /// The first start, then one record per restart.
    pub starts: Vec<StartRecord>,
    pub duplicates: Duplicates,
    /// Finalizers removed before their cleanup had finished (oracle differences).
    pub early_finalizers: Vec<String>,
    /// Inputs the engine trapped on twice, dropped (each also a Warning Event on its object).
    pub quarantined: Vec<Quarantined>,
    /// The calls made for each identity (the report's `operations`).
    pub calls_by_identity: BTreeMap<String, CallSummary>,
    /// Writes the host's pacer held until the subscription's budget had a token for them.
    pub writes_paced: u64,
}

/// Replays `trace` with a fresh engine of `options.engine`.
pub fn replay(trace: &Trace, options: &ReplayOptions) -> Result<ReplayOutcome> {
    let driver = options.engine.new_driver_in(CallIds::default(), &options.sandbox)?;
    replay_with(trace, options, driver)
}

/// The resource a PUT writes: its kind and lower-cased name.
type PutTarget = (ResourceKind, String);

fn put_target(call: &CloudCall) -> Option<PutTarget> {
    match call {
        CloudCall::PutPublicIp { name, .. } => Some((ResourceKind::PublicIp, name.to_ascii_lowercase())),
        CloudCall::PutLoadBalancer(spec) => Some((ResourceKind::LoadBalancer, spec.name.to_ascii_lowercase())),
        CloudCall::PutNatGateway(spec) => Some((ResourceKind::NatGateway, spec.name.to_ascii_lowercase())),
        _ => None,
    }
}

fn is_list(call: &CloudCall) -> bool {
    matches!(
        call,
        CloudCall::ListPublicIps
            | CloudCall::ListLoadBalancers
            | CloudCall::ListNatGateways
            | CloudCall::GetSgwServices
            | CloudCall::GetAddressLocations
    )
}

/// Whether a call spends the subscription's write budget (everything but a GET).
fn is_write(call: &CloudCall) -> bool {
    !call.label().starts_with("GET ")
}

/// A write the host holds until the pacer has a token for it.
struct PacedCall {
    id: CallId,
    call: CloudCall,
    subjects: Vec<String>,
    marked: Option<Call>,
    /// Started during a restarted host's start-up pass.
    starting: bool,
}

/// The emulator as the replay's calls reach it.
struct CloudSide<'a> {
    backend: &'a EmulatorBackend,
    emulator: &'a Arc<Emulator>,
    scope: &'a ScopeKey,
}

impl CloudSide<'_> {
    /// Performs `c` at `now`: its outcome, when the answer arrives, and the resource a PUT
    /// writes. Counts errors and idempotent re-creations; tells the pacer what ARM said of the
    /// budget.
    fn perform(
        &self,
        now: u64,
        c: &CloudCall,
        tally: Tally<'_>,
        starting: bool,
        pacer: Option<&WritePacer>,
    ) -> (u64, Result<CallOutput, CallError>, Option<PutTarget>) {
        let Tally { errors, duplicates, lost_puts } = tally;
        let label = c.label();
        let target = put_target(c);
        let existed = target.as_ref().filter(|(kind, name)| self.emulator.state().has_resource(self.scope, *kind, name)).cloned();
        let decided: Decided = self.backend.perform_at(now, c);
        if let (Some(p), Some(a)) = (pacer, decided.admission.filter(|a| a.write)) {
            p.observe(a.remaining);
            if let Some(s) = a.retry_after_s {
                p.hold(now, s.saturating_mul(1000));
            }
        }
        if let Err(e) = &decided.outcome {
            let key = if e.code.is_empty() { format!("{label} {}", e.status) } else { format!("{label} {} {}", e.status, e.code) };
            *errors.entry(key).or_insert(0) += 1;
        }
        if let Some(t) = existed {
            let crash_caused = lost_puts.remove(&t);
            if crash_caused {
                duplicates.after_lost_completion += 1;
                *duplicates.by_call.entry(label.to_string()).or_insert(0) += 1;
            } else if starting {
                duplicates.adoption += 1;
            }
            if (crash_caused || starting) && !decided.injected && matches!(&decided.outcome, Err(e) if e.status == 409 || e.status == 412) {
                duplicates.rejected += 1;
            }
        } else if let Some(t) = &target {
            lost_puts.remove(t);
        }
        (now.saturating_add(decided.latency_ms), decided.outcome, target)
    }
}

/// What the replay counts of the calls it performs.
struct Tally<'a> {
    errors: &'a mut BTreeMap<String, u64>,
    duplicates: &'a mut Duplicates,
    /// PUT targets whose answer a crash swallowed.
    lost_puts: &'a mut BTreeSet<PutTarget>,
}

/// A call whose outcome is decided, on its way back to the engine.
struct Landed {
    id: CallId,
    label: &'static str,
    subjects: Vec<String>,
    marked: Option<Call>,
    at: u64,
    outcome: Result<CallOutput, CallError>,
    target: Option<PutTarget>,
}

/// Records a call started at `now` (per identity, on the timeline) and holds its completion
/// until its time.
fn land(
    now: u64,
    l: Landed,
    calls_by_identity: &mut BTreeMap<String, CallSummary>,
    timeline: Option<&mut Timeline>,
    in_flight: &mut BTreeMap<(u64, CallId), (Completion, Option<PutTarget>)>,
) {
    if !l.subjects.is_empty() {
        let record = timeline::call_record(now, l.at, l.label, &l.outcome);
        for s in l.subjects {
            calls_by_identity.entry(s).or_default().record(&record);
        }
    }
    if let (Some(t), Some(call @ Call::Cloud(_))) = (timeline, l.marked.as_ref()) {
        t.mark(now, call, &l.outcome);
    }
    in_flight.insert((l.at, l.id), (Completion { id: l.id, outcome: l.outcome }, l.target));
}

/// The host's live part: what a crash loses.
struct Host {
    /// The engine, rebuilt from its last good snapshot when it traps (the input it traps on
    /// twice is quarantined), as a tenant's is.
    driver: RecoveringEngine,
    /// The initial lists and their marker, delivered with the host's first tick.
    initial: Option<Vec<KubeEvent>>,
    /// By `(completion time, call id)`: the completion and, for a PUT, the resource it writes.
    in_flight: BTreeMap<(u64, CallId), (Completion, Option<PutTarget>)>,
    /// Writes waiting for the pacer, oldest first, and when the first may go.
    paced: VecDeque<PacedCall>,
    paced_next_ms: u64,
    /// The host's model of the subscription's write budget (a restarted host starts a new one).
    pacer: Option<WritePacer>,
    wake: Option<u64>,
    must_tick: bool,
    /// Whether the start-up pass reached `ready`.
    ready: bool,
    started_wall: Instant,
}

/// Replays `trace` with the given (not yet created) engine; the hosts that restart after a crash
/// get a fresh engine of `options.engine`.
pub fn replay_with(trace: &Trace, options: &ReplayOptions, driver: Box<dyn EngineDriver>) -> Result<ReplayOutcome> {
    let emulator_options =
        EmulatorOptions { faults: options.faults.clone(), rate_limits: options.rate_limits, ..EmulatorOptions::default() };
    let scope = emulator_options.scope.clone();
    let scope_key = scope.key();
    let emulator: Arc<Emulator> = Emulator::new(emulator_options);
    let mut baseline = emulator.inventory();
    if let Some(cs) = &options.cloud_state {
        emulator.seed(cs)?;
        baseline = oracle::baseline_with(&baseline, cs);
    }
    let backend = EmulatorBackend::new(emulator.clone(), scope.tenant_config("http://emulator.replay.invalid"))
        // The CloudBackend side is not used: every call goes through `perform_at(now)`.
        .with_clock(Arc::new(|| 0));
    let cloud = CloudSide { backend: &backend, emulator: &emulator, scope: &scope_key };
    let mut cluster = Cluster::new();
    let mut stats = LoopStats::default();
    let tenant_config = TenantConfig {
        tenant: options.tenant.clone(),
        seed: options.seed,
        max_request_bytes: options.max_request_bytes,
        max_request_entries: options.max_request_entries,
        max_operations_in_flight: options.max_operations_in_flight,
        ..TenantConfig::default()
    };
    let crash_times = options.crashes.times();
    let mut next_crash = 0usize;
    // PUT targets whose answer a crash swallowed.
    let mut lost_puts: BTreeSet<PutTarget> = BTreeSet::new();
    let mut startup_wall: Vec<Option<Duration>> = Vec::new();

    let events = &trace.events;
    let mut next_event = 0usize;
    // The host starts at the trace's first instant: what the cluster holds then is the engine's
    // initial lists, followed by the marker; everything later arrives as watch events.
    let mut now = events.first().map_or(0, |e| e.at_ms);
    while next_event < events.len() && events[next_event].at_ms <= now {
        let e = &events[next_event];
        cluster.apply(now, e.event_type, e.object.clone());
        next_event += 1;
    }
    let mut host: Option<Host> = Some(start_host(driver, options, &tenant_config, &mut cluster, now)?);
    stats.starts.push(StartRecord { started_at_ms: now, ..StartRecord::default() });
    // When the host that is down comes back.
    let mut restart_at: Option<u64> = None;
    let converged;
    // A failing engine (a trap, a limit) ends the run, but the report is still written and says so.
    let mut engine_failure: Option<String> = None;
    let mut timeline = options.timeline.map(Timeline::new);
    let mut iterations = 0u64;
    loop {
        iterations += 1;
        if let Some(p) = options.progress.as_ref().filter(|_| iterations.is_multiple_of(PROGRESS_EVERY)) {
            (p.0)(now, next_event, events.len());
        }
        while next_event < events.len() && events[next_event].at_ms <= now {
            let e = &events[next_event];
            cluster.apply(now, e.event_type, e.object.clone());
            next_event += 1;
        }
        // A crash due: the host dies before it sees anything of this instant.
        if next_crash < crash_times.len() && crash_times[next_crash] <= now {
            while next_crash < crash_times.len() && crash_times[next_crash] <= now {
                next_crash += 1;
            }
            if let Some(dead) = host.take() {
                lost_puts.extend(dead.in_flight.values().filter_map(|(_, t)| t.clone()));
                let record = StartRecord {
                    crashed_at_ms: Some(now),
                    completions_lost: Some((dead.in_flight.len() + dead.paced.len()) as u64),
                    started_at_ms: now.saturating_add(options.crashes.downtime_ms),
                    ..StartRecord::default()
                };
                if !dead.ready {
                    startup_wall.push(None);
                }
                stats.starts.push(record);
                restart_at = Some(now.saturating_add(options.crashes.downtime_ms));
                if let Some(t) = timeline.as_mut() {
                    t.crash(now);
                }
            }
        }
        let Some(h) = host.as_mut() else {
            // Nobody watches: what the cluster says now reaches the next host as its initial lists.
            let _ = cluster.take_events();
            let back = restart_at.unwrap_or(now);
            if back <= now {
                restart_at = None;
                let driver = match options.engine.new_driver_in(CallIds::default(), &options.sandbox) {
                    Ok(d) => d,
                    Err(e) => {
                        engine_failure = Some(failure(now, "restart", &e));
                        converged = false;
                        break;
                    }
                };
                match start_host(driver, options, &tenant_config, &mut cluster, now) {
                    Ok(h) => {
                        host = Some(h);
                        if let Some(t) = timeline.as_mut() {
                            t.restart(now);
                        }
                    }
                    Err(e) => {
                        engine_failure = Some(failure(now, "restart", &e));
                        converged = false;
                        break;
                    }
                }
                continue;
            }
            let next_trace = events.get(next_event).map(|e| e.at_ms);
            let next = [next_trace, Some(back)].into_iter().flatten().min().unwrap_or(back);
            if next > options.until_ms {
                now = now.max(options.until_ms);
                converged = false;
                break;
            }
            now = next;
            continue;
        };
        let mut kube_events = cluster.take_events();
        if let Some(mut initial) = h.initial.take() {
            initial.append(&mut kube_events);
            kube_events = initial;
        }
        let delivered = !kube_events.is_empty();
        // The paced writes whose turn came (each takes its token now).
        while h.paced.front().is_some() && now >= h.paced_next_ms {
            match h.pacer.as_ref().and_then(|p| p.wait_at(now)) {
                Some(w) => {
                    h.paced_next_ms = now.saturating_add(w);
                    break;
                }
                None => {
                    let Some(p) = h.paced.pop_front() else { break };
                    let label = p.call.label();
                    let (at, outcome, target) = cloud.perform(
                        now,
                        &p.call,
                        Tally { errors: &mut stats.cloud_errors, duplicates: &mut stats.duplicates, lost_puts: &mut lost_puts },
                        p.starting,
                        h.pacer.as_ref(),
                    );
                    let landed = Landed { id: p.id, label, subjects: p.subjects, marked: p.marked, at, outcome, target };
                    land(now, landed, &mut stats.calls_by_identity, timeline.as_mut(), &mut h.in_flight);
                }
            }
        }
        let mut due = Vec::new();
        while let Some(entry) = h.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove().0);
        }
        let woken = h.wake.is_some_and(|w| w <= now);
        if delivered || !due.is_empty() || woken || h.must_tick {
            h.must_tick = false;
            // The status is read only while the start-up is pending and for the timeline's
            // points: the settled check below reads it once the run is idle.
            let read =
                if !h.ready || timeline.as_ref().is_some_and(|t| t.point_due(now)) { StatusRead::AfterTick } else { StatusRead::Skip };
            let step = match h.driver.step(now, (kube_events, due), read, |_| None) {
                Ok(step) => step,
                Err(e) => {
                    engine_failure = Some(failure(now, "tick", &e));
                    converged = false;
                    break;
                }
            };
            stats.ticks += 1;
            for (input, warning) in step.quarantined {
                if let Some(warning) = warning {
                    cluster.record_event(warning);
                }
                stats.quarantined.push(input);
            }
            let ready_now = step.status.as_ref().is_some_and(|s| s.initialization.phase == InitPhase::Ready);
            let result = step.tick;
            for record in result.events {
                cluster.record_event(record);
            }
            let restarted = stats.starts.len() > 1;
            let record = stats.starts.last_mut().filter(|_| !h.ready);
            let mut record = record;
            for (id, call) in result.started {
                let label = call.label();
                let subjects = timeline::subjects(&call);
                let marked = timeline.as_ref().map(|_| call.clone());
                let (at, outcome, target) = match call {
                    Call::Cloud(c) => {
                        *stats.cloud_calls.entry(label.to_string()).or_insert(0) += 1;
                        if let Some(r) = record.as_deref_mut() {
                            r.startup_cloud_calls += 1;
                            r.startup_list_calls += u64::from(is_list(&c));
                        }
                        let starting = restarted && record.is_some();
                        if let Some(pacer) = h.pacer.as_ref().filter(|_| is_write(&c)) {
                            // Behind the writes already waiting, or until the budget has a token.
                            let wait = if h.paced.is_empty() { pacer.wait_at(now) } else { Some(0) };
                            if let Some(w) = wait {
                                if h.paced.is_empty() {
                                    h.paced_next_ms = now.saturating_add(w);
                                }
                                stats.writes_paced += 1;
                                h.paced.push_back(PacedCall { id, call: c, subjects, marked, starting });
                                continue;
                            }
                        }
                        let (at, outcome, target) = cloud.perform(
                            now,
                            &c,
                            Tally { errors: &mut stats.cloud_errors, duplicates: &mut stats.duplicates, lost_puts: &mut lost_puts },
                            starting,
                            h.pacer.as_ref(),
                        );
                        (at, outcome, target)
                    }
                    Call::Kube(k) => {
                        if let Some(r) = record.as_deref_mut() {
                            r.startup_kube_writes += 1;
                        }
                        check_finalizer_removal(now, &k, &cluster, &emulator, &scope_key, &mut stats.early_finalizers);
                        (now, cluster.perform(now, &k), None)
                    }
                };
                land(
                    now,
                    Landed { id, label, subjects, marked, at, outcome, target },
                    &mut stats.calls_by_identity,
                    timeline.as_mut(),
                    &mut h.in_flight,
                );
            }
            if let (Some(t), Some(status)) = (timeline.as_mut(), step.status.as_ref()) {
                t.point(now, status, h.in_flight.len());
                if t.sample_due(now) {
                    match h.driver.operations() {
                        Ok(ops) => t.sample(now, &ops),
                        Err(e) => {
                            engine_failure = Some(failure(now, "operations", &e));
                            converged = false;
                            break;
                        }
                    }
                }
            }
            h.wake = result.outcome.next_wake_ms;
            if let Some(w) = h.wake {
                if w <= now {
                    stats.stale_wakes += 1;
                    h.wake = Some(now + 1);
                }
            }
            if !h.ready && ready_now {
                h.ready = true;
                startup_wall.push(Some(h.started_wall.elapsed()));
                if let Some(r) = stats.starts.last_mut() {
                    r.startup_ms = Some(now - r.started_at_ms);
                }
            }
            continue;
        }
        // Nothing more at `now`.
        let next_trace = events.get(next_event).map(|e| e.at_ms);
        let crash = crash_times.get(next_crash).copied().filter(|t| *t <= options.until_ms);
        if next_trace.is_none() && h.in_flight.is_empty() && h.paced.is_empty() && !cluster.has_events() && crash.is_none() {
            let status = match h.driver.status() {
                Ok(status) => status,
                Err(e) => {
                    engine_failure = Some(failure(now, "status", &e));
                    converged = false;
                    break;
                }
            };
            if status.settled && cluster.stuck_deleting().is_empty() && !cluster.has_deferred() {
                converged = true;
                break;
            }
            if h.wake.is_none() {
                // Nothing will ever happen again.
                converged = false;
                break;
            }
        }
        let paced = h.paced.front().map(|_| h.paced_next_ms);
        let next = [next_trace, h.in_flight.keys().next().map(|k| k.0), paced, h.wake, crash].into_iter().flatten().min();
        match next {
            None => {
                converged = false;
                break;
            }
            Some(t) if t > options.until_ms => {
                now = now.max(options.until_ms);
                converged = false;
                break;
            }
            Some(t) => now = t,
        }
    }

    let (status, in_flight) = match host.as_mut() {
        Some(h) if engine_failure.is_none() => (h.driver.status().context("engine status")?, h.in_flight.len()),
        Some(h) => (EngineStatus::default(), h.in_flight.len()),
        None => (EngineStatus::default(), 0),
    };
    let operations = match host.as_mut() {
        Some(h) if engine_failure.is_none() => h.driver.operations().context("engine operations")?,
        _ => Vec::new(),
    };
    if let Some(t) = timeline.as_mut() {
        t.point(now, &status, in_flight);
        t.sample(now, &operations);
    }
    if host.as_ref().is_some_and(|h| !h.ready) {
        startup_wall.push(None);
    }
    let inventory = emulator.inventory();
    let mut differences = oracle::check(&cluster, &inventory, &baseline);
    differences.extend(stats.early_finalizers.iter().cloned());
    let report = report::build(report::Inputs {
        converged,
        virtual_ms: now,
        options,
        trace,
        inventory: &inventory,
        cluster: &cluster,
        status: &status,
        stats: &stats,
        in_flight,
        trace_left: events.len() - next_event,
        differences: &differences,
        operations: &operations,
    });
    let mut report = report;
    if !stats.quarantined.is_empty() {
        // Inputs the engine could not take: their objects' cloud state is not reconciled, so the
        // run has not converged whatever the oracle says. Only such a run carries the key.
        report["converged"] = Value::Bool(false);
        report["quarantined"] = Value::Array(
            stats.quarantined.iter().map(|q| serde_json::json!({"at_ms": q.at_ms, "input": q.summary, "reason": q.reason})).collect(),
        );
    }
    if let Some(f) = engine_failure {
        // Only a failed run carries the key, so the reports of healthy runs keep their bytes.
        report["engine_failure"] = Value::String(f);
    }
    Ok(ReplayOutcome { report, cluster, baseline, inventory, status, startup_wall, timeline })
}

/// A host starting at `now`: `driver` created, the cluster's objects delivered as its initial
/// lists, then the marker; its first tick (which starts the start-up lists) is due.
fn start_host(
    mut driver: Box<dyn EngineDriver>,
    options: &ReplayOptions,
    config: &TenantConfig,
    cluster: &mut Cluster,
    now: u64,
) -> Result<Host> {
    let started_wall = Instant::now();
    driver.create(config).context("creating the engine")?;
    let (engine, sandbox) = (options.engine, options.sandbox.clone());
    let recovery = Recovery::new(move |ids| engine.new_driver_in(ids, &sandbox));
    Ok(Host {
        driver: RecoveringEngine::new(&options.tenant, driver, recovery),
        initial: Some(cluster.initial_lists()),
        in_flight: BTreeMap::new(),
        paced: VecDeque::new(),
        paced_next_ms: 0,
        pacer: options.write_budget.map(|b| WritePacer::new(b, now)),
        wake: None,
        must_tick: true,
        ready: false,
        started_wall,
    })
}

/// Checks a finalizer removal against the cloud at the moment it is made: a Service's finalizer
/// goes only once its load balancer, public IP and registration are gone; an egress pod's only
/// once none of its addresses is mapped to its identity (unless a live pod of that identity has
/// the same address).
fn check_finalizer_removal(now: u64, call: &KubeCall, cluster: &Cluster, emulator: &Emulator, scope: &ScopeKey, out: &mut Vec<String>) {
    match call {
        KubeCall::RemoveServiceFinalizers(target) => {
            let id = target.uid.to_ascii_lowercase();
            let state = emulator.state();
            let mut left = Vec::new();
            if state.has_resource(scope, ResourceKind::LoadBalancer, &id) {
                left.push(format!("load balancer {id}"));
            }
            if state.has_resource(scope, ResourceKind::PublicIp, &format!("{id}-pip")) {
                left.push(format!("public IP {id}-pip"));
            }
            if state.is_registered(scope, &id) {
                left.push(format!("ServiceGateway service {id}"));
            }
            if !left.is_empty() {
                out.push(format!(
                    "the finalizers of Service {}/{} were removed at {now} ms while its {} still existed",
                    target.namespace,
                    target.name,
                    left.join(", ")
                ));
            }
        }
        KubeCall::RemovePodFinalizer(target) => {
            let Some(KubeObject::Pod(pod)) = cluster.get(&ObjectKey::pod(&target.namespace, &target.name)) else { return };
            if !pod.meta.uid.eq_ignore_ascii_case(&target.uid) {
                return;
            }
            let Some(id) = pod.meta.label(EGRESS_LABEL).map(str::to_ascii_lowercase).filter(|i| !i.is_empty()) else { return };
            let ips = |p: &Pod| -> Vec<IpAddr> {
                let raw: Vec<&String> = if p.pod_ips.is_empty() { vec![&p.pod_ip] } else { p.pod_ips.iter().collect() };
                raw.into_iter().filter_map(|ip| ip.trim().parse().ok()).collect()
            };
            let state = emulator.state();
            for addr in ips(pod) {
                let shared = cluster.pods().any(|o| {
                    !o.meta.uid.eq_ignore_ascii_case(&pod.meta.uid)
                        && o.meta.deletion_timestamp.is_none()
                        && o.meta.label(EGRESS_LABEL).is_some_and(|l| l.eq_ignore_ascii_case(&id))
                        && ips(o).contains(&addr)
                });
                if !shared && state.is_mapped(scope, &addr, &id) {
                    out.push(format!(
                        "the finalizer of egress pod {}/{} was removed at {now} ms while its address {addr} was still mapped to {id}",
                        target.namespace, target.name
                    ));
                }
            }
        }
        _ => {}
    }
}

/// One line on a failed guest call, bounded.
fn failure(now: u64, call: &str, e: &anyhow::Error) -> String {
    format!("engine {call} at {now} ms failed: {}", difftracker_runtime::tenant::brief_reason(&format!("{e:#}")))
}
