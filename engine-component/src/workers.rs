//! The per-service step machines of ENGINE.md 6.1 (inbound create), 6.2 (inbound update) and
//! 6.4 (inbound delete).
//!
//! A worker is an [`ActiveOp`] keyed by identity. Each step starts exactly one call through
//! [`Io::start`] and records the call id it waits for; the completion of that call advances the
//! worker to its next step. Local steps (building the load balancer, skipping an unchanged
//! status write) run without a call. When the last step ends, the worker's result goes to
//! `OnServiceCreationComplete` and the identity is re-queued (`requeueIfMoreWork`).
//!
//! Go's "worker panic ⇒ failed completion" maps onto this model as: any completion of any shape
//! (an error, or an output the step did not expect) is handled as data; nothing panics.

use crate::admission::{build_inbound, BuiltInbound};
use crate::config::ServiceConfig;
use crate::engine::Engine;
use crate::identity::{family, parse_ip, Identity};
use crate::io::{
    BackendPool, Call, CallError, CallId, CallOutput, CloudCall, ErrorKind, Io, KubeCall, LoadBalancerIngress, NatReference, ServiceType,
    SgwServiceRequest,
};
use crate::metrics;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The NRP error code that means "addresses still reference this service".
pub const OVERLAY_ERROR_CODE: &str = "ServiceWithOverlayMappingsCannotBeDeleted";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Work {
    Create,
    Update,
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Not started yet.
    Begin,
    AddFinalizers,
    PutPublicIp,
    PutLoadBalancer,
    Register,
    PatchIngress,
    UpdateLoadBalancer,
    DetachPool,
    DeleteLoadBalancer,
    Unregister,
    DeletePublicIp,
    /// The Service still exists but wants no load balancer from us any more: our ingress
    /// entry goes (after the public IP's deletion: only when the status changed since the
    /// early clearing).
    ClearIngress,
    /// The same, before the public IP's deletion, while its address is known (6.4).
    ClearIngressFirst,
    RemoveFinalizers,
    /// An outbound update with nothing to add: skipped, success without an Azure call.
    SkipOutbound,
    // Outbound create (6.3).
    /// PUT the public IP of family `pip_index`.
    PutNatPublicIp,
    PutNatGateway,
    RegisterOutbound,
    // Outbound delete (6.5).
    GetSgwServices,
    ClearNatReference,
    GetNatGateway,
    DetachNatGateway,
    UnregisterOutbound,
    DeleteNatGateway,
    DeleteNatPublicIp,
    DeleteNatPublicIpV6,
    /// `RemoveLastPodFinalizers`: one last-pod record at a time.
    RemoveLastPodFinalizer,
}

/// One running worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveOp {
    pub work: Work,
    pub step: Step,
    /// The config snapshot this attempt works on (InFlightConfig for create/update).
    pub config: Arc<ServiceConfig>,
    /// The call this worker waits for.
    pub call: Option<CallId>,
    pub started_ms: u64,
    pub deadline_ms: u64,
    /// The address the public IP PUT returned.
    pub pip_address: Option<String>,
    /// Delete: the last failing step's error (`lastErr`).
    pub last_err: Option<CallError>,
    /// Outbound create/update: the public IP being PUT (index into the families to PUT).
    #[serde(default)]
    pub pip_index: usize,
    /// Outbound delete: a disassociation sub-step failed (counted once).
    #[serde(default)]
    pub disassociate_failed: bool,
    /// Outbound delete: last-pod records still to release (pod keys).
    #[serde(default)]
    pub finalizer_keys: Vec<String>,
    /// Outbound delete: the last-pod finalizer removal in flight (pod key, UID).
    #[serde(default)]
    pub finalizer_target: Option<(String, String)>,
    /// Outbound delete: a last-pod finalizer could not be removed.
    #[serde(default)]
    pub finalizer_failed: bool,
    /// The longest `Retry-After` any call of this attempt was answered with (a delete goes on
    /// past a throttled step; the attempt's failure still carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ActiveOp {
    pub fn new(work: Work, config: Arc<ServiceConfig>, now: u64, deadline: u64) -> ActiveOp {
        ActiveOp {
            work,
            step: Step::Begin,
            config,
            call: None,
            started_ms: now,
            deadline_ms: deadline,
            pip_address: None,
            last_err: None,
            pip_index: 0,
            disassociate_failed: false,
            finalizer_keys: Vec::new(),
            finalizer_target: None,
            finalizer_failed: false,
            retry_after_ms: None,
        }
    }
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// Build-time validation error: never retried until the spec changes.
    pub terminal: bool,
    /// `ServiceWithOverlayMappingsCannotBeDeleted`: go back and drain.
    pub overlay: bool,
    /// The `error_code` metric label.
    pub error_code: String,
    pub message: String,
    /// The server's `Retry-After` (uncapped): the next attempt waits at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl AttemptFailure {
    pub fn terminal(message: impl Into<String>) -> AttemptFailure {
        AttemptFailure {
            terminal: true,
            overlay: false,
            error_code: "ValidationError".into(),
            message: message.into(),
            retry_after_ms: None,
        }
    }
    pub fn transient(error_code: &str, message: impl Into<String>) -> AttemptFailure {
        AttemptFailure { terminal: false, overlay: false, error_code: error_code.into(), message: message.into(), retry_after_ms: None }
    }
    pub fn timeout() -> AttemptFailure {
        AttemptFailure::transient("timeout", "operation timed out after 5m")
    }
    pub fn from_call(e: &CallError) -> AttemptFailure {
        AttemptFailure {
            terminal: false,
            overlay: is_overlay_error(e),
            error_code: classify(e).into(),
            message: e.to_string(),
            retry_after_ms: e.retry_after_ms,
        }
    }
}

