//! One event loop per thread on the `io-uring` crate: the loop owns every connection's
//! `remora_core::Connection` machine in a slab, keeps one deadline heap for all of them, handles
//! completions inline (the handler runs in the loop) and submits every send a turn produced with
//! the next `io_uring_enter`.
//!
//! Receive path: where the kernel supports them (detected at start), receives draw from a ring
//! of provided buffers shared by the whole loop, so an idle connection holds no read buffer; the
//! bytes are copied into the machine at once and the buffer goes back to the ring. Each
//! connection has one single-shot receive at a time (re-armed only while its machine wants
//! input, so backpressure holds to one buffer), or optionally one multishot receive. Without
//! buffer rings, each connection receives into its machine's own read buffer. Accepts are
//! multishot where supported, single-shot otherwise.
//!
//! A receive that finds the buffer ring empty (`ENOBUFS`, more connections ready in one turn than
//! the ring has buffers) waits in a queue and is armed again once the turn gave buffers back.
//!
//! Raw connections ([`EventLoop::set_raw`]) carry bytes without a protocol: what arrives goes to
//! a [`RawHandler`], what it writes goes out; their machine carries no traffic and only marks
//! the connection's end. A byte echo on the loop ([`Echo`]) is the baseline for the protocol.
//!
//! The loop only moves bytes, reads the clock, waits and counts: every decision is the machine's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use remora_tls::{Secure, Session};

use bytes::{Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use remora_core::{
    Account, Budget, CallError, Command, Config, Connection, Event, Handler, Instant, RequestId,
};
use remora_driver::{handle_catching, Clock};
use slab::Slab;

/// Which operation a completion belongs to: the low bits of its `user_data`.
const OP_ACCEPT: u64 = 0;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CANCEL: u64 = 3;
const OP_WAKE: u64 = 4;
const OP_BITS: u64 = 3;

fn user_data(op: u64, key: usize) -> u64 {
    ((key as u64) << OP_BITS) | op
}

/// How a loop sizes its ring and its provided buffers, and which operations it uses.
#[derive(Clone, Copy, Debug)]
pub struct LoopConfig {
    /// Submission queue entries (the completion queue is eight times as large, so that a turn
    /// with a completion from every one of thousands of connections does not overflow it).
    pub entries: u32,
    /// Provided buffers in the loop's buffer ring (a power of two, at most 32,768): as many as
    /// receives may complete in one turn. Beyond them a receive fails with `ENOBUFS` and is
    /// re-armed, which costs a round trip through the kernel. The default, 1024 buffers of
    /// 16 KiB, is 16 MiB per loop, shared by all of its connections. Smaller buffers mean more
    /// receives (and turns) for a pipelined connection: 8 KiB cost ~15 % more CPU per call at
    /// 1 × 128, and 4 KiB doubled the steady-state allocations per call.
    pub buffers: u16,
    /// Size of each provided buffer.
    pub buffer_size: u32,
    /// Never use buffer rings or multishot operations, even where the kernel has them
    /// (single-shot receive into each connection's own buffer). For tests and old kernels.
    pub single_shot: bool,
    /// Receive with one multishot operation per connection instead of one single-shot
    /// provided-buffer receive per completion. Saves a submission per read, but the kernel then
    /// reads ahead of backpressure: a connection that stops wanting input may still take in up
    /// to its socket's receive buffer (megabytes) before the cancel lands. Off by default.
    pub multishot_recv: bool,
}

/// How a loop receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvMode {
    /// One multishot receive per connection, from the buffer ring.
    Multishot,
    /// One single-shot receive at a time, from the buffer ring.
    Select,
    /// One single-shot receive at a time, into the connection's own buffer.
    Own,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            entries: 2048,
            buffers: 1024,
            buffer_size: 16 * 1024,
            single_shot: false,
            multishot_recv: false,
        }
    }
}

/// Identifies a connection of an [`EventLoop`]: its slot and the slot's generation (a stale id
/// of a closed connection never reaches a newer one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    key: usize,
    generation: u32,
}

impl ConnId {
    /// The slot index: dense, below the most connections ever open at once on this loop.
    pub fn index(self) -> usize {
        self.key
    }
}

/// What a loop has done since it started: how its turns went. For finding what grows with the
/// number of connections (see [`EventLoop::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopCounts {
    /// Calls of [`EventLoop::turn`].
    pub turns: u64,
    /// Completions handled.
    pub completions: u64,
    /// Receives that delivered bytes.
    pub receives: u64,
    /// Receives that found the provided-buffer ring empty (`ENOBUFS`) and were armed again.
    pub receives_without_buffer: u64,
    /// Sends submitted (partial sends count once per submission).
    pub sends: u64,
}

/// A call of ours that ended: its response, or why there is none.
#[derive(Debug)]
pub struct Completion {
    /// The connection it was made on.
    pub conn: ConnId,
    /// The request, as [`EventLoop::call`] returned it.
    pub id: RequestId,
    /// The token the caller gave [`EventLoop::call`].
    pub token: u64,
    /// The response, or why there is none.
    pub outcome: Result<Command, CallError>,
}

