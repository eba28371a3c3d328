//! The host side of the `cloud` and `kube` imports, and the conversions between the generated
//! binding types ([`super::bindings::wit`]) and `difftracker_engine::io`.
//!
//! Starting a call allocates the next id of the tenant's counter and queues `(id, call)` in the
//! store's [`CallQueue`]; nothing is performed here. The driver hands the queue to the executor
//! once the export returns.

use super::bindings::clb::difftracker::{cloud, kube, types};
use super::bindings::wit as w;
use super::bindings::wit_engine as wx;
use super::HostState;
use difftracker_engine::io;

impl HostState {
    fn start(&mut self, call: io::Call) -> w::CallId {
        io::Io::start(&mut self.queue, call)
    }
    fn cloud(&mut self, call: io::CloudCall) -> w::CallId {
        self.start(io::Call::Cloud(call))
    }
    fn kube(&mut self, call: io::KubeCall) -> w::CallId {
        self.start(io::Call::Kube(call))
    }
}

impl types::Host for HostState {}

impl cloud::Host for HostState {
    fn put_public_ip(&mut self, name: String, version: w::IpVersion) -> w::CallId {
        self.cloud(io::CloudCall::PutPublicIp { name, version: ip_version_in(version) })
    }
    fn delete_public_ip(&mut self, name: String) -> w::CallId {
        self.cloud(io::CloudCall::DeletePublicIp { name })
    }
    fn list_public_ips(&mut self) -> w::CallId {
        self.cloud(io::CloudCall::ListPublicIps)
    }
    fn put_load_balancer(&mut self, spec: w::LoadBalancerSpec) -> w::CallId {
        self.cloud(io::CloudCall::PutLoadBalancer(lb_spec_in(spec)))
    }
    fn delete_load_balancer(&mut self, name: String) -> w::CallId {
        self.cloud(io::CloudCall::DeleteLoadBalancer { name })
    }
    fn list_load_balancers(&mut self) -> w::CallId {
        self.cloud(io::CloudCall::ListLoadBalancers)
    }
    fn put_nat_gateway(&mut self, spec: w::NatGatewaySpec) -> w::CallId {
        self.cloud(io::CloudCall::PutNatGateway(io::NatGatewaySpec {
            name: spec.name,
            public_ips: spec.public_ips,
            public_ips_v6: spec.public_ips_v6,
        }))
    }
    fn detach_nat_gateway(&mut self, name: String, raw: String) -> w::CallId {
        self.cloud(io::CloudCall::DetachNatGateway { name, raw })
    }
    fn get_nat_gateway(&mut self, name: String) -> w::CallId {
        self.cloud(io::CloudCall::GetNatGateway { name })
    }
    fn delete_nat_gateway(&mut self, name: String) -> w::CallId {
        self.cloud(io::CloudCall::DeleteNatGateway { name })
    }
    fn list_nat_gateways(&mut self) -> w::CallId {
        self.cloud(io::CloudCall::ListNatGateways)
    }
    fn get_sgw_services(&mut self) -> w::CallId {
        self.cloud(io::CloudCall::GetSgwServices)
    }
    fn get_address_locations(&mut self) -> w::CallId {
        self.cloud(io::CloudCall::GetAddressLocations)
    }
    fn update_services(&mut self, requests: Vec<w::SgwServiceRequest>) -> w::CallId {
        self.cloud(io::CloudCall::UpdateServices(requests.into_iter().map(sgw_request_in).collect()))
    }
    fn update_address_locations(&mut self, locations: Vec<w::LocationUpdate>) -> w::CallId {
        self.cloud(io::CloudCall::UpdateAddressLocations(locations.into_iter().map(location_update_in).collect()))
    }
}

