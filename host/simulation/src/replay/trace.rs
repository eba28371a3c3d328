//! The trace reader: Kubernetes watch events as `kubectl get ... --watch --output-watch-events -o
//! json` prints them (pretty-printed objects one after the other), or one per line (JSON Lines),
//! several watches possibly appended into one file.
//!
//! Each entry is `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}, "at_ms": N}` with an
//! optional `at_ms` (milliseconds from the start of the trace). Order and timing:
//!
//! - When entries carry `at_ms`, an entry without it comes [`DEFAULT_EVENT_SPACING_MS`] after the
//!   previous one, and the events are ordered by time (a stable sort: entries of the same time
//!   keep their file order), so appended watches that carry `at_ms` interleave as they happened.
//! - When no entry carries `at_ms` (a plain kubectl recording) and every object has a numeric
//!   `metadata.resourceVersion`, the events are ordered by resourceVersion (stable), then spaced
//!   [`DEFAULT_EVENT_SPACING_MS`] apart. The API server's resourceVersions are one cluster-wide
//!   sequence (the etcd revision), so several watches recorded at the same time and appended into
//!   one file (`kubectl get svc ... >> t; kubectl get endpointslices ... >> t`) interleave as
//!   they happened.
//! - Otherwise, file order, 100 ms apart.
//!
//! Also accepted, for convenience: a bare object (`kubectl get -o json` without
//! `--output-watch-events`), read as ADDED, and a `List` (`kubectl get -o json` of several
//! objects), whose items are read as ADDED.
//!
//! Objects of kinds the engine does not watch, and `BOOKMARK`/`ERROR` watch events, are skipped
//! and counted. Malformed input is a [`TraceError`] naming the line and what is wrong.

use difftracker_runtime::k8s::{KubeObject, WatchEventType};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Spacing of events that carry no `at_ms`.
pub const DEFAULT_EVENT_SPACING_MS: u64 = 100;

/// One event of a trace, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEvent {
    /// 1-based line of the trace where the event begins.
    pub line: usize,
    /// Milliseconds from the start of the trace.
    pub at_ms: u64,
    pub event_type: WatchEventType,
    pub object: KubeObject,
    /// `metadata.resourceVersion`, when it is a number.
    pub resource_version: Option<u64>,
}

/// How a trace's events were put in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TraceOrder {
    /// By `at_ms`.
    AtMs,
    /// By resourceVersion (no `at_ms` anywhere).
    ResourceVersion,
    /// As in the file.
    #[default]
    File,
}

impl TraceOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceOrder::AtMs => "at_ms",
            TraceOrder::ResourceVersion => "resourceVersion",
            TraceOrder::File => "file",
        }
    }
}

/// A parsed trace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// In time order.
    pub events: Vec<TraceEvent>,
    /// What was skipped, by object kind (or `watch BOOKMARK` / `watch ERROR`), with counts.
    pub skipped: BTreeMap<String, u64>,
    pub order: TraceOrder,
}

impl Trace {
    /// The time of the last event (0 for an empty trace).
    pub fn end_ms(&self) -> u64 {
        self.events.last().map(|e| e.at_ms).unwrap_or(0)
    }
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// Malformed trace input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, when the JSON itself is broken.
    pub column: Option<usize>,
    pub message: String,
}

/// A trace error describes the problem and may quote the input, but never more than this many
/// characters (then `…`): a multi-megabyte string in the wrong place is not echoed into a terminal.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1000;

