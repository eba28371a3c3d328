use super::*;
use difftracker_engine::io::{IntOrString, LoadBalancerIngress};
use serde_json::json;

fn kubectl_service() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "creationTimestamp": "2025-03-01T10:00:00Z",
            "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
            "labels": {"app": "web", "tier": "front"},
            "name": "web",
            "namespace": "shop",
            "resourceVersion": "12345",
            "uid": "0F6E1D2C-aaaa-bbbb-cccc-000000000001",
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]
        },
        "spec": {
            "allocateLoadBalancerNodePorts": true,
            "clusterIP": "10.0.12.7",
            "clusterIPs": ["10.0.12.7"],
            "externalTrafficPolicy": "Cluster",
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [
                {"name": "http", "nodePort": 31080, "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "dns", "nodePort": 31053, "port": 53, "protocol": "UDP", "targetPort": "dns"}
            ],
            "selector": {"app": "web"},
            "sessionAffinity": "None",
            "type": "LoadBalancer"
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "20.1.2.3", "ipMode": "VIP"}]}}
    })
}

#[test]
fn parses_a_service_as_kubectl_prints_it() {
    let obj = KubeObject::from_json(&kubectl_service()).unwrap().unwrap();
    let KubeObject::Service(s) = obj else { panic!("not a service") };
    assert_eq!(s.meta.namespace, "shop");
    assert_eq!(s.meta.name, "web");
    assert_eq!(s.meta.uid, "0F6E1D2C-aaaa-bbbb-cccc-000000000001");
    assert_eq!(s.meta.resource_version, "12345");
    assert_eq!(s.meta.finalizers, vec!["service.kubernetes.io/load-balancer-cleanup".to_string()]);
    assert_eq!(s.meta.labels, vec![("app".into(), "web".into()), ("tier".into(), "front".into())]);
    assert_eq!(s.meta.annotation("kubectl.kubernetes.io/last-applied-configuration"), Some("{}"));
    assert_eq!(s.service_type, "LoadBalancer");
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.ports[0].protocol, "TCP");
    assert_eq!(s.ports[0].port, 80);
    assert_eq!(s.ports[0].target_port, Some(IntOrString::Int(8080)));
    assert_eq!(s.ports[1].target_port, Some(IntOrString::Str("dns".into())));
    assert_eq!(s.ip_families, vec!["IPv4".to_string()]);
    assert_eq!(s.session_affinity, "None");
    assert_eq!(s.external_traffic_policy, "Cluster");
    assert_eq!(s.load_balancer_ip, "");
    assert_eq!(s.load_balancer_class, None);
    assert_eq!(s.ingress, vec![LoadBalancerIngress { ip: "20.1.2.3".into(), hostname: String::new() }]);
}

#[test]
fn nulls_and_absent_fields_read_as_unset() {
    let v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bare", "namespace": null, "uid": "u1", "labels": null, "finalizers": null},
        "spec": {"ports": null, "type": null},
        "status": {"loadBalancer": {}}
    });
    let Some(KubeObject::Service(s)) = KubeObject::from_json(&v).unwrap() else { panic!() };
    assert_eq!(s.meta.namespace, "default");
    assert_eq!(s.service_type, "ClusterIP");
    assert!(s.ports.is_empty() && s.ingress.is_empty() && s.meta.labels.is_empty());
}

#[test]
fn parses_an_endpoint_slice() {
    let v = json!({
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": [
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "nodeName": "aks-node-1", "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "p1"},
             "zone": "westeurope-1"},
            {"addresses": ["10.244.2.9"], "conditions": {"ready": false}, "nodeName": "aks-node-2"},
            {"addresses": ["10.244.3.1"], "conditions": {}}
        ],
        "kind": "EndpointSlice",
        "metadata": {
            "generateName": "web-",
            "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                       "kubernetes.io/service-name": "web"},
            "name": "web-x7k2p", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": true, "controller": true,
                                 "kind": "Service", "name": "web", "uid": "svc-uid"}],
            "resourceVersion": "77", "uid": "slice-uid"
        },
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    });
    let Some(KubeObject::EndpointSlice(s)) = KubeObject::from_json(&v).unwrap() else { panic!() };
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(s.owner_references.len(), 1);
    assert_eq!(s.owner_references[0].kind, "Service");
    assert_eq!(s.owner_references[0].uid, "svc-uid");
    assert_eq!(s.endpoints.len(), 3);
    assert_eq!(s.endpoints[0].ready, Some(true));
    assert_eq!(s.endpoints[0].node_name.as_deref(), Some("aks-node-1"));
    assert_eq!(s.endpoints[1].ready, Some(false));
    assert_eq!(s.endpoints[2].ready, None);
    assert_eq!(s.endpoints[2].node_name, None);
    assert_eq!(s.meta.label(SERVICE_NAME_LABEL), Some("web"));
}

