//! The client: a pool of multiplexed connections to one endpoint, usable from any task.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use remora_core::backoff::Backoff;
use remora_core::pool::{Choice, Pool};
use remora_core::{CallError, Command, Config, ConnectError, Handler, NotSupported, Outgoing};
use remora_metrics::{Probe, Probed, Side};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::conn::{CallFuture, Clock, Conn, ConnConfig, Dispatch};

/// How a [`Client`] behaves.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientConfig {
    /// Each connection's machine (`max_waiters` is the most calls in flight per connection).
    pub connection: Config,
    /// Connections kept to the endpoint; calls go to the one with the fewest in flight.
    pub pool_size: usize,
    /// Close a connection after this long with nothing in flight (reopened on demand).
    pub idle_timeout: Option<Duration>,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// Delay before reconnecting after a connection failed (grows with consecutive failures).
    pub reconnect: Backoff,
    /// Where requests the server sends to this client are answered.
    pub dispatch: Dispatch,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connection: Config::default(),
            pool_size: 1,
            idle_timeout: Some(Duration::from_secs(120)),
            connect_timeout: Duration::from_secs(3),
            reconnect: Backoff::default(),
            dispatch: Dispatch::Inline,
        }
    }
}

struct Shared {
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    handler: Arc<dyn Handler>,
    clock: Clock,
    pool: Mutex<Pool<Arc<Conn>>>,
    /// Signalled (under the pool lock) whenever a connect attempt ends.
    changed: Notify,
    closed: AtomicBool,
    entropy: AtomicU64,
    /// Connections opened (for the reconnect count).
    opened: AtomicUsize,
}

