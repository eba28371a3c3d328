//! The conversions between [`crate::io`] and the generated types that both WIT generations
//! share (`super::w` is the generation this component is built for): every domain record,
//! variant and enum is the same in 0.2.0 and 0.3.0, field for field. The calls are started by
//! `start_cloud!` and `start_kube!`, which take the engine's id as a last argument where the
//! imports do (0.3.0). What differs (errors, metric samples, the export itself) lives in the
//! generation's module.

use super::{w, wx};
use crate::io;

/// The tenant configuration a host creates the engine with (0.3.0 adds the POST interval).
pub(super) fn config_in(c: wx::TenantConfig) -> io::TenantConfig {
    io::TenantConfig {
        tenant: c.tenant,
        seed: c.seed,
        max_retry_after_ms: c.max_retry_after_ms,
        max_request_bytes: c.max_request_bytes,
        max_request_entries: c.max_request_entries,
        max_operations_in_flight: c.max_operations_in_flight,
        #[cfg(not(feature = "wit-0-2"))]
        sgw_post_interval_ms: c.sgw_post_interval_ms,
        // 0.2.0 has no such field: its hosts get what 0.2.0 engines always did, each POST at once.
        #[cfg(feature = "wit-0-2")]
        sgw_post_interval_ms: Some(0),
    }
}

/// Records a Kubernetes Event through the `kube` import (the same function in both generations).
pub(super) fn record_event(event: io::KubeEventRecord) {
    super::kube::record_event(
        &object_ref_out(event.target),
        match event.kind {
            io::ObjectKind::Service => w::ObjectKind::Service,
            io::ObjectKind::Pod => w::ObjectKind::Pod,
        },
        match event.event_type {
            io::EventType::Normal => w::EventType::Normal,
            io::EventType::Warning => w::EventType::Warning,
        },
        &event.reason,
        &event.message,
    )
}

macro_rules! start_cloud {
    ($call:expr $(, $id:expr)?) => {{
    use io::CloudCall as C;
    match $call {
        C::PutPublicIp { name, version } => cloud::put_public_ip($($id,)? &name, ip_version_out(version)),
        C::DeletePublicIp { name } => cloud::delete_public_ip($($id,)? &name),
        C::ListPublicIps => cloud::list_public_ips($($id)?),
        C::PutLoadBalancer(spec) => cloud::put_load_balancer($($id,)? &lb_spec_out(spec)),
        C::DeleteLoadBalancer { name } => cloud::delete_load_balancer($($id,)? &name),
        C::ListLoadBalancers => cloud::list_load_balancers($($id)?),
        C::PutNatGateway(spec) => {
            cloud::put_nat_gateway($($id,)? &w::NatGatewaySpec { name: spec.name, public_ips: spec.public_ips, public_ips_v6: spec.public_ips_v6 })
        }
        C::DetachNatGateway { name, raw } => cloud::detach_nat_gateway($($id,)? &name, &raw),
        C::GetNatGateway { name } => cloud::get_nat_gateway($($id,)? &name),
        C::DeleteNatGateway { name } => cloud::delete_nat_gateway($($id,)? &name),
        C::ListNatGateways => cloud::list_nat_gateways($($id)?),
        C::GetSgwServices => cloud::get_sgw_services($($id)?),
        C::GetAddressLocations => cloud::get_address_locations($($id)?),
        C::UpdateServices(requests) => {
            let requests: Vec<w::SgwServiceRequest> = requests.into_iter().map(sgw_request_out).collect();
            cloud::update_services($($id,)? &requests)
        }
        C::UpdateAddressLocations(locations) => {
            let locations: Vec<w::LocationUpdate> = locations.into_iter().map(location_update_out).collect();
            cloud::update_address_locations($($id,)? &locations)
        }
    }
    }};
}

macro_rules! start_kube {
    ($call:expr $(, $id:expr)?) => {{
    use io::KubeCall as K;
    match $call {
        K::AddServiceFinalizers(target) => kube::add_service_finalizers($($id,)? &object_ref_out(target)),
        K::RemoveServiceFinalizers(target) => kube::remove_service_finalizers($($id,)? &object_ref_out(target)),
        K::PatchServiceIngress(target, ingress) => {
            let ingress: Vec<w::LoadBalancerIngress> = ingress.into_iter().map(ingress_out).collect();
            kube::patch_service_ingress($($id,)? &object_ref_out(target), &ingress)
        }
        K::AddPodFinalizer(target) => kube::add_pod_finalizer($($id,)? &object_ref_out(target)),
        K::RemovePodFinalizer(target) => kube::remove_pod_finalizer($($id,)? &object_ref_out(target)),
    }
    }};
}

// ------------------------------------------------------------------------ io -> WIT

pub(super) fn ip_version_out(v: io::IpVersion) -> w::IpVersion {
    match v {
        io::IpVersion::V4 => w::IpVersion::Ipv4,
        io::IpVersion::V6 => w::IpVersion::Ipv6,
    }
}

