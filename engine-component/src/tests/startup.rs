//! Group J scenarios that the engine's startup pieces cover: 113, 114, 116 and 121 (115 is in
//! `identity.rs`). The component has no initialization pass of its own (see `startup.rs`); these
//! exercise the functions such a pass is made of: same-family placement and canonical keys, the
//! NRP snapshot seeding, the reserved-identity guards and the recovery of terminating pods.

use super::common::*;
use crate::startup::nrp_snapshot;

const V4: &str = "a1111111-0000-4000-8000-000000000001";
const V6: &str = "b2222222-0000-4000-8000-000000000002";

fn dual_cluster_events() -> Vec<KubeEvent> {
    let mut v6 = lb_service(V6, &[80]);
    v6.ip_families = vec!["IPv6".into()];
    let mut s6 = slice("s6", V6, &[("FD01:0:0:0::0001", "d1")]);
    s6.address_type = "IPv6".into();
    vec![
        // InternalIPs in a non-canonical IPv6 form.
        KubeEvent::NodeApplied(node("d1", &["10.0.0.3", "FD00:0:0::3"])),
        KubeEvent::EndpointSliceApplied(slice("s4", V4, &[("10.1.3.1", "d1")])),
        KubeEvent::EndpointSliceApplied(s6),
        KubeEvent::ServiceApplied(lb_service(V4, &[80])),
        KubeEvent::ServiceApplied(v6),
    ]
}

#[test]
fn s113_dual_stack_node_restart_is_already_in_sync() {
    let mut h = Harness::new(3);
    h.deliver(dual_cluster_events());
    assert!(h.run_ok(40));
    assert_eq!(h.engine.nrp().services_at("10.0.0.3", "10.1.3.1"), Some(&[id(V4)].into_iter().collect()));
    assert_eq!(h.engine.nrp().services_at("fd00::3", "fd01::1"), Some(&[id(V6)].into_iter().collect()));
    assert!(h.engine.nrp().services_at("10.0.0.3", "fd01::1").is_none(), "never the v6 pod under the v4 node IP");

    // What the ServiceGateway reports after the restart, spelled as it likes.
    let services = vec![
        SgwService {
            name: V4.to_uppercase(),
            service_type: ServiceType::Inbound,
            backend_pools: vec![],
            nat_gateway: None,
            is_default: false,
        },
        SgwService { name: V6.into(), service_type: ServiceType::Inbound, backend_pools: vec![], nat_gateway: None, is_default: false },
        SgwService {
            name: "default-natgw".into(),
            service_type: ServiceType::Outbound,
            backend_pools: vec![],
            nat_gateway: Some("default-natgw".into()),
            is_default: true,
        },
    ];
    let locations = vec![
        AddressLocation {
            location: "10.0.0.3".into(),
            addresses: vec![AddressUpdate { address: "10.1.3.1".into(), services: vec![V4.to_uppercase()] }],
        },
        AddressLocation {
            location: "FD00::0003".into(),
            addresses: vec![AddressUpdate { address: "fd01:0::1".into(), services: vec![V6.into()] }],
        },
    ];
    let mut r = Harness::new(4);
    r.engine.seed_nrp(&services, &locations);
    r.deliver(dual_cluster_events());
    assert!(r.engine.full_location_diff().is_empty(), "restart: AlreadyInSync");
    let started = r.tick();
    assert!(started.iter().all(|(_, c)| c.label() != "POST updateAddressLocations"), "{started:?}");
    // Each existing LB gets its one re-PUT (adoption), nothing is re-created or removed.
    assert!(started.iter().all(|(_, c)| matches!(c, Call::Cloud(CloudCall::PutLoadBalancer(_)))), "{started:?}");
    assert_eq!(started.len(), 2);
    assert!(r.run_ok(20));
    assert!(r.log.iter().all(|(_, c)| c.label() != "POST updateAddressLocations"));
    inv(&r);
}

#[test]
fn s114_egress_address_without_same_family_node_ip_and_fqdn_slices() {
    let mut h = harness();
    let p = egress_pod("ns/v6only", "u1", EG, &["fd01::1"], &["10.0.0.1"]);
    admit(&mut h, &p);
    assert_eq!(pod_events(&h, crate::names::REASON_NO_NODE_LOCATION), 1);
    assert!(!h.engine.is_service_tracked(&id(EG)), "the identity is not desired");
    assert!(h.engine.desired().is_empty());
    assert!(h.engine.buffered_pods(&id(EG)).is_empty());
    // Its deletion has nothing to drain.
    h.deliver(vec![KubeEvent::PodApplied(terminating(&p))]);
    let started = h.tick();
    assert!(started.iter().any(|(_, c)| is_remove_fin(c, "u1")));
    // FQDN endpoints import nothing.
    let mut fq = slice("fq", UID, &[("pod.example.com", "n1")]);
    fq.address_type = "FQDN".into();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(fq)]);
    create(&mut h, UID, &[80]);
    assert!(h.engine.desired().keys_of(&id(UID)).next().is_none());
    inv(&h);
}

