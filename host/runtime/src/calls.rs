//! The calls an engine starts, as the host holds them: the tenant's call-id counter and the queue
//! a tick fills. Both the wasm store (whose imports start calls) and the native driver use them.
//!
//! Who numbers the calls depends on the engine: the host, from [`CallIds`], for a WIT 0.2.0
//! component and the native engine ([`CallQueue::try_start`]); the engine itself for a 0.3.0
//! component ([`CallQueue::try_start_numbered`]), in which case [`CallIds`] only mirrors the
//! engine's counter (what replays and swaps compare) and an id that is not above the previous
//! ones is refused.
//!
//! The queue lives outside the guest's memory limit, so it has limits of its own
//! ([`QueueLimits`]): calls started, Events recorded and their encoded bytes per export call. An
//! engine that goes past one is refused the call that crossed it and everything after it (the
//! wasm import traps the guest; the native driver poisons its engine), and what it queued is
//! dropped with the failed export call: the host stays bounded whatever the engine does.

use difftracker_engine::io::{Call, CallId, Io, KubeEventRecord};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The tenant's call-id counter. Shared by every instance the tenant runs (clones share it), so
/// ids stay unique for the tenant's lifetime across snapshot/restore and hot swap.
#[derive(Clone, Debug)]
pub struct CallIds(Arc<AtomicU64>);

impl Default for CallIds {
    fn default() -> Self {
        CallIds::starting_at(1)
    }
}

impl CallIds {
    pub fn starting_at(first: CallId) -> Self {
        CallIds(Arc::new(AtomicU64::new(first)))
    }
    pub fn allocate(&self) -> CallId {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    /// The id the next call will get.
    pub fn peek(&self) -> CallId {
        self.0.load(Ordering::Relaxed)
    }
    /// Sets the id the next call will get. Only for trap recovery, which replays a deterministic
    /// log of inputs from a snapshot: rewound to the snapshot's next id, the replay allocates
    /// exactly the ids the calls in flight already carry.
    pub fn set_next(&self, next: CallId) {
        self.0.store(next, Ordering::Relaxed)
    }
}

/// What one export call (one `tick`, one `deliver`) may queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Calls started (100,000).
    pub max_calls: usize,
    /// Kubernetes Events recorded (10,000).
    pub max_events: usize,
    /// Bytes of the calls and Events queued, as JSON (256 MiB).
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { max_calls: 100_000, max_events: 10_000, max_bytes: 256 << 20 }
    }
}

/// An engine went past a [`QueueLimits`] limit in one export call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueOverflow {
    #[error("the engine started more than {limit} calls in one guest call (sandbox limit max_calls_per_tick)")]
    Calls { limit: usize },
    #[error("the engine recorded more than {limit} Events in one guest call (sandbox limit max_events_per_tick)")]
    Events { limit: usize },
    #[error(
        "the calls and Events the engine queued in one guest call exceed {limit} bytes (sandbox limit \
         max_output_bytes_per_tick)"
    )]
    Bytes { limit: usize },
    /// A 0.3.0 engine numbered a call with an id it (or the instance it was restored from) had
    /// already used or skipped past: it could be the id of a call in flight.
    #[error("the engine numbered a call {id}, but its next id is {next}: call ids must increase (WIT 0.3.0)")]
    IdReused { id: CallId, next: CallId },
}

/// What the engine started during one export call: `(id, call)` pairs in start order, and the
/// Kubernetes Events it recorded, within [`QueueLimits`].
#[derive(Debug, Default)]
pub struct CallQueue {
    ids: CallIds,
    limits: QueueLimits,
    started: Vec<(CallId, Call)>,
    events: Vec<KubeEventRecord>,
    bytes: usize,
    /// The first limit crossed since the last [`CallQueue::take`].
    overflow: Option<QueueOverflow>,
}

impl CallQueue {
    pub fn new(ids: CallIds) -> Self {
        CallQueue::with_limits(ids, QueueLimits::default())
    }

    pub fn with_limits(ids: CallIds, limits: QueueLimits) -> Self {
        CallQueue { ids, limits, started: Vec::new(), events: Vec::new(), bytes: 0, overflow: None }
    }

    /// Everything queued since the last call, and the queue emptied for the next export call.
    pub fn take(&mut self) -> (Vec<(CallId, Call)>, Vec<KubeEventRecord>) {
        self.bytes = 0;
        self.overflow = None;
        (std::mem::take(&mut self.started), std::mem::take(&mut self.events))
    }

