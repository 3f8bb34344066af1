//! A client over several endpoints on the current io_uring thread. Every decision is
//! `remora_core::resilience::cluster`'s; this file spawns attempts as local tasks, waits on a
//! channel or the call's next deadline, and keeps latency histograms.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use remora_core::resilience::breaker::State as BreakerState;
use remora_core::resilience::cluster::{
    before_send, Action, CallDefaults, ClusterCall, ClusterState,
};
use remora_core::resilience::resolve::Resolve;
use remora_core::{CallError, Command, Hook, NotSupported};
use remora_driver::{record, Latency};
use remora_tls::ClientTls;

use tracing::Instrument;

use crate::client::{ClientConfig, LocalClient};
use crate::conn::Clock;

pub use remora_core::resilience::cluster::{CallOpts, ClusterError, Counts, Fallback};
pub use remora_core::resilience::resolve::{Resolver, Watch};

/// How a cluster behaves: each endpoint's [`ClientConfig`], and the core's resilience policies.
pub type ClusterConfig = remora_core::resilience::cluster::ClusterConfig<ClientConfig>;

struct Inner {
    /// Per endpoint: address, client, attempt latency.
    endpoints: RefCell<Vec<Rc<Endpoint>>>,
    state: RefCell<ClusterState>,
    resolver: Resolver,
    watch: Option<Watch>,
    client_config: ClientConfig,
    /// Every endpoint's TLS (SNI: its host, or the name `tls` gives), or plaintext.
    tls: Option<ClientTls>,
    defaults: CallDefaults,
    clock: Clock,
    /// Successful attempts' latency over all endpoints (for percentile hedging).
    all_latency: Latency,
    /// Whether the probe task was started (on the first call, inside the runtime).
    probing: Cell<bool>,
    closed: Cell<bool>,
}

/// A multi-endpoint client for code on a tokio-uring thread. Clone it within the thread.
#[derive(Clone)]
pub struct LocalCluster {
    inner: Rc<Inner>,
}

type Endpoint = remora_driver::Endpoint<LocalClient>;

fn endpoint(
    address: String,
    config: ClientConfig,
    tls: &Option<ClientTls>,
) -> Result<Rc<Endpoint>, CallError> {
    let handler = Arc::new(NotSupported);
    let client = match tls {
        Some(tls) => LocalClient::lazy_tls(&address, config, handler, tls.clone())?,
        None => LocalClient::lazy(address.as_str(), config, handler)?,
    };
    Ok(Rc::new(Endpoint::new(address, client)))
}

impl LocalCluster {
    /// A cluster over `addresses` (connections are made on demand).
    pub fn new(
        addresses: &[&str],
        config: ClusterConfig,
        hooks: impl IntoIterator<Item = Arc<dyn Hook>>,
    ) -> Result<LocalCluster, ClusterError> {
        let resolver = Resolver::fixed(addresses);
        LocalCluster::with_resolver(resolver, config, hooks, None)
    }

    /// A cluster whose endpoints come from `resolver`, asked again on its schedule (checked at
    /// each call); `watch` hears every new set. Endpoints that disappear are retired (calls in
    /// flight end normally), new ones join.
    pub fn with_resolver(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: impl IntoIterator<Item = Arc<dyn Hook>>,
        watch: Option<Watch>,
    ) -> Result<LocalCluster, ClusterError> {
        LocalCluster::with_tls(resolver, config, hooks, watch, None)
    }

    /// [`LocalCluster::with_resolver`], every endpoint over TLS with `tls` when it is `Some`:
    /// each endpoint's host is its SNI name (unless `tls` names one), and a failed handshake is
    /// a failed connect (never written), retried on another endpoint like a refused connection.
    pub fn with_tls(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: impl IntoIterator<Item = Arc<dyn Hook>>,
        watch: Option<Watch>,
        tls: Option<ClientTls>,
    ) -> Result<LocalCluster, ClusterError> {
        let (seed, clock) = (remora_driver::seed(), Clock::new());
        let found = resolver.resolve();
        let state = ClusterState::new(found.clone(), config.policies, clock.now(), seed)?;
        let endpoints = found.into_iter().map(|a| endpoint(a, config.client, &tls));
        let inner = Rc::new(Inner {
            endpoints: RefCell::new(endpoints.collect::<Result<_, CallError>>()?),
            state: RefCell::new(state),
            resolver,
            watch,
            client_config: config.client,
            tls,
            defaults: CallDefaults {
                hooks: hooks.into_iter().collect(),
                policies: config.policies,
                connection: config.client.connection,
            },
            clock,
            all_latency: Latency::new(),
            probing: Cell::new(false),
            closed: Cell::new(false),
        });
        Ok(LocalCluster { inner })
    }

    /// The endpoints now (retired ones left out).
    pub fn addresses(&self) -> Vec<String> {
        self.inner.state.borrow().addresses()
    }

    /// Starts the periodic health probes, if configured and not started yet.
    fn start_probes(&self) {
        let Some(probe) = self.inner.defaults.policies.probe else {
            return;
        };
        if self.inner.probing.replace(true) {
            return;
        }
        let weak = Rc::downgrade(&self.inner);
        tokio_uring::spawn(async move {
            loop {
                tokio::time::sleep(probe.every).await;
                let Some(inner) = weak.upgrade().filter(|i| !i.closed.get()) else {
                    return;
                };
                let targets = inner.state.borrow().probe_targets(inner.clock.now());
                let Some((request, timeout)) = inner.state.borrow().probe_request() else {
                    return;
                };
                for i in targets {
                    let client = inner.endpoints.borrow()[i].client.clone();
                    let outcome = client.call(request.clone(), timeout).await;
                    let healthy = inner.state.borrow_mut().probe_result(i, &outcome);
                    tracing::info!(endpoint = i, healthy, "health probe");
                }
            }
        });
    }

