//! Every resilience setting of a multi-endpoint client in one value, with presets, validation
//! and `REMORA_*` overrides from a lookup the driver passes (the environment). Both drivers' cluster clients take it.

use core::time::Duration;

use super::balance::Strategy;
use super::breaker::BreakerConfig;
use super::eject::EjectionConfig;
use super::retry::{
    BudgetKind, HedgeError, HedgePolicy, PolicyError, RetryBudget, RetryPolicy, Schedule,
};
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

/// Percentile hedging waits for this many latency samples before it trusts them.
pub const MIN_HEDGE_SAMPLES: u64 = 100;

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

    /// The hedging policy for a call, given recent successful attempts' latency (`samples` of
    /// them, and their quantiles): the configured one, with its delay replaced by the
    /// `hedge_percentile` quantile once there are at least [`MIN_HEDGE_SAMPLES`] samples (kept
    /// below half the timeout).
    pub fn hedge_for(
        &self,
        samples: u64,
        quantile: impl FnOnce(f64) -> Duration,
    ) -> Option<HedgePolicy> {
        let mut hedge = self.hedge?;
        if let Some(q) = self.hedge_percentile {
            if samples >= MIN_HEDGE_SAMPLES {
                hedge.delay = quantile(q.clamp(0.0, 1.0))
                    .min(self.timeout / 2)
                    .max(Duration::from_micros(100));
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.retry(self.max_attempts)
            .validate()
            .map_err(ConfigError::Retry)?;
        if let Some(h) = self.hedge {
            h.validate(self.timeout).map_err(ConfigError::Hedge)?;
        }
        if let Some(q) = self.hedge_percentile {
            if !(0.0..=1.0).contains(&q) {
                return Err(ConfigError::HedgePercentile);
            }
        }
        match self.budget {
            BudgetKind::TokenBucket {
                max_tokens,
                token_ratio,
            } if !(0.0..=f64::from(max_tokens.max(1))).contains(&token_ratio) => {
                Err(ConfigError::Budget)
            }
            BudgetKind::Percent { percent, ttl, .. }
                if percent.is_nan() || percent < 0.0 || ttl.is_zero() =>
            {
                Err(ConfigError::Budget)
            }
            _ => Ok(()),
        }
    }

    /// Applies `REMORA_TIMEOUT_MS`, `REMORA_MAX_ATTEMPTS` and `REMORA_HEDGE_DELAY_MS` (0: off)
    /// as `lookup` finds them (a driver passes the environment); an unparsable value is an
    /// error, not ignored.
    pub fn with_overrides<S: AsRef<str>>(
        mut self,
        lookup: impl Fn(&'static str) -> Option<S>,
    ) -> Result<Self, ConfigError> {
        if let Some(ms) = number(&lookup, "REMORA_TIMEOUT_MS")? {
            self.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = number(&lookup, "REMORA_MAX_ATTEMPTS")? {
            self.max_attempts =
                u32::try_from(n).map_err(|_| ConfigError::Override("REMORA_MAX_ATTEMPTS"))?;
        }
        if let Some(ms) = number(&lookup, "REMORA_HEDGE_DELAY_MS")? {
            self.hedge = (ms > 0).then(|| HedgePolicy {
                delay: Duration::from_millis(ms),
                max_attempts: self.max_attempts.max(2),
            });
        }
        Ok(self)
    }
}

/// The whole number `lookup` finds for `name`, if any.
pub fn number<S: AsRef<str>>(
    lookup: impl Fn(&'static str) -> Option<S>,
    name: &'static str,
) -> Result<Option<u64>, ConfigError> {
    match lookup(name) {
        Some(v) => v
            .as_ref()
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Override(name)),
        None => Ok(None),
    }
}

/// Why a client's configuration is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The retry policy (attempts, backoff).
    Retry(PolicyError),
    /// The hedging policy.
    Hedge(HedgeError),
    /// The hedge percentile is not within 0..=1.
    HedgePercentile,
    /// The retry budget's ratio or window is not sane.
    Budget,
    /// An override (named) is not a whole number in range.
    Override(&'static str),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Retry(e) => write!(f, "retry policy: {e:?}"),
            ConfigError::Hedge(e) => write!(f, "hedging policy: {e:?}"),
            ConfigError::HedgePercentile => f.write_str("hedge percentile is not within 0..=1"),
            ConfigError::Budget => f.write_str("retry budget ratio or window out of range"),
            ConfigError::Override(name) => write!(f, "{name} is not a whole number in range"),
        }
    }
}

impl core::error::Error for ConfigError {}

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
            p.hedge_for(99, |_| ms(12)).unwrap().delay,
            ms(50),
            "too few samples: fixed"
        );
        assert_eq!(
            p.hedge_for(100, |q| if q == 0.95 { ms(12) } else { ms(1) })
                .unwrap()
                .delay,
            ms(12)
        );
        assert_eq!(
            p.hedge_for(500, |_| ms(10_000)).unwrap().delay,
            ms(1500),
            "below timeout"
        );
        let off = Policies::production();
        assert_eq!(off.hedge_for(500, |_| ms(1)), None);
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
        assert!(matches!(hedged.validate(), Err(ConfigError::Hedge(_))));
        let none = Policies {
            max_attempts: 0,
            ..Policies::production()
        };
        assert_eq!(
            none.validate(),
            Err(ConfigError::Retry(PolicyError::NoAttempts))
        );
    }

    #[test]
    fn overrides_apply_and_garbage_is_refused() {
        let env = |name: &'static str| match name {
            "REMORA_TIMEOUT_MS" => Some("250"),
            "REMORA_HEDGE_DELAY_MS" => Some(" 20 "),
            _ => None,
        };
        let p = Policies::production().with_overrides(env).unwrap();
        assert_eq!(p.timeout, Duration::from_millis(250));
        assert_eq!(p.hedge.unwrap().delay, Duration::from_millis(20));
        let bad = |_: &'static str| Some("soon");
        assert_eq!(
            Policies::production().with_overrides(bad),
            Err(ConfigError::Override("REMORA_TIMEOUT_MS"))
        );
    }
}
