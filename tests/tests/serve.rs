//! The multi-tenant host (`difftracker_runtime::serve`, what `difftracker serve` runs) over real
//! HTTP: tenants from a TOML configuration on the embedded emulator and in-repo API servers,
//! each ending exactly as its own cluster implies; reloads that add, remove and restart tenants
//! (and an invalid file that changes nothing); the admin API behind its token; credentials that
//! cannot cross tenants (the emulator, given per-tenant tokens, refuses a tenant configured with
//! another's subscription); and an instance pool that refuses, clearly, an instance past its
//! slots. Waits are bounded only so that a broken build fails instead of hanging.

use difftracker_runtime::observe::Observatory;
use difftracker_runtime::serve::{ServeConfig, TenantHost, TenantPhase};
use difftracker_simulation::apiserver::{ApiServer, Kind};
use difftracker_simulation::emulator::{self, EmulatorAuth, EmulatorHandle, EmulatorOptions, EmulatorScope};
use difftracker_simulation::serve::SimulationProvisioner;
use difftracker_tests::cluster;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound of every wait; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(120);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difftracker-serve-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample_trace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-trace.jsonl")
}

fn write_config(dir: &Path, text: &str) -> ServeConfig {
    let path = dir.join("tenants.toml");
    std::fs::write(&path, text).unwrap();
    ServeConfig::load(&path).unwrap()
}

