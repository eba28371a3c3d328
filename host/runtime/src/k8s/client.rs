//! The engine's Kubernetes writes against a real cluster: a [`KubeBackend`] over a
//! [`kube::Client`], writing as a production controller does. The simulated cluster
//! (`difftracker_simulation::replay::cluster`) implements the same calls in memory with the same
//! outcomes; [`super::watch`] is the read side.
//!
//! - **Finalizers** (ENGINE.md 8.3, 6.1 step 0, 6.4 step 6) are added and removed with a JSON
//!   patch whose first operations `test` the object's `metadata.uid` and
//!   `metadata.resourceVersion` as just read: the patch applies to exactly the object the engine
//!   means, and to no newer state than the one it was computed from. A `409 Conflict` or a
//!   `422` from a failed `test` is retried with a fresh read, at most
//!   [`KubeClientOptions::max_attempts`] times (then [`ErrorKind::Conflict`]).
//! - **The ingress** (6.1 step 6) is written through the `status` subresource, guarded the same
//!   way. The engine's list is written as is, except that hostname entries other writers put in
//!   the status since the engine read it are kept.
//! - **Outcomes** as the simulated cluster gives them: an object that is not there is
//!   [`ErrorKind::NotFound`] (a finalizer removal from an object already gone is done), another
//!   object under the same name [`ErrorKind::Replaced`]; a finalizer added to an object being
//!   deleted is the API server's `422`; `429` is [`ErrorKind::Throttled`] with its
//!   `Retry-After`; anything else the API server answers is [`ErrorKind::Http`], no answer
//!   [`ErrorKind::Transport`].
//! - **Events** go to `events.k8s.io/v1` with `reportingController` (and `reportingInstance`)
//!   set. A repeat of a recent Event (same object, type, reason and message) does not create a
//!   new object: the first one's `series` (`count`, `lastObservedTime`) is patched. The recent
//!   Events are a bounded cache ([`KubeClientOptions::event_cache`] entries, each kept
//!   [`KubeClientOptions::event_series_window`]); Events are written one at a time by one task,
//!   from a bounded queue ([`KubeClientOptions::event_queue`]; past it an Event is dropped and
//!   counted, as recording Events is best effort).

use crate::backend::{CallFuture, KubeBackend};
use crate::k8s::{not_found, replaced};
use difftracker_engine::io::{
    CallError, CallOutput, ErrorKind, EventType, KubeCall, KubeEventRecord, LoadBalancerIngress, ObjectKind, ObjectRef,
};
use difftracker_engine::names::{POD_FINALIZER, SERVICE_FINALIZERS};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The `reportingController` of the engine's Events.
pub const REPORTING_CONTROLLER: &str = "servicegateway.azure.com/difftracker";

/// The knobs and bounds of a [`KubeClientBackend`].
#[derive(Clone, Debug)]
pub struct KubeClientOptions {
    pub reporting_controller: String,
    /// This replica (the Pod's name in a cluster); the controller's name when empty.
    pub reporting_instance: String,
    /// Reads and writes of one guarded patch before it gives up on conflicts; 5.
    pub max_attempts: u32,
    /// The pause before the second attempt, doubled after each; 50 ms.
    pub conflict_backoff: Duration,
    /// Recent Events remembered for their series; 1024.
    pub event_cache: usize,
    /// How long a repeat joins an Event's series (after its last occurrence); 6 minutes.
    pub event_series_window: Duration,
    /// Events waiting to be written; 1024.
    pub event_queue: usize,
}

impl Default for KubeClientOptions {
    fn default() -> Self {
        KubeClientOptions {
            reporting_controller: REPORTING_CONTROLLER.into(),
            reporting_instance: String::new(),
            max_attempts: 5,
            conflict_backoff: Duration::from_millis(50),
            event_cache: 1024,
            event_series_window: Duration::from_secs(360),
            event_queue: 1024,
        }
    }
}

/// What the backend did, for metrics and tests.
#[derive(Debug, Default)]
pub struct KubeClientStats {
    /// Guarded patches retried after a conflict.
    pub conflict_retries: AtomicU64,
    /// Events created, and repeats folded into a series.
    pub events_created: AtomicU64,
    pub events_series_updated: AtomicU64,
    /// Events dropped: the queue was full, or the API server refused them.
    pub events_dropped: AtomicU64,
    /// Events written (created, folded or refused): what a test waits on.
    pub events_done: AtomicU64,
}

/// The engine's Kubernetes writes over a [`kube::Client`].
#[derive(Clone)]
pub struct KubeClientBackend {
    client: Client,
    options: Arc<KubeClientOptions>,
    events: mpsc::Sender<KubeEventRecord>,
    stats: Arc<KubeClientStats>,
}

