//! The two WIT generations the host serves side by side, with real components: the bundled
//! engine (`clb:difftracker@0.3.0`) and the same engine built for `clb:difftracker@0.2.0` (the
//! fixture `difftracker_simulation::ENGINE_V0_2_WASM`). Both make the same decisions with the
//! same call ids for the same inputs; they differ in who numbers the calls (the 0.3.0 engine,
//! from a counter in its snapshot; the host, for 0.2.0) and in what the host reads from them
//! (typed errors, metric kinds). A snapshot of either restores into the other.

use difftracker_engine::io::{CallId, KubeEvent, MetricKind};
use difftracker_runtime::driver::{CallIds, EngineDriver, WasmEngine};
use difftracker_runtime::wasm::{sandbox, WitGeneration};
use difftracker_tests::*;
use std::collections::BTreeSet;

const A: &str = "aaaa0000-0000-4000-8000-000000000001";
const B: &str = "aaaa0000-0000-4000-8000-000000000002";

/// A started engine of `component` at the harness's clock, initialized against an empty cloud.
fn harness_of(component: &difftracker_runtime::wasm::EngineComponent, ids: CallIds) -> Harness {
    let mut engine = created_instance(component, ids);
    engine.deliver(0, vec![KubeEvent::InitialListsComplete]).expect("deliver the marker");
    Harness::initialized(Harness::with_engine(engine))
}

/// One Service with an endpoint, run until idle.
fn converge_one_service(h: &mut Harness, uid: &str, ip: &str) {
    let svc = sample_service("default", &format!("svc-{}", &uid[..4]), uid);
    h.deliver(vec![KubeEvent::NodeApplied(sample_node("node-1", "10.0.0.4")), KubeEvent::ServiceApplied(svc.clone())]).unwrap();
    h.deliver(vec![KubeEvent::EndpointSliceApplied(sample_slice(&svc, &[(ip, "node-1")]))]).unwrap();
    h.run_until_idle(200).unwrap();
}

fn started(h: &Harness) -> Vec<(CallId, &'static str)> {
    h.started.iter().map(|s| (s.id, s.call.label())).collect()
}

#[test]
fn the_0_2_0_fixture_is_this_engine_built_for_wit_0_2_0() {
    assert_eq!(component().generation(), WitGeneration::V0_3, "the bundled engine is 0.3.0");
    let v0_2 = component_v0_2();
    assert_eq!(v0_2.generation(), WitGeneration::V0_2);
    sandbox::check_imports(v0_2.imports.iter().map(String::as_str)).unwrap();
    assert!(v0_2.imports.iter().any(|i| i == "clb:difftracker/cloud@0.2.0"), "{:?}", v0_2.imports);
    assert!(component().imports.iter().any(|i| i == "clb:difftracker/cloud@0.3.0"), "{:?}", component().imports);
    let bytes = std::fs::read(difftracker_simulation::engine_v0_2_wasm_path()).unwrap();
    assert_eq!(bytes, difftracker_simulation::ENGINE_V0_2_WASM, "the embedded fixture is the built file");
    let engine = WasmEngine::new(v0_2, CallIds::default()).unwrap();
    assert_eq!(engine.wit_package(), Some("clb:difftracker@0.2.0"));
    assert!(!engine.numbers_own_calls());
    let engine = WasmEngine::new(component(), CallIds::default()).unwrap();
    assert_eq!(engine.wit_package(), Some("clb:difftracker@0.3.0"));
    assert!(engine.numbers_own_calls());
}

#[test]
fn both_generations_make_the_same_calls_with_the_same_ids_and_report_the_same_metric_kinds() {
    let mut old = harness_of(component_v0_2(), CallIds::default());
    let mut new = harness_of(component(), CallIds::default());
    for h in [&mut old, &mut new] {
        converge_one_service(h, A, "10.244.1.7");
        // A failure of each kind the variant carries differently: an HTTP error with a status
        // and one without a response.
        h.script.fail(label::PUT_LB, 1, 500, "InternalServerError");
        h.script.then(
            label::PUT_PIP,
            difftracker_tests::Behavior::Fail(difftracker_engine::io::CallError::of_kind(
                difftracker_engine::io::ErrorKind::Timeout,
                "no answer",
            )),
        );
        converge_one_service(h, B, "10.244.1.8");
    }
    assert!(!started(&new).is_empty());
    assert_eq!(started(&old), started(&new), "same calls, same ids, whoever numbers them");
    assert_eq!(old.state_count("created"), 2);
    assert_eq!(new.state_count("created"), 2);

    // The 0.2.0 samples carry no kind; the host's conversion gives them the ones the 0.3.0
    // engine states, sample for sample.
    let kinds = |h: &mut Harness| -> BTreeSet<(String, String, bool)> {
        let status = h.status().unwrap();
        status.metrics.iter().map(|m| (m.name.clone(), format!("{:?}", m.labels), m.kind == MetricKind::Counter)).collect()
    };
    let (old_kinds, new_kinds) = (kinds(&mut old), kinds(&mut new));
    assert_eq!(old_kinds, new_kinds);
    assert!(new_kinds.iter().any(|(name, _, counter)| name.ends_with("service_operations_total") && *counter));
    assert!(new_kinds.iter().any(|(name, _, counter)| name.ends_with("tracked_services_total") && !*counter), "a gauge named _total");
}

