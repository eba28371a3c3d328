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
    assert_eq!(cwasm_files(&dir).len(), 1);
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

// ------------------------------------------------------------------------ the compiled-component cache

fn cached_runtime(dir: &std::path::Path) -> Runtime {
    Runtime::new(RuntimeOptions { cache_dir: Some(dir.to_path_buf()), pooling: false, ..RuntimeOptions::default() }).unwrap()
}

fn cwasm_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect(),
        Err(_) => Vec::new(),
    }
}

fn works(component: &difftracker_runtime::wasm::EngineComponent) {
    let mut engine = WasmEngine::new(component, CallIds::default()).unwrap();
    engine.create(&tenant_config()).unwrap();
    engine.tick(0, vec![]).unwrap();
}

#[test]
fn a_planted_artifact_is_not_loaded_and_the_component_is_recompiled() {
    use difftracker_runtime::wasm::{cache, CacheOutcome};
    let dir = scratch("planted-artifact");
    let runtime = cached_runtime(&dir.join("cache"));
    // Fill the cache once, so it has its directory and key, then swap the artifact's bytes for
    // those of another component (native code the engine's hash never produced) and forge a
    // plain SHA-256 record for them.
    assert_eq!(runtime.load_builtin().unwrap().cache, CacheOutcome::Compiled);
    let cache_dir = runtime.cache().unwrap().clone();
    let key = cache::cache_key(runtime.engine(), difftracker_runtime::ENGINE_WASM);
    let artifact = cache_dir.path_for(&key);
    let planted =
        wasmtime::component::Component::new(runtime.engine(), wat::parse_str("(component)").unwrap()).unwrap().serialize().unwrap();
    std::fs::write(&artifact, &planted).unwrap();
    std::fs::write(cache_dir.record_path_for(&key), cache::content_hash(&planted)).unwrap();

    let loaded = runtime.load_builtin().expect("the planted artifact is refused, the component recompiled");
    assert_eq!(loaded.cache, CacheOutcome::Compiled);
    works(&loaded);
    assert_ne!(std::fs::read(&artifact).unwrap(), planted, "the planted artifact was replaced");
    // The replacement is trusted again.
    let again = runtime.load_builtin().unwrap();
    assert_eq!(again.cache, CacheOutcome::Hit);
    works(&again);

    // An artifact with no record at all (as a cache written before records) is recompiled too.
    std::fs::remove_file(cache_dir.record_path_for(&key)).unwrap();
    assert_eq!(runtime.load_builtin().unwrap().cache, CacheOutcome::Compiled);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cache_directory_and_its_files_are_private_to_the_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("private-cache");
    let cache = dir.join("a").join("b");
    cached_runtime(&cache).load_builtin().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache directory");
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.len() >= 2, "an artifact and its record: {files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_directory_writable_by_others_is_not_used() {
    use difftracker_runtime::wasm::CacheOutcome;
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("open-cache");
    let cache = dir.join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let runtime = cached_runtime(&cache);
    let loaded = runtime.load_builtin().unwrap();
    assert_eq!(loaded.cache, CacheOutcome::Uncached);
    works(&loaded);
    assert!(std::fs::read_dir(&cache).unwrap().next().is_none(), "nothing was written into it");
    assert_eq!(runtime.load_builtin().unwrap().cache, CacheOutcome::Uncached, "nor read from it");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_directory_owned_by_another_user_is_not_used() {
    use difftracker_runtime::wasm::CacheOutcome;
    use std::os::unix::fs::MetadataExt;
    let dir = scratch("foreign-cache");
    let cache = dir.join("cache");
    std::fs::create_dir(&cache).unwrap();
    let me = std::fs::metadata(&dir).unwrap().uid();
    if std::os::unix::fs::chown(&cache, Some(me + 4242), None).is_err() {
        // Only root can give a directory away; the decision itself is unit-tested in the cache.
        eprintln!("skipped: cannot chown without privileges");
        return;
    }
    let loaded = cached_runtime(&cache).load_builtin().unwrap();
    assert_eq!(loaded.cache, CacheOutcome::Uncached);
    assert!(std::fs::read_dir(&cache).unwrap().next().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