impl KubeClientBackend {
    /// A backend over `client`; starts its Event writer, so it is made inside a tokio runtime.
    pub fn new(client: Client, options: KubeClientOptions) -> KubeClientBackend {
        let options = Arc::new(options);
        let stats = Arc::new(KubeClientStats::default());
        let (tx, rx) = mpsc::channel(options.event_queue.max(1));
        let writer = EventWriter { client: client.clone(), options: options.clone(), stats: stats.clone(), recent: HashMap::new() };
        tokio::spawn(writer.run(rx));
        KubeClientBackend { client, options, events: tx, stats }
    }

    pub fn stats(&self) -> &KubeClientStats {
        &self.stats
    }

    /// Performs one call (what [`KubeBackend::call`] returns, as an `async fn`).
    pub async fn perform(&self, call: KubeCall) -> Result<CallOutput, CallError> {
        match call {
            KubeCall::AddServiceFinalizers(t) => self.finalizers::<core::Service>(&t, &SERVICE_FINALIZERS, true).await,
            KubeCall::RemoveServiceFinalizers(t) => self.finalizers::<core::Service>(&t, &SERVICE_FINALIZERS, false).await,
            KubeCall::AddPodFinalizer(t) => self.finalizers::<core::Pod>(&t, &[POD_FINALIZER], true).await,
            KubeCall::RemovePodFinalizer(t) => self.finalizers::<core::Pod>(&t, &[POD_FINALIZER], false).await,
            KubeCall::PatchServiceIngress(t, ingress) => self.ingress(&t, &ingress).await,
        }
    }

    /// Reads, computes a guarded patch (or an outcome) from what was read, writes; again on a
    /// conflict, a bounded number of times.
    async fn guarded<K>(
        &self,
        target: &ObjectRef,
        status: bool,
        plan: impl Fn(&K) -> Result<Option<Vec<Value>>, CallError>,
        absent: Result<CallOutput, CallError>,
    ) -> Result<CallOutput, CallError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &target.namespace);
        let what = format!("{} {}/{}", K::kind(&K::DynamicType::default()), target.namespace, target.name);
        let attempts = self.options.max_attempts.max(1);
        let mut pause = self.options.conflict_backoff;
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                self.stats.conflict_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
            }
            let current = match api.get_opt(&target.name).await {
                Ok(Some(o)) => o,
                Ok(None) => return absent,
                Err(e) => return Err(call_error(&what, e)),
            };
            let m = current.meta();
            let uid = m.uid.clone().unwrap_or_default();
            if !uid.eq_ignore_ascii_case(&target.uid) {
                return Err(replaced(&what, &target.uid, &uid));
            }
            let Some(ops) = plan(&current)? else { return Ok(CallOutput::Done) };
            let rv = m.resource_version.clone().unwrap_or_default();
            let mut patch = vec![
                json!({"op": "test", "path": "/metadata/uid", "value": uid}),
                json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
            ];
            patch.extend(ops);
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch))
                .map_err(|e| CallError::of_kind(ErrorKind::InvalidResponse, &format!("{what}: cannot build the patch: {e}")))?;
            let params = PatchParams::default();
            let written = if status {
                api.patch_status(&target.name, &params, &Patch::<()>::Json(patch)).await
            } else {
                api.patch(&target.name, &params, &Patch::<()>::Json(patch)).await
            };
            match written {
                Ok(_) => return Ok(CallOutput::Done),
                // A newer resourceVersion (409) or a failed `test` (422): read again. A 422
                // for another reason is found again by the next read's plan, or repeats.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                    tracing::debug!("{what}: {} {} (attempt {}), reading again", s.code, s.message, attempt + 1);
                    last = format!("{} {}: {}", s.code, s.reason, s.message);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return absent,
                Err(e) => return Err(call_error(&what, e)),
            }
        }
        Err(CallError {
            kind: ErrorKind::Conflict,
            status: 409,
            code: "Conflict".into(),
            message: format!("{what}: still conflicting after {attempts} attempts (last: {last})"),
            retry_after_ms: None,
        })
    }

    async fn finalizers<K>(&self, target: &ObjectRef, finalizers: &[&str], add: bool) -> Result<CallOutput, CallError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let what = format!("{} {}/{}", K::kind(&K::DynamicType::default()), target.namespace, target.name);
        let plan = |o: &K| -> Result<Option<Vec<Value>>, CallError> {
            let m = o.meta();
            let have: Vec<String> = m.finalizers.clone().unwrap_or_default();
            if add {
                let missing: Vec<&str> = finalizers.iter().copied().filter(|f| !have.iter().any(|g| g == f)).collect();
                if missing.is_empty() {
                    return Ok(None);
                }
                if m.deletion_timestamp.is_some() {
                    return Err(CallError {
                        kind: ErrorKind::Http,
                        status: 422,
                        code: "Invalid".into(),
                        message: format!(
                            "{what} is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"
                        ),
                        retry_after_ms: None,
                    });
                }
                let mut all = have.clone();
                all.extend(missing.iter().map(|f| f.to_string()));
                Ok(Some(vec![json!({"op": "add", "path": "/metadata/finalizers", "value": all})]))
            } else {
                if !have.iter().any(|f| finalizers.contains(&f.as_str())) {
                    return Ok(None);
                }
                let remaining: Vec<&String> = have.iter().filter(|f| !finalizers.contains(&f.as_str())).collect();
                Ok(Some(vec![json!({"op": "replace", "path": "/metadata/finalizers", "value": remaining})]))
            }
        };
        let absent = if add { Err(not_found(&what)) } else { Ok(CallOutput::Done) };
        self.guarded::<K>(target, false, plan, absent).await
    }

    async fn ingress(&self, target: &ObjectRef, want: &[LoadBalancerIngress]) -> Result<CallOutput, CallError> {
        let what = format!("Service {}/{}", target.namespace, target.name);
        let plan = |s: &core::Service| -> Result<Option<Vec<Value>>, CallError> {
            let current: Vec<core::LoadBalancerIngress> =
                s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.clone()).unwrap_or_default();
            let merged = merged_ingress(&current, want);
            if merged == current {
                return Ok(None);
            }
            let value = serde_json::to_value(&merged).unwrap_or(Value::Null);
            let op = match s.status.as_ref() {
                None => json!({"op": "add", "path": "/status", "value": {"loadBalancer": {"ingress": value}}}),
                Some(st) if st.load_balancer.is_none() => json!({"op": "add", "path": "/status/loadBalancer", "value": {"ingress": value}}),
                Some(_) => json!({"op": "add", "path": "/status/loadBalancer/ingress", "value": value}),
            };
            Ok(Some(vec![op]))
        };
        self.guarded::<core::Service>(target, true, plan, Err(not_found(&what))).await
    }
}

