//! The emulator as an in-process [`CloudBackend`]: no HTTP, the state core called directly, with
//! the same request bodies and response decoding as the HTTP transport. Faults and latency are
//! decided from the fault plan's seed and the "now" the caller gives ([`EmulatorBackend::perform_at`]),
//! so a virtual-time replay gets the same faults every run.
//!
//! It is held to what the HTTP face checks: the tenant's subscription and resource group must be
//! served (`SubscriptionNotFound` / `ResourceGroupNotFound` otherwise, never taken as "already
//! gone"), a request body must be within [`RequestLimits`](super::RequestLimits) (`413`
//! otherwise, before any fault is decided, as on the HTTP face), and with [`EmulatorAuth`](super::EmulatorAuth) configured its token
//! ([`EmulatorBackend::with_token`]) must be accepted.

use super::state::{ArmError, Conditions, Method, Reply, ScopeKey, Target};
use super::Emulator;
use difftracker_engine::io::{CallError, CallOutput, CloudCall, ErrorKind};
use difftracker_runtime::backend::{CallFuture, CloudBackend};
use difftracker_runtime::transport::config::{NameError, ResourceKind, TenantAzureConfig};
use difftracker_runtime::transport::wire;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A call's outcome and the latency the caller should apply before delivering it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub latency_ms: u64,
    pub outcome: Result<CallOutput, CallError>,
    /// Whether a fault rule decided the outcome (an injected error or a failed operation): the
    /// emulator's state was not consulted.
    pub injected: bool,
    /// What the subscription's budget said of the call (when the emulator enforces budgets):
    /// the `x-ms-ratelimit-remaining-subscription-*` header of its answer.
    pub admission: Option<super::throttle::Admission>,
}

pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone)]
pub struct EmulatorBackend {
    emulator: Arc<Emulator>,
    config: TenantAzureConfig,
    clock: Clock,
    /// The bearer token each call presents, as the HTTP transport would.
    token: Option<String>,
}

fn arm_to_call_error(label: &str, e: ArmError, retry_after_s: Option<u64>) -> CallError {
    CallError {
        kind: if e.status == 429 { ErrorKind::Throttled } else { ErrorKind::Http },
        status: e.status,
        code: e.code,
        message: format!("{label}: {}", e.message),
        retry_after_ms: retry_after_s.map(|s| s.saturating_mul(1000)),
    }
}

/// ARM's answer to a request over its subscription's budget.
pub(super) fn throttled(write: bool, retry_after_s: u64) -> ArmError {
    let what = if write { "write" } else { "read" };
    ArmError::new(
        429,
        "TooManyRequests",
        format!("The subscription's {what} budget is spent: the request was throttled. Retry after {retry_after_s} seconds."),
    )
}

impl EmulatorBackend {
    /// A backend for `config`'s tenant; its clock counts real milliseconds from now.
    pub fn new(emulator: Arc<Emulator>, config: TenantAzureConfig) -> Self {
        let start = Instant::now();
        EmulatorBackend { emulator, config, clock: Arc::new(move || start.elapsed().as_millis() as u64), token: None }
    }

