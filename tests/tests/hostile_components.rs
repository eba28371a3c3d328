//! The hostile-component suite (issue 13): a guest that does its worst is refused at load with a
//! clear error or contained at run time, and in every test a healthy tenant beside it (the real
//! engine, on its own mock cloud, in the same executor) still converges.
//!
//! The hostile guests are the misbehaving engine (`tests/guests/misbehaving/`, built by
//! `host/simulation/build.rs`; its tenant name picks the misbehaviour, see its `lib.rs`) and, for
//! another WIT version, components that `wit-component` makes from `wit/` with the package's
//! version changed. Each hostile tenant recovers from traps with a snapshot after every tick, so
//! what recovery does is the same on every run; the sandbox's CPU deadline is short (200 ms) for
//! the guests that loop, so they end fast. Nothing here waits on time: every wait is for a state
//! of a tenant, under a generous guard.

use difftracker_engine::io::{KubeEvent, TenantConfig};
use difftracker_runtime::driver::{CallIds, EngineDriver, WasmEngine};
use difftracker_runtime::executor::{Backends, Executor, ManualClock};
use difftracker_runtime::tenant::{spawn_tenant, Recovery, SnapshotPolicy, TenantHandle, TenantOptions, TenantStatus};
use difftracker_runtime::wasm::{sandbox, EngineComponent, Runtime, RuntimeOptions, SandboxLimits, WitGeneration};
use difftracker_simulation::mock::MockWorld;
use difftracker_tests::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long any wait may take before the test fails (a guard, not an expectation).
const GUARD: Duration = Duration::from_secs(120);

/// The hostile tenants' sandbox: 64 MiB of memory and small per-tick caps. The CPU deadline is
/// the default: a guest that does not loop finishes well within it even on a loaded machine.
fn hostile_limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 64 << 20,
        max_calls_per_tick: 1_000,
        max_events_per_tick: 1_000,
        max_output_bytes_per_tick: 1 << 20,
        ..SandboxLimits::default()
    }
}

/// [`hostile_limits`] with a short CPU deadline, for the guests that loop.
fn looping_limits() -> SandboxLimits {
    SandboxLimits { cpu_deadline: Duration::from_millis(200), ..hostile_limits() }
}

/// The misbehaving component in a runtime of its own whose sandboxes have `limits`.
fn misbehaving(limits: SandboxLimits) -> EngineComponent {
    let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(test_cache_dir()), pooling: false, limits, ..RuntimeOptions::default() })
        .expect("wasmtime runtime");
    runtime.load(difftracker_simulation::MISBEHAVING_WASM).expect("the misbehaving component loads")
}

/// A created instance of the misbehaving component, misbehaving as `mode` says.
fn misbehaving_engine(component: &EngineComponent, mode: &str) -> WasmEngine {
    let mut engine = WasmEngine::new(component, CallIds::default()).expect("instantiate");
    engine.create(&TenantConfig { tenant: mode.into(), seed: 1, ..TenantConfig::default() }).expect("create");
    engine
}

/// The tenants of one test: one executor and clock, each tenant on a mock world of its own.
struct Scene {
    executor: Executor,
    clock: ManualClock,
}

impl Scene {
    fn new() -> Scene {
        let clock = ManualClock::new(1_000_000);
        Scene { executor: Executor::new(Arc::new(clock.clone()), 64), clock }
    }

    /// A tenant of the misbehaving engine, recovering from traps with a snapshot per tick and
    /// at most `max_restarts` restarts.
    fn hostile(&self, mode: &str, component: &EngineComponent, max_restarts: u32) -> (TenantHandle, MockWorld) {
        let world = MockWorld::new();
        let mut recovery = Recovery::for_component(component).with_snapshots(SnapshotPolicy::every_tick());
        recovery.max_restarts = max_restarts;
        let tenant = spawn_tenant(
            &self.executor,
            TenantOptions::new(mode).with_recovery(recovery),
            Box::new(misbehaving_engine(component, mode)),
            Backends { cloud: world.cloud(), kube: world.kube() },
            None,
        );
        (tenant, world)
    }

    /// A tenant of the real engine (trap recovery on, as in production) with one Service on its
    /// way to a load balancer.
    fn healthy(&self) -> Healthy {
        let world = MockWorld::new();
        let tenant = spawn_tenant(
            &self.executor,
            TenantOptions::new("healthy").with_recovery(Recovery::for_component(component())),
            wasm_engine(CallIds::default()),
            Backends { cloud: world.cloud(), kube: world.kube() },
            None,
        );
        let healthy = Healthy { tenant, world };
        healthy.add_service("web", "aaaa0000-0000-4000-8000-000000000001");
        healthy
    }
}

