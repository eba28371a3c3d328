//! The start-up pass (ENGINE.md 9) and the Service status, through the real component: a new
//! instance gets its initial lists and the `initial-lists-complete` marker through `deliver`, its
//! five list calls are answered by the script, and every check reads the WIT surface (calls,
//! status) or the component's own snapshot. Scenario numbers are those of section 13 part J.

use difftracker_engine::io::{
    AddressLocation, AddressUpdate, BackendPool, Call, CallError, CallOutput, CloudCall, ErrorKind, InitPhase, IpVersion, KubeCall,
    KubeEvent, LoadBalancerIngress, PublicIpInfo, Service, ServiceType, SgwService,
};
use difftracker_engine::names::SERVICE_FINALIZERS;
use difftracker_engine::{Engine, Identity};
use difftracker_tests::label::*;
use difftracker_tests::*;

const A: &str = "5e0c3a1b-0000-4000-8000-0000000000a1";
const B: &str = "5e0c3a1b-0000-4000-8000-0000000000b2";
const C: &str = "5e0c3a1b-0000-4000-8000-0000000000c3";
const LISTS: [&str; 5] = ["GET services", "GET addressLocations", "GET loadBalancers", "GET natGateways", "GET publicIPAddresses"];

fn view(h: &mut Harness) -> Engine {
    Engine::restore(&h.engine.snapshot().expect("snapshot")).expect("the component's snapshot restores natively")
}

fn inbound(name: &str) -> SgwService {
    SgwService {
        name: name.into(),
        service_type: ServiceType::Inbound,
        backend_pools: vec![BackendPool { load_balancer: name.into(), pool: name.into() }],
        nat_gateway: None,
        is_default: false,
    }
}

fn pip(name: &str, ip: Option<&str>, attached: bool) -> PublicIpInfo {
    PublicIpInfo { name: name.into(), ip_address: ip.map(str::to_string), version: IpVersion::V4, attached }
}

/// Scripts the answers of the five start-up lists.
fn cloud(
    h: &mut Harness,
    services: Vec<SgwService>,
    locations: Vec<AddressLocation>,
    lbs: &[&str],
    nats: &[&str],
    pips: Vec<PublicIpInfo>,
) {
    let names = |v: &[&str]| CallOutput::Names(v.iter().map(|s| s.to_string()).collect());
    h.script
        .then(LISTS[0], Behavior::Respond(CallOutput::SgwServices(services)))
        .then(LISTS[1], Behavior::Respond(CallOutput::AddressLocations(locations)))
        .then(LISTS[2], Behavior::Respond(names(lbs)))
        .then(LISTS[3], Behavior::Respond(names(nats)))
        .then(LISTS[4], Behavior::Respond(CallOutput::PublicIps(pips)));
}

fn node() -> KubeEvent {
    KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4"))
}

fn with_ingress(mut s: Service, ips: &[&str]) -> Service {
    s.ingress = ips.iter().map(|ip| LoadBalancerIngress { ip: ip.to_string(), hostname: String::new() }).collect();
    s
}

fn phase(h: &Harness) -> InitPhase {
    h.statuses.last().map(|s| s.initialization.phase).unwrap_or_default()
}

fn non_list_labels(h: &Harness) -> Vec<&'static str> {
    h.labels().into_iter().filter(|l| !LISTS.contains(l)).collect()
}

/// ★ 113: a restart against the locations a previous controller published syncs nothing; each
/// existing load balancer gets its one adoption re-PUT.
#[test]
fn s113_a_restart_against_published_locations_is_already_in_sync() {
    let mut h = Harness::wasm_starting();
    let svc = sample_service("default", "web", A);
    let slice = sample_slice(&svc, &[("10.244.1.7", "node-1")]);
    cloud(
        &mut h,
        vec![inbound(&A.to_uppercase())],
        vec![AddressLocation {
            location: "10.0.0.4".into(),
            addresses: vec![AddressUpdate { address: "10.244.1.7".into(), services: vec![A.into()] }],
        }],
        &[A],
        &[],
        vec![pip(&format!("{A}-pip"), Some("20.1.2.3"), true)],
    );
    h.start(vec![node(), KubeEvent::ServiceApplied(with_ingress(svc, &["20.1.2.3"])), KubeEvent::EndpointSliceApplied(slice)]).unwrap();
    h.run_until_idle(50).unwrap();
    assert_eq!(&h.labels()[..5], &LISTS, "the first tick lists the cloud");
    assert_eq!(non_list_labels(&h), vec![PUT_LB], "one re-PUT, no location sync, no status write");
    assert_eq!(phase(&h), InitPhase::Ready);
    assert!(h.statuses.last().unwrap().settled);
}

