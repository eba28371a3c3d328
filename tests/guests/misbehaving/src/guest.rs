//! The component: the exports of the engine world, misbehaving as the crate docs say.

use std::cell::RefCell;
use std::hint::black_box;

wit_bindgen::generate!({
    world: "difftracker-engine",
    path: "../../../wit/0.2.0",
});

/// The random interfaces of WASI 0.2 (the version the standard library imports), for the probe.
mod wasi_random {
    wit_bindgen::generate!({
        inline: r#"
            package wasi:random@0.2.6;

            interface random {
                get-random-bytes: func(len: u64) -> list<u8>;
                get-random-u64: func() -> u64;
            }

            interface insecure {
                get-insecure-random-bytes: func(len: u64) -> list<u8>;
                get-insecure-random-u64: func() -> u64;
            }

            world probe {
                import random;
                import insecure;
            }
        "#,
        world: "probe",
    });
}

use clb::difftracker::{cloud, kube, types as w};
use exports::clb::difftracker::engine::{self as wx, Guest};

struct Component;

export!(Component);

/// What the snapshot starts with; the tenant name follows.
const SNAPSHOT_HEADER: &[u8] = b"difftracker-misbehaving-engine/1\n";

/// What the instance does, from its tenant name (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    LoopInTick,
    LoopInRestore,
    AllocUnbounded,
    TrapEveryNthTick(u64),
    TrapInSnapshot,
    FloodCalls,
    FloodEvents,
    HugeStrings,
    ProbeWasi,
    /// A quiet first tick, then a busy loop in every tick.
    LoopAfterFirstTick,
}

impl Mode {
    fn of(tenant: &str) -> Mode {
        match tenant {
            "loop-in-tick" => Mode::LoopInTick,
            "loop-in-restore" => Mode::LoopInRestore,
            "alloc-unbounded" => Mode::AllocUnbounded,
            "trap-in-snapshot" => Mode::TrapInSnapshot,
            "flood-calls" => Mode::FloodCalls,
            "flood-events" => Mode::FloodEvents,
            "huge-strings" => Mode::HugeStrings,
            "probe-wasi" => Mode::ProbeWasi,
            other => every_nth_tick(other).map(Mode::TrapEveryNthTick).unwrap_or(Mode::LoopAfterFirstTick),
        }
    }
}

/// N of `trap-every-<N>th-tick` (any ordinal suffix, or none).
fn every_nth_tick(tenant: &str) -> Option<u64> {
    let ordinal = tenant.strip_prefix("trap-every-")?.strip_suffix("-tick")?;
    let digits = ordinal.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    digits.parse().ok().filter(|n| *n > 0)
}

struct Instance {
    tenant: String,
    mode: Mode,
    /// Ticks of this instance (replayed ones included); never in the snapshot.
    ticks: u64,
    /// What `probe-wasi` saw, read once per instance.
    probe: Option<Vec<(String, String)>>,
}

thread_local! {
    static INSTANCE: RefCell<Option<Instance>> = const { RefCell::new(None) };
}

fn with_instance<R>(f: impl FnOnce(&mut Instance) -> R) -> Result<R, String> {
    INSTANCE.with(|cell| match cell.borrow_mut().as_mut() {
        Some(instance) => Ok(f(instance)),
        None => Err("no engine in this instance: call create or restore first".to_string()),
    })
}

fn start(tenant: String) {
    let mode = Mode::of(&tenant);
    INSTANCE.with(|cell| *cell.borrow_mut() = Some(Instance { tenant, mode, ticks: 0, probe: None }));
}

/// Burns CPU until the sandbox's deadline interrupts the guest.
fn spin_forever() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

impl Guest for Component {
    fn create(config: wx::TenantConfig) -> Result<(), String> {
        if INSTANCE.with(|cell| cell.borrow().is_some()) {
            return Err("an engine already exists in this instance".to_string());
        }
        start(config.tenant);
        Ok(())
    }

    fn deliver(_now_ms: u64, _events: Vec<w::KubeEvent>) -> Result<(), String> {
        with_instance(|_| ())
    }

