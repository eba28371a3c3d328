//! Property tests: random sequences of Service / EndpointSlice / Node events, completions
//! (success, transient failure, 404, overlay rejection, 400, timeouts) and time steps. After
//! every step the engine invariants hold (indexes exact, at most 10 operations in flight, no
//! pending deletion without an op, nothing published for an unregistered service, incremental
//! diff == full-walk diff), no unregister starts while an address of the service is published
//! or may be, no finalizer removal starts before the Azure deletes succeeded, and every metric is
//! a finite non-negative number. Once faults stop, the engine settles and NRP matches the cluster.

use super::common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const UIDS: [&str; 4] = [
    "a0000000-0000-4000-8000-000000000001",
    "b0000000-0000-4000-8000-000000000002",
    "c0000000-0000-4000-8000-000000000003",
    "d0000000-0000-4000-8000-000000000004",
];
const ADDRS: [&str; 10] = ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6", "fd01::1", "FD01::2", "junk", "10.1.0.7"];

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    Transient,
    Http404,
    Overlay,
    BadRequest,
    Timeout,
    KubeNotFound,
}

#[derive(Clone, Debug)]
enum Action {
    ApplyService { svc: usize, ports: usize },
    DeletingService { svc: usize },
    ClusterIp { svc: usize },
    DeleteService { svc: usize },
    ApplySlice { slice: usize, owner: usize, eps: Vec<(usize, usize, bool)> },
    DeleteSlice { slice: usize },
    ApplyNode { node: usize, variant: usize },
    DeleteNode { node: usize },
    Complete { pick: usize, outcome: Outcome },
    Advance { ms: u64 },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Ok),
        2 => Just(Outcome::Transient),
        1 => Just(Outcome::Http404),
        1 => Just(Outcome::Overlay),
        1 => Just(Outcome::BadRequest),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::KubeNotFound),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..4usize, 0..4usize).prop_map(|(svc, ports)| Action::ApplyService { svc, ports }),
        1 => (0..4usize).prop_map(|svc| Action::DeletingService { svc }),
        1 => (0..4usize).prop_map(|svc| Action::ClusterIp { svc }),
        1 => (0..4usize).prop_map(|svc| Action::DeleteService { svc }),
        3 => (0..4usize, 0..4usize, prop::collection::vec((0..10usize, 0..4usize, any::<bool>()), 0..5))
            .prop_map(|(slice, owner, eps)| Action::ApplySlice { slice, owner, eps }),
        1 => (0..4usize).prop_map(|slice| Action::DeleteSlice { slice }),
        1 => (0..3usize, 0..3usize).prop_map(|(node, variant)| Action::ApplyNode { node, variant }),
        1 => (0..3usize).prop_map(|node| Action::DeleteNode { node }),
        8 => (any::<usize>(), outcome()).prop_map(|(pick, outcome)| Action::Complete { pick, outcome }),
        2 => prop_oneof![Just(0u64), 1u64..3_000, 3_000u64..60_000, 290_000u64..400_000].prop_map(|ms| Action::Advance { ms }),
    ]
}

fn ports(v: usize) -> Vec<i32> {
    match v {
        0 => vec![80],
        1 => vec![80, 443],
        2 => vec![65535], // builds to a terminal error
        _ => vec![81],
    }
}

fn node_ips(node: usize, variant: usize) -> Vec<String> {
    match variant {
        0 => vec![format!("10.0.0.{node}")],
        1 => vec![format!("10.0.1.{node}")],
        _ => vec![format!("10.0.0.{node}"), format!("FD00::{node}")],
    }
}

/// What the cluster last said about a Service.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Unknown,
    Lb(usize),
    NoLb,
}

/// Per identity: which Azure deletes succeeded since the last create-side call.
#[derive(Default, Debug)]
struct DeleteProgress {
    lb: bool,
    unregister: bool,
    pip: bool,
}

struct Checker {
    seen: usize,
    progress: BTreeMap<String, DeleteProgress>,
    calls: BTreeMap<CallId, Call>,
}

