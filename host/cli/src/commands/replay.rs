//! The `replay` and `gen-trace` subcommands.

use super::progress::Progress as Bar;
use super::{EngineArg, SandboxArgs};
use anyhow::{bail, Context, Result};
use difftracker_runtime::driver::EngineKind;
use difftracker_simulation::emulator::throttle::{Budget, RateLimits};
use difftracker_simulation::emulator::{CloudState, FaultPlan};
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions};
use difftracker_simulation::replay::{html, oracle, read_trace, replay, report, CrashPlan, Progress, ReplayOptions, DEFAULT_UNTIL_MS};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// `difftracker replay`: runs the engine against the in-process emulator and a simulated cluster
/// driven by a trace, in virtual time, and writes a report.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The trace: Kubernetes watch events as `kubectl get --watch --output-watch-events -o json`
    /// prints them, or one per line.
    #[arg(long)]
    pub trace: PathBuf,
    /// A fault file for the emulator.
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Seeds the engine's backoff jitter and, when given, the fault injection (instead of the
    /// fault file's own seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Which build of the engine: the component in wasmtime, or the crate linked in.
    #[arg(long, value_enum, default_value_t = EngineArg::Wasm)]
    pub engine: EngineArg,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Virtual time limit in milliseconds (default: six hours).
    #[arg(long, default_value_t = DEFAULT_UNTIL_MS)]
    pub until_ms: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    pub report: PathBuf,
    /// The engine's byte budget of one ServiceGateway POST; a larger location sync goes out in
    /// several requests (default 1 MiB).
    #[arg(long)]
    pub max_request_bytes: Option<u64>,
    /// The engine's entry budget of one ServiceGateway POST: locations plus addresses (default
    /// 10,000).
    #[arg(long)]
    pub max_request_entries: Option<u32>,
    /// Operations the engine runs at once (default 10, as upstream; 1..=1000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub operations_in_flight: Option<u32>,
    /// Kill the host at these virtual times (ms, comma-separated): the engine, its snapshot and
    /// the answers of its calls in flight are lost; a fresh host starts from the cloud and the
    /// cluster.
    #[arg(long, value_delimiter = ',')]
    pub crash_at_ms: Vec<u64>,
    /// Keep the host down this long (ms) after each crash while the trace goes on.
    #[arg(long, default_value_t = 0, requires = "crash_at_ms")]
    pub downtime_ms: u64,
    /// Seed the emulator with the resources of "a previous controller": a JSON file in the shape
    /// `GET /_emulator/inventory` prints (see the README).
    #[arg(long)]
    pub cloud_state: Option<PathBuf>,
    /// Also write a self-contained HTML page with the replay's timeline (states, cloud calls,
    /// calls in flight, crashes) and the report's summary tables.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// For --html: virtual time between two samples of every operation's state (ms), at least;
    /// it widens to 1 ms per tracked operation, so sampling costs the same at any size.
    #[arg(long, default_value_t = 1000, requires = "html", value_parser = clap::value_parser!(u64).range(1..))]
    pub html_sample_ms: u64,
    /// The emulator enforces ARM's per-subscription budgets: WRITES[,READS], each
    /// CAPACITY/REFILL_PER_SECOND (429 with Retry-After beyond them). Without a value, ARM's
    /// defaults (200/10,250/25). The host then paces its writes under the write budget.
    #[arg(long, num_args = 0..=1, default_missing_value = RateLimits::DEFAULT_TEXT, value_parser = RateLimits::parse)]
    pub rate_limits: Option<RateLimits>,
    /// The write budget the host paces under (CAPACITY/REFILL_PER_SECOND, or `off`); by default
    /// the emulator's write budget when --rate-limits is given, else none.
    #[arg(long, value_parser = parse_write_budget)]
    pub write_budget: Option<WriteBudgetArg>,
}

