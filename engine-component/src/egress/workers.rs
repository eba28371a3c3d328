//! The outbound step machines (ENGINE.md 6.3 create, 6.5 delete), on the worker model of
//! [`crate::workers`]: one call per step, the completion picks the next step.
//!
//! Create: PUT `<id>-pip` (+ `<id>-pip-v6` when the cluster has IPv6 nodes) -> PUT the NAT
//! gateway -> register `Outbound` with the NAT reference -> record the NAT in the NRP mirror.
//! Any failure stops the attempt (what exists stays; the retry re-PUTs idempotently).
//!
//! Update (the cluster gained IPv6 after the create, 2.6): PUT the public IPs the last applied
//! config lacks -> PUT the NAT gateway with every family's; the registration is unchanged.
//!
//! Delete: disassociate (GET services, clear the entry's NAT reference if set; GET the NAT, detach
//! it from the ServiceGateway if it references it; failures only counted) -> unregister -> DELETE
//! the NAT -> DELETE both public IPs (404 is success everywhere; steps continue past failures and
//! the last error decides) -> on success drop the NAT from the mirror and release the last-pod
//! finalizers one by one (any that cannot be released fails the attempt).

use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{
    Call, CallError, CallOutput, CloudCall, ErrorKind, IpVersion, KubeCall, NatGatewaySpec, NatReference, ServiceType, SgwServiceRequest,
};
use crate::metrics;
use crate::workers::{is_not_found, AttemptFailure, Next, Step, Work, WorkerResult};

fn outbound_request(id: &Identity, is_delete: bool, nat: NatReference) -> SgwServiceRequest {
    SgwServiceRequest {
        name: id.as_str().to_string(),
        service_type: ServiceType::Outbound,
        is_delete,
        backend_pools: vec![],
        nat_gateway: nat,
        is_default: None,
    }
}

fn pip_name(id: &Identity, v: IpVersion) -> String {
    match v {
        IpVersion::V4 => id.pip_name(),
        IpVersion::V6 => id.pip_v6_name(),
    }
}

impl Engine {
    /// The families of the worker's config (IPv4 when nothing was decided).
    fn worker_families(&self, id: &Identity) -> Vec<IpVersion> {
        let fams =
            self.dispatcher.active.get(id).and_then(|a| a.config.outbound_config().map(|c| c.ip_families.clone())).unwrap_or_default();
        if fams.is_empty() {
            vec![IpVersion::V4]
        } else {
            fams
        }
    }

    /// The families whose public IP this attempt PUTs: all of them for a create; for an update
    /// those the last applied config lacks (none when nothing was applied: nothing to amend).
    fn families_to_put(&self, id: &Identity) -> Vec<IpVersion> {
        let fams = self.worker_families(id);
        if self.dispatcher.active.get(id).is_some_and(|a| a.work == Work::Update) {
            let Some(applied) = self.ops.get(id).and_then(|o| o.last_applied_config.as_ref()).and_then(|c| c.outbound_config()) else {
                return Vec::new();
            };
            return fams.into_iter().filter(|f| !applied.ip_families.contains(f)).collect();
        }
        fams
    }

    pub(crate) fn begin_outbound_create(&mut self, id: &Identity) -> Next {
        self.next_outbound_pip(id)
    }

    /// Outbound update (2.6, the cluster gained IPv6): create the missing public IPs, then PUT
    /// the NAT gateway with every family's. The registration (the NAT reference) is unchanged.
    /// Nothing missing ⇒ skipped without an Azure call.
    pub(crate) fn begin_outbound_update(&mut self, id: &Identity) -> Next {
        if self.families_to_put(id).is_empty() {
            self.metrics.inc(metrics::OUTBOUND_SERVICE_UPDATES_SKIPPED_TOTAL, &[]);
            return Next::Finish(WorkerResult::Skipped);
        }
        self.next_outbound_pip(id)
    }

    fn next_outbound_pip(&mut self, id: &Identity) -> Next {
        let fams = self.worker_families(id);
        let idx = self.dispatcher.active.get(id).map_or(0, |a| a.pip_index);
        match self.families_to_put(id).get(idx) {
            Some(v) => Next::Call(Step::PutNatPublicIp, Call::Cloud(CloudCall::PutPublicIp { name: pip_name(id, *v), version: *v })),
            None => {
                let spec = NatGatewaySpec {
                    name: id.as_str().to_string(),
                    public_ips: if fams.contains(&IpVersion::V4) { vec![id.pip_name()] } else { vec![] },
                    public_ips_v6: if fams.contains(&IpVersion::V6) { vec![id.pip_v6_name()] } else { vec![] },
                };
                Next::Call(Step::PutNatGateway, Call::Cloud(CloudCall::PutNatGateway(spec)))
            }
        }
    }

