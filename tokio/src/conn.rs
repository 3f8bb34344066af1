//! One TCP connection on tokio, driven by a `remora_core::Connection`.
//!
//! One task per connection owns the socket. Each turn it writes everything the machine has
//! queued (one `write` of the coalesced bytes), hands the machine's events on, then waits for
//! the first of: the socket readable (read straight into the machine's read buffer — only while
//! the machine [`wants_read`](Connection::wants_read): a peer that leaves our answers unread is
//! not read either), the socket writable (when a write would have blocked), a wake-up from a
//! caller that queued bytes into an idle connection or set an earlier deadline, and the timer
//! (the machine's next deadline or the idle expiry). End of input is the machine's
//! [`handle_eof`](Connection::handle_eof): requests sent before a half-close are answered before
//! the connection closes. Callers on any thread queue requests under a mutex shared with the task
//! and each waits on a slot of its own that rides in the machine as its request's token (the
//! core's per-request token), so a response goes straight to its caller: no map of calls, and
//! slots are reused, so a call allocates nothing in steady state. A server's connection reports what it holds to the server's
//! [`Budget`] after every turn.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use remora_core::{
    Account, Budget, CallError, CloseReason, Command, Config, Connection, Event, Handler,
    IncomingRequest, Instant, Outgoing, RequestId, READ_STEP,
};
use remora_driver::client::AsyncConn;
use remora_driver::handle_catching;
use remora_driver::pool::PooledConn;
use remora_tls::{Secure, Session};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The driver's clock, on tokio's time (paused in tests that pause it).
pub(crate) type Clock = remora_driver::Clock<tokio::time::Instant>;

/// Where the handler answers the peer's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dispatch {
    /// On the connection's own task, between reads: the lowest overhead, for quick handlers (a
    /// slow one holds up its connection and a runtime worker thread while it runs).
    #[default]
    Inline,
    /// On tokio's blocking pool (`spawn_blocking`), for handlers that block or take long. Up to
    /// [`Config::max_incoming`] requests per connection run at once; the machine answers the
    /// rest `SYSTEM_BUSY`.
    Blocking,
}

/// How a connection runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnConfig {
    pub(crate) machine: Config,
    /// Close the connection after this long with nothing in flight (the machine decides).
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) dispatch: Dispatch,
}

/// Where one call's outcome is left for its future: the request's token in the machine, so the
/// machine's event carries it straight to its caller.
#[derive(Default)]
struct CallSlot(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    outcome: Option<Result<Command, CallError>>,
    waker: Option<Waker>,
}

