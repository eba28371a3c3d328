//! The tokio tenant loop and executor with the component: calls run as tasks under the caps,
//! completions come back, time comes from a manual clock.

use difftracker_engine::io::KubeEvent;
use difftracker_runtime::backend::{CallFuture, CloudBackend, KubeBackend};
use difftracker_runtime::driver::CallIds;
use difftracker_runtime::executor::{Backends, Clock, Executor, ManualClock};
use difftracker_runtime::tenant::{spawn_tenant, TenantEvent, TenantOptions};
use difftracker_simulation::mock::MockWorld;
use difftracker_tests::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_loop_creates_and_deletes_a_service_through_mock_backends() {
    let clock = ManualClock::new(5_000_000);
    let executor = Executor::new(Arc::new(clock.clone()), 4);
    let world = MockWorld::new();
    let (observer, mut observed) = tokio::sync::mpsc::unbounded_channel();
    let tenant = spawn_tenant(
        &executor,
        TenantOptions::new("t1"),
        wasm_engine(CallIds::default()),
        Backends { cloud: world.cloud(), kube: world.kube() },
        Some(observer),
    );
    let svc = sample_service("default", "web", "aaaa0000-0000-4000-8000-000000000001");
    tenant
        .deliver(vec![
            KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
            KubeEvent::ServiceApplied(svc.clone()),
            KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[("10.244.1.7", "node-1")])),
        ])
        .unwrap();
    tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 1).await.unwrap();
    let inventory = world.inventory();
    assert_eq!(inventory.load_balancers.len(), 1);
    assert_eq!(inventory.locations["10.0.0.4"].len(), 1);

    tenant.deliver(vec![KubeEvent::ServiceApplied(deleting(&svc))]).unwrap();
    tenant.wait_for(|s| s.is_idle() && s.engine.states.iter().all(|(_, n)| *n == 0)).await.unwrap();
    assert!(world.inventory().is_clean(), "{:?}", world.inventory());
    let mut engine = tenant.stop().await.unwrap();
    assert!(engine.status().unwrap().settled);

    let mut started = 0;
    let mut completed = 0;
    while let Ok(event) = observed.try_recv() {
        match event {
            TenantEvent::CallStarted { .. } => started += 1,
            TenantEvent::CallCompleted { .. } => completed += 1,
            _ => {}
        }
    }
    assert_eq!(started, 17, "five start-up lists, six calls to create, six to delete");
    assert_eq!(started, completed);
}

