//! Golden files: the exact bytes the engine produces for fixed inputs. A restructuring of the
//! engine must leave them unchanged (same calls, same reports, same snapshots).
//!
//! - `fixtures/golden_snapshot.json`: the snapshot of one scenario holding every kind of state
//!   at once (live and buffered inbound services, egress pods live, buffered and terminating,
//!   pod calls queued, in flight and deferred, a failed attempt in backoff, workers and a
//!   location sync in flight, a pending service deletion, a queued Warning Event).
//! - `fixtures/golden_trace.txt`: every call, tick outcome and event of a long seeded run of
//!   random events, completions (with faults) and clock jumps (timeouts, retries, parking),
//!   restored from its own snapshot every few steps, with snapshot hashes along the way.
//!
//! `GOLDEN_UPDATE=1 cargo test -p difftracker-engine golden` rewrites both files.

use super::common::*;
use crate::Engine;
use std::fmt::Write as _;

const SNAPSHOT_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/tests/fixtures/golden_snapshot.json");
const TRACE_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/tests/fixtures/golden_trace.txt");
/// The same scenario's snapshot as schema 2 wrote it (before the start-up pass), kept to prove
/// old snapshots still restore.
const SNAPSHOT_V2_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/tests/fixtures/golden_snapshot_v2.json");

const SVC_LIVE: &str = "a1111111-0000-4000-8000-000000000001";
const SVC_BACKOFF: &str = "b2222222-0000-4000-8000-000000000002";
const SVC_CREATING: &str = "c3333333-0000-4000-8000-000000000003";
const SVC_STAYS: &str = "d4444444-0000-4000-8000-000000000004";

/// Compares `got` with the fixture at `path` (or rewrites it under `GOLDEN_UPDATE=1`).
fn check_fixture(path: &str, got: &[u8]) {
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(path, got).unwrap();
        return;
    }
    let want = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (GOLDEN_UPDATE=1 writes it)"));
    if want != got {
        let first = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
        let from = first.saturating_sub(200);
        panic!(
            "{path} differs at byte {first} (lengths {} vs {}):\nwant ...{}\ngot  ...{}",
            want.len(),
            got.len(),
            String::from_utf8_lossy(&want[from..(first + 200).min(want.len())]),
            String::from_utf8_lossy(&got[from..(first + 200).min(got.len())]),
        );
    }
}

/// The fixed scenario of `golden_snapshot.json`.
fn scenario() -> Harness {
    let mut h = dual_harness();
    // A live inbound service with a published endpoint.
    create_published(&mut h, SVC_LIVE, "live", "10.1.0.1");
    create_published(&mut h, SVC_STAYS, "stays", "10.1.0.2");
    // A live egress identity (dual-stack node: the IPv6 decision is cached) with four pods.
    let p1 = epod("p1", "pu1", EG, "10.2.0.1");
    let p2 = epod("p2", "pu2", EG, "10.2.0.2");
    let p3 = egress_pod("ns/p3", "pu3", EG, &["10.2.0.3", "fd00::23"], &["10.0.0.3", "fd00::3"]);
    let p5 = epod("p5", "pu5", EG, "10.2.0.5");
    live_egress(&mut h, EG, &[p1.clone(), p2.clone(), p3.clone(), p5]);
    // A create whose first attempt failed: in backoff, its retry timer armed.
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(SVC_BACKOFF, &[80]))]);
    h.tick();
    let c = h.find_by(|c| matches!(c, Call::Kube(KubeCall::AddServiceFinalizers(r)) if r.uid == SVC_BACKOFF)).unwrap();
    h.fail(c, transient());
    assert!(h.engine.operation(&id(SVC_BACKOFF)).unwrap().next_retry_at_ms.is_some());
    // A create in flight (worker waiting for its public IP) with buffered endpoint deltas.
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("creating", SVC_CREATING, &[("10.1.0.5", "n1")]))]);
    h.deliver(vec![KubeEvent::ServiceApplied(lb_service(SVC_CREATING, &[8080]))]);
    h.tick();
    let c = h.find_by(|c| matches!(c, Call::Kube(KubeCall::AddServiceFinalizers(r)) if r.uid == SVC_CREATING)).unwrap();
    h.ok(c);
    h.deliver(vec![KubeEvent::EndpointSliceApplied(slice("creating", SVC_CREATING, &[("10.1.0.5", "n1"), ("10.1.0.6", "n2")]))]);
    // A second egress identity whose NAT create is in flight: its pod is buffered.
    admit(&mut h, &epod("q1", "qu1", EG2, "10.3.0.1"));
    assert!(!h.engine.buffered_pods(&id(EG2)).is_empty());
    // Pod deletions in progress: p1 terminating (drain record), p3 terminating without IPs.
    delete_event(&mut h, &p1);
    let mut p3_gone = terminating(&p3);
    p3_gone.pod_ip.clear();
    p3_gone.pod_ips.clear();
    h.deliver(vec![KubeEvent::PodApplied(p3_gone)]);
    // A replacement drain: p2 moves to a new IP (shadow kept, finalizer re-add with `replaced`).
    let mut p2_moved = p2.clone();
    p2_moved.pod_ip = "10.2.0.9".into();
    p2_moved.pod_ips = vec!["10.2.0.9".into()];
    h.deliver(vec![KubeEvent::PodApplied(p2_moved.clone())]);
    // The location sync carrying those removals starts, with the other calls.
    h.tick();
    assert!(h.engine.status().location_sync_in_flight);
    // While p2's finalizer call is in flight, its next events wait behind it.
    let mut p2_later = p2_moved.clone();
    p2_later.meta.resource_version = "2".into();
    h.deliver(vec![KubeEvent::PodApplied(p2_later)]);
    // An inbound service deleted while its address is still published: a pending deletion.
    h.deliver(vec![deleting(SVC_LIVE, &[80])]);
    // Queued, not started: a new egress pod (its finalizer call waits for the next tick).
    h.deliver(vec![KubeEvent::PodApplied(epod("p4", "pu4", EG, "10.2.0.4"))]);
    // A Warning Event raised outside a tick (emitted by the next one).
    h.deliver(vec![KubeEvent::PodApplied(epod("bad", "bu1", "Not A Valid Label!", "10.2.0.8"))]);
    h.engine.check_invariants().unwrap();
    h
}

