//! Operation records (ENGINE.md 3.3, 4.1) and the table that holds them.
//!
//! [`OpTable`] keeps, besides the records, an index per (state, service type) cell ordered by
//! creation time, so state gauges and the oldest-age gauge are read in O(1)/O(log n) and kept
//! exact incrementally. Every mutation of a record goes through [`OpTable::update`].

use crate::config::{ServiceConfig, ServiceKind};
use crate::identity::Identity;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The operation state machine's states. `Unknown` carries a value outside 0..=5 (only reachable
/// through a foreign snapshot); every entry point treats it as a no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum ResourceState {
    NotStarted,
    CreationInProgress,
    Created,
    DeletionPending,
    DeletionInProgress,
    UpdateInProgress,
    Unknown(u8),
}

impl From<u8> for ResourceState {
    fn from(v: u8) -> Self {
        match v {
            0 => ResourceState::NotStarted,
            1 => ResourceState::CreationInProgress,
            2 => ResourceState::Created,
            3 => ResourceState::DeletionPending,
            4 => ResourceState::DeletionInProgress,
            5 => ResourceState::UpdateInProgress,
            other => ResourceState::Unknown(other),
        }
    }
}

impl From<ResourceState> for u8 {
    fn from(s: ResourceState) -> u8 {
        match s {
            ResourceState::NotStarted => 0,
            ResourceState::CreationInProgress => 1,
            ResourceState::Created => 2,
            ResourceState::DeletionPending => 3,
            ResourceState::DeletionInProgress => 4,
            ResourceState::UpdateInProgress => 5,
            ResourceState::Unknown(v) => v,
        }
    }
}

/// Metric labels of every state, in value order, then `unknown`.
pub const STATE_LABELS: [&str; 7] =
    ["not_started", "creation_in_progress", "created", "deletion_pending", "deletion_in_progress", "update_in_progress", "unknown"];

impl ResourceState {
    /// Index into `STATE_LABELS`.
    pub fn label_index(self) -> usize {
        match self {
            ResourceState::Unknown(_) => 6,
            s => u8::from(s) as usize,
        }
    }
    pub fn label(self) -> &'static str {
        STATE_LABELS[self.label_index()]
    }
    pub fn is_deleting(self) -> bool {
        matches!(self, ResourceState::DeletionPending | ResourceState::DeletionInProgress)
    }
}

/// One tracked service (`pendingServiceOps` entry). Times are engine milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The configs are shared: the one in flight and the last applied are mostly the desired
    /// one itself, and a record holds each by reference (serialised as the config).
    pub config: Arc<ServiceConfig>,
    pub in_flight_config: Option<Arc<ServiceConfig>>,
    pub last_applied_config: Option<Arc<ServiceConfig>>,
    pub state: ResourceState,
    pub retry_count: u32,
    pub last_attempt_ms: Option<u64>,
    /// `None` is Go's zero time.
    pub next_retry_at_ms: Option<u64>,
    pub retries_exhausted: bool,
    pub creation_failed_terminal: bool,
    pub created_at_ms: u64,
    pub operation_started_at_ms: Option<u64>,
    pub is_orphan: bool,
    pub correlation_id: String,
    /// Outbound only: the pod whose arrival created the op.
    pub triggering_pod: Option<(String, String)>,
    pub recreate_after_deletion: bool,
    /// A server's `Retry-After` (capped): no attempt starts before this, whatever resets the
    /// retry budget meanwhile (4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Inbound: the address of the Service's public IP as last seen (the PUT's response, the
    /// start-up list), so clearing the status removes exactly the entry that is ours.
    #[serde(default)]
    pub public_ip: Option<String>,
}

impl Operation {
    pub fn new(config: ServiceConfig, state: ResourceState, now_ms: u64, correlation_id: String) -> Operation {
        Operation {
            config: Arc::new(config),
            in_flight_config: None,
            last_applied_config: None,
            state,
            retry_count: 0,
            last_attempt_ms: None,
            next_retry_at_ms: None,
            retries_exhausted: false,
            creation_failed_terminal: false,
            created_at_ms: now_ms,
            operation_started_at_ms: None,
            is_orphan: false,
            correlation_id,
            triggering_pod: None,
            recreate_after_deletion: false,
            not_before_ms: None,
            public_ip: None,
        }
    }

    /// "reset": fresh retry budget.
    pub fn reset(&mut self) {
        self.retry_count = 0;
        self.retries_exhausted = false;
        self.next_retry_at_ms = None;
    }

    pub fn kind(&self) -> ServiceKind {
        self.config.kind()
    }

