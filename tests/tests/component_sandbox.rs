//! The component file, the load-time import check and the sandbox: a guest that traps or runs
//! out of its limits is an error for the host, never a crash.

use difftracker_engine::io::{KubeEvent, ObjectMeta, Service};
use difftracker_runtime::driver::{CallIds, EngineDriver, WasmEngine};
use difftracker_runtime::wasm::{sandbox, Runtime, RuntimeOptions, SandboxLimits};
use difftracker_tests::*;
use std::time::Duration;

#[test]
fn built_component_starts_with_the_component_model_header() {
    let bytes = std::fs::read(difftracker_runtime::engine_wasm_path()).unwrap();
    assert_eq!(&bytes[..8], &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);
    assert_eq!(bytes, difftracker_runtime::ENGINE_WASM, "the embedded component is the built file");
}

#[test]
fn built_component_imports_only_the_contract_and_harmless_wasi() {
    let imports = &component().imports;
    assert!(imports.iter().any(|i| i.starts_with("clb:difftracker/cloud")), "{imports:?}");
    assert!(imports.iter().any(|i| i.starts_with("clb:difftracker/kube")), "{imports:?}");
    sandbox::check_imports(imports.iter().map(String::as_str)).unwrap();
}

#[test]
fn built_component_imports_no_clock_randomness_filesystem_or_network() {
    // The engine is deterministic: std's HashMap seeding or SystemTime would show up here.
    let imports = &component().imports;
    for prefix in ["wasi:clocks/", "wasi:random/", "wasi:filesystem/", "wasi:sockets/", "wasi:http/"] {
        assert!(!imports.iter().any(|i| i.starts_with(prefix)), "the engine imports {prefix}*: {imports:?}");
    }
}

fn uncached_runtime(limits: SandboxLimits) -> Runtime {
    Runtime::new(RuntimeOptions { disable_cache: true, pooling: false, limits, ..RuntimeOptions::default() }).unwrap()
}

#[test]
fn a_component_importing_wasi_sockets_is_refused_with_a_clear_error() {
    let wasm = wat::parse_str(
        r#"(component
             (import "wasi:sockets/tcp@0.2.6" (instance))
             (import "clb:difftracker/cloud@0.1.0" (instance))
           )"#,
    )
    .unwrap();
    let err = match uncached_runtime(SandboxLimits::default()).load(&wasm) {
        Ok(_) => panic!("a component importing wasi:sockets was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("refused") && err.contains("wasi:sockets/tcp@0.2.6"), "{err}");
    assert!(!err.contains("clb:difftracker/cloud"), "only the offending import is named: {err}");
}

#[test]
fn a_component_importing_wasi_http_is_refused() {
    let wasm = wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.6" (instance)))"#).unwrap();
    let err = uncached_runtime(SandboxLimits::default()).load(&wasm).err().expect("refused");
    assert!(format!("{err:#}").contains("wasi:http/outgoing-handler"), "{err:#}");
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let wasm = wat::parse_str("(module)").unwrap();
    let err = uncached_runtime(SandboxLimits::default()).load(&wasm).err().expect("refused");
    assert!(format!("{err:#}").contains("not a component"), "{err:#}");
}

#[test]
fn compiled_components_are_cached_on_disk_and_reused() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.clone()), ..RuntimeOptions::default() }).unwrap();
    let first = runtime.load_builtin().unwrap();
    let second = runtime.load_builtin().unwrap();
    assert_eq!(first.cache, difftracker_runtime::wasm::CacheOutcome::Compiled);
    assert_eq!(second.cache, difftracker_runtime::wasm::CacheOutcome::Hit);
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_that_runs_out_of_memory_traps_into_an_error_and_a_fresh_instance_recovers() {
    let runtime =
        uncached_runtime(SandboxLimits { memory_bytes: 8 << 20, cpu_deadline: Duration::from_secs(5), ..SandboxLimits::default() });
    let component = runtime.load_builtin().unwrap();
    let ids = CallIds::default();
    let mut engine = WasmEngine::new(&component, ids.clone()).unwrap();
    engine.create(&tenant_config()).unwrap();
    let good = engine.snapshot().unwrap();

    // An event larger than the tenant's memory limit: the guest cannot allocate it.
    let huge = Service {
        meta: ObjectMeta { name: "x".repeat(16 << 20), uid: "u".into(), ..ObjectMeta::default() },
        ..sample_service("default", "huge", "u")
    };
    let err = engine.deliver(0, vec![KubeEvent::ServiceApplied(huge)]).unwrap_err();
    assert!(format!("{err:#}").contains("trap"), "{err:#}");
    assert!(engine.is_poisoned());
    let again = engine.tick(0, vec![]).unwrap_err();
    assert!(format!("{again:#}").contains("unusable"), "{again:#}");

    let mut fresh = WasmEngine::new(&component, ids).unwrap();
    fresh.restore(&good).unwrap();
    fresh.tick(0, vec![]).unwrap();
}

