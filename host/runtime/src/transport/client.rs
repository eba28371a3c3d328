//! The ARM/NRP HTTP transport: one [`CloudCall`] in, one completion out, with ARM's conventions
//! (AZURE-WIRE.md sections 1.4 to 1.7): long-running operations, `Retry-After`, paging, the
//! ServiceGateway POST quirk, 404-as-success on deletes (but not when the subscription or
//! resource group is missing), a floor under the poll interval. Every failure becomes a typed
//! [`CallError`]; nothing here panics on what a server sends.

use super::auth::{NoAuth, TokenSource};
use super::config::{NameError, ResourceKind, SgwOperation, TenantAzureConfig};
use super::pacing;
use super::wire;
use crate::backend::{CallFuture, CloudBackend};
use difftracker_engine::io::{CallError, CallOutput, CloudCall, ErrorKind};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// ARM's header for the caller's correlation id ([`crate::correlation`]).
pub const CLIENT_REQUEST_ID: &str = "x-ms-client-request-id";

/// Knobs of the transport. Defaults follow AZURE-WIRE.md; tests shrink the delays.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// LRO poll interval when a response carries no `Retry-After` (5 s).
    pub default_poll_interval: Duration,
    /// The shortest wait between LRO polls, whatever `Retry-After` says (1 s, as azcore's
    /// minimum poll frequency): a server answering `Retry-After: 0` is not polled in a loop.
    pub min_poll_interval: Duration,
    /// Transport-level retries of 408/429/5xx and connection failures (3).
    pub max_retries: u32,
    /// First retry delay without `Retry-After`; doubles per retry (5 s).
    pub retry_base_delay: Duration,
    /// Cap of the doubling delay (60 s).
    pub retry_max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: the error goes to the engine at once (60 s).
    pub max_retry_after: Duration,
    /// Bound of one whole call, LRO polling included (5 minutes).
    pub operation_timeout: Duration,
    /// Bound of one HTTP exchange (1 minute).
    pub attempt_timeout: Duration,
    /// Pages followed at most on a list call (1000).
    pub max_pages: usize,
    /// Items a list call accumulates at most across its pages (100,000).
    pub max_list_items: usize,
    /// Body bytes a list call reads at most across its pages (64 MiB).
    pub max_list_bytes: usize,
    /// Bytes of one response body read at most; a longer body is a transport error (16 MiB).
    pub max_response_bytes: usize,
    /// Bytes kept of an ARM error's code and of its message, each (4 KiB); the rest is cut on a
    /// character boundary and marked.
    pub max_error_text_bytes: usize,
    pub user_agent: String,
    /// The subscription's write budget the host paces its writes under ([`pacing`]), shared by
    /// every tenant writing to the subscription; ARM's default (200, refilled at 10 per second)
    /// unless set, none (unpaced) when `None`.
    pub write_budget: Option<pacing::Budget>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            default_poll_interval: Duration::from_secs(5),
            min_poll_interval: Duration::from_secs(1),
            max_retries: 3,
            retry_base_delay: Duration::from_secs(5),
            retry_max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(300),
            attempt_timeout: Duration::from_secs(60),
            max_pages: 1000,
            max_list_items: 100_000,
            max_list_bytes: 64 << 20,
            max_response_bytes: 16 << 20,
            max_error_text_bytes: 4096,
            user_agent: concat!("difftracker/", env!("CARGO_PKG_VERSION")).into(),
            write_budget: Some(pacing::Budget::default()),
        }
    }
}

impl TransportOptions {
    /// Millisecond delays and one retry: for tests against loopback servers.
    pub fn fast_for_tests() -> Self {
        TransportOptions {
            default_poll_interval: Duration::from_millis(5),
            min_poll_interval: Duration::from_millis(1),
            max_retries: 2,
            retry_base_delay: Duration::from_millis(5),
            retry_max_delay: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Get,
    Put,
    Delete,
    Post,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
            Verb::Post => "POST",
        }
    }
    fn reqwest(self) -> reqwest::Method {
        match self {
            Verb::Get => reqwest::Method::GET,
            Verb::Put => reqwest::Method::PUT,
            Verb::Delete => reqwest::Method::DELETE,
            Verb::Post => reqwest::Method::POST,
        }
    }
}