    /// Nothing more will happen without new input: Created, or parked on a terminal error.
    pub fn is_settled(&self) -> bool {
        self.state == ResourceState::Created || (self.state == ResourceState::NotStarted && self.creation_failed_terminal)
    }

    /// Not settled, but parked after exhausting its retries: the init gate (4.4) does not wait
    /// for it.
    pub fn is_retry_parked(&self) -> bool {
        !self.is_settled() && self.retries_exhausted
    }
}

type Cell = (usize, ServiceKind);

/// All operations plus incrementally maintained per-cell indexes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OpTable {
    ops: BTreeMap<Identity, Operation>,
    #[serde(skip)]
    cells: BTreeMap<Cell, BTreeSet<(u64, Identity)>>,
    #[serde(skip)]
    unsettled: usize,
    /// Of those, the retry-parked ones.
    #[serde(skip)]
    parked: usize,
}

impl OpTable {
    fn cell(op: &Operation) -> Cell {
        (op.state.label_index(), op.kind())
    }

    fn unindex(&mut self, id: &Identity, op: &Operation) {
        let cell = Self::cell(op);
        if let Some(set) = self.cells.get_mut(&cell) {
            set.remove(&(op.created_at_ms, id.clone()));
            if set.is_empty() {
                self.cells.remove(&cell);
            }
        }
        if !op.is_settled() {
            self.unsettled -= 1;
        }
        if op.is_retry_parked() {
            self.parked -= 1;
        }
    }

    fn index(&mut self, id: &Identity, op: &Operation) {
        self.cells.entry(Self::cell(op)).or_default().insert((op.created_at_ms, id.clone()));
        if !op.is_settled() {
            self.unsettled += 1;
        }
        if op.is_retry_parked() {
            self.parked += 1;
        }
    }

    /// Rebuilds the indexes (after restore).
    pub fn rebuild(&mut self) {
        self.cells.clear();
        self.unsettled = 0;
        self.parked = 0;
        let ops = std::mem::take(&mut self.ops);
        for (id, op) in &ops {
            self.index(id, op);
        }
        self.ops = ops;
    }

    pub fn get(&self, id: &Identity) -> Option<&Operation> {
        self.ops.get(id)
    }

    pub fn contains(&self, id: &Identity) -> bool {
        self.ops.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Identity, &Operation)> {
        self.ops.iter()
    }

    pub fn insert(&mut self, id: Identity, op: Operation) {
        if let Some(old) = self.ops.remove(&id) {
            self.unindex(&id, &old);
        }
        self.index(&id, &op);
        self.ops.insert(id, op);
    }

    pub fn remove(&mut self, id: &Identity) -> Option<Operation> {
        let op = self.ops.remove(id)?;
        self.unindex(id, &op);
        Some(op)
    }

    /// Mutates one record, keeping the indexes exact. `None` if absent.
    pub fn update<R>(&mut self, id: &Identity, f: impl FnOnce(&mut Operation) -> R) -> Option<R> {
        let mut op = self.ops.remove(id)?;
        self.unindex(id, &op);
        let r = f(&mut op);
        self.index(id, &op);
        self.ops.insert(id.clone(), op);
        Some(r)
    }

    /// Number of ops in a (state label index, kind) cell.
    pub fn count(&self, state_index: usize, kind: ServiceKind) -> usize {
        self.cells.get(&(state_index, kind)).map_or(0, |s| s.len())
    }

    /// CreatedAt of the oldest op in a cell.
    pub fn oldest_created_at(&self, state_index: usize, kind: ServiceKind) -> Option<u64> {
        self.cells.get(&(state_index, kind)).and_then(|s| s.iter().next()).map(|(t, _)| *t)
    }

    /// Ops that are neither Created nor terminal-parked.
    pub fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// Unsettled ops that are not retry-parked either: what the init gate (4.4) waits for.
    pub fn blocking_init(&self) -> usize {
        self.unsettled - self.parked
    }

    /// Test/inspection helper: recomputes the counts from scratch and compares them with the
    /// incrementally maintained ones.
    pub fn check_indexes(&self) -> Result<(), String> {
        let mut fresh = OpTable { ops: self.ops.clone(), ..Default::default() };
        fresh.rebuild();
        if fresh.cells != self.cells {
            return Err("op cell index drifted".into());
        }
        if fresh.unsettled != self.unsettled {
            return Err(format!("unsettled count drifted: {} vs {}", self.unsettled, fresh.unsettled));
        }
        if fresh.parked != self.parked {
            return Err(format!("parked count drifted: {} vs {}", self.parked, fresh.parked));
        }
        Ok(())
    }
}