    /// Asks the resolver again if its interval has passed, and applies the difference.
    pub fn refresh(&self) {
        let (inner, now) = (&self.inner, self.inner.clock.now());
        if !inner
            .state
            .borrow_mut()
            .refresh_due(inner.resolver.every(), now)
        {
            return;
        }
        // Asked with nothing borrowed: the resolver may look at this cluster.
        let wanted = inner.resolver.resolve();
        let (mut state, mut endpoints) = (inner.state.borrow_mut(), inner.endpoints.borrow_mut());
        let (config, tls) = (inner.client_config, &inner.tls);
        let Some(change) = state.apply(&wanted, |address| {
            endpoints.push(endpoint(address.to_string(), config, tls)?);
            Ok::<(), CallError>(())
        }) else {
            return;
        };
        for &i in &change.retired {
            endpoints[i].client.close();
        }
        tracing::info!(?change, "resolver changed the endpoints");
        let set = state.addresses();
        drop((state, endpoints));
        if let Some(watch) = inner.watch.as_ref() {
            watch(&set);
        }
    }

    /// Sends `request` with the cluster's policies.
    pub async fn call(&self, request: Command) -> Result<Command, CallError> {
        self.call_with(request, CallOpts::default()).await
    }

    /// Sends `request` with per-call options.
    pub async fn call_with(&self, request: Command, opts: CallOpts) -> Result<Command, CallError> {
        let span = remora_metrics::cluster_call_span(request.code);
        let run = self.run(request, opts, &span);
        run.instrument(span.clone()).await
    }

    async fn run(
        &self,
        mut request: Command,
        opts: CallOpts,
        call_span: &tracing::Span,
    ) -> Result<Command, CallError> {
        self.start_probes();
        self.refresh();
        let inner = &*self.inner;
        let mut call = inner.all_latency.with_quantiles(|latency| {
            ClusterCall::new(&mut request, opts, &inner.defaults, latency)
        })?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut running = HashMap::new();
        loop {
            let now = inner.clock.now();
            let action = call.poll(&mut inner.state.borrow_mut(), now);
            if let Some(Action::Send(a)) = action {
                let endpoint = Rc::clone(&inner.endpoints.borrow()[a.endpoint]);
                let span = remora_metrics::attempt_span(a.number, a.kind, &endpoint.address);
                let (client, tx, attempt_request) =
                    (endpoint.client.clone(), tx.clone(), call.frame().clone());
                let task = tokio_uring::spawn(async move {
                    let send = client.call(&attempt_request, a.timeout);
                    let _ = tx.send((a.number, remora_metrics::attempt_async(span, send).await));
                });
                running.insert(a.number, task);
            } else if let Some(Action::Cancel { attempt }) = action {
                // Dropping the attempt's call future withdraws or cancels its request.
                running.remove(&attempt).inspect(|task| task.abort());
            } else if let Some(Action::Done) = action {
                running.into_values().for_each(|task| task.abort());
                return remora_metrics::call_finished(call_span, call, &request);
            } else {
                let wake = inner.clock.at(call.wake_at().unwrap_or(now));
                let next = tokio::select! {
                    outcome = rx.recv() => outcome,
                    _ = tokio::time::sleep_until(wake) => None,
                };
                let mut state = inner.state.borrow_mut();
                let now = inner.clock.now();
                if let Some((attempt, outcome)) = next {
                    running.remove(&attempt);
                    let report = call.on_outcome(&mut state, attempt, outcome, now);
                    drop(state);
                    let endpoint = |i| Rc::clone(&inner.endpoints.borrow()[i]);
                    report.inspect(|r| record(r, &endpoint(r.endpoint), &inner.all_latency));
                } else {
                    call.on_timeout(&mut state, now);
                }
            }
        }
    }

    /// Sends a oneway request to the endpoint the balancer picks (never retried: nothing reports
    /// a failure, and a possibly-sent oneway must not repeat).
    pub async fn oneway(&self, mut request: Command) -> Result<(), CallError> {
        self.refresh();
        let inner = &self.inner;
        before_send(&inner.defaults.hooks, &mut request);
        let picked = inner.state.borrow_mut().oneway(inner.clock.now())?;
        let client = inner.endpoints.borrow()[picked.endpoint].client.clone();
        let written = client.oneway(request).await;
        inner
            .state
            .borrow_mut()
            .oneway_done(picked, &written, inner.clock.now());
        written
    }

    /// Endpoint `i`'s attempt latency: p50, p99 and max, in microseconds.
    pub fn latency_us(&self, i: usize) -> (u64, u64, u64) {
        self.inner.endpoints.borrow()[i].latency.percentiles()
    }

    /// Counts over all endpoints.
    pub fn totals(&self) -> Counts {
        self.inner.state.borrow().totals()
    }

    /// Counts per endpoint, in the order of the addresses given.
    pub fn counts(&self) -> Vec<Counts> {
        let state = self.inner.state.borrow();
        (0..state.len()).map(|i| state.counts(i)).collect()
    }

    /// Endpoint `i`'s breaker state and whether it is ejected now.
    pub fn health(&self, i: usize) -> (BreakerState, bool) {
        self.inner.state.borrow().health(i, self.inner.clock.now())
    }

    /// Closes every endpoint's connections and stops the probes.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.inner
            .endpoints
            .borrow()
            .iter()
            .for_each(|e| e.client.close());
    }
}
