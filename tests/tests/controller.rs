//! The controller (`difftracker_runtime::controller`, what `difftracker run` runs) over real HTTP:
//! kube-rs watches and writes against the in-repo API server, ARM calls to the emulator.
//! Services converge and go; a controller restarted with changes made while it was down runs
//! the start-up pass; the API server restarting mid-run, dropped watches and `410 Gone` relists
//! leave nothing behind; with leader election only the Lease holder starts calls, a standby
//! takes over once the leader dies or is cut off (and the cut-off leader stops first), and a
//! clean shutdown hands the Lease over at once. Waits are bounded only so that a broken build
//! fails instead of hanging; no assertion depends on how fast anything is.

use difftracker_engine::io::TenantConfig;
use difftracker_runtime::controller::{self, ControllerHandle, ControllerOptions, LeaseOptions};
use difftracker_runtime::driver::EngineKind;
use difftracker_runtime::k8s::{kube, SERVICE_FINALIZERS};
use difftracker_runtime::observe::Observatory;
use difftracker_simulation::apiserver::{
    serve, serve_api, ApiServer, ApiServerHandle, ApiServerOptions, FaultPlan, Kind, Preconditions, Subresource,
};
use difftracker_simulation::emulator::{self, EmulatorHandle, EmulatorOptions};
use difftracker_simulation::live::transport_options;
use difftracker_simulation::partition::Partition;
use difftracker_tests::cluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Bound of every wait; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(90);

async fn api_server(options: ApiServerOptions) -> ApiServerHandle {
    serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).await.expect("serve the API server")
}

async fn emulator() -> EmulatorHandle {
    emulator::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), EmulatorOptions::default()).await.expect("serve the emulator")
}

