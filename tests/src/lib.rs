//! The in-host test harness: the real engine component (built by `host/runtime/build.rs` and embedded in
//! `difftracker-runtime`) in [`WasmEngine`], with scripted mock imports and virtual time.
//!
//! Every call the engine starts is answered by a [`Script`]: per call label
//! (`"PUT publicIPAddresses"`, `"add-service-finalizers"`, ... see `io::Call::label`), a queue of
//! [`Behavior`]s consumed one per call (succeed with given or default response fields, fail with an
//! HTTP status and ARM error code, stay in flight for N ticks first); when a label's queue is
//! empty the call succeeds with a default response. Time is virtual and moves only when the
//! harness says so: [`Harness::step`] ticks once at the current time, [`Harness::run_until_idle`]
//! ticks while calls are in flight and jumps straight to the engine's `next_wake_ms` otherwise.
//! Nothing sleeps.

use anyhow::{bail, Context, Result};
use difftracker_engine::io::{
    AddressLocation, Call, CallError, CallId, CallOutput, CloudCall, Completion, EngineStatus, ErrorKind, InitPhase, KubeEvent,
    KubeEventRecord, PublicIpInfo, TenantConfig, TickOutcome,
};
use difftracker_runtime::driver::{restore_into, CallIds, EngineDriver, NativeEngine, WasmEngine};
use difftracker_runtime::wasm::{EngineComponent, Runtime, RuntimeOptions};
use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;

pub use difftracker_simulation::samples::{deleting, sample_node, sample_service, sample_slice};

/// Call labels, as `io::Call::label` spells them.
pub mod label {
    pub const ADD_FINALIZERS: &str = "add-service-finalizers";
    pub const REMOVE_FINALIZERS: &str = "remove-service-finalizers";
    pub const PATCH_INGRESS: &str = "patch-service-ingress";
    pub const PUT_PIP: &str = "PUT publicIPAddresses";
    pub const DELETE_PIP: &str = "DELETE publicIPAddresses";
    pub const PUT_LB: &str = "PUT loadBalancers";
    pub const DELETE_LB: &str = "DELETE loadBalancers";
    pub const UPDATE_SERVICES: &str = "POST updateServices";
    pub const UPDATE_LOCATIONS: &str = "POST updateAddressLocations";
}

/// The process's runtime, created once per test binary. Compiled components are cached next to
/// the built `.wasm` (under the build's target directory).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(RuntimeOptions { cache_dir: Some(test_cache_dir()), ..RuntimeOptions::default() }).expect("wasmtime runtime")
    })
}

/// The built-in component (WIT 0.3.0), loaded once per test binary.
pub fn component() -> &'static EngineComponent {
    static COMPONENT: OnceLock<EngineComponent> = OnceLock::new();
    COMPONENT.get_or_init(|| runtime().load_builtin().expect("the built-in engine component loads"))
}

/// The same engine built for WIT 0.2.0 (`difftracker_simulation::ENGINE_V0_2_WASM`), loaded
/// once per test binary in the same runtime.
pub fn component_v0_2() -> &'static EngineComponent {
    static COMPONENT: OnceLock<EngineComponent> = OnceLock::new();
    COMPONENT.get_or_init(|| runtime().load(difftracker_simulation::ENGINE_V0_2_WASM).expect("the 0.2.0 engine component loads"))
}

/// A fresh instance of `component`, created with [`tenant_config`], that has received nothing.
pub fn created_instance(component: &EngineComponent, ids: CallIds) -> Box<dyn EngineDriver> {
    let mut engine = WasmEngine::new(component, ids).expect("instantiate the engine component");
    engine.create(&tenant_config()).expect("create");
    Box::new(engine)
}

/// `<target>/engine-wasm/component-cache`.
pub fn test_cache_dir() -> std::path::PathBuf {
    let wasm = difftracker_runtime::engine_wasm_path();
    wasm.ancestors().nth(3).unwrap_or_else(|| std::path::Path::new(".")).join("component-cache")
}

///
/// With upstream's timing (no ServiceGateway POST interval): these tests drive the clock call by
/// call; the interval has its own scenarios (159, 160).
pub fn tenant_config() -> TenantConfig {
    TenantConfig { tenant: "test-tenant".into(), seed: 1234, sgw_post_interval_ms: Some(0), ..TenantConfig::default() }
}

/// A fresh, created engine component instance whose initial lists were empty: it has received
/// `InitialListsComplete` and starts up (lists the cloud) on its first tick.
pub fn wasm_engine(ids: CallIds) -> Box<dyn EngineDriver> {
    let mut engine = wasm_engine_created(ids);
    engine.deliver(0, vec![KubeEvent::InitialListsComplete]).expect("deliver the marker");
    engine
}

