//! Finding bytes sixteen or sixty-four at a time: SSE2 on x86_64 (part of its baseline, so no
//! run-time detection and no `std`), a portable word-at-a-time version elsewhere. Used by the
//! JSON decoder to find the end of a string (its closing quote, or a backslash) and the next
//! escape, and (through [`Hits`]) to walk an `extFields` object quote by quote.
//!
//! Long texts go 256 bytes a step (the ASCII check, the search past a long string's first
//! blocks), with AVX2 where `cpuid` says the CPU has it ([`has_avx2`], asked once, no `std`).
//! And the UTF-8 checks of non-ASCII text hand `simdutf8` whole 64-byte blocks in place, or
//! one built in registers, rather than let it copy a short tail ([`is_utf8_long`],
//! [`is_utf8_short`]).

/// Whether the CPU has BMI1 (`blsr`, `tzcnt`: a hit popped in one step instead of two),
/// asked of `cpuid` once and remembered. Always `false` off x86_64, and not needed where the
/// build already enables BMI1.
#[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1")))]
#[inline]
pub(crate) fn has_bmi1() -> bool {
    static BMI1: AtomicU8 = AtomicU8::new(0);
    asked_once(&BMI1, cpuid_bmi1)
}

#[cfg(all(
    target_arch = "x86_64",
    any(not(target_feature = "bmi1"), not(target_feature = "avx2"))
))]
use core::sync::atomic::{AtomicU8, Ordering};

/// `ask()`, asked the first time and then read from `known` (0: not asked yet; 1: no; 2: yes).
#[cfg(all(
    target_arch = "x86_64",
    any(not(target_feature = "bmi1"), not(target_feature = "avx2"))
))]
#[inline(always)]
fn asked_once(known: &AtomicU8, ask: fn() -> bool) -> bool {
    match known.load(Ordering::Relaxed) {
        0 => {
            let yes = ask();
            known.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
        answer => answer == 2,
    }
}

/// `cpuid`'s answer: leaf 7, sub-leaf 0, EBX bit 3 (BMI1), if the CPU has leaf 7.
#[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1")))]
#[cold]
fn cpuid_bmi1() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: `cpuid` exists on every x86_64 CPU; leaf 7 is asked only if leaf 0 says the CPU
    // has it. (Safe functions in newer Rust; the block keeps older ones building.)
    #[allow(unused_unsafe)]
    unsafe {
        __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 3) != 0
    }
}

/// Bit `i` set for each byte `i` of `block` that is `"` or `\\`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
pub(crate) fn quote_or_backslash(block: &[u8; 16]) -> u32 {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: the intrinsics need only SSE2, which this build enables (the `cfg` above; it is
    // part of the x86_64 baseline). The load reads the 16 bytes `block` refers to (`loadu`
    // has no alignment requirement). `tests::sse2_masks_match_the_portable_ones` checks every
    // byte value at every position against the portable version.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        _mm_movemask_epi8(_mm_or_si128(quote, backslash)) as u32
    }
}

/// Bit `i` set for each byte `i` of `block` that is `"` or `\\`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
pub(crate) fn quote_or_backslash_64(block: &[u8; 64]) -> u64 {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: as in `quote_or_backslash`; the four loads read the 64 bytes `block` refers to
    // (`p.add(3)` is its last 16). `tests::masks_of_64_bytes_match_byte_by_byte` checks every
    // byte value at every position against a byte-by-byte mask, and against the portable one.
    unsafe {
        let p = block.as_ptr().cast::<__m128i>();
        let (quote, backslash) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\\' as i8));
        let m = |v: __m128i| {
            let hit = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
            u64::from(_mm_movemask_epi8(hit) as u16)
        };
        m(_mm_loadu_si128(p))
            | m(_mm_loadu_si128(p.add(1))) << 16
            | m(_mm_loadu_si128(p.add(2))) << 32
            | m(_mm_loadu_si128(p.add(3))) << 48
    }
}

/// See the x86_64 version.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
pub(crate) fn quote_or_backslash_64(block: &[u8; 64]) -> u64 {
    portable::quote_or_backslash_64(block)
}

/// The quotes and backslashes of a buffer from some offset on, in order: the offsets come
/// from popping the lowest bit of a 64-byte block's mask, so finding the next one does not
/// wait for a search from the one before (only the next block's mask, when a block is done,
/// and that load does not depend on where the hits were).
///
/// The buffer is passed to every call (the caller may change bytes it has been given offsets
/// of: a block is read only when the offsets before it are used up).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hits {
    /// The offset of bit 0 of `word`.
    base: usize,
    /// The hits of the block at `base` not yet given out.
    word: u64,
}

impl Hits {
    /// The hits of `buf` at or after `from`.
    #[inline(always)]
    pub(crate) fn new(buf: &[u8], from: usize) -> Hits {
        Hits {
            base: from,
            word: mask_from(buf, from),
        }
    }

    /// The offset of the block at hand (bit 0 of [`Hits::word`]).
    #[inline(always)]
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// The hits of the block at hand not yet given out (bit `i`: offset `base + i`).
    #[inline(always)]
    pub(crate) fn word(&self) -> u64 {
        self.word
    }

    /// Gives out the hits of the block at hand not in `word` (a subset of [`Hits::word`]
    /// with only its lowest bits cleared).
    #[inline(always)]
    pub(crate) fn keep(&mut self, word: u64) {
        debug_assert!(
            word & !self.word == 0
                && (word == 0
                    || self.word >> word.trailing_zeros() == word >> word.trailing_zeros())
        );
        self.word = word;
    }

