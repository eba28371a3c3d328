//! The default command: one tenant runs the sample inbound path against the in-process mock
//! backends ([`crate::mock`]) and prints every call, completion and state change.
//!
//! A LoadBalancer Service with two ready endpoints on two nodes is created (finalizers, public IP,
//! load balancer, registration, ingress patch, then the address locations), then deleted
//! (addresses drained, load balancer detached and deleted, unregistered, public IP deleted,
//! finalizers removed). The mock inventory is printed at the end; it must be empty.

use crate::driver::{CallIds, EngineDriver, NativeEngine, WasmEngine};
use crate::executor::{call_identity, Backends, Executor, SystemClock, DEFAULT_GLOBAL_CAP};
use crate::mock::MockWorld;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::tenant::{spawn_tenant, TenantEvent, TenantOptions, TenantStatus};
use anyhow::{bail, Context, Result};
use difftracker_engine::io::{
    CallOutput, Endpoint, EndpointSlice, IntOrString, KubeEvent, Node, ObjectMeta, OwnerReference, Service,
    ServicePort, TenantConfig,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which build of the engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// The WebAssembly component in the wasmtime sandbox.
    #[default]
    Wasm,
    /// The engine crate linked into the host.
    Native,
}

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Which build of the engine runs.
    #[arg(long, value_enum, default_value_t = EngineKind::Wasm)]
    pub engine: EngineKind,
    /// An engine component to load instead of the built-in one.
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// How many LoadBalancer Services to create.
    #[arg(long, default_value_t = 1)]
    pub services: u32,
    /// Give up when a phase takes longer than this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs { engine: EngineKind::Wasm, component: None, services: 1, timeout_secs: 60 }
    }
}

// ------------------------------------------------------------------------ sample objects

pub fn sample_node(name: &str, ip: &str) -> Node {
    Node { name: name.into(), uid: format!("node-uid-{name}"), internal_ips: vec![ip.into()] }
}

/// A `type: LoadBalancer` Service with one TCP port 80 -> 8080.
pub fn sample_service(namespace: &str, name: &str, uid: &str) -> Service {
    Service {
        meta: ObjectMeta {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: "1".into(),
            ..ObjectMeta::default()
        },
        service_type: "LoadBalancer".into(),
        load_balancer_class: None,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
        }],
        ip_families: vec!["IPv4".into()],
        session_affinity: "None".into(),
        load_balancer_ip: String::new(),
        external_traffic_policy: "Cluster".into(),
        ingress: Vec::new(),
    }
}

/// The Service as the API server shows it once deletion was requested (finalizers still on).
pub fn deleting(service: &Service) -> Service {
    let mut s = service.clone();
    s.meta.deletion_timestamp = Some("2024-01-01T00:10:00Z".into());
    s.meta.finalizers =
        vec!["servicegateway.azure.com/service-cleanup".into(), "service.kubernetes.io/load-balancer-cleanup".into()];
    s.meta.resource_version = format!("{}0", s.meta.resource_version);
    s
}

/// An EndpointSlice of `service` with one ready endpoint per `(pod ip, node name)`.
pub fn sample_slice(service: &Service, endpoints: &[(&str, &str)]) -> EndpointSlice {
    EndpointSlice {
        meta: ObjectMeta {
            namespace: service.meta.namespace.clone(),
            name: format!("{}-slice", service.meta.name),
            uid: format!("{}-slice-uid", service.meta.uid),
            resource_version: "1".into(),
            labels: vec![("kubernetes.io/service-name".into(), service.meta.name.clone())],
            ..ObjectMeta::default()
        },
        owner_references: vec![OwnerReference {
            kind: "Service".into(),
            name: service.meta.name.clone(),
            uid: service.meta.uid.clone(),
        }],
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(ip, node)| Endpoint { addresses: vec![ip.to_string()], ready: Some(true), node_name: Some(node.to_string()) })
            .collect(),
    }
}

// ------------------------------------------------------------------------ the run

