//! One tenant's engine behind one trait, whether it runs as the component in wasmtime
//! ([`WasmEngine`]) or linked natively ([`NativeEngine`], for replay and differential tests).
//!
//! Both allocate call ids from the tenant's [`CallIds`] counter (kept by the host, so it survives
//! a swap of the instance) and queue what the engine started during a `tick` in a [`CallQueue`];
//! for the same inputs they return the same [`TickResult`]s. Whatever the guest does, the host
//! sees an `anyhow` error, never a panic: a trap (or a CPU/memory limit hit) poisons the
//! [`WasmEngine`], which then refuses every further call, and the tenant rebuilds it from a
//! snapshot ([`restore_into`]).

use crate::runtime::bindings::{wit as w, DifftrackerEngine};
use crate::runtime::imports::{completion_out, kube_event_out, status_in, tenant_config_out, tick_outcome_in};
use crate::runtime::{wt, EngineComponent, HostState};
use anyhow::{anyhow, bail, Result};
use difftracker_engine::io::{
    Call, CallId, Completion, EngineStatus, Io, KubeEvent, KubeEventRecord, TenantConfig, TickOutcome,
};
use difftracker_engine::Engine;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wasmtime::Store;

/// The tenant's call-id counter. Shared by every instance the tenant runs (clones share it), so
/// ids stay unique for the tenant's lifetime across snapshot/restore and hot swap.
#[derive(Clone, Debug)]
pub struct CallIds(Arc<AtomicU64>);

impl Default for CallIds {
    fn default() -> Self {
        CallIds::starting_at(1)
    }
}

impl CallIds {
    pub fn starting_at(first: CallId) -> Self {
        CallIds(Arc::new(AtomicU64::new(first)))
    }
    pub fn allocate(&self) -> CallId {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    /// The id the next call will get.
    pub fn peek(&self) -> CallId {
        self.0.load(Ordering::Relaxed)
    }
    /// Sets the id the next call will get. Only for trap recovery, which replays a deterministic
    /// log of inputs from a snapshot: rewound to the snapshot's next id, the replay allocates
    /// exactly the ids the calls in flight already carry.
    pub fn set_next(&self, next: CallId) {
        self.0.store(next, Ordering::Relaxed)
    }
}

/// What the engine started during one export call: `(id, call)` pairs in start order, and the
/// Kubernetes Events it recorded.
#[derive(Debug, Default)]
pub struct CallQueue {
    ids: CallIds,
    started: Vec<(CallId, Call)>,
    events: Vec<KubeEventRecord>,
}

impl CallQueue {
    pub fn new(ids: CallIds) -> Self {
        CallQueue { ids, started: Vec::new(), events: Vec::new() }
    }
    pub fn take(&mut self) -> (Vec<(CallId, Call)>, Vec<KubeEventRecord>) {
        (std::mem::take(&mut self.started), std::mem::take(&mut self.events))
    }
    pub fn ids(&self) -> &CallIds {
        &self.ids
    }
}

impl Io for CallQueue {
    fn start(&mut self, call: Call) -> CallId {
        let id = self.ids.allocate();
        self.started.push((id, call));
        id
    }
    fn record_event(&mut self, event: KubeEventRecord) {
        self.events.push(event);
    }
}

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
    /// The tenant's call-id counter.
    fn call_ids(&self) -> &CallIds;
    /// Whether an earlier failure (a trap, a limit) left this instance unusable: every further
    /// call fails, and the tenant must rebuild it from a snapshot. Engines that cannot trap keep
    /// the default.
    fn is_poisoned(&self) -> bool {
        false
    }
}

/// Moves the state of `old` into the fresh instance `new` (hot swap, trap recovery, tests).
/// `old` is left untouched, so it keeps running if this fails.
pub fn restore_into(old: &mut dyn EngineDriver, mut new: Box<dyn EngineDriver>) -> Result<Box<dyn EngineDriver>> {
    let snapshot = old.snapshot()?;
    new.restore(&snapshot)?;
    Ok(new)
}

// ------------------------------------------------------------------------ WasmEngine

/// The engine component in a sandboxed wasmtime store.
pub struct WasmEngine {
    store: Store<HostState>,
    bindings: DifftrackerEngine,
    ids: CallIds,
    deadline_ticks: u64,
    /// Set once the guest trapped: the store must not be entered again.
    poisoned: Option<String>,
    stderr_seen: usize,
}

