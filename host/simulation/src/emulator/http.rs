//! The emulator's HTTP face (axum): the 14 calls of AZURE-WIRE.md section 0 under any
//! subscription and resource group, the polling URLs it hands out, and
//! `GET /_emulator/inventory`. Paths match case-insensitively; errors are ARM error bodies with
//! `x-ms-error-code`.

use super::state::{label_of, ArmError, Method, Reply, Target};
use super::{Emulator, EmulatorOptions, LroMode, PollHeaders};
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
    /// Ok(final body for a Location poll, if any) or Err(code, message).
    outcome: Result<Option<Value>, (String, String)>,
}

struct Server {
    emulator: Arc<Emulator>,
    ops: Mutex<BTreeMap<u64, Operation>>,
    next_op: AtomicU64,
    started: Instant,
    addr: SocketAddr,
}

/// A running emulator server: the shared [`ServerHandle`] and the emulator it serves. Dropping it
/// stops the server.
pub struct EmulatorHandle {
    server: ServerHandle,
    emulator: Arc<Emulator>,
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
    pub fn base_url(&self) -> String {
        self.server.url()
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

/// Serves an existing emulator (e.g. one also used in-process) on `listener`.
pub async fn serve_emulator(listener: tokio::net::TcpListener, emulator: Arc<Emulator>) -> std::io::Result<EmulatorHandle> {
    let addr = listener.local_addr()?;
    let server = Arc::new(Server {
        emulator: emulator.clone(),
        ops: Mutex::new(BTreeMap::new()),
        next_op: AtomicU64::new(1),
        started: Instant::now(),
        addr,
    });
    let app = Router::new().fallback(handle).with_state(server);
    Ok(EmulatorHandle { server: ServerHandle::spawn(listener, app, "emulator")?, emulator })
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
    r
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

/// Where a path leads.
enum Route {
    Inventory,
    Poll { op: u64, location_style: bool },
    Arm { sub: String, provider_path: String, target: Target },
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
            Ok(Route::Poll { op, location_style: *kind == "operationresults" })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", rest @ ..] if !rest.is_empty() => {
            let provider_path = format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network", segs[1], segs[3]);
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
                        return Err(ArmError::new(
                            404,
                            "ResourceNotFound",
                            format!("The Resource 'Microsoft.Network/serviceGateways/{}' was not found.", segs[7]),
                        ));
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
            Ok(Route::Arm { sub: segs[1].to_string(), provider_path, target })
        }
        _ => Err(not_found()),
    }
}

async fn handle(
    axum::extract::State(server): axum::extract::State<Arc<Server>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = match route(uri.path()) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let base = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| format!("http://{}", server.addr));
    match route {
        Route::Inventory if method == HttpMethod::GET => json_response(200, &server.emulator.inventory()),
        Route::Poll { op, location_style, .. } if method == HttpMethod::GET => server.poll(op, location_style, &base, &uri),
        Route::Arm { sub, provider_path, target } => {
            let m = match method {
                HttpMethod::GET => Method::Get,
                HttpMethod::PUT => Method::Put,
                HttpMethod::DELETE => Method::Delete,
                HttpMethod::POST => Method::Post,
                _ => return error_response(&ArmError::new(405, "HttpMethodNotAllowed", format!("{method} is not supported."))),
            };
            match query_param(&uri, "api-version") {
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
            server.arm(m, &sub, &provider_path, target, &base, &uri, &body).await
        }
        _ => error_response(&ArmError::new(405, "HttpMethodNotAllowed", format!("{method} is not supported here."))),
    }
}

impl Server {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn new_operation(&self, outcome: Result<Option<Value>, (String, String)>, polls: u32, for_: Duration) -> u64 {
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        while ops.len() >= MAX_REMEMBERED_OPERATIONS {
            ops.pop_first();
        }
        ops.insert(id, Operation { created: Instant::now(), polls: 0, in_progress_polls: polls, in_progress_for: for_, outcome });
        id
    }

