//! A multi-endpoint client's whole call, decided here and run by a driver's small loop.
//!
//! [`ClusterState`] is what a client's calls share: the endpoints' balancer, breakers, ejection
//! and budget ([`Endpoints`]), the addresses a resolver gave, per-endpoint [`Counts`], the
//! resolver's schedule and the random bits for every choice. [`ClusterCall`] is one call: it
//! classifies outcomes, chooses between a transparent requeue and a retry, hedges (after a
//! latency percentile once there are enough samples), keeps the deadline and the budget, runs
//! the hooks and the fallback. A driver's loop is:
//!
//! 1. [`ClusterCall::poll`] until it returns `None`, doing what each [`Action`] says (send an
//!    attempt with the given timeout, cancel one, or stop: [`Action::Done`]);
//! 2. wait for an attempt's outcome or until [`ClusterCall::wake_at`];
//! 3. report it with [`ClusterCall::on_outcome`] or [`ClusterCall::on_timeout`], and go to 1.
//!
//! Once done, [`ClusterCall::result`] is the call's answer. Oneway requests, health probes and
//! resolver refreshes are methods of [`ClusterState`]. The core never reads a clock, never
//! sleeps, never resolves a name: every `now` is the driver's, and DNS is a driver's
//! [`Resolve`](super::resolve::Resolve).

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use super::backoff::Backoff;
use super::breaker::State as BreakerState;
use super::call::{AttemptKind, Call, CallOptions, Endpoints, Step};
use super::policies::{number, ConfigError, Policies};
use super::resolve::diff;
use super::retry::{
    Class, Classifier, HedgePolicy, RetryPolicy, Schedule, DEFAULT_RETRYABLE_CODES,
};
use crate::codec::command::Command;
use crate::codec::encoded::Encoded;
use crate::codec::frame::Codec;
use crate::conn::call::{CallError, Hook};
use crate::conn::connection::Config;
use crate::rand::SplitMix64;
use crate::time::Instant;

/// Attempts, retries, hedges and outcomes, per endpoint or in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Attempts sent.
    pub attempts: u64,
    /// Attempts that were retries (or transparent requeues).
    pub retries: u64,
    /// Attempts that were hedges.
    pub hedges: u64,
    /// Successes.
    pub successes: u64,
    /// Retryable failures.
    pub retryable_failures: u64,
    /// Fatal failures.
    pub fatal_failures: u64,
    /// Calls (counted on the endpoint of their last attempt) that wanted a retry or hedge the
    /// retry budget refused.
    pub budget_exhausted: u64,
}

impl Counts {
    fn plus(self, c: Counts) -> Counts {
        Counts {
            attempts: self.attempts + c.attempts,
            retries: self.retries + c.retries,
            hedges: self.hedges + c.hedges,
            successes: self.successes + c.successes,
            retryable_failures: self.retryable_failures + c.retryable_failures,
            fatal_failures: self.fatal_failures + c.fatal_failures,
            budget_exhausted: self.budget_exhausted + c.budget_exhausted,
        }
    }

    fn outcome(&mut self, class: Class) {
        match class {
            Class::Success => self.successes += 1,
            Class::Retryable => self.retryable_failures += 1,
            Class::Fatal => self.fatal_failures += 1,
        }
    }

    fn attempt(&mut self, kind: AttemptKind) {
        self.attempts += 1;
        match kind {
            AttemptKind::First => {}
            AttemptKind::Retry => self.retries += 1,
            AttemptKind::Hedge => self.hedges += 1,
        }
    }
}

/// What to do when every attempt of a call failed (Kitex's fallback): answer from elsewhere (a
/// cache, a default) or report a different error. Not called for a response, whatever its code.
pub trait Fallback: Send + Sync {
    /// The call of `request` failed with `error`: the call's result instead.
    fn fallback(&self, request: &Command, error: CallError) -> Result<Command, CallError>;
}

impl<F> Fallback for F
where
    F: Fn(&Command, CallError) -> Result<Command, CallError> + Send + Sync,
{
    fn fallback(&self, request: &Command, error: CallError) -> Result<Command, CallError> {
        self(request, error)
    }
}