pub async fn run(args: DemoArgs) -> Result<()> {
    let ids = CallIds::default();
    let config = TenantConfig { tenant: "demo".into(), seed: 42 };
    let mut driver: Box<dyn EngineDriver> = match args.engine {
        EngineKind::Wasm => {
            let runtime = Runtime::new(RuntimeOptions::default())?;
            let component = match &args.component {
                Some(path) => runtime.load_file(path)?,
                None => runtime.load_builtin()?,
            };
            println!(
                "engine: component sha256 {}… ({:?}; pooling allocator {})",
                &component.sha256[..16],
                component.cache,
                if runtime.uses_pooling() { "on" } else { "off" }
            );
            Box::new(WasmEngine::new(&component, ids)?)
        }
        EngineKind::Native => Box::new(NativeEngine::new(ids)),
    };
    driver.create(&config)?;

    let world = MockWorld::new();
    let executor = Executor::new(Arc::new(SystemClock), DEFAULT_GLOBAL_CAP);
    let (observer, mut observed) = tokio::sync::mpsc::unbounded_channel();
    let tenant = spawn_tenant(
        &executor,
        TenantOptions::new("demo"),
        driver,
        Backends { cloud: world.cloud(), kube: world.kube() },
        Some(observer),
    );
    let printer = tokio::spawn(async move {
        while let Some(event) = observed.recv().await {
            println!("{}", describe(&event));
        }
    });

    let services: Vec<Service> = (1..=args.services)
        .map(|n| sample_service("default", &format!("web-{n}"), &format!("00000000-0000-4000-8000-{n:012}")))
        .collect();
    let mut events = vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::NodeApplied(sample_node("node-2", "10.0.0.5")),
    ];
    for (i, svc) in services.iter().enumerate() {
        let a = format!("10.244.1.{}", i + 10);
        let b = format!("10.244.2.{}", i + 10);
        events.push(KubeEvent::ServiceApplied(svc.clone()));
        events.push(KubeEvent::EndpointSliceApplied(sample_slice(svc, &[(&a, "node-1"), (&b, "node-2")])));
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let count = services.len() as u32;

    println!("== create {count} LoadBalancer Service(s)");
    tenant.deliver(events)?;
    let status = phase(&tenant, timeout, |s| s.is_idle() && s.state_count("created") == count).await?;
    println!("== created; inventory: {}", summary(&world));
    report(&status);

    println!("== delete them");
    tenant.deliver(services.iter().map(|s| KubeEvent::ServiceApplied(deleting(s))).collect())?;
    let status = phase(&tenant, timeout, |s| s.is_idle() && s.engine.states.iter().all(|(_, n)| *n == 0)).await?;
    tenant.deliver(services.iter().map(|s| KubeEvent::ServiceDeleted(deleting(s))).collect())?;
    report(&status);

    let mut driver = tenant.stop().await?;
    printer.abort();
    let inventory = world.inventory();
    println!("== done; inventory: {}", summary(&world));
    println!("engine snapshot: {} bytes", driver.snapshot()?.len());
    if !inventory.is_clean() {
        bail!("resources left behind: {inventory:?}");
    }
    Ok(())
}

async fn phase(
    tenant: &crate::tenant::TenantHandle,
    timeout: Duration,
    done: impl FnMut(&TenantStatus) -> bool,
) -> Result<TenantStatus> {
    match tokio::time::timeout(timeout, tenant.wait_for(done)).await {
        Ok(status) => status,
        Err(_) => {
            let status = tenant.status();
            Err(anyhow::anyhow!("no progress: {status:?}")).context(format!("phase did not finish within {timeout:?}"))
        }
    }
}

fn report(status: &TenantStatus) {
    println!("   ({} ticks; engine states {:?})", status.ticks, status.engine.states);
}

fn summary(world: &MockWorld) -> String {
    let inv = world.inventory();
    format!(
        "public IPs {:?}, load balancers {:?}, registered {:?}, locations {:?}, finalizers on {:?}",
        inv.public_ips, inv.load_balancers, inv.sgw_services, inv.locations, inv.service_finalizers
    )
}

/// One line per tenant event.
pub fn describe(event: &TenantEvent) -> String {
    match event {
        TenantEvent::CallStarted { id, call } => format!("  -> #{id:<3} {:<28} {}", call.label(), call_identity(call)),
        TenantEvent::CallCompleted { id, outcome } => match outcome {
            Ok(CallOutput::PublicIp(ip)) => {
                format!("  <- #{id:<3} ok: {} = {}", ip.name, ip.ip_address.as_deref().unwrap_or("(none)"))
            }
            Ok(CallOutput::Done) => format!("  <- #{id:<3} ok"),
            Ok(other) => format!("  <- #{id:<3} ok: {other:?}"),
            Err(e) => format!("  <- #{id:<3} failed: {e}"),
        },
        TenantEvent::EventRecorded(e) => format!("  event {:?} {} on {}: {}", e.event_type, e.reason, e.target.name, e.message),
        TenantEvent::StatesChanged(states) => {
            let states: Vec<String> = states.iter().filter(|(_, n)| *n > 0).map(|(s, n)| format!("{s}={n}")).collect();
            format!("  state: {}", if states.is_empty() { "(no operations)".to_string() } else { states.join(" ") })
        }
    }
}
