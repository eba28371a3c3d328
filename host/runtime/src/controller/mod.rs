//! The controller: one tenant's engine against a real cluster and a real ARM endpoint, what
//! `difftracker run` runs and what the main job runs against its in-process API server and
//! emulator.
//!
//! The pieces it wires, each owned elsewhere: the cluster is read by [`crate::k8s::ClusterWatch`]
//! and written by [`crate::k8s::KubeClientBackend`]; ARM is called through
//! [`crate::transport::ArmTransport`]; the engine runs in a [`crate::tenant`] loop with trap
//! recovery, observed by an [`Observatory`] (`/metrics`, `/readyz`, the status page).
//!
//! A **session** is one engine's life: a fresh engine (which runs the start-up pass of ENGINE.md
//! 9 on the initial lists the watch delivers, then the watch stream), its tenant loop and its
//! watch. The controller runs one session at a time:
//! - with leader election ([`lease`]), a session starts only once this replica holds the Lease
//!   and ends when it loses it; every call the engine starts passes a [`Fence`] first, so a
//!   replica whose renew deadline passed starts nothing more, even mid-tick. The next leader
//!   starts from the cluster and the cloud, as after any restart.
//! - a session whose tenant stops on an error or whose watch gives up is replaced by a new one
//!   after a backoff (1 s, doubling to 30 s); the engine never runs half-initialized.
//! - the watch is read only as fast as the tenant consumes it: a batch is handed over once the
//!   tenant has ticked since the previous one, so at most two batches wait in the tenant.
//!
//! [`ControllerHandle::shutdown`] stops the tenant after its tick (calls in flight finish into
//! nothing, as after a crash, and the next leader's start-up pass adopts what they did), then
//! releases the Lease so a standby takes over at once.

pub mod cloud_config;
pub mod lease;

pub use cloud_config::{arm_endpoint_of_cloud, resolve as resolve_azure, AzureJson, AzureOverrides, AzureSide, CredentialKind};
pub use lease::{Fence, LeaderElector, LeaseOptions, LeaseStats};

