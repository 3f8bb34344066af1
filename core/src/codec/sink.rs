//! Where header encoders write: straight into a `BufMut`, or into a reserved, not yet
//! committed region of one (so a header can be written once and its length filled in after).

use bytes::buf::UninitSlice;
use bytes::BufMut;

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
    fn put_binary_entry(&mut self, key: &[u8], value: &[u8]) {
        self.put_u16(key.len() as u16);
        self.put(key);
        self.put_u32(value.len() as u32);
        self.put(value);
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

    /// One room check for the whole entry; the two lengths are fixed-size writes.
    #[inline]
    fn put_binary_entry(&mut self, key: &[u8], value: &[u8]) {
        let (k, v) = (key.len(), value.len());
        let at = self.pos;
        if 6 + k + v > self.window.len() - at {
            self.overflow = true;
            return;
        }
        let w = &mut self.window[at..at + 6 + k + v];
        w[..2].copy_from_slice(&(k as u16).to_be_bytes());
        copy_small(&mut w[2..2 + k], key);
        w[2 + k..6 + k].copy_from_slice(&(v as u32).to_be_bytes());
        copy_small(&mut w[6 + k..], value);
        self.pos = at + 6 + k + v;
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
