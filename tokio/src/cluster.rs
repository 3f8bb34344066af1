//! A client over several endpoints, for tokio. Every decision (balancing, retries, hedging,
//! breakers, ejection, probes, resolver changes, hooks, fallback) is
//! `remora_core::resilience::cluster`'s; this file runs each attempt as a task in a `JoinSet`,
//! waits for the first of an attempt's end and the call's next deadline, and keeps histograms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use remora_core::resilience::cluster::{
    before_send, Action, CallDefaults, ClusterCall, ClusterState,
};
use remora_core::resilience::resolve::Resolve;
use remora_core::{CallError, Command, NotSupported};
use remora_driver::{record, Latency};
use remora_tls::ClientTls;
use tokio::task::{AbortHandle, JoinSet};

use crate::client::{Client, ClientConfig};
use crate::conn::Clock;

pub use remora_core::resilience::cluster::{
    CallOpts, ClusterError, Counts, EndpointReport, Fallback,
};
pub use remora_core::resilience::resolve::{Resolver, Watch};
pub use remora_core::Hook;

/// How a cluster behaves: each endpoint's [`ClientConfig`], and the core's resilience policies.
pub type ClusterConfig = remora_core::resilience::cluster::ClusterConfig<ClientConfig>;

type Endpoint = remora_driver::Endpoint<Client>;

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    /// Index `i` is the core's endpoint `i`: address, client, its attempts' latency. Lock
    /// order: `endpoints`, then `state`.
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    state: Mutex<ClusterState>,
    clock: Clock,
    config: ClusterConfig,
    /// Every endpoint's TLS (SNI: its host, or the name `tls` gives), or plaintext.
    tls: Option<ClientTls>,
    defaults: CallDefaults,
    resolver: Resolver,
    watch: Option<Watch>,
    /// Successful attempts over every endpoint (for percentile hedging).
    all: Latency,
    probing: AtomicBool,
    closed: AtomicBool,
}

/// A multi-endpoint client on tokio: `Send + Sync + Clone`, so tasks on any threads share it.
///
/// Each call goes where the core's balancer sends it (closed breaker, not ejected); retryable
/// failures go to another endpoint after the backoff while the retry budget allows; with
/// hedging, an unanswered attempt is backed up elsewhere after the hedge delay and the first
/// success wins. Attempts the core cancels (a hedge lost, the call is over) are aborted, which
/// drops their call and withdraws an unwritten request. Endpoints connect on demand, on the
/// runtime of the first call that needs them.
///
/// ```no_run
/// use remora_core::Command;
/// use remora_tokio::{CallOpts, Cluster, ClusterConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let addresses = ["10.0.0.1:9876", "10.0.0.2:9876"];
/// let cluster = Cluster::new(&addresses, ClusterConfig::production(), &[])?;
/// let opts = CallOpts { idempotent: true, ..CallOpts::default() };
/// let response = cluster.call_with(Command::request(105), opts).await?;
/// println!("{} from one of {:?}; {:?}", response.code, cluster.addresses(), cluster.totals());
/// cluster.close();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

fn open(
    address: &str,
    config: ClientConfig,
    tls: &Option<ClientTls>,
) -> Result<Arc<Endpoint>, CallError> {
    let client = match tls {
        Some(tls) => Client::lazy_tls(address, config, NotSupported, tls.clone())?,
        None => Client::lazy(address, config, NotSupported)?,
    };
    Ok(Arc::new(Endpoint::new(address.to_owned(), client)))
}

impl Cluster {
    /// A cluster over `addresses` (`ip:port`; each is parsed now, connected on demand) with
    /// `hooks` run around every call, in order.
    pub fn new(
        addresses: &[&str],
        config: ClusterConfig,
        hooks: &[Arc<dyn Hook>],
    ) -> Result<Self, ClusterError> {
        Self::with_resolver(Resolver::fixed(addresses), config, hooks, None)
    }

