//! An in-memory ARM/NRP emulator that behaves like Azure where the engine can tell.
//!
//! - [`state`]: the semantic core (resources, ServiceGateway services and address locations,
//!   Azure's referential rules and error codes), callable in-process without HTTP.
//! - [`faults`]: seeded fault injection from a JSON fault file.
//! - [`http`]: the axum server: all 14 calls of AZURE-WIRE.md section 0, the polling URLs it
//!   hands out, `GET /_emulator/inventory`; [`serve`] runs it on a listener.
//! - [`backend`]: [`EmulatorBackend`], a [`CloudBackend`](difftracker_runtime::backend::CloudBackend) that
//!   calls the core directly, with faults decided from a caller-supplied "now" (virtual time).
//!
//! [`run_emulator`] is the `difftracker emulator --listen ADDR [--faults FILE]` subcommand.

pub mod backend;
pub mod faults;
pub mod http;
pub mod state;

pub use backend::{Decided, EmulatorBackend};
pub use faults::{FaultDecision, FaultInjector, FaultPlan};
pub use http::{serve, serve_emulator, EmulatorHandle};
pub use state::{codes, ArmError, EmulatorState, Method, Reply, Target, DEFAULT_NATGW, DEFAULT_NATGW_PIP};

use anyhow::Context;
use difftracker_runtime::transport::TenantAzureConfig;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Which headers a polling answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollHeaders {
    AsyncOperation,
    Location,
    Both,
}

/// How long-running operations are answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LroMode {
    /// The final answer at once: PUT 200/201 with `provisioningState: Succeeded`, DELETE 200, the
    /// ServiceGateway POSTs a bare 200 (production-like).
    Synchronous,
    /// PUT 201/200, DELETE and POST 202, with polling headers; the operation reports `InProgress`
    /// for `in_progress_polls` polls and at least `in_progress_for`, then `Succeeded` (or `Failed`
    /// when a fault says so).
    Polling(PollingOptions),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollingOptions {
    pub in_progress_polls: u32,
    pub in_progress_for: Duration,
    pub headers: PollHeaders,
    /// `Retry-After` (seconds) on the initial answer and on in-progress polls; none by default.
    pub retry_after_s: Option<u64>,
}

impl Default for PollingOptions {
    fn default() -> Self {
        PollingOptions { in_progress_polls: 1, in_progress_for: Duration::ZERO, headers: PollHeaders::Both, retry_after_s: None }
    }
}

/// The subscription, resource group and region the emulator presents (used to seed
/// `default-natgw` and to hand out polling URLs; requests under any subscription and resource
/// group are served from the one state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatorScope {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub vnet_name: String,
}

impl Default for EmulatorScope {
    fn default() -> Self {
        EmulatorScope {
            subscription: "00000000-0000-0000-0000-000000000000".into(),
            resource_group: "difftracker-emulated".into(),
            location: "eastus2".into(),
            vnet_name: "emulated-vnet".into(),
        }
    }
}

impl EmulatorScope {
    pub fn provider_path(&self) -> String {
        format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network", self.subscription, self.resource_group)
    }

    /// A tenant configuration addressing this scope at `arm_endpoint`.
    pub fn tenant_config(&self, arm_endpoint: &str) -> TenantAzureConfig {
        TenantAzureConfig::new(arm_endpoint, &self.subscription, &self.resource_group, &self.location, &self.vnet_name)
    }
}

#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    pub lro: LroMode,
    /// Split list answers into pages of this size (with `nextLink`); one page when `None`.
    pub page_size: Option<usize>,
    /// Upper-case IPv6 addresses in GET answers, as NRP has been seen doing.
    pub uppercase_ipv6: bool,
    /// Seed the AKS-owned `default-natgw` (NAT gateway, its public IP, its default service).
    pub seed_default_natgw: bool,
    pub scope: EmulatorScope,
    pub faults: Option<FaultPlan>,
    /// Unregistrations still rejected with `ServiceWithOverlayMappingsCannotBeDeleted` after a
    /// service's last address was removed (NRP's asynchronous mapping removal); 0 by default.
    pub overlay_lag: u32,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            lro: LroMode::Synchronous,
            page_size: None,
            uppercase_ipv6: false,
            seed_default_natgw: true,
            scope: EmulatorScope::default(),
            faults: None,
            overlay_lag: 0,
        }
    }
}

/// The emulator: state, faults and options, shared by the HTTP server and the in-process backend.
#[derive(Debug)]
pub struct Emulator {
    state: Mutex<EmulatorState>,
    faults: Mutex<Option<Arc<FaultInjector>>>,
    options: EmulatorOptions,
}

impl Emulator {
    pub fn new(options: EmulatorOptions) -> Arc<Emulator> {
        let mut state = EmulatorState::new();
        state.uppercase_ipv6 = options.uppercase_ipv6;
        state.overlay_lag = options.overlay_lag;
        if options.seed_default_natgw {
            state.seed_default_natgw(&options.scope.provider_path(), &options.scope.location);
        }
        let faults = options.faults.clone().map(|p| Arc::new(FaultInjector::new(p)));
        Arc::new(Emulator { state: Mutex::new(state), faults: Mutex::new(faults), options })
    }

    pub fn options(&self) -> &EmulatorOptions {
        &self.options
    }

    /// The state, locked (never poisoned: a panic elsewhere does not stop the emulator).
    pub fn state(&self) -> MutexGuard<'_, EmulatorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `GET /_emulator/inventory`.
    pub fn inventory(&self) -> Value {
        self.state().inventory()
    }

    /// The faults of the next call of `label` at `now_ms` (none without a fault plan).
    pub fn decide_faults(&self, label: &str, now_ms: u64) -> FaultDecision {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match faults {
            Some(f) => f.decide(label, now_ms),
            None => FaultDecision::default(),
        }
    }

    /// Replaces the fault plan (counters start afresh); `None` stops injecting.
    pub fn set_faults(&self, plan: Option<FaultPlan>) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = plan.map(|p| Arc::new(FaultInjector::new(p)));
    }

    /// Performs a request on the state.
    pub fn apply(&self, method: Method, target: &Target, provider_path: &str, body: Option<&Value>) -> Result<Reply, ArmError> {
        self.state().apply(method, target, provider_path, body)
    }
}

/// The `difftracker emulator --listen ADDR [--faults FILE]` subcommand: serves until Ctrl-C.
pub async fn run_emulator(listen: SocketAddr, faults: Option<PathBuf>, mut options: EmulatorOptions) -> anyhow::Result<()> {
    if let Some(path) = faults {
        options.faults = Some(FaultPlan::load(&path).map_err(anyhow::Error::msg)?);
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let handle = serve(listener, options).await?;
    tracing::info!(url = %handle.base_url(), "ARM/NRP emulator listening");
    println!("ARM/NRP emulator listening on {}", handle.base_url());
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}
