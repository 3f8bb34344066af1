//! The `connection` target: a client and a server [`Connection`] driven by a fuzzer-chosen
//! sequence of operations, each checked against a model of what the machine must do.
//!
//! The input is decoded with [`arbitrary`]: a [`Setup`] (one [`Config`] per side), then up to
//! [`MAX_OPS`] [`Op`]s. Both sides can send requests and oneways and answer what they receive, so
//! each byte stream carries requests and responses interleaved. Bytes a side writes go into a
//! pipe (the transport, in order) and reach the peer only when an op delivers them, in
//! fuzzer-chosen pieces; time moves only when an op says so.
//!
//! The [`Model`] of each side is a reference implementation of the machine's documented
//! behaviour, precise to the byte:
//! - the outgoing stream: every frame queued (requests, oneways, responses, busy answers),
//!   which of them were withdrawn, how much of the front one was written. What
//!   `transmit_chunks` shows (no empty chunk) must be exactly these bytes up to the first
//!   withdrawn frame, `poll_transmit` and `take_transmit` its first chunk, a vectored write may
//!   end anywhere in them, and the refusals of `send_*` must be exactly the predicted ones;
//! - each request's token (its tag) comes back with its one `Response` or `Failed` event;
//! - the incoming stream: a shadow read buffer decoded with a [`Codec`] with the same limits, so
//!   each `handle_input` yields a predicted list of events (also for corrupt or forged input);
//! - the waiters and their deadlines, the peer's unanswered requests, and every [`Stats`] counter.
//!
//! After every op the events of both sides are drained and compared with the prediction, and the
//! queries (`pending_requests`, `pending_incoming`, `poll_timeout`, `poll_transmit`, `stats`,
//! `close_reason`) are compared with the model. See `fuzz/README.md` for the list of invariants.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use remora_core::codes::{SYSTEM_BUSY, SYSTEM_ERROR};
use remora_core::{
    CloseReason, Codec, Command, Config, Connection, Decoded, EncodeError, Encoded, Event,
    IncomingRequest, Instant, Limits, RequestError, RequestId, SendError, SerializeType, Stats,
    DEFAULT_MAX_FRAME_LEN, FLAG_ONEWAY, FLAG_RESPONSE,
};

/// Most operations run for one input.
pub const MAX_OPS: usize = 2000;
/// Most bytes one `Deliver` moves.
pub const MAX_DELIVER: usize = 16 * 1024;
/// Most `handle_input`/`handle_read` calls one `Deliver` makes (pieces grow to stay below).
pub const MAX_READS_PER_OP: usize = 256;
/// How many bytes of `transmit_chunks` are compared with the model after every op (and before
/// every write); beyond them, bytes are compared as they are written or taken, so every byte
/// that leaves a side is checked without rescanning the whole queue after each op.
const CHECK_PREFIX: usize = 256;
/// Most `poll_transmit` rounds one `Flush` makes.
const MAX_FLUSH_ROUNDS: usize = 4096;

/// The remark of the machine's own `SYSTEM_BUSY` answer (core/src/connection.rs, `dispatch`).
/// Mirrored so the busy frame's bytes can be predicted; update both together.
pub const BUSY_REMARK: &str =
    "[REJECTREQUEST]system busy, too many requests in flight on this connection";
/// The remark of the `SYSTEM_ERROR` answer sent when a response cannot be encoded
/// (core/src/connection.rs, `send_response`). Mirrored like [`BUSY_REMARK`].
pub const FALLBACK_REMARK: &str = "response could not be encoded";
/// The remark of the busy answer while `set_overloaded(true)` (core/src/connection.rs,
/// `dispatch`). Mirrored like [`BUSY_REMARK`].
pub const OVERLOADED_REMARK: &str =
    "[REJECTREQUEST]system busy, the server's buffer budget is spent";

// ---------------------------------------------------------------------------------------------
// The input
// ---------------------------------------------------------------------------------------------

/// Which connection.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The connection that dialled.
    Client,
    /// The connection that accepted.
    Server,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

/// A command's own serialize type.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// A JSON header.
    Json,
    /// A ROCKETMQ binary header.
    RocketMq,
}

impl From<Ty> for SerializeType {
    fn from(ty: Ty) -> Self {
        match ty {
            Ty::Json => SerializeType::Json,
            Ty::RocketMq => SerializeType::RocketMq,
        }
    }
}

/// [`Config::serialize_type`].
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    /// Each command keeps its own.
    Keep,
    /// Every command is written with a JSON header.
    Json,
    /// Every command is written with a ROCKETMQ header.
    RocketMq,
}

/// One side's [`Config`], see [`SideConfig::config`] for how each byte is read.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideConfig {
    /// `1 + n % 64`; 254: 2^24 (the largest: 8-bit generations, so ids come back after 255
    /// reuses of a slot); 255: `usize::MAX` (clamped to 2^24 by the machine).
    pub max_waiters: u8,
    /// `n % 17`; 255: 4096 (the default).
    pub max_incoming: u8,
    /// In bytes; `u16::MAX`: 64 MiB (the default).
    pub max_transmit_len: u16,
    /// The serialize type the side writes with.
    pub serialize_type: Override,
    /// Below 0x8000: the default 16 MiB; else `(n & 0xFFF) >> ((n >> 12) & 7)`, 0 to 4095
    /// bytes and mostly small (so encodes and decodes fail).
    pub max_frame_len: u16,
    /// Only honoured when `max_waiters` is at most 64.
    pub preallocate: bool,
}

impl SideConfig {
    /// The configuration this side runs with.
    pub fn config(&self) -> Config {
        let max_waiters = match self.max_waiters {
            255 => usize::MAX,
            254 => 1 << 24,
            n => 1 + usize::from(n) % 64,
        };
        let max_incoming = match self.max_incoming {
            255 => 4096,
            n => usize::from(n) % 17,
        };
        let max_transmit_len = match self.max_transmit_len {
            u16::MAX => 64 << 20,
            n => usize::from(n),
        };
        let max_frame_len = if self.max_frame_len < 0x8000 {
            DEFAULT_MAX_FRAME_LEN
        } else {
            u32::from((self.max_frame_len & 0xFFF) >> ((self.max_frame_len >> 12) & 7))
        };
        Config {
            max_waiters,
            max_incoming,
            max_transmit_len,
            serialize_type: match self.serialize_type {
                Override::Keep => None,
                Override::Json => Some(SerializeType::Json),
                Override::RocketMq => Some(SerializeType::RocketMq),
            },
            limits: Limits {
                max_frame_len,
                ..Limits::default()
            },
            preallocate: self.preallocate && max_waiters <= 64,
        }
    }
}

/// The two configurations.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// The dialling side's.
    pub client: SideConfig,
    /// The accepting side's.
    pub server: SideConfig,
}

/// The application's part of a command: see [`Msg::command`].
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    /// The request code.
    pub code: i16,
    /// The whole `flag` (the machine sets or clears the response and oneway bits).
    pub flag: u8,
    /// Filler bytes after the tag: `n & 0x3F` below 0x8000, else `n & 0xFFF`.
    pub body: u16,
    /// Bits 0-1: no remark / empty remark / remark of `n` bytes / extension field `k` with a
    /// value of `n` bytes, where `n` is bits 2-7.
    pub extra: u8,
    /// The command's own serialize type.
    pub ty: Ty,
}

impl Msg {
    fn filler(&self) -> usize {
        if self.body < 0x8000 {
            usize::from(self.body & 0x3F)
        } else {
            usize::from(self.body & 0xFFF)
        }
    }

    /// A request-shaped command with this message's fields and `body`.
    pub fn command(&self, body: Bytes) -> Command {
        let mut cmd = Command::request(i32::from(self.code))
            .with_body(body)
            .with_serialize_type(self.ty.into());
        cmd.flag = i32::from(self.flag);
        let n = usize::from(self.extra >> 2);
        match self.extra & 3 {
            0 => cmd,
            1 => cmd.with_remark(""),
            2 => cmd.with_remark("r".repeat(n)),
            _ => cmd.with_ext("k", "v".repeat(n)),
        }
    }
}

/// Which opaque a forged frame carries.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaquePick {
    /// The opaque of one of the receiving side's own pending requests (by index, sorted), so a
    /// forged response can complete it; 0 when it has none.
    Pending(u8),
    /// This opaque, whatever it matches.
    Raw(i32),
}

