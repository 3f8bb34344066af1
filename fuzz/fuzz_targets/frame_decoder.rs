//! `cargo +nightly fuzz run frame_decoder`. The input is a byte stream of remoting frames; see `remora_fuzz::check_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| remora_fuzz::check_stream(data));