/// One received response.
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// The request a call is about, for error messages ("PUT /subscriptions/…/loadBalancers/x").
#[derive(Clone)]
struct Ctx {
    verb: Verb,
    path: String,
}

impl Ctx {
    fn what(&self) -> String {
        format!("{} {}", self.verb.as_str(), self.path)
    }
    fn invalid(&self, status: u16, msg: impl std::fmt::Display) -> CallError {
        CallError {
            kind: ErrorKind::InvalidResponse,
            status,
            code: String::new(),
            message: format!("{}: {msg}", self.what()),
            retry_after_ms: None,
        }
    }
}

fn name_error(call: &CloudCall, e: NameError) -> CallError {
    CallError {
        kind: ErrorKind::Http,
        status: 400,
        code: "InvalidResourceName".into(),
        message: format!("{}: refused before sending: {e}", call.label()),
        retry_after_ms: None,
    }
}

/// The ARM/NRP transport of one tenant. Cheap to clone.
#[derive(Clone)]
pub struct ArmTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: TenantAzureConfig,
    options: TransportOptions,
    http: reqwest::Client,
    tokens: Arc<dyn TokenSource>,
    origin: String,
    pacer: Option<Arc<pacing::WritePacer>>,
}

/// `scheme://host[:port]`, lower-cased, of an absolute URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

/// The path part of a URL (no query), for messages.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    path.split(['?', '#']).next().unwrap_or("/").to_string()
}

impl ArmTransport {
    /// A transport for `config`; fails on a configuration that cannot form URLs.
    pub fn new(config: TenantAzureConfig, tokens: Arc<dyn TokenSource>, options: TransportOptions) -> Result<Self, NameError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(options.attempt_timeout.min(Duration::from_secs(20)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NameError::Endpoint { value: config.arm_endpoint.clone(), reason: format!("HTTP client: {e}") })?;
        let origin = origin_of(config.endpoint())
            .ok_or_else(|| NameError::Endpoint { value: config.arm_endpoint.clone(), reason: "has no host".into() })?;
        let pacer = options.write_budget.map(|b| pacing::shared(&origin, config.network_subscription(), b));
        Ok(ArmTransport { inner: Arc::new(Inner { config, options, http, tokens, origin, pacer }) })
    }

    /// A transport without authentication (the emulator).
    pub fn unauthenticated(config: TenantAzureConfig, options: TransportOptions) -> Result<Self, NameError> {
        Self::new(config, Arc::new(NoAuth), options)
    }

    pub fn config(&self) -> &TenantAzureConfig {
        &self.inner.config
    }

    pub fn options(&self) -> &TransportOptions {
        &self.inner.options
    }

    /// Performs one call, bounded by the operation timeout.
    pub async fn perform(&self, call: CloudCall) -> Result<CallOutput, CallError> {
        let label = call.label();
        let timeout = self.inner.options.operation_timeout;
        match tokio::time::timeout(timeout, self.perform_unbounded(call)).await {
            Ok(r) => r,
            Err(_) => Err(CallError {
                kind: ErrorKind::Timeout,
                status: 0,
                code: String::new(),
                message: format!("{label}: no answer within the operation timeout of {} ms", timeout.as_millis()),
                retry_after_ms: None,
            }),
        }
    }

