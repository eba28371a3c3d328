//! What a replay records for people, beside its counters: per tracked operation the calls made
//! for it (always: the report's `operations` section, read by `difftracker explain`), and with
//! `--html` a [`Timeline`] over virtual time (the engine's state counts after every tick, every
//! cloud call with its outcome, crashes and restarts, each operation's state as sampled), drawn
//! by [`super::html`].
//!
//! The timeline is an `Option` in the loop: without `--html` nothing of it is recorded. Its sizes
//! are bounded: points and call marks are thinned (every other one dropped) when they reach their
//! cap, and the per-operation states are sampled at most once per [`Timeline::sample_gap_ms`] of
//! virtual time, so a 10,000-Service run stays a few megabytes.
//!
//! Its cost is bounded too. A sample reads every operation from the engine, so the gap widens to
//! [`SAMPLE_MS_PER_OPERATION`] per operation of the last sample: the samples then cost the same per
//! virtual second at any size (at 10,000 Services, one per second of virtual time had made
//! `--html` six times the replay's time). The state counts are taken after a tick at most every
//! [`POINT_GAP_MS`], and once more at the end.

use difftracker_engine::io::{Call, CallError, CloudCall, EngineStatus, KubeCall, OperationStatus};
use serde::Serialize;
use std::collections::BTreeMap;

/// The engine's state labels, in the order of docs/ENGINE.md 4.1 (the band colours follow it).
pub const STATES: [&str; 7] =
    ["not_started", "creation_in_progress", "created", "deletion_pending", "deletion_in_progress", "update_in_progress", "unknown"];

/// Points and call marks kept at most (thinned past that).
pub const MAX_POINTS: usize = 50_000;
pub const MAX_MARKS: usize = 100_000;
/// State changes kept per operation at most (the latest win).
pub const MAX_SEGMENTS: usize = 64;
/// The least virtual time between two samples, per operation the last one read.
pub const SAMPLE_MS_PER_OPERATION: u64 = 1;
/// The least virtual time between two points (a later tick at a point's own instant replaces it).
pub const POINT_GAP_MS: u64 = 100;

/// Index of a state label in [`STATES`] (`unknown` for anything else).
pub fn state_index(label: &str) -> usize {
    STATES.iter().position(|s| *s == label).unwrap_or(STATES.len() - 1)
}

/// One call, as the report's `operations` section and the timeline show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    pub at_ms: u64,
    pub call: String,
    /// When its answer arrives (`at_ms` + the emulator's latency).
    pub done_ms: u64,
    /// `ok`, or `<status> <code>` of the error.
    pub result: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The calls made for one identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallSummary {
    pub calls: u64,
    pub failed: u64,
    pub last_call: Option<CallRecord>,
    pub last_error: Option<CallRecord>,
}

/// The identities a call is made for: an inbound Service's UID or an egress identity, lower
/// case (derived from the resource names of docs/AZURE-WIRE.md: `<id>`, `<id>-pip`,
/// `<id>-pip-v6`). Lists and location syncs are for nobody in particular.
pub fn subjects(call: &Call) -> Vec<String> {
    let strip = |name: &str| {
        let lower = name.to_ascii_lowercase();
        lower.strip_suffix("-pip-v6").or_else(|| lower.strip_suffix("-pip")).unwrap_or(&lower).to_string()
    };
    match call {
        Call::Cloud(c) => match c {
            CloudCall::PutPublicIp { name, .. } | CloudCall::DeletePublicIp { name } => vec![strip(name)],
            CloudCall::PutLoadBalancer(spec) => vec![strip(&spec.name)],
            CloudCall::PutNatGateway(spec) => vec![strip(&spec.name)],
            CloudCall::DeleteLoadBalancer { name }
            | CloudCall::DetachNatGateway { name, .. }
            | CloudCall::GetNatGateway { name }
            | CloudCall::DeleteNatGateway { name } => vec![strip(name)],
            CloudCall::UpdateServices(requests) => requests.iter().map(|r| r.name.to_ascii_lowercase()).collect(),
            _ => Vec::new(),
        },
        Call::Kube(k) => match k {
            KubeCall::AddServiceFinalizers(t) | KubeCall::RemoveServiceFinalizers(t) | KubeCall::PatchServiceIngress(t, _) => {
                vec![t.uid.to_ascii_lowercase()]
            }
            // A pod's finalizer belongs to the pod, not to an identity the call names.
            KubeCall::AddPodFinalizer(_) | KubeCall::RemovePodFinalizer(_) => Vec::new(),
        },
    }
}

