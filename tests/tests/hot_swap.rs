//! Hot swap in the background (`TenantHandle::hot_swap`), with the real component: the new
//! instance restores the tenant's checkpoint and replays its input log while the old one keeps
//! ticking, then takes over; calls in flight complete into it. A swap that fails (the new
//! instance traps, or starts other calls than the running one) changes nothing: the old instance
//! keeps running and the refusal says why. Every wait is for a state of the tenant, not a time.

use difftracker_engine::io::{CallError, CloudCall, Completion, KubeEvent};
use difftracker_runtime::backend::{CallFuture, CloudBackend};
use difftracker_runtime::driver::{CallIds, EngineDriver, Intercept, Intercepted, TickResult, WasmEngine};
use difftracker_runtime::executor::{Backends, Executor, ManualClock};
use difftracker_runtime::tenant::{
    spawn_tenant, EngineFactory, Recovery, SnapshotPolicy, SwapError, SwapOptions, TenantHandle, TenantOptions,
};
use difftracker_runtime::wasm::SandboxLimits;
use difftracker_simulation::mock::MockWorld;
use difftracker_tests::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A cloud whose `PUT loadBalancers` calls wait until released, counting them.
struct GatedCloud {
    inner: MockWorld,
    gate: Arc<tokio::sync::Semaphore>,
    puts: Arc<AtomicUsize>,
}

impl CloudBackend for GatedCloud {
    fn call(&self, call: CloudCall) -> CallFuture {
        let (inner, gate, puts) = (self.inner.clone(), self.gate.clone(), self.puts.clone());
        Box::pin(async move {
            if call.label() == label::PUT_LB {
                puts.fetch_add(1, Ordering::SeqCst);
                let _permit =
                    gate.acquire().await.map_err(|_| CallError::of_kind(difftracker_engine::io::ErrorKind::Transport, "gate closed"))?;
            }
            CloudBackend::call(&inner, call).await
        })
    }
}

/// Counts the ticks of the instances it wraps (to tell which instance runs).
struct CountTicks(Arc<AtomicUsize>);

impl Intercept for CountTicks {
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> anyhow::Result<TickResult> {
        self.0.fetch_add(1, Ordering::SeqCst);
        inner.tick(now_ms, completions)
    }
}

/// An instance that traps (panics, as a native engine's trap) on its first tick.
struct TrapsOnTick;

impl Intercept for TrapsOnTick {
    fn tick(&mut self, _: &mut dyn EngineDriver, _: u64, _: Vec<Completion>) -> anyhow::Result<TickResult> {
        panic!("unreachable executed (injected trap)")
    }
}

/// An instance that behaves differently: it forgets every call its ticks start.
struct StartsNothing;

impl Intercept for StartsNothing {
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> anyhow::Result<TickResult> {
        let mut result = inner.tick(now_ms, completions)?;
        result.started.clear();
        Ok(result)
    }
}

/// A deliberate change of behaviour that stays correct: the calls of a tick are reported (and
/// so performed) in the reverse order.
struct ReversesCalls;

impl Intercept for ReversesCalls {
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> anyhow::Result<TickResult> {
        let mut result = inner.tick(now_ms, completions)?;
        result.started.reverse();
        Ok(result)
    }
}

fn factory_with<I: Intercept + 'static>(hooks: impl Fn() -> I + Send + Sync + 'static) -> EngineFactory {
    Arc::new(move |ids| {
        let inner: Box<dyn EngineDriver> = Box::new(WasmEngine::new(component(), ids)?);
        Ok(Box::new(Intercepted::new(inner, hooks())) as Box<dyn EngineDriver>)
    })
}

struct World {
    tenant: TenantHandle,
    gate: Arc<tokio::sync::Semaphore>,
    puts: Arc<AtomicUsize>,
    world: MockWorld,
}

