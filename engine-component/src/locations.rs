//! The LocationsUpdater (ENGINE.md 7): publishes the location diff to NRP.
//!
//! Triggers coalesce into one flag; at most one `updateAddressLocations` is in flight, and a
//! triggered pass starts no sooner than the tenant's ServiceGateway POST interval after the
//! previous one started (what changes meanwhile goes in the same request). A pass
//! takes the dirty key set, computes the diff over it and sends as much of it as fits one
//! request of the tenant's budget (ENGINE.md 5.5); the keys of the rest go back to the dirty set
//! and the next pass, started as soon as this one succeeds, sends the next batch. On success the
//! batch is applied to the NRP mirror, on failure its keys go back to the dirty set (nothing is lost) and
//! the pass is retried with backoff (a new trigger cuts the wait short; a server's `Retry-After`,
//! capped, is a floor nothing cuts short). HTTP 400/422 abandon the
//! batch unless a service deletion waits on it. After every completed pass the pending service
//! deletions are checked.

use crate::backoff::{backoff_ms, throttle_hold_ms, LOCATION_SYNC_REPORT_THRESHOLD, OPERATION_TIMEOUT_MS};
use crate::desired::Key;
use crate::diff::{full_diff, keys_diff, keys_diff_within, LocationDiff};
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{Call, CallError, CallId, CallOutput, CloudCall, ErrorKind, Io};
use crate::metrics;
use crate::timers::{Timer, TimerTable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A sync waiting for its completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightSync {
    pub call: CallId,
    pub diff: LocationDiff,
    /// The dirty keys this pass consumed (restored on failure).
    pub keys: BTreeSet<Key>,
    /// Identities listed on any address of the diff: they may be in NRP once it lands.
    pub identities: BTreeSet<Identity>,
    pub deadline_ms: u64,
    /// The pass's diff did not fit one request (ENGINE.md 5.5): the rest went back to the dirty
    /// set and the next batch follows this one's success at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationsUpdater {
    /// The coalescing trigger (capacity-1 channel).
    pub triggered: bool,
    pub in_flight: Option<InFlightSync>,
    /// Consecutive failures.
    pub failures: u32,
    /// When the backoff after a failure ends.
    pub retry_at_ms: Option<u64>,
    /// The 12-attempt threshold was reported for this failure streak.
    pub abandoned_reported: bool,
    /// A server's `Retry-After` (capped): no pass starts before this, triggers included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// The tenant's POST interval after the last pass started: a triggered pass waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced_until_ms: Option<u64>,
    /// The next pass sends the next batch of a split sync: it goes at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continuation: bool,
}

impl LocationsUpdater {
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && !self.triggered && self.retry_at_ms.is_none()
    }

    /// A trigger asks for a pass that may start now (none in flight, no server hold).
    pub(crate) fn pass_due(&self, now_ms: u64) -> bool {
        self.triggered && self.in_flight.is_none() && self.not_before_ms.is_none_or(|t| now_ms >= t) && !self.paced(now_ms)
    }

    /// A triggered pass waits for the POST interval.
    fn paced(&self, now_ms: u64) -> bool {
        !self.continuation && self.paced_until_ms.is_some_and(|t| now_ms < t)
    }

    fn begin_pass(&mut self, timers: &mut TimerTable, sync: InFlightSync) {
        self.in_flight = Some(sync);
        self.rearm(timers);
    }

    /// The pass in flight is over (completed or timed out).
    fn end_pass(&mut self, timers: &mut TimerTable) -> Option<InFlightSync> {
        let sync = self.in_flight.take();
        self.rearm(timers);
        sync
    }

    fn set_retry(&mut self, timers: &mut TimerTable, at: Option<u64>) {
        self.retry_at_ms = at;
        self.rearm(timers);
    }

    /// Arms the table from this state: the attempt deadline while a pass is in flight, else the
    /// retry backoff.
    pub(crate) fn rearm(&self, timers: &mut TimerTable) {
        timers.stop(&Timer::LocationSyncTimeout);
        timers.stop(&Timer::LocationSyncRetry);
        timers.stop(&Timer::LocationSyncPace);
        match (&self.in_flight, self.retry_at_ms) {
            (Some(f), _) => timers.set(Timer::LocationSyncTimeout, f.deadline_ms),
            (None, Some(at)) => timers.set(Timer::LocationSyncRetry, at),
            (None, None) => {}
        }
        if let (None, Some(at), true, false) = (&self.in_flight, self.paced_until_ms, self.triggered, self.continuation) {
            timers.set(Timer::LocationSyncPace, at);
        }
    }
}

