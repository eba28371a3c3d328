//! `difftracker bench-engine` and `difftracker bench-tenants`.

use super::EngineArg;
use anyhow::Result;
use std::sync::Mutex;
use std::time::Duration;

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

/// Many tenants in one process: resident memory per tenant once converged, and how long a
/// healthy tenant takes to converge one endpoint change beside misbehaving ones.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchTenantsArgs {
    /// Healthy tenants (the built-in engine, default sandbox, trap recovery on).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub tenants: u64,
    /// LoadBalancer Services per tenant (10 endpoints each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub services: u64,
    /// Extra tenants whose engine busy-loops in every tick until its CPU deadline.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    pub misbehaving: u64,
    /// Seconds the healthy tenants keep changing endpoints (the fair-share measurement).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub seconds: u64,
    /// Milliseconds between two endpoint changes of one tenant.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub interval_ms: u64,
    /// Tick a trapping tenant again at once (no backoff): only to measure what the backoff buys.
    #[arg(long)]
    pub no_backoff: bool,
    /// Tick a backed-off tenant at normal CPU priority: only to measure what the low priority buys.
    #[arg(long)]
    pub no_low_priority: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl BenchTenantsArgs {
    pub async fn run(self) -> Result<()> {
        use difftracker_simulation::bench_tenants::{measure, render, TenantsBenchOptions};
        let options = TenantsBenchOptions {
            tenants: self.tenants as usize,
            services: self.services as usize,
            misbehaving: self.misbehaving as usize,
            measure_for: Duration::from_secs(self.seconds),
            change_interval: Duration::from_millis(self.interval_ms),
            backoff: !self.no_backoff,
            low_priority: !self.no_low_priority,
        };
        // One bar per stage (start, converge, fair share), replaced when the stage changes.
        let bar: Mutex<Option<(String, super::progress::Progress)>> = Mutex::new(None);
        let progress = |stage: &str, done: u64, total: u64| {
            let Ok(mut bar) = bar.lock() else { return };
            if bar.as_ref().is_none_or(|(s, _)| s != stage) {
                if let Some((_, old)) = bar.take() {
                    old.finish();
                }
                *bar = Some((stage.to_string(), super::progress::Progress::new(&format!("bench-tenants: {stage}"), Some(total))));
            }
            if let Some((_, b)) = bar.as_ref() {
                b.update(done, "");
            }
        };
        let result = measure(options, &progress).await;
        if let Ok(mut bar) = bar.lock() {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
        }
        let report = result?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render(&report));
        }
        Ok(())
    }
}

/// Tenants sharded over replicas through Leases: the management API server's load and how
/// long a dead replica's tenants wait for a new owner (no engine runs: only the Leases).
#[derive(Clone, Debug, clap::Args)]
pub struct BenchShardArgs {
    /// Tenants in the configuration every replica shares.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub tenants: u64,
    /// Sharded hosts in the process, as that many replicas would run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=16))]
    pub replicas: u64,
    /// Seconds of steady state the request rate is counted over.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub seconds: u64,
    #[command(flatten)]
    pub timing: super::serve::ShardTimingArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl BenchShardArgs {
    pub async fn run(self) -> Result<()> {
        use difftracker_simulation::bench_shard::{measure, render, ShardBenchOptions};
        let timing = self.timing.apply(difftracker_runtime::serve::shard::ShardOptions::new("", ""));
        let options = ShardBenchOptions {
            tenants: self.tenants as usize,
            replicas: self.replicas as usize,
            measure_for: Duration::from_secs(self.seconds),
            lease_duration: timing.lease_duration,
            renew_deadline: timing.renew_deadline,
            retry_period: timing.retry_period,
        };
        eprintln!(
            "bench-shard: {} tenants over {} replicas; this takes a lease duration or two beyond --seconds",
            self.tenants, self.replicas
        );
        let report = measure(options).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render(&report));
        }
        Ok(())
    }
}
