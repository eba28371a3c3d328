//! The main job: what `difftracker` does with no configuration.
//!
//! It starts the ARM/NRP emulator in-process on a loopback port, reads a trace of Kubernetes
//! watch events (the bundled `examples/sample-trace.jsonl`, or `--trace FILE`) and plays it, in
//! real time compressed `--speed` times, into the simulated cluster of [`crate::replay::cluster`].
//! The watch events the cluster produces feed one real tenant ([`difftracker_runtime::tenant`], the wasm engine
//! by default); its cloud calls go over HTTP through [`ArmTransport`] to the emulator, its
//! Kubernetes writes to the simulated cluster (finalizers, status patches, Events). The
//! observability endpoints of [`difftracker_runtime::observe`] are served on another loopback port, printed at
//! start. A progress line is printed about every second.
//!
//! The run ends when the trace is exhausted and everything has settled (the engine settled, no
//! call in flight, every watch event handed to the engine and seen by a tick, nothing stuck
//! deleting in the cluster), or at `--timeout-secs`. A summary table follows: Services created
//! and deleted, the emulator's inventory, cloud calls by kind, Kubernetes writes and Events, wall
//! time, and the verdict of the replay oracle ([`crate::replay::oracle`]) on the final state. The
//! command fails when the run did not converge or the oracle found differences.
//!
//! Unlike `replay` this runs in wall-clock time over real sockets: it shows the system working,
//! it is not deterministic.

use crate::emulator::{self, CloudState, EmulatorHandle, EmulatorOptions, LroMode, PollingOptions};
use crate::replay::cluster::Cluster;
use crate::replay::oracle;
use crate::replay::{parse_trace, Trace};
use crate::samples::{SAMPLE_TRACE, SAMPLE_TRACE_NAME};
use anyhow::{anyhow, bail, Context, Result};
use difftracker_engine::io::{KubeCall, KubeEvent, KubeEventRecord, TenantConfig};
use difftracker_runtime::backend::{CallFuture, KubeBackend};
use difftracker_runtime::driver::{CallIds, EngineKind};
use difftracker_runtime::executor::{Backends, Executor, SystemClock, DEFAULT_GLOBAL_CAP};
use difftracker_runtime::observe::{self, CallCounts, Observatory, ObserveHandle};
use difftracker_runtime::tenant::{Recovery, TenantHandle, TenantOptions, TenantStatus};
use difftracker_runtime::transport::{ArmTransport, TransportOptions};
use difftracker_runtime::wasm::SandboxLimits;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The tenant's name.
pub const TENANT: &str = "live";

/// How to run the main job.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub trace: Trace,
    /// How the trace is named in output.
    pub trace_name: String,
    pub engine: EngineKind,
    /// The component's sandbox (guest memory, CPU deadline).
    pub sandbox: SandboxLimits,
    /// Trace milliseconds per wall-clock millisecond.
    pub speed: f64,
    pub timeout: Duration,
    /// LRO polling mode on the emulator.
    pub polling: bool,
    /// Where the observability endpoints listen.
    pub listen: SocketAddr,
    pub seed: u64,
    /// Print the header and a progress line about every second.
    pub print_progress: bool,
    /// The engine's request budget (`TenantConfig::max_request_bytes`, `max_request_entries`);
    /// the defaults when `None`.
    pub max_request_bytes: Option<u64>,
    pub max_request_entries: Option<u32>,
    /// Resources a previous controller left in the cloud, seeded into the emulator before the
    /// engine starts (`--cloud-state FILE`).
    pub cloud_state: Option<CloudState>,
}

impl LiveOptions {
    /// The bundled sample trace with the command's defaults.
    pub fn sample() -> Result<LiveOptions> {
        let trace = parse_trace(SAMPLE_TRACE.as_bytes()).map_err(|e| anyhow!("bundled sample trace: {e}"))?;
        Ok(LiveOptions {
            trace_name: SAMPLE_TRACE_NAME.to_string(),
            print_progress: true,
            ..LiveOptions::for_trace(trace, EngineKind::Wasm)
        })
    }