#[test]
fn s116_default_natgw_is_never_snapshotted_removed_or_touched() {
    let services = vec![
        SgwService {
            name: "Default-NatGW".into(),
            service_type: ServiceType::Outbound,
            backend_pools: vec![],
            nat_gateway: Some("default-natgw".into()),
            is_default: true,
        },
        SgwService {
            name: "egress-a".into(),
            service_type: ServiceType::InboundOutbound,
            backend_pools: vec![],
            nat_gateway: None,
            is_default: false,
        },
    ];
    let locations = vec![AddressLocation {
        location: "10.0.0.1".into(),
        addresses: vec![
            AddressUpdate { address: "10.1.0.1".into(), services: vec!["default-natgw".into()] },
            AddressUpdate { address: "10.1.0.2".into(), services: vec!["default-natgw".into(), "egress-a".into()] },
        ],
    }];
    let snap = nrp_snapshot(&services, &locations);
    assert_eq!(snap.nat_gateways, vec![id("egress-a")]);
    assert_eq!(snap.load_balancers, vec![id("egress-a")], "InboundOutbound counts as both");
    assert!(!snap.locations["10.0.0.1"].contains_key("10.1.0.1"));
    assert_eq!(snap.locations["10.0.0.1"]["10.1.0.2"], [id("egress-a")].into_iter().collect());

    let mut h = harness();
    h.engine.seed_nrp(&services, &locations);
    let dn = id("default-natgw");
    assert!(!h.engine.nrp().has_nat_gateway(&dn));
    assert!(!h.engine.nrp().has_addresses_for(&dn));
    // Never a removal, never an orphan, never re-created.
    h.engine.delete_service(&dn, false, true);
    h.engine.delete_service(&dn, true, true);
    h.engine.add_pod(&dn, "ns/p", "u1", "10.0.0.1", "10.1.0.9");
    let r = h.engine.delete_pod(&dn, "10.0.0.1", &vs(&["10.1.0.1"]), "ns", "p", "u1");
    assert_eq!(r.decision, crate::egress::FinalizerDecision::Reject);
    h.deliver(vec![KubeEvent::PodApplied(epod("p", "u1", "DEFAULT-NATGW", "10.1.0.9"))]);
    assert!(h.run_ok(20));
    assert!(!h.engine.is_service_tracked(&dn));
    for (_, c) in &h.log {
        let text = format!("{c:?}").to_ascii_lowercase();
        assert!(!text.contains("default-natgw"), "a call names the reserved gateway: {c:?}");
    }
    inv(&h);
}

#[test]
fn s121_terminating_dual_stack_pod_recovered_at_startup() {
    let mut h = dual_harness();
    let p = terminating(&egress_pod("ns/d", "u1", EG, &["10.1.3.1", "FD01::1"], &["10.0.0.3", "fd00::3"]));
    assert!(h.engine.recover_pod_finalizer(&p));
    let rec = h.engine.pod_deletion("ns/d").unwrap();
    assert_eq!(rec.addresses, vs(&["10.1.3.1", "fd01::1"]), "every family");
    assert!(!rec.is_last_pod && rec.recovered_at_startup && !rec.verify_service_drain);
    let mut noip = terminating(&egress_pod("ns/n", "u2", EG, &[], &[]));
    noip.pod_ip.clear();
    assert!(h.engine.recover_pod_finalizer(&noip));
    let rec = h.engine.pod_deletion("ns/n").unwrap();
    assert!(rec.verify_service_drain && rec.addresses.is_empty());
    assert_eq!(metric(&h, "finalizers_recovery_scheduled_total", &[]), 2.0);
    // A live pod, or one without our finalizer, is not recovered.
    assert!(!h.engine.recover_pod_finalizer(&egress_pod("ns/live", "u3", EG, &["10.1.0.3"], &["10.0.0.1"])));
    // Nothing is in NRP: both are released by the first pass, closing the recovery gap.
    h.tick();
    for uid in ["u1", "u2"] {
        let c = h.find_by(|c| is_remove_fin(c, uid)).unwrap_or_else(|| panic!("{uid}: {:?}", h.labels()));
        h.ok(c);
    }
    assert!(h.engine.pod_deletions().is_empty());
    assert_eq!(metric(&h, "finalizers_recovered_total", &[]), 2.0);
    inv(&h);
}
