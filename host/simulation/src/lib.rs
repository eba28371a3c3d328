//! The simulation kit of difftracker: everything that exists to run, test and measure the
//! production host of `difftracker-runtime` on one machine, without Azure or a cluster.
//!
//! - [`apiserver`]: an in-repo Kubernetes API server (Services, Nodes, Pods, EndpointSlices,
//!   Events, Leases) over HTTP, which kubectl and the Python client drive; a pure store at its core.
//! - [`emulator`]: the ARM/NRP emulator with Azure's referential rules and seeded faults, over
//!   HTTP or in-process; [`faults`]: the seeded decisions both fault files share.
//! - [`replay`]: Kubernetes watch traces, the simulated cluster, virtual-time replay, its report
//!   and oracle, and the trace generator.
//! - [`live`]: the main job (sample trace -> simulated cluster -> tenant -> HTTP -> in-process
//!   emulator), what `difftracker` runs with no arguments.
//! - [`mock`]: instant in-process backends; [`demo`]: one Service through the inbound path
//!   against them.
//! - [`bench`]: the engine-only lifecycle benchmark; [`bench_swap`]: the hot swap benchmark;
//!   [`bench_tenants`]: many tenants in one process (density, and fair share beside misbehaving ones).
//! - [`explain`]: the words of `difftracker explain` for one operation.
//! - [`partition`]: a TCP relay the tests cut and heal, a network partition.
//! - [`serve`]: the embedded emulator, embedded and simulated clusters and the misbehaving
//!   component for the tenants of `difftracker serve`.
//! - [`samples`]: the bundled sample trace and fault file, and sample Kubernetes objects.
//! - [`MISBEHAVING_WASM`]: a hostile engine component (`tests/guests/misbehaving/`, built by
//!   `build.rs`) whose tenant name picks how it misbehaves: the hostile-component tests and the
//!   demo's `builtin:misbehaving` tenant run it.
//! - [`ENGINE_V0_2_WASM`]: the engine built for the previous WIT generation,
//!   `clb:difftracker@0.2.0` (feature `wit-0-2`, built by `build.rs`): the tests that run a 0.2.0
//!   component and swap a tenant live across generations.
//!
//! The `difftracker` binary (`host/cli`) wires these to its commands.

pub mod apiserver;
pub mod bench;
pub mod bench_shard;
pub mod bench_swap;
pub mod bench_tenants;
pub mod demo;
pub mod emulator;
pub mod explain;
pub mod faults;
pub mod live;
pub mod mock;
pub mod partition;
pub mod replay;
pub mod samples;
pub mod serve;

use std::path::Path;

/// The misbehaving engine component (`tests/guests/misbehaving/`: loops, floods, traps, WASI
/// probes, chosen by the tenant name; see its `lib.rs`), built by `host/simulation/build.rs`.
pub const MISBEHAVING_WASM: &[u8] = include_bytes!(env!("DIFFTRACKER_MISBEHAVING_WASM"));

/// Where `host/simulation/build.rs` wrote the misbehaving engine component.
pub fn misbehaving_wasm_path() -> &'static Path {
    Path::new(env!("DIFFTRACKER_MISBEHAVING_WASM"))
}

/// The engine component of WIT generation 0.2.0: this engine built with the feature `wit-0-2`
/// by `host/simulation/build.rs` (`cargo build -p difftracker-engine --release --target
/// wasm32-wasip2 --features wit-0-2`), so it stays reproducibly buildable.
pub const ENGINE_V0_2_WASM: &[u8] = include_bytes!(env!("DIFFTRACKER_ENGINE_V0_2_WASM"));

/// Where `host/simulation/build.rs` wrote the 0.2.0 engine component.
pub fn engine_v0_2_wasm_path() -> &'static Path {
    Path::new(env!("DIFFTRACKER_ENGINE_V0_2_WASM"))
}