/// How a sync attempt ended.
enum SyncOutcome {
    Ok,
    Terminal,
    Retry,
}

fn is_terminal_status(e: &CallError) -> bool {
    e.kind == ErrorKind::Http && (e.status == 400 || e.status == 422)
}

impl Engine {
    /// The LocationsUpdater trigger: asks for a location sync pass.
    pub(crate) fn trigger_location_sync(&mut self) {
        if !self.locations_updater.triggered {
            self.locations_updater.triggered = true;
            self.locations_updater.rearm(&mut self.timers);
        }
    }

    /// The POST interval is over: a triggered pass may start.
    pub(crate) fn fire_location_pace(&mut self) {
        if self.timers.is_expired(&Timer::LocationSyncPace, self.now_ms) {
            self.locations_updater.paced_until_ms = None;
            self.locations_updater.rearm(&mut self.timers);
        }
    }

    /// Starts a pass if one is due and none is in flight.
    pub(crate) fn run_locations(&mut self, io: &mut dyn Io) {
        if self.locations_updater.in_flight.is_some() || self.locations_updater.not_before_ms.is_some_and(|t| self.now_ms < t) {
            return;
        }
        let retry_due = self.timers.is_expired(&Timer::LocationSyncRetry, self.now_ms);
        if !retry_due && (!self.locations_updater.triggered || self.locations_updater.paced(self.now_ms)) {
            return;
        }
        self.locations_updater.triggered = false;
        self.locations_updater.continuation = false;
        self.locations_updater.not_before_ms = None;
        self.locations_updater.set_retry(&mut self.timers, None);
        let mut keys = std::mem::take(&mut self.dirty);
        let budget = self.config.request_budget();
        let ready = |id: &Identity, kind| crate::readiness::is_ready(&self.ops, &self.nrp, id, kind);
        let (diff, unread) = keys_diff_within(&keys, &budget, &self.desired, &self.nrp, &ready);
        let unread_left = unread.is_some();
        if let Some(first_unread) = unread {
            // The keys past the first request stay dirty for the passes after it.
            self.dirty = keys.split_off(&first_unread);
        }
        if diff.is_empty() {
            // Nothing to send: every consumed key is in sync.
            self.check_pending_service_deletions();
            self.check_pending_pod_deletions();
            self.locations_updater.failures = 0;
            self.locations_updater.abandoned_reported = false;
            return;
        }
        // One request per batch (5.5): the first batch goes now, the keys of the rest wait in
        // the dirty set for the next pass, which recomputes their diff from the mirror as the
        // batches before it left it.
        let (diff, rest) = diff.split_first(&budget);
        // Keys were left unread only past a full request (or a lone entry bigger than one).
        let more = !rest.is_empty() || unread_left;
        let keys = if more {
            let (later, now): (BTreeSet<Key>, BTreeSet<Key>) = keys.into_iter().partition(|(loc, addr)| rest.covers(loc, addr));
            self.dirty.extend(later);
            now
        } else {
            keys
        };
        self.metrics.inc(metrics::LOCATION_SYNC_BATCHES_TOTAL, &[]);
        let interval = self.config.sgw_post_interval_ms();
        self.locations_updater.paced_until_ms = (interval > 0).then(|| self.now_ms.saturating_add(interval));
        let call = io.start(Call::Cloud(CloudCall::UpdateAddressLocations(diff.to_wire())));
        let identities = diff.identities();
        let sync = InFlightSync { call, diff, keys, identities, deadline_ms: self.now_ms.saturating_add(OPERATION_TIMEOUT_MS), more };
        self.locations_updater.begin_pass(&mut self.timers, sync);
    }