async fn start(dir: &Path, text: &str) -> (TenantHost, Arc<SimulationProvisioner>) {
    let config = write_config(dir, text);
    let provisioner = Arc::new(SimulationProvisioner::start(dir.join("state")).await.unwrap());
    let host = TenantHost::start(config, provisioner.clone(), Observatory::new()).await.unwrap();
    (host, provisioner)
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node `n1` (once) and a LoadBalancer Service with one ready endpoint on it; returns its UID.
fn seed_service(store: &ApiServer, name: &str, pod_ip: &str) -> String {
    if store.read(|s| s.get(Kind::Node, "", "n1")).is_err() {
        cluster::seed_node(store, "n1", "10.0.0.4");
    }
    cluster::seed_service(store, name, pod_ip)
}

async fn settled(host: &TenantHost, name: &str) -> bool {
    host.state(name).await.is_some_and(|s| s.is_settled())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_on_the_embedded_emulator_each_end_as_their_own_cluster_implies() {
    let dir = scratch("three");
    let text = format!(
        r#"
        [[tenant]]
        name = "shop"
        trace = "{}"
        trace_speed = 50.0

        [[tenant]]
        name = "lab"
        cluster = "embedded"
        memory_mib = 128

        [[tenant]]
        name = "tiny"
        cluster = "embedded"
        operations_in_flight = 1
        calls_in_flight = 1
        "#,
        sample_trace().display()
    );
    let (host, sim) = start(&dir, &text).await;
    let lab = sim.cluster_of("lab").expect("lab's cluster");
    let tiny = sim.cluster_of("tiny").expect("tiny's cluster");
    for i in 0..3 {
        seed_service(&lab, &format!("web-{i}"), &format!("10.244.0.{}", 10 + i));
        seed_service(&tiny, &format!("api-{i}"), &format!("10.244.1.{}", 10 + i));
    }
    eventually("shop's trace is played out", || async { sim.trace_played("shop") == Some(true) }).await;
    for name in ["shop", "lab", "tiny"] {
        eventually(&format!("{name} settles with its oracle holding"), || async {
            settled(&host, name).await && sim.oracle(name).is_some_and(|d| d.is_empty())
        })
        .await;
    }
    assert!(host.state("shop").await.unwrap().tenant.unwrap().ticks > 10, "shop worked through its trace");
    // Each tenant's resource group holds its own Services' load balancers and no other's.
    let config = host.config();
    let subscriptions: std::collections::BTreeSet<&str> = config.tenants.iter().map(|t| t.azure.config.subscription_id.as_str()).collect();
    assert_eq!(subscriptions.len(), 3, "one subscription per tenant");
    let views = host.tenants().await;
    assert!(views.iter().all(|v| v.phase == TenantPhase::Running && v.restarts == 0), "{views:?}");
    // The kubeconfig written for an embedded cluster reaches it.
    assert!(sim.kubeconfig_of("lab").exists());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_restarts_tenants_and_an_invalid_file_changes_nothing() {
    let dir = scratch("reload");
    let (host, sim) = start(
        &dir,
        r#"
        [[tenant]]
        name = "alpha"
        cluster = "embedded"
        [[tenant]]
        name = "beta"
        cluster = "embedded"
        [[tenant]]
        name = "gamma"
        cluster = "embedded"
        "#,
    )
    .await;
    for name in ["alpha", "beta", "gamma"] {
        eventually(&format!("{name} settles"), || settled(&host, name)).await;
    }
    let gamma_sessions = host.state("gamma").await.unwrap().sessions;

    // alpha removed, beta changed, gamma unchanged, delta added.
    let next = write_config(
        &dir,
        r#"
        [[tenant]]
        name = "beta"
        cluster = "embedded"
        calls_in_flight = 3
        [[tenant]]
        name = "gamma"
        cluster = "embedded"
        [[tenant]]
        name = "delta"
        cluster = "embedded"
        "#,
    );
    let report = host.reload(next).await.expect("a valid file reloads");
    assert_eq!(report.removed, ["alpha"]);
    assert_eq!(report.restarted, ["beta"]);
    assert_eq!(report.unchanged, ["gamma"]);
    assert_eq!(report.added, ["delta"]);
    assert!(report.needs_process_restart.is_empty());
    assert!(host.tenant("alpha").await.is_none(), "a removed tenant is gone");
    assert!(sim.cluster_of("alpha").is_none(), "its embedded cluster went with it");
    let seeded = sim.cluster_of("delta").expect("delta's cluster");
    seed_service(&seeded, "new", "10.244.2.10");
    eventually("delta converges its Service", || async {
        settled(&host, "delta").await && sim.oracle("delta").is_some_and(|d| d.is_empty())
    })
    .await;
    eventually("beta settles after its restart", || settled(&host, "beta")).await;
    assert_eq!(host.state("gamma").await.unwrap().sessions, gamma_sessions, "an unchanged tenant is not touched");
    assert_eq!(host.config().tenant("beta").unwrap().limits.calls_in_flight, 3);

    // A file with a misspelt key is refused whole, naming the tenant and the key.
    std::fs::write(dir.join("tenants.toml"), "[[tenant]]\nname = \"beta\"\ncluster = \"embedded\"\ncals_in_flight = 2\n").unwrap();
    let e = host.reload_file().await.unwrap_err();
    assert!(e.contains("tenant 1 (\"beta\")") && e.contains("cals_in_flight"), "{e}");
    let names: Vec<String> = host.tenants().await.into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["beta", "delta", "gamma"], "the running configuration keeps running");
    host.shutdown().await;
}

async fn admin_call(client: &reqwest::Client, method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_pauses_resumes_restarts_swaps_and_rolls_back() {
    let dir = scratch("admin");
    let (host, _sim) = start(
        &dir,
        r#"
        [host]
        listen = "127.0.0.1:0"
        admin_token_file = "admin.token"
        [[tenant]]
        name = "one"
        cluster = "embedded"
        "#,
    )
    .await;
    let server = host.bind().await.expect("serve the admin API");
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    let base = format!("{}/admin", server.url());
    let client = reqwest::Client::new();
    eventually("one settles", || settled(&host, "one")).await;

    assert_eq!(admin_call(&client, "GET", &format!("{base}/tenants"), None, None).await.0, 401);
    assert_eq!(admin_call(&client, "GET", &format!("{base}/tenants"), Some("not-the-token"), None).await.0, 401);
    assert_eq!(admin_call(&client, "POST", &format!("{base}/tenants/one/pause"), Some(&token[1..]), None).await.0, 401);
    let (status, list) = admin_call(&client, "GET", &format!("{base}/tenants"), Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "one");
    assert_eq!(list[0]["phase"], "running");
    let (status, body) = admin_call(&client, "POST", &format!("{base}/tenants/nobody/restart"), Some(&token), None).await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("unknown_tenant")));

    let (status, paused) = admin_call(&client, "POST", &format!("{base}/tenants/one/pause"), Some(&token), None).await;
    assert_eq!((status, paused["phase"].as_str()), (200, Some("paused")));
    assert!(host.state("one").await.is_none(), "no engine runs while paused");
    assert_eq!(admin_call(&client, "POST", &format!("{base}/tenants/one/pause"), Some(&token), None).await.0, 409);
    let (status, resumed) = admin_call(&client, "POST", &format!("{base}/tenants/one/resume"), Some(&token), None).await;
    assert_eq!((status, resumed["phase"].as_str()), (200, Some("running")));
    eventually("one settles after resuming", || settled(&host, "one")).await;
    let (status, _) = admin_call(&client, "POST", &format!("{base}/tenants/one/restart"), Some(&token), None).await;
    assert_eq!(status, 200);
    eventually("one settles after restarting", || settled(&host, "one")).await;

    // A hot swap to a component file, then back.
    let before = host.tenant("one").await.unwrap().component_sha256.unwrap();
    let wasm = difftracker_runtime::engine_wasm_path();
    let (status, swapped) =
        admin_call(&client, "POST", &format!("{base}/tenants/one/swap"), Some(&token), Some(json!({"component": wasm}))).await;
    assert_eq!(status, 200, "{swapped}");
    assert_eq!(swapped["component_sha256"].as_str(), Some(before.as_str()), "the same engine, from its file");
    assert_eq!(host.tenant("one").await.unwrap().rollback_to.as_deref(), Some(before.as_str()));
    let (status, _) = admin_call(&client, "POST", &format!("{base}/tenants/one/rollback"), Some(&token), None).await;
    assert_eq!(status, 200);
    let (status, body) = admin_call(&client, "POST", &format!("{base}/tenants/one/rollback"), Some(&token), None).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("wrong_phase")), "nothing left to roll back to: {body}");
    let not_wasm = dir.join("not.wasm");
    std::fs::write(&not_wasm, b"not a component").unwrap();
    let (status, body) =
        admin_call(&client, "POST", &format!("{base}/tenants/one/swap"), Some(&token), Some(json!({"component": not_wasm}))).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("build")), "{body}");
    assert_eq!(host.tenant("one").await.unwrap().phase, TenantPhase::Running, "a refused swap changes nothing");
    let metrics = client.get(format!("{}/metrics", server.url())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"difftracker_host_engine_swaps_total{tenant="one",result="ok"} 2"#), "the swap and the rollback: {metrics}");
    assert!(metrics.contains(r#"difftracker_host_engine_swaps_total{tenant="one",result="refused"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"difftracker_host_engine_swaps_total{tenant="one",result="forced"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"difftracker_host_engine_rollbacks_total{tenant="one"} 1"#), "{metrics}");
    let checkpoint = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"difftracker_host_checkpoint_bytes{tenant="one"} "#))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(checkpoint.is_some_and(|b| b > 0), "the tenant's checkpoint size: {metrics}");
    // The status page names the component each tenant runs.
    let status: Value = client.get(format!("{}/status.json", server.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["tenants"]["one"]["component_sha256"].as_str(), Some(before.as_str()), "{status}");
    assert_eq!(status["tenants"]["one"]["wit"], "clb:difftracker@0.3.0", "the running instance's generation: {status}");
    // Host metrics beside the engine's: call latency by kind, the pool, guest memory.
    assert!(metrics.contains(r#"difftracker_host_call_duration_seconds_count{tenant="one",call="GET publicIPAddresses"}"#), "{metrics}");
    assert!(metrics.contains("difftracker_host_instance_slots_free "), "{metrics}");
    // The pool gauges follow the instances within a second.
    eventually("the guest memory gauge shows the running engine", || async {
        let metrics = client.get(format!("{}/metrics", server.url())).send().await.unwrap().text().await.unwrap();
        let guest =
            metrics.lines().find_map(|l| l.strip_prefix("difftracker_host_guest_memory_bytes ")).and_then(|v| v.parse::<u64>().ok());
        guest.is_some_and(|b| b > 0)
    })
    .await;

    // A reload through the admin API; an invalid file is a 400 that changes nothing.
    std::fs::write(
        dir.join("tenants.toml"),
        "[host]\nlisten = \"127.0.0.1:0\"\nadmin_token_file = \"admin.token\"\n[[tenant]]\nname = \"one\"\n",
    )
    .unwrap();
    let (status, body) = admin_call(&client, "POST", &format!("{base}/reload"), Some(&token), None).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("invalid_configuration")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("no cluster"), "{body}");
    let (_, quarantined) = admin_call(&client, "GET", &format!("{base}/tenants/one/quarantined"), Some(&token), None).await;
    assert_eq!(quarantined, json!([]));

    // The token is never shown.
    let page = client.get(server.url()).send().await.unwrap().text().await.unwrap();
    let listing = serde_json::to_string(&list).unwrap();
    assert!(!page.contains(&token) && !listing.contains(&token));
    server.shutdown().await;
    host.shutdown().await;
}

/// An emulator serving two subscriptions, each only to its own principal's token.
async fn scoped_emulator() -> EmulatorHandle {
    let scope = |sub: &str, rg: &str| EmulatorScope {
        subscription: sub.into(),
        resource_group: rg.into(),
        location: "eastus2".into(),
        vnet_name: "vnet".into(),
    };
    let tokens =
        [("token-of-a", "sub-a"), ("token-of-b", "sub-b")].into_iter().map(|(t, s)| (t.to_string(), vec![s.to_string()])).collect();
    let options = EmulatorOptions {
        scope: scope("sub-a", "rg-a"),
        extra_scopes: vec![scope("sub-b", "rg-b")],
        auth: EmulatorAuth::PerSubscription(tokens),
        ..EmulatorOptions::default()
    };
    emulator::serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), options).await.unwrap()
}

fn load_balancers(emulator: &EmulatorHandle, sub: &str, rg: &str) -> Vec<String> {
    let inventory = emulator.emulator().inventory_of(&difftracker_simulation::emulator::ScopeKey::new(sub, rg));
    inventory["load_balancers"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_cross_tenants_and_another_tenants_subscription_is_refused_with_403() {
    let dir = scratch("scope");
    let emulator = scoped_emulator().await;
    std::fs::write(dir.join("a.token"), "token-of-a\n").unwrap();
    std::fs::write(dir.join("b.token"), "token-of-b\n").unwrap();
    let tenant = |name: &str, sub: &str, rg: &str, token: &str| {
        format!(
            "[[tenant]]\nname = \"{name}\"\ncluster = \"embedded\"\narm_endpoint = \"{}\"\nsubscription = \"{sub}\"\nresource_group = \"{rg}\"\n\
             location = \"eastus2\"\nvnet = \"vnet\"\ntoken_file = \"{token}\"\n",
            emulator.base_url()
        )
    };
    // mallory holds a's token but is configured with b's subscription.
    let text =
        [tenant("a", "sub-a", "rg-a", "a.token"), tenant("b", "sub-b", "rg-b", "b.token"), tenant("mallory", "sub-b", "rg-b", "a.token")]
            .concat();
    let (host, sim) = start(&dir, &text).await;
    let a_uid = seed_service(&sim.cluster_of("a").unwrap(), "web", "10.244.0.10");
    let b_uid = seed_service(&sim.cluster_of("b").unwrap(), "web", "10.244.0.11");
    // (Each in-repo API server numbers its UIDs from the same start: only counts tell tenants apart.)
    seed_service(&sim.cluster_of("mallory").unwrap(), "steal", "10.244.0.12");
    eventually("a and b converge in their own subscriptions", || async {
        settled(&host, "a").await
            && settled(&host, "b").await
            && load_balancers(&emulator, "sub-a", "rg-a").contains(&a_uid)
            && load_balancers(&emulator, "sub-b", "rg-b").contains(&b_uid)
    })
    .await;
    eventually("mallory's start-up is refused by the emulator", || async {
        host.state("mallory").await.and_then(|s| s.tenant).and_then(|t| t.engine.initialization.error).is_some_and(|e| e.contains("403"))
    })
    .await;
    let error = host.state("mallory").await.unwrap().tenant.unwrap().engine.initialization.error.unwrap();
    assert!(error.contains("AuthorizationFailed"), "{error}");
    assert!(!settled(&host, "mallory").await, "mallory never initializes");
    assert_eq!(load_balancers(&emulator, "sub-a", "rg-a"), [a_uid], "sub-a holds a's load balancer only");
    assert_eq!(load_balancers(&emulator, "sub-b", "rg-b"), [b_uid], "sub-b holds b's load balancer only, none of mallory's");
    // Nobody shows a token: not the admin listing, not the status page.
    let views = serde_json::to_string(&host.tenants().await).unwrap();
    let page = host.observatory().status_page();
    for secret in ["token-of-a", "token-of-b"] {
        assert!(!views.contains(secret) && !page.contains(secret), "{secret} shown");
    }
    host.shutdown().await;
}

#[test]
fn a_runtime_refuses_an_instance_past_its_slots_with_a_clear_error_and_frees_the_slot_on_drop() {
    use difftracker_runtime::driver::{CallIds, WasmEngine};
    use difftracker_runtime::wasm::{Runtime, RuntimeOptions, SandboxLimits};
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 2,
        cache_dir: Some(difftracker_tests::test_cache_dir()),
        ..RuntimeOptions::default()
    })
    .unwrap();
    let component = runtime.load_builtin().unwrap();
    let first = WasmEngine::new(&component, CallIds::default()).unwrap();
    let _second = WasmEngine::new(&component, CallIds::default()).unwrap();
    assert_eq!(runtime.free_slots(), 0);
    let e = WasmEngine::new(&component, CallIds::default()).err().expect("no third slot").to_string();
    assert!(e.contains("no instance slot free") && e.contains("all 2 slots"), "{e}");
    drop(first);
    assert_eq!(runtime.free_slots(), 1);
    WasmEngine::new(&component, CallIds::default()).expect("a slot is free again");
    // A tenant's own limits live within the runtime's: more guest memory than a slot holds is refused.
    let big = SandboxLimits { memory_bytes: 1024 << 20, ..SandboxLimits::default() };
    let e = WasmEngine::with_limits(&component, CallIds::default(), &big).err().expect("too big").to_string();
    assert!(e.contains("above the runtime's 512 MiB"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_tenant_is_stopped_with_its_reason_and_restartable_while_the_others_converge() {
    let dir = scratch("noisy");
    let (host, sim) = start(
        &dir,
        r#"
        [[tenant]]
        name = "good"
        cluster = "embedded"
        [[tenant]]
        name = "noisy"
        cluster = "embedded"
        component = "builtin:misbehaving"
        cpu_deadline_ms = 50
        memory_mib = 32
        "#,
    )
    .await;
    let good = sim.cluster_of("good").unwrap();
    seed_service(&good, "web", "10.244.0.10");
    eventually("noisy is stopped after its sessions fail in a row", || async {
        host.tenant("noisy").await.is_some_and(|t| t.phase == TenantPhase::Stopped)
    })
    .await;
    let noisy = host.tenant("noisy").await.unwrap();
    assert_eq!(noisy.failed_sessions, difftracker_runtime::serve::MAX_FAILED_SESSIONS);
    let reason = noisy.reason.unwrap();
    assert!(reason.contains("CPU deadline of 50 ms"), "the reason says what happened: {reason}");
    let readiness = host.observatory().readiness().unwrap_err();
    assert!(readiness.contains("tenant noisy"), "a stopped tenant is loud on /readyz: {readiness}");
    // Meanwhile the healthy tenant converged, and keeps converging.
    seed_service(&good, "db", "10.244.0.11");
    eventually("good converges both Services", || async {
        settled(&host, "good").await && sim.oracle("good").is_some_and(|d| d.is_empty())
    })
    .await;
    assert_eq!(host.tenant("good").await.unwrap().failed_sessions, 0);
    // An admin restart starts it again, from a clean count.
    let restarted = host.restart("noisy").await.unwrap();
    assert_eq!(restarted.phase, TenantPhase::Running);
    assert_eq!(restarted.failed_sessions, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_arm_request_of_one_service_carries_its_correlation_id_and_the_emulator_answers_it() {
    use difftracker_runtime::correlation::CorrelationId;
    let dir = scratch("correlation");
    let (host, sim) = start(&dir, "[[tenant]]\nname = \"lab\"\ncluster = \"embedded\"\n").await;
    let uid = seed_service(&sim.cluster_of("lab").unwrap(), "web", "10.244.0.10");
    eventually("web converges", || async { settled(&host, "lab").await && sim.oracle("lab").is_some_and(|d| d.is_empty()) }).await;
    let expected = CorrelationId::of_subject("lab", &uid).to_string();
    let requests = sim.emulator().emulator().recent_requests();
    let of_web: Vec<_> = requests.iter().filter(|r| r.path.contains(&uid)).collect();
    let kinds: std::collections::BTreeSet<&str> = of_web.iter().map(|r| r.path.split('/').nth(7).unwrap_or("")).collect();
    assert!(kinds.contains("publicIPAddresses") && kinds.contains("loadBalancers"), "web's public IP and load balancer: {kinds:?}");
    for r in &of_web {
        assert_eq!(r.client_request_id.as_deref(), Some(expected.as_str()), "{r:?}");
        assert_eq!(r.request_id, expected, "answered back as x-ms-request-id: {r:?}");
    }
    // The start-up lists serve no single Service: each has an id of its own.
    let lists: Vec<_> = requests.iter().filter(|r| r.method == "GET" && !r.path.contains(&uid)).collect();
    assert!(!lists.is_empty());
    assert!(lists.iter().all(|r| r.client_request_id.is_some() && r.client_request_id.as_deref() != Some(expected.as_str())), "{lists:?}");
    host.shutdown().await;
}