/// What a loop does with the bytes of its raw connections: no protocol, no machine decisions,
/// only bytes in and bytes out. [`Echo`] sends every byte back; `remora bench --mode raw`'s
/// load generator counts its frames here. Set with [`EventLoop::set_raw`].
pub trait RawHandler {
    /// `input` arrived on `conn`; what to send on it goes into `output` (sent with the next
    /// turn's submission, in order).
    fn on_input(&mut self, conn: ConnId, input: &[u8], output: &mut BytesMut);
    /// `conn` closed: the peer finished, the socket failed, or [`EventLoop::close`] ran. Bytes
    /// not yet sent are dropped.
    fn on_closed(&mut self, conn: ConnId) {
        let _ = conn;
    }
}

/// A [`RawHandler`] that sends every byte back as it came: a byte echo on the loop, the
/// baseline a protocol run on the same loop is compared with.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl RawHandler for Echo {
    fn on_input(&mut self, _conn: ConnId, input: &[u8], output: &mut BytesMut) {
        output.extend_from_slice(input);
    }
}

/// A raw connection stops receiving while this many bytes wait to be sent (its peer is not
/// reading): the same backpressure a machine applies at its `max_transmit_len`.
const RAW_UNSENT_LIMIT: usize = 1 << 20;

/// The provided-buffer ring: `count` buffers of `size` bytes, and the ring of their descriptors
/// the kernel takes them from.
struct BufRing {
    /// Page-aligned descriptor ring (`count` entries of 16 bytes), registered with the kernel.
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    /// The buffers themselves, `count * size` bytes.
    memory: Box<[u8]>,
    size: u32,
    count: u16,
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Registers a ring of `count` buffers of `size` bytes as group `group` of `ring`.
    fn register(ring: &IoUring, count: u16, size: u32, group: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32_768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768",
            ));
        }
        let layout = std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (count >= 1); zeroed memory is a valid ring
        // (tail 0, no entries published).
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let memory = vec![0u8; count as usize * size as usize].into_boxed_slice();
        let mut this = BufRing {
            entries,
            layout,
            memory,
            size,
            count,
            tail: 0,
            group,
        };
        // SAFETY: `entries` points to `count` zeroed, page-aligned descriptors that stay
        // allocated until `BufRing::drop`, which runs only after the ring is unregistered (or
        // never, when the loop leaks it); the buffers they will name live as long.
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, count, group)
        };
        // On failure, dropping `this` frees the descriptor ring; the kernel never saw it.
        registered?;
        for bid in 0..count {
            this.give_back(bid);
        }
        Ok(this)
    }

    /// The bytes the kernel put in buffer `bid`.
    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.size as usize;
        &self.memory[start..start + len.min(self.size as usize)]
    }

    /// Publishes buffer `bid` to the kernel again.
    fn give_back(&mut self, bid: u16) {
        let mask = self.count - 1;
        let index = (self.tail & mask) as usize;
        let addr = self.memory.as_ptr() as u64 + bid as u64 * self.size as u64;
        // SAFETY: `index < count`, so the entry is inside the allocation of `count` entries. The
        // kernel reads an entry only once the tail has moved past it, which happens below (the
        // slot at `tail` is not published, and the kernel consumed it before we got `bid` back).
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the `resv` field of entry 0, a u16 inside our allocation, and the
        // kernel reads it concurrently: a release store makes the entry written above visible
        // before the new tail.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout. The loop unregisters the ring (or
        // leaks it, when operations may still use it) before this runs.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.layout) }
    }
}

/// One connection of the loop.
struct Slot {
    fd: OwnedFd,
    generation: u32,
    /// The machine under its TLS (or plaintext) session: socket bytes go through the session.
    machine: Session,
    /// A server connection's share of the server's budget.
    account: Option<Account>,
    /// Operations the kernel holds for this slot (recv, send, cancel). The slot (and its fd,
    /// and the buffers those operations point into) is freed only when this is zero.
    ops: u32,
    recv_armed: bool,
    /// A multishot receive was asked to stop (backpressure).
    recv_cancelling: bool,
    /// Single-shot fallback: the machine's read buffer while the kernel fills it.
    recv_buf: Option<BytesMut>,
    /// The bytes a send points into, and how many of them were sent.
    sending: Option<(Bytes, usize)>,
    /// A send is in flight (at most one per connection, so bytes go out in order).
    send_armed: bool,
    /// Queued on the loop's dirty list: it may have bytes to send.
    dirty: bool,
    /// The deadline the heap holds for this slot.
    timer_at: Option<Instant>,
    closed: bool,
    /// The caller's token of each call in flight, at its `RequestId::index`.
    tokens: Vec<u64>,
    /// Its last receive found the buffer ring empty: it waits in the loop's `starved` queue to
    /// be armed again once buffers are back (not at once, to fail again).
    starved: bool,
    /// A raw connection's bytes to send (its machine then carries no traffic and only marks
    /// the connection's end); `None` for a protocol connection.
    raw: Option<BytesMut>,
}

