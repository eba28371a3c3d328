//! The snapshot decoder (`restore`, used by hot swap and trap recovery), both of its forms (the
//! binary one `snapshot` writes and JSON): bytes are an engine or a
//! [`SnapshotError`](difftracker_engine::SnapshotError). An engine it accepts must be one the
//! engine could have written: it encodes back to the same bytes after one round, passes its own
//! consistency check, and goes on ticking without a panic.

use difftracker_engine::io::{Call, CallId, Io, KubeEventRecord};
use difftracker_engine::Engine;

/// An `Io` that numbers calls past any id a snapshot could hold and forgets them.
pub struct Discard(pub u64);

impl Io for Discard {
    fn start(&mut self, _call: Call) -> CallId {
        self.0 += 1;
        self.0
    }
    fn record_event(&mut self, _event: KubeEventRecord) {}
}

pub fn run(data: &[u8]) {
    let Ok(mut engine) = Engine::restore(data) else { return };
    let first = engine.snapshot();
    let again = Engine::restore(&first).unwrap_or_else(|e| panic!("a restored engine's own snapshot is refused: {e}"));
    assert!(again.snapshot() == first, "snapshot -> restore -> snapshot changed the bytes");
    // The human form describes the same engine.
    let json = again.snapshot_json();
    let from_json = Engine::restore(&json).unwrap_or_else(|e| panic!("a restored engine's JSON snapshot is refused: {e}"));
    assert!(from_json.snapshot() == first, "the JSON and binary snapshots of one engine differ");
    if let Err(e) = engine.check_invariants() {
        // A snapshot the engine would never write may be refused, but not accepted and then trusted.
        panic!("restore accepted an inconsistent engine: {e}");
    }
    let _ = engine.status();
    let now = engine.now_ms();
    let mut io = Discard(1 << 62);
    engine.tick(now.saturating_add(1), Vec::new(), &mut io);
    let _ = engine.status();
}