/// Per-call choices; `None` fields take the cluster's policies.
#[derive(Clone, Default)]
pub struct CallOpts {
    /// The delays between this call's retries.
    pub backoff: Option<Backoff>,
    /// Hooks run for this call only, after the cluster's.
    pub hooks: Vec<Arc<dyn Hook>>,
    /// The call's timeout, all attempts included.
    pub timeout: Option<Duration>,
    /// Attempts, the first included.
    pub max_attempts: Option<u32>,
    /// The key for consistent hashing (see [`hash_key`](super::balance::hash_key)).
    pub hash_key: Option<u64>,
    /// The request is idempotent: it may be retried even when it may have reached the server.
    pub idempotent: bool,
    /// This call's per-attempt limit (`None`: the policies').
    pub per_attempt_timeout: Option<Duration>,
    /// Response codes this call treats as retryable, replacing the default set (e.g. a
    /// service's own "try later" code).
    pub retryable_codes: Option<Vec<i32>>,
    /// What answers when every attempt failed.
    pub fallback: Option<Arc<dyn Fallback>>,
}

/// What the overrides need of a driver's per-endpoint client settings.
pub trait ClientSettings {
    /// Sets the connections per endpoint (`REMORA_POOL_SIZE`).
    fn set_pool_size(&mut self, connections: usize);
}

/// How a cluster client behaves: each endpoint's client settings `C` (the driver's), and the
/// core's resilience policies.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClusterConfig<C> {
    /// Each endpoint's client.
    pub client: C,
    /// Balancing, breakers, ejection, budget, timeout, retries, hedging, probes.
    pub policies: Policies,
}

impl<C: Default> ClusterConfig<C> {
    /// [`Policies::production`] with the default client.
    pub fn production() -> Self {
        Self::with_policies(Policies::production())
    }

    /// [`Policies::development`] with the default client.
    pub fn development() -> Self {
        Self::with_policies(Policies::development())
    }

    /// [`Policies::testing`] with the default client.
    pub fn testing() -> Self {
        Self::with_policies(Policies::testing())
    }

    fn with_policies(policies: Policies) -> Self {
        ClusterConfig {
            client: C::default(),
            policies,
        }
    }
}

impl<C: ClientSettings> ClusterConfig<C> {
    /// The policies' `REMORA_*` overrides ([`Policies::with_overrides`]) and
    /// `REMORA_POOL_SIZE` for the clients, as `lookup` finds them (e.g.
    /// `|name| std::env::var(name).ok()`).
    pub fn with_overrides<S: AsRef<str>>(
        mut self,
        lookup: impl Fn(&'static str) -> Option<S>,
    ) -> Result<Self, ConfigError> {
        if let Some(n) = number(&lookup, "REMORA_POOL_SIZE")? {
            let n = usize::try_from(n).map_err(|_| ConfigError::Override("REMORA_POOL_SIZE"))?;
            self.client.set_pool_size(n);
        }
        self.policies = self.policies.with_overrides(lookup)?;
        Ok(self)
    }
}

/// Why a cluster client could not be built.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// The policies are refused.
    Config(ConfigError),
    /// An endpoint's client could not be made.
    Endpoint(CallError),
}

impl From<ConfigError> for ClusterError {
    fn from(e: ConfigError) -> Self {
        ClusterError::Config(e)
    }
}

impl From<CallError> for ClusterError {
    fn from(e: CallError) -> Self {
        ClusterError::Endpoint(e)
    }
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Config(e) => write!(f, "bad cluster configuration: {e}"),
            ClusterError::Endpoint(e) => write!(f, "endpoint client: {e}"),
        }
    }
}

impl core::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ClusterError::Config(e) => Some(e),
            ClusterError::Endpoint(e) => Some(e),
        }
    }
}

/// Runs every hook's [`Hook::before_send`] on `request`, in order.
pub fn before_send<'a>(hooks: impl IntoIterator<Item = &'a Arc<dyn Hook>>, request: &mut Command) {
    hooks.into_iter().for_each(|h| h.before_send(request));
}

/// What a resolver refresh changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<E> {
    /// Endpoints retired (the driver closes their clients).
    pub retired: Vec<usize>,
    /// Addresses admitted as new endpoints.
    pub added: Vec<String>,
    /// Addresses whose client could not be made, and why.
    pub refused: Vec<(String, E)>,
}

/// What a client's calls share.
#[derive(Clone, Debug)]
pub struct ClusterState {
    endpoints: Endpoints,
    policies: Policies,
    addresses: Vec<String>,
    counts: Vec<Counts>,
    resolved_at: Instant,
    rng: SplitMix64,
}

