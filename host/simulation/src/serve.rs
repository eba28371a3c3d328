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

use crate::apiserver::{self, ApiServer, ApiServerOptions, StoreView, TracePlayer};
use crate::emulator::{self, EmulatorHandle, EmulatorOptions, ScopeKey};
use crate::replay::{oracle, read_trace, Trace};
use anyhow::{Context, Result};
use difftracker_runtime::k8s::kube;
use difftracker_runtime::serve::{tokens_of, ClusterSource, KubeconfigProvisioner, Provisioned, Provisioner, TenantSpec};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// What is kept alive for a tenant while it runs.
type Guard = Box<dyn std::any::Any + Send + Sync>;

/// The provisioner of `difftracker serve`.
pub struct SimulationProvisioner {
    emulator: EmulatorHandle,
    /// Where the kubeconfigs of embedded clusters are written.
    state_dir: PathBuf,
    /// Each provisioned tenant's embedded cluster (while it lives) and emulator scope with its
    /// content before the engine ran, for [`SimulationProvisioner::oracle`].
    tenants: Mutex<BTreeMap<String, Provided>>,
}

struct Provided {
    cluster: Option<Weak<ApiServer>>,
    scope: Option<(ScopeKey, Value)>,
    /// Set once the tenant's trace is played out (none for a cluster without a trace).
    played: Option<Arc<AtomicBool>>,
}

impl SimulationProvisioner {
    /// Starts the embedded emulator (empty until tenants use it); kubeconfigs go to `state_dir`.
    pub async fn start(state_dir: PathBuf) -> Result<SimulationProvisioner> {
        std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on loopback for the emulator")?;
        let emulator = emulator::serve(listener, EmulatorOptions::default()).await.context("starting the embedded emulator")?;
        Ok(SimulationProvisioner { emulator, state_dir, tenants: Mutex::new(BTreeMap::new()) })
    }

    /// The in-repo API server of a tenant's embedded cluster, while the tenant runs.
    pub fn cluster_of(&self, tenant: &str) -> Option<Arc<ApiServer>> {
        self.lock().get(tenant)?.cluster.as_ref()?.upgrade()
    }

    /// Whether a tenant's trace has been played out (`None`: it has no trace).
    pub fn trace_played(&self, tenant: &str) -> Option<bool> {
        Some(self.lock().get(tenant)?.played.as_ref()?.load(Ordering::Acquire))
    }

    /// The replay oracle on a tenant of the embedded emulator with an embedded cluster: what its
    /// resource group holds against what its own cluster implies (empty: it holds). `None` for
    /// a tenant with no such cluster or scope.
    pub fn oracle(&self, tenant: &str) -> Option<Vec<String>> {
        let (cluster, scope, baseline) = {
            let tenants = self.lock();
            let provided = tenants.get(tenant)?;
            let (scope, baseline) = provided.scope.clone()?;
            (provided.cluster.as_ref()?.upgrade()?, scope, baseline)
        };
        let inventory = self.emulator.emulator().inventory_of(&scope);
        Some(cluster.read(|s| oracle::check_view(&StoreView::of(s), &inventory, &baseline)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Provided>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
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
    ) -> Result<(kube::Client, Guard, Option<Weak<ApiServer>>, Option<Arc<AtomicBool>>)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on loopback for the API server")?;
        let server = apiserver::serve(listener, ApiServerOptions::default()).await.context("starting the tenant's API server")?;
        let path = self.kubeconfig_of(&spec.name);
        std::fs::write(&path, server.kubeconfig()).with_context(|| format!("writing {}", path.display()))?;
        let client = || -> Result<kube::Client> {
            let url = server.url().parse().context("the API server's URL")?;
            kube::Client::try_from(kube::Config::new(url)).context("a client of the API server")
        };
        let played = trace.as_ref().map(|_| Arc::new(AtomicBool::new(false)));
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
                let done = played.clone().unwrap_or_default();
                Some(tokio::spawn(play(player, trace, next, speed, spec.name.clone(), done)))
            }
        };
        tracing::info!(tenant = %spec.name, kubeconfig = %path.display(), "embedded cluster up");
        let api = Arc::downgrade(server.api());
        Ok((client()?, Box::new(EmbeddedCluster { _server: server, player }), Some(api), played))
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
async fn play(mut player: TracePlayer, trace: Trace, mut next: usize, speed: f64, tenant: String, done: Arc<AtomicBool>) {
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
    done.store(true, Ordering::Release);
    tracing::info!(tenant = %tenant, events = trace.events.len(), "trace played");
}

impl Provisioner for SimulationProvisioner {
    fn provision<'a>(&'a self, spec: &'a TenantSpec) -> BoxFuture<'a, Result<Provisioned>> {
        Box::pin(async move {
            if !spec.embedded_arm && matches!(spec.cluster, ClusterSource::Kubeconfig(_)) {
                return KubeconfigProvisioner.provision(spec).await;
            }
            let (client, guard, cluster, played) = match &spec.cluster {
                ClusterSource::Kubeconfig(path) => {
                    (difftracker_runtime::k8s::client_from_kubeconfig(Some(path)).await?, Box::new(()) as Guard, None, None)
                }
                ClusterSource::Embedded => self.embedded_cluster(spec, None).await?,
                ClusterSource::Trace { path, speed } => {
                    let trace = read_trace(path).with_context(|| format!("trace {}", path.display()))?;
                    self.embedded_cluster(spec, Some((trace, *speed))).await?
                }
            };
            let mut azure = spec.azure.config.clone();
            let mut scope = None;
            let transport = if spec.embedded_arm {
                let key = ScopeKey::new(azure.network_subscription(), &azure.resource_group);
                let baseline = {
                    let mut state = self.emulator.emulator().state();
                    if !state.knows_scope(&key) {
                        state.add_resource_group(&key, &azure.location);
                        // Cannot fail: the resource group was just added.
                        let _ = state.seed_default_natgw(&key);
                    }
                    state.inventory(&key)
                };
                scope = Some((key, baseline));
                azure.arm_endpoint = self.emulator.base_url();
                crate::live::transport_options()
            } else {
                Default::default()
            };
            let tokens = tokens_of(spec)?;
            self.lock().insert(spec.name.clone(), Provided { cluster, scope, played });
            Ok(Provisioned { client, azure, tokens, transport, guard })
        })
    }

    fn builtin_component(&self, name: &str) -> Option<&'static [u8]> {
        match name {
            "misbehaving" => Some(crate::MISBEHAVING_WASM),
            _ => None,
        }
    }
}
