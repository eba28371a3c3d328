//! `difftracker gen-trace`: writes a realistic, seeded trace of Kubernetes watch events.
//!
//! What it contains: Nodes with InternalIPs (every third one dual-stack); LoadBalancer Services
//! (IPv4, some IPv6-only) with one to three TCP/UDP ports; their EndpointSlices with ready and
//! not-ready endpoints placed on nodes of the pod's family; Services that admission rejects
//! (internal load balancer annotation, `sessionAffinity: ClientIP`, `loadBalancerIP`) and some
//! that are not LoadBalancers at all; then, by churn level, endpoint churn (pod restarts,
//! readiness flips, scale to zero and back), port changes, LoadBalancer -> ClusterIP ->
//! LoadBalancer flips, flips that end as ClusterIP or NodePort, Services another controller takes
//! over (they gain a `loadBalancerClass`), rejected Services fixed by their owner, a node
//! scale-out, deletions (their EndpointSlices are left to the cluster's garbage collector, as in a
//! real recording) and same-name re-creations. With `--egress N`, N egress-labelled Pods.
//!
//! Deterministic from the seed: a small generator of its own, ordered maps only. An admitted
//! Service is never changed into a rejected one (the engine keeps the existing load balancer
//! then, which the oracle does not model).

use difftracker_engine::io::{Endpoint, EndpointSlice, IntOrString, Node, ObjectMeta, OwnerReference, Pod, Service, ServicePort};
use difftracker_runtime::k8s::{KubeObject, WatchEvent, WatchEventType, EGRESS_LABEL, SERVICE_NAME_LABEL};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

/// SplitMix64: small, fast, good enough for test data, identical everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// A random version-4 UUID.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
    /// A 5-character suffix as `generateName` produces (`web-x7k2p`).
    pub fn suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5).map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize] as char).collect()
    }
}

/// How much happens after the initial creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Churn {
    None,
    Low,
    Medium,
    High,
}

impl std::str::FromStr for Churn {
    type Err = String;
    fn from_str(s: &str) -> Result<Churn, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "0" => Ok(Churn::None),
            "low" | "1" => Ok(Churn::Low),
            "medium" | "2" => Ok(Churn::Medium),
            "high" | "3" => Ok(Churn::High),
            other => Err(format!("unknown churn level {other:?}: use none, low, medium or high")),
        }
    }
}

impl Churn {
    /// Percent of Services that see churn, and the range of actions each.
    fn profile(self) -> (u64, u64, u64) {
        match self {
            Churn::None => (0, 0, 0),
            Churn::Low => (15, 1, 1),
            Churn::Medium => (40, 1, 3),
            Churn::High => (80, 2, 5),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenOptions {
    pub services: usize,
    pub nodes: usize,
    /// Egress-labelled pods (0: none).
    pub egress: usize,
    pub churn: Churn,
    pub seed: u64,
    /// Average endpoints per Service.
    pub endpoints: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { services: 20, nodes: 3, egress: 0, churn: Churn::Medium, seed: 1, endpoints: 5 }
    }
}

/// What a generated trace holds, for humans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenSummary {
    pub events: usize,
    pub end_ms: u64,
    /// Events by `<TYPE> <Kind>`.
    pub by_kind: BTreeMap<String, usize>,
}

const NAMESPACES: &[&str] = &["default", "shop", "payments", "monitoring", "batch"];
const APPS: &[&str] = &["web", "api", "cart", "search", "auth", "metrics", "dns", "ingest", "media", "chat"];
const INTERNAL_LB: &str = "service.beta.kubernetes.io/azure-load-balancer-internal";
/// The `loadBalancerClass` of the other controller that takes some Services over.
pub const OTHER_LB_CLASS: &str = "example.com/other-lb";
const IDLE_TIMEOUT: &str = "service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejection {
    Internal,
    SessionAffinity,
    LoadBalancerIp,
}

