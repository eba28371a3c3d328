//! `difftracker demo`.

use super::EngineArg;
use anyhow::Result;
use difftracker_simulation::demo::{self, DemoOptions};
use std::path::PathBuf;
use std::time::Duration;

/// One Service through the inbound path against in-process mock backends.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Which build of the engine runs.
    #[arg(long, value_enum, default_value_t = EngineArg::Wasm)]
    pub engine: EngineArg,
    /// An engine component to load instead of the built-in one.
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// How many LoadBalancer Services to create.
    #[arg(long, default_value_t = 1)]
    pub services: u32,
    /// Give up when a phase takes longer than this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

impl DemoArgs {
    pub async fn run(self) -> Result<()> {
        let options = DemoOptions {
            engine: self.engine.into(),
            component: self.component,
            services: self.services,
            timeout: Duration::from_secs(self.timeout_secs),
        };
        demo::run(options).await
    }
}
