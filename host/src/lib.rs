//! The difftracker host: runs ServiceGateway diff-tracker engines (one per tenant, each a
//! sandboxed WebAssembly component) and performs the calls they start.
//!
//! Where each piece fits, from the component inwards to the outside world:
//!
//! - [`runtime`]: wasmtime. One [`runtime::Runtime`] per process (engine, linker, epoch ticker,
//!   on-disk cache of compiled components); [`runtime::Runtime::load`] checks a component's
//!   imports, compiles it once and pre-links it; [`runtime::sandbox`] holds the per-tenant limits
//!   and the empty WASI context; [`runtime::bindings`] is the `bindgen!` of `wit/`.
//! - [`driver`]: the [`driver::EngineDriver`] trait, one tenant's engine as the host drives it
//!   (`create`, `deliver`, `tick`, `snapshot`, `restore`, `status`), implemented by
//!   [`driver::WasmEngine`] (the component) and [`driver::NativeEngine`] (the engine crate linked
//!   in). Both turn the engine's started calls into `(call id, call)` pairs.
//! - [`tenant`]: one tenant's tick loop on tokio: sleep until an event, a completion or the
//!   engine's next wake-up, tick, and hand every started call to the executor.
//! - [`executor`]: performs calls as tasks through a [`backend::CloudBackend`] and a
//!   [`backend::KubeBackend`] under a per-tenant and a global cap; completions go back to the
//!   tenant's next tick. Also the [`executor::Clock`] (real or manual).
//! - [`backend`]: the traits every backend implements (mocks, the ARM/NRP transport, the
//!   emulator); [`mock`]: instant in-process backends for the demo.
//! - [`demo`]: `difftracker demo`, the sample inbound path against [`mock`] backends, with the
//!   sample Kubernetes objects it (and the tests) use.
//! - [`transport`]: ARM/NRP over HTTP (URLs and resource IDs from the tenant's configuration,
//!   tokens, long-running operations, paging, retries); [`emulator`]: the ARM/NRP emulator with
//!   Azure's referential rules and seeded faults, over HTTP or in-process.
//! - [`k8s`]: Kubernetes JSON to engine events; [`replay`]: watch traces, the simulated cluster,
//!   virtual-time replay, its report and oracle, and the trace generator.
//! - [`live`]: the main job and default command (sample trace -> simulated cluster -> tenant ->
//!   HTTP -> in-process emulator); [`observe`]: `/metrics`, `/healthz`, `/readyz`, status page.
//! - [`bench`]: `difftracker bench-engine`, the engine-only lifecycle benchmark.
//!
//! The `difftracker` binary (`main.rs`) wires these together behind subcommands.

pub mod backend;
pub mod bench;
pub mod demo;
pub mod driver;
pub mod emulator;
pub mod executor;
pub mod k8s;
pub mod live;
pub mod mock;
pub mod observe;
pub mod replay;
pub mod runtime;
pub mod tenant;
pub mod transport;

pub use runtime::{engine_wasm_path, ENGINE_WASM};
