//! The io_uring server: one listener per thread on the same port (SO_REUSEPORT), each thread
//! with its own ring, its own connections, and the handler run inline (no locks, no hops).

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use remora_core::{Budget, BudgetConfig, Config, Handler, Snapshot};
use socket2::{Domain, Socket, Type};
use tokio::sync::watch;
use tokio_uring::net::TcpListener;

use crate::conn::{Clock, Conn};

/// How a [`Server`] runs.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// I/O threads, each with its own ring and listener (default: one per core).
    pub threads: usize,
    /// Each connection's machine. `max_incoming` is the most requests in flight per connection;
    /// beyond it the server answers `SYSTEM_BUSY`.
    pub connection: Config,
    /// How long [`Server::stop`] waits for requests in flight to be answered and written.
    pub drain_timeout: Duration,
    /// Limits on all connections of all threads together: beyond its buffered bytes new
    /// requests are answered `SYSTEM_BUSY` and new connections refused (with a `tracing`
    /// warning), as beyond its connection count.
    pub budget: BudgetConfig,
    /// The listen backlog of each thread's listener.
    pub backlog: i32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            connection: Config::default(),
            drain_timeout: Duration::from_secs(5),
            budget: BudgetConfig::default(),
            backlog: 4096,
        }
    }
}

/// A remoting server on io_uring, thread per core.
///
/// The handler runs on the I/O thread that read the request, so it must be quick (hand slow work
/// to threads of your own and answer from there is not supported yet). A corrupt frame closes only
/// its connection; oneway requests are handled and never answered.
pub struct Server {
    local_addr: SocketAddr,
    budget: Arc<Budget>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` with the default configuration.
    pub fn bind(addr: impl ToSocketAddrs, handler: impl Handler) -> io::Result<Server> {
        Server::bind_with(addr, Arc::new(handler), ServerConfig::default())
    }

    /// Listens on `addr` with `config.threads` threads.
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
    ) -> io::Result<Server> {
        let handler = remora_metrics::Observed::wrap(handler);
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        // The first listener fixes the port (when 0 was asked for); the others share it.
        let first = listener(addr, config.backlog)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..config.threads.max(1) {
            listeners.push(listener(local_addr, config.backlog)?);
        }
        let budget = Arc::new(Budget::new(config.budget));
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::new();
        for (i, std_listener) in listeners.into_iter().enumerate() {
            let handler = Arc::clone(&handler);
            let budget = Arc::clone(&budget);
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("remora-uring-server-{i}"))
                .spawn(move || {
                    tokio_uring::start(serve(std_listener, handler, budget, config, stopped));
                })?;
            threads.push(thread);
        }
        Ok(Server {
            local_addr,
            budget,
            stop,
            threads,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the connections of all threads hold and have done: connections, buffered bytes
    /// (now and at their peak), requests, responses, busy answers, refusals.
    pub fn stats(&self) -> Snapshot {
        self.budget.snapshot()
    }

    /// Stops gracefully (idempotent): accepts no more connections, waits up to
    /// [`ServerConfig::drain_timeout`] for requests in flight to be answered and written, then
    /// closes every connection and joins every thread.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.max(1))?;
    Ok(socket.into())
}

async fn serve(
    std_listener: std::net::TcpListener,
    handler: Arc<dyn Handler>,
    budget: Arc<Budget>,
    config: ServerConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = TcpListener::from_std(std_listener);
    let clock = Clock::new();
    let conns: Rc<RefCell<Vec<Weak<Conn>>>> = Rc::new(RefCell::new(Vec::new()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // EMFILE and friends: back off a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let account = match budget.admit() {
                    Ok(account) => account,
                    Err(refusal) => {
                        tracing::warn!(%peer, "{refusal}");
                        drop(stream);
                        continue;
                    }
                };
                let served = Some((Arc::clone(&budget), account));
                let conn = Conn::start_served(
                    stream,
                    config.connection,
                    None,
                    Arc::clone(&handler),
                    clock,
                    served,
                );
                let mut list = conns.borrow_mut();
                list.retain(|c| c.upgrade().is_some_and(|c| !c.is_closed()));
                list.push(Rc::downgrade(&conn));
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    let live: Vec<Rc<Conn>> = conns.borrow().iter().filter_map(Weak::upgrade).collect();
    let give_up = tokio::time::Instant::now() + config.drain_timeout;
    for conn in &live {
        while !conn.is_closed()
            && conn.unfinished() != (0, false)
            && tokio::time::Instant::now() < give_up
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for conn in &live {
        conn.close();
    }
    // Let the connection tasks see the close and finish.
    tokio::task::yield_now().await;
}