#[test]
fn golden_snapshot_of_a_busy_engine() {
    let mut h = scenario();
    let bytes = h.engine.snapshot_json();
    check_fixture(SNAPSHOT_FIXTURE, &bytes);
    let fixture = std::fs::read(SNAPSHOT_FIXTURE).unwrap();

    // Restoring the fixture and snapshotting again gives the same bytes.
    let restored = Engine::restore(&fixture).unwrap();
    assert_eq!(restored.snapshot_json(), fixture, "restore then snapshot is the identity");
    restored.check_invariants().unwrap();
    // The binary form holds the same engine: restored from it, its JSON is the fixture again.
    let binary = restored.snapshot();
    assert!(binary.len() * 3 < fixture.len(), "binary {} bytes against JSON {}", binary.len(), fixture.len());
    let restored = Engine::restore(&binary).unwrap();
    assert_eq!(restored.snapshot_json(), fixture, "binary restore then JSON snapshot is the fixture");
    assert_eq!(restored.snapshot(), binary, "binary restore then snapshot is the identity");

    // The restored engine then behaves exactly as the original, tick after tick.
    let mut twin = Harness {
        engine: restored,
        io: h.io.clone(),
        now: h.now,
        outstanding: h.outstanding.clone(),
        log: Vec::new(),
        last: h.last.clone(),
    };
    h.log.clear();
    let first = h.tick();
    assert_eq!(twin.tick(), first, "the next tick starts the same calls");
    assert!(!first.is_empty());
    assert_eq!(twin.last, h.last);
    assert_eq!(twin.io.events, h.io.events);
    for round in 0..40 {
        if round == 10 {
            // Let the deadlines pass: timeouts and retries fire the same way in both.
            h.now += 6 * 60 * 1_000;
            twin.now = h.now;
        }
        let completions: Vec<Completion> =
            h.outstanding.iter().take(3).map(|(id, c)| Completion { id: *id, outcome: Ok(ok_output(c)) }).collect();
        let a = h.tick_with(completions.clone());
        let b = twin.tick_with(completions);
        assert_eq!(a, b, "round {round}");
        assert_eq!(h.last, twin.last, "round {round}");
        if h.outstanding.is_empty() {
            h.wake();
            twin.wake();
        }
    }
    assert_eq!(h.log, twin.log);
    assert_eq!(h.io.events, twin.io.events);
    assert_eq!(h.engine.snapshot(), twin.engine.snapshot());
}