impl CallSlot {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Most spare call slots a thread keeps for reuse.
const SPARE_SLOTS: usize = 1024;

thread_local! {
    /// Slots of finished calls, for this thread's next calls.
    static SPARE: RefCell<Vec<Arc<CallSlot>>> = const { RefCell::new(Vec::new()) };
}

/// Below this much free room, the read buffer grows by the core's bounded step
/// ([`READ_STEP`]): never more than that beyond the bytes that arrived.
const READ_LOW_WATER: usize = 8 * 1024;

struct State {
    /// The machine under its TLS (or plaintext) session: socket bytes go through the session;
    /// each request's token is its caller's slot.
    machine: Session<Arc<CallSlot>>,
    /// This connection's share of the server's budget (server connections only; given back
    /// when the machine reports `Closed`).
    account: Option<Account>,
}

/// What one turn of the connection task hands on after releasing the lock. Kept between turns
/// so that its vectors stop allocating once they have grown.
#[derive(Default)]
struct Turn {
    wakers: Vec<Waker>,
    requests: Vec<(IncomingRequest, Command)>,
    oneways: Vec<Command>,
    responses: Vec<(IncomingRequest, Command)>,
}

impl Turn {
    fn is_empty(&self) -> bool {
        self.wakers.is_empty() && self.requests.is_empty() && self.oneways.is_empty()
    }
}

/// A connection: its machine, its socket task(s) and the calls waiting on it.
pub struct Conn {
    state: Mutex<State>,
    /// Wakes the connection task: bytes queued on an idle connection, an earlier deadline, close.
    wake: Notify,
    /// Wakes [`Conn::handshake`] once the TLS handshake has ended (completed or failed).
    settled: Notify,
    /// The TLS handshake had not ended when last looked at (under the state lock).
    handshaking: AtomicBool,
    handler: Arc<dyn Handler>,
    clock: Clock,
    closed: AtomicBool,
    config: ConnConfig,
    peer: SocketAddr,
    /// The server's budget, for a server's connection.
    budget: Option<Arc<Budget>>,
}

/// A server connection's admission to the server's budget.
pub(crate) struct Served {
    pub(crate) budget: Arc<Budget>,
    pub(crate) account: Account,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Starts driving `stream` on the current tokio runtime (panics outside one, as
    /// `tokio::spawn` does). A server's connection comes `served`: its account is given back to
    /// the budget when it closes, or at once if it cannot start.
    pub(crate) fn start(
        stream: TcpStream,
        secure: &Secure,
        config: ConnConfig,
        handler: Arc<dyn Handler>,
        clock: Clock,
        served: Option<Served>,
    ) -> io::Result<Arc<Conn>> {
        let prepared = stream.set_nodelay(true).and_then(|()| stream.peer_addr());
        let peer = match prepared {
            Ok(peer) => peer,
            Err(e) => {
                // Gone before it started (connected and reset at once): give its place back.
                if let Some(served) = served {
                    served.budget.leave(served.account);
                }
                return Err(e);
            }
        };
        let (budget, account) = match served {
            Some(s) => (Some(s.budget), Some(s.account)),
            None => (None, None),
        };
        let mut machine = Connection::with_tokens(config.machine);
        machine.set_idle_timeout(config.idle_timeout, clock.now());
        let conn = Arc::new(Conn {
            state: Mutex::new(State {
                machine: secure.session(machine, clock.now()),
                account,
            }),
            wake: Notify::new(),
            settled: Notify::new(),
            handshaking: AtomicBool::new(secure.is_tls()),
            handler,
            clock,
            closed: AtomicBool::new(false),
            config,
            peer,
            budget,
        });
        tokio::spawn(TaskGuard(Arc::clone(&conn)).run(stream));
        Ok(conn)
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Peer requests not yet answered, and whether bytes still wait to be written.
    pub(crate) fn unfinished(&self) -> (usize, bool) {
        let st = lock(&self.state);
        (st.machine.pending_incoming(), st.machine.unsent_len() > 0)
    }
}

/// The pool's connection: its handshake is waited on, calls and oneways queued on it.
impl AsyncConn for Conn {
    type Shared = Arc<Conn>;
    type Pending = CallFuture;

    fn settled(&self) -> &Notify {
        &self.settled
    }

    fn connect_outcome(&self) -> Option<Result<(), CallError>> {
        lock(&self.state).machine.connect_outcome()
    }

    /// Queues `cmd`; the returned future resolves with its response or error. Dropping the
    /// future cancels the call (an unwritten request is then never sent).
    fn call(
        this: &Arc<Conn>,
        cmd: impl Outgoing,
        timeout: Duration,
    ) -> Result<CallFuture, CallError> {
        let now = this.clock.now();
        let deadline = now + timeout;
        let spare = SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten();
        let slot = spare.unwrap_or_default();
        let (id, wake) = {
            let mut st = lock(&this.state);
            let idle = st.machine.poll_transmit().is_none();
            let earliest = st.machine.poll_timeout();
            let sent = cmd.send(
                st.machine.connection_mut(),
                deadline,
                now,
                Arc::clone(&slot),
            );
            let id = sent.map_err(|e| st.machine.send_error(e))?;
            // The task flushes whatever is queued before it sleeps: it needs waking only if the
            // connection had nothing to write, or its timer must fire sooner.
            (id, idle || earliest.map_or(true, |t| deadline < t))
        };
        if wake {
            this.wake.notify_one();
        }
        Ok(CallFuture {
            conn: Arc::clone(this),
            id,
            slot: Some(slot),
            finished: false,
        })
    }

    /// Queues a oneway request.
    fn oneway(&self, cmd: Command) -> Result<(), CallError> {
        let idle = {
            let mut st = lock(&self.state);
            let idle = st.machine.poll_transmit().is_none();
            let now = self.clock.now();
            if let Err(e) = st.machine.connection_mut().send_oneway_at(cmd, now) {
                return Err(st.machine.send_error(e));
            }
            idle
        };
        if idle {
            self.wake.notify_one();
        }
        Ok(())
    }
}

impl Conn {
    /// Answers a peer's request from outside the connection task (the blocking pool).
    fn respond(&self, request: IncomingRequest, response: Command) {
        let idle = {
            let mut st = lock(&self.state);
            let idle = st.machine.poll_transmit().is_none();
            // An answer too big to encode is replaced by SYSTEM_ERROR: that too goes out.
            let _ = st.machine.send_response(request, response);
            self.sync_budget(&mut st);
            idle
        };
        if idle {
            self.wake.notify_one();
        }
    }

    /// Closes the connection (idempotent): calls in flight fail with `Closed`, saying whether
    /// they were written.
    pub(crate) fn close(&self) {
        self.end(|m| m.close());
    }

    /// Applies `shut` to the machine, then completes what it failed.
    fn end(&self, shut: impl FnOnce(&mut Session<Arc<CallSlot>>)) {
        let mut turn = Turn::default();
        {
            let mut st = lock(&self.state);
            shut(&mut st.machine);
            self.drain(&mut st, &mut turn);
            // The machine is closed: nobody can answer these any more.
            for (request, _) in turn.requests.drain(..) {
                st.machine.dismiss(request);
            }
        }
        for waker in turn.wakers.drain(..) {
            waker.wake();
        }
        self.wake.notify_one();
    }

    /// Takes the machine's events: completes calls (their wakers go into `turn`, to be woken
    /// after the lock is released) and collects the peer's requests for the handler.
    ///
    /// Also brings the server's budget up to date with what the machine holds now (it runs after
    /// everything that changes that: bytes read or written, answers queued, deadlines), and gives
    /// the connection's share back when it closes.
    fn drain(&self, st: &mut State, turn: &mut Turn) {
        if self.handshaking.load(Ordering::Relaxed) && st.machine.connect_outcome().is_some() {
            self.handshaking.store(false, Ordering::Relaxed);
            self.settled.notify_waiters();
        }
        self.sync_budget(st);
        while let Some(event) = st.machine.poll_event() {
            match event {
                Event::Response {
                    response, token, ..
                } => complete(&token, Ok(response), turn),
                Event::Failed { error, token, .. } => {
                    let error = st.machine.call_error(error);
                    complete(&token, Err(error), turn)
                }
                Event::Request { request, command } => turn.requests.push((request, command)),
                Event::Oneway { command } => turn.oneways.push(command),
                Event::Closed { .. } => {
                    self.closed.store(true, Ordering::Release);
                    // A TLS failure: a server's is a warning (an enforcing port refusing
                    // plaintext says so here). A TLS alert still goes out on the task's last
                    // flush.
                    if let Some(error) = st.machine.tls_error() {
                        if self.budget.is_some() {
                            tracing::warn!(peer = %self.peer, "{error}");
                        } else {
                            tracing::debug!(peer = %self.peer, "{error}");
                        }
                    }
                }
            }
        }
        // Gives the account back once the machine has closed.
        self.sync_budget(st);
    }

    /// Reports what the machine holds and has done to the server's budget, which tells the
    /// machine whether to answer new requests `SYSTEM_BUSY`, and gives the connection's share
    /// back once it has closed (server connections only).
    fn sync_budget(&self, st: &mut State) {
        if let Some(budget) = &self.budget {
            budget.settle(&mut st.account, st.machine.connection_mut());
        }
    }

    /// Wakes callers and runs the handler for what `drain` collected.
    fn hand_on(self: &Arc<Self>, turn: &mut Turn) {
        for waker in turn.wakers.drain(..) {
            waker.wake();
        }
        match self.config.dispatch {
            Dispatch::Inline => {
                for command in turn.oneways.drain(..) {
                    let _ = handle_catching(&*self.handler, command);
                }
                for (request, command) in turn.requests.drain(..) {
                    let response = handle_catching(&*self.handler, command);
                    turn.responses.push((request, response));
                }
                if !turn.responses.is_empty() {
                    let mut st = lock(&self.state);
                    for (request, response) in turn.responses.drain(..) {
                        let _ = st.machine.send_response(request, response);
                    }
                }
            }
            Dispatch::Blocking => {
                for command in turn.oneways.drain(..) {
                    let handler = Arc::clone(&self.handler);
                    tokio::task::spawn_blocking(move || {
                        let _ = handle_catching(&*handler, command);
                    });
                }
                for (request, command) in turn.requests.drain(..) {
                    let conn = Arc::clone(self);
                    tokio::task::spawn_blocking(move || {
                        let response = handle_catching(&*conn.handler, command);
                        conn.respond(request, response);
                    });
                }
            }
        }
    }

    /// Reads what the socket has straight into the machine's buffer and decodes it.
    fn read(&self, stream: &TcpStream, st: &mut State) {
        if st.machine.is_closed() {
            return;
        }
        let buf = st.machine.read_buffer();
        // Grow only when nearly full: while decoded bodies still share the buffer, growing means
        // a new allocation, so do it once per step, not once per read. The step is the core's
        // bound: room beyond what arrived never exceeds it, whatever a frame announces.
        if buf.capacity() - buf.len() < READ_LOW_WATER {
            buf.reserve(READ_STEP);
        }
        match stream.try_read_buf(buf) {
            // End of input: what the peer asked before it is answered, then the machine closes.
            Ok(0) => st.machine.handle_eof(),
            Ok(n) => st.machine.handle_read(n, self.clock.now()),
            Err(e) if is_transient(&e) => {}
            Err(_) => st.machine.handle_disconnect(),
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Leaves a call's outcome in its slot; its waker is woken once the state lock is released.
fn complete(slot: &CallSlot, outcome: Result<Command, CallError>, turn: &mut Turn) {
    let mut waiting = slot.lock();
    waiting.outcome = Some(outcome);
    if let Some(w) = waiting.waker.take() {
        turn.wakers.push(w);
    }
}

/// Writes everything queued (one write per contiguous run) until done or the socket is full.
fn flush<T>(stream: &TcpStream, machine: &mut Session<T>) {
    while let Some(bytes) = machine.poll_transmit() {
        match stream.try_write(bytes) {
            Ok(0) => {
                machine.handle_disconnect();
                return;
            }
            Ok(n) => machine.handle_written(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                machine.handle_disconnect();
                return;
            }
        }
    }
}

impl PooledConn for Conn {
    fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.state).machine.close_reason()
    }
    fn in_flight(&self) -> usize {
        lock(&self.state).machine.pending_requests()
    }
    fn is_closed(&self) -> bool {
        Conn::is_closed(self)
    }
    fn close(&self) {
        Conn::close(self)
    }
}

/// Owns the connection task's reference: if the task ends for any reason (including its runtime
/// shutting down), the machine is told the transport is gone, so every call still waiting ends.
struct TaskGuard(Arc<Conn>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.end(|m| m.handle_disconnect());
    }
}

impl TaskGuard {
    async fn run(self, stream: TcpStream) {
        let conn = &self.0;
        let mut turn = Turn::default();
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let (want_read, want_write, wake_at) = {
                let mut st = lock(&conn.state);
                let st = &mut *st;
                flush(&stream, &mut st.machine);
                conn.drain(st, &mut turn);
                (
                    st.machine.wants_read(),
                    st.machine.poll_transmit().is_some(),
                    st.machine.poll_timeout(),
                )
            };
            if !turn.is_empty() {
                conn.hand_on(&mut turn);
                // Answers may have been queued: write them before waiting.
                continue;
            }
            if conn.is_closed() {
                return; // dropping the stream closes the socket
            }
            if let Some(at) = wake_at {
                if armed != Some(at) {
                    sleep.as_mut().reset(conn.clock.at(at));
                    armed = Some(at);
                }
            }
            tokio::select! {
                biased;
                // Backpressure: while the peer leaves what we owe it unread (or has finished
                // sending), its socket is not read; the writes that drain our output end the
                // pause on a later turn.
                ready = stream.readable(), if want_read => {
                    let mut st = lock(&conn.state);
                    match ready {
                        Ok(()) => conn.read(&stream, &mut st),
                        Err(_) => st.machine.handle_disconnect(),
                    }
                    conn.drain(&mut st, &mut turn);
                }
                _ = stream.writable(), if want_write => {}
                () = conn.wake.notified() => {}
                () = &mut sleep, if wake_at.is_some() => {
                    armed = None;
                    // The machine's deadlines, or its idle expiry, came due.
                    let mut st = lock(&conn.state);
                    st.machine.handle_timeout(conn.clock.now());
                    conn.drain(&mut st, &mut turn);
                }
            }
        }
    }
}

/// A connection, for sending requests to the peer on the other end: a
/// [`Server`](crate::Server)'s accepted client (as brokers do: transaction checks, consumer
/// queries).
#[derive(Clone)]
pub struct Peer {
    conn: Arc<Conn>,
}

impl Peer {
    pub(crate) fn new(conn: Arc<Conn>) -> Peer {
        Peer { conn }
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.conn.peer()
    }