impl Slot {
    /// Whether a receive should be armed: the machine wants input (for a raw connection: it is
    /// open and its unsent bytes are below [`RAW_UNSENT_LIMIT`]).
    fn wants_read(&self) -> bool {
        self.machine.wants_read()
            && self.raw.as_ref().map_or(true, |out| {
                out.len() + self.sending_len() < RAW_UNSENT_LIMIT
            })
    }

    fn sending_len(&self) -> usize {
        self.sending.as_ref().map_or(0, |(b, done)| b.len() - done)
    }

    fn id(&self, key: usize) -> ConnId {
        ConnId {
            key,
            generation: self.generation,
        }
    }

    /// The completion of call `id` on this slot (at `key`), with the caller's token.
    fn completion(
        &self,
        key: usize,
        id: RequestId,
        outcome: Result<Command, CallError>,
    ) -> Completion {
        let token = self.tokens.get(id.index(&self.machine)).copied();
        Completion {
            conn: ConnId {
                key,
                generation: self.generation,
            },
            id,
            token: token.unwrap_or(0),
            outcome,
        }
    }
}

/// A loop: one io_uring, its connections, its timers. Not `Send`: one per thread.
pub struct EventLoop {
    ring: IoUring,
    bufs: Option<BufRing>,
    recv_mode: RecvMode,
    slots: Slab<Slot>,
    generation: u32,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    dirty: Vec<usize>,
    clock: Clock,
    handler: Arc<dyn Handler>,
    budget: Option<Arc<Budget>>,
    connection: Config,
    /// How accepted connections are secured (plaintext unless [`serve_tls`](Self::serve_tls)).
    secure: Secure,
    /// A listener accepted on, and whether an accept is in flight.
    listener: Option<(OwnedFd, bool)>,
    accept_multishot: bool,
    /// False once [`stop_listening`](Self::stop_listening) ran: accepts are not re-armed.
    accepting: bool,
    /// An eventfd that wakes the loop from another thread, with the 8 bytes its read fills.
    wake: Option<(OwnedFd, Box<[u8; 8]>, bool)>,
    cqes: Vec<(u64, i32, u32)>,
    completed: Vec<Completion>,
    in_flight: usize,
    /// What raw connections do with their bytes ([`set_raw`](Self::set_raw)); accepted
    /// connections are raw while it is set.
    raw: Option<Box<dyn RawHandler>>,
    counts: LoopCounts,
    /// Connections whose receive found no provided buffer (`ENOBUFS`), oldest first, with
    /// their slot's generation: armed again after a turn's completions gave buffers back, at
    /// most as many as the ring holds, so a burst of more ready connections than buffers is
    /// received over several turns instead of failing again and again.
    starved: std::collections::VecDeque<(usize, u32)>,
}

