//! The engine's public surface: one tenant's diff tracker, driven from outside.
//!
//! PLACEHOLDER API (the state machine fills it in): the signatures below are the contract the
//! component glue and the host rely on.

use crate::io::{Completion, EngineStatus, Io, KubeEvent, TenantConfig, TickOutcome};
use serde::{Deserialize, Serialize};

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot restore snapshot: {}", self.0)
    }
}

impl std::error::Error for SnapshotError {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    config: TenantConfig,
}

impl Engine {
    pub fn new(config: TenantConfig) -> Engine {
        Engine { config }
    }

    /// Applies Kubernetes watch events; starts no call.
    pub fn deliver(&mut self, _now_ms: u64, _events: Vec<KubeEvent>) {}

    /// Applies completions, fires due timers and starts the calls that are due through `io`.
    pub fn tick(&mut self, _now_ms: u64, _completions: Vec<Completion>, _io: &mut dyn Io) -> TickOutcome {
        TickOutcome::default()
    }

    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn restore(bytes: &[u8]) -> Result<Engine, SnapshotError> {
        serde_json::from_slice(bytes).map_err(|e| SnapshotError(e.to_string()))
    }

    pub fn status(&self) -> EngineStatus {
        EngineStatus::default()
    }
}
