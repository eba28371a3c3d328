//! The main job: what `difftracker` does with no configuration.
//!
//! It starts two servers in-process on loopback ports, the ARM/NRP emulator and the in-repo
//! Kubernetes API server, and runs against them the controller `difftracker run` runs
//! ([`difftracker_runtime::controller`]: kube-rs watches and guarded writes over HTTP, ARM calls
//! over HTTP, the engine in its sandbox). A trace of Kubernetes watch events (the bundled
//! `examples/sample-trace.jsonl`, or `--trace FILE`) is applied to the API server the way a
//! user's `kubectl` would ([`crate::apiserver::player`]), in real time compressed `--speed`
//! times. The objects of the trace's first instant are there before the controller starts, so
//! they reach it as its initial lists. A kubeconfig for the API server is written out and
//! printed, so `kubectl get svc -w` can follow the run; the observability endpoints of
//! [`difftracker_runtime::observe`] are printed too, and a progress line about every second.
//!
//! The run ends when the trace is exhausted and everything has settled (the player has nothing
//! pending, the engine is initialized and idle with no call in flight, nothing is stuck
//! deleting, and neither the API server nor the engine changed for [`QUIET`]), or at
//! `--timeout-secs`. A summary table follows: Services created and deleted, the emulator's
//! inventory, cloud calls by kind, Kubernetes writes and Events, wall time, and the verdict of
//! the replay oracle ([`crate::replay::oracle`]) on the API server's final state. The command
//! fails when the run did not converge or the oracle found differences.
//!
//! Unlike `replay` this runs in wall-clock time over real sockets: it shows the system working
//! on the production path, it is not deterministic.

use crate::apiserver::{self, ApiServerHandle, ApiServerOptions, Kind, ListOptions, StoreView, TracePlayer};
use crate::emulator::{self, CloudState, EmulatorHandle, EmulatorOptions, LroMode, PollingOptions};
use crate::replay::oracle::{self, ClusterView};
use crate::replay::{parse_trace, Trace};
use crate::samples::{SAMPLE_TRACE, SAMPLE_TRACE_NAME};
use anyhow::{anyhow, bail, Context, Result};
use difftracker_engine::io::TenantConfig;
use difftracker_runtime::admin::ControllerAdmin;
use difftracker_runtime::controller::{self, ControllerHandle, ControllerOptions, ControllerState};
use difftracker_runtime::driver::EngineKind;
use difftracker_runtime::k8s::kube;
use difftracker_runtime::observe::{self, CallCounts, Observatory, ObserveHandle};
use difftracker_runtime::server::ServerHandle;
use difftracker_runtime::tenant::TenantStatus;
use difftracker_runtime::transport::TransportOptions;
use difftracker_runtime::wasm::{Runtime, SandboxLimits};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Where to write the API server's kubeconfig; a file in a fresh temporary directory when
    /// `None`.
    pub kubeconfig_out: Option<PathBuf>,
    /// Serve the admin API's swap and rollback beside `/metrics`, guarded by the token in this
    /// file (created when missing), as `serve` does (`--admin-token-file FILE`).
    pub admin_token_file: Option<PathBuf>,
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
            kubeconfig_out: None,
            admin_token_file: None,
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
    controller: ControllerHandle,
    _emulator: EmulatorHandle,
    _apiserver: ApiServerHandle,
    /// The temporary directory of the kubeconfig, removed at the end.
    scratch: Option<PathBuf>,
}