    /// The 2nd and 4th of the next four hits, if the block at hand holds four (then all four
    /// are given out; else nothing is). An `extFields` entry `"k":"v"` is four quotes: this
    /// gives the key's and the value's closing quote without a branch per quote.
    #[inline(always)]
    pub(crate) fn take_four(&mut self) -> Option<[usize; 2]> {
        let w1 = self.word & self.word.wrapping_sub(1);
        let w2 = w1 & w1.wrapping_sub(1);
        let w3 = w2 & w2.wrapping_sub(1);
        if w3 == 0 {
            return None;
        }
        self.word = w3 & (w3 - 1);
        Some([
            self.base + w1.trailing_zeros() as usize,
            self.base + w3.trailing_zeros() as usize,
        ])
    }

    /// The offset of the next `"` or `\\`, if any.
    #[inline(always)]
    pub(crate) fn next(&mut self, buf: &[u8]) -> Option<usize> {
        if self.word == 0 {
            self.base += 64;
            if self.base >= buf.len() {
                return None;
            }
            self.word = mask_from(buf, self.base);
            if self.word == 0 {
                *self = Hits::after_run(buf, self.base)?;
            }
        }
        let i = self.word.trailing_zeros() as usize;
        self.word &= self.word - 1;
        Some(self.base + i)
    }
}

impl Hits {
    /// Past two blocks without a hit, the second at `base` (a long string): the hits from
    /// the next one, found with `memchr2` (32 bytes a step where the CPU can) after
    /// [`hit_free_start`] (256). `None` if there is none.
    ///
    /// Returns the new hits rather than changing a `&mut self`: a pointer to the caller's
    /// `Hits` kept it in memory, its word stored and loaded again at every hit popped.
    #[cold]
    #[inline(never)]
    fn after_run(buf: &[u8], base: usize) -> Option<Hits> {
        let from = base + 64;
        let from = from + hit_free_start(buf.get(from..)?);
        let at = from + memchr::memchr2(b'"', b'\\', buf.get(from..)?)?;
        Some(Hits::new(buf, at))
    }
}

/// How many bytes at the start of `s` are known to hold no `"` or `\\`: where the CPU has
/// AVX2 and `s` is long, the 256-byte blocks before the first that holds one (about a third
/// fewer operations a byte than `memchr2`'s step, see [`hit_run_avx2`]); else none. `memchr2`
/// from there gives the answer it gives from the start.
#[inline(always)]
fn hit_free_start(s: &[u8]) -> usize {
    #[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
    if s.len() >= WIDE && use_avx2() {
        // SAFETY: `hit_run_avx2` only enables AVX2, which `has_avx2` has just found the CPU
        // has and the OS saves (`tests::avx2_detection_agrees_with_std`).
        return unsafe { hit_run_avx2(s) };
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if s.len() >= WIDE {
        // SAFETY: the build enables AVX2, so every CPU it runs on has it.
        return unsafe { hit_run_avx2(s) };
    }
    let _ = s;
    0
}

/// The offset of the first [`WIDE`]-byte block of `s` (from its start, a multiple of `WIDE`)
/// that holds a `"` or a `\\`, or, if none, of the first that does not fit (fewer than `WIDE`
/// bytes left).
///
/// Each 32 bytes take one table lookup (`vpshufb`) and one compare: the table, indexed by a
/// byte's low four bits, holds `"` (0x22) at 2 and `\\` (0x5C) at 12 and 0xFF elsewhere, so a
/// byte equals its entry exactly when it is one of the two (0xFF is above 0x7F, and a byte
/// of 0x80 or above looks up 0, which it is not). `memchr2` takes two compares and an OR.
///
/// # Safety
///
/// The CPU must have AVX2 (and the OS save its registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline(never)]
unsafe fn hit_run_avx2(s: &[u8]) -> usize {
    use core::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_setr_epi8, _mm256_shuffle_epi8,
    };
    const Q: i8 = b'"' as i8;
    const B: i8 = b'\\' as i8;
    first_wide_block(s, |block| {
        // SAFETY: the caller has made sure the CPU has AVX2, all the intrinsics need. The eight
        // loads read the 256 bytes `block` refers to (`p.add(7)` is its last 32; `loadu` has no
        // alignment requirement). `tests::hit_runs_stop_at_the_first_quote_or_backslash`
        // checks every byte value at every position.
        let hit = unsafe {
            #[rustfmt::skip]
            let table = _mm256_setr_epi8(
                -1, -1, Q, -1, -1, -1, -1, -1, -1, -1, -1, -1, B, -1, -1, -1,
                -1, -1, Q, -1, -1, -1, -1, -1, -1, -1, -1, -1, B, -1, -1, -1,
            );
            let p = block.as_ptr().cast::<__m256i>();
            let h = |k: usize| {
                let v = _mm256_loadu_si256(p.add(k));
                _mm256_cmpeq_epi8(_mm256_shuffle_epi8(table, v), v)
            };
            let a = _mm256_or_si256(_mm256_or_si256(h(0), h(1)), _mm256_or_si256(h(2), h(3)));
            let b = _mm256_or_si256(_mm256_or_si256(h(4), h(5)), _mm256_or_si256(h(6), h(7)));
            _mm256_movemask_epi8(_mm256_or_si256(a, b))
        };
        hit != 0
    })
}

/// The mask of the 64 bytes of `buf` from `at` on (bits past its end clear).
#[inline(always)]
fn mask_from(buf: &[u8], at: usize) -> u64 {
    match buf.get(at..).and_then(|r| r.first_chunk::<64>()) {
        Some(block) => quote_or_backslash_64(block),
        None => mask_of_tail(buf, at),
    }
}

