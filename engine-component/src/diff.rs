//! The location diff (ENGINE.md 5.2, `GetSyncLocationsAddresses`).
//!
//! [`full_diff`] walks every desired node and every NRP location, exactly as upstream does; it
//! is the reference. [`keys_diff`] computes the same answer restricted to a set of dirty
//! (location, address) keys: the engine keeps every key whose desired content, readiness or NRP
//! content changed since the last successful sync, so each pass costs O(changes) rather than
//! O(all addresses). Every key outside the dirty set is in sync, so both agree (checked by a
//! property test).

use crate::config::ServiceKind;
use crate::desired::{Desired, DesiredPod, Key, Text};
use crate::identity::Identity;
use crate::idset::IdSet;
use crate::io::{
    address_entry_bytes, location_entry_bytes, AddressUpdate, LocationUpdate, RequestBudget, UpdateAction, LOCATION_REQUEST_ENVELOPE_BYTES,
};
use crate::nrp::NrpMirror;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationChange {
    pub action: UpdateAction,
    /// Empty with PartialUpdate = delete the whole location. An empty service set = unbind.
    pub addresses: BTreeMap<Text, IdSet>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationDiff {
    pub locations: BTreeMap<Text, LocationChange>,
}

impl LocationDiff {
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }
    pub fn address_count(&self) -> usize {
        self.locations.values().map(|l| l.addresses.len()).sum()
    }
    /// Every identity listed on any emitted address.
    pub fn identities(&self) -> BTreeSet<Identity> {
        self.locations.values().flat_map(|l| l.addresses.values().flatten().cloned()).collect()
    }
    /// Splits the diff into the first request of a sync and the rest (ENGINE.md 5.5): the
    /// longest prefix, in location then address order, whose `updateAddressLocations` fits
    /// `budget` as the wire encodes it ([`crate::io::location_request_bytes`]), and at least one
    /// entry. A location whose addresses do not all fit is cut between addresses (each part
    /// lists at least one address, so no part reads as "delete the location"); a location
    /// deletion is never cut. The rest is empty when the whole diff fits.
    pub fn split_first(self, budget: &RequestBudget) -> (LocationDiff, LocationDiff) {
        let mut first = LocationDiff::default();
        let mut rest = LocationDiff::default();
        let mut bytes = LOCATION_REQUEST_ENVELOPE_BYTES;
        let mut entries = 0u64;
        for (loc, change) in self.locations {
            if !rest.is_empty() {
                rest.locations.insert(loc, change);
                continue;
            }
            let header = location_entry_bytes(&loc);
            if change.addresses.is_empty() {
                if entries == 0 || budget.fits(bytes + header, entries + 1) {
                    bytes += header;
                    entries += 1;
                    first.locations.insert(loc, change);
                } else {
                    rest.locations.insert(loc, change);
                }
                continue;
            }
            let (mut b, mut e) = (bytes + header, entries + 1);
            let mut taken = BTreeMap::new();
            let mut left = BTreeMap::new();
            for (addr, services) in change.addresses {
                if left.is_empty() {
                    let cost = address_entry_bytes(&addr, services.iter().map(Identity::as_str));
                    if (entries == 0 && taken.is_empty()) || budget.fits(b + cost, e + 1) {
                        b += cost;
                        e += 1;
                        taken.insert(addr, services);
                        continue;
                    }
                }
                left.insert(addr, services);
            }
            if !taken.is_empty() {
                bytes = b;
                entries = e;
                first.locations.insert(loc.clone(), LocationChange { action: change.action, addresses: taken });
            }
            if !left.is_empty() {
                rest.locations.insert(loc, LocationChange { action: change.action, addresses: left });
            }
        }
        (first, rest)
    }

    /// Whether the dirty key `(loc, addr)` has a part in this diff: its address is listed, or
    /// its whole location is deleted.
    pub fn covers(&self, loc: &str, addr: &str) -> bool {
        self.locations.get(loc).is_some_and(|c| c.addresses.is_empty() || c.addresses.contains_key(addr))
    }

    /// The wire form: sorted, never-null lists, one entry per (canonical) location.
    pub fn to_wire(&self) -> Vec<LocationUpdate> {
        self.locations
            .iter()
            .map(|(loc, change)| LocationUpdate {
                location: loc.to_string(),
                action: change.action,
                addresses: change
                    .addresses
                    .iter()
                    .map(|(addr, services)| AddressUpdate {
                        address: addr.to_string(),
                        services: services.iter().map(|s| s.as_str().to_string()).collect(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// The identities of a desired address that pass the readiness filter.
pub fn service_ref(pod: &DesiredPod, ready: &dyn Fn(&Identity, ServiceKind) -> bool) -> IdSet {
    let mut out: IdSet = pod.inbound.iter().filter(|id| ready(id, ServiceKind::Inbound)).cloned().collect();
    if let Some(o) = &pod.outbound {
        if ready(o, ServiceKind::Outbound) {
            out.insert(o.clone());
        }
    }
    out
}

/// What the address at `(loc, addr)` contributes, if anything.
fn address_change(
    desired_pod: Option<&DesiredPod>,
    nrp_set: Option<&IdSet>,
    ready: &dyn Fn(&Identity, ServiceKind) -> bool,
) -> Option<IdSet> {
    match desired_pod {
        Some(pod) => {
            let sref = service_ref(pod, ready);
            match nrp_set {
                None if sref.is_empty() => None,
                Some(cur) if *cur == sref => None,
                _ => Some(sref),
            }
        }
        None => nrp_set.map(|_| IdSet::new()),
    }
}

/// The reference full-walk diff.
pub fn full_diff(desired: &Desired, nrp: &NrpMirror, ready: &dyn Fn(&Identity, ServiceKind) -> bool) -> LocationDiff {
    let mut out = LocationDiff::default();
    // Step A: desired nodes.
    for (loc, pods) in desired.nodes() {
        let in_nrp = nrp.has_location(loc);
        let action = if in_nrp { UpdateAction::PartialUpdate } else { UpdateAction::FullUpdate };
        let mut addresses = BTreeMap::new();
        for (addr, pod) in pods {
            if let Some(sref) = address_change(Some(pod), nrp.services_at(loc, addr), ready) {
                addresses.insert(addr.clone(), sref);
            }
        }
        if !addresses.is_empty() {
            out.locations.insert(loc.clone(), LocationChange { action, addresses });
        }
    }
    // Step B: NRP locations.
    for (loc, addrs) in nrp.locations() {
        if !desired.has_node(loc) {
            out.locations.insert(loc.clone(), LocationChange { action: UpdateAction::PartialUpdate, addresses: BTreeMap::new() });
            continue;
        }
        for addr in addrs.keys() {
            if desired.get(loc, addr).is_none() {
                out.locations
                    .entry(loc.clone())
                    .or_insert_with(|| LocationChange { action: UpdateAction::PartialUpdate, addresses: BTreeMap::new() })
                    .addresses
                    .insert(addr.clone(), IdSet::new());
            }
        }
    }
    out
}

/// [`keys_diff`] over the dirty set in key order, only as far as the first request reaches:
/// it stops after the key whose change makes the diff outgrow `budget`, and returns the first key
/// it did not look at. A big dirty set is sent in many batches, so computing the whole diff for
/// each of them cost the square of the set; this costs the batch. The diff is a prefix of the
/// whole one (same order) and longer than one request, so its [`LocationDiff::split_first`] is
/// the whole diff's.
pub fn keys_diff_within<'a>(
    keys: impl IntoIterator<Item = &'a Key>,
    budget: &RequestBudget,
    desired: &Desired,
    nrp: &NrpMirror,
    ready: &dyn Fn(&Identity, ServiceKind) -> bool,
) -> (LocationDiff, Option<Key>) {
    let mut out = LocationDiff::default();
    let (mut bytes, mut entries) = (LOCATION_REQUEST_ENVELOPE_BYTES, 0u64);
    for key in keys {
        if !out.is_empty() && !budget.fits(bytes, entries) {
            return (out, Some(key.clone()));
        }
        let (loc, addr) = key;
        if desired.has_node(loc) {
            let Some(sref) = address_change(desired.get(loc, addr), nrp.services_at(loc, addr), ready) else { continue };
            if !out.locations.contains_key(loc) {
                let action = if nrp.has_location(loc) { UpdateAction::PartialUpdate } else { UpdateAction::FullUpdate };
                out.locations.insert(loc.clone(), LocationChange { action, addresses: BTreeMap::new() });
                bytes += location_entry_bytes(loc);
                entries += 1;
            }
            bytes += address_entry_bytes(addr, sref.iter().map(Identity::as_str));
            entries += 1;
            out.locations.get_mut(loc).expect("location just ensured").addresses.insert(addr.clone(), sref);
        } else if nrp.has_location(loc) && !out.locations.contains_key(loc) {
            out.locations.insert(loc.clone(), LocationChange { action: UpdateAction::PartialUpdate, addresses: BTreeMap::new() });
            bytes += location_entry_bytes(loc);
            entries += 1;
        }
    }
    (out, None)
}

/// The diff restricted to `keys` (the dirty set), however long: [`keys_diff_within`] with no
/// budget.
pub fn keys_diff<'a>(
    keys: impl IntoIterator<Item = &'a Key>,
    desired: &Desired,
    nrp: &NrpMirror,
    ready: &dyn Fn(&Identity, ServiceKind) -> bool,
) -> LocationDiff {
    let unbounded = RequestBudget { max_bytes: u64::MAX, max_entries: u32::MAX };
    keys_diff_within(keys, &unbounded, desired, nrp, ready).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ready(_: &Identity, _: ServiceKind) -> bool {
        true
    }

    fn nrp_with(entries: &[(&str, &str, &[&str])]) -> NrpMirror {
        let mut locs: crate::nrp::NrpLocations = BTreeMap::new();
        for (l, a, s) in entries {
            locs.entry((*l).into()).or_default().insert((*a).into(), s.iter().map(|x| Identity::new(x)).collect());
        }
        let mut n = NrpMirror::default();
        n.set_locations(locs);
        n
    }

    #[test]
    fn s099_node_gone_and_address_gone_emit_empty_non_nil() {
        let mut d = Desired::default();
        let a = Identity::new("a");
        d.add_inbound(&a, "10.0.0.1", "10.1.0.1");
        let nrp = nrp_with(&[("10.0.0.1", "10.1.0.1", &["a"]), ("10.0.0.1", "10.1.0.2", &["a"]), ("10.0.0.9", "10.1.9.1", &["a"])]);
        let diff = full_diff(&d, &nrp, &all_ready);
        let gone = &diff.locations["10.0.0.9"];
        assert_eq!(gone.action, UpdateAction::PartialUpdate);
        assert!(gone.addresses.is_empty());
        let kept = &diff.locations["10.0.0.1"];
        assert_eq!(kept.action, UpdateAction::PartialUpdate);
        assert_eq!(kept.addresses.len(), 1);
        assert!(kept.addresses["10.1.0.2"].is_empty());
        let wire = diff.to_wire();
        assert_eq!(wire.len(), 2);
        assert!(wire.iter().any(|l| l.location == "10.0.0.9" && l.addresses.is_empty()));
        assert!(wire.iter().any(|l| l.addresses == vec![AddressUpdate { address: "10.1.0.2".into(), services: vec![] }]));
        // Applying it converges.
        let mut nrp2 = nrp.clone();
        nrp2.apply(&diff);
        assert!(full_diff(&d, &nrp2, &all_ready).is_empty());
    }

    #[test]
    fn the_bounded_diff_sends_the_same_first_batch_and_reads_only_as_far_as_it_reaches() {
        // 40 locations of 25 addresses: some in sync, some new, one location gone.
        let mut d = Desired::default();
        let mut in_nrp = Vec::new();
        let mut keys: BTreeSet<Key> = BTreeSet::new();
        for l in 0..40 {
            let loc = format!("10.0.{}.{}", l / 10, l % 10);
            for a in 0..25 {
                let addr = format!("10.1.{l}.{a}");
                d.add_inbound(&Identity::new(&format!("svc-{}", a % 3)), &loc, &addr);
                if a % 4 == 0 {
                    in_nrp.push((loc.clone(), addr.clone(), format!("svc-{}", a % 3)));
                }
                keys.insert((loc.as_str().into(), addr.into()));
            }
        }
        in_nrp.push(("10.9.9.9".into(), "10.2.0.1".into(), "svc-0".into()));
        keys.insert(("10.9.9.9".into(), "10.2.0.1".into()));
        let entries: Vec<(&str, &str, [&str; 1])> = in_nrp.iter().map(|(l, a, s)| (l.as_str(), a.as_str(), [s.as_str()])).collect();
        let nrp = nrp_with(&entries.iter().map(|(l, a, s)| (*l, *a, &s[..])).collect::<Vec<_>>());
        for (max_bytes, max_entries) in [(1, 1), (2_000, 10_000), (20_000, 100), (1 << 20, 10_000)] {
            let budget = RequestBudget { max_bytes, max_entries };
            // The keys cover every address of either side: the full walk is the whole diff.
            let (whole_first, whole_rest) = full_diff(&d, &nrp, &all_ready).split_first(&budget);
            let (within, unread) = keys_diff_within(keys.iter(), &budget, &d, &nrp, &all_ready);
            let (first, _) = within.split_first(&budget);
            assert_eq!(first, whole_first, "budget {max_bytes} B / {max_entries}");
            match unread {
                Some(k) => {
                    assert!(!whole_rest.is_empty(), "keys are left unread only when one request cannot take the diff");
                    let read = keys.range(..k).count();
                    let sent: usize = first.locations.values().map(|c| c.addresses.len().max(1)).sum();
                    // Read: the batch, the in-sync keys among it (7 in 25), and one key past it.
                    assert!(read <= sent * 25 / 18 + 2, "read {read} keys for a batch of {sent}");
                }
                None => assert!(whole_rest.is_empty() || max_entries == 1, "all read only when it fits"),
            }
        }
    }

    #[test]
    fn s100_new_node_is_full_update() {
        let mut d = Desired::default();
        d.add_inbound(&Identity::new("a"), "10.0.0.1", "10.1.0.1");
        let diff = full_diff(&d, &NrpMirror::default(), &all_ready);
        assert_eq!(diff.locations["10.0.0.1"].action, UpdateAction::FullUpdate);
        assert_eq!(diff.locations["10.0.0.1"].addresses["10.1.0.1"], IdSet::from([Identity::new("a")]));
    }

    #[test]
    fn s101_equal_state_is_empty_diff() {
        let mut d = Desired::default();
        d.add_inbound(&Identity::new("a"), "10.0.0.1", "10.1.0.1");
        let nrp = nrp_with(&[("10.0.0.1", "10.1.0.1", &["a"])]);
        assert!(full_diff(&d, &nrp, &all_ready).is_empty());
        let keys: [Key; 1] = [("10.0.0.1".into(), "10.1.0.1".into())];
        assert!(keys_diff(keys.iter(), &d, &nrp, &all_ready).is_empty());
    }

    #[test]
    fn s104_offline_changes_converge_in_one_sync() {
        // NRP still holds nodes 1 and 2; the cluster now has nodes 2 and 3.
        let nrp = nrp_with(&[("10.0.0.1", "10.1.1.1", &["a"]), ("10.0.0.2", "10.1.2.1", &["a"])]);
        let mut d = Desired::default();
        d.add_inbound(&Identity::new("a"), "10.0.0.2", "10.1.2.1");
        d.add_inbound(&Identity::new("a"), "10.0.0.3", "10.1.3.1");
        let diff = full_diff(&d, &nrp, &all_ready);
        assert!(diff.locations["10.0.0.1"].addresses.is_empty());
        assert_eq!(diff.locations["10.0.0.3"].action, UpdateAction::FullUpdate);
        assert!(!diff.locations.contains_key("10.0.0.2"));
        let mut nrp2 = nrp.clone();
        nrp2.apply(&diff);
        assert!(full_diff(&d, &nrp2, &all_ready).is_empty());
    }

    #[test]
    fn s105_apply_rules() {
        let mut nrp = nrp_with(&[("l1", "a1", &["x"]), ("l1", "a2", &["x"]), ("l2", "b1", &["x", "y"]), ("l3", "c1", &["x"])]);
        let mut diff = LocationDiff::default();
        // FullUpdate replaces l1 wholesale.
        diff.locations.insert(
            "l1".into(),
            LocationChange {
                action: UpdateAction::FullUpdate,
                addresses: BTreeMap::from([("a3".into(), IdSet::from([Identity::new("z")]))]),
            },
        );
        // PartialUpdate edits in place; an empty set deletes the address, and the emptied location goes.
        diff.locations.insert(
            "l2".into(),
            LocationChange { action: UpdateAction::PartialUpdate, addresses: BTreeMap::from([("b1".into(), IdSet::new())]) },
        );
        // Empty address map deletes the location.
        diff.locations.insert("l3".into(), LocationChange { action: UpdateAction::PartialUpdate, addresses: BTreeMap::new() });
        let touched = nrp.apply(&diff);
        assert_eq!(nrp.locations().len(), 1);
        assert_eq!(nrp.locations()["l1"].keys().cloned().collect::<Vec<_>>(), vec![Text::from("a3")]);
        assert!(!nrp.has_addresses_for(&Identity::new("x")));
        assert!(nrp.has_addresses_for(&Identity::new("z")));
        assert!(touched.contains(&Identity::new("x")) && touched.contains(&Identity::new("y")));
        nrp.check_index().unwrap();
        // Partial edit keeps other addresses.
        let mut nrp = nrp_with(&[("l1", "a1", &["x"]), ("l1", "a2", &["x"])]);
        let mut diff = LocationDiff::default();
        diff.locations.insert(
            "l1".into(),
            LocationChange {
                action: UpdateAction::PartialUpdate,
                addresses: BTreeMap::from([("a1".into(), IdSet::from([Identity::new("y")]))]),
            },
        );
        nrp.apply(&diff);
        assert_eq!(nrp.services_at("l1", "a1"), Some(&IdSet::from([Identity::new("y")])));
        assert_eq!(nrp.services_at("l1", "a2"), Some(&IdSet::from([Identity::new("x")])));
        nrp.check_index().unwrap();
    }
}
