//! Finding bytes sixteen at a time: SSE2 on x86_64 (part of its baseline, so no run-time
//! detection and no `std`), a portable word-at-a-time version elsewhere. Used by the JSON
//! decoder to find the end of a string (its closing quote, or a backslash) and the next escape.

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
    let mut i = 0;
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
    pub(super) fn backslash(block: &[u8; 16]) -> u32 {
        let [lo, hi] = halves(block);
        let m = |w: u64| gather(zero_bytes(w ^ (ONES * u64::from(b'\\'))));
        m(lo) | m(hi) << 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_bytes(block: &[u8; 16], hit: impl Fn(u8) -> bool) -> u32 {
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
    fn sse2_masks_match_the_portable_ones() {
        // Every byte value at every position, among neighbours that are quotes, backslashes
        // or neither (the portable zero-byte test must not flag a byte through a borrow).
        for fill in [b'a', b'"', b'\\', 0x00, 0xFF, 0x80] {
            for at in 0..16 {
                for b in 0..=255u8 {
                    let mut block = [fill; 16];
                    block[at] = b;
                    let want = by_bytes(&block, |b| b == b'"' || b == b'\\');
                    assert_eq!(quote_or_backslash(&block), want, "{block:?}");
                    assert_eq!(portable::quote_or_backslash(&block), want, "{block:?}");
                    let want = by_bytes(&block, |b| b == b'\\');
                    assert_eq!(backslash(&block), want, "{block:?}");
                    assert_eq!(portable::backslash(&block), want, "{block:?}");
                }
            }
        }
    }
}
