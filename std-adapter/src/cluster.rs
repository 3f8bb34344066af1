//! A client over several endpoints. Every decision (balancing, retries, hedging, breakers,
//! ejection, probes, resolver changes, hooks, fallback) is `remora_core::resilience::cluster`'s;
//! this file sends, waits on threads and a channel, and keeps latency histograms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use remora_core::resilience::cluster::{
    before_send, Action, CallDefaults, ClusterCall, ClusterState,
};
use remora_core::resilience::resolve::Resolve;
use remora_core::Command;
use remora_driver::{record, Latency};
use remora_tls::ClientTls;

use crate::conn::Clock;
use crate::{Client, ClientConfig, Error, NotSupported};

pub use remora_core::resilience::cluster::{
    CallOpts, ClusterError, Counts, EndpointReport, Fallback,
};
pub use remora_core::resilience::resolve::{Resolver, Watch};
pub use remora_core::Hook;

/// How a cluster behaves: each endpoint's [`ClientConfig`], and the core's resilience policies.
pub type ClusterConfig = remora_core::resilience::cluster::ClusterConfig<ClientConfig>;

type Endpoint = remora_driver::Endpoint<Client>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    closed: AtomicBool,
    /// Lock order everywhere: `endpoints`, then `state`.
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    state: Mutex<ClusterState>,
    resolver: Resolver,
    watch: Option<Watch>,
    config: ClusterConfig,
    /// Every endpoint's TLS (SNI: its host, or the name `tls` gives), or plaintext.
    tls: Option<ClientTls>,
    defaults: CallDefaults,
    clock: Clock,
    /// Successful attempts' latency over all endpoints (for percentile hedging).
    latency: Latency,
}

