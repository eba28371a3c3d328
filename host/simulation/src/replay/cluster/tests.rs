use super::*;
use difftracker_engine::io::{Endpoint, EndpointSlice, EventType, Node, ObjectKind, OwnerReference, Pod, Service, ServicePort};

fn svc(name: &str, uid: &str) -> Service {
    Service {
        meta: ObjectMeta { namespace: "ns".into(), name: name.into(), uid: uid.into(), ..Default::default() },
        service_type: "LoadBalancer".into(),
        ports: vec![ServicePort { name: "http".into(), protocol: "TCP".into(), port: 80, target_port: None }],
        ..Default::default()
    }
}

fn slice(name: &str, owner_uid: &str) -> EndpointSlice {
    EndpointSlice {
        meta: ObjectMeta { namespace: "ns".into(), name: name.into(), uid: format!("slice-{name}"), ..Default::default() },
        owner_references: vec![OwnerReference { kind: "Service".into(), name: "a".into(), uid: owner_uid.into() }],
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint { addresses: vec!["10.1.0.1".into()], ready: Some(true), node_name: Some("n1".into()) }],
    }
}

fn oref(name: &str, uid: &str) -> ObjectRef {
    ObjectRef { namespace: "ns".into(), name: name.into(), uid: uid.into() }
}

fn names(events: &[KubeEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            KubeEvent::ServiceApplied(s) => {
                format!(
                    "svc+ {} rv{}{}",
                    s.meta.name,
                    s.meta.resource_version,
                    if s.meta.deletion_timestamp.is_some() { " deleting" } else { "" }
                )
            }
            KubeEvent::ServiceDeleted(s) => format!("svc- {}", s.meta.name),
            KubeEvent::EndpointSliceApplied(s) => format!("slice+ {}", s.meta.name),
            KubeEvent::EndpointSliceDeleted(s) => format!("slice- {}", s.meta.name),
            KubeEvent::NodeApplied(n) => format!("node+ {}", n.name),
            KubeEvent::NodeDeleted(n) => format!("node- {}", n.name),
            KubeEvent::PodApplied(p) => format!("pod+ {}", p.meta.name),
            KubeEvent::PodDeleted(p) => format!("pod- {}", p.meta.name),
            KubeEvent::InitialListsComplete => "lists complete".to_string(),
        })
        .collect()
}

fn service_of(c: &Cluster, name: &str) -> Service {
    match c.get(&ObjectKey::service("ns", name)) {
        Some(KubeObject::Service(s)) => s.clone(),
        other => panic!("no service {name}: {other:?}"),
    }
}

#[test]
fn timestamps_are_rfc3339_from_2025() {
    assert_eq!(timestamp(0), "2025-01-01T00:00:00Z");
    assert_eq!(timestamp(61_999), "2025-01-01T00:01:01Z");
    assert_eq!(timestamp(59 * 86_400_000 + 3_600_000), "2025-03-01T01:00:00Z");
    assert_eq!(timestamp(365 * 86_400_000), "2026-01-01T00:00:00Z");
}

#[test]
fn delete_without_finalizers_removes_at_once() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    c.apply(100, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    assert_eq!(names(&c.take_events()), vec!["svc+ a rv1", "svc- a"]);
    assert!(c.get(&ObjectKey::service("ns", "a")).is_none());
    assert!(c.stuck_deleting().is_empty());
}

