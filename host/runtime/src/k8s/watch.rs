//! The live cluster as the engine's input: Services, EndpointSlices, Nodes and egress Pods
//! (those carrying [`EGRESS_LABEL`], ENGINE.md 2.4) watched through kube-runtime's watcher over
//! a [`kube::Client`], delivered as batches of [`KubeEvent`]s that a tenant's tick loop consumes
//! ([`crate::tenant::TenantHandle::deliver`] takes exactly such a batch).
//!
//! What the engine is promised (ENGINE.md 9):
//! - **Start-up**: the initial lists of all four kinds as applied events, then ONE
//!   [`KubeEvent::InitialListsComplete`], sent only once every kind's list is in. A watch event of a
//!   kind that is already listed while another kind still lists is folded into the start-up
//!   picture (it changes what is delivered as applied), so the marker really separates the
//!   cluster at start-up from what happened after.
//! - **Then** the watch streams as applied/deleted events. An applied event equal to what the
//!   engine already has (same object, same resourceVersion) is not sent again; a Service replaced
//!   under the same name arrives as the old one deleted, then the new one applied.
//! - **Relists**: kube-runtime's watcher resumes a dropped watch from the last resourceVersion
//!   (and bookmark), reconnects with backoff ([`kube::runtime::watcher::DefaultBackoff`]) and, on
//!   `410 Gone`, lists again. The list is buffered until it is complete, then compared with what
//!   the engine saw of that kind: objects gone during the gap become deleted events, new and
//!   changed ones applied events, unchanged ones nothing. A restarted watch therefore never
//!   makes the engine see an object twice, and never start a cloud call twice.
//!
//! What is bounded: the batches queued for the consumer ([`WatchOptions::queued_batches`], the
//! watch streams are not read while it is full), the events of one batch
//! ([`WatchOptions::max_batch`]; a start-up or relist diff is split), and the objects of one kind
//! kept for the diff and one relist buffer ([`WatchOptions::max_objects_per_kind`]: past it the
//! watch stops with an error instead of growing, see [`ClusterWatch::failure`]). The list pages
//! are [`WatchOptions::page_size`] objects.

use super::convert::{endpoint_slice_from_k8s, node_from_k8s, pod_from_k8s, service_from_k8s, KubeObject};
use super::EGRESS_LABEL;
use difftracker_engine::io::KubeEvent;
use futures_util::stream::{self, BoxStream, StreamExt};
use futures_util::FutureExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The bounds and knobs of a [`ClusterWatch`].
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Batches queued for the consumer before the watches wait; 64.
    pub queued_batches: usize,
    /// Events in one batch; 1000.
    pub max_batch: usize,
    /// Objects of one kind kept (what the engine saw, and one relist); 200 000.
    pub max_objects_per_kind: usize,
    /// Objects of one list page; 500.
    pub page_size: u32,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { queued_batches: 64, max_batch: 1000, max_objects_per_kind: 200_000, page_size: 500 }
    }
}

/// What a [`ClusterWatch`] has done, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Lists completed after the initial one (after a `410 Gone` or a failed list), per kind.
    pub relists: BTreeMap<&'static str, u64>,
    /// Errors the watcher reported (each followed by a backoff), per kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Events sent to the consumer.
    pub events_sent: u64,
    /// Batches sent to the consumer.
    pub batches_sent: u64,
    /// Set when the marker was sent.
    pub initial_lists_complete: bool,
}

/// The four kinds watched, in the order their initial lists are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WatchedKind {
    Node = 0,
    Service = 1,
    EndpointSlice = 2,
    Pod = 3,
}

impl WatchedKind {
    pub const ALL: [WatchedKind; 4] = [WatchedKind::Node, WatchedKind::Service, WatchedKind::EndpointSlice, WatchedKind::Pod];

    pub fn as_str(self) -> &'static str {
        match self {
            WatchedKind::Node => "Node",
            WatchedKind::Service => "Service",
            WatchedKind::EndpointSlice => "EndpointSlice",
            WatchedKind::Pod => "Pod",
        }
    }
}

/// A running watch of the cluster; dropping it stops the watches.
pub struct ClusterWatch {
    batches: mpsc::Receiver<Vec<KubeEvent>>,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    stats: WatchStats,
    failure: Option<String>,
}