/// `--write-budget`: a budget, or `off`.
#[derive(Clone, Copy, Debug)]
pub enum WriteBudgetArg {
    Off,
    Budget(Budget),
}

fn parse_write_budget(s: &str) -> Result<WriteBudgetArg, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(WriteBudgetArg::Off);
    }
    Budget::parse(s).map(WriteBudgetArg::Budget)
}

impl ReplayArgs {
    /// Fails (after writing the report) when the run did not converge or the inventory is not
    /// what the final cluster implies.
    pub fn run(self) -> Result<()> {
        run_replay(self)
    }
}

fn run_replay(args: ReplayArgs) -> Result<()> {
    let trace = read_trace(&args.trace)?;
    let mut faults = match &args.faults {
        Some(path) => Some(FaultPlan::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if let (Some(plan), Some(seed)) = (faults.as_mut(), args.seed) {
        plan.seed = seed;
    }
    let cloud_state = args.cloud_state.as_deref().map(CloudState::load).transpose().map_err(anyhow::Error::msg)?;
    let options = ReplayOptions {
        seed: args.seed.unwrap_or(1),
        engine: EngineKind::from(args.engine),
        until_ms: args.until_ms,
        faults,
        max_request_bytes: args.max_request_bytes,
        max_request_entries: args.max_request_entries,
        max_operations_in_flight: args.operations_in_flight,
        sandbox: args.sandbox.limits(),
        crashes: CrashPlan { at_ms: args.crash_at_ms.clone(), downtime_ms: args.downtime_ms },
        cloud_state,
        timeline: args.html.as_ref().map(|_| args.html_sample_ms),
        rate_limits: args.rate_limits,
        write_budget: match args.write_budget {
            Some(WriteBudgetArg::Off) => None,
            Some(WriteBudgetArg::Budget(b)) => Some(b),
            None => args.rate_limits.map(|l| l.writes),
        },
        ..ReplayOptions::default()
    };
    let bar = Arc::new(Bar::new("replay: trace events", Some(trace.events.len() as u64)));
    let shown = bar.clone();
    let options = ReplayOptions {
        progress: Some(Progress(Arc::new(move |now, done, _total| {
            shown.update(done as u64, &format!("at {} of virtual time", human_ms(now)))
        }))),
        ..options
    };
    let started = Instant::now();
    let outcome = replay(&trace, &options);
    bar.finish();
    let outcome = outcome?;
    let wall = started.elapsed();
    let bytes = report::to_bytes(&outcome.report);
    std::fs::write(&args.report, &bytes).with_context(|| format!("cannot write report {}", args.report.display()))?;
    if let (Some(path), Some(timeline)) = (&args.html, &outcome.timeline) {
        std::fs::write(path, html::render(&outcome.report, timeline)).with_context(|| format!("cannot write {}", path.display()))?;
        println!("timeline written to {}", path.display());
    }
    let r = &outcome.report;
    let calls: u64 = r["cloud_calls"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
    println!(
        "replay ({} engine): {} trace events ({} skipped), {} cloud calls, {} of virtual time in {:.2?} of wall time: {}",
        options.engine.as_str(),
        trace.events.len(),
        trace.skipped_total(),
        calls,
        human_ms(r["virtual_ms"].as_u64().unwrap_or(0)),
        wall,
        if r["converged"] == true { "converged" } else { "did NOT converge" },
    );
    for (i, start) in outcome.report["restarts"].as_array().into_iter().flatten().enumerate() {
        let wall = outcome.startup_wall.get(i + 1).copied().flatten();
        println!(
            "restart {} (crash at {}, back at {}): {} lost completions; start-up {} ({} cloud calls, {} lists){}",
            i + 1,
            human_ms(start["crashed_at_ms"].as_u64().unwrap_or(0)),
            human_ms(start["started_at_ms"].as_u64().unwrap_or(0)),
            start["completions_lost"].as_u64().unwrap_or(0),
            start["startup_ms"].as_u64().map_or("never finished".to_string(), |ms| format!("took {}", human_ms(ms))),
            start["startup_cloud_calls"].as_u64().unwrap_or(0),
            start["startup_list_calls"].as_u64().unwrap_or(0),
            wall.map_or(String::new(), |w| format!(", {w:.2?} of wall time")),
        );
    }
    if let (Some(first), Some(wall)) = (outcome.report.get("startup"), outcome.startup_wall.first().copied().flatten()) {
        if options.cloud_state.is_some() {
            println!(
                "start-up against the seeded cloud: {} of virtual time, {} cloud calls ({} lists), {wall:.2?} of wall time",
                human_ms(first["startup_ms"].as_u64().unwrap_or(0)),
                first["startup_cloud_calls"].as_u64().unwrap_or(0),
                first["startup_list_calls"].as_u64().unwrap_or(0),
            );
        }
    }
    let d = &outcome.report["duplicate_creations"];
    if d["after_lost_completion"].as_u64().unwrap_or(0) + d["adoption"].as_u64().unwrap_or(0) > 0 {
        println!(
            "PUTs of existing resources: {} after a completion lost in a crash, {} adoptions at start-up, {} rejected",
            d["after_lost_completion"], d["adoption"], d["rejected"]
        );
    }
    println!("report written to {}", args.report.display());
    if let Err(problems) = oracle::check_report(r) {
        for p in problems.iter().take(20) {
            eprintln!("  {p}");
        }
        if problems.len() > 20 {
            eprintln!("  ... and {} more", problems.len() - 20);
        }
        bail!("the replay did not end where the trace leads ({} problems; see the report)", problems.len());
    }
    Ok(())
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{:03}s", s, ms % 1000)
    }
}

/// `difftracker gen-trace`: writes a realistic, seeded trace.
#[derive(clap::Args, Debug, Clone)]
pub struct GenTraceArgs {
    /// Services to create.
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Nodes at the start (a quarter more join later when there is churn).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Egress-labelled pods (none by default).
    #[arg(long, default_value_t = 0)]
    pub egress: usize,
    /// What happens after creation: none, low, medium or high.
    #[arg(long, default_value = "medium")]
    pub churn: Churn,
    /// Average endpoints per Service.
    #[arg(long, default_value_t = 5)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the trace (standard output if absent).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

impl GenTraceArgs {
    pub fn run(self) -> Result<()> {
        run_gen_trace(self)
    }
}

fn run_gen_trace(args: GenTraceArgs) -> Result<()> {
    let opts = GenOptions {
        services: args.services,
        nodes: args.nodes,
        egress: args.egress,
        churn: args.churn,
        seed: args.seed,
        endpoints: args.endpoints,
    };
    let bar = Bar::new("gen-trace: bytes written", None);
    let summary = match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = Counted::new(std::io::BufWriter::new(file), &bar);
            let s = write_trace(&opts, &mut out)?;
            out.flush()?;
            s
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = Counted::new(std::io::BufWriter::new(stdout.lock()), &bar);
            let s = write_trace(&opts, &mut out)?;
            out.flush()?;
            s
        }
    };
    bar.finish();
    let kinds: Vec<String> = summary.by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
    eprintln!("{} events over {} s of trace time: {}", summary.events, summary.end_ms / 1000, kinds.join(", "));
    Ok(())
}

/// A writer that reports the bytes through it to a progress bar.
struct Counted<'a, W> {
    inner: W,
    bytes: u64,
    bar: &'a Bar,
}

impl<'a, W: Write> Counted<'a, W> {
    fn new(inner: W, bar: &'a Bar) -> Self {
        Counted { inner, bytes: 0, bar }
    }
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let before = self.bytes >> 16;
        self.bytes += n as u64;
        // One update per 64 KiB: cheap enough for a generator that writes line by line.
        if self.bytes >> 16 != before {
            self.bar.update(self.bytes, "");
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