/// `ok`, or `<status> <code>`.
pub fn result_text(outcome: &Result<impl Sized, CallError>) -> (String, String) {
    match outcome {
        Ok(_) => ("ok".to_string(), String::new()),
        Err(e) if e.code.is_empty() => (e.status.to_string(), e.message.clone()),
        Err(e) => (format!("{} {}", e.status, e.code), e.message.clone()),
    }
}

/// Messages are cut to this many characters (the emulator's are short; a real ARM's may not be).
const MESSAGE_KEPT: usize = 300;

impl CallSummary {
    pub fn record(&mut self, record: &CallRecord) {
        self.calls += 1;
        if record.result != "ok" {
            self.failed += 1;
            self.last_error = Some(record.clone());
        }
        self.last_call = Some(record.clone());
    }
}

/// Builds a [`CallRecord`], its message bounded.
pub fn call_record(at_ms: u64, done_ms: u64, call: &str, outcome: &Result<impl Sized, CallError>) -> CallRecord {
    let (result, message) = result_text(outcome);
    CallRecord { at_ms, call: call.to_string(), done_ms, result, message: message.chars().take(MESSAGE_KEPT).collect() }
}

/// The engine's counts after one tick.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Point {
    pub at_ms: u64,
    /// Operations per state, in [`STATES`] order.
    pub states: [u32; 7],
    /// Calls the host has in flight (cloud and Kubernetes).
    pub calls_in_flight: u32,
    /// Operations whose worker runs.
    pub operations_in_flight: u32,
    /// Operations not settled and not running: waiting for a slot, a retry, a drain, the gate.
    pub operations_waiting: u32,
}

/// One cloud call on the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mark {
    pub at_ms: u64,
    pub call: String,
    /// The identities it was made for (empty for lists and location syncs).
    pub subjects: Vec<String>,
    /// `None` when it succeeded; `<status> <code>: <message>` when it failed.
    pub error: Option<String>,
}

/// One operation's state over time: `(since_ms, state index)`, in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Band {
    /// `namespace/name` of an inbound Service, the identity of an egress one.
    pub name: String,
    pub kind: String,
    pub segments: Vec<(u64, usize)>,
    /// The operation was gone (deleted) from this time on.
    pub gone_ms: Option<u64>,
}

/// Everything the HTML page draws (see the module doc).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    pub points: Vec<Point>,
    pub marks: Vec<Mark>,
    /// Marks dropped by thinning (the summary tables still count every call).
    pub marks_thinned: u64,
    pub crashes_ms: Vec<u64>,
    pub restarts_ms: Vec<u64>,
    pub bands: BTreeMap<String, Band>,
    /// Virtual time between two samples of the operations' states, at least.
    pub sample_gap_ms: u64,
    pub last_sample_ms: Option<u64>,
    /// Operations the last sample read.
    pub last_sample_operations: usize,
}

/// Keeps every other element (the first and the last kept).
fn thin<T>(v: &mut Vec<T>) {
    let last = v.len().saturating_sub(1);
    let mut i = 0;
    v.retain(|_| {
        let keep = i % 2 == 0 || i == last;
        i += 1;
        keep
    });
}

impl Timeline {
    pub fn new(sample_gap_ms: u64) -> Timeline {
        Timeline { sample_gap_ms: sample_gap_ms.max(1), ..Timeline::default() }
    }

