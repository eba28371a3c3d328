//! Every command's flags (one clap `Args` struct each) and the few lines that turn them into the
//! library's options and run it.

mod apiserver;
mod bench;
mod demo;
mod emulator;
mod explain;
mod live;
mod progress;
mod replay;
mod run;
mod serve;
mod swap;

pub use apiserver::ApiServerArgs;
pub use bench::{BenchArgs, BenchShardArgs, BenchTenantsArgs};
pub use demo::DemoArgs;
pub use emulator::EmulatorArgs;
pub use explain::ExplainArgs;
pub use live::LiveArgs;
pub use replay::{GenTraceArgs, ReplayArgs};
pub use run::RunArgs;
pub use serve::{AdminArgs, ServeArgs};
pub use swap::{BenchSwapArgs, SnapshotArgs};

use difftracker_runtime::driver::EngineKind;
use difftracker_runtime::wasm::SandboxLimits;
use std::time::Duration;

/// The engine component's sandbox (`--engine wasm`), shared by the commands that run one.
#[derive(Clone, Debug, clap::Args)]
pub struct SandboxArgs {
    /// The guest's linear memory limit, in MiB: an input that needs more traps the guest and is
    /// quarantined.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub guest_memory_mib: u32,
    /// CPU time one call into the guest may take, in milliseconds, before it is interrupted.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub guest_cpu_ms: u64,
}

impl SandboxArgs {
    pub fn limits(&self) -> SandboxLimits {
        SandboxLimits {
            memory_bytes: (self.guest_memory_mib as usize) << 20,
            cpu_deadline: Duration::from_millis(self.guest_cpu_ms),
            ..SandboxLimits::default()
        }
    }
}

/// `--engine`: which build of the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// The WebAssembly component in the wasmtime sandbox.
    Wasm,
    /// The engine crate linked into the host.
    Native,
}

impl From<EngineArg> for EngineKind {
    fn from(arg: EngineArg) -> EngineKind {
        match arg {
            EngineArg::Wasm => EngineKind::Wasm,
            EngineArg::Native => EngineKind::Native,
        }
    }
}
