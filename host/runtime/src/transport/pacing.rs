//! Write pacing per subscription: the host's side of ARM's write budget.
//!
//! ARM gives each subscription a token bucket of writes (200, refilled at 10 per second, by
//! default) shared by every client of the subscription, and answers a write over it `429`. The
//! host keeps its own model of that bucket per (ARM endpoint, subscription), shared by every
//! tenant of the process that writes to it, and takes a token before each PUT, POST or DELETE,
//! waiting for the refill when there is none. Every answer's
//! `x-ms-ratelimit-remaining-subscription-writes` corrects the model downwards (other clients
//! spend the same budget), and a `429` empties it for its `Retry-After`. So a burst of writes is
//! spread over the budget instead of being refused.
//!
//! The model is kept in thousandths of a token so the refill is exact; [`WritePacer::wait_at`] is
//! the pure decision (used by the replay with virtual time), [`WritePacer::acquire`] the async
//! one (wall time).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// ARM's count of the subscription's writes left, on every answer to a write.
pub const REMAINING_WRITES_HEADER: &str = "x-ms-ratelimit-remaining-subscription-writes";
/// The same of its reads, on every answer to a read.
pub const REMAINING_READS_HEADER: &str = "x-ms-ratelimit-remaining-subscription-reads";

/// A token bucket's shape: `capacity` tokens, refilled at `refill_per_s` (ARM's budgets, the
/// emulator's and the host's model of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub capacity: u32,
    pub refill_per_s: u32,
}

impl Default for Budget {
    /// ARM's published per-subscription write limit: 200, refilled at 10 per second.
    fn default() -> Self {
        Budget { capacity: 200, refill_per_s: 10 }
    }
}

impl Budget {
    /// Parses `CAPACITY/REFILL_PER_SECOND`, e.g. `200/10`.
    pub fn parse(s: &str) -> Result<Budget, String> {
        let (c, r) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected CAPACITY/REFILL_PER_SECOND, e.g. 200/10"))?;
        let capacity: u32 = c.trim().parse().map_err(|e| format!("{s:?}: capacity: {e}"))?;
        let refill_per_s: u32 = r.trim().parse().map_err(|e| format!("{s:?}: refill: {e}"))?;
        if capacity == 0 || refill_per_s == 0 {
            return Err(format!("{s:?}: capacity and refill must be at least 1"));
        }
        Ok(Budget { capacity, refill_per_s })
    }
}

#[derive(Debug)]
struct Model {
    budget: Budget,
    /// Thousandths of a token.
    milli: u64,
    at_ms: u64,
    /// No write before this (a `429`'s `Retry-After`).
    hold_until_ms: u64,
    /// The last remaining-writes header seen.
    remaining: Option<u32>,
}

/// One subscription's write pacer. Times are milliseconds of the caller's clock.
#[derive(Debug)]
pub struct WritePacer {
    model: Mutex<Model>,
    /// The zero of [`WritePacer::acquire`]'s wall clock.
    epoch: Instant,
}

impl WritePacer {
    /// A pacer whose bucket is full at `now_ms`.
    pub fn new(budget: Budget, now_ms: u64) -> WritePacer {
        let model = Model { budget, milli: u64::from(budget.capacity) * 1000, at_ms: now_ms, hold_until_ms: 0, remaining: None };
        WritePacer { model: Mutex::new(model), epoch: Instant::now() }
    }

    pub fn budget(&self) -> Budget {
        self.lock().budget
    }

