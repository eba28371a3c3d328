//! The emulator's HTTP face (axum): the 14 calls of AZURE-WIRE.md section 0 in the resource
//! groups the emulator serves (others answer `SubscriptionNotFound` / `ResourceGroupNotFound`),
//! the polling URLs it hands out, and `GET /_emulator/inventory`. Paths match case-insensitively;
//! errors are ARM error bodies with `x-ms-error-code`. A request body over
//! [`RequestLimits`](super::RequestLimits) (declared or read; reading stops there) is
//! `413 RequestEntityTooLarge`, answered after the token and route checks and before any fault,
//! as the in-process backend answers it. With [`EmulatorAuth`](super::EmulatorAuth)
//! configured, every ARM request and poll needs an accepted bearer token (401 otherwise).
//!
//! Polling URLs and `nextLink`s are built from the configured public URL or the listening
//! address, never from the request's `Host` header. During a long-running operation a GET of
//! its resource shows `Updating` (or, for a delete, the resource as `Deleting`) until the
//! operation reports its outcome.

use super::state::{codes, label_of, ArmError, Conditions, Method, Reply, ScopeKey, Target};
use super::{Emulator, EmulatorOptions, LroMode, PollHeaders, PollingOptions, RequestLimits};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use difftracker_runtime::server::ServerHandle;
use difftracker_runtime::transport::config::{ResourceKind, API_VERSION, SERVICE_GATEWAY_NAME};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_REMEMBERED_OPERATIONS: usize = 10_000;

#[derive(Debug)]
struct Operation {
    created: Instant,
    polls: u32,
    /// Polls answered InProgress before the outcome shows.
    in_progress_polls: u32,
    in_progress_for: Duration,
    /// The lower-cased subscription the operation was started in (its polling URLs name it).
    subscription: String,
    /// Ok(final body for a Location poll, if any) or Err(code, message).
    outcome: Result<Option<Value>, (String, String)>,
}

impl Operation {
    fn done(&self) -> bool {
        self.polls > self.in_progress_polls && self.created.elapsed() >= self.in_progress_for
    }
}

/// A resource with a long-running operation still in progress: (subscription, resource group,
/// kind, name), all lower-cased.
type PendingKey = (String, String, ResourceKind, String);

#[derive(Clone, Debug)]
struct Pending {
    op: u64,
    /// `Updating` or `Deleting`.
    state: &'static str,
    /// The resource as it was when its deletion started.
    snapshot: Option<Value>,
}

fn pending_key(scope: &ScopeKey, kind: ResourceKind, name: &str) -> PendingKey {
    (scope.subscription.to_ascii_lowercase(), scope.resource_group.to_ascii_lowercase(), kind, name.to_ascii_lowercase())
}

fn with_state(mut v: Value, state: &str) -> Value {
    if let Some(m) = v.as_object_mut() {
        let p = m.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = p.as_object_mut() {
            p.insert("provisioningState".into(), json!(state));
        }
    }
    v
}

struct Server {
    emulator: Arc<Emulator>,
    ops: Mutex<BTreeMap<u64, Operation>>,
    pending: Mutex<BTreeMap<PendingKey, Pending>>,
    next_op: AtomicU64,
    /// Numbers the `x-ms-request-id` of requests that carry no id of their own.
    next_request: AtomicU64,
    started: Instant,
    /// `scheme://host[:port]` of every URL handed out.
    base: String,
}

/// A running emulator server: the shared [`ServerHandle`] and the emulator it serves. Dropping it
/// stops the server.
pub struct EmulatorHandle {
    server: ServerHandle,
    emulator: Arc<Emulator>,
    base: String,
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
    /// The URL clients reach the emulator at: [`EmulatorOptions::public_url`], else
    /// `http://` + the listening address (loopback for an unspecified one).
    pub fn base_url(&self) -> String {
        self.base.clone()
    }
    pub fn emulator(&self) -> &Arc<Emulator> {
        &self.emulator
    }
    pub fn inventory(&self) -> Value {
        self.emulator.inventory()
    }
    /// A tenant configuration for the emulator's scope at this server's URL.
    pub fn tenant_config(&self) -> difftracker_runtime::transport::TenantAzureConfig {
        self.emulator.options().scope.tenant_config(&self.base_url())
    }
    /// Stops the server and waits for it.
    pub async fn shutdown(self) {
        self.server.shutdown().await
    }
}

