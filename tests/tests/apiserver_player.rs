//! The trace player over real HTTP: a trace played onto the in-repo API server through
//! kube-rs (no controller running) leaves in the server's store what the replay's simulated
//! cluster holds after the same trace: the same objects by kind, namespace and name, the same
//! content but for UIDs and resourceVersions, the same garbage collection. The oracle reads the
//! store through `StoreView` and finds what it finds in a simulated cluster.

use difftracker_runtime::k8s::kube;
use difftracker_runtime::k8s::{KubeObject, SERVICE_FINALIZERS};
use difftracker_simulation::apiserver::{
    serve, ApiServerHandle, ApiServerOptions, FaultPlan, Kind, PatchType, StoreView, Subresource, TracePlayer,
};
use difftracker_simulation::replay::cluster::{Cluster, ObjectKey};
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions};
use difftracker_simulation::replay::oracle::{self, ClusterView};
use difftracker_simulation::replay::trace::TraceEvent;
use difftracker_simulation::replay::{parse_trace, Trace};
use difftracker_simulation::samples::SAMPLE_TRACE;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

async fn server(options: ApiServerOptions) -> ApiServerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    serve(listener, options).await.expect("serve the API server")
}

fn client(api: &ApiServerHandle) -> kube::Client {
    let config = kube::Config::new(api.url().parse().expect("the server's URL"));
    kube::Client::try_from(config).expect("a client")
}

/// Retries the player's queue until it is empty: a bounded number of rounds, each after a
/// pause (the queue's own backoff decides what is due).
async fn drain(player: &mut TracePlayer) {
    for _ in 0..400 {
        if player.is_quiet() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        player.retry_pending().await;
    }
    panic!("the player's queue never emptied: {} events, {:?}", player.pending(), player.stats());
}

async fn play(api: &ApiServerHandle, events: &[TraceEvent]) -> TracePlayer {
    let mut player = TracePlayer::new(client(api));
    for event in events {
        player.apply(event).await;
    }
    drain(&mut player).await;
    player
}

fn simulate(events: &[TraceEvent]) -> Cluster {
    let mut cluster = Cluster::new();
    for e in events {
        cluster.apply(e.at_ms, e.event_type, e.object.clone());
    }
    cluster
}

/// An object with what legitimately differs blanked: its UID and resourceVersion, the time of
/// its deletionTimestamp (kept as set or not), and its owner references' UIDs translated by
/// `owner` (the server's UIDs back to the trace's).
fn normalized(object: &KubeObject, owner: &dyn Fn(&str) -> String) -> KubeObject {
    let mut o = object.clone();
    match &mut o {
        KubeObject::Node(n) => n.uid.clear(),
        KubeObject::EndpointSlice(s) => {
            for r in &mut s.owner_references {
                r.uid = owner(&r.uid);
            }
        }
        _ => {}
    }
    if let Some(m) = o.meta_mut() {
        m.uid.clear();
        m.resource_version.clear();
        m.deletion_timestamp = m.deletion_timestamp.as_ref().map(|_| "set".into());
    }
    o
}

/// The differences between the store (through its view) and the simulated cluster, one line
/// each.
fn differences(view: &StoreView, player: &TracePlayer, cluster: &Cluster) -> Vec<String> {
    let to_trace = |uid: &str| player.trace_uid(uid).map(str::to_ascii_lowercase).unwrap_or_else(|| format!("unmapped {uid}"));
    let same = |uid: &str| uid.to_ascii_lowercase();
    let served: BTreeMap<&ObjectKey, KubeObject> = view.objects().map(|(k, o)| (k, normalized(o, &to_trace))).collect();
    let simulated: BTreeMap<&ObjectKey, KubeObject> = cluster.objects().map(|(k, o)| (k, normalized(o, &same))).collect();
    let mut out: Vec<String> = view.problems.clone();
    for key in served.keys().chain(simulated.keys()).collect::<BTreeSet<_>>() {
        match (served.get(key), simulated.get(key)) {
            (Some(a), Some(b)) if a != b => out.push(format!("{key} differs:\n  served    {a:?}\n  simulated {b:?}")),
            (Some(_), None) => out.push(format!("{key} is served but not simulated")),
            (None, Some(_)) => out.push(format!("{key} is simulated but not served")),
            _ => {}
        }
    }
    out
}

fn count(cluster: &dyn ClusterView) -> (usize, usize, usize, usize) {
    (cluster.services().count(), cluster.endpoint_slices().count(), cluster.nodes().count(), cluster.pods().count())
}