impl Checker {
    /// Checks the calls started since the last look.
    fn started(&mut self, h: &Harness) -> Result<(), TestCaseError> {
        for (cid, call) in h.log[self.seen..].iter() {
            self.calls.insert(*cid, call.clone());
            match call {
                Call::Cloud(CloudCall::UpdateServices(reqs)) => {
                    for r in reqs {
                        if r.is_delete {
                            let sid = id(&r.name);
                            prop_assert!(!h.engine.nrp().has_addresses_for(&sid), "unregister of {} while an address is published", r.name);
                            prop_assert!(!h.engine.may_have_nrp_addresses(&sid), "unregister of {} while a sync may publish it", r.name);
                        } else if !r.backend_pools.is_empty() {
                            self.progress.insert(r.name.clone(), DeleteProgress::default());
                        }
                    }
                }
                Call::Cloud(CloudCall::PutPublicIp { name, .. }) => {
                    self.progress.insert(name.trim_end_matches("-pip").to_string(), DeleteProgress::default());
                }
                Call::Cloud(CloudCall::PutLoadBalancer(lb)) => {
                    self.progress.insert(lb.name.clone(), DeleteProgress::default());
                }
                Call::Kube(KubeCall::RemoveServiceFinalizers(r)) => {
                    let p = self.progress.get(&r.uid.to_ascii_lowercase());
                    prop_assert!(p.is_some_and(|p| p.lb && p.unregister && p.pip), "finalizers of {} removed before the Azure deletes succeeded: {p:?}", r.uid);
                }
                _ => {}
            }
        }
        self.seen = h.log.len();
        Ok(())
    }

    /// Records a completion about to be delivered.
    fn completed(&mut self, cid: CallId, ok: bool) {
        if !ok {
            return;
        }
        match self.calls.get(&cid) {
            Some(Call::Cloud(CloudCall::DeleteLoadBalancer { name })) => self.progress.entry(name.clone()).or_default().lb = true,
            Some(Call::Cloud(CloudCall::DeletePublicIp { name })) => self.progress.entry(name.trim_end_matches("-pip").to_string()).or_default().pip = true,
            Some(Call::Cloud(CloudCall::UpdateServices(reqs))) => {
                for r in reqs.iter().filter(|r| r.is_delete) {
                    self.progress.entry(r.name.clone()).or_default().unregister = true;
                }
            }
            _ => {}
        }
    }
}

fn check_state(h: &Harness) -> Result<(), TestCaseError> {
    if let Err(e) = h.engine.check_invariants() {
        return Err(TestCaseError::fail(e));
    }
    let st = h.engine.status();
    prop_assert!(st.operations_in_flight <= 10);
    for m in &st.metrics {
        prop_assert!(m.value.is_finite() && m.value >= 0.0, "{m:?}");
    }
    Ok(())
}

