//! The connection machine alone, no sockets: round trips through a client `Connection` and a
//! server `Connection` in one thread (encode, frame, decode, match, answer, match), and the memory
//! each waiting request costs.
//!
//! Ids: `connection/round_trip/{1,64}/{json,rocketmq}` (batch of requests in flight per step;
//! throughput is round trips per second), and `connection/round_trip_64k/1/{json,rocketmq}`:
//! one round trip whose request carries a 64 KiB body that the response echoes (each side's
//! bytes are moved into the other's read buffer with `handle_input`, one copy per direction that
//! a real transport's read would make anyway). Those take each side's output with
//! `take_transmit` (as a driver that hands owned buffers on does);
//! `connection/round_trip_write/{1,64}/{json,rocketmq}` are the same round trips written in
//! place with `poll_transmit` + `handle_written` (as a driver that writes synchronously does),
//! and `connection/round_trip_swap/{1,64}/{json,rocketmq}` taken by exchanging buffers with
//! `take_transmit_buffer` (as a driver that hands owned buffers on and alternates two does). Before criterion runs, the bench prints the measured
//! heap bytes per waiter at 100,000 waiters (counting allocator) and the structural figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use remora_benches::machine::{pair, round_trips_with, Transmit};
use remora_core::{Command, Config, Connection, Instant, SerializeType};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only keeps a byte count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn bench(c: &mut Criterion) {
    let big = Bytes::from(vec![0x42u8; 64 * 1024]);
    for (group_name, batch, body, transmit) in [
        ("round_trip", 1usize, Bytes::new(), Transmit::Take),
        ("round_trip", 64, Bytes::new(), Transmit::Take),
        ("round_trip_64k", 1, big, Transmit::Take),
        ("round_trip_write", 1, Bytes::new(), Transmit::Write),
        ("round_trip_write", 64, Bytes::new(), Transmit::Write),
        ("round_trip_swap", 1, Bytes::new(), Transmit::Swap),
        ("round_trip_swap", 64, Bytes::new(), Transmit::Swap),
    ] {
        let mut group = c.benchmark_group(format!("connection/{group_name}/{batch}"));
        group.throughput(Throughput::Elements(batch as u64));
        for (name, ty) in [
            ("json", SerializeType::Json),
            ("rocketmq", SerializeType::RocketMq),
        ] {
            let (mut client, mut server) = pair();
            // Warm the buffers.
            round_trips_with(&mut client, &mut server, batch, ty, &body, transmit);
            group.bench_function(name, |b| {
                b.iter(|| {
                    let answered =
                        round_trips_with(&mut client, &mut server, batch, ty, &body, transmit);
                    assert_eq!(answered, batch);
                })
            });
        }
        group.finish();
    }
}

/// Heap bytes per waiting request at `n` waiters (what the machine holds, not the frames).
fn memory_per_waiter(n: usize) -> f64 {
    let now = Instant::ZERO;
    let mut conn = Connection::new(Config {
        max_waiters: n,
        ..Config::default()
    });
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for i in 0..n {
        let deadline = now + Duration::from_millis(1_000 + (i as u64 * 7919) % 60_000);
        conn.send_request(Command::request(1), deadline, now)
            .unwrap();
        // Send the bytes away: they are the transport's, not the waiter's.
        drop(conn.take_transmit());
    }
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    assert_eq!(conn.pending_requests(), n);
    assert!(conn.poll_timeout().is_some());
    (after - before) as f64 / n as f64
}

fn main() {
    let n = 100_000;
    let measured = memory_per_waiter(n);
    eprintln!(
        "memory per waiter at {n} waiters: {measured:.1} bytes measured (heap, includes spare \
         capacity of grown vectors); {} bytes structural (Connection::WAITER_BYTES)",
        Connection::<()>::WAITER_BYTES
    );
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