impl EventLoop {
    /// A loop whose connections run machines configured by `connection` and answer requests
    /// from their peers with `handler`.
    pub fn new(
        connection: Config,
        config: LoopConfig,
        handler: Arc<dyn Handler>,
    ) -> io::Result<EventLoop> {
        let entries = config.entries.max(1);
        // Completions are only ever reaped by this thread, in `turn`: let the kernel defer
        // their work until then (fewer interruptions), where it can (Linux 6.1).
        let ring = IoUring::builder()
            .setup_cqsize(entries * 8)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 8).build(entries))?;
        let bufs = if config.single_shot {
            None
        } else {
            BufRing::register(&ring, config.buffers, config.buffer_size, 0).ok()
        };
        let recv_mode = match (&bufs, config.multishot_recv) {
            (None, _) => RecvMode::Own,
            (Some(_), true) => RecvMode::Multishot,
            (Some(_), false) => RecvMode::Select,
        };
        Ok(EventLoop {
            ring,
            bufs,
            recv_mode,
            slots: Slab::new(),
            generation: 0,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            clock: Clock::new(),
            handler,
            budget: None,
            connection,
            secure: Secure::plain(),
            listener: None,
            accept_multishot: !config.single_shot,
            accepting: true,
            wake: None,
            cqes: Vec::with_capacity(256),
            completed: Vec::new(),
            in_flight: 0,
            raw: None,
            counts: LoopCounts::default(),
            starved: std::collections::VecDeque::new(),
        })
    }

    /// Whether receives draw from the loop's provided-buffer ring (false: each connection
    /// receives into its own buffer).
    pub fn uses_buffer_ring(&self) -> bool {
        self.recv_mode != RecvMode::Own
    }

    /// What the loop has done since it started (turns, completions, receives, receives that
    /// found no provided buffer, sends).
    pub fn counts(&self) -> LoopCounts {
        self.counts
    }

    /// Connections open (or still finishing operations) on this loop.
    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    /// Secures the connections this loop accepts from now on with `secure` (a
    /// [`Secure::server`]): TLS in its mode.
    pub fn serve_tls(&mut self, secure: Secure) {
        self.secure = secure;
    }

    pub(crate) fn set_budget(&mut self, budget: Arc<Budget>) {
        self.budget = Some(budget);
    }

    /// Accepts connections from `listener` (non-blocking not required).
    pub(crate) fn listen(&mut self, listener: std::net::TcpListener) {
        self.listener = Some((OwnedFd::from(listener), false));
        self.arm_accept();
    }

    /// Stops accepting: the listener is closed once its accept is cancelled.
    pub(crate) fn stop_listening(&mut self) {
        self.accepting = false;
        let Some((fd, armed)) = &self.listener else {
            return;
        };
        if *armed {
            // SAFETY: shutdown on a listening socket we own ends its pending accepts.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
            let sqe = opcode::AsyncCancel::new(user_data(OP_ACCEPT, 0))
                .build()
                .user_data(user_data(OP_CANCEL, usize::MAX >> OP_BITS));
            self.push(sqe);
        }
    }

    /// Wakes [`turn`](Self::turn) whenever `eventfd` becomes readable.
    pub(crate) fn wake_on(&mut self, eventfd: OwnedFd) {
        self.wake = Some((eventfd, Box::new([0; 8]), false));
        self.arm_wake();
    }

    /// Makes this loop's accepted connections raw (and allows
    /// [`connect_raw`](Self::connect_raw)): their bytes go to `handler`, not to a machine.
    pub fn set_raw(&mut self, handler: Box<dyn RawHandler>) {
        self.raw = Some(handler);
    }

    /// Connects to `addr` (blocking, with `timeout`) as a raw connection: what arrives on it
    /// goes to the [`RawHandler`] given to [`set_raw`](Self::set_raw) (an `InvalidInput` error
    /// without one), what [`send_raw`](Self::send_raw) queues goes out.
    pub fn connect_raw(&mut self, addr: SocketAddr, timeout: Duration) -> io::Result<ConnId> {
        if self.raw.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "connect_raw needs a RawHandler (set_raw)",
            ));
        }
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        let machine = Secure::plain().session(Connection::new(self.connection), self.now());
        Ok(self.add(OwnedFd::from(stream), machine, None, true))
    }

    /// Queues `bytes` on raw connection `conn` (sent with the next turn's submission).
    pub fn send_raw(&mut self, conn: ConnId, bytes: &[u8]) -> Result<(), CallError> {
        let slot = self.slot(conn)?;
        let Some(out) = slot.raw.as_mut() else {
            return Err(CallError::Closed { written: false });
        };
        out.extend_from_slice(bytes);
        self.touched(conn.key);
        Ok(())
    }

    /// Now, on the loop's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Connects to `addr` (blocking, with `timeout`) and adds the connection to the loop.
    pub fn connect(&mut self, addr: SocketAddr, timeout: Duration) -> io::Result<ConnId> {
        self.connect_secure(addr, timeout, &Secure::plain())
    }

    /// [`connect`](Self::connect), secured by `secure` (a [`Secure::client`]): the TLS
    /// handshake runs in the loop's turns, bounded by the `Secure`'s handshake timeout; calls
    /// queued meanwhile wait for it, and fail with [`CallError::Connect`] carrying the
    /// [`TlsError`](remora_tls::TlsError) if it fails.
    pub fn connect_secure(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
        secure: &Secure,
    ) -> io::Result<ConnId> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        let machine = secure.session(Connection::new(self.connection), self.now());
        Ok(self.add(OwnedFd::from(stream), machine, None, false))
    }

    fn add(
        &mut self,
        fd: OwnedFd,
        machine: Session,
        account: Option<Account>,
        raw: bool,
    ) -> ConnId {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let key = self.slots.insert(Slot {
            fd,
            generation,
            machine,
            account,
            ops: 0,
            recv_armed: false,
            recv_cancelling: false,
            recv_buf: None,
            sending: None,
            send_armed: false,
            dirty: false,
            timer_at: None,
            closed: false,
            tokens: Vec::new(),
            raw: raw.then(BytesMut::new),
            starved: false,
        });
        self.arm_recv(key);
        // A TLS client's ClientHello goes out, and a handshake deadline is armed, on the next
        // flush.
        self.touched(key);
        ConnId { key, generation }
    }

    fn slot(&mut self, conn: ConnId) -> Result<&mut Slot, CallError> {
        match self.slots.get_mut(conn.key) {
            Some(s) if s.generation == conn.generation && !s.closed => Ok(s),
            _ => Err(CallError::Closed { written: false }),
        }
    }

    /// Queues `request` on `conn`; its outcome comes back from [`turn`](Self::turn) as a
    /// [`Completion`] carrying `token`, exactly once (a timeout or a closed connection
    /// completes it too). It is sent with the next turn's submission.
    pub fn call(
        &mut self,
        conn: ConnId,
        request: Command,
        timeout: Duration,
        token: u64,
    ) -> Result<RequestId, CallError> {
        let now = self.now();
        let slot = self.slot(conn)?;
        let id = match slot.machine.send_request(request, now + timeout, now) {
            Ok(id) => id,
            Err(e) => return Err(slot.machine.send_error(e)),
        };
        let index = id.index(&slot.machine);
        if slot.tokens.len() <= index {
            slot.tokens.resize(index + 1, 0);
        }
        slot.tokens[index] = token;
        self.in_flight += 1;
        self.touched(conn.key);
        Ok(id)
    }

    /// Queues a oneway request on `conn`.
    pub fn oneway(&mut self, conn: ConnId, request: Command) -> Result<(), CallError> {
        let slot = self.slot(conn)?;
        if let Err(e) = slot.machine.send_oneway(request) {
            return Err(slot.machine.send_error(e));
        }
        self.touched(conn.key);
        Ok(())
    }

    /// Closes `conn`: its calls complete with `Closed`.
    pub fn close(&mut self, conn: ConnId) {
        if let Ok(slot) = self.slot(conn) {
            slot.machine.close();
            self.drain(conn.key);
        }
    }

    /// Closes every connection (their calls complete with `Closed`).
    pub fn close_all(&mut self) {
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(slot) = self.slots.get_mut(key) {
                if !slot.closed {
                    slot.machine.close();
                    self.drain(key);
                }
            }
        }
    }

    /// Our calls not yet completed, on all connections.
    pub fn calls_in_flight(&self) -> usize {
        self.in_flight
    }

    /// Peer requests not yet answered, and whether bytes still wait to be written, over all
    /// connections.
    pub(crate) fn unfinished(&self) -> (usize, bool) {
        let mut requests = 0;
        let mut unsent = false;
        for (_, s) in &self.slots {
            if !s.closed {
                requests += s.machine.pending_incoming();
                unsent |=
                    s.machine.unsent_len() > 0 || s.raw.as_ref().is_some_and(|o| !o.is_empty());
            }
        }
        (requests, unsent)
    }

    /// Submits everything queued (sends first), waits up to `max_wait` for at least one
    /// completion (less when a deadline is due earlier), handles every completion that arrived
    /// and every due deadline, and moves the calls that ended into `done`.
    pub fn turn(&mut self, max_wait: Duration, done: &mut Vec<Completion>) -> io::Result<()> {
        self.counts.turns += 1;
        self.flush();
        let now = self.now();
        let mut wait = max_wait;
        if let Some(Reverse((at, _, _))) = self.timers.peek() {
            wait = wait.min(Duration::from_nanos(
                at.as_nanos().saturating_sub(now.as_nanos()),
            ));
        }
        let result = if !self.ring.completion().is_empty() || wait.is_zero() {
            self.ring.submit()
        } else {
            let ts = types::Timespec::new()
                .sec(wait.as_secs())
                .nsec(wait.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.handle_completions();
        self.fire_timers();
        done.append(&mut self.completed);
        Ok(())
    }

    fn handle_completions(&mut self) {
        loop {
            self.cqes.clear();
            self.cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if self.cqes.is_empty() {
                self.feed_starved();
                return;
            }
            let cqes = std::mem::take(&mut self.cqes);
            self.counts.completions += cqes.len() as u64;
            for &(data, result, flags) in &cqes {
                let key = (data >> OP_BITS) as usize;
                match data & ((1 << OP_BITS) - 1) {
                    OP_ACCEPT => self.on_accept(result, flags),
                    OP_RECV => self.on_recv(key, result, flags),
                    OP_SEND => self.on_send(key, result),
                    OP_CANCEL => {
                        if let Some(slot) = self.slots.get_mut(key) {
                            slot.ops -= 1;
                            self.maybe_free(key);
                        }
                    }
                    _ => {
                        if let Some(w) = &mut self.wake {
                            w.2 = false;
                        }
                        self.arm_wake();
                    }
                }
            }
            self.cqes = cqes;
        }
    }

    /// Arms the receives of starved connections again, oldest first, as many as the buffer
    /// ring holds (every buffer is back once a turn's completions are handled).
    fn feed_starved(&mut self) {
        let mut room = self.bufs.as_ref().map_or(0, |b| b.count as usize);
        while room > 0 {
            let Some((key, generation)) = self.starved.pop_front() else {
                return;
            };
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.generation != generation || !slot.starved {
                continue;
            }
            slot.starved = false;
            self.arm_recv(key);
            room -= 1;
        }
    }

    // ---- submissions ----

    fn push(&mut self, sqe: squeue::Entry) {
        loop {
            // SAFETY: every entry pushed here points only into memory that outlives the
            // operation: the slot's `sending` bytes or `recv_buf` (kept until its completion;
            // a slot is freed only when `ops` is zero), the loop's buffer ring (freed only after
            // unregistering, or leaked), or the wake buffer (freed with the loop, after the ring).
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel and try again.
            let _ = self.ring.submit();
        }
    }

    fn arm_accept(&mut self) {
        let Some((fd, armed)) = &mut self.listener else {
            return;
        };
        if *armed {
            return;
        }
        *armed = true;
        let fd = types::Fd(fd.as_raw_fd());
        let sqe = if self.accept_multishot {
            opcode::AcceptMulti::new(fd).build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut()).build()
        };
        self.push(sqe.user_data(user_data(OP_ACCEPT, 0)));
    }

    fn arm_wake(&mut self) {
        let Some((fd, buf, armed)) = &mut self.wake else {
            return;
        };
        if *armed {
            return;
        }
        *armed = true;
        let sqe = opcode::Read::new(types::Fd(fd.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(OP_WAKE, 0));
        self.push(sqe);
    }

    fn arm_recv(&mut self, key: usize) {
        let mode = self.recv_mode;
        let (group, size) = self.bufs.as_ref().map_or((0, 0), |b| (b.group, b.size));
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.closed || slot.recv_armed || slot.starved || !slot.wants_read() {
            return;
        }
        let fd = types::Fd(slot.fd.as_raw_fd());
        let sqe = if mode == RecvMode::Multishot {
            opcode::RecvMulti::new(fd, group).build()
        } else if mode == RecvMode::Select {
            // The kernel picks a buffer from the ring when bytes arrive.
            opcode::Recv::new(fd, std::ptr::null_mut(), size)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            // Read straight into the machine's buffer: bodies stay zero-copy slices of it. It
            // grows only when nearly full (by a bounded step, as the machine asks).
            let mut buf = std::mem::take(slot.machine.read_buffer());
            if buf.capacity() - buf.len() < READ_LOW_WATER {
                buf.reserve(READ_CHUNK);
            }
            let spare = buf.spare_capacity_mut();
            let (ptr, len) = (spare.as_mut_ptr() as *mut u8, spare.len() as u32);
            slot.recv_buf = Some(buf);
            opcode::Recv::new(fd, ptr, len).build()
        };
        slot.recv_armed = true;
        slot.recv_cancelling = false;
        slot.ops += 1;
        self.push(sqe.user_data(user_data(OP_RECV, key)));
    }

    /// Marks `key` as having bytes to send this turn.
    fn touched(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Pushes a send for every connection that has bytes and none in flight.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(slot) = self.slots.get_mut(key) {
                slot.dirty = false;
                self.start_send(key);
                self.arm_timer(key);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// The bytes to send next on `slot` (the one place that gathers them from the machine).
    fn gather(slot: &mut Slot) -> Option<Bytes> {
        match &mut slot.raw {
            Some(out) if out.is_empty() => None,
            Some(out) => Some(out.split().freeze()),
            None => slot.machine.take_transmit(),
        }
    }

    fn start_send(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.closed || slot.send_armed {
            return;
        }
        if slot.sending.is_none() {
            match Self::gather(slot) {
                Some(bytes) => slot.sending = Some((bytes, 0)),
                None => return,
            }
        }
        let Some((bytes, done)) = &slot.sending else {
            return;
        };
        let rest = &bytes[*done..];
        let sqe = opcode::Send::new(
            types::Fd(slot.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(OP_SEND, key));
        slot.ops += 1;
        slot.send_armed = true;
        self.counts.sends += 1;
        self.push(sqe);
    }

    // ---- completions ----

    fn on_accept(&mut self, result: i32, flags: u32) {
        let more = self.accept_multishot && cqueue::more(flags);
        if !more {
            if let Some((_, armed)) = &mut self.listener {
                *armed = false;
            }
        }
        if result == -libc::EINVAL && self.accept_multishot {
            // No multishot accept on this kernel: single-shot from now on.
            self.accept_multishot = false;
        }
        if result >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(result as RawFd) };
            self.accepted(fd);
        } else if result == -libc::EMFILE || result == -libc::ENFILE {
            tracing::warn!("accept: {}", io::Error::from_raw_os_error(-result));
        }
        if !more && self.accepting {
            self.arm_accept();
        }
    }

    fn accepted(&mut self, fd: OwnedFd) {
        let account = match &self.budget {
            Some(budget) => match budget.admit() {
                Ok(account) => Some(account),
                Err(refusal) => {
                    tracing::warn!("{refusal}");
                    return; // dropping `fd` closes it
                }
            },
            None => None,
        };
        set_nodelay(fd.as_raw_fd());
        let machine = self
            .secure
            .session(Connection::new(self.connection), self.now());
        let raw = self.raw.is_some();
        let conn = self.add(fd, machine, account, raw);
        self.sync_budget(conn.key);
    }

    fn on_recv(&mut self, key: usize, result: i32, flags: u32) {
        let now = self.now();
        let mode = self.recv_mode;
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let more = mode == RecvMode::Multishot && cqueue::more(flags);
        if !more {
            slot.recv_armed = false;
            slot.ops -= 1;
        }
        if result > 0 {
            self.counts.receives += 1;
        } else if result == -libc::ENOBUFS && !more {
            self.counts.receives_without_buffer += 1;
            if !slot.starved {
                slot.starved = true;
                self.starved.push_back((key, slot.generation));
            }
        }
        let mut lost = false;
        let mut raw_output = false;
        if mode != RecvMode::Own {
            if let Some(bid) = cqueue::buffer_select(flags) {
                let bufs = self.bufs.as_mut().expect("this mode implies a buffer ring");
                if result > 0 && !slot.closed && slot.raw.is_some() {
                    let bytes = bufs.get(bid, result as usize);
                    if let (Some(handler), Some(out)) = (self.raw.as_mut(), slot.raw.as_mut()) {
                        handler.on_input(
                            ConnId {
                                key,
                                generation: slot.generation,
                            },
                            bytes,
                            out,
                        );
                    }
                    raw_output = true;
                } else if result > 0 && !slot.closed {
                    let bytes = bufs.get(bid, result as usize);
                    // Copy into the machine's buffer (bodies become zero-copy slices of it).
                    // Grow it by a whole step when short, not by what arrived: while decoded
                    // bodies still share it, growing means a new allocation, so do it once per
                    // step of input, not once per receive.
                    let read_buf = slot.machine.read_buffer();
                    if read_buf.capacity() - read_buf.len() < bytes.len() {
                        read_buf.reserve(bytes.len().max(SELECT_READ_STEP));
                    }
                    slot.machine.handle_input(bytes, now);
                }
                bufs.give_back(bid);
            }
            match result {
                0 => slot.machine.handle_eof(),
                r if r > 0 => {}
                r if r == -libc::ENOBUFS
                    || r == -libc::ECANCELED
                    || r == -libc::EINTR
                    || r == -libc::EAGAIN => {}
                r if r == -libc::EINVAL && mode == RecvMode::Multishot => {
                    // No multishot receive on this kernel: single-shot from now on.
                    self.recv_mode = RecvMode::Select;
                }
                _ => lost = true,
            }
        } else {
            let mut buf = slot.recv_buf.take().unwrap_or_default();
            if result > 0 {
                // SAFETY: the kernel wrote `result` bytes into the spare capacity we gave it,
                // which starts at `buf.len()`; `recv_buf` kept the buffer alive and unmoved.
                unsafe { buf.set_len(buf.len() + result as usize) };
                if let (Some(out), false) = (slot.raw.as_mut(), slot.closed) {
                    if let Some(handler) = self.raw.as_mut() {
                        let id = ConnId {
                            key,
                            generation: slot.generation,
                        };
                        handler.on_input(id, &buf, out);
                    }
                    buf.clear();
                    *slot.machine.read_buffer() = buf;
                    raw_output = true;
                } else {
                    *slot.machine.read_buffer() = buf;
                    slot.machine.handle_read(result as usize, now);
                }
            } else {
                *slot.machine.read_buffer() = buf;
                match result {
                    0 => slot.machine.handle_eof(),
                    r if r == -libc::ECANCELED || r == -libc::EINTR || r == -libc::EAGAIN => {}
                    _ => lost = true,
                }
            }
        }
        if lost && !slot.closed {
            slot.machine.handle_disconnect();
        }
        if raw_output {
            self.touched(key);
        }
        self.drain(key);
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if !slot.closed && slot.machine.is_tls() && slot.machine.poll_transmit().is_some() {
            // The TLS layer answered by itself (handshake messages).
            self.touched(key);
        }
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.recv_armed && !slot.wants_read() && !slot.recv_cancelling && !slot.closed {
            // Backpressure: stop the multishot receive until our answers are taken.
            slot.recv_cancelling = true;
            slot.ops += 1;
            let sqe = opcode::AsyncCancel::new(user_data(OP_RECV, key))
                .build()
                .user_data(user_data(OP_CANCEL, key));
            self.push(sqe);
        }
        self.arm_recv(key);
        self.maybe_free(key);
    }

    fn on_send(&mut self, key: usize, result: i32) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        slot.ops -= 1;
        slot.send_armed = false;
        let Some((bytes, done)) = &mut slot.sending else {
            self.maybe_free(key);
            return;
        };
        if result > 0 {
            *done += result as usize;
        } else if result != -libc::EINTR && result != -libc::EAGAIN {
            slot.sending = None;
            if !slot.closed {
                slot.machine.handle_disconnect();
            }
            self.drain(key);
            self.maybe_free(key);
            return;
        }
        if slot.closed {
            slot.sending = None;
            self.maybe_free(key);
            return;
        }
        if *done < bytes.len() {
            // Partial: send the rest.
            self.start_send(key);
            return;
        }
        let len = bytes.len();
        slot.sending = None;
        if slot.raw.is_none() {
            slot.machine.handle_sent(len);
        }
        self.drain(key);
        // Answers went out: reading may resume, more may be queued.
        self.touched(key);
        self.arm_recv(key);
        self.maybe_free(key);
    }

    // ---- machine events ----

    /// Hands the machine's events on: completions of our calls, the handler for the peer's
    /// requests; brings the budget up to date.
    fn drain(&mut self, key: usize) {
        self.sync_budget(key);
        let mut output = false;
        loop {
            let Some(slot) = self.slots.get_mut(key) else {
                return;
            };
            let Some(event) = slot.machine.poll_event() else {
                break;
            };
            match event {
                Event::Response { id, response, .. } => {
                    self.in_flight -= 1;
                    self.completed.push(slot.completion(key, id, Ok(response)));
                }
                Event::Failed { id, error, .. } => {
                    self.in_flight -= 1;
                    let outcome = Err(slot.machine.call_error(error));
                    self.completed.push(slot.completion(key, id, outcome));
                }
                Event::Request { request, command } => {
                    let response = handle_catching(&*self.handler, command);
                    let _ = slot.machine.send_response(request, response);
                    output = true;
                }
                Event::Oneway { command } => {
                    let _ = handle_catching(&*self.handler, command);
                }
                Event::Closed { .. } => {
                    slot.closed = true;
                    if slot.raw.take().is_some() {
                        if let Some(handler) = self.raw.as_mut() {
                            handler.on_closed(slot.id(key));
                        }
                    }
                    if let Some(error) = slot.machine.tls_error() {
                        // A server's TLS failure is a warning (an enforcing port refusing
                        // plaintext says so here).
                        if self.budget.is_some() {
                            tracing::warn!("{error}");
                        } else {
                            tracing::debug!("{error}");
                        }
                    }
                    if slot.sending.is_none() && !slot.send_armed {
                        // A TLS alert (or close_notify), best effort: one non-blocking send.
                        if let Some(bytes) = slot.machine.take_transmit() {
                            send_now(&slot.fd, &bytes);
                        }
                    }
                    // SAFETY: shutdown on a socket we own; it ends the operations in flight on
                    // it (their completions still arrive, and free the slot).
                    unsafe { libc::shutdown(slot.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    if let (Some(budget), Some(account)) = (&self.budget, slot.account.take()) {
                        budget.leave(account);
                    }
                    slot.sending = slot.sending.take().filter(|_| slot.ops > 0);
                }
            }
        }
        self.sync_budget(key);
        if output {
            self.touched(key);
        }
        self.maybe_free(key);
    }

    fn sync_budget(&mut self, key: usize) {
        if let (Some(budget), Some(slot)) = (&self.budget, self.slots.get_mut(key)) {
            if let Some(account) = slot.account.as_mut() {
                budget.sync(account, slot.machine.connection_mut());
            }
        }
    }

    /// Frees a closed slot once the kernel holds no operation on it.
    fn maybe_free(&mut self, key: usize) {
        if let Some(slot) = self.slots.get(key) {
            if slot.closed && slot.ops == 0 {
                self.slots.remove(key);
            }
        }
    }

    // ---- timers ----

    fn arm_timer(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let Some(at) = slot.machine.poll_timeout() else {
            return;
        };
        if slot.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        slot.timer_at = Some(at);
        self.timers.push(Reverse((at, key, slot.generation)));
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        while let Some(&Reverse((at, key, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.generation != generation || slot.timer_at != Some(at) {
                continue;
            }
            slot.timer_at = None;
            slot.machine.handle_timeout(now);
            self.drain(key);
            self.arm_timer(key);
        }
    }

    /// Waits (bounded by `limit`) until the kernel holds no operation on any connection, so
    /// every buffer they point into may be freed. Returns whether that happened.
    fn quiesce(&mut self, limit: Duration) -> bool {
        let give_up = std::time::Instant::now() + limit;
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(slot) = self.slots.get_mut(key) {
                if !slot.closed {
                    slot.machine.close();
                }
                // SAFETY: shutdown on a socket we own ends its operations in flight.
                unsafe { libc::shutdown(slot.fd.as_raw_fd(), libc::SHUT_RDWR) };
                self.drain(key);
            }
        }
        let mut sink = Vec::new();
        while !self.slots.is_empty() && std::time::Instant::now() < give_up {
            let _ = self.turn(Duration::from_millis(10), &mut sink);
        }
        self.slots.is_empty()
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let quiet = self.quiesce(Duration::from_secs(1));
        if let Some(bufs) = self.bufs.take() {
            if quiet
                && self
                    .ring
                    .submitter()
                    .unregister_buf_ring(bufs.group)
                    .is_ok()
            {
                drop(bufs);
            } else {
                // The kernel may still write into these buffers: never free them.
                std::mem::forget(bufs);
            }
        }
        if let Some((_, buf, true)) = self.wake.take() {
            // A read of the eventfd may still be in flight: its 8 bytes are never freed.
            Box::leak(buf);
        }
    }
}

/// Room made in the machine's read buffer for bytes copied from a provided buffer: two
/// provided buffers' worth, so a connection that has been busy holds no more than that when it
/// goes idle.
const SELECT_READ_STEP: usize = 32 * 1024;
/// Room made in a single-shot read buffer when it runs low.
const READ_CHUNK: usize = 64 * 1024;
/// Below this much free room, the read buffer grows by `READ_CHUNK`.
const READ_LOW_WATER: usize = 8 * 1024;

/// One non-blocking `send` of `bytes` on `fd`; what does not fit is dropped (for a closing
/// connection's last TLS record).
fn send_now(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: `bytes` is a live slice of `bytes.len()` bytes for the duration of the call, and
    // `fd` is a socket we own; MSG_DONTWAIT never blocks, MSG_NOSIGNAL never raises SIGPIPE.
    // The `tls` tests' refused client certificates arrive through this send (the alert).
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr() as *const libc::c_void,
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to an int of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
