//! The blocking server: an accept thread, a reader thread per connection, a worker pool.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use remora_core::{Budget, Snapshot};
use remora_tls::{Secure, ServerTls};

use crate::conn::Dispatch;
use crate::conn::{Clock, Conn, ConnConfig, Peer, Served};
use crate::handler::{Handler, Workers};

remora_driver::server_config! {
    /// How a [`Server`] runs.
    pub struct ServerConfig {
        /// Worker threads running the handler (shared by all connections).
        pub workers: usize = std::thread::available_parallelism().map_or(2, |n| n.get()),
        /// Where requests are handled: on the workers (the default), or inline on each
        /// connection's reader thread, for quick handlers.
        pub dispatch: Dispatch = Dispatch::Workers,
    }
}

struct Shared {
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    workers: Arc<Workers>,
    clock: Clock,
    budget: Arc<Budget>,
    /// Plaintext, or TLS in the configuration's mode.
    secure: Secure,
    conns: Arc<Mutex<HashMap<u64, Arc<Conn>>>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

/// A remoting server on `std::net`: every request on every connection is answered by the
/// handler on a worker thread. A corrupt frame closes only the connection that sent it; oneway
/// requests are handled and never answered.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Listens on `addr` with the default configuration.
    pub fn bind(addr: impl ToSocketAddrs, handler: impl Handler) -> io::Result<Server> {
        Server::bind_with(addr, handler, ServerConfig::default())
    }

    /// Listens on `addr`.
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        handler: impl Handler,
        config: ServerConfig,
    ) -> io::Result<Server> {
        Server::bind_secure(addr, handler, config, Secure::plain())
    }

    /// Listens on `addr` with TLS, in `tls`'s [`ServerMode`](remora_tls::ServerMode):
    /// enforcing refuses plaintext clients (a `tracing` warning says so), permissive serves
    /// plaintext and TLS clients on the one port.
    pub fn bind_tls(
        addr: impl ToSocketAddrs,
        handler: impl Handler,
        config: ServerConfig,
        tls: ServerTls,
    ) -> io::Result<Server> {
        Server::bind_secure(addr, handler, config, Secure::server(tls))
    }

    fn bind_secure(
        addr: impl ToSocketAddrs,
        handler: impl Handler,
        config: ServerConfig,
        secure: Secure,
    ) -> io::Result<Server> {
        let listener = listen(addr, config.backlog)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            handler: remora_metrics::Observed::wrap(Arc::new(handler)),
            workers: Workers::new(config.workers, "remora-worker"),
            clock: Clock::new(),
            budget: Arc::new(Budget::new(config.budget)),
            secure,
            conns: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let for_acceptor = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("remora-accept".into())
            .spawn(move || accept_loop(&for_acceptor, &listener))?;
        Ok(Server {
            shared,
            local_addr,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the connections hold and have done: connections, buffered bytes (now and at their
    /// peak), requests, responses, busy answers, refusals.
    pub fn stats(&self) -> Snapshot {
        self.shared.budget.snapshot()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|_, c| !c.is_closed());
        conns.len()
    }

    /// The open connections, to send requests to their clients.
    pub fn peers(&self) -> Vec<Peer> {
        let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|_, c| !c.is_closed());
        conns.values().map(|c| Peer::new(Arc::clone(c))).collect()
    }

    /// Stops gracefully (idempotent): accepts no more connections, waits up to
    /// [`ServerConfig::drain_timeout`] for requests in flight to be answered and written, then
    /// closes every connection and joins every thread.
    pub fn stop(&self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wake the acceptor from its blocking accept.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(handle) = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = handle.join();
        }
        let conns: Vec<Arc<Conn>> = self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        let give_up = std::time::Instant::now() + self.shared.config.drain_timeout;
        for conn in &conns {
            while !conn.is_closed() && std::time::Instant::now() < give_up {
                if conn.unfinished() == (0, false) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for conn in &conns {
            conn.close();
        }
        self.shared.workers.shutdown();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listener with a real backlog (std's is fixed at 128, which makes a burst of connects wait
/// for SYN retransmissions).
fn listen(addr: impl ToSocketAddrs, backlog: i32) -> io::Result<TcpListener> {
    let mut last = None;
    for addr in addr.to_socket_addrs()? {
        let attempt = (|| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(backlog.max(1))?;
            Ok::<TcpListener, io::Error>(socket.into())
        })();
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address")))
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else {
            // EMFILE and friends: back off a little rather than spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Some(account) = remora_driver::admit(&shared.budget, || stream.peer_addr().ok()) else {
            continue; // dropping `stream` closes it
        };
        let config = ConnConfig {
            machine: shared.config.connection,
            idle_timeout: None,
            dispatch: shared.config.dispatch,
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let registry = Arc::downgrade(&shared.conns);
        let served = Served {
            budget: Arc::clone(&shared.budget),
            account,
            on_closed: Box::new(move || {
                if let Some(conns) = registry.upgrade() {
                    conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                }
            }),
        };
        let conn = Conn::start(
            stream,
            &shared.secure,
            config,
            shared.clock,
            Arc::clone(&shared.handler),
            Arc::clone(&shared.workers),
            Some(served),
        );
        if let Ok(conn) = conn {
            // `closed` is set before `on_closed` runs: a connection that already ended is not
            // registered, and one that ends later is removed by its `on_closed`.
            let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            if !conn.is_closed() {
                conns.insert(id, conn);
            }
        }
    }
}