struct GenNode {
    node: Node,
    index: u32,
    dual: bool,
    /// Time from which endpoints may be placed on it.
    ready_at: u64,
    next_pod: u32,
}

struct Gen {
    rng: Rng,
    opts: GenOptions,
    nodes: Vec<GenNode>,
    pod_block_bits: u32,
    /// (time, sequence) -> event; the sequence keeps same-time events in generation order.
    timeline: BTreeMap<(u64, u64), WatchEvent>,
    seq: u64,
    resource_version: u64,
}

impl Gen {
    fn emit(&mut self, at_ms: u64, event_type: WatchEventType, mut object: KubeObject) {
        self.resource_version += 1;
        let rv = self.resource_version.to_string();
        if let Some(meta) = object.meta_mut() {
            meta.resource_version = rv;
        }
        self.seq += 1;
        self.timeline.insert((at_ms, self.seq), WatchEvent { event_type, object, at_ms: Some(at_ms) });
    }

    fn node_v4(i: u32) -> String {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 224, 0, 4)) + i).to_string()
    }

    fn node_v6(i: u32) -> String {
        Ipv6Addr::new(0xfd00, 0x10, 0x224, 0, 0, 0, 0, (4 + i) as u16).to_string()
    }

    fn add_node(&mut self, at_ms: u64) {
        let index = self.nodes.len() as u32;
        let dual = index % 3 == 1;
        let mut ips = vec![Gen::node_v4(index)];
        if dual {
            ips.push(Gen::node_v6(index));
        }
        let node = Node {
            name: format!("aks-nodepool1-{:08}-vmss{:06x}", 31_337_000 + (self.opts.seed % 1000), index),
            uid: self.rng.uuid(),
            internal_ips: ips,
        };
        self.emit(at_ms, WatchEventType::Added, KubeObject::Node(node.clone()));
        self.nodes.push(GenNode { node, index, dual, ready_at: at_ms, next_pod: 0 });
    }

    /// A fresh pod IP of `family` on a node that can hold it at `at_ms`; `(ip, node name)`.
    fn pod_ip(&mut self, family: Family, at_ms: u64) -> Option<(String, String)> {
        let candidates: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].ready_at <= at_ms && (family == Family::V4 || self.nodes[i].dual)).collect();
        if candidates.is_empty() {
            return None;
        }
        let i = *self.rng.pick(&candidates);
        let bits = self.pod_block_bits;
        let node = &mut self.nodes[i];
        node.next_pod = (node.next_pod + 1) % ((1u32 << bits) - 2);
        let k = node.next_pod + 1;
        let ip = match family {
            // 10.0.0.0/9, one block per node.
            Family::V4 => Ipv4Addr::from(0x0A00_0000u32 + (node.index << bits) + k).to_string(),
            Family::V6 => Ipv6Addr::new(0xfd01, 0x244, node.index as u16, 0, 0, 0, (k >> 16) as u16, (k & 0xffff) as u16).to_string(),
        };
        Some((ip, node.node.name.clone()))
    }
}

/// One Service's lifetime while its script is generated.
struct SvcScript {
    svc: Service,
    slice: EndpointSlice,
    family: Family,
    rejection: Option<Rejection>,
    alive: bool,
}

fn port_set(rng: &mut Rng, family_udp_ok: bool) -> Vec<ServicePort> {
    const CHOICES: &[(&str, &str, i32, Option<i32>)] = &[
        ("http", "TCP", 80, Some(8080)),
        ("https", "TCP", 443, Some(8443)),
        ("grpc", "TCP", 9000, None),
        ("dns", "UDP", 53, Some(5353)),
        ("metrics", "TCP", 9100, Some(9100)),
        ("syslog", "UDP", 514, None),
        ("alt", "TCP", 8081, Some(8081)),
    ];
    let count = rng.range(1, 3) as usize;
    let start = rng.below(CHOICES.len() as u64) as usize;
    let mut ports = Vec::new();
    for j in 0..CHOICES.len() {
        if ports.len() == count {
            break;
        }
        let (name, proto, port, target) = CHOICES[(start + j) % CHOICES.len()];
        if proto == "UDP" && !family_udp_ok {
            continue;
        }
        ports.push(ServicePort { name: name.into(), protocol: proto.into(), port, target_port: target.map(IntOrString::Int) });
    }
    ports
}

