//! The API server's object store: pure, synchronous and clock-free (the time it stamps comes
//! from the [`Clock`] its owner injects). It holds the objects of the kinds served as JSON,
//! validated on every write by deserialising into the `k8s-openapi` type of the kind, and
//! implements Kubernetes' write semantics:
//!
//! - one `resourceVersion` counter over all kinds; `uid`, `creationTimestamp` and `generation`
//!   (bumped when `spec` changes) stamped by the server; `409 AlreadyExists` on a second create,
//!   `409 Conflict` on a write carrying a stale `metadata.resourceVersion`; a write that changes
//!   nothing changes no `resourceVersion` and records no event;
//! - the `status` subresource for Services, Nodes and Pods: writes to the object keep its status,
//!   writes to `status` change nothing else;
//! - deletion with finalizers: `deletionTimestamp` is set and the object stays until a write
//!   removes its last finalizer; no finalizer may be added meanwhile;
//! - garbage collection: an object removed takes with it every object in its namespace whose
//!   `ownerReferences` name it and no other owner still present (an EndpointSlice with its
//!   Service);
//! - lists at the current or (`resourceVersionMatch=Exact`, continue tokens) an earlier
//!   `resourceVersion`, paginated with `limit`/`continue`, filtered by label and field selectors;
//! - a bounded log of watch events; a watch or continue token from before its oldest entry is
//!   `410 Gone` with reason `Expired`.
//!
//! Everything is bounded by [`StoreLimits`]; a malformed object is a `400 BadRequest` or
//! `422 Invalid` [`ApiError`], never a panic.

use super::patch::{self, PatchError};
use super::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, as the store's owner sees time (the system clock for the
/// HTTP server, virtual time for a replay).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A clock that stands still at `ms`.
pub fn fixed_clock(ms: u64) -> Clock {
    Arc::new(move || ms)
}

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// The kinds served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Node,
    Pod,
    EndpointSlice,
    Event,
    Lease,
}

/// What discovery says about a kind.
#[derive(Debug)]
pub struct KindInfo {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Whether it has a `status` subresource.
    pub status: bool,
    pub short_names: &'static [&'static str],
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::Service, Kind::Node, Kind::Pod, Kind::EndpointSlice, Kind::Event, Kind::Lease];

    pub fn info(self) -> &'static KindInfo {
        #[allow(clippy::too_many_arguments)]
        const fn k(
            group: &'static str,
            version: &'static str,
            plural: &'static str,
            singular: &'static str,
            kind: &'static str,
            namespaced: bool,
            status: bool,
            short_names: &'static [&'static str],
        ) -> KindInfo {
            KindInfo { group, version, plural, singular, kind, namespaced, status, short_names }
        }
        static INFOS: [KindInfo; 6] = [
            k("", "v1", "services", "service", "Service", true, true, &["svc"]),
            k("", "v1", "nodes", "node", "Node", false, true, &["no"]),
            k("", "v1", "pods", "pod", "Pod", true, true, &["po"]),
            k("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", true, false, &[]),
            k("events.k8s.io", "v1", "events", "event", "Event", true, false, &["ev"]),
            k("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, false, &[]),
        ];
        &INFOS[self as usize]
    }

    /// `v1` or `group/version`.
    pub fn api_version(self) -> String {
        let i = self.info();
        if i.group.is_empty() {
            i.version.to_string()
        } else {
            format!("{}/{}", i.group, i.version)
        }
    }

    /// The kind served at `group`/`version` (`""` for the core group) under `plural`.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            let i = k.info();
            i.group == group && i.version == version && i.plural == plural
        })
    }

    /// Checks `object` against the kind's `k8s-openapi` type.
    fn decode(self, object: &Value) -> Result<(), String> {
        use k8s_openapi::api::{coordination, core, discovery, events};
        fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
            T::deserialize(v).map(|_| ()).map_err(|e| e.to_string())
        }
        match self {
            Kind::Service => check::<core::v1::Service>(object),
            Kind::Node => check::<core::v1::Node>(object),
            Kind::Pod => check::<core::v1::Pod>(object),
            Kind::EndpointSlice => check::<discovery::v1::EndpointSlice>(object),
            Kind::Event => check::<events::v1::Event>(object),
            Kind::Lease => check::<coordination::v1::Lease>(object),
        }
    }
}

/// The `details` of a Status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    pub name: String,
    pub group: String,
    pub kind: String,
    /// `(reason, field, message)` of each cause.
    pub causes: Vec<(String, String, String)>,
}