/// Raw bytes: a length byte, then that many bytes (fewer at the end of the input).
#[derive(Clone, PartialEq, Eq)]
pub struct Raw(pub Vec<u8>);

impl<'a> Arbitrary<'a> for Raw {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let n = usize::from(u8::arbitrary(u)?).min(u.len());
        Ok(Raw(u.bytes(n)?.to_vec()))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (1, Some(256))
    }
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Raw({})", crate::hex(&self.0))
    }
}

/// One step of the scenario.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `send_request` with a unique tag at the start of the body; `timeout_us` 0 is a deadline
    /// of now (refused), `u32::MAX` is [`Instant::MAX`].
    Request {
        /// The side that acts.
        side: Side,
        /// The command's fields.
        msg: Msg,
        /// The deadline, in microseconds from now.
        timeout_us: u32,
    },
    /// `send_oneway`, tagged like a request.
    Oneway {
        /// The side that acts.
        side: Side,
        /// The command's fields.
        msg: Msg,
    },
    /// `cancel` of one of the ids this side was handed (pending or not), by index.
    Cancel {
        /// The side that acts.
        side: Side,
        /// Which one, by index (wrapping around the count).
        pick: u16,
    },
    /// `send_response` to one of the requests this side holds, by index. The body is `RESP`, the
    /// request's tag and filler (`FAKE` and filler for a request that came from injected bytes).
    Answer {
        /// The side that acts.
        side: Side,
        /// Which one, by index (wrapping around the count).
        pick: u16,
        /// The command's fields.
        msg: Msg,
    },
    /// `dismiss` of one of the requests this side holds.
    Dismiss {
        /// The side that acts.
        side: Side,
        /// Which one, by index (wrapping around the count).
        pick: u16,
    },
    /// `poll_transmit`, then `handle_written(max)` (which the machine clamps).
    Write {
        /// The side that acts.
        side: Side,
        /// At most this many bytes.
        max: u16,
    },
    /// `take_transmit`.
    Take {
        /// The side that acts.
        side: Side,
    },
    /// `poll_transmit` + `handle_written` until `None`.
    Flush {
        /// The side that acts.
        side: Side,
    },
    /// Up to `max` (at most [`MAX_DELIVER`]) of the bytes `to`'s peer wrote reach `to`, in
    /// pieces of `chunk` bytes (0: one piece; larger when more than [`MAX_READS_PER_OP`] pieces),
    /// through `handle_input` or `read_buffer` + `handle_read`.
    Deliver {
        /// The side that receives.
        to: Side,
        /// At most this many bytes.
        max: u16,
        /// The size of each piece.
        chunk: u8,
        /// Whether through `read_buffer` + `handle_read` rather than `handle_input`.
        read_buffer: bool,
    },
    /// `Flush` of `from`, then everything its peer has not received yet, in one piece.
    Transfer {
        /// The side whose bytes go out.
        from: Side,
    },
    /// Bytes from nowhere into `to`'s `handle_input` (the stream is then "tainted").
    Inject {
        /// The side that receives.
        to: Side,
        /// The bytes.
        bytes: Raw,
    },
    /// A well-formed frame from nowhere into `to`: `msg` with its flag as given, `FORG` body.
    Forge {
        /// The side that receives.
        to: Side,
        /// The opaque the frame carries.
        opaque: OpaquePick,
        /// The command's fields.
        msg: Msg,
    },
    /// Time moves on; both sides get `handle_timeout(now)`.
    Advance {
        /// How far, in microseconds.
        micros: u32,
    },
    /// Time moves to `side`'s `poll_timeout` (if later than now and not [`Instant::MAX`]), as a
    /// driver's timer fires; both sides get `handle_timeout(now)`.
    Timer {
        /// The side that acts.
        side: Side,
    },
    /// `close`.
    Close {
        /// The side that acts.
        side: Side,
    },
    /// `handle_disconnect`.
    Disconnect {
        /// The side that acts.
        side: Side,
    },
    /// A request encoded once ([`Encoded::request`], the command's own type and the side's
    /// limits), then `send_encoded_request_with` (or `send_encoded_request`, whose token is the
    /// default, when `default_token`); tagged like a `Request`.
    EncodedRequest {
        /// The side that acts.
        side: Side,
        /// The command's fields.
        msg: Msg,
        /// The deadline, as for `Request`.
        timeout_us: u32,
        /// Use `send_encoded_request` (token `[0; 16]`) rather than `..._with` (token = tag).
        default_token: bool,
    },
    /// `handle_sent(max)`: bytes given out by `take_transmit` finished sending.
    Sent {
        /// The side that acts.
        side: Side,
        /// How many bytes it reports.
        max: u16,
    },
    /// `handle_eof`: the side's peer finished sending.
    Eof {
        /// The side that acts.
        side: Side,
    },
    /// `set_overloaded(on)`.
    Overload {
        /// The side that acts.
        side: Side,
        /// Whether new requests are answered busy.
        on: bool,
    },
    /// `handle_handshake_failure`.
    HandshakeFailure {
        /// The side that acts.
        side: Side,
    },
}

impl Op {
    /// Which sides (client, server) the op calls into: those whose events and queries are
    /// checked after it.
    pub fn sides(&self) -> [bool; 2] {
        let one = |side: Side| {
            let mut s = [false; 2];
            s[side.index()] = true;
            s
        };
        match *self {
            Op::Request { side, .. }
            | Op::Oneway { side, .. }
            | Op::Cancel { side, .. }
            | Op::Answer { side, .. }
            | Op::Dismiss { side, .. }
            | Op::Write { side, .. }
            | Op::Take { side }
            | Op::Flush { side }
            | Op::Close { side }
            | Op::Disconnect { side }
            | Op::EncodedRequest { side, .. }
            | Op::Sent { side, .. }
            | Op::Eof { side }
            | Op::Overload { side, .. }
            | Op::HandshakeFailure { side } => one(side),
            Op::Deliver { to, .. } | Op::Inject { to, .. } | Op::Forge { to, .. } => one(to),
            Op::Transfer { .. } | Op::Advance { .. } | Op::Timer { .. } => [true, true],
        }
    }
}

/// Decodes an input into its setup and operations (at most [`MAX_OPS`]).
pub fn parse_connection(data: &[u8]) -> Option<(Setup, Vec<Op>)> {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u).ok()?;
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    Some((setup, ops))
}

/// The `connection` target: decodes `data` with [`parse_connection`] and runs it.
///
/// With `REMORA_FUZZ_TRACE` set, prints the setup and each op before running it.
pub fn run_connection(data: &[u8]) {
    let Some((setup, ops)) = parse_connection(data) else {
        return;
    };
    run_ops(&setup, &ops);
}

fn trace_enabled() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("REMORA_FUZZ_TRACE").is_some())
}

/// Finding 3 is fixed in core, so its tolerance is off: the machine's answer to an oversized
/// response (or busy answer) must match the model exactly. `REMORA_FUZZ_TOLERATE_FINDING_3`
/// turns the old tolerance back on, to bisect.
fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("REMORA_FUZZ_TOLERATE_FINDING_3").is_none())
}

