//! A failure at each step of the inbound create and delete: the operation retries later (after a
//! backoff, in virtual time) and no later step runs before the failed one has succeeded.

use difftracker_engine::io::KubeEvent;
use difftracker_tests::label::*;
use difftracker_tests::*;

const UID: &str = "0a0b0c0d-0000-4000-8000-000000000042";

fn cluster(h: &mut Harness) -> difftracker_engine::io::Service {
    let svc = sample_service("shop", "cart", UID);
    h.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
    ])
    .unwrap();
    svc
}

const CREATE_STEPS: [&str; 6] = [ADD_FINALIZERS, PUT_PIP, PUT_LB, UPDATE_SERVICES, PATCH_INGRESS, UPDATE_LOCATIONS];

/// Fails `step` of the create twice, then checks the retry and the ordering.
fn create_step_fails_then_retries(step: &str) {
    let mut h = Harness::wasm();
    h.script.fail(step, 2, 500, "InternalServerError");
    cluster(&mut h);
    h.run_until_idle(300).unwrap();

    let attempts = h.calls(step);
    assert!(attempts.len() >= 3, "{step}: two failures and a success, got {}: {:?}", attempts.len(), h.labels());
    // The retries come later in virtual time: a backoff, not a hot loop.
    assert!(attempts[1].at_ms > attempts[0].at_ms, "{step}: retried at once: {attempts:?}");
    assert!(attempts[2].at_ms > attempts[1].at_ms, "{step}: retried at once: {attempts:?}");

    // No later step before the failed one succeeded.
    let success = h.first_success(step).expect("the step succeeds in the end");
    let pos = CREATE_STEPS.iter().position(|s| *s == step).unwrap();
    for later in &CREATE_STEPS[pos + 1..] {
        if let Some(first) = h.first(later) {
            assert!(first > success, "{later} (#{first}) ran before {step} succeeded (#{success}): {:?}", h.labels());
        }
    }
    // And it does finish.
    assert_eq!(h.state_count("created"), 1, "{step}: {:?}", h.statuses.last());
    for s in CREATE_STEPS {
        assert!(h.first_success(s).is_some(), "{s} never succeeded after {step} failed: {:?}", h.labels());
    }
}

#[test]
fn failing_add_finalizers_retries_before_any_azure_call() {
    create_step_fails_then_retries(ADD_FINALIZERS);
}

#[test]
fn failing_put_public_ip_retries_before_the_load_balancer() {
    create_step_fails_then_retries(PUT_PIP);
}

#[test]
fn failing_put_load_balancer_retries_before_registration() {
    create_step_fails_then_retries(PUT_LB);
}

#[test]
fn failing_registration_retries_before_ingress_and_addresses() {
    create_step_fails_then_retries(UPDATE_SERVICES);
}

#[test]
fn failing_ingress_patch_retries_until_created() {
    create_step_fails_then_retries(PATCH_INGRESS);
}

#[test]
fn failing_address_publication_retries_with_the_same_addresses() {
    create_step_fails_then_retries(UPDATE_LOCATIONS);
}

#[test]
fn backoff_between_retries_grows() {
    let mut h = Harness::wasm();
    h.script.fail(PUT_PIP, 4, 503, "ServiceUnavailable");
    cluster(&mut h);
    h.run_until_idle(300).unwrap();
    let at: Vec<u64> = h.calls(PUT_PIP).iter().map(|s| s.at_ms).collect();
    assert_eq!(at.len(), 5, "{at:?}");
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s, 2 s, 4 s, 8 s, each with at most 20 % jitter.
    for (gap, base) in gaps.iter().zip([1_000u64, 2_000, 4_000, 8_000]) {
        assert!(*gap >= base && *gap <= base + base / 5, "gaps {gaps:?}");
    }
}

const DELETE_STEPS: [&str; 6] = [UPDATE_LOCATIONS, UPDATE_SERVICES, DELETE_LB, UPDATE_SERVICES, DELETE_PIP, REMOVE_FINALIZERS];

/// Creates the service, then fails `step` of the delete (the `nth` call with that label in the
/// delete) and checks that finalizers are removed only after every Azure delete succeeded.
fn delete_step_fails_then_retries(step: &str) {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h);
    h.run_until_idle(100).unwrap();
    let created = h.started.len();
    h.script.fail(step, 1, 500, "InternalServerError");
    h.deliver(vec![KubeEvent::ServiceApplied(deleting(&svc))]).unwrap();
    h.run_until_idle(300).unwrap();

    let delete: Vec<&Started> = h.started[created..].iter().collect();
    let labels: Vec<&str> = delete.iter().map(|s| s.call.label()).collect();
    let failed_ids: Vec<u64> = h.completed.iter().filter(|c| !c.ok).map(|c| c.id).collect();
    assert_eq!(failed_ids.len(), 1, "{labels:?}");
    let failed_at = delete.iter().position(|s| s.id == failed_ids[0]).unwrap();
    assert_eq!(delete[failed_at].call.label(), step);
    // The failed call is attempted again, later in virtual time.
    let retry = delete[failed_at + 1..].iter().find(|s| s.call.label() == step).expect("retried");
    assert!(retry.at_ms > delete[failed_at].at_ms, "retried at once");
    // Finalizers go last, once, after the retry.
    let removes: Vec<usize> = labels.iter().enumerate().filter(|(_, l)| **l == REMOVE_FINALIZERS).map(|(i, _)| i).collect();
    assert_eq!(removes.len(), 1, "{labels:?}");
    assert_eq!(removes[0], labels.len() - 1, "{labels:?}");
    assert!(h.completed.iter().any(|c| c.ok && c.label == REMOVE_FINALIZERS));
    let status = h.status().unwrap();
    assert!(status.states.iter().all(|(_, n)| *n == 0), "{status:?}");
    // Every delete step still ran.
    for s in DELETE_STEPS {
        assert!(labels.contains(&s), "{s} missing after {step} failed: {labels:?}");
    }
}

#[test]
fn failing_load_balancer_delete_retries_and_keeps_finalizers_until_done() {
    delete_step_fails_then_retries(DELETE_LB);
}

#[test]
fn failing_public_ip_delete_retries_and_keeps_finalizers_until_done() {
    delete_step_fails_then_retries(DELETE_PIP);
}

#[test]
fn failing_address_drain_retries_before_unregistering() {
    let mut h = Harness::wasm();
    let svc = cluster(&mut h);
    h.run_until_idle(100).unwrap();
    let created = h.started.len();
    h.script.fail(UPDATE_LOCATIONS, 2, 500, "InternalServerError");
    h.deliver(vec![KubeEvent::ServiceApplied(deleting(&svc))]).unwrap();
    h.run_until_idle(300).unwrap();
    let labels: Vec<&str> = h.started[created..].iter().map(|s| s.call.label()).collect();
    let drained = h.started[created..]
        .iter()
        .position(|s| s.call.label() == UPDATE_LOCATIONS && h.completed.iter().any(|c| c.ok && c.id == s.id))
        .expect("the drain succeeds");
    assert_eq!(&labels[..drained + 1], &[UPDATE_LOCATIONS; 3][..], "nothing else before the drain succeeded: {labels:?}");
    assert_eq!(labels.last(), Some(&REMOVE_FINALIZERS));
}