/// [`mask_from`] of fewer than 64 bytes: the last 64 of `buf` shifted (those before `at`
/// dropped), or, in a shorter buffer, a zero-padded copy.
#[inline(never)]
fn mask_of_tail(buf: &[u8], at: usize) -> u64 {
    let Some(rest) = buf.get(at..).filter(|r| !r.is_empty()) else {
        return 0;
    };
    match buf.last_chunk::<64>() {
        // `at` is past the last block's start (`rest` is shorter than 64 bytes).
        Some(last) => quote_or_backslash_64(last) >> (64 - rest.len()),
        None => {
            let mut block = [0u8; 64];
            block[..rest.len()].copy_from_slice(rest);
            quote_or_backslash_64(&block)
        }
    }
}

/// Bit `i` set for each byte `i` of `block` that is `\\`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
pub(crate) fn backslash(block: &[u8; 16]) -> u32 {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    // SAFETY: as in `quote_or_backslash`.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8))) as u32
    }
}

/// Whether any byte of `block` is 0x80 or above.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn any_high(block: &[u8; 64]) -> bool {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128};
    // SAFETY: as in `quote_or_backslash`; the four loads read the 64 bytes `block` refers to.
    // `tests::ascii_prefix_stops_at_the_first_high_byte` checks a high byte at every position.
    unsafe {
        let p = block.as_ptr().cast::<__m128i>();
        let a = _mm_or_si128(_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
        let b = _mm_or_si128(_mm_loadu_si128(p.add(2)), _mm_loadu_si128(p.add(3)));
        _mm_movemask_epi8(_mm_or_si128(a, b)) != 0
    }
}

/// See the x86_64 version.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn any_high(block: &[u8; 64]) -> bool {
    block.iter().fold(0, |acc, &b| acc | b) >= 0x80
}

/// Whether no byte of `b` has its high bit set: 32 bytes a step, the last step overlapping.
#[inline]
pub(crate) fn is_ascii(b: &[u8]) -> bool {
    #[inline(always)]
    fn block(b: &[u8]) -> u128 {
        let mut w = [0u8; 16];
        w.copy_from_slice(&b[..16]);
        u128::from_le_bytes(w)
    }
    let mut acc = 0u128;
    if b.len() >= 32 {
        let mut chunks = b.chunks_exact(32);
        for c in &mut chunks {
            acc |= block(&c[..16]) | block(&c[16..]);
        }
        let last = &b[b.len() - 32..];
        acc |= block(&last[..16]) | block(&last[16..]);
    } else if b.len() >= 16 {
        acc = block(b) | block(&b[b.len() - 16..]);
    } else {
        for &x in b {
            acc |= u128::from(x);
        }
    }
    acc & (u128::MAX / 255 * 0x80) == 0
}

/// How many bytes at the start of `s` are known ASCII (so a character boundary): all of
/// `s`, or up to a 64-byte block that holds a byte of 0x80 or above.
#[inline]
pub(crate) fn ascii_prefix(s: &[u8]) -> usize {
    // Long texts 256 bytes a step first (see `ascii_run`); then 64 bytes a step from the first
    // 256-byte block that is not ASCII (or from where fewer than 256 bytes are left): the
    // blocks of 64 before it are ASCII, so the answer is the one the 64-byte steps from the
    // start would give. (Apart, so that the short texts' steps start from a known 0.)
    if s.len() >= WIDE {
        return ascii_prefix_long(s);
    }
    ascii_prefix_from(s, 0)
}

/// [`ascii_prefix`] of a text of [`WIDE`] bytes or more.
#[inline(never)]
fn ascii_prefix_long(s: &[u8]) -> usize {
    ascii_prefix_from(s, ascii_run(s))
}

/// [`ascii_prefix`] 64 bytes a step from `i` (a multiple of 64 with only ASCII before it).
#[inline(always)]
fn ascii_prefix_from(s: &[u8], mut i: usize) -> usize {
    while let Some(block) = s.get(i..).and_then(|r| r.first_chunk::<64>()) {
        if any_high(block) {
            return i;
        }
        i += 64;
    }
    // Fewer than 64 bytes left: the last 64 of `s` (overlapping what was checked), if any.
    let rest_ascii = match s.last_chunk::<64>() {
        Some(block) => !any_high(block),
        None => s[i..].iter().fold(0, |acc, &b| acc | b) < 0x80,
    };
    if rest_ascii {
        s.len()
    } else {
        i
    }
}

/// Whether `bytes` (64 or more) is UTF-8, by `simdutf8` (SIMD where the CPU has it): when
/// its length is not a multiple of 64, its whole 64-byte blocks in one call and its last 64
/// bytes in another, if both splits fall on a character boundary (the bytes at `whole` and at
/// `len - 64` are not continuation bytes); else in one call.
///
/// One call over such a length copies the last part into a zeroed 64-byte block and loads it
/// back in wider pieces than it was stored (a store-forwarding stall: a 70-byte text took
/// about four times as long as 64 bytes in place). The two checks answer as the one: each
/// part starts and ends on a boundary of a valid text, so a valid text passes both; and two
/// valid parts that overlap, the second starting on a boundary of the first, make a valid
/// whole.
#[inline]
pub(crate) fn is_utf8_long(bytes: &[u8]) -> bool {
    debug_assert!(bytes.len() >= 64);
    let len = bytes.len();
    let whole = len & !63;
    let starts_char = |i: usize| matches!(bytes.get(i), Some(&b) if (b as i8) >= -0x40);
    if whole != len && starts_char(whole) && starts_char(len - 64) {
        simdutf8::basic::from_utf8(&bytes[..whole]).is_ok()
            && simdutf8::basic::from_utf8(&bytes[len - 64..]).is_ok()
    } else {
        simdutf8::basic::from_utf8(bytes).is_ok()
    }
}

