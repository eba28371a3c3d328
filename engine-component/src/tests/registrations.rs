//! Group N: the workers' `updateServices` requests, batched (ENGINE.md 5.5, `registrar.rs`).
//! Several services' registration changes share one call, one batch in flight at a time; a batch
//! refused for one of its services is split so the refusal reaches that service only; the
//! per-service ordering rules hold.

use super::common::*;

const SERVICES: &str = "POST updateServices";

/// The requests of the outstanding `updateServices` calls, by call.
fn service_calls(h: &Harness) -> Vec<(CallId, Vec<SgwServiceRequest>)> {
    h.outstanding
        .iter()
        .filter_map(|(id, c)| match c {
            Call::Cloud(CloudCall::UpdateServices(r)) => Some((*id, r.clone())),
            _ => None,
        })
        .collect()
}

fn names(reqs: &[SgwServiceRequest]) -> Vec<String> {
    reqs.iter().map(|r| r.name.clone()).collect()
}

/// Completes every outstanding call of `label` at once, in one tick.
fn complete_all(h: &mut Harness, label: &str) {
    let done: Vec<Completion> =
        h.outstanding.iter().filter(|(_, c)| c.label() == label).map(|(id, c)| Completion { id: *id, outcome: Ok(ok_output(c)) }).collect();
    assert!(!done.is_empty(), "no {label} outstanding: {:?}", h.labels());
    h.tick_with(done);
}

/// Completes the steps before registration (finalizers, public IP, load balancer) of every
/// create outstanding, one step at a time.
fn to_registration(h: &mut Harness) {
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers"] {
        complete_all(h, label);
    }
}

/// `n` creates driven together up to their registration.
fn creates_up_to_registration(h: &mut Harness, n: usize) -> Vec<String> {
    let uids: Vec<String> = (0..n).map(|i| format!("0000000{i}-0000-4000-8000-00000000000{i}")).collect();
    h.deliver(uids.iter().map(|u| KubeEvent::ServiceApplied(lb_service(u, &[80]))).collect());
    h.tick();
    to_registration(h);
    uids
}

#[test]
fn s152_registrations_that_wait_together_go_out_in_one_call() {
    let mut h = harness();
    let uids = creates_up_to_registration(&mut h, 5);
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 1, "one updateServices for five registrations: {calls:?}");
    let (call, reqs) = &calls[0];
    let mut got = names(reqs);
    got.sort();
    assert_eq!(got, uids);
    assert!(reqs.iter().all(|r| !r.is_delete && r.backend_pools.len() == 1), "each carries its own backend pool");
    // No service is published before the batch lands.
    assert!(uids.iter().all(|u| !h.engine.nrp().has_load_balancer(&id(u))));
    h.ok(*call);
    assert!(uids.iter().all(|u| h.engine.nrp().has_load_balancer(&id(u))), "every member is recorded registered");
    complete_all(&mut h, "patch-service-ingress");
    assert!(uids.iter().all(|u| state(&h, u) == Some(ResourceState::Created)));
    assert_eq!(metric(&h, "service_update_batches_total", &[]), 1.0);
    inv(&h);
}

#[test]
fn s153_one_batch_in_flight_and_the_next_carries_what_waited_meanwhile() {
    let mut h = harness();
    let first = creates_up_to_registration(&mut h, 1);
    let (batch1, _) = service_calls(&h)[0].clone();
    // Three more reach their registration while the first batch is in flight.
    let later: Vec<String> = (0..3).map(|i| format!("1000000{i}-0000-4000-8000-00000000000{i}")).collect();
    h.deliver(later.iter().map(|u| KubeEvent::ServiceApplied(lb_service(u, &[80]))).collect());
    h.tick();
    to_registration(&mut h);
    assert_eq!(service_calls(&h).len(), 1, "the three wait for the batch in flight");
    assert!(later.iter().all(|u| h.engine.active_operation(&id(u)).is_some_and(|a| a.call.is_none())), "waiting without a call");
    h.ok(batch1);
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 1);
    let mut got = names(&calls[0].1);
    got.sort();
    assert_eq!(got, later, "the next batch carries exactly those that waited");
    assert!(h.engine.nrp().has_load_balancer(&id(&first[0])));
    inv(&h);
}