impl ClusterState {
    /// State over `addresses` with `policies` (checked), at `now`; `seed` seeds the random
    /// choices (balancing, jitter).
    pub fn new(
        addresses: Vec<String>,
        policies: Policies,
        now: Instant,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        policies.validate()?;
        Ok(ClusterState {
            endpoints: Endpoints::from_policies(&addresses, &policies),
            counts: alloc::vec![Counts::default(); addresses.len()],
            addresses,
            policies,
            resolved_at: now,
            rng: SplitMix64::new(seed),
        })
    }

    /// The policies.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The endpoints' machine (breakers, ejection, budget).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// How many endpoints, retired ones included (indices are stable).
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// Endpoint `i`'s address.
    pub fn address(&self, i: usize) -> &str {
        &self.addresses[i]
    }

    /// The endpoints now (retired ones left out).
    pub fn addresses(&self) -> Vec<String> {
        let live = |(i, _): &(usize, &String)| !self.endpoints.is_retired(*i);
        self.addresses
            .iter()
            .enumerate()
            .filter(live)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// Endpoint `i`'s counts.
    pub fn counts(&self, i: usize) -> Counts {
        self.counts[i]
    }

    /// Counts over all endpoints.
    pub fn totals(&self) -> Counts {
        self.counts
            .iter()
            .fold(Counts::default(), |t, c| t.plus(*c))
    }

    /// Endpoint `i`'s breaker state and whether it is ejected at `now`.
    pub fn health(&self, i: usize, now: Instant) -> (BreakerState, bool) {
        (self.endpoints.breaker(i), self.endpoints.is_ejected(i, now))
    }

    /// Whether a resolver asked every `every` is due again at `now`; if so, the schedule starts
    /// over (ask it, then [`ClusterState::apply`] its answer).
    pub fn refresh_due(&mut self, every: Option<Duration>, now: Instant) -> bool {
        let due = every.is_some_and(|every| now - self.resolved_at >= every);
        if due {
            self.resolved_at = now;
        }
        due
    }

    /// Goes to the endpoints a resolver answered: retires those that are gone, and admits each
    /// new one that `admit` makes a client for (the driver appends it to its list: indices are
    /// the order of admission). `None` when nothing changes (or the answer is empty: the last
    /// known endpoints are kept).
    pub fn apply<E>(
        &mut self,
        wanted: &[String],
        mut admit: impl FnMut(&str) -> Result<(), E>,
    ) -> Option<Change<E>> {
        let current: Vec<(usize, &str)> = (0..self.len())
            .filter(|&i| !self.endpoints.is_retired(i))
            .map(|i| (i, self.addresses[i].as_str()))
            .collect();
        let (retired, new) = diff(&current, wanted)?;
        for &i in &retired {
            self.endpoints.retire(i);
        }
        let (mut added, mut refused) = (Vec::new(), Vec::new());
        for address in new {
            match admit(&address) {
                Ok(()) => {
                    self.addresses.push(address.clone());
                    self.counts.push(Counts::default());
                    self.endpoints.add(1);
                    added.push(address);
                }
                Err(e) => refused.push((address, e)),
            }
        }
        self.endpoints.balancer_mut().set_ring(&self.addresses);
        Some(Change {
            retired,
            added,
            refused,
        })
    }

    /// A snapshot of endpoint `i` at `now`, with the driver's latency figures.
    pub fn report(&self, i: usize, now: Instant, latency_us: (u64, u64, u64)) -> EndpointReport {
        let (breaker, ejected) = self.health(i, now);
        EndpointReport {
            address: self.addresses[i].clone(),
            counts: self.counts[i],
            breaker,
            ejected,
            latency_us,
        }
    }

    /// The endpoints a health probe should check at `now`.
    pub fn probe_targets(&self, now: Instant) -> Vec<usize> {
        self.endpoints.needing_probe(now)
    }

    /// A health probe's request and timeout (`None`: probes are off).
    pub fn probe_request(&self) -> Option<(Command, Duration)> {
        let probe = self.policies.probe?;
        Some((
            Command::request(probe.code),
            probe.every.min(self.policies.timeout),
        ))
    }

    /// A probe of endpoint `i` ended: any response proves it alive. Returns whether it did.
    pub fn probe_result(&mut self, i: usize, outcome: &Result<Command, CallError>) -> bool {
        self.endpoints.probe_result(i, outcome.is_ok());
        outcome.is_ok()
    }

    fn oneway_options(&self) -> CallOptions<'static> {
        CallOptions {
            timeout: self.policies.timeout,
            retry: self.policies.retry(1),
            hedge: None,
            key: None,
            per_attempt: None,
        }
    }

