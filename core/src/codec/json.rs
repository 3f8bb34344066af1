//! The JSON header (serialize type 0).
//!
//! Decoding accepts every dialect peers are known to send: keys in any order, unknown keys (skipped,
//! nesting bounded), explicit `null`s, `"remark":""`, `language` as a name or a number, integers
//! given as quoted strings (fastjson accepts them), raw control bytes inside strings, every JSON
//! escape including surrogate pairs, and whitespace around tokens and after the closing brace.
//! Fields missing from the header take Java's defaults: `language` JAVA, numbers 0, no remark.
//!
//! Encoding writes Java's canonical shape, which every peer accepts: keys in alphabetical order,
//! `remark` and an empty `extFields` omitted, `serializeTypeCurrentRPC` present, `"`, `\` and
//! control characters escaped, everything else (including non-ASCII) raw UTF-8.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::command::{
    Command, Fixed, LanguageCode, SerializeType, COMPACT_EXT, UNESCAPED_END, UNESCAPED_START,
};
use crate::codec::error::{DecodeError, JsonErrorKind};
use crate::codec::limits::Limits;
use crate::codec::scan;
use crate::codec::sink::{self, BufSink, Sink, JSON_ESCAPE as ESCAPE};

/// Decodes a JSON header into a command with an empty body.
///
/// The header is checked to be UTF-8 once, as a whole, then parsed completely. The command
/// reads its remark and extension fields from the header in place; a header whose strings hold
/// escapes is copied once here to unescape them ([`Codec::decode`](crate::Codec::decode)
/// unescapes in the read buffer instead, and there also compacts the extension fields into
/// length-prefixed strings and notes where the remark is, so reading them scans nothing).
pub fn decode_header(header: &Bytes, limits: &Limits) -> Result<Command, DecodeError> {
    let parsed = parse(header, limits)?;
    let buf = if parsed.escapes.any() {
        let mut owned = BytesMut::from(&header[..]);
        parsed.escapes.rewrite(&mut owned);
        owned.freeze()
    } else {
        header.clone()
    };
    Ok(Command::decoded(
        parsed.fixed,
        SerializeType::Json,
        buf,
        false,
        parsed.ext_at,
    ))
}

/// The exact length [`encode_header`] will write for `cmd`.
pub fn header_len(cmd: &Command) -> usize {
    header_len_as(cmd, cmd.serialize_type)
}

/// [`header_len`] with `serializeTypeCurrentRPC` saying `ty`.
pub(crate) fn header_len_as(cmd: &Command, ty: SerializeType) -> usize {
    let mut n = FIXED_LEN + ty.name().len();
    n += int_len(cmd.code) + int_len(cmd.flag) + int_len(cmd.opaque) + int_len(cmd.version);
    n += match cmd.language.name() {
        Some(name) => name.len() + 2,
        None => int_len(i32::from(cmd.language.0)),
    };
    if let Some(remark) = cmd.remark() {
        n += REMARK_KEY.len() + escaped_len(remark.as_bytes()) + 1;
    }
    let mut fields = 0;
    for (k, v) in cmd.ext_fields() {
        n += escaped_len(k.as_bytes()) + escaped_len(v.as_bytes()) + 5;
        fields += 1;
    }
    if fields > 0 {
        // `"extFields":{` + `}` + commas between entries (the first key's quote is in EXT_KEY).
        n += EXT_KEY.len() + (fields - 1);
    }
    n
}

/// Writes `cmd`'s header in Java's canonical shape; exactly [`header_len`] bytes.
pub fn encode_header(cmd: &Command, dst: &mut impl BufMut) {
    write_header(cmd, cmd.serialize_type, &mut BufSink(dst));
}

/// Writes `cmd`'s header with `serializeTypeCurrentRPC` saying `ty`. A sink with room for a
/// part (the code; the fields after `extFields`) takes it in one go.
pub(crate) fn write_header(cmd: &Command, ty: SerializeType, out: &mut impl Sink) {
    let mut ints = itoa::Buffer::new();
    match out.raw(8 + sink::INT_MAX_LEN) {
        // SAFETY: 8 bytes, then at most INT_MAX_LEN: within the room asked for, all written.
        Some(raw) => unsafe {
            raw.store(0, *b"{\"code\":");
            let end = raw.put_i32(8, cmd.code);
            out.commit(end);
        },
        None => {
            out.put(b"{\"code\":");
            out.put(ints.format(cmd.code).as_bytes());
        }
    }
    let mut sep = EXT_KEY;
    match cmd.built_ext() {
        Some(entries) => {
            let done = out.put_json_entries(true, entries);
            if done > 0 {
                sep = b",\"";
            }
            for (k, v) in &entries[done..] {
                put_entry(out, &mut sep, sink::Str::header(k), sink::Str::header(v));
            }
        }
        None => {
            for (k, v) in cmd.ext_fields() {
                put_entry(out, &mut sep, sink::Str::plain(k), sink::Str::plain(v));
            }
        }
    }
    let close = sep.len() == 2;
    let remark = cmd.remark();
    // Saturated: a sum too large for a `usize` is larger than any window.
    let need = remark
        .map_or(0, |r| 6usize.saturating_mul(r.len()))
        .saturating_add(TAIL_MAX_LEN);
    if let Some(raw) = out.raw(need) {
        // SAFETY: `write_tail` stores within `TAIL_MAX_LEN` + 6 per remark byte + SLACK, and
        // writes every byte up to the end it returns.
        unsafe {
            let end = write_tail(raw, 0, cmd, cmd.flag, cmd.opaque, ty, close, remark);
            out.commit(end);
        }
        return;
    }
    if close {
        out.put_u8(b'}');
    }
    out.put(b",\"flag\":");
    out.put(ints.format(cmd.flag).as_bytes());
    match cmd.language.name() {
        Some(name) => {
            out.put(b",\"language\":\"");
            out.put(name.as_bytes());
            out.put(b"\",\"opaque\":");
        }
        // A byte no peer names: the number is the only faithful spelling (Java accepts it).
        None => {
            out.put(b",\"language\":");
            out.put(ints.format(cmd.language.0).as_bytes());
            out.put(b",\"opaque\":");
        }
    }
    out.put(ints.format(cmd.opaque).as_bytes());
    if let Some(remark) = remark {
        out.put(REMARK_KEY);
        put_escaped(remark.as_bytes(), out);
        out.put_u8(b'"');
    }
    out.put(match ty {
        SerializeType::Json => SERIALIZE_JSON.as_slice(),
        SerializeType::RocketMq => SERIALIZE_ROCKETMQ,
    });
    out.put(ints.format(cmd.version).as_bytes());
    out.put_u8(b'}');
}

const SERIALIZE_JSON: &[u8; 44] = b",\"serializeTypeCurrentRPC\":\"JSON\",\"version\":";
const SERIALIZE_ROCKETMQ: &[u8; 48] = b",\"serializeTypeCurrentRPC\":\"ROCKETMQ\",\"version\":";

/// The most [`write_tail`] writes, less 6 bytes per remark byte: `}`, `,"flag":` and a number,
/// `,"language":"` and the longest name, `","opaque":` and a number, `,"remark":"` and `"`,
/// the serialize type and a number, `}`.
const TAIL_MAX_LEN: usize = 1
    + 8
    + sink::INT_MAX_LEN
    + 13
    + 7
    + 11
    + sink::INT_MAX_LEN
    + REMARK_KEY.len()
    + 1
    + SERIALIZE_ROCKETMQ.len()
    + sink::INT_MAX_LEN
    + 1;

/// The most [`write_bare_header`] writes: `{"code":` and a number, then the fixed fields.
pub(crate) const BARE_MAX_LEN: usize = 8 + sink::INT_MAX_LEN + TAIL_MAX_LEN;

/// The header [`write_header`] writes for `cmd`, which has no remark and no extension fields,
/// with `flag` and `opaque` in place of its own, stored through `raw` from `start`; returns
/// where it ends. One part after the other, with no room check and nothing to look up.
///
/// # Safety
/// `raw` has room for `start` + [`BARE_MAX_LEN`] bytes and SLACK.
#[inline(always)]
pub(crate) unsafe fn write_bare_header(
    raw: sink::Raw,
    start: usize,
    cmd: &Command,
    flag: i32,
    opaque: i32,
    ty: SerializeType,
) -> usize {
    debug_assert!(cmd.is_bare());
    // SAFETY: 8 bytes and a number (at most INT_MAX_LEN), then `write_tail` within
    // TAIL_MAX_LEN (no remark) and SLACK: BARE_MAX_LEN and SLACK from `start` in all.
    unsafe {
        raw.store(start, *b"{\"code\":");
        let at = raw.put_i32(start + 8, cmd.code);
        write_tail(raw, at, cmd, flag, opaque, ty, false, None)
    }
}

/// The header after its extension fields (closing them first when `close`), with `flag` and
/// `opaque`, stored through `raw` from `start`; returns where it ends.
///
/// # Safety
/// `raw` has room for `start` + [`TAIL_MAX_LEN`] bytes, 6 per byte of `remark`, and SLACK.
/// Each part below stores at most its share of that bound (a 16-byte store for the 13 bytes of
/// `,"language":"` stays within the slack, as the next part starts at its 13th byte).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn write_tail(
    raw: sink::Raw,
    start: usize,
    cmd: &Command,
    flag: i32,
    opaque: i32,
    ty: SerializeType,
    close: bool,
    remark: Option<&str>,
) -> usize {
    // SAFETY: see the function's contract; each store starts where the part before ended.
    unsafe {
        raw.store(start, *b"}");
        let mut at = start + usize::from(close);
        raw.store(at, *b",\"flag\":");
        at = raw.put_i32(at + 8, flag);
        match cmd.language.name() {
            Some(name) => {
                raw.store(at, *b",\"language\":\"\0\0\0");
                raw.copy(at + 13, name.as_bytes());
                at += 13 + name.len();
                raw.store(at, *b"\",\"opaque\":");
                at += 11;
            }
            None => {
                raw.store(at, *b",\"language\":");
                at = raw.put_i32(at + 12, i32::from(cmd.language.0));
                raw.store(at, *b",\"opaque\":");
                at += 10;
            }
        }
        at = raw.put_i32(at, opaque);
        if let Some(remark) = remark {
            raw.store(at, *b",\"remark\":\"");
            at = raw.json_str(at + REMARK_KEY.len(), remark.as_bytes());
            raw.store(at, *b"\"");
            at += 1;
        }
        match ty {
            SerializeType::Json => {
                raw.store(at, *SERIALIZE_JSON);
                at += SERIALIZE_JSON.len();
            }
            SerializeType::RocketMq => {
                raw.store(at, *SERIALIZE_ROCKETMQ);
                at += SERIALIZE_ROCKETMQ.len();
            }
        }
        at = raw.put_i32(at, cmd.version);
        raw.store(at, *b"}");
        at + 1
    }
}

/// Writes one extension entry after `sep` (which becomes the separator between entries).
#[inline]
fn put_entry(out: &mut impl Sink, sep: &mut &[u8], k: sink::Str<'_>, v: sink::Str<'_>) {
    if !out.put_json_entry(sep.len() != 2, k, v) {
        let (k, v) = (k.bytes, v.bytes);
        if needs_escape(k) || needs_escape(v) {
            out.put(sep);
            put_escaped(k, out);
            out.put(b"\":\"");
            put_escaped(v, out);
            out.put_u8(b'"');
        } else {
            out.put_all([sep, k, b"\":\"", v, b"\""]);
        }
    }
    *sep = b",\"";
}

/// Opens the `extFields` object and its first key.
const EXT_KEY: &[u8] = b",\"extFields\":{\"";
const REMARK_KEY: &[u8] = b",\"remark\":\"";
/// Everything [`encode_header`] writes whatever the command holds, less the type name.
const FIXED_LEN: usize =
    r#"{"code":,"flag":,"language":,"opaque":,"serializeTypeCurrentRPC":"","version":}"#.len();

fn int_len(n: i32) -> usize {
    let mut len = usize::from(n < 0) + 1;
    let mut m = n.unsigned_abs();
    while m >= 10 {
        m /= 10;
        len += 1;
    }
    len
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every zero byte of `w` set (and possibly of bytes above the lowest zero byte,
/// through the borrow: the lowest set bit is always exact).
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// Whether any byte of `w` is zero.
#[inline]
fn has_zero_byte(w: u64) -> bool {
    zero_bytes(w) != 0
}

/// Whether any of the 8 bytes of `w` needs escaping in a JSON string: a control byte, `"` or
/// `\`. May say yes when no byte does (a byte-wise check follows), never no when one does.
#[inline]
fn word_needs_escape(w: u64) -> bool {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0;
    below_space
        || has_zero_byte(w ^ (ONES * u64::from(b'"')))
        || has_zero_byte(w ^ (ONES * u64::from(b'\\')))
}

#[inline]
fn word_at(s: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[i..i + 8]);
    u64::from_le_bytes(w)
}

fn escaped_len(s: &[u8]) -> usize {
    let mut n = s.len();
    let mut i = 0;
    while i < s.len() {
        if i + 8 <= s.len() && !word_needs_escape(word_at(s, i)) {
            i += 8;
            continue;
        }
        n += match ESCAPE[usize::from(s[i])] {
            0 => 0,
            b'u' => 5,
            _ => 1,
        };
        i += 1;
    }
    n
}

/// Whether any byte of `s` needs escaping in a JSON string.
#[inline]
fn needs_escape(s: &[u8]) -> bool {
    if s.len() < 8 {
        return s.iter().any(|&b| ESCAPE[usize::from(b)] != 0);
    }
    let mut i = 0;
    while i + 8 <= s.len() {
        if word_needs_escape(word_at(s, i)) {
            return true;
        }
        i += 8;
    }
    // The last word, overlapping the ones before.
    i < s.len() && word_needs_escape(word_at(s, s.len() - 8))
}

#[inline]
fn put_escaped(s: &[u8], out: &mut impl Sink) {
    if needs_escape(s) {
        put_escaped_slow(s, out);
    } else {
        out.put(s);
    }
}

fn put_escaped_slow(s: &[u8], out: &mut impl Sink) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut run = 0;
    let mut i = 0;
    while i < s.len() {
        if i + 8 <= s.len() {
            let w = word_at(s, i);
            let flagged = w.wrapping_sub(ONES * 0x20) & !w & HIGHS
                | zero_bytes(w ^ (ONES * u64::from(b'"')))
                | zero_bytes(w ^ (ONES * u64::from(b'\\')));
            if flagged == 0 {
                i += 8;
                continue;
            }
            // The lowest flagged byte is exact (each test flags falsely only above a true hit):
            // skip the plain bytes before it.
            i += (flagged.trailing_zeros() / 8) as usize;
        }
        let b = s[i];
        let esc = ESCAPE[usize::from(b)];
        if esc != 0 {
            // The plain run before it and the escape, with one room check.
            if esc == b'u' {
                let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
                out.put_all([&s[run..i], b"\\u00", &hex]);
            } else {
                out.put_all([&s[run..i], &[b'\\', esc]]);
            }
            run = i + 1;
        }
        i += 1;
    }
    out.put(&s[run..]);
}

enum Key {
    Code,
    Language,
    Version,
    Opaque,
    Flag,
    Remark,
    ExtFields,
    Other,
}

impl Key {
    fn from_bytes(key: &[u8]) -> Key {
        match key {
            b"code" => Key::Code,
            b"language" => Key::Language,
            b"version" => Key::Version,
            b"opaque" => Key::Opaque,
            b"flag" => Key::Flag,
            b"remark" => Key::Remark,
            b"extFields" => Key::ExtFields,
            _ => Key::Other,
        }
    }
}

/// What a parse of a JSON header found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parsed {
    pub(crate) fixed: Fixed,
    /// Where the `{` of the last non-empty `extFields` object is; 0 for none.
    pub(crate) ext_at: u32,
    /// The strings that hold escapes: [`Escapes::rewrite`] must run before the header is read
    /// through a [`Command`].
    pub(crate) escapes: Escapes,
}

/// Where the strings that hold escapes are, in text order: the first few exactly, the rest as
/// where to start scanning for them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Escapes {
    /// Opening and closing quote of each recorded string.
    spans: [(u32, u32); 8],
    n: u8,
    /// Bit `i`: span `i` lies in a compacted `extFields` object (see [`compact`]).
    compact: u8,
    /// The opening quote of the first escaped string not recorded.
    rest_from: Option<u32>,
}

impl Escapes {
    #[inline]
    fn note(&mut self, open: usize, close: usize, compact: bool) {
        if self.rest_from.is_some() {
            return;
        }
        match self.spans.get_mut(usize::from(self.n)) {
            Some(slot) => {
                *slot = (open as u32, close as u32);
                self.compact |= u8::from(compact) << self.n;
                self.n += 1;
            }
            None => self.rest_from = Some(open as u32),
        }
    }

    /// Whether any string holds an escape.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.n > 0
    }

    /// Unescapes every such string of `header` in place and marks it (see [`UNESCAPED_START`]),
    /// or, in a compacted `extFields` object, gives it its unescaped length.
    pub(crate) fn rewrite(&self, header: &mut [u8]) {
        for (i, &(open, close)) in self.spans[..usize::from(self.n)].iter().enumerate() {
            let compact = self.compact & (1 << i) != 0;
            rewrite_one(header, open as usize, close as usize, compact);
        }
        if let Some(from) = self.rest_from {
            rewrite_escapes(header, from as usize);
        }
    }
}

/// Unescapes the escaped string between the quotes at `open` and `close` in place and marks it
/// (`compact`: writes its new length before it instead, and pads it with quotes).
fn rewrite_one(buf: &mut [u8], open: usize, close: usize, compact: bool) {
    let end = unescape_in_place(buf, open + 1, close, open + 1);
    mark_unescaped(buf, open, end, close, compact);
}

/// Marks the string whose opening quote is at `open` and closing quote at `close`, now that
/// its unescaped text lies from `open + 1` to `end`: between [`UNESCAPED_START`] and
/// [`UNESCAPED_END`], or (`compact`) with its length before it and padding after it.
#[inline(always)]
fn mark_unescaped(buf: &mut [u8], open: usize, end: usize, close: usize, compact: bool) {
    if compact {
        compact::put_len(buf, open + 1, end - open - 1);
        compact::pad(buf, end, close);
    } else {
        buf[open] = UNESCAPED_START;
        buf[end..=close].fill(UNESCAPED_END);
    }
}

/// Checks a JSON header completely (UTF-8, syntax, types, limits) and reads its fixed fields.
///
/// Headers in one of the two shapes real peers send (Java's alphabetical key order with
/// `serializeTypeCurrentRPC`, and rocketmq-rust's struct order), without whitespace, take a
/// parser specialised for that order; anything else, and anything that surprises it, the
/// general one, which also gives every error.
pub(crate) fn parse(header: &[u8], limits: &Limits) -> Result<Parsed, DecodeError> {
    check_utf8(header)?;
    if let Some(parsed) = fast::parse(header, limits) {
        return Ok(parsed);
    }
    parse_general(header, limits)
}

