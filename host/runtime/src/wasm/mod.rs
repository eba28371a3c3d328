//! The wasmtime side: one [`Runtime`] per process (one `wasmtime::Engine`, one `Linker`, the
//! epoch ticker, the compiled-component cache) loads engine components into [`EngineComponent`]s,
//! from which [`crate::driver::WasmEngine`] instances (one per tenant) are created cheaply through
//! `InstancePre`.
//!
//! Two generations of the contract are served side by side, each in its own folder (bindings,
//! the host side of its imports, the conversions it does its own way), in the manner of
//! wasmtime's `wasi-http`:
//!
//! - [`v0_2`]: `clb:difftracker@0.2.0` (`wit/0.2.0/`), free functions, host-allocated call ids.
//! - [`v0_3`]: `clb:difftracker@0.3.0` (`wit/0.3.0/`, the bundled engine's), the engine
//!   resource, typed errors, metric kinds, engine-allocated call ids.
//! - `domain.rs`: the conversions of the records both generations share, included by each.
//! - [`instance`]: [`WitGeneration`] and the one instance type over both, which the driver uses.
//! - [`cache`]: precompiled components on disk, keyed by content and engine compatibility hash.
//! - [`sandbox`]: memory and CPU limits, the empty WASI context, the import allow-list.
//!
//! [`Runtime::load`] finds a component's generation from the versions of its
//! `clb:difftracker/...` imports and exports and refuses any other version, naming both.

pub mod cache;
pub mod instance;
pub mod sandbox;
pub mod v0_2;
pub mod v0_3;

use crate::calls::CallQueue;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use cache::{CacheOutcome, ComponentCache};
pub use instance::WitGeneration;
pub use sandbox::{check_imports, ForbiddenImports, SandboxLimits};

/// The engine component built from `engine-component/` by `host/runtime/build.rs`, embedded in the binary.
pub const ENGINE_WASM: &[u8] = include_bytes!(env!("DIFFTRACKER_ENGINE_WASM"));

/// Where `host/runtime/build.rs` wrote the engine component.
pub fn engine_wasm_path() -> &'static Path {
    Path::new(env!("DIFFTRACKER_ENGINE_WASM"))
}

/// wasmtime 48's error type does not convert into `anyhow` with `?`; this keeps its full chain.
pub(crate) fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

/// The data of one tenant's wasmtime `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: MeteredLimits,
    pub(crate) stderr: MemoryOutputPipe,
    /// Calls and Events the guest started during the current export call.
    pub(crate) queue: CallQueue,
}

impl HostState {
    /// Queues a Kubernetes Event the guest recorded (traps past the per-tick limits).
    pub(crate) fn queue_event(&mut self, event: difftracker_engine::io::KubeEventRecord) -> wasmtime::Result<()> {
        self.queue.try_record_event(event).map_err(wasmtime::Error::new)
    }

    pub(crate) fn new(limits: &SandboxLimits, queue: CallQueue, guest_memory: Arc<AtomicU64>) -> HostState {
        let (wasi, stderr) = sandbox::wasi_ctx();
        let limits = MeteredLimits { inner: limits.store_limits(), bytes: 0, total: guest_memory };
        HostState { wasi, table: ResourceTable::new(), limits, stderr, queue }
    }
}

/// A store's limits, which also count the guest's linear memory (as it is created and grows)
/// into its runtime's total ([`Runtime::guest_memory_bytes`]), given back when the store goes.
pub(crate) struct MeteredLimits {
    inner: StoreLimits,
    bytes: u64,
    total: Arc<AtomicU64>,
}

impl wasmtime::ResourceLimiter for MeteredLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            let grown = desired.saturating_sub(current) as u64;
            self.bytes += grown;
            self.total.fetch_add(grown, Ordering::Relaxed);
        }
        Ok(allowed)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl Drop for MeteredLimits {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The default of [`RuntimeOptions::max_component_bytes`]: 64 MiB (the engine is about 1 MiB).
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// How the process-wide runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` uses [`ComponentCache::default_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Compile on every load instead of caching.
    pub disable_cache: bool,
    pub limits: SandboxLimits,
    /// Pre-allocate instance slots (the pooling allocator): cheaper instantiation, which pays
    /// for hot swaps and trap recovery. Falls back to on-demand allocation if the host refuses
    /// the address-space reservation.
    pub pooling: bool,
    /// Instance slots of the pool (tenants plus instances being swapped in).
    pub max_instances: u32,
    /// Largest component [`Runtime::load`] and [`Runtime::load_file`] accept, in bytes (64 MiB).
    pub max_component_bytes: u64,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            disable_cache: false,
            limits: SandboxLimits::default(),
            pooling: true,
            max_instances: 128,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
        }
    }
}

