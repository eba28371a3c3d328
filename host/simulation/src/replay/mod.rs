//! Replay: runs the whole system from a Kubernetes watch trace, deterministically, in virtual
//! time.
//!
//! - [`trace`]: reads traces (`kubectl get --watch --output-watch-events -o json` output, several
//!   watches appended, or JSON Lines), with optional `at_ms`.
//! - [`cluster`]: the simulated Kubernetes cluster (finalizers, resourceVersion, UID guards,
//!   Service status patches, recorded Events, garbage collection of EndpointSlices).
//! - [`run`]: the discrete-event loop: engine (wasm or native, through
//!   [`EngineDriver`](difftracker_runtime::driver::EngineDriver)) + in-process emulator + cluster.
//! - [`report`]: the JSON report (stable key order, byte-identical across runs and engines).
//! - [`oracle`]: what the emulator must hold once the system has settled, from the final cluster.
//! - [`gen`]: the trace generator (`difftracker gen-trace`).
//! - [`timeline`]: what a replay records for people (calls per identity; with `--html`, the
//!   timeline); [`html`]: the self-contained HTML page that draws it.

pub mod cluster;
pub mod gen;
pub mod html;
pub mod oracle;
pub mod report;
pub mod run;
pub mod timeline;
pub mod trace;

pub use run::{replay, replay_with, CrashPlan, Duplicates, Progress, ReplayOptions, ReplayOutcome, StartRecord, DEFAULT_UNTIL_MS};
pub use trace::{parse_trace, read_trace, Trace, TraceError, TraceEvent};