/// The result of one attempt as `OnServiceCreationComplete` receives it.
pub type AttemptResult = Result<(), AttemptFailure>;

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerResult {
    Done,
    /// Success without any Azure operation (outbound update skip): not recorded as an attempt.
    Skipped,
    Failed(AttemptFailure),
    /// The Service is gone or replaced before any Azure call: drop tracking, no callback.
    Dropped,
}

/// `error_code` label of `service_operations_total`.
pub fn classify(e: &CallError) -> &'static str {
    let code = e.code.to_ascii_lowercase();
    if e.kind == ErrorKind::Timeout {
        "timeout"
    } else if code.contains("quota") || code.contains("limitreached") || code.contains("limitexceeded") {
        "quota_exceeded"
    } else if e.kind == ErrorKind::Throttled || e.status == 429 {
        "throttled"
    } else if e.kind == ErrorKind::Conflict || e.status == 409 {
        "conflict"
    } else if e.kind == ErrorKind::NotFound || e.status == 404 {
        "not_found"
    } else if e.status >= 500 {
        "internal_error"
    } else {
        "unknown"
    }
}

/// The overlay rejection, from the typed code or anywhere in the text.
pub fn is_overlay_error(e: &CallError) -> bool {
    e.code == OVERLAY_ERROR_CODE || e.message.contains(OVERLAY_ERROR_CODE) || e.code.contains(OVERLAY_ERROR_CODE)
}

/// 404 on a delete/unregister: already gone.
pub fn is_not_found(e: &CallError) -> bool {
    e.status == 404 || e.kind == ErrorKind::NotFound
}

/// The ingress list after writing `ip`: a same-family IP entry is replaced, other-family and
/// hostname entries are kept.
pub fn merged_ingress(current: &[LoadBalancerIngress], ip: &str) -> Vec<LoadBalancerIngress> {
    let fam = parse_ip(ip).map(|a| family(&a));
    let mut out = Vec::with_capacity(current.len() + 1);
    let mut placed = false;
    for e in current {
        let same = !e.ip.is_empty() && (e.ip == ip || (fam.is_some() && parse_ip(&e.ip).map(|a| family(&a)) == fam));
        if same {
            if !placed {
                out.push(LoadBalancerIngress { ip: ip.to_string(), hostname: String::new() });
                placed = true;
            }
        } else {
            out.push(e.clone());
        }
    }
    if !placed {
        out.push(LoadBalancerIngress { ip: ip.to_string(), hostname: String::new() });
    }
    out
}

fn inbound_request(id: &Identity, is_delete: bool, pools: Vec<BackendPool>) -> SgwServiceRequest {
    SgwServiceRequest {
        name: id.as_str().to_string(),
        service_type: ServiceType::Inbound,
        is_delete,
        backend_pools: pools,
        nat_gateway: NatReference::Absent,
        is_default: None,
    }
}

