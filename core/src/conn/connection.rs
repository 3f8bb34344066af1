//! The connection machine: one remoting connection's state, driven by bytes and time.
//!
//! See [`Connection`] for the contract a driver follows.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use slab::Slab;

use crate::codec::command::{Command, FLAG_ONEWAY, FLAG_RESPONSE};
use crate::codec::error::{DecodeError, EncodeError};
use crate::codec::frame::{Codec, Decoded};
use crate::codec::limits::Limits;
use crate::conn::deadlines::Deadlines;
use crate::conn::events::Events;
use crate::time::Instant;
use crate::SerializeType;

use crate::codec::codes::{SYSTEM_BUSY, SYSTEM_ERROR};

/// How a [`Connection`] behaves. `Default` suits a client or server talking to RocketMQ peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Config {
    /// Most requests of ours awaiting a response; [`Connection::send_request`] refuses more with
    /// [`SendError::TooManyWaiters`]. At most 2^24 (the opaque keeps 8 bits for a generation).
    pub max_waiters: usize,
    /// Most requests from the peer delivered and not yet answered; beyond it the machine answers
    /// `SYSTEM_BUSY` itself (as a busy Java server does) without delivering the request.
    pub max_incoming: usize,
    /// Most bytes waiting to be written before requests and oneways are refused with
    /// [`SendError::TransmitFull`] (responses are always queued). A frame is always accepted
    /// into an empty buffer. It is also the backpressure mark: while at least this many bytes are
    /// unsent, [`Connection::wants_read`] is false, so a peer that never reads cannot make us
    /// queue answers without bound.
    pub max_transmit_len: usize,
    /// Serialize every outgoing header this way; `None` keeps each command's own
    /// [`Command::serialize_type`].
    pub serialize_type: Option<SerializeType>,
    /// Decoder limits for incoming frames (and the encoder's frame limit).
    pub limits: Limits,
    /// Reserve room for `max_waiters` waiters and their deadlines up front, so that steady-state
    /// operation never allocates for them (for embedded users; costs ~40 bytes per waiter).
    pub preallocate: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_waiters: 65_536,
            max_incoming: 4_096,
            max_transmit_len: 64 * 1024 * 1024,
            serialize_type: None,
            limits: Limits::default(),
            preallocate: false,
        }
    }
}

/// Our handle for a request we sent. It is derived from the request's `opaque`: slot and
/// generation of its waiter, so matching a response costs one array index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(u32);

impl RequestId {
    /// The `opaque` this request carried on the wire.
    pub fn opaque(self) -> i32 {
        self.0 as i32
    }

    /// A dense index below [`Config::max_waiters`], unique among the requests pending on one
    /// connection: drivers may keep per-request state in a `Vec` at this index, no hashing.
    ///
    /// # Pitfall: the index is free again before its outcome is taken
    /// A request stops being pending — and its index (its waiter's slot) is free for the next
    /// [`send_request`](Connection::send_request) — as soon as its outcome is *queued*, inside
    /// the call that decided it: the [`handle_read`](Connection::handle_read) or
    /// [`handle_input`](Connection::handle_input) that matched its response, the
    /// [`handle_timeout`](Connection::handle_timeout) that expired it, or
    /// [`handle_eof`](Connection::handle_eof),
    /// [`handle_disconnect`](Connection::handle_disconnect), [`close`](Connection::close). Not
    /// when the driver takes the [`Event::Response`] or [`Event::Failed`] from
    /// [`poll_event`](Connection::poll_event). A request sent in between gets the same index
    /// (with a new generation: its `RequestId` differs, its index does not). A driver that keeps
    /// per-request state at this index must therefore:
    /// - move each outcome into its slot in the same critical section as the input that made
    ///   it (the same lock or borrow, no `send_request` in between), or the newer request takes
    ///   the slot first and the outcome has nowhere to go; and
    /// - expect the index to be reused while an outcome still waits in it for its caller: keep
    ///   the whole `RequestId` in the slot, compare it before completing (never complete on the
    ///   index alone: the outcome would go to the newer request), and move an uncollected
    ///   outcome aside when a new request takes its slot.
    ///
    /// The tokio and io_uring drivers do both (their `parked` outcomes). A driver can avoid both
    /// by keeping no per-request state of its own: the std driver gives each request its
    /// caller's slot as a token ([`send_request_with`](Connection::send_request_with)), which
    /// comes back in that request's own event.
    pub fn index<T>(self, connection: &Connection<T>) -> usize {
        (self.0 & ((1u32 << connection.slot_bits) - 1)) as usize
    }
}

/// A request from the peer awaiting our answer. Give it back exactly once, to
/// [`Connection::send_response`] or [`Connection::dismiss`]; it cannot be copied.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "answer it with send_response or release it with dismiss"]
// Eight bytes, aligned as the command beside it in `Event::Request`: the event's tag, this and
// the command then leave no padding next to the command, and LLVM moves the decoded command
// straight into its event slot. (With padding there, it built the event on the stack and
// copied the block over with 16-byte loads that straddle the stores before them: a
// store-forwarding stall on every request received, ~10 % of `handle_input`'s time.)
#[repr(align(8))]
pub struct IncomingRequest {
    opaque: i32,
    /// Its frame's length: held (its body is a slice of the read buffer) until it is answered.
    /// Lossless: a frame is at most [`Limits::max_frame_len`](crate::Limits::max_frame_len),
    /// a `u32`.
    len: u32,
}

// The layout the note on `IncomingRequest` relies on.
const _: () = assert!(
    core::mem::size_of::<IncomingRequest>() == 8 && core::mem::align_of::<IncomingRequest>() == 8
);

impl IncomingRequest {
    /// The peer's `opaque`, which the response will echo.
    pub fn opaque(&self) -> i32 {
        self.opaque
    }
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`Connection::close`] was called.
    Local,
    /// The driver reported the transport gone ([`Connection::handle_disconnect`]).
    ConnectionLost,
    /// The peer sent bytes that are not a frame.
    Corrupt(DecodeError),
    /// The peer sent a response whose flag also says oneway: a protocol violation.
    OnewayResponse {
        /// The response's opaque.
        opaque: i32,
    },
    /// The secure transport under the connection (TLS) could not be set up, or the peer refused
    /// it ([`Connection::handle_handshake_failure`]): the peer's application saw none of our bytes.
    HandshakeFailed,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::ConnectionLost => f.write_str("connection lost"),
            CloseReason::Corrupt(e) => write!(f, "corrupt frame from peer: {e}"),
            CloseReason::OnewayResponse { opaque } => {
                write!(f, "peer sent a response flagged oneway (opaque {opaque})")
            }
            CloseReason::HandshakeFailed => f.write_str("secure handshake failed"),
        }
    }
}

/// Why a request ended without a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// The connection's close reason, or `None` when the deadline passed.
    pub closed: Option<CloseReason>,
    /// Whether the whole request had been handed to the transport, so the peer may have acted
    /// on it. When false, retrying cannot duplicate it.
    pub written: bool,
}

impl RequestError {
    /// Whether the peer may have received (and acted on) the request.
    pub fn may_have_reached_peer(&self) -> bool {
        self.written
    }

    /// Whether the request ended because its deadline passed.
    pub fn is_timeout(&self) -> bool {
        self.closed.is_none()
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.closed {
            None => f.write_str("request timed out")?,
            Some(reason) => write!(f, "request failed: {reason}")?,
        }
        f.write_str(if self.written {
            " (it was written: the peer may have received it)"
        } else {
            " (it was never written: safe to retry)"
        })
    }
}

/// Something the driver must hand on, from [`Connection::poll_event`]. `T` is the driver's
/// per-request token (see [`Connection::send_request_with`]); `()` by default.
#[derive(Debug, PartialEq)]
pub enum Event<T = ()> {
    /// The response to one of our requests.
    Response {
        /// Which request.
        id: RequestId,
        /// The response.
        response: Command,
        /// The token the request was sent with.
        token: T,
    },
    /// One of our requests ended without a response: deadline passed or connection closed.
    Failed {
        /// Which request.
        id: RequestId,
        /// Why, and whether it may have reached the peer.
        error: RequestError,
        /// The token the request was sent with.
        token: T,
    },
    /// A request from the peer; answer it with [`Connection::send_response`].
    Request {
        /// The token to answer with.
        request: IncomingRequest,
        /// The request.
        command: Command,
    },
    /// A oneway request from the peer; it must not be answered.
    Oneway {
        /// The request.
        command: Command,
    },
    /// The connection closed; every request of ours has had its `Failed` event before this.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why a send was refused. Nothing was queued: a refused request can be retried safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed.
    Closed,
    /// [`Config::max_waiters`] requests are already awaiting responses.
    TooManyWaiters {
        /// The limit.
        max: usize,
    },
    /// [`Config::max_transmit_len`] bytes are already waiting to be written.
    TransmitFull {
        /// Bytes waiting.
        pending: usize,
    },
    /// The deadline had already passed.
    DeadlinePassed,
    /// The command cannot be encoded (for a response: the peer got `SYSTEM_ERROR` instead).
    Encode(EncodeError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("connection closed"),
            SendError::TooManyWaiters { max } => {
                write!(f, "{max} requests already await responses")
            }
            SendError::TransmitFull { pending } => {
                write!(f, "{pending} bytes already wait to be written")
            }
            SendError::DeadlinePassed => f.write_str("deadline already passed"),
            SendError::Encode(e) => write!(f, "cannot encode: {e}"),
        }
    }
}

impl core::error::Error for SendError {}
impl core::error::Error for RequestError {}

/// Counters since the connection was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests of ours queued for writing.
    pub requests_sent: u64,
    /// Oneway requests of ours queued for writing.
    pub oneways_sent: u64,
    /// Responses matched to a waiting request.
    pub responses_matched: u64,
    /// Requests of ours whose deadline passed.
    pub timeouts: u64,
    /// Responses for no waiting request (late, duplicated, cancelled or unknown), dropped.
    pub stale_responses: u64,
    /// Requests from the peer delivered.
    pub requests_received: u64,
    /// Oneway requests from the peer delivered.
    pub oneways_received: u64,
    /// Responses we queued, including busy answers.
    pub responses_sent: u64,
    /// Requests from the peer answered `SYSTEM_BUSY` by the machine (in-flight limit or
    /// [`Connection::set_overloaded`]).
    pub busy_rejections: u64,
    /// Responses that could not be encoded: `SYSTEM_ERROR` went out instead (unless even that
    /// exceeds the frame limit).
    pub fallback_answers: u64,
    /// Bytes handed in by the driver.
    pub bytes_in: u64,
    /// Bytes the driver reported written.
    pub bytes_out: u64,
}

/// Where a request's frame sits in the outgoing stream: it ends at stream offset `end` and is
/// `len` bytes long.
#[derive(Debug)]
struct Waiter<T> {
    end: u64,
    len: u32,
    /// The driver's token for this request, handed back with its outcome.
    token: T,
}

