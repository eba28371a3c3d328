//! What the two fault files (the ARM emulator's, `emulator::faults`, and the API server's,
//! `apiserver::faults`) share: the seeded roll that decides whether a rule fires on the nth
//! request of a label and what it draws, the checks of a rule's rate and `[min, max]` ranges,
//! and the per-label request counters. Each file keeps its own request names and effects.
//!
//! A decision depends only on the plan's seed, the label, how many requests of that label came
//! before and the rule's index, so the same fault file gives the same faults every run.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The longest latency or delay a rule may draw, in milliseconds.
pub const MAX_RANGE_MS: u64 = 600_000;

/// The seeded draw of one rule for one request.
#[derive(Clone, Copy, Debug)]
pub struct Roll(u64);

impl Roll {
    /// Rule `rule` of a plan seeded `seed`, on the `nth` (from 0) request of `label`.
    pub fn new(seed: u64, label: &str, nth: u64, rule: usize) -> Roll {
        Roll(mix(mix(mix(seed ^ fnv(label)) ^ nth) ^ (rule as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// Whether a rule of this rate fires.
    pub fn fires(self, rate: f64) -> bool {
        unit(self.0) < rate
    }

    /// A uniform draw in `[min, max]` (`min <= max`).
    pub fn draw(self, min: u64, max: u64) -> u64 {
        min + mix(self.0 ^ 0xA5A5) % (max - min + 1)
    }
}

/// A rule's `rate` (default 1), or why it is not a probability.
pub fn check_rate(rate: Option<f64>, at: &dyn Fn(&str, String) -> String) -> Result<f64, String> {
    let rate = rate.unwrap_or(1.0);
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(at("rate", format!("{rate} is not between 0 and 1")))
    }
}

/// A rule's `[min, max]` milliseconds, or why it is not one.
pub fn check_range(field: &str, v: &[u64], at: &dyn Fn(&str, String) -> String) -> Result<(u64, u64), String> {
    match v {
        [a, b] if a <= b && *b <= MAX_RANGE_MS => Ok((*a, *b)),
        [a, b] if a > b => Err(at(field, format!("[{a}, {b}]: min is above max"))),
        [_, b] => Err(at(field, format!("{b} ms is above the {MAX_RANGE_MS} ms limit"))),
        _ => Err(at(field, format!("needs exactly two numbers [min, max], got {}", v.len()))),
    }
}

/// How many requests of each label came before: the `nth` of [`Roll::new`].
#[derive(Debug, Default)]
pub struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    /// The index of this request of `label`, counting it.
    pub fn next(&self, label: &str) -> u64 {
        let mut counters = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counters.entry(label.to_string()).or_insert(0);
        let nth = *n;
        *n += 1;
        nth
    }
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}
