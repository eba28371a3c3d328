//! Shared helpers of the scenario tests.
#![allow(dead_code, unused_imports)]

pub use crate::config::ServiceConfig;
pub use crate::identity::Identity;
pub use crate::io::*;
pub use crate::state::ResourceState;
pub use crate::testkit::*;

pub const UID: &str = "0f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f";

pub fn id(s: &str) -> Identity {
    Identity::new(s)
}

/// A harness with nodes n1 (10.0.0.1) and n2 (10.0.0.2) known.
pub fn harness() -> Harness {
    let mut h = Harness::new(7);
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"])), KubeEvent::NodeApplied(node("n2", &["10.0.0.2"]))]);
    h
}

pub fn state(h: &Harness, uid: &str) -> Option<ResourceState> {
    h.engine.operation(&id(uid)).map(|o| o.state)
}

/// Drives a create to completion with default successes (finalizers, PIP, LB, register, status).
pub fn create(h: &mut Harness, uid: &str, ports: &[i32]) {
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(uid, ports))]);
    h.tick();
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices", "patch-service-ingress"] {
        let c = h.find(label).unwrap_or_else(|| panic!("expected {label}, outstanding {:?}", h.labels()));
        h.ok(c);
    }
    assert_eq!(state(h, uid), Some(ResourceState::Created));
}

/// Completes the outstanding location sync (if any) successfully.
pub fn sync_ok(h: &mut Harness) -> Option<Vec<LocationUpdate>> {
    let c = h.find("POST updateAddressLocations")?;
    let body = match h.outstanding.get(&c) {
        Some(Call::Cloud(CloudCall::UpdateAddressLocations(l))) => l.clone(),
        _ => unreachable!(),
    };
    h.ok(c);
    Some(body)
}

pub fn started_labels(calls: &[(CallId, Call)]) -> Vec<&'static str> {
    calls.iter().map(|(_, c)| c.label()).collect()
}

/// Asserts the engine invariants.
pub fn inv(h: &Harness) {
    h.engine.check_invariants().unwrap();
}

pub fn is_unregister(c: &Call, uid: &str) -> bool {
    matches!(c, Call::Cloud(CloudCall::UpdateServices(r)) if r.iter().any(|r| r.is_delete && r.name == uid))
}

pub fn queued_for_update(h: &Harness, uid: &str) -> bool {
    h.engine.dispatcher().is_queued(&id(uid))
}

pub fn location_sync_triggered(h: &Harness) -> bool {
    h.engine.locations_updater().triggered
}

pub fn inbound_cfg(uid: &str, ports: &[i32]) -> ServiceConfig {
    let s = lb_service(uid, ports);
    ServiceConfig::inbound(s.meta.object_ref(), crate::admission::admit(&s).unwrap().unwrap())
}

/// Inserts an op directly (no trigger), as a test fixture.
pub fn put_op(h: &mut Harness, uid: &str, st: ResourceState) {
    let now = h.engine.now_ms();
    let op = crate::state::Operation::new(inbound_cfg(uid, &[80]), st, now, "cid".into());
    h.engine.insert_op(&id(uid), op);
}

/// Sum of the samples of `name` (full name without prefix) whose labels include `labels`.
pub fn metric(h: &Harness, name: &str, labels: &[(&str, &str)]) -> f64 {
    let full = format!("difftracker_engine_{name}");
    h.engine
        .status()
        .metrics
        .iter()
        .filter(|s| s.name == full && labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
        .map(|s| s.value)
        .sum()
}

pub fn emap(entries: &[(&str, &str)]) -> crate::endpoints::EndpointMap {
    entries.iter().map(|(a, l)| (a.to_string(), l.to_string())).collect()
}

/// Delivers a Service marked for deletion (the controller's EnsureLoadBalancerDeleted).
pub fn deleting(uid: &str, ports: &[i32]) -> KubeEvent {
    let mut s = lb_service(uid, ports);
    s.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    KubeEvent::ServiceApplied(s)
}

pub fn as_cluster_ip(uid: &str) -> KubeEvent {
    let mut s = lb_service(uid, &[80]);
    s.service_type = "ClusterIP".into();
    KubeEvent::ServiceApplied(s)
}

/// Creates `uid` with one endpoint `addr` on n1 and publishes it.
pub fn create_published(h: &mut Harness, uid: &str, slice_name: &str, addr: &str) {
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice(slice_name, uid, &[(addr, "n1")]))]);
    create(h, uid, &[80]);
    sync_ok(h).expect("a sync after create");
    assert!(h.engine.nrp().has_addresses_for(&id(uid)));
}

/// Completes the delete sequence with successes (detach, LB, unregister, PIP, finalizers).
pub fn finish_delete(h: &mut Harness, uid: &str) {
    for _ in 0..5 {
        let Some(c) = h.find_by(|c| match c {
            Call::Cloud(CloudCall::UpdateServices(r)) => r.iter().any(|r| r.name == uid),
            Call::Cloud(CloudCall::DeleteLoadBalancer { name }) => name == uid,
            Call::Cloud(CloudCall::DeletePublicIp { name }) => name == &format!("{uid}-pip"),
            Call::Kube(KubeCall::RemoveServiceFinalizers(r)) => r.uid == uid,
            _ => false,
        }) else {
            break;
        };
        h.ok(c);
    }
}

