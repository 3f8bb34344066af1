//! One logical call across several endpoints: which endpoint each attempt goes to, when to retry,
//! when to hedge, which attempts to cancel once one wins. Pure: the driver sends, reads the
//! clock, supplies entropy, and reports outcomes; [`Call`] answers with [`Step`]s.
//!
//! Client-wide state (balancer, per-endpoint breakers, outlier ejection, the retry budget, calls in
//! flight per endpoint) lives in [`Endpoints`] and is shared by every call of a client.

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::time::Duration;

use super::balance::{Balancer, Endpoint, Strategy};
use super::breaker::{Breaker, BreakerConfig, State as BreakerState};
use super::eject::{EjectionConfig, Ejector};
use super::retry::{Class, Decision, GiveUpReason, HedgePolicy, RetryBudget, RetryPolicy};
use crate::time::Instant;

/// A client's view of its endpoints, shared by its calls.
///
/// The view of which endpoints may be picked is kept up to date as breakers, ejections and
/// retirements change (and as their timers run out), so a pick does not walk every endpoint.
#[derive(Clone, Debug)]
pub struct Endpoints {
    weights: Vec<u32>,
    in_flight: Vec<u32>,
    balancer: Balancer,
    breakers: Vec<Breaker>,
    ejector: Ejector,
    budget: RetryBudget,
    views: Vec<Endpoint>,
    retired: Vec<bool>,
    breaker_config: BreakerConfig,
    /// Not retired, breaker not open, not ejected.
    healthy: Members,
    /// Not retired, breaker not open (the panic threshold's fallback).
    usable: Members,
    /// Whether each endpoint was ejected when last looked at, and how many were.
    ejected: Vec<bool>,
    ejected_count: usize,
    /// When an endpoint's breaker or ejection runs out, to look at it again then.
    wakeups: BinaryHeap<Reverse<(Instant, usize)>>,
    scheduled: Vec<Option<Instant>>,
}

/// A set of endpoint indices with O(1) insert, remove and membership, listed densely.
#[derive(Clone, Debug, Default)]
struct Members {
    list: Vec<u32>,
    /// Position in `list` plus one, or 0 when absent.
    at: Vec<u32>,
}

impl Members {
    fn set(&mut self, i: usize, member: bool) {
        if self.at.len() <= i {
            self.at.resize(i + 1, 0);
        }
        match (self.at[i], member) {
            (0, true) => {
                self.list.push(i as u32);
                self.at[i] = self.list.len() as u32;
            }
            (p, false) if p > 0 => {
                let p = p as usize - 1;
                self.list.swap_remove(p);
                if let Some(&moved) = self.list.get(p) {
                    self.at[moved as usize] = p as u32 + 1;
                }
                self.at[i] = 0;
            }
            _ => {}
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.at.get(i).is_some_and(|&p| p > 0)
    }
}

impl Endpoints {
    /// Equal-weight endpoints with these identities (the consistent-hash ring is built from
    /// them), balanced, broken, ejected and budgeted as `policies` say.
    pub fn from_policies<I: AsRef<[u8]>>(ids: &[I], policies: &super::policies::Policies) -> Self {
        let mut eps = Endpoints::new(
            alloc::vec![1; ids.len()],
            policies.strategy,
            policies.breaker,
            policies.ejection,
            policies.retry_budget(),
        );
        eps.balancer.set_ring(ids);
        eps
    }

    /// Endpoints with these weights (their order is the index everything else uses).
    pub fn new(
        weights: Vec<u32>,
        strategy: Strategy,
        breaker: BreakerConfig,
        ejection: EjectionConfig,
        budget: RetryBudget,
    ) -> Self {
        let n = weights.len();
        let mut all = Members::default();
        (0..n).for_each(|i| all.set(i, true));
        Endpoints {
            in_flight: alloc::vec![0; n],
            balancer: Balancer::new(strategy),
            breakers: alloc::vec![Breaker::new(breaker); n],
            ejector: Ejector::new(ejection, n),
            budget,
            views: Vec::new(),
            retired: alloc::vec![false; n],
            breaker_config: breaker,
            weights,
            healthy: all.clone(),
            usable: all,
            ejected: alloc::vec![false; n],
            ejected_count: 0,
            wakeups: BinaryHeap::new(),
            scheduled: alloc::vec![None; n],
        }
    }

