//! Conversions between the Kubernetes API objects (the `k8s-openapi` types) and the engine's
//! types.

use difftracker_engine::io::{
    Endpoint, EndpointSlice, IntOrString, KubeEvent, LoadBalancerIngress, Node, ObjectMeta, OwnerReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as K8sIntOrString;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One Kubernetes object of a kind the engine watches, in the engine's vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeObject {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Pod(Pod),
}

impl KubeObject {
    /// The engine event of this object being created or changed.
    pub fn applied(&self) -> KubeEvent {
        match self {
            KubeObject::Service(s) => KubeEvent::ServiceApplied(s.clone()),
            KubeObject::EndpointSlice(s) => KubeEvent::EndpointSliceApplied(s.clone()),
            KubeObject::Node(n) => KubeEvent::NodeApplied(n.clone()),
            KubeObject::Pod(p) => KubeEvent::PodApplied(p.clone()),
        }
    }

    /// The engine event of this object being deleted.
    pub fn deleted(&self) -> KubeEvent {
        match self {
            KubeObject::Service(s) => KubeEvent::ServiceDeleted(s.clone()),
            KubeObject::EndpointSlice(s) => KubeEvent::EndpointSliceDeleted(s.clone()),
            KubeObject::Node(n) => KubeEvent::NodeDeleted(n.clone()),
            KubeObject::Pod(p) => KubeEvent::PodDeleted(p.clone()),
        }
    }

    /// `Service`, `EndpointSlice`, `Node` or `Pod`.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeObject::Service(_) => "Service",
            KubeObject::EndpointSlice(_) => "EndpointSlice",
            KubeObject::Node(_) => "Node",
            KubeObject::Pod(_) => "Pod",
        }
    }

    /// Namespace (empty for Nodes).
    pub fn namespace(&self) -> &str {
        match self {
            KubeObject::Service(s) => &s.meta.namespace,
            KubeObject::EndpointSlice(s) => &s.meta.namespace,
            KubeObject::Node(_) => "",
            KubeObject::Pod(p) => &p.meta.namespace,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            KubeObject::Service(s) => &s.meta.name,
            KubeObject::EndpointSlice(s) => &s.meta.name,
            KubeObject::Node(n) => &n.name,
            KubeObject::Pod(p) => &p.meta.name,
        }
    }

    pub fn uid(&self) -> &str {
        match self {
            KubeObject::Service(s) => &s.meta.uid,
            KubeObject::EndpointSlice(s) => &s.meta.uid,
            KubeObject::Node(n) => &n.uid,
            KubeObject::Pod(p) => &p.meta.uid,
        }
    }

    /// The object's metadata (None for Nodes, which the engine reads without it).
    pub fn meta(&self) -> Option<&ObjectMeta> {
        match self {
            KubeObject::Service(s) => Some(&s.meta),
            KubeObject::EndpointSlice(s) => Some(&s.meta),
            KubeObject::Node(_) => None,
            KubeObject::Pod(p) => Some(&p.meta),
        }
    }

    pub fn meta_mut(&mut self) -> Option<&mut ObjectMeta> {
        match self {
            KubeObject::Service(s) => Some(&mut s.meta),
            KubeObject::EndpointSlice(s) => Some(&mut s.meta),
            KubeObject::Node(_) => None,
            KubeObject::Pod(p) => Some(&mut p.meta),
        }
    }

    /// Parses one object as the API server prints it. `Ok(None)` for a kind the engine does not
    /// watch (the caller counts it); `Err` with a readable reason when a watched kind is malformed.
    pub fn from_json(value: &Value) -> Result<Option<KubeObject>, String> {
        let obj = value.as_object().ok_or_else(|| format!("object is {}, not a JSON object", json_type_name(value)))?;
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            Some(other) => return Err(format!("\"kind\" is {}, not a string", json_type_name(other))),
            None => return Err("object has no \"kind\"".into()),
        };
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let describe = |e: serde_json::Error| {
            let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("<unnamed>");
            format!("{kind} {name}: {e}")
        };
        let parsed = match kind {
            "Service" if api_version.is_empty() || api_version == "v1" => {
                let s = core::Service::deserialize(value).map_err(describe)?;
                KubeObject::Service(service_from_k8s(&s))
            }
            "EndpointSlice" if api_version.is_empty() || api_version.starts_with("discovery.k8s.io/") => {
                let s = discovery::EndpointSlice::deserialize(value).map_err(describe)?;
                KubeObject::EndpointSlice(endpoint_slice_from_k8s(&s))
            }
            "Node" if api_version.is_empty() || api_version == "v1" => {
                let n = core::Node::deserialize(value).map_err(describe)?;
                KubeObject::Node(node_from_k8s(&n))
            }
            "Pod" if api_version.is_empty() || api_version == "v1" => {
                let p = core::Pod::deserialize(value).map_err(describe)?;
                KubeObject::Pod(pod_from_k8s(&p))
            }
            _ => return Ok(None),
        };
        if parsed.name().is_empty() {
            return Err(format!("{kind} has no metadata.name"));
        }
        Ok(Some(parsed))
    }

    /// The object in the API server's JSON shape.
    pub fn to_json(&self) -> Value {
        let v = match self {
            KubeObject::Service(s) => serde_json::to_value(service_to_k8s(s)),
            KubeObject::EndpointSlice(s) => serde_json::to_value(endpoint_slice_to_k8s(s)),
            KubeObject::Node(n) => serde_json::to_value(node_to_k8s(n)),
            KubeObject::Pod(p) => serde_json::to_value(pod_to_k8s(p)),
        };
        // The structs hold only strings, numbers, bools and string-keyed maps: this cannot fail.
        v.unwrap_or(Value::Null)
    }
}

pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn sorted_pairs(map: &Option<BTreeMap<String, String>>) -> Vec<(String, String)> {
    map.as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

fn pairs_to_map(pairs: &[(String, String)]) -> Option<BTreeMap<String, String>> {
    if pairs.is_empty() {
        None
    } else {
        Some(pairs.iter().cloned().collect())
    }
}

fn non_empty(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

fn non_empty_vec<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v.to_vec())
    }
}

/// A timestamp as the engine keeps it (RFC 3339, as the API server prints it).
fn time_to_string(t: &meta::Time) -> String {
    t.0.to_string()
}

/// The engine's timestamps come from the API server or the simulated cluster, both RFC 3339; an
/// unreadable one (never written by either) is kept as "set" at the epoch rather than dropped,
/// since a deletion timestamp matters by being there.
fn time_from_string(s: &str) -> meta::Time {
    meta::Time(s.parse().unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
}

fn meta_from_k8s(m: &meta::ObjectMeta, default_namespace: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: m.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| default_namespace.to_string()),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        resource_version: m.resource_version.clone().unwrap_or_default(),
        deletion_timestamp: m.deletion_timestamp.as_ref().map(time_to_string),
        finalizers: m.finalizers.clone().unwrap_or_default(),
        labels: sorted_pairs(&m.labels),
        annotations: sorted_pairs(&m.annotations),
    }
}

fn meta_to_k8s(m: &ObjectMeta) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: Some(m.name.clone()),
        namespace: non_empty(&m.namespace),
        uid: non_empty(&m.uid),
        resource_version: non_empty(&m.resource_version),
        deletion_timestamp: m.deletion_timestamp.as_deref().map(time_from_string),
        labels: pairs_to_map(&m.labels),
        annotations: pairs_to_map(&m.annotations),
        finalizers: non_empty_vec(&m.finalizers),
        ..meta::ObjectMeta::default()
    }
}

// ------------------------------------------------------------------------------------ Service

pub fn service_from_k8s(s: &core::Service) -> Service {
    let spec = s.spec.clone().unwrap_or_default();
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| {
            list.iter()
                .map(|i| LoadBalancerIngress { ip: i.ip.clone().unwrap_or_default(), hostname: i.hostname.clone().unwrap_or_default() })
                .collect()
        })
        .unwrap_or_default();
    Service {
        meta: meta_from_k8s(&s.metadata, "default"),
        // The API server defaults `spec.type` to ClusterIP.
        service_type: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
        load_balancer_class: spec.load_balancer_class.clone().filter(|c| !c.is_empty()),
        ports: spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: p.protocol.clone().unwrap_or_default(),
                port: p.port,
                target_port: p.target_port.as_ref().map(|t| match t {
                    K8sIntOrString::Int(i) => IntOrString::Int(*i),
                    K8sIntOrString::String(s) => IntOrString::Str(s.clone()),
                }),
            })
            .collect(),
        ip_families: spec.ip_families.unwrap_or_default(),
        session_affinity: spec.session_affinity.unwrap_or_default(),
        load_balancer_ip: spec.load_balancer_ip.unwrap_or_default(),
        external_traffic_policy: spec.external_traffic_policy.unwrap_or_default(),
        ingress,
    }
}

pub fn service_to_k8s(s: &Service) -> core::Service {
    let spec = core::ServiceSpec {
        type_: non_empty(&s.service_type),
        ports: Some(
            s.ports
                .iter()
                .map(|p| core::ServicePort {
                    name: non_empty(&p.name),
                    protocol: non_empty(&p.protocol),
                    port: p.port,
                    target_port: p.target_port.as_ref().map(|t| match t {
                        IntOrString::Int(i) => K8sIntOrString::Int(*i),
                        IntOrString::Str(s) => K8sIntOrString::String(s.clone()),
                    }),
                    ..core::ServicePort::default()
                })
                .collect(),
        ),
        ip_families: non_empty_vec(&s.ip_families),
        session_affinity: non_empty(&s.session_affinity),
        load_balancer_ip: non_empty(&s.load_balancer_ip),
        load_balancer_class: s.load_balancer_class.clone(),
        external_traffic_policy: non_empty(&s.external_traffic_policy),
        ..core::ServiceSpec::default()
    };
    let ingress = s
        .ingress
        .iter()
        .map(|i| core::LoadBalancerIngress {
            ip: non_empty(&i.ip),
            hostname: non_empty(&i.hostname),
            ..core::LoadBalancerIngress::default()
        })
        .collect();
    core::Service {
        metadata: meta_to_k8s(&s.meta),
        spec: Some(spec),
        status: Some(core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus { ingress: Some(ingress) }),
            ..core::ServiceStatus::default()
        }),
    }
}

