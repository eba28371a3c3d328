//! Hot swap in the background (`TenantHandle::hot_swap`), with the real component: the new
//! instance restores the tenant's checkpoint and replays its input log while the old one keeps
//! ticking, then takes over; calls in flight complete into it. A swap that fails (the new
//! instance traps, or starts other calls than the running one) changes nothing: the old instance
//! keeps running and the refusal says why. A tenant swaps live between the WIT generations the
//! host serves (the 0.2.0 fixture and the bundled 0.3.0 engine) the same way. Every wait is for a
//! state of the tenant, not a time.

use difftracker_engine::io::{CallError, CloudCall, Completion, KubeEvent, Service};
use difftracker_runtime::backend::{CallFuture, CloudBackend};
use difftracker_runtime::driver::{CallIds, EngineDriver, Intercept, Intercepted, TickResult, WasmEngine};
use difftracker_runtime::executor::{Backends, Executor, ManualClock, SystemClock};
use difftracker_runtime::tenant::{
    spawn_tenant, EngineFactory, Recovery, SnapshotPolicy, SwapError, SwapOptions, TenantEvent, TenantHandle, TenantOptions,
};
use difftracker_runtime::wasm::{EngineComponent, SandboxLimits};
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

// ------------------------------------------------------------------------ across WIT generations

/// Fresh instances of `component` (either generation).
fn factory_of(component: &'static EngineComponent) -> EngineFactory {
    Arc::new(move |ids| Ok(Box::new(WasmEngine::new(component, ids)?) as Box<dyn EngineDriver>))
}

const GENERATION_SERVICES: usize = 6;
const UPDATE_ROUNDS: usize = 150;

fn generation_service(i: usize) -> Service {
    sample_service("default", &format!("gen-{i}"), &format!("eeee0000-0000-4000-8000-{i:012}"))
}

/// Round `round` of the endpoint updates: every Service's one endpoint moves to a new address.
fn endpoint_round(round: usize) -> Vec<KubeEvent> {
    (0..GENERATION_SERVICES)
        .map(|i| {
            let ip = format!("10.{}.{}.{}", 100 + i, round / 250, round % 250 + 1);
            KubeEvent::EndpointSliceApplied(sample_slice(&generation_service(i), &[(ip.as_str(), "node-1")]))
        })
        .collect()
}

fn initial_inputs() -> Vec<KubeEvent> {
    let mut events = vec![KubeEvent::InitialListsComplete, KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4"))];
    events.extend((0..GENERATION_SERVICES).map(|i| KubeEvent::ServiceApplied(generation_service(i))));
    events.extend(endpoint_round(0));
    events
}

/// What the engine decided, as the cloud and the cluster show it (addresses allocated by the
/// mock in call order are left out).
fn decisions(world: &MockWorld) -> impl PartialEq + std::fmt::Debug {
    let inventory = world.inventory();
    (
        inventory.load_balancers,
        inventory.sgw_services,
        inventory.locations,
        inventory.service_finalizers,
        inventory.public_ips.into_keys().collect::<Vec<_>>(),
        inventory.ingress.into_keys().collect::<Vec<_>>(),
    )
}

/// A tenant starts on the 0.2.0 engine with a load balancer call of every Service held in
/// flight, and endpoint updates arriving throughout; it is swapped live to the 0.3.0 engine, back
/// to 0.2.0 and to 0.3.0 again. Every swap succeeds (the replay checks that the new instance
/// starts exactly the calls, ids included, the running one did for the same inputs); the calls
/// in flight complete into whichever instance runs (no load balancer is started twice); call ids
/// only ever grow across both ways of numbering; and the tenant ends with the cloud a tenant on
/// the 0.3.0 engine alone reaches for the same inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_swap_across_wit_generations_under_load_keeps_state_and_calls_in_flight() {
    let executor = Executor::new(Arc::new(ManualClock::new(1_000)), 64);
    let world = MockWorld::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let puts = Arc::new(AtomicUsize::new(0));
    let cloud = Arc::new(GatedCloud { inner: world.clone(), gate: gate.clone(), puts: puts.clone() });
    let recovery = Recovery::for_component(component_v0_2());
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let tenant = spawn_tenant(
        &executor,
        TenantOptions::new("generations").with_recovery(recovery),
        created_instance(component_v0_2(), CallIds::default()),
        Backends { cloud, kube: world.kube() },
        Some(events_tx),
    );
    tenant.deliver(initial_inputs()).unwrap();
    let status = tenant.wait_for(|s| s.state_count("creation_in_progress") == GENERATION_SERVICES as u32).await.unwrap();
    assert_eq!(status.wit, Some("clb:difftracker@0.2.0"));
    while puts.load(Ordering::SeqCst) < GENERATION_SERVICES {
        tokio::task::yield_now().await;
    }

    // Endpoint rounds keep arriving while each swap prepares its instance (so the swap has
    // inputs to replay in the background), the rest after the swaps.
    let inputs = tenant.input_sender();
    let mut rounds = 1..=UPDATE_ROUNDS;
    let targets =
        [(component(), "clb:difftracker@0.3.0"), (component_v0_2(), "clb:difftracker@0.2.0"), (component(), "clb:difftracker@0.3.0")];
    for (done, (target, package)) in (1..).zip(targets) {
        let swap = tenant.hot_swap(factory_of(target));
        tokio::pin!(swap);
        let report = loop {
            tokio::select! {
                report = &mut swap => break report,
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {
                    if let Some(round) = rounds.next() {
                        inputs.send(endpoint_round(round)).unwrap();
                    }
                }
            }
        };
        let report = report.unwrap_or_else(|e| panic!("the swap to {package} is refused: {e}"));
        assert!(report.replayed_in_background > 0, "{report:?}");
        let status = tenant.wait_for(|s| s.swaps == done && s.wit == Some(package)).await.unwrap();
        assert_eq!(status.calls_outstanding, GENERATION_SERVICES, "the load balancer calls are still in flight");
    }
    for round in rounds {
        inputs.send(endpoint_round(round)).unwrap();
    }

    gate.add_permits(1_000);
    let status = tenant.wait_for(|s| s.is_idle() && s.state_count("created") == GENERATION_SERVICES as u32).await.unwrap();
    assert_eq!(puts.load(Ordering::SeqCst), GENERATION_SERVICES, "the calls in flight completed into the new instances");
    assert_eq!((status.swaps, status.swaps_refused, status.restarts), (3, 0, 0));
    tenant.stop().await.unwrap();
    let mut ids = Vec::new();
    while let Ok(event) = events_rx.try_recv() {
        if let TenantEvent::CallStarted { id, .. } = event {
            ids.push(id);
        }
    }
    assert!(ids.len() > 2 * GENERATION_SERVICES, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "call ids only grow across the generations: {ids:?}");

    // The same inputs on the 0.3.0 engine alone, without a swap, reach the same cloud.
    let alone = MockWorld::new();
    let reference = spawn_tenant(
        &Executor::new(Arc::new(ManualClock::new(1_000)), 64),
        TenantOptions::new("generations"),
        created_instance(component(), CallIds::default()),
        Backends { cloud: alone.cloud(), kube: alone.kube() },
        None,
    );
    // One batch, so that the tenant is idle only once it has applied every round.
    reference.deliver(initial_inputs().into_iter().chain((1..=UPDATE_ROUNDS).flat_map(endpoint_round)).collect()).unwrap();
    reference.wait_for(|s| s.is_idle() && s.state_count("created") == GENERATION_SERVICES as u32).await.unwrap();
    reference.stop().await.unwrap();
    assert_eq!(decisions(&world), decisions(&alone));
}