    /// Looks at endpoint `i` again at `now`: whether it may be picked, and when to look next.
    fn sync(&mut self, i: usize, now: Instant) {
        let ejected = self.ejector.is_ejected(i, now);
        if ejected != self.ejected[i] {
            self.ejected[i] = ejected;
            if ejected {
                self.ejected_count += 1;
            } else {
                self.ejected_count -= 1;
            }
        }
        let open_until = match self.breakers[i].state() {
            BreakerState::Open { until } if now < until => Some(until),
            _ => None,
        };
        let live = !self.retired[i] && open_until.is_none();
        self.usable.set(i, live);
        self.healthy.set(i, live && !ejected);
        let ejected_until = self.ejector.ejected_until(i).filter(|&t| now < t);
        let next = match (open_until, ejected_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next.is_some() && next != self.scheduled[i] {
            self.scheduled[i] = next;
            self.wakeups.extend(next.map(|t| Reverse((t, i))));
        }
    }

    /// Looks again at the endpoints whose breaker or ejection has run out by `now`.
    fn wake(&mut self, now: Instant) {
        while let Some(&Reverse((t, i))) = self.wakeups.peek() {
            if t > now {
                break;
            }
            self.wakeups.pop();
            if self.scheduled[i] == Some(t) {
                self.scheduled[i] = None;
            }
            self.sync(i, now);
        }
    }

    /// Adds an endpoint (a resolver found a new address); returns its index. Indices are never
    /// reused, so calls in flight keep pointing at the right endpoint.
    pub fn add(&mut self, weight: u32) -> usize {
        self.weights.push(weight);
        self.in_flight.push(0);
        self.breakers.push(Breaker::new(self.breaker_config));
        self.retired.push(false);
        self.ejected.push(false);
        self.scheduled.push(None);
        self.ejector.resize(self.weights.len());
        let i = self.weights.len() - 1;
        self.healthy.set(i, true);
        self.usable.set(i, true);
        i
    }

    /// Takes endpoint `i` out of balancing for good (its address went away); calls in flight to
    /// it still end normally.
    pub fn retire(&mut self, i: usize) {
        if let Some(r) = self.retired.get_mut(i) {
            *r = true;
            self.healthy.set(i, false);
            self.usable.set(i, false);
        }
    }

    /// Whether endpoint `i` was retired.
    pub fn is_retired(&self, i: usize) -> bool {
        self.retired.get(i).copied().unwrap_or(true)
    }

    /// How many endpoints (retired ones included: indices are stable).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The balancer (to give a consistent-hash ring its endpoint identities).
    pub fn balancer_mut(&mut self) -> &mut Balancer {
        &mut self.balancer
    }

    /// The retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The endpoints a health probe should check at `now`: not retired, and ejected or with a
    /// breaker that is not closed (probe-before-use, as the seed clients probe before retrying).
    pub fn needing_probe(&self, now: Instant) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| !self.retired[i])
            .filter(|&i| {
                self.ejector.is_ejected(i, now) || self.breakers[i].state() != BreakerState::Closed
            })
            .collect()
    }

    /// A health probe of endpoint `i` ended: healthy closes its breaker and ends its ejection;
    /// unhealthy changes nothing (the breaker and ejection clocks run on).
    pub fn probe_result(&mut self, i: usize, healthy: bool) {
        if healthy && i < self.len() {
            self.breakers[i].reset();
            self.ejector.reinstate(i);
            let live = !self.retired[i];
            self.usable.set(i, live);
            self.healthy.set(i, live);
            if self.ejected[i] {
                self.ejected[i] = false;
                self.ejected_count -= 1;
            }
        }
    }

    /// Endpoint `i`'s breaker state.
    pub fn breaker(&self, i: usize) -> BreakerState {
        self.breakers[i].state()
    }

