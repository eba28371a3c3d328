//! The egress half of the state machine (ENGINE.md 2.4, 2.6, 3.4-3.6, 4.2 outbound rows,
//! 6.3, 6.5, 8): pod addresses per egress identity, the entry points `AddPodWithUID`,
//! `DeletePod`, `DeletePodForReplacement`, `DeletePodWithoutAddresses` and
//! `CheckPendingPodDeletions`, and what feeds them:
//! - [`buffer`]: `pendingPods`, the pods waiting for their NAT gateway;
//! - [`records`]: `pendingPodDeletions`, the pod finalizers held for a drain, and
//!   `CheckPendingPodDeletions`;
//! - [`pod_calls`]: the pod finalizer calls and the per-pod order of pod events;
//! - [`informer`], [`pod`]: pod watch events -> entry points, and reading a Pod;
//! - [`workers`]: the outbound step machines (NAT gateway create and delete).
//!
//! Every lookup an entry point needs is indexed (live addresses by pod key and by address in
//! [`crate::desired::Desired`], NRP addresses by address in [`crate::nrp::NrpMirror`], buffered
//! pods by address and pod key in [`buffer::PodBuffer`], records by identity in
//! [`DeletionRecords`]), so one call costs O(size of the pod or identity it touches), never a
//! scan of every pod.

mod buffer;
mod informer;
pub(crate) mod pod;
mod pod_calls;
mod records;
mod workers;

pub use buffer::BufferedPod;
pub(crate) use buffer::PendingPods;
pub(crate) use pod_calls::PodCalls;
pub use pod_calls::{PodCallKind, PodEvent};
pub use records::PodDeletionRecord;
pub(crate) use records::{DeletionRecords, Shadows};

use crate::config::{ServiceConfig, ServiceDetails, ServiceKind};
use crate::desired::Key;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{IpVersion, ObjectRef, Pod};
use crate::state::{ResourceState, STATE_LABELS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The egress state besides the pod buffers. It is flattened into the engine's snapshot, where
/// its fields keep the names and order they had as engine fields.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Egress {
    /// `pendingPodDeletions` and the keys the next check looks at.
    #[serde(flatten)]
    pub(crate) records: DeletionRecords,
    /// The last Pod object seen per `ns/name` (egress-labelled pods), for update decisions.
    #[serde(default)]
    pub(crate) pod_objects: BTreeMap<String, Pod>,
    /// Pod finalizer calls, and the pod events waiting behind them.
    #[serde(flatten)]
    pub(crate) calls: PodCalls,
    /// Addresses drained from live pods without a record.
    #[serde(rename = "pod_shadows", default)]
    pub(crate) shadows: Shadows,
    /// `clusterHasIPv6` (only a positive answer is cached).
    #[serde(default)]
    pub(crate) cluster_has_ipv6: bool,
}

/// What the informer may do with the pod's cleanup finalizer after a delete. The empty value
/// (`Reject`) means "do not release": only an explicit `ReleaseNoDrain` authorises an inline
/// removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinalizerDecision {
    Reject,
    HoldForServiceDeletion,
    HoldForDrain,
    ReleaseNoDrain,
}

/// `DeletePodResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletePodResult {
    pub is_last_pod: bool,
    pub enqueued: bool,
    pub decision: FinalizerDecision,
}

impl DeletePodResult {
    fn rejected() -> Self {
        DeletePodResult { is_last_pod: false, enqueued: false, decision: FinalizerDecision::Reject }
    }
    fn decide(is_last_pod: bool, enqueued: bool) -> Self {
        let decision = if is_last_pod {
            FinalizerDecision::HoldForServiceDeletion
        } else if enqueued {
            FinalizerDecision::HoldForDrain
        } else {
            FinalizerDecision::ReleaseNoDrain
        };
        DeletePodResult { is_last_pod, enqueued, decision }
    }
}

/// Empty means wildcard.
fn compatible(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || a == b
}

