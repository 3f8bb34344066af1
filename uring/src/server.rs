//! The io_uring server: one listener per thread on the same port (SO_REUSEPORT), each thread
//! an [`EventLoop`] with its own ring, its own connections, and the handler run inline (no
//! locks, no hops).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use remora_core::{Budget, Handler, Snapshot};
use socket2::{Domain, Socket, Type};

use remora_tls::{Secure, ServerTls};

use crate::ring::{Echo, EventLoop, LoopConfig};

remora_driver::server_config! {
    /// How a [`Server`] runs.
    pub struct ServerConfig {
        /// I/O threads, each with its own ring and listener (default: one per core).
        pub threads: usize = std::thread::available_parallelism().map_or(1, |n| n.get()),
        /// Each thread's ring: sizes, provided buffers, which operations.
        pub io: LoopConfig = LoopConfig::default(),
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
    stop: Arc<AtomicBool>,
    wakes: Vec<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    /// Connections open on each thread's loop, as of its last turn.
    loads: Arc<[AtomicUsize]>,
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
        Server::bind_secure(addr, handler, config, Secure::plain(), false)
    }

    /// A byte echo on the same loops (threads, listeners, ring, provided buffers, budget): every
    /// byte a client sends comes back as it came, with no protocol anywhere. The baseline a
    /// [`Server`]'s protocol path is measured against (`remora bench --mode raw --backend
    /// uring`); plaintext only.
    pub fn bind_echo(addr: impl ToSocketAddrs, config: ServerConfig) -> io::Result<Server> {
        let handler: Arc<dyn Handler> = Arc::new(remora_core::NotSupported);
        Server::bind_secure(addr, handler, config, Secure::plain(), true)
    }

    /// Listens on `addr` with TLS, in `tls`'s [`ServerMode`](remora_tls::ServerMode):
    /// enforcing refuses plaintext clients (a `tracing` warning says so), permissive serves
    /// plaintext and TLS clients on the one port.
    pub fn bind_tls(
        addr: impl ToSocketAddrs,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
        tls: ServerTls,
    ) -> io::Result<Server> {
        Server::bind_secure(addr, handler, config, Secure::server(tls), false)
    }

    fn bind_secure(
        addr: impl ToSocketAddrs,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
        secure: Secure,
        echo: bool,
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
        let stop = Arc::new(AtomicBool::new(false));
        let loads: Arc<[AtomicUsize]> = (0..listeners.len()).map(|_| AtomicUsize::new(0)).collect();
        let mut server = Server {
            local_addr,
            budget: Arc::clone(&budget),
            stop: Arc::clone(&stop),
            wakes: Vec::new(),
            threads: Vec::new(),
            loads: Arc::clone(&loads),
        };
        for (i, std_listener) in listeners.into_iter().enumerate() {
            let handler = Arc::clone(&handler);
            let budget = Arc::clone(&budget);
            let stop = Arc::clone(&stop);
            let secure = secure.clone();
            let loads = Arc::clone(&loads);
            let (wake_fd, loop_fd) = eventfd()?;
            let (ready, started) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("remora-uring-server-{i}"))
                .spawn(move || {
                    let io = Io {
                        stop,
                        wake: loop_fd,
                        ready,
                        echo,
                        loads,
                        index: i,
                    };
                    serve(std_listener, handler, budget, config, secure, io);
                })?;
            server.wakes.push(wake_fd);
            server.threads.push(thread);
            // A thread that could not set up its ring fails the bind (dropping `server` stops
            // the threads already running).
            started
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("server thread ended at start")))?;
        }
        Ok(server)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open on each I/O thread, as of that thread's last turn: how the kernel
    /// spread the accepts over the threads' SO_REUSEPORT listeners.
    pub fn connections_per_thread(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
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
        self.stop.store(true, Ordering::Release);
        for fd in &self.wakes {
            wake(fd);
        }
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

/// One server thread: its loop accepts from `std_listener` until `stop`, then drains.
/// A server thread's links to the [`Server`]: its stop flag, its wake-up, its start report.
struct Io {
    stop: Arc<AtomicBool>,
    wake: OwnedFd,
    ready: mpsc::Sender<io::Result<()>>,
    /// Serve a byte echo ([`Server::bind_echo`]) instead of the protocol.
    echo: bool,
    /// Where this thread (at `index`) reports its connection count after each turn.
    loads: Arc<[AtomicUsize]>,
    index: usize,
}

fn serve(
    std_listener: std::net::TcpListener,
    handler: Arc<dyn Handler>,
    budget: Arc<Budget>,
    config: ServerConfig,
    secure: Secure,
    Io {
        stop,
        wake,
        ready,
        echo,
        loads,
        index,
    }: Io,
) {
    let mut event_loop = match EventLoop::new(config.connection, config.io, handler) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    event_loop.set_budget(budget);
    event_loop.serve_tls(secure);
    if echo {
        event_loop.set_raw(Box::new(Echo));
    }
    event_loop.listen(std_listener);
    event_loop.wake_on(wake);
    let _ = ready.send(Ok(()));
    let mut none = Vec::new();
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = event_loop.turn(Duration::from_secs(1), &mut none) {
            tracing::warn!("io_uring: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        loads[index].store(event_loop.connections(), Ordering::Relaxed);
    }
    event_loop.stop_listening();
    let give_up = std::time::Instant::now() + config.drain_timeout;
    while event_loop.unfinished() != (0, false) && std::time::Instant::now() < give_up {
        let _ = event_loop.turn(Duration::from_millis(1), &mut none);
    }
    event_loop.close_all();
    // Dropping the loop waits (bounded) for the kernel to let go of every connection.
}

/// An eventfd for waking a thread's loop, and a second descriptor of it for the loop.
fn eventfd() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let other = fd.try_clone()?;
    Ok((fd, other))
}

fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}