/// ★ 116: `default-natgw` is never removed, swept or named by a call.
#[test]
fn s116_default_natgw_survives_the_startup() {
    let mut h = Harness::wasm_starting();
    let dn = SgwService {
        name: "default-natgw".into(),
        service_type: ServiceType::Outbound,
        backend_pools: vec![],
        nat_gateway: Some("default-natgw".into()),
        is_default: true,
    };
    cloud(&mut h, vec![dn], vec![], &[], &["default-natgw"], vec![pip("default-natgw-pip", Some("4.4.4.4"), false)]);
    h.start(vec![node()]).unwrap();
    h.run_until_idle(50).unwrap();
    assert_eq!(phase(&h), InitPhase::Ready);
    assert!(non_list_labels(&h).is_empty(), "{:?}", h.labels());
}

/// 117-119: orphans of our naming are deleted in dependency order; foreign names are not.
#[test]
fn s117_s118_s119_orphans_go_in_dependency_order_foreign_names_stay() {
    let mut h = Harness::wasm_starting();
    cloud(
        &mut h,
        vec![],
        vec![],
        &[B, "my-manual-lb"],
        &[],
        vec![
            pip(&format!("{B}-pip"), Some("20.0.0.2"), true),
            pip(&format!("{C}-pip"), None, false),
            pip("egress-x-pip-v6", None, false),
            pip("mine", None, false),
        ],
    );
    h.start(vec![node()]).unwrap();
    h.run_until_idle(100).unwrap();
    let pos = |pred: &dyn Fn(&Call) -> bool| h.started.iter().position(|s| pred(&s.call));
    let del_lb = pos(&|c| matches!(c, Call::Cloud(CloudCall::DeleteLoadBalancer { name }) if name == B)).expect("the orphan LB goes");
    let unreg = pos(&|c| matches!(c, Call::Cloud(CloudCall::UpdateServices(r)) if r.iter().any(|r| r.is_delete && r.name == B))).unwrap();
    let del_pip = pos(&|c| matches!(c, Call::Cloud(CloudCall::DeletePublicIp { name }) if *name == format!("{B}-pip"))).unwrap();
    assert!(del_lb < unreg && unreg < del_pip);
    assert!(
        pos(&|c| matches!(c, Call::Cloud(CloudCall::DeletePublicIp { name }) if *name == format!("{C}-pip"))).is_some(),
        "a lone UUID public IP is an orphan"
    );
    assert!(pos(&|c| matches!(c, Call::Cloud(CloudCall::DeletePublicIp { name }) if name == "egress-x-pip-v6")).is_some(), "swept");
    assert!(!h.started.iter().any(|s| format!("{:?}", s.call).contains("my-manual-lb") || format!("{:?}", s.call).contains("\"mine\"")));
    let metric =
        |name: &str| h.statuses.last().unwrap().metrics.iter().find(|m| m.name == format!("difftracker_engine_{name}")).map(|m| m.value);
    assert_eq!(metric("orphaned_resources_cleaned_total"), Some(2.0));
    assert_eq!(metric("orphan_public_ips_swept_total"), Some(1.0));
    assert_eq!(phase(&h), InitPhase::Ready);
}