    /// Whether endpoint `i` is ejected at `now`.
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.ejector.is_ejected(i, now)
    }

    /// Calls in flight to endpoint `i`.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }

    /// The ejector's interval tick (success-rate evaluation); call it periodically.
    pub fn tick(&mut self, now: Instant) -> Vec<usize> {
        let ejected = self.ejector.tick(now);
        ejected.iter().for_each(|&i| self.sync(i, now));
        ejected
    }

    /// Picks an endpoint that is not `exclude`d (when any other is available) whose breaker lets a
    /// call through, and counts the call in flight. No allocation once warm; O(1) for round
    /// robin, random and power of two choices, O(log n) on the hash ring.
    fn pick(
        &mut self,
        now: Instant,
        key: Option<u64>,
        exclude: &dyn Fn(usize) -> bool,
        entropy: u64,
    ) -> Option<usize> {
        self.wake(now);
        let n = self.len();
        // Below the panic threshold of healthy endpoints, ejection is ignored.
        let panic = (n - self.ejected_count) * 100 < n * self.ejector.panic_threshold() as usize;
        let members = if panic { &self.usable } else { &self.healthy };
        // Prefer endpoints this call has not tried; fall back to any.
        for avoid in [true, false] {
            let breakers = &mut self.breakers;
            let mut accept = |i: usize| !(avoid && exclude(i)) && breakers[i].allow(now);
            let picked = if self.balancer.picks_among() {
                let in_flight = |i: usize| self.in_flight[i];
                let is_member = |i: usize| members.contains(i);
                let list = &members.list;
                self.balancer
                    .pick_among(list, is_member, in_flight, key, entropy, &mut accept)
            } else {
                self.views.clear();
                self.views.extend((0..n).map(|i| Endpoint {
                    weight: self.weights[i],
                    in_flight: self.in_flight[i],
                    available: members.contains(i) && !(avoid && exclude(i)),
                }));
                let mut picked = None;
                // A half-open breaker may still refuse (probe quota): skip it and pick again.
                for _ in 0..n {
                    let Some(i) = self.balancer.pick(&self.views, key, entropy) else {
                        break;
                    };
                    if accept(i) {
                        picked = Some(i);
                        break;
                    }
                    self.views[i].available = false;
                }
                picked
            };
            if let Some(i) = picked {
                self.in_flight[i] += 1;
                return Some(i);
            }
        }
        None
    }

    /// An attempt on endpoint `i` never left this process: the endpoint's health pays (it may be
    /// unreachable), the retry budget does not (the server saw no load).
    fn ended_unsent(&mut self, i: usize, now: Instant) {
        self.in_flight[i] = self.in_flight[i].saturating_sub(1);
        self.breakers[i].record(false, now);
        self.ejector.record(i, false, now);
        self.sync(i, now);
    }

    /// An attempt on endpoint `i` ended as `class` (`None`: cancelled, no verdict).
    fn ended(&mut self, i: usize, class: Option<Class>, now: Instant) {
        self.in_flight[i] = self.in_flight[i].saturating_sub(1);
        let Some(class) = class else { return };
        let success = class == Class::Success;
        self.breakers[i].record(success, now);
        self.ejector.record(i, success, now);
        self.sync(i, now);
        self.budget.record(class);
    }
}

/// What a call wants from its options.
#[derive(Clone, Copy, Debug)]
pub struct CallOptions<'a> {
    /// The whole call's time, all attempts included.
    pub timeout: Duration,
    /// Retries after a retryable outcome.
    pub retry: RetryPolicy<'a>,
    /// Backup attempts while the first ones are unanswered.
    pub hedge: Option<HedgePolicy>,
    /// The call's hash key (consistent hashing).
    pub key: Option<u64>,
    /// Each attempt's own limit within the call's timeout (`None`: the call's deadline).
    pub per_attempt: Option<Duration>,
}

/// At most this many transparent requeues per call (attempts that never left this process and
/// are sent again without counting as an attempt).
pub const MAX_REQUEUES: u32 = 3;

/// What the driver must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send attempt number `attempt` (1-based) to endpoint `endpoint`, to end by `deadline`
    /// (the call's deadline, or sooner with a per-attempt timeout).
    Send {
        /// Why this attempt is sent (for metrics).
        kind: AttemptKind,
        /// The attempt's number.
        attempt: u32,
        /// Which endpoint.
        endpoint: usize,
        /// The call's deadline (an attempt may not outlive it).
        deadline: Instant,
    },
    /// Cancel attempt `attempt` (another one won, or the call is over).
    Cancel {
        /// The attempt's number.
        attempt: u32,
    },
    /// The call is over: report the outcome of attempt `attempt`; `None` means no attempt
    /// answered (no endpoint was available, or the deadline passed first).
    Finish {
        /// The attempt whose outcome is the call's.
        attempt: Option<u32>,
    },
}

/// Why an attempt is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptKind {
    /// The call's first attempt.
    First,
    /// After the earlier attempts ended (a retry or a transparent requeue).
    Retry,
    /// While an earlier attempt is still out (a hedge).
    Hedge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attempt {
    number: u32,
    endpoint: usize,
    live: bool,
}

/// One logical call's state.
#[derive(Clone, Debug)]
pub struct Call {
    deadline: Instant,
    attempts: Vec<Attempt>,
    retry_at: Option<Instant>,
    hedge_at: Option<Instant>,
    finished: bool,
    last_class: Option<(u32, Class)>,
    budget_refused: bool,
    requeues: u32,
}

