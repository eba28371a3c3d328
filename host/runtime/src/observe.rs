//! Observability of a running host: Prometheus metrics, health and readiness, and a status page,
//! served over HTTP by any long-running command.
//!
//! An [`Observatory`] follows tenants: their status ([`TenantStatus`], through the tenant's watch
//! channel), the calls they start and complete (through the tenant's observer stream), and how
//! long their engine's ticks take (through [`Observatory::instrument`], a wrapper around the
//! [`EngineDriver`]). [`Observatory::spawn_tenant`] wires all three when it starts a tenant.
//! [`serve`] puts it on a listener:
//!
//! - `GET /metrics`: OpenMetrics text (`prometheus-client`). The engine's own
//!   `difftracker_engine_*` samples of every tenant (from `status().metrics`), with their labels
//!   and a `tenant` label, and the host's metrics: `difftracker_host_calls_started_total{tenant,
//!   call}`, `difftracker_host_calls_completed_total{tenant,call,result}`,
//!   `difftracker_host_calls_in_flight{tenant}`, `difftracker_host_ticks_total{tenant}`,
//!   `difftracker_host_tick_duration_seconds{tenant}` (histogram),
//!   `difftracker_host_engine_swaps_total{tenant,result}` (`ok`, `forced`, `refused`),
//!   `difftracker_host_engine_rollbacks_total{tenant}`, `difftracker_host_checkpoint_bytes{tenant}`,
//!   `difftracker_host_engine_restarts_total{tenant}`, `difftracker_host_engine_traps_total{tenant}`,
//!   `difftracker_host_tenant_backoff_seconds{tenant}` (the delay a trapping tenant waits before
//!   its next tick, 0 when none), `difftracker_host_tenant_up{tenant}`,
//!   `difftracker_host_arm_remaining_subscription_writes{subscription}` (ARM's count of the
//!   subscription's writes left, from its last answer; see `transport::pacing`).
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 once every tenant has ticked at least once, finished its start-up pass
//!   and none has stopped on an error (a poisoned engine stops its tenant); 503 otherwise, with
//!   the reason (a failing start-up list names its call and error).
//! - `GET /operations?q=&offset=&limit=`: per tenant, its tracked operations as the engine
//!   describes them (`OperationStatus`: state, retries, next retry, what it waits for), keyed by
//!   identity, filtered by `q` and paged (at most [`OPERATIONS_LIMIT_MAX`]); read from the engine
//!   at most once per [`OPERATIONS_REFRESH`]. `difftracker explain --url` reads it.
//! - `GET /` from a browser (`Accept: text/html`): the live HTML status page ([`page`]), fed by
//!   `GET /status.json` and `GET /operations`.
//! - `GET /`: a plain-text status page: per tenant, operations by state, calls in flight, pending
//!   deletions, the last tick; plus whatever note the command sets ([`Observatory::set_note`]).

mod page;

use crate::driver::{EngineDriver, Intercept, Intercepted, TickResult};
use crate::executor::{Backends, Executor};
use crate::server::{ServerHandle, ServerOptions};
use crate::tenant::{spawn_tenant, TenantEvent, TenantHandle, TenantOptions, TenantStatus};
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
#[cfg(test)]
use difftracker_engine::io::Initialization;
use difftracker_engine::io::{CallError, Completion, EngineStatus, ErrorKind, InitPhase, MetricKind, MetricSample, OperationStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// Label set of the host's metric families: `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// Bucket bounds (seconds) of the tick duration histogram: 50 µs to 2.5 s.
pub const TICK_BUCKETS: &[f64] = &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The Prometheus text content type `prometheus-client` writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label values as OpenMetrics wants them (`prometheus-client` writes them verbatim).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), escape(v))).collect()
}

/// `ok`, or the error's kind in snake case: the `result` label of a completed call.
pub fn result_label(outcome: &Result<impl Sized, CallError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => match e.kind {
            ErrorKind::Http => "http",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transport => "transport",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::OperationFailed => "operation_failed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Replaced => "replaced",
            ErrorKind::Conflict => "conflict",
        },
    }
}

// ------------------------------------------------------------------------ host metrics

/// The host's own metric families.
#[derive(Clone)]
struct HostMetrics {
    calls_started: Family<Labels, Counter>,
    calls_completed: Family<Labels, Counter>,
    calls_in_flight: Family<Labels, Gauge>,
    ticks: Family<Labels, Counter>,
    tick_duration: Family<Labels, Histogram, fn() -> Histogram>,
    swaps: Family<Labels, Counter>,
    restarts: Family<Labels, Counter>,
    quarantined: Family<Labels, Counter>,
    traps: Family<Labels, Counter>,
    backoff: Family<Labels, Gauge<f64, AtomicU64>>,
    rollbacks: Family<Labels, Counter>,
    checkpoint_bytes: Family<Labels, Gauge>,
    tenant_up: Family<Labels, Gauge>,
    instance_slots: Gauge,
    instance_slots_free: Gauge,
    guest_memory: Gauge,
    call_duration: Family<Labels, Histogram, fn() -> Histogram>,
    watch_relists: Family<Labels, Counter>,
    watch_errors: Family<Labels, Counter>,
    arm_remaining_writes: Family<Labels, Gauge>,
    shard_lease_events: Family<Labels, Counter>,
    shard_tenants_owned: Gauge,
    shard_replicas_live: Gauge,
}

fn tick_histogram() -> Histogram {
    Histogram::new(TICK_BUCKETS.iter().copied())
}

/// Bucket bounds (seconds) of the call duration histogram: 1 ms to 2 minutes (a long-running
/// operation polled to its end).
pub const CALL_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS.iter().copied())
}

