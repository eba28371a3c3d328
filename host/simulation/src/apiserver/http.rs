//! The API server's HTTP face (axum over the runtime's [`ServerHandle`]): the REST paths of the
//! kinds served (`/api/v1/...`, `/apis/<group>/<version>/...`, namespaced and across
//! namespaces), discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`), `/version`,
//! `/healthz`, and an empty `/openapi/v2` document (kubectl's client-side validation then knows
//! no schema and validates nothing; the server validates every write itself). Errors are
//! `Status` objects; bodies are bounded by [`ApiServerOptions::max_body_bytes`] and watches by
//! [`ApiServerOptions::max_watchers`].

use super::store::{ApiError, Kind, ListOptions, PatchType, Preconditions, Store, Subresource};
use super::watch::{bookmark_line, error_line, event_line, WatchFilter};
use super::{ApiServer, ApiServerOptions};
use crate::apiserver::selector::{FieldSelector, LabelSelector};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use difftracker_runtime::server::ServerHandle;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A running API server: the shared [`ServerHandle`] and the [`ApiServer`] it serves. Dropping
/// it stops the server and ends its watches.
pub struct ApiServerHandle {
    server: Option<ServerHandle>,
    api: Arc<ApiServer>,
    url: String,
}

impl ApiServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().map(ServerHandle::addr).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// `http://127.0.0.1:PORT` (loopback for an unspecified listening address).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn api(&self) -> &Arc<ApiServer> {
        &self.api
    }

    /// A kubeconfig that reaches this server over plain HTTP.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url)
    }

    /// Stops the server, ending every watch, and waits for it.
    pub async fn shutdown(mut self) {
        self.api.closing.send_replace(true);
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        self.api.closing.send_replace(true);
    }
}

/// A kubeconfig for `url`: one cluster (plain HTTP, so no certificate), a token user (the
/// server checks no credentials), namespace `default`.
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: difftracker\n  cluster:\n    server: {url}\ncontexts:\n- name: difftracker\n  context:\n    \
         cluster: difftracker\n    user: difftracker\n    namespace: default\ncurrent-context: difftracker\nusers:\n- name: difftracker\n  user:\n    \
         token: difftracker-apiserver\npreferences: {{}}\n"
    )
}

/// Serves a new API server built from `options` on `listener`.
pub async fn serve(listener: tokio::net::TcpListener, options: ApiServerOptions) -> std::io::Result<ApiServerHandle> {
    serve_api(listener, ApiServer::new(options)).await
}

/// Serves an existing [`ApiServer`] on `listener`.
pub async fn serve_api(listener: tokio::net::TcpListener, api: Arc<ApiServer>) -> std::io::Result<ApiServerHandle> {
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let app = Router::new().fallback(handle).with_state(api.clone());
    let server = ServerHandle::spawn_with(listener, app, "Kubernetes API server", api.options.server.clone())?;
    Ok(ApiServerHandle { server: Some(server), api, url: format!("http://{addr}") })
}

