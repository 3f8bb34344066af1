//! The blocking client: a pool of multiplexed connections to one endpoint.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use remora_core::backoff::Backoff;
use remora_core::pool::{Choice, Pool};
use remora_core::{Command, Config, Outgoing};
use remora_driver::Entropy;
use remora_metrics::{Probe, Side};
use remora_tls::{ClientTls, Secure};

use crate::conn::Dispatch;
use crate::conn::{Clock, Conn, ConnConfig};
use crate::handler::{Handler, NotSupported, Workers};
use crate::Error;

/// How connections are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Connections stay open and carry many calls at once; one unused for `idle_timeout` is
    /// closed (and reopened on demand).
    Long {
        /// Close a connection after this long with nothing in flight; `None` keeps it.
        idle_timeout: Option<Duration>,
    },
    /// A new connection for every call, closed after it.
    Short,
}

/// How a [`Client`] behaves.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientConfig {
    /// Each connection's machine (`max_waiters` is the most calls in flight per connection).
    pub connection: Config,
    /// Connections kept to the endpoint; calls go to the one with the fewest in flight.
    pub pool_size: usize,
    /// Long-lived or per-call connections.
    pub mode: Mode,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// Delay before reconnecting after a connection failed (grows with consecutive failures).
    pub reconnect: Backoff,
    /// Worker threads for requests the server sends to this client.
    pub workers: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connection: Config::default(),
            pool_size: 1,
            mode: Mode::Long {
                idle_timeout: Some(Duration::from_secs(120)),
            },
            connect_timeout: Duration::from_secs(3),
            reconnect: Backoff::default(),
            workers: 1,
        }
    }
}

struct Shared {
    addrs: Vec<SocketAddr>,
    /// Plaintext, or TLS to the server named by the address (or the TLS configuration).
    secure: Secure,
    config: ClientConfig,
    handler: Arc<dyn Handler>,
    workers: Arc<Workers>,
    clock: Clock,
    pool: Mutex<Pool<Arc<Conn>>>,
    changed: Condvar,
    closed: AtomicBool,
    entropy: Entropy,
    /// Connections opened (for the reconnect count).
    opened: AtomicUsize,
}

