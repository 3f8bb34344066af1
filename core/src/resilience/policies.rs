//! Every resilience setting of a multi-endpoint client in one value, with presets, validation
//! and (with `std`) `REMORA_*` environment overrides. Both drivers' cluster clients take it.

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use super::balance::Strategy;
use super::breaker::BreakerConfig;
use super::eject::EjectionConfig;
use super::retry::{BudgetKind, HedgePolicy, RetryBudget, RetryPolicy, Schedule};
use crate::resilience::backoff::Backoff;

/// A client's resilience policies. `Default` is [`Policies::production`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Policies {
    /// How an endpoint is chosen.
    pub strategy: Strategy,
    /// Per-endpoint circuit breaker.
    pub breaker: BreakerConfig,
    /// Outlier ejection.
    pub ejection: EjectionConfig,
    /// How retries and hedges are rationed (gRPC token bucket or Finagle percentage).
    pub budget: BudgetKind,
    /// A call's timeout, all attempts included.
    pub timeout: Duration,
    /// Each attempt's own limit within the call's timeout (`None`: the call's deadline).
    pub per_attempt_timeout: Option<Duration>,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Delay between retries.
    pub backoff: Backoff,
    /// Backup requests, if any.
    pub hedge: Option<HedgePolicy>,
    /// Hedge after this quantile (0..1) of recent attempt latency instead of the fixed delay,
    /// once there are enough samples (Finagle's backup requests); the fixed delay is the
    /// fallback.
    pub hedge_percentile: Option<f64>,
    /// Periodic health probes of ejected or breaker-open endpoints, if any.
    pub probe: Option<Probe>,
}

/// A health probe: every `every`, each endpoint that is ejected or whose breaker is not closed is
/// sent a request with `code`; any response (even an error code) proves it alive, closes its
/// breaker and ends its ejection. RocketMQ clients probe before retrying in the same spirit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Probe {
    /// How often.
    pub every: Duration,
    /// The request code sent (an unknown code is fine: REQUEST_CODE_NOT_SUPPORTED is an answer).
    pub code: i32,
}

