//! Backoff schedules: how long to wait before attempt `n`, as a pure function of the attempt
//! number and caller-supplied entropy (the core has no RNG).

use core::time::Duration;

/// How a delay is randomised (AWS's "Exponential Backoff and Jitter" names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Jitter {
    /// The computed delay exactly.
    None,
    /// Uniform in `[0, delay]`.
    Full,
    /// Uniform in `[delay/2, delay]`: never less than half, still spreads a thundering herd.
    #[default]
    Equal,
}

/// Exponential backoff: `initial * multiplier^attempt`, capped at `max`, then jittered.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Backoff {
    /// Delay before the first retry (attempt 0).
    pub initial: Duration,
    /// Growth per attempt (≥ 1.0; smaller values are treated as 1.0).
    pub multiplier: f64,
    /// Largest delay, before jitter.
    pub max: Duration,
    /// How the delay is randomised.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// 100 ms, doubling, at most 10 s, equal jitter (gRPC's reconnect schedule is similar).
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: Jitter::Equal,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), randomised by `entropy` (any 64 bits).
    pub fn delay(&self, attempt: u32, entropy: u64) -> Duration {
        let max = self.max.as_nanos() as f64;
        let mut nanos = (self.initial.as_nanos() as f64).min(max);
        let multiplier = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        // The exponent is capped: once at `max` more multiplying changes nothing.
        for _ in 0..attempt.min(64) {
            if nanos >= max {
                break;
            }
            nanos = (nanos * multiplier).min(max);
        }
        let nanos = nanos as u64;
        let jittered = match self.jitter {
            Jitter::None => nanos,
            Jitter::Full => uniform(entropy, nanos),
            Jitter::Equal => nanos / 2 + uniform(entropy, nanos - nanos / 2),
        };
        Duration::from_nanos(jittered)
    }
}

/// Uniform in `0..=hi` from 64 random bits (multiply-shift; no modulo bias worth the name).
fn uniform(entropy: u64, hi: u64) -> u64 {
    ((u128::from(entropy) * (u128::from(hi) + 1)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters_within_bounds() {
        let b = Backoff {
            jitter: Jitter::None,
            ..Backoff::default()
        };
        let ms = |n| Duration::from_millis(n);
        assert_eq!(b.delay(0, 0), ms(100));
        assert_eq!(b.delay(1, 0), ms(200));
        assert_eq!(b.delay(3, 0), ms(800));
        assert_eq!(b.delay(20, 0), ms(10_000));
        assert_eq!(b.delay(u32::MAX, 0), ms(10_000));
        let full = Backoff {
            jitter: Jitter::Full,
            ..b
        };
        let equal = Backoff {
            jitter: Jitter::Equal,
            ..b
        };
        for e in [0, 1, u64::MAX / 3, u64::MAX] {
            assert!(full.delay(2, e) <= ms(400));
            assert!(equal.delay(2, e) >= ms(200) && equal.delay(2, e) <= ms(400));
        }
        assert_eq!(full.delay(2, u64::MAX), ms(400) - Duration::from_nanos(0));
        assert_ne!(
            full.delay(2, 1 << 62),
            full.delay(2, 3 << 62),
            "entropy matters"
        );
    }
}
