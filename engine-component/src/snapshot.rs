//! Snapshots: the whole engine state, in a compact binary encoding with an explicit schema version
//! (what `snapshot` writes and hot swap and trap recovery move), or as JSON for humans (the dump,
//! the golden fixtures).
//!
//! Everything that is state is serialised (ops, models, buffers, timers, in-flight workers and
//! syncs with the call ids they await, counters and histograms, the jitter generator); derived
//! indexes are rebuilt on restore. A snapshot from a newer schema is refused with a clear error.
//!
//! The binary form is a 12-byte header, then the state as named MessagePack (self-describing, so
//! the serde attributes the JSON relies on, `flatten` and `default`, work unchanged) compressed as
//! one LZ4 block:
//!
//! | bytes | what |
//! |---|---|
//! | 0..4 | magic `DTSN` |
//! | 4..8 | `schema_version`, u32 little-endian (the state schema, numbered as in JSON) |
//! | 8..12 | length of the MessagePack state before compression, u32 little-endian |
//! | 12.. | the LZ4 block |
//!
//! [`decode`] reads both: bytes starting with `{` are a JSON snapshot (every schema since 1).
//! The declared length is checked against what LZ4 can expand the block to and against
//! [`MAX_STATE_BYTES`] before anything is allocated, so a forged header cannot ask for memory.

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
/// restores initialized, without known addresses. The binary encoding came with schema 3 and
/// carries the same number; JSON snapshots of every schema still restore.
pub const SCHEMA_VERSION: u64 = 3;

/// The first bytes of a binary snapshot.
pub const MAGIC: [u8; 4] = *b"DTSN";

const HEADER_BYTES: usize = 12;

/// The largest uncompressed state a binary snapshot may declare: half the guest's default memory
/// limit (512 MiB), which could not hold more next to the engine it describes and its decoding.
pub const MAX_STATE_BYTES: usize = 256 << 20;

/// LZ4 encodes at most 255 output bytes per input byte (a run's length costs one byte per 255).
const LZ4_MAX_RATIO: usize = 255;

#[derive(Serialize)]
struct Out<'a> {
    schema_version: u64,
    engine: &'a Engine,
}

/// The binary snapshot of `engine`.
pub fn encode(engine: &Engine) -> Vec<u8> {
    // Serialising plain maps of strings and numbers into a Vec cannot fail; an empty snapshot
    // would be refused on restore rather than silently accepted.
    let Ok(state) = rmp_serde::to_vec_named(engine) else { return Vec::new() };
    let Ok(len) = u32::try_from(state.len()) else { return Vec::new() };
    let mut out = vec![0u8; HEADER_BYTES + lz4_flex::block::get_maximum_output_size(state.len())];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&(SCHEMA_VERSION as u32).to_le_bytes());
    out[8..12].copy_from_slice(&len.to_le_bytes());
    let Ok(written) = lz4_flex::block::compress_into(&state, &mut out[HEADER_BYTES..]) else { return Vec::new() };
    drop(state);
    out.truncate(HEADER_BYTES + written);
    out.shrink_to_fit();
    out
}

/// The JSON snapshot of `engine` (the dump for humans; it restores too).
pub fn encode_json(engine: &Engine) -> Vec<u8> {
    serde_json::to_vec(&Out { schema_version: SCHEMA_VERSION, engine }).unwrap_or_default()
}

/// Reads a binary or JSON snapshot; refuses unknown versions, forged lengths, and states whose
/// parts contradict each other.
pub fn decode(bytes: &[u8]) -> Result<Engine, SnapshotError> {
    let mut engine = if bytes.starts_with(&MAGIC) {
        decode_binary(bytes)?
    } else if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        decode_json(bytes)?
    } else {
        return Err(SnapshotError(format!(
            "not a snapshot: neither the binary form (magic {:?}) nor JSON",
            String::from_utf8_lossy(&MAGIC)
        )));
    };
    engine.rebuild_indexes();
    // A snapshot is trusted only as far as the engine could have written it: one whose parts
    // contradict each other (a worker without an op, an address published for a service never
    // registered) is refused rather than run into a later panic or wrong cloud calls.
    engine.check_invariants().map_err(|e| SnapshotError(format!("inconsistent engine state: {}", bounded(&e))))?;
    Ok(engine)
}

/// The schema version a snapshot declares, without decoding its state (for tools and errors).
pub fn schema_version(bytes: &[u8]) -> Option<u64> {
    if bytes.starts_with(&MAGIC) {
        return bytes.get(4..8).map(|v| u64::from(u32::from_le_bytes([v[0], v[1], v[2], v[3]])));
    }
    #[derive(Deserialize)]
    struct Header {
        schema_version: Option<u64>,
    }
    serde_json::from_slice::<Header>(bytes).ok()?.schema_version
}

fn check_version(version: u64) -> Result<(), SnapshotError> {
    if version > SCHEMA_VERSION {
        return Err(SnapshotError(format!(
            "snapshot schema_version {version} is newer than this engine supports ({SCHEMA_VERSION}); upgrade the engine"
        )));
    }
    if version == 0 {
        return Err(SnapshotError("snapshot schema_version 0 is not a valid version".into()));
    }
    Ok(())
}

fn decode_binary(bytes: &[u8]) -> Result<Engine, SnapshotError> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Err(SnapshotError(format!("binary snapshot of {} bytes is shorter than its {HEADER_BYTES}-byte header", bytes.len())));
    };
    let word = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let version = u64::from(word(4));
    check_version(version)?;
    if version < SCHEMA_VERSION {
        // Older schemas were only ever written as JSON.
        return Err(SnapshotError(format!("binary snapshot declares schema_version {version}, which was never written in binary")));
    }
    let len = word(8) as usize;
    let block = &bytes[HEADER_BYTES..];
    if len > MAX_STATE_BYTES {
        return Err(SnapshotError(format!("binary snapshot declares a state of {len} bytes, more than the {MAX_STATE_BYTES} allowed")));
    }
    if len > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(SnapshotError(format!(
            "binary snapshot declares a state of {len} bytes, more than its {}-byte block can hold",
            block.len()
        )));
    }
    let mut state = vec![0u8; len];
    let got = lz4_flex::block::decompress_into(block, &mut state).map_err(|e| SnapshotError(format!("corrupt binary snapshot: {e}")))?;
    if got != len {
        return Err(SnapshotError(format!("corrupt binary snapshot: its block holds {got} bytes, the header says {len}")));
    }
    rmp_serde::from_slice(&state).map_err(|e| SnapshotError(format!("engine state: {}", bounded(&e.to_string()))))
}

/// Reads a JSON snapshot in two passes over the bytes, never as a whole JSON tree: the first
/// reads only `schema_version` (serde skips the engine state without building it), the second
/// builds the engine directly. Restoring then needs the bytes and the engine, not a tree several
/// times their size.
fn decode_json(bytes: &[u8]) -> Result<Engine, SnapshotError> {
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
    check_version(version)?;
    if header.engine.is_none() {
        return Err(SnapshotError("missing engine state".into()));
    }
    let Body { engine } = serde_json::from_slice(bytes).map_err(|e| SnapshotError(format!("engine state: {e}")))?;
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