/// A schema 2 snapshot (an engine that predates the start-up pass) restores as an initialized
/// engine and then behaves as the same engine restored from the current fixture.
#[test]
fn golden_snapshot_of_schema_2_still_restores() {
    let v2 = std::fs::read(SNAPSHOT_V2_FIXTURE).unwrap();
    assert!(v2.starts_with(br#"{"schema_version":2,"#));
    let mut old = Engine::restore(&v2).unwrap();
    old.check_invariants().unwrap();
    // The harness runs with upstream's timing (no POST interval); the old snapshot has the default.
    old.config.sgw_post_interval_ms = Some(0);
    assert!(old.is_initialized());
    let mut h = scenario();
    assert_eq!(old.operations().count(), h.engine.operations().count());
    let mut twin =
        Harness { engine: old, io: h.io.clone(), now: h.now, outstanding: h.outstanding.clone(), log: Vec::new(), last: h.last.clone() };
    h.log.clear();
    for round in 0..40 {
        if round == 10 {
            h.now += 6 * 60 * 1_000;
            twin.now = h.now;
        }
        let completions: Vec<Completion> =
            h.outstanding.iter().take(3).map(|(id, c)| Completion { id: *id, outcome: Ok(ok_output(c)) }).collect();
        assert_eq!(h.tick_with(completions.clone()), twin.tick_with(completions), "round {round}");
        if h.outstanding.is_empty() {
            h.wake();
            twin.wake();
        }
    }
    assert_eq!(h.log, twin.log);
    assert_eq!(h.io.events, twin.io.events);
}

// ---------------------------------------------------------------- the seeded trace

/// splitmix64, local so the trace does not depend on engine internals.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// FNV-1a, to put snapshot digests in the trace.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

const TRACE_UIDS: [&str; 3] =
    ["11111111-0000-4000-8000-00000000000a", "22222222-0000-4000-8000-00000000000b", "33333333-0000-4000-8000-00000000000c"];
const TRACE_ADDRS: [&str; 6] = ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "fd01::1", "10.1.0.5"];
const POD_ADDRS: [&str; 6] = ["10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4", "fd02::1", "10.2.0.5"];
const LABELS: [&str; 3] = [EG, EG2, "Bad Label!"];
const PORTS: [&[i32]; 3] = [&[80], &[80, 443], &[8080]];
const HOSTS: [&[&str]; 2] = [&["10.0.0.1"], &["10.0.0.3", "fd00::3"]];

fn failure(rng: &mut Rng) -> CallError {
    match rng.below(7) {
        0 => CallError::http(500, "InternalServerError", "boom"),
        1 => CallError::http(404, "NotFound", "gone"),
        2 => CallError::http(400, crate::workers::OVERLAY_ERROR_CODE, "mapped"),
        3 => CallError::http(400, "BadRequest", "rejected"),
        4 => CallError::of_kind(ErrorKind::Timeout, "timed out"),
        5 => CallError::of_kind(ErrorKind::NotFound, "object gone"),
        _ => CallError::http(429, "TooManyRequests", "throttled"),
    }
}

/// One random step; returns what it did, for the trace.
fn step(h: &mut Harness, rng: &mut Rng, faulty: bool) -> String {
    match rng.below(20) {
        0 | 1 => {
            let uid = *rng.pick(&TRACE_UIDS);
            let ports = *rng.pick(&PORTS);
            h.deliver(vec![KubeEvent::ServiceApplied(lb_service(uid, ports))]);
            format!("apply service {uid} {ports:?}")
        }
        2 => {
            let uid = *rng.pick(&TRACE_UIDS);
            if rng.below(2) == 0 {
                h.deliver(vec![deleting(uid, &[80])]);
                format!("deleting service {uid}")
            } else {
                h.deliver(vec![KubeEvent::ServiceDeleted(lb_service(uid, &[80]))]);
                format!("deleted service {uid}")
            }
        }
        3 | 4 => {
            let name = format!("s{}", rng.below(3));
            let owner = *rng.pick(&TRACE_UIDS);
            let n = rng.below(3) + 1;
            let eps: Vec<(&str, &str)> = (0..n).map(|_| (*rng.pick(&TRACE_ADDRS), *rng.pick(&["n1", "n2", "d1"]))).collect();
            h.deliver(vec![KubeEvent::EndpointSliceApplied(slice(&name, owner, &eps))]);
            format!("apply slice {name} of {owner} {eps:?}")
        }
        5 => {
            let name = format!("s{}", rng.below(3));
            h.deliver(vec![KubeEvent::EndpointSliceDeleted(slice(&name, TRACE_UIDS[0], &[]))]);
            format!("delete slice {name}")
        }
        6 => {
            let ip = *rng.pick(&["10.0.0.2", "10.0.0.9"]);
            h.deliver(vec![KubeEvent::NodeApplied(node("n2", &[ip]))]);
            format!("node n2 {ip}")
        }
        7 | 8 => {
            let i = rng.below(5);
            let label = *rng.pick(&LABELS);
            let ip = *rng.pick(&POD_ADDRS);
            let hosts = if ip.contains(':') { HOSTS[1] } else { *rng.pick(&HOSTS) };
            let pod = egress_pod(&format!("ns/pod{i}"), &format!("pu{i}-{}", rng.below(2)), label, &[ip], hosts);
            h.deliver(vec![KubeEvent::PodApplied(pod)]);
            format!("apply pod{i} {label} {ip}")
        }
        9 => {
            let i = rng.below(5);
            let label = *rng.pick(&LABELS);
            let ip = *rng.pick(&POD_ADDRS);
            let mut pod = terminating(&egress_pod(&format!("ns/pod{i}"), &format!("pu{i}-{}", rng.below(2)), label, &[ip], &["10.0.0.1"]));
            let what = match rng.below(3) {
                0 => {
                    h.deliver(vec![KubeEvent::PodApplied(pod)]);
                    "terminating"
                }
                1 => {
                    pod.meta.finalizers.clear();
                    h.deliver(vec![KubeEvent::PodDeleted(pod)]);
                    "deleted"
                }
                _ => {
                    pod.pod_ip.clear();
                    pod.pod_ips.clear();
                    h.deliver(vec![KubeEvent::PodApplied(pod)]);
                    "terminating without IPs"
                }
            };
            format!("pod{i} {label} {what}")
        }
        10..=16 => {
            let n = rng.below(4) + 1;
            // Mostly calls the engine awaits; now and then a late one it timed out already.
            let (awaited, late): (Vec<CallId>, Vec<CallId>) = h.outstanding.keys().partition(|id| h.engine.awaits(**id));
            let ids = if late.is_empty() || rng.below(10) > 0 { awaited } else { late };
            if ids.is_empty() {
                h.tick();
                return "tick".into();
            }
            let mut completions = Vec::new();
            for _ in 0..n {
                let id = *rng.pick(&ids);
                if completions.iter().any(|c: &Completion| c.id == id) {
                    continue;
                }
                let outcome = if faulty && rng.below(2) > 0 { Err(failure(rng)) } else { Ok(ok_output(&h.outstanding[&id])) };
                completions.push(Completion { id, outcome });
            }
            let what = format!("complete {:?}", completions.iter().map(|c| (c.id, c.outcome.is_ok())).collect::<Vec<_>>());
            h.tick_with(completions);
            what
        }
        17 => {
            let ms = rng.below(3_000) as u64;
            h.advance(ms);
            format!("advance {ms}")
        }
        18 => {
            h.wake();
            "wake".into()
        }
        _ => {
            if rng.below(4) == 0 {
                h.advance(6 * 60 * 1_000);
                "advance 6m".into()
            } else {
                h.tick();
                "tick".into()
            }
        }
    }
}

fn trace() -> String {
    let mut out = String::new();
    let mut rng = Rng(0x5eed);
    let mut h = dual_harness();
    let mut events = 0;
    for i in 0..700 {
        // Faults come in bursts (long enough to park an operation), then calm.
        let faulty = (i / 60) % 2 == 1;
        let before = h.log.len();
        let what = step(&mut h, &mut rng, faulty);
        writeln!(out, "#{i} {what}").unwrap();
        for (id, c) in &h.log[before..] {
            writeln!(out, "  start {id} {c:?}").unwrap();
        }
        for e in &h.io.events[events..] {
            writeln!(out, "  event {e:?}").unwrap();
        }
        events = h.io.events.len();
        writeln!(out, "  now {} wake {:?} in_flight {}", h.now, h.last.next_wake_ms, h.last.calls_in_flight).unwrap();
        h.engine.check_invariants().unwrap_or_else(|e| panic!("step {i}: {e}"));
        if i % 10 == 9 {
            let bytes = h.engine.snapshot();
            // The hash is of the JSON form, which the trace has pinned since before the binary one.
            writeln!(
                out,
                "  snapshot {:016x} status {:016x}",
                fnv(&h.engine.snapshot_json()),
                fnv(format!("{:?}", h.engine.status()).as_bytes())
            )
            .unwrap();
            if i % 40 == 39 {
                let restored = Engine::restore(&bytes).unwrap();
                assert_eq!(restored.snapshot(), bytes, "step {i}: restore then snapshot");
                h.engine = restored;
            }
        }
    }
    // Calm: everything completes and the engine settles.
    let settled = h.run_ok(400);
    writeln!(out, "settled {settled} calls {} snapshot {:016x}", h.log.len(), fnv(&h.engine.snapshot_json())).unwrap();
    out
}

#[test]
fn golden_trace_of_a_seeded_run() {
    let t = trace();
    assert_eq!(trace(), t, "the run is deterministic");
    check_fixture(TRACE_FIXTURE, t.as_bytes());
}
