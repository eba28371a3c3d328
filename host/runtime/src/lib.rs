//! The production host of difftracker: runs ServiceGateway diff-tracker engines (one per tenant,
//! each a sandboxed WebAssembly component) and performs the calls they start. Nothing here knows
//! about the emulator, traces or replay: those live in `difftracker-simulation`, which depends on
//! this crate, never the other way round.
//!
//! Where each piece fits, from the component inwards to the outside world:
//!
//! - [`wasm`]: wasmtime. One [`wasm::Runtime`] per process (engine, linker, epoch ticker,
//!   on-disk cache of compiled components); [`wasm::Runtime::load`] checks a component's
//!   imports, finds its WIT generation, compiles it once and pre-links it; [`wasm::sandbox`]
//!   holds the per-tenant limits and the empty WASI context; [`wasm::v0_2`] and [`wasm::v0_3`]
//!   are the `bindgen!`s of `wit/0.2.0/` and `wit/0.3.0/`, [`wasm::instance`] one instance type
//!   over both.
//! - [`driver`]: the [`driver::EngineDriver`] trait, one tenant's engine as the host drives it
//!   (`create`, `deliver`, `tick`, `snapshot`, `restore`, `status`), implemented by
//!   [`driver::WasmEngine`] (the component) and [`driver::NativeEngine`] (the engine crate linked
//!   in). Both turn the engine's started calls into `(call id, call)` pairs, numbered by the host
//!   or (a 0.3.0 component) by the engine.
//! - [`tenant`]: one tenant's tick loop on tokio: sleep until an event, a completion or the
//!   engine's next wake-up, tick, and hand every started call to the executor.
//! - [`executor`]: performs calls as tasks through a [`backend::CloudBackend`] and a
//!   [`backend::KubeBackend`] under a per-tenant and a global cap; completions go back to the
//!   tenant's next tick. Also the [`executor::Clock`] (real or manual).
//! - [`backend`]: the traits every backend implements (the ARM/NRP transport here; the emulator
//!   and mocks in the simulation kit).
//! - [`transport`]: ARM/NRP over HTTP (URLs and resource IDs from the tenant's configuration,
//!   tokens, long-running operations, paging, retries).
//! - [`k8s`]: Kubernetes JSON to engine events.
//! - [`controller`]: one tenant against a real cluster (kube-rs) and ARM, with leader election
//!   over a Lease and a fence on every call; what `difftracker run` and the main job run.
//! - [`serve`]: many tenants' controllers in one process from a TOML configuration, each in
//!   its own sandbox, reloadable; [`admin`]: its token-guarded admin API (list, pause, resume,
//!   restart, swap, rollback, reload).
//! - [`observe`]: `/metrics`, `/healthz`, `/readyz` and the status page; [`server`]: the one
//!   handle type of every HTTP server the host runs.

pub mod admin;
pub mod backend;
pub mod calls;
pub mod controller;
pub mod correlation;
pub mod driver;
pub mod executor;
pub mod k8s;
pub mod observe;
pub mod serve;
pub mod server;
pub mod tenant;
pub mod transport;
pub mod wasm;

pub use wasm::{engine_wasm_path, ENGINE_WASM};
