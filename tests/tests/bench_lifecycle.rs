//! The benchmark's lifecycle is itself a check: with each engine, every Service it adds is
//! created (five calls each, at most ten operations at a time), and after the deletes and the
//! drain nothing is tracked. `measure` fails otherwise; the timings are not looked at.

use difftracker_runtime::driver::EngineKind;
use difftracker_simulation::bench::measure;

fn lifecycle_completes(kind: EngineKind) {
    let lifecycle = measure(kind, 40, 10).expect("the lifecycle completes");
    let phases = &lifecycle.phases;
    let names: Vec<&str> = phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "add",
            "create-complete",
            "endpoints-live",
            "locsync-initial",
            "endpoints-churn",
            "locsync-churn",
            "single-endpoint-update",
            "delete",
            "drain+delete-complete"
        ]
    );
    assert_eq!(phases.iter().find(|p| p.name == "single-endpoint-update").map(|p| p.per), Some(10));
    // Only a wasm instance has a linear memory to count; it holds at least the engine's state.
    match kind {
        EngineKind::Wasm => {
            assert!(lifecycle.steady_guest_memory_bytes.is_some_and(|b| b >= 1 << 20), "{:?}", lifecycle.steady_guest_memory_bytes)
        }
        EngineKind::Native => assert_eq!(lifecycle.steady_guest_memory_bytes, None),
    }
}

#[test]
fn bench_lifecycle_completes_with_the_native_engine() {
    lifecycle_completes(EngineKind::Native);
}

#[test]
fn bench_lifecycle_completes_with_the_wasm_engine() {
    lifecycle_completes(EngineKind::Wasm);
}
