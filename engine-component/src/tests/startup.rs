//! Group J (initialization, restart, orphans): scenarios 113-130 through the start-up pass of a
//! new engine ([`Harness::starting`]), as hosts run it: the initial lists and the marker are
//! delivered, the first tick starts the five list calls, their answers come from a [`Cloud`].
//! Scenario 115 is in `identity.rs`. The last tests pin the pieces around the pass: the marker,
//! the held watch events, loud list failures, the metrics.

use super::common::*;
use crate::startup::{is_uuid, nrp_snapshot, public_ip_identity};

const V4: &str = "a1111111-0000-4000-8000-000000000001";
const V6: &str = "b2222222-0000-4000-8000-000000000002";
const U1: &str = "c3333333-0000-4000-8000-000000000003";
const U2: &str = "d4444444-0000-4000-8000-000000000004";
const U3: &str = "e5555555-0000-4000-8000-000000000005";
const U4: &str = "f6666666-0000-4000-8000-000000000006";
const U5: &str = "a7777777-0000-4000-8000-000000000007";
const U6: &str = "b8888888-0000-4000-8000-000000000008";

const LISTS: [&str; 5] = ["GET services", "GET addressLocations", "GET loadBalancers", "GET natGateways", "GET publicIPAddresses"];

/// What ARM and NRP hold when the engine starts.
#[derive(Clone, Debug, Default)]
struct Cloud {
    services: Vec<SgwService>,
    locations: Vec<AddressLocation>,
    lbs: Vec<String>,
    nats: Vec<String>,
    pips: Vec<PublicIpInfo>,
}

fn sgw(name: &str, t: ServiceType) -> SgwService {
    let pools = if t == ServiceType::Outbound { vec![] } else { vec![BackendPool { load_balancer: name.into(), pool: name.into() }] };
    let nat = (t == ServiceType::Outbound).then(|| name.to_string());
    SgwService { name: name.into(), service_type: t, backend_pools: pools, nat_gateway: nat, is_default: false }
}

fn pip(name: &str, ip: Option<&str>, attached: bool) -> PublicIpInfo {
    let version = if name.ends_with("-pip-v6") { IpVersion::V6 } else { IpVersion::V4 };
    PublicIpInfo { name: name.into(), ip_address: ip.map(str::to_string), version, attached }
}

impl Cloud {
    /// A registered inbound service: registration, LB, attached `<id>-pip` with `ip`.
    fn inbound(mut self, id: &str, ip: &str) -> Cloud {
        self.services.push(sgw(id, ServiceType::Inbound));
        self.lbs.push(id.into());
        self.pips.push(pip(&format!("{id}-pip"), Some(ip), true));
        self
    }
    /// A registered NAT gateway with its attached `<id>-pip`.
    fn outbound(mut self, id: &str) -> Cloud {
        self.services.push(sgw(id, ServiceType::Outbound));
        self.nats.push(id.into());
        self.pips.push(pip(&format!("{id}-pip"), Some("20.9.9.9"), true));
        self
    }
    fn location(mut self, loc: &str, addr: &str, services: &[&str]) -> Cloud {
        let update = AddressUpdate { address: addr.into(), services: services.iter().map(|s| s.to_string()).collect() };
        match self.locations.iter_mut().find(|l| l.location == loc) {
            Some(l) => l.addresses.push(update),
            None => self.locations.push(AddressLocation { location: loc.into(), addresses: vec![update] }),
        }
        self
    }
    fn lb(mut self, name: &str) -> Cloud {
        self.lbs.push(name.into());
        self
    }
    fn nat(mut self, name: &str) -> Cloud {
        self.nats.push(name.into());
        self
    }
    fn pip(mut self, name: &str, ip: Option<&str>, attached: bool) -> Cloud {
        self.pips.push(pip(name, ip, attached));
        self
    }
    /// The answer to a start-up list call.
    fn output(&self, call: &Call) -> Option<CallOutput> {
        match call {
            Call::Cloud(CloudCall::GetSgwServices) => Some(CallOutput::SgwServices(self.services.clone())),
            Call::Cloud(CloudCall::GetAddressLocations) => Some(CallOutput::AddressLocations(self.locations.clone())),
            Call::Cloud(CloudCall::ListLoadBalancers) => Some(CallOutput::Names(self.lbs.clone())),
            Call::Cloud(CloudCall::ListNatGateways) => Some(CallOutput::Names(self.nats.clone())),
            Call::Cloud(CloudCall::ListPublicIps) => Some(CallOutput::PublicIps(self.pips.clone())),
            _ => None,
        }
    }
}

fn nodes() -> Vec<KubeEvent> {
    vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"])), KubeEvent::NodeApplied(node("n2", &["10.0.0.2"]))]
}

/// Answers every outstanding list call from `cloud` in one tick; returns what that tick started.
fn answer_lists(h: &mut Harness, cloud: &Cloud) -> Vec<(CallId, Call)> {
    let completions: Vec<Completion> =
        h.outstanding.iter().filter_map(|(id, c)| cloud.output(c).map(|o| Completion { id: *id, outcome: Ok(o) })).collect();
    assert_eq!(completions.len(), 5, "five lists outstanding: {:?}", h.labels());
    h.tick_with(completions)
}

/// A new engine: `initial` and the marker delivered, the lists started and answered from
/// `cloud`. Returns the harness and the calls the start-up pass started.
fn boot(cloud: &Cloud, initial: Vec<KubeEvent>) -> (Harness, Vec<(CallId, Call)>) {
    let mut h = Harness::starting(5);
    let mut events = initial;
    events.push(KubeEvent::InitialListsComplete);
    h.deliver(events);
    let lists = h.tick();
    assert_eq!(started_labels(&lists), LISTS.to_vec(), "the first tick starts the five lists, nothing else");
    let started = answer_lists(&mut h, cloud);
    inv(&h);
    (h, started)
}

fn phase(h: &Harness) -> InitPhase {
    h.engine.initialization().phase
}

fn with_finalizer(mut s: Service) -> Service {
    s.meta.finalizers = crate::names::SERVICE_FINALIZERS.iter().map(|f| f.to_string()).collect();
    s
}

fn deleting_svc(uid: &str) -> Service {
    let mut s = with_finalizer(lb_service(uid, &[80]));
    s.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    s
}

fn names_in_log(h: &Harness, name: &str) -> Vec<&'static str> {
    h.log
        .iter()
        .filter(|(_, c)| format!("{c:?}").to_ascii_lowercase().contains(&name.to_ascii_lowercase()))
        .map(|(_, c)| c.label())
        .collect()
}

fn position(h: &Harness, pred: impl Fn(&Call) -> bool) -> Option<usize> {
    h.log.iter().position(|(_, c)| pred(c))
}

