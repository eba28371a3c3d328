//! The simulated Kubernetes cluster of a replay: in-memory objects with the API server's
//! semantics that matter to the engine.
//!
//! - **Finalizers**: deleting an object that carries finalizers only sets its `deletionTimestamp`
//!   (a MODIFIED event); the object disappears, with its DELETED event, when its last finalizer is
//!   removed.
//! - **resourceVersion**: one cluster-wide counter, bumped by every change (a write that changes
//!   nothing bumps nothing and produces no event, as with the API server).
//! - **UID guards**: every write names the UID it means; a missing object is `NotFound` (except
//!   finalizer removal, which then succeeds, as the WIT `kube` interface says), a same-name object
//!   with another UID is `Replaced`.
//! - **Service status patches**, **recorded Events** (counted by reason), and **garbage
//!   collection** of the EndpointSlices a Service owns when the Service disappears.
//!
//! The trace describes what users and other controllers did. The fields the engine owns are the
//! cluster's, not the trace's: the engine's finalizers and `status.loadBalancer.ingress` are taken
//! from the simulated state, never from the trace (a trace recorded from a real cluster carries
//! the real controller's writes). Foreign finalizers in the trace are kept, and considered
//! released when the trace deletes the object (the recording shows it went away). A trace object
//! that arrives with a `deletionTimestamp` is a deletion. An object re-created under the same name
//! with a new UID while the old one still waits for its finalizers is held back until the old one
//! is gone, as the API server would refuse the create until then.
//!
//! Everything is synchronous and ordered (BTreeMaps): the same inputs give the same events.

