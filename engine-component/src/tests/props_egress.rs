//! Property tests over random egress pod histories: pods are created (single- or dual-stack),
//! change IPs, move nodes, change phase and label, are deleted with or without IPs; calls
//! complete with successes or faults in any order; time advances. A small simulated cluster
//! (pods with finalizers, deletion gated on them, a watch event per change) and a simulated
//! Azure (public IPs, NAT gateways, ServiceGateway registrations and address locations, with the
//! overlay rejection of an unregister while addresses are mapped) answer the calls.
//!
//! After every step: the engine invariants hold, the ref-count equals the live addresses per
//! identity, no call names `default-natgw`, a pod's finalizer is never removed while one of its
//! addresses is still mapped in the (simulated) ServiceGateway, and a last pod's never while its
//! NAT gateway exists. Once faults stop, everything settles to exactly what the cluster implies:
//! a NAT gateway, both public IPs and a registration per identity with live pods, every live
//! address mapped, nothing else, and no pod stuck terminating.

use super::common::*;
use crate::egress::pod::{location_for, locations_by_family, pod_addresses};
use crate::identity::check_egress_identity;
use crate::names::POD_FINALIZER;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const SLOTS: usize = 4;
const LABELS: [&str; 5] = ["egress-a", "egress-b", "egress-a", "", "default-natgw"];
const NODES: [(&str, &[&str]); 3] = [("n0", &["10.0.0.10"]), ("n1", &["10.0.0.11"]), ("d2", &["10.0.0.12", "fd00::12"])];

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    Transient,
    Http404,
    Timeout,
}

#[derive(Clone, Debug)]
enum Action {
    Create { slot: usize, label: usize, node: usize, with_ips: bool },
    ChangeIp { slot: usize },
    Move { slot: usize, node: usize },
    Phase { slot: usize, phase: usize },
    Label { slot: usize, label: usize },
    Delete { slot: usize, clear_ips: bool },
    Complete { pick: usize, outcome: Outcome },
    Advance { ms: u64 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..SLOTS, 0..LABELS.len(), 0..NODES.len(), prop::bool::weighted(0.85)).prop_map(|(slot, label, node, with_ips)| Action::Create { slot, label, node, with_ips }),
        1 => (0..SLOTS).prop_map(|slot| Action::ChangeIp { slot }),
        1 => (0..SLOTS, 0..NODES.len()).prop_map(|(slot, node)| Action::Move { slot, node }),
        1 => (0..SLOTS, 0..5usize).prop_map(|(slot, phase)| Action::Phase { slot, phase }),
        1 => (0..SLOTS, 0..LABELS.len()).prop_map(|(slot, label)| Action::Label { slot, label }),
        3 => (0..SLOTS, any::<bool>()).prop_map(|(slot, clear_ips)| Action::Delete { slot, clear_ips }),
        12 => (any::<usize>(), prop_oneof![6 => Just(Outcome::Ok), 2 => Just(Outcome::Transient), 1 => Just(Outcome::Http404), 1 => Just(Outcome::Timeout)])
            .prop_map(|(pick, outcome)| Action::Complete { pick, outcome }),
        1 => prop_oneof![Just(0u64), 1u64..3_000, 3_000u64..60_000, 290_000u64..400_000].prop_map(|ms| Action::Advance { ms }),
    ]
}