    fn tick(now_ms: u64, _completions: Vec<w::Completion>) -> Result<wx::TickOutcome, String> {
        let (mode, ticks) = with_instance(|i| {
            i.ticks += 1;
            (i.mode, i.ticks)
        })?;
        match mode {
            Mode::LoopInTick => spin_forever(),
            Mode::LoopAfterFirstTick if ticks > 1 => spin_forever(),
            Mode::LoopInRestore => panic!("loop-in-restore: tick {ticks} panics so that the host restores a fresh instance"),
            Mode::TrapEveryNthTick(n) if ticks % n == 0 => panic!("trap-every-nth-tick: tick {ticks} of this instance panics (every {n})"),
            Mode::AllocUnbounded => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![0x5a; 1 << 20]));
                }
            }
            Mode::FloodCalls => loop {
                black_box(cloud::put_public_ip("flood", w::IpVersion::Ipv4));
            },
            Mode::FloodEvents => {
                let target = w::ObjectRef { namespace: "default".into(), name: "flood".into(), uid: "flood".into() };
                loop {
                    kube::record_event(&target, w::ObjectKind::Service, w::EventType::Normal, "Flood", "flood");
                }
            }
            Mode::HugeStrings => {
                let target = w::ObjectRef { namespace: "default".into(), name: "huge".into(), uid: "huge".into() };
                let text = "h".repeat(2 << 20);
                kube::record_event(&target, w::ObjectKind::Service, w::EventType::Warning, &text, &text);
                return Err("e".repeat(4 << 20));
            }
            _ => {}
        }
        Ok(wx::TickOutcome { next_wake_ms: Some(now_ms.saturating_add(1_000)), calls_in_flight: 0 })
    }

    fn snapshot() -> Result<Vec<u8>, String> {
        let (mode, tenant) = with_instance(|i| (i.mode, i.tenant.clone()))?;
        if mode == Mode::TrapInSnapshot {
            panic!("trap-in-snapshot: snapshot panics");
        }
        Ok([SNAPSHOT_HEADER, tenant.as_bytes()].concat())
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        let tenant = snapshot
            .strip_prefix(SNAPSHOT_HEADER)
            .and_then(|t| String::from_utf8(t.to_vec()).ok())
            .ok_or_else(|| "not a snapshot of the misbehaving engine".to_string())?;
        if Mode::of(&tenant) == Mode::LoopInRestore {
            spin_forever();
        }
        start(tenant);
        Ok(())
    }

    fn status() -> Result<w::EngineStatus, String> {
        let probe = with_instance(|i| match i.mode {
            Mode::ProbeWasi => Some(i.probe.get_or_insert_with(probe_wasi).clone()),
            _ => None,
        })?;
        Ok(w::EngineStatus {
            states: Vec::new(),
            operations_in_flight: 0,
            calls_in_flight: 0,
            pending_deletions: 0,
            pending_pod_deletions: 0,
            buffered_endpoint_deltas: 0,
            location_sync_in_flight: false,
            settled: true,
            initialization: w::Initialization { phase: w::InitPhase::Ready, initial_lists_complete: true, failed_attempts: 0, error: None },
            metrics: probe
                .map(|labels| vec![w::MetricSample { name: "misbehaving_probe_wasi".into(), labels, value: 1.0 }])
                .unwrap_or_default(),
        })
    }

    fn operations() -> Result<Vec<w::OperationStatus>, String> {
        with_instance(|_| Vec::new())
    }
}

/// Tries every WASI door a guest of the allow-list could open; each label says what it found.
fn probe_wasi() -> Vec<(String, String)> {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    let outcome = |r: std::io::Result<String>| match r {
        Ok(found) => format!("ok: {found}"),
        Err(e) => format!("error: {e}"),
    };
    let list = |dir: &str| outcome(std::fs::read_dir(dir).map(|entries| format!("{} entries", entries.count())));
    let wall = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs().to_string(),
        Err(e) => format!("before the epoch: {e}"),
    };
    let began = Instant::now();
    let mut n = 0u64;
    for _ in 0..1_000_000 {
        n = black_box(n.wrapping_add(1));
    }
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    [
        ("read_dir_root", list("/")),
        ("read_dir_cwd", list(".")),
        ("read_etc_passwd", outcome(std::fs::read("/etc/passwd").map(|b| format!("{} bytes", b.len())))),
        ("write_tmp", outcome(std::fs::write("/tmp/difftracker-probe-wasi", b"escaped").map(|()| "written".into()))),
        ("env_vars", std::env::vars_os().count().to_string()),
        ("args", std::env::args_os().count().to_string()),
        ("wall_clock_s", wall),
        ("monotonic_elapsed_ns", began.elapsed().as_nanos().to_string()),
        ("random", hex(wasi_random::wasi::random::random::get_random_bytes(16))),
        ("insecure_random", hex(wasi_random::wasi::random::insecure::get_insecure_random_bytes(16))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
