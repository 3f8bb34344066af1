//! An async client to one endpoint, written once for the tokio and tokio-uring drivers: the
//! resolved addresses, the pool on the core's policy, and the calls through it. A driver says
//! how to connect a socket and start its connection on it ([`Dial`]), and keeps the client behind
//! its own shared pointer (`Arc` for tokio's `Send` client, `Rc` for tokio-uring's thread-local
//! one): nothing here requires `Send`.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::time::Duration;

use remora_core::backoff::Backoff;
use remora_core::{CallError, Command, Outgoing};
use remora_metrics::Probed;

use crate::pool::{self, AsyncPool, PooledConn};

/// How a driver makes and uses its connections.
pub trait Dial {
    /// A connected socket.
    type Stream;
    /// A pooled connection: the driver's shared pointer to it.
    type Conn: Clone + Deref<Target: PooledConn>;
    /// A call in flight on a connection.
    type Pending: Future<Output = Result<Command, CallError>> + Unpin;

    /// Connects a socket to `addr`.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>>;
    /// Starts a connection on `stream` (its TLS handshake, if any, under way).
    fn start(&self, stream: Self::Stream) -> Result<Self::Conn, CallError>;
    /// Waits until `conn`'s TLS handshake completed (at once for plaintext).
    fn handshake(conn: &Self::Conn) -> impl Future<Output = Result<(), CallError>>;
    /// Queues a call on `conn`.
    fn call(
        conn: &Self::Conn,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Self::Pending, CallError>;
    /// Queues a oneway request on `conn`.
    fn oneway(conn: &Self::Conn, request: Command) -> Result<(), CallError>;
}

/// What an async client's pool is made with (from the driver's client configuration).
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Connections kept to the endpoint.
    pub size: usize,
    /// Delay before reconnecting after a connection failed.
    pub reconnect: Backoff,
    /// How long a connect (TLS handshake included) may take.
    pub connect_timeout: Duration,
}

/// An async client to one endpoint: a pool of connections that `D` dials, and the calls over it.
pub struct AsyncClient<D: Dial> {
    addrs: Vec<SocketAddr>,
    dial: D,
    connect_timeout: Duration,
    pool: AsyncPool<D::Conn>,
}

impl<D: Dial> AsyncClient<D> {
    /// A client to `addr` (resolved now, blocking as `std::net::ToSocketAddrs` is) that connects
    /// on demand.
    pub fn new(addr: impl ToSocketAddrs, dial: D, pool: PoolSettings) -> Result<Self, CallError> {
        Ok(AsyncClient {
            addrs: crate::resolve(addr)?,
            dial,
            connect_timeout: pool.connect_timeout,
            pool: AsyncPool::new(pool.size, pool.reconnect, pool.connect_timeout),
        })
    }

    /// Sends `request` and waits up to `timeout` for its response (whatever its code).
    pub async fn call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Command, CallError> {
        self.start_call(request, timeout).await?.await
    }

    /// Queues `request` (connecting if need be) and gives the future of its outcome, in the
    /// request's span with its metrics probe.
    pub async fn start_call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Probed<D::Pending>, CallError> {
        let start = |r| async move { D::call(&self.acquire().await?, r, timeout) };
        pool::start_call(&self.addrs[0], request, start).await
    }

    /// Queues a oneway request on a connection.
    pub async fn oneway(&self, request: Command) -> Result<(), CallError> {
        let send = |r| async move { D::oneway(&self.acquire().await?, r) };
        pool::oneway(&self.addrs[0], request, send).await
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.pool.connections()
    }

    /// Closes every connection (idempotent): calls in flight fail with `Closed`, later calls
    /// fail at once.
    pub fn close(&self) {
        self.pool.close();
    }

    /// The connection the core's pool policy picks, connecting (or reconnecting) when it says
    /// so. A constructor that connects at once awaits this to fail fast on a wrong address.
    pub async fn acquire(&self) -> Result<D::Conn, CallError> {
        self.pool.acquire(|| self.open()).await
    }

    /// A new connection to the first address that accepts; connected means the TLS handshake
    /// completed too.
    async fn open(&self) -> Result<D::Conn, CallError> {
        let stream = pool::connect_first(&self.addrs, self.connect_timeout, D::connect).await?;
        let conn = self.dial.start(stream)?;
        match D::handshake(&conn).await {
            Ok(()) => Ok(conn),
            Err(e) => {
                conn.close();
                Err(e)
            }
        }
    }
}
