//! The NRP mirror (ENGINE.md 3.2): what the ServiceGateway currently holds, as far as this engine
//! knows. Updated only after successful cloud calls: registration/unregistration (LB and NAT
//! sets) and location syncs ([`NrpMirror::apply`], the rules of 5.4).
//!
//! An index identity -> {(location, address)} answers "does any NRP address reference this
//! identity" in O(log n).

use crate::desired::{held_key, Key, Text};
use crate::diff::LocationDiff;
use crate::identity::Identity;
use crate::idset::{IdSet, VecSet};
use crate::io::UpdateAction;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub type NrpLocations = BTreeMap<Text, BTreeMap<Text, IdSet>>;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NrpMirror {
    load_balancers: BTreeSet<Identity>,
    nat_gateways: BTreeSet<Identity>,
    locations: NrpLocations,
    #[serde(skip)]
    index: BTreeMap<Identity, BTreeSet<Key>>,
    #[serde(skip)]
    addresses: usize,
    /// Pod address -> the locations holding it.
    #[serde(skip)]
    addr_locs: BTreeMap<Text, VecSet<Text>>,
}

impl NrpMirror {
    pub fn rebuild_index(&mut self) {
        self.index.clear();
        self.addresses = 0;
        self.addr_locs.clear();
        for (loc, addrs) in &self.locations {
            for (addr, services) in addrs {
                self.addresses += 1;
                self.addr_locs.entry(addr.clone()).or_default().insert(loc.clone());
                for id in services {
                    self.index.entry(id.clone()).or_default().insert((loc.clone(), addr.clone()));
                }
            }
        }
    }

    pub fn has_load_balancer(&self, id: &Identity) -> bool {
        self.load_balancers.contains(id)
    }
    pub fn has_nat_gateway(&self, id: &Identity) -> bool {
        self.nat_gateways.contains(id)
    }
    /// `UpdateNRPLoadBalancers`: true if the set changed.
    pub fn set_load_balancer(&mut self, id: &Identity, present: bool) -> bool {
        if present {
            self.load_balancers.insert(id.clone())
        } else {
            self.load_balancers.remove(id)
        }
    }
    pub fn set_nat_gateway(&mut self, id: &Identity, present: bool) -> bool {
        if present {
            self.nat_gateways.insert(id.clone())
        } else {
            self.nat_gateways.remove(id)
        }
    }
    pub fn load_balancers(&self) -> &BTreeSet<Identity> {
        &self.load_balancers
    }
    pub fn nat_gateways(&self) -> &BTreeSet<Identity> {
        &self.nat_gateways
    }
    pub fn locations(&self) -> &NrpLocations {
        &self.locations
    }
    pub fn location_count(&self) -> usize {
        self.locations.len()
    }
    pub fn address_count(&self) -> usize {
        self.addresses
    }

    /// Whether any NRP address references `id`.
    pub fn has_addresses_for(&self, id: &Identity) -> bool {
        self.index.contains_key(id)
    }
    pub fn keys_of(&self, id: &Identity) -> impl Iterator<Item = &Key> {
        self.index.get(id).into_iter().flatten()
    }
    pub fn services_at(&self, loc: &str, addr: &str) -> Option<&IdSet> {
        self.locations.get(loc).and_then(|a| a.get(addr))
    }
    /// The key of `(loc, addr)` with the mirror's text, if it holds the address.
    pub fn key(&self, loc: &str, addr: &str) -> Option<Key> {
        held_key(&self.locations, loc, addr)
    }
    pub fn has_location(&self, loc: &str) -> bool {
        self.locations.contains_key(loc)
    }

    /// Whether NRP maps `addr` to `id` under any location.
    pub fn maps_address_to(&self, id: &Identity, addr: &str) -> bool {
        self.addr_locs.get(addr).into_iter().flatten().any(|loc| self.services_at(loc, addr).is_some_and(|s| s.contains(id)))
    }

    fn drop_addr_loc(addr_locs: &mut BTreeMap<Text, VecSet<Text>>, loc: &str, addr: &str) {
        if let Some(set) = addr_locs.get_mut(addr) {
            set.remove(loc);
            if set.is_empty() {
                addr_locs.remove(addr);
            }
        }
    }

