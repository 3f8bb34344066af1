//! Allocation counting for the `*_alloc` tests: a test binary installs [`Counting`] as its
//! global allocator (`#[global_allocator] static GLOBAL: Counting = Counting;`) and reads the
//! counters around the code it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use remora_core::{codes, Command, SerializeType};

/// The system allocator, counting allocations (and reallocations), their bytes and the largest.
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations and reallocations so far (process-wide).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes allocated so far (process-wide).
pub fn bytes() -> usize {
    BYTES.load(Ordering::Relaxed)
}

/// The largest allocation since the last call, and resets it.
pub fn take_largest() -> usize {
    LARGEST.swap(0, Ordering::Relaxed)
}

/// Request `n` of a steady-state load: code 310, a 64-byte body (`n`, then `x`s) built in the
/// reused `buf`, as a careful application would.
pub fn numbered_request(buf: &mut BytesMut, n: u64, ty: SerializeType) -> Command {
    buf.reserve(64);
    buf.put_u64(n);
    buf.put_bytes(b'x', 56);
    Command::request(310)
        .with_body(buf.split().freeze())
        .with_serialize_type(ty)
}

/// A handler answering `SUCCESS` with the request's body.
pub fn echo(request: Command) -> Command {
    let body = request.body_bytes();
    request.response(codes::SUCCESS).with_body(body)
}

/// The system allocator, counting the allocations (and reallocations) of the thread running
/// [`thread_allocations`]: for tests that must not see other threads' work (the test harness's
/// own, a server's).
pub struct ThreadCounting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_thread_alloc() {
    // `try_with`: the allocator also runs while thread locals are being torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = THREAD_ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_thread_alloc();
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_thread_alloc();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_thread_alloc();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns what it returned and the allocations it made on this thread (with
/// [`ThreadCounting`] as the global allocator).
pub fn thread_allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    THREAD_ALLOCS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, THREAD_ALLOCS.with(Cell::get))
}