pub fn transient() -> CallError {
    CallError::http(500, "InternalServerError", "boom")
}

// ---------------------------------------------------------------- egress helpers

pub const EG: &str = "egress-a";
pub const EG2: &str = "egress-b";

/// A harness with n1 (10.0.0.1), n2 (10.0.0.2) and the dual-stack node d1 (10.0.0.3, fd00::3).
pub fn dual_harness() -> Harness {
    let mut h = harness();
    h.deliver(vec![KubeEvent::NodeApplied(node("d1", &["10.0.0.3", "fd00::3"]))]);
    h
}

/// An IPv4 egress pod `ns/<name>` on n1.
pub fn epod(name: &str, uid: &str, label: &str, ip: &str) -> Pod {
    egress_pod(&format!("ns/{name}"), uid, label, &[ip], &["10.0.0.1"])
}

pub fn key_of(p: &Pod) -> String {
    format!("{}/{}", p.meta.namespace, p.meta.name)
}

pub fn is_add_fin(c: &Call, uid: &str) -> bool {
    matches!(c, Call::Kube(KubeCall::AddPodFinalizer(r)) if r.uid == uid)
}

pub fn is_remove_fin(c: &Call, uid: &str) -> bool {
    matches!(c, Call::Kube(KubeCall::RemovePodFinalizer(r)) if r.uid == uid)
}

/// Every pod-finalizer removal ever started, by pod UID.
pub fn removals_started(h: &Harness) -> Vec<String> {
    h.log
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Kube(KubeCall::RemovePodFinalizer(r)) => Some(r.uid.clone()),
            _ => None,
        })
        .collect()
}

/// Delivers a pod event and completes its add-pod-finalizer call with success.
pub fn admit(h: &mut Harness, pod: &Pod) {
    h.deliver(vec![KubeEvent::PodApplied(pod.clone())]);
    h.tick();
    let uid = pod.meta.uid.clone();
    let c = h.find_by(|c| is_add_fin(c, &uid)).unwrap_or_else(|| panic!("no add-pod-finalizer for {uid}: {:?}", h.labels()));
    h.ok(c);
}

/// Completes the outbound create of `eid` (public IPs, NAT gateway, registration).
pub fn create_nat(h: &mut Harness, eid: &str) {
    for _ in 0..4 {
        let Some(c) = h.find_by(|c| match c {
            Call::Cloud(CloudCall::PutPublicIp { name, .. }) => name.starts_with(&format!("{eid}-pip")),
            Call::Cloud(CloudCall::PutNatGateway(s)) => s.name == eid,
            Call::Cloud(CloudCall::UpdateServices(r)) => r.iter().any(|r| r.name == eid && !r.is_delete),
            _ => false,
        }) else {
            break;
        };
        h.ok(c);
    }
    assert!(h.engine.nrp().has_nat_gateway(&id(eid)), "NAT {eid} registered; outstanding {:?}", h.labels());
}

/// Admits `pods` of `eid`, creates the NAT gateway and publishes the addresses.
pub fn live_egress(h: &mut Harness, eid: &str, pods: &[Pod]) {
    for p in pods {
        admit(h, p);
    }
    create_nat(h, eid);
    assert_eq!(state(h, eid), Some(ResourceState::Created));
    sync_ok(h).expect("a sync after the NAT create");
    assert!(h.engine.nrp().has_addresses_for(&id(eid)));
}

/// Completes the outstanding calls of the outbound delete of `eid` with success, in order
/// (including last-pod finalizer removals).
pub fn finish_nat_delete(h: &mut Harness, eid: &str) {
    for _ in 0..20 {
        let Some(c) = h.find_by(|c| match c {
            Call::Cloud(CloudCall::GetSgwServices) => true,
            Call::Cloud(CloudCall::GetNatGateway { name })
            | Call::Cloud(CloudCall::DetachNatGateway { name, .. })
            | Call::Cloud(CloudCall::DeleteNatGateway { name }) => name == eid,
            Call::Cloud(CloudCall::UpdateServices(r)) => r.iter().any(|r| r.name == eid),
            Call::Cloud(CloudCall::DeletePublicIp { name }) => name.starts_with(&format!("{eid}-pip")),
            Call::Kube(KubeCall::RemovePodFinalizer(_)) => h.engine.active_operation(&id(eid)).is_some(),
            _ => false,
        }) else {
            break;
        };
        h.ok(c);
    }
}

/// Delivers a terminating version of `pod`.
pub fn delete_event(h: &mut Harness, pod: &Pod) {
    h.deliver(vec![KubeEvent::PodApplied(terminating(pod))]);
}

pub fn pod_events(h: &Harness, reason: &str) -> usize {
    h.io.events.iter().filter(|e| e.reason == reason && e.kind == ObjectKind::Pod).count()
}

pub fn vs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