impl kube::Host for HostState {
    fn add_service_finalizers(&mut self, target: w::ObjectRef) -> w::CallId {
        self.kube(io::KubeCall::AddServiceFinalizers(object_ref_in(target)))
    }
    fn remove_service_finalizers(&mut self, target: w::ObjectRef) -> w::CallId {
        self.kube(io::KubeCall::RemoveServiceFinalizers(object_ref_in(target)))
    }
    fn patch_service_ingress(&mut self, target: w::ObjectRef, ingress: Vec<w::LoadBalancerIngress>) -> w::CallId {
        let ingress = ingress.into_iter().map(|i| io::LoadBalancerIngress { ip: i.ip, hostname: i.hostname }).collect();
        self.kube(io::KubeCall::PatchServiceIngress(object_ref_in(target), ingress))
    }
    fn add_pod_finalizer(&mut self, target: w::ObjectRef) -> w::CallId {
        self.kube(io::KubeCall::AddPodFinalizer(object_ref_in(target)))
    }
    fn remove_pod_finalizer(&mut self, target: w::ObjectRef) -> w::CallId {
        self.kube(io::KubeCall::RemovePodFinalizer(object_ref_in(target)))
    }
    fn record_event(
        &mut self,
        target: w::ObjectRef,
        kind: w::ObjectKind,
        event_type: w::EventType,
        reason: String,
        message: String,
    ) {
        io::Io::record_event(
            &mut self.queue,
            io::KubeEventRecord {
                target: object_ref_in(target),
                kind: match kind {
                    w::ObjectKind::Service => io::ObjectKind::Service,
                    w::ObjectKind::Pod => io::ObjectKind::Pod,
                },
                event_type: match event_type {
                    w::EventType::Normal => io::EventType::Normal,
                    w::EventType::Warning => io::EventType::Warning,
                },
                reason,
                message,
            },
        )
    }
}

// ------------------------------------------------------------------------ WIT -> io (calls)

fn ip_version_in(v: w::IpVersion) -> io::IpVersion {
    match v {
        w::IpVersion::Ipv4 => io::IpVersion::V4,
        w::IpVersion::Ipv6 => io::IpVersion::V6,
    }
}

fn service_type_in(t: w::ServiceType) -> io::ServiceType {
    match t {
        w::ServiceType::Inbound => io::ServiceType::Inbound,
        w::ServiceType::Outbound => io::ServiceType::Outbound,
        w::ServiceType::InboundOutbound => io::ServiceType::InboundOutbound,
    }
}

fn lb_spec_in(spec: w::LoadBalancerSpec) -> io::LoadBalancerSpec {
    io::LoadBalancerSpec {
        name: spec.name,
        public_ip: spec.public_ip,
        rules: spec
            .rules
            .into_iter()
            .map(|r| io::LbRule {
                protocol: match r.protocol {
                    w::TransportProtocol::Tcp => io::TransportProtocol::Tcp,
                    w::TransportProtocol::Udp => io::TransportProtocol::Udp,
                },
                frontend_port: r.frontend_port,
                backend_port: r.backend_port,
                idle_timeout_minutes: r.idle_timeout_minutes,
            })
            .collect(),
    }
}

fn sgw_request_in(r: w::SgwServiceRequest) -> io::SgwServiceRequest {
    io::SgwServiceRequest {
        name: r.name,
        service_type: service_type_in(r.service_type),
        is_delete: r.is_delete,
        backend_pools: r
            .backend_pools
            .into_iter()
            .map(|p| io::BackendPool { load_balancer: p.load_balancer, pool: p.pool })
            .collect(),
        nat_gateway: match r.nat_gateway {
            w::NatReference::Absent => io::NatReference::Absent,
            w::NatReference::Set(name) => io::NatReference::Set(name),
            w::NatReference::Clear => io::NatReference::Clear,
        },
        is_default: r.is_default,
    }
}

fn location_update_in(l: w::LocationUpdate) -> io::LocationUpdate {
    io::LocationUpdate {
        location: l.location,
        action: match l.action {
            w::UpdateAction::FullUpdate => io::UpdateAction::FullUpdate,
            w::UpdateAction::PartialUpdate => io::UpdateAction::PartialUpdate,
        },
        addresses: l.addresses.into_iter().map(|a| io::AddressUpdate { address: a.address, services: a.services }).collect(),
    }
}

