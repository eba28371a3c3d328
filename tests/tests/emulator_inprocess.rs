//! The emulator as an in-process backend (no HTTP): the same semantics and error codes as over
//! HTTP, and faults decided from the virtual time the caller passes.

mod emulator_support;

use difftracker_engine::io::*;
use difftracker_runtime::backend::CloudBackend;
use difftracker_simulation::emulator::{codes, Emulator, EmulatorBackend, EmulatorOptions, FaultPlan};
use emulator_support::*;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn backend(options: EmulatorOptions) -> EmulatorBackend {
    let emulator = Emulator::new(options);
    let cfg = emulator.options().scope.tenant_config("http://emulator.invalid");
    EmulatorBackend::new(emulator, cfg)
}

#[tokio::test]
async fn inbound_lifecycle_in_process() {
    let b = backend(EmulatorOptions::default());
    let before = b.emulator().inventory();
    let CallOutput::PublicIp(ip) = b.call(put_pip("u-pip", IpVersion::V6)).await.unwrap() else { panic!() };
    assert!(ip.ip_address.unwrap().parse::<std::net::Ipv6Addr>().is_ok());
    b.call(put_lb("u")).await.unwrap();
    b.call(register_inbound("u")).await.unwrap();
    b.call(publish(vec![loc("fd00::4", UpdateAction::FullUpdate, &[("fd00:1::7", &["u"])])])).await.unwrap();
    expect_code(b.call(unregister("u", ServiceType::Inbound)).await, 400, codes::OVERLAY_MAPPINGS);
    b.call(publish(vec![loc("fd00::4", UpdateAction::PartialUpdate, &[])])).await.unwrap();
    b.call(detach_pool("u")).await.unwrap();
    expect_code(b.call(CloudCall::DeletePublicIp { name: "u-pip".into() }).await, 400, codes::PUBLIC_IP_CANNOT_BE_DELETED);
    b.call(CloudCall::DeleteLoadBalancer { name: "u".into() }).await.unwrap();
    b.call(unregister("u", ServiceType::Inbound)).await.unwrap();
    b.call(CloudCall::DeletePublicIp { name: "u-pip".into() }).await.unwrap();
    // Nothing to delete is success, as over HTTP.
    b.call(CloudCall::DeletePublicIp { name: "u-pip".into() }).await.unwrap();
    b.call(unregister("u", ServiceType::Inbound)).await.unwrap();
    assert_eq!(b.call(CloudCall::GetNatGateway { name: "x".into() }).await.unwrap(), CallOutput::NatGateway(None));
    assert_eq!(b.emulator().inventory(), before);
}

#[tokio::test]
async fn referential_rules_in_process() {
    let b = backend(EmulatorOptions::default());
    expect_code(b.call(put_lb("u")).await, 400, codes::INVALID_RESOURCE_REFERENCE);
    expect_code(b.call(put_nat("e")).await, 400, codes::INVALID_RESOURCE_REFERENCE);
    expect_code(b.call(register_inbound("u")).await, 400, codes::INVALID_RESOURCE_REFERENCE);
    expect_code(
        b.call(publish(vec![loc("10.0.0.1", UpdateAction::FullUpdate, &[("10.1.0.1", &["u"])])])).await,
        400,
        codes::SERVICE_NOT_REGISTERED,
    );
    expect_code(
        b.call(publish(vec![loc("10.0.0.1", UpdateAction::FullUpdate, &[]), loc("10.0.0.1", UpdateAction::FullUpdate, &[])])).await,
        400,
        codes::DUPLICATE_LOCATIONS,
    );
    expect_code(b.call(unregister("default-natgw", ServiceType::Outbound)).await, 400, codes::MULTIPLE_DEFAULT);
    let e = b.call(CloudCall::GetNatGateway { name: "../escape".into() }).await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (400, "InvalidResourceName"));
}

#[test]
fn faults_follow_the_virtual_time_given() {
    let text = r#"{"seed": 5, "until_ms": 10000, "rules": [
        {"call": "GET loadBalancers", "rate": 0.5, "status": 503},
        {"call": "*", "latency_ms": [10, 20]}]}"#;
    let run = |now: u64| {
        let b = backend(EmulatorOptions { faults: Some(FaultPlan::parse(text).unwrap()), ..Default::default() });
        (0..40).map(|_| b.perform_at(now, &CloudCall::ListLoadBalancers)).collect::<Vec<_>>()
    };
    let a = run(1000);
    assert_eq!(a, run(1000), "same seed, same time, same faults");
    let failures = a.iter().filter(|d| d.outcome.is_err()).count();
    assert!((5..=35).contains(&failures), "{failures}");
    assert!(a.iter().all(|d| (10..=20).contains(&d.latency_ms)));
    let e = a.iter().find_map(|d| d.outcome.clone().err()).unwrap();
    assert_eq!((e.kind, e.status, e.code.as_str()), (ErrorKind::Http, 503, "ServiceUnavailable"));
    // After until_ms: no error, no latency.
    assert!(run(10_000).iter().all(|d| d.outcome.is_ok() && d.latency_ms == 0));
}

#[tokio::test]
async fn the_backend_reads_now_from_its_clock() {
    let now = Arc::new(AtomicU64::new(0));
    let n2 = now.clone();
    let text = r#"{"seed": 1, "until_ms": 100, "rules": [{"call": "*", "status": 500}]}"#;
    let b = backend(EmulatorOptions { faults: Some(FaultPlan::parse(text).unwrap()), ..Default::default() })
        .with_clock(Arc::new(move || n2.load(Ordering::SeqCst)));
    assert_eq!(b.call(CloudCall::ListNatGateways).await.unwrap_err().status, 500);
    now.store(100, Ordering::SeqCst);
    assert_eq!(b.call(CloudCall::ListNatGateways).await.unwrap(), CallOutput::Names(vec!["default-natgw".into()]));
    assert_eq!(b.emulator().inventory()["nat_gateways"], json!(["default-natgw"]));
}
