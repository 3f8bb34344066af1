//! A client over several endpoints: balancing, retries, hedging, circuit breaking and outlier
//! ejection, all decided by `remora_core::resilience` (this file only sends, waits and counts).

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use remora_core::backoff::Backoff;
use remora_core::resilience::breaker::State as BreakerState;
use remora_core::resilience::call::{AttemptKind, Call, CallOptions, Endpoints, Step};
use remora_core::resilience::policies::Policies;
use remora_core::resilience::retry::{Class, Classifier, RetryPolicy, Schedule};
use remora_core::{Command, Instant};

use crate::conn::Clock;
use crate::{Client, ClientConfig, Error, NotSupported};

pub use remora_core::Hook;

/// How a [`Cluster`] behaves: each endpoint's client, and the core's resilience policies.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ClusterConfig {
    /// Each endpoint's client (pool, reconnect, machine limits).
    pub client: ClientConfig,
    /// Balancing, breakers, ejection, budget, timeout, retries, hedging.
    pub policies: Policies,
}

impl ClusterConfig {
    /// [`Policies::production`] with the default client.
    pub fn production() -> Self {
        ClusterConfig {
            client: ClientConfig::default(),
            policies: Policies::production(),
        }
    }

    /// [`Policies::development`] with the default client.
    pub fn development() -> Self {
        ClusterConfig {
            policies: Policies::development(),
            ..ClusterConfig::production()
        }
    }

    /// [`Policies::testing`] with the default client.
    pub fn testing() -> Self {
        ClusterConfig {
            policies: Policies::testing(),
            ..ClusterConfig::production()
        }
    }

    /// The policies' `REMORA_*` overrides, plus `REMORA_POOL_SIZE` for the clients.
    pub fn with_env_overrides(mut self) -> Result<Self, String> {
        self.policies = self.policies.with_env_overrides()?;
        if let Some(n) = remora_core::resilience::policies::env_number("REMORA_POOL_SIZE")? {
            self.client.pool_size = n as usize;
        }
        Ok(self)
    }
}

/// Per-call choices; `None` fields take the cluster's.
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
    /// The key for consistent hashing (see `remora_core::resilience::balance::hash_key`).
    pub hash_key: Option<u64>,
    /// The request is idempotent: it may be retried even when it may have reached the server.
    pub idempotent: bool,
    /// This call's per-attempt limit (`None`: the policies').
    pub per_attempt_timeout: Option<Duration>,
    /// Response codes this call treats as retryable, replacing the default set (e.g. a
    /// service's own "try later" code).
    pub retryable_codes: Option<Vec<i32>>,
}

/// Counters of one endpoint (or of the whole cluster).
#[derive(Debug, Default)]
pub struct Counters {
    /// Attempts sent.
    pub attempts: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// Attempts that were hedges.
    pub hedges: AtomicU64,
    /// Attempts that succeeded.
    pub successes: AtomicU64,
    /// Attempts that failed retryably (busy, unavailable, transport).
    pub retryable_failures: AtomicU64,
    /// Attempts that failed fatally.
    pub fatal_failures: AtomicU64,
    /// Calls that wanted a retry or hedge the retry budget refused.
    pub budget_exhausted: AtomicU64,
}

/// A snapshot of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointReport {
    /// The endpoint as given.
    pub address: String,
    /// Attempts sent.
    pub attempts: u64,
    /// Successes.
    pub successes: u64,
    /// Retryable failures.
    pub retryable_failures: u64,
    /// Fatal failures.
    pub fatal_failures: u64,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Whether ejected now.
    pub ejected: bool,
    /// Attempt latency p50 / p99 / max, microseconds.
    pub latency_us: (u64, u64, u64),
}

struct EndpointState {
    address: String,
    client: Client,
    counters: Counters,
    latency: Mutex<Histogram<u64>>,
}

impl EndpointState {
    fn new(address: &str, config: ClientConfig) -> Result<EndpointState, Error> {
        let resolved: Vec<_> = address
            .to_socket_addrs()
            .map_err(|e| Error::Connect(e.into()))?
            .collect();
        Ok(EndpointState {
            address: address.to_string(),
            client: Client::lazy(&resolved[..], config, NotSupported)?,
            counters: Counters::default(),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ),
        })
    }
}

