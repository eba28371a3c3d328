//! What a guest hands the host is bounded: a guest that floods its imports in one tick (calls,
//! Events) traps at the sandbox's per-tick caps instead of growing the host's queue without
//! limit, and the tenant's trap recovery takes over; a guest's error string is shortened before
//! the host keeps or logs it.
//!
//! The misbehaving guests are hand-written core modules of the engine world (`wit/`), made into
//! components with `wit-component`. What one does is chosen by the seed it is created with: the
//! low byte is the mode (1: `tick` calls `put-public-ip` N times, 2: `tick` calls `record-event`
//! N times, 3: `tick` fails with an N-byte error string, else a quiet tick), the rest is N.
//! `restore` resets the mode, so an instance rebuilt from a snapshot behaves.

use difftracker_engine::io::TenantConfig;
use difftracker_runtime::driver::{CallIds, EngineDriver, WasmEngine};
use difftracker_runtime::executor::{Backends, Executor, ManualClock};
use difftracker_runtime::observe::Observatory;
use difftracker_runtime::tenant::{Recovery, SnapshotPolicy, TenantOptions};
use difftracker_runtime::wasm::{EngineComponent, Runtime, RuntimeOptions, SandboxLimits};
use difftracker_simulation::mock::MockWorld;
use std::sync::Arc;
use std::time::Duration;

const GUEST: &str = r#"
(module
  (import "clb:difftracker/cloud@0.2.0" "put-public-ip" (func $put_pip (param i32 i32 i32) (result i64)))
  (import "clb:difftracker/kube@0.2.0" "record-event"
    (func $record_event (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (global $mode (mut i32) (i32.const 0))
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 16) "x")

  (func $alloc (param $align i32) (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.sub (i32.div_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 65536))
                                          (memory.size)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (call $alloc (local.get 2) (local.get 3)))

  ;; Every result goes through the area at 64 (8-aligned, zeroed first): discriminant 0 is ok.
  (func $ok (result i32)
    (memory.fill (i32.const 64) (i32.const 0) (i32.const 48))
    (i32.const 64))

  (func (export "clb:difftracker/engine@0.2.0#create") (param i32 i32) (param $seed i64) (param i32 i64) (param i32 i64) (param i32 i32) (param i32 i32) (result i32)
    (global.set $mode (i32.wrap_i64 (i64.and (local.get $seed) (i64.const 255))))
    (global.set $count (i32.wrap_i64 (i64.shr_u (local.get $seed) (i64.const 8))))
    (call $ok))
  (func (export "clb:difftracker/engine@0.2.0#deliver") (param i64 i32 i32) (result i32)
    (call $ok))
  (func (export "clb:difftracker/engine@0.2.0#snapshot") (result i32)
    (call $ok))
  (func (export "clb:difftracker/engine@0.2.0#restore") (param i32 i32) (result i32)
    (global.set $mode (i32.const 0))
    (call $ok))
  (func (export "clb:difftracker/engine@0.2.0#status") (result i32)
    (call $ok))
  (func (export "clb:difftracker/engine@0.2.0#operations") (result i32)
    (call $ok))

  (func (export "clb:difftracker/engine@0.2.0#tick") (param i64 i32 i32) (result i32)
    (local $i i32) (local $p i32)
    (if (i32.eq (global.get $mode) (i32.const 1))
      (then
        (loop $calls
          (if (i32.lt_u (local.get $i) (global.get $count))
            (then
              (drop (call $put_pip (i32.const 16) (i32.const 1) (i32.const 0)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $calls))))))
    (if (i32.eq (global.get $mode) (i32.const 2))
      (then
        (loop $events
          (if (i32.lt_u (local.get $i) (global.get $count))
            (then
              (call $record_event
                (i32.const 16) (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 16) (i32.const 1)
                (i32.const 0) (i32.const 1)
                (i32.const 16) (i32.const 1) (i32.const 16) (i32.const 1))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $events))))))
    (if (i32.eq (global.get $mode) (i32.const 3))
      (then
        (local.set $p (call $alloc (i32.const 1) (global.get $count)))
        (memory.fill (local.get $p) (i32.const 101) (global.get $count))
        (drop (call $ok))
        ;; result<tick-outcome, string>: err, the string at offset 8.
        (i32.store8 (i32.const 64) (i32.const 1))
        (i32.store (i32.const 72) (local.get $p))
        (i32.store (i32.const 76) (global.get $count))
        (return (i32.const 64))))
    (call $ok))
)
"#;

const FLOOD_CALLS: u64 = 1;
const FLOOD_EVENTS: u64 = 2;
const HUGE_ERROR: u64 = 3;

fn guest_component() -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/0.2.0")).expect("wit/0.2.0 parses");
    let world = resolve.select_world(&[package], Some("difftracker-engine")).expect("the engine world");
    let mut module = wat::parse_str(GUEST).expect("the guest module parses");
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8).expect("embed the world");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("a core module of the world")
        .validate(true)
        .encode()
        .expect("encode the component")
}

/// The guest in a runtime with `limits` (a generous CPU deadline, so only the caps can stop it).
fn load(limits: SandboxLimits) -> EngineComponent {
    let runtime = Runtime::new(RuntimeOptions {
        disable_cache: true,
        pooling: false,
        limits: SandboxLimits { cpu_deadline: Duration::from_secs(60), ..limits },
        ..RuntimeOptions::default()
    })
    .expect("runtime");
    runtime.load(&guest_component()).expect("the hand-written guest loads")
}