/// Whether `s` (16 to 63 bytes) is UTF-8, checked without the stall of a padded copy, where
/// the CPU has AVX2: `None` where this does not apply (another length, no AVX2, or no
/// character boundary near the places it splits at), for the caller's own check.
///
/// The 64-byte block `simdutf8` checks is built in registers and written with two 32-byte
/// stores, each of which one of `simdutf8`'s 32-byte loads then takes whole (a copy written in
/// narrower pieces made those loads wait for the stores to reach the cache: 18 ns against 6 ns
/// in place). It holds `s`'s first `half` bytes (32, or 16 under 32 bytes) up to `a`, the last
/// character boundary at or before `half`, then zeros, then `s` from `b`, the first boundary
/// at or after `len - half`, with `b <= a`. The zeros are ASCII, so the block is UTF-8 exactly
/// when `s[..a]` and `s[b..]` are; and they are exactly when `s` is: both start and end on
/// boundaries of `s` (a byte that is not a continuation byte starts a character in any
/// UTF-8 text) and together they cover it.
#[inline]
pub(crate) fn is_utf8_short(s: &[u8]) -> Option<bool> {
    let len = s.len();
    if !(16..64).contains(&len) {
        return None;
    }
    #[cfg(not(target_arch = "x86_64"))]
    return None;
    #[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
    if !use_avx2() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let half = if len >= 32 { 32 } else { 16 };
        let continues = |i: usize| matches!(s.get(i), Some(&b) if (b as i8) < -0x40);
        // (A UTF-8 text has at most three continuation bytes in a row: past them, `s` is not
        // UTF-8, and the caller's check says so.)
        let mut a = half;
        while continues(a) {
            if a == half - 3 {
                return None;
            }
            a -= 1;
        }
        let mut b = len - half;
        while continues(b) {
            if b == len - half + 3 {
                return None;
            }
            b += 1;
        }
        if b > a {
            return None;
        }
        let mut block = [0u8; 64];
        // SAFETY: `join_ends_avx2` only enables AVX2, which `use_avx2` has just found the CPU
        // has (or the build enables); its other conditions: `16 <= len < 64`, `half` as it
        // requires, `a <= half` and `len - half <= b <= len - half + 3 <= len` (so the
        // dropped start, `b - (len - half)`, is at most 3).
        unsafe { join_ends_avx2(s, half, a, b, &mut block) };
        Some(simdutf8::basic::from_utf8(&block).is_ok())
    }
}

/// 32 bytes of 0xFF, then 32 zeros: 32 bytes from `32 - k` on keep the first `k` bytes of a
/// vector (AND), 16 from `32 - k` the first `k` of 16.
#[cfg(target_arch = "x86_64")]
static KEEP_FIRST: Line = Line::ones(0..32);

/// 32 zeros, then 32 bytes of 0xFF: 32 (or 16) bytes from `32 - k` on clear the first `k`.
#[cfg(target_arch = "x86_64")]
static DROP_FIRST: Line = Line::ones(32..64);

/// 64 bytes on a cache line of their own (a load from them never spans two lines).
#[cfg(target_arch = "x86_64")]
#[repr(align(64))]
struct Line([u8; 64]);

#[cfg(target_arch = "x86_64")]
impl Line {
    /// 0xFF at the bytes of `ones`, zeros elsewhere.
    const fn ones(ones: core::ops::Range<usize>) -> Line {
        let mut t = [0u8; 64];
        let mut i = ones.start;
        while i < ones.end {
            t[i] = 0xFF;
            i += 1;
        }
        Line(t)
    }
}

/// [`is_utf8_short`]'s block: `s[..a]`, zeros to `half`, zeros for `s[len - half..b]`, then
/// `s[b..]` (`half` = 32: the two halves of `out`; 16: its first 32 bytes, zeros after), each
/// 32 bytes written by one store.
///
/// # Safety
///
/// The CPU must have AVX2. `16 <= s.len() < 64`, `half` is 32 if `s.len() >= 32` else 16,
/// `a <= half`, and `s.len() - half <= b <= s.len() - half + 3`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline(never)]
unsafe fn join_ends_avx2(s: &[u8], half: usize, a: usize, b: usize, out: &mut [u8; 64]) {
    use core::arch::x86_64::{
        __m128i, __m256i, _mm256_and_si256, _mm256_loadu_si256, _mm256_set_m128i,
        _mm256_setzero_si256, _mm256_storeu_si256, _mm_and_si128, _mm_loadu_si128,
    };
    let len = s.len();
    debug_assert!((16..64).contains(&len) && half == if len >= 32 { 32 } else { 16 });
    debug_assert!(a <= half && len - half <= b && b <= len - half + 3);
    let dropped = b - (len - half);
    let keep = KEEP_FIRST.0.as_ptr().wrapping_add(32 - a);
    let drop = DROP_FIRST.0.as_ptr().wrapping_add(32 - dropped);
    let o = out.as_mut_ptr().cast::<__m256i>();
    // SAFETY: the caller has made sure the CPU has AVX2 (the 128-bit intrinsics need only
    // SSE2). Loads: `s`'s first and last `half` bytes (`half <= len`); `half` bytes of
    // `KEEP_FIRST` from `32 - a` and of `DROP_FIRST` from `32 - dropped` (`a <= half` and
    // `dropped <= 3`, so both offsets are in `32 - half..=32` and end by 64, within them).
    // Stores: `out`'s two 32-byte halves. `loadu`/`storeu` have no alignment requirement.
    // `tests::short_utf8_checks_answer_as_core` checks the answer against core's at every
    // length, split and bad byte.
    unsafe {
        if half == 32 {
            let first = _mm256_loadu_si256(s.as_ptr().cast());
            let last = _mm256_loadu_si256(s.as_ptr().add(len - 32).cast());
            let first = _mm256_and_si256(first, _mm256_loadu_si256(keep.cast()));
            let last = _mm256_and_si256(last, _mm256_loadu_si256(drop.cast()));
            _mm256_storeu_si256(o, first);
            _mm256_storeu_si256(o.add(1), last);
        } else {
            let first = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
            let last = _mm_loadu_si128(s.as_ptr().add(len - 16).cast::<__m128i>());
            let first = _mm_and_si128(first, _mm_loadu_si128(keep.cast()));
            let last = _mm_and_si128(last, _mm_loadu_si128(drop.cast()));
            _mm256_storeu_si256(o, _mm256_set_m128i(last, first));
            _mm256_storeu_si256(o.add(1), _mm256_setzero_si256());
        }
    }
}

