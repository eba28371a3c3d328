//! Seeded fault injection.
//!
//! A fault file is JSON:
//!
//! ```json
//! {"seed": 1, "until_ms": 600000, "rules": [
//!   {"call": "PUT loadBalancers", "rate": 0.3, "status": 500, "code": "InternalServerError"},
//!   {"call": "POST updateAddressLocations", "rate": 0.2, "status": 429, "retry_after_s": 2},
//!   {"call": "*", "latency_ms": [50, 400]},
//!   {"call": "DELETE publicIPAddresses", "rate": 0.1, "lro_fail": true}]}
//! ```
//!
//! - `seed` (required): the generator's seed. `until_ms` (optional): no fault fires at or after
//!   this time, in milliseconds of the emulator's clock (since it started, or the virtual time a
//!   replay passes in).
//! - `call`: `METHOD kind` as `CloudCall::label()` prints it (`PUT publicIPAddresses`,
//!   `GET natGateways`, `POST updateServices`, ...; case-insensitive) or `*`.
//! - `rate` (default 1): the probability that the rule fires on a matching call.
//! - exactly one effect: `status` (400 to 599, with optional `code`, `message` and
//!   `retry_after_s`: the call is answered with that ARM error and changes nothing), `latency_ms`
//!   (`[min, max]`: the answer is delayed by a uniform draw), or `lro_fail: true` (the call is
//!   answered as a long-running operation that ends `Failed`, with optional `code`/`message`, and
//!   changes nothing).
//!
//! Rules are tried in order: latencies add up; the first error that fires wins, then the first
//! LRO failure. Each decision depends only on the seed, the call's label, how many calls of that
//! label came before, and the rule, so the same seed and the same calls give the same faults.

use crate::faults::{check_range, check_rate, Counters, Roll};
use serde::Deserialize;
use std::path::Path;

/// Every label a rule may name.
pub const CALL_LABELS: [&str; 13] = [
    "PUT publicIPAddresses",
    "DELETE publicIPAddresses",
    "GET publicIPAddresses",
    "PUT loadBalancers",
    "DELETE loadBalancers",
    "GET loadBalancers",
    "PUT natGateways",
    "GET natGateways",
    "DELETE natGateways",
    "GET services",
    "GET addressLocations",
    "POST updateServices",
    "POST updateAddressLocations",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    seed: u64,
    #[serde(default)]
    until_ms: Option<u64>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    call: String,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after_s: Option<u64>,
    #[serde(default)]
    latency_ms: Option<Vec<u64>>,
    #[serde(default)]
    lro_fail: Option<bool>,
}

/// What a rule does when it fires.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultEffect {
    Error { status: u16, code: String, message: String, retry_after_s: Option<u64> },
    Latency { min_ms: u64, max_ms: u64 },
    LroFail { code: String, message: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// A label of [`CALL_LABELS`] (canonical spelling) or `*`.
    pub call: String,
    pub rate: f64,
    pub effect: FaultEffect,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    pub seed: u64,
    pub until_ms: Option<u64>,
    pub rules: Vec<FaultRule>,
}

/// An injected ARM error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

/// The faults decided for one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub latency_ms: u64,
    pub error: Option<InjectedError>,
    /// `(code, message)` of the failed operation.
    pub lro_fail: Option<(String, String)>,
}

impl FaultDecision {
    pub fn is_none(&self) -> bool {
        self == &FaultDecision::default()
    }
}

fn default_code(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        404 => "ResourceNotFound",
        408 => "RequestTimeout",
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InjectedFault",
    }
}

