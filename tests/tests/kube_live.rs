//! The host's live Kubernetes side (`difftracker_runtime::k8s::{watch, client}`) over real HTTP
//! against the in-repo API server, through a `kube::Client`: the initial lists and their one
//! marker, watch events, a `410 Gone` relist that sends only the gap's differences, UID-guarded
//! finalizer patches and their NotFound / Replaced outcomes, a conflict retried, the ingress
//! status patch keeping another writer's hostname, and repeated Events folded into a series.

use difftracker_engine::io::{
    CallOutput, ErrorKind, EventType, KubeCall, KubeEvent, KubeEventRecord, LoadBalancerIngress, ObjectKind, ObjectRef,
};
use difftracker_engine::names::{EGRESS_LABEL, POD_FINALIZER, SERVICE_FINALIZERS};
use difftracker_runtime::backend::KubeBackend;
use difftracker_runtime::k8s::kube;
use difftracker_runtime::k8s::{ClusterWatch, KubeClientBackend, KubeClientOptions, WatchOptions, REPORTING_CONTROLLER};
use difftracker_simulation::apiserver::{
    serve, ApiServerHandle, ApiServerOptions, FaultPlan, Kind, ListOptions, PatchType, Preconditions, Subresource,
};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn server(options: ApiServerOptions) -> ApiServerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    serve(listener, options).await.expect("serve the API server")
}

fn client(api: &ApiServerHandle) -> kube::Client {
    let config = kube::Config::new(api.url().parse().expect("the server's URL"));
    kube::Client::try_from(config).expect("a client")
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

fn create(api: &ApiServerHandle, kind: Kind, namespace: &str, object: Value) -> Value {
    api.api().write(|s| s.create(kind, namespace, object)).expect("create")
}

fn get(api: &ApiServerHandle, kind: Kind, name: &str) -> Value {
    api.api().read(|s| s.get(kind, "default", name)).expect("get")
}

fn delete(api: &ApiServerHandle, kind: Kind, name: &str) {
    api.api().write(|s| s.delete(kind, "default", name, &Preconditions::default())).expect("delete");
}

fn object_ref(object: &Value) -> ObjectRef {
    ObjectRef {
        namespace: object["metadata"]["namespace"].as_str().unwrap_or("").into(),
        name: object["metadata"]["name"].as_str().unwrap().into(),
        uid: object["metadata"]["uid"].as_str().unwrap().into(),
    }
}

/// A short description of an engine event: `+Service web`, `-Pod egress-1`, `marker`.
fn describe(e: &KubeEvent) -> String {
    match e {
        KubeEvent::ServiceApplied(s) => format!("+Service {}", s.meta.name),
        KubeEvent::ServiceDeleted(s) => format!("-Service {}", s.meta.name),
        KubeEvent::EndpointSliceApplied(s) => format!("+EndpointSlice {}", s.meta.name),
        KubeEvent::EndpointSliceDeleted(s) => format!("-EndpointSlice {}", s.meta.name),
        KubeEvent::NodeApplied(n) => format!("+Node {}", n.name),
        KubeEvent::NodeDeleted(n) => format!("-Node {}", n.name),
        KubeEvent::PodApplied(p) => format!("+Pod {}", p.meta.name),
        KubeEvent::PodDeleted(p) => format!("-Pod {}", p.meta.name),
        KubeEvent::InitialListsComplete => "marker".into(),
    }
}

/// Reads batches until `done` holds for what arrived, or 20 s pass.
async fn read_until(watch: &mut ClusterWatch, seen: &mut Vec<String>, done: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(seen) {
        match tokio::time::timeout_at(deadline, watch.next_batch()).await {
            Ok(Some(batch)) => seen.extend(batch.iter().map(describe)),
            Ok(None) => panic!("the watch stopped: {:?}; so far {seen:?}", watch.failure()),
            Err(_) => panic!("timed out; so far {seen:?}"),
        }
    }
}

/// What else arrives within `quiet`.
async fn read_for(watch: &mut ClusterWatch, quiet: Duration) -> Vec<String> {
    let mut more = Vec::new();
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, watch.next_batch()).await {
        more.extend(batch.iter().map(describe));
    }
    more
}

