//! ENGINE.md 2.6 and 6.3: an egress NAT gateway decided IPv4-only becomes dual-stack when the
//! cluster gains an IPv6 node (its `-pip-v6` created, the NAT gateway PUT with it), in whatever
//! state the outbound service is when the node joins.

use super::common::*;

fn pip_v6(eid: &str) -> Call {
    Call::Cloud(CloudCall::PutPublicIp { name: format!("{eid}-pip-v6"), version: IpVersion::V6 })
}

fn dual_nat(eid: &str) -> Call {
    Call::Cloud(CloudCall::PutNatGateway(NatGatewaySpec {
        name: eid.into(),
        public_ips: vec![format!("{eid}-pip")],
        public_ips_v6: vec![format!("{eid}-pip-v6")],
    }))
}

fn families(h: &Harness, eid: &str) -> Vec<IpVersion> {
    h.engine.operation(&id(eid)).and_then(|o| o.config.outbound_config()).map(|c| c.ip_families.clone()).unwrap_or_default()
}

fn applied_families(h: &Harness, eid: &str) -> Vec<IpVersion> {
    h.engine
        .operation(&id(eid))
        .and_then(|o| o.last_applied_config.as_ref())
        .and_then(|c| c.outbound_config())
        .map(|c| c.ip_families.clone())
        .unwrap_or_default()
}

fn dual_node() -> KubeEvent {
    KubeEvent::NodeApplied(node("d1", &["10.0.0.3", "fd00::3"]))
}

#[test]
fn a_live_ipv4_nat_gateway_gets_its_v6_public_ip_when_a_dual_stack_node_joins() {
    let mut h = harness();
    live_egress(&mut h, EG, &[epod("a", "u1", EG, "10.1.0.1")]);
    assert_eq!(applied_families(&h, EG), vec![IpVersion::V4]);
    assert!(h.engine.is_settled());

    h.deliver(vec![dual_node()]);
    assert_eq!(state(&h, EG), Some(ResourceState::UpdateInProgress), "the outbound service is out of date");
    h.tick();
    // Only the missing public IP is created, then the NAT gateway is PUT with both.
    assert_eq!(h.outstanding.values().cloned().collect::<Vec<_>>(), vec![pip_v6(EG)]);
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.ok(c);
    assert_eq!(h.outstanding.values().cloned().collect::<Vec<_>>(), vec![dual_nat(EG)]);
    let c = h.find("PUT natGateways").unwrap();
    h.ok(c);
    // The registration (NAT reference) is unchanged: nothing else is sent.
    assert!(h.outstanding.is_empty(), "{:?}", h.labels());
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    assert_eq!(applied_families(&h, EG), vec![IpVersion::V4, IpVersion::V6]);
    assert!(h.engine.nrp().has_nat_gateway(&id(EG)), "the NAT stays registered and published throughout");
    assert_eq!(
        metric(&h, "service_operations_total", &[("operation", "update"), ("service_type", "outbound"), ("result", "success")]),
        1.0
    );
    assert_eq!(metric(&h, "outbound_service_updates_skipped_total", &[]), 0.0);
    assert!(h.engine.is_settled());
    inv(&h);

    // Another dual-stack node changes nothing more.
    h.deliver(vec![KubeEvent::NodeApplied(node("d2", &["10.0.0.4", "fd00::4"]))]);
    assert!(h.tick().is_empty());
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
}

#[test]
fn a_failed_upgrade_retries_with_backoff_and_keeps_the_nat_live() {
    let mut h = harness();
    live_egress(&mut h, EG, &[epod("a", "u1", EG, "10.1.0.1")]);
    h.deliver(vec![dual_node()]);
    h.tick();
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    h.fail(c, transient());
    assert_eq!(state(&h, EG), Some(ResourceState::UpdateInProgress));
    assert_eq!(h.engine.operation(&id(EG)).unwrap().retry_count, 1);
    assert!(h.engine.nrp().has_nat_gateway(&id(EG)));
    // A new pod of the identity is applied live meanwhile (UpdateInProgress is ready).
    admit(&mut h, &epod("b", "u2", EG, "10.1.0.2"));
    assert!(h.engine.desired().get("10.0.0.1", "10.1.0.2").is_some());
    h.wake();
    // The retry re-PUTs the v6 public IP (idempotent), then the NAT gateway.
    let c = h.find("PUT publicIPAddresses").unwrap();
    assert_eq!(h.outstanding[&c], pip_v6(EG));
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    assert_eq!(h.outstanding[&c], dual_nat(EG));
    h.ok(c);
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    assert_eq!(applied_families(&h, EG), vec![IpVersion::V4, IpVersion::V6]);
    inv(&h);
}

