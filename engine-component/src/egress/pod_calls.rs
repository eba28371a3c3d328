//! Pod finalizer calls and the per-pod order of pod events (ENGINE.md 2.4, 8.3).
//!
//! Kubernetes writes are asynchronous calls here, so "add the finalizer, then register" becomes:
//! the pod is admitted -> `add-pod-finalizer` starts -> its completion registers the pod's
//! addresses (or not, when the pod is gone or replaced). Upstream's informer handles one event at
//! a time; the engine keeps that order per pod: while a finalizer call for a pod is queued or in
//! flight, later events for the same pod wait (in order) and run once it completes. At most one
//! pod call per pod is ever outstanding, and a record's removal never races the same pod's
//! re-admission.

use super::pod::pod_key;
use crate::backoff::OPERATION_TIMEOUT_MS;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{Call, CallError, CallId, CallOutput, ErrorKind, Io, KubeCall, ObjectRef, Pod};
use crate::metrics;
use crate::names::REASON_FINALIZER_ADD_FAILED;
use crate::timers::Timer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a pod call is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodCallKind {
    /// `podInformerAddPod` after admission: add the finalizer, then register the addresses of
    /// `pod` under `identity`.
    AddFinalizer {
        identity: Identity,
        pod: Box<Pod>,
        /// Addresses a replacement drain took from this pod just before (identity, host IP,
        /// addresses): if the re-registration places nothing, they are drain-gated after all.
        #[serde(default)]
        replaced: Option<(Identity, String, Vec<String>)>,
        /// The start-up pass registered the pod already: the completion registers nothing.
        #[serde(default)]
        registered: bool,
    },
    /// A direct removal (decision release-no-drain, or an unlabelled pod carrying the
    /// finalizer); a failure queues a retry record for `identity`.
    RemoveDirect { identity: Identity },
    /// CheckPendingPodDeletions: the record of this pod drained.
    RemoveForRecord,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCall {
    pub key: String,
    pub target: ObjectRef,
    pub kind: PodCallKind,
    /// When a started call counts as timed out (a failure; its late completion is ignored).
    #[serde(default)]
    pub deadline_ms: u64,
}

/// A pod watch event kept back while an earlier call for the same pod is outstanding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodEvent {
    Applied(Pod),
    Deleted(Pod),
}

/// The pods with a call outstanding, the calls queued and in flight, and the events waiting
/// behind them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PodCalls {
    /// Pod keys with a pod call queued or in flight.
    #[serde(rename = "pod_busy", default)]
    pub(crate) busy: BTreeSet<String>,
    /// Pod calls to start on the next tick.
    #[serde(rename = "pod_queue", default)]
    pub(crate) queue: VecDeque<PodCall>,
    /// Pod calls in flight, by call id.
    #[serde(rename = "pod_calls", default, deserialize_with = "crate::snapshot::int_keyed")]
    pub(crate) in_flight: BTreeMap<CallId, PodCall>,
    /// Pod events waiting behind an outstanding call for the same pod, in order.
    #[serde(rename = "pod_deferred", default)]
    pub(crate) deferred: BTreeMap<String, VecDeque<PodEvent>>,
    /// Pods whose call completed and whose deferred events may run.
    #[serde(rename = "pod_released", default)]
    pub(crate) released: BTreeSet<String>,
}

fn is_gone(e: &CallError) -> bool {
    matches!(e.kind, ErrorKind::NotFound | ErrorKind::Replaced)
}

impl Engine {
    /// Queues a pod call (started by the next tick) and marks the pod busy.
    pub(crate) fn queue_pod_call(&mut self, key: &str, target: ObjectRef, kind: PodCallKind) {
        self.egress.calls.busy.insert(key.to_string());
        self.egress.calls.queue.push_back(PodCall { key: key.to_string(), target, kind, deadline_ms: 0 });
    }

    /// Whether a pod call for `key` is queued or in flight.
    pub fn is_pod_busy(&self, key: &str) -> bool {
        self.egress.calls.busy.contains(key)
    }

    /// Pod calls queued or in flight.
    pub fn pod_calls_outstanding(&self) -> usize {
        self.egress.calls.queue.len() + self.egress.calls.in_flight.len()
    }

    /// The pod's outstanding call is over: later events for it may run, and its record (a check
    /// may have skipped it while busy) is looked at by the next pass.
    pub(crate) fn release_pod_key(&mut self, key: &str) {
        self.egress.calls.busy.remove(key);
        if self.egress.calls.deferred.contains_key(key) {
            self.egress.calls.released.insert(key.to_string());
        }
        if self.egress.records.contains(key) {
            self.egress.records.candidates.insert(key.to_string());
            if self.locations_updater.retry_at_ms.is_none() {
                self.trigger_location_sync();
            }
        }
    }

    /// Starts every queued pod call.
    pub(crate) fn start_pod_calls(&mut self, io: &mut dyn Io) {
        while let Some(mut pc) = self.egress.calls.queue.pop_front() {
            let call = match &pc.kind {
                PodCallKind::AddFinalizer { .. } => KubeCall::AddPodFinalizer(pc.target.clone()),
                PodCallKind::RemoveDirect { .. } | PodCallKind::RemoveForRecord => KubeCall::RemovePodFinalizer(pc.target.clone()),
            };
            let id: CallId = io.start(Call::Kube(call));
            pc.deadline_ms = self.now_ms.saturating_add(OPERATION_TIMEOUT_MS);
            self.timers.set(Timer::PodCallTimeout(id), pc.deadline_ms);
            self.egress.calls.in_flight.insert(id, pc);
        }
    }