impl HostMetrics {
    fn new() -> HostMetrics {
        HostMetrics {
            calls_started: Family::default(),
            calls_completed: Family::default(),
            calls_in_flight: Family::default(),
            ticks: Family::default(),
            tick_duration: Family::new_with_constructor(tick_histogram as fn() -> Histogram),
            swaps: Family::default(),
            restarts: Family::default(),
            quarantined: Family::default(),
            traps: Family::default(),
            backoff: Family::default(),
            rollbacks: Family::default(),
            checkpoint_bytes: Family::default(),
            tenant_up: Family::default(),
            instance_slots: Gauge::default(),
            instance_slots_free: Gauge::default(),
            guest_memory: Gauge::default(),
            call_duration: Family::new_with_constructor(call_histogram as fn() -> Histogram),
            watch_relists: Family::default(),
            watch_errors: Family::default(),
            arm_remaining_writes: Family::default(),
            shard_lease_events: Family::default(),
            shard_tenants_owned: Gauge::default(),
            shard_replicas_live: Gauge::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("difftracker_host_calls_started", "Calls the engine started, by tenant and call", self.calls_started.clone());
        registry.register(
            "difftracker_host_calls_completed",
            "Calls completed and handed back to the engine, by tenant, call and result (ok or the error kind)",
            self.calls_completed.clone(),
        );
        registry.register(
            "difftracker_host_calls_in_flight",
            "Calls started and not yet handed back to the engine",
            self.calls_in_flight.clone(),
        );
        registry.register("difftracker_host_ticks", "Engine ticks", self.ticks.clone());
        registry.register(
            "difftracker_host_tick_duration_seconds",
            "Wall time of one engine tick (the guest call, or the native engine)",
            self.tick_duration.clone(),
        );
        registry.register(
            "difftracker_host_engine_swaps",
            "Engine swaps, by result (ok; forced: swapped although the new instance's calls diverged; refused: the old instance kept running)",
            self.swaps.clone(),
        );
        registry.register("difftracker_host_engine_rollbacks", "Swaps back to the component a tenant ran before", self.rollbacks.clone());
        registry.register(
            "difftracker_host_checkpoint_bytes",
            "Size of a tenant's latest checkpoint (the engine snapshot trap recovery and hot swap start from)",
            self.checkpoint_bytes.clone(),
        );
        registry.register(
            "difftracker_host_engine_restarts",
            "Engine instances rebuilt from a snapshot after a trap or a limit",
            self.restarts.clone(),
        );
        registry.register(
            "difftracker_host_inputs_quarantined",
            "Inputs (events, completions) skipped because the engine traps on them",
            self.quarantined.clone(),
        );
        registry.register(
            "difftracker_host_engine_traps",
            "Guest calls that trapped or hit a sandbox limit (CPU deadline, memory, per-tick caps)",
            self.traps.clone(),
        );
        registry.register(
            "difftracker_host_tenant_backoff_seconds",
            "Delay a tenant whose engine keeps trapping waits before its next tick (0: not backed off)",
            self.backoff.clone(),
        );
        registry.register("difftracker_host_tenant_up", "1 while the tenant's loop runs, 0 once it stopped", self.tenant_up.clone());
        registry.register(
            "difftracker_host_instance_slots",
            "Instance slots of the wasmtime runtime (each engine, swap and recovery holds one)",
            self.instance_slots.clone(),
        );
        registry.register(
            "difftracker_host_instance_slots_free",
            "Instance slots no engine instance holds",
            self.instance_slots_free.clone(),
        );
        registry.register(
            "difftracker_host_guest_memory_bytes",
            "Linear memory of every live engine instance of the runtime (what the guests asked for)",
            self.guest_memory.clone(),
        );
        registry.register(
            "difftracker_host_call_duration_seconds",
            "Wall time from a call's start to its completion (ARM calls with their polls, Kubernetes writes), by tenant and call",
            self.call_duration.clone(),
        );
        registry.register(
            "difftracker_host_watch_relists",
            "Lists of the cluster after the initial one (after 410 Gone or a failed list), by tenant and kind",
            self.watch_relists.clone(),
        );
        registry.register(
            "difftracker_host_watch_errors",
            "Errors the cluster watch reported (each followed by a backoff), by tenant and kind",
            self.watch_errors.clone(),
        );
        registry.register(
            "difftracker_host_arm_remaining_subscription_writes",
            "Writes ARM said the subscription had left (x-ms-ratelimit-remaining-subscription-writes of its last answer), by subscription",
            self.arm_remaining_writes.clone(),
        );
        registry.register(
            "difftracker_host_shard_lease_events",
            "Tenant shard Leases this replica acquired, lost, released, and Lease requests that failed, by event",
            self.shard_lease_events.clone(),
        );
        registry.register(
            "difftracker_host_shard_tenants_owned",
            "Tenants whose shard Lease this replica holds",
            self.shard_tenants_owned.clone(),
        );
        registry.register(
            "difftracker_host_shard_replicas_live",
            "Replicas of the shard this replica sees live, itself included",
            self.shard_replicas_live.clone(),
        );
    }
}

// ------------------------------------------------------------------------ tenants

/// Calls of one kind (the call's label, e.g. `PUT loadBalancers`) of one tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub started: u64,
    /// Completed successfully (handed back to the engine).
    pub ok: u64,
    /// Completed with an error.
    pub failed: u64,
}

impl CallCounts {
    pub fn in_flight(&self) -> u64 {
        self.started.saturating_sub(self.ok + self.failed)
    }
}

struct ObservedTenant {
    engine_kind: String,
    /// The SHA-256 of the component the tenant runs, when the host says ([`Observatory::set_component`]).
    component: Option<String>,
    /// The engine's operations as last read by its [`TickTimer`] (at most once per
    /// [`OPERATIONS_REFRESH`]), for `/operations`.
    operations: Arc<Mutex<Vec<OperationStatus>>>,
    status: Option<watch::Receiver<TenantStatus>>,
    calls: BTreeMap<String, CallCounts>,
    last_tick_at: Option<Instant>,
    ticks_seen: u64,
    /// The watch counts last recorded ([`Observatory::record_watch`]), by (family, kind).
    watch_seen: BTreeMap<(&'static str, &'static str), u64>,
}

impl ObservedTenant {
    fn new() -> ObservedTenant {
        ObservedTenant {
            engine_kind: String::new(),
            component: None,
            operations: Arc::default(),
            status: None,
            calls: BTreeMap::new(),
            last_tick_at: None,
            ticks_seen: 0,
            watch_seen: BTreeMap::new(),
        }
    }

    fn status(&self) -> Option<TenantStatus> {
        self.status.as_ref().map(|rx| rx.borrow().clone())
    }
}

/// What the observatory and the engine-sample collector share.
struct Shared {
    tenants: Mutex<BTreeMap<String, ObservedTenant>>,
    started: Instant,
    note: Mutex<String>,
    /// Why this replica runs no engine on purpose (a standby of leader election).
    standby: Mutex<Option<String>>,
    /// The shard as this replica last saw it ([`crate::serve::shard::ShardView`]), when sharded.
    shard: Mutex<Option<serde_json::Value>>,
}

struct Inner {
    shared: Arc<Shared>,
    host: HostMetrics,
    registry: Registry,
}

/// Follows tenants and renders what the HTTP endpoints serve. Cheap to clone.
#[derive(Clone)]
pub struct Observatory {
    inner: Arc<Inner>,
}

