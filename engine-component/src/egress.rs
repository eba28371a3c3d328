//! The egress half of the state machine (ENGINE.md 3.4-3.6, 4.2 outbound rows, 8.1-8.3): pod
//! addresses per egress identity, the buffer of pods waiting for their NAT gateway, pending
//! pod-deletion records, and the entry points `AddPodWithUID`, `DeletePod`,
//! `DeletePodForReplacement`, `DeletePodWithoutAddresses` and `CheckPendingPodDeletions`.
//!
//! Every lookup an entry point needs is indexed (live addresses by pod key and by address in
//! [`crate::desired::Desired`], NRP addresses by address in [`crate::nrp::NrpMirror`], buffered
//! pods by address and pod key in [`PodBuffer`], records by identity here), so one call costs
//! O(size of the pod or identity it touches), never a scan of every pod.

use crate::config::{ServiceConfig, ServiceKind};
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{IpVersion, ObjectRef};
use crate::state::ResourceState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An egress pod address waiting for its NAT gateway (`pendingPods` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferedPod {
    pub pod_key: String,
    pub pod_uid: String,
    pub location: String,
    pub address: String,
    pub at_ms: u64,
}

/// `pendingPods[identity]`: buffered pod addresses in arrival order, indexed by address and by
/// pod key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodBuffer {
    next_seq: u64,
    entries: BTreeMap<u64, BufferedPod>,
    #[serde(skip)]
    by_addr: BTreeMap<String, BTreeSet<u64>>,
    #[serde(skip)]
    by_key: BTreeMap<String, BTreeSet<u64>>,
}

impl PartialEq for PodBuffer {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl PodBuffer {
    pub fn rebuild_index(&mut self) {
        self.by_addr.clear();
        self.by_key.clear();
        let entries = std::mem::take(&mut self.entries);
        for (seq, e) in &entries {
            self.index(*seq, e);
        }
        self.entries = entries;
    }

    fn index(&mut self, seq: u64, e: &BufferedPod) {
        self.by_addr.entry(e.address.clone()).or_default().insert(seq);
        self.by_key.entry(e.pod_key.clone()).or_default().insert(seq);
    }

    pub fn push(&mut self, e: BufferedPod) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.index(seq, &e);
        self.entries.insert(seq, e);
    }

    pub fn remove(&mut self, seq: u64) -> Option<BufferedPod> {
        let e = self.entries.remove(&seq)?;
        for (map, k) in [(&mut self.by_addr, &e.address), (&mut self.by_key, &e.pod_key)] {
            if let Some(set) = map.get_mut(k) {
                set.remove(&seq);
                if set.is_empty() {
                    map.remove(k);
                }
            }
        }
        Some(e)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Entries in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &BufferedPod> {
        self.entries.values()
    }
    /// Entries buffered for `addr`, in arrival order.
    pub fn at_address(&self, addr: &str) -> impl Iterator<Item = (u64, &BufferedPod)> {
        self.by_addr.get(addr).into_iter().flatten().filter_map(|s| self.entries.get(s).map(|e| (*s, e)))
    }
    /// Entries buffered for pod `key`, in arrival order.
    pub fn of_pod(&self, key: &str) -> impl Iterator<Item = (u64, &BufferedPod)> {
        self.by_key.get(key).into_iter().flatten().filter_map(|s| self.entries.get(s).map(|e| (*s, e)))
    }

    pub fn check_index(&self) -> Result<(), String> {
        let mut fresh = PodBuffer { next_seq: self.next_seq, entries: self.entries.clone(), ..Default::default() };
        fresh.rebuild_index();
        if fresh.by_addr != self.by_addr || fresh.by_key != self.by_key {
            return Err("pod buffer index drifted".into());
        }
        Ok(())
    }
}

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

/// What the informer may do with the pod's cleanup finalizer after a delete. The empty value
/// (`Reject`) means "do not release": only an explicit `ReleaseNoDrain` authorises an inline
/// removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinalizerDecision {
    Reject,
    HoldForServiceDeletion,
    HoldForDrain,
    ReleaseNoDrain,
}

