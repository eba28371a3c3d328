//! The `From` impls between `difftracker_engine::io` and the generated types that both WIT
//! generations share, field for field: the Kubernetes objects, the cloud calls and their outputs,
//! the status and operations. Each generation includes this file as
//! its `conversions::domain` (`#[path]`), with `w` (its `types`) and `wx` (its `engine`
//! interface) in scope, so one text serves two sets of generated types; what differs (errors,
//! metric samples, the tenant configuration) is in the generation's `conversions.rs`.

use super::{w, wx};
use difftracker_engine::io;

// ------------------------------------------------------------------------ WIT -> io (calls)

impl From<w::NatGatewaySpec> for io::NatGatewaySpec {
    fn from(spec: w::NatGatewaySpec) -> io::NatGatewaySpec {
        io::NatGatewaySpec { name: spec.name, public_ips: spec.public_ips, public_ips_v6: spec.public_ips_v6 }
    }
}

impl From<w::LoadBalancerIngress> for io::LoadBalancerIngress {
    fn from(i: w::LoadBalancerIngress) -> io::LoadBalancerIngress {
        io::LoadBalancerIngress { ip: i.ip, hostname: i.hostname }
    }
}

impl From<w::ObjectKind> for io::ObjectKind {
    fn from(kind: w::ObjectKind) -> io::ObjectKind {
        match kind {
            w::ObjectKind::Service => io::ObjectKind::Service,
            w::ObjectKind::Pod => io::ObjectKind::Pod,
        }
    }
}

impl From<w::EventType> for io::EventType {
    fn from(event_type: w::EventType) -> io::EventType {
        match event_type {
            w::EventType::Normal => io::EventType::Normal,
            w::EventType::Warning => io::EventType::Warning,
        }
    }
}

impl From<w::IpVersion> for io::IpVersion {
    fn from(v: w::IpVersion) -> io::IpVersion {
        match v {
            w::IpVersion::Ipv4 => io::IpVersion::V4,
            w::IpVersion::Ipv6 => io::IpVersion::V6,
        }
    }
}

impl From<w::ServiceType> for io::ServiceType {
    fn from(t: w::ServiceType) -> io::ServiceType {
        match t {
            w::ServiceType::Inbound => io::ServiceType::Inbound,
            w::ServiceType::Outbound => io::ServiceType::Outbound,
            w::ServiceType::InboundOutbound => io::ServiceType::InboundOutbound,
        }
    }
}