/// A remoting client on `std::net`, safe to share between threads: every thread may
/// [`call`](Client::call) at once over the same connections (each response goes to its own
/// caller). Requests the server sends to the client are answered by a [`Handler`].
///
/// ```no_run
/// use std::time::Duration;
/// use remora_core::{codes, Command};
/// use remora_std::{Client, ClientConfig};
///
/// let client = Client::connect("127.0.0.1:9876", ClientConfig::default())?;
/// let request = Command::request(codes::GET_ROUTEINFO_BY_TOPIC).with_ext("topic", "TopicTest");
/// let response = client.call(request, Duration::from_secs(3))?;
/// println!("{} {:?}", response.code, response.remark());
/// client.close();
/// # Ok::<(), remora_std::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Connects to `addr` (one connection now, the rest of the pool on demand). Requests from
    /// the server are answered `REQUEST_CODE_NOT_SUPPORTED`.
    pub fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client, Error> {
        Client::connect_with_handler(addr, config, NotSupported)
    }

    /// Connects to `addr`; requests from the server go to `handler`.
    pub fn connect_with_handler(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: impl Handler,
    ) -> Result<Client, Error> {
        let client = Client::lazy(addr, config, handler)?;
        if let Mode::Long { .. } = client.shared.config.mode {
            // Fail fast on a wrong address.
            client.acquire()?;
        }
        Ok(client)
    }

    /// Connects to `addr` (`host:port`) over TLS: `host` (or the name `tls` gives) is sent as
    /// SNI and verified against the server's certificate, and each connection's handshake must
    /// complete within [`ClientConfig::connect_timeout`]. A failed handshake (untrusted
    /// certificate, name mismatch, refused client certificate, a plaintext server) fails the
    /// calls waiting on that connection with [`Error::Connect`] carrying the
    /// [`TlsError`](remora_tls::TlsError) (never as possibly delivered); the pool reconnects
    /// with its backoff.
    pub fn connect_tls(addr: &str, config: ClientConfig, tls: ClientTls) -> Result<Client, Error> {
        Client::connect_tls_with_handler(addr, config, NotSupported, tls)
    }

    /// [`Client::connect_tls`]; requests from the server go to `handler`.
    pub fn connect_tls_with_handler(
        addr: &str,
        config: ClientConfig,
        handler: impl Handler,
        tls: ClientTls,
    ) -> Result<Client, Error> {
        let client = Client::lazy_tls(addr, config, handler, tls)?;
        if let Mode::Long { .. } = client.shared.config.mode {
            client.acquire()?;
        }
        Ok(client)
    }

    /// [`Client::lazy`] over TLS (see [`Client::connect_tls`]).
    pub fn lazy_tls(
        addr: &str,
        config: ClientConfig,
        handler: impl Handler,
        tls: ClientTls,
    ) -> Result<Client, Error> {
        let secure = remora_driver::client_tls(addr, tls, config.connect_timeout)?;
        Client::lazy_secure(addr, config, handler, secure)
    }

    /// A client that connects on its first call (for a cluster, where one endpoint being down
    /// must not stop the others). The address is resolved now.
    pub fn lazy(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: impl Handler,
    ) -> Result<Client, Error> {
        Client::lazy_secure(addr, config, handler, Secure::plain())
    }

    fn lazy_secure(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: impl Handler,
        secure: Secure,
    ) -> Result<Client, Error> {
        let addrs = remora_driver::resolve(addr)?;
        let client = Client {
            shared: Arc::new(Shared {
                addrs,
                secure,
                config,
                handler: Arc::new(handler),
                workers: Workers::new(config.workers, "remora-client-worker"),
                clock: Clock::new(),
                pool: Mutex::new(Pool::new(config.pool_size, config.reconnect)),
                changed: Condvar::new(),
                closed: AtomicBool::new(false),
                entropy: Entropy::new(),
                opened: AtomicUsize::new(0),
            }),
        };
        Ok(client)
    }

    /// Sends `request` and waits up to `timeout` for its response (whatever its code).
    /// `request` is a [`Command`] or a request encoded once ([`remora_core::Encoded`], as a
    /// cluster re-sends it).
    pub fn call(&self, request: impl Outgoing, timeout: Duration) -> Result<Command, Error> {
        let probe = Probe::client(&request, &self.shared.addrs[0]);
        let result = probe
            .span()
            .in_scope(|| self.call_unobserved(request, timeout));
        probe.end(&result);
        result
    }

    fn call_unobserved(&self, request: impl Outgoing, timeout: Duration) -> Result<Command, Error> {
        match self.shared.config.mode {
            Mode::Short => {
                let conn = self.shared.open()?;
                let outcome = conn.call(request, timeout);
                conn.close();
                outcome
            }
            Mode::Long { .. } => self.acquire()?.call(request, timeout),
        }
    }

    /// Sends `request` and returns without waiting (Java remoting's `invokeAsync`): `then`
    /// runs exactly once with the outcome — the response (whatever its code), a timeout after
    /// `timeout`, or an error saying whether the request may have reached the peer.
    ///
    /// `then` runs on the thread that learns the outcome, usually the connection's reader
    /// thread, never under a lock of the client: keep it short and do not block in it (hand
    /// heavy work to a thread of your own). It may start further calls; those that the
    /// continuations of one read start on the same connection are written together, so a
    /// single thread keeps many calls in flight without a thread per call. A panic in `then`
    /// is caught and logged. If the request cannot be sent (no connection, too many in
    /// flight, too big to encode) this returns the error and `then` is dropped unrun.
    ///
    /// Each call allocates twice (the boxed continuation and the probe's slot); `call` none.
    pub fn call_then(
        &self,
        request: impl Outgoing,
        timeout: Duration,
        then: impl FnOnce(Result<Command, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        let probe = Probe::client(&request, &self.shared.addrs[0]);
        let _entered = probe.span().clone().entered();
        let is_short = matches!(self.shared.config.mode, Mode::Short);
        let conn = if is_short {
            self.shared.open()
        } else {
            self.acquire()
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                probe.end_error(&e);
                return Err(e);
            }
        };
        let short = is_short.then(|| Arc::clone(&conn));
        // The probe ends with the outcome, which a failed send never reaches: keep a way to
        // end it here then.
        let probe = Arc::new(Mutex::new(Some(probe)));
        let for_then = Arc::clone(&probe);
        let sent = conn.call_then(
            request,
            timeout,
            Box::new(move |outcome: Result<Command, Error>| {
                if let Some(probe) = for_then.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    probe.end(&outcome);
                }
                if let Some(conn) = short {
                    conn.close();
                }
                then(outcome);
            }),
        );
        if let Err(e) = &sent {
            if let Some(probe) = probe.lock().unwrap_or_else(|e| e.into_inner()).take() {
                probe.end_error(e);
            }
            if is_short {
                conn.close();
            }
        }
        sent
    }

    /// Sends a oneway request: it is written (or queued) when this returns; no answer comes.
    pub fn oneway(&self, request: Command) -> Result<(), Error> {
        let probe = Probe::client(&request, &self.shared.addrs[0]);
        let result = probe.span().in_scope(|| self.oneway_unobserved(request));
        probe.end_oneway(&result);
        result
    }

    fn oneway_unobserved(&self, request: Command) -> Result<(), Error> {
        match self.shared.config.mode {
            Mode::Short => {
                let conn = self.shared.open()?;
                let outcome = conn.oneway(request);
                conn.close();
                outcome
            }
            Mode::Long { .. } => self.acquire()?.oneway(request),
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.shared
            .lock_pool()
            .connections()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// Closes every connection (idempotent): calls in flight fail with [`Error::Closed`], the
    /// client's threads are joined, later calls fail at once.
    pub fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let conns = self.shared.lock_pool().take_all();
        for conn in conns {
            conn.close();
        }
        self.shared.changed.notify_all();
        self.shared.workers.shutdown();
    }

    /// The connection the core's pool policy picks, connecting (or reconnecting) when it says so.
    fn acquire(&self) -> Result<Arc<Conn>, Error> {
        let shared = &self.shared;
        let mut pool = shared.lock_pool();
        loop {
            if shared.closed.load(Ordering::Acquire) {
                return Err(Error::Closed { written: false });
            }
            let choice = pool.choose(
                || shared.clock.now(),
                || shared.entropy.next(),
                Conn::health,
                |c| c.in_flight(),
            );
            match choice {
                Choice::Use(i) => return Ok(Arc::clone(pool.get(i).expect("chosen slot is up"))),
                Choice::Connect { slot, fallback } => {
                    let fallback = fallback.and_then(|i| pool.get(i)).cloned();
                    drop(pool);
                    let opened = shared.open();
                    pool = shared.lock_pool();
                    shared.changed.notify_all();
                    match opened {
                        Ok(conn) if shared.closed.load(Ordering::Acquire) => {
                            pool.abandon(slot);
                            drop(pool);
                            conn.close();
                            return Err(Error::Closed { written: false });
                        }
                        Ok(conn) => {
                            pool.connected(slot, Arc::clone(&conn));
                            return Ok(conn);
                        }
                        Err(e) => {
                            pool.connect_failed(slot, shared.clock.now(), shared.entropy.next());
                            return fallback.ok_or(e);
                        }
                    }
                }
                Choice::Wait => {
                    let (guard, _) = shared
                        .changed
                        .wait_timeout(pool, shared.config.connect_timeout)
                        .unwrap_or_else(|e| e.into_inner());
                    pool = guard;
                }
                Choice::Unavailable { retry_in } => return Err(Error::Unavailable { retry_in }),
            }
        }
    }
}

