//! `cargo +nightly fuzz run json_header`. The input is a JSON header; see `remora_fuzz::check_json_header`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| remora_fuzz::check_json_header(data));