impl From<w::LoadBalancerSpec> for io::LoadBalancerSpec {
    fn from(spec: w::LoadBalancerSpec) -> io::LoadBalancerSpec {
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
}

impl From<w::SgwServiceRequest> for io::SgwServiceRequest {
    fn from(r: w::SgwServiceRequest) -> io::SgwServiceRequest {
        io::SgwServiceRequest {
            name: r.name,
            service_type: io::ServiceType::from(r.service_type),
            is_delete: r.is_delete,
            backend_pools: r.backend_pools.into_iter().map(|p| io::BackendPool { load_balancer: p.load_balancer, pool: p.pool }).collect(),
            nat_gateway: match r.nat_gateway {
                w::NatReference::Absent => io::NatReference::Absent,
                w::NatReference::Set(name) => io::NatReference::Set(name),
                w::NatReference::Clear => io::NatReference::Clear,
            },
            is_default: r.is_default,
        }
    }
}

impl From<w::LocationUpdate> for io::LocationUpdate {
    fn from(l: w::LocationUpdate) -> io::LocationUpdate {
        io::LocationUpdate {
            location: l.location,
            action: match l.action {
                w::UpdateAction::FullUpdate => io::UpdateAction::FullUpdate,
                w::UpdateAction::PartialUpdate => io::UpdateAction::PartialUpdate,
            },
            addresses: l.addresses.into_iter().map(|a| io::AddressUpdate { address: a.address, services: a.services }).collect(),
        }
    }
}

impl From<w::ObjectRef> for io::ObjectRef {
    fn from(r: w::ObjectRef) -> io::ObjectRef {
        io::ObjectRef { namespace: r.namespace, name: r.name, uid: r.uid }
    }
}

// ------------------------------------------------------------------------ WIT -> io (results)

impl From<wx::TickOutcome> for io::TickOutcome {
    fn from(o: wx::TickOutcome) -> io::TickOutcome {
        io::TickOutcome { next_wake_ms: o.next_wake_ms, calls_in_flight: o.calls_in_flight }
    }
}

impl From<w::OperationStatus> for io::OperationStatus {
    fn from(o: w::OperationStatus) -> io::OperationStatus {
        io::OperationStatus {
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
}

impl From<w::EngineStatus> for io::EngineStatus {
    fn from(s: w::EngineStatus) -> io::EngineStatus {
        io::EngineStatus {
            states: s.states,
            operations_in_flight: s.operations_in_flight,
            calls_in_flight: s.calls_in_flight,
            pending_deletions: s.pending_deletions,
            pending_pod_deletions: s.pending_pod_deletions,
            buffered_endpoint_deltas: s.buffered_endpoint_deltas,
            location_sync_in_flight: s.location_sync_in_flight,
            settled: s.settled,
            initialization: io::Initialization {
                phase: match s.initialization.phase {
                    w::InitPhase::Listing => io::InitPhase::Listing,
                    w::InitPhase::Reconciling => io::InitPhase::Reconciling,
                    w::InitPhase::Finishing => io::InitPhase::Finishing,
                    w::InitPhase::Ready => io::InitPhase::Ready,
                },
                initial_lists_complete: s.initialization.initial_lists_complete,
                failed_attempts: s.initialization.failed_attempts,
                error: s.initialization.error,
            },
            metrics: s.metrics.into_iter().map(io::MetricSample::from).collect(),
        }
    }
}

// ------------------------------------------------------------------------ io -> WIT (inputs)

impl From<io::ObjectMeta> for w::ObjectMeta {
    fn from(m: io::ObjectMeta) -> w::ObjectMeta {
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
}

impl From<io::Service> for w::Service {
    fn from(s: io::Service) -> w::Service {
        w::Service {
            meta: w::ObjectMeta::from(s.meta),
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
}

impl From<io::EndpointSlice> for w::EndpointSlice {
    fn from(s: io::EndpointSlice) -> w::EndpointSlice {
        w::EndpointSlice {
            meta: w::ObjectMeta::from(s.meta),
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
}

impl From<io::Node> for w::Node {
    fn from(n: io::Node) -> w::Node {
        w::Node { name: n.name, uid: n.uid, internal_ips: n.internal_ips }
    }
}

impl From<io::Pod> for w::Pod {
    fn from(p: io::Pod) -> w::Pod {
        w::Pod {
            meta: w::ObjectMeta::from(p.meta),
            node_name: p.node_name,
            phase: p.phase,
            pod_ip: p.pod_ip,
            pod_ips: p.pod_ips,
            host_ip: p.host_ip,
            host_ips: p.host_ips,
        }
    }
}

impl From<io::KubeEvent> for w::KubeEvent {
    fn from(e: io::KubeEvent) -> w::KubeEvent {
        use io::KubeEvent as E;
        match e {
            E::ServiceApplied(s) => w::KubeEvent::ServiceApplied(w::Service::from(s)),
            E::ServiceDeleted(s) => w::KubeEvent::ServiceDeleted(w::Service::from(s)),
            E::EndpointSliceApplied(s) => w::KubeEvent::EndpointSliceApplied(w::EndpointSlice::from(s)),
            E::EndpointSliceDeleted(s) => w::KubeEvent::EndpointSliceDeleted(w::EndpointSlice::from(s)),
            E::NodeApplied(n) => w::KubeEvent::NodeApplied(w::Node::from(n)),
            E::NodeDeleted(n) => w::KubeEvent::NodeDeleted(w::Node::from(n)),
            E::PodApplied(p) => w::KubeEvent::PodApplied(w::Pod::from(p)),
            E::PodDeleted(p) => w::KubeEvent::PodDeleted(w::Pod::from(p)),
            E::InitialListsComplete => w::KubeEvent::InitialListsComplete,
        }
    }
}

impl From<io::IpVersion> for w::IpVersion {
    fn from(v: io::IpVersion) -> w::IpVersion {
        match v {
            io::IpVersion::V4 => w::IpVersion::Ipv4,
            io::IpVersion::V6 => w::IpVersion::Ipv6,
        }
    }
}

impl From<io::PublicIpInfo> for w::PublicIpInfo {
    fn from(p: io::PublicIpInfo) -> w::PublicIpInfo {
        w::PublicIpInfo { name: p.name, ip_address: p.ip_address, version: w::IpVersion::from(p.version), attached: p.attached }
    }
}

impl From<io::AddressUpdate> for w::AddressUpdate {
    fn from(a: io::AddressUpdate) -> w::AddressUpdate {
        w::AddressUpdate { address: a.address, services: a.services }
    }
}

impl From<io::CallOutput> for w::CallOutput {
    fn from(o: io::CallOutput) -> w::CallOutput {
        use io::CallOutput as O;
        match o {
            O::Done => w::CallOutput::Done,
            O::PublicIp(p) => w::CallOutput::PublicIp(w::PublicIpInfo::from(p)),
            O::NatGateway(n) => w::CallOutput::NatGateway(n.map(|n| w::NatGatewayInfo {
                name: n.name,
                references_service_gateway: n.references_service_gateway,
                raw: n.raw,
            })),
            O::PublicIps(list) => w::CallOutput::PublicIps(list.into_iter().map(w::PublicIpInfo::from).collect()),
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
                        addresses: l.addresses.into_iter().map(w::AddressUpdate::from).collect(),
                    })
                    .collect(),
            ),
        }
    }
}

impl From<io::Completion> for w::Completion {
    fn from(c: io::Completion) -> w::Completion {
        w::Completion { id: c.id, outcome: c.outcome.map(w::CallOutput::from).map_err(w::CallError::from) }
    }
}