/// A remoting client on tokio: `Send + Sync + Clone`, so any number of tasks on any threads may
/// [`call`](Client::call) at once over the same multiplexed connections (each response goes to
/// its own caller). Requests the server sends to the client are answered by a [`Handler`].
///
/// Connections are tasks on the runtime that opened them (the one a call that needed a new
/// connection ran on); calls may be awaited anywhere.
///
/// ```no_run
/// use std::time::Duration;
/// use remora_core::{codes, Command};
/// use remora_tokio::{Client, ClientConfig};
///
/// # async fn run() -> Result<(), remora_core::CallError> {
/// let client = Client::connect("127.0.0.1:9876", ClientConfig::default()).await?;
/// let request = Command::request(codes::GET_ROUTEINFO_BY_TOPIC).with_ext("topic", "TopicTest");
/// let response = client.call(request, Duration::from_secs(3)).await?;
/// println!("{} {:?}", response.code, response.remark());
/// client.close();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Connects to `addr` (one connection now, the rest of the pool on demand). Requests from
    /// the server are answered `REQUEST_CODE_NOT_SUPPORTED`.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
    ) -> Result<Client, CallError> {
        Client::connect_with_handler(addr, config, NotSupported).await
    }

    /// Connects to `addr`; requests from the server go to `handler`.
    pub async fn connect_with_handler(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: impl Handler,
    ) -> Result<Client, CallError> {
        let client = Client::lazy(addr, config, handler)?;
        // Fail fast on a wrong address.
        client.acquire().await?;
        Ok(client)
    }

    /// A client that connects on its first call (for a cluster, where one endpoint being down
    /// must not stop the others). The address is resolved now (blocking, as
    /// `std::net::ToSocketAddrs` does: pass an IP address from async code).
    pub fn lazy(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: impl Handler,
    ) -> Result<Client, CallError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| CallError::Connect(e.into()))?
            .collect();
        if addrs.is_empty() {
            return Err(CallError::Connect(ConnectError::new(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address resolved to nothing",
            ))));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Client {
            shared: Arc::new(Shared {
                addrs,
                config,
                handler: Arc::new(handler),
                clock: Clock::new(),
                pool: Mutex::new(Pool::new(config.pool_size, config.reconnect)),
                changed: Notify::new(),
                closed: AtomicBool::new(false),
                entropy: AtomicU64::new(seed | 1),
                opened: AtomicUsize::new(0),
            }),
        })
    }

    /// Sends `request` and waits up to `timeout` for its response (whatever its code).
    /// `request` is a [`Command`] or a request encoded once ([`remora_core::Encoded`]).
    pub async fn call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Command, CallError> {
        match self.start_call(request, timeout).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        }
    }

    /// Queues `request` and returns the future of its outcome without waiting for it: start
    /// many calls, then await them (they share writes). Dropping the future cancels the call.
    /// The future carries the request's span and metrics probe (see [`Probed`]).
    pub async fn start_call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Probed<CallFuture>, CallError> {
        let probe = Probe::client(&request, &self.shared.addrs[0]);
        let started = async { self.acquire().await?.call(request, timeout) }
            .instrument(probe.span().clone())
            .await;
        match started {
            Ok(pending) => Ok(Probed::new(pending, probe)),
            Err(e) => {
                probe.end_error(&e);
                Err(e)
            }
        }
    }

    /// Queues a oneway request; the connection's task writes it on its next turn. A
    /// [`close`](Client::close) before then drops it (close discards unsent bytes).
    pub async fn oneway(&self, request: Command) -> Result<(), CallError> {
        let probe = Probe::client(&request, &self.shared.addrs[0]);
        let result = match self.acquire().await {
            Ok(conn) => conn.oneway(request),
            Err(e) => Err(e),
        };
        probe.end_oneway(&result);
        result
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.shared
            .lock_pool()
            .connections()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// Closes every connection (idempotent): calls in flight fail with
    /// [`CallError::Closed`] (saying whether each was written), later calls fail at once.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let conns = {
            let mut pool = self.shared.lock_pool();
            let conns = pool.take_all();
            self.shared.changed.notify_waiters();
            conns
        };
        for conn in conns {
            conn.close();
        }
    }

    /// The connection the core's pool policy picks, connecting (or reconnecting) when it says so.
    async fn acquire(&self) -> Result<Arc<Conn>, CallError> {
        let shared = &self.shared;
        loop {
            if shared.closed.load(Ordering::Acquire) {
                return Err(CallError::Closed { written: false });
            }
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            let (choice, fallback) = {
                let mut pool = shared.lock_pool();
                let choice = pool.choose(
                    || shared.clock.now(),
                    || shared.next_entropy(),
                    |c| c.health(),
                    |c| c.in_flight(),
                );
                match choice {
                    Choice::Use(i) => {
                        return Ok(Arc::clone(pool.get(i).expect("chosen slot is up")));
                    }
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
                    let opened = shared.open().await;
                    let mut pool = shared.lock_pool();
                    shared.changed.notify_waiters();
                    match opened {
                        Ok(conn) if shared.closed.load(Ordering::Acquire) => {
                            pool.abandon(slot);
                            drop(pool);
                            conn.close();
                            return Err(CallError::Closed { written: false });
                        }
                        Ok(conn) => {
                            pool.connected(slot, Arc::clone(&conn));
                            return Ok(conn);
                        }
                        Err(e) => {
                            pool.connect_failed(slot, shared.clock.now(), shared.next_entropy());
                            return fallback.ok_or(e);
                        }
                    }
                }
                Choice::Wait => {
                    let _ = tokio::time::timeout(shared.config.connect_timeout, changed).await;
                }
                Choice::Unavailable { retry_in } => {
                    return Err(CallError::Unavailable { retry_in })
                }
            }
        }
    }
}

impl Shared {
    fn lock_pool(&self) -> MutexGuard<'_, Pool<Arc<Conn>>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_entropy(&self) -> u64 {
        // xorshift64*: the driver's entropy source for jitter (the core has none).
        let mut x = self.entropy.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.entropy.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A new connection to the first address that accepts.
    async fn open(&self) -> Result<Arc<Conn>, CallError> {
        let mut last = None;
        for &addr in &self.addrs {
            match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr)).await
            {
                Ok(Ok(stream)) => {
                    let config = ConnConfig {
                        machine: self.config.connection,
                        idle_timeout: self.config.idle_timeout,
                        dispatch: self.config.dispatch,
                    };
                    let started =
                        Conn::start(stream, config, Arc::clone(&self.handler), self.clock, None)
                            .map_err(|e| CallError::Connect(e.into()));
                    remora_metrics::connection(Side::Client, &started);
                    if started.is_ok()
                        && self.opened.fetch_add(1, Ordering::Relaxed) >= self.config.pool_size
                    {
                        remora_metrics::reconnected();
                    }
                    return started;
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        }
        remora_metrics::connection::<(), ()>(Side::Client, &Err(()));
        Err(CallError::Connect(ConnectError::from(last.unwrap_or_else(
            || io::Error::new(io::ErrorKind::NotFound, "no address"),
        ))))
    }
}

impl remora_core::resilience::cluster::ClientSettings for ClientConfig {
    fn set_pool_size(&mut self, connections: usize) {
        self.pool_size = connections;
    }
}
