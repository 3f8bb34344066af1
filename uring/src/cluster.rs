//! A client over several endpoints on the current io_uring thread: balancing, retries, hedging,
//! circuit breaking and outlier ejection, all decided by `remora_core::resilience` (this file
//! only sends, waits and counts).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use remora_core::backoff::Backoff;
use remora_core::resilience::breaker::State as BreakerState;
use remora_core::resilience::call::{AttemptKind, Call, CallOptions, Endpoints, Step};
use remora_core::resilience::policies::Policies;
use remora_core::resilience::resolve::{diff, Resolver, Watch};
use remora_core::resilience::retry::{Class, Classifier, RetryPolicy, Schedule};
use remora_core::{CallError, Command, Hook, Instant, NotSupported};
use tracing::Instrument;

use crate::client::{ClientConfig, LocalClient};
use crate::conn::Clock;

/// How a [`LocalCluster`] behaves: each endpoint's client, and the core's resilience policies.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ClusterConfig {
    /// Each endpoint's client.
    pub client: ClientConfig,
    /// Balancing, breakers, ejection, budget, timeout, retries, hedging.
    pub policies: Policies,
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
    /// The key for consistent hashing.
    pub hash_key: Option<u64>,
    /// The request is idempotent: it may be retried even when it may have reached the server.
    pub idempotent: bool,
    /// This call's per-attempt limit (`None`: the policies').
    pub per_attempt_timeout: Option<Duration>,
    /// Response codes this call treats as retryable, replacing the default set (e.g. a
    /// service's own "try later" code).
    pub retryable_codes: Option<Vec<i32>>,
}

/// Attempts, retries, hedges and outcomes, per endpoint or in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Attempts sent.
    pub attempts: u64,
    /// Attempts that were retries.
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

struct Inner {
    clients: RefCell<Vec<(String, LocalClient)>>,
    resolver: Resolver,
    resolved_at: Cell<Instant>,
    watch: Option<Watch>,
    client_config: ClientConfig,
    machine: RefCell<Endpoints>,
    policies: Policies,
    hooks: Vec<Arc<dyn Hook>>,
    clock: Clock,
    entropy: Cell<u64>,
    counts: RefCell<Vec<Counts>>,
    latency: RefCell<Vec<Histogram<u64>>>,
    /// Successful attempts' latency over all endpoints (for percentile hedging).
    all_latency: RefCell<Histogram<u64>>,
    /// Whether the probe task was started (on the first call, inside the runtime).
    probing: Cell<bool>,
    closed: Cell<bool>,
}

/// A multi-endpoint client for code on a tokio-uring thread. Clone it within the thread.
#[derive(Clone)]
pub struct LocalCluster {
    inner: Rc<Inner>,
}