    /// Fails every pod call whose deadline passed (a transient timeout).
    pub(crate) fn fire_pod_call_timeouts(&mut self) {
        let expired: Vec<CallId> = self
            .timers
            .expired(self.now_ms)
            .filter_map(|t| match t {
                Timer::PodCallTimeout(id) => Some(*id),
                _ => None,
            })
            .collect();
        for id in expired {
            self.complete_pod_call(id, &Err(CallError::of_kind(ErrorKind::Timeout, "pod call timed out after 5m")));
        }
    }

    /// Applies the completion of a pod call. False if `id` is not a pod call.
    pub(crate) fn complete_pod_call(&mut self, id: CallId, outcome: &Result<CallOutput, CallError>) -> bool {
        let Some(pc) = self.egress.calls.in_flight.remove(&id) else { return false };
        self.timers.stop(&Timer::PodCallTimeout(id));
        match pc.kind {
            PodCallKind::AddFinalizer { identity, pod, replaced, registered } => {
                match outcome {
                    Ok(_) if registered => {}
                    Ok(_) => self.register_pod(&identity, &pod),
                    Err(e) if is_gone(e) => {}
                    Err(e) => {
                        // Still registered (returning would kill its egress), without NRP-drain
                        // protection.
                        self.metrics.inc(metrics::POD_FINALIZER_ADD_FAILED_TOTAL, &[]);
                        self.queue_pod_event(
                            pc.target.clone(),
                            REASON_FINALIZER_ADD_FAILED,
                            format!("Failed to add ServiceGateway cleanup finalizer after retries; egress pod registered without NRP-drain protection: {e}"),
                        );
                        if !registered {
                            self.register_pod(&identity, &pod);
                        }
                    }
                }
                if let Some((old_id, hint, drained)) = replaced {
                    self.finish_replacement(&identity, &pod, &old_id, &hint, &drained);
                }
            }
            PodCallKind::RemoveDirect { identity } => {
                if let Err(e) = outcome {
                    if !is_gone(e) {
                        self.metrics.inc(metrics::POD_FINALIZER_REMOVE_FAILED_TOTAL, &[]);
                        self.enqueue_pod_finalizer_retry(&pc.key, &pc.target, &identity);
                    }
                }
            }
            PodCallKind::RemoveForRecord => match outcome {
                Ok(_) => self.finish_record(&pc.key, &pc.target.uid),
                Err(e) if is_gone(e) => self.finish_record(&pc.key, &pc.target.uid),
                Err(_) => {
                    // Kept: the LocationsUpdater retries instead of reporting success.
                    self.egress.records.candidates.insert(pc.key.clone());
                    self.location_retry_for_pods();
                }
            },
        }
        self.release_pod_key(&pc.key);
        true
    }

    /// A replacement drain creates no record and (same identity) never schedules the NAT
    /// gateway's deletion, trusting the re-registration that follows. When that registered
    /// nothing for the pod (it is gone, or no address found a location), the drained addresses
    /// go through DeletePod after all: drain-gated under the pod's name (its finalizer waits for
    /// them) and, when nothing else holds the identity, the NAT gateway is scheduled for
    /// deletion instead of leaking.
    fn finish_replacement(&mut self, identity: &Identity, pod: &Pod, old_id: &Identity, hint: &str, drained: &[String]) {
        let key = pod_key(pod);
        let registered = self.desired.keys_of_pod(&key).next().is_some()
            || self.pending_pods.get(identity).is_some_and(|b| b.of_pod(&key).next().is_some());
        if registered || drained.is_empty() {
            return;
        }
        self.delete_pod(old_id, hint, drained, &pod.meta.namespace, &pod.meta.name, &pod.meta.uid);
        self.retire_if_empty(old_id);
    }

    /// A pod watch event: runs now, or waits behind the pod's outstanding call.
    pub(crate) fn on_pod_event(&mut self, ev: PodEvent) {
        let pod = match &ev {
            PodEvent::Applied(p) | PodEvent::Deleted(p) => p,
        };
        let key = pod_key(pod);
        if self.egress.calls.busy.contains(&key) || self.egress.calls.deferred.contains_key(&key) {
            self.egress.calls.deferred.entry(key).or_default().push_back(ev);
            return;
        }
        self.process_pod_event(ev);
    }

    /// Runs the events that waited behind completed pod calls.
    pub(crate) fn run_deferred_pod_events(&mut self) {
        while let Some(key) = self.egress.calls.released.pop_first() {
            while !self.egress.calls.busy.contains(&key) {
                let Some(queue) = self.egress.calls.deferred.get_mut(&key) else { break };
                let Some(ev) = queue.pop_front() else {
                    self.egress.calls.deferred.remove(&key);
                    break;
                };
                if queue.is_empty() {
                    self.egress.calls.deferred.remove(&key);
                }
                self.process_pod_event(ev);
            }
        }
    }
}