/// [`parse`] of a header the caller may change, which is then rewritten for reading: escaped
/// strings are unescaped in place and, where the fast parser took the header, the
/// `extFields` object is made a compact length-prefixed block (see [`compact`]; `ext_at` then
/// carries [`COMPACT_EXT`]). Returns the fixed fields and `ext_at` (what [`Parsed`] says
/// beside the escapes, which are done). An error leaves the header as it was.
///
/// The decoder calls its two halves itself ([`parse_in_place_fast`], then
/// [`parse_general_in_place`] if that gives up), so that the fast half's result never meets
/// the general half's in one place in memory (see [`parse_in_place_fast`]).
#[cfg(test)]
pub(crate) fn parse_in_place(
    header: &mut [u8],
    limits: &Limits,
) -> Result<(Fixed, u32), DecodeError> {
    match parse_in_place_fast(header, limits)? {
        Some(found) => Ok(found),
        None => parse_general_in_place(header, limits),
    }
}

/// [`parse_in_place`]'s UTF-8 check and fast parse: `Ok(None)` if the fast parser gave up
/// (the header unchanged), for [`parse_general_in_place`] to take.
///
/// Inlined into the decoder, which handles the two outcomes apart: where one `Result` took
/// either half's `(Fixed, u32)`, it was a stack slot the fast half wrote field by field and
/// the decoder read back in 8-byte words, waiting for those stores (a store-forwarding stall
/// on every JSON decode).
#[inline(always)]
pub(crate) fn parse_in_place_fast(
    header: &mut [u8],
    limits: &Limits,
) -> Result<Option<(Fixed, u32)>, DecodeError> {
    check_utf8(header)?;
    Ok(fast::parse_in_place(header, limits))
}

/// Checks that the header is UTF-8: its ASCII start 64 bytes at a time (see
/// [`scan::ascii_prefix`]), the rest from there with `simdutf8` (SIMD) if 64 bytes or more,
/// else with core's check (whose ASCII path costs less than dispatching). Core's check
/// locates an error.
#[inline]
fn check_utf8(header: &[u8]) -> Result<(), DecodeError> {
    // Most headers are ASCII throughout: 64 bytes at a time with SSE2; the rest from the first
    // block that is not (a character boundary, as everything before it is ASCII).
    let rest = &header[scan::ascii_prefix(header)..];
    let valid = if rest.is_empty() {
        true
    } else if rest.len() >= 64 {
        simdutf8::basic::from_utf8(rest).is_ok()
    } else {
        core::str::from_utf8(rest).is_ok()
    };
    if valid {
        Ok(())
    } else {
        utf8_error(header)
    }
}

#[cold]
fn utf8_error(header: &[u8]) -> Result<(), DecodeError> {
    match core::str::from_utf8(header) {
        Ok(_) => Ok(()),
        Err(e) => Err(DecodeError::Json {
            offset: e.valid_up_to(),
            kind: JsonErrorKind::InvalidUtf8,
        }),
    }
}

/// The general parser (any key order, whitespace, every error) on a header known to be UTF-8.
fn parse_general(header: &[u8], limits: &Limits) -> Result<Parsed, DecodeError> {
    parse_general_parts(header, limits, &mut Found::default())
}

/// Where the general parser found what a reader looks for (beside [`Parsed`]).
#[derive(Clone, Copy, Debug, Default)]
struct Found {
    /// The opening quote of the last `remark` that is a string (read only if the last remark
    /// is one: [`Fixed::has_remark`]).
    remark_at: u32,
    /// That remark's closing quote.
    remark_end: u32,
    /// The closing `}` of the `extFields` object at [`Parsed::ext_at`] (when that is not 0).
    ext_end: u32,
    /// Where the entries of the last `extFields` object are.
    entries: Entries,
}

/// The entries with a value of an `extFields` object as the general parser found them: each
/// key's and value's text as written (a string's between its quotes, a number's or
/// boolean's whole), the first [`Entries::CAPACITY`], and which are escaped strings.
#[derive(Clone, Copy, Debug)]
struct Entries {
    /// Key start, key end, value start, value end.
    spans: [[u32; 4]; Entries::CAPACITY],
    n: usize,
    /// Bit `2i`: entry `i`'s key is escaped; bit `2i + 1`: its value is.
    escaped: u32,
    /// More entries than recorded.
    more: bool,
}

impl Entries {
    /// How many entries are recorded (the 0-allocation promise's 16).
    const CAPACITY: usize = 16;

    /// Records an entry: its key's and its value's text (start, end, whether escaped).
    #[inline]
    fn push(&mut self, key: (usize, usize, bool), value: (usize, usize, bool)) {
        match self.spans.get_mut(self.n) {
            Some(slot) => {
                *slot = [key.0 as u32, key.1 as u32, value.0 as u32, value.1 as u32];
                self.escaped |= (u32::from(key.2) | u32::from(value.2) << 1) << (2 * self.n);
                self.n += 1;
            }
            None => self.more = true,
        }
    }
}

impl Default for Entries {
    fn default() -> Self {
        Entries {
            spans: [[0; 4]; Entries::CAPACITY],
            n: 0,
            escaped: 0,
            more: false,
        }
    }
}

/// [`parse_general`], writing where the remark, the `extFields` object's end and its entries
/// are to `found`.
fn parse_general_parts(
    header: &[u8],
    limits: &Limits,
    found: &mut Found,
) -> Result<Parsed, DecodeError> {
    let mut parser = Parser {
        buf: header,
        pos: 0,
        limits,
        ext_at: 0,
        escapes: Escapes::default(),
        found,
    };
    let fixed = parser.header()?;
    Ok(Parsed {
        fixed,
        ext_at: parser.ext_at,
        escapes: parser.escapes,
    })
}

/// [`parse_in_place`] of a header the fast parser did not take: the general parser checks
/// it, its escaped strings are unescaped in place, and then it is rewritten for reading as the
/// fast parser's headers are, so that reading never scans its JSON again: the remark's place
/// is written over the header's first bytes ([`compact::put_remark_at`]) and the `extFields`
/// object is made compact ([`compact_general`]; not one of [`COMPACT_GENERAL_MAX`] bytes or
/// more, which stays JSON and is read as such). Kept out of line: [`parse_in_place`]'s fast
/// path stays as small as it was.
#[inline(never)]
pub(crate) fn parse_general_in_place(
    header: &mut [u8],
    limits: &Limits,
) -> Result<(Fixed, u32), DecodeError> {
    let mut found = Found::default();
    let parsed = parse_general_parts(header, limits, &mut found)?;
    if parsed.escapes.any() {
        parsed.escapes.rewrite(header);
    }
    let mut ext_at = parsed.ext_at;
    if ext_at != 0 {
        let (open, close) = (ext_at as usize, found.ext_end as usize);
        if close - open < COMPACT_GENERAL_MAX {
            let first = match found.entries.more {
                false => compact_recorded(header, &found.entries, close),
                true => compact_general(header, open, close),
            };
            if let Some(first) = first {
                ext_at = COMPACT_EXT | first as u32;
            }
        }
    }
    if parsed.fixed.has_remark {
        compact::put_remark_at(header, found.remark_at as usize, found.remark_end as usize);
    }
    Ok((parsed.fixed, ext_at))
}

/// Rewrites, from `from` on, every string of a header [`parse`] accepted that holds escapes:
/// its text is unescaped in place and marked (see [`UNESCAPED_START`]), so it can be read
/// without a copy. `from` must be outside any string (an opening quote, as `escape_at` is).
pub(crate) fn rewrite_escapes(buf: &mut [u8], from: usize) {
    let mut pos = from;
    while let Some(q) = memchr::memchr(b'"', &buf[pos..]).map(|i| pos + i) {
        let Some(hit) = memchr::memchr2(b'"', b'\\', &buf[q + 1..]).map(|i| q + 1 + i) else {
            return;
        };
        if buf[hit] == b'"' {
            pos = hit + 1;
            continue;
        }
        // Find the closing quote: every escape is a backslash and one more byte (a `\u`'s hex
        // digits hold neither quote nor backslash).
        let mut at = hit;
        let close = loop {
            match memchr::memchr2(b'"', b'\\', &buf[at..]).map(|i| at + i) {
                Some(i) if buf[i] == b'"' => break i,
                Some(i) => at = i + 2,
                None => return,
            }
        };
        rewrite_one(buf, q, close, false);
        pos = close + 1;
    }
}

/// Unescapes the validated string text `buf[read..end]` to `buf[write..]` (`write <= read`);
/// returns where the text ends. Bytes between that end and `end` are left with garbage the
/// caller overwrites.
fn unescape_in_place(buf: &mut [u8], mut read: usize, end: usize, mut write: usize) -> usize {
    while read < end {
        // The plain run up to the next backslash, sixteen bytes at a time.
        if let Some(&block) = buf.get(read..).and_then(|r| r.first_chunk::<16>()) {
            let m = scan::backslash(&block);
            let n = if m != 0 {
                m.trailing_zeros() as usize
            } else {
                16
            };
            let n = n.min(end - read);
            // Storing the whole block at `write` changes `buf[write..write + 16]`: safe when
            // that ends at or before `read + n` (what is left to read from there on is not
            // touched; what the block holds past the run is garbage before `end`).
            if write + 16 <= read + n {
                buf[write..write + 16].copy_from_slice(&block);
            } else if write != read {
                buf.copy_within(read..read + n, write);
            }
            read += n;
            write += n;
            if n == 16 || read >= end {
                continue;
            }
        } else if buf[read] != b'\\' {
            buf[write] = buf[read];
            read += 1;
            write += 1;
            continue;
        }
        // `buf[read]` is a backslash.
        if let Some(byte) = ascii_u_escape(buf, read) {
            buf[write] = byte;
            write += 1;
            read += 6;
            continue;
        }
        let byte = match buf[read + 1] {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let (c, next) = match unicode_escape(buf, read) {
                    Ok(ok) => ok,
                    // Validated by `parse`; keep a replacement rather than a panic regardless.
                    Err(_) => ('\u{fffd}', (read + 6).min(end)),
                };
                let mut utf8 = [0u8; 4];
                let s = c.encode_utf8(&mut utf8);
                buf[write..write + s.len()].copy_from_slice(s.as_bytes());
                write += s.len();
                read = next;
                continue;
            }
            other => other, // `"`, `\`, `/`
        };
        buf[write] = byte;
        write += 1;
        read += 2;
    }
    write
}

/// The byte of a `\u00XX` escape at `at` whose character is ASCII (the control characters
/// Java escapes this way), or `None` for any other escape.
#[inline(always)]
fn ascii_u_escape(buf: &[u8], at: usize) -> Option<u8> {
    let Some(&w) = buf.get(at..).and_then(|r| r.first_chunk::<8>()) else {
        return ascii_u_escape_short(buf, at);
    };
    let w = u64::from_le_bytes(w);
    if w as u32 != u32::from_le_bytes(*b"\\u00") {
        return None;
    }
    let (hi, lo) = (
        HEX_VALUE[usize::from((w >> 32) as u8)],
        HEX_VALUE[usize::from((w >> 40) as u8)],
    );
    (hi < 8 && lo <= 0xF).then_some(hi << 4 | lo)
}

/// [`ascii_u_escape`] within the last 8 bytes of `buf`.
#[cold]
fn ascii_u_escape_short(buf: &[u8], at: usize) -> Option<u8> {
    match buf.get(at..at + 6)? {
        [b'\\', b'u', b'0', b'0', hi, lo] => {
            let (hi, lo) = (HEX_VALUE[usize::from(*hi)], HEX_VALUE[usize::from(*lo)]);
            (hi < 8 && lo <= 0xF).then_some(hi << 4 | lo)
        }
        _ => None,
    }
}

/// Reads `\uXXXX` (and its low surrogate, if it is a high one) at `at` of `buf`; returns the
/// char and the offset after the escape(s).
fn unicode_escape(buf: &[u8], at: usize) -> PResult<(char, usize)> {
    let first = hex4(buf, at + 2)?;
    let (code, next) = match first {
        0xD800..=0xDBFF => {
            if buf.get(at + 6..at + 8) != Some(b"\\u") {
                return Err(error_at(at, JsonErrorKind::InvalidEscape));
            }
            let low = hex4(buf, at + 8)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return Err(error_at(at, JsonErrorKind::InvalidEscape));
            }
            (
                0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(low) - 0xDC00),
                at + 12,
            )
        }
        0xDC00..=0xDFFF => return Err(error_at(at, JsonErrorKind::InvalidEscape)),
        _ => (u32::from(first), at + 6),
    };
    match char::from_u32(code) {
        Some(c) => Ok((c, next)),
        None => Err(error_at(at, JsonErrorKind::InvalidEscape)),
    }
}

fn hex4(buf: &[u8], at: usize) -> PResult<u16> {
    let Some(digits) = buf.get(at..at + 4) else {
        return Err(error_at(buf.len(), JsonErrorKind::UnexpectedEnd));
    };
    let mut n = 0u16;
    for (i, &d) in digits.iter().enumerate() {
        let v = HEX_VALUE[usize::from(d)];
        if v > 0xF {
            return Err(error_at(at + i, JsonErrorKind::InvalidEscape));
        }
        n = n << 4 | u16::from(v);
    }
    Ok(n)
}

/// Each byte's value as a hex digit, or 0xFF.
static HEX_VALUE: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn error_at(offset: usize, kind: JsonErrorKind) -> DecodeError {
    DecodeError::Json { offset, kind }
}

/// A string [`scan_string`] checked: its text is `buf[start..end]` (escaped as on the wire).
#[derive(Clone, Copy)]
struct Str {
    start: usize,
    end: usize,
    escaped: bool,
}

/// The first `"` or `\\` in `s` at or after `i`: sixteen bytes at a time (see
/// [`scan`]), the last few one at a time.
#[inline(always)]
fn find_quote_or_backslash(s: &[u8], i: usize) -> Option<usize> {
    if let Some(block) = s.get(i..).and_then(|r| r.first_chunk::<16>()) {
        let m = scan::quote_or_backslash(block);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        return find_quote_or_backslash_from(s, i + 16);
    }
    find_quote_or_backslash_from(s, i)
}

/// [`find_quote_or_backslash`] past its first block: two more blocks, then (a long string)
/// `memchr2`, which takes 32 bytes at a time where the CPU can.
fn find_quote_or_backslash_from(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    for _ in 0..2 {
        let Some(block) = s.get(j..).and_then(|r| r.first_chunk::<16>()) else {
            break;
        };
        let m = scan::quote_or_backslash(block);
        if m != 0 {
            return Some(j + m.trailing_zeros() as usize);
        }
        j += 16;
    }
    if s.len() >= j + 16 {
        return memchr::memchr2(b'"', b'\\', &s[j..]).map(|k| j + k);
    }
    // Fewer than 16 bytes left: the last 16 of `s`, without the hits before `j`.
    if let Some(block) = s.last_chunk::<16>() {
        let base = s.len() - 16;
        let from = j.max(base);
        let m = scan::quote_or_backslash(block)
            .checked_shr((from - base) as u32)
            .unwrap_or(0);
        return (m != 0).then(|| from + m.trailing_zeros() as usize);
    }
    while j < s.len() {
        let b = s[j];
        if b == b'"' || b == b'\\' {
            return Some(j);
        }
        j += 1;
    }
    None
}

/// Checks the string whose opening quote is at `open`: every escape valid, the unescaped length
/// within the limit. Returns it and the offset after its closing quote.
#[inline]
fn scan_string(buf: &[u8], open: usize, limits: &Limits) -> PResult<(Str, usize)> {
    scan_string_inline(buf, open, limits)
}

/// [`scan_string`]'s body, for [`Parser::raw_string`] to have it inline whatever the compiler
/// decides for the other callers.
#[inline(always)]
fn scan_string_inline(buf: &[u8], open: usize, limits: &Limits) -> PResult<(Str, usize)> {
    let start = open + 1;
    let mut at = start;
    let mut escaped = false;
    let close = loop {
        let Some(hit) = find_quote_or_backslash(buf, at) else {
            return Err(error_at(buf.len(), JsonErrorKind::UnexpectedEnd));
        };
        if buf[hit] == b'"' {
            break hit;
        }
        escaped = true;
        at = escape_end(buf, hit)?;
    };
    // Unescaping never lengthens a string: only one longer than the limit as written needs
    // its unescaped length.
    if close - start > limits.max_string_len
        && unescaped_len(buf, start, close) > limits.max_string_len
    {
        return Err(DecodeError::StringTooLong {
            offset: open,
            max: limits.max_string_len,
        });
    }
    Ok((
        Str {
            start,
            end: close,
            escaped,
        },
        close + 1,
    ))
}

/// Checks the escape whose backslash is at `at`; returns the offset after it.
#[inline(always)]
fn escape_end(buf: &[u8], at: usize) -> PResult<usize> {
    // `\u00XX`, the escape Java writes for control characters, at once.
    if ascii_u_escape(buf, at).is_some() {
        return Ok(at + 6);
    }
    escape_end_slow(buf, at)
}

/// [`escape_end`] of an escape other than `\u00XX` with `XX` below 0x80.
fn escape_end_slow(buf: &[u8], at: usize) -> PResult<usize> {
    match buf.get(at + 1) {
        Some(b'u') => unicode_escape(buf, at).map(|(_, next)| next),
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(at + 2),
        Some(_) => Err(error_at(at, JsonErrorKind::InvalidEscape)),
        None => Err(error_at(buf.len(), JsonErrorKind::UnexpectedEnd)),
    }
}

/// The unescaped length of the validated string text `buf[start..end]`.
#[cold]
fn unescaped_len(buf: &[u8], start: usize, end: usize) -> usize {
    let mut len = 0;
    let mut at = start;
    while at < end {
        if buf[at] != b'\\' {
            len += 1;
            at += 1;
            continue;
        }
        if buf.get(at + 1) == Some(&b'u') {
            if let Ok((c, next)) = unicode_escape(buf, at) {
                len += c.len_utf8();
                at = next;
                continue;
            }
        }
        len += 1;
        at += 2;
    }
    len
}

/// Calls `f` with the unescaped text of a short escaped string (a known key or language name
/// is at most 23 characters); a longer one is passed as bytes no name matches.
fn with_unescaped<R>(buf: &[u8], s: Str, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut tmp = [0u8; 160];
    let raw = &buf[s.start..s.end];
    if raw.len() > tmp.len() {
        return f(b"\xff");
    }
    tmp[..raw.len()].copy_from_slice(raw);
    let end = unescape_in_place(&mut tmp, 0, raw.len(), 0);
    f(&tmp[..end])
}

struct Parser<'a> {
    /// The header, already known to be UTF-8.
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    ext_at: u32,
    escapes: Escapes,
    found: &'a mut Found,
}

type PResult<T> = core::result::Result<T, DecodeError>;

impl<'a> Parser<'a> {
    fn error(&self, kind: JsonErrorKind) -> DecodeError {
        DecodeError::Json {
            offset: self.pos,
            kind,
        }
    }

