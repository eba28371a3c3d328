//! The difftracker engine: the ServiceGateway diff tracker of cloud-provider-azure, re-built as a
//! deterministic state machine with no I/O (see `../shared/spec/ENGINE.md`).
//!
//! Where each piece fits:
//! - [`io`]: the edge. Kubernetes events and call completions come in; calls go out through the
//!   [`io::Io`] port. Mirrors the WIT package one to one.
//! - [`engine`]: the public surface, [`Engine`], driven by `deliver` and `tick`, and the entry
//!   points of the state machine (ENGINE.md 4.2).
//! - [`events`]: Kubernetes events -> entry points; [`admission`]: Service -> config;
//!   [`endpoints`]: slice cache and node IPs.
//! - [`state`], [`config`]: operation records and desired configs; [`desired`], [`nrp`]: the two
//!   address models; [`readiness`], [`diff`]: what may be published and what differs.
//! - [`pods`]: egress pod events -> pod entry points and the pod finalizer calls; [`egress`]: the
//!   egress entry points (AddPod, DeletePod, pending pod deletions).
//! - [`dispatcher`], [`workers`]: the ServiceUpdater and its per-service step machines (the
//!   outbound ones in `egress_workers`);
//!   [`locations`]: the LocationsUpdater; [`backoff`]: retry timing and the jitter generator.
//! - [`metrics`], [`snapshot`]: observability and persistence; [`testkit`]: a recording `Io`
//!   and object builders for tests.
//! - `wit` (wasm32 only): the thin wit-bindgen layer that exports the engine as a component.

pub mod admission;
pub mod backoff;
pub mod config;
pub mod desired;
pub mod diff;
pub mod dispatcher;
pub mod egress;
pub mod endpoints;
pub mod engine;
pub mod events;
pub mod identity;
pub mod io;
pub mod locations;
pub mod metrics;
pub mod names;
pub mod nrp;
pub mod readiness;
pub mod snapshot;
pub mod startup;
pub mod state;
pub mod testkit;
mod timers;
pub mod workers;

#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
mod wit;

pub use engine::{Engine, SnapshotError};
pub use identity::Identity;
