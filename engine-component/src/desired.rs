//! The desired Kubernetes model (ENGINE.md 3.1, `K8sResources.Nodes`): node IP -> pod IP ->
//! [`DesiredPod`], plus an index identity -> {(location, address)} so that stripping or
//! re-marking one identity costs O(k) in its own addresses, never a scan.
//!
//! A pod entry exists only while it carries at least one identity; a node only while it has a
//! pod. Inbound identities come from EndpointSlices; the (at most one) outbound identity and the
//! per-identity address ref-count belong to the egress half.

use crate::identity::Identity;
use crate::idset::{IdSet, VecSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The text of a location or an address, shared: each sits in the node table once and in every
/// index entry and dirty mark of it by reference (issue 15, guest memory).
pub type Text = Arc<str>;

/// A (location, address) key: node IP and pod IP, both canonical.
pub type Key = (Text, Text);

/// The key of `(loc, addr)` with the text `nodes` holds for it, if it holds the entry.
pub(crate) fn held_key<V>(nodes: &BTreeMap<Text, BTreeMap<Text, V>>, loc: &str, addr: &str) -> Option<Key> {
    let (l, pods) = nodes.get_key_value(loc)?;
    let (a, _) = pods.get_key_value(addr)?;
    Some((l.clone(), a.clone()))
}

/// `map.entry(key.to_owned()).or_default()` without allocating the key when it is present.
fn get_or_default<'m, 'q, K, Q, V>(map: &'m mut BTreeMap<K, V>, key: &'q Q) -> &'m mut V
where
    K: Ord + std::borrow::Borrow<Q> + From<&'q Q>,
    Q: Ord + ?Sized,
    V: Default,
{
    if !map.contains_key(key) {
        map.insert(K::from(key), V::default());
    }
    map.get_mut(key).expect("entry just ensured")
}

/// [`held_key`], or a key of its own when `nodes` does not hold the entry.
fn key_in<V>(nodes: &BTreeMap<Text, BTreeMap<Text, V>>, loc: &str, addr: &str) -> Key {
    held_key(nodes, loc, addr).unwrap_or_else(|| (Text::from(loc), Text::from(addr)))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPod {
    pub inbound: IdSet,
    /// `PublicOutboundIdentity` ("" in Go = `None`).
    pub outbound: Option<Identity>,
    /// `OutboundPodKey` ("ns/name") and `OutboundPodUID` of the egress pod owning the address.
    pub outbound_pod_key: Option<String>,
    pub outbound_pod_uid: Option<String>,
}

impl DesiredPod {
    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_none()
    }
    /// Every identity of the address (inbound ones, then the outbound one).
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.inbound.iter().chain(self.outbound.iter())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Desired {
    nodes: BTreeMap<Text, BTreeMap<Text, DesiredPod>>,
    /// Live pod addresses per egress identity (`outboundIdentityPodRefCount`).
    outbound_ref_count: BTreeMap<Identity, u32>,
    #[serde(skip)]
    index: BTreeMap<Identity, BTreeSet<Key>>,
    #[serde(skip)]
    addresses: usize,
    /// Egress identity -> the keys whose outbound identity it is.
    #[serde(skip)]
    outbound_index: BTreeMap<Identity, BTreeSet<Key>>,
    /// Egress pod key (`ns/name`) -> the keys it owns.
    #[serde(skip)]
    by_pod_key: BTreeMap<String, BTreeSet<Key>>,
    /// Pod address -> the locations where it carries an outbound identity.
    #[serde(skip)]
    outbound_by_addr: BTreeMap<Text, VecSet<Text>>,
}

impl Desired {
    pub fn rebuild_index(&mut self) {
        self.index.clear();
        self.addresses = 0;
        self.outbound_index.clear();
        self.by_pod_key.clear();
        self.outbound_by_addr.clear();
        let nodes = std::mem::take(&mut self.nodes);
        for (loc, pods) in &nodes {
            for (addr, pod) in pods {
                self.addresses += 1;
                for id in pod.identities() {
                    self.index.entry(id.clone()).or_default().insert((loc.clone(), addr.clone()));
                }
                if let Some(id) = &pod.outbound {
                    self.outbound_index_add(id, pod.outbound_pod_key.as_deref(), loc, addr);
                }
            }
        }
        self.nodes = nodes;
    }

    fn outbound_index_add(&mut self, id: &Identity, pod_key: Option<&str>, loc: &str, addr: &str) {
        let key = key_in(&self.nodes, loc, addr);
        self.outbound_index.entry(id.clone()).or_default().insert(key.clone());
        if let Some(k) = pod_key.filter(|k| !k.is_empty()) {
            self.by_pod_key.entry(k.to_string()).or_default().insert(key.clone());
        }
        self.outbound_by_addr.entry(key.1.clone()).or_default().insert(key.0);
    }

    fn outbound_index_remove(&mut self, id: &Identity, pod_key: Option<&str>, loc: &str, addr: &str) {
        let key = key_in(&self.nodes, loc, addr);
        if let Some(set) = self.outbound_index.get_mut(id) {
            set.remove(&key);
            if set.is_empty() {
                self.outbound_index.remove(id);
            }
        }
        if let Some(k) = pod_key.filter(|k| !k.is_empty()) {
            if let Some(set) = self.by_pod_key.get_mut(k) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_pod_key.remove(k);
                }
            }
        }
        if let Some(set) = self.outbound_by_addr.get_mut(addr) {
            set.remove(loc);
            if set.is_empty() {
                self.outbound_by_addr.remove(addr);
            }
        }
    }

    fn index_add(&mut self, id: &Identity, loc: &str, addr: &str) {
        let key = key_in(&self.nodes, loc, addr);
        self.index.entry(id.clone()).or_default().insert(key);
    }

    fn index_remove(&mut self, id: &Identity, loc: &str, addr: &str) {
        if let Some(set) = self.index.get_mut(id) {
            set.remove(&key_in(&self.nodes, loc, addr));
            if set.is_empty() {
                self.index.remove(id);
            }
        }
    }

    /// The pod entry at `(loc, addr)`, created (and counted) when absent.
    fn entry<'n>(
        nodes: &'n mut BTreeMap<Text, BTreeMap<Text, DesiredPod>>,
        addresses: &mut usize,
        loc: &str,
        addr: &str,
    ) -> &'n mut DesiredPod {
        let pods = get_or_default(nodes, loc);
        if !pods.contains_key(addr) {
            pods.insert(Text::from(addr), DesiredPod::default());
            *addresses += 1;
        }
        pods.get_mut(addr).expect("entry just ensured")
    }

    /// The key of `(loc, addr)` with the node table's text, if the entry exists.
    pub fn key(&self, loc: &str, addr: &str) -> Option<Key> {
        held_key(&self.nodes, loc, addr)
    }

    /// Removes empty pod/node entries at `key`.
    fn prune(&mut self, loc: &str, addr: &str) {
        if let Some(pods) = self.nodes.get_mut(loc) {
            if pods.get(addr).is_some_and(|p| p.is_empty()) {
                pods.remove(addr);
                self.addresses -= 1;
            }
            if pods.is_empty() {
                self.nodes.remove(loc);
            }
        }
    }

    /// Adds an inbound identity to an address; true if anything changed.
    pub fn add_inbound(&mut self, id: &Identity, loc: &str, addr: &str) -> bool {
        let pod = Self::entry(&mut self.nodes, &mut self.addresses, loc, addr);
        if !pod.inbound.insert(id.clone()) {
            return false;
        }
        self.index_add(id, loc, addr);
        true
    }

    /// Removes an inbound identity from an address; true if anything changed.
    pub fn remove_inbound(&mut self, id: &Identity, loc: &str, addr: &str) -> bool {
        let removed = self.nodes.get_mut(loc).and_then(|p| p.get_mut(addr)).is_some_and(|pod| pod.inbound.remove(id));
        if removed {
            self.index_remove(id, loc, addr);
            self.prune(loc, addr);
        }
        removed
    }

    /// Sets the outbound identity of an address and the pod that owns it. Re-adding the same
    /// identity does not double count (only the owner is refreshed); changing identity
    /// decrements the old one first. True if the identity set of the address changed.
    pub fn set_outbound(&mut self, id: &Identity, loc: &str, addr: &str, pod_key: &str, pod_uid: &str) -> bool {
        let prev = self.nodes.get(loc).and_then(|p| p.get(addr)).map(|p| (p.outbound.clone(), p.outbound_pod_key.clone()));
        if let Some((Some(prev_id), prev_key)) = &prev {
            if prev_id == id {
                self.outbound_index_remove(id, prev_key.as_deref(), loc, addr);
                self.outbound_index_add(id, Some(pod_key), loc, addr);
                if let Some(pod) = self.nodes.get_mut(loc).and_then(|p| p.get_mut(addr)) {
                    pod.outbound_pod_key = Some(pod_key.to_string());
                    pod.outbound_pod_uid = Some(pod_uid.to_string());
                }
                return false;
            }
            self.clear_outbound(loc, addr);
        }
        let pod = Self::entry(&mut self.nodes, &mut self.addresses, loc, addr);
        pod.outbound = Some(id.clone());
        pod.outbound_pod_key = Some(pod_key.to_string());
        pod.outbound_pod_uid = Some(pod_uid.to_string());
        self.index_add(id, loc, addr);
        self.outbound_index_add(id, Some(pod_key), loc, addr);
        let c = self.outbound_ref_count.entry(id.clone()).or_insert(0);
        *c = c.saturating_add(1);
        true
    }

    /// Clears the outbound identity of an address; returns it. Decrementing a missing count is a
    /// no-op; the key is deleted at zero.
    pub fn clear_outbound(&mut self, loc: &str, addr: &str) -> Option<Identity> {
        let pod = self.nodes.get_mut(loc).and_then(|p| p.get_mut(addr))?;
        let id = pod.outbound.take()?;
        let key = pod.outbound_pod_key.take();
        pod.outbound_pod_uid = None;
        self.index_remove(&id, loc, addr);
        self.outbound_index_remove(&id, key.as_deref(), loc, addr);
        self.prune(loc, addr);
        self.decrement_ref(&id);
        Some(id)
    }

    fn decrement_ref(&mut self, id: &Identity) {
        if let Some(c) = self.outbound_ref_count.get_mut(id) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.outbound_ref_count.remove(id);
            }
        }
    }

    pub fn outbound_ref_count(&self, id: &Identity) -> u32 {
        self.outbound_ref_count.get(id).copied().unwrap_or(0)
    }

    /// Removes `id` (inbound or outbound) from every address holding it; returns the keys touched.
    pub fn strip(&mut self, id: &Identity) -> Vec<Key> {
        let keys: Vec<Key> = match self.index.remove(id) {
            Some(set) => set.into_iter().collect(),
            None => return Vec::new(),
        };
        for (loc, addr) in &keys {
            let mut outbound_hit = None;
            if let Some(pod) = self.nodes.get_mut(loc).and_then(|p| p.get_mut(addr)) {
                pod.inbound.remove(id);
                if pod.outbound.as_ref() == Some(id) {
                    pod.outbound = None;
                    outbound_hit = Some(pod.outbound_pod_key.take());
                    pod.outbound_pod_uid = None;
                }
            }
            if let Some(key) = outbound_hit {
                self.outbound_index_remove(id, key.as_deref(), loc, addr);
                self.decrement_ref(id);
            }
            self.prune(loc, addr);
        }
        keys
    }

    pub fn get(&self, loc: &str, addr: &str) -> Option<&DesiredPod> {
        self.nodes.get(loc).and_then(|p| p.get(addr))
    }

    pub fn has_node(&self, loc: &str) -> bool {
        self.nodes.contains_key(loc)
    }

    pub fn nodes(&self) -> &BTreeMap<Text, BTreeMap<Text, DesiredPod>> {
        &self.nodes
    }

    /// The (location, address) keys holding `id`.
    pub fn keys_of(&self, id: &Identity) -> impl Iterator<Item = &Key> {
        self.index.get(id).into_iter().flatten()
    }

    pub fn holds(&self, id: &Identity, loc: &str, addr: &str) -> bool {
        self.get(loc, addr).is_some_and(|p| p.inbound.contains(id) || p.outbound.as_ref() == Some(id))
    }

    pub fn address_count(&self) -> usize {
        self.addresses
    }

    /// The keys whose outbound identity is `id` (live egress pod addresses).
    pub fn outbound_keys_of(&self, id: &Identity) -> impl Iterator<Item = &Key> {
        self.outbound_index.get(id).into_iter().flatten()
    }

    /// Whether any live address carries `id` as its outbound identity.
    pub fn has_outbound(&self, id: &Identity) -> bool {
        self.outbound_index.contains_key(id)
    }

    /// The keys owned by egress pod `pod_key`.
    pub fn keys_of_pod(&self, pod_key: &str) -> impl Iterator<Item = &Key> {
        self.by_pod_key.get(pod_key).into_iter().flatten()
    }

    /// The locations where `addr` carries an outbound identity.
    pub fn outbound_locations_of(&self, addr: &str) -> impl Iterator<Item = &Text> {
        self.outbound_by_addr.get(addr).into_iter().flatten()
    }

    /// Every egress identity with its live address count (`outboundIdentityPodRefCount`).
    pub fn ref_counts(&self) -> &BTreeMap<Identity, u32> {
        &self.outbound_ref_count
    }

    /// Overwrites (or with `None` deletes) one ref-count entry: for tests of the inconsistent
    /// counter paths (ENGINE.md 8.1 step 7).
    pub fn force_ref_count(&mut self, id: &Identity, value: Option<u32>) {
        match value {
            Some(v) => {
                self.outbound_ref_count.insert(id.clone(), v);
            }
            None => {
                self.outbound_ref_count.remove(id);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Inspection: the index and counts equal a fresh rebuild.
    pub fn check_index(&self) -> Result<(), String> {
        let mut fresh = Desired { nodes: self.nodes.clone(), ..Default::default() };
        fresh.rebuild_index();
        if fresh.index != self.index || fresh.addresses != self.addresses {
            return Err("desired index drifted".into());
        }
        if fresh.outbound_index != self.outbound_index
            || fresh.by_pod_key != self.by_pod_key
            || fresh.outbound_by_addr != self.outbound_by_addr
        {
            return Err("desired outbound index drifted".into());
        }
        for pods in self.nodes.values() {
            if pods.is_empty() || pods.values().any(|p| p.is_empty()) {
                return Err("empty desired node or pod kept".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_strip_keep_index_and_prune() {
        let mut d = Desired::default();
        let a = Identity::new("A");
        let b = Identity::new("b");
        assert!(d.add_inbound(&a, "10.0.0.1", "10.1.0.1"));
        assert!(!d.add_inbound(&a, "10.0.0.1", "10.1.0.1"));
        assert!(d.add_inbound(&b, "10.0.0.1", "10.1.0.1"));
        assert!(d.add_inbound(&a, "10.0.0.2", "10.1.0.2"));
        assert_eq!(d.address_count(), 2);
        d.check_index().unwrap();
        let keys = d.strip(&a);
        assert_eq!(keys.len(), 2);
        assert_eq!(d.address_count(), 1);
        assert!(!d.has_node("10.0.0.2"));
        d.check_index().unwrap();
        assert!(d.remove_inbound(&b, "10.0.0.1", "10.1.0.1"));
        assert!(d.is_empty());
        d.check_index().unwrap();
    }

    #[test]
    fn outbound_ref_count_never_double_counts() {
        let mut d = Desired::default();
        let e = Identity::new("egress");
        assert!(d.set_outbound(&e, "n", "p", "ns/a", "u1"));
        assert!(!d.set_outbound(&e, "n", "p", "ns/a", "u1"));
        assert_eq!(d.outbound_ref_count(&e), 1);
        assert_eq!(d.clear_outbound("n", "p"), Some(e.clone()));
        assert_eq!(d.outbound_ref_count(&e), 0);
        assert_eq!(d.clear_outbound("n", "p"), None);
        d.check_index().unwrap();
    }
}