impl Policies {
    /// Production: round robin over healthy endpoints, 3 attempts with 100 ms..2 s exponential
    /// backoff (equal jitter), 3 s timeout, breakers (5 in a row or 50 % of 20 in 10 s; open 5 s)
    /// and ejection (Envoy's defaults) on, gRPC's token-bucket budget (10 tokens, 0.1), no
    /// hedging.
    pub fn production() -> Self {
        Policies {
            strategy: Strategy::RoundRobin,
            breaker: BreakerConfig::default(),
            ejection: EjectionConfig::default(),
            budget: BudgetKind::TokenBucket {
                max_tokens: 10,
                token_ratio: 0.1,
            },
            timeout: Duration::from_secs(3),
            per_attempt_timeout: None,
            max_attempts: 3,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                multiplier: 2.0,
                max: Duration::from_secs(2),
                ..Backoff::default()
            },
            hedge: None,
            hedge_percentile: None,
            probe: None,
        }
    }

    /// Development: production with a 10 s timeout and a single attempt, so failures show.
    pub fn development() -> Self {
        Policies {
            timeout: Duration::from_secs(10),
            max_attempts: 1,
            ..Policies::production()
        }
    }

    /// Testing: production with a 500 ms timeout and 5..50 ms backoff, so tests run fast.
    pub fn testing() -> Self {
        Policies {
            timeout: Duration::from_millis(500),
            backoff: Backoff {
                initial: Duration::from_millis(5),
                multiplier: 2.0,
                max: Duration::from_millis(50),
                ..Backoff::default()
            },
            ..Policies::production()
        }
    }

    /// The hedging policy for a call, given recent attempt latency: the configured one, with its
    /// delay replaced by the `hedge_percentile` quantile of `latency` when that is set and
    /// `latency` has at least `min_samples` samples (kept below `timeout`).
    pub fn hedge_for(
        &self,
        quantile_latency: impl FnOnce(f64) -> Option<Duration>,
    ) -> Option<HedgePolicy> {
        let mut hedge = self.hedge?;
        if let Some(q) = self.hedge_percentile {
            if let Some(d) = quantile_latency(q.clamp(0.0, 1.0)) {
                hedge.delay = d.min(self.timeout / 2).max(Duration::from_micros(100));
            }
        }
        Some(hedge)
    }

    /// The retry policy for `max_attempts` attempts.
    pub fn retry(&self, max_attempts: u32) -> RetryPolicy<'static> {
        RetryPolicy {
            max_attempts,
            schedule: Schedule::Exponential(self.backoff),
        }
    }

    /// A full retry budget as configured.
    pub fn retry_budget(&self) -> RetryBudget {
        RetryBudget::from_kind(self.budget)
    }

    /// Checks the policies: attempts ≥ 1, backoff max ≥ initial, hedge delay below the timeout
    /// and at least 2 hedge attempts, a budget ratio within 0..=tokens.
    pub fn validate(&self) -> Result<(), String> {
        self.retry(self.max_attempts)
            .validate()
            .map_err(|e| format!("retry policy: {e:?}"))?;
        if let Some(h) = self.hedge {
            h.validate(self.timeout)
                .map_err(|e| format!("hedging policy: {e:?}"))?;
        }
        if let Some(q) = self.hedge_percentile {
            if !(0.0..=1.0).contains(&q) {
                return Err(format!("hedge percentile {q} is not within 0..=1"));
            }
        }
        match self.budget {
            BudgetKind::TokenBucket {
                max_tokens,
                token_ratio,
            } if !(0.0..=f64::from(max_tokens.max(1))).contains(&token_ratio) => {
                return Err(format!("budget token ratio {token_ratio} out of range"));
            }
            BudgetKind::Percent { percent, ttl, .. }
                if percent.is_nan() || percent < 0.0 || ttl.is_zero() =>
            {
                return Err(format!("percent budget {percent} over {ttl:?} is not sane"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies `REMORA_TIMEOUT_MS`, `REMORA_MAX_ATTEMPTS` and `REMORA_HEDGE_DELAY_MS` (0: off)
    /// from the environment; an unparsable value is an error, not ignored.
    #[cfg(feature = "std")]
    pub fn with_env_overrides(mut self) -> Result<Self, String> {
        if let Some(ms) = env_number("REMORA_TIMEOUT_MS")? {
            self.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = env_number("REMORA_MAX_ATTEMPTS")? {
            self.max_attempts =
                u32::try_from(n).map_err(|_| String::from("REMORA_MAX_ATTEMPTS too large"))?;
        }
        if let Some(ms) = env_number("REMORA_HEDGE_DELAY_MS")? {
            self.hedge = (ms > 0).then(|| HedgePolicy {
                delay: Duration::from_millis(ms),
                max_attempts: self.max_attempts.max(2),
            });
        }
        Ok(self)
    }
}

/// A whole number from the environment variable `name`, if set.
#[cfg(feature = "std")]
pub fn env_number(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(None),
    }
}

impl Default for Policies {
    fn default() -> Self {
        Policies::production()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_delay_follows_the_latency_percentile_when_asked() {
        let ms = Duration::from_millis;
        let p = Policies {
            hedge: Some(HedgePolicy {
                delay: ms(50),
                max_attempts: 2,
            }),
            hedge_percentile: Some(0.95),
            ..Policies::production()
        };
        assert_eq!(
            p.hedge_for(|_| None).unwrap().delay,
            ms(50),
            "too few samples: fixed"
        );
        assert_eq!(
            p.hedge_for(|q| (q == 0.95).then(|| ms(12))).unwrap().delay,
            ms(12)
        );
        assert_eq!(
            p.hedge_for(|_| Some(ms(10_000))).unwrap().delay,
            ms(1500),
            "below timeout"
        );
        let off = Policies::production();
        assert_eq!(off.hedge_for(|_| Some(ms(1))), None);
    }

    #[test]
    fn presets_validate_and_bad_policies_do_not() {
        for p in [
            Policies::production(),
            Policies::development(),
            Policies::testing(),
        ] {
            assert_eq!(p.validate(), Ok(()));
        }
        let hedged = Policies {
            hedge: Some(HedgePolicy {
                delay: Duration::from_secs(3),
                max_attempts: 2,
            }),
            ..Policies::production()
        };
        assert!(hedged.validate().unwrap_err().contains("hedging"));
        let none = Policies {
            max_attempts: 0,
            ..Policies::production()
        };
        assert!(none.validate().unwrap_err().contains("retry"));
    }
}
