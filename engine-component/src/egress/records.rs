//! `pendingPodDeletions` (ENGINE.md 3.5, 8.3): pods whose cleanup finalizer waits for a drain
//! (non-last) or for their NAT gateway's deletion (last pod), with the indexes that find them,
//! the shadows of addresses drained without a record, and `CheckPendingPodDeletions`.

use super::compatible;
use super::pod_calls::PodCallKind;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::ObjectRef;
use crate::metrics;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A `pendingPodDeletions` record: a pod whose cleanup finalizer may only be removed after its
/// addresses left NRP (non-last) or after its NAT gateway was deleted (last pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDeletionRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The egress identity the addresses belonged to ("" for a finalizer-only retry record of
    /// an unlabelled pod).
    pub service_uid: Identity,
    /// Drained pod addresses (canonical, deduplicated).
    pub addresses: Vec<String>,
    /// Addresses under other identities the pod left without a record (a live re-registration
    /// moved it) that may still be mapped: they gate the finalizer too.
    #[serde(default)]
    pub other_addresses: Vec<(Identity, String)>,
    /// No address known: wait until NRP holds no address of the identity that no live or
    /// buffered pod backs.
    pub verify_service_drain: bool,
    pub is_last_pod: bool,
    pub recovered_at_startup: bool,
    pub at_ms: u64,
}

impl PodDeletionRecord {
    /// A record of `pod`'s drained `addresses` under `service_uid`: not a last pod, not
    /// recovered at startup, nothing else gating it. The builders below set the rest.
    pub fn new(pod: ObjectRef, service_uid: Identity, addresses: Vec<String>, at_ms: u64) -> PodDeletionRecord {
        PodDeletionRecord {
            namespace: pod.namespace,
            name: pod.name,
            uid: pod.uid,
            service_uid,
            addresses,
            other_addresses: Vec::new(),
            verify_service_drain: false,
            is_last_pod: false,
            recovered_at_startup: false,
            at_ms,
        }
    }
    pub fn last_pod(mut self, is_last_pod: bool) -> PodDeletionRecord {
        self.is_last_pod = is_last_pod;
        self
    }
    pub fn recovered(mut self, recovered_at_startup: bool) -> PodDeletionRecord {
        self.recovered_at_startup = recovered_at_startup;
        self
    }
    pub fn verify_service_drain(mut self, verify: bool) -> PodDeletionRecord {
        self.verify_service_drain = verify;
        self
    }
    pub fn target(&self) -> ObjectRef {
        ObjectRef { namespace: self.namespace.clone(), name: self.name.clone(), uid: self.uid.clone() }
    }
}

/// Derived indexes of the pending pod-deletion records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordIndex {
    /// Identity -> record keys.
    pub by_id: BTreeMap<Identity, BTreeSet<String>>,
    /// (identity, address) -> record keys listing that address.
    pub by_addr: BTreeMap<(Identity, String), BTreeSet<String>>,
    /// Identity -> record keys verifying at service level.
    pub verify: BTreeMap<Identity, BTreeSet<String>>,
}

fn index_insert<K: Ord + Clone>(map: &mut BTreeMap<K, BTreeSet<String>>, k: &K, key: &str) {
    map.entry(k.clone()).or_default().insert(key.to_string());
}