/// An API error, answered as a `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Expired`, ...
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<ErrorDetails>>,
    /// `Retry-After` in seconds (a 429), also in `details.retryAfterSeconds`.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None, retry_after_s: None }
    }

    fn about(mut self, kind: Kind, name: &str) -> ApiError {
        let d = self.details.get_or_insert_with(Box::default);
        d.name = name.to_string();
        d.group = kind.info().group.to_string();
        d.kind = kind.info().plural.to_string();
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", resource_label(kind))).about(kind, name)
    }

    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    fn invalid(kind: Kind, name: &str, field: &str, message: String) -> ApiError {
        let mut e =
            ApiError::new(422, "Invalid", format!("{} \"{name}\" is invalid: {field}: {message}", kind.info().kind)).about(kind, name);
        if let Some(d) = e.details.as_mut() {
            d.kind = kind.info().kind.to_string();
            d.causes.push(("FieldValueInvalid".into(), field.into(), message));
        }
        e
    }

    /// The `Status` object of this error.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if self.details.is_some() || self.retry_after_s.is_some() {
            let mut d = Map::new();
            if let Some(det) = &self.details {
                if !det.name.is_empty() {
                    d.insert("name".into(), json!(det.name));
                }
                if !det.group.is_empty() {
                    d.insert("group".into(), json!(det.group));
                }
                if !det.kind.is_empty() {
                    d.insert("kind".into(), json!(det.kind));
                }
                if !det.causes.is_empty() {
                    let causes: Vec<Value> = det.causes.iter().map(|(r, f, m)| json!({"reason": r, "field": f, "message": m})).collect();
                    d.insert("causes".into(), Value::Array(causes));
                }
            }
            if let Some(s) = self.retry_after_s {
                d.insert("retryAfterSeconds".into(), json!(s));
            }
            s["details"] = Value::Object(d);
        }
        s
    }
}

/// `services` or `leases.coordination.k8s.io`, as the API server names a resource in messages.
fn resource_label(kind: Kind) -> String {
    let i = kind.info();
    if i.group.is_empty() {
        i.plural.to_string()
    } else {
        format!("{}.{}", i.plural, i.group)
    }
}

/// The bounds of a store.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Objects of one kind (a create past it is `403 Forbidden`); 10,000.
    pub max_objects_per_kind: usize,
    /// Bytes of one object as JSON (`413 RequestEntityTooLarge` past it); 1.5 MiB, etcd's limit.
    pub max_object_bytes: usize,
    /// Items of one list page: a larger `limit` (or none) is cut to it, with a continue token;
    /// 5,000.
    pub max_page: usize,
    /// Watch events kept; older ones are compacted away and a watch from before them is
    /// `410 Expired`; 10,000.
    pub max_events: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits { max_objects_per_kind: 10_000, max_object_bytes: 1_572_864, max_page: 5_000, max_events: 10_000 }
    }
}

/// A watch event's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One entry of the event log: a change of one object at `rv`.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    pub rv: u64,
    pub kind: Kind,
    pub event_type: EventType,
    /// The object after the change (for a deletion: as it was removed, at `rv`).
    pub object: Value,
    /// The object before the change (none for an addition).
    pub prev: Option<Value>,
}

/// Which subresource a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

/// The patch formats accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
}

impl PatchType {
    /// The format of a `Content-Type`; `None` for one not supported (a `415`).
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            _ => None,
        }
    }
}

/// The options of a list.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label_selector: Option<LabelSelector>,
    pub field_selector: Option<FieldSelector>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// A page of a list.
#[derive(Clone, Debug)]
pub struct ListPage {
    pub items: Vec<Value>,
    /// The `resourceVersion` the page was read at.
    pub resource_version: u64,
    pub continue_token: Option<String>,
    /// Items after this page, when there is a continue token.
    pub remaining: Option<u64>,
}

/// Preconditions of a delete (`DeleteOptions.preconditions`).
#[derive(Clone, Debug, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

type Key = (String, String);

/// The store. See the module documentation.
pub struct Store {
    limits: StoreLimits,
    clock: Clock,
    rv: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    log: VecDeque<LoggedEvent>,
    /// Events at or below this `resourceVersion` are gone from the log.
    compacted: u64,
    uids: u64,
}

/// An RFC 3339 time in seconds, as `metav1.Time` is written.
pub fn rfc3339(ms: u64) -> String {
    let ts =
        k8s_openapi::jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta_str<'a>(o: &'a Value, field: &str) -> Option<&'a str> {
    o.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(o: &mut Value) -> &mut Map<String, Value> {
    if !o["metadata"].is_object() {
        o["metadata"] = json!({});
    }
    o["metadata"].as_object_mut().expect("made an object")
}

fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Kubernetes' DNS-1123 subdomain (most names) or DNS-1035 label (Service names).
fn name_problem(kind: Kind, name: &str) -> Option<String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if kind == Kind::Service {
        let ok = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.ends_with(alnum)
            && name.chars().all(|c| alnum(c) || c == '-');
        return (!ok).then(|| {
            format!(
                "Invalid value: \"{name}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an \
                 alphabetic character, and end with an alphanumeric character"
            )
        });
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.');
    (!ok).then(|| {
        format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
             and must start and end with an alphanumeric character"
        )
    })
}

