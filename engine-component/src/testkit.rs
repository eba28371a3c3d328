//! Test support (compiled for this crate's tests only): a recording [`Io`], object builders,
//! and a [`Harness`] that drives an [`Engine`] tick by tick with scripted completions.

use crate::engine::Engine;
use crate::io::{
    Call, CallError, CallId, CallOutput, CloudCall, Completion, Endpoint, EndpointSlice, IntOrString, Io, IpVersion, KubeEvent,
    KubeEventRecord, Node, ObjectMeta, OwnerReference, Pod, PublicIpInfo, Service, ServicePort, TenantConfig, TickOutcome,
};
use std::collections::BTreeMap;

/// An [`Io`] that records every started call and event; call ids count up from 1.
#[derive(Debug, Default, Clone)]
pub struct RecordingIo {
    pub next_id: CallId,
    pub started: Vec<(CallId, Call)>,
    pub events: Vec<KubeEventRecord>,
}

impl Io for RecordingIo {
    fn start(&mut self, call: Call) -> CallId {
        self.next_id += 1;
        self.started.push((self.next_id, call));
        self.next_id
    }
    fn record_event(&mut self, event: KubeEventRecord) {
        self.events.push(event);
    }
}

impl RecordingIo {
    pub fn take_started(&mut self) -> Vec<(CallId, Call)> {
        std::mem::take(&mut self.started)
    }
}

// ---------------------------------------------------------------- builders

/// A `type: LoadBalancer` Service with TCP ports (`targetPort` unset).
pub fn lb_service(uid: &str, ports: &[i32]) -> Service {
    Service {
        meta: ObjectMeta {
            namespace: "default".into(),
            name: format!("svc-{uid}"),
            uid: uid.into(),
            resource_version: "1".into(),
            ..Default::default()
        },
        service_type: "LoadBalancer".into(),
        ports: ports.iter().map(|p| ServicePort { name: format!("p{p}"), protocol: "TCP".into(), port: *p, target_port: None }).collect(),
        ip_families: vec!["IPv4".into()],
        session_affinity: "None".into(),
        external_traffic_policy: "Cluster".into(),
        ..Default::default()
    }
}

/// Same as [`lb_service`] with explicit numeric target ports.
pub fn lb_service_targets(uid: &str, ports: &[(i32, i32)]) -> Service {
    let mut s = lb_service(uid, &[]);
    s.ports = ports
        .iter()
        .map(|(p, t)| ServicePort { name: format!("p{p}"), protocol: "TCP".into(), port: *p, target_port: Some(IntOrString::Int(*t)) })
        .collect();
    s
}

/// An EndpointSlice owned by Service `owner_uid`, with ready endpoints `(address, node)`.
pub fn slice(name: &str, owner_uid: &str, endpoints: &[(&str, &str)]) -> EndpointSlice {
    EndpointSlice {
        meta: ObjectMeta { namespace: "default".into(), name: name.into(), uid: format!("slice-{name}"), ..Default::default() },
        owner_references: vec![OwnerReference { kind: "Service".into(), name: format!("svc-{owner_uid}"), uid: owner_uid.into() }],
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(a, n)| Endpoint { addresses: vec![a.to_string()], ready: Some(true), node_name: Some(n.to_string()) })
            .collect(),
    }
}

pub fn node(name: &str, ips: &[&str]) -> Node {
    Node { name: name.into(), uid: format!("node-{name}"), internal_ips: ips.iter().map(|s| s.to_string()).collect() }
}

/// A Running egress pod `ns/name` labelled `label`, with pod IPs `ips` and host IPs `hosts` (the
/// first of each is `podIP` / `hostIP`).
pub fn egress_pod(key: &str, uid: &str, label: &str, ips: &[&str], hosts: &[&str]) -> Pod {
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    Pod {
        meta: ObjectMeta {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: "1".into(),
            labels: vec![(crate::names::EGRESS_LABEL.into(), label.into())],
            ..Default::default()
        },
        node_name: "n1".into(),
        phase: "Running".into(),
        pod_ip: ips.first().map(|s| s.to_string()).unwrap_or_default(),
        pod_ips: ips.iter().map(|s| s.to_string()).collect(),
        host_ip: hosts.first().map(|s| s.to_string()).unwrap_or_default(),
        host_ips: hosts.iter().map(|s| s.to_string()).collect(),
    }
}

/// The same pod marked for deletion (carrying the pod cleanup finalizer, as a pod the engine
/// admitted does).
pub fn terminating(pod: &Pod) -> Pod {
    let mut p = pod.clone();
    p.meta.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    if !p.meta.finalizers.iter().any(|f| f == crate::names::POD_FINALIZER) {
        p.meta.finalizers.push(crate::names::POD_FINALIZER.into());
    }
    p
}

/// The default successful output of a call: a public IP gets an address derived from its
/// name, reads return empty results, everything else `Done`.
pub fn ok_output(call: &Call) -> CallOutput {
    match call {
        Call::Cloud(CloudCall::PutPublicIp { name, version }) => {
            let h = name.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            let ip = match version {
                IpVersion::V4 => format!("20.{}.{}.{}", (h >> 16) & 0xff, (h >> 8) & 0xff, (h & 0xfe) + 1),
                IpVersion::V6 => format!("2001:db8::{:x}", (h & 0xffff) + 1),
            };
            CallOutput::PublicIp(PublicIpInfo { name: name.clone(), ip_address: Some(ip), version: *version, attached: false })
        }
        Call::Cloud(CloudCall::GetSgwServices) => CallOutput::SgwServices(vec![]),
        Call::Cloud(CloudCall::GetNatGateway { .. }) => CallOutput::NatGateway(None),
        Call::Cloud(CloudCall::GetAddressLocations) => CallOutput::AddressLocations(vec![]),
        Call::Cloud(CloudCall::ListPublicIps) => CallOutput::PublicIps(vec![]),
        Call::Cloud(CloudCall::ListLoadBalancers) | Call::Cloud(CloudCall::ListNatGateways) => CallOutput::Names(vec![]),
        _ => CallOutput::Done,
    }
}