    /// A cluster whose endpoints come from `resolver` (asked here, then again on its schedule,
    /// checked at each call: see [`Cluster::refresh`]); `watch` hears every new set. Endpoints that disappear
    /// are retired (their calls in flight end normally); new ones join the balancer.
    pub fn with_resolver(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: &[Arc<dyn Hook>],
        watch: Option<Watch>,
    ) -> Result<Self, ClusterError> {
        Self::with_tls(resolver, config, hooks, watch, None)
    }

    /// [`Cluster::with_resolver`], every endpoint over TLS with `tls` when it is `Some`: each
    /// endpoint's host is its SNI name (unless `tls` names one), and a failed handshake is a
    /// failed connect (never written), retried on another endpoint like a refused connection.
    pub fn with_tls(
        resolver: Resolver,
        config: ClusterConfig,
        hooks: &[Arc<dyn Hook>],
        watch: Option<Watch>,
        tls: Option<ClientTls>,
    ) -> Result<Self, ClusterError> {
        let clock = Clock::new();
        let found = resolver.resolve();
        let seed = remora_driver::seed();
        let state = ClusterState::new(found.clone(), config.policies, clock.now(), seed)?;
        let mut endpoints = Vec::with_capacity(found.len());
        for address in &found {
            endpoints.push(open(address, config.client, &tls)?);
        }
        let defaults = CallDefaults {
            hooks: hooks.to_vec(),
            policies: config.policies,
            connection: config.client.connection,
        };
        let shared = Shared {
            endpoints: RwLock::new(endpoints),
            state: Mutex::new(state),
            clock,
            config,
            tls,
            defaults,
            resolver,
            watch,
            all: Latency::new(),
            probing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        };
        Ok(Cluster {
            shared: Arc::new(shared),
        })
    }