/// The real engine's tenant beside the hostile one.
struct Healthy {
    tenant: TenantHandle,
    world: MockWorld,
}

impl Healthy {
    fn add_service(&self, name: &str, uid: &str) {
        let service = sample_service("default", name, uid);
        let slice = sample_slice(&service, &[("10.244.1.7", "node-1")]);
        self.tenant
            .deliver(vec![
                KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")),
                KubeEvent::ServiceApplied(service),
                KubeEvent::EndpointSliceApplied(slice),
            ])
            .unwrap();
    }

    /// After the hostile tenant did its worst: the first Service converged, and a Service added
    /// now converges too, each with its load balancer in the cloud.
    async fn still_converges(self) {
        let created_one = |s: &TenantStatus| s.is_idle() && s.state_count("created") == 1;
        let status = tokio::time::timeout(GUARD, self.tenant.wait_for(created_one)).await.expect("guard: web converges");
        let status = status.unwrap_or_else(|e| panic!("the healthy tenant failed: {e:#}"));
        assert_eq!(status.restarts, 0, "{status:?}");

        self.add_service("api", "aaaa0000-0000-4000-8000-000000000002");
        let created_two = |s: &TenantStatus| s.is_idle() && s.state_count("created") == 2;
        let status = tokio::time::timeout(GUARD, self.tenant.wait_for(created_two)).await.expect("guard: api converges");
        let status = status.unwrap_or_else(|e| panic!("the healthy tenant failed: {e:#}"));
        assert!(status.error.is_none() && !status.stopped && status.quarantined.is_empty(), "{status:?}");
        assert_eq!(self.world.inventory().load_balancers.len(), 2, "{:?}", self.world.inventory());
        self.tenant.stop().await.unwrap();
    }
}

/// Waits for a tenant to stop; its status then says why.
async fn stopped(tenant: &TenantHandle) -> TenantStatus {
    let mut status = tenant.subscribe();
    let waited = tokio::time::timeout(GUARD, status.wait_for(|s| s.stopped)).await.expect("guard: the hostile tenant stops");
    waited.expect("the status channel outlives the loop");
    // Stopped is final: the status no longer changes.
    tenant.status()
}

/// The stopped tenant's error, which must name why it stopped.
fn stop_reason(status: &TenantStatus) -> &str {
    status.error.as_deref().unwrap_or_else(|| panic!("the tenant stopped without an error: {status:?}"))
}

/// Feeds the tenant one event per tick until it stops (at most `max_ticks` ticks), moving the
/// clock past each backoff a trap earns it.
async fn tick_until_stopped(tenant: &TenantHandle, clock: &ManualClock, max_ticks: u64) -> TenantStatus {
    for i in 0..max_ticks {
        let before = tenant.status();
        if before.stopped {
            return before;
        }
        if let Some(backoff) = before.backoff {
            clock.advance(backoff.as_millis() as u64);
        }
        tenant.deliver(vec![KubeEvent::NodeApplied(sample_node(&format!("node-{i}"), "10.0.0.9"))]).unwrap();
        let mut status = tenant.subscribe();
        // Not on the restart count: it is published before the tick is, within the same tick.
        let next = status.wait_for(|s| s.stopped || s.ticks > before.ticks);
        tokio::time::timeout(GUARD, next).await.expect("guard: the tenant ticks").expect("the status channel outlives the loop");
    }
    stopped(tenant).await
}