/// The process's wasmtime engine, linker and component cache. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    cache: Option<ComponentCache>,
    limits: SandboxLimits,
    pooling: bool,
    max_component_bytes: u64,
    /// Instance slots, and how many live instances hold one (see [`Runtime::take_slot`]).
    max_instances: u32,
    slots_in_use: Arc<AtomicU32>,
    /// Linear memory of every live instance, in bytes.
    guest_memory: Arc<AtomicU64>,
}

/// Why an instance could not be created: every slot of the runtime is taken.
#[derive(Debug, thiserror::Error)]
#[error(
    "no instance slot free: all {max} slots of the wasmtime runtime are in use (tenants, swaps and recoveries each hold one); \
     size the pool for more (RuntimeOptions::max_instances, `instance_slots` in the [host] table of a serve configuration)"
)]
pub struct NoFreeSlot {
    pub max: u32,
}

/// One instance slot, given back when the instance it belongs to is dropped.
pub(crate) struct SlotGuard {
    in_use: Arc<AtomicU32>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Runtime> {
        let (engine, pooling) = if options.pooling {
            match wasmtime::Engine::new(&config(&options, true)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                    (wasmtime::Engine::new(&config(&options, false)).map_err(wt)?, false)
                }
            }
        } else {
            (wasmtime::Engine::new(&config(&options, false)).map_err(wt)?, false)
        };
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(wt).context("linking WASI")?;
        // Each generation's imports have their own versioned names: one linker serves both.
        v0_2::add_to_linker(&mut linker).map_err(wt).context("linking the 0.2.0 cloud and kube imports")?;
        v0_3::add_to_linker(&mut linker).map_err(wt).context("linking the 0.3.0 cloud and kube imports")?;

        let cache = if options.disable_cache {
            None
        } else {
            Some(ComponentCache::new(options.cache_dir.clone().unwrap_or_else(ComponentCache::default_dir)))
        };
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                limits: options.limits,
                pooling,
                max_component_bytes: options.max_component_bytes,
                max_instances: options.max_instances.max(1),
                slots_in_use: Arc::new(AtomicU32::new(0)),
                guest_memory: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// A process-wide runtime with default options, created on first use.
    pub fn shared() -> Result<Runtime> {
        static SHARED: OnceLock<Result<Runtime, String>> = OnceLock::new();
        SHARED.get_or_init(|| Runtime::new(RuntimeOptions::default()).map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow::anyhow!(e))
    }

    /// A process-wide runtime whose sandboxes have `limits` (other options default), created on
    /// first use for each distinct set of limits; the default limits give [`Runtime::shared`].
    /// The guest memory limit sizes the instance pool's slots, so it belongs to the runtime.
    pub fn with_limits(limits: &SandboxLimits) -> Result<Runtime> {
        if *limits == SandboxLimits::default() {
            return Runtime::shared();
        }
        static BY_LIMITS: std::sync::Mutex<Vec<(SandboxLimits, Runtime)>> = std::sync::Mutex::new(Vec::new());
        let mut runtimes = BY_LIMITS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, runtime)) = runtimes.iter().find(|(l, _)| l == limits) {
            return Ok(runtime.clone());
        }
        let runtime = Runtime::new(RuntimeOptions { limits: limits.clone(), ..RuntimeOptions::default() })?;
        runtimes.push((limits.clone(), runtime.clone()));
        Ok(runtime)
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.inner.limits
    }

    pub fn uses_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Instance slots in all, whether pooled or not (the cap holds either way).
    pub fn instance_slots(&self) -> u32 {
        self.inner.max_instances
    }

    /// Linear memory of every live instance of this runtime, in bytes (what the guests asked
    /// for; the host's resident memory counts only the pages they touched).
    pub fn guest_memory_bytes(&self) -> u64 {
        self.inner.guest_memory.load(Ordering::Relaxed)
    }

    pub(crate) fn guest_memory_counter(&self) -> Arc<AtomicU64> {
        self.inner.guest_memory.clone()
    }

    /// Instance slots no live instance holds.
    pub fn free_slots(&self) -> u32 {
        self.inner.max_instances.saturating_sub(self.inner.slots_in_use.load(Ordering::Acquire))
    }

    /// Takes a slot for a new instance, or says clearly that none is free (rather than the
    /// pooling allocator's own "maximum concurrent limit" error deep inside instantiation).
    pub(crate) fn take_slot(&self) -> Result<SlotGuard, NoFreeSlot> {
        let max = self.inner.max_instances;
        self.inner
            .slots_in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| NoFreeSlot { max })?;
        Ok(SlotGuard { in_use: self.inner.slots_in_use.clone() })
    }

    pub fn cache(&self) -> Option<&ComponentCache> {
        self.inner.cache.as_ref()
    }

    /// Checks, compiles (or loads from the cache) and pre-links an engine component.
    pub fn load(&self, bytes: &[u8]) -> Result<EngineComponent> {
        let max = self.inner.max_component_bytes;
        if bytes.len() as u64 > max {
            bail!("the component is {} bytes, larger than the limit of {max} bytes (RuntimeOptions::max_component_bytes)", bytes.len());
        }
        if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
            bail!("not a WebAssembly binary");
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            bail!("a core WebAssembly module, not a component: build engine-component for wasm32-wasip2");
        }
        let (component, cache) = match &self.inner.cache {
            Some(c) => c.load_or_compile(&self.inner.engine, bytes)?,
            None => (cache::compile(&self.inner.engine, bytes)?, CacheOutcome::Uncached),
        };
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.inner.engine).map(|(name, _)| name.to_string()).collect();
        check_imports(imports.iter().map(String::as_str))?;
        let exports: Vec<String> = ty.exports(&self.inner.engine).map(|(name, _)| name.to_string()).collect();
        let generation = wit_generation(&imports, &exports)?;
        let pre = self.inner.linker.instantiate_pre(&component).map_err(wt).context("linking the engine component")?;
        let pre = instance::Pre::new(generation, pre)
            .map_err(wt)
            .with_context(|| format!("the component does not export {} as {generation} defines it", ENGINE_EXPORT))?;
        Ok(EngineComponent { runtime: self.clone(), pre, sha256: cache::content_hash(bytes), cache, imports })
    }

    /// [`Runtime::load`] of a file, which is read only up to the size limit: a larger file is
    /// refused on its size, a stream without end (a device, a pipe) once the limit is read.
    pub fn load_file(&self, path: &Path) -> Result<EngineComponent> {
        let bytes = read_at_most(path, self.inner.max_component_bytes)?;
        self.load(&bytes).with_context(|| format!("loading {}", path.display()))
    }

    /// The engine component embedded in this binary.
    pub fn load_builtin(&self) -> Result<EngineComponent> {
        self.load(ENGINE_WASM).context("loading the built-in engine component")
    }
}

