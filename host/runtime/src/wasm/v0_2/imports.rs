//! The host side of the 0.2.0 `cloud` and `kube` imports (the conversions they use are in
//! `super::conversions`).
//!
//! Starting a call allocates the next id of the tenant's counter and queues `(id, call)` in the
//! store's [`CallQueue`](crate::calls::CallQueue); nothing is performed here. The driver hands
//! the queue to the executor once the export returns. A call or Event past the queue's per-tick
//! limits ([`crate::calls::QueueLimits`], from the sandbox limits) traps the guest.

use super::bindings::clb::difftracker::{cloud, kube, types};
use super::w;
use crate::wasm::HostState;
use difftracker_engine::io;

type Trappable<T> = wasmtime::Result<T>;

impl HostState {
    fn start_cloud(&mut self, call: io::CloudCall) -> Trappable<w::CallId> {
        self.queue.try_start(io::Call::Cloud(call)).map_err(wasmtime::Error::new)
    }
    fn start_kube(&mut self, call: io::KubeCall) -> Trappable<w::CallId> {
        self.queue.try_start(io::Call::Kube(call)).map_err(wasmtime::Error::new)
    }
}

impl types::Host for HostState {}

impl cloud::Host for HostState {
    fn put_public_ip(&mut self, name: String, version: w::IpVersion) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::PutPublicIp { name, version: io::IpVersion::from(version) })
    }
    fn delete_public_ip(&mut self, name: String) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::DeletePublicIp { name })
    }
    fn list_public_ips(&mut self) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::ListPublicIps)
    }
    fn put_load_balancer(&mut self, spec: w::LoadBalancerSpec) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::PutLoadBalancer(io::LoadBalancerSpec::from(spec)))
    }
    fn delete_load_balancer(&mut self, name: String) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::DeleteLoadBalancer { name })
    }
    fn list_load_balancers(&mut self) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::ListLoadBalancers)
    }
    fn put_nat_gateway(&mut self, spec: w::NatGatewaySpec) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::PutNatGateway(spec.into()))
    }
    fn detach_nat_gateway(&mut self, name: String, raw: String) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::DetachNatGateway { name, raw })
    }
    fn get_nat_gateway(&mut self, name: String) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::GetNatGateway { name })
    }
    fn delete_nat_gateway(&mut self, name: String) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::DeleteNatGateway { name })
    }
    fn list_nat_gateways(&mut self) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::ListNatGateways)
    }
    fn get_sgw_services(&mut self) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::GetSgwServices)
    }
    fn get_address_locations(&mut self) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::GetAddressLocations)
    }
    fn update_services(&mut self, requests: Vec<w::SgwServiceRequest>) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::UpdateServices(requests.into_iter().map(io::SgwServiceRequest::from).collect()))
    }
    fn update_address_locations(&mut self, locations: Vec<w::LocationUpdate>) -> Trappable<w::CallId> {
        self.start_cloud(io::CloudCall::UpdateAddressLocations(locations.into_iter().map(io::LocationUpdate::from).collect()))
    }
}

impl kube::Host for HostState {
    fn add_service_finalizers(&mut self, target: w::ObjectRef) -> Trappable<w::CallId> {
        self.start_kube(io::KubeCall::AddServiceFinalizers(io::ObjectRef::from(target)))
    }
    fn remove_service_finalizers(&mut self, target: w::ObjectRef) -> Trappable<w::CallId> {
        self.start_kube(io::KubeCall::RemoveServiceFinalizers(io::ObjectRef::from(target)))
    }
    fn patch_service_ingress(&mut self, target: w::ObjectRef, ingress: Vec<w::LoadBalancerIngress>) -> Trappable<w::CallId> {
        let ingress = ingress.into_iter().map(io::LoadBalancerIngress::from).collect();
        self.start_kube(io::KubeCall::PatchServiceIngress(io::ObjectRef::from(target), ingress))
    }
    fn add_pod_finalizer(&mut self, target: w::ObjectRef) -> Trappable<w::CallId> {
        self.start_kube(io::KubeCall::AddPodFinalizer(io::ObjectRef::from(target)))
    }
    fn remove_pod_finalizer(&mut self, target: w::ObjectRef) -> Trappable<w::CallId> {
        self.start_kube(io::KubeCall::RemovePodFinalizer(io::ObjectRef::from(target)))
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