fn json_response(code: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response {
    let mut r = json_response(e.code, &e.status());
    if let Some(s) = e.retry_after_s {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// Where a request goes.
enum Route {
    Doc(Value),
    Text(&'static str),
    OpenApiV2,
    Resource { kind: Kind, namespace: Option<String>, name: Option<String>, sub: Subresource },
    NotFound,
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut gv: Vec<(&str, &str)> = Kind::ALL.iter().map(|k| (k.info().group, k.info().version)).filter(|(g, _)| !g.is_empty()).collect();
    gv.dedup();
    gv
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv], "preferredVersion": gv})
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for k in Kind::ALL.iter().filter(|k| k.info().group == group && k.info().version == version) {
        let i = k.info();
        resources.push(json!({
            "name": i.plural, "singularName": i.singular, "namespaced": i.namespaced, "kind": i.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": i.short_names,
        }));
        if i.status {
            resources.push(json!({"name": format!("{}/status", i.plural), "singularName": "", "namespaced": i.namespaced, "kind": i.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn route(path: &str, host: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        [] => return Route::Doc(json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/openapi/v2", "/version"]})),
        ["version"] => {
            return Route::Doc(json!({
                "major": "1", "minor": "37", "gitVersion": "v1.37.0-difftracker", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "", "compiler": "difftracker", "platform": "linux/amd64",
            }))
        }
        ["healthz"] | ["livez"] | ["readyz"] => return Route::Text("ok"),
        ["openapi", "v2"] => return Route::OpenApiV2,
        ["api"] => {
            return Route::Doc(json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}))
        }
        ["apis"] => {
            let groups: Vec<Value> = group_versions().into_iter().map(|(g, v)| group_doc(g, v)).collect();
            return Route::Doc(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
        }
        ["apis", g] => {
            return match group_versions().into_iter().find(|(x, _)| x == g) {
                Some((g, v)) => {
                    let mut d = group_doc(g, v);
                    d["kind"] = json!("APIGroup");
                    d["apiVersion"] = json!("v1");
                    Route::Doc(d)
                }
                None => Route::NotFound,
            }
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    if rest.is_empty() {
        return if Kind::ALL.iter().any(|k| k.info().group == group && k.info().version == version) {
            Route::Doc(resource_list(group, version))
        } else {
            Route::NotFound
        };
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let Some(kind) = Kind::from_path(group, version, rest[0]) else { return Route::NotFound };
    if namespace.is_some() && !kind.info().namespaced {
        return Route::NotFound;
    }
    let (name, sub) = match &rest[1..] {
        [] => (None, Subresource::Main),
        [name] => (Some(name.to_string()), Subresource::Main),
        [name, "status"] if kind.info().status => (Some(name.to_string()), Subresource::Status),
        _ => return Route::NotFound,
    };
    if name.is_some() && kind.info().namespaced && namespace.is_none() {
        return Route::NotFound;
    }
    Route::Resource { kind, namespace, name, sub }
}

fn not_found(path: &str) -> Response {
    error_response(&ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})")))
}

async fn handle(State(api): State<Arc<ApiServer>>, req: Request) -> Response {
    api.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    match route(&path, &host) {
        Route::Doc(d) if req.method() == Method::GET => json_response(200, &d),
        Route::Text(t) if req.method() == Method::GET => Response::new(Body::from(t)),
        Route::OpenApiV2 if req.method() == Method::GET => {
            // An empty document (valid as protobuf and as JSON's absence of schemas).
            let mut r = Response::new(Body::empty());
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"));
            r
        }
        Route::Resource { kind, namespace, name, sub } => resource(api, req, kind, namespace, name, sub).await,
        Route::NotFound => not_found(&path),
        _ => error_response(&ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({path})"),
        )),
    }
}

fn query_of(req: &Request) -> BTreeMap<String, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri()).map(|q| q.0.into_iter().collect()).unwrap_or_default()
}

fn list_options(q: &BTreeMap<String, String>) -> Result<ListOptions, ApiError> {
    let label_selector = q
        .get("labelSelector")
        .map(|s| LabelSelector::parse(s))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
    let field_selector = q.get("fieldSelector").map(|s| FieldSelector::parse(s)).transpose().map_err(ApiError::bad_request)?;
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?),
        None => None,
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_token: q.get("continue").cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q.get("resourceVersionMatch").cloned(),
    })
}

fn truthy(q: &BTreeMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

async fn resource(
    api: Arc<ApiServer>,
    req: Request,
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Subresource,
) -> Response {
    let q = query_of(&req);
    let method = req.method().clone();
    let verb = match (&method, name.is_some()) {
        (&Method::GET, true) => "GET",
        (&Method::GET, false) if truthy(&q, "watch") => "WATCH",
        (&Method::GET, false) => "LIST",
        (&Method::POST, false) => "CREATE",
        (&Method::PUT, true) => "UPDATE",
        (&Method::PATCH, true) => "PATCH",
        (&Method::DELETE, true) => "DELETE",
        _ => {
            return error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                format!("the server does not allow {method} on {}", req.uri().path()),
            ))
        }
    };
    if verb == "CREATE" && kind.info().namespaced && namespace.is_none() {
        return not_found(req.uri().path());
    }
    if q.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return error_response(&ApiError::bad_request("dryRun is not supported by this server"));
    }
    let resource = if sub == Subresource::Status { format!("{}/status", kind.info().plural) } else { kind.info().plural.to_string() };
    let mut drop_after = None;
    if let Some(faults) = &api.faults {
        let d = faults.decide(verb, &resource, api.started.elapsed().as_millis() as u64);
        if d.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(d.latency_ms)).await;
        }
        if let Some(e) = d.error {
            let error = ApiError { code: e.status, reason: e.reason, message: e.message, details: None, retry_after_s: e.retry_after_s };
            if verb == "WATCH" && e.status == 410 {
                return stream_response(vec![error_line(&error)]);
            }
            return error_response(&error);
        }
        drop_after = d.drop_after_ms.map(Duration::from_millis);
    }
    let ns = namespace.clone().unwrap_or_default();
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match axum::body::to_bytes(req.into_body(), api.options.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body is larger than the limit of {} bytes", api.options.max_body_bytes),
            ))
        }
    };
    let parse = |body: &Bytes| -> Result<Value, ApiError> {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body of the request is not valid JSON: {e}")))
    };
    let name = name.unwrap_or_default();
    let result: Result<(u16, Value), ApiError> = match verb {
        "GET" => api.read(|s| s.get(kind, &ns, &name)).map(|o| (200, o)),
        "LIST" => match list_options(&q) {
            Ok(opts) => api.read(|s| s.list(kind, namespace.as_deref(), &opts)).map(|page| {
                let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
                if let Some(c) = page.continue_token {
                    meta["continue"] = json!(c);
                    meta["remainingItemCount"] = json!(page.remaining.unwrap_or(0));
                }
                (200, json!({"kind": format!("{}List", kind.info().kind), "apiVersion": kind.api_version(), "metadata": meta, "items": page.items}))
            }),
            Err(e) => Err(e),
        },
        "WATCH" => return watch(api, kind, namespace, &q, drop_after).await,
        "CREATE" => parse(&body).and_then(|o| api.write(|s| s.create(kind, &ns, o))).map(|o| (201, o)),
        "UPDATE" => parse(&body).and_then(|o| api.write(|s| s.update(kind, &ns, &name, o, sub))).map(|o| (200, o)),
        "PATCH" => match PatchType::from_content_type(&content_type) {
            Some(t) => api.write(|s| s.patch(kind, &ns, &name, t, &body, sub)).map(|o| (200, o)),
            None if content_type.starts_with("application/apply-patch") => {
                Err(ApiError::new(415, "UnsupportedMediaType", "server-side apply (application/apply-patch+yaml) is not supported by this server"))
            }
            None => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({content_type:?}) - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
                ),
            )),
        },
        _ => {
            let pre = if body.iter().all(u8::is_ascii_whitespace) {
                Ok(Preconditions::default())
            } else {
                parse(&body).map(|o| Preconditions {
                    uid: o.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
                    resource_version: o.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string),
                })
            };
            pre.and_then(|pre| api.write(|s| s.delete(kind, &ns, &name, &pre))).map(|o| (200, o))
        }
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}