    fn unexpected(&self, expected: &'static str) -> DecodeError {
        match self.buf.get(self.pos) {
            Some(&found) => self.error(JsonErrorKind::UnexpectedByte { found, expected }),
            None => self.error(JsonErrorKind::UnexpectedEnd),
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&self) -> PResult<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => Ok(b),
            None => Err(self.error(JsonErrorKind::UnexpectedEnd)),
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8, expected: &'static str) -> PResult<()> {
        if self.buf.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn header(&mut self) -> PResult<Fixed> {
        let mut fixed = Fixed {
            code: 0,
            language: LanguageCode::JAVA,
            version: 0,
            opaque: 0,
            flag: 0,
            has_remark: false,
            has_ext: false,
        };
        self.skip_ws();
        self.expect(b'{', "'{'")?;
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
        } else {
            loop {
                let key = self.key()?;
                self.skip_ws();
                self.expect(b':', "':'")?;
                self.skip_ws();
                match key {
                    Key::Code => fixed.code = self.int("code")?,
                    Key::Version => fixed.version = self.int("version")?,
                    Key::Opaque => fixed.opaque = self.int("opaque")?,
                    Key::Flag => fixed.flag = self.int("flag")?,
                    Key::Language => fixed.language = self.language()?,
                    Key::Remark => {
                        let at = self.pos;
                        fixed.has_remark = self.remark()?;
                        if fixed.has_remark {
                            self.found.remark_at = at as u32;
                            self.found.remark_end = (self.pos - 1) as u32;
                        }
                    }
                    Key::ExtFields => {
                        let at = self.pos;
                        let count = self.ext_fields()?;
                        self.ext_at = if count > 0 { at as u32 } else { 0 };
                        self.found.ext_end = (self.pos - 1) as u32;
                        fixed.has_ext = count > 0;
                    }
                    Key::Other => self.skip_value(1)?,
                }
                self.skip_ws();
                match self.peek()? {
                    b',' => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.unexpected("',' or '}'")),
                }
            }
        }
        self.skip_ws();
        if self.pos != self.buf.len() {
            return Err(self.error(JsonErrorKind::TrailingCharacters));
        }
        Ok(fixed)
    }

    fn key(&mut self) -> PResult<Key> {
        if self.peek()? != b'"' {
            return Err(self.unexpected("a string key"));
        }
        // Fast path: a known key spelled plainly, recognised by its first letter and compared
        // whole (with its closing quote) without scanning.
        let fast = match self.buf.get(self.pos + 1) {
            Some(b'c') => self.known(b"code\"", Key::Code),
            Some(b'e') => self.known(b"extFields\"", Key::ExtFields),
            Some(b'f') => self.known(b"flag\"", Key::Flag),
            Some(b'l') => self.known(b"language\"", Key::Language),
            Some(b'o') => self.known(b"opaque\"", Key::Opaque),
            Some(b'r') => self.known(b"remark\"", Key::Remark),
            Some(b's') => self.known(b"serializeTypeCurrentRPC\"", Key::Other),
            Some(b'v') => self.known(b"version\"", Key::Version),
            _ => None,
        };
        if let Some(key) = fast {
            return Ok(key);
        }
        let s = self.raw_string()?;
        Ok(if s.escaped {
            with_unescaped(self.buf, s, Key::from_bytes)
        } else {
            Key::from_bytes(&self.buf[s.start..s.end])
        })
    }

    /// `key` if the string at `pos` is exactly `"` + `spelled` (which ends with the closing
    /// quote); then `pos` moves past it.
    #[inline]
    fn known(&mut self, spelled: &[u8], key: Key) -> Option<Key> {
        let at = self.pos + 1;
        if self.buf.get(at..at + spelled.len()) == Some(spelled) {
            self.pos = at + spelled.len();
            Some(key)
        } else {
            None
        }
    }

    /// Checks the string at `pos` (which holds `"`), leaving `pos` after its closing quote.
    /// (Out of line, with [`scan_string`] inside it: the general parser calls it from many
    /// places, and an out-of-line `scan_string` would hand its result back through memory.)
    #[inline(never)]
    fn raw_string(&mut self) -> PResult<Str> {
        let open = self.pos;
        let (s, next) = scan_string_inline(self.buf, open, self.limits)?;
        if s.escaped {
            self.escapes.note(open, s.end, false);
        }
        self.pos = next;
        Ok(s)
    }

    fn literal(&mut self, word: &'static [u8]) -> PResult<()> {
        if self.buf.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.unexpected("a JSON value"))
        }
    }

    /// An integer field: a number, a quoted number (fastjson accepts both), or `null` (0).
    fn int(&mut self, field: &'static str) -> PResult<i32> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => {
                let start = self.pos;
                let s = self.raw_string()?;
                let digits = if s.escaped {
                    &[][..]
                } else {
                    &self.buf[s.start..s.end]
                };
                parse_i32(digits).ok_or_else(|| error_at(start, JsonErrorKind::WrongType { field }))
            }
            b'n' => self.literal(b"null").map(|()| 0),
            _ => Err(self.error(JsonErrorKind::WrongType { field })),
        }
    }

    fn number(&mut self) -> PResult<i32> {
        let start = self.pos;
        match number_at(self.buf, start) {
            Ok((n, end)) => {
                self.pos = end;
                Ok(n)
            }
            Err(None) => {
                self.pos = start + usize::from(self.buf[start] == b'-');
                Err(self.unexpected("a digit"))
            }
            Err(Some(e)) => Err(e),
        }
    }

    fn language(&mut self) -> PResult<LanguageCode> {
        match self.peek()? {
            b'"' => {
                let s = self.raw_string()?;
                let lookup = LanguageCode::from_name_bytes;
                let known = if s.escaped {
                    with_unescaped(self.buf, s, lookup)
                } else {
                    lookup(&self.buf[s.start..s.end])
                };
                // fastjson turns a name it does not know into null; OTHER is the closest we have.
                Ok(known.unwrap_or(LanguageCode::OTHER))
            }
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                let n = self.number()?;
                u8::try_from(n)
                    .map(LanguageCode)
                    .map_err(|_| error_at(start, JsonErrorKind::NumberOutOfRange))
            }
            b'n' => self.literal(b"null").map(|()| LanguageCode::JAVA),
            _ => Err(self.error(JsonErrorKind::WrongType { field: "language" })),
        }
    }

    /// A remark (`true`) or `null` (`false`).
    fn remark(&mut self) -> PResult<bool> {
        match self.peek()? {
            b'"' => self.raw_string().map(|_| true),
            b'n' => self.literal(b"null").map(|()| false),
            _ => Err(self.error(JsonErrorKind::WrongType { field: "remark" })),
        }
    }

    /// Checks an `extFields` object (or `null`); returns how many entries it holds (`null`
    /// values not counted: Java's map holds null, the same as absent).
    fn ext_fields(&mut self) -> PResult<usize> {
        match self.peek()? {
            b'{' => {}
            b'n' => return self.literal(b"null").map(|()| 0),
            _ => return Err(self.error(JsonErrorKind::WrongType { field: "extFields" })),
        }
        self.pos += 1;
        let mut count = 0;
        // The last object's entries are the ones kept (no need to clear the spans).
        let entries = &mut self.found.entries;
        (entries.n, entries.escaped, entries.more) = (0, 0, false);
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(count);
        }
        loop {
            if self.peek()? != b'"' {
                return Err(self.unexpected("a string key"));
            }
            // The text's place from `pos` before and after (not from the `Str` just returned
            // through memory: a wide load of its narrow stores would wait for them).
            let key_start = self.pos + 1;
            let key_escaped = self.raw_string()?.escaped;
            let key = (key_start, self.pos - 1, key_escaped);
            self.skip_ws();
            self.expect(b':', "':'")?;
            self.skip_ws();
            let present = match self.peek()? {
                b'"' => {
                    let start = self.pos + 1;
                    let escaped = self.raw_string()?.escaped;
                    self.found.entries.push(key, (start, self.pos - 1, escaped));
                    true
                }
                b'n' => self.literal(b"null").map(|()| false)?,
                // fastjson stores a number or boolean as its text.
                b'-' | b'0'..=b'9' | b't' | b'f' => {
                    let start = self.pos;
                    self.skip_scalar()?;
                    if self.pos - start > self.limits.max_string_len {
                        return Err(DecodeError::StringTooLong {
                            offset: start,
                            max: self.limits.max_string_len,
                        });
                    }
                    self.found.entries.push(key, (start, self.pos, false));
                    true
                }
                _ => return Err(self.error(JsonErrorKind::WrongType { field: "extFields" })),
            };
            if present {
                if count == self.limits.max_ext_fields {
                    return Err(DecodeError::TooManyExtFields {
                        max: self.limits.max_ext_fields,
                    });
                }
                count += 1;
            }
            self.skip_ws();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.skip_ws();
                }
                b'}' => {
                    self.pos += 1;
                    return Ok(count);
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }

    /// Skips a number or `true`/`false`/`null`.
    fn skip_scalar(&mut self) -> PResult<()> {
        match self.peek()? {
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                self.pos += 1;
                while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') =
                    self.buf.get(self.pos)
                {
                    self.pos += 1;
                }
                if self.buf[start..self.pos].iter().any(u8::is_ascii_digit) {
                    Ok(())
                } else {
                    Err(self.unexpected("a digit"))
                }
            }
            _ => Err(self.unexpected("a JSON value")),
        }
    }

    /// Skips any value, nested at most `max_json_depth` levels below the header object.
    fn skip_value(&mut self, depth: usize) -> PResult<()> {
        match self.peek()? {
            b'"' => self.raw_string().map(|_| ()),
            open @ (b'{' | b'[') => {
                if depth >= self.limits.max_json_depth {
                    return Err(self.error(JsonErrorKind::TooDeep));
                }
                let close = if open == b'{' { b'}' } else { b']' };
                self.pos += 1;
                self.skip_ws();
                if self.peek()? == close {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        if self.peek()? != b'"' {
                            return Err(self.unexpected("a string key"));
                        }
                        self.raw_string()?;
                        self.skip_ws();
                        self.expect(b':', "':'")?;
                        self.skip_ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.peek()? {
                        b',' => {
                            self.pos += 1;
                            self.skip_ws();
                        }
                        b if b == close => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(self.unexpected("',' or a closing bracket")),
                    }
                }
            }
            _ => self.skip_scalar(),
        }
    }
}

/// The integer at `start` (which holds `-` or a digit) and the offset after it. `Err(None)`:
/// no digit where one must be (the caller locates it).
#[inline]
fn number_at(buf: &[u8], start: usize) -> Result<(i32, usize), Option<DecodeError>> {
    let neg = buf[start] == b'-';
    let digits = start + usize::from(neg);
    let mut end = digits;
    let mut n: u64 = 0;
    while end < buf.len() {
        let d = buf[end].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        // Saturates instead of overflowing; anything past 10 digits is refused below.
        n = n.saturating_mul(10).saturating_add(u64::from(d));
        end += 1;
    }
    if end == digits {
        return Err(None);
    }
    if let Some(b'.' | b'e' | b'E') = buf.get(end) {
        return Err(Some(error_at(start, JsonErrorKind::NumberOutOfRange)));
    }
    let limit = if neg { 1u64 << 31 } else { (1u64 << 31) - 1 };
    if n > limit {
        return Err(Some(error_at(start, JsonErrorKind::NumberOutOfRange)));
    }
    Ok((
        if neg {
            (n as i64).wrapping_neg() as i32
        } else {
            n as i32
        },
        end,
    ))
}

/// The longest `extFields` object [`compact_general`] rewrites, plus one: every string of a
/// shorter one is shorter too, so its length fits the compact form's long slot, whose first
/// byte is below [`COMPACT_SKIP`] (a value's length can follow its key's text directly there,
/// where a skip would be looked for).
const COMPACT_GENERAL_MAX: usize = compact::MAX_LEN + 1;

/// Rewrites the `extFields` object from its `{` at `open` to its `}` at `close`, checked by
/// the general parser and its escaped strings rewritten ([`Escapes::rewrite`]), in the compact
/// form (see [`compact`]): each string or scalar's text keeps its place and gets its length in
/// the two bytes before it; what lies between one text and the next length (quotes,
/// whitespace, `:` and `,`, entries whose value is `null`, the rewritten strings' padding)
/// becomes `"`s or a [`COMPACT_SKIP`] over it; the `}` stays. Returns where the first
/// entry's key length is (what [`COMPACT_EXT`] then carries), or `None` if no entry has a
/// value (nothing is written then).
///
/// Every length slot lies within the bytes it replaces: two bytes before a string's text are
/// its opening quote and the byte before that (`{`, `,`, `:` or whitespace); before a
/// scalar's, at least its key's closing quote and the `:`.
fn compact_general(buf: &mut [u8], open: usize, close: usize) -> Option<usize> {
    debug_assert!(close - open < COMPACT_GENERAL_MAX && buf[open] == b'{' && buf[close] == b'}');
    let mut first = None;
    // The end of the last text written (where what must be stepped over starts).
    let mut gap_from = 0;
    let mut p = open + 1;
    loop {
        p = skip_ws_at(buf, p);
        if buf[p] == b'}' {
            break;
        }
        let (key, after_key) = text_at(buf, p);
        p = skip_ws_at(buf, after_key);
        debug_assert_eq!(buf[p], b':');
        p = skip_ws_at(buf, p + 1);
        let value = match buf[p] {
            b'n' => {
                p += 4;
                None
            }
            b'"' | UNESCAPED_START => {
                let (value, after) = text_at(buf, p);
                p = after;
                Some(value)
            }
            _ => {
                let end = scalar_end_at(buf, p);
                let value = (p, end);
                p = end;
                Some(value)
            }
        };
        if let Some((value_start, value_end)) = value {
            let (key_start, key_end) = key;
            match first {
                None => first = Some(key_start - 2),
                Some(_) => fill_gap(buf, gap_from, key_start - 2),
            }
            compact::put_len(buf, key_start, key_end - key_start);
            fill_gap(buf, key_end, value_start - 2);
            compact::put_len(buf, value_start, value_end - value_start);
            gap_from = value_end;
        }
        p = skip_ws_at(buf, p);
        if buf[p] == b',' {
            p += 1;
        }
    }
    first?;
    fill_gap(buf, gap_from, close);
    first
}

/// [`compact_general`] of an object whose entries the parser recorded (`entries`, none
/// left out), its `}` at `close`: no scan, but of the padding after an unescaped string's text.
fn compact_recorded(buf: &mut [u8], entries: &Entries, close: usize) -> Option<usize> {
    // The end of an escaped string's text once unescaped: the first `UNESCAPED_END`.
    let text_end = |buf: &[u8], start: usize, escaped: bool, end: usize| -> usize {
        match escaped {
            false => end,
            true => start + memchr::memchr(UNESCAPED_END, &buf[start..end]).unwrap_or(end - start),
        }
    };
    let mut gap_from = 0;
    for (i, &[key_start, key_end, value_start, value_end]) in
        entries.spans[..entries.n].iter().enumerate()
    {
        let (key_start, value_start) = (key_start as usize, value_start as usize);
        let key_end = text_end(
            buf,
            key_start,
            entries.escaped >> (2 * i) & 1 != 0,
            key_end as usize,
        );
        let value_end = text_end(
            buf,
            value_start,
            entries.escaped >> (2 * i + 1) & 1 != 0,
            value_end as usize,
        );
        if i > 0 {
            fill_gap(buf, gap_from, key_start - 2);
        }
        compact::put_len(buf, key_start, key_end - key_start);
        fill_gap(buf, key_end, value_start - 2);
        compact::put_len(buf, value_start, value_end - value_start);
        gap_from = value_end;
    }
    let &[first, ..] = entries.spans.get(..entries.n)?.first()?;
    fill_gap(buf, gap_from, close);
    Some(first as usize - 2)
}

/// Makes `buf[from..to]` read as nothing in a compacted object: up to two `"`s, or a
/// [`COMPACT_SKIP`] and its length (big-endian) over it.
#[inline]
fn fill_gap(buf: &mut [u8], from: usize, to: usize) {
    let n = to - from;
    if n <= 2 {
        if n > 0 {
            buf[from] = b'"';
            buf[to - 1] = b'"';
        }
    } else {
        let [hi, lo] = (n as u16).to_be_bytes();
        buf[from..from + 3].copy_from_slice(&[compact::COMPACT_SKIP, hi, lo]);
    }
}

/// The first byte at or after `p` that is not JSON whitespace (a checked header's end is not).
fn skip_ws_at(buf: &[u8], mut p: usize) -> usize {
    while let b' ' | b'\n' | b'\r' | b'\t' = buf[p] {
        p += 1;
    }
    p
}

/// The text of the checked, rewritten string at `p` (a plain `"…"` or an unescaped one, see
/// [`UNESCAPED_START`]) as (start, end), and where the string ends.
fn text_at(buf: &[u8], p: usize) -> ((usize, usize), usize) {
    if buf[p] == b'"' {
        let end = p + 1 + memchr::memchr(b'"', &buf[p + 1..]).unwrap_or(0);
        ((p + 1, end), end + 1)
    } else {
        let end = p + 1 + memchr::memchr(UNESCAPED_END, &buf[p + 1..]).unwrap_or(0);
        let mut after = end;
        while buf[after] == UNESCAPED_END {
            after += 1;
        }
        ((p + 1, end), after)
    }
}

/// The end of the checked number or `true`/`false` at `p`.
fn scalar_end_at(buf: &[u8], mut p: usize) -> usize {
    while !matches!(buf[p], b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
        p += 1;
    }
    p
}

/// The compact form of a JSON `extFields` object, written in place by the fast parser when
/// it may change the header ([`parse_in_place`]); read by the command (see
/// [`COMPACT_EXT`](crate::codec::command::COMPACT_EXT)).
///
/// Every string of the object keeps its place; the two bytes just before its text (`{"`, `,"`
/// or `:"` in the whitespace-free shape the fast parser takes) become its length, big-endian
/// with the high bit set (so at most [`MAX_LEN`]); a closing quote stays `"`; the padding an
/// unescaped string leaves becomes `"` if it is one byte, else starts with a [`COMPACT_SKIP`]
/// and its length (see [`pad`]); the closing `}` stays. A reader takes a length, the text,
/// jumps a skip, skips `"`s, and stops at `}`.
pub(crate) mod compact {
    use crate::codec::command::{short_entry, slot_len};
    pub(crate) use crate::codec::command::{COMPACT_SKIP, REMARK_AT, SHORT_SLOT};

    /// The longest string the form can hold.
    pub(crate) const MAX_LEN: usize = 0x3FFF;

    /// Writes `len` as the length of the text starting at `text` (at least 2: a string of
    /// the object follows its `{`, `,` or `:` and its opening quote).
    #[inline(always)]
    pub(crate) fn put_len(buf: &mut [u8], text: usize, len: usize) {
        debug_assert!(len <= MAX_LEN && text >= 2);
        if let Some(slot) = buf.get_mut(text.wrapping_sub(2)..text) {
            slot.copy_from_slice(&(0x8000 | len as u16).to_be_bytes());
        }
    }

    /// Compacts the entry whose key's text starts at `key` (at least 2) and has `key_len`
    /// bytes, followed by `":"` and the value's text of `value_len` bytes (both at most
    /// [`MAX_LEN`], neither escaped): a short key slot (`0xC0 | key length`, value length) if
    /// both fit, so that a reader takes both at once (the value's `:"` then stays), else the
    /// two lengths as [`put_len`] writes them.
    #[inline(always)]
    pub(crate) fn put_entry(buf: &mut [u8], key: usize, key_len: usize, value_len: usize) {
        if key_len < 64 && value_len < 256 {
            if let Some(slot) = buf.get_mut(key.wrapping_sub(2)..key) {
                slot.copy_from_slice(&[SHORT_SLOT | key_len as u8, value_len as u8]);
            }
        } else {
            put_len(buf, key, key_len);
            put_len(buf, key + key_len + 3, value_len);
        }
    }

    /// Fills what follows a string's unescaped text, from `text_end` up to and including its
    /// closing quote at `close`: with `"` if that is at most 2 bytes, else with a
    /// [`COMPACT_SKIP`] over it (the rest keeps whatever it held).
    #[inline]
    pub(crate) fn pad(buf: &mut [u8], text_end: usize, close: usize) {
        let n = close + 1 - text_end;
        if n <= 2 {
            buf[text_end..=close].fill(b'"');
        } else {
            let [hi, lo] = (n as u16).to_be_bytes();
            buf[text_end..text_end + 3].copy_from_slice(&[COMPACT_SKIP, hi, lo]);
        }
    }

