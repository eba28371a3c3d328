//! `difftracker bench-tenants`: many tenants in one process, as `difftracker serve` runs them,
//! measured for density (resident memory per tenant once all have converged) and fair share (how
//! long a healthy tenant takes to converge one endpoint change while others misbehave).
//!
//! N tenants run the built-in engine component (default sandbox, trap recovery on) in one shared
//! [`Runtime`], whose instance pool is sized from N (two slots per tenant: its engine and one
//! swap or recovery instance), on one [`Executor`], each against instant mock backends
//! ([`MockWorld`]) with M Services of 10 endpoints. Once every tenant has converged, each healthy
//! tenant replaces one endpoint after another (an EndpointSlice update) and the wall time until
//! its `updateAddressLocations` completed and it is idle again is recorded. With `misbehaving`
//! K, K more tenants run [`crate::MISBEHAVING_WASM`], whose every tick after the first busy-loops
//! until the CPU deadline interrupts it; they start with the measurement and are never stopped
//! during it (no restart bound), the worst case the tenant backoff has to contain.

use crate::bench::{slice_event, uid};
use crate::bench_swap::Spread;
use crate::mock::MockWorld;
use crate::samples::{sample_node, sample_service};
use anyhow::{anyhow, bail, Context, Result};
use difftracker_engine::io::{CloudCall, KubeEvent, Service, TenantConfig};
use difftracker_runtime::backend::{CallFuture, CloudBackend};
use difftracker_runtime::driver::{CallIds, EngineDriver, WasmEngine};
use difftracker_runtime::executor::{Backends, Executor, SystemClock, DEFAULT_GLOBAL_CAP};
use difftracker_runtime::tenant::{spawn_tenant, BackoffPolicy, Recovery, SnapshotPolicy, TenantHandle, TenantOptions};
use difftracker_runtime::wasm::{EngineComponent, Runtime, RuntimeOptions};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Instance slots per tenant: its engine, and one being swapped in or rebuilt after a trap.
pub const SLOTS_PER_TENANT: u32 = 2;
/// Nodes carry this many endpoints each.
const PODS_PER_NODE: usize = 100;
/// A change that has not converged after this long fails the benchmark.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Clone, Debug)]
pub struct TenantsBenchOptions {
    pub tenants: usize,
    pub services: usize,
    pub misbehaving: usize,
    /// How long the healthy tenants keep changing endpoints.
    pub measure_for: Duration,
    /// Pause between two changes of one tenant.
    pub change_interval: Duration,
    /// The tenant backoff after a trap; `false` only to measure what it buys.
    pub backoff: bool,
    /// A backed-off tenant's ticks at the lowest CPU priority; `false` only to measure what it buys.
    pub low_priority: bool,
}

impl Default for TenantsBenchOptions {
    fn default() -> Self {
        TenantsBenchOptions {
            tenants: 10,
            services: 100,
            misbehaving: 0,
            measure_for: Duration::from_secs(30),
            change_interval: Duration::from_millis(20),
            backoff: true,
            low_priority: true,
        }
    }
}

/// Resident memory, from `/proc/self/status`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Resident {
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// `VmHWM` (the peak so far), bytes.
    pub peak_bytes: u64,
}

impl Resident {
    /// Now; zeros where `/proc` cannot be read.
    pub fn now() -> Resident {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Resident { rss_bytes: kib("VmRSS:"), peak_bytes: kib("VmHWM:") }
    }
}

/// What the misbehaving tenants did during the measurement.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Misbehaviour {
    pub tenants: usize,
    /// Guest calls of theirs that hit the CPU deadline (or trapped), in all.
    pub traps: u64,
    /// Their longest backoff at the end, seconds.
    pub backoff_max_s: f64,
    /// Those stopped by the end (none is expected: they have no restart bound here).
    pub stopped: usize,
    /// One of their warnings, as the status page shows it.
    pub warning: Option<String>,
}