/// Serves a new emulator built from `options` on `listener`.
pub async fn serve(listener: tokio::net::TcpListener, options: EmulatorOptions) -> std::io::Result<EmulatorHandle> {
    serve_emulator(listener, Emulator::new(options)).await
}

/// The base of the URLs handed out: the configured public URL, else the listening address.
fn base_url_of(options: &EmulatorOptions, addr: SocketAddr) -> String {
    if let Some(u) = options.public_url.as_deref().map(|u| u.trim().trim_end_matches('/')).filter(|u| !u.is_empty()) {
        return u.to_string();
    }
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    format!("http://{a}")
}

/// Serves an existing emulator (e.g. one also used in-process) on `listener`.
pub async fn serve_emulator(listener: tokio::net::TcpListener, emulator: Arc<Emulator>) -> std::io::Result<EmulatorHandle> {
    let addr = listener.local_addr()?;
    let base = base_url_of(emulator.options(), addr);
    let server = Arc::new(Server {
        emulator: emulator.clone(),
        ops: Mutex::new(BTreeMap::new()),
        pending: Mutex::new(BTreeMap::new()),
        next_op: AtomicU64::new(1),
        next_request: AtomicU64::new(1),
        started: Instant::now(),
        base: base.clone(),
    });
    let app = Router::new().fallback(handle).with_state(server);
    Ok(EmulatorHandle { server: ServerHandle::spawn(listener, app, "emulator")?, emulator, base })
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

fn empty_response(status: u16) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn error_response(e: &ArmError) -> Response {
    let mut r = json_response(e.status, &e.body());
    if let Ok(v) = HeaderValue::from_str(&e.code) {
        r.headers_mut().insert("x-ms-error-code", v);
    }
    if e.status == 401 {
        let challenge = format!(
            "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\", error_description=\"{}\"",
            e.message.replace('"', "'")
        );
        set_header(&mut r, "www-authenticate", &challenge);
    }
    r
}

/// The answer of a ServiceGateway POST that completed: a body a client can parse.
fn action_ok() -> Value {
    json!({ "status": "Succeeded" })
}

fn set_header(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Where a path leads.
enum Route {
    Inventory,
    Poll { subscription: String, op: u64, location_style: bool },
    Arm { scope: ScopeKey, target: Target },
}

fn route(path: &str) -> Result<Route, ArmError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let low: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let low: Vec<&str> = low.iter().map(String::as_str).collect();
    let not_found = || ArmError::new(404, "NotFound", format!("No route for {path}."));
    match low.as_slice() {
        ["_emulator", "inventory"] => Ok(Route::Inventory),
        ["subscriptions", _, "providers", "microsoft.network", "locations", _, kind @ ("operations" | "operationresults"), id] => {
            let op = id.parse::<u64>().map_err(|_| not_found())?;
            Ok(Route::Poll { subscription: segs[1].to_string(), op, location_style: *kind == "operationresults" })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", rest @ ..] if !rest.is_empty() => {
            let scope = ScopeKey::new(segs[1], segs[3]);
            let kind = match rest[0] {
                "publicipaddresses" => Some(ResourceKind::PublicIp),
                "loadbalancers" => Some(ResourceKind::LoadBalancer),
                "natgateways" => Some(ResourceKind::NatGateway),
                _ => None,
            };
            let target = match (kind, rest.len()) {
                (Some(k), 1) => Target::Collection(k),
                (Some(k), 2) => Target::Resource(k, segs[7].to_string()),
                (None, n) if rest[0] == "servicegateways" && n >= 2 => {
                    if rest[1] != SERVICE_GATEWAY_NAME {
                        return Ok(Route::Arm { scope, target: Target::OtherServiceGateway(segs[7].to_string()) });
                    }
                    match &rest[2..] {
                        [] => Target::ServiceGateway,
                        ["services"] => Target::SgwServices,
                        ["addresslocations"] => Target::SgwAddressLocations,
                        ["updateservices"] => Target::SgwUpdateServices,
                        ["updateaddresslocations"] => Target::SgwUpdateAddressLocations,
                        _ => return Err(not_found()),
                    }
                }
                _ => return Err(not_found()),
            };
            Ok(Route::Arm { scope, target })
        }
        _ => Err(not_found()),
    }
}

/// Reads a request body of at most `limits.max_body_bytes`: a longer one (declared or read) is
/// the limit's error, answered where the body is looked at; a body that cannot be read, a 400.
async fn read_body(headers: &HeaderMap, mut body: Body, limits: &RequestLimits) -> Result<Bytes, ArmError> {
    use hyper::body::Body as _;
    if let Some(declared) = header_text(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        limits.check_body_len(declared)?;
    }
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            None => return Ok(Bytes::from(buf)),
            Some(Err(e)) => return Err(ArmError::new(400, "InvalidRequestContent", format!("The request content could not be read: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    limits.check_body_len(buf.len().saturating_add(data.len()))?;
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Answers one request and tags it as ARM does: `x-ms-request-id` (the caller's
/// `x-ms-client-request-id` when it sent one, so one id finds the request in both logs) and the
/// caller's id echoed back; a log line and [`super::Emulator::recent_requests`] record it.
async fn handle(state: axum::extract::State<Arc<Server>>, method: HttpMethod, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let client_id = header_text(&headers, "x-ms-client-request-id").filter(|v| !v.is_empty() && v.len() <= 128);
    let request_id = client_id.clone().unwrap_or_else(|| format!("emulator-{:016x}", state.next_request.fetch_add(1, Ordering::Relaxed)));
    let (m, path) = (method.to_string(), uri.path().to_string());
    let user_agent = header_text(&headers, "user-agent").map(|v| v.chars().take(256).collect());
    let received = std::time::Instant::now();
    let server = state.0.clone();
    let mut response = answer(state, method, uri, headers, body).await;
    let status = response.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-ms-request-id", v.clone());
        if client_id.is_some() {
            response.headers_mut().insert("x-ms-client-request-id", v);
        }
    }
    tracing::info!(request_id = %request_id, method = %m, path = %path, status, "emulator answered");
    server.emulator.record_request(super::RequestRecord {
        client_request_id: client_id,
        request_id,
        method: m,
        path,
        status,
        user_agent,
        received,
        answered: std::time::Instant::now(),
    });
    response
}

async fn answer(
    axum::extract::State(server): axum::extract::State<Arc<Server>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = read_body(&headers, body, &server.emulator.options().limits).await;
    let route = route(uri.path());
    // The emulator's own endpoint is not ARM: it needs no token.
    if let Ok(Route::Inventory) = route {
        if method != HttpMethod::GET {
            return error_response(&ArmError::new(405, "HttpMethodNotAllowed", format!("{method} is not supported here.")));
        }
        let inv = match (query_param(&uri, "subscription"), query_param(&uri, "resourceGroup")) {
            (Some(s), Some(g)) => server.emulator.inventory_of(&ScopeKey::new(s, g)),
            _ => server.emulator.inventory(),
        };
        return json_response(200, &inv);
    }
    // As at ARM's front door: the token first (for the subscription the path names), then the route.
    let subscription = match &route {
        Ok(Route::Poll { subscription, .. }) => Some(subscription.clone()),
        Ok(Route::Arm { scope, .. }) => Some(scope.subscription.clone()),
        _ => None,
    };
    if let Err(e) = server.emulator.authorize(header_text(&headers, "authorization").as_deref(), subscription.as_deref()) {
        return error_response(&e);
    }
    let route = match route {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    // The subscription's budget, then the request; the answer says what is left (ARM's headers).
    let admission = subscription.and_then(|sub| server.emulator.admit(&sub, method != HttpMethod::GET, server.now_ms()));
    if let Some(a) = admission {
        let mut r = match a.retry_after_s {
            Some(s) => {
                let mut r = error_response(&super::backend::throttled(a.write, s));
                set_header(&mut r, "retry-after", &s.to_string());
                r
            }
            None => route_answer(&server, method, route, &uri, &headers, &body).await,
        };
        set_header(&mut r, a.header(), &a.remaining.to_string());
        return r;
    }
    route_answer(&server, method, route, &uri, &headers, &body).await
}

async fn route_answer(
    server: &Arc<Server>,
    method: HttpMethod,
    route: Route,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Result<Bytes, ArmError>,
) -> Response {
    match route {
        Route::Poll { subscription, op, location_style } if method == HttpMethod::GET => {
            server.poll(&subscription, op, location_style, uri)
        }
        Route::Arm { scope, target } => {
            let m = match method {
                HttpMethod::GET => Method::Get,
                HttpMethod::PUT => Method::Put,
                HttpMethod::DELETE => Method::Delete,
                HttpMethod::POST => Method::Post,
                _ => return error_response(&ArmError::new(405, "HttpMethodNotAllowed", format!("{method} is not supported."))),
            };
            match query_param(uri, "api-version") {
                None => {
                    return error_response(&ArmError::new(
                        400,
                        "MissingApiVersionParameter",
                        "The api-version query parameter (?api-version=) is required for all requests.",
                    ))
                }
                Some(v) if v != API_VERSION => {
                    return error_response(&ArmError::new(
                        400,
                        "InvalidApiVersionParameter",
                        format!("The api-version '{v}' is invalid; this emulator serves {API_VERSION}."),
                    ))
                }
                Some(_) => {}
            }
            let cond = Conditions { if_match: header_text(headers, "if-match"), if_none_match: header_text(headers, "if-none-match") };
            server.arm(m, &scope, target, uri, body, &cond).await
        }
        _ => error_response(&ArmError::new(405, "HttpMethodNotAllowed", format!("{method} is not supported here."))),
    }
}

impl Server {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn new_operation(&self, subscription: &str, outcome: Result<Option<Value>, (String, String)>, polls: u32, for_: Duration) -> u64 {
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        while ops.len() >= MAX_REMEMBERED_OPERATIONS {
            ops.pop_first();
        }
        ops.insert(
            id,
            Operation {
                created: Instant::now(),
                polls: 0,
                in_progress_polls: polls,
                in_progress_for: for_,
                subscription: subscription.to_ascii_lowercase(),
                outcome,
            },
        );
        id
    }

    /// Whether operation `op` has reported its outcome (a forgotten one has).
    fn op_done(&self, op: u64) -> bool {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).get(&op).is_none_or(Operation::done)
    }

    /// The in-progress operation on a resource, if one is still running.
    fn pending_of(&self, key: &PendingKey) -> Option<Pending> {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()?;
        if !self.op_done(p.op) {
            return Some(p);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.get(key).is_some_and(|q| q.op == p.op) {
            pending.remove(key);
        }
        None
    }

    fn set_pending(&self, key: PendingKey, value: Option<Pending>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(p) => {
                while pending.len() >= MAX_REMEMBERED_OPERATIONS {
                    pending.pop_first();
                }
                pending.insert(key, p);
            }
            None => {
                pending.remove(&key);
            }
        }
    }

    /// The resources of `kind` in `scope` with operations in progress: (lower-cased name, entry).
    fn pending_in(&self, scope: &ScopeKey, kind: ResourceKind) -> Vec<(String, Pending)> {
        let (sub, rg, ..) = pending_key(scope, kind, "");
        let keys: Vec<PendingKey> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|(s, g, k, _)| *s == sub && *g == rg && *k == kind)
            .cloned()
            .collect();
        keys.into_iter().filter_map(|k| self.pending_of(&k).map(|p| (k.3, p))).collect()
    }

    /// Adds the polling headers of operation `op` to `r`.
    fn polling_headers(&self, r: &mut Response, op: u64, scope: &ScopeKey, p: &PollingOptions) {
        let loc =
            self.emulator.state().location_of(scope).map(String::from).unwrap_or_else(|| self.emulator.options().scope.location.clone());
        let prefix = format!("{}/subscriptions/{}/providers/Microsoft.Network/locations/{loc}", self.base, scope.subscription);
        if matches!(p.headers, PollHeaders::AsyncOperation | PollHeaders::Both) {
            set_header(r, "azure-asyncoperation", &format!("{prefix}/operations/{op}?api-version={API_VERSION}"));
        }
        if matches!(p.headers, PollHeaders::Location | PollHeaders::Both) {
            set_header(r, "location", &format!("{prefix}/operationResults/{op}?api-version={API_VERSION}"));
        }
        if let Some(s) = p.retry_after() {
            set_header(r, "retry-after", &s.to_string());
        }
    }

    async fn arm(
        &self,
        m: Method,
        scope: &ScopeKey,
        target: Target,
        uri: &Uri,
        body: &Result<Bytes, ArmError>,
        cond: &Conditions,
    ) -> Response {
        // The size limit first, as the in-process backend checks it: before any fault.
        let body = match body {
            Ok(b) => b,
            Err(e) => return error_response(e),
        };
        let parsed: Option<Value> = if matches!(m, Method::Put | Method::Post) && !body.is_empty() {
            match serde_json::from_slice(body) {
                Ok(v) => Some(v),
                Err(e) => {
                    return error_response(&ArmError::new(
                        400,
                        "InvalidRequestContent",
                        format!("The request content is not valid JSON: {e}"),
                    ))
                }
            }
        } else {
            None
        };
        let mut lro_fail = None;
        if let Some(label) = label_of(m, &target) {
            let d = self.emulator.decide_faults(label, self.now_ms());
            if d.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(d.latency_ms)).await;
            }
            if let Some(e) = d.error {
                let mut r = error_response(&ArmError::new(e.status, &e.code, e.message));
                if let Some(s) = e.retry_after_s {
                    set_header(&mut r, "retry-after", &s.to_string());
                }
                return r;
            }
            lro_fail = d.lro_fail;
        }
        if let Err(e) = self.emulator.state().check_scope(scope) {
            return error_response(&e);
        }
        let opts = self.emulator.options();
        let polling = match &opts.lro {
            LroMode::Polling(p) => Some(p.clone()),
            LroMode::Synchronous => None,
        };
        // A fault that fails the operation: answered as an LRO that ends Failed, state untouched.
        if let Some(fail) = lro_fail.filter(|_| matches!(m, Method::Put | Method::Delete | Method::Post)) {
            let p = polling.clone().unwrap_or(PollingOptions {
                in_progress_polls: 0,
                headers: PollHeaders::AsyncOperation,
                ..Default::default()
            });
            let op = self.new_operation(&scope.subscription, Err(fail), p.in_progress_polls, p.in_progress_for);
            let mut r = match m {
                Method::Put => json_response(201, &with_state(parsed.clone().unwrap_or_else(|| json!({})), "Updating")),
                _ => empty_response(202),
            };
            self.polling_headers(&mut r, op, scope, &p);
            return r;
        }
        let resource = match &target {
            Target::Resource(kind, name) => Some((*kind, name.clone(), pending_key(scope, *kind, name))),
            _ => None,
        };
        // A GET during a long-running operation shows it in progress.
        if let (Method::Get, Some((_, _, key))) = (m, &resource) {
            match self.pending_of(key) {
                Some(Pending { state: "Deleting", snapshot: Some(snap), .. }) => return json_response(200, &with_state(snap, "Deleting")),
                Some(Pending { state, .. }) => {
                    return match self.emulator.apply(scope, m, &target, None, cond) {
                        Ok(Reply::Resource(v)) => json_response(200, &with_state(v, state)),
                        Ok(_) => error_response(&ArmError::new(500, "InternalServerError", "unexpected reply")),
                        Err(e) => error_response(&e),
                    };
                }
                None => {}
            }
        }
        // What a delete removes, to show while it runs.
        let snapshot = match (m, &polling) {
            (Method::Delete, Some(_)) => match self.emulator.apply(scope, Method::Get, &target, None, &Conditions::NONE) {
                Ok(Reply::Resource(v)) => Some(v),
                _ => None,
            },
            _ => None,
        };
        let reply = match self.emulator.apply(scope, m, &target, parsed.as_ref(), cond) {
            Ok(r) => r,
            Err(e) => return error_response(&e),
        };
        let key = resource.as_ref().map(|(_, _, k)| k.clone());
        match (reply, polling) {
            (Reply::Resource(v), _) => json_response(200, &v),
            (Reply::List(items), _) => {
                let items = match &target {
                    Target::Collection(kind) => self.overlay_list(scope, *kind, items),
                    _ => items,
                };
                self.page(items, uri)
            }
            (Reply::Put { created, body }, None) => {
                if let Some(k) = key {
                    self.set_pending(k, None);
                }
                json_response(if created { 201 } else { 200 }, &body)
            }
            (Reply::Put { created, body }, Some(p)) => {
                let op = self.new_operation(&scope.subscription, Ok(Some(body.clone())), p.in_progress_polls, p.in_progress_for);
                if let Some(k) = key {
                    self.set_pending(k, Some(Pending { op, state: "Updating", snapshot: None }));
                }
                let mut r = json_response(if created { 201 } else { 200 }, &with_state(body, "Updating"));
                self.polling_headers(&mut r, op, scope, &p);
                r
            }
            // ARM: nothing to delete is 204 at once, whatever the mode.
            (Reply::NoContent, _) => empty_response(204),
            (Reply::Deleted, None) => {
                if let Some(k) = key {
                    self.set_pending(k, None);
                }
                empty_response(200)
            }
            (Reply::Deleted, Some(p)) => {
                let op = self.new_operation(&scope.subscription, Ok(None), p.in_progress_polls, p.in_progress_for);
                if let Some(k) = key {
                    self.set_pending(k, Some(Pending { op, state: "Deleting", snapshot }));
                }
                let mut r = empty_response(202);
                self.polling_headers(&mut r, op, scope, &p);
                r
            }
            (Reply::Done, None) => json_response(200, &action_ok()),
            (Reply::Done, Some(p)) => {
                let op = self.new_operation(&scope.subscription, Ok(Some(action_ok())), p.in_progress_polls, p.in_progress_for);
                let mut r = empty_response(202);
                self.polling_headers(&mut r, op, scope, &p);
                r
            }
        }
    }

    /// A list during long-running operations: the updating ones as `Updating`, the ones being
    /// deleted still there as `Deleting`.
    fn overlay_list(&self, scope: &ScopeKey, kind: ResourceKind, mut items: Vec<Value>) -> Vec<Value> {
        let pending = self.pending_in(scope, kind);
        if pending.is_empty() {
            return items;
        }
        let name_of = |v: &Value| v.get("name").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
        for (name, p) in pending {
            match items.iter_mut().find(|v| name_of(v) == name) {
                Some(v) => *v = with_state(v.take(), p.state),
                None => {
                    if let (Some(snap), "Deleting") = (p.snapshot, p.state) {
                        items.push(with_state(snap, "Deleting"));
                    }
                }
            }
        }
        items.sort_by_key(|v| name_of(v));
        items
    }

    fn page(&self, items: Vec<Value>, uri: &Uri) -> Response {
        let Some(size) = self.emulator.options().page_size.filter(|s| *s > 0) else {
            return json_response(200, &json!({ "value": items }));
        };
        let skip = query_param(uri, "$skiptoken").and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
        let page: Vec<Value> = items.iter().skip(skip).take(size).cloned().collect();
        let mut out = json!({ "value": page });
        if skip.saturating_add(size) < items.len() {
            out["nextLink"] = json!(format!("{}{}?api-version={API_VERSION}&$skiptoken={}", self.base, uri.path(), skip + size));
        }
        json_response(200, &out)
    }

    fn poll(&self, subscription: &str, op: u64, location_style: bool, uri: &Uri) -> Response {
        if !self.emulator.state().knows_subscription(subscription) {
            return error_response(&ArmError::new(
                404,
                codes::SUBSCRIPTION_NOT_FOUND,
                format!("The subscription '{subscription}' could not be found."),
            ));
        }
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let Some(o) = ops.get_mut(&op).filter(|o| o.subscription == subscription.to_ascii_lowercase()) else {
            return error_response(&ArmError::new(404, "OperationNotFound", format!("Operation {op} was not found.")));
        };
        o.polls = o.polls.saturating_add(1);
        let done = o.done();
        let retry_after = match &self.emulator.options().lro {
            LroMode::Polling(p) => p.retry_after(),
            LroMode::Synchronous => None,
        };
        if !done {
            let mut r = if location_style { empty_response(202) } else { json_response(200, &json!({ "status": "InProgress" })) };
            if location_style {
                set_header(&mut r, "location", &format!("{}{}?{}", self.base, uri.path(), uri.query().unwrap_or("")));
            }
            if let Some(s) = retry_after {
                set_header(&mut r, "retry-after", &s.to_string());
            }
            return r;
        }
        match (&o.outcome, location_style) {
            (Ok(_), false) => json_response(200, &json!({ "status": "Succeeded" })),
            (Ok(Some(body)), true) => json_response(200, body),
            (Ok(None), true) => empty_response(204),
            (Err((code, message)), false) => {
                json_response(200, &json!({ "status": "Failed", "error": { "code": code, "message": message } }))
            }
            (Err((code, message)), true) => error_response(&ArmError::new(400, code, message.clone())),
        }
    }
}
