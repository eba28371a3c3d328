//! The simulation kit's side of `difftracker serve`: a [`Provisioner`] that, beside what the
//! production one serves (kubeconfig clusters, real ARM endpoints), gives tenants
//!
//! - the **embedded emulator** (`arm_endpoint = "embedded"`, the default of a simulated
//!   cluster): one ARM/NRP emulator on a loopback port for the whole host, in which each such
//!   tenant gets its own subscription and resource group (with the AKS-owned `default-natgw`);
//! - **embedded clusters** (`cluster = "embedded"`): an in-repo API server of its own, empty, on
//!   a loopback port, with a kubeconfig written to `<state dir>/<tenant>.kubeconfig` so that
//!   `kubectl` can drive it;
//! - **simulated clusters** (`trace = FILE`): the same, with the trace's watch events applied to
//!   it over HTTP as `kubectl` would ([`TracePlayer`]) at `trace_speed` times real time;
//! - the deliberately misbehaving component, as `component = "builtin:misbehaving"`.
//!
//! An embedded API server and its player live as long as the tenant: a tenant removed by a
//! reload takes its cluster with it.

use crate::apiserver::{self, ApiServerOptions, TracePlayer};
use crate::emulator::{self, EmulatorHandle, EmulatorOptions, ScopeKey};
use crate::replay::{read_trace, Trace};
use anyhow::{anyhow, Context, Result};
use difftracker_runtime::k8s::kube;
use difftracker_runtime::serve::{tokens_of, ClusterSource, KubeconfigProvisioner, Provisioned, Provisioner, TenantSpec};
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The provisioner of `difftracker serve`.
pub struct SimulationProvisioner {
    emulator: EmulatorHandle,
    /// Where the kubeconfigs of embedded clusters are written.
    state_dir: PathBuf,
}

impl SimulationProvisioner {
    /// Starts the embedded emulator (empty until tenants use it); kubeconfigs go to `state_dir`.
    pub async fn start(state_dir: PathBuf) -> Result<SimulationProvisioner> {
        std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on loopback for the emulator")?;
        let emulator = emulator::serve(listener, EmulatorOptions::default()).await.context("starting the embedded emulator")?;
        Ok(SimulationProvisioner { emulator, state_dir })
    }

    /// The embedded emulator's ARM endpoint.
    pub fn emulator_url(&self) -> String {
        self.emulator.base_url()
    }

    pub fn emulator(&self) -> &EmulatorHandle {
        &self.emulator
    }

    /// Where an embedded tenant's kubeconfig is written.
    pub fn kubeconfig_of(&self, tenant: &str) -> PathBuf {
        self.state_dir.join(format!("{tenant}.kubeconfig"))
    }

    async fn embedded_cluster(
        &self,
        spec: &TenantSpec,
        trace: Option<(Trace, f64)>,
    ) -> Result<(kube::Client, Box<dyn std::any::Any + Send + Sync>)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on loopback for the API server")?;
        let server = apiserver::serve(listener, ApiServerOptions::default()).await.context("starting the tenant's API server")?;
        let path = self.kubeconfig_of(&spec.name);
        std::fs::write(&path, server.kubeconfig()).with_context(|| format!("writing {}", path.display()))?;
        let client = || -> Result<kube::Client> {
            let url = server.url().parse().context("the API server's URL")?;
            kube::Client::try_from(kube::Config::new(url)).context("a client of the API server")
        };
        let player = match trace {
            None => None,
            Some((trace, speed)) => {
                let mut player = TracePlayer::new(client()?);
                // The trace's first instant is there before the engine lists the cluster.
                let first = trace.events.first().map_or(0, |e| e.at_ms);
                let mut next = 0;
                while next < trace.events.len() && trace.events[next].at_ms <= first {
                    player.apply(&trace.events[next]).await;
                    next += 1;
                }
                Some(tokio::spawn(play(player, trace, next, speed, spec.name.clone())))
            }
        };
        tracing::info!(tenant = %spec.name, kubeconfig = %path.display(), "embedded cluster up");
        Ok((client()?, Box::new(EmbeddedCluster { _server: server, player })))
    }
}

/// An embedded cluster: its API server, and the task playing its trace (stopped with it).
struct EmbeddedCluster {
    _server: apiserver::ApiServerHandle,
    player: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        if let Some(player) = &self.player {
            player.abort();
        }
    }
}

/// Applies the trace's events at their times (`speed` times real time), then keeps retrying
/// what the server refused for a while (a write that raced the controller's).
async fn play(mut player: TracePlayer, trace: Trace, mut next: usize, speed: f64, tenant: String) {
    let start = Instant::now();
    let first = trace.events.first().map_or(0, |e| e.at_ms);
    while next < trace.events.len() {
        let offset = trace.events[next].at_ms.saturating_sub(first) as f64 / 1000.0 / speed;
        tokio::time::sleep_until((start + Duration::from_secs_f64(offset.min(1.0e9))).into()).await;
        while next < trace.events.len() && (trace.events[next].at_ms.saturating_sub(first) as f64 / 1000.0 / speed) <= offset {
            player.apply(&trace.events[next]).await;
            next += 1;
        }
        player.retry_pending().await;
    }
    for _ in 0..100 {
        if player.is_quiet() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        player.retry_pending().await;
    }
    tracing::info!(tenant = %tenant, events = trace.events.len(), "trace played");
}

impl Provisioner for SimulationProvisioner {
    fn provision<'a>(&'a self, spec: &'a TenantSpec) -> BoxFuture<'a, Result<Provisioned>> {
        Box::pin(async move {
            if !spec.embedded_arm && matches!(spec.cluster, ClusterSource::Kubeconfig(_)) {
                return KubeconfigProvisioner.provision(spec).await;
            }
            let (client, guard) = match &spec.cluster {
                ClusterSource::Kubeconfig(path) => (
                    difftracker_runtime::k8s::client_from_kubeconfig(Some(path)).await?,
                    Box::new(()) as Box<dyn std::any::Any + Send + Sync>,
                ),
                ClusterSource::Embedded => self.embedded_cluster(spec, None).await?,
                ClusterSource::Trace { path, speed } => {
                    let trace = read_trace(path).with_context(|| format!("trace {}", path.display()))?;
                    self.embedded_cluster(spec, Some((trace, *speed))).await?
                }
            };
            let mut azure = spec.azure.config.clone();
            let transport = if spec.embedded_arm {
                let scope = ScopeKey::new(azure.network_subscription(), &azure.resource_group);
                {
                    let mut state = self.emulator.emulator().state();
                    state.add_resource_group(&scope, &azure.location);
                    // Only a resource group seen for the first time gets the AKS-owned NAT gateway.
                    if state.inventory(&scope).get("nat_gateways").and_then(|v| v.as_object()).is_none_or(|m| m.is_empty()) {
                        state.seed_default_natgw(&scope).map_err(|e| anyhow!("seeding {scope:?}: {e}"))?;
                    }
                }
                azure.arm_endpoint = self.emulator.base_url();
                crate::live::transport_options()
            } else {
                Default::default()
            };
            Ok(Provisioned { client, azure, tokens: tokens_of(spec)?, transport, guard })
        })
    }

    fn builtin_component(&self, name: &str) -> Option<&'static [u8]> {
        match name {
            // MERGE: crate::MISBEHAVING_WASM once the hostile branch lands.
            "misbehaving" => None,
            _ => None,
        }
    }
}
