//! An in-repo Kubernetes API server, for tests and for the embedded default of the coming
//! `difftracker run` (the host's Kubernetes watches and writes against a cluster on one
//! machine): core/v1 Services (with `status`), Nodes and Pods, discovery.k8s.io/v1
//! EndpointSlices, events.k8s.io/v1 Events and coordination.k8s.io/v1 Leases, close enough to
//! the real one that kubectl and the official Python client work against it unmodified.
//!
//! - [`store`]: the semantic core. Pure, synchronous and clock-free (the caller injects the
//!   [`Clock`](store::Clock) whose time it stamps): resourceVersions, conflicts, finalizers,
//!   owner garbage collection, the status subresource, paginated lists, the bounded event log
//!   and its `410 Expired`. The replay's simulated cluster is to move onto it, in virtual time,
//!   so that both share one implementation of these semantics.
//! - [`patch`]: JSON patch, merge patch and strategic merge patch; [`selector`]: label and
//!   field selectors.
//! - [`watch`]: what a watcher sees of the log (selectors, bookmarks, errors), without I/O.
//! - [`faults`]: seeded faults from a JSON fault file (dropped watches, 410, 429, 500, latency).
//! - [`http`]: the thin async HTTP face (axum over the runtime's `ServerHandle`): REST paths,
//!   discovery, streaming watches; [`serve`] runs it on a listener.
//! - [`player`]: plays a trace onto a served API server over HTTP, as `kubectl` and the
//!   cluster's other writers would; [`view`]: the store as the oracle reads a cluster.
//!
//! [`run_apiserver`] is `difftracker apiserver --listen ADDR [--kubeconfig-out FILE] [--faults FILE]`.

pub mod faults;
pub mod http;
pub mod patch;
pub mod player;
pub mod selector;
pub mod store;
pub mod view;
pub mod watch;

pub use faults::{FaultInjector, FaultPlan};
pub use http::{kubeconfig, serve, serve_api, ApiServerHandle};
pub use player::{PlayerOptions, PlayerStats, TracePlayer};
pub use store::{ApiError, Clock, Kind, ListOptions, PatchType, Preconditions, Store, StoreLimits, Subresource};
pub use view::StoreView;

use anyhow::Context;
use difftracker_runtime::server::ServerOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The options of an API server.
#[derive(Clone, Debug)]
pub struct ApiServerOptions {
    /// The store's bounds (objects per kind, object size, page size, event log).
    pub limits: StoreLimits,
    /// Bytes of a request body (`413` past it); 3 MiB, the real API server's limit.
    pub max_body_bytes: usize,
    /// Watches served at once (`429` with `Retry-After` past it); 1000.
    pub max_watchers: usize,
    /// Time between the bookmarks of a watch that asks for them (`allowWatchBookmarks`); 5 s.
    pub bookmark_interval: Duration,
    /// The longest a watch runs (and the bound of `timeoutSeconds`); 30 minutes.
    pub max_watch_duration: Duration,
    /// Seeded faults.
    pub faults: Option<FaultPlan>,
    /// Header-read timeout and connection limit.
    pub server: ServerOptions,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            limits: StoreLimits::default(),
            max_body_bytes: 3 * 1024 * 1024,
            max_watchers: 1000,
            bookmark_interval: Duration::from_secs(5),
            max_watch_duration: Duration::from_secs(1800),
            faults: None,
            server: ServerOptions::default(),
        }
    }
}

/// The store behind a lock, with what its watches wait on.
pub struct ApiServer {
    store: Mutex<Store>,
    /// The latest resourceVersion, bumped after every write: what watches wait on.
    changed: tokio::sync::watch::Sender<u64>,
    /// Set when the server stops: every watch ends.
    closing: tokio::sync::watch::Sender<bool>,
    faults: Option<FaultInjector>,
    options: ApiServerOptions,
    started: Instant,
    watchers: AtomicUsize,
    /// HTTP requests served, of every kind.
    requests: std::sync::atomic::AtomicU64,
}

impl ApiServer {
    /// A server over an empty store stamping the system clock's time.
    pub fn new(options: ApiServerOptions) -> Arc<ApiServer> {
        Self::with_clock(options, store::system_clock())
    }

    /// A server over an empty store stamping `clock`'s time.
    pub fn with_clock(options: ApiServerOptions, clock: Clock) -> Arc<ApiServer> {
        Arc::new(ApiServer {
            store: Mutex::new(Store::new(options.limits.clone(), clock)),
            changed: tokio::sync::watch::channel(0).0,
            closing: tokio::sync::watch::channel(false).0,
            faults: options.faults.clone().map(FaultInjector::new),
            options,
            started: Instant::now(),
            watchers: AtomicUsize::new(0),
            requests: Default::default(),
        })
    }

    /// HTTP requests served so far (what a benchmark of the server's load counts).
    pub fn requests_served(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn options(&self) -> &ApiServerOptions {
        &self.options
    }

    /// Reads the store.
    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.store.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes the store (and wakes the watches).
    pub fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (r, rv) = {
            let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let r = f(&mut s);
            (r, s.resource_version())
        };
        self.changed.send_replace(rv);
        r
    }
}

/// `difftracker apiserver`: serves until Ctrl-C.
pub async fn run_apiserver(listen: SocketAddr, kubeconfig_out: Option<PathBuf>, faults: Option<PathBuf>) -> anyhow::Result<()> {
    let mut options = ApiServerOptions::default();
    if let Some(path) = faults {
        options.faults = Some(FaultPlan::load(&path).map_err(anyhow::Error::msg)?);
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let handle = serve(listener, options).await?;
    if let Some(path) = &kubeconfig_out {
        std::fs::write(path, handle.kubeconfig()).with_context(|| format!("cannot write the kubeconfig {}", path.display()))?;
    }
    tracing::info!(url = %handle.url(), "Kubernetes API server listening");
    println!("Kubernetes API server listening on {}", handle.url());
    if let Some(path) = &kubeconfig_out {
        println!("  kubeconfig written to {}", path.display());
    }
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}