impl Gen {
    fn new_service(&mut self, i: usize) -> SvcScript {
        let rng = &mut self.rng;
        let namespace = NAMESPACES[i % NAMESPACES.len()].to_string();
        let name = format!("{}-{i}", APPS[(i / NAMESPACES.len()) % APPS.len()]);
        let family = if rng.chance(12) && self.nodes.iter().any(|n| n.dual) { Family::V6 } else { Family::V4 };
        let rejection = if rng.chance(9) {
            Some(*rng.pick(&[Rejection::Internal, Rejection::SessionAffinity, Rejection::LoadBalancerIp]))
        } else {
            None
        };
        let not_lb = rejection.is_none() && rng.chance(5);
        let mut annotations = Vec::new();
        if rejection == Some(Rejection::Internal) {
            annotations.push((INTERNAL_LB.to_string(), "true".to_string()));
        } else if rng.chance(10) {
            annotations.push((IDLE_TIMEOUT.to_string(), rng.range(4, 30).to_string()));
        }
        let uid = rng.uuid();
        let ports = port_set(rng, true);
        let svc = Service {
            meta: ObjectMeta {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.clone(),
                labels: vec![("app".into(), name.clone())],
                annotations,
                ..Default::default()
            },
            service_type: if not_lb { "ClusterIP".into() } else { "LoadBalancer".into() },
            load_balancer_class: None,
            ports,
            ip_families: vec![if family == Family::V4 { "IPv4".into() } else { "IPv6".into() }],
            session_affinity: if rejection == Some(Rejection::SessionAffinity) { "ClientIP".into() } else { "None".into() },
            load_balancer_ip: if rejection == Some(Rejection::LoadBalancerIp) {
                format!("20.50.{}.{}", rng.below(256), rng.range(1, 254))
            } else {
                String::new()
            },
            external_traffic_policy: if rng.chance(20) { "Local".into() } else { "Cluster".into() },
            ingress: Vec::new(),
        };
        let slice = EndpointSlice {
            meta: ObjectMeta {
                namespace,
                name: format!("{name}-{}", rng.suffix()),
                uid: rng.uuid(),
                labels: vec![
                    ("endpointslice.kubernetes.io/managed-by".into(), "endpointslice-controller.k8s.io".into()),
                    (SERVICE_NAME_LABEL.into(), name.clone()),
                ],
                ..Default::default()
            },
            owner_references: vec![OwnerReference { kind: "Service".into(), name, uid }],
            address_type: if family == Family::V4 { "IPv4".into() } else { "IPv6".into() },
            endpoints: Vec::new(),
        };
        SvcScript { svc, slice, family, rejection, alive: true }
    }

    fn endpoint(&mut self, family: Family, at_ms: u64, ready: bool) -> Option<Endpoint> {
        let (ip, node) = self.pod_ip(family, at_ms)?;
        Some(Endpoint { addresses: vec![ip], ready: Some(ready), node_name: Some(node) })
    }

    fn emit_service(&mut self, at: u64, et: WatchEventType, s: &SvcScript) {
        self.emit(at, et, KubeObject::Service(s.svc.clone()));
    }

    fn emit_slice(&mut self, at: u64, et: WatchEventType, s: &SvcScript) {
        self.emit(at, et, KubeObject::EndpointSlice(s.slice.clone()));
    }

