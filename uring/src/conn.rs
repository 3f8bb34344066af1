//! One TCP connection on the current io_uring thread, driven by a `remora_core::Connection`.
//!
//! Three local tasks share the machine (no locks: everything is on one thread): the reader feeds
//! it, the writer drains it chunk by chunk (small frames queued since the last write coalesced
//! into one chunk, large bodies as their callers' `Bytes`, never copied), the
//! timer fires its deadlines. Each call waits on a slot of its own that rides in the machine as
//! the request's token (the core's per-request token), so a response goes straight to its caller:
//! the driver keeps no map of calls, and slots are reused, so a call allocates nothing in steady
//! state.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use remora_tls::{Secure, Session};

use bytes::BytesMut;
use remora_core::{
    Account, Budget, CallError, Command, Config, Connection, Event, Handler, Outgoing, RequestId,
};
use remora_driver::client::AsyncConn;
use remora_driver::handle_catching;
use remora_driver::pool::PooledConn;
use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// The driver's clock, on tokio's time (paused in tests that pause it).
pub(crate) type Clock = remora_driver::Clock<tokio::time::Instant>;

/// Where one call's outcome is left for its future: the request's token in the machine, so the
/// machine's event carries it straight to its caller.
#[derive(Default)]
struct CallSlot {
    outcome: Cell<Option<Result<Command, CallError>>>,
    waker: Cell<Option<Waker>>,
}

