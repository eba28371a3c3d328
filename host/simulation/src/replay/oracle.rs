//! The oracle of a replay: once the system has settled, the emulator's inventory must equal
//! exactly what the final cluster state implies.
//!
//! For every admitted LoadBalancer Service (identity = lower-cased UID): a public IP
//! `<uid>-pip`, a load balancer `<uid>`, a ServiceGateway registration `Inbound`, and each of its
//! ready endpoints mapped under the node IP of the endpoint's family (ENGINE.md 2.3); its
//! `status.loadBalancer.ingress` carries exactly that public IP. Every other Service carries no
//! ingress. For every egress identity with at least one admitted pod (ENGINE.md 2.4): a NAT
//! gateway `<id>`, public IPs `<id>-pip` (and `<id>-pip-v6` in a cluster with an IPv6 node), an
//! `Outbound` registration and the pods' addresses under their host IPs. Plus whatever the
//! emulator held before the engine started (the `default-natgw` it seeds), and nothing else.
//! Nothing may be stuck deleting.
//!
//! Admission follows ENGINE.md 2.2. A Service that was admitted and later changed to a rejected
//! spec keeps its load balancer in the engine (as upstream); the oracle does not model that
//! history and expects nothing for it, so generated traces never do it.
//!
//! The oracle reads the cluster through [`ClusterView`]: the replay's simulated [`Cluster`], or
//! the in-repo API server's store ([`crate::apiserver::StoreView`]) when the controller ran over
//! HTTP.

use super::cluster::Cluster;
use crate::emulator::CloudState;
use difftracker_engine::io::{EndpointSlice, IntOrString, Node, Pod, Service};
use difftracker_runtime::k8s::EGRESS_LABEL;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub const INTERNAL_LB_ANNOTATION: &str = "service.beta.kubernetes.io/azure-load-balancer-internal";
pub const IDLE_TIMEOUT_ANNOTATION: &str = "service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout";

/// What the oracle reads of a cluster's final state: the objects the engine watches (Pods: the
/// egress-labelled ones at least; the oracle skips any other) and which objects are still
/// being deleted.
pub trait ClusterView {
    fn services(&self) -> Box<dyn Iterator<Item = &Service> + '_>;
    fn endpoint_slices(&self) -> Box<dyn Iterator<Item = &EndpointSlice> + '_>;
    fn nodes(&self) -> Box<dyn Iterator<Item = &Node> + '_>;
    fn pods(&self) -> Box<dyn Iterator<Item = &Pod> + '_>;
    /// Objects being deleted that still wait for a finalizer, as `<kind>/<namespace>/<name>`.
    fn stuck_deleting(&self) -> Vec<String>;

    /// `status.loadBalancer.ingress` of every Service that has any (the IP, else the
    /// hostname), by `namespace/name`.
    fn service_ingress(&self) -> BTreeMap<String, Vec<String>> {
        self.services()
            .filter(|s| !s.ingress.is_empty())
            .map(|s| {
                let ips = s.ingress.iter().map(|i| if i.ip.is_empty() { i.hostname.clone() } else { i.ip.clone() }).collect();
                (format!("{}/{}", s.meta.namespace, s.meta.name), ips)
            })
            .collect()
    }
}

impl ClusterView for Cluster {
    fn services(&self) -> Box<dyn Iterator<Item = &Service> + '_> {
        Box::new(Cluster::services(self))
    }
    fn endpoint_slices(&self) -> Box<dyn Iterator<Item = &EndpointSlice> + '_> {
        Box::new(Cluster::endpoint_slices(self))
    }
    fn nodes(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        Box::new(Cluster::nodes(self))
    }
    fn pods(&self) -> Box<dyn Iterator<Item = &Pod> + '_> {
        Box::new(Cluster::pods(self))
    }
    fn stuck_deleting(&self) -> Vec<String> {
        Cluster::stuck_deleting(self)
    }
}

/// Whether the Service asks for a load balancer from this controller: type LoadBalancer, not
/// being deleted, no `loadBalancerClass`.
pub fn wants_load_balancer(svc: &Service) -> bool {
    svc.service_type == "LoadBalancer" && svc.meta.deletion_timestamp.is_none() && svc.load_balancer_class.is_none()
}

