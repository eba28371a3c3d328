//! A manual scale check (ignored by default; it prints timings, asserts no timing):
//! `cargo test -p difftracker-engine --release scale -- --ignored --nocapture`.

use super::common::*;
use std::time::Instant;

fn lifecycle(n: usize) {
    let mut h = Harness::new(3);
    let nodes = n / 10 + 1;
    h.deliver((0..nodes).map(|i| KubeEvent::NodeApplied(node(&format!("n{i}"), &[&format!("10.{}.{}.1", i / 250, i % 250)]))).collect());
    let uid = |i: usize| format!("{i:08x}-0000-4000-8000-000000000000");
    let t = Instant::now();
    for i in 0..n {
        let eps: Vec<(String, String)> =
            (0..10).map(|k| (std::net::Ipv4Addr::from(0x0a40_0000u32 + (i * 10 + k) as u32).to_string(), format!("n{}", i / 10))).collect();
        let eps: Vec<(&str, &str)> = eps.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        h.deliver(vec![
            KubeEvent::EndpointSliceApplied(slice(&format!("s{i}"), &uid(i), &eps)),
            KubeEvent::ServiceApplied(lb_service(&uid(i), &[80])),
        ]);
    }
    let add = t.elapsed();
    let t = Instant::now();
    assert!(h.run_ok(100_000), "{:?}", {
        let mut st = h.engine.status();
        st.metrics.clear();
        st
    });
    let create = t.elapsed();
    assert_eq!(h.engine.nrp().address_count(), n * 10);
    let t = Instant::now();
    for i in 0..n {
        h.engine.delete_service(&id(&uid(i)), true, false);
    }
    let delete = t.elapsed();
    let t = Instant::now();
    assert!(h.run_ok(100_000));
    let drain = t.elapsed();
    assert_eq!(h.engine.operations().count(), 0);
    println!(
        "n={n}: add {:?}/svc, create+publish {:?}/svc, delete {:?}/svc, drain+teardown {:?}/svc",
        add / n as u32,
        create / n as u32,
        delete / n as u32,
        drain / n as u32
    );
}

#[test]
#[ignore]
fn scale_lifecycle_per_service_cost_is_flat() {
    lifecycle(1_000);
    lifecycle(10_000);
}

/// Egress: `n` pods over `n / 100` identities are admitted, published, then deleted (each
/// pod's finalizer released after its drain, the last ones after their NAT gateway delete).
fn egress_lifecycle(n: usize) {
    let mut h = Harness::new(3);
    let nodes = n / 10 + 1;
    h.deliver((0..nodes).map(|i| KubeEvent::NodeApplied(node(&format!("n{i}"), &[&format!("10.{}.{}.1", i / 250, i % 250)]))).collect());
    let ids = n / 100 + 1;
    let pod = |i: usize| {
        let host = format!("10.{}.{}.1", (i / 10) / 250, (i / 10) % 250);
        let ip = std::net::Ipv4Addr::from(0x0a40_0000u32 + i as u32).to_string();
        egress_pod(&format!("ns/p{i}"), &format!("u{i}"), &format!("egress-{}", i % ids), &[&ip], &[&host])
    };
    let t = Instant::now();
    for i in 0..n {
        h.deliver(vec![KubeEvent::PodApplied(pod(i))]);
    }
    let add = t.elapsed();
    let t = Instant::now();
    assert!(h.run_ok(100_000));
    let create = t.elapsed();
    assert_eq!(h.engine.nrp().address_count(), n);
    let t = Instant::now();
    for i in 0..n {
        h.deliver(vec![KubeEvent::PodApplied(terminating(&pod(i)))]);
    }
    let delete = t.elapsed();
    let t = Instant::now();
    assert!(h.run_ok(100_000));
    let drain = t.elapsed();
    assert_eq!(h.engine.operations().count(), 0);
    assert!(h.engine.pod_deletions().is_empty());
    println!(
        "egress n={n}: add {:?}/pod, finalizers+create+publish {:?}/pod, delete {:?}/pod, drain+release+teardown {:?}/pod",
        add / n as u32,
        create / n as u32,
        delete / n as u32,
        drain / n as u32
    );
}

#[test]
#[ignore]
fn scale_egress_per_pod_cost_is_flat() {
    egress_lifecycle(1_000);
    egress_lifecycle(10_000);
}