    /// Adds the polling headers of operation `op` to `r`.
    fn polling_headers(&self, r: &mut Response, op: u64, sub: &str, base: &str, headers: PollHeaders, retry_after_s: Option<u64>) {
        let loc = &self.emulator.options().scope.location;
        let prefix = format!("{base}/subscriptions/{sub}/providers/Microsoft.Network/locations/{loc}");
        if matches!(headers, PollHeaders::AsyncOperation | PollHeaders::Both) {
            set_header(r, "azure-asyncoperation", &format!("{prefix}/operations/{op}?api-version={API_VERSION}"));
        }
        if matches!(headers, PollHeaders::Location | PollHeaders::Both) {
            set_header(r, "location", &format!("{prefix}/operationResults/{op}?api-version={API_VERSION}"));
        }
        if let Some(s) = retry_after_s {
            set_header(r, "retry-after", &s.to_string());
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn arm(&self, m: Method, sub: &str, provider_path: &str, target: Target, base: &str, uri: &Uri, body: &Bytes) -> Response {
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
        let opts = self.emulator.options();
        // A fault that fails the operation: answered as an LRO that ends Failed, state untouched.
        if let Some(fail) = lro_fail.filter(|_| matches!(m, Method::Put | Method::Delete | Method::Post)) {
            let (polls, for_, headers, ra) = match &opts.lro {
                LroMode::Polling(p) => (p.in_progress_polls, p.in_progress_for, p.headers, p.retry_after_s),
                LroMode::Synchronous => (0, Duration::ZERO, PollHeaders::AsyncOperation, None),
            };
            let op = self.new_operation(Err(fail), polls, for_);
            let mut r = match m {
                Method::Put => {
                    let mut b = parsed.clone().unwrap_or_else(|| json!({}));
                    if let Some(o) = b.as_object_mut() {
                        let p = o.entry("properties").or_insert_with(|| json!({}));
                        if let Some(p) = p.as_object_mut() {
                            p.insert("provisioningState".into(), json!("Updating"));
                        }
                    }
                    json_response(201, &b)
                }
                _ => empty_response(202),
            };
            self.polling_headers(&mut r, op, sub, base, headers, ra);
            return r;
        }
        let reply = self.emulator.apply(m, &target, provider_path, parsed.as_ref());
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return error_response(&e),
        };
        match (reply, &opts.lro) {
            (Reply::Resource(v), _) => json_response(200, &v),
            (Reply::List(items), _) => self.page(items, base, uri),
            (Reply::Put { created, body }, LroMode::Synchronous) => json_response(if created { 201 } else { 200 }, &body),
            (Reply::Put { created, body }, LroMode::Polling(p)) => {
                let op = self.new_operation(Ok(Some(body.clone())), p.in_progress_polls, p.in_progress_for);
                let mut b = body;
                if let Some(ps) = b.get_mut("properties").and_then(Value::as_object_mut) {
                    ps.insert("provisioningState".into(), json!("Updating"));
                }
                let mut r = json_response(if created { 201 } else { 200 }, &b);
                self.polling_headers(&mut r, op, sub, base, p.headers, p.retry_after_s);
                r
            }
            (Reply::Deleted, LroMode::Synchronous) => empty_response(200),
            (Reply::Done, LroMode::Synchronous) => empty_response(200),
            (Reply::Deleted | Reply::Done, LroMode::Polling(p)) => {
                let op = self.new_operation(Ok(None), p.in_progress_polls, p.in_progress_for);
                let mut r = empty_response(202);
                self.polling_headers(&mut r, op, sub, base, p.headers, p.retry_after_s);
                r
            }
        }
    }

    fn page(&self, items: Vec<Value>, base: &str, uri: &Uri) -> Response {
        let Some(size) = self.emulator.options().page_size.filter(|s| *s > 0) else {
            return json_response(200, &json!({ "value": items }));
        };
        let skip = query_param(uri, "$skiptoken").and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
        let page: Vec<Value> = items.iter().skip(skip).take(size).cloned().collect();
        let mut out = json!({ "value": page });
        if skip + size < items.len() {
            out["nextLink"] = json!(format!("{base}{}?api-version={API_VERSION}&$skiptoken={}", uri.path(), skip + size));
        }
        json_response(200, &out)
    }

    fn poll(&self, op: u64, location_style: bool, base: &str, uri: &Uri) -> Response {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let Some(o) = ops.get_mut(&op) else {
            return error_response(&ArmError::new(404, "OperationNotFound", format!("Operation {op} was not found.")));
        };
        o.polls = o.polls.saturating_add(1);
        let done = o.polls > o.in_progress_polls && o.created.elapsed() >= o.in_progress_for;
        let retry_after = match &self.emulator.options().lro {
            LroMode::Polling(p) => p.retry_after_s,
            LroMode::Synchronous => None,
        };
        if !done {
            let mut r = if location_style { empty_response(202) } else { json_response(200, &json!({ "status": "InProgress" })) };
            if location_style {
                set_header(&mut r, "location", &format!("{base}{}?{}", uri.path(), uri.query().unwrap_or("")));
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
