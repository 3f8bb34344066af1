//! Which outcomes are worth retrying, whether a retry is allowed now, and how long to wait.
//!
//! Follows gRPC's retry design (A6): a per-call policy (attempts, backoff, deadline) and a
//! per-client token-bucket budget that retries and hedges draw from, so that a failing backend
//! sees retries shrink instead of multiply.

use core::time::Duration;

use crate::backoff::Backoff;
use crate::call::CallError;
use crate::codes;
use crate::command::Command;
use crate::time::Instant;

/// What an outcome means for retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A response that is not an error.
    Success,
    /// Worth retrying: the request never left (safe anywhere), or the server said it was
    /// temporarily unable (busy, flow control, unavailable, going away), or the transport failed.
    Retryable,
    /// Retrying will not help (the server refused the request itself) or could duplicate a
    /// request that may have been acted on and the policy forbids that.
    Fatal,
}

/// Which response codes count as retryable ("5xx") and which as success; everything else is
/// fatal ("4xx"). Users may replace either set per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classifier<'a> {
    /// Response codes that mean "try again later" (default: SYSTEM_BUSY, FLOW_CONTROL,
    /// SERVICE_NOT_AVAILABLE, GO_AWAY, SYSTEM_ERROR).
    pub retryable_codes: &'a [i32],
    /// Response codes that are a success (default: SUCCESS).
    pub success_codes: &'a [i32],
    /// Whether a request that may have reached the server (timeout or connection lost after
    /// writing) may be retried. Only for idempotent requests.
    pub retry_possibly_delivered: bool,
}

/// The default retryable response codes.
pub const DEFAULT_RETRYABLE_CODES: [i32; 5] = [
    codes::SYSTEM_BUSY,
    codes::FLOW_CONTROL,
    codes::SERVICE_NOT_AVAILABLE,
    codes::GO_AWAY,
    codes::SYSTEM_ERROR,
];

impl Default for Classifier<'static> {
    fn default() -> Self {
        Classifier {
            retryable_codes: &DEFAULT_RETRYABLE_CODES,
            success_codes: &[codes::SUCCESS],
            retry_possibly_delivered: false,
        }
    }
}

impl Classifier<'_> {
    /// Classifies a call's outcome.
    pub fn classify(&self, outcome: &Result<Command, CallError>) -> Class {
        match outcome {
            Ok(response) if self.success_codes.contains(&response.code) => Class::Success,
            Ok(response) if self.retryable_codes.contains(&response.code) => Class::Retryable,
            Ok(_) => Class::Fatal,
            Err(CallError::Encode(_) | CallError::Closed { .. }) => Class::Fatal,
            Err(e) if !e.may_have_reached_peer() => Class::Retryable,
            Err(_) if self.retry_possibly_delivered => Class::Retryable,
            Err(_) => Class::Fatal,
        }
    }
}

/// gRPC A6 retry throttling: a token bucket shared by a client's retries and hedges.
///
/// Each failure takes one token, each success adds `token_ratio`; retries are allowed while more
/// than half the tokens remain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    max_tokens: f64,
    token_ratio: f64,
    tokens: f64,
}

impl RetryBudget {
    /// A full bucket. gRPC's defaults are `max_tokens` 10, `token_ratio` 0.1.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Self {
        let max_tokens = f64::from(max_tokens.max(1));
        RetryBudget {
            max_tokens,
            token_ratio: token_ratio.clamp(0.0, max_tokens),
            tokens: max_tokens,
        }
    }

    /// Records an outcome (of a first attempt, retry or hedge alike).
    pub fn record(&mut self, class: Class) {
        match class {
            Class::Success => self.tokens = (self.tokens + self.token_ratio).min(self.max_tokens),
            Class::Retryable | Class::Fatal => self.tokens = (self.tokens - 1.0).max(0.0),
        }
    }

    /// Whether a retry (or hedge) may be sent now.
    pub fn allows_retry(&self) -> bool {
        self.tokens > self.max_tokens / 2.0
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(10, 0.1)
    }
}

/// How long to wait before each retry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule<'a> {
    /// Exponential backoff with jitter.
    Exponential(Backoff),
    /// A fixed list of delays (the last one repeats), like RocketMQ clients' retry delay lists.
    Fixed(&'a [Duration]),
}

/// A per-call retry policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy<'a> {
    /// Attempts in all, the first one included (1 = no retries).
    pub max_attempts: u32,
    /// Delays between attempts.
    pub schedule: Schedule<'a>,
}

/// Why a policy is refused when a client is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` is 0.
    NoAttempts,
    /// A fixed schedule with no delays.
    EmptySchedule,
    /// Backoff with `max` below `initial`.
    BackoffMaxBelowInitial,
}