    /// Creation of Service `i` at `t0`; returns its script state and the time of its last event.
    fn create_service(&mut self, i: usize, t0: u64) -> (SvcScript, u64) {
        let mut s = self.new_service(i);
        self.emit_service(t0, WatchEventType::Added, &s);
        let count = self.rng.range(
            self.opts.endpoints.saturating_sub(self.opts.endpoints / 2) as u64,
            (self.opts.endpoints + self.opts.endpoints / 2) as u64,
        );
        let mut t = t0 + self.rng.range(100, 600);
        let mut pending = Vec::new();
        for _ in 0..count {
            // A few start not ready (pods still starting), a few stay not ready.
            let ready = !self.rng.chance(25);
            if let Some(e) = self.endpoint(s.family, t, ready) {
                if !ready {
                    pending.push(s.slice.endpoints.len());
                }
                s.slice.endpoints.push(e);
            }
        }
        self.emit_slice(t, WatchEventType::Added, &s);
        if !pending.is_empty() {
            t += self.rng.range(1_000, 8_000);
            for idx in pending {
                if self.rng.chance(70) {
                    s.slice.endpoints[idx].ready = Some(true);
                }
            }
            self.emit_slice(t, WatchEventType::Modified, &s);
        }
        (s, t)
    }

    /// One churn action on a live Service at `t`; returns the time of its last event.
    fn churn_action(&mut self, i: usize, s: &mut SvcScript, t: u64, incarnation: &mut u32) -> u64 {
        let foreign = s.svc.load_balancer_class.is_some();
        let admitted = s.rejection.is_none() && s.svc.service_type == "LoadBalancer" && !foreign;
        let roll = self.rng.below(100);
        if s.rejection.is_some() && roll < 50 {
            // The owner fixes the rejected spec.
            match s.rejection.take() {
                Some(Rejection::Internal) => s.svc.meta.annotations.retain(|(k, _)| k != INTERNAL_LB),
                Some(Rejection::SessionAffinity) => s.svc.session_affinity = "None".into(),
                Some(Rejection::LoadBalancerIp) => s.svc.load_balancer_ip.clear(),
                None => {}
            }
            self.emit_service(t, WatchEventType::Modified, s);
            return t;
        }
        match roll {
            0..=39 => {
                // Pod restarts: endpoints replaced by new pods, readiness flips.
                let mut changed = false;
                for idx in 0..s.slice.endpoints.len() {
                    if self.rng.chance(30) {
                        let ready = self.rng.chance(85);
                        if let Some(e) = self.endpoint(s.family, t, ready) {
                            s.slice.endpoints[idx] = e;
                            changed = true;
                        }
                    } else if self.rng.chance(10) {
                        let r = s.slice.endpoints[idx].ready.unwrap_or(true);
                        s.slice.endpoints[idx].ready = Some(!r);
                        changed = true;
                    }
                }
                if self.rng.chance(30) {
                    if let Some(e) = self.endpoint(s.family, t, true) {
                        s.slice.endpoints.push(e);
                        changed = true;
                    }
                }
                if !changed && !s.slice.endpoints.is_empty() {
                    s.slice.endpoints.remove(0);
                }
                self.emit_slice(t, WatchEventType::Modified, s);
                t
            }
            40..=49 => {
                // Scale to zero, then back up.
                let before = std::mem::take(&mut s.slice.endpoints);
                self.emit_slice(t, WatchEventType::Modified, s);
                let t2 = t + self.rng.range(2_000, 40_000);
                for _ in 0..before.len().max(1) {
                    if let Some(e) = self.endpoint(s.family, t2, true) {
                        s.slice.endpoints.push(e);
                    }
                }
                self.emit_slice(t2, WatchEventType::Modified, s);
                t2
            }
            50..=64 => {
                // Port change: a frontend port moves, or a port is added or dropped.
                let used: Vec<i32> = s.svc.ports.iter().map(|p| p.port).collect();
                if s.svc.ports.len() > 1 && self.rng.chance(30) {
                    s.svc.ports.pop();
                } else if let Some(p) = s.svc.ports.first_mut() {
                    let mut candidate = 10_000 + self.rng.below(20_000) as i32;
                    while used.contains(&candidate) {
                        candidate += 1;
                    }
                    p.port = candidate;
                }
                self.emit_service(t, WatchEventType::Modified, s);
                t
            }
            65..=79 if admitted => match self.rng.below(4) {
                0 | 1 => {
                    // LoadBalancer -> ClusterIP -> LoadBalancer.
                    s.svc.service_type = "ClusterIP".into();
                    self.emit_service(t, WatchEventType::Modified, s);
                    let t2 = t + self.rng.range(3_000, 90_000);
                    s.svc.service_type = "LoadBalancer".into();
                    self.emit_service(t2, WatchEventType::Modified, s);
                    t2
                }
                2 => {
                    // LoadBalancer -> ClusterIP or NodePort, for good (a later action may make it
                    // a LoadBalancer again).
                    s.svc.service_type = if self.rng.chance(50) { "ClusterIP".into() } else { "NodePort".into() };
                    self.emit_service(t, WatchEventType::Modified, s);
                    t
                }
                _ => {
                    // Another controller takes it over: it gains a loadBalancerClass.
                    s.svc.load_balancer_class = Some(OTHER_LB_CLASS.into());
                    self.emit_service(t, WatchEventType::Modified, s);
                    t
                }
            },
            // Owned by another controller: its type stays.
            65..=79 if foreign => t,
            65..=79 => {
                s.svc.service_type = "LoadBalancer".into();
                self.emit_service(t, WatchEventType::Modified, s);
                t
            }
            _ => {
                // Deletion (slices are left to the garbage collector); sometimes re-created
                // under the same name with a new UID.
                self.emit_service(t, WatchEventType::Deleted, s);
                s.alive = false;
                if self.rng.chance(40) {
                    *incarnation += 1;
                    let t2 = t + self.rng.range(500, 120_000);
                    // Same name and namespace (both follow from `i`), a new UID.
                    let (fresh, t3) = self.create_service(i, t2);
                    *s = fresh;
                    return t3;
                }
                t
            }
        }
    }
}