impl Default for Observatory {
    fn default() -> Self {
        Observatory::new()
    }
}

impl std::fmt::Debug for Observatory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observatory").field("tenants", &self.tenant_names()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Observatory {
    pub fn new() -> Observatory {
        let shared = Arc::new(Shared {
            tenants: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            note: Mutex::new(String::new()),
            standby: Mutex::new(None),
            shard: Mutex::new(None),
        });
        let host = HostMetrics::new();
        let mut registry = Registry::default();
        host.register(&mut registry);
        registry.register_collector(Box::new(EngineSamples { shared: shared.clone() }));
        Observatory { inner: Arc::new(Inner { shared, host, registry }) }
    }

    fn with_tenant<R>(&self, name: &str, f: impl FnOnce(&mut ObservedTenant) -> R) -> R {
        let mut tenants = lock(&self.inner.shared.tenants);
        f(tenants.entry(name.to_string()).or_insert_with(ObservedTenant::new))
    }

    pub fn tenant_names(&self) -> Vec<String> {
        lock(&self.inner.shared.tenants).keys().cloned().collect()
    }

    /// Marks this replica a standby (not ready, with this reason) or, with `None`, an active one.
    pub fn set_standby(&self, reason: Option<String>) {
        *lock(&self.inner.shared.standby) = reason;
    }

    /// The shard view shown on the status page (`shard` in `/status.json`).
    pub fn set_shard(&self, view: serde_json::Value) {
        *lock(&self.inner.shared.shard) = Some(view);
    }

    pub(crate) fn shard_json(&self) -> Option<serde_json::Value> {
        lock(&self.inner.shared.shard).clone()
    }

    /// Counts one shard Lease event: `acquired`, `lost`, `released` or `error`.
    pub fn record_shard_lease(&self, event: &str) {
        self.inner.host.shard_lease_events.get_or_create(&labels(&[("event", event)])).inc();
    }

    pub fn set_shard_counts(&self, owned: usize, replicas: usize) {
        self.inner.host.shard_tenants_owned.set(owned as i64);
        self.inner.host.shard_replicas_live.set(replicas as i64);
    }

    /// The instance slots of the runtime the tenants run in, and how many are free.
    pub fn set_instance_slots(&self, total: u32, free: u32) {
        self.inner.host.instance_slots.set(total as i64);
        self.inner.host.instance_slots_free.set(free as i64);
    }

    /// The component a tenant runs (its SHA-256), for the status page.
    pub fn set_component(&self, tenant: &str, sha256: &str) {
        self.with_tenant(tenant, |t| t.component = Some(sha256.to_string()));
    }

    /// The guest memory of the runtime the tenants run in.
    pub fn set_guest_memory(&self, bytes: u64) {
        self.inner.host.guest_memory.set(bytes.min(i64::MAX as u64) as i64);
    }

    /// A tenant's cluster watch counts (cumulative, as [`crate::k8s::WatchStats`] keeps them);
    /// what grew since the last call is added to the counters. A new watch (a new session)
    /// starts its counts again at zero.
    pub fn record_watch(&self, tenant: &str, stats: &crate::k8s::WatchStats) {
        let mut deltas = Vec::new();
        self.with_tenant(tenant, |t| {
            for (family, counts) in [("relists", &stats.relists), ("errors", &stats.errors)] {
                for (kind, n) in counts {
                    let seen = t.watch_seen.entry((family, kind)).or_insert(0);
                    // A fresh watch counts from zero again.
                    let delta = if *n < *seen { *n } else { n - *seen };
                    *seen = *n;
                    if delta > 0 {
                        deltas.push((family, *kind, delta));
                    }
                }
            }
        });
        for (family, kind, delta) in deltas {
            let counter = if family == "relists" { &self.inner.host.watch_relists } else { &self.inner.host.watch_errors };
            counter.get_or_create(&labels(&[("tenant", tenant), ("kind", kind)])).inc_by(delta);
        }
    }

    /// Counts a rollback (a swap back to the previous component, also counted as a swap).
    pub fn record_rollback(&self, tenant: &str) {
        self.inner.host.rollbacks.get_or_create(&labels(&[("tenant", tenant)])).inc();
    }

    /// Counts a swap refused before it reached the tenant (its component did not load).
    pub fn record_swap_refused(&self, tenant: &str) {
        self.inner.host.swaps.get_or_create(&labels(&[("tenant", tenant), ("result", "refused")])).inc();
    }

    /// Stops following a tenant that was removed or paused: it leaves the status page, the
    /// readiness check and the engine samples (its host counters keep their totals).
    pub fn forget(&self, tenant: &str) {
        lock(&self.inner.shared.tenants).remove(tenant);
        self.inner.host.tenant_up.remove(&labels(&[("tenant", tenant)]));
    }

    /// A line or a few shown at the top of the status page (what the command is doing).
    pub fn set_note(&self, note: impl Into<String>) {
        *lock(&self.inner.shared.note) = note.into();
    }

    /// Starts a tenant's loop with everything observed: its engine's ticks are timed, its calls
    /// counted, its status followed. Events are also forwarded to `forward` when given.
    pub fn spawn_tenant(
        &self,
        executor: &Executor,
        options: TenantOptions,
        driver: Box<dyn EngineDriver>,
        backends: Backends,
        forward: Option<mpsc::UnboundedSender<TenantEvent>>,
    ) -> TenantHandle {
        let name = options.name.clone();
        let driver = self.instrument(&name, driver);
        let mut options = options;
        if let Some(recovery) = options.recovery.take() {
            // Instances rebuilt after a trap are timed like the first one.
            let (this, tenant) = (self.clone(), name.clone());
            options.recovery = Some(recovery.map_instances(move |fresh| this.instrument(&tenant, fresh)));
        }
        let observer = self.observer(&name, forward);
        let handle = spawn_tenant(executor, options, driver, backends, Some(observer));
        self.watch_tenant(&name, handle.subscribe());
        handle
    }

    /// Wraps `driver` so each `tick` is timed into `difftracker_host_tick_duration_seconds`.
    pub fn instrument(&self, tenant: &str, driver: Box<dyn EngineDriver>) -> Box<dyn EngineDriver> {
        let kind = driver.kind().to_string();
        let operations = self.with_tenant(tenant, |t| {
            t.engine_kind = kind;
            t.operations.clone()
        });
        let histogram = self.inner.host.tick_duration.get_or_create(&labels(&[("tenant", tenant)])).clone();
        Box::new(Intercepted::new(driver, TickTimer { histogram, operations, refreshed: None }))
    }

    /// A sender to give [`spawn_tenant`] as the tenant's observer: call counts per label and
    /// result. Every event is passed on to `forward` when given. Needs a tokio runtime.
    pub fn observer(&self, tenant: &str, forward: Option<mpsc::UnboundedSender<TenantEvent>>) -> mpsc::UnboundedSender<TenantEvent> {
        let (tx, mut rx) = mpsc::unbounded_channel::<TenantEvent>();
        let this = self.clone();
        let tenant = tenant.to_string();
        self.with_tenant(&tenant, |_| ());
        tokio::spawn(async move {
            let mut labels_of: HashMap<u64, (&'static str, Instant)> = HashMap::new();
            let tenant_labels = labels(&[("tenant", &tenant)]);
            let in_flight = this.inner.host.calls_in_flight.get_or_create(&tenant_labels).clone();
            while let Some(event) = rx.recv().await {
                match &event {
                    TenantEvent::CallStarted { id, call } => {
                        let label = call.label();
                        labels_of.insert(*id, (label, Instant::now()));
                        this.inner.host.calls_started.get_or_create(&labels(&[("tenant", &tenant), ("call", label)])).inc();
                        in_flight.inc();
                        this.with_tenant(&tenant, |t| t.calls.entry(label.to_string()).or_default().started += 1);
                    }
                    TenantEvent::CallCompleted { id, outcome } => {
                        let (label, started) = labels_of.remove(id).unwrap_or(("unknown", Instant::now()));
                        this.inner
                            .host
                            .call_duration
                            .get_or_create(&labels(&[("tenant", &tenant), ("call", label)]))
                            .observe(started.elapsed().as_secs_f64());
                        let result = result_label(outcome);
                        this.inner
                            .host
                            .calls_completed
                            .get_or_create(&labels(&[("tenant", &tenant), ("call", label), ("result", result)]))
                            .inc();
                        in_flight.dec();
                        this.with_tenant(&tenant, |t| {
                            let c = t.calls.entry(label.to_string()).or_default();
                            if outcome.is_ok() {
                                c.ok += 1
                            } else {
                                c.failed += 1
                            }
                        });
                    }
                    TenantEvent::EventRecorded(_) | TenantEvent::StatesChanged(_) => {}
                }
                if let Some(f) = &forward {
                    let _ = f.send(event);
                }
            }
        });
        tx
    }

    /// Follows a tenant's status: readiness, the status page, the engine's samples and the tick
    /// counter. Needs a tokio runtime.
    pub fn watch_tenant(&self, tenant: &str, status: watch::Receiver<TenantStatus>) {
        let mut rx = status.clone();
        self.with_tenant(tenant, |t| t.status = Some(status));
        let this = self.clone();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let tenant_labels = labels(&[("tenant", &tenant)]);
            let ticks = this.inner.host.ticks.get_or_create(&tenant_labels).clone();
            let up = this.inner.host.tenant_up.get_or_create(&tenant_labels).clone();
            let quarantined = this.inner.host.quarantined.get_or_create(&tenant_labels).clone();
            let traps = this.inner.host.traps.get_or_create(&tenant_labels).clone();
            let backoff = this.inner.host.backoff.get_or_create(&tenant_labels).clone();
            let swapped = this.inner.host.swaps.get_or_create(&labels(&[("tenant", &tenant), ("result", "ok")])).clone();
            let refused = this.inner.host.swaps.get_or_create(&labels(&[("tenant", &tenant), ("result", "refused")])).clone();
            let forced = this.inner.host.swaps.get_or_create(&labels(&[("tenant", &tenant), ("result", "forced")])).clone();
            let checkpoint = this.inner.host.checkpoint_bytes.get_or_create(&tenant_labels).clone();
            let mut forced_seen = 0u64;
            let mut restarts_seen = 0u64;
            let mut quarantined_seen = 0u64;
            let mut traps_seen = 0u64;
            let (mut swaps_seen, mut refused_seen) = (0u64, 0u64);
            loop {
                let (count, stopped, restarts, quarantined_total, swaps, swaps_forced, swaps_refused, traps_total, backoff_s) = {
                    let s = rx.borrow_and_update();
                    checkpoint.set(s.checkpoint_bytes.min(i64::MAX as u64) as i64);
                    (
                        s.ticks,
                        s.stopped,
                        s.restarts,
                        s.quarantined_total,
                        s.swaps,
                        s.swaps_forced,
                        s.swaps_refused,
                        s.traps,
                        s.backoff.map_or(0.0, |d| d.as_secs_f64()),
                    )
                };
                // `swaps` counts the forced ones too; the metric keeps them apart.
                let plain = swaps.saturating_sub(swaps_forced);
                swapped.inc_by(plain.saturating_sub(swaps_seen));
                swaps_seen = swaps_seen.max(plain);
                forced.inc_by(swaps_forced.saturating_sub(forced_seen));
                forced_seen = forced_seen.max(swaps_forced);
                refused.inc_by(swaps_refused.saturating_sub(refused_seen));
                refused_seen = refused_seen.max(swaps_refused);
                quarantined.inc_by(quarantined_total.saturating_sub(quarantined_seen));
                quarantined_seen = quarantined_seen.max(quarantined_total);
                traps.inc_by(traps_total.saturating_sub(traps_seen));
                traps_seen = traps_seen.max(traps_total);
                backoff.set(if stopped { 0.0 } else { backoff_s });
                for _ in restarts_seen..restarts {
                    this.record_restart(&tenant);
                }
                restarts_seen = restarts_seen.max(restarts);
                up.set(if stopped { 0 } else { 1 });
                // A forgotten tenant stays forgotten.
                let delta = lock(&this.inner.shared.tenants).get_mut(&tenant).map_or(0, |t| {
                    let delta = count.saturating_sub(t.ticks_seen);
                    if delta > 0 {
                        t.ticks_seen = count;
                        t.last_tick_at = Some(Instant::now());
                    }
                    delta
                });
                if delta > 0 {
                    ticks.inc_by(delta);
                }
                if stopped || rx.changed().await.is_err() {
                    up.set(0);
                    break;
                }
            }
        });
    }

    /// Counts an engine instance rebuilt from a snapshot (after a trap or a limit).
    pub fn record_restart(&self, tenant: &str) {
        self.inner.host.restarts.get_or_create(&labels(&[("tenant", tenant)])).inc();
    }

    /// Calls of a tenant by label, as seen by its observer.
    pub fn calls(&self, tenant: &str) -> BTreeMap<String, CallCounts> {
        lock(&self.inner.shared.tenants).get(tenant).map(|t| t.calls.clone()).unwrap_or_default()
    }

    /// `Ok` with a short text when every tenant has ticked at least once and none has stopped;
    /// `Err` with the reason otherwise (also when no tenant is followed yet, and on a standby).
    pub fn readiness(&self) -> std::result::Result<String, String> {
        if let Some(reason) = lock(&self.inner.shared.standby).clone() {
            return Err(reason);
        }
        let tenants = lock(&self.inner.shared.tenants);
        let watched: Vec<(&String, TenantStatus)> = tenants.iter().filter_map(|(n, t)| t.status().map(|s| (n, s))).collect();
        if watched.is_empty() {
            return Err("no tenant is running yet".into());
        }
        let mut problems = Vec::new();
        for (name, s) in &watched {
            if let Some(e) = &s.error {
                problems.push(format!("tenant {name} stopped on an error: {e}"));
            } else if s.stopped {
                problems.push(format!("tenant {name} stopped"));
            } else if s.ticks == 0 {
                problems.push(format!("tenant {name} has not ticked yet"));
            } else if s.engine.initialization.phase != InitPhase::Ready {
                let init = &s.engine.initialization;
                let why = match &init.error {
                    Some(e) => e.clone(),
                    None if !init.initial_lists_complete => "waiting for the initial lists".to_string(),
                    None => format!("start-up {}", init.phase.label()),
                };
                problems.push(format!("tenant {name} is not initialized: {why}"));
            } else if s.quarantined_total > 0 {
                // Skipped inputs mean cloud state nobody reconciles: loud until an operator acts.
                let latest = s.quarantined.last().map(|q| format!(" (latest: {})", q.summary)).unwrap_or_default();
                problems.push(format!("tenant {name} skipped {} input(s) its engine traps on{latest}", s.quarantined_total));
            }
        }
        if problems.is_empty() {
            Ok(format!("ready: {} tenant(s)", watched.len()))
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The OpenMetrics text of `/metrics`.
    pub fn render_metrics(&self) -> String {
        for (subscription, left) in crate::transport::pacing::remaining_writes() {
            self.inner.host.arm_remaining_writes.get_or_create(&vec![("subscription".to_string(), subscription)]).set(i64::from(left));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The plain-text status page of `/`.
    pub fn status_page(&self) -> String {
        let mut out = String::new();
        let up = self.inner.shared.started.elapsed();
        let _ = writeln!(out, "difftracker {} (up {:.1} s)", env!("CARGO_PKG_VERSION"), up.as_secs_f64());
        let note = lock(&self.inner.shared.note).clone();
        if !note.is_empty() {
            let _ = writeln!(out, "{}", note.trim_end());
        }
        let _ = writeln!(
            out,
            "readiness: {}",
            match self.readiness() {
                Ok(s) => s,
                Err(e) => format!("NOT READY: {}", e.replace('\n', "; ")),
            }
        );
        if let Some(shard) = self.shard_json() {
            let list = |v: &serde_json::Value| v.as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "));
            let _ = writeln!(
                out,
                "shard {}: replica {}, live replicas [{}], owns [{}] (share {}), lease errors {}",
                shard["namespace"].as_str().unwrap_or(""),
                shard["identity"].as_str().unwrap_or(""),
                list(&shard["replicas"]).unwrap_or_default(),
                list(&shard["owned"]).unwrap_or_default(),
                shard["share"],
                shard["errors"]
            );
        }
        let tenants = lock(&self.inner.shared.tenants);
        for (name, t) in tenants.iter() {
            let _ = writeln!(out);
            let kind = if t.engine_kind.is_empty() { "?" } else { t.engine_kind.as_str() };
            let Some(s) = t.status() else {
                let _ = writeln!(out, "tenant {name} ({kind} engine): not started");
                continue;
            };
            let state = match (&s.error, s.stopped) {
                (Some(e), _) => format!("STOPPED: {e}"),
                (None, true) => "stopped".to_string(),
                (None, false) if s.is_idle() => "running, settled".to_string(),
                (None, false) => "running, busy".to_string(),
            };
            let _ = writeln!(out, "tenant {name} ({kind} engine): {state}");
            if let Some(wit) = s.wit {
                let _ = writeln!(out, "  component: {wit}");
            }
            if let Some(warning) = &s.warning {
                let _ = writeln!(out, "  WARNING: {warning}");
            }
            let last = match t.last_tick_at {
                Some(at) => format!("{:.2} s ago", at.elapsed().as_secs_f64()),
                None => "never".into(),
            };
            let _ = writeln!(out, "  ticks: {} (last {last})", s.ticks);
            if s.traps > 0 {
                let _ = writeln!(out, "  guest traps: {} ({} in a row)", s.traps, s.consecutive_traps);
            }
            if s.restarts > 0 || s.quarantined_total > 0 {
                let _ = writeln!(out, "  engine restarts after a trap: {}; inputs quarantined: {}", s.restarts, s.quarantined_total);
                for q in &s.quarantined {
                    let _ = writeln!(out, "    tick {}: {} ({})", q.tick, q.summary, q.reason);
                }
            }
            let _ = writeln!(out, "  operations by state: {}", states_line(&s.engine));
            let _ = writeln!(
                out,
                "  operations in flight: {}; calls in flight: {} (engine counts {}); pending deletions: {} (pods {}); location sync in flight: {}",
                s.engine.operations_in_flight,
                s.calls_outstanding,
                s.engine.calls_in_flight,
                s.engine.pending_deletions,
                s.engine.pending_pod_deletions,
                if s.engine.location_sync_in_flight { "yes" } else { "no" },
            );
            if !t.calls.is_empty() {
                let _ = writeln!(out, "  calls:");
                let width = t.calls.keys().map(|k| k.len()).max().unwrap_or(0);
                for (label, c) in &t.calls {
                    let _ = writeln!(
                        out,
                        "    {label:<width$}  started {:>6}  ok {:>6}  failed {:>4}  in flight {:>3}",
                        c.started,
                        c.ok,
                        c.failed,
                        c.in_flight()
                    );
                }
            }
        }
        out
    }
}

/// `created=33 creation_in_progress=0 ...`, every state the engine reports.
pub fn states_line(status: &EngineStatus) -> String {
    if status.states.is_empty() {
        return "(none yet)".into();
    }
    status.states.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(" ")
}

// ------------------------------------------------------------------------ tick timing

/// Wall time between two reads of a tenant's operations (each is O(operations)).
pub const OPERATIONS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Times each tick of the engine it wraps, and now and then reads its operations.
struct TickTimer {
    histogram: Histogram,
    operations: Arc<Mutex<Vec<OperationStatus>>>,
    refreshed: Option<Instant>,
}

impl Intercept for TickTimer {
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        let started = Instant::now();
        let result = inner.tick(now_ms, completions);
        self.histogram.observe(started.elapsed().as_secs_f64());
        // At most once per refresh interval, and at every tick that leaves the engine with no
        // call in flight: otherwise the last changes before a quiet spell would never show.
        let quiet = result.as_ref().is_ok_and(|r| r.outcome.calls_in_flight == 0 && r.started.is_empty());
        if result.is_ok() && (quiet || self.refreshed.is_none_or(|at| at.elapsed() >= OPERATIONS_REFRESH)) {
            self.refreshed = Some(Instant::now());
            // A failure here is the tick's to report (the next tick fails the same way).
            if let Ok(ops) = inner.operations() {
                *lock(&self.operations) = ops;
            }
        }
        result
    }
}

// ------------------------------------------------------------------------ engine samples

/// Re-exposes every tenant's `difftracker_engine_*` samples at scrape time.
struct EngineSamples {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineSamples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineSamples")
    }
}

impl Collector for EngineSamples {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot: Vec<(String, Vec<MetricSample>)> = {
            let tenants = lock(&self.shared.tenants);
            tenants.iter().filter_map(|(name, t)| t.status().map(|s| (name.clone(), s.engine.metrics))).collect()
        };
        encode_engine_samples(encoder, &snapshot)
    }
}

