//! The ROCKETMQ binary header (serialize type 1).
//!
//! Layout: code `i16`, language `u8`, version `i16`, opaque `i32`, flag `i32`, remark (`i32` length +
//! UTF-8; length 0 is no remark), extension block (`i32` length, then entries of `u16` key length,
//! key, `i32` value length, value). Every length is checked against the header before it is used.
//!
//! Java-compatible readings: the code and version are 16 bits on the wire (wider values are
//! truncated when encoding and sign-extended when decoding), an empty remark is written as no
//! remark, extension entries with an empty value are dropped when decoding (Java reads them as
//! null), and bytes after the extension block are ignored.

use bytes::{BufMut, Bytes};

use crate::codec::command::{Command, Fixed, LanguageCode, SerializeType};
use crate::codec::error::{BinaryField, DecodeError, EncodeError};
use crate::codec::limits::Limits;
use crate::codec::scan;
use crate::codec::sink::{BufSink, Sink, Str, WindowSink};

const FIXED_LEN: usize = 13;

/// Decodes a ROCKETMQ header into a command with an empty body.
///
/// The command reads its remark and extension fields from `header` in place.
pub fn decode_header(header: &Bytes, limits: &Limits) -> Result<Command, DecodeError> {
    let (fixed, ext_at) = parse(header, limits)?;
    Ok(Command::decoded(
        fixed,
        SerializeType::RocketMq,
        header.clone(),
        false,
        ext_at,
    ))
}

/// Checks a ROCKETMQ header completely (every length against the header and the limits, every
/// string's UTF-8) and reads its fixed fields; with where its extension block starts if it
/// holds an entry with a value (0 if not: the block is at 21 or later), so that a reader finds
/// the block at once (see `Command::ext_fields`).
#[inline(always)]
pub(crate) fn parse(header: &[u8], limits: &Limits) -> Result<(Fixed, u32), DecodeError> {
    let overrun = |field, offset| DecodeError::BinaryOverrun { field, offset };
    // The fixed fields in one bounds check.
    let Some(&[c0, c1, language, v0, v1, o0, o1, o2, o3, f0, f1, f2, f3]) = header.get(..FIXED_LEN)
    else {
        return Err(overrun(BinaryField::Fixed, 0));
    };
    let mut out = Fixed {
        code: i32::from(i16::from_be_bytes([c0, c1])),
        language: LanguageCode(language),
        version: i32::from(i16::from_be_bytes([v0, v1])),
        opaque: i32::from_be_bytes([o0, o1, o2, o3]),
        flag: i32::from_be_bytes([f0, f1, f2, f3]),
        has_remark: false,
        has_ext: false,
    };
    let remark_len = len_at(header, FIXED_LEN, BinaryField::RemarkLength)?;
    let mut pos = FIXED_LEN + 4;
    if remark_len > 0 {
        if remark_len > limits.max_string_len {
            return Err(DecodeError::StringTooLong {
                offset: pos,
                max: limits.max_string_len,
            });
        }
        let Some(text) = header.get(pos..pos + remark_len) else {
            return Err(overrun(BinaryField::Remark, pos));
        };
        if !remark_is_utf8(text) {
            return Err(DecodeError::BinaryInvalidUtf8 {
                field: BinaryField::Remark,
                offset: pos,
            });
        }
        out.has_remark = true;
        pos += remark_len;
    }
    let ext_len = len_at(header, pos, BinaryField::ExtLength)?;
    let ext_start = pos + 4;
    if ext_len > header.len() - ext_start {
        return Err(overrun(BinaryField::Ext, ext_start));
    }
    let mut ext_at = 0;
    if ext_len > 0 {
        out.has_ext = check_ext_block(header, ext_start, ext_start + ext_len, limits)? > 0;
        if out.has_ext {
            // Within a header of at most 2^24 bytes (its length is the marker's 24 bits).
            ext_at = ext_start as u32;
        }
    }
    Ok((out, ext_at))
}

/// Whether a remark is UTF-8: an ASCII check first (most remarks are ASCII, and it is a few
/// wide ORs), then, if it has a high byte, `core::str::from_utf8` (under 64 bytes) or
/// `simdutf8` from the first 64-byte block with a high byte on (SIMD where the target has it).
#[inline]
fn remark_is_utf8(text: &[u8]) -> bool {
    if text.len() < 64 {
        scan::is_ascii(text) || is_utf8(text)
    } else {
        let ascii = scan::ascii_prefix(text);
        ascii == text.len() || is_utf8(&text[ascii..])
    }
}

/// Whether `bytes` (not ASCII) is UTF-8: `simdutf8` (SIMD where the target has it; see
/// [`scan::is_utf8_long`] and, from 16 bytes, [`scan::is_utf8_short`]), else a text under 64
/// bytes copied into 64 zeroed ones first so that it takes the SIMD path too (the zeros are
/// ASCII: the copy is UTF-8 exactly when the text is, a character cut at its end stays cut).
#[inline(never)]
fn is_utf8(bytes: &[u8]) -> bool {
    if bytes.len() >= 64 {
        return scan::is_utf8_long(bytes);
    }
    if let Some(utf8) = scan::is_utf8_short(bytes) {
        return utf8;
    }
    let mut block = [0u8; 64];
    block[..bytes.len()].copy_from_slice(bytes);
    simdutf8::basic::from_utf8(&block).is_ok()
}

