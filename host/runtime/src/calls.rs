//! The calls an engine starts, as the host holds them: the tenant's call-id counter and the queue
//! a tick fills. Both the wasm store (whose imports start calls) and the native driver use them.

use difftracker_engine::io::{Call, CallId, Io, KubeEventRecord};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The tenant's call-id counter. Shared by every instance the tenant runs (clones share it), so
/// ids stay unique for the tenant's lifetime across snapshot/restore and hot swap.
#[derive(Clone, Debug)]
pub struct CallIds(Arc<AtomicU64>);

impl Default for CallIds {
    fn default() -> Self {
        CallIds::starting_at(1)
    }
}

impl CallIds {
    pub fn starting_at(first: CallId) -> Self {
        CallIds(Arc::new(AtomicU64::new(first)))
    }
    pub fn allocate(&self) -> CallId {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    /// The id the next call will get.
    pub fn peek(&self) -> CallId {
        self.0.load(Ordering::Relaxed)
    }
    /// Sets the id the next call will get. Only for trap recovery, which replays a deterministic
    /// log of inputs from a snapshot: rewound to the snapshot's next id, the replay allocates
    /// exactly the ids the calls in flight already carry.
    pub fn set_next(&self, next: CallId) {
        self.0.store(next, Ordering::Relaxed)
    }
}

/// What the engine started during one export call: `(id, call)` pairs in start order, and the
/// Kubernetes Events it recorded.
#[derive(Debug, Default)]
pub struct CallQueue {
    ids: CallIds,
    started: Vec<(CallId, Call)>,
    events: Vec<KubeEventRecord>,
}

impl CallQueue {
    pub fn new(ids: CallIds) -> Self {
        CallQueue { ids, started: Vec::new(), events: Vec::new() }
    }
    pub fn take(&mut self) -> (Vec<(CallId, Call)>, Vec<KubeEventRecord>) {
        (std::mem::take(&mut self.started), std::mem::take(&mut self.events))
    }
    pub fn ids(&self) -> &CallIds {
        &self.ids
    }
}

impl Io for CallQueue {
    fn start(&mut self, call: Call) -> CallId {
        let id = self.ids.allocate();
        self.started.push((id, call));
        id
    }
    fn record_event(&mut self, event: KubeEventRecord) {
        self.events.push(event);
    }
}
