//! The `clb:difftracker@0.3.0` generation (`wit/0.3.0/`), the bundled engine's: the engine is a
//! resource, errors are typed, samples carry their kind, and the engine numbers its calls.
//!
//! - `bindings`: `bindgen!` of the world; every import may trap (returns `wasmtime::Result`).
//! - [`imports`]: the host side of the `cloud` and `kube` imports, which take the engine's id;
//!   `conversions`: what 0.3.0 converts its own way (the `call-error` variant, metric kinds),
//!   plus the shared `domain` conversions.
//! - [`Instance`]: the exports on the instance's one `engine` resource, called with the engine's
//!   own types. After the resource is constructed or restored the host reads its call-id counter
//!   into the store's [`CallQueue`](crate::calls::CallQueue), which only mirrors it (the driver's
//!   `next_call_id`, what replays and swaps check); the host allocates nothing.

mod conversions;
pub mod imports;

use super::HostState;
use difftracker_engine::io;
use wasmtime::component::ResourceAny;
use wasmtime::Store;

mod bindings {
    wasmtime::component::bindgen!({
        world: "difftracker-engine",
        path: "../../wit/0.3.0",
        imports: { default: trappable },
    });
}

use bindings::clb::difftracker::types as w;
use bindings::exports::clb::difftracker::engine as wx;

use super::instance::Guest;

/// The component, pre-linked.
pub(crate) type Pre = bindings::DifftrackerEnginePre<HostState>;

pub(crate) fn add_to_linker(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    bindings::DifftrackerEngine::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(linker, |state| state)
}

pub(crate) fn pre(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Pre> {
    Pre::new(pre)
}

/// The engine's error in words (the generated `Display` is its `Debug`).
fn describe(error: wx::EngineError) -> String {
    match error {
        wx::EngineError::SnapshotRefused(reason) => reason,
        wx::EngineError::SnapshotFailed(reason) => format!("the engine could not write its snapshot: {reason}"),
        wx::EngineError::Reentered => "the engine was re-entered".into(),
    }
}

const NO_ENGINE: &str = "no engine in this instance: call create or restore first";

/// One instance of a 0.3.0 component and the engine resource it holds (none until `create` or
/// `restore`).
pub(crate) struct Instance {
    bindings: bindings::DifftrackerEngine,
    engine: Option<ResourceAny>,
}

impl Instance {
    pub(crate) fn new(pre: &Pre, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(Instance { bindings: pre.instantiate(store)?, engine: None })
    }

    /// Calls a method on the engine resource, its typed error as text.
    fn method<R>(
        &self,
        store: &mut Store<HostState>,
        f: impl FnOnce(&wx::GuestEngine<'_>, &mut Store<HostState>, ResourceAny) -> wasmtime::Result<Result<R, wx::EngineError>>,
    ) -> Guest<R> {
        let Some(engine) = self.engine else { return Ok(Err(NO_ENGINE.into())) };
        Ok(f(&self.bindings.clb_difftracker_engine().engine(), store, engine)?.map_err(describe))
    }

    /// Makes `engine` this instance's engine (dropping the one it replaces) and mirrors its call-id
    /// counter into the store's queue.
    fn hold(&mut self, store: &mut Store<HostState>, engine: ResourceAny) -> Guest<()> {
        if let Some(old) = self.engine.replace(engine) {
            old.resource_drop(&mut *store)?;
        }
        let next = self.method(store, |e, s, r| e.call_next_call_id(s, r))?;
        Ok(next.map(|next| store.data_mut().queue.ids().set_next(next)))
    }

    pub(crate) fn create(&mut self, store: &mut Store<HostState>, config: &io::TenantConfig) -> Guest<()> {
        if self.engine.is_some() {
            return Ok(Err("an engine already exists in this instance".into()));
        }
        let engine = self.bindings.clb_difftracker_engine().engine().call_constructor(&mut *store, &wx::TenantConfig::from(config))?;
        self.hold(store, engine)
    }

    pub(crate) fn deliver(&mut self, store: &mut Store<HostState>, now_ms: u64, events: Vec<io::KubeEvent>) -> Guest<()> {
        let events: Vec<w::KubeEvent> = events.into_iter().map(w::KubeEvent::from).collect();
        self.method(store, |e, s, r| e.call_deliver(s, r, now_ms, &events))
    }

    pub(crate) fn tick(&mut self, store: &mut Store<HostState>, now_ms: u64, completions: Vec<io::Completion>) -> Guest<io::TickOutcome> {
        let completions: Vec<w::Completion> = completions.into_iter().map(w::Completion::from).collect();
        Ok(self.method(store, |e, s, r| e.call_tick(s, r, now_ms, &completions))?.map(io::TickOutcome::from))
    }

    pub(crate) fn snapshot(&mut self, store: &mut Store<HostState>) -> Guest<Vec<u8>> {
        self.method(store, |e, s, r| e.call_snapshot(s, r))
    }

    /// A refused snapshot leaves the engine this instance held, if any.
    pub(crate) fn restore(&mut self, store: &mut Store<HostState>, snapshot: &[u8]) -> Guest<()> {
        match self.bindings.clb_difftracker_engine().engine().call_restore(&mut *store, snapshot)? {
            Ok(engine) => self.hold(store, engine),
            Err(e) => Ok(Err(describe(e))),
        }
    }

    pub(crate) fn status(&mut self, store: &mut Store<HostState>) -> Guest<io::EngineStatus> {
        Ok(self.method(store, |e, s, r| e.call_status(s, r))?.map(io::EngineStatus::from))
    }

    pub(crate) fn operations(&mut self, store: &mut Store<HostState>) -> Guest<Vec<io::OperationStatus>> {
        Ok(self.method(store, |e, s, r| e.call_operations(s, r))?.map(|ops| ops.into_iter().map(io::OperationStatus::from).collect()))
    }
}
