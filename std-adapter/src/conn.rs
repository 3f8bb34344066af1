//! One TCP connection driven by a `remora_core::Connection`: a reader thread feeds the machine,
//! callers queue requests and write, worker threads run the handler.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_utils::sync::{Parker, Unparker};
use remora_core::{
    CloseReason, Command, Config, Connection, Event, IncomingRequest, Instant, Outgoing, RequestId,
};

use crate::handler::{run_handler, Handler, Workers};
use crate::Error;

/// The driver's clock: core `Instant`s are nanoseconds since `origin`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::from_nanos(self.origin.elapsed().as_nanos() as u64)
    }
}

/// Where a caller waits for its call's outcome.
struct CallSlot {
    outcome: Mutex<Option<Result<Command, Error>>>,
    unparker: Unparker,
}

impl CallSlot {
    fn complete(&self, outcome: Result<Command, Error>) {
        *lock(&self.outcome) = Some(outcome);
        self.unparker.unpark();
    }

    fn take(&self) -> Option<Result<Command, Error>> {
        lock(&self.outcome).take()
    }
}

thread_local! {
    static PARKER: Parker = Parker::new();
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct State {
    machine: Connection,
    calls: HashMap<RequestId, Arc<CallSlot>>,
}

/// How a connection runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnConfig {
    pub(crate) machine: Config,
    /// Close the connection after this long with nothing in flight.
    pub(crate) idle_timeout: Option<Duration>,
}

pub(crate) struct Conn {
    state: Mutex<State>,
    /// Held while writing, so frames go out whole and in order.
    writer: Mutex<TcpStream>,
    /// Another handle on the socket, to shut it down while a write or read is blocked.
    control: TcpStream,
    clock: Clock,
    handler: Arc<dyn Handler>,
    workers: Arc<Workers>,
    reader: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Nanoseconds (on `clock`) of the last call or byte read.
    last_active: AtomicU64,
    peer: SocketAddr,
}

/// A connection accepted by a [`Server`](crate::Server), for sending requests to that client
/// (as brokers do: transaction checks, consumer queries).
#[derive(Clone)]
pub struct Peer {
    conn: Arc<Conn>,
}