impl LocalCluster {
    /// A cluster over `addresses` (connections are made on demand).
    pub fn new(
        addresses: &[&str],
        config: ClusterConfig,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> Result<LocalCluster, CallError> {
        let list = addresses.iter().map(|a| a.to_string()).collect();
        LocalCluster::with_resolver(Resolver::Static(list), config, hooks, None)
    }

    /// A cluster whose endpoints come from `resolver`, re-resolved on its schedule (checked at
    /// each call); `watch` hears every new set. Endpoints that disappear are retired (calls in
    /// flight end normally), new ones join.
    pub fn with_resolver(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: Vec<Arc<dyn Hook>>,
        watch: Option<Watch>,
    ) -> Result<LocalCluster, CallError> {
        config.policies.validate().map_err(|e| {
            CallError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e).into())
        })?;
        let addresses = resolver.resolve();
        let clients = addresses
            .iter()
            .map(|a| {
                LocalClient::lazy(a.as_str(), config.client, Arc::new(NotSupported))
                    .map(|c| (a.clone(), c))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let machine = Endpoints::from_policies(&addresses, &config.policies);
        let n = clients.len();
        let clock = Clock::new();
        Ok(LocalCluster {
            inner: Rc::new(Inner {
                clients: RefCell::new(clients),
                resolver,
                resolved_at: Cell::new(clock.now()),
                watch,
                client_config: config.client,
                machine: RefCell::new(machine),
                policies: config.policies,
                hooks,
                clock,
                entropy: Cell::new(0x853C_49E6_748F_EA9B),
                counts: RefCell::new(vec![Counts::default(); n]),
                latency: RefCell::new(vec![histogram(); n]),
                all_latency: RefCell::new(histogram()),
                probing: Cell::new(false),
                closed: Cell::new(false),
            }),
        })
    }

    /// The endpoints now (retired ones left out).
    pub fn addresses(&self) -> Vec<String> {
        let machine = self.inner.machine.borrow();
        self.inner
            .clients
            .borrow()
            .iter()
            .enumerate()
            .filter(|(i, _)| !machine.is_retired(*i))
            .map(|(_, (a, _))| a.clone())
            .collect()
    }

    /// Starts the periodic health probes, if configured and not started yet.
    fn start_probes(&self) {
        let Some(probe) = self.inner.policies.probe else {
            return;
        };
        if self.inner.probing.replace(true) {
            return;
        }
        let weak = Rc::downgrade(&self.inner);
        tokio_uring::spawn(async move {
            loop {
                tokio::time::sleep(probe.every).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.closed.get() {
                    return;
                }
                let now = inner.clock.now();
                let targets = inner.machine.borrow().needing_probe(now);
                for i in targets {
                    let client = inner.clients.borrow()[i].1.clone();
                    let timeout = probe.every.min(inner.policies.timeout);
                    let healthy = client
                        .call(Command::request(probe.code), timeout)
                        .await
                        .is_ok();
                    inner.machine.borrow_mut().probe_result(i, healthy);
                    tracing::info!(endpoint = i, healthy, "health probe");
                }
            }
        });
    }

    /// Resolves again if the resolver's interval has passed, and applies the difference.
    pub fn refresh(&self) {
        let inner = &self.inner;
        let Some(every) = inner.resolver.every() else {
            return;
        };
        let now = inner.clock.now();
        if now - inner.resolved_at.get() < every {
            return;
        }
        inner.resolved_at.set(now);
        let wanted = inner.resolver.resolve();
        {
            let mut clients = inner.clients.borrow_mut();
            let mut machine = inner.machine.borrow_mut();
            let current: Vec<(usize, &str)> = clients
                .iter()
                .enumerate()
                .filter(|(i, _)| !machine.is_retired(*i))
                .map(|(i, (a, _))| (i, a.as_str()))
                .collect();
            let Some((retire, add)) = diff(&current, &wanted) else {
                return;
            };
            for i in retire {
                machine.retire(i);
                clients[i].1.close();
                tracing::info!(endpoint = %clients[i].0, "endpoint retired: no longer resolved");
            }
            for address in &add {
                let client = LocalClient::lazy(
                    address.as_str(),
                    inner.client_config,
                    Arc::new(NotSupported),
                );
                match client {
                    Ok(client) => {
                        clients.push((address.clone(), client));
                        machine.add(1);
                        inner.counts.borrow_mut().push(Counts::default());
                        inner.latency.borrow_mut().push(histogram());
                        tracing::info!(endpoint = %address, "endpoint added");
                    }
                    Err(e) => tracing::warn!(endpoint = %address, error = %e, "endpoint not added"),
                }
            }
            let ids: Vec<&str> = clients.iter().map(|(a, _)| a.as_str()).collect();
            machine.balancer_mut().set_ring(&ids);
        }
        if let Some(watch) = &inner.watch {
            watch(&self.addresses());
        }
    }

    fn entropy(&self) -> u64 {
        let z0 = self.inner.entropy.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.inner.entropy.set(z0);
        let mut z = (z0 ^ (z0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Sends `request` with the cluster's policies.
    pub async fn call(&self, request: Command) -> Result<Command, CallError> {
        self.call_with(request, CallOpts::default()).await
    }

    /// Sends `request` with per-call options.
    pub async fn call_with(
        &self,
        mut request: Command,
        opts: CallOpts,
    ) -> Result<Command, CallError> {
        self.start_probes();
        self.refresh();
        let p = &self.inner.policies;
        let mut classifier = Classifier {
            retry_possibly_delivered: opts.idempotent,
            ..Classifier::default()
        };
        if let Some(codes) = &opts.retryable_codes {
            classifier.retryable_codes = codes;
        }
        let call_opts = CallOptions {
            timeout: opts.timeout.unwrap_or(p.timeout),
            retry: RetryPolicy {
                max_attempts: opts.max_attempts.unwrap_or(p.max_attempts),
                schedule: Schedule::Exponential(opts.backoff.unwrap_or(p.backoff)),
            },
            hedge: p.hedge_for(|q| {
                let h = self.inner.all_latency.borrow();
                (h.len() >= 100).then(|| Duration::from_micros(h.value_at_quantile(q)))
            }),
            key: opts.hash_key,
            per_attempt: opts.per_attempt_timeout.or(p.per_attempt_timeout),
        };
        let hooks: Vec<&Arc<dyn Hook>> = self.inner.hooks.iter().chain(&opts.hooks).collect();
        for hook in &hooks {
            hook.before_send(&mut request);
        }
        type Outcome = (u32, usize, Instant, Result<Command, CallError>);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
        let mut steps = Vec::new();
        let mut call = Call::start(
            &mut self.inner.machine.borrow_mut(),
            &call_opts,
            self.inner.clock.now(),
            self.entropy(),
            &mut steps,
        );
        let mut running = HashMap::new();
        let mut outcomes: HashMap<u32, Result<Command, CallError>> = HashMap::new();
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
                        let client = self.inner.clients.borrow()[endpoint].1.clone();
                        let started = self.inner.clock.now();
                        let timeout = deadline - started;
                        let attempt_request = request.clone();
                        let tx = tx.clone();
                        let span = remora_metrics::attempt_span(
                            attempt,
                            kind,
                            &self.inner.clients.borrow()[endpoint].0,
                        );
                        let task = tokio_uring::spawn(async move {
                            let outcome = client
                                .call(attempt_request, timeout)
                                .instrument(span.clone())
                                .await;
                            remora_metrics::record_outcome(&span, &outcome);
                            let _ = tx.send((attempt, endpoint, started, outcome));
                        });
                        running.insert(attempt, task);
                    }
                    Step::Cancel { attempt } => {
                        // Dropping the attempt's call future withdraws or cancels its request.
                        if let Some(task) = running.remove(&attempt) {
                            task.abort();
                        }
                    }
                    Step::Finish { attempt } => {
                        if call.budget_refused() {
                            if let Some(last) = call.endpoints().last() {
                                self.inner.counts.borrow_mut()[last].budget_exhausted += 1;
                            }
                            remora_metrics::budget_exhausted();
                        }
                        for (_, task) in running.drain() {
                            task.abort();
                        }
                        return match attempt.and_then(|a| outcomes.remove(&a)) {
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
            let wake = call
                .poll_timeout()
                .unwrap_or_else(|| self.inner.clock.now());
            let next = tokio::select! {
                outcome = rx.recv() => outcome,
                _ = tokio::time::sleep_until(self.inner.clock.to_tokio(wake)) => None,
            };
            let now = self.inner.clock.now();
            let entropy = self.entropy();
            let mut machine = self.inner.machine.borrow_mut();
            match next {
                Some((attempt, endpoint, started, outcome)) => {
                    running.remove(&attempt);
                    let class = classifier.classify(&outcome);
                    self.count_outcome(endpoint, class);
                    let micros = (now - started).as_micros() as u64;
                    let _ = self.inner.latency.borrow_mut()[endpoint].record(micros);
                    if class == Class::Success {
                        let _ = self.inner.all_latency.borrow_mut().record(micros);
                    }
                    let unsent = matches!(&outcome, Err(e) if e.never_left());
                    outcomes.insert(attempt, outcome);
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
                    if before != after {
                        let address = &self.inner.clients.borrow()[endpoint].0;
                        remora_metrics::endpoint_health(address, &after.0, after.1);
                        tracing::info!(
                            endpoint,
                            breaker = ?after.0,
                            ejected = after.1,
                            "endpoint health changed"
                        );
                    }
                }
                None => call.handle_timeout(&mut machine, &call_opts, now, entropy, &mut steps),
            }
        }
    }

    /// Sends a oneway request to the endpoint the balancer picks (never retried: nothing reports
    /// a failure, and a possibly-sent oneway must not repeat).
    pub async fn oneway(&self, mut request: Command) -> Result<(), CallError> {
        self.refresh();
        let p = &self.inner.policies;
        let call_opts = CallOptions {
            timeout: p.timeout,
            retry: p.retry(1),
            hedge: None,
            key: None,
            per_attempt: None,
        };
        for hook in &self.inner.hooks {
            hook.before_send(&mut request);
        }
        let mut steps = Vec::new();
        let now = self.inner.clock.now();
        let mut call = Call::start(
            &mut self.inner.machine.borrow_mut(),
            &call_opts,
            now,
            self.entropy(),
            &mut steps,
        );
        let mut result = Err(CallError::Unavailable {
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
                let client = self.inner.clients.borrow()[endpoint].1.clone();
                result = client.oneway(request.clone()).await;
                let class = match &result {
                    Ok(()) => Class::Success,
                    Err(e) if e.is_safe_to_retry() => Class::Retryable,
                    Err(_) => Class::Fatal,
                };
                self.count_outcome(endpoint, class);
                let entropy = self.entropy();
                call.handle_outcome(
                    &mut self.inner.machine.borrow_mut(),
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
        let mut counts = self.inner.counts.borrow_mut();
        let c = &mut counts[endpoint];
        c.attempts += 1;
        match kind {
            AttemptKind::First => {}
            AttemptKind::Retry => c.retries += 1,
            AttemptKind::Hedge => c.hedges += 1,
        }
    }

    fn count_outcome(&self, endpoint: usize, class: Class) {
        let mut counts = self.inner.counts.borrow_mut();
        let c = &mut counts[endpoint];
        match class {
            Class::Success => c.successes += 1,
            Class::Retryable => c.retryable_failures += 1,
            Class::Fatal => c.fatal_failures += 1,
        }
    }

    /// Endpoint `i`'s attempt latency: p50, p99 and max, in microseconds.
    pub fn latency_us(&self, i: usize) -> (u64, u64, u64) {
        let h = &self.inner.latency.borrow()[i];
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
    }

    /// Counts over all endpoints.
    pub fn totals(&self) -> Counts {
        self.inner
            .counts
            .borrow()
            .iter()
            .fold(Counts::default(), |t, c| Counts {
                attempts: t.attempts + c.attempts,
                retries: t.retries + c.retries,
                hedges: t.hedges + c.hedges,
                successes: t.successes + c.successes,
                retryable_failures: t.retryable_failures + c.retryable_failures,
                fatal_failures: t.fatal_failures + c.fatal_failures,
                budget_exhausted: t.budget_exhausted + c.budget_exhausted,
            })
    }

    /// Counts per endpoint, in the order of the addresses given.
    pub fn counts(&self) -> Vec<Counts> {
        self.inner.counts.borrow().clone()
    }

    /// Endpoint `i`'s breaker state and whether it is ejected now.
    pub fn health(&self, i: usize) -> (BreakerState, bool) {
        let m = self.inner.machine.borrow();
        (m.breaker(i), m.is_ejected(i, self.inner.clock.now()))
    }

    /// Closes every endpoint's connections and stops the probes.
    pub fn close(&self) {
        self.inner.closed.set(true);
        for (_, c) in self.inner.clients.borrow().iter() {
            c.close();
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