/// The step of [`ascii_run`]: 256 bytes OR-ed together before one `movemask` (eight 32-byte
/// loads with AVX2, sixteen 16-byte ones with SSE2: the loads, about three a cycle, are the
/// limit, not one test and branch per 64 bytes).
const WIDE: usize = 256;

/// The offset of the first [`WIDE`]-byte block of `s` (from its start, a multiple of
/// `WIDE`) that holds a byte of 0x80 or above, or, if none, of the first that does not fit
/// (fewer than `WIDE` bytes left). AVX2 where the CPU has it (asked at run time, see
/// [`has_avx2`], unless the build enables it), else SSE2; byte by byte off x86_64.
#[inline]
fn ascii_run(s: &[u8]) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        // SAFETY: the build enables AVX2, so every CPU it runs on has it.
        unsafe { ascii_run_avx2(s) }
    }
    #[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
    {
        if use_avx2() {
            // SAFETY: `ascii_run_avx2` only enables AVX2, which `has_avx2` has just found the
            // CPU has and the OS saves (`tests::avx2_detection_agrees_with_std` checks it
            // against std's detection).
            unsafe { ascii_run_avx2(s) }
        } else {
            ascii_run_sse2(s)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        ascii_run_bytes(s)
    }
}

/// [`ascii_run`] one byte at a time (off x86_64, and the tests' reference).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn ascii_run_bytes(s: &[u8]) -> usize {
    first_wide_block(s, |block| block.iter().any(|&b| b >= 0x80))
}

/// The offset of the first [`WIDE`]-byte block of `s` (from its start, a multiple of `WIDE`)
/// that `hit` says yes to, or, if none, of the first that does not fit (fewer than `WIDE`
/// bytes left): the loop of the runs above.
#[inline(always)]
fn first_wide_block(s: &[u8], mut hit: impl FnMut(&[u8; WIDE]) -> bool) -> usize {
    let mut i = 0;
    while let Some(block) = s.get(i..).and_then(|r| r.first_chunk::<WIDE>()) {
        if hit(block) {
            return i;
        }
        i += WIDE;
    }
    i
}

/// [`ascii_run`] with SSE2 (part of the x86_64 baseline).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn ascii_run_sse2(s: &[u8]) -> usize {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128};
    first_wide_block(s, |block| {
        // SAFETY: the intrinsics need only SSE2, part of the x86_64 baseline (every x86_64 CPU
        // has it). The sixteen loads read the 256 bytes `block` refers to (`p.add(15)` is its
        // last 16; `loadu` has no alignment requirement).
        // `tests::ascii_runs_stop_at_the_first_high_byte` checks a high byte at every position.
        let high = unsafe {
            let p = block.as_ptr().cast::<__m128i>();
            let l = |k: usize| _mm_loadu_si128(p.add(k));
            let a = _mm_or_si128(
                _mm_or_si128(_mm_or_si128(l(0), l(1)), _mm_or_si128(l(2), l(3))),
                _mm_or_si128(_mm_or_si128(l(4), l(5)), _mm_or_si128(l(6), l(7))),
            );
            let b = _mm_or_si128(
                _mm_or_si128(_mm_or_si128(l(8), l(9)), _mm_or_si128(l(10), l(11))),
                _mm_or_si128(_mm_or_si128(l(12), l(13)), _mm_or_si128(l(14), l(15))),
            );
            _mm_movemask_epi8(_mm_or_si128(a, b))
        };
        high != 0
    })
}

/// [`ascii_run`] with AVX2.
///
/// # Safety
///
/// The CPU must have AVX2 (and the OS save its registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline(never)]
unsafe fn ascii_run_avx2(s: &[u8]) -> usize {
    use core::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256};
    first_wide_block(s, |block| {
        // SAFETY: the caller has made sure the CPU has AVX2, all the intrinsics need. The eight
        // loads read the 256 bytes `block` refers to (`p.add(7)` is its last 32; `loadu` has no
        // alignment requirement). `tests::ascii_runs_stop_at_the_first_high_byte` checks a
        // high byte at every position.
        let high = unsafe {
            let p = block.as_ptr().cast::<__m256i>();
            let l = |k: usize| _mm256_loadu_si256(p.add(k));
            let a = _mm256_or_si256(_mm256_or_si256(l(0), l(1)), _mm256_or_si256(l(2), l(3)));
            let b = _mm256_or_si256(_mm256_or_si256(l(4), l(5)), _mm256_or_si256(l(6), l(7)));
            _mm256_movemask_epi8(_mm256_or_si256(a, b))
        };
        high != 0
    })
}

#[cfg(all(test, feature = "std"))]
std::thread_local! {
    /// Set by a test to take the paths built without AVX2 on this thread.
    #[cfg_attr(
        not(all(target_arch = "x86_64", not(target_feature = "avx2"))),
        allow(dead_code)
    )]
    static WITHOUT_AVX2: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// [`has_avx2`], unless a test asked for the paths without AVX2 on this thread.
#[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
#[inline(always)]
fn use_avx2() -> bool {
    #[cfg(all(test, feature = "std"))]
    if WITHOUT_AVX2.with(|w| w.get()) {
        return false;
    }
    has_avx2()
}