impl Peer {
    pub(crate) fn new(conn: Arc<Conn>) -> Peer {
        Peer { conn }
    }

    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.conn.peer
    }

    /// Sends a request to the client and waits up to `timeout` for its response.
    pub fn call(&self, request: impl Outgoing, timeout: Duration) -> Result<Command, Error> {
        self.conn.call(request, timeout)
    }

    /// Sends a oneway request to the client.
    pub fn oneway(&self, request: Command) -> Result<(), Error> {
        self.conn.oneway(request)
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

impl Conn {
    /// Starts driving `stream`: spawns its reader thread.
    pub(crate) fn start(
        stream: TcpStream,
        config: ConnConfig,
        clock: Clock,
        handler: Arc<dyn Handler>,
        workers: Arc<Workers>,
    ) -> io::Result<Arc<Conn>> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let read_half = stream.try_clone()?;
        if let Some(idle) = config.idle_timeout {
            read_half.set_read_timeout(Some(idle.max(Duration::from_millis(1))))?;
        }
        let conn = Arc::new(Conn {
            state: Mutex::new(State {
                machine: Connection::new(config.machine),
                calls: HashMap::new(),
            }),
            control: stream.try_clone()?,
            writer: Mutex::new(stream),
            clock,
            handler,
            workers,
            reader: Mutex::new(None),
            closed: AtomicBool::new(false),
            last_active: AtomicU64::new(clock.now().as_nanos()),
            peer,
        });
        let for_reader = Arc::clone(&conn);
        let idle = config.idle_timeout;
        let handle = std::thread::Builder::new()
            .name(format!("remora-read-{peer}"))
            .spawn(move || for_reader.read_loop(read_half, idle))?;
        *lock(&conn.reader) = Some(handle);
        Ok(conn)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Why the machine closed, once it has.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.state).machine.close_reason()
    }

    /// How the pool should see this connection.
    pub(crate) fn health(self: &Arc<Self>) -> remora_core::pool::Health {
        use remora_core::pool::Health;
        if !self.is_closed() {
            return Health::Open;
        }
        match self.close_reason() {
            Some(remora_core::CloseReason::Local) | None => Health::Closed,
            Some(_) => Health::Failed,
        }
    }

    /// Our requests awaiting responses.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.state).machine.pending_requests()
    }

    /// Peer requests not yet answered, and whether bytes still wait to be written.
    pub(crate) fn unfinished(&self) -> (usize, bool) {
        let st = lock(&self.state);
        (
            st.machine.pending_incoming(),
            st.machine.poll_transmit().is_some(),
        )
    }

    fn touch(&self) {
        self.last_active
            .store(self.clock.now().as_nanos(), Ordering::Relaxed);
    }

    /// Sends `cmd` and blocks until its response, its deadline, or the connection's end.
    pub(crate) fn call(
        self: &Arc<Self>,
        cmd: impl Outgoing,
        timeout: Duration,
    ) -> Result<Command, Error> {
        let unparker = PARKER.with(|p| p.unparker().clone());
        let slot = Arc::new(CallSlot {
            outcome: Mutex::new(None),
            unparker,
        });
        let now = self.clock.now();
        let deadline = now + timeout;
        {
            let mut st = lock(&self.state);
            let id = cmd
                .send(&mut st.machine, deadline, now)
                .map_err(Error::from)?;
            st.calls.insert(id, Arc::clone(&slot));
        }
        self.touch();
        self.flush();
        loop {
            if let Some(outcome) = slot.take() {
                self.touch();
                return outcome;
            }
            let now = self.clock.now();
            if now >= deadline {
                // Our deadline: let the machine expire it (it fills our slot).
                let mut st = lock(&self.state);
                st.machine.handle_timeout(now);
                self.drain_events(&mut st);
                continue;
            }
            PARKER.with(|p| p.park_timeout(deadline - now));
        }
    }

    /// Sends a oneway request.
    pub(crate) fn oneway(self: &Arc<Self>, cmd: Command) -> Result<(), Error> {
        lock(&self.state)
            .machine
            .send_oneway(cmd)
            .map_err(Error::from)?;
        self.touch();
        self.flush();
        Ok(())
    }

    /// Writes whatever the machine has queued. Threads that find another one writing leave
    /// their frames to it (it loops until the buffer is empty), so writes coalesce under load.
    pub(crate) fn flush(self: &Arc<Self>) {
        loop {
            let mut stream = match self.writer.try_lock() {
                Ok(s) => s,
                Err(std::sync::TryLockError::WouldBlock) => return,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            };
            let chunk = lock(&self.state).machine.take_transmit();
            match chunk {
                Some(bytes) => {
                    if stream.write_all(&bytes).is_err() {
                        drop(stream);
                        self.lost();
                        return;
                    }
                }
                None => {
                    drop(stream);
                    // A frame queued while we held the writer would be stranded: look again.
                    if lock(&self.state).machine.poll_transmit().is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// Answers a peer's request (on a worker thread).
    fn answer(self: &Arc<Self>, request: IncomingRequest, command: Command) {
        if self.is_closed() {
            // Nobody to answer: skip the work (the server may be stopping).
            lock(&self.state).machine.dismiss(request);
            return;
        }
        let response = run_handler(&*self.handler, command);
        let sent = lock(&self.state).machine.send_response(request, response);
        if sent.is_ok() {
            self.flush();
        }
    }

    /// Hands the machine's events on. Runs under the state lock.
    fn drain_events(self: &Arc<Self>, st: &mut State) {
        while let Some(event) = st.machine.poll_event() {
            match event {
                Event::Response { id, response } => {
                    if let Some(slot) = st.calls.remove(&id) {
                        slot.complete(Ok(response));
                    }
                }
                Event::Failed { id, error } => {
                    if let Some(slot) = st.calls.remove(&id) {
                        slot.complete(Err(Error::from(error)));
                    }
                }
                Event::Request { request, command } => {
                    let conn = Arc::clone(self);
                    // Refused only while shutting down, when the connection is closing anyway.
                    self.workers.execute(move || conn.answer(request, command));
                }
                Event::Oneway { command } => {
                    let handler = Arc::clone(&self.handler);
                    self.workers.execute(move || {
                        let _ = run_handler(&*handler, command);
                    });
                }
                Event::Closed { .. } => self.closed.store(true, Ordering::Release),
            }
        }
    }

    fn read_loop(self: Arc<Self>, mut stream: TcpStream, idle: Option<Duration>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return self.lost(),
                Ok(n) => {
                    self.touch();
                    let mut st = lock(&self.state);
                    let now = self.clock.now();
                    st.machine.handle_input(&buf[..n], now);
                    st.machine.handle_timeout(now);
                    self.drain_events(&mut st);
                    let closed = st.machine.is_closed();
                    let to_write = st.machine.poll_transmit().is_some();
                    drop(st);
                    if closed {
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    }
                    if to_write {
                        // The machine answered by itself (SYSTEM_BUSY). The reader must never
                        // block on a write, so a worker writes it.
                        let conn = Arc::clone(&self);
                        self.workers.execute(move || conn.flush());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(idle) = idle {
                        if self.idle_for() >= idle {
                            let st = lock(&self.state);
                            let busy = st.machine.pending_requests() > 0
                                || st.machine.pending_incoming() > 0;
                            drop(st);
                            if !busy {
                                self.shut_down(true);
                                return;
                            }
                        }
                    }
                }
                Err(_) => return self.lost(),
            }
            if self.is_closed() {
                return;
            }
        }
    }

    fn idle_for(&self) -> Duration {
        let last = self.last_active.load(Ordering::Relaxed);
        Duration::from_nanos(self.clock.now().as_nanos().saturating_sub(last))
    }

    /// The transport failed: fail every call, close the socket.
    fn lost(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        st.machine.handle_disconnect();
        self.drain_events(&mut st);
        drop(st);
        self.closed.store(true, Ordering::Release);
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// Closes the connection (idempotent): calls in flight fail with `Closed`, the reader thread
    /// is joined (unless this is it).
    pub(crate) fn close(self: &Arc<Self>) {
        self.shut_down(false);
    }

    fn shut_down(self: &Arc<Self>, from_reader: bool) {
        let mut st = lock(&self.state);
        st.machine.close();
        self.drain_events(&mut st);
        drop(st);
        self.closed.store(true, Ordering::Release);
        // Shutting the socket down wakes the reader from its blocking read.
        let _ = self.control.shutdown(Shutdown::Both);
        if !from_reader {
            let handle = lock(&self.reader).take();
            if let Some(handle) = handle {
                if handle.thread().id() != std::thread::current().id() {
                    let _ = handle.join();
                }
            }
        }
    }
}
