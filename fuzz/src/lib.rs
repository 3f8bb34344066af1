//! The checks behind the `remora-core` fuzz targets.
//!
//! Each `fuzz_targets/*.rs` is a thin wrapper around one `check_*` function here (or
//! [`run_connection`], whose driver and model live in the `connection` module), so the same
//! checks can be replayed from a plain `cargo test` (see `tests/replay.rs`) on any input, without
//! libFuzzer.
//!
//! What is asserted, and the normalisations that are *not* bugs, are documented on each function
//! and in `fuzz/README.md`.

#![deny(missing_docs)]

mod connection;

pub use connection::{
    connection_tolerated, parse_connection, run_connection, run_ops, Msg, Op, OpaquePick, Override,
    Raw, Setup, Side, SideConfig, Tag, Ty, BUSY_REMARK, FALLBACK_REMARK, MAX_DELIVER, MAX_OPS,
    MAX_READS_PER_OP, OVERLOADED_REMARK,
};

use bytes::{Bytes, BytesMut};
use remora_core::{
    binary, json, Codec, Command, DecodeError, Decoded, Limits, SerializeType,
    DEFAULT_MAX_FRAME_LEN, PREFIX_LEN,
};

/// Limits the fuzzed decoders run with: small, so the fuzzer does not spend its time on huge
/// frames, and so that the limit checks themselves are reachable.
///
/// `max_string_len` stays above 10 KiB so the `ext-long-value-10k` seeds still decode.
pub const LIMITS: Limits = Limits {
    max_frame_len: 1024 * 1024,
    max_ext_fields: 128,
    max_string_len: 16 * 1024,
    max_json_depth: 16,
};

/// Limits for decoding what we re-encoded: the same string, field and depth limits, but the
/// default frame limit, because a canonical JSON header can be longer than the one it came from
/// (`{}` becomes ~90 bytes, a raw control byte becomes `\u00XX`).
pub const RECODE_LIMITS: Limits = Limits {
    max_frame_len: DEFAULT_MAX_FRAME_LEN,
    ..LIMITS
};

/// At most this many frames are decoded from one input (every frame is at least 8 bytes, so a
/// 64 KiB input holds at most 8192; the bound only guards against a decoder that stops consuming).
pub const MAX_FRAMES: usize = 16 * 1024;

/// A command as plain, comparable data. Unlike [`remora_core::ExtFields`], the extension fields
/// are a plain list, so duplicates survive normalisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The request or response code.
    pub code: i32,
    /// The language byte.
    pub language: u8,
    /// The protocol version.
    pub version: i32,
    /// The request id the response echoes.
    pub opaque: i32,
    /// The flag bits (response, oneway).
    pub flag: i32,
    /// The remark, if any.
    pub remark: Option<String>,
    /// The extension fields in wire order, duplicates kept.
    pub ext: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// How the header was (or is to be) encoded.
    pub serialize_type: SerializeType,
}

impl View {
    /// The fields of `cmd`.
    pub fn of(cmd: &Command) -> View {
        View {
            code: cmd.code,
            language: cmd.language.0,
            version: cmd.version,
            opaque: cmd.opaque,
            flag: cmd.flag,
            remark: cmd.remark().map(String::from),
            ext: cmd
                .ext_fields()
                .iter()
                .map(|(k, v)| (String::from(k), String::from(v)))
                .collect(),
            body: cmd.body_bytes(),
            serialize_type: cmd.serialize_type,
        }
    }

    /// What this command must decode to after being encoded with a `ty` header: the documented
    /// normalisations of each header format.
    ///
    /// - ROCKETMQ: `code` and `version` are 16-bit on the wire (truncated on encode,
    ///   sign-extended on decode); an empty remark is written as "no remark" (length 0); an
    ///   extension entry with an empty value is dropped by the decoder (Java reads it as null).
    /// - JSON: nothing changes (language bytes without a name are written as numbers; unknown
    ///   keys and `serializeTypeCurrentRPC` were already dropped by the first decode).
    pub fn encoded_as(mut self, ty: SerializeType) -> View {
        self.serialize_type = ty;
        if ty == SerializeType::RocketMq {
            self.code = i32::from(self.code as i16);
            self.version = i32::from(self.version as i16);
            if self.remark.as_deref() == Some("") {
                self.remark = None;
            }
            self.ext.retain(|(_, v)| !v.is_empty());
        }
        self
    }
}

