//! `difftracker emulator`.

use anyhow::Result;
use difftracker_simulation::emulator::throttle::RateLimits;
use difftracker_simulation::emulator::{run_emulator, CloudState, EmulatorAuth, EmulatorOptions, LroMode, PollingOptions};
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
    /// Accept only this bearer token (401 without it), as ARM checks its callers.
    #[arg(long, conflicts_with = "any_token")]
    pub token: Option<String>,
    /// Accept any non-empty bearer token (401 without one).
    #[arg(long)]
    pub any_token: bool,
    /// The URL clients reach the emulator at (the base of the polling URLs and nextLinks it
    /// hands out); `http://` + the listening address by default.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Start from these resources (of "a previous controller"): a JSON file in the shape
    /// `GET /_emulator/inventory` prints (see the README).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Enforce ARM's per-subscription budgets: WRITES[,READS], each CAPACITY/REFILL_PER_SECOND
    /// (token buckets; 429 with Retry-After beyond them). Without a value, ARM's defaults
    /// (200/10,250/25).
    #[arg(long, num_args = 0..=1, default_missing_value = RateLimits::DEFAULT_TEXT, value_parser = RateLimits::parse)]
    pub rate_limits: Option<RateLimits>,
}

impl EmulatorArgs {
    pub async fn run(self) -> Result<()> {
        let auth = match (self.token, self.any_token) {
            (Some(t), _) => EmulatorAuth::Token(t),
            (None, true) => EmulatorAuth::AnyBearer,
            (None, false) => EmulatorAuth::Open,
        };
        let options = EmulatorOptions {
            lro: if self.polling { LroMode::Polling(PollingOptions::default()) } else { LroMode::Synchronous },
            seed_default_natgw: !self.no_default_natgw,
            auth,
            public_url: self.public_url,
            rate_limits: self.rate_limits,
            ..EmulatorOptions::default()
        };
        let state = self.state.as_deref().map(CloudState::load).transpose().map_err(anyhow::Error::msg)?;
        run_emulator(self.listen, self.faults, state, options).await
    }
}