impl TraceError {
    fn new(line: usize, column: Option<usize>, message: &str) -> TraceError {
        TraceError { line, column, message: difftracker_runtime::tenant::short(message, MAX_ERROR_MESSAGE_CHARS) }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(c) => write!(f, "line {} column {}: {}", self.line, c, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for TraceError {}

/// Reads and parses a trace file; errors name the file, the line and what is wrong.
pub fn read_trace(path: &Path) -> anyhow::Result<Trace> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read trace {}: {e}", path.display()))?;
    parse_trace(&bytes).map_err(|e| anyhow::anyhow!("trace {}: {e}", path.display()))
}

/// Counts lines incrementally while walking forward through the input.
struct LineCounter<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a [u8]) -> Self {
        LineCounter { text, pos: 0, line: 1 }
    }
    /// The line of byte `offset` (offsets must not go backwards).
    fn line_at(&mut self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        if end > self.pos {
            self.line += self.text[self.pos..end].iter().filter(|&&b| b == b'\n').count();
            self.pos = end;
        }
        self.line
    }
}

/// Parses a whole trace. Never panics: every problem is a [`TraceError`].
pub fn parse_trace(text: &[u8]) -> Result<Trace, TraceError> {
    let mut trace = Trace::default();
    let mut lines = LineCounter::new(text);
    let mut stream = serde_json::Deserializer::from_slice(text).into_iter::<Value>();
    let mut previous_end = 0usize;
    let mut clock: Option<u64> = None;
    let mut any_at_ms = false;
    let mut events = Vec::new();
    loop {
        let item = stream.next();
        let Some(item) = item else { break };
        let value = match item {
            Ok(v) => v,
            Err(e) => {
                let start = previous_end + text[previous_end..].iter().take_while(|b| b.is_ascii_whitespace()).count();
                return Err(json_error(&e, lines.line_at(start)));
            }
        };
        let end = stream.byte_offset();
        let start = previous_end + text[previous_end..end].iter().take_while(|b| b.is_ascii_whitespace()).count();
        previous_end = end;
        let line = lines.line_at(start);
        let at = |message: String| TraceError::new(line, None, &message);
        let entries = entries_of(&value).map_err(at)?;
        for entry in entries {
            match entry {
                TraceItem::Skip(what) => *trace.skipped.entry(what).or_insert(0) += 1,
                TraceItem::Event { event_type, object: raw, at_ms } => {
                    let object = match KubeObject::from_json(raw).map_err(at)? {
                        Some(o) => o,
                        None => {
                            let kind = raw.get("kind").and_then(Value::as_str).unwrap_or("?").to_string();
                            *trace.skipped.entry(kind).or_insert(0) += 1;
                            continue;
                        }
                    };
                    let time = match at_ms {
                        Some(t) => t,
                        None => clock.map(|c| c.saturating_add(DEFAULT_EVENT_SPACING_MS)).unwrap_or(0),
                    };
                    any_at_ms |= at_ms.is_some();
                    clock = Some(time);
                    let resource_version = raw
                        .get("metadata")
                        .and_then(|m| m.get("resourceVersion"))
                        .and_then(Value::as_str)
                        .and_then(|rv| rv.parse::<u64>().ok());
                    events.push(TraceEvent { line, at_ms: time, event_type, object, resource_version });
                }
            }
        }
    }
    if any_at_ms {
        // Stable: events of the same time keep their order in the file.
        events.sort_by_key(|e| e.at_ms);
        trace.order = TraceOrder::AtMs;
    } else if !events.is_empty() && events.iter().all(|e| e.resource_version.is_some()) {
        events.sort_by_key(|e| e.resource_version);
        for (i, e) in events.iter_mut().enumerate() {
            e.at_ms = i as u64 * DEFAULT_EVENT_SPACING_MS;
        }
        trace.order = TraceOrder::ResourceVersion;
    } else {
        trace.order = TraceOrder::File;
    }
    trace.events = events;
    Ok(trace)
}

enum TraceItem<'v> {
    Skip(String),
    Event { event_type: WatchEventType, object: &'v Value, at_ms: Option<u64> },
}

