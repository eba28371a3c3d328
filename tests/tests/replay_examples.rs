//! The bundled examples replay to the oracle, and the oracle catches an engine that misbehaves.

use anyhow::Result;
use difftracker_engine::io::{Call, CallOutput, CloudCall, Completion, KubeCall};
use difftracker_runtime::driver::EngineKind;
use difftracker_runtime::driver::{CallIds, EngineDriver, Intercept, Intercepted, NativeEngine, TickResult};
use difftracker_simulation::emulator::FaultPlan;
use difftracker_simulation::replay::oracle::check_report;
use difftracker_simulation::replay::report::to_bytes;
use difftracker_simulation::replay::trace::TraceOrder;
use difftracker_simulation::replay::{read_trace, replay, replay_with, ReplayOptions};
use std::path::PathBuf;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("examples").join(name)
}

fn sample_faults() -> FaultPlan {
    FaultPlan::load(&example("faults.json")).unwrap()
}

#[test]
fn the_sample_trace_replays_to_the_oracle_with_and_without_faults() {
    let trace = read_trace(&example("sample-trace.jsonl")).unwrap();
    assert!(trace.events.len() > 100 && trace.skipped.is_empty());
    for faults in [None, Some(sample_faults())] {
        let options = ReplayOptions { engine: EngineKind::Native, faults: faults.clone(), ..ReplayOptions::default() };
        let report = replay(&trace, &options).unwrap().report;
        if let Err(p) = check_report(&report) {
            panic!("faults {}: {p:#?}", faults.is_some());
        }
        let services = report["inventory"]["load_balancers"].as_array().unwrap().len();
        assert!(services >= 20, "{services} load balancers");
    }
}

#[test]
fn the_sample_trace_gives_the_same_report_in_wasm_and_native() {
    let trace = read_trace(&example("sample-trace.jsonl")).unwrap();
    let run = |engine| {
        let options = ReplayOptions { engine, faults: Some(sample_faults()), seed: 5, ..ReplayOptions::default() };
        to_bytes(&replay(&trace, &options).unwrap().report)
    };
    assert!(run(EngineKind::Wasm) == run(EngineKind::Native), "wasm and native reports differ");
}

/// A recording as kubectl prints it (three watches appended, pretty-printed, no `at_ms`, the
/// real controller's finalizer and status writes included) is put back in resourceVersion order
/// and replays to the oracle.
#[test]
fn a_kubectl_recording_replays_to_the_oracle() {
    let trace = read_trace(&example("kubectl-watch.json")).unwrap();
    assert_eq!(trace.order, TraceOrder::ResourceVersion);
    assert_eq!(trace.events.first().map(|e| e.object.kind()), Some("Node"));
    let report = replay(&trace, &ReplayOptions { engine: EngineKind::Native, ..ReplayOptions::default() }).unwrap().report;
    check_report(&report).unwrap();
    assert_eq!(report["kubernetes"]["events"]["UnsupportedInternalLoadBalancer"], 1);
    assert_eq!(report["inventory"]["load_balancers"].as_array().unwrap().len(), 2);
    let ingress = report["kubernetes"]["service_ingress"].as_object().unwrap();
    assert_eq!(ingress.keys().cloned().collect::<Vec<_>>(), vec!["shop/web".to_string(), "shop/web6".to_string()]);
    // The recorded status (20.31.1.7) is the real cloud's, not the replay's.
    assert_ne!(ingress["shop/web"][0], "20.31.1.7");
}

#[test]
fn a_malformed_trace_names_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("difftracker-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.jsonl");
    std::fs::write(&path, "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Node\",\"metadata\":{\"name\":\"n\"}}}\n{\"type\":\"ADDED\",\"object\":{\"kind\":\"Node\" \"metadata\":{}}}\n").unwrap();
    let e = read_trace(&path).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 2 column"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Wraps the native engine and tampers with what it asks for, to show the oracle can fail.
struct Saboteur {
    mode: Sabotage,
    fake: Vec<Completion>,
}