/// Generates the trace's events, in time order.
pub fn generate(opts: &GenOptions) -> Vec<WatchEvent> {
    let nodes = opts.nodes.max(1);
    let total_nodes = nodes + nodes.div_ceil(4);
    let pod_block_bits = 23 - (total_nodes.next_power_of_two().trailing_zeros()).min(15);
    let mut g = Gen {
        rng: Rng::new(opts.seed),
        opts: opts.clone(),
        nodes: Vec::new(),
        pod_block_bits,
        timeline: BTreeMap::new(),
        seq: 0,
        resource_version: 1000,
    };
    for i in 0..nodes {
        g.add_node(i as u64 * 10);
    }
    let create_start = 1_000u64;
    let spacing = 25u64;
    let create_end = create_start + spacing * opts.services as u64 + 10_000;
    let (churn_percent, min_actions, max_actions) = opts.churn.profile();
    if opts.churn != Churn::None {
        // Scale-out: new nodes join after the initial creation.
        for j in 0..nodes.div_ceil(4) {
            g.add_node(create_end + 5_000 + j as u64 * 1_000);
        }
    }
    let churn_window = 60_000 + 200 * opts.services as u64;
    for i in 0..opts.services {
        let t0 = create_start + spacing * i as u64;
        // Services are created with a stable name; a re-creation keeps it. Names are made
        // unique by the index.
        let (mut s, mut t) = g.create_service(i, t0);
        if opts.churn == Churn::None || !g.rng.chance(churn_percent) {
            continue;
        }
        let actions = g.rng.range(min_actions, max_actions);
        t = t.max(create_end) + g.rng.below(churn_window);
        let mut incarnation = 0u32;
        for _ in 0..actions {
            if !s.alive {
                break;
            }
            t = g.churn_action(i, &mut s, t, &mut incarnation) + g.rng.range(2_000, 60_000);
        }
    }
    if opts.egress > 0 {
        egress_pods(&mut g, create_end);
    }
    g.timeline.into_values().collect()
}

