//! An in-memory ARM/NRP emulator that behaves like Azure where the engine can tell.
//!
//! - [`state`]: the semantic core (resources, ServiceGateway services and address locations of
//!   each resource group served, Azure's referential rules and error codes), callable in-process
//!   without HTTP.
//! - [`faults`]: seeded fault injection from a JSON fault file.
//! - [`throttle`]: ARM's per-subscription write and read budgets (token buckets, the
//!   `x-ms-ratelimit-remaining-subscription-*` headers, 429 with `Retry-After`).
//! - [`http`]: the axum server: all 14 calls of AZURE-WIRE.md section 0, the polling URLs it
//!   hands out, `GET /_emulator/inventory`; [`serve`] runs it on a listener.
//! - [`backend`]: [`EmulatorBackend`], a [`CloudBackend`](difftracker_runtime::backend::CloudBackend) that
//!   calls the core directly, with faults decided from a caller-supplied "now" (virtual time).
//!
//! [`run_emulator`] is the `difftracker emulator --listen ADDR [--faults FILE] [--state FILE] [--token T] [--public-url URL]`
//! subcommand.

pub mod backend;
pub mod cloud_state;
pub mod faults;
pub mod http;
pub mod state;
pub mod throttle;

pub use backend::{Decided, EmulatorBackend};
pub use cloud_state::CloudState;
pub use faults::{FaultDecision, FaultInjector, FaultPlan};
pub use http::{serve, serve_emulator, EmulatorHandle};
pub use state::{codes, ArmError, Conditions, EmulatorState, Method, Reply, ScopeKey, Target, DEFAULT_NATGW, DEFAULT_NATGW_PIP};

use anyhow::Context;
pub use difftracker_engine::io::NRP_MAX_REQUEST_BYTES;
use difftracker_runtime::transport::TenantAzureConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Which headers a polling answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollHeaders {
    AsyncOperation,
    Location,
    Both,
}

/// How long-running operations are answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LroMode {
    /// The final answer at once: PUT 200/201 with `provisioningState: Succeeded`, DELETE 200, the
    /// ServiceGateway POSTs a bare 200 (production-like).
    Synchronous,
    /// PUT 201/200, DELETE and POST 202, with polling headers; the operation reports `InProgress`
    /// for `in_progress_polls` polls and at least `in_progress_for`, then `Succeeded` (or `Failed`
    /// when a fault says so).
    Polling(PollingOptions),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollingOptions {
    pub in_progress_polls: u32,
    pub in_progress_for: Duration,
    pub headers: PollHeaders,
    /// `Retry-After` (seconds) on the initial answer and on in-progress polls; none by default.
    /// Never less than [`MIN_RETRY_AFTER_S`]: a 0 is answered as 1.
    pub retry_after_s: Option<u64>,
}

/// The shortest `Retry-After` the emulator hands out on long-running operations (seconds), so a
/// client that honours it polls at most once a second.
pub const MIN_RETRY_AFTER_S: u64 = 1;

impl PollingOptions {
    /// The `Retry-After` to send, if any: the configured one, at least [`MIN_RETRY_AFTER_S`].
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after_s.map(|s| s.max(MIN_RETRY_AFTER_S))
    }
}

impl Default for PollingOptions {
    fn default() -> Self {
        PollingOptions { in_progress_polls: 1, in_progress_for: Duration::ZERO, headers: PollHeaders::Both, retry_after_s: None }
    }
}

/// A subscription and resource group the emulator serves, its region (of the polling URLs it
/// hands out and of its ServiceGateway) and the VNet name of tenant configurations addressing it.
/// Requests under any other subscription or resource group are answered `SubscriptionNotFound`
/// or `ResourceGroupNotFound`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatorScope {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub vnet_name: String,
}

impl Default for EmulatorScope {
    fn default() -> Self {
        EmulatorScope {
            subscription: "00000000-0000-0000-0000-000000000000".into(),
            resource_group: "difftracker-emulated".into(),
            location: "eastus2".into(),
            vnet_name: "emulated-vnet".into(),
        }
    }
}

