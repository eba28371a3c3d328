//! Every command's flags (one clap `Args` struct each) and the few lines that turn them into the
//! library's options and run it.

mod apiserver;
mod bench;
mod demo;
mod emulator;
mod live;
mod replay;

pub use apiserver::ApiServerArgs;
pub use bench::BenchArgs;
pub use demo::DemoArgs;
pub use emulator::EmulatorArgs;
pub use live::LiveArgs;
pub use replay::{GenTraceArgs, ReplayArgs};

use difftracker_runtime::driver::EngineKind;

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