    async fn perform_unbounded(&self, call: CloudCall) -> Result<CallOutput, CallError> {
        let cfg = &self.inner.config;
        let ne = |e| name_error(&call, e);
        match &call {
            CloudCall::PutPublicIp { name, version } => {
                let path = cfg.resource_id(ResourceKind::PublicIp, name).map_err(ne)?;
                let body = wire::public_ip_body(cfg, name, *version).map_err(ne)?;
                let (ctx, v) = self.put_resource(&path, &body).await?;
                let info = wire::parse_public_ip(&v, Some((name.as_str(), *version))).map_err(|m| ctx.invalid(200, m))?;
                Ok(CallOutput::PublicIp(info))
            }
            CloudCall::DeletePublicIp { name } => self.delete_resource(&cfg.resource_id(ResourceKind::PublicIp, name).map_err(ne)?).await,
            CloudCall::ListPublicIps => {
                let (ctx, items) = self.list(&cfg.collection_path(ResourceKind::PublicIp)).await?;
                let ips = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| wire::parse_public_ip(v, None).map_err(|m| ctx.invalid(200, format!("value[{i}]: {m}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(CallOutput::PublicIps(ips))
            }
            CloudCall::PutLoadBalancer(spec) => {
                let path = cfg.resource_id(ResourceKind::LoadBalancer, &spec.name).map_err(ne)?;
                let body = wire::load_balancer_body(cfg, spec).map_err(ne)?;
                self.put_resource(&path, &body).await?;
                Ok(CallOutput::Done)
            }
            CloudCall::DeleteLoadBalancer { name } => {
                self.delete_resource(&cfg.resource_id(ResourceKind::LoadBalancer, name).map_err(ne)?).await
            }
            CloudCall::ListLoadBalancers => self.list_names(&cfg.collection_path(ResourceKind::LoadBalancer)).await,
            CloudCall::PutNatGateway(spec) => {
                let path = cfg.resource_id(ResourceKind::NatGateway, &spec.name).map_err(ne)?;
                let body = wire::nat_gateway_body(cfg, spec).map_err(ne)?;
                self.put_resource(&path, &body).await?;
                Ok(CallOutput::Done)
            }
            CloudCall::DetachNatGateway { name, raw } => {
                let path = cfg.resource_id(ResourceKind::NatGateway, name).map_err(ne)?;
                let body = wire::detach_nat_body(raw).map_err(|m| CallError {
                    kind: ErrorKind::InvalidResponse,
                    status: 0,
                    code: String::new(),
                    message: format!("PUT {path}: {m}"),
                    retry_after_ms: None,
                })?;
                self.put_resource(&path, &body).await?;
                Ok(CallOutput::Done)
            }
            CloudCall::GetNatGateway { name } => {
                let path = cfg.resource_id(ResourceKind::NatGateway, name).map_err(ne)?;
                let ctx = Ctx { verb: Verb::Get, path: path.clone() };
                match self.get_resource(&path).await? {
                    None => Ok(CallOutput::NatGateway(None)),
                    Some((v, raw)) => {
                        let info = wire::parse_nat_gateway(&v, raw).map_err(|m| ctx.invalid(200, m))?;
                        Ok(CallOutput::NatGateway(Some(info)))
                    }
                }
            }
            CloudCall::DeleteNatGateway { name } => {
                self.delete_resource(&cfg.resource_id(ResourceKind::NatGateway, name).map_err(ne)?).await
            }
            CloudCall::ListNatGateways => self.list_names(&cfg.collection_path(ResourceKind::NatGateway)).await,
            CloudCall::GetSgwServices => {
                let (ctx, items) = self.list(&cfg.sgw_path(SgwOperation::Services)).await?;
                Ok(CallOutput::SgwServices(wire::parse_sgw_services(&items).map_err(|m| ctx.invalid(200, m))?))
            }
            CloudCall::GetAddressLocations => {
                let (ctx, items) = self.list(&cfg.sgw_path(SgwOperation::AddressLocations)).await?;
                Ok(CallOutput::AddressLocations(wire::parse_address_locations(&items).map_err(|m| ctx.invalid(200, m))?))
            }
            CloudCall::UpdateServices(reqs) => {
                if reqs.is_empty() {
                    return Ok(CallOutput::Done);
                }
                let body = wire::update_services_body(cfg, reqs).map_err(ne)?;
                // 404 on an unregistration means "already unregistered" (AZURE-WIRE.md §3.13.4); on
                // a batch it only says one of its services is, so the engine splits it (ENGINE.md 5.5).
                let not_found_ok = matches!(reqs.as_slice(), [r] if r.is_delete);
                self.post_sgw(&cfg.sgw_path(SgwOperation::UpdateServices), &body, not_found_ok).await?;
                Ok(CallOutput::Done)
            }
            CloudCall::UpdateAddressLocations(locs) => {
                let body = wire::update_address_locations_body(locs);
                self.post_sgw(&cfg.sgw_path(SgwOperation::UpdateAddressLocations), &body, false).await?;
                Ok(CallOutput::Done)
            }
        }
    }

    // -------------------------------------------------------------------- HTTP exchange

    fn backoff(&self, retry: u32) -> Duration {
        let o = &self.inner.options;
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        o.retry_base_delay.saturating_mul(factor).min(o.retry_max_delay)
    }

    /// One request, with transport-level retries of 408/429/5xx and connection failures. The
    /// last response is returned whatever its status; only a failure to get any response is an
    /// error.
    async fn send(&self, ctx: &Ctx, verb: Verb, url: &str, body: Option<&Value>) -> Result<Resp, CallError> {
        let o = &self.inner.options;
        if origin_of(url).as_deref() != Some(self.inner.origin.as_str()) {
            return Err(ctx.invalid(0, format!("refusing to follow {url:?}: not on the ARM endpoint {}", self.inner.origin)));
        }
        let payload = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ctx.invalid(0, format!("cannot encode body: {e}")))?),
            None => None,
        };
        let mut retry = 0u32;
        loop {
            let token = self.inner.tokens.token().await.map_err(|e| CallError {
                kind: ErrorKind::Transport,
                status: 0,
                code: "CredentialUnavailable".into(),
                message: format!("{}: {e}", ctx.what()),
                retry_after_ms: None,
            })?;
            let mut req = self
                .inner
                .http
                .request(verb.reqwest(), url)
                .timeout(o.attempt_timeout)
                .header(ACCEPT, "application/json")
                .header(USER_AGENT, o.user_agent.as_str());
            if let Some(id) = crate::correlation::current() {
                req = req.header(CLIENT_REQUEST_ID, id.as_str());
            }
            if let Some(t) = token {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.secret())).map_err(|_| CallError {
                    kind: ErrorKind::Transport,
                    status: 0,
                    code: "CredentialUnavailable".into(),
                    message: format!("{}: the access token is not a valid header value", ctx.what()),
                    retry_after_ms: None,
                })?;
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
            if let Some(p) = &payload {
                req = req.header(CONTENT_TYPE, "application/json").body(p.clone());
            }
            let pacer = self.inner.pacer.as_ref().filter(|_| !matches!(verb, Verb::Get));
            if let Some(p) = pacer {
                p.acquire().await;
            }
            let outcome = match req.send().await {
                Ok(rsp) => {
                    let status = rsp.status().as_u16();
                    let headers = rsp.headers().clone();
                    if let Some(p) = pacer {
                        let remaining =
                            headers.get(pacing::REMAINING_WRITES_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
                        if let Some(n) = remaining {
                            p.observe(n);
                        }
                        if status == 429 {
                            p.hold_now(retry_after(&headers).unwrap_or(Duration::from_secs(1)));
                        }
                    }
                    match read_body(rsp, o.max_response_bytes).await {
                        Ok(body) => Ok(Resp { status, headers, body }),
                        // Not retried: the same answer would be as large again.
                        Err(BodyError::TooLarge(why)) => {
                            let msg = format!("{} {}: {why}", verb.as_str(), path_of(url));
                            return Err(CallError {
                                kind: ErrorKind::Transport,
                                status: 0,
                                code: String::new(),
                                message: if path_of(url) == ctx.path { msg } else { format!("{}: {msg}", ctx.what()) },
                                retry_after_ms: None,
                            });
                        }
                        Err(BodyError::Read(e)) => Err(format!("reading the response of {} {}: {e}", verb.as_str(), path_of(url))),
                    }
                }
                Err(e) => Err(format!("{} {}: {e}", verb.as_str(), path_of(url))),
            };
            match outcome {
                Ok(resp) if matches!(resp.status, 408 | 429 | 500 | 502 | 503 | 504) => {
                    let ra = retry_after(&resp.headers);
                    if retry >= o.max_retries || ra.is_some_and(|d| d > o.max_retry_after) {
                        return Ok(resp);
                    }
                    let delay = ra.unwrap_or_else(|| self.backoff(retry));
                    tracing::debug!(status = resp.status, ?delay, "{}: retrying", ctx.what());
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                Ok(resp) => return Ok(resp),
                Err(msg) => {
                    if retry >= o.max_retries {
                        return Err(CallError {
                            kind: ErrorKind::Transport,
                            status: 0,
                            code: String::new(),
                            message: if path_of(url) == ctx.path { msg } else { format!("{}: {msg}", ctx.what()) },
                            retry_after_ms: None,
                        });
                    }
                    tokio::time::sleep(self.backoff(retry)).await;
                    retry += 1;
                }
            }
        }
    }

    /// The error a non-success response means.
    fn error_of(&self, ctx: &Ctx, resp: &Resp, kind: Option<ErrorKind>) -> CallError {
        let body: Option<Value> = serde_json::from_slice(&resp.body).ok();
        let header_code = resp.headers.get("x-ms-error-code").and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty());
        let body_err = body.as_ref().and_then(|b| self.arm_error(b));
        let code = header_code.map(|c| self.bounded(c.to_string())).or_else(|| body_err.as_ref().map(|e| e.0.clone())).unwrap_or_default();
        let detail = match &body_err {
            Some((_, m)) if !m.is_empty() => m.clone(),
            _ => {
                let text = String::from_utf8_lossy(&resp.body);
                let text: String = text.chars().take(200).collect();
                if text.trim().is_empty() {
                    format!("HTTP {}", resp.status)
                } else {
                    format!("HTTP {}: {}", resp.status, text.trim())
                }
            }
        };
        let kind = kind.unwrap_or(if resp.status == 429 { ErrorKind::Throttled } else { ErrorKind::Http });
        CallError {
            kind,
            status: resp.status,
            code,
            message: format!("{}: {detail}", ctx.what()),
            retry_after_ms: retry_after(&resp.headers).map(|d| d.as_millis().min(u64::MAX as u128) as u64),
        }
    }

