//! `cargo +nightly fuzz run route`. The input is a route or cluster-info body; see `remora_fuzz::check_route`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| remora_fuzz::check_route(data));