fn entries_of(value: &Value) -> Result<Vec<TraceItem<'_>>, String> {
    let obj = match value {
        Value::Object(o) => o,
        other => {
            return Err(format!(
                "expected a watch event object {{\"type\": ..., \"object\": {{...}}}}, found {}",
                difftracker_runtime::k8s::json_type_name(other)
            ))
        }
    };
    let at_ms = match obj.get("at_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| format!("\"at_ms\" must be a non-negative integer of milliseconds, found {v}"))?),
    };
    if obj.contains_key("object") || (obj.contains_key("type") && !obj.contains_key("kind")) {
        // A watch event.
        let t = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(other) => return Err(format!("\"type\" must be a string, found {}", difftracker_runtime::k8s::json_type_name(other))),
            None => return Err("watch event has no \"type\"".into()),
        };
        let Some(object) = obj.get("object") else {
            return Err(format!("{t} watch event has no \"object\""));
        };
        let event_type = match WatchEventType::parse(t) {
            Some(et) => et,
            None if t == "BOOKMARK" || t == "ERROR" => return Ok(vec![TraceItem::Skip(format!("watch {t}"))]),
            None => return Err(format!("unknown watch event type {t:?} (expected ADDED, MODIFIED or DELETED)")),
        };
        if !object.is_object() {
            return Err(format!(
                "{t} watch event: \"object\" must be a Kubernetes object, found {}",
                difftracker_runtime::k8s::json_type_name(object)
            ));
        }
        return Ok(vec![TraceItem::Event { event_type, object, at_ms }]);
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(kind) if kind.ends_with("List") && obj.contains_key("items") => {
            let items = match obj.get("items") {
                Some(Value::Array(items)) => items,
                Some(Value::Null) => return Ok(Vec::new()),
                Some(other) => {
                    return Err(format!("{kind}: \"items\" must be an array, found {}", difftracker_runtime::k8s::json_type_name(other)))
                }
                None => return Ok(Vec::new()),
            };
            let item_kind = kind.strip_suffix("List").unwrap_or("");
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if item_kind.is_empty() || item.get("kind").is_some() {
                    out.push(TraceItem::Event { event_type: WatchEventType::Added, object: item, at_ms });
                } else if item_kind == "Service" || item_kind == "EndpointSlice" || item_kind == "Node" || item_kind == "Pod" {
                    // Typed lists from the API leave `kind` out of their items.
                    return Err(format!("{kind}: items carry no \"kind\"; print the list with kubectl (it sets it) or add it"));
                } else {
                    out.push(TraceItem::Skip(item_kind.to_string()));
                }
            }
            Ok(out)
        }
        Some(_) => Ok(vec![TraceItem::Event { event_type: WatchEventType::Added, object: value, at_ms }]),
        None => {
            Err("expected a watch event {\"type\": ..., \"object\": {...}} or a Kubernetes object; found an object with neither".into())
        }
    }
}

