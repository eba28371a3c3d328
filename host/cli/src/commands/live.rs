//! `difftracker` / `difftracker live`: the main job (the controller of `run` against the in-process
//! emulator and API server, the trace applied to the API server).

use super::{EngineArg, SandboxArgs};
use anyhow::Result;
use difftracker_simulation::emulator::CloudState;
use difftracker_simulation::live::{self, LiveOptions};
use difftracker_simulation::replay::read_trace;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The main job's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct LiveArgs {
    /// A trace of Kubernetes watch events to play instead of the bundled sample.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Which build of the engine: the component in wasmtime, or the crate linked in.
    #[arg(long, value_enum, default_value_t = EngineArg::Wasm)]
    pub engine: EngineArg,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Trace time runs this many times faster than wall time.
    #[arg(long, default_value_t = 50.0)]
    pub speed: f64,
    /// Give up (and fail) when the run has not settled after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// The emulator answers writes as long-running operations (201/202, then polling).
    #[arg(long)]
    pub polling: bool,
    /// Where to serve /metrics, /healthz, /readyz and the status page (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Keep serving the endpoints (and the emulator) after the run, until Ctrl-C.
    #[arg(long)]
    pub keep_serving: bool,
    /// Seeds the engine's backoff jitter.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress lines, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// The engine's byte budget of one ServiceGateway POST; a larger location sync goes out in
    /// several requests (default 1 MiB).
    #[arg(long)]
    pub max_request_bytes: Option<u64>,
    /// The engine's entry budget of one ServiceGateway POST: locations plus addresses (default
    /// 10,000).
    #[arg(long)]
    pub max_request_entries: Option<u32>,
    /// Seed the emulator with the resources of "a previous controller": a JSON file in the shape
    /// `GET /_emulator/inventory` prints (see the README).
    #[arg(long)]
    pub cloud_state: Option<PathBuf>,
    /// Write the in-process API server's kubeconfig here (default: a temporary file, printed at
    /// start), for `kubectl --kubeconfig FILE get svc -w` while the run goes on.
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
    /// Serve the admin API's swap and rollback beside /metrics (`difftracker admin swap
    /// --tenant live ...`), guarded by the token in this file (created when missing).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl LiveArgs {
    /// Reads the trace (the bundled one when none is given) into the library's options.
    pub fn options(&self) -> Result<LiveOptions> {
        let sample = LiveOptions::sample()?;
        let (trace, trace_name) = match &self.trace {
            Some(path) => (read_trace(path)?, path.display().to_string()),
            None => (sample.trace, sample.trace_name),
        };
        Ok(LiveOptions {
            trace,
            trace_name,
            engine: self.engine.into(),
            sandbox: self.sandbox.limits(),
            speed: self.speed,
            timeout: Duration::from_secs(self.timeout_secs),
            polling: self.polling,
            listen: self.listen,
            seed: self.seed,
            print_progress: !self.quiet,
            max_request_bytes: self.max_request_bytes,
            max_request_entries: self.max_request_entries,
            cloud_state: self.cloud_state.as_deref().map(CloudState::load).transpose().map_err(anyhow::Error::msg)?,
            kubeconfig_out: self.kubeconfig_out.clone(),
            admin_token_file: self.admin_token_file.clone(),
        })
    }

    pub async fn run(self) -> Result<()> {
        let options = self.options()?;
        live::run(options, self.keep_serving).await
    }
}
