//! The server: an accept task and one task per connection, on the caller's tokio runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use remora_core::{Budget, Handler, Snapshot};
use remora_tls::{Secure, ServerTls};
use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::conn::{Clock, Conn, ConnConfig, Dispatch, Peer, Served};

remora_driver::server_config! {
    /// How a [`Server`] runs.
    pub struct ServerConfig {
        /// Where the handler runs.
        pub dispatch: Dispatch = Dispatch::Inline,
    }
}

struct Shared {
    conns: Mutex<Vec<Arc<Conn>>>,
    stop: Notify,
    stopping: AtomicBool,
    budget: Arc<Budget>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.is_closed());
        conns
    }
}

/// A remoting server on tokio: an accept task and one task per connection, on the runtime that
/// called [`Server::bind`] (a multi-threaded runtime spreads connections over its workers).
///
/// A corrupt frame closes only its connection; oneway requests are handled and never answered;
/// with [`Dispatch::Blocking`], requests beyond `max_incoming` per connection are answered
/// `SYSTEM_BUSY` by the core machine. A peer that does not read its answers is not read either
/// (backpressure), and all connections together stay within [`ServerConfig::budget`]
/// ([`Server::stats`] shows what they hold).
///
/// ```no_run
/// use remora_core::{codes, Command};
/// use remora_tokio::{Server, ServerConfig};
///
/// # async fn run() -> std::io::Result<()> {
/// let echo = |request: Command| {
///     let body = request.body_bytes();
///     request.response(codes::SUCCESS).with_body(body)
/// };
/// let server = Server::bind("127.0.0.1:9876", echo, ServerConfig::default()).await?;
/// println!("listening on {}", server.local_addr());
/// // ... later:
/// server.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    drain_timeout: Duration,
}

impl Server {
    /// Listens on `addr` and starts accepting on the current runtime.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        handler: impl Handler,
        config: ServerConfig,
    ) -> io::Result<Server> {
        Server::bind_with(addr, Arc::new(handler), config).await
    }

    /// Listens on `addr` with TLS, in `tls`'s [`ServerMode`](remora_tls::ServerMode):
    /// enforcing refuses plaintext clients (a `tracing` warning says so), permissive serves
    /// plaintext and TLS clients on the one port.
    pub async fn bind_tls(
        addr: impl ToSocketAddrs,
        handler: impl Handler,
        config: ServerConfig,
        tls: ServerTls,
    ) -> io::Result<Server> {
        Server::bind_secure(addr, Arc::new(handler), config, Secure::server(tls)).await
    }

    /// [`Server::bind`] with a shared handler.
    pub async fn bind_with(
        addr: impl ToSocketAddrs,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
    ) -> io::Result<Server> {
        Server::bind_secure(addr, handler, config, Secure::plain()).await
    }

    async fn bind_secure(
        addr: impl ToSocketAddrs,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
        secure: Secure,
    ) -> io::Result<Server> {
        let handler = remora_metrics::Observed::wrap(handler);
        let listener = listen(addr, config.backlog).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            conns: Mutex::new(Vec::new()),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            budget: Arc::new(Budget::new(config.budget)),
        });
        let acceptor = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            handler,
            config,
            secure,
        ));
        Ok(Server {
            shared,
            local_addr,
            acceptor: Mutex::new(Some(acceptor)),
            drain_timeout: config.drain_timeout,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.shared.conns().len()
    }

    /// What the connections hold and have done: connections, buffered bytes (now and at their
    /// peak), requests, responses, busy answers, refusals.
    pub fn stats(&self) -> Snapshot {
        self.shared.budget.snapshot()
    }

    /// The open connections, to send requests to their clients.
    pub fn peers(&self) -> Vec<Peer> {
        self.shared
            .conns()
            .iter()
            .map(|c| Peer::new(Arc::clone(c)))
            .collect()
    }

    /// Stops gracefully (idempotent): accepts no more connections, waits up to
    /// [`ServerConfig::drain_timeout`] for requests in flight to be answered and written, then
    /// closes every connection.
    pub async fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_one();
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(acceptor) = acceptor {
            let _ = acceptor.await;
        }
        let conns: Vec<Arc<Conn>> = std::mem::take(&mut *self.shared.conns());
        let give_up = tokio::time::Instant::now() + self.drain_timeout;
        for conn in &conns {
            while !conn.is_closed()
                && conn.unfinished() != (0, false)
                && tokio::time::Instant::now() < give_up
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for conn in &conns {
            conn.close();
        }
    }
}

impl Drop for Server {
    /// Without [`Server::stop`]: stops accepting and closes every connection at once.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_one();
        if let Some(acceptor) = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            acceptor.abort();
        }
        for conn in std::mem::take(&mut *self.shared.conns()) {
            conn.close();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    handler: Arc<dyn Handler>,
    config: ServerConfig,
    secure: Secure,
) {
    let clock = Clock::new();
    let conn_config = ConnConfig {
        machine: config.connection,
        idle_timeout: None,
        dispatch: config.dispatch,
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    // EMFILE and friends: back off a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if shared.stopping.load(Ordering::Acquire) {
                    return;
                }
                let Some(account) = remora_driver::admit(&shared.budget, || stream.peer_addr().ok()) else {
                    continue; // dropping `stream` closes it
                };
                let served = Served {
                    budget: Arc::clone(&shared.budget),
                    account,
                };
                let started = Conn::start(
                    stream,
                    &secure,
                    conn_config,
                    Arc::clone(&handler),
                    clock,
                    Some(served),
                );
                if let Ok(conn) = started {
                    // Closed ones are dropped from the list here (their sockets already are).
                    shared.conns().push(conn);
                }
            }
            () = shared.stop.notified() => return,
        }
    }
}

/// A listener with the configured backlog (tokio's `bind` fixes it at 1024), on the first
/// address that binds.
async fn listen(addr: impl ToSocketAddrs, backlog: i32) -> io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let attempt = (|| {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(backlog.max(1) as u32)
        })();
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address")))
}
