//! A hostile engine: a component of the world the real engine had in WIT 0.2.0
//! (`difftracker-engine` of `wit/0.2.0/`, which the host still runs), built by
//! `host/simulation/build.rs` for the hostile-component tests (`tests/tests/hostile_components.rs`)
//! and the demo's `builtin:misbehaving` tenant. It shows
//! that the host contains a guest that does its worst: the sandbox's limits stop it, trap
//! recovery rebuilds or stops its tenant with the reason, and the tenants beside it go on.
//!
//! What it does is chosen by the `tenant` of the `tenant-config` it is created with:
//!
//! | tenant | misbehaviour |
//! |---|---|
//! | `loop-in-tick` | every `tick` spins forever (the CPU deadline interrupts it) |
//! | `loop-in-restore` | every `tick` panics (so the host rebuilds the instance), and `restore` spins forever |
//! | `alloc-unbounded` | every `tick` allocates and touches memory without end (the memory limit traps it) |
//! | `trap-every-<N>th-tick` (`trap-every-3rd-tick`, ...) | the Nth, 2Nth, ... `tick` of each instance panics; the count is not in the snapshot, so a fresh instance ticks again, as a flaky engine would |
//! | `trap-in-snapshot` | every `snapshot` panics |
//! | `flood-calls` | every `tick` calls `put-public-ip` without end (the per-tick call cap traps it) |
//! | `flood-events` | every `tick` records Events without end (the per-tick Event cap traps it) |
//! | `huge-strings` | every `tick` records an Event whose reason and message are 2 MiB each, then fails with a 4 MiB error |
//! | `probe-wasi` | quiet, but tries the WASI a guest may import: lists `/` and `.`, reads `/etc/passwd`, writes `/tmp/difftracker-probe-wasi`, counts the environment and arguments, reads the wall and monotonic clocks (spinning between two readings) and 16 random bytes of each generator; its `status` reports what it saw as the labels of one metric sample, `misbehaving_probe_wasi` |
//! | anything else | the default: the first `tick` of an instance is quiet, every later one spins forever (what the demo's tenant runs) |
//!
//! Otherwise it answers like a quiet engine: `create` succeeds (once), `deliver` ignores its
//! events, `tick` starts nothing and asks to be woken a second later (so a tenant on a real clock
//! keeps ticking without input), `status` is settled and initialized with no operations,
//! `operations` is empty, and `snapshot` is a few bytes (a header and the tenant name) that
//! `restore` reads back. Counters are per instance, never in the snapshot.
//!
//! Natively the crate is empty: everything is behind `cfg(target_arch = "wasm32")`.

#[cfg(target_arch = "wasm32")]
mod guest;
