//! Where header encoders write: straight into a `BufMut`, or into a reserved, not yet
//! committed region of one (so a header can be written once and its length filled in after).

use bytes::buf::UninitSlice;
use bytes::BufMut;

use crate::codec::command::HeaderStr;

/// A header string to write: its bytes, and for a short [`HeaderStr`] its whole inline buffer
/// (which a [`WindowSink`] with room copies as one fixed-size move, whatever the length).
#[derive(Clone, Copy)]
pub(crate) struct Str<'a> {
    pub(crate) bytes: &'a [u8],
    inline: Option<&'a [u8; HeaderStr::INLINE_CAPACITY]>,
}

impl<'a> Str<'a> {
    #[inline(always)]
    pub(crate) fn plain(s: &'a str) -> Self {
        Str {
            bytes: s.as_bytes(),
            inline: None,
        }
    }

    #[inline(always)]
    pub(crate) fn header(s: &'a HeaderStr) -> Self {
        match s.inline_buf() {
            Some((buf, len)) => Str {
                bytes: &buf[..len],
                inline: Some(buf),
            },
            None => Str {
                bytes: s.as_bytes(),
                inline: None,
            },
        }
    }
}

/// What a fast write may store past the end of what it means to write (the window must have
/// this much more room; the extra bytes are overwritten by the next write or never committed).
const SLACK: usize = 32;
const _: () = assert!(SLACK >= HeaderStr::INLINE_CAPACITY && SLACK >= 16);

/// Bit `i` set for each byte `i` of `block` (little-endian) that needs escaping in a JSON
/// string: `"`, `\\` or a control byte (below 0x20).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn json_escape_mask(block: u128) -> u32 {
    use core::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x,
    };
    // SAFETY: these intrinsics only need SSE2, which this build enables (the `cfg` above; it
    // is part of the x86_64 baseline); none of them touches memory.
    // `tests::the_sse2_mask_matches_the_table` checks every byte value at every position
    // against the table the portable version uses.
    unsafe {
        let v = _mm_set_epi64x((block >> 64) as u64 as i64, block as u64 as i64);
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned `v <= 0x1f`: the minimum of the two is `v` itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// See the x86_64 version.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn json_escape_mask(block: u128) -> u32 {
    json_escape_mask_portable(block)
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
#[inline(always)]
fn json_escape_mask_portable(block: u128) -> u32 {
    let mut mask = 0;
    for (i, b) in block.to_le_bytes().iter().enumerate() {
        if JSON_ESCAPE[usize::from(*b)] != 0 {
            mask |= 1 << i;
        }
    }
    mask
}

#[inline(always)]
fn le_u128(b: &[u8]) -> u128 {
    let mut w = [0u8; 16];
    w.copy_from_slice(&b[..16]);
    u128::from_le_bytes(w)
}

/// What each byte becomes inside a JSON string: 0 = itself, `u` = `\u00XX`, else `\` + that byte.
pub(crate) static JSON_ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// A byte sink for the header encoders.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);

    #[inline]
    fn put_u8(&mut self, b: u8) {
        self.put(&[b]);
    }

    #[inline]
    fn put_u16(&mut self, n: u16) {
        self.put(&n.to_be_bytes());
    }

    #[inline]
    fn put_u32(&mut self, n: u32) {
        self.put(&n.to_be_bytes());
    }

    /// Writes `parts` one after the other.
    #[inline]
    fn put_all<const N: usize>(&mut self, parts: [&[u8]; N]) {
        for part in parts {
            self.put(part);
        }
    }

    /// Writes a ROCKETMQ extension entry: `u16` key length, key, `u32` value length, value.
    #[inline]
    fn put_binary_entry(&mut self, key: Str<'_>, value: Str<'_>) {
        let (key, value) = (key.bytes, value.bytes);
        self.put_u16(key.len() as u16);
        self.put(key);
        self.put_u32(value.len() as u32);
        self.put(value);
    }

    /// Writes as many of a built command's JSON extension entries as it can in one go (the
    /// first opening the `extFields` object when `first`); returns how many. The caller writes
    /// the rest with [`Sink::put_json_entry`] or part by part.
    #[inline]
    fn put_json_entries(&mut self, _first: bool, _entries: &[(HeaderStr, HeaderStr)]) -> usize {
        0
    }

    /// Writes a JSON extension entry (`sep`, then `key":"value"`, both escaped) if this sink
    /// can do it in one go; `false` (nothing written) asks the caller to write it part by part.
    #[inline]
    fn put_json_entry(&mut self, _first: bool, _key: Str<'_>, _value: Str<'_>) -> bool {
        false
    }
}

/// Writes through to a `BufMut` (which panics when full: callers check room first).
pub(crate) struct BufSink<'a, B: BufMut>(pub(crate) &'a mut B);

impl<B: BufMut> Sink for BufSink<'_, B> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0.put_slice(bytes);
    }
}