/// Admission of ENGINE.md 2.2 plus the build-time checks: `Ok(true)` to provision, `Ok(false)`
/// for nothing to provision (no ports), `Err(reason)` when rejected.
pub fn admission(svc: &Service) -> Result<bool, &'static str> {
    if svc.meta.annotation(INTERNAL_LB_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Err("UnsupportedInternalLoadBalancer");
    }
    if svc.session_affinity == "ClientIP" {
        return Err("UnsupportedSessionAffinity");
    }
    if !svc.load_balancer_ip.is_empty() {
        return Err("UnsupportedLoadBalancerIP");
    }
    if svc.ip_families.len() > 1 {
        return Err("UnsupportedDualStack");
    }
    if let Some(raw) = svc.meta.annotation(IDLE_TIMEOUT_ANNOTATION) {
        match raw.trim().parse::<i64>() {
            Ok(m) if (4..=30).contains(&m) => {}
            _ => return Err("InvalidIdleTimeout"),
        }
    }
    let mut backends = BTreeSet::new();
    for p in &svc.ports {
        if matches!(p.target_port, Some(IntOrString::Str(_))) {
            return Err("UnsupportedNamedTargetPort");
        }
        let protocol = if p.protocol.is_empty() { "TCP" } else { p.protocol.as_str() };
        if protocol != "TCP" && protocol != "UDP" {
            return Err("UnsupportedProtocol");
        }
        let backend = match p.target_port {
            Some(IntOrString::Int(t)) if t > 0 => t,
            _ => p.port,
        };
        if !backends.insert((protocol, backend)) {
            return Err("UnsupportedBackendPortCollision");
        }
        if !(1..=65534).contains(&p.port) || !(1..=65535).contains(&backend) {
            return Err("InvalidPort");
        }
    }
    if svc.ip_families.first().is_some_and(|f| f != "IPv4" && f != "IPv6") {
        return Err("UnknownIPFamily");
    }
    Ok(!svc.ports.is_empty())
}

/// The identity of an inbound Service.
pub fn identity(svc: &Service) -> String {
    svc.meta.uid.to_ascii_lowercase()
}

/// What the inventory should hold. Public IP addresses are not predictable; the oracle checks
/// that each Service's ingress carries the address its public IP got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedInventory {
    /// Public IP names (with the address when it is known in advance: the baseline's).
    pub public_ips: BTreeMap<String, Option<String>>,
    pub load_balancers: BTreeSet<String>,
    pub nat_gateways: BTreeSet<String>,
    pub sgw_services: BTreeMap<String, String>,
    pub address_locations: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// `namespace/name` -> the public IP whose address its ingress must carry (None: no ingress).
    pub ingress: BTreeMap<String, Option<String>>,
    /// Public IP name -> whether its address must be IPv6 (for the Services' own public IPs).
    pub ipv6: BTreeMap<String, bool>,
    /// Identities of Services that ask for a load balancer but fail admission. ENGINE.md 9 keeps
    /// them desired so that a spec change never destroys a live load balancer: whether their
    /// resources exist depends on history (created before the change or not), so they may exist
    /// (public IP, load balancer, registration, their addresses, an ingress naming that public
    /// IP) but need not.
    pub tolerated: BTreeSet<String>,
}

fn canonical(ip: &str) -> Option<IpAddr> {
    ip.trim().parse::<IpAddr>().ok()
}

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The node IP an address of `addr`'s family is filed under: the smallest canonical string
/// among the node's InternalIPs of that family.
fn location_for(node_ips: &[String], addr: &IpAddr) -> Option<String> {
    node_ips.iter().filter_map(|ip| canonical(ip)).filter(|ip| same_family(ip, addr)).map(|ip| ip.to_string()).min()
}