/// What `bench-tenants` reports (as JSON with `--json`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TenantsBench {
    pub tenants: usize,
    pub services_per_tenant: usize,
    pub backoff: bool,
    pub low_priority: bool,
    pub instance_slots: u32,
    /// Resident memory with the runtime up and the components loaded, before any tenant.
    pub before_tenants: Resident,
    /// Resident memory once every tenant has converged.
    pub converged: Resident,
    /// `(converged - before_tenants) / tenants`, MiB.
    pub mib_per_tenant: f64,
    /// Linear memory of every engine instance once converged (what the guests grew to), bytes.
    pub guest_memory_bytes: u64,
    /// `guest_memory_bytes / tenants`, MiB.
    pub guest_mib_per_tenant: f64,
    /// Wall time to create the tenants' engines and start their loops.
    pub start_s: f64,
    /// Wall time from the first delivered event to every tenant converged.
    pub converge_s: f64,
    /// Tenants whose every Service is created, every location synced, nothing in flight.
    pub tenants_converged: usize,
    /// Endpoint changes measured, over all healthy tenants.
    pub changes: usize,
    /// From one EndpointSlice update to its `updateAddressLocations` completed and the tenant
    /// idle, over every change of every healthy tenant.
    pub change_converge: Spread,
    /// The same, per healthy tenant: its own p99, the worst of them.
    pub worst_tenant_p99_ms: f64,
    pub misbehaving: Misbehaviour,
}

/// Where a benchmark stands, for a progress bar: `(stage, done, total)`.
pub type ProgressHook<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// A mock cloud that counts the `updateAddressLocations` calls it has answered.
struct CountingCloud {
    inner: MockWorld,
    location_syncs: Arc<AtomicU64>,
}