    /// `trace` with the library defaults (50x, 120 s, synchronous LROs, any loopback port, quiet).
    pub fn for_trace(trace: Trace, engine: EngineKind) -> LiveOptions {
        LiveOptions {
            trace,
            trace_name: "(in memory)".into(),
            engine,
            sandbox: SandboxLimits::default(),
            speed: 50.0,
            timeout: Duration::from_secs(120),
            polling: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            print_progress: false,
            max_request_bytes: None,
            max_request_entries: None,
            cloud_state: None,
        }
    }
}

/// The transport's knobs for the emulator on loopback: fast polls and retries.
pub fn transport_options() -> TransportOptions {
    TransportOptions {
        default_poll_interval: Duration::from_millis(20),
        // The in-process emulator is the only server polled.
        min_poll_interval: Duration::from_millis(20),
        max_retries: 3,
        retry_base_delay: Duration::from_millis(50),
        retry_max_delay: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(60),
        operation_timeout: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(10),
        ..TransportOptions::default()
    }
}

// ------------------------------------------------------------------------ clock and cluster

/// Trace time: wall time since the start, times the speed.
#[derive(Clone, Copy, Debug)]
struct TraceClock {
    start: Instant,
    speed: f64,
}

impl TraceClock {
    fn now_ms(&self) -> u64 {
        (self.start.elapsed().as_secs_f64() * 1000.0 * self.speed) as u64
    }

