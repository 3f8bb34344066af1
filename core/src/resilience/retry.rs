//! Which outcomes are worth retrying, whether a retry is allowed now, and how long to wait.
//!
//! Follows gRPC's retry design (A6): a per-call policy (attempts, backoff, deadline) and a
//! per-client token-bucket budget that retries and hedges draw from, so that a failing backend
//! sees retries shrink instead of multiply.

use core::time::Duration;

use crate::codec::codes;
use crate::codec::command::Command;
use crate::conn::call::CallError;
use crate::resilience::backoff::Backoff;
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

/// How retries and hedges are rationed across a client's calls.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum BudgetKind {
    /// gRPC A6 retry throttling: each failure takes a token, each success gives back
    /// `token_ratio`; retries are allowed while more than half of `max_tokens` remain.
    TokenBucket {
        /// Bucket size (gRPC default 10).
        max_tokens: u32,
        /// Tokens a success gives back (gRPC default 0.1).
        token_ratio: f64,
    },
    /// Finagle's `RetryBudget`: retries may be at most `percent` of the requests of the last
    /// `ttl`, plus `min_retries_per_sec` × `ttl` whatever the traffic.
    Percent {
        /// Retries per request allowed (Finagle default 0.2).
        percent: f64,
        /// A floor for quiet clients (Finagle default 10 per second).
        min_retries_per_sec: u32,
        /// The window (Finagle default 10 s).
        ttl: Duration,
    },
}

/// A client's retry budget, shared by its retries and hedges (and, for
/// [`BudgetKind::Percent`], fed by its requests).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Tokens {
        max_tokens: f64,
        token_ratio: f64,
        tokens: f64,
    },
    Percent {
        percent: f64,
        reserve: f64,
        slot_nanos: u64,
        slots: [WindowSlot; WINDOW_SLOTS],
        now: Instant,
    },
}

/// The percent budget's window is this many slots of `ttl / WINDOW_SLOTS` each.
const WINDOW_SLOTS: usize = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct WindowSlot {
    epoch: u64,
    deposits: u32,
    withdrawals: u32,
}

impl RetryBudget {
    /// A full gRPC-style token bucket. gRPC's defaults are `max_tokens` 10, `token_ratio` 0.1.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Self {
        let max_tokens = f64::from(max_tokens.max(1));
        RetryBudget {
            kind: Kind::Tokens {
                max_tokens,
                token_ratio: token_ratio.clamp(0.0, max_tokens),
                tokens: max_tokens,
            },
        }
    }

    /// A Finagle-style percentage budget (see [`BudgetKind::Percent`]).
    pub fn percent(percent: f64, min_retries_per_sec: u32, ttl: Duration) -> Self {
        let ttl_nanos = u64::try_from(ttl.as_nanos())
            .unwrap_or(u64::MAX)
            .max(WINDOW_SLOTS as u64);
        RetryBudget {
            kind: Kind::Percent {
                percent: percent.max(0.0),
                reserve: f64::from(min_retries_per_sec) * ttl.as_secs_f64(),
                slot_nanos: ttl_nanos / WINDOW_SLOTS as u64,
                slots: [WindowSlot::default(); WINDOW_SLOTS],
                now: Instant::ZERO,
            },
        }
    }

    /// The budget `kind` describes, full.
    pub fn from_kind(kind: BudgetKind) -> Self {
        match kind {
            BudgetKind::TokenBucket {
                max_tokens,
                token_ratio,
            } => RetryBudget::new(max_tokens, token_ratio),
            BudgetKind::Percent {
                percent,
                min_retries_per_sec,
                ttl,
            } => RetryBudget::percent(percent, min_retries_per_sec, ttl),
        }
    }

    /// Records an outcome (of a first attempt, retry or hedge alike).
    pub fn record(&mut self, class: Class) {
        if let Kind::Tokens {
            max_tokens,
            token_ratio,
            tokens,
        } = &mut self.kind
        {
            match class {
                Class::Success => *tokens = (*tokens + *token_ratio).min(*max_tokens),
                Class::Retryable | Class::Fatal => *tokens = (*tokens - 1.0).max(0.0),
            }
        }
    }

    fn slot(&mut self, now: Instant) -> Option<&mut WindowSlot> {
        let Kind::Percent {
            slot_nanos,
            slots,
            now: last,
            ..
        } = &mut self.kind
        else {
            return None;
        };
        *last = (*last).max(now);
        let epoch = now.as_nanos() / *slot_nanos;
        let slot = &mut slots[(epoch % WINDOW_SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = WindowSlot {
                epoch,
                ..WindowSlot::default()
            };
        }
        Some(slot)
    }

    /// A call's first attempt was sent at `now` (feeds a percent budget).
    pub fn on_request(&mut self, now: Instant) {
        if let Some(slot) = self.slot(now) {
            slot.deposits += 1;
        }
    }

    /// A retry or hedge was sent at `now` (spends from a percent budget).
    pub fn on_retry(&mut self, now: Instant) {
        if let Some(slot) = self.slot(now) {
            slot.withdrawals += 1;
        }
    }

    /// Whether a retry (or hedge) may be sent now (as of the latest event, for a percent
    /// budget).
    pub fn allows_retry(&self) -> bool {
        match self.kind {
            Kind::Tokens {
                max_tokens, tokens, ..
            } => tokens > max_tokens / 2.0,
            Kind::Percent { .. } => self.tokens() >= 1.0,
        }
    }

    /// What is left: tokens (bucket), or retries allowed now (percent).
    pub fn tokens(&self) -> f64 {
        match self.kind {
            Kind::Tokens { tokens, .. } => tokens,
            Kind::Percent {
                percent,
                reserve,
                slot_nanos,
                slots,
                now,
            } => {
                let current = now.as_nanos() / slot_nanos;
                let live = slots
                    .iter()
                    .filter(|s| s.epoch + (WINDOW_SLOTS as u64) > current && s.epoch <= current);
                let (deposits, withdrawals) = live.fold((0.0, 0.0), |(d, w), s| {
                    (d + f64::from(s.deposits), w + f64::from(s.withdrawals))
                });
                reserve + percent * deposits - withdrawals
            }
        }
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
    use crate::resilience::backoff::Jitter;

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
    fn percent_budget_allows_a_share_of_recent_requests() {
        let sec = Duration::from_secs(1);
        // 20 % of requests, no floor, a 10 s window.
        let mut b = RetryBudget::percent(0.2, 0, 10 * sec);
        let t = Instant::ZERO + sec;
        assert!(!b.allows_retry(), "no traffic, no floor: nothing to spend");
        for _ in 0..10 {
            b.on_request(t);
        }
        assert!(b.allows_retry(), "2 retries earned");
        b.on_retry(t);
        b.on_retry(t);
        assert!(!b.allows_retry(), "spent");
        // The window slides: after 10 s the old traffic and spending are forgotten.
        b.on_request(t + 11 * sec);
        assert!((b.tokens() - 0.2).abs() < 1e-9, "{}", b.tokens());
        // A floor lets a quiet client retry anyway.
        let mut floor = RetryBudget::percent(0.2, 1, 10 * sec);
        floor.on_request(t);
        assert!(floor.allows_retry());
        for _ in 0..10 {
            floor.on_retry(t);
        }
        assert!(
            !floor.allows_retry(),
            "10 s x 1/s + 0.2 = 10.2 < 10 spent + 1"
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
