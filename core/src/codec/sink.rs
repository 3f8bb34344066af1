//! Where header encoders write: straight into a `BufMut`, or into a reserved, not yet
//! committed region of one (so a header can be written once and its length filled in after).
//!
//! The window's fast writers check room once for a whole part (an extension entry, the fixed
//! fields) and then store through [`Raw`], without a check per write.

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

/// What a fast write may store past the end of what it means to write (the room checked for it
/// must have this much more; the extra bytes are overwritten by the next write or never
/// committed).
pub(crate) const SLACK: usize = 32;
const _: () = assert!(SLACK >= INLINE && INLINE >= 16);
const INLINE: usize = HeaderStr::INLINE_CAPACITY;

/// The longest decimal `i32`: `-2147483648`.
pub(crate) const INT_MAX_LEN: usize = 11;

/// Stores into memory whose room was checked once beforehand, with no check per store.
///
/// Every method is `unsafe`: the caller guarantees that what it stores (from `at`, as long as
/// the method says) lies within the `len` bytes at `base`, which are writable (uninitialised
/// memory of the window). Debug builds assert it at every store, so the tests (which run the
/// fast writers against windows cut short everywhere, see `codec::frame::tests`) would catch a
/// room check that asks for too little.
#[derive(Clone, Copy)]
pub(crate) struct Raw {
    base: *mut u8,
    len: usize,
}

impl Raw {
    /// The spare capacity of `dst` as room for `need` bytes and [`SLACK`], if its current chunk
    /// has that much; what is stored there is committed with `dst.advance_mut`.
    #[inline(always)]
    pub(crate) fn spare(dst: &mut impl BufMut, need: usize) -> Option<Raw> {
        let chunk = dst.chunk_mut();
        if chunk.len() < need.saturating_add(SLACK) {
            return None;
        }
        Some(Raw {
            base: chunk.as_mut_ptr(),
            len: need + SLACK,
        })
    }

    /// Stores `bytes` at `at`: `N` bytes.
    #[inline(always)]
    pub(crate) unsafe fn store<const N: usize>(self, at: usize, bytes: [u8; N]) {
        debug_assert!(
            at <= self.len && N <= self.len - at,
            "store past the room checked"
        );
        // SAFETY: `at + N <= len` (the caller's guarantee), and those bytes are writable.
        unsafe { self.base.add(at).cast::<[u8; N]>().write_unaligned(bytes) }
    }

