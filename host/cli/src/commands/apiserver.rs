//! `difftracker apiserver`.

use anyhow::Result;
use difftracker_simulation::apiserver::run_apiserver;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Serve the in-repo Kubernetes API server over plain HTTP until Ctrl-C.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiServerArgs {
    /// Address to serve on (loopback by default; port 0 picks a free one, printed at start).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Write a kubeconfig reaching the server (plain HTTP, a token user) to this file.
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
    /// A fault file (see the README): seeded dropped watches, 410, 429, 500 and latency.
    #[arg(long)]
    pub faults: Option<PathBuf>,
}

impl ApiServerArgs {
    pub async fn run(self) -> Result<()> {
        run_apiserver(self.listen, self.kubeconfig_out, self.faults).await
    }
}