fn deletes_pip(c: &Call, name: &str) -> bool {
    matches!(c, Call::Cloud(CloudCall::DeletePublicIp { name: n }) if n == name)
}

fn is_orphan(h: &Harness, uid: &str) -> Option<bool> {
    h.engine.operation(&id(uid)).map(|o| o.is_orphan)
}

// ---------------------------------------------------------------- 113-116

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
    let mut cloud = Cloud::default().inbound(V4, "20.0.0.4").inbound(V6, "2001:db8::6");
    cloud.services[0].name = V4.to_uppercase();
    cloud.services.push(SgwService {
        name: "default-natgw".into(),
        service_type: ServiceType::Outbound,
        backend_pools: vec![],
        nat_gateway: Some("default-natgw".into()),
        is_default: true,
    });
    cloud = cloud.location("10.0.0.3", "10.1.3.1", &[&V4.to_uppercase()]).location("FD00::0003", "fd01:0::1", &[V6]);
    let (mut r, started) = boot(&cloud, dual_cluster_events());
    assert!(r.engine.full_location_diff().is_empty(), "restart: AlreadyInSync");
    // Each existing LB gets its one re-PUT (adoption), nothing is re-created or removed.
    assert!(started.iter().all(|(_, c)| matches!(c, Call::Cloud(CloudCall::PutLoadBalancer(_)))), "{started:?}");
    assert_eq!(started.len(), 2);
    assert_eq!(phase(&r), InitPhase::Reconciling, "the re-PUTs run before initialization completes");
    assert!(r.run_ok(20));
    assert!(r.log.iter().all(|(_, c)| c.label() != "POST updateAddressLocations"));
    assert!(r.engine.is_initialized());
    inv(&r);
}

#[test]
fn s114_egress_address_without_same_family_node_ip_is_not_desired_and_fqdn_slices_import_nothing() {
    // A previous controller registered the NAT gateway; its only pod now has an IPv6 address on
    // an IPv4-only host: the identity is not desired, so its registration is a removal.
    let p = egress_pod("ns/v6only", "u1", EG, &["fd01::1"], &["10.0.0.1"]);
    let mut fq = slice("fq", UID, &[("pod.example.com", "n1")]);
    fq.address_type = "FQDN".into();
    let mut initial = nodes();
    initial.extend([KubeEvent::PodApplied(p), KubeEvent::EndpointSliceApplied(fq), KubeEvent::ServiceApplied(lb_service(UID, &[80]))]);
    let (mut h, _) = boot(&Cloud::default().outbound(EG), initial);
    assert!(h.engine.operation(&id(EG)).is_some_and(|o| o.state.is_deleting() && !o.is_orphan), "the NAT gateway is a removal");
    assert!(h.run_ok(60));
    assert_eq!(pod_events(&h, crate::names::REASON_NO_NODE_LOCATION), 1);
    assert!(h.engine.desired().is_empty(), "no address registered: {:?}", h.engine.desired().nodes());
    assert!(!h.engine.nrp().has_nat_gateway(&id(EG)));
    assert!(h.log.iter().any(|(_, c)| matches!(c, Call::Cloud(CloudCall::DeleteNatGateway { name }) if name == EG)));
    assert!(h.log.iter().all(|(_, c)| c.label() != "POST updateAddressLocations"), "FQDN endpoints publish nothing");
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

    // At start-up: registered, listed as a NAT gateway, its public IP unattached; a pod even
    // carries its name as a label.
    let cloud = Cloud { services: vec![services[0].clone()], locations: locations[..1].to_vec(), ..Default::default() }
        .nat("default-natgw")
        .pip("default-natgw-pip", Some("4.4.4.4"), false)
        .pip("DEFAULT-NATGW-pip-v6", None, false);
    let mut initial = nodes();
    initial.push(KubeEvent::PodApplied(epod("p", "u1", "DEFAULT-NATGW", "10.1.0.9")));
    let (mut h, _) = boot(&cloud, initial);
    let dn = id("default-natgw");
    assert!(!h.engine.nrp().has_nat_gateway(&dn));
    assert!(!h.engine.nrp().has_addresses_for(&dn));
    assert!(h.run_ok(40));
    assert!(h.engine.is_initialized());
    // Never a removal, never an orphan, never swept, never re-created.
    h.engine.delete_service(&dn, false, true);
    h.engine.delete_service(&dn, true, true);
    h.engine.add_pod(&dn, "ns/p", "u1", "10.0.0.1", "10.1.0.9");
    let r = h.engine.delete_pod(&dn, "10.0.0.1", &vs(&["10.1.0.1"]), "ns", "p", "u1");
    assert_eq!(r.decision, crate::egress::FinalizerDecision::Reject);
    assert!(h.run_ok(20));
    assert!(!h.engine.is_service_tracked(&dn));
    assert!(
        names_in_log(&h, "default-natgw").iter().all(|l| LISTS.contains(l)),
        "a call names the reserved gateway: {:?}",
        names_in_log(&h, "default-natgw")
    );
    assert_eq!(metric(&h, "orphaned_resources_cleaned_total", &[]), 0.0);
    assert_eq!(metric(&h, "orphan_public_ips_swept_total", &[]), 0.0);
    inv(&h);
}

// ---------------------------------------------------------------- 117-120: orphans and stuck finalizers