async fn assert_played_like_simulated(trace: &Trace, options: ApiServerOptions) -> TracePlayer {
    let api = server(options).await;
    let player = play(&api, &trace.events).await;
    let cluster = simulate(&trace.events);
    let view = api.api().read(StoreView::of);
    let diffs = differences(&view, &player, &cluster);
    assert!(diffs.is_empty(), "{} differences:\n{}\nplayer: {:?}", diffs.len(), diffs.join("\n"), player.stats());
    assert_eq!(count(&view), count(&cluster));
    assert!(view.stuck_deleting().is_empty(), "{:?}", view.stuck_deleting());
    player
}

#[tokio::test]
async fn the_sample_trace_played_over_http_leaves_what_the_simulated_cluster_holds() {
    let trace = parse_trace(SAMPLE_TRACE.as_bytes()).unwrap();
    let player = assert_played_like_simulated(&trace, ApiServerOptions::default()).await;
    let stats = player.stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
    // The sample deletes two Services: their slices went with them, through the server's
    // garbage collector (the trace never deletes a slice).
    assert_eq!(stats.deletes, 2, "{stats:?}");
    assert!(stats.creates >= 85 && stats.replaces >= 49, "{stats:?}");
}

/// A generated trace (a seed found by search, below) with same-name re-creations and deletions.
fn generated(seed: u64, egress: usize) -> Trace {
    let options = GenOptions { services: 12, nodes: 3, egress, churn: Churn::High, seed, endpoints: 3 };
    let mut buf = Vec::new();
    write_trace(&options, &mut buf).unwrap();
    parse_trace(&buf).unwrap()
}

/// Services of the trace deleted, and those re-created under the same name with a new UID.
fn deletions_and_recreations(trace: &Trace) -> (usize, usize) {
    let mut uids: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut deleted = 0;
    for e in &trace.events {
        if let KubeObject::Service(s) = &e.object {
            uids.entry((s.meta.namespace.clone(), s.meta.name.clone())).or_default().insert(s.meta.uid.clone());
            deleted += (e.event_type == difftracker_runtime::k8s::WatchEventType::Deleted) as usize;
        }
    }
    (deleted, uids.values().filter(|u| u.len() > 1).count())
}

#[tokio::test]
async fn generated_traces_with_replacements_and_deletions_play_like_the_simulated_cluster() {
    let mut played = 0;
    for seed in 1..200u64 {
        let trace = generated(seed, if seed % 2 == 0 { 6 } else { 0 });
        let (deleted, recreated) = deletions_and_recreations(&trace);
        if recreated == 0 || deleted < 2 {
            continue;
        }
        let player = assert_played_like_simulated(&trace, ApiServerOptions::default()).await;
        assert_eq!(player.stats().errors, 0, "seed {seed}: {:?}", player.stats());
        played += 1;
        if played == 3 {
            return;
        }
    }
    panic!("no generated trace with re-creations and deletions in 200 seeds");
}

#[tokio::test]
async fn transient_errors_are_retried_and_the_result_is_the_same() {
    // One request in four answers 500 or 429, the first matching rule winning.
    let plan = FaultPlan::parse(
        r#"{"seed": 11, "rules": [
            {"request": "*", "rate": 0.15, "status": 500},
            {"request": "*", "rate": 0.1, "status": 429}]}"#,
    )
    .unwrap();
    let trace = parse_trace(SAMPLE_TRACE.as_bytes()).unwrap();
    let player = assert_played_like_simulated(&trace, ApiServerOptions { faults: Some(plan), ..Default::default() }).await;
    assert!(player.stats().transient_retries > 20, "{:?}", player.stats());
}

/// One watch event of a handmade trace.
fn event(at_ms: u64, event_type: &str, object: Value) -> String {
    json!({"type": event_type, "object": object, "at_ms": at_ms}).to_string()
}

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "node-1"},
           "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.4"}]}})
}

fn service(name: &str, uid: &str, spec: Value, finalizers: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "uid": uid, "finalizers": finalizers}, "spec": spec})
}

fn lb_spec() -> Value {
    json!({"type": "LoadBalancer", "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}], "ipFamilies": ["IPv4"]})
}

fn slice(name: &str, uid: &str, owner: &str, owner_uid: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": name, "namespace": "default", "uid": uid,
                        "labels": {"kubernetes.io/service-name": owner},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": owner, "uid": owner_uid}]},
           "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": "n1"}]})
}

fn trace_of(lines: &[String]) -> Trace {
    parse_trace(lines.join("\n").as_bytes()).unwrap()
}

fn get(api: &ApiServerHandle, kind: Kind, name: &str) -> Option<Value> {
    api.api().read(|s| s.get(kind, "default", name).ok())
}

fn uid(o: &Value) -> String {
    o["metadata"]["uid"].as_str().unwrap().to_string()
}

