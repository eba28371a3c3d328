//! Correlation ids: one id follows an operation from the engine's decision through the host's
//! log lines to ARM, where the transport sends it as `x-ms-client-request-id` (ARM's own
//! convention; the emulator answers it back as `x-ms-request-id` and logs it), so one id finds a
//! Service's story in the host's and the emulator's logs.
//!
//! The id of a call is derived, not drawn: from the tenant and the operation the call belongs to
//! ([`subject_of`]: the Service or egress identity its resources are named after), so every call
//! of one Service's operations carries the same id across retries, restarts and replays; a call
//! that serves many Services at once (a location sync, a batch of registrations, a list) gets an
//! id of its own from its call id. Ids are shaped as GUIDs, as ARM expects.
//!
//! The executor runs each call's backend future inside [`scope`]; the transport reads
//! [`current`] when it builds a request.

use difftracker_engine::io::{Call, CallId, CloudCall, KubeCall};
use sha2::{Digest, Sha256};
use std::future::Future;

tokio::task_local! {
    static CURRENT: CorrelationId;
}

/// A GUID-shaped correlation id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CorrelationId(String);

impl CorrelationId {
    /// The id of every call of `tenant`'s operation on `subject`.
    pub fn of_subject(tenant: &str, subject: &str) -> CorrelationId {
        CorrelationId::hashed(&[b"subject", tenant.as_bytes(), subject.as_bytes()])
    }

    /// The id of a call that belongs to no single operation.
    pub fn of_call(tenant: &str, id: CallId) -> CorrelationId {
        CorrelationId::hashed(&[b"call", tenant.as_bytes(), &id.to_be_bytes()])
    }

    /// The id of `call` (number `id`) of `tenant`: see the module docs.
    pub fn of(tenant: &str, id: CallId, call: &Call) -> CorrelationId {
        match subject_of(call) {
            Some(subject) => CorrelationId::of_subject(tenant, &subject),
            None => CorrelationId::of_call(tenant, id),
        }
    }

    fn hashed(parts: &[&[u8]]) -> CorrelationId {
        let mut hash = Sha256::new();
        for part in parts {
            // Length-prefixed, so that no two part lists hash alike.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let mut b: [u8; 16] = hash.finalize()[..16].try_into().unwrap_or([0; 16]);
        // An RFC 9562 version 8 (custom) UUID.
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        CorrelationId(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The operation a call belongs to: the identity its resources are named after (a public IP
/// `<identity>-pip` or `<identity>-pip-v6`, a load balancer or NAT gateway `<identity>`), or
/// the UID of the object a Kubernetes write targets; `None` for calls serving many operations.
pub fn subject_of(call: &Call) -> Option<String> {
    use CloudCall as C;
    let strip = |name: &str| {
        let base = name.strip_suffix("-pip-v6").or_else(|| name.strip_suffix("-pip")).unwrap_or(name);
        base.to_string()
    };
    match call {
        Call::Cloud(c) => match c {
            C::PutPublicIp { name, .. } | C::DeletePublicIp { name } => Some(strip(name)),
            C::DeleteLoadBalancer { name }
            | C::DetachNatGateway { name, .. }
            | C::GetNatGateway { name }
            | C::DeleteNatGateway { name } => Some(name.clone()),
            C::PutLoadBalancer(spec) => Some(spec.name.clone()),
            C::PutNatGateway(spec) => Some(spec.name.clone()),
            C::UpdateServices(requests) if requests.len() == 1 => Some(requests[0].name.clone()),
            C::UpdateServices(_)
            | C::UpdateAddressLocations(_)
            | C::ListPublicIps
            | C::ListLoadBalancers
            | C::ListNatGateways
            | C::GetSgwServices
            | C::GetAddressLocations => None,
        },
        Call::Kube(k) => match k {
            KubeCall::AddServiceFinalizers(r)
            | KubeCall::RemoveServiceFinalizers(r)
            | KubeCall::PatchServiceIngress(r, _)
            | KubeCall::AddPodFinalizer(r)
            | KubeCall::RemovePodFinalizer(r) => Some(r.uid.clone()),
        },
    }
}

/// Runs `future` with `id` as the current correlation id.
pub async fn scope<F: Future>(id: CorrelationId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

/// The correlation id of the call being performed, if any.
pub fn current() -> Option<CorrelationId> {
    CURRENT.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use difftracker_engine::io::{IpVersion, LoadBalancerSpec, ObjectRef};

    #[test]
    fn every_call_of_one_service_shares_its_id_and_ids_look_like_guids() {
        let uid = "0f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f";
        let calls = [
            Call::Cloud(CloudCall::PutPublicIp { name: format!("{uid}-pip"), version: IpVersion::V4 }),
            Call::Cloud(CloudCall::PutPublicIp { name: format!("{uid}-pip-v6"), version: IpVersion::V6 }),
            Call::Cloud(CloudCall::PutLoadBalancer(LoadBalancerSpec { name: uid.into(), public_ip: format!("{uid}-pip"), rules: vec![] })),
            Call::Cloud(CloudCall::DeleteLoadBalancer { name: uid.into() }),
            Call::Kube(KubeCall::AddServiceFinalizers(ObjectRef { namespace: "ns".into(), name: "web".into(), uid: uid.into() })),
        ];
        let ids: Vec<CorrelationId> = calls.iter().enumerate().map(|(i, c)| CorrelationId::of("t1", i as u64, c)).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(ids[0], CorrelationId::of_subject("t1", uid));
        assert_ne!(ids[0], CorrelationId::of_subject("t2", uid), "tenants do not share ids");
        let s = ids[0].as_str();
        assert_eq!(s.len(), 36);
        assert_eq!(s.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert_eq!(&s[14..15], "8", "version 8");
        // Calls serving many operations get one id each.
        let sync = Call::Cloud(CloudCall::UpdateAddressLocations(vec![]));
        assert_ne!(CorrelationId::of("t1", 7, &sync), CorrelationId::of("t1", 8, &sync));
    }

    #[tokio::test]
    async fn the_current_id_is_set_inside_its_scope_only() {
        assert_eq!(current(), None);
        let id = CorrelationId::of_subject("t", "s");
        let seen = scope(id.clone(), async { current() }).await;
        assert_eq!(seen, Some(id));
        assert_eq!(current(), None);
    }
}