    /// The wall-clock instant at which trace time reaches `at_ms`.
    fn instant_of(&self, at_ms: u64) -> Instant {
        let secs = at_ms as f64 / 1000.0 / self.speed;
        // A trace of absurd length must not overflow the Instant.
        self.start + Duration::from_secs_f64(secs.min(1.0e9))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The simulated cluster as the tenant's [`KubeBackend`]: writes are applied at once; the watch
/// events they cause are queued, in the cluster's order, for the tenant.
struct ClusterKube {
    cluster: Arc<Mutex<Cluster>>,
    watch: mpsc::UnboundedSender<Vec<KubeEvent>>,
    clock: TraceClock,
}

impl KubeBackend for ClusterKube {
    fn call(&self, call: KubeCall) -> CallFuture {
        let outcome = {
            let mut cluster = lock(&self.cluster);
            let outcome = cluster.perform(self.clock.now_ms(), &call);
            // Sent under the lock, so watch events keep the cluster's order; and before the
            // completion returns, so the driver sees them no later than the tenant's idleness.
            let events = cluster.take_events();
            if !events.is_empty() {
                let _ = self.watch.send(events);
            }
            outcome
        };
        Box::pin(async move { outcome })
    }

    fn record_event(&self, event: KubeEventRecord) {
        lock(&self.cluster).record_event(event);
    }
}

// ------------------------------------------------------------------------ the summary

/// What a run did, for the summary table and for tests.
#[derive(Clone, Debug)]
pub struct LiveSummary {
    /// The trace was exhausted and everything settled before the timeout.
    pub converged: bool,
    pub engine: EngineKind,
    pub trace_name: String,
    pub trace_events: usize,
    /// Trace events applied to the cluster by the end (all of them unless timed out).
    pub trace_events_played: usize,
    pub trace_end_ms: u64,
    pub speed: f64,
    /// From the first trace event to the end (settled or timed out).
    pub wall: Duration,
    /// Before that: loading the engine, starting the emulator and the endpoints.
    pub startup: Duration,
    pub ticks: u64,
    /// Successful create / delete operations of the engine (`service_operations_total`).
    pub services_created: u64,
    pub services_updated: u64,
    pub services_deleted: u64,
    /// Counts in the emulator's final inventory (`/_emulator/inventory`).
    pub public_ips: usize,
    pub load_balancers: usize,
    pub nat_gateways: usize,
    /// ServiceGateway services (registrations).
    pub registrations: usize,
    /// Pod addresses mapped in the ServiceGateway's address locations.
    pub mapped_addresses: usize,
    /// Node IPs that carry mapped addresses.
    pub locations: usize,
    /// The same counts before the engine ran (the AKS-owned `default-natgw` and its IP).
    pub baseline: Value,
    pub inventory: Value,
    /// Cloud calls by label (`PUT loadBalancers`, ...).
    pub cloud_calls: BTreeMap<String, CallCounts>,
    /// Kubernetes writes by `<call> <outcome>`.
    pub kube_writes: BTreeMap<String, u64>,
    /// Kubernetes Events recorded, by reason.
    pub kube_events: BTreeMap<String, u64>,
    pub engine_states: Vec<(String, u32)>,
    /// What the oracle found wrong with the final state (empty: it holds).
    pub oracle_differences: Vec<String>,
}

fn object_len(v: &Value, field: &str) -> usize {
    match v.get(field) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// `(addresses, node IPs)` of an inventory's address locations.
fn mapped(v: &Value) -> (usize, usize) {
    match v.get("address_locations") {
        Some(Value::Object(nodes)) => {
            let addresses = nodes.values().map(|a| a.as_object().map_or(0, |m| m.len())).sum();
            let used = nodes.values().filter(|a| a.as_object().is_some_and(|m| !m.is_empty())).count();
            (addresses, used)
        }
        _ => (0, 0),
    }
}

impl LiveSummary {
    /// Converged, and the oracle holds.
    pub fn ok(&self) -> bool {
        self.converged && self.oracle_differences.is_empty()
    }

    pub fn cloud_calls_total(&self) -> u64 {
        self.cloud_calls.values().map(|c| c.started).sum()
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let baseline = |field: &str| match object_len(&self.baseline, field) {
            0 => String::new(),
            n => format!("  ({n} pre-existing)"),
        };
        let verdict = match (self.converged, self.oracle_differences.is_empty()) {
            (true, true) => "converged; oracle OK".to_string(),
            (true, false) => format!("converged, but the oracle found {} difference(s)", self.oracle_differences.len()),
            (false, _) => "did NOT converge before the timeout".to_string(),
        };
        let row = |out: &mut String, k: &str, v: String| {
            let _ = writeln!(out, "  {k:<34} {v}");
        };
        let _ = writeln!(out, "summary");
        row(&mut out, "result", verdict);
        row(
            &mut out,
            "wall time",
            format!(
                "{:.2} s  (+ {:.2} s start-up; trace {}: {} events over {:.1} s of trace time, at {}x)",
                self.wall.as_secs_f64(),
                self.startup.as_secs_f64(),
                self.trace_name,
                self.trace_events,
                self.trace_end_ms as f64 / 1000.0,
                self.speed
            ),
        );
        if self.trace_events_played < self.trace_events {
            row(&mut out, "trace events played", format!("{} of {}", self.trace_events_played, self.trace_events));
        }
        row(&mut out, "engine", format!("{}, {} ticks", self.engine.as_str(), self.ticks));
        row(&mut out, "services created", self.services_created.to_string());
        row(&mut out, "services updated", self.services_updated.to_string());
        row(&mut out, "services deleted", self.services_deleted.to_string());
        let _ = writeln!(out, "  emulator inventory");
        row(&mut out, "  public IPs", format!("{}{}", self.public_ips, baseline("public_ips")));
        row(&mut out, "  load balancers", format!("{}{}", self.load_balancers, baseline("load_balancers")));
        row(&mut out, "  NAT gateways", format!("{}{}", self.nat_gateways, baseline("nat_gateways")));
        row(&mut out, "  registrations", format!("{}{}", self.registrations, baseline("sgw_services")));
        row(&mut out, "  mapped addresses", format!("{} on {} node IP(s)", self.mapped_addresses, self.locations));
        let failed: u64 = self.cloud_calls.values().map(|c| c.failed).sum();
        row(&mut out, "cloud calls", format!("{} ({failed} failed)", self.cloud_calls_total()));
        for (label, c) in &self.cloud_calls {
            let extra = if c.failed > 0 { format!("  ({} failed)", c.failed) } else { String::new() };
            row(&mut out, &format!("  {label}"), format!("{}{extra}", c.started));
        }
        let writes: u64 = self.kube_writes.values().sum();
        row(&mut out, "kubernetes writes", writes.to_string());
        for (label, n) in &self.kube_writes {
            row(&mut out, &format!("  {label}"), n.to_string());
        }
        let events: u64 = self.kube_events.values().sum();
        row(&mut out, "kubernetes events", events.to_string());
        for (reason, n) in &self.kube_events {
            row(&mut out, &format!("  {reason}"), n.to_string());
        }
        row(&mut out, "engine states", self.engine_states.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(" "));
        if self.oracle_differences.is_empty() {
            row(&mut out, "oracle", "OK: the emulator holds exactly what the final cluster implies".into());
        } else {
            row(&mut out, "oracle", format!("{} difference(s):", self.oracle_differences.len()));
            for d in self.oracle_differences.iter().take(20) {
                let _ = writeln!(out, "    {d}");
            }
            if self.oracle_differences.len() > 20 {
                let _ = writeln!(out, "    ... and {} more", self.oracle_differences.len() - 20);
            }
        }
        out
    }
}

/// Successful operations of the engine by `operation` label (`create`, `update`, `delete`).
fn operations_succeeded(status: &TenantStatus) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let name = format!("{}{}", difftracker_engine::metrics::PREFIX, difftracker_engine::metrics::SERVICE_OPERATIONS_TOTAL);
    for s in status.engine.metrics.iter().filter(|s| s.name == name) {
        let label = |k: &str| s.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or("");
        if label("result") == "success" {
            *out.entry(label("operation").to_string()).or_insert(0) += s.value.max(0.0) as u64;
        }
    }
    out
}

// ------------------------------------------------------------------------ the run

/// Everything that must stay up while the endpoints are served after the run.
struct Parts {
    _tenant: TenantHandle,
    _emulator: EmulatorHandle,
}

/// A running main job.
pub struct LiveRun {
    observatory: Observatory,
    observe: ObserveHandle,
    emulator_url: String,
    task: tokio::task::JoinHandle<Result<(LiveSummary, Parts)>>,
}

/// A finished main job; the endpoints, the emulator and the (idle) tenant stay up until it is
/// dropped or shut down.
pub struct Finished {
    pub summary: LiveSummary,
    observe: ObserveHandle,
    emulator_url: String,
    _parts: Parts,
}

impl Finished {
    pub fn observe_url(&self) -> String {
        self.observe.url()
    }
    pub fn emulator_url(&self) -> String {
        self.emulator_url.clone()
    }
    pub async fn shutdown(self) {
        self.observe.shutdown().await;
    }
}

impl LiveRun {
    /// `http://127.0.0.1:PORT` of `/metrics`, `/healthz`, `/readyz` and `/`.
    pub fn observe_url(&self) -> String {
        self.observe.url()
    }

    /// The emulator's ARM endpoint (`GET /_emulator/inventory` shows its state).
    pub fn emulator_url(&self) -> String {
        self.emulator_url.clone()
    }

    pub fn observatory(&self) -> &Observatory {
        &self.observatory
    }

    /// Waits for the run to end (settled, or timed out) and returns its summary.
    pub async fn finish(self) -> Result<Finished> {
        let (summary, parts) = self.task.await.map_err(|e| anyhow!("the main job's task failed: {e}"))??;
        Ok(Finished { summary, observe: self.observe, emulator_url: self.emulator_url, _parts: parts })
    }
}

/// Starts the main job: the emulator, the endpoints, the tenant, and the task that plays the
/// trace. Returns once everything listens.
pub async fn start(options: LiveOptions) -> Result<LiveRun> {
    if !(options.speed.is_finite() && options.speed > 0.0) {
        bail!("--speed must be a positive number, not {}", options.speed);
    }
    let begun = Instant::now();
    let engine = options.engine;
    let config = TenantConfig {
        tenant: TENANT.into(),
        seed: options.seed,
        max_request_bytes: options.max_request_bytes,
        max_request_entries: options.max_request_entries,
        ..TenantConfig::default()
    };
    let sandbox = options.sandbox.clone();
    let limits = sandbox.clone();
    let driver = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut driver = engine.new_driver_in(CallIds::default(), &limits)?;
        driver.create(&config).context("creating the engine")?;
        Ok(driver)
    })
    .await
    .map_err(|e| anyhow!("loading the engine failed: {e}"))??;

