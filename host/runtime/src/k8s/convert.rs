//! Conversions between the Kubernetes JSON shapes ([`super::types`]) and the engine's types.

use super::types::*;
use difftracker_engine::io::{
    Endpoint, EndpointSlice, IntOrString, KubeEvent, LoadBalancerIngress, Node, ObjectMeta, OwnerReference, Pod, Service, ServicePort,
};
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
                let s = K8sService::deserialize(value).map_err(describe)?;
                KubeObject::Service(service_from_k8s(&s))
            }
            "EndpointSlice" if api_version.is_empty() || api_version.starts_with("discovery.k8s.io/") => {
                let s = K8sEndpointSlice::deserialize(value).map_err(describe)?;
                KubeObject::EndpointSlice(endpoint_slice_from_k8s(&s))
            }
            "Node" if api_version.is_empty() || api_version == "v1" => {
                let n = K8sNode::deserialize(value).map_err(describe)?;
                KubeObject::Node(node_from_k8s(&n))
            }
            "Pod" if api_version.is_empty() || api_version == "v1" => {
                let p = K8sPod::deserialize(value).map_err(describe)?;
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

fn meta_from_k8s(m: &K8sObjectMeta, default_namespace: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: m.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| default_namespace.to_string()),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        resource_version: m.resource_version.clone().unwrap_or_default(),
        deletion_timestamp: m.deletion_timestamp.clone().filter(|t| !t.is_empty()),
        finalizers: m.finalizers.clone().unwrap_or_default(),
        labels: sorted_pairs(&m.labels),
        annotations: sorted_pairs(&m.annotations),
    }
}

fn meta_to_k8s(m: &ObjectMeta) -> K8sObjectMeta {
    K8sObjectMeta {
        name: Some(m.name.clone()),
        namespace: non_empty(&m.namespace),
        uid: non_empty(&m.uid),
        resource_version: non_empty(&m.resource_version),
        deletion_timestamp: m.deletion_timestamp.clone(),
        labels: pairs_to_map(&m.labels),
        annotations: pairs_to_map(&m.annotations),
        finalizers: non_empty_vec(&m.finalizers),
        ..K8sObjectMeta::default()
    }
}

// ------------------------------------------------------------------------------------ Service

