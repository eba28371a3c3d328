//! `difftracker explain WHO`: why a Service or egress identity is where it is, in a few lines,
//! from a replay report (`--report FILE`, its `operations` section) or a running host (`--url`,
//! its `/operations` endpoint). The engine's account (state, retries, next attempt, what it waits
//! for) comes from `OperationStatus`; the calls made for it (history, last error with its ARM
//! code) from what the host saw.

use anyhow::{bail, Context, Result};
use difftracker_simulation::explain::{explain, find};
use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// The Service (`namespace/name`, or its UID) or the egress identity.
    pub who: String,
    /// A replay report (`difftracker replay --report FILE`).
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub report: Option<PathBuf>,
    /// A running host's observability address (where it serves /metrics), e.g. http://127.0.0.1:9090.
    #[arg(long)]
    pub url: Option<String>,
}

impl ExplainArgs {
    pub async fn run(self) -> Result<()> {
        let operations = match (&self.report, &self.url) {
            (Some(path), _) => {
                let bytes = std::fs::read(path).with_context(|| format!("cannot read report {}", path.display()))?;
                let report: Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not a JSON report", path.display()))?;
                match report.get("operations") {
                    Some(ops) => ops.clone(),
                    None => bail!("{} has no `operations` section (written by an older difftracker?)", path.display()),
                }
            }
            (None, Some(url)) => fetch(url, &self.who).await?,
            (None, None) => bail!("give --report FILE or --url URL"),
        };
        let (id, op) = find(&operations, &self.who)?;
        for line in explain(&id, &op) {
            println!("{line}");
        }
        Ok(())
    }
}

/// The host's `/operations?q=WHO` answer: `{"<tenant>": {"<identity>": {...}}}`, flattened.
async fn fetch(url: &str, who: &str) -> Result<Value> {
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
    let response =
        client.get(format!("{base}/operations")).query(&[("q", who)]).send().await.with_context(|| format!("cannot reach {base}"))?;
    if !response.status().is_success() {
        bail!("{base}/operations answered {}", response.status());
    }
    let body: Value = response.json().await.context("the host's /operations answer is not JSON")?;
    let mut flat = serde_json::Map::new();
    for (_tenant, ops) in body.as_object().into_iter().flatten() {
        for (id, op) in ops.as_object().into_iter().flatten() {
            flat.insert(id.clone(), op.clone());
        }
    }
    Ok(Value::Object(flat))
}