impl EmulatorScope {
    pub fn provider_path(&self) -> String {
        self.key().provider_path()
    }

    /// The subscription and resource group.
    pub fn key(&self) -> ScopeKey {
        ScopeKey::new(&self.subscription, &self.resource_group)
    }

    /// A tenant configuration addressing this scope at `arm_endpoint`.
    pub fn tenant_config(&self, arm_endpoint: &str) -> TenantAzureConfig {
        TenantAzureConfig::new(arm_endpoint, &self.subscription, &self.resource_group, &self.location, &self.vnet_name)
    }
}

/// Which `Authorization` headers the emulator accepts (ARM answers 401 to anything else).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum EmulatorAuth {
    /// No check (the default: the transport's emulator mode sends no token).
    #[default]
    Open,
    /// Any non-empty `Bearer` token.
    AnyBearer,
    /// Exactly this bearer token.
    Token(String),
    /// One token per principal, each allowed into the subscriptions listed with it (lower-case),
    /// as ARM's role assignments scope a service principal: any other token is 401, a known one
    /// used in another subscription 403 `AuthorizationFailed`.
    PerSubscription(BTreeMap<String, Vec<String>>),
}

impl std::fmt::Debug for EmulatorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmulatorAuth::Open => f.write_str("Open"),
            EmulatorAuth::AnyBearer => f.write_str("AnyBearer"),
            EmulatorAuth::Token(_) => f.write_str("Token(<redacted>)"),
            EmulatorAuth::PerSubscription(tokens) => write!(f, "PerSubscription({} tokens, <redacted>)", tokens.len()),
        }
    }
}

impl EmulatorAuth {
    /// Checks an `Authorization` header value for a request into `subscription` (`None`: a
    /// request that names none): `AuthenticationFailed` without a bearer token,
    /// `InvalidAuthenticationToken` with one this configuration does not accept,
    /// `AuthorizationFailed` (403) with one not allowed into the subscription.
    pub fn check(&self, authorization: Option<&str>, subscription: Option<&str>) -> Result<(), ArmError> {
        if *self == EmulatorAuth::Open {
            return Ok(());
        }
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Err(ArmError::new(401, codes::AUTHENTICATION_FAILED, "Authentication failed. The 'Authorization' header is missing."));
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => {
                return Err(ArmError::new(
                    401,
                    codes::AUTHENTICATION_FAILED,
                    "Authentication failed. The 'Authorization' header is provided in an invalid format.",
                ))
            }
        };
        let invalid = || ArmError::new(401, codes::INVALID_AUTHENTICATION_TOKEN, "The access token is invalid.");
        match self {
            EmulatorAuth::Token(expected) if expected != token => Err(invalid()),
            EmulatorAuth::PerSubscription(tokens) => {
                let allowed = tokens.get(token).ok_or_else(invalid)?;
                match subscription {
                    Some(sub) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(sub)) => Err(ArmError::new(
                        403,
                        codes::AUTHORIZATION_FAILED,
                        format!("The client does not have authorization to perform action over scope '/subscriptions/{sub}'."),
                    )),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// What one request may carry, as NRP accepts it; both faces enforce it (the HTTP server on the
/// body it reads, the in-process backend on the body the transport would send), so a replay
/// and a live run answer the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Request body bytes (2 MiB, [`NRP_MAX_REQUEST_BYTES`]); a larger body is answered
    /// `413 RequestEntityTooLarge` and changes nothing. AZURE-WIRE.md names no entry limit.
    pub max_body_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { max_body_bytes: NRP_MAX_REQUEST_BYTES as usize }
    }
}

impl RequestLimits {
    /// The answer to a body of `len` bytes (at least `len`, when reading stopped there).
    pub fn check_body_len(&self, len: usize) -> Result<(), ArmError> {
        if len <= self.max_body_bytes {
            return Ok(());
        }
        Err(ArmError::new(
            413,
            codes::REQUEST_ENTITY_TOO_LARGE,
            format!("The request content ({len} bytes or more) exceeds the maximum of {} bytes.", self.max_body_bytes),
        ))
    }