/// A fresh, created engine component instance that has received nothing yet.
pub fn wasm_engine_created(ids: CallIds) -> Box<dyn EngineDriver> {
    created_instance(component(), ids)
}

/// The native counterpart of [`wasm_engine`].
pub fn native_engine(ids: CallIds) -> Box<dyn EngineDriver> {
    let mut engine = native_engine_created(ids);
    engine.deliver(0, vec![KubeEvent::InitialListsComplete]).expect("deliver the marker");
    engine
}

/// The native counterpart of [`wasm_engine_created`].
pub fn native_engine_created(ids: CallIds) -> Box<dyn EngineDriver> {
    let mut engine = NativeEngine::new(ids);
    engine.create(&tenant_config()).expect("create");
    Box::new(engine)
}

// ------------------------------------------------------------------------ scripted imports

/// How the mock answers one call.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Succeed with the default response for the call.
    Succeed,
    /// Succeed with these response fields.
    Respond(CallOutput),
    /// Fail with this error.
    Fail(CallError),
    /// Stay in flight for this many ticks, then behave as the inner behaviour.
    Hold(u32, Box<Behavior>),
}

impl Behavior {
    /// An ARM error answer: HTTP `status` with error code `code`.
    pub fn http(status: u16, code: &str) -> Behavior {
        Behavior::Fail(CallError::http(status, code, &format!("scripted {status} {code}")))
    }
}

/// Per call label, the behaviours of the next calls.
#[derive(Clone, Debug, Default)]
pub struct Script {
    queues: BTreeMap<String, VecDeque<Behavior>>,
}

impl Script {
    /// Queues `behavior` for the next call labelled `label`.
    pub fn then(&mut self, label: &str, behavior: Behavior) -> &mut Self {
        self.queues.entry(label.to_string()).or_default().push_back(behavior);
        self
    }

    /// The next `times` calls labelled `label` fail with `status`/`code`.
    pub fn fail(&mut self, label: &str, times: usize, status: u16, code: &str) -> &mut Self {
        for _ in 0..times {
            self.then(label, Behavior::http(status, code));
        }
        self
    }

    /// The next call labelled `label` stays in flight for `ticks` ticks, then succeeds.
    pub fn hold(&mut self, label: &str, ticks: u32) -> &mut Self {
        self.then(label, Behavior::Hold(ticks, Box::new(Behavior::Succeed)))
    }

    fn next(&mut self, label: &str) -> Behavior {
        self.queues.get_mut(label).and_then(VecDeque::pop_front).unwrap_or(Behavior::Succeed)
    }
}

/// The default response of a successful call.
pub fn default_output(call: &Call) -> CallOutput {
    match call {
        Call::Cloud(CloudCall::PutPublicIp { name, version }) => CallOutput::PublicIp(PublicIpInfo {
            name: name.clone(),
            ip_address: Some(allocated_ip(name)),
            version: *version,
            attached: false,
        }),
        Call::Cloud(CloudCall::ListPublicIps) => CallOutput::PublicIps(Vec::new()),
        Call::Cloud(CloudCall::ListLoadBalancers) | Call::Cloud(CloudCall::ListNatGateways) => CallOutput::Names(Vec::new()),
        Call::Cloud(CloudCall::GetNatGateway { .. }) => CallOutput::NatGateway(None),
        Call::Cloud(CloudCall::GetSgwServices) => CallOutput::SgwServices(Vec::new()),
        Call::Cloud(CloudCall::GetAddressLocations) => CallOutput::AddressLocations(Vec::<AddressLocation>::new()),
        _ => CallOutput::Done,
    }
}

/// The address the mock allocates to a public IP: a pure function of its name.
pub fn allocated_ip(name: &str) -> String {
    let h = name.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    format!("20.{}.{}.{}", (h >> 16) % 256, (h >> 8) % 256, h % 250 + 1)
}

// ------------------------------------------------------------------------ the harness

/// A call the engine started, as the harness saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Started {
    /// The harness tick (1-based) that started it.
    pub tick: u64,
    pub at_ms: u64,
    pub id: CallId,
    pub call: Call,
}

/// A completion the harness handed back.
#[derive(Clone, Debug, PartialEq)]
pub struct Completed {
    pub tick: u64,
    pub id: CallId,
    pub label: &'static str,
    pub ok: bool,
}

#[derive(Debug)]
struct InFlight {
    id: CallId,
    label: &'static str,
    /// Ticks to wait before completing.
    hold: u32,
    outcome: Result<CallOutput, CallError>,
}