/// A cloud that fails the first public IP PUT, so the engine needs timers, and counts concurrency.
struct FlakyCloud {
    inner: MockWorld,
    calls: AtomicUsize,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl CloudBackend for FlakyCloud {
    fn call(&self, call: difftracker_engine::io::CloudCall) -> CallFuture {
        // Only the first public IP fails (the start-up lists must go through: their retry
        // would need the clock too).
        let n = if call.label() == "PUT publicIPAddresses" { self.calls.fetch_add(1, Ordering::SeqCst) } else { 1 };
        let running = self.running.clone();
        let peak = self.peak.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            running.fetch_sub(1, Ordering::SeqCst);
            if n == 0 {
                Err(difftracker_engine::io::CallError::http(500, "InternalServerError", "first call fails"))
            } else {
                CloudBackend::call(&inner, call).await
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_for_the_clock_and_calls_respect_the_tenant_cap() {
    let clock = ManualClock::new(1_000);
    let executor = Executor::new(Arc::new(clock.clone()), 64);
    let world = MockWorld::new();
    let peak = Arc::new(AtomicUsize::new(0));
    let cloud = Arc::new(FlakyCloud { inner: world.clone(), calls: AtomicUsize::new(0), running: Arc::default(), peak: peak.clone() });
    let mut options = TenantOptions::new("t2");
    options.max_calls_in_flight = 3;
    let tenant = spawn_tenant(
        &executor,
        options,
        wasm_engine(CallIds::default()),
        Backends { cloud, kube: world.kube() as Arc<dyn KubeBackend> },
        None,
    );
    let mut events = vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4"))];
    for n in 0..8 {
        events.push(KubeEvent::ServiceApplied(sample_service("ns", &format!("s{n}"), &format!("bbbb0000-0000-4000-8000-{n:012}"))));
    }
    tenant.deliver(events).unwrap();
    // The first public IP fails: its operation waits for a retry timer.
    let waiting = tenant.wait_for(|s| s.calls_outstanding == 0 && s.next_wake_ms.is_some() && s.state_count("created") == 7).await.unwrap();
    let wake = waiting.next_wake_ms.unwrap();
    assert!(wake > clock.now_ms(), "the retry is in the future");
    // Virtual time jumps to the retry.
    clock.set(wake);
    let done = tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 8).await.unwrap();
    assert!(done.last_tick_ms >= wake);
    assert!(peak.load(Ordering::SeqCst) <= 3, "peak {} calls at once", peak.load(Ordering::SeqCst));
    tenant.stop().await.unwrap();
}

/// A cloud whose `PUT loadBalancers` calls wait until released.
struct GatedCloud {
    inner: MockWorld,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl CloudBackend for GatedCloud {
    fn call(&self, call: difftracker_engine::io::CloudCall) -> CallFuture {
        let inner = self.inner.clone();
        let gate = self.gate.clone();
        let waiting = self.waiting.clone();
        Box::pin(async move {
            if call.label() == "PUT loadBalancers" {
                waiting.fetch_add(1, Ordering::SeqCst);
                let _permit = gate
                    .acquire()
                    .await
                    .map_err(|_| difftracker_engine::io::CallError::of_kind(difftracker_engine::io::ErrorKind::Transport, "gate closed"))?;
            }
            CloudBackend::call(&inner, call).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_engine_mid_operation_completes_in_flight_calls_into_the_new_instance() {
    let clock = ManualClock::new(1_000);
    let executor = Executor::new(Arc::new(clock.clone()), 16);
    let world = MockWorld::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let waiting = Arc::new(AtomicUsize::new(0));
    let cloud = Arc::new(GatedCloud { inner: world.clone(), gate: gate.clone(), waiting: waiting.clone() });
    let ids = CallIds::default();
    let tenant =
        spawn_tenant(&executor, TenantOptions::new("swap"), wasm_engine(ids.clone()), Backends { cloud, kube: world.kube() }, None);
    let svc = sample_service("default", "web", "dddd0000-0000-4000-8000-000000000001");
    tenant.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::ServiceApplied(svc)]).unwrap();
    // Wait until the load balancer call is in flight (held at the gate).
    tenant.wait_for(|s| s.calls_outstanding == 1 && s.state_count("creation_in_progress") == 1).await.unwrap();
    while waiting.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }

    let fresh = difftracker_runtime::driver::WasmEngine::new(component(), ids).unwrap();
    tenant.swap_engine(Box::new(fresh)).await.unwrap();
    gate.add_permits(16);

    tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 1).await.unwrap();
    assert_eq!(waiting.load(Ordering::SeqCst), 1, "the new instance did not start the load balancer again");
    assert_eq!(world.inventory().load_balancers.len(), 1);

    // A swap into an instance that cannot take the state fails and leaves the old one running.
    let mut created = difftracker_runtime::driver::WasmEngine::new(component(), CallIds::default()).unwrap();
    difftracker_runtime::driver::EngineDriver::create(&mut created, &tenant_config()).unwrap();
    let broken = Box::new(difftracker_runtime::driver::Intercepted::new(Box::new(created), BrokenRestore));
    assert!(tenant.swap_engine(broken).await.is_err());
    let svc2 = sample_service("default", "web2", "dddd0000-0000-4000-8000-000000000002");
    tenant.deliver(vec![KubeEvent::ServiceApplied(svc2)]).unwrap();
    tenant.wait_for(|s| s.is_idle() && s.state_count("created") == 2).await.unwrap();
    tenant.stop().await.unwrap();
}

/// Refuses every snapshot it is asked to restore.
struct BrokenRestore;

impl difftracker_runtime::driver::Intercept for BrokenRestore {
    fn kind(&self, _: &dyn difftracker_runtime::driver::EngineDriver) -> &'static str {
        "broken"
    }
    fn restore(&mut self, _: &mut dyn difftracker_runtime::driver::EngineDriver, _: &[u8]) -> anyhow::Result<()> {
        anyhow::bail!("this instance refuses every snapshot")
    }
}
