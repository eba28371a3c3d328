//! The difftracker engine: the ServiceGateway diff tracker of cloud-provider-azure, re-built as a
//! deterministic state machine with no I/O (see `docs/ENGINE.md`; section numbers in comments
//! refer to it).
//!
//! One state struct, [`Engine`], with its concerns in modules that each own their part of it:
//! - `engine`: [`Engine`] itself, driven by `deliver` and `tick`, and the helpers every mutation
//!   goes through; `transitions`: the service rows of the transition table (4.2), with the
//!   endpoint buffers and pending service deletions they own.
//! - [`io`]: the edge. Kubernetes events and call completions come in; calls go out through the
//!   [`io::Io`] port. Mirrors the WIT package one to one.
//! - `events`: Kubernetes events -> entry points; `admission`: Service -> config; `endpoints`:
//!   the slice cache and node IPs.
//! - `idset`: small sets as sorted vectors (the identities of one address, the locations of one
//!   pod address), not B-tree nodes.
//! - `state`, `config`: operation records and desired configs; `desired`, `nrp`: the two
//!   address models; `readiness`, `diff`: what may be published and what differs.
//! - `dispatcher`, `workers`: the ServiceUpdater and its inbound step machines; `locations`: the
//!   LocationsUpdater; `registrar`: the workers' `updateServices` requests, batched;
//!   `backoff`: retry timing and the jitter generator.
//! - `timers`: the one table of every deadline; its earliest is the next wake-up.
//! - `egress`: the egress half (pod buffers, pod deletion records, pod finalizer calls, the pod
//!   informer, the outbound step machines).
//! - `startup`: the start-up pass of ENGINE.md 9 (the five lists, the initial cluster, the
//!   service-level diff, finalizer recovery, orphans, backfill, sweep) and the init gate.
//! - [`metrics`], `snapshot`: observability and persistence; [`names`]: the Kubernetes names
//!   (label, finalizers, annotations, event reasons) hosts share with the engine.
//! - `testkit` (tests only): a recording `Io`, object builders and a tick-by-tick harness.
//! - `memcmp`: a word-at-a-time `memcmp` the wasm build links instead of libc's byte loop.
//! - `wit` (wasm32 only): the thin wit-bindgen layer that exports the engine as a component, of
//!   WIT 0.3.0 by default or 0.2.0 with the feature `wit-0-2`.
//!
//! The public surface is [`Engine`], [`SnapshotError`], [`Identity`], [`ResourceState`] and the
//! modules [`io`], [`metrics`] and [`names`].

mod admission;
mod backoff;
mod config;
mod desired;
mod diff;
mod dispatcher;
mod egress;
mod endpoints;
mod engine;
mod events;
mod identity;
mod idset;
mod inspect;
pub mod io;
mod locations;
#[cfg(any(target_arch = "wasm32", test))]
mod memcmp;
pub mod metrics;
pub mod names;
mod nrp;
mod readiness;
mod registrar;
pub mod snapshot;
mod startup;
mod state;
#[cfg(test)]
mod testkit;
mod timers;
mod transitions;
mod workers;

#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
mod wit;

pub use engine::{Engine, SnapshotError};
pub use identity::Identity;
pub use state::ResourceState;