/// The ingress to write: the engine's entries in its order (an entry already there keeps what
/// else it carries, such as `ipMode` and `ports`), then the hostname entries of other writers
/// the engine's list does not have.
pub fn merged_ingress(current: &[core::LoadBalancerIngress], want: &[LoadBalancerIngress]) -> Vec<core::LoadBalancerIngress> {
    let same = |c: &core::LoadBalancerIngress, w: &LoadBalancerIngress| {
        c.ip.as_deref().unwrap_or("") == w.ip && c.hostname.as_deref().unwrap_or("") == w.hostname
    };
    let mut out: Vec<core::LoadBalancerIngress> = want
        .iter()
        .map(|w| {
            current.iter().find(|c| same(c, w)).cloned().unwrap_or_else(|| core::LoadBalancerIngress {
                ip: (!w.ip.is_empty()).then(|| w.ip.clone()),
                hostname: (!w.hostname.is_empty()).then(|| w.hostname.clone()),
                ..Default::default()
            })
        })
        .collect();
    for c in current {
        let hostname_only = c.ip.as_deref().unwrap_or("").is_empty() && !c.hostname.as_deref().unwrap_or("").is_empty();
        if hostname_only && !want.iter().any(|w| same(c, w)) {
            out.push(c.clone());
        }
    }
    out
}

impl KubeBackend for KubeClientBackend {
    fn call(&self, call: KubeCall) -> CallFuture {
        let this = self.clone();
        Box::pin(async move { this.perform(call).await })
    }

