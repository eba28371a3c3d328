//! Group E: endpoints (inbound).

use super::common::*;

fn published(h: &Harness, uid: &str) -> Vec<(String, String)> {
    h.engine.nrp().keys_of(&id(uid)).map(|(l, a)| (l.to_string(), a.to_string())).collect()
}

fn desired(h: &Harness, uid: &str) -> Vec<(String, String)> {
    h.engine.desired().keys_of(&id(uid)).map(|(l, a)| (l.to_string(), a.to_string())).collect()
}

fn k(l: &str, a: &str) -> (String, String) {
    (l.to_string(), a.to_string())
}

#[test]
fn s054_deltas_during_creation_replay_in_order() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.tick();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1"), ("10.1.0.2", "n1")]))]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.2", "n1")]))]);
    let buf = h.engine.buffered_endpoints(&id(UID));
    assert_eq!(buf.len(), 2);
    assert_eq!(buf[1].old.len(), 2, "the old map is kept");
    assert_eq!(buf[1].new.len(), 1);
    assert!(desired(&h, UID).is_empty());
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices", "patch-service-ingress"] {
        let c = h.find(label).unwrap();
        h.ok(c);
    }
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
    assert_eq!(desired(&h, UID), vec![k("10.0.0.1", "10.1.0.2")], "removed IP did not leak");
    sync_ok(&mut h);
    assert_eq!(published(&h, UID), vec![k("10.0.0.1", "10.1.0.2")]);
}

#[test]
fn s055_unknown_service_endpoints_dropped_then_seeded() {
    let mut h = harness();
    h.engine.update_endpoints(&id(UID), &emap(&[]), &emap(&[("10.1.0.1", "10.0.0.1")]));
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
    assert!(desired(&h, UID).is_empty());
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    assert!(h.engine.buffered_endpoints(&id(UID)).is_empty());
    h.engine.add_service(inbound_cfg(UID, &[80]));
    let buf = h.engine.buffered_endpoints(&id(UID));
    assert_eq!(buf.len(), 1);
    assert_eq!(buf[0].new, emap(&[("10.1.0.1", "10.0.0.1")]));
}

#[test]
fn s056_registered_untracked_service_applies_endpoints_live() {
    let mut h = harness();
    h.engine.nrp.set_load_balancer(&id(UID), true);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    assert_eq!(desired(&h, UID), vec![k("10.0.0.1", "10.1.0.1")]);
    assert!(location_sync_triggered(&h));
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"]);
}

#[test]
fn s057_unchanged_but_unrecorded_address_is_recorded() {
    let mut h = harness();
    create(&mut h, UID, &[80]);
    let m = emap(&[("10.1.0.1", "10.0.0.1")]);
    h.engine.update_endpoints(&id(UID), &m, &m);
    assert_eq!(desired(&h, UID), vec![k("10.0.0.1", "10.1.0.1")]);
}

#[test]
fn s058_slice_removal_after_seed_is_not_resurrected() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    h.deliver(vec![KubeEvent::EndpointSliceDeleted(slice("s", UID, &[("10.1.0.1", "n1")]))]);
    assert!(h.run_ok(20));
    assert!(desired(&h, UID).is_empty());
    assert!(published(&h, UID).is_empty());
}

#[test]
fn s059_node_ip_changes_move_endpoints() {
    let mut h = harness();
    // n3 is unknown when the slice arrives.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", UID, &[("10.1.0.1", "n1"), ("10.1.0.3", "n3")]))]);
    create(&mut h, UID, &[80]);
    sync_ok(&mut h);
    assert_eq!(published(&h, UID), vec![k("10.0.0.1", "10.1.0.1")]);
    // Node add registers the dropped pod.
    h.deliver(vec![KubeEvent::NodeApplied(node("n3", &["10.0.0.3"]))]);
    h.tick();
    sync_ok(&mut h);
    assert_eq!(published(&h, UID), vec![k("10.0.0.1", "10.1.0.1"), k("10.0.0.3", "10.1.0.3")]);
    // IP change moves the pod; an unchanged IP set (reordered) does nothing.
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"]))]);
    assert!(!location_sync_triggered(&h));
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.11"]))]);
    h.tick();
    let body = sync_ok(&mut h).unwrap();
    assert!(body.iter().any(|l| l.location == "10.0.0.1" && l.addresses.is_empty()), "old location deleted");
    assert!(body.iter().any(|l| l.location == "10.0.0.11" && l.action == UpdateAction::FullUpdate));
    assert_eq!(published(&h, UID), vec![k("10.0.0.11", "10.1.0.1"), k("10.0.0.3", "10.1.0.3")]);
    // Node delete drains.
    h.deliver(vec![KubeEvent::NodeDeleted(node("n3", &["10.0.0.3"]))]);
    h.tick();
    sync_ok(&mut h);
    assert_eq!(published(&h, UID), vec![k("10.0.0.11", "10.1.0.1")]);
    // Events for unknown nodes / before anything exists never panic.
    let mut fresh = Harness::new(1);
    fresh.deliver(vec![KubeEvent::NodeDeleted(node("x", &[])), KubeEvent::NodeApplied(node("x", &["bogus"]))]);
    fresh.tick();
    inv(&h);
}

#[test]
fn s060_endpoint_selection_through_events() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::NodeApplied(node("ds", &["10.0.0.9", "FD00::9"]))]);
    let mut sl = slice("s", UID, &[]);
    sl.endpoints = vec![
        Endpoint { addresses: vec!["10.1.0.1".into()], ready: None, node_name: Some("ds".into()) },
        Endpoint { addresses: vec!["10.1.0.2".into()], ready: Some(false), node_name: Some("ds".into()) },
        Endpoint { addresses: vec!["bad".into(), "FD00:0:0::1:1".into()], ready: Some(true), node_name: Some("ds".into()) },
        Endpoint { addresses: vec!["10.1.0.4".into()], ready: Some(true), node_name: None },
    ];
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sl)]);
    create(&mut h, UID, &[80]);
    assert_eq!(desired(&h, UID), vec![k("10.0.0.9", "10.1.0.1"), k("fd00::9", "fd00::1:1")]);
}

#[test]
fn s061_owner_change_splits_removals_and_additions() {
    let a = "aaaaaaaa-0000-0000-0000-000000000001";
    let b = "bbbbbbbb-0000-0000-0000-000000000002";
    let mut h = harness();
    create(&mut h, a, &[80]);
    create(&mut h, b, &[80]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", a, &[("10.1.0.1", "n1")]))]);
    assert_eq!(desired(&h, a), vec![k("10.0.0.1", "10.1.0.1")]);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s", b, &[("10.1.0.2", "n1")]))]);
    assert!(desired(&h, a).is_empty(), "old owner only lost addresses");
    assert_eq!(desired(&h, b), vec![k("10.0.0.1", "10.1.0.2")], "new owner only gained");
    // A slice losing its owner: removals only.
    let mut orphaned = slice("s", b, &[("10.1.0.2", "n1")]);
    orphaned.owner_references.clear();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(orphaned)]);
    assert!(desired(&h, b).is_empty());
    inv(&h);
}
