//! End to end: the engine component (`.wasm`) in the host's tenant loop, its cloud calls performed
//! by the ARM transport over real HTTP against the emulator on loopback, Kubernetes mocked.
//! Inbound services are created, updated and deleted in both LRO modes, and converge through
//! throttling, server errors, failed operations and the overlay-mappings rejection.

mod emulator_support;

use difftracker_engine::io::*;
use difftracker_runtime::driver::CallIds;
use difftracker_runtime::executor::{Backends, Executor, SystemClock, DEFAULT_GLOBAL_CAP};
use difftracker_runtime::tenant::{spawn_tenant, TenantEvent, TenantHandle, TenantOptions};
use difftracker_runtime::transport::{ArmTransport, TransportOptions};
use difftracker_simulation::emulator::{
    codes, EmulatorHandle, EmulatorOptions, FaultPlan, LroMode, PollHeaders, PollingOptions, DEFAULT_NATGW, DEFAULT_NATGW_PIP,
};
use difftracker_simulation::mock::MockWorld;
use difftracker_tests::{deleting, sample_node, sample_service, sample_slice};
use emulator_support::raw_http;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const UID: &str = "6f1c2a9e-0000-4000-8000-00000000e2e1";
/// Bound of each wait; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(90);

struct World {
    emulator: EmulatorHandle,
    tenant: TenantHandle,
    kube: MockWorld,
    observed: Arc<Mutex<Vec<TenantEvent>>>,
}

impl World {
    async fn start(options: EmulatorOptions, transport: TransportOptions) -> World {
        // The component is compiled (or loaded from cache) before the emulator starts.
        let engine = difftracker_tests::wasm_engine(CallIds::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let emulator = difftracker_simulation::emulator::serve(listener, options).await.expect("emulator");
        let cloud = ArmTransport::unauthenticated(emulator.tenant_config(), transport).expect("transport");
        let kube = MockWorld::new();
        let executor = Executor::new(Arc::new(SystemClock), DEFAULT_GLOBAL_CAP);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let observed = Arc::new(Mutex::new(Vec::new()));
        let sink = observed.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                sink.lock().unwrap().push(e);
            }
        });
        let tenant =
            spawn_tenant(&executor, TenantOptions::new("e2e"), engine, Backends { cloud: Arc::new(cloud), kube: kube.kube() }, Some(tx));
        World { emulator, tenant, kube, observed }
    }

    fn inventory(&self) -> Value {
        self.emulator.inventory()
    }

    /// Failed cloud completions seen so far.
    fn failures(&self) -> Vec<CallError> {
        self.observed
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                TenantEvent::CallCompleted { outcome: Err(err), .. } => Some(err.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until `done` holds, checking every few milliseconds; fails after [`PATIENCE`].
    async fn eventually(&self, what: &str, mut done: impl FnMut(&World) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.tenant.status().error {
                panic!("tenant failed while waiting for {what}: {e}");
            }
            if done(self) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{what}: not reached; inventory {}, tenant {:?}, failures {:?}",
                    self.inventory(),
                    self.tenant.status(),
                    self.failures()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn lb_rule_ports(&self) -> Vec<u64> {
        let path = format!("{}/loadBalancers/{UID}?api-version=2025-05-01", self.emulator.emulator().options().scope.provider_path());
        let (status, _, body) = raw_http(self.emulator.addr(), "GET", &path, None).await;
        if status != 200 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut ports: Vec<u64> = v["properties"]["loadBalancingRules"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x["properties"]["frontendPort"].as_u64()).collect())
            .unwrap_or_default();
        ports.sort();
        ports
    }
}

fn service() -> Service {
    sample_service("default", "web", UID)
}

fn cluster_events(svc: &Service) -> Vec<KubeEvent> {
    vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::NodeApplied(sample_node("node-2", "10.0.0.5")),
        KubeEvent::ServiceApplied(svc.clone()),
        KubeEvent::EndpointSliceApplied(sample_slice(svc, &[("10.244.1.7", "node-1"), ("10.244.2.9", "node-2")])),
    ]
}

fn created(w: &World) -> bool {
    let inv = w.inventory();
    let s = w.tenant.status();
    s.is_idle()
        && s.state_count("created") == 1
        && inv["sgw_services"][UID] == "Inbound"
        && inv["address_locations"] == json!({"10.0.0.4": {"10.244.1.7": [UID]}, "10.0.0.5": {"10.244.2.9": [UID]}})
}

fn only_default_left(w: &World) -> bool {
    let inv = w.inventory();
    w.tenant.status().is_idle()
        && inv["load_balancers"] == json!([])
        && inv["address_locations"] == json!({})
        && inv["sgw_services"] == json!({ DEFAULT_NATGW: "Outbound" })
        && inv["nat_gateways"] == json!([DEFAULT_NATGW])
        && inv["public_ips"].as_object().is_some_and(|m| m.len() == 1 && m.contains_key(DEFAULT_NATGW_PIP))
        && !w.kube.inventory().service_finalizers.contains(UID)
}

