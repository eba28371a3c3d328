//! `difftracker bench-swap` and `difftracker snapshot --dump`.

use super::SandboxArgs;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// Measure hot swap: background swaps against plain stop-snapshot-restore swaps, as JSON.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchSwapArgs {
    /// LoadBalancer Services the tenant tracks (10 endpoints each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    pub services: u64,
    /// Swaps of each kind.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub swaps: u64,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

impl BenchSwapArgs {
    pub async fn run(self) -> Result<()> {
        difftracker_simulation::bench_swap::run(self.services as usize, self.swaps as usize, self.sandbox.limits()).await
    }
}

/// Read an engine snapshot (binary or JSON) and print it as JSON.
#[derive(Clone, Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The snapshot file to print as JSON (on stdout).
    #[arg(long, value_name = "FILE")]
    pub dump: PathBuf,
}

/// The largest snapshot file `snapshot --dump` reads.
const MAX_SNAPSHOT_FILE: u64 = 1 << 30;

impl SnapshotArgs {
    pub fn run(self) -> Result<()> {
        let size = std::fs::metadata(&self.dump).with_context(|| format!("reading {}", self.dump.display()))?.len();
        if size > MAX_SNAPSHOT_FILE {
            anyhow::bail!("{} is {size} bytes, more than the {MAX_SNAPSHOT_FILE} a snapshot may be", self.dump.display());
        }
        let bytes = std::fs::read(&self.dump).with_context(|| format!("reading {}", self.dump.display()))?;
        let engine = difftracker_engine::Engine::restore(&bytes).with_context(|| format!("{}", self.dump.display()))?;
        let mut out = std::io::stdout().lock();
        out.write_all(&engine.snapshot_json())?;
        out.write_all(b"\n")?;
        Ok(())
    }
}