/// One tenant's engine driven synchronously in virtual time.
pub struct Harness {
    pub engine: Box<dyn EngineDriver>,
    pub script: Script,
    pub now_ms: u64,
    pub ticks: u64,
    /// Every call started, in order.
    pub started: Vec<Started>,
    /// Every completion delivered, in order.
    pub completed: Vec<Completed>,
    /// Kubernetes Events recorded.
    pub events: Vec<KubeEventRecord>,
    /// The engine's status after every tick.
    pub statuses: Vec<EngineStatus>,
    pub last_outcome: TickOutcome,
    in_flight: Vec<InFlight>,
}

impl Harness {
    /// The real component at virtual time 1 000 000 ms, started up against an empty cloud and
    /// an empty cluster (its list calls answered by the defaults). The record starts after the
    /// start-up: `started`, `completed`, `events`, `statuses` and `ticks` only hold what follows.
    pub fn wasm() -> Harness {
        Harness::initialized(Harness::with_engine(wasm_engine(CallIds::default())))
    }

    /// The engine crate linked natively, same setup.
    pub fn native() -> Harness {
        Harness::initialized(Harness::with_engine(native_engine(CallIds::default())))
    }

    /// The real component, created and nothing else: a start-up test delivers the initial lists
    /// and the marker itself (see [`Harness::start`]).
    pub fn wasm_starting() -> Harness {
        Harness::with_engine(wasm_engine_created(CallIds::default()))
    }

    /// The native counterpart of [`Harness::wasm_starting`].
    pub fn native_starting() -> Harness {
        Harness::with_engine(native_engine_created(CallIds::default()))
    }

    /// Delivers `initial` (the initial lists) and the marker.
    pub fn start(&mut self, mut initial: Vec<KubeEvent>) -> Result<()> {
        initial.push(KubeEvent::InitialListsComplete);
        self.deliver(initial)
    }

    /// Runs the start-up pass of `h` (empty lists) to the end, then forgets what it did.
    pub fn initialized(mut h: Harness) -> Harness {
        h.run_until(20, |h| h.statuses.last().is_some_and(|s| s.initialization.phase == InitPhase::Ready)).expect("the engine initializes");
        h.started.clear();
        h.completed.clear();
        h.events.clear();
        h.statuses.clear();
        h.ticks = 0;
        h
    }

    pub fn with_engine(engine: Box<dyn EngineDriver>) -> Harness {
        Harness {
            engine,
            script: Script::default(),
            now_ms: 1_000_000,
            ticks: 0,
            started: Vec::new(),
            completed: Vec::new(),
            events: Vec::new(),
            statuses: Vec::new(),
            last_outcome: TickOutcome::default(),
            in_flight: Vec::new(),
        }
    }

    pub fn deliver(&mut self, events: Vec<KubeEvent>) -> Result<()> {
        self.engine.deliver(self.now_ms, events)
    }

    /// One tick at the current time: completes every in-flight call whose hold is over, then
    /// answers the calls the tick started according to the script.
    pub fn step(&mut self) -> Result<()> {
        let mut completions = Vec::new();
        let mut still = Vec::new();
        for mut call in self.in_flight.drain(..) {
            if call.hold == 0 {
                completions.push((call.label, Completion { id: call.id, outcome: call.outcome }));
            } else {
                call.hold -= 1;
                still.push(call);
            }
        }
        self.in_flight = still;
        self.ticks += 1;
        for (label, c) in &completions {
            self.completed.push(Completed { tick: self.ticks, id: c.id, label, ok: c.outcome.is_ok() });
        }
        let result = self.engine.tick(self.now_ms, completions.into_iter().map(|(_, c)| c).collect())?;
        for (id, call) in result.started {
            let label = call.label();
            let (hold, outcome) = self.answer(&call);
            self.in_flight.push(InFlight { id, label, hold, outcome });
            self.started.push(Started { tick: self.ticks, at_ms: self.now_ms, id, call });
        }
        self.events.extend(result.events);
        self.last_outcome = result.outcome;
        let status = self.engine.status()?;
        self.statuses.push(status);
        Ok(())
    }

