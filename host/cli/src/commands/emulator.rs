//! `difftracker emulator`.

use anyhow::Result;
use difftracker_simulation::emulator::{run_emulator, EmulatorOptions, LroMode, PollingOptions};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Serve the ARM/NRP emulator over HTTP until Ctrl-C.
#[derive(Clone, Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to serve on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// A fault file (see the README): seeded errors, throttling, latency and failed operations.
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Answer writes as long-running operations (201/202 with polling headers) instead of at once.
    #[arg(long)]
    pub polling: bool,
    /// Do not seed the AKS-owned `default-natgw`.
    #[arg(long)]
    pub no_default_natgw: bool,
}

impl EmulatorArgs {
    pub async fn run(self) -> Result<()> {
        let options = EmulatorOptions {
            lro: if self.polling { LroMode::Polling(PollingOptions::default()) } else { LroMode::Synchronous },
            seed_default_natgw: !self.no_default_natgw,
            ..EmulatorOptions::default()
        };
        run_emulator(self.listen, self.faults, options).await
    }
}
