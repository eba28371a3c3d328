//! The default command: one tenant runs the sample inbound path against the in-process mock
//! backends ([`crate::mock`]) and prints every call, completion and state change.
//!
//! The engine starts up first (it lists the empty mock cloud, receives two nodes as its initial
//! lists and the marker that they are complete). A LoadBalancer Service with two ready endpoints on two nodes is created (finalizers, public IP,
//! load balancer, registration, ingress patch, then the address locations), then deleted
//! (addresses drained, load balancer detached and deleted, unregistered, public IP deleted,
//! finalizers removed). The mock inventory is printed at the end; it must be empty.

use crate::mock::MockWorld;
use crate::samples::{deleting, sample_node, sample_service, sample_slice};
use anyhow::{bail, Context, Result};
use difftracker_engine::io::{CallOutput, KubeEvent, Service, TenantConfig};
use difftracker_runtime::driver::{CallIds, EngineDriver, EngineKind, NativeEngine, WasmEngine};
use difftracker_runtime::executor::{call_identity, Backends, Executor, SystemClock, DEFAULT_GLOBAL_CAP};
use difftracker_runtime::tenant::{spawn_tenant, TenantEvent, TenantOptions, TenantStatus};
use difftracker_runtime::wasm::{Runtime, RuntimeOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Which build of the engine runs.
    pub engine: EngineKind,
    /// An engine component to load instead of the built-in one.
    pub component: Option<PathBuf>,
    /// How many LoadBalancer Services to create.
    pub services: u32,
    /// Give up when a phase takes longer than this.
    pub timeout: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { engine: EngineKind::Wasm, component: None, services: 1, timeout: Duration::from_secs(60) }
    }
}

// ------------------------------------------------------------------------ the run

pub async fn run(args: DemoOptions) -> Result<()> {
    let ids = CallIds::default();
    let config = TenantConfig { tenant: "demo".into(), seed: 42, ..TenantConfig::default() };
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
    let tenant =
        spawn_tenant(&executor, TenantOptions::new("demo"), driver, Backends { cloud: world.cloud(), kube: world.kube() }, Some(observer));
    let printer = tokio::spawn(async move {
        while let Some(event) = observed.recv().await {
            println!("{}", describe(&event));
        }
    });

    let services: Vec<Service> =
        (1..=args.services).map(|n| sample_service("default", &format!("web-{n}"), &format!("00000000-0000-4000-8000-{n:012}"))).collect();
    // The initial lists: two nodes, then the marker (the engine lists the cloud itself).
    println!("== start up");
    tenant.deliver(vec![
        KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
        KubeEvent::NodeApplied(sample_node("node-2", "10.0.0.5")),
        KubeEvent::InitialListsComplete,
    ])?;
    let status = phase(&tenant, args.timeout, |s| s.is_idle()).await?;
    report(&status);
    let mut events = Vec::new();
    for (i, svc) in services.iter().enumerate() {
        let a = format!("10.244.1.{}", i + 10);
        let b = format!("10.244.2.{}", i + 10);
        events.push(KubeEvent::ServiceApplied(svc.clone()));
        events.push(KubeEvent::EndpointSliceApplied(sample_slice(svc, &[(&a, "node-1"), (&b, "node-2")])));
    }
    let timeout = args.timeout;
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
    tenant: &difftracker_runtime::tenant::TenantHandle,
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
