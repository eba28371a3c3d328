//! Host-side bindings of the world `clb:difftracker/difftracker-engine`, generated from `wit/`.
//!
//! The generated `Host` traits of the `cloud` and `kube` imports are implemented by
//! [`crate::driver::HostState`]; the `engine` export is called through [`DifftrackerEngine`].
//! Every import may trap (returns `wasmtime::Result`): that is how a guest past its per-tick
//! limits is stopped.

wasmtime::component::bindgen!({
    world: "difftracker-engine",
    path: "../../wit",
    imports: { default: trappable },
});

pub use clb::difftracker::types as wit;
pub use exports::clb::difftracker::engine as wit_engine;
