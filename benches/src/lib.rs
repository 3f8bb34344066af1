//! Benchmarks for Remora; see `benches/`.