#[test]
fn finalizers_hold_the_object_until_the_last_is_removed() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    assert_eq!(c.perform(10, &KubeCall::AddServiceFinalizers(oref("a", "u1"))), Ok(CallOutput::Done));
    assert_eq!(service_of(&c, "a").meta.finalizers.len(), 2);
    // Adding again changes nothing and emits nothing.
    assert_eq!(c.perform(11, &KubeCall::AddServiceFinalizers(oref("a", "u1"))), Ok(CallOutput::Done));
    c.apply(2000, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    assert_eq!(names(&c.take_events()), vec!["svc+ a rv1", "svc+ a rv2", "svc+ a rv3 deleting"]);
    assert_eq!(service_of(&c, "a").meta.deletion_timestamp.as_deref(), Some("2025-01-01T00:00:02Z"));
    assert_eq!(c.stuck_deleting(), vec!["Service/ns/a".to_string()]);
    // The trace's own DELETED again is a no-op.
    c.apply(2100, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    assert!(c.take_events().is_empty());
    // No new finalizer on a deleting object.
    let mut pod_like = service_of(&c, "a");
    pod_like.meta.finalizers.retain(|f| f != SERVICE_FINALIZERS[0]);
    assert_eq!(c.perform(3000, &KubeCall::RemoveServiceFinalizers(oref("a", "u1"))), Ok(CallOutput::Done));
    assert_eq!(names(&c.take_events()), vec!["svc- a"]);
    assert!(c.stuck_deleting().is_empty());
    // Removing from a missing object is success; adding is NotFound.
    assert_eq!(c.perform(3001, &KubeCall::RemoveServiceFinalizers(oref("a", "u1"))), Ok(CallOutput::Done));
    assert_eq!(c.perform(3002, &KubeCall::AddServiceFinalizers(oref("a", "u1"))).unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(c.perform(3003, &KubeCall::PatchServiceIngress(oref("a", "u1"), vec![])).unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(c.stats().writes.get("add-service-finalizers not_found"), Some(&1));
}

#[test]
fn no_new_finalizer_on_a_deleting_object() {
    let mut c = Cluster::new();
    let mut s = svc("a", "u1");
    s.meta.finalizers = vec!["example.com/other".into()];
    c.apply(0, WatchEventType::Added, KubeObject::Service(s));
    c.perform(1, &KubeCall::AddServiceFinalizers(oref("a", "u1"))).unwrap();
    c.perform(2, &KubeCall::RemoveServiceFinalizers(oref("a", "u1"))).unwrap();
    // Not deleting: removal of ours leaves the foreign one and the object.
    assert_eq!(service_of(&c, "a").meta.finalizers, vec!["example.com/other".to_string()]);
    c.perform(3, &KubeCall::AddServiceFinalizers(oref("a", "u1"))).unwrap();
    c.apply(10, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    // The foreign finalizer is released by the trace's deletion; ours holds.
    assert_eq!(service_of(&c, "a").meta.finalizers.len(), 2);
    let mut c2 = Cluster::new();
    c2.apply(0, WatchEventType::Added, KubeObject::Service(svc("b", "u2")));
    c2.perform(1, &KubeCall::AddServiceFinalizers(oref("b", "u2"))).unwrap();
    // Strip one of ours by hand through a removal of pod finalizer on a missing pod (success).
    assert_eq!(c2.perform(2, &KubeCall::RemovePodFinalizer(oref("nope", "x"))), Ok(CallOutput::Done));
}

#[test]
fn uid_guards_refuse_writes_to_a_replacement() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    c.apply(100, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    c.apply(200, WatchEventType::Added, KubeObject::Service(svc("a", "u2")));
    c.take_events();
    for call in [
        KubeCall::AddServiceFinalizers(oref("a", "u1")),
        KubeCall::RemoveServiceFinalizers(oref("a", "u1")),
        KubeCall::PatchServiceIngress(oref("a", "u1"), vec![LoadBalancerIngress { ip: "1.2.3.4".into(), hostname: String::new() }]),
    ] {
        let e = c.perform(300, &call).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Replaced, "{call:?}");
    }
    assert!(c.take_events().is_empty());
    assert!(service_of(&c, "a").ingress.is_empty());
    // UIDs compare case-insensitively (the engine lower-cases identities).
    assert_eq!(c.perform(400, &KubeCall::AddServiceFinalizers(oref("a", "U2"))), Ok(CallOutput::Done));
}

#[test]
fn status_patches_bump_the_version_and_survive_trace_updates() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    let ingress = vec![LoadBalancerIngress { ip: "20.0.0.1".into(), hostname: String::new() }];
    c.perform(5, &KubeCall::PatchServiceIngress(oref("a", "u1"), ingress.clone())).unwrap();
    c.perform(6, &KubeCall::PatchServiceIngress(oref("a", "u1"), ingress.clone())).unwrap();
    assert_eq!(names(&c.take_events()), vec!["svc+ a rv1", "svc+ a rv2"]);
    // A trace update with a stale status and a port change keeps the cluster's status.
    let mut s = svc("a", "u1");
    s.ports[0].port = 8080;
    s.ingress = vec![LoadBalancerIngress { ip: "9.9.9.9".into(), hostname: String::new() }];
    s.meta.resource_version = "999".into();
    c.apply(100, WatchEventType::Modified, KubeObject::Service(s.clone()));
    let now = service_of(&c, "a");
    assert_eq!(now.ingress, ingress);
    assert_eq!(now.ports[0].port, 8080);
    assert_eq!(now.meta.resource_version, "3");
    // The same update again is a no-op (no event, no version bump).
    c.apply(200, WatchEventType::Modified, KubeObject::Service(s));
    assert_eq!(names(&c.take_events()), vec!["svc+ a rv3"]);
    assert_eq!(c.stats().trace_events_ignored, 1);
    assert_eq!(c.service_ingress().get("ns/a"), Some(&vec!["20.0.0.1".to_string()]));
}

#[test]
fn trace_objects_never_carry_engine_finalizers_in() {
    let mut c = Cluster::new();
    let mut s = svc("a", "u1");
    s.meta.finalizers = SERVICE_FINALIZERS.iter().map(|f| f.to_string()).collect();
    s.ingress = vec![LoadBalancerIngress { ip: "9.9.9.9".into(), hostname: String::new() }];
    c.apply(0, WatchEventType::Added, KubeObject::Service(s));
    let now = service_of(&c, "a");
    assert!(now.meta.finalizers.is_empty() && now.ingress.is_empty());
}

#[test]
fn a_trace_object_with_a_deletion_timestamp_is_a_deletion() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    c.perform(1, &KubeCall::AddServiceFinalizers(oref("a", "u1"))).unwrap();
    let mut s = svc("a", "u1");
    s.meta.deletion_timestamp = Some("2030-01-01T00:00:00Z".into());
    c.apply(1000, WatchEventType::Modified, KubeObject::Service(s));
    assert_eq!(service_of(&c, "a").meta.deletion_timestamp.as_deref(), Some("2025-01-01T00:00:01Z"));
    // Without our finalizers, such an object never appears.
    let mut s = svc("b", "u2");
    s.meta.deletion_timestamp = Some("2030-01-01T00:00:00Z".into());
    c.take_events();
    c.apply(1000, WatchEventType::Added, KubeObject::Service(s));
    assert!(c.get(&ObjectKey::service("ns", "b")).is_none());
    assert!(c.take_events().is_empty());
}

#[test]
fn slices_of_a_vanished_service_are_garbage_collected() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    c.apply(0, WatchEventType::Added, KubeObject::EndpointSlice(slice("a-1", "u1")));
    c.apply(0, WatchEventType::Added, KubeObject::EndpointSlice(slice("a-2", "U1")));
    c.apply(0, WatchEventType::Added, KubeObject::EndpointSlice(slice("other", "u9")));
    c.perform(1, &KubeCall::AddServiceFinalizers(oref("a", "u1"))).unwrap();
    c.take_events();
    c.apply(100, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    // Still there while the finalizer holds.
    assert_eq!(c.endpoint_slices().count(), 3);
    c.perform(200, &KubeCall::RemoveServiceFinalizers(oref("a", "u1"))).unwrap();
    assert_eq!(names(&c.take_events()), vec!["svc+ a rv6 deleting", "svc- a", "slice- a-1", "slice- a-2"]);
    assert_eq!(c.endpoint_slices().map(|s| s.meta.name.clone()).collect::<Vec<_>>(), vec!["other".to_string()]);
    assert_eq!(c.stats().garbage_collected, 2);
    // The trace's own DELETED of a collected slice is a no-op.
    c.apply(300, WatchEventType::Deleted, KubeObject::EndpointSlice(slice("a-1", "u1")));
    assert!(c.take_events().is_empty());
}

#[test]
fn a_same_name_recreate_waits_for_the_old_object() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    c.perform(1, &KubeCall::AddServiceFinalizers(oref("a", "u1"))).unwrap();
    c.apply(100, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    c.apply(200, WatchEventType::Added, KubeObject::Service(svc("a", "u2")));
    let mut changed = svc("a", "u2");
    changed.ports[0].port = 443;
    c.apply(300, WatchEventType::Modified, KubeObject::Service(changed));
    assert!(c.has_deferred());
    assert_eq!(c.stats().trace_events_deferred, 2);
    assert_eq!(service_of(&c, "a").meta.uid, "u1");
    c.take_events();
    c.perform(400, &KubeCall::RemoveServiceFinalizers(oref("a", "u1"))).unwrap();
    assert_eq!(names(&c.take_events()), vec!["svc- a", "svc+ a rv5", "svc+ a rv6"]);
    let now = service_of(&c, "a");
    assert_eq!((now.meta.uid.as_str(), now.ports[0].port), ("u2", 443));
    assert!(!c.has_deferred());
}

#[test]
fn a_missed_deletion_is_made_up_when_a_new_uid_appears() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u1")));
    c.apply(100, WatchEventType::Added, KubeObject::Service(svc("a", "u2")));
    assert_eq!(names(&c.take_events()), vec!["svc+ a rv1", "svc- a", "svc+ a rv3"]);
    // A DELETED of the old UID now is stale.
    c.apply(200, WatchEventType::Deleted, KubeObject::Service(svc("a", "u1")));
    assert!(c.take_events().is_empty());
    assert_eq!(service_of(&c, "a").meta.uid, "u2");
}