    /// Presents `token` as the bearer token of every call (none by default).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Replaces the clock the [`CloudBackend`] impl reads "now" from (e.g. a virtual clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn emulator(&self) -> &Arc<Emulator> {
        &self.emulator
    }

    /// Performs `call` at `now_ms`: decides its faults, applies it to the state, and returns the
    /// outcome with the latency to apply. Does not sleep.
    pub fn perform_at(&self, now_ms: u64, call: &CloudCall) -> Decided {
        let label = call.label();
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        if let Err(e) = self.emulator.authorize(authorization.as_deref(), Some(self.config.network_subscription())) {
            return Decided { latency_ms: 0, outcome: Err(arm_to_call_error(label, e, None)), injected: false, admission: None };
        }
        // The subscription's budget, as at ARM's front door: after the token, before anything else.
        let admission = self.emulator.admit(self.config.network_subscription(), !label.starts_with("GET "), now_ms);
        if let Some(retry_after_s) = admission.and_then(|a| a.retry_after_s) {
            let e = throttled(admission.is_some_and(|a| a.write), retry_after_s);
            return Decided { latency_ms: 0, outcome: Err(arm_to_call_error(label, e, Some(retry_after_s))), injected: false, admission };
        }
        // The body as the transport would send it, held to the HTTP face's size limit.
        let request = self.request_of(call);
        if let Ok((_, _, Some(body))) = &request {
            if let Err(e) = self.emulator.options().limits.check_body(body) {
                return Decided { latency_ms: 0, outcome: Err(arm_to_call_error(label, e, None)), injected: false, admission };
            }
        }
        let faults = self.emulator.decide_faults(label, now_ms);
        let latency_ms = faults.latency_ms;
        if let Some(e) = faults.error {
            let err = ArmError::new(e.status, &e.code, e.message);
            return Decided { latency_ms, outcome: Err(arm_to_call_error(label, err, e.retry_after_s)), injected: true, admission };
        }
        let scope = ScopeKey::new(self.config.network_subscription(), &self.config.resource_group);
        let injected = faults.lro_fail.is_some();
        let outcome = request.and_then(|(method, target, body)| {
            if let Err(e) = self.emulator.state().check_scope(&scope) {
                return Err(arm_to_call_error(label, e, None));
            }
            if let Some((code, message)) = faults.lro_fail {
                return Err(CallError {
                    kind: ErrorKind::OperationFailed,
                    status: 200,
                    code,
                    message: format!("{label}: operation Failed: {message}"),
                    retry_after_ms: None,
                });
            }
            if matches!(call, CloudCall::UpdateServices(r) if r.is_empty()) {
                return Ok(CallOutput::Done);
            }
            let reply = self.emulator.apply(&scope, method, &target, body.as_ref(), &Conditions::NONE);
            self.output_of(call, reply)
        });
        Decided { latency_ms, outcome, injected, admission }
    }

    fn request_of(&self, call: &CloudCall) -> Result<(Method, Target, Option<Value>), CallError> {
        let cfg = &self.config;
        let ne = |e: NameError| CallError {
            kind: ErrorKind::Http,
            status: 400,
            code: "InvalidResourceName".into(),
            message: format!("{}: refused before sending: {e}", call.label()),
            retry_after_ms: None,
        };
        let res = |kind: ResourceKind, name: &str| -> Result<Target, CallError> {
            cfg.resource_id(kind, name).map_err(ne)?;
            Ok(Target::Resource(kind, name.to_string()))
        };
        Ok(match call {
            CloudCall::PutPublicIp { name, version } => {
                (Method::Put, res(ResourceKind::PublicIp, name)?, Some(wire::public_ip_body(cfg, name, *version).map_err(ne)?))
            }
            CloudCall::DeletePublicIp { name } => (Method::Delete, res(ResourceKind::PublicIp, name)?, None),
            CloudCall::ListPublicIps => (Method::Get, Target::Collection(ResourceKind::PublicIp), None),
            CloudCall::PutLoadBalancer(spec) => {
                (Method::Put, res(ResourceKind::LoadBalancer, &spec.name)?, Some(wire::load_balancer_body(cfg, spec).map_err(ne)?))
            }
            CloudCall::DeleteLoadBalancer { name } => (Method::Delete, res(ResourceKind::LoadBalancer, name)?, None),
            CloudCall::ListLoadBalancers => (Method::Get, Target::Collection(ResourceKind::LoadBalancer), None),
            CloudCall::PutNatGateway(spec) => {
                (Method::Put, res(ResourceKind::NatGateway, &spec.name)?, Some(wire::nat_gateway_body(cfg, spec).map_err(ne)?))
            }
            CloudCall::DetachNatGateway { name, raw } => {
                let body = wire::detach_nat_body(raw)
                    .map_err(|m| CallError::of_kind(ErrorKind::InvalidResponse, &format!("PUT natGateways/{name}: {m}")))?;
                (Method::Put, res(ResourceKind::NatGateway, name)?, Some(body))
            }
            CloudCall::GetNatGateway { name } => (Method::Get, res(ResourceKind::NatGateway, name)?, None),
            CloudCall::DeleteNatGateway { name } => (Method::Delete, res(ResourceKind::NatGateway, name)?, None),
            CloudCall::ListNatGateways => (Method::Get, Target::Collection(ResourceKind::NatGateway), None),
            CloudCall::GetSgwServices => (Method::Get, Target::SgwServices, None),
            CloudCall::GetAddressLocations => (Method::Get, Target::SgwAddressLocations, None),
            CloudCall::UpdateServices(reqs) => {
                (Method::Post, Target::SgwUpdateServices, Some(wire::update_services_body(cfg, reqs).map_err(ne)?))
            }
            CloudCall::UpdateAddressLocations(locs) => {
                (Method::Post, Target::SgwUpdateAddressLocations, Some(wire::update_address_locations_body(locs)))
            }
        })
    }

    fn output_of(&self, call: &CloudCall, reply: Result<Reply, ArmError>) -> Result<CallOutput, CallError> {
        let label = call.label();
        let invalid = |m: String| CallError::of_kind(ErrorKind::InvalidResponse, &format!("{label}: {m}"));
        let reply = match reply {
            Ok(r) => r,
            // "Not found" of the resource means gone; of its subscription or resource group, an error.
            Err(e) if e.status == 404 && !wire::is_missing_scope(&e.code) => {
                return match call {
                    CloudCall::DeletePublicIp { .. } | CloudCall::DeleteLoadBalancer { .. } | CloudCall::DeleteNatGateway { .. } => {
                        Ok(CallOutput::Done)
                    }
                    CloudCall::GetNatGateway { .. } => Ok(CallOutput::NatGateway(None)),
                    // Of a batch, a 404 names one service only: the engine splits it (ENGINE.md 5.5).
                    CloudCall::UpdateServices(reqs) if matches!(reqs.as_slice(), [r] if r.is_delete) => Ok(CallOutput::Done),
                    _ => Err(arm_to_call_error(label, e, None)),
                };
            }
            Err(e) => return Err(arm_to_call_error(label, e, None)),
        };
        match (call, reply) {
            (CloudCall::PutPublicIp { name, version }, Reply::Put { body, .. }) => {
                wire::parse_public_ip(&body, Some((name, *version))).map(CallOutput::PublicIp).map_err(invalid)
            }
            (CloudCall::ListPublicIps, Reply::List(items)) => items
                .iter()
                .map(|v| wire::parse_public_ip(v, None))
                .collect::<Result<Vec<_>, _>>()
                .map(CallOutput::PublicIps)
                .map_err(invalid),
            (CloudCall::ListLoadBalancers | CloudCall::ListNatGateways, Reply::List(items)) => {
                wire::parse_names(&items).map(CallOutput::Names).map_err(invalid)
            }
            (CloudCall::GetNatGateway { .. }, Reply::Resource(v)) => {
                let raw = v.to_string();
                wire::parse_nat_gateway(&v, raw).map(|i| CallOutput::NatGateway(Some(i))).map_err(invalid)
            }
            (CloudCall::GetSgwServices, Reply::List(items)) => {
                wire::parse_sgw_services(&items).map(CallOutput::SgwServices).map_err(invalid)
            }
            (CloudCall::GetAddressLocations, Reply::List(items)) => {
                wire::parse_address_locations(&items).map(CallOutput::AddressLocations).map_err(invalid)
            }
            (_, Reply::Put { .. } | Reply::Deleted | Reply::NoContent | Reply::Done) => Ok(CallOutput::Done),
            (_, other) => Err(invalid(format!("unexpected emulator reply {other:?}"))),
        }
    }
}

impl CloudBackend for EmulatorBackend {
    fn call(&self, call: CloudCall) -> CallFuture {
        let decided = self.perform_at((self.clock)(), &call);
        Box::pin(async move {
            if decided.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(decided.latency_ms)).await;
            }
            decided.outcome
        })
    }
}
