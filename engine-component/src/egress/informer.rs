//! The pod informer's handlers (ENGINE.md 2.4, 8.3): pod watch events become the egress entry
//! points (admission, the update decision table, drains for a replacement, removals), with the
//! Warning Events of what cannot be admitted.

use super::pod::{
    egress_identity, has_label_key, has_pod_finalizer, location_for, locations_by_family, pod_addresses, pod_key, update_actions,
};
use super::pod_calls::{PodCallKind, PodEvent};
use super::{FinalizerDecision, PodDeletionRecord};
use crate::engine::Engine;
use crate::identity::{canonical, check_egress_identity, parse_ip, EgressLabelError, Identity};
use crate::io::{EventType, KubeEventRecord, ObjectKind, ObjectRef, Pod};
use crate::names::{REASON_INVALID_EGRESS_LABEL, REASON_INVALID_POD_IP, REASON_NO_NODE_LOCATION, REASON_RESERVED_EGRESS_LABEL};

impl Engine {
    pub(crate) fn queue_pod_event(&mut self, target: ObjectRef, reason: &str, message: String) {
        self.queued_events.push(KubeEventRecord {
            target,
            kind: ObjectKind::Pod,
            event_type: EventType::Warning,
            reason: reason.to_string(),
            message,
        });
    }

    pub(super) fn process_pod_event(&mut self, ev: PodEvent) {
        match ev {
            PodEvent::Applied(new) => self.on_pod_applied(new),
            PodEvent::Deleted(pod) => {
                let key = pod_key(&pod);
                self.egress.pod_objects.remove(&key);
                // Deleted from the API, its finalizers went with it; one still listing ours
                // only left the watch's label selector and still exists.
                let gone = !has_pod_finalizer(&pod);
                self.informer_remove_pod_gone(&pod, gone);
                // The object is gone: nothing of it is left to protect.
                self.egress.shadows.forget(&key);
            }
        }
    }

    fn on_pod_applied(&mut self, new: Pod) {
        let key = pod_key(&new);
        let old = self.egress.pod_objects.remove(&key);
        match old {
            None => {
                if has_label_key(&new) {
                    self.egress.pod_objects.insert(key, new.clone());
                    self.informer_add_pod(&new);
                } else if has_pod_finalizer(&new) {
                    // Unlabelled but carrying our finalizer: still ours to finish with.
                    self.informer_remove_pod(&new);
                }
            }
            Some(old) if !old.meta.uid.is_empty() && !new.meta.uid.is_empty() && old.meta.uid != new.meta.uid => {
                // The watch missed a deletion: the old pod is gone, a same-name pod replaced it.
                self.informer_remove_pod(&old);
                if self.egress.calls.busy.contains(&key) {
                    self.egress.calls.deferred.entry(key).or_default().push_front(PodEvent::Applied(new));
                } else if has_label_key(&new) {
                    self.egress.pod_objects.insert(key, new.clone());
                    self.informer_add_pod(&new);
                }
            }
            Some(old) => {
                if has_label_key(&new) {
                    self.egress.pod_objects.insert(key, new.clone());
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
                    if !self.egress.calls.busy.contains(&pod_key(new)) {
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
        self.queue_pod_call(
            &key,
            pod.meta.object_ref(),
            PodCallKind::AddFinalizer { identity, pod: Box::new(pod.clone()), replaced, registered: false },
        );
    }

    /// Start-up step 2 for a live pod of the initial list: its addresses are registered at once
    /// (a NAT gateway NRP already holds keeps them published: no unbind and re-bind around the
    /// restart), and its finalizer is added when it lacks ours (the completion registers
    /// nothing more).
    pub(crate) fn startup_admit_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        if !has_label_key(pod) {
            return;
        }
        self.egress.pod_objects.insert(key.clone(), pod.clone());
        let Some(identity) = self.admission(pod, true) else { return };
        self.register_pod(&identity, pod);
        if !has_pod_finalizer(pod) {
            self.queue_pod_call(
                &key,
                pod.meta.object_ref(),
                PodCallKind::AddFinalizer { identity, pod: Box::new(pod.clone()), replaced: None, registered: true },
            );
        }
    }

    /// Registers each pod address under its same-family node IP.
    pub(super) fn register_pod(&mut self, identity: &Identity, pod: &Pod) {
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
        let recorded = self.egress.records.get(&key).is_some_and(|r| r.uid.is_empty() || pod.meta.uid.is_empty() || r.uid == pod.meta.uid);
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

    /// A direct finalizer removal (release-no-drain). If a replacement drain took addresses from
    /// this pod that may still be mapped (no record covers them), it becomes a drain record for
    /// them instead.
    pub(crate) fn release_direct(&mut self, key: &str, target: ObjectRef, identity: Identity) {
        let (uid, pending) = self.prune_shadow(key);
        if !pending.is_empty() && (uid.is_empty() || target.uid.is_empty() || uid == target.uid) {
            let service = pending[0].0.clone();
            let addresses: Vec<String> = pending.iter().filter(|(i, _)| *i == service).map(|(_, a)| a.clone()).collect();
            // The shadow itself is carried into the record by put_pod_record.
            let rec = PodDeletionRecord::new(target, service, addresses, self.now_ms);
            self.put_pod_record(key, rec);
            self.trigger_location_sync();
            return;
        }
        self.queue_pod_call(key, target, PodCallKind::RemoveDirect { identity });
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

    /// An identity whose NAT gateway is live but that no pod holds any more is scheduled for
    /// deletion.
    pub(crate) fn retire_if_empty(&mut self, id: &Identity) {
        if id.is_empty() || id.is_reserved() || self.desired.has_outbound(id) || self.pending_pods.has_pods(id) {
            return;
        }
        let live = match self.ops.get(id) {
            Some(op) => {
                op.kind() == crate::config::ServiceKind::Outbound
                    && matches!(op.state, crate::state::ResourceState::Created | crate::state::ResourceState::UpdateInProgress)
            }
            None => self.nrp.has_nat_gateway(id),
        };
        if live {
            self.mark_outbound_for_deletion(id);
            self.trigger_location_sync();
        }
    }
}