/// The non-negative `i32` length at `at`.
#[inline]
fn len_at(header: &[u8], at: usize, field: BinaryField) -> Result<usize, DecodeError> {
    match header.get(at..at + 4) {
        Some(&[a, b, c, d]) => usize::try_from(i32::from_be_bytes([a, b, c, d]))
            .map_err(|_| DecodeError::BinaryOverrun { field, offset: at }),
        _ => Err(DecodeError::BinaryOverrun { field, offset: at }),
    }
}

/// Walks the extension block `header[start..end]`, checking every length against it, every
/// string's UTF-8 and the number of entries (those with an empty value are not counted: Java
/// reads them as null).
///
/// The common block (ASCII, no longer than a string may be, entries within limits) is walked
/// with only the checks its structure needs; anything else — and any block the quick walk
/// finds wrong — is walked again by [`check_ext_block_exactly`], which names the first fault,
/// so every error is the one it always was.
#[inline]
fn check_ext_block(
    header: &[u8],
    start: usize,
    end: usize,
    limits: &Limits,
) -> Result<usize, DecodeError> {
    let block = &header[start..end];
    let block_ascii = is_ascii(block);
    // In a block no longer than `max_string_len`, no string can pass that limit without also
    // overrunning the block, which the quick walk does check.
    if block.len() <= limits.max_string_len {
        let count = match block_ascii {
            true => count_ext_entries(block),
            false => count_utf8_entries(block),
        };
        if let Some(count) = count {
            if count <= limits.max_ext_fields {
                return Ok(count);
            }
        }
    }
    check_ext_block_exactly(header, start, end, limits, block_ascii)
}

/// [`count_ext_entries`] of a block that is not ASCII, its strings' UTF-8 checked at once: if
/// the whole block is UTF-8 and every string starts and ends on a character boundary (its
/// first byte, and the byte after it, is not a continuation byte), every string is UTF-8 — it
/// is a run of whole characters of a valid text. One check of the block (SIMD from 64 bytes)
/// instead of one per string. `None` if an entry overruns the block, a string does not start
/// or end on a boundary, or the block is not UTF-8 (a length's bytes can make it so while
/// every string is valid): the exact walk then decides, string by string.
#[inline(never)]
fn count_utf8_entries(block: &[u8]) -> Option<usize> {
    // Whether `i` is a character boundary of `block` (its end is one).
    let boundary = |i: usize| !matches!(block.get(i), Some(&b) if (b as i8) < -0x40);
    let (mut p, mut count) = (0, 0);
    while p < block.len() {
        let &[k0, k1] = block.get(p..p + 2)? else {
            return None;
        };
        let key_at = p + 2;
        let (next, value_len) = ext_entry(block, p, usize::from(u16::from_be_bytes([k0, k1])))?;
        let value_at = next - value_len;
        // Both strings' first bytes and the bytes after them (the value's length, the next
        // entry's key length or the block's end).
        if !(boundary(key_at) && boundary(value_at - 4) && boundary(value_at) && boundary(next)) {
            return None;
        }
        p = next;
        count += usize::from(value_len != 0);
    }
    is_utf8(block).then_some(count)
}

/// Whether no byte of `block` has its high bit set: 64 bytes a step (SSE2 on x86_64) for
/// blocks of 64 bytes or more.
#[inline(always)]
fn is_ascii(block: &[u8]) -> bool {
    if block.len() >= 64 {
        scan::ascii_prefix(block) == block.len()
    } else {
        scan::is_ascii(block)
    }
}

/// The entries with a non-empty value in the extension block `block`, or `None` if an entry
/// overruns it (or, rarely, if a block that is sound has a shape the quick walk does not
/// follow: the exact walk then decides).
///
/// The walk is a chain of dependent loads (each entry's place comes from the lengths before
/// it), so its time is the latency of one step times the entries. Two things shorten it:
/// - the common entry — a one-byte key (`SEND_MESSAGE_V2`, the request Java clients send
///   most, names its fields `a`…`n`) and a non-empty value shorter than 256 bytes, `[0, 1,
///   key, 0, 0, 0, len, …]` — is one byte load and an add a step ([`quick_step`]);
/// - a block of 128 bytes or more is walked as two chains at once: the second starts at an
///   entry found near the middle by its shape ([`anchor`]), and the first must end exactly
///   there. If it does, the walk from the start passes through the anchor and goes on as the
///   second chain did, so the two counts add up to the whole block's; if not (the anchor was
///   a value's bytes that look like an entry), the block is walked again as one chain.
#[inline]
fn count_ext_entries(block: &[u8]) -> Option<usize> {
    if let Some(mid) = anchor(block) {
        if let Some(count) = count_two_chains(block, mid) {
            return Some(count);
        }
    }
    count_chain(block, 0)
}