    /// Picks the endpoint for a oneway request at `now` (never retried: nothing comes back to
    /// say it failed, and a write that may have gone out must not be repeated).
    pub fn oneway(&mut self, now: Instant) -> Result<Oneway, CallError> {
        let opts = self.oneway_options();
        let mut steps = Vec::new();
        let entropy = self.rng.next_u64();
        let call = Call::start(&mut self.endpoints, &opts, now, entropy, &mut steps);
        match steps.first() {
            Some(&Step::Send {
                kind,
                attempt,
                endpoint,
                ..
            }) => {
                self.counts[endpoint].attempt(kind);
                Ok(Oneway {
                    call,
                    attempt,
                    endpoint,
                })
            }
            _ => Err(call.unanswered_error()),
        }
    }

    /// A oneway request picked by [`ClusterState::oneway`] was written (or not) at `now`.
    pub fn oneway_done(
        &mut self,
        mut oneway: Oneway,
        result: &Result<(), CallError>,
        now: Instant,
    ) {
        let class = match result {
            Ok(()) => Class::Success,
            Err(e) if e.is_safe_to_retry() => Class::Retryable,
            Err(_) => Class::Fatal,
        };
        self.counts[oneway.endpoint].outcome(class);
        let opts = self.oneway_options();
        let mut steps = Vec::new();
        let entropy = self.rng.next_u64();
        let (eps, attempt) = (&mut self.endpoints, oneway.attempt);
        oneway
            .call
            .handle_outcome(eps, &opts, attempt, class, now, entropy, &mut steps);
    }
}

/// A oneway request's endpoint, from [`ClusterState::oneway`].
#[derive(Debug)]
pub struct Oneway {
    call: Call,
    attempt: u32,
    /// Where to send it.
    pub endpoint: usize,
}

/// What the driver must do next for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the request as this attempt.
    Send(Attempt),
    /// Cancel attempt `attempt` (another one won, or the call is over); its outcome, if it
    /// still comes, may be dropped.
    Cancel {
        /// The attempt's number.
        attempt: u32,
    },
    /// The call is over: [`ClusterCall::result`] is its answer.
    Done,
}

/// An attempt to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt's number (report its outcome with it).
    pub number: u32,
    /// Why it is sent: the first, a retry after an earlier one ended, or a hedge while one
    /// is still out.
    pub kind: AttemptKind,
    /// Which endpoint.
    pub endpoint: usize,
    /// How long the attempt may take.
    pub timeout: Duration,
    /// Whether other attempts may run at the same time (a hedged call): a driver that blocks on
    /// an attempt must then run it apart.
    pub parallel: bool,
}

/// A snapshot of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointReport {
    /// The endpoint as given.
    pub address: String,
    /// Its attempts and outcomes.
    pub counts: Counts,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Whether ejected now.
    pub ejected: bool,
    /// Attempt latency p50 / p99 / max, microseconds (as the driver measured it).
    pub latency_us: (u64, u64, u64),
}

/// What an attempt's outcome meant, for the driver's metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// The attempt's endpoint.
    pub endpoint: usize,
    /// How the outcome was classified.
    pub class: Class,
    /// How long the attempt took.
    pub latency: Duration,
    /// The endpoint's breaker state and ejection, if this outcome changed them.
    pub health: Option<(BreakerState, bool)>,
}

#[derive(Clone, Debug)]
struct Settings {
    timeout: Duration,
    max_attempts: u32,
    backoff: Backoff,
    hedge: Option<HedgePolicy>,
    key: Option<u64>,
    per_attempt: Option<Duration>,
}

impl Settings {
    fn options(&self) -> CallOptions<'static> {
        CallOptions {
            timeout: self.timeout,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                schedule: Schedule::Exponential(self.backoff),
            },
            hedge: self.hedge,
            key: self.key,
            per_attempt: self.per_attempt,
        }
    }
}

/// What every call of a cluster client starts from.
#[derive(Clone, Default)]
pub struct CallDefaults {
    /// Hooks run around every call (before the call's own).
    pub hooks: Vec<Arc<dyn Hook>>,
    /// The policies.
    pub policies: Policies,
    /// The endpoints' connection configuration (how a request is encoded).
    pub connection: Config,
}

/// One call over a cluster (see the module docs for the loop that runs it).
pub struct ClusterCall {
    frame: Encoded,
    call: Option<Call>,
    settings: Settings,
    idempotent: bool,
    codes: Option<Vec<i32>>,
    hooks: Vec<Arc<dyn Hook>>,
    fallback: Option<Arc<dyn Fallback>>,
    steps: Vec<Step>,
    next_step: usize,
    /// (attempt, endpoint, sent at)
    sent: Vec<(u32, usize, Instant)>,
    outcomes: Vec<(u32, Result<Command, CallError>)>,
    answer: Option<u32>,
}