impl Gen {
    /// A Running egress pod with label `identity` on a node holding IPv4 at `t` (dual-stack
    /// nodes give it an IPv6 address too).
    fn egress_pod(&mut self, k: usize, identity: &str, t: u64) -> Option<Pod> {
        let (v4, node_name) = self.pod_ip(Family::V4, t)?;
        let node = self.nodes.iter().find(|n| n.node.name == node_name)?;
        let mut host_ips = vec![Gen::node_v4(node.index)];
        let mut pod_ips = vec![v4.clone()];
        if node.dual {
            host_ips.push(Gen::node_v6(node.index));
            pod_ips.push(Ipv6Addr::new(0xfd01, 0x244, node.index as u16, 1, 0, 0, (k >> 16) as u16, k as u16).to_string());
        }
        let node_name = node.node.name.clone();
        Some(Pod {
            meta: ObjectMeta {
                namespace: "batch".into(),
                name: format!("egress-job-{k}-{}", self.rng.suffix()),
                uid: self.rng.uuid(),
                labels: vec![(EGRESS_LABEL.into(), identity.to_string())],
                ..Default::default()
            },
            node_name,
            phase: "Running".into(),
            pod_ip: v4,
            pod_ips,
            host_ip: host_ips[0].clone(),
            host_ips,
        })
    }
}

/// Egress pods: `egress / 5` identities (at least one). With churn, pods are deleted, complete
/// (phase Succeeded, then deleted) or restart as a new pod; from medium churn on, the last
/// identity loses all its pods (its NAT gateway goes).
fn egress_pods(g: &mut Gen, start: u64) {
    let identities = (g.opts.egress / 5).max(1);
    let drained = (g.opts.churn >= Churn::Medium && identities >= 2).then(|| format!("egress-{}", identities - 1));
    let end = start + 60_000 + 300 * g.opts.egress as u64;
    let mut t = start;
    let mut next_k = g.opts.egress;
    for k in 0..g.opts.egress {
        let identity = format!("egress-{}", k % identities);
        let Some(pod) = g.egress_pod(k, &identity, t) else { continue };
        g.emit(t, WatchEventType::Added, KubeObject::Pod(pod.clone()));
        if drained.as_deref() == Some(identity.as_str()) {
            let t2 = end + g.rng.range(1_000, 30_000);
            g.emit(t2, WatchEventType::Deleted, KubeObject::Pod(pod));
        } else if g.opts.churn != Churn::None {
            let t2 = t + g.rng.range(10_000, 120_000);
            match g.rng.below(100) {
                0..=24 => g.emit(t2, WatchEventType::Deleted, KubeObject::Pod(pod)),
                25..=39 => {
                    let mut done = pod;
                    done.phase = "Succeeded".into();
                    g.emit(t2, WatchEventType::Modified, KubeObject::Pod(done.clone()));
                    let t3 = t2 + g.rng.range(1_000, 20_000);
                    g.emit(t3, WatchEventType::Deleted, KubeObject::Pod(done));
                }
                40..=49 => {
                    // Restarted elsewhere: the old pod goes, a new one comes.
                    g.emit(t2, WatchEventType::Deleted, KubeObject::Pod(pod));
                    let t3 = t2 + g.rng.range(500, 5_000);
                    if let Some(fresh) = g.egress_pod(next_k, &identity, t3) {
                        g.emit(t3, WatchEventType::Added, KubeObject::Pod(fresh));
                    }
                    next_k += 1;
                }
                _ => {}
            }
        }
        t += g.rng.range(50, 500);
    }
}

