//! Snapshots: the whole engine state as JSON with a `schema_version`.
//!
//! Everything that is state is serialised (ops, models, buffers, timers, in-flight workers and
//! syncs with the call ids they await, counters and histograms, the jitter generator); derived
//! indexes are rebuilt on restore. A snapshot from a newer schema is refused with a clear error.

use crate::engine::{Engine, SnapshotError};
use serde::Serialize;

/// The schema this engine writes and the newest it reads. 2 added the egress state (pod
/// objects, pod calls, shadows, record candidates, the IPv6 decision); a version 1 snapshot
/// (inbound only) restores with that state empty, and an engine of version 1 refuses a version 2
/// snapshot rather than silently dropping the egress state.
pub const SCHEMA_VERSION: u64 = 2;

#[derive(Serialize)]
struct Out<'a> {
    schema_version: u64,
    engine: &'a Engine,
}

pub fn encode(engine: &Engine) -> Vec<u8> {
    // Serialising plain maps of strings and numbers cannot fail; an empty snapshot would be
    // refused on restore rather than silently accepted.
    serde_json::to_vec(&Out { schema_version: SCHEMA_VERSION, engine }).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<Engine, SnapshotError> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| SnapshotError(format!("not a snapshot: {e}")))?;
    let version = value
        .get("schema_version")
        .ok_or_else(|| SnapshotError("missing schema_version".into()))?
        .as_u64()
        .ok_or_else(|| SnapshotError("schema_version is not an unsigned integer".into()))?;
    if version > SCHEMA_VERSION {
        return Err(SnapshotError(format!(
            "snapshot schema_version {version} is newer than this engine supports ({SCHEMA_VERSION}); upgrade the engine"
        )));
    }
    if version == 0 {
        return Err(SnapshotError("snapshot schema_version 0 is not a valid version".into()));
    }
    let engine = value.get_mut("engine").map(serde_json::Value::take).ok_or_else(|| SnapshotError("missing engine state".into()))?;
    let mut engine: Engine = serde_json::from_value(engine).map_err(|e| SnapshotError(format!("engine state: {e}")))?;
    engine.rebuild_indexes();
    Ok(engine)
}