use difftracker_engine::io::{
    CallError, CallOutput, ErrorKind, KubeCall, KubeEvent, KubeEventRecord, LoadBalancerIngress, ObjectMeta, ObjectRef,
};
use difftracker_runtime::k8s::{is_engine_finalizer, not_found, replaced, KubeObject, WatchEventType, POD_FINALIZER, SERVICE_FINALIZERS};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// Names one object: kind, namespace (empty for Nodes), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn of(object: &KubeObject) -> ObjectKey {
        ObjectKey { kind: object.kind(), namespace: object.namespace().to_string(), name: object.name().to_string() }
    }
    fn service(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey { kind: "Service", namespace: namespace.into(), name: name.into() }
    }
    pub fn pod(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey { kind: "Pod", namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// What the cluster did, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStats {
    /// Trace events that changed the cluster.
    pub trace_events_applied: u64,
    /// Trace events that changed nothing (a repeat, a DELETED of an object already gone, a
    /// deletion of an older UID).
    pub trace_events_ignored: u64,
    /// Trace events held back until an older same-name object finished deleting.
    pub trace_events_deferred: u64,
    /// Objects removed by the garbage collector (EndpointSlices of a vanished Service).
    pub garbage_collected: u64,
    /// Engine writes by `<call label> <outcome>`, outcome `ok`, `not_found`, `replaced`, `invalid`.
    pub writes: BTreeMap<String, u64>,
}

/// The in-memory cluster.
#[derive(Debug, Default)]
pub struct Cluster {
    objects: BTreeMap<ObjectKey, KubeObject>,
    /// Lower-cased owner (Service) UID -> the EndpointSlices that name it.
    slices_by_owner: BTreeMap<String, BTreeSet<ObjectKey>>,
    deferred: BTreeMap<ObjectKey, VecDeque<(WatchEventType, KubeObject)>>,
    resource_version: u64,
    next_uid: u64,
    outbox: Vec<KubeEvent>,
    event_reasons: BTreeMap<String, u64>,
    events: Vec<KubeEventRecord>,
    stats: ClusterStats,
}

/// The wall-clock rendering of a virtual time: RFC 3339 (second precision, as the API server
/// writes timestamps) from 2025-01-01T00:00:00Z.
pub fn timestamp(now_ms: u64) -> String {
    let secs = now_ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days from 2025-01-01 to a civil date (proleptic Gregorian).
    let (y, m, d) = civil_from_days(days as i64 + days_from_civil(2025, 1, 1));
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn uid_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn set_resource_version(object: &mut KubeObject, rv: &str) {
    if let Some(meta) = object.meta_mut() {
        meta.resource_version = rv.to_string();
    }
}

fn set_uid(object: &mut KubeObject, uid: &str) {
    match object {
        KubeObject::Node(n) => n.uid = uid.to_string(),
        other => {
            if let Some(meta) = other.meta_mut() {
                meta.uid = uid.to_string();
            }
        }
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::default()
    }

    // ------------------------------------------------------------------------------- queries

    pub fn get(&self, key: &ObjectKey) -> Option<&KubeObject> {
        self.objects.get(key)
    }

    /// Every object, ordered by kind, namespace, name.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &KubeObject)> {
        self.objects.iter()
    }

    /// The objects of one kind, in key order.
    fn of_kind<'a, T: 'a>(&'a self, pick: fn(&'a KubeObject) -> Option<&'a T>) -> impl Iterator<Item = &'a T> {
        self.objects.values().filter_map(pick)
    }

    pub fn services(&self) -> impl Iterator<Item = &difftracker_engine::io::Service> {
        self.of_kind(|o| if let KubeObject::Service(s) = o { Some(s) } else { None })
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = &difftracker_engine::io::EndpointSlice> {
        self.of_kind(|o| if let KubeObject::EndpointSlice(s) = o { Some(s) } else { None })
    }

    pub fn nodes(&self) -> impl Iterator<Item = &difftracker_engine::io::Node> {
        self.of_kind(|o| if let KubeObject::Node(n) = o { Some(n) } else { None })
    }

    pub fn pods(&self) -> impl Iterator<Item = &difftracker_engine::io::Pod> {
        self.of_kind(|o| if let KubeObject::Pod(p) = o { Some(p) } else { None })
    }

    /// `status.loadBalancer.ingress` IPs of every Service that has any, by `namespace/name`.
    pub fn service_ingress(&self) -> BTreeMap<String, Vec<String>> {
        super::oracle::ClusterView::service_ingress(self)
    }

    /// Objects being deleted that still wait for a finalizer, as `<kind>/<namespace>/<name>`.
    pub fn stuck_deleting(&self) -> Vec<String> {
        self.objects.iter().filter(|(_, o)| o.meta().is_some_and(|m| m.deletion_timestamp.is_some())).map(|(k, _)| k.to_string()).collect()
    }

    /// Whether a trace event is held back waiting for an older object to go.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Recorded Events by reason.
    pub fn event_reasons(&self) -> &BTreeMap<String, u64> {
        &self.event_reasons
    }

    /// Every recorded Event, in order.
    pub fn recorded_events(&self) -> &[KubeEventRecord] {
        &self.events
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The watch events produced since the last call, in order: what the engine must see next.
    pub fn take_events(&mut self) -> Vec<KubeEvent> {
        std::mem::take(&mut self.outbox)
    }

    pub fn has_events(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// What a starting host delivers to a new engine: every object as an applied event (its
    /// initial lists, in key order), then the marker that the lists are complete. The watch
    /// events produced so far are dropped: the lists carry their result.
    pub fn initial_lists(&mut self) -> Vec<KubeEvent> {
        self.outbox.clear();
        let mut events: Vec<KubeEvent> = self.objects.values().map(KubeObject::applied).collect();
        events.push(KubeEvent::InitialListsComplete);
        events
    }

    // ------------------------------------------------------------------------ trace side

    /// Applies one watch event of the trace at virtual time `now_ms`.
    pub fn apply(&mut self, now_ms: u64, event_type: WatchEventType, object: KubeObject) {
        let key = ObjectKey::of(&object);
        if let Some(queue) = self.deferred.get_mut(&key) {
            let current_uid = self.objects.get(&key).map(|o| o.uid().to_string());
            let for_current = !object.uid().is_empty() && current_uid.is_some_and(|u| uid_eq(&u, object.uid()));
            if !for_current {
                queue.push_back((event_type, object));
                self.stats.trace_events_deferred += 1;
                return;
            }
        }
        let current = self.objects.get(&key);
        let changed = match current {
            Some(cur) if !object.uid().is_empty() && !uid_eq(cur.uid(), object.uid()) && key.kind != "Node" => {
                // Another object of the same name.
                match event_type {
                    WatchEventType::Deleted => false, // an older incarnation: already gone
                    WatchEventType::Added | WatchEventType::Modified => {
                        let deleting = cur.meta().is_some_and(|m| m.deletion_timestamp.is_some());
                        if !deleting {
                            // The trace missed the deletion of the old one: delete it now.
                            self.delete(now_ms, &key);
                        }
                        if self.objects.contains_key(&key) {
                            self.deferred.entry(key).or_default().push_back((event_type, object));
                            self.stats.trace_events_deferred += 1;
                            return;
                        }
                        self.upsert(now_ms, object)
                    }
                }
            }
            Some(_) => match event_type {
                WatchEventType::Deleted => self.delete(now_ms, &key),
                _ => self.upsert(now_ms, object),
            },
            None => match event_type {
                WatchEventType::Deleted => false,
                _ => self.upsert(now_ms, object),
            },
        };
        if changed {
            self.stats.trace_events_applied += 1;
        } else {
            self.stats.trace_events_ignored += 1;
        }
    }

    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn fresh_uid(&mut self) -> String {
        self.next_uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.next_uid)
    }

    /// Creates or updates from a trace object, keeping the fields the engine owns. Returns
    /// whether anything changed.
    fn upsert(&mut self, now_ms: u64, mut incoming: KubeObject) -> bool {
        let key = ObjectKey::of(&incoming);
        let current = self.objects.get(&key).cloned();
        if current.is_none() && incoming.meta().is_some_and(|m| m.deletion_timestamp.is_some()) {
            // First seen already being deleted: the trace missed its life; nothing to create.
            return false;
        }
        if incoming.uid().is_empty() {
            let uid = match &current {
                Some(c) => c.uid().to_string(),
                None => self.fresh_uid(),
            };
            set_uid(&mut incoming, &uid);
        }
        let mut wants_deletion = false;
        if let Some(meta) = incoming.meta_mut() {
            meta.finalizers.retain(|f| !is_engine_finalizer(f));
            if let Some(cur_meta) = current.as_ref().and_then(|c| c.meta()) {
                if cur_meta.deletion_timestamp.is_some() {
                    // No new finalizer on an object being deleted (and the trace's own were
                    // released when it deleted the object).
                    meta.finalizers.clear();
                }
                meta.finalizers.extend(cur_meta.finalizers.iter().filter(|f| is_engine_finalizer(f)).cloned());
                wants_deletion = meta.deletion_timestamp.is_some() && cur_meta.deletion_timestamp.is_none();
                meta.deletion_timestamp = cur_meta.deletion_timestamp.clone();
            } else {
                wants_deletion = meta.deletion_timestamp.is_some();
                meta.deletion_timestamp = None;
            }
        }
        if let KubeObject::Service(s) = &mut incoming {
            s.ingress = match &current {
                Some(KubeObject::Service(c)) => c.ingress.clone(),
                _ => Vec::new(),
            };
        }
        let mut changed = false;
        let same = current.as_ref().is_some_and(|c| {
            let mut probe = incoming.clone();
            set_resource_version(&mut probe, c.meta().map(|m| m.resource_version.as_str()).unwrap_or(""));
            &probe == c
        });
        if !same {
            let rv = self.bump();
            set_resource_version(&mut incoming, &rv);
            self.store(incoming);
            changed = true;
        }
        if wants_deletion {
            changed |= self.delete(now_ms, &key);
        }
        changed
    }

    /// Stores an object (replacing the same key), keeping the owner index, and emits its
    /// applied event.
    fn store(&mut self, object: KubeObject) {
        let key = ObjectKey::of(&object);
        self.unindex(&key);
        if let KubeObject::EndpointSlice(s) = &object {
            for owner in s.owner_references.iter().filter(|o| o.kind == "Service") {
                self.slices_by_owner.entry(owner.uid.to_ascii_lowercase()).or_default().insert(key.clone());
            }
        }
        self.outbox.push(object.applied());
        self.objects.insert(key, object);
    }

    fn unindex(&mut self, key: &ObjectKey) {
        if let Some(KubeObject::EndpointSlice(old)) = self.objects.get(key) {
            let owners: Vec<String> =
                old.owner_references.iter().filter(|o| o.kind == "Service").map(|o| o.uid.to_ascii_lowercase()).collect();
            for owner in owners {
                if let Some(set) = self.slices_by_owner.get_mut(&owner) {
                    set.remove(key);
                    if set.is_empty() {
                        self.slices_by_owner.remove(&owner);
                    }
                }
            }
        }
    }

    /// A deletion request (trace or garbage collector): foreign finalizers are released; with
    /// the engine's finalizers left, the object is marked for deletion, else it goes.
    fn delete(&mut self, now_ms: u64, key: &ObjectKey) -> bool {
        let Some(mut object) = self.objects.get(key).cloned() else { return false };
        let Some(meta) = object.meta_mut() else {
            self.remove(now_ms, key);
            return true;
        };
        meta.finalizers.retain(|f| is_engine_finalizer(f));
        if meta.finalizers.is_empty() {
            self.remove(now_ms, key);
            return true;
        }
        if meta.deletion_timestamp.is_none() {
            meta.deletion_timestamp = Some(timestamp(now_ms));
        }
        if Some(&object) == self.objects.get(key) {
            return false;
        }
        let rv = self.bump();
        set_resource_version(&mut object, &rv);
        self.store(object);
        true
    }

    /// The object goes: DELETED event, garbage collection of its dependents, and any held-back
    /// trace events for its name.
    fn remove(&mut self, now_ms: u64, key: &ObjectKey) {
        self.unindex(key);
        let Some(mut object) = self.objects.remove(key) else { return };
        let rv = self.bump();
        set_resource_version(&mut object, &rv);
        self.outbox.push(object.deleted());
        if let KubeObject::Service(s) = &object {
            let owned = self.slices_by_owner.get(&s.meta.uid.to_ascii_lowercase()).cloned().unwrap_or_default();
            for slice in owned {
                if slice.namespace == key.namespace && self.delete(now_ms, &slice) {
                    self.stats.garbage_collected += 1;
                }
            }
        }
        if let Some(queue) = self.deferred.remove(key) {
            for (event_type, object) in queue {
                self.apply(now_ms, event_type, object);
            }
        }
    }

    // ------------------------------------------------------------------------ engine side

    /// Records a Kubernetes Event the engine emitted.
    pub fn record_event(&mut self, event: KubeEventRecord) {
        *self.event_reasons.entry(event.reason.clone()).or_insert(0) += 1;
        self.events.push(event);
    }

    /// Performs one engine write at virtual time `now_ms`, synchronously.
    pub fn perform(&mut self, now_ms: u64, call: &KubeCall) -> Result<CallOutput, CallError> {
        let result = self.perform_inner(now_ms, call);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.kind {
                ErrorKind::NotFound => "not_found",
                ErrorKind::Replaced => "replaced",
                _ => "invalid",
            },
        };
        *self.stats.writes.entry(format!("{} {outcome}", call.label())).or_insert(0) += 1;
        result
    }

    fn perform_inner(&mut self, now_ms: u64, call: &KubeCall) -> Result<CallOutput, CallError> {
        match call {
            KubeCall::AddServiceFinalizers(target) => {
                self.add_finalizers(now_ms, &ObjectKey::service(&target.namespace, &target.name), target, &SERVICE_FINALIZERS)
            }
            KubeCall::RemoveServiceFinalizers(target) => {
                self.remove_finalizers(now_ms, &ObjectKey::service(&target.namespace, &target.name), target, &SERVICE_FINALIZERS)
            }
            KubeCall::AddPodFinalizer(target) => {
                self.add_finalizers(now_ms, &ObjectKey::pod(&target.namespace, &target.name), target, &[POD_FINALIZER])
            }
            KubeCall::RemovePodFinalizer(target) => {
                self.remove_finalizers(now_ms, &ObjectKey::pod(&target.namespace, &target.name), target, &[POD_FINALIZER])
            }
            KubeCall::PatchServiceIngress(target, ingress) => self.patch_ingress(target, ingress),
        }
    }

    /// The object a write addresses, guarded by UID.
    fn guarded(&self, key: &ObjectKey, target: &ObjectRef) -> Result<Option<&KubeObject>, CallError> {
        match self.objects.get(key) {
            None => Ok(None),
            Some(o) if !uid_eq(o.uid(), &target.uid) => Err(replaced(&key.to_string(), &target.uid, o.uid())),
            Some(o) => Ok(Some(o)),
        }
    }

    fn update_meta(&mut self, key: &ObjectKey, f: impl FnOnce(&mut ObjectMeta)) -> bool {
        let Some(mut object) = self.objects.get(key).cloned() else { return false };
        if let Some(meta) = object.meta_mut() {
            f(meta);
        }
        if Some(&object) == self.objects.get(key) {
            return false;
        }
        let rv = self.bump();
        set_resource_version(&mut object, &rv);
        self.store(object);
        true
    }

    fn add_finalizers(&mut self, _now_ms: u64, key: &ObjectKey, target: &ObjectRef, finalizers: &[&str]) -> Result<CallOutput, CallError> {
        let Some(object) = self.guarded(key, target)? else { return Err(not_found(&key.to_string())) };
        let meta = object.meta().cloned().unwrap_or_default();
        let missing: Vec<String> = finalizers.iter().filter(|f| !meta.finalizers.iter().any(|g| g == *f)).map(|f| f.to_string()).collect();
        if missing.is_empty() {
            return Ok(CallOutput::Done);
        }
        if meta.deletion_timestamp.is_some() {
            return Err(CallError {
                kind: ErrorKind::Http,
                status: 422,
                code: "Invalid".into(),
                message: format!(
                    "{key} is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"
                ),
                retry_after_ms: None,
            });
        }
        self.update_meta(key, |m| m.finalizers.extend(missing));
        Ok(CallOutput::Done)
    }

    fn remove_finalizers(
        &mut self,
        now_ms: u64,
        key: &ObjectKey,
        target: &ObjectRef,
        finalizers: &[&str],
    ) -> Result<CallOutput, CallError> {
        let Some(object) = self.guarded(key, target)? else { return Ok(CallOutput::Done) };
        let meta = object.meta().cloned().unwrap_or_default();
        if !meta.finalizers.iter().any(|f| finalizers.contains(&f.as_str())) {
            return Ok(CallOutput::Done);
        }
        let remaining: Vec<String> = meta.finalizers.iter().filter(|f| !finalizers.contains(&f.as_str())).cloned().collect();
        if meta.deletion_timestamp.is_some() && !remaining.iter().any(|f| is_engine_finalizer(f)) {
            // Foreign finalizers were released when the trace deleted the object.
            self.remove(now_ms, key);
        } else {
            self.update_meta(key, |m| m.finalizers = remaining);
        }
        Ok(CallOutput::Done)
    }

    fn patch_ingress(&mut self, target: &ObjectRef, ingress: &[LoadBalancerIngress]) -> Result<CallOutput, CallError> {
        let key = ObjectKey::service(&target.namespace, &target.name);
        let Some(object) = self.guarded(&key, target)? else { return Err(not_found(&key.to_string())) };
        let KubeObject::Service(svc) = object else { return Err(not_found(&key.to_string())) };
        if svc.ingress == ingress {
            return Ok(CallOutput::Done);
        }
        let mut svc = svc.clone();
        svc.ingress = ingress.to_vec();
        svc.meta.resource_version = self.bump();
        self.store(KubeObject::Service(svc));
        Ok(CallOutput::Done)
    }
}

#[cfg(test)]
mod tests;
