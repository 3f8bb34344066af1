//! The connection machine allocates nothing per round trip once warm: requests encoded into
//! the transmit buffer, taken, copied into the peer's read buffer, decoded, matched, answered
//! and matched again, in both header types, with empty, small and 64 KiB bodies (the large
//! body's frame needs room of its own: at most one allocation per side and round trip, the
//! buffer the copy goes into, since the previous one is still shared by the body a caller
//! held).
//!
//! A counting global allocator counts the allocations made by this test's thread.

use bytes::Bytes;
use remora_benches::machine::{pair, round_trips, round_trips_with, Transmit};
use remora_core::{Command, SerializeType};
use remora_tests::alloc::{thread_allocations, ThreadCounting};

#[global_allocator]
static GLOBAL: ThreadCounting = ThreadCounting;

/// Output taken (`take_transmit`), written in place (`poll_transmit` + `handle_written`), or
/// taken by exchanging buffers (`take_transmit_buffer`).
#[test]
fn a_warm_round_trip_allocates_nothing() {
    for transmit in [Transmit::Take, Transmit::Write, Transmit::Swap] {
        for ty in [SerializeType::RocketMq, SerializeType::Json] {
            for (body_len, batch) in [(0usize, 1usize), (0, 64), (100, 1), (100, 64)] {
                let body = Bytes::from(vec![0x42u8; body_len]);
                let (mut client, mut server) = pair();
                let mut round =
                    || round_trips_with(&mut client, &mut server, batch, ty, &body, transmit);
                // Warm: buffers, queues, slab and heap reach their working size.
                for _ in 0..200 {
                    assert_eq!(round(), batch);
                }
                let rounds = 2_000 / batch;
                let (answered, allocs) =
                    thread_allocations(|| (0..rounds).map(|_| round()).sum::<usize>());
                assert_eq!(answered, rounds * batch);
                assert_eq!(
                    allocs,
                    0,
                    "{ty:?}, {body_len} B bodies, {batch} in flight, {}: {allocs} allocations \
                     in {answered} round trips",
                    transmit.name()
                );
            }
        }
    }
}

#[test]
fn a_64_kib_round_trip_allocates_at_most_one_buffer_per_side() {
    for ty in [SerializeType::RocketMq, SerializeType::Json] {
        let body = Bytes::from(vec![0x42u8; 64 * 1024]);
        let (mut client, mut server) = pair();
        for _ in 0..10 {
            assert_eq!(round_trips(&mut client, &mut server, 1, ty, &body), 1);
        }
        let rounds = 200;
        let (answered, allocs) = thread_allocations(|| {
            (0..rounds)
                .map(|_| round_trips(&mut client, &mut server, 1, ty, &body))
                .sum::<usize>()
        });
        assert_eq!(answered, rounds);
        assert!(
            allocs <= 2 * rounds as u64,
            "{ty:?}: {allocs} allocations in {rounds} round trips of 64 KiB"
        );
    }
}

#[test]
fn the_counter_counts() {
    let (_, allocs) = thread_allocations(|| Command::request(1).with_ext("topic", "orders"));
    assert!(allocs > 0);
}