impl WasmEngine {
    /// A fresh instance of `component`, allocating call ids from `ids`.
    pub fn new(component: &EngineComponent, ids: CallIds) -> Result<WasmEngine> {
        let runtime = component.runtime();
        let limits = runtime.limits().clone();
        let mut store = Store::new(runtime.engine(), HostState::new(&limits, CallQueue::new(ids.clone())));
        store.limiter(|state| &mut state.limits);
        let deadline_ticks = limits.deadline_ticks();
        store.set_epoch_deadline(deadline_ticks);
        let bindings = component.pre.instantiate(&mut store).map_err(wt)?;
        Ok(WasmEngine { store, bindings, ids, deadline_ticks, poisoned: None, stderr_seen: 0 })
    }

    /// Whether a trap has made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Calls one export under the CPU deadline; turns traps and guest errors into `anyhow`.
    fn call<R>(
        &mut self,
        export: &str,
        f: impl FnOnce(&DifftrackerEngine, &mut Store<HostState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R> {
        if let Some(reason) = &self.poisoned {
            bail!("engine instance is unusable after an earlier trap ({reason}); restore it into a fresh instance");
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        match f(&self.bindings, &mut self.store) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => {
                self.store.data_mut().queue.take();
                Err(anyhow!("engine `{export}` failed: {message}"))
            }
            Err(error) => {
                let (dropped, _) = self.store.data_mut().queue.take();
                let trap = error.downcast_ref::<wasmtime::Trap>().map(|t| t.to_string());
                let stderr = self.new_stderr();
                let mut reason = match trap {
                    Some(trap) => format!("guest trapped in `{export}`: {trap}"),
                    None => format!("guest failed in `{export}`: {}", wt(error)),
                };
                if !stderr.is_empty() {
                    reason.push_str(&format!("; guest stderr: {}", stderr.trim_end()));
                }
                if !dropped.is_empty() {
                    tracing::warn!(calls = dropped.len(), "dropping calls started by the failed guest call");
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
        let config = tenant_config_out(config);
        self.call("create", |b, s| b.clb_difftracker_engine().call_create(s, &config))
    }

    fn deliver(&mut self, now_ms: u64, events: Vec<KubeEvent>) -> Result<()> {
        let events: Vec<w::KubeEvent> = events.into_iter().map(kube_event_out).collect();
        self.call("deliver", |b, s| b.clb_difftracker_engine().call_deliver(s, now_ms, &events))?;
        // `deliver` starts no call; anything queued would be a contract breach worth seeing.
        let (started, events) = self.store.data_mut().queue.take();
        if !started.is_empty() || !events.is_empty() {
            tracing::warn!(calls = started.len(), "engine started calls during deliver; they are dropped");
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        let completions: Vec<w::Completion> = completions.into_iter().map(completion_out).collect();
        let outcome = self.call("tick", |b, s| b.clb_difftracker_engine().call_tick(s, now_ms, &completions))?;
        let (started, events) = self.store.data_mut().queue.take();
        Ok(TickResult { outcome: tick_outcome_in(outcome), started, events })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.call("snapshot", |b, s| b.clb_difftracker_engine().call_snapshot(s))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.call("restore", |b, s| b.clb_difftracker_engine().call_restore(s, snapshot))
    }

    fn status(&mut self) -> Result<EngineStatus> {
        self.call("status", |b, s| b.clb_difftracker_engine().call_status(s)).map(status_in)
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
}

impl NativeEngine {
    pub fn new(ids: CallIds) -> NativeEngine {
        NativeEngine { engine: None, queue: CallQueue::new(ids) }
    }

    fn engine(&mut self) -> Result<&mut Engine> {
        self.engine.as_mut().ok_or_else(|| anyhow!("no engine in this instance: call create or restore first"))
    }
}

impl EngineDriver for NativeEngine {
    fn kind(&self) -> &'static str {
        "native"
    }

    fn create(&mut self, config: &TenantConfig) -> Result<()> {
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
        let engine = self.engine.as_mut().ok_or_else(|| anyhow!("no engine in this instance: call create or restore first"))?;
        let outcome = engine.tick(now_ms, completions, &mut self.queue);
        let (started, events) = self.queue.take();
        Ok(TickResult { outcome, started, events })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>> {
        Ok(self.engine()?.snapshot())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.engine = Some(Engine::restore(snapshot)?);
        Ok(())
    }

    fn status(&mut self) -> Result<EngineStatus> {
        Ok(self.engine()?.status())
    }

    fn call_ids(&self) -> &CallIds {
        self.queue.ids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;

    fn config() -> TenantConfig {
        TenantConfig { tenant: "t1".into(), seed: 7 }
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
    fn native_engine_reports_misuse_as_errors() {
        let mut engine = NativeEngine::new(CallIds::default());
        assert!(engine.tick(0, vec![]).is_err());
        engine.create(&config()).unwrap();
        assert!(engine.create(&config()).is_err());
        engine.tick(0, vec![]).unwrap();
    }
}
