//! Group M: the request budget of a location sync (ENGINE.md 5.5). A diff larger than the
//! tenant's budget goes out as several `updateAddressLocations`, one at a time, each under the
//! budget; the ordering rules hold across batches and a failed batch neither re-sends nor loses
//! the batches that landed.

use super::common::*;
use std::collections::BTreeSet;

const SYNC: &str = "POST updateAddressLocations";

/// A harness whose requests carry at most `bytes` bytes and `entries` entries, with nodes n1 and
/// n2 known.
fn budget_harness(bytes: u64, entries: u32) -> Harness {
    let mut h = Harness::with_config(TenantConfig {
        tenant: "test".into(),
        seed: 7,
        max_request_bytes: Some(bytes),
        max_request_entries: Some(entries),
        ..TenantConfig::unpaced()
    });
    h.deliver(vec![KubeEvent::NodeApplied(node("n1", &["10.0.0.1"])), KubeEvent::NodeApplied(node("n2", &["10.0.0.2"]))]);
    h
}

/// `n` pod addresses, alternating between nodes n1 and n2.
fn endpoints(n: usize) -> Vec<(String, &'static str)> {
    (0..n).map(|i| (format!("10.1.{}.{}", i / 250, i % 250 + 1), if i % 2 == 0 { "n1" } else { "n2" })).collect()
}

fn slice_of(name: &str, uid: &str, eps: &[(String, &'static str)]) -> EndpointSlice {
    let refs: Vec<(&str, &str)> = eps.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    slice(name, uid, &refs)
}

fn sync_body(h: &Harness) -> Option<(CallId, Vec<LocationUpdate>)> {
    let c = h.find(SYNC)?;
    match h.outstanding.get(&c) {
        Some(Call::Cloud(CloudCall::UpdateAddressLocations(l))) => Some((c, l.clone())),
        _ => None,
    }
}

fn addresses_of(body: &[LocationUpdate]) -> BTreeSet<String> {
    body.iter().flat_map(|l| l.addresses.iter().map(|a| a.address.clone())).collect()
}

/// Completes the outstanding sync batches one by one, checking each against the budget.
/// Returns the bodies sent.
fn drain_batches(h: &mut Harness, budget: RequestBudget) -> Vec<Vec<LocationUpdate>> {
    let mut bodies = Vec::new();
    while let Some((c, body)) = sync_body(h) {
        assert_eq!(h.labels().iter().filter(|l| **l == SYNC).count(), 1, "one batch in flight at a time");
        assert!(budget.fits(location_request_bytes(&body), location_request_entries(&body)), "batch {} over the budget", bodies.len());
        assert!(body.iter().all(|l| !l.addresses.is_empty()), "no part of a split location reads as its deletion");
        bodies.push(body);
        h.ok(c);
        inv(h);
        assert!(bodies.len() < 1_000, "the batches never end");
    }
    bodies
}

#[test]
fn s143_large_sync_is_split_into_batches_under_the_budget() {
    let budget = RequestBudget { max_bytes: 4_000, max_entries: 10_000 };
    let mut h = budget_harness(budget.max_bytes, budget.max_entries);
    let eps = endpoints(400);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice_of("s", UID, &eps))]);
    create(&mut h, UID, &[80]);
    let bodies = drain_batches(&mut h, budget);
    assert!(bodies.len() >= 5, "400 addresses in 4 kB requests: {} batches", bodies.len());
    // Every address was sent exactly once, and all are published.
    let sent: Vec<String> = bodies.iter().flat_map(|b| addresses_of(b)).collect();
    assert_eq!(sent.len(), 400);
    assert_eq!(sent.iter().collect::<BTreeSet<_>>().len(), 400);
    assert_eq!(h.engine.nrp().address_count(), 400);
    assert!(h.engine.full_location_diff().is_empty());
    assert_eq!(metric(&h, "location_sync_batches_total", &[]), bodies.len() as f64);
    // A new location is a FullUpdate in its first batch only; its continuation edits it.
    let actions: Vec<UpdateAction> = bodies.iter().flatten().filter(|l| l.location == "10.0.0.2").map(|l| l.action).collect();
    assert_eq!(actions[0], UpdateAction::FullUpdate);
    assert!(actions.len() >= 2 && actions[1..].iter().all(|a| *a == UpdateAction::PartialUpdate), "{actions:?}");
    assert!(h.engine.is_settled());

    // The entry budget alone splits too: 10 entries (locations and addresses) per request.
    let budget = RequestBudget { max_bytes: DEFAULT_MAX_REQUEST_BYTES, max_entries: 10 };
    let mut h = budget_harness(budget.max_bytes, budget.max_entries);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice_of("s", UID, &endpoints(45)))]);
    create(&mut h, UID, &[80]);
    let bodies = drain_batches(&mut h, budget);
    assert!(bodies.len() >= 5, "{} batches", bodies.len());
    assert_eq!(h.engine.nrp().address_count(), 45);

    // The defaults send a small diff whole.
    let mut h = harness();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice_of("s", UID, &endpoints(400)))]);
    create(&mut h, UID, &[80]);
    assert_eq!(drain_batches(&mut h, TenantConfig::default().request_budget()).len(), 1);
}

