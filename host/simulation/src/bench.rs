//! `difftracker bench-engine`: the engine-only lifecycle benchmark of `docs/PEER-BENCH.md`
//! (phases add → create-complete → endpoints → location syncs → churn → delete → drain →
//! delete-complete), run through the same [`EngineDriver`] the host uses, so the native engine and
//! the component in wasmtime are measured doing identical work. Every call the engine starts is
//! answered at once by a trivial responder: what is timed is the engine, not a backend.

use crate::samples::{sample_node, sample_service, sample_slice};
use anyhow::{bail, Result};
use difftracker_engine::io::{Call, CallOutput, CloudCall, Completion, KubeEvent, PublicIpInfo, Service, TenantConfig};
use difftracker_runtime::driver::{CallIds, EngineDriver, EngineKind, WasmEngine};
use difftracker_runtime::wasm::{Runtime, SandboxLimits};
use std::time::{Duration, Instant};

pub(crate) const ENDPOINTS_PER_SERVICE: usize = 10;
const PODS_PER_NODE: usize = 100;

/// One measured phase.
pub struct Phase {
    pub name: &'static str,
    pub elapsed: Duration,
    /// What the time is divided by (services, or single events).
    pub per: usize,
}

impl Phase {
    pub fn ns_per_item(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.per.max(1) as f64
    }
}

/// A measured lifecycle.
pub struct Lifecycle {
    pub phases: Vec<Phase>,
    /// The wasm engine's linear memory once every Service is created with its endpoints
    /// published (after `locsync-initial`): what the instance holds for a steady cluster, the
    /// high-water mark of everything before included (a linear memory never shrinks).
    pub steady_guest_memory_bytes: Option<u64>,
}

/// Measures and prints the lifecycle of `services` Services plus `single_events` single endpoint
/// updates (`difftracker bench-engine`).
pub fn run_bench(engine: EngineKind, services: usize, single_events: usize, on_phase: PhaseHook<'_>) -> Result<()> {
    let Lifecycle { phases, steady_guest_memory_bytes } = measure_with(engine, services, single_events, on_phase)?;
    println!("engine: {:?}, services: {services}, endpoints/service: {ENDPOINTS_PER_SERVICE}", engine);
    println!("| phase | total | per item |");
    println!("|---|---|---|");
    let mut total = Duration::ZERO;
    for p in &phases {
        if p.name != "single-endpoint-update" {
            total += p.elapsed;
        }
        println!("| {} | {:.1} ms | {:.0} ns |", p.name, p.elapsed.as_secs_f64() * 1e3, p.ns_per_item());
    }
    println!("| whole lifecycle | {:.3} s | |", total.as_secs_f64());
    if let Some(bytes) = steady_guest_memory_bytes {
        println!();
        println!(
            "guest linear memory, {services} Services steady: {:.1} MiB, {:.0} bytes per Service",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / services.max(1) as f64
        );
    }
    Ok(())
}

/// The answer a cooperative cloud and cluster would give.
pub(crate) fn respond(id: u64, call: &Call) -> Completion {
    let output = match call {
        Call::Cloud(CloudCall::PutPublicIp { name, version }) => CallOutput::PublicIp(PublicIpInfo {
            name: name.clone(),
            ip_address: Some(format!("20.{}.{}.{}", (id >> 16) & 0xff, (id >> 8) & 0xff, id & 0xff)),
            version: *version,
            attached: false,
        }),
        Call::Cloud(CloudCall::GetNatGateway { .. }) => CallOutput::NatGateway(None),
        // The start-up lists of an empty cloud.
        Call::Cloud(CloudCall::GetSgwServices) => CallOutput::SgwServices(Vec::new()),
        Call::Cloud(CloudCall::GetAddressLocations) => CallOutput::AddressLocations(Vec::new()),
        Call::Cloud(CloudCall::ListLoadBalancers | CloudCall::ListNatGateways) => CallOutput::Names(Vec::new()),
        Call::Cloud(CloudCall::ListPublicIps) => CallOutput::PublicIps(Vec::new()),
        _ => CallOutput::Done,
    };
    Completion { id, outcome: Ok(output) }
}