    fn unindex_address(
        index: &mut BTreeMap<Identity, BTreeSet<Key>>,
        touched: &mut BTreeSet<Identity>,
        pairs: &mut BTreeSet<(Identity, String)>,
        key: &Key,
        services: &IdSet,
    ) {
        for id in services {
            if let Some(set) = index.get_mut(id) {
                set.remove(key);
                if set.is_empty() {
                    index.remove(id);
                }
            }
            if !touched.contains(id) {
                touched.insert(id.clone());
            }
            pairs.insert((id.clone(), key.1.to_string()));
        }
    }

    /// Applies a successfully sent location diff (5.4). Returns every identity that lost an
    /// address reference (candidates for "drained").
    pub fn apply(&mut self, diff: &LocationDiff) -> BTreeSet<Identity> {
        self.apply_collecting(diff.clone(), &mut BTreeSet::new())
    }

    /// [`NrpMirror::apply`], also collecting every (identity, address) reference that went away.
    /// Takes the diff by value: its service sets move into the mirror.
    pub fn apply_collecting(&mut self, diff: LocationDiff, pairs: &mut BTreeSet<(Identity, String)>) -> BTreeSet<Identity> {
        let mut touched = BTreeSet::new();
        for (loc, change) in diff.locations {
            let wipe = change.addresses.is_empty() || change.action == UpdateAction::FullUpdate;
            if wipe {
                if let Some((loc_text, old)) = self.locations.remove_entry(&*loc) {
                    for (addr, services) in &old {
                        self.addresses -= 1;
                        Self::drop_addr_loc(&mut self.addr_locs, &loc, addr);
                        Self::unindex_address(&mut self.index, &mut touched, pairs, &(loc_text.clone(), addr.clone()), services);
                    }
                }
                if change.addresses.is_empty() {
                    continue;
                }
            }
            let loc_text = match self.locations.get_key_value(&*loc) {
                Some((l, _)) => l.clone(),
                None => loc.clone(),
            };
            let entry = self.locations.entry(loc_text.clone()).or_default();
            for (addr, services) in change.addresses {
                let held = entry.get_key_value(&*addr).map(|(a, _)| a.clone());
                if !services.is_empty() {
                    if let Some(addr_text) = held {
                        // Replaced in place: the same as removing the old set and inserting the
                        // new one (every old identity is touched), without re-keying what stays.
                        let key = (loc_text.clone(), addr_text);
                        let cur = entry.get_mut(&*addr).expect("held address");
                        for id in cur.iter() {
                            if !services.contains(id) {
                                if let Some(set) = self.index.get_mut(id) {
                                    set.remove(&key);
                                    if set.is_empty() {
                                        self.index.remove(id);
                                    }
                                }
                            }
                            if !touched.contains(id) {
                                touched.insert(id.clone());
                            }
                            pairs.insert((id.clone(), addr.to_string()));
                        }
                        for id in &services {
                            if !cur.contains(id) {
                                self.index.entry(id.clone()).or_default().insert(key.clone());
                            }
                        }
                        *cur = services;
                        continue;
                    }
                } else if let Some(addr_text) = held {
                    let old = entry.remove(&*addr).expect("held address");
                    self.addresses -= 1;
                    Self::drop_addr_loc(&mut self.addr_locs, &loc, &addr);
                    Self::unindex_address(&mut self.index, &mut touched, pairs, &(loc_text.clone(), addr_text), &old);
                }
                if !services.is_empty() {
                    let key: Key = (loc_text.clone(), addr);
                    for id in &services {
                        self.index.entry(id.clone()).or_default().insert(key.clone());
                    }
                    self.addr_locs.entry(key.1.clone()).or_default().insert(key.0);
                    entry.insert(key.1, services);
                    self.addresses += 1;
                }
            }
            if entry.is_empty() {
                self.locations.remove(&loc_text);
            }
        }
        touched
    }

    /// Replaces the location table wholesale (startup/tests); rebuilds the index.
    pub fn set_locations(&mut self, locations: NrpLocations) {
        self.locations = locations;
        self.locations.retain(|_, a| {
            a.retain(|_, s| !s.is_empty());
            !a.is_empty()
        });
        self.rebuild_index();
    }

    pub fn check_index(&self) -> Result<(), String> {
        let mut fresh = NrpMirror { locations: self.locations.clone(), ..Default::default() };
        fresh.rebuild_index();
        if fresh.index != self.index || fresh.addresses != self.addresses || fresh.addr_locs != self.addr_locs {
            return Err("NRP index drifted".into());
        }
        for addrs in self.locations.values() {
            if addrs.is_empty() || addrs.values().any(|s| s.is_empty()) {
                return Err("empty NRP location or address kept".into());
            }
        }
        Ok(())
    }
}