    /// The ARM error of a body ([`wire::arm_error_of`]), its code and message each cut to
    /// [`TransportOptions::max_error_text_bytes`].
    fn arm_error(&self, body: &Value) -> Option<(String, String)> {
        wire::arm_error_of(body).map(|(code, message)| (self.bounded(code), self.bounded(message)))
    }

    fn bounded(&self, text: String) -> String {
        bounded(text, self.inner.options.max_error_text_bytes)
    }

    /// A status the call does not accept: an ARM error from 4xx/5xx, else an unreadable response.
    fn unexpected(&self, ctx: &Ctx, resp: &Resp) -> CallError {
        if resp.status >= 400 {
            self.error_of(ctx, resp, None)
        } else {
            ctx.invalid(resp.status, format!("unexpected status {}", resp.status))
        }
    }

    fn json_of(&self, ctx: &Ctx, resp: &Resp) -> Result<Value, CallError> {
        serde_json::from_slice(&resp.body).map_err(|e| ctx.invalid(resp.status, format!("malformed JSON body: {e}")))
    }

    /// The wait before the next poll: `Retry-After` (capped) or the default, never below the floor.
    fn poll_delay(&self, headers: &HeaderMap) -> Duration {
        let o = &self.inner.options;
        retry_after(headers).map(|d| d.min(o.max_retry_after)).unwrap_or(o.default_poll_interval).max(o.min_poll_interval)
    }