/// [`count_ext_entries`] as two chains: `block[..mid]` from 0 and `block[mid..]` from `mid`.
#[inline]
fn count_two_chains(block: &[u8], mid: usize) -> Option<usize> {
    let head = block.get(..mid)?;
    let (mut a, mut b, mut count) = (0, mid, 0);
    // Both chains a step at a time while both are on common entries; each step branches out
    // as soon as its own entry is not one (no flags combined on the way).
    while let Some(len_a) = common_value_len(head, a) {
        let Some(len_b) = common_value_len(block, b) else {
            break;
        };
        a += 7 + len_a;
        b += 7 + len_b;
        count += 2;
    }
    // Then both a step at a time on entries of any shape (keys longer than one byte): the
    // two chains' loads still overlap.
    while a < head.len() && b < block.len() {
        let (next_a, len_a) = any_step(head, a)?;
        let (next_b, len_b) = any_step(block, b)?;
        a = next_a;
        b = next_b;
        count += usize::from(len_a != 0) + usize::from(len_b != 0);
    }
    Some(count + count_chain(head, a)? + count_chain(block, b)?)
}

/// The entry of any shape at `p`: where the next begins and its value's length, or `None` if
/// it overruns `block`.
#[inline(always)]
fn any_step(block: &[u8], p: usize) -> Option<(usize, usize)> {
    let &[k0, k1] = block.get(p..p + 2)? else {
        return None;
    };
    ext_entry(block, p, usize::from(u16::from_be_bytes([k0, k1])))
}

/// The bytes of an entry's first eight (as a little-endian word) that give its shape: the key
/// length's two and the value length's first three.
pub(crate) const SHAPE_MASK: u64 = 0x0000_FFFF_FF00_FFFF;
/// Those bytes for a one-byte key and a value shorter than 256 bytes.
pub(crate) const SHAPE: u64 = 0x0000_0000_0000_0100;

/// The value's length if the entry at `p` is a common one (a one-byte key and a value of 1 to
/// 255 bytes) whose first eight bytes lie within `block`. The entry after it is then
/// `7 + len` bytes on; that may be past the block's end, where no further step is taken and
/// which no walk accepts as the end (each ends with `p == block.len()`).
#[inline(always)]
fn common_value_len(block: &[u8], p: usize) -> Option<usize> {
    let entry = block.get(p..)?.first_chunk::<8>()?;
    // The length first: it is what the next step waits for; the shape is checked beside it.
    let value_len = usize::from(entry[6]);
    if value_len == 0 || u64::from_le_bytes(*entry) & SHAPE_MASK != SHAPE {
        return None;
    }
    Some(value_len)
}

/// Where the entry after the one at `p` begins, if the entry at `p` is a common one (see
/// [`common_value_len`]).
#[inline(always)]
fn quick_step(block: &[u8], p: usize) -> Option<usize> {
    Some(p + 7 + common_value_len(block, p)?)
}

/// The entries with a non-empty value from `p` to the end of `block` (which must be where the
/// last one ends), or `None` if an entry overruns it.
#[inline]
fn count_chain(block: &[u8], mut p: usize) -> Option<usize> {
    let end = block.len();
    let mut count = 0;
    loop {
        while let Some(next) = quick_step(block, p) {
            p = next;
            count += 1;
        }
        if p >= end {
            break;
        }
        let &[k0, k1] = block.get(p..p + 2)? else {
            return None;
        };
        let (next, value_len) = ext_entry(block, p, usize::from(u16::from_be_bytes([k0, k1])))?;
        p = next;
        count += usize::from(value_len != 0);
    }
    (p == end).then_some(count)
}

/// Where a second chain of the walk may start, found in the 32 bytes from a little before the
/// middle of `block`: the first place where a common entry's shape (`[0, 1, _, 0, 0, 0]`, see
/// [`quick_step`]) begins, or else the entry after the first value length below 2^16 (two
/// zero bytes after a byte that is not zero: a length's high bytes after a text, its key;
/// see [`after_value_length`]). `None` for blocks under 128 bytes (one chain is as quick) or
/// if neither is there. A key's or a value's bytes may look like either; the walk checks that
/// a chain from the start ends exactly there.
#[inline]
fn anchor(block: &[u8]) -> Option<usize> {
    if block.len() < 128 {
        return None;
    }
    let from = block.len() / 2 - 16;
    let window = block[from..].first_chunk::<48>()?;
    let (zero, one) = zero_one_masks(window);
    let shape = zero & (one >> 1) & (zero >> 3) & (zero >> 4) & (zero >> 5) & 0xFFFF_FFFF;
    if shape != 0 {
        return Some(from + shape.trailing_zeros() as usize);
    }
    after_value_length(block, from, zero)
}

/// The entry after the value whose length field starts at the first place `q` (of the 32 from
/// `from`, not the first) where `zero` (bit `i`: `block[from + i]` is 0) has two zero bytes
/// after one that is not: `q + 4` plus that length, if within `block`.
#[inline]
fn after_value_length(block: &[u8], from: usize, zero: u64) -> Option<usize> {
    let starts = zero & (zero >> 1) & !(zero << 1) & 0xFFFF_FFFE;
    if starts == 0 {
        return None;
    }
    let q = from + starts.trailing_zeros() as usize;
    let &[a, b, c, d] = block.get(q..q + 4)? else {
        return None;
    };
    let next = q + 4 + u32::from_be_bytes([a, b, c, d]) as usize;
    (next < block.len()).then_some(next)
}

