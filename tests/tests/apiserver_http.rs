//! The in-repo Kubernetes API server over real HTTP where kubectl and the Python client do not
//! reach: seeded faults from a fault file (429 with Retry-After, 500, 410 on a watch, dropped
//! watches, latency), bookmarks, the bounds (body size, watchers) and the errors a client sees
//! for an unsupported patch type or a path that is not served.

use difftracker_simulation::apiserver::{serve, ApiServerHandle, ApiServerOptions, FaultPlan};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn server(options: ApiServerOptions) -> ApiServerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    serve(listener, options).await.expect("serve the API server")
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})
}

async fn create(url: &str, name: &str) -> reqwest::Response {
    reqwest::Client::new().post(format!("{url}/api/v1/namespaces/default/services")).json(&service(name)).send().await.unwrap()
}

/// Reads a watch until it ends (or the guard), returning its events.
async fn watch_events(url: &str, guard: Duration) -> (Vec<Value>, bool) {
    let mut resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + guard;
    let ended = loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(_) => break true,
            Err(_) => break false,
        }
    };
    (text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(), ended)
}

#[tokio::test]
async fn seeded_faults_answer_as_the_fault_file_says() {
    let plan = FaultPlan::parse(
        r#"{"seed": 1, "rules": [
            {"request": "PATCH services", "status": 429, "retry_after_s": 3},
            {"request": "LIST pods", "status": 500},
            {"request": "WATCH nodes", "status": 410},
            {"request": "WATCH services", "drop_after_ms": [200, 300]},
            {"request": "GET leases", "latency_ms": [400, 400]}]}"#,
    )
    .unwrap();
    let api = server(ApiServerOptions { faults: Some(plan), ..Default::default() }).await;
    let url = api.url();
    assert_eq!(create(&url, "web").await.status(), 201);
    let http = reqwest::Client::new();

    let throttled = http
        .patch(format!("{url}/api/v1/namespaces/default/services/web"))
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"metadata":{"labels":{"a":"b"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "3");
    let status: Value = throttled.json().await.unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str(), status["details"]["retryAfterSeconds"].as_u64()),
        (Some("Status"), Some("TooManyRequests"), Some(3))
    );
    let web: Value = reqwest::get(format!("{url}/api/v1/namespaces/default/services/web")).await.unwrap().json().await.unwrap();
    assert!(web["metadata"].get("labels").is_none(), "a throttled patch changes nothing");

    let failed = reqwest::get(format!("{url}/api/v1/pods")).await.unwrap();
    assert_eq!(failed.status(), 500);
    assert_eq!(failed.json::<Value>().await.unwrap()["reason"], "InternalError");

    let (events, ended) = watch_events(&format!("{url}/api/v1/nodes?watch=true"), Duration::from_secs(10)).await;
    assert!(ended);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0]["type"].as_str(), events[0]["object"]["code"].as_u64()), (Some("ERROR"), Some(410)));
    assert_eq!(events[0]["object"]["reason"], "Expired");

    let started = Instant::now();
    let (events, ended) = watch_events(&format!("{url}/api/v1/namespaces/default/services?watch=1"), Duration::from_secs(20)).await;
    assert!(ended, "the dropped watch ended");
    assert!(started.elapsed() >= Duration::from_millis(200), "not before the drawn delay");
    assert_eq!(events.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(), ["ADDED"], "the current Service first");

    let started = Instant::now();
    assert_eq!(reqwest::get(format!("{url}/apis/coordination.k8s.io/v1/namespaces/default/leases/none")).await.unwrap().status(), 404);
    assert!(started.elapsed() >= Duration::from_millis(400), "the latency was added");
    api.shutdown().await;
}

#[tokio::test]
async fn watches_send_bookmarks_end_on_their_timeout_and_are_bounded() {
    let api = server(ApiServerOptions { bookmark_interval: Duration::from_millis(100), max_watchers: 1, ..Default::default() }).await;
    let url = api.url();
    assert_eq!(create(&url, "web").await.status(), 201);
    let watch_url = format!("{url}/api/v1/services?watch=true&resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=1");
    let first = tokio::spawn(async move { watch_events(&watch_url, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = reqwest::get(format!("{url}/api/v1/services?watch=true")).await.unwrap();
    assert_eq!(refused.status(), 429, "a second watch beyond max_watchers");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(create(&url, "db").await.status(), 201);
    let (events, ended) = first.await.unwrap();
    assert!(ended, "timeoutSeconds ended the watch");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"ADDED") && types.contains(&"BOOKMARK"), "{types:?}");
    let bookmark = events.iter().rfind(|e| e["type"] == "BOOKMARK").unwrap();
    assert_eq!(bookmark["object"]["kind"], "Service");
    assert!(bookmark["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap() >= 1);
    // The slot is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (events, _) = watch_events(&format!("{url}/api/v1/services?watch=true&timeoutSeconds=1"), Duration::from_secs(20)).await;
    assert_eq!(events.iter().filter(|e| e["type"] == "ADDED").count(), 2);
    api.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_unknown_patch_types_and_unserved_paths_are_status_errors() {
    let api = server(ApiServerOptions { max_body_bytes: 1024, ..Default::default() }).await;
    let url = api.url();
    let http = reqwest::Client::new();
    let mut big = service("big");
    big["metadata"]["annotations"] = json!({"a": "x".repeat(4096)});
    let too_big = http.post(format!("{url}/api/v1/namespaces/default/services")).json(&big).send().await.unwrap();
    assert_eq!(too_big.status(), 413);
    assert_eq!(too_big.json::<Value>().await.unwrap()["reason"], "RequestEntityTooLarge");
    assert_eq!(create(&url, "web").await.status(), 201);
    let apply = http
        .patch(format!("{url}/api/v1/namespaces/default/services/web"))
        .header("Content-Type", "application/apply-patch+yaml")
        .body("metadata: {}")
        .send()
        .await
        .unwrap();
    assert_eq!(apply.status(), 415);
    assert_eq!(apply.json::<Value>().await.unwrap()["reason"], "UnsupportedMediaType");
    let garbage = http.post(format!("{url}/api/v1/namespaces/default/services")).body("{not json").send().await.unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(garbage.json::<Value>().await.unwrap()["reason"], "BadRequest");
    let unserved = reqwest::get(format!("{url}/apis/apps/v1/deployments")).await.unwrap();
    assert_eq!(unserved.status(), 404);
    assert_eq!(unserved.json::<Value>().await.unwrap()["kind"], "Status");
    let discovery: Value = reqwest::get(format!("{url}/apis")).await.unwrap().json().await.unwrap();
    let groups: Vec<&str> = discovery["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(groups, ["discovery.k8s.io", "events.k8s.io", "coordination.k8s.io"]);
    api.shutdown().await;
}
