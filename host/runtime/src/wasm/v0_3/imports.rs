//! The host side of the 0.3.0 `cloud` and `kube` imports (the conversions they use are in
//! `super::conversions`).
//!
//! Starting a call queues `(id, call)` with the id the engine allocated in the store's
//! [`CallQueue`](crate::calls::CallQueue), which traps a guest whose id is not above its previous
//! ones (so it can never reuse the id of a call in flight); nothing is performed here. The driver hands
//! the queue to the executor once the export returns. A call or Event past the queue's per-tick
//! limits ([`crate::calls::QueueLimits`], from the sandbox limits) traps the guest.

use super::bindings::clb::difftracker::{cloud, kube, types};
use super::w;
use crate::wasm::HostState;
use difftracker_engine::io;

type Trappable<T> = wasmtime::Result<T>;

impl HostState {
    fn start_cloud_numbered(&mut self, id: w::CallId, call: io::CloudCall) -> Trappable<()> {
        self.queue.try_start_numbered(id, io::Call::Cloud(call)).map_err(wasmtime::Error::new)
    }
    fn start_kube_numbered(&mut self, id: w::CallId, call: io::KubeCall) -> Trappable<()> {
        self.queue.try_start_numbered(id, io::Call::Kube(call)).map_err(wasmtime::Error::new)
    }
}

impl types::Host for HostState {}

impl cloud::Host for HostState {
    fn put_public_ip(&mut self, id: w::CallId, name: String, version: w::IpVersion) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::PutPublicIp { name, version: io::IpVersion::from(version) })
    }
    fn delete_public_ip(&mut self, id: w::CallId, name: String) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::DeletePublicIp { name })
    }
    fn list_public_ips(&mut self, id: w::CallId) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::ListPublicIps)
    }
    fn put_load_balancer(&mut self, id: w::CallId, spec: w::LoadBalancerSpec) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::PutLoadBalancer(io::LoadBalancerSpec::from(spec)))
    }
    fn delete_load_balancer(&mut self, id: w::CallId, name: String) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::DeleteLoadBalancer { name })
    }
    fn list_load_balancers(&mut self, id: w::CallId) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::ListLoadBalancers)
    }
    fn put_nat_gateway(&mut self, id: w::CallId, spec: w::NatGatewaySpec) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::PutNatGateway(spec.into()))
    }
    fn detach_nat_gateway(&mut self, id: w::CallId, name: String, raw: String) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::DetachNatGateway { name, raw })
    }
    fn get_nat_gateway(&mut self, id: w::CallId, name: String) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::GetNatGateway { name })
    }
    fn delete_nat_gateway(&mut self, id: w::CallId, name: String) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::DeleteNatGateway { name })
    }
    fn list_nat_gateways(&mut self, id: w::CallId) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::ListNatGateways)
    }
    fn get_sgw_services(&mut self, id: w::CallId) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::GetSgwServices)
    }
    fn get_address_locations(&mut self, id: w::CallId) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::GetAddressLocations)
    }
    fn update_services(&mut self, id: w::CallId, requests: Vec<w::SgwServiceRequest>) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::UpdateServices(requests.into_iter().map(io::SgwServiceRequest::from).collect()))
    }
    fn update_address_locations(&mut self, id: w::CallId, locations: Vec<w::LocationUpdate>) -> Trappable<()> {
        self.start_cloud_numbered(id, io::CloudCall::UpdateAddressLocations(locations.into_iter().map(io::LocationUpdate::from).collect()))
    }
}

impl kube::Host for HostState {
    fn add_service_finalizers(&mut self, id: w::CallId, target: w::ObjectRef) -> Trappable<()> {
        self.start_kube_numbered(id, io::KubeCall::AddServiceFinalizers(io::ObjectRef::from(target)))
    }
    fn remove_service_finalizers(&mut self, id: w::CallId, target: w::ObjectRef) -> Trappable<()> {
        self.start_kube_numbered(id, io::KubeCall::RemoveServiceFinalizers(io::ObjectRef::from(target)))
    }
    fn patch_service_ingress(&mut self, id: w::CallId, target: w::ObjectRef, ingress: Vec<w::LoadBalancerIngress>) -> Trappable<()> {
        let ingress = ingress.into_iter().map(io::LoadBalancerIngress::from).collect();
        self.start_kube_numbered(id, io::KubeCall::PatchServiceIngress(io::ObjectRef::from(target), ingress))
    }
    fn add_pod_finalizer(&mut self, id: w::CallId, target: w::ObjectRef) -> Trappable<()> {
        self.start_kube_numbered(id, io::KubeCall::AddPodFinalizer(io::ObjectRef::from(target)))
    }
    fn remove_pod_finalizer(&mut self, id: w::CallId, target: w::ObjectRef) -> Trappable<()> {
        self.start_kube_numbered(id, io::KubeCall::RemovePodFinalizer(io::ObjectRef::from(target)))
    }
    fn record_event(
        &mut self,
        target: w::ObjectRef,
        kind: w::ObjectKind,
        event_type: w::EventType,
        reason: String,
        message: String,
    ) -> Trappable<()> {
        self.queue_event(io::KubeEventRecord { target: target.into(), kind: kind.into(), event_type: event_type.into(), reason, message })
    }
}