/// How a stream decode ended.
/// How a stream decoder's run over one input ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The input ran out inside a frame (or exactly between frames).
    Incomplete {
        /// The bytes the decoder asked for.
        needed: usize,
    },
    /// The decoder refused the stream.
    Error(DecodeError),
}

/// Everything a stream decoder produced for one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Each decoded command with the number of bytes its frame took off the buffer.
    pub commands: Vec<(usize, Command)>,
    /// How the run ended.
    pub end: End,
    /// Bytes taken off the buffer in all (the rest of the input is still there, or was never fed
    /// because the stream was refused early).
    pub consumed: usize,
}

/// Feeds `data` to `codec.decode` in the pieces given by `cut_points` (sorted, deduplicated ends of
/// each piece; `data.len()` is added), decoding as many frames as possible after each piece.
///
/// Asserts on the way that the decoder keeps its contract:
/// - `Incomplete` leaves the buffer untouched, and so do errors; `Incomplete.needed >= 1`;
/// - a command only arrives once at least `needed` more bytes have arrived since `Incomplete`;
/// - a command takes at least 8 bytes (prefix + marker) off the buffer;
/// - what is left at the end is exactly the unconsumed suffix of `data`.
pub fn decode_stream(codec: &Codec, data: &[u8], cut_points: &[usize]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut consumed = 0usize;
    let mut fed = 0usize;
    let mut cuts = cut_points
        .iter()
        .copied()
        .filter(|&c| c < data.len())
        .chain(core::iter::once(data.len()));
    // Length the buffer must reach before a command may come out (from the last `Incomplete`).
    let mut promised = 0usize;
    loop {
        let before = buf.len();
        let end = match codec.decode(&mut buf) {
            Ok(Decoded::Command(cmd)) => {
                let took = before - buf.len();
                assert!(
                    took >= PREFIX_LEN,
                    "a command took {took} bytes, less than prefix + marker"
                );
                assert!(
                    before >= promised,
                    "Incomplete promised the buffer must reach {promised} bytes, but a command \
                     came out at {before}"
                );
                consumed += took;
                promised = 0;
                commands.push((took, cmd));
                assert!(
                    commands.len() <= MAX_FRAMES,
                    "more frames than the input can hold"
                );
                continue;
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed >= 1, "Incomplete with needed = 0");
                assert_eq!(buf.len(), before, "Incomplete changed the buffer");
                promised = promised.max(before + needed);
                End::Incomplete { needed }
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "an error changed the buffer ({e:?})");
                End::Error(e)
            }
        };
        match (&end, cuts.find(|&c| c > fed)) {
            (End::Incomplete { .. }, Some(next)) => {
                buf.extend_from_slice(&data[fed..next]);
                fed = next;
            }
            _ => {
                // Out of input, or an error: the stream is over.
                assert_eq!(consumed + buf.len(), fed);
                assert_eq!(
                    &buf[..],
                    &data[consumed..fed],
                    "leftover is not the unread suffix"
                );
                return Outcome {
                    commands,
                    end,
                    consumed,
                };
            }
        }
    }
}

/// Where the two-piece split of `data` goes: derived from the first input bytes (the frame's
/// length prefix, for a well-formed stream), mixed so that small changes move it around.
pub fn split_point(data: &[u8]) -> usize {
    let seed = data.iter().take(4).fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    seed as usize % (data.len() + 1)
}

