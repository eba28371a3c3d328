//! Seeded fault injection for the API server, in the style of the ARM emulator's fault files.
//!
//! ```json
//! {"seed": 7, "until_ms": 600000, "rules": [
//!   {"request": "WATCH services", "rate": 0.5, "drop_after_ms": [200, 2000]},
//!   {"request": "WATCH endpointslices", "rate": 0.1, "status": 410},
//!   {"request": "PATCH services/status", "rate": 0.2, "status": 429, "retry_after_s": 1},
//!   {"request": "LIST *", "rate": 0.05, "status": 500},
//!   {"request": "*", "latency_ms": [5, 50]}]}
//! ```
//!
//! - `seed` (required) seeds the generator; no fault fires at or after `until_ms` (since the
//!   server started).
//! - `request` is `VERB resource`: a verb of `GET`, `LIST`, `WATCH`, `CREATE`, `UPDATE`,
//!   `PATCH`, `DELETE` and a resource of `services`, `services/status`, `nodes`,
//!   `nodes/status`, `pods`, `pods/status`, `endpointslices`, `events`, `leases`
//!   (case-insensitive); either part may be `*`, and `*` alone matches every request.
//! - `rate` (default 1) is the probability that the rule fires on a matching request.
//! - Each rule has one effect: `status` (400 to 599, optional `message` and
//!   `retry_after_s`: the request is answered with that `Status` and changes nothing; on a
//!   `WATCH` a 410 arrives as the watch's `ERROR` event, as the API server reports an expired
//!   resourceVersion), `latency_ms: [min, max]` (the answer is delayed by a uniform draw), or
//!   `drop_after_ms: [min, max]` (`WATCH` only: the stream is closed after a uniform draw).
//! - Latencies add up; the first error that fires wins, then the first drop. A decision
//!   depends only on the seed, the request's label, how many requests of that label came
//!   before and the rule.

use crate::faults::{check_range, check_rate, Counters, Roll};
use serde::Deserialize;
use std::path::Path;

/// The verbs a rule may name.
pub const VERBS: [&str; 7] = ["GET", "LIST", "WATCH", "CREATE", "UPDATE", "PATCH", "DELETE"];
/// The resources a rule may name.
pub const RESOURCES: [&str; 9] =
    ["services", "services/status", "nodes", "nodes/status", "pods", "pods/status", "endpointslices", "events", "leases"];

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
    request: String,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after_s: Option<u64>,
    #[serde(default)]
    latency_ms: Option<Vec<u64>>,
    #[serde(default)]
    drop_after_ms: Option<Vec<u64>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Error { status: u16, message: String, retry_after_s: Option<u64> },
    Latency { min_ms: u64, max_ms: u64 },
    DropWatch { min_ms: u64, max_ms: u64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Upper-case verb or `*`.
    pub verb: String,
    /// Lower-case resource or `*`.
    pub resource: String,
    pub rate: f64,
    pub effect: Effect,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    pub seed: u64,
    pub until_ms: Option<u64>,
    pub rules: Vec<Rule>,
}

/// An injected error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedError {
    pub status: u16,
    /// The `reason` of the status, as the API server gives it with `status`.
    pub reason: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

/// The faults decided for one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub latency_ms: u64,
    pub error: Option<InjectedError>,
    /// Close a watch after this long.
    pub drop_after_ms: Option<u64>,
}