impl ClusterCall {
    /// Prepares a call of `request` with `opts` under a client's `defaults`: runs the hooks'
    /// `before_send` (the client's, then the call's), then encodes the request once, as the
    /// client's connections would (every attempt re-sends these bytes with its own opaque:
    /// [`ClusterCall::frame`]). `latency` is the recent successful attempts' latency (sample
    /// count and quantiles) for percentile hedging. A request that cannot be encoded is
    /// [`CallError::Encode`] (no attempt is made, and the fallback is not asked).
    pub fn new(
        request: &mut Command,
        opts: CallOpts,
        defaults: &CallDefaults,
        latency: (u64, impl FnOnce(f64) -> Duration),
    ) -> Result<ClusterCall, CallError> {
        let (hooks, policies, connection) =
            (&defaults.hooks, &defaults.policies, &defaults.connection);
        let hooks: Vec<Arc<dyn Hook>> = hooks.iter().chain(&opts.hooks).cloned().collect();
        before_send(&hooks, request);
        let ty = connection.serialize_type.unwrap_or(request.serialize_type);
        let codec = Codec::new(connection.limits);
        let frame = Encoded::request(&codec, request, ty).map_err(CallError::Encode)?;
        Ok(ClusterCall {
            frame,
            call: None,
            settings: Settings {
                timeout: opts.timeout.unwrap_or(policies.timeout),
                max_attempts: opts.max_attempts.unwrap_or(policies.max_attempts),
                backoff: opts.backoff.unwrap_or(policies.backoff),
                hedge: policies.hedge_for(latency.0, latency.1),
                key: opts.hash_key,
                per_attempt: opts.per_attempt_timeout.or(policies.per_attempt_timeout),
            },
            idempotent: opts.idempotent,
            codes: opts.retryable_codes,
            hooks,
            fallback: opts.fallback,
            steps: Vec::new(),
            next_step: 0,
            sent: Vec::new(),
            outcomes: Vec::new(),
            answer: None,
        })
    }

    /// The request, encoded once: what every [`Action::Send`] sends (the connection writes the
    /// attempt's opaque in place).
    pub fn frame(&self) -> &Encoded {
        &self.frame
    }

    /// Whether attempts may overlap (the call hedges).
    pub fn is_hedged(&self) -> bool {
        self.settings.hedge.is_some()
    }

    /// The next thing to do at `now` (the first call starts the call), or `None` until an
    /// outcome or [`ClusterCall::wake_at`].
    pub fn poll(&mut self, state: &mut ClusterState, now: Instant) -> Option<Action> {
        if self.call.is_none() {
            let entropy = state.rng.next_u64();
            let opts = self.settings.options();
            let eps = &mut state.endpoints;
            self.call = Some(Call::start(eps, &opts, now, entropy, &mut self.steps));
        }
        let step = *self.steps.get(self.next_step)?;
        self.next_step += 1;
        if self.next_step == self.steps.len() {
            self.steps.clear();
            self.next_step = 0;
        }
        Some(match step {
            Step::Send {
                kind,
                attempt,
                endpoint,
                deadline,
            } => {
                state.counts[endpoint].attempt(kind);
                self.sent.push((attempt, endpoint, now));
                Action::Send(Attempt {
                    number: attempt,
                    kind,
                    endpoint,
                    timeout: deadline - now,
                    parallel: self.is_hedged(),
                })
            }
            Step::Cancel { attempt } => Action::Cancel { attempt },
            Step::Finish { attempt } => {
                let call = self.call.as_ref()?;
                if call.budget_refused() {
                    if let Some(last) = call.endpoints().last() {
                        state.counts[last].budget_exhausted += 1;
                    }
                }
                self.answer = attempt;
                Action::Done
            }
        })
    }

    /// Once [`Action::Done`] came: the attempt whose outcome is the call's answer, and that
    /// outcome (before hooks and fallback), or `None` if no attempt answered.
    pub fn answered(&self) -> Option<(u32, &Result<Command, CallError>)> {
        let a = self.answer?;
        self.outcomes.iter().find(|o| o.0 == a).map(|o| (a, &o.1))
    }

    /// Whether the retry budget refused a retry or hedge this call wanted.
    pub fn budget_refused(&self) -> bool {
        self.call.as_ref().is_some_and(Call::budget_refused)
    }

