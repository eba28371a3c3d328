//! One tenant's engine behind one trait, whether it runs as the component in wasmtime
//! ([`WasmEngine`]) or linked natively ([`NativeEngine`], for replay and differential tests).
//!
//! Both queue what the engine started during a `tick` in a [`CallQueue`] and, for the same
//! inputs, return the same [`TickResult`]s. Who numbers the calls depends on the engine: the host
//! allocates them from the tenant's [`CallIds`] counter (kept by the host, so it survives a swap
//! of the instance) for the native engine and a WIT 0.2.0 component; a 0.3.0 component allocates
//! them itself from the counter in its state, which its [`CallIds`] only mirrors
//! ([`EngineDriver::numbers_own_calls`]). [`WasmEngine`] runs either generation
//! ([`crate::wasm::instance`]). Whatever the guest does, the host
//! sees an `anyhow` error, never a panic: a trap (or a CPU/memory limit hit) poisons the
//! [`WasmEngine`], which then refuses every further call, and the tenant rebuilds it from a
//! snapshot ([`restore_into`]).

pub use crate::calls::{CallIds, CallQueue, QueueLimits, QueueOverflow};
use crate::tenant::{brief_reason, one_line};
use crate::wasm::instance::{Guest, Instance};
use crate::wasm::{wt, EngineComponent, HostState, Runtime, SandboxLimits, SlotGuard, WitGeneration};
use anyhow::{anyhow, bail, Context, Result};
use difftracker_engine::io::{
    Call, CallId, Completion, EngineStatus, KubeEvent, KubeEventRecord, OperationStatus, TenantConfig, TickOutcome,
};
use difftracker_engine::Engine;
use wasmtime::Store;

/// Characters of a trapped guest's stderr kept in the trap's reason.
const GUEST_STDERR_KEPT: usize = 1000;

/// The result of one tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickResult {
    pub outcome: TickOutcome,
    /// Calls started by this tick, in start order.
    pub started: Vec<(CallId, Call)>,
    /// Kubernetes Events recorded by this tick.
    pub events: Vec<KubeEventRecord>,
}

/// One tenant's engine, as the host drives it.
pub trait EngineDriver: Send {
    /// `wasm` or `native`.
    fn kind(&self) -> &'static str;
    /// Starts an empty engine for the tenant.
    fn create(&mut self, config: &TenantConfig) -> Result<()>;
    fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) -> Result<()>;
    fn tick(&mut self, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult>;
    fn snapshot(&mut self) -> Result<Vec<u8>>;
    fn restore(&mut self, snapshot: &[u8]) -> Result<()>;
    fn status(&mut self) -> Result<EngineStatus>;
    /// Every tracked operation as the engine sees it (O(operations): for inspection, not per
    /// tick).
    fn operations(&mut self) -> Result<Vec<OperationStatus>>;
    /// The tenant's call-id counter: where the host numbers this instance's calls from, or, when
    /// the engine numbers them itself ([`EngineDriver::numbers_own_calls`]), the mirror of the
    /// engine's counter. Either way its `peek` is the id of the instance's next call.
    fn call_ids(&self) -> &CallIds;
    /// Whether the engine allocates its call ids itself (a WIT 0.3.0 component): the host then
    /// neither allocates from [`EngineDriver::call_ids`] nor rewinds it after a trap (a restored
    /// engine has its counter back from the snapshot).
    fn numbers_own_calls(&self) -> bool {
        false
    }
    /// The WIT package the instance's component is built for (`clb:difftracker@0.3.0`); none for
    /// the native engine.
    fn wit_package(&self) -> Option<&'static str> {
        None
    }
    /// Whether an earlier failure (a trap, a limit) left this instance unusable: every further
    /// call fails, and the tenant must rebuild it from a snapshot. Engines that cannot trap keep
    /// the default.
    fn is_poisoned(&self) -> bool {
        false
    }
}