impl Parts {
    async fn shutdown(self) {
        if let Err(e) = self.controller.shutdown().await {
            tracing::warn!(error = %e, "stopping the controller");
        }
        if let Some(dir) = self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A running main job.
pub struct LiveRun {
    observatory: Observatory,
    observe: ObserveHandle,
    emulator_url: String,
    apiserver_url: String,
    kubeconfig: PathBuf,
    task: tokio::task::JoinHandle<Result<(LiveSummary, Parts)>>,
}

/// A finished main job; the endpoints, both servers and the (idle) controller stay up until it
/// is shut down.
pub struct Finished {
    pub summary: LiveSummary,
    observe: ObserveHandle,
    emulator_url: String,
    apiserver_url: String,
    kubeconfig: PathBuf,
    parts: Parts,
}

impl Finished {
    pub fn observe_url(&self) -> String {
        self.observe.url()
    }
    pub fn emulator_url(&self) -> String {
        self.emulator_url.clone()
    }
    pub fn apiserver_url(&self) -> String {
        self.apiserver_url.clone()
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone()
    }
    pub async fn shutdown(self) {
        self.parts.shutdown().await;
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

    /// The in-repo API server the controller watches.
    pub fn apiserver_url(&self) -> String {
        self.apiserver_url.clone()
    }

    /// A kubeconfig for the API server (`kubectl --kubeconfig FILE get svc -w`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone()
    }

    pub fn observatory(&self) -> &Observatory {
        &self.observatory
    }

    /// Waits for the run to end (settled, or timed out) and returns its summary.
    pub async fn finish(self) -> Result<Finished> {
        let (summary, parts) = self.task.await.map_err(|e| anyhow!("the main job's task failed: {e}"))??;
        Ok(Finished {
            summary,
            observe: self.observe,
            emulator_url: self.emulator_url,
            apiserver_url: self.apiserver_url,
            kubeconfig: self.kubeconfig,
            parts,
        })
    }
}

/// Starts the main job: the emulator, the API server, the endpoints, the controller, and the
/// task that plays the trace. Returns once everything listens.
pub async fn start(options: LiveOptions) -> Result<LiveRun> {
    if !(options.speed.is_finite() && options.speed > 0.0) {
        bail!("--speed must be a positive number, not {}", options.speed);
    }
    let begun = Instant::now();
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
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on loopback for the API server")?;
    let apiserver = apiserver::serve(listener, ApiServerOptions::default()).await.context("starting the API server")?;
    let apiserver_url = apiserver.url();
    let (kubeconfig, scratch) = match &options.kubeconfig_out {
        Some(path) => (path.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("difftracker-live-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.join("kubeconfig"), Some(dir))
        }
    };
    std::fs::write(&kubeconfig, apiserver.kubeconfig()).with_context(|| format!("writing the kubeconfig {}", kubeconfig.display()))?;
    let client = || -> Result<kube::Client> {
        let url = apiserver_url.parse().context("the API server's URL")?;
        kube::Client::try_from(kube::Config::new(url)).context("a client of the API server")
    };

    // The cluster at the trace's first instant, before the controller lists it.
    let mut player = TracePlayer::new(client()?);
    let first = options.trace.events.first().map_or(0, |e| e.at_ms);
    let mut next = 0usize;
    while next < options.trace.events.len() && options.trace.events[next].at_ms <= first {
        player.apply(&options.trace.events[next]).await;
        next += 1;
    }

    let observatory = Observatory::new();
    let tenant = TenantConfig {
        tenant: TENANT.into(),
        seed: options.seed,
        max_request_bytes: options.max_request_bytes,
        max_request_entries: options.max_request_entries,
        ..TenantConfig::default()
    };
    let controller_options = ControllerOptions {
        engine: options.engine,
        sandbox: options.sandbox.clone(),
        transport: transport_options(),
        ..ControllerOptions::new(tenant, emulator.tenant_config())
    };
    let controller = controller::start(client()?, controller_options, observatory.clone())?;
    let mut app = observe::router(observatory.clone());
    if let Some(token_file) = &options.admin_token_file {
        let running = match options.engine {
            EngineKind::Wasm => Some(Runtime::with_limits(&options.sandbox)?.load_builtin()?),
            EngineKind::Native => None,
        };
        let admin = ControllerAdmin::new(token_file, TENANT, controller.swapper(), options.sandbox.clone(), running)?;
        app = app.merge(admin.router());
    }
    let listener =
        tokio::net::TcpListener::bind(options.listen).await.with_context(|| format!("cannot listen on {} for /metrics", options.listen))?;
    let observe = ServerHandle::spawn(listener, app, "observability")?;
    let startup = begun.elapsed();

    if options.print_progress {
        println!(
            "difftracker: playing {} ({} events over {:.1} s of trace time) at {}x onto the API server, with the {} engine (started in {:.2} s)",
            options.trace_name,
            options.trace.events.len(),
            options.trace.end_ms() as f64 / 1000.0,
            options.speed,
            options.engine.as_str(),
            startup.as_secs_f64(),
        );
        println!("  ARM/NRP emulator  {emulator_url}  (inventory: {emulator_url}/_emulator/inventory)");
        println!("  API server        {apiserver_url}  (kubectl --kubeconfig {} get svc -w)", kubeconfig.display());
        let url = observe.url();
        println!("  metrics           {url}/metrics");
        println!("  health            {url}/healthz  {url}/readyz");
        println!("  status page       {url}/");
    }

    let clock = TraceClock { start: Instant::now(), speed: options.speed };
    let driver = Driver { options, player, next, clock, observatory: observatory.clone(), emulator, apiserver, baseline, startup };
    let task = tokio::spawn(driver.run(controller, scratch));
    Ok(LiveRun { observatory, observe, emulator_url, apiserver_url, kubeconfig, task })
}

/// Plays the trace and watches the controller until everything settles.
struct Driver {
    options: LiveOptions,
    player: TracePlayer,
    /// The next trace event to apply.
    next: usize,
    clock: TraceClock,
    observatory: Observatory,
    emulator: EmulatorHandle,
    apiserver: ApiServerHandle,
    baseline: Value,
    startup: Duration,
}

/// How often the driver looks at the controller when nothing else is due.
const POLL: Duration = Duration::from_millis(20);
/// Interval of the progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long the settled picture must stay unchanged: the watch's last events have reached the
/// engine, and nothing writes any more.
pub const QUIET: Duration = Duration::from_millis(400);

impl Driver {
    async fn run(mut self, controller: ControllerHandle, scratch: Option<PathBuf>) -> Result<(LiveSummary, Parts)> {
        let started = self.clock.start;
        // A timeout too large for the clock (`--timeout-secs 18446744073709551615`) is no timeout.
        let deadline = started.checked_add(self.options.timeout);
        let total = self.options.trace.events.len();
        let mut state_rx = controller.subscribe();
        let mut last_progress = Instant::now();
        // The picture (API server resourceVersion, engine ticks) and since when it holds still.
        let mut quiet: Option<((u64, u64), Instant)> = None;
        let converged = loop {
            let now_ms = self.clock.now_ms();
            while self.next < total && self.options.trace.events[self.next].at_ms <= now_ms {
                self.player.apply(&self.options.trace.events[self.next]).await;
                self.next += 1;
            }
            self.player.retry_pending().await;
            let state = state_rx.borrow_and_update().clone();
            if state.stopped {
                bail!("the controller stopped: {}", state.last_error.as_deref().unwrap_or("no reason given"));
            }
            let progress = self.progress_line(&state);
            self.observatory.set_note(format!("main job: {progress}"));
            if self.options.print_progress && last_progress.elapsed() >= PROGRESS_EVERY {
                println!("{progress}");
                last_progress = Instant::now();
            }
            let settled = self.next == total
                && self.player.is_quiet()
                && state.is_settled()
                && self.apiserver.api().read(|s| StoreView::of(s).stuck_deleting().is_empty());
            if settled {
                let picture = (self.apiserver.api().read(|s| s.resource_version()), state.tenant.as_ref().map_or(0, |t| t.ticks));
                match quiet {
                    Some((seen, since)) if seen == picture => {
                        if since.elapsed() >= QUIET {
                            break true;
                        }
                    }
                    _ => quiet = Some((picture, Instant::now())),
                }
            } else {
                quiet = None;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break false;
            }
            let mut wake = Instant::now() + POLL;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            if let Some(e) = self.options.trace.events.get(self.next) {
                wake = wake.min(self.clock.instant_of(e.at_ms));
            }
            tokio::select! {
                _ = state_rx.changed() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        };
        let wall = started.elapsed();
        let state = controller.state();
        if self.options.print_progress {
            println!("{}", self.progress_line(&state));
        }
        let summary = self.summary(converged, &state, wall);
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
        let parts = Parts { controller, _emulator: self.emulator, _apiserver: self.apiserver, scratch };
        Ok((summary, parts))
    }

    fn progress_line(&self, state: &ControllerState) -> String {
        let status = state.tenant.clone().unwrap_or_default();
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
            "[{:>5.1}s] trace {}/{} | operations: {done} done, {in_flight} in flight, {waiting} waiting, {} deletions pending | location syncs {} | cloud calls {}, kubernetes writes {}, {calls_in_flight} in flight",
            self.clock.start.elapsed().as_secs_f64(),
            self.next,
            self.options.trace.events.len(),
            status.engine.pending_deletions,
            syncs.started,
            started(&cloud),
            started(&kube),
        )
    }

    fn summary(&self, converged: bool, state: &ControllerState, wall: Duration) -> LiveSummary {
        let status = state.tenant.clone().unwrap_or_default();
        let inventory = self.emulator.inventory();
        let (oracle_differences, kube_events) =
            self.apiserver.api().read(|s| (oracle::check_view(&StoreView::of(s), &inventory, &self.baseline), event_reasons(s)));
        let ops = operations_succeeded(&status);
        let (mapped_addresses, locations) = mapped(&inventory);
        let calls = self.observatory.calls(TENANT);
        let cloud_calls = calls.iter().filter(|(label, _)| label.contains(' ')).map(|(l, c)| (l.clone(), *c)).collect::<BTreeMap<_, _>>();
        let mut kube_writes = BTreeMap::new();
        for (label, c) in calls.iter().filter(|(label, _)| !label.contains(' ')) {
            kube_writes.insert(format!("{label} ok"), c.ok);
            if c.failed > 0 {
                kube_writes.insert(format!("{label} failed"), c.failed);
            }
        }
        LiveSummary {
            converged,
            engine: self.options.engine,
            trace_name: self.options.trace_name.clone(),
            trace_events: self.options.trace.events.len(),
            trace_events_played: self.next,
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
            kube_writes,
            kube_events,
            engine_states: status.engine.states.clone(),
            oracle_differences,
        }
    }
}

/// The Events on the API server by reason, a series counted by its occurrences.
fn event_reasons(store: &apiserver::Store) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(page) = store.list(Kind::Event, None, &ListOptions::default()) {
        for e in &page.items {
            let reason = e["reason"].as_str().unwrap_or("").to_string();
            let n = e["series"]["count"].as_u64().unwrap_or(1).max(1);
            *out.entry(reason).or_insert(0) += n;
        }
    }
    out
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
        println!(
            "serving {}/metrics, the emulator at {} and the API server at {} (kubeconfig {}) until Ctrl-C",
            finished.observe_url(),
            finished.emulator_url(),
            finished.apiserver_url(),
            finished.kubeconfig().display()
        );
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
