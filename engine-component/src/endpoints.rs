//! EndpointSlices and Nodes (ENGINE.md 2.3, 2.5): the slice cache, the slice -> address mapping,
//! and the node InternalIP table used to place each pod address under its same-family node IP.
//!
//! Indexes by owner (for seeding a service from the cache) and by node name (for moving a node's
//! endpoints when its IPs change) keep every event O(size of what it touches).

use crate::identity::{family, parse_ip, pick_same_family, Family, Identity};
use crate::idset::VecSet;
use crate::io::{EndpointSlice, Node};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Pod address (canonical) -> location (canonical node IP).
pub type EndpointMap = BTreeMap<String, String>;

/// Lower-cased `namespace/name` cache key.
pub fn slice_key(slice: &EndpointSlice) -> String {
    format!("{}/{}", slice.meta.namespace, slice.meta.name).to_ascii_lowercase()
}

/// First `ownerReferences` entry of kind Service.
pub fn owner_of(slice: &EndpointSlice) -> Option<Identity> {
    slice.owner_references.iter().find(|o| o.kind == "Service").map(|o| Identity::new(&o.uid)).filter(|id| !id.is_empty())
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointCache {
    /// By [`slice_key`], shared with the indexes below (each slice's key sits in them once per
    /// node it has endpoints on).
    slices: BTreeMap<Arc<str>, EndpointSlice>,
    /// Node name -> InternalIPs, in API order.
    nodes: BTreeMap<String, Vec<String>>,
    #[serde(skip)]
    by_owner: BTreeMap<Identity, VecSet<Arc<str>>>,
    #[serde(skip)]
    by_node: BTreeMap<String, BTreeSet<Arc<str>>>,
    /// Nodes with an IPv6 InternalIP (IPv4-mapped forms do not count).
    #[serde(skip)]
    v6_nodes: BTreeSet<String>,
}

/// Whether a node InternalIP is a genuine IPv6 address (not an IPv4-mapped one).
pub fn is_real_ipv6(raw: &str) -> bool {
    match parse_ip(raw) {
        Some(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().is_none(),
        _ => false,
    }
}

impl EndpointCache {
    pub fn rebuild_index(&mut self) {
        self.by_owner.clear();
        self.by_node.clear();
        self.v6_nodes = self.nodes.iter().filter(|(_, ips)| ips.iter().any(|ip| is_real_ipv6(ip))).map(|(n, _)| n.clone()).collect();
        let slices = std::mem::take(&mut self.slices);
        for (key, s) in &slices {
            self.index(key, s);
        }
        self.slices = slices;
    }

    fn index(&mut self, key: &Arc<str>, s: &EndpointSlice) {
        if let Some(owner) = owner_of(s) {
            self.by_owner.entry(owner).or_default().insert(key.clone());
        }
        for ep in &s.endpoints {
            if let Some(n) = &ep.node_name {
                // Endpoints of a slice mostly share nodes: allocate only for a new (node, slice).
                let set = self.by_node.entry(n.clone()).or_default();
                if !set.contains(key) {
                    set.insert(key.clone());
                }
            }
        }
    }

    fn unindex(&mut self, key: &str, s: &EndpointSlice) {
        if let Some(owner) = owner_of(s) {
            if let Some(set) = self.by_owner.get_mut(&owner) {
                set.remove(key);
                if set.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
        for ep in &s.endpoints {
            if let Some(n) = &ep.node_name {
                if let Some(set) = self.by_node.get_mut(n) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_node.remove(n);
                    }
                }
            }
        }
    }

    /// Stores a slice (replacing the previous version, which is returned).
    pub fn put_slice(&mut self, slice: EndpointSlice) -> Option<EndpointSlice> {
        let key: Arc<str> = Arc::from(slice_key(&slice));
        let old = self.slices.remove(&key);
        if let Some(o) = &old {
            self.unindex(&key, o);
        }
        self.index(&key, &slice);
        self.slices.insert(key, slice);
        old
    }

    pub fn remove_slice(&mut self, key: &str) -> Option<EndpointSlice> {
        let old = self.slices.remove(key)?;
        self.unindex(key, &old);
        Some(old)
    }

    /// Stores a node's InternalIPs; returns the previous ones (None if the node was unknown).
    pub fn set_node(&mut self, node: &Node) -> Option<Vec<String>> {
        if node.internal_ips.iter().any(|ip| is_real_ipv6(ip)) {
            self.v6_nodes.insert(node.name.clone());
        } else {
            self.v6_nodes.remove(&node.name);
        }
        self.nodes.insert(node.name.clone(), node.internal_ips.clone())
    }

    pub fn remove_node(&mut self, name: &str) -> Option<Vec<String>> {
        self.v6_nodes.remove(name);
        self.nodes.remove(name)
    }

    /// Whether any known node has an IPv6 InternalIP (ENGINE.md 2.6).
    pub fn cluster_has_ipv6(&self) -> bool {
        !self.v6_nodes.is_empty()
    }

    /// The addresses a slice contributes with the current node table (2.3). A deleting slice
    /// contributes nothing.
    pub fn slice_map(&self, slice: &EndpointSlice) -> EndpointMap {
        let mut out = EndpointMap::new();
        if slice.meta.deletion_timestamp.is_some() {
            return out;
        }
        // The same-family node IP of the previous endpoint's node, per family: endpoints of a
        // slice mostly share nodes, so the node IPs are not re-parsed for each address.
        let mut last_node: Option<&str> = None;
        let mut picks: [Option<Option<String>>; 2] = [None, None];
        for ep in &slice.endpoints {
            if ep.ready == Some(false) {
                continue;
            }
            let Some(node) = &ep.node_name else { continue };
            let Some(ips) = self.nodes.get(node) else { continue };
            if last_node != Some(node.as_str()) {
                last_node = Some(node.as_str());
                picks = [None, None];
            }
            for raw in &ep.addresses {
                let Some(ip) = parse_ip(raw) else { continue };
                let fam = family(&ip);
                let slot = &mut picks[usize::from(fam == Family::V6)];
                if let Some(loc) = slot.get_or_insert_with(|| pick_same_family(ips, fam)) {
                    out.insert(ip.to_string(), loc.clone());
                }
            }
        }
        out
    }

    /// `seedInboundEndpointsFromCache`: the union of every cached slice owned by `owner`.
    pub fn seed(&self, owner: &Identity) -> EndpointMap {
        let mut out = EndpointMap::new();
        for key in self.by_owner.get(owner).into_iter().flatten() {
            if let Some(s) = self.slices.get(key) {
                out.extend(self.slice_map(s));
            }
        }
        out
    }

    /// `ReconcileNodeIPChange`: per owning service, the (old, new) maps of the node's ready
    /// endpoints placed with `old_ips` and `new_ips`.
    pub fn node_moves(&self, node: &str, old_ips: &[String], new_ips: &[String]) -> BTreeMap<Identity, (EndpointMap, EndpointMap)> {
        let mut out: BTreeMap<Identity, (EndpointMap, EndpointMap)> = BTreeMap::new();
        for key in self.by_node.get(node).into_iter().flatten() {
            let Some(s) = self.slices.get(key) else { continue };
            if s.meta.deletion_timestamp.is_some() {
                continue;
            }
            let Some(owner) = owner_of(s) else { continue };
            for ep in &s.endpoints {
                if ep.ready == Some(false) || ep.node_name.as_deref() != Some(node) {
                    continue;
                }
                for raw in &ep.addresses {
                    let Some(ip) = parse_ip(raw) else { continue };
                    let fam = family(&ip);
                    let entry = out.entry(owner.clone()).or_default();
                    if let Some(l) = pick_same_family(old_ips, fam) {
                        entry.0.insert(ip.to_string(), l);
                    }
                    if let Some(l) = pick_same_family(new_ips, fam) {
                        entry.1.insert(ip.to_string(), l);
                    }
                }
            }
        }
        out.retain(|_, (o, n)| !(o.is_empty() && n.is_empty()));
        out
    }
}

/// The removals (pairs of `old` not in `new`) of an endpoint delta.
pub fn removals<'a>(old: &'a EndpointMap, new: &'a EndpointMap) -> impl Iterator<Item = (&'a String, &'a String)> {
    old.iter().filter(move |(addr, loc)| new.get(*addr) != Some(*loc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Endpoint, ObjectMeta, OwnerReference};

    fn slice(name: &str, owner: &str, eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            meta: ObjectMeta { namespace: "NS".into(), name: name.into(), uid: format!("s-{name}"), ..Default::default() },
            owner_references: vec![OwnerReference { kind: "Service".into(), name: "svc".into(), uid: owner.into() }],
            address_type: "IPv4".into(),
            endpoints: eps,
        }
    }
    fn ep(addrs: &[&str], ready: Option<bool>, node: Option<&str>) -> Endpoint {
        Endpoint { addresses: addrs.iter().map(|s| s.to_string()).collect(), ready, node_name: node.map(|s| s.to_string()) }
    }

    #[test]
    fn s060_endpoint_selection_rules() {
        let mut c = EndpointCache::default();
        c.set_node(&Node {
            name: "n1".into(),
            uid: "".into(),
            internal_ips: vec!["10.0.0.2".into(), "bogus".into(), "FD00::0002".into(), "10.0.0.10".into()],
        });
        c.set_node(&Node { name: "v4only".into(), uid: "".into(), internal_ips: vec!["10.0.1.1".into()] });
        let s = slice(
            "a",
            "UID",
            vec![
                ep(&["10.1.0.1"], None, Some("n1")),               // nil ready = ready
                ep(&["10.1.0.2"], Some(false), Some("n1")),        // explicit not ready
                ep(&["junk", "10.1.0.3"], Some(true), Some("n1")), // malformed skipped, peer kept
                ep(&["10.1.0.4"], Some(true), None),               // no node
                ep(&["10.1.0.5"], Some(true), Some("unknown")),    // node not known
                ep(&["FD00:0:0:0::0009"], Some(true), Some("n1")), // IPv6 in an "IPv4" slice, canonical
                ep(&["fd00::10"], Some(true), Some("v4only")),     // no same-family node IP
            ],
        );
        let m = c.slice_map(&s);
        let want: EndpointMap = [
            ("10.1.0.1".to_string(), "10.0.0.10".to_string()),
            ("10.1.0.3".to_string(), "10.0.0.10".to_string()),
            ("fd00::9".to_string(), "fd00::2".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(m, want);
        assert_eq!(owner_of(&s), Some(Identity::new("uid")));
        assert_eq!(slice_key(&s), "ns/a");
        let mut deleting = s.clone();
        deleting.meta.deletion_timestamp = Some("2024-01-01T00:00:00Z".into());
        assert!(c.slice_map(&deleting).is_empty());
    }

    #[test]
    fn node_moves_use_old_and_new_ips() {
        let mut c = EndpointCache::default();
        c.put_slice(slice("a", "u1", vec![ep(&["10.1.0.1"], None, Some("n1")), ep(&["10.1.0.9"], None, Some("n2"))]));
        let moves = c.node_moves("n1", &["10.0.0.1".to_string()], &["10.0.0.7".to_string()]);
        let (o, n) = &moves[&Identity::new("u1")];
        assert_eq!(o.get("10.1.0.1"), Some(&"10.0.0.1".to_string()));
        assert_eq!(n.get("10.1.0.1"), Some(&"10.0.0.7".to_string()));
        assert_eq!(o.len(), 1);
        assert!(c.node_moves("n3", &[], &["10.0.0.3".to_string()]).is_empty());
    }
}