#[test]
fn parses_a_dual_stack_node_keeping_only_internal_ips_in_order() {
    let v = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "aks-node-1", "uid": "n1", "labels": {"kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": "10.244.1.0/24", "providerID": "azure:///x"},
        "status": {"addresses": [
            {"address": "10.224.0.4", "type": "InternalIP"},
            {"address": "aks-node-1", "type": "Hostname"},
            {"address": "fd00::4", "type": "InternalIP"},
            {"address": "20.0.0.1", "type": "ExternalIP"}
        ], "capacity": {"cpu": "2"}}
    });
    let Some(KubeObject::Node(n)) = KubeObject::from_json(&v).unwrap() else { panic!() };
    assert_eq!(n.name, "aks-node-1");
    assert_eq!(n.internal_ips, vec!["10.224.0.4".to_string(), "fd00::4".to_string()]);
}

#[test]
fn parses_an_egress_pod() {
    let v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "job-1", "namespace": "batch", "uid": "pod-uid",
                     "labels": {EGRESS_LABEL: "egress-a"},
                     "finalizers": [POD_FINALIZER],
                     "deletionTimestamp": "2025-03-01T10:00:05Z"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "aks-node-1"},
        "status": {"phase": "Running", "hostIP": "10.224.0.4", "hostIPs": [{"ip": "10.224.0.4"}, {"ip": "fd00::4"}],
                   "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd01::7"}]}
    });
    let Some(KubeObject::Pod(p)) = KubeObject::from_json(&v).unwrap() else { panic!() };
    assert_eq!(p.meta.label(EGRESS_LABEL), Some("egress-a"));
    assert_eq!(p.meta.deletion_timestamp.as_deref(), Some("2025-03-01T10:00:05Z"));
    assert_eq!(p.node_name, "aks-node-1");
    assert_eq!(p.phase, "Running");
    assert_eq!(p.host_ips, vec!["10.224.0.4".to_string(), "fd00::4".to_string()]);
    assert_eq!(p.pod_ips, vec!["10.244.1.7".to_string(), "fd01::7".to_string()]);
}

#[test]
fn unknown_kinds_are_none_and_malformed_objects_are_errors() {
    assert_eq!(KubeObject::from_json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})).unwrap(), None);
    assert_eq!(KubeObject::from_json(&json!({"apiVersion": "v1", "kind": "Endpoints"})).unwrap(), None);
    // An EndpointSlice of the v1 core group does not exist: another kind, skipped.
    assert_eq!(KubeObject::from_json(&json!({"apiVersion": "apps/v1", "kind": "Service"})).unwrap(), None);
    let e = KubeObject::from_json(&json!({"apiVersion": "v1"})).unwrap_err();
    assert!(e.contains("no \"kind\""), "{e}");
    let e = KubeObject::from_json(&json!([1, 2])).unwrap_err();
    assert!(e.contains("not a JSON object"), "{e}");
    let e = KubeObject::from_json(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"ports": [{"port": "eighty"}]}}))
    .unwrap_err();
    assert!(e.starts_with("Service x: invalid type"), "{e}");
    let e = KubeObject::from_json(&json!({"kind": "Node", "metadata": {}})).unwrap_err();
    assert!(e.contains("no metadata.name"), "{e}");
}

#[test]
fn engine_types_round_trip_through_kubernetes_json() {
    let Some(original) = KubeObject::from_json(&kubectl_service()).unwrap() else { panic!() };
    let back = KubeObject::from_json(&original.to_json()).unwrap().unwrap();
    assert_eq!(back, original);
    let ev = WatchEvent { event_type: WatchEventType::Deleted, object: original, at_ms: Some(1500) };
    let line = ev.to_json_line();
    assert!(line.starts_with("{\"type\":\"DELETED\",\"object\":{\"apiVersion\":\"v1\""), "{line}");
    assert!(line.ends_with(",\"at_ms\":1500}"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn engine_finalizers_are_recognised() {
    assert!(is_engine_finalizer("servicegateway.azure.com/service-cleanup"));
    assert!(is_engine_finalizer("service.kubernetes.io/load-balancer-cleanup"));
    assert!(is_engine_finalizer(POD_FINALIZER));
    assert!(!is_engine_finalizer("kubernetes"));
}
