//! What every Remora driver needs and the sans-IO core must not do.
//!
//! `remora-core` decides; it never reads a clock, catches a panic, resolves a name or draws
//! entropy. Each driver (`remora-std`, `remora-tokio`, `remora-uring`) needs those same few
//! things, so they are written once here:
//!
//! - [`Clock`]: a monotonic clock read as the core's [`Instant`] (nanoseconds since the clock
//!   was made), and back to the driver's own instant type for its timers.
//! - [`handle_catching`]: runs a user's [`Handler`]; a panic becomes a `SYSTEM_ERROR` answer.
//! - [`resolve`]: an address to the socket addresses a client tries in turn.
//! - [`Entropy`]: a seeded, thread-safe source of the core's jitter and choices.
//! - [`Latency`] and [`Endpoint`]: what a cluster keeps of its attempts' latency (per endpoint,
//!   and over all of them for percentile hedging), and [`record`] for an attempt's report.
//! - `pool` (feature `tokio`): an async client's pool on the core's pool policy, its connect,
//!   and a call's request span, shared by the tokio and tokio-uring clients; `client` (feature
//!   `tokio`): the async client those two drivers wrap.
//! - [`client_tls`]: the TLS side of a client to an address, its configuration checked now.

#![deny(missing_docs)]

#[cfg(feature = "tokio")]
pub mod client;
#[cfg(feature = "tokio")]
pub mod pool;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use remora_core::resilience::cluster::Report;
use remora_core::resilience::retry::Class;
use remora_core::{CallError, Command, Handler, Instant};

/// A monotonic instant type a driver's timers use: `std::time::Instant`, or (feature `tokio`)
/// `tokio::time::Instant`, which follows tokio's paused clock in tests.
pub trait Monotonic: Copy + std::fmt::Debug {
    /// The current instant.
    fn now() -> Self;
    /// How long after `earlier` this is (zero if it is not after).
    fn since(self, earlier: Self) -> Duration;
    /// `d` after this.
    fn after(self, d: Duration) -> Self;
}

impl Monotonic for std::time::Instant {
    fn now() -> Self {
        std::time::Instant::now()
    }
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
    fn after(self, d: Duration) -> Self {
        self + d
    }
}

#[cfg(feature = "tokio")]
impl Monotonic for tokio::time::Instant {
    fn now() -> Self {
        tokio::time::Instant::now()
    }
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
    fn after(self, d: Duration) -> Self {
        self + d
    }
}

/// A driver's clock: the core's [`Instant`]s are nanoseconds since the clock was made.
#[derive(Clone, Copy, Debug)]
pub struct Clock<M = std::time::Instant> {
    origin: M,
}

impl<M: Monotonic> Default for Clock<M> {
    fn default() -> Self {
        Clock::new()
    }
}

impl<M: Monotonic> Clock<M> {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Clock { origin: M::now() }
    }

    /// Now, as the core counts time.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(M::now().since(self.origin).as_nanos() as u64)
    }

    /// The core's `at` as the driver's own instant (for a timer).
    pub fn at(&self, at: Instant) -> M {
        self.origin.after(Duration::from_nanos(at.as_nanos()))
    }
}

/// Runs `handler` on `request`; a panic in it becomes a `SYSTEM_ERROR` answer, so the peer is not
/// left waiting and the driver's thread or task survives.
pub fn handle_catching(handler: &dyn Handler, request: Command) -> Command {
    let fallback = request.response(remora_core::codes::SYSTEM_ERROR);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(request))) {
        Ok(response) => response,
        Err(_) => fallback.with_remark("request handler panicked"),
    }
}

/// The socket addresses `addr` names (a client tries them in turn). Blocking, as
/// `std::net::ToSocketAddrs` is: async code passes an IP address.
pub fn resolve(addr: impl ToSocketAddrs) -> Result<Vec<SocketAddr>, CallError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| CallError::Connect(e.into()))?
        .collect();
    if addrs.is_empty() {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing");
        return Err(CallError::Connect(e.into()));
    }
    Ok(addrs)
}

/// A client's TLS to `addr` (`host:port`): `host`, or the name `tls` gives, is sent as SNI and
/// verified against the server's certificate; each handshake must complete within
/// `connect_timeout`. An unusable name is a connect error now, not at the first connection.
pub fn client_tls(
    addr: &str,
    tls: remora_tls::ClientTls,
    connect_timeout: Duration,
) -> Result<remora_tls::Secure, CallError> {
    remora_tls::Secure::client(tls, addr, connect_timeout)
        .map_err(|e| CallError::Connect(remora_core::ConnectError::new(e)))
}

#[doc(hidden)]
pub use remora_core as __core;

/// Admits a connection just accepted from `peer` to a server's `budget`, or refuses it with a
/// `tracing` warning (the caller then drops the connection). `peer` is asked only on a refusal.
pub fn admit(
    budget: &remora_core::Budget,
    peer: impl FnOnce() -> Option<SocketAddr>,
) -> Option<remora_core::Account> {
    match budget.admit() {
        Ok(account) => Some(account),
        Err(refusal) => {
            let peer = peer();
            tracing::warn!(?peer, "{refusal}");
            None
        }
    }
}