/// Which build of the engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// The WebAssembly component in the wasmtime sandbox (the default).
    #[default]
    Wasm,
    /// The engine crate linked into the host (differential tests, profiling).
    Native,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Wasm => "wasm",
            EngineKind::Native => "native",
        }
    }

    /// A fresh engine of this kind, not yet created, allocating call ids from `ids` (a tenant's
    /// rebuilt instance keeps its predecessor's counter). The wasm one is the bundled component
    /// in the process-wide [`Runtime::shared`].
    pub fn new_driver(self, ids: CallIds) -> Result<Box<dyn EngineDriver>> {
        self.new_driver_in(ids, &SandboxLimits::default())
    }

    /// [`EngineKind::new_driver`] with the component's sandbox sized by `limits` (guest memory,
    /// CPU deadline, per-tick caps); the native engine runs unsandboxed and ignores them.
    pub fn new_driver_in(self, ids: CallIds, limits: &SandboxLimits) -> Result<Box<dyn EngineDriver>> {
        Ok(match self {
            EngineKind::Native => Box::new(NativeEngine::new(ids)),
            EngineKind::Wasm => {
                let runtime = Runtime::with_limits(limits).context("starting the wasmtime runtime")?;
                let component = runtime.load_builtin().context("loading the engine component")?;
                Box::new(WasmEngine::new(&component, ids)?)
            }
        })
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<EngineKind, String> {
        match s {
            "wasm" => Ok(EngineKind::Wasm),
            "native" => Ok(EngineKind::Native),
            other => Err(format!("unknown engine {other:?}: use wasm or native")),
        }
    }
}

/// Moves the state of `old` into the fresh instance `new` (hot swap, trap recovery, tests).
/// `old` is left untouched, so it keeps running if this fails.
pub fn restore_into(old: &mut dyn EngineDriver, mut new: Box<dyn EngineDriver>) -> Result<Box<dyn EngineDriver>> {
    let snapshot = old.snapshot()?;
    new.restore(&snapshot)?;
    Ok(new)
}

// ------------------------------------------------------------------------ Intercepted

/// What an [`Intercepted`] engine does around its inner engine. Every hook defaults to passing
/// the call straight through, so a wrapper (tick timing, a test's injected trap or sabotage)
/// states only what it changes.
pub trait Intercept: Send {
    /// The kind reported for the wrapped engine.
    fn kind(&self, inner: &dyn EngineDriver) -> &'static str {
        inner.kind()
    }
    fn deliver(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
        inner.deliver(now_ms, events)
    }
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        inner.tick(now_ms, completions)
    }
    fn restore(&mut self, inner: &mut dyn EngineDriver, snapshot: &[u8]) -> Result<()> {
        inner.restore(snapshot)
    }
}

/// An engine behind an [`Intercept`]: the one delegating [`EngineDriver`] wrapper.
pub struct Intercepted<I> {
    pub inner: Box<dyn EngineDriver>,
    pub hooks: I,
}

impl<I: Intercept> Intercepted<I> {
    pub fn new(inner: Box<dyn EngineDriver>, hooks: I) -> Intercepted<I> {
        Intercepted { inner, hooks }
    }
}

impl<I: Intercept> EngineDriver for Intercepted<I> {
    fn kind(&self) -> &'static str {
        self.hooks.kind(self.inner.as_ref())
    }
    fn create(&mut self, config: &TenantConfig) -> Result<()> {
        self.inner.create(config)
    }
    fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
        self.hooks.deliver(self.inner.as_mut(), now_ms, events)
    }
    fn tick(&mut self, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        self.hooks.tick(self.inner.as_mut(), now_ms, completions)
    }
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.inner.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.hooks.restore(self.inner.as_mut(), snapshot)
    }
    fn status(&mut self) -> Result<EngineStatus> {
        self.inner.status()
    }
    fn operations(&mut self) -> Result<Vec<OperationStatus>> {
        self.inner.operations()
    }
    fn call_ids(&self) -> &CallIds {
        self.inner.call_ids()
    }
    fn numbers_own_calls(&self) -> bool {
        self.inner.numbers_own_calls()
    }
    fn wit_package(&self) -> Option<&'static str> {
        self.inner.wit_package()
    }
    fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }
}

// ------------------------------------------------------------------------ WasmEngine

