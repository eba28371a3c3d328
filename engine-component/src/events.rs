//! Kubernetes watch events -> engine entry points (ENGINE.md 2.1-2.3, 2.5).
//!
//! Services: a Service "needs a load balancer" iff it is `type: LoadBalancer`, not being
//! deleted and has no `loadBalancerClass`; such a Service goes through admission and
//! `UpdateService` (an admission rejection becomes a Warning Event), any other Service that is
//! tracked or registered goes to `DeleteService`. EndpointSlices and Nodes become
//! `UpdateEndpoints` deltas with the owner-change and node-IP-change rules of 2.3.
//! Pods go to the egress pod informer of [`crate::egress`].

use crate::admission::admit;
use crate::config::{ServiceConfig, ServiceKind};
use crate::egress::PodEvent;
use crate::endpoints::{owner_of, slice_key, EndpointMap};
use crate::engine::Engine;
use crate::identity::Identity;
use crate::io::{EndpointSlice, KubeEvent, Node, Service};
use crate::names::{REASON_DUPLICATE_UID, SERVICE_FINALIZERS};
use crate::state::ResourceState;
use std::collections::BTreeSet;

/// Whether the engine should provision a load balancer for this Service.
pub fn needs_load_balancer(svc: &Service) -> bool {
    svc.service_type == "LoadBalancer" && svc.meta.deletion_timestamp.is_none() && svc.load_balancer_class.is_none()
}

fn has_service_finalizer(svc: &Service) -> bool {
    svc.meta.finalizers.iter().any(|f| SERVICE_FINALIZERS.contains(&f.as_str()))
}

impl Engine {
    pub(crate) fn handle_kube_event(&mut self, ev: KubeEvent) {
        match ev {
            KubeEvent::ServiceApplied(s) => self.on_service_applied(s),
            KubeEvent::ServiceDeleted(s) => self.on_service_deleted(s),
            KubeEvent::EndpointSliceApplied(s) => self.on_slice_applied(s),
            KubeEvent::EndpointSliceDeleted(s) => self.on_slice_deleted(s),
            KubeEvent::NodeApplied(n) => self.on_node_applied(n),
            KubeEvent::NodeDeleted(n) => self.on_node_deleted(n),
            KubeEvent::PodApplied(p) => self.on_pod_event(PodEvent::Applied(p)),
            KubeEvent::PodDeleted(p) => self.on_pod_event(PodEvent::Deleted(p)),
            // Only the start-up pass waits for it; a repeat later changes nothing.
            KubeEvent::InitialListsComplete => {}
        }
    }

    fn on_service_applied(&mut self, svc: Service) {
        let id = Identity::new(&svc.meta.uid);
        if id.is_empty() {
            return;
        }
        let needs = needs_load_balancer(&svc);
        let known = self.ops.get(&id).is_some_and(|o| o.kind() == crate::config::ServiceKind::Inbound) || self.nrp.has_load_balancer(&id);
        if (needs || known) && self.owned_by_another(&id, &svc) {
            let owner = self.services.get(&id).map(|s| format!("{}/{}", s.meta.namespace, s.meta.name)).unwrap_or_default();
            let message = format!("Service UID {:?} is already used by Service {owner}: this Service is ignored", svc.meta.uid);
            self.queue_event(svc.meta.object_ref(), REASON_DUPLICATE_UID, message);
            return;
        }
        if needs || known {
            self.services.insert(id.clone(), svc.clone());
        }
        if needs {
            match admit(&svc) {
                Ok(Some(cfg)) => self.update_service(ServiceConfig::inbound(svc.meta.object_ref(), cfg)),
                Ok(None) => {}
                Err(r) => self.queue_event(svc.meta.object_ref(), r.reason, r.message),
            }
        } else if known {
            self.delete_service(&id, true, false);
        } else if svc.meta.deletion_timestamp.is_some() && id.check_inbound_names().is_err() && has_service_finalizer(&svc) {
            // Our finalizers on a Service whose name Azure cannot hold: nothing was ever created
            // (the delete worker sends no Azure call for such a name), so only release them.
            self.services.insert(id.clone(), svc.clone());
            let op = self
                .new_op(ServiceConfig::bare(id.clone(), ServiceKind::Inbound, svc.meta.object_ref()), ResourceState::DeletionInProgress);
            self.insert_op(&id, op);
            self.trigger_dispatch(&id);
        }
    }

    /// Another live Service (another namespace/name) already owns this identity: identities are
    /// lower-cased UIDs, so two Services sharing one must not act on each other's load balancer.
    fn owned_by_another(&self, id: &Identity, svc: &Service) -> bool {
        self.services.get(id).is_some_and(|s| s.meta.namespace != svc.meta.namespace || s.meta.name != svc.meta.name)
    }

    fn on_service_deleted(&mut self, svc: Service) {
        let id = Identity::new(&svc.meta.uid);
        if id.is_empty() || self.owned_by_another(&id, &svc) {
            return;
        }
        if self.ops.get(&id).is_some_and(|o| o.kind() == crate::config::ServiceKind::Inbound) || self.nrp.has_load_balancer(&id) {
            if !self.services.contains_key(&id) {
                self.services.insert(id.clone(), svc);
            }
            self.delete_service(&id, true, false);
        }
        self.services.remove(&id);
    }

    fn reconcile_slice(&mut self, old_owner: Option<Identity>, old: EndpointMap, new_owner: Option<Identity>, new: EndpointMap) {
        if old_owner == new_owner {
            if let Some(o) = old_owner {
                self.update_endpoints(&o, &old, &new);
            }
            return;
        }
        if let Some(o) = old_owner {
            self.update_endpoints(&o, &old, &EndpointMap::new());
        }
        if let Some(n) = new_owner {
            self.update_endpoints(&n, &EndpointMap::new(), &new);
        }
    }

    fn on_slice_applied(&mut self, slice: EndpointSlice) {
        let new_owner = owner_of(&slice);
        let new_map = self.endpoints.slice_map(&slice);
        let old = self.endpoints.put_slice(slice);
        let old_owner = old.as_ref().and_then(owner_of);
        let old_map = old.map(|o| self.endpoints.slice_map(&o)).unwrap_or_default();
        self.reconcile_slice(old_owner, old_map, new_owner, new_map);
    }

    fn on_slice_deleted(&mut self, slice: EndpointSlice) {
        let key = slice_key(&slice);
        let old = self.endpoints.remove_slice(&key).unwrap_or(slice);
        let owner = owner_of(&old);
        let old_map = self.endpoints.slice_map(&old);
        self.reconcile_slice(owner, old_map, None, EndpointMap::new());
    }

    fn on_node_applied(&mut self, node: Node) {
        let previous = self.endpoints.set_node(&node);
        self.on_cluster_families_changed();
        let old_ips = match previous {
            Some(old) => {
                let a: BTreeSet<&String> = old.iter().collect();
                let b: BTreeSet<&String> = node.internal_ips.iter().collect();
                if a == b {
                    return;
                }
                old
            }
            None => Vec::new(),
        };
        self.move_node(&node.name, &old_ips, &node.internal_ips);
    }

    fn on_node_deleted(&mut self, node: Node) {
        if let Some(old) = self.endpoints.remove_node(&node.name) {
            self.move_node(&node.name, &old, &[]);
        }
    }

    /// `ReconcileNodeIPChange`.
    fn move_node(&mut self, name: &str, old_ips: &[String], new_ips: &[String]) {
        for (uid, (old, new)) in self.endpoints.node_moves(name, old_ips, new_ips) {
            self.update_endpoints(&uid, &old, &new);
        }
    }
}