    /// Sends a request to the peer and waits up to `timeout` for its response.
    pub async fn call(&self, request: Command, timeout: Duration) -> Result<Command, CallError> {
        Conn::call(&self.conn, request, timeout)?.await
    }

    /// Queues a oneway request to the peer.
    pub fn oneway(&self, request: Command) -> Result<(), CallError> {
        self.conn.oneway(request)
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

/// A call in flight; resolves with the response or why there is none. Dropping it cancels the
/// call (an unwritten request is then never sent). `Send`: await it on any runtime or thread.
pub struct CallFuture {
    conn: Arc<Conn>,
    id: RequestId,
    /// Taken only when the future is dropped (to be reused without touching its count).
    slot: Option<Arc<CallSlot>>,
    finished: bool,
}

impl Future for CallFuture {
    type Output = Result<Command, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut waiting = this.slot.as_ref().expect("held until dropped").lock();
        if let Some(outcome) = waiting.outcome.take() {
            this.finished = true;
            return Poll::Ready(outcome);
        }
        match &waiting.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => waiting.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        if !self.finished {
            if slot.lock().outcome.is_none() {
                // Still waiting: the machine withdraws or forgets the request (and its token).
                lock(&self.conn.state).machine.cancel(self.id);
            }
            *slot.lock() = Waiting::default();
        }
        // Nobody else holds the slot now (the machine drops its token with the outcome, under
        // the state lock): keep it for this thread's next call.
        if Arc::strong_count(&slot) == 1 {
            let _ = SPARE.try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_SLOTS {
                    spare.push(slot);
                }
            });
        }
    }
}