/// The engine component (of either WIT generation) in a sandboxed wasmtime store.
pub struct WasmEngine {
    store: Store<HostState>,
    instance: Instance,
    generation: WitGeneration,
    ids: CallIds,
    deadline_ticks: u64,
    /// The CPU deadline, named in the reason of a guest it interrupts.
    cpu_deadline: std::time::Duration,
    /// Set once the guest trapped: the store must not be entered again.
    poisoned: Option<String>,
    stderr_seen: usize,
    /// Dropped after the store, so the slot is free once the instance is.
    _slot: SlotGuard,
}

impl WasmEngine {
    /// A fresh instance of `component`, allocating call ids from `ids` (0.2.0), or mirroring the
    /// engine's counter in it (0.3.0).
    pub fn new(component: &EngineComponent, ids: CallIds) -> Result<WasmEngine> {
        WasmEngine::with_limits(component, ids, component.runtime().limits())
    }

    /// [`WasmEngine::new`] in a sandbox of its own `limits` (a tenant's guest memory, CPU
    /// deadline and per-tick caps), within the runtime's: the guest memory may not exceed the
    /// runtime's, which sizes the slots of its instance pool.
    pub fn with_limits(component: &EngineComponent, ids: CallIds, limits: &SandboxLimits) -> Result<WasmEngine> {
        let runtime = component.runtime();
        let max_memory = runtime.limits().memory_bytes;
        if limits.memory_bytes > max_memory {
            bail!(
                "a guest memory limit of {} MiB is above the runtime's {} MiB (the size of its instance slots)",
                limits.memory_bytes >> 20,
                max_memory >> 20
            );
        }
        let slot = runtime.take_slot()?;
        let limits = limits.clone();
        let mut store = Store::new(
            runtime.engine(),
            HostState::new(&limits, CallQueue::with_limits(ids.clone(), limits.queue_limits()), runtime.guest_memory_counter()),
        );
        store.limiter(|state| &mut state.limits);
        let deadline_ticks = limits.deadline_ticks();
        store.set_epoch_deadline(deadline_ticks);
        let instance = component.pre.instantiate(&mut store).map_err(wt)?;
        Ok(WasmEngine {
            store,
            instance,
            generation: component.generation(),
            ids,
            deadline_ticks,
            cpu_deadline: limits.cpu_deadline,
            poisoned: None,
            stderr_seen: 0,
            _slot: slot,
        })
    }

    /// Whether a trap has made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// The WIT generation of the instance's component.
    pub fn generation(&self) -> WitGeneration {
        self.generation
    }

    /// Calls one export under the CPU deadline; turns traps and guest errors into `anyhow`.
    fn call<R>(&mut self, export: &str, f: impl FnOnce(&mut Instance, &mut Store<HostState>) -> Guest<R>) -> Result<R> {
        if let Some(reason) = &self.poisoned {
            bail!("engine instance is unusable after an earlier trap ({reason}); restore it into a fresh instance");
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        match f(&mut self.instance, &mut self.store) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => {
                self.store.data_mut().queue.take();
                // The guest's own words, shortened: it could return its whole memory as an error.
                Err(anyhow!("engine `{export}` failed: {}", brief_reason(&message)))
            }
            Err(error) => {
                let overflow = self.store.data().queue.overflow().cloned();
                let (dropped, dropped_events) = self.store.data_mut().queue.take();
                let trap = error.downcast_ref::<wasmtime::Trap>().map(|trap| match trap {
                    // "interrupt" alone does not say that the guest ran too long.
                    wasmtime::Trap::Interrupt => format!(
                        "{trap} (it ran past its CPU deadline of {} ms, SandboxLimits::cpu_deadline)",
                        self.cpu_deadline.as_millis()
                    ),
                    _ => trap.to_string(),
                });
                let stderr = self.new_stderr();
                let mut reason = match (overflow, trap) {
                    (Some(overflow), _) => format!("guest trapped in `{export}`: {overflow}"),
                    (None, Some(trap)) => format!("guest trapped in `{export}`: {trap}"),
                    // The first line and the causes, without the wasm backtrace (which a deep
                    // guest stack makes as long as it likes).
                    (None, None) => brief_reason(&format!("guest failed in `{export}`: {}", wt(error))),
                };
                if !stderr.is_empty() {
                    reason.push_str(&format!("; guest stderr: {}", one_line(stderr.trim_end(), GUEST_STDERR_KEPT)));
                }
                if !dropped.is_empty() || !dropped_events.is_empty() {
                    tracing::warn!(
                        calls = dropped.len(),
                        events = dropped_events.len(),
                        "dropping the calls and Events queued by the failed guest call"
                    );
                }
                self.poisoned = Some(reason.clone());
                Err(anyhow!(reason))
            }
        }
    }