/// `DeletePodResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletePodResult {
    pub is_last_pod: bool,
    pub enqueued: bool,
    pub decision: FinalizerDecision,
}

impl DeletePodResult {
    fn rejected() -> Self {
        DeletePodResult { is_last_pod: false, enqueued: false, decision: FinalizerDecision::Reject }
    }
    fn decide(is_last_pod: bool, enqueued: bool) -> Self {
        let decision = if is_last_pod {
            FinalizerDecision::HoldForServiceDeletion
        } else if enqueued {
            FinalizerDecision::HoldForDrain
        } else {
            FinalizerDecision::ReleaseNoDrain
        };
        DeletePodResult { is_last_pod, enqueued, decision }
    }
}

/// Empty means wildcard.
fn compatible(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || a == b
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

impl Engine {
    // ------------------------------------------------------------------ inspection

    /// The pods buffered for `id` (arrival order).
    pub fn buffered_pods(&self, id: &Identity) -> Vec<&BufferedPod> {
        self.pending_pods.get(id).map(|b| b.iter().collect()).unwrap_or_default()
    }
    pub fn pod_deletion(&self, pod_key: &str) -> Option<&PodDeletionRecord> {
        self.pending_pod_deletions.get(pod_key)
    }
    pub fn pod_deletions(&self) -> &BTreeMap<String, PodDeletionRecord> {
        &self.pending_pod_deletions
    }
    /// `outboundIdentityPodRefCount[id]`.
    pub fn pod_ref_count(&self, id: &Identity) -> u32 {
        self.desired.outbound_ref_count(id)
    }
    /// The cached answer of the cluster IPv6 decision (only a positive answer is cached).
    pub fn cluster_ipv6_cached(&self) -> bool {
        self.cluster_has_ipv6
    }

    // ------------------------------------------------------------------ records

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
        self.pod_records.add(key, &rec);
        self.pending_pod_deletions.insert(key.to_string(), rec);
        self.pod_check_candidates.insert(key.to_string());
    }

    pub(crate) fn remove_pod_record(&mut self, key: &str) -> Option<PodDeletionRecord> {
        let rec = self.pending_pod_deletions.remove(key)?;
        self.pod_records.remove(key, &rec);
        self.pod_check_candidates.remove(key);
        Some(rec)
    }

    /// Drops the record of `key` when its UID is compatible with `uid`; its addresses that may
    /// still be mapped go to the pod's shadow (no record covers them any more).
    fn drop_compatible_record(&mut self, key: &str, uid: &str) {
        if self.pending_pod_deletions.get(key).is_some_and(|r| compatible(uid, &r.uid)) {
            if let Some(rec) = self.remove_pod_record(key) {
                let mut pairs: Vec<(Identity, String)> = rec.addresses.iter().map(|a| (rec.service_uid.clone(), a.clone())).collect();
                pairs.extend(rec.other_addresses);
                self.shadow_pairs(key, &rec.uid, pairs);
            }
        }
    }

    /// Compare-and-delete on the recorded UID.
    pub(crate) fn remove_pod_record_if_uid(&mut self, key: &str, uid: &str) -> Option<PodDeletionRecord> {
        if self.pending_pod_deletions.get(key).is_some_and(|r| r.uid == uid) {
            return self.remove_pod_record(key);
        }
        None
    }

    /// Record keys of identity `id`.
    pub(crate) fn pod_record_keys(&self, id: &Identity) -> Vec<String> {
        self.pod_records.by_id.get(id).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    pub(crate) fn has_last_pod_record(&self, id: &Identity) -> bool {
        self.pod_records.by_id.get(id).into_iter().flatten().any(|k| self.pending_pod_deletions.get(k).is_some_and(|r| r.is_last_pod))
    }

    /// After a sync removed NRP references: the records listing one of the removed (identity,
    /// address) pairs, and the service-level verifications of the identities touched, are
    /// looked at by the next CheckPendingPodDeletions.
    pub(crate) fn note_pod_record_candidates(&mut self, ids: &BTreeSet<Identity>, pairs: &BTreeSet<(Identity, String)>) {
        for p in pairs {
            if let Some(keys) = self.pod_records.by_addr.get(p) {
                self.pod_check_candidates.extend(keys.iter().cloned());
            }
        }
        for id in ids {
            if let Some(keys) = self.pod_records.verify.get(id) {
                self.pod_check_candidates.extend(keys.iter().cloned());
            }
        }
    }

    // ------------------------------------------------------------------ helpers

    /// The NAT gateway's public IP families, decided once per creation (2.6): IPv4, plus IPv6
    /// when any node has a genuine IPv6 InternalIP. A positive answer is cached for good.
    pub(crate) fn outbound_ip_families(&mut self) -> Vec<IpVersion> {
        if !self.cluster_has_ipv6 && self.endpoints.cluster_has_ipv6() {
            self.cluster_has_ipv6 = true;
        }
        if self.cluster_has_ipv6 {
            vec![IpVersion::V4, IpVersion::V6]
        } else {
            vec![IpVersion::V4]
        }
    }

    /// An egress identity that would ride a tracked inbound op (kind collision).
    fn collides_with_inbound(&self, id: &Identity) -> bool {
        self.ops.get(id).is_some_and(|o| o.kind() == ServiceKind::Inbound)
    }

    fn has_live_or_buffered(&self, id: &Identity) -> bool {
        self.desired.has_outbound(id) || self.pending_pods.get(id).is_some_and(|b| !b.is_empty())
    }

    fn may_have_reached_nrp(&self, id: &Identity) -> bool {
        self.ops.get(id).is_some_and(|o| o.state != ResourceState::NotStarted) || self.nrp.has_nat_gateway(id) || self.may_have_nrp_addresses(id)
    }

    fn live_outbound_is(&self, id: &Identity, loc: &str, addr: &str) -> bool {
        self.desired.get(loc, addr).is_some_and(|p| p.outbound.as_ref() == Some(id))
    }

    fn apply_pod_live(&mut self, id: &Identity, key: &str, uid: &str, loc: &str, addr: &str) {
        if self.desired.set_outbound(id, loc, addr, key, uid) {
            self.mark_dirty(loc, addr);
        }
        // A live address may back an NRP address a service-level verification waits on.
        if let Some(keys) = self.pod_records.verify.get(id) {
            self.pod_check_candidates.extend(keys.iter().cloned());
        }
    }

    fn buffer_pod(&mut self, id: &Identity, key: &str, uid: &str, loc: &str, addr: &str) {
        let at_ms = self.now_ms;
        self.pending_pods.entry(id.clone()).or_default().push(BufferedPod {
            pod_key: key.to_string(),
            pod_uid: uid.to_string(),
            location: loc.to_string(),
            address: addr.to_string(),
            at_ms,
        });
    }

    /// `promotePendingPodsLocked`: applies the buffered pods in arrival order.
    pub(crate) fn replay_pods(&mut self, id: &Identity) {
        let Some(buf) = self.pending_pods.remove(id) else { return };
        for p in buf.iter() {
            if self.desired.set_outbound(id, &p.location, &p.address, &p.pod_key, &p.pod_uid) {
                self.mark_dirty(&p.location, &p.address);
            }
        }
        self.trigger_location_sync();
    }

    // ------------------------------------------------------------------ AddPod

    /// `AddPodWithUID(identity, "ns/name", podUID, location, address)` (4.2 outbound rows).
    pub fn add_pod(&mut self, id: &Identity, pod_key: &str, pod_uid: &str, loc: &str, addr: &str) {
        if id.is_empty() || loc.is_empty() || addr.is_empty() || id.is_reserved() || self.collides_with_inbound(id) {
            return;
        }
        // A pod reaching AddPod is live: a stale record must not strip its finalizer.
        self.drop_compatible_record(pod_key, pod_uid);
        let Some(op) = self.ops.get(id) else {
            if self.nrp.has_nat_gateway(id) {
                self.apply_pod_live(id, pod_key, pod_uid, loc, addr);
                self.trigger_location_sync();
                return;
            }
            let families = self.outbound_ip_families();
            let trig = pod_key.split_once('/').map(|(ns, n)| (ns.to_string(), n.to_string())).unwrap_or((pod_key.to_string(), String::new()));
            let mut op = self.new_op(ServiceConfig::outbound(id.clone(), families, Some(trig.clone())), ResourceState::NotStarted);
            op.triggering_pod = Some(trig);
            self.insert_op(id, op);
            self.buffer_pod(id, pod_key, pod_uid, loc, addr);
            self.trigger_dispatch(id);
            return;
        };
        match op.state {
            ResourceState::NotStarted | ResourceState::CreationInProgress | ResourceState::DeletionInProgress => {
                self.buffer_pod(id, pod_key, pod_uid, loc, addr);
            }
            ResourceState::Created | ResourceState::UpdateInProgress => {
                self.apply_pod_live(id, pod_key, pod_uid, loc, addr);
                self.trigger_location_sync();
            }
            ResourceState::DeletionPending => {
                // A delete that was already attempted is not transactional (resources may be
                // gone); a create/update still in flight is pre-empted into the delete. Both
                // finish first and re-create with the buffered pod.
                if op.retry_count > 0 || op.in_flight_config.is_some() || self.dispatcher.is_active(id) {
                    self.buffer_pod(id, pod_key, pod_uid, loc, addr);
                    return;
                }
                // Revive.
                self.update_op(id, |op| op.state = ResourceState::Created);
                self.remove_pending_deletion(id);
                for key in self.pod_record_keys(id) {
                    if let Some(r) = self.pending_pod_deletions.get_mut(&key) {
                        if r.is_last_pod {
                            r.is_last_pod = false;
                            self.pod_check_candidates.insert(key);
                        }
                    }
                }
                self.apply_pod_live(id, pod_key, pod_uid, loc, addr);
                self.trigger_location_sync();
            }
            ResourceState::Unknown(_) => {}
        }
    }

    // ------------------------------------------------------------------ DeletePod

    /// `DeletePod(identity, hintLocation, addresses, ns, name, uid)` (8.1).
    pub fn delete_pod(&mut self, id: &Identity, hint: &str, addresses: &[String], ns: &str, name: &str, uid: &str) -> DeletePodResult {
        self.delete_pod_inner(id, hint, addresses, ns, name, uid, false)
    }

    /// `DeletePodForReplacement`: drains a live pod's leaving addresses without ever scheduling
    /// the NAT gateway's deletion in the drain/add gap.
    pub fn delete_pod_for_replacement(&mut self, id: &Identity, hint: &str, addresses: &[String], ns: &str, name: &str, uid: &str) -> DeletePodResult {
        self.delete_pod_inner(id, hint, addresses, ns, name, uid, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn delete_pod_inner(&mut self, id: &Identity, hint: &str, addresses: &[String], ns: &str, name: &str, uid: &str, replacement: bool) -> DeletePodResult {
        if id.is_empty() || hint.is_empty() || addresses.is_empty() || id.is_reserved() || self.collides_with_inbound(id) {
            return DeletePodResult::rejected();
        }
        let key = if !ns.is_empty() && !name.is_empty() { format!("{ns}/{name}") } else { String::new() };
        let mut drained: Vec<String> = Vec::new();
        let mut trigger = false;
        for addr in addresses.iter().filter(|a| !a.is_empty()) {
            let loc = self.resolve_outbound_location(id, hint, addr);
            let may = self.may_have_reached_nrp(id);
            if self.cancel_buffered(id, &loc, addr, &key, uid) {
                // A teardown scheduled for a possibly half-created NAT holds the finalizer too.
                let scheduled = self.handle_empty_outbound(id);
                if may || scheduled {
                    push_unique(&mut drained, addr);
                    trigger = true;
                }
                continue;
            }
            if self.buffered_by_other_uid(id, &loc, addr, &key, uid) {
                continue;
            }
            if !self.live_outbound_is(id, &loc, addr) {
                if self.nrp.maps_address_to(id, addr) {
                    push_unique(&mut drained, addr);
                    trigger = true;
                }
                continue;
            }
            let owned = self.desired.get(&loc, addr).is_some_and(|p| {
                compatible(&key, p.outbound_pod_key.as_deref().unwrap_or("")) && compatible(uid, p.outbound_pod_uid.as_deref().unwrap_or(""))
            });
            if !owned {
                continue;
            }
            // A missing or non-positive ref-count still removes and still drain-gates.
            self.desired.clear_outbound(&loc, addr);
            self.mark_dirty(&loc, addr);
            push_unique(&mut drained, addr);
            trigger = true;
        }
        let mut is_last = false;
        if !drained.is_empty() && !replacement && !self.has_live_or_buffered(id) {
            is_last = true;
            self.mark_outbound_for_deletion(id);
        }
        let mut enqueued = false;
        if !key.is_empty() {
            if !drained.is_empty() {
                let recovered = self.pending_pod_deletions.get(&key).is_some_and(|r| compatible(uid, &r.uid) && r.recovered_at_startup);
                let rec = PodDeletionRecord {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    uid: uid.to_string(),
                    service_uid: id.clone(),
                    addresses: drained,
                    other_addresses: Vec::new(),
                    verify_service_drain: false,
                    is_last_pod: is_last,
                    recovered_at_startup: recovered,
                    at_ms: self.now_ms,
                };
                self.put_pod_record(&key, rec);
                enqueued = true;
            } else if self.pending_pod_deletions.get(&key).is_some_and(|r| compatible(uid, &r.uid)) {
                enqueued = true;
            }
        }
        if trigger {
            self.trigger_location_sync();
        }
        DeletePodResult::decide(is_last, enqueued)
    }

    /// The location `addr` is live (or buffered) under for `id`; the hint otherwise.
    fn resolve_outbound_location(&self, id: &Identity, hint: &str, addr: &str) -> String {
        if self.live_outbound_is(id, hint, addr) {
            return hint.to_string();
        }
        if let Some(loc) = self.desired.outbound_locations_of(addr).find(|loc| self.live_outbound_is(id, loc, addr)) {
            return loc.clone();
        }
        if let Some((_, e)) = self.pending_pods.get(id).and_then(|b| b.at_address(addr).next()) {
            return e.location.clone();
        }
        hint.to_string()
    }

    /// Cancels the buffered entries at (loc, addr) compatible with (key, uid).
    fn cancel_buffered(&mut self, id: &Identity, loc: &str, addr: &str, key: &str, uid: &str) -> bool {
        let Some(buf) = self.pending_pods.get_mut(id) else { return false };
        let seqs: Vec<u64> = buf
            .at_address(addr)
            .filter(|(_, e)| e.location == loc && compatible(key, &e.pod_key) && compatible(uid, &e.pod_uid))
            .map(|(s, _)| s)
            .collect();
        for s in &seqs {
            buf.remove(*s);
        }
        if buf.is_empty() {
            self.pending_pods.remove(id);
        }
        !seqs.is_empty()
    }

    fn buffered_by_other_uid(&self, id: &Identity, loc: &str, addr: &str, key: &str, uid: &str) -> bool {
        if key.is_empty() || uid.is_empty() {
            return false;
        }
        self.pending_pods
            .get(id)
            .is_some_and(|b| b.at_address(addr).any(|(_, e)| e.location == loc && e.pod_key == key && !e.pod_uid.is_empty() && e.pod_uid != uid))
    }

    /// `markOutboundServiceForDeletionLocked`: the last pod is gone.
    pub(crate) fn mark_outbound_for_deletion(&mut self, id: &Identity) {
        if id.is_reserved() {
            return;
        }
        match self.ops.get(id).map(|o| o.state) {
            None => {
                let op = self.new_op(ServiceConfig::bare(id.clone(), ServiceKind::Outbound, ObjectRef::default()), ResourceState::DeletionPending);
                self.insert_op(id, op);
            }
            // Never demoted: a revive would race the running delete.
            Some(ResourceState::DeletionInProgress) | Some(ResourceState::Unknown(_)) => return,
            Some(_) => {
                self.update_op(id, |op| op.state = ResourceState::DeletionPending);
            }
        }
        self.add_pending_deletion(id, false);
    }

    /// `handleEmptyOutboundServiceLocked`: after a buffered pod was cancelled. Returns true when
    /// an Azure cleanup is scheduled or running (the pod's finalizer must be held).
    pub(crate) fn handle_empty_outbound(&mut self, id: &Identity) -> bool {
        if self.pending_pods.get(id).is_some_and(|b| !b.is_empty()) || self.desired.outbound_ref_count(id) > 0 || self.desired.has_outbound(id) {
            return false;
        }
        let Some(op) = self.ops.get(id) else { return false };
        if op.kind() != ServiceKind::Outbound {
            return false;
        }
        match op.state {
            ResourceState::NotStarted => {
                if op.retry_count > 0 || op.creation_failed_terminal {
                    // A failed create may have left a public IP or NAT gateway behind.
                    self.update_op(id, |op| op.state = ResourceState::DeletionInProgress);
                    self.add_pending_deletion(id, false);
                    self.trigger_dispatch(id);
                    return true;
                }
                // Never attempted: nothing exists in Azure.
                self.remove_op(id);
                self.drop_buffers(id);
                self.pending_pods.remove(id);
                self.remove_pending_deletion(id);
                false
            }
            ResourceState::CreationInProgress => {
                // The create completion pre-empts into the delete.
                self.update_op(id, |op| op.state = ResourceState::DeletionInProgress);
                self.add_pending_deletion(id, false);
                true
            }
            ResourceState::DeletionInProgress => true,
            _ => false,
        }
    }

    // ------------------------------------------------------------------ DeletePodWithoutAddresses

    /// `DeletePodWithoutAddresses(identity, ns, name, uid)` (8.2): a terminating pod seen
    /// without IPs.
    pub fn delete_pod_without_addresses(&mut self, id: &Identity, ns: &str, name: &str, uid: &str) -> DeletePodResult {
        if id.is_empty() || ns.is_empty() || name.is_empty() || id.is_reserved() || self.collides_with_inbound(id) {
            return DeletePodResult::rejected();
        }
        let key = format!("{ns}/{name}");
        if let Some(r) = self.pending_pod_deletions.get(&key).filter(|r| compatible(uid, &r.uid)) {
            return DeletePodResult::decide(r.is_last_pod, true);
        }
        let replacement = self.pod_key_owned_by_other_uid(id, &key, uid);
        let mut may = self.may_have_reached_nrp(id);

        let mut addresses: Vec<String> = Vec::new();
        let mut removed_any = false;
        if let Some(buf) = self.pending_pods.get_mut(id) {
            let seqs: Vec<u64> = buf.of_pod(&key).filter(|(_, e)| compatible(uid, &e.pod_uid)).map(|(s, _)| s).collect();
            for s in seqs {
                if let Some(e) = buf.remove(s) {
                    push_unique(&mut addresses, &e.address);
                    removed_any = true;
                }
            }
            if buf.is_empty() {
                self.pending_pods.remove(id);
            }
        }
        let live: Vec<(String, String)> = self
            .desired
            .keys_of_pod(&key)
            .filter(|(l, a)| {
                self.desired
                    .get(l, a)
                    .is_some_and(|p| p.outbound.as_ref() == Some(id) && compatible(uid, p.outbound_pod_uid.as_deref().unwrap_or("")))
            })
            .cloned()
            .collect();
        for (loc, addr) in live {
            self.desired.clear_outbound(&loc, &addr);
            self.mark_dirty(&loc, &addr);
            push_unique(&mut addresses, &addr);
            removed_any = true;
        }
        if removed_any {
            may |= self.handle_empty_outbound(id);
            if replacement {
                if may {
                    self.trigger_location_sync();
                }
                return DeletePodResult::decide(false, false);
            }
            if !may {
                return DeletePodResult::decide(false, false);
            }
        }
        if replacement || !may {
            return DeletePodResult::decide(false, false);
        }
        let is_last = !self.has_live_or_buffered(id);
        if is_last {
            self.mark_outbound_for_deletion(id);
        }
        let rec = PodDeletionRecord {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            service_uid: id.clone(),
            verify_service_drain: addresses.is_empty(),
            addresses,
            other_addresses: Vec::new(),
            is_last_pod: is_last,
            recovered_at_startup: false,
            at_ms: self.now_ms,
        };
        self.put_pod_record(&key, rec);
        self.trigger_location_sync();
        DeletePodResult::decide(is_last, true)
    }

    /// A live or buffered address of `id` owned by `key` under another (non-empty) UID.
    fn pod_key_owned_by_other_uid(&self, id: &Identity, key: &str, uid: &str) -> bool {
        if key.is_empty() || uid.is_empty() {
            return false;
        }
        let live = self.desired.keys_of_pod(key).any(|(l, a)| {
            self.desired.get(l, a).is_some_and(|p| p.outbound.as_ref() == Some(id) && p.outbound_pod_uid.as_deref().is_some_and(|u| !u.is_empty() && u != uid))
        });
        live || self.pending_pods.get(id).is_some_and(|b| b.of_pod(key).any(|(_, e)| !e.pod_uid.is_empty() && e.pod_uid != uid))
    }

    // ------------------------------------------------------------------ CheckPendingPodDeletions

    /// Whether a non-last record may release its finalizer now.
    pub(crate) fn pod_record_drained(&self, rec: &PodDeletionRecord) -> bool {
        let id = &rec.service_uid;
        if rec.verify_service_drain {
            let buf = self.pending_pods.get(id);
            return !self.nrp.keys_of(id).any(|(loc, addr)| {
                let backed = self.live_outbound_is(id, loc, addr) || buf.is_some_and(|b| b.at_address(addr).any(|(_, e)| &e.location == loc));
                !backed
            });
        }
        !rec.addresses.iter().any(|a| self.nrp.maps_address_to(id, a)) && !rec.other_addresses.iter().any(|(i, a)| self.nrp.maps_address_to(i, a))
    }

    /// `CheckPendingPodDeletions` (8.3), run after every LocationsUpdater pass: every drained
    /// non-last record gets its finalizer removal started (the completion drops the record).
    /// Only records whose state may have changed are looked at.
    pub fn check_pending_pod_deletions(&mut self) {
        let candidates = std::mem::take(&mut self.pod_check_candidates);
        for key in candidates {
            let Some(rec) = self.pending_pod_deletions.get(&key) else { continue };
            if rec.is_last_pod || self.pod_busy.contains(&key) {
                // Last pods wait for the NAT gateway delete; a busy key is re-checked when its
                // call completes.
                continue;
            }
            if !self.pod_record_drained(rec) {
                continue;
            }
            let target = rec.target();
            self.queue_pod_call(&key, target, crate::pods::PodCallKind::RemoveForRecord);
        }
    }

    /// Egress consistency (O(state); tests only): derived indexes equal a rebuild, every busy pod
    /// has an outstanding call, nothing reserved is tracked.
    pub(crate) fn check_egress_invariants(&self) -> Result<(), String> {
        for (id, b) in &self.pending_pods {
            b.check_index()?;
            if b.is_empty() {
                return Err(format!("empty pod buffer kept for {id}"));
            }
        }
        let mut fresh = RecordIndex::default();
        for (k, r) in &self.pending_pod_deletions {
            fresh.add(k, r);
            if r.service_uid.is_reserved() {
                return Err(format!("record {k} for the reserved identity"));
            }
        }
        if fresh != self.pod_records {
            return Err("pod record index drifted".into());
        }
        for key in &self.pod_busy {
            let queued = self.pod_queue.iter().any(|c| &c.key == key);
            let flying = self.pod_calls.values().any(|c| &c.key == key);
            let worker = self.dispatcher.active.values().any(|a| a.finalizer_target.as_ref().is_some_and(|(k, _)| k == key));
            if !(queued || flying || worker) {
                return Err(format!("pod {key} busy without an outstanding call"));
            }
        }
        for c in self.pod_queue.iter().chain(self.pod_calls.values()) {
            if !self.pod_busy.contains(&c.key) {
                return Err(format!("pod call for {} without the busy mark", c.key));
            }
        }
        if self.ops.iter().any(|(id, _)| id.is_reserved()) || self.nrp.has_nat_gateway(&Identity::new(crate::identity::RESERVED_IDENTITY)) {
            return Err("the reserved identity is tracked".into());
        }
        Ok(())
    }
}