#[derive(Default)]
struct HistogramSeries {
    /// `(le, cumulative count)`.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

enum EngineFamily {
    Counter(BTreeMap<Labels, f64>),
    Gauge(BTreeMap<Labels, f64>),
    Histogram(BTreeMap<Labels, HistogramSeries>),
}

/// The samples' labels plus `tenant` (replacing one the engine may have set), sorted, escaped.
fn with_tenant(sample_labels: &[(String, String)], tenant: &str, skip_le: bool) -> Labels {
    let mut out: Labels =
        sample_labels.iter().filter(|(k, _)| k != "tenant" && !(skip_le && k == "le")).map(|(k, v)| (k.clone(), escape(v))).collect();
    out.push(("tenant".into(), escape(tenant)));
    out.sort();
    out
}

/// Groups flat samples (histograms already expanded into `_bucket`, `_sum`, `_count`) into
/// typed families and encodes them. A histogram is told by its `le` buckets; every other sample
/// is a counter or a gauge as its kind says (a 0.3.0 engine gives it; the 0.2.0 conversions
/// derive it from the name, as the 0.2.0 hosts did).
fn encode_engine_samples(mut encoder: DescriptorEncoder, tenants: &[(String, Vec<MetricSample>)]) -> Result<(), std::fmt::Error> {
    let histograms: BTreeSet<&str> = tenants
        .iter()
        .flat_map(|(_, samples)| samples.iter())
        .filter(|s| s.labels.iter().any(|(k, _)| k == "le"))
        .filter_map(|s| s.name.strip_suffix("_bucket"))
        .collect();
    let mut families: BTreeMap<String, EngineFamily> = BTreeMap::new();
    for (tenant, samples) in tenants {
        for s in samples {
            if !s.name.starts_with(difftracker_engine::metrics::PREFIX) {
                continue;
            }
            let part = |suffix: &str| s.name.strip_suffix(suffix).filter(|base| histograms.contains(base));
            if let Some(base) = part("_bucket") {
                let Some(le) = s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()) else { continue };
                let le = if le == "+Inf" { f64::MAX } else { le.parse::<f64>().unwrap_or(f64::MAX) };
                if let EngineFamily::Histogram(series) =
                    families.entry(base.to_string()).or_insert_with(|| EngineFamily::Histogram(BTreeMap::new()))
                {
                    series.entry(with_tenant(&s.labels, tenant, true)).or_default().buckets.push((le, s.value));
                }
            } else if let Some(base) = part("_sum").or_else(|| part("_count")) {
                let is_sum = s.name.ends_with("_sum");
                if let EngineFamily::Histogram(series) =
                    families.entry(base.to_string()).or_insert_with(|| EngineFamily::Histogram(BTreeMap::new()))
                {
                    let h = series.entry(with_tenant(&s.labels, tenant, true)).or_default();
                    if is_sum {
                        h.sum = s.value;
                    } else {
                        h.count = s.value;
                    }
                }
            } else if s.kind == MetricKind::Counter {
                // The encoder appends `_total` to a counter's name.
                let base = s.name.strip_suffix("_total").unwrap_or(&s.name);
                if let EngineFamily::Counter(series) =
                    families.entry(base.to_string()).or_insert_with(|| EngineFamily::Counter(BTreeMap::new()))
                {
                    series.insert(with_tenant(&s.labels, tenant, false), s.value);
                }
            } else if let EngineFamily::Gauge(series) =
                families.entry(s.name.clone()).or_insert_with(|| EngineFamily::Gauge(BTreeMap::new()))
            {
                series.insert(with_tenant(&s.labels, tenant, false), s.value);
            }
        }
    }
    const HELP: &str = "difftracker engine metric (ENGINE.md section 12), re-exposed by the host per tenant";
    for (name, family) in &families {
        match family {
            EngineFamily::Counter(series) => {
                let mut m = encoder.encode_descriptor(name, HELP, None, MetricType::Counter)?;
                for (l, v) in series {
                    let mut f = m.encode_family(l)?;
                    if v.fract() == 0.0 && *v >= 0.0 && *v < 1.8e19 {
                        f.encode_counter::<NoLabelSet, u64, u64>(&(*v as u64), None)?;
                    } else {
                        f.encode_counter::<NoLabelSet, f64, f64>(v, None)?;
                    }
                }
            }
            EngineFamily::Gauge(series) => {
                let mut m = encoder.encode_descriptor(name, HELP, None, MetricType::Gauge)?;
                for (l, v) in series {
                    let mut f = m.encode_family(l)?;
                    if v.fract() == 0.0 && v.abs() < 9.0e18 {
                        f.encode_gauge(&(*v as i64))?;
                    } else {
                        f.encode_gauge(v)?;
                    }
                }
            }
            EngineFamily::Histogram(series) => {
                let mut m = encoder.encode_descriptor(name, HELP, None, MetricType::Histogram)?;
                for (l, h) in series {
                    let mut buckets = h.buckets.clone();
                    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    // prometheus-client wants per-bucket counts; the engine gives cumulative ones.
                    let mut previous = 0.0;
                    let per_bucket: Vec<(f64, u64)> = buckets
                        .iter()
                        .map(|(le, cumulative)| {
                            let n = (cumulative - previous).max(0.0) as u64;
                            previous = *cumulative;
                            (*le, n)
                        })
                        .collect();
                    let mut f = m.encode_family(l)?;
                    f.encode_histogram::<NoLabelSet>(h.sum, h.count.max(0.0) as u64, &per_bucket, None)?;
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------ HTTP

/// A running observability server.
pub type ObserveHandle = ServerHandle;

/// The endpoints as an axum router (to merge into another server).
pub fn router(observatory: Observatory) -> Router {
    Router::new()
        .route("/metrics", get(metrics_endpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_endpoint))
        .route("/", get(status_endpoint))
        .route("/operations", get(operations_endpoint))
        .route("/status.json", get(status_json_endpoint))
        .with_state(observatory)
}

async fn metrics_endpoint(State(obs): State<Observatory>) -> Response {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], obs.render_metrics()).into_response()
}

async fn readyz_endpoint(State(obs): State<Observatory>) -> Response {
    match obs.readiness() {
        Ok(s) => (StatusCode::OK, format!("{s}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn status_endpoint(State(obs): State<Observatory>, headers: axum::http::HeaderMap) -> Response {
    let browser = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if browser {
        let page = page::STATUS_HTML.replace("__POLL_MS__", &page::POLL_MS.to_string());
        return ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], obs.status_page()).into_response()
}

async fn status_json_endpoint(State(obs): State<Observatory>) -> Response {
    axum::Json(obs.status_json()).into_response()
}

/// `/operations` answers at most this many operations per tenant.
pub const OPERATIONS_LIMIT_MAX: usize = 1000;

/// The query of `/operations`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct OperationsQuery {
    /// Keeps the operations whose identity, `namespace/name` or state contains this (any case).
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub offset: usize,
    /// At most [`OPERATIONS_LIMIT_MAX`]; 100 when absent.
    pub limit: Option<usize>,
}

impl Observatory {
    /// Per tenant, its operations (as last read) that match `query`, keyed by identity, one
    /// page of them.
    pub fn operations(&self, query: &OperationsQuery) -> serde_json::Value {
        let needle = query.q.to_ascii_lowercase();
        let limit = query.limit.unwrap_or(100).min(OPERATIONS_LIMIT_MAX);
        let tenants = lock(&self.inner.shared.tenants);
        let mut out = serde_json::Map::new();
        for (name, t) in tenants.iter() {
            let ops = lock(&t.operations);
            let page: serde_json::Map<String, serde_json::Value> = ops
                .iter()
                .filter(|o| {
                    needle.is_empty()
                        || o.identity.contains(&needle)
                        || format!("{}/{}", o.namespace, o.name).to_ascii_lowercase().contains(&needle)
                        || o.state == needle
                })
                .skip(query.offset)
                .take(limit)
                .map(|o| (o.identity.clone(), serde_json::to_value(o).unwrap_or_default()))
                .collect();
            out.insert(name.clone(), serde_json::Value::Object(page));
        }
        serde_json::Value::Object(out)
    }
}

async fn operations_endpoint(State(obs): State<Observatory>, query: axum::extract::Query<OperationsQuery>) -> Response {
    axum::Json(obs.operations(&query.0)).into_response()
}

/// Serves the endpoints of `observatory` on `listener` until the handle is dropped.
pub async fn serve(listener: tokio::net::TcpListener, observatory: Observatory) -> std::io::Result<ObserveHandle> {
    serve_with(listener, observatory, ServerOptions::default()).await
}

/// [`serve`] with other connection limits than the default ones.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    observatory: Observatory,
    options: ServerOptions,
) -> std::io::Result<ObserveHandle> {
    ServerHandle::spawn_with(listener, router(observatory), "observability", options)
}

/// Binds `addr` (port 0 picks a free port) and serves the endpoints there.
pub async fn bind(addr: SocketAddr, observatory: Observatory) -> Result<ObserveHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for /metrics"))?;
    Ok(serve(listener, observatory).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> MetricSample {
        let kind = if name.ends_with("_total") && !name.contains("tracked_services") { MetricKind::Counter } else { MetricKind::Gauge };
        MetricSample { name: name.into(), labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), value, kind }
    }

    fn status(ticks: u64, metrics: Vec<MetricSample>) -> TenantStatus {
        TenantStatus { ticks, engine: EngineStatus { metrics, ..EngineStatus::default() }, ..TenantStatus::default() }
    }

    #[tokio::test]
    async fn the_status_pages_name_the_running_instances_wit_package() {
        let obs = Observatory::new();
        let (_tx, rx) = watch::channel(TenantStatus { wit: Some("clb:difftracker@0.2.0"), ..status(1, vec![]) });
        obs.watch_tenant("old", rx);
        let (_tx2, rx2) = watch::channel(status(1, vec![]));
        obs.watch_tenant("native", rx2);
        let text = obs.status_page();
        assert!(text.contains("tenant old (? engine): running, busy\n  component: clb:difftracker@0.2.0\n"), "{text}");
        assert!(text.contains("tenant native (? engine): running, busy\n  ticks"), "{text}");
        let json = obs.status_json();
        assert_eq!(json["tenants"]["old"]["wit"], "clb:difftracker@0.2.0", "{json}");
        assert!(json["tenants"]["native"]["wit"].is_null(), "{json}");
    }

    #[tokio::test]
    async fn engine_samples_are_re_exposed_typed_with_a_tenant_label() {
        let obs = Observatory::new();
        let h = "difftracker_engine_service_operation_duration_seconds";
        let metrics = vec![
            sample("difftracker_engine_service_operations_total", &[("operation", "create"), ("error_code", "")], 3.0),
            sample("difftracker_engine_tracked_services_total", &[("state", "nrp_loadbalancers")], 2.0),
            sample("difftracker_engine_pending_deletions", &[], 1.0),
            sample(&format!("{h}_bucket"), &[("operation", "create"), ("le", "0.1")], 1.0),
            sample(&format!("{h}_bucket"), &[("operation", "create"), ("le", "1")], 3.0),
            sample(&format!("{h}_bucket"), &[("operation", "create"), ("le", "+Inf")], 4.0),
            sample(&format!("{h}_sum"), &[("operation", "create")], 2.5),
            sample(&format!("{h}_count"), &[("operation", "create")], 4.0),
            sample("not_an_engine_metric", &[], 9.0),
        ];
        let (_tx, rx) = watch::channel(status(1, metrics));
        obs.watch_tenant("t\"1", rx);
        let text = obs.render_metrics();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("# TYPE difftracker_engine_service_operations counter"), "{text}");
        assert!(has(r#"difftracker_engine_service_operations_total{error_code="",operation="create",tenant="t\"1"} 3"#), "{text}");
        assert!(has("# TYPE difftracker_engine_tracked_services_total gauge"), "{text}");
        assert!(has(r#"difftracker_engine_tracked_services_total{state="nrp_loadbalancers",tenant="t\"1"} 2"#), "{text}");
        assert!(has(r#"difftracker_engine_pending_deletions{tenant="t\"1"} 1"#), "{text}");
        assert!(has(&format!("# TYPE {h} histogram")), "{text}");
        assert!(has(&format!(r#"{h}_bucket{{le="0.1",operation="create",tenant="t\"1"}} 1"#)), "{text}");
        assert!(has(&format!(r#"{h}_bucket{{le="1.0",operation="create",tenant="t\"1"}} 3"#)), "{text}");
        assert!(has(&format!(r#"{h}_bucket{{le="+Inf",operation="create",tenant="t\"1"}} 4"#)), "{text}");
        assert!(has(&format!(r#"{h}_count{{operation="create",tenant="t\"1"}} 4"#)), "{text}");
        assert!(!text.contains("not_an_engine_metric"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn readiness_needs_a_tick_and_no_error() {
        let obs = Observatory::new();
        assert!(obs.readiness().is_err(), "no tenant yet");
        let (tx, rx) = watch::channel(status(0, vec![]));
        obs.watch_tenant("a", rx);
        assert!(obs.readiness().unwrap_err().contains("not ticked"));
        tx.send_modify(|s| s.ticks = 1);
        assert!(obs.readiness().unwrap_err().contains("not initialized: waiting for the initial lists"));
        tx.send_modify(|s| {
            s.engine.initialization.initial_lists_complete = true;
            s.engine.initialization.error = Some("not initialized: start-up list GET services failed: InvalidResponse".into());
        });
        assert!(obs.readiness().unwrap_err().contains("GET services failed"));
        tx.send_modify(|s| {
            s.engine.initialization = Initialization { phase: InitPhase::Ready, initial_lists_complete: true, ..Default::default() }
        });
        assert!(obs.readiness().is_ok());
        tx.send_modify(|s| {
            s.error = Some("guest trapped".into());
            s.stopped = true;
        });
        let err = obs.readiness().unwrap_err();
        assert!(err.contains("guest trapped"), "{err}");
        assert!(obs.status_page().contains("STOPPED: guest trapped"));
    }

    /// A quarantined input makes the tenant not ready and counts in
    /// `difftracker_host_inputs_quarantined_total`; a restart alone does not.
    #[tokio::test]
    async fn a_quarantined_input_makes_the_tenant_not_ready_and_is_counted() {
        let obs = Observatory::new();
        let (tx, rx) = watch::channel(status(1, vec![]));
        obs.watch_tenant("a", rx);
        tx.send_modify(|s| {
            s.engine.initialization.phase = difftracker_engine::io::InitPhase::Ready;
            s.restarts = 1;
        });
        assert!(obs.readiness().is_ok(), "a recovered trap alone leaves the tenant ready");
        tx.send_modify(|s| {
            s.quarantined_total = 2;
            s.quarantined.push(crate::tenant::Quarantined {
                tick: 3,
                at_ms: 10,
                kind: crate::tenant::QuarantinedKind::Event,
                summary: "ServiceApplied default/huge (9000000 bytes)".into(),
                reason: "guest trapped".into(),
            });
        });
        let err = obs.readiness().unwrap_err();
        assert!(err.contains("skipped 2 input(s)") && err.contains("default/huge"), "{err}");
        for _ in 0..100 {
            if obs.render_metrics().contains("difftracker_host_inputs_quarantined_total{tenant=\"a\"} 2") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the quarantine counter never reached 2:\n{}", obs.render_metrics());
    }

    /// A backed-off tenant shows its traps and its backoff in the metrics and its warning on the
    /// status page; the backoff gauge drops to 0 once it is over.
    #[tokio::test]
    async fn traps_and_the_backoff_are_exposed_and_the_warning_shown() {
        let obs = Observatory::new();
        let (tx, rx) = watch::channel(status(1, vec![]));
        obs.watch_tenant("a", rx);
        tx.send_modify(|s| {
            s.traps = 2;
            s.consecutive_traps = 2;
            s.backoff = Some(std::time::Duration::from_millis(200));
            s.warning = Some("the engine trapped in 2 tick(s) in a row".into());
        });
        let wait_for = |line: &'static str| {
            let obs = obs.clone();
            async move {
                for _ in 0..100 {
                    let text = obs.render_metrics();
                    if text.lines().any(|l| l == line) {
                        return text;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("no line {line:?} in:\n{}", obs.render_metrics());
            }
        };
        let text = wait_for(r#"difftracker_host_tenant_backoff_seconds{tenant="a"} 0.2"#).await;
        assert!(text.lines().any(|l| l == r#"difftracker_host_engine_traps_total{tenant="a"} 2"#), "{text}");
        assert!(text.contains("# HELP difftracker_host_engine_traps Guest calls that trapped"), "{text}");
        assert!(text.contains("# TYPE difftracker_host_tenant_backoff_seconds gauge"), "{text}");
        let page = obs.status_page();
        assert!(page.contains("WARNING: the engine trapped in 2 tick(s) in a row"), "{page}");
        assert!(page.contains("guest traps: 2 (2 in a row)"), "{page}");
        assert_eq!(obs.status_json()["tenants"]["a"]["backoff_s"], 0.2);
        tx.send_modify(|s| {
            s.consecutive_traps = 0;
            s.backoff = None;
            s.warning = None;
        });
        wait_for(r#"difftracker_host_tenant_backoff_seconds{tenant="a"} 0.0"#).await;
    }

    #[test]
    fn call_results_are_labelled_by_error_kind() {
        assert_eq!(result_label(&Ok::<(), CallError>(())), "ok");
        let e = CallError::of_kind(ErrorKind::Throttled, "slow down");
        assert_eq!(result_label(&Err::<(), _>(e)), "throttled");
    }
}