async fn create(w: &World) {
    let svc = service();
    w.tenant.deliver(cluster_events(&svc)).unwrap();
    w.eventually("service created", created).await;
    let inv = w.inventory();
    let ip = inv["public_ips"][format!("{UID}-pip")].as_str().expect("the service's public IP").to_string();
    assert_eq!(inv["load_balancers"], json!([UID]));
    let k = w.kube.inventory();
    assert!(k.service_finalizers.contains(UID));
    assert_eq!(k.ingress.get(UID).map(|i| i[0].ip.clone()), Some(ip), "the emulator's address is the ingress IP");
}

async fn update(w: &World) {
    let mut svc = service();
    svc.meta.resource_version = "2".into();
    svc.ports.push(ServicePort { name: "https".into(), protocol: "TCP".into(), port: 443, target_port: Some(IntOrString::Int(8443)) });
    w.tenant.deliver(vec![KubeEvent::ServiceApplied(svc)]).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if w.lb_rule_ports().await == vec![80, 443] && w.tenant.status().is_idle() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "LB not updated: {:?}", w.lb_rule_ports().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(created(w));
}

async fn delete(w: &World) {
    w.tenant.deliver(vec![KubeEvent::ServiceApplied(deleting(&service()))]).unwrap();
    w.eventually("service deleted, only default-natgw left", only_default_left).await;
    w.tenant.deliver(vec![KubeEvent::ServiceDeleted(deleting(&service()))]).unwrap();
}

fn polling(headers: PollHeaders) -> EmulatorOptions {
    EmulatorOptions { lro: LroMode::Polling(PollingOptions { in_progress_polls: 1, headers, ..Default::default() }), ..Default::default() }
}

async fn lifecycle(options: EmulatorOptions) {
    let w = World::start(options, TransportOptions::fast_for_tests()).await;
    create(&w).await;
    update(&w).await;
    delete(&w).await;
    assert!(w.failures().is_empty(), "no call failed: {:?}", w.failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_synchronous() {
    lifecycle(EmulatorOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_polling() {
    lifecycle(polling(PollHeaders::Both)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_polling_location_only() {
    lifecycle(polling(PollHeaders::Location)).await;
}

fn faults(text: &str) -> Option<FaultPlan> {
    Some(FaultPlan::parse(text).expect("fault plan"))
}

/// Runs create then delete with `plan` injected until the engine has seen a failure matching
/// `seen`; then the faults stop and everything must converge.
async fn converges_through(options: EmulatorOptions, transport: TransportOptions, seen: impl Fn(&CallError) -> bool) -> Vec<CallError> {
    let w = World::start(options, transport).await;
    let svc = service();
    w.tenant.deliver(cluster_events(&svc)).unwrap();
    w.eventually("the injected failure reached the engine", |w| w.failures().iter().any(&seen)).await;
    w.emulator.emulator().set_faults(None);
    w.eventually("service created after the faults stopped", created).await;
    delete(&w).await;
    w.failures()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_with_retry_after_then_success() {
    let mut t = TransportOptions::fast_for_tests();
    // One transport-level retry (after the 1 s Retry-After), then the engine's own backoff.
    t.max_retries = 1;
    let options = EmulatorOptions {
        faults: faults(r#"{"seed": 1, "rules": [{"call": "POST updateServices", "status": 429, "retry_after_s": 1}]}"#),
        ..Default::default()
    };
    let failures = converges_through(options, t, |e| e.kind == ErrorKind::Throttled).await;
    let e = failures.iter().find(|e| e.kind == ErrorKind::Throttled).unwrap();
    assert_eq!((e.status, e.code.as_str(), e.retry_after_ms), (429, "TooManyRequests", Some(1000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_success() {
    let options = EmulatorOptions {
        faults: faults(r#"{"seed": 1, "rules": [{"call": "PUT loadBalancers", "status": 500, "code": "InternalServerError"}]}"#),
        ..Default::default()
    };
    let failures = converges_through(options, TransportOptions::fast_for_tests(), |e| e.status == 500).await;
    assert!(failures.iter().any(|e| e.kind == ErrorKind::Http && e.code == "InternalServerError"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lro_that_ends_failed_then_success() {
    let options = EmulatorOptions {
        faults: faults(r#"{"seed": 1, "rules": [{"call": "PUT publicIPAddresses", "lro_fail": true, "code": "InternalServerError"}]}"#),
        ..polling(PollHeaders::Both)
    };
    let failures = converges_through(options, TransportOptions::fast_for_tests(), |e| e.kind == ErrorKind::OperationFailed).await;
    assert!(failures.iter().any(|e| e.kind == ErrorKind::OperationFailed && e.code == "InternalServerError"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_mappings_rejection_during_delete_is_re_drained() {
    let w = World::start(EmulatorOptions { overlay_lag: 1, ..Default::default() }, TransportOptions::fast_for_tests()).await;
    create(&w).await;
    delete(&w).await;
    let overlay: Vec<CallError> = w.failures().into_iter().filter(|e| e.code == codes::OVERLAY_MAPPINGS).collect();
    assert_eq!(overlay.len(), 1, "the first unregistration was rejected once: {:?}", w.failures());
    assert_eq!(overlay[0].status, 400);
}