    /// Stores `src` at `at`: exactly `src.len()` bytes (up to 32 as fixed-size moves, no call
    /// into `memcpy`).
    #[inline(always)]
    pub(crate) unsafe fn copy(self, at: usize, src: &[u8]) {
        let n = src.len();
        debug_assert!(
            at <= self.len && n <= self.len - at,
            "copy past the room checked"
        );
        // SAFETY (every arm): each store lies within `at..at + n` (the caller's guarantee);
        // each read is a chunk of `src`, which the length tests make exist.
        unsafe {
            if n > 32 {
                core::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(at), n);
            } else if n >= 16 {
                self.store(at, first::<16>(src));
                self.store(at + n - 16, last::<16>(src));
            } else if n >= 8 {
                self.store(at, first::<8>(src));
                self.store(at + n - 8, last::<8>(src));
            } else if n >= 4 {
                self.store(at, first::<4>(src));
                self.store(at + n - 4, last::<4>(src));
            } else if n > 0 {
                // The first, middle and last byte cover 1 to 3 bytes.
                self.store(at, [src[0]]);
                self.store(at + n / 2, [src[n / 2]]);
                self.store(at + n - 1, [src[n - 1]]);
            }
        }
    }

    /// Stores `s` at `at`; returns where it ends. Stores up to `s.bytes.len() + SLACK` bytes (a
    /// short string as its whole inline buffer).
    #[inline(always)]
    pub(crate) unsafe fn put_str(self, at: usize, s: Str<'_>) -> usize {
        // SAFETY: an inline buffer is at most SLACK bytes; else exactly the string's length.
        unsafe {
            match s.inline {
                // Two overlapping 16-byte moves.
                Some(buf) => {
                    self.store(at, first::<16>(buf));
                    self.store(at + INLINE - 16, last::<16>(buf));
                }
                None => self.copy(at, s.bytes),
            }
        }
        at + s.bytes.len()
    }

    /// Stores `n` in decimal at `at`; returns where it ends. Stores at most [`INT_MAX_LEN`]
    /// bytes (a number of 3 to 8 digits as one 8-byte store, the bytes past its end left to
    /// be overwritten).
    #[inline(always)]
    pub(crate) unsafe fn put_i32(self, mut at: usize, n: i32) -> usize {
        // SAFETY (every store): a sign and then at most 10 bytes, within `at..at + 11`.
        unsafe {
            if n < 0 {
                self.store(at, [b'-']);
                at += 1;
            }
            let u = n.unsigned_abs();
            if u < 10 {
                self.store(at, [b'0' + u as u8]);
                return at + 1;
            }
            if u < 100 {
                self.store(at, DIGIT_PAIRS[u as usize]);
                return at + 2;
            }
            if u >= 100_000_000 {
                // 9 or 10 digits: the first one or two, then 8.
                let head = u / 100_000_000;
                if head >= 10 {
                    self.store(at, DIGIT_PAIRS[head as usize]);
                    at += 2;
                } else {
                    self.store(at, [b'0' + head as u8]);
                    at += 1;
                }
                let digits = eight_digits(u % 100_000_000) | ASCII_ZEROS;
                self.store(at, digits.to_le_bytes());
                return at + 8;
            }
            if u < 10_000 {
                // 3 or 4 digits (a code, a version): all 4, the leading zero shifted out.
                let digits = four_digits(u);
                let zeros = digits.trailing_zeros() / 8;
                self.store(
                    at,
                    ((digits | ASCII_ZEROS as u32) >> (8 * zeros)).to_le_bytes(),
                );
                return at + 4 - zeros as usize;
            }
            // 5 to 8 digits: all 8 with the leading zeros shifted out.
            let digits = eight_digits(u);
            let zeros = digits.trailing_zeros() / 8;
            self.store(at, ((digits | ASCII_ZEROS) >> (8 * zeros)).to_le_bytes());
            at + 8 - zeros as usize
        }
    }

    /// Stores `s` escaped as a JSON string's content at `at`; returns where it ends. Stores up
    /// to `6 * s.bytes.len() + SLACK` bytes. A short inline string that needs no escape is
    /// checked and copied as one 16-byte block.
    #[inline(always)]
    pub(crate) unsafe fn json_str_short(self, at: usize, s: Str<'_>) -> usize {
        let n = s.bytes.len();
        if let Some(buf) = s.inline {
            if n <= 16 {
                let block = Block::from_bytes(first::<16>(buf));
                if block.escape_mask() & ((1u32 << n) - 1) == 0 {
                    // SAFETY: 16 bytes, at most SLACK.
                    unsafe { block.store(self, at) };
                    return at + n;
                }
            }
        }
        // SAFETY: the same bound, passed on.
        unsafe { self.json_str(at, s.bytes) }
    }

    /// [`Raw::json_str_short`] for any string: 16 bytes at a time, each block stored as it is
    /// and checked; a block with a byte to escape is stored again from after that byte.
    ///
    /// Room: the output for the bytes before input position `i` is at most `6 * i` long, and a
    /// store made while byte `i` is still to write reaches at most 16 bytes past that output's
    /// end, so every store ends within `6 * (len - 1) + 16 <= 6 * len + SLACK` bytes of `at`.
    #[inline(never)]
    pub(crate) unsafe fn json_str(self, mut at: usize, s: &[u8]) -> usize {
        let n = s.len();
        let mut i = 0;
        // SAFETY (stores): see the room argument above.
        unsafe {
            while let Some(chunk) = s.get(i..i + 16) {
                let block = Block::from_bytes(first::<16>(chunk));
                block.store(self, at);
                let mask = block.escape_mask();
                if mask == 0 {
                    i += 16;
                    at += 16;
                    continue;
                }
                // The bytes before the first flagged one are plain and already stored.
                let plain = mask.trailing_zeros() as usize;
                at = self.escape_byte(at + plain, s[i + plain]);
                i += plain + 1;
            }
            // Fewer than 16 bytes left: the last 16 of a long string shifted down, or a short
            // string padded.
            loop {
                let left = n - i;
                if left == 0 {
                    return at;
                }
                let block = if n >= 16 {
                    u128::from_le_bytes(last::<16>(s)) >> (8 * (16 - left))
                } else {
                    let mut padded = [0u8; 16];
                    padded[..left].copy_from_slice(&s[i..]);
                    u128::from_le_bytes(padded)
                };
                let block = Block::from_bytes(block.to_le_bytes());
                block.store(self, at);
                let mask = block.escape_mask() & ((1u32 << left) - 1);
                if mask == 0 {
                    return at + left;
                }
                let plain = mask.trailing_zeros() as usize;
                at = self.escape_byte(at + plain, s[i + plain]);
                i += plain + 1;
            }
        }
    }

    /// Stores byte `b` (one that needs it) escaped at `at`; returns where it ends. Stores 8
    /// bytes.
    #[inline(always)]
    unsafe fn escape_byte(self, at: usize, b: u8) -> usize {
        let e = JSON_ESCAPED[usize::from(b & 0x7f)];
        // SAFETY: 8 bytes (the caller's guarantee).
        unsafe { self.store(at, e.to_le_bytes()) };
        at + (e >> 56) as usize
    }
}