    /// When to call [`ClusterCall::on_timeout`] if no outcome comes first.
    pub fn wake_at(&self) -> Option<Instant> {
        self.call.as_ref().and_then(Call::poll_timeout)
    }

    /// Attempt `attempt` ended with `outcome` at `now`. `None` for an attempt this call does not
    /// know.
    pub fn on_outcome(
        &mut self,
        state: &mut ClusterState,
        attempt: u32,
        outcome: Result<Command, CallError>,
        now: Instant,
    ) -> Option<Report> {
        let &(_, endpoint, sent_at) = self.sent.iter().find(|s| s.0 == attempt)?;
        let classifier = Classifier {
            retry_possibly_delivered: self.idempotent,
            retryable_codes: self.codes.as_deref().unwrap_or(&DEFAULT_RETRYABLE_CODES),
            ..Classifier::default()
        };
        let class = classifier.classify(&outcome);
        state.counts[endpoint].outcome(class);
        let unsent = matches!(&outcome, Err(e) if e.never_left());
        self.outcomes.retain(|(a, _)| *a != attempt);
        self.outcomes.push((attempt, outcome));
        let before = state.health(endpoint, now);
        let entropy = state.rng.next_u64();
        let (opts, eps) = (self.settings.options(), &mut state.endpoints);
        let call = self.call.as_mut()?;
        if unsent {
            call.handle_unsent(eps, &opts, attempt, now, entropy, &mut self.steps);
        } else {
            call.handle_outcome(eps, &opts, attempt, class, now, entropy, &mut self.steps);
        }
        let after = state.health(endpoint, now);
        Some(Report {
            endpoint,
            class,
            latency: now - sent_at,
            health: (before != after).then_some(after),
        })
    }

    /// The clock reached `now` with no outcome (a retry, hedge or the deadline is due).
    pub fn on_timeout(&mut self, state: &mut ClusterState, now: Instant) {
        let entropy = state.rng.next_u64();
        let (opts, eps) = (self.settings.options(), &mut state.endpoints);
        if let Some(call) = self.call.as_mut() {
            call.handle_timeout(eps, &opts, now, entropy, &mut self.steps);
        }
    }