impl Call {
    /// Starts a call at `now`: usually one [`Step::Send`] (or a [`Step::Finish`] with no attempt
    /// when no endpoint is available).
    pub fn start(
        eps: &mut Endpoints,
        opts: &CallOptions<'_>,
        now: Instant,
        entropy: u64,
        out: &mut Vec<Step>,
    ) -> Call {
        let mut call = Call {
            deadline: now + opts.timeout,
            attempts: Vec::new(),
            retry_at: None,
            hedge_at: None,
            finished: false,
            last_class: None,
            budget_refused: false,
            requeues: 0,
        };
        eps.budget.on_request(now);
        call.send(eps, opts, now, entropy, out);
        call
    }

    /// Whether the call is over.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Attempts sent so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.len() as u32
    }

    /// The error a finished call reports when no attempt answered ([`Step::Finish`] with
    /// `None`): a timeout that may have reached a server if anything was sent, else "no endpoint
    /// available".
    pub fn unanswered_error(&self) -> crate::CallError {
        if self.attempts.is_empty() {
            crate::CallError::Unavailable {
                retry_in: Duration::ZERO,
            }
        } else {
            crate::CallError::Timeout { written: true }
        }
    }

    /// Whether the retry budget refused a retry or hedge this call wanted (for metrics).
    pub fn budget_refused(&self) -> bool {
        self.budget_refused
    }

    /// Attempts sent and not yet ended (more than one while a hedge is out).
    pub fn in_flight(&self) -> u32 {
        self.live() as u32
    }

    /// The endpoints tried, in order.
    pub fn endpoints(&self) -> impl Iterator<Item = usize> + '_ {
        self.attempts.iter().map(|a| a.endpoint)
    }

    /// When [`Call::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        [self.retry_at, self.hedge_at, Some(self.deadline)]
            .into_iter()
            .flatten()
            .min()
    }

    fn live(&self) -> usize {
        self.attempts.iter().filter(|a| a.live).count()
    }

    fn send(
        &mut self,
        eps: &mut Endpoints,
        opts: &CallOptions<'_>,
        now: Instant,
        entropy: u64,
        out: &mut Vec<Step>,
    ) -> bool {
        let tried = |i: usize| self.attempts.iter().any(|a| a.endpoint == i);
        let Some(endpoint) = eps.pick(now, opts.key, &tried, entropy) else {
            if self.live() == 0 {
                self.finish(eps, now, out);
            }
            return false;
        };
        let number = self.attempts.len() as u32 + 1;
        let kind = match (number, self.live()) {
            (1, _) => AttemptKind::First,
            (_, 0) => AttemptKind::Retry,
            _ => AttemptKind::Hedge,
        };
        if kind != AttemptKind::First {
            eps.budget.on_retry(now);
        }
        self.attempts.push(Attempt {
            number,
            endpoint,
            live: true,
        });
        let deadline = match opts.per_attempt {
            Some(limit) => self.deadline.min(now + limit),
            None => self.deadline,
        };
        out.push(Step::Send {
            kind,
            attempt: number,
            endpoint,
            deadline,
        });
        self.hedge_at = opts
            .hedge
            .and_then(|h| h.next_hedge(number, now, &eps.budget, self.deadline));
        true
    }

    fn finish(&mut self, eps: &mut Endpoints, now: Instant, out: &mut Vec<Step>) {
        if self.finished {
            return;
        }
        self.finished = true;
        for a in &mut self.attempts {
            if a.live {
                a.live = false;
                eps.ended(a.endpoint, None, now);
                out.push(Step::Cancel { attempt: a.number });
            }
        }
        out.push(Step::Finish {
            attempt: self.last_class.map(|(n, _)| n),
        });
        self.retry_at = None;
        self.hedge_at = None;
    }

    /// Attempt `attempt` ended as `class` at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_outcome(
        &mut self,
        eps: &mut Endpoints,
        opts: &CallOptions<'_>,
        attempt: u32,
        class: Class,
        now: Instant,
        entropy: u64,
        out: &mut Vec<Step>,
    ) {
        let Some(a) = self
            .attempts
            .iter_mut()
            .find(|a| a.number == attempt && a.live)
        else {
            return; // cancelled or already reported
        };
        a.live = false;
        let endpoint = a.endpoint;
        eps.ended(endpoint, Some(class), now);
        if self.finished {
            return;
        }
        self.last_class = Some((attempt, class));
        if class != Class::Retryable {
            return self.finish(eps, now, out);
        }
        if self.live() > 0 {
            // A hedge is still out: it may yet succeed.
            return;
        }
        match opts.retry.decide(
            self.attempts.len() as u32 - self.requeues,
            class,
            &eps.budget,
            now,
            self.deadline,
            entropy,
        ) {
            Decision::RetryAfter(delay) => {
                self.hedge_at = None;
                self.retry_at = Some(now + delay);
                if delay.is_zero() {
                    self.handle_timeout(eps, opts, now, entropy, out);
                }
            }
            Decision::GiveUp(reason) => {
                self.budget_refused |= reason == GiveUpReason::BudgetExhausted;
                self.finish(eps, now, out)
            }
        }
    }

    /// Attempt `attempt` failed without ever leaving this process (never written, or no
    /// connection could be made) at `now`: it is sent again at once, to another endpoint if one is
    /// available, without using an attempt — a transparent requeue, paid from the retry budget and
    /// at most [`MAX_REQUEUES`] times. Past that it is an ordinary retryable outcome.
    pub fn handle_unsent(
        &mut self,
        eps: &mut Endpoints,
        opts: &CallOptions<'_>,
        attempt: u32,
        now: Instant,
        entropy: u64,
        out: &mut Vec<Step>,
    ) {
        let requeue = self.requeues < MAX_REQUEUES
            && now < self.deadline
            && eps.budget.allows_retry()
            && self.attempts.iter().any(|a| a.number == attempt && a.live);
        if !requeue || self.finished {
            return self.handle_outcome(eps, opts, attempt, Class::Retryable, now, entropy, out);
        }
        if let Some(a) = self.attempts.iter_mut().find(|a| a.number == attempt) {
            a.live = false;
            let endpoint = a.endpoint;
            eps.ended_unsent(endpoint, now);
        }
        self.last_class = Some((attempt, Class::Retryable));
        self.requeues += 1;
        self.send(eps, opts, now, entropy, out);
    }

    /// The clock reached `now` (at or after [`Call::poll_timeout`]).
    pub fn handle_timeout(
        &mut self,
        eps: &mut Endpoints,
        opts: &CallOptions<'_>,
        now: Instant,
        entropy: u64,
        out: &mut Vec<Step>,
    ) {
        if self.finished {
            return;
        }
        if now >= self.deadline {
            // Attempts still out are cancelled; the call's outcome is the last one reported, or
            // none (a timeout) if nothing answered.
            return self.finish(eps, now, out);
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.send(eps, opts, now, entropy, out);
        } else if self.hedge_at.is_some_and(|t| now >= t) {
            self.hedge_at = None;
            let limit = opts.hedge.map_or(1, |h| h.max_attempts);
            if self.attempts.len() < limit as usize {
                if eps.budget.allows_retry() {
                    self.send(eps, opts, now, entropy, out);
                } else {
                    self.budget_refused = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::SplitMix64;

    /// After any sequence of outcomes, ticks, probes, retirements and additions, the incremental
    /// view is what a walk over every endpoint would say.
    #[test]
    fn the_incremental_view_matches_a_full_walk() {
        let breaker = BreakerConfig::default();
        let ejection = EjectionConfig {
            max_ejection_percent: 50,
            ..EjectionConfig::default()
        };
        for strategy in [Strategy::RoundRobin, Strategy::PowerOfTwoChoices] {
            let mut rng = SplitMix64::new(3);
            let mut eps = Endpoints::new(
                alloc::vec![1; 8],
                strategy,
                breaker,
                ejection,
                RetryBudget::default(),
            );
            let mut now = Instant::ZERO;
            for step in 0..20_000 {
                now = now + Duration::from_millis(rng.below(400));
                let i = rng.below(eps.len() as u64) as usize;
                match rng.below(100) {
                    0 => eps.retire(i),
                    1 => {
                        eps.add(1);
                    }
                    2 => {
                        eps.tick(now);
                    }
                    3 => eps.probe_result(i, true),
                    _ => {
                        let excluded = |e: usize| e == i;
                        if let Some(p) = eps.pick(now, None, &excluded, rng.next_u64()) {
                            let class = if p % 3 == 0 || rng.below(4) == 0 {
                                Class::Retryable
                            } else {
                                Class::Success
                            };
                            eps.ended(p, Some(class), now);
                        }
                    }
                }
                eps.wake(now);
                for e in 0..eps.len() {
                    let open =
                        matches!(eps.breaker(e), BreakerState::Open { until } if now < until);
                    let live = !eps.is_retired(e) && !open;
                    assert_eq!(eps.usable.contains(e), live, "step {step}, endpoint {e}");
                    let healthy = live && !eps.is_ejected(e, now);
                    assert_eq!(
                        eps.healthy.contains(e),
                        healthy,
                        "step {step}, endpoint {e}"
                    );
                }
                let ejected = (0..eps.len()).filter(|&e| eps.is_ejected(e, now)).count();
                assert_eq!(eps.ejected_count, ejected, "step {step}");
            }
        }
    }
}
