//! examples/grafana-dashboard.json queries only metrics the host really exports: every
//! `difftracker_*` name in its panels' expressions is a sample of a live `/metrics` once the main
//! job has run a small trace. Issue 16, item 6.

use difftracker_runtime::driver::EngineKind;
use difftracker_simulation::live::{self, LiveOptions};
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions};
use difftracker_simulation::replay::parse_trace;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// The `difftracker_[a-z0-9_]+` names in a PromQL expression.
fn names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("difftracker_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_on_a_live_metrics_endpoint() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the dashboard is JSON");
    let queried: BTreeSet<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .flat_map(|t| names(t["expr"].as_str().unwrap_or("")))
        .collect();
    assert!(queried.len() >= 10, "{queried:?}");

    let mut buf = Vec::new();
    write_trace(&GenOptions { services: 8, nodes: 3, churn: Churn::High, seed: 2, endpoints: 3, ..GenOptions::default() }, &mut buf)
        .unwrap();
    let mut options = LiveOptions::for_trace(parse_trace(&buf).unwrap(), EngineKind::Native);
    options.speed = 100.0;
    options.timeout = Duration::from_secs(120);
    let run = live::start(options).await.expect("the main job starts");
    let finished = run.finish().await.expect("the main job ends");
    let metrics = reqwest::get(format!("{}/metrics", finished.observe_url())).await.unwrap().text().await.unwrap();
    let exported: BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| l.split(['{', ' ']).next().unwrap()).collect();
    let missing: Vec<&String> = queried.iter().filter(|n| !exported.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard queries {missing:?}, which /metrics does not export:\n{metrics}");
    finished.shutdown().await;
}