/// The simulated cluster and Azure.
#[derive(Default)]
struct Sim {
    pods: BTreeMap<String, Pod>,
    generation: [u32; SLOTS],
    next_ip: u32,
    pips: BTreeSet<String>,
    nats: BTreeSet<String>,
    registered: BTreeSet<String>,
    nrp: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Every (address, identity) a pod UID ever had registered in the engine.
    registered_by: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Sim {
    fn fresh_ips(&mut self, dual: bool) -> Vec<String> {
        self.next_ip += 1;
        let n = self.next_ip;
        let mut v = vec![format!("10.1.{}.{}", n / 250, n % 250 + 1)];
        if dual {
            v.push(format!("fd01::{n:x}"));
        }
        v
    }

    fn key(slot: usize) -> String {
        format!("ns/p{slot}")
    }

    fn nrp_maps(&self, addr: &str, identity: &str) -> bool {
        self.nrp.values().any(|a| a.get(addr).is_some_and(|s| s.contains(identity)))
    }

    fn nrp_has_identity(&self, identity: &str) -> bool {
        self.nrp.values().any(|a| a.values().any(|s| s.contains(identity)))
    }

    /// A pod write: stores it and returns the watch event.
    fn store(&mut self, pod: Pod) -> KubeEvent {
        let key = key_of(&pod);
        if pod.meta.deletion_timestamp.is_some() && pod.meta.finalizers.is_empty() {
            self.pods.remove(&key);
            return KubeEvent::PodDeleted(pod);
        }
        self.pods.insert(key, pod.clone());
        KubeEvent::PodApplied(pod)
    }

    fn set_node(pod: &mut Pod, node: usize, ips: Vec<String>) {
        let (name, hosts) = NODES[node];
        pod.node_name = name.into();
        let dual = hosts.len() > 1;
        let ips: Vec<String> = if dual { ips } else { ips.into_iter().take(1).collect() };
        pod.pod_ip = ips.first().cloned().unwrap_or_default();
        pod.pod_ips = ips;
        pod.host_ip = hosts[0].into();
        pod.host_ips = hosts.iter().map(|s| s.to_string()).collect();
    }
}

fn label_of(i: usize) -> Vec<(String, String)> {
    vec![(crate::names::EGRESS_LABEL.to_string(), LABELS[i].to_string())]
}

struct Run {
    h: Harness,
    sim: Sim,
    seen: usize,
    faults: bool,
}

impl Run {
    fn deliver(&mut self, ev: Option<KubeEvent>) {
        if let Some(ev) = ev {
            self.h.deliver(vec![ev]);
        }
    }

    fn pod_action(&mut self, a: &Action) {
        let ev = match *a {
            Action::Create { slot, label, node, with_ips } => {
                let key = Sim::key(slot);
                if self.sim.pods.contains_key(&key) {
                    return;
                }
                self.sim.generation[slot] += 1;
                let uid = format!("u{slot}-{}", self.sim.generation[slot]);
                let mut pod = egress_pod(&key, &uid, LABELS[label], &[], &[]);
                pod.meta.labels = label_of(label);
                let ips = if with_ips { self.sim.fresh_ips(true) } else { vec![] };
                Sim::set_node(&mut pod, node, ips);
                if !with_ips {
                    pod.phase = "Pending".into();
                }
                Some(self.sim.store(pod))
            }
            Action::ChangeIp { slot } => self.edit(slot, |sim, p| {
                let node = NODES.iter().position(|(n, _)| *n == p.node_name).unwrap_or(0);
                let ips = sim.fresh_ips(true);
                Sim::set_node(p, node, ips);
            }),
            Action::Move { slot, node } => self.edit(slot, |sim, p| {
                let ips = sim.fresh_ips(true);
                Sim::set_node(p, node, ips);
            }),
            Action::Phase { slot, phase } => {
                self.edit(slot, |_, p| p.phase = ["Running", "Pending", "Failed", "Succeeded", "Unknown"][phase].into())
            }
            Action::Label { slot, label } => self.edit(slot, |_, p| p.meta.labels = label_of(label)),
            Action::Delete { slot, clear_ips } => {
                let key = Sim::key(slot);
                let Some(mut pod) = self.sim.pods.get(&key).cloned() else { return };
                if pod.meta.deletion_timestamp.is_some() {
                    return;
                }
                pod.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
                if clear_ips {
                    pod.pod_ip.clear();
                    pod.pod_ips.clear();
                }
                Some(self.sim.store(pod))
            }
            _ => None,
        };
        self.deliver(ev);
    }