fn seed_cluster(api: &ApiServerHandle) {
    create(
        api,
        Kind::Node,
        "",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
               "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.4"}]}}),
    );
    create(api, Kind::Service, "default", service("web"));
    create(
        api,
        Kind::EndpointSlice,
        "default",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.5"], "nodeName": "n1", "conditions": {"ready": true}}]}),
    );
    for (name, labelled) in [("egress-1", true), ("plain", false)] {
        let labels = if labelled { json!({EGRESS_LABEL: "gw1"}) } else { json!({"app": "x"}) };
        create(
            api,
            Kind::Pod,
            "default",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
                   "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}),
        );
    }
}

#[tokio::test]
async fn initial_lists_arrive_once_before_one_marker_then_watch_events_as_applied_and_deleted() {
    let api = server(ApiServerOptions::default()).await;
    seed_cluster(&api);
    let mut watch = ClusterWatch::start(client(&api), WatchOptions::default());
    let mut seen = Vec::new();
    read_until(&mut watch, &mut seen, |s| s.iter().any(|e| e == "marker")).await;
    let mut initial = seen.clone();
    initial.sort();
    assert_eq!(initial, ["+EndpointSlice web-abc", "+Node n1", "+Pod egress-1", "+Service web", "marker"], "only egress Pods are watched");
    assert_eq!(seen.last().map(String::as_str), Some("marker"), "the marker comes after every initial object");

    create(&api, Kind::Service, "default", service("db"));
    let mut events = Vec::new();
    read_until(&mut watch, &mut events, |s| s.iter().any(|e| e == "+Service db")).await;
    delete(&api, Kind::Service, "db");
    read_until(&mut watch, &mut events, |s| s.iter().any(|e| e == "-Service db")).await;
    events.extend(read_for(&mut watch, Duration::from_millis(500)).await);
    assert_eq!(events, ["+Service db", "-Service db"], "no second marker, no repeats");
    assert!(watch.stats().initial_lists_complete);
    api.shutdown().await;
}