impl CloudBackend for CountingCloud {
    fn call(&self, call: CloudCall) -> CallFuture {
        let sync = matches!(call, CloudCall::UpdateAddressLocations(_));
        let answer = CloudBackend::call(&self.inner, call);
        let counter = self.location_syncs.clone();
        Box::pin(async move {
            let outcome = answer.await;
            if sync {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            outcome
        })
    }
}

/// One healthy tenant of the benchmark.
struct Healthy {
    handle: TenantHandle,
    services: Vec<Service>,
    location_syncs: Arc<AtomicU64>,
}

fn tenant_events(services: &[Service]) -> Vec<KubeEvent> {
    let nodes = (services.len() * 10).div_ceil(PODS_PER_NODE).max(1);
    let mut events: Vec<KubeEvent> = (0..nodes)
        .map(|n| {
            KubeEvent::NodeApplied(sample_node(&format!("node-{n}"), &format!("10.{}.{}.{}", 1 + (n >> 16), (n >> 8) & 0xff, n & 0xff)))
        })
        .collect();
    events.push(KubeEvent::InitialListsComplete);
    events.extend(services.iter().map(|s| KubeEvent::ServiceApplied(s.clone())));
    events.extend(services.iter().enumerate().map(|(i, s)| slice_event(s, i, None)));
    events
}

fn backoff_of(options: &TenantsBenchOptions) -> Option<BackoffPolicy> {
    options.backoff.then(|| BackoffPolicy { low_priority: options.low_priority, ..BackoffPolicy::default() })
}

fn created(component: &EngineComponent, tenant: &str) -> Result<Box<dyn EngineDriver>> {
    let mut engine = WasmEngine::new(component, CallIds::default())?;
    engine.create(&TenantConfig { tenant: tenant.into(), seed: 7, ..TenantConfig::default() })?;
    Ok(Box::new(engine))
}

/// Runs the benchmark; fails if a healthy tenant does not converge.
pub async fn measure(options: TenantsBenchOptions, progress: ProgressHook<'_>) -> Result<TenantsBench> {
    if options.tenants == 0 || options.services == 0 {
        bail!("bench-tenants needs at least one tenant and one Service");
    }
    let all = options.tenants + options.misbehaving;
    let instance_slots = u32::try_from(all).unwrap_or(u32::MAX).saturating_mul(SLOTS_PER_TENANT).saturating_add(1);
    let runtime =
        tokio::task::spawn_blocking(move || Runtime::new(RuntimeOptions { max_instances: instance_slots, ..RuntimeOptions::default() }))
            .await??;
    let loaded = runtime.clone();
    let (engine_component, misbehaving_component) = tokio::task::spawn_blocking(move || -> Result<_> {
        Ok((loaded.load_builtin()?, loaded.load(crate::MISBEHAVING_WASM).context("loading the misbehaving component")?))
    })
    .await??;
    let executor = Executor::new(Arc::new(SystemClock), DEFAULT_GLOBAL_CAP);
    let before_tenants = Resident::now();

    // Start every healthy tenant, then hand each its cluster at once.
    let started = Instant::now();
    let mut healthy = Vec::with_capacity(options.tenants);
    for t in 0..options.tenants {
        let name = format!("tenant-{t}");
        let services: Vec<Service> = (0..options.services).map(|i| sample_service("bench", &format!("svc-{i}"), &uid(i))).collect();
        let world = MockWorld::new();
        let location_syncs = Arc::new(AtomicU64::new(0));
        let cloud = Arc::new(CountingCloud { inner: world.clone(), location_syncs: location_syncs.clone() });
        let recovery = Recovery::for_component(&engine_component);
        let tenant_options = TenantOptions::new(&name).with_recovery(recovery).with_backoff(backoff_of(&options));
        let driver = created(&engine_component, &name).with_context(|| format!("creating {name}"))?;
        let handle = spawn_tenant(&executor, tenant_options, driver, Backends { cloud, kube: world.kube() }, None);
        healthy.push(Healthy { handle, services, location_syncs });
        progress("start tenants", t as u64 + 1, options.tenants as u64);
    }
    let start_s = started.elapsed().as_secs_f64();

    let converging = Instant::now();
    for tenant in &healthy {
        tenant.handle.deliver(tenant_events(&tenant.services))?;
    }
    let services = options.services as u32;
    let mut tenants_converged = 0usize;
    for tenant in &healthy {
        tenant
            .handle
            .wait_for(|s| s.is_idle() && s.state_count("created") == services && !s.engine.location_sync_in_flight)
            .await
            .with_context(|| format!("{} did not converge", tenant.handle.name()))?;
        tenants_converged += 1;
        progress("converge", tenants_converged as u64, options.tenants as u64);
    }
    let converge_s = converging.elapsed().as_secs_f64();
    let converged = Resident::now();
    let guest_memory_bytes = runtime.guest_memory_bytes();

    // The misbehaving tenants start with the measurement.
    let mut misbehaving = Vec::with_capacity(options.misbehaving);
    for m in 0..options.misbehaving {
        let name = format!("misbehaving-{m}");
        let world = MockWorld::new();
        let mut recovery = Recovery::for_component(&misbehaving_component).with_snapshots(SnapshotPolicy::every_tick());
        recovery.max_restarts = u32::MAX;
        let tenant_options = TenantOptions::new(&name).with_recovery(recovery).with_backoff(backoff_of(&options));
        let driver = created(&misbehaving_component, &name).with_context(|| format!("creating {name}"))?;
        misbehaving.push(spawn_tenant(&executor, tenant_options, driver, Backends { cloud: world.cloud(), kube: world.kube() }, None));
    }

    let measure_until = Instant::now() + options.measure_for;
    let measured = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for tenant in healthy {
        let measured = measured.clone();
        let interval = options.change_interval;
        tasks.push(tokio::spawn(async move {
            let samples = change_endpoints(&tenant, measure_until, interval, &measured).await;
            (tenant, samples)
        }));
    }
    let total_ms = options.measure_for.as_millis() as u64;
    let mut all_samples = Vec::new();
    let mut worst_tenant_p99_ms = 0.0f64;
    let mut finished = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut joined = futures_util::future::join_all(tasks);
    let results = loop {
        tokio::select! {
            results = &mut joined => break results,
            _ = ticker.tick() => {
                let left = measure_until.saturating_duration_since(Instant::now()).as_millis() as u64;
                progress("fair share (ms)", total_ms.saturating_sub(left), total_ms);
            }
        }
    };
    for result in results {
        let (tenant, samples) = result.map_err(|e| anyhow!("a measuring task failed: {e}"))?;
        let samples = samples.with_context(|| format!("{} did not converge an endpoint change", tenant.handle.name()))?;
        worst_tenant_p99_ms = worst_tenant_p99_ms.max(Spread::of(&samples).p99_ms);
        all_samples.extend(samples);
        finished.push(tenant);
    }

    let mut behaviour = Misbehaviour { tenants: misbehaving.len(), ..Misbehaviour::default() };
    for tenant in &misbehaving {
        let s = tenant.status();
        behaviour.traps += s.traps;
        behaviour.backoff_max_s = behaviour.backoff_max_s.max(s.backoff.map_or(0.0, |d| d.as_secs_f64()));
        behaviour.stopped += usize::from(s.stopped);
        if behaviour.warning.is_none() {
            behaviour.warning = s.warning.clone().or(s.error.clone());
        }
    }
    for tenant in misbehaving {
        let _ = tenant.stop().await;
    }
    for tenant in finished {
        tenant.handle.stop().await?;
    }
    Ok(TenantsBench {
        tenants: options.tenants,
        services_per_tenant: options.services,
        backoff: options.backoff,
        low_priority: options.backoff && options.low_priority,
        instance_slots,
        before_tenants,
        converged,
        mib_per_tenant: converged.rss_bytes.saturating_sub(before_tenants.rss_bytes) as f64 / options.tenants as f64 / (1 << 20) as f64,
        guest_memory_bytes,
        guest_mib_per_tenant: guest_memory_bytes as f64 / options.tenants as f64 / (1 << 20) as f64,
        start_s,
        converge_s,
        tenants_converged,
        changes: all_samples.len(),
        change_converge: Spread::of(&all_samples),
        worst_tenant_p99_ms,
        misbehaving: behaviour,
    })
}

/// One healthy tenant's measurement: replaces one endpoint of one Service after another (round
/// robin, alternating between the replaced and the original address) until `until` (at least
/// one), timing each
/// from the delivery to its location sync completed and the tenant idle.
async fn change_endpoints(tenant: &Healthy, until: Instant, interval: Duration, measured: &AtomicU64) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    let count = tenant.services.len();
    let mut i = 0usize;
    // At least one change each, however short the measurement.
    while i == 0 || Instant::now() < until {
        let s = i % count;
        let replaced = (i / count).is_multiple_of(2).then_some(s % 10);
        let syncs_before = tenant.location_syncs.load(Ordering::SeqCst);
        let began = Instant::now();
        tenant.handle.deliver(vec![slice_event(&tenant.services[s], s, replaced)])?;
        let syncs = &tenant.location_syncs;
        tokio::time::timeout(CHANGE_TIMEOUT, tenant.handle.wait_for(|st| syncs.load(Ordering::SeqCst) > syncs_before && st.is_idle()))
            .await
            .map_err(|_| anyhow!("change {i} did not converge within {CHANGE_TIMEOUT:?}"))??;
        samples.push(began.elapsed());
        measured.fetch_add(1, Ordering::Relaxed);
        i += 1;
        tokio::time::sleep(interval).await;
    }
    Ok(samples)
}