/// A tick that trapped, one rebuild, and the fresh instance trapping again with no new input: the
/// tenant stopped instead of looping, saying why (`what`).
fn assert_trapped_twice_in_tick(status: &TenantStatus, what: &str) {
    let reason = stop_reason(status);
    assert!(reason.contains("fresh instance") && reason.contains("no new input"), "{reason}");
    assert!(reason.contains("guest trapped in `tick`") && reason.contains(what), "{reason}");
    assert_eq!(status.restarts, 1, "one rebuild, then the tenant stops: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_looping_in_tick_is_interrupted_at_its_cpu_deadline_and_the_tenant_stops_with_the_reason() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, _) = scene.hostile("loop-in-tick", &misbehaving(looping_limits()), 3);
    let status = stopped(&hostile).await;
    assert_trapped_twice_in_tick(&status, "CPU deadline of 200 ms");
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_looping_in_restore_is_interrupted_and_the_tenant_stops_with_the_reason() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, _) = scene.hostile("loop-in-restore", &misbehaving(looping_limits()), 3);
    let status = stopped(&hostile).await;
    let reason = stop_reason(&status);
    assert!(reason.contains("rebuilding the engine from its last good snapshot"), "{reason}");
    assert!(reason.contains("guest trapped in `restore`") && reason.contains("CPU deadline of 200 ms"), "{reason}");
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_allocating_without_end_traps_at_its_memory_limit_and_the_tenant_stops_with_the_reason() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, _) = scene.hostile("alloc-unbounded", &misbehaving(hostile_limits()), 3);
    let status = stopped(&hostile).await;
    let reason = stop_reason(&status);
    assert!(reason.contains("fresh instance") && reason.contains("`tick`") && reason.contains("memory"), "{reason}");
    assert_eq!(status.restarts, 1, "{status:?}");
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_trapping_every_third_tick_is_restarted_until_its_restart_budget_is_spent() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, _) = scene.hostile("trap-every-3rd-tick", &misbehaving(hostile_limits()), 3);

    // Each trap costs a restart, and the fresh instance ticks on.
    let mut restarted = hostile.subscribe();
    let first = tokio::time::timeout(GUARD, async {
        loop {
            let before = hostile.status().ticks;
            hostile.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.9"))]).unwrap();
            let status = restarted.wait_for(|s| s.ticks > before || s.stopped).await.unwrap().clone();
            if status.restarts > 0 || status.stopped {
                return status;
            }
        }
    })
    .await
    .expect("guard: the third tick traps");
    assert_eq!(first.restarts, 1, "{first:?}");
    assert!(first.error.is_none() && !first.stopped, "the tenant recovered: {first:?}");
    assert_eq!(first.ticks, 3, "the third tick trapped and was applied again on a fresh instance");

    // Past the budget (3 restarts within 100 ticks) the tenant stops instead of restarting in a loop.
    let status = tick_until_stopped(&hostile, &scene.clock, 100).await;
    let reason = stop_reason(&status);
    assert!(reason.contains("trapped again after 3 restart(s)"), "{reason}");
    assert!(reason.contains("guest trapped in `tick`") && reason.contains("trap-every-nth-tick"), "the guest's panic: {reason}");
    assert_eq!(status.restarts, 3, "{status:?}");
    assert_eq!(
        status.ticks, 8,
        "traps at ticks 3, 5, 7 and 9 (a fresh instance's first tick applies the trapping tick's input again): {status:?}"
    );
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_trapping_in_snapshot_leaves_no_checkpoint_and_the_tenant_stops_with_the_reason() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, _) = scene.hostile("trap-in-snapshot", &misbehaving(hostile_limits()), 3);
    let status = stopped(&hostile).await;
    let reason = stop_reason(&status);
    assert!(reason.contains("taking a snapshot") && reason.contains("guest trapped in `snapshot`"), "{reason}");
    assert!(reason.contains("no good snapshot of the engine to recover from"), "{reason}");
    assert!(reason.contains("trap-in-snapshot: snapshot panics"), "the guest's panic message: {reason}");
    assert_eq!(status.restarts, 0, "{status:?}");
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_flooding_calls_traps_at_the_call_cap_and_none_of_its_calls_is_started() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, world) = scene.hostile("flood-calls", &misbehaving(hostile_limits()), 3);
    let status = stopped(&hostile).await;
    assert_trapped_twice_in_tick(&status, "more than 1000 calls");
    assert!(stop_reason(&status).contains("max_calls_per_tick"), "names the limit: {}", stop_reason(&status));
    assert_eq!(status.calls_outstanding, 0, "{status:?}");
    assert!(world.inventory().public_ips.is_empty(), "no flooded call reached the cloud: {:?}", world.inventory());
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_flooding_events_traps_at_the_event_cap_and_none_of_its_events_is_recorded() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, world) = scene.hostile("flood-events", &misbehaving(hostile_limits()), 3);
    let status = stopped(&hostile).await;
    assert_trapped_twice_in_tick(&status, "more than 1000 Events");
    assert!(stop_reason(&status).contains("max_events_per_tick"), "names the limit: {}", stop_reason(&status));
    assert!(world.inventory().events.is_empty(), "no flooded Event reached Kubernetes");
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_recording_a_huge_event_traps_at_the_output_cap_and_the_event_is_not_recorded() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, world) = scene.hostile("huge-strings", &misbehaving(hostile_limits()), 3);
    let status = stopped(&hostile).await;
    assert_trapped_twice_in_tick(&status, "exceed 1048576 bytes");
    assert!(stop_reason(&status).contains("max_output_bytes_per_tick"), "names the limit: {}", stop_reason(&status));
    assert!(stop_reason(&status).len() < 2_000, "the reason is short: {} bytes", stop_reason(&status).len());
    assert!(world.inventory().events.is_empty(), "the huge Event did not reach Kubernetes");
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_failing_with_a_huge_error_stops_its_tenant_with_a_shortened_reason() {
    // Under the default output cap the 4 MiB Event is queued; the tick then fails with a 4 MiB
    // error, which is the engine refusing its input (no trap): no restart, the tenant stops.
    let scene = Scene::new();
    let healthy = scene.healthy();
    let component =
        misbehaving(SandboxLimits { max_output_bytes_per_tick: SandboxLimits::default().max_output_bytes_per_tick, ..hostile_limits() });
    let (hostile, world) = scene.hostile("huge-strings", &component, 3);
    let status = stopped(&hostile).await;
    let reason = stop_reason(&status);
    assert!(reason.starts_with("engine `tick` failed: eeee"), "{}", &reason[..reason.len().min(200)]);
    assert!(reason.len() < 1_000, "the host kept {} bytes of the guest's 4 MiB error", reason.len());
    assert_eq!(status.restarts, 0, "an error is not a trap: {status:?}");
    assert!(world.inventory().events.is_empty(), "the Event of the failed tick was dropped, not recorded");
    healthy.still_converges().await;
}

