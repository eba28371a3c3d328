//! Fuzz targets of difftracker: every parser that takes bytes from a peer, and the engine's
//! event intake, each a function of `&[u8]` that panics only when it finds a defect.
//!
//! Two drivers share these bodies:
//! - `tests/bounded_run.rs`, part of `cargo test --workspace`: each target runs its seed corpus
//!   (`corpus/<target>/` and the repository's own examples) and a fixed number of deterministic
//!   mutations of it ([`mutate`]), so a regression fails the test command on every machine;
//! - `libfuzzer/`, a cargo-fuzz project outside the workspace, for long coverage-guided runs
//!   (docs/TESTING.md gives the command).
//!
//! A target checks more than "no panic" where the input allows it: a parsed trace is ordered in
//! time, a restored snapshot encodes back to itself, the engine's consistency check holds after
//! every tick of a fuzzed history.

pub mod arm;
pub mod intake;
pub mod mutate;
pub mod snapshot;
pub mod trace;

/// A fuzz target: panics on a defect, returns on anything else.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `corpus/` and of `libfuzzer/fuzz_targets/`).
pub const TARGETS: [(&str, Target); 4] =
    [("trace_reader", trace::run), ("arm_responses", arm::run), ("snapshot_decoder", snapshot::run), ("engine_intake", intake::run)];
