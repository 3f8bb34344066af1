//! An async client to one endpoint, written once for the tokio and tokio-uring drivers: the
//! resolved addresses, the pool on the core's policy, its connect and TLS handshake, and the
//! calls through it. A driver says how to connect a socket, start its connection on it and share
//! the client ([`Dial`]); `remora_tokio::Client` and `remora_uring::LocalClient` are this type
//! with their driver's dialer. Nothing here requires `Send`: tokio shares the client through an
//! `Arc`, tokio-uring through an `Rc`.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use remora_core::backoff::Backoff;
use remora_core::{CallError, Command, Handler, NotSupported, Outgoing};
use remora_metrics::Probed;
use remora_tls::{ClientTls, Secure};
use tokio::sync::Notify;

use crate::pool::{self, AsyncPool, PooledConn};

/// Defines an async driver's client configuration: the fields the tokio and tokio-uring
/// clients share (`connection`, `pool_size`, `idle_timeout`, `connect_timeout`, `reconnect`),
/// with their documentation and defaults, before the driver's own (each
/// `pub name: Type = default,`). One struct per driver, so that struct literals name every field
/// directly (`ClientConfig { pool_size: 4, ..Default::default() }`).
#[macro_export]
macro_rules! async_client_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident: $ty:ty = $default:expr,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            /// Each connection's machine (`max_waiters` is the most calls in flight per
            /// connection).
            pub connection: $crate::__core::Config,
            /// Connections kept to the endpoint (by each of a client's threads, where it has
            /// several); calls go to the one with the fewest in flight.
            pub pool_size: usize,
            /// Close a connection after this long with nothing in flight (reopened on demand).
            pub idle_timeout: Option<::std::time::Duration>,
            /// How long a connect (TLS handshake included) may take.
            pub connect_timeout: ::std::time::Duration,
            /// Delay before reconnecting after a connection failed (grows with consecutive
            /// failures).
            pub reconnect: $crate::__core::backoff::Backoff,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    connection: $crate::__core::Config::default(),
                    pool_size: 1,
                    idle_timeout: Some(::std::time::Duration::from_secs(120)),
                    connect_timeout: ::std::time::Duration::from_secs(3),
                    reconnect: $crate::__core::backoff::Backoff::default(),
                    $($field: $default,)*
                }
            }
        }

        impl $name {
            /// The pool these settings ask for.
            fn pool_settings(&self) -> $crate::client::PoolSettings {
                $crate::client::PoolSettings::new(self.pool_size, self.reconnect, self.connect_timeout)
            }
        }
    };
}

/// What a client of `D` pools: its connections' shared pointers.
type Pooled<D> = <<D as Dial>::Conn as AsyncConn>::Shared;

/// An async driver's connection, as its client's pool uses it.
pub trait AsyncConn: PooledConn + Sized {
    /// The pointer the pool holds it by (`Arc` or `Rc`).
    type Shared: Clone + Deref<Target = Self>;
    /// A call in flight on it.
    type Pending: Future<Output = Result<Command, CallError>> + Unpin;

    /// Signalled when its TLS handshake settles.
    fn settled(&self) -> &Notify;
    /// Whether it is usable, once its handshake has ended (at once for plaintext): a failed
    /// handshake is a failed connect.
    fn connect_outcome(&self) -> Option<Result<(), CallError>>;
    /// Queues `request` on `this`; the returned future resolves with its response or error.
    /// Dropping the future cancels the call (an unwritten request is then never sent).
    fn call(
        this: &Self::Shared,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Self::Pending, CallError>;
    /// Queues a oneway request.
    fn oneway(&self, request: Command) -> Result<(), CallError>;

    /// Waits until the TLS handshake (if any) ends — bounded by its deadline, which the
    /// connection's timer enforces — and says whether the connection is usable.
    fn handshake(&self) -> impl Future<Output = Result<(), CallError>> {
        async move {
            loop {
                let settled = self.settled().notified();
                tokio::pin!(settled);
                // Registered before looking, so a change made in between still wakes us.
                settled.as_mut().enable();
                if let Some(outcome) = self.connect_outcome() {
                    return outcome;
                }
                settled.await;
            }
        }
    }
}

/// How a driver makes its connections and shares its clients.
pub trait Dial: Sized {
    /// The driver's client configuration.
    type Config: Copy;
    /// A connected socket.
    type Stream;
    /// A pooled connection.
    type Conn: AsyncConn;
    /// The pointer the driver shares a client through (`Arc` or `Rc`).
    type Shared<T>: Clone + Deref<Target = T>;

