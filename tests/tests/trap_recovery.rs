//! Trap recovery in the tenant loop, with the real component: a tenant whose engine runs under a
//! small memory limit is handed an input too large for it (an event, or a call's completion), so
//! the guest traps. The tenant rebuilds the instance from its last good snapshot plus the inputs
//! logged since, quarantines the input, counts a restart and goes on; calls in flight complete
//! into the new instance; a tenant beside it is unaffected; one that keeps trapping stops.
//! Nothing here depends on timing: every wait is for a state of the tenant.

use difftracker_engine::io::{CallError, CloudCall, EventType, KubeEvent, Service};
use difftracker_runtime::backend::{CallFuture, CloudBackend};
use difftracker_runtime::driver::{CallIds, EngineDriver, WasmEngine};
use difftracker_runtime::executor::{Backends, Clock, Executor, ManualClock};
use difftracker_runtime::observe::Observatory;
use difftracker_runtime::tenant::{
    spawn_tenant, QuarantinedKind, Recovery, SnapshotPolicy, TenantHandle, TenantOptions, TenantStatus, REASON_INPUT_QUARANTINED,
};
use difftracker_runtime::wasm::{EngineComponent, Runtime, RuntimeOptions, SandboxLimits};
use difftracker_simulation::mock::MockWorld;
use difftracker_tests::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The built-in component in a runtime whose instances get 8 MiB of linear memory: enough for a
/// few Services, not for a 16 MiB input.
fn small_component() -> &'static EngineComponent {
    static COMPONENT: OnceLock<EngineComponent> = OnceLock::new();
    COMPONENT.get_or_init(|| {
        let runtime = Runtime::new(RuntimeOptions {
            cache_dir: Some(test_cache_dir()),
            pooling: false,
            limits: SandboxLimits { memory_bytes: 8 << 20, cpu_deadline: Duration::from_secs(10), ..SandboxLimits::default() },
            ..RuntimeOptions::default()
        })
        .expect("wasmtime runtime");
        runtime.load_builtin().expect("the built-in component loads")
    })
}

const HUGE: usize = 16 << 20;

/// A created instance of `component` whose initial lists were empty (the marker delivered).
fn created_engine(component: &EngineComponent, ids: CallIds) -> Box<dyn EngineDriver> {
    let mut engine = WasmEngine::new(component, ids).expect("instantiate");
    engine.create(&tenant_config()).expect("create");
    engine.deliver(0, vec![KubeEvent::InitialListsComplete]).expect("the marker");
    Box::new(engine)
}

fn recovery(component: &EngineComponent, snapshots: SnapshotPolicy) -> Recovery {
    Recovery::for_component(component).with_snapshots(snapshots)
}

/// A Service whose name alone is larger than the engine's memory limit.
fn huge_service() -> Service {
    let mut service = sample_service("default", "huge", "eeee0000-0000-4000-8000-00000000dead");
    service.meta.name = "x".repeat(HUGE);
    service
}

/// A cloud whose `PUT loadBalancers` calls wait until released, counting them.
struct GatedCloud {
    inner: MockWorld,
    gate: Arc<tokio::sync::Semaphore>,
    load_balancer_puts: Arc<AtomicUsize>,
}