fn object(ns: &str, name: &str, uid: &str) -> ObjectRef {
    ObjectRef { namespace: ns.to_string(), name: name.to_string(), uid: uid.to_string() }
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

impl Engine {
    // ------------------------------------------------------------------ inspection

    /// The pods buffered for `id` (arrival order).
    pub fn buffered_pods(&self, id: &Identity) -> Vec<&BufferedPod> {
        self.pending_pods.get(id).map(|b| b.iter().collect()).unwrap_or_default()
    }

    pub fn pod_deletion(&self, pod_key: &str) -> Option<&PodDeletionRecord> {
        self.egress.records.get(pod_key)
    }

    pub fn pod_deletions(&self) -> &BTreeMap<String, PodDeletionRecord> {
        self.egress.records.all()
    }

    /// `outboundIdentityPodRefCount[id]`.
    pub fn pod_ref_count(&self, id: &Identity) -> u32 {
        self.desired.outbound_ref_count(id)
    }

    /// The cached answer of the cluster IPv6 decision (only a positive answer is cached).
    pub fn cluster_ipv6_cached(&self) -> bool {
        self.egress.cluster_has_ipv6
    }

    // ------------------------------------------------------------------ helpers

    /// The NAT gateway's public IP families (2.6): IPv4, plus IPv6 when any node has a genuine
    /// IPv6 InternalIP. A positive answer is cached for good.
    pub(crate) fn outbound_ip_families(&mut self) -> Vec<IpVersion> {
        if !self.egress.cluster_has_ipv6 && self.endpoints.cluster_has_ipv6() {
            self.egress.cluster_has_ipv6 = true;
        }
        if self.egress.cluster_has_ipv6 {
            vec![IpVersion::V4, IpVersion::V6]
        } else {
            vec![IpVersion::V4]
        }
    }

    /// The node table may have gained IPv6 (2.6): once it has, every outbound service decided
    /// IPv4-only is brought to both families. The decision is then cached, so this runs once;
    /// with no outbound service yet it is left to the next creation.
    pub(crate) fn on_cluster_families_changed(&mut self) {
        if self.egress.cluster_has_ipv6 || !self.endpoints.cluster_has_ipv6() {
            return;
        }
        let untracked: Vec<Identity> = self.nrp.nat_gateways().iter().filter(|id| !self.ops.contains(id)).cloned().collect();
        if untracked.is_empty() && (0..STATE_LABELS.len()).all(|i| self.ops.count(i, ServiceKind::Outbound) == 0) {
            return;
        }
        let families = self.outbound_ip_families();
        // NAT gateways a previous instance created (before a restart) were decided while the
        // cluster was IPv4-only, or they would have been widened then: they are widened too.
        for id in untracked {
            self.widen_untracked_nat_gateway(&id, &families);
        }
        let stale: Vec<Identity> = self
            .ops
            .iter()
            .filter(|(_, op)| op.config.outbound_config().is_some_and(|c| c.ip_families != families))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.set_outbound_families(&id, &families);
        }
    }

    /// A NAT gateway NRP holds, that no operation tracks (a previous instance created it) and
    /// that lacks IPv6 while the cluster has it: an outbound update brings it to `families`, as
    /// for a `Created` one (its IPv4 public IP exists: only the missing ones are created).
    pub(crate) fn widen_untracked_nat_gateway(&mut self, id: &Identity, families: &[IpVersion]) {
        if id.is_reserved() || !self.desired.has_outbound(id) {
            return;
        }
        let mut op = self.new_op(ServiceConfig::outbound(id.clone(), families.to_vec(), None), ResourceState::UpdateInProgress);
        op.last_applied_config = Some(Arc::new(ServiceConfig::outbound(id.clone(), vec![IpVersion::V4], None)));
        self.insert_op(id, op);
        self.trigger_dispatch(id);
    }

    /// The outbound `UpdateService`: the desired families change. A live NAT gateway goes to
    /// UpdateInProgress (its missing public IPs are created and it is re-PUT with them); an op
    /// not yet live creates with the new families (a create in flight drifts into that update);
    /// a deleting one recreates with them.
    fn set_outbound_families(&mut self, id: &Identity, families: &[IpVersion]) {
        let Some(op) = self.ops.get(id) else { return };
        let (state, parked) = (op.state, op.retries_exhausted);
        self.update_op(id, |op| {
            if let ServiceDetails::Outbound(c) = &mut Arc::make_mut(&mut op.config).details {
                c.ip_families = families.to_vec();
            }
        });
        match state {
            ResourceState::Created => {
                self.update_op(id, |op| {
                    op.state = ResourceState::UpdateInProgress;
                    op.reset();
                });
                self.trigger_dispatch(id);
            }
            ResourceState::NotStarted | ResourceState::CreationInProgress | ResourceState::UpdateInProgress => {
                self.update_op(id, |op| op.reset());
                if parked {
                    self.trigger_dispatch(id);
                }
            }
            ResourceState::DeletionPending | ResourceState::DeletionInProgress | ResourceState::Unknown(_) => {}
        }
    }

    /// An egress identity that would ride a tracked inbound op (kind collision).
    fn collides_with_inbound(&self, id: &Identity) -> bool {
        self.ops.get(id).is_some_and(|o| o.kind() == ServiceKind::Inbound)
    }

    fn has_live_or_buffered(&self, id: &Identity) -> bool {
        self.desired.has_outbound(id) || self.pending_pods.has_pods(id)
    }

    fn may_have_reached_nrp(&self, id: &Identity) -> bool {
        self.ops.get(id).is_some_and(|o| o.state != ResourceState::NotStarted)
            || self.nrp.has_nat_gateway(id)
            || self.may_have_nrp_addresses(id)
    }

    fn live_outbound_is(&self, id: &Identity, loc: &str, addr: &str) -> bool {
        self.desired.get(loc, addr).is_some_and(|p| p.outbound.as_ref() == Some(id))
    }

    fn apply_pod_live(&mut self, id: &Identity, key: &str, uid: &str, loc: &str, addr: &str) {
        if self.desired.set_outbound(id, loc, addr, key, uid) {
            self.mark_dirty(loc, addr);
        }
        // A live address may back an NRP address a service-level verification waits on.
        self.egress.records.recheck_verifications(id);
    }

    // ------------------------------------------------------------------ AddPod

    /// `AddPodWithUID(identity, "ns/name", podUID, location, address)` (4.2 outbound rows).
    pub fn add_pod(&mut self, id: &Identity, pod_key: &str, pod_uid: &str, loc: &str, addr: &str) {
        if id.is_empty() || loc.is_empty() || addr.is_empty() || id.is_reserved() || self.collides_with_inbound(id) {
            return;
        }
        // A pod reaching AddPod is live: a stale record must not strip its finalizer.
        self.drop_compatible_record(pod_key, pod_uid);
        let Some(op) = self.ops.get(id) else {
            if self.nrp.has_nat_gateway(id) {
                self.apply_pod_live(id, pod_key, pod_uid, loc, addr);
                self.trigger_location_sync();
                return;
            }
            let families = self.outbound_ip_families();
            let trig =
                pod_key.split_once('/').map(|(ns, n)| (ns.to_string(), n.to_string())).unwrap_or((pod_key.to_string(), String::new()));
            let mut op = self.new_op(ServiceConfig::outbound(id.clone(), families, Some(trig.clone())), ResourceState::NotStarted);
            op.triggering_pod = Some(trig);
            self.insert_op(id, op);
            self.buffer_pod(id, pod_key, pod_uid, loc, addr);
            self.trigger_dispatch(id);
            return;
        };
        match op.state {
            ResourceState::NotStarted | ResourceState::CreationInProgress | ResourceState::DeletionInProgress => {
                self.buffer_pod(id, pod_key, pod_uid, loc, addr);
            }
            ResourceState::Created | ResourceState::UpdateInProgress => {
                self.apply_pod_live(id, pod_key, pod_uid, loc, addr);
                self.trigger_location_sync();
            }
            ResourceState::DeletionPending => {
                // A delete that was already attempted is not transactional (resources may be
                // gone); a create/update still in flight is pre-empted into the delete. Both
                // finish first and re-create with the buffered pod.
                if op.retry_count > 0 || op.in_flight_config.is_some() || self.dispatcher.is_active(id) {
                    self.buffer_pod(id, pod_key, pod_uid, loc, addr);
                    return;
                }
                // Revive.
                self.update_op(id, |op| op.state = ResourceState::Created);
                self.remove_pending_deletion(id);
                for key in self.egress.records.keys_of(id) {
                    if self.egress.records.clear_last_pod(&key) {
                        self.egress.records.candidates.insert(key);
                    }
                }
                self.apply_pod_live(id, pod_key, pod_uid, loc, addr);
                self.trigger_location_sync();
            }
            ResourceState::Unknown(_) => {}
        }
    }

    // ------------------------------------------------------------------ DeletePod

    /// `DeletePod(identity, hintLocation, addresses, ns, name, uid)` (8.1).
    pub fn delete_pod(&mut self, id: &Identity, hint: &str, addresses: &[String], ns: &str, name: &str, uid: &str) -> DeletePodResult {
        self.delete_pod_inner(id, hint, addresses, ns, name, uid, false)
    }

    /// `DeletePodForReplacement`: drains a live pod's leaving addresses without ever scheduling
    /// the NAT gateway's deletion in the drain/add gap.
    pub fn delete_pod_for_replacement(
        &mut self,
        id: &Identity,
        hint: &str,
        addresses: &[String],
        ns: &str,
        name: &str,
        uid: &str,
    ) -> DeletePodResult {
        self.delete_pod_inner(id, hint, addresses, ns, name, uid, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn delete_pod_inner(
        &mut self,
        id: &Identity,
        hint: &str,
        addresses: &[String],
        ns: &str,
        name: &str,
        uid: &str,
        replacement: bool,
    ) -> DeletePodResult {
        if id.is_empty() || hint.is_empty() || addresses.is_empty() || id.is_reserved() || self.collides_with_inbound(id) {
            return DeletePodResult::rejected();
        }
        let key = if !ns.is_empty() && !name.is_empty() { format!("{ns}/{name}") } else { String::new() };
        let mut drained: Vec<String> = Vec::new();
        let mut trigger = false;
        for addr in addresses.iter().filter(|a| !a.is_empty()) {
            let loc = self.resolve_outbound_location(id, hint, addr);
            let may = self.may_have_reached_nrp(id);
            if self.pending_pods.cancel(id, &loc, addr, &key, uid) {
                // A teardown scheduled for a possibly half-created NAT holds the finalizer too.
                let scheduled = self.handle_empty_outbound(id);
                if may || scheduled {
                    push_unique(&mut drained, addr);
                    trigger = true;
                }
                continue;
            }
            if self.pending_pods.held_by_other_uid(id, &loc, addr, &key, uid) {
                continue;
            }
            if !self.live_outbound_is(id, &loc, addr) {
                if self.nrp.maps_address_to(id, addr) {
                    push_unique(&mut drained, addr);
                    trigger = true;
                }
                continue;
            }
            let owned = self.desired.get(&loc, addr).is_some_and(|p| {
                compatible(&key, p.outbound_pod_key.as_deref().unwrap_or(""))
                    && compatible(uid, p.outbound_pod_uid.as_deref().unwrap_or(""))
            });
            if !owned {
                continue;
            }
            // A missing or non-positive ref-count still removes and still drain-gates.
            self.desired.clear_outbound(&loc, addr);
            self.mark_dirty(&loc, addr);
            push_unique(&mut drained, addr);
            trigger = true;
        }
        let mut is_last = false;
        if !drained.is_empty() && !replacement && !self.has_live_or_buffered(id) {
            is_last = true;
            self.mark_outbound_for_deletion(id);
        }
        let mut enqueued = false;
        if !key.is_empty() {
            if !drained.is_empty() {
                let recovered = self.egress.records.get(&key).is_some_and(|r| compatible(uid, &r.uid) && r.recovered_at_startup);
                let rec =
                    PodDeletionRecord::new(object(ns, name, uid), id.clone(), drained, self.now_ms).last_pod(is_last).recovered(recovered);
                self.put_pod_record(&key, rec);
                enqueued = true;
            } else if self.egress.records.get(&key).is_some_and(|r| compatible(uid, &r.uid)) {
                enqueued = true;
            }
        }
        if trigger {
            self.trigger_location_sync();
        }
        DeletePodResult::decide(is_last, enqueued)
    }

    /// The location `addr` is live (or buffered) under for `id`; the hint otherwise.
    fn resolve_outbound_location(&self, id: &Identity, hint: &str, addr: &str) -> String {
        if self.live_outbound_is(id, hint, addr) {
            return hint.to_string();
        }
        if let Some(loc) = self.desired.outbound_locations_of(addr).find(|loc| self.live_outbound_is(id, loc, addr)) {
            return loc.to_string();
        }
        if let Some((_, e)) = self.pending_pods.get(id).and_then(|b| b.at_address(addr).next()) {
            return e.location.clone();
        }
        hint.to_string()
    }

    /// `markOutboundServiceForDeletionLocked`: the last pod is gone.
    pub(crate) fn mark_outbound_for_deletion(&mut self, id: &Identity) {
        if id.is_reserved() {
            return;
        }
        match self.ops.get(id).map(|o| o.state) {
            None => {
                let op = self
                    .new_op(ServiceConfig::bare(id.clone(), ServiceKind::Outbound, ObjectRef::default()), ResourceState::DeletionPending);
                self.insert_op(id, op);
            }
            // Never demoted: a revive would race the running delete.
            Some(ResourceState::DeletionInProgress) | Some(ResourceState::Unknown(_)) => return,
            Some(_) => {
                self.update_op(id, |op| op.state = ResourceState::DeletionPending);
            }
        }
        self.add_pending_deletion(id, false);
    }

    /// `handleEmptyOutboundServiceLocked`: after a buffered pod was cancelled. Returns true when
    /// an Azure cleanup is scheduled or running (the pod's finalizer must be held).
    pub(crate) fn handle_empty_outbound(&mut self, id: &Identity) -> bool {
        if self.pending_pods.has_pods(id) || self.desired.outbound_ref_count(id) > 0 || self.desired.has_outbound(id) {
            return false;
        }
        let Some(op) = self.ops.get(id) else { return false };
        if op.kind() != ServiceKind::Outbound {
            return false;
        }
        match op.state {
            ResourceState::NotStarted => {
                if op.retry_count > 0 || op.creation_failed_terminal {
                    // A failed create may have left a public IP or NAT gateway behind.
                    self.update_op(id, |op| op.state = ResourceState::DeletionInProgress);
                    self.add_pending_deletion(id, false);
                    self.trigger_dispatch(id);
                    return true;
                }
                // Never attempted: nothing exists in Azure.
                self.remove_op(id);
                self.drop_buffers(id);
                self.pending_pods.remove(id);
                self.remove_pending_deletion(id);
                false
            }
            ResourceState::CreationInProgress => {
                // The create completion pre-empts into the delete.
                self.update_op(id, |op| op.state = ResourceState::DeletionInProgress);
                self.add_pending_deletion(id, false);
                true
            }
            ResourceState::DeletionInProgress => true,
            _ => false,
        }
    }

    // ------------------------------------------------------------------ DeletePodWithoutAddresses

    /// `DeletePodWithoutAddresses(identity, ns, name, uid)` (8.2): a terminating pod seen
    /// without IPs.
    pub fn delete_pod_without_addresses(&mut self, id: &Identity, ns: &str, name: &str, uid: &str) -> DeletePodResult {
        if id.is_empty() || ns.is_empty() || name.is_empty() || id.is_reserved() || self.collides_with_inbound(id) {
            return DeletePodResult::rejected();
        }
        let key = format!("{ns}/{name}");
        if let Some(r) = self.egress.records.get(&key).filter(|r| compatible(uid, &r.uid)) {
            return DeletePodResult::decide(r.is_last_pod, true);
        }
        let replacement = self.pod_key_owned_by_other_uid(id, &key, uid);
        let mut may = self.may_have_reached_nrp(id);

        let mut addresses: Vec<String> = Vec::new();
        let mut removed_any = false;
        let buffered =
            self.pending_pods.take(id, |buf| buf.of_pod(&key).filter(|(_, e)| compatible(uid, &e.pod_uid)).map(|(s, _)| s).collect());
        for e in buffered {
            push_unique(&mut addresses, &e.address);
            removed_any = true;
        }
        let live: Vec<Key> = self
            .desired
            .keys_of_pod(&key)
            .filter(|(l, a)| {
                self.desired
                    .get(l, a)
                    .is_some_and(|p| p.outbound.as_ref() == Some(id) && compatible(uid, p.outbound_pod_uid.as_deref().unwrap_or("")))
            })
            .cloned()
            .collect();
        for (loc, addr) in live {
            self.desired.clear_outbound(&loc, &addr);
            self.mark_dirty(&loc, &addr);
            push_unique(&mut addresses, &addr);
            removed_any = true;
        }
        if removed_any {
            may |= self.handle_empty_outbound(id);
            if replacement {
                if may {
                    self.trigger_location_sync();
                }
                return DeletePodResult::decide(false, false);
            }
            if !may {
                return DeletePodResult::decide(false, false);
            }
        }
        if replacement || !may {
            return DeletePodResult::decide(false, false);
        }
        let is_last = !self.has_live_or_buffered(id);
        if is_last {
            self.mark_outbound_for_deletion(id);
        }
        let verify = addresses.is_empty();
        let rec = PodDeletionRecord::new(object(ns, name, uid), id.clone(), addresses, self.now_ms)
            .verify_service_drain(verify)
            .last_pod(is_last);
        self.put_pod_record(&key, rec);
        self.trigger_location_sync();
        DeletePodResult::decide(is_last, true)
    }

    /// A live or buffered address of `id` owned by `key` under another (non-empty) UID.
    fn pod_key_owned_by_other_uid(&self, id: &Identity, key: &str, uid: &str) -> bool {
        if key.is_empty() || uid.is_empty() {
            return false;
        }
        let live = self.desired.keys_of_pod(key).any(|(l, a)| {
            self.desired.get(l, a).is_some_and(|p| {
                p.outbound.as_ref() == Some(id) && p.outbound_pod_uid.as_deref().is_some_and(|u| !u.is_empty() && u != uid)
            })
        });
        live || self.pending_pods.get(id).is_some_and(|b| b.of_pod(key).any(|(_, e)| !e.pod_uid.is_empty() && e.pod_uid != uid))
    }

    /// Egress consistency (O(state); tests only): derived indexes equal a rebuild, every busy pod
    /// has an outstanding call, nothing reserved is tracked.
    pub(crate) fn check_egress_invariants(&self) -> Result<(), String> {
        for (id, b) in self.pending_pods.iter() {
            b.check_index()?;
            if b.is_empty() {
                return Err(format!("empty pod buffer kept for {id}"));
            }
        }
        self.egress.records.check_index()?;
        for key in &self.egress.calls.busy {
            let queued = self.egress.calls.queue.iter().any(|c| &c.key == key);
            let flying = self.egress.calls.in_flight.values().any(|c| &c.key == key);
            let worker = self.dispatcher.active.values().any(|a| a.finalizer_target.as_ref().is_some_and(|(k, _)| k == key));
            if !(queued || flying || worker) {
                return Err(format!("pod {key} busy without an outstanding call"));
            }
        }
        for c in self.egress.calls.queue.iter().chain(self.egress.calls.in_flight.values()) {
            if !self.egress.calls.busy.contains(&c.key) {
                return Err(format!("pod call for {} without the busy mark", c.key));
            }
        }
        if self.ops.iter().any(|(id, _)| id.is_reserved()) || self.nrp.has_nat_gateway(&Identity::new(crate::identity::RESERVED_IDENTITY)) {
            return Err("the reserved identity is tracked".into());
        }
        Ok(())
    }
}
