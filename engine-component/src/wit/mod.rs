//! The thin wit-bindgen layer: exports [`crate::Engine`] as the `engine` interface of the world
//! `clb:difftracker/difftracker-engine` and starts its calls through the `cloud` and `kube`
//! imports. One generation of the contract per build:
//!
//! - `v0_3` (the default): `clb:difftracker@0.3.0` (`wit/0.3.0/`), the engine as a resource,
//!   typed errors, metric kinds, call ids allocated by the engine ([`crate::io::NumberedIo`]).
//! - `v0_2` (cargo feature `wit-0-2`): `clb:difftracker@0.2.0` (`wit/0.2.0/`), free functions
//!   over one engine per instance, call ids allocated by the host ([`crate::io::Io`]). Built by
//!   the host's build scripts as a test fixture, so that a host keeps running (and swapping
//!   from) 0.2.0 components.
//!
//! Both run the same engine and write the same snapshots. `domain` holds the conversions of the
//! records both generations share. Nothing here may panic across the boundary (a panic aborts,
//! i.e. traps the instance): misuse and bad snapshots are errors.

#[macro_use]
mod domain;

#[cfg(feature = "wit-0-2")]
mod v0_2;
#[cfg(feature = "wit-0-2")]
use v0_2::{kube, w, wx};

#[cfg(not(feature = "wit-0-2"))]
mod v0_3;
#[cfg(not(feature = "wit-0-2"))]
use v0_3::{kube, w, wx};