#[test]
fn a_guest_that_loops_forever_is_interrupted_by_the_cpu_deadline() {
    // A component whose export never returns; the real engine does not loop, so build one.
    let wasm = wat::parse_str(
        r#"(component
             (core module $m (func (export "spin") (loop $l (br $l))))
             (core instance $i (instantiate $m))
             (func (export "spin") (canon lift (core func $i "spin")))
           )"#,
    )
    .unwrap();
    let runtime =
        uncached_runtime(SandboxLimits { memory_bytes: 1 << 20, cpu_deadline: Duration::from_millis(50), ..SandboxLimits::default() });
    let component = wasmtime::component::Component::new(runtime.engine(), &wasm).unwrap();
    let linker = wasmtime::component::Linker::<()>::new(runtime.engine());
    let mut store = wasmtime::Store::new(runtime.engine(), ());
    store.set_epoch_deadline(runtime.limits().deadline_ticks());
    let instance = linker.instantiate(&mut store, &component).unwrap();
    let spin = instance.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
    let err = spin.call(&mut store, ()).unwrap_err();
    assert_eq!(err.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt), "{err:?}");
}

#[test]
fn guest_errors_do_not_poison_the_instance() {
    let mut engine = WasmEngine::new(component(), CallIds::default()).unwrap();
    assert!(engine.tick(0, vec![]).is_err(), "tick before create");
    assert!(engine.snapshot().is_err(), "snapshot before create");
    engine.create(&tenant_config()).unwrap();
    assert!(format!("{:#}", engine.create(&tenant_config()).unwrap_err()).contains("already"));
    assert!(engine.restore(&[0xff, 0x00, 0x13]).is_err());
    assert!(!engine.is_poisoned());
    engine.tick(0, vec![]).unwrap();
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_component_file_over_the_size_cap_is_refused_without_reading_it() {
    // A sparse 1 GiB file: refused on its size, before a byte of it is read into memory.
    let dir = scratch("oversized-component");
    let path = dir.join("huge.wasm");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 30).unwrap();
    drop(file);
    let err = match uncached_runtime(SandboxLimits::default()).load_file(&path) {
        Ok(_) => panic!("a 1 GiB component was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("larger than the limit of 67108864 bytes") && err.contains("huge.wasm"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_component_stream_without_end_is_refused_at_the_size_cap() {
    // `/dev/zero` has no size to check: it is read up to the cap and refused there.
    let runtime =
        Runtime::new(RuntimeOptions { disable_cache: true, pooling: false, max_component_bytes: 1 << 20, ..RuntimeOptions::default() })
            .unwrap();
    let err = match runtime.load_file(std::path::Path::new("/dev/zero")) {
        Ok(_) => panic!("/dev/zero was accepted as a component"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("larger than the limit of 1048576 bytes") && err.contains("/dev/zero"), "{err}");
}

#[test]
fn a_component_under_the_size_cap_still_loads_from_a_file() {
    let runtime = Runtime::new(RuntimeOptions { disable_cache: true, pooling: false, ..RuntimeOptions::default() }).unwrap();
    runtime.load_file(difftracker_runtime::engine_wasm_path()).unwrap();
    let small =
        Runtime::new(RuntimeOptions { disable_cache: true, pooling: false, max_component_bytes: 1024, ..RuntimeOptions::default() })
            .unwrap();
    let err = format!("{:#}", small.load(difftracker_runtime::ENGINE_WASM).err().expect("over a 1 KiB cap"));
    assert!(err.contains("larger than the limit of 1024 bytes"), "{err}");
}