/// What a step does next.
pub(crate) enum Next {
    Call(Step, Call),
    Finish(WorkerResult),
}

impl Engine {
    /// Runs a freshly dispatched worker up to its first call.
    pub(crate) fn start_worker(&mut self, id: &Identity, io: &mut dyn Io) {
        let Some(a) = self.dispatcher.active.get(id) else { return };
        let first = match (a.work, a.config.is_inbound()) {
            (Work::Create, false) => self.begin_outbound_create(id),
            (Work::Delete, false) => self.begin_outbound_delete(),
            (Work::Create, _) => self.begin_create(id),
            (Work::Update, true) => self.begin_update(id),
            (Work::Update, false) => self.begin_outbound_update(id),
            // Azure could never hold a resource of this name: nothing to delete but the finalizers.
            (Work::Delete, _) if id.check_inbound_names().is_err() => self.after_delete_steps(id),
            (Work::Delete, _) => {
                Next::Call(Step::DetachPool, Call::Cloud(CloudCall::UpdateServices(vec![inbound_request(id, false, vec![])])))
            }
        };
        self.follow(id, first, io);
    }

    fn begin_create(&mut self, id: &Identity) -> Next {
        let Some(a) = self.dispatcher.active.get(id) else { return Next::Finish(WorkerResult::Dropped) };
        if let Err(why) = id.check_inbound_names() {
            // Admission rejects these; an op from before the rule parks before any finalizer.
            return Next::Finish(WorkerResult::Failed(AttemptFailure::terminal(why)));
        }
        if a.config.object.name.is_empty() {
            // Nothing to put a finalizer on (a config without a Kubernetes object).
            return self.after_finalizers(id);
        }
        Next::Call(Step::AddFinalizers, Call::Kube(KubeCall::AddServiceFinalizers(a.config.object.clone())))
    }

    fn build(&self, id: &Identity) -> Result<BuiltInbound, AttemptFailure> {
        let a = self.dispatcher.active.get(id).ok_or_else(|| AttemptFailure::transient("unknown", "worker vanished"))?;
        let cfg = a.config.inbound_config().ok_or_else(|| AttemptFailure::terminal("no inbound configuration"))?;
        build_inbound(id, cfg).map_err(|e| AttemptFailure::terminal(e.0))
    }

    fn after_finalizers(&mut self, id: &Identity) -> Next {
        match self.build(id) {
            Ok(b) => Next::Call(Step::PutPublicIp, Call::Cloud(CloudCall::PutPublicIp { name: b.pip_name, version: b.pip_version })),
            Err(f) => Next::Finish(WorkerResult::Failed(f)),
        }
    }

    fn begin_update(&mut self, id: &Identity) -> Next {
        match self.build(id) {
            Ok(b) => Next::Call(Step::UpdateLoadBalancer, Call::Cloud(CloudCall::PutLoadBalancer(b.load_balancer))),
            Err(f) => Next::Finish(WorkerResult::Failed(f)),
        }
    }

    fn patch_ingress(&mut self, id: &Identity) -> Next {
        let Some(a) = self.dispatcher.active.get(id) else { return Next::Finish(WorkerResult::Dropped) };
        let Some(ip) = a.pip_address.clone().filter(|s| !s.is_empty()) else {
            return Next::Finish(WorkerResult::Failed(AttemptFailure::transient("unknown", "public IP has no allocated address")));
        };
        if a.config.object.name.is_empty() {
            return Next::Finish(WorkerResult::Done);
        }
        let current: &[LoadBalancerIngress] = self.services.get(id).map(|s| s.ingress.as_slice()).unwrap_or(&[]);
        let want = merged_ingress(current, &ip);
        if want.as_slice() == current {
            return Next::Finish(WorkerResult::Done);
        }
        Next::Call(Step::PatchIngress, Call::Kube(KubeCall::PatchServiceIngress(a.config.object.clone(), want)))
    }