#[test]
fn s154_a_batch_refused_for_one_service_is_split_and_the_refusal_reaches_it_alone() {
    let mut h = harness();
    let uids = creates_up_to_registration(&mut h, 3);
    let (call, _) = service_calls(&h)[0].clone();
    let refusal =
        CallError::http(400, "InvalidResourceReference", &format!("Backend address pool referenced by service {} was not found.", uids[1]));
    h.fail(call, refusal.clone());
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 3, "each member goes again alone: {calls:?}");
    assert!(calls.iter().all(|(_, r)| r.len() == 1));
    assert_eq!(metric(&h, "service_update_batch_splits_total", &[]), 1.0);
    assert!(uids.iter().all(|u| state(&h, u) == Some(ResourceState::CreationInProgress)), "nobody's attempt failed yet");
    for (c, r) in calls {
        if r[0].name == uids[1] {
            h.fail(c, refusal.clone());
        } else {
            h.ok(c);
        }
    }
    assert!(h.engine.nrp().has_load_balancer(&id(&uids[0])) && h.engine.nrp().has_load_balancer(&id(&uids[2])));
    assert!(!h.engine.nrp().has_load_balancer(&id(&uids[1])));
    let failed = h.engine.operation(&id(&uids[1])).unwrap();
    assert_eq!(failed.state, ResourceState::NotStarted, "only the refused service's attempt failed");
    assert_eq!(failed.retry_count, 1);
    inv(&h);
}

#[test]
fn s155_a_batch_throttled_or_failing_fails_every_member_with_its_retry_after() {
    let mut h = harness();
    let uids = creates_up_to_registration(&mut h, 3);
    let (call, _) = service_calls(&h)[0].clone();
    let mut throttled = CallError::http(429, "TooManyRequests", "slow down");
    throttled.kind = ErrorKind::Throttled;
    throttled.retry_after_ms = Some(20_000);
    h.fail(call, throttled);
    assert!(service_calls(&h).is_empty(), "a throttled batch is not split into more calls");
    for u in &uids {
        let op = h.engine.operation(&id(u)).unwrap();
        assert_eq!(op.state, ResourceState::NotStarted, "{u}: its attempt failed");
        assert_eq!(op.retry_count, 1);
    }
    // The retry waits for the server's Retry-After, then the three register together again.
    assert_eq!(started_labels(&h.advance(19_000)), Vec::<&str>::new(), "nothing before the Retry-After");
    h.advance(10_000);
    to_registration(&mut h);
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1.len(), 3);
    inv(&h);
}

#[test]
fn s156_unregistrations_batch_and_a_404_in_a_batch_is_success_for_its_own_service() {
    let mut h = harness();
    let uids: Vec<String> = (0..3).map(|i| format!("2000000{i}-0000-4000-8000-00000000000{i}")).collect();
    for u in &uids {
        create(&mut h, u, &[80]);
    }
    for u in &uids {
        h.deliver(vec![KubeEvent::ServiceDeleted(lb_service(u, &[80]))]);
    }
    h.tick();
    // Step 1 of 6.4, the pool detachments, share one call.
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1.len(), 3);
    assert!(calls[0].1.iter().all(|r| !r.is_delete && r.backend_pools.is_empty()));
    complete_all(&mut h, SERVICES);
    complete_all(&mut h, "DELETE loadBalancers");
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 1, "the unregistrations share one call");
    assert!(calls[0].1.iter().all(|r| r.is_delete));
    // One of them was already unregistered: NRP refuses the whole request with 404.
    let gone = CallError::http(404, "ResourceNotFound", &format!("Service {} is not registered in the ServiceGateway.", uids[0]));
    h.fail(calls[0].0, gone.clone());
    for (c, r) in service_calls(&h) {
        if r[0].name == uids[0] {
            h.fail(c, gone.clone());
        } else {
            h.ok(c);
        }
    }
    complete_all(&mut h, "DELETE publicIPAddresses");
    complete_all(&mut h, "remove-service-finalizers");
    for u in &uids {
        assert!(h.engine.operation(&id(u)).is_none(), "{u}: deleted and untracked");
    }
    inv(&h);
}