impl Store {
    pub fn new(limits: StoreLimits, clock: Clock) -> Store {
        Store { limits, clock, rv: 0, objects: BTreeMap::new(), log: VecDeque::new(), compacted: 0, uids: 0 }
    }

    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// The latest `resourceVersion` handed out.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Events at or below this `resourceVersion` have been compacted away.
    pub fn compacted_through(&self) -> u64 {
        self.compacted
    }

    /// Drops every logged event but the last `keep` (what etcd's compaction does to a watch
    /// from before it).
    pub fn compact(&mut self, keep: usize) {
        while self.log.len() > keep {
            if let Some(e) = self.log.pop_front() {
                self.compacted = e.rv;
            }
        }
        if self.log.is_empty() {
            self.compacted = self.rv;
        }
    }

    fn key(kind: Kind, namespace: &str, name: &str) -> Key {
        if kind.info().namespaced {
            (namespace.to_string(), name.to_string())
        } else {
            (String::new(), name.to_string())
        }
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&kind)
            .and_then(|m| m.get(&Self::key(kind, namespace, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Objects of `kind` at `rv`, from the current ones and the log (`None` if the log no
    /// longer reaches back that far).
    fn snapshot_at(&self, kind: Kind, rv: u64) -> Option<BTreeMap<Key, Value>> {
        if rv >= self.rv {
            return Some(self.objects.get(&kind).cloned().unwrap_or_default());
        }
        if rv < self.compacted {
            return None;
        }
        let mut snap = self.objects.get(&kind).cloned().unwrap_or_default();
        for e in self.log.iter().rev().take_while(|e| e.rv > rv) {
            if e.kind != kind {
                continue;
            }
            let k = (meta_str(&e.object, "namespace").unwrap_or("").to_string(), meta_str(&e.object, "name").unwrap_or("").to_string());
            match &e.prev {
                Some(p) => {
                    snap.insert(k, p.clone());
                }
                None => {
                    snap.remove(&k);
                }
            }
        }
        Some(snap)
    }

    /// A page of the objects of `kind` in `namespace` (`None`: every namespace).
    pub fn list(&self, kind: Kind, namespace: Option<&str>, opts: &ListOptions) -> Result<ListPage, ApiError> {
        let (at, start) = match opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => {
                let (rv, start) =
                    decode_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid: malformed token"))?;
                (rv, Some(start))
            }
            None => {
                let exact = opts.resource_version_match.as_deref() == Some("Exact");
                match opts.resource_version.as_deref().filter(|v| !v.is_empty() && *v != "0") {
                    Some(v) => {
                        let n: u64 = v.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version {v:?}")))?;
                        if exact && n > self.rv {
                            return Err(ApiError::new(504, "Timeout", format!("Too large resource version: {n}, current: {}", self.rv)));
                        }
                        (if exact { n } else { self.rv }, None)
                    }
                    None => (self.rv, None),
                }
            }
        };
        let snap = self.snapshot_at(kind, at).ok_or_else(|| {
            ApiError::expired(if start.is_some() {
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."
                    .to_string()
            } else {
                format!("too old resource version: {at} ({})", self.compacted)
            })
        })?;
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX).min(self.limits.max_page.max(1));
        let mut items = Vec::new();
        let mut last: Option<Key> = None;
        let mut remaining = 0u64;
        for (k, o) in snap.range((start.clone().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded), std::ops::Bound::Unbounded))
        {
            if namespace.is_some_and(|ns| kind.info().namespaced && k.0 != ns) {
                continue;
            }
            if !opts.label_selector.as_ref().is_none_or(|s| s.matches(o)) || !opts.field_selector.as_ref().is_none_or(|s| s.matches(o)) {
                continue;
            }
            if items.len() < limit {
                items.push(o.clone());
                last = Some(k.clone());
            } else {
                remaining += 1;
            }
        }
        let continue_token = (remaining > 0).then(|| encode_continue(at, last.as_ref().expect("a full page has a last item")));
        Ok(ListPage { items, resource_version: at, remaining: continue_token.as_ref().map(|_| remaining), continue_token })
    }

    /// Log entries of `kind` after `after`, at most `max`, and the `resourceVersion` the answer
    /// is complete through; `410 Expired` if the log no longer reaches back to `after`.
    pub fn events_since(&self, kind: Kind, after: u64, max: usize) -> Result<(Vec<LoggedEvent>, u64), ApiError> {
        if after < self.compacted {
            return Err(ApiError::expired(format!("too old resource version: {after} ({})", self.compacted)));
        }
        let start = self.log.partition_point(|e| e.rv <= after);
        let mut out = Vec::new();
        let mut through = self.rv;
        for e in self.log.iter().skip(start) {
            if e.kind != kind {
                continue;
            }
            if out.len() == max {
                through = e.rv - 1;
                break;
            }
            out.push(e.clone());
        }
        Ok((out, through.max(after)))
    }

    fn record(&mut self, kind: Kind, event_type: EventType, object: Value, prev: Option<Value>) {
        self.log.push_back(LoggedEvent { rv: self.rv, kind, event_type, object, prev });
        while self.log.len() > self.limits.max_events.max(1) {
            if let Some(e) = self.log.pop_front() {
                self.compacted = e.rv;
            }
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn check_size(&self, kind: Kind, name: &str, object: &Value) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(object).map(|v| v.len()).unwrap_or(usize::MAX);
        if bytes > self.limits.max_object_bytes {
            return Err(ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("{} \"{name}\" is {bytes} bytes, above the limit of {}", kind.info().kind, self.limits.max_object_bytes),
            ));
        }
        Ok(())
    }

    /// Checks the fields every object of the kind must have right and its `k8s-openapi` type.
    fn validate(kind: Kind, object: &mut Value, name: &str) -> Result<(), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled: not a JSON object",
                kind.info().kind,
                kind.api_version()
            )));
        }
        let info = kind.info();
        let api_version = kind.api_version();
        match object.get("kind").and_then(Value::as_str) {
            None | Some("") => object["kind"] = json!(info.kind),
            Some(k) if k == info.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!("the kind {k:?} of the object does not match the {} of the request", info.kind)))
            }
        }
        match object.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => object["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the apiVersion {v:?} of the object does not match {api_version:?} of the request"
                )))
            }
        }
        if let Some(p) = name_problem(kind, name) {
            return Err(ApiError::invalid(kind, name, "metadata.name", p));
        }
        kind.decode(object).map_err(|e| {
            ApiError::bad_request(format!("{} in version {:?} cannot be handled as a {}: {e}", info.kind, info.version, info.kind))
        })?;
        Ok(())
    }

    /// Creates an object in `namespace` (ignored for a cluster-scoped kind).
    pub fn create(&mut self, kind: Kind, namespace: &str, mut object: Value) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        }
        let info = kind.info();
        let ns = if info.namespaced {
            match meta_str(&object, "namespace").filter(|n| !n.is_empty()) {
                Some(n) if n != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => namespace.to_string(),
            }
        } else {
            String::new()
        };
        let name = match meta_str(&object, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta_str(&object, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{:05x}", (self.uids + 1) & 0xfffff),
                None => {
                    return Err(ApiError::invalid(kind, "", "metadata.name", "Required value: name or generateName is required".into()))
                }
            },
        };
        Self::validate(kind, &mut object, &name)?;
        let key = Self::key(kind, &ns, &name);
        if self.objects.get(&kind).is_some_and(|m| m.contains_key(&key)) {
            return Err(
                ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource_label(kind))).about(kind, &name)
            );
        }
        if self.objects.get(&kind).map_or(0, BTreeMap::len) >= self.limits.max_objects_per_kind {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: the server holds its limit of {} objects of this kind",
                    resource_label(kind),
                    self.limits.max_objects_per_kind
                ),
            ));
        }
        if kind == Kind::Service {
            object["status"] = json!({"loadBalancer": {}});
        }
        self.check_size(kind, &name, &object)?;
        self.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uids);
        let now = rfc3339((self.clock)());
        let rv = self.next_rv();
        let m = meta_mut(&mut object);
        m.insert("name".into(), json!(name));
        if info.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(uid));
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        m.insert("creationTimestamp".into(), json!(now));
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        self.objects.entry(kind).or_default().insert(key, object.clone());
        self.record(kind, EventType::Added, object.clone(), None);
        Ok(object)
    }

    /// Replaces an object (`PUT`), or its status.
    pub fn update(&mut self, kind: Kind, namespace: &str, name: &str, object: Value, sub: Subresource) -> Result<Value, ApiError> {
        let old = self.get(kind, namespace, name)?;
        if !object.is_object() {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        }
        if let Some(n) = meta_str(&object, "name").filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({name})")));
        }
        if kind.info().namespaced {
            if let Some(n) = meta_str(&object, "namespace").filter(|n| !n.is_empty() && *n != namespace) {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({n}) does not match the namespace sent on the request ({namespace})"
                )));
            }
        }
        self.write(kind, old, object, sub)
    }

    /// Patches an object, or its status.
    pub fn patch(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch_type: PatchType,
        body: &[u8],
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        let old = self.get(kind, namespace, name)?;
        let mut base = old.clone();
        let patched = match patch_type {
            PatchType::Json => patch::json_patch(&base, body),
            PatchType::Merge | PatchType::StrategicMerge => {
                let p: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                if !p.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                if patch_type == PatchType::Merge {
                    patch::merge_patch(&mut base, &p);
                    Ok(base)
                } else {
                    patch::strategic_merge_patch(&mut base, &p).map(|_| base)
                }
            }
        };
        let mut patched = patched.map_err(|e| match e {
            PatchError::Malformed(m) => ApiError::bad_request(m),
            PatchError::NotApplicable(m) => ApiError::new(422, "Invalid", m),
        })?;
        // A patch that leaves the resourceVersion it found makes the write unconditional; one
        // that sets it makes it conditional on it.
        if meta_str(&patched, "resourceVersion") == meta_str(&old, "resourceVersion") {
            meta_mut(&mut patched).remove("resourceVersion");
        }
        if meta_str(&patched, "name") != Some(name) {
            return Err(ApiError::bad_request("a patch may not change metadata.name"));
        }
        self.write(kind, old, patched, sub)
    }

    /// The common part of update and patch: `new` replaces `old` under the write rules.
    fn write(&mut self, kind: Kind, old: Value, mut new: Value, sub: Subresource) -> Result<Value, ApiError> {
        let info = kind.info();
        let name = meta_str(&old, "name").unwrap_or("").to_string();
        if sub == Subresource::Status && !info.status {
            return Err(ApiError::not_found(kind, &name));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|v| !v.is_empty()) {
            if Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        resource_label(kind)
                    ),
                )
                .about(kind, &name));
            }
        }
        if sub == Subresource::Status {
            let status = new.get("status").cloned();
            let mut merged = old.clone();
            match status {
                Some(s) => merged["status"] = s,
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new = merged;
        } else if info.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        Self::validate(kind, &mut new, &name)?;
        let deleting = meta_str(&old, "deletionTimestamp").is_some();
        let (old_fin, new_fin) = (finalizers(&old), finalizers(&new));
        if deleting {
            let added: Vec<&String> = new_fin.iter().filter(|f| !old_fin.contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    kind,
                    &name,
                    "metadata.finalizers",
                    format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
                ));
            }
        }
        // The server's own metadata stays.
        let old_meta = old["metadata"].clone();
        {
            let m = meta_mut(&mut new);
            for field in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"]
            {
                match old_meta.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
            m.insert("resourceVersion".into(), old_meta["resourceVersion"].clone());
            if m.get("finalizers").and_then(Value::as_array).is_some_and(Vec::is_empty) {
                m.remove("finalizers");
            }
        }
        if new == old {
            return Ok(old);
        }
        if new.get("spec") != old.get("spec") {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        self.check_size(kind, &name, &new)?;
        let rv = self.next_rv();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let key = Self::key(kind, meta_str(&old, "namespace").unwrap_or(""), &name);
        if deleting && new_fin.is_empty() {
            self.remove(kind, key, new.clone(), old);
        } else {
            self.objects.entry(kind).or_default().insert(key, new.clone());
            self.record(kind, EventType::Modified, new.clone(), Some(old));
        }
        Ok(new)
    }

    /// Removes an object at the current `resourceVersion` and collects its dependents.
    fn remove(&mut self, kind: Kind, key: Key, at_rv: Value, prev: Value) {
        if let Some(m) = self.objects.get_mut(&kind) {
            m.remove(&key);
        }
        let uid = meta_str(&at_rv, "uid").unwrap_or("").to_string();
        self.record(kind, EventType::Deleted, at_rv, Some(prev));
        self.collect_dependents(&key.0, &uid);
    }

    /// Deletes every object in `namespace` owned by `uid` that has no other owner left.
    fn collect_dependents(&mut self, namespace: &str, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let present: std::collections::BTreeSet<String> =
            self.objects.values().flat_map(|m| m.values()).filter_map(|o| meta_str(o, "uid").map(str::to_string)).collect();
        let mut doomed = Vec::new();
        for (kind, objects) in &self.objects {
            for ((ns, name), o) in objects {
                if ns != namespace || meta_str(o, "deletionTimestamp").is_some() {
                    continue;
                }
                let owners: Vec<&str> = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)).collect())
                    .unwrap_or_default();
                if owners.contains(&uid) && owners.iter().all(|u| !present.contains(*u)) {
                    doomed.push((*kind, ns.clone(), name.clone()));
                }
            }
        }
        for (kind, ns, name) in doomed {
            let _ = self.delete(kind, &ns, &name, &Preconditions::default());
        }
    }

    /// Deletes an object: at once without finalizers, else it gets a `deletionTimestamp` and
    /// stays until its last finalizer is removed. Answers the object as deleted or as marked.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str, pre: &Preconditions) -> Result<Value, ApiError> {
        let old = self.get(kind, namespace, name)?;
        let conflict = |what: &str, want: &str, have: &str| {
            ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what}: {want}, {what} in object meta: {have}",
                    resource_label(kind)
                ),
            )
            .about(kind, name)
        };
        if let Some(u) = pre.uid.as_deref() {
            let have = meta_str(&old, "uid").unwrap_or("");
            if u != have {
                return Err(conflict("UID in precondition", u, have));
            }
        }
        if let Some(v) = pre.resource_version.as_deref() {
            let have = meta_str(&old, "resourceVersion").unwrap_or("");
            if v != have {
                return Err(conflict("ResourceVersion in precondition", v, have));
            }
        }
        let key = Self::key(kind, namespace, name);
        if !finalizers(&old).is_empty() {
            if meta_str(&old, "deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut marked = old.clone();
            let now = rfc3339((self.clock)());
            let rv = self.next_rv();
            let m = meta_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(now));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            self.objects.entry(kind).or_default().insert(key, marked.clone());
            self.record(kind, EventType::Modified, marked.clone(), Some(old));
            return Ok(marked);
        }
        let mut gone = old.clone();
        let rv = self.next_rv();
        meta_mut(&mut gone).insert("resourceVersion".into(), json!(rv.to_string()));
        self.remove(kind, key, gone.clone(), old);
        Ok(gone)
    }
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let hex: String = format!("{}\u{0}{}", key.0, key.1).bytes().map(|b| format!("{b:02x}")).collect();
    format!("{rv}.{hex}")
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    let (rv, hex) = token.split_once('.')?;
    let rv = rv.parse().ok()?;
    if hex.len() % 2 != 0 || hex.len() > 2048 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (ns, name) = text.split_once('\u{0}')?;
    Some((rv, (ns.to_string(), name.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(StoreLimits::default(), fixed_clock(1_700_000_000_000))
    }

    fn svc(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    }

    fn rv_of(o: &Value) -> String {
        meta_str(o, "resourceVersion").unwrap().to_string()
    }

    #[test]
    fn create_stamps_metadata_and_a_second_create_is_already_exists() {
        let mut s = store();
        let o = s.create(Kind::Service, "ns1", svc("web", json!({}))).unwrap();
        assert_eq!(o["metadata"]["namespace"], "ns1");
        assert_eq!(o["metadata"]["resourceVersion"], "1");
        assert_eq!(o["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert!(o["metadata"]["uid"].as_str().unwrap().len() == 36);
        let e = s.create(Kind::Service, "ns1", svc("web", json!({}))).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        assert_eq!(e.status()["details"]["name"], "web");
        assert_eq!(e.status()["kind"], "Status");
        // Another namespace is another object.
        assert!(s.create(Kind::Service, "ns2", svc("web", json!({}))).is_ok());
    }

    #[test]
    fn malformed_objects_are_bad_request_or_invalid_never_a_panic() {
        let mut s = store();
        let e = s.create(Kind::Service, "ns1", json!({"metadata": {"name": "x"}, "spec": {"ports": "eighty"}})).unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        let e = s.create(Kind::Service, "ns1", svc("Bad_Name", json!({}))).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(e.status()["details"]["causes"][0]["field"], "metadata.name");
        let e = s.create(Kind::Service, "ns1", json!({"metadata": {}})).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        let e = s.create(Kind::Lease, "ns1", json!({"kind": "Service", "metadata": {"name": "a"}})).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(s.create(Kind::Node, "", json!([1])).unwrap_err().code, 400);
    }

    #[test]
    fn a_stale_resource_version_is_a_conflict_and_an_unchanged_write_is_a_no_op() {
        let mut s = store();
        let lease =
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}});
        let created = s.create(Kind::Lease, "kube-system", lease).unwrap();
        let mut mine = created.clone();
        mine["spec"]["holderIdentity"] = json!("b");
        let updated = s.update(Kind::Lease, "kube-system", "l", mine.clone(), Subresource::Main).unwrap();
        assert_ne!(rv_of(&updated), rv_of(&created));
        // The same write again carries the old resourceVersion.
        let e = s.update(Kind::Lease, "kube-system", "l", mine, Subresource::Main).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        assert!(e.message.contains("the object has been modified"), "{}", e.message);
        let again = s.update(Kind::Lease, "kube-system", "l", updated.clone(), Subresource::Main).unwrap();
        assert_eq!(rv_of(&again), rv_of(&updated), "nothing changed, no new resourceVersion");
    }

    #[test]
    fn the_status_subresource_and_the_object_do_not_write_each_other() {
        let mut s = store();
        let o = s.create(Kind::Service, "ns1", svc("web", json!({}))).unwrap();
        let mut with_status = o.clone();
        with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}});
        with_status["spec"]["ports"][0]["port"] = json!(81);
        let after = s.update(Kind::Service, "ns1", "web", with_status.clone(), Subresource::Status).unwrap();
        assert_eq!(after["status"]["loadBalancer"]["ingress"][0]["ip"], "1.2.3.4");
        assert_eq!(after["spec"]["ports"][0]["port"], 80, "a status write keeps the spec");
        let mut spec_only = after.clone();
        spec_only["status"] = json!({});
        spec_only["spec"]["ports"][0]["port"] = json!(81);
        let after = s.update(Kind::Service, "ns1", "web", spec_only, Subresource::Main).unwrap();
        assert_eq!(after["status"]["loadBalancer"]["ingress"][0]["ip"], "1.2.3.4", "an object write keeps the status");
        assert_eq!(after["spec"]["ports"][0]["port"], 81);
        assert_eq!(after["metadata"]["generation"], 2);
        assert_eq!(s.update(Kind::Lease, "ns1", "web", json!({}), Subresource::Status).unwrap_err().code, 404);
    }

    #[test]
    fn finalizers_hold_a_deletion_until_the_last_one_is_removed() {
        let mut s = store();
        let mut o = svc("web", json!({}));
        o["metadata"]["finalizers"] = json!(["a/one", "b/two"]);
        s.create(Kind::Service, "ns1", o).unwrap();
        let marked = s.delete(Kind::Service, "ns1", "web", &Preconditions::default()).unwrap();
        assert_eq!(marked["metadata"]["deletionTimestamp"], "2023-11-14T22:13:20Z");
        assert!(s.get(Kind::Service, "ns1", "web").is_ok(), "still there with its finalizers");
        let e = s.patch(
            Kind::Service,
            "ns1",
            "web",
            PatchType::Merge,
            br#"{"metadata":{"finalizers":["a/one","b/two","c"]}}"#,
            Subresource::Main,
        );
        assert_eq!(e.unwrap_err().code, 422, "no finalizer may be added while deleting");
        s.patch(
            Kind::Service,
            "ns1",
            "web",
            PatchType::Json,
            br#"[{"op":"test","path":"/metadata/finalizers/0","value":"a/one"},{"op":"remove","path":"/metadata/finalizers/0"}]"#,
            Subresource::Main,
        )
        .unwrap();
        assert!(s.get(Kind::Service, "ns1", "web").is_ok());
        let e = s
            .patch(
                Kind::Service,
                "ns1",
                "web",
                PatchType::Json,
                br#"[{"op":"test","path":"/metadata/finalizers/0","value":"a/one"},{"op":"remove","path":"/metadata/finalizers/0"}]"#,
                Subresource::Main,
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"), "a failed test op changes nothing");
        assert!(s.get(Kind::Service, "ns1", "web").is_ok());
        s.patch(Kind::Service, "ns1", "web", PatchType::Json, br#"[{"op":"remove","path":"/metadata/finalizers"}]"#, Subresource::Main)
            .unwrap();
        assert_eq!(s.get(Kind::Service, "ns1", "web").unwrap_err().code, 404);
        let (events, _) = s.events_since(Kind::Service, 0, 100).unwrap();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]);
    }

    #[test]
    fn a_patch_carrying_a_stale_resource_version_is_a_conflict() {
        let mut s = store();
        s.create(Kind::Service, "ns1", svc("web", json!({}))).unwrap();
        s.patch(Kind::Service, "ns1", "web", PatchType::Merge, br#"{"metadata":{"labels":{"a":"b"}}}"#, Subresource::Main).unwrap();
        let e = s
            .patch(
                Kind::Service,
                "ns1",
                "web",
                PatchType::Merge,
                br#"{"metadata":{"resourceVersion":"1","labels":{"a":"c"}}}"#,
                Subresource::Main,
            )
            .unwrap_err();
        assert_eq!(e.code, 409);
        let e = s
            .patch(
                Kind::Service,
                "ns1",
                "web",
                PatchType::Json,
                br#"[{"op":"test","path":"/metadata/resourceVersion","value":"1"}]"#,
                Subresource::Main,
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn deleting_a_service_collects_its_endpoint_slices() {
        let mut s = store();
        let owner = s.create(Kind::Service, "ns1", svc("web", json!({}))).unwrap();
        let other = s.create(Kind::Service, "ns1", svc("db", json!({}))).unwrap();
        let slice = |name: &str, owners: Vec<&Value>| {
            let refs: Vec<Value> = owners
                .iter()
                .map(|o| json!({"apiVersion": "v1", "kind": "Service", "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]}))
                .collect();
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4", "endpoints": [],
                   "metadata": {"name": name, "ownerReferences": refs}})
        };
        s.create(Kind::EndpointSlice, "ns1", slice("web-1", vec![&owner])).unwrap();
        s.create(Kind::EndpointSlice, "ns1", slice("both", vec![&owner, &other])).unwrap();
        s.create(Kind::EndpointSlice, "ns1", slice("db-1", vec![&other])).unwrap();
        s.delete(Kind::Service, "ns1", "web", &Preconditions::default()).unwrap();
        let left: Vec<String> = s
            .list(Kind::EndpointSlice, Some("ns1"), &ListOptions::default())
            .unwrap()
            .items
            .iter()
            .map(|o| meta_str(o, "name").unwrap().to_string())
            .collect();
        assert_eq!(left, ["both", "db-1"], "a slice with an owner left stays");
        s.delete(Kind::Service, "ns1", "db", &Preconditions::default()).unwrap();
        assert!(s.list(Kind::EndpointSlice, None, &ListOptions::default()).unwrap().items.is_empty());
    }

    #[test]
    fn lists_page_with_continue_tokens_at_one_resource_version() {
        let mut s = store();
        for i in 0..5 {
            s.create(Kind::Service, "ns1", svc(&format!("s{i}"), json!({"n": i.to_string()}))).unwrap();
        }
        s.create(Kind::Service, "ns2", svc("other", json!({}))).unwrap();
        let opts = ListOptions { limit: Some(2), ..Default::default() };
        let p1 = s.list(Kind::Service, Some("ns1"), &opts).unwrap();
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, Some(3));
        // A change between pages does not show in the pages of the same list.
        s.delete(Kind::Service, "ns1", "s3", &Preconditions::default()).unwrap();
        let p2 = s.list(Kind::Service, Some("ns1"), &ListOptions { continue_token: p1.continue_token.clone(), ..opts.clone() }).unwrap();
        let p3 = s.list(Kind::Service, Some("ns1"), &ListOptions { continue_token: p2.continue_token.clone(), ..opts.clone() }).unwrap();
        let names: Vec<&str> = p1.items.iter().chain(&p2.items).chain(&p3.items).map(|o| meta_str(o, "name").unwrap()).collect();
        assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
        assert!(p3.continue_token.is_none());
        assert_eq!(p2.resource_version, p1.resource_version);
        assert_eq!(s.list(Kind::Service, None, &ListOptions::default()).unwrap().items.len(), 5, "every namespace");
        // Compaction past the list's resourceVersion expires its continue token.
        s.compact(0);
        let e = s.list(Kind::Service, Some("ns1"), &ListOptions { continue_token: p1.continue_token, ..opts }).unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
    }

    #[test]
    fn selectors_filter_lists() {
        let mut s = store();
        s.create(Kind::Service, "ns1", svc("a", json!({"app": "web"}))).unwrap();
        s.create(Kind::Service, "ns1", svc("b", json!({"app": "db"}))).unwrap();
        s.create(Kind::Service, "ns1", svc("c", json!({}))).unwrap();
        let names = |label: &str, field: &str| -> Vec<String> {
            let opts = ListOptions {
                label_selector: Some(LabelSelector::parse(label).unwrap()),
                field_selector: Some(FieldSelector::parse(field).unwrap()),
                ..Default::default()
            };
            s.list(Kind::Service, Some("ns1"), &opts).unwrap().items.iter().map(|o| meta_str(o, "name").unwrap().to_string()).collect()
        };
        assert_eq!(names("app=web", ""), ["a"]);
        assert_eq!(names("app!=web", ""), ["b", "c"]);
        assert_eq!(names("app in (web,db)", ""), ["a", "b"]);
        assert_eq!(names("app", "metadata.name!=a"), ["b"]);
        assert_eq!(names("", "metadata.name=c"), ["c"]);
    }

    #[test]
    fn the_event_log_is_bounded_and_a_watch_from_before_it_is_expired() {
        let mut s = Store::new(StoreLimits { max_events: 3, ..Default::default() }, fixed_clock(0));
        for i in 0..5 {
            s.create(Kind::Service, "ns1", svc(&format!("s{i}"), json!({}))).unwrap();
        }
        let (events, through) = s.events_since(Kind::Service, 2, 100).unwrap();
        assert_eq!(events.iter().map(|e| e.rv).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(through, 5);
        let e = s.events_since(Kind::Service, 1, 100).unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        // Other kinds' events move a watcher on without sending it anything.
        let (events, through) = s.events_since(Kind::Lease, 2, 100).unwrap();
        assert!(events.is_empty());
        assert_eq!(through, 5);
    }

    #[test]
    fn the_object_limit_and_size_limit_hold() {
        let mut s = Store::new(StoreLimits { max_objects_per_kind: 1, max_object_bytes: 400, ..Default::default() }, fixed_clock(0));
        s.create(Kind::Service, "ns1", svc("a", json!({}))).unwrap();
        assert_eq!(s.create(Kind::Service, "ns1", svc("b", json!({}))).unwrap_err().code, 403);
        let e = s.create(Kind::Lease, "ns1", json!({"metadata": {"name": "l", "annotations": {"a": "b".repeat(500)}}})).unwrap_err();
        assert_eq!(e.code, 413);
    }
}