    /// The answer to `body` as the HTTP transport encodes it (compact JSON).
    pub fn check_body(&self, body: &Value) -> Result<(), ArmError> {
        /// Counts the bytes written.
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // Writing a Value to a counter cannot fail.
        let _ = serde_json::to_writer(&mut count, body);
        self.check_body_len(count.0)
    }
}

#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    pub lro: LroMode,
    /// Split list answers into pages of this size (with `nextLink`); one page when `None`.
    pub page_size: Option<usize>,
    /// Upper-case IPv6 addresses in GET answers, as NRP has been seen doing.
    pub uppercase_ipv6: bool,
    /// Seed the AKS-owned `default-natgw` (NAT gateway, its public IP, its default service).
    pub seed_default_natgw: bool,
    /// The resource group tenant configurations address by default ([`EmulatorHandle::tenant_config`]).
    pub scope: EmulatorScope,
    /// Further resource groups served, each with its own resources and ServiceGateway.
    pub extra_scopes: Vec<EmulatorScope>,
    /// The bearer tokens accepted; [`EmulatorAuth::Open`] by default.
    pub auth: EmulatorAuth,
    /// The URL clients reach the HTTP face at, the base of every polling URL and `nextLink` it
    /// hands out; `http://` + the listening address by default. Never taken from a request.
    pub public_url: Option<String>,
    pub faults: Option<FaultPlan>,
    /// Unregistrations still rejected with `ServiceWithOverlayMappingsCannotBeDeleted` after a
    /// service's last address was removed (NRP's asynchronous mapping removal); 0 by default.
    pub overlay_lag: u32,
    /// What one request may carry (2 MiB of body by default), on both faces.
    pub limits: RequestLimits,
    /// Per-subscription request budgets ([`throttle`]); none (unlimited) by default.
    pub rate_limits: Option<throttle::RateLimits>,
}

impl EmulatorOptions {
    /// Every resource group served: [`EmulatorOptions::scope`], then the extra ones.
    pub fn scopes(&self) -> impl Iterator<Item = &EmulatorScope> {
        std::iter::once(&self.scope).chain(self.extra_scopes.iter())
    }
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            lro: LroMode::Synchronous,
            page_size: None,
            uppercase_ipv6: false,
            seed_default_natgw: true,
            scope: EmulatorScope::default(),
            extra_scopes: Vec::new(),
            auth: EmulatorAuth::Open,
            public_url: None,
            faults: None,
            overlay_lag: 0,
            limits: RequestLimits::default(),
            rate_limits: None,
        }
    }
}

/// The emulator: state, faults and options, shared by the HTTP server and the in-process backend.
#[derive(Debug)]
pub struct Emulator {
    state: Mutex<EmulatorState>,
    faults: Mutex<Option<Arc<FaultInjector>>>,
    throttle: Option<throttle::Throttle>,
    options: EmulatorOptions,
    /// The latest HTTP requests, oldest first (at most [`MAX_RECORDED_REQUESTS`]).
    requests: Mutex<std::collections::VecDeque<RequestRecord>>,
}

/// Requests the emulator remembers for [`Emulator::recent_requests`].
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

/// One HTTP request the emulator answered, as its log line shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The caller's `x-ms-client-request-id` (its correlation id), if it sent one.
    pub client_request_id: Option<String>,
    /// The `x-ms-request-id` answered: the caller's id when it sent one, else one of the emulator's.
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The caller's `User-Agent` (a sharded host's names its replica).
    pub user_agent: Option<String>,
    /// When the request arrived and when it was answered.
    pub received: std::time::Instant,
    pub answered: std::time::Instant,
}

impl Emulator {
    pub fn new(options: EmulatorOptions) -> Arc<Emulator> {
        let mut state = EmulatorState::new();
        state.uppercase_ipv6 = options.uppercase_ipv6;
        state.overlay_lag = options.overlay_lag;
        for scope in options.scopes() {
            state.add_resource_group(&scope.key(), &scope.location);
            if options.seed_default_natgw {
                // Cannot fail: the resource group was just added.
                let _ = state.seed_default_natgw(&scope.key());
            }
        }
        let faults = options.faults.clone().map(|p| Arc::new(FaultInjector::new(p)));
        let throttle = options.rate_limits.map(throttle::Throttle::new);
        Arc::new(Emulator { state: Mutex::new(state), faults: Mutex::new(faults), throttle, options, requests: Mutex::default() })
    }