    // -------------------------------------------------------------------- call shapes

    /// PUT and drive the LRO; returns the final resource body.
    async fn put_resource(&self, path: &str, body: &Value) -> Result<(Ctx, Value), CallError> {
        let ctx = Ctx { verb: Verb::Put, path: path.to_string() };
        let url = self.inner.config.url(path);
        let resp = self.send(&ctx, Verb::Put, &url, Some(body)).await?;
        if !matches!(resp.status, 200..=202) {
            return Err(self.unexpected(&ctx, &resp));
        }
        if let Some(op) = header_str(&resp.headers, "azure-asyncoperation") {
            self.poll_async(&ctx, &op, self.poll_delay(&resp.headers)).await?;
            return self.final_get(&ctx, &url).await.map(|v| (ctx, v));
        }
        if let Some(loc) = header_str(&resp.headers, "location") {
            self.poll_location(&ctx, &loc, self.poll_delay(&resp.headers)).await?;
            return self.final_get(&ctx, &url).await.map(|v| (ctx, v));
        }
        // No polling header: the body's provisioningState drives it.
        let mut resp = resp;
        loop {
            let v = self.json_of(&ctx, &resp)?;
            let state = v.pointer("/properties/provisioningState").and_then(Value::as_str).map(str::to_ascii_lowercase);
            match state.as_deref() {
                Some("succeeded") => return Ok((ctx, v)),
                None if resp.status == 200 => return Ok((ctx, v)),
                Some("failed") | Some("canceled") | Some("cancelled") => {
                    let (code, message) = self.arm_error(&v).unwrap_or_default();
                    return Err(CallError {
                        kind: ErrorKind::OperationFailed,
                        status: resp.status,
                        code,
                        message: format!("{}: provisioningState {}{}", ctx.what(), state.unwrap_or_default(), sep(&message)),
                        retry_after_ms: None,
                    });
                }
                _ => {
                    tokio::time::sleep(self.poll_delay(&resp.headers)).await;
                    resp = self.send(&ctx, Verb::Get, &url, None).await?;
                    if !matches!(resp.status, 200 | 201) {
                        return Err(self.unexpected(&ctx, &resp));
                    }
                }
            }
        }
    }