/// The reason the API server gives with a status code.
pub fn default_reason(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

impl FaultPlan {
    /// Parses and checks a fault file's text. Errors name the rule and field at fault.
    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let raw: RawPlan = serde_json::from_str(text).map_err(|e| format!("fault file is not valid: {e}"))?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = |field: &str, msg: String| format!("fault file: rules[{i}].{field}: {msg}");
            let words: Vec<&str> = r.request.split_whitespace().collect();
            let (verb, resource) = match words.as_slice() {
                ["*"] => ("*".to_string(), "*".to_string()),
                [v, res] => {
                    let verb = if *v == "*" {
                        "*".to_string()
                    } else {
                        VERBS
                            .iter()
                            .find(|x| x.eq_ignore_ascii_case(v))
                            .map(|x| x.to_string())
                            .ok_or_else(|| at("request", format!("{v:?} is not \"*\" nor one of: {}", VERBS.join(", "))))?
                    };
                    let resource = if *res == "*" {
                        "*".to_string()
                    } else {
                        RESOURCES
                            .iter()
                            .find(|x| x.eq_ignore_ascii_case(res))
                            .map(|x| x.to_string())
                            .ok_or_else(|| at("request", format!("{res:?} is not \"*\" nor one of: {}", RESOURCES.join(", "))))?
                    };
                    (verb, resource)
                }
                _ => return Err(at("request", format!("{:?} is not \"*\" nor \"VERB resource\"", r.request))),
            };
            let rate = check_rate(r.rate, &at)?;
            let effects = r.status.is_some() as u8 + r.latency_ms.is_some() as u8 + r.drop_after_ms.is_some() as u8;
            if effects != 1 {
                return Err(format!(
                    "fault file: rules[{i}]: give exactly one of \"status\", \"latency_ms\" or \"drop_after_ms\" (found {effects})"
                ));
            }
            let extras = r.message.is_some() || r.retry_after_s.is_some();
            let effect = if let Some(status) = r.status {
                if !(400..=599).contains(&status) {
                    return Err(at("status", format!("{status} is not an error status (400 to 599)")));
                }
                Effect::Error {
                    status,
                    message: r.message.unwrap_or_else(|| format!("Injected fault: HTTP {status}.")),
                    retry_after_s: r.retry_after_s,
                }
            } else if let Some(lat) = r.latency_ms {
                if extras {
                    return Err(at("latency_ms", "a latency rule takes no message or retry_after_s".into()));
                }
                let (min_ms, max_ms) = check_range("latency_ms", &lat, &at)?;
                Effect::Latency { min_ms, max_ms }
            } else {
                let d = r.drop_after_ms.unwrap_or_default();
                if extras {
                    return Err(at("drop_after_ms", "a drop rule takes no message or retry_after_s".into()));
                }
                if verb != "WATCH" {
                    return Err(at("drop_after_ms", "only a WATCH rule drops a stream".into()));
                }
                let (min_ms, max_ms) = check_range("drop_after_ms", &d, &at)?;
                Effect::DropWatch { min_ms, max_ms }
            };
            rules.push(Rule { verb, resource, rate, effect });
        }
        Ok(FaultPlan { seed: raw.seed, until_ms: raw.until_ms, rules })
    }

    /// Reads and parses a fault file.
    pub fn load(path: &Path) -> Result<FaultPlan, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read fault file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The faults of the `nth` (from 0) request of `verb` on `resource` at `now_ms`. Pure.
    pub fn decide_nth(&self, verb: &str, resource: &str, nth: u64, now_ms: u64) -> Decision {
        let mut d = Decision::default();
        if self.until_ms.is_some_and(|u| now_ms >= u) {
            return d;
        }
        let label = format!("{verb} {resource}");
        for (i, rule) in self.rules.iter().enumerate() {
            if (rule.verb != "*" && rule.verb != verb) || (rule.resource != "*" && rule.resource != resource) {
                continue;
            }
            let roll = Roll::new(self.seed, &label, nth, i);
            if !roll.fires(rule.rate) {
                continue;
            }
            let draw = |min: u64, max: u64| roll.draw(min, max);
            match &rule.effect {
                Effect::Latency { min_ms, max_ms } => d.latency_ms = d.latency_ms.saturating_add(draw(*min_ms, *max_ms)),
                Effect::Error { status, message, retry_after_s } => {
                    if d.error.is_none() {
                        d.error = Some(InjectedError {
                            status: *status,
                            reason: default_reason(*status),
                            message: message.clone(),
                            retry_after_s: *retry_after_s,
                        });
                    }
                }
                Effect::DropWatch { min_ms, max_ms } => {
                    if d.drop_after_ms.is_none() {
                        d.drop_after_ms = Some(draw(*min_ms, *max_ms));
                    }
                }
            }
        }
        if d.error.is_some() {
            d.drop_after_ms = None;
        }
        d
    }
}

/// A plan plus per-label request counters.
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

    /// Decides the faults of the next request of `verb` on `resource` at `now_ms`.
    pub fn decide(&self, verb: &str, resource: &str, now_ms: u64) -> Decision {
        let nth = self.counters.next(&format!("{verb} {resource}"));
        self.plan.decide_nth(verb, resource, nth, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_file_parses_and_its_decisions_are_seeded() {
        let plan = FaultPlan::parse(
            r#"{"seed": 3, "until_ms": 1000, "rules": [
                {"request": "watch services", "rate": 0.5, "drop_after_ms": [10, 20]},
                {"request": "PATCH services/status", "status": 429, "retry_after_s": 2},
                {"request": "*", "latency_ms": [1, 1]}]}"#,
        )
        .unwrap();
        let d = plan.decide_nth("PATCH", "services/status", 0, 0);
        assert_eq!(d.error.as_ref().map(|e| (e.status, e.reason, e.retry_after_s)), Some((429, "TooManyRequests", Some(2))));
        assert_eq!(d.latency_ms, 1);
        assert_eq!(plan.decide_nth("PATCH", "services/status", 0, 1000), Decision::default(), "none at or after until_ms");
        let drops: Vec<bool> = (0..40).map(|n| plan.decide_nth("WATCH", "services", n, 0).drop_after_ms.is_some()).collect();
        assert!(drops.iter().any(|d| *d) && drops.iter().any(|d| !*d), "rate 0.5 drops some watches");
        assert_eq!(drops, (0..40).map(|n| plan.decide_nth("WATCH", "services", n, 0).drop_after_ms.is_some()).collect::<Vec<_>>());
        assert!(plan.decide_nth("WATCH", "services", 0, 0).drop_after_ms.is_none_or(|ms| (10..=20).contains(&ms)));
    }

    #[test]
    fn the_example_fault_file_parses() {
        let plan = FaultPlan::parse(include_str!("../../../../examples/apiserver-faults.json")).unwrap();
        assert_eq!(plan.rules.len(), 5);
        assert_eq!(plan.rules[0].effect, Effect::DropWatch { min_ms: 200, max_ms: 2000 });
    }

    #[test]
    fn a_bad_fault_file_names_the_rule_at_fault() {
        let e = FaultPlan::parse(r#"{"seed": 1, "rules": [{"request": "FROB services", "status": 500}]}"#).unwrap_err();
        assert!(e.contains("rules[0].request"), "{e}");
        let e = FaultPlan::parse(r#"{"seed": 1, "rules": [{"request": "LIST pods", "drop_after_ms": [1, 2]}]}"#).unwrap_err();
        assert!(e.contains("only a WATCH"), "{e}");
        let e = FaultPlan::parse(r#"{"seed": 1, "rules": [{"request": "*", "status": 500, "latency_ms": [1, 2]}]}"#).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        assert!(FaultPlan::parse(r#"{"rules": []}"#).is_err());
    }
}
