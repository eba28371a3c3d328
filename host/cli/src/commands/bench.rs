//! `difftracker bench-engine`.

use super::EngineArg;
use anyhow::Result;

/// Time the engine alone through the PEER-BENCH lifecycle.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Which build of the engine runs.
    #[arg(long, value_enum, default_value_t = EngineArg::Native)]
    pub engine: EngineArg,
    /// Number of LoadBalancer Services (10 endpoints each, 100 pods per node).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Extra single endpoint updates timed at steady state (one replaced IP each).
    #[arg(long, default_value_t = 1000)]
    pub single_events: usize,
}

impl BenchArgs {
    pub fn run(self) -> Result<()> {
        use difftracker_simulation::bench::{run_bench, PHASES};
        let bar = super::progress::Progress::new("bench-engine: phases", Some(PHASES as u64));
        let result = run_bench(self.engine.into(), self.services, self.single_events, &|done, next| bar.update(done as u64, next));
        bar.finish();
        result
    }
}