/// Defines a driver's server configuration: the fields every driver's server has
/// (`connection`, `drain_timeout`, `budget`, `backlog`), with their documentation and defaults,
/// after the driver's own (each `pub name: Type = default,`). One struct per driver, so that
/// struct literals name every field directly (`ServerConfig { workers: 4, ..Default::default() }`).
#[macro_export]
macro_rules! server_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident: $ty:ty = $default:expr,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Each connection's machine. `max_incoming` is the most requests in flight per
            /// connection; beyond it the server answers `SYSTEM_BUSY`.
            pub connection: $crate::__core::Config,
            /// How long `Server::stop` waits for requests in flight to be answered and written.
            pub drain_timeout: ::std::time::Duration,
            /// Limits on all connections together: beyond its buffered bytes new requests are
            /// answered `SYSTEM_BUSY` and new connections refused (with a `tracing` warning), as
            /// beyond its connection count.
            pub budget: $crate::__core::BudgetConfig,
            /// The listen backlog (of each listener): connections the kernel completes before
            /// they are accepted.
            pub backlog: i32,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                    connection: $crate::__core::Config::default(),
                    drain_timeout: ::std::time::Duration::from_secs(5),
                    budget: $crate::__core::BudgetConfig::default(),
                    backlog: 4096,
                }
            }
        }
    };
}

/// A seed that differs between runs (and between calls): the wall clock's nanoseconds mixed
/// with a process-wide counter.
pub fn seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = CALLS.fetch_add(remora_core::rand::GAMMA, Ordering::Relaxed);
    remora_core::rand::mix(nanos ^ n)
}

/// The core's SplitMix64 over an atomic state: shared between threads, seeded by [`seed`].
#[derive(Debug)]
pub struct Entropy(AtomicU64);

impl Default for Entropy {
    fn default() -> Self {
        Entropy::new()
    }
}

impl Entropy {
    /// A source seeded by [`seed`].
    pub fn new() -> Self {
        Entropy(AtomicU64::new(seed()))
    }

    /// The next 64 random bits.
    pub fn next(&self) -> u64 {
        let state = self
            .0
            .fetch_add(remora_core::rand::GAMMA, Ordering::Relaxed)
            .wrapping_add(remora_core::rand::GAMMA);
        remora_core::rand::mix(state)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Attempt latency in microseconds, 1 µs to a minute, three significant digits.
#[derive(Debug)]
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// Empty.
    pub fn new() -> Self {
        let h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Latency(Mutex::new(h))
    }

    /// Adds one sample (clamped into the histogram's range).
    pub fn record(&self, latency: Duration) {
        lock(&self.0).saturating_record(latency.as_micros() as u64);
    }

    /// p50, p99 and max, in microseconds.
    pub fn percentiles(&self) -> (u64, u64, u64) {
        let h = lock(&self.0);
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
    }

    /// Calls `f` with the sample count and the quantile function, the latency view the core's
    /// `ClusterCall::new` takes for percentile hedging.
    pub fn with_quantiles<R>(&self, f: impl FnOnce((u64, &dyn Fn(f64) -> Duration)) -> R) -> R {
        let h = lock(&self.0);
        f((h.len(), &|q| Duration::from_micros(h.value_at_quantile(q))))
    }
}

/// A cluster's endpoint: its address, its client, its attempts' latency.
#[derive(Debug)]
pub struct Endpoint<C> {
    /// As the resolver named it.
    pub address: String,
    /// The driver's client to it.
    pub client: C,
    /// Its attempts' latency.
    pub latency: Latency,
}

impl<C> Endpoint<C> {
    /// An endpoint with no latency recorded yet.
    pub fn new(address: String, client: C) -> Self {
        Endpoint {
            address,
            client,
            latency: Latency::new(),
        }
    }
}

/// Keeps what the core reported of a finished attempt: its latency at `endpoint`, a success's
/// latency in `all` (for percentile hedging), and a breaker or ejection change as a metric.
pub fn record<C>(report: &Report, endpoint: &Endpoint<C>, all: &Latency) {
    endpoint.latency.record(report.latency);
    if report.class == Class::Success {
        all.record(report.latency);
    }
    if let Some((breaker, ejected)) = report.health {
        remora_metrics::endpoint_health(&endpoint.address, &breaker, ejected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_counts_from_its_origin_and_maps_back() {
        let clock: Clock = Clock::new();
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = clock.now();
        assert!(b.as_nanos() >= a.as_nanos() + 2_000_000);
        let at = Instant::from_millis(5);
        assert_eq!(
            clock.at(at) - clock.at(Instant::ZERO),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn a_panicking_handler_answers_system_error() {
        struct Panics;
        impl Handler for Panics {
            fn handle(&self, _: Command) -> Command {
                panic!("boom")
            }
        }
        let request = Command::request(10).with_opaque(7);
        let answer = handle_catching(&Panics, request);
        assert_eq!(answer.code, remora_core::codes::SYSTEM_ERROR);
        assert_eq!(answer.opaque, 7);
        assert!(answer.is_response());
    }

    #[test]
    fn resolve_refuses_a_name_that_names_nothing() {
        let none: &[SocketAddr] = &[];
        assert!(matches!(resolve(none), Err(CallError::Connect(_))));
        let one = resolve("127.0.0.1:9876").unwrap();
        assert_eq!(one, ["127.0.0.1:9876".parse().unwrap()]);
    }

    #[test]
    fn entropy_streams_differ() {
        let (a, b) = (Entropy::new(), Entropy::new());
        let xs: Vec<u64> = (0..4).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next()).collect();
        assert_ne!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }

    #[test]
    fn latency_keeps_successes_apart() {
        let endpoint = Endpoint::new("a:1".into(), ());
        let all = Latency::new();
        let report = |class| Report {
            endpoint: 0,
            class,
            latency: Duration::from_micros(100),
            health: None,
        };
        record(&report(Class::Success), &endpoint, &all);
        record(&report(Class::Retryable), &endpoint, &all);
        assert_eq!(endpoint.latency.with_quantiles(|(n, _)| n), 2);
        let (n, p50) = all.with_quantiles(|(n, q)| (n, q(0.5)));
        assert_eq!(n, 1);
        assert!(p50 >= Duration::from_micros(100) && p50 < Duration::from_micros(101));
    }
}