#[test]
fn s157_a_batch_holds_no_more_than_the_request_budget() {
    let mut h = Harness::with_config(TenantConfig { tenant: "t".into(), seed: 7, max_request_entries: Some(2), ..TenantConfig::unpaced() });
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"]))]);
    let uids = creates_up_to_registration(&mut h, 5);
    let mut sent = Vec::new();
    while let Some((c, r)) = service_calls(&h).first().cloned() {
        assert_eq!(service_calls(&h).len(), 1, "one batch in flight");
        assert!(r.len() <= 2, "{} services in a 2-entry budget", r.len());
        sent.extend(names(&r));
        h.ok(c);
    }
    sent.sort();
    assert_eq!(sent, uids, "each registered exactly once");
    assert_eq!(metric(&h, "service_update_batches_total", &[]), 3.0);
}

#[test]
fn s158_a_worker_that_times_out_while_queued_leaves_the_queue_and_the_batch_survives_a_restore() {
    let mut h = harness();
    let first = creates_up_to_registration(&mut h, 1);
    let (batch1, _) = service_calls(&h)[0].clone();
    let second = "30000000-0000-4000-8000-000000000000".to_string();
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(&second, &[80]))]);
    h.tick();
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers"] {
        let c = h.find_by(|c| c.label() == label).unwrap();
        h.ok(c);
    }
    // The engine moves to another instance mid-batch (a hot swap): nothing is lost.
    let bytes = h.engine.snapshot();
    h.engine = crate::Engine::restore(&bytes).unwrap();
    inv(&h);
    assert!(h.engine.awaits(batch1));
    // Both attempts outlive their deadline: the queued one leaves the queue, the batch's own
    // deadline frees the registrar, and the late completion is ignored.
    h.advance(5 * 60 * 1000 + 1);
    inv(&h);
    assert!(!h.engine.awaits(batch1));
    assert_eq!(state(&h, &second), Some(ResourceState::NotStarted));
    assert_eq!(state(&h, &first[0]), Some(ResourceState::NotStarted));
    h.ok(batch1);
    assert!(!h.engine.nrp().has_load_balancer(&id(&first[0])), "a late completion registers nobody");
    // The retries register both, together.
    assert!(h.run_ok(200));
    assert!(h.engine.nrp().has_load_balancer(&id(&first[0])) && h.engine.nrp().has_load_balancer(&id(&second)));
}

#[test]
fn s160_batches_are_paced_by_the_interval_unless_the_backlog_waits_on_them() {
    let cap = 3;
    let mut h =
        Harness::with_config(TenantConfig { tenant: "t".into(), seed: 7, max_operations_in_flight: Some(cap), ..TenantConfig::default() });
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"]))]);
    // The first registration goes at once.
    let first = creates_up_to_registration(&mut h, 1);
    let (c, r) = service_calls(&h)[0].clone();
    assert_eq!(names(&r), first);
    h.ok(c);
    complete_all(&mut h, "patch-service-ingress");
    // Two more within the interval wait for its end, then share one call.
    let two: Vec<String> = (0..2).map(|i| format!("4000000{i}-0000-4000-8000-00000000000{i}")).collect();
    h.deliver(two.iter().map(|u| KubeEvent::ServiceApplied(lb_service(u, &[80]))).collect());
    h.advance(100);
    to_registration(&mut h);
    assert!(service_calls(&h).is_empty(), "held by the interval");
    assert_eq!(h.last.next_wake_ms, Some(1_000_000 + DEFAULT_SGW_POST_INTERVAL_MS), "woken at its end");
    h.wake();
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1.len(), 2, "one call for both");
    h.ok(calls[0].0);
    complete_all(&mut h, "patch-service-ingress");
    // A backlog: every slot's worker waits at its registration and more Services wait for a
    // slot; the batch goes at once, interval or not.
    let many: Vec<String> = (0..5).map(|i| format!("5000000{i}-0000-4000-8000-00000000000{i}")).collect();
    h.deliver(many.iter().map(|u| KubeEvent::ServiceApplied(lb_service(u, &[80]))).collect());
    h.advance(10);
    to_registration(&mut h);
    let calls = service_calls(&h);
    assert_eq!(calls.len(), 1, "not held: the backlog waits on it");
    assert_eq!(calls[0].1.len(), cap as usize);
    inv(&h);
}