#[test]
fn s144_batches_keep_registration_before_publication_and_drain_before_unregister() {
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
    let budget = RequestBudget { max_bytes: 3_000, max_entries: 10_000 };
    let mut h = budget_harness(budget.max_bytes, budget.max_entries);
    let eps = endpoints(200);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice_of("a", UID, &eps))]);
    create(&mut h, UID, &[80]);
    // B backs the same pods; it starts its create while A's batches go out.
    let mut sb = slice_of("b", B, &eps);
    sb.meta.uid = "slice-b".into();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sb), KubeEvent::ServiceApplied(lb_service(B, &[80]))]);
    h.tick();
    let (c, first) = sync_body(&h).unwrap();
    h.ok(c);
    assert!(first.iter().flat_map(|l| &l.addresses).all(|a| a.services == vec![UID.to_string()]), "B is not registered yet");
    // B registers between two batches: the batches after it may list it, none before did.
    for label in ["add-service-finalizers", "PUT publicIPAddresses", "PUT loadBalancers", "POST updateServices", "patch-service-ingress"] {
        let c = h.find(label).unwrap_or_else(|| panic!("expected {label}, outstanding {:?}", h.labels()));
        h.ok(c);
    }
    assert_eq!(state(&h, B), Some(ResourceState::Created));
    drain_batches(&mut h, budget);
    assert!(h.engine.full_location_diff().is_empty());
    let both = crate::idset::IdSet::from([id(UID), id(B)]);
    assert!(h.engine.nrp().locations().values().flat_map(|a| a.values()).all(|s| *s == both));

    // Deleting A drains its 200 addresses in several batches; the unregister waits for the last.
    h.deliver(vec![deleting(UID, &[80])]);
    h.tick();
    let mut batches = 0;
    while let Some((c, body)) = sync_body(&h) {
        assert!(body.iter().flat_map(|l| &l.addresses).all(|a| a.services == vec![B.to_string()]), "A drained, B kept");
        assert_eq!(state(&h, UID), Some(ResourceState::DeletionPending), "batch {batches}: still draining");
        assert!(h.find_by(|c| is_unregister(c, UID)).is_none() && h.find("DELETE loadBalancers").is_none());
        h.ok(c);
        batches += 1;
    }
    assert!(batches >= 2, "{batches} drain batches");
    assert!(!h.engine.nrp().has_addresses_for(&id(UID)));
    assert!(
        h.find_by(|c| matches!(c, Call::Cloud(CloudCall::UpdateServices(r)) if r.iter().any(|r| r.name == UID))).is_some(),
        "{:?}",
        h.labels()
    );
    finish_delete(&mut h, UID);
    assert!(h.run_ok(50));
    assert!(h.engine.operation(&id(UID)).is_none());
    inv(&h);
}

#[test]
fn s145_a_failed_batch_retries_without_resending_the_batches_that_landed() {
    let budget = RequestBudget { max_bytes: 3_000, max_entries: 10_000 };
    let mut h = budget_harness(budget.max_bytes, budget.max_entries);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice_of("s", UID, &endpoints(150)))]);
    create(&mut h, UID, &[80]);
    let (c, first) = sync_body(&h).unwrap();
    h.ok(c);
    let landed = addresses_of(&first);
    assert_eq!(h.engine.nrp().address_count(), landed.len(), "a landed batch is recorded as published");
    // The second batch fails (retryable): backoff, then the retry starts after what landed.
    let (c, second) = sync_body(&h).unwrap();
    h.fail(c, transient());
    assert!(sync_body(&h).is_none(), "no batch while backing off");
    assert!(!h.engine.is_settled());
    assert_eq!(h.engine.nrp().address_count(), landed.len(), "the failed batch is not recorded");
    h.wake();
    let (c, retried) = sync_body(&h).expect("the retry");
    assert!(addresses_of(&retried).is_disjoint(&landed), "a landed batch is not re-sent");
    assert_eq!(addresses_of(&retried), addresses_of(&second), "the failed batch is sent again");
    h.ok(c);
    // A terminal answer abandons the rest until the next change, keeping what landed.
    let (c, _) = sync_body(&h).unwrap();
    let published = h.engine.nrp().address_count();
    h.fail(c, CallError::http(400, "InvalidRequestFormat", "bad"));
    assert!(sync_body(&h).is_none() && h.engine.locations_updater().retry_at_ms.is_none());
    assert!(h.advance(3_600_000).is_empty());
    assert_eq!(h.engine.nrp().address_count(), published);
    // The next change resumes: everything not yet published, nothing twice.
    let mut eps = endpoints(150);
    eps.push(("10.1.9.9".into(), "n1"));
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice_of("s", UID, &eps))]);
    h.tick();
    let rest = drain_batches(&mut h, budget);
    assert_eq!(rest.iter().map(|b| addresses_of(b).len()).sum::<usize>(), 151 - published);
    assert_eq!(h.engine.nrp().address_count(), 151);
    assert!(h.engine.is_settled());
    inv(&h);
}

#[test]
fn s146_a_batch_that_times_out_is_sent_again_and_one_entry_always_goes() {
    // A budget smaller than any entry still sends one entry per request.
    let mut h = budget_harness(1, 1);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice_of("s", UID, &endpoints(3)))]);
    create(&mut h, UID, &[80]);
    let (hung, first) = sync_body(&h).unwrap();
    assert_eq!(location_request_entries(&first), 2, "one location with one address");
    // The 5-minute attempt deadline is per batch.
    h.wake();
    assert!(!h.engine.awaits(hung));
    h.outstanding.remove(&hung);
    h.wake();
    let (_, again) = sync_body(&h).expect("the batch again");
    assert_eq!(again, first);
    let mut n = 0;
    while let Some((c, _)) = sync_body(&h) {
        h.ok(c);
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(h.engine.nrp().address_count(), 3);
}