    pub fn ids(&self) -> &CallIds {
        &self.ids
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// The limit crossed since the last [`CallQueue::take`], if any.
    pub fn overflow(&self) -> Option<&QueueOverflow> {
        self.overflow.as_ref()
    }

    /// Queues a call and allocates its id, or refuses it past a limit (allocating nothing). Once
    /// a limit is crossed everything is refused until [`CallQueue::take`]; the driver then drops
    /// what was queued with the failed export call.
    pub fn try_start(&mut self, call: Call) -> Result<CallId, QueueOverflow> {
        self.admit(self.started.len() >= self.limits.max_calls, QueueOverflow::Calls { limit: self.limits.max_calls }, &call)?;
        let id = self.ids.allocate();
        self.started.push((id, call));
        Ok(id)
    }

    /// Queues a call numbered `id` by the engine (WIT 0.3.0), or refuses it past a limit or when
    /// `id` is below the counter's next id; the counter then moves past `id`.
    pub fn try_start_numbered(&mut self, id: CallId, call: Call) -> Result<(), QueueOverflow> {
        let next = self.ids.peek();
        if id < next || id == 0 {
            let refused = QueueOverflow::IdReused { id, next };
            self.overflow.get_or_insert_with(|| refused.clone());
            return Err(refused);
        }
        self.admit(self.started.len() >= self.limits.max_calls, QueueOverflow::Calls { limit: self.limits.max_calls }, &call)?;
        self.ids.set_next(id.saturating_add(1));
        self.started.push((id, call));
        Ok(())
    }

    /// Queues an Event, or refuses it past a limit (see [`CallQueue::try_start`]).
    pub fn try_record_event(&mut self, event: KubeEventRecord) -> Result<(), QueueOverflow> {
        self.admit(self.events.len() >= self.limits.max_events, QueueOverflow::Events { limit: self.limits.max_events }, &event)?;
        self.events.push(event);
        Ok(())
    }

    fn admit(&mut self, full: bool, overflow: QueueOverflow, item: &impl serde::Serialize) -> Result<(), QueueOverflow> {
        if let Some(earlier) = &self.overflow {
            return Err(earlier.clone());
        }
        let bytes = if full { 0 } else { encoded_len(item) };
        let over = if full {
            Some(overflow)
        } else if self.bytes.saturating_add(bytes) > self.limits.max_bytes {
            Some(QueueOverflow::Bytes { limit: self.limits.max_bytes })
        } else {
            None
        };
        if let Some(over) = over {
            self.overflow = Some(over.clone());
            return Err(over);
        }
        self.bytes += bytes;
        Ok(())
    }
}

impl Io for CallQueue {
    /// A call past a limit is dropped and gets id 0; the driver sees [`CallQueue::overflow`].
    fn start(&mut self, call: Call) -> CallId {
        self.try_start(call).unwrap_or(0)
    }
    fn record_event(&mut self, event: KubeEventRecord) {
        let _ = self.try_record_event(event);
    }
}

/// Bytes of `value` as JSON, counted without building the text.
fn encoded_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use difftracker_engine::io::{CloudCall, EventType, ObjectKind, ObjectRef};

    fn pip(name: &str) -> Call {
        Call::Cloud(CloudCall::PutPublicIp { name: name.into(), version: difftracker_engine::io::IpVersion::V4 })
    }

    fn event(message: &str) -> KubeEventRecord {
        KubeEventRecord {
            target: ObjectRef { namespace: "ns".into(), name: "svc".into(), uid: "u".into() },
            kind: ObjectKind::Service,
            event_type: EventType::Warning,
            reason: "R".into(),
            message: message.into(),
        }
    }

    #[test]
    fn calls_past_the_cap_are_refused_and_allocate_no_id() {
        let ids = CallIds::default();
        let mut q = CallQueue::with_limits(ids.clone(), QueueLimits { max_calls: 2, ..QueueLimits::default() });
        assert_eq!(q.try_start(pip("a")), Ok(1));
        assert_eq!(q.try_start(pip("b")), Ok(2));
        assert_eq!(q.try_start(pip("c")), Err(QueueOverflow::Calls { limit: 2 }));
        assert_eq!(ids.peek(), 3, "a refused call allocates no id");
        assert_eq!(q.overflow(), Some(&QueueOverflow::Calls { limit: 2 }));
        // Refused until the queue is taken, then a fresh export call starts from zero.
        assert!(q.try_record_event(event("m")).is_err());
        let (started, events) = q.take();
        assert_eq!((started.len(), events.len()), (2, 0));
        assert_eq!(q.overflow(), None);
        assert_eq!(q.try_start(pip("d")), Ok(3));
    }

    #[test]
    fn engine_numbered_calls_move_the_counter_and_a_reused_id_is_refused() {
        let ids = CallIds::starting_at(10);
        let mut q = CallQueue::new(ids.clone());
        q.try_start_numbered(10, pip("a")).unwrap();
        q.try_start_numbered(12, pip("b")).unwrap();
        assert_eq!(ids.peek(), 13, "the counter mirrors the engine's");
        assert_eq!(q.try_start_numbered(11, pip("c")), Err(QueueOverflow::IdReused { id: 11, next: 13 }));
        assert!(q.overflow().is_some(), "the driver sees the refusal and drops the guest call");
        assert_eq!(q.take().0.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![10, 12]);
        assert!(q.try_start_numbered(0, pip("d")).is_err(), "0 is never an id");
    }

    #[test]
    fn events_past_the_cap_are_refused() {
        let mut q = CallQueue::with_limits(CallIds::default(), QueueLimits { max_events: 3, ..QueueLimits::default() });
        for _ in 0..3 {
            q.try_record_event(event("m")).unwrap();
        }
        assert_eq!(q.try_record_event(event("m")), Err(QueueOverflow::Events { limit: 3 }));
        assert_eq!(q.take().1.len(), 3);
    }

    #[test]
    fn bytes_past_the_cap_are_refused() {
        let mut q = CallQueue::with_limits(CallIds::default(), QueueLimits { max_bytes: 10_000, ..QueueLimits::default() });
        q.try_start(pip(&"x".repeat(4_000))).unwrap();
        q.try_record_event(event(&"y".repeat(4_000))).unwrap();
        assert_eq!(q.try_start(pip(&"z".repeat(4_000))), Err(QueueOverflow::Bytes { limit: 10_000 }));
        assert!(encoded_len(&pip("x")) > 1);
    }

    #[test]
    fn the_io_port_drops_what_is_past_the_cap() {
        let mut q = CallQueue::with_limits(CallIds::default(), QueueLimits { max_calls: 1, max_events: 1, ..QueueLimits::default() });
        assert_eq!(Io::start(&mut q, pip("a")), 1);
        assert_eq!(Io::start(&mut q, pip("b")), 0);
        Io::record_event(&mut q, event("m"));
        assert!(q.overflow().is_some());
        let (started, events) = q.take();
        assert_eq!((started.len(), events.len()), (1, 0));
    }
}
