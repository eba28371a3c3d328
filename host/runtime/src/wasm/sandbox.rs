//! The sandbox of one tenant's engine instance.
//!
//! - **Memory**: a [`StoreLimits`] caps the instance's linear memory (and its count of instances,
//!   tables and memories); a `memory.grow` past the cap traps.
//! - **CPU**: epoch interruption. One background thread per process bumps the engine's epoch every
//!   [`EPOCH_TICK`]; before every call into the guest the store gets a deadline of
//!   `cpu_deadline / EPOCH_TICK` epochs, so a guest that loops traps instead of hanging the host.
//! - **WASI with nothing**: no preopened directory, no environment, no arguments, no stdin, no
//!   network (the default socket check denies everything), and fixed clocks and random bytes, so
//!   that even an accidental use (std's `HashMap` seeding itself, `SystemTime::now`) is
//!   deterministic. The guest's stderr goes to a small in-memory pipe whose contents (a panic
//!   message) are attached to the error when the guest traps.
//! - **Host-side output**: what the guest starts through its imports is held by the host, outside
//!   the memory cap, so one export call may start at most [`SandboxLimits::max_calls_per_tick`]
//!   calls and record [`SandboxLimits::max_events_per_tick`] Events, of at most
//!   [`SandboxLimits::max_output_bytes_per_tick`] bytes together; the import that crosses a limit
//!   traps the guest (see [`crate::calls::QueueLimits`]).
//! - **Imports**: [`check_imports`] refuses, before anything is compiled into an instance, a
//!   component that imports anything beyond the project's own interfaces (`clb:difftracker/*`)
//!   and the harmless parts of WASI (cli, io, clocks, random, filesystem without preopens).

use crate::calls::QueueLimits;
use std::time::Duration;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// How often the epoch ticker thread bumps the engine's epoch.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Import namespaces a component may use. Everything else is refused at load time.
pub const ALLOWED_IMPORT_PREFIXES: &[&str] =
    &["clb:difftracker/", "wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/"];

/// Bytes of guest stderr kept for error reports.
const STDERR_CAPACITY: usize = 16 * 1024;

/// Per-tenant resource limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// CPU time one call into the guest may take before it is interrupted.
    pub cpu_deadline: Duration,
    /// Calls one guest call (a tick) may start (100,000).
    pub max_calls_per_tick: usize,
    /// Kubernetes Events one guest call may record (10,000).
    pub max_events_per_tick: usize,
    /// Bytes (as JSON) of the calls and Events one guest call may queue (256 MiB).
    pub max_output_bytes_per_tick: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        let queue = QueueLimits::default();
        SandboxLimits {
            // A 10,000-Service engine reaches about 300 MB while it starts up and checkpoints
            // (BENCHMARKS.md, hot swap): the default holds the largest cluster we measure.
            memory_bytes: 512 << 20,
            cpu_deadline: Duration::from_secs(2),
            max_calls_per_tick: queue.max_calls,
            max_events_per_tick: queue.max_events,
            max_output_bytes_per_tick: queue.max_bytes,
        }
    }
}

impl SandboxLimits {
    /// The limits of the queue the guest's imports fill.
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits { max_calls: self.max_calls_per_tick, max_events: self.max_events_per_tick, max_bytes: self.max_output_bytes_per_tick }
    }

    pub fn store_limits(&self) -> StoreLimits {
        StoreLimitsBuilder::new().memory_size(self.memory_bytes).instances(64).tables(64).memories(16).trap_on_grow_failure(true).build()
    }

    /// The deadline of one guest call, in epoch ticks (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        (self.cpu_deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "component refused: it imports {}; a difftracker engine may import only clb:difftracker/* and \
     wasi:cli, wasi:io, wasi:clocks, wasi:random, wasi:filesystem",
    .forbidden.join(", ")
)]
pub struct ForbiddenImports {
    pub forbidden: Vec<String>,
}

pub fn import_allowed(name: &str) -> bool {
    ALLOWED_IMPORT_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Checks a component's import names (`wasi:sockets/tcp@0.2.6`, ...) against the allow-list.
pub fn check_imports<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), ForbiddenImports> {
    let forbidden: Vec<String> = names.into_iter().filter(|n| !import_allowed(n)).map(str::to_string).collect();
    if forbidden.is_empty() {
        Ok(())
    } else {
        Err(ForbiddenImports { forbidden })
    }
}

/// A wall clock stuck at 2024-01-01T00:00:00Z.
struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(1_704_067_200)
    }
}

/// A monotonic clock that never advances.
struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The WASI context of one instance (see the module docs) and a handle on its stderr.
pub fn wasi_ctx() -> (WasiCtx, MemoryOutputPipe) {
    let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
    let ctx = WasiCtxBuilder::new()
        .stderr(stderr.clone())
        .wall_clock(FixedWallClock)
        .monotonic_clock(FixedMonotonicClock)
        .secure_random(Deterministic::new(vec![0x5a, 0x17, 0xc3, 0x88]))
        .insecure_random(Deterministic::new(vec![0x3c, 0x91, 0x04, 0xe7]))
        .insecure_random_seed(0x0123_4567_89ab_cdef)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    (ctx, stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_refuses_sockets_and_http() {
        assert!(check_imports(["clb:difftracker/cloud@0.1.0", "wasi:cli/environment@0.2.6", "wasi:io/streams@0.2.6"]).is_ok());
        let err = check_imports(["wasi:sockets/tcp@0.2.6", "wasi:io/poll@0.2.6", "wasi:http/outgoing-handler@0.2.6"]).unwrap_err();
        assert_eq!(err.forbidden, vec!["wasi:sockets/tcp@0.2.6", "wasi:http/outgoing-handler@0.2.6"]);
        assert!(err.to_string().contains("wasi:sockets/tcp@0.2.6"));
    }

    #[test]
    fn deadline_is_at_least_one_tick() {
        let limits = SandboxLimits { memory_bytes: 1 << 20, cpu_deadline: Duration::from_millis(1), ..SandboxLimits::default() };
        assert_eq!(limits.deadline_ticks(), 1);
        assert_eq!(SandboxLimits::default().deadline_ticks(), 200);
    }
}
