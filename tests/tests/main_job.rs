//! The main job (`difftracker` with no subcommand), in-process: a small generated trace played
//! through the simulated cluster into a real tenant whose cloud calls go over HTTP to the
//! in-process emulator, with the wasm and the native engine. It converges, the oracle holds, the
//! summary agrees with the emulator's inventory (fetched over HTTP), and the observability
//! endpoints answer while it serves. No assertion depends on timing; waits are bounded only so
//! that a broken build fails instead of hanging.

use difftracker_runtime::driver::EngineKind;
use difftracker_runtime::driver::NativeEngine;
use difftracker_runtime::executor::{Backends, Executor, SystemClock, DEFAULT_GLOBAL_CAP};
use difftracker_runtime::observe::{self, Observatory};
use difftracker_runtime::tenant::TenantOptions;
use difftracker_simulation::live::{self, LiveOptions, TENANT};
use difftracker_simulation::mock::MockWorld;
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions};
use difftracker_simulation::replay::{parse_trace, Trace};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Bound of every wait; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(120);

fn small_trace(seed: u64) -> Trace {
    let mut buf = Vec::new();
    let opts = GenOptions { services: 10, nodes: 3, churn: Churn::High, seed, endpoints: 4, ..GenOptions::default() };
    write_trace(&opts, &mut buf).expect("generate a trace");
    parse_trace(&buf).expect("parse the generated trace")
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_else(|e| panic!("GET {url}: body: {e}")))
}