/// Whether `name` is a UUID (how this controller names a Service's load balancer).
fn is_uuid(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// The baseline of a run that starts from a seeded cloud state: the emulator's own resources
/// (`pre_seed`, its inventory before seeding) plus the seeded resources this controller does not
/// own by its naming and so must leave alone: load balancers whose name is not a UUID, with the
/// `<name>-pip` their frontend uses. Everything else seeded counts as a previous controller's: the
/// start-up pass adopts what the cluster still wants and sweeps the rest, so it is not baseline.
pub fn baseline_with(pre_seed: &Value, cs: &CloudState) -> Value {
    let mut out = pre_seed.clone();
    for lb in cs.load_balancers.iter().filter(|n| !is_uuid(n)) {
        if let Some(Value::Array(a)) = out.get_mut("load_balancers") {
            if !a.iter().any(|v| v.as_str() == Some(lb.as_str())) {
                a.push(Value::String(lb.clone()));
            }
        }
        let pip = format!("{lb}-pip");
        if let (Some(addr), Some(Value::Object(m))) = (cs.public_ips.get(&pip), out.get_mut("public_ips")) {
            m.insert(pip, Value::String(addr.to_string()));
        }
    }
    out
}

/// The inventory the final cluster state implies, on top of `baseline` (the emulator's inventory
/// before the engine ran).
pub fn expected_inventory(cluster: &Cluster, baseline: &Value) -> ExpectedInventory {
    expected_inventory_of(cluster, baseline)
}

/// [`expected_inventory`] of any [`ClusterView`].
pub fn expected_inventory_of(cluster: &dyn ClusterView, baseline: &Value) -> ExpectedInventory {
    let mut exp = ExpectedInventory::default();
    // Baseline.
    if let Some(Value::Object(pips)) = baseline.get("public_ips") {
        for (name, ip) in pips {
            exp.public_ips.insert(name.clone(), ip.as_str().map(str::to_string));
        }
    }
    for (field, set) in [("load_balancers", &mut exp.load_balancers), ("nat_gateways", &mut exp.nat_gateways)] {
        if let Some(Value::Array(names)) = baseline.get(field) {
            set.extend(names.iter().filter_map(|n| n.as_str().map(str::to_string)));
        }
    }
    if let Some(Value::Object(svcs)) = baseline.get("sgw_services") {
        for (name, t) in svcs {
            exp.sgw_services.insert(name.clone(), t.as_str().unwrap_or_default().to_string());
        }
    }
    if let Some(Value::Object(locs)) = baseline.get("address_locations") {
        for (node, addrs) in locs {
            let entry = exp.address_locations.entry(node.clone()).or_default();
            if let Value::Object(addrs) = addrs {
                for (pod, svcs) in addrs {
                    let set = entry.entry(pod.clone()).or_default();
                    if let Value::Array(svcs) = svcs {
                        set.extend(svcs.iter().filter_map(|s| s.as_str().map(str::to_string)));
                    }
                }
            }
        }
    }

    let nodes: BTreeMap<&str, &Vec<String>> = cluster.nodes().map(|n| (n.name.as_str(), &n.internal_ips)).collect();
    // Inbound.
    let mut admitted: BTreeMap<String, String> = BTreeMap::new(); // identity -> ns/name
    for svc in cluster.services() {
        let key = format!("{}/{}", svc.meta.namespace, svc.meta.name);
        if wants_load_balancer(svc) && admission(svc) == Ok(true) {
            let id = identity(svc);
            let pip = format!("{id}-pip");
            exp.public_ips.insert(pip.clone(), None);
            exp.ipv6.insert(pip.clone(), svc.ip_families.first().is_some_and(|f| f == "IPv6"));
            exp.load_balancers.insert(id.clone());
            exp.sgw_services.insert(id.clone(), "Inbound".into());
            exp.ingress.insert(key.clone(), Some(pip));
            admitted.insert(id, key);
        } else {
            if wants_load_balancer(svc) && admission(svc).is_err() {
                exp.tolerated.insert(identity(svc));
            }
            exp.ingress.insert(key, None);
        }
    }
    for slice in cluster.endpoint_slices() {
        if slice.meta.deletion_timestamp.is_some() {
            continue;
        }
        let Some(owner) = slice.owner_references.iter().find(|o| o.kind == "Service") else { continue };
        let id = owner.uid.to_ascii_lowercase();
        if !admitted.contains_key(&id) {
            continue;
        }
        for ep in &slice.endpoints {
            if ep.ready == Some(false) {
                continue;
            }
            let Some(node_ips) = ep.node_name.as_deref().and_then(|n| nodes.get(n)) else { continue };
            for addr in &ep.addresses {
                let Some(ip) = canonical(addr) else { continue };
                let Some(location) = location_for(node_ips, &ip) else { continue };
                exp.address_locations.entry(location).or_default().entry(ip.to_string()).or_default().insert(id.clone());
            }
        }
    }
    // Outbound.
    let cluster_has_v6 = cluster.nodes().any(|n| n.internal_ips.iter().any(|ip| canonical(ip).is_some_and(|a| a.is_ipv6())));
    for pod in cluster.pods() {
        let Some(id) = egress_identity(pod) else { continue };
        let mut any = false;
        for addr in pod_addresses(pod) {
            let Some(location) = pod_location(pod, &addr) else { continue };
            exp.address_locations.entry(location).or_default().entry(addr.to_string()).or_default().insert(id.clone());
            any = true;
        }
        if any {
            exp.nat_gateways.insert(id.clone());
            exp.public_ips.insert(format!("{id}-pip"), None);
            exp.ipv6.insert(format!("{id}-pip"), false);
            if cluster_has_v6 {
                exp.public_ips.insert(format!("{id}-pip-v6"), None);
                exp.ipv6.insert(format!("{id}-pip-v6"), true);
            }
            exp.sgw_services.insert(id.clone(), "Outbound".into());
        }
    }
    exp
}

fn egress_identity(pod: &Pod) -> Option<String> {
    let id = pod.meta.label(EGRESS_LABEL)?.to_ascii_lowercase();
    if id.is_empty() || id == "default-natgw" || pod.meta.deletion_timestamp.is_some() {
        return None;
    }
    if pod.phase != "Running" && pod.phase != "Pending" {
        return None;
    }
    let valid = id.len() <= 73
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '-')
        && id.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.chars().last().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    valid.then_some(id)
}

fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    let raw: Vec<&String> = if pod.pod_ips.is_empty() { std::iter::once(&pod.pod_ip).collect() } else { pod.pod_ips.iter().collect() };
    let mut out: Vec<IpAddr> = raw.into_iter().filter_map(|ip| canonical(ip)).collect();
    out.dedup();
    out
}

fn pod_location(pod: &Pod, addr: &IpAddr) -> Option<String> {
    canonical(&pod.host_ip)?;
    let hosts: Vec<&String> = if pod.host_ips.is_empty() { vec![&pod.host_ip] } else { pod.host_ips.iter().collect() };
    hosts.into_iter().filter_map(|h| canonical(h)).find(|h| same_family(h, addr)).map(|h| h.to_string())
}

/// Compares the emulator's `inventory` and the cluster's final state with what the cluster
/// implies. Returns the differences, one readable line each; empty when everything matches.
pub fn check(cluster: &Cluster, inventory: &Value, baseline: &Value) -> Vec<String> {
    check_view(cluster, inventory, baseline)
}

/// [`check`] of any [`ClusterView`] (the API server's store through
/// [`crate::apiserver::StoreView`]).
pub fn check_view(cluster: &dyn ClusterView, inventory: &Value, baseline: &Value) -> Vec<String> {
    let exp = expected_inventory_of(cluster, baseline);
    let mut diffs = Vec::new();
    let actual_pips: BTreeMap<String, Option<String>> = match inventory.get("public_ips") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string))).collect(),
        _ => BTreeMap::new(),
    };
    for (name, want) in &exp.public_ips {
        match actual_pips.get(name) {
            None => diffs.push(format!("missing public IP {name}")),
            Some(got) => {
                if want.is_some() && want != got {
                    diffs.push(format!("public IP {name} has address {got:?}, expected {want:?}"));
                }
                if let (Some(v6), Some(addr)) = (exp.ipv6.get(name), got.as_deref().and_then(canonical)) {
                    if addr.is_ipv6() != *v6 {
                        diffs.push(format!(
                            "public IP {name} has address {addr}, expected an {} address",
                            if *v6 { "IPv6" } else { "IPv4" }
                        ));
                    }
                }
            }
        }
    }
    let tolerated = |name: &str| exp.tolerated.contains(name.strip_suffix("-pip").unwrap_or(name));
    for name in actual_pips.keys().filter(|n| !exp.public_ips.contains_key(*n) && !tolerated(n)) {
        diffs.push(format!("unexpected public IP {name}"));
    }
    for (field, want, what) in
        [("load_balancers", &exp.load_balancers, "load balancer"), ("nat_gateways", &exp.nat_gateways, "NAT gateway")]
    {
        let got: BTreeSet<String> = match inventory.get(field) {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => BTreeSet::new(),
        };
        diffs.extend(want.difference(&got).map(|n| format!("missing {what} {n}")));
        diffs.extend(got.difference(want).filter(|n| !tolerated(n)).map(|n| format!("unexpected {what} {n}")));
    }
    let got_sgw: BTreeMap<String, String> = match inventory.get("sgw_services") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect(),
        _ => BTreeMap::new(),
    };
    for (name, t) in &exp.sgw_services {
        match got_sgw.get(name) {
            None => diffs.push(format!("missing ServiceGateway service {name} ({t})")),
            Some(g) if g != t => diffs.push(format!("ServiceGateway service {name} is {g}, expected {t}")),
            _ => {}
        }
    }
    for name in got_sgw.keys().filter(|n| !exp.sgw_services.contains_key(*n) && !tolerated(n)) {
        diffs.push(format!("unexpected ServiceGateway service {name}"));
    }
    let mut got_locs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    if let Some(Value::Object(locs)) = inventory.get("address_locations") {
        for (node, addrs) in locs {
            let entry = got_locs.entry(node.clone()).or_default();
            if let Value::Object(addrs) = addrs {
                for (pod, svcs) in addrs {
                    let set: BTreeSet<String> = match svcs {
                        Value::Array(a) => a.iter().filter_map(|s| s.as_str().map(str::to_string)).filter(|s| !tolerated(s)).collect(),
                        _ => BTreeSet::new(),
                    };
                    if !set.is_empty() {
                        entry.insert(pod.clone(), set);
                    }
                }
            }
        }
    }
    let empty = BTreeMap::new();
    let nodes: BTreeSet<&String> = exp.address_locations.keys().chain(got_locs.keys()).collect();
    for node in nodes {
        let want = exp.address_locations.get(node).unwrap_or(&empty);
        let got = got_locs.get(node).unwrap_or(&empty);
        let pods: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
        for pod in pods {
            match (want.get(pod), got.get(pod)) {
                (Some(w), None) => diffs.push(format!("missing address {pod} under {node} for {}", join(w))),
                (None, Some(g)) => diffs.push(format!("unexpected address {pod} under {node} for {}", join(g))),
                (Some(w), Some(g)) if w != g => diffs.push(format!("address {pod} under {node} maps to {}, expected {}", join(g), join(w))),
                _ => {}
            }
        }
    }
    // Ingress.
    let ingress = cluster.service_ingress();
    let tolerated_pip: BTreeMap<String, String> = cluster
        .services()
        .filter(|svc| exp.tolerated.contains(&identity(svc)))
        .map(|svc| (format!("{}/{}", svc.meta.namespace, svc.meta.name), format!("{}-pip", identity(svc))))
        .collect();
    for (key, pip) in &exp.ingress {
        let got = ingress.get(key).cloned().unwrap_or_default();
        // A kept load balancer of a rejected Service may still be announced, with its own address.
        let kept = tolerated_pip.get(key).and_then(|pip| actual_pips.get(pip).cloned().flatten());
        match pip {
            None if !got.is_empty() && kept.is_some_and(|a| got == vec![a]) => {}
            None if !got.is_empty() => diffs.push(format!("Service {key} carries ingress {got:?} but has no load balancer")),
            Some(pip) => {
                let address = actual_pips.get(pip).cloned().flatten();
                match address {
                    Some(a) if got == vec![a.clone()] => {}
                    Some(a) => diffs.push(format!("Service {key} carries ingress {got:?}, expected [\"{a}\"] of {pip}")),
                    None if actual_pips.contains_key(pip) => diffs.push(format!("public IP {pip} of Service {key} has no address")),
                    None => {}
                }
            }
            None => {}
        }
    }
    for stuck in cluster.stuck_deleting() {
        diffs.push(format!("{stuck} is stuck deleting"));
    }
    diffs
}