/// Writes into a fixed window of uninitialised memory; remembers if it ran out of room instead
/// of writing past it.
pub(crate) struct WindowSink<'a> {
    window: &'a mut UninitSlice,
    pub(crate) pos: usize,
    pub(crate) overflow: bool,
}

impl<'a> WindowSink<'a> {
    pub(crate) fn new(window: &'a mut UninitSlice, start: usize) -> Self {
        WindowSink {
            window,
            pos: start,
            overflow: false,
        }
    }
}

/// Copies `src` to `dst` (of the same length): up to 16 bytes as two overlapping fixed-size
/// moves (no call into `memcpy`), longer ones with `copy_from_slice`.
#[inline(always)]
fn copy_small(dst: &mut UninitSlice, src: &[u8]) {
    let n = src.len();
    if n > 16 {
        dst.copy_from_slice(src);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else if n > 0 {
        // The first, middle and last byte cover 1 to 3 bytes.
        dst.write_byte(0, src[0]);
        dst.write_byte(n / 2, src[n / 2]);
        dst.write_byte(n - 1, src[n - 1]);
    }
}

impl WindowSink<'_> {
    /// Copies `s` to `at` (the window has `s.bytes.len() + SLACK` bytes of room there); returns
    /// where it ends.
    #[inline(always)]
    fn copy_str(&mut self, at: usize, s: Str<'_>) -> usize {
        let n = s.bytes.len();
        match s.inline {
            Some(buf) => self.window[at..at + buf.len()].copy_from_slice(buf),
            None => copy_small(&mut self.window[at..at + n], s.bytes),
        }
        at + n
    }

    /// [`WindowSink::json_str`], with an inline string of up to 16 bytes that needs no escape
    /// checked and copied as one block.
    #[inline(always)]
    fn json_str_short(&mut self, at: usize, s: Str<'_>) -> usize {
        let n = s.bytes.len();
        if let Some(buf) = s.inline {
            if n <= 16 {
                let block = le_u128(&buf[..16]);
                if json_escape_mask(block) & ((1u32 << n) - 1) == 0 {
                    self.window[at..at + 16].copy_from_slice(&block.to_le_bytes());
                    return at + n;
                }
            }
        }
        self.json_str(at, s)
    }

    /// Writes `s` escaped as a JSON string's content at `at` (room for `6 * len + SLACK` bytes
    /// there); returns where it ends. Sixteen bytes at a time: each block is stored as it is and
    /// checked; a block with a byte to escape is stored again from that byte on.
    #[inline(never)]
    fn json_str(&mut self, mut at: usize, s: Str<'_>) -> usize {
        let bytes = s.bytes;
        let n = bytes.len();
        let mut i = 0;
        loop {
            let left = n - i;
            if left == 0 {
                return at;
            }
            // The next (up to) 16 bytes in the low end of `block`.
            let block = if left >= 16 {
                le_u128(&bytes[i..i + 16])
            } else if n >= 16 {
                le_u128(&bytes[n - 16..]) >> (8 * (16 - left))
            } else if let Some(buf) = s.inline.filter(|buf| i + 16 <= buf.len()) {
                // A short string's inline buffer: 16 readable bytes past `i` (up to 6).
                le_u128(&buf[i..i + 16])
            } else {
                let mut padded = [0u8; 16];
                padded[..left].copy_from_slice(&bytes[i..]);
                u128::from_le_bytes(padded)
            };
            self.window[at..at + 16].copy_from_slice(&block.to_le_bytes());
            let flags = json_escape_mask(block) & (u32::MAX >> (32 - left.min(16)));
            if flags == 0 {
                if left <= 16 {
                    return at + left;
                }
                i += 16;
                at += 16;
                continue;
            }
            // The bytes before the first flagged one are plain and already written.
            let plain = flags.trailing_zeros() as usize;
            at = self.json_escape_byte(at + plain, bytes[i + plain]);
            i += plain + 1;
        }
    }

    /// Writes byte `b` (one that needs it) escaped at `at`; returns where it ends.
    #[inline(always)]
    fn json_escape_byte(&mut self, at: usize, b: u8) -> usize {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let esc = JSON_ESCAPE[usize::from(b)];
        if esc == b'u' {
            let hex = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
                0,
                0,
            ];
            self.window[at..at + 8].copy_from_slice(&hex);
            at + 6
        } else {
            self.window[at..at + 2].copy_from_slice(&[b'\\', esc]);
            at + 2
        }
    }

    /// Overwrites the 4 bytes at `at` (written before) with `n`, big-endian.
    #[inline]
    pub(crate) fn patch_u32(&mut self, at: usize, n: u32) {
        if at + 4 <= self.pos {
            self.window[at..at + 4].copy_from_slice(&n.to_be_bytes());
        }
    }
}

