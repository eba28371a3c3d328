//! The bounded fuzz run of the test command: every target of `difftracker-fuzz` on its seed
//! corpus and on deterministic mutations of it. `DIFFTRACKER_FUZZ_RUNS` sets the mutations per
//! target (default below); an input that panics is saved under `target/fuzz-failures/` and
//! named in the failure, ready for `cargo fuzz run <target> <file>` or a regression seed in
//! `fuzz/corpus/<target>/`.

use difftracker_fuzz::mutate::{mutate, Rng};
use difftracker_fuzz::{Target, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const DEFAULT_RUNS: usize = 1500;
/// A history of the engine costs far more than a parse: fewer of them.
const DEFAULT_INTAKE_RUNS: usize = 200;
const MAX_INPUT: usize = 256 * 1024;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The checked-in seeds of a target, then the repository's own inputs of that kind.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let dir = root().join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    for f in files {
        out.push(std::fs::read(&f).unwrap_or_else(|e| panic!("seed {}: {e}", f.display())));
    }
    let read = |p: &str| std::fs::read(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    match target {
        "trace_reader" => {
            let sample = read("examples/sample-trace.jsonl");
            // The first lines of the bundled trace (small, every kind) and the kubectl recording.
            let head: Vec<u8> = sample.split_inclusive(|&b| b == b'\n').take(40).flatten().copied().collect();
            out.push(head);
            out.push(read("examples/kubectl-watch.json"));
        }
        "snapshot_decoder" => {
            let golden = read("engine-component/src/tests/fixtures/golden_snapshot.json");
            // The same engine in the binary form `snapshot` writes, so mutations reach its header
            // checks, the LZ4 block and the MessagePack state as well as the JSON reader.
            let engine = difftracker_engine::Engine::restore(&golden).unwrap_or_else(|e| panic!("golden snapshot: {e}"));
            out.push(engine.snapshot());
            out.push(golden);
            out.push(read("engine-component/src/tests/fixtures/golden_snapshot_v2.json"));
        }
        "engine_intake" => {
            let mut rng = Rng::new(7);
            for _ in 0..8 {
                out.push((0..512).map(|_| rng.next_u64() as u8).collect());
            }
        }
        _ => {}
    }
    assert!(!out.is_empty(), "target {target} has no seeds");
    out
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let dir = root().join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{hash:016x}"));
    let _ = std::fs::write(&path, input);
    path
}

fn run_target(name: &str, target: Target) {
    let runs = std::env::var("DIFFTRACKER_FUZZ_RUNS").ok().and_then(|v| v.parse().ok());
    let runs = runs.unwrap_or(if name == "engine_intake" { DEFAULT_INTAKE_RUNS } else { DEFAULT_RUNS });
    let seeds = seeds(name);
    let mut rng = Rng::new(0x5eed);
    let mut failures = Vec::new();
    let check = |input: &[u8], failures: &mut Vec<String>| {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(input))) {
            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            let path = save(name, input);
            failures.push(format!("{}: {}", path.display(), what.unwrap_or_default().chars().take(500).collect::<String>()));
        }
    };
    for seed in &seeds {
        check(seed, &mut failures);
    }
    for i in 0..runs {
        let input = &seeds[i % seeds.len()];
        let other = &seeds[rng.below(seeds.len())];
        let mutated = mutate(&mut rng, input, other, MAX_INPUT);
        check(&mutated, &mut failures);
        if failures.len() >= 5 {
            break;
        }
    }
    assert!(failures.is_empty(), "{name}: {} failing inputs:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn trace_reader() {
    run_target("trace_reader", TARGETS[0].1);
}

#[test]
fn arm_responses() {
    run_target("arm_responses", TARGETS[1].1);
}

#[test]
fn snapshot_decoder() {
    run_target("snapshot_decoder", TARGETS[2].1);
}

#[test]
fn engine_intake() {
    run_target("engine_intake", TARGETS[3].1);
}

#[test]
fn every_target_has_a_test_and_a_harness() {
    for (name, _) in TARGETS {
        let harness = root().join("fuzz/libfuzzer/fuzz_targets").join(format!("{name}.rs"));
        assert!(harness.exists(), "no cargo-fuzz harness {}", harness.display());
        assert!(root().join("fuzz/corpus").join(name).is_dir(), "no corpus directory for {name}");
    }
}