/// 120: a Service deleted while the controller was down keeps its finalizer until its leftover
/// load balancer is gone; one with nothing left is released at once.
#[test]
fn s120_stuck_finalizers_are_recovered() {
    let mut h = Harness::wasm_starting();
    cloud(&mut h, vec![], vec![], &[A], &[], vec![]);
    h.start(vec![
        node(),
        KubeEvent::ServiceApplied(deleting(&sample_service("default", "a", A))),
        KubeEvent::ServiceApplied(deleting(&sample_service("default", "b", B))),
    ])
    .unwrap();
    h.run_until_idle(100).unwrap();
    let removals: Vec<(usize, String)> = h
        .started
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.call {
            Call::Kube(KubeCall::RemoveServiceFinalizers(r)) => Some((i, r.uid.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(removals.iter().map(|(_, u)| u.as_str()).collect::<Vec<_>>(), vec![B, A], "B at once, A after its load balancer");
    let del_lb = h.first(DELETE_LB).unwrap();
    assert!(removals[0].0 < del_lb && del_lb < removals[1].0);
    let recovered =
        h.statuses.last().unwrap().metrics.iter().find(|m| m.name == "difftracker_engine_finalizers_recovered_total").map(|m| m.value);
    assert_eq!(recovered, Some(2.0));
}

/// ★ 127/128: a list failure is loud (status, metric) and retried; nothing runs meanwhile.
#[test]
fn s127_s128_a_failing_list_fails_the_startup_loudly_and_is_retried() {
    let mut h = Harness::wasm_starting();
    h.script.then(
        LISTS[0],
        Behavior::Fail(CallError::of_kind(ErrorKind::InvalidResponse, "value[0] (x) has unknown serviceType \"Sideways\"")),
    );
    h.start(vec![node(), KubeEvent::ServiceApplied(sample_service("default", "web", A))]).unwrap();
    h.step().unwrap();
    h.step().unwrap();
    let status = h.status().unwrap();
    assert_eq!(status.initialization.phase, InitPhase::Listing);
    assert_eq!(status.initialization.failed_attempts, 1);
    assert!(
        status.initialization.error.as_deref().is_some_and(|e| e.contains("GET services") && e.contains("unknown serviceType")),
        "{:?}",
        status.initialization
    );
    assert!(!status.settled);
    assert!(status.metrics.iter().any(|m| m.name == "difftracker_engine_initialization_failures_total" && m.value == 1.0));
    assert_eq!(h.labels(), LISTS.to_vec(), "nothing but the lists");
    // The retry after the backoff succeeds; then the Service is created.
    h.run_until_idle(100).unwrap();
    assert_eq!(h.labels().iter().filter(|l| **l == LISTS[0]).count(), 2);
    assert_eq!(phase(&h), InitPhase::Ready);
    assert!(h.first_success(PATCH_INGRESS).is_some());
    assert!(h.status().unwrap().initialization.error.is_none());
}

/// 129: a registered Service without its address in the status gets it back from the list.
#[test]
fn s129_missing_ingress_is_backfilled() {
    let mut h = Harness::wasm_starting();
    cloud(&mut h, vec![inbound(A)], vec![], &[A], &[], vec![pip(&format!("{A}-pip"), Some("20.7.7.7"), true)]);
    h.script.fail(PATCH_INGRESS, 1, 409, "Conflict");
    h.start(vec![node(), KubeEvent::ServiceApplied(sample_service("default", "web", A))]).unwrap();
    h.run_until_idle(100).unwrap();
    let patches: Vec<&Vec<LoadBalancerIngress>> = h
        .started
        .iter()
        .filter_map(|s| match &s.call {
            Call::Kube(KubeCall::PatchServiceIngress(_, i)) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(patches.len(), 2, "retried after the conflict");
    assert_eq!(patches[1], &vec![LoadBalancerIngress { ip: "20.7.7.7".into(), hostname: String::new() }]);
    assert!(h.first(PATCH_INGRESS).unwrap() > h.first_success(PUT_LB).unwrap(), "after the init gate");
}

/// Watch events after the marker wait for initialization; the marker is required.
#[test]
fn without_the_marker_nothing_runs_and_watch_events_wait_for_initialization() {
    let mut h = Harness::wasm_starting();
    h.deliver(vec![node(), KubeEvent::ServiceApplied(sample_service("default", "web", A))]).unwrap();
    h.run_until_idle(20).unwrap();
    assert_eq!(h.labels(), LISTS.to_vec());
    let status = h.status().unwrap();
    assert!(!status.initialization.initial_lists_complete && status.initialization.phase == InitPhase::Listing);
    h.deliver(vec![KubeEvent::InitialListsComplete, KubeEvent::ServiceApplied(sample_service("default", "two", B))]).unwrap();
    h.step().unwrap();
    assert_eq!(non_list_labels(&h), vec![ADD_FINALIZERS], "the initial Service only; the watch event waits");
    h.run_until_idle(100).unwrap();
    assert_eq!(h.calls(PUT_LB).len(), 2);
    assert!(h.status().unwrap().settled);
}

/// The Service status is ours: a Service that becomes a ClusterIP, or gains another controller's
/// class, loses our address (and only ours); one deleted outright is not patched.
#[test]
fn status_is_cleared_when_a_live_service_stops_being_ours() {
    for change in ["ClusterIP", "NodePort", "class", "deleted"] {
        let mut h = Harness::wasm();
        let svc = sample_service("default", "web", A);
        h.deliver(vec![node(), KubeEvent::ServiceApplied(svc.clone())]).unwrap();
        h.run_until_idle(50).unwrap();
        let ours = match &h.started[h.first(PATCH_INGRESS).unwrap()].call {
            Call::Kube(KubeCall::PatchServiceIngress(_, i)) => i[0].ip.clone(),
            _ => unreachable!(),
        };
        // What the API server shows now: our address, another family's, a hostname.
        let mut now = svc.clone();
        now.meta.finalizers = SERVICE_FINALIZERS.iter().map(|f| f.to_string()).collect();
        now.ingress = vec![
            LoadBalancerIngress { ip: ours.clone(), hostname: String::new() },
            LoadBalancerIngress { ip: "2001:db8::9".into(), hostname: String::new() },
            LoadBalancerIngress { ip: String::new(), hostname: "other.example.com".into() },
        ];
        match change {
            "class" => now.load_balancer_class = Some("example.com/other-lb".into()),
            "deleted" => now = deleting(&now),
            t => now.service_type = t.into(),
        }
        let before = h.started.len();
        h.deliver(vec![KubeEvent::ServiceApplied(now)]).unwrap();
        h.run_until_idle(100).unwrap();
        let after: Vec<&Started> = h.started[before..].iter().collect();
        let patch = after.iter().find_map(|s| match &s.call {
            Call::Kube(KubeCall::PatchServiceIngress(_, i)) => Some(i.clone()),
            _ => None,
        });
        let del_pip = after.iter().position(|s| s.call.label() == DELETE_PIP).expect("deleted");
        let remove = after.iter().position(|s| s.call.label() == REMOVE_FINALIZERS).expect("finalizers released");
        if change == "deleted" {
            assert_eq!(patch, None, "a Service deleted outright needs nothing");
        } else {
            let patch = patch.unwrap_or_else(|| panic!("{change}: no status write"));
            assert_eq!(patch.len(), 2, "{change}: {patch:?}");
            assert!(patch.iter().all(|i| i.ip != ours), "{change}: our address stays: {patch:?}");
            let at = after.iter().position(|s| s.call.label() == PATCH_INGRESS).unwrap();
            // Cleared once the load balancer and the registration are gone, while the public IP
            // (and so our address) still exists: a crash after its deletion leaves nothing of ours.
            let unregistered = after.iter().rposition(|s| s.call.label() == "POST updateServices").unwrap();
            assert!(
                unregistered < at && at < del_pip && del_pip < remove,
                "{change}: cleared before the public IP goes and the finalizers go"
            );
        }
        assert!(h.status().unwrap().settled);
        assert!(view(&mut h).operation(&Identity::new(A)).is_none());
    }
}

/// The start-up is identical in the component and in the native build.
#[test]
fn startup_is_identical_in_wasm_and_native() {
    let run = |mut h: Harness| {
        cloud(
            &mut h,
            vec![inbound(A), inbound(C)],
            vec![AddressLocation {
                location: "10.0.0.4".into(),
                addresses: vec![AddressUpdate { address: "10.244.9.9".into(), services: vec![C.into()] }],
            }],
            &[A, B, C],
            &["old-egress"],
            vec![pip(&format!("{A}-pip"), Some("20.0.0.1"), true), pip("old-egress-pip", None, false), pip("egress-q-pip", None, false)],
        );
        let svc = sample_service("default", "web", A);
        h.start(vec![
            node(),
            KubeEvent::ServiceApplied(svc.clone()),
            KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
        ])
        .unwrap();
        h.run_until_idle(200).unwrap();
        h
    };
    let wasm = run(Harness::wasm_starting());
    let native = run(Harness::native_starting());
    assert!(wasm.started.len() > 15, "{}", wasm.started.len());
    assert_eq!(wasm.started, native.started);
    assert_eq!(wasm.statuses, native.statuses);
    assert_eq!(phase(&wasm), InitPhase::Ready);
}