#[test]
fn s117_orphan_nats_and_lbs_are_deleted_on_their_paths_foreign_names_and_desired_ones_never() {
    let cloud = Cloud::default()
        .lb(U1) // orphan: no registration, no Service
        .pip(&format!("{U1}-pip"), Some("20.1.1.1"), true)
        .lb("my-manual-lb") // not our naming
        .lb(U2) // its Service is desired: an addition, re-created idempotently
        .nat("old-egress") // orphan: no registration, no pod
        .pip("old-egress-pip", Some("20.1.1.2"), true)
        .nat("keep-egress") // a pod wants it
        .nat("Not_Ours!") // not our naming
        .inbound(U3, "20.1.1.3"); // registered, its Service is gone: a removal, not an orphan
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(lb_service(U2, &[80])));
    initial.push(KubeEvent::PodApplied(epod("k", "uk", "keep-egress", "10.2.0.1")));
    let (mut h, _) = boot(&cloud, initial);
    assert_eq!(is_orphan(&h, U1), Some(true));
    assert_eq!(state(&h, U1), Some(ResourceState::DeletionInProgress), "nothing published: straight to the delete");
    assert_eq!(is_orphan(&h, "old-egress"), Some(true));
    assert_eq!(
        h.engine.operation(&id("old-egress")).map(|o| o.kind()),
        Some(crate::config::ServiceKind::Outbound),
        "an orphan NAT is an outbound delete"
    );
    assert_eq!(is_orphan(&h, U3), Some(false), "a registration nobody wants is a removal");
    assert_eq!(state(&h, U2), Some(ResourceState::CreationInProgress), "desired: created, never deleted");
    assert!(!h.engine.is_service_tracked(&id("my-manual-lb")));
    assert!(!h.engine.is_service_tracked(&id("not_ours!")));
    assert!(h.run_ok(100));

    // Dependency order of each orphan: unregister/detach, then the LB or NAT, then its IPs.
    let detach =
        position(&h, |c| matches!(c, Call::Cloud(CloudCall::UpdateServices(r)) if r.iter().any(|r| r.name == U1 && !r.is_delete))).unwrap();
    let del_lb = position(&h, |c| matches!(c, Call::Cloud(CloudCall::DeleteLoadBalancer { name }) if name == U1)).unwrap();
    let unreg = position(&h, |c| is_unregister(c, U1)).unwrap();
    let del_pip = position(&h, |c| deletes_pip(c, &format!("{U1}-pip"))).unwrap();
    assert!(detach < del_lb && del_lb < unreg && unreg < del_pip, "{detach} {del_lb} {unreg} {del_pip}");
    let nat_unreg = position(&h, |c| is_unregister(c, "old-egress")).unwrap();
    let del_nat = position(&h, |c| matches!(c, Call::Cloud(CloudCall::DeleteNatGateway { name }) if name == "old-egress")).unwrap();
    let nat_pip = position(&h, |c| deletes_pip(c, "old-egress-pip")).unwrap();
    assert!(nat_unreg < del_nat && del_nat < nat_pip);
    assert_eq!(metric(&h, "orphaned_resources_cleaned_total", &[]), 2.0);

    assert!(names_in_log(&h, "my-manual-lb").is_empty() && names_in_log(&h, "not_ours!").is_empty(), "foreign names untouched");
    for keep in [U2, "keep-egress"] {
        assert!(!h.log.iter().any(|(_, c)| matches!(c, Call::Cloud(CloudCall::DeleteLoadBalancer { name } | CloudCall::DeleteNatGateway { name }) if name == keep)), "{keep} deleted");
    }
    assert!(h.engine.nrp().has_load_balancer(&id(U2)) && h.engine.nrp().has_nat_gateway(&id("keep-egress")));
    assert!(!h.engine.nrp().has_load_balancer(&id(U3)));
    inv(&h);
}

#[test]
fn s118_a_lone_uuid_pip_is_an_inbound_orphan_delete_an_orphan_lb_with_its_pip_goes_once() {
    let cloud = Cloud::default()
        .pip(&format!("{U1}-pip"), Some("20.1.0.1"), false) // no LB or NAT anywhere, not desired
        .pip(&format!("{U2}-pip"), Some("20.1.0.2"), false) // its Service is desired
        .inbound(U3, "20.1.0.3") // registered (no Service): a removal via the diff
        .lb(U4) // an orphan LB and its public IP: the LB path, once
        .pip(&format!("{U4}-pip"), Some("20.1.0.4"), true);
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(lb_service(U2, &[80])));
    let (mut h, _) = boot(&cloud, initial);
    let op = h.engine.operation(&id(U1)).expect("the lone public IP is scheduled");
    assert_eq!((op.state, op.is_orphan, op.kind()), (ResourceState::DeletionInProgress, true, crate::config::ServiceKind::Inbound));
    assert_eq!(is_orphan(&h, U2), Some(false), "desired: its create re-PUTs the public IP");
    assert_eq!(state(&h, U2), Some(ResourceState::CreationInProgress));
    assert_eq!(is_orphan(&h, U3), Some(false));
    assert_eq!(is_orphan(&h, U4), Some(true));
    assert!(h.run_ok(100));
    let deletes = |name: &str| h.log.iter().filter(|(_, c)| deletes_pip(c, name)).count();
    assert_eq!(deletes(&format!("{U1}-pip")), 1);
    assert_eq!(deletes(&format!("{U2}-pip")), 0);
    assert_eq!(deletes(&format!("{U4}-pip")), 1, "once, through the LB's delete (the sweep skips it)");
    assert_eq!(metric(&h, "orphaned_resources_cleaned_total", &[]), 2.0);
    inv(&h);
}

#[test]
fn s119_the_sweep_deletes_unattached_orphan_ips_and_keeps_attached_reserved_and_desired_ones() {
    let cloud = Cloud::default()
        .pip("egress-x-pip", Some("20.2.0.1"), false)
        .pip("egress-x-pip-v6", Some("2001:db8::1"), false)
        .pip(&format!("{U5}-pip-v6"), None, false)
        .pip("egress-y-pip", Some("20.2.0.2"), true) // attached
        .pip("default-natgw-pip", Some("4.4.4.4"), false) // reserved
        .pip("egress-d-pip", Some("20.2.0.3"), false) // a pod wants egress-d
        .pip("not_ours!-pip", None, false) // not our naming
        .pip("my-address", None, false); // no -pip suffix
    let mut initial = nodes();
    initial.push(KubeEvent::PodApplied(epod("d", "ud", "egress-d", "10.2.0.9")));
    let (mut h, started) = boot(&cloud, initial);
    assert!(started.iter().all(|(_, c)| c.label() != "DELETE publicIPAddresses"), "the sweep waits for the init gate");
    assert!(h.run_ok(60));
    let swept: Vec<String> = h
        .log
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Cloud(CloudCall::DeletePublicIp { name }) => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(swept, vec![format!("{U5}-pip-v6"), "egress-x-pip".into(), "egress-x-pip-v6".into()], "in name order");
    assert_eq!(metric(&h, "orphan_public_ips_swept_total", &[]), 3.0);
    // The sweep came after every operation of the start-up had settled.
    let first_sweep = position(&h, |c| c.label() == "DELETE publicIPAddresses").unwrap();
    let nat_register =
        position(&h, |c| matches!(c, Call::Cloud(CloudCall::UpdateServices(r)) if r.iter().any(|r| r.name == "egress-d"))).unwrap();
    assert!(nat_register < first_sweep);
    assert!(h.engine.is_initialized());
    inv(&h);
}