    /// Inbound delete, after the unregistration: while the public IP still exists (so its
    /// address, ours, is known, also to a restarted engine from its start-up list), the status
    /// of a Service that no longer wants a load balancer from us loses our entry; then the
    /// public IP goes. A crash between the two leaves a trace (the public IP) that sends the
    /// restarted engine down this path again, never a status entry of ours nobody can identify.
    /// This holds when an earlier step failed too: the public IP is deleted all the same (6.4),
    /// and a restarted engine that finds the load balancer but not the public IP could not tell
    /// our address from another controller's on a Service with a `loadBalancerClass`.
    fn clear_ingress_or_delete_pip(&mut self, id: &Identity) -> Next {
        if let Some(a) = self.dispatcher.active.get(id) {
            if !a.config.object.name.is_empty() {
                let object = a.config.object.clone();
                if let Some(want) = self.ingress_to_clear(id, &object) {
                    return Next::Call(Step::ClearIngressFirst, Call::Kube(KubeCall::PatchServiceIngress(object, want)));
                }
            }
        }
        Next::Call(Step::DeletePublicIp, Call::Cloud(CloudCall::DeletePublicIp { name: id.pip_name() }))
    }

    /// The status was cleared: the public IP is deleted next (the early clearing), or the
    /// finalizers are removed (the late one, when the status changed after the early check).
    fn after_clear_ingress(&mut self, id: &Identity, step: Step) -> Next {
        if step == Step::ClearIngressFirst {
            return Next::Call(Step::DeletePublicIp, Call::Cloud(CloudCall::DeletePublicIp { name: id.pip_name() }));
        }
        self.remove_service_finalizers(id)
    }

