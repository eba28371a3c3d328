//! The engine's call-id counter: it follows the ids a host allocates (`tick`, WIT 0.2.0), numbers
//! the calls itself for a host that takes its ids (`tick_numbered`, WIT 0.3.0), and travels in
//! the snapshot, so an engine restored from either numbers on above every id it knows of.

use crate::engine::Engine;
use crate::io::{Call, CallId, KubeEvent, KubeEventRecord, NumberedIo, TenantConfig};
use crate::testkit::RecordingIo;

/// A [`NumberedIo`] that records the ids the engine hands it.
#[derive(Default)]
struct Numbered(Vec<CallId>);

impl NumberedIo for Numbered {
    fn start(&mut self, id: CallId, _: Call) {
        self.0.push(id);
    }
    fn record_event(&mut self, _: KubeEventRecord) {}
}

fn started_engine() -> Engine {
    let mut engine = Engine::new(TenantConfig { tenant: "t".into(), seed: 1, ..TenantConfig::default() });
    engine.deliver(0, vec![KubeEvent::InitialListsComplete]);
    engine
}

#[test]
fn the_counter_follows_host_ids_and_numbers_on_from_them_after_a_restore() {
    let mut engine = started_engine();
    let mut host = RecordingIo { next_id: 41, ..RecordingIo::default() };
    engine.tick(0, vec![], &mut host);
    let host_ids: Vec<CallId> = host.started.iter().map(|(id, _)| *id).collect();
    assert_eq!(host_ids, vec![42, 43, 44, 45, 46], "the five start-up lists, numbered by the host");
    assert_eq!(engine.next_call_id(), 47);

    // Restored (as a 0.3.0 engine from a 0.2.0 engine's snapshot), it numbers from there: the
    // five lists time out and their retries get 47 on.
    let mut restored = Engine::restore(&engine.snapshot()).unwrap();
    assert_eq!(restored.next_call_id(), 47);
    let mut numbered = Numbered::default();
    for minutes in 1..=60 {
        restored.tick_numbered(minutes * 60 * 1000, vec![], &mut numbered);
        if !numbered.0.is_empty() {
            break;
        }
    }
    assert!(!numbered.0.is_empty() && numbered.0.iter().all(|id| *id >= 47), "{:?}", numbered.0);
    assert!(numbered.0.windows(2).all(|w| w[1] == w[0] + 1), "consecutive: {:?}", numbered.0);
}

#[test]
fn a_fresh_engine_numbers_from_one_and_the_counter_is_in_the_snapshot() {
    let mut engine = started_engine();
    let mut io = Numbered::default();
    engine.tick_numbered(0, vec![], &mut io);
    assert_eq!(io.0, vec![1, 2, 3, 4, 5]);
    let restored = Engine::restore(&engine.snapshot()).unwrap();
    assert_eq!(restored.next_call_id(), 6);
    assert_eq!(Engine::restore(&engine.snapshot_json()).unwrap().next_call_id(), 6);
}

#[test]
fn a_snapshot_without_the_counter_starts_it_above_every_awaited_call() {
    let mut engine = started_engine();
    engine.tick(0, vec![], &mut RecordingIo { next_id: 99, ..RecordingIo::default() });
    // As a snapshot that predates the counter would have it.
    let mut json: serde_json::Value = serde_json::from_slice(&engine.snapshot_json()).unwrap();
    json["engine"].as_object_mut().unwrap().remove("next_call_id").expect("the counter is in the snapshot");
    let restored = Engine::restore(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(restored.next_call_id(), 105, "above the awaited lists 100..=104");
}
