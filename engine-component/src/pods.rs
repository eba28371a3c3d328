//! Egress pods (ENGINE.md 2.4, 2.6, 8.3): the pod informer's handlers on top of the egress entry
//! points of [`crate::egress`], and the pod finalizer calls.
//!
//! Kubernetes writes are asynchronous calls here, so "add the finalizer, then register" becomes:
//! the pod is admitted -> `add-pod-finalizer` starts -> its completion registers the pod's
//! addresses (or not, when the pod is gone or replaced). Upstream's informer handles one event at
//! a time; the engine keeps that order per pod: while a finalizer call for a pod is queued or in
//! flight, later events for the same pod wait (in order) and run once it completes. At most one
//! pod call per pod is ever outstanding, and a record's removal never races the same pod's
//! re-admission.

use crate::egress::{FinalizerDecision, PodDeletionRecord};
use crate::engine::Engine;
use crate::identity::{canonical, check_egress_identity, family, parse_ip, EgressLabelError, Family, Identity};
use crate::io::{Call, CallError, CallId, CallOutput, ErrorKind, EventType, Io, KubeCall, KubeEventRecord, ObjectKind, ObjectRef, Pod};
use crate::backoff::OPERATION_TIMEOUT_MS;
use crate::metrics;
use crate::timers::Timer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The pod label whose value names the egress identity.
pub const EGRESS_LABEL: &str = "kubernetes.azure.com/service-egress-gateway";
/// The pod cleanup finalizer.
pub const POD_FINALIZER: &str = "servicegateway.azure.com/pod-cleanup";

pub const REASON_INVALID_EGRESS_LABEL: &str = "ServiceGatewayInvalidEgressLabel";
pub const REASON_RESERVED_EGRESS_LABEL: &str = "ServiceGatewayReservedEgressLabel";
pub const REASON_INVALID_POD_IP: &str = "ServiceGatewayInvalidPodIP";
pub const REASON_NO_NODE_LOCATION: &str = "ServiceGatewayNoNodeLocation";
pub const REASON_FINALIZER_ADD_FAILED: &str = "ServiceGatewayFinalizerAddFailed";

// ---------------------------------------------------------------------- pure helpers

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.meta.namespace, pod.meta.name)
}

/// The lower-cased egress label value ("" when absent or empty).
pub fn egress_identity(pod: &Pod) -> String {
    pod.meta.label(EGRESS_LABEL).unwrap_or("").to_ascii_lowercase()
}

pub fn has_label_key(pod: &Pod) -> bool {
    pod.meta.label(EGRESS_LABEL).is_some()
}

pub fn has_pod_finalizer(pod: &Pod) -> bool {
    pod.meta.finalizers.iter().any(|f| f == POD_FINALIZER)
}

