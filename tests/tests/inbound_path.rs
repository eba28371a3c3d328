//! The inbound LoadBalancer path of issue 2, call by call, through the real component.

use difftracker_engine::io::{Call, CloudCall, KubeCall, KubeEvent, ServiceType, UpdateAction};
use difftracker_tests::label::*;
use difftracker_tests::*;

const UID: &str = "6f1c2a9e-0000-4000-8000-00000000abcd";

fn cluster(h: &mut Harness) -> difftracker_engine::io::Service {
    let svc = sample_service("default", "web", UID);
    h.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::NodeApplied(sample_node("node-2", "10.0.0.5")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1"), ("10.244.2.9", "node-2")])),
    ])
    .unwrap();
    svc
}

#[test]
fn create_runs_finalizers_public_ip_load_balancer_registration_ingress_then_created() {
    let mut h = Harness::wasm();
    cluster(&mut h);
    h.run_until_idle(100).unwrap();

    assert_eq!(
        h.labels(),
        vec![ADD_FINALIZERS, PUT_PIP, PUT_LB, UPDATE_SERVICES, PATCH_INGRESS, UPDATE_LOCATIONS],
        "calls: {:#?}",
        h.started
    );
    // Each step waits for the previous one's completion: one call per tick.
    let ticks: Vec<u64> = h.started.iter().map(|s| s.tick).collect();
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "one step per completion: {ticks:?}");

    let calls: Vec<&Call> = h.started.iter().map(|s| &s.call).collect();
    match calls[0] {
        Call::Kube(KubeCall::AddServiceFinalizers(r)) => assert_eq!((r.name.as_str(), r.uid.as_str()), ("web", UID)),
        other => panic!("{other:?}"),
    }
    match calls[1] {
        Call::Cloud(CloudCall::PutPublicIp { name, .. }) => assert_eq!(name, &format!("{UID}-pip")),
        other => panic!("{other:?}"),
    }
    match calls[2] {
        Call::Cloud(CloudCall::PutLoadBalancer(spec)) => {
            assert_eq!(spec.name, UID);
            assert_eq!(spec.public_ip, format!("{UID}-pip"));
            assert_eq!(spec.rules.len(), 1);
            assert_eq!((spec.rules[0].frontend_port, spec.rules[0].backend_port), (80, 8080));
        }
        other => panic!("{other:?}"),
    }
    match calls[3] {
        Call::Cloud(CloudCall::UpdateServices(reqs)) => {
            assert_eq!(reqs.len(), 1);
            assert_eq!(reqs[0].name, UID);
            assert_eq!(reqs[0].service_type, ServiceType::Inbound);
            assert!(!reqs[0].is_delete);
            assert_eq!(reqs[0].backend_pools.len(), 1);
            assert_eq!(reqs[0].backend_pools[0].load_balancer, UID);
        }
        other => panic!("{other:?}"),
    }
    match calls[4] {
        Call::Kube(KubeCall::PatchServiceIngress(r, ingress)) => {
            assert_eq!(r.uid, UID);
            assert_eq!(ingress.len(), 1);
            assert_eq!(ingress[0].ip, allocated_ip(&format!("{UID}-pip")), "the allocated IP is written to status");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.state_count("created"), 1);
    assert!(h.statuses.last().unwrap().settled);
}

#[test]
fn endpoints_are_published_only_after_registration_succeeded() {
    let mut h = Harness::wasm();
    cluster(&mut h);
    h.run_until_idle(100).unwrap();

    let registered = h.first_success(UPDATE_SERVICES).expect("registration");
    let published = h.first(UPDATE_LOCATIONS).expect("addresses published");
    assert!(published > registered, "updateAddressLocations (#{published}) before registration (#{registered})");
    match &h.started[published].call {
        Call::Cloud(CloudCall::UpdateAddressLocations(locations)) => {
            let mut seen: Vec<(String, String, Vec<String>)> = locations
                .iter()
                .flat_map(|l| l.addresses.iter().map(move |a| (l.location.clone(), a.address.clone(), a.services.clone())))
                .collect();
            seen.sort();
            assert_eq!(
                seen,
                vec![
                    ("10.0.0.4".to_string(), "10.244.1.7".to_string(), vec![UID.to_string()]),
                    ("10.0.0.5".to_string(), "10.244.2.9".to_string(), vec![UID.to_string()]),
                ]
            );
            assert!(locations.iter().all(|l| l.action == UpdateAction::FullUpdate), "new locations are full updates");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn endpoints_wait_while_registration_is_in_flight() {
    let mut h = Harness::wasm();
    h.script.hold(UPDATE_SERVICES, 5);
    cluster(&mut h);
    h.run_until(100, |h| h.first(UPDATE_SERVICES).is_some()).unwrap();
    for _ in 0..5 {
        h.step().unwrap();
        assert_eq!(h.first(UPDATE_LOCATIONS), None, "addresses published while registration is in flight");
    }
    h.run_until_idle(100).unwrap();
    assert!(h.first(UPDATE_LOCATIONS).unwrap() > h.first_success(UPDATE_SERVICES).unwrap());
}

#[test]
fn delete_drains_addresses_then_detaches_deletes_lb_unregisters_deletes_pip_and_removes_finalizers() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h);
    h.run_until_idle(100).unwrap();
    let created = h.started.len();

    h.deliver(vec![KubeEvent::ServiceApplied(deleting(&svc))]).unwrap();
    h.run_until_idle(100).unwrap();
    let delete: Vec<&Call> = h.started[created..].iter().map(|s| &s.call).collect();
    let labels: Vec<&str> = delete.iter().map(|c| c.label()).collect();
    assert_eq!(
        labels,
        vec![UPDATE_LOCATIONS, UPDATE_SERVICES, DELETE_LB, UPDATE_SERVICES, DELETE_PIP, REMOVE_FINALIZERS],
        "delete calls: {delete:#?}"
    );
    match delete[0] {
        Call::Cloud(CloudCall::UpdateAddressLocations(locations)) => {
            assert!(
                locations.iter().all(|l| l.addresses.is_empty() || l.addresses.iter().all(|a| a.services.is_empty())),
                "the drain unbinds every address: {locations:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    match delete[1] {
        Call::Cloud(CloudCall::UpdateServices(reqs)) => {
            assert!(!reqs[0].is_delete && reqs[0].backend_pools.is_empty(), "detach removes the backend pool: {reqs:?}")
        }
        other => panic!("{other:?}"),
    }
    match delete[3] {
        Call::Cloud(CloudCall::UpdateServices(reqs)) => assert!(reqs[0].is_delete, "unregister: {reqs:?}"),
        other => panic!("{other:?}"),
    }
    match delete[4] {
        Call::Cloud(CloudCall::DeletePublicIp { name }) => assert_eq!(name, &format!("{UID}-pip")),
        other => panic!("{other:?}"),
    }
    let status = h.status().unwrap();
    assert!(status.states.iter().all(|(_, n)| *n == 0), "{status:?}");
    assert!(status.settled);
}

#[test]
fn the_same_script_gives_the_same_calls_twice() {
    let run = || {
        let mut h = Harness::wasm();
        h.script.fail(PUT_LB, 2, 500, "InternalServerError");
        let svc = cluster(&mut h);
        h.run_until_idle(200).unwrap();
        h.deliver(vec![KubeEvent::ServiceApplied(deleting(&svc))]).unwrap();
        h.run_until_idle(200).unwrap();
        (h.started, h.engine.snapshot().unwrap())
    };
    assert_eq!(run(), run());
}