/// Ticks, answering every started call, until the engine has nothing in flight.
pub(crate) fn settle(engine: &mut dyn EngineDriver, now: &mut u64) -> Result<()> {
    let mut completions = Vec::new();
    // Whether the previous tick started nothing either.
    let mut idle = false;
    for _ in 0..1_000_000 {
        let result = engine.tick(*now, std::mem::take(&mut completions))?;
        completions = result.started.iter().map(|(id, call)| respond(*id, call)).collect();
        if completions.is_empty() {
            // A paced POST waits for its interval: jump there (virtual time costs nothing). A
            // start-up pass bigger than one slice asks to be called back at once. The status
            // (every metric sample, lifted) is read only once two ticks in a row started nothing, to
            // tell a settled engine's idle timers from one still working.
            let Some(w) = result.outcome.next_wake_ms else { return Ok(()) };
            if idle && engine.status()?.settled {
                return Ok(());
            }
            idle = true;
            *now = (*now).max(w);
            continue;
        }
        idle = false;
        *now += 1;
    }
    bail!("the engine did not settle")
}

pub(crate) fn uid(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, i)
}

fn pod_ip(service: usize, endpoint: usize, generation: usize) -> String {
    let g = service * ENDPOINTS_PER_SERVICE + endpoint + generation * 1_000_000;
    format!("10.{}.{}.{}", 64 + (g >> 16), (g >> 8) & 0xff, g & 0xff)
}

fn node_of(service: usize, endpoint: usize) -> String {
    format!("node-{}", (service * ENDPOINTS_PER_SERVICE + endpoint) / PODS_PER_NODE)
}

pub(crate) fn slice_event(service: &Service, s: usize, replaced: Option<usize>) -> KubeEvent {
    let ips: Vec<(String, String)> =
        (0..ENDPOINTS_PER_SERVICE).map(|e| (pod_ip(s, e, usize::from(replaced == Some(e))), node_of(s, e))).collect();
    let refs: Vec<(&str, &str)> = ips.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    KubeEvent::EndpointSliceApplied(sample_slice(service, &refs))
}

/// Delivers each event on its own, as a watch would.
pub(crate) fn deliver_each(engine: &mut dyn EngineDriver, now: u64, events: Vec<KubeEvent>) -> Result<()> {
    for event in events {
        engine.deliver(now, vec![event])?;
    }
    Ok(())
}

fn timed(on_phase: PhaseHook<'_>, phases: &mut Vec<Phase>, name: &'static str, per: usize, f: impl FnOnce() -> Result<()>) -> Result<()> {
    on_phase(phases.len(), name);
    let start = Instant::now();
    f()?;
    phases.push(Phase { name, elapsed: start.elapsed(), per });
    Ok(())
}

fn count_state(engine: &mut dyn EngineDriver, state: &str) -> Result<u32> {
    let status = engine.status()?;
    Ok(status.states.iter().find(|(s, _)| s == state).map(|(_, n)| *n).unwrap_or(0))
}

/// Told `(phases done, name of the next)` before each phase (for a progress bar).
pub type PhaseHook<'a> = &'a dyn Fn(usize, &str);

/// The number of timed phases.
pub const PHASES: usize = 9;

/// Runs the whole lifecycle for `services` services and returns the timed phases.
pub fn measure(kind: EngineKind, services: usize, single_events: usize) -> Result<Lifecycle> {
    measure_with(kind, services, single_events, &|_, _| {})
}