/// Whether the CPU has AVX2 and the OS saves the AVX registers, asked of `cpuid` and `xgetbv`
/// once and remembered. Not needed where the build already enables AVX2.
#[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
#[inline]
pub(crate) fn has_avx2() -> bool {
    static AVX2: AtomicU8 = AtomicU8::new(0);
    asked_once(&AVX2, cpuid_avx2)
}

/// `cpuid`'s and `xgetbv`'s answer: leaf 1 says the CPU has AVX and the OS has enabled
/// `xgetbv` (OSXSAVE), `xgetbv(0)` that the OS saves the SSE and AVX state (XCR0 bits 1 and
/// 2), and leaf 7 (if the CPU has it), sub-leaf 0, EBX bit 5, that the CPU has AVX2 — what
/// std's `is_x86_feature_detected!("avx2")` asks.
#[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
#[cold]
fn cpuid_avx2() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    // SAFETY: `cpuid` exists on every x86_64 CPU; leaf 7 is asked only if leaf 0 says the CPU
    // has it. `xgetbv` (an `xsave` instruction) runs only when leaf 1's OSXSAVE bit says the
    // OS has enabled it, which implies the CPU has XSAVE. (`cpuid` is a safe function in newer
    // Rust; the block keeps older ones building.)
    #[allow(unused_unsafe)]
    unsafe {
        let leaf1 = __cpuid(1).ecx;
        let (osxsave, avx) = (leaf1 & (1 << 27) != 0, leaf1 & (1 << 28) != 0);
        osxsave
            && avx
            && _xgetbv(0) & 0b110 == 0b110
            && __cpuid(0).eax >= 7
            && __cpuid_count(7, 0).ebx & (1 << 5) != 0
    }
}

/// See the x86_64 version.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
pub(crate) fn quote_or_backslash(block: &[u8; 16]) -> u32 {
    portable::quote_or_backslash(block)
}

