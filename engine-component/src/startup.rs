//! Pieces of the startup path (ENGINE.md 9) that a restarted engine needs to avoid destructive
//! or redundant work: seeding the NRP mirror from what the ServiceGateway reports (step 3) and
//! recovering the drain records of egress pods that were terminating while the controller was
//! down (step 5).
//!
//! They are native entry points of [`Engine`]; the component's WIT surface does not expose an
//! initialization pass (the host starts an engine empty and feeds it events), so a host that
//! wants a warm start calls these before the first tick.

use crate::egress::pod::{egress_identity, has_pod_finalizer, pod_addresses, pod_key};
use crate::egress::{PodCallKind, PodDeletionRecord};
use crate::engine::Engine;
use crate::identity::{canonical, check_egress_identity, Identity};
use crate::io::{AddressLocation, Pod, ServiceType, SgwService};
use crate::metrics;
use crate::nrp::NrpLocations;

/// The NRP snapshot of startup step 3: which identities are registered, per kind, and the
/// address locations, canonicalised. `default-natgw` never enters it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NrpSnapshot {
    pub load_balancers: Vec<Identity>,
    pub nat_gateways: Vec<Identity>,
    pub locations: NrpLocations,
}

/// Builds the snapshot: `Inbound` entries are load balancers, `Outbound` NAT gateways,
/// `InboundOutbound` both; the reserved identity is skipped everywhere; location keys and
/// addresses are canonical, service names lower-cased; empty entries are dropped.
pub fn nrp_snapshot(services: &[SgwService], locations: &[AddressLocation]) -> NrpSnapshot {
    let mut snap = NrpSnapshot::default();
    for s in services {
        let id = Identity::new(&s.name);
        if id.is_empty() || id.is_reserved() {
            continue;
        }
        if matches!(s.service_type, ServiceType::Inbound | ServiceType::InboundOutbound) {
            snap.load_balancers.push(id.clone());
        }
        if matches!(s.service_type, ServiceType::Outbound | ServiceType::InboundOutbound) {
            snap.nat_gateways.push(id);
        }
    }
    for l in locations {
        let loc = canonical(l.location.trim());
        for a in &l.addresses {
            let services: std::collections::BTreeSet<Identity> =
                a.services.iter().map(|s| Identity::new(s)).filter(|id| !id.is_empty() && !id.is_reserved()).collect();
            if services.is_empty() {
                continue;
            }
            snap.locations.entry(loc.clone()).or_default().entry(canonical(a.address.trim())).or_default().extend(services);
        }
    }
    snap
}

impl Engine {
    /// Seeds the NRP mirror from the ServiceGateway's services and address locations (startup
    /// step 3), replacing what the mirror held. Every key of either model is re-examined by the
    /// next location sync, so a restart against unchanged state syncs nothing (AlreadyInSync).
    pub fn seed_nrp(&mut self, services: &[SgwService], locations: &[AddressLocation]) {
        let snap = nrp_snapshot(services, locations);
        let before: Vec<Identity> = self.nrp.load_balancers().iter().chain(self.nrp.nat_gateways().iter()).cloned().collect();
        for id in before {
            self.set_nrp_load_balancer(&id, false);
            self.set_nrp_nat_gateway(&id, false);
        }
        for id in &snap.load_balancers {
            self.set_nrp_load_balancer(id, true);
        }
        for id in &snap.nat_gateways {
            self.set_nrp_nat_gateway(id, true);
        }
        let old: Vec<(String, String)> =
            self.nrp.locations().iter().flat_map(|(l, a)| a.keys().map(move |x| (l.clone(), x.clone()))).collect();
        self.dirty.extend(old);
        self.nrp.set_locations(snap.locations);
        let keys: Vec<(String, String)> = self
            .nrp
            .locations()
            .iter()
            .flat_map(|(l, a)| a.keys().map(move |x| (l.clone(), x.clone())))
            .chain(self.desired.nodes().iter().flat_map(|(l, p)| p.keys().map(move |x| (l.clone(), x.clone()))))
            .collect();
        self.dirty.extend(keys);
        self.trigger_location_sync();
    }

    /// Startup step 5 for one egress pod: a terminating pod carrying the cleanup finalizer gets a
    /// non-last drain record with every family's address (or a service-level verification when
    /// it has no IPs), marked recovered; an unlabelled one has its finalizer removed directly.
    /// Returns true when something was scheduled.
    pub fn recover_pod_finalizer(&mut self, pod: &Pod) -> bool {
        if pod.meta.deletion_timestamp.is_none() || !has_pod_finalizer(pod) {
            return false;
        }
        let key = pod_key(pod);
        let label = egress_identity(pod);
        if label.is_empty() || check_egress_identity(&label).is_err() {
            let identity = Identity::new(&label);
            let identity = if identity.is_reserved() { Identity::default() } else { identity };
            self.queue_pod_call(&key, pod.meta.object_ref(), PodCallKind::RemoveDirect { identity });
            return true;
        }
        let addrs = pod_addresses(pod);
        let no_ips = pod.host_ip.is_empty() || addrs.is_empty();
        let addresses = if no_ips { Vec::new() } else { addrs };
        let rec = PodDeletionRecord::new(pod.meta.object_ref(), Identity::new(&label), addresses, self.now_ms)
            .verify_service_drain(no_ips)
            .recovered(true);
        self.put_pod_record(&key, rec);
        self.metrics.inc(metrics::FINALIZERS_RECOVERY_SCHEDULED_TOTAL, &[]);
        self.trigger_location_sync();
        true
    }
}