#[test]
fn s120_stuck_service_finalizers_kept_for_a_trace_removed_without_one_keyed_on_the_finalizer() {
    let mut cluster_ip = deleting_svc(U5);
    cluster_ip.service_type = "ClusterIP".into();
    let mut plain = lb_service(U6, &[80]);
    plain.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    let cloud = Cloud::default()
        .inbound(U1, "20.3.0.1") // A: registered
        .lb(U2) // B: only an Azure LB
        .pip(&format!("{U3}-pip"), None, false); // C: only its public IP, not even an address
    let mut initial = nodes();
    for s in [deleting_svc(U1), deleting_svc(U2), deleting_svc(U3), deleting_svc(U4), cluster_ip, plain] {
        initial.push(KubeEvent::ServiceApplied(s));
    }
    let (mut h, started) = boot(&cloud, initial);
    assert_eq!(metric(&h, "finalizers_recovery_scheduled_total", &[]), 3.0, "A, B, C are left to the diff and orphan paths");
    let direct: Vec<String> = started
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Kube(KubeCall::RemoveServiceFinalizers(r)) => Some(r.uid.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        direct,
        vec![U5.to_string(), U4.to_string()],
        "no trace: removed at once, whatever the type; without our finalizer: untouched"
    );
    for uid in [U1, U2, U3] {
        assert!(state(&h, uid).is_some_and(|s| s.is_deleting()), "{uid}");
    }
    assert!(h.run_ok(100));
    let removed: Vec<String> = h
        .log
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Kube(KubeCall::RemoveServiceFinalizers(r)) => Some(r.uid.clone()),
            _ => None,
        })
        .collect();
    for uid in [U1, U2, U3, U4, U5] {
        assert_eq!(removed.iter().filter(|r| *r == uid).count(), 1, "{uid}: {removed:?}");
    }
    assert!(!removed.contains(&U6.to_string()));
    assert_eq!(metric(&h, "finalizers_recovered_total", &[]), 5.0, "each recovered object closes its gap once");
    assert!(h.log.iter().any(|(_, c)| deletes_pip(c, &format!("{U3}-pip"))));
    inv(&h);
}

// ---------------------------------------------------------------- 121-126: the pass

#[test]
fn s121_terminating_dual_stack_egress_pod_recovered_at_startup() {
    let mut initial = nodes();
    initial.push(KubeEvent::NodeApplied(node("d1", &["10.0.0.3", "fd00::3"])));
    let dual = terminating(&egress_pod("ns/d", "u1", EG, &["10.1.3.1", "FD01::1"], &["10.0.0.3", "fd00::3"]));
    let mut noip = terminating(&egress_pod("ns/n", "u2", EG, &[], &[]));
    noip.pod_ip.clear();
    initial.push(KubeEvent::PodApplied(dual));
    initial.push(KubeEvent::PodApplied(noip));
    let cloud = Cloud::default().outbound(EG).location("10.0.0.3", "10.1.3.1", &[EG]).location("fd00::3", "fd01::1", &[EG]);
    let (mut h, _) = boot(&cloud, initial);
    let rec = h.engine.pod_deletion("ns/d").unwrap().clone();
    assert_eq!(rec.addresses, vs(&["10.1.3.1", "fd01::1"]), "every family");
    assert!(
        !rec.is_last_pod && rec.recovered_at_startup && !rec.verify_service_drain,
        "never last-pod: the NAT's removal comes from the diff"
    );
    let rec = h.engine.pod_deletion("ns/n").unwrap();
    assert!(rec.verify_service_drain && rec.addresses.is_empty());
    assert_eq!(metric(&h, "finalizers_recovery_scheduled_total", &[]), 2.0);
    assert!(state(&h, EG).is_some_and(|s| s.is_deleting()), "no live pod: the NAT gateway is a removal");
    assert!(h.run_ok(100));
    assert!(h.engine.pod_deletions().is_empty());
    assert_eq!(metric(&h, "finalizers_recovered_total", &[]), 2.0);
    assert_eq!(removals_started(&h), vec!["u1".to_string(), "u2".to_string()]);
    assert!(!h.engine.nrp().has_addresses_for(&id(EG)) && !h.engine.nrp().has_nat_gateway(&id(EG)));
    inv(&h);
}

#[test]
fn s122_pending_pod_deletions_and_running_ops_keep_init_open_parked_ops_do_not() {
    // A create in flight and a recovered pod record waiting for its drain.
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(lb_service(U1, &[80])));
    initial.push(KubeEvent::PodApplied(terminating(&epod("t", "ut", EG, "10.2.0.1"))));
    initial.push(KubeEvent::PodApplied(epod("live", "ul", EG, "10.2.0.2")));
    let cloud = Cloud::default().outbound(EG).location("10.0.0.1", "10.2.0.1", &[EG]);
    let (mut h, _) = boot(&cloud, initial);
    let sync = h.find("POST updateAddressLocations").expect("the drain sync");
    for c in h.outstanding.keys().copied().collect::<Vec<_>>() {
        if c != sync {
            h.ok(c);
        }
    }
    for _ in 0..8 {
        let pending: Vec<CallId> = h.outstanding.keys().copied().filter(|c| *c != sync).collect();
        for c in pending {
            h.ok(c);
        }
    }
    assert_eq!(state(&h, U1), Some(ResourceState::Created));
    assert!(h.engine.pod_deletion("ns/t").is_some());
    assert_eq!(phase(&h), InitPhase::Reconciling, "a pod deletion record keeps initialization open");
    h.ok(sync);
    assert!(h.run_ok(40));
    assert!(h.engine.is_initialized());

    // Parked ops do not block: one terminal (an unbuildable port), one out of retries.
    let mut bad = lb_service(U2, &[65535]);
    bad.meta.name = "bad".into();
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(bad));
    initial.push(KubeEvent::ServiceApplied(lb_service(U3, &[80])));
    let (mut h, _) = boot(&Cloud::default(), initial);
    for _ in 0..400 {
        if h.engine.is_initialized() {
            break;
        }
        let calls: Vec<(CallId, Call)> = h.outstanding.iter().map(|(i, c)| (*i, c.clone())).collect();
        if calls.is_empty() {
            h.wake();
            continue;
        }
        for (c, call) in calls {
            match call {
                Call::Cloud(CloudCall::PutPublicIp { ref name, .. }) if name.starts_with(U3) => h.fail(c, transient()),
                _ => h.ok(c),
            };
        }
    }
    assert!(h.engine.operation(&id(U2)).unwrap().creation_failed_terminal);
    assert!(h.engine.operation(&id(U3)).unwrap().retries_exhausted);
    assert!(h.engine.is_initialized(), "parked ops do not keep initialization open: {:?}", h.engine.initialization());
    inv(&h);
}