fn run(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut h = Harness::new(11);
    h.deliver((0..3).map(|n| KubeEvent::NodeApplied(node(&format!("n{n}"), &[&format!("10.0.0.{n}")]))).collect());
    let mut want = [Want::Unknown; 4];
    let mut ck = Checker { seen: 0, progress: BTreeMap::new(), calls: BTreeMap::new() };
    for a in actions {
        match a {
            Action::ApplyService { svc, ports: p } => {
                h.deliver(vec![KubeEvent::ServiceApplied(lb_service(UIDS[svc], &ports(p)))]);
                want[svc] = Want::Lb(p);
            }
            Action::DeletingService { svc } => {
                h.deliver(vec![deleting(UIDS[svc], &[80])]);
                want[svc] = Want::NoLb;
            }
            Action::ClusterIp { svc } => {
                h.deliver(vec![as_cluster_ip(UIDS[svc])]);
                want[svc] = Want::NoLb;
            }
            Action::DeleteService { svc } => {
                h.deliver(vec![KubeEvent::ServiceDeleted(lb_service(UIDS[svc], &[80]))]);
                want[svc] = Want::NoLb;
            }
            Action::ApplySlice { slice: s, owner, eps } => {
                let mut sl = slice(&format!("s{s}"), UIDS[owner], &[]);
                sl.endpoints = eps
                    .iter()
                    .map(|(a, n, ready)| Endpoint { addresses: vec![ADDRS[*a].into()], ready: if *ready { None } else { Some(false) }, node_name: Some(format!("n{n}")) })
                    .collect();
                h.deliver(vec![KubeEvent::EndpointSliceApplied(sl)]);
            }
            Action::DeleteSlice { slice: s } => h.deliver(vec![KubeEvent::EndpointSliceDeleted(slice(&format!("s{s}"), UIDS[0], &[]))]),
            Action::ApplyNode { node: n, variant } => {
                let ips = node_ips(n, variant);
                let ips: Vec<&str> = ips.iter().map(|s| s.as_str()).collect();
                h.deliver(vec![KubeEvent::NodeApplied(node(&format!("n{n}"), &ips))]);
            }
            Action::DeleteNode { node: n } => h.deliver(vec![KubeEvent::NodeDeleted(node(&format!("n{n}"), &[]))]),
            Action::Complete { pick, outcome } => {
                if h.outstanding.is_empty() {
                    h.tick();
                } else {
                    let cid = *h.outstanding.keys().nth(pick % h.outstanding.len()).unwrap();
                    let call = h.outstanding[&cid].clone();
                    let res: Result<CallOutput, CallError> = match (&outcome, &call) {
                        (Outcome::Ok, c) => Ok(ok_output(c)),
                        (Outcome::Transient, _) => Err(CallError::http(500, "InternalServerError", "boom")),
                        (Outcome::Http404, Call::Kube(_)) => Err(CallError::http(404, "", "not found (http)")),
                        (Outcome::Http404, _) => Err(CallError::http(404, "NotFound", "gone")),
                        (Outcome::Overlay, _) => Err(CallError::http(400, crate::workers::OVERLAY_ERROR_CODE, "mapped")),
                        (Outcome::BadRequest, _) => Err(CallError::http(400, "BadRequest", "bad")),
                        (Outcome::Timeout, _) => Err(CallError::of_kind(ErrorKind::Timeout, "timeout")),
                        (Outcome::KubeNotFound, Call::Kube(KubeCall::RemoveServiceFinalizers(_))) => Err(CallError::of_kind(ErrorKind::NotFound, "gone")),
                        (Outcome::KubeNotFound, _) => Err(CallError::of_kind(ErrorKind::Transport, "reset")),
                    };
                    let success = match &res {
                        Ok(_) => true,
                        Err(e) => e.status == 404 && matches!(call, Call::Cloud(CloudCall::DeleteLoadBalancer { .. }) | Call::Cloud(CloudCall::DeletePublicIp { .. }) | Call::Cloud(CloudCall::UpdateServices(_))),
                    };
                    ck.completed(cid, success);
                    h.complete(cid, res);
                }
            }
            Action::Advance { ms } => {
                h.advance(ms);
            }
        }
        ck.started(&h)?;
        check_state(&h)?;
    }

    // Faults stop: everything succeeds; a fresh pass recomputes any abandoned batch.
    h.engine.trigger_lu();
    for _ in 0..200 {
        h.tick();
        ck.started(&h)?;
        if h.outstanding.is_empty() {
            if h.engine.is_settled() {
                break;
            }
            h.wake();
            ck.started(&h)?;
            continue;
        }
        let cid = *h.outstanding.keys().next().unwrap();
        let out = ok_output(&h.outstanding[&cid]);
        ck.completed(cid, true);
        h.complete(cid, Ok(out));
        ck.started(&h)?;
        check_state(&h)?;
    }
    prop_assert!(h.engine.is_settled(), "did not settle: {:?}", h.engine.status());
    prop_assert!(h.engine.full_location_diff().is_empty(), "NRP differs from desired after settling");
    for (i, w) in want.iter().enumerate() {
        let sid = id(UIDS[i]);
        match w {
            Want::Lb(p) if *p != 2 => {
                prop_assert_eq!(h.engine.operation(&sid).map(|o| o.state), Some(ResourceState::Created), "service {} should be live", i);
                prop_assert!(h.engine.nrp().has_load_balancer(&sid));
            }
            Want::NoLb => {
                prop_assert!(!h.engine.is_service_tracked(&sid), "service {} should be gone", i);
                prop_assert!(!h.engine.nrp().has_load_balancer(&sid));
            }
            _ => {}
        }
    }
    // Snapshot/restore is lossless at the end of every run.
    let bytes = h.engine.snapshot();
    let restored = crate::Engine::restore(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(restored.snapshot() == bytes, "snapshot does not round-trip");
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES raises it for a deeper local run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        max_shrink_iters: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_inbound_histories_keep_invariants(actions in prop::collection::vec(action(), 1..80)) {
        run(actions)?;
    }
}
