//! [`VecSet`]: a small set as a sorted vector; [`IdSet`], the identities of one address.
//!
//! Every (location, address) entry of the desired model and of the NRP mirror carries the set of
//! identities it serves: almost always one, rarely a handful; so do the locations of one pod
//! address and the slices of one Service. A `BTreeSet` allocates a whole leaf node (eleven
//! slots) for its first element, the largest cost per address the engine had (issue 15, guest
//! memory); a sorted vector of exactly its length holds the same set in one small allocation,
//! with the same order, equality and serialised form (a sorted sequence). Inserts and removes
//! are linear in the set, so it is only for sets that stay small.

use crate::identity::Identity;
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;

/// A set, sorted and without duplicates; its capacity is its length.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VecSet<T>(Vec<T>);

/// The identities of one address.
pub type IdSet = VecSet<Identity>;

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        VecSet(Vec::new())
    }
}

impl<T: Ord> VecSet<T> {
    pub fn new() -> Self {
        VecSet(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains<Q: Ord + ?Sized>(&self, id: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.binary_search_by(|x| x.borrow().cmp(id)).is_ok()
    }

    /// Adds `id`; false if it was there.
    pub fn insert(&mut self, id: T) -> bool {
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(at) => {
                self.0.reserve_exact(1);
                self.0.insert(at, id);
                true
            }
        }
    }

    /// Removes `id`; false if it was not there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, id: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        match self.0.binary_search_by(|x| x.borrow().cmp(id)) {
            Ok(at) => {
                self.0.remove(at);
                self.0.shrink_to_fit();
                true
            }
            Err(_) => false,
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn first(&self) -> Option<&T> {
        self.0.first()
    }
}

impl<T: Ord> FromIterator<T> for VecSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut ids: Vec<T> = iter.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.shrink_to_fit();
        VecSet(ids)
    }
}

impl<T: Ord> Extend<T> for VecSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        self.0.extend(iter);
        self.0.sort_unstable();
        self.0.dedup();
        self.0.shrink_to_fit();
    }
}

impl<T: Ord, const N: usize> From<[T; N]> for VecSet<T> {
    fn from(ids: [T; N]) -> Self {
        ids.into_iter().collect()
    }
}

impl<T> IntoIterator for VecSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for VecSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(&self.0).finish()
    }
}

impl<T: Serialize> Serialize for VecSet<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Ord + Deserialize<'de>> Deserialize<'de> for VecSet<T> {
    /// Any sequence: sorted and deduplicated as read, as a `BTreeSet` would be.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<T>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// Any sequence of inserts and removes leaves the set a `BTreeSet` would hold, in the
        /// same order, and it serialises the same way.
        #[test]
        fn behaves_as_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u8..8), 0..40)) {
            let mut set = IdSet::new();
            let mut oracle = BTreeSet::new();
            for (add, n) in ops {
                let id = Identity::new(&format!("id-{n}"));
                if add {
                    prop_assert_eq!(set.insert(id.clone()), oracle.insert(id));
                } else {
                    prop_assert_eq!(set.remove(&id), oracle.remove(&id));
                }
                prop_assert_eq!(set.len(), oracle.len());
                prop_assert!(set.0.capacity() == set.len(), "capacity {} for {} ids", set.0.capacity(), set.len());
            }
            prop_assert!(set.iter().eq(oracle.iter()));
            prop_assert_eq!(serde_json::to_string(&set).unwrap(), serde_json::to_string(&oracle).unwrap());
            let back: IdSet = serde_json::from_str(&serde_json::to_string(&oracle).unwrap()).unwrap();
            prop_assert_eq!(back, set);
        }
    }

    #[test]
    fn reading_an_unsorted_sequence_sorts_and_deduplicates_it() {
        let set: IdSet = serde_json::from_str(r#"["b", "a", "b"]"#).unwrap();
        assert_eq!(set.iter().map(Identity::as_str).collect::<Vec<_>>(), ["a", "b"]);
    }
}