pub(super) fn service_type_out(t: io::ServiceType) -> w::ServiceType {
    match t {
        io::ServiceType::Inbound => w::ServiceType::Inbound,
        io::ServiceType::Outbound => w::ServiceType::Outbound,
        io::ServiceType::InboundOutbound => w::ServiceType::InboundOutbound,
    }
}

pub(super) fn lb_spec_out(spec: io::LoadBalancerSpec) -> w::LoadBalancerSpec {
    w::LoadBalancerSpec {
        name: spec.name,
        public_ip: spec.public_ip,
        rules: spec
            .rules
            .into_iter()
            .map(|r| w::LbRule {
                protocol: match r.protocol {
                    io::TransportProtocol::Tcp => w::TransportProtocol::Tcp,
                    io::TransportProtocol::Udp => w::TransportProtocol::Udp,
                },
                frontend_port: r.frontend_port,
                backend_port: r.backend_port,
                idle_timeout_minutes: r.idle_timeout_minutes,
            })
            .collect(),
    }
}

pub(super) fn backend_pool_out(p: io::BackendPool) -> w::BackendPool {
    w::BackendPool { load_balancer: p.load_balancer, pool: p.pool }
}

pub(super) fn sgw_request_out(r: io::SgwServiceRequest) -> w::SgwServiceRequest {
    w::SgwServiceRequest {
        name: r.name,
        service_type: service_type_out(r.service_type),
        is_delete: r.is_delete,
        backend_pools: r.backend_pools.into_iter().map(backend_pool_out).collect(),
        nat_gateway: match r.nat_gateway {
            io::NatReference::Absent => w::NatReference::Absent,
            io::NatReference::Set(name) => w::NatReference::Set(name),
            io::NatReference::Clear => w::NatReference::Clear,
        },
        is_default: r.is_default,
    }
}

pub(super) fn address_update_out(a: io::AddressUpdate) -> w::AddressUpdate {
    w::AddressUpdate { address: a.address, services: a.services }
}

pub(super) fn location_update_out(l: io::LocationUpdate) -> w::LocationUpdate {
    w::LocationUpdate {
        location: l.location,
        action: match l.action {
            io::UpdateAction::FullUpdate => w::UpdateAction::FullUpdate,
            io::UpdateAction::PartialUpdate => w::UpdateAction::PartialUpdate,
        },
        addresses: l.addresses.into_iter().map(address_update_out).collect(),
    }
}

pub(super) fn object_ref_out(r: io::ObjectRef) -> w::ObjectRef {
    w::ObjectRef { namespace: r.namespace, name: r.name, uid: r.uid }
}

pub(super) fn ingress_out(i: io::LoadBalancerIngress) -> w::LoadBalancerIngress {
    w::LoadBalancerIngress { ip: i.ip, hostname: i.hostname }
}

pub(super) fn status_out(s: io::EngineStatus, metric_out: fn(io::MetricSample) -> w::MetricSample) -> w::EngineStatus {
    w::EngineStatus {
        states: s.states,
        operations_in_flight: s.operations_in_flight,
        calls_in_flight: s.calls_in_flight,
        pending_deletions: s.pending_deletions,
        pending_pod_deletions: s.pending_pod_deletions,
        buffered_endpoint_deltas: s.buffered_endpoint_deltas,
        location_sync_in_flight: s.location_sync_in_flight,
        settled: s.settled,
        initialization: w::Initialization {
            phase: match s.initialization.phase {
                io::InitPhase::Listing => w::InitPhase::Listing,
                io::InitPhase::Reconciling => w::InitPhase::Reconciling,
                io::InitPhase::Finishing => w::InitPhase::Finishing,
                io::InitPhase::Ready => w::InitPhase::Ready,
            },
            initial_lists_complete: s.initialization.initial_lists_complete,
            failed_attempts: s.initialization.failed_attempts,
            error: s.initialization.error,
        },
        metrics: s.metrics.into_iter().map(metric_out).collect(),
    }
}

pub(super) fn operation_out(o: io::OperationStatus) -> w::OperationStatus {
    w::OperationStatus {
        identity: o.identity,
        kind: o.kind,
        namespace: o.namespace,
        name: o.name,
        state: o.state,
        retry_count: o.retry_count,
        last_attempt_ms: o.last_attempt_ms,
        next_retry_at_ms: o.next_retry_at_ms,
        retries_exhausted: o.retries_exhausted,
        terminal: o.terminal,
        in_flight: o.in_flight,
        buffered_endpoints: o.buffered_endpoints,
        waiting_for: o.waiting_for,
        correlation_id: o.correlation_id,
    }
}

// ------------------------------------------------------------------------ WIT -> io