#[derive(Clone, Copy, PartialEq)]
enum Sabotage {
    /// Status patches carry a wrong address.
    WrongIngress,
    /// Address-location updates "succeed" without reaching the emulator.
    LostLocationUpdates,
    /// Finalizer removals "succeed" without reaching the cluster.
    LostFinalizerRemovals,
}

impl Intercept for Saboteur {
    fn kind(&self, _: &dyn EngineDriver) -> &'static str {
        "saboteur"
    }
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, mut completions: Vec<Completion>) -> Result<TickResult> {
        completions.append(&mut self.fake);
        let mut r = inner.tick(now_ms, completions)?;
        let mode = self.mode;
        let mut kept = Vec::new();
        for (id, call) in r.started.drain(..) {
            match (mode, call) {
                (Sabotage::WrongIngress, Call::Kube(KubeCall::PatchServiceIngress(target, mut ingress))) => {
                    for i in ingress.iter_mut() {
                        i.ip = "203.0.113.9".into();
                    }
                    kept.push((id, Call::Kube(KubeCall::PatchServiceIngress(target, ingress))));
                }
                (Sabotage::LostLocationUpdates, Call::Cloud(CloudCall::UpdateAddressLocations(_)))
                | (Sabotage::LostFinalizerRemovals, Call::Kube(KubeCall::RemoveServiceFinalizers(_))) => {
                    self.fake.push(Completion { id, outcome: Ok(CallOutput::Done) });
                }
                (_, call) => kept.push((id, call)),
            }
        }
        r.started = kept;
        if !self.fake.is_empty() {
            r.outcome.next_wake_ms = Some(now_ms + 1);
        }
        Ok(r)
    }
}

#[test]
fn the_oracle_catches_a_misbehaving_engine() {
    let trace = read_trace(&example("sample-trace.jsonl")).unwrap();
    for (mode, symptom) in [
        (Sabotage::WrongIngress, "carries ingress [\"203.0.113.9\"]"),
        (Sabotage::LostLocationUpdates, "missing address"),
        (Sabotage::LostFinalizerRemovals, "is stuck deleting"),
    ] {
        let driver = Box::new(Intercepted::new(Box::new(NativeEngine::new(CallIds::default())), Saboteur { mode, fake: Vec::new() }));
        let options = ReplayOptions { engine: EngineKind::Native, ..ReplayOptions::default() };
        let report = replay_with(&trace, &options, driver).unwrap().report;
        let problems = check_report(&report).expect_err("the oracle must object");
        assert!(problems.iter().any(|p| p.contains(symptom)), "{symptom}: {problems:#?}");
    }
}

/// Fails every tick after the first `ok` ones, as a trapping guest would.
struct FailsAfter {
    ok: u32,
}

impl Intercept for FailsAfter {
    fn tick(&mut self, inner: &mut dyn EngineDriver, now_ms: u64, completions: Vec<Completion>) -> Result<TickResult> {
        if self.ok == 0 {
            anyhow::bail!("guest trapped: wasm trap: out of bounds memory access\nwasm backtrace:\n  0: 0x1234 - <unknown>");
        }
        self.ok -= 1;
        inner.tick(now_ms, completions)
    }
}

/// An engine that fails mid-run still gets a report: not converged, the failure on one line, and
/// the oracle's check names it.
#[test]
fn a_failing_engine_still_gets_a_report_that_says_so() {
    let trace = read_trace(&example("sample-trace.jsonl")).unwrap();
    let driver = Box::new(Intercepted::new(Box::new(NativeEngine::new(CallIds::default())), FailsAfter { ok: 5 }));
    let report = replay_with(&trace, &ReplayOptions { engine: EngineKind::Native, ..ReplayOptions::default() }, driver).unwrap().report;
    assert_eq!(report["converged"], false);
    let failure = report["engine_failure"].as_str().expect("the failure is in the report");
    assert!(failure.contains("engine tick at") && failure.contains("out of bounds"), "{failure}");
    assert!(!failure.contains('\n'), "one line: {failure}");
    let problems = check_report(&report).unwrap_err();
    assert!(problems.iter().any(|p| p.contains("out of bounds")), "{problems:?}");
}
