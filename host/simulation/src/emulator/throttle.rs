//! Per-subscription request budgets, as ARM enforces them: a token bucket for writes (PUT, POST,
//! DELETE) and one for reads (GET) per subscription. A request takes one token of its bucket;
//! every answer carries what is left (`x-ms-ratelimit-remaining-subscription-writes` or
//! `-reads`), and a request that finds its bucket empty is answered `429 TooManyRequests` with a
//! `Retry-After` of the seconds until a token is back, and changes nothing.
//!
//! The defaults are ARM's published per-subscription limits (token buckets of 200 writes
//! refilled at 10 per second, 250 reads at 25 per second; Azure Resource Manager's "throttling
//! requests" documentation). Both faces decide from the same buckets and the caller's "now"
//! (virtual time for a replay), so a replay and a live run are throttled alike. Tokens are kept
//! in thousandths, so the refill is exact integer arithmetic and a replay is deterministic.

use std::collections::BTreeMap;
use std::sync::Mutex;

pub use difftracker_runtime::transport::pacing::{Budget, REMAINING_READS_HEADER, REMAINING_WRITES_HEADER};

/// The budgets of every subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub writes: Budget,
    pub reads: Budget,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits { writes: Budget { capacity: 200, refill_per_s: 10 }, reads: Budget { capacity: 250, refill_per_s: 25 } }
    }
}

impl RateLimits {
    /// ARM's defaults, as the command line writes them.
    pub const DEFAULT_TEXT: &'static str = "200/10,250/25";

    /// Parses `WRITES[,READS]`, each `CAPACITY/REFILL_PER_SECOND` (reads default to ARM's).
    pub fn parse(s: &str) -> Result<RateLimits, String> {
        let (w, r) = match s.split_once(',') {
            Some((w, r)) => (w, Some(r)),
            None => (s, None),
        };
        let writes = Budget::parse(w)?;
        let reads = r.map(Budget::parse).transpose()?.unwrap_or(RateLimits::default().reads);
        Ok(RateLimits { writes, reads })
    }
}

/// How a request fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub write: bool,
    /// Whole tokens left in the request's bucket after it.
    pub remaining: u32,
    /// `Some(seconds)`: refused, retry after that long.
    pub retry_after_s: Option<u64>,
}

impl Admission {
    pub fn header(&self) -> &'static str {
        if self.write {
            REMAINING_WRITES_HEADER
        } else {
            REMAINING_READS_HEADER
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Thousandths of a token.
    milli: u64,
    at_ms: u64,
}

impl Bucket {
    fn full(b: Budget, now_ms: u64) -> Bucket {
        Bucket { milli: u64::from(b.capacity) * 1000, at_ms: now_ms }
    }

    fn refill(&mut self, b: Budget, now_ms: u64) {
        if now_ms > self.at_ms {
            // refill_per_s tokens per 1000 ms = refill_per_s thousandths per ms.
            let added = (now_ms - self.at_ms).saturating_mul(u64::from(b.refill_per_s));
            self.milli = self.milli.saturating_add(added).min(u64::from(b.capacity) * 1000);
            self.at_ms = now_ms;
        }
    }
}

/// The buckets, per subscription (case-insensitive, as ARM compares IDs).
#[derive(Debug)]
pub struct Throttle {
    limits: RateLimits,
    buckets: Mutex<BTreeMap<(String, bool), Bucket>>,
}

impl Throttle {
    pub fn new(limits: RateLimits) -> Throttle {
        Throttle { limits, buckets: Mutex::new(BTreeMap::new()) }
    }

    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Takes a token of `subscription`'s write or read bucket at `now_ms`, if there is one.
    pub fn admit(&self, subscription: &str, write: bool, now_ms: u64) -> Admission {
        let budget = if write { self.limits.writes } else { self.limits.reads };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry((subscription.to_ascii_lowercase(), write)).or_insert_with(|| Bucket::full(budget, now_ms));
        bucket.refill(budget, now_ms);
        if bucket.milli >= 1000 {
            bucket.milli -= 1000;
            return Admission { write, remaining: (bucket.milli / 1000) as u32, retry_after_s: None };
        }
        let missing_ms = (1000 - bucket.milli).div_ceil(u64::from(budget.refill_per_s));
        Admission { write, remaining: 0, retry_after_s: Some(missing_ms.div_ceil(1000).max(1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_refill_rate() {
        let t = Throttle::new(RateLimits { writes: Budget { capacity: 3, refill_per_s: 2 }, ..RateLimits::default() });
        let left: Vec<u32> = (0..3).map(|_| t.admit("SUB", true, 0).remaining).collect();
        assert_eq!(left, vec![2, 1, 0]);
        let refused = t.admit("sub", true, 0);
        assert_eq!(refused.retry_after_s, Some(1), "the same subscription, whatever its case");
        assert_eq!(t.admit("sub", true, 499).retry_after_s, Some(1), "half a second refills 0.998 tokens");
        assert_eq!(t.admit("sub", true, 500).retry_after_s, None, "one token after 500 ms at 2/s");
        assert_eq!(t.admit("other", true, 500).remaining, 2, "each subscription has its own bucket");
        assert_eq!(t.admit("sub", false, 500).remaining, 249, "reads have their own bucket");
        // A long pause refills to the capacity, never beyond.
        assert_eq!(t.admit("sub", true, 3_600_000).remaining, 2);
    }

    #[test]
    fn limits_parse_from_the_command_line() {
        assert_eq!(RateLimits::parse(RateLimits::DEFAULT_TEXT), Ok(RateLimits::default()));
        let l = RateLimits::parse("50/5").unwrap();
        assert_eq!((l.writes, l.reads), (Budget { capacity: 50, refill_per_s: 5 }, RateLimits::default().reads));
        assert!(RateLimits::parse("50/5,x").is_err() && RateLimits::parse("").is_err());
    }
}