/// What the controller would do: a merge patch on the store.
fn patch(api: &ApiServerHandle, kind: Kind, name: &str, sub: Subresource, body: Value) {
    api.api().write(|s| s.patch(kind, "default", name, PatchType::Merge, body.to_string().as_bytes(), sub)).unwrap();
}

#[tokio::test]
async fn a_replacement_under_the_same_name_waits_for_the_old_incarnation_and_maps_owner_references() {
    let api = server(ApiServerOptions::default()).await;
    let mut player = TracePlayer::new(client(&api));
    let first = trace_of(&[
        event(0, "ADDED", node()),
        event(10, "ADDED", service("web", "trace-web-1", lb_spec(), &["example.com/protect"])),
        event(20, "ADDED", slice("web-aaaaa", "trace-slice-1", "web", "trace-web-1", "10.1.0.5")),
    ]);
    for e in &first.events {
        player.apply(e).await;
    }
    let old = get(&api, Kind::Service, "web").unwrap();
    let old_uid = uid(&old);
    assert_eq!(player.server_uid("trace-web-1"), Some(old_uid.as_str()));
    assert_ne!(old_uid, "trace-web-1", "the server assigns UIDs");
    let old_slice = get(&api, Kind::EndpointSlice, "web-aaaaa").unwrap();
    assert_eq!(old_slice["metadata"]["ownerReferences"][0]["uid"], json!(old_uid));
    assert_eq!(old["metadata"]["finalizers"], json!(["example.com/protect"]));

    // The controller takes the Service on: its finalizer.
    let held = json!({"metadata": {"finalizers": ["example.com/protect", SERVICE_FINALIZERS[0]]}});
    patch(&api, Kind::Service, "web", Subresource::Main, held);

    // The trace re-creates web with a new UID (missing the old one's deletion), with a new slice.
    let second = trace_of(&[
        event(30, "ADDED", service("web", "trace-web-2", lb_spec(), &[])),
        event(40, "ADDED", slice("web-bbbbb", "trace-slice-2", "web", "trace-web-2", "10.1.0.6")),
        event(50, "MODIFIED", service("web", "trace-web-2", json!({"type": "ClusterIP", "ports": [{"port": 81}]}), &[])),
    ]);
    for e in &second.events {
        player.apply(e).await;
    }
    // The old incarnation is being deleted, its foreign finalizer released, the controller's
    // kept; the new one waits, and so does its later change.
    let old = get(&api, Kind::Service, "web").unwrap();
    assert_eq!(uid(&old), old_uid);
    assert!(old["metadata"]["deletionTimestamp"].is_string(), "{old}");
    assert_eq!(old["metadata"]["finalizers"], json!([SERVICE_FINALIZERS[0]]));
    assert!(!player.is_quiet());
    assert_eq!(player.pending(), 2);
    player.retry_pending().await;
    assert!(!player.is_quiet(), "the name is still held");
    // The new slice is there, naming an owner the server does not know yet.
    let new_slice = get(&api, Kind::EndpointSlice, "web-bbbbb").unwrap();
    assert_eq!(new_slice["metadata"]["ownerReferences"][0]["uid"], json!("trace-web-2"));
    assert!(get(&api, Kind::EndpointSlice, "web-aaaaa").is_some(), "collected only once its owner is gone");

    // The controller lets the old one go: the server collects its slice, the player creates the
    // new incarnation and points the new slice at it.
    patch(&api, Kind::Service, "web", Subresource::Main, json!({"metadata": {"finalizers": []}}));
    assert!(get(&api, Kind::EndpointSlice, "web-aaaaa").is_none());
    drain(&mut player).await;
    let new = get(&api, Kind::Service, "web").unwrap();
    let new_uid = uid(&new);
    assert_ne!(new_uid, old_uid);
    assert_eq!(player.server_uid("trace-web-2"), Some(new_uid.as_str()));
    assert_eq!(new["spec"]["type"], "ClusterIP", "the queued change came after the creation: {new}");
    let new_slice = get(&api, Kind::EndpointSlice, "web-bbbbb").unwrap();
    assert_eq!(new_slice["metadata"]["ownerReferences"][0]["uid"], json!(new_uid));
    assert_eq!(player.stats().owner_rewrites, 1);
    assert_eq!(player.stats().incarnations_replaced, 1);

    // Deleting the new one takes its slice, through the rewritten owner reference.
    let last = trace_of(&[event(60, "DELETED", service("web", "trace-web-2", json!({"type": "ClusterIP"}), &[]))]);
    player.apply(&last.events[0]).await;
    assert!(get(&api, Kind::Service, "web").is_none());
    assert!(get(&api, Kind::EndpointSlice, "web-bbbbb").is_none());
    assert_eq!(player.stats().errors, 0, "{:?}", player.stats());

    // The simulated cluster ends the same way (its controller finalizer never added: nothing
    // holds the old incarnation there).
    let all: Vec<TraceEvent> = first.events.iter().chain(&second.events).chain(&last.events).cloned().collect();
    let view = api.api().read(StoreView::of);
    assert_eq!(differences(&view, &player, &simulate(&all)), Vec::<String>::new());
}

