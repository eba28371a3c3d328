//! `difftracker bench-swap`: what swapping a running tenant's engine costs, measured through the
//! tenant's public API ([`TenantHandle::hot_swap`], [`TenantHandle::plain_swap`]).
//!
//! The state is built once with the native engine (N Services created, 10 endpoints each, every
//! location synced), moved as a binary snapshot into the component, and run as a tenant with
//! trap recovery under the default sandbox limits against an instant backend, while a feeder
//! replaces one endpoint of a Service every few milliseconds (so each swap happens under load,
//! with calls in flight). Then it swaps K times the plain way (stop, snapshot, restore) and K
//! times in the background, and reports both pauses from the same run, plus the snapshot's size
//! and its encode and decode times in binary and in JSON (native engine).

use crate::bench::{deliver_each, respond, settle, slice_event, uid};
use crate::samples::{sample_node, sample_service};
use anyhow::{bail, Context, Result};
use difftracker_engine::io::{CallOutput, CloudCall, KubeCall, KubeEvent, KubeEventRecord, Service, TenantConfig};
use difftracker_engine::Engine;
use difftracker_runtime::backend::{CallFuture, CloudBackend, KubeBackend};
use difftracker_runtime::driver::{CallIds, EngineDriver, NativeEngine, WasmEngine};
use difftracker_runtime::executor::{Backends, Executor, SystemClock};
use difftracker_runtime::tenant::{spawn_tenant, Recovery, SwapReport, TenantHandle, TenantOptions};
use difftracker_runtime::wasm::{Runtime, SandboxLimits};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Answers every call at once, as a cooperative cloud and cluster would.
#[derive(Clone, Copy, Debug, Default)]
pub struct InstantBackend;

impl CloudBackend for InstantBackend {
    fn call(&self, call: CloudCall) -> CallFuture {
        let output = respond(0, &difftracker_engine::io::Call::Cloud(call)).outcome;
        Box::pin(async move { output })
    }
}

impl KubeBackend for InstantBackend {
    fn call(&self, _call: KubeCall) -> CallFuture {
        Box::pin(async move { Ok(CallOutput::Done) })
    }
    fn record_event(&self, _event: KubeEventRecord) {}
}

/// A settled engine tracking `services` Services with 10 endpoints each (native, fast to build),
/// the Services themselves, and its clock.
pub fn settled_engine(services: usize) -> Result<(NativeEngine, Vec<Service>, u64)> {
    let mut engine = NativeEngine::new(CallIds::default());
    engine.create(&TenantConfig { tenant: "bench-swap".into(), seed: 7, ..TenantConfig::default() })?;
    let mut now = 1_000u64;
    let nodes = (services * 10).div_ceil(100);
    let mut initial: Vec<KubeEvent> = (0..nodes)
        .map(|n| {
            KubeEvent::NodeApplied(sample_node(&format!("node-{n}"), &format!("10.{}.{}.{}", 1 + (n >> 16), (n >> 8) & 0xff, n & 0xff)))
        })
        .collect();
    initial.push(KubeEvent::InitialListsComplete);
    engine.deliver(now, initial)?;
    settle(&mut engine, &mut now)?;
    let objects: Vec<Service> = (0..services).map(|i| sample_service("bench", &format!("svc-{i}"), &uid(i))).collect();
    deliver_each(&mut engine, now, objects.iter().map(|s| KubeEvent::ServiceApplied(s.clone())).collect())?;
    settle(&mut engine, &mut now)?;
    deliver_each(&mut engine, now, objects.iter().enumerate().map(|(i, s)| slice_event(s, i, None)).collect())?;
    settle(&mut engine, &mut now)?;
    let status = engine.status()?;
    if !status.settled {
        bail!("the engine did not settle with {services} Services");
    }
    Ok((engine, objects, now))
}

/// p50, p99 and max of some durations, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Spread {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    pub fn of(values: &[Duration]) -> Spread {
        let mut ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1).min(ms.len().saturating_sub(1))).copied().unwrap_or(0.0)
        };
        Spread { p50_ms: at(0.5), p99_ms: at(0.99), max_ms: ms.last().copied().unwrap_or(0.0) }
    }
}

/// Size and time of one encoding of the snapshot (native engine).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Encoding {
    pub bytes: usize,
    pub encode_ms: f64,
    pub decode_ms: f64,
}

/// What `bench-swap` prints (as JSON).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SwapBench {
    pub services: usize,
    pub swaps: usize,
    /// Bytes of the snapshot the background swaps started from (the last one).
    pub snapshot_bytes: usize,
    /// How long the tick loop stood still, per background swap.
    pub pause: Spread,
    /// From the request to the switch, per background swap.
    pub swap_total: Spread,
    /// Inputs the new instance replayed in the background, then during the pause (means).
    pub replayed_in_background_mean: f64,
    pub replayed_in_pause_mean: f64,
    /// The plain stop-snapshot-restore swap's pause, measured in the same run.
    pub plain_pause: Spread,
    /// plain_pause.p99_ms / pause.p99_ms.
    pub p99_ratio: f64,
    /// Endpoint updates the feeder delivered during the swaps.
    pub inputs_during_swaps: u64,
    pub binary: Encoding,
    pub json: Encoding,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let began = Instant::now();
    let out = f();
    (out, began.elapsed())
}