pub fn service_from_k8s(s: &K8sService) -> Service {
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
        service_type: spec.service_type.clone().unwrap_or_else(|| "ClusterIP".into()),
        load_balancer_class: spec.load_balancer_class.clone().filter(|c| !c.is_empty()),
        ports: spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: p.protocol.clone().unwrap_or_default(),
                port: p.port.unwrap_or(0),
                target_port: p.target_port.as_ref().map(|t| match t {
                    K8sIntOrString::Int(i) => IntOrString::Int(*i),
                    K8sIntOrString::Str(s) => IntOrString::Str(s.clone()),
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

pub fn service_to_k8s(s: &Service) -> K8sService {
    let spec = K8sServiceSpec {
        service_type: non_empty(&s.service_type),
        ports: Some(
            s.ports
                .iter()
                .map(|p| K8sServicePort {
                    name: non_empty(&p.name),
                    protocol: non_empty(&p.protocol),
                    port: Some(p.port),
                    target_port: p.target_port.as_ref().map(|t| match t {
                        IntOrString::Int(i) => K8sIntOrString::Int(*i),
                        IntOrString::Str(s) => K8sIntOrString::Str(s.clone()),
                    }),
                    node_port: None,
                })
                .collect(),
        ),
        ip_families: non_empty_vec(&s.ip_families),
        session_affinity: non_empty(&s.session_affinity),
        load_balancer_ip: non_empty(&s.load_balancer_ip),
        load_balancer_class: s.load_balancer_class.clone(),
        external_traffic_policy: non_empty(&s.external_traffic_policy),
        ..K8sServiceSpec::default()
    };
    let ingress = s
        .ingress
        .iter()
        .map(|i| K8sLoadBalancerIngress { ip: non_empty(&i.ip), hostname: non_empty(&i.hostname), ip_mode: None })
        .collect();
    K8sService {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        metadata: meta_to_k8s(&s.meta),
        spec: Some(spec),
        status: Some(K8sServiceStatus { load_balancer: Some(K8sLoadBalancerStatus { ingress: Some(ingress) }) }),
    }
}

// ------------------------------------------------------------------------------ EndpointSlice

pub fn endpoint_slice_from_k8s(s: &K8sEndpointSlice) -> EndpointSlice {
    EndpointSlice {
        meta: meta_from_k8s(&s.metadata, "default"),
        owner_references: s
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|o| OwnerReference {
                kind: o.kind.clone().unwrap_or_default(),
                name: o.name.clone().unwrap_or_default(),
                uid: o.uid.clone().unwrap_or_default(),
            })
            .collect(),
        address_type: s.address_type.clone().unwrap_or_default(),
        endpoints: s
            .endpoints
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|e| Endpoint {
                addresses: e.addresses.clone().unwrap_or_default(),
                ready: e.conditions.as_ref().and_then(|c| c.ready),
                node_name: e.node_name.clone().filter(|n| !n.is_empty()),
            })
            .collect(),
    }
}

pub fn endpoint_slice_to_k8s(s: &EndpointSlice) -> K8sEndpointSlice {
    let mut metadata = meta_to_k8s(&s.meta);
    metadata.owner_references = non_empty_vec(
        &s.owner_references
            .iter()
            .map(|o| K8sOwnerReference {
                api_version: Some(if o.kind == "Service" { "v1".into() } else { String::new() }).filter(|v: &String| !v.is_empty()),
                kind: Some(o.kind.clone()),
                name: Some(o.name.clone()),
                uid: Some(o.uid.clone()),
                controller: Some(true),
                block_owner_deletion: Some(true),
            })
            .collect::<Vec<_>>(),
    );
    K8sEndpointSlice {
        api_version: Some("discovery.k8s.io/v1".into()),
        kind: Some("EndpointSlice".into()),
        metadata,
        address_type: non_empty(&s.address_type),
        endpoints: Some(
            s.endpoints
                .iter()
                .map(|e| K8sEndpoint {
                    addresses: Some(e.addresses.clone()),
                    conditions: Some(K8sEndpointConditions { ready: e.ready, serving: e.ready, terminating: e.ready.map(|_| false) }),
                    node_name: e.node_name.clone(),
                    target_ref: None,
                    zone: None,
                })
                .collect(),
        ),
        ports: None,
    }
}

// ----------------------------------------------------------------------------------------- Node

pub fn node_from_k8s(n: &K8sNode) -> Node {
    Node {
        name: n.metadata.name.clone().unwrap_or_default(),
        uid: n.metadata.uid.clone().unwrap_or_default(),
        internal_ips: n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|list| list.iter().filter(|a| a.address_type.as_deref() == Some("InternalIP")).filter_map(|a| a.address.clone()).collect())
            .unwrap_or_default(),
    }
}

pub fn node_to_k8s(n: &Node) -> K8sNode {
    let mut addresses: Vec<K8sNodeAddress> =
        n.internal_ips.iter().map(|ip| K8sNodeAddress { address_type: Some("InternalIP".into()), address: Some(ip.clone()) }).collect();
    addresses.push(K8sNodeAddress { address_type: Some("Hostname".into()), address: Some(n.name.clone()) });
    K8sNode {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        metadata: K8sObjectMeta { name: Some(n.name.clone()), uid: non_empty(&n.uid), ..K8sObjectMeta::default() },
        spec: None,
        status: Some(K8sNodeStatus { addresses: Some(addresses) }),
    }
}

// ------------------------------------------------------------------------------------------ Pod

pub fn pod_from_k8s(p: &K8sPod) -> Pod {
    let status = p.status.clone().unwrap_or_default();
    let ips = |list: &Option<Vec<K8sIp>>| -> Vec<String> {
        list.as_ref().map(|l| l.iter().filter_map(|i| i.ip.clone()).collect()).unwrap_or_default()
    };
    Pod {
        meta: meta_from_k8s(&p.metadata, "default"),
        node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        phase: status.phase.clone().unwrap_or_default(),
        pod_ip: status.pod_ip.clone().unwrap_or_default(),
        pod_ips: ips(&status.pod_ips),
        host_ip: status.host_ip.clone().unwrap_or_default(),
        host_ips: ips(&status.host_ips),
    }
}

pub fn pod_to_k8s(p: &Pod) -> K8sPod {
    let ips = |list: &[String]| -> Option<Vec<K8sIp>> {
        non_empty_vec(&list.iter().map(|ip| K8sIp { ip: Some(ip.clone()) }).collect::<Vec<_>>())
    };
    K8sPod {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        metadata: meta_to_k8s(&p.meta),
        spec: Some(K8sPodSpec { node_name: non_empty(&p.node_name) }),
        status: Some(K8sPodStatus {
            phase: non_empty(&p.phase),
            host_ip: non_empty(&p.host_ip),
            host_ips: ips(&p.host_ips),
            pod_ip: non_empty(&p.pod_ip),
            pod_ips: ips(&p.pod_ips),
        }),
    }
}
