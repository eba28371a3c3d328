//! `difftracker`: the ServiceGateway diff tracker host.
//!
//! The only place that wires commands: each subcommand is one variant of [`Command`], its flags
//! one clap `Args` struct in [`commands`], and one arm of the `match` in [`main`]. With no
//! subcommand, `live` runs (the main job: the bundled sample trace against the in-process
//! emulator over HTTP); its flags may be given without the subcommand's name
//! (`difftracker --engine native`).

mod commands;

/// mimalloc: glibc's allocator spent a third of a 10,000-Service replay consolidating and
/// unlinking chunks of its fragmented heap (BENCHMARKS.md, "Scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use commands::{
    AdminArgs, ApiServerArgs, BenchArgs, BenchShardArgs, BenchSwapArgs, BenchTenantsArgs, DemoArgs, EmulatorArgs, ExplainArgs,
    GenTraceArgs, LiveArgs, ReplayArgs, RunArgs, ServeArgs, SnapshotArgs,
};

#[derive(Parser)]
#[command(name = "difftracker", version, about = "ServiceGateway load-balancer controller: a WebAssembly engine in a wasmtime host")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// With no subcommand: the main job's flags (see `difftracker live --help`).
    #[command(flatten)]
    live: LiveArgs,
    #[command(subcommand)]
    command: Option<Command>,
    /// How log lines on standard error are written (`RUST_LOG` chooses which).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The main job (default): the controller of `run` against the in-process emulator and API server, the bundled trace (or --trace FILE) applied to it.
    Live(LiveArgs),
    /// Run the controller against a Kubernetes cluster (--kubeconfig) and Azure or the emulator (--cloud-config, --arm-endpoint ...).
    Run(RunArgs),
    /// Run many tenants in one process from a TOML configuration (--config FILE; see examples/tenants.toml).
    Serve(ServeArgs),
    /// Talk to a running `serve`'s admin API: tenants, pause, resume, restart, swap, rollback, reload.
    Admin(AdminArgs),
    /// Run the sample inbound path against in-process mock backends and print every call.
    Demo(DemoArgs),
    /// Replay a Kubernetes watch trace against the in-process emulator in virtual time and write a report.
    Replay(ReplayArgs),
    /// Write a realistic, seeded trace of Kubernetes watch events.
    GenTrace(GenTraceArgs),
    /// Serve the ARM/NRP emulator over HTTP until Ctrl-C.
    Emulator(EmulatorArgs),
    /// Serve the in-repo Kubernetes API server over HTTP until Ctrl-C (kubectl works against it).
    Apiserver(ApiServerArgs),
    /// Time the engine alone through the PEER-BENCH lifecycle (native or wasm).
    BenchEngine(BenchArgs),
    /// Measure hot swap of a running tenant (background against plain swaps) and print JSON.
    BenchSwap(BenchSwapArgs),
    /// Many tenants in one process: memory per tenant, and fair share beside misbehaving tenants (--misbehaving K).
    BenchTenants(BenchTenantsArgs),
    /// Tenants sharded over replicas: Lease load on the management API server, and takeover time of a dead replica.
    BenchShard(BenchShardArgs),
    /// Print an engine snapshot (binary or JSON) as JSON: `snapshot --dump FILE`.
    Snapshot(SnapshotArgs),
    /// Say why a Service or egress identity is where it is, from a replay report or a running host.
    Explain(ExplainArgs),
}

fn main() -> Result<()> {
    // A closed stdout (`difftracker replay ... | head`) ends the process quietly, as it ends any
    // Unix tool, instead of making the next `println!` panic.
    // SAFETY: called first thing, before any thread exists; SIG_DFL is always a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // One JSON object per line (time, level, target, fields, spans), for a log pipeline.
        LogFormat::Json => logs.json().init(),
    }
    let command = cli.command.unwrap_or(Command::Live(cli.live));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match command {
            Command::Live(args) => args.run().await,
            Command::Run(args) => args.run().await,
            Command::Serve(args) => args.run().await,
            Command::Admin(args) => args.run().await,
            Command::Demo(args) => args.run().await,
            Command::Replay(args) => args.run(),
            Command::GenTrace(args) => args.run(),
            Command::Emulator(args) => args.run().await,
            Command::Apiserver(args) => args.run().await,
            Command::BenchEngine(args) => args.run(),
            Command::BenchSwap(args) => args.run().await,
            Command::BenchTenants(args) => args.run().await,
            Command::BenchShard(args) => args.run().await,
            Command::Snapshot(args) => args.run(),
            Command::Explain(args) => args.run().await,
        }
    })
}