/// The WIT package of the bundled engine (`wit/0.3.0/`); [`WitGeneration::SUPPORTED`] lists
/// every one this host runs, and [`EngineComponent::generation`] says which one a component is.
pub const WIT_PACKAGE: &str = "clb:difftracker@0.3.0";

/// The interface every engine component exports.
const ENGINE_EXPORT: &str = "clb:difftracker/engine";

/// The generation a component is built for, from the versions of its `clb:difftracker/...`
/// imports and exports. One of another version, one mixing generations, or one without the
/// package is refused naming what it has and what this host runs: linking alone would only say
/// that its first such import is missing.
fn wit_generation(imports: &[String], exports: &[String]) -> Result<WitGeneration> {
    let (package, _) = WIT_PACKAGE.split_once('@').unwrap_or((WIT_PACKAGE, ""));
    let prefix = format!("{package}/");
    let ours: Vec<(&str, &str)> = imports
        .iter()
        .chain(exports)
        .filter(|name| name.starts_with(&prefix))
        .map(|name| (name.as_str(), name.split_once('@').map(|(_, version)| version).unwrap_or("")))
        .collect();
    let supported = WitGeneration::SUPPORTED.iter().map(|g| g.package()).collect::<Vec<_>>().join(" and ");
    let generation_of = |version: &str| WitGeneration::SUPPORTED.into_iter().find(|g| semver_compatible(version, g.version()));
    let foreign: Vec<&(&str, &str)> = ours.iter().filter(|(_, version)| generation_of(version).is_none()).collect();
    if !foreign.is_empty() {
        let mut versions: Vec<String> =
            foreign.iter().map(|(_, v)| if v.is_empty() { format!("{package} (unversioned)") } else { format!("{package}@{v}") }).collect();
        versions.sort();
        versions.dedup();
        let names: Vec<&str> = foreign.iter().map(|(name, _)| *name).collect();
        bail!(
            "the component is built for another version of the WIT package, {} ({}); this host runs {supported} components: \
             build it against this host's wit/0.3.0/difftracker.wit (or wit/0.2.0/)",
            versions.join(", "),
            names.join(", ")
        );
    }
    let mut generations: Vec<WitGeneration> = ours.iter().filter_map(|(_, version)| generation_of(version)).collect();
    generations.sort_by_key(|g| g.version());
    generations.dedup();
    match generations.as_slice() {
        [one] if exports.iter().any(|e| e.starts_with(ENGINE_EXPORT)) => Ok(*one),
        [] | [_] => bail!("the component does not export {ENGINE_EXPORT}; this host runs {supported} components"),
        many => bail!(
            "the component mixes WIT generations ({}); this host runs {supported} components, each of one generation",
            many.iter().map(|g| g.package()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Whether WIT version `version` can be linked where `host` is: semver-compatible, as wasmtime's
/// linker matches them (the same major version; below 1.0 the same minor).
fn semver_compatible(version: &str, host: &str) -> bool {
    let major_minor = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (major_minor(version), major_minor(host)) {
        (Some((0, minor)), Some((0, host_minor))) => minor == host_minor,
        (Some((major, _)), Some((host_major, _))) => major == host_major,
        _ => false,
    }
}

/// The contents of `path` if it holds at most `max` bytes.
fn read_at_most(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let too_large = || anyhow::anyhow!("{} is larger than the limit of {max} bytes (RuntimeOptions::max_component_bytes)", path.display());
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() && meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() { meta.len() as usize } else { 0 });
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Set (to anything) to have the guest's compiled code named in `perf` profiles.
pub const PERF_MAP_ENV: &str = "DIFFTRACKER_PERF_MAP";

fn config(options: &RuntimeOptions, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if std::env::var_os(PERF_MAP_ENV).is_some() {
        // Names the guest's compiled functions for `perf report` (/tmp/perf-<pid>.map).
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let slots = options.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .max_memory_size(options.limits.memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Bumps the epoch every [`sandbox::EPOCH_TICK`] for as long as the engine lives.
fn spawn_epoch_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || loop {
        std::thread::sleep(sandbox::EPOCH_TICK);
        match weak.upgrade() {
            Some(engine) => engine.increment_epoch(),
            None => break,
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker; guest calls run without a CPU deadline");
    }
}

/// A checked, compiled and pre-linked engine component: instantiate it with
/// [`crate::driver::WasmEngine::new`].
#[derive(Clone)]
pub struct EngineComponent {
    pub(crate) runtime: Runtime,
    pub(crate) pre: instance::Pre,
    /// Hex SHA-256 of the component's bytes.
    pub sha256: String,
    /// Whether it came from the on-disk cache.
    pub cache: CacheOutcome,
    /// The component's import names.
    pub imports: Vec<String>,
}

impl EngineComponent {
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The WIT generation the component is built for.
    pub fn generation(&self) -> WitGeneration {
        self.pre.generation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_generation_is_the_package_its_wit_folder_declares() {
        let wits = [include_str!("../../../../wit/0.2.0/difftracker.wit"), include_str!("../../../../wit/0.3.0/difftracker.wit")];
        for (generation, wit) in WitGeneration::SUPPORTED.into_iter().zip(wits) {
            assert!(
                wit.lines().any(|line| line == format!("package {};", generation.package())),
                "wit/{} declares another package",
                generation.version()
            );
        }
        assert_eq!(WIT_PACKAGE, WitGeneration::LATEST.package());
    }

    #[test]
    fn components_are_told_apart_by_generation_and_other_versions_refused_naming_them() {
        let names = |v: &str| {
            (vec![format!("clb:difftracker/cloud@{v}"), "wasi:io/streams@0.2.6".to_string()], vec![format!("clb:difftracker/engine@{v}")])
        };
        for (version, generation) in
            [("0.2.0", WitGeneration::V0_2), ("0.2.7", WitGeneration::V0_2), ("0.3.0", WitGeneration::V0_3), ("0.3.1", WitGeneration::V0_3)]
        {
            let (imports, exports) = names(version);
            assert_eq!(wit_generation(&imports, &exports).unwrap(), generation, "{version}");
        }
        for version in ["0.1.0", "0.4.0", "1.0.0", "x"] {
            let (imports, exports) = names(version);
            let err = wit_generation(&imports, &exports).unwrap_err().to_string();
            assert!(
                err.contains(&format!("clb:difftracker@{version} (clb:difftracker/cloud@{version}, clb:difftracker/engine@{version})")),
                "{err}"
            );
            assert!(err.contains("this host runs clb:difftracker@0.2.0 and clb:difftracker@0.3.0 components"), "{err}");
        }
        let err = wit_generation(&["clb:difftracker/cloud".to_string()], &[]).unwrap_err().to_string();
        assert!(err.contains("clb:difftracker (unversioned)"), "{err}");
        let err = wit_generation(&["clb:difftracker/cloud@0.2.0".to_string()], &["clb:difftracker/engine@0.3.0".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mixes WIT generations (clb:difftracker@0.2.0, clb:difftracker@0.3.0)"), "{err}");
        let err = wit_generation(&["clb:difftracker/cloud@0.3.0".to_string()], &[]).unwrap_err().to_string();
        assert!(err.contains("does not export clb:difftracker/engine"), "{err}");
    }
}