#[tokio::test]
async fn a_410_relist_delivers_only_what_changed_during_the_gap() {
    let api = server(ApiServerOptions::default()).await;
    seed_cluster(&api);
    for name in ["a", "b", "c"] {
        create(&api, Kind::Service, "default", service(name));
    }
    let mut watch = ClusterWatch::start(client(&api), WatchOptions::default());
    let mut seen = Vec::new();
    read_until(&mut watch, &mut seen, |s| s.iter().any(|e| e == "marker")).await;

    // In one step the watches cannot see: b deleted, c changed, d created; then the event log is
    // compacted, so every watch's resourceVersion is too old (410 Gone) and the watcher lists again.
    api.api().write(|s| {
        s.delete(Kind::Service, "default", "b", &Preconditions::default()).unwrap();
        s.patch(Kind::Service, "default", "c", PatchType::Merge, br#"{"metadata":{"labels":{"changed":"yes"}}}"#, Subresource::Main)
            .unwrap();
        s.create(Kind::Service, "default", service("d")).unwrap();
        s.compact(0);
    });
    let mut gap = Vec::new();
    read_until(&mut watch, &mut gap, |s| s.len() >= 3).await;
    gap.extend(read_for(&mut watch, Duration::from_secs(3)).await);
    assert_eq!(gap, ["-Service b", "+Service c", "+Service d"], "the gap's differences, nothing listed again");
    let stats = watch.stats();
    assert!(stats.relists.get("Service").copied().unwrap_or(0) >= 1, "{stats:?}");
    assert!(stats.errors.get("Service").copied().unwrap_or(0) >= 1, "the 410 was seen: {stats:?}");

    // The watch goes on from the relist.
    delete(&api, Kind::Service, "a");
    let mut after = Vec::new();
    read_until(&mut watch, &mut after, |s| !s.is_empty()).await;
    assert_eq!(after, ["-Service a"]);
    api.shutdown().await;
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version_without_a_relist_or_repeats() {
    // Every watch of Services is closed by the server after 300 ms.
    let plan = FaultPlan::parse(r#"{"seed": 1, "rules": [{"request": "WATCH services", "drop_after_ms": [300, 300]}]}"#).unwrap();
    let api = server(ApiServerOptions { faults: Some(plan), ..Default::default() }).await;
    seed_cluster(&api);
    let mut watch = ClusterWatch::start(client(&api), WatchOptions::default());
    let mut seen = Vec::new();
    read_until(&mut watch, &mut seen, |s| s.iter().any(|e| e == "marker")).await;
    let mut events = read_for(&mut watch, Duration::from_secs(1)).await;
    create(&api, Kind::Service, "default", service("db"));
    read_until(&mut watch, &mut events, |s| s.iter().any(|e| e == "+Service db")).await;
    events.extend(read_for(&mut watch, Duration::from_secs(1)).await);
    assert_eq!(events, ["+Service db"], "the watches closed several times, nothing was sent twice");
    assert_eq!(watch.stats().relists.get("Service"), None, "resumed, not listed again");
    api.shutdown().await;
}

fn backend(api: &ApiServerHandle) -> KubeClientBackend {
    KubeClientBackend::new(client(api), KubeClientOptions::default())
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"].as_array().map(|a| a.iter().map(|f| f.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn finalizers_are_added_and_removed_with_the_uid_guard_keeping_foreign_ones() {
    let api = server(ApiServerOptions::default()).await;
    let mut web = service("web");
    web["metadata"]["finalizers"] = json!(["example.com/keep"]);
    let web = create(&api, Kind::Service, "default", web);
    let b = backend(&api);
    assert_eq!(b.call(KubeCall::AddServiceFinalizers(object_ref(&web))).await, Ok(CallOutput::Done));
    let mut want = vec!["example.com/keep".to_string()];
    want.extend(SERVICE_FINALIZERS.iter().map(|f| f.to_string()));
    assert_eq!(finalizers(&get(&api, Kind::Service, "web")), want);
    let rv = get(&api, Kind::Service, "web")["metadata"]["resourceVersion"].clone();
    assert_eq!(b.call(KubeCall::AddServiceFinalizers(object_ref(&web))).await, Ok(CallOutput::Done));
    assert_eq!(get(&api, Kind::Service, "web")["metadata"]["resourceVersion"], rv, "adding them again writes nothing");
    assert_eq!(b.call(KubeCall::RemoveServiceFinalizers(object_ref(&web))).await, Ok(CallOutput::Done));
    assert_eq!(finalizers(&get(&api, Kind::Service, "web")), ["example.com/keep"]);

    let pod = create(
        &api,
        Kind::Pod,
        "default",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "egress-1", "namespace": "default", "labels": {EGRESS_LABEL: "gw1"}},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    );
    assert_eq!(b.call(KubeCall::AddPodFinalizer(object_ref(&pod))).await, Ok(CallOutput::Done));
    assert_eq!(finalizers(&get(&api, Kind::Pod, "egress-1")), [POD_FINALIZER]);
    assert_eq!(b.call(KubeCall::RemovePodFinalizer(object_ref(&pod))).await, Ok(CallOutput::Done));
    assert!(finalizers(&get(&api, Kind::Pod, "egress-1")).is_empty());
    api.shutdown().await;
}

#[tokio::test]
async fn a_replaced_service_is_replaced_and_a_deleted_one_not_found() {
    let api = server(ApiServerOptions::default()).await;
    let old = create(&api, Kind::Service, "default", service("web"));
    delete(&api, Kind::Service, "web");
    let new = create(&api, Kind::Service, "default", service("web"));
    assert_ne!(old["metadata"]["uid"], new["metadata"]["uid"]);
    let b = backend(&api);
    let stale = object_ref(&old);
    for call in [
        KubeCall::AddServiceFinalizers(stale.clone()),
        KubeCall::RemoveServiceFinalizers(stale.clone()),
        KubeCall::PatchServiceIngress(stale.clone(), vec![LoadBalancerIngress { ip: "20.0.0.1".into(), hostname: String::new() }]),
    ] {
        let label = call.label();
        let e = b.call(call).await.expect_err(label);
        assert_eq!(e.kind, ErrorKind::Replaced, "{label}: {e}");
    }
    let untouched = get(&api, Kind::Service, "web");
    assert!(
        finalizers(&untouched).is_empty()
            && untouched.get("status").and_then(|s| s.get("loadBalancer")).and_then(|l| l.get("ingress")).is_none()
    );

    delete(&api, Kind::Service, "web");
    let gone = object_ref(&new);
    let e = b.call(KubeCall::AddServiceFinalizers(gone.clone())).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = b.call(KubeCall::PatchServiceIngress(gone.clone(), vec![])).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert_eq!(b.call(KubeCall::RemoveServiceFinalizers(gone)).await, Ok(CallOutput::Done), "nothing left to release");
    api.shutdown().await;
}

#[tokio::test]
async fn a_conflicting_write_is_retried_with_a_fresh_read() {
    // A seed under which the first PATCH of a Service answers 409 and the second does not.
    let plan_for = |seed: u64| {
        FaultPlan::parse(&format!(r#"{{"seed": {seed}, "rules": [{{"request": "PATCH services", "rate": 0.5, "status": 409}}]}}"#)).unwrap()
    };
    let seed = (0..10_000u64)
        .find(|s| {
            let p = plan_for(*s);
            p.decide_nth("PATCH", "services", 0, 0).error.is_some() && p.decide_nth("PATCH", "services", 1, 0).error.is_none()
        })
        .expect("a seed");
    let api = server(ApiServerOptions { faults: Some(plan_for(seed)), ..Default::default() }).await;
    let web = create(&api, Kind::Service, "default", service("web"));
    let b = backend(&api);
    assert_eq!(b.call(KubeCall::AddServiceFinalizers(object_ref(&web))).await, Ok(CallOutput::Done));
    assert_eq!(finalizers(&get(&api, Kind::Service, "web")), SERVICE_FINALIZERS);
    assert_eq!(b.stats().conflict_retries.load(Ordering::Relaxed), 1, "one 409, one retry");
    api.shutdown().await;
}

#[tokio::test]
async fn a_write_between_the_read_and_the_patch_fails_the_guard_and_is_retried_on_a_fresh_read() {
    // Every PATCH of a Service waits 1.5 s before the server applies it: another writer changes
    // the Service meanwhile, so the first patch's resourceVersion `test` fails (422).
    let plan = FaultPlan::parse(r#"{"seed": 1, "rules": [{"request": "PATCH services", "latency_ms": [1500, 1500]}]}"#).unwrap();
    let api = server(ApiServerOptions { faults: Some(plan), ..Default::default() }).await;
    let web = create(&api, Kind::Service, "default", service("web"));
    let b = backend(&api);
    let call = {
        let b = b.clone();
        let target = object_ref(&web);
        tokio::spawn(async move { b.call(KubeCall::AddServiceFinalizers(target)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.api()
        .write(|s| {
            s.patch(Kind::Service, "default", "web", PatchType::Merge, br#"{"metadata":{"labels":{"other":"writer"}}}"#, Subresource::Main)
        })
        .unwrap();
    assert_eq!(call.await.unwrap(), Ok(CallOutput::Done));
    let now = get(&api, Kind::Service, "web");
    assert_eq!(finalizers(&now), SERVICE_FINALIZERS);
    assert_eq!(now["metadata"]["labels"]["other"], "writer", "the other write is kept");
    assert_eq!(b.stats().conflict_retries.load(Ordering::Relaxed), 1, "the stale patch failed its test and was retried once");
    api.shutdown().await;
}

#[tokio::test]
async fn a_conflict_that_never_clears_gives_up_after_the_bounded_attempts() {
    let plan = FaultPlan::parse(r#"{"seed": 1, "rules": [{"request": "PATCH services", "status": 409}]}"#).unwrap();
    let api = server(ApiServerOptions { faults: Some(plan), ..Default::default() }).await;
    let web = create(&api, Kind::Service, "default", service("web"));
    let b = KubeClientBackend::new(
        client(&api),
        KubeClientOptions { max_attempts: 3, conflict_backoff: Duration::from_millis(1), ..Default::default() },
    );
    let e = b.call(KubeCall::AddServiceFinalizers(object_ref(&web))).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert_eq!(b.stats().conflict_retries.load(Ordering::Relaxed), 2);
    api.shutdown().await;
}

#[tokio::test]
async fn the_ingress_is_written_through_status_keeping_a_foreign_hostname() {
    let api = server(ApiServerOptions::default()).await;
    let web = create(&api, Kind::Service, "default", service("web"));
    api.api()
        .write(|s| {
            s.patch(
                Kind::Service,
                "default",
                "web",
                PatchType::Merge,
                br#"{"status":{"loadBalancer":{"ingress":[{"ip":"20.0.0.1"},{"hostname":"edge.example.com"}]}}}"#,
                Subresource::Status,
            )
        })
        .unwrap();
    let b = backend(&api);
    let ours = vec![LoadBalancerIngress { ip: "20.0.0.2".into(), hostname: String::new() }];
    assert_eq!(b.call(KubeCall::PatchServiceIngress(object_ref(&web), ours.clone())).await, Ok(CallOutput::Done));
    let now = get(&api, Kind::Service, "web");
    assert_eq!(now["status"]["loadBalancer"]["ingress"], json!([{"ip": "20.0.0.2"}, {"hostname": "edge.example.com"}]));
    let rv = now["metadata"]["resourceVersion"].clone();
    assert_eq!(b.call(KubeCall::PatchServiceIngress(object_ref(&web), ours)).await, Ok(CallOutput::Done));
    assert_eq!(get(&api, Kind::Service, "web")["metadata"]["resourceVersion"], rv, "the same ingress again writes nothing");
    api.shutdown().await;
}

#[tokio::test]
async fn identical_events_are_one_event_with_a_series() {
    let api = server(ApiServerOptions::default()).await;
    let web = create(&api, Kind::Service, "default", service("web"));
    let b = backend(&api);
    let record = |message: &str| KubeEventRecord {
        target: object_ref(&web),
        kind: ObjectKind::Service,
        event_type: EventType::Warning,
        reason: "UnsupportedSessionAffinity".into(),
        message: message.into(),
    };
    b.record_event(record("sessionAffinity ClientIP is not supported"));
    b.record_event(record("sessionAffinity ClientIP is not supported"));
    b.record_event(record("another message"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.stats().events_done.load(Ordering::Relaxed) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the Events were not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = api.api().read(|s| s.list(Kind::Event, Some("default"), &ListOptions::default())).unwrap().items;
    assert_eq!(listed.len(), 2, "{listed:#?}");
    let repeated = listed.iter().find(|e| e["note"] == "sessionAffinity ClientIP is not supported").expect("the repeated Event");
    assert_eq!(repeated["series"]["count"], 2);
    assert!(repeated["series"]["lastObservedTime"].is_string());
    assert_eq!(repeated["reportingController"], REPORTING_CONTROLLER);
    assert_eq!((repeated["type"].as_str(), repeated["regarding"]["uid"].as_str()), (Some("Warning"), web["metadata"]["uid"].as_str()));
    let other = listed.iter().find(|e| e["note"] == "another message").unwrap();
    assert!(other.get("series").is_none_or(Value::is_null), "a different message is its own Event");
    assert_eq!(b.stats().events_dropped.load(Ordering::Relaxed), 0);
    api.shutdown().await;
}
