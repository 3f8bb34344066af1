//! A per-endpoint circuit breaker (the Hystrix / Finagle / Envoy shape): closed until failures
//! trip it, open (refusing calls) for a while, then half-open, letting a few probe calls through;
//! their success closes it, a failure opens it again.

use core::time::Duration;

use crate::time::Instant;

/// When the breaker trips, and how it recovers.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BreakerConfig {
    /// Trip after this many failures in a row (0: never on this rule).
    pub consecutive_failures: u32,
    /// Trip when, within one window, at least `min_requests` calls ended and at least this
    /// fraction of them failed (`None`: never on this rule).
    pub failure_rate: Option<RateRule>,
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// Probe calls let through when half-open; that many successes close the breaker.
    pub half_open_probes: u32,
}

/// The failure-rate rule of [`BreakerConfig`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RateRule {
    /// Fraction of failures (0.0–1.0) that trips the breaker.
    pub threshold: f64,
    /// Fewer calls than this in a window never trip it.
    pub min_requests: u32,
    /// Length of the (fixed, tumbling) counting window.
    pub window: Duration,
}

impl Default for BreakerConfig {
    /// 5 failures in a row, or half of at least 20 calls within 10 s; open for 5 s; 1 probe.
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: Some(RateRule {
                threshold: 0.5,
                min_requests: 20,
                window: Duration::from_secs(10),
            }),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// Where the breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls pass.
    Closed,
    /// Calls are refused until `until`.
    Open {
        /// When probing may start.
        until: Instant,
    },
    /// Up to the probe quota of calls pass.
    HalfOpen {
        /// Probes let through and not yet ended.
        in_flight: u32,
        /// Probes that succeeded.
        successes: u32,
    },
}

/// One endpoint's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    consecutive: u32,
    window_start: Instant,
    window_calls: u32,
    window_failures: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: State::Closed,
            consecutive: 0,
            window_start: Instant::ZERO,
            window_calls: 0,
            window_failures: 0,
        }
    }

    /// Where it stands (as of the last call to [`Breaker::allow`] or [`Breaker::record`]).
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call may go to this endpoint at `now`. A `true` in half-open state takes a
    /// probe slot, which [`Breaker::record`] gives back.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let State::Open { until } = self.state {
            if now < until {
                return false;
            }
            self.state = State::HalfOpen {
                in_flight: 0,
                successes: 0,
            };
        }
        match &mut self.state {
            State::Closed => true,
            State::HalfOpen { in_flight, .. } => {
                if *in_flight < self.config.half_open_probes.max(1) {
                    *in_flight += 1;
                    true
                } else {
                    false
                }
            }
            State::Open { .. } => false,
        }
    }

    /// A call that [`Breaker::allow`] let through ended at `now`.
    pub fn record(&mut self, success: bool, now: Instant) {
        match &mut self.state {
            State::Closed => {
                if let Some(rule) = self.config.failure_rate {
                    if now - self.window_start >= rule.window {
                        self.window_start = now;
                        self.window_calls = 0;
                        self.window_failures = 0;
                    }
                }
                self.window_calls += 1;
                if success {
                    self.consecutive = 0;
                } else {
                    self.consecutive += 1;
                    self.window_failures += 1;
                }
                let by_streak = self.config.consecutive_failures > 0
                    && self.consecutive >= self.config.consecutive_failures;
                let by_rate = self.config.failure_rate.is_some_and(|rule| {
                    self.window_calls >= rule.min_requests.max(1)
                        && f64::from(self.window_failures)
                            >= rule.threshold * f64::from(self.window_calls)
                });
                if by_streak || by_rate {
                    self.trip(now);
                }
            }
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                if !success {
                    self.trip(now);
                } else {
                    *successes += 1;
                    if *successes >= self.config.half_open_probes.max(1) {
                        self.close();
                    }
                }
            }
            // A call let through before the breaker opened: it changes nothing.
            State::Open { .. } => {}
        }
    }

    /// A health probe outside normal traffic found the endpoint healthy: close the breaker.
    pub fn reset(&mut self) {
        self.close();
    }

    fn trip(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.config.open_for,
        };
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.consecutive = 0;
        self.window_calls = 0;
        self.window_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn trips_on_a_streak_and_recovers_through_half_open() {
        let mut b = Breaker::new(BreakerConfig {
            failure_rate: None,
            ..BreakerConfig::default()
        });
        let t = Instant::ZERO;
        for _ in 0..4 {
            assert!(b.allow(t));
            b.record(false, t);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(true, t);
        for _ in 0..5 {
            b.record(false, t);
        }
        assert_eq!(b.state(), State::Open { until: t + 5 * SEC });
        assert!(!b.allow(t + 4 * SEC));
        assert!(b.allow(t + 5 * SEC), "half-open: one probe");
        assert!(!b.allow(t + 5 * SEC), "the quota is one");
        b.record(false, t + 6 * SEC);
        assert_eq!(
            b.state(),
            State::Open {
                until: t + 11 * SEC
            },
            "a failed probe reopens"
        );
        assert!(b.allow(t + 11 * SEC));
        b.record(true, t + 11 * SEC);
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(t + 11 * SEC));
    }

    #[test]
    fn trips_on_failure_rate_within_a_window_only() {
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            ..BreakerConfig::default()
        });
        let t = Instant::ZERO;
        // 9 failures alternating with successes: 9/19 < 50 %, and under 20 calls anyway.
        for i in 0..19 {
            b.record(i % 2 == 1, t);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(false, t); // 10 of 20
        assert!(matches!(b.state(), State::Open { .. }));
        // A new window starts counting afresh.
        let mut c = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            ..BreakerConfig::default()
        });
        for i in 0..19 {
            c.record(i % 2 == 1, t);
        }
        c.record(false, t + 10 * SEC);
        assert_eq!(c.state(), State::Closed);
    }
}