/// What to do after an attempt that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the next attempt after this delay.
    RetryAfter(Duration),
    /// Stop and report the last outcome.
    GiveUp(GiveUpReason),
}

/// Why no further attempt is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The outcome is not retryable.
    NotRetryable,
    /// `max_attempts` reached.
    AttemptsExhausted,
    /// The retry budget is spent.
    BudgetExhausted,
    /// The call's overall deadline would pass before the next attempt could start.
    DeadlineReached,
}

impl RetryPolicy<'_> {
    /// Checks the policy.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::NoAttempts);
        }
        match self.schedule {
            Schedule::Fixed([]) => Err(PolicyError::EmptySchedule),
            Schedule::Exponential(b) if b.max < b.initial => {
                Err(PolicyError::BackoffMaxBelowInitial)
            }
            _ => Ok(()),
        }
    }

    /// The decision after attempt `attempt` (1-based) ended as `class` at `now`, for a call that
    /// must end by `deadline`. `entropy` is any 64 random bits (for jitter).
    pub fn decide(
        &self,
        attempt: u32,
        class: Class,
        budget: &RetryBudget,
        now: Instant,
        deadline: Instant,
        entropy: u64,
    ) -> Decision {
        if class != Class::Retryable {
            return Decision::GiveUp(GiveUpReason::NotRetryable);
        }
        if attempt >= self.max_attempts {
            return Decision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        if !budget.allows_retry() {
            return Decision::GiveUp(GiveUpReason::BudgetExhausted);
        }
        let delay = match self.schedule {
            Schedule::Exponential(b) => b.delay(attempt - 1, entropy),
            Schedule::Fixed(list) => {
                let i = (attempt as usize - 1).min(list.len().saturating_sub(1));
                list.get(i).copied().unwrap_or_default()
            }
        };
        if now + delay >= deadline {
            return Decision::GiveUp(GiveUpReason::DeadlineReached);
        }
        Decision::RetryAfter(delay)
    }
}

/// Hedging (gRPC A6 "hedging policy", Finagle "backup requests"): when an attempt has had no
/// answer after `delay`, send another to a different endpoint; the first success wins and the
/// others are cancelled. Hedges draw from the same [`RetryBudget`] as retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HedgePolicy {
    /// Wait this long for an answer before sending the next attempt.
    pub delay: Duration,
    /// Attempts in all, the first one included (at least 2 for hedging to happen).
    pub max_attempts: u32,
}

/// Why a hedging policy is refused when a client is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HedgeError {
    /// Fewer than 2 attempts: nothing would ever be hedged.
    TooFewAttempts,
    /// The delay is not shorter than the call's timeout: a hedge could never be sent.
    DelayNotBelowTimeout,
}

impl HedgePolicy {
    /// Checks the policy against the calls' timeout.
    pub fn validate(&self, call_timeout: Duration) -> Result<(), HedgeError> {
        if self.max_attempts < 2 {
            return Err(HedgeError::TooFewAttempts);
        }
        if self.delay >= call_timeout {
            return Err(HedgeError::DelayNotBelowTimeout);
        }
        Ok(())
    }

