//! `difftracker serve --config FILE`: many tenants in one process ([`difftracker_runtime::serve`]),
//! with the simulation kit's provisioner for embedded clusters and the embedded emulator; and
//! `difftracker admin`, the client of its admin API.

use anyhow::{anyhow, bail, Context, Result};
use difftracker_runtime::observe::Observatory;
use difftracker_runtime::serve::shard::ShardOptions;
use difftracker_runtime::serve::{ServeConfig, TenantHost};
use difftracker_simulation::serve::SimulationProvisioner;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Run many tenants from a TOML configuration (see examples/tenants.toml) until Ctrl-C or SIGTERM; SIGHUP reloads it.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration: a [host] table and one [[tenant]] table per tenant.
    #[arg(long)]
    pub config: PathBuf,
    /// Where the kubeconfigs of embedded clusters are written (default: a fresh directory under
    /// the system's temporary directory).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// Run as one of several replicas sharing the tenants, each tenant owned through its own Lease.
#[derive(Clone, Debug, clap::Args)]
pub struct ShardArgs {
    /// Shard the tenants over the replicas through `coordination.k8s.io/v1` Leases in this
    /// namespace of the management cluster.
    #[arg(long, value_name = "NS")]
    pub shard_lease_namespace: Option<String>,
    /// The management cluster's kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", requires = "shard_lease_namespace")]
    pub kubeconfig: Option<PathBuf>,
    /// This replica's identity in the Leases (default: host name and process id).
    #[arg(long, requires = "shard_lease_namespace")]
    pub shard_identity: Option<String>,
    #[command(flatten)]
    pub timing: ShardTimingArgs,
    /// Tenants a replica hands over at most per round when replicas join.
    #[arg(long, default_value_t = 10)]
    pub shard_max_moves: usize,
}

/// The timing of the shard's Leases (`serve` and `bench-shard`).
#[derive(Clone, Debug, clap::Args)]
pub struct ShardTimingArgs {
    /// Seconds a tenant's Lease that stops being renewed keeps the other replicas away.
    #[arg(long, default_value_t = 15)]
    pub shard_lease_duration: u64,
    /// Seconds after its last renew at which a replica that cannot renew stops a tenant's calls.
    #[arg(long, default_value_t = 10)]
    pub shard_renew_deadline: u64,
    /// Milliseconds between two rounds of renewing, acquiring and rebalancing.
    #[arg(long, default_value_t = 2000)]
    pub shard_retry_period_ms: u64,
}

impl ShardTimingArgs {
    /// `options` with this timing.
    pub fn apply(&self, options: ShardOptions) -> ShardOptions {
        ShardOptions {
            lease_duration: Duration::from_secs(self.shard_lease_duration),
            renew_deadline: Duration::from_secs(self.shard_renew_deadline),
            retry_period: Duration::from_millis(self.shard_retry_period_ms),
            ..options
        }
    }
}

impl ShardArgs {
    fn options(&self) -> Result<Option<ShardOptions>> {
        let Some(namespace) = &self.shard_lease_namespace else { return Ok(None) };
        let identity = self.shard_identity.clone().unwrap_or_else(super::run::default_identity);
        let options = ShardOptions { max_moves: self.shard_max_moves, ..self.timing.apply(ShardOptions::new(namespace, identity)) };
        options.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(options))
    }
}