#[test]
fn a_create_in_flight_when_the_node_joins_is_followed_by_the_upgrade() {
    let mut h = harness();
    admit(&mut h, &epod("a", "u1", EG, "10.1.0.1"));
    let c = h.find("PUT publicIPAddresses").unwrap();
    assert_eq!(h.outstanding[&c], Call::Cloud(CloudCall::PutPublicIp { name: format!("{EG}-pip"), version: IpVersion::V4 }));
    h.deliver(vec![dual_node()]);
    assert_eq!(families(&h, EG), vec![IpVersion::V4, IpVersion::V6], "the desired config follows the cluster");
    // The IPv4-only create in flight finishes as it started...
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    assert_eq!(
        h.outstanding[&c],
        Call::Cloud(CloudCall::PutNatGateway(NatGatewaySpec {
            name: EG.into(),
            public_ips: vec![format!("{EG}-pip")],
            public_ips_v6: vec![]
        }))
    );
    h.ok(c);
    let c = h.find("POST updateServices").unwrap();
    h.ok(c);
    assert!(h.engine.nrp().has_nat_gateway(&id(EG)));
    // ...and the config drift makes it an update right away.
    assert_eq!(state(&h, EG), Some(ResourceState::UpdateInProgress));
    let c = h.find("PUT publicIPAddresses").unwrap();
    assert_eq!(h.outstanding[&c], pip_v6(EG));
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    assert_eq!(h.outstanding[&c], dual_nat(EG));
    h.ok(c);
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    assert!(h.run_ok(50));
    inv(&h);
}

#[test]
fn a_create_waiting_for_its_retry_when_the_node_joins_creates_both_families() {
    let mut h = harness();
    admit(&mut h, &epod("a", "u1", EG, "10.1.0.1"));
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.fail(c, transient());
    assert_eq!(state(&h, EG), Some(ResourceState::NotStarted));
    h.deliver(vec![dual_node()]);
    h.wake();
    let c = h.find("PUT publicIPAddresses").unwrap();
    h.ok(c);
    let c = h.find("PUT publicIPAddresses").unwrap();
    assert_eq!(h.outstanding[&c], pip_v6(EG));
    h.ok(c);
    let c = h.find("PUT natGateways").unwrap();
    assert_eq!(h.outstanding[&c], dual_nat(EG));
    h.ok(c);
    let c = h.find("POST updateServices").unwrap();
    h.ok(c);
    assert_eq!(state(&h, EG), Some(ResourceState::Created));
    assert_eq!(applied_families(&h, EG), vec![IpVersion::V4, IpVersion::V6]);
    inv(&h);
}

#[test]
fn inbound_services_and_an_ipv6_cluster_from_the_start_are_untouched() {
    // Inbound only: a dual-stack node joining changes no operation.
    let mut h = harness();
    create(&mut h, UID, &[80]);
    h.deliver(vec![dual_node()]);
    assert_eq!(state(&h, UID), Some(ResourceState::Created));
    assert!(!h.engine.dispatcher().is_queued(&id(UID)));
    // Dual-stack from the start: the NAT is created with both families, no update follows.
    let mut h = dual_harness();
    live_egress(&mut h, EG, &[epod("a", "u1", EG, "10.1.0.1")]);
    assert_eq!(applied_families(&h, EG), vec![IpVersion::V4, IpVersion::V6]);
    assert!(h.run_ok(20));
    assert_eq!(metric(&h, "service_operations_total", &[("operation", "update")]), 0.0);
}
