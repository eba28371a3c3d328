//! Names Azure cannot hold, through the real component: a Service whose UID cannot name its
//! Azure resources is rejected at admission with a Warning Event and nothing is ever sent (the
//! host transport would refuse the names, and retrying forever helps nobody); the engine's rule
//! and the transport's defence agree on every name.

use difftracker_engine::io::{EventType, KubeEvent};
use difftracker_engine::names::REASON_INVALID_RESOURCE_NAME;
use difftracker_engine::Identity;
use difftracker_runtime::transport::validate_name;
use difftracker_tests::label::*;
use difftracker_tests::*;

const ILLEGAL: [&str; 8] = ["0f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6ü", "a/b", "a?b", "a#b", "a%2fb", "a b", "trailing.", "x\u{0}"];

#[test]
fn an_illegal_uid_is_rejected_once_with_a_warning_and_never_sent() {
    let mut uids: Vec<String> = ILLEGAL.iter().map(|s| s.to_string()).collect();
    uids.push("x".repeat(77));
    for uid in uids {
        let mut h = Harness::wasm();
        let svc = sample_service("shop", "cart", &uid);
        h.deliver(vec![
            KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
            KubeEvent::ServiceApplied(svc.clone()),
            KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
        ])
        .unwrap();
        h.run_until_idle(50).unwrap();
        // An hour later nothing has been retried.
        h.advance(60 * 60 * 1000);
        h.run_until_idle(50).unwrap();
        assert!(h.started.is_empty(), "{uid:?}: {:?}", h.labels());
        let warnings: Vec<_> = h.events.iter().filter(|e| e.reason == REASON_INVALID_RESOURCE_NAME).collect();
        assert_eq!(warnings.len(), 1, "{uid:?}: {:?}", h.events);
        assert_eq!((warnings[0].event_type, warnings[0].target.name.as_str()), (EventType::Warning, "cart"));
        assert!(h.statuses.last().unwrap().settled, "{uid:?}");

        // Deleted while carrying our finalizers (`deleting` adds them): they are released, still with no Azure call.
        h.deliver(vec![KubeEvent::ServiceApplied(deleting(&svc))]).unwrap();
        h.run_until_idle(50).unwrap();
        assert_eq!(h.labels(), vec![REMOVE_FINALIZERS], "{uid:?}");
        assert!(h.statuses.last().unwrap().settled, "{uid:?}");
    }
}

#[test]
fn the_engine_rule_and_the_transport_defence_agree() {
    let mut names: Vec<String> = ILLEGAL.iter().map(|s| s.to_string()).collect();
    names.extend(["0f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f", "egress.a_b", "..", ".", "a..b", "A-B_c.d", "", "\\", "é"].map(String::from));
    for n in 70..=82 {
        names.push("x".repeat(n));
    }
    for name in names {
        let engine = Identity::new(&name).check_inbound_names().is_ok();
        let lower = name.to_ascii_lowercase();
        let transport = validate_name("load balancer", &lower).is_ok() && validate_name("public IP", &format!("{lower}-pip")).is_ok();
        assert_eq!(engine, transport, "{name:?}: engine {engine}, transport {transport}");
    }
}