fn created(component: &EngineComponent, mode: u64, n: u64) -> WasmEngine {
    let mut engine = WasmEngine::new(component, CallIds::default()).expect("instantiate");
    engine.create(&TenantConfig { tenant: "flood".into(), seed: mode | (n << 8), ..TenantConfig::default() }).expect("create");
    engine
}

#[test]
fn the_hand_written_guest_ticks_quietly_in_mode_zero() {
    let component = load(SandboxLimits::default());
    let mut engine = created(&component, 0, 0);
    let tick = engine.tick(0, vec![]).unwrap();
    assert!(tick.started.is_empty() && tick.events.is_empty());
    engine.status().unwrap();
    engine.snapshot().unwrap();
}

#[test]
fn a_guest_flooding_calls_in_one_tick_traps_at_the_cap() {
    let component = load(SandboxLimits::default());
    let ids = CallIds::default();
    let mut engine = WasmEngine::new(&component, ids.clone()).unwrap();
    engine.create(&TenantConfig { tenant: "flood".into(), seed: FLOOD_CALLS | (300_000 << 8), ..TenantConfig::default() }).unwrap();
    let err = format!("{:#}", engine.tick(0, vec![]).expect_err("300,000 calls in one tick are over the cap"));
    assert!(err.contains("more than 100000 calls") && err.contains("max_calls_per_tick"), "{err}");
    assert!(engine.is_poisoned(), "the excess is a trap of the tenant's instance");
    assert_eq!(ids.peek(), 100_001, "the call that crossed the cap got no id");
}

#[test]
fn the_call_cap_is_configured_on_the_sandbox_limits() {
    let component = load(SandboxLimits { max_calls_per_tick: 10, ..SandboxLimits::default() });
    let mut within = created(&component, FLOOD_CALLS, 10);
    assert_eq!(within.tick(0, vec![]).unwrap().started.len(), 10);
    let mut over = created(&component, FLOOD_CALLS, 11);
    let err = format!("{:#}", over.tick(0, vec![]).unwrap_err());
    assert!(err.contains("more than 10 calls"), "{err}");
}

#[test]
fn a_guest_flooding_events_in_one_tick_traps_at_the_cap() {
    let component = load(SandboxLimits::default());
    let mut engine = created(&component, FLOOD_EVENTS, 200_000);
    let err = format!("{:#}", engine.tick(0, vec![]).expect_err("200,000 Events in one tick are over the cap"));
    assert!(err.contains("more than 10000 Events") && err.contains("max_events_per_tick"), "{err}");
    assert!(engine.is_poisoned());

    let component = load(SandboxLimits { max_events_per_tick: 5, ..SandboxLimits::default() });
    assert_eq!(created(&component, FLOOD_EVENTS, 5).tick(0, vec![]).unwrap().events.len(), 5);
}

#[test]
fn the_output_byte_cap_stops_a_guest_whose_calls_are_small_but_many() {
    // Each call is about 60 bytes of JSON: 1,000 of them cross 20,000 bytes.
    let component = load(SandboxLimits { max_output_bytes_per_tick: 20_000, ..SandboxLimits::default() });
    let err = format!("{:#}", created(&component, FLOOD_CALLS, 1_000).tick(0, vec![]).unwrap_err());
    assert!(err.contains("exceed 20000 bytes") && err.contains("max_output_bytes_per_tick"), "{err}");
}

#[test]
fn a_guest_error_string_is_shortened_before_the_host_keeps_it() {
    let component = load(SandboxLimits::default());
    let mut engine = created(&component, HUGE_ERROR, 10_000_000);
    let err = format!("{:#}", engine.tick(0, vec![]).expect_err("the guest fails its tick"));
    assert!(err.starts_with("engine `tick` failed: eeee"), "{}", &err[..err.len().min(200)]);
    assert!(err.len() < 1_000, "the host kept {} bytes of the guest's error", err.len());
    assert!(!engine.is_poisoned(), "an error the guest returns is not a trap");
}

#[tokio::test]
async fn a_tenant_whose_guest_floods_recovers_through_trap_recovery() {
    let component = load(SandboxLimits::default());
    let clock = ManualClock::new(1_000);
    let executor = Executor::new(Arc::new(clock.clone()), 16);
    let world = MockWorld::new();
    let ids = CallIds::default();
    let engine: Box<dyn EngineDriver> = Box::new({
        let mut e = WasmEngine::new(&component, ids.clone()).unwrap();
        e.create(&TenantConfig { tenant: "flood".into(), seed: FLOOD_CALLS | (150_000 << 8), ..TenantConfig::default() }).unwrap();
        e
    });
    let recovery = Recovery::for_component(&component).with_snapshots(SnapshotPolicy::every_tick());
    let tenant = Observatory::new().spawn_tenant(
        &executor,
        TenantOptions::new("flood").with_recovery(recovery),
        engine,
        Backends { cloud: world.cloud(), kube: world.kube() },
        None,
    );
    let status = tokio::time::timeout(Duration::from_secs(120), tenant.wait_for(|s| s.restarts >= 1 && s.ticks >= 1))
        .await
        .expect("guard: the tenant recovers")
        .expect("the tenant keeps running");
    assert_eq!(status.restarts, 1);
    assert_eq!(status.calls_outstanding, 0, "none of the flooded calls was started");
    assert!(!status.stopped);
    assert!(ids.peek() <= 100_001, "the flood allocated {} ids", ids.peek());
    let _ = tenant.stop().await;
}