/// The `frame_decoder` target: `data` is a byte stream of frames.
///
/// 1. Decodes it whole, frame after frame, until `Incomplete` or an error.
/// 2. Decodes it again in two pieces split at [`split_point`], and again one byte at a time (in
///    61-byte pieces above 8 KiB): the commands, the final `Incomplete`/error and the bytes consumed must
///    be identical to the whole-input decode.
/// 3. `decode_frame` on the whole input succeeds exactly when the stream decode took one frame
///    spanning the whole input, with the same command; and on each frame's own bytes it gives the
///    same command again.
/// 4. Every command round-trips, see [`check_command`].
pub fn check_stream(data: &[u8]) {
    let codec = Codec::new(LIMITS);
    let whole = decode_stream(&codec, data, &[]);

    let split = split_point(data);
    let halves = decode_stream(&codec, data, &[split]);
    assert_eq!(halves, whole, "split at {split} changed the outcome");

    let step = if data.len() <= 8 * 1024 { 1 } else { 61 };
    let cuts: Vec<usize> = (step..data.len()).step_by(step).collect();
    let pieces = decode_stream(&codec, data, &cuts);
    assert_eq!(pieces, whole, "{step}-byte pieces changed the outcome");

    let all = Bytes::copy_from_slice(data);
    let by_frame = codec.decode_frame(&all);
    match whole.commands.first() {
        Some((took, cmd)) if *took == data.len() => {
            assert_eq!(
                by_frame.as_ref(),
                Ok(cmd),
                "decode_frame disagrees with decode"
            )
        }
        Some(_) => assert!(
            matches!(by_frame, Err(DecodeError::FrameLengthMismatch { .. })),
            "decode_frame on more than one frame gave {by_frame:?}"
        ),
        None => assert!(
            by_frame.is_err(),
            "decode_frame accepted what the stream decoder did not: {by_frame:?}"
        ),
    }

    let mut at = 0;
    for (took, cmd) in &whole.commands {
        let frame = all.slice(at..at + took);
        at += took;
        assert_eq!(
            codec.decode_frame(&frame).as_ref(),
            Ok(cmd),
            "decode_frame on the frame's own bytes disagrees with decode"
        );
        check_command(cmd);
    }
}

/// Re-encodes a decoded `cmd` with its own header type and with the other one, and decodes both.
///
/// - Own type (`Codec::encode`): must succeed, write exactly `encoded_len` bytes, decode to the
///   same command (for ROCKETMQ after 16-bit truncation of code/version, which is the identity for
///   a command that came from a ROCKETMQ header), and re-encoding that gives the same bytes (the
///   encoding is canonical).
/// - Other type (`Codec::encode_as`): must succeed and decode to [`View::encoded_as`].
pub fn check_command(cmd: &Command) {
    let codec = Codec::new(RECODE_LIMITS);
    let own = cmd.serialize_type;
    let other = match own {
        SerializeType::Json => SerializeType::RocketMq,
        SerializeType::RocketMq => SerializeType::Json,
    };

    let wire = encode(&codec, cmd, own);
    let back = decode_one(&codec, &wire, own);
    assert_eq!(
        View::of(&back),
        View::of(cmd).encoded_as(own),
        "{own:?} re-encode changed the command; wire = {}",
        hex(&wire)
    );
    if own == SerializeType::Json {
        assert_eq!(&back, cmd, "JSON re-encode changed the command");
    }
    let again = encode(&codec, &back, own);
    assert_eq!(again, wire, "{own:?} encoding is not canonical");

    let cross = encode(&codec, cmd, other);
    let back = decode_one(&codec, &cross, other);
    assert_eq!(
        View::of(&back),
        View::of(cmd).encoded_as(other),
        "{own:?} command encoded as {other:?} came back different; wire = {}",
        hex(&cross)
    );
}

fn encode(codec: &Codec, cmd: &Command, ty: SerializeType) -> Bytes {
    let len = codec.encoded_len(cmd, ty);
    let mut out = BytesMut::new();
    let res = codec.encode_as(cmd, ty, &mut out);
    assert_eq!(res, len.map(drop), "encode_as and encoded_len disagree");
    if let Err(e) = res {
        panic!("re-encoding a decoded command as {ty:?} failed: {e:?} ({cmd:?})");
    }
    assert_eq!(
        Ok(out.len()),
        len,
        "encode_as did not write encoded_len bytes"
    );
    out.freeze()
}

fn decode_one(codec: &Codec, wire: &Bytes, ty: SerializeType) -> Command {
    let mut buf = BytesMut::from(&wire[..]);
    let cmd = match codec.decode(&mut buf) {
        Ok(Decoded::Command(cmd)) => cmd,
        other => panic!(
            "re-encoded {ty:?} frame did not decode: {other:?}; wire = {}",
            hex(wire)
        ),
    };
    assert!(buf.is_empty(), "re-encoded frame left {} bytes", buf.len());
    assert_eq!(cmd.serialize_type, ty);
    cmd
}

