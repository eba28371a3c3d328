//! Every deadline the engine waits for, in one table (the shape of quinn-proto's `TimerTable`):
//! its earliest entry is the engine's next wake-up.
//!
//! The table is an index. Each deadline's value is also kept by its owner (a worker's
//! `deadline_ms`, a pod call's, the in-flight sync's, the LocationsUpdater's `retry_at_ms`, the
//! dispatcher's retry timers), which is what the snapshot stores; owners arm and stop their
//! timers here as they change them, and a restore re-arms the table from the owners.

use crate::identity::Identity;
use crate::io::CallId;
use std::collections::{BTreeMap, BTreeSet};

/// What a deadline is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// `retryGate`'s wait before an operation may run again: the backoff after a failed
    /// attempt or the park cooldown (ENGINE.md 4.3). One per identity; re-arming replaces it.
    OperationRetry(Identity),
    /// The 5-minute deadline of a running worker's attempt (4.3).
    OperationTimeout(Identity),
    /// The 5-minute deadline of the location sync in flight (7).
    LocationSyncTimeout,
    /// The backoff before the LocationsUpdater retries a failed pass (7). Not fired: the next
    /// pass starts once it is due.
    LocationSyncRetry,
    /// The end of the interval a triggered location sync waits for after the previous one
    /// started (7); fired, it lets the pass start.
    LocationSyncPace,
    /// The 5-minute deadline of the registrar's `updateServices` batch in flight (5.5).
    RegistrationTimeout,
    /// The end of the interval queued registrations wait for after the last batch started
    /// (5.5); fired, it lets the next batch start.
    RegistrationPace,
    /// The 5-minute deadline of a pod finalizer call in flight (8.3).
    PodCallTimeout(CallId),
    /// The 5-minute deadline of a start-up call in flight (a list call, a finalizer recovery,
    /// an ingress backfill, an orphan public IP deletion; ENGINE.md 9).
    StartupCallTimeout(CallId),
    /// The backoff before failed start-up lists (or a failed start-up call) are retried. Not
    /// fired: the start-up step starts them once due.
    StartupRetry,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimerTable {
    deadline_of: BTreeMap<Timer, u64>,
    /// The same entries, earliest first.
    by_deadline: BTreeSet<(u64, Timer)>,
}

impl TimerTable {
    /// Arms `timer` for `at`, replacing its previous deadline.
    pub(crate) fn set(&mut self, timer: Timer, at: u64) {
        if let Some(old) = self.deadline_of.insert(timer.clone(), at) {
            self.by_deadline.remove(&(old, timer.clone()));
        }
        self.by_deadline.insert((at, timer));
    }

    pub(crate) fn stop(&mut self, timer: &Timer) {
        if let Some(old) = self.deadline_of.remove(timer) {
            self.by_deadline.remove(&(old, timer.clone()));
        }
    }

    pub(crate) fn get(&self, timer: &Timer) -> Option<u64> {
        self.deadline_of.get(timer).copied()
    }

    pub(crate) fn is_expired(&self, timer: &Timer, now: u64) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest deadline: when the engine wants its next tick.
    pub(crate) fn next_timeout(&self) -> Option<u64> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// The timers due at `now`, earliest first (ties in `Timer` order).
    pub(crate) fn expired(&self, now: u64) -> impl Iterator<Item = &Timer> {
        self.by_deadline.iter().take_while(move |(at, _)| *at <= now).map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearm_replaces_and_expired_is_ordered() {
        let mut t = TimerTable::default();
        let a = Timer::OperationRetry(Identity::new("a"));
        t.set(a.clone(), 50);
        t.set(Timer::PodCallTimeout(3), 20);
        t.set(Timer::LocationSyncTimeout, 20);
        t.set(a.clone(), 10);
        assert_eq!(t.get(&a), Some(10));
        assert_eq!(t.next_timeout(), Some(10));
        let due: Vec<&Timer> = t.expired(20).collect();
        assert_eq!(due, vec![&a, &Timer::LocationSyncTimeout, &Timer::PodCallTimeout(3)]);
        t.stop(&a);
        assert!(!t.is_expired(&a, 100));
        assert_eq!(t.next_timeout(), Some(20));
        t.stop(&Timer::PodCallTimeout(3));
        t.stop(&Timer::LocationSyncTimeout);
        assert_eq!(t.next_timeout(), None);
    }
}
