//! `cargo +nightly fuzz run connection`. The input is a client/server scenario (a setup and a sequence of operations, decoded with `arbitrary`); see `remora_fuzz::run_connection`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| remora_fuzz::run_connection(data));