impl CallSlot {
    fn complete(&self, outcome: Result<Command, CallError>) {
        self.outcome.set(Some(outcome));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Most spare call slots a connection keeps for reuse.
const SPARE_SLOTS: usize = 1024;

/// Room made in the read buffer when it runs low.
const READ_CHUNK: usize = 64 * 1024;
/// Below this much free room, the read buffer grows by `READ_CHUNK`.
const READ_LOW_WATER: usize = 8 * 1024;
/// How long a closed TLS connection may take to write its last words (an alert, or
/// `close_notify`) before its socket is shut regardless.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// A connection: its machine, its socket task(s) and the calls waiting on it.
pub struct Conn {
    /// The machine under its TLS (or plaintext) session: socket bytes go through the session;
    /// each request's token is its caller's slot.
    machine: RefCell<Session<Rc<CallSlot>>>,
    /// Slots of finished calls, for the next calls.
    spare: RefCell<Vec<Rc<CallSlot>>>,
    stream: TcpStream,
    write_wake: Notify,
    timer_wake: Notify,
    /// Wakes a reader paused by backpressure (output was written, or the connection closed).
    read_wake: Notify,
    /// Tells the timer task the writer has shut the socket after the connection closed.
    shut: Notify,
    /// Wakes [`Conn::handshake`] once the TLS handshake has ended (completed or failed).
    settled: Notify,
    /// The TLS handshake had not ended when last looked at.
    handshaking: Cell<bool>,
    /// A server connection's share of the server's budget.
    budget: Option<Arc<Budget>>,
    account: RefCell<Option<Account>>,
    handler: Arc<dyn Handler>,
    clock: Clock,
    closed: Cell<bool>,
}

impl Conn {
    /// Starts driving `stream` on the current tokio-uring runtime.
    pub(crate) fn start(
        stream: TcpStream,
        secure: &Secure,
        config: Config,
        idle_timeout: Option<Duration>,
        handler: Arc<dyn Handler>,
        clock: Clock,
    ) -> Rc<Conn> {
        Conn::start_served(stream, secure, config, idle_timeout, handler, clock, None)
    }

    /// [`Conn::start`] for a server's connection, admitted to its budget.
    pub(crate) fn start_served(
        stream: TcpStream,
        secure: &Secure,
        config: Config,
        idle_timeout: Option<Duration>,
        handler: Arc<dyn Handler>,
        clock: Clock,
        served: Option<(Arc<Budget>, Account)>,
    ) -> Rc<Conn> {
        let _ = stream.set_nodelay(true);
        let (budget, account) = match served {
            Some((budget, account)) => (Some(budget), Some(account)),
            None => (None, None),
        };
        let mut machine = Connection::with_tokens(config);
        // The machine closes the connection once it has been quiet this long.
        machine.set_idle_timeout(idle_timeout, clock.now());
        let conn = Rc::new(Conn {
            machine: RefCell::new(secure.session(machine, clock.now())),
            spare: RefCell::new(Vec::new()),
            stream,
            write_wake: Notify::new(),
            timer_wake: Notify::new(),
            read_wake: Notify::new(),
            shut: Notify::new(),
            settled: Notify::new(),
            handshaking: Cell::new(secure.is_tls()),
            budget,
            account: RefCell::new(account),
            handler,
            clock,
            closed: Cell::new(false),
        });
        tokio_uring::spawn(Rc::clone(&conn).read_loop());
        tokio_uring::spawn(Rc::clone(&conn).write_loop());
        tokio_uring::spawn(Rc::clone(&conn).timer_loop());
        conn
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// The pool's connection: its handshake is waited on, calls and oneways queued on it.
impl AsyncConn for Conn {
    type Shared = Rc<Conn>;
    type Pending = CallFuture;

    fn settled(&self) -> &Notify {
        &self.settled
    }

    fn connect_outcome(&self) -> Option<Result<(), CallError>> {
        self.machine.borrow().connect_outcome()
    }

    /// Queues `cmd`; the returned future resolves with its response or error. Dropping the
    /// future cancels the call (an unwritten request is then never sent).
    fn call(
        this: &Rc<Conn>,
        cmd: impl Outgoing,
        timeout: Duration,
    ) -> Result<CallFuture, CallError> {
        let now = this.clock.now();
        let deadline = now + timeout;
        let slot = this.spare.borrow_mut().pop().unwrap_or_default();
        let (id, rearm) = {
            let mut m = this.machine.borrow_mut();
            let earliest = m.poll_timeout();
            let sent = cmd.send(m.connection_mut(), deadline, now, Rc::clone(&slot));
            let id = sent.map_err(|e| m.send_error(e))?;
            (id, earliest.map_or(true, |t| deadline < t))
        };
        this.write_wake.notify_one();
        if rearm {
            this.timer_wake.notify_one();
        }
        Ok(CallFuture {
            conn: Rc::clone(this),
            id,
            slot,
            finished: false,
        })
    }

    /// Queues a oneway request.
    fn oneway(&self, cmd: Command) -> Result<(), CallError> {
        {
            let mut m = self.machine.borrow_mut();
            let now = self.clock.now();
            if let Err(e) = m.connection_mut().send_oneway_at(cmd, now) {
                return Err(m.send_error(e));
            }
        }
        self.write_wake.notify_one();
        Ok(())
    }
}

impl Conn {
    /// Closes the connection (idempotent): calls in flight fail with `Closed`.
    pub(crate) fn close(&self) {
        self.machine.borrow_mut().close();
        self.drain_events();
    }

    /// Hands the machine's events on: wakes callers, runs the handler for the peer's requests.
    fn drain_events(&self) {
        if self.handshaking.get() && self.machine.borrow().connect_outcome().is_some() {
            self.handshaking.set(false);
            self.settled.notify_waiters();
        }
        self.sync_budget();
        let mut answered = false;
        loop {
            let event = self.machine.borrow_mut().poll_event();
            let Some(event) = event else { break };
            match event {
                Event::Response {
                    response, token, ..
                } => token.complete(Ok(response)),
                Event::Failed { error, token, .. } => {
                    let error = self.machine.borrow().call_error(error);
                    token.complete(Err(error))
                }
                Event::Request { request, command } => {
                    let response = handle_catching(&*self.handler, command);
                    let _ = self.machine.borrow_mut().send_response(request, response);
                    answered = true;
                }
                Event::Oneway { command } => {
                    let _ = handle_catching(&*self.handler, command);
                }
                Event::Closed { .. } => {
                    self.closed.set(true);
                    if let Some(error) = self.machine.borrow().tls_error() {
                        tracing::debug!("{error}");
                    }
                    // The writer shuts the socket after a TLS alert or close_notify goes out
                    // (best effort, within LAST_WORDS; the timer task bounds a stuck write).
                    // Plaintext has nothing more to say: shut now.
                    if !self.machine.borrow().is_tls() {
                        let _ = self.stream.shutdown(std::net::Shutdown::Both);
                    }
                    if let (Some(budget), Some(account)) =
                        (&self.budget, self.account.borrow_mut().take())
                    {
                        budget.leave(account);
                    }
                    self.write_wake.notify_one();
                    self.timer_wake.notify_one();
                    self.read_wake.notify_one();
                }
            }
        }
        self.sync_budget();
        if answered || self.machine.borrow_mut().poll_transmit().is_some() {
            self.write_wake.notify_one();
        }
    }

    /// Brings the server's budget up to date with what this connection holds (and tells the
    /// machine whether the budget is spent).
    fn sync_budget(&self) {
        if let (Some(budget), Some(account)) = (&self.budget, self.account.borrow_mut().as_mut()) {
            budget.sync(account, self.machine.borrow_mut().connection_mut());
        }
    }

    async fn read_loop(self: Rc<Self>) {
        loop {
            if self.closed.get() {
                return;
            }
            // Backpressure: while the peer leaves our answers unread, leave its requests unread.
            if !self.machine.borrow().wants_read() {
                self.read_wake.notified().await;
                continue;
            }
            // Read straight into the machine's buffer: bodies stay zero-copy slices of it.
            let mut buf = std::mem::take(self.machine.borrow_mut().read_buffer());
            // Grow only when nearly full: while decoded bodies still share the buffer, growing
            // means a new allocation, so do it once per READ_CHUNK, not once per read.
            if buf.capacity() - buf.len() < READ_LOW_WATER {
                buf.reserve(READ_CHUNK);
            }
            let len = buf.len();
            let cap = buf.capacity();
            let (result, slice) = self.stream.read(buf.slice(len..cap)).await;
            let buf: BytesMut = slice.into_inner();
            let n = match result {
                Ok(n) if n > 0 => n,
                Ok(_) => {
                    // End of input: what was asked before it is answered, then we close.
                    self.machine.borrow_mut().handle_eof();
                    self.drain_events();
                    return;
                }
                Err(_) => {
                    self.machine.borrow_mut().handle_disconnect();
                    self.drain_events();
                    return;
                }
            };
            {
                let mut m = self.machine.borrow_mut();
                *m.read_buffer() = buf;
                m.handle_read(n, self.clock.now());
            }
            self.drain_events();
        }
    }

    async fn write_loop(self: Rc<Self>) {
        // Two buffers alternate: the machine's is exchanged for this one, emptied, whenever it
        // holds everything queued (`take_transmit_buffer`), and comes back when written: no
        // reference count per write. A large body goes as its own `Bytes`.
        let mut spare = BytesMut::new();
        while !self.closed.get() {
            let exchanged = self.machine.borrow_mut().take_transmit_buffer(&mut spare);
            let (result, len) = if exchanged > 0 {
                let (result, buf) = self.stream.write_all(std::mem::take(&mut spare)).await;
                spare = buf;
                (result, exchanged)
            } else {
                let chunk = self.machine.borrow_mut().take_transmit();
                let Some(bytes) = chunk else {
                    self.write_wake.notified().await;
                    continue;
                };
                let len = bytes.len();
                (self.stream.write_all(bytes).await.0, len)
            };
            if result.is_err() {
                self.machine.borrow_mut().handle_disconnect();
                self.drain_events();
                break;
            }
            self.machine.borrow_mut().handle_sent(len);
            self.drain_events();
            self.read_wake.notify_one();
        }
        self.farewell().await;
    }

    /// Once closed: a TLS session's last words (an alert saying why a handshake failed, or
    /// `close_notify`) go out best effort within [`LAST_WORDS`]; then the socket shuts, which
    /// ends the reader's pending read.
    async fn farewell(&self) {
        let last_words = async {
            while self.machine.borrow().is_tls() {
                let chunk = self.machine.borrow_mut().take_transmit();
                let Some(bytes) = chunk else { return };
                if self.stream.write_all(bytes).await.0.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(LAST_WORDS, last_words).await;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.shut.notify_one();
    }

    async fn timer_loop(self: Rc<Self>) {
        loop {
            if self.closed.get() {
                // The writer shuts the socket after its last words; a write stuck on a peer
                // that reads nothing must not keep it open past LAST_WORDS.
                tokio::select! {
                    _ = tokio::time::sleep(LAST_WORDS) => {}
                    _ = self.shut.notified() => {}
                }
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            // The machine's next deadline, or its idle expiry.
            let wake_at = self.machine.borrow().poll_timeout();
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(self.clock.at(at)) => {}
                        _ = self.timer_wake.notified() => continue,
                    }
                }
                None => {
                    self.timer_wake.notified().await;
                    continue;
                }
            }
            self.machine.borrow_mut().handle_timeout(self.clock.now());
            self.drain_events();
        }
    }
}

impl PooledConn for Conn {
    fn close_reason(&self) -> Option<remora_core::CloseReason> {
        self.machine.borrow().close_reason()
    }
    fn in_flight(&self) -> usize {
        self.machine.borrow().pending_requests()
    }
    fn is_closed(&self) -> bool {
        Conn::is_closed(self)
    }
    fn close(&self) {
        Conn::close(self)
    }
}

/// A call in flight; resolves with the response or why there is none. Dropping it cancels the
/// call.
pub struct CallFuture {
    conn: Rc<Conn>,
    id: RequestId,
    slot: Rc<CallSlot>,
    finished: bool,
}

impl Future for CallFuture {
    type Output = Result<Command, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(outcome) = this.slot.outcome.take() {
            this.finished = true;
            return Poll::Ready(outcome);
        }
        let waker = match this.slot.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        this.slot.waker.set(Some(waker));
        Poll::Pending
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        if !self.finished {
            // Still waiting (or done and never looked at): the machine lets go of the slot.
            self.conn.machine.borrow_mut().cancel(self.id);
            self.slot.outcome.take();
            self.slot.waker.take();
        }
        // Nobody else holds the slot now (the machine dropped its token with the outcome): keep
        // it for the next call.
        if Rc::strong_count(&self.slot) == 1 {
            let mut spare = self.conn.spare.borrow_mut();
            if spare.len() < SPARE_SLOTS {
                spare.push(Rc::clone(&self.slot));
            }
        }
    }
}