    fn record_event(&self, event: KubeEventRecord) {
        if self.events.try_send(event).is_err() {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
            self.stats.events_done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A failed request as the engine's error.
fn call_error(what: &str, e: kube::Error) -> CallError {
    match e {
        kube::Error::Api(s) => {
            let kind = match s.code {
                404 => ErrorKind::NotFound,
                429 => ErrorKind::Throttled,
                _ => ErrorKind::Http,
            };
            let retry_after_ms = s.details.as_ref().map(|d| d.retry_after_seconds).filter(|s| *s > 0).map(|s| u64::from(s) * 1000);
            CallError { kind, status: s.code, code: s.reason.clone(), message: format!("{what}: {}", s.message), retry_after_ms }
        }
        other => CallError::of_kind(ErrorKind::Transport, &format!("{what}: {other}")),
    }
}

// ------------------------------------------------------------------------ Events

#[derive(Clone, PartialEq, Eq, Hash)]
struct EventKey {
    kind: &'static str,
    namespace: String,
    name: String,
    uid: String,
    warning: bool,
    reason: String,
    message: String,
}

struct Recent {
    /// The Event object's name and namespace.
    name: String,
    namespace: String,
    count: i32,
    last: Instant,
}

struct EventWriter {
    client: Client,
    options: Arc<KubeClientOptions>,
    stats: Arc<KubeClientStats>,
    recent: HashMap<EventKey, Recent>,
}

/// An Event's `note` is at most 1 kB.
const MAX_NOTE: usize = 1024;

impl EventWriter {
    async fn run(mut self, mut rx: mpsc::Receiver<KubeEventRecord>) {
        while let Some(record) = rx.recv().await {
            match self.write(&record).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(reason = %record.reason, "cannot record an Event on {}/{}: {e}", record.target.namespace, record.target.name);
                    self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.stats.events_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn write(&mut self, record: &KubeEventRecord) -> Result<(), kube::Error> {
        let now = Instant::now();
        let window = self.options.event_series_window;
        self.recent.retain(|_, r| now.duration_since(r.last) < window);
        let key = EventKey {
            kind: match record.kind {
                ObjectKind::Service => "Service",
                ObjectKind::Pod => "Pod",
            },
            namespace: record.target.namespace.clone(),
            name: record.target.name.clone(),
            uid: record.target.uid.clone(),
            warning: record.event_type == EventType::Warning,
            reason: record.reason.clone(),
            message: record.message.clone(),
        };
        let stamp = meta::MicroTime(Timestamp::now());
        if let Some(r) = self.recent.get_mut(&key) {
            let api: Api<events::Event> = Api::namespaced(self.client.clone(), &r.namespace);
            let count = r.count + 1;
            let patch = json!({"series": {"count": count, "lastObservedTime": stamp}});
            match api.patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    r.count = count;
                    r.last = now;
                    self.stats.events_series_updated.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // Gone (expired by the API server): a new Event.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.recent.remove(&key);
                }
                Err(e) => return Err(e),
            }
        }
        let namespace = if record.target.namespace.is_empty() { "default".to_string() } else { record.target.namespace.clone() };
        let instance = if self.options.reporting_instance.is_empty() {
            self.options.reporting_controller.clone()
        } else {
            self.options.reporting_instance.clone()
        };
        let mut note = record.message.clone();
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = events::Event {
            metadata: meta::ObjectMeta {
                name: Some(format!("{}.{:x}", record.target.name, stamp.0.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(stamp),
            action: Some(record.reason.clone()),
            reason: Some(record.reason.clone()),
            note: Some(note),
            type_: Some(if key.warning { "Warning" } else { "Normal" }.into()),
            reporting_controller: Some(self.options.reporting_controller.clone()),
            reporting_instance: Some(instance),
            regarding: Some(core::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(key.kind.into()),
                namespace: Some(record.target.namespace.clone()),
                name: Some(record.target.name.clone()),
                uid: (!record.target.uid.is_empty()).then(|| record.target.uid.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<events::Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await?;
        self.stats.events_created.fetch_add(1, Ordering::Relaxed);
        if self.recent.len() >= self.options.event_cache.max(1) {
            // Full: forget the least recently seen.
            if let Some(oldest) = self.recent.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| k.clone()) {
                self.recent.remove(&oldest);
            }
        }
        let name = created.metadata.name.unwrap_or_default();
        self.recent.insert(key, Recent { name, namespace, count: 1, last: now });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str, hostname: &str) -> core::LoadBalancerIngress {
        core::LoadBalancerIngress {
            ip: (!ip.is_empty()).then(|| ip.to_string()),
            hostname: (!hostname.is_empty()).then(|| hostname.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn the_merged_ingress_keeps_foreign_hostnames_and_drops_what_the_engine_dropped() {
        let current = vec![entry("1.1.1.1", ""), entry("", "lb.example"), entry("fd00::1", "")];
        let want = vec![LoadBalancerIngress { ip: "2.2.2.2".into(), hostname: String::new() }];
        let merged = merged_ingress(&current, &want);
        assert_eq!(merged, vec![entry("2.2.2.2", ""), entry("", "lb.example")]);
        let mut with_mode = entry("2.2.2.2", "");
        with_mode.ip_mode = Some("VIP".into());
        let merged = merged_ingress(&[with_mode.clone()], &want);
        assert_eq!(merged, vec![with_mode], "an entry already there keeps its other fields");
    }
}