/// A recovering tenant (one checkpoint at start, every input logged since) with one Service
/// whose load balancer call is held in flight.
async fn tenant_with_a_call_in_flight() -> World {
    let clock = ManualClock::new(1_000);
    let executor = Executor::new(Arc::new(clock), 16);
    let world = MockWorld::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let puts = Arc::new(AtomicUsize::new(0));
    let cloud = Arc::new(GatedCloud { inner: world.clone(), gate: gate.clone(), puts: puts.clone() });
    let recovery = Recovery::for_component(component()).with_snapshots(SnapshotPolicy::every_inputs(usize::MAX));
    let options = TenantOptions::new("swap").with_recovery(recovery);
    let tenant = spawn_tenant(&executor, options, wasm_engine_created(CallIds::default()), Backends { cloud, kube: world.kube() }, None);
    let svc = sample_service("default", "web", "dddd0000-0000-4000-8000-000000000001");
    tenant
        .deliver(vec![
            KubeEvent::InitialListsComplete,
            KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
            KubeEvent::ServiceApplied(svc.clone()),
            KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
        ])
        .unwrap();
    tenant.wait_for(|s| s.state_count("creation_in_progress") == 1 && s.calls_outstanding == 1).await.unwrap();
    while puts.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    World { tenant, gate, puts, world }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_across_a_background_swap_complete_into_the_new_instance() {
    let w = tenant_with_a_call_in_flight().await;
    let ticks = Arc::new(AtomicUsize::new(0));
    let counted = ticks.clone();
    let report = w.tenant.hot_swap(factory_with(move || CountTicks(counted.clone()))).await.expect("the swap succeeds");
    assert!(report.snapshot_bytes > 0);
    assert!(report.replayed_in_background > 0, "the new instance replayed the log: {report:?}");
    // Replaying the log ticked the new instance; nothing has ticked it since the switch yet.
    let replayed_ticks = ticks.load(Ordering::SeqCst);
    assert!(replayed_ticks > 0);
    // The loop counts the swap just after it answers the caller.
    w.tenant.wait_for(|s| s.swaps == 1).await.unwrap();

    // The load balancer call started by the old instance completes into the new one, which
    // goes on with the operation instead of starting it again.
    w.gate.add_permits(16);
    w.tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 1).await.unwrap();
    assert_eq!(w.puts.load(Ordering::SeqCst), 1, "the new instance did not start the load balancer again");
    assert!(ticks.load(Ordering::SeqCst) > replayed_ticks, "the new instance runs the tenant now");
    assert_eq!(w.world.inventory().load_balancers.len(), 1);

    // And it takes new work.
    let svc2 = sample_service("default", "web2", "dddd0000-0000-4000-8000-000000000002");
    w.tenant.deliver(vec![KubeEvent::ServiceApplied(svc2)]).unwrap();
    w.tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 2).await.unwrap();
    assert_eq!(w.world.inventory().load_balancers.len(), 2);
    w.tenant.stop().await.unwrap();
}