/// `PodEgressAddresses`: `status.podIPs` falling back to `status.podIP`; canonical text (an
/// unparsable string is kept verbatim), empty entries dropped, duplicates removed.
pub fn pod_addresses(pod: &Pod) -> Vec<String> {
    let raw: Vec<&String> = if pod.pod_ips.iter().any(|s| !s.is_empty()) { pod.pod_ips.iter().collect() } else { vec![&pod.pod_ip] };
    let mut out: Vec<String> = Vec::new();
    for r in raw {
        let r = r.trim();
        if r.is_empty() {
            continue;
        }
        let c = canonical(r);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// hostIP set and at least one pod address.
pub fn has_ips(pod: &Pod) -> bool {
    !pod.host_ip.is_empty() && !pod_addresses(pod).is_empty()
}

/// No deletionTimestamp and phase Running or Pending.
pub fn is_valid(pod: &Pod) -> bool {
    pod.meta.deletion_timestamp.is_none() && (pod.phase == "Running" || pod.phase == "Pending")
}

/// `PodNodeLocationsByFamily`: per family, the first node IP of that family from
/// `status.hostIPs`, falling back to `status.hostIP` (canonical).
pub fn locations_by_family(pod: &Pod) -> BTreeMap<Family, String> {
    let mut out = BTreeMap::new();
    for raw in pod.host_ips.iter().chain(std::iter::once(&pod.host_ip)) {
        if let Some(ip) = parse_ip(raw.trim()) {
            out.entry(family(&ip)).or_insert_with(|| ip.to_string());
        }
    }
    out
}

/// The node location for one pod address: the same-family node IP (never the IPv6 address under
/// the IPv4 host IP).
pub fn location_for(locations: &BTreeMap<Family, String>, addr: &str) -> Option<String> {
    let ip = parse_ip(addr)?;
    locations.get(&family(&ip)).cloned()
}

/// `egressPodUpdateActions(old, new)` -> (needsRemove, needsAdd): the decision table of 2.4,
/// first matching row wins.
pub fn update_actions(old: &Pod, new: &Pod) -> (bool, bool) {
    let old_label = egress_identity(old);
    let new_label = egress_identity(new);
    let old_ips = pod_addresses(old);
    let new_ips = pod_addresses(new);
    let old_has = !old.host_ip.is_empty() && !old_ips.is_empty();
    let new_has = !new.host_ip.is_empty() && !new_ips.is_empty();
    let ips_changed = old_ips != new_ips || locations_by_family(old) != locations_by_family(new);
    let old_valid = is_valid(old);
    let new_valid = is_valid(new);
    if old_label != new_label {
        (!old_label.is_empty() && old_has, !new_label.is_empty() && new_has && new_valid)
    } else if new_label.is_empty() {
        (false, false)
    } else if old_valid && !new_valid && old_has {
        (true, false)
    } else if !old_has && new_has && new_valid {
        (false, true)
    } else if old_has && !new_has {
        (true, false)
    } else if !old_valid && new_valid && old_has && new_has && !ips_changed {
        (false, true)
    } else if old_has && new_has && ips_changed && new_valid {
        (true, true)
    } else if old_has && new_has && !new_valid {
        (true, false)
    } else {
        (false, false)
    }
}

// ---------------------------------------------------------------------- pod calls

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

fn is_gone(e: &CallError) -> bool {
    matches!(e.kind, ErrorKind::NotFound | ErrorKind::Replaced)
}

impl Engine {
    pub(crate) fn queue_pod_event(&mut self, target: ObjectRef, reason: &str, message: String) {
        self.queued_events.push(KubeEventRecord { target, kind: ObjectKind::Pod, event_type: EventType::Warning, reason: reason.to_string(), message });
    }

    /// Queues a pod call (started by the next tick) and marks the pod busy.
    pub(crate) fn queue_pod_call(&mut self, key: &str, target: ObjectRef, kind: PodCallKind) {
        self.pod_busy.insert(key.to_string());
        self.pod_queue.push_back(PodCall { key: key.to_string(), target, kind, deadline_ms: 0 });
    }

    /// Whether a pod call for `key` is queued or in flight.
    pub fn is_pod_busy(&self, key: &str) -> bool {
        self.pod_busy.contains(key)
    }

    /// Pod calls queued or in flight.
    pub fn pod_calls_outstanding(&self) -> usize {
        self.pod_queue.len() + self.pod_calls.len()
    }

    /// The pod's outstanding call is over: later events for it may run, and its record (a check
    /// may have skipped it while busy) is looked at by the next pass.
    pub(crate) fn release_pod_key(&mut self, key: &str) {
        self.pod_busy.remove(key);
        if self.pod_deferred.contains_key(key) {
            self.pod_released.insert(key.to_string());
        }
        if self.pending_pod_deletions.contains_key(key) {
            self.pod_check_candidates.insert(key.to_string());
            if self.locations_updater.retry_at_ms.is_none() {
                self.trigger_location_sync();
            }
        }
    }

    /// Starts every queued pod call.
    pub(crate) fn start_pod_calls(&mut self, io: &mut dyn Io) {
        while let Some(mut pc) = self.pod_queue.pop_front() {
            let call = match &pc.kind {
                PodCallKind::AddFinalizer { .. } => KubeCall::AddPodFinalizer(pc.target.clone()),
                PodCallKind::RemoveDirect { .. } | PodCallKind::RemoveForRecord => KubeCall::RemovePodFinalizer(pc.target.clone()),
            };
            let id: CallId = io.start(Call::Kube(call));
            pc.deadline_ms = self.now_ms.saturating_add(OPERATION_TIMEOUT_MS);
            self.timers.set(Timer::PodCallTimeout(id), pc.deadline_ms);
            self.pod_calls.insert(id, pc);
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
        let Some(pc) = self.pod_calls.remove(&id) else { return false };
        self.timers.stop(&Timer::PodCallTimeout(id));
        match pc.kind {
            PodCallKind::AddFinalizer { identity, pod, replaced } => {
                match outcome {
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
                        self.register_pod(&identity, &pod);
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
                    self.pod_check_candidates.insert(pc.key.clone());
                    self.location_retry_for_pods();
                }
            },
        }
        self.release_pod_key(&pc.key);
        true
    }

    /// The record's finalizer is gone (or the pod is): compare-and-delete on the UID.
    pub(crate) fn finish_record(&mut self, key: &str, uid: &str) {
        if let Some(rec) = self.remove_pod_record_if_uid(key, uid) {
            if rec.recovered_at_startup {
                self.metrics.inc(metrics::FINALIZERS_RECOVERED_TOTAL, &[]);
            }
        }
    }

    /// `enqueuePodFinalizerRetry`: a finalizer-only record, retried by the next pass.
    fn enqueue_pod_finalizer_retry(&mut self, key: &str, target: &ObjectRef, identity: &Identity) {
        if self.pending_pod_deletions.get(key).is_some_and(|r| r.uid.is_empty() || target.uid.is_empty() || r.uid == target.uid) {
            self.pod_check_candidates.insert(key.to_string());
        } else {
            let rec = PodDeletionRecord {
                namespace: target.namespace.clone(),
                name: target.name.clone(),
                uid: target.uid.clone(),
                service_uid: identity.clone(),
                addresses: Vec::new(),
                other_addresses: Vec::new(),
                verify_service_drain: false,
                is_last_pod: false,
                recovered_at_startup: false,
                at_ms: self.now_ms,
            };
            self.put_pod_record(key, rec);
        }
        self.trigger_location_sync();
    }

    /// A replacement drain creates no record and (same identity) never schedules the NAT
    /// gateway's deletion, trusting the re-registration that follows. When that registered
    /// nothing for the pod (it is gone, or no address found a location), the drained addresses
    /// go through DeletePod after all: drain-gated under the pod's name (its finalizer waits for
    /// them) and, when nothing else holds the identity, the NAT gateway is scheduled for
    /// deletion instead of leaking.
    fn finish_replacement(&mut self, identity: &Identity, pod: &Pod, old_id: &Identity, hint: &str, drained: &[String]) {
        let key = pod_key(pod);
        let registered = self.desired.keys_of_pod(&key).next().is_some() || self.pending_pods.get(identity).is_some_and(|b| b.of_pod(&key).next().is_some());
        if registered || drained.is_empty() {
            return;
        }
        self.delete_pod(old_id, hint, drained, &pod.meta.namespace, &pod.meta.name, &pod.meta.uid);
        self.retire_if_empty(old_id);
    }

    /// An identity whose NAT gateway is live but that no pod holds any more is scheduled for
    /// deletion.
    pub(crate) fn retire_if_empty(&mut self, id: &Identity) {
        if id.is_empty() || id.is_reserved() || self.desired.has_outbound(id) || self.pending_pods.get(id).is_some_and(|b| !b.is_empty()) {
            return;
        }
        let live = match self.ops.get(id) {
            Some(op) => op.kind() == crate::config::ServiceKind::Outbound && matches!(op.state, crate::state::ResourceState::Created | crate::state::ResourceState::UpdateInProgress),
            None => self.nrp.has_nat_gateway(id),
        };
        if live {
            self.mark_outbound_for_deletion(id);
            self.trigger_location_sync();
        }
    }

    /// Remembers addresses a replacement drain took from a live pod without a record.
    fn shadow_drained(&mut self, key: &str, uid: &str, id: &Identity, addrs: &[String]) {
        let pairs = addrs.iter().map(|a| (id.clone(), a.clone())).collect();
        self.shadow_pairs(key, uid, pairs);
    }

    /// Adds (identity, address) pairs to the pod's shadow; keeps only those that may be mapped.
    pub(crate) fn shadow_pairs(&mut self, key: &str, uid: &str, pairs: Vec<(Identity, String)>) {
        let entry = self.pod_shadows.entry(key.to_string()).or_insert_with(|| (uid.to_string(), Vec::new()));
        if entry.0 != uid {
            *entry = (uid.to_string(), Vec::new());
        }
        for pair in pairs {
            if !entry.1.contains(&pair) {
                entry.1.push(pair);
            }
        }
        self.prune_shadow(key);
    }

    /// Removes the pod's shadow, returning (UID, pairs that may still be mapped).
    pub(crate) fn take_shadow(&mut self, key: &str) -> (String, Vec<(Identity, String)>) {
        let r = self.prune_shadow(key);
        self.pod_shadows.remove(key);
        r
    }

    /// Whether NRP maps `addr` to `id`, or the sync in flight may.
    pub(crate) fn may_map(&self, id: &Identity, addr: &str) -> bool {
        self.nrp.maps_address_to(id, addr)
            || self.locations_updater.in_flight.as_ref().is_some_and(|f| f.diff.locations.values().any(|l| l.addresses.get(addr).is_some_and(|s| s.contains(id))))
    }

    /// Drops the shadow addresses that can no longer be mapped; returns those that may.
    fn prune_shadow(&mut self, key: &str) -> (String, Vec<(Identity, String)>) {
        let Some((uid, pairs)) = self.pod_shadows.remove(key) else { return (String::new(), Vec::new()) };
        let pending: Vec<(Identity, String)> = pairs.into_iter().filter(|(id, a)| self.may_map(id, a)).collect();
        if !pending.is_empty() {
            self.pod_shadows.insert(key.to_string(), (uid.clone(), pending.clone()));
        }
        (uid, pending)
    }

    /// A direct finalizer removal (release-no-drain). If a replacement drain took addresses from
    /// this pod that may still be mapped (no record covers them), it becomes a drain record for
    /// them instead.
    pub(crate) fn release_direct(&mut self, key: &str, target: ObjectRef, identity: Identity) {
        let (uid, pending) = self.prune_shadow(key);
        if !pending.is_empty() && (uid.is_empty() || target.uid.is_empty() || uid == target.uid) {
            let service = pending[0].0.clone();
            let addresses: Vec<String> = pending.iter().filter(|(i, _)| *i == service).map(|(_, a)| a.clone()).collect();
            // The shadow itself is carried into the record by put_pod_record.
            let other_addresses: Vec<(Identity, String)> = Vec::new();
            let rec = PodDeletionRecord {
                namespace: target.namespace.clone(),
                name: target.name.clone(),
                uid: target.uid.clone(),
                service_uid: service,
                addresses,
                other_addresses,
                verify_service_drain: false,
                is_last_pod: false,
                recovered_at_startup: false,
                at_ms: self.now_ms,
            };
            self.put_pod_record(key, rec);
            self.trigger_location_sync();
            return;
        }
        self.queue_pod_call(key, target, PodCallKind::RemoveDirect { identity });
    }

    /// Registers each pod address under its same-family node IP.
    fn register_pod(&mut self, identity: &Identity, pod: &Pod) {
        let key = pod_key(pod);
        let locs = locations_by_family(pod);
        for addr in pod_addresses(pod) {
            if parse_ip(&addr).is_none() {
                continue;
            }
            match location_for(&locs, &addr) {
                Some(loc) => self.add_pod(identity, &key, &pod.meta.uid, &loc, &addr),
                None => self.queue_pod_event(
                    pod.meta.object_ref(),
                    REASON_NO_NODE_LOCATION,
                    format!("No same-family node IP for pod address {addr:?}; the node must expose that IP family in status.hostIPs"),
                ),
            }
        }
    }

    // ------------------------------------------------------------------ watch events

    /// A pod watch event: runs now, or waits behind the pod's outstanding call.
    pub(crate) fn on_pod_event(&mut self, ev: PodEvent) {
        let pod = match &ev {
            PodEvent::Applied(p) | PodEvent::Deleted(p) => p,
        };
        let key = pod_key(pod);
        if self.pod_busy.contains(&key) || self.pod_deferred.contains_key(&key) {
            self.pod_deferred.entry(key).or_default().push_back(ev);
            return;
        }
        self.process_pod_event(ev);
    }

    /// Runs the events that waited behind completed pod calls.
    pub(crate) fn run_deferred_pod_events(&mut self) {
        while let Some(key) = self.pod_released.pop_first() {
            while !self.pod_busy.contains(&key) {
                let Some(queue) = self.pod_deferred.get_mut(&key) else { break };
                let Some(ev) = queue.pop_front() else {
                    self.pod_deferred.remove(&key);
                    break;
                };
                if queue.is_empty() {
                    self.pod_deferred.remove(&key);
                }
                self.process_pod_event(ev);
            }
        }
    }

    fn process_pod_event(&mut self, ev: PodEvent) {
        match ev {
            PodEvent::Applied(new) => self.on_pod_applied(new),
            PodEvent::Deleted(pod) => {
                let key = pod_key(&pod);
                self.pod_objects.remove(&key);
                // Deleted from the API, its finalizers went with it; one still listing ours
                // only left the watch's label selector and still exists.
                let gone = !has_pod_finalizer(&pod);
                self.informer_remove_pod_gone(&pod, gone);
                // The object is gone: nothing of it is left to protect.
                self.pod_shadows.remove(&key);
            }
        }
    }

    fn on_pod_applied(&mut self, new: Pod) {
        let key = pod_key(&new);
        let old = self.pod_objects.remove(&key);
        match old {
            None => {
                if has_label_key(&new) {
                    self.pod_objects.insert(key, new.clone());
                    self.informer_add_pod(&new);
                } else if has_pod_finalizer(&new) {
                    // Unlabelled but carrying our finalizer: still ours to finish with.
                    self.informer_remove_pod(&new);
                }
            }
            Some(old) if !old.meta.uid.is_empty() && !new.meta.uid.is_empty() && old.meta.uid != new.meta.uid => {
                // The watch missed a deletion: the old pod is gone, a same-name pod replaced it.
                self.informer_remove_pod(&old);
                if self.pod_busy.contains(&key) {
                    self.pod_deferred.entry(key).or_default().push_front(PodEvent::Applied(new));
                } else if has_label_key(&new) {
                    self.pod_objects.insert(key, new.clone());
                    self.informer_add_pod(&new);
                }
            }
            Some(old) => {
                if has_label_key(&new) {
                    self.pod_objects.insert(key, new.clone());
                }
                self.reconcile_pod_update(&old, &new);
            }
        }
    }

    /// `reconcileEgressPodUpdate`.
    fn reconcile_pod_update(&mut self, old: &Pod, new: &Pod) {
        match update_actions(old, new) {
            (true, true) => {
                if self.admission(new, false).is_some() {
                    let replaced = self.drain_for_replace(old, new);
                    self.admit_pod(new, replaced);
                } else {
                    // The new state will not be registered: a genuine removal (drain-gated
                    // under the pod's name), then the admission's Warning Events.
                    self.informer_remove_pod(old);
                    if !self.pod_busy.contains(&pod_key(new)) {
                        self.admission(new, true);
                    }
                }
            }
            (true, false) => self.informer_remove_pod(old),
            (false, true) => self.informer_add_pod(new),
            (false, false) => {}
        }
    }

    /// `podInformerAddPod`: admission, then the finalizer call (registration on completion).
    pub(crate) fn informer_add_pod(&mut self, pod: &Pod) {
        if pod.meta.deletion_timestamp.is_some() && !egress_identity(pod).is_empty() {
            self.informer_remove_pod(pod);
            return;
        }
        self.admit_pod(pod, None);
    }

    /// The admission checks of 2.4: the identity to register under, or None (with the Warning
    /// Events when `events`).
    fn admission(&mut self, pod: &Pod, events: bool) -> Option<Identity> {
        let label = egress_identity(pod);
        if label.is_empty() || pod.meta.deletion_timestamp.is_some() || (pod.phase != "Running" && pod.phase != "Pending") {
            return None;
        }
        let addrs = pod_addresses(pod);
        if pod.host_ip.is_empty() || addrs.is_empty() {
            return None;
        }
        let target = pod.meta.object_ref();
        if parse_ip(pod.host_ip.trim()).is_none() {
            if events {
                self.queue_pod_event(target, REASON_INVALID_POD_IP, format!("Malformed HostIP {:?} on the pod status", pod.host_ip));
            }
            return None;
        }
        let mut valid = 0;
        for a in &addrs {
            if parse_ip(a).is_none() {
                if events {
                    self.queue_pod_event(target.clone(), REASON_INVALID_POD_IP, format!("Malformed PodIP {a:?} on the pod status"));
                }
            } else {
                valid += 1;
            }
        }
        if valid == 0 {
            return None;
        }
        match check_egress_identity(&label) {
            Ok(()) => {}
            Err(EgressLabelError::Reserved) => {
                if events {
                    self.queue_pod_event(
                        target,
                        REASON_RESERVED_EGRESS_LABEL,
                        format!("Egress gateway label {label:?} is reserved for the cluster's default outbound gateway and cannot be used; choose a different value"),
                    );
                }
                return None;
            }
            Err(EgressLabelError::Invalid) => {
                if events {
                    self.queue_pod_event(
                        target,
                        REASON_INVALID_EGRESS_LABEL,
                        format!("Invalid egress gateway label {label:?}: must be a valid Azure resource name (alphanumerics, '-', '_', '.'; start alphanumeric; 1-73 chars)"),
                    );
                }
                return None;
            }
        }
        let identity = Identity::new(&label);
        if self.ops.get(&identity).is_some_and(|o| o.kind() == crate::config::ServiceKind::Inbound) {
            // Kind collision: never ride (or tear down) an inbound service; no finalizer either,
            // since its removal could never be authorised.
            return None;
        }
        Some(identity)
    }

    /// Admits `pod` and starts its finalizer add. `replaced`: the addresses a replacement drain
    /// just took from the same pod (identity, host IP, addresses).
    fn admit_pod(&mut self, pod: &Pod, replaced: Option<(Identity, String, Vec<String>)>) {
        let Some(identity) = self.admission(pod, true) else { return };
        let key = pod_key(pod);
        self.queue_pod_call(&key, pod.meta.object_ref(), PodCallKind::AddFinalizer { identity, pod: Box::new(pod.clone()), replaced });
    }

    /// `podInformerRemovePod`.
    pub(crate) fn informer_remove_pod(&mut self, pod: &Pod) {
        self.informer_remove_pod_gone(pod, false)
    }

    /// `gone`: the object was deleted from the API (a DELETED event without our finalizer): no
    /// direct removal is started (records still drain its addresses).
    fn informer_remove_pod_gone(&mut self, pod: &Pod, gone: bool) {
        let key = pod_key(pod);
        let label = egress_identity(pod);
        let target = pod.meta.object_ref();
        // A drain record of this pod (from its earlier identity) owns the finalizer.
        let recorded = self.pending_pod_deletions.get(&key).is_some_and(|r| r.uid.is_empty() || pod.meta.uid.is_empty() || r.uid == pod.meta.uid);
        if label.is_empty() {
            if has_pod_finalizer(pod) && !recorded && !gone {
                self.release_direct(&key, target, Identity::default());
            }
            return;
        }
        if check_egress_identity(&label).is_err() {
            // Never admitted (nor tracked): nothing can be drained for it.
            if has_pod_finalizer(pod) && !recorded && !gone {
                self.release_direct(&key, target, Identity::default());
            }
            return;
        }
        let identity = Identity::new(&label);
        let addrs = pod_addresses(pod);
        let result = if pod.host_ip.is_empty() || addrs.is_empty() {
            self.delete_pod_without_addresses(&identity, &pod.meta.namespace, &pod.meta.name, &pod.meta.uid)
        } else {
            self.delete_pod(&identity, &canonical(pod.host_ip.trim()), &addrs, &pod.meta.namespace, &pod.meta.name, &pod.meta.uid)
        };
        if result.decision == FinalizerDecision::ReleaseNoDrain && !gone {
            self.release_direct(&key, target, identity);
        }
    }

    /// `podInformerDrainForReplace`: drains only the addresses a live pod is leaving, with no
    /// namespace/name (so no record is created for the live pod). Returns what it drained.
    fn drain_for_replace(&mut self, old: &Pod, new: &Pod) -> Option<(Identity, String, Vec<String>)> {
        let old_label = egress_identity(old);
        if old_label.is_empty() || old.host_ip.is_empty() {
            return None;
        }
        let old_addrs = pod_addresses(old);
        if old_addrs.is_empty() {
            return None;
        }
        let new_label = egress_identity(new);
        let to_drain: Vec<String> = if old_label != new_label {
            old_addrs
        } else {
            let old_locs = locations_by_family(old);
            let new_locs = locations_by_family(new);
            let new_addrs = pod_addresses(new);
            old_addrs.into_iter().filter(|a| !new_addrs.contains(a) || location_for(&old_locs, a) != location_for(&new_locs, a)).collect()
        };
        if to_drain.is_empty() || check_egress_identity(&old_label).is_err() {
            return None;
        }
        let id = Identity::new(&old_label);
        let hint = canonical(old.host_ip.trim());
        self.shadow_drained(&pod_key(old), &old.meta.uid, &id, &to_drain);
        if old_label == new_label {
            self.delete_pod_for_replacement(&id, &hint, &to_drain, "", "", "");
        } else {
            self.delete_pod(&id, &hint, &to_drain, "", "", "");
        }
        Some((id, hint, to_drain))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ObjectMeta;

    fn pod(label: Option<&str>, phase: &str, ips: &[&str], host: &[&str], deleting: bool) -> Pod {
        Pod {
            meta: ObjectMeta {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u1".into(),
                labels: label.map(|l| vec![(EGRESS_LABEL.to_string(), l.to_string())]).unwrap_or_default(),
                deletion_timestamp: deleting.then(|| "2026-01-01T00:00:00Z".to_string()),
                ..Default::default()
            },
            node_name: "n1".into(),
            phase: phase.into(),
            pod_ip: ips.first().map(|s| s.to_string()).unwrap_or_default(),
            pod_ips: ips.iter().map(|s| s.to_string()).collect(),
            host_ip: host.first().map(|s| s.to_string()).unwrap_or_default(),
            host_ips: host.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn addresses_and_locations() {
        let p = pod(Some("E"), "Running", &["10.1.0.1", "FD00::0001", "10.1.0.1"], &["10.0.0.1", "FD00::A"], false);
        assert_eq!(pod_addresses(&p), vec!["10.1.0.1".to_string(), "fd00::1".to_string()]);
        let locs = locations_by_family(&p);
        assert_eq!(location_for(&locs, "fd00::1"), Some("fd00::a".to_string()));
        assert_eq!(location_for(&locs, "10.1.0.1"), Some("10.0.0.1".to_string()));
        assert_eq!(egress_identity(&p), "e");
        let mut q = p.clone();
        q.pod_ips.clear();
        assert_eq!(pod_addresses(&q), vec!["10.1.0.1".to_string()]);
        q.pod_ip.clear();
        assert!(!has_ips(&q));
    }
}