    async fn final_get(&self, ctx: &Ctx, url: &str) -> Result<Value, CallError> {
        let resp = self.send(ctx, Verb::Get, url, None).await?;
        if resp.status != 200 {
            return Err(self.unexpected(ctx, &resp));
        }
        self.json_of(ctx, &resp)
    }

    /// Polls an `Azure-AsyncOperation` URL until a terminal status.
    async fn poll_async(&self, ctx: &Ctx, url: &str, first_delay: Duration) -> Result<(), CallError> {
        let mut delay = first_delay;
        loop {
            tokio::time::sleep(delay).await;
            let resp = self.send(ctx, Verb::Get, url, None).await?;
            if !matches!(resp.status, 200..=202 | 204) {
                let mut e = self.unexpected(ctx, &resp);
                e.message = format!("{} (polling {})", e.message, path_of(url));
                return Err(e);
            }
            let v = self.json_of(ctx, &resp)?;
            let status = v
                .get("status")
                .and_then(Value::as_str)
                .ok_or_else(|| ctx.invalid(resp.status, format!("operation status at {} has no \"status\"", path_of(url))))?;
            match status.to_ascii_lowercase().as_str() {
                "succeeded" | "completed" => return Ok(()),
                "failed" | "canceled" | "cancelled" => {
                    let (code, message) = self.arm_error(&v).unwrap_or_default();
                    return Err(CallError {
                        kind: ErrorKind::OperationFailed,
                        status: resp.status,
                        code,
                        message: format!("{}: operation {status}{}", ctx.what(), sep(&message)),
                        retry_after_ms: None,
                    });
                }
                _ => delay = self.poll_delay(&resp.headers),
            }
        }
    }