/// [`measure`], telling `on_phase` before each phase.
pub fn measure_with(kind: EngineKind, services: usize, single_events: usize, on_phase: PhaseHook<'_>) -> Result<Lifecycle> {
    // The wasm engine gets a runtime of its own, whose count of guest memory is the instance's.
    let runtime = match kind {
        EngineKind::Wasm => Some(Runtime::with_limits(&SandboxLimits::default())?),
        EngineKind::Native => None,
    };
    let mut engine: Box<dyn EngineDriver> = match &runtime {
        Some(runtime) => Box::new(WasmEngine::new(&runtime.load_builtin()?, CallIds::default())?),
        None => kind.new_driver(CallIds::default())?,
    };
    let engine = engine.as_mut();
    engine.create(&TenantConfig { tenant: "bench".into(), seed: 7, ..TenantConfig::default() })?;
    let mut now = 1_000u64;
    let nodes = (services * ENDPOINTS_PER_SERVICE).div_ceil(PODS_PER_NODE);
    let node_events: Vec<KubeEvent> = (0..nodes)
        .map(|n| {
            let ip = format!("10.{}.{}.{}", 1 + (n >> 16), (n >> 8) & 0xff, n & 0xff);
            KubeEvent::NodeApplied(sample_node(&format!("node-{n}"), &ip))
        })
        .collect();
    // The initial lists (the nodes), the marker, and the start-up pass against an empty cloud.
    let mut initial: Vec<KubeEvent> = node_events;
    initial.push(KubeEvent::InitialListsComplete);
    engine.deliver(now, initial)?;
    settle(engine, &mut now)?;
    if !engine.status()?.settled {
        bail!("the engine did not initialize");
    }
    let objects: Vec<Service> = (0..services).map(|i| sample_service("bench", &format!("svc-{i}"), &uid(i))).collect();
    // Every event is built before the clock starts: the phases time the engine, not the harness.
    let adds: Vec<KubeEvent> = objects.iter().map(|s| KubeEvent::ServiceApplied(s.clone())).collect();
    let slices: Vec<KubeEvent> = objects.iter().enumerate().map(|(i, s)| slice_event(s, i, None)).collect();
    let churn: Vec<KubeEvent> = objects.iter().enumerate().map(|(i, s)| slice_event(s, i, Some(i % ENDPOINTS_PER_SERVICE))).collect();
    let singles = single_events.min(services);
    let restores: Vec<KubeEvent> = slices.iter().take(singles).cloned().collect();
    let deletes: Vec<KubeEvent> = objects.iter().map(|s| KubeEvent::ServiceDeleted(s.clone())).collect();
    let mut phases = Vec::new();

    timed(on_phase, &mut phases, "add", services, || deliver_each(engine, now, adds))?;
    timed(on_phase, &mut phases, "create-complete", services, || settle(engine, &mut now))?;
    let created = count_state(engine, "created")? as usize;
    if created != services {
        bail!("{created} of {services} services were created");
    }
    timed(on_phase, &mut phases, "endpoints-live", services, || deliver_each(engine, now, slices))?;
    timed(on_phase, &mut phases, "locsync-initial", services, || settle(engine, &mut now))?;
    let steady_guest_memory_bytes = runtime.as_ref().map(Runtime::guest_memory_bytes);
    timed(on_phase, &mut phases, "endpoints-churn", services, || deliver_each(engine, now, churn))?;
    timed(on_phase, &mut phases, "locsync-churn", services, || settle(engine, &mut now))?;
    // Single events at steady state: one replaced endpoint restored, delivered and synced, each.
    timed(on_phase, &mut phases, "single-endpoint-update", singles, || {
        for event in restores {
            engine.deliver(now, vec![event])?;
            settle(engine, &mut now)?;
        }
        Ok(())
    })?;
    timed(on_phase, &mut phases, "delete", services, || deliver_each(engine, now, deletes))?;
    timed(on_phase, &mut phases, "drain+delete-complete", services, || settle(engine, &mut now))?;
    let status = engine.status()?;
    let left: u32 = status.states.iter().map(|(_, n)| n).sum();
    if left != 0 {
        bail!("{left} operations are still tracked after the deletes");
    }
    Ok(Lifecycle { phases, steady_guest_memory_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_ticks_through_a_start_up_pass_of_several_slices() {
        let mut engine = EngineKind::Native.new_driver(CallIds::default()).unwrap();
        let engine = engine.as_mut();
        engine.create(&TenantConfig { tenant: "bench".into(), ..TenantConfig::default() }).unwrap();
        // More initial objects than one slice of the pass takes (STARTUP_SLICE, 1,000).
        let mut initial: Vec<KubeEvent> = (0..2_500)
            .map(|n| KubeEvent::NodeApplied(sample_node(&format!("node-{n}"), &format!("10.1.{}.{}", n >> 8, n & 0xff))))
            .collect();
        initial.push(KubeEvent::InitialListsComplete);
        let mut now = 1_000;
        engine.deliver(now, initial).unwrap();
        settle(engine, &mut now).unwrap();
        assert!(engine.status().unwrap().settled, "the start-up pass ran through");
    }
}
