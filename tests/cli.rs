//! The `remora` binary: `decode` and `encode` as a user runs them.
//!
//! (This file belongs to the root `remora` package, which owns the binary; the rest of `tests/`
//! is the cross-crate test package.)

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn remora(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start remora");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn fixture(name: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors/");
    serde_json::from_str(&std::fs::read_to_string(format!("{path}{name}")).unwrap()).unwrap()
}

const KEYS: [&str; 10] = [
    "serialize_type",
    "code",
    "language",
    "language_code",
    "version",
    "opaque",
    "flag",
    "remark",
    "ext_fields",
    "body_hex",
];

#[test]
fn decode_prints_each_vector_with_exactly_its_fields() {
    let file = fixture("remoting-vectors.json");
    let vectors: Vec<&Value> = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["hex"].as_str().unwrap().len() < 4096)
        .collect();
    let stream: String = vectors.iter().map(|v| v["hex"].as_str().unwrap()).collect();
    let out = remora(&["decode", "--hex", &stream], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), vectors.len());
    for (line, v) in lines.iter().zip(&vectors) {
        let got: Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = got
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, KEYS);
        for key in KEYS {
            assert_eq!(got[key], v[key], "{}: {key}", v["name"]);
        }
    }
}

#[test]
fn decode_reads_stdin_and_files() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/three-frames.bin");
    let from_file = remora(&["decode", "--file", sample], b"");
    let from_stdin = remora(&["decode"], &std::fs::read(sample).unwrap());
    assert!(from_file.status.success());
    assert_eq!(from_file.stdout, from_stdin.stdout);
    assert_eq!(
        String::from_utf8_lossy(&from_file.stdout).lines().count(),
        3
    );
}

#[test]
fn invalid_input_exits_non_zero_with_one_line_reason() {
    let file = fixture("invalid-frames.json");
    for f in file["frames"].as_array().unwrap() {
        let out = remora(&["decode", "--hex", f["hex"].as_str().unwrap()], b"");
        assert!(!out.status.success(), "{}", f["name"]);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{}: {err}", f["name"]);
        assert!(err.starts_with("error: frame 1"), "{}: {err}", f["name"]);
    }
    let out = remora(&["decode", "--hex", "zz"], b"");
    assert!(!out.status.success());
}

#[test]
fn encode_reproduces_rocketmq_vectors_and_round_trips_json() {
    let file = fixture("remoting-vectors.json");
    for v in file["vectors"].as_array().unwrap() {
        if v["hex"].as_str().unwrap().len() > 4096 || v.get("note").is_some() {
            continue;
        }
        let mut view = serde_json::Map::new();
        for key in KEYS {
            view.insert(key.into(), v[key].clone());
        }
        let json = Value::Object(view).to_string();
        let out = remora(&["encode", "--json", &json], b"");
        assert!(
            out.status.success(),
            "{}: {}",
            v["name"],
            String::from_utf8_lossy(&out.stderr)
        );
        let hex = String::from_utf8(out.stdout).unwrap();
        if v["serialize_type"] == "ROCKETMQ" {
            assert_eq!(hex.trim(), v["hex"].as_str().unwrap(), "{}", v["name"]);
        }
        let back = remora(&["decode", "--hex", hex.trim()], b"");
        let got: Value = serde_json::from_slice(&back.stdout).unwrap();
        for key in KEYS {
            assert_eq!(got[key], v[key], "{}: {key}", v["name"]);
        }
    }
}

#[test]
fn encode_reads_a_stream_of_objects_and_refuses_bad_ones() {
    let out = remora(
        &["encode"],
        br#"{"code":1} {"code":2,"serialize_type":"ROCKETMQ"}"#,
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let bad = remora(&["encode"], br#"{"code":1,"langauge":"JAVA"}"#);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown key"));
}