/// See the x86_64 version.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
pub(crate) fn backslash(block: &[u8; 16]) -> u32 {
    portable::backslash(block)
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
mod portable {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOWS: u64 = 0x7F7F_7F7F_7F7F_7F7F;

    /// The high bit of exactly the zero bytes of `w`.
    #[inline(always)]
    fn zero_bytes(w: u64) -> u64 {
        !(((w & LOWS) + LOWS) | w | LOWS)
    }

    /// The high bits of `w` (as [`zero_bytes`] leaves them) gathered into 8 low bits.
    #[inline(always)]
    fn gather(h: u64) -> u32 {
        ((h >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
    }

    #[inline(always)]
    fn halves(block: &[u8; 16]) -> [u64; 2] {
        let (lo, hi) = block.split_at(8);
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            u64::from_le_bytes(w)
        };
        [word(lo), word(hi)]
    }

    #[inline(always)]
    pub(super) fn quote_or_backslash(block: &[u8; 16]) -> u32 {
        let [lo, hi] = halves(block);
        let m = |w: u64| {
            gather(
                zero_bytes(w ^ (ONES * u64::from(b'"')))
                    | zero_bytes(w ^ (ONES * u64::from(b'\\'))),
            )
        };
        m(lo) | m(hi) << 8
    }

    #[inline(always)]
    pub(super) fn quote_or_backslash_64(block: &[u8; 64]) -> u64 {
        let mut m = 0;
        for (i, part) in block.chunks_exact(16).enumerate() {
            let mut b = [0u8; 16];
            b.copy_from_slice(part);
            m |= u64::from(quote_or_backslash(&b)) << (16 * i);
        }
        m
    }

    #[inline(always)]
    pub(super) fn backslash(block: &[u8; 16]) -> u32 {
        let [lo, hi] = halves(block);
        let m = |w: u64| gather(zero_bytes(w ^ (ONES * u64::from(b'\\'))));
        m(lo) | m(hi) << 8
    }
}

/// Calls `check` with `b` changed at each position to each byte of `bad` in turn (one byte
/// changed at a time), and that position and byte; `b` is as it was afterwards.
#[cfg(test)]
pub(crate) fn each_bad_byte(b: &mut [u8], bad: &[u8], mut check: impl FnMut(&[u8], usize, u8)) {
    for at in 0..b.len() {
        for &byte in bad {
            let old = b[at];
            b[at] = byte;
            check(b, at, byte);
            b[at] = old;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    /// Bit `i` set for each byte `i` of `block` (at most 64) that `hit` takes.
    /// `check` of every block of `N` bytes that holds one byte of any value at any position
    /// among neighbours that are all quotes, backslashes, high bytes, zero bytes or plain.
    fn each_block<const N: usize>(mut check: impl FnMut(&[u8; N])) {
        for fill in [b'a', b'"', b'\\', 0x00, 0xFF, 0x80] {
            for at in 0..N {
                for b in 0..=255u8 {
                    let mut block = [fill; N];
                    block[at] = b;
                    check(&block);
                }
            }
        }
    }

    /// `f` run with the AVX2 paths where the CPU has them (`without` false) and without them
    /// (where `std` gives the tests a thread-local switch); the choice is put back after.
    fn with_avx2_choice<R>(without: bool, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "std")]
        WITHOUT_AVX2.with(|w| w.set(without));
        #[cfg(not(feature = "std"))]
        let _ = without;
        let r = f();
        #[cfg(feature = "std")]
        WITHOUT_AVX2.with(|w| w.set(false));
        r
    }

    fn by_bytes(block: &[u8], hit: impl Fn(u8) -> bool) -> u64 {
        let mut m = 0;
        for (i, &b) in block.iter().enumerate() {
            if hit(b) {
                m |= 1 << i;
            }
        }
        m
    }

    #[test]
    fn ascii_prefix_stops_at_the_first_high_byte() {
        for len in [0usize, 1, 15, 16, 63, 64, 65, 127, 128, 200] {
            let ascii = alloc::vec![b'a'; len];
            assert_eq!(ascii_prefix(&ascii), len);
            for at in 0..len {
                for high in [0x80u8, 0xC3, 0xFF] {
                    let mut s = ascii.clone();
                    s[at] = high;
                    let n = ascii_prefix(&s);
                    assert!(n <= at, "{len} {at}: {n}");
                    assert_eq!(n % 64, 0, "{len} {at}: {n}");
                    assert!(at - n < 64 || n == 0, "{len} {at}: {n}");
                    assert!(s[..n].is_ascii());
                }
            }
        }
    }

    #[test]
    fn hit_runs_stop_at_the_first_quote_or_backslash() {
        #[cfg(not(target_feature = "avx2"))]
        if !has_avx2() {
            return;
        }
        // Every byte value at every position of one to three steps (and none), among plain
        // bytes or high ones: the AVX2 step against one byte at a time.
        for fill in [b'a', 0xFF] {
            for len in [255usize, 256, 300, 512, 700, 768] {
                for at in (0..len).map(Some).chain([None]) {
                    for b in 0..=255u8 {
                        let mut s = alloc::vec![fill; len];
                        if let Some(at) = at {
                            s[at] = b;
                        }
                        let first = s.iter().position(|&b| b == b'"' || b == b'\\');
                        let want = first
                            .map_or(len, |i| i / WIDE * WIDE)
                            .min(len / WIDE * WIDE);
                        // SAFETY: the CPU has AVX2 (just asked, or the build enables it).
                        let got = unsafe { hit_run_avx2(&s) };
                        assert_eq!(got, want, "{fill} {len} {at:?} {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn short_utf8_checks_answer_as_core() {
        // Texts of 16 to 63 bytes of 1- to 4-byte characters, from every start within the
        // first character, so that the splits near 16/32 and `len - 16`/`len - 32` fall on
        // boundaries and inside characters; each whole, and with a bad byte at every
        // position; with AVX2 (where the CPU has it) and without (always `None`).
        let mut taken = 0;
        for text in [
            "a\u{e9}\u{4e2d}\u{1f680}",
            "\u{4e2d}\u{6587}",
            "\u{1f680}x",
            "\u{e9}",
            "ab",
        ] {
            let long = text.repeat(64 / text.len() + 2).into_bytes();
            for from in 0..4 {
                for len in 0..64 {
                    let mut b = long[from..from + len].to_vec();
                    let mut check = |b: &[u8]| {
                        let want = core::str::from_utf8(b).is_ok();
                        let got = with_avx2_choice(false, || is_utf8_short(b));
                        if let Some(got) = got {
                            assert_eq!(got, want, "{text} {from} {b:?}");
                            taken += 1;
                        }
                        assert_eq!(with_avx2_choice(true, || is_utf8_short(b)), None);
                    };
                    check(&b);
                    each_bad_byte(
                        &mut b,
                        &[0x80, 0xBF, 0xC0, 0xE0, 0xF0, 0xFF, 0x00],
                        |b, _, _| check(b),
                    );
                }
            }
        }
        #[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
        let avx2 = has_avx2();
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        let avx2 = true;
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        assert_eq!(taken > 1000, avx2, "{taken}");
    }

    #[test]
    fn long_utf8_checks_answer_as_core() {
        // Texts of 64 to 200 bytes of 1- to 4-byte characters, from every start within the
        // first character, so that the splits at the last whole block and at 64 from the end
        // fall on boundaries and inside characters; each whole, and with a bad byte at every
        // position.
        for text in [
            "a\u{e9}\u{4e2d}\u{1f680}",
            "\u{4e2d}\u{6587}",
            "\u{1f680}x",
            "\u{e9}",
        ] {
            let long = text.repeat(200 / text.len() + 2).into_bytes();
            for from in 0..4 {
                for len in 64..=200 {
                    let mut b = long[from..from + len].to_vec();
                    assert_eq!(is_utf8_long(&b), core::str::from_utf8(&b).is_ok(), "{len}");
                    each_bad_byte(&mut b, &[0x80, 0xC0, 0xF0, b'a'], |b, at, bad| {
                        assert_eq!(
                            is_utf8_long(b),
                            core::str::from_utf8(b).is_ok(),
                            "{text} {from} {len} {at} {bad}"
                        );
                    });
                }
            }
        }
    }

    #[test]
    fn ascii_runs_stop_at_the_first_high_byte() {
        // Every length around one to three steps, a high byte (or none) at every position:
        // each build of the 256-byte step (AVX2 only where the CPU has it) against the
        // byte-by-byte one, and `ascii_prefix` (which chooses one) within 64 bytes of the
        // high byte, as before.
        for len in [0usize, 63, 255, 256, 257, 511, 512, 600, 767, 768, 800] {
            for at in (0..len).map(Some).chain([None]) {
                for high in [0x80u8, 0xC3, 0xFF] {
                    let mut s = alloc::vec![b'a'; len];
                    if let Some(at) = at {
                        s[at] = high;
                    }
                    let want = ascii_run_bytes(&s);
                    assert_eq!(want % WIDE, 0);
                    #[cfg(target_arch = "x86_64")]
                    {
                        assert_eq!(ascii_run_sse2(&s), want, "{len} {at:?}");
                        #[cfg(not(target_feature = "avx2"))]
                        let avx2 = has_avx2();
                        #[cfg(target_feature = "avx2")]
                        let avx2 = true;
                        if avx2 {
                            // SAFETY: the CPU has AVX2 (just asked).
                            assert_eq!(unsafe { ascii_run_avx2(&s) }, want, "{len} {at:?}");
                        }
                    }
                    for without_avx2 in [false, true] {
                        let n = with_avx2_choice(without_avx2, || ascii_prefix(&s));
                        match at {
                            None => assert_eq!(n, len),
                            Some(at) => {
                                assert!(n <= at && n % 64 == 0 && at - n < 64, "{len} {at}: {n}")
                            }
                        }
                    }
                }
            }
        }
    }

    /// The `unsafe` calls of the AVX2 step rely on this answer: it must agree with std's
    /// detection (a wrong `true` would run AVX2 instructions where they fault).
    #[cfg(all(target_arch = "x86_64", not(target_feature = "avx2"), feature = "std"))]
    #[test]
    fn avx2_detection_agrees_with_std() {
        assert_eq!(has_avx2(), std::is_x86_feature_detected!("avx2"));
        assert_eq!(
            has_avx2(),
            std::is_x86_feature_detected!("avx2"),
            "remembered"
        );
    }

    #[test]
    fn masks_of_64_bytes_match_byte_by_byte() {
        // The SSE2 and the portable mask against a byte-by-byte one.
        each_block(|block: &[u8; 64]| {
            let want = by_bytes(block, |b| b == b'"' || b == b'\\');
            assert_eq!(quote_or_backslash_64(block), want, "{block:?}");
            assert_eq!(portable::quote_or_backslash_64(block), want, "{block:?}");
        });
    }

    /// Every quote and backslash of `buf` at or after `from`, one byte at a time.
    fn hits_by_bytes(buf: &[u8], from: usize) -> alloc::vec::Vec<usize> {
        (from..buf.len())
            .filter(|&i| buf[i] == b'"' || buf[i] == b'\\')
            .collect()
    }

    /// Bytes that make JSON strings interesting: quotes, backslashes (runs of them, across
    /// block edges), multi-byte UTF-8, control and plain bytes.
    fn interesting_bytes() -> impl proptest::strategy::Strategy<Value = alloc::vec::Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(b"\"".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\\\\\\".to_vec()),
            Just(b"\\\"".to_vec()),
            Just("\u{e9}\u{4e2d}\u{1f680}".as_bytes().to_vec()),
            Just(b"\\u0001".to_vec()),
            proptest::collection::vec(0u8..=255, 0..80),
            proptest::collection::vec(b'a'..=b'z', 0..80),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|p| p.concat())
    }

    #[test]
    fn long_runs_without_hits_are_skipped() {
        // Runs of every length up to eleven blocks between hits (past the 256-byte steps of
        // `after_run` three times), from every start in a block, with and without AVX2.
        for (run, without_avx2) in (0..700).flat_map(|run| [(run, false), (run, true)]) {
            let mut buf = alloc::vec![b'"'];
            buf.extend(core::iter::repeat_n(b'x', run));
            buf.extend_from_slice(b"\\\"");
            buf.extend(core::iter::repeat_n(b'y', run % 70));
            buf.push(b'"');
            for from in [0, 1, 30, 63, 64] {
                let from = from.min(buf.len());
                let got: alloc::vec::Vec<usize> = with_avx2_choice(without_avx2, || {
                    let mut hits = Hits::new(&buf, from);
                    core::iter::from_fn(|| hits.next(&buf)).collect()
                });
                assert_eq!(
                    got,
                    hits_by_bytes(&buf, from),
                    "{run} {from} {without_avx2}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn hits_are_every_quote_and_backslash_in_order(
            buf in interesting_bytes(),
            from in 0usize..400,
            fours in proptest::collection::vec(proptest::bool::ANY, 0..64),
        ) {
            let from = from.min(buf.len());
            let want = hits_by_bytes(&buf, from);
            // Popping one at a time, or four at once (the 2nd and 4th given) where the block
            // at hand holds four, as the caller chooses.
            let mut hits = Hits::new(&buf, from);
            let mut got = alloc::vec::Vec::new();
            let mut fours = fours.into_iter();
            loop {
                if fours.next() == Some(true) {
                    let before = hits;
                    if let Some([a, b]) = hits.take_four() {
                        let mut one = before;
                        let four: alloc::vec::Vec<usize> =
                            (0..4).map(|_| one.next(&buf).unwrap()).collect();
                        proptest::prop_assert_eq!([four[1], four[3]], [a, b]);
                        got.extend(four);
                        continue;
                    }
                    // Nothing given out.
                    proptest::prop_assert_eq!(format!("{hits:?}"), format!("{before:?}"));
                }
                match hits.next(&buf) {
                    Some(i) => got.push(i),
                    None => break,
                }
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// The `unsafe` call of the BMI1 build of the `extFields` walk relies on this answer: it
    /// must agree with std's detection (a wrong `true` would run `blsr` where it faults).
    #[cfg(all(target_arch = "x86_64", not(target_feature = "bmi1"), feature = "std"))]
    #[test]
    fn bmi1_detection_agrees_with_std() {
        assert_eq!(has_bmi1(), std::is_x86_feature_detected!("bmi1"));
        assert_eq!(
            has_bmi1(),
            std::is_x86_feature_detected!("bmi1"),
            "remembered"
        );
    }

    #[test]
    fn sse2_masks_match_the_portable_ones() {
        // (The portable zero-byte test must not flag a byte through a borrow.)
        each_block(|block: &[u8; 16]| {
            // (A 16-byte block's mask fits the functions' `u32`.)
            let want = by_bytes(block, |b| b == b'"' || b == b'\\') as u32;
            assert_eq!(quote_or_backslash(block), want, "{block:?}");
            assert_eq!(portable::quote_or_backslash(block), want, "{block:?}");
            let want = by_bytes(block, |b| b == b'\\') as u32;
            assert_eq!(backslash(block), want, "{block:?}");
            assert_eq!(portable::backslash(block), want, "{block:?}");
        });
    }
}