/// `start_line`: where the entry being read begins.
fn json_error(e: &serde_json::Error, start_line: usize) -> TraceError {
    let full = e.to_string();
    // serde_json appends " at line L column C"; the position is reported separately.
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    if e.classify() == serde_json::error::Category::Eof {
        // The position is the end of the input; the useful line is where the entry began.
        let message =
            format!("truncated JSON: the entry that begins here is cut off at line {} column {} ({message})", e.line(), e.column());
        return TraceError::new(start_line, None, &message);
    }
    TraceError::new(e.line().max(1), Some(e.column().max(1)), &format!("malformed JSON: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"ns","uid":"u1"},"spec":{"type":"LoadBalancer","ports":[{"port":80,"protocol":"TCP"}]}}"#;

    #[test]
    fn reads_json_lines_with_and_without_at_ms() {
        let text = format!(
            "{{\"type\":\"ADDED\",\"object\":{SVC}}}\n{{\"type\":\"MODIFIED\",\"object\":{SVC}}}\n{{\"type\":\"DELETED\",\"object\":{SVC},\"at_ms\":5000}}\n{{\"type\":\"ADDED\",\"object\":{SVC}}}\n"
        );
        let t = parse_trace(text.as_bytes()).unwrap();
        let times: Vec<u64> = t.events.iter().map(|e| e.at_ms).collect();
        assert_eq!(times, vec![0, 100, 5000, 5100]);
        let lines: Vec<usize> = t.events.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4]);
        assert_eq!(t.events[2].event_type, WatchEventType::Deleted);
        assert!(t.skipped.is_empty());
    }

    #[test]
    fn reads_pretty_printed_concatenated_watches_as_kubectl_prints_them() {
        let text = r#"{
    "object": {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1", "uid": "n1-uid"},
        "status": {"addresses": [{"address": "10.0.0.4", "type": "InternalIP"}]}
    },
    "type": "ADDED"
}
{
    "object": {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm"}
    },
    "type": "ADDED"
}
{
    "object": {"kind": "Status", "apiVersion": "v1", "code": 410},
    "type": "ERROR"
}
{
    "type": "ADDED",
    "object": {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "a", "namespace": "ns", "uid": "u1"}
    }
}
"#;
        let t = parse_trace(text.as_bytes()).unwrap();
        assert_eq!(t.events.len(), 2);
        assert_eq!(t.events[0].line, 1);
        assert_eq!(t.events[0].object.kind(), "Node");
        assert_eq!(t.events[1].line, 22);
        assert_eq!(t.events[1].at_ms, 100);
        assert_eq!(t.skipped.get("ConfigMap"), Some(&1));
        assert_eq!(t.skipped.get("watch ERROR"), Some(&1));
        assert_eq!(t.skipped_total(), 2);
    }

    #[test]
    fn appended_watches_with_at_ms_interleave_by_time() {
        let text = format!(
            "{{\"type\":\"ADDED\",\"object\":{SVC},\"at_ms\":0}}\n{{\"type\":\"DELETED\",\"object\":{SVC},\"at_ms\":300}}\n\
             {{\"type\":\"ADDED\",\"object\":{{\"kind\":\"Node\",\"metadata\":{{\"name\":\"n\"}}}},\"at_ms\":200}}\n"
        );
        let t = parse_trace(text.as_bytes()).unwrap();
        let kinds: Vec<&str> = t.events.iter().map(|e| e.object.kind()).collect();
        assert_eq!(kinds, vec!["Service", "Node", "Service"]);
        assert_eq!(t.end_ms(), 300);
    }

    #[test]
    fn appended_kubectl_watches_interleave_by_resource_version() {
        let svc = |rv: u32, t: &str| {
            format!("{{\n  \"object\": {{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {{\"name\": \"a\", \"resourceVersion\": \"{rv}\"}}}},\n  \"type\": \"{t}\"\n}}\n")
        };
        let slice = |rv: u32| {
            format!("{{\n  \"object\": {{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\", \"metadata\": {{\"name\": \"a-x\", \"resourceVersion\": \"{rv}\"}}}},\n  \"type\": \"ADDED\"\n}}\n")
        };
        let text = format!("{}{}{}{}", svc(10, "ADDED"), svc(30, "DELETED"), slice(20), slice(40));
        let t = parse_trace(text.as_bytes()).unwrap();
        assert_eq!(t.order, TraceOrder::ResourceVersion);
        let seen: Vec<(u64, Option<u64>, usize)> = t.events.iter().map(|e| (e.at_ms, e.resource_version, e.line)).collect();
        assert_eq!(seen, vec![(0, Some(10), 1), (100, Some(20), 9), (200, Some(30), 5), (300, Some(40), 13)]);
        // One object without a numeric resourceVersion: file order.
        let text = format!(
            "{}{}{{\"type\":\"ADDED\",\"object\":{{\"kind\":\"Node\",\"metadata\":{{\"name\":\"n\"}}}}}}",
            svc(10, "ADDED"),
            slice(5)
        );
        let t = parse_trace(text.as_bytes()).unwrap();
        assert_eq!(t.order, TraceOrder::File);
        assert_eq!(t.events[1].resource_version, Some(5));
        assert_eq!(t.events[1].at_ms, 100);
    }

    #[test]
    fn lists_and_bare_objects_read_as_added() {
        let text = format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{SVC},{{\"kind\":\"Secret\"}}]}}\n{SVC}");
        let t = parse_trace(text.as_bytes()).unwrap();
        assert_eq!(t.events.len(), 2);
        assert!(t.events.iter().all(|e| e.event_type == WatchEventType::Added));
        assert_eq!(t.skipped.get("Secret"), Some(&1));
        assert_eq!(t.events[1].line, 2);
    }

    #[test]
    fn empty_input_is_an_empty_trace() {
        assert_eq!(parse_trace(b"").unwrap(), Trace::default());
        assert_eq!(parse_trace(b"  \n\n").unwrap(), Trace::default());
    }

    fn err(text: &str) -> TraceError {
        parse_trace(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn malformed_input_names_the_line_and_the_problem() {
        let good = format!("{{\"type\":\"ADDED\",\"object\":{SVC}}}\n");
        let e = err(&format!("{good}{good}{{\"type\":\"ADDED\",\"object\":{{\"kind\":\"Service\",}}}}\n"));
        assert_eq!(e.line, 3);
        assert!(e.message.starts_with("malformed JSON"), "{e}");
        assert!(e.column.is_some());

        let e = err(&format!("{good}{{\"type\":\"ADDED\",\n\"object\":{{"));
        assert_eq!(e.line, 2);
        assert!(e.message.starts_with("truncated JSON"), "{e}");

        let e = err(&format!("{good}{good}{good}{{\"type\":\"REMOVED\",\"object\":{SVC}}}"));
        assert_eq!(e.line, 4);
        assert!(e.message.contains("unknown watch event type \"REMOVED\""), "{e}");
        assert_eq!(e.to_string(), format!("line 4: {}", e.message));

        let e = err("\n\n{\"type\":\"ADDED\"}");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("no \"object\""), "{e}");

        let e = err(&format!("{{\"type\":\"ADDED\",\"object\":{SVC},\"at_ms\":-5}}"));
        assert!(e.message.contains("at_ms"), "{e}");

        let e = err(r#"{"type":"ADDED","object":{"kind":"Service","metadata":{"name":"x"},"spec":{"ports":[{"port":"80"}]}}}"#);
        assert_eq!(e.line, 1);
        assert!(e.message.starts_with("Service x: invalid type"), "{e}");

        let e = err("[1,2]");
        assert!(e.message.contains("found an array"), "{e}");
        let e = err("{\"type\":\"ADDED\",\"object\":\"svc\"}");
        assert!(e.message.contains("found a string"), "{e}");
        let e = err("{\"foo\":1}");
        assert!(e.message.contains("neither"), "{e}");
        let e = err("{\"type\":\"ADDED\",\"object\":{\"metadata\":{}}}");
        assert!(e.message.contains("no \"kind\""), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 7u64;
        let alphabet = b"{}[]\":,0123456789abcdeADMOtypobjectkindServiceat_ms \n\\-.";
        for _ in 0..2000 {
            let len = (seed % 80) as usize;
            let mut s = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                s.push(alphabet[((seed >> 33) % alphabet.len() as u64) as usize]);
            }
            let _ = parse_trace(&s);
        }
        let _ = parse_trace(&[0xff, 0xfe, b'{']);
    }

    #[test]
    fn an_error_quotes_at_most_a_bounded_part_of_the_input() {
        let huge = "9".repeat(1 << 20);
        for text in [
            format!("{{\"type\":\"ADDED\",\"object\":{SVC},\"at_ms\":\"{huge}\"}}"),
            format!("{{\"type\":\"{huge}\",\"object\":{SVC}}}"),
            format!("{{\"type\":\"ADDED\",\"object\":{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"{huge}\"}},\"spec\":{{\"ports\":[{{\"port\":\"{huge}\"}}]}}}}}}"),
        ] {
            let e = err(&text);
            assert_eq!(e.line, 1);
            assert!(e.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS + 1, "a {}-character message", e.message.len());
            assert!(e.message.ends_with('…'), "{}", &e.message[..80]);
        }
    }
}