/// A client over several endpoints of one service. Cheap to clone; share it between threads.
///
/// Each call goes to the endpoint the core's balancer picks among those whose breaker is closed
/// and that are not ejected; retryable failures are retried on another endpoint after the
/// backoff while the retry budget allows; with hedging, an unanswered attempt is backed up on
/// another endpoint after the hedge delay (each attempt then runs on a thread of its own) and
/// the first success wins.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// A cluster over `addresses` (connections are made on demand, so endpoints that are down
    /// now do not stop it).
    pub fn new(addresses: &[&str], config: ClusterConfig) -> Result<Cluster, ClusterError> {
        Cluster::with_hooks(addresses, config, Vec::new())
    }

    /// Like [`Cluster::new`], with hooks run around every call (in order).
    pub fn with_hooks(
        addresses: &[&str],
        config: ClusterConfig,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> Result<Cluster, ClusterError> {
        Cluster::with_resolver(Resolver::fixed(addresses), config, hooks, None)
    }

    /// A cluster whose endpoints come from `resolver`, asked again on its schedule (checked at
    /// each call); `watch` is told the new set whenever it changes. Endpoints that disappear are
    /// retired (calls in flight to them end normally); new ones join the balancer.
    pub fn with_resolver(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: Vec<Arc<dyn Hook>>,
        watch: Option<Watch>,
    ) -> Result<Cluster, ClusterError> {
        Cluster::with_tls(resolver, config, hooks, watch, None)
    }

    /// [`Cluster::with_resolver`], every endpoint over TLS with `tls` when it is `Some`: each
    /// endpoint's host is its SNI name (unless `tls` names one), and a failed handshake is a
    /// failed connect (never written), retried on another endpoint like a refused connection.
    pub fn with_tls(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: Vec<Arc<dyn Hook>>,
        watch: Option<Watch>,
        tls: Option<ClientTls>,
    ) -> Result<Cluster, ClusterError> {
        let (clock, seed) = (Clock::new(), remora_driver::seed());
        let addresses = resolver.resolve();
        let state = ClusterState::new(addresses.clone(), config.policies, clock.now(), seed)?;
        let endpoints = addresses
            .into_iter()
            .map(|a| endpoint(a, config.client, &tls));
        let inner = Arc::new(Inner {
            closed: AtomicBool::new(false),
            endpoints: RwLock::new(endpoints.collect::<Result<_, _>>()?),
            state: Mutex::new(state),
            resolver,
            watch,
            config,
            tls,
            defaults: CallDefaults {
                hooks,
                policies: config.policies,
                connection: config.client.connection,
            },
            clock,
            latency: Latency::new(),
        });
        if let Some(probe) = config.policies.probe {
            let weak = Arc::downgrade(&inner);
            let thread = std::thread::Builder::new().name("remora-cluster-probe".into());
            thread
                .spawn(move || probe_loop(&weak, probe.every))
                .map_err(|e| Error::Connect(e.into()))?;
        }
        Ok(Cluster { inner })
    }

    fn endpoints(&self) -> RwLockReadGuard<'_, Vec<Arc<Endpoint>>> {
        self.inner
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn endpoint(&self, i: usize) -> Arc<Endpoint> {
        Arc::clone(&self.endpoints()[i])
    }

    fn state(&self) -> MutexGuard<'_, ClusterState> {
        lock(&self.inner.state)
    }

    /// The endpoints now (retired ones left out).
    pub fn addresses(&self) -> Vec<String> {
        self.state().addresses()
    }

    /// Asks the resolver again if its interval has passed, and applies the difference.
    pub fn refresh(&self) {
        let inner = &self.inner;
        if !self
            .state()
            .refresh_due(inner.resolver.every(), inner.clock.now())
        {
            return;
        }
        let wanted = inner.resolver.resolve();
        let mut endpoints = inner.endpoints.write().unwrap_or_else(|e| e.into_inner());
        let open = |a: &str| endpoint(a.into(), inner.config.client, &inner.tls);
        let push = |a: &str| open(a).map(|e| endpoints.push(e));
        let Some(change) = self.state().apply(&wanted, push) else {
            return;
        };
        change
            .retired
            .iter()
            .for_each(|&i| endpoints[i].client.close());
        tracing::info!(?change, "endpoints changed: resolver");
        drop(endpoints);
        if let Some(watch) = &inner.watch {
            watch(&self.addresses());
        }
    }

    /// Sends `request` with the cluster's policies.
    pub fn call(&self, request: Command) -> Result<Command, Error> {
        self.call_with(request, CallOpts::default())
    }

    /// Sends `request` with per-call options.
    pub fn call_with(&self, mut request: Command, opts: CallOpts) -> Result<Command, Error> {
        let call_span = remora_metrics::cluster_call_span(request.code);
        let _in_call = call_span.enter();
        self.refresh();
        let (inner, mut inline) = (&self.inner, Vec::new());
        let mut call = inner.latency.with_quantiles(|latency| {
            ClusterCall::new(&mut request, opts, &inner.defaults, latency)
        })?;
        let (tx, rx) = mpsc::channel();
        loop {
            let now = inner.clock.now();
            let action = call.poll(&mut self.state(), now);
            match action {
                Some(Action::Send(a)) => {
                    let endpoint = self.endpoint(a.endpoint);
                    let span = remora_metrics::attempt_span(a.number, a.kind, &endpoint.address);
                    let (client, frame) = (endpoint.client.clone(), call.frame().clone());
                    let send = move || client.call(&frame, a.timeout);
                    if !a.parallel {
                        inline.push((a.number, remora_metrics::attempt(&span, send)));
                        continue;
                    }
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        let _ = tx.send((a.number, remora_metrics::attempt(&span, send)));
                    });
                }
                // A blocking call cannot be withdrawn; its late outcome is dropped.
                Some(Action::Cancel { .. }) => {}
                Some(Action::Done) => {
                    return remora_metrics::call_finished(&call_span, call, &request)
                }
                None => {
                    let wait = call.wake_at().map_or(Duration::ZERO, |t| t - now);
                    let next = inline.pop().or_else(|| rx.recv_timeout(wait).ok());
                    let now = inner.clock.now();
                    let Some((attempt, outcome)) = next else {
                        call.on_timeout(&mut self.state(), now);
                        continue;
                    };
                    let report = call.on_outcome(&mut self.state(), attempt, outcome, now);
                    let all = &inner.latency;
                    report.inspect(|r| record(r, &self.endpoint(r.endpoint), all));
                }
            }
        }
    }

    /// Sends a oneway request to the endpoint the balancer picks (never retried: nothing comes
    /// back to say it failed, and a write that may have gone out must not be repeated).
    pub fn oneway(&self, mut request: Command) -> Result<(), Error> {
        self.refresh();
        before_send(&self.inner.defaults.hooks, &mut request);
        let oneway = self.state().oneway(self.inner.clock.now())?;
        let result = self.endpoint(oneway.endpoint).client.oneway(request);
        self.state()
            .oneway_done(oneway, &result, self.inner.clock.now());
        result
    }

    /// Counts over all endpoints.
    pub fn totals(&self) -> Counts {
        self.state().totals()
    }

    /// A snapshot of every endpoint.
    pub fn report(&self) -> Vec<EndpointReport> {
        let (endpoints, now) = (self.endpoints(), self.inner.clock.now());
        let state = self.state();
        let report =
            |(i, e): (usize, &Arc<Endpoint>)| state.report(i, now, e.latency.percentiles());
        endpoints.iter().enumerate().map(report).collect()
    }

    /// Closes every endpoint's connections and stops the probes (idempotent).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.endpoints().iter().for_each(|e| e.client.close());
    }
}

fn endpoint(
    address: String,
    config: ClientConfig,
    tls: &Option<ClientTls>,
) -> Result<Arc<Endpoint>, Error> {
    let client = match tls {
        Some(tls) => Client::lazy_tls(&address, config, NotSupported, tls.clone())?,
        None => Client::lazy(address.as_str(), config, NotSupported)?,
    };
    Ok(Arc::new(Endpoint::new(address, client)))
}

/// Probes the endpoints the core names every `every` until the cluster is closed or dropped.
fn probe_loop(inner: &Weak<Inner>, every: Duration) {
    loop {
        std::thread::sleep(every);
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let cluster = Cluster { inner };
        let state = cluster.state();
        let targets = state.probe_targets(cluster.inner.clock.now());
        let Some((request, timeout)) = state.probe_request() else {
            return;
        };
        drop(state);
        for i in targets {
            let endpoint = cluster.endpoint(i);
            let outcome = endpoint.client.call(request.clone(), timeout);
            let healthy = cluster.state().probe_result(i, &outcome);
            tracing::info!(endpoint = %endpoint.address, healthy, "health probe");
        }
    }
}
