//! `difftracker bench-shard`: what sharding tenants over replicas costs the management API
//! server, and how long a dead replica's tenants wait for a new owner.
//!
//! R sharded [`TenantHost`]s (one process, each with its own runtime and observatory, as R
//! replicas would run) share N tenants through Leases on one in-repo API server over HTTP.
//! The tenants' engines are not started (their component is one the binary does not carry, so
//! each fails at once): only the Leases are measured, which are acquired, renewed and taken
//! over exactly as for running tenants. The benchmark waits until every tenant is held and the
//! replicas are balanced, counts the API server's requests over a steady window, then stops one
//! replica's sharder without a word (a crash: its Leases expire) and times until the others
//! hold all its tenants.

use crate::apiserver::{self, ApiServerOptions, Kind, StoreLimits};
use anyhow::{anyhow, Context, Result};
use difftracker_runtime::k8s::kube;
use difftracker_runtime::observe::Observatory;
use difftracker_runtime::serve::shard::{tenant_lease, ShardOptions};
use difftracker_runtime::serve::{ComponentSource, HostSettings, Provisioned, Provisioner, ServeConfig, TenantHost, TenantSpec};
use futures_util::future::BoxFuture;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "difftracker";
/// Bound of every wait of the benchmark.
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct ShardBenchOptions {
    pub tenants: usize,
    pub replicas: usize,
    /// The steady window the request rate is counted over.
    pub measure_for: Duration,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct ShardBenchReport {
    pub tenants: usize,
    pub replicas: usize,
    pub lease_duration_s: f64,
    pub retry_period_s: f64,
    /// From the start until every tenant was held and the replicas balanced.
    pub spread_s: f64,
    /// Tenants each replica held once balanced.
    pub per_replica: Vec<usize>,
    /// API server requests per second over the steady window (Lease lists and renewals).
    pub requests_per_s: f64,
    /// The same per tenant.
    pub requests_per_tenant_s: f64,
    /// Tenants the stopped replica held.
    pub orphaned: usize,
    /// From its stop until the others held every one of them.
    pub takeover_s: f64,
}

/// Tenants that never get a cluster: only their Leases are exercised.
struct LeasesOnly;

impl Provisioner for LeasesOnly {
    fn provision<'a>(&'a self, spec: &'a TenantSpec) -> BoxFuture<'a, Result<Provisioned>> {
        Box::pin(async move { Err(anyhow!("bench-shard runs no engine for {}", spec.name)) })
    }
}

fn config(tenants: usize) -> Result<ServeConfig> {
    let one = ServeConfig::parse("[[tenant]]\nname = \"t\"\ncluster = \"embedded\"\n", std::path::Path::new("bench-shard.toml"))
        .map_err(anyhow::Error::msg)?;
    let template = one.tenants[0].clone();
    let tenants = (0..tenants)
        .map(|i| TenantSpec { name: format!("t{i}"), component: ComponentSource::Builtin("none".into()), ..template.clone() })
        .collect();
    // No engine ever runs: a few instance slots, not three per tenant.
    let host = HostSettings { instance_slots: 4, ..one.host };
    Ok(ServeConfig { tenants, host, ..one })
}

fn holders(api: &apiserver::ApiServer, tenants: usize) -> Vec<String> {
    (0..tenants)
        .map(|i| {
            let lease = api.read(|s| s.get(Kind::Lease, NAMESPACE, &tenant_lease(&format!("t{i}"))));
            lease.ok().and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string)).unwrap_or_default()
        })
        .collect()
}

fn counts(holders: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for h in holders {
        *out.entry(h.clone()).or_insert(0) += 1;
    }
    out
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > PATIENCE {
            return Err(anyhow!("bench-shard: timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed())
}

pub async fn measure(options: ShardBenchOptions) -> Result<ShardBenchReport> {
    let limits = StoreLimits { max_objects_per_kind: options.tenants * 2 + 100, ..StoreLimits::default() };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("listening for the API server")?;
    let server = apiserver::serve(listener, ApiServerOptions { limits, ..ApiServerOptions::default() }).await?;
    let config = config(options.tenants)?;
    let started = Instant::now();
    let mut hosts = Vec::new();
    for r in 0..options.replicas {
        let url = server.url().parse().context("the API server's URL")?;
        let client = kube::Client::try_from(kube::Config::new(url)).context("a client of the API server")?;
        let shard = ShardOptions {
            lease_duration: options.lease_duration,
            renew_deadline: options.renew_deadline,
            retry_period: options.retry_period,
            ..ShardOptions::new(NAMESPACE, format!("r{r}"))
        };
        hosts.push(TenantHost::start_sharded(config.clone(), Arc::new(LeasesOnly), Observatory::new(), client, shard).await?);
    }
    let api = server.api().clone();
    let (n, r) = (options.tenants, options.replicas);
    let balanced = |holders: &[String], replicas: usize| {
        let c = counts(holders);
        holders.iter().all(|h| !h.is_empty()) && c.len() == replicas && c.values().all(|k| k.abs_diff(n / replicas) <= 1)
    };
    wait("every tenant held, balanced", || balanced(&holders(&api, n), r)).await?;
    let spread = started.elapsed();
    let per_replica = counts(&holders(&api, n)).into_values().collect();
    let before = api.requests_served();
    let window = Instant::now();
    tokio::time::sleep(options.measure_for).await;
    let requests_per_s = (api.requests_served() - before) as f64 / window.elapsed().as_secs_f64();
    // r0 dies: it stops renewing and releases nothing.
    let orphans: Vec<usize> = holders(&api, n).iter().enumerate().filter(|(_, h)| *h == "r0").map(|(i, _)| i).collect();
    hosts[0].abandon_shard().await;
    let died = Instant::now();
    wait("r0's tenants taken over", || {
        let now = holders(&api, n);
        orphans.iter().all(|i| !now[*i].is_empty() && now[*i] != "r0")
    })
    .await?;
    let takeover = died.elapsed();
    for host in &hosts[1..] {
        host.shutdown().await;
    }
    Ok(ShardBenchReport {
        tenants: n,
        replicas: r,
        lease_duration_s: options.lease_duration.as_secs_f64(),
        retry_period_s: options.retry_period.as_secs_f64(),
        spread_s: spread.as_secs_f64(),
        per_replica,
        requests_per_s,
        requests_per_tenant_s: requests_per_s / n as f64,
        orphaned: orphans.len(),
        takeover_s: takeover.as_secs_f64(),
    })
}

pub fn render(r: &ShardBenchReport) -> String {
    format!(
        "bench-shard: {} tenants over {} replicas (lease {:.0} s, a round every {:.1} s)\n  \
         spread:   every tenant held and balanced after {:.1} s ({:?} per replica)\n  \
         load:     {:.0} requests/s on the API server ({:.3} per tenant per second)\n  \
         takeover: the {} tenants of a dead replica held by the others {:.1} s after it died\n",
        r.tenants,
        r.replicas,
        r.lease_duration_s,
        r.retry_period_s,
        r.spread_s,
        r.per_replica,
        r.requests_per_s,
        r.requests_per_tenant_s,
        r.orphaned,
        r.takeover_s
    )
}
