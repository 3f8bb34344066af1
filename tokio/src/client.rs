//! The client: a pool of multiplexed connections to one endpoint, usable from any task.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use remora_core::backoff::Backoff;
use remora_core::{CallError, Command, Config, Handler, NotSupported, Outgoing};
use remora_driver::client::{AsyncClient, Dial, PoolSettings};
use remora_metrics::Probed;
use remora_tls::{ClientTls, Secure};
use tokio::net::TcpStream;

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

/// How this driver's connections are made: its settings, handler and TLS.
struct Tokio {
    secure: Secure,
    config: ConnConfig,
    handler: Arc<dyn Handler>,
    clock: Clock,
}

impl Dial for Tokio {
    type Stream = TcpStream;
    type Conn = Arc<Conn>;
    type Pending = CallFuture;

    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> {
        TcpStream::connect(addr)
    }
    fn start(&self, stream: TcpStream) -> Result<Arc<Conn>, CallError> {
        let handler = Arc::clone(&self.handler);
        Conn::start(stream, &self.secure, self.config, handler, self.clock, None)
            .map_err(|e| CallError::Connect(e.into()))
    }
    fn handshake(conn: &Arc<Conn>) -> impl Future<Output = Result<(), CallError>> {
        conn.handshake()
    }
    fn call(
        conn: &Arc<Conn>,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<CallFuture, CallError> {
        conn.call(request, timeout)
    }
    fn oneway(conn: &Arc<Conn>, request: Command) -> Result<(), CallError> {
        conn.oneway(request)
    }
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
    core: Arc<AsyncClient<Tokio>>,
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
        client.core.acquire().await?;
        Ok(client)
    }

    /// Connects to `addr` (`host:port`) over TLS: `host` (or the name `tls` gives) is sent as
    /// SNI and verified against the server's certificate, and each connection's handshake must
    /// complete within [`ClientConfig::connect_timeout`]. A failed handshake (untrusted
    /// certificate, name mismatch, refused client certificate, a plaintext server) fails the
    /// calls waiting on that connection with [`CallError::Connect`] carrying the
    /// [`TlsError`](remora_tls::TlsError) (never as possibly delivered); the pool reconnects
    /// with its backoff.
    pub async fn connect_tls(
        addr: &str,
        config: ClientConfig,
        tls: ClientTls,
    ) -> Result<Client, CallError> {
        let client = Client::lazy_tls(addr, config, NotSupported, tls)?;
        client.core.acquire().await?;
        Ok(client)
    }

    /// [`Client::lazy`] over TLS (see [`Client::connect_tls`]).
    pub fn lazy_tls(
        addr: &str,
        config: ClientConfig,
        handler: impl Handler,
        tls: ClientTls,
    ) -> Result<Client, CallError> {
        let secure = remora_driver::client_tls(addr, tls, config.connect_timeout)?;
        Client::lazy_secure(addr, config, handler, secure)
    }

    /// A client that connects on its first call (for a cluster, where one endpoint being down
    /// must not stop the others). The address is resolved now (blocking, as
    /// `std::net::ToSocketAddrs` does: pass an IP address from async code).
    pub fn lazy(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: impl Handler,
    ) -> Result<Client, CallError> {
        Client::lazy_secure(addr, config, handler, Secure::plain())
    }

    fn lazy_secure(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: impl Handler,
        secure: Secure,
    ) -> Result<Client, CallError> {
        let dial = Tokio {
            secure,
            config: ConnConfig {
                machine: config.connection,
                idle_timeout: config.idle_timeout,
                dispatch: config.dispatch,
            },
            handler: Arc::new(handler),
            clock: Clock::new(),
        };
        let pool = PoolSettings {
            size: config.pool_size,
            reconnect: config.reconnect,
            connect_timeout: config.connect_timeout,
        };
        let core = Arc::new(AsyncClient::new(addr, dial, pool)?);
        Ok(Client { core })
    }

    /// Sends `request` and waits up to `timeout` for its response (whatever its code).
    /// `request` is a [`Command`] or a request encoded once ([`remora_core::Encoded`]).
    pub async fn call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Command, CallError> {
        self.core.call(request, timeout).await
    }

    /// Queues `request` and returns the future of its outcome without waiting for it: start
    /// many calls, then await them (they share writes). Dropping the future cancels the call.
    /// The future carries the request's span and metrics probe (see [`Probed`]).
    pub async fn start_call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Probed<CallFuture>, CallError> {
        self.core.start_call(request, timeout).await
    }

    /// Queues a oneway request; the connection's task writes it on its next turn. A
    /// [`close`](Client::close) before then drops it (close discards unsent bytes).
    pub async fn oneway(&self, request: Command) -> Result<(), CallError> {
        self.core.oneway(request).await
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.core.connections()
    }

    /// Closes every connection (idempotent): calls in flight fail with
    /// [`CallError::Closed`] (saying whether each was written), later calls fail at once.
    pub fn close(&self) {
        self.core.close();
    }
}

impl remora_core::resilience::cluster::ClientSettings for ClientConfig {
    fn set_pool_size(&mut self, connections: usize) {
        self.pool_size = connections;
    }
}