#[test]
fn objects_without_uid_get_one() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "")));
    let uid = service_of(&c, "a").meta.uid;
    assert!(!uid.is_empty());
    let mut s = svc("a", "");
    s.ports[0].port = 81;
    c.apply(100, WatchEventType::Modified, KubeObject::Service(s));
    assert_eq!(service_of(&c, "a").meta.uid, uid);
}

#[test]
fn nodes_and_pods() {
    let mut c = Cluster::new();
    let node = Node { name: "n1".into(), uid: "nu".into(), internal_ips: vec!["10.0.0.4".into()] };
    c.apply(0, WatchEventType::Added, KubeObject::Node(node.clone()));
    c.apply(100, WatchEventType::Modified, KubeObject::Node(node.clone()));
    let mut moved = node.clone();
    moved.internal_ips.push("fd00::4".into());
    c.apply(200, WatchEventType::Modified, KubeObject::Node(moved));
    let pod = Pod {
        meta: ObjectMeta { namespace: "ns".into(), name: "p".into(), uid: "pu".into(), ..Default::default() },
        phase: "Running".into(),
        ..Default::default()
    };
    c.apply(300, WatchEventType::Added, KubeObject::Pod(pod.clone()));
    c.perform(301, &KubeCall::AddPodFinalizer(oref("p", "pu"))).unwrap();
    c.apply(400, WatchEventType::Deleted, KubeObject::Pod(pod.clone()));
    assert_eq!(c.stuck_deleting(), vec!["Pod/ns/p".to_string()]);
    c.perform(500, &KubeCall::RemovePodFinalizer(oref("p", "pu"))).unwrap();
    c.apply(600, WatchEventType::Deleted, KubeObject::Node(node));
    assert_eq!(names(&c.take_events()), vec!["node+ n1", "node+ n1", "pod+ p", "pod+ p", "pod+ p", "pod- p", "node- n1"]);
    assert_eq!(c.objects().count(), 0);
}

