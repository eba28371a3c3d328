//! The component and the natively linked engine crate make identical calls for the same script.

use difftracker_engine::io::KubeEvent;
use difftracker_tests::label::*;
use difftracker_tests::*;

fn run(mut h: Harness) -> Harness {
    h.script.fail(PUT_PIP, 1, 500, "InternalServerError").fail(UPDATE_LOCATIONS, 1, 429, "TooManyRequests");
    h.script.hold(PUT_LB, 2);
    let services: Vec<_> = (0..12).map(|n| sample_service("ns", &format!("s{n}"), &format!("beef0000-0000-4000-8000-{n:012}"))).collect();
    let mut events =
        vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::NodeApplied(sample_node("node-2", "10.0.0.5"))];
    for (n, svc) in services.iter().enumerate() {
        events.push(KubeEvent::ServiceApplied(svc.clone()));
        let a = format!("10.244.1.{}", n + 2);
        let b = format!("10.244.2.{}", n + 2);
        events.push(KubeEvent::EndpointSliceApplied(sample_slice(svc, &[(&a, "node-1"), (&b, "node-2")])));
    }
    h.deliver(events).unwrap();
    h.run_until_idle(1_000).unwrap();
    h.deliver(services[..5].iter().map(|s| KubeEvent::ServiceApplied(deleting(s))).collect()).unwrap();
    h.run_until_idle(1_000).unwrap();
    h
}

#[test]
fn native_and_wasm_engines_make_identical_calls_for_the_same_script() {
    let mut wasm = run(Harness::wasm());
    let mut native = run(Harness::native());
    assert!(wasm.started.len() > 60, "a substantial run: {} calls", wasm.started.len());
    assert_eq!(wasm.started.len(), native.started.len());
    for (w, n) in wasm.started.iter().zip(&native.started) {
        assert_eq!(w, n);
    }
    assert_eq!(wasm.completed, native.completed);
    assert_eq!(wasm.events, native.events);
    assert_eq!(wasm.statuses, native.statuses);
    assert_eq!(wasm.engine.snapshot().unwrap(), native.engine.snapshot().unwrap());
}

#[test]
fn a_native_snapshot_restores_into_the_component() {
    let mut native = Harness::native();
    native.script.hold(PUT_LB, 2);
    let svc = sample_service("ns", "a", "abcd0000-0000-4000-8000-000000000001");
    native.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::ServiceApplied(svc)]).unwrap();
    native.run_until(50, |h| h.first(PUT_LB).is_some()).unwrap();
    // Hand the native engine's state to the component mid-operation.
    native.swap_to_fresh_instance().unwrap();
    assert_eq!(native.engine.kind(), "wasm");
    native.run_until_idle(100).unwrap();
    assert_eq!(native.state_count("created"), 1);
    assert_eq!(native.calls(PUT_LB).len(), 1);
}