    /// The call's answer once [`Action::Done`] came: the winning attempt's response (after the
    /// hooks' `after_receive`), or its error (or the timeout or unavailability if nothing
    /// answered) as the fallback, if any, turns it.
    pub fn result(mut self, request: &Command) -> Result<Command, CallError> {
        let outcome = self
            .answer
            .and_then(|a| self.outcomes.iter().position(|o| o.0 == a))
            .map(|i| self.outcomes.swap_remove(i).1);
        let outcome = match (outcome, &self.call) {
            (Some(outcome), _) => outcome,
            (None, Some(call)) => Err(call.unanswered_error()),
            (None, None) => Err(CallError::Unavailable {
                retry_in: Duration::ZERO,
            }),
        };
        match outcome {
            Ok(mut response) => {
                self.hooks
                    .iter()
                    .for_each(|h| h.after_receive(&mut response));
                Ok(response)
            }
            Err(e) => match &self.fallback {
                Some(f) => f.fallback(request, e),
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::codes;
    use alloc::string::ToString;
    use alloc::vec;

    const MS: Duration = Duration::from_millis(1);

    fn state(n: usize, policies: Policies) -> ClusterState {
        let addresses = (0..n).map(|i| alloc::format!("10.0.0.{i}:9876")).collect();
        ClusterState::new(addresses, policies, Instant::ZERO, 7).unwrap()
    }

    fn no_latency() -> (u64, fn(f64) -> Duration) {
        (0, |_| Duration::ZERO)
    }

    /// Drives `call` to its end: each attempt on endpoint `e` gets `answer(e, attempt)`.
    fn drive(
        st: &mut ClusterState,
        mut call: ClusterCall,
        request: &Command,
        answer: impl Fn(usize, u32) -> Result<Command, CallError>,
    ) -> (Result<Command, CallError>, Vec<usize>) {
        let (mut now, mut sent, mut tried) = (Instant::ZERO, Vec::new(), Vec::new());
        for _ in 0..100 {
            match call.poll(st, now) {
                Some(Action::Send(a)) => {
                    tried.push(a.endpoint);
                    sent.push(a);
                }
                Some(Action::Cancel { .. }) => {}
                Some(Action::Done) => return (call.result(request), tried),
                None => match sent.pop() {
                    Some(a) => {
                        now = now + MS;
                        call.on_outcome(st, a.number, answer(a.endpoint, a.number), now);
                    }
                    None => {
                        now = call.wake_at().unwrap();
                        call.on_timeout(st, now);
                    }
                },
            }
        }
        panic!("the call did not end");
    }

    #[test]
    fn a_requeue_and_a_retry_then_the_fallback_answers() {
        let mut st = state(3, Policies::testing());
        let mut request = Command::request(105);
        let fallback: Arc<dyn Fallback> = Arc::new(|r: &Command, e: CallError| {
            assert!(matches!(e, CallError::Timeout { written: true }));
            Ok(r.response(codes::SYSTEM_BUSY).with_remark("fallback"))
        });
        let opts = CallOpts {
            fallback: Some(fallback),
            idempotent: true,
            ..CallOpts::default()
        };
        let call = ClusterCall::new(
            &mut request,
            opts,
            &CallDefaults {
                hooks: Vec::new(),
                policies: *st.policies(),
                connection: Config::default(),
            },
            no_latency(),
        )
        .unwrap();
        let (result, tried) = drive(&mut st, call, &request, |_, n| {
            if n == 1 {
                // Never left this process: requeued without using an attempt.
                Err(CallError::Unavailable { retry_in: MS })
            } else {
                Err(CallError::Timeout { written: true })
            }
        });
        let response = result.unwrap();
        assert_eq!(response.code, codes::SYSTEM_BUSY);
        assert_eq!(tried.len(), 4, "one requeue and three attempts: {tried:?}");
        assert_eq!(st.totals().attempts, 4);
        assert_eq!(st.totals().retryable_failures, 4);
    }

    #[test]
    fn without_a_fallback_a_fatal_error_ends_the_call_and_hooks_run_on_success_only() {
        struct Mark;
        impl Hook for Mark {
            fn before_send(&self, request: &mut Command) {
                *request =
                    core::mem::replace(request, Command::request(0)).with_ext("signed", "yes");
            }
            fn after_receive(&self, response: &mut Command) {
                *response = core::mem::replace(response, Command::request(0)).with_remark("seen");
            }
        }
        let mut st = state(2, Policies::testing());
        let defaults = CallDefaults {
            hooks: vec![Arc::new(Mark)],
            policies: *st.policies(),
            connection: Config::default(),
        };
        let mut request = Command::request(1);
        let new = |request: &mut Command| {
            ClusterCall::new(request, CallOpts::default(), &defaults, no_latency()).unwrap()
        };
        let call = new(&mut request);
        assert!(request.ext("signed").is_some());
        let (result, tried) = drive(&mut st, call, &request, |_, _| {
            Ok(Command::request(1).response(codes::SUCCESS))
        });
        assert_eq!(result.unwrap().remark(), Some("seen"));
        assert_eq!(tried.len(), 1);
        let call = new(&mut request);
        let (result, tried) = drive(&mut st, call, &request, |_, _| {
            Err(CallError::Timeout { written: true })
        });
        assert!(matches!(result, Err(CallError::Timeout { written: true })));
        assert_eq!(
            tried.len(),
            1,
            "not idempotent: a written request is not retried"
        );
    }

    #[test]
    fn every_attempt_sends_the_bytes_encoded_once_with_only_the_opaque_changed() {
        use crate::conn::connection::Connection;
        use crate::Decoded;
        let mut st = state(3, Policies::testing());
        let mut request = Command::request(9)
            .with_ext("k", "v")
            .with_body(&b"once"[..]);
        let opts = CallOpts {
            idempotent: true,
            ..CallOpts::default()
        };
        let defaults = CallDefaults::default();
        let mut call = ClusterCall::new(&mut request, opts, &defaults, no_latency()).unwrap();
        let mut conn = Connection::new(Config::default());
        let (mut frames, mut now) = (Vec::new(), Instant::ZERO);
        loop {
            match call.poll(&mut st, now) {
                Some(Action::Send(a)) => {
                    let id = conn
                        .send_encoded_request(call.frame(), now + a.timeout, now)
                        .unwrap();
                    frames.push((id.opaque(), conn.take_transmit().unwrap()));
                    now = now + MS;
                    let lost = Err(CallError::ConnectionLost { written: true });
                    call.on_outcome(&mut st, a.number, lost, now);
                }
                Some(Action::Done) => break,
                Some(Action::Cancel { .. }) => {}
                None => {
                    now = call.wake_at().unwrap();
                    call.on_timeout(&mut st, now);
                }
            }
        }
        assert_eq!(frames.len(), 3, "three attempts");
        let span = call.frame().opaque_span();
        let codec = crate::Codec::default();
        for (opaque, frame) in &frames {
            assert_eq!(frame.len(), frames[0].1.len());
            let differ = (0..frame.len()).filter(|&i| frame[i] != frames[0].1[i]);
            assert!(
                differ.clone().all(|i| span.contains(&i)),
                "only the opaque differs"
            );
            let Decoded::Command(got) = codec.decode(&mut frame[..].into()).unwrap() else {
                panic!("a whole frame")
            };
            assert_eq!(
                (got.opaque, got.code, got.body()),
                (*opaque, 9, &b"once"[..])
            );
        }
        assert_ne!(frames[0].0, frames[1].0, "each attempt has its own opaque");
    }

    #[test]
    fn percentile_hedging_waits_for_enough_samples() {
        let policies = Policies {
            hedge: Some(HedgePolicy {
                delay: 50 * MS,
                max_attempts: 2,
            }),
            hedge_percentile: Some(0.9),
            ..Policies::testing()
        };
        let mut st = state(2, policies);
        let mut request = Command::request(1);
        let defaults = CallDefaults {
            policies,
            ..CallDefaults::default()
        };
        let mut new = |samples| {
            let latency = (samples, |_| 5 * MS);
            ClusterCall::new(&mut request, CallOpts::default(), &defaults, latency).unwrap()
        };
        let mut call = new(99);
        assert!(matches!(call.poll(&mut st, Instant::ZERO), Some(Action::Send(a)) if a.parallel));
        assert_eq!(call.wake_at(), Some(Instant::ZERO + 50 * MS), "fixed delay");
        let mut call = new(100);
        call.poll(&mut st, Instant::ZERO);
        assert_eq!(
            call.wake_at(),
            Some(Instant::ZERO + 5 * MS),
            "the percentile"
        );
    }

    #[test]
    fn oneway_outcomes_are_classified_and_counted() {
        let mut st = state(1, Policies::testing());
        let o = st.oneway(Instant::ZERO).unwrap();
        st.oneway_done(o, &Ok(()), Instant::ZERO);
        let o = st.oneway(Instant::ZERO).unwrap();
        st.oneway_done(
            o,
            &Err(CallError::ConnectionLost { written: false }),
            Instant::ZERO,
        );
        let o = st.oneway(Instant::ZERO).unwrap();
        st.oneway_done(
            o,
            &Err(CallError::ConnectionLost { written: true }),
            Instant::ZERO,
        );
        let c = st.counts(0);
        assert_eq!(
            (
                c.attempts,
                c.successes,
                c.retryable_failures,
                c.fatal_failures
            ),
            (3, 1, 1, 1)
        );
    }

    #[test]
    fn a_refresh_retires_admits_and_refuses() {
        let mut st = state(2, Policies::testing());
        assert!(!st.refresh_due(None, Instant::from_millis(10)));
        assert!(st.refresh_due(Some(5 * MS), Instant::from_millis(10)));
        assert!(!st.refresh_due(Some(5 * MS), Instant::from_millis(12)));
        let wanted = vec!["10.0.0.1:9876".to_string(), "new:1".into(), "bad:1".into()];
        let change = st
            .apply(&wanted, |a| if a == "bad:1" { Err("no") } else { Ok(()) })
            .unwrap();
        assert_eq!(change.retired, vec![0]);
        assert_eq!(change.added, vec!["new:1".to_string()]);
        assert_eq!(change.refused, vec![("bad:1".to_string(), "no")]);
        assert_eq!(
            st.addresses(),
            vec!["10.0.0.1:9876".to_string(), "new:1".into()]
        );
        assert_eq!(st.apply(&wanted[..2], |_| Ok::<(), ()>(())), None);
    }

    #[test]
    fn bad_policies_are_a_typed_error() {
        let policies = Policies {
            max_attempts: 0,
            ..Policies::testing()
        };
        let err = ClusterState::new(vec![], policies, Instant::ZERO, 1).unwrap_err();
        assert!(matches!(err, ConfigError::Retry(_)));
        let overridden = ClusterConfig::<Pool>::testing()
            .with_overrides(|n| (n == "REMORA_POOL_SIZE").then_some("4"));
        assert_eq!(overridden.unwrap().client.0, 4);
    }

    #[derive(Default, Debug, Clone, Copy, PartialEq)]
    struct Pool(usize);
    impl ClientSettings for Pool {
        fn set_pool_size(&mut self, n: usize) {
            self.0 = n;
        }
    }
}
