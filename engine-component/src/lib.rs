//! The difftracker engine: the ServiceGateway diff tracker of cloud-provider-azure, re-built as a
//! deterministic state machine with no I/O (see `../shared/spec/ENGINE.md`).
//!
//! Where each piece fits:
//! - [`io`]: the edge. Kubernetes events and call completions come in; calls go out through the
//!   [`io::Io`] port. Mirrors the WIT package one to one.
//! - [`engine`]: the public surface, [`Engine`], driven by `deliver` and `tick`.
//! - `wit` (wasm32 only): the thin wit-bindgen layer that exports the engine as a component.

pub mod engine;
pub mod io;

#[cfg(target_arch = "wasm32")]
mod wit;

pub use engine::{Engine, SnapshotError};