fn client_for(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

fn options(emulator: &EmulatorHandle, lease: Option<LeaseOptions>) -> ControllerOptions {
    let tenant = TenantConfig { tenant: "t1".into(), seed: 1, ..TenantConfig::default() };
    ControllerOptions {
        engine: EngineKind::Native,
        transport: transport_options(),
        leader_election: lease,
        ..ControllerOptions::new(tenant, emulator.tenant_config())
    }
}

fn lease(identity: &str) -> LeaseOptions {
    LeaseOptions {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(200),
        ..LeaseOptions::new("kube-system", "difftracker", identity)
    }
}

fn start(url: &str, options: ControllerOptions) -> (ControllerHandle, Observatory) {
    let observatory = Observatory::new();
    (controller::start(client_for(url), options, observatory.clone()).expect("start the controller"), observatory)
}

fn seed_node(api: &ApiServerHandle, name: &str, ip: &str) {
    cluster::seed_node(api.api(), name, ip);
}

/// A LoadBalancer Service with one ready endpoint on node `n1`; returns its UID.
fn seed_service(api: &ApiServerHandle, name: &str, pod_ip: &str) -> String {
    cluster::seed_service(api.api(), name, pod_ip)
}

/// [`seed_service`] on a store, also while its server is down.
fn seed_service_in(store: &ApiServer, name: &str, pod_ip: &str) -> String {
    cluster::seed_service(store, name, pod_ip)
}

fn get_service(api: &ApiServerHandle, name: &str) -> Option<Value> {
    api.api().read(|s| s.get(Kind::Service, "default", name)).ok()
}

fn delete_service(api: &ApiServerHandle, name: &str) {
    delete_service_in(api.api(), name);
}

fn delete_service_in(store: &ApiServer, name: &str) {
    store.write(|s| s.delete(Kind::Service, "default", name, &Preconditions::default())).expect("delete");
}

/// Polls until `done` holds; panics with `what` after [`PATIENCE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the cloud holds for a Service of this UID, and its ingress IP in the cluster.
fn converged(api: &ApiServerHandle, emulator: &EmulatorHandle, name: &str, uid: &str) -> bool {
    let inventory = emulator.inventory();
    let pip = inventory["public_ips"][format!("{uid}-pip")].as_str().map(str::to_string);
    let has_lb = inventory["load_balancers"].as_array().is_some_and(|a| a.iter().any(|n| n == uid));
    let registered = inventory["sgw_services"].get(uid).is_some();
    let svc = get_service(api, name);
    let ingress = svc.as_ref().and_then(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().map(str::to_string));
    let finalized = svc.as_ref().is_some_and(|s| {
        let f = s["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        SERVICE_FINALIZERS.iter().all(|want| f.iter().any(|have| have == want))
    });
    has_lb && registered && pip.is_some() && ingress == pip && finalized
}

/// Nothing of the Service is left: not in the cluster, not in the cloud.
fn gone(api: &ApiServerHandle, emulator: &EmulatorHandle, name: &str, uid: &str) -> bool {
    let inventory = emulator.inventory();
    get_service(api, name).is_none()
        && inventory["public_ips"].get(format!("{uid}-pip")).is_none()
        && !inventory["load_balancers"].as_array().is_some_and(|a| a.iter().any(|n| n == uid))
        && inventory["sgw_services"].get(uid).is_none()
}

fn lb_count(emulator: &EmulatorHandle) -> usize {
    emulator.inventory()["load_balancers"].as_array().map_or(0, Vec::len)
}

fn cloud_calls_started(observatory: &Observatory) -> u64 {
    observatory.calls("t1").iter().filter(|(label, _)| label.contains(' ')).map(|(_, c)| c.started).sum()
}

fn holder(api: &ApiServerHandle) -> String {
    api.api()
        .read(|s| s.get(Kind::Lease, "kube-system", "difftracker"))
        .map(|l| l["spec"]["holderIdentity"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_converge_and_go_and_readiness_follows_initialization() {
    let api = api_server(ApiServerOptions::default()).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let web = seed_service(&api, "web", "10.1.0.5");
    let (controller, observatory) = start(&api.url(), options(&cloud, None));
    eventually("web converges", || converged(&api, &cloud, "web", &web)).await;
    controller.wait_for(|s| s.is_settled()).await.unwrap();
    assert!(observatory.readiness().is_ok(), "{:?}", observatory.readiness());
    assert_eq!(controller.state().sessions, 1);

    let api_uid = seed_service(&api, "api", "10.1.0.6");
    eventually("api converges", || converged(&api, &cloud, "api", &api_uid)).await;
    delete_service(&api, "web");
    eventually("web's cloud resources and object go", || gone(&api, &cloud, "web", &web)).await;
    assert!(converged(&api, &cloud, "api", &api_uid));
    assert_eq!(lb_count(&cloud), 1);
    controller.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_finishes_what_happened_while_it_was_down() {
    let api = api_server(ApiServerOptions::default()).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let web = seed_service(&api, "web", "10.1.0.5");
    let db = seed_service(&api, "db", "10.1.0.7");
    let (first, _) = start(&api.url(), options(&cloud, None));
    eventually("both converge", || converged(&api, &cloud, "web", &web) && converged(&api, &cloud, "db", &db)).await;
    first.wait_for(|s| s.is_settled()).await.unwrap();
    first.kill();

    // While nobody watches: web is deleted (its finalizers keep it Terminating) and a new one comes.
    delete_service(&api, "web");
    assert!(get_service(&api, "web").is_some_and(|s| s["metadata"]["deletionTimestamp"].is_string()));
    let cache = seed_service(&api, "cache", "10.1.0.8");

    let (second, _) = start(&api.url(), options(&cloud, None));
    eventually("web is cleaned up", || gone(&api, &cloud, "web", &web)).await;
    eventually("cache converges", || converged(&api, &cloud, "cache", &cache)).await;
    second.wait_for(|s| s.is_settled()).await.unwrap();
    assert!(converged(&api, &cloud, "db", &db), "db is adopted, not re-created or swept");
    assert_eq!(lb_count(&cloud), 2, "one load balancer per live Service: {}", cloud.inventory());
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_mid_run_loses_nothing() {
    let api = api_server(ApiServerOptions::default()).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let web = seed_service(&api, "web", "10.1.0.5");
    let (controller, _) = start(&api.url(), options(&cloud, None));
    eventually("web converges", || converged(&api, &cloud, "web", &web)).await;

    // The server goes away (watches and connections drop); its store, like etcd, stays.
    let addr = api.addr();
    let store = api.api().clone();
    api.shutdown().await;
    delete_service_in(&store, "web");
    let db = seed_service_in(&store, "db", "10.1.0.7");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = serve_api(rebind(addr).await, store).await.expect("serve the API server again");
    eventually("web is cleaned up after the restart", || gone(&api, &cloud, "web", &web)).await;
    eventually("db converges after the restart", || converged(&api, &cloud, "db", &db)).await;
    assert_eq!(lb_count(&cloud), 1);
    controller.shutdown().await.unwrap();
}

/// Binds the port a server just left (retrying while the kernel releases it).
async fn rebind(addr: std::net::SocketAddr) -> TcpListener {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_and_410_relists_converge_without_a_second_resource() {
    let plan = FaultPlan::parse(
        r#"{"seed": 11, "until_ms": 20000, "rules": [
            {"request": "WATCH *", "rate": 0.5, "drop_after_ms": [50, 400]},
            {"request": "WATCH services", "rate": 0.3, "status": 410},
            {"request": "WATCH endpointslices", "rate": 0.3, "status": 410}]}"#,
    )
    .unwrap();
    let api = api_server(ApiServerOptions { faults: Some(plan), ..ApiServerOptions::default() }).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let (controller, observatory) = start(&api.url(), options(&cloud, None));
    let mut uids = Vec::new();
    for i in 0..6 {
        uids.push((format!("svc-{i}"), seed_service(&api, &format!("svc-{i}"), &format!("10.1.0.{}", 10 + i))));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    delete_service(&api, "svc-0");
    for (name, uid) in &uids[1..] {
        eventually(&format!("{name} converges"), || converged(&api, &cloud, name, uid)).await;
    }
    eventually("svc-0 goes", || gone(&api, &cloud, "svc-0", &uids[0].1)).await;
    controller.wait_for(|s| s.is_settled()).await.unwrap();
    let state = controller.state();
    assert!(state.watch.relists.values().sum::<u64>() + state.watch.errors.values().sum::<u64>() > 0, "faults fired: {:?}", state.watch);
    // The restarts are on /metrics too, as the watch counted them.
    let metrics = observatory.render_metrics();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("difftracker_host_watch_relists_total{") || l.starts_with("difftracker_host_watch_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(counted > 0, "watch relists and errors exported: {metrics}");
    assert_eq!(lb_count(&cloud), 5);
    // A watch that restarts never makes the engine start an operation twice: one load balancer
    // PUT per Service (the emulator answers synchronously, nothing failed).
    let calls = observatory.calls("t1");
    assert_eq!(calls.get("PUT loadBalancers").map(|c| c.started), Some(6), "{calls:?}");
    controller.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizer_writes_survive_a_conflicting_writer() {
    let api = api_server(ApiServerOptions::default()).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let web = seed_service(&api, "web", "10.1.0.5");
    // Another writer keeps changing the Service's labels while the controller works on it.
    let (stop_tx, mut stop) = watch::channel(false);
    let store = api.api().clone();
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !*stop.borrow() {
            n += 1;
            let _ = store.write(|s| {
                let mut svc = s.get(Kind::Service, "default", "web")?;
                svc["metadata"]["labels"] = json!({"touched": n.to_string()});
                s.update(Kind::Service, "default", "web", svc, Subresource::Main)
            });
            tokio::select! { _ = tokio::time::sleep(Duration::from_millis(2)) => {}, _ = stop.changed() => {} }
        }
        n
    });
    let (controller, _) = start(&api.url(), options(&cloud, None));
    eventually("web converges under a competing writer", || converged(&api, &cloud, "web", &web)).await;
    let _ = stop_tx.send(true);
    let writes = writer.await.unwrap();
    assert!(writes > 0);
    let labels = get_service(&api, "web").unwrap()["metadata"]["labels"].clone();
    assert!(labels["touched"].is_string(), "the other writer's change stays: {labels}");
    controller.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------ leader election

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_starts_calls_and_a_standby_takes_over_when_it_dies() {
    let api = api_server(ApiServerOptions::default()).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let web = seed_service(&api, "web", "10.1.0.5");
    let (a, a_obs) = start(&api.url(), options(&cloud, Some(lease("a"))));
    a.wait_for(|s| s.leading).await.unwrap();
    let (b, b_obs) = start(&api.url(), options(&cloud, Some(lease("b"))));
    eventually("web converges", || converged(&api, &cloud, "web", &web)).await;
    a.wait_for(|s| s.is_settled()).await.unwrap();
    assert_eq!(holder(&api), "a");
    assert!(!b.state().leading);
    assert_eq!(cloud_calls_started(&b_obs), 0, "a standby starts no call");
    let not_ready = b_obs.readiness().unwrap_err();
    assert!(not_ready.contains("standby"), "{not_ready}");
    assert!(a_obs.readiness().is_ok());

    // The leader dies without releasing; the standby waits out the lease, then leads.
    a.kill();
    let db = seed_service(&api, "db", "10.1.0.7");
    b.wait_for(|s| s.leading).await.unwrap();
    eventually("db converges under the new leader", || converged(&api, &cloud, "db", &db)).await;
    b.wait_for(|s| s.is_settled()).await.unwrap();
    assert_eq!(holder(&api), "b");
    assert!(converged(&api, &cloud, "web", &web), "the new leader adopts web");
    assert_eq!(lb_count(&cloud), 2);
    let lease = api.api().read(|s| s.get(Kind::Lease, "kube-system", "difftracker")).unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], json!(1), "{lease}");
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_releases_the_lease() {
    let api = api_server(ApiServerOptions::default()).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let (a, _) = start(&api.url(), options(&cloud, Some(lease("a"))));
    a.wait_for(|s| s.leading).await.unwrap();
    let (b, _) = start(&api.url(), options(&cloud, Some(lease("b"))));
    a.shutdown().await.unwrap();
    // Released: empty, unless the standby's next try already took it.
    let after = holder(&api);
    assert!(after.is_empty() || after == "b", "released on shutdown, not still a's: {after:?}");
    b.wait_for(|s| s.leading).await.unwrap();
    assert_eq!(holder(&api), "b");
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_starts() {
    let api = api_server(ApiServerOptions::default()).await;
    let cloud = emulator().await;
    seed_node(&api, "n1", "10.0.0.4");
    let web = seed_service(&api, "web", "10.1.0.5");
    let link = Partition::start(api.addr()).await.unwrap();
    let (a, a_obs) = start(&link.url(), options(&cloud, Some(lease("a"))));
    a.wait_for(|s| s.leading).await.unwrap();
    eventually("web converges", || converged(&api, &cloud, "web", &web)).await;
    a.wait_for(|s| s.is_settled()).await.unwrap();
    let (b, _) = start(&api.url(), options(&cloud, Some(lease("b"))));

    // When each side changed, on one clock.
    let a_stopped = when(a.subscribe(), |s| !s.leading);
    let b_started = when(b.subscribe(), |s| s.leading);
    link.set_cut(true);
    let a_stopped = a_stopped.await.unwrap();
    let calls_when_fenced = cloud_calls_started(&a_obs);
    let b_started = b_started.await.unwrap();
    assert!(a_stopped < b_started, "the cut-off leader stops starting calls before the standby leads");
    let db = seed_service(&api, "db", "10.1.0.7");
    eventually("db converges under the new leader", || converged(&api, &cloud, "db", &db)).await;
    assert_eq!(cloud_calls_started(&a_obs), calls_when_fenced, "the fenced replica started nothing after it stopped leading");
    assert_eq!(holder(&api), "b");
    a.kill();
    b.shutdown().await.unwrap();
}

/// The instant `state` first satisfies `done`.
fn when(
    mut state: watch::Receiver<controller::ControllerState>,
    done: impl Fn(&controller::ControllerState) -> bool + Send + Sync + 'static,
) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(PATIENCE, state.wait_for(|s| done(s))).await.expect("the state changes in time");
        Instant::now()
    })
}
