//! The engine's event intake, through its public API: a fuzzed history of a small cluster
//! (Services, EndpointSlices, Nodes and egress Pods, as Kubernetes JSON read by the host's
//! conversion), time steps, injected ARM errors and snapshot round trips, played against the
//! real engine, the simulated cluster of the replay and the in-process ARM/NRP emulator.
//!
//! Checked on every history: no panic; the engine's consistency check after every tick; a
//! snapshot restores into an engine that encodes back to the same bytes (and the history goes
//! on with the restored engine); once faults stop and time runs on, the system settles; and, unless a
//! terminal error was injected (the engine then rightly leaves that work alone until something
//! changes), the emulator holds exactly what the final cluster implies (the replay's oracle).

use arbitrary::{Arbitrary, Unstructured};
use difftracker_engine::io::{Call, CallError, CallId, Completion, ErrorKind, Io, KubeEvent, KubeEventRecord, TenantConfig};
use difftracker_engine::names::EGRESS_LABEL;
use difftracker_engine::Engine;
use difftracker_runtime::k8s::{KubeObject, WatchEventType};
use difftracker_simulation::emulator::{Emulator, EmulatorBackend, EmulatorOptions};
use difftracker_simulation::replay::cluster::Cluster;
use difftracker_simulation::replay::oracle;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Steps of one history (the rest of the input is ignored).
const MAX_STEPS: usize = 48;
/// Ticks the final settling may take before the history counts as stuck.
const SETTLE_TICKS: usize = 400;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SvcType {
    LoadBalancer,
    ClusterIp,
    NodePort,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    Service {
        slot: u8,
        generation: u8,
        kind: SvcType,
        class: bool,
        internal: bool,
        dual_stack: bool,
        ports: u8,
    },
    DeleteService {
        slot: u8,
    },
    Slice {
        slot: u8,
        service: u8,
        endpoints: Vec<(u8, u8, bool)>,
    },
    DeleteSlice {
        slot: u8,
    },
    Node {
        slot: u8,
        v6: bool,
        renumber: u8,
    },
    DeleteNode {
        slot: u8,
    },
    Pod {
        slot: u8,
        identity: u8,
        node: u8,
        v6: bool,
        running: bool,
    },
    DeletePod {
        slot: u8,
    },
    Advance {
        ms: u16,
    },
    /// The next cloud call fails with this status and changes nothing (429 and 5xx are
    /// transient; a 404 is left to the emulator, which answers it when something is absent).
    Fault {
        status: u8,
        retry_after_s: Option<u8>,
    },
    /// The engine is replaced by the one its snapshot restores.
    Swap,
}

struct World {
    engine: Engine,
    cluster: Cluster,
    emulator: Arc<Emulator>,
    baseline: Value,
    backend: EmulatorBackend,
    now: u64,
    next_id: CallId,
    due: BTreeMap<(u64, CallId), Completion>,
    fault: Option<CallError>,
    /// When the engine last asked to be woken.
    wake: Option<u64>,
    /// A terminal error (400) was injected: the engine gives up on that work until something
    /// changes (ENGINE.md 4.2, 7), as it must, so the cloud need not end as the cluster implies.
    terminal_injected: bool,
}

struct Recorder<'a> {
    next_id: &'a mut CallId,
    started: Vec<(CallId, Call)>,
    events: Vec<KubeEventRecord>,
}

impl Io for Recorder<'_> {
    fn start(&mut self, call: Call) -> CallId {
        *self.next_id += 1;
        self.started.push((*self.next_id, call));
        *self.next_id
    }
    fn record_event(&mut self, event: KubeEventRecord) {
        self.events.push(event);
    }
}

pub fn run(data: &[u8]) {
    let steps = decode(data);
    if std::env::var_os("DIFFTRACKER_FUZZ_VERBOSE").is_some() {
        eprintln!("{steps:#?}");
    }
    run_steps(&steps);
}