/// Polls `url` until it answers `want`; panics with the last answer after [`PATIENCE`].
async fn wait_for_status(client: &reqwest::Client, url: &str, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(client, url).await;
        if status == want {
            return body;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("GET {url} still answers {status} (not {want}): {body}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn len(v: &Value, field: &str) -> usize {
    match &v[field] {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        other => panic!("inventory field {field} is {other}"),
    }
}

/// The samples of a metric family in a `/metrics` text (lines starting with `name{` or `name `).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))).collect()
}

async fn main_job_converges(engine: EngineKind, seed: u64) {
    let trace = small_trace(seed);
    let events = trace.events.len();
    let mut options = LiveOptions::for_trace(trace, engine);
    options.speed = 100.0;
    options.timeout = PATIENCE;
    let run = live::start(options).await.expect("the main job starts");
    let url = run.observe_url();
    let client = reqwest::Client::new();

    // While it runs: alive at once, ready once the tenant has ticked.
    let (status, body) = get(&client, &format!("{url}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let ready = wait_for_status(&client, &format!("{url}/readyz"), 200).await;
    assert!(ready.contains("ready"), "{ready}");
    let first_ticks = run.observatory().status_page();
    assert!(first_ticks.contains(&format!("tenant {TENANT} ({} engine)", engine.as_str())), "{first_ticks}");

    let finished = run.finish().await.expect("the main job ends");
    let s = &finished.summary;
    let table = s.table();
    assert!(s.converged, "did not converge:\n{table}");
    assert!(s.oracle_differences.is_empty(), "oracle:\n{table}");
    assert!(s.ok());
    assert_eq!(s.trace_events_played, events, "{table}");
    assert!(table.contains("oracle OK"), "{table}");

    // The summary's counts are the emulator's inventory, read over HTTP.
    let (status, body) = get(&client, &format!("{}/_emulator/inventory", finished.emulator_url())).await;
    assert_eq!(status, 200, "{body}");
    let inventory: Value = serde_json::from_str(&body).expect("inventory JSON");
    assert_eq!(s.public_ips, len(&inventory, "public_ips"), "{table}");
    assert_eq!(s.load_balancers, len(&inventory, "load_balancers"), "{table}");
    assert_eq!(s.nat_gateways, len(&inventory, "nat_gateways"), "{table}");
    assert_eq!(s.registrations, len(&inventory, "sgw_services"), "{table}");
    let mapped: usize =
        inventory["address_locations"].as_object().expect("address_locations").values().map(|a| a.as_object().map_or(0, |m| m.len())).sum();
    assert_eq!(s.mapped_addresses, mapped, "{table}");
    // ... and agree with what the engine did: one public IP and one registration per load
    // balancer, beside the pre-existing ones. (Created minus deleted operations need not equal
    // the load balancers: how churn interleaves with the calls depends on timing.)
    assert!(s.load_balancers > 0 && s.services_created > 0, "{table}");
    assert_eq!(s.public_ips - len(&s.baseline, "public_ips"), s.load_balancers, "{table}");
    assert_eq!(s.registrations - len(&s.baseline, "sgw_services"), s.load_balancers, "{table}");
    assert_eq!(s.cloud_calls["PUT loadBalancers"].failed, 0, "{table}");

    // Still serving after the run: metrics with the engine's samples under a tenant label.
    let (status, metrics) = get(&client, &format!("{url}/metrics")).await;
    assert_eq!(status, 200);
    let ops = samples(&metrics, "difftracker_engine_service_operations_total");
    assert!(!ops.is_empty(), "no difftracker_engine_service_operations_total in:\n{metrics}");
    assert!(ops.iter().all(|l| l.contains(&format!("tenant=\"{TENANT}\""))), "{ops:#?}");
    assert!(ops.iter().any(|l| l.contains("operation=\"create\"") && l.contains("result=\"success\"")), "{ops:#?}");
    // Host metrics: the calls counted there are the summary's.
    let puts = samples(&metrics, "difftracker_host_calls_started_total")
        .into_iter()
        .find(|l| l.contains("call=\"PUT loadBalancers\"") && l.contains(&format!("tenant=\"{TENANT}\"")))
        .unwrap_or_else(|| panic!("no started PUT loadBalancers in:\n{metrics}"));
    let value: u64 = puts.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("value of {puts}"));
    assert_eq!(value, s.cloud_calls["PUT loadBalancers"].started);
    assert!(!samples(&metrics, "difftracker_host_tick_duration_seconds_count").is_empty(), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    let (status, _) = get(&client, &format!("{url}/readyz")).await;
    assert_eq!(status, 200);
    let (status, page) = get(&client, &format!("{url}/")).await;
    assert_eq!(status, 200);
    assert!(page.contains("operations by state") && page.contains("created="), "{page}");
    assert!(page.contains("main job finished"), "{page}");
    finished.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn main_job_converges_with_the_wasm_engine() {
    main_job_converges(EngineKind::Wasm, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn main_job_converges_with_the_native_engine() {
    main_job_converges(EngineKind::Native, 4).await;
}

/// The bundled sample trace parses into the main job's options.
#[test]
fn options_read_the_bundled_trace() {
    let sample = LiveOptions::sample().expect("bundled trace");
    assert!(sample.trace.events.len() > 100);
    assert!(sample.trace.skipped.is_empty());
}

/// A bad speed is refused before anything starts.
#[tokio::test]
async fn a_bad_speed_is_refused() {
    for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut options = LiveOptions::for_trace(small_trace(1), EngineKind::Native);
        options.speed = speed;
        let err = live::start(options).await.err().expect("refused");
        assert!(err.to_string().contains("--speed"), "{err}");
    }
}

/// `/readyz` is 503 with no tenant and with a tenant whose engine failed; `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_tenants() {
    let observatory = Observatory::new();
    let server = observe::bind("127.0.0.1:0".parse().unwrap(), observatory.clone()).await.expect("serve");
    let url = server.url();
    let client = reqwest::Client::new();
    let (status, body) = get(&client, &format!("{url}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(get(&client, &format!("{url}/healthz")).await.0, 200);

    // An engine never created: its first tick fails and the tenant stops on the error.
    let world = MockWorld::new();
    let executor = Executor::new(Arc::new(SystemClock), DEFAULT_GLOBAL_CAP);
    let tenant = observatory.spawn_tenant(
        &executor,
        TenantOptions::new("broken"),
        Box::new(NativeEngine::new(Default::default())),
        Backends { cloud: world.cloud(), kube: world.kube() },
        None,
    );
    let body = wait_for_status(&client, &format!("{url}/readyz"), 503).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !tenant.status().stopped {
        assert!(tokio::time::Instant::now() < deadline, "the broken tenant never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body2) = get(&client, &format!("{url}/readyz")).await;
    assert_eq!(status, 503, "{body} / {body2}");
    assert!(body2.contains("broken") && body2.contains("error"), "{body2}");
    assert_eq!(get(&client, &format!("{url}/healthz")).await.0, 200);
    let (_, metrics) = get(&client, &format!("{url}/metrics")).await;
    assert!(
        samples(&metrics, "difftracker_host_tenant_up").iter().any(|l| l.contains("tenant=\"broken\"") && l.ends_with(" 0")),
        "{metrics}"
    );
    server.shutdown().await;
}

/// The main job serves the admin API's swap and rollback with `--admin-token-file`, under the
/// same token rule as `serve`: a hot swap to a component file while the trace plays, a rollback,
/// and the run still converges with the oracle holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_main_job_hot_swaps_and_rolls_back_over_its_admin_api() {
    let dir = std::env::temp_dir().join(format!("difftracker-main-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    let mut options = LiveOptions::for_trace(small_trace(3), EngineKind::Wasm);
    options.speed = 20.0;
    options.timeout = PATIENCE;
    options.admin_token_file = Some(token_file.clone());
    let run = live::start(options).await.expect("the main job starts");
    let url = run.observe_url();
    let client = reqwest::Client::new();
    let token = std::fs::read_to_string(&token_file).expect("the token file was created").trim().to_string();
    wait_for_status(&client, &format!("{url}/readyz"), 200).await;

    let post = |path: String, body: Option<Value>, token: Option<String>| {
        let client = client.clone();
        async move {
            let mut request = client.post(path);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            if let Some(b) = body {
                request = request.json(&b);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let base = format!("{url}/admin/tenants");
    let wasm = difftracker_runtime::engine_wasm_path();
    let body = serde_json::json!({ "component": wasm });
    assert_eq!(post(format!("{base}/{TENANT}/swap"), Some(body.clone()), None).await.0, 401, "no token, no swap");
    assert_eq!(post(format!("{base}/{TENANT}/swap"), Some(body.clone()), Some("wrong".into())).await.0, 401);

    let listed: Value = client.get(&base).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let bundled = listed[0]["component_sha256"].as_str().expect("the bundled component's hash").to_string();
    assert_eq!(listed[0]["name"], TENANT);
    let (status, swapped) = post(format!("{base}/{TENANT}/swap"), Some(body), Some(token.clone())).await;
    assert_eq!(status, 200, "{swapped}");
    assert_eq!(swapped["component_sha256"].as_str(), Some(bundled.as_str()), "the same engine, from its file");
    assert!(swapped["pause_ms"].as_f64().is_some(), "{swapped}");
    let (status, rolled) = post(format!("{base}/{TENANT}/rollback"), None, Some(token.clone())).await;
    assert_eq!(status, 200, "{rolled}");
    let (status, again) = post(format!("{base}/{TENANT}/rollback"), None, Some(token.clone())).await;
    assert_eq!((status, again["reason"].as_str()), (409, Some("wrong_phase")), "nothing left to roll back to: {again}");
    let (status, pause) = post(format!("{base}/{TENANT}/pause"), None, Some(token.clone())).await;
    assert_eq!((status, pause["reason"].as_str()), (404, Some("unknown_action")), "{pause}");

    let finished = run.finish().await.expect("the main job ends");
    assert!(finished.summary.ok(), "{}", finished.summary.table());
    let (_, metrics) = get(&client, &format!("{url}/metrics")).await;
    assert!(metrics.contains(&format!("difftracker_host_engine_swaps_total{{tenant=\"{TENANT}\",result=\"ok\"}} 2")), "{metrics}");
    finished.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