#[test]
fn s123_many_operations_during_init_complete_it_exactly_once_and_held_events_apply_once() {
    let mut initial = nodes();
    let uids: Vec<String> = (0..25).map(|i| format!("{i:08x}-0000-4000-8000-00000000000{}", i % 10)).collect();
    for (i, u) in uids.iter().enumerate() {
        initial.push(KubeEvent::EndpointSliceApplied(slice(&format!("s{i}"), u, &[(&format!("10.1.0.{}", i + 1), "n1")])));
        initial.push(KubeEvent::ServiceApplied(lb_service(u, &[80])));
    }
    let (mut h, started) = boot(&Cloud::default(), initial);
    assert_eq!(started.iter().filter(|(_, c)| c.label() == "add-service-finalizers").count(), 10, "at most 10 operations at once");
    assert_eq!(metric(&h, "tracked_services_total", &[("state", "k8s_services")]), 25.0);
    assert_eq!(metric(&h, "servicegateway_enabled", &[]), 0.0);
    // A watch event during init: held, not applied.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("s0", &uids[0], &[("10.1.9.9", "n2")]))]);
    assert_eq!(h.engine.held_events(), 1);
    let mut ready_ticks = 0;
    let mut was_ready = false;
    for _ in 0..200 {
        let completions: Vec<Completion> = h.outstanding.iter().map(|(id, c)| Completion { id: *id, outcome: Ok(ok_output(c)) }).collect();
        h.advance(100);
        h.tick_with(completions);
        inv(&h);
        if h.engine.is_initialized() && !was_ready {
            ready_ticks += 1;
            assert_eq!(h.engine.held_events(), 0, "applied when initialization completed");
        }
        was_ready = h.engine.is_initialized();
        if h.engine.is_settled() && h.outstanding.is_empty() {
            break;
        }
    }
    assert_eq!(ready_ticks, 1, "completion is signalled once");
    assert!(h.engine.is_settled());
    assert_eq!(metric(&h, "servicegateway_enabled", &[]), 1.0);
    let dur = metric(&h, "initialization_duration_seconds", &[]);
    assert!(dur > 0.0, "{dur}");
    h.advance(60_000);
    assert_eq!(metric(&h, "initialization_duration_seconds", &[]), dur, "set once");
    assert_eq!(
        h.engine.nrp().services_at("10.0.0.2", "10.1.9.9"),
        Some(&[id(&uids[0])].into_iter().collect()),
        "the held event was applied"
    );
    assert!(h.engine.nrp().services_at("10.0.0.1", "10.1.0.1").is_none());
}

#[test]
fn s124_rejected_services_stay_desired_foreign_class_ones_are_removals() {
    let mut internal = lb_service(U1, &[80]);
    internal.meta.annotations = vec![(crate::names::ANNOTATION_INTERNAL.into(), "true".into())];
    let mut classed = lb_service(U2, &[80]);
    classed.load_balancer_class = Some("example.com/other".into());
    let cloud = Cloud::default().inbound(U1, "20.4.0.1").inbound(U2, "20.4.0.2").location("10.0.0.1", "10.1.0.1", &[U1]);
    let mut initial = nodes();
    initial.push(KubeEvent::EndpointSliceApplied(slice("s1", U1, &[("10.1.0.1", "n1")])));
    initial.push(KubeEvent::ServiceApplied(internal));
    initial.push(KubeEvent::ServiceApplied(classed));
    let (mut h, _) = boot(&cloud, initial);
    assert_eq!(
        metric(&h, "tracked_services_total", &[("state", "k8s_services")]),
        1.0,
        "the rejected one is desired, the other class's is not"
    );
    assert!(h.run_ok(60));
    assert!(h.io.events.iter().any(|e| e.reason == crate::names::REASON_INTERNAL));
    // Rejected: neither provisioned nor destroyed; its live LB's address is backfilled (step 12).
    assert_eq!(names_in_log(&h, U1).into_iter().filter(|l| !LISTS.contains(l)).collect::<Vec<_>>(), vec!["patch-service-ingress"]);
    assert!(h.engine.nrp().has_load_balancer(&id(U1)));
    assert_eq!(
        h.engine.nrp().services_at("10.0.0.1", "10.1.0.1"),
        Some(&[id(U1)].into_iter().collect()),
        "its live LB keeps its endpoints"
    );
    assert!(
        h.log.iter().any(|(_, c)| matches!(c, Call::Cloud(CloudCall::DeleteLoadBalancer { name }) if name == U2)),
        "another class: a removal"
    );
    assert!(!h.engine.nrp().has_load_balancer(&id(U2)));
    inv(&h);
}

#[test]
fn s125_nat_additions_at_startup_take_the_cluster_families_from_the_initial_nodes() {
    let mut initial = nodes();
    initial.push(KubeEvent::NodeApplied(node("d1", &["10.0.0.3", "fd00::3"])));
    initial.push(KubeEvent::PodApplied(epod("e", "ue", EG, "10.2.0.1")));
    let (mut h, _) = boot(&Cloud::default(), initial);
    assert!(h.run_ok(60));
    let pips: Vec<String> = h
        .log
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Cloud(CloudCall::PutPublicIp { name, .. }) => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(pips, vec![format!("{EG}-pip"), format!("{EG}-pip-v6")]);
    assert!(h.engine.cluster_ipv6_cached());
    inv(&h);
}

#[test]
fn s126_the_ref_count_comes_only_from_egress_pods() {
    // A pod labelled with an inbound Service's UID never rides (or counts against) the Service.
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(lb_service(U1, &[80])));
    initial.push(KubeEvent::PodApplied(epod("same", "us", U1, "10.2.0.1")));
    initial.push(KubeEvent::PodApplied(epod("e1", "u1", EG, "10.2.0.2")));
    initial.push(KubeEvent::PodApplied(epod("e2", "u2", EG, "10.2.0.3")));
    let (mut h, _) = boot(&Cloud::default().outbound(EG), initial);
    assert!(h.run_ok(60));
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 2);
    assert_eq!(h.engine.pod_ref_count(&id(U1)), 0);
    h.deliver(vec![KubeEvent::PodDeleted(epod("same", "us", U1, "10.2.0.1"))]);
    assert!(h.run_ok(20));
    assert_eq!(h.engine.pod_ref_count(&id(U1)), 0);
    assert_eq!(state(&h, U1), Some(ResourceState::Created));
    inv(&h);
}

// ---------------------------------------------------------------- 127-130: failures, backfill, initial sync

#[test]
fn s127_a_transient_pip_list_failure_fails_the_startup_loudly_and_is_retried() {
    let mut h = Harness::starting(5);
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(lb_service(U1, &[80])));
    initial.push(KubeEvent::InitialListsComplete);
    h.deliver(initial);
    h.tick();
    let cloud = Cloud::default().pip("egress-x-pip", None, false);
    let completions: Vec<Completion> = h
        .outstanding
        .iter()
        .map(|(id, c)| match c {
            Call::Cloud(CloudCall::ListPublicIps) => {
                Completion { id: *id, outcome: Err(CallError::http(503, "ServiceUnavailable", "try later")) }
            }
            c => Completion { id: *id, outcome: Ok(cloud.output(c).unwrap()) },
        })
        .collect();
    let after = h.tick_with(completions);
    assert!(after.is_empty(), "no silent empty list: nothing runs");
    let init = h.engine.initialization();
    assert_eq!((init.phase, init.failed_attempts), (InitPhase::Listing, 1));
    let err = init.error.unwrap();
    assert!(err.contains("GET publicIPAddresses") && err.contains("503"), "{err}");
    assert_eq!(metric(&h, "initialization_failures_total", &[("call", "GET publicIPAddresses")]), 1.0);
    assert!(!h.engine.is_service_tracked(&id(U1)));
    assert!(!h.engine.status().settled);
    // The backoff passes: all five lists again.
    let wake = h.last.next_wake_ms.expect("a retry is scheduled");
    assert!(wake > h.now && wake <= h.now + 1_200);
    let again = h.wake();
    assert_eq!(started_labels(&again), LISTS.to_vec());
    answer_lists(&mut h, &cloud);
    assert!(h.engine.initialization().error.is_none());
    assert!(h.run_ok(60));
    assert_eq!(h.log.iter().filter(|(_, c)| c.label() == "GET publicIPAddresses").count(), 2, "the sweep reuses the fetched list");
    assert!(h.log.iter().any(|(_, c)| deletes_pip(c, "egress-x-pip")));
    inv(&h);
}