// ------------------------------------------------------------------------------ EndpointSlice

pub fn endpoint_slice_from_k8s(s: &discovery::EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        meta: meta_from_k8s(&s.metadata, "default"),
        owner_references: s
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|o| OwnerReference { kind: o.kind.clone(), name: o.name.clone(), uid: o.uid.clone() })
            .collect(),
        address_type: s.address_type.clone(),
        endpoints: s
            .endpoints
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|e| Endpoint {
                addresses: e.addresses.clone(),
                ready: e.conditions.as_ref().and_then(|c| c.ready),
                node_name: e.node_name.clone().filter(|n| !n.is_empty()),
            })
            .collect(),
    }
}

pub fn endpoint_slice_to_k8s(s: &EndpointSlice) -> discovery::EndpointSlice {
    let mut metadata = meta_to_k8s(&s.meta);
    metadata.owner_references = non_empty_vec(
        &s.owner_references
            .iter()
            .map(|o| meta::OwnerReference {
                api_version: if o.kind == "Service" { "v1".into() } else { String::new() },
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            })
            .collect::<Vec<_>>(),
    );
    discovery::EndpointSlice {
        metadata,
        address_type: s.address_type.clone(),
        endpoints: Some(
            s.endpoints
                .iter()
                .map(|e| discovery::Endpoint {
                    addresses: e.addresses.clone(),
                    conditions: Some(discovery::EndpointConditions {
                        ready: e.ready,
                        serving: e.ready,
                        terminating: e.ready.map(|_| false),
                    }),
                    node_name: e.node_name.clone(),
                    ..discovery::Endpoint::default()
                })
                .collect(),
        ),
        ports: None,
    }
}

// ----------------------------------------------------------------------------------------- Node

pub fn node_from_k8s(n: &core::Node) -> Node {
    Node {
        name: n.metadata.name.clone().unwrap_or_default(),
        uid: n.metadata.uid.clone().unwrap_or_default(),
        internal_ips: n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|list| list.iter().filter(|a| a.type_ == "InternalIP").map(|a| a.address.clone()).collect())
            .unwrap_or_default(),
    }
}

pub fn node_to_k8s(n: &Node) -> core::Node {
    let mut addresses: Vec<core::NodeAddress> =
        n.internal_ips.iter().map(|ip| core::NodeAddress { type_: "InternalIP".into(), address: ip.clone() }).collect();
    addresses.push(core::NodeAddress { type_: "Hostname".into(), address: n.name.clone() });
    core::Node {
        metadata: meta::ObjectMeta { name: Some(n.name.clone()), uid: non_empty(&n.uid), ..meta::ObjectMeta::default() },
        spec: None,
        status: Some(core::NodeStatus { addresses: Some(addresses), ..core::NodeStatus::default() }),
    }
}

// ------------------------------------------------------------------------------------------ Pod

pub fn pod_from_k8s(p: &core::Pod) -> Pod {
    let status = p.status.clone().unwrap_or_default();
    let pod_ips = status.pod_ips.as_deref().unwrap_or_default().iter().map(|i| i.ip.clone()).collect();
    let host_ips = status.host_ips.as_deref().unwrap_or_default().iter().map(|i| i.ip.clone()).collect();
    Pod {
        meta: meta_from_k8s(&p.metadata, "default"),
        node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        phase: status.phase.clone().unwrap_or_default(),
        pod_ip: status.pod_ip.clone().unwrap_or_default(),
        pod_ips,
        host_ip: status.host_ip.clone().unwrap_or_default(),
        host_ips,
    }
}

pub fn pod_to_k8s(p: &Pod) -> core::Pod {
    let pod_ips = non_empty_vec(&p.pod_ips.iter().map(|ip| core::PodIP { ip: ip.clone() }).collect::<Vec<_>>());
    let host_ips = non_empty_vec(&p.host_ips.iter().map(|ip| core::HostIP { ip: ip.clone() }).collect::<Vec<_>>());
    core::Pod {
        metadata: meta_to_k8s(&p.meta),
        spec: Some(core::PodSpec { node_name: non_empty(&p.node_name), ..core::PodSpec::default() }),
        status: Some(core::PodStatus {
            phase: non_empty(&p.phase),
            host_ip: non_empty(&p.host_ip),
            host_ips,
            pod_ip: non_empty(&p.pod_ip),
            pod_ips,
            ..core::PodStatus::default()
        }),
    }
}
