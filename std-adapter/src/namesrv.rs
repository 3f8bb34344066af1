//! Following a topic's brokers through RocketMQ name servers.
//!
//! Every decision — which name server to ask, rotating on failure, when to ask again, what
//! changed — is `remora_core::route::RouteTracker`'s; this file only sends its asks over a
//! short-lived [`Client`], reads the clock and sleeps.
//!
//! ```no_run
//! use std::time::Duration;
//! use remora_std::namesrv::{RouteFollower, FollowerConfig};
//! use remora_std::{Cluster, ClusterConfig};
//!
//! let follower = RouteFollower::new("10.0.0.1:9876;10.0.0.2:9876", "orders", FollowerConfig::default());
//! follower.fetch().expect("a name server answered");
//! follower.start(); // keep the route up to date in the background
//! let cluster = Cluster::with_resolver(
//!     follower.resolver(Duration::from_secs(1)), // the writable masters
//!     ClusterConfig::production(),
//!     vec![],
//!     None,
//! ).unwrap();
//! ```
//!
//! Over TLS, give [`FollowerConfig::tls`] for the name servers and build the cluster with
//! [`Cluster::with_tls`](crate::Cluster::with_tls) for the brokers (one `ClientTls` may serve
//! both: each connection's SNI name is its own host unless the `ClientTls` names one).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use remora_core::resilience::resolve::Resolver;
use remora_core::route::{Ask, Change, Outcome, RouteTracker, TopicRoute, TrackerConfig};

use crate::conn::Clock;
use crate::{Client, ClientConfig, Mode};
use remora_tls::ClientTls;

/// How a [`RouteFollower`] asks.
#[derive(Clone, Debug, Default)]
pub struct FollowerConfig {
    /// Refresh interval, retry delay after a failed round, per-ask timeout.
    pub tracker: TrackerConfig,
    /// Ask every name server over TLS with this (SNI: the name server's host, unless it names
    /// another); `None` asks in plaintext. A failed handshake is that name server's failure:
    /// the follower goes on to the next.
    pub tls: Option<ClientTls>,
}

/// Told what each answer changed (only when something did).
pub type Listener = Arc<dyn Fn(&[Change]) + Send + Sync>;

struct Shared {
    tracker: Mutex<RouteTracker>,
    tls: Option<ClientTls>,
    clock: Clock,
    listener: Mutex<Option<Listener>>,
}

struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// Keeps one topic's route from a list of name servers: asked on demand ([`fetch`](Self::fetch),
/// [`poll`](Self::poll)) or by a background thread ([`start`](Self::start)) that stops when the
/// follower is dropped.
pub struct RouteFollower {
    shared: Arc<Shared>,
    stop: Arc<Stop>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RouteFollower {
    /// A follower of `topic` asking the name servers in `name_servers`
    /// (`HOST:PORT[;HOST:PORT…]`). Nothing is asked until [`fetch`](Self::fetch),
    /// [`poll`](Self::poll) or [`start`](Self::start).
    pub fn new(name_servers: &str, topic: &str, config: FollowerConfig) -> RouteFollower {
        let list = RouteTracker::parse_list(name_servers);
        RouteFollower {
            shared: Arc::new(Shared {
                tracker: Mutex::new(RouteTracker::new(list, topic, config.tracker)),
                tls: config.tls,
                clock: Clock::new(),
                listener: Mutex::new(None),
            }),
            stop: Arc::new(Stop {
                stopped: Mutex::new(false),
                wake: Condvar::new(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Tells `listener` what each later answer changed.
    pub fn on_change(&self, listener: Listener) {
        *lock(&self.shared.listener) = Some(listener);
    }

    /// The route last read, if any.
    pub fn route(&self) -> Option<TopicRoute> {
        lock(&self.shared.tracker).route().cloned()
    }

    /// The masters' addresses of the brokers that take writes (empty before the first answer).
    pub fn writable_masters(&self) -> Vec<String> {
        lock(&self.shared.tracker)
            .route()
            .map(TopicRoute::writable_masters)
            .unwrap_or_default()
    }

    /// Asks now, going through the name servers in turn until one answers: the route, or a
    /// one-line error (every name server's failure, or that the topic does not exist).
    pub fn fetch(&self) -> Result<TopicRoute, String> {
        let now = self.shared.clock.now();
        let topic = {
            let mut tracker = lock(&self.shared.tracker);
            if tracker.name_server().is_none() {
                return Err("no name server given".into());
            }
            tracker.refresh_now(now);
            tracker.topic().to_owned()
        };
        let mut failures = Vec::new();
        for outcome in self.shared.poll() {
            match outcome {
                Outcome::Route(_) => return self.route().ok_or_else(|| "no route".into()),
                Outcome::NoTopic(_) => {
                    return Err(format!(
                        "topic {topic:?}: the name server has no route for it (TOPIC_NOT_EXIST)"
                    ))
                }
                Outcome::Failed(why) => failures.push(why),
                Outcome::Stale => {}
            }
        }
        match (failures.is_empty(), self.route()) {
            // Another thread's ask was out; its last answer stands.
            (true, Some(route)) => Ok(route),
            (true, None) => Err("no name server answered yet".into()),
            (false, _) => Err(format!("no name server answered: {}", failures.join("; "))),
        }
    }

    /// Sends the asks that are due now (blocking, each within its timeout); what each did.
    pub fn poll(&self) -> Vec<Outcome> {
        self.shared.poll()
    }

    /// Starts a thread that asks whenever the tracker says an ask is due. Idempotent; the thread
    /// ends when the follower is dropped.
    pub fn start(&self) {
        let mut thread = lock(&self.thread);
        if thread.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let stop = Arc::clone(&self.stop);
        *thread = Some(
            std::thread::Builder::new()
                .name("remora-namesrv".into())
                .spawn(move || loop {
                    shared.poll();
                    let wait = {
                        let tracker = lock(&shared.tracker);
                        let now = shared.clock.now();
                        tracker
                            .poll_timeout()
                            .map_or(Duration::from_secs(60), |at| at - now)
                    };
                    let stopped = lock(&stop.stopped);
                    if *stopped {
                        return;
                    }
                    let (stopped, _) = stop
                        .wake
                        .wait_timeout_while(stopped, wait, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        return;
                    }
                })
                .expect("spawn name-server thread"),
        );
    }

    /// A resolver for [`Cluster::with_resolver`](crate::Cluster::with_resolver) (or the uring
    /// `LocalCluster`): the writable masters of the route last read, looked at every `every`.
    /// It does no I/O itself (the follower's thread or your calls to [`poll`](Self::poll) do),
    /// so a cluster never blocks on a name server; an empty route keeps the cluster's endpoints.
    pub fn resolver(&self, every: Duration) -> Resolver {
        let shared = Arc::clone(&self.shared);
        Resolver::Custom {
            resolve: Arc::new(move || {
                lock(&shared.tracker)
                    .route()
                    .map(TopicRoute::writable_masters)
                    .unwrap_or_default()
            }),
            every,
        }
    }
}

impl Shared {
    fn poll(&self) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        loop {
            let now = self.clock.now();
            let Some(ask) = lock(&self.tracker).poll_ask(now) else {
                return outcomes;
            };
            let outcome = self.ask(ask);
            if let Outcome::Route(changes) | Outcome::NoTopic(changes) = &outcome {
                if !changes.is_empty() {
                    let listener = lock(&self.listener).clone();
                    if let Some(listener) = listener {
                        listener(changes);
                    }
                }
            }
            outcomes.push(outcome);
        }
    }

    /// Sends one ask and reports its outcome to the tracker (the lock is not held meanwhile).
    fn ask(&self, ask: Ask) -> Outcome {
        let timeout = ask.deadline - self.clock.now();
        let config = ClientConfig {
            mode: Mode::Short,
            connect_timeout: timeout,
            ..ClientConfig::default()
        };
        let client = match &self.tls {
            Some(tls) => Client::connect_tls(&ask.name_server, config, tls.clone()),
            None => Client::connect(ask.name_server.as_str(), config),
        };
        let result = client.and_then(|client| {
            let left = ask.deadline - self.clock.now();
            let r = client.call(ask.request, left);
            client.close();
            r
        });
        let now = self.clock.now();
        let mut tracker = lock(&self.tracker);
        match result {
            Ok(response) => tracker.on_response(now, ask.id, &response),
            Err(e) => tracker.on_failure(now, ask.id, &e.to_string()),
        }
    }
}

impl Drop for RouteFollower {
    fn drop(&mut self) {
        *lock(&self.stop.stopped) = true;
        self.stop.wake.notify_all();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
