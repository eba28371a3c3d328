//! `pendingPods` (ENGINE.md 3.4): egress pod addresses waiting for their NAT gateway, per
//! identity, replayed in arrival order once it is created.

use super::compatible;
use crate::engine::Engine;
use crate::identity::Identity;
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

/// The pod buffers of every identity (never an empty one).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct PendingPods(BTreeMap<Identity, PodBuffer>);

impl PendingPods {
    pub(crate) fn get(&self, id: &Identity) -> Option<&PodBuffer> {
        self.0.get(id)
    }
    pub(crate) fn remove(&mut self, id: &Identity) -> Option<PodBuffer> {
        self.0.remove(id)
    }
    /// Whether pods are buffered for `id`.
    pub(crate) fn has_pods(&self, id: &Identity) -> bool {
        self.0.get(id).is_some_and(|b| !b.is_empty())
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Identity, &PodBuffer)> {
        self.0.iter()
    }
    fn push(&mut self, id: &Identity, pod: BufferedPod) {
        self.0.entry(id.clone()).or_default().push(pod);
    }

    /// Takes out the entries of `id`'s buffer whose sequence numbers `pick` returns; a buffer
    /// left empty is dropped.
    pub(crate) fn take(&mut self, id: &Identity, pick: impl Fn(&PodBuffer) -> Vec<u64>) -> Vec<BufferedPod> {
        let Some(buf) = self.0.get_mut(id) else { return Vec::new() };
        let taken = pick(buf).into_iter().filter_map(|s| buf.remove(s)).collect();
        if buf.is_empty() {
            self.0.remove(id);
        }
        taken
    }

    /// Cancels the entries of `id` at (loc, addr) compatible with (key, uid).
    pub(crate) fn cancel(&mut self, id: &Identity, loc: &str, addr: &str, key: &str, uid: &str) -> bool {
        let taken = self.take(id, |buf| {
            buf.at_address(addr)
                .filter(|(_, e)| e.location == loc && compatible(key, &e.pod_key) && compatible(uid, &e.pod_uid))
                .map(|(s, _)| s)
                .collect()
        });
        !taken.is_empty()
    }

    /// Whether (loc, addr) of `id` is buffered for pod `key` under another (non-empty) UID.
    pub(crate) fn held_by_other_uid(&self, id: &Identity, loc: &str, addr: &str, key: &str, uid: &str) -> bool {
        if key.is_empty() || uid.is_empty() {
            return false;
        }
        self.get(id).is_some_and(|b| {
            b.at_address(addr).any(|(_, e)| e.location == loc && e.pod_key == key && !e.pod_uid.is_empty() && e.pod_uid != uid)
        })
    }

    pub(crate) fn rebuild_index(&mut self) {
        for b in self.0.values_mut() {
            b.rebuild_index();
        }
    }
}

impl Engine {
    pub(super) fn buffer_pod(&mut self, id: &Identity, key: &str, uid: &str, loc: &str, addr: &str) {
        let at_ms = self.now_ms;
        self.pending_pods.push(
            id,
            BufferedPod { pod_key: key.to_string(), pod_uid: uid.to_string(), location: loc.to_string(), address: addr.to_string(), at_ms },
        );
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
}