    pub(crate) fn begin_outbound_delete(&mut self) -> Next {
        Next::Call(Step::GetSgwServices, Call::Cloud(CloudCall::GetSgwServices))
    }

    fn get_nat(id: &Identity) -> Next {
        Next::Call(Step::GetNatGateway, Call::Cloud(CloudCall::GetNatGateway { name: id.as_str().to_string() }))
    }

    fn unregister_outbound(&mut self, id: &Identity) -> Next {
        if self.dispatcher.active.get(id).is_some_and(|a| a.disassociate_failed) {
            self.metrics.inc(metrics::DELETE_SUBSTEP_FAILURES_TOTAL, &[("step", "disassociate_nat_gateway")]);
        }
        Next::Call(Step::UnregisterOutbound, Call::Cloud(CloudCall::UpdateServices(vec![outbound_request(id, true, NatReference::Absent)])))
    }

    fn disassociate_failed(&mut self, id: &Identity) {
        if let Some(a) = self.dispatcher.active.get_mut(id) {
            a.disassociate_failed = true;
        }
    }

    /// Steps 2-4 keep the last failing step's error.
    fn keep_error(&mut self, id: &Identity, outcome: Result<CallOutput, CallError>) {
        if let Err(e) = outcome {
            if !is_not_found(&e) {
                if let Some(a) = self.dispatcher.active.get_mut(id) {
                    a.last_err = Some(e);
                }
            }
        }
    }