pub(super) fn meta_in(m: w::ObjectMeta) -> io::ObjectMeta {
    io::ObjectMeta {
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

pub(super) fn service_in(s: w::Service) -> io::Service {
    io::Service {
        meta: meta_in(s.meta),
        service_type: s.service_type,
        load_balancer_class: s.load_balancer_class,
        ports: s
            .ports
            .into_iter()
            .map(|p| io::ServicePort {
                name: p.name,
                protocol: p.protocol,
                port: p.port,
                target_port: p.target_port.map(|t| match t {
                    w::IntOrString::Int(i) => io::IntOrString::Int(i),
                    w::IntOrString::Str(s) => io::IntOrString::Str(s),
                }),
            })
            .collect(),
        ip_families: s.ip_families,
        session_affinity: s.session_affinity,
        load_balancer_ip: s.load_balancer_ip,
        external_traffic_policy: s.external_traffic_policy,
        ingress: s.ingress.into_iter().map(|i| io::LoadBalancerIngress { ip: i.ip, hostname: i.hostname }).collect(),
    }
}

pub(super) fn slice_in(s: w::EndpointSlice) -> io::EndpointSlice {
    io::EndpointSlice {
        meta: meta_in(s.meta),
        owner_references: s.owner_references.into_iter().map(|o| io::OwnerReference { kind: o.kind, name: o.name, uid: o.uid }).collect(),
        address_type: s.address_type,
        endpoints: s
            .endpoints
            .into_iter()
            .map(|e| io::Endpoint { addresses: e.addresses, ready: e.ready, node_name: e.node_name })
            .collect(),
    }
}

pub(super) fn node_in(n: w::Node) -> io::Node {
    io::Node { name: n.name, uid: n.uid, internal_ips: n.internal_ips }
}

pub(super) fn pod_in(p: w::Pod) -> io::Pod {
    io::Pod {
        meta: meta_in(p.meta),
        node_name: p.node_name,
        phase: p.phase,
        pod_ip: p.pod_ip,
        pod_ips: p.pod_ips,
        host_ip: p.host_ip,
        host_ips: p.host_ips,
    }
}

pub(super) fn kube_event_in(e: w::KubeEvent) -> io::KubeEvent {
    use w::KubeEvent as E;
    match e {
        E::ServiceApplied(s) => io::KubeEvent::ServiceApplied(service_in(s)),
        E::ServiceDeleted(s) => io::KubeEvent::ServiceDeleted(service_in(s)),
        E::EndpointSliceApplied(s) => io::KubeEvent::EndpointSliceApplied(slice_in(s)),
        E::EndpointSliceDeleted(s) => io::KubeEvent::EndpointSliceDeleted(slice_in(s)),
        E::NodeApplied(n) => io::KubeEvent::NodeApplied(node_in(n)),
        E::NodeDeleted(n) => io::KubeEvent::NodeDeleted(node_in(n)),
        E::PodApplied(p) => io::KubeEvent::PodApplied(pod_in(p)),
        E::PodDeleted(p) => io::KubeEvent::PodDeleted(pod_in(p)),
        E::InitialListsComplete => io::KubeEvent::InitialListsComplete,
    }
}

pub(super) fn ip_version_in(v: w::IpVersion) -> io::IpVersion {
    match v {
        w::IpVersion::Ipv4 => io::IpVersion::V4,
        w::IpVersion::Ipv6 => io::IpVersion::V6,
    }
}

pub(super) fn service_type_in(t: w::ServiceType) -> io::ServiceType {
    match t {
        w::ServiceType::Inbound => io::ServiceType::Inbound,
        w::ServiceType::Outbound => io::ServiceType::Outbound,
        w::ServiceType::InboundOutbound => io::ServiceType::InboundOutbound,
    }
}

pub(super) fn public_ip_in(p: w::PublicIpInfo) -> io::PublicIpInfo {
    io::PublicIpInfo { name: p.name, ip_address: p.ip_address, version: ip_version_in(p.version), attached: p.attached }
}

pub(super) fn address_update_in(a: w::AddressUpdate) -> io::AddressUpdate {
    io::AddressUpdate { address: a.address, services: a.services }
}

pub(super) fn output_in(o: w::CallOutput) -> io::CallOutput {
    use w::CallOutput as O;
    match o {
        O::Done => io::CallOutput::Done,
        O::PublicIp(p) => io::CallOutput::PublicIp(public_ip_in(p)),
        O::NatGateway(n) => io::CallOutput::NatGateway(n.map(|n| io::NatGatewayInfo {
            name: n.name,
            references_service_gateway: n.references_service_gateway,
            raw: n.raw,
        })),
        O::PublicIps(list) => io::CallOutput::PublicIps(list.into_iter().map(public_ip_in).collect()),
        O::Names(names) => io::CallOutput::Names(names),
        O::SgwServices(list) => io::CallOutput::SgwServices(
            list.into_iter()
                .map(|s| io::SgwService {
                    name: s.name,
                    service_type: service_type_in(s.service_type),
                    backend_pools: s
                        .backend_pools
                        .into_iter()
                        .map(|p| io::BackendPool { load_balancer: p.load_balancer, pool: p.pool })
                        .collect(),
                    nat_gateway: s.nat_gateway,
                    is_default: s.is_default,
                })
                .collect(),
        ),
        O::AddressLocations(list) => io::CallOutput::AddressLocations(
            list.into_iter()
                .map(|l| io::AddressLocation { location: l.location, addresses: l.addresses.into_iter().map(address_update_in).collect() })
                .collect(),
        ),
    }
}