#[test]
fn events_are_counted_by_reason() {
    let mut c = Cluster::new();
    for reason in ["UnsupportedLoadBalancerIP", "UnsupportedLoadBalancerIP", "EnsuredLoadBalancer"] {
        c.record_event(KubeEventRecord {
            target: oref("a", "u1"),
            kind: ObjectKind::Service,
            event_type: EventType::Warning,
            reason: reason.into(),
            message: String::new(),
        });
    }
    assert_eq!(c.event_reasons().get("UnsupportedLoadBalancerIP"), Some(&2));
    assert_eq!(c.event_reasons().len(), 2);
    assert_eq!(c.recorded_events().len(), 3);
}

/// Random trace events and engine writes on a few names: the API server's invariants hold after
/// every step.
#[test]
fn random_histories_keep_the_invariants() {
    use crate::replay::gen::Rng;
    for seed in 0..40u64 {
        let mut rng = Rng::new(seed);
        let mut c = Cluster::new();
        let mut last_rv = 0u64;
        for step in 0..400u64 {
            let now = step * 10;
            let name = *rng.pick(&["a", "b", "c"]);
            let uid = *rng.pick(&["u1", "u2", "u3"]);
            match rng.below(9) {
                0..=2 => {
                    let et = *rng.pick(&[WatchEventType::Added, WatchEventType::Modified, WatchEventType::Deleted]);
                    let mut s = svc(name, uid);
                    if rng.chance(20) {
                        s.meta.finalizers.push("example.com/other".into());
                    }
                    if rng.chance(10) {
                        s.meta.deletion_timestamp = Some("2030-01-01T00:00:00Z".into());
                    }
                    c.apply(now, et, KubeObject::Service(s));
                }
                3 => {
                    let et = *rng.pick(&[WatchEventType::Added, WatchEventType::Deleted]);
                    c.apply(now, et, KubeObject::EndpointSlice(slice(&format!("{name}-x"), uid)));
                }
                4 | 5 => {
                    let _ = c.perform(now, &KubeCall::AddServiceFinalizers(oref(name, uid)));
                }
                6 | 7 => {
                    let _ = c.perform(now, &KubeCall::RemoveServiceFinalizers(oref(name, uid)));
                }
                _ => {
                    let ingress = vec![LoadBalancerIngress { ip: format!("20.0.0.{step}"), hostname: String::new() }];
                    let _ = c.perform(now, &KubeCall::PatchServiceIngress(oref(name, uid), ingress));
                }
            }
            for e in c.take_events() {
                let (meta, gone) = match &e {
                    KubeEvent::ServiceApplied(s) => (&s.meta, false),
                    KubeEvent::ServiceDeleted(s) => (&s.meta, true),
                    KubeEvent::EndpointSliceApplied(s) => (&s.meta, false),
                    KubeEvent::EndpointSliceDeleted(s) => (&s.meta, true),
                    other => panic!("unexpected {other:?}"),
                };
                let rv: u64 = meta.resource_version.parse().unwrap();
                assert!(rv > last_rv, "seed {seed} step {step}: resourceVersion went from {last_rv} to {rv}");
                last_rv = rv;
                if !gone {
                    assert!(
                        meta.deletion_timestamp.is_none() || meta.finalizers.iter().any(|f| SERVICE_FINALIZERS.contains(&f.as_str())),
                        "seed {seed} step {step}: deleting without a finalizer of ours: {e:?}"
                    );
                }
            }
            for (key, o) in c.objects() {
                let meta = o.meta().unwrap();
                assert!(meta.deletion_timestamp.is_none() || !meta.finalizers.is_empty(), "{key} deleting without finalizers");
                assert!(meta.finalizers.iter().all(|f| f == "example.com/other" || SERVICE_FINALIZERS.contains(&f.as_str())));
                if let KubeObject::EndpointSlice(s) = o {
                    // A slice survives only if its owner never went away after it was added:
                    // owned slices of a removed Service are collected with it.
                    assert!(!s.owner_references.is_empty());
                }
            }
        }
    }
}

#[test]
fn initial_lists_are_the_current_objects_then_the_marker() {
    let mut c = Cluster::new();
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("b", "u-b")));
    c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "u-a")));
    c.apply(0, WatchEventType::Added, KubeObject::EndpointSlice(slice("a-1", "u-a")));
    let mut a = svc("a", "u-a");
    a.ports[0].port = 8080;
    c.apply(0, WatchEventType::Modified, KubeObject::Service(a));
    c.apply(0, WatchEventType::Deleted, KubeObject::Service(svc("b", "u-b")));
    assert!(c.has_events());
    let lists = c.initial_lists();
    // One applied event per object that exists (not the watch history), then the marker.
    assert_eq!(names(&lists), vec!["slice+ a-1", "svc+ a rv4", "lists complete"]);
    assert!(!c.has_events(), "the watch events so far are carried by the lists");
}