/// A 200 streaming the given lines, then ending.
fn stream_response(lines: Vec<Vec<u8>>) -> Response {
    let mut r = Response::new(Body::from(lines.concat()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Gives a watcher slot back when the watch ends.
struct Slot(Arc<ApiServer>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Events fetched from the log per lock.
const WATCH_BATCH: usize = 512;

async fn watch(
    api: Arc<ApiServer>,
    kind: Kind,
    namespace: Option<String>,
    q: &BTreeMap<String, String>,
    drop_after: Option<Duration>,
) -> Response {
    let opts = match list_options(q) {
        Ok(o) => o,
        Err(e) => return error_response(&e),
    };
    let timeout = match q.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => match t.parse::<u64>() {
            Ok(s) => Duration::from_secs(s).min(api.options.max_watch_duration),
            Err(_) => return error_response(&ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))),
        },
        None => api.options.max_watch_duration,
    };
    let bookmarks = truthy(q, "allowWatchBookmarks");
    let filter = WatchFilter { namespace, label_selector: opts.label_selector, field_selector: opts.field_selector };
    let from_rv = opts.resource_version.filter(|v| !v.is_empty() && v != "0");
    let start = match from_rv.as_deref().map(str::parse::<u64>) {
        Some(Err(_)) => {
            return error_response(&ApiError::bad_request(format!("invalid resourceVersion {:?}", from_rv.unwrap_or_default())))
        }
        Some(Ok(n)) => Some(n),
        None => None,
    };
    if api.watchers.fetch_add(1, Ordering::SeqCst) >= api.options.max_watchers {
        api.watchers.fetch_sub(1, Ordering::SeqCst);
        let mut e =
            ApiError::new(429, "TooManyRequests", format!("the server serves at most {} watches at once", api.options.max_watchers));
        e.retry_after_s = Some(1);
        return error_response(&e);
    }
    let slot = Slot(api.clone());
    let mut changed = api.changed.subscribe();
    changed.borrow_and_update();
    // Without a resourceVersion (or "0") the watch begins with the current objects as ADDED.
    let (initial, mut from) = match start {
        Some(n) => (Vec::new(), n),
        None => api.read(|s: &Store| {
            let all = s.list(kind, filter.namespace.as_deref(), &ListOptions { limit: Some(usize::MAX), ..Default::default() });
            let items = all.map(|p| p.items).unwrap_or_default();
            let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
            (items, s.resource_version())
        }),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut closing = api.closing.subscribe();
    let bookmark_interval = api.options.bookmark_interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let _slot = slot;
        let api = _slot.0.clone();
        for o in &initial {
            if tx.send(Bytes::from(event_line("ADDED", o))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let drop_at = drop_after.map(|d| tokio::time::Instant::now() + d);
        let mut next_bookmark = tokio::time::Instant::now() + bookmark_interval;
        loop {
            changed.borrow_and_update();
            let batch = api.read(|s| s.events_since(kind, from, WATCH_BATCH));
            match batch {
                Err(e) => {
                    let _ = tx.send(Bytes::from(error_line(&e))).await;
                    return;
                }
                Ok((events, through)) => {
                    let full = events.len() == WATCH_BATCH;
                    for e in &events {
                        if let Some((t, o)) = filter.translate(e) {
                            if tx.send(Bytes::from(event_line(t.as_str(), o))).await.is_err() {
                                return;
                            }
                        }
                    }
                    from = through;
                    if full {
                        continue;
                    }
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
                // `wait_for`, not `changed`: a watch that began after closing was set ends too.
                _ = async { drop(closing.wait_for(|c| *c).await) } => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tokio::time::sleep_until(drop_at.unwrap_or(deadline)), if drop_at.is_some() => return,
                _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                    next_bookmark = tokio::time::Instant::now() + bookmark_interval;
                    if tx.send(Bytes::from(bookmark_line(kind, from))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx)) });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