impl CloudBackend for GatedCloud {
    fn call(&self, call: CloudCall) -> CallFuture {
        let inner = self.inner.clone();
        let gate = self.gate.clone();
        let puts = self.load_balancer_puts.clone();
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

/// A cloud whose first `PUT publicIPAddresses` fails with an error message larger than the
/// engine's memory limit; every other call goes to the mock.
struct HugeErrorCloud {
    inner: MockWorld,
    public_ip_puts: Arc<AtomicUsize>,
}

impl CloudBackend for HugeErrorCloud {
    fn call(&self, call: CloudCall) -> CallFuture {
        let first = call.label() == label::PUT_PIP && self.public_ip_puts.fetch_add(1, Ordering::SeqCst) == 0;
        let inner = self.inner.clone();
        Box::pin(async move {
            if first {
                Err(CallError::http(500, "InternalServerError", &"e".repeat(HUGE)))
            } else {
                CloudBackend::call(&inner, call).await
            }
        })
    }
}

/// Waits (without a clock) for a condition on a tenant that may stop on an error instead.
async fn settle(tenant: &TenantHandle, what: &str, done: impl FnMut(&TenantStatus) -> bool) -> TenantStatus {
    match tenant.wait_for(done).await {
        Ok(status) => status,
        Err(e) => panic!("{what}: {e:#}; status {:?}", tenant.status()),
    }
}

/// The tenant traps on a delivered event while a call is in flight: the event is quarantined,
/// the Service delivered with it goes on, the call in flight completes into the new instance.
async fn a_trapping_event_is_quarantined(snapshots: SnapshotPolicy) {
    let clock = ManualClock::new(1_000_000);
    let executor = Executor::new(Arc::new(clock.clone()), 16);
    let observatory = Observatory::new();

    // Tenant "small": the 8 MiB component, with recovery.
    let world = MockWorld::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let puts = Arc::new(AtomicUsize::new(0));
    let cloud = Arc::new(GatedCloud { inner: world.clone(), gate: gate.clone(), load_balancer_puts: puts.clone() });
    let ids = CallIds::default();
    let tenant = observatory.spawn_tenant(
        &executor,
        TenantOptions::new("small").with_recovery(recovery(small_component(), snapshots)),
        created_engine(small_component(), ids.clone()),
        Backends { cloud, kube: world.kube() },
        None,
    );

    // Tenant "beside": the default component, also recovering, on the same executor and clock.
    let beside_world = MockWorld::new();
    let beside = observatory.spawn_tenant(
        &executor,
        TenantOptions::new("beside").with_recovery(recovery(component(), snapshots)),
        created_engine(component(), CallIds::default()),
        Backends { cloud: beside_world.cloud(), kube: beside_world.kube() },
        None,
    );

    let web = sample_service("default", "web", "aaaa0000-0000-4000-8000-000000000001");
    tenant
        .deliver(vec![
            KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
            KubeEvent::ServiceApplied(web.clone()),
            KubeEvent::EndpointSliceApplied(sample_slice(&web, &[("10.244.1.7", "node-1")])),
        ])
        .unwrap();
    // The load balancer of "web" is in flight, held at the gate.
    let before =
        settle(&tenant, "web's load balancer in flight", |s| s.calls_outstanding == 1 && s.state_count("creation_in_progress") == 1).await;
    while puts.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let next_id_before = ids.peek();

    // One batch: a good Service, the huge one, another good Service.
    let api = sample_service("default", "api", "aaaa0000-0000-4000-8000-000000000002");
    let db = sample_service("default", "db", "aaaa0000-0000-4000-8000-000000000003");
    tenant
        .deliver(vec![
            KubeEvent::ServiceApplied(api.clone()),
            KubeEvent::ServiceApplied(huge_service()),
            KubeEvent::ServiceApplied(db.clone()),
        ])
        .unwrap();
    let beside_svc = sample_service("default", "beside", "bbbb0000-0000-4000-8000-000000000001");
    beside.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::ServiceApplied(beside_svc)]).unwrap();

