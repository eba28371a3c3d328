//! `difftracker run`: the controller against a cluster (kubeconfig or in-cluster) and an ARM
//! endpoint (real Azure, or the emulator with `--credential none`).

use super::{EngineArg, SandboxArgs};
use anyhow::{anyhow, bail, Context, Result};
use difftracker_engine::io::TenantConfig;
use difftracker_runtime::controller::{self, AzureJson, AzureOverrides, ControllerOptions, CredentialKind, LeaseOptions};
use difftracker_runtime::observe::{self, Observatory};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `--credential`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialArg {
    /// Send no token (the emulator).
    None,
    /// Choose from the environment: workload identity, a client secret, else managed identity.
    Env,
    WorkloadIdentity,
    ManagedIdentity,
}

impl From<CredentialArg> for CredentialKind {
    fn from(c: CredentialArg) -> CredentialKind {
        match c {
            CredentialArg::None => CredentialKind::None,
            CredentialArg::Env => CredentialKind::Env,
            CredentialArg::WorkloadIdentity => CredentialKind::WorkloadIdentity,
            CredentialArg::ManagedIdentity => CredentialKind::ManagedIdentity,
        }
    }
}

/// Run the controller against a Kubernetes cluster and Azure (or the emulator) until Ctrl-C.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The cluster's kubeconfig; without it, `$KUBECONFIG`, `~/.kube/config`, else the in-cluster
    /// service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// cloud-provider-azure's `azure.json` (subscriptionId, resourceGroup, location, vnetName,
    /// the credential keys...); the flags below override its keys.
    #[arg(long)]
    pub cloud_config: Option<PathBuf>,
    /// The ARM endpoint (default: from the cloud config's `cloud`, else public Azure).
    #[arg(long)]
    pub arm_endpoint: Option<String>,
    #[arg(long)]
    pub subscription: Option<String>,
    #[arg(long)]
    pub resource_group: Option<String>,
    #[arg(long)]
    pub location: Option<String>,
    /// The VNet whose ServiceGateway the controller drives.
    #[arg(long)]
    pub vnet: Option<String>,
    #[arg(long)]
    pub vnet_resource_group: Option<String>,
    /// The subscription of the network resources (upstream's `networkResourceSubscriptionID`).
    #[arg(long)]
    pub network_subscription: Option<String>,
    /// How ARM calls are authenticated (default: what the cloud config asks for).
    #[arg(long, value_enum)]
    pub credential: Option<CredentialArg>,
    /// The tenant's name in logs and metrics.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Which build of the engine: the component in wasmtime, or the crate linked in.
    #[arg(long, value_enum, default_value_t = EngineArg::Wasm)]
    pub engine: EngineArg,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Where to serve /metrics, /healthz, /readyz and the status page.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Seeds the engine's backoff jitter.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Calls of the engine in flight at once.
    #[arg(long, default_value_t = difftracker_runtime::executor::DEFAULT_TENANT_CAP)]
    pub max_calls_in_flight: usize,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// Leader election over a `coordination.k8s.io/v1` Lease (the flag names of kube-controller-manager).
#[derive(Clone, Debug, clap::Args)]
pub struct LeaderArgs {
    /// Run as one of several replicas: only the holder of the Lease starts calls.
    #[arg(long)]
    pub leader_elect: bool,
    #[arg(long, default_value = "difftracker")]
    pub leader_elect_lease_name: String,
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_namespace: String,
    /// This replica's identity in the Lease (default: host name and process id).
    #[arg(long)]
    pub leader_elect_identity: Option<String>,
    /// Seconds a Lease that stops being renewed keeps the standbys waiting.
    #[arg(long, default_value_t = 15)]
    pub leader_elect_lease_duration: u64,
    /// Seconds after its last renew at which a leader that cannot renew stops starting calls.
    #[arg(long, default_value_t = 10)]
    pub leader_elect_renew_deadline: u64,
    /// Milliseconds between attempts to acquire or renew.
    #[arg(long, default_value_t = 2000)]
    pub leader_elect_retry_period_ms: u64,
}

/// A replica's identity in a Lease when none is given: its host name and process id.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "difftracker".to_string() } else { host };
    format!("{host}_{}", std::process::id())
}

impl LeaderArgs {
    pub fn options(&self) -> Result<Option<LeaseOptions>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let identity = self.leader_elect_identity.clone().unwrap_or_else(default_identity);
        let options = LeaseOptions {
            lease_duration: Duration::from_secs(self.leader_elect_lease_duration),
            renew_deadline: Duration::from_secs(self.leader_elect_renew_deadline),
            retry_period: Duration::from_millis(self.leader_elect_retry_period_ms),
            ..LeaseOptions::new(&self.leader_elect_namespace, &self.leader_elect_lease_name, identity)
        };
        options.validate().map_err(|e| anyhow!("leader election: {e}"))?;
        Ok(Some(options))
    }
}

impl RunArgs {
    /// The controller's options from the flags and the cloud config.
    pub fn options(&self) -> Result<ControllerOptions> {
        let file = match &self.cloud_config {
            Some(path) => Some((AzureJson::load(path).map_err(anyhow::Error::msg)?, path.clone())),
            None => None,
        };
        let flags = AzureOverrides {
            arm_endpoint: self.arm_endpoint.clone(),
            subscription: self.subscription.clone(),
            resource_group: self.resource_group.clone(),
            location: self.location.clone(),
            vnet: self.vnet.clone(),
            vnet_resource_group: self.vnet_resource_group.clone(),
            network_subscription: self.network_subscription.clone(),
            credential: self.credential.map(CredentialKind::from),
        };
        let side = controller::resolve_azure(file.as_ref().map(|(j, p)| (j, p.as_path())), &flags).map_err(anyhow::Error::msg)?;
        if self.tenant.is_empty() {
            bail!("--tenant must not be empty");
        }
        let tenant = TenantConfig { tenant: self.tenant.clone(), seed: self.seed, ..TenantConfig::default() };
        let options = ControllerOptions {
            engine: self.engine.into(),
            sandbox: self.sandbox.limits(),
            leader_election: self.leader.options()?,
            max_calls_in_flight: self.max_calls_in_flight.max(1),
            ..ControllerOptions::new(tenant, side.config)
        };
        options.with_credential(side.credential.as_ref())
    }

    pub async fn run(self) -> Result<()> {
        let options = self.options()?;
        let client = difftracker_runtime::k8s::client_from_kubeconfig(self.kubeconfig.as_deref()).await?;
        let observatory = Observatory::new();
        let endpoints = observe::bind(self.listen, observatory.clone()).await?;
        let url = endpoints.url();
        eprintln!(
            "difftracker run: tenant {} against {} ({}); /metrics, /healthz, /readyz and the status page at {url}",
            options.tenant.tenant,
            options.azure.endpoint(),
            match &options.leader_election {
                Some(l) => format!("leader election on Lease {}/{} as {}", l.namespace, l.name, l.identity),
                None => "no leader election".into(),
            }
        );
        let controller = controller::start(client, options, observatory)?;
        let mut state = controller.subscribe();
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
            _ = state.wait_for(|s| s.stopped) => {}
        }
        eprintln!("difftracker run: stopping (releasing the leader lease if held)");
        let result = controller.shutdown().await;
        endpoints.shutdown().await;
        result
    }
}
