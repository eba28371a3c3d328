//! The multi-tenant host: what `difftracker serve --config FILE` runs.
//!
//! A [`TenantHost`] runs one [`crate::controller`] per `[[tenant]]` of a [`ServeConfig`], all in
//! one process and one wasmtime [`Runtime`], each in a sandbox of its own:
//!
//! - **Limits per tenant**: every engine instance gets the tenant's guest memory, CPU deadline
//!   and per-tick caps ([`WasmEngine::with_limits`]); the runtime's instance pool is sized from
//!   the configuration ([`config::HostSettings::instance_slots`]: a slot for each tenant's engine,
//!   swap and recovery, plus spares), and a tenant that cannot get a slot fails to start with an
//!   error that says so. `difftracker_host_instance_slots_free` shows the headroom.
//! - **Fair share**: the calls of all tenants share one [`Executor`] (the `[host]` cap), each
//!   tenant under its own cap too; a tenant whose sessions keep failing (an engine that traps
//!   again after its restarts) is retried with a growing backoff and, after
//!   [`MAX_FAILED_SESSIONS`] failures in a row, stopped with its reason until an admin restarts
//!   it. The other tenants never wait for it.
//! - **Credentials per tenant**: each tenant's ARM transport holds its own token source and
//!   builds URLs from its own scope only; nothing of one tenant's configuration reaches another.
//! - **Reload** ([`TenantHost::reload`], on SIGHUP and through the admin API): a new file is
//!   checked whole first (an invalid one changes nothing); then removed tenants stop (their calls
//!   in flight finish on the wire and are logged as abandoned), changed ones restart, added ones
//!   start, unchanged ones are not touched.
//!
//! - **Sharding** ([`shard`], `--shard-lease-namespace`): several replicas share the tenants
//!   through one Lease per tenant in a management cluster; a tenant this replica does not own
//!   waits as [`TenantPhase::Standby`], and one it owns runs fenced by its Lease.
//!
//! What the configuration cannot say by itself (a kube client for a tenant's cluster, its ARM
//! endpoint and tokens, a bundled component by name) comes from a [`Provisioner`]: the
//! [`KubeconfigProvisioner`] here serves kubeconfig clusters and real ARM endpoints; the
//! simulation kit's adds the embedded emulator and in-repo API servers.

pub mod config;
pub mod shard;

pub use config::{ClusterSource, ComponentSource, HostSettings, ServeConfig, TenantLimits, TenantSpec};

use crate::controller::{self, ControllerHandle, ControllerOptions, ControllerState, Fence};
use crate::driver::{EngineDriver, WasmEngine};
use crate::executor::{Executor, SystemClock};
use crate::k8s::kube;
use crate::observe::Observatory;
use crate::server::ServerHandle;
use crate::tenant::{EngineFactory, Quarantined, SwapError, SwapOptions, SwapReport, TenantStatus};
use crate::transport::{AzureIdentityTokens, BearerToken, StaticToken, TenantAzureConfig, TokenSource, TransportOptions};
use crate::wasm::{EngineComponent, Runtime, RuntimeOptions, SandboxLimits};
use anyhow::{anyhow, Context, Result};
use difftracker_engine::io::TenantConfig;
use futures_util::future::BoxFuture;
use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Sessions of a tenant that may fail in a row before it is stopped until an admin restarts it.
pub const MAX_FAILED_SESSIONS: u32 = 5;
/// Largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// What a tenant needs beyond its configuration, prepared by a [`Provisioner`].
pub struct Provisioned {
    /// A client of the tenant's cluster.
    pub client: kube::Client,
    /// Where its resources are, the endpoint filled in.
    pub azure: TenantAzureConfig,
    /// Its ARM tokens (`None`: none sent).
    pub tokens: Option<Arc<dyn TokenSource>>,
    pub transport: TransportOptions,
    /// Whatever was started for the tenant alone (an embedded API server, a trace player):
    /// kept while the tenant runs, dropped when it stops.
    pub guard: Box<dyn Any + Send + Sync>,
}

