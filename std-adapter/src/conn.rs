//! One TCP connection driven by a `remora_core::Connection`: a reader thread feeds the machine,
//! callers queue requests and write, worker threads run the handler.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_utils::sync::{Parker, Unparker};
use remora_core::{
    Account, Budget, CloseReason, Command, Config, Connection, Event, IncomingRequest, Instant,
    Outgoing,
};
use remora_tls::{Secure, Session};

use crate::handler::{Handler, Workers};
use crate::Error;
use remora_driver::handle_catching;
pub(crate) use remora_driver::Clock;

/// Where a caller waits for its call's outcome: one per thread, reused by every call that
/// thread makes (a thread waits for one call at a time), and handed to the machine as the
/// request's token, so a call allocates nothing and the driver keeps no map of calls.
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

/// What the machine holds for each request it waits on: a blocked caller's slot, or the
/// continuation of [`Client::call_then`](crate::Client::call_then).
enum Waiter {
    /// A caller blocked in `call` (its thread's slot).
    Thread(Arc<CallSlot>),
    /// Run once with the call's outcome, never under the connection's lock.
    Then(Continuation),
}

/// A `call_then` continuation.
pub(crate) type Continuation = Box<dyn FnOnce(Result<Command, Error>) + Send>;

/// Runs continuations, each catching its own panic (a panicking continuation must not take
/// the thread that ran it — often the connection's reader — down with it).
fn run_continuations(ready: Vec<(Continuation, Result<Command, Error>)>) {
    for (then, outcome) in ready {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(outcome))).is_err() {
            tracing::error!("a call_then continuation panicked");
        }
    }
}