    /// Shares `value`.
    fn share<T>(value: T) -> Self::Shared<T>;
    /// The dialer for `config`, answering the server's requests with `handler`.
    fn new(config: &Self::Config, handler: Arc<dyn Handler>, secure: Secure) -> Self;
    /// The pool `config` asks for.
    fn pool(config: &Self::Config) -> PoolSettings;
    /// Connects a socket to `addr`.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>>;
    /// Starts a connection on `stream` (its TLS handshake, if any, under way).
    fn start(&self, stream: Self::Stream) -> Result<Pooled<Self>, CallError>;
}

/// What an async client's pool is made with (from the driver's client configuration).
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Connections kept to the endpoint; calls go to the one with the fewest in flight.
    pub size: usize,
    /// Delay before reconnecting after a connection failed.
    pub reconnect: Backoff,
    /// How long a connect (TLS handshake included) may take.
    pub connect_timeout: Duration,
}

impl PoolSettings {
    /// `size` connections, reconnecting after `reconnect`'s backoff, each connect (TLS
    /// handshake included) within `connect_timeout`.
    pub fn new(size: usize, reconnect: Backoff, connect_timeout: Duration) -> Self {
        PoolSettings {
            size,
            reconnect,
            connect_timeout,
        }
    }
}

struct Inner<D: Dial> {
    addrs: Vec<SocketAddr>,
    dial: D,
    connect_timeout: Duration,
    pool: AsyncPool<Pooled<D>>,
}

/// A remoting client to one endpoint: a pool of multiplexed connections that `D` dials, which
/// any number of calls share at once (each response goes to its own caller). Requests the
/// server sends to the client are answered by a [`Handler`]. Clones share the connections.
pub struct AsyncClient<D: Dial> {
    inner: D::Shared<Inner<D>>,
}