use remora_core::resilience::resolve::diff;
pub use remora_core::resilience::resolve::{Resolver, Watch};

struct Inner {
    closed: std::sync::atomic::AtomicBool,
    endpoints: RwLock<Vec<Arc<EndpointState>>>,
    resolver: Resolver,
    resolved_at: Mutex<std::time::Instant>,
    watch: Option<Watch>,
    machine: Mutex<Endpoints>,
    config: ClusterConfig,
    hooks: Vec<Arc<dyn Hook>>,
    clock: Clock,
    entropy: AtomicU64,
    total: Counters,
    /// Attempt latency over all endpoints (for percentile hedging).
    latency: Mutex<Histogram<u64>>,
}

/// A client over several endpoints of one service. Cheap to clone; share it between threads.
///
/// Each call goes to the endpoint the core's balancer picks among those whose breaker is closed
/// and that are not ejected; retryable failures are retried on another endpoint after the
/// backoff while the retry budget allows; with hedging, an unanswered attempt is backed up on
/// another endpoint after the hedge delay and the first success wins.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// A cluster over `addresses` (connections are made on demand, so endpoints that are down
    /// now do not stop it).
    pub fn new(addresses: &[&str], config: ClusterConfig) -> Result<Cluster, Error> {
        Cluster::with_hooks(addresses, config, Vec::new())
    }

    /// Like [`Cluster::new`], with hooks run around every call (in order).
    pub fn with_hooks(
        addresses: &[&str],
        config: ClusterConfig,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> Result<Cluster, Error> {
        let list = addresses.iter().map(|a| a.to_string()).collect();
        Cluster::with_resolver(Resolver::Static(list), config, hooks, None)
    }

    /// A cluster whose endpoints come from `resolver`, re-resolved on its schedule (checked at
    /// each call); `watch` is told the new set whenever it changes. Endpoints that disappear are
    /// retired (calls in flight to them end normally); new ones join the balancer.
    pub fn with_resolver(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: Vec<Arc<dyn Hook>>,
        watch: Option<Watch>,
    ) -> Result<Cluster, Error> {
        config.policies.validate().map_err(|e| {
            Error::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e).into())
        })?;
        let addresses = resolver.resolve();
        let mut endpoints = Vec::with_capacity(addresses.len());
        for address in &addresses {
            endpoints.push(Arc::new(EndpointState::new(address, config.client)?));
        }
        let machine = Endpoints::from_policies(&addresses, &config.policies);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                closed: std::sync::atomic::AtomicBool::new(false),
                endpoints: RwLock::new(endpoints),
                resolver,
                resolved_at: Mutex::new(std::time::Instant::now()),
                watch,
                machine: Mutex::new(machine),
                config,
                hooks,
                clock: Clock::new(),
                entropy: AtomicU64::new(seed | 1),
                total: Counters::default(),
                latency: Mutex::new(
                    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
                ),
            }),
        };
        if let Some(probe) = cluster.inner.config.policies.probe {
            let weak = Arc::downgrade(&cluster.inner);
            std::thread::Builder::new()
                .name("remora-cluster-probe".into())
                .spawn(move || probe_loop(&weak, probe))
                .map_err(|e| Error::Connect(e.into()))?;
        }
        Ok(cluster)
    }

    fn endpoints(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<EndpointState>>> {
        self.inner
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn endpoint(&self, i: usize) -> Arc<EndpointState> {
        Arc::clone(&self.endpoints()[i])
    }

    /// The endpoints now (retired ones left out).
    pub fn addresses(&self) -> Vec<String> {
        // Lock order everywhere: endpoints, then machine.
        let endpoints = self.endpoints();
        let machine = self.machine();
        endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| !machine.is_retired(*i))
            .map(|(_, e)| e.address.clone())
            .collect()
    }

    /// Resolves again if the resolver's interval has passed, and applies the difference.
    pub fn refresh(&self) {
        let Some(every) = self.inner.resolver.every() else {
            return;
        };
        {
            let mut at = self
                .inner
                .resolved_at
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if at.elapsed() < every {
                return;
            }
            *at = std::time::Instant::now();
        }
        let wanted = self.inner.resolver.resolve();
        let mut endpoints = self
            .inner
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut machine = self.machine();
        let current: Vec<(usize, &str)> = endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| !machine.is_retired(*i))
            .map(|(i, e)| (i, e.address.as_str()))
            .collect();
        let Some((retire, add)) = diff(&current, &wanted) else {
            return;
        };
        for i in retire {
            machine.retire(i);
            endpoints[i].client.close();
            tracing::info!(endpoint = %endpoints[i].address, "endpoint retired: no longer resolved");
        }
        for address in &add {
            match EndpointState::new(address, self.inner.config.client) {
                Ok(ep) => {
                    endpoints.push(Arc::new(ep));
                    machine.add(1);
                    tracing::info!(endpoint = %address, "endpoint added");
                }
                Err(e) => tracing::warn!(endpoint = %address, error = %e, "endpoint not added"),
            }
        }
        let ids: Vec<&str> = endpoints.iter().map(|e| e.address.as_str()).collect();
        machine.balancer_mut().set_ring(&ids);
        drop((machine, endpoints));
        if let Some(watch) = &self.inner.watch {
            watch(&self.addresses());
        }
    }

    fn machine(&self) -> MutexGuard<'_, Endpoints> {
        self.inner.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entropy(&self) -> u64 {
        // A splitmix step on a shared counter: the driver's entropy for the core's choices.
        let mut z = self
            .inner
            .entropy
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Sends `request` with the cluster's policies.
    pub fn call(&self, request: Command) -> Result<Command, Error> {
        self.call_with(request, CallOpts::default())
    }

    /// Sends `request` with per-call options.
    pub fn call_with(&self, request: Command, opts: CallOpts) -> Result<Command, Error> {
        let call_span = tracing::info_span!(
            "remora.cluster.call",
            code = request.code,
            final_attempt = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let _in_call = call_span.enter();
        self.refresh();
        let config = &self.inner.config.policies;
        let mut classifier = Classifier {
            retry_possibly_delivered: opts.idempotent,
            ..Classifier::default()
        };
        if let Some(codes) = &opts.retryable_codes {
            classifier.retryable_codes = codes;
        }
        let call_opts = CallOptions {
            timeout: opts.timeout.unwrap_or(config.timeout),
            retry: RetryPolicy {
                max_attempts: opts.max_attempts.unwrap_or(config.max_attempts),
                schedule: Schedule::Exponential(opts.backoff.unwrap_or(config.backoff)),
            },
            hedge: config.hedge_for(|q| {
                let h = self.inner.latency.lock().unwrap_or_else(|e| e.into_inner());
                (h.len() >= 100).then(|| Duration::from_micros(h.value_at_quantile(q)))
            }),
            key: opts.hash_key,
            per_attempt: opts.per_attempt_timeout.or(config.per_attempt_timeout),
        };
        let hooks: Vec<&Arc<dyn Hook>> = self.inner.hooks.iter().chain(&opts.hooks).collect();
        let mut request = request;
        for hook in &hooks {
            hook.before_send(&mut request);
        }
        let (tx, rx) = mpsc::channel::<(u32, usize, Instant, Result<Command, Error>)>();
        let mut steps = Vec::new();
        let mut call = Call::start(
            &mut self.machine(),
            &call_opts,
            self.inner.clock.now(),
            self.entropy(),
            &mut steps,
        );
        let mut outcomes: HashMap<u32, Result<Command, Error>> = HashMap::new();
        let mut inline = Vec::new();
        loop {
            for step in steps.drain(..) {
                match step {
                    Step::Send {
                        kind,
                        attempt,
                        endpoint,
                        deadline,
                    } => {
                        self.count_attempt(endpoint, kind);
                        let client = self.endpoint(endpoint).client.clone();
                        let timeout = deadline - self.inner.clock.now();
                        let attempt_request = request.clone();
                        let started = self.inner.clock.now();
                        let span = remora_metrics::attempt_span(
                            attempt,
                            kind,
                            &self.endpoint(endpoint).address,
                        );
                        if call_opts.hedge.is_some() {
                            // Hedged calls need attempts in parallel: each on a thread of its own.
                            let tx = tx.clone();
                            std::thread::spawn(move || {
                                let outcome =
                                    observed_attempt(&span, &client, attempt_request, timeout);
                                let _ = tx.send((attempt, endpoint, started, outcome));
                            });
                        } else {
                            let outcome =
                                observed_attempt(&span, &client, attempt_request, timeout);
                            inline.push((attempt, endpoint, started, outcome));
                        }
                    }
                    // A blocking call cannot be withdrawn; its late outcome is dropped.
                    Step::Cancel { .. } => {}
                    Step::Finish { attempt } => {
                        if call.budget_refused() {
                            self.inner
                                .total
                                .budget_exhausted
                                .fetch_add(1, Ordering::Relaxed);
                            remora_metrics::budget_exhausted();
                        }
                        let outcome = attempt.and_then(|a| outcomes.remove(&a));
                        if !call_span.is_disabled() {
                            let class = match &outcome {
                                Some(result) => remora_metrics::Outcome::of(result).as_str(),
                                None => "unanswered",
                            };
                            call_span.record("outcome", class);
                            call_span.record("final_attempt", attempt.unwrap_or(0));
                        }
                        return match outcome {
                            Some(Ok(mut response)) => {
                                for hook in &hooks {
                                    hook.after_receive(&mut response);
                                }
                                Ok(response)
                            }
                            Some(Err(e)) => Err(e),
                            None => Err(call.unanswered_error()),
                        };
                    }
                }
            }
            let next = match inline.pop() {
                Some(done) => Some(done),
                None => {
                    let now = self.inner.clock.now();
                    let wait = call.poll_timeout().map_or(Duration::ZERO, |t| t - now);
                    rx.recv_timeout(wait).ok()
                }
            };
            let now = self.inner.clock.now();
            match next {
                Some((attempt, endpoint, started, outcome)) => {
                    let class = classifier.classify(&outcome);
                    self.count_outcome(endpoint, class, now - started);
                    let unsent = matches!(&outcome, Err(e) if e.never_left());
                    outcomes.insert(attempt, outcome);
                    let entropy = self.entropy();
                    let mut machine = self.machine();
                    let before = (machine.breaker(endpoint), machine.is_ejected(endpoint, now));
                    if unsent {
                        call.handle_unsent(
                            &mut machine,
                            &call_opts,
                            attempt,
                            now,
                            entropy,
                            &mut steps,
                        );
                    } else {
                        call.handle_outcome(
                            &mut machine,
                            &call_opts,
                            attempt,
                            class,
                            now,
                            entropy,
                            &mut steps,
                        );
                    }
                    let after = (machine.breaker(endpoint), machine.is_ejected(endpoint, now));
                    drop(machine);
                    if before != after {
                        let address = &self.endpoint(endpoint).address;
                        remora_metrics::endpoint_health(address, &after.0, after.1);
                        tracing::info!(
                            endpoint = %address,
                            breaker = ?after.0,
                            ejected = after.1,
                            "endpoint health changed"
                        );
                    }
                }
                None => {
                    let entropy = self.entropy();
                    call.handle_timeout(&mut self.machine(), &call_opts, now, entropy, &mut steps);
                }
            }
        }
    }

    /// Sends a oneway request to the endpoint the balancer picks (never retried: nothing comes
    /// back to say it failed, and a write that may have gone out must not be repeated).
    pub fn oneway(&self, request: Command) -> Result<(), Error> {
        self.refresh();
        let config = &self.inner.config.policies;
        let call_opts = CallOptions {
            timeout: config.timeout,
            retry: config.retry(1),
            hedge: None,
            key: None,
            per_attempt: None,
        };
        let mut request = request;
        for hook in &self.inner.hooks {
            hook.before_send(&mut request);
        }
        let mut steps = Vec::new();
        let now = self.inner.clock.now();
        let mut call = Call::start(
            &mut self.machine(),
            &call_opts,
            now,
            self.entropy(),
            &mut steps,
        );
        let mut result = Err(Error::Unavailable {
            retry_in: Duration::ZERO,
        });
        while let Some(step) = steps.pop() {
            if let Step::Send {
                kind,
                attempt,
                endpoint,
                ..
            } = step
            {
                self.count_attempt(endpoint, kind);
                let client = self.endpoint(endpoint).client.clone();
                result = client.oneway(request.clone());
                let class = match &result {
                    Ok(()) => Class::Success,
                    Err(e) if e.is_safe_to_retry() => Class::Retryable,
                    Err(_) => Class::Fatal,
                };
                self.count_outcome(endpoint, class, Duration::ZERO);
                let entropy = self.entropy();
                call.handle_outcome(
                    &mut self.machine(),
                    &call_opts,
                    attempt,
                    class,
                    self.inner.clock.now(),
                    entropy,
                    &mut steps,
                );
            }
        }
        result
    }

    fn count_attempt(&self, endpoint: usize, kind: AttemptKind) {
        let ep = self.endpoint(endpoint);
        for c in [&ep.counters, &self.inner.total] {
            c.attempts.fetch_add(1, Ordering::Relaxed);
            match kind {
                AttemptKind::First => {}
                AttemptKind::Retry => {
                    c.retries.fetch_add(1, Ordering::Relaxed);
                }
                AttemptKind::Hedge => {
                    c.hedges.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn count_outcome(&self, endpoint: usize, class: Class, latency: Duration) {
        let ep = self.endpoint(endpoint);
        for c in [&ep.counters, &self.inner.total] {
            let counter = match class {
                Class::Success => &c.successes,
                Class::Retryable => &c.retryable_failures,
                Class::Fatal => &c.fatal_failures,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let micros = latency.as_micros() as u64;
        let _ = ep
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(micros);
        if class == Class::Success {
            let mut all = self.inner.latency.lock().unwrap_or_else(|e| e.into_inner());
            let _ = all.record(micros);
        }
    }

    /// Counters over all endpoints.
    pub fn totals(&self) -> &Counters {
        &self.inner.total
    }

    /// A snapshot of every endpoint.
    pub fn report(&self) -> Vec<EndpointReport> {
        let now = self.inner.clock.now();
        let endpoints = self.endpoints();
        let machine = self.machine();
        endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let h = ep.latency.lock().unwrap_or_else(|e| e.into_inner());
                let c = &ep.counters;
                EndpointReport {
                    address: ep.address.clone(),
                    attempts: c.attempts.load(Ordering::Relaxed),
                    successes: c.successes.load(Ordering::Relaxed),
                    retryable_failures: c.retryable_failures.load(Ordering::Relaxed),
                    fatal_failures: c.fatal_failures.load(Ordering::Relaxed),
                    breaker: machine.breaker(i),
                    ejected: machine.is_ejected(i, now),
                    latency_us: (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()),
                }
            })
            .collect()
    }

    /// Closes every endpoint's connections and stops the probes (idempotent).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for ep in self.endpoints().iter() {
            ep.client.close();
        }
    }
}

/// Probes ejected or breaker-open endpoints every `probe.every` until the cluster is closed or
/// dropped.
fn probe_loop(inner: &std::sync::Weak<Inner>, probe: remora_core::resilience::policies::Probe) {
    loop {
        std::thread::sleep(probe.every);
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let cluster = Cluster { inner };
        let now = cluster.inner.clock.now();
        let targets = cluster.machine().needing_probe(now);
        for i in targets {
            let ep = cluster.endpoint(i);
            let timeout = probe.every.min(cluster.inner.config.policies.timeout);
            let healthy = ep
                .client
                .call(Command::request(probe.code), timeout)
                .is_ok();
            cluster.machine().probe_result(i, healthy);
            tracing::info!(endpoint = %ep.address, healthy, "health probe");
        }
    }
}

/// One attempt inside its span (the client's request span nests under it).
fn observed_attempt(
    span: &tracing::Span,
    client: &Client,
    request: Command,
    timeout: Duration,
) -> Result<Command, Error> {
    let outcome = span.in_scope(|| client.call(request, timeout));
    remora_metrics::record_outcome(span, &outcome);
    outcome
}