    /// Writes where the remark's opening quote (`at`) and closing quote (`close`, as
    /// written: an escaped remark's text ends before it) are over the header's first seven
    /// bytes (at least `{"code"` or `{"remar`, which the parser checked and nothing reads
    /// again), so the command finds the remark without a search.
    #[inline]
    pub(crate) fn put_remark_at(buf: &mut [u8], at: usize, close: usize) {
        debug_assert!(at < close && close <= 0x00FF_FFFF);
        if let Some(dir) = buf.get_mut(..7) {
            let [_, a, b, c] = (at as u32).to_be_bytes();
            let [_, d, e, f] = (close as u32).to_be_bytes();
            dir.copy_from_slice(&[REMARK_AT, a, b, c, d, e, f]);
        }
    }

    /// Puts back the first `strings` strings compacted from the object at `at` (keys and
    /// values alternating, lengths as on the wire; an entry with a short key slot counts as
    /// two, its value's `:"` never written over).
    pub(crate) fn undo(buf: &mut [u8], at: usize, strings: usize) {
        let mut p = at;
        let mut i = 0;
        while i < strings {
            let (hi, lo) = (buf[p], buf[p + 1]);
            buf[p] = match i {
                0 => b'{',
                _ if i % 2 == 1 => b':',
                _ => b',',
            };
            buf[p + 1] = b'"';
            // The text, then its closing quote; the next string's two bytes follow.
            if hi >= SHORT_SLOT {
                // A short key slot: the key, `":"`, the value, its `"`.
                p += short_entry(hi, lo).2 + 1;
                i += 2;
            } else {
                p += 2 + slot_len(hi, lo) + 1;
                i += 1;
            }
        }
    }
}

/// The integer at `pos` for the fast parser: an optional `-`, then 1 to 10 ASCII digits
/// (leading zeros allowed) within `i32`, and the offset after it. `None` for no digit, more
/// than 10 digits, or a number outside `i32`; what follows the digits is the caller's to
/// check (what it takes, `number_at` takes the same where no fraction or exponent follows).
///
/// Where the header holds eleven bytes from the first digit on (all but a number at its very
/// end), they are taken as one array, so that the loop over them is unrolled: no bounds check
/// and no counter, and each possible length is its own exit, so that a header shape seen
/// before has its numbers' ends predicted (a data-dependent end, as the position of the
/// first non-digit found in a word, would make every field after the number wait for it).
#[inline(always)]
fn int_at(buf: &[u8], pos: usize) -> Option<(i32, usize)> {
    let neg = buf.get(pos) == Some(&b'-');
    let start = pos + usize::from(neg);
    let (n, len) = match buf.get(start..).and_then(|r| r.first_chunk::<11>()) {
        Some(digits) => {
            let (mut n, mut len) = (0u64, 0);
            for &b in digits {
                let d = b.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                n = n * 10 + u64::from(d);
                len += 1;
            }
            (n, len)
        }
        None => digits_near_end(buf, start),
    };
    if len == 0 || len > 10 {
        return None;
    }
    let n = if neg { -(n as i64) } else { n as i64 };
    Some((i32::try_from(n).ok()?, start + len))
}

/// [`int_at`]'s digits where fewer than eleven bytes are left: their value (wrapping past
/// `u64`, where they are too many anyway) and how many: one at a time (the Java order's
/// last field, `version`, always comes here).
#[inline(always)]
fn digits_near_end(buf: &[u8], start: usize) -> (u64, usize) {
    let (mut n, mut len) = (0u64, 0);
    while let Some(&b @ b'0'..=b'9') = buf.get(start + len) {
        n = n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        len += 1;
    }
    (n, len)
}

/// The parser for the two key orders real peers send, with no whitespace. It answers `None`
/// at the first byte it did not expect (including every error), and the general parser starts
/// over; so it never decides an error, and what it accepts the general parser accepts the same.
mod fast {
    use super::{
        ascii_u_escape, compact, find_quote_or_backslash, int_at, mark_unescaped, scan,
        scan_string, sink, unicode_escape, zero_bytes, Escapes, Fixed, LanguageCode, Limits,
        Parsed, COMPACT_EXT, HEX_VALUE, ONES,
    };
    use bytes::buf::UninitSlice;

    /// The header: read only, or (`COMPACT`) to be compacted as it is parsed.
    pub(super) trait Text {
        const COMPACT: bool;
        fn bytes(&self) -> &[u8];
        fn bytes_mut(&mut self) -> &mut [u8];
    }

    impl Text for &[u8] {
        const COMPACT: bool = false;
        #[inline(always)]
        fn bytes(&self) -> &[u8] {
            self
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            unreachable!("a read-only header is never compacted")
        }
    }

    impl Text for &mut [u8] {
        const COMPACT: bool = true;
        #[inline(always)]
        fn bytes(&self) -> &[u8] {
            self
        }
        #[inline(always)]
        fn bytes_mut(&mut self) -> &mut [u8] {
            self
        }
    }