/// The `json_header` target: `data` is a JSON header (the bytes after the marker word).
///
/// On a successful `json::decode_header`: the command has the JSON type and no body;
/// `json::encode_header` writes exactly `json::header_len` bytes; those bytes are valid JSON
/// (`serde_json` parses them) carrying the same fields; decoding them gives the same command; and
/// encoding that again gives the same bytes. The same holds when the command says ROCKETMQ (only
/// `serializeTypeCurrentRPC` differs, and the decoder ignores it).
pub fn check_json_header(data: &[u8]) {
    let header = Bytes::copy_from_slice(data);
    let Ok(cmd) = json::decode_header(&header, &LIMITS) else {
        return;
    };
    assert_eq!(cmd.serialize_type, SerializeType::Json);
    assert!(cmd.body().is_empty());

    let out = json_encode(&cmd);
    check_json_text(&out, &cmd);
    let back = json::decode_header(&out, &LIMITS).unwrap_or_else(|e| {
        panic!(
            "canonical JSON header did not decode: {e:?}; header = {}",
            preview(&out)
        )
    });
    assert_eq!(back, cmd, "JSON header round trip changed the command");
    assert_eq!(
        json_encode(&back),
        out,
        "JSON header encoding is not canonical"
    );

    let mut rocketmq = cmd.clone();
    rocketmq.serialize_type = SerializeType::RocketMq;
    let out = json_encode(&rocketmq);
    let back = json::decode_header(&out, &LIMITS).expect("JSON header naming ROCKETMQ");
    assert_eq!(back, cmd);
}

fn json_encode(cmd: &Command) -> Bytes {
    let mut out = Vec::new();
    json::encode_header(cmd, &mut out);
    assert_eq!(
        out.len(),
        json::header_len(cmd),
        "json::header_len disagrees with json::encode_header"
    );
    Bytes::from(out)
}

/// `text` must be a JSON object a standard parser accepts, with `cmd`'s fields.
fn check_json_text(text: &[u8], cmd: &Command) {
    use serde_json::Value;
    let value: Value = serde_json::from_slice(text)
        .unwrap_or_else(|e| panic!("encoder wrote invalid JSON ({e}): {}", preview(text)));
    let obj = value.as_object().expect("header is an object");
    let int = |k: &str| obj.get(k).and_then(Value::as_i64);
    assert_eq!(int("code"), Some(i64::from(cmd.code)));
    assert_eq!(int("flag"), Some(i64::from(cmd.flag)));
    assert_eq!(int("opaque"), Some(i64::from(cmd.opaque)));
    assert_eq!(int("version"), Some(i64::from(cmd.version)));
    match cmd.language.name() {
        Some(name) => assert_eq!(obj.get("language").and_then(Value::as_str), Some(name)),
        None => assert_eq!(int("language"), Some(i64::from(cmd.language.0))),
    }
    assert_eq!(
        obj.get("remark")
            .map(|r| r.as_str().expect("remark is a string")),
        cmd.remark()
    );
    match obj.get("extFields") {
        None => assert!(cmd.ext_fields().is_empty()),
        Some(ext) => {
            let ext = ext.as_object().expect("extFields is an object");
            assert!(!ext.is_empty());
            for (k, v) in cmd.ext_fields().iter() {
                // serde_json keeps the last of duplicate keys, as `ExtFields::get` does.
                assert_eq!(
                    ext.get(k).and_then(Value::as_str),
                    cmd.ext(k),
                    "extFields[{k:?}] (one value was {v:?})"
                );
            }
            assert!(ext.len() <= cmd.ext_fields().len());
        }
    }
}