fn object_ref_in(r: w::ObjectRef) -> io::ObjectRef {
    io::ObjectRef { namespace: r.namespace, name: r.name, uid: r.uid }
}

// ------------------------------------------------------------------------ WIT -> io (results)

pub(crate) fn tick_outcome_in(o: wx::TickOutcome) -> io::TickOutcome {
    io::TickOutcome { next_wake_ms: o.next_wake_ms, calls_in_flight: o.calls_in_flight }
}

pub(crate) fn status_in(s: w::EngineStatus) -> io::EngineStatus {
    io::EngineStatus {
        states: s.states,
        operations_in_flight: s.operations_in_flight,
        calls_in_flight: s.calls_in_flight,
        pending_deletions: s.pending_deletions,
        pending_pod_deletions: s.pending_pod_deletions,
        buffered_endpoint_deltas: s.buffered_endpoint_deltas,
        location_sync_in_flight: s.location_sync_in_flight,
        settled: s.settled,
        metrics: s
            .metrics
            .into_iter()
            .map(|m| io::MetricSample { name: m.name, labels: m.labels, value: m.value })
            .collect(),
    }
}

// ------------------------------------------------------------------------ io -> WIT (inputs)

pub(crate) fn tenant_config_out(c: &io::TenantConfig) -> wx::TenantConfig {
    wx::TenantConfig { tenant: c.tenant.clone(), seed: c.seed }
}

fn meta_out(m: io::ObjectMeta) -> w::ObjectMeta {
    w::ObjectMeta {
        namespace: m.namespace,
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        labels: m.labels,
        annotations: m.annotations,
    }
}

fn service_out(s: io::Service) -> w::Service {
    w::Service {
        meta: meta_out(s.meta),
        service_type: s.service_type,
        load_balancer_class: s.load_balancer_class,
        ports: s
            .ports
            .into_iter()
            .map(|p| w::ServicePort {
                name: p.name,
                protocol: p.protocol,
                port: p.port,
                target_port: p.target_port.map(|t| match t {
                    io::IntOrString::Int(i) => w::IntOrString::Int(i),
                    io::IntOrString::Str(s) => w::IntOrString::Str(s),
                }),
            })
            .collect(),
        ip_families: s.ip_families,
        session_affinity: s.session_affinity,
        load_balancer_ip: s.load_balancer_ip,
        external_traffic_policy: s.external_traffic_policy,
        ingress: s.ingress.into_iter().map(|i| w::LoadBalancerIngress { ip: i.ip, hostname: i.hostname }).collect(),
    }
}

fn slice_out(s: io::EndpointSlice) -> w::EndpointSlice {
    w::EndpointSlice {
        meta: meta_out(s.meta),
        owner_references: s
            .owner_references
            .into_iter()
            .map(|o| w::OwnerReference { kind: o.kind, name: o.name, uid: o.uid })
            .collect(),
        address_type: s.address_type,
        endpoints: s
            .endpoints
            .into_iter()
            .map(|e| w::Endpoint { addresses: e.addresses, ready: e.ready, node_name: e.node_name })
            .collect(),
    }
}

fn node_out(n: io::Node) -> w::Node {
    w::Node { name: n.name, uid: n.uid, internal_ips: n.internal_ips }
}

fn pod_out(p: io::Pod) -> w::Pod {
    w::Pod {
        meta: meta_out(p.meta),
        node_name: p.node_name,
        phase: p.phase,
        pod_ip: p.pod_ip,
        pod_ips: p.pod_ips,
        host_ip: p.host_ip,
        host_ips: p.host_ips,
    }
}