#[test]
fn a_0_3_0_engine_numbers_its_calls_from_a_counter_its_snapshot_carries() {
    // The counter handed to a 0.3.0 instance only mirrors the engine's: the host allocates
    // nothing from it, so a high start changes no id.
    let mut h = harness_of(component(), CallIds::starting_at(1 << 40));
    converge_one_service(&mut h, A, "10.244.1.7");
    let ids: Vec<CallId> = h.started.iter().map(|s| s.id).collect();
    assert!(ids.iter().all(|id| *id < 1000), "engine-numbered ids: {ids:?}");
    let next = h.engine.call_ids().peek();
    assert_eq!(next, ids.iter().max().unwrap() + 1, "the mirror follows the engine");

    // Restored into a fresh instance whose counter says otherwise, the engine goes on from its
    // own counter.
    let snapshot = h.engine.snapshot().unwrap();
    let mut fresh = WasmEngine::new(component(), CallIds::starting_at(5)).unwrap();
    fresh.restore(&snapshot).unwrap();
    assert_eq!(fresh.call_ids().peek(), next, "read from the restored engine");
    h.engine = Box::new(fresh);
    h.started.clear();
    converge_one_service(&mut h, B, "10.244.1.8");
    assert_eq!(h.started.first().map(|s| s.id), Some(next), "numbering resumes where the snapshot left it");

    // A 0.2.0 instance is numbered by the host: a high counter shows in every id.
    let mut old = harness_of(component_v0_2(), CallIds::starting_at(1 << 40));
    converge_one_service(&mut old, A, "10.244.1.7");
    assert!(old.started.iter().all(|s| s.id >= 1 << 40), "host-numbered ids");
}

#[test]
fn a_snapshot_of_either_generation_restores_into_the_other() {
    let mut old = harness_of(component_v0_2(), CallIds::default());
    converge_one_service(&mut old, A, "10.244.1.7");
    let from_old = old.engine.snapshot().unwrap();
    let mut new = WasmEngine::new(component(), CallIds::default()).unwrap();
    new.restore(&from_old).unwrap();
    assert_eq!(new.call_ids().peek(), old.engine.call_ids().peek(), "the 0.3.0 engine numbers on from the 0.2.0 host's counter");
    assert_eq!(new.status().unwrap().states, old.engine.status().unwrap().states);
    assert_eq!(new.snapshot().unwrap(), from_old, "the bytes are the engine's own");

    let mut back = WasmEngine::new(component_v0_2(), CallIds::default()).unwrap();
    back.restore(&new.snapshot().unwrap()).unwrap();
    assert_eq!(back.operations().unwrap(), new.operations().unwrap());
}

#[test]
fn a_0_3_0_instance_reports_misuse_and_bad_snapshots_as_errors_without_trapping() {
    let mut engine = WasmEngine::new(component(), CallIds::default()).unwrap();
    let err = format!("{:#}", engine.tick(0, vec![]).unwrap_err());
    assert!(err.contains("call create or restore first"), "{err}");
    let err = format!("{:#}", engine.restore(b"not a snapshot").unwrap_err());
    assert!(err.contains("engine `restore` failed") && err.contains("not a snapshot"), "{err}");
    engine.create(&tenant_config()).unwrap();
    let err = format!("{:#}", engine.create(&tenant_config()).unwrap_err());
    assert!(err.contains("already exists"), "{err}");
    // A refused snapshot leaves the engine it had.
    assert!(engine.restore(b"{\"schema_version\": 99, \"engine\": {}}").unwrap_err().to_string().contains("newer"));
    assert!(!engine.is_poisoned());
    engine.deliver(0, vec![KubeEvent::InitialListsComplete]).unwrap();
    let tick = engine.tick(0, vec![]).unwrap();
    assert_eq!(tick.started.len(), 5, "the start-up lists: {:?}", tick.started);
}