/// A running instance that traps once, when told to.
struct TrapsWhenTold(Arc<std::sync::atomic::AtomicBool>);

impl Intercept for TrapsWhenTold {
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> anyhow::Result<TickResult> {
        if self.0.swap(false, Ordering::SeqCst) {
            panic!("unreachable executed (injected trap)");
        }
        inner.tick(now_ms, completions)
    }
}

/// A swap during trap recovery: the running instance traps while the new one replays in the
/// background; the tenant recovers (rebuilt from its checkpoint and log), the swap is refused as
/// interrupted, since the log it replays no longer describes one history, and a second swap then
/// succeeds and the tenant converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_during_trap_recovery_is_refused_as_interrupted_and_the_next_one_succeeds() {
    // A real clock: the recovered tenant is backed off for 100 ms after its trap.
    let executor = Executor::new(Arc::new(SystemClock), 16);
    let world = MockWorld::new();
    let recovery = Recovery::for_component(component()).with_snapshots(SnapshotPolicy::every_inputs(usize::MAX));
    let options = TenantOptions::new("recovering").with_recovery(recovery);
    let trap = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running: Box<dyn EngineDriver> = Box::new(Intercepted::new(wasm_engine_created(CallIds::default()), TrapsWhenTold(trap.clone())));
    let tenant = spawn_tenant(&executor, options, running, Backends { cloud: Arc::new(world.clone()), kube: world.kube() }, None);
    let svc = sample_service("default", "web", "eeee0000-0000-4000-8000-000000000001");
    tenant
        .deliver(vec![
            KubeEvent::InitialListsComplete,
            KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
            KubeEvent::ServiceApplied(svc.clone()),
            KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
        ])
        .unwrap();
    tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 1).await.unwrap();

    // The new instance waits to be built until the running one has trapped and recovered; the
    // trap is armed once the swap has begun (its factory is called).
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (began, begun) = tokio::sync::oneshot::channel::<()>();
    let (wait, began) = (Arc::new(std::sync::Mutex::new(wait)), Arc::new(std::sync::Mutex::new(Some(began))));
    let held: EngineFactory = Arc::new(move |ids| {
        if let Some(began) = began.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = began.send(());
        }
        let _ = wait.lock().unwrap_or_else(|e| e.into_inner()).recv();
        Ok(Box::new(WasmEngine::new(component(), ids)?) as Box<dyn EngineDriver>)
    });
    let swap = tenant.hot_swap(held);
    begun.await.expect("the swap began");
    trap.store(true, Ordering::SeqCst);
    let svc2 = sample_service("default", "web2", "eeee0000-0000-4000-8000-000000000002");
    tenant.deliver(vec![KubeEvent::ServiceApplied(svc2)]).unwrap();
    tenant.wait_for(|s| s.restarts == 1).await.unwrap();
    go.send(()).unwrap();
    let error = swap.await.expect_err("the swap is refused");
    assert!(matches!(error, SwapError::Interrupted(_)), "{error:?}");
    assert_eq!(error.reason(), "interrupted");
    let status = tenant.wait_for(|s| s.swaps_refused == 1).await.unwrap();
    assert_eq!(status.swaps, 0);

    // The recovered tenant goes on, and swaps the next time.
    tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 2).await.unwrap();
    let report = tenant.hot_swap(factory_with(|| CountTicks(Arc::new(AtomicUsize::new(0))))).await.expect("the next swap succeeds");
    assert!(report.replayed_in_background > 0, "{report:?}");
    tenant.wait_for(|s| s.swaps == 1).await.unwrap();
    assert_eq!(world.inventory().load_balancers.len(), 2, "one load balancer per Service");
    tenant.stop().await.unwrap();
}