    let emulator_options = EmulatorOptions {
        lro: if options.polling { LroMode::Polling(PollingOptions::default()) } else { LroMode::Synchronous },
        ..EmulatorOptions::default()
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on loopback for the emulator")?;
    let emulator = emulator::serve(listener, emulator_options).await.context("starting the emulator")?;
    let emulator_url = emulator.base_url();
    let mut baseline = emulator.inventory();
    if let Some(cs) = &options.cloud_state {
        emulator.emulator().seed(cs)?;
        baseline = oracle::baseline_with(&baseline, cs);
    }
    let cloud =
        ArmTransport::unauthenticated(emulator.tenant_config(), transport_options()).map_err(|e| anyhow!("emulator configuration: {e}"))?;

    let observatory = Observatory::new();
    let observe = observe::bind(options.listen, observatory.clone()).await?;

    let startup = begun.elapsed();
    let clock = TraceClock { start: Instant::now(), speed: options.speed };
    let cluster = Arc::new(Mutex::new(Cluster::new()));
    let (watch_tx, watch_rx) = mpsc::unbounded_channel();
    let kube = ClusterKube { cluster: cluster.clone(), watch: watch_tx.clone(), clock };
    let executor = Executor::new(Arc::new(SystemClock), DEFAULT_GLOBAL_CAP);
    let tenant = observatory.spawn_tenant(
        &executor,
        // A guest that traps is rebuilt from its last good snapshot, the offending input quarantined.
        TenantOptions::new(TENANT).with_recovery(Recovery::new(move |ids| engine.new_driver_in(ids, &sandbox))),
        driver,
        Backends { cloud: Arc::new(cloud), kube: Arc::new(kube) },
        None,
    );

    if options.print_progress {
        println!(
            "difftracker: playing {} ({} events over {:.1} s of trace time) at {}x with the {} engine (started in {:.2} s)",
            options.trace_name,
            options.trace.events.len(),
            options.trace.end_ms() as f64 / 1000.0,
            options.speed,
            engine.as_str(),
            startup.as_secs_f64(),
        );
        println!("  ARM/NRP emulator  {emulator_url}  (inventory: {emulator_url}/_emulator/inventory)");
        let url = observe.url();
        println!("  metrics           {url}/metrics");
        println!("  health            {url}/healthz  {url}/readyz");
        println!("  status page       {url}/");
    }

    let driver =
        Driver { options, tenant, cluster, watch_tx, watch_rx, clock, observatory: observatory.clone(), emulator, baseline, startup };
    let task = tokio::spawn(driver.run());
    Ok(LiveRun { observatory, observe, emulator_url, task })
}

/// Plays the trace and watches the tenant until it settles.
struct Driver {
    options: LiveOptions,
    tenant: TenantHandle,
    cluster: Arc<Mutex<Cluster>>,
    watch_tx: mpsc::UnboundedSender<Vec<KubeEvent>>,
    watch_rx: mpsc::UnboundedReceiver<Vec<KubeEvent>>,
    clock: TraceClock,
    observatory: Observatory,
    emulator: EmulatorHandle,
    baseline: Value,
    startup: Duration,
}

/// How often the driver looks at the tenant when nothing else wakes it.
const POLL: Duration = Duration::from_millis(50);
/// Interval of the progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Driver {
    async fn run(mut self) -> Result<(LiveSummary, Parts)> {
        let started = self.clock.start;
        // A timeout too large for the clock (`--timeout-secs 18446744073709551615`) is no timeout.
        let deadline = started.checked_add(self.options.timeout);
        let total = self.options.trace.events.len();
        let mut status_rx = self.tenant.subscribe();
        let mut next = 0usize;
        let mut pending: Vec<KubeEvent> = Vec::new();
        // The tenant's tick count read just after the latest delivery of watch events: a tick
        // numbered two past it began after the delivery, so it saw those events.
        let mut delivered_at_tick: Option<u64> = None;
        let mut last_progress = Instant::now();
        let mut last_nudge: Option<Instant> = None;
        // The tenant's initial lists: the cluster at the trace's first instant, then the marker.
        {
            let first = self.options.trace.events.first().map_or(0, |e| e.at_ms);
            let mut cluster = lock(&self.cluster);
            while next < total && self.options.trace.events[next].at_ms <= first {
                let e = &self.options.trace.events[next];
                cluster.apply(self.clock.now_ms(), e.event_type, e.object.clone());
                next += 1;
            }
            self.tenant.deliver(cluster.initial_lists())?;
        }
        let converged = loop {
            // The trace events that are due go to the cluster; what it emits goes to the queue.
            let now_ms = self.clock.now_ms();
            if next < total && self.options.trace.events[next].at_ms <= now_ms {
                let mut cluster = lock(&self.cluster);
                while next < total && self.options.trace.events[next].at_ms <= now_ms {
                    let e = &self.options.trace.events[next];
                    cluster.apply(now_ms, e.event_type, e.object.clone());
                    next += 1;
                }
                let events = cluster.take_events();
                if !events.is_empty() {
                    let _ = self.watch_tx.send(events);
                }
            }
            // Every queued watch event goes to the tenant, in order.
            while let Ok(batch) = self.watch_rx.try_recv() {
                pending.extend(batch);
            }
            if !pending.is_empty() {
                self.tenant.deliver(std::mem::take(&mut pending))?;
                delivered_at_tick = Some(self.tenant.status().ticks);
            }

            let status = self.tenant.status();
            if let Some(e) = &status.error {
                bail!("the engine stopped: {e}");
            }
            if status.stopped {
                bail!("the tenant stopped unexpectedly");
            }
            let progress = self.progress_line(next, &status);
            self.observatory.set_note(format!("main job: {progress}"));
            if self.options.print_progress && last_progress.elapsed() >= PROGRESS_EVERY {
                println!("{progress}");
                last_progress = Instant::now();
            }

            // Settled? (status first, then the queue: a write's watch events are queued before
            // its completion reaches the tenant.)
            if next == total && status.is_idle() && self.watch_rx.is_empty() {
                let quiet = {
                    let c = lock(&self.cluster);
                    !c.has_deferred() && !c.has_events() && c.stuck_deleting().is_empty()
                };
                let caught_up = match delivered_at_tick {
                    Some(t) => status.ticks >= t + 2,
                    None => status.ticks >= 1,
                };
                if quiet && caught_up {
                    break true;
                }
                if quiet && last_nudge.is_none_or(|at| at.elapsed() >= Duration::from_millis(20)) {
                    // Nothing wakes an idle tenant: an empty delivery makes it tick once more.
                    self.tenant.deliver(Vec::new())?;
                    last_nudge = Some(Instant::now());
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break false;
            }

            let mut wake = deadline.map_or(Instant::now() + POLL, |d| (Instant::now() + POLL).min(d));
            if let Some(e) = self.options.trace.events.get(next) {
                wake = wake.min(self.clock.instant_of(e.at_ms));
            }
            tokio::select! {
                batch = self.watch_rx.recv() => {
                    if let Some(batch) = batch {
                        pending.extend(batch);
                    }
                }
                _ = status_rx.changed() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        };
        let wall = started.elapsed();
        if self.options.print_progress {
            println!("{}", self.progress_line(next, &self.tenant.status()));
        }
        let summary = self.summary(converged, next, wall);
        self.observatory.set_note(format!(
            "main job finished in {:.2} s: {}",
            wall.as_secs_f64(),
            if summary.ok() {
                "converged, oracle OK"
            } else if summary.converged {
                "converged, oracle found differences"
            } else {
                "did NOT converge"
            }
        ));
        Ok((summary, Parts { _tenant: self.tenant, _emulator: self.emulator }))
    }

    fn progress_line(&self, next: usize, status: &TenantStatus) -> String {
        let count = |names: &[&str]| -> u32 { names.iter().map(|n| status.state_count(n)).sum() };
        let done = count(&["created"]);
        let in_flight = count(&["creation_in_progress", "update_in_progress", "deletion_in_progress"]);
        let waiting = count(&["not_started", "deletion_pending", "unknown"]);
        let calls = self.observatory.calls(TENANT);
        // Cloud call labels are `<METHOD> <kind>`; Kubernetes writes are `add-service-finalizers`...
        let (cloud, kube): (Vec<_>, Vec<_>) = calls.iter().partition(|(label, _)| label.contains(' '));
        let started = |calls: &[(&String, &CallCounts)]| -> u64 { calls.iter().map(|(_, c)| c.started).sum() };
        let calls_in_flight: u64 = calls.values().map(|c| c.in_flight()).sum();
        let syncs = calls.get("POST updateAddressLocations").copied().unwrap_or_default();
        format!(
            "[{:>5.1}s] trace {next}/{} | operations: {done} done, {in_flight} in flight, {waiting} waiting, {} deletions pending | location syncs {} | cloud calls {}, kubernetes writes {}, {calls_in_flight} in flight",
            self.clock.start.elapsed().as_secs_f64(),
            self.options.trace.events.len(),
            status.engine.pending_deletions,
            syncs.started,
            started(&cloud),
            started(&kube),
        )
    }

    fn summary(&self, converged: bool, played: usize, wall: Duration) -> LiveSummary {
        let status = self.tenant.status();
        let inventory = self.emulator.inventory();
        let cluster = lock(&self.cluster);
        let oracle_differences = oracle::check(&cluster, &inventory, &self.baseline);
        let ops = operations_succeeded(&status);
        let (mapped_addresses, locations) = mapped(&inventory);
        let cloud_calls = self.observatory.calls(TENANT).into_iter().filter(|(label, _)| label.contains(' ')).collect::<BTreeMap<_, _>>();
        LiveSummary {
            converged,
            engine: self.options.engine,
            trace_name: self.options.trace_name.clone(),
            trace_events: self.options.trace.events.len(),
            trace_events_played: played,
            trace_end_ms: self.options.trace.end_ms(),
            speed: self.options.speed,
            wall,
            startup: self.startup,
            ticks: status.ticks,
            services_created: ops.get("create").copied().unwrap_or(0),
            services_updated: ops.get("update").copied().unwrap_or(0),
            services_deleted: ops.get("delete").copied().unwrap_or(0),
            public_ips: object_len(&inventory, "public_ips"),
            load_balancers: object_len(&inventory, "load_balancers"),
            nat_gateways: object_len(&inventory, "nat_gateways"),
            registrations: object_len(&inventory, "sgw_services"),
            mapped_addresses,
            locations,
            baseline: self.baseline.clone(),
            inventory,
            cloud_calls,
            kube_writes: cluster.stats().writes.clone(),
            kube_events: cluster.event_reasons().clone(),
            engine_states: status.engine.states.clone(),
            oracle_differences,
        }
    }
}

/// Runs the main job to the end and prints its summary (what `difftracker` does by default).
/// Fails when it did not converge or the oracle found differences.
pub async fn run(options: LiveOptions, keep_serving: bool) -> Result<()> {
    let running = start(options).await?;
    let finished = running.finish().await?;
    print!("{}", finished.summary.table());
    let ok = finished.summary.ok();
    let converged = finished.summary.converged;
    let differences = finished.summary.oracle_differences.len();
    if keep_serving {
        println!("serving {}/metrics and the emulator at {} until Ctrl-C", finished.observe_url(), finished.emulator_url());
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    finished.shutdown().await;
    if !converged {
        bail!("the run did not converge within the timeout");
    }
    if !ok {
        bail!("the run settled, but the emulator does not hold what the trace leads to ({differences} difference(s))");
    }
    Ok(())
}
