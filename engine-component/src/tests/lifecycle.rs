//! The simple inbound path end to end, and snapshot/restore around it.

use super::common::*;

#[test]
fn inbound_create_publish_delete_end_to_end() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("web-1", UID, &[("10.1.0.1", "n1"), ("10.1.0.2", "n2")]))]);
    let started = h.tick();
    assert!(started.is_empty(), "untracked slice starts nothing: {:?}", started_labels(&started));

    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    assert_eq!(state(&h, UID), Some(ResourceState::NotStarted));
    assert_eq!(h.engine.buffered_endpoints(&id(UID)).len(), 1, "endpoints seeded from the slice cache");
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["add-service-finalizers"]);
    assert_eq!(state(&h, UID), Some(ResourceState::CreationInProgress));

    let s = h.ok(s[0].0);
    assert_eq!(started_labels(&s), vec!["PUT publicIPAddresses"]);
    let s = h.ok(s[0].0);
    assert_eq!(started_labels(&s), vec!["PUT loadBalancers"]);
    match &s[0].1 {
        Call::Cloud(CloudCall::PutLoadBalancer(lb)) => {
            assert_eq!(lb.name, UID);
            assert_eq!(lb.public_ip, format!("{UID}-pip"));
            assert_eq!(
                lb.rules,
                vec![LbRule { protocol: TransportProtocol::Tcp, frontend_port: 80, backend_port: 80, idle_timeout_minutes: 4 }]
            );
        }
        other => panic!("{other:?}"),
    }
    let s = h.ok(s[0].0);
    match &s[0].1 {
        Call::Cloud(CloudCall::UpdateServices(r)) => {
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].name, UID);
            assert!(!r[0].is_delete);
            assert_eq!(r[0].service_type, ServiceType::Inbound);
            assert_eq!(r[0].backend_pools, vec![BackendPool { load_balancer: UID.into(), pool: UID.into() }]);
            assert_eq!(r[0].nat_gateway, NatReference::Absent);
        }
        other => panic!("{other:?}"),
    }
    assert!(h.engine.nrp().load_balancers().is_empty(), "not registered before the call succeeds");
    let s = h.ok(s[0].0);
    assert!(h.engine.nrp().has_load_balancer(&id(UID)));
    assert_eq!(started_labels(&s), vec!["patch-service-ingress"]);
    match &s[0].1 {
        Call::Kube(KubeCall::PatchServiceIngress(r, ing)) => {
            assert_eq!(r.uid, UID);
            assert_eq!(ing.len(), 1);
            assert!(ing[0].ip.starts_with("20."));
        }
        other => panic!("{other:?}"),
    }
    // No address published before Created.
    assert!(h.find("POST updateAddressLocations").is_none());
    let s = h.ok(s[0].0);
    assert_eq!(state(&h, UID), Some(ResourceState::Created));
    assert_eq!(h.engine.buffered_endpoints(&id(UID)).len(), 0);
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"]);
    let body = sync_ok(&mut h).unwrap();
    assert_eq!(body.len(), 2);
    assert!(body.iter().all(|l| l.action == UpdateAction::FullUpdate));
    assert_eq!(h.engine.nrp().address_count(), 2);
    inv(&h);
    assert!(h.engine.is_settled());

    // Delete: drain first.
    let mut deleting = lb_service(UID, &[80]);
    deleting.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    h.deliver(vec![KubeEvent::ServiceApplied(deleting)]);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending));
    let s = h.tick();
    assert_eq!(started_labels(&s), vec!["POST updateAddressLocations"]);
    let body = sync_ok(&mut h).unwrap();
    assert!(body.iter().all(|l| l.addresses.is_empty() && l.action == UpdateAction::PartialUpdate));
    assert_eq!(h.engine.nrp().address_count(), 0);
    assert_eq!(state(&h, UID), Some(ResourceState::DeletionInProgress));
    let s = h.outstanding.iter().map(|(i, c)| (*i, c.clone())).collect::<Vec<_>>();
    assert_eq!(started_labels(&s), vec!["POST updateServices"], "detach pool");
    let s = h.ok(s[0].0);
    assert_eq!(started_labels(&s), vec!["DELETE loadBalancers"]);
    let s = h.ok(s[0].0);
    assert!(is_unregister(&s[0].1, UID));
    let s = h.ok(s[0].0);
    assert_eq!(started_labels(&s), vec!["DELETE publicIPAddresses"]);
    assert!(h.engine.nrp().has_load_balancer(&id(UID)));
    let s = h.ok(s[0].0);
    assert!(!h.engine.nrp().has_load_balancer(&id(UID)));
    assert_eq!(started_labels(&s), vec!["remove-service-finalizers"]);
    h.ok(s[0].0);
    assert_eq!(state(&h, UID), None);
    assert!(h.engine.is_settled());
    inv(&h);
}

#[test]
fn snapshot_restore_mid_create_keeps_awaiting_the_call() {
    let mut h = harness();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("web-1", UID, &[("10.1.0.1", "n1")]))]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let s = h.tick();
    let s = h.ok(s[0].0);
    let pip_call = s[0].0;
    let bytes = h.engine.snapshot();
    let restored = crate::Engine::restore(&bytes).unwrap();
    assert_eq!(restored.snapshot(), bytes, "snapshot round-trips byte for byte");
    h.engine = restored;
    inv(&h);
    let s = h.ok(pip_call);
    assert_eq!(started_labels(&s), vec!["PUT loadBalancers"]);
    assert!(h.run_ok(50));
    assert_eq!(h.engine.nrp().address_count(), 1);
    inv(&h);
}