    /// The counts after a tick at `now` (a later tick at the same instant replaces it).
    pub fn point(&mut self, now: u64, status: &EngineStatus, calls_in_flight: usize) {
        let mut states = [0u32; 7];
        for (label, n) in &status.states {
            states[state_index(label)] += n;
        }
        let unsettled: u32 = states.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, n)| *n).sum();
        let p = Point {
            at_ms: now,
            states,
            calls_in_flight: calls_in_flight as u32,
            operations_in_flight: status.operations_in_flight,
            operations_waiting: unsettled.saturating_sub(status.operations_in_flight),
        };
        match self.points.last_mut() {
            Some(last) if last.at_ms == now => *last = p,
            _ => self.points.push(p),
        }
        if self.points.len() >= MAX_POINTS {
            thin(&mut self.points);
        }
    }

    /// A cloud call started at `now`.
    pub fn mark(&mut self, now: u64, call: &Call, outcome: &Result<impl Sized, CallError>) {
        let error = match outcome {
            Ok(_) => None,
            Err(_) => {
                let (result, message) = result_text(outcome);
                Some(format!("{result}: {}", message.chars().take(MESSAGE_KEPT).collect::<String>()))
            }
        };
        self.marks.push(Mark { at_ms: now, call: call.label().to_string(), subjects: subjects(call), error });
        if self.marks.len() >= MAX_MARKS {
            let before = self.marks.len();
            // Failed calls are what a reader looks for: thin the successful ones first.
            let mut i = 0usize;
            self.marks.retain(|m| {
                i += 1;
                m.error.is_some() || i.is_multiple_of(2)
            });
            if self.marks.len() >= MAX_MARKS {
                thin(&mut self.marks);
            }
            self.marks_thinned += (before - self.marks.len()) as u64;
        }
    }

    /// Whether the operations' states are due for a sample at `now`.
    pub fn sample_due(&self, now: u64) -> bool {
        let gap = self.sample_gap_ms.max(SAMPLE_MS_PER_OPERATION.saturating_mul(self.last_sample_operations as u64));
        self.last_sample_ms.is_none_or(|last| now >= last.saturating_add(gap))
    }

    /// Whether a tick at `now` takes a point: [`POINT_GAP_MS`] after the last, or at its instant.
    pub fn point_due(&self, now: u64) -> bool {
        self.points.last().is_none_or(|p| now == p.at_ms || now >= p.at_ms.saturating_add(POINT_GAP_MS))
    }

    /// The operations' states at `now`: a change starts a segment; an operation no longer
    /// tracked is gone.
    pub fn sample(&mut self, now: u64, ops: &[OperationStatus]) {
        self.last_sample_ms = Some(now);
        self.last_sample_operations = ops.len();
        let mut seen = std::collections::BTreeSet::new();
        for op in ops {
            seen.insert(op.identity.as_str());
            let state = state_index(&op.state);
            let band = self.bands.entry(op.identity.clone()).or_insert_with(|| Band {
                name: if op.name.is_empty() { op.identity.clone() } else { format!("{}/{}", op.namespace, op.name) },
                kind: op.kind.clone(),
                ..Band::default()
            });
            if band.gone_ms.take().is_some() || band.segments.last().is_none_or(|(_, s)| *s != state) {
                band.segments.push((now, state));
                if band.segments.len() > MAX_SEGMENTS {
                    band.segments.remove(0);
                }
            }
        }
        for (id, band) in self.bands.iter_mut() {
            if band.gone_ms.is_none() && !seen.contains(id.as_str()) {
                band.gone_ms = Some(now);
            }
        }
    }

    /// The host died at `now`: every operation's band stops until a fresh host reports it.
    pub fn crash(&mut self, now: u64) {
        self.crashes_ms.push(now);
        for band in self.bands.values_mut() {
            band.gone_ms.get_or_insert(now);
        }
        // The next host's first tick samples at once.
        self.last_sample_ms = None;
    }

    pub fn restart(&mut self, now: u64) {
        self.restarts_ms.push(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(n: usize) -> Vec<OperationStatus> {
        (0..n).map(|i| OperationStatus { identity: format!("uid-{i}"), state: "created".into(), ..OperationStatus::default() }).collect()
    }

    #[test]
    fn samples_of_many_operations_wait_one_ms_per_operation_and_few_wait_the_gap() {
        let mut t = Timeline::new(1_000);
        assert!(t.sample_due(0));
        t.sample(0, &operations(10));
        assert!(!t.sample_due(999));
        assert!(t.sample_due(1_000), "10 operations: the 1 s gap");
        t.sample(1_000, &operations(5_000));
        assert!(!t.sample_due(5_999));
        assert!(t.sample_due(6_000), "5,000 operations: 5 s");
    }

    #[test]
    fn points_are_taken_every_100_ms_or_again_at_their_own_instant() {
        let mut t = Timeline::new(1_000);
        assert!(t.point_due(0));
        t.point(0, &EngineStatus::default(), 1);
        assert!(t.point_due(0), "a later tick at the same instant replaces the point");
        assert!(!t.point_due(99));
        assert!(t.point_due(100));
    }
}