    /// Every Azure delete is done: success drops the NAT from the mirror and releases the
    /// last-pod finalizers.
    fn after_outbound_deletes(&mut self, id: &Identity) -> Next {
        let Some(a) = self.dispatcher.active.get(id) else { return Next::Finish(WorkerResult::Dropped) };
        if let Some(e) = &a.last_err {
            return Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(e)));
        }
        self.set_nrp_nat_gateway(id, false);
        let keys: Vec<String> =
            self.egress.records.keys_of(id).into_iter().filter(|k| self.egress.records.get(k).is_some_and(|r| r.is_last_pod)).collect();
        if let Some(a) = self.dispatcher.active.get_mut(id) {
            a.finalizer_keys = keys;
        }
        self.next_last_pod_finalizer(id)
    }

    /// `RemoveLastPodFinalizers(id)`, one record per step.
    fn next_last_pod_finalizer(&mut self, id: &Identity) -> Next {
        loop {
            let Some(a) = self.dispatcher.active.get_mut(id) else { return Next::Finish(WorkerResult::Dropped) };
            if a.finalizer_keys.is_empty() {
                return if a.finalizer_failed {
                    Next::Finish(WorkerResult::Failed(AttemptFailure::transient(
                        "unknown",
                        "a last pod's cleanup finalizer could not be removed",
                    )))
                } else {
                    Next::Finish(WorkerResult::Done)
                };
            }
            let key = a.finalizer_keys.remove(0);
            let Some(rec) = self.egress.records.get(&key).filter(|r| r.is_last_pod && &r.service_uid == id) else { continue };
            let target = rec.target();
            if rec.other_addresses.iter().any(|(i, a)| self.may_map(i, a)) {
                // The NAT gateway is gone, but the pod also left addresses under another
                // identity that are still mapped: an ordinary drain record from now on.
                self.egress.records.clear_last_pod(&key);
                self.egress.records.candidates.insert(key);
                self.trigger_location_sync();
                continue;
            }
            if self.egress.calls.busy.contains(&key) {
                // Another call for this pod is outstanding: keep the record, retry the delete.
                if let Some(a) = self.dispatcher.active.get_mut(id) {
                    a.finalizer_failed = true;
                }
                continue;
            }
            self.egress.calls.busy.insert(key.clone());
            if let Some(a) = self.dispatcher.active.get_mut(id) {
                a.finalizer_target = Some((key, target.uid.clone()));
            }
            return Next::Call(Step::RemoveLastPodFinalizer, Call::Kube(KubeCall::RemovePodFinalizer(target)));
        }
    }

    /// Applies the completion of an outbound step.
    pub(crate) fn outbound_step(&mut self, id: &Identity, step: Step, outcome: Result<CallOutput, CallError>) -> Next {
        match step {
            Step::PutNatPublicIp => match outcome {
                Ok(_) => {
                    if let Some(a) = self.dispatcher.active.get_mut(id) {
                        a.pip_index += 1;
                    }
                    self.next_outbound_pip(id)
                }
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::PutNatGateway => match outcome {
                Ok(_) if self.dispatcher.active.get(id).is_some_and(|a| a.work == Work::Update) => Next::Finish(WorkerResult::Done),
                Ok(_) => Next::Call(
                    Step::RegisterOutbound,
                    Call::Cloud(CloudCall::UpdateServices(vec![outbound_request(id, false, NatReference::Set(id.as_str().to_string()))])),
                ),
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::RegisterOutbound => match outcome {
                Ok(_) => {
                    // Only after registration may the NAT's addresses be published.
                    self.set_nrp_nat_gateway(id, true);
                    Next::Finish(WorkerResult::Done)
                }
                Err(e) => Next::Finish(WorkerResult::Failed(AttemptFailure::from_call(&e))),
            },
            Step::GetSgwServices => match outcome {
                Ok(CallOutput::SgwServices(list)) => {
                    let entry =
                        list.into_iter().find(|s| s.name.eq_ignore_ascii_case(id.as_str()) && !Identity::new(&s.name).is_reserved());
                    match entry {
                        Some(e) if e.nat_gateway.is_some() => {
                            let req = SgwServiceRequest {
                                name: e.name,
                                service_type: e.service_type,
                                is_delete: false,
                                backend_pools: e.backend_pools,
                                nat_gateway: NatReference::Clear,
                                is_default: e.is_default.then_some(true),
                            };
                            Next::Call(Step::ClearNatReference, Call::Cloud(CloudCall::UpdateServices(vec![req])))
                        }
                        _ => Self::get_nat(id),
                    }
                }
                Ok(_) | Err(_) => {
                    self.disassociate_failed(id);
                    Self::get_nat(id)
                }
            },
            Step::ClearNatReference => {
                if outcome.is_err() {
                    self.disassociate_failed(id);
                }
                Self::get_nat(id)
            }
            Step::GetNatGateway => match outcome {
                Ok(CallOutput::NatGateway(Some(info))) if info.references_service_gateway => Next::Call(
                    Step::DetachNatGateway,
                    Call::Cloud(CloudCall::DetachNatGateway { name: id.as_str().to_string(), raw: info.raw }),
                ),
                Ok(CallOutput::NatGateway(_)) => self.unregister_outbound(id),
                Err(e) if is_not_found(&e) => self.unregister_outbound(id),
                Ok(_) | Err(_) => {
                    self.disassociate_failed(id);
                    self.unregister_outbound(id)
                }
            },
            Step::DetachNatGateway => {
                if let Err(e) = &outcome {
                    if !is_not_found(e) {
                        self.disassociate_failed(id);
                    }
                }
                self.unregister_outbound(id)
            }
            Step::UnregisterOutbound => {
                self.keep_error(id, outcome);
                Next::Call(Step::DeleteNatGateway, Call::Cloud(CloudCall::DeleteNatGateway { name: id.as_str().to_string() }))
            }
            Step::DeleteNatGateway => {
                self.keep_error(id, outcome);
                Next::Call(Step::DeleteNatPublicIp, Call::Cloud(CloudCall::DeletePublicIp { name: id.pip_name() }))
            }
            Step::DeleteNatPublicIp => {
                self.keep_error(id, outcome);
                Next::Call(Step::DeleteNatPublicIpV6, Call::Cloud(CloudCall::DeletePublicIp { name: id.pip_v6_name() }))
            }
            Step::DeleteNatPublicIpV6 => {
                self.keep_error(id, outcome);
                self.after_outbound_deletes(id)
            }
            Step::RemoveLastPodFinalizer => {
                let target = self.dispatcher.active.get_mut(id).and_then(|a| a.finalizer_target.take());
                if let Some((key, uid)) = target {
                    match &outcome {
                        Ok(_) => self.finish_record(&key, &uid),
                        Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Replaced) => self.finish_record(&key, &uid),
                        Err(_) => {
                            if let Some(a) = self.dispatcher.active.get_mut(id) {
                                a.finalizer_failed = true;
                            }
                        }
                    }
                    self.release_pod_key(&key);
                }
                self.next_last_pod_finalizer(id)
            }
            _ => Next::Finish(WorkerResult::Failed(AttemptFailure::transient("unknown", "not an outbound step"))),
        }
    }
}