/// The history an input stands for.
pub fn decode(data: &[u8]) -> Vec<Step> {
    let mut u = Unstructured::new(data);
    let mut steps = Vec::new();
    while steps.len() < MAX_STEPS && !u.is_empty() {
        match Step::arbitrary(&mut u) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    steps
}

/// Plays a history and checks it (panics on a defect).
pub fn run_steps(steps: &[Step]) {
    let mut world = World::new();
    for step in steps {
        world.step(step.clone());
        world.pump();
    }
    world.settle();
}

impl World {
    fn new() -> World {
        let options = EmulatorOptions::default();
        let scope = options.scope.clone();
        let emulator = Emulator::new(options);
        let baseline = emulator.inventory();
        let backend =
            EmulatorBackend::new(emulator.clone(), scope.tenant_config("http://emulator.fuzz.invalid")).with_clock(Arc::new(|| 0));
        let mut engine = Engine::new(TenantConfig { tenant: "fuzz".into(), seed: 1, ..TenantConfig::default() });
        let mut cluster = Cluster::new();
        let mut initial = cluster.initial_lists();
        initial.push(KubeEvent::InitialListsComplete);
        engine.deliver(0, initial);
        let mut world = World {
            engine,
            cluster,
            emulator,
            baseline,
            backend,
            now: 0,
            next_id: 0,
            due: BTreeMap::new(),
            fault: None,
            wake: None,
            terminal_injected: false,
        };
        world.tick(Vec::new());
        world.pump();
        world
    }

    fn apply(&mut self, event_type: WatchEventType, object: Value) {
        match KubeObject::from_json(&object) {
            Ok(Some(object)) => self.cluster.apply(self.now, event_type, object),
            other => panic!("the fuzz history built an object the host refuses: {other:?}\n{object}"),
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Service { slot, generation, kind, class, internal, dual_stack, ports } => {
                let svc = service(slot % 3, generation % 2, kind, class, internal, dual_stack, ports);
                self.apply(WatchEventType::Modified, svc);
            }
            Step::DeleteService { slot } => {
                if let Some(svc) = self.current("Service", "default", &format!("svc-{}", slot % 3)) {
                    self.apply(WatchEventType::Deleted, svc);
                }
            }
            Step::Slice { slot, service, endpoints } => {
                let owner = self.current("Service", "default", &format!("svc-{}", service % 3));
                self.apply(WatchEventType::Modified, slice(slot % 4, service % 3, owner.as_ref(), &endpoints));
            }
            Step::DeleteSlice { slot } => {
                if let Some(s) = self.current("EndpointSlice", "default", &format!("slice-{}", slot % 4)) {
                    self.apply(WatchEventType::Deleted, s);
                }
            }
            Step::Node { slot, v6, renumber } => self.apply(WatchEventType::Modified, node(slot % 3, v6, renumber % 2)),
            Step::DeleteNode { slot } => {
                if let Some(n) = self.current("Node", "", &format!("node-{}", slot % 3)) {
                    self.apply(WatchEventType::Deleted, n);
                }
            }
            Step::Pod { slot, identity, node, v6, running } => {
                self.apply(WatchEventType::Modified, pod(slot % 6, identity % 2, node % 3, v6, running))
            }
            Step::DeletePod { slot } => {
                if let Some(p) = self.current("Pod", "default", &format!("pod-{}", slot % 6)) {
                    self.apply(WatchEventType::Deleted, p);
                }
            }
            Step::Advance { ms } => {
                self.now += u64::from(ms);
            }
            Step::Fault { status, retry_after_s } => {
                let status = [400u16, 409, 429, 500, 503][usize::from(status) % 5];
                let kind = if status == 429 { ErrorKind::Throttled } else { ErrorKind::Http };
                self.terminal_injected |= status == 400;
                self.fault = Some(CallError {
                    kind,
                    status,
                    code: format!("Fuzz{status}"),
                    message: "injected".into(),
                    retry_after_ms: retry_after_s.map(|s| u64::from(s) * 1000),
                });
            }
            Step::Swap => {
                let bytes = self.engine.snapshot();
                let restored = Engine::restore(&bytes).unwrap_or_else(|e| panic!("the engine's own snapshot is refused: {e}"));
                assert!(restored.snapshot() == bytes, "a restored engine snapshots differently");
                self.engine = restored;
            }
        }
    }

    /// The object the cluster holds under that key, as JSON (for a DELETED event).
    fn current(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.cluster
            .objects()
            .map(|(_, o)| o)
            .find(|o| o.kind() == kind && o.namespace() == namespace && o.name() == name)
            .map(KubeObject::to_json)
    }

    /// Ticks until nothing is due at `now`.
    fn pump(&mut self) {
        for _ in 0..64 {
            let events = self.cluster.take_events();
            let delivered = !events.is_empty();
            if delivered {
                self.engine.deliver(self.now, events);
            }
            let mut completions = Vec::new();
            while let Some(entry) = self.due.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                completions.push(entry.remove());
            }
            let woken = self.wake.is_some_and(|w| w <= self.now);
            if !delivered && completions.is_empty() && !woken {
                return;
            }
            self.tick(completions);
        }
    }

    fn tick(&mut self, completions: Vec<Completion>) {
        let mut io = Recorder { next_id: &mut self.next_id, started: Vec::new(), events: Vec::new() };
        self.wake = self.engine.tick(self.now, completions, &mut io).next_wake_ms;
        let Recorder { started, events, .. } = io;
        if let Err(e) = self.engine.check_invariants() {
            panic!("engine inconsistent after a tick at {} ms: {e}", self.now);
        }
        for e in events {
            self.cluster.record_event(e);
        }
        for (id, call) in started {
            let (at, outcome) = match call {
                Call::Cloud(c) => match self.fault.take() {
                    Some(error) => (self.now, Err(error)),
                    None => {
                        let decided = self.backend.perform_at(self.now, &c);
                        (self.now + decided.latency_ms, decided.outcome)
                    }
                },
                Call::Kube(k) => (self.now, self.cluster.perform(self.now, &k)),
            };
            self.due.insert((at, id), Completion { id, outcome });
        }
    }

    /// No more faults; time runs on to every wake-up until the system settles, then the
    /// emulator must hold what the cluster implies.
    fn settle(&mut self) {
        self.fault = None;
        for _ in 0..SETTLE_TICKS {
            self.pump();
            let status = self.engine.status();
            if self.due.is_empty() && !self.cluster.has_events() && status.settled && self.cluster.stuck_deleting().is_empty() {
                if self.terminal_injected {
                    return;
                }
                let inventory = self.emulator.inventory();
                let differences = oracle::check(&self.cluster, &inventory, &self.baseline);
                assert!(differences.is_empty(), "settled, but the cloud is not what the cluster implies: {differences:#?}");
                return;
            }
            let next = [self.due.keys().next().map(|k| k.0), self.wake].into_iter().flatten().min();
            match next {
                Some(t) => self.now = self.now.max(t),
                None => panic!("nothing left to happen, but not settled: {status:?}"),
            }
        }
        panic!("not settled after {SETTLE_TICKS} ticks: {:?}", self.engine.status());
    }
}