impl Sink for WindowSink<'_> {
    /// Header strings are mostly short (see `copy_small`). After an overflow, later writes may
    /// still land (the window is then discarded whole).
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let pos = self.pos;
        if n > self.window.len() - pos {
            self.overflow = true;
            return;
        }
        copy_small(&mut self.window[pos..pos + n], bytes);
        self.pos = pos + n;
    }

    /// One room check for the whole entry; the two lengths are fixed-size writes, and short
    /// strings are copied as their whole inline buffer when the window has room to spare.
    #[inline(always)]
    fn put_binary_entry(&mut self, key: Str<'_>, value: Str<'_>) {
        let (k, v) = (key.bytes.len(), value.bytes.len());
        let at = self.pos;
        let room = self.window.len() - at;
        if 6 + k + v + SLACK <= room {
            self.window[at..at + 2].copy_from_slice(&(k as u16).to_be_bytes());
            let at = self.copy_str(at + 2, key);
            self.window[at..at + 4].copy_from_slice(&(v as u32).to_be_bytes());
            self.pos = self.copy_str(at + 4, value);
            return;
        }
        if 6 + k + v > room {
            self.overflow = true;
            return;
        }
        let w = &mut self.window[at..at + 6 + k + v];
        w[..2].copy_from_slice(&(k as u16).to_be_bytes());
        copy_small(&mut w[2..2 + k], key.bytes);
        w[2 + k..6 + k].copy_from_slice(&(v as u32).to_be_bytes());
        copy_small(&mut w[6 + k..], value.bytes);
        self.pos = at + 6 + k + v;
    }

    /// Every entry with room for its worst case and [`SLACK`], in one loop.
    #[inline]
    fn put_json_entries(&mut self, first: bool, entries: &[(HeaderStr, HeaderStr)]) -> usize {
        const FIRST: &[u8; 16] = b",\"extFields\":{\"\0";
        const NEXT: &[u8; 16] = b",\"\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let mut at = self.pos;
        let (mut sep, mut sep_len) = if first { (FIRST, 15) } else { (NEXT, 2) };
        for (done, (key, value)) in entries.iter().enumerate() {
            let (key, value) = (Str::header(key), Str::header(value));
            let worst = 15 + 6 * (key.bytes.len() + value.bytes.len()) + 4;
            if worst + SLACK > self.window.len() - at {
                self.pos = at;
                return done;
            }
            self.window[at..at + 16].copy_from_slice(sep);
            at = self.json_str_short(at + sep_len, key);
            self.window[at..at + 4].copy_from_slice(b"\":\"\0");
            at = self.json_str_short(at + 3, value);
            self.window.write_byte(at, b'"');
            at += 1;
            (sep, sep_len) = (NEXT, 2);
        }
        self.pos = at;
        entries.len()
    }

    /// With room for the worst case (every byte escaped as `\u00XX`) and [`SLACK`]: the entry
    /// in one pass, 8 bytes at a time, each string copied and checked at once.
    #[inline(always)]
    fn put_json_entry(&mut self, first: bool, key: Str<'_>, value: Str<'_>) -> bool {
        const FIRST: &[u8; 16] = b",\"extFields\":{\"\0";
        const NEXT: &[u8; 16] = b",\"\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let worst = 15 + 6 * (key.bytes.len() + value.bytes.len()) + 4;
        let at = self.pos;
        if worst + SLACK > self.window.len() - at {
            return false;
        }
        let (sep, sep_len) = if first { (FIRST, 15) } else { (NEXT, 2) };
        self.window[at..at + 16].copy_from_slice(sep);
        let at = self.json_str(at + sep_len, key);
        self.window[at..at + 4].copy_from_slice(b"\":\"\0");
        let at = self.json_str(at + 3, value);
        self.window.write_byte(at, b'"');
        self.pos = at + 1;
        true
    }

    /// One room check for all the parts (an extension entry: lengths, key, value).
    #[inline]
    fn put_all<const N: usize>(&mut self, parts: [&[u8]; N]) {
        let mut total = 0;
        for part in parts {
            total += part.len();
        }
        if total > self.window.len() - self.pos {
            self.overflow = true;
            return;
        }
        let mut at = self.pos;
        for part in parts {
            copy_small(&mut self.window[at..at + part.len()], part);
            at += part.len();
        }
        self.pos = at;
    }

    #[inline]
    fn put_u8(&mut self, b: u8) {
        if self.pos < self.window.len() {
            self.window.write_byte(self.pos, b);
            self.pos += 1;
        } else {
            self.overflow = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sse2_mask_matches_the_table() {
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut bytes = [b'a'; 16];
                bytes[at] = b;
                bytes[(at + 7) % 16] = b.wrapping_add(0x80);
                let block = u128::from_le_bytes(bytes);
                assert_eq!(
                    json_escape_mask(block),
                    json_escape_mask_portable(block),
                    "byte {b:#x} at {at}"
                );
            }
        }
    }
}