    /// Another user of the subscription configured `budget`: the stricter of the two applies.
    fn tighten(&self, budget: Budget) {
        let mut m = self.lock();
        m.budget =
            Budget { capacity: m.budget.capacity.min(budget.capacity), refill_per_s: m.budget.refill_per_s.min(budget.refill_per_s) };
        m.milli = m.milli.min(u64::from(m.budget.capacity) * 1000);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token at `now_ms` if one is there (`None`), else says how long to wait first.
    pub fn wait_at(&self, now_ms: u64) -> Option<u64> {
        let mut m = self.lock();
        let budget = m.budget;
        if now_ms > m.at_ms {
            let added = (now_ms - m.at_ms).saturating_mul(u64::from(budget.refill_per_s));
            m.milli = m.milli.saturating_add(added).min(u64::from(budget.capacity) * 1000);
            m.at_ms = now_ms;
        }
        if now_ms < m.hold_until_ms {
            return Some(m.hold_until_ms - now_ms);
        }
        if m.milli >= 1000 {
            m.milli -= 1000;
            return None;
        }
        Some((1000 - m.milli).div_ceil(u64::from(budget.refill_per_s)).max(1))
    }

    /// The server says `remaining` writes are left: the model never believes in more.
    pub fn observe(&self, remaining: u32) {
        let mut m = self.lock();
        m.milli = m.milli.min(u64::from(remaining) * 1000);
        m.remaining = Some(remaining);
    }

    /// The server refused a write (`429`): nothing is written before `retry_after_ms` passed.
    pub fn hold(&self, now_ms: u64, retry_after_ms: u64) {
        let mut m = self.lock();
        m.milli = 0;
        m.at_ms = m.at_ms.max(now_ms);
        m.hold_until_ms = m.hold_until_ms.max(now_ms.saturating_add(retry_after_ms));
    }

    /// The last remaining-writes header seen.
    pub fn remaining(&self) -> Option<u32> {
        self.lock().remaining
    }

    /// The wall clock as the model reads it: [`WALL_MARGIN_MS`] behind, so a token the model
    /// grants has been refilled at ARM too, whatever the two clocks' rounding.
    fn wall_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).saturating_sub(WALL_MARGIN_MS)
    }

    /// Waits (wall time) until a write may go, then takes its token.
    pub async fn acquire(&self) {
        while let Some(wait) = self.wait_at(self.wall_ms()) {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// [`WritePacer::hold`] at the wall clock's now.
    pub fn hold_now(&self, retry_after: Duration) {
        self.hold(self.wall_ms(), retry_after.as_millis() as u64);
    }
}

/// How far behind the wall clock the live model runs.
const WALL_MARGIN_MS: u64 = 5;

type Registry = Mutex<BTreeMap<(String, String), Arc<WritePacer>>>;

fn registry() -> &'static Registry {
    static PACERS: OnceLock<Registry> = OnceLock::new();
    PACERS.get_or_init(Registry::default)
}

/// The process's pacer of `subscription` at `arm_endpoint`, which every tenant writing to that
/// subscription shares; when tenants configure different budgets, the stricter applies.
pub fn shared(arm_endpoint: &str, subscription: &str, budget: Budget) -> Arc<WritePacer> {
    let key = (arm_endpoint.trim_end_matches('/').to_ascii_lowercase(), subscription.to_ascii_lowercase());
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let pacer = r.entry(key).or_insert_with(|| Arc::new(WritePacer::new(budget, 0))).clone();
    pacer.tighten(budget);
    pacer
}

/// Every shared pacer's subscription and last remaining-writes header (for the metrics).
pub fn remaining_writes() -> Vec<(String, u32)> {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.iter().filter_map(|((_, sub), p)| p.remaining().map(|n| (sub.clone(), n))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_spends_the_bucket_then_goes_at_the_refill_rate() {
        let p = WritePacer::new(Budget { capacity: 3, refill_per_s: 10 }, 0);
        assert_eq!((0..3).map(|_| p.wait_at(0)).collect::<Vec<_>>(), vec![None, None, None]);
        assert_eq!(p.wait_at(0), Some(100), "one token every 100 ms at 10/s");
        assert_eq!(p.wait_at(60), Some(40));
        assert_eq!(p.wait_at(100), None);
        // A full second refills ten, but the bucket holds three.
        assert_eq!((0..4).map(|_| p.wait_at(5_000)).filter(Option::is_none).count(), 3);
    }

    #[test]
    fn the_servers_count_and_a_429_correct_the_model() {
        let p = WritePacer::new(Budget::default(), 0);
        p.observe(1);
        assert_eq!(p.remaining(), Some(1));
        assert_eq!(p.wait_at(0), None);
        assert_eq!(p.wait_at(0), Some(100), "another client spent the rest");
        p.hold(1_000, 5_000);
        assert_eq!(p.wait_at(1_000), Some(5_000), "nothing before the Retry-After");
        assert_eq!(p.wait_at(6_000), None, "then the refill of the hold");
    }

    #[test]
    fn tenants_of_one_subscription_share_a_pacer() {
        let a = shared("http://127.0.0.1:1/", "SUB-pacing-test", Budget::default());
        let b = shared("http://127.0.0.1:1", "sub-pacing-test", Budget { capacity: 1, refill_per_s: 1 });
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.budget(), Budget { capacity: 1, refill_per_s: 1 }, "the stricter budget applies");
        let c = shared("http://127.0.0.1:2", "sub-pacing-test", Budget::default());
        assert!(!Arc::ptr_eq(&a, &c), "another endpoint is another ARM");
        assert!(Budget::parse("200/10").is_ok() && Budget::parse("0/1").is_err() && Budget::parse("x").is_err());
    }
}