/// Adds what the API server prints and the engine ignores (clusterIP, selector, node ports,
/// endpoint target references, slice ports), so a generated trace reads like a recorded one.
fn decorate(event: &WatchEvent, value: &mut Value, rng: &mut Rng) {
    let Value::Object(obj) = value else { return };
    match &event.object {
        KubeObject::Service(s) => {
            if let Some(Value::Object(spec)) = obj.get_mut("spec") {
                let v6 = s.ip_families.first().is_some_and(|f| f == "IPv6");
                let cluster_ip = if v6 {
                    Ipv6Addr::new(0xfd02, 0, 0, 0, 0, 0, 0, rng.range(1, 0xfffe) as u16).to_string()
                } else {
                    Ipv4Addr::new(10, 0, rng.below(256) as u8, rng.range(1, 254) as u8).to_string()
                };
                spec.insert("clusterIP".into(), json!(cluster_ip));
                spec.insert("clusterIPs".into(), json!([cluster_ip]));
                spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
                spec.insert("internalTrafficPolicy".into(), json!("Cluster"));
                spec.insert("selector".into(), json!({"app": s.meta.name}));
                if s.service_type == "LoadBalancer" {
                    spec.insert("allocateLoadBalancerNodePorts".into(), json!(true));
                    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                        for p in ports.iter_mut() {
                            if let Value::Object(p) = p {
                                p.insert("nodePort".into(), json!(30_000 + rng.below(2_768)));
                            }
                        }
                    }
                }
            }
        }
        KubeObject::EndpointSlice(s) => {
            if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
                if let Some(owner) = s.owner_references.first() {
                    meta.insert("generateName".into(), json!(format!("{}-", owner.name)));
                }
            }
            obj.insert("ports".into(), json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
            if let Some(Value::Array(eps)) = obj.get_mut("endpoints") {
                for (j, e) in eps.iter_mut().enumerate() {
                    if let Value::Object(e) = e {
                        e.insert(
                            "targetRef".into(),
                            json!({"kind": "Pod", "namespace": s.meta.namespace, "name": format!("{}-{j}", s.meta.name)}),
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

/// Writes the trace as JSON Lines (one watch event per line, with `at_ms`).
pub fn write_trace(opts: &GenOptions, out: &mut dyn Write) -> std::io::Result<GenSummary> {
    let events = generate(opts);
    let mut rng = Rng::new(opts.seed ^ 0xDEC0_DA7E);
    let mut summary = GenSummary::default();
    for event in &events {
        let mut object = event.object.to_json();
        decorate(event, &mut object, &mut rng);
        let object = serde_json::to_string(&object).map_err(std::io::Error::other)?;
        let at = event.at_ms.unwrap_or(0);
        writeln!(out, "{{\"type\":\"{}\",\"object\":{},\"at_ms\":{}}}", event.event_type.as_str(), object, at)?;
        summary.events += 1;
        summary.end_ms = summary.end_ms.max(at);
        *summary.by_kind.entry(format!("{} {}", event.event_type.as_str(), event.object.kind())).or_insert(0) += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::trace::parse_trace;

    fn text(opts: &GenOptions) -> String {
        let mut buf = Vec::new();
        write_trace(opts, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let opts = GenOptions { services: 30, nodes: 4, churn: Churn::High, ..Default::default() };
        assert_eq!(text(&opts), text(&opts));
        assert_ne!(text(&opts), text(&GenOptions { seed: 2, ..opts.clone() }));
    }

    #[test]
    fn the_trace_parses_and_holds_what_it_promises() {
        let opts = GenOptions { services: 60, nodes: 4, churn: Churn::High, seed: 3, ..Default::default() };
        let t = parse_trace(text(&opts).as_bytes()).unwrap();
        assert!(t.skipped.is_empty());
        let mut kinds = BTreeMap::new();
        let mut v6_nodes = 0;
        let (mut ready, mut not_ready, mut rejected, mut udp, mut flips, mut deletes) = (0, 0, 0, 0, 0, 0);
        let (mut node_ports, mut classes) = (0, 0);
        for e in &t.events {
            *kinds.entry((e.event_type, e.object.kind())).or_insert(0) += 1;
            match &e.object {
                KubeObject::Node(n) => v6_nodes += n.internal_ips.iter().any(|ip| ip.contains(':')) as usize,
                KubeObject::EndpointSlice(s) => {
                    for ep in &s.endpoints {
                        if ep.ready == Some(false) {
                            not_ready += 1
                        } else {
                            ready += 1
                        }
                    }
                }
                KubeObject::Service(s) => {
                    rejected += (s.session_affinity == "ClientIP"
                        || !s.load_balancer_ip.is_empty()
                        || s.meta.annotation(INTERNAL_LB).is_some()) as usize;
                    udp += s.ports.iter().any(|p| p.protocol == "UDP") as usize;
                    flips += (e.event_type == WatchEventType::Modified && s.service_type == "ClusterIP") as usize;
                    node_ports += (e.event_type == WatchEventType::Modified && s.service_type == "NodePort") as usize;
                    classes +=
                        (e.event_type == WatchEventType::Modified && s.load_balancer_class.as_deref() == Some(OTHER_LB_CLASS)) as usize;
                    deletes += (e.event_type == WatchEventType::Deleted) as usize;
                }
                KubeObject::Pod(_) => {}
            }
        }
        assert!(v6_nodes >= 1, "a dual-stack node");
        assert!(ready > 100 && not_ready > 5, "ready {ready} not ready {not_ready}");
        assert!(rejected > 0 && udp > 0 && flips > 0 && deletes > 0, "{rejected} {udp} {flips} {deletes}");
        assert!(node_ports > 0 && classes > 0, "flips that end as NodePort: {node_ports}, class take-overs: {classes}");
        assert_eq!(kinds.get(&(WatchEventType::Deleted, "EndpointSlice")), None, "slices are garbage-collected");
        assert_eq!(kinds.get(&(WatchEventType::Added, "Pod")), None, "no egress pods by default");
        // Time order.
        assert!(t.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }

    #[test]
    fn pod_ips_are_unique_among_live_endpoints() {
        let opts = GenOptions { services: 200, nodes: 3, churn: Churn::None, seed: 9, endpoints: 10, ..Default::default() };
        let t = parse_trace(text(&opts).as_bytes()).unwrap();
        let mut latest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in &t.events {
            if let KubeObject::EndpointSlice(s) = &e.object {
                latest.insert(s.meta.name.clone(), s.endpoints.iter().flat_map(|e| e.addresses.clone()).collect());
            }
        }
        let mut all: Vec<String> = latest.into_values().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(n > 1000);
    }

    #[test]
    fn egress_pods_only_when_asked() {
        let opts = GenOptions { services: 5, nodes: 3, egress: 12, churn: Churn::Low, ..Default::default() };
        let t = parse_trace(text(&opts).as_bytes()).unwrap();
        let pods = t.events.iter().filter(|e| e.object.kind() == "Pod" && e.event_type == WatchEventType::Added).count();
        assert!(pods >= 12, "{pods}");
        let opts = GenOptions { services: 5, nodes: 3, egress: 20, churn: Churn::Medium, ..Default::default() };
        let t = parse_trace(text(&opts).as_bytes()).unwrap();
        let deleted: Vec<&str> = t
            .events
            .iter()
            .filter(|e| e.event_type == WatchEventType::Deleted)
            .filter_map(|e| match &e.object {
                KubeObject::Pod(p) => p.meta.label(EGRESS_LABEL),
                _ => None,
            })
            .collect();
        assert_eq!(deleted.iter().filter(|l| **l == "egress-3").count(), 5, "the last identity is drained");
    }

    #[test]
    fn churn_levels_parse() {
        assert_eq!("HIGH".parse::<Churn>(), Ok(Churn::High));
        assert_eq!("0".parse::<Churn>(), Ok(Churn::None));
        assert!("extreme".parse::<Churn>().is_err());
    }
}