    /// The incremental diff over `keys`.
    pub(crate) fn diff_over<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) -> LocationDiff {
        let ready = |id: &Identity, kind| crate::readiness::is_ready(&self.ops, &self.nrp, id, kind);
        keys_diff(keys, &self.desired, &self.nrp, &ready)
    }

    /// The reference full-walk diff of the current state.
    pub fn full_location_diff(&self) -> LocationDiff {
        let ready = |id: &Identity, kind| crate::readiness::is_ready(&self.ops, &self.nrp, id, kind);
        full_diff(&self.desired, &self.nrp, &ready)
    }

    /// The incremental diff the next pass would send (dirty keys plus those of an in-flight pass).
    pub fn pending_location_diff(&self) -> LocationDiff {
        let inflight = self.locations_updater.in_flight.iter().flat_map(|f| f.keys.iter());
        let keys: BTreeSet<&Key> = self.dirty.iter().chain(inflight).collect();
        self.diff_over(keys)
    }

    /// Fails an in-flight sync whose attempt deadline passed.
    pub(crate) fn fire_location_timeout(&mut self) {
        if self.timers.is_expired(&Timer::LocationSyncTimeout, self.now_ms) {
            let err = CallError::of_kind(ErrorKind::Timeout, "location sync timed out after 5m");
            self.complete_location_sync(Err(err));
        }
    }

    /// Applies the completion of the in-flight `updateAddressLocations`.
    pub(crate) fn complete_location_sync(&mut self, outcome: Result<CallOutput, CallError>) {
        let Some(InFlightSync { diff, keys, identities, more, .. }) = self.locations_updater.end_pass(&mut self.timers) else { return };
        let retry_after = outcome.as_ref().err().and_then(|e| e.retry_after_ms);
        let result = match &outcome {
            Ok(_) => {
                let mut pairs = BTreeSet::new();
                let touched = self.nrp.apply_collecting(diff, &mut pairs);
                for id in touched.iter().chain(identities.iter()) {
                    self.note_drain_candidate(id);
                }
                self.note_pod_record_candidates(&touched, &pairs);
                SyncOutcome::Ok
            }
            Err(e) if is_terminal_status(e) => {
                self.metrics.inc(metrics::LOCATION_SYNC_TERMINAL_ERRORS_TOTAL, &[]);
                SyncOutcome::Terminal
            }
            Err(_) => SyncOutcome::Retry,
        };
        if !matches!(result, SyncOutcome::Ok) {
            // A failed pass loses nothing: its keys are recomputed next time.
            self.dirty.extend(keys);
            for id in &identities {
                self.note_drain_candidate(id);
            }
        }
        match result {
            SyncOutcome::Ok => {
                self.check_pending_service_deletions();
                self.check_pending_pod_deletions();
                self.locations_updater.failures = 0;
                self.locations_updater.abandoned_reported = false;
                if more {
                    // The next batch of the same sync, at once.
                    self.locations_updater.continuation = true;
                    self.trigger_location_sync();
                    self.locations_updater.rearm(&mut self.timers);
                }
            }
            SyncOutcome::Terminal => {
                self.check_pending_service_deletions();
                self.check_pending_pod_deletions();
                if self.pending_deletions.is_empty() {
                    self.locations_updater.failures = 0;
                    self.locations_updater.abandoned_reported = false;
                } else {
                    self.schedule_location_retry(retry_after);
                }
            }
            SyncOutcome::Retry => self.schedule_location_retry(retry_after),
        }
    }

    /// A ready pod-finalizer removal failed: the LocationsUpdater retries (with backoff) instead
    /// of reporting success. A pass in flight re-runs the checks when it completes.
    pub(crate) fn location_retry_for_pods(&mut self) {
        if self.locations_updater.in_flight.is_none() && self.locations_updater.retry_at_ms.is_none() {
            self.schedule_location_retry(None);
        }
    }

    /// The retry after a failed pass: the backoff, or the server's capped `Retry-After` if longer;
    /// a new trigger cuts the backoff short (post-init), never the server's hold.
    fn schedule_location_retry(&mut self, retry_after_ms: Option<u64>) {
        self.locations_updater.failures = self.locations_updater.failures.saturating_add(1);
        let delay = backoff_ms(self.locations_updater.failures, &mut self.rng);
        let hold = throttle_hold_ms(retry_after_ms, self.config.retry_after_cap_ms());
        if let Some(h) = hold {
            let until = self.now_ms.saturating_add(h);
            self.locations_updater.not_before_ms = self.locations_updater.not_before_ms.max(Some(until));
        }
        self.locations_updater.set_retry(&mut self.timers, Some(self.now_ms.saturating_add(delay.max(hold.unwrap_or(0)))));
        if self.locations_updater.failures >= LOCATION_SYNC_REPORT_THRESHOLD
            && !self.locations_updater.abandoned_reported
            && !self.pending_deletions.is_empty()
        {
            self.locations_updater.abandoned_reported = true;
            self.metrics.inc(metrics::LOCATION_SYNC_ABANDONED_TOTAL, &[("reason", "drain_attempts_exhausted")]);
        }
    }
}