    fn edit(&mut self, slot: usize, f: impl FnOnce(&mut Sim, &mut Pod)) -> Option<KubeEvent> {
        let key = Sim::key(slot);
        let mut pod = self.sim.pods.get(&key).cloned()?;
        if pod.meta.deletion_timestamp.is_some() {
            return None;
        }
        f(&mut self.sim, &mut pod);
        Some(self.sim.store(pod))
    }

    fn kube(&mut self, call: &KubeCall, perform: bool) -> (Result<CallOutput, CallError>, Option<KubeEvent>) {
        let (target, add) = match call {
            KubeCall::AddPodFinalizer(r) => (r, true),
            KubeCall::RemovePodFinalizer(r) => (r, false),
            _ => return (Ok(CallOutput::Done), None),
        };
        let key = format!("{}/{}", target.namespace, target.name);
        let Some(mut pod) = self.sim.pods.get(&key).cloned() else {
            return if add { (Err(CallError::of_kind(ErrorKind::NotFound, "gone")), None) } else { (Ok(CallOutput::Done), None) };
        };
        if pod.meta.uid != target.uid {
            return (Err(CallError::of_kind(ErrorKind::Replaced, "uid mismatch")), None);
        }
        if !perform {
            return (Err(CallError::http(500, "", "apiserver unavailable")), None);
        }
        let has = pod.meta.finalizers.iter().any(|f| f == POD_FINALIZER);
        if add {
            if has {
                return (Ok(CallOutput::Done), None);
            }
            if pod.meta.deletion_timestamp.is_some() {
                return (Err(CallError::http(422, "Invalid", "no new finalizers on a deleting object")), None);
            }
            pod.meta.finalizers.push(POD_FINALIZER.into());
        } else {
            if !has {
                return (Ok(CallOutput::Done), None);
            }
            pod.meta.finalizers.retain(|f| f != POD_FINALIZER);
        }
        (Ok(CallOutput::Done), Some(self.sim.store(pod)))
    }

    fn cloud(&mut self, call: &CloudCall, perform: bool) -> Result<CallOutput, CallError> {
        if !perform {
            return Err(CallError::http(500, "InternalServerError", "boom"));
        }
        let sim = &mut self.sim;
        match call {
            CloudCall::PutPublicIp { name, version } => {
                sim.pips.insert(name.clone());
                Ok(CallOutput::PublicIp(PublicIpInfo {
                    name: name.clone(),
                    ip_address: Some("20.0.0.1".into()),
                    version: *version,
                    attached: false,
                }))
            }
            CloudCall::DeletePublicIp { name } => {
                sim.pips.remove(name);
                Ok(CallOutput::Done)
            }
            CloudCall::PutNatGateway(spec) => {
                sim.nats.insert(spec.name.clone());
                Ok(CallOutput::Done)
            }
            CloudCall::DeleteNatGateway { name } => {
                sim.nats.remove(name);
                Ok(CallOutput::Done)
            }
            CloudCall::GetNatGateway { name } => Ok(CallOutput::NatGateway(sim.nats.contains(name).then(|| NatGatewayInfo {
                name: name.clone(),
                references_service_gateway: true,
                raw: "{}".into(),
            }))),
            CloudCall::DetachNatGateway { .. } => Ok(CallOutput::Done),
            CloudCall::GetSgwServices => Ok(CallOutput::SgwServices(
                sim.registered
                    .iter()
                    .map(|n| SgwService {
                        name: n.clone(),
                        service_type: ServiceType::Outbound,
                        backend_pools: vec![],
                        nat_gateway: Some(n.clone()),
                        is_default: false,
                    })
                    .collect(),
            )),
            CloudCall::UpdateServices(reqs) => {
                for r in reqs {
                    if r.is_delete {
                        if sim.nrp_has_identity(&r.name) {
                            return Err(CallError::http(400, crate::workers::OVERLAY_ERROR_CODE, "mapped"));
                        }
                        sim.registered.remove(&r.name);
                    } else if matches!(r.nat_gateway, NatReference::Set(_)) {
                        sim.registered.insert(r.name.clone());
                    }
                }
                Ok(CallOutput::Done)
            }
            CloudCall::UpdateAddressLocations(locs) => {
                for l in locs {
                    if l.addresses.is_empty() {
                        sim.nrp.remove(&l.location);
                        continue;
                    }
                    if l.action == UpdateAction::FullUpdate {
                        sim.nrp.remove(&l.location);
                    }
                    let entry = sim.nrp.entry(l.location.clone()).or_default();
                    for a in &l.addresses {
                        if a.services.is_empty() {
                            entry.remove(&a.address);
                        } else {
                            entry.insert(a.address.clone(), a.services.iter().cloned().collect());
                        }
                    }
                    if entry.is_empty() {
                        sim.nrp.remove(&l.location);
                    }
                }
                Ok(CallOutput::Done)
            }
            _ => Ok(ok_output(&Call::Cloud(call.clone()))),
        }
    }

