//! Kubernetes JSON <-> the engine's input types.
//!
//! The Kubernetes API objects are `k8s-openapi`'s (v1 Service, discovery.k8s.io/v1
//! EndpointSlice, v1 Pod, v1 Node), read exactly as the API server and `kubectl get -o json`
//! print them: unknown fields are ignored and `null` is accepted wherever a field may be absent,
//! so a recorded `kubectl` trace parses as is. The conversion into [`difftracker_engine::io`]
//! types keeps what ENGINE.md section 2 reads; the reverse direction (used by the trace generator
//! and the simulated cluster) writes the same shapes back.
//!
//! The live cluster: [`watch`] reads it (the engine's input events, through kube-runtime's
//! watcher) and [`client`] writes to it (the [`crate::backend::KubeBackend`] over a
//! [`kube::Client`]); the replay and `live` use the simulated cluster instead.

pub mod client;
mod convert;
pub mod watch;

pub use client::{KubeClientBackend, KubeClientOptions, REPORTING_CONTROLLER};
pub use convert::{
    endpoint_slice_from_k8s, endpoint_slice_to_k8s, json_type_name, node_from_k8s, node_to_k8s, pod_from_k8s, pod_to_k8s, service_from_k8s,
    service_to_k8s, KubeObject,
};
pub use k8s_openapi;
pub use kube;
pub use watch::{ClusterWatch, WatchOptions, WatchStats};

use difftracker_engine::io::{CallError, ErrorKind};

/// The names the engine owns (finalizers, ENGINE.md 8.3) and reads (the egress label, 2.4).
pub use difftracker_engine::names::{EGRESS_LABEL, POD_FINALIZER, SERVICE_FINALIZERS};
/// The label an EndpointSlice carries naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The completion of a Kubernetes write whose object is gone (ENGINE.md 6.1: NotFound).
pub fn not_found(what: &str) -> CallError {
    CallError {
        kind: ErrorKind::NotFound,
        status: 404,
        code: "NotFound".into(),
        message: format!("{what} not found"),
        retry_after_ms: None,
    }
}

/// The completion of a Kubernetes write whose object now has another UID (a re-created object).
pub fn replaced(what: &str, wanted: &str, found: &str) -> CallError {
    CallError {
        kind: ErrorKind::Replaced,
        status: 409,
        code: "Conflict".into(),
        message: format!("{what} was replaced: UID {found}, not {wanted}"),
        retry_after_ms: None,
    }
}

/// A kube client from a kubeconfig file (its current context), or kube's own inference
/// (`$KUBECONFIG`, `~/.kube/config`, the in-cluster service account). Errors name the file.
pub async fn client_from_kubeconfig(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::{anyhow, Context};
    let config = match kubeconfig {
        Some(path) => {
            let shown = path.display();
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| anyhow!("kubeconfig {shown}: {e}"))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow!("kubeconfig {shown}: {e}"))?
        }
        None => kube::Config::infer().await.map_err(|e| anyhow!("no cluster configuration (pass --kubeconfig): {e}"))?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Whether `finalizer` is one the engine adds and removes itself.
pub fn is_engine_finalizer(finalizer: &str) -> bool {
    SERVICE_FINALIZERS.contains(&finalizer) || finalizer == POD_FINALIZER
}

/// The type of a watch event, as the API server names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
}

impl WatchEventType {
    pub fn parse(s: &str) -> Option<WatchEventType> {
        match s {
            "ADDED" => Some(WatchEventType::Added),
            "MODIFIED" => Some(WatchEventType::Modified),
            "DELETED" => Some(WatchEventType::Deleted),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventType::Added => "ADDED",
            WatchEventType::Modified => "MODIFIED",
            WatchEventType::Deleted => "DELETED",
        }
    }
}

/// One watch event of a trace: `{"type": ..., "object": {...}, "at_ms": N?}`.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    pub event_type: WatchEventType,
    pub object: KubeObject,
    /// Milliseconds from the start of the trace, when the trace gives it.
    pub at_ms: Option<u64>,
}

impl WatchEvent {
    /// The event as one line of JSON in kubectl's shape: `{"type":...,"object":{...}}` with the
    /// object's keys sorted (as kubectl prints them), then `"at_ms"` when set.
    pub fn to_json_line(&self) -> String {
        let object = serde_json::to_string(&self.object.to_json()).unwrap_or_else(|_| "null".into());
        match self.at_ms {
            Some(at) => format!("{{\"type\":\"{}\",\"object\":{},\"at_ms\":{}}}", self.event_type.as_str(), object, at),
            None => format!("{{\"type\":\"{}\",\"object\":{}}}", self.event_type.as_str(), object),
        }
    }
}

#[cfg(test)]
mod tests;
