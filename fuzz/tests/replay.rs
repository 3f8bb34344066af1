//! Replays the committed seeds (`corpus/<target>/seed-*`) through the fuzz targets' checks with a
//! plain `cargo test` (stable toolchain, no libFuzzer), so a regression on a reproducer that was
//! turned into a seed fails here too.
//!
//! `REMORA_FUZZ_REPLAY=<target>:<file>` replays one extra file instead (e.g. a crash artifact).

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    if let Ok(spec) = std::env::var("REMORA_FUZZ_REPLAY") {
        if let Some((t, file)) = spec.split_once(':') {
            if t == target {
                check(&fs::read(file).expect("REMORA_FUZZ_REPLAY file"));
            }
            return;
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).expect("seed directory") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("seed-") {
            continue;
        }
        let data = fs::read(&path).unwrap();
        eprintln!("{target}: {name}");
        check(&data);
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn frame_decoder_seeds() {
    replay("frame_decoder", remora_fuzz::check_stream);
}

#[test]
fn json_header_seeds() {
    replay("json_header", remora_fuzz::check_json_header);
}

#[test]
fn binary_header_seeds() {
    replay("binary_header", remora_fuzz::check_binary_header);
}

#[test]
fn connection_seeds() {
    replay("connection", remora_fuzz::run_connection);
}

#[test]
fn route_seeds() {
    replay("route", remora_fuzz::check_route);
}