impl ClusterWatch {
    /// Starts watching the cluster `client` points at (inside a tokio runtime).
    pub fn start(client: Client, options: WatchOptions) -> ClusterWatch {
        let page = options.page_size.max(1);
        let config = watcher::Config::default().page_size(page);
        let streams: Vec<BoxStream<'static, Item>> = vec![
            kind_stream(Api::<core::Node>::all(client.clone()), config.clone(), WatchedKind::Node, |n| KubeObject::Node(node_from_k8s(n))),
            kind_stream(Api::<core::Service>::all(client.clone()), config.clone(), WatchedKind::Service, |s| {
                KubeObject::Service(service_from_k8s(s))
            }),
            kind_stream(Api::<discovery::EndpointSlice>::all(client.clone()), config.clone(), WatchedKind::EndpointSlice, |s| {
                KubeObject::EndpointSlice(endpoint_slice_from_k8s(s))
            }),
            kind_stream(Api::<core::Pod>::all(client), config.labels(EGRESS_LABEL), WatchedKind::Pod, |p| KubeObject::Pod(pod_from_k8s(p))),
        ];
        Self::from_streams(streams, options)
    }

    /// The watch over any four streams of watcher events (tests feed their own).
    fn from_streams(streams: Vec<BoxStream<'static, Item>>, options: WatchOptions) -> ClusterWatch {
        let (tx, rx) = mpsc::channel(options.queued_batches.max(1));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(run(stream::select_all(streams), Merger::new(options), tx, shared.clone()));
        ClusterWatch { batches: rx, shared, task }
    }

    /// The next batch; `None` once the watch has stopped (see [`ClusterWatch::failure`]).
    pub async fn next_batch(&mut self) -> Option<Vec<KubeEvent>> {
        self.batches.recv().await
    }

    /// A batch if one is ready, without waiting (for a loop that ticks on its own clock).
    pub fn try_next_batch(&mut self) -> Option<Vec<KubeEvent>> {
        self.batches.try_recv().ok()
    }

    pub fn stats(&self) -> WatchStats {
        lock(&self.shared).stats.clone()
    }

    /// Why the watch stopped, when it stopped on its own.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared).failure.clone()
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Item = (WatchedKind, Result<Event<KubeObject>, String>);

fn kind_stream<K>(api: Api<K>, config: watcher::Config, kind: WatchedKind, convert: fn(&K) -> KubeObject) -> BoxStream<'static, Item>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config)
        .default_backoff()
        .map(move |r| {
            let mapped = match r {
                Ok(Event::Apply(o)) => Ok(Event::Apply(convert(&o))),
                Ok(Event::Delete(o)) => Ok(Event::Delete(convert(&o))),
                Ok(Event::Init) => Ok(Event::Init),
                Ok(Event::InitApply(o)) => Ok(Event::InitApply(convert(&o))),
                Ok(Event::InitDone) => Ok(Event::InitDone),
                Err(e) => Err(e.to_string()),
            };
            (kind, mapped)
        })
        .boxed()
}

async fn run(
    mut events: stream::SelectAll<BoxStream<'static, Item>>,
    mut merger: Merger,
    tx: mpsc::Sender<Vec<KubeEvent>>,
    shared: Arc<Mutex<Shared>>,
) {
    let max_batch = merger.options.max_batch.max(1);
    while let Some(first) = events.next().await {
        let mut out = Vec::new();
        let mut item = Some(first);
        // Take what is ready at once into one batch, up to its bound.
        while let Some((kind, event)) = item.take() {
            match event {
                Ok(e) => {
                    if let Err(reason) = merger.on_event(kind, e, &mut out) {
                        tracing::error!(kind = kind.as_str(), "Kubernetes watch stopped: {reason}");
                        lock(&shared).failure = Some(reason);
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = kind.as_str(), "Kubernetes watch error (retried with backoff): {e}");
                    *lock(&shared).stats.errors.entry(kind.as_str()).or_insert(0) += 1;
                }
            }
            if out.len() >= max_batch {
                break;
            }
            item = events.next().now_or_never().flatten();
        }
        {
            let mut s = lock(&shared);
            s.stats.relists = merger.relists.clone();
            s.stats.initial_lists_complete = merger.marker_sent;
        }
        while !out.is_empty() {
            let rest = if out.len() > max_batch { out.split_off(max_batch) } else { Vec::new() };
            let n = out.len() as u64;
            if tx.send(std::mem::replace(&mut out, rest)).await.is_err() {
                return; // the consumer is gone
            }
            let mut s = lock(&shared);
            s.stats.events_sent += n;
            s.stats.batches_sent += 1;
        }
    }
}

type Key = (String, String);

fn key_of(o: &KubeObject) -> Key {
    (o.namespace().to_string(), o.name().to_string())
}

