//! Replay: runs the whole system from a Kubernetes watch trace, deterministically, in virtual
//! time.
//!
//! - [`trace`]: reads traces (`kubectl get --watch --output-watch-events -o json` output, several
//!   watches appended, or JSON Lines), with optional `at_ms`.
//! - [`cluster`]: the simulated Kubernetes cluster (finalizers, resourceVersion, UID guards,
//!   Service status patches, recorded Events, garbage collection of EndpointSlices).
//! - [`run`]: the discrete-event loop: engine (wasm or native, through
//!   [`EngineDriver`](crate::driver::EngineDriver)) + in-process emulator + cluster.
//! - [`report`]: the JSON report (stable key order, byte-identical across runs and engines).
//! - [`oracle`]: what the emulator must hold once the system has settled, from the final cluster.
//! - [`gen`]: the trace generator (`difftracker gen-trace`).
//! - [`cli`]: the `replay` and `gen-trace` subcommands.

pub mod cli;
pub mod cluster;
pub mod gen;
pub mod oracle;
pub mod report;
pub mod run;
pub mod trace;

/// The bundled sample trace, `examples/sample-trace.jsonl` (40 Services; written by
/// `difftracker gen-trace --services 40 --nodes 4 --churn medium --seed 1`).
pub const SAMPLE_TRACE: &str = include_str!("../../../examples/sample-trace.jsonl");
/// The bundled sample fault file, `examples/faults.json`.
pub const SAMPLE_FAULTS: &str = include_str!("../../../examples/faults.json");

/// The bundled sample trace, parsed.
pub fn sample_trace() -> Result<Trace, TraceError> {
    parse_trace(SAMPLE_TRACE.as_bytes())
}

/// The bundled sample fault plan, parsed.
pub fn sample_faults() -> Result<crate::emulator::FaultPlan, String> {
    crate::emulator::FaultPlan::parse(SAMPLE_FAULTS)
}

pub use cli::{run_gen_trace, run_replay, GenTraceArgs, ReplayArgs};
pub use run::{replay, replay_with, EngineKind, ReplayOptions, ReplayOutcome, DEFAULT_UNTIL_MS};
pub use trace::{parse_trace, read_trace, Trace, TraceError, TraceEvent};

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_samples_parse() {
        let t = super::sample_trace().unwrap();
        assert!(t.events.len() > 100);
        assert!(t.skipped.is_empty());
        let plan = super::sample_faults().unwrap();
        assert_eq!(plan.until_ms, Some(600_000));
    }
}