    let recovered = settle(&tenant, "the huge Service quarantined", |s| s.quarantined_total == 1 && s.backoff.is_some()).await;
    assert_eq!(recovered.restarts, 1, "{recovered:?}");
    assert!(recovered.error.is_none() && !recovered.stopped);
    let q = &recovered.quarantined[0];
    assert_eq!(q.kind, QuarantinedKind::Event);
    assert!(q.summary.starts_with("ServiceApplied default/xxxx") && q.summary.contains("bytes"), "{}", q.summary);
    assert!(q.summary.len() < 200, "the summary is short: {}", q.summary.len());
    assert!(q.reason.contains("deliver") && q.reason.contains("memory"), "{}", q.reason);
    assert!(!q.reason.contains('\n'), "one line: {}", q.reason);
    assert!(q.tick > before.ticks);
    // The operation from before the trap is intact and its call is still in flight.
    assert!(recovered.state_count("creation_in_progress") >= 1, "{recovered:?}");
    assert!(ids.peek() > next_id_before, "api and db started calls with new ids");
    // The trap backs the tenant off: its next tick waits until the clock passes the backoff.
    assert_eq!(recovered.backoff, Some(std::time::Duration::from_millis(100)), "{recovered:?}");
    clock.advance(100);

    // Release the gate: the load balancer call started before the trap completes into the new
    // instance, which does not start it again; api and db are created too.
    gate.add_permits(64);
    let done = settle(&tenant, "three Services created", |s| s.is_idle() && s.state_count("created") == 3).await;
    assert_eq!(done.restarts, 1);
    assert_eq!(puts.load(Ordering::SeqCst), 3, "one load balancer each for web, api and db: web's was not restarted");
    let inventory = world.inventory();
    assert_eq!(inventory.load_balancers.len(), 3, "{inventory:?}");

    // The tenant beside ran on, untouched.
    let beside_done = settle(&beside, "beside created", |s| s.is_idle() && s.state_count("created") == 1).await;
    assert_eq!(beside_done.restarts, 0);
    assert!(beside_done.quarantined.is_empty());

    // The restart is counted in the host metrics and shown on the status page.
    let patience = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = observatory.render_metrics();
        if metrics.contains("difftracker_host_engine_restarts_total{tenant=\"small\"} 1") {
            assert!(!metrics.contains("difftracker_host_engine_restarts_total{tenant=\"beside\"}"), "{metrics}");
            break;
        }
        assert!(Instant::now() < patience, "no restart counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let page = observatory.status_page();
    assert!(page.contains("engine restarts after a trap: 1; inputs quarantined: 1"), "{page}");

    // The quarantine is loud: a Warning Event on the skipped Service, the tenant not ready.
    let huge = huge_service();
    let warnings: Vec<_> = world.inventory().events.into_iter().filter(|e| e.reason == REASON_INPUT_QUARANTINED).collect();
    assert_eq!(warnings.len(), 1, "one Warning Event on the skipped Service");
    assert!(warnings[0].target.name == huge.meta.name && warnings[0].target.uid == huge.meta.uid);
    assert_eq!(warnings[0].event_type, EventType::Warning);
    assert!(warnings[0].message.len() <= 1100 && warnings[0].message.contains("skipped"), "{}", warnings[0].message);
    let not_ready = observatory.readiness().unwrap_err();
    assert!(not_ready.contains("tenant small skipped 1 input(s)"), "{not_ready}");
    assert!(!not_ready.contains("beside"), "{not_ready}");

    let mut engine = tenant.stop().await.unwrap();
    assert!(engine.status().unwrap().settled);
    beside.stop().await.unwrap();
}

/// The replay-log design: one snapshot at start, every input since replayed on recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_event_is_quarantined_and_the_tenant_goes_on_replaying_its_log() {
    a_trapping_event_is_quarantined(SnapshotPolicy::every_inputs(usize::MAX)).await;
}

/// The same with a snapshot after every tick (nothing to replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_event_is_quarantined_with_a_snapshot_per_tick() {
    a_trapping_event_is_quarantined(SnapshotPolicy::every_tick()).await;
}

