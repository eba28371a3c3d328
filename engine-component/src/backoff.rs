//! Retry backoff (ENGINE.md 4.3) and the engine's deterministic jitter source.
//!
//! Attempt *n* (1-based) waits `1 s << min(n-1, 5)`, capped at 30 s, plus a uniform jitter in
//! `[0, delay/5]`. Jitter comes from a splitmix64 generator seeded from `TenantConfig.seed` and
//! kept (and snapshotted) in the engine state: same seed and inputs, same delays. A throttled
//! failure's `Retry-After` (capped by the tenant's `max_retry_after_ms`) is a floor on top.

use serde::{Deserialize, Serialize};

pub const BASE_MS: u64 = 1_000;
pub const CAP_MS: u64 = 30_000;
pub const MAX_SHIFT: u32 = 5;
/// `maxServiceRetries`.
pub const MAX_SERVICE_RETRIES: u32 = 12;
/// `parkReArmCooldown`.
pub const PARK_COOLDOWN_MS: u64 = 5 * 60 * 1_000;
/// `defaultNRPOperationTimeout`, per operation attempt and per location sync attempt.
pub const OPERATION_TIMEOUT_MS: u64 = 5 * 60 * 1_000;
/// `defaultMaxInitLocationSyncAttempts` (a reporting threshold only).
pub const LOCATION_SYNC_REPORT_THRESHOLD: u32 = 12;

/// splitmix64: tiny, fast, good enough for jitter and correlation ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, bound]` (inclusive).
    pub fn up_to(&mut self, bound: u64) -> u64 {
        if bound == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (bound + 1)
    }
    /// A random (version 4) UUID string, for correlation ids.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
        let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xFFFF, a & 0xFFFF, b >> 48, b & 0xFFFF_FFFF_FFFF)
    }
}

/// The delay before attempt `n` without jitter (n = 0 is treated as 1).
pub fn base_delay_ms(n: u32) -> u64 {
    let shift = n.max(1).saturating_sub(1).min(MAX_SHIFT);
    (BASE_MS << shift).min(CAP_MS)
}

/// `computeRetryBackoff(n)`: base delay plus up to 20% jitter.
pub fn backoff_ms(n: u32, rng: &mut SplitMix64) -> u64 {
    let d = base_delay_ms(n);
    d + rng.up_to(d / 5)
}

/// How long a server's `Retry-After` holds the next attempt: `min(retry_after, cap)`, none when
/// the server gave none (or the cap is 0). The next attempt then waits for the longer of this
/// and the backoff.
pub fn throttle_hold_ms(retry_after_ms: Option<u64>, cap_ms: u64) -> Option<u64> {
    retry_after_ms.map(|r| r.min(cap_ms)).filter(|h| *h > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_and_jitter_bounds() {
        let want = [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(base_delay_ms(i as u32 + 1), *w);
        }
        assert_eq!(base_delay_ms(0), 1_000);
        assert_eq!(base_delay_ms(u32::MAX), 30_000);
        let mut rng = SplitMix64::new(7);
        for n in 1..20 {
            let d = backoff_ms(n, &mut rng);
            let b = base_delay_ms(n);
            assert!(d >= b && d <= b + b / 5, "{n}: {d}");
        }
    }

    #[test]
    fn throttle_hold_is_capped_and_optional() {
        assert_eq!(throttle_hold_ms(None, PARK_COOLDOWN_MS), None);
        assert_eq!(throttle_hold_ms(Some(2_000), PARK_COOLDOWN_MS), Some(2_000));
        assert_eq!(throttle_hold_ms(Some(999_999_000), PARK_COOLDOWN_MS), Some(PARK_COOLDOWN_MS));
        assert_eq!(throttle_hold_ms(Some(u64::MAX), 60_000), Some(60_000));
        assert_eq!(throttle_hold_ms(Some(5_000), 0), None, "a cap of 0 ignores Retry-After");
        assert_eq!(throttle_hold_ms(Some(0), PARK_COOLDOWN_MS), None);
    }

    #[test]
    fn deterministic_per_seed() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        assert_eq!(a.uuid(), b.uuid());
        assert_eq!(backoff_ms(3, &mut a), backoff_ms(3, &mut b));
        let u = SplitMix64::new(1).uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