/// Bit `i` of the first mask set where `window[i]` is 0, of the second where it is 1.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn zero_one_masks(window: &[u8; 48]) -> (u64, u64) {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        _mm_setzero_si128,
    };
    // SAFETY: the intrinsics need only SSE2, which this build enables (the `cfg` above; it is
    // part of the x86_64 baseline). The three unaligned loads read the 48 bytes `window`
    // refers to (`loadu` has no alignment requirement).
    // `tests::masks_see_every_byte_at_every_place` checks the masks against
    // `zero_one_masks_portable` for every byte value at every position,
    // `tests::sse2_masks_match_the_portable_ones` for random windows.
    unsafe {
        let p = window.as_ptr().cast::<__m128i>();
        let (zero, one) = (_mm_setzero_si128(), _mm_set1_epi8(1));
        let mut z = 0u64;
        let mut o = 0u64;
        for i in 0..3 {
            let v = _mm_loadu_si128(p.add(i));
            z |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)) as u16) << (16 * i);
            o |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, one)) as u16) << (16 * i);
        }
        (z, o)
    }
}

/// See the x86_64 version.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn zero_one_masks(window: &[u8; 48]) -> (u64, u64) {
    zero_one_masks_portable(window)
}

/// [`zero_one_masks`] a byte at a time.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
fn zero_one_masks_portable(window: &[u8; 48]) -> (u64, u64) {
    let (mut z, mut o) = (0u64, 0u64);
    for (i, &b) in window.iter().enumerate() {
        z |= u64::from(b == 0) << i;
        o |= u64::from(b == 1) << i;
    }
    (z, o)
}

/// The entry at `p` of `block` whose key is `key_len` bytes: where the next begins and its
/// value's length, or `None` if it overruns the block.
#[inline(always)]
fn ext_entry(block: &[u8], p: usize, key_len: usize) -> Option<(usize, usize)> {
    let len_at = p + 2 + key_len;
    let &[v0, v1, v2, v3] = block.get(len_at..len_at + 4)? else {
        return None;
    };
    // A negative length reads as 2^31 or more and overruns.
    let value_len = u32::from_be_bytes([v0, v1, v2, v3]) as usize;
    if value_len > block.len() - (len_at + 4) {
        return None;
    }
    Some((len_at + 4 + value_len, value_len))
}

/// [`check_ext_block`] entry by entry, every check in the order that names the first fault.
#[cold]
fn check_ext_block_exactly(
    header: &[u8],
    start: usize,
    end: usize,
    limits: &Limits,
    block_ascii: bool,
) -> Result<usize, DecodeError> {
    let overrun = |field, offset| DecodeError::BinaryOverrun { field, offset };
    let too_long = |offset| DecodeError::StringTooLong {
        offset,
        max: limits.max_string_len,
    };
    let mut count = 0;
    // If no byte of the block (strings and lengths alike) has its high bit set, every string
    // is ASCII and needs no UTF-8 check of its own.
    let mut p = start;
    while p < end {
        let Some(&[k0, k1]) = header.get(p..p + 2).filter(|_| p + 2 <= end) else {
            return Err(overrun(BinaryField::ExtKeyLength, p));
        };
        let key_len = usize::from(u16::from_be_bytes([k0, k1]));
        let key_at = p + 2;
        if key_len > limits.max_string_len {
            return Err(too_long(key_at));
        }
        if key_at + key_len > end {
            return Err(overrun(BinaryField::ExtKey, key_at));
        }
        let len_at = key_at + key_len;
        let Some(&[v0, v1, v2, v3]) = header.get(len_at..len_at + 4).filter(|_| len_at + 4 <= end)
        else {
            return Err(overrun(BinaryField::ExtValueLength, len_at));
        };
        let Ok(value_len) = usize::try_from(i32::from_be_bytes([v0, v1, v2, v3])) else {
            return Err(overrun(BinaryField::ExtValueLength, len_at));
        };
        let value_at = len_at + 4;
        if value_len > limits.max_string_len {
            return Err(too_long(value_at));
        }
        if value_at + value_len > end {
            return Err(overrun(BinaryField::ExtValue, value_at));
        }
        p = value_at + value_len;
        if !block_ascii {
            if core::str::from_utf8(&header[key_at..len_at]).is_err() {
                return Err(DecodeError::BinaryInvalidUtf8 {
                    field: BinaryField::ExtKey,
                    offset: key_at,
                });
            }
            if core::str::from_utf8(&header[value_at..p]).is_err() {
                return Err(DecodeError::BinaryInvalidUtf8 {
                    field: BinaryField::ExtValue,
                    offset: value_at,
                });
            }
        }
        if value_len == 0 {
            continue;
        }
        if count == limits.max_ext_fields {
            return Err(DecodeError::TooManyExtFields {
                max: limits.max_ext_fields,
            });
        }
        count += 1;
    }
    Ok(count)
}

/// The exact length [`encode_header`] will write for `cmd`.
pub fn header_len(cmd: &Command) -> Result<usize, EncodeError> {
    Ok(FIXED_LEN + 4 + remark_len(cmd) + 4 + ext_len(cmd)?)
}

fn remark_len(cmd: &Command) -> usize {
    cmd.remark().map_or(0, str::len)
}

fn ext_len(cmd: &Command) -> Result<usize, EncodeError> {
    let mut n = 0;
    for (k, v) in cmd.ext_fields() {
        if k.len() > usize::from(u16::MAX) {
            return Err(EncodeError::ExtKeyTooLong { len: k.len() });
        }
        n += 2 + k.len() + 4 + v.len();
    }
    Ok(n)
}

