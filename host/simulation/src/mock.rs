//! Instant in-process backends: every call succeeds at once against a small in-memory inventory
//! (public IPs with allocated addresses, load balancers, NAT gateways, ServiceGateway services and
//! address locations, Kubernetes finalizers and ingress). They drive the demo and tests that only
//! need a cooperative cloud; the ARM/NRP emulator is the faithful one.

use difftracker_engine::io::{
    AddressLocation, CallOutput, CloudCall, KubeCall, KubeEventRecord, LoadBalancerIngress, PublicIpInfo, SgwService, UpdateAction,
};
use difftracker_runtime::backend::{CallFuture, CloudBackend, KubeBackend};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// What the mock cloud and cluster hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Public IP name -> allocated address.
    pub public_ips: BTreeMap<String, String>,
    pub load_balancers: BTreeSet<String>,
    pub nat_gateways: BTreeSet<String>,
    /// ServiceGateway services by name.
    pub sgw_services: BTreeSet<String>,
    /// Location -> address -> services.
    pub locations: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Service UIDs carrying the service finalizers.
    pub service_finalizers: BTreeSet<String>,
    /// Service UID -> ingress.
    pub ingress: BTreeMap<String, Vec<LoadBalancerIngress>>,
    pub events: Vec<KubeEventRecord>,
    next_ip: u32,
}

impl Inventory {
    /// No cloud resource and no finalizer left.
    pub fn is_clean(&self) -> bool {
        self.public_ips.is_empty()
            && self.load_balancers.is_empty()
            && self.nat_gateways.is_empty()
            && self.sgw_services.is_empty()
            && self.locations.is_empty()
            && self.service_finalizers.is_empty()
    }
}

/// The mock cloud and the mock cluster share one inventory.
#[derive(Clone, Debug, Default)]
pub struct MockWorld {
    inventory: Arc<Mutex<Inventory>>,
}

impl MockWorld {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inventory(&self) -> Inventory {
        self.lock().clone()
    }

    pub fn cloud(&self) -> Arc<dyn CloudBackend> {
        Arc::new(self.clone())
    }

    pub fn kube(&self) -> Arc<dyn KubeBackend> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inventory> {
        self.inventory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply_cloud(&self, call: CloudCall) -> CallOutput {
        let mut inv = self.lock();
        match call {
            CloudCall::PutPublicIp { name, version } => {
                let address = match inv.public_ips.get(&name) {
                    Some(address) => address.clone(),
                    None => {
                        inv.next_ip += 1;
                        let n = inv.next_ip;
                        let address = format!("20.0.{}.{}", n / 250, n % 250 + 1);
                        inv.public_ips.insert(name.clone(), address.clone());
                        address
                    }
                };
                let attached = inv.load_balancers.contains(name.trim_end_matches("-pip"));
                CallOutput::PublicIp(PublicIpInfo { name, ip_address: Some(address), version, attached })
            }
            CloudCall::DeletePublicIp { name } => {
                inv.public_ips.remove(&name);
                CallOutput::Done
            }
            CloudCall::ListPublicIps => CallOutput::PublicIps(
                inv.public_ips
                    .iter()
                    .map(|(name, address)| PublicIpInfo {
                        name: name.clone(),
                        ip_address: Some(address.clone()),
                        version: difftracker_engine::io::IpVersion::V4,
                        attached: false,
                    })
                    .collect(),
            ),
            CloudCall::PutLoadBalancer(spec) => {
                inv.load_balancers.insert(spec.name);
                CallOutput::Done
            }
            CloudCall::DeleteLoadBalancer { name } => {
                inv.load_balancers.remove(&name);
                CallOutput::Done
            }
            CloudCall::ListLoadBalancers => CallOutput::Names(inv.load_balancers.iter().cloned().collect()),
            CloudCall::PutNatGateway(spec) => {
                inv.nat_gateways.insert(spec.name);
                CallOutput::Done
            }
            CloudCall::DetachNatGateway { .. } => CallOutput::Done,
            CloudCall::GetNatGateway { .. } => CallOutput::NatGateway(None),
            CloudCall::DeleteNatGateway { name } => {
                inv.nat_gateways.remove(&name);
                CallOutput::Done
            }
            CloudCall::ListNatGateways => CallOutput::Names(inv.nat_gateways.iter().cloned().collect()),
            CloudCall::GetSgwServices => CallOutput::SgwServices(
                inv.sgw_services
                    .iter()
                    .map(|name| SgwService {
                        name: name.clone(),
                        service_type: difftracker_engine::io::ServiceType::Inbound,
                        backend_pools: Vec::new(),
                        nat_gateway: None,
                        is_default: false,
                    })
                    .collect(),
            ),
            CloudCall::GetAddressLocations => CallOutput::AddressLocations(
                inv.locations
                    .iter()
                    .map(|(location, addresses)| AddressLocation {
                        location: location.clone(),
                        addresses: addresses
                            .iter()
                            .map(|(address, services)| difftracker_engine::io::AddressUpdate {
                                address: address.clone(),
                                services: services.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            CloudCall::UpdateServices(requests) => {
                for r in requests {
                    if r.is_delete {
                        inv.sgw_services.remove(&r.name);
                    } else {
                        inv.sgw_services.insert(r.name);
                    }
                }
                CallOutput::Done
            }
            CloudCall::UpdateAddressLocations(updates) => {
                for update in updates {
                    if update.action == UpdateAction::PartialUpdate && update.addresses.is_empty() {
                        inv.locations.remove(&update.location);
                        continue;
                    }
                    let location = inv.locations.entry(update.location.clone()).or_default();
                    if update.action == UpdateAction::FullUpdate {
                        location.clear();
                    }
                    for a in update.addresses {
                        if a.services.is_empty() {
                            location.remove(&a.address);
                        } else {
                            location.insert(a.address, a.services);
                        }
                    }
                    if location.is_empty() {
                        inv.locations.remove(&update.location);
                    }
                }
                CallOutput::Done
            }
        }
    }

    fn apply_kube(&self, call: KubeCall) -> CallOutput {
        let mut inv = self.lock();
        match call {
            KubeCall::AddServiceFinalizers(target) => {
                inv.service_finalizers.insert(target.uid);
            }
            KubeCall::RemoveServiceFinalizers(target) => {
                inv.service_finalizers.remove(&target.uid);
            }
            KubeCall::PatchServiceIngress(target, ingress) => {
                inv.ingress.insert(target.uid, ingress);
            }
            KubeCall::AddPodFinalizer(_) | KubeCall::RemovePodFinalizer(_) => {}
        }
        CallOutput::Done
    }
}

impl CloudBackend for MockWorld {
    fn call(&self, call: CloudCall) -> CallFuture {
        let output = self.apply_cloud(call);
        Box::pin(async move { Ok(output) })
    }
}

impl KubeBackend for MockWorld {
    fn call(&self, call: KubeCall) -> CallFuture {
        let output = self.apply_kube(call);
        Box::pin(async move { Ok(output) })
    }

    fn record_event(&self, event: KubeEventRecord) {
        self.lock().events.push(event);
    }
}