    pub fn options(&self) -> &EmulatorOptions {
        &self.options
    }

    /// The latest HTTP requests answered, oldest first.
    pub fn recent_requests(&self) -> Vec<RequestRecord> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub(crate) fn record_request(&self, record: RequestRecord) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if requests.len() >= MAX_RECORDED_REQUESTS {
            requests.pop_front();
        }
        requests.push_back(record);
    }

    /// The state, locked (never poisoned: a panic elsewhere does not stop the emulator).
    pub fn state(&self) -> MutexGuard<'_, EmulatorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `GET /_emulator/inventory`: the content of the default resource group ([`EmulatorOptions::scope`]).
    pub fn inventory(&self) -> Value {
        self.state().inventory(&self.options.scope.key())
    }

    /// Seeds the default resource group with `cs` (see [`cloud_state`]).
    pub fn seed(&self, cs: &CloudState) -> anyhow::Result<()> {
        self.state().seed_cloud_state(&self.options.scope.key(), cs).map_err(|e| anyhow::anyhow!("cannot seed the cloud state: {e}"))
    }

    /// The content of one resource group (empty for one not served).
    pub fn inventory_of(&self, scope: &ScopeKey) -> Value {
        self.state().inventory(scope)
    }

    /// Checks a request's `Authorization` header against [`EmulatorOptions::auth`] for a request
    /// into `subscription`.
    pub fn authorize(&self, authorization: Option<&str>, subscription: Option<&str>) -> Result<(), ArmError> {
        self.options.auth.check(authorization, subscription)
    }

    /// Takes one token of `subscription`'s write or read budget at `now_ms` (`None` when the
    /// emulator enforces no budgets).
    pub fn admit(&self, subscription: &str, write: bool, now_ms: u64) -> Option<throttle::Admission> {
        self.throttle.as_ref().map(|t| t.admit(subscription, write, now_ms))
    }

    /// The faults of the next call of `label` at `now_ms` (none without a fault plan).
    pub fn decide_faults(&self, label: &str, now_ms: u64) -> FaultDecision {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match faults {
            Some(f) => f.decide(label, now_ms),
            None => FaultDecision::default(),
        }
    }

    /// Replaces the fault plan (counters start afresh); `None` stops injecting.
    pub fn set_faults(&self, plan: Option<FaultPlan>) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = plan.map(|p| Arc::new(FaultInjector::new(p)));
    }

    /// Performs a request in `scope` on the state.
    pub fn apply(
        &self,
        scope: &ScopeKey,
        method: Method,
        target: &Target,
        body: Option<&Value>,
        cond: &Conditions,
    ) -> Result<Reply, ArmError> {
        self.state().apply(scope, method, target, body, cond)
    }
}

/// The `difftracker emulator` subcommand: serves until Ctrl-C.
pub async fn run_emulator(
    listen: SocketAddr,
    faults: Option<PathBuf>,
    state: Option<CloudState>,
    mut options: EmulatorOptions,
) -> anyhow::Result<()> {
    if let Some(path) = faults {
        options.faults = Some(FaultPlan::load(&path).map_err(anyhow::Error::msg)?);
    }
    if let Some(u) = options.public_url.as_deref().filter(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
        anyhow::bail!("the public URL {u:?} must start with http:// or https://");
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let handle = serve(listener, options).await?;
    if let Some(cs) = &state {
        handle.emulator().seed(cs)?;
    }
    tracing::info!(url = %handle.base_url(), "ARM/NRP emulator listening");
    println!("ARM/NRP emulator listening on {}", handle.base_url());
    for scope in handle.emulator().options().scopes() {
        println!("  serving subscription {}, resource group {} ({})", scope.subscription, scope.resource_group, scope.location);
    }
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}