impl Shared {
    fn lock_pool(&self) -> MutexGuard<'_, Pool<Arc<Conn>>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection to the first address that accepts.
    fn open(&self) -> Result<Arc<Conn>, Error> {
        let mut last = None;
        for addr in &self.addrs {
            match TcpStream::connect_timeout(addr, self.config.connect_timeout) {
                Ok(stream) => {
                    let idle_timeout = match self.config.mode {
                        Mode::Long { idle_timeout } => idle_timeout,
                        Mode::Short => None,
                    };
                    let config = ConnConfig {
                        machine: self.config.connection,
                        idle_timeout,
                        dispatch: Dispatch::Workers,
                    };
                    let started = Conn::start(
                        stream,
                        &self.secure,
                        config,
                        self.clock,
                        Arc::clone(&self.handler),
                        Arc::clone(&self.workers),
                        None,
                    )
                    .map_err(|e| Error::Connect(e.into()))
                    // Connected means the TLS handshake completed too.
                    .and_then(|conn| match conn.handshake() {
                        Ok(()) => Ok(conn),
                        Err(e) => {
                            conn.close();
                            Err(e)
                        }
                    });
                    self.observe_open(&started);
                    return started;
                }
                Err(e) => last = Some(e),
            }
        }
        let failed = Err(Error::Connect(
            last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
                .into(),
        ));
        self.observe_open(&failed);
        failed
    }

    /// Publishes a connect; a long-lived pool's opens beyond its size are reconnects.
    fn observe_open(&self, attempt: &Result<Arc<Conn>, Error>) {
        remora_metrics::connection(Side::Client, attempt);
        if attempt.is_ok()
            && matches!(self.config.mode, Mode::Long { .. })
            && self.opened.fetch_add(1, Ordering::Relaxed) >= self.config.pool_size
        {
            remora_metrics::reconnected();
        }
    }
}

impl remora_core::resilience::cluster::ClientSettings for ClientConfig {
    fn set_pool_size(&mut self, connections: usize) {
        self.pool_size = connections;
    }
}
