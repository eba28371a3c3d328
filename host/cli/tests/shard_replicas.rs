//! `difftracker serve --shard-lease-namespace` as an operator runs it: three replica processes
//! against one management API server (the in-repo one, over HTTP), six tenants whose clusters
//! (in-repo API servers) and cloud (the emulator, which records each request's caller from its
//! User-Agent) all replicas share. The tenants spread two per replica; a replica killed with
//! SIGKILL has its tenants resume on the others; a replica cut off from the management API
//! server stops its tenants' calls before another replica starts them, and takes its share
//! back once it reconnects; a rolling restart moves every tenant without one moment of double
//! ownership. In every scenario each tenant ends as its own cluster implies (the replay
//! oracle), and no two replicas ever had calls of one tenant in flight at once. Issue 17.
//!
//! The scenarios run one at a time (three processes each on a small machine). Waits are bounded
//! only so that a broken build fails instead of hanging; what they took is printed, not asserted.

use difftracker_simulation::apiserver::{self, ApiServerHandle, ApiServerOptions, Kind, StoreView};
use difftracker_simulation::emulator::{self, EmulatorHandle, EmulatorOptions, EmulatorScope, RequestRecord};
use difftracker_simulation::partition::Partition;
use difftracker_simulation::replay::oracle;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(180);
const NAMESPACE: &str = "difftracker";
const TENANTS: usize = 6;
const REPLICAS: usize = 3;
/// Lease timing of the replicas: short, so that the scenarios take seconds.
const LEASE_SECONDS: u64 = 3;
const RENEW_DEADLINE_SECONDS: u64 = 2;
const RETRY_MS: u64 = 300;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tenant(i: usize) -> String {
    format!("t{i}")
}

fn replica(i: usize) -> String {
    format!("r{i}")
}

/// The management cluster, the tenants' clusters and cloud, and the replica processes.
struct Fleet {
    dir: PathBuf,
    management: ApiServerHandle,
    /// Between each replica and the management API server, to partition it.
    proxies: Vec<Partition>,
    clusters: Vec<ApiServerHandle>,
    emulator: EmulatorHandle,
    /// Each tenant's resource group before any replica ran.
    baselines: Vec<Value>,
    ports: Vec<u16>,
    replicas: Vec<Option<Child>>,
    services: usize,
}