    fn answer(&mut self, call: &Call) -> (u32, Result<CallOutput, CallError>) {
        let mut hold = 0;
        let mut behavior = self.script.next(call.label());
        loop {
            match behavior {
                Behavior::Succeed => return (hold, Ok(default_output(call))),
                Behavior::Respond(output) => return (hold, Ok(output)),
                Behavior::Fail(error) => return (hold, Err(error)),
                Behavior::Hold(ticks, inner) => {
                    hold += ticks;
                    behavior = *inner;
                }
            }
        }
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// Calls started and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Ticks until nothing is in flight and the engine asks for no wake-up, jumping virtual time
    /// to each `next_wake_ms`. Fails after `max_ticks`.
    pub fn run_until_idle(&mut self, max_ticks: u64) -> Result<()> {
        self.run_until(max_ticks, |_| false)
    }

    /// Like [`Harness::run_until_idle`], but also stops (successfully) as soon as `stop` holds
    /// after a tick.
    pub fn run_until(&mut self, max_ticks: u64, mut stop: impl FnMut(&Harness) -> bool) -> Result<()> {
        let limit = self.ticks + max_ticks;
        self.step()?;
        loop {
            if stop(self) {
                return Ok(());
            }
            if self.ticks >= limit {
                bail!(
                    "not idle after {max_ticks} ticks: {} call(s) in flight, next wake {:?}, status {:?}",
                    self.in_flight.len(),
                    self.last_outcome.next_wake_ms,
                    self.statuses.last()
                );
            }
            if self.in_flight.is_empty() {
                match self.last_outcome.next_wake_ms {
                    Some(at) => self.now_ms = self.now_ms.max(at),
                    None => return Ok(()),
                }
            }
            self.step()?;
        }
    }

    /// Snapshot, then restore into a fresh component instance sharing the call-id counter; calls
    /// in flight stay in flight and complete into the new instance.
    pub fn swap_to_fresh_instance(&mut self) -> Result<()> {
        let fresh: Box<dyn EngineDriver> =
            Box::new(WasmEngine::new(component(), self.engine.call_ids().clone()).context("fresh instance")?);
        self.engine = restore_into(self.engine.as_mut(), fresh)?;
        Ok(())
    }

    /// Labels of the started calls, in order.
    pub fn labels(&self) -> Vec<&'static str> {
        self.started.iter().map(|s| s.call.label()).collect()
    }

    /// The started calls with this label.
    pub fn calls(&self, label: &str) -> Vec<&Started> {
        self.started.iter().filter(|s| s.call.label() == label).collect()
    }

    /// Index in [`Harness::started`] of the first call with this label.
    pub fn first(&self, label: &str) -> Option<usize> {
        self.started.iter().position(|s| s.call.label() == label)
    }

    /// Index of the first call with this label that succeeded.
    pub fn first_success(&self, label: &str) -> Option<usize> {
        let ok_ids: Vec<CallId> = self.completed.iter().filter(|c| c.ok && c.label == label).map(|c| c.id).collect();
        self.started.iter().position(|s| ok_ids.contains(&s.id))
    }

    pub fn status(&mut self) -> Result<EngineStatus> {
        self.engine.status()
    }

    /// Operations per state label in the latest status.
    pub fn state_count(&self, state: &str) -> u32 {
        self.statuses.last().and_then(|s| s.states.iter().find(|(name, _)| name == state)).map(|(_, n)| *n).unwrap_or(0)
    }
}

/// An error answer with a `Retry-After`, for throttling scripts.
pub fn throttled(retry_after_ms: u64) -> Behavior {
    Behavior::Fail(CallError {
        kind: ErrorKind::Throttled,
        status: 429,
        code: "TooManyRequests".into(),
        message: "scripted throttling".into(),
        retry_after_ms: Some(retry_after_ms),
    })
}

/// Objects written straight into an in-repo API server's store, as the cluster's other writers
/// would make them (the controller and `serve` tests seed their clusters with these).
pub mod cluster {
    use difftracker_simulation::apiserver::{ApiServer, Kind};
    use serde_json::{json, Value};

    pub fn create(store: &ApiServer, kind: Kind, namespace: &str, object: Value) -> Value {
        store.write(|s| s.create(kind, namespace, object)).expect("create")
    }

    /// A Node with one internal IP.
    pub fn seed_node(store: &ApiServer, name: &str, ip: &str) {
        create(
            store,
            Kind::Node,
            "",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
    }

    /// A LoadBalancer Service `default/<name>` with one ready endpoint `pod_ip` on node `n1`;
    /// returns its UID.
    pub fn seed_service(store: &ApiServer, name: &str, pod_ip: &str) -> String {
        let svc = create(
            store,
            Kind::Service,
            "default",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                   "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}}),
        );
        let uid = svc["metadata"]["uid"].as_str().unwrap().to_string();
        create(
            store,
            Kind::EndpointSlice,
            "default",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("{name}-abc"), "namespace": "default",
                                "labels": {"kubernetes.io/service-name": name},
                                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": uid}]},
                   "addressType": "IPv4", "endpoints": [{"addresses": [pod_ip], "nodeName": "n1", "conditions": {"ready": true}}]}),
        );
        uid
    }
}