/// The `binary_header` target: `data` is a ROCKETMQ binary header.
///
/// On a successful `binary::decode_header`: the command has the ROCKETMQ type, no body, no empty
/// remark and no empty extension value; `binary::header_len` succeeds and `binary::encode_header`
/// writes exactly that many bytes; decoding them gives the same command; and encoding that again
/// gives the same bytes. (The first re-encode need not equal `data`: empty extension values were
/// dropped and bytes after the extension block ignored.)
pub fn check_binary_header(data: &[u8]) {
    let header = Bytes::copy_from_slice(data);
    let Ok(cmd) = binary::decode_header(&header, &LIMITS) else {
        return;
    };
    assert_eq!(cmd.serialize_type, SerializeType::RocketMq);
    assert!(cmd.body().is_empty());
    assert_ne!(cmd.remark(), Some(""), "empty remark decoded as Some");
    assert!(
        cmd.ext_fields().iter().all(|(_, v)| !v.is_empty()),
        "empty extension value kept"
    );
    assert_eq!(cmd.code, i32::from(cmd.code as i16));
    assert_eq!(cmd.version, i32::from(cmd.version as i16));

    let out = binary_encode(&cmd);
    assert!(
        out.len() <= data.len(),
        "canonical header longer than its source"
    );
    let back = binary::decode_header(&out, &LIMITS)
        .unwrap_or_else(|e| panic!("re-encoded header did not decode: {e:?}; {}", hex(&out)));
    assert_eq!(back, cmd, "binary header round trip changed the command");
    assert_eq!(
        binary_encode(&back),
        out,
        "binary header encoding is not canonical"
    );
}

fn binary_encode(cmd: &Command) -> Bytes {
    let len = binary::header_len(cmd).expect("header_len of a decoded command");
    let mut out = Vec::new();
    binary::encode_header(cmd, &mut out);
    assert_eq!(
        out.len(),
        len,
        "binary::header_len disagrees with binary::encode_header"
    );
    Bytes::from(out)
}

/// At most this many input bytes are printed in a failure message.
const SHOWN: usize = 512;

/// Lower-case hex of `bytes` (the first [`SHOWN`] of them), for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len().min(SHOWN) * 2 + 32);
    for b in &bytes[..bytes.len().min(SHOWN)] {
        let _ = write!(s, "{b:02x}");
    }
    if bytes.len() > SHOWN {
        let _ = write!(s, "... ({} bytes)", bytes.len());
    }
    s
}

/// `bytes` as quoted text (the first [`SHOWN`] of them), for failure messages.
pub fn preview(bytes: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    if bytes.len() > SHOWN {
        format!("{shown:?}... ({} bytes)", bytes.len())
    } else {
        format!("{shown:?}")
    }
}

/// The `route` target: `data` is the body of a route (105) or cluster-info (106) answer.
///
/// Never a panic; an error is one line. On a parsed route: broker names are sorted and unique,
/// each broker's addresses are sorted by id without duplicates, its master is the address of id
/// 0, a writable broker has a master, and `writable_masters` / `choose_writable` agree with
/// `Broker::writable`. Against `serde_json`: input it accepts as JSON is never a syntax error
/// here (this parser also reads fastjson's unquoted keys, so the converse does not hold).
pub fn check_route(data: &[u8]) {
    use remora_core::route::{ClusterInfo, RouteError, TopicRoute, MAX_DEPTH};
    let route = TopicRoute::parse(data);
    match &route {
        Ok(route) => {
            for pair in route.brokers.windows(2) {
                assert!(pair[0].name < pair[1].name, "brokers sorted and unique");
            }
            for b in &route.brokers {
                for pair in b.addrs.windows(2) {
                    assert!(pair[0].0 < pair[1].0, "addresses sorted by id, no duplicate");
                }
                let id0 = b.addrs.iter().find(|(id, _)| *id == 0).map(|(_, a)| a);
                assert_eq!(b.master.as_ref(), id0, "master is broker id 0");
                if b.writable() {
                    assert!(b.master.is_some());
                }
            }
            let writable: Vec<String> = route
                .brokers
                .iter()
                .filter(|b| b.writable())
                .map(|b| b.master.clone().unwrap())
                .collect();
            assert_eq!(route.writable_masters(), writable);
            assert_eq!(route.choose_writable(None).is_ok(), !writable.is_empty());
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "one-line error: {e}"),
    }
    if let Err(e) = ClusterInfo::parse(data) {
        assert!(!e.to_string().contains('\n'), "one-line error: {e}");
    }
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        let depth = data.iter().filter(|b| matches!(b, b'[' | b'{')).count();
        if let Err(RouteError::Syntax { at, what }) = route {
            assert!(
                depth > MAX_DEPTH,
                "serde_json accepts it, the route parser says {what} at {at}"
            );
        }
    }
}