/// Turns a tenant's configuration into the things it runs against.
pub trait Provisioner: Send + Sync + 'static {
    fn provision<'a>(&'a self, spec: &'a TenantSpec) -> BoxFuture<'a, Result<Provisioned>>;

    /// The bytes of a component the binary carries under `name` (`component = "builtin:NAME"`).
    fn builtin_component(&self, name: &str) -> Option<&'static [u8]> {
        let _ = name;
        None
    }
}

/// Tenants on real clusters (a kubeconfig each) and real ARM endpoints.
pub struct KubeconfigProvisioner;

impl Provisioner for KubeconfigProvisioner {
    fn provision<'a>(&'a self, spec: &'a TenantSpec) -> BoxFuture<'a, Result<Provisioned>> {
        Box::pin(async move {
            let ClusterSource::Kubeconfig(path) = &spec.cluster else {
                return Err(anyhow!(
                    "an embedded or simulated cluster needs the simulation kit's provisioner (`difftracker serve` has it)"
                ));
            };
            if spec.embedded_arm {
                return Err(anyhow!("the embedded emulator needs the simulation kit's provisioner (`difftracker serve` has it)"));
            }
            Ok(Provisioned {
                client: crate::k8s::client_from_kubeconfig(Some(path)).await?,
                azure: spec.azure.config.clone(),
                tokens: tokens_of(spec)?,
                transport: TransportOptions::default(),
                guard: Box::new(()),
            })
        })
    }
}

/// The token source a tenant's configuration asks for: its token file, else its credential.
pub fn tokens_of(spec: &TenantSpec) -> Result<Option<Arc<dyn TokenSource>>> {
    if let Some(path) = &spec.token_file {
        return Ok(Some(Arc::new(StaticToken(read_token_file(path)?))));
    }
    match &spec.azure.credential {
        None => Ok(None),
        Some(c) => Ok(Some(Arc::new(AzureIdentityTokens::new(c).map_err(|e| anyhow!("Azure credential: {e}"))?))),
    }
}

/// The first line of a token file, trimmed; an empty or oversized file is refused.
pub fn read_token_file(path: &Path) -> Result<BearerToken> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("reading the token file {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut text).with_context(|| format!("reading the token file {}", path.display()))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        anyhow::bail!("the token file {} is larger than {MAX_TOKEN_FILE_BYTES} bytes", path.display());
    }
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(BearerToken::new(token))
}

/// Where a tenant stands, as the admin API and the logs report it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantPhase {
    Running,
    /// Paused by an admin: no engine runs; `resume` starts it again from the cluster and cloud.
    Paused,
    /// Its sessions failed [`MAX_FAILED_SESSIONS`] times in a row; `restart` starts it again.
    Stopped,
    /// It could not be started (component refused, cluster unreachable, no instance slot).
    Failed,
    /// Sharded, and this replica does not hold its Lease: another replica runs it, or will.
    Standby,
}

/// One tenant as the admin API lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TenantView {
    pub name: String,
    pub phase: TenantPhase,
    /// Why it is stopped or failed, or the last session's error.
    pub reason: Option<String>,
    pub component_sha256: Option<String>,
    /// The WIT package of the running instance (`clb:difftracker@0.3.0`), else of its component.
    pub wit: Option<String>,
    /// The component it ran before the last successful swap (what `rollback` returns to).
    pub rollback_to: Option<String>,
    pub sessions: u64,
    pub failed_sessions: u32,
    pub settled: bool,
    pub ticks: u64,
    pub restarts: u64,
    pub quarantined_total: u64,
    pub calls_outstanding: usize,
    pub swaps: u64,
    pub swaps_refused: u64,
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
    /// `[host]` settings that changed and take effect only when the process restarts.
    pub needs_process_restart: Vec<String>,
}

