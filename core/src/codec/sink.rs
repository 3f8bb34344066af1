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

impl Sink for WindowSink<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if self.overflow || end > self.window.len() {
            self.overflow = true;
            return;
        }
        self.window[self.pos..end].copy_from_slice(bytes);
        self.pos = end;
    }
}