/// The report for people: density, then fair share.
pub fn render(b: &TenantsBench) -> String {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let mut out = format!(
        "tenants: {} x {} Services (10 endpoints each), backoff {}{}, {} instance slots\n\
         resident: {:.1} MiB before the tenants, {:.1} MiB converged (peak {:.1} MiB): {:.2} MiB per tenant; guest linear memory {:.2} MiB per tenant\n\
         start {:.2} s, converge {:.2} s; converged: {}/{}\n\
         endpoint change to converged, {} changes over the healthy tenants: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (worst tenant's p99 {:.2} ms)\n",
        b.tenants,
        b.services_per_tenant,
        if b.backoff { "on" } else { "off" },
        if b.low_priority { " (low priority)" } else { "" },
        b.instance_slots,
        mib(b.before_tenants.rss_bytes),
        mib(b.converged.rss_bytes),
        mib(b.converged.peak_bytes),
        b.mib_per_tenant,
        b.guest_mib_per_tenant,
        b.start_s,
        b.converge_s,
        b.tenants_converged,
        b.tenants,
        b.changes,
        b.change_converge.p50_ms,
        b.change_converge.p99_ms,
        b.change_converge.max_ms,
        b.worst_tenant_p99_ms,
    );
    if b.misbehaving.tenants > 0 {
        out.push_str(&format!(
            "misbehaving tenants: {}, traps {}, longest backoff at the end {:.1} s, stopped {}\n",
            b.misbehaving.tenants, b.misbehaving.traps, b.misbehaving.backoff_max_s, b.misbehaving.stopped
        ));
    }
    out
}