    /// When the next hedge is due for a call whose last attempt went out at `last_sent`, with
    /// `sent` attempts so far and none answered; `None` when no more may be sent (attempts
    /// exhausted, budget spent, or the call's deadline would come first).
    pub fn next_hedge(
        &self,
        sent: u32,
        last_sent: Instant,
        budget: &RetryBudget,
        deadline: Instant,
    ) -> Option<Instant> {
        if sent >= self.max_attempts || !budget.allows_retry() {
            return None;
        }
        let at = last_sent + self.delay;
        (at < deadline).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn classification_follows_codes_and_delivery() {
        let c = Classifier::default();
        let ok = Ok(Command::request(1).response(codes::SUCCESS));
        let busy = Ok(Command::request(1).response(codes::SYSTEM_BUSY));
        let refused = Ok(Command::request(1).response(codes::NO_PERMISSION));
        assert_eq!(c.classify(&ok), Class::Success);
        assert_eq!(c.classify(&busy), Class::Retryable);
        assert_eq!(c.classify(&refused), Class::Fatal);
        let unwritten = Err(CallError::ConnectionLost { written: false });
        let written = Err(CallError::Timeout { written: true });
        assert_eq!(c.classify(&unwritten), Class::Retryable);
        assert_eq!(c.classify(&written), Class::Fatal);
        let idempotent = Classifier {
            retry_possibly_delivered: true,
            ..c
        };
        assert_eq!(idempotent.classify(&written), Class::Retryable);
        // A user's own set, like a seed client's "408 is retryable".
        let custom = Classifier {
            retryable_codes: &[408],
            ..c
        };
        assert_eq!(
            custom.classify(&Ok(Command::request(1).response(408))),
            Class::Retryable
        );
        assert_eq!(custom.classify(&busy), Class::Fatal);
    }

    #[test]
    fn budget_stops_retries_when_failures_dominate_and_recovers() {
        let mut b = RetryBudget::default();
        assert!(b.allows_retry());
        for _ in 0..5 {
            b.record(Class::Retryable);
        }
        assert!(!b.allows_retry(), "10 - 5 = 5 is not more than half");
        b.record(Class::Success);
        assert!(b.allows_retry(), "5.1 tokens");
        b.record(Class::Fatal);
        assert!(!b.allows_retry());
        for _ in 0..100 {
            b.record(Class::Success);
        }
        assert_eq!(b.tokens(), 10.0, "capped");
    }

    #[test]
    fn hedges_are_scheduled_within_attempts_budget_and_deadline() {
        let hedge = HedgePolicy {
            delay: 50 * MS,
            max_attempts: 3,
        };
        assert_eq!(hedge.validate(Duration::from_secs(1)), Ok(()));
        assert_eq!(
            hedge.validate(50 * MS),
            Err(HedgeError::DelayNotBelowTimeout)
        );
        assert_eq!(
            HedgePolicy {
                max_attempts: 1,
                ..hedge
            }
            .validate(Duration::from_secs(1)),
            Err(HedgeError::TooFewAttempts)
        );
        let budget = RetryBudget::default();
        let t0 = Instant::ZERO;
        let deadline = t0 + Duration::from_secs(1);
        assert_eq!(
            hedge.next_hedge(1, t0, &budget, deadline),
            Some(t0 + 50 * MS)
        );
        assert_eq!(
            hedge.next_hedge(2, t0 + 50 * MS, &budget, deadline),
            Some(t0 + 100 * MS)
        );
        assert_eq!(hedge.next_hedge(3, t0 + 100 * MS, &budget, deadline), None);
        assert_eq!(
            hedge.next_hedge(1, t0 + 960 * MS, &budget, deadline),
            None,
            "past the deadline"
        );
        let mut spent = RetryBudget::default();
        for _ in 0..5 {
            spent.record(Class::Retryable);
        }
        assert_eq!(
            hedge.next_hedge(1, t0, &spent, deadline),
            None,
            "budget spent"
        );
    }

    #[test]
    fn policy_decisions() {
        let policy = RetryPolicy {
            max_attempts: 3,
            schedule: Schedule::Exponential(Backoff {
                initial: 10 * MS,
                multiplier: 2.0,
                max: 100 * MS,
                jitter: Jitter::None,
            }),
        };
        assert_eq!(policy.validate(), Ok(()));
        let budget = RetryBudget::default();
        let t0 = Instant::ZERO;
        let far = t0 + Duration::from_secs(10);
        let d = |attempt, class| policy.decide(attempt, class, &budget, t0, far, 0);
        assert_eq!(d(1, Class::Retryable), Decision::RetryAfter(10 * MS));
        assert_eq!(d(2, Class::Retryable), Decision::RetryAfter(20 * MS));
        assert_eq!(
            d(3, Class::Retryable),
            Decision::GiveUp(GiveUpReason::AttemptsExhausted)
        );
        assert_eq!(
            d(1, Class::Fatal),
            Decision::GiveUp(GiveUpReason::NotRetryable)
        );
        assert_eq!(
            policy.decide(1, Class::Retryable, &budget, t0, t0 + 5 * MS, 0),
            Decision::GiveUp(GiveUpReason::DeadlineReached)
        );
        let mut empty = RetryBudget::default();
        for _ in 0..10 {
            empty.record(Class::Fatal);
        }
        assert_eq!(
            policy.decide(1, Class::Retryable, &empty, t0, far, 0),
            Decision::GiveUp(GiveUpReason::BudgetExhausted)
        );
        let delays = [MS, 5 * MS];
        let fixed = RetryPolicy {
            max_attempts: 5,
            schedule: Schedule::Fixed(&delays),
        };
        let f = |attempt| fixed.decide(attempt, Class::Retryable, &budget, t0, far, 0);
        assert_eq!(
            (f(1), f(2), f(4)),
            (
                Decision::RetryAfter(MS),
                Decision::RetryAfter(5 * MS),
                Decision::RetryAfter(5 * MS)
            )
        );
        assert_eq!(
            RetryPolicy {
                max_attempts: 0,
                ..policy
            }
            .validate(),
            Err(PolicyError::NoAttempts)
        );
        assert_eq!(
            RetryPolicy {
                schedule: Schedule::Fixed(&[]),
                ..fixed
            }
            .validate(),
            Err(PolicyError::EmptySchedule)
        );
    }
}