#[test]
fn restore_refuses_newer_schema_and_garbage() {
    let e = crate::Engine::new(TenantConfig { tenant: "t".into(), seed: 1, ..TenantConfig::default() });
    let mut v: serde_json::Value = serde_json::from_slice(&e.snapshot_json()).unwrap();
    v["schema_version"] = serde_json::json!(99);
    let err = crate::Engine::restore(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.0.contains("newer"), "{err}");
    assert!(crate::Engine::restore(b"not json").is_err());
    assert!(crate::Engine::restore(b"{}").unwrap_err().0.contains("schema_version"));
}

#[test]
fn binary_snapshot_refuses_unknown_versions_and_forged_headers() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    let good = h.engine.snapshot();
    assert_eq!(&good[..4], b"DTSN");
    assert_eq!(crate::snapshot::schema_version(&good), Some(3));
    let restored = crate::Engine::restore(&good).unwrap();
    assert_eq!(restored.snapshot_json(), h.engine.snapshot_json(), "the binary form holds the whole state");

    let with = |at: usize, word: u32| {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&word.to_le_bytes());
        crate::Engine::restore(&b).unwrap_err().0
    };
    let newer = with(4, 4);
    assert!(newer.contains("schema_version 4 is newer") && newer.contains("upgrade the engine"), "{newer}");
    assert!(with(4, 0).contains("schema_version 0"));
    assert!(with(4, 2).contains("never written in binary"));
    // A forged length is refused before anything is allocated for it.
    assert!(with(8, u32::MAX).contains("more than the"), "{}", with(8, u32::MAX));
    assert!(with(8, (good.len() * 300) as u32).contains("more than its"));
    assert!(with(8, 7).contains("corrupt"));
    let short = crate::Engine::restore(&good[..9]).unwrap_err().0;
    assert!(short.contains("shorter than its 12-byte header"), "{short}");
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last / 2] ^= 0xff;
    flipped[last] ^= 0xff;
    assert!(crate::Engine::restore(&flipped).is_err(), "a corrupt block is refused");
    assert!(crate::Engine::restore(b"\x00\x01garbage").unwrap_err().0.contains("neither the binary form"));
}

#[test]
fn binary_snapshot_keeps_running_the_consistency_checks() {
    // A JSON snapshot the invariants refuse (a worker whose op is gone), written in binary, is
    // refused the same way.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/snapshot_decoder/worker_without_op.json");
    let json = std::fs::read(path).unwrap();
    let json_err = crate::Engine::restore(&json).unwrap_err().0;
    assert!(json_err.contains("inconsistent engine state"), "{json_err}");
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let unchecked: crate::Engine = serde_json::from_value(v["engine"].clone()).unwrap();
    let err = crate::Engine::restore(&unchecked.snapshot()).unwrap_err().0;
    assert_eq!(err, json_err, "the same check, the same error");
}

#[test]
fn schema_1_snapshot_restores_with_empty_egress_state() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    let mut v: serde_json::Value = serde_json::from_slice(&h.engine.snapshot_json()).unwrap();
    assert_eq!(v["schema_version"], serde_json::json!(3));
    v["schema_version"] = serde_json::json!(1);
    let e = v["engine"].as_object_mut().unwrap();
    for field in [
        "pod_check_candidates",
        "pod_objects",
        "pod_busy",
        "pod_queue",
        "pod_calls",
        "pod_deferred",
        "pod_released",
        "pod_shadows",
        "cluster_has_ipv6",
        "startup",
    ] {
        assert!(e.remove(field).is_some(), "{field}");
    }
    let restored = crate::Engine::restore(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(restored.operation(&id(UID)).map(|o| o.state), Some(ResourceState::Created));
    restored.check_invariants().unwrap();
}

#[test]
fn schema_2_snapshot_restores_initialized_without_known_addresses() {
    let mut h = harness();
    create_published(&mut h, UID, "s", "10.1.0.1");
    assert!(h.engine.operation(&id(UID)).unwrap().public_ip.is_some(), "the create learnt its address");
    let mut v: serde_json::Value = serde_json::from_slice(&h.engine.snapshot_json()).unwrap();
    v["schema_version"] = serde_json::json!(2);
    let e = v["engine"].as_object_mut().unwrap();
    assert!(e.remove("startup").is_some());
    for (_, op) in e["ops"]["ops"].as_object_mut().unwrap() {
        assert!(op.as_object_mut().unwrap().remove("public_ip").is_some());
    }
    let restored = crate::Engine::restore(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(restored.is_initialized(), "a version 2 engine was running");
    assert_eq!(restored.operation(&id(UID)).unwrap().public_ip, None);
    restored.check_invariants().unwrap();
    let again: serde_json::Value = serde_json::from_slice(&restored.snapshot_json()).unwrap();
    assert_eq!(again["schema_version"], serde_json::json!(3));
    assert_eq!(again["engine"]["startup"]["phase"], serde_json::json!("Ready"));
}
