//! An async client's pool of connections to one endpoint, on the core's pool policy: the
//! tokio and tokio-uring clients share it. The core decides (which connection, when to connect,
//! the reconnect backoff); this only locks, waits for a connect in progress, and counts.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use remora_core::backoff::Backoff;
use remora_core::pool::{Choice, Health, Pool};
use remora_core::{CallError, CloseReason, Command, ConnectError, Outgoing};
use remora_metrics::{Probe, Probed, Side};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::Entropy;

/// What the pool asks of a connection (the pool holds it through a shared pointer, `Rc` or
/// `Arc`).
pub trait PooledConn {
    /// Why its machine closed, once it has.
    fn close_reason(&self) -> Option<CloseReason>;
    /// Our requests awaiting responses.
    fn in_flight(&self) -> usize;
    /// Whether it has closed.
    fn is_closed(&self) -> bool;
    /// Closes it (idempotent): calls in flight fail with `Closed`.
    fn close(&self);
}

/// A pool of connections to one endpoint: `size` of them, calls to the one with the fewest in
/// flight, (re)connected on demand with the core's backoff.
pub struct AsyncPool<C> {
    pool: Mutex<Pool<C>>,
    /// Signalled (under the pool lock) whenever a connect attempt ends.
    changed: Notify,
    closed: AtomicBool,
    entropy: Entropy,
    clock: crate::Clock<tokio::time::Instant>,
    size: usize,
    /// How long a caller waits for another caller's connect before asking again.
    connect_timeout: Duration,
    /// Connections opened (opens beyond the pool's size are reconnects).
    opened: AtomicUsize,
}

impl<C> AsyncPool<C>
where
    C: Clone + std::ops::Deref,
    C::Target: PooledConn,
{
    /// A pool of `size` connections (at least one), reconnecting after `reconnect`'s backoff.
    pub fn new(size: usize, reconnect: Backoff, connect_timeout: Duration) -> Self {
        AsyncPool {
            pool: Mutex::new(Pool::new(size, reconnect)),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            entropy: Entropy::new(),
            clock: crate::Clock::new(),
            size,
            connect_timeout,
            opened: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pool<C>> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection the core's pool policy picks, opened with `open` when it says so.
    pub async fn acquire<F, Fut>(&self, open: F) -> Result<C, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<C, CallError>>,
    {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(CallError::Closed { written: false });
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            let (choice, fallback) = {
                let mut pool = self.lock();
                let choice = pool.choose(
                    || self.clock.now(),
                    || self.entropy.next(),
                    |c| health(&**c),
                    |c| c.in_flight(),
                );
                match choice {
                    Choice::Use(i) => return Ok(pool.get(i).expect("chosen slot is up").clone()),
                    Choice::Connect {
                        fallback: Some(i), ..
                    } => (choice, pool.get(i).cloned()),
                    // Registered under the lock, so the connector's signal cannot be missed.
                    Choice::Wait => {
                        changed.as_mut().enable();
                        (choice, None)
                    }
                    _ => (choice, None),
                }
            };
            match choice {
                Choice::Use(_) => unreachable!("returned above"),
                Choice::Connect { slot, .. } => {
                    let opened = open().await;
                    self.count_open(&opened);
                    let mut pool = self.lock();
                    self.changed.notify_waiters();
                    return match opened {
                        Ok(conn) if self.closed.load(Ordering::Acquire) => {
                            pool.abandon(slot);
                            drop(pool);
                            conn.close();
                            Err(CallError::Closed { written: false })
                        }
                        Ok(conn) => {
                            pool.connected(slot, conn.clone());
                            Ok(conn)
                        }
                        Err(e) => {
                            pool.connect_failed(slot, self.clock.now(), self.entropy.next());
                            fallback.ok_or(e)
                        }
                    };
                }
                Choice::Wait => {
                    let _ = tokio::time::timeout(self.connect_timeout, changed).await;
                }
                Choice::Unavailable { retry_in } => {
                    return Err(CallError::Unavailable { retry_in })
                }
            }
        }
    }

    /// Publishes a connect; opens beyond the pool's size are reconnects.
    fn count_open(&self, opened: &Result<C, CallError>) {
        remora_metrics::connection(Side::Client, opened);
        if opened.is_ok() && self.opened.fetch_add(1, Ordering::Relaxed) >= self.size {
            remora_metrics::reconnected();
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.lock().connections().filter(|c| !c.is_closed()).count()
    }

    /// Closes every connection (idempotent); later acquires fail with `Closed`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let conns = {
            let mut pool = self.lock();
            let conns = pool.take_all();
            self.changed.notify_waiters();
            conns
        };
        for conn in conns {
            conn.close();
        }
    }
}

/// How the pool should see `conn` (the core's reading of its close reason).
fn health<C: PooledConn + ?Sized>(conn: &C) -> Health {
    match conn.is_closed() {
        false => Health::Open,
        true => Health::after(conn.close_reason()),
    }
}

/// A TCP connection to the first of `addrs` that accepts within `timeout` each, made by
/// `connect`; a connect error saying why the last one failed if none does.
pub async fn connect_first<S, Fut>(
    addrs: &[SocketAddr],
    timeout: Duration,
    connect: impl Fn(SocketAddr) -> Fut,
) -> Result<S, CallError>
where
    Fut: Future<Output = io::Result<S>>,
{
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for &addr in addrs {
        match tokio::time::timeout(timeout, connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(CallError::Connect(ConnectError::from(last)))
}

/// Starts a client call to `addr` in its request span: `start` queues `request` (connecting if
/// need be) and gives the future of its outcome, which goes on in the same span and ends it with
/// the outcome (or as cancelled when dropped).
pub async fn start_call<R, S, P, F>(
    addr: &SocketAddr,
    request: R,
    start: S,
) -> Result<Probed<F>, CallError>
where
    R: Outgoing,
    S: FnOnce(R) -> P,
    P: Future<Output = Result<F, CallError>>,
{
    let probe = Probe::client(&request, addr);
    let started = start(request).instrument(probe.span().clone()).await;
    match started {
        Ok(pending) => Ok(Probed::new(pending, probe)),
        Err(e) => {
            probe.end_error(&e);
            Err(e)
        }
    }
}

/// A oneway to `addr` in its request span: `send` queues it.
pub async fn oneway<P>(
    addr: &SocketAddr,
    request: Command,
    send: impl FnOnce(Command) -> P,
) -> Result<(), CallError>
where
    P: Future<Output = Result<(), CallError>>,
{
    let probe = Probe::client(&request, addr);
    let result = send(request).await;
    probe.end_oneway(&result);
    result
}
