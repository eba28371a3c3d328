//! The replay oracle: generated traces of several sizes and seeds, with and without faults,
//! replayed in virtual time; once settled, the emulator holds exactly what the final cluster
//! implies. Reports are byte-identical across runs and across the wasm and native engines.

use difftracker_runtime::driver::EngineKind;
use difftracker_simulation::emulator::FaultPlan;
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions};
use difftracker_simulation::replay::oracle;
use difftracker_simulation::replay::report::to_bytes;
use difftracker_simulation::replay::{parse_trace, replay, ReplayOptions, Trace};

fn trace(services: usize, nodes: usize, churn: Churn, seed: u64) -> Trace {
    trace_of(&GenOptions { services, nodes, churn, seed, ..GenOptions::default() })
}

fn trace_of(options: &GenOptions) -> Trace {
    let mut buf = Vec::new();
    write_trace(options, &mut buf).unwrap();
    parse_trace(&buf).unwrap()
}

fn faults(seed: u64) -> FaultPlan {
    FaultPlan::parse(&format!(
        r#"{{"seed": {seed}, "until_ms": 600000, "rules": [
            {{"call": "PUT loadBalancers", "rate": 0.3, "status": 500, "code": "InternalServerError"}},
            {{"call": "POST updateAddressLocations", "rate": 0.2, "status": 429, "retry_after_s": 2}},
            {{"call": "POST updateServices", "rate": 0.1, "status": 503}},
            {{"call": "*", "latency_ms": [50, 400]}},
            {{"call": "DELETE publicIPAddresses", "rate": 0.1, "lro_fail": true}}
        ]}}"#
    ))
    .unwrap()
}

fn run(trace: &Trace, engine: EngineKind, seed: u64, faults: Option<FaultPlan>) -> serde_json::Value {
    let options = ReplayOptions { seed, engine, faults, ..ReplayOptions::default() };
    replay(trace, &options).unwrap().report
}

fn assert_oracle(report: &serde_json::Value, what: &str) {
    if let Err(problems) = oracle::check_report(report) {
        panic!(
            "{what}: {} problems:\n{}\nreport: {}",
            problems.len(),
            problems.join("\n"),
            serde_json::to_string_pretty(&report["kubernetes"]).unwrap()
        );
    }
}

/// Generated traces of several sizes, seeds and churn levels settle to the oracle.
#[test]
fn generated_traces_settle_to_the_oracle() {
    for (services, nodes, churn, seed) in
        [(20, 3, Churn::Medium, 1), (40, 2, Churn::High, 2), (60, 5, Churn::Low, 3), (100, 4, Churn::High, 4), (30, 1, Churn::None, 5)]
    {
        let t = trace(services, nodes, churn, seed);
        let r = run(&t, EngineKind::Native, seed, None);
        assert_oracle(&r, &format!("{services} services, {nodes} nodes, churn {churn:?}, seed {seed}"));
        assert_eq!(r["cloud_errors"], serde_json::json!({}));
    }
}