/// A completion the engine traps on is retried once on the fresh instance, then quarantined:
/// its call looks lost, and the engine's operation timeout recovers the Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_completion_is_quarantined_and_the_operation_timeout_recovers_it() {
    let clock = ManualClock::new(1_000_000);
    let executor = Executor::new(Arc::new(clock.clone()), 16);
    let world = MockWorld::new();
    let public_ip_puts = Arc::new(AtomicUsize::new(0));
    let cloud = Arc::new(HugeErrorCloud { inner: world.clone(), public_ip_puts: public_ip_puts.clone() });
    let tenant = spawn_tenant(
        &executor,
        TenantOptions::new("completion").with_recovery(recovery(small_component(), SnapshotPolicy::default())),
        created_engine(small_component(), CallIds::default()),
        Backends { cloud, kube: world.kube() },
        None,
    );
    let web = sample_service("default", "web", "cccc0000-0000-4000-8000-000000000001");
    tenant.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::ServiceApplied(web)]).unwrap();

    let recovered = settle(&tenant, "the completion quarantined", |s| s.quarantined_total == 1).await;
    assert_eq!(recovered.restarts, 1);
    let q = &recovered.quarantined[0];
    assert!(matches!(q.kind, QuarantinedKind::Completion(_)), "{q:?}");
    assert!(q.summary.contains("PUT publicIPAddresses") && q.summary.contains("error 500 InternalServerError"), "{}", q.summary);
    assert!(q.reason.contains("tick"), "{}", q.reason);
    assert_eq!(recovered.state_count("creation_in_progress"), 1, "the operation waits for its lost call: {recovered:?}");

    // Nothing is in flight; the engine's next wake-up is the operation timeout. Jump to each
    // wake-up until the Service is created.
    let mut wakes = 0;
    loop {
        let status = settle(&tenant, "waiting for a timer", |s| {
            (s.calls_outstanding == 0 && s.next_wake_ms.is_some_and(|w| w > s.last_tick_ms)) || s.state_count("created") == 1
        })
        .await;
        if status.state_count("created") == 1 {
            break;
        }
        let wake = status.next_wake_ms.unwrap();
        if wakes == 0 {
            assert!(wake >= 1_000_000 + 5 * 60 * 1000, "the first wake-up is the 5 minute operation timeout: {wake}");
        }
        clock.set(wake);
        let _ = settle(&tenant, "ticked at the wake-up", |s| s.last_tick_ms >= wake).await;
        wakes += 1;
        assert!(wakes < 50, "not created after {wakes} wake-ups: {status:?}");
    }
    let done = settle(&tenant, "settled", |s| s.is_idle()).await;
    assert_eq!(done.restarts, 1);
    assert_eq!(done.state_count("created"), 1);
    assert_eq!(public_ip_puts.load(Ordering::SeqCst), 2, "the public IP was put again after the timeout");
    assert!(world.inventory().load_balancers.len() == 1, "{:?}", world.inventory());
    assert!(clock.now_ms() >= 1_000_000 + 5 * 60 * 1000);
    tenant.stop().await.unwrap();
}

/// A guest that traps on tick after tick is stopped with a clear error instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_keeps_trapping_stops_the_tenant() {
    let clock = ManualClock::new(1_000_000);
    let executor = Executor::new(Arc::new(clock.clone()), 16);
    let world = MockWorld::new();
    let tenant = spawn_tenant(
        &executor,
        TenantOptions::new("looping").with_recovery(recovery(small_component(), SnapshotPolicy::default())),
        created_engine(small_component(), CallIds::default()),
        Backends { cloud: world.cloud(), kube: world.kube() },
        None,
    );
    // Three traps in a row are recovered (three restarts within the window)...
    for n in 1..=3u64 {
        tenant.deliver(vec![KubeEvent::ServiceApplied(huge_service())]).unwrap();
        let status = settle(&tenant, "quarantined", |s| s.quarantined_total == n && s.consecutive_traps == n as u32).await;
        assert_eq!(status.restarts, n);
        // Backed off, 100 ms doubling; the next tick waits for the clock.
        assert_eq!(status.backoff, Some(std::time::Duration::from_millis(100 << (n - 1))), "{status:?}");
        clock.advance(100 << (n - 1));
    }
    // ...the fourth stops the tenant.
    tenant.deliver(vec![KubeEvent::ServiceApplied(huge_service())]).unwrap();
    let err = tenant.wait_for(|_| false).await.unwrap_err();
    let status = tenant.status();
    assert!(status.stopped, "{status:?}");
    let error = status.error.clone().unwrap_or_default();
    assert!(error.contains("trapped again after 3 restart(s) within 100 ticks"), "{error}");
    assert!(format!("{err:#}").contains("looping"), "{err:#}");
    assert_eq!(status.restarts, 3);
    assert_eq!(status.traps, 4);
    assert!(tenant.stop().await.is_err());
}