#[tokio::test]
async fn a_deletion_arriving_as_a_deletion_timestamp_releases_foreign_finalizers() {
    let api = server(ApiServerOptions::default()).await;
    let mut svc = service("db", "trace-db", lb_spec(), &["example.com/protect"]);
    let trace = {
        let added = event(0, "ADDED", svc.clone());
        svc["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:01Z");
        trace_of(&[added, event(10, "MODIFIED", svc)])
    };
    let player = play(&api, &trace.events).await;
    assert!(get(&api, Kind::Service, "db").is_none());
    assert_eq!(player.stats().finalizers_released, 1);
    let view = api.api().read(StoreView::of);
    assert_eq!(differences(&view, &player, &simulate(&trace.events)), Vec::<String>::new());
}

/// The emulator's inventory that the oracle expects of `view`, with addresses given to the
/// public IPs (the oracle cannot predict them).
fn inventory_for(view: &dyn ClusterView, baseline: &Value) -> Value {
    let exp = oracle::expected_inventory_of(view, baseline);
    let pips: serde_json::Map<String, Value> =
        exp.public_ips.iter().enumerate().map(|(i, (n, a))| (n.clone(), json!(a.clone().unwrap_or(format!("20.0.0.{}", i + 1))))).collect();
    json!({"public_ips": pips, "load_balancers": exp.load_balancers, "nat_gateways": exp.nat_gateways,
           "sgw_services": exp.sgw_services, "address_locations": exp.address_locations})
}

#[tokio::test]
async fn the_oracle_over_a_store_view_finds_a_planted_difference() {
    let api = server(ApiServerOptions::default()).await;
    let trace = trace_of(&[
        event(0, "ADDED", node()),
        event(10, "ADDED", service("web", "trace-web", lb_spec(), &[])),
        event(20, "ADDED", slice("web-aaaaa", "trace-slice", "web", "trace-web", "10.1.0.5")),
        event(30, "ADDED", service("plain", "trace-plain", json!({"type": "ClusterIP", "ports": [{"port": 80}]}), &[])),
    ]);
    let player = play(&api, &trace.events).await;
    let baseline = json!({"public_ips": {}, "load_balancers": [], "nat_gateways": [], "sgw_services": {}, "address_locations": {}});
    let view = api.api().read(StoreView::of);
    let inventory = inventory_for(&view, &baseline);
    let web_uid = player.server_uid("trace-web").unwrap().to_string();
    assert_eq!(inventory["load_balancers"], json!([web_uid]), "one admitted Service, by its server UID");
    assert_eq!(inventory["address_locations"], json!({"10.0.0.4": {"10.1.0.5": [web_uid]}}));
    let address = inventory["public_ips"][format!("{web_uid}-pip")].as_str().unwrap().to_string();

    // Before the controller announces the address: that is the one difference.
    let d = oracle::check_view(&view, &inventory, &baseline);
    assert_eq!(d, vec![format!("Service default/web carries ingress [], expected [\"{address}\"] of {web_uid}-pip")]);

    // The controller's write: then nothing differs.
    patch(&api, Kind::Service, "web", Subresource::Status, json!({"status": {"loadBalancer": {"ingress": [{"ip": address}]}}}));
    let view = api.api().read(StoreView::of);
    assert_eq!(oracle::check_view(&view, &inventory, &baseline), Vec::<String>::new());

    // Planted: an ingress on a Service that has no load balancer, and an object stuck deleting.
    patch(&api, Kind::Service, "plain", Subresource::Status, json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}));
    patch(&api, Kind::Service, "web", Subresource::Main, json!({"metadata": {"finalizers": [SERVICE_FINALIZERS[0]]}}));
    api.api().write(|s| s.delete(Kind::Service, "default", "web", &Default::default())).unwrap();
    let view = api.api().read(StoreView::of);
    let d = oracle::check_view(&view, &inventory, &baseline);
    assert!(d.contains(&"Service default/plain carries ingress [\"1.2.3.4\"] but has no load balancer".to_string()), "{d:?}");
    assert!(d.contains(&"Service/default/web is stuck deleting".to_string()), "{d:?}");
    // Being deleted, web wants no load balancer any more: its resources are now unexpected.
    assert!(d.contains(&format!("unexpected load balancer {web_uid}")), "{d:?}");
}