/// Writes `cmd`'s header; exactly [`header_len`] bytes. The caller has checked [`header_len`]
/// (lengths that fit the frame limit fit their fields).
pub fn encode_header(cmd: &Command, dst: &mut impl BufMut) {
    write_header(cmd, ext_len(cmd).unwrap_or(0), &mut BufSink(dst));
}

/// The header's first 17 bytes: code, language, version, opaque, flag and the remark's length.
/// Java truncates a code or version wider than 16 bits; so do we.
#[inline(always)]
fn fixed_part(cmd: &Command, remark_len: usize) -> [u8; 17] {
    let code = (cmd.code as i16).to_be_bytes();
    let version = (cmd.version as i16).to_be_bytes();
    let opaque = cmd.opaque.to_be_bytes();
    let flag = cmd.flag.to_be_bytes();
    let remark_len = (remark_len as u32).to_be_bytes();
    [
        code[0],
        code[1],
        cmd.language.0,
        version[0],
        version[1],
        opaque[0],
        opaque[1],
        opaque[2],
        opaque[3],
        flag[0],
        flag[1],
        flag[2],
        flag[3],
        remark_len[0],
        remark_len[1],
        remark_len[2],
        remark_len[3],
    ]
}

/// Writes `cmd`'s header whose extension block is `ext_len` bytes (from [`header_len`]).
pub(crate) fn write_header(cmd: &Command, ext_len: usize, out: &mut impl Sink) {
    let remark = cmd.remark().unwrap_or("");
    out.put(&fixed_part(cmd, remark.len()));
    out.put(remark.as_bytes());
    out.put_u32(ext_len as u32);
    for (k, v) in cmd.ext_fields() {
        out.put_u16(k.len() as u16);
        out.put(k.as_bytes());
        out.put_u32(v.len() as u32);
        out.put(v.as_bytes());
    }
}

/// [`write_header`] in one pass over the fields: the extension block's length is written after
/// its entries. Refuses a key too long for its `u16` length (as [`header_len`] does).
pub(crate) fn write_header_in_place(
    cmd: &Command,
    out: &mut WindowSink<'_>,
) -> Result<(), EncodeError> {
    let remark = cmd.remark().unwrap_or("");
    // The fixed fields, the remark and the extension block's length (patched below).
    let head = FIXED_LEN + 4 + remark.len() + 4;
    let ext_len_at = out.pos + head - 4;
    match out.raw(head) {
        // SAFETY: 17 bytes, the remark, 4 bytes: `head` bytes, each part starting where the
        // one before ended; all of them written.
        Some(raw) => unsafe {
            raw.store(0, fixed_part(cmd, remark.len()));
            if !remark.is_empty() {
                raw.copy(17, remark.as_bytes());
            }
            raw.store(head - 4, [0; 4]);
            out.commit(head);
        },
        None => {
            out.put(&fixed_part(cmd, remark.len()));
            out.put(remark.as_bytes());
            out.put_u32(0);
        }
    }
    match cmd.built_ext() {
        Some(entries) => out
            .put_binary_entries(entries)
            .map_err(|len| EncodeError::ExtKeyTooLong { len })?,
        None => {
            for (k, v) in cmd.ext_fields() {
                check_key_len(k)?;
                out.put_binary_entry(Str::plain(k), Str::plain(v));
            }
        }
    }
    if !out.overflow {
        // (After an overflow the window is discarded, and positions mean nothing.)
        let ext_len = out.pos - ext_len_at - 4;
        out.patch_u32(ext_len_at, ext_len as u32);
    }
    Ok(())
}

/// Refuses a key too long for its `u16` length.
#[inline(always)]
fn check_key_len(k: &str) -> Result<(), EncodeError> {
    if k.len() > usize::from(u16::MAX) {
        return Err(EncodeError::ExtKeyTooLong { len: k.len() });
    }
    Ok(())
}