// ---------------------------------------------------------------- harness

/// Drives an engine: every started call is kept as outstanding until a test completes it.
pub struct Harness {
    pub engine: Engine,
    pub io: RecordingIo,
    pub now: u64,
    /// Outstanding calls, by id.
    pub outstanding: BTreeMap<CallId, Call>,
    /// Every call ever started, in order.
    pub log: Vec<(CallId, Call)>,
    pub last: TickOutcome,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new(1)
    }
}

impl Harness {
    /// An engine that skips the start-up pass (initialized, empty view of the cloud).
    pub fn new(seed: u64) -> Harness {
        Harness::with_engine(Engine::initialized(TenantConfig { tenant: "test".into(), seed, ..TenantConfig::unpaced() }))
    }

    /// An initialized engine with this tenant configuration.
    pub fn with_config(config: TenantConfig) -> Harness {
        Harness::with_engine(Engine::initialized(config))
    }

    /// A new engine as hosts create it: it starts with the start-up pass.
    pub fn starting(seed: u64) -> Harness {
        Harness::with_engine(Engine::new(TenantConfig { tenant: "test".into(), seed, ..TenantConfig::unpaced() }))
    }

    pub fn with_engine(engine: Engine) -> Harness {
        Harness {
            engine,
            io: RecordingIo::default(),
            now: 1_000_000,
            outstanding: BTreeMap::new(),
            log: Vec::new(),
            last: TickOutcome::default(),
        }
    }

    pub fn deliver(&mut self, events: Vec<KubeEvent>) {
        self.engine.deliver(self.now, events);
    }

    fn collect(&mut self) -> Vec<(CallId, Call)> {
        let started = self.io.take_started();
        for (id, c) in &started {
            self.outstanding.insert(*id, c.clone());
            self.log.push((*id, c.clone()));
        }
        started
    }

    /// One tick with the given completions; returns the calls it started.
    pub fn tick_with(&mut self, completions: Vec<Completion>) -> Vec<(CallId, Call)> {
        for c in &completions {
            self.outstanding.remove(&c.id);
        }
        self.last = self.engine.tick(self.now, completions, &mut self.io);
        self.collect()
    }

    pub fn tick(&mut self) -> Vec<(CallId, Call)> {
        self.tick_with(vec![])
    }

    pub fn advance(&mut self, ms: u64) -> Vec<(CallId, Call)> {
        self.now += ms;
        self.tick()
    }

    /// Jumps to the engine's next wake-up (if any) and ticks.
    pub fn wake(&mut self) -> Vec<(CallId, Call)> {
        if let Some(w) = self.last.next_wake_ms {
            self.now = self.now.max(w);
        }
        self.tick()
    }

    pub fn complete(&mut self, id: CallId, outcome: Result<CallOutput, CallError>) -> Vec<(CallId, Call)> {
        self.tick_with(vec![Completion { id, outcome }])
    }

    /// Completes one outstanding call with its default success.
    pub fn ok(&mut self, id: CallId) -> Vec<(CallId, Call)> {
        let out = self.outstanding.get(&id).map(ok_output).unwrap_or(CallOutput::Done);
        self.complete(id, Ok(out))
    }

    pub fn fail(&mut self, id: CallId, err: CallError) -> Vec<(CallId, Call)> {
        self.complete(id, Err(err))
    }

    /// The oldest outstanding call whose label is `label` (e.g. `"PUT loadBalancers"`).
    pub fn find(&self, label: &str) -> Option<CallId> {
        self.outstanding.iter().find(|(_, c)| c.label() == label).map(|(id, _)| *id)
    }

    /// The oldest outstanding call matching `pred`.
    pub fn find_by(&self, pred: impl Fn(&Call) -> bool) -> Option<CallId> {
        self.outstanding.iter().find(|(_, c)| pred(c)).map(|(id, _)| *id)
    }

    pub fn labels(&self) -> Vec<&'static str> {
        self.outstanding.values().map(|c| c.label()).collect()
    }

    /// Completes every outstanding call with its default success, tick after tick, advancing
    /// the clock to each wake-up, until the engine settles or `max_rounds` is reached.
    /// Returns true if it settled.
    pub fn run_ok(&mut self, max_rounds: usize) -> bool {
        for _ in 0..max_rounds {
            self.tick();
            if self.engine.is_settled() && self.outstanding.is_empty() {
                return true;
            }
            if self.outstanding.is_empty() {
                self.wake();
                continue;
            }
            let completions: Vec<Completion> =
                self.outstanding.iter().map(|(id, c)| Completion { id: *id, outcome: Ok(ok_output(c)) }).collect();
            self.tick_with(completions);
        }
        self.engine.is_settled()
    }
}

impl TenantConfig {
    /// A configuration with upstream's timing: every triggered location sync starts at once.
    pub fn unpaced() -> TenantConfig {
        TenantConfig { sgw_post_interval_ms: Some(0), ..TenantConfig::default() }
    }
}