pub(crate) fn kube_event_out(e: io::KubeEvent) -> w::KubeEvent {
    use io::KubeEvent as E;
    match e {
        E::ServiceApplied(s) => w::KubeEvent::ServiceApplied(service_out(s)),
        E::ServiceDeleted(s) => w::KubeEvent::ServiceDeleted(service_out(s)),
        E::EndpointSliceApplied(s) => w::KubeEvent::EndpointSliceApplied(slice_out(s)),
        E::EndpointSliceDeleted(s) => w::KubeEvent::EndpointSliceDeleted(slice_out(s)),
        E::NodeApplied(n) => w::KubeEvent::NodeApplied(node_out(n)),
        E::NodeDeleted(n) => w::KubeEvent::NodeDeleted(node_out(n)),
        E::PodApplied(p) => w::KubeEvent::PodApplied(pod_out(p)),
        E::PodDeleted(p) => w::KubeEvent::PodDeleted(pod_out(p)),
    }
}

fn ip_version_out(v: io::IpVersion) -> w::IpVersion {
    match v {
        io::IpVersion::V4 => w::IpVersion::Ipv4,
        io::IpVersion::V6 => w::IpVersion::Ipv6,
    }
}

fn public_ip_out(p: io::PublicIpInfo) -> w::PublicIpInfo {
    w::PublicIpInfo { name: p.name, ip_address: p.ip_address, version: ip_version_out(p.version), attached: p.attached }
}

fn address_update_out(a: io::AddressUpdate) -> w::AddressUpdate {
    w::AddressUpdate { address: a.address, services: a.services }
}

fn output_out(o: io::CallOutput) -> w::CallOutput {
    use io::CallOutput as O;
    match o {
        O::Done => w::CallOutput::Done,
        O::PublicIp(p) => w::CallOutput::PublicIp(public_ip_out(p)),
        O::NatGateway(n) => w::CallOutput::NatGateway(n.map(|n| w::NatGatewayInfo {
            name: n.name,
            references_service_gateway: n.references_service_gateway,
            raw: n.raw,
        })),
        O::PublicIps(list) => w::CallOutput::PublicIps(list.into_iter().map(public_ip_out).collect()),
        O::Names(names) => w::CallOutput::Names(names),
        O::SgwServices(list) => w::CallOutput::SgwServices(
            list.into_iter()
                .map(|s| w::SgwService {
                    name: s.name,
                    service_type: match s.service_type {
                        io::ServiceType::Inbound => w::ServiceType::Inbound,
                        io::ServiceType::Outbound => w::ServiceType::Outbound,
                        io::ServiceType::InboundOutbound => w::ServiceType::InboundOutbound,
                    },
                    backend_pools: s
                        .backend_pools
                        .into_iter()
                        .map(|p| w::BackendPool { load_balancer: p.load_balancer, pool: p.pool })
                        .collect(),
                    nat_gateway: s.nat_gateway,
                    is_default: s.is_default,
                })
                .collect(),
        ),
        O::AddressLocations(list) => w::CallOutput::AddressLocations(
            list.into_iter()
                .map(|l| w::AddressLocation {
                    location: l.location,
                    addresses: l.addresses.into_iter().map(address_update_out).collect(),
                })
                .collect(),
        ),
    }
}

fn error_out(e: io::CallError) -> w::CallError {
    use io::ErrorKind as K;
    w::CallError {
        kind: match e.kind {
            K::Http => w::ErrorKind::Http,
            K::Throttled => w::ErrorKind::Throttled,
            K::Timeout => w::ErrorKind::Timeout,
            K::Transport => w::ErrorKind::Transport,
            K::InvalidResponse => w::ErrorKind::InvalidResponse,
            K::OperationFailed => w::ErrorKind::OperationFailed,
            K::NotFound => w::ErrorKind::NotFound,
            K::Replaced => w::ErrorKind::Replaced,
            K::Conflict => w::ErrorKind::Conflict,
        },
        status: e.status,
        code: e.code,
        message: e.message,
        retry_after_ms: e.retry_after_ms,
    }
}

pub(crate) fn completion_out(c: io::Completion) -> w::Completion {
    w::Completion { id: c.id, outcome: c.outcome.map(output_out).map_err(error_out) }
}