/// Runs the benchmark: `swaps` plain swaps, then `swaps` background swaps, of one tenant of
/// `services` Services under `limits`. Fails if any swap fails or the state does not survive.
pub async fn measure(services: usize, swaps: usize, limits: SandboxLimits) -> Result<SwapBench> {
    let (mut native, objects, _) = tokio::task::spawn_blocking(move || settled_engine(services)).await??;
    let binary = native.snapshot()?;
    let restored = |bytes: &[u8]| Engine::restore(bytes).map_err(|e| anyhow::anyhow!("{e}"));
    let engine = restored(&binary)?;
    let (json, json_encode) = timed(|| engine.snapshot_json());
    let (_, json_decode) = timed(|| restored(&json));
    let (again, binary_encode) = timed(|| engine.snapshot());
    let (_, binary_decode) = timed(|| restored(&again));
    let encoding =
        |bytes: usize, e: Duration, d: Duration| Encoding { bytes, encode_ms: e.as_secs_f64() * 1e3, decode_ms: d.as_secs_f64() * 1e3 };
    let created = engine.status().states.iter().find(|(s, _)| s == "created").map(|(_, n)| *n).unwrap_or(0);

    let runtime = Runtime::with_limits(&limits).context("starting the wasmtime runtime")?;
    let component = runtime.load_builtin().context("loading the engine component")?;
    let ids = CallIds::starting_at(1 << 40);
    let mut first = WasmEngine::new(&component, ids.clone())?;
    first.restore(&binary).context("restoring the built state into the component")?;
    let executor = Executor::new(Arc::new(SystemClock), 256);
    let backend = Arc::new(InstantBackend);
    let options = TenantOptions::new("bench-swap").with_recovery(Recovery::for_component(&component));
    let tenant = spawn_tenant(&executor, options, Box::new(first), Backends { cloud: backend.clone(), kube: backend }, None);
    tenant.wait_for(|s| s.ticks > 0).await?;

    let feeding = Arc::new(AtomicBool::new(true));
    let fed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = tokio::spawn(feed(tenant_inputs(&tenant), objects, feeding.clone(), fed.clone()));

    let mut plain = Vec::new();
    for i in 0..swaps {
        let fresh = WasmEngine::new(&component, ids.clone())?;
        let report = tenant.plain_swap(Box::new(fresh), None).await.with_context(|| format!("plain swap {i}"))?;
        plain.push(report.pause);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fed_before = fed.load(Ordering::Relaxed);
    let mut reports: Vec<SwapReport> = Vec::new();
    for i in 0..swaps {
        let component = component.clone();
        let factory: difftracker_runtime::tenant::EngineFactory =
            Arc::new(move |ids| Ok(Box::new(WasmEngine::new(&component, ids)?) as Box<dyn EngineDriver>));
        let report = tenant.hot_swap(factory).await.with_context(|| format!("background swap {i}"))?;
        reports.push(report);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inputs_during_swaps = fed.load(Ordering::Relaxed) - fed_before;
    feeding.store(false, Ordering::Relaxed);
    let _ = feeder.await;
    let status = tenant.wait_for(|s| s.is_idle()).await?;
    if status.state_count("created") != created {
        bail!("{} Services are created after the swaps, {created} before", status.state_count("created"));
    }
    if status.restarts != 0 {
        bail!("the tenant restarted {} time(s) during the swaps: {:?}", status.restarts, status.error);
    }
    tenant.stop().await?;

    let pause = Spread::of(&reports.iter().map(|r| r.pause).collect::<Vec<_>>());
    let plain_pause = Spread::of(&plain);
    let mean = |f: fn(&SwapReport) -> usize| reports.iter().map(f).sum::<usize>() as f64 / reports.len().max(1) as f64;
    Ok(SwapBench {
        services,
        swaps,
        snapshot_bytes: reports.last().map(|r| r.snapshot_bytes).unwrap_or(binary.len()),
        swap_total: Spread::of(&reports.iter().map(|r| r.total).collect::<Vec<_>>()),
        replayed_in_background_mean: mean(|r| r.replayed_in_background),
        replayed_in_pause_mean: mean(|r| r.replayed_in_pause),
        p99_ratio: if pause.p99_ms > 0.0 { plain_pause.p99_ms / pause.p99_ms } else { 0.0 },
        pause,
        plain_pause,
        inputs_during_swaps,
        binary: encoding(again.len(), binary_encode, binary_decode),
        json: encoding(json.len(), json_encode, json_decode),
    })
}

/// A sender of the tenant's inputs that the feeder can own.
fn tenant_inputs(tenant: &TenantHandle) -> impl Fn(Vec<KubeEvent>) -> bool + Send + 'static {
    let sender = tenant.input_sender();
    move |events| sender.send(events).is_ok()
}

/// Replaces one endpoint of one Service every 5 ms, round robin, until told to stop.
async fn feed(
    send: impl Fn(Vec<KubeEvent>) -> bool,
    objects: Vec<Service>,
    feeding: Arc<AtomicBool>,
    fed: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut i = 0usize;
    while feeding.load(Ordering::Relaxed) {
        let s = i % objects.len().max(1);
        let Some(service) = objects.get(s) else { return };
        // Alternate between the replaced endpoint and the original one.
        let replaced = if (i / objects.len().max(1)).is_multiple_of(2) { Some(s % 10) } else { None };
        if !send(vec![slice_event(service, s, replaced)]) {
            return;
        }
        fed.fetch_add(1, Ordering::Relaxed);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `difftracker bench-swap`: prints [`measure`]'s result as JSON.
pub async fn run(services: usize, swaps: usize, limits: SandboxLimits) -> Result<()> {
    let bench = measure(services, swaps, limits).await?;
    println!("{}", serde_json::to_string_pretty(&bench)?);
    Ok(())
}