/// One remoting connection as a state machine: a driver feeds it bytes and time and drains it
/// for bytes to write, events, and the next deadline. It never reads a clock, never does I/O,
/// and never panics on anything the peer sends.
///
/// # Inputs
/// - [`handle_input`](Self::handle_input) (or [`read_buffer`](Self::read_buffer) +
///   [`handle_read`](Self::handle_read)): bytes the transport delivered, in order.
/// - [`handle_written`](Self::handle_written): how many bytes of
///   [`poll_transmit`](Self::poll_transmit) (or of [`transmit_chunks`](Self::transmit_chunks))
///   the transport accepted; or [`handle_sent`](Self::handle_sent) for bytes taken with
///   [`take_transmit`](Self::take_transmit) or
///   [`take_transmit_buffer`](Self::take_transmit_buffer).
/// - [`handle_timeout`](Self::handle_timeout): the clock reached (or passed)
///   [`poll_timeout`](Self::poll_timeout).
/// - [`handle_disconnect`](Self::handle_disconnect): the transport is gone.
/// - [`send_request`](Self::send_request), [`send_oneway`](Self::send_oneway),
///   [`send_response`](Self::send_response), [`dismiss`](Self::dismiss),
///   [`cancel`](Self::cancel), [`close`](Self::close): what the application wants.
///
/// # Drain order
/// After any input, a driver MUST, in this order:
/// 1. write [`transmit_chunks`](Self::transmit_chunks) with one vectored write (or
///    [`poll_transmit`](Self::poll_transmit), one chunk at a time) and report with
///    [`handle_written`](Self::handle_written) until nothing is left or the transport would
///    block (the cheapest way out: nothing is split off or reference-counted). Small frames
///    are coalesced into one chunk; a body of [`COALESCE_BELOW`] bytes or more is its own
///    chunk, the caller's `Bytes`, never copied. A driver that must own what it writes (a
///    write outside a lock, an io_uring send) takes it instead:
///    [`take_transmit_buffer`](Self::take_transmit_buffer) (two buffers alternating, no
///    reference count), else [`take_transmit`](Self::take_transmit) (a `Bytes` sharing the
///    buffer), and reports with [`handle_sent`](Self::handle_sent);
/// 2. take [`poll_event`](Self::poll_event) until `None` and hand each on (answering
///    [`Event::Request`]s may queue more to write: go back to 1). Take them before any new
///    [`send_request`](Self::send_request): a request's slot ([`RequestId::index`]) is freed
///    when its outcome is queued, not when the event is taken, so a request sent in between
///    may get the same index (see [`RequestId::index`]);
/// 3. arm its timer for [`poll_timeout`](Self::poll_timeout) and call
///    [`handle_timeout`](Self::handle_timeout) when it fires.
///
/// # Guarantees
/// Every request accepted by [`send_request`](Self::send_request) ends exactly once: with an
/// [`Event::Response`], an [`Event::Failed`] (deadline passed, or connection closed — saying
/// whether it was written), or by [`cancel`](Self::cancel). A response that matches no waiting
/// request (late, duplicated, for a reused slot) is counted in [`Stats::stale_responses`] and
/// dropped. The opaques of requests we receive are echoed untouched.
///
/// # Example
/// ```
/// use remora_core::{Command, Connection, Config, Event, Instant};
/// use core::time::Duration;
///
/// let mut client = Connection::new(Config::default());
/// let mut server = Connection::new(Config::default());
/// let now = Instant::ZERO;
///
/// let id = client.send_request(Command::request(105), now + Duration::from_secs(3), now).unwrap();
/// // The client's driver writes its bytes; the server's driver reads them.
/// let wire = client.poll_transmit().unwrap().to_vec();
/// client.handle_written(wire.len());
/// server.handle_input(&wire, now);
///
/// // The server's application answers.
/// let Some(Event::Request { request, command }) = server.poll_event() else { panic!() };
/// server.send_response(request, command.response(0).with_body(&b"route"[..])).unwrap();
/// let wire = server.poll_transmit().unwrap().to_vec();
/// server.handle_written(wire.len());
///
/// // The response reaches the client and is matched to its request.
/// client.handle_input(&wire, now);
/// let Some(Event::Response { id: got, response, .. }) = client.poll_event() else { panic!() };
/// assert_eq!((got, response.body()), (id, &b"route"[..]));
/// assert_eq!(client.poll_timeout(), None);
/// ```
pub struct Connection<T = ()> {
    config: Config,
    codec: Codec,
    waiters: Slab<Waiter<T>>,
    /// `generations[slot]`: the generation the slot's next (or current) waiter carries.
    generations: Vec<u32>,
    deadlines: Deadlines,
    slot_bits: u32,
    oneway_counter: u32,
    read_buf: BytesMut,
    /// Frames waiting to be written, as chunks in stream order: first `chunks` (finished runs of
    /// encoded headers and small bodies, and large bodies as the caller's own `Bytes`, never
    /// copied), then `head`, the run being encoded into. Their first byte is at stream offset
    /// `consumed`.
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    chunks_len: usize,
    head: BytesMut,
    consumed: u64,
    /// Bytes given out by [`Connection::take_transmit`] that the driver has not yet reported
    /// sent ([`Connection::handle_sent`]).
    taken: usize,
    /// The peer finished sending ([`Connection::handle_eof`]); we close once every request it
    /// sent is answered and written.
    eof: bool,
    /// Answer new requests `SYSTEM_BUSY` (a server-wide budget is spent).
    overloaded: bool,
    /// Stream ranges of frames withdrawn before their first byte was written (their request
    /// ended first), in order; all start after `consumed`. They are skipped, never written.
    holes: VecDeque<(u64, u64)>,
    /// Events not yet taken, each built in its slot.
    events: Events<T>,
    incoming: usize,
    /// Frame bytes of the requests counted in `incoming` (their bodies are still held).
    incoming_len: usize,
    closed: Option<CloseReason>,
    stats: Stats,
    /// Close after this long quiet ([`set_idle_timeout`](Connection::set_idle_timeout)).
    idle_timeout: Option<Duration>,
    /// The last request sent or bytes read (for the idle expiry).
    last_active: Instant,
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("waiters", &self.waiters.len())
            .field("incoming", &self.incoming)
            .field("transmit", &self.queued_len())
            .field("closed", &self.closed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Initial (and minimum growth) size of the transmit buffer.
const TRANSMIT_CAPACITY: usize = 16 * 1024;

/// Bodies at least this long are sent from the caller's `Bytes` as their own chunk (no copy);
/// shorter ones are copied next to their header, where one write carries many frames.
pub const COALESCE_BELOW: usize = 512;

/// The most room the read buffer is given for a frame on the strength of its announced length:
/// beyond that, the buffer grows only as bytes arrive (amortised, so at most about twice what
/// arrived), and memory follows what the peer really sent, not what it announced.
pub const READ_STEP: usize = 64 * 1024;

/// The least room the machine gives its read buffer when it must grow (for input handed to
/// [`Connection::handle_input`], or for the rest of a frame): small frames are then copied in
/// many at a time before it has to grow or be reclaimed again. Below [`READ_STEP`].
const INPUT_STEP: usize = 8 * 1024;

/// An emptied buffer holding more than this is released rather than kept for the next frame,
/// so an idle connection does not keep the memory of its largest frame.
const RELEASE_ABOVE: usize = 2 * READ_STEP;

// The issue's budget for a waiting request, checked at compile time.
const _: () = assert!(Connection::<()>::WAITER_BYTES < 64);

/// The layout of a `slab` entry (`slab::Entry` is private), for [`Connection::WAITER_BYTES`].
#[allow(dead_code)]
enum SlabEntryLayout<T> {
    Vacant(usize),
    Occupied(T),
}

/// Largest `max_waiters`: the opaque keeps at least 8 bits for the generation.
const MAX_WAITERS: usize = 1 << 24;

impl Connection {
    /// A connection in the open state. `max_waiters` is clamped to 1..=2^24.
    pub fn new(config: Config) -> Self {
        Connection::with_tokens(config)
    }
}

impl<T> Connection<T> {
    /// Heap bytes one waiting request costs, structurally: its slab entry (with its token), its
    /// generation, its deadline-heap entry and heap position (spare capacity of grown vectors
    /// not counted).
    pub const WAITER_BYTES: usize = core::mem::size_of::<SlabEntryLayout<Waiter<T>>>()
        + core::mem::size_of::<u32>()
        + crate::conn::deadlines::BYTES_PER_ENTRY;

    /// A connection whose requests each carry a driver's token of type `T` (see
    /// [`send_request_with`](Self::send_request_with)). `max_waiters` is clamped to 1..=2^24.
    pub fn with_tokens(mut config: Config) -> Self {
        config.max_waiters = config.max_waiters.clamp(1, MAX_WAITERS);
        // Enough slot bits for max_waiters; the rest of the 32 are the generation.
        let slot_bits = usize::BITS - (config.max_waiters - 1).leading_zeros();
        let capacity = if config.preallocate {
            config.max_waiters
        } else {
            0
        };
        Connection {
            config,
            codec: Codec::new(config.limits),
            waiters: Slab::with_capacity(capacity),
            generations: Vec::with_capacity(capacity),
            deadlines: Deadlines::with_capacity(capacity),
            slot_bits,
            oneway_counter: 0,
            read_buf: BytesMut::new(),
            chunks: VecDeque::new(),
            chunks_len: 0,
            // Allocated on first use (`head_room`), so a connection that never sends holds no
            // transmit buffer.
            head: BytesMut::new(),
            consumed: 0,
            taken: 0,
            eof: false,
            overloaded: false,
            holes: VecDeque::new(),
            events: Events::new(),
            incoming: 0,
            incoming_len: 0,
            closed: None,
            stats: Stats::default(),
            idle_timeout: None,
            last_active: Instant::ZERO,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters since the connection was made.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Requests of ours awaiting a response.
    pub fn pending_requests(&self) -> usize {
        self.waiters.len()
    }

    /// Requests from the peer delivered and not yet answered or dismissed.
    pub fn pending_incoming(&self) -> usize {
        self.incoming
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Whether the driver should read more from the transport now. False once the connection is
    /// closed or the peer finished sending, and while the bytes owed to the peer — unsent output
    /// ([`unsent_len`](Self::unsent_len)) plus the requests delivered and not yet answered
    /// ([`pending_incoming_len`](Self::pending_incoming_len), whose answers are still to come) —
    /// are at [`Config::max_transmit_len`] or more: a peer that does not read our answers is not
    /// read either (backpressure). It turns true again as answers are written.
    #[must_use]
    pub fn wants_read(&self) -> bool {
        self.closed.is_none()
            && !self.eof
            && self.unsent_len() + self.incoming_len < self.config.max_transmit_len
    }

    /// Frame bytes of the peer's requests delivered and not yet answered or dismissed (their
    /// bodies are slices of the read buffer, so this memory is held until they are).
    #[must_use]
    pub fn pending_incoming_len(&self) -> usize {
        self.incoming_len
    }

    /// Bytes queued for the peer and not yet reported written: those in
    /// [`poll_transmit`](Self::poll_transmit) plus those given out by
    /// [`take_transmit`](Self::take_transmit) and not yet [`handle_sent`](Self::handle_sent).
    #[must_use]
    pub fn unsent_len(&self) -> usize {
        self.queued_len() + self.taken
    }

    /// Bytes this connection holds for its peer: received and not yet decoded (part of a frame),
    /// requests not yet answered ([`pending_incoming_len`](Self::pending_incoming_len)), and
    /// [`unsent_len`](Self::unsent_len). What a server-wide budget counts.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.read_buf.len() + self.incoming_len + self.unsent_len()
    }

    /// Answer every new request from the peer `SYSTEM_BUSY` (without delivering it) while
    /// `overloaded`; a server sets it when a budget shared by its connections is spent (see
    /// [`Budget`](crate::Budget)).
    pub fn set_overloaded(&mut self, overloaded: bool) {
        self.overloaded = overloaded;
    }

    // ---- application inputs ----

    /// Queues a request and starts waiting for its response until `deadline`.
    ///
    /// The command's `opaque` is replaced with one that names its waiter, and its response and
    /// oneway bits are cleared.
    pub fn send_request(
        &mut self,
        mut cmd: Command,
        deadline: Instant,
        now: Instant,
    ) -> Result<RequestId, SendError>
    where
        T: Default,
    {
        self.send_request_in(&mut cmd, deadline, now, T::default())
    }

    /// [`send_request`](Self::send_request) with the driver's `token` for this request (where
    /// its caller waits, say): the machine keeps it in the request's waiter and hands it back in
    /// the request's one [`Event::Response`] or [`Event::Failed`], so a driver needs no map of
    /// its own from requests to callers. On error the token is dropped.
    pub fn send_request_with(
        &mut self,
        mut cmd: Command,
        deadline: Instant,
        now: Instant,
        token: T,
    ) -> Result<RequestId, SendError> {
        self.send_request_in(&mut cmd, deadline, now, token)
    }

    /// [`send_request_with`](Self::send_request_with) of a command its callers own (and drop):
    /// by reference, so that the command is not moved again on its way in.
    #[inline(always)]
    fn send_request_in(
        &mut self,
        cmd: &mut Command,
        deadline: Instant,
        now: Instant,
        token: T,
    ) -> Result<RequestId, SendError> {
        let (slot, id) = self.reserve_waiter(deadline, now)?;
        let flag = cmd.flag & !(FLAG_RESPONSE | FLAG_ONEWAY);
        let ty = self.config.serialize_type.unwrap_or(cmd.serialize_type);
        let len = if ty == SerializeType::RocketMq
            && cmd.is_bare()
            && cmd.body().len() < COALESCE_BELOW
        {
            // The usual small request: its 29 bytes written at once with our opaque and flag
            // in place of its own (inlined; the general writers read them from the command).
            self.head_room();
            let before = self.head.len();
            self.codec
                .encode_bare_rocketmq_with(cmd, id.opaque(), flag, &mut self.head)
                .map_err(SendError::Encode)?;
            self.head.len() - before
        } else {
            cmd.opaque = id.opaque();
            cmd.flag = flag;
            self.enqueue(cmd, ty).map_err(SendError::Encode)?
        };
        self.commit_waiter(slot, len, deadline, token);
        self.last_active = now;
        Ok(id)
    }

    /// Like [`Connection::send_request`] for a request encoded once ([`Encoded`]): its bytes are
    /// queued with this request's opaque written in place, nothing is encoded again. The frame
    /// is sent with the serialize type and limits it was encoded with. As in
    /// [`send_request`](Self::send_request), a body of [`COALESCE_BELOW`] bytes or more is its
    /// own chunk (shared with the `Encoded`, not copied); only prefix and header are copied.
    ///
    /// [`Encoded`]: crate::codec::encoded::Encoded
    pub fn send_encoded_request(
        &mut self,
        request: &crate::codec::encoded::Encoded,
        deadline: Instant,
        now: Instant,
    ) -> Result<RequestId, SendError>
    where
        T: Default,
    {
        self.send_encoded_request_with(request, deadline, now, T::default())
    }

    /// [`send_encoded_request`](Self::send_encoded_request) with the driver's `token` for this
    /// request, as [`send_request_with`](Self::send_request_with).
    pub fn send_encoded_request_with(
        &mut self,
        request: &crate::codec::encoded::Encoded,
        deadline: Instant,
        now: Instant,
        token: T,
    ) -> Result<RequestId, SendError> {
        let (slot, id) = self.reserve_waiter(deadline, now)?;
        self.head_room();
        if request.body_len() < COALESCE_BELOW {
            request.write(id.opaque(), &mut self.head);
        } else {
            let body = request.write_head(id.opaque(), &mut self.head);
            self.push_chunk(body);
        }
        self.commit_waiter(slot, request.len(), deadline, token);
        self.last_active = now;
        Ok(id)
    }

    /// The slot and id the next request's waiter will have, if a request may be sent now.
    fn reserve_waiter(
        &mut self,
        deadline: Instant,
        now: Instant,
    ) -> Result<(usize, RequestId), SendError> {
        self.check_can_send()?;
        if deadline <= now {
            return Err(SendError::DeadlinePassed);
        }
        if self.waiters.len() >= self.config.max_waiters {
            return Err(SendError::TooManyWaiters {
                max: self.config.max_waiters,
            });
        }
        let slot = self.waiters.vacant_key();
        if self.generations.len() <= slot {
            self.generations.resize(slot + 1, 1);
        }
        Ok((
            slot,
            RequestId(self.generations[slot] << self.slot_bits | slot as u32),
        ))
    }

    /// A request's frame of `len` bytes was just queued (it ends the queue): its waiter, with
    /// `token`, waits in `slot` until `deadline`.
    fn commit_waiter(&mut self, slot: usize, len: usize, deadline: Instant, token: T) {
        let waiter = Waiter {
            end: self.stream_end(),
            len: len as u32,
            token,
        };
        let inserted = self.waiters.insert(waiter);
        debug_assert_eq!(inserted, slot);
        self.deadlines.insert(slot, deadline);
        self.stats.requests_sent += 1;
    }

    /// Queues a oneway request: the peer will not answer it.
    ///
    /// Its `opaque` is replaced with one no waiter ever carries (generation 0), so a peer that
    /// wrongly answers cannot complete someone else's request.
    pub fn send_oneway(&mut self, mut cmd: Command) -> Result<(), SendError> {
        self.check_can_send()?;
        let slot_mask = (1u32 << self.slot_bits) - 1;
        self.oneway_counter = self.oneway_counter.wrapping_add(1) & slot_mask;
        cmd.opaque = self.oneway_counter as i32;
        cmd.flag = (cmd.flag & !FLAG_RESPONSE) | FLAG_ONEWAY;
        let ty = self.config.serialize_type.unwrap_or(cmd.serialize_type);
        self.enqueue(&cmd, ty).map_err(SendError::Encode)?;
        self.stats.oneways_sent += 1;
        Ok(())
    }

    /// [`send_oneway`](Self::send_oneway) at `now`: it counts as activity for the idle expiry.
    pub fn send_oneway_at(&mut self, cmd: Command, now: Instant) -> Result<(), SendError> {
        self.send_oneway(cmd)?;
        self.last_active = now;
        Ok(())
    }

    /// From `now` on, the connection closes itself ([`CloseReason::Local`], as
    /// [`close`](Self::close) does) once it has been quiet for `idle`: no request of ours
    /// waiting, no request of the peer's unanswered, and no request sent
    /// ([`send_request`](Self::send_request), [`send_oneway_at`](Self::send_oneway_at)) or byte
    /// read for that long. The expiry is one of the deadlines [`poll_timeout`](Self::poll_timeout)
    /// reports and [`handle_timeout`](Self::handle_timeout) acts on. `None` (the default) never
    /// expires.
    pub fn set_idle_timeout(&mut self, idle: Option<Duration>, now: Instant) {
        self.idle_timeout = idle;
        self.last_active = now;
    }

    /// When the connection expires if nothing happens before: `None` while it is busy, closed,
    /// or has no idle timeout.
    #[must_use]
    pub fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.idle_timeout?;
        let quiet = self.closed.is_none() && self.waiters.is_empty() && self.incoming == 0;
        quiet.then(|| self.last_active.saturating_add(idle))
    }

    /// Answers a request from the peer: the response carries the request's opaque and the
    /// response bit. Responses are queued even when the transmit buffer is over its limit.
    ///
    /// If `response` cannot be encoded, the peer is answered `SYSTEM_ERROR` instead (so it is
    /// not left waiting) and the error is returned.
    pub fn send_response(
        &mut self,
        request: IncomingRequest,
        mut response: Command,
    ) -> Result<(), SendError> {
        self.incoming = self.incoming.saturating_sub(1);
        self.incoming_len = self.incoming_len.saturating_sub(request.len as usize);
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        response.opaque = request.opaque;
        response.flag = (response.flag | FLAG_RESPONSE) & !FLAG_ONEWAY;
        let ty = self
            .config
            .serialize_type
            .unwrap_or(response.serialize_type);
        let result = self.enqueue(&response, ty);
        if let Err(e) = result {
            self.stats.fallback_answers += 1;
            let mut fallback = Command::request(SYSTEM_ERROR)
                .with_remark("response could not be encoded")
                .with_opaque(request.opaque);
            fallback.flag = FLAG_RESPONSE;
            // Only a frame limit below ~160 bytes refuses even this bare answer; then nothing
            // is sent and the peer's own deadline ends its request (never a panic: the peer
            // can cause this path).
            if self.enqueue(&fallback, ty).is_ok() {
                self.stats.responses_sent += 1;
            }
            self.close_if_finished();
            return Err(SendError::Encode(e));
        }
        self.stats.responses_sent += 1;
        self.close_if_finished();
        Ok(())
    }

    /// Gives up on answering a request from the peer (it will wait until its own deadline).
    pub fn dismiss(&mut self, request: IncomingRequest) {
        self.incoming = self.incoming.saturating_sub(1);
        self.incoming_len = self.incoming_len.saturating_sub(request.len as usize);
        self.close_if_finished();
    }

    /// Stops waiting for a request's response; no event will be emitted for it. Returns whether
    /// it was still waiting. If none of its bytes were written yet, it is withdrawn and never
    /// sent; otherwise a response that still arrives is counted as stale.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        match self.waiter_slot(id.0) {
            Some(slot) => {
                self.remove_waiter(slot, false);
                true
            }
            None => false,
        }
    }

    /// Closes the connection: every waiting request fails (saying whether it was written), unsent
    /// bytes are discarded, and [`Event::Closed`] follows. Idempotent.
    pub fn close(&mut self) {
        self.shut(CloseReason::Local);
    }

    // ---- transport inputs ----

    /// Bytes the transport delivered. Decodes every complete frame among them.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if self.closed.is_some() || self.eof {
            return;
        }
        self.read_room(data.len());
        self.read_buf.extend_from_slice(data);
        self.stats.bytes_in += data.len() as u64;
        self.process_input(now);
    }

    /// Room for `n` more bytes in the read buffer.
    #[inline]
    fn read_room(&mut self, n: usize) {
        if self.read_buf.capacity() - self.read_buf.len() < n {
            self.grow_read_buf(n);
        }
    }

    /// [`read_room`](Self::read_room) when there is not: the consumed front of the buffer
    /// reclaimed when nothing shares it any more, else a buffer with room for at least an
    /// [`INPUT_STEP`], so that one growth serves many small inputs.
    #[cold]
    #[inline(never)]
    fn grow_read_buf(&mut self, n: usize) {
        if self.read_buf.try_reclaim(n) {
            return;
        }
        let want = n.max(INPUT_STEP);
        let len = self.read_buf.len();
        if len < want {
            // Little to keep: a new buffer and a copy of those bytes (growing the old one in
            // place copies its whole allocation when it moves).
            let mut fresh = BytesMut::with_capacity(len + want);
            fresh.extend_from_slice(&self.read_buf);
            self.read_buf = fresh;
        } else {
            self.read_buf.reserve(want);
        }
    }

    /// The buffer the transport may read into directly (append only), followed by
    /// [`handle_read`](Self::handle_read). Saves a copy when the transport can fill a `BytesMut`.
    /// Its spare capacity never exceeds [`READ_STEP`] on the strength of a frame's announced
    /// length; a driver that reserves room itself should reserve by a bounded step too.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// `appended` bytes were added to [`read_buffer`](Self::read_buffer): decode them.
    pub fn handle_read(&mut self, appended: usize, now: Instant) {
        if self.closed.is_some() || self.eof {
            self.read_buf = BytesMut::new();
            return;
        }
        self.stats.bytes_in += appended as u64;
        self.process_input(now);
    }

    /// The transport accepted the first `n` bytes of what is to be written: of
    /// [`poll_transmit`](Self::poll_transmit), or of the chunks
    /// [`transmit_chunks`](Self::transmit_chunks) showed (a vectored write may end anywhere in
    /// them).
    pub fn handle_written(&mut self, n: usize) {
        if self.chunks.is_empty() && self.holes.is_empty() && n >= self.head.len() {
            // The usual case: everything queued is in `head`, none withdrawn, and all of it was
            // written. Emptied in place: the next frame is encoded at the same place, and
            // nothing moves the buffer's start (as `advance` would, and then a reclaim).
            let n = self.head.len();
            self.head.clear();
            self.consumed += n as u64;
            self.stats.bytes_out += n as u64;
            self.after_output();
            return;
        }
        let n = n.min(self.writable());
        self.discard_front(n);
        self.consumed += n as u64;
        self.stats.bytes_out += n as u64;
        self.skip_holes();
        self.after_output();
    }

    /// The transport finished sending `n` bytes given out by
    /// [`take_transmit`](Self::take_transmit): they no longer count as unsent (see
    /// [`wants_read`](Self::wants_read)). A driver that takes bytes must report them here.
    pub fn handle_sent(&mut self, n: usize) {
        self.taken = self.taken.saturating_sub(n);
        self.after_output();
    }

    /// The peer finished sending (end of input; it may still read). Our requests waiting for a
    /// response fail at once (none can come) and new ones are refused with [`SendError::Closed`],
    /// no more input is taken, and the connection stays open until every request the peer sent
    /// before is answered (or dismissed) and written; then it closes with
    /// [`CloseReason::ConnectionLost`].
    pub fn handle_eof(&mut self) {
        if self.closed.is_some() || self.eof {
            return;
        }
        self.eof = true;
        self.read_buf = BytesMut::new();
        let slots: Vec<usize> = self.waiters.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            let id = self.slot_id(slot);
            let (written, token) = self.remove_waiter(slot, false);
            self.events.push(Event::Failed {
                id,
                error: RequestError {
                    closed: Some(CloseReason::ConnectionLost),
                    written,
                },
                token,
            });
        }
        self.close_if_finished();
    }

    /// The clock reached `now`: every request whose deadline is at or before it fails.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((deadline, slot)) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            let id = self.slot_id(slot);
            let (written, token) = self.remove_waiter(slot, false);
            self.stats.timeouts += 1;
            self.events.push(Event::Failed {
                id,
                error: RequestError {
                    closed: None,
                    written,
                },
                token,
            });
        }
        if self.idle_deadline().is_some_and(|at| at <= now) {
            self.close();
        }
    }

    /// The transport is gone (EOF, reset, or an I/O error): every waiting request fails.
    pub fn handle_disconnect(&mut self) {
        self.shut(CloseReason::ConnectionLost);
    }

    /// The secure transport under this connection failed before the peer accepted it (a TLS
    /// handshake that failed, stalled, or was refused by the peer): every waiting request fails
    /// as never written — even bytes handed to the transport cannot have reached the peer's
    /// application, since a TLS peer delivers nothing before its handshake completes — and the
    /// connection closes with [`CloseReason::HandshakeFailed`].
    pub fn handle_handshake_failure(&mut self) {
        self.shut_with(CloseReason::HandshakeFailed, false);
    }

    // ---- outputs ----

    /// Takes the bytes [`poll_transmit`](Self::poll_transmit) would show (the next chunk), for a
    /// driver that hands owned buffers to its transport (or writes outside a lock); call it again
    /// for the next chunk, and write the chunks in order (a vectored write may carry several).
    /// They count as written at once: the driver commits to writing them, and a request among
    /// them is reported as possibly delivered from then on. No copy: the returned `Bytes` shares
    /// the machine's buffer, or is the caller's own body.
    #[inline]
    pub fn take_transmit(&mut self) -> Option<Bytes> {
        if self.queued_len() == 0 {
            // Nothing queued, so nothing writable (a withdrawn frame is queued bytes too).
            return None;
        }
        self.take_queued()
    }

    /// Takes every queued byte at once by exchanging the machine's transmit buffer for
    /// `spare`, for a driver that hands owned buffers to its transport (as
    /// [`take_transmit`](Self::take_transmit) does) and keeps two to alternate: `spare` is
    /// emptied first (a buffer the transport is done with), then holds the frames to write;
    /// returns their length. No reference count is taken or dropped (`take_transmit`'s `Bytes`
    /// share the buffer: two atomic operations each), and the buffer handed back is written
    /// into next, so a driver that alternates two allocates nothing.
    ///
    /// Only when every queued byte is in that buffer (the usual case: no body of
    /// [`COALESCE_BELOW`] bytes or more and no withdrawn frame waiting); otherwise it returns 0,
    /// `spare` untouched, and `take_transmit` gives the next chunk. The bytes count as written
    /// at once, as `take_transmit`'s do: report them with [`handle_sent`](Self::handle_sent)
    /// once the transport took them.
    pub fn take_transmit_buffer(&mut self, spare: &mut BytesMut) -> usize {
        if !self.chunks.is_empty() || !self.holes.is_empty() || self.head.is_empty() {
            return 0;
        }
        spare.clear();
        core::mem::swap(&mut self.head, spare);
        let n = spare.len();
        self.consumed += n as u64;
        self.stats.bytes_out += n as u64;
        self.taken += n;
        if self.head.capacity() > RELEASE_ABOVE {
            // A grown buffer is not kept for small frames (`after_output`'s rule).
            self.head = BytesMut::new();
        }
        n
    }

    /// [`take_transmit`](Self::take_transmit) with bytes queued.
    fn take_queued(&mut self) -> Option<Bytes> {
        if self.chunks.is_empty() && self.holes.is_empty() {
            // The usual case: every queued frame is in `head`, none withdrawn.
            if self.head.is_empty() {
                return None;
            }
            let out = self.head.split().freeze();
            let n = out.len();
            self.consumed += n as u64;
            self.stats.bytes_out += n as u64;
            self.taken += n;
            // What `after_output` does, knowing that `head` is now empty and `taken` is not
            // (so the connection cannot be finished).
            if self.head.capacity() > RELEASE_ABOVE {
                self.head = BytesMut::with_capacity(TRANSMIT_CAPACITY);
            }
            return Some(out);
        }
        self.take_transmit_chunk()
    }

    /// [`take_transmit`](Self::take_transmit) with chunks or withdrawn frames queued.
    #[inline(never)]
    fn take_transmit_chunk(&mut self) -> Option<Bytes> {
        let n = self.writable();
        if n == 0 {
            return None;
        }
        let out = match self.chunks.front_mut() {
            Some(front) if front.len() <= n => {
                let chunk = self.chunks.pop_front().expect("front exists");
                self.chunks_len -= chunk.len();
                chunk
            }
            Some(front) => {
                self.chunks_len -= n;
                front.split_to(n)
            }
            None => self.head.split_to(n).freeze(),
        };
        let n = out.len();
        self.consumed += n as u64;
        self.stats.bytes_out += n as u64;
        self.taken += n;
        self.skip_holes();
        self.after_output();
        Some(out)
    }

    /// The bytes to write next, as one contiguous slice: the first chunk of
    /// [`transmit_chunks`](Self::transmit_chunks) — every frame queued since the last large body,
    /// coalesced, or a large body itself (cut short where a withdrawn frame is skipped). `None`
    /// when there is nothing.
    #[must_use]
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        if self.chunks.is_empty() && self.holes.is_empty() {
            // The usual case: every queued frame is in `head`, none withdrawn.
            return (!self.head.is_empty()).then_some(&self.head[..]);
        }
        self.transmit_chunks().next()
    }

    /// Everything that may be written now, as the chunks of a vectored write (`writev`,
    /// `sendmsg`), in order: runs of encoded headers (with small bodies coalesced) and large
    /// bodies as the caller's own memory, never copied. It stops where a withdrawn frame is
    /// skipped. Report the bytes the transport took with [`handle_written`](Self::handle_written).
    pub fn transmit_chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut left = self.writable();
        self.chunks
            .iter()
            .map(|c| &c[..])
            .chain(core::iter::once(&self.head[..]))
            .map_while(move |c| {
                let n = c.len().min(left);
                left -= n;
                (n > 0).then(|| &c[..n])
            })
            .fuse()
    }

    /// The next event, in the order they happened.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: the earliest deadline
    /// of a waiting request, or the [idle expiry](Self::idle_deadline) if that comes first.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.peek().map(|(deadline, _)| deadline);
        match (deadline, self.idle_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----

    /// Gives an unallocated (or exactly used up) header buffer its first capacity. Sized up
    /// front: BytesMut grows a shared buffer (one a driver is still writing from) by at least its
    /// first capacity, so this sets how rarely encoding allocates.
    #[inline]
    fn head_room(&mut self) {
        if self.head.capacity() == 0 {
            self.new_head();
        }
    }

    #[cold]
    #[inline(never)]
    fn new_head(&mut self) {
        self.head = BytesMut::with_capacity(TRANSMIT_CAPACITY);
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        // After end of input no response can come: a new request could only time out.
        if self.closed.is_some() || self.eof {
            return Err(SendError::Closed);
        }
        let queued = self.queued_len();
        if queued != 0 && queued >= self.config.max_transmit_len {
            return Err(SendError::TransmitFull { pending: queued });
        }
        Ok(())
    }

    /// Stream offset of the end of what is queued.
    fn stream_end(&self) -> u64 {
        self.consumed + self.queued_len() as u64
    }

    /// Bytes queued and not yet written or taken.
    fn queued_len(&self) -> usize {
        self.chunks_len + self.head.len()
    }

    /// Queues `cmd`'s frame; returns its length. A body of [`COALESCE_BELOW`] bytes or more
    /// becomes a chunk of its own (the caller's memory, no copy); a shorter one is copied after
    /// its header. Nothing is queued on error.
    #[inline(always)]
    fn enqueue(&mut self, cmd: &Command, ty: SerializeType) -> Result<usize, EncodeError> {
        self.head_room();
        let before = self.head.len();
        if cmd.body().len() < COALESCE_BELOW {
            self.codec.encode_into(cmd, ty, &mut self.head)?;
            return Ok(self.head.len() - before);
        }
        self.enqueue_with_chunk(cmd, ty, before)
    }

    /// [`enqueue`](Self::enqueue) of a command with a large body: its header after `before`
    /// in `head`, its body a chunk of its own.
    #[inline(never)]
    fn enqueue_with_chunk(
        &mut self,
        cmd: &Command,
        ty: SerializeType,
        before: usize,
    ) -> Result<usize, EncodeError> {
        self.codec.encode_head_into(cmd, ty, &mut self.head)?;
        let len = self.head.len() - before + cmd.body().len();
        self.push_chunk(cmd.body_bytes());
        Ok(len)
    }

    /// Queues `bytes` after everything queued, as a chunk of its own (no copy).
    fn push_chunk(&mut self, bytes: Bytes) {
        if !self.head.is_empty() {
            let run = self.head.split().freeze();
            self.chunks_len += run.len();
            self.chunks.push_back(run);
        }
        if !bytes.is_empty() {
            self.chunks_len += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    /// Drops the first `n` queued bytes (`n` at most [`queued_len`](Self::queued_len)).
    fn discard_front(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                self.head.advance(n);
                return;
            };
            if front.len() > n {
                front.advance(n);
                self.chunks_len -= n;
                return;
            }
            n -= front.len();
            self.chunks_len -= front.len();
            self.chunks.pop_front();
        }
    }

    /// After output progress: release an emptied, grown transmit buffer, and finish a connection
    /// whose peer is done once everything is answered and written.
    fn after_output(&mut self) {
        if self.head.is_empty() && self.head.capacity() > RELEASE_ABOVE {
            self.head = BytesMut::with_capacity(TRANSMIT_CAPACITY);
        }
        self.close_if_finished();
    }

    /// After end of input: closes once nothing the peer asked for is left to answer or write.
    fn close_if_finished(&mut self) {
        if self.eof && self.incoming == 0 && self.unsent_len() == 0 {
            self.shut(CloseReason::ConnectionLost);
        }
    }

    /// Bytes that may be written now: up to the next hole.
    fn writable(&self) -> usize {
        match self.holes.front() {
            Some(&(start, _)) => (start - self.consumed) as usize,
            None => self.queued_len(),
        }
    }

    /// Drops withdrawn frames that are now at the front of the buffer.
    fn skip_holes(&mut self) {
        while let Some(&(start, end)) = self.holes.front() {
            if start != self.consumed {
                break;
            }
            self.discard_front((end - start) as usize);
            self.consumed = end;
            self.holes.pop_front();
        }
    }

    /// The frame length of a waiting request (tests).
    #[cfg(test)]
    fn encoded_len_of(&self, id: RequestId) -> usize {
        self.waiters[id.index(self)].len as usize
    }

    fn slot_id(&self, slot: usize) -> RequestId {
        RequestId(self.generations[slot] << self.slot_bits | slot as u32)
    }

    /// The slot of the waiter an opaque names, if it is still waiting.
    fn waiter_slot(&self, opaque: u32) -> Option<usize> {
        let slot = (opaque & ((1u32 << self.slot_bits) - 1)) as usize;
        let generation = opaque >> self.slot_bits;
        (self.waiters.contains(slot) && self.generations[slot] == generation).then_some(slot)
    }

    /// Frees a waiter's slot and returns whether the peer may receive its request, and its
    /// token.
    ///
    /// Fully written: yes. When `closing` (unsent bytes are about to be discarded): only if fully
    /// written, since a peer cannot act on part of a frame. Otherwise a frame already begun will
    /// be finished (yes), and one not begun is withdrawn from the buffer (no).
    fn remove_waiter(&mut self, slot: usize, closing: bool) -> (bool, T) {
        let waiter = self.waiters.remove(slot);
        let token = waiter.token;
        self.deadlines.remove(slot);
        debug_assert_eq!(self.deadlines.len(), self.waiters.len());
        let generation_mask = u32::MAX >> self.slot_bits;
        let next = self.generations[slot].wrapping_add(1) & generation_mask;
        // Generation 0 is reserved for oneways.
        self.generations[slot] = next.max(1);
        let start = waiter.end - u64::from(waiter.len);
        let written = if waiter.end <= self.consumed {
            true
        } else if closing {
            false
        } else if start < self.consumed {
            true
        } else {
            let at = self.holes.partition_point(|&(s, _)| s < start);
            self.holes.insert(at, (start, waiter.end));
            self.skip_holes();
            false
        };
        (written, token)
    }

    fn shut(&mut self, reason: CloseReason) {
        self.shut_with(reason, true);
    }

    /// Closes for `reason`; `may_have_delivered` false reports every waiter as never written.
    fn shut_with(&mut self, reason: CloseReason, may_have_delivered: bool) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        let slots: Vec<usize> = self.waiters.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            let id = self.slot_id(slot);
            let (written, token) = self.remove_waiter(slot, true);
            self.events.push(Event::Failed {
                id,
                error: RequestError {
                    closed: Some(reason),
                    written: written && may_have_delivered,
                },
                token,
            });
        }
        // Release the memory, not just the contents: a closed machine may live on in a driver.
        self.chunks = VecDeque::new();
        self.chunks_len = 0;
        self.head = BytesMut::new();
        self.taken = 0;
        self.holes.clear();
        self.read_buf = BytesMut::new();
        self.events.push(Event::Closed { reason });
    }

    fn process_input(&mut self, now: Instant) {
        self.last_active = now;
        // Frames are decoded from `pos` on. A frame nothing keeps (no body, remark or fields:
        // a heartbeat, most responses) is skipped by moving `pos`, not the buffer; one a command
        // keeps is split off with the skipped bytes before it, and `pos` starts again at 0
        // (`Codec::decode_at`).
        let mut pos = 0;
        while pos < self.read_buf.len() {
            let before = self.read_buf.len() - pos;
            match self.codec.decode_at(&mut self.read_buf, &mut pos) {
                Ok(Decoded::Command(cmd)) => {
                    let frame_len = before - (self.read_buf.len() - pos);
                    if let Err(reason) = self.dispatch(cmd, frame_len) {
                        self.shut(reason);
                        return;
                    }
                }
                Ok(Decoded::Incomplete { needed }) => {
                    self.read_buf.advance(pos);
                    self.await_input(needed);
                    return;
                }
                Err(e) => {
                    self.shut(CloseReason::Corrupt(e));
                    return;
                }
            }
        }
        // Every byte read was whole frames (the usual case), and nothing shares the bytes from
        // the buffer's start on (frames kept were split off before it): the next input is
        // written over them, at the same place. No room is made here: the next input makes its
        // own (`handle_input`; a driver reading into `read_buffer` reserves its read), and by
        // then the frames just split off may no longer share the buffer, so its consumed front
        // can be reclaimed instead of a new buffer allocated.
        self.read_buf.clear();
        self.release_idle_read_buf();
    }

    /// Idle between frames: give back what the last big frame needed.
    #[inline]
    fn release_idle_read_buf(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > RELEASE_ABOVE {
            self.read_buf = BytesMut::new();
        }
    }

    /// The read buffer holds no whole frame: at least `needed` more bytes must arrive.
    #[inline]
    fn await_input(&mut self, needed: usize) {
        self.release_idle_read_buf();
        // Room for what is announced, but never more than a step beyond what arrived: a
        // peer that announces 16 MiB and stalls costs a step, not 16 MiB.
        self.read_room(needed.min(READ_STEP));
    }

    /// Hands a decoded command on. Inlined into [`process_input`](Self::process_input), so
    /// `cmd` is still the decoder's result: an event is written once, into its queue slot,
    /// taken before the event is built (see [`Events::slot`]).
    #[inline(always)]
    fn dispatch(&mut self, cmd: Command, frame_len: usize) -> Result<(), CloseReason> {
        if cmd.is_response() {
            if cmd.is_oneway() {
                return Err(CloseReason::OnewayResponse { opaque: cmd.opaque });
            }
            match self.waiter_slot(cmd.opaque as u32) {
                Some(slot) => {
                    let id = self.slot_id(slot);
                    let (_, token) = self.remove_waiter(slot, false);
                    self.stats.responses_matched += 1;
                    let place = self.events.slot();
                    Events::fill(
                        place,
                        Event::Response {
                            id,
                            response: cmd,
                            token,
                        },
                    );
                }
                None => self.stats.stale_responses += 1,
            }
        } else if cmd.is_oneway() {
            self.stats.oneways_received += 1;
            let place = self.events.slot();
            Events::fill(place, Event::Oneway { command: cmd });
        } else if self.incoming >= self.config.max_incoming || self.overloaded {
            self.answer_busy(cmd);
        } else {
            self.incoming += 1;
            self.incoming_len += frame_len;
            self.stats.requests_received += 1;
            let request = IncomingRequest {
                opaque: cmd.opaque,
                // Lossless: `frame_len` is at most the frame limit, a `u32`.
                len: frame_len as u32,
            };
            let place = self.events.slot();
            Events::fill(
                place,
                Event::Request {
                    request,
                    command: cmd,
                },
            );
        }
        Ok(())
    }

    /// Answers a request from the peer `SYSTEM_BUSY` without delivering it.
    #[cold]
    #[inline(never)]
    fn answer_busy(&mut self, cmd: Command) {
        self.stats.busy_rejections += 1;
        self.incoming += 1;
        let busy = cmd.response(SYSTEM_BUSY).with_remark(if self.overloaded {
            "[REJECTREQUEST]system busy, the server's buffer budget is spent"
        } else {
            "[REJECTREQUEST]system busy, too many requests in flight on this connection"
        });
        // If even the bare busy answer exceeds a tiny frame limit, nothing is sent.
        let request = IncomingRequest {
            opaque: cmd.opaque,
            len: 0,
        };
        let _ = self.send_response(request, busy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::codes::SYSTEM_BUSY;
    use alloc::vec;
    use core::time::Duration;

    const SEC: Duration = Duration::from_secs(1);

    fn pair() -> (Connection, Connection) {
        (
            Connection::new(Config::default()),
            Connection::new(Config::default()),
        )
    }

    /// Moves everything `from` has to write into `to`.
    fn flow(from: &mut Connection, to: &mut Connection, now: Instant) -> usize {
        let Some(bytes) = from.poll_transmit().map(<[u8]>::to_vec) else {
            return 0;
        };
        from.handle_written(bytes.len());
        to.handle_input(&bytes, now);
        bytes.len()
    }

    fn events<T>(conn: &mut Connection<T>) -> Vec<Event<T>> {
        core::iter::from_fn(|| conn.poll_event()).collect()
    }

    /// Answers every request the server has with SUCCESS and the request's body.
    fn echo(server: &mut Connection) {
        for event in events(server) {
            if let Event::Request { request, command } = event {
                let body = command.body_bytes();
                server
                    .send_response(request, command.response(0).with_body(body))
                    .unwrap();
            }
        }
    }

    #[test]
    fn a_quiet_connection_expires_after_its_idle_timeout_and_not_before() {
        let t = |s: u64| Instant::from_millis(s * 1000);
        let (mut client, mut server) = pair();
        assert_eq!(client.idle_deadline(), None, "no idle timeout by default");
        client.set_idle_timeout(Some(10 * SEC), t(0));
        assert_eq!(client.poll_timeout(), Some(t(10)));
        // A request in flight is not idle; its own deadline is what the timer waits for.
        let id = client
            .send_request(Command::request(1), t(33), t(5))
            .unwrap();
        assert_eq!(
            (client.idle_deadline(), client.poll_timeout()),
            (None, Some(t(33)))
        );
        client.handle_timeout(t(20));
        assert!(!client.is_closed(), "busy at the old expiry: not idle");
        flow(&mut client, &mut server, t(6));
        echo(&mut server);
        flow(&mut server, &mut client, t(7));
        assert!(matches!(events(&mut client)[..], [Event::Response { id: got, .. }] if got == id));
        // Quiet since the response was read at 7 s: expires at 17 s, not at 16.
        assert_eq!(client.poll_timeout(), Some(t(17)));
        client.handle_timeout(t(16));
        assert!(!client.is_closed());
        // A oneway at 16 s counts as activity.
        client.send_oneway_at(Command::request(2), t(16)).unwrap();
        assert_eq!(client.idle_deadline(), Some(t(26)));
        client.handle_timeout(t(26));
        assert_eq!(client.close_reason(), Some(CloseReason::Local));
        assert!(matches!(
            events(&mut client)[..],
            [Event::Closed {
                reason: CloseReason::Local
            }]
        ));
        assert_eq!(client.idle_deadline(), None, "closed: nothing to expire");
    }

    #[test]
    fn a_peer_request_left_unanswered_keeps_the_connection_from_expiring() {
        let t = |s: u64| Instant::from_millis(s * 1000);
        let (mut client, mut server) = pair();
        server.set_idle_timeout(Some(SEC), t(0));
        client
            .send_request(Command::request(1), t(60), t(0))
            .unwrap();
        flow(&mut client, &mut server, t(0));
        assert!(matches!(events(&mut server)[..], [Event::Request { .. }]));
        assert_eq!(server.idle_deadline(), None);
        server.handle_timeout(t(30));
        assert!(!server.is_closed(), "a request is still being handled");
    }

    #[test]
    fn late_response_for_a_reused_slot_is_dropped() {
        let (mut client, mut server) = pair();
        let t0 = Instant::ZERO;
        let a = client
            .send_request(Command::request(1).with_body(&b"a"[..]), t0 + SEC, t0)
            .unwrap();
        flow(&mut client, &mut server, t0);
        client.handle_timeout(t0 + SEC);
        assert!(
            matches!(events(&mut client)[..], [Event::Failed { id, error: RequestError { closed: None, written: true }, .. }] if id == a)
        );
        // The freed slot is reused with a new generation.
        let b = client
            .send_request(
                Command::request(1).with_body(&b"b"[..]),
                t0 + 5 * SEC,
                t0 + SEC,
            )
            .unwrap();
        assert_eq!(a.opaque() & 0xffff, b.opaque() & 0xffff, "same slot");
        assert_ne!(a, b);
        echo(&mut server); // answers a, late
        flow(&mut server, &mut client, t0 + SEC);
        assert_eq!(client.stats().stale_responses, 1);
        assert!(events(&mut client).is_empty());
        flow(&mut client, &mut server, t0 + SEC);
        echo(&mut server);
        flow(&mut server, &mut client, t0 + SEC);
        let got = events(&mut client);
        assert!(
            matches!(&got[..], [Event::Response { id, response, .. }] if *id == b && response.body() == b"b")
        );
        assert_eq!(client.pending_requests(), 0);
        assert_eq!(client.poll_timeout(), None);
    }

    #[test]
    fn max_waiters_is_refused_at_once() {
        let mut client = Connection::new(Config {
            max_waiters: 2,
            ..Config::default()
        });
        let t0 = Instant::ZERO;
        client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        assert_eq!(
            client.send_request(Command::request(1), t0 + SEC, t0),
            Err(SendError::TooManyWaiters { max: 2 })
        );
        assert_eq!(
            client.send_request(Command::request(1), t0, t0),
            Err(SendError::DeadlinePassed)
        );
    }

    #[test]
    fn handshake_failure_reports_even_written_requests_as_never_written() {
        let mut client = Connection::new(Config::default());
        let t0 = Instant::ZERO;
        let written = client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        let n = client.poll_transmit().unwrap().len();
        client.handle_written(n);
        let queued = client
            .send_request(Command::request(2), t0 + SEC, t0)
            .unwrap();
        client.handle_handshake_failure();
        let not_written = RequestError {
            closed: Some(CloseReason::HandshakeFailed),
            written: false,
        };
        assert_eq!(
            events(&mut client),
            vec![
                Event::Failed {
                    id: written,
                    error: not_written,
                    token: ()
                },
                Event::Failed {
                    id: queued,
                    error: not_written,
                    token: ()
                },
                Event::Closed {
                    reason: CloseReason::HandshakeFailed
                },
            ]
        );
        assert!(!not_written.may_have_reached_peer());
        // A later disconnect changes nothing.
        client.handle_disconnect();
        assert_eq!(client.close_reason(), Some(CloseReason::HandshakeFailed));
        assert!(client.poll_event().is_none());
    }

    #[test]
    fn corrupt_input_fails_pending_requests_saying_which_were_written() {
        let (mut client, _) = pair();
        let t0 = Instant::ZERO;
        let a = client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        let first = client.poll_transmit().unwrap().len();
        client.handle_written(first);
        let b = client
            .send_request(Command::request(2), t0 + SEC, t0)
            .unwrap();
        client.handle_written(3); // b only partly written
        client.handle_input(&[0xff, 0xff, 0xff, 0xff], t0);
        let got = events(&mut client);
        let reason = CloseReason::Corrupt(DecodeError::NegativeLength { length: -1 });
        assert_eq!(got.len(), 3);
        assert!(got.contains(&Event::Failed {
            id: a,
            error: RequestError {
                closed: Some(reason),
                written: true
            },
            token: ()
        }));
        assert!(got.contains(&Event::Failed {
            id: b,
            error: RequestError {
                closed: Some(reason),
                written: false
            },
            token: ()
        }));
        assert_eq!(got[2], Event::Closed { reason });
        assert_eq!(client.poll_transmit(), None);
        assert_eq!(
            client.send_oneway(Command::oneway(3)),
            Err(SendError::Closed)
        );
        client.close();
        assert!(
            events(&mut client).is_empty(),
            "close after close emits nothing"
        );
    }

    #[test]
    fn oneway_flagged_response_is_a_protocol_violation() {
        let (mut client, mut server) = pair();
        let t0 = Instant::ZERO;
        let a = client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        let mut bad = Command::request(0).with_opaque(a.opaque());
        bad.flag = FLAG_RESPONSE | FLAG_ONEWAY;
        server.send_oneway(Command::oneway(1)).unwrap();
        server.handle_written(server.poll_transmit().unwrap().len());
        let mut wire = BytesMut::new();
        Codec::default().encode(&bad, &mut wire).unwrap();
        client.handle_input(&wire, t0);
        let reason = CloseReason::OnewayResponse { opaque: a.opaque() };
        assert_eq!(events(&mut client).last(), Some(&Event::Closed { reason }));
    }

    #[test]
    fn peer_opaques_are_echoed_and_oneways_never_answered() {
        let mut server = Connection::new(Config::default());
        let t0 = Instant::ZERO;
        let codec = Codec::default();
        let mut wire = BytesMut::new();
        codec
            .encode(&Command::request(105).with_opaque(i32::MIN), &mut wire)
            .unwrap();
        codec
            .encode(&Command::oneway(34).with_opaque(-9), &mut wire)
            .unwrap();
        server.handle_input(&wire, t0);
        let mut got = events(&mut server).into_iter();
        let Some(Event::Request { request, command }) = got.next() else {
            panic!()
        };
        assert!(matches!(got.next(), Some(Event::Oneway { command }) if command.opaque == -9));
        server.send_response(request, command.response(0)).unwrap();
        let mut answer = BytesMut::from(server.poll_transmit().unwrap());
        let Decoded::Command(resp) = codec.decode(&mut answer).unwrap() else {
            panic!()
        };
        assert_eq!((resp.opaque, resp.is_response()), (i32::MIN, true));
        assert!(answer.is_empty(), "exactly one response");
    }

    #[test]
    fn overloaded_server_answers_busy_itself() {
        let mut server = Connection::new(Config {
            max_incoming: 1,
            ..Config::default()
        });
        let codec = Codec::default();
        let mut wire = BytesMut::new();
        codec
            .encode(&Command::request(1).with_opaque(10), &mut wire)
            .unwrap();
        codec
            .encode(&Command::request(1).with_opaque(11), &mut wire)
            .unwrap();
        server.handle_input(&wire, Instant::ZERO);
        let got = events(&mut server);
        assert_eq!(got.len(), 1, "only the first request is delivered");
        let mut answer = BytesMut::from(server.poll_transmit().unwrap());
        let Decoded::Command(busy) = codec.decode(&mut answer).unwrap() else {
            panic!()
        };
        assert_eq!((busy.code, busy.opaque), (SYSTEM_BUSY, 11));
        assert_eq!(server.stats().busy_rejections, 1);
        let Event::Request { request, .. } = got.into_iter().next().unwrap() else {
            panic!()
        };
        server.dismiss(request);
        assert_eq!(server.pending_incoming(), 0);
    }

    #[test]
    fn a_frame_limit_too_small_for_any_answer_never_panics() {
        // Found by the connection fuzz target: the SYSTEM_ERROR fallback and the busy answer
        // used to `expect` that they fit, and a peer could make them not fit.
        let limits = Limits {
            max_frame_len: 40,
            ..Limits::default()
        };
        let mut server = Connection::new(Config {
            max_incoming: 0,
            limits,
            ..Config::default()
        });
        let mut wire = BytesMut::new();
        Codec::default()
            .encode_as(
                &Command::request(1).with_opaque(7),
                SerializeType::RocketMq,
                &mut wire,
            )
            .unwrap();
        server.handle_input(&wire, Instant::ZERO); // would be answered busy: cannot be
        assert_eq!(server.poll_transmit(), None);
        let mut server = Connection::new(Config {
            limits,
            ..Config::default()
        });
        server.handle_input(&wire, Instant::ZERO);
        let Some(Event::Request { request, command }) = server.poll_event() else {
            panic!()
        };
        let big = command.response(0).with_body(vec![0u8; 64]);
        assert!(matches!(
            server.send_response(request, big),
            Err(SendError::Encode(_))
        ));
        assert_eq!(server.poll_transmit(), None);
        assert_eq!(server.pending_incoming(), 0);
    }

    #[test]
    fn transmit_limit_pushes_back_on_requests_only() {
        let mut conn = Connection::new(Config {
            max_transmit_len: 10,
            ..Config::default()
        });
        let t0 = Instant::ZERO;
        conn.send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        assert!(matches!(
            conn.send_oneway(Command::oneway(1)),
            Err(SendError::TransmitFull { .. })
        ));
        let n = conn.poll_transmit().unwrap().len();
        conn.handle_written(n);
        conn.send_oneway(Command::oneway(1)).unwrap();
    }

    #[test]
    fn cancel_ends_a_request_silently_and_withdraws_it_if_unwritten() {
        let (mut client, mut server) = pair();
        let t0 = Instant::ZERO;
        let a = client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        assert!(client.cancel(a));
        assert!(!client.cancel(a));
        assert_eq!(client.poll_timeout(), None);
        assert_eq!(
            client.poll_transmit(),
            None,
            "an unwritten request is withdrawn"
        );
        // Once written, a cancelled request's response is stale.
        let b = client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        flow(&mut client, &mut server, t0);
        assert!(client.cancel(b));
        echo(&mut server);
        flow(&mut server, &mut client, t0);
        assert!(events(&mut client).is_empty());
        assert_eq!(client.stats().stale_responses, 1);
    }

    #[test]
    fn a_request_that_times_out_unwritten_is_never_sent() {
        let (mut client, mut server) = pair();
        let t0 = Instant::ZERO;
        let a = client
            .send_request(Command::request(1).with_body(&b"a"[..]), t0 + 5 * SEC, t0)
            .unwrap();
        let b = client
            .send_request(Command::request(2).with_body(&b"b"[..]), t0 + SEC, t0)
            .unwrap();
        let c = client
            .send_request(Command::request(3).with_body(&b"c"[..]), t0 + 5 * SEC, t0)
            .unwrap();
        let mut wire = client.poll_transmit().unwrap()[..5].to_vec();
        client.handle_written(5); // `a` begun, `b` and `c` not
        client.handle_timeout(t0 + SEC);
        assert_eq!(
            events(&mut client),
            [Event::Failed {
                id: b,
                error: RequestError {
                    closed: None,
                    written: false
                },
                token: ()
            }]
        );
        // The rest of `a` goes out, then `c`; `b` is skipped.
        while let Some(bytes) = client.poll_transmit() {
            let n = bytes.len();
            wire.extend_from_slice(bytes);
            client.handle_written(n);
        }
        server.handle_input(&wire, t0);
        let opaques: Vec<_> = events(&mut server)
            .into_iter()
            .map(|e| match e {
                Event::Request { command, .. } => command.opaque,
                _ => panic!(),
            })
            .collect();
        assert_eq!(opaques, [a.opaque(), c.opaque()]);
    }

    /// A stream of frames the decoder skips in place (no body, remark or fields: `decode_at`
    /// moves its position, not the buffer) mixed with frames it splits off (body, fields,
    /// remark), both header types, requests, oneways and stale responses, gives the same
    /// events whatever the cut into inputs: two inputs cut at every byte, three at every pair of
    /// cuts 7 bytes apart, and equal pieces of every size, by `handle_input` or `read_buffer` +
    /// `handle_read`. The first cut of a frame lands after skipped frames, so a partial frame
    /// must be kept from its own first byte.
    #[test]
    fn any_cut_of_a_stream_of_skipped_and_kept_frames_gives_the_same_events() {
        use crate::codec::command::FLAG_RESPONSE;
        let rocketmq = SerializeType::RocketMq;
        let commands = [
            Command::request(34).with_serialize_type(rocketmq),
            Command::request(34),
            Command::request(10)
                .with_serialize_type(rocketmq)
                .with_body(&b"a body"[..]),
            Command::oneway(11).with_serialize_type(rocketmq),
            Command::request(12).with_ext("topic", "TopicTest"),
            Command::request(13)
                .with_serialize_type(rocketmq)
                .with_ext("k", "v"),
            Command::request(14).with_remark("remark \u{1} escaped"),
            Command::request(15)
                .with_opaque(3)
                .with_serialize_type(rocketmq),
            Command::request(16).with_body(&b"json body"[..]),
            Command::oneway(17).with_body(&b"oneway body"[..]),
        ];
        let codec = Codec::default();
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        let mut stale = 0;
        for (i, command) in commands.iter().enumerate() {
            let mut command = command.clone().with_opaque(100 + i as i32);
            // Every third frame a response no request of ours waits for: counted, dropped.
            if i % 3 == 2 {
                command.flag = FLAG_RESPONSE;
                stale += 1;
            }
            let before = wire.len();
            codec.encode(&command, &mut wire).unwrap();
            let len = wire.len() - before;
            if command.is_response() {
                continue;
            }
            expected.push(if command.is_oneway() {
                Event::Oneway { command }
            } else {
                Event::Request {
                    request: IncomingRequest {
                        opaque: command.opaque,
                        len: len as u32,
                    },
                    command,
                }
            });
        }
        let run = |cuts: &[usize], by_read: bool| {
            let mut server = Connection::new(Config::default());
            let mut at = 0;
            for &end in cuts.iter().chain([wire.len()].iter()) {
                let piece = &wire[at..end];
                if by_read {
                    server.read_buffer().extend_from_slice(piece);
                    server.handle_read(piece.len(), Instant::ZERO);
                } else {
                    server.handle_input(piece, Instant::ZERO);
                }
                at = end;
            }
            assert_eq!(server.buffered_len(), server.pending_incoming_len());
            assert_eq!(server.stats().stale_responses, stale);
            assert_eq!(events(&mut server), expected, "cut at {cuts:?}");
        };
        let len = wire.len();
        for cut in 0..=len {
            run(&[cut], cut % 2 == 0);
        }
        for a in (0..=len).step_by(7) {
            for b in (a..=len).step_by(7) {
                run(&[a, b], (a + b) % 2 == 1);
            }
        }
        for size in 1..=len {
            let cuts: Vec<usize> = (size..len).step_by(size).collect();
            run(&cuts, size % 2 == 1);
        }
    }

    /// A request goes out with its waiter's opaque and without the response and oneway bits
    /// (other bits kept), whichever writer frames it: the bare ROCKETMQ one (which writes them
    /// in place of the command's own) or the general one; the body follows either way.
    #[test]
    fn a_request_goes_out_with_its_waiters_opaque_and_its_own_other_bits() {
        use crate::codec::command::{FLAG_ONEWAY, FLAG_RESPONSE};
        let now = Instant::ZERO;
        let rocketmq = SerializeType::RocketMq;
        let commands = [
            Command::request(10).with_serialize_type(rocketmq),
            Command::request(11)
                .with_serialize_type(rocketmq)
                .with_body(&b"body"[..]),
            Command::request(12)
                .with_serialize_type(rocketmq)
                .with_ext("k", "v"),
            Command::request(13).with_body(&b"json"[..]),
        ];
        let mut client = Connection::new(Config::default());
        for command in commands {
            let mut sent = command.clone().with_opaque(77);
            sent.flag = FLAG_RESPONSE | FLAG_ONEWAY | 0x40;
            let id = client.send_request(sent, now + SEC, now).unwrap();
            let mut wire = BytesMut::from(&client.take_transmit().unwrap()[..]);
            let Decoded::Command(got) = Codec::default().decode(&mut wire).unwrap() else {
                panic!("a whole frame");
            };
            assert!(wire.is_empty());
            let mut expected = command.with_opaque(id.opaque());
            expected.flag = 0x40;
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn an_announced_length_reserves_one_step_not_the_frame() {
        let mut server = Connection::new(Config::default());
        let mut prefix = BytesMut::new();
        Codec::default()
            .encode(
                &Command::request(1).with_body(vec![0u8; 15 * 1024 * 1024]),
                &mut prefix,
            )
            .unwrap();
        server.handle_input(&prefix[..8], Instant::ZERO);
        assert!(server.read_buffer().capacity() <= 8 + READ_STEP);
        // As the frame arrives the buffer follows the bytes (amortised growth: at most about
        // twice what arrived); once it is decoded and the connection is idle, it is given back.
        let mut arrived = 8;
        for piece in prefix[8..].chunks(64 * 1024) {
            server.handle_input(piece, Instant::ZERO);
            arrived += piece.len();
            if arrived < prefix.len() {
                let held = server.read_buffer().capacity();
                assert!(held <= 2 * arrived + READ_STEP, "{held} for {arrived}");
            }
        }
        let Some(Event::Request { request, .. }) = server.poll_event() else {
            panic!()
        };
        server.dismiss(request);
        server.handle_input(&[0, 0], Instant::ZERO);
        assert!(server.read_buffer().capacity() <= RELEASE_ABOVE);
        assert_eq!(server.buffered_len(), 2);
    }

    /// Every byte `transmit_chunks` shows, concatenated.
    fn gathered<T>(conn: &Connection<T>) -> Vec<u8> {
        conn.transmit_chunks().flatten().copied().collect()
    }

    /// Output written in pieces of every size (and taken now and then, as `Bytes` or by
    /// exchanging buffers), with requests queued and withdrawn between writes, reaches the
    /// peer as the frames queued, in order: every request arrives whole, at most once, and one
    /// not withdrawn arrives and is answered exactly once.
    #[test]
    fn output_written_in_any_pieces_arrives_whole_and_in_order() {
        let body_len = |code: i32| match code % 5 {
            1 => 10,
            2 => COALESCE_BELOW + 3,
            3 => 100,
            _ => 0,
        };
        for piece in [1usize, 2, 3, 7, 29, 64, 100, 1000, usize::MAX] {
            for (take_every, swap_every) in [(0usize, 0usize), (3, 0), (0, 2), (3, 2)] {
                let (mut client, mut server) = pair();
                let t0 = Instant::ZERO;
                let mut kept = Vec::new();
                let mut wire = 0usize;
                let mut step = 0usize;
                // A buffer the transport is done with, holding stale bytes.
                let mut spare = BytesMut::from(&b"stale"[..]);
                // One write of at most `piece` bytes, or every third step a take, or every
                // second an exchange of buffers (a write when it gives nothing).
                let mut write = |client: &mut Connection, server: &mut Connection| {
                    step += 1;
                    if swap_every > 0 && step % swap_every == 0 {
                        let queued = client.poll_transmit().map(<[u8]>::to_vec);
                        let unsent = client.unsent_len();
                        let n = client.take_transmit_buffer(&mut spare);
                        if n > 0 {
                            assert_eq!(Some(&spare[..]), queued.as_deref());
                            assert_eq!(n, spare.len());
                            assert_eq!(client.unsent_len(), unsent, "taken, not yet sent");
                            assert_eq!(client.poll_transmit(), None);
                            server.handle_input(&spare, t0);
                            client.handle_sent(n);
                            assert_eq!(client.unsent_len(), unsent - n);
                            wire += n;
                            return true;
                        }
                        assert!(!spare.is_empty(), "untouched when it gives nothing");
                    }
                    if take_every > 0 && step % take_every == 0 {
                        let Some(bytes) = client.take_transmit() else {
                            return false;
                        };
                        server.handle_input(&bytes, t0);
                        client.handle_sent(bytes.len());
                        wire += bytes.len();
                        return true;
                    }
                    let Some(bytes) = client.poll_transmit() else {
                        return false;
                    };
                    let part = if piece == usize::MAX {
                        // One vectored write of every chunk, reported as more than it was
                        // (counted as what may be written).
                        let all = gathered(client);
                        client.handle_written(usize::MAX);
                        all
                    } else {
                        let part = bytes[..bytes.len().min(piece)].to_vec();
                        client.handle_written(part.len());
                        part
                    };
                    server.handle_input(&part, t0);
                    wire += part.len();
                    true
                };
                for code in 1..=40 {
                    let body = Bytes::from(vec![code as u8; body_len(code)]);
                    let request = Command::request(code).with_body(body);
                    let id = client.send_request(request, t0 + SEC, t0).unwrap();
                    kept.push((id, code));
                    if code % 7 == 4 {
                        // The one before, between two others not yet written (a hole in the
                        // stream), or begun (finished anyway), or written.
                        let (before, _) = kept.remove(kept.len() - 2);
                        assert!(client.cancel(before));
                    }
                    if code % 7 != 2 && code % 7 != 3 {
                        write(&mut client, &mut server);
                    }
                }
                while write(&mut client, &mut server) {}
                assert_eq!(client.unsent_len(), 0, "piece {piece}");
                assert_eq!(
                    client.stats().bytes_out,
                    wire as u64,
                    "{piece} {take_every} {swap_every}"
                );
                let mut arrived = Vec::new();
                for event in events(&mut server) {
                    let Event::Request { request, command } = event else {
                        panic!("{event:?}")
                    };
                    assert_eq!(command.body().len(), body_len(command.code));
                    assert!(command.body().iter().all(|&b| b == command.code as u8));
                    arrived.push(command.code);
                    let body = command.body_bytes();
                    server
                        .send_response(request, command.response(0).with_body(body))
                        .unwrap();
                }
                assert!(arrived.windows(2).all(|w| w[0] < w[1]), "{arrived:?}");
                assert!(kept.iter().all(|(_, code)| arrived.contains(code)));
                while flow(&mut server, &mut client, t0) > 0 {}
                let mut answered = Vec::new();
                for event in events(&mut client) {
                    let Event::Response { id, response, .. } = event else {
                        panic!("{event:?}")
                    };
                    answered.push(id);
                    let code = kept.iter().find(|(k, _)| *k == id).expect("kept").1;
                    assert_eq!(response.body().len(), body_len(code));
                }
                let ids: Vec<RequestId> = kept.iter().map(|(id, _)| *id).collect();
                assert_eq!(answered, ids, "{piece} {take_every} {swap_every}");
                assert_eq!(
                    client.stats().stale_responses as usize,
                    arrived.len() - kept.len()
                );
            }
        }
    }

    /// A buffer exchange takes every queued frame, which then counts as written (a request
    /// among them may have reached the peer); it gives nothing while a large body is queued
    /// (its own chunk), and the buffer handed back is written into next, emptied first.
    #[test]
    fn a_buffer_exchange_takes_everything_queued_as_written() {
        let mut client = Connection::new(Config::default());
        let t0 = Instant::ZERO;
        let mut spare = BytesMut::with_capacity(TRANSMIT_CAPACITY);
        spare.extend_from_slice(b"sent before");
        let spare_at = spare.as_ptr();
        assert_eq!(client.take_transmit_buffer(&mut spare), 0, "nothing queued");
        let a = client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        let b = client
            .send_request(Command::request(2), t0 + SEC, t0)
            .unwrap();
        let queued = gathered(&client);
        let n = client.take_transmit_buffer(&mut spare);
        assert_eq!((n, &spare[..]), (queued.len(), &queued[..]));
        assert_eq!(client.unsent_len(), n);
        // The next frame goes into the buffer handed back, emptied.
        client.send_oneway(Command::request(3)).unwrap();
        assert_eq!(client.poll_transmit().unwrap().as_ptr(), spare_at);
        let oneway = gathered(&client);
        let mut other = BytesMut::new();
        assert_eq!(client.take_transmit_buffer(&mut other), oneway.len());
        // A large body is its own chunk: no exchange while it is queued.
        let body = Bytes::from(vec![1u8; COALESCE_BELOW]);
        client
            .send_request(Command::request(4).with_body(body), t0 + SEC, t0)
            .unwrap();
        assert_eq!(client.take_transmit_buffer(&mut spare), 0);
        assert_eq!(&spare[..], &queued[..], "untouched");
        client.handle_sent(n);
        client.close();
        let written: Vec<(RequestId, bool)> = events(&mut client)
            .into_iter()
            .filter_map(|e| match e {
                Event::Failed { id, error, .. } => Some((id, error.may_have_reached_peer())),
                _ => None,
            })
            .collect();
        assert!(written.contains(&(a, true)) && written.contains(&(b, true)));
        assert_eq!(written.len(), 3);
        assert!(
            written.iter().any(|&(_, w)| !w),
            "the large one was never written"
        );
    }

    #[test]
    fn a_large_body_goes_out_as_the_callers_memory() {
        let mut client = Connection::new(Config::default());
        let t0 = Instant::ZERO;
        let body = bytes::Bytes::from(vec![7u8; 1 << 20]);
        let small = Command::request(2).with_body(&b"tiny"[..]);
        client
            .send_request(Command::request(1).with_body(body.clone()), t0 + SEC, t0)
            .unwrap();
        client.send_oneway(small.clone()).unwrap();
        let chunks: Vec<&[u8]> = client.transmit_chunks().collect();
        assert_eq!(chunks.len(), 3, "header run, body, the next frame");
        assert_eq!(chunks[1].as_ptr(), body.as_ptr(), "the body is not copied");
        assert_eq!(chunks[1].len(), body.len());
        assert_eq!(client.poll_transmit(), Some(chunks[0]));
        // The chunks are exactly the frames the codec writes.
        let mut expected = BytesMut::new();
        let mut big = Command::request(1).with_body(body.clone());
        big.opaque = 1 << client.slot_bits;
        Codec::default().encode(&big, &mut expected).unwrap();
        let mut oneway = small.with_opaque(1);
        oneway.flag = FLAG_ONEWAY;
        Codec::default().encode(&oneway, &mut expected).unwrap();
        assert_eq!(gathered(&client), &expected[..]);
        assert_eq!(client.unsent_len(), expected.len());
        // A vectored write that ends inside the body.
        let head = chunks[0].len();
        client.handle_written(head + 1000);
        assert_eq!(gathered(&client), &expected[head + 1000..]);
        let taken = client.take_transmit().unwrap();
        assert_eq!(
            taken.as_ptr(),
            body[1000..].as_ptr(),
            "taken, still not copied"
        );
        assert_eq!(client.unsent_len(), expected.len() - head - 1000);
        client.handle_sent(taken.len());
        client.handle_written(usize::MAX);
        assert_eq!(client.unsent_len(), 0);
        assert_eq!(client.stats().bytes_out, expected.len() as u64);
    }

    #[test]
    fn a_withdrawn_large_request_is_skipped_whole() {
        let mut client = Connection::new(Config::default());
        let t0 = Instant::ZERO;
        let first = client
            .send_request(Command::request(1).with_body(&b"a"[..]), t0 + SEC, t0)
            .unwrap();
        let big = client
            .send_request(Command::request(2).with_body(vec![1u8; 4096]), t0 + SEC, t0)
            .unwrap();
        let last = client
            .send_request(Command::request(3).with_body(&b"c"[..]), t0 + SEC, t0)
            .unwrap();
        let all = gathered(&client);
        let first_len = client.encoded_len_of(first);
        // Part of the first frame is out; the big one has not begun: it is withdrawn.
        client.handle_written(first_len - 1);
        assert!(client.cancel(big));
        assert!(client.cancel(first), "begun: it will be finished");
        // The rest of the first frame, up to the withdrawn one; then the last frame.
        assert_eq!(gathered(&client), all[first_len - 1..first_len]);
        client.handle_written(1);
        let rest = gathered(&client);
        let last_len = client.encoded_len_of(last);
        assert_eq!(rest, all[all.len() - last_len..]);
        client.handle_written(rest.len());
        assert_eq!(client.unsent_len(), 0);
        client.close();
        let got = events(&mut client);
        assert!(
            matches!(&got[..], [Event::Failed { id, error: RequestError { written: true, .. }, .. }, Event::Closed { .. }] if *id == last)
        );
    }

    #[test]
    fn an_encoded_request_shares_its_large_body_and_is_withdrawn_whole() {
        use crate::codec::encoded::Encoded;
        let codec = Codec::default();
        let t0 = Instant::ZERO;
        for ty in [SerializeType::Json, SerializeType::RocketMq] {
            let mut client: Connection<u8> = Connection::with_tokens(Config::default());
            let mut big = Command::request(5).with_body(vec![3u8; 4096]);
            let big = Encoded::request(&codec, &mut big, ty).unwrap();
            let mut small = Command::request(6).with_body(&b"s"[..]);
            let small = Encoded::request(&codec, &mut small, ty).unwrap();
            let a = client
                .send_encoded_request_with(&small, t0 + SEC, t0, 1)
                .unwrap();
            let b = client
                .send_encoded_request_with(&big, t0 + SEC, t0, 2)
                .unwrap();
            let c = client
                .send_encoded_request_with(&small, t0 + SEC, t0, 3)
                .unwrap();
            // Exactly the frames `Encoded::write` makes, each with its own opaque.
            let mut expected = BytesMut::new();
            small.write(a.opaque(), &mut expected);
            big.write(b.opaque(), &mut expected);
            small.write(c.opaque(), &mut expected);
            assert_eq!(gathered(&client), &expected[..], "{ty:?}");
            assert_eq!(client.unsent_len(), expected.len());
            let chunks: Vec<&[u8]> = client.transmit_chunks().collect();
            assert_eq!(
                chunks.len(),
                3,
                "{ty:?}: headers, the big body, the last frame"
            );
            let body = &big.as_bytes()[big.len() - 4096..];
            assert_eq!(
                chunks[1].as_ptr(),
                body.as_ptr(),
                "{ty:?}: the body is shared"
            );
            assert_eq!(client.encoded_len_of(b), big.len());
            // `a` partly written, `b` not begun: cancelling `b` withdraws header and body.
            let a_len = small.len();
            client.handle_written(a_len - 1);
            assert!(client.cancel(b));
            // The rest of `a`, up to the withdrawn frame; then `c`.
            assert_eq!(gathered(&client), &expected[a_len - 1..a_len], "{ty:?}");
            client.handle_written(1);
            let rest = gathered(&client);
            assert_eq!(rest, &expected[a_len + big.len()..], "{ty:?}");
            assert_eq!(client.unsent_len(), rest.len());
            client.handle_written(rest.len());
            assert_eq!(client.unsent_len(), 0);
            assert_eq!(
                client.stats().bytes_out,
                (a_len + small.len()) as u64,
                "{ty:?}: the withdrawn frame never counts as written"
            );
            client.close();
            let got = events(&mut client);
            assert!(
                matches!(
                    &got[..],
                    [
                        Event::Failed {
                            error: RequestError { written: true, .. },
                            token: 1,
                            ..
                        },
                        Event::Failed {
                            error: RequestError { written: true, .. },
                            token: 3,
                            ..
                        },
                        Event::Closed { .. }
                    ]
                ),
                "{ty:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_peer_that_does_not_read_is_not_read_either() {
        let mut server = Connection::new(Config {
            max_transmit_len: 1000,
            ..Config::default()
        });
        let mut wire = BytesMut::new();
        Codec::default()
            .encode(&Command::request(1).with_body(vec![1u8; 600]), &mut wire)
            .unwrap();
        assert!(server.wants_read());
        server.handle_input(&wire, Instant::ZERO);
        echo(&mut server);
        assert!(server.wants_read(), "under the mark");
        server.handle_input(&wire, Instant::ZERO);
        echo(&mut server);
        assert!(!server.wants_read(), "over the mark: stop reading");
        // Taken bytes count until reported sent (the 600-byte bodies are chunks of their own).
        let taken: usize = core::iter::from_fn(|| server.take_transmit())
            .map(|c| c.len())
            .sum();
        assert_eq!(server.unsent_len(), taken);
        assert!(!server.wants_read());
        server.handle_sent(taken - 1);
        assert!(server.wants_read(), "drained below the mark: read again");
        server.handle_sent(1);
        assert_eq!(server.buffered_len(), 0);
    }

    #[test]
    fn requests_before_end_of_input_are_answered_then_the_connection_closes() {
        let (mut client, mut server) = pair();
        let t0 = Instant::ZERO;
        client
            .send_request(Command::request(1), t0 + SEC, t0)
            .unwrap();
        flow(&mut client, &mut server, t0);
        let ours = server
            .send_request(Command::request(2), t0 + SEC, t0)
            .unwrap();
        server.handle_eof();
        assert!(!server.wants_read());
        let mut got = events(&mut server);
        assert!(matches!(
            got.pop(),
            Some(Event::Failed { id, error: RequestError { closed: Some(CloseReason::ConnectionLost), written: false }, .. }) if id == ours
        ));
        let Some(Event::Request { request, command }) = got.pop() else {
            panic!()
        };
        assert!(!server.is_closed(), "open until the answer is out");
        assert_eq!(
            server.send_request(Command::request(3), t0 + SEC, t0),
            Err(SendError::Closed),
            "no response could come"
        );
        server.send_response(request, command.response(0)).unwrap();
        assert!(!server.is_closed());
        let n = server.poll_transmit().unwrap().len();
        server.handle_written(n);
        assert_eq!(
            events(&mut server),
            [Event::Closed {
                reason: CloseReason::ConnectionLost
            }]
        );
    }

    #[test]
    fn earliest_deadline_drives_the_timer() {
        let mut client = Connection::new(Config::default());
        let t0 = Instant::ZERO;
        let ids: Vec<_> = [5u32, 2, 9, 2]
            .iter()
            .map(|&s| {
                client
                    .send_request(Command::request(1), t0 + s * SEC, t0)
                    .unwrap()
            })
            .collect();
        assert_eq!(client.poll_timeout(), Some(t0 + 2 * SEC));
        client.handle_timeout(t0 + 2 * SEC);
        let failed: Vec<_> = events(&mut client)
            .into_iter()
            .map(|e| match e {
                Event::Failed { id, .. } => id,
                _ => panic!(),
            })
            .collect();
        assert_eq!(failed.len(), 2);
        assert!(failed.contains(&ids[1]) && failed.contains(&ids[3]));
        assert_eq!(client.poll_timeout(), Some(t0 + 5 * SEC));
        let _ = vec![0u8; 0];
    }
}