    fn new_stderr(&mut self) -> String {
        let contents = self.store.data().stderr.contents();
        let fresh = String::from_utf8_lossy(contents.get(self.stderr_seen..).unwrap_or_default()).into_owned();
        self.stderr_seen = contents.len();
        fresh
    }
}

impl EngineDriver for WasmEngine {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn create(&mut self, config: &TenantConfig) -> Result<()> {
        self.call("create", |i, s| i.create(s, config))
    }

    fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
        self.call("deliver", |i, s| i.deliver(s, now_ms, events))?;
        // `deliver` starts no call; anything queued would be a contract breach worth seeing.
        let (started, events) = self.store.data_mut().queue.take();
        if !started.is_empty() || !events.is_empty() {
            tracing::warn!(calls = started.len(), "engine started calls during deliver; they are dropped");
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        let outcome = self.call("tick", |i, s| i.tick(s, now_ms, completions))?;
        let (started, events) = self.store.data_mut().queue.take();
        Ok(TickResult { outcome, started, events })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.call("snapshot", |i, s| i.snapshot(s))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.call("restore", |i, s| i.restore(s, snapshot))
    }

    fn status(&mut self) -> Result<EngineStatus> {
        self.call("status", |i, s| i.status(s))
    }

    fn operations(&mut self) -> Result<Vec<OperationStatus>> {
        self.call("operations", |i, s| i.operations(s))
    }

    fn numbers_own_calls(&self) -> bool {
        self.generation.engine_numbers_calls()
    }

    fn wit_package(&self) -> Option<&'static str> {
        Some(self.generation.package())
    }

    fn call_ids(&self) -> &CallIds {
        &self.ids
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }
}

// ------------------------------------------------------------------------ NativeEngine

/// The engine crate linked into the host: same behaviour, no sandbox. Used by replay
/// (`--engine native`) and to check the component against the native build.
pub struct NativeEngine {
    engine: Option<Engine>,
    queue: CallQueue,
    /// Set once a tick went past the queue's limits: the engine believes it started calls the
    /// host dropped, so it is not used again.
    poisoned: Option<String>,
}

impl NativeEngine {
    pub fn new(ids: CallIds) -> NativeEngine {
        NativeEngine::with_limits(ids, QueueLimits::default())
    }

    /// A native engine whose ticks may queue at most `limits`; past them its tick fails and the
    /// engine is poisoned, as a sandboxed one would trap.
    pub fn with_limits(ids: CallIds, limits: QueueLimits) -> NativeEngine {
        NativeEngine { engine: None, queue: CallQueue::with_limits(ids, limits), poisoned: None }
    }

    fn usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => bail!("engine instance is unusable after an earlier failure ({reason}); restore it into a fresh instance"),
            None => Ok(()),
        }
    }

    fn engine(&mut self) -> Result<&mut Engine> {
        self.usable()?;
        self.engine.as_mut().ok_or_else(|| anyhow!("no engine in this instance: call create or restore first"))
    }
}