/// Runs `ops` on a fresh pair configured by `setup`, checking every step; then closes both
/// sides and checks that every request ended exactly once.
pub fn run_ops(setup: &Setup, ops: &[Op]) {
    let trace = trace_enabled();
    if trace {
        eprintln!("setup: {setup:?}");
        eprintln!(
            "  client {:?}\n  server {:?}",
            setup.client.config(),
            setup.server.config()
        );
    }
    let mut h = Harness::new(setup);
    for (i, op) in ops.iter().enumerate() {
        if trace {
            eprintln!("op {i} at {:?}: {op:?}", h.now);
        }
        h.apply(op);
        h.check(op.sides());
    }
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------------------------

/// The first 16 bytes of every request and oneway body: `RMTG`, side, kind, 0, 0, serial (LE).
pub type Tag = [u8; 16];
const TAG_MAGIC: &[u8; 4] = b"RMTG";
const RESP_MAGIC: &[u8; 4] = b"RESP";
const FAKE_MAGIC: &[u8; 4] = b"FAKE";
const FORGE_MAGIC: &[u8; 4] = b"FORG";

fn make_tag(side: Side, kind: u8, serial: u64) -> Tag {
    let mut t = [0u8; 16];
    t[..4].copy_from_slice(TAG_MAGIC);
    t[4] = side.index() as u8;
    t[5] = kind;
    t[8..].copy_from_slice(&serial.to_le_bytes());
    t
}

fn tag_of(body: &[u8]) -> Option<Tag> {
    (body.len() >= 16 && body.starts_with(TAG_MAGIC)).then(|| body[..16].try_into().unwrap())
}

fn with_filler(prefix: &[&[u8]], filler: usize) -> Bytes {
    let mut v: Vec<u8> = prefix.concat();
    v.resize(v.len() + filler, b'.');
    Bytes::from(v)
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Pending {
    id: RequestId,
    serial: u64,
    tag: Tag,
    /// The token the machine must hand back: the tag, or the default for
    /// `send_encoded_request`.
    token: Tag,
    deadline: Instant,
    /// Sequence number of its frame in the outgoing stream.
    frame: u64,
}

/// A frame in the outgoing stream.
#[derive(Clone, Debug)]
struct OutFrame {
    bytes: Bytes,
    /// The request's serial, for a request frame.
    serial: Option<u64>,
    /// Its request ended before the frame's first byte was written: it is skipped.
    withdrawn: bool,
}

/// A request of ours ending without a response.
#[derive(Clone, Debug)]
struct Ending {
    id: RequestId,
    error: RequestError,
    deadline: Instant,
    tag: Tag,
    token: Tag,
}

/// An event the machine must emit.
#[derive(Debug)]
enum Exp {
    Response {
        id: RequestId,
        cmd: Command,
        /// The token the request was sent with.
        token: Tag,
    },
    /// `Failed` events for these requests, in any order (a timeout group, or the failures of a
    /// close).
    Failed(Vec<Ending>),
    Request {
        cmd: Command,
        /// Its frame's length (what `pending_incoming_len` counts while it is held).
        len: usize,
    },
    Oneway {
        cmd: Command,
    },
    Closed {
        reason: CloseReason,
    },
}

/// What one side's machine must be doing.
#[derive(Debug)]
struct Model {
    name: &'static str,
    side: Side,
    /// The configuration with `max_waiters` clamped as the machine clamps it.
    config: Config,
    slot_bits: u32,
    codec: Codec,
    /// The `SYSTEM_ERROR` fallback does not fit `max_frame_len` for some opaque and type, so
    /// finding 3 is reachable.
    fallback_may_fail: bool,
    closed: Option<CloseReason>,
    /// The `Closed` event was seen.
    closed_seen: bool,

    /// Our requests awaiting a response, by opaque.
    pending: BTreeMap<i32, Pending>,
    /// Their deadlines.
    deadlines: BTreeSet<(Instant, i32)>,
    /// Their slots ([`RequestId::index`]).
    slots: BTreeSet<usize>,
    /// Tags of every request each id was handed out for (an id comes back after its slot's
    /// generation wraps, possible with 8-bit generations).
    issued: HashSet<(RequestId, Tag)>,
    /// Every id handed out, in order (for `Cancel`).
    ids: Vec<RequestId>,
    next_serial: u64,
    started: u64,
    /// `ended[serial]`: that request has ended.
    ended: Vec<bool>,
    ended_count: u64,

    out: VecDeque<OutFrame>,
    /// Sequence number of `out[0]`.
    out_base: u64,
    out_total: usize,
    out_withdrawn: usize,
    /// Bytes of `out[0]` already written.
    head_written: usize,
    oneway_counter: u32,

    read_buf: BytesMut,
    /// Requests from the peer delivered and not yet answered or dismissed.
    incoming: usize,
    /// Their frame bytes (`pending_incoming_len`).
    incoming_len: usize,
    /// Bytes given out by `take_transmit` and not yet reported with `handle_sent`.
    taken: usize,
    /// `handle_eof` was called: no more input, no new requests, closes once all is answered and
    /// written.
    eof: bool,
    /// `set_overloaded(true)`: every new request is answered busy.
    overloaded: bool,
    stats: Stats,
    expected: Vec<Exp>,
    responses_seen: u64,

    /// Bytes from the fuzzer (not from the peer) were fed to this side.
    tainted: bool,
    /// ... or to the peer (so what the peer answers is not all ours).
    peer_tainted: bool,
    /// The tolerance of finding 3 fired: input to this side is discarded from then on.
    wedged: bool,
    /// Tags of the peer's requests and oneways this side received while untainted.
    seen: HashSet<Tag>,
    /// Tags of our requests that ended saying they were never written (or were withdrawn).
    unwritten: HashSet<Tag>,
    /// Bodies this side answered the peer's (genuine) requests with, by request tag.
    answered: HashMap<Tag, Bytes>,
}

impl Model {
    fn new(name: &'static str, side: Side, mut config: Config) -> Self {
        config.max_waiters = config.max_waiters.clamp(1, 1 << 24);
        let slot_bits = usize::BITS - (config.max_waiters - 1).leading_zeros();
        let codec = Codec::new(config.limits);
        let fallback_may_fail = [SerializeType::Json, SerializeType::RocketMq]
            .iter()
            .any(|&ty| codec.encoded_len(&Self::fallback(i32::MIN), ty).is_err());
        Model {
            name,
            side,
            codec,
            fallback_may_fail,
            config,
            slot_bits,
            closed: None,
            closed_seen: false,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            slots: BTreeSet::new(),
            issued: HashSet::new(),
            ids: Vec::new(),
            next_serial: 0,
            started: 0,
            ended: Vec::new(),
            ended_count: 0,
            out: VecDeque::new(),
            out_base: 0,
            out_total: 0,
            out_withdrawn: 0,
            head_written: 0,
            oneway_counter: 0,
            read_buf: BytesMut::new(),
            incoming: 0,
            incoming_len: 0,
            taken: 0,
            eof: false,
            overloaded: false,
            stats: Stats::default(),
            expected: Vec::new(),
            responses_seen: 0,
            tainted: false,
            peer_tainted: false,
            wedged: false,
            seen: HashSet::new(),
            unwritten: HashSet::new(),
            answered: HashMap::new(),
        }
    }

    fn slot_mask(&self) -> u32 {
        (1u32 << self.slot_bits) - 1
    }

    fn ty(&self, own: SerializeType) -> SerializeType {
        self.config.serialize_type.unwrap_or(own)
    }

    // ---- the outgoing stream ----

    /// Bytes queued and not yet written, withdrawn frames included (the machine's transmit
    /// buffer).
    fn transmit_len(&self) -> usize {
        self.out_total - self.head_written
    }

    /// Bytes `poll_transmit` must show: up to the first withdrawn frame.
    fn writable(&self) -> usize {
        if self.out_withdrawn == 0 {
            return self.transmit_len();
        }
        let upto: usize = self
            .out
            .iter()
            .take_while(|f| !f.withdrawn)
            .map(|f| f.bytes.len())
            .sum();
        upto - self.head_written
    }

    /// Queues a frame; returns its sequence number.
    fn push_frame(&mut self, bytes: Bytes, serial: Option<u64>) -> u64 {
        self.out_total += bytes.len();
        self.out.push_back(OutFrame {
            bytes,
            serial,
            withdrawn: false,
        });
        self.out_base + self.out.len() as u64 - 1
    }

    fn pop_frame(&mut self) -> OutFrame {
        let f = self.out.pop_front().expect("model: pop of an empty stream");
        self.out_total -= f.bytes.len();
        self.out_base += 1;
        f
    }

    /// Drops withdrawn frames that reached the front.
    fn skip_withdrawn(&mut self) {
        while self.out.front().is_some_and(|f| f.withdrawn) {
            assert_eq!(self.head_written, 0, "model: a begun frame was withdrawn");
            self.pop_frame();
            self.out_withdrawn -= 1;
        }
    }

    /// `n` bytes (at most `writable()`) were handed to the transport.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let f = self.out.front().expect("model: consumed beyond the stream");
            assert!(!f.withdrawn, "model: consumed a withdrawn frame");
            let len = f.bytes.len();
            let k = (len - self.head_written).min(n);
            self.head_written += k;
            n -= k;
            if self.head_written == len {
                self.pop_frame();
                self.head_written = 0;
                self.skip_withdrawn();
            }
        }
    }

    /// Asserts that `got` is the next `got.len()` bytes of the stream.
    fn check_bytes(&self, got: &[u8], what: &str) {
        let mut at = 0;
        let mut skip = self.head_written;
        for (i, f) in self.out.iter().enumerate() {
            if at == got.len() {
                break;
            }
            assert!(
                !f.withdrawn,
                "{} {what}: bytes of a withdrawn frame (frame {i} of the queue) were handed out",
                self.name
            );
            let part = &f.bytes[skip..];
            skip = 0;
            let k = part.len().min(got.len() - at);
            if got[at..at + k] != part[..k] {
                panic!(
                    "{} {what}: bytes {at}..{} differ from frame {i} of the queue\n  got      {}\n  expected {}",
                    self.name,
                    at + k,
                    crate::hex(&got[at..at + k]),
                    crate::hex(&part[..k])
                );
            }
            at += k;
        }
        assert_eq!(
            at,
            got.len(),
            "{} {what}: more bytes than queued",
            self.name
        );
    }

    /// Whether request `serial` (frame `frame`) may reach the peer, as the machine decides when
    /// the request ends; a request not begun is withdrawn unless `closing`.
    fn written(&mut self, serial: u64, frame: u64, closing: bool) -> bool {
        if frame < self.out_base {
            return true; // fully written
        }
        let at = (frame - self.out_base) as usize;
        assert_eq!(self.out[at].serial, Some(serial), "model: frame index");
        if closing {
            return false; // not (fully) written, and the rest is discarded
        }
        if at == 0 && self.head_written > 0 {
            return true; // begun: it will be finished
        }
        let f = &mut self.out[at];
        assert!(!f.withdrawn, "model: withdrawn twice");
        f.withdrawn = true;
        self.out_withdrawn += 1;
        self.skip_withdrawn();
        false
    }

    // ---- requests of ours ----

    /// Ends a pending request; returns its record and whether it may reach the peer.
    fn end(&mut self, id: RequestId, closing: bool) -> (Pending, bool) {
        let p = self
            .pending
            .remove(&id.opaque())
            .unwrap_or_else(|| panic!("model: {id:?} is not pending"));
        assert_eq!(p.id, id);
        assert!(self.deadlines.remove(&(p.deadline, id.opaque())));
        assert!(self
            .slots
            .remove(&((id.opaque() as u32 & self.slot_mask()) as usize)));
        let serial = p.serial as usize;
        if self.ended.len() <= serial {
            self.ended.resize(serial + 1, false);
        }
        let ended = &mut self.ended[serial];
        assert!(!*ended, "model: request {} ended twice", p.serial);
        *ended = true;
        self.ended_count += 1;
        let written = self.written(p.serial, p.frame, closing);
        (p, written)
    }

    fn is_pending(&self, id: RequestId) -> bool {
        self.pending.get(&id.opaque()).is_some_and(|p| p.id == id)
    }

    fn pending_ids(&self) -> Vec<RequestId> {
        self.pending.values().map(|p| p.id).collect()
    }

    /// `check_can_send`.
    fn can_send(&self) -> Result<(), SendError> {
        if self.closed.is_some() || self.eof {
            return Err(SendError::Closed);
        }
        let queued = self.transmit_len();
        if queued > 0 && queued >= self.config.max_transmit_len {
            return Err(SendError::TransmitFull { pending: queued });
        }
        Ok(())
    }

    // ---- state changes the machine makes on its own ----

    fn shut(&mut self, reason: CloseReason) {
        self.shut_with(reason, true);
    }

    /// Closes for `reason`; `may_have_delivered` false (a failed handshake) reports every
    /// request as never written.
    fn shut_with(&mut self, reason: CloseReason, may_have_delivered: bool) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        let mut endings = Vec::new();
        for id in self.pending_ids() {
            let (p, written) = self.end(id, true);
            endings.push(Ending {
                id,
                error: RequestError {
                    closed: Some(reason),
                    written: written && may_have_delivered,
                },
                deadline: p.deadline,
                tag: p.tag,
                token: p.token,
            });
        }
        self.out_base += self.out.len() as u64;
        self.out.clear();
        self.out_total = 0;
        self.out_withdrawn = 0;
        self.head_written = 0;
        self.taken = 0;
        self.read_buf.clear();
        if !endings.is_empty() {
            self.expected.push(Exp::Failed(endings));
        }
        self.expected.push(Exp::Closed { reason });
    }

    fn timeout(&mut self, now: Instant) {
        let due: Vec<RequestId> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, opaque)| self.pending[opaque].id)
            .collect();
        if due.is_empty() {
            return;
        }
        let mut endings = Vec::new();
        for id in due {
            let (p, written) = self.end(id, false);
            self.stats.timeouts += 1;
            endings.push(Ending {
                id,
                error: RequestError {
                    closed: None,
                    written,
                },
                deadline: p.deadline,
                tag: p.tag,
                token: p.token,
            });
        }
        self.expected.push(Exp::Failed(endings));
    }

    /// `handle_eof`: every pending request fails (a begun frame is finished, one not begun is
    /// withdrawn), input stops, and the side closes once everything is answered and written.
    fn eof(&mut self) {
        if self.closed.is_some() || self.eof {
            return;
        }
        self.eof = true;
        self.read_buf.clear();
        let mut endings = Vec::new();
        for id in self.pending_ids() {
            let (p, written) = self.end(id, false);
            endings.push(Ending {
                id,
                error: RequestError {
                    closed: Some(CloseReason::ConnectionLost),
                    written,
                },
                deadline: p.deadline,
                tag: p.tag,
                token: p.token,
            });
        }
        if !endings.is_empty() {
            self.expected.push(Exp::Failed(endings));
        }
        self.close_if_finished();
    }

    /// Bytes owed to the peer not yet reported written (`unsent_len`).
    fn unsent_len(&self) -> usize {
        self.transmit_len() + self.taken
    }

    /// After end of input: closes once nothing the peer asked for is left to answer or write.
    fn close_if_finished(&mut self) {
        if self.eof && self.incoming == 0 && self.unsent_len() == 0 {
            self.shut(CloseReason::ConnectionLost);
        }
    }

    /// `handle_input(data)` (and `read_buffer` + `handle_read`, which behave the same).
    fn input(&mut self, data: &[u8]) {
        if self.closed.is_some() || self.eof {
            return;
        }
        self.read_buf.extend_from_slice(data);
        self.stats.bytes_in += data.len() as u64;
        loop {
            let before = self.read_buf.len();
            match self.codec.decode(&mut self.read_buf) {
                Ok(Decoded::Command(cmd)) => {
                    let len = before - self.read_buf.len();
                    if let Err(reason) = self.dispatch(cmd, len) {
                        self.shut(reason);
                        return;
                    }
                }
                Ok(Decoded::Incomplete { .. }) => return,
                Err(e) => {
                    self.shut(CloseReason::Corrupt(e));
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, cmd: Command, len: usize) -> Result<(), CloseReason> {
        if cmd.is_response() {
            if cmd.is_oneway() {
                return Err(CloseReason::OnewayResponse { opaque: cmd.opaque });
            }
            // Generation 0 is only ever carried by our oneways.
            assert!(
                self.tainted || self.peer_tainted || (cmd.opaque as u32) >> self.slot_bits != 0,
                "{}: the peer answered a oneway (opaque {})",
                self.name,
                cmd.opaque
            );
            match self.pending.get(&cmd.opaque).map(|p| (p.id, p.token)) {
                Some((id, token)) => {
                    self.end(id, false);
                    self.stats.responses_matched += 1;
                    self.expected.push(Exp::Response { id, cmd, token });
                }
                None => self.stats.stale_responses += 1,
            }
        } else if cmd.is_oneway() {
            self.stats.oneways_received += 1;
            self.expected.push(Exp::Oneway { cmd });
        } else if self.incoming >= self.config.max_incoming || self.overloaded {
            self.stats.busy_rejections += 1;
            let busy = cmd.response(SYSTEM_BUSY).with_remark(self.busy_remark());
            let _ = self.respond(cmd.opaque, busy);
        } else {
            self.incoming += 1;
            self.incoming_len += len;
            self.stats.requests_received += 1;
            self.expected.push(Exp::Request { cmd, len });
        }
        Ok(())
    }

    /// The remark of the machine's busy answer.
    fn busy_remark(&self) -> &'static str {
        if self.overloaded {
            OVERLOADED_REMARK
        } else {
            BUSY_REMARK
        }
    }

    /// The `SYSTEM_ERROR` answer sent instead of a response that cannot be encoded.
    fn fallback(opaque: i32) -> Command {
        let mut fallback = Command::request(SYSTEM_ERROR)
            .with_remark(FALLBACK_REMARK)
            .with_opaque(opaque);
        fallback.flag = FLAG_RESPONSE;
        fallback
    }

    /// `response` as `send_response` puts it on the wire, and the type it is encoded as.
    fn response_frame(&self, opaque: i32, mut response: Command) -> (Command, SerializeType) {
        response.opaque = opaque;
        response.flag = (response.flag | FLAG_RESPONSE) & !FLAG_ONEWAY;
        let ty = self.ty(response.serialize_type);
        (response, ty)
    }

    /// Finding 3: `send_response` panics ("a bare response always encodes") when neither the
    /// response nor the `SYSTEM_ERROR` fallback fits `max_frame_len`.
    fn response_would_panic(&self, opaque: i32, response: &Command) -> bool {
        let (response, ty) = self.response_frame(opaque, response.clone());
        self.codec.encoded_len(&response, ty).is_err()
            && self.codec.encoded_len(&Self::fallback(opaque), ty).is_err()
    }

    /// Whether feeding `data` would make the machine answer a request busy with an answer that
    /// hits finding 3 (a dry run of `input` on a copy of the read buffer).
    fn input_would_panic(&self, data: &[u8]) -> bool {
        if self.closed.is_some() || !self.fallback_may_fail {
            return false;
        }
        let mut buf = self.read_buf.clone();
        buf.extend_from_slice(data);
        let mut incoming = self.incoming;
        loop {
            match self.codec.decode(&mut buf) {
                Ok(Decoded::Command(cmd)) => {
                    if cmd.is_response() {
                        if cmd.is_oneway() {
                            return false;
                        }
                    } else if cmd.is_oneway() {
                    } else if incoming >= self.config.max_incoming || self.overloaded {
                        let busy = cmd.response(SYSTEM_BUSY).with_remark(self.busy_remark());
                        if self.response_would_panic(cmd.opaque, &busy) {
                            return true;
                        }
                    } else {
                        incoming += 1;
                    }
                }
                _ => return false,
            }
        }
    }

    /// `send_response` after its closed check: queues the response or the fallback.
    fn respond(&mut self, opaque: i32, response: Command) -> Result<(), SendError> {
        let (response, ty) = self.response_frame(opaque, response);
        let mut buf = BytesMut::new();
        match self.codec.encode_as(&response, ty, &mut buf) {
            Ok(()) => {
                self.push_frame(buf.freeze(), None);
                self.stats.responses_sent += 1;
                Ok(())
            }
            Err(e) => {
                // Counted whether or not the fallback itself fits.
                self.stats.fallback_answers += 1;
                let mut buf = BytesMut::new();
                if self
                    .codec
                    .encode_as(&Self::fallback(opaque), ty, &mut buf)
                    .is_err()
                {
                    // Finding 3: the machine panics here. Only reached with REMORA_FUZZ_STRICT,
                    // otherwise the callers steer around it.
                    return Err(SendError::Encode(e));
                }
                self.push_frame(buf.freeze(), None);
                self.stats.responses_sent += 1;
                Err(SendError::Encode(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// A request from the peer this side holds.
struct Held {
    request: IncomingRequest,
    /// Its frame's length.
    len: usize,
    /// The request's tag, when it came untainted from the peer.
    tag: Option<Tag>,
}

/// One connection with its model, the requests its application holds, and the bytes it wrote
/// that its peer has not received yet.
struct End {
    /// Each request's token is its tag: the machine must hand it back with its one ending.
    conn: Connection<Tag>,
    m: Model,
    held: Vec<Held>,
    pipe: BytesMut,
    /// How often the tolerance of finding 3 fired on this side.
    tolerated: u64,
}

struct Harness {
    now: Instant,
    ends: [End; 2],
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let end = |name, side, cfg: &SideConfig| {
            let config = cfg.config();
            End {
                conn: Connection::with_tokens(config),
                m: Model::new(name, side, config),
                held: Vec::new(),
                pipe: BytesMut::new(),
                tolerated: 0,
            }
        };
        let h = Harness {
            now: Instant::ZERO,
            ends: [
                end("client", Side::Client, &setup.client),
                end("server", Side::Server, &setup.server),
            ],
        };
        for e in &h.ends {
            assert_eq!(e.conn.config(), &e.m.config, "the machine's config");
        }
        h
    }

    /// `side`'s end and its peer's.
    fn pair(&mut self, side: Side) -> (&mut End, &mut End) {
        let [c, s] = &mut self.ends;
        match side {
            Side::Client => (c, s),
            Side::Server => (s, c),
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Request {
                side,
                msg,
                timeout_us,
            } => self.request(side, &msg, timeout_us),
            Op::Oneway { side, msg } => self.oneway(side, &msg),
            Op::Cancel { side, pick } => {
                let (me, peer) = self.pair(side);
                if me.m.ids.is_empty() {
                    return;
                }
                let id = me.m.ids[usize::from(pick) % me.m.ids.len()];
                let expected = me.m.is_pending(id);
                assert_eq!(
                    me.conn.cancel(id),
                    expected,
                    "{}: cancel({id:?}) must say whether it was pending",
                    me.m.name
                );
                if expected {
                    let (p, written) = me.m.end(id, false);
                    if !written {
                        unwritten(me, peer, p.tag);
                    }
                }
            }
            Op::Answer { side, pick, msg } => {
                let (me, _) = self.pair(side);
                if me.held.is_empty() {
                    return;
                }
                let held = me.held.swap_remove(usize::from(pick) % me.held.len());
                let body = match &held.tag {
                    Some(tag) => with_filler(&[RESP_MAGIC, tag], msg.filler()),
                    None => with_filler(&[FAKE_MAGIC], msg.filler()),
                };
                let response = msg.command(body.clone());
                let opaque = held.request.opaque();
                me.m.incoming -= 1;
                me.m.incoming_len -= held.len;
                if !strict()
                    && me.m.closed.is_none()
                    && me.m.response_would_panic(opaque, &response)
                {
                    // Finding 3, tolerated: dismiss instead of hitting the panic.
                    me.tolerated += 1;
                    me.conn.dismiss(held.request);
                    me.m.close_if_finished();
                    return;
                }
                let expected = match me.m.closed {
                    Some(_) => Err(SendError::Closed),
                    None => {
                        let r = me.m.respond(opaque, response.clone());
                        me.m.close_if_finished();
                        r
                    }
                };
                let got = me.conn.send_response(held.request, response);
                assert_eq!(got, expected, "{}: send_response", me.m.name);
                if let (Ok(()), Some(tag)) = (got, held.tag) {
                    me.m.answered.insert(tag, body);
                }
            }
            Op::Dismiss { side, pick } => {
                let (me, _) = self.pair(side);
                if me.held.is_empty() {
                    return;
                }
                let held = me.held.swap_remove(usize::from(pick) % me.held.len());
                me.conn.dismiss(held.request);
                me.m.incoming -= 1;
                me.m.incoming_len -= held.len;
                me.m.close_if_finished();
            }
            Op::Write { side, max } => {
                let (me, _) = self.pair(side);
                write(me, usize::from(max));
            }
            Op::Take { side } => {
                let (me, _) = self.pair(side);
                let w = me.m.writable();
                let first = check_chunks(me);
                match me.conn.take_transmit() {
                    None => assert_eq!(w, 0, "{}: take_transmit gave nothing", me.m.name),
                    Some(bytes) => {
                        // The next chunk: what poll_transmit showed.
                        let n = bytes.len();
                        assert_eq!(n, first, "{}: take_transmit length", me.m.name);
                        assert!(n > 0, "{}: take_transmit gave an empty buffer", me.m.name);
                        me.m.check_bytes(&bytes, "take_transmit");
                        me.pipe.extend_from_slice(&bytes);
                        me.m.consume(n);
                        me.m.stats.bytes_out += n as u64;
                        // Taken bytes stay unsent until `handle_sent`.
                        me.m.taken += n;
                        me.m.close_if_finished();
                    }
                }
            }
            Op::Flush { side } => {
                let (me, _) = self.pair(side);
                flush(me);
            }
            Op::Deliver {
                to,
                max,
                chunk,
                read_buffer,
            } => {
                let (me, peer) = self.pair(to);
                let n = usize::from(max).min(MAX_DELIVER).min(peer.pipe.len());
                let data = peer.pipe.split_to(n).freeze();
                let mut piece = if chunk == 0 {
                    n.max(1)
                } else {
                    usize::from(chunk)
                };
                piece = piece.max(n.div_ceil(MAX_READS_PER_OP));
                for part in data.chunks(piece) {
                    feed(me, part, read_buffer, now);
                }
            }
            Op::Transfer { from } => {
                let (me, peer) = self.pair(from);
                flush(me);
                let data = me.pipe.split().freeze();
                if !data.is_empty() {
                    feed(peer, &data, false, now);
                }
            }
            Op::Inject { to, ref bytes } => {
                let (me, peer) = self.pair(to);
                me.m.tainted = true;
                peer.m.peer_tainted = true;
                feed(me, &bytes.0, false, now);
            }
            Op::Forge { to, opaque, msg } => {
                let (me, peer) = self.pair(to);
                let opaque = match opaque {
                    OpaquePick::Raw(x) => x,
                    OpaquePick::Pending(i) => {
                        me.m.pending
                            .keys()
                            .nth(usize::from(i) % me.m.pending.len().max(1))
                            .map_or(0, |opaque| *opaque)
                    }
                };
                let mut cmd = msg.command(with_filler(&[FORGE_MAGIC], msg.filler()));
                cmd.opaque = opaque;
                let mut wire = BytesMut::new();
                if Codec::default().encode(&cmd, &mut wire).is_err() {
                    return;
                }
                me.m.tainted = true;
                peer.m.peer_tainted = true;
                feed(me, &wire, false, now);
            }
            Op::Advance { micros } => self.advance(now + Duration::from_micros(u64::from(micros))),
            Op::Timer { side } => {
                let (me, _) = self.pair(side);
                match me.conn.poll_timeout() {
                    Some(at) if at > now && at < Instant::MAX => self.advance(at),
                    _ => self.advance(now),
                }
            }
            Op::Close { side } => {
                let (me, _) = self.pair(side);
                me.m.shut(CloseReason::Local);
                me.conn.close();
            }
            Op::Disconnect { side } => {
                let (me, _) = self.pair(side);
                me.m.shut(CloseReason::ConnectionLost);
                me.conn.handle_disconnect();
            }
            Op::EncodedRequest {
                side,
                msg,
                timeout_us,
                default_token,
            } => self.encoded_request(side, &msg, timeout_us, default_token),
            Op::Sent { side, max } => {
                let (me, _) = self.pair(side);
                let n = usize::from(max);
                me.m.taken = me.m.taken.saturating_sub(n);
                me.m.close_if_finished();
                me.conn.handle_sent(n);
            }
            Op::Eof { side } => {
                let (me, _) = self.pair(side);
                me.m.eof();
                me.conn.handle_eof();
            }
            Op::Overload { side, on } => {
                let (me, _) = self.pair(side);
                me.m.overloaded = on;
                me.conn.set_overloaded(on);
            }
            Op::HandshakeFailure { side } => {
                let (me, _) = self.pair(side);
                me.m.shut_with(CloseReason::HandshakeFailed, false);
                me.conn.handle_handshake_failure();
            }
        }
    }

    /// The clock reaches `at`; both sides get `handle_timeout(at)`.
    fn advance(&mut self, at: Instant) {
        self.now = at;
        for e in &mut self.ends {
            e.m.timeout(at);
            e.conn.handle_timeout(at);
            if let Some(next) = e.conn.poll_timeout() {
                assert!(
                    next > at,
                    "{}: after handle_timeout({at:?}) a deadline {next:?} is still armed",
                    e.m.name
                );
            }
        }
    }

    fn request(&mut self, side: Side, msg: &Msg, timeout_us: u32) {
        self.send(side, msg, timeout_us, None);
    }

    /// A request encoded once with [`Encoded::request`] (its own type, the side's limits) and
    /// queued with `send_encoded_request_with`, or `send_encoded_request` (default token).
    fn encoded_request(&mut self, side: Side, msg: &Msg, timeout_us: u32, default_token: bool) {
        self.send(side, msg, timeout_us, Some(default_token));
    }

    /// `send_request_with` (`encoded: None`) or `send_encoded_request(_with)` (`Some(default
    /// token)`), checked against the model.
    fn send(&mut self, side: Side, msg: &Msg, timeout_us: u32, encoded: Option<bool>) {
        let now = self.now;
        let (me, _) = self.pair(side);
        let serial = me.m.next_serial;
        me.m.next_serial += 1;
        let tag = make_tag(side, b'q', serial);
        let cmd = msg.command(with_filler(&[&tag], msg.filler()));
        let deadline = match timeout_us {
            u32::MAX => Instant::MAX,
            t => now + Duration::from_micros(u64::from(t)),
        };
        let name = me.m.name;
        // An encoded request: encoded once with the side's limits, as a driver would; one that
        // does not fit them is never handed to the machine.
        let mut prepared = None;
        if encoded.is_some() {
            let mut c = cmd.clone();
            match Encoded::request(&me.m.codec, &mut c, cmd.serialize_type) {
                Ok(e) => prepared = Some(e),
                Err(_) => {
                    assert!(
                        me.m.codec
                            .encoded_len(&cmd.clone().with_opaque(i32::MIN), cmd.serialize_type)
                            .is_err(),
                        "{name}: Encoded::request refused an encodable command"
                    );
                    return;
                }
            }
        }
        let pre = me.m.can_send().and_then(|()| {
            if deadline <= now {
                Err(SendError::DeadlinePassed)
            } else if me.m.pending.len() >= me.m.config.max_waiters {
                Err(SendError::TooManyWaiters {
                    max: me.m.config.max_waiters,
                })
            } else {
                Ok(())
            }
        });
        let token = match encoded {
            Some(true) => Tag::default(),
            _ => tag,
        };
        let got = match (&prepared, encoded) {
            (Some(e), Some(true)) => me.conn.send_encoded_request(e, deadline, now),
            (Some(e), _) => me.conn.send_encoded_request_with(e, deadline, now, tag),
            _ => me.conn.send_request_with(cmd.clone(), deadline, now, tag),
        };
        match (pre, got) {
            (Err(e), got) => assert_eq!(got, Err(e), "{name}: send_request"),
            (Ok(()), Ok(id)) => {
                // The id: a fresh (slot, generation), slot below max_waiters, generation not 0.
                assert!(
                    !me.m.pending.contains_key(&id.opaque()),
                    "{name}: {id:?} handed out while pending"
                );
                let index = id.index(&me.conn);
                assert!(index < me.m.config.max_waiters, "{name}: index {index}");
                assert_eq!(id.opaque() as u32 & me.m.slot_mask(), index as u32);
                assert_ne!(
                    id.opaque() as u32 >> me.m.slot_bits,
                    0,
                    "{name}: a request got generation 0, reserved for oneways"
                );
                assert!(me.m.slots.insert(index), "{name}: index {index} reused");
                let mut wire = cmd;
                wire.opaque = id.opaque();
                wire.flag &= !(FLAG_RESPONSE | FLAG_ONEWAY);
                let bytes = if encoded.is_some() {
                    // Sent as encoded: its own type, whatever the side's override.
                    encoded_frame(&me.m.codec, &wire)
                } else {
                    let ty = me.m.ty(wire.serialize_type);
                    let mut buf = BytesMut::new();
                    me.m.codec
                        .encode_as(&wire, ty, &mut buf)
                        .unwrap_or_else(|e| {
                            panic!(
                            "{name}: send_request accepted a command that does not encode: {e:?}"
                        )
                        });
                    buf.freeze()
                };
                let frame = me.m.push_frame(bytes, Some(serial));
                me.m.pending.insert(
                    id.opaque(),
                    Pending {
                        id,
                        serial,
                        tag,
                        token,
                        deadline,
                        frame,
                    },
                );
                me.m.deadlines.insert((deadline, id.opaque()));
                me.m.issued.insert((id, tag));
                me.m.ids.push(id);
                me.m.started += 1;
                me.m.stats.requests_sent += 1;
            }
            (Ok(()), Err(SendError::Encode(e))) if encoded.is_none() => {
                // The opaque the machine chose is unknown, so check the error's kind, and that
                // the command does not encode with the longest opaque either.
                let ty = me.m.ty(cmd.serialize_type);
                let longest = cmd.clone().with_opaque(i32::MIN);
                assert!(
                    me.m.codec.encoded_len(&longest, ty).is_err(),
                    "{name}: send_request refused an encodable command: {e:?}"
                );
                assert!(
                    matches!(
                        e,
                        EncodeError::FrameTooLarge { max, .. } if max == me.m.config.limits.max_frame_len
                    ),
                    "{name}: send_request: unexpected encode error {e:?}"
                );
            }
            (Ok(()), Err(e)) => panic!("{name}: send_request refused with {e:?}"),
        }
    }

    fn oneway(&mut self, side: Side, msg: &Msg) {
        let (me, _) = self.pair(side);
        let serial = me.m.next_serial;
        me.m.next_serial += 1;
        let tag = make_tag(side, b'o', serial);
        let cmd = msg.command(with_filler(&[&tag], msg.filler()));
        let expected = me.m.can_send().and_then(|()| {
            me.m.oneway_counter = me.m.oneway_counter.wrapping_add(1) & me.m.slot_mask();
            let mut wire = cmd.clone();
            wire.opaque = me.m.oneway_counter as i32;
            wire.flag = (wire.flag & !FLAG_RESPONSE) | FLAG_ONEWAY;
            let ty = me.m.ty(wire.serialize_type);
            let mut buf = BytesMut::new();
            me.m.codec
                .encode_as(&wire, ty, &mut buf)
                .map_err(SendError::Encode)?;
            me.m.push_frame(buf.freeze(), None);
            me.m.stats.oneways_sent += 1;
            Ok(())
        });
        let got = me.conn.send_oneway(cmd);
        assert_eq!(got, expected, "{}: send_oneway", me.m.name);
    }

    /// Drains both sides' events against the model, then compares every query.
    ///
    /// Only the sides in `sides` (client, server): a machine changes only through calls on it,
    /// so a side an op did not touch has nothing new to check.
    fn check(&mut self, sides: [bool; 2]) {
        let now = self.now;
        for side in [Side::Client, Side::Server] {
            if !sides[side.index()] {
                continue;
            }
            let (me, peer) = self.pair(side);
            check_events(me, peer, now);
            check_queries(me);
        }
    }

    /// Closes both sides and checks that every request ended exactly once.
    fn finish(&mut self) {
        if trace_enabled() {
            for e in &self.ends {
                eprintln!(
                    "end: {} closed {:?} tainted {} wedged {} started {} {:?}",
                    e.m.name, e.m.closed, e.m.tainted, e.m.wedged, e.m.started, e.m.stats
                );
            }
        }
        for e in &mut self.ends {
            e.m.shut(CloseReason::Local);
            e.conn.close();
        }
        self.check([true, true]);
        for e in &self.ends {
            assert!(e.m.pending.is_empty());
            assert_eq!(
                e.m.ended_count, e.m.started,
                "{}: not every request ended",
                e.m.name
            );
        }
    }
}

/// The frame `send_encoded_request` must queue for `wire` (opaque, flags final): what the
/// encoder writes with the placeholder opaque `i32::MIN` (in `wire`'s own type), with the real
/// opaque put in its place: four bytes in a ROCKETMQ header (the same as encoding it directly);
/// in JSON, the eleven characters of `-2147483648`, filled with the decimal opaque and trailing
/// spaces, so the frame's length never changes.
fn encoded_frame(codec: &Codec, wire: &Command) -> Bytes {
    const PLACEHOLDER: &[u8] = b"\"opaque\":-2147483648";
    let mut buf = BytesMut::new();
    codec
        .encode_as(
            &wire.clone().with_opaque(i32::MIN),
            wire.serialize_type,
            &mut buf,
        )
        .expect("the encoded request was encoded with these limits");
    match wire.serialize_type {
        SerializeType::RocketMq => {
            let mut direct = BytesMut::new();
            codec
                .encode_as(wire, SerializeType::RocketMq, &mut direct)
                .expect("the same length with any opaque");
            assert_eq!(direct.len(), buf.len());
            direct.freeze()
        }
        SerializeType::Json => {
            let at = buf
                .windows(PLACEHOLDER.len())
                .position(|w| w == PLACEHOLDER)
                .expect("a JSON header names its opaque")
                + PLACEHOLDER.len()
                - 11;
            let digits = wire.opaque.to_string();
            let field = &mut buf[at..at + 11];
            field.fill(b' ');
            field[..digits.len()].copy_from_slice(digits.as_bytes());
            buf.freeze()
        }
    }
}

/// Own request `tag` ended saying it was never written: the peer must not have seen it, and must
/// never see it.
fn unwritten(me: &mut End, peer: &End, tag: Tag) {
    assert!(
        !peer.m.seen.contains(&tag),
        "{}: a request the peer received ended as never written",
        me.m.name
    );
    me.m.unwritten.insert(tag);
}

/// Checks `transmit_chunks` and `poll_transmit` against the model: the chunks, none empty,
/// add up to exactly the writable bytes, their first [`CHECK_PREFIX`] bytes are the model's
/// (the rest are compared as they are written), and `poll_transmit` is the first chunk itself.
/// Returns its length.
fn check_chunks(me: &End) -> usize {
    let w = me.m.writable();
    let mut total = 0;
    let mut first: Option<&[u8]> = None;
    // The first `prefix` bytes, gathered without allocating (this runs after every op).
    let mut head = [0u8; CHECK_PREFIX];
    let mut have = 0;
    for c in me.conn.transmit_chunks() {
        assert!(!c.is_empty(), "{}: an empty chunk", me.m.name);
        first.get_or_insert(c);
        total += c.len();
        let n = c.len().min(CHECK_PREFIX - have);
        head[have..have + n].copy_from_slice(&c[..n]);
        have += n;
    }
    assert_eq!(total, w, "{}: transmit_chunks length", me.m.name);
    me.m.check_bytes(&head[..have], "transmit_chunks");
    // The very slice, not a copy.
    assert_eq!(
        me.conn.poll_transmit().map(|p| (p.as_ptr(), p.len())),
        first.map(|c| (c.as_ptr(), c.len())),
        "{}: poll_transmit is not the first chunk",
        me.m.name
    );
    first.map_or(0, |c| c.len())
}

/// A vectored write: `transmit_chunks`, then `handle_written(max)` (it may end inside any
/// chunk). Every byte written is checked against the model.
fn write(me: &mut End, max: usize) {
    let w = me.m.writable();
    let k = max.min(w);
    check_chunks(me);
    let start = me.pipe.len();
    let mut left = k;
    for c in me.conn.transmit_chunks() {
        if left == 0 {
            break;
        }
        let n = c.len().min(left);
        me.pipe.extend_from_slice(&c[..n]);
        left -= n;
    }
    assert_eq!(
        left, 0,
        "{}: transmit_chunks shorter than writable",
        me.m.name
    );
    me.m.check_bytes(&me.pipe[start..], "the vectored write");
    me.conn.handle_written(max);
    me.m.consume(k);
    me.m.stats.bytes_out += k as u64;
    me.m.close_if_finished();
}

fn flush(me: &mut End) {
    for _ in 0..MAX_FLUSH_ROUNDS {
        let w = me.m.writable();
        write(me, w);
        if w == 0 {
            return;
        }
    }
    panic!(
        "{}: still writable after {MAX_FLUSH_ROUNDS} rounds",
        me.m.name
    );
}

/// Feeds `data` to `me`, through `handle_input` or `read_buffer` + `handle_read`. When the
/// tolerance of finding 3 fires, the data and everything after it are discarded.
fn feed(me: &mut End, data: &[u8], read_buffer: bool, now: Instant) {
    if me.m.wedged {
        return;
    }
    if !strict() && me.m.input_would_panic(data) {
        me.m.wedged = true;
        me.tolerated += 1;
        return;
    }
    me.m.input(data);
    if read_buffer {
        me.conn.read_buffer().extend_from_slice(data);
        me.conn.handle_read(data.len(), now);
    } else {
        me.conn.handle_input(data, now);
    }
}

fn check_events(me: &mut End, peer: &mut End, now: Instant) {
    let name = me.m.name;
    let events: Vec<Event<Tag>> = std::iter::from_fn(|| me.conn.poll_event()).collect();
    let mut got = events.into_iter();
    let expected = std::mem::take(&mut me.m.expected);
    let mut just_closed = false;
    for exp in expected {
        match exp {
            Exp::Failed(endings) => {
                let timeouts = endings.iter().all(|e| e.error.closed.is_none());
                let mut left: HashMap<RequestId, Ending> =
                    endings.into_iter().map(|e| (e.id, e)).collect();
                let mut last = Instant::ZERO;
                while !left.is_empty() {
                    let event = got.next();
                    let Some(Event::Failed { id, error, token }) = event else {
                        panic!("{name}: expected Failed for one of {left:?}, got {event:?}");
                    };
                    let e = left
                        .remove(&id)
                        .unwrap_or_else(|| panic!("{name}: Failed for {id:?} ({error:?}), which was not pending or already ended"));
                    assert_eq!(
                        token, e.token,
                        "{name}: the Failed token is not its request's"
                    );
                    assert_eq!(error, e.error, "{name}: Failed for {id:?}");
                    if error.closed.is_none() {
                        assert!(
                            now >= e.deadline,
                            "{name}: {id:?} timed out at {now:?}, before its deadline {:?}",
                            e.deadline
                        );
                    }
                    if timeouts {
                        assert!(e.deadline >= last, "{name}: timeouts out of deadline order");
                        last = e.deadline;
                    }
                    // After a failed handshake nothing can have reached the peer's application,
                    // but this harness's transport is no TLS: its bytes were delivered.
                    if !error.written && error.closed != Some(CloseReason::HandshakeFailed) {
                        unwritten(me, peer, e.tag);
                    }
                }
            }
            Exp::Response {
                id,
                cmd,
                token: tag,
            } => {
                let event = got.next();
                let Some(Event::Response {
                    id: got_id,
                    response,
                    token,
                }) = event
                else {
                    panic!("{name}: expected Response for {id:?}, got {event:?}");
                };
                assert_eq!(
                    token, tag,
                    "{name}: the response's token is not its request's"
                );
                assert_eq!(got_id, id, "{name}: response matched to the wrong request");
                assert_eq!(response, cmd, "{name}: response for {id:?}");
                assert_eq!(response.opaque, id.opaque(), "{name}: response opaque");
                me.m.responses_seen += 1;
                if !me.m.tainted {
                    let body = response.body();
                    if body.starts_with(RESP_MAGIC) {
                        let tag: Tag = body[4..20].try_into().unwrap();
                        assert!(
                            me.m.issued.contains(&(id, tag)),
                            "{name}: cross-talk: {id:?} got the answer to another request"
                        );
                        assert_eq!(
                            peer.m.answered.get(&tag).map(|b| &b[..]),
                            Some(body),
                            "{name}: the response body is not what the peer answered"
                        );
                    } else if !body.starts_with(FAKE_MAGIC) {
                        assert!(
                            body.is_empty()
                                && (response.code == SYSTEM_BUSY || response.code == SYSTEM_ERROR),
                            "{name}: an answer the peer's application did not write: {response:?}"
                        );
                    }
                }
            }
            Exp::Request { cmd, len } => {
                let event = got.next();
                let Some(Event::Request { request, command }) = event else {
                    panic!("{name}: expected Request {cmd:?}, got {event:?}");
                };
                assert_eq!(command, cmd, "{name}: request");
                assert!(
                    !command.is_response() && !command.is_oneway(),
                    "{name}: a response or oneway delivered as a request"
                );
                assert_eq!(request.opaque(), command.opaque, "{name}: request token");
                let tag = if me.m.tainted {
                    None
                } else {
                    tag_of(command.body())
                };
                if let Some(tag) = tag {
                    saw(me, peer, tag);
                }
                me.held.push(Held { request, len, tag });
            }
            Exp::Oneway { cmd } => {
                let event = got.next();
                let Some(Event::Oneway { command }) = event else {
                    panic!("{name}: expected Oneway {cmd:?}, got {event:?}");
                };
                assert_eq!(command, cmd, "{name}: oneway");
                assert!(command.is_oneway() && !command.is_response());
                if !me.m.tainted {
                    if let Some(tag) = tag_of(command.body()) {
                        saw(me, peer, tag);
                    }
                }
            }
            Exp::Closed { reason } => {
                let event = got.next();
                assert_eq!(event, Some(Event::Closed { reason }), "{name}: Closed");
                assert!(!me.m.closed_seen, "{name}: Closed twice");
                me.m.closed_seen = true;
                just_closed = true;
            }
        }
    }
    if let Some(event) = got.next() {
        panic!("{name}: unexpected event {event:?}");
    }
    // Later sends are checked against the model by the ops that make them.
    if just_closed {
        assert_eq!(
            me.conn.send_oneway(Command::oneway(0)),
            Err(SendError::Closed),
            "{name}: send_oneway after close"
        );
        assert_eq!(
            me.conn
                .send_request(Command::request(0), Instant::MAX, Instant::ZERO),
            Err(SendError::Closed),
            "{name}: send_request after close"
        );
    }
}

/// `me` received the peer's request or oneway `tag` from an untainted stream.
fn saw(me: &mut End, peer: &End, tag: Tag) {
    assert_ne!(
        tag[4] as usize,
        me.m.side.index(),
        "{}: received its own request",
        me.m.name
    );
    assert!(
        !peer.m.unwritten.contains(&tag),
        "{}: received a request its peer reported as never written",
        me.m.name
    );
    assert!(
        me.m.seen.insert(tag),
        "{}: received the same request twice",
        me.m.name
    );
}

fn check_queries(me: &mut End) {
    let name = me.m.name;
    let conn = &me.conn;
    let m = &me.m;
    assert_eq!(
        conn.pending_requests(),
        m.pending.len(),
        "{name}: pending_requests"
    );
    assert_eq!(
        conn.pending_incoming(),
        m.incoming,
        "{name}: pending_incoming"
    );
    assert_eq!(me.held.len(), m.incoming, "{name}: held requests");
    assert_eq!(
        conn.poll_timeout(),
        m.deadlines.first().map(|(deadline, _)| *deadline),
        "{name}: poll_timeout is not the earliest deadline"
    );
    check_chunks(me);
    assert_eq!(
        conn.pending_incoming_len(),
        m.incoming_len,
        "{name}: pending_incoming_len"
    );
    assert_eq!(conn.unsent_len(), m.unsent_len(), "{name}: unsent_len");
    assert_eq!(
        conn.buffered_len(),
        m.read_buf.len() + m.incoming_len + m.unsent_len(),
        "{name}: buffered_len"
    );
    // Backpressure: read while open, before end of input, and while what is owed to the peer
    // (unsent bytes and the frames of requests still to answer) is below the transmit limit.
    assert_eq!(
        conn.wants_read(),
        m.closed.is_none() && !m.eof && m.unsent_len() + m.incoming_len < m.config.max_transmit_len,
        "{name}: wants_read"
    );
    assert_eq!(conn.stats(), &m.stats, "{name}: stats");
    assert_eq!(
        conn.stats().responses_matched,
        m.responses_seen,
        "{name}: responses_matched"
    );
    assert_eq!(conn.close_reason(), m.closed, "{name}: close_reason");
    assert_eq!(conn.is_closed(), m.closed.is_some());
    if m.closed.is_some() {
        assert!(m.closed_seen, "{name}: closed without a Closed event");
        assert_eq!(conn.pending_requests(), 0);
        assert_eq!(conn.poll_timeout(), None);
        assert_eq!(conn.poll_transmit(), None);
    }
}

/// How often the tolerance of finding 3 fired for `data` (for tests).
pub fn connection_tolerated(data: &[u8]) -> u64 {
    let Some((setup, ops)) = parse_connection(data) else {
        return 0;
    };
    let mut h = Harness::new(&setup);
    for op in &ops {
        h.apply(op);
        h.check(op.sides());
    }
    h.finish();
    h.ends.iter().map(|e| e.tolerated).sum()
}
