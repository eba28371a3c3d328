//! One-line summaries of failures, events and completions for logs and the status page: bounded
//! in length whatever the input, so a hostile object cannot flood a log line.

use difftracker_engine::io::{CallOutput, Completion, EventType, KubeEvent, KubeEventRecord, ObjectKind, ObjectRef};

/// A failure on one line: its first line and its causes, without wasmtime's wasm backtrace.
/// `guest failed in `deliver`: error while executing at wasm backtrace (forcing trap when
/// growing memory to 17956864 bytes)`.
pub fn brief_reason(reason: &str) -> String {
    let mut lines = reason.lines();
    let first = lines.next().unwrap_or_default().trim_end().trim_end_matches(':').to_string();
    let causes: Vec<&str> = lines
        .skip_while(|l| l.trim() != "Caused by:")
        .skip(1)
        .map(|l| {
            let l = l.trim();
            // anyhow numbers the causes when there are several: `0: ...`.
            match l.split_once(": ") {
                Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => rest,
                _ => l,
            }
        })
        .filter(|l| !l.is_empty())
        .collect();
    let line = if causes.is_empty() { first } else { format!("{first} ({})", causes.join("; ")) };
    short(&line, 300)
}

/// `s` on one line (its lines joined with ` | `), at most `max` characters and a `…`.
pub fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, line) in s.lines().map(str::trim_end).filter(|l| !l.is_empty()).enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        out.push_str(line);
        if out.len() > max.saturating_mul(4) {
            break;
        }
    }
    short(&out, max)
}

/// At most `max` characters of `s`, and a `…` when it was longer.
pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

fn encoded_size(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// `ServiceApplied default/web (1234 bytes)`.
pub fn event_summary(event: &KubeEvent) -> String {
    let (kind, namespace, name) = match event {
        KubeEvent::ServiceApplied(s) => ("ServiceApplied", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::ServiceDeleted(s) => ("ServiceDeleted", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::EndpointSliceApplied(s) => ("EndpointSliceApplied", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::EndpointSliceDeleted(s) => ("EndpointSliceDeleted", s.meta.namespace.as_str(), s.meta.name.as_str()),
        KubeEvent::NodeApplied(n) => ("NodeApplied", "", n.name.as_str()),
        KubeEvent::NodeDeleted(n) => ("NodeDeleted", "", n.name.as_str()),
        KubeEvent::PodApplied(p) => ("PodApplied", p.meta.namespace.as_str(), p.meta.name.as_str()),
        KubeEvent::PodDeleted(p) => ("PodDeleted", p.meta.namespace.as_str(), p.meta.name.as_str()),
        KubeEvent::InitialListsComplete => return "InitialListsComplete".to_string(),
    };
    let object = if namespace.is_empty() { short(name, 64) } else { format!("{}/{}", short(namespace, 64), short(name, 64)) };
    format!("{kind} {object} ({} bytes)", encoded_size(event))
}

/// `completion of call #12 (PUT publicIPAddresses): error 500 InternalServerError (345 bytes)`.
pub fn completion_summary(completion: &Completion, label: Option<&str>) -> String {
    let outcome = match &completion.outcome {
        Ok(CallOutput::Done) => "ok".to_string(),
        Ok(CallOutput::PublicIp(ip)) => format!("ok, public IP {}", short(&ip.name, 64)),
        Ok(CallOutput::NatGateway(_)) => "ok, NAT gateway".to_string(),
        Ok(CallOutput::PublicIps(v)) => format!("ok, {} public IP(s)", v.len()),
        Ok(CallOutput::Names(v)) => format!("ok, {} name(s)", v.len()),
        Ok(CallOutput::SgwServices(v)) => format!("ok, {} ServiceGateway service(s)", v.len()),
        Ok(CallOutput::AddressLocations(v)) => format!("ok, {} address location(s)", v.len()),
        Err(e) => format!("error {} {}", e.status, short(&e.code, 64)),
    };
    format!("completion of call #{} ({}): {outcome} ({} bytes)", completion.id, label.unwrap_or("unknown call"), encoded_size(completion))
}

/// The reason of the Warning Event recorded on an object whose event was quarantined.
pub const REASON_INPUT_QUARANTINED: &str = "ServiceGatewayInputQuarantined";

/// The Warning Event that tells the object's owner its object was skipped: on the Service or Pod
/// itself, on the owning Service for an EndpointSlice; none for a Node (no Event target the engine
/// writes to).
pub fn quarantine_warning(event: &KubeEvent, reason: &str) -> Option<KubeEventRecord> {
    let (kind, target) = match event {
        KubeEvent::ServiceApplied(s) | KubeEvent::ServiceDeleted(s) => {
            (ObjectKind::Service, object_ref(&s.meta.namespace, &s.meta.name, &s.meta.uid))
        }
        KubeEvent::PodApplied(p) | KubeEvent::PodDeleted(p) => (ObjectKind::Pod, object_ref(&p.meta.namespace, &p.meta.name, &p.meta.uid)),
        KubeEvent::EndpointSliceApplied(s) | KubeEvent::EndpointSliceDeleted(s) => {
            let owner = s.owner_references.iter().find(|o| o.kind == "Service")?;
            (ObjectKind::Service, object_ref(&s.meta.namespace, &owner.name, &owner.uid))
        }
        KubeEvent::NodeApplied(_) | KubeEvent::NodeDeleted(_) | KubeEvent::InitialListsComplete => return None,
    };
    Some(KubeEventRecord {
        target,
        kind,
        event_type: EventType::Warning,
        reason: REASON_INPUT_QUARANTINED.to_string(),
        message: short(
            &format!(
                "the controller skipped {}: its engine fails on it ({}); the object's cloud resources are not reconciled until it changes",
                event_summary(event),
                brief_reason(reason)
            ),
            1024,
        ),
    })
}

fn object_ref(namespace: &str, name: &str, uid: &str) -> ObjectRef {
    ObjectRef { namespace: namespace.to_string(), name: name.to_string(), uid: uid.to_string() }
}