use crate::backend::{CallFuture, CloudBackend, KubeBackend};
use crate::driver::{CallIds, EngineKind};
use crate::executor::{Backends, Executor, SystemClock, DEFAULT_GLOBAL_CAP};
use crate::k8s::{kube, ClusterWatch, KubeClientBackend, KubeClientOptions, WatchOptions, WatchStats};
use crate::observe::Observatory;
use crate::tenant::{EngineFactory, Recovery, SwapError, SwapOptions, SwapReport, TenantHandle, TenantOptions, TenantStatus};
use crate::transport::{ArmTransport, AzureIdentityTokens, NoAuth, TenantAzureConfig, TokenSource, TransportOptions};
use crate::wasm::SandboxLimits;
use anyhow::{anyhow, Context, Result};
use difftracker_engine::io::{CallError, CallOutput, CloudCall, ErrorKind, KubeCall, KubeEventRecord, TenantConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How a controller runs.
#[derive(Clone)]
pub struct ControllerOptions {
    /// The engine's configuration (its `tenant` names the tenant in logs and metrics).
    pub tenant: TenantConfig,
    pub engine: EngineKind,
    pub sandbox: SandboxLimits,
    pub azure: TenantAzureConfig,
    /// The ARM bearer tokens; `None` sends none (the emulator).
    pub tokens: Option<Arc<dyn TokenSource>>,
    pub transport: TransportOptions,
    pub watch: WatchOptions,
    pub kube_writes: KubeClientOptions,
    /// Leader election; `None` leads from the start.
    pub leader_election: Option<LeaseOptions>,
    /// Fencing by an owner outside the controller (a shard's tenant Lease, [`crate::serve::shard`]):
    /// calls start only while it is up. Used when `leader_election` is `None`.
    pub fence: Option<Fence>,
    /// Calls of the tenant in flight at once.
    pub max_calls_in_flight: usize,
    /// Builds the engine instances instead of `engine` and `sandbox` (a tenant of a
    /// multi-tenant host: its own component, in the host's shared runtime, with its own limits).
    pub factory: Option<EngineFactory>,
    /// The executor whose global cap the tenant shares with others; `None`: one of its own.
    pub executor: Option<Executor>,
    /// Sessions that may fail in a row before the controller gives up and stops with the last
    /// error (a tenant whose engine keeps trapping); `None`: it never gives up.
    pub max_failed_sessions: Option<u32>,
}

impl ControllerOptions {
    pub fn new(tenant: TenantConfig, azure: TenantAzureConfig) -> ControllerOptions {
        ControllerOptions {
            tenant,
            engine: EngineKind::Wasm,
            sandbox: SandboxLimits::default(),
            azure,
            tokens: None,
            transport: TransportOptions::default(),
            watch: WatchOptions::default(),
            kube_writes: KubeClientOptions::default(),
            leader_election: None,
            fence: None,
            max_calls_in_flight: crate::executor::DEFAULT_TENANT_CAP,
            factory: None,
            executor: None,
            max_failed_sessions: None,
        }
    }

    /// The token source of a credential (`None`: no token).
    pub fn with_credential(mut self, credential: Option<&crate::transport::AzureCredentialConfig>) -> Result<ControllerOptions> {
        self.tokens = match credential {
            None => None,
            Some(c) => Some(Arc::new(AzureIdentityTokens::new(c).map_err(|e| anyhow!("Azure credential: {e}"))?)),
        };
        Ok(self)
    }
}

/// What the controller is doing, published on a watch channel.
#[derive(Clone, Debug, Default)]
pub struct ControllerState {
    /// This replica holds the Lease (always true without leader election once started).
    pub leading: bool,
    /// Sessions started so far (1 after the first start-up).
    pub sessions: u64,
    /// The current session's tenant, when one runs.
    pub tenant: Option<TenantStatus>,
    pub watch: WatchStats,
    pub lease: LeaseStats,
    /// Why the last session ended early, if it did.
    pub last_error: Option<String>,
    /// Set once the controller has stopped.
    pub stopped: bool,
    /// Sessions that failed in a row, each within a minute of its start.
    pub failed_sessions: u32,
    /// Set when the controller stopped because `max_failed_sessions` sessions failed in a row.
    pub gave_up: bool,
}

impl ControllerState {
    /// Leading, and its engine is initialized and has nothing left to do.
    pub fn is_settled(&self) -> bool {
        self.leading && self.tenant.as_ref().is_some_and(|t| t.is_idle() && t.ticks > 0)
    }
}

/// A running controller.
pub struct ControllerHandle {
    shutdown: watch::Sender<bool>,
    swaps: mpsc::UnboundedSender<SwapRequest>,
    state: watch::Receiver<ControllerState>,
    task: JoinHandle<Result<()>>,
}

/// Asks a running controller for hot swaps ([`ControllerHandle::swapper`]); cheap to clone.
#[derive(Clone)]
pub struct Swapper {
    swaps: mpsc::UnboundedSender<SwapRequest>,
    state: watch::Receiver<ControllerState>,
}

impl Swapper {
    /// [`ControllerHandle::hot_swap`].
    pub async fn hot_swap(&self, factory: EngineFactory, options: SwapOptions) -> std::result::Result<SwapReport, SwapError> {
        if self.state.borrow().tenant.is_none() {
            return Err(SwapError::NotRunning);
        }
        let (tx, rx) = oneshot::channel();
        self.swaps.send((factory, options, tx)).map_err(|_| SwapError::NotRunning)?;
        rx.await.map_err(|_| SwapError::NotRunning)?
    }
}

impl ControllerHandle {
    pub fn state(&self) -> ControllerState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<ControllerState> {
        self.state.clone()
    }

    /// Waits until `done` holds for the state; fails when the controller stops first.
    pub async fn wait_for(&self, mut done: impl FnMut(&ControllerState) -> bool) -> Result<ControllerState> {
        let mut rx = self.state.clone();
        let state = rx.wait_for(|s| done(s) || s.stopped).await.map_err(|_| anyhow!("the controller stopped"))?.clone();
        if !done(&state) {
            return Err(anyhow!("the controller stopped: {}", state.last_error.as_deref().unwrap_or("shut down")));
        }
        Ok(state)
    }

    /// Hot-swaps the running session's engine to instances `factory` builds
    /// ([`TenantHandle::hot_swap`]); on success later sessions use `factory` too. Refused with
    /// [`SwapError::NotRunning`] while no session runs (a standby, a backoff).
    pub async fn hot_swap(&self, factory: EngineFactory, options: SwapOptions) -> std::result::Result<SwapReport, SwapError> {
        self.swapper().hot_swap(factory, options).await
    }

    /// A handle that asks this controller for hot swaps, for an admin API.
    pub fn swapper(&self) -> Swapper {
        Swapper { swaps: self.swaps.clone(), state: self.state.clone() }
    }

    /// Stops the engine after its current tick, then releases the Lease.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.map_err(|e| anyhow!("the controller's task failed: {e}"))?
    }

    /// Stops everything at once without releasing the Lease, as a crash would (the calls in
    /// flight still finish on the wire; their completions are lost).
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits for the controller to stop on its own (it only does on a fatal error).
    pub async fn join(self) -> Result<()> {
        self.task.await.map_err(|e| anyhow!("the controller's task failed: {e}"))?
    }
}