#[test]
fn s128_inbound_outbound_counts_as_both_an_unusable_services_list_fails_initialization() {
    // The host turns an unknown serviceType (or a malformed page) into invalid-response.
    let mut h = Harness::starting(5);
    h.deliver(vec![KubeEvent::InitialListsComplete]);
    h.tick();
    let completions: Vec<Completion> = h
        .outstanding
        .iter()
        .map(|(id, c)| match c {
            Call::Cloud(CloudCall::GetSgwServices) => Completion {
                id: *id,
                outcome: Err(CallError::of_kind(ErrorKind::InvalidResponse, "value[0] (x) has unknown serviceType \"Sideways\"")),
            },
            // A list answered with the wrong shape is just as unusable.
            Call::Cloud(CloudCall::ListNatGateways) => Completion { id: *id, outcome: Ok(CallOutput::Done) },
            c => Completion { id: *id, outcome: Ok(Cloud::default().output(c).unwrap()) },
        })
        .collect();
    h.tick_with(completions);
    let init = h.engine.initialization();
    assert_eq!(init.phase, InitPhase::Listing);
    assert!(init.error.as_deref().is_some_and(|e| e.contains("unknown serviceType")), "{init:?}");
    assert_eq!(metric(&h, "initialization_failures_total", &[]), 2.0);
    assert_eq!(metric(&h, "initialization_failures_total", &[("call", "GET natGateways")]), 1.0);

    // The retry finds an InboundOutbound entry (spelled in capitals by the host's parser's
    // caller): both a load balancer and a NAT gateway.
    h.wake();
    let mut cloud = Cloud::default();
    cloud.services.push(SgwService {
        name: "EGRESS-A".into(),
        service_type: ServiceType::InboundOutbound,
        backend_pools: vec![],
        nat_gateway: None,
        is_default: false,
    });
    answer_lists(&mut h, &cloud);
    assert!(h.engine.nrp().has_load_balancer(&id(EG)) && h.engine.nrp().has_nat_gateway(&id(EG)));
    assert_eq!(h.engine.initialization().failed_attempts, 1);
    inv(&h);
}

#[test]
fn s129_registered_services_missing_their_ingress_are_backfilled_retrying_failures() {
    let mut keeps = lb_service(U2, &[80]);
    keeps.ingress = vec![
        LoadBalancerIngress { ip: "2001:db8::2".into(), hostname: String::new() },
        LoadBalancerIngress { ip: String::new(), hostname: "lb.example.com".into() },
    ];
    let mut right = lb_service(U3, &[80]);
    right.ingress = vec![LoadBalancerIngress { ip: "20.5.0.3".into(), hostname: String::new() }];
    let cloud = Cloud::default().inbound(U1, "20.5.0.1").inbound(U2, "20.5.0.2").inbound(U3, "20.5.0.3");
    let mut initial = nodes();
    initial.extend([KubeEvent::ServiceApplied(lb_service(U1, &[80])), KubeEvent::ServiceApplied(keeps), KubeEvent::ServiceApplied(right)]);
    initial.push(KubeEvent::ServiceApplied(lb_service(U4, &[80]))); // not registered: its create writes the status
    let (mut h, started) = boot(&cloud, initial);
    assert!(started.iter().all(|(_, c)| c.label() != "patch-service-ingress"), "step 12 comes after the init gate");
    let mut patches: Vec<(String, Vec<LoadBalancerIngress>)> = Vec::new();
    let mut failed_once = false;
    for _ in 0..100 {
        let calls: Vec<(CallId, Call)> = h.outstanding.iter().map(|(i, c)| (*i, c.clone())).collect();
        if calls.is_empty() {
            if h.engine.is_settled() {
                break;
            }
            h.wake();
            continue;
        }
        for (c, call) in calls {
            if let Call::Kube(KubeCall::PatchServiceIngress(target, ingress)) = &call {
                if target.uid == U1 && !failed_once {
                    failed_once = true;
                    h.fail(c, CallError::of_kind(ErrorKind::Conflict, "conflict after retries"));
                    continue;
                }
                patches.push((target.uid.clone(), ingress.clone()));
            }
            h.ok(c);
        }
    }
    assert!(failed_once);
    let of = |uid: &str| patches.iter().filter(|(u, _)| u == uid).map(|(_, i)| i.clone()).collect::<Vec<_>>();
    assert_eq!(of(U1), vec![vec![LoadBalancerIngress { ip: "20.5.0.1".into(), hostname: String::new() }]], "retried after the failure");
    assert_eq!(
        of(U2),
        vec![vec![
            LoadBalancerIngress { ip: "2001:db8::2".into(), hostname: String::new() },
            LoadBalancerIngress { ip: String::new(), hostname: "lb.example.com".into() },
            LoadBalancerIngress { ip: "20.5.0.2".into(), hostname: String::new() },
        ]],
        "other writers' entries stay"
    );
    assert!(of(U3).is_empty(), "already right");
    assert_eq!(of(U4).len(), 1, "written once, by its create");
    assert_eq!(metric(&h, "service_external_ip_recovery_failed_total", &[]), 0.0);
    assert!(h.engine.is_settled());
    inv(&h);
}