    struct Cursor<'a, T> {
        buf: T,
        pos: usize,
        limits: &'a Limits,
        escapes: Escapes,
        /// Inside the `extFields` object being compacted.
        in_ext: bool,
        /// How many of its strings are compacted (to undo if the parse fails later).
        compacted: usize,
        /// The opening quote of the (non-null) remark; 0 for none.
        remark_at: usize,
        /// Its closing quote.
        remark_end: usize,
        /// Escaped strings of the `extFields` object unescaped as they were checked (when
        /// compacting; made at the first one).
        unescaped: Option<Unescaped>,
    }

    impl<'a, T> Cursor<'a, T> {
        #[inline(always)]
        fn new(buf: T, limits: &'a Limits) -> Self {
            Cursor {
                buf,
                pos: 0,
                limits,
                escapes: Escapes::default(),
                in_ext: false,
                compacted: 0,
                remark_at: 0,
                remark_end: 0,
                unescaped: None,
            }
        }
    }

    /// The scratch buffer's size: zeroed at the first escaped string (inline stores, where a
    /// larger one takes a `memset` call), room for the properties Java sends with a message.
    const SCRATCH: usize = 128;

    /// Escaped strings unescaped into a scratch buffer while they were checked, to be written
    /// in place once the whole header is accepted (until then the header keeps them as they
    /// were, so that giving up needs no undoing them). What does not fit is unescaped in
    /// place afterwards, as [`Escapes`] says.
    struct Unescaped {
        text: [u8; SCRATCH],
        used: usize,
        /// Opening and closing quote of each string, where its text is in `text`, its length.
        strings: [(u32, u32, u16, u16); 4],
        n: usize,
        /// Bit `i`: string `i` is the remark, marked as [`Escapes::rewrite`] marks it (see
        /// [`mark_unescaped`]); the others are strings of the compacted `extFields` object.
        marked: u8,
    }

    impl Unescaped {
        fn new() -> Unescaped {
            Unescaped {
                text: [0; SCRATCH],
                used: 0,
                strings: [(0, 0, 0, 0); 4],
                n: 0,
                marked: 0,
            }
        }

        /// The scratch (made at the first escaped string), if it can take one more string.
        #[inline(always)]
        fn room(scratch: &mut Option<Unescaped>) -> Option<&mut Unescaped> {
            let u = scratch.get_or_insert_with(Unescaped::new);
            (u.n < u.strings.len()).then_some(u)
        }

        /// Records the string whose quotes are at `open` and `close` and whose text was just
        /// unescaped into `text[used..end]`; returns `close`. `None` (nothing recorded) if the
        /// string as written is too long to compact or its text longer than `max`.
        #[inline(always)]
        fn record(&mut self, open: usize, close: usize, end: usize, max: usize) -> Option<usize> {
            let len = end - self.used;
            if close - open - 1 > compact::MAX_LEN || len > max {
                return None;
            }
            self.strings[self.n] = (open as u32, close as u32, self.used as u16, len as u16);
            self.n += 1;
            self.used = end;
            Some(close)
        }

        /// Writes each string's unescaped text over it, its length before it and the padding
        /// after it (see [`compact`]); the remark's between its marks.
        fn write(&self, buf: &mut [u8]) {
            for (i, &(open, close, at, len)) in self.strings[..self.n].iter().enumerate() {
                let (text, close) = (open as usize + 1, close as usize);
                let (at, len) = (usize::from(at), usize::from(len));
                copy_exact(&self.text[at..at + len], &mut buf[text..text + len]);
                let compact = self.marked & (1 << i) == 0;
                mark_unescaped(buf, text - 1, text + len, close, compact);
            }
        }
    }

    /// Copies `src` to `dst` (of one length, at most a string's) without a call: 16-byte
    /// pieces and then the last 16 bytes (overlapping the piece before); up to 16 bytes as
    /// the encoders copy a short string ([`sink::copy_small`]). Nothing is written past `dst`.
    #[inline(always)]
    fn copy_exact(src: &[u8], dst: &mut [u8]) {
        let n = src.len().min(dst.len());
        let (src, dst) = (&src[..n], &mut dst[..n]);
        if n <= 16 {
            return sink::copy_small(UninitSlice::new(dst), src);
        }
        for (d, s) in dst.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
            d.copy_from_slice(s);
        }
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    }

    /// Checks the string text from `r` on (up to its closing quote) and unescapes it to
    /// `out[w..]`; returns the closing quote and where the text ends in `out`. `None` for an
    /// invalid escape, a string running to the end of `buf`, or one `out` has no room for
    /// (the caller then takes the general path, which gives any error).
    #[inline]
    fn unescape_into(
        buf: &[u8],
        mut r: usize,
        out: &mut [u8],
        mut w: usize,
    ) -> Option<(usize, usize)> {
        loop {
            let block = buf.get(r..)?.first_chunk::<16>()?;
            let m = scan::quote_or_backslash(block);
            // The whole block, of which only the plain run counts (the rest is overwritten).
            *out.get_mut(w..)?.first_chunk_mut::<16>()? = *block;
            if m == 0 {
                r += 16;
                w += 16;
                continue;
            }
            let n = m.trailing_zeros() as usize;
            r += n;
            w += n;
            if buf[r] == b'"' {
                return Some((r, w));
            }
            if let Some(byte) = ascii_u_escape(buf, r) {
                out[w] = byte;
                w += 1;
                r += 6;
                continue;
            }
            let byte = match *buf.get(r + 1)? {
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b @ (b'"' | b'\\' | b'/') => b,
                b'u' => {
                    let (c, next) = unicode_escape(buf, r).ok()?;
                    let mut utf8 = [0u8; 4];
                    let s = c.encode_utf8(&mut utf8);
                    out.get_mut(w..w + s.len())?.copy_from_slice(s.as_bytes());
                    w += s.len();
                    r = next;
                    continue;
                }
                _ => return None,
            };
            out[w] = byte;
            w += 1;
            r += 2;
        }
    }

    /// Copies `src[from..to]` to `out[w..]`, sixteen bytes at a time (what a block copies past
    /// `to` lands past `w + to - from`, which the caller overwrites or never reads). `None` if
    /// `out` has no room.
    #[inline(always)]
    fn copy_run(src: &[u8], from: usize, to: usize, out: &mut [u8], w: usize) -> Option<()> {
        let n = to - from;
        let mut k = 0;
        while k < n {
            let (Some(s), Some(d)) = (
                src.get(from + k..).and_then(|r| r.first_chunk::<16>()),
                out.get_mut(w + k..).and_then(|r| r.first_chunk_mut::<16>()),
            ) else {
                out.get_mut(w + k..w + n)?
                    .copy_from_slice(src.get(from + k..to)?);
                return Some(());
            };
            *d = *s;
            k += 16;
        }
        Some(())
    }

    /// Unescapes the string text from `r` on, whose first quote or backslash at or after `r`
    /// is at `at` (the hit `hits` gave last), to `out[w..]`; returns the closing quote and
    /// where the text ends in `out`, `hits` then after the closing quote. `None` for an
    /// invalid escape, a string running to the end of `buf`, or one `out` has no room for.
    ///
    /// Each hit is a backslash or the closing quote, popped from `hits` (kept in registers
    /// here): the run before it is one 16-byte copy when short, a `\u00XX` is one 8-byte
    /// load; other escapes take [`other_escape`].
    #[inline(always)]
    fn unescape_hits_into(
        buf: &[u8],
        hits: &mut scan::Hits,
        mut r: usize,
        mut at: usize,
        out: &mut [u8; SCRATCH],
        mut w: usize,
    ) -> Option<(usize, usize)> {
        let mut h = *hits;
        let close = loop {
            let n = at - r;
            // The common step at once: a run of at most 32 bytes, then the closing quote or a
            // `\u00XX` (the escape Java writes for control characters), with every byte it
            // reads in one 40-byte window of `buf` and every byte it writes in 33 of `out`
            // (`n <= 32` keeps the escape's 8 bytes in the window).
            // (Bounding `w` first lets the compiler drop `out`'s own checks.)
            if n <= 32 && w <= SCRATCH - 33 {
                if let (Some(src), Some(dst)) = (
                    buf.get(r..).and_then(|s| s.first_chunk::<40>()),
                    out.get_mut(w..).and_then(|d| d.first_chunk_mut::<33>()),
                ) {
                    // The run, 16 bytes at a time (what lands past it is overwritten next).
                    let mut run = [0u8; 16];
                    run.copy_from_slice(&src[..16]);
                    dst[..16].copy_from_slice(&run);
                    if n > 16 {
                        run.copy_from_slice(&src[16..32]);
                        dst[16..32].copy_from_slice(&run);
                    }
                    let mut e = [0u8; 8];
                    e.copy_from_slice(&src[n..n + 8]);
                    let e = u64::from_le_bytes(e);
                    if e as u8 == b'"' {
                        w += n;
                        break at;
                    }
                    // `\u00`, a high digit `0`..`7` (its low three bits left in `x`'s fifth
                    // byte), a hex digit.
                    let x = e ^ U00_WANT;
                    let lo = HEX_VALUE[usize::from((e >> 40) as u8)];
                    if x & U00_MASK == 0 && lo <= 0xF {
                        dst[n] = ((x >> 28) as u8) | lo;
                        w += n + 1;
                        r = at + 6;
                        at = h.next(buf)?;
                        continue;
                    }
                }
            }
            match (
                buf.get(r..).and_then(|s| s.first_chunk::<16>()),
                out.get_mut(w..).and_then(|d| d.first_chunk_mut::<16>()),
            ) {
                (Some(s), Some(d)) if n <= 16 => *d = *s,
                _ => copy_run(buf, r, at, out, w)?,
            }
            w += n;
            let e = match buf.get(at..).and_then(|s| s.first_chunk::<8>()) {
                Some(e) => u64::from_le_bytes(*e),
                None if buf.get(at) == Some(&b'"') => break at,
                None => u64::from(*buf.get(at)?),
            };
            if e as u8 == b'"' {
                break at;
            }
            let (hi, lo) = (
                HEX_VALUE[usize::from((e >> 32) as u8)],
                HEX_VALUE[usize::from((e >> 40) as u8)],
            );
            if e as u32 == u32::from_le_bytes(*b"\\u00") && hi < 8 && lo <= 0xF {
                *out.get_mut(w)? = hi << 4 | lo;
                w += 1;
                r = at + 6;
            } else {
                let (next, written, pops) = other_escape(buf, at, out, w)?;
                for _ in 0..pops {
                    h.next(buf)?;
                }
                (r, w) = (next, written);
            }
            at = h.next(buf)?;
        };
        *hits = h;
        Some((close, w))
    }

    /// `\u00` then a digit `0`..`7` (the high digit of an ASCII character), as the first five
    /// bytes of a little-endian word: [`U00_MASK`] keeps what [`U00_WANT`] says.
    const U00_WANT: u64 = u64::from_le_bytes(*b"\\u000\0\0\0");
    /// See [`U00_WANT`]: all of the first four bytes, the fifth's top five bits.
    const U00_MASK: u64 = 0x0000_00F8_FFFF_FFFF;

    /// The escape at `at` other than `\u00XX` (below 0x80), unescaped to `out[w..]`: where
    /// it ends, where its text ends in `out`, and how many hits it holds past its backslash
    /// (the escaped `"` or `\\`, a surrogate pair's second backslash).
    #[cold]
    fn other_escape(
        buf: &[u8],
        at: usize,
        out: &mut [u8],
        w: usize,
    ) -> Option<(usize, usize, usize)> {
        let byte = match *buf.get(at + 1)? {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'/' => b'/',
            b @ (b'"' | b'\\') => {
                *out.get_mut(w)? = b;
                return Some((at + 2, w + 1, 1));
            }
            b'u' => {
                let (c, next) = unicode_escape(buf, at).ok()?;
                let mut utf8 = [0u8; 4];
                let s = c.encode_utf8(&mut utf8);
                out.get_mut(w..w + s.len())?.copy_from_slice(s.as_bytes());
                return Some((next, w + s.len(), usize::from(next == at + 12)));
            }
            _ => return None,
        };
        *out.get_mut(w)? = byte;
        Some((at + 2, w + 1, 0))
    }

    /// An entry's key ending: `":"`, read as the first three bytes of a little-endian word.
    const COLON: u32 = u32::from_le_bytes(*b"\":\"\0");
    /// An entry's value ending with another entry after it: `","`.
    const COMMA: u32 = u32::from_le_bytes(*b"\",\"\0");
    /// The last entry's value ending the object: `"}`, the first two bytes.
    const CLOSE: u32 = u32::from_le_bytes(*b"\"}\0\0");

    /// The entries of an `extFields` object that are each four quotes of the block `hits`
    /// holds, `"k":"v"` followed by `,"` or `}`, with no escape and neither string longer
    /// than `max`, from the key whose opening quote is at `*open` (the next hit, at least 1)
    /// on: compacted if the header may change. Returns how many, and the offset after the
    /// object's `}` if it ended; else `*open` and `hits` are at the next entry, for the
    /// string-by-string walk.
    ///
    /// The quotes come from popping bits, so no entry waits for the one before. Every byte
    /// an entry reads or writes lies in the block and the byte before it, taken as one
    /// 72-byte window (so the offsets, bit numbers below 64, need no bounds check); a block
    /// too near the header's end for that takes [`quick_entries_checked`].
    #[inline(always)]
    fn quick_entries<T: Text>(
        buf: &mut T,
        hits: &mut scan::Hits,
        open: &mut usize,
        max: usize,
    ) -> (usize, Option<usize>) {
        let base = hits.base();
        // `win[i]` is the byte at `base - 1 + i`; bit `t` of the block is `win[t + 1]`.
        let mut copy;
        let win: &mut [u8; 72] = if T::COMPACT {
            match buf
                .bytes_mut()
                .get_mut(base.wrapping_sub(1)..)
                .and_then(|r| r.first_chunk_mut::<72>())
            {
                Some(win) => win,
                None => return quick_entries_checked(buf, hits, open, max),
            }
        } else {
            match buf
                .bytes()
                .get(base.wrapping_sub(1)..)
                .and_then(|r| r.first_chunk::<72>())
            {
                Some(win) => {
                    copy = *win;
                    &mut copy
                }
                None => return quick_entries_checked(buf, hits, open, max),
            }
        };
        let mut n = 0;
        let mut p = *open;
        let mut word = hits.word();
        let end = loop {
            let w1 = word & word.wrapping_sub(1);
            let w2 = w1 & w1.wrapping_sub(1);
            let w3 = w2 & w2.wrapping_sub(1);
            if w3 == 0 {
                break None;
            }
            // The key's opening quote (`p`), its closing quote, the value's closing quote.
            let tp = (word.trailing_zeros() & 63) as usize;
            let tk = (w1.trailing_zeros() & 63) as usize;
            let tv = (w3.trailing_zeros() & 63) as usize;
            let word4 = |t: usize| {
                let mut b = [0u8; 4];
                b.copy_from_slice(&win[t + 1..t + 5]);
                u32::from_le_bytes(b)
            };
            let (k4, v4) = (word4(tk), word4(tv));
            // The value's opening quote is at `tk + 2` (if `k4` is right).
            let (klen, vlen) = (tk.wrapping_sub(tp + 1), tv.wrapping_sub(tk + 3));
            let more = v4 & 0xFF_FFFF == COMMA;
            if k4 & 0xFF_FFFF != COLON || klen.max(vlen) > max || !(more || v4 & 0xFFFF == CLOSE) {
                break None;
            }
            if T::COMPACT {
                // (`tp + 2` is the key's text in `win`, at most 65: no bounds check is left.)
                compact::put_entry(win, tp + 2, klen, vlen);
            }
            n += 1;
            word = w3 & w3.wrapping_sub(1);
            p = base + tv + 2;
            if !more {
                break Some(p);
            }
        };
        hits.keep(word);
        *open = p;
        (n, end)
    }

    /// [`quick_entries`] with every access checked, for a block near the header's end.
    #[inline(never)]
    fn quick_entries_checked<T: Text>(
        buf: &mut T,
        hits: &mut scan::Hits,
        open: &mut usize,
        max: usize,
    ) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut p = *open;
        let end = loop {
            let before = *hits;
            let Some([kc, vc]) = hits.take_four() else {
                break None;
            };
            // The entry from the byte before its key (`{` or `,`) to the byte after the
            // value's closing quote and one more: one bounds check. `kc` is past `p`, `vc`
            // past `kc` (bits of one mask, in order).
            let (k, v) = (kc - (p - 1), vc - (p - 1));
            let Some(win) = buf.bytes().get(p - 1..vc + 4) else {
                *hits = before;
                break None;
            };
            let (Some(k4), Some(v4)) = (
                win.get(k..).and_then(|r| r.first_chunk::<4>()),
                win.last_chunk::<4>(),
            ) else {
                *hits = before;
                break None;
            };
            let (k4, v4) = (u32::from_le_bytes(*k4), u32::from_le_bytes(*v4));
            // `v` is past the value's opening quote at `k + 2` (if `k4` is right).
            let (klen, vlen) = (k - 2, v.wrapping_sub(k + 3));
            let more = v4 & 0xFF_FFFF == COMMA;
            if k4 & 0xFF_FFFF != COLON || klen.max(vlen) > max || !(more || v4 & 0xFFFF == CLOSE) {
                *hits = before;
                break None;
            }
            if T::COMPACT {
                if let Some(win) = buf.bytes_mut().get_mut(p - 1..vc + 4) {
                    compact::put_entry(win, 2, klen, vlen);
                }
            }
            n += 1;
            if !more {
                break Some(vc + 2);
            }
            p = vc + 2;
        };
        *open = p;
        (n, end)
    }

    /// Whether `a` and `b` (of one length) hold the same bytes: a literal of 16 bytes or more
    /// 16 at a time (the last 16 overlapping), without the call `==` makes for it.
    #[inline(always)]
    fn same(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() || a.len() < 16 {
            return a == b;
        }
        let chunk = |s: &[u8], i: usize| {
            let mut c = [0u8; 16];
            c.copy_from_slice(&s[i..i + 16]);
            u128::from_le_bytes(c)
        };
        let last = a.len() - 16;
        let mut diff = chunk(a, last) ^ chunk(b, last);
        let mut i = 0;
        while i < last {
            diff |= chunk(a, i) ^ chunk(b, i);
            i += 16;
        }
        diff == 0
    }

    impl<T: Text> Cursor<'_, T> {
        /// Moves past `lit` if it comes next.
        #[inline]
        fn lit(&mut self, lit: &[u8]) -> bool {
            if matches!(self.buf.bytes().get(self.pos..self.pos + lit.len()), Some(s) if same(s, lit))
            {
                self.pos += lit.len();
                true
            } else {
                false
            }
        }

        /// Moves past `b` if it comes next.
        #[inline]
        fn byte(&mut self, b: u8) -> Option<()> {
            if self.buf.bytes().get(self.pos) == Some(&b) {
                self.pos += 1;
                Some(())
            } else {
                None
            }
        }

        #[inline]
        fn need(&mut self, lit: &[u8]) -> Option<()> {
            self.lit(lit).then_some(())
        }

        /// A plain integer of at most 10 digits (the caller then needs `,` or `}`, so a
        /// fraction or exponent makes it give up); what it reads `number_at` reads the same.
        #[inline(always)]
        fn int(&mut self) -> Option<i32> {
            let (n, end) = int_at(self.buf.bytes(), self.pos)?;
            self.pos = end;
            Some(n)
        }

        /// A string whose opening quote is next; returns its (escaped) text's range.
        #[inline(always)]
        fn string(&mut self) -> Option<(usize, usize)> {
            self.string_as::<false>()
        }

        /// [`Cursor::string`], or (`REMARK`) the remark, whose escapes [`Cursor::remark_slow`]
        /// takes.
        #[inline(always)]
        fn string_as<const REMARK: bool>(&mut self) -> Option<(usize, usize)> {
            let buf = self.buf.bytes();
            if buf.get(self.pos) != Some(&b'"') {
                return None;
            }
            let open = self.pos;
            // Most strings hold no escape: their end is the first quote or backslash.
            let hit = find_quote_or_backslash(buf, open + 1)?;
            if buf[hit] == b'"' && hit - open - 1 <= self.limits.max_string_len {
                self.pos = hit + 1;
                return Some((open + 1, hit));
            }
            if REMARK {
                return self.remark_slow(open).map(|close| (open + 1, close));
            }
            let (s, next) = scan_string(buf, open, self.limits).ok()?;
            if s.escaped {
                self.escapes.note(open, s.end, T::COMPACT && self.in_ext);
            }
            self.pos = next;
            Some((s.start, s.end))
        }

        /// A string of the `extFields` object, compacted if the header may change.
        #[inline(always)]
        fn ext_string(&mut self) -> Option<()> {
            let (start, end) = self.string()?;
            if T::COMPACT {
                if end - start > compact::MAX_LEN {
                    return None;
                }
                compact::put_len(self.buf.bytes_mut(), start, end - start);
                self.compacted += 1;
            }
            Some(())
        }

        /// `"NAME"` for a known language name.
        ///
        /// The quote and the eight bytes after it at once: the name is what comes before the
        /// first of them that is a quote, looked up with that quote as one word
        /// ([`LanguageCode::from_quoted_word`]; a backslash, a longer name or an unknown one
        /// matches nothing and takes [`Cursor::language_slow`]).
        #[inline(always)]
        fn language(&mut self) -> Option<LanguageCode> {
            let buf = self.buf.bytes();
            if let Some(&[b'"', ref name @ ..]) =
                buf.get(self.pos..).and_then(|r| r.first_chunk::<9>())
            {
                let name = u64::from_le_bytes(*name);
                let quote = zero_bytes(name ^ (ONES * u64::from(b'"')));
                // The first quote's byte and those below it (all eight if there is none).
                let word = name & (quote ^ quote.wrapping_sub(1));
                let len = (quote.trailing_zeros() / 8) as usize;
                if let Some(code) = LanguageCode::from_quoted_word(word) {
                    if len <= self.limits.max_string_len {
                        self.pos += len + 2;
                        return Some(code);
                    }
                }
            }
            self.language_slow()
        }

        /// [`Cursor::language`] of a name with an escape, or too close to the header's end,
        /// or unknown (which gives up), or longer than the limit.
        #[inline(never)]
        fn language_slow(&mut self) -> Option<LanguageCode> {
            if self.lit(b"\"JAVA\"") {
                return Some(LanguageCode::JAVA);
            }
            let (a, b) = self.string()?;
            LanguageCode::from_name_bytes(&self.buf.bytes()[a..b])
        }

        /// A remark (`true`) or `null` (`false`).
        #[inline]
        fn remark(&mut self) -> Option<bool> {
            if self.lit(b"null") {
                return Some(false);
            }
            let at = self.pos;
            self.string_as::<true>()?;
            self.remark_at = at;
            self.remark_end = self.pos - 1;
            Some(true)
        }

        /// The remark with an escape, or a long one (see [`Cursor::string_as`]): where the
        /// header may change, unescaped into the scratch while it is checked (one pass,
        /// marked once the header is accepted) if it fits; else as any other string (checked
        /// now, unescaped in place then). Returns its closing quote.
        #[inline(never)]
        fn remark_slow(&mut self, open: usize) -> Option<usize> {
            if T::COMPACT {
                if let Some(close) = self.unescape_to_scratch(open) {
                    if let Some(u) = &mut self.unescaped {
                        u.marked |= 1 << (u.n - 1);
                    }
                    #[cfg(all(test, feature = "std"))]
                    SCRATCH_REMARKS.with(|n| n.set(n.get() + 1));
                    self.pos = close + 1;
                    return Some(close);
                }
            }
            self.pos = open;
            self.string_as::<false>()?;
            Some(self.pos - 1)
        }

        /// `null` or an object of string values; returns where it starts if it holds any
        /// (with [`COMPACT_EXT`] if it was compacted). `null` and `{}` are taken here, without
        /// a call; anything else by [`Cursor::ext_object`].
        #[inline(always)]
        fn ext(&mut self) -> Option<u32> {
            if self.lit(b"null") || self.lit(b"{}") {
                return Some(0);
            }
            self.ext_object()
        }

        /// [`Cursor::ext`] of what is neither `null` nor `{}`. Built twice on x86_64 (unless
        /// the build enables BMI1 anyway): the walk pops one hit a step with BMI1's `blsr`,
        /// two without, and its four pops an entry are the chain each entry waits on.
        fn ext_object(&mut self) -> Option<u32> {
            #[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1")))]
            if scan::has_bmi1() && !without_bmi1_in_tests() {
                // SAFETY: `ext_bmi1` only enables BMI1, which `has_bmi1` has just found the
                // CPU has (`scan::tests::bmi1_detection_agrees_with_std` checks it against
                // std's detection).
                return unsafe { self.ext_bmi1() };
            }
            #[cfg(all(test, feature = "std"))]
            PLAIN_WALKS.with(|n| n.set(n.get() + 1));
            self.ext_walk::<false>()
        }

        /// [`Cursor::ext_walk`] built with BMI1.
        #[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1")))]
        #[target_feature(enable = "bmi1")]
        unsafe fn ext_bmi1(&mut self) -> Option<u32> {
            self.ext_walk::<true>()
        }

        /// See [`Cursor::ext_object`]. `BMI1`: the walk is the one [`Cursor::ext_bmi1`] builds (so
        /// the CPU has BMI1), and unescapes with [`Cursor::unescape_hits_bmi1`].
        #[inline(always)]
        fn ext_walk<const BMI1: bool>(&mut self) -> Option<u32> {
            let at = self.pos;
            self.byte(b'{')?;
            if self.byte(b'}').is_some() {
                return Some(0);
            }
            self.in_ext = true;
            let p = self.pos;
            if self.buf.bytes().get(p) != Some(&b'"') {
                return None;
            }
            let mut compacted = self.compacted;
            let end = self.entries::<BMI1>(p, &mut compacted);
            self.compacted = compacted;
            self.pos = end?;
            self.in_ext = false;
            Some(if T::COMPACT {
                at as u32 | COMPACT_EXT
            } else {
                at as u32
            })
        }

        /// The entries of the `extFields` object from the key whose opening quote is at `p`;
        /// returns the offset after its `}`. `compacted` counts the strings compacted.
        ///
        /// The strings' quotes come from [`scan::Hits`] (64-byte masks, one bit popped per
        /// quote), so each string's end is known without a search from its start: the checks
        /// and length writes of one entry do not wait for the entry before.
        #[inline(always)]
        fn entries<const BMI1: bool>(&mut self, p: usize, compacted: &mut usize) -> Option<usize> {
            let max = if T::COMPACT {
                self.limits.max_string_len.min(compact::MAX_LEN)
            } else {
                self.limits.max_string_len
            };
            let max_fields = self.limits.max_ext_fields;
            let mut count = 0;
            let mut hits = scan::Hits::new(self.buf.bytes(), p);
            let mut open = p;
            loop {
                // `open` is a key's opening quote, the next hit. Most entries are four quotes
                // in the block at hand (see `quick_entries`).
                let (n, end) = quick_entries(&mut self.buf, &mut hits, &mut open, max);
                count += n;
                if T::COMPACT {
                    *compacted += 2 * n;
                }
                if let Some(end) = end {
                    return (count <= max_fields).then_some(end);
                }
                // String by string: across blocks, escapes, long strings.
                hits.next(self.buf.bytes())?;
                let close = self.ext_str::<BMI1>(&mut hits, open, max, compacted)?;
                if self.buf.bytes().get(close + 1..close + 3) != Some(b":\"") {
                    return None;
                }
                // The value's opening quote.
                open = close + 2;
                hits.next(self.buf.bytes())?;
                let close = self.ext_str::<BMI1>(&mut hits, open, max, compacted)?;
                count += 1;
                // The count is checked at the end: the walk is bounded by the header.
                match self.buf.bytes().get(close + 1..close + 3) {
                    Some(b",\"") => open = close + 2,
                    Some([b'}', _]) => return (count <= max_fields).then_some(close + 2),
                    _ => return None,
                }
            }
        }

        /// The string of the `extFields` object whose opening quote is at `open` (at least
        /// 1: the object's `{` comes before it), its opening quote taken from `hits`:
        /// compacted if the header may change; returns its closing quote. A string that holds
        /// an escape or is longer than `max` takes [`Cursor::ext_str_slow`], and `hits` starts
        /// again after it.
        #[inline(always)]
        fn ext_str<const BMI1: bool>(
            &mut self,
            hits: &mut scan::Hits,
            open: usize,
            max: usize,
            compacted: &mut usize,
        ) -> Option<usize> {
            let close = hits.next(self.buf.bytes())?;
            let len = close - open - 1;
            if self.buf.bytes().get(close) == Some(&b'"') && len <= max {
                if T::COMPACT {
                    compact::put_len(self.buf.bytes_mut(), open + 1, len);
                    *compacted += 1;
                }
                return Some(close);
            }
            if T::COMPACT && self.buf.bytes().get(close) == Some(&b'\\') {
                // `hits` itself, not a copy taken back on success: the copy came back as one
                // 16-byte load of what the call had stored in 8-byte words (a store-forwarding
                // stall). If the call fails, `hits` starts again after the string below.
                if let Some(end) = self.unescape_hits_as::<BMI1>(hits, open, close) {
                    // Its length as written, for an undo; the unescaped one comes with it.
                    compact::put_len(self.buf.bytes_mut(), open + 1, end - open - 1);
                    *compacted += 1;
                    return Some(end);
                }
            }
            self.compacted = *compacted;
            let next = self.ext_str_slow(open);
            *compacted = self.compacted;
            let next = next?;
            *hits = scan::Hits::new(self.buf.bytes(), next);
            Some(next - 1)
        }

        /// Checks the string of the `extFields` object whose opening quote is at `open` and
        /// whose first escape's backslash is at `at` (the hit `hits` gave last) and unescapes
        /// it into [`Cursor::unescaped`]; returns its closing quote, `hits` then after it
        /// (`hits` may have moved on when it returns `None`).
        /// The escapes are found by popping `hits`, so each is checked and copied without
        /// waiting for a search from the one before. `None` (nothing recorded) for an invalid
        /// escape, a string too long, or one the scratch has no room for.
        #[inline(never)]
        fn unescape_hits(
            &mut self,
            hits: &mut scan::Hits,
            open: usize,
            at: usize,
        ) -> Option<usize> {
            self.unescape_hits_body(hits, open, at)
        }

        /// [`Cursor::unescape_hits`] built with BMI1 (a hit popped in one step, not two).
        #[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1")))]
        #[target_feature(enable = "bmi1")]
        #[inline(never)]
        unsafe fn unescape_hits_bmi1(
            &mut self,
            hits: &mut scan::Hits,
            open: usize,
            at: usize,
        ) -> Option<usize> {
            self.unescape_hits_body(hits, open, at)
        }

        /// [`Cursor::unescape_hits`], or (`BMI1`, in the walk [`Cursor::ext_bmi1`] builds)
        /// [`Cursor::unescape_hits_bmi1`].
        #[inline(always)]
        fn unescape_hits_as<const BMI1: bool>(
            &mut self,
            hits: &mut scan::Hits,
            open: usize,
            at: usize,
        ) -> Option<usize> {
            #[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1")))]
            if BMI1 {
                // SAFETY: `BMI1` is true only in the walk `ext_bmi1` builds, which `ext` runs
                // only when `scan::has_bmi1` has found the CPU has BMI1
                // (`scan::tests::bmi1_detection_agrees_with_std` checks that answer).
                return unsafe { self.unescape_hits_bmi1(hits, open, at) };
            }
            self.unescape_hits(hits, open, at)
        }

        /// See [`Cursor::unescape_hits`].
        #[inline(always)]
        fn unescape_hits_body(
            &mut self,
            hits: &mut scan::Hits,
            open: usize,
            at: usize,
        ) -> Option<usize> {
            let u = Unescaped::room(&mut self.unescaped)?;
            let buf = self.buf.bytes();
            let (close, end) = unescape_hits_into(buf, hits, open + 1, at, &mut u.text, u.used)?;
            u.record(open, close, end, self.limits.max_string_len)
        }

        /// [`Cursor::ext_str`] of a string with escapes, or a long one.
        #[inline(never)]
        fn ext_str_slow(&mut self, open: usize) -> Option<usize> {
            let buf = self.buf.bytes();
            let hit = find_quote_or_backslash(buf, open + 1)?;
            if buf[hit] == b'"' {
                // A long string with no escape.
                let len = hit - open - 1;
                let max = if T::COMPACT {
                    self.limits.max_string_len.min(compact::MAX_LEN)
                } else {
                    self.limits.max_string_len
                };
                if len > max {
                    return None;
                }
                if T::COMPACT {
                    compact::put_len(self.buf.bytes_mut(), open + 1, len);
                    self.compacted += 1;
                }
                return Some(hit + 1);
            }
            if T::COMPACT {
                if let Some(close) = self.unescape_to_scratch(open) {
                    // Its length as written, for an undo; the unescaped one comes with it.
                    let len = close - open - 1;
                    compact::put_len(self.buf.bytes_mut(), open + 1, len);
                    self.compacted += 1;
                    return Some(close + 1);
                }
            }
            self.pos = open;
            self.ext_string()?;
            Some(self.pos)
        }

        /// Checks the escaped string whose opening quote is at `open` and unescapes it into
        /// [`Cursor::unescaped`]; returns its closing quote, or `None` if it is invalid, too
        /// long, or does not fit.
        fn unescape_to_scratch(&mut self, open: usize) -> Option<usize> {
            let u = Unescaped::room(&mut self.unescaped)?;
            let buf = self.buf.bytes();
            let (close, end) = unescape_into(buf, open + 1, &mut u.text, u.used)?;
            u.record(open, close, end, self.limits.max_string_len)
        }

        /// [`Cursor::ext`] into `ext_at`, which says where the object starts even if it fails
        /// (so that a compaction can be undone).
        #[inline(always)]
        fn ext_into(&mut self, ext_at: &mut u32) -> Option<()> {
            *ext_at = self.pos as u32;
            *ext_at = self.ext()?;
            Some(())
        }

        /// `"JSON"` or `"ROCKETMQ"`.
        fn serialize_type(&mut self) -> Option<()> {
            (self.lit(b"\"JSON\"") || self.lit(b"\"ROCKETMQ\"")).then_some(())
        }
    }

    #[cfg(all(test, feature = "std"))]
    std::thread_local! {
        /// Tests of this thread take the walk built without BMI1 (see [`Cursor::ext_object`]).
        pub(super) static WITHOUT_BMI1: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
        /// How many walks of this thread were built without BMI1.
        pub(super) static PLAIN_WALKS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
        /// How many remarks of this thread were unescaped through the scratch.
        pub(super) static SCRATCH_REMARKS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }

    /// Whether a test asked for the walk built without BMI1 on this thread.
    #[inline(always)]
    fn without_bmi1_in_tests() -> bool {
        #[cfg(all(test, feature = "std"))]
        return WITHOUT_BMI1.with(|w| w.get());
        #[cfg(not(all(test, feature = "std")))]
        false
    }

    pub(super) fn parse<T: Text>(buf: T, limits: &Limits) -> Option<Parsed> {
        let mut c = Cursor::new(buf, limits);
        let (fixed, ext_at) = walk(&mut c)?;
        Some(Parsed {
            fixed,
            ext_at,
            escapes: c.escapes,
        })
    }

    /// [`parse`] of a header that is rewritten for reading where it lies, the strings with
    /// escapes unescaped too ([`Escapes::rewrite`]): what a decode from a read buffer needs.
    ///
    /// Only the fixed fields and where the `extFields` object is come back. The escapes stay
    /// in the cursor: handing a [`Parsed`] (~100 bytes, written field by field during the
    /// walk) back to be read in 16-byte pieces kept every decode waiting for those stores.
    #[inline(always)]
    pub(super) fn parse_in_place(buf: &mut [u8], limits: &Limits) -> Option<(Fixed, u32)> {
        let mut c = Cursor::new(buf, limits);
        let found = walk(&mut c)?;
        if c.escapes.any() {
            c.escapes.rewrite(c.buf);
        }
        Some(found)
    }

    /// The walk of [`parse`] and [`parse_in_place`]: the fixed fields and where the
    /// `extFields` object is, or `None` at the first surprise (a compaction made on the way
    /// undone); in place, the scratch's unescaped strings and the remark's position are
    /// written once the header is accepted.
    #[inline(always)]
    fn walk<T: Text>(c: &mut Cursor<'_, T>) -> Option<(Fixed, u32)> {
        let mut ext_at = 0;
        let fixed = fields(c, &mut ext_at);
        let fixed = match fixed {
            // Escaped strings past the recorded few would be found by scanning for quotes,
            // which a compacted object no longer has.
            Some(_) if T::COMPACT && c.escapes.rest_from.is_some() => None,
            other => other,
        };
        if fixed.is_none() && c.compacted > 0 {
            let at = (ext_at & !COMPACT_EXT) as usize;
            compact::undo(c.buf.bytes_mut(), at, c.compacted);
        }
        if T::COMPACT && fixed.is_some() {
            if let Some(u) = &c.unescaped {
                u.write(c.buf.bytes_mut());
            }
            if c.remark_at != 0 {
                compact::put_remark_at(c.buf.bytes_mut(), c.remark_at, c.remark_end);
            }
        }
        Some((fixed?, ext_at))
    }

    /// The fields of the header in one of the two orders; `ext_at` is set as soon as the
    /// `extFields` object starts, so that [`parse`] can undo its compaction.
    #[inline(always)]
    fn fields<T: Text>(c: &mut Cursor<'_, T>, ext_at: &mut u32) -> Option<Fixed> {
        c.need(b"{\"code\":")?;
        let code = c.int()?;
        let mut has_remark = false;
        let fixed = if c.lit(b",\"language\":") {
            // rocketmq-rust: code, language, version, opaque, flag, remark, extFields,
            // serializeTypeCurrentRPC.
            let language = c.language()?;
            c.need(b",\"version\":")?;
            let version = c.int()?;
            c.need(b",\"opaque\":")?;
            let opaque = c.int()?;
            c.need(b",\"flag\":")?;
            let flag = c.int()?;
            // What a command with neither remark nor extension field ends with, compared at
            // once (64 bytes: four 16-byte words); else piece by piece.
            if !c.lit(b",\"remark\":null,\"extFields\":null,\"serializeTypeCurrentRPC\":\"JSON\"") {
                // A `null` remark without a call (an `extFields` object follows).
                if !c.lit(b",\"remark\":null") && c.lit(b",\"remark\":") {
                    has_remark = c.remark()?;
                }
                // The same after a remark: no extension field (50 bytes).
                if !c.lit(b",\"extFields\":null,\"serializeTypeCurrentRPC\":\"JSON\"") {
                    if c.lit(b",\"extFields\":") {
                        c.ext_into(ext_at)?;
                    }
                    if !c.lit(b",\"serializeTypeCurrentRPC\":\"JSON\"")
                        && c.lit(b",\"serializeTypeCurrentRPC\":")
                    {
                        c.serialize_type()?;
                    }
                }
            }
            Fixed {
                code,
                language,
                version,
                opaque,
                flag,
                has_remark,
                has_ext: *ext_at != 0,
            }
        } else {
            // Java: alphabetical order.
            if c.lit(b",\"extFields\":") {
                c.ext_into(ext_at)?;
            }
            c.need(b",\"flag\":")?;
            // A one-digit flag and a language name then `","opaque":` (JAVA, and OTHER, which
            // Remora sends), compared at once; else piece by piece.
            const LANGUAGE: &[u8; 13] = b",\"language\":\"";
            let digit = match c.buf.bytes().get(c.pos..c.pos + 1 + LANGUAGE.len()) {
                Some([d @ b'0'..=b'9', rest @ ..]) if rest == LANGUAGE => Some(*d),
                _ => None,
            };
            let quick = match digit {
                Some(d) => {
                    let at = c.pos;
                    c.pos += 1 + LANGUAGE.len();
                    let language = if c.lit(b"JAVA\",\"opaque\":") {
                        Some(LanguageCode::JAVA)
                    } else if c.lit(b"OTHER\",\"opaque\":") {
                        Some(LanguageCode::OTHER)
                    } else {
                        c.pos = at;
                        None
                    };
                    language.map(|l| (i32::from(d - b'0'), l))
                }
                None => None,
            };
            let (flag, language) = match quick {
                Some(quick) => quick,
                None => {
                    let flag = c.int()?;
                    c.need(b",\"language\":")?;
                    let language = c.language()?;
                    c.need(b",\"opaque\":")?;
                    (flag, language)
                }
            };
            let opaque = c.int()?;
            if c.lit(b",\"remark\":") {
                has_remark = c.remark()?;
            }
            if !c.lit(b",\"serializeTypeCurrentRPC\":\"JSON\",\"version\":") {
                c.need(b",\"serializeTypeCurrentRPC\":")?;
                c.serialize_type()?;
                c.need(b",\"version\":")?;
            }
            let version = c.int()?;
            Fixed {
                code,
                language,
                version,
                opaque,
                flag,
                has_remark,
                has_ext: *ext_at != 0,
            }
        };
        c.byte(b'}')?;
        (c.pos == c.buf.bytes().len()).then_some(fixed)
    }
}