fn index_remove<K: Ord>(map: &mut BTreeMap<K, BTreeSet<String>>, k: &K, key: &str) {
    if let Some(set) = map.get_mut(k) {
        set.remove(key);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

impl RecordIndex {
    pub fn add(&mut self, key: &str, r: &PodDeletionRecord) {
        index_insert(&mut self.by_id, &r.service_uid, key);
        for a in &r.addresses {
            index_insert(&mut self.by_addr, &(r.service_uid.clone(), a.clone()), key);
        }
        for p in &r.other_addresses {
            index_insert(&mut self.by_addr, p, key);
        }
        if r.verify_service_drain {
            index_insert(&mut self.verify, &r.service_uid, key);
        }
    }
    pub fn remove(&mut self, key: &str, r: &PodDeletionRecord) {
        index_remove(&mut self.by_id, &r.service_uid, key);
        for a in &r.addresses {
            index_remove(&mut self.by_addr, &(r.service_uid.clone(), a.clone()), key);
        }
        for p in &r.other_addresses {
            index_remove(&mut self.by_addr, p, key);
        }
        if r.verify_service_drain {
            index_remove(&mut self.verify, &r.service_uid, key);
        }
    }
}

/// The records by pod key, their indexes (derived) and the keys to look at next.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DeletionRecords {
    #[serde(rename = "pending_pod_deletions")]
    records: BTreeMap<String, PodDeletionRecord>,
    /// Records whose readiness may have changed since the last CheckPendingPodDeletions.
    #[serde(rename = "pod_check_candidates", default)]
    pub(crate) candidates: BTreeSet<String>,
    #[serde(skip)]
    index: RecordIndex,
}

impl DeletionRecords {
    pub(crate) fn get(&self, key: &str) -> Option<&PodDeletionRecord> {
        self.records.get(key)
    }
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.records.contains_key(key)
    }
    pub(crate) fn all(&self) -> &BTreeMap<String, PodDeletionRecord> {
        &self.records
    }
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// Stores a record (replacing none: the caller removed any earlier one) and marks it for the
    /// next check.
    fn insert(&mut self, key: &str, rec: PodDeletionRecord) {
        self.index.add(key, &rec);
        self.records.insert(key.to_string(), rec);
        self.candidates.insert(key.to_string());
    }
    fn remove(&mut self, key: &str) -> Option<PodDeletionRecord> {
        let rec = self.records.remove(key)?;
        self.index.remove(key, &rec);
        self.candidates.remove(key);
        Some(rec)
    }
    /// Makes a last-pod record an ordinary drain record (`is_last_pod` is not indexed). Returns
    /// whether it was a last-pod record.
    pub(crate) fn clear_last_pod(&mut self, key: &str) -> bool {
        match self.records.get_mut(key) {
            Some(r) if r.is_last_pod => {
                r.is_last_pod = false;
                true
            }
            _ => false,
        }
    }
    /// Record keys of identity `id`.
    pub(crate) fn keys_of(&self, id: &Identity) -> Vec<String> {
        self.index.by_id.get(id).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
    pub(crate) fn has_last_pod(&self, id: &Identity) -> bool {
        self.index.by_id.get(id).into_iter().flatten().any(|k| self.records.get(k).is_some_and(|r| r.is_last_pod))
    }
    /// The service-level verifications of `id` are looked at by the next check.
    pub(crate) fn recheck_verifications(&mut self, id: &Identity) {
        if let Some(keys) = self.index.verify.get(id) {
            self.candidates.extend(keys.iter().cloned());
        }
    }
    pub(crate) fn rebuild_index(&mut self) {
        self.index = RecordIndex::default();
        for (k, r) in &self.records {
            self.index.add(k, r);
        }
    }
    pub(crate) fn check_index(&self) -> Result<(), String> {
        let mut fresh = RecordIndex::default();
        for (k, r) in &self.records {
            fresh.add(k, r);
            if r.service_uid.is_reserved() {
                return Err(format!("record {k} for the reserved identity"));
            }
        }
        if fresh != self.index {
            return Err("pod record index drifted".into());
        }
        Ok(())
    }
}

/// Per pod key: (UID, addresses) a replacement drain took from the live pod without a record,
/// while they may still be mapped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Shadows(BTreeMap<String, (String, Vec<(Identity, String)>)>);

impl Shadows {
    /// Adds pairs to the pod's shadow; a shadow of another UID is replaced.
    fn add(&mut self, key: &str, uid: &str, pairs: Vec<(Identity, String)>) {
        let entry = self.0.entry(key.to_string()).or_insert_with(|| (uid.to_string(), Vec::new()));
        if entry.0 != uid {
            *entry = (uid.to_string(), Vec::new());
        }
        for pair in pairs {
            if !entry.1.contains(&pair) {
                entry.1.push(pair);
            }
        }
    }
    fn take(&mut self, key: &str) -> Option<(String, Vec<(Identity, String)>)> {
        self.0.remove(key)
    }
    fn put(&mut self, key: &str, uid: &str, pairs: Vec<(Identity, String)>) {
        self.0.insert(key.to_string(), (uid.to_string(), pairs));
    }
    /// The pod is gone: nothing of it is left to protect.
    pub(crate) fn forget(&mut self, key: &str) {
        self.0.remove(key);
    }
}

impl Engine {
    /// Stores a record. Addresses an earlier record of the same pod, or a replacement drain
    /// (the pod's shadow), took without a covering record and that may still be mapped are
    /// carried into `other_addresses`: the finalizer waits for them too.
    pub(crate) fn put_pod_record(&mut self, key: &str, mut rec: PodDeletionRecord) {
        let mut carried: Vec<(Identity, String)> = Vec::new();
        if let Some(old) = self.remove_pod_record(key) {
            if compatible(&old.uid, &rec.uid) {
                carried.extend(old.addresses.iter().map(|a| (old.service_uid.clone(), a.clone())));
                carried.extend(old.other_addresses);
            }
        }
        let (suid, pending) = self.take_shadow(key);
        if compatible(&suid, &rec.uid) {
            carried.extend(pending);
        }
        for (i, a) in carried {
            let own = i == rec.service_uid && rec.addresses.contains(&a);
            if !own && !rec.other_addresses.contains(&(i.clone(), a.clone())) && self.may_map(&i, &a) {
                rec.other_addresses.push((i, a));
            }
        }
        self.egress.records.insert(key, rec);
    }

    pub(crate) fn remove_pod_record(&mut self, key: &str) -> Option<PodDeletionRecord> {
        self.egress.records.remove(key)
    }

    /// Drops the record of `key` when its UID is compatible with `uid`; its addresses that may
    /// still be mapped go to the pod's shadow (no record covers them any more).
    pub(super) fn drop_compatible_record(&mut self, key: &str, uid: &str) {
        if self.egress.records.get(key).is_some_and(|r| compatible(uid, &r.uid)) {
            if let Some(rec) = self.remove_pod_record(key) {
                let mut pairs: Vec<(Identity, String)> = rec.addresses.iter().map(|a| (rec.service_uid.clone(), a.clone())).collect();
                pairs.extend(rec.other_addresses);
                self.shadow_pairs(key, &rec.uid, pairs);
            }
        }
    }

    /// Compare-and-delete on the recorded UID.
    pub(crate) fn remove_pod_record_if_uid(&mut self, key: &str, uid: &str) -> Option<PodDeletionRecord> {
        if self.egress.records.get(key).is_some_and(|r| r.uid == uid) {
            return self.remove_pod_record(key);
        }
        None
    }

    /// After a sync removed NRP references: the records listing one of the removed (identity,
    /// address) pairs, and the service-level verifications of the identities touched, are
    /// looked at by the next CheckPendingPodDeletions.
    pub(crate) fn note_pod_record_candidates(&mut self, ids: &BTreeSet<Identity>, pairs: &BTreeSet<(Identity, String)>) {
        let records = &mut self.egress.records;
        for p in pairs {
            if let Some(keys) = records.index.by_addr.get(p) {
                records.candidates.extend(keys.iter().cloned());
            }
        }
        for id in ids {
            records.recheck_verifications(id);
        }
    }

    /// The record's finalizer is gone (or the pod is): compare-and-delete on the UID.
    pub(crate) fn finish_record(&mut self, key: &str, uid: &str) {
        if let Some(rec) = self.remove_pod_record_if_uid(key, uid) {
            if rec.recovered_at_startup {
                self.metrics.inc(metrics::FINALIZERS_RECOVERED_TOTAL, &[]);
            }
        }
    }

    /// `enqueuePodFinalizerRetry`: a finalizer-only record, retried by the next pass.
    pub(super) fn enqueue_pod_finalizer_retry(&mut self, key: &str, target: &ObjectRef, identity: &Identity) {
        if self.egress.records.get(key).is_some_and(|r| r.uid.is_empty() || target.uid.is_empty() || r.uid == target.uid) {
            self.egress.records.candidates.insert(key.to_string());
        } else {
            let rec = PodDeletionRecord::new(target.clone(), identity.clone(), Vec::new(), self.now_ms);
            self.put_pod_record(key, rec);
        }
        self.trigger_location_sync();
    }

    /// Remembers addresses a replacement drain took from a live pod without a record.
    pub(super) fn shadow_drained(&mut self, key: &str, uid: &str, id: &Identity, addrs: &[String]) {
        let pairs = addrs.iter().map(|a| (id.clone(), a.clone())).collect();
        self.shadow_pairs(key, uid, pairs);
    }

    /// Adds (identity, address) pairs to the pod's shadow; keeps only those that may be mapped.
    pub(crate) fn shadow_pairs(&mut self, key: &str, uid: &str, pairs: Vec<(Identity, String)>) {
        self.egress.shadows.add(key, uid, pairs);
        self.prune_shadow(key);
    }

    /// Removes the pod's shadow, returning (UID, pairs that may still be mapped).
    pub(crate) fn take_shadow(&mut self, key: &str) -> (String, Vec<(Identity, String)>) {
        let r = self.prune_shadow(key);
        self.egress.shadows.forget(key);
        r
    }

    /// Drops the shadow addresses that can no longer be mapped; returns those that may.
    pub(super) fn prune_shadow(&mut self, key: &str) -> (String, Vec<(Identity, String)>) {
        let Some((uid, pairs)) = self.egress.shadows.take(key) else { return (String::new(), Vec::new()) };
        let pending: Vec<(Identity, String)> = pairs.into_iter().filter(|(id, a)| self.may_map(id, a)).collect();
        if !pending.is_empty() {
            self.egress.shadows.put(key, &uid, pending.clone());
        }
        (uid, pending)
    }

    /// Whether a non-last record may release its finalizer now.
    pub(crate) fn pod_record_drained(&self, rec: &PodDeletionRecord) -> bool {
        let id = &rec.service_uid;
        if rec.verify_service_drain {
            let buf = self.pending_pods.get(id);
            return !self.nrp.keys_of(id).any(|(loc, addr)| {
                let backed =
                    self.live_outbound_is(id, loc, addr) || buf.is_some_and(|b| b.at_address(addr).any(|(_, e)| *e.location == **loc));
                !backed
            });
        }
        !rec.addresses.iter().any(|a| self.nrp.maps_address_to(id, a))
            && !rec.other_addresses.iter().any(|(i, a)| self.nrp.maps_address_to(i, a))
    }

    /// `CheckPendingPodDeletions` (8.3), run after every LocationsUpdater pass: every drained
    /// non-last record gets its finalizer removal started (the completion drops the record).
    /// Only records whose state may have changed are looked at.
    pub fn check_pending_pod_deletions(&mut self) {
        let candidates = std::mem::take(&mut self.egress.records.candidates);
        for key in candidates {
            let Some(rec) = self.egress.records.get(&key) else { continue };
            if rec.is_last_pod || self.egress.calls.busy.contains(&key) {
                // Last pods wait for the NAT gateway delete; a busy key is re-checked when its
                // call completes.
                continue;
            }
            if !self.pod_record_drained(rec) {
                continue;
            }
            let target = rec.target();
            self.queue_pod_call(&key, target, PodCallKind::RemoveForRecord);
        }
    }
}