#[test]
fn s130_a_registered_service_gets_its_initial_location_sync_even_when_every_addition_parks() {
    // U1 is registered with an address its slice no longer lists; the only addition (U2) is
    // unbuildable and parks at once.
    let cloud = Cloud::default().inbound(U1, "20.6.0.1").location("10.0.0.1", "10.1.0.1", &[U1]).location("10.0.0.1", "10.1.0.2", &[U1]);
    let mut initial = nodes();
    initial.push(KubeEvent::EndpointSliceApplied(slice("s1", U1, &[("10.1.0.2", "n1")])));
    initial.push(KubeEvent::ServiceApplied(lb_service(U1, &[80])));
    initial.push(KubeEvent::ServiceApplied(lb_service(U2, &[65535])));
    let (mut h, started) = boot(&cloud, initial);
    let sync = started.iter().find_map(|(_, c)| match c {
        Call::Cloud(CloudCall::UpdateAddressLocations(l)) => Some(l.clone()),
        _ => None,
    });
    let sync = sync.expect("the initial location sync");
    assert_eq!(sync.len(), 1);
    assert_eq!(sync[0].addresses, vec![AddressUpdate { address: "10.1.0.1".into(), services: vec![] }], "the stale address is unbound");
    assert!(h.run_ok(40));
    assert!(h.engine.operation(&id(U2)).unwrap().creation_failed_terminal);
    assert!(h.engine.is_initialized());
    inv(&h);
}

// ---------------------------------------------------------------- the marker, held events, naming

#[test]
fn nothing_runs_before_the_lists_and_the_marker_are_in() {
    let mut h = Harness::starting(5);
    let mut initial = nodes();
    initial.push(KubeEvent::EndpointSliceApplied(slice("s", U1, &[("10.1.0.1", "n1")])));
    initial.push(KubeEvent::ServiceApplied(lb_service(U1, &[80])));
    h.deliver(initial);
    assert_eq!(started_labels(&h.tick()), LISTS.to_vec(), "the lists start without waiting for the marker");
    assert!(h.tick().is_empty());
    answer_lists(&mut h, &Cloud::default());
    let init = h.engine.initialization();
    assert_eq!((init.phase, init.initial_lists_complete), (InitPhase::Listing, false));
    assert!(!h.engine.is_service_tracked(&id(U1)), "the initial objects wait for the marker");
    assert_eq!(h.last.next_wake_ms, None, "nothing to do until the host speaks");
    inv(&h);
    h.deliver(vec![KubeEvent::InitialListsComplete]);
    let started = h.tick();
    assert_eq!(started_labels(&started), vec!["add-service-finalizers"]);
    assert_eq!(phase(&h), InitPhase::Reconciling);
    assert!(h.run_ok(40));
    assert!(h.engine.is_initialized() && h.engine.nrp().has_addresses_for(&id(U1)));
    // A second marker changes nothing.
    h.deliver(vec![KubeEvent::InitialListsComplete]);
    assert!(h.tick().is_empty());
    inv(&h);
}

#[test]
fn watch_events_after_the_marker_are_held_until_initialization_completes() {
    let mut h = Harness::starting(5);
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(lb_service(U1, &[80])));
    initial.push(KubeEvent::InitialListsComplete);
    h.deliver(initial);
    h.tick();
    // Watch events arrive before the lists are back, then during the reconciliation.
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(U2, &[80]))]);
    answer_lists(&mut h, &Cloud::default());
    h.deliver(vec![deleting(U1, &[80])]);
    assert_eq!(h.engine.held_events(), 2);
    assert!(!h.engine.is_service_tracked(&id(U2)));
    assert_eq!(state(&h, U1), Some(ResourceState::CreationInProgress), "the start-up create runs");
    assert!(h.run_ok(60));
    assert!(h.engine.is_initialized());
    assert_eq!(h.engine.held_events(), 0);
    assert_eq!(state(&h, U2), Some(ResourceState::Created), "applied once initialized");
    assert_eq!(state(&h, U1), None, "deleted after its start-up create");
    let u1_creates = h.log.iter().filter(|(_, c)| matches!(c, Call::Cloud(CloudCall::PutLoadBalancer(s)) if s.name == U1)).count();
    assert_eq!(u1_creates, 1);
    inv(&h);
}

#[test]
fn a_startup_snapshot_restores_mid_pass() {
    let mut h = Harness::starting(5);
    let mut initial = nodes();
    initial.push(KubeEvent::ServiceApplied(lb_service(U1, &[80])));
    h.deliver(initial);
    h.tick();
    let bytes = h.engine.snapshot();
    let restored = crate::Engine::restore(&bytes).unwrap();
    assert_eq!(restored.snapshot(), bytes);
    h.engine = restored;
    inv(&h);
    h.deliver(vec![KubeEvent::InitialListsComplete]);
    answer_lists(&mut h, &Cloud::default().inbound(U1, "20.7.0.1"));
    let bytes = h.engine.snapshot();
    h.engine = crate::Engine::restore(&bytes).unwrap();
    inv(&h);
    assert!(h.run_ok(40));
    assert!(h.engine.is_initialized());
    assert_eq!(h.engine.operation(&id(U1)).unwrap().public_ip.as_deref(), Some("20.7.0.1"), "learnt from the start-up list");
}

