//! The trace player: applies a trace's watch events ([`TraceEvent`]) onto a Kubernetes API
//! server over HTTP, the way a user's `kubectl` (and the cluster's other writers: kubelet, the
//! node controller, other controllers' finalizers) would, through a [`kube::Client`]. It is how
//! the main job feeds the in-repo API server a trace for the controller to watch; the replay's
//! simulated cluster ([`crate::replay::cluster::Cluster`]) applies the same trace in memory with
//! the same outcome, which the tests compare.
//!
//! - **ADDED / MODIFIED**: a create when the name is free, else a replace (`PUT`) built from a
//!   fresh read: the server's `resourceVersion` (a `409` reads again), the finalizers the
//!   controller owns ([`is_engine_finalizer`]; the trace's own are dropped, as a recording
//!   carries the real controller's) plus the trace's foreign ones, and the Service's status
//!   (the controller owns the ingress). Pods and Nodes get the trace's status through the
//!   `status` subresource (their status is kubelet's and the node controller's).
//! - **UIDs** are the server's: the player maps the trace's UIDs to them and rewrites
//!   EndpointSlice `ownerReferences` through the map (a slice written before its owner exists
//!   is rewritten once it does), so the server's garbage collector takes a Service's slices.
//! - **Replacement**: an ADDED/MODIFIED carrying another trace UID than the object under that
//!   name deletes the old incarnation and creates the new one once the name is free. Until then
//!   the event waits in a per-name queue that [`TracePlayer::retry_pending`] retries: the player
//!   never blocks on the controller's finalizers.
//! - **DELETED** (or an object arriving with a `deletionTimestamp`): `DELETE` with a UID
//!   precondition; foreign finalizers that keep the object are then removed by a merge patch
//!   conditional on the `resourceVersion` just read (their writer releasing them).
//! - **Errors** never panic: a transient one (`429`, `5xx`, no connection, as during an API
//!   server restart) is retried with backoff, then left queued for [`TracePlayer::retry_pending`];
//!   any other is counted in [`PlayerStats`] with its message and the event dropped.

use crate::replay::cluster::ObjectKey;
use crate::replay::trace::TraceEvent;
use difftracker_runtime::k8s::k8s_openapi::api::core::v1 as core;
use difftracker_runtime::k8s::k8s_openapi::api::discovery::v1 as discovery;
use difftracker_runtime::k8s::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use difftracker_runtime::k8s::kube::{self, Client, Resource};
use difftracker_runtime::k8s::{
    endpoint_slice_to_k8s, is_engine_finalizer, node_to_k8s, pod_to_k8s, service_to_k8s, KubeObject, WatchEventType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// The player's knobs and bounds.
#[derive(Clone, Debug)]
pub struct PlayerOptions {
    /// Tries of one request that fails transiently before the event is left queued; 4.
    pub attempts: u32,
    /// The pause before the second try, doubled after each (a `Retry-After` replaces it); 100 ms.
    pub backoff: Duration,
    /// The longest pause, of a request or of a queued name between two retries; 2 s.
    pub max_backoff: Duration,
    /// Reads and writes of one event before a conflict that never clears leaves it queued; 5.
    pub conflict_attempts: u32,
    /// Queued events, over all names; past it an event is dropped and counted; 10,000.
    pub max_pending: usize,
    /// Error messages kept in [`PlayerStats::recent_errors`]; 20.
    pub max_errors_kept: usize,
}

impl Default for PlayerOptions {
    fn default() -> Self {
        PlayerOptions {
            attempts: 4,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            conflict_attempts: 5,
            max_pending: 10_000,
            max_errors_kept: 20,
        }
    }
}

/// What the player did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlayerStats {
    /// Trace events that were written (or found already written).
    pub events_applied: u64,
    /// Trace events with nothing to do: a DELETED of an object already gone or of an older
    /// incarnation, an object first seen already being deleted.
    pub events_ignored: u64,
    /// Trace events queued: behind an old incarnation still being deleted, behind an earlier
    /// event of the same name, or after a transient error.
    pub events_deferred: u64,
    /// Events dropped: the queue was full, or the server refused them (see `errors`).
    pub events_dropped: u64,
    pub creates: u64,
    /// Replaces of objects and of Pod and Node status.
    pub replaces: u64,
    pub deletes: u64,
    /// Foreign finalizers removed from objects being deleted.
    pub finalizers_released: u64,
    /// Old incarnations deleted because the trace re-created the name without deleting them.
    pub incarnations_replaced: u64,
    /// EndpointSlices rewritten once their owner got its server UID.
    pub owner_rewrites: u64,
    /// Writes read again after a `409`.
    pub conflicts: u64,
    /// Requests tried again after a transient error.
    pub transient_retries: u64,
    /// Errors: refused writes, and transient errors that outlasted the retries.
    pub errors: u64,
    /// The last errors, newest last.
    pub recent_errors: Vec<String>,
}