impl<D: Dial> Clone for AsyncClient<D> {
    fn clone(&self) -> Self {
        AsyncClient {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Dial> AsyncClient<D> {
    /// Connects to `addr` (one connection now, the rest of the pool on demand). Requests from
    /// the server are answered `REQUEST_CODE_NOT_SUPPORTED`.
    pub async fn connect(addr: impl ToSocketAddrs, config: D::Config) -> Result<Self, CallError> {
        AsyncClient::connect_with_handler(addr, config, NotSupported).await
    }

    /// Connects to `addr`; requests from the server go to `handler` (run on the connection's
    /// task).
    pub async fn connect_with_handler(
        addr: impl ToSocketAddrs,
        config: D::Config,
        handler: impl Handler,
    ) -> Result<Self, CallError> {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        AsyncClient::connect_secure(addr, config, handler, Secure::plain()).await
    }

    /// Connects to `addr` (`host:port`) over TLS: `host` (or the name `tls` gives) is sent as
    /// SNI and verified against the server's certificate, and each connection's handshake must
    /// complete within the configuration's connect timeout. A failed handshake (untrusted
    /// certificate, name mismatch, refused client certificate, a plaintext server) fails the
    /// calls waiting on that connection with [`CallError::Connect`] carrying the
    /// [`TlsError`](remora_tls::TlsError) (never as possibly delivered); the pool reconnects
    /// with its backoff.
    pub async fn connect_tls(
        addr: &str,
        config: D::Config,
        tls: ClientTls,
    ) -> Result<Self, CallError> {
        let secure = crate::client_tls(addr, tls, D::pool(&config).connect_timeout)?;
        AsyncClient::connect_secure(addr, config, Arc::new(NotSupported), secure).await
    }

    /// [`AsyncClient::lazy`] over TLS (see [`AsyncClient::connect_tls`]).
    pub fn lazy_tls(
        addr: &str,
        config: D::Config,
        handler: impl Handler,
        tls: ClientTls,
    ) -> Result<Self, CallError> {
        let secure = crate::client_tls(addr, tls, D::pool(&config).connect_timeout)?;
        AsyncClient::lazy_secure(addr, config, Arc::new(handler), secure)
    }

    /// A client that connects on its first call (for a cluster, where one endpoint being down
    /// must not stop the others). The address is resolved now (blocking, as
    /// `std::net::ToSocketAddrs` does: pass an IP address from async code).
    pub fn lazy(
        addr: impl ToSocketAddrs,
        config: D::Config,
        handler: impl Handler,
    ) -> Result<Self, CallError> {
        AsyncClient::lazy_secure(addr, config, Arc::new(handler), Secure::plain())
    }

    /// [`AsyncClient::lazy_secure`], then one connection now (to fail fast on a wrong address).
    pub async fn connect_secure(
        addr: impl ToSocketAddrs,
        config: D::Config,
        handler: Arc<dyn Handler>,
        secure: Secure,
    ) -> Result<Self, CallError> {
        let client = AsyncClient::lazy_secure(addr, config, handler, secure)?;
        client.acquire().await?;
        Ok(client)
    }

    /// A client that connects on its first call, plaintext or TLS as `secure` says.
    pub fn lazy_secure(
        addr: impl ToSocketAddrs,
        config: D::Config,
        handler: Arc<dyn Handler>,
        secure: Secure,
    ) -> Result<Self, CallError> {
        let settings = D::pool(&config);
        let inner = Inner {
            addrs: crate::resolve(addr)?,
            dial: D::new(&config, handler, secure),
            connect_timeout: settings.connect_timeout,
            pool: AsyncPool::new(settings.size, settings.reconnect, settings.connect_timeout),
        };
        Ok(AsyncClient {
            inner: D::share(inner),
        })
    }

    /// Sends `request` and waits up to `timeout` for its response (whatever its code).
    /// `request` is a [`Command`] or a request encoded once ([`remora_core::Encoded`]).
    pub async fn call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Command, CallError> {
        self.start_call(request, timeout).await?.await
    }

    /// Queues `request` and returns the future of its outcome without waiting for it: start
    /// many calls, then await them (they share writes). Dropping the future cancels the call.
    /// The future carries the request's span and metrics probe (see [`Probed`]).
    pub async fn start_call(
        &self,
        request: impl Outgoing,
        timeout: Duration,
    ) -> Result<Probed<<D::Conn as AsyncConn>::Pending>, CallError> {
        let start = |r| async move { D::Conn::call(&self.acquire().await?, r, timeout) };
        pool::start_call(&self.inner.addrs[0], request, start).await
    }

    /// Queues a oneway request; the connection writes it on its next turn. A
    /// [`close`](AsyncClient::close) before then drops it (close discards unsent bytes).
    pub async fn oneway(&self, request: Command) -> Result<(), CallError> {
        let send = |r| async move { self.acquire().await?.oneway(r) };
        pool::oneway(&self.inner.addrs[0], request, send).await
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.inner.pool.connections()
    }

    /// Closes every connection (idempotent): calls in flight fail with [`CallError::Closed`]
    /// (saying whether each was written), later calls fail at once.
    pub fn close(&self) {
        self.inner.pool.close();
    }

    /// The connection the core's pool policy picks, connecting (or reconnecting) when it says so.
    async fn acquire(&self) -> Result<Pooled<D>, CallError> {
        self.inner.pool.acquire(|| self.open()).await
    }

    /// A new connection to the first address that accepts; connected means the TLS handshake
    /// completed too.
    async fn open(&self) -> Result<Pooled<D>, CallError> {
        let (addrs, timeout) = (&self.inner.addrs, self.inner.connect_timeout);
        let stream = pool::connect_first(addrs, timeout, D::connect).await?;
        let conn = self.inner.dial.start(stream)?;
        match conn.handshake().await {
            Ok(()) => Ok(conn),
            Err(e) => {
                conn.close();
                Err(e)
            }
        }
    }
}
