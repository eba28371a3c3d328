//! The per-tenant cap: 25 services created at once, never more than 10 operations in flight.

use difftracker_engine::io::{Call, KubeEvent};
use difftracker_tests::label::*;
use difftracker_tests::*;
use std::collections::BTreeSet;

fn uid(n: usize) -> String {
    format!("cafe0000-0000-4000-8000-{n:012}")
}

#[test]
fn twenty_five_services_never_run_more_than_ten_operations_at_once() {
    let mut h = Harness::wasm();
    // Slow public IPs keep operations in flight long enough for the cap to matter.
    for _ in 0..25 {
        h.script.hold(PUT_PIP, 3);
    }
    let mut events = vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4"))];
    for n in 0..25 {
        let svc = sample_service("load", &format!("svc-{n}"), &uid(n));
        events.push(KubeEvent::ServiceApplied(svc.clone()));
        events.push(KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[(&format!("10.244.1.{}", n + 2), "node-1")])));
    }
    h.deliver(events).unwrap();
    h.run_until_idle(1_000).unwrap();

    let peak = h.statuses.iter().map(|s| s.operations_in_flight).max().unwrap();
    assert_eq!(peak, 10, "the engine's operations in flight peaked at {peak}");

    // The same from the calls: at no tick had more than 10 services a service-operation call
    // started and not yet completed.
    let mut open: BTreeSet<String> = BTreeSet::new();
    let mut peak_services = 0;
    for tick in 1..=h.ticks {
        for c in h.completed.iter().filter(|c| c.tick == tick) {
            let started = h.started.iter().find(|s| s.id == c.id).unwrap();
            if let Some(service) = operation_of(&started.call) {
                open.remove(&service);
            }
        }
        for s in h.started.iter().filter(|s| s.tick == tick) {
            if let Some(service) = operation_of(&s.call) {
                open.insert(service);
            }
        }
        peak_services = peak_services.max(open.len());
    }
    assert!(peak_services <= 10, "{peak_services} services had calls in flight at once");
    assert_eq!(h.state_count("created"), 25, "{:?}", h.statuses.last());
    assert_eq!(h.calls(PUT_LB).len(), 25);
}

/// The service a per-service operation call belongs to (not the shared location syncs).
fn operation_of(call: &Call) -> Option<String> {
    if call.label() == UPDATE_LOCATIONS {
        return None;
    }
    let id = difftracker_runtime::executor::call_identity(call);
    Some(id.trim_end_matches("-pip").to_string())
}