/// After a refused swap the old instance still holds the operation and its call in flight, and
/// takes new work.
async fn old_instance_keeps_running(w: World) {
    w.gate.add_permits(16);
    let svc2 = sample_service("default", "web2", "dddd0000-0000-4000-8000-000000000002");
    w.tenant.deliver(vec![KubeEvent::ServiceApplied(svc2)]).unwrap();
    let status = w.tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 2).await.unwrap();
    assert_eq!(w.puts.load(Ordering::SeqCst), 2, "one load balancer per Service, none started twice");
    assert_eq!(status.restarts, 0);
    assert_eq!(status.swaps, 0);
    w.tenant.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_to_a_trapping_component_is_refused_and_the_old_instance_keeps_running() {
    let w = tenant_with_a_call_in_flight().await;
    let error = w.tenant.hot_swap(factory_with(|| TrapsOnTick)).await.expect_err("the swap is refused");
    assert!(matches!(error, SwapError::Replay(_)), "{error:?}");
    assert!(error.to_string().contains("injected trap"), "{error}");
    // The loop counts the refusal just after it answers the caller.
    let status = w.tenant.wait_for(|s| s.swaps_refused == 1).await.unwrap();
    assert_eq!(status.swaps, 0);
    assert!(status.last_swap_error.as_deref().is_some_and(|e| e.contains("replaying")), "{status:?}");
    old_instance_keeps_running(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_to_an_instance_that_starts_other_calls_is_refused_as_a_divergence() {
    let w = tenant_with_a_call_in_flight().await;
    let error = w.tenant.hot_swap(factory_with(|| StartsNothing)).await.expect_err("the swap is refused");
    let SwapError::Divergence(text) = &error else { panic!("not a divergence: {error:?}") };
    // The first differing input and both instances' calls, readably.
    assert!(text.contains("diverged: it started []") && text.contains("the log has [("), "{text}");
    old_instance_keeps_running(w).await;
}

/// The shadow gate refuses a component whose calls differ from the running one's; with
/// `allow_divergence` the same component is swapped in all the same (from a snapshot at a tick
/// boundary), the report and the status say where it diverged, the call in flight completes
/// into it and it takes new work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_component_is_refused_then_swapped_in_with_allow_divergence() {
    let w = tenant_with_a_call_in_flight().await;
    let error = w.tenant.hot_swap(factory_with(|| ReversesCalls)).await.expect_err("refused by default");
    assert!(matches!(error, SwapError::Divergence(_)), "{error:?}");
    w.tenant.wait_for(|s| s.swaps_refused == 1).await.unwrap();

    let forced = SwapOptions { allow_divergence: true };
    let report = w.tenant.hot_swap_with(factory_with(|| ReversesCalls), forced).await.expect("the swap is forced");
    let diff = report.divergence.clone().expect("the report records where it diverged");
    assert!(diff.contains("diverged: it started [("), "the first differing calls, readably: {diff}");
    assert!(report.snapshot_bytes > 0, "taken over from a snapshot: {report:?}");
    let status = w.tenant.wait_for(|s| s.swaps_forced == 1).await.unwrap();
    assert_eq!(status.swaps, 1);
    assert_eq!(status.last_swap_divergence.as_deref(), Some(diff.as_str()));

    w.gate.add_permits(16);
    w.tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 1).await.unwrap();
    assert_eq!(w.puts.load(Ordering::SeqCst), 1, "the call in flight completed into the new instance");
    let svc2 = sample_service("default", "web2", "dddd0000-0000-4000-8000-000000000002");
    w.tenant.deliver(vec![KubeEvent::ServiceApplied(svc2)]).unwrap();
    w.tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 2).await.unwrap();
    assert_eq!(w.world.inventory().load_balancers.len(), 2);
    w.tenant.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_to_a_component_that_cannot_be_built_is_refused() {
    let w = tenant_with_a_call_in_flight().await;
    let broken: EngineFactory = Arc::new(|_| anyhow::bail!("the component exports clb:difftracker@9.9.9"));
    let error = w.tenant.hot_swap(broken).await.expect_err("the swap is refused");
    assert!(matches!(&error, SwapError::Build(e) if e.contains("9.9.9")), "{error:?}");
    assert_eq!(error.reason(), "build");
    old_instance_keeps_running(w).await;
}

/// Twenty background swaps in a row of a tenant of 1,000 Services (10,000 endpoints) under the
/// default sandbox limits, with endpoint updates arriving throughout, all succeed and keep every
/// Service (`bench-swap` at a smaller size; 10,000 is in BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_background_swaps_in_a_row_at_1000_services_under_the_default_limits() {
    let bench = difftracker_simulation::bench_swap::measure(1_000, 20, SandboxLimits::default()).await.expect("every swap succeeds");
    assert_eq!(bench.swaps, 20);
    assert!(bench.snapshot_bytes > 0);
    // The binary snapshot is the compact one.
    assert!(bench.binary.bytes * 5 <= bench.json.bytes, "binary {} bytes, JSON {}", bench.binary.bytes, bench.json.bytes);
}