/// What the engine has seen of each kind, and the relists under way: turns watcher events into
/// engine events (pure; the tests of this module drive it directly).
struct Merger {
    options: WatchOptions,
    /// Before the marker: the start-up picture; after: what the engine has been sent.
    seen: [BTreeMap<Key, KubeObject>; 4],
    /// A list under way (from `Init` to `InitDone`).
    listing: [Option<BTreeMap<Key, KubeObject>>; 4],
    listed: [bool; 4],
    marker_sent: bool,
    relists: BTreeMap<&'static str, u64>,
}

impl Merger {
    fn new(options: WatchOptions) -> Merger {
        Merger {
            options,
            seen: Default::default(),
            listing: Default::default(),
            listed: [false; 4],
            marker_sent: false,
            relists: BTreeMap::new(),
        }
    }

    fn too_many(&self, kind: WatchedKind, n: usize) -> Result<(), String> {
        if n > self.options.max_objects_per_kind {
            return Err(format!(
                "more than {} {} objects (WatchOptions::max_objects_per_kind)",
                self.options.max_objects_per_kind,
                kind.as_str()
            ));
        }
        Ok(())
    }

    fn on_event(&mut self, kind: WatchedKind, event: Event<KubeObject>, out: &mut Vec<KubeEvent>) -> Result<(), String> {
        let k = kind as usize;
        match event {
            Event::Init => self.listing[k] = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                let listing = self.listing[k].get_or_insert_with(BTreeMap::new);
                listing.insert(key_of(&o), o);
                let n = listing.len();
                self.too_many(kind, n)?;
            }
            Event::InitDone => {
                let listed = self.listing[k].take().unwrap_or_default();
                if self.listed[k] {
                    *self.relists.entry(kind.as_str()).or_insert(0) += 1;
                }
                self.listed[k] = true;
                if self.marker_sent {
                    diff(&self.seen[k], &listed, out);
                }
                self.seen[k] = listed;
                if !self.marker_sent && self.listed.iter().all(|l| *l) {
                    for seen in &self.seen {
                        out.extend(seen.values().map(KubeObject::applied));
                    }
                    out.push(KubeEvent::InitialListsComplete);
                    self.marker_sent = true;
                }
            }
            Event::Apply(o) => {
                let key = key_of(&o);
                let seen = &mut self.seen[k];
                match seen.get(&key) {
                    Some(cur) if *cur == o => return Ok(()),
                    Some(cur) if self.marker_sent && !cur.uid().eq_ignore_ascii_case(o.uid()) => out.push(cur.deleted()),
                    _ => {}
                }
                if self.marker_sent {
                    out.push(o.applied());
                }
                seen.insert(key, o);
                let n = seen.len();
                self.too_many(kind, n)?;
            }
            Event::Delete(o) => {
                let key = key_of(&o);
                let seen = &mut self.seen[k];
                // Only the incarnation the engine has; an older one is already gone.
                if seen.get(&key).is_some_and(|cur| cur.uid().eq_ignore_ascii_case(o.uid())) {
                    seen.remove(&key);
                    if self.marker_sent {
                        out.push(o.deleted());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The events that take the engine from `before` to `after` (one kind): deletions first (a
/// replaced object's old incarnation included), then what is new or changed.
fn diff(before: &BTreeMap<Key, KubeObject>, after: &BTreeMap<Key, KubeObject>, out: &mut Vec<KubeEvent>) {
    for (key, old) in before {
        match after.get(key) {
            None => out.push(old.deleted()),
            Some(new) if !new.uid().eq_ignore_ascii_case(old.uid()) => out.push(old.deleted()),
            Some(_) => {}
        }
    }
    for (key, new) in after {
        if before.get(key) != Some(new) {
            out.push(new.applied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use difftracker_engine::io::{Node, ObjectMeta, Service};

    fn svc(name: &str, uid: &str, rv: &str) -> KubeObject {
        KubeObject::Service(Service {
            meta: ObjectMeta {
                namespace: "default".into(),
                name: name.into(),
                uid: uid.into(),
                resource_version: rv.into(),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn node(name: &str) -> KubeObject {
        KubeObject::Node(Node { name: name.into(), uid: format!("uid-{name}"), ..Default::default() })
    }

    fn labels(events: &[KubeEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                KubeEvent::ServiceApplied(s) => format!("+svc {} {}", s.meta.name, s.meta.resource_version),
                KubeEvent::ServiceDeleted(s) => format!("-svc {} {}", s.meta.name, s.meta.uid),
                KubeEvent::NodeApplied(n) => format!("+node {}", n.name),
                KubeEvent::NodeDeleted(n) => format!("-node {}", n.name),
                KubeEvent::InitialListsComplete => "marker".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn list(m: &mut Merger, kind: WatchedKind, objects: Vec<KubeObject>, out: &mut Vec<KubeEvent>) {
        m.on_event(kind, Event::Init, out).unwrap();
        for o in objects {
            m.on_event(kind, Event::InitApply(o), out).unwrap();
        }
        m.on_event(kind, Event::InitDone, out).unwrap();
    }

    #[test]
    fn the_marker_waits_for_all_four_lists_and_folds_early_watch_events_in() {
        let mut m = Merger::new(WatchOptions::default());
        let mut out = Vec::new();
        list(&mut m, WatchedKind::Service, vec![svc("a", "1", "5"), svc("b", "2", "6")], &mut out);
        list(&mut m, WatchedKind::Node, vec![node("n1")], &mut out);
        m.on_event(WatchedKind::Service, Event::Apply(svc("a", "1", "7")), &mut out).unwrap();
        m.on_event(WatchedKind::Service, Event::Delete(svc("b", "2", "8")), &mut out).unwrap();
        list(&mut m, WatchedKind::EndpointSlice, vec![], &mut out);
        assert!(out.is_empty(), "nothing before every list is in: {:?}", labels(&out));
        list(&mut m, WatchedKind::Pod, vec![], &mut out);
        assert_eq!(labels(&out), ["+node n1", "+svc a 7", "marker"]);
        out.clear();
        m.on_event(WatchedKind::Service, Event::Apply(svc("a", "1", "7")), &mut out).unwrap();
        assert!(out.is_empty(), "an applied event the engine already has is not sent again");
        m.on_event(WatchedKind::Service, Event::Apply(svc("a", "9", "10")), &mut out).unwrap();
        assert_eq!(labels(&out), ["-svc a 1", "+svc a 10"], "a replaced Service: the old one deleted first");
    }

    #[test]
    fn a_relist_sends_only_the_differences() {
        let mut m = Merger::new(WatchOptions::default());
        let mut out = Vec::new();
        for kind in WatchedKind::ALL {
            let objects =
                if kind == WatchedKind::Service { vec![svc("a", "1", "5"), svc("b", "2", "6"), svc("c", "3", "7")] } else { vec![] };
            list(&mut m, kind, objects, &mut out);
        }
        out.clear();
        list(&mut m, WatchedKind::Service, vec![svc("a", "1", "5"), svc("c", "33", "9"), svc("d", "4", "10")], &mut out);
        assert_eq!(labels(&out), ["-svc b 2", "-svc c 3", "+svc c 9", "+svc d 10"]);
        out.clear();
        list(&mut m, WatchedKind::Service, vec![svc("a", "1", "5"), svc("c", "33", "9"), svc("d", "4", "10")], &mut out);
        assert!(out.is_empty(), "an unchanged relist sends nothing: {:?}", labels(&out));
        assert_eq!(m.relists.get("Service"), Some(&2));
    }

    #[test]
    fn more_objects_than_the_bound_stop_the_watch() {
        let mut m = Merger::new(WatchOptions { max_objects_per_kind: 2, ..Default::default() });
        let mut out = Vec::new();
        m.on_event(WatchedKind::Service, Event::Init, &mut out).unwrap();
        m.on_event(WatchedKind::Service, Event::InitApply(svc("a", "1", "1")), &mut out).unwrap();
        m.on_event(WatchedKind::Service, Event::InitApply(svc("b", "2", "2")), &mut out).unwrap();
        assert!(m.on_event(WatchedKind::Service, Event::InitApply(svc("c", "3", "3")), &mut out).is_err());
    }

    #[tokio::test]
    async fn batches_are_bounded_and_the_marker_comes_last() {
        let mut streams: Vec<BoxStream<'static, Item>> = Vec::new();
        for kind in WatchedKind::ALL {
            let mut items: Vec<Item> = vec![(kind, Ok(Event::Init))];
            if kind == WatchedKind::Service {
                items.extend((0..5).map(|i| (kind, Ok(Event::InitApply(svc(&format!("s{i}"), &i.to_string(), "1"))))));
            }
            items.push((kind, Ok(Event::InitDone)));
            streams.push(stream::iter(items).chain(stream::pending()).boxed());
        }
        let mut watch = ClusterWatch::from_streams(streams, WatchOptions { max_batch: 2, ..Default::default() });
        let mut all = Vec::new();
        while !all.contains(&KubeEvent::InitialListsComplete) {
            let batch = watch.next_batch().await.unwrap();
            assert!(batch.len() <= 2, "{}", batch.len());
            all.extend(batch);
        }
        assert_eq!(all.len(), 6);
        assert_eq!(all.last(), Some(&KubeEvent::InitialListsComplete));
    }
}