impl ServeArgs {
    pub async fn run(self) -> Result<()> {
        let config = ServeConfig::load(&self.config).map_err(anyhow::Error::msg)?;
        let shard = self.shard.options()?;
        let state_dir =
            self.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("difftracker-serve-{}", std::process::id())));
        let provisioner = Arc::new(SimulationProvisioner::start(state_dir.clone()).await?);
        let emulator_url = provisioner.emulator_url();
        let host = match &shard {
            None => TenantHost::start(config, provisioner, Observatory::new()).await?,
            Some(options) => {
                let management = difftracker_runtime::k8s::client_from_kubeconfig(self.shard.kubeconfig.as_deref())
                    .await
                    .context("the management cluster (--kubeconfig)")?;
                TenantHost::start_sharded(config, provisioner, Observatory::new(), management, options.clone()).await?
            }
        };
        if let Some(o) = &shard {
            eprintln!(
                "difftracker serve: replica {} sharding the tenants through Leases in namespace {} (lease {:?}, renew deadline {:?})",
                o.identity, o.namespace, o.lease_duration, o.renew_deadline
            );
        }
        let server = match host.bind().await {
            Ok(server) => server,
            Err(e) => {
                host.shutdown().await;
                return Err(e);
            }
        };
        let settings = host.config().host;
        eprintln!(
            "difftracker serve: {} tenant(s) from {}; /metrics, /healthz, /readyz and the status page at {}{}",
            host.config().tenants.len(),
            self.config.display(),
            server.url(),
            match &settings.admin_token_file {
                Some(p) => format!(", the admin API at {}/admin (token in {})", server.url(), p.display()),
                None => String::new(),
            }
        );
        eprintln!("difftracker serve: embedded emulator at {emulator_url}; kubeconfigs of embedded clusters in {}", state_dir.display());
        for t in host.tenants().await {
            match &t.reason {
                Some(reason) if t.phase != difftracker_runtime::serve::TenantPhase::Running => {
                    eprintln!("  tenant {:<20} {:?}: {reason}", t.name, t.phase)
                }
                _ => eprintln!("  tenant {:<20} {:?}", t.name, t.phase),
            }
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                _ = sighup.recv() => match host.reload_file().await {
                    Ok(report) => eprintln!("difftracker serve: reloaded: {}", serde_json::to_string(&report).unwrap_or_default()),
                    Err(e) => eprintln!("difftracker serve: reload refused, the running configuration keeps running: {e}"),
                },
            }
        }
        eprintln!("difftracker serve: stopping every tenant");
        host.shutdown().await;
        server.shutdown().await;
        Ok(())
    }
}

/// Talk to a running `difftracker serve`'s admin API.
#[derive(Clone, Debug, clap::Args)]
pub struct AdminArgs {
    /// The host's address, e.g. http://127.0.0.1:9090.
    #[arg(long)]
    pub url: String,
    /// The file holding the admin token (the [host] table's admin_token_file).
    #[arg(long)]
    pub token_file: PathBuf,
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum AdminAction {
    /// List every tenant with its phase, component and restarts.
    Tenants,
    /// Show one tenant.
    Show { name: String },
    /// Stop a tenant's engine until `resume`.
    Pause { name: String },
    /// Start a paused tenant again.
    Resume { name: String },
    /// Stop and start a tenant (also one stopped after repeated failures).
    Restart { name: String },
    /// The inputs a tenant's engine trapped on and dropped.
    Quarantined { name: String },
    /// Hot-swap a tenant to another component file, in the background; refused if the new
    /// component's calls diverge from the running one's for the same inputs.
    Swap {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_name = "FILE")]
        component: PathBuf,
        /// Swap even if the calls diverge (a deliberate change of behaviour); the answer says
        /// where they first differed.
        #[arg(long)]
        allow_divergence: bool,
    },
    /// Swap a tenant back to the component it ran before its last swap.
    Rollback {
        #[arg(long)]
        tenant: String,
    },
    /// Re-read the configuration file (as SIGHUP does).
    Reload,
}

impl AdminArgs {
    pub async fn run(self) -> Result<()> {
        let token = difftracker_runtime::serve::read_token_file(&self.token_file)?;
        let base = self.url.trim_end_matches('/');
        let client = reqwest::Client::new();
        let (get, path, body) = match &self.action {
            AdminAction::Tenants => (true, "/admin/tenants".to_string(), None),
            AdminAction::Show { name } => (true, format!("/admin/tenants/{name}"), None),
            AdminAction::Quarantined { name } => (true, format!("/admin/tenants/{name}/quarantined"), None),
            AdminAction::Pause { name } => (false, format!("/admin/tenants/{name}/pause"), None),
            AdminAction::Resume { name } => (false, format!("/admin/tenants/{name}/resume"), None),
            AdminAction::Restart { name } => (false, format!("/admin/tenants/{name}/restart"), None),
            AdminAction::Rollback { tenant } => (false, format!("/admin/tenants/{tenant}/rollback"), None),
            AdminAction::Swap { tenant, component, allow_divergence } => {
                let component = std::path::absolute(component).with_context(|| format!("resolving {}", component.display()))?;
                let body = serde_json::json!({ "component": component, "allow_divergence": allow_divergence });
                (false, format!("/admin/tenants/{tenant}/swap"), Some(body))
            }
            AdminAction::Reload => (false, "/admin/reload".to_string(), None),
        };
        let url = format!("{base}{path}");
        let request = if get { client.get(&url) } else { client.post(&url) };
        let request = request.bearer_auth(token.secret());
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        let response = request.send().await.map_err(|e| anyhow!("{url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let shown = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or(text),
            Err(_) => text,
        };
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("401 Unauthorized: the token in {} is not the host's", self.token_file.display());
        }
        if !status.is_success() {
            bail!("{status}: {shown}");
        }
        println!("{shown}");
        Ok(())
    }
}