/// The labels of the probe's metric sample: what it saw of WASI.
fn probe_report(status: &difftracker_engine::io::EngineStatus) -> BTreeMap<String, String> {
    let sample = status.metrics.iter().find(|m| m.name == "misbehaving_probe_wasi").expect("the probe reports in its status");
    sample.labels.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_probing_wasi_sees_no_files_no_environment_fixed_clocks_and_deterministic_random() {
    let escape = std::path::Path::new("/tmp/difftracker-probe-wasi");
    let _ = std::fs::remove_file(escape);
    let scene = Scene::new();
    let healthy = scene.healthy();
    let component = misbehaving(hostile_limits());
    let (hostile, _) = scene.hostile("probe-wasi", &component, 3);
    let status = tokio::time::timeout(GUARD, hostile.wait_for(|s| s.ticks >= 1)).await.expect("guard: the probe ticks").unwrap();
    let seen = probe_report(&status.engine);

    // No preopened directory: nothing to list, read or write, whatever the host has.
    assert!(std::path::Path::new("/etc/passwd").exists(), "the host has the file the probe tries to read");
    for door in ["read_dir_root", "read_dir_cwd", "read_etc_passwd", "write_tmp"] {
        assert!(seen[door].starts_with("error"), "{door}: {}", seen[door]);
    }
    assert!(!escape.exists(), "the guest wrote a file on the host");
    // An empty environment and no arguments, though this test process has both.
    assert!(std::env::vars_os().count() > 0);
    assert_eq!(seen["env_vars"], "0");
    assert_eq!(seen["args"], "0");
    // The clocks are fixed: the wall clock at 2024-01-01T00:00:00Z, the monotonic one still
    // after the guest spun a million times.
    assert_eq!(seen["wall_clock_s"], "1704067200");
    assert_eq!(seen["monotonic_elapsed_ns"], "0");
    // Random bytes are the same in every instance (a fixed sequence, not the host's generator).
    let mut other = misbehaving_engine(&component, "probe-wasi");
    let again = probe_report(&other.status().unwrap());
    assert_eq!(seen["random"].len(), 32, "{seen:?}");
    assert_eq!(seen["random"], again["random"]);
    assert_eq!(seen["insecure_random"], again["insecure_random"]);
    // The probe itself is a well-behaved tenant.
    assert!(status.error.is_none() && !status.stopped && status.restarts == 0, "{status:?}");
    hostile.stop().await.unwrap();
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_misbehaviour_loops_from_the_second_tick_and_its_tenant_is_restarted_until_its_budget_is_spent() {
    // Any tenant name the engine does not know: what the demo's `builtin:misbehaving` tenant runs.
    let scene = Scene::new();
    let healthy = scene.healthy();
    let (hostile, _) = scene.hostile("demo", &misbehaving(looping_limits()), 2);
    let quiet = tokio::time::timeout(GUARD, hostile.wait_for(|s| s.ticks >= 1)).await.expect("guard: the first tick").unwrap();
    assert_eq!(quiet.restarts, 0, "the first tick is quiet: {quiet:?}");
    let status = tick_until_stopped(&hostile, &scene.clock, 100).await;
    let reason = stop_reason(&status);
    assert!(reason.contains("trapped again after 2 restart(s)"), "{reason}");
    assert!(reason.contains("guest trapped in `tick`") && reason.contains("CPU deadline of 200 ms"), "{reason}");
    assert_eq!(status.restarts, 2, "{status:?}");
    healthy.still_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_guest_at_once_stops_on_its_own_and_the_healthy_tenant_beside_them_converges() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let looping = misbehaving(looping_limits());
    let limited = misbehaving(hostile_limits());
    let modes = [
        ("loop-in-tick", &looping),
        ("loop-in-restore", &looping),
        ("alloc-unbounded", &limited),
        ("trap-in-snapshot", &limited),
        ("flood-calls", &limited),
        ("flood-events", &limited),
        ("huge-strings", &limited),
    ];
    let hostile: Vec<(TenantHandle, MockWorld)> = modes.into_iter().map(|(mode, component)| scene.hostile(mode, component, 3)).collect();
    for (tenant, world) in &hostile {
        let status = stopped(tenant).await;
        assert!(status.error.is_some(), "{} stopped with its reason: {status:?}", tenant.name());
        assert!(world.inventory().is_clean() && world.inventory().events.is_empty(), "{} reached nothing", tenant.name());
    }
    healthy.still_converges().await;
}

// ------------------------------------------------------------------------ refused at load

/// A component of the engine world whose WIT package is `clb:difftracker@<version>`, from the
/// text of `wit/<base>/`: every export a stub (`wit-component`'s dummy module), which is enough
/// for the host to check it.
fn component_of_wit_version(base: &str, version: &str) -> Vec<u8> {
    let path = format!("{}/../wit/{base}/difftracker.wit", env!("CARGO_MANIFEST_DIR"));
    let wit = std::fs::read_to_string(&path).expect("wit/ reads");
    let wit = wit.replace(&format!("package clb:difftracker@{base};"), &format!("package clb:difftracker@{version};"));
    // `@since` may not name a version above the package's.
    let wit = wit.replace(&format!("@since(version = {base})"), &format!("@since(version = {version})"));
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("difftracker.wit", &wit).expect("the changed WIT parses");
    let world = resolve.select_world(&[package], Some("difftracker-engine")).expect("the engine world");
    let mangling = wit_parser::ManglingAndAbi::Legacy(wit_parser::LiftLowerAbi::Sync);
    let mut module = wit_component::dummy_module(&resolve, world, mangling);
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8).expect("embed the world");
    wit_component::ComponentEncoder::default().module(&module).expect("a core module of the world").validate(true).encode().expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_another_wit_version_is_refused_at_load_naming_the_versions() {
    let scene = Scene::new();
    let healthy = scene.healthy();
    let runtime = Runtime::new(RuntimeOptions { disable_cache: true, pooling: false, ..RuntimeOptions::default() }).unwrap();
    for (base, version) in [("0.2.0", "0.1.0"), ("0.3.0", "0.4.0"), ("0.3.0", "1.0.0")] {
        let err = match runtime.load(&component_of_wit_version(base, version)) {
            Ok(_) => panic!("a clb:difftracker@{version} component was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&format!("clb:difftracker@{version}")), "names the component's version: {err}");
        assert!(
            err.contains("clb:difftracker/engine@") && err.contains("clb:difftracker/cloud@"),
            "names what it exports and imports: {err}"
        );
        assert!(
            err.contains("this host runs clb:difftracker@0.2.0 and clb:difftracker@0.3.0 components"),
            "names the host's versions: {err}"
        );
    }
    // Stubs of both generations the host serves pass the check (and load: every export is there).
    for (version, generation) in [("0.2.0", WitGeneration::V0_2), ("0.3.0", WitGeneration::V0_3)] {
        let component = runtime.load(&component_of_wit_version(version, version)).expect("a generation the host serves loads");
        assert_eq!(component.generation(), generation);
    }
    healthy.still_converges().await;
}

#[test]
fn the_misbehaving_component_is_the_built_file_and_imports_only_allowed_interfaces() {
    let bytes = std::fs::read(difftracker_simulation::misbehaving_wasm_path()).unwrap();
    assert_eq!(bytes, difftracker_simulation::MISBEHAVING_WASM, "the embedded component is the built file");
    let component = misbehaving(hostile_limits());
    sandbox::check_imports(component.imports.iter().map(String::as_str)).unwrap();
    // It imports what the probe tries, which the allow-list permits and the sandbox empties.
    for prefix in ["wasi:filesystem/", "wasi:cli/environment", "wasi:clocks/", "wasi:random/"] {
        assert!(component.imports.iter().any(|i| i.starts_with(prefix)), "no {prefix} import: {:?}", component.imports);
    }
    let _: Box<dyn EngineDriver> = Box::new(misbehaving_engine(&component, "quiet"));
}