/// With faults until 10 minutes of virtual time (errors, throttling, latency, failed LROs), the
/// system still settles to the oracle once the faults stop.
#[test]
fn faulty_runs_settle_to_the_oracle_after_the_faults_stop() {
    for (services, churn, seed) in [(30, Churn::High, 11), (80, Churn::Medium, 12)] {
        let t = trace(services, 3, churn, seed);
        let r = run(&t, EngineKind::Native, seed, Some(faults(seed)));
        assert_oracle(&r, &format!("{services} services with faults, seed {seed}"));
        let errors: u64 = r["cloud_errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert!(errors > 10, "faults were injected: {}", r["cloud_errors"]);
    }
}

/// Egress pods (created, completed, restarted, and one identity drained) with inbound Services,
/// with and without faults: NAT gateways, their public IPs, Outbound registrations and pod
/// addresses end exactly as the final pods imply.
#[test]
fn egress_traces_settle_to_the_oracle() {
    for (seed, faults_on) in [(41, false), (42, true), (43, true)] {
        let t = trace_of(&GenOptions { services: 25, nodes: 3, egress: 25, churn: Churn::High, seed, ..GenOptions::default() });
        let r = run(&t, EngineKind::Native, seed, faults_on.then(|| faults(seed)));
        assert_oracle(&r, &format!("egress, seed {seed}, faults {faults_on}"));
        let nats = r["inventory"]["nat_gateways"].as_array().unwrap().len();
        assert!(nats >= 4, "default-natgw and the egress identities: {}", r["inventory"]["nat_gateways"]);
        assert!(r["kubernetes"]["writes"]["remove-pod-finalizer ok"].as_u64().unwrap() > 5);
    }
}

/// Same trace, faults and seed: the same bytes; wasm and native: the same bytes.
#[test]
fn reports_are_byte_identical_across_runs_and_engines() {
    let t = trace_of(&GenOptions { services: 40, nodes: 3, egress: 15, churn: Churn::High, seed: 21, ..GenOptions::default() });
    let native = to_bytes(&run(&t, EngineKind::Native, 21, Some(faults(21))));
    let again = to_bytes(&run(&t, EngineKind::Native, 21, Some(faults(21))));
    assert_eq!(native, again, "two native runs differ");
    let wasm = to_bytes(&run(&t, EngineKind::Wasm, 21, Some(faults(21))));
    if wasm != native {
        let (a, b) = (String::from_utf8_lossy(&native), String::from_utf8_lossy(&wasm));
        let first = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        panic!("wasm and native reports differ at line {first:?}");
    }
    let report: serde_json::Value = serde_json::from_slice(&wasm).unwrap();
    assert_oracle(&report, "wasm");
    // Another seed changes the run (the faults fall elsewhere).
    let other = to_bytes(&run(&t, EngineKind::Native, 22, Some(faults(22))));
    assert_ne!(other, native);
}

#[test]
fn small_trace_settles_to_the_oracle_native() {
    let t = trace(20, 3, Churn::Medium, 1);
    let r = run(&t, EngineKind::Native, 1, None);
    assert_oracle(&r, "20 services, seed 1");
}

/// Faults that never stop: the replay ends at the virtual time limit and says it did not
/// converge (retries, parks and re-arms all happen in virtual time).
#[test]
fn endless_faults_end_at_the_time_limit_unconverged() {
    let t = trace(10, 2, Churn::None, 31);
    let plan = FaultPlan::parse(r#"{"seed": 1, "rules": [{"call": "PUT loadBalancers", "rate": 1.0, "status": 500}]}"#).unwrap();
    let until_ms = 60 * 60 * 1000;
    let options = ReplayOptions { engine: EngineKind::Native, faults: Some(plan), until_ms, ..ReplayOptions::default() };
    let r = replay(&t, &options).unwrap().report;
    assert_eq!(r["converged"], false);
    assert_eq!(r["virtual_ms"], until_ms);
    let puts = r["cloud_calls"]["PUT loadBalancers"].as_u64().unwrap();
    // Each admitted service: bursts of 12 retries, parked 5 minutes, re-armed, for an hour.
    assert!(puts > 100, "{puts} PUT loadBalancers");
    let problems = oracle::check_report(&r).unwrap_err();
    assert!(problems[0].contains("did not converge"), "{problems:?}");
}

/// Services that stop being ours while they still exist (a flip that ends as ClusterIP or
/// NodePort, another controller's `loadBalancerClass`) end with no ingress from us, and the oracle
/// holds (it reported "carries ingress ... but has no load balancer" before the engine cleared
/// the status).
#[test]
fn services_that_stop_being_ours_end_without_our_ingress() {
    use difftracker_runtime::k8s::{KubeObject, WatchEventType};
    use std::collections::BTreeMap;
    let t = trace_of(&GenOptions { services: 80, nodes: 3, churn: Churn::High, seed: 17, ..GenOptions::default() });
    // The final spec of every Service, and whether it was ever one of ours.
    let mut last: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut ever_ours: BTreeMap<String, bool> = BTreeMap::new();
    for e in &t.events {
        if let KubeObject::Service(s) = &e.object {
            let key = format!("{}/{}", s.meta.namespace, s.meta.name);
            if e.event_type == WatchEventType::Deleted {
                last.remove(&key);
                ever_ours.remove(&key);
                continue;
            }
            let ours = oracle::wants_load_balancer(s) && oracle::admission(s) == Ok(true);
            *ever_ours.entry(key.clone()).or_default() |= ours;
            last.insert(key, (s.service_type.clone(), s.load_balancer_class.is_some()));
        }
    }
    let left: Vec<&String> =
        last.iter().filter(|(k, (ty, class))| ever_ours[*k] && (ty != "LoadBalancer" || *class)).map(|(k, _)| k).collect();
    let classed = last.values().filter(|(_, class)| *class).count();
    let retyped = last.values().filter(|(ty, _)| ty == "ClusterIP" || ty == "NodePort").count();
    assert!(left.len() >= 3 && classed >= 1 && retyped >= 1, "the trace must hold such Services: {left:?}");
    for (engine, faults_on) in [(EngineKind::Native, false), (EngineKind::Native, true), (EngineKind::Wasm, false)] {
        let r = run(&t, engine, 17, faults_on.then(|| faults(17)));
        assert_oracle(&r, &format!("{engine:?}, faults {faults_on}"));
        let ingress = r["kubernetes"]["service_ingress"].as_object().unwrap();
        for key in &left {
            assert!(!ingress.contains_key(key.as_str()), "{key} keeps an ingress: {:?}", ingress.get(key.as_str()));
        }
    }
}

/// A replay starts with the engine's start-up pass: the five list calls come first.
#[test]
fn a_replay_starts_with_the_five_list_calls() {
    let t = trace(10, 2, Churn::None, 3);
    let r = run(&t, EngineKind::Native, 3, None);
    assert_oracle(&r, "10 services");
    for label in ["GET services", "GET addressLocations", "GET loadBalancers", "GET publicIPAddresses"] {
        assert_eq!(r["cloud_calls"][label], 1, "{label}: {}", r["cloud_calls"]);
    }
    assert_eq!(r["cloud_calls"]["GET natGateways"], 1, "the NAT list; no NAT gateway is read otherwise");
}

/// An input the sandbox cannot hold (a Service carrying a 40 MiB annotation, under a 32 MiB guest)
/// is quarantined in the replay as in a tenant: the run goes on and every other Service
/// converges, the object gets a Warning Event, and the report says `converged: false` and lists
/// the input, with no oracle difference but the quarantined Service's own resources.
#[test]
fn a_replay_quarantines_an_input_the_sandbox_cannot_hold_and_says_so() {
    use difftracker_runtime::k8s::{KubeObject, WatchEventType};
    use difftracker_runtime::tenant::REASON_INPUT_QUARANTINED;
    use difftracker_runtime::wasm::SandboxLimits;
    use difftracker_simulation::replay::TraceEvent;
    use difftracker_simulation::samples::{sample_service, sample_trace};
    use std::time::Duration;

    let mut trace = sample_trace().unwrap();
    let mut huge = sample_service("default", "huge", "eeee0000-0000-4000-8000-00000000dead");
    huge.meta.annotations.push(("example.com/blob".into(), "x".repeat(40 << 20)));
    let at_ms = trace.events[trace.events.len() / 2].at_ms;
    let position = trace.events.iter().position(|e| e.at_ms > at_ms).unwrap_or(trace.events.len());
    let event = TraceEvent { line: 0, at_ms, event_type: WatchEventType::Added, object: KubeObject::Service(huge), resource_version: None };
    trace.events.insert(position, event);
    let sandbox = SandboxLimits { memory_bytes: 32 << 20, cpu_deadline: Duration::from_secs(60), ..SandboxLimits::default() };
    let options = ReplayOptions { engine: EngineKind::Wasm, sandbox, ..ReplayOptions::default() };
    let outcome = replay(&trace, &options).expect("the replay runs to its end");
    let report = &outcome.report;

    assert_eq!(report["converged"], false, "a run with a quarantined input has not converged");
    assert!(report.get("engine_failure").is_none(), "the engine went on: {}", report["engine_failure"]);
    let quarantined = report["quarantined"].as_array().expect("the report lists quarantined inputs");
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined[0]["input"].as_str().unwrap().contains("default/huge"), "{quarantined:?}");
    assert_eq!(outcome.cluster.event_reasons().get(REASON_INPUT_QUARANTINED), Some(&1));
    let differences: Vec<&str> = report["oracle"]["differences"].as_array().unwrap().iter().filter_map(|d| d.as_str()).collect();
    assert!(!differences.is_empty(), "the quarantined Service has no load balancer, and the oracle says so");
    assert!(differences.iter().all(|d| d.contains("eeee0000-0000-4000-8000-00000000dead")), "{differences:#?}");
}
