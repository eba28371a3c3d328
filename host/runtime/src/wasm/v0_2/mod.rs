//! The `clb:difftracker@0.2.0` generation (`wit/0.2.0/`): free functions over one engine per
//! instance, call ids allocated by the host. Kept so that components built against it still run
//! and a tenant can be swapped live from one to the 0.3.0 engine (and back).
//!
//! - `bindings`: `bindgen!` of the world; every import may trap (returns `wasmtime::Result`):
//!   that is how a guest past its per-tick limits is stopped.
//! - [`imports`]: the host side of the `cloud` and `kube` imports (the ids come from the
//!   tenant's [`crate::calls::CallIds`]); `conversions`: what 0.2.0 converts differently from
//!   0.3.0 (errors as a record, samples without a kind), plus the shared `domain` conversions.
//! - [`Instance`]: the exports, called with the engine's own types.

mod conversions;
pub mod imports;

use super::HostState;
use difftracker_engine::io;
use wasmtime::Store;

mod bindings {
    wasmtime::component::bindgen!({
        world: "difftracker-engine",
        path: "../../wit/0.2.0",
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

/// One instance of a 0.2.0 component; the engine is its global.
pub(crate) struct Instance(bindings::DifftrackerEngine);

impl Instance {
    pub(crate) fn new(pre: &Pre, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        pre.instantiate(store).map(Instance)
    }

    fn engine(&self) -> &wx::Guest {
        self.0.clb_difftracker_engine()
    }

    pub(crate) fn create(&mut self, store: &mut Store<HostState>, config: &io::TenantConfig) -> Guest<()> {
        self.engine().call_create(store, &wx::TenantConfig::from(config))
    }

    pub(crate) fn deliver(&mut self, store: &mut Store<HostState>, now_ms: u64, events: Vec<io::KubeEvent>) -> Guest<()> {
        let events: Vec<w::KubeEvent> = events.into_iter().map(w::KubeEvent::from).collect();
        self.engine().call_deliver(store, now_ms, &events)
    }

    pub(crate) fn tick(&mut self, store: &mut Store<HostState>, now_ms: u64, completions: Vec<io::Completion>) -> Guest<io::TickOutcome> {
        let completions: Vec<w::Completion> = completions.into_iter().map(w::Completion::from).collect();
        Ok(self.engine().call_tick(store, now_ms, &completions)?.map(io::TickOutcome::from))
    }

    pub(crate) fn snapshot(&mut self, store: &mut Store<HostState>) -> Guest<Vec<u8>> {
        self.engine().call_snapshot(store)
    }

    pub(crate) fn restore(&mut self, store: &mut Store<HostState>, snapshot: &[u8]) -> Guest<()> {
        self.engine().call_restore(store, snapshot)
    }

    pub(crate) fn status(&mut self, store: &mut Store<HostState>) -> Guest<io::EngineStatus> {
        Ok(self.engine().call_status(store)?.map(io::EngineStatus::from))
    }

    pub(crate) fn operations(&mut self, store: &mut Store<HostState>) -> Guest<Vec<io::OperationStatus>> {
        Ok(self.engine().call_operations(store)?.map(|ops| ops.into_iter().map(io::OperationStatus::from).collect()))
    }
}