    /// Polls a `Location` URL: 202 is in progress, another 2xx is done, 408/429/5xx keep polling.
    async fn poll_location(&self, ctx: &Ctx, url: &str, first_delay: Duration) -> Result<(), CallError> {
        let mut delay = first_delay;
        loop {
            tokio::time::sleep(delay).await;
            let resp = self.send(ctx, Verb::Get, url, None).await?;
            match resp.status {
                202 => delay = self.poll_delay(&resp.headers),
                200..=299 => return Ok(()),
                408 | 429 | 500..=599 => delay = self.poll_delay(&resp.headers).max(self.inner.options.default_poll_interval),
                _ if resp.status >= 400 => {
                    let mut e = self.error_of(ctx, &resp, Some(ErrorKind::OperationFailed));
                    e.message = format!("{} (polling {})", e.message, path_of(url));
                    return Err(e);
                }
                _ => return Err(ctx.invalid(resp.status, format!("unexpected status {} polling {}", resp.status, path_of(url)))),
            }
        }
    }

    /// 202 on DELETE/POST: poll, preferring `Azure-AsyncOperation`.
    async fn follow_accepted(&self, ctx: &Ctx, resp: &Resp) -> Result<(), CallError> {
        let delay = self.poll_delay(&resp.headers);
        if let Some(op) = header_str(&resp.headers, "azure-asyncoperation") {
            self.poll_async(ctx, &op, delay).await
        } else if let Some(loc) = header_str(&resp.headers, "location") {
            self.poll_location(ctx, &loc, delay).await
        } else {
            Err(ctx.invalid(resp.status, format!("{} without a polling URL", resp.status)))
        }
    }

    async fn delete_resource(&self, path: &str) -> Result<CallOutput, CallError> {
        let ctx = Ctx { verb: Verb::Delete, path: path.to_string() };
        let url = self.inner.config.url(path);
        let resp = self.send(&ctx, Verb::Delete, &url, None).await?;
        match resp.status {
            200 | 204 => Ok(CallOutput::Done),
            404 if !scope_missing(&resp) => Ok(CallOutput::Done),
            201 | 202 => self.follow_accepted(&ctx, &resp).await.map(|_| CallOutput::Done),
            _ => Err(self.unexpected(&ctx, &resp)),
        }
    }

    /// The ServiceGateway POSTs: a bare 200 without an error code is done (AZURE-WIRE.md §1.6),
    /// 204 is done, 202 is polled.
    async fn post_sgw(&self, path: &str, body: &Value, not_found_ok: bool) -> Result<(), CallError> {
        let ctx = Ctx { verb: Verb::Post, path: path.to_string() };
        let url = self.inner.config.url(path);
        let resp = self.send(&ctx, Verb::Post, &url, Some(body)).await?;
        match resp.status {
            200 => {
                let header_code = header_str(&resp.headers, "x-ms-error-code").filter(|s| !s.is_empty());
                let body_code = serde_json::from_slice::<Value>(&resp.body).ok().and_then(|v| wire::arm_error_of(&v));
                if header_code.is_some() || body_code.is_some() {
                    Err(self.error_of(&ctx, &resp, Some(ErrorKind::Http)))
                } else {
                    Ok(())
                }
            }
            204 => Ok(()),
            202 => self.follow_accepted(&ctx, &resp).await,
            404 if not_found_ok && !scope_missing(&resp) => Ok(()),
            _ => Err(self.unexpected(&ctx, &resp)),
        }
    }

    /// GET one resource: `None` on 404; the parsed body and its text otherwise.
    async fn get_resource(&self, path: &str) -> Result<Option<(Value, String)>, CallError> {
        let ctx = Ctx { verb: Verb::Get, path: path.to_string() };
        let resp = self.send(&ctx, Verb::Get, &self.inner.config.url(path), None).await?;
        match resp.status {
            200 => {
                let v = self.json_of(&ctx, &resp)?;
                Ok(Some((v, String::from_utf8_lossy(&resp.body).into_owned())))
            }
            404 if !scope_missing(&resp) => Ok(None),
            _ => Err(self.unexpected(&ctx, &resp)),
        }
    }