/// The outcome of one try of one event.
enum Step {
    /// Done; whether anything was written.
    Done(bool),
    /// The name is still held by an old incarnation.
    Blocked,
    /// A transient error outlasted the retries.
    Transient(String),
    /// Refused: the event is dropped.
    Failed(String),
}

/// A queued name: its events in trace order, and when to try again.
struct Queue {
    events: VecDeque<TraceEvent>,
    next_try: Instant,
    pause: Duration,
}

/// Plays trace events onto an API server. See the module documentation.
pub struct TracePlayer {
    client: Client,
    options: PlayerOptions,
    /// Trace UID (lower-cased) -> server UID.
    uids: BTreeMap<String, String>,
    /// Server UID -> trace UID.
    trace_uids: BTreeMap<String, String>,
    /// The trace UID of the incarnation the player last wrote under each name.
    incarnations: BTreeMap<ObjectKey, String>,
    pending: BTreeMap<ObjectKey, Queue>,
    pending_events: usize,
    /// Trace owner UID not yet on the server -> the EndpointSlices naming it, with their last
    /// trace event (rewritten once the owner exists).
    unresolved_owners: BTreeMap<String, BTreeSet<ObjectKey>>,
    last_slice_events: BTreeMap<ObjectKey, TraceEvent>,
    stats: PlayerStats,
}

/// The Kubernetes types the player writes, and what differs between them.
trait Played: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static {
    /// Whether the trace's status is written (Pods and Nodes: their status is other writers'; a
    /// Service's is the controller's; EndpointSlices have none).
    const TRACE_STATUS: bool;
    fn api(client: Client, namespace: &str) -> Api<Self>;
    /// What to write over `current`: `desired` with what the trace does not own kept from
    /// `current` (a Service's status and server-defaulted spec fields, a Pod's spec, a Node's
    /// spec), metadata left to the caller.
    fn merged(current: &Self, desired: Self) -> Self;
    fn same_status(a: &Self, b: &Self) -> bool;
    /// `self` with `other`'s status.
    fn with_status_of(self, other: &Self) -> Self;
}

impl Played for core::Service {
    const TRACE_STATUS: bool = false;
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
    fn merged(current: &Self, desired: Self) -> Self {
        // The fields the trace carries (what the engine reads) replace the server's; the rest
        // of the spec (clusterIP, nodePorts defaulted by a real API server) stays.
        let mut spec = current.spec.clone().unwrap_or_default();
        let want = desired.spec.unwrap_or_default();
        spec.type_ = want.type_;
        spec.ports = want.ports;
        spec.ip_families = want.ip_families;
        spec.session_affinity = want.session_affinity;
        spec.load_balancer_ip = want.load_balancer_ip;
        spec.load_balancer_class = want.load_balancer_class;
        spec.external_traffic_policy = want.external_traffic_policy;
        core::Service { metadata: desired.metadata, spec: Some(spec), status: current.status.clone() }
    }
    fn same_status(a: &Self, b: &Self) -> bool {
        a.status == b.status
    }
    fn with_status_of(mut self, other: &Self) -> Self {
        self.status = other.status.clone();
        self
    }
}