/// Why an admin action on a tenant was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("no tenant named {0:?}")]
    Unknown(String),
    #[error("tenant {name:?} is {phase:?}: {what}")]
    WrongPhase { name: String, phase: TenantPhase, what: &'static str },
    #[error("{0}")]
    Swap(#[from] SwapError),
}

struct Slot {
    spec: TenantSpec,
    run: Run,
    /// The tenant's shard Lease fence while this replica owns it (sharded hosts only).
    fence: Option<Fence>,
    component: Option<EngineComponent>,
    previous: Option<EngineComponent>,
}

enum Run {
    Running {
        controller: ControllerHandle,
        _guard: Box<dyn Any + Send + Sync>,
    },
    Paused,
    Failed(String),
    /// Not owned here (sharded): nothing runs.
    Standby,
}

/// The multi-tenant host. Cheap to clone.
#[derive(Clone)]
pub struct TenantHost {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    executor: Executor,
    observatory: Observatory,
    provisioner: Arc<dyn Provisioner>,
    /// The configuration running now.
    config: std::sync::Mutex<ServeConfig>,
    /// One admin action or reload at a time changes the tenants.
    tenants: Mutex<BTreeMap<String, Slot>>,
    /// This replica's identity when the tenants are sharded.
    replica: Option<String>,
    sharder: Mutex<Option<shard::Sharder>>,
}

impl TenantHost {
    /// Starts every tenant of `config` (one that cannot start is `Failed`, the others run).
    pub async fn start(config: ServeConfig, provisioner: Arc<dyn Provisioner>, observatory: Observatory) -> Result<TenantHost> {
        TenantHost::start_inner(config, provisioner, observatory, None).await
    }

    /// Starts as one replica of several: every tenant waits as [`TenantPhase::Standby`] until
    /// this replica holds its Lease in `options.namespace` of `management` ([`shard`]).
    pub async fn start_sharded(
        config: ServeConfig,
        provisioner: Arc<dyn Provisioner>,
        observatory: Observatory,
        management: kube::Client,
        options: shard::ShardOptions,
    ) -> Result<TenantHost> {
        options.validate().map_err(anyhow::Error::msg)?;
        let host = TenantHost::start_inner(config, provisioner, observatory, Some(options.identity.clone())).await?;
        let sharder = shard::Sharder::start(host.clone(), management, options);
        *host.inner.sharder.lock().await = Some(sharder);
        Ok(host)
    }

    async fn start_inner(
        config: ServeConfig,
        provisioner: Arc<dyn Provisioner>,
        observatory: Observatory,
        replica: Option<String>,
    ) -> Result<TenantHost> {
        // The pool's slots are as large as the largest guest memory configured (the default at least,
        // so that a reload can add a tenant with the default limits).
        let memory =
            config.tenants.iter().map(|t| t.limits.sandbox.memory_bytes).max().unwrap_or(0).max(SandboxLimits::default().memory_bytes);
        let runtime = Runtime::new(RuntimeOptions {
            limits: SandboxLimits { memory_bytes: memory, ..SandboxLimits::default() },
            max_instances: config.host.instance_slots,
            ..RuntimeOptions::default()
        })
        .context("starting the wasmtime runtime")?;
        let host = TenantHost {
            inner: Arc::new(Inner {
                runtime,
                executor: Executor::new(Arc::new(SystemClock), config.host.max_calls_in_flight),
                observatory,
                provisioner,
                config: std::sync::Mutex::new(config.clone()),
                tenants: Mutex::new(BTreeMap::new()),
                replica,
                sharder: Mutex::new(None),
            }),
        };
        {
            let mut tenants = host.inner.tenants.lock().await;
            for spec in config.tenants {
                let slot = host.start_slot(spec, None, None).await;
                tenants.insert(slot.spec.name.clone(), slot);
            }
        }
        host.publish_slots();
        let weak = Arc::downgrade(&host.inner);
        tokio::spawn(async move {
            // The free-slot gauge follows swaps and recoveries, which happen inside tenants.
            while let Some(inner) = weak.upgrade() {
                (TenantHost { inner }).publish_slots();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(host)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    pub fn observatory(&self) -> &Observatory {
        &self.inner.observatory
    }

    /// The configuration running now.
    pub fn config(&self) -> ServeConfig {
        self.inner.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish_slots(&self) {
        let runtime = &self.inner.runtime;
        self.inner.observatory.set_instance_slots(runtime.instance_slots(), runtime.free_slots());
        self.inner.observatory.set_guest_memory(runtime.guest_memory_bytes());
    }

    /// Loads a tenant's component.
    async fn load_component(&self, source: &ComponentSource) -> Result<EngineComponent> {
        let runtime = self.inner.runtime.clone();
        let bytes = match source {
            ComponentSource::Builtin(name) => Some(
                self.inner.provisioner.builtin_component(name).ok_or_else(|| anyhow!("component: no component is built in as {name:?}"))?,
            ),
            _ => None,
        };
        let source = source.clone();
        tokio::task::spawn_blocking(move || match (&source, bytes) {
            (ComponentSource::File(path), _) => runtime.load_file(path),
            (_, Some(bytes)) => runtime.load(bytes),
            _ => runtime.load_builtin(),
        })
        .await
        .map_err(|e| anyhow!("loading the component failed: {e}"))?
    }

    /// Starts one tenant; what fails is kept as the slot's reason. `component` overrides the
    /// configured one (a restart after a swap keeps the swapped-in component). On a sharded
    /// host a tenant starts only with its Lease's `fence`; without it, it stays a standby.
    async fn start_slot(&self, spec: TenantSpec, component: Option<EngineComponent>, fence: Option<Fence>) -> Slot {
        let name = spec.name.clone();
        if self.inner.replica.is_some() && !fence.as_ref().is_some_and(Fence::is_leading) {
            return Slot { spec, run: Run::Standby, fence: None, component, previous: None };
        }
        match self.start_controller(&spec, component, fence.clone()).await {
            Ok((controller, guard, component)) => {
                tracing::info!(tenant = %name, component = %component.sha256, "tenant started");
                self.inner.observatory.set_component(&name, &component.sha256);
                Slot { spec, run: Run::Running { controller, _guard: guard }, fence, component: Some(component), previous: None }
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(tenant = %name, error = %reason, "the tenant could not be started");
                // Loud on /readyz, the status page and `difftracker_host_tenant_up`, as a stopped tenant is.
                let failed = TenantStatus { error: Some(reason.clone()), stopped: true, ..TenantStatus::default() };
                self.inner.observatory.watch_tenant(&name, tokio::sync::watch::channel(failed).1);
                Slot { spec, run: Run::Failed(reason), fence, component: None, previous: None }
            }
        }
    }

    async fn start_controller(
        &self,
        spec: &TenantSpec,
        component: Option<EngineComponent>,
        fence: Option<Fence>,
    ) -> Result<(ControllerHandle, Box<dyn Any + Send + Sync>, EngineComponent)> {
        let component = match component {
            Some(c) => c,
            None => self.load_component(&spec.component).await?,
        };
        // Fail early and clearly when the pool has no slot (the session would only retry).
        if self.inner.runtime.free_slots() == 0 {
            return Err(crate::wasm::NoFreeSlot { max: self.inner.runtime.instance_slots() }.into());
        }
        let mut provisioned = self.inner.provisioner.provision(spec).await.context("preparing the tenant's cluster and cloud")?;
        if let Some(replica) = &self.inner.replica {
            // ARM (and the emulator's request log) can tell which replica called.
            provisioned.transport.user_agent = format!("{} replica/{replica}", provisioned.transport.user_agent);
        }
        let tenant = TenantConfig {
            tenant: spec.name.clone(),
            seed: spec.seed,
            max_operations_in_flight: Some(spec.limits.operations_in_flight),
            ..TenantConfig::default()
        };
        let options = ControllerOptions {
            tokens: provisioned.tokens,
            transport: provisioned.transport,
            max_calls_in_flight: spec.limits.calls_in_flight,
            factory: Some(factory_of(&component, &spec.limits.sandbox)),
            executor: Some(self.inner.executor.clone()),
            max_failed_sessions: Some(MAX_FAILED_SESSIONS),
            fence,
            ..ControllerOptions::new(tenant, provisioned.azure)
        };
        let controller = controller::start(provisioned.client, options, self.inner.observatory.clone())?;
        Ok((controller, provisioned.guard, component))
    }

    /// Stops a slot's controller (if it runs), logging what it abandons.
    async fn stop_slot(&self, slot: &mut Slot, why: &str) {
        if let Run::Running { controller, .. } = std::mem::replace(&mut slot.run, Run::Paused) {
            let state = controller.state();
            let in_flight = state.tenant.as_ref().map_or(0, |t| t.calls_outstanding);
            if in_flight > 0 {
                tracing::warn!(
                    tenant = %slot.spec.name,
                    calls_in_flight = in_flight,
                    "{why}: {in_flight} call(s) in flight are abandoned (they finish on the wire; the next start-up pass adopts what they did)"
                );
            } else {
                tracing::info!(tenant = %slot.spec.name, "{why}");
            }
            if let Err(e) = controller.shutdown().await {
                tracing::warn!(tenant = %slot.spec.name, error = %format!("{e:#}"), "stopping the tenant");
            }
        }
        self.inner.observatory.forget(&slot.spec.name);
        self.publish_slots();
    }

    /// Every tenant, by name.
    pub async fn tenants(&self) -> Vec<TenantView> {
        self.inner.tenants.lock().await.values().map(view_of).collect()
    }

    pub async fn tenant(&self, name: &str) -> Option<TenantView> {
        self.inner.tenants.lock().await.get(name).map(view_of)
    }

    /// The controller state of a running tenant.
    pub async fn state(&self, name: &str) -> Option<ControllerState> {
        match &self.inner.tenants.lock().await.get(name)?.run {
            Run::Running { controller, .. } => Some(controller.state()),
            _ => None,
        }
    }

    /// The inputs a tenant's engine trapped on and dropped, most recent last.
    pub async fn quarantined(&self, name: &str) -> Result<Vec<Quarantined>, TenantError> {
        let tenants = self.inner.tenants.lock().await;
        let slot = tenants.get(name).ok_or_else(|| TenantError::Unknown(name.into()))?;
        Ok(match &slot.run {
            Run::Running { controller, .. } => controller.state().tenant.map(|t| t.quarantined).unwrap_or_default(),
            _ => Vec::new(),
        })
    }

    /// Stops a running tenant's engine until [`TenantHost::resume`].
    pub async fn pause(&self, name: &str) -> Result<TenantView, TenantError> {
        let mut tenants = self.inner.tenants.lock().await;
        let slot = tenants.get_mut(name).ok_or_else(|| TenantError::Unknown(name.into()))?;
        if !matches!(slot.run, Run::Running { .. }) {
            return Err(TenantError::WrongPhase { name: name.into(), phase: phase_of(slot), what: "only a running tenant can be paused" });
        }
        self.stop_slot(slot, "tenant paused").await;
        Ok(view_of(slot))
    }

    /// Starts a paused tenant again (from the cluster and the cloud, as after any restart).
    pub async fn resume(&self, name: &str) -> Result<TenantView, TenantError> {
        let mut tenants = self.inner.tenants.lock().await;
        let slot = tenants.get_mut(name).ok_or_else(|| TenantError::Unknown(name.into()))?;
        if !matches!(slot.run, Run::Paused) {
            return Err(TenantError::WrongPhase { name: name.into(), phase: phase_of(slot), what: "only a paused tenant can be resumed" });
        }
        self.restart_slot(slot).await;
        Ok(view_of(slot))
    }

    /// Stops a tenant (whatever its phase) and starts it again with its current component.
    pub async fn restart(&self, name: &str) -> Result<TenantView, TenantError> {
        let mut tenants = self.inner.tenants.lock().await;
        let slot = tenants.get_mut(name).ok_or_else(|| TenantError::Unknown(name.into()))?;
        self.stop_slot(slot, "tenant restarting").await;
        self.restart_slot(slot).await;
        Ok(view_of(slot))
    }

    async fn restart_slot(&self, slot: &mut Slot) {
        let fresh = self.start_slot(slot.spec.clone(), slot.component.clone(), slot.fence.clone()).await;
        slot.run = fresh.run;
        slot.fence = fresh.fence;
        if fresh.component.is_some() {
            slot.component = fresh.component;
        }
        self.publish_slots();
    }

    /// Hot-swaps a running tenant to the component at `path`; on success the old one becomes
    /// the rollback target. A refusal changes nothing.
    pub async fn swap(&self, name: &str, path: &Path, options: SwapOptions) -> Result<(SwapReport, String), TenantError> {
        let component = match self.load_component(&ComponentSource::File(path.to_path_buf())).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(tenant = %name, error = %format!("{e:#}"), "swap refused: the component does not load; the tenant keeps its component");
                self.inner.observatory.record_swap_refused(name);
                return Err(SwapError::Build(format!("{e:#}")).into());
            }
        };
        self.swap_to(name, component, options, false).await
    }

    /// Swaps a tenant back to the component it ran before its last successful swap.
    pub async fn rollback(&self, name: &str) -> Result<(SwapReport, String), TenantError> {
        let previous = {
            let tenants = self.inner.tenants.lock().await;
            let slot = tenants.get(name).ok_or_else(|| TenantError::Unknown(name.into()))?;
            slot.previous.clone()
        };
        let previous = previous.ok_or_else(|| TenantError::WrongPhase {
            name: name.into(),
            phase: TenantPhase::Running,
            what: "it has no previous component to roll back to",
        })?;
        self.swap_to(name, previous, SwapOptions::default(), true).await
    }

    async fn swap_to(
        &self,
        name: &str,
        component: EngineComponent,
        options: SwapOptions,
        rollback: bool,
    ) -> Result<(SwapReport, String), TenantError> {
        let mut tenants = self.inner.tenants.lock().await;
        let slot = tenants.get_mut(name).ok_or_else(|| TenantError::Unknown(name.into()))?;
        let Run::Running { controller, .. } = &slot.run else {
            return Err(TenantError::WrongPhase { name: name.into(), phase: phase_of(slot), what: "only a running tenant can be swapped" });
        };
        let report = controller.hot_swap(factory_of(&component, &slot.spec.limits.sandbox), options).await;
        match report {
            Ok(report) => {
                let sha = component.sha256.clone();
                self.inner.observatory.set_component(name, &sha);
                let old = slot.component.replace(component);
                slot.previous = if rollback { None } else { old };
                tracing::info!(tenant = %name, component = %sha, rollback, diverged = report.divergence.is_some(), "swapped");
                if rollback {
                    self.inner.observatory.record_rollback(name);
                }
                Ok((report, sha))
            }
            Err(e) => {
                tracing::warn!(tenant = %name, reason = e.reason(), error = %e, "swap refused; the tenant keeps its component");
                Err(e.into())
            }
        }
    }

    /// Applies a new configuration: see the module docs. `Err` (nothing changed) when it cannot.
    pub async fn reload(&self, config: ServeConfig) -> Result<ReloadReport, String> {
        let mut tenants = self.inner.tenants.lock().await;
        let running = self.config();
        let mut report = ReloadReport::default();
        let old_host = &running.host;
        for (key, changed) in [
            ("listen", old_host.listen != config.host.listen),
            ("admin_token_file", old_host.admin_token_file != config.host.admin_token_file),
            ("max_calls_in_flight", old_host.max_calls_in_flight != config.host.max_calls_in_flight),
            ("instance_slots", old_host.instance_slots != config.host.instance_slots),
        ] {
            if changed {
                report.needs_process_restart.push(format!("[host] {key}"));
            }
        }
        let slots_needed = config.tenants.len() as u32 * config::SLOTS_PER_TENANT;
        if slots_needed > self.inner.runtime.instance_slots() {
            return Err(format!(
                "{}: {} tenants need {slots_needed} instance slots; this process has {} (restart it to grow the pool)",
                config.path.display(),
                config.tenants.len(),
                self.inner.runtime.instance_slots()
            ));
        }
        let max_memory = self.inner.runtime.limits().memory_bytes;
        if let Some(t) = config.tenants.iter().find(|t| t.limits.sandbox.memory_bytes > max_memory) {
            return Err(format!(
                "{}: tenant {:?}: memory_mib: {} is above the {} MiB this process's instance slots hold (restart it to grow them)",
                config.path.display(),
                t.name,
                t.limits.sandbox.memory_bytes >> 20,
                max_memory >> 20
            ));
        }
        let wanted: BTreeMap<&str, &TenantSpec> = config.tenants.iter().map(|t| (t.name.as_str(), t)).collect();
        let names: Vec<String> = tenants.keys().cloned().collect();
        for name in names {
            if wanted.contains_key(name.as_str()) {
                continue;
            }
            if let Some(mut slot) = tenants.remove(&name) {
                self.stop_slot(&mut slot, "tenant removed by a reload").await;
            }
            report.removed.push(name);
        }
        for spec in &config.tenants {
            match tenants.get_mut(&spec.name) {
                Some(slot) if slot.spec == *spec => report.unchanged.push(spec.name.clone()),
                Some(slot) => {
                    self.stop_slot(slot, "tenant changed by a reload; restarting").await;
                    *slot = self.start_slot(spec.clone(), None, slot.fence.clone()).await;
                    report.restarted.push(spec.name.clone());
                }
                None => {
                    let slot = self.start_slot(spec.clone(), None, None).await;
                    tenants.insert(spec.name.clone(), slot);
                    report.added.push(spec.name.clone());
                }
            }
        }
        *self.inner.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.publish_slots();
        tracing::info!(?report, "configuration reloaded");
        Ok(report)
    }

    /// Re-reads the running configuration's file and applies it.
    pub async fn reload_file(&self) -> Result<ReloadReport, String> {
        let path = self.config().path;
        let config = ServeConfig::load(&path)?;
        self.reload(config).await
    }

    /// Serves `/metrics`, `/healthz`, `/readyz`, the status page and, when the `[host]` table
    /// names an admin token file, the admin API ([`crate::admin`]) on the `[host]` listen address.
    pub async fn bind(&self) -> Result<ServerHandle> {
        let settings = self.config().host;
        let mut app = crate::observe::router(self.inner.observatory.clone());
        if let Some(path) = &settings.admin_token_file {
            app = app.merge(crate::admin::Admin::new(path, self.clone())?.router());
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} ([host] listen)", settings.listen))?;
        Ok(ServerHandle::spawn(listener, app, "serve")?)
    }

    /// Starts a tenant whose shard Lease this replica just acquired (a running one is restarted
    /// under the new fence). Nothing starts once the fence is down again.
    pub(crate) async fn claim(&self, name: &str, fence: Fence) {
        let mut tenants = self.inner.tenants.lock().await;
        let Some(slot) = tenants.get_mut(name) else { return };
        if !fence.is_leading() {
            return;
        }
        self.stop_slot(slot, "tenant restarting under a new shard lease").await;
        slot.fence = Some(fence);
        self.restart_slot(slot).await;
    }

    /// Stops a tenant whose shard Lease this replica gives up or lost; its controller lets the
    /// calls in flight finish (or cuts them at the fence's cutoff) before this returns.
    pub(crate) async fn disown(&self, name: &str) {
        let mut tenants = self.inner.tenants.lock().await;
        let Some(slot) = tenants.get_mut(name) else { return };
        // The fence stays up meanwhile (unless the Lease was lost): the engine starts nothing
        // more once stopped, and its calls in flight may finish.
        self.stop_slot(slot, "tenant handed to another replica").await;
        if let Some(fence) = slot.fence.take() {
            fence.set(None);
        }
        slot.run = Run::Standby;
    }

    /// What the sharder last saw of the shard (`None`: not sharded).
    pub async fn shard(&self) -> Option<shard::ShardView> {
        self.inner.sharder.lock().await.as_ref().map(shard::Sharder::view)
    }

    /// Stops the sharder without handing anything over, as a crash of this replica would (its
    /// Leases expire; what runs keeps running, its fences down once their deadline passes).
    pub async fn abandon_shard(&self) {
        if let Some(sharder) = self.inner.sharder.lock().await.take() {
            sharder.abandon();
        }
    }

    /// Stops every tenant (a sharded host hands its Leases over first).
    pub async fn shutdown(&self) {
        if let Some(sharder) = self.inner.sharder.lock().await.take() {
            sharder.stop().await;
        }
        let mut tenants = self.inner.tenants.lock().await;
        for slot in tenants.values_mut() {
            self.stop_slot(slot, "host shutting down").await;
        }
    }
}

/// Fresh instances of `component`, each in a sandbox of `limits`.
pub(crate) fn factory_of(component: &EngineComponent, limits: &SandboxLimits) -> EngineFactory {
    let (component, limits) = (component.clone(), limits.clone());
    Arc::new(move |ids| Ok(Box::new(WasmEngine::with_limits(&component, ids, &limits)?) as Box<dyn EngineDriver>))
}

fn phase_of(slot: &Slot) -> TenantPhase {
    match &slot.run {
        Run::Running { controller, .. } if controller.state().gave_up => TenantPhase::Stopped,
        Run::Running { .. } => TenantPhase::Running,
        Run::Paused => TenantPhase::Paused,
        Run::Failed(_) => TenantPhase::Failed,
        Run::Standby => TenantPhase::Standby,
    }
}

fn view_of(slot: &Slot) -> TenantView {
    let state = match &slot.run {
        Run::Running { controller, .. } => Some(controller.state()),
        _ => None,
    };
    let tenant = state.as_ref().and_then(|s| s.tenant.clone()).unwrap_or_default();
    let reason = match &slot.run {
        Run::Failed(reason) => Some(reason.clone()),
        _ => state.as_ref().and_then(|s| s.last_error.clone()),
    };
    TenantView {
        name: slot.spec.name.clone(),
        phase: phase_of(slot),
        reason,
        component_sha256: slot.component.as_ref().map(|c| c.sha256.clone()),
        wit: tenant.wit.or_else(|| slot.component.as_ref().map(|c| c.generation().package())).map(str::to_string),
        rollback_to: slot.previous.as_ref().map(|c| c.sha256.clone()),
        sessions: state.as_ref().map_or(0, |s| s.sessions),
        failed_sessions: state.as_ref().map_or(0, |s| s.failed_sessions),
        settled: state.as_ref().is_some_and(ControllerState::is_settled),
        ticks: tenant.ticks,
        restarts: tenant.restarts,
        quarantined_total: tenant.quarantined_total,
        calls_outstanding: tenant.calls_outstanding,
        swaps: tenant.swaps,
        swaps_refused: tenant.swaps_refused,
    }
}
