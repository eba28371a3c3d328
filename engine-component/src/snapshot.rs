//! Snapshots: the whole engine state as JSON with a `schema_version`.
//!
//! Everything that is state is serialised (ops, models, buffers, timers, in-flight workers and
//! syncs with the call ids they await, counters and histograms, the jitter generator); derived
//! indexes are rebuilt on restore. A snapshot from a newer schema is refused with a clear error.

use crate::engine::{Engine, SnapshotError};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The schema this engine writes and the newest it reads. 2 added the egress state (pod
/// objects, pod calls, shadows, record candidates, the IPv6 decision); a version 1 snapshot
/// (inbound only) restores with that state empty, and an engine of version 1 refuses a version 2
/// snapshot rather than silently dropping the egress state. 3 added the start-up pass (its
/// phase, lists, initial objects, held events and calls) and each inbound operation's known
/// public IP address; a version 1 or 2 snapshot is an engine that was already running and
/// restores initialized, without known addresses.
pub const SCHEMA_VERSION: u64 = 3;

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

/// Reads a snapshot in two passes over the bytes, never as a whole JSON tree: the first reads
/// only `schema_version` (serde skips the engine state without building it), the second builds
/// the engine directly. Restoring then needs the bytes and the engine, not a tree several times
/// their size.
pub fn decode(bytes: &[u8]) -> Result<Engine, SnapshotError> {
    #[derive(Deserialize)]
    struct Header {
        schema_version: Option<serde_json::Value>,
        engine: Option<de::IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Body {
        engine: Engine,
    }
    let header: Header = serde_json::from_slice(bytes).map_err(|e| SnapshotError(format!("not a snapshot: {e}")))?;
    let version = header
        .schema_version
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
    if header.engine.is_none() {
        return Err(SnapshotError("missing engine state".into()));
    }
    let Body { mut engine } = serde_json::from_slice(bytes).map_err(|e| SnapshotError(format!("engine state: {e}")))?;
    engine.rebuild_indexes();
    // A snapshot is trusted only as far as the engine could have written it: one whose parts
    // contradict each other (a worker without an op, an address published for a service never
    // registered) is refused rather than run into a later panic or wrong cloud calls.
    engine.check_invariants().map_err(|e| SnapshotError(format!("inconsistent engine state: {}", bounded(&e))))?;
    Ok(engine)
}

/// The invariant checks describe what they found in full; an error keeps its start.
fn bounded(text: &str) -> &str {
    const MAX: usize = 512;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads a map keyed by integers where the engine's state is `#[serde(flatten)]`ed: serde
/// buffers flattened fields, and from that buffer it no longer reads the string keys JSON
/// gives integers as numbers.
pub(crate) fn int_keyed<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<BTreeMap<u64, V>, D::Error> {
    let map: BTreeMap<IntKey, V> = BTreeMap::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k.0, v)).collect())
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct IntKey(u64);

impl<'de> Deserialize<'de> for IntKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IntKey, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IntKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an unsigned integer key")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntKey, E> {
                Ok(IntKey(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntKey, E> {
                v.parse().map(IntKey).map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}