    fn after_delete_steps(&mut self, id: &Identity) -> Next {
        let Some(a) = self.dispatcher.active.get(id) else { return Next::Finish(WorkerResult::Dropped) };
        if let Some(e) = &a.last_err {
            return Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(e)));
        }
        let object = a.config.object.clone();
        self.set_nrp_load_balancer(id, false);
        if object.name.is_empty() {
            return Next::Finish(WorkerResult::Done);
        }
        if let Some(want) = self.ingress_to_clear(id, &object) {
            return Next::Call(Step::ClearIngress, Call::Kube(KubeCall::PatchServiceIngress(object, want)));
        }
        Next::Call(Step::RemoveFinalizers, Call::Kube(KubeCall::RemoveServiceFinalizers(object)))
    }

    /// The Service's cloud resources are gone: if it still exists and wants no load balancer
    /// from us (another type, a `loadBalancerClass`), its ingress without our entry. A Service
    /// being deleted, or one that wants a load balancer again (its recreate writes the status),
    /// keeps what it has.
    fn ingress_to_clear(&self, id: &Identity, object: &crate::io::ObjectRef) -> Option<Vec<LoadBalancerIngress>> {
        let svc = self.services.get(id)?;
        if svc.meta.deletion_timestamp.is_some()
            || !svc.meta.uid.eq_ignore_ascii_case(&object.uid)
            || crate::events::needs_load_balancer(svc)
        {
            return None;
        }
        let op = self.ops.get(id);
        let fam = match op.and_then(|o| o.config.inbound_config()).and_then(|c| c.ip_families.first()) {
            Some(f) if f.eq_ignore_ascii_case("IPv6") => crate::identity::Family::V6,
            Some(_) => crate::identity::Family::V4,
            None => crate::startup::service_family(svc),
        };
        let ours = op.and_then(|o| o.public_ip.as_deref());
        let want = crate::startup::ingress_without_ours(&svc.ingress, ours, fam, svc.load_balancer_class.is_some());
        (want != svc.ingress).then_some(want)
    }

    /// Applies the completion of the call worker `id` waits for.
    pub(crate) fn complete_worker_call(&mut self, id: &Identity, outcome: Result<CallOutput, CallError>, io: &mut dyn Io) {
        let Some(a) = self.dispatcher.active.get_mut(id) else { return };
        a.call = None;
        if let Some(r) = outcome.as_ref().err().and_then(|e| e.retry_after_ms) {
            a.retry_after_ms = Some(a.retry_after_ms.map_or(r, |m| m.max(r)));
        }
        let step = a.step;
        let next = match step {
            Step::AddFinalizers => match outcome {
                Ok(_) => self.after_finalizers(id),
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Replaced) => Next::Finish(WorkerResult::Dropped),
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::PutPublicIp => match outcome {
                Ok(out) => {
                    if let (CallOutput::PublicIp(info), Some(a)) = (out, self.dispatcher.active.get_mut(id)) {
                        a.pip_address = info.ip_address.clone();
                        if info.ip_address.is_some() {
                            self.update_op(id, |op| op.public_ip = info.ip_address);
                        }
                    }
                    match self.build(id) {
                        Ok(b) => Next::Call(Step::PutLoadBalancer, Call::Cloud(CloudCall::PutLoadBalancer(b.load_balancer))),
                        Err(f) => Next::Finish(WorkerResult::Failed(f)),
                    }
                }
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::PutLoadBalancer => match outcome {
                Ok(_) => {
                    let pool = BackendPool { load_balancer: id.as_str().to_string(), pool: id.as_str().to_string() };
                    Next::Call(Step::Register, Call::Cloud(CloudCall::UpdateServices(vec![inbound_request(id, false, vec![pool])])))
                }
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::Register => match outcome {
                Ok(_) => {
                    // Recorded before touching Kubernetes status: a later status failure must
                    // not un-publish a live LB.
                    self.set_nrp_load_balancer(id, true);
                    self.patch_ingress(id)
                }
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::PatchIngress | Step::UpdateLoadBalancer => match outcome {
                Ok(_) => Next::Finish(WorkerResult::Done),
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::DetachPool => {
                if let Err(e) = &outcome {
                    if !is_not_found(e) {
                        self.metrics.inc(metrics::DELETE_SUBSTEP_FAILURES_TOTAL, &[("step", "remove_backend_pool")]);
                    }
                }
                Next::Call(Step::DeleteLoadBalancer, Call::Cloud(CloudCall::DeleteLoadBalancer { name: id.as_str().to_string() }))
            }
            Step::DeleteLoadBalancer | Step::Unregister | Step::DeletePublicIp => {
                if let Err(e) = outcome {
                    if !is_not_found(&e) {
                        if let Some(a) = self.dispatcher.active.get_mut(id) {
                            a.last_err = Some(e);
                        }
                    }
                }
                match step {
                    Step::DeleteLoadBalancer => {
                        Next::Call(Step::Unregister, Call::Cloud(CloudCall::UpdateServices(vec![inbound_request(id, true, vec![])])))
                    }
                    Step::Unregister => self.clear_ingress_or_delete_pip(id),
                    _ => self.after_delete_steps(id),
                }
            }
            Step::ClearIngress | Step::ClearIngressFirst => match outcome {
                Ok(_) => self.after_clear_ingress(id, step),
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Replaced) => self.after_clear_ingress(id, step),
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::RemoveFinalizers => match outcome {
                Ok(_) => {
                    self.finalizer_recovered(id);
                    Next::Finish(WorkerResult::Done)
                }
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Replaced) => {
                    self.finalizer_recovered(id);
                    Next::Finish(WorkerResult::Done)
                }
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::Begin | Step::SkipOutbound => {
                Next::Finish(WorkerResult::Failed(AttemptFailure::transient("unknown", "completion for a worker that awaits nothing")))
            }
            Step::PutNatPublicIp
            | Step::PutNatGateway
            | Step::RegisterOutbound
            | Step::GetSgwServices
            | Step::ClearNatReference
            | Step::GetNatGateway
            | Step::DetachNatGateway
            | Step::UnregisterOutbound
            | Step::DeleteNatGateway
            | Step::DeleteNatPublicIp
            | Step::DeleteNatPublicIpV6
            | Step::RemoveLastPodFinalizer => self.outbound_step(id, step, outcome),
        };
        self.follow(id, next, io);
    }

    fn remove_service_finalizers(&mut self, id: &Identity) -> Next {
        let Some(a) = self.dispatcher.active.get(id) else { return Next::Finish(WorkerResult::Dropped) };
        Next::Call(Step::RemoveFinalizers, Call::Kube(KubeCall::RemoveServiceFinalizers(a.config.object.clone())))
    }

    /// Closes the recovered-finalizer metric gap of a Service whose stuck finalizer the start-up
    /// pass handed to this delete (6.4 step 6).
    fn finalizer_recovered(&mut self, id: &Identity) {
        if self.startup.recovered_services.remove(id) {
            self.metrics.inc(metrics::FINALIZERS_RECOVERED_TOTAL, &[]);
        }
    }

    /// Starts the next call or finishes the worker.
    fn follow(&mut self, id: &Identity, next: Next, io: &mut dyn Io) {
        match next {
            Next::Call(step, Call::Cloud(CloudCall::UpdateServices(mut requests))) if requests.len() == 1 => {
                // Registration changes go out batched (registrar.rs); the worker waits here.
                if let (Some(a), Some(request)) = (self.dispatcher.active.get_mut(id), requests.pop()) {
                    a.step = step;
                    self.queue_registration(id, request);
                }
            }
            Next::Call(step, call) => {
                let call_id = io.start(call);
                if let Some(a) = self.dispatcher.active.get_mut(id) {
                    a.step = step;
                    a.call = Some(call_id);
                    self.dispatcher.calls.insert(call_id, id.clone());
                }
            }
            Next::Finish(result) => self.finish_worker(id, result),
        }
    }

    /// Ends a worker: releases its slot, reports the result, re-queues the identity.
    pub(crate) fn finish_worker(&mut self, id: &Identity, result: WorkerResult) {
        let Some(active) = self.dispatcher.remove_active(&mut self.timers, id) else { return };
        self.registrar.forget(id, &mut self.timers);
        if let Some((key, _)) = &active.finalizer_target {
            // A timed-out worker no longer awaits its pod call.
            self.release_pod_key(key);
        }
        match result {
            WorkerResult::Dropped => self.drop_tracking(id, &active),
            WorkerResult::Done => self.on_service_creation_complete(id, Ok(())),
            WorkerResult::Skipped => self.complete_attempt(id, Ok(()), false),
            WorkerResult::Failed(mut f) => {
                f.retry_after_ms = f.retry_after_ms.max(active.retry_after_ms);
                self.on_service_creation_complete(id, Err(f))
            }
        }
        self.trigger_dispatch(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s134_ingress_keeps_other_family_and_hostname_replaces_same_family() {
        let cur = vec![
            LoadBalancerIngress { ip: "1.1.1.1".into(), hostname: String::new() },
            LoadBalancerIngress { ip: "2001:db8::1".into(), hostname: String::new() },
            LoadBalancerIngress { ip: String::new(), hostname: "lb.example.com".into() },
        ];
        let got = merged_ingress(&cur, "20.0.0.5");
        assert_eq!(
            got,
            vec![
                LoadBalancerIngress { ip: "20.0.0.5".into(), hostname: String::new() },
                LoadBalancerIngress { ip: "2001:db8::1".into(), hostname: String::new() },
                LoadBalancerIngress { ip: String::new(), hostname: "lb.example.com".into() },
            ]
        );
        assert_eq!(merged_ingress(&got, "20.0.0.5"), got, "already equal: unchanged");
        assert_eq!(merged_ingress(&[], "20.0.0.5"), vec![LoadBalancerIngress { ip: "20.0.0.5".into(), hostname: String::new() }]);
    }

    #[test]
    fn s036_overlay_recognised_from_code_or_text_only() {
        assert!(is_overlay_error(&CallError::http(400, OVERLAY_ERROR_CODE, "")));
        assert!(is_overlay_error(&CallError::http(409, "", &format!("Code=\"{OVERLAY_ERROR_CODE}\" Message=..."))));
        assert!(!is_overlay_error(&CallError::http(400, "SomethingElse", "unrelated")));
        assert!(!is_overlay_error(&CallError::http(404, "NotFound", "gone")));
        assert!(!is_overlay_error(&CallError::of_kind(ErrorKind::Transport, "")));
    }

    #[test]
    fn error_code_classification() {
        assert_eq!(classify(&CallError::of_kind(ErrorKind::Timeout, "")), "timeout");
        assert_eq!(classify(&CallError::of_kind(ErrorKind::Throttled, "")), "throttled");
        assert_eq!(classify(&CallError::http(429, "", "")), "throttled");
        assert_eq!(classify(&CallError::http(409, "", "")), "conflict");
        assert_eq!(classify(&CallError::http(404, "", "")), "not_found");
        assert_eq!(classify(&CallError::http(503, "", "")), "internal_error");
        assert_eq!(classify(&CallError::http(400, "QuotaExceeded", "")), "quota_exceeded");
        assert_eq!(classify(&CallError::http(400, "Bad", "")), "unknown");
    }
}
