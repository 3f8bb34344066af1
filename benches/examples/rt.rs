//! Round trips through two `Connection`s in one thread, for instruction counts under
//! callgrind: `rt <json|rocketmq> <body bytes> <iterations> [batch] [take|write|swap]`, the same
//! steps as the `connection` bench (`batch` requests in flight per iteration, 1 by default;
//! output moved with `take_transmit`, the default, or written in place with `poll_transmit` +
//! `handle_written`). Run it twice
//! with different iteration counts and divide the difference by the difference of round trips.

use bytes::Bytes;
use remora_benches::machine::{pair, round_trips_with, Transmit};
use remora_core::SerializeType;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ty = match args.get(1).map(String::as_str) {
        Some("json") => SerializeType::Json,
        _ => SerializeType::RocketMq,
    };
    let body = Bytes::from(vec![0x42u8; args.get(2).map_or(0, |a| a.parse().unwrap())]);
    let n: usize = args.get(3).map_or(10_000, |a| a.parse().unwrap());
    let batch: usize = args.get(4).map_or(1, |a| a.parse().unwrap());
    let transmit = match args.get(5).map(String::as_str) {
        Some("write") => Transmit::Write,
        Some("swap") => Transmit::Swap,
        _ => Transmit::Take,
    };
    let (mut client, mut server) = pair();
    for _ in 0..n {
        assert_eq!(
            round_trips_with(&mut client, &mut server, batch, ty, &body, transmit),
            batch
        );
    }
}