fn service(slot: u8, generation: u8, kind: SvcType, class: bool, internal: bool, dual_stack: bool, ports: u8) -> Value {
    let mut annotations = serde_json::Map::new();
    if internal {
        annotations.insert("service.beta.kubernetes.io/azure-load-balancer-internal".into(), "true".into());
    }
    let ports: Vec<Value> = (0..1 + ports % 3)
        .map(|i| json!({"name": format!("p{i}"), "port": 80 + u16::from(i), "protocol": if i == 2 { "UDP" } else { "TCP" }}))
        .collect();
    let mut spec = json!({
        "type": match kind { SvcType::LoadBalancer => "LoadBalancer", SvcType::ClusterIp => "ClusterIP", SvcType::NodePort => "NodePort" },
        "ports": ports,
        "ipFamilies": if dual_stack { json!(["IPv4", "IPv6"]) } else { json!(["IPv4"]) },
    });
    if class {
        spec["loadBalancerClass"] = "example.com/other".into();
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{slot}"), "namespace": "default", "uid": format!("00000000-0000-4000-8000-0000000000{slot}{generation}"), "annotations": annotations},
        "spec": spec,
    })
}

fn slice(slot: u8, service: u8, owner: Option<&Value>, endpoints: &[(u8, u8, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .take(8)
        .map(|&(ip, node, ready)| json!({"addresses": [format!("10.1.0.{}", ip % 16)], "conditions": {"ready": ready}, "nodeName": format!("node-{}", node % 3)}))
        .collect();
    let mut metadata = json!({"name": format!("slice-{slot}"), "namespace": "default", "uid": format!("slice-uid-{slot}"), "labels": {"kubernetes.io/service-name": format!("svc-{service}")}});
    if let Some(uid) = owner.and_then(|o| o["metadata"]["uid"].as_str()) {
        metadata["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Service", "name": format!("svc-{service}"), "uid": uid}]);
    }
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": metadata, "addressType": "IPv4", "endpoints": endpoints})
}

fn node(slot: u8, v6: bool, renumber: u8) -> Value {
    let mut addresses = vec![json!({"type": "InternalIP", "address": format!("10.224.{renumber}.{}", 4 + slot)})];
    if v6 {
        addresses.push(json!({"type": "InternalIP", "address": format!("fd00:10:224::{renumber}{}", 4 + slot)}));
    }
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{slot}"), "uid": format!("node-uid-{slot}")}, "status": {"addresses": addresses}})
}

fn pod(slot: u8, identity: u8, node: u8, v6: bool, running: bool) -> Value {
    let mut ips = vec![json!({"ip": format!("10.2.0.{}", 10 + slot)})];
    if v6 {
        ips.push(json!({"ip": format!("fd00:2::{}", 10 + slot)}));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{slot}"), "namespace": "default", "uid": format!("pod-uid-{slot}"), "labels": {EGRESS_LABEL: format!("egress-{identity}")}},
        "spec": {"nodeName": format!("node-{node}")},
        "status": {"phase": if running { "Running" } else { "Pending" }, "podIP": format!("10.2.0.{}", 10 + slot), "podIPs": ips},
    })
}