impl Played for discovery::EndpointSlice {
    const TRACE_STATUS: bool = false;
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
    fn merged(_current: &Self, desired: Self) -> Self {
        desired
    }
    fn same_status(_: &Self, _: &Self) -> bool {
        true
    }
    fn with_status_of(self, _: &Self) -> Self {
        self
    }
}

impl Played for core::Node {
    const TRACE_STATUS: bool = true;
    fn api(client: Client, _namespace: &str) -> Api<Self> {
        Api::all(client)
    }
    fn merged(current: &Self, mut desired: Self) -> Self {
        desired.spec = current.spec.clone();
        desired
    }
    fn same_status(a: &Self, b: &Self) -> bool {
        a.status == b.status
    }
    fn with_status_of(mut self, other: &Self) -> Self {
        self.status = other.status.clone();
        self
    }
}

impl Played for core::Pod {
    const TRACE_STATUS: bool = true;
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
    fn merged(current: &Self, mut desired: Self) -> Self {
        // A Pod's spec is immutable once bound, but for its binding.
        let node_name = desired.spec.as_ref().and_then(|s| s.node_name.clone());
        desired.spec = current.spec.clone();
        if let Some(spec) = desired.spec.as_mut() {
            if spec.node_name.is_none() {
                spec.node_name = node_name;
            }
        }
        desired
    }
    fn same_status(a: &Self, b: &Self) -> bool {
        a.status == b.status
    }
    fn with_status_of(mut self, other: &Self) -> Self {
        self.status = other.status.clone();
        self
    }
}