    /// Completes one outstanding call.
    fn complete(&mut self, cid: CallId, outcome: &Outcome) -> Result<(), TestCaseError> {
        let call = self.h.outstanding[&cid].clone();
        // The host cancels a call the engine gave up on (timed out): it never lands.
        let perform = (matches!(outcome, Outcome::Ok) || !self.faults) && self.h.engine.awaits(cid);
        let (res, ev) = match &call {
            Call::Kube(k) => {
                if let (KubeCall::RemovePodFinalizer(r), true) = (k, perform) {
                    self.check_release(r)?;
                }
                self.kube(k, perform)
            }
            Call::Cloud(c) => {
                let is_delete = matches!(c, CloudCall::DeletePublicIp { .. } | CloudCall::DeleteNatGateway { .. });
                match outcome {
                    Outcome::Http404 if self.faults && is_delete => {
                        let _ = self.cloud(c, true);
                        (Err(CallError::http(404, "NotFound", "gone")), None)
                    }
                    Outcome::Timeout if self.faults => (Err(CallError::of_kind(ErrorKind::Timeout, "timeout")), None),
                    _ => (self.cloud(c, perform), None),
                }
            }
        };
        self.h.complete(cid, res);
        self.deliver(ev);
        Ok(())
    }

    /// The invariants of a finalizer removal that is about to land.
    fn check_release(&self, r: &ObjectRef) -> Result<(), TestCaseError> {
        let Some(pod) = self.sim.pods.get(&format!("{}/{}", r.namespace, r.name)) else { return Ok(()) };
        if pod.meta.uid != r.uid || !pod.meta.finalizers.iter().any(|f| f == POD_FINALIZER) {
            return Ok(());
        }
        for (addr, identity) in self.sim.registered_by.get(&r.uid).into_iter().flatten() {
            prop_assert!(!self.sim.nrp_maps(addr, identity), "finalizer of {} removed while {addr} is still mapped to {identity}", r.uid);
        }
        Ok(())
    }

    /// Checks after every step.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let e = &self.h.engine;
        if let Err(msg) = e.check_invariants() {
            return Err(TestCaseError::fail(msg));
        }
        // Ref-count == live addresses per identity.
        let mut live: BTreeMap<Identity, u32> = BTreeMap::new();
        for pods in e.desired().nodes().values() {
            for (addr, p) in pods {
                if let Some(o) = &p.outbound {
                    *live.entry(o.clone()).or_default() += 1;
                    let uid = p.outbound_pod_uid.clone().unwrap_or_default();
                    self.sim.registered_by.entry(uid).or_default().insert((addr.to_string(), o.as_str().to_string()));
                }
            }
        }
        prop_assert_eq!(e.desired().ref_counts(), &live, "ref-count != live addresses");
        // Calls started since the last look.
        for (_, call) in self.h.log[self.seen..].iter() {
            let text = format!("{call:?}").to_ascii_lowercase();
            prop_assert!(!text.contains("default-natgw"), "a call names the reserved gateway: {:?}", call);
            if let Call::Kube(KubeCall::RemovePodFinalizer(r)) = call {
                let key = format!("{}/{}", r.namespace, r.name);
                if let Some(rec) = e.pod_deletion(&key).filter(|rec| rec.uid == r.uid && rec.is_last_pod) {
                    prop_assert!(
                        !self.sim.nats.contains(rec.service_uid.as_str()),
                        "last pod {} released while NAT {} exists",
                        r.uid,
                        rec.service_uid
                    );
                }
            }
        }
        self.seen = self.h.log.len();
        for m in &e.status().metrics {
            prop_assert!(m.value.is_finite() && m.value >= 0.0, "{:?}", m);
        }
        Ok(())
    }
}