impl EngineDriver for NativeEngine {
    fn kind(&self) -> &'static str {
        "native"
    }

    fn create(&mut self, config: &TenantConfig) -> Result<()> {
        self.usable()?;
        if self.engine.is_some() {
            bail!("engine `create` failed: an engine already exists in this instance");
        }
        self.engine = Some(Engine::new(config.clone()));
        Ok(())
    }

    fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
        self.engine()?.deliver(now_ms, events);
        Ok(())
    }

    fn tick(&mut self, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        self.usable()?;
        let engine = self.engine.as_mut().ok_or_else(|| anyhow!("no engine in this instance: call create or restore first"))?;
        let outcome = engine.tick(now_ms, completions, &mut self.queue);
        let overflow = self.queue.overflow().cloned();
        let (started, events) = self.queue.take();
        if let Some(overflow) = overflow {
            let reason = format!(
                "engine `tick` went past its limits: {overflow}; the {} calls and {} Events it queued are dropped",
                started.len(),
                events.len()
            );
            self.engine = None;
            self.poisoned = Some(reason.clone());
            bail!(reason);
        }
        Ok(TickResult { outcome, started, events })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>> {
        Ok(self.engine()?.snapshot())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.usable()?;
        self.engine = Some(Engine::restore(snapshot)?);
        Ok(())
    }

    fn status(&mut self) -> Result<EngineStatus> {
        Ok(self.engine()?.status())
    }

    fn operations(&mut self) -> Result<Vec<OperationStatus>> {
        Ok(self.engine()?.operation_statuses())
    }

    fn call_ids(&self) -> &CallIds {
        self.queue.ids()
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::Runtime;

    fn config() -> TenantConfig {
        TenantConfig { tenant: "t1".into(), seed: 7, ..TenantConfig::default() }
    }

    #[test]
    fn wasm_engine_creates_ticks_snapshots_and_restores_into_a_fresh_instance() {
        let component = Runtime::shared().unwrap().load_builtin().unwrap();
        let ids = CallIds::default();
        let mut first = WasmEngine::new(&component, ids.clone()).unwrap();
        first.create(&config()).unwrap();
        first.deliver(1_000, vec![]).unwrap();
        first.tick(1_000, vec![]).unwrap();
        let snapshot = first.snapshot().unwrap();
        assert!(!snapshot.is_empty());

        let fresh: Box<dyn EngineDriver> = Box::new(WasmEngine::new(&component, ids).unwrap());
        let mut second = restore_into(&mut first, fresh).unwrap();
        assert_eq!(second.snapshot().unwrap(), snapshot);
        second.tick(2_000, vec![]).unwrap();
        second.status().unwrap();
    }

    #[test]
    fn wasm_engine_reports_misuse_as_errors() {
        let component = Runtime::shared().unwrap().load_builtin().unwrap();
        let mut engine = WasmEngine::new(&component, CallIds::default()).unwrap();
        let err = engine.tick(0, vec![]).unwrap_err().to_string();
        assert!(err.contains("create"), "{err}");
        engine.create(&config()).unwrap();
        assert!(engine.create(&config()).is_err());
        assert!(engine.restore(b"not a snapshot").is_err());
        // The instance is still usable: errors are not traps.
        assert!(!engine.is_poisoned());
        engine.tick(0, vec![]).unwrap();
    }

    #[test]
    fn a_native_engine_past_its_queue_limits_is_poisoned_like_a_trapped_guest() {
        use crate::k8s::KubeObject;
        let lb_service = |uid: &str| {
            let json = serde_json::json!({"kind": "Service", "apiVersion": "v1",
                "metadata": {"namespace": "default", "name": format!("svc-{uid}"), "uid": uid, "resourceVersion": "1"},
                "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}});
            KubeObject::from_json(&json).unwrap().unwrap().applied()
        };
        let ids = CallIds::default();
        let mut engine = NativeEngine::with_limits(ids.clone(), QueueLimits { max_calls: 1, ..QueueLimits::default() });
        engine.create(&config()).unwrap();
        let services = vec![lb_service("00000000-0000-4000-8000-000000000001"), lb_service("00000000-0000-4000-8000-000000000002")];
        engine.deliver(0, services.clone()).unwrap();
        let err = format!("{:#}", engine.tick(0, vec![]).unwrap_err());
        assert!(err.contains("more than 1 calls") && err.contains("max_calls_per_tick"), "{err}");
        assert!(engine.is_poisoned());
        assert!(engine.tick(0, vec![]).is_err(), "a poisoned engine refuses every further call");
        assert!(engine.snapshot().is_err());

        // The same inputs within the default limits start their calls.
        let mut fine = NativeEngine::new(CallIds::default());
        fine.create(&config()).unwrap();
        fine.deliver(0, services).unwrap();
        assert!(fine.tick(0, vec![]).unwrap().started.len() > 1);
    }

    #[test]
    fn native_engine_reports_misuse_as_errors() {
        let mut engine = NativeEngine::new(CallIds::default());
        assert!(engine.tick(0, vec![]).is_err());
        engine.create(&config()).unwrap();
        assert!(engine.create(&config()).is_err());
        engine.tick(0, vec![]).unwrap();
    }
}