/// Whether an error is worth trying again, and after how long the server asks.
fn transient(e: &kube::Error) -> Option<Option<Duration>> {
    match e {
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
            Some(s.details.as_ref().map(|d| d.retry_after_seconds).filter(|s| *s > 0).map(|s| Duration::from_secs(u64::from(s))))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => Some(None),
        _ => None,
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

fn uid_of<K: Resource>(o: &K) -> String {
    o.meta().uid.clone().unwrap_or_default()
}

fn non_empty(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

impl TracePlayer {
    pub fn new(client: Client) -> TracePlayer {
        TracePlayer::with_options(client, PlayerOptions::default())
    }

    pub fn with_options(client: Client, options: PlayerOptions) -> TracePlayer {
        TracePlayer {
            client,
            options,
            uids: BTreeMap::new(),
            trace_uids: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_events: 0,
            unresolved_owners: BTreeMap::new(),
            last_slice_events: BTreeMap::new(),
            stats: PlayerStats::default(),
        }
    }

    pub fn stats(&self) -> &PlayerStats {
        &self.stats
    }

    /// Whether no event waits in a queue.
    pub fn is_quiet(&self) -> bool {
        self.pending.is_empty()
    }

    /// Events waiting in queues.
    pub fn pending(&self) -> usize {
        self.pending_events
    }

    /// The server's UID of the object the trace names by `trace_uid`, once created.
    pub fn server_uid(&self, trace_uid: &str) -> Option<&str> {
        self.uids.get(&trace_uid.to_ascii_lowercase()).map(String::as_str)
    }

    /// The trace's UID of the server's object `server_uid`, when the player created it.
    pub fn trace_uid(&self, server_uid: &str) -> Option<&str> {
        self.trace_uids.get(server_uid).map(String::as_str)
    }

    /// Applies one trace event: at once, or queued behind earlier events of its name (see the
    /// module documentation). Never panics; errors are counted in [`PlayerStats`].
    pub async fn apply(&mut self, event: &TraceEvent) {
        let key = ObjectKey::of(&event.object);
        if let Some(queue) = self.pending.get(&key) {
            // An event for the incarnation on the server goes ahead of a new incarnation waiting
            // for the name (as the simulated cluster applies it), unless an earlier event of
            // that same incarnation is queued: the order of one object's events is kept.
            let current = self.is_current(&key, &event.object);
            let earlier_of_current = queue.events.iter().any(|e| self.is_current(&key, &e.object));
            if !current || earlier_of_current {
                self.enqueue(key, event.clone(), false);
                return;
            }
        }
        let step = self.try_event(event).await;
        self.settle(key, event, step, true);
        self.rewrite_owners().await;
    }

    /// Tries the queued events again, each name at most once per its backoff, in order; returns
    /// at once for names not due. Call it until [`is_quiet`](Self::is_quiet).
    pub async fn retry_pending(&mut self) {
        let now = Instant::now();
        let due: Vec<ObjectKey> = self.pending.iter().filter(|(_, q)| q.next_try <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            while let Some(event) = self.pending.get(&key).and_then(|q| q.events.front().cloned()) {
                let step = self.try_event(&event).await;
                let done = matches!(step, Step::Done(_) | Step::Failed(_));
                if done {
                    if let Some(q) = self.pending.get_mut(&key) {
                        q.events.pop_front();
                        self.pending_events = self.pending_events.saturating_sub(1);
                        q.pause = self.options.backoff;
                    }
                }
                self.settle(key.clone(), &event, step, false);
                if !done {
                    break;
                }
            }
            if self.pending.get(&key).is_some_and(|q| q.events.is_empty()) {
                self.pending.remove(&key);
            }
        }
        self.rewrite_owners().await;
    }

    /// Counts an outcome; queues the event when it must wait (`fresh`: not from the queue).
    fn settle(&mut self, key: ObjectKey, event: &TraceEvent, step: Step, fresh: bool) {
        match step {
            Step::Done(true) => self.stats.events_applied += 1,
            Step::Done(false) => self.stats.events_ignored += 1,
            Step::Failed(message) => {
                self.stats.events_dropped += 1;
                self.error(format!("{key}: {message}"));
            }
            Step::Blocked | Step::Transient(_) => {
                if let Step::Transient(message) = &step {
                    self.error(format!("{key}: {message} (queued)"));
                }
                if fresh {
                    // An event of the current incarnation goes first (see `apply`).
                    let front = self.is_current(&key, &event.object);
                    self.enqueue(key.clone(), event.clone(), front);
                }
                if let Some(q) = self.pending.get_mut(&key) {
                    q.next_try = Instant::now() + q.pause;
                    q.pause = q.pause.saturating_mul(2).min(self.options.max_backoff);
                }
            }
        }
    }

    fn enqueue(&mut self, key: ObjectKey, event: TraceEvent, front: bool) {
        if self.pending_events >= self.options.max_pending {
            self.stats.events_dropped += 1;
            self.error(format!("{key}: dropped, {} events already queued", self.pending_events));
            return;
        }
        self.stats.events_deferred += 1;
        self.pending_events += 1;
        let backoff = self.options.backoff;
        let queue = self.pending.entry(key).or_insert_with(|| Queue { events: VecDeque::new(), next_try: Instant::now(), pause: backoff });
        if front {
            queue.events.push_front(event);
        } else {
            queue.events.push_back(event);
        }
    }

    fn error(&mut self, message: String) {
        tracing::warn!("trace player: {message}");
        self.stats.errors += 1;
        self.stats.recent_errors.push(message);
        let excess = self.stats.recent_errors.len().saturating_sub(self.options.max_errors_kept);
        self.stats.recent_errors.drain(..excess);
    }

    /// Whether `object` is (or, with no UID or as a Node, counts as) the incarnation the player
    /// last wrote under `key`.
    fn is_current(&self, key: &ObjectKey, object: &KubeObject) -> bool {
        let uid = object.uid().to_ascii_lowercase();
        key.kind == "Node" || uid.is_empty() || self.incarnations.get(key).is_none_or(|u| *u == uid)
    }

    /// Whether the server's `current` object is the one the trace's `trace_uid` names: the
    /// mapped one, or one the player did not create (adopted).
    fn is_incarnation(&self, key: &ObjectKey, trace_uid: &str, server_uid: &str) -> bool {
        key.kind == "Node"
            || trace_uid.is_empty()
            || self.uids.get(trace_uid).is_some_and(|s| s == server_uid)
            || !self.trace_uids.contains_key(server_uid)
    }

    fn map_uid(&mut self, key: &ObjectKey, trace_uid: &str, server_uid: &str) {
        self.incarnations.insert(key.clone(), trace_uid.to_string());
        if trace_uid.is_empty() || server_uid.is_empty() {
            return;
        }
        if let Some(old) = self.uids.insert(trace_uid.to_string(), server_uid.to_string()) {
            if old != server_uid {
                self.trace_uids.remove(&old);
            }
        }
        self.trace_uids.insert(server_uid.to_string(), trace_uid.to_string());
    }

    /// One try of one event.
    async fn try_event(&mut self, event: &TraceEvent) -> Step {
        match &event.object {
            KubeObject::Service(s) => {
                let mut desired = service_to_k8s(s);
                desired.status = None;
                self.play(event, desired).await
            }
            KubeObject::EndpointSlice(s) => {
                let key = ObjectKey::of(&event.object);
                let mut desired = endpoint_slice_to_k8s(s);
                let mut unresolved = Vec::new();
                for owner in desired.metadata.owner_references.iter_mut().flatten() {
                    let trace_uid = owner.uid.to_ascii_lowercase();
                    match self.uids.get(&trace_uid) {
                        Some(server_uid) => owner.uid = server_uid.clone(),
                        None => unresolved.push(trace_uid),
                    }
                }
                if unresolved.is_empty() || event.event_type == WatchEventType::Deleted {
                    self.last_slice_events.remove(&key);
                } else {
                    for owner in unresolved {
                        self.unresolved_owners.entry(owner).or_default().insert(key.clone());
                    }
                    self.last_slice_events.insert(key, event.clone());
                }
                self.play(event, desired).await
            }
            KubeObject::Node(n) => self.play(event, node_to_k8s(n)).await,
            KubeObject::Pod(p) => self.play(event, pod_to_k8s(p)).await,
        }
    }

    /// Writes again the EndpointSlices whose owner has got its server UID since they were
    /// written.
    async fn rewrite_owners(&mut self) {
        let resolved: Vec<String> = self.unresolved_owners.keys().filter(|u| self.uids.contains_key(*u)).cloned().collect();
        for owner in resolved {
            for key in self.unresolved_owners.remove(&owner).unwrap_or_default() {
                let Some(event) = self.last_slice_events.get(&key).cloned() else { continue };
                if self.pending.contains_key(&key) || !self.is_current(&key, &event.object) {
                    continue;
                }
                let mut event = event;
                event.event_type = WatchEventType::Modified;
                if let Step::Done(true) = self.try_event(&event).await {
                    self.stats.owner_rewrites += 1;
                }
            }
        }
    }

    /// A request, tried again after transient errors with backoff (or the server's
    /// `Retry-After`), a bounded number of times.
    async fn call<T, F, Fut>(&mut self, mut request: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut pause = self.options.backoff;
        let mut tries = 1;
        loop {
            match request().await {
                Err(e) if tries < self.options.attempts.max(1) => {
                    let Some(asked) = transient(&e) else { return Err(e) };
                    self.stats.transient_retries += 1;
                    tracing::debug!("trace player: {} (try {tries}), trying again", describe(&e));
                    tokio::time::sleep(asked.unwrap_or(pause).min(self.options.max_backoff)).await;
                    pause = pause.saturating_mul(2).min(self.options.max_backoff);
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// The step of a failed request.
    fn failed(what: &str, e: &kube::Error) -> Step {
        if transient(e).is_some() {
            Step::Transient(format!("{what}: {}", describe(e)))
        } else {
            Step::Failed(format!("{what}: {}", describe(e)))
        }
    }

    /// One try of one event, for one Kubernetes type: `desired` is the trace's object in it.
    async fn play<K: Played>(&mut self, event: &TraceEvent, mut desired: K) -> Step {
        let key = ObjectKey::of(&event.object);
        let api = K::api(self.client.clone(), &key.namespace);
        let name = key.name.clone();
        let trace_uid = event.object.uid().to_ascii_lowercase();
        let wants_deletion = event.object.meta().is_some_and(|m| m.deletion_timestamp.is_some());
        let foreign: Vec<String> = desired.meta().finalizers.iter().flatten().filter(|f| !is_engine_finalizer(f)).cloned().collect();
        {
            let m = desired.meta_mut();
            m.uid = None;
            m.resource_version = None;
            m.deletion_timestamp = None;
            m.finalizers = None;
        }
        let post = PostParams::default();
        for _ in 0..self.options.conflict_attempts.max(1) {
            let current = match self.call(|| api.get_opt(&name)).await {
                Ok(c) => c,
                Err(e) => return Self::failed(&format!("reading {key}"), &e),
            };
            if event.event_type == WatchEventType::Deleted {
                let Some(cur) = current else { return Step::Done(false) };
                let server_uid = uid_of(&cur);
                if !self.is_incarnation(&key, &trace_uid, &server_uid) {
                    return Step::Done(false); // an older incarnation: already gone
                }
                return self.delete(&api, &key, &server_uid).await;
            }
            let Some(cur) = current else {
                if wants_deletion {
                    // First seen already being deleted: the trace missed its life.
                    return Step::Done(false);
                }
                let mut new = desired.clone();
                new.meta_mut().finalizers = non_empty(foreign.clone());
                match self.call(|| api.create(&post, &new)).await {
                    Ok(created) => {
                        self.stats.creates += 1;
                        self.map_uid(&key, &trace_uid, &uid_of(&created));
                        return self.write_status(&api, &key, created, &desired).await;
                    }
                    // Created by someone else meanwhile: read it.
                    Err(e) if api_code(&e) == Some(409) => {
                        self.stats.conflicts += 1;
                        continue;
                    }
                    Err(e) => return Self::failed(&format!("creating {key}"), &e),
                }
            };
            let server_uid = uid_of(&cur);
            let deleting = cur.meta().deletion_timestamp.is_some();
            if !self.is_incarnation(&key, &trace_uid, &server_uid) {
                // Another incarnation holds the name: it goes first (the trace missed its
                // deletion if it is not already going).
                if !deleting {
                    self.stats.incarnations_replaced += 1;
                    match self.delete(&api, &key, &server_uid).await {
                        Step::Done(_) => {}
                        other => return other,
                    }
                }
                match self.call(|| api.get_opt(&name)).await {
                    Ok(None) => continue,
                    Ok(Some(_)) => return Step::Blocked,
                    Err(e) => return Self::failed(&format!("reading {key}"), &e),
                }
            }
            // The trace's foreign finalizers (none once the object is being deleted: no new
            // finalizer may be added then, and the trace's were released by its deletion) and
            // the controller's, as the server has them.
            let mut finalizers = if deleting { Vec::new() } else { foreign.clone() };
            for f in cur.meta().finalizers.iter().flatten() {
                if is_engine_finalizer(f) && !finalizers.contains(f) {
                    finalizers.push(f.clone());
                }
            }
            let mut new = K::merged(&cur, desired.clone());
            {
                let m = new.meta_mut();
                m.uid = cur.meta().uid.clone();
                m.resource_version = cur.meta().resource_version.clone();
                m.creation_timestamp = cur.meta().creation_timestamp.clone();
                m.finalizers = non_empty(finalizers);
            }
            let written = match self.call(|| api.replace(&name, &post, &new)).await {
                Ok(w) => w,
                Err(e) if matches!(api_code(&e), Some(409) | Some(404)) => {
                    self.stats.conflicts += 1;
                    continue;
                }
                Err(e) => return Self::failed(&format!("replacing {key}"), &e),
            };
            self.stats.replaces += 1;
            self.map_uid(&key, &trace_uid, &server_uid);
            match self.write_status(&api, &key, written, &desired).await {
                Step::Done(_) => {}
                other => return other,
            }
            if wants_deletion && !deleting {
                return self.delete(&api, &key, &server_uid).await;
            }
            return Step::Done(true);
        }
        Step::Transient(format!("{key}: still conflicting after {} attempts", self.options.conflict_attempts))
    }

    /// Writes the trace's status of a Pod or Node through the `status` subresource when the
    /// server's differs (`written` as just written or read).
    async fn write_status<K: Played>(&mut self, api: &Api<K>, key: &ObjectKey, written: K, desired: &K) -> Step {
        if !K::TRACE_STATUS {
            return Step::Done(true);
        }
        let post = PostParams::default();
        let mut current = written;
        for _ in 0..self.options.conflict_attempts.max(1) {
            if K::same_status(&current, desired) {
                return Step::Done(true);
            }
            let new = current.clone().with_status_of(desired);
            match self.call(|| api.replace_status(&key.name, &post, &new)).await {
                Ok(_) => {
                    self.stats.replaces += 1;
                    return Step::Done(true);
                }
                Err(e) if api_code(&e) == Some(409) => {
                    self.stats.conflicts += 1;
                    match self.call(|| api.get_opt(&key.name)).await {
                        Ok(Some(c)) if uid_of(&c) == uid_of(&current) => current = c,
                        Ok(_) => return Step::Done(true), // gone or replaced meanwhile
                        Err(e) => return Self::failed(&format!("reading {key}"), &e),
                    }
                }
                Err(e) => return Self::failed(&format!("writing the status of {key}"), &e),
            }
        }
        Step::Transient(format!("{key}: status still conflicting after {} attempts", self.options.conflict_attempts))
    }

    /// Deletes the object `server_uid` under `key` (a UID precondition), then releases the
    /// foreign finalizers that keep it, as their writers would.
    async fn delete<K: Played>(&mut self, api: &Api<K>, key: &ObjectKey, server_uid: &str) -> Step {
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(server_uid.to_string()), resource_version: None }),
            ..DeleteParams::default()
        };
        match self.call(|| api.delete(&key.name, &params)).await {
            Ok(_) => self.stats.deletes += 1,
            // Gone already, or another object holds the name now.
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => return Step::Done(false),
            Err(e) => return Self::failed(&format!("deleting {key}"), &e),
        }
        self.release_finalizers(api, key, server_uid).await
    }

    /// Removes the foreign finalizers of `server_uid` (being deleted) with a merge patch
    /// conditional on the resourceVersion just read (resourceVersions are unique across
    /// objects, so it also guards the UID); the controller's finalizers stay.
    async fn release_finalizers<K: Played>(&mut self, api: &Api<K>, key: &ObjectKey, server_uid: &str) -> Step {
        for _ in 0..self.options.conflict_attempts.max(1) {
            let cur = match self.call(|| api.get_opt(&key.name)).await {
                Ok(Some(c)) if uid_of(&c) == server_uid => c,
                Ok(_) => return Step::Done(true),
                Err(e) => return Self::failed(&format!("reading {key}"), &e),
            };
            let have: Vec<String> = cur.meta().finalizers.clone().unwrap_or_default();
            let kept: Vec<String> = have.iter().filter(|f| is_engine_finalizer(f)).cloned().collect();
            if kept.len() == have.len() {
                return Step::Done(true);
            }
            let patch = json!({"metadata": {"resourceVersion": cur.meta().resource_version, "finalizers": kept}});
            let params = PatchParams::default();
            let patch = Patch::Merge(&patch);
            match self.call(|| api.patch(&key.name, &params, &patch)).await {
                Ok(_) => {
                    self.stats.finalizers_released += (have.len() - kept.len()) as u64;
                    return Step::Done(true);
                }
                Err(e) if api_code(&e) == Some(409) => self.stats.conflicts += 1,
                Err(e) if api_code(&e) == Some(404) => return Step::Done(true),
                Err(e) => return Self::failed(&format!("releasing the finalizers of {key}"), &e),
            }
        }
        Step::Transient(format!("{key}: finalizers still conflicting after {} attempts", self.options.conflict_attempts))
    }
}