fn run(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut h = Harness::new(5);
    h.deliver(NODES.iter().map(|(n, ips)| KubeEvent::NodeApplied(node(n, ips))).collect());
    let mut r = Run { h, sim: Sim::default(), seen: 0, faults: true };
    for a in &actions {
        match a {
            Action::Complete { pick, outcome } => {
                if r.h.outstanding.is_empty() {
                    r.h.tick();
                } else {
                    let cid = *r.h.outstanding.keys().nth(pick % r.h.outstanding.len()).unwrap();
                    r.complete(cid, outcome)?;
                }
            }
            Action::Advance { ms } => {
                r.h.advance(*ms);
            }
            other => {
                r.pod_action(other);
                r.h.tick();
            }
        }
        r.check()?;
    }

    // Faults stop: complete everything with success until settled.
    r.faults = false;
    for _ in 0..400 {
        r.h.tick();
        r.check()?;
        if r.h.outstanding.is_empty() {
            if r.h.engine.is_settled() {
                break;
            }
            r.h.wake();
            r.check()?;
            continue;
        }
        let cid = *r.h.outstanding.keys().next().unwrap();
        r.complete(cid, &Outcome::Ok)?;
        r.check()?;
    }
    let e = &r.h.engine;
    prop_assert!(e.is_settled(), "did not settle: {:?}", e.status());
    prop_assert!(e.full_location_diff().is_empty());

    // Oracle: what the final cluster implies.
    let mut want_nrp: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for pod in r.sim.pods.values() {
        prop_assert!(pod.meta.deletion_timestamp.is_none(), "pod {} stuck terminating with {:?}", pod.meta.uid, pod.meta.finalizers);
        let label = crate::egress::pod::egress_identity(pod);
        if label.is_empty() || check_egress_identity(&label).is_err() || !crate::egress::pod::is_valid(pod) || pod.host_ip.is_empty() {
            continue;
        }
        let locs = locations_by_family(pod);
        for addr in pod_addresses(pod) {
            if let Some(loc) = location_for(&locs, &addr) {
                want_nrp.entry(loc).or_default().entry(addr).or_default().insert(label.clone());
            }
        }
    }
    prop_assert_eq!(&r.sim.nrp, &want_nrp, "ServiceGateway address locations");
    let want_ids: BTreeSet<String> = want_nrp.values().flat_map(|a| a.values().flatten().cloned()).collect();
    prop_assert_eq!(&r.sim.nats, &want_ids, "NAT gateways");
    prop_assert_eq!(&r.sim.registered, &want_ids, "registrations");
    let want_pips: BTreeSet<String> = want_ids.iter().flat_map(|i| [format!("{i}-pip"), format!("{i}-pip-v6")]).collect();
    prop_assert_eq!(&r.sim.pips, &want_pips, "public IPs");
    for i in &want_ids {
        prop_assert_eq!(e.operation(&id(i)).map(|o| o.state), Some(ResourceState::Created));
    }
    prop_assert!(e.pod_deletions().is_empty());
    // Snapshot/restore is lossless.
    let bytes = e.snapshot();
    let restored = crate::Engine::restore(&bytes).map_err(|x| TestCaseError::fail(x.to_string()))?;
    prop_assert!(restored.snapshot() == bytes, "snapshot does not round-trip");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600),
        max_shrink_iters: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_egress_histories_keep_invariants(actions in prop::collection::vec(action(), 1..90)) {
        run(actions)?;
    }
}