    /// GET a list, following `nextLink`, within the page, item and byte caps of the options.
    async fn list(&self, path: &str) -> Result<(Ctx, Vec<Value>), CallError> {
        let o = &self.inner.options;
        let ctx = Ctx { verb: Verb::Get, path: path.to_string() };
        let mut url = self.inner.config.url(path);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for _ in 0..o.max_pages.max(1) {
            let resp = self.send(&ctx, Verb::Get, &url, None).await?;
            if resp.status != 200 {
                return Err(self.unexpected(&ctx, &resp));
            }
            bytes = bytes.saturating_add(resp.body.len());
            if bytes > o.max_list_bytes {
                return Err(
                    ctx.invalid(200, format!("the list is more than {} bytes (TransportOptions::max_list_bytes)", o.max_list_bytes))
                );
            }
            let mut v = self.json_of(&ctx, &resp)?;
            drop(resp);
            match v.get_mut("value") {
                Some(Value::Array(items)) => {
                    if out.len().saturating_add(items.len()) > o.max_list_items {
                        return Err(ctx.invalid(
                            200,
                            format!("the list has more than {} items (TransportOptions::max_list_items)", o.max_list_items),
                        ));
                    }
                    out.append(items);
                }
                _ => return Err(ctx.invalid(200, format!("page at {} has no \"value\" array", path_of(&url)))),
            }
            match v.get("nextLink") {
                Some(Value::String(next)) if !next.is_empty() => url = next.clone(),
                None | Some(Value::Null) | Some(Value::String(_)) => return Ok((ctx, out)),
                Some(_) => return Err(ctx.invalid(200, "\"nextLink\" is not a string")),
            }
        }
        Err(ctx.invalid(200, format!("more than {} pages", o.max_pages)))
    }

    async fn list_names(&self, path: &str) -> Result<CallOutput, CallError> {
        let (ctx, items) = self.list(path).await?;
        Ok(CallOutput::Names(wire::parse_names(&items).map_err(|m| ctx.invalid(200, m))?))
    }
}

impl CloudBackend for ArmTransport {
    fn call(&self, call: CloudCall) -> CallFuture {
        let this = self.clone();
        Box::pin(async move { this.perform(call).await })
    }
}

/// Why a response body was not read.
enum BodyError {
    /// Over the cap: declared so, or found so while reading.
    TooLarge(String),
    Read(reqwest::Error),
}

/// The body of `rsp`, read chunk by chunk and refused as soon as it is longer than `max` bytes
/// (or declares so), so an endless or enormous answer costs at most `max` bytes.
async fn read_body(mut rsp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    let declared = rsp.content_length();
    if let Some(len) = declared.filter(|&len| len > max as u64) {
        return Err(BodyError::TooLarge(format!(
            "the response declares a body of {len} bytes, over the limit of {max} bytes (TransportOptions::max_response_bytes)"
        )));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    while let Some(chunk) = rsp.chunk().await.map_err(BodyError::Read)? {
        if body.len().saturating_add(chunk.len()) > max {
            return Err(BodyError::TooLarge(format!(
                "the response body is longer than the limit of {max} bytes (TransportOptions::max_response_bytes)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `text` cut to at most `max` bytes on a character boundary, marked with how long it was.
/// A new string, so the long one's allocation is freed rather than kept for the short text.
pub(crate) fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… (truncated from {} bytes)", &text[..cut], text.len())
}

fn sep(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// A 404 that says the subscription or resource group does not exist: an error even where a
/// missing resource counts as done (a misaddressed tenant must not "succeed").
fn scope_missing(resp: &Resp) -> bool {
    let header_code = header_str(&resp.headers, "x-ms-error-code");
    let body_code = || serde_json::from_slice::<Value>(&resp.body).ok().and_then(|v| wire::arm_error_of(&v)).map(|(c, _)| c);
    header_code.or_else(body_code).is_some_and(|c| wire::is_missing_scope(&c))
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}

/// `retry-after-ms`, `x-ms-retry-after-ms` (milliseconds) or `Retry-After` (seconds or an HTTP date).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = header_str(h, name).and_then(|s| s.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let v = header_str(h, "retry-after")?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(&v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}