thread_local! {
    /// While a connection's reader runs its continuations: that connection (its address).
    /// Calls they start on it are written together once they have all run (one write for a
    /// batch).
    static IN_CONTINUATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static PARKER: Parker = Parker::new();
    static CALL_SLOT: Arc<CallSlot> = Arc::new(CallSlot {
        outcome: Mutex::new(None),
        unparker: PARKER.with(|p| p.unparker().clone()),
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct State {
    /// The machine under its TLS (or plaintext) session; each request's token is its caller's
    /// slot. The socket's bytes go through the session, never straight to the machine.
    machine: Session<Waiter>,
    /// Some thread is writing to the socket (only one does at a time; the others leave their
    /// frames to it, and it looks at the machine again before it gives this up).
    writing: bool,
    /// Chunks a non-blocking write could not finish, handed to the connection's writer thread
    /// (empty: it has nothing to do).
    stash: Vec<Bytes>,
    /// The chunks being written by the thread holding `writing`, kept to be reused (no
    /// allocation per write).
    out: Vec<Bytes>,
    /// The reader waits for the machine to want input (it is woken only then).
    reader_paused: bool,
    /// The TLS handshake was under way when last looked at (a client's
    /// [`Conn::handshake`] waits for it to end).
    handshaking: bool,
    /// This connection's share of the server's budget (server connections only).
    account: Option<Account>,
    /// Continuations whose outcome is known, to run once the lock is released
    /// ([`Conn::release`]).
    ready: Vec<(Continuation, Result<Command, Error>)>,
    /// `call_then` calls in flight: while there are any, the timer thread wakes for their
    /// deadlines (nobody else waits for them).
    then_in_flight: usize,
    /// [`Dispatch::Inline`]: the peer's requests of this read (`None`: a oneway), handled by
    /// the reader once the lock is released.
    inline: Vec<(Option<IncomingRequest>, Command)>,
    /// When the waiting timer thread will look next (`None`: not before it is notified).
    timer_due: Option<Instant>,
}

/// What a server's connection carries besides the machine.
pub(crate) struct Served {
    pub(crate) budget: Arc<Budget>,
    pub(crate) account: Account,
    /// Called once when the connection closes (the server forgets it: its descriptors go as
    /// soon as the last thread working for it lets go).
    pub(crate) on_closed: Box<dyn FnOnce() + Send>,
}

/// Stack of a connection's reader and writer threads: they only move bytes and wake callers.
const IO_THREAD_STACK: usize = 256 * 1024;

/// How a connection runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnConfig {
    pub(crate) machine: Config,
    /// Close the connection after this long with nothing in flight.
    pub(crate) idle_timeout: Option<Duration>,
    /// Where the peer's requests are handled.
    pub(crate) dispatch: Dispatch,
}

/// Where a server (or a client's [`Handler`](crate::Handler)) handles the peer's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dispatch {
    /// On the worker pool: a handler may block or take long without holding up its
    /// connection's reading; each request is a hand-off to a worker and each answer a write of
    /// its own unless writes meet.
    #[default]
    Workers,
    /// On the connection's reader thread, between reads: the requests of one read are handled
    /// in order and their answers written together, with no hand-off. For quick handlers: a
    /// slow one holds up its connection (and only it).
    Inline,
}

pub(crate) struct Conn {
    state: Mutex<State>,
    /// Signalled when output is written (a paused reader may read again), when the writer
    /// thread has work, and when the connection closes.
    changed: Condvar,
    /// The socket's write side; used only by the thread holding `State::writing`.
    writer: TcpStream,
    /// Started the first time a write would block; writes what `State::stash` holds, blocking.
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Signalled for the timer thread: a `call_then` call is due before it would look, or
    /// the connection closed.
    timer: Condvar,
    /// Started by the first `call_then`.
    timer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Another handle on the socket, to shut it down while a write or read is blocked.
    control: TcpStream,
    budget: Option<Arc<Budget>>,
    on_closed: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    clock: Clock,
    handler: Arc<dyn Handler>,
    workers: Arc<Workers>,
    dispatch: Dispatch,
    reader: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// The machine's `pending_requests()` as of the last change under the state lock: read by
    /// the client's pool (under its own lock) without taking this connection's state lock, so
    /// choosing a connection never waits for a reader or writer holding it.
    in_flight: AtomicUsize,
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
    /// Starts driving `stream`, secured by `secure` (a TLS client sends its ClientHello at
    /// once): spawns its reader thread.
    pub(crate) fn start(
        stream: TcpStream,
        secure: &Secure,
        config: ConnConfig,
        clock: Clock,
        handler: Arc<dyn Handler>,
        workers: Arc<Workers>,
        served: Option<Served>,
    ) -> io::Result<Arc<Conn>> {
        let prepared = (|| {
            stream.set_nodelay(true)?;
            let peer = stream.peer_addr()?;
            let read_half = stream.try_clone()?;
            if let Some(idle) = config.idle_timeout {
                read_half.set_read_timeout(Some(idle.max(Duration::from_millis(1))))?;
            }
            Ok::<_, io::Error>((peer, read_half, stream.try_clone()?))
        })();
        let (peer, read_half, control) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                // Gone before it started (a peer that connected and reset at once): give its
                // place back.
                if let Some(served) = served {
                    served.budget.leave(served.account);
                    (served.on_closed)();
                }
                return Err(e);
            }
        };
        let (budget, account, on_closed) = match served {
            Some(s) => (Some(s.budget), Some(s.account), Some(s.on_closed)),
            None => (None, None, None),
        };
        let mut machine = Connection::with_tokens(config.machine);
        // The machine closes the connection once it has been quiet this long; the reader's
        // read timeout is when it asks.
        machine.set_idle_timeout(config.idle_timeout, clock.now());
        let conn = Arc::new(Conn {
            state: Mutex::new(State {
                machine: secure.session(machine, clock.now()),
                writing: false,
                stash: Vec::new(),
                out: Vec::new(),
                reader_paused: false,
                handshaking: secure.is_tls(),
                account,
                ready: Vec::new(),
                then_in_flight: 0,
                inline: Vec::new(),
                timer_due: None,
            }),
            timer: Condvar::new(),
            timer_thread: Mutex::new(None),
            changed: Condvar::new(),
            control,
            writer: stream,
            writer_thread: Mutex::new(None),
            budget,
            on_closed: Mutex::new(on_closed),
            clock,
            handler,
            workers,
            dispatch: config.dispatch,
            reader: Mutex::new(None),
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            peer,
        });
        let for_reader = Arc::clone(&conn);
        let idle = config.idle_timeout;
        let handle = std::thread::Builder::new()
            .name(format!("remora-read-{peer}"))
            .stack_size(IO_THREAD_STACK)
            .spawn(move || for_reader.read_loop(read_half, idle));
        match handle {
            Ok(handle) => *lock(&conn.reader) = Some(handle),
            Err(e) => {
                conn.lost();
                return Err(e);
            }
        }
        // A TLS client's ClientHello.
        conn.flush();
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
        Health::after(self.close_reason())
    }

    /// Our requests awaiting responses (as of the last send or completion).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Peer requests not yet answered, and whether bytes still wait to be written.
    pub(crate) fn unfinished(&self) -> (usize, bool) {
        let st = lock(&self.state);
        (st.machine.pending_incoming(), st.machine.unsent_len() > 0)
    }

    /// Sends `cmd` and blocks until its response, its deadline, or the connection's end.
    pub(crate) fn call(
        self: &Arc<Self>,
        cmd: impl Outgoing,
        timeout: Duration,
    ) -> Result<Command, Error> {
        let slot = CALL_SLOT.with(Arc::clone);
        // Left over from nothing: every call of this thread took its outcome before returning.
        debug_assert!(slot.take().is_none());
        let now = self.clock.now();
        let deadline = now + timeout;
        {
            let mut st = lock(&self.state);
            self.queue_call(
                &mut st,
                cmd,
                deadline,
                now,
                Waiter::Thread(Arc::clone(&slot)),
            )?;
        }
        self.flush();
        loop {
            if let Some(outcome) = slot.take() {
                return outcome;
            }
            let now = self.clock.now();
            if now >= deadline {
                // Our deadline: let the machine expire it (it fills our slot).
                let mut st = lock(&self.state);
                st.machine.handle_timeout(now);
                self.drain_events(&mut st);
                self.release(st);
                continue;
            }
            PARKER.with(|p| p.park_timeout(deadline - now));
        }
    }

    /// Queues `cmd` on the machine with `waiter` (under the lock) and publishes the new count
    /// of calls in flight.
    fn queue_call(
        &self,
        st: &mut State,
        cmd: impl Outgoing,
        deadline: Instant,
        now: Instant,
        waiter: Waiter,
    ) -> Result<(), Error> {
        let sent = cmd.send(st.machine.connection_mut(), deadline, now, waiter);
        sent.map_err(|e| st.machine.send_error(e))?;
        self.in_flight.store(
            st.machine.connection().pending_requests(),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Sends `cmd`; `then` runs once with its outcome (response, timeout, or error), on the
    /// thread that learns it — usually the connection's reader — and never under the lock.
    /// An error sending is returned here, and `then` is dropped unrun.
    pub(crate) fn call_then(
        self: &Arc<Self>,
        cmd: impl Outgoing,
        timeout: Duration,
        then: Continuation,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let deadline = now + timeout;
        let start_timer = {
            let mut st = lock(&self.state);
            self.queue_call(&mut st, cmd, deadline, now, Waiter::Then(then))?;
            st.then_in_flight += 1;
            // The timer thread looks again if this call is due before it would (told under
            // the lock it waits with, so the wake-up cannot be missed).
            let sooner = st.timer_due.map_or(true, |due| deadline < due);
            let running = lock(&self.timer_thread).is_some();
            if sooner && running {
                self.timer.notify_one();
            }
            sooner && !running
        };
        if start_timer {
            self.start_timer();
        }
        if IN_CONTINUATIONS.with(|c| c.get()) == Arc::as_ptr(self) as usize {
            // This connection's reader writes once after the batch of continuations.
            return Ok(());
        }
        self.flush();
        Ok(())
    }

    /// The reader's turn after input: releases the lock, runs the continuations it left
    /// ready (calls they start on this connection are queued, not written one by one), then
    /// writes everything queued at once.
    fn release_from_reader(self: &Arc<Self>, mut st: MutexGuard<'_, State>) -> bool {
        if st.ready.is_empty() && st.inline.is_empty() {
            return false;
        }
        let ready = std::mem::take(&mut st.ready);
        let mut inline = std::mem::take(&mut st.inline);
        drop(st);
        if !ready.is_empty() {
            IN_CONTINUATIONS.with(|c| c.set(Arc::as_ptr(self) as usize));
            run_continuations(ready);
            IN_CONTINUATIONS.with(|c| c.set(0));
        }
        if !inline.is_empty() {
            self.answer_inline(&mut inline);
            // The emptied list goes back for the next read (no allocation per read).
            let mut st = lock(&self.state);
            if st.inline.is_empty() {
                st.inline = inline;
            }
        }
        self.flush();
        true
    }

    /// [`Dispatch::Inline`]: handles a read's requests in order on the reader, queueing their
    /// answers; the caller writes them together.
    fn answer_inline(self: &Arc<Self>, requests: &mut Vec<(Option<IncomingRequest>, Command)>) {
        for (request, command) in requests.drain(..) {
            match request {
                Some(request) => self.answer_queued(request, command),
                None => drop(handle_catching(&*self.handler, command)),
            }
        }
    }

    /// Releases the lock, then runs the continuations it left ready. Every place that may have
    /// completed a call releases the lock this way.
    fn release(self: &Arc<Self>, mut st: MutexGuard<'_, State>) {
        if st.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut st.ready);
        drop(st);
        run_continuations(ready);
    }

    /// Sends a oneway request.
    pub(crate) fn oneway(self: &Arc<Self>, cmd: Command) -> Result<(), Error> {
        {
            let mut st = lock(&self.state);
            let now = self.clock.now();
            let sent = st.machine.connection_mut().send_oneway_at(cmd, now);
            sent.map_err(|e| st.machine.send_error(e))?;
        }
        self.flush();
        Ok(())
    }

    /// Writes whatever the machine has queued, never blocking on the socket: a write that would
    /// block hands the rest to the connection's writer thread. Threads that find another one
    /// writing leave their frames to it (it looks again before it stops), so writes coalesce
    /// under load.
    pub(crate) fn flush(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        if st.writing {
            return;
        }
        st.writing = true;
        loop {
            // Every chunk queued (up to a writev's worth): headers and small bodies coalesced,
            // large bodies as their callers' memory.
            let mut out = std::mem::take(&mut st.out);
            take_chunks(&mut st.machine, &mut out);
            if out.is_empty() {
                st.out = out;
                st.writing = false;
                self.release(st);
                return;
            }
            self.release(st);
            let sent = send_nonblocking(&self.writer, &out);
            st = lock(&self.state);
            match sent {
                Ok(n) => {
                    st.machine.handle_sent(n);
                    advance_chunks(&mut out, n);
                    if !out.is_empty() {
                        // The peer is not keeping up: the writer thread waits for it, we don't.
                        st.stash = out;
                        self.settle(&mut st);
                        self.release(st);
                        self.changed.notify_all();
                        self.start_writer();
                        return;
                    }
                    st.out = out;
                    self.settle(&mut st);
                }
                Err(_) => {
                    st.writing = false;
                    self.release(st);
                    self.lost();
                    return;
                }
            }
        }
    }

    /// Starts the writer thread if it is not running.
    fn start_writer(self: &Arc<Self>) {
        self.start_helper(&self.writer_thread, "write", Conn::write_loop);
    }

    /// Starts the thread `slot` holds (named `remora-{what}-{peer}`) running `run`, if it is
    /// not running; a connection that cannot have it is lost.
    fn start_helper(
        self: &Arc<Self>,
        slot: &Mutex<Option<JoinHandle<()>>>,
        what: &str,
        run: fn(Arc<Conn>),
    ) {
        let mut slot = lock(slot);
        if slot.is_some() {
            return;
        }
        let conn = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("remora-{what}-{}", self.peer))
            .stack_size(IO_THREAD_STACK)
            .spawn(move || run(conn));
        match spawned {
            Ok(handle) => *slot = Some(handle),
            Err(_) => {
                drop(slot);
                self.lost();
            }
        }
    }

    /// The writer thread: writes what a non-blocking write left, blocking (only this thread
    /// waits for a slow peer), and then everything queued meanwhile; then waits for more.
    fn write_loop(self: Arc<Self>) {
        let mut st = lock(&self.state);
        loop {
            while st.stash.is_empty() && !st.machine.is_closed() {
                st = self
                    .changed
                    .wait_timeout(st, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if st.machine.is_closed() {
                st.writing = false;
                self.release(st);
                return;
            }
            // We hold `writing` (handed over with the stash) until the machine is empty.
            let mut chunks = std::mem::take(&mut st.stash);
            while !chunks.is_empty() {
                self.release(st);
                let result = write_all_chunks(&self.writer, &mut chunks);
                st = lock(&self.state);
                match result {
                    Ok(n) => st.machine.handle_sent(n),
                    Err(_) => {
                        st.writing = false;
                        self.release(st);
                        self.lost();
                        return;
                    }
                }
                self.settle(&mut st);
                take_chunks(&mut st.machine, &mut chunks);
            }
            st.stash = chunks;
            st.writing = false;
            if !st.ready.is_empty() {
                self.release(st);
                st = lock(&self.state);
            }
        }
    }

    /// Brings the server's budget up to date, hands the machine's events on, and wakes a paused
    /// reader if the machine wants input again. Runs under the state lock, after any change.
    fn settle(self: &Arc<Self>, st: &mut State) {
        if let (Some(budget), Some(account)) = (&self.budget, st.account.as_mut()) {
            budget.sync(account, st.machine.connection_mut());
        }
        self.drain_events(st);
        if st.handshaking && !st.machine.is_handshaking() {
            st.handshaking = false;
            self.changed.notify_all();
        }
        if st.reader_paused && st.machine.wants_read() {
            self.changed.notify_all();
        }
    }

    /// Answers a peer's request (on a worker thread).
    fn answer(self: &Arc<Self>, request: IncomingRequest, command: Command) {
        self.answer_queued(request, command);
        self.flush();
    }

    /// Handles a peer's request and queues its answer (the caller writes it).
    fn answer_queued(self: &Arc<Self>, request: IncomingRequest, command: Command) {
        if self.is_closed() {
            // Nobody to answer: skip the work (the server may be stopping).
            lock(&self.state).machine.dismiss(request);
            return;
        }
        let response = handle_catching(&*self.handler, command);
        let mut st = lock(&self.state);
        // An answer too big to encode is replaced by SYSTEM_ERROR: that too must go out.
        let _ = st.machine.send_response(request, response);
        self.settle(&mut st);
        self.release(st);
    }

    /// Hands a call's outcome to its waiter: wakes its thread, or readies its continuation.
    fn complete(&self, st: &mut State, waiter: Waiter, outcome: Result<Command, Error>) {
        match waiter {
            Waiter::Thread(slot) => slot.complete(outcome),
            Waiter::Then(then) => {
                st.then_in_flight -= 1;
                st.ready.push((then, outcome));
            }
        }
    }

    /// Hands the machine's events on. Runs under the state lock.
    fn drain_events(self: &Arc<Self>, st: &mut State) {
        while let Some(event) = st.machine.poll_event() {
            match event {
                Event::Response {
                    response, token, ..
                } => self.complete(st, token, Ok(response)),
                Event::Failed { error, token, .. } => {
                    let error = st.machine.call_error(error);
                    self.complete(st, token, Err(error))
                }
                Event::Request { request, command } if self.dispatch == Dispatch::Inline => {
                    st.inline.push((Some(request), command));
                }
                Event::Oneway { command } if self.dispatch == Dispatch::Inline => {
                    st.inline.push((None, command));
                }
                Event::Request { request, command } => {
                    let conn = Arc::clone(self);
                    // Refused only while shutting down, when the connection is closing anyway.
                    self.workers.execute(move || conn.answer(request, command));
                }
                Event::Oneway { command } => {
                    let handler = Arc::clone(&self.handler);
                    self.workers.execute(move || {
                        let _ = handle_catching(&*handler, command);
                    });
                }
                Event::Closed { .. } => {
                    self.closed.store(true, Ordering::Release);
                    self.tls_farewell(st);
                    // Release the socket now (the descriptors follow the last reference).
                    let _ = self.control.shutdown(Shutdown::Both);
                    if let (Some(budget), Some(account)) = (&self.budget, st.account.take()) {
                        budget.leave(account);
                    }
                    if let Some(on_closed) = lock(&self.on_closed).take() {
                        on_closed();
                    }
                    self.changed.notify_all();
                }
            }
        }
        self.in_flight.store(
            st.machine.connection().pending_requests(),
            Ordering::Relaxed,
        );
    }

    /// On close: a TLS alert or `close_notify` goes out best effort (never blocking, and not
    /// while another thread writes), and a TLS failure is logged — a server's as a warning
    /// (an enforcing port refusing plaintext says so here).
    fn tls_farewell(&self, st: &mut State) {
        if !st.writing {
            if let Some(bytes) = st.machine.take_transmit() {
                let _ = send_nonblocking(&self.writer, &[bytes]);
            }
        }
        if let Some(error) = st.machine.tls_error() {
            if self.budget.is_some() {
                tracing::warn!(peer = %self.peer, "{error}");
            } else {
                tracing::debug!(peer = %self.peer, "{error}");
            }
        }
    }

    fn read_loop(self: Arc<Self>, stream: TcpStream, idle: Option<Duration>) {
        // The socket's read timeout: the idle expiry, or while a TLS handshake is under way,
        // its deadline (a stalled handshake must end even if nobody calls).
        let mut timeout = idle;
        // Until the handshake is over (at once for plaintext): then no more looking.
        let mut handshaking = true;
        loop {
            if !self.wait_until_readable() {
                return;
            }
            if handshaking {
                let wanted = match self.handshake_wait() {
                    Some(deadline) => deadline.or(idle),
                    None => {
                        handshaking = false;
                        idle
                    }
                };
                if wanted != timeout {
                    timeout = wanted;
                    let _ =
                        stream.set_read_timeout(wanted.map(|t| t.max(Duration::from_millis(1))));
                }
            }
            // Read straight into the machine's buffer (taken out while the read blocks, so the
            // lock is free): no copy, and decoded bodies are slices of it.
            let mut buf = std::mem::take(lock(&self.state).machine.read_buffer());
            if buf.capacity() - buf.len() < READ_LOW_WATER {
                buf.reserve(READ_CHUNK);
            }
            let read = recv_into(&stream, &mut buf);
            match read {
                Ok(0) => {
                    // End of input: answer what was asked before it, then close.
                    let mut st = lock(&self.state);
                    *st.machine.read_buffer() = buf;
                    st.machine.handle_eof();
                    self.settle(&mut st);
                    if !self.release_from_reader(st) {
                        self.flush();
                    }
                    return;
                }
                Ok(n) => {
                    let mut st = lock(&self.state);
                    let now = self.clock.now();
                    *st.machine.read_buffer() = buf;
                    st.machine.handle_read(n, now);
                    st.machine.handle_timeout(now);
                    self.settle(&mut st);
                    let closed = st.machine.is_closed();
                    let to_write = st.machine.poll_transmit().is_some();
                    if self.release_from_reader(st) {
                        // (It wrote what the continuations queued, and anything else.)
                    } else if closed {
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    } else if to_write {
                        // The machine answered by itself (SYSTEM_BUSY); flushing never blocks.
                        self.flush();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    *lock(&self.state).machine.read_buffer() = buf;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // The read timeout: a handshake past its deadline fails here, and the
                    // machine closes itself if it has been idle too long.
                    let mut st = lock(&self.state);
                    *st.machine.read_buffer() = buf;
                    st.machine.handle_timeout(self.clock.now());
                    self.settle(&mut st);
                    self.release_from_reader(st);
                }
                Err(_) => return self.lost(),
            }
            if self.is_closed() {
                return;
            }
        }
    }

    /// Waits until the TLS handshake (if any) ends — bounded by its deadline, which the reader
    /// enforces — and says whether the connection is usable: a failed handshake is a failed
    /// connect ([`Error::Connect`] carrying the [`TlsError`](remora_tls::TlsError)).
    pub(crate) fn handshake(&self) -> Result<(), Error> {
        let mut st = lock(&self.state);
        loop {
            if let Some(outcome) = st.machine.connect_outcome() {
                return outcome;
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How long until the TLS handshake's deadline, while one is under way:
    /// `None` once no handshake is under way (plaintext, or it ended); `Some(None)` while a
    /// permissive server awaits the first byte (no deadline yet).
    fn handshake_wait(&self) -> Option<Option<Duration>> {
        let st = lock(&self.state);
        if !st.machine.is_handshaking() {
            return None;
        }
        Some(st.machine.poll_timeout().map(|at| {
            Duration::from_nanos(at.as_nanos().saturating_sub(self.clock.now().as_nanos()))
        }))
    }

    /// The timer thread, started by the first `call_then`: nobody's thread waits for those
    /// calls, so this one wakes at the machine's next deadline while any is in flight (and
    /// sleeps on `timer` otherwise) and lets the machine expire what is due.
    fn timer_loop(self: Arc<Self>) {
        let mut st = lock(&self.state);
        loop {
            if st.machine.is_closed() {
                st.timer_due = None;
                return;
            }
            let now = self.clock.now();
            let due = if st.then_in_flight > 0 {
                st.machine.poll_timeout()
            } else {
                None
            };
            match due {
                Some(due) if due <= now => {
                    st.machine.handle_timeout(now);
                    self.settle(&mut st);
                    self.release(st);
                    self.flush();
                    st = lock(&self.state);
                }
                _ => {
                    st.timer_due = due;
                    // Bounded, so that a closed connection is noticed.
                    let wait = due.map_or(Duration::from_secs(1), |d| {
                        d.saturating_duration_since(now).min(Duration::from_secs(1))
                    });
                    st = self
                        .timer
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Starts the timer thread if it is not running.
    fn start_timer(self: &Arc<Self>) {
        self.start_helper(&self.timer_thread, "timer", Conn::timer_loop);
    }

    /// Backpressure: waits while the machine does not want input (its peer is not reading our
    /// answers). False once the connection is closed.
    fn wait_until_readable(&self) -> bool {
        let mut st = lock(&self.state);
        while !st.machine.wants_read() {
            if st.machine.is_closed() {
                st.reader_paused = false;
                return false;
            }
            st.reader_paused = true;
            st = self
                .changed
                .wait_timeout(st, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.reader_paused = false;
        true
    }

    /// The transport failed: fail every call, close the socket.
    fn lost(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        st.machine.handle_disconnect();
        self.settle(&mut st);
        let ready = std::mem::take(&mut st.ready);
        drop(st);
        self.closed.store(true, Ordering::Release);
        let _ = self.control.shutdown(Shutdown::Both);
        self.timer.notify_all();
        // (Closed first: a continuation that calls again is not given this connection.)
        run_continuations(ready);
    }

    /// Closes the connection (idempotent): calls in flight fail with `Closed`, the reader thread
    /// is joined (unless this is it).
    pub(crate) fn close(self: &Arc<Self>) {
        self.shut_down(false);
    }

    fn shut_down(self: &Arc<Self>, from_reader: bool) {
        let mut st = lock(&self.state);
        st.machine.close();
        self.settle(&mut st);
        let ready = std::mem::take(&mut st.ready);
        drop(st);
        self.closed.store(true, Ordering::Release);
        // Shutting the socket down wakes the reader from its blocking read.
        let _ = self.control.shutdown(Shutdown::Both);
        run_continuations(ready);
        if !from_reader {
            self.timer.notify_all();
            for handle in [
                lock(&self.reader).take(),
                lock(&self.writer_thread).take(),
                lock(&self.timer_thread).take(),
            ]
            .into_iter()
            .flatten()
            {
                if handle.thread().id() != std::thread::current().id() {
                    let _ = handle.join();
                }
            }
        }
    }
}

/// Most chunks one vectored write carries.
const MAX_IOV: usize = 64;

/// The read buffer grows (by `READ_CHUNK`) when less than this is free: while decoded bodies
/// still share it, growing allocates, so it happens once per chunk, not once per read.
const READ_LOW_WATER: usize = 4 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Appends to `out` the chunks the machine has to write (up to [`MAX_IOV`] in all).
fn take_chunks<T>(machine: &mut Session<T>, out: &mut Vec<Bytes>) {
    while out.len() < MAX_IOV {
        match machine.take_transmit() {
            Some(chunk) => out.push(chunk),
            None => return,
        }
    }
}

/// Drops the first `n` bytes of `chunks`.
fn advance_chunks(chunks: &mut Vec<Bytes>, mut n: usize) {
    let whole = chunks
        .iter()
        .take_while(|c| {
            let whole = c.len() <= n;
            if whole {
                n -= c.len();
            }
            whole
        })
        .count();
    chunks.drain(..whole);
    if let Some(first) = chunks.first_mut() {
        bytes::Buf::advance(first, n);
    }
}

/// The chunks as an `IoSlice` array for one vectored write (at most [`MAX_IOV`]).
fn io_slices<'a>(chunks: &'a [Bytes], slices: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
    let n = chunks.len().min(MAX_IOV);
    for (slice, chunk) in slices.iter_mut().zip(&chunks[..n]) {
        *slice = IoSlice::new(chunk);
    }
    n
}

/// Writes every chunk, blocking; returns the bytes written (all of them) and leaves `chunks`
/// empty.
fn write_all_chunks(stream: &TcpStream, chunks: &mut Vec<Bytes>) -> io::Result<usize> {
    let socket = socket2::SockRef::from(stream);
    let mut total = 0;
    while !chunks.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let count = io_slices(chunks, &mut slices);
        match socket.send_vectored_with_flags(&slices[..count], libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n;
                advance_chunks(chunks, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// One `recv` into `buf`'s spare capacity; the bytes read are appended.
fn recv_into(stream: &TcpStream, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    let socket = socket2::SockRef::from(stream);
    let n = socket.recv(buf.spare_capacity_mut())?;
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity (socket2 documents
    // that it returns how many bytes of `buf` it filled, at most its length), so the buffer's
    // first `len + n` bytes are initialised. `std_driver` tests compare every byte of large
    // bodies read this way with what was sent.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// One vectored `send` that never blocks: how many bytes the kernel took (0 when its buffer is
/// full).
fn send_nonblocking(stream: &TcpStream, chunks: &[Bytes]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(stream);
    let mut slices = [IoSlice::new(&[]); MAX_IOV];
    let count = io_slices(chunks, &mut slices);
    loop {
        match socket
            .send_vectored_with_flags(&slices[..count], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
