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