/// Starts a controller on `client`'s cluster; its tenant is followed by `observatory`.
pub fn start(client: kube::Client, options: ControllerOptions, observatory: Observatory) -> Result<ControllerHandle> {
    options.azure.validate().map_err(|e| anyhow!("Azure configuration: {e}"))?;
    let elector = match &options.leader_election {
        Some(lease) => Some(LeaderElector::new(client.clone(), lease.clone()).map_err(|e| anyhow!("leader election: {e}"))?),
        None => None,
    };
    let tokens: Arc<dyn TokenSource> = options.tokens.clone().unwrap_or_else(|| Arc::new(NoAuth));
    let cloud: Arc<dyn CloudBackend> = Arc::new(
        ArmTransport::new(options.azure.clone(), tokens, options.transport.clone()).map_err(|e| anyhow!("Azure configuration: {e}"))?,
    );
    if options.factory.is_none() && options.engine == EngineKind::Wasm {
        observatory.set_component(&options.tenant.tenant, &crate::wasm::cache::content_hash(crate::ENGINE_WASM));
    }
    if elector.is_some() {
        // Not ready until the Lease is ours, from the first request on.
        observatory.set_standby(Some(STANDBY.into()));
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(ControllerState::default());
    let (swaps_tx, swaps_rx) = mpsc::unbounded_channel();
    let factory = Arc::new(Mutex::new(factory_of(&options)));
    let executor = options.executor.clone().unwrap_or_else(|| Executor::new(Arc::new(SystemClock), DEFAULT_GLOBAL_CAP));
    let controller =
        Controller { factory, swaps: swaps_rx, client, options, observatory, cloud, executor, state: state_tx, shutdown: shutdown_rx };
    let task = tokio::spawn(controller.run(elector));
    Ok(ControllerHandle { shutdown: shutdown_tx, swaps: swaps_tx, state: state_rx, task })
}

/// A hot swap asked of the controller, and where its answer goes.
type SwapRequest = (EngineFactory, SwapOptions, oneshot::Sender<std::result::Result<SwapReport, SwapError>>);

struct Controller {
    /// What builds the engine's instances; a successful hot swap replaces it.
    factory: Arc<Mutex<EngineFactory>>,
    swaps: mpsc::UnboundedReceiver<SwapRequest>,
    client: kube::Client,
    options: ControllerOptions,
    observatory: Observatory,
    cloud: Arc<dyn CloudBackend>,
    executor: Executor,
    state: watch::Sender<ControllerState>,
    shutdown: watch::Receiver<bool>,
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    LostLease,
    Failed(String),
}

/// What `/readyz` says on a standby.
const STANDBY: &str = "standby: waiting for the leader lease (another replica holds it)";

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A session that fails after running this long does not count towards `max_failed_sessions`
/// as part of the run before it.
const STABLE_SESSION: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Controller {
    async fn run(mut self, elector: Option<LeaderElector>) -> Result<()> {
        let (leading_tx, mut leading) = watch::channel(elector.is_none());
        let (release_tx, release_rx) = watch::channel(false);
        let fence = elector.as_ref().map(LeaderElector::fence).or_else(|| self.options.fence.clone()).unwrap_or_else(Fence::always);
        // `leading_tx` lives as long as this loop: a closed channel would read as a lost lease.
        let elector_task = elector.map(|e| {
            let stats = e.stats();
            tokio::spawn(elect(e, leading_tx.clone(), release_rx, stats, self.state.clone()))
        });
        let mut backoff = FIRST_BACKOFF;
        let result = loop {
            self.refuse_swaps();
            // Standby until the Lease is ours.
            if !*leading.borrow() {
                self.state.send_modify(|s| s.leading = false);
                self.observatory.set_standby(Some(STANDBY.into()));
                tokio::select! {
                    r = leading.wait_for(|l| *l) => if r.is_err() { break Err(anyhow!("leader election stopped")) },
                    _ = self.shutdown.wait_for(|s| *s) => break Ok(()),
                }
            }
            if *self.shutdown.borrow() {
                break Ok(());
            }
            self.observatory.set_standby(None);
            self.state.send_modify(|s| {
                s.leading = true;
                s.sessions += 1;
            });
            let started = std::time::Instant::now();
            let end = match self.session(fence.clone(), &mut leading).await {
                Ok(end) => end,
                Err(e) => SessionEnd::Failed(format!("{e:#}")),
            };
            match end {
                SessionEnd::Shutdown => break Ok(()),
                SessionEnd::LostLease => {
                    backoff = FIRST_BACKOFF;
                    self.state.send_modify(|s| s.last_error = Some("lost the leader lease".into()));
                }
                SessionEnd::Failed(e) => {
                    // A session that ran for a while before failing starts a new run of failures.
                    let failed = if started.elapsed() >= STABLE_SESSION { 1 } else { self.state.borrow().failed_sessions + 1 };
                    if failed == 1 {
                        backoff = FIRST_BACKOFF;
                    }
                    self.state.send_modify(|s| {
                        s.last_error = Some(e.clone());
                        s.failed_sessions = failed;
                    });
                    if self.options.max_failed_sessions.is_some_and(|max| failed >= max) {
                        tracing::error!(tenant = %self.options.tenant.tenant, error = %e, "{failed} sessions failed in a row; the controller gives up");
                        self.state.send_modify(|s| s.gave_up = true);
                        break Ok(());
                    }
                    tracing::error!(tenant = %self.options.tenant.tenant, error = %e, "the controller's session ended; starting a new one after {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.wait_for(|s| *s) => break Ok(()),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        // The engine is stopped; its calls in flight finish (or are cut at the fence's cutoff)
        // before the Lease goes, so the next leader's calls never overlap them.
        let grace = fence.cutoff().map_or(Duration::ZERO, |c| c.saturating_duration_since(std::time::Instant::now()));
        if !fence.drained(grace.max(Duration::from_millis(1))).await {
            tracing::warn!(tenant = %self.options.tenant.tenant, calls = fence.in_flight(), "calls still in flight when the Lease goes");
        }
        let _ = release_tx.send(true);
        if let Some(task) = elector_task {
            let _ = task.await;
        }
        drop(leading_tx);
        self.state.send_modify(|s| {
            s.stopped = true;
            s.leading = false;
        });
        result
    }

    /// One engine's life: until shutdown, the Lease is lost, or something fails.
    async fn session(&mut self, fence: Fence, leading: &mut watch::Receiver<bool>) -> Result<SessionEnd> {
        let name = self.options.tenant.tenant.clone();
        let factory = self.factory();
        let (fresh, config) = (factory.clone(), self.options.tenant.clone());
        let driver = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut driver = fresh(CallIds::default())?;
            driver.create(&config).context("creating the engine")?;
            Ok(driver)
        })
        .await
        .map_err(|e| anyhow!("loading the engine failed: {e}"))??;
        let kube: Arc<dyn KubeBackend> = Arc::new(FencedKube {
            inner: KubeClientBackend::new(self.client.clone(), self.options.kube_writes.clone()),
            fence: fence.clone(),
        });
        let cloud: Arc<dyn CloudBackend> = Arc::new(FencedCloud { inner: self.cloud.clone(), fence });
        let options = TenantOptions { max_calls_in_flight: self.options.max_calls_in_flight.max(1), ..TenantOptions::new(&name) }
            .with_recovery(Recovery::of_factory(factory));
        let tenant = self.observatory.spawn_tenant(&self.executor, options, driver, Backends { cloud, kube }, None);
        let watch = ClusterWatch::start(self.client.clone(), self.options.watch.clone());
        let end = self.drive(&tenant, watch, leading).await;
        // Stop after the current tick; whatever is in flight completes into nothing.
        if let Err(e) = tenant.stop().await {
            tracing::warn!(tenant = %name, error = %e, "stopping the tenant");
        }
        self.state.send_modify(|s| s.tenant = None);
        Ok(end)
    }

    fn factory(&self) -> EngineFactory {
        self.factory.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refuses swaps asked while no session runs.
    fn refuse_swaps(&mut self) {
        while let Ok((_, _, reply)) = self.swaps.try_recv() {
            let _ = reply.send(Err(SwapError::NotRunning));
        }
    }

    /// Feeds the watch into the tenant as it keeps up, and publishes the state.
    async fn drive(&mut self, tenant: &TenantHandle, mut watch: ClusterWatch, leading: &mut watch::Receiver<bool>) -> SessionEnd {
        let mut status = tenant.subscribe();
        // The tick count at the last delivery: the next batch waits for a later tick.
        let mut delivered_at: Option<u64> = None;
        loop {
            let current = status.borrow_and_update().clone();
            if let Some(e) = &current.error {
                return SessionEnd::Failed(format!("the engine stopped: {e}"));
            }
            if current.stopped {
                return SessionEnd::Failed("the tenant stopped".into());
            }
            let stats = watch.stats();
            self.observatory.record_watch(&self.options.tenant.tenant, &stats);
            self.state.send_modify(|s| {
                s.tenant = Some(current.clone());
                s.watch = stats;
            });
            let can_deliver = delivered_at.is_none_or(|t| current.ticks > t);
            tokio::select! {
                batch = watch.next_batch(), if can_deliver => match batch {
                    Some(batch) => {
                        delivered_at = Some(tenant.status().ticks);
                        if tenant.deliver(batch).is_err() {
                            return SessionEnd::Failed("the tenant stopped".into());
                        }
                    }
                    None => {
                        let why = watch.failure().unwrap_or_else(|| "the watch ended".into());
                        return SessionEnd::Failed(format!("watching the cluster failed: {why}"));
                    }
                },
                r = status.changed() => if r.is_err() { return SessionEnd::Failed("the tenant stopped".into()) },
                r = leading.wait_for(|l| !*l) => {
                    let _ = r;
                    return SessionEnd::LostLease;
                }
                Some((factory, options, reply)) = self.swaps.recv() => {
                    // The swap runs in the tenant's loop; the watch keeps being fed meanwhile.
                    // Its instances are timed like the session's first one.
                    let (observatory, name, inner) = (self.observatory.clone(), self.options.tenant.tenant.clone(), factory.clone());
                    let timed: EngineFactory = Arc::new(move |ids| inner(ids).map(|d| observatory.instrument(&name, d)));
                    let swap = tenant.hot_swap_with(timed, options);
                    let current = self.factory.clone();
                    tokio::spawn(async move {
                        let result = swap.await;
                        if result.is_ok() {
                            *current.lock().unwrap_or_else(|e| e.into_inner()) = factory;
                        }
                        let _ = reply.send(result);
                    });
                }
                _ = self.shutdown.wait_for(|s| *s) => return SessionEnd::Shutdown,
            }
        }
    }
}

/// What builds the engine's instances: the configured factory, else `engine` in `sandbox`.
fn factory_of(options: &ControllerOptions) -> EngineFactory {
    if let Some(factory) = &options.factory {
        return factory.clone();
    }
    let (engine, sandbox) = (options.engine, options.sandbox.clone());
    Arc::new(move |ids| engine.new_driver_in(ids, &sandbox))
}

/// The elector's side: acquire, publish, renew until lost, again; release once told to. When
/// the controller is gone without saying so (its task aborted, as in a crash), it stops
/// renewing and releases nothing, so the Lease expires as a dead leader's would.
async fn elect(
    mut elector: LeaderElector,
    leading: watch::Sender<bool>,
    mut release: watch::Receiver<bool>,
    mut stats: watch::Receiver<LeaseStats>,
    state: watch::Sender<ControllerState>,
) {
    let publish = |stats: &watch::Receiver<LeaseStats>| {
        let s = stats.borrow().clone();
        state.send_modify(|st| st.lease = s);
    };
    loop {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = release.wait_for(|r| *r) => return,
        }
        publish(&stats);
        let _ = leading.send(true);
        let told = tokio::select! {
            _ = elector.keep_leading() => None,
            told = release.wait_for(|r| *r) => Some(told.is_ok()),
            _ = async { loop { if stats.changed().await.is_err() { std::future::pending::<()>().await } publish(&stats) } } => None,
        };
        match told {
            None => {
                let _ = leading.send(false);
                publish(&stats);
            }
            // The controller has stopped its engine: hand the Lease over.
            Some(true) => {
                elector.release().await;
                let _ = leading.send(false);
                publish(&stats);
                return;
            }
            Some(false) => return,
        }
    }
}

/// The completion of a call refused because this replica no longer leads.
fn not_leading() -> CallError {
    CallError::of_kind(ErrorKind::Transport, "not started: this replica no longer holds the leader lease")
}

/// A call admitted by `fence`: it counts as in flight until it ends, and is abandoned (its
/// future dropped) once the fence's cutoff passes without a renewal moving it.
fn fenced(fence: &Fence, start: impl FnOnce() -> CallFuture) -> CallFuture {
    let Some(admitted) = fence.admit() else {
        return Box::pin(async { Err::<CallOutput, _>(not_leading()) });
    };
    // Built only once admitted: a refused call never exists.
    let mut call = start();
    let fence = fence.clone();
    Box::pin(async move {
        let _admitted = admitted;
        loop {
            let Some(cutoff) = fence.cutoff() else { return call.await };
            tokio::select! {
                done = &mut call => return done,
                _ = tokio::time::sleep_until(cutoff.into()) => {
                    if fence.cutoff().is_some_and(|c| c <= std::time::Instant::now()) {
                        return Err(CallError::of_kind(ErrorKind::Transport, "abandoned: this replica's lease ran out while the call was in flight"));
                    }
                }
            }
        }
    })
}

/// ARM calls, started only while the fence is up.
struct FencedCloud {
    inner: Arc<dyn CloudBackend>,
    fence: Fence,
}

impl CloudBackend for FencedCloud {
    fn call(&self, call: CloudCall) -> CallFuture {
        fenced(&self.fence, || self.inner.call(call))
    }
}

/// Kubernetes writes and Events, started only while the fence is up.
struct FencedKube {
    inner: KubeClientBackend,
    fence: Fence,
}

impl KubeBackend for FencedKube {
    fn call(&self, call: KubeCall) -> CallFuture {
        fenced(&self.fence, || KubeBackend::call(&self.inner, call))
    }

    fn record_event(&self, event: KubeEventRecord) {
        if self.fence.is_leading() {
            self.inner.record_event(event);
        }
    }
}