/// Parses an optionally negative run of ASCII digits within `i32`.
fn parse_i32(digits: &[u8]) -> Option<i32> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    i32::try_from(if neg { -n } else { n }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::command::SerializeType;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Unescapes valid JSON string text one escape at a time (the reference for the
    /// block-wise `unescape_in_place`).
    fn naive_unescape(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next().unwrap() {
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let mut code = u32::from_str_radix(&hex, 16).unwrap();
                    if (0xD800..0xDC00).contains(&code) {
                        let low: String = chars.by_ref().skip(2).take(4).collect();
                        let low = u32::from_str_radix(&low, 16).unwrap();
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    }
                    out.push(char::from_u32(code).unwrap());
                }
                other => out.push(other),
            }
        }
        out
    }

    #[test]
    fn block_wise_unescaping_matches_one_escape_at_a_time() {
        // Runs of every length between escapes of every kind, so that the block store and the
        // short copy are both taken with every distance between reading and writing; the
        // string is followed by 0 to 20 bytes (blocks near the end of the buffer).
        let escapes = [
            "\\u0001",
            "\\n",
            "\\\"",
            "\\u00e9",
            "\\u4e2d",
            "\\ud83d\\ude80",
            "\\/",
            "\\u001F",
        ];
        for seed in 0..400usize {
            let mut text = String::new();
            let mut x = seed.wrapping_mul(2654435761) | 1;
            for _ in 0..(seed % 9) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let run = x % 37;
                for i in 0..run {
                    text.push(if (i + seed) % 11 == 0 {
                        '\u{e9}'
                    } else {
                        char::from(b'a' + (i % 26) as u8)
                    });
                }
                text.push_str(escapes[(x >> 8) % escapes.len()]);
            }
            let tail = seed % 21;
            let mut buf = format!("\"{text}\"{}", "}".repeat(tail)).into_bytes();
            let end = buf.len() - tail - 1;
            let (s, next) = scan_string(&buf, 0, &Limits::default()).unwrap();
            assert_eq!((s.start, s.end, next), (1, end, end + 1));
            let want = naive_unescape(&text);
            let got = unescape_in_place(&mut buf, 1, end, 1);
            assert_eq!(core::str::from_utf8(&buf[1..got]).unwrap(), want, "{text}");
            assert!(
                buf[end..].iter().all(|&b| b == b'"' || b == b'}'),
                "beyond the string"
            );
            // The limit is on the unescaped length, checked exactly only for long strings.
            let buf = format!("\"{text}\"").into_bytes();
            for max in [want.len().saturating_sub(1), want.len()] {
                let limits = Limits {
                    max_string_len: max,
                    ..Limits::default()
                };
                let r = scan_string(&buf, 0, &limits);
                assert_eq!(r.is_ok(), want.len() <= max, "{text} {max}");
            }
        }
    }

    fn decode(s: &str) -> Result<Command, DecodeError> {
        decode_header(&Bytes::copy_from_slice(s.as_bytes()), &Limits::default())
    }

    fn encode(cmd: &Command) -> String {
        let mut out = vec![];
        encode_header(cmd, &mut out);
        assert_eq!(
            out.len(),
            header_len(cmd),
            "header_len disagrees with encode_header"
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_shape_is_alphabetical_with_nulls_omitted() {
        let cmd = Command::request(105).with_opaque(3).with_ext("topic", "T");
        assert_eq!(
            encode(&cmd),
            r#"{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"OTHER","opaque":3,"serializeTypeCurrentRPC":"JSON","version":479}"#
        );
        let mut resp = cmd.response(-17).with_remark("a\"b\\c\u{1}\n\u{7f}é");
        resp.language = LanguageCode(99);
        resp.serialize_type = SerializeType::RocketMq;
        assert_eq!(
            encode(&resp),
            "{\"code\":-17,\"flag\":1,\"language\":99,\"opaque\":3,\"remark\":\"a\\\"b\\\\c\\u0001\\n\u{7f}é\",\"serializeTypeCurrentRPC\":\"ROCKETMQ\",\"version\":479}"
        );
    }

    #[test]
    fn dialects_decode() {
        // Go: struct order, empty remark, no serializeTypeCurrentRPC.
        let go = decode(r#"{"code":105,"language":"GO","version":317,"opaque":7,"flag":0,"remark":"","extFields":{"topic":"t"}}"#).unwrap();
        assert_eq!(
            (go.code, go.language, go.version, go.opaque),
            (105, LanguageCode::GO, 317, 7)
        );
        assert_eq!(go.remark(), Some(""));
        assert_eq!(go.ext("topic").unwrap(), "t");
        // C++: trailing newline; Python: numeric language; unknown keys of every shape.
        let cpp = decode("{\"code\":1,\"language\":3,\"x\":[1,{\"y\":[true,false,null,-1.5e3]}],\"z\":\"\\u00e9\"}\n\r\t ").unwrap();
        assert_eq!(cpp.language, LanguageCode::PYTHON);
        // Missing fields take Java's defaults.
        let empty = decode("{}").unwrap();
        assert_eq!(
            (empty.code, empty.language, empty.version, empty.remark()),
            (0, LanguageCode::JAVA, 0, None)
        );
        // Quoted integers, null fields, numeric and boolean ext values, null ext values dropped.
        let lenient = decode(
            r#"{"code":"12","flag":null,"remark":null,"extFields":{"a":1,"b":true,"c":null}}"#,
        )
        .unwrap();
        assert_eq!(lenient.code, 12);
        assert_eq!(lenient.ext("a").unwrap(), "1");
        assert_eq!(lenient.ext("b").unwrap(), "true");
        assert!(lenient.ext("c").is_none());
    }

    #[test]
    fn escapes_and_raw_control_bytes() {
        let cmd =
            decode("{\"remark\":\"\\ud83d\\ude80 \\\" \\/ \\b\\f\\n\\r\\t \u{1}\u{2}\"}").unwrap();
        assert_eq!(cmd.remark().unwrap(), "🚀 \" / \u{8}\u{c}\n\r\t \u{1}\u{2}");
        let key = decode(r#"{"c\u006fde":5}"#).unwrap();
        assert_eq!(key.code, 5);
    }

    #[test]
    fn malformed_headers_are_located() {
        let cases: &[(&str, usize, JsonErrorKind)] = &[
            ("", 0, JsonErrorKind::UnexpectedEnd),
            ("{\"code\":1", 9, JsonErrorKind::UnexpectedEnd),
            ("{\"code\":1}x", 10, JsonErrorKind::TrailingCharacters),
            ("{\"code\":2147483648}", 8, JsonErrorKind::NumberOutOfRange),
            ("{\"code\":1.5}", 8, JsonErrorKind::NumberOutOfRange),
            (
                "{\"code\":\"ten\"}",
                8,
                JsonErrorKind::WrongType { field: "code" },
            ),
            ("{\"remark\":\"\\ud800\"}", 11, JsonErrorKind::InvalidEscape),
            ("{\"remark\":\"\\q\"}", 11, JsonErrorKind::InvalidEscape),
            ("{\"language\":256}", 12, JsonErrorKind::NumberOutOfRange),
            (
                "{\"extFields\":{\"a\":{}}}",
                18,
                JsonErrorKind::WrongType { field: "extFields" },
            ),
            (
                "{\"code\" 1}",
                8,
                JsonErrorKind::UnexpectedByte {
                    found: b'1',
                    expected: "':'",
                },
            ),
        ];
        for (text, offset, kind) in cases {
            assert_eq!(
                decode(text).unwrap_err(),
                DecodeError::Json {
                    offset: *offset,
                    kind: *kind
                },
                "{text:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_located() {
        let header = Bytes::from_static(b"{\"remark\":\"ok \xff\"}");
        // The offending byte itself: the header is checked as a whole before parsing.
        assert_eq!(
            decode_header(&header, &Limits::default()).unwrap_err(),
            DecodeError::Json {
                offset: 14,
                kind: JsonErrorKind::InvalidUtf8
            }
        );
    }

    #[test]
    fn limits_hold() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            decode(&deep).unwrap_err(),
            DecodeError::Json {
                kind: JsonErrorKind::TooDeep,
                ..
            }
        ));
        let limits = Limits {
            max_ext_fields: 2,
            ..Limits::default()
        };
        let many = Bytes::from_static(br#"{"extFields":{"a":"1","b":"2","c":"3"}}"#);
        assert_eq!(
            decode_header(&many, &limits).unwrap_err(),
            DecodeError::TooManyExtFields { max: 2 }
        );
        let limits = Limits {
            max_string_len: 6,
            ..Limits::default()
        };
        let long = Bytes::from_static(br#"{"remark":"abcdefg"}"#);
        assert_eq!(
            decode_header(&long, &limits).unwrap_err(),
            DecodeError::StringTooLong { offset: 10, max: 6 }
        );
    }

    #[test]
    fn unescaped_strings_share_the_header_buffer() {
        let header =
            Bytes::from_static(br#"{"extFields":{"topic":"orders-of-the-day-for-the-eu-region"}}"#);
        let cmd = decode_header(&header, &Limits::default()).unwrap();
        let value = cmd.ext("topic").unwrap();
        let range = header.as_ptr_range();
        assert!(range.contains(&value.as_bytes().as_ptr()));
        let key = cmd.ext_fields().iter().next().unwrap().0;
        assert!(
            range.contains(&key.as_bytes().as_ptr()),
            "even short keys are positions"
        );
    }

    #[test]
    fn int_len_matches_itoa() {
        for n in [0, 9, 10, -1, -10, 99, 100, i32::MAX, i32::MIN, 123_456] {
            assert_eq!(int_len(n), itoa::Buffer::new().format(n).len());
        }
    }

    /// The general parser's answer, never the fast path's.
    fn general(header: &[u8]) -> Result<Parsed, DecodeError> {
        parse_general(header, &Limits::default())
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let java = r#"{"code":310,"extFields":{"a":"g","i":"K\u0001V\u0002"},"flag":0,"language":"JAVA","opaque":-7,"remark":"r\"x","serializeTypeCurrentRPC":"ROCKETMQ","version":453}"#;
        let rust = r#"{"code":10,"language":"RUST","version":399,"opaque":1,"flag":2,"remark":null,"extFields":{"topic":"T"},"serializeTypeCurrentRPC":"JSON"}"#;
        let rust_nulls = r#"{"code":10,"language":"GO","version":399,"opaque":1,"flag":0,"remark":"","extFields":null,"serializeTypeCurrentRPC":"JSON"}"#;
        let minimal = r#"{"code":34,"flag":0,"language":"OTHER","opaque":3,"serializeTypeCurrentRPC":"JSON","version":479}"#;
        for taken in [java, rust, rust_nulls, minimal] {
            let fast = fast::parse(taken.as_bytes(), &Limits::default())
                .unwrap_or_else(|| panic!("fast path refused {taken}"));
            let general = general(taken.as_bytes()).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{taken}");
        }
        // Surprises go to the general parser, which decides (and locates) any error.
        let refused = [
            r#"{ "code":1,"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#,
            r#"{"code":1,"flag":0,"language":"J\u0041VA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#,
            r#"{"code":1,"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1,"x":2}"#,
            r#"{"code":1,"extFields":{"a":1},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#,
            r#"{"code":1,"extFields":{"a":"\q"},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#,
            r#"{"code":1.5,"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#,
            r#"{"code":1,"flag":0,"language":"NOPE","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#,
        ];
        for surprise in refused {
            assert!(
                fast::parse(surprise.as_bytes(), &Limits::default()).is_none(),
                "{surprise}"
            );
        }
        let many = Limits {
            max_ext_fields: 1,
            ..Limits::default()
        };
        assert!(fast::parse(java.as_bytes(), &many).is_none());
        assert_eq!(
            parse(java.as_bytes(), &many).unwrap_err(),
            DecodeError::TooManyExtFields { max: 1 }
        );
    }

    #[test]
    fn rewritten_escapes_read_back_everywhere() {
        // Escapes in an unknown nested value, a key, a value, the remark, and after them all.
        let text = r#"{"x":{"k\"":["a\\b",{"c":"\u00e9"}]},"extFields":{"k\u0031":"v\n","plain":"p","n":null,"num":-12,"b":true},"remark":"\ud83d\ude80 \"q\"","code":7}"#;
        let cmd = decode(text).unwrap();
        assert_eq!(cmd.code, 7);
        assert_eq!(cmd.remark(), Some("🚀 \"q\""));
        let fields: Vec<(&str, &str)> = cmd.ext_fields().iter().collect();
        assert_eq!(
            fields,
            [("k1", "v\n"), ("plain", "p"), ("num", "-12"), ("b", "true")]
        );
        assert_eq!(cmd.ext("k1"), Some("v\n"));
        // Re-encoding reads the same fields.
        let again = decode(&encode(&cmd)).unwrap();
        assert_eq!(again, cmd);
    }

    #[test]
    fn the_last_remark_and_the_last_ext_object_count() {
        let cmd = decode(
            r#"{"remark":"a","extFields":{"k":"1","k":"2"},"remark":null,"extFields":{"j":"3"}}"#,
        )
        .unwrap();
        assert_eq!(cmd.remark(), None);
        assert_eq!(cmd.ext("k"), None);
        assert_eq!(cmd.ext("j"), Some("3"));
        let dup = decode(r#"{"extFields":{"k":"1","k":"2"}}"#).unwrap();
        assert_eq!(dup.ext("k"), Some("2"), "the last duplicate wins");
        assert_eq!(dup.ext_fields().len(), 2);
        let emptied = decode(r#"{"extFields":{"k":"1"},"extFields":{"n":null}}"#).unwrap();
        assert!(emptied.ext_fields().is_empty());
    }

    /// A whole JSON frame around `header`, with a 3-byte body.
    fn frame(header: &str) -> bytes::BytesMut {
        let h = header.as_bytes();
        let mut f = bytes::BytesMut::new();
        f.put_u32((4 + h.len() + 3) as u32);
        f.put_u32(h.len() as u32);
        f.put_slice(h);
        f.put_slice(b"xyz");
        f
    }

    /// The fast parser's integer as it was read before [`int_at`]: one byte at a time, with
    /// a bounds check each (the oracle for `int_at`).
    fn int_by_bytes(buf: &[u8], pos: usize) -> Option<(i32, usize)> {
        let neg = buf.get(pos) == Some(&b'-');
        let start = pos + usize::from(neg);
        let mut i = start;
        let mut n = 0u64;
        while let Some(&b) = buf.get(i) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            n = n.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 10 {
            return None;
        }
        let n = if neg { -(n as i64) } else { n as i64 };
        Some((i32::try_from(n).ok()?, i))
    }

    /// `int_at` of `text` placed `before` bytes into a buffer and followed by `after`, against
    /// the byte loop; where it takes a number that no fraction or exponent follows, the
    /// general parser's `number_at` takes the same one.
    fn check_int(before: &[u8], text: &[u8], after: &[u8]) {
        check_int_at(&[before, text, after].concat(), before.len());
    }

    /// See [`check_int`]: `int_at(buf, pos)`.
    fn check_int_at(buf: &[u8], pos: usize) {
        let got = int_at(buf, pos);
        assert_eq!(
            got,
            int_by_bytes(buf, pos),
            "{:?} at {pos}",
            String::from_utf8_lossy(buf)
        );
        // (A fraction or an exponent after it the fast parser refuses, as the byte after the
        // number is never its `,` or `}`.)
        if let Some((n, end)) =
            got.filter(|&(_, end)| !matches!(buf.get(end), Some(b'.' | b'e' | b'E')))
        {
            assert_eq!(number_at(buf, pos).ok(), Some((n, end)));
        }
    }

    #[test]
    fn int_at_answers_as_the_byte_loop_on_edge_numbers() {
        let mut texts: Vec<String> = Vec::new();
        // Every digit count from 0 to 12, plain and with leading zeros, both signs.
        for len in 0..=12 {
            let nines = "9".repeat(len);
            let ones = "1".repeat(len);
            let zeros = format!(
                "{}{}",
                "0".repeat(len.saturating_sub(1)),
                "7".repeat(len.min(1))
            );
            for digits in [nines, ones, zeros] {
                texts.push(digits.clone());
                texts.push(format!("-{digits}"));
            }
        }
        // The i32 bounds and one past them, with leading zeros up to 10 digits and beyond.
        for n in [
            i64::from(i32::MAX) - 1,
            i64::from(i32::MAX),
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::from(i32::MIN),
            i64::from(i32::MIN) + 1,
            0,
            -1,
        ] {
            texts.push(format!("{n}"));
            let (sign, abs) = if n < 0 { ("-", -n) } else { ("", n) };
            texts.push(format!("{sign}0{abs}"));
            texts.push(format!("{sign}{abs:010}"));
            texts.push(format!("{sign}{abs:011}"));
        }
        texts.extend(["-", "--1", "-a", "+1", "1.5", "1e3", "0x1"].map(String::from));
        let afters: [&[u8]; 9] = [
            b"",
            b"}",
            b",\"flag\":0}",
            b"0123456789",
            b".5}",
            b"e7,",
            b"/",
            b":",
            b"\xff\x00",
        ];
        for text in &texts {
            for after in afters {
                for before in [&b""[..], b"{\"code\":"] {
                    check_int(before, text.as_bytes(), after);
                    // The buffer ending at every byte of the number and after it.
                    let whole = [text.as_bytes(), after].concat();
                    for cut in 0..=whole.len() {
                        check_int(before, &whole[..cut], b"");
                    }
                }
            }
        }
        // A non-digit at every place of a 12-digit run.
        for at in 0..12 {
            for b in [b'/', b':', b' ', b'-', b'}', 0, 0x80, b'a'] {
                let mut digits = b"123456789012".to_vec();
                digits[at] = b;
                check_int(b"", &digits, b"}");
                check_int(b"", &digits, b"");
            }
        }
    }

    /// The language names the tests put through both parsers: every known one, case
    /// variants, near misses, unknown ones, and names spelled with escapes.
    fn language_names() -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for code in 0..=255u8 {
            if let Some(name) = LanguageCode(code).name() {
                names.push(name.into());
                names.push(name.to_lowercase());
                let mut mixed: Vec<char> = name.chars().collect();
                mixed[0] = mixed[0].to_ascii_lowercase();
                names.push(mixed.into_iter().collect());
                names.push(format!("{name}X"));
                names.push(format!("X{name}"));
                names.push(name[..name.len() - 1].into());
                names.push(format!("{name} "));
                names.push(format!("{name}\\u0000"));
                // Spelled with escapes: the general parser reads the name it spells.
                names.push(format!(
                    "\\u{:04X}{}",
                    u32::from(name.as_bytes()[0]),
                    &name[1..]
                ));
                names.push(format!(
                    "{}\\u{:04x}",
                    &name[..name.len() - 1],
                    u32::from(name.as_bytes()[name.len() - 1])
                ));
            }
        }
        names.extend(
            [
                "",
                "J",
                "JAVA\\\"",
                "JA\\\"VA",
                "\\\"",
                "NODE_JS_",
                "NODEJS",
                "GOLANG",
                "PYTHON3",
                "LONGERTHANEIGHT",
                "\\/JAVA",
                "JAVA\\/",
                "\\n",
                "\u{e9}",
                "\u{4e2d}\u{6587}",
                "OTHER\\t",
            ]
            .map(String::from),
        );
        names
    }

    #[test]
    fn languages_read_the_same_by_both_parsers() {
        for name in language_names() {
            let rust = format!(
                r#"{{"code":10,"language":"{name}","version":399,"opaque":1,"flag":0,"remark":null,"extFields":null,"serializeTypeCurrentRPC":"JSON"}}"#
            );
            let java = format!(
                r#"{{"code":10,"flag":0,"language":"{name}","opaque":1,"serializeTypeCurrentRPC":"JSON","version":399}}"#
            );
            let known = LanguageCode::from_name(&name);
            for header in [rust, java] {
                let general = general(header.as_bytes()).unwrap();
                // A known name is read by the fast parser, the same as by the general one;
                // anything else the general parser reads (an unknown name as OTHER).
                let fast = fast::parse(header.as_bytes(), &Limits::default());
                match known {
                    Some(code) => {
                        assert_eq!(general.fixed.language, code, "{header}");
                        let fast = fast.unwrap_or_else(|| panic!("fast path refused {header}"));
                        assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{header}");
                    }
                    None => {
                        if let Some(fast) = fast {
                            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{header}");
                        }
                    }
                }
                let (cmd, _) = decode_both(&header);
                assert_eq!(cmd.unwrap().language, general.fixed.language, "{header}");
            }
        }
    }

    #[test]
    fn a_language_name_longer_than_the_string_limit_is_refused_as_before() {
        // The fast parser takes a known name only within the string limit (the general
        // parser then refuses the header), except JAVA, which it always took.
        for (name, limit, taken) in [
            ("GO", 1, false),
            ("GO", 2, true),
            ("NODE_JS", 6, false),
            ("NODE_JS", 7, true),
            ("JAVA", 1, true),
        ] {
            let header = format!(
                r#"{{"code":10,"language":"{name}","version":399,"opaque":1,"flag":0,"serializeTypeCurrentRPC":"JSON"}}"#
            );
            let limits = Limits {
                max_string_len: limit,
                ..Limits::default()
            };
            assert_eq!(
                fast::parse(header.as_bytes(), &limits).is_some(),
                taken,
                "{header} {limit}"
            );
        }
    }

    proptest::proptest! {
        /// Random runs of digits, signs and the bytes that end numbers in a header, read from
        /// every offset: `int_at` answers as the byte loop, wherever the buffer ends.
        #[test]
        fn int_at_answers_as_the_byte_loop(
            text in "-?0{0,3}[0-9]{0,12}[-0-9,}.eE: a\u{0}\u{ff}]{0,14}",
            cut in proptest::num::usize::ANY,
        ) {
            let bytes = text.as_bytes();
            let cut = cut % (bytes.len() + 1);
            for pos in 0..=cut {
                check_int_at(&bytes[..cut], pos);
            }
        }

        /// Any eight bytes name a language only if they spell a known name and its quote.
        #[test]
        fn quoted_words_name_only_known_languages(word in proptest::num::u64::ANY, known in 0..14u8, keep in 0..8u32) {
            // The name before the first quote, if only zeros follow that quote.
            let named = |word: u64| {
                let bytes = word.to_le_bytes();
                let q = bytes.iter().position(|&b| b == b'"')?;
                let zeros_above = bytes[q + 1..].iter().all(|&b| b == 0);
                zeros_above.then(|| LanguageCode::from_name_bytes(&bytes[..q])).flatten()
            };
            proptest::prop_assert_eq!(LanguageCode::from_quoted_word(word), named(word));
            // A known name's word, with a byte changed or the word cut short.
            let name = LanguageCode(known).name().unwrap();
            let mut w = [0u8; 8];
            w[..name.len()].copy_from_slice(name.as_bytes());
            w[name.len()] = b'"';
            let exact = u64::from_le_bytes(w);
            proptest::prop_assert_eq!(LanguageCode::from_quoted_word(exact), Some(LanguageCode(known)));
            let changed = exact ^ (word & (0xFF << (8 * keep)));
            let cut = exact & (u64::MAX >> (8 * (7 - keep)));
            for other in [changed, cut] {
                proptest::prop_assert_eq!(LanguageCode::from_quoted_word(other), named(other));
            }
        }
    }

    /// A header holding `ext` as its `extFields` object in each key order the fast path takes:
    /// Java's alphabetical order, then rocketmq-rust's struct order (the object last).
    fn in_both_orders(ext: &str) -> [String; 2] {
        [
            format!(
                r#"{{"code":1,"extFields":{ext},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}}"#
            ),
            format!(
                r#"{{"code":1,"language":"JAVA","version":1,"opaque":3,"flag":0,"extFields":{ext}}}"#
            ),
        ]
    }

    /// `f` run with the walk (and unescaper) built with BMI1 where the CPU has it, or
    /// `without` it; the choice is put back after.
    fn with_bmi1_choice<R>(without: bool, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "std")]
        fast::WITHOUT_BMI1.with(|w| w.set(without));
        #[cfg(not(feature = "std"))]
        let _ = without;
        let r = f();
        #[cfg(feature = "std")]
        fast::WITHOUT_BMI1.with(|w| w.set(false));
        r
    }

    /// `Codec::decode` (compacting in place) against `decode_frame` (read only, no compaction).
    fn decode_both(header: &str) -> (Result<Command, DecodeError>, bytes::BytesMut) {
        decode_frame_both(frame(header))
    }

    /// [`decode_frame_both`] of `header`'s frame with each `(at, byte)` of `flips` written over
    /// the header's byte `at` (modulo its length); nothing for no flips.
    fn decode_flipped(header: &str, flips: &[(usize, u8)]) {
        if flips.is_empty() {
            return;
        }
        let mut wire = frame(header);
        for &(at, byte) in flips {
            wire[8 + at % header.len()] = byte;
        }
        let _compared = decode_frame_both(wire);
    }

    /// [`decode_both`] of a whole frame (its header perhaps damaged): the same answer both
    /// ways, the body read back, and an error leaving the buffer as it was.
    fn decode_frame_both(
        mut buf: bytes::BytesMut,
    ) -> (Result<Command, DecodeError>, bytes::BytesMut) {
        let codec = crate::Codec::default();
        let wire = buf.clone();
        let in_place = match codec.decode(&mut buf) {
            Ok(crate::Decoded::Command(cmd)) => Ok(cmd),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let copied = codec.decode_frame(&wire.clone().freeze());
        assert_eq!(in_place, copied, "{wire:?}");
        match &in_place {
            Ok(cmd) => assert_eq!(cmd.body(), b"xyz"),
            Err(_) => assert_eq!(buf, wire, "an error leaves the buffer as it was"),
        }
        (in_place, buf)
    }

    #[test]
    fn ext_fields_are_compacted_in_place_and_read_back() {
        let java = r#"{"code":310,"extFields":{"a":"g","k\"1":"K\u0001V\u0002","e":"","long":"0123456789abcdefghijklmnopqrstuvwxyz"},"flag":0,"language":"JAVA","opaque":-7,"remark":"r\"x","serializeTypeCurrentRPC":"JSON","version":453}"#;
        let rust = r#"{"code":10,"language":"RUST","version":399,"opaque":1,"flag":2,"remark":"\u4e3b\u9898","extFields":{"topic":"T","\u00e9":"\ud83d\ude80"},"serializeTypeCurrentRPC":"JSON"}"#;
        for (header, want, remark) in [
            (
                java,
                &[
                    ("a", "g"),
                    ("k\"1", "K\u{1}V\u{2}"),
                    ("e", ""),
                    ("long", "0123456789abcdefghijklmnopqrstuvwxyz"),
                ][..],
                "r\"x",
            ),
            (rust, &[("topic", "T"), ("é", "🚀")][..], "主题"),
        ] {
            let mut buf = frame(header);
            let parsed = parse_in_place(&mut buf[8..8 + header.len()], &Limits::default()).unwrap();
            assert_ne!(parsed.1 & COMPACT_EXT, 0, "{header}");
            assert_eq!(buf[8], compact::REMARK_AT, "{header}");
            let (cmd, rest) = decode_both(header);
            let cmd = cmd.unwrap();
            assert!(rest.is_empty());
            let fields: Vec<(&str, &str)> = cmd.ext_fields().iter().collect();
            assert_eq!(fields, want);
            assert_eq!(cmd.ext(want[1].0), Some(want[1].1));
            assert_eq!(cmd.ext("absent"), None);
            assert_eq!(cmd.ext_fields().len(), want.len());
            assert_eq!(cmd.remark(), Some(remark));
            // Changing the command copies the compacted fields out.
            let changed = cmd.clone().with_ext("z", "1");
            assert_eq!(changed.ext_fields().len(), want.len() + 1);
            assert_eq!(changed.remark(), Some(remark));
        }
    }

    #[test]
    fn a_compaction_is_undone_when_the_fast_parser_gives_up_later() {
        let ext = r#"{"code":1,"extFields":{"a":"1","b":"x\ny"}"#;
        // The general parser accepts these (whitespace, an unknown key, a number as text)...
        for tail in [
            r#","flag": 0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#,
            r#","flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1,"x":[1]}"#,
            r#","flag":0,"language":"JAVA","opaque":"3","serializeTypeCurrentRPC":"JSON","version":1} "#,
        ] {
            let header = format!("{ext}{tail}");
            let mut buf = frame(&header);
            // The general parser's header, compacted by it (from the original bytes).
            let parsed = parse_in_place(&mut buf[8..8 + header.len()], &Limits::default());
            let ext_at = parsed.unwrap().1;
            assert_ne!(ext_at & COMPACT_EXT, 0, "{header}");
            let at = 8 + (ext_at & !COMPACT_EXT) as usize;
            assert_eq!(&buf[at..at + 2], &[0x80, 1], "{header}");
            let cmd = decode_both(&header).0.unwrap();
            assert_eq!(cmd.ext("b"), Some("x\ny"));
            assert_eq!(cmd.ext_fields().len(), 2);
        }
        // ...and refuses these: the read buffer is left exactly as it was.
        for tail in [
            r#","flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}x"#,
            r#","flag":0,"language":"JAVA","opaque":3,"remark":"\q","serializeTypeCurrentRPC":"JSON","version":1}"#,
            r#","flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1.5}"#,
            r#","flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1"#,
        ] {
            let header = format!("{ext}{tail}");
            let (out, rest) = decode_both(&header);
            assert!(out.is_err(), "{header}");
            assert_eq!(rest, frame(&header), "{header}");
        }
        // A failure inside the object (an invalid escape in its third string).
        let header = r#"{"code":1,"extFields":{"a":"1","\x":"2"},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}"#;
        let (out, rest) = decode_both(header);
        assert!(out.is_err());
        assert_eq!(rest, frame(header));
    }

    #[test]
    fn escaped_remarks_read_back_through_the_scratch_or_in_place() {
        // Remarks with every kind of escape, from short to longer than the scratch holds, in
        // both key orders (the remark before the `extFields` object or after it), beside no,
        // one or five escaped strings of the object (which take the scratch's four slots).
        let remarks = [
            String::from(r#"a\"b"#),
            String::from(r#"nl\n cr\r tab\t bs\b ff\f sl\/ bk\\ q\" end"#),
            String::from(r#"\u0000\u001f\u00e9\u4E2D\ud83d\ude80 x"#),
            format!("{}\\n", "x".repeat(110)),
            format!("{}\\n", "y".repeat(140)),
            format!("\\t{}", "\\u0001".repeat(40)),
        ];
        let exts = [
            ("", 0),
            (r#""k":"v\n""#, 1),
            (r#""a\"":"1\t","b":"\u0002","c":"x\\y","d\/":"z""#, 4),
        ];
        for (r, remark) in remarks.iter().enumerate() {
            let want = naive_unescape(remark);
            for (e, (ext, fields)) in exts.into_iter().enumerate() {
                let java = format!(
                    r#"{{"code":310,"extFields":{{{ext}}},"flag":0,"language":"JAVA","opaque":-7,"remark":"{remark}","serializeTypeCurrentRPC":"JSON","version":453}}"#
                );
                let rust = format!(
                    r#"{{"code":10,"language":"RUST","version":399,"opaque":1,"flag":2,"remark":"{remark}","extFields":{{{ext}}},"serializeTypeCurrentRPC":"JSON"}}"#
                );
                for (rust_order, header) in [(false, java), (true, rust)] {
                    // The key-order parser takes it in place, whatever the scratch holds.
                    let mut copy = header.clone().into_bytes();
                    assert!(
                        fast::parse(&mut copy[..], &Limits::default()).is_some(),
                        "{header}"
                    );
                    // In place and from a copy (unescaped by `Escapes::rewrite`) alike.
                    let before = fast::SCRATCH_REMARKS.with(|n| n.get());
                    let (cmd, _) = decode_both(&header);
                    let scratch = fast::SCRATCH_REMARKS.with(|n| n.get()) > before;
                    let cmd = cmd.unwrap();
                    assert_eq!(cmd.remark(), Some(want.as_str()), "{header}");
                    assert_eq!(cmd.ext_fields().iter().count(), fields, "{header}");
                    // The short remarks take the scratch unless the object's strings filled
                    // it first; the 140-byte one never does.
                    if r < 3 {
                        assert_eq!(scratch, e < 2 || rust_order, "{header}");
                    }
                    if r == 4 || (e == 2 && !rust_order) {
                        assert!(!scratch, "{header}");
                    }
                }
            }
        }
    }

    #[test]
    fn escaped_ext_strings_beyond_the_scratch_are_unescaped_in_place() {
        // Each value ~100 bytes unescaped: the first is unescaped while parsing, the ones that
        // no longer fit the 128-byte scratch afterwards; all read back the same, compacted.
        let value = |i: usize| format!("{i}\\u0001{}\\n\\u00e9\\ud83d\\ude80\\\"", "p".repeat(90));
        let want = |i: usize| format!("{i}\u{1}{}\n\u{e9}\u{1f680}\"", "p".repeat(90));
        let ext: Vec<String> = (0..4)
            .map(|i| format!(r#""k\n{i}":"{}""#, value(i)))
            .collect();
        let header = format!(
            r#"{{"code":1,"extFields":{{{}}},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":1}}"#,
            ext.join(",")
        );
        let mut buf = frame(&header);
        let parsed = parse_in_place(&mut buf[8..8 + header.len()], &Limits::default()).unwrap();
        assert_ne!(parsed.1 & COMPACT_EXT, 0);
        let cmd = decode_both(&header).0.unwrap();
        let fields: Vec<(String, String)> = cmd
            .ext_fields()
            .iter()
            .map(|(k, v)| (String::from(k), String::from(v)))
            .collect();
        let expected: Vec<(String, String)> =
            (0..4).map(|i| (format!("k\n{i}"), want(i))).collect();
        assert_eq!(fields, expected);
        assert_eq!(cmd.ext("k\n3").map(String::from), Some(want(3)));
    }

    #[test]
    fn what_the_compact_form_cannot_hold_is_read_as_json() {
        // A value longer than a compact length (an object the general parser does not compact
        // either), and more escaped strings than are unescaped while parsing (4) and recorded
        // (8) (the fast parser gives up; the general one compacts it).
        let long = "v".repeat(compact::MAX_LEN + 1);
        let mut escaped = String::new();
        for i in 0..20 {
            escaped.push_str(&format!(r#","k{i}":"\t{i}""#));
        }
        for ext in [
            format!(r#"{{"a":"{long}","b":"c"}}"#),
            format!(r#"{{"a":"b"{escaped}}}"#),
        ] {
            let [header, _] = in_both_orders(&ext);
            let mut buf = frame(&header);
            let parsed = parse_in_place(&mut buf[8..8 + header.len()], &Limits::default()).unwrap();
            assert_eq!(parsed.1 & COMPACT_EXT == 0, ext.contains(&long));
            let cmd = decode_both(&header).0.unwrap();
            if ext.contains(&long) {
                assert_eq!(cmd.ext("a"), Some(long.as_str()));
                assert_eq!(cmd.ext("b"), Some("c"));
            } else {
                assert_eq!(cmd.ext_fields().len(), 21);
                assert_eq!(cmd.ext("k19"), Some("\t19"));
            }
        }
    }

    #[test]
    fn u00_escapes_at_every_offset_read_back() {
        // `\u00XX` escapes (both cases of hex, the highest ASCII one) and others, at every
        // offset from the string's start (so every position in the 16-byte runs and the
        // 24-byte window the unescaper reads at once) and, through the key's length, from the
        // 64-byte blocks; the object last in a header that ends right after it (so the
        // window runs past the header's end and the step byte by byte is taken).
        let pieces = [
            ("\\u0001", "\u{1}"),
            ("\\u001f", "\u{1f}"),
            ("\\u001A", "\u{1a}"),
            ("\\u007F", "\u{7f}"),
            ("\\u0080", "\u{80}"),
            ("\\n", "\n"),
            ("\\\"", "\""),
        ];
        for lead in 0..40 {
            for gap in [0usize, 1, 4, 10, 15, 16, 17, 23] {
                for (i, (esc, un)) in pieces.iter().enumerate() {
                    let (next, next_un) = pieces[(i + lead) % pieces.len()];
                    let value = format!(
                        "{}{esc}{}{next}{}\\u0002",
                        "a".repeat(lead),
                        "b".repeat(gap),
                        "c".repeat(gap % 7)
                    );
                    let want = format!(
                        "{}{un}{}{next_un}{}\u{2}",
                        "a".repeat(lead),
                        "b".repeat(gap),
                        "c".repeat(gap % 7)
                    );
                    let key = "k".repeat(1 + (lead * 7 + gap) % 64);
                    let ext = format!(r#"{{"p":"q","{key}":"{value}"}}"#);
                    for header in in_both_orders(&ext) {
                        for without_bmi1 in [false, true] {
                            let (parsed, cmd) = with_bmi1_choice(without_bmi1, || {
                                let mut copy = header.clone().into_bytes();
                                let parsed = fast::parse(&mut copy[..], &Limits::default());
                                (parsed, decode_both(&header).0)
                            });
                            assert!(parsed.is_some(), "{header} {without_bmi1}");
                            let cmd = cmd.unwrap();
                            assert_eq!(cmd.ext(&key), Some(want.as_str()), "{header}");
                            assert_eq!(cmd.ext("p"), Some("q"), "{header}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn entries_across_every_block_edge_read_back() {
        // Plain entries of lengths that put every quote of an entry at every offset from the
        // 64-byte blocks of the walk (an entry across a block edge is taken string by
        // string), some longer than a block, both key orders, with and without BMI1.
        for shift in 0..64usize {
            let entries: Vec<(String, String)> = (0..24)
                .map(|i| {
                    let klen = 1 + (i * 7 + shift) % 23;
                    let vlen = match (i + shift) % 11 {
                        0 => 70 + i,
                        _ => (i * 13 + shift * 3) % 41,
                    };
                    (format!("{i}{}", "k".repeat(klen)), "v".repeat(vlen))
                })
                .collect();
            let ext: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!(r#""{k}":"{v}""#))
                .collect();
            let ext = format!("{{{}}}", ext.join(","));
            for header in in_both_orders(&ext) {
                for without_bmi1 in [false, true] {
                    let (parsed, read_only, cmd) = with_bmi1_choice(without_bmi1, || {
                        let mut copy = header.clone().into_bytes();
                        let parsed = fast::parse(&mut copy[..], &Limits::default());
                        let read_only = fast::parse(header.as_bytes(), &Limits::default());
                        (parsed, read_only, decode_both(&header).0)
                    });
                    assert!(parsed.is_some(), "{header} {without_bmi1}");
                    assert_eq!(
                        format!("{read_only:?}"),
                        format!("{:?}", Some(general(header.as_bytes()).unwrap()))
                    );
                    let got: Vec<(String, String)> = cmd
                        .unwrap()
                        .ext_fields()
                        .iter()
                        .map(|(k, v)| (k.into(), v.into()))
                        .collect();
                    assert_eq!(got, entries, "{header}");
                }
            }
        }
    }

    /// Extension strings for the quote walk: long plain runs (strings across 64-byte blocks),
    /// escapes of every kind (runs of backslashes, escaped quotes), control characters and
    /// multi-byte UTF-8.
    fn ext_text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            "[a-z0-9]{0,90}",
            "[\\x00-\\x1f\"\\\\/a-z\u{e9}\u{4e2d}\u{1F680}]{0,40}",
            "[a-z]{0,30}[\\\\\"]{1,5}[a-z]{0,30}",
            ".{0,20}",
        ]
    }

    /// An `extFields` entry of a generated header: its key, whether the key is spelled with
    /// `\uXXXX`, and its value as written and as read (see [`ext_value`]).
    type GenEntry = (String, bool, (String, Option<String>));

    /// JSON whitespace, or none.
    fn ws() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Just;
        proptest::prop_oneof![3 => Just(String::new()), 1 => "[ \t\r\n]{1,6}"]
    }

    /// `text` as a JSON string: plainly escaped (as our encoder does), or with every
    /// character spelled `\uXXXX` (surrogate pairs for the rest).
    fn json_string(text: &str, spelled: bool) -> String {
        if !spelled {
            return serde_json::to_string(text).unwrap();
        }
        let mut out = String::from("\"");
        for unit in text.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
        out
    }

    /// An `extFields` value as a peer may write it: a string, `null`, a number or a boolean
    /// (read as its text), and the text a reader gets (`None` for `null`).
    fn ext_value() -> impl proptest::strategy::Strategy<Value = (String, Option<String>)> {
        use alloc::string::ToString;
        use proptest::strategy::{Just, Strategy};
        proptest::prop_oneof![
            4 => (ext_text(), proptest::bool::weighted(0.2))
                .prop_map(|(t, spelled)| (json_string(&t, spelled), Some(t))),
            1 => Just(("null".to_string(), None)),
            1 => "-?[1-9][0-9]{0,6}(\\.[0-9]{1,3})?(e[+-]?[0-9])?".prop_map(|n| (n.clone(), Some(n))),
            1 => proptest::bool::ANY.prop_map(|b| (b.to_string(), Some(b.to_string()))),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Headers the fast parser does not take (whitespace anywhere, any key order, unknown
        /// keys, `null`, number and boolean values, `\uXXXX` spellings, duplicate keys, two
        /// `extFields` objects, several remarks) are rewritten for reading by the general
        /// parser: the remark's place written in, the last `extFields` object compacted. Every
        /// field reads back as the header says, the same as from a copy read as JSON
        /// (`decode_frame`), and mutated headers get the same answer both ways.
        #[test]
        fn general_headers_are_rewritten_for_reading(
            entries in proptest::collection::vec((ext_text(), proptest::bool::weighted(0.2), ext_value()), 0..24),
            earlier in proptest::option::weighted(0.2, proptest::collection::vec((ext_text(), ext_value()), 0..3)),
            remarks in proptest::collection::vec(proptest::option::of((ext_text(), proptest::bool::weighted(0.2))), 0..3),
            unknown in proptest::option::of("[a-z]{1,8}"),
            spaces in proptest::collection::vec(ws(), 40),
            order in proptest::collection::vec(proptest::num::usize::ANY, 8),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..3),
        ) {
            let mut sp = spaces.iter().cycle();
            let mut w = || sp.next().unwrap().clone();
            let object = |w: &mut dyn FnMut() -> String, entries: &[GenEntry]| {
                let body: Vec<String> = entries
                    .iter()
                    .map(|(k, spelled, (v, _))| format!("{}{}{}:{}{}{}", w(), json_string(k, *spelled), w(), w(), v, w()))
                    .collect();
                format!("{{{}{}}}", body.join(","), w())
            };
            // Members: the fixed fields, the remarks, the objects, an unknown key; shuffled.
            let mut members: Vec<String> = vec![
                r#""code":310"#.into(),
                r#""language":"JAVA""#.into(),
                r#""version":453"#.into(),
                r#""opaque":-7"#.into(),
                r#""flag":0"#.into(),
            ];
            let mut tail: Vec<String> = Vec::new();
            for r in &remarks {
                tail.push(match r {
                    Some((t, spelled)) => format!(r#""remark":{}{}"#, w(), json_string(t, *spelled)),
                    None => r#""remark":null"#.into(),
                });
            }
            if let Some(u) = &unknown {
                members.push(format!(r#""{u}":{{"a":[1,"x",null]}}"#));
            }
            for (i, o) in order.iter().enumerate().take(members.len()) {
                let j = o % members.len();
                members.swap(i, j);
            }
            // The earlier object anywhere, the last one after it.
            let mut at = order[6] % (members.len() + 1);
            if let Some(earlier) = &earlier {
                let e: Vec<GenEntry> =
                    earlier.iter().map(|(k, v)| (k.clone(), false, v.clone())).collect();
                members.insert(at, format!(r#""extFields":{}"#, object(&mut w, &e)));
                at += 1 + order[7] % (members.len() - at);
            }
            members.insert(at, format!(r#""extFields":{}{}"#, w(), object(&mut w, &entries)));
            members.extend(tail);
            let inner: Vec<String> = members.iter().map(|m| format!("{}{m}{}", w(), w())).collect();
            let header = format!("{}{{{}}}{}", w(), inner.join(","), w());

            let want_ext: Vec<(String, String)> = entries
                .iter()
                .filter_map(|(k, _, (_, v))| v.clone().map(|v| (k.clone(), v)))
                .collect();
            let want_remark = remarks.last().cloned().flatten().map(|(t, _)| t);
            let (decoded, _) = decode_both(&header);
            let cmd = decoded.unwrap();
            let got: Vec<(String, String)> =
                cmd.ext_fields().iter().map(|(k, v)| (k.into(), v.into())).collect();
            proptest::prop_assert_eq!(&got, &want_ext, "{}", header);
            for (k, _) in &want_ext {
                let last = want_ext.iter().rev().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
                proptest::prop_assert_eq!(cmd.ext(k), last);
            }
            proptest::prop_assert_eq!(cmd.remark(), want_remark.as_deref());
            proptest::prop_assert_eq!((cmd.code, cmd.opaque, cmd.version), (310, -7, 453));

            // How it was rewritten: compacted when it has an entry, the remark's place written.
            let mut buf = frame(&header);
            let (fixed, ext_at) = parse_in_place(&mut buf[8..8 + header.len()], &Limits::default()).unwrap();
            proptest::prop_assert_eq!(ext_at & COMPACT_EXT != 0, !want_ext.is_empty());
            proptest::prop_assert_eq!(fixed.has_remark, want_remark.is_some());
            if fixed.has_remark {
                proptest::prop_assert_eq!(buf[8], compact::REMARK_AT);
            }

            decode_flipped(&header, &flips);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 384,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        /// The walk built with BMI1 (where the CPU has it) and without give the same answer
        /// and leave the same bytes, on headers with escapes, long strings and mutations.
        #[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1"), feature = "std"))]
        fn the_walk_with_and_without_bmi1_agree(
            entries in proptest::collection::vec((ext_text(), ext_text()), 0..20),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..3),
        ) {
            let mut cmd = Command::request(310).with_opaque(-7);
            for (k, v) in &entries {
                cmd = cmd.with_ext(k.as_str(), v.as_str());
            }
            let mut header = encode(&cmd).into_bytes();
            for &(at, byte) in &flips {
                let n = header.len();
                header[at % n] = byte;
            }
            let run = |without: bool| {
                let before = fast::PLAIN_WALKS.with(|n| n.get());
                let mut copy = header.clone();
                let (parsed, read_only) = with_bmi1_choice(without, || {
                    (
                        fast::parse(&mut copy[..], &Limits::default()),
                        fast::parse(&header[..], &Limits::default()),
                    )
                });
                // The walk asked for is the one taken (when there is an object to walk).
                let plain = fast::PLAIN_WALKS.with(|n| n.get()) > before;
                if flips.is_empty() && !entries.is_empty() {
                    assert_eq!(plain, without || !scan::has_bmi1());
                }
                (format!("{parsed:?}"), copy, format!("{read_only:?}"))
            };
            proptest::prop_assert_eq!(run(true), run(false));
        }

        /// The key-order parser's quote walk (64-byte masks, four quotes an entry, escapes
        /// unescaped while walking) reads every `extFields` object of both key orders as the
        /// general parser does, taken by the fast path whenever it holds at most four escaped
        /// strings; mutated headers get the same answer in place as from a copy, and an error
        /// leaves the read buffer as it was.
        #[test]
        fn the_quote_walk_agrees_with_the_general_parser(
            entries in proptest::collection::vec((ext_text(), ext_text()), 0..20),
            remark in proptest::option::weighted(0.3, ext_text()),
            rust_order in proptest::bool::ANY,
            respell in proptest::bool::ANY,
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..3),
        ) {
            let mut cmd = Command::request(310).with_opaque(-7);
            cmd.language = LanguageCode::JAVA;
            cmd.version = 453;
            for (k, v) in &entries {
                cmd = cmd.with_ext(k.as_str(), v.as_str());
            }
            if let Some(remark) = &remark {
                cmd = cmd.with_remark(remark.as_str());
            }
            let java = encode(&cmd);
            let header = if rust_order {
                let ext = match java.find(r#","extFields":"#) {
                    // No raw `"` inside a string: the first `},"flag":` ends the object.
                    Some(at) => &java[at..at + java[at..].find(r#"},"flag":"#).unwrap() + 1],
                    None => "",
                };
                let remark = remark.as_deref().map_or("null".into(), |r| json_string(r, false));
                format!(r#"{{"code":310,"language":"JAVA","version":453,"opaque":-7,"flag":0,"remark":{remark}{ext},"serializeTypeCurrentRPC":"JSON"}}"#)
            } else {
                java
            };
            // Escapes our encoder never writes (every other peer may): `\uXXXX` for
            // non-ASCII in both cases of hex, surrogate pairs, `\/`. These characters occur
            // only inside strings.
            const RESPELT: [char; 4] = ['\u{e9}', '\u{1F680}', '/', '\u{4e2d}'];
            let header = if respell {
                header
                    .replace('\u{e9}', "\\u00e9")
                    .replace('\u{1F680}', "\\ud83d\\ude80")
                    .replace('/', "\\/")
                    .replace('\u{4e2d}', "\\u4E2D")
            } else {
                header
            };
            let general = general(header.as_bytes()).unwrap();
            let escaped = cmd
                .ext_fields()
                .iter()
                .flat_map(|(k, v)| [k, v])
                .filter(|s| needs_escape(s.as_bytes()) || (respell && s.contains(RESPELT)))
                .count();
            let mut copy = header.clone().into_bytes();
            let fast = fast::parse(&mut copy[..], &Limits::default());
            let read_only = fast::parse(header.as_bytes(), &Limits::default());
            if escaped <= 4 {
                // (More escaped strings than the scratch and the record hold: the in-place
                // parse gives up, the read-only one need not.)
                proptest::prop_assert!(fast.is_some(), "fast path refused {}", header);
                proptest::prop_assert!(read_only.is_some(), "fast path refused {}", header);
            }
            if let Some(read_only) = read_only {
                proptest::prop_assert_eq!(format!("{read_only:?}"), format!("{general:?}"));
            }
            let (decoded, _) = decode_both(&header);
            let decoded = decoded.unwrap();
            let want: Vec<(String, String)> =
                cmd.ext_fields().iter().map(|(k, v)| (k.into(), v.into())).collect();
            let got: Vec<(String, String)> =
                decoded.ext_fields().iter().map(|(k, v)| (k.into(), v.into())).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(decoded.remark(), cmd.remark());
            proptest::prop_assert_eq!((decoded.code, decoded.opaque, decoded.version), (310, -7, 453));

            decode_flipped(&header, &flips);
        }
    }
}
