//! Host-side bindings of the world `clb:difftracker/difftracker-engine`, generated from `wit/`.
//!
//! The generated `Host` traits of the `cloud` and `kube` imports are implemented by
//! [`crate::driver::HostState`]; the `engine` export is called through [`DifftrackerEngine`].

wasmtime::component::bindgen!({
    world: "difftracker-engine",
    path: "../../wit",
});

pub use clb::difftracker::types as wit;
pub use exports::clb::difftracker::engine as wit_engine;
