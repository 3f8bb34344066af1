//! `cargo +nightly fuzz run binary_header`. The input is a ROCKETMQ binary header; see `remora_fuzz::check_binary_header`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| remora_fuzz::check_binary_header(data));