fn join(set: &BTreeSet<String>) -> String {
    format!("[{}]", set.iter().cloned().collect::<Vec<_>>().join(", "))
}

/// Checks a replay report: converged, and its oracle verdict (written by the replay, which had
/// the final cluster at hand) found no difference. `Err` lists what is wrong.
pub fn check_report(report: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if let Some(failure) = report.get("engine_failure").and_then(Value::as_str) {
        problems.push(failure.to_string());
    }
    if report.get("converged") != Some(&Value::Bool(true)) {
        problems
            .push(format!("did not converge within {} ms of virtual time", report.get("virtual_ms").and_then(Value::as_u64).unwrap_or(0)));
    }
    match report.get("oracle").and_then(|o| o.get("differences")) {
        Some(Value::Array(d)) => problems.extend(d.iter().map(|v| v.as_str().unwrap_or_default().to_string())),
        _ => problems.push("the report has no oracle verdict".into()),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use difftracker_engine::io::{
        Endpoint, EndpointSlice, KubeCall, LoadBalancerIngress, Node, ObjectMeta, ObjectRef, OwnerReference, ServicePort,
    };
    use difftracker_runtime::k8s::{KubeObject, WatchEventType};
    use serde_json::json;

    fn svc(name: &str, uid: &str) -> Service {
        Service {
            meta: ObjectMeta { namespace: "ns".into(), name: name.into(), uid: uid.into(), ..Default::default() },
            service_type: "LoadBalancer".into(),
            ports: vec![ServicePort { name: "http".into(), protocol: "TCP".into(), port: 80, target_port: Some(IntOrString::Int(8080)) }],
            ip_families: vec!["IPv4".into()],
            ..Default::default()
        }
    }

    fn cluster() -> Cluster {
        let mut c = Cluster::new();
        c.apply(
            0,
            WatchEventType::Added,
            KubeObject::Node(Node { name: "n1".into(), uid: "n".into(), internal_ips: vec!["10.0.0.4".into(), "fd00::4".into()] }),
        );
        c.apply(0, WatchEventType::Added, KubeObject::Service(svc("a", "UID-A")));
        let mut rejected = svc("b", "uid-b");
        rejected.session_affinity = "ClientIP".into();
        c.apply(0, WatchEventType::Added, KubeObject::Service(rejected));
        c.apply(
            0,
            WatchEventType::Added,
            KubeObject::EndpointSlice(EndpointSlice {
                meta: ObjectMeta { namespace: "ns".into(), name: "a-1".into(), uid: "s1".into(), ..Default::default() },
                owner_references: vec![OwnerReference { kind: "Service".into(), name: "a".into(), uid: "UID-A".into() }],
                address_type: "IPv4".into(),
                endpoints: vec![
                    Endpoint { addresses: vec!["10.1.0.5".into()], ready: Some(true), node_name: Some("n1".into()) },
                    Endpoint { addresses: vec!["10.1.0.6".into()], ready: Some(false), node_name: Some("n1".into()) },
                    Endpoint { addresses: vec!["10.1.0.7".into()], ready: None, node_name: Some("gone".into()) },
                    Endpoint { addresses: vec!["fd01::0:7".into()], ready: None, node_name: Some("n1".into()) },
                ],
            }),
        );
        c
    }

    fn baseline() -> Value {
        json!({"public_ips": {"default-natgw-pip": "4.4.4.4"}, "load_balancers": [], "nat_gateways": ["default-natgw"],
               "sgw_services": {"default-natgw": "Outbound"}, "address_locations": {}})
    }

    fn good_inventory() -> Value {
        json!({"public_ips": {"default-natgw-pip": "4.4.4.4", "uid-a-pip": "20.0.0.1"}, "load_balancers": ["uid-a"],
               "nat_gateways": ["default-natgw"], "sgw_services": {"default-natgw": "Outbound", "uid-a": "Inbound"},
               "address_locations": {"10.0.0.4": {"10.1.0.5": ["uid-a"]}, "fd00::4": {"fd01::7": ["uid-a"]}}})
    }

    #[test]
    fn admission_follows_the_spec() {
        assert_eq!(admission(&svc("a", "u")), Ok(true));
        let mut s = svc("a", "u");
        s.meta.annotations = vec![(INTERNAL_LB_ANNOTATION.into(), "True".into())];
        assert_eq!(admission(&s), Err("UnsupportedInternalLoadBalancer"));
        let mut s = svc("a", "u");
        s.load_balancer_ip = "1.2.3.4".into();
        assert_eq!(admission(&s), Err("UnsupportedLoadBalancerIP"));
        let mut s = svc("a", "u");
        s.ip_families = vec!["IPv4".into(), "IPv6".into()];
        assert_eq!(admission(&s), Err("UnsupportedDualStack"));
        let mut s = svc("a", "u");
        s.meta.annotations = vec![(IDLE_TIMEOUT_ANNOTATION.into(), "31".into())];
        assert_eq!(admission(&s), Err("InvalidIdleTimeout"));
        let mut s = svc("a", "u");
        s.ports.push(ServicePort { name: "x".into(), protocol: "".into(), port: 81, target_port: Some(IntOrString::Int(8080)) });
        assert_eq!(admission(&s), Err("UnsupportedBackendPortCollision"));
        let mut s = svc("a", "u");
        s.ports[0].protocol = "SCTP".into();
        assert_eq!(admission(&s), Err("UnsupportedProtocol"));
        let mut s = svc("a", "u");
        s.ports[0].target_port = Some(IntOrString::Str("http".into()));
        assert_eq!(admission(&s), Err("UnsupportedNamedTargetPort"));
        let mut s = svc("a", "u");
        s.ports.clear();
        assert_eq!(admission(&s), Ok(false));
        let mut s = svc("a", "u");
        s.load_balancer_class = Some("other".into());
        assert!(!wants_load_balancer(&s));
    }

    #[test]
    fn expected_inventory_of_a_small_cluster() {
        let c = cluster();
        let exp = expected_inventory(&c, &baseline());
        assert_eq!(exp.load_balancers, ["uid-a".to_string()].into_iter().collect());
        assert_eq!(exp.public_ips.keys().cloned().collect::<Vec<_>>(), vec!["default-natgw-pip".to_string(), "uid-a-pip".to_string()]);
        assert_eq!(exp.address_locations.len(), 2);
        assert_eq!(exp.address_locations["fd00::4"]["fd01::7"], ["uid-a".to_string()].into_iter().collect());
        assert_eq!(exp.ingress["ns/a"], Some("uid-a-pip".into()));
        assert_eq!(exp.ingress["ns/b"], None);
    }

    #[test]
    fn check_finds_every_kind_of_difference() {
        let mut c = cluster();
        // Before the ingress is patched: only that difference.
        let d = check(&c, &good_inventory(), &baseline());
        assert_eq!(d, vec!["Service ns/a carries ingress [], expected [\"20.0.0.1\"] of uid-a-pip".to_string()]);
        let target = ObjectRef { namespace: "ns".into(), name: "a".into(), uid: "UID-A".into() };
        c.perform(1, &KubeCall::PatchServiceIngress(target, vec![LoadBalancerIngress { ip: "20.0.0.1".into(), hostname: String::new() }]))
            .unwrap();
        assert_eq!(check(&c, &good_inventory(), &baseline()), Vec::<String>::new());

        let mut bad = good_inventory();
        bad["public_ips"]["leak-pip"] = json!("20.0.0.9");
        bad["load_balancers"] = json!([]);
        bad["sgw_services"]["uid-a"] = json!("Outbound");
        bad["address_locations"]["10.0.0.4"]["10.1.0.6"] = json!(["uid-a"]);
        bad["address_locations"]["fd00::4"] = json!({});
        let d = check(&c, &bad, &baseline());
        assert!(d.contains(&"unexpected public IP leak-pip".to_string()), "{d:?}");
        assert!(d.contains(&"missing load balancer uid-a".to_string()), "{d:?}");
        assert!(d.contains(&"ServiceGateway service uid-a is Outbound, expected Inbound".to_string()), "{d:?}");
        assert!(d.contains(&"unexpected address 10.1.0.6 under 10.0.0.4 for [uid-a]".to_string()), "{d:?}");
        assert!(d.contains(&"missing address fd01::7 under fd00::4 for [uid-a]".to_string()), "{d:?}");
        assert_eq!(d.len(), 5, "{d:?}");

        let mut wrong_family = good_inventory();
        wrong_family["public_ips"]["uid-a-pip"] = json!("2603:1030::7");
        let d = check(&c, &wrong_family, &baseline());
        assert!(d.contains(&"public IP uid-a-pip has address 2603:1030::7, expected an IPv4 address".to_string()), "{d:?}");
    }

    #[test]
    fn check_report_reads_the_verdict() {
        assert!(check_report(&json!({"converged": true, "oracle": {"differences": []}})).is_ok());
        let e = check_report(&json!({"converged": false, "virtual_ms": 5, "oracle": {"differences": ["x"]}})).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(check_report(&json!({"converged": true})).is_err());
    }
}
