//! The API server's store as the oracle reads a cluster ([`ClusterView`]): a snapshot of its
//! Services, EndpointSlices, Nodes and egress Pods (those labelled
//! [`EGRESS_LABEL`](difftracker_runtime::k8s::EGRESS_LABEL), what the controller watches),
//! converted into the engine's types through `k8s-openapi` and the runtime's conversions (the
//! same path the controller's watches take). It lets the main job and the HTTP tests hold the
//! state a controller left in the API server to the replay's oracle.

use super::store::{Kind, ListOptions, Store};
use crate::replay::cluster::ObjectKey;
use crate::replay::oracle::ClusterView;
use difftracker_engine::io::{EndpointSlice, Node, Pod, Service};
use difftracker_runtime::k8s::{KubeObject, EGRESS_LABEL};
use std::collections::BTreeMap;

/// Kinds the engine watches, as the store names them.
const WATCHED: [Kind; 4] = [Kind::Service, Kind::EndpointSlice, Kind::Node, Kind::Pod];

/// A snapshot of the watched objects of a [`Store`].
#[derive(Clone, Debug, Default)]
pub struct StoreView {
    objects: BTreeMap<ObjectKey, KubeObject>,
    /// Objects the store holds that do not convert (none in practice: the store validates every
    /// write against the same `k8s-openapi` types), one line each.
    pub problems: Vec<String>,
}

impl StoreView {
    /// Reads every watched object of `store` (all namespaces, every page).
    pub fn of(store: &Store) -> StoreView {
        let mut view = StoreView::default();
        for kind in WATCHED {
            let mut options = ListOptions::default();
            // Bounded: each page is at most the store's page size and a kind holds at most its
            // object limit, so this ends after that many pages.
            loop {
                let page = match store.list(kind, None, &options) {
                    Ok(p) => p,
                    Err(e) => {
                        view.problems.push(format!("listing {}: {}", kind.info().plural, e.message));
                        break;
                    }
                };
                for item in &page.items {
                    match KubeObject::from_json(item) {
                        Ok(Some(object)) => {
                            view.objects.insert(ObjectKey::of(&object), object);
                        }
                        Ok(None) => {}
                        Err(e) => view.problems.push(e),
                    }
                }
                match page.continue_token {
                    Some(token) => options.continue_token = Some(token),
                    None => break,
                }
            }
        }
        view
    }

    /// Every watched object (all Pods, labelled or not), by kind, namespace and name.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &KubeObject)> {
        self.objects.iter()
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&KubeObject> {
        self.objects.get(key)
    }

    fn of_kind<'a, T: 'a>(&'a self, pick: fn(&'a KubeObject) -> Option<&'a T>) -> Box<dyn Iterator<Item = &'a T> + 'a> {
        Box::new(self.objects.values().filter_map(pick))
    }
}

impl ClusterView for StoreView {
    fn services(&self) -> Box<dyn Iterator<Item = &Service> + '_> {
        self.of_kind(|o| if let KubeObject::Service(s) = o { Some(s) } else { None })
    }
    fn endpoint_slices(&self) -> Box<dyn Iterator<Item = &EndpointSlice> + '_> {
        self.of_kind(|o| if let KubeObject::EndpointSlice(s) = o { Some(s) } else { None })
    }
    fn nodes(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        self.of_kind(|o| if let KubeObject::Node(n) = o { Some(n) } else { None })
    }
    /// The egress Pods only: the controller watches no other.
    fn pods(&self) -> Box<dyn Iterator<Item = &Pod> + '_> {
        self.of_kind(|o| if let KubeObject::Pod(p) = o { p.meta.label(EGRESS_LABEL).is_some().then_some(p) } else { None })
    }
    fn stuck_deleting(&self) -> Vec<String> {
        self.objects.iter().filter(|(_, o)| o.meta().is_some_and(|m| m.deletion_timestamp.is_some())).map(|(k, _)| k.to_string()).collect()
    }
}