/// The extension block's length, or why it cannot be encoded.
pub(crate) fn checked_ext_len(cmd: &Command) -> Result<usize, EncodeError> {
    ext_len(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::Just;

    fn decode(b: &[u8]) -> Result<Command, DecodeError> {
        decode_header(&Bytes::copy_from_slice(b), &Limits::default())
    }

    fn fixed() -> Vec<u8> {
        vec![0, 10, 1, 1, 0x8f, 0, 0, 0, 1, 0, 0, 0, 0]
    }

    proptest::proptest! {
        /// The quick walk of an extension block answers exactly as the entry-by-entry one,
        /// for well-formed blocks, blocks with one byte changed, and tight limits.
        #[test]
        fn the_quick_walk_answers_as_the_exact_one(
            entries in proptest::collection::vec(
                (proptest::collection::vec(0u8..=255, 0..6), proptest::collection::vec(0u8..=255, 0..6)),
                0..6,
            ),
            flip in proptest::option::of((0usize..200, 0u8..=255)),
            max_string_len in 0usize..8,
            max_ext_fields in 0usize..5,
        ) {
            let mut block = vec![];
            for (k, v) in &entries {
                block.extend_from_slice(&(k.len() as u16).to_be_bytes());
                block.extend_from_slice(k);
                block.extend_from_slice(&(v.len() as u32).to_be_bytes());
                block.extend_from_slice(v);
            }
            if let Some((at, byte)) = flip {
                if !block.is_empty() {
                    let at = at % block.len();
                    block[at] = byte;
                }
            }
            proptest::prop_assert_eq!(scan::is_ascii(&block), block.is_ascii());
            for max_string_len in [max_string_len, 1 << 20] {
                let limits = Limits { max_string_len, max_ext_fields, ..Limits::default() };
                proptest::prop_assert_eq!(
                    check_ext_block(&block, 0, block.len(), &limits),
                    check_ext_block_exactly(&block, 0, block.len(), &limits, block.is_ascii())
                );
            }
        }
    }

    proptest::proptest! {
        /// The same for blocks of text that is not ASCII (any characters, so strings of
        /// 1–4-byte characters, lengths whose bytes are not ASCII, bytes changed inside a
        /// character or at a string's edge), which the walk checks for UTF-8 as one block.
        #[test]
        fn the_utf8_block_walk_answers_as_the_exact_one(
            entries in proptest::collection::vec(
                (
                    proptest::prop_oneof![3 => "\\PC{0,4}", 1 => "\\PC{30,70}"],
                    proptest::prop_oneof![3 => "\\PC{0,6}", 1 => "\\PC{30,70}"],
                ),
                0..6,
            ),
            flips in proptest::collection::vec((0usize..2000, 0u8..=255), 0..3),
            max_string_len in proptest::prop_oneof![Just(4usize), Just(64), Just(1 << 20)],
            max_ext_fields in 0usize..7,
        ) {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = entries
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
                .collect();
            let limits = Limits { max_string_len, max_ext_fields, ..Limits::default() };
            quick_and_exact_agree(ext_block(&entries), &flips, &limits)?;
        }
    }

    /// A block of text that is not ASCII is taken by the one-check walk when every length is
    /// ASCII, and falls back (same answer) when a length's byte is not or a string is cut
    /// inside a character.
    #[test]
    fn a_utf8_block_is_checked_at_once() {
        let limits = Limits::default();
        let entries = vec![
            ("主题".as_bytes().to_vec(), "🚀✅".as_bytes().to_vec()),
            (b"k".to_vec(), "ключ значение".as_bytes().to_vec()),
            (b"e".to_vec(), vec![]),
        ];
        let block = ext_block(&entries);
        assert_eq!(count_utf8_entries(&block), Some(2));
        assert_eq!(check_ext_block(&block, 0, block.len(), &limits), Ok(2));
        // A value of 200 bytes: its length's last byte (0xC8) is not UTF-8 in the block.
        let long = vec![(b"k".to_vec(), "é".repeat(100).into_bytes())];
        let block = ext_block(&long);
        assert_eq!(count_utf8_entries(&block), None);
        assert_eq!(check_ext_block(&block, 0, block.len(), &limits), Ok(1));
        // A key ending inside a character and a value starting inside it: the block is
        // UTF-8, the strings are not.
        let mut block = ext_block(&[(vec![b'a', 0xE4], vec![0xB8, 0xBB, b'b'])]);
        assert_eq!(count_utf8_entries(&block), None);
        assert!(check_ext_block(&block, 0, block.len(), &limits).is_err());
        // A value of 195 bytes that starts inside a character: its length's last byte
        // (0xC3) and its first (0xA9) make "é", so the block is UTF-8 and the value is not.
        // The same for a key of 195 bytes.
        let mut inside = vec![0xA9];
        inside.extend_from_slice(&[b'a'; 194]);
        for entry in [(b"k".to_vec(), inside.clone()), (inside, b"v".to_vec())] {
            let block = ext_block(&[entry]);
            assert!(core::str::from_utf8(&block).is_ok());
            assert_eq!(count_utf8_entries(&block), None);
            assert!(matches!(
                check_ext_block(&block, 0, block.len(), &limits),
                Err(DecodeError::BinaryInvalidUtf8 { .. })
            ));
        }
        // Made whole again by moving the lengths' bytes out of the character: still refused
        // (the key is cut), by both walks.
        block[1] = 1;
        assert_eq!(
            check_ext_block(&block, 0, block.len(), &limits),
            check_ext_block_exactly(&block, 0, block.len(), &limits, false)
        );
    }

    /// `block` with the `flips` (place modulo its length, new byte) made: the quick walk and
    /// the exact one give the same answer.
    fn quick_and_exact_agree(
        mut block: Vec<u8>,
        flips: &[(usize, u8)],
        limits: &Limits,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        for &(at, byte) in flips {
            if !block.is_empty() {
                let at = at % block.len();
                block[at] = byte;
            }
        }
        proptest::prop_assert_eq!(
            check_ext_block(&block, 0, block.len(), limits),
            check_ext_block_exactly(&block, 0, block.len(), limits, block.is_ascii())
        );
        Ok(())
    }

    /// An extension block of `entries`.
    fn ext_block(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut block = vec![];
        for (k, v) in entries {
            block.extend_from_slice(&(k.len() as u16).to_be_bytes());
            block.extend_from_slice(k);
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v);
        }
        block
    }

    proptest::proptest! {
        /// The same for long blocks of mostly common entries (one-byte keys, short values,
        /// which the walk takes as two chains), values that hold bytes shaped like an entry,
        /// bytes changed, and tight limits.
        #[test]
        fn the_two_chain_walk_answers_as_the_exact_one(
            entries in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        6 => proptest::collection::vec(b'a'..=b'z', 1..=1),
                        1 => proptest::collection::vec(0u8..=0x7f, 0..4),
                    ],
                    proptest::prop_oneof![
                        4 => proptest::collection::vec(b' '..=b'~', 1..40),
                        1 => proptest::collection::vec(proptest::prop_oneof![0u8..=2, b'a'..=b'c'], 0..300),
                        1 => proptest::collection::vec(0u8..=0x7f, 0..12),
                    ],
                ),
                0..24,
            ),
            flips in proptest::collection::vec((0usize..2000, 0u8..=255), 0..3),
            max_string_len in proptest::prop_oneof![Just(1usize << 20), 0usize..400],
            max_ext_fields in proptest::prop_oneof![Just(64usize), 0usize..20],
        ) {
            let limits = Limits { max_string_len, max_ext_fields, ..Limits::default() };
            quick_and_exact_agree(ext_block(&entries), &flips, &limits)?;
        }

        /// The same for long blocks of entries whose keys are longer than one byte (the walk
        /// takes them as two chains from a value length near the middle), keys and values
        /// that hold zero bytes (false anchors), empty values, bytes changed, tight limits.
        #[test]
        fn the_value_length_anchor_walk_answers_as_the_exact_one(
            entries in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        6 => proptest::collection::vec(b'a'..=b'z', 2..12),
                        1 => proptest::collection::vec(proptest::prop_oneof![Just(0u8), b'a'..=b'c'], 0..6),
                    ],
                    proptest::prop_oneof![
                        6 => proptest::collection::vec(b' '..=b'~', 1..24),
                        1 => proptest::collection::vec(proptest::prop_oneof![Just(0u8), 1u8..=4, b'a'..=b'c'], 0..300),
                        1 => Just(vec![]),
                    ],
                ),
                0..60,
            ),
            flips in proptest::collection::vec((0usize..2000, 0u8..=255), 0..3),
            max_string_len in proptest::prop_oneof![Just(1usize << 20), 0usize..400],
            max_ext_fields in proptest::prop_oneof![Just(64usize), 0usize..20],
        ) {
            let limits = Limits { max_string_len, max_ext_fields, ..Limits::default() };
            quick_and_exact_agree(ext_block(&entries), &flips, &limits)?;
        }

        /// The SSE2 masks and the portable ones agree.
        #[test]
        fn sse2_masks_match_the_portable_ones(
            window in proptest::array::uniform32(0u8..=3),
            tail in proptest::array::uniform16(0u8..=255),
        ) {
            let mut w = [0u8; 48];
            w[..32].copy_from_slice(&window);
            w[32..].copy_from_slice(&tail);
            proptest::prop_assert_eq!(zero_one_masks(&w), zero_one_masks_portable(&w));
        }
    }

    #[test]
    fn masks_see_every_byte_at_every_place() {
        for at in 0..48 {
            for byte in 0..=255u8 {
                let mut w = [7u8; 48];
                w[at] = byte;
                assert_eq!(
                    zero_one_masks(&w),
                    zero_one_masks_portable(&w),
                    "{at} {byte}"
                );
            }
        }
    }

    /// A remark is UTF-8 exactly when `core::str::from_utf8` says so: ASCII, short and long
    /// non-ASCII text, and a bad byte at every position.
    #[test]
    fn remark_check_matches_from_utf8() {
        for text in [
            "No topic route info",
            "消息发送失败，请检查网络",
            "ok 🚀 done ✅ 𝄞 end",
        ] {
            for repeat in [1, 2, 5, 9] {
                let t = text.repeat(repeat);
                let mut b = t.into_bytes();
                assert!(remark_is_utf8(&b));
                scan::each_bad_byte(&mut b, &[0x80, 0xC0, 0xFF, b'a'], |b, at, bad| {
                    assert_eq!(
                        remark_is_utf8(b),
                        core::str::from_utf8(b).is_ok(),
                        "{at} {bad}"
                    );
                });
            }
        }
    }

    /// The send request's block (as in the benches) is walked as two chains; a value whose
    /// bytes look like an entry near the middle sends the walk back to one chain, with the
    /// same answer.
    #[test]
    fn a_send_request_block_takes_two_chains() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = [
            ("a", "please_rename_unique_group_name"),
            ("b", "TopicTest"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "3"),
            ("f", "0"),
            ("g", "1714000000123"),
            ("h", "0"),
            ("i", "KEYS\u{1}OrderID188\u{2}UNIQ_KEY\u{1}7F0000017A2418B4AAC24D5F3C900000\u{2}WAIT\u{1}true\u{2}TAGS\u{1}TagA\u{2}"),
            ("j", "0"),
            ("k", "false"),
            ("m", "false"),
            ("n", "broker-a"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let block = ext_block(&entries);
        let mid = anchor(&block).expect("an anchor near the middle");
        assert!(mid > 0 && mid < block.len());
        assert_eq!(count_two_chains(&block, mid), Some(13));
        assert_eq!(count_ext_entries(&block), Some(13));

        // A value holding an entry's shape where the anchor is looked for.
        let mut fake = entries.clone();
        fake[1].1 = vec![b'x'; 300];
        let mut block = ext_block(&fake);
        let at = block.len() / 2 - 10;
        let value_b = 38 + 7..38 + 7 + 300;
        assert!(value_b.contains(&at) && value_b.contains(&(at + 7)));
        block[at..at + 7].copy_from_slice(&[0, 1, b'q', 0, 0, 0, 3]);
        let mid = anchor(&block).expect("the fake entry is found");
        assert_eq!(mid, at);
        assert_eq!(count_two_chains(&block, mid), None);
        assert_eq!(count_ext_entries(&block), Some(13));
        let limits = Limits::default();
        assert_eq!(
            check_ext_block(&block, 0, block.len(), &limits),
            check_ext_block_exactly(&block, 0, block.len(), &limits, true)
        );
    }

    /// A block of five-byte keys (no common entry) is walked as two chains from the entry
    /// after a value length near the middle; a value holding zero bytes where that length is
    /// looked for sends the walk back to one chain, with the same answer.
    #[test]
    fn a_block_of_longer_keys_takes_two_chains() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..50)
            .map(|i| {
                (
                    alloc::format!("key{i:02}").into_bytes(),
                    alloc::format!("value-{}", i * 37).into_bytes(),
                )
            })
            .collect();
        let block = ext_block(&entries);
        let from = block.len() / 2 - 16;
        let window = block[from..].first_chunk::<48>().unwrap();
        let (zero, one) = zero_one_masks(window);
        let shape = zero & (one >> 1) & (zero >> 3) & (zero >> 4) & (zero >> 5) & 0xFFFF_FFFF;
        assert_eq!(shape, 0, "no common entry's shape");
        let mid = anchor(&block).expect("a value length near the middle");
        // An entry boundary: the walk from the start passes through it.
        let mut p = 0;
        while p < mid {
            p = any_step(&block, p).unwrap().0;
        }
        assert_eq!(p, mid);
        assert_eq!(count_two_chains(&block, mid), Some(50));
        assert_eq!(count_ext_entries(&block), Some(50));

        // A value holding zero bytes where the anchor is looked for: the first two look like
        // a value length, which leads into the value (not to an entry).
        let boundaries = |block: &[u8]| {
            let mut at = vec![0];
            while let Some((next, _)) = any_step(block, *at.last().unwrap()) {
                at.push(next);
            }
            at
        };
        let (block, mid) = (0..50)
            .find_map(|i| {
                let mut fake = entries.clone();
                fake[i].1 = [[b'x'; 20], [0; 20], [b'x'; 20]].concat();
                let block = ext_block(&fake);
                let mid = anchor(&block)?;
                (!boundaries(&block).contains(&mid)).then_some((block, mid))
            })
            .expect("a value whose zeros are taken for a value length");
        assert_eq!(count_two_chains(&block, mid), None);
        assert_eq!(count_ext_entries(&block), Some(50));
        let limits = Limits::default();
        assert_eq!(
            check_ext_block(&block, 0, block.len(), &limits),
            check_ext_block_exactly(&block, 0, block.len(), &limits, true)
        );
    }

    #[test]
    fn round_trip_keeps_fields() {
        let cmd = Command::request(310)
            .with_opaque(-5)
            .with_remark("说明")
            .with_ext("a", "1")
            .with_ext("", "empty key")
            .with_serialize_type(crate::SerializeType::RocketMq);
        let mut out = vec![];
        encode_header(&cmd, &mut out);
        assert_eq!(out.len(), header_len(&cmd).unwrap());
        assert_eq!(decode(&out).unwrap(), cmd);
    }

    #[test]
    fn negative_and_overrunning_lengths_are_rejected() {
        let mut neg_remark = fixed();
        neg_remark.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            decode(&neg_remark).unwrap_err(),
            DecodeError::BinaryOverrun {
                field: BinaryField::RemarkLength,
                offset: 13
            }
        );
        let mut neg_value = fixed();
        neg_value.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 0, 1, b'k', 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode(&neg_value).unwrap_err(),
            DecodeError::BinaryOverrun {
                field: BinaryField::ExtValueLength,
                offset: 24
            }
        );
        let mut cut_value = fixed();
        cut_value.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 1, b'k', 0, 0, 0, 5, b'v', b'v']);
        assert_eq!(
            decode(&cut_value).unwrap_err(),
            DecodeError::BinaryOverrun {
                field: BinaryField::ExtValue,
                offset: 28
            }
        );
        let mut bad_utf8 = fixed();
        bad_utf8.extend_from_slice(&[0, 0, 0, 1, 0xff, 0, 0, 0, 0]);
        assert_eq!(
            decode(&bad_utf8).unwrap_err(),
            DecodeError::BinaryInvalidUtf8 {
                field: BinaryField::Remark,
                offset: 17
            }
        );
    }

    #[test]
    fn empty_values_are_dropped_and_limits_hold() {
        let mut h = fixed();
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 14]);
        h.extend_from_slice(&[0, 1, b'a', 0, 0, 0, 0]);
        h.extend_from_slice(&[0, 1, b'b', 0, 0, 0, 0]);
        assert!(decode(&h).unwrap().ext_fields().is_empty());
        let limits = Limits {
            max_string_len: 2,
            ..Limits::default()
        };
        let mut long = fixed();
        long.extend_from_slice(&[0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0]);
        assert_eq!(
            decode_header(&Bytes::from(long), &limits).unwrap_err(),
            DecodeError::StringTooLong { offset: 17, max: 2 }
        );
    }
}
