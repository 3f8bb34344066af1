//! Benchmarks for Remora; see `benches/`. The library holds what the criterion benches and the
//! measuring examples (`decode_loop`, `decode_time`) share, so that every figure is taken on the
//! same frames: the benchmarked commands, the 44 vector frames, reading every field of a
//! decoded command, and (feature `reference`) the same operations on `rocketmq-protocol` 1.0;
//! and the connection machines' round trip.

pub mod fixtures;
pub mod machine;
