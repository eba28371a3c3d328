//! `difftracker explain`'s words: the few lines that say why a Service or egress identity is
//! where it is, from one entry of an `operations` map (the replay report's section, or a running
//! host's `/operations` answer; see [`entry`] for the shape). The CLI command
//! (host/cli/src/commands/explain.rs) only finds the map and prints.

use crate::replay::timeline::CallSummary;
use anyhow::{bail, Context, Result};
use difftracker_engine::io::OperationStatus;
use serde_json::Value;

/// One entry of an `operations` map: the engine's [`OperationStatus`] (without its identity,
/// which is the key) and, when the host saw them, the calls made for it under `calls`.
pub fn entry(op: &OperationStatus, calls: Option<&CallSummary>) -> Value {
    let mut v = serde_json::to_value(op).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("identity");
        if let Some(c) = calls {
            m.insert("calls".into(), serde_json::to_value(c).unwrap_or_default());
        }
    }
    v
}

/// The entry for `who`: an identity (any case), a UID, or `namespace/name`.
pub fn find(operations: &Value, who: &str) -> Result<(String, Value)> {
    let ops = operations.as_object().context("`operations` is not an object")?;
    let lower = who.to_ascii_lowercase();
    if let Some(op) = ops.get(&lower) {
        return Ok((lower, op.clone()));
    }
    let matches: Vec<(&String, &Value)> = ops
        .iter()
        .filter(|(_, op)| {
            let ns = op["namespace"].as_str().unwrap_or("");
            let name = op["name"].as_str().unwrap_or("");
            !name.is_empty() && (format!("{ns}/{name}") == who || (!who.contains('/') && name == who))
        })
        .collect();
    match matches.as_slice() {
        [(id, op)] => Ok(((*id).clone(), (*op).clone())),
        [] => bail!("no Service or egress identity `{who}` is known here (give namespace/name, a UID or an identity)"),
        many => bail!(
            "`{who}` names {} operations: {}; give namespace/name or the UID",
            many.len(),
            many.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn ms(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) if ms >= 60_000 => format!("{}m{:02}.{:03}s", ms / 60_000, (ms % 60_000) / 1000, ms % 1000),
        Some(ms) => format!("{}.{:03}s", ms / 1000, ms % 1000),
        None => "?".into(),
    }
}

/// What one state means, in the words of docs/ENGINE.md 4.1.
pub fn state_meaning(state: &str) -> &'static str {
    match state {
        "not_started" => "tracked, its create not started yet (or parked after a failure)",
        "creation_in_progress" => "its create is being applied to the cloud",
        "created" => "created in the cloud and up to date",
        "deletion_pending" => "deleted in Kubernetes; its cloud deletion is waiting to start",
        "deletion_in_progress" => "its cloud deletion is running",
        "update_in_progress" => "a change of its spec is being applied to the cloud",
        "not_tracked" => "no longer tracked by the engine (deleted, its cleanup finished)",
        _ => "a state the engine does not know (every entry point treats it as a no-op)",
    }
}

/// The few lines of `explain` for one entry of `operations`.
pub fn explain(id: &str, op: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    let state = op["state"].as_str().unwrap_or("unknown");
    let kind = op["kind"].as_str().unwrap_or("");
    let (ns, name) = (op["namespace"].as_str().unwrap_or(""), op["name"].as_str().unwrap_or(""));
    let who = match (kind, name) {
        ("outbound", _) => format!("egress identity {id}"),
        (_, "") => format!("identity {id}"),
        _ => format!("Service {ns}/{name} (UID {id})"),
    };
    lines.push(format!("{who}: {state} — {}", state_meaning(state)));
    let calls = &op["calls"];
    let total = calls["calls"].as_u64().unwrap_or(0);
    let history = match &calls["last_call"] {
        Value::Object(_) => format!(
            "history: {total} call(s) for it, {} failed; the last: {} at {} → {}",
            calls["failed"].as_u64().unwrap_or(0),
            calls["last_call"]["call"].as_str().unwrap_or("?"),
            ms(&calls["last_call"]["at_ms"]),
            calls["last_call"]["result"].as_str().unwrap_or("?"),
        ),
        _ => format!("history: {total} call(s) for it"),
    };
    lines.push(history);
    if let Value::Object(e) = &calls["last_error"] {
        let result = e.get("result").and_then(Value::as_str).unwrap_or("");
        let (status, code) = result.split_once(' ').unwrap_or((result, ""));
        let code = if code.is_empty() { "none".to_string() } else { code.to_string() };
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        lines.push(format!(
            "last error: {} at {}: HTTP {status}, ARM code {code}{}",
            e.get("call").and_then(Value::as_str).unwrap_or("?"),
            ms(e.get("at_ms").unwrap_or(&Value::Null)),
            if message.is_empty() { String::new() } else { format!(": {message}") }
        ));
    } else {
        lines.push("last error: none".to_string());
    }
    if state != "not_tracked" {
        let retries = op["retry_count"].as_u64().unwrap_or(0);
        let cause = if op["terminal"] == true {
            "a terminal error: no retry until the spec changes".to_string()
        } else if op["retries_exhausted"] == true {
            "the retry budget ran out: parked until the cooldown re-arms it".to_string()
        } else if retries > 0 {
            format!("{retries} failed attempt(s) in this burst")
        } else {
            "no failed attempt in this burst".to_string()
        };
        let next = match op["next_retry_at_ms"].as_u64() {
            Some(_) => format!("next retry: at {} ({cause})", ms(&op["next_retry_at_ms"])),
            None => format!("next retry: none scheduled ({cause})"),
        };
        lines.push(next);
        let waiting = op["waiting_for"].as_str().unwrap_or("");
        lines.push(format!("waiting for: {}", if waiting.is_empty() { "nothing" } else { waiting }));
        let buffered = op["buffered_endpoints"].as_u64().unwrap_or(0);
        if buffered > 0 {
            lines.push(format!("buffered: {buffered} endpoint change(s) held until it exists in the cloud"));
        }
        if let Some(c) = op["correlation_id"].as_str().filter(|c| !c.is_empty()) {
            lines.push(format!("correlation id: {c}"));
        }
    }
    lines
}