    fn state(&self) -> MutexGuard<'_, ClusterState> {
        guard(&self.shared.state)
    }

    fn at(&self, i: usize) -> Arc<Endpoint> {
        let all = self.shared.endpoints.read();
        Arc::clone(&all.unwrap_or_else(PoisonError::into_inner)[i])
    }

    /// The endpoints now (retired ones left out).
    pub fn addresses(&self) -> Vec<String> {
        self.state().addresses()
    }

    /// Asks the resolver again if its interval has passed, and applies the difference. The
    /// resolver runs on tokio's blocking pool, so a blocking one (a DNS lookup such as
    /// `remora_std::Dns`, a file read) does not stall the runtime; if it panics, nothing changes.
    pub async fn refresh(&self) {
        let (s, resolver) = (&*self.shared, self.shared.resolver.clone());
        if !self.state().refresh_due(resolver.every(), s.clock.now()) {
            return;
        }
        let asked = tokio::task::spawn_blocking(move || resolver.resolve()).await;
        let Ok(wanted) = asked else { return };
        let mut all = s.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        let change = self.state().apply(&wanted, |address| {
            all.push(open(address, s.config.client, &s.tls)?);
            Ok::<_, CallError>(())
        });
        let Some(change) = change else { return };
        change.retired.iter().for_each(|&i| all[i].client.close());
        drop(all);
        tracing::info!(?change, "the resolver changed the endpoints");
        if let Some(watch) = &s.watch {
            watch(&self.addresses());
        }
    }

    /// Sends `request` with per-call options (timeout, attempts, idempotence, hash key,
    /// hooks, retryable codes, fallback).
    pub async fn call_with(
        &self,
        mut request: Command,
        opts: CallOpts,
    ) -> Result<Command, CallError> {
        self.refresh().await;
        self.probe_in_background();
        let s = &*self.shared;
        let mut call = s
            .all
            .with_quantiles(|latency| ClusterCall::new(&mut request, opts, &s.defaults, latency))?;
        // Dropped on every way out: aborts whatever still runs.
        let mut attempts = JoinSet::new();
        let mut handles: HashMap<u32, AbortHandle> = HashMap::new();
        loop {
            let action = call.poll(&mut self.state(), s.clock.now());
            match action {
                Some(Action::Done) => return call.result(&request),
                Some(Action::Cancel { attempt }) => {
                    handles.remove(&attempt).inspect(AbortHandle::abort);
                }
                Some(Action::Send(a)) => {
                    let (frame, client) =
                        (call.frame().clone(), self.at(a.endpoint).client.clone());
                    let run = async move { (a.number, client.call(&frame, a.timeout).await) };
                    handles.insert(a.number, attempts.spawn(run));
                }
                None => {
                    let wake = s.clock.at(call.wake_at().unwrap_or(s.clock.now()));
                    tokio::select! {
                        Some(joined) = attempts.join_next() => {
                            // An attempt aborted on the core's word has nothing to report.
                            let Ok((number, outcome)) = joined else { continue };
                            handles.remove(&number);
                            let now = s.clock.now();
                            let report = call.on_outcome(&mut self.state(), number, outcome, now);
                            report.inspect(|r| record(r, &self.at(r.endpoint), &s.all));
                        }
                        () = tokio::time::sleep_until(wake) => {
                            call.on_timeout(&mut self.state(), s.clock.now());
                        }
                    }
                }
            }
        }
    }

    /// Sends `request` with the cluster's policies.
    pub async fn call(&self, request: Command) -> Result<Command, CallError> {
        self.call_with(request, CallOpts::default()).await
    }

    /// Sends a oneway request to the endpoint the balancer picks. Never retried: no answer says
    /// it failed, and a write that may have gone out must not be repeated.
    pub async fn oneway(&self, mut request: Command) -> Result<(), CallError> {
        self.refresh().await;
        let s = &*self.shared;
        before_send(&s.defaults.hooks, &mut request);
        let picked = self.state().oneway(s.clock.now())?;
        let client = self.at(picked.endpoint).client.clone();
        let sent = client.oneway(request).await;
        self.state().oneway_done(picked, &sent, s.clock.now());
        sent
    }

    /// Counts over all endpoints.
    pub fn totals(&self) -> Counts {
        self.state().totals()
    }

    /// A snapshot of every endpoint (retired ones too: indices are stable).
    pub fn report(&self) -> Vec<EndpointReport> {
        let all = self.shared.endpoints.read();
        let all = all.unwrap_or_else(PoisonError::into_inner);
        let (state, now) = (self.state(), self.shared.clock.now());
        let one = |(i, e): (usize, &Arc<Endpoint>)| state.report(i, now, e.latency.percentiles());
        all.iter().enumerate().map(one).collect()
    }

    /// Closes every endpoint's connections and stops the probes (idempotent).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let all = self.shared.endpoints.read();
        let all = all.unwrap_or_else(PoisonError::into_inner);
        all.iter().for_each(|e| e.client.close());
    }

    /// Starts, once and on the caller's runtime, the health probes the policies ask for. The
    /// task holds the cluster weakly: it ends when the cluster is closed or dropped.
    fn probe_in_background(&self) {
        let Some(probe) = self.shared.defaults.policies.probe else {
            return;
        };
        if self.shared.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(probe.every);
            tick.tick().await;
            while let Some(shared) = {
                tick.tick().await;
                weak.upgrade().filter(|s| !s.closed.load(Ordering::Acquire))
            } {
                let cluster = Cluster { shared };
                let now = cluster.shared.clock.now();
                let (due, ask) = {
                    let state = cluster.state();
                    (state.probe_targets(now), state.probe_request())
                };
                let Some((request, timeout)) = ask else {
                    return;
                };
                for i in due {
                    let endpoint = cluster.at(i);
                    let outcome = endpoint.client.call(request.clone(), timeout).await;
                    let healthy = cluster.state().probe_result(i, &outcome);
                    tracing::info!(endpoint = %endpoint.address, healthy, "health probe");
                }
            }
        });
    }
}
