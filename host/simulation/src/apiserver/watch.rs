//! What a watch sends, decided without I/O: which logged events a watcher sees through its
//! namespace and selectors (an object that starts matching arrives as `ADDED`, one that stops
//! matching as `DELETED`, as the API server's watch cache does), and the JSON lines of events,
//! bookmarks and errors. The HTTP face ([`super::http`]) streams them.

use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, EventType, Kind, LoggedEvent};
use serde_json::{json, Value};

/// The namespace and selectors of one watch.
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub label_selector: Option<LabelSelector>,
    pub field_selector: Option<FieldSelector>,
}

impl WatchFilter {
    pub fn matches(&self, object: &Value) -> bool {
        let ns_ok =
            self.namespace.as_deref().is_none_or(|ns| object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("") == ns);
        ns_ok
            && self.label_selector.as_ref().is_none_or(|s| s.matches(object))
            && self.field_selector.as_ref().is_none_or(|s| s.matches(object))
    }

    /// The event this watcher sees for a logged change, if any.
    pub fn translate<'a>(&self, event: &'a LoggedEvent) -> Option<(EventType, &'a Value)> {
        let now = self.matches(&event.object);
        let before = event.prev.as_ref().is_some_and(|p| self.matches(p));
        match event.event_type {
            EventType::Added => now.then_some((EventType::Added, &event.object)),
            EventType::Deleted => before.then_some((EventType::Deleted, &event.object)),
            EventType::Modified => match (before, now) {
                (true, true) => Some((EventType::Modified, &event.object)),
                (false, true) => Some((EventType::Added, &event.object)),
                (true, false) => Some((EventType::Deleted, &event.object)),
                (false, false) => None,
            },
        }
    }
}

/// One watch event as a line of the stream.
pub fn event_line(event_type: &str, object: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line
}

/// A `BOOKMARK` at `rv`: an object of the kind with only its `resourceVersion`.
pub fn bookmark_line(kind: Kind, rv: u64) -> Vec<u8> {
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.info().kind, "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

/// An `ERROR` event carrying `error`'s Status (a `410 Expired` for a watch from too old a
/// resourceVersion).
pub fn error_line(error: &ApiError) -> Vec<u8> {
    event_line("ERROR", &error.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: EventType, prev: Option<Value>, now: Value) -> LoggedEvent {
        LoggedEvent { rv: 1, kind: Kind::Service, event_type: t, object: now, prev }
    }

    fn obj(app: &str) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns1", "labels": {"app": app}}})
    }

    #[test]
    fn objects_entering_and_leaving_a_selector_arrive_as_added_and_deleted() {
        let f = WatchFilter { label_selector: Some(LabelSelector::parse("app=web").unwrap()), ..Default::default() };
        let t = |e: LoggedEvent| f.translate(&e).map(|(t, _)| t);
        assert_eq!(t(ev(EventType::Modified, Some(obj("db")), obj("web"))), Some(EventType::Added));
        assert_eq!(t(ev(EventType::Modified, Some(obj("web")), obj("db"))), Some(EventType::Deleted));
        assert_eq!(t(ev(EventType::Modified, Some(obj("web")), obj("web"))), Some(EventType::Modified));
        assert_eq!(t(ev(EventType::Modified, Some(obj("db")), obj("db"))), None);
        assert_eq!(t(ev(EventType::Added, None, obj("db"))), None);
        assert_eq!(t(ev(EventType::Deleted, Some(obj("web")), obj("web"))), Some(EventType::Deleted));
        let other_ns = WatchFilter { namespace: Some("ns2".into()), ..Default::default() };
        assert!(other_ns.translate(&ev(EventType::Added, None, obj("web"))).is_none());
    }

    #[test]
    fn bookmarks_and_errors_are_watch_events() {
        let b: Value = serde_json::from_slice(&bookmark_line(Kind::Lease, 7)).unwrap();
        assert_eq!(
            b,
            json!({"type": "BOOKMARK", "object": {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": {"resourceVersion": "7"}}})
        );
        let e: Value = serde_json::from_slice(&error_line(&ApiError::expired("too old"))).unwrap();
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(e["object"]["reason"], "Expired");
    }
}