impl FaultPlan {
    /// Parses and checks a fault file's text. Errors name the rule and field at fault.
    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let raw: RawPlan = serde_json::from_str(text).map_err(|e| format!("fault file is not valid: {e}"))?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = |field: &str, msg: String| format!("fault file: rules[{i}].{field}: {msg}");
            let call = if r.call.trim() == "*" {
                "*".to_string()
            } else {
                let norm = r.call.split_whitespace().collect::<Vec<_>>().join(" ");
                CALL_LABELS
                    .iter()
                    .find(|l| l.eq_ignore_ascii_case(&norm))
                    .map(|l| l.to_string())
                    .ok_or_else(|| at("call", format!("{:?} is not \"*\" nor one of: {}", r.call, CALL_LABELS.join(", "))))?
            };
            let rate = check_rate(r.rate, &at)?;
            let lro = r.lro_fail.unwrap_or(false);
            let effects = r.status.is_some() as u8 + r.latency_ms.is_some() as u8 + lro as u8;
            if effects != 1 {
                return Err(format!(
                    "fault file: rules[{i}]: give exactly one of \"status\", \"latency_ms\" or \"lro_fail\": true (found {effects})"
                ));
            }
            let effect = if let Some(status) = r.status {
                if !(400..=599).contains(&status) {
                    return Err(at("status", format!("{status} is not an error status (400 to 599)")));
                }
                FaultEffect::Error {
                    status,
                    code: r.code.unwrap_or_else(|| default_code(status).into()),
                    message: r.message.unwrap_or_else(|| format!("Injected fault: HTTP {status}.")),
                    retry_after_s: r.retry_after_s,
                }
            } else if let Some(lat) = r.latency_ms {
                if r.code.is_some() || r.message.is_some() || r.retry_after_s.is_some() {
                    return Err(at("latency_ms", "a latency rule takes no code, message or retry_after_s".into()));
                }
                let (min_ms, max_ms) = check_range("latency_ms", &lat, &at)?;
                FaultEffect::Latency { min_ms, max_ms }
            } else {
                if r.retry_after_s.is_some() {
                    return Err(at("retry_after_s", "only an error rule (\"status\") takes retry_after_s".into()));
                }
                FaultEffect::LroFail {
                    code: r.code.unwrap_or_else(|| "InternalServerError".into()),
                    message: r.message.unwrap_or_else(|| "Injected fault: the operation failed.".into()),
                }
            };
            rules.push(FaultRule { call, rate, effect });
        }
        Ok(FaultPlan { seed: raw.seed, until_ms: raw.until_ms, rules })
    }

    /// Reads and parses a fault file.
    pub fn load(path: &Path) -> Result<FaultPlan, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read fault file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The faults of the `nth` (from 0) call of `label` at time `now_ms`. Pure.
    pub fn decide_nth(&self, label: &str, nth: u64, now_ms: u64) -> FaultDecision {
        let mut d = FaultDecision::default();
        if self.until_ms.is_some_and(|u| now_ms >= u) {
            return d;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.call != "*" && !rule.call.eq_ignore_ascii_case(label) {
                continue;
            }
            let roll = Roll::new(self.seed, label, nth, i);
            if !roll.fires(rule.rate) {
                continue;
            }
            match &rule.effect {
                FaultEffect::Latency { min_ms, max_ms } => {
                    d.latency_ms = d.latency_ms.saturating_add(roll.draw(*min_ms, *max_ms));
                }
                FaultEffect::Error { status, code, message, retry_after_s } => {
                    if d.error.is_none() {
                        d.error = Some(InjectedError {
                            status: *status,
                            code: code.clone(),
                            message: message.clone(),
                            retry_after_s: *retry_after_s,
                        });
                    }
                }
                FaultEffect::LroFail { code, message } => {
                    if d.lro_fail.is_none() {
                        d.lro_fail = Some((code.clone(), message.clone()));
                    }
                }
            }
        }
        if d.error.is_some() {
            d.lro_fail = None;
        }
        d
    }
}

/// A plan plus per-label call counters.
#[derive(Debug)]
pub struct FaultInjector {
    plan: FaultPlan,
    counters: Counters,
}

impl FaultInjector {
    pub fn new(plan: FaultPlan) -> Self {
        FaultInjector { plan, counters: Counters::default() }
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Decides the faults of the next call of `label` at `now_ms`.
    pub fn decide(&self, label: &str, now_ms: u64) -> FaultDecision {
        self.plan.decide_nth(label, self.counters.next(label), now_ms)
    }
}