/// Without a recovery the tenant stops on the first trap, as it always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recovery_a_trap_stops_the_tenant() {
    let clock = ManualClock::new(1_000_000);
    let executor = Executor::new(Arc::new(clock.clone()), 16);
    let world = MockWorld::new();
    let tenant = spawn_tenant(
        &executor,
        TenantOptions::new("plain"),
        created_engine(small_component(), CallIds::default()),
        Backends { cloud: world.cloud(), kube: world.kube() },
        None,
    );
    tenant.deliver(vec![KubeEvent::ServiceApplied(huge_service())]).unwrap();
    assert!(tenant.wait_for(|_| false).await.is_err());
    let status = tenant.status();
    assert!(status.error.as_deref().is_some_and(|e| e.contains("trap")), "{status:?}");
    assert_eq!(status.restarts, 0);
}

/// What a snapshot costs next to a tick, at a few sizes (`--ignored --nocapture` to see it).
#[test]
#[ignore = "a measurement, not a check"]
fn snapshot_cost_relative_to_a_tick() {
    for services in [10usize, 100, 1000] {
        let mut h = Harness::wasm();
        let mut events = vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4"))];
        for i in 0..services {
            let svc = sample_service("bench", &format!("svc-{i}"), &format!("{i:08x}-0000-4000-8000-000000000000"));
            events.push(KubeEvent::ServiceApplied(svc.clone()));
            events.push(KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[(&format!("10.244.{}.{}", i / 250, i % 250 + 1), "node-1")])));
        }
        h.deliver(events).unwrap();
        h.run_until_idle(100_000).unwrap();
        assert_eq!(h.state_count("created") as usize, services);

        let rounds = 20;
        let t = Instant::now();
        let mut snap = Vec::new();
        for _ in 0..rounds {
            snap = h.engine.snapshot().unwrap();
        }
        let snapshot = t.elapsed() / rounds;

        let t = Instant::now();
        for _ in 0..rounds {
            let mut fresh = WasmEngine::new(component(), CallIds::default()).unwrap();
            fresh.restore(&snap).unwrap();
        }
        let restore = t.elapsed() / rounds;

        // A steady-state tick: one endpoint change delivered, then ticks until settled.
        let t = Instant::now();
        let mut ticks = 0u64;
        for r in 0..rounds as usize {
            let svc = sample_service("bench", &format!("svc-{r}"), &format!("{r:08x}-0000-4000-8000-000000000000"));
            h.deliver(vec![KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[(&format!("10.245.0.{}", r + 1), "node-1")]))]).unwrap();
            let before = h.ticks;
            h.run_until_idle(1_000).unwrap();
            ticks += h.ticks - before;
        }
        let per_tick = t.elapsed() / ticks as u32;

        let t = Instant::now();
        for _ in 0..rounds {
            h.engine.tick(h.now_ms, vec![]).unwrap();
            h.engine.status().unwrap();
        }
        let idle_tick = t.elapsed() / rounds;
        println!(
            "services {services:>5}: snapshot {} bytes in {snapshot:?}, instantiate+restore {restore:?}; busy tick (deliver+tick+status) {per_tick:?}, idle tick+status {idle_tick:?}",
            snap.len()
        );
    }
}