fn scope(i: usize) -> EmulatorScope {
    EmulatorScope {
        subscription: format!("sub-{}", tenant(i)),
        resource_group: format!("rg-{}", tenant(i)),
        location: "eastus2".into(),
        vnet_name: "vnet".into(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Fleet {
    async fn start(name: &str) -> Fleet {
        let dir = std::env::temp_dir().join(format!("difftracker-shard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let management = apiserver::serve(bind().await, ApiServerOptions::default()).await.unwrap();
        let mut proxies = Vec::new();
        for i in 0..REPLICAS {
            let proxy = Partition::start(management.addr()).await.unwrap();
            std::fs::write(dir.join(format!("management-{i}.kubeconfig")), apiserver::kubeconfig(&proxy.url())).unwrap();
            proxies.push(proxy);
        }
        let options = EmulatorOptions { scope: scope(0), extra_scopes: (1..TENANTS).map(scope).collect(), ..EmulatorOptions::default() };
        let emulator = emulator::serve(bind().await, options).await.unwrap();
        let baselines = (0..TENANTS).map(|i| emulator.emulator().inventory_of(&scope(i).key())).collect();
        let mut clusters = Vec::new();
        let mut tenants = String::new();
        for i in 0..TENANTS {
            let cluster = apiserver::serve(bind().await, ApiServerOptions::default()).await.unwrap();
            let kubeconfig = dir.join(format!("{}.kubeconfig", tenant(i)));
            std::fs::write(&kubeconfig, cluster.kubeconfig()).unwrap();
            create(
                &cluster,
                Kind::Node,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.4"}]}}),
            );
            tenants.push_str(&format!(
                "[[tenant]]\nname = \"{}\"\nkubeconfig = \"{}\"\narm_endpoint = \"{}\"\nsubscription = \"{}\"\nresource_group = \"{}\"\n\
                 location = \"eastus2\"\nvnet = \"vnet\"\ncredential = \"none\"\n\n",
                tenant(i),
                kubeconfig.display(),
                emulator.base_url(),
                scope(i).subscription,
                scope(i).resource_group
            ));
            clusters.push(cluster);
        }
        let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
        for (i, port) in ports.iter().enumerate() {
            std::fs::write(dir.join(format!("replica-{i}.toml")), format!("[host]\nlisten = \"127.0.0.1:{port}\"\n\n{tenants}")).unwrap();
        }
        let mut fleet = Fleet {
            dir,
            management,
            proxies,
            clusters,
            emulator,
            baselines,
            ports,
            replicas: (0..REPLICAS).map(|_| None).collect(),
            services: 0,
        };
        for t in 0..TENANTS {
            fleet.add_service(t);
        }
        for i in 0..REPLICAS {
            fleet.spawn(i);
        }
        fleet
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("replica-{i}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_difftracker"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join(format!("replica-{i}.toml")))
            .arg("--state-dir")
            .arg(self.dir.join(format!("state-{i}")))
            .args(["--shard-lease-namespace", NAMESPACE, "--shard-identity", &replica(i)])
            .arg("--kubeconfig")
            .arg(self.dir.join(format!("management-{i}.kubeconfig")))
            .args(["--shard-lease-duration", &LEASE_SECONDS.to_string()])
            .args(["--shard-renew-deadline", &RENEW_DEADLINE_SECONDS.to_string()])
            .args(["--shard-retry-period-ms", &RETRY_MS.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start difftracker serve");
        self.replicas[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        let mut child = self.replicas[i].take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and waits for the clean shutdown (it hands every Lease over).
    fn terminate(&mut self, i: usize) {
        let mut child = self.replicas[i].take().expect("running");
        // SAFETY: kill(2) on a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "replica {i} stopped cleanly: {status} (log in {})", self.dir.display());
    }

    /// One more LoadBalancer Service with a ready endpoint in tenant `t`'s cluster.
    fn add_service(&mut self, t: usize) {
        self.services += 1;
        let name = format!("web{}", self.services);
        let cluster = &self.clusters[t];
        let svc = create(
            cluster,
            Kind::Service,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}}),
        );
        let uid = svc["metadata"]["uid"].as_str().unwrap().to_string();
        create(
            cluster,
            Kind::EndpointSlice,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-abc"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": uid}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [format!("10.244.0.{}", 10 + self.services)], "nodeName": "n1", "conditions": {"ready": true}}]}),
        );
    }

    /// Each tenant's Lease holder as the management API server holds it ("" when free).
    fn holders(&self) -> BTreeMap<String, String> {
        (0..TENANTS)
            .map(|t| {
                let lease = self.management.api().read(|s| s.get(Kind::Lease, NAMESPACE, &format!("difftracker-tenant-{}", tenant(t))));
                let holder = lease.ok().and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string)).unwrap_or_default();
                (tenant(t), holder)
            })
            .collect()
    }

    /// Every tenant held by one of `live`, each of them holding `TENANTS / live` or one more.
    fn balanced_over(&self, live: &[usize]) -> bool {
        let holders = self.holders();
        let names: BTreeSet<String> = live.iter().map(|i| replica(*i)).collect();
        if !holders.values().all(|h| names.contains(h)) {
            return false;
        }
        let low = TENANTS / live.len();
        names.iter().all(|r| {
            let n = holders.values().filter(|h| *h == r).count();
            n == low || n == TENANTS.div_ceil(live.len())
        })
    }

    /// What the replay oracle finds wrong with each tenant (empty: every tenant converged).
    fn oracle(&self) -> Vec<String> {
        (0..TENANTS)
            .flat_map(|t| {
                let inventory = self.emulator.emulator().inventory_of(&scope(t).key());
                let problems = self.clusters[t].api().read(|s| oracle::check_view(&StoreView::of(s), &inventory, &self.baselines[t]));
                problems.into_iter().map(move |p| format!("{}: {p}", tenant(t)))
            })
            .collect()
    }

    /// Fails at once when a replica that should run has exited.
    fn assert_running(&mut self) {
        for (i, child) in self.replicas.iter_mut().enumerate() {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let log = std::fs::read_to_string(self.dir.join(format!("replica-{i}.log"))).unwrap_or_default();
                let head: String = log.lines().take(5).collect::<Vec<_>>().join("\n");
                panic!("replica {i} exited ({status}):\n{head}");
            }
        }
    }

    async fn eventually(&mut self, what: &str, mut done: impl FnMut(&Fleet) -> bool) -> Duration {
        let started = Instant::now();
        while !done(self) {
            self.assert_running();
            assert!(
                started.elapsed() < PATIENCE,
                "timed out waiting for: {what}; Leases {:?}; oracle {:?}; logs in {}",
                self.holders(),
                self.oracle(),
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    }

    /// The emulator's requests of each tenant, with the replica that made them.
    fn calls_by_tenant(&self) -> BTreeMap<String, Vec<(String, RequestRecord)>> {
        let mut out: BTreeMap<String, Vec<(String, RequestRecord)>> = BTreeMap::new();
        for r in self.emulator.emulator().recent_requests() {
            let Some(sub) = r.path.split('/').nth(2) else { continue };
            let Some(t) = sub.strip_prefix("sub-") else { continue };
            let caller = r.user_agent.as_deref().and_then(|ua| ua.rsplit_once("replica/")).map(|(_, id)| id.to_string());
            let caller = caller.unwrap_or_else(|| panic!("a request of {t} without its replica: {r:?}"));
            out.entry(t.to_string()).or_default().push((caller, r));
        }
        out
    }

    /// No two replicas ever had requests of one tenant in flight at the same time.
    fn assert_no_double_ownership(&self) {
        let calls = self.calls_by_tenant();
        for (t, requests) in &calls {
            for (i, (a, ra)) in requests.iter().enumerate() {
                for (b, rb) in &requests[i + 1..] {
                    if a != b {
                        let overlap = ra.received < rb.answered && rb.received < ra.answered;
                        assert!(
                            !overlap,
                            "tenant {t}: {a}'s {} {} and {b}'s {} {} were in flight at once",
                            ra.method, ra.path, rb.method, rb.path
                        );
                    }
                }
            }
        }
    }

    /// Tenant `t` moved from replica `from` to another at `at`: `from` had called for it, and
    /// each of its calls was over before another replica's first call after `at` arrived.
    fn assert_handed_over(&self, t: &str, from: &str, at: Instant) {
        let calls = self.calls_by_tenant();
        let requests = calls.get(t).map(Vec::as_slice).unwrap_or_default();
        let last_of_old = requests.iter().filter(|(c, _)| c == from).map(|(_, r)| r.answered).max();
        let last_of_old = last_of_old.unwrap_or_else(|| panic!("{from} never called for {t}"));
        let first_of_new = requests.iter().filter(|(c, r)| c != from && r.received > at).map(|(c, r)| (r.received, c)).min();
        let (first_of_new, new_owner) = first_of_new.unwrap_or_else(|| {
            let seen: Vec<String> = requests
                .iter()
                .map(|(c, r)| {
                    format!(
                        "{c} {} {} at {:?}",
                        r.method,
                        r.path.rsplit('/').next().unwrap_or(""),
                        r.received.saturating_duration_since(at)
                    )
                })
                .collect();
            panic!("nobody called for {t} after {from} went; Leases {:?}; its calls: {seen:#?}", self.holders())
        });
        assert!(
            last_of_old <= first_of_new,
            "{t}: {from}'s last call ended {:?} after {new_owner}'s first one began",
            last_of_old - first_of_new
        );
        eprintln!("{t}: {from}'s last call ended {:?} before {new_owner}'s first", first_of_new - last_of_old);
    }

    async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/status.json", self.ports[i]);
        reqwest::get(url).await.ok()?.json().await.ok()
    }

    fn owned_by(&self, i: usize) -> Vec<String> {
        self.holders().into_iter().filter(|(_, h)| *h == replica(i)).map(|(t, _)| t).collect()
    }

    fn stop_all(&mut self) {
        for child in self.replicas.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn create(cluster: &ApiServerHandle, kind: Kind, object: Value) -> Value {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    cluster.api().write(|s| s.create(kind, &namespace, object)).expect("create")
}

fn index_of(tenant: &str) -> usize {
    tenant.trim_start_matches('t').parse().unwrap()
}

async fn started_and_converged(fleet: &mut Fleet) {
    let all: Vec<usize> = (0..REPLICAS).collect();
    let took = fleet.eventually("two tenants on each replica", |f| f.balanced_over(&all)).await;
    eprintln!("spread over {REPLICAS} replicas after {took:?}");
    fleet.eventually("every tenant converged", |f| f.oracle().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_tenants_resume_on_the_others_and_no_tenant_ever_runs_twice() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("failover").await;
    started_and_converged(&mut fleet).await;
    let status = fleet.eventually_status(1).await;
    assert_eq!(status["shard"]["identity"], "r1");
    assert_eq!(status["shard"]["replicas"], json!(["r0", "r1", "r2"]), "{status}");
    let owned = fleet.owned_by(1);
    assert_eq!(status["shard"]["owned"], json!(owned), "{status}");
    let base = format!("http://127.0.0.1:{}", fleet.ports[1]);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("difftracker_host_shard_tenants_owned 2\n"), "{metrics}");
    assert!(metrics.contains("difftracker_host_shard_replicas_live 3\n"), "{metrics}");
    let page = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("shard difftracker: replica r1, live replicas [r0, r1, r2], owns [{}]", owned.join(", "))), "{page}");

    let orphans = fleet.owned_by(0);
    assert_eq!(orphans.len(), 2);
    fleet.kill(0);
    let killed = Instant::now();
    // Work the new owners must do: a Service more in each orphaned tenant.
    for t in &orphans {
        fleet.add_service(index_of(t));
    }
    fleet.eventually("r0's tenants held by r1 and r2", |f| f.balanced_over(&[1, 2])).await;
    let taken = killed.elapsed();
    fleet.eventually("every tenant converged again", |f| f.oracle().is_empty()).await;
    eprintln!("takeover of a killed replica's tenants: Leases after {taken:?}, converged after {:?}", killed.elapsed());
    fleet.assert_no_double_ownership();
    for t in &orphans {
        fleet.assert_handed_over(t, "r0", killed);
    }
    fleet.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_stops_its_tenants_before_another_starts_them_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("partition").await;
    started_and_converged(&mut fleet).await;
    let cut_off = fleet.owned_by(2);
    fleet.proxies[2].set_cut(true);
    let cut = Instant::now();
    fleet.eventually("r2's tenants held by r0 and r1", |f| f.balanced_over(&[0, 1])).await;
    // Work only their new owners can do: r2's fences are down by now.
    for t in &cut_off {
        fleet.add_service(index_of(t));
    }
    fleet.eventually("every tenant converged without r2", |f| f.oracle().is_empty()).await;
    eprintln!("takeover from a partitioned replica: converged {:?} after the cut", cut.elapsed());
    // r2 still runs and still reaches the cloud, yet it started nothing more for them.
    let status = fleet.eventually_status(2).await;
    assert!(status["shard"]["errors"].as_u64().unwrap_or(0) > 0, "r2 reports its failed renewals: {}", status["shard"]);
    fleet.assert_no_double_ownership();
    for t in &cut_off {
        fleet.assert_handed_over(t, "r2", cut);
    }
    // Healed: r2 sees its membership again and gets its share back by rebalancing.
    fleet.proxies[2].set_cut(false);
    let all: Vec<usize> = (0..REPLICAS).collect();
    let took = fleet.eventually("rebalanced over all three", |f| f.balanced_over(&all)).await;
    eprintln!("rebalanced after the partition healed in {took:?}");
    fleet.add_service(index_of(&fleet.owned_by(2)[0]));
    fleet.eventually("converged after the rebalance", |f| f.oracle().is_empty()).await;
    fleet.assert_no_double_ownership();
    fleet.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_replica_moves_tenants_without_double_ownership() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("rolling").await;
    started_and_converged(&mut fleet).await;
    let all: Vec<usize> = (0..REPLICAS).collect();
    for i in 0..REPLICAS {
        let others: Vec<usize> = all.iter().copied().filter(|r| *r != i).collect();
        let stopped = Instant::now();
        fleet.terminate(i);
        // Released on the way out: the others take over without waiting out a Lease.
        fleet.eventually(&format!("r{i}'s tenants on the others"), |f| f.balanced_over(&others)).await;
        eprintln!("r{i} stopped; its tenants moved in {:?}", stopped.elapsed());
        fleet.add_service(i);
        fleet.spawn(i);
        fleet.eventually(&format!("r{i} back with its share"), |f| f.balanced_over(&all)).await;
        fleet.eventually("converged", |f| f.oracle().is_empty()).await;
    }
    fleet.assert_no_double_ownership();
    fleet.stop_all();
}

impl Fleet {
    async fn eventually_status(&self, i: usize) -> Value {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status(i).await {
                if status["shard"].is_object() {
                    return status;
                }
            }
            assert!(started.elapsed() < PATIENCE, "replica {i} never served its status");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
