//! One engine instance whatever the WIT generation of its component: [`WitGeneration`] (found
//! at load from the component's imports and exports), the pre-linked component of either
//! generation ([`Pre`]) and the live instance ([`Instance`]), whose methods take and give the
//! engine's own types (`difftracker_engine::io`). [`crate::driver::WasmEngine`] is built on it,
//! so the tenant, replay, serve, bench and status code never see a generation.

use super::{v0_2, v0_3, HostState};
use difftracker_engine::io;
use wasmtime::Store;

/// A WIT generation of the contract this host serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WitGeneration {
    /// `clb:difftracker@0.2.0` (`wit/0.2.0/`): free functions, host-allocated call ids.
    V0_2,
    /// `clb:difftracker@0.3.0` (`wit/0.3.0/`): the engine resource, engine-allocated call ids.
    V0_3,
}

impl WitGeneration {
    /// Every generation this host runs, oldest first.
    pub const SUPPORTED: [WitGeneration; 2] = [WitGeneration::V0_2, WitGeneration::V0_3];
    /// The generation of the bundled engine.
    pub const LATEST: WitGeneration = WitGeneration::V0_3;

    /// The package with its version, as WIT writes it (`clb:difftracker@0.3.0`).
    pub fn package(self) -> &'static str {
        match self {
            WitGeneration::V0_2 => "clb:difftracker@0.2.0",
            WitGeneration::V0_3 => "clb:difftracker@0.3.0",
        }
    }

    pub fn version(self) -> &'static str {
        self.package().split_once('@').map_or("", |(_, version)| version)
    }

    /// Whether the engine allocates its call ids (0.3.0) rather than the host (0.2.0).
    pub fn engine_numbers_calls(self) -> bool {
        self == WitGeneration::V0_3
    }
}

impl std::fmt::Display for WitGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}

/// A component pre-linked for its generation.
#[derive(Clone)]
pub(crate) enum Pre {
    V0_2(v0_2::Pre),
    V0_3(v0_3::Pre),
}

impl Pre {
    pub(crate) fn new(generation: WitGeneration, pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Pre> {
        Ok(match generation {
            WitGeneration::V0_2 => Pre::V0_2(v0_2::pre(pre)?),
            WitGeneration::V0_3 => Pre::V0_3(v0_3::pre(pre)?),
        })
    }

    pub(crate) fn generation(&self) -> WitGeneration {
        match self {
            Pre::V0_2(_) => WitGeneration::V0_2,
            Pre::V0_3(_) => WitGeneration::V0_3,
        }
    }

    pub(crate) fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V0_2(pre) => Instance::V0_2(v0_2::Instance::new(pre, store)?),
            Pre::V0_3(pre) => Instance::V0_3(v0_3::Instance::new(pre, store)?),
        })
    }
}

/// What an export call gives: a trap (`Err`), or the guest's answer (its error as text).
pub(crate) type Guest<T> = wasmtime::Result<Result<T, String>>;

/// A live instance of either generation.
pub(crate) enum Instance {
    V0_2(v0_2::Instance),
    V0_3(v0_3::Instance),
}

/// The same call on whichever generation runs.
macro_rules! either {
    ($self:ident, $i:ident => $call:expr) => {
        match $self {
            Instance::V0_2($i) => $call,
            Instance::V0_3($i) => $call,
        }
    };
}

impl Instance {
    pub(crate) fn create(&mut self, store: &mut Store<HostState>, config: &io::TenantConfig) -> Guest<()> {
        either!(self, i => i.create(store, config))
    }
    pub(crate) fn deliver(&mut self, store: &mut Store<HostState>, now_ms: u64, events: Vec<io::KubeEvent>) -> Guest<()> {
        either!(self, i => i.deliver(store, now_ms, events))
    }
    pub(crate) fn tick(&mut self, store: &mut Store<HostState>, now_ms: u64, completions: Vec<io::Completion>) -> Guest<io::TickOutcome> {
        either!(self, i => i.tick(store, now_ms, completions))
    }
    pub(crate) fn snapshot(&mut self, store: &mut Store<HostState>) -> Guest<Vec<u8>> {
        either!(self, i => i.snapshot(store))
    }
    pub(crate) fn restore(&mut self, store: &mut Store<HostState>, snapshot: &[u8]) -> Guest<()> {
        either!(self, i => i.restore(store, snapshot))
    }
    pub(crate) fn status(&mut self, store: &mut Store<HostState>) -> Guest<io::EngineStatus> {
        either!(self, i => i.status(store))
    }
    pub(crate) fn operations(&mut self, store: &mut Store<HostState>) -> Guest<Vec<io::OperationStatus>> {
        either!(self, i => i.operations(store))
    }
}
