//! The bundled samples: the sample trace and fault file of `examples/` (embedded once, here) and
//! the sample Kubernetes objects the demo, the benchmark and the tests build on.

use crate::emulator::FaultPlan;
use crate::replay::{parse_trace, Trace, TraceError};
use difftracker_engine::names::SERVICE_FINALIZERS;
use difftracker_engine::io::{Endpoint, EndpointSlice, IntOrString, Node, ObjectMeta, OwnerReference, Service, ServicePort};

/// The bundled sample trace, `examples/sample-trace.jsonl` (40 Services; written by
/// `difftracker gen-trace --services 40 --nodes 4 --churn medium --seed 1`).
pub const SAMPLE_TRACE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sample-trace.jsonl"));
/// How the bundled trace is named in progress lines and reports.
pub const SAMPLE_TRACE_NAME: &str = "examples/sample-trace.jsonl (bundled)";
/// The bundled sample fault file, `examples/faults.json`.
pub const SAMPLE_FAULTS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/faults.json"));

/// The bundled sample trace, parsed.
pub fn sample_trace() -> Result<Trace, TraceError> {
    parse_trace(SAMPLE_TRACE.as_bytes())
}

/// The bundled sample fault plan, parsed.
pub fn sample_faults() -> Result<FaultPlan, String> {
    FaultPlan::parse(SAMPLE_FAULTS)
}


pub fn sample_node(name: &str, ip: &str) -> Node {
    Node { name: name.into(), uid: format!("node-uid-{name}"), internal_ips: vec![ip.into()] }
}

/// A `type: LoadBalancer` Service with one TCP port 80 -> 8080.
pub fn sample_service(namespace: &str, name: &str, uid: &str) -> Service {
    Service {
        meta: ObjectMeta {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: "1".into(),
            ..ObjectMeta::default()
        },
        service_type: "LoadBalancer".into(),
        load_balancer_class: None,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
        }],
        ip_families: vec!["IPv4".into()],
        session_affinity: "None".into(),
        load_balancer_ip: String::new(),
        external_traffic_policy: "Cluster".into(),
        ingress: Vec::new(),
    }
}

/// The Service as the API server shows it once deletion was requested (finalizers still on).
pub fn deleting(service: &Service) -> Service {
    let mut s = service.clone();
    s.meta.deletion_timestamp = Some("2024-01-01T00:10:00Z".into());
    s.meta.finalizers = SERVICE_FINALIZERS.iter().map(|f| f.to_string()).collect();
    s.meta.resource_version = format!("{}0", s.meta.resource_version);
    s
}

/// An EndpointSlice of `service` with one ready endpoint per `(pod ip, node name)`.
pub fn sample_slice(service: &Service, endpoints: &[(&str, &str)]) -> EndpointSlice {
    EndpointSlice {
        meta: ObjectMeta {
            namespace: service.meta.namespace.clone(),
            name: format!("{}-slice", service.meta.name),
            uid: format!("{}-slice-uid", service.meta.uid),
            resource_version: "1".into(),
            labels: vec![("kubernetes.io/service-name".into(), service.meta.name.clone())],
            ..ObjectMeta::default()
        },
        owner_references: vec![OwnerReference {
            kind: "Service".into(),
            name: service.meta.name.clone(),
            uid: service.meta.uid.clone(),
        }],
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(ip, node)| Endpoint { addresses: vec![ip.to_string()], ready: Some(true), node_name: Some(node.to_string()) })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_samples_parse() {
        let t = super::sample_trace().unwrap();
        assert!(t.events.len() > 100);
        assert!(t.skipped.is_empty());
        let plan = super::sample_faults().unwrap();
        assert_eq!(plan.until_ms, Some(600_000));
    }
}