/// The first `N` bytes of `s` (which has them).
#[inline(always)]
fn first<const N: usize>(s: &[u8]) -> [u8; N] {
    *s.first_chunk::<N>().expect("the caller checked the length")
}

/// The last `N` bytes of `s` (which has them).
#[inline(always)]
fn last<const N: usize>(s: &[u8]) -> [u8; N] {
    *s.last_chunk::<N>().expect("the caller checked the length")
}

/// The two decimal digits of each number below 100.
static DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// `'0'` in every byte.
const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

/// The 4 decimal digits of `n` (below 10^4, leading zeros included) as values 0 to 9, the
/// first digit in the lowest byte: [`eight_digits`]'s last two steps on one 32-bit word.
#[inline(always)]
fn four_digits(n: u32) -> u32 {
    debug_assert!(n < 10_000);
    // [n / 100, n % 100] in two 16-bit lanes (n * 5243 < 2^26: no overflow).
    let hundreds = (n * 5243) >> 19;
    let v = hundreds | (n - hundreds * 100) << 16;
    // Each 16-bit lane y < 100: y / 10 = (y * 103) >> 10.
    let tens = ((v * 103) >> 10) & 0x000f_000f;
    tens | (v - tens * 10) << 8
}

/// The 8 decimal digits of `n` (below 10^8, leading zeros included) as values 0 to 9, the
/// first digit in the lowest byte (so a little-endian store writes them in order). Each step
/// divides every lane of the word at once, with a multiplication and a shift exact for the
/// lane's range: 10^4 into two 32-bit lanes, 100 into four 16-bit lanes, 10 into eight bytes.
#[inline(always)]
fn eight_digits(n: u32) -> u64 {
    debug_assert!(n < 100_000_000);
    // [n / 10^4, n % 10^4] in two 32-bit lanes.
    let v = u64::from(n / 10_000) | u64::from(n % 10_000) << 32;
    // Each lane x < 10^4: x / 100 = (x * 5243) >> 19.
    let hundreds = ((v * 5243) >> 19) & 0x0000_007f_0000_007f;
    let v = hundreds | (v - hundreds * 100) << 16;
    // Each 16-bit lane y < 100: y / 10 = (y * 103) >> 10.
    let tens = ((v * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | (v - tens * 10) << 8
}

/// 16 bytes, checked for JSON escapes together: an SSE2 register on x86_64.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[derive(Clone, Copy)]
struct Block(core::arch::x86_64::__m128i);

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
impl Block {
    #[inline(always)]
    fn from_bytes(b: [u8; 16]) -> Self {
        // SAFETY: `__m128i` is 16 plain bytes, as is `b`.
        Block(unsafe { core::mem::transmute::<[u8; 16], core::arch::x86_64::__m128i>(b) })
    }

    /// Stores the block at `at` (16 bytes).
    #[inline(always)]
    unsafe fn store(self, raw: Raw, at: usize) {
        // SAFETY: the caller's guarantee (16 bytes at `at`).
        unsafe {
            raw.store(
                at,
                core::mem::transmute::<core::arch::x86_64::__m128i, [u8; 16]>(self.0),
            )
        }
    }

    /// Bit `i` set for each byte `i` that needs escaping in a JSON string: `"`, `\\` or a
    /// control byte (below 0x20).
    #[inline(always)]
    fn escape_mask(self) -> u32 {
        use core::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let v = self.0;
        // SAFETY: these intrinsics only need SSE2, which this build enables (the `cfg` above;
        // it is part of the x86_64 baseline); none of them touches memory.
        // `tests::the_sse2_mask_matches_the_table` checks every byte value at every position
        // against the table the portable version uses.
        unsafe {
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned `v <= 0x1f`: the minimum of the two is `v` itself.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
        }
    }
}

/// 16 bytes, checked for JSON escapes together (portable version: a table per byte).
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[derive(Clone, Copy)]
struct Block([u8; 16]);

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
impl Block {
    #[inline(always)]
    fn from_bytes(b: [u8; 16]) -> Self {
        Block(b)
    }

    #[inline(always)]
    unsafe fn store(self, raw: Raw, at: usize) {
        // SAFETY: the caller's guarantee (16 bytes at `at`).
        unsafe { raw.store(at, self.0) }
    }

    #[inline(always)]
    fn escape_mask(self) -> u32 {
        escape_mask_portable(self.0)
    }
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
#[inline(always)]
fn escape_mask_portable(block: [u8; 16]) -> u32 {
    let mut mask = 0;
    for (i, b) in block.iter().enumerate() {
        if JSON_ESCAPE[usize::from(*b)] != 0 {
            mask |= 1 << i;
        }
    }
    mask
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

/// For each ASCII byte that needs escaping, its escape (little-endian, in the low bytes) with
/// its length in the top byte; the others are unused.
static JSON_ESCAPED: [u64; 128] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [0u64; 128];
    let mut b = 0;
    while b < 128 {
        let esc = JSON_ESCAPE[b];
        let bytes = if esc == b'u' {
            [b'\\', b'u', b'0', b'0', HEX[b >> 4], HEX[b & 0xf], 0, 6]
        } else {
            [b'\\', esc, 0, 0, 0, 0, 0, 2]
        };
        if esc != 0 {
            t[b] = u64::from_le_bytes(bytes);
        }
        b += 1;
    }
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

    /// Room for `need` bytes and [`SLACK`] after what is written so far, to store into without
    /// checks, if this sink has it; [`Sink::commit`] then says how much was written.
    #[inline]
    fn raw(&mut self, _need: usize) -> Option<Raw> {
        None
    }

    /// Marks the first `n` bytes of the last [`Sink::raw`] room as written.
    ///
    /// # Safety
    /// Every one of those `n` bytes was stored, and `n` is at most the `need` asked for.
    #[inline]
    unsafe fn commit(&mut self, _n: usize) {}

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
pub(crate) fn copy_small(dst: &mut UninitSlice, src: &[u8]) {
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

/// The first separator of the JSON extension entries (opening the object and the first key),
/// and the one between entries; each padded to 16 bytes.
const JSON_FIRST: [u8; 16] = *b",\"extFields\":{\"\0";
const JSON_NEXT: [u8; 16] = *b",\"\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

impl WindowSink<'_> {
    /// [`Sink::raw`] at `at` (not `pos`): room for `need` bytes and [`SLACK`] there, if the
    /// window has it. `need` may be a saturated sum.
    #[inline(always)]
    fn raw_at(&mut self, at: usize, need: usize) -> Option<Raw> {
        let room = self.window.len() - at;
        if need > room || SLACK > room - need {
            return None;
        }
        Some(Raw {
            // SAFETY (of the pointer arithmetic): `at <= window.len()` (every position this
            // sink holds is within its window).
            base: unsafe { self.window.as_mut_ptr().add(at) },
            len: need + SLACK,
        })
    }

    /// Positions up to this leave room for SLACK more bytes.
    #[inline(always)]
    fn end(&self) -> usize {
        self.window.len().saturating_sub(SLACK)
    }

    /// Writes a built command's ROCKETMQ extension entries, each with one room check, falling
    /// back to the checked writer near the end of the window. `Err` holds the length of a key
    /// too long for its `u16` length (nothing more is written then).
    #[inline]
    pub(crate) fn put_binary_entries(
        &mut self,
        entries: &[(HeaderStr, HeaderStr)],
    ) -> Result<(), usize> {
        // Positions up to `end` leave room for SLACK more bytes.
        let end = self.window.len().saturating_sub(SLACK);
        let mut done = 0;
        if self.pos <= end {
            // SAFETY: the window's bytes after `pos` are writable: `end - pos` and SLACK more.
            let (written, n) = unsafe {
                let out = self.window.as_mut_ptr().add(self.pos);
                binary_entries(out, end - self.pos, entries)
            };
            self.pos += written;
            done = n;
        }
        // What is left: a key too long, or entries near the end of the window.
        for (key, value) in &entries[done..] {
            if key.len() > usize::from(u16::MAX) {
                return Err(key.len());
            }
            self.put_binary_entry(Str::header(key), Str::header(value));
        }
        Ok(())
    }

    /// Writes the frame's 8-byte prefix at the window's start (left free by
    /// [`WindowSink::new`]'s `start`; the window is at least that long).
    #[inline]
    pub(crate) fn put_prefix(&mut self, prefix: [u8; 8]) {
        self.window[..8].copy_from_slice(&prefix);
    }

    /// Overwrites the 4 bytes at `at` (written before) with `n`, big-endian.
    #[inline]
    pub(crate) fn patch_u32(&mut self, at: usize, n: u32) {
        if at + 4 <= self.pos {
            self.window[at..at + 4].copy_from_slice(&n.to_be_bytes());
        }
    }
}

/// The fast loop of [`WindowSink::put_binary_entries`]: writes `entries` at `out` while each
/// fits in `room` bytes (its stores reaching at most SLACK further) and has a key short enough
/// for its `u16` length; returns how many bytes it wrote (all of them) and how many entries.
///
/// # Safety
/// The `room + SLACK` bytes at `out` are writable.
#[inline(always)]
unsafe fn binary_entries(
    out: *mut u8,
    mut room: usize,
    entries: &[(HeaderStr, HeaderStr)],
) -> (usize, usize) {
    let mut p = out;
    let mut rest = entries;
    // At the top of every round, `room + SLACK` bytes at `p` are writable: each entry written
    // takes its length off both.
    while let [(key, value), tail @ ..] = rest {
        let len;
        // Key and value inline: each copied as its whole buffer.
        if let (Some((kb, k)), Some((vb, v))) = (key.inline_buf(), value.inline_buf()) {
            len = 6 + k + v;
            if k.max(v) > INLINE || len > room {
                break;
            }
            // The entry is `len` bytes. Its stores reach further: the key's length (2), the key
            // (INLINE at 2), the value's length (4 at 2 + k), the value (INLINE at 6 + k):
            // `6 + k + INLINE`, within `len + SLACK` as INLINE <= SLACK.
            let raw = Raw {
                base: p,
                len: 6 + k + INLINE,
            };
            // SAFETY: within the `room + SLACK` bytes at `p` (above), and the entry's `len`
            // bytes are all written.
            unsafe {
                raw.store(0, (k as u16).to_be_bytes());
                raw.store(2, first::<16>(kb));
                raw.store(2 + INLINE - 16, last::<16>(kb));
                raw.store(2 + k, (v as u32).to_be_bytes());
                raw.store(6 + k, first::<16>(vb));
                raw.store(6 + k + INLINE - 16, last::<16>(vb));
            }
        } else {
            let (key, value) = (Str::header(key), Str::header(value));
            let (k, v) = (key.bytes.len(), value.bytes.len());
            // `k` is at most 0xFFFF and `v` the length of a string in memory: no overflow.
            len = 6 + k + v;
            if k > usize::from(u16::MAX) || len > room {
                break;
            }
            let raw = Raw {
                base: p,
                len: len + SLACK,
            };
            // SAFETY: `len + SLACK` bytes at `p` (above): the key's length (2), the key (`k`, or
            // its inline buffer: at most SLACK), the value's length (4) and the value
            // (likewise), each part starting where the one before ended.
            unsafe {
                raw.store(0, (k as u16).to_be_bytes());
                raw.put_str(2, key);
                raw.store(2 + k, (v as u32).to_be_bytes());
                raw.put_str(6 + k, value);
            }
        }
        // SAFETY (of the pointer arithmetic): `len <= room`, within the writable bytes.
        p = unsafe { p.add(len) };
        room -= len;
        rest = tail;
    }
    // SAFETY: `p` was derived from `out` by adding lengths (a pointer past `out`).
    let written = unsafe { p.offset_from(out) } as usize;
    (written, entries.len() - rest.len())
}

/// One JSON extension entry at `out` (see [`Sink::put_json_entry`]) if it fits in `room`
/// bytes, with room checked once for its worst case (every byte escaped as `\u00XX`); returns
/// its length (all of it written), or `None` (nothing written).
///
/// # Safety
/// The `room + SLACK` bytes at `out` are writable.
#[inline(always)]
unsafe fn json_entry(
    out: *mut u8,
    room: usize,
    first: bool,
    key: Str<'_>,
    value: Str<'_>,
) -> Option<usize> {
    // Lengths of two strings in memory do not overflow when added; clamped, the worst case
    // does not overflow either, and a clamped one is larger than any window.
    let worst = 6 * (key.bytes.len() + value.bytes.len()).min(usize::MAX / 8) + 19;
    if worst > room {
        return None;
    }
    let raw = Raw {
        base: out,
        len: worst + SLACK,
    };
    let (sep, sep_len) = if first {
        (JSON_FIRST, 15)
    } else {
        (JSON_NEXT, 2)
    };
    // SAFETY: room for `worst` + SLACK: the separator (15, stored as 16), the key (6 per byte +
    // SLACK), `":"` (3, stored as 4), the value (6 per byte + SLACK) and `"`; every store ends
    // within its part's bound, and each part starts where the one before ended.
    unsafe {
        raw.store(0, sep);
        let end = raw.json_str_short(sep_len, key);
        raw.store(end, *b"\":\"\0");
        let end = raw.json_str_short(end + 3, value);
        raw.store(end, [b'"']);
        Some(end + 1)
    }
}

/// [`json_entry`] after the first entry, for the common case: key and value inline, at most
/// 16 bytes each, and nothing to escape. Each is checked and copied as one 16-byte block;
/// `None` (nothing written) for anything else.
///
/// # Safety
/// The `room + SLACK` bytes at `out` are writable.
#[inline(always)]
unsafe fn json_entry_short(
    out: *mut u8,
    room: usize,
    key: &HeaderStr,
    value: &HeaderStr,
) -> Option<usize> {
    // The entry is `6 + k + v` bytes, and must fit in `room`. The stores below reach further:
    // `,"` (stored as 16 bytes), the key (16 at 2), `":"` (4 at 2 + k), the value (16 at
    // 5 + k), `"` (at 5 + k + v): at most 38 bytes, within `room + SLACK` as the entry is at
    // least 6.
    const REACH: usize = 38;
    const _: () = assert!(REACH <= 6 + SLACK);
    let (Some((kb, k)), Some((vb, v))) = (key.inline_buf(), value.inline_buf()) else {
        return None;
    };
    if k.max(v) > 16 || 6 + k + v > room {
        return None;
    }
    let (kb, vb) = (
        Block::from_bytes(first::<16>(kb)),
        Block::from_bytes(first::<16>(vb)),
    );
    let low = |n: usize| (1u32 << n) - 1;
    if (kb.escape_mask() & low(k)) | (vb.escape_mask() & low(v)) != 0 {
        return None;
    }
    let raw = Raw {
        base: out,
        len: REACH,
    };
    // SAFETY: REACH <= `room + SLACK` (above); every store ends within REACH, and the entry's
    // `6 + k + v` bytes are all written.
    unsafe {
        raw.store(0, JSON_NEXT);
        kb.store(raw, 2);
        raw.store(2 + k, *b"\":\"\0");
        vb.store(raw, 5 + k);
        raw.store(5 + k + v, [b'"']);
    }
    Some(6 + k + v)
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

    #[inline(always)]
    fn raw(&mut self, need: usize) -> Option<Raw> {
        self.raw_at(self.pos, need)
    }

    #[inline(always)]
    unsafe fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.window.len() - self.pos);
        self.pos += n;
    }

    /// One room check for the whole entry.
    #[inline(always)]
    fn put_binary_entry(&mut self, key: Str<'_>, value: Str<'_>) {
        let (k, v) = (key.bytes.len(), value.bytes.len());
        let at = self.pos;
        if 6 + k + v > self.window.len() - at {
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
        let end = self.end();
        if self.pos > end {
            return 0;
        }
        // SAFETY (of the pointer arithmetic): `pos <= end <= window.len()`.
        let out = unsafe { self.window.as_mut_ptr().add(self.pos) };
        let mut p = out;
        let mut room = end - self.pos;
        let mut rest = entries;
        let mut first = first;
        // At the top of every round, the `room + SLACK` bytes at `p` are writable: each entry
        // written takes its length off both.
        while let [(key, value), tail @ ..] = rest {
            // SAFETY: (both) the `room + SLACK` bytes at `p` are writable.
            let short = match first {
                true => None,
                false => unsafe { json_entry_short(p, room, key, value) },
            };
            let len = match short.or_else(|| unsafe {
                json_entry(p, room, first, Str::header(key), Str::header(value))
            }) {
                Some(len) => len,
                None => break,
            };
            // SAFETY (of the pointer arithmetic): `len <= room`.
            p = unsafe { p.add(len) };
            room -= len;
            rest = tail;
            first = false;
        }
        // SAFETY: `p` was derived from `out` by adding lengths.
        self.pos += unsafe { p.offset_from(out) } as usize;
        entries.len() - rest.len()
    }

    #[inline(always)]
    fn put_json_entry(&mut self, first: bool, key: Str<'_>, value: Str<'_>) -> bool {
        let end = self.end();
        if self.pos > end {
            return false;
        }
        // SAFETY: the window's bytes after `pos` are writable: `end - pos` and SLACK more.
        let len = unsafe {
            let out = self.window.as_mut_ptr().add(self.pos);
            json_entry(out, end - self.pos, first, key, value)
        };
        match len {
            Some(len) => {
                self.pos += len;
                true
            }
            None => false,
        }
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
    use alloc::string::ToString;

    /// `put_i32` into a buffer of exactly its bound: every length, sign and digit boundary.
    #[test]
    fn put_i32_writes_the_decimal_digits() {
        let mut cases = alloc::vec![0, 1, 9, 10, 99, 100, 101, 999, i32::MAX, i32::MIN, -1];
        let mut p = 1i64;
        for _ in 0..10 {
            for d in [-1i64, 0, 1] {
                for sign in [1i64, -1] {
                    let v = sign * (p + d);
                    if let Ok(v) = i32::try_from(v) {
                        cases.push(v);
                    }
                }
            }
            p *= 10;
        }
        let mut x = 0x9e37_79b9u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            cases.push(x as i32);
            cases.push((x >> (x % 31)) as i32);
        }
        for n in cases {
            let mut buf = [0xffu8; INT_MAX_LEN];
            let raw = Raw {
                base: buf.as_mut_ptr(),
                len: INT_MAX_LEN,
            };
            // SAFETY: `put_i32` stores at most INT_MAX_LEN bytes, the buffer's length (and
            // debug builds assert each store against `len`).
            let end = unsafe { raw.put_i32(0, n) };
            assert_eq!(&buf[..end], n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn four_digits_is_exact_below_ten_thousand() {
        for n in 0..10_000u32 {
            let got = (four_digits(n) | ASCII_ZEROS as u32).to_le_bytes();
            assert_eq!(&got, alloc::format!("{n:04}").as_bytes(), "{n}");
        }
    }

    #[test]
    fn eight_digits_is_exact_for_every_lane_value() {
        // Each lane step sees values 0..10^4 (and below 100): try each in both lanes.
        for x in 0..10_000u32 {
            for n in [x, x * 10_000, x * 10_000 + (9_999 - x)] {
                let got = (eight_digits(n) | ASCII_ZEROS).to_le_bytes();
                assert_eq!(&got, alloc::format!("{n:08}").as_bytes(), "{n}");
            }
        }
    }

    #[test]
    fn the_sse2_mask_matches_the_table() {
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut bytes = [b'a'; 16];
                bytes[at] = b;
                bytes[(at + 7) % 16] = b.wrapping_add(0x80);
                assert_eq!(
                    Block::from_bytes(bytes).escape_mask(),
                    escape_mask_portable(bytes),
                    "byte {b:#x} at {at}"
                );
            }
        }
    }
}