/// A cluster bigger than one slice of the pass: registered inbound Services, each with its
/// slice and its load balancer.
fn big_cluster(n: usize) -> (Cloud, Vec<KubeEvent>) {
    let mut cloud = Cloud::default();
    let mut initial = nodes();
    for i in 0..n {
        let uid = format!("{i:08x}-0000-4000-8000-000000000000");
        cloud = cloud.inbound(&uid, &format!("20.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)).location(
            "10.0.0.1",
            &format!("10.{}.{}.{}", 100 + (i >> 16 & 3), i >> 8 & 255, i & 255),
            &[&uid],
        );
        initial.push(KubeEvent::EndpointSliceApplied(slice(
            &format!("s{i}"),
            &uid,
            &[(&format!("10.{}.{}.{}", 100 + (i >> 16 & 3), i >> 8 & 255, i & 255), "n1")],
        )));
        initial.push(KubeEvent::ServiceApplied(with_finalizer(lb_service(&uid, &[80]))));
    }
    (cloud, initial)
}

/// Ticks until the pass is through; every tick until then starts nothing. Returns the ticks
/// it took after the one that took the lists, snapshotting and restoring the engine after the
/// `restore_after`th of them.
fn through_the_pass(h: &mut Harness, restore_after: Option<usize>) -> usize {
    let mut ticks = 0;
    while phase(h) == InitPhase::Listing {
        assert!(ticks < 100, "the pass never ends");
        assert_eq!(h.last.next_wake_ms, Some(h.now), "the pass asks to be called back at once");
        if restore_after == Some(ticks) {
            h.engine = crate::Engine::restore(&h.engine.snapshot()).unwrap();
        }
        let started = h.tick();
        ticks += 1;
        if phase(h) == InitPhase::Listing {
            assert_eq!(started_labels(&started), Vec::<&str>::new(), "nothing starts in the middle of the pass");
        }
        inv(h);
    }
    ticks
}

/// The pass over 2,500 Services takes several ticks of at most `STARTUP_SLICE` objects each (a
/// tick's work, and so a guest call's CPU time, no longer grows with the cluster), starts no
/// call before it is through, survives a snapshot taken in its middle with the same decisions,
/// and adopts every Service once.
#[test]
fn a_big_start_up_pass_runs_in_slices_and_starts_nothing_until_it_is_through() {
    let n = 2_500;
    let (cloud, initial) = big_cluster(n);
    let run = |restore_after| {
        let (mut h, started) = boot(&cloud, initial.clone());
        assert_eq!(started_labels(&started), Vec::<&str>::new(), "the tick that takes the lists starts nothing");
        assert_eq!(phase(&h), InitPhase::Listing);
        let ticks = through_the_pass(&mut h, restore_after);
        // Ten operations at a time (the cap), a few calls each.
        assert!(h.run_ok(5_000), "settles: {:?}", h.engine.initialization());
        assert!(h.engine.is_initialized());
        (h, ticks)
    };
    let (h, ticks) = run(None);
    // Objects: 2 Nodes, n slices, n Services (finalizers), n Services, n registrations.
    let objects = 2 + 4 * n;
    assert!(ticks + 1 >= objects / crate::startup::STARTUP_SLICE, "{ticks} ticks for {objects} objects");
    let puts: Vec<&Call> = h.log.iter().map(|(_, c)| c).filter(|c| c.label() == "PUT loadBalancers").collect();
    assert_eq!(puts.len(), n, "every load balancer adopted with one re-PUT");
    assert_eq!(metric(&h, "tracked_services_total", &[("state", "k8s_services")]), n as f64);

    let (restored, restored_ticks) = run(Some(ticks / 2));
    assert_eq!(restored_ticks, ticks);
    assert_eq!(restored.log, h.log, "a snapshot in the middle of the pass changes no decision");
}

/// A registration whose load balancer and public IP are gone (a delete that failed at the
/// unregistration, deleted the public IP as 6.4 does, and was cut short by a crash) for a
/// Service that wants a load balancer again: the restarted engine creates it again instead of
/// adopting it, whose re-PUT of the load balancer would reference the missing public IP and fail
/// forever (found by the crash property test, seed 1091). Nothing half-gone is adopted either:
/// a registration with its load balancer but not its public IP is recreated too.
#[test]
fn a_registration_whose_load_balancer_or_public_ip_is_gone_is_created_again_not_adopted() {
    let mut cloud = Cloud::default().inbound(U2, "20.7.0.2").lb(U3);
    cloud.services.push(sgw(U1, ServiceType::Inbound));
    cloud.services.push(sgw(U3, ServiceType::Inbound));
    let mut initial = nodes();
    for uid in [U1, U2, U3] {
        initial.push(KubeEvent::ServiceApplied(with_finalizer(lb_service(uid, &[80]))));
    }
    let (mut h, _) = boot(&cloud, initial);
    assert_eq!(state(&h, U1), Some(ResourceState::CreationInProgress), "an addition, not an adoption");
    assert_eq!(state(&h, U3), Some(ResourceState::CreationInProgress), "its load balancer lacks its public IP");
    assert_eq!(state(&h, U2), Some(ResourceState::UpdateInProgress), "a whole registration is adopted");
    assert!(h.run_ok(100));
    for uid in [U1, U3] {
        let pip = format!("{uid}-pip");
        let puts = names_in_log(&h, &pip);
        assert!(puts.contains(&"PUT publicIPAddresses"), "{uid}: the public IP is created again: {puts:?}");
        assert_eq!(state(&h, uid), Some(ResourceState::Created));
    }
    assert!(!names_in_log(&h, &format!("{U2}-pip")).contains(&"PUT publicIPAddresses"), "the adopted one keeps its public IP");
    inv(&h);
}

#[test]
fn a_list_that_never_answers_times_out_and_is_retried() {
    let mut h = Harness::starting(5);
    h.deliver(vec![KubeEvent::InitialListsComplete]);
    h.tick();
    let cloud = Cloud::default();
    let completions: Vec<Completion> = h
        .outstanding
        .iter()
        .filter(|(_, c)| !matches!(c, Call::Cloud(CloudCall::GetAddressLocations)))
        .map(|(id, c)| Completion { id: *id, outcome: Ok(cloud.output(c).unwrap()) })
        .collect();
    h.tick_with(completions);
    assert_eq!(h.last.next_wake_ms, Some(h.now + 5 * 60 * 1_000));
    h.wake();
    let init = h.engine.initialization();
    assert!(init.error.as_deref().is_some_and(|e| e.contains("GET addressLocations") && e.contains("Timeout")), "{init:?}");
    let late = h.find("GET addressLocations").unwrap();
    h.ok(late);
    assert_eq!(metric(&h, "ignored_completions_total", &[]), 1.0, "the late answer is ignored");
    let again = h.wake();
    assert_eq!(started_labels(&again), LISTS.to_vec());
    inv(&h);
}

#[test]
fn an_egress_restart_republishes_nothing_and_adds_only_missing_finalizers() {
    let cloud = Cloud::default().outbound(EG).location("10.0.0.1", "10.2.0.1", &[EG]).location("10.0.0.1", "10.2.0.2", &[EG]);
    let mut with = epod("p1", "u1", EG, "10.2.0.1");
    with.meta.finalizers.push(crate::names::POD_FINALIZER.into());
    let without = epod("p2", "u2", EG, "10.2.0.2");
    let mut initial = nodes();
    initial.extend([KubeEvent::PodApplied(with), KubeEvent::PodApplied(without)]);
    let (mut h, started) = boot(&cloud, initial);
    assert!(h.engine.full_location_diff().is_empty(), "the addresses stay published: {:?}", h.engine.full_location_diff());
    assert_eq!(h.engine.pod_ref_count(&id(EG)), 2);
    assert_eq!(started.iter().filter(|(_, c)| matches!(c, Call::Kube(KubeCall::AddPodFinalizer(_)))).count(), 1);
    assert!(started.iter().any(|(_, c)| is_add_fin(c, "u2")));
    assert!(h.run_ok(40));
    assert!(h.log.iter().all(|(_, c)| c.label() != "POST updateAddressLocations"), "{:?}", started_labels(&h.log));
    assert!(!h.engine.is_service_tracked(&id(EG)) && h.engine.nrp().has_nat_gateway(&id(EG)));
    inv(&h);
}

#[test]
fn naming_helpers() {
    assert!(is_uuid(U1) && is_uuid(&U1.to_uppercase()));
    assert!(!is_uuid("my-manual-lb") && !is_uuid(&format!("{U1}x")) && !is_uuid("c3333333_0000-4000-8000-000000000003"));
    assert_eq!(public_ip_identity("Egress-A-pip-v6"), Some(id("egress-a")));
    assert_eq!(public_ip_identity("egress-a-pip"), Some(id("egress-a")));
    assert_eq!(public_ip_identity("-pip"), None);
    assert_eq!(public_ip_identity("egress-a"), None);
}
