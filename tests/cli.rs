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

/// The JSON `out` printed, after checking that the run succeeded (else its stderr is the
/// failure message).
fn succeeded_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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

/// `remora serve` on an ephemeral port; killed when dropped.
struct Served {
    child: std::process::Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start remora serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Served { child, addr }
}

#[test]
fn call_against_serve_echoes_and_reports_failures() {
    let served = serve(&[]);
    let out = remora(
        &[
            "call",
            &served.addr,
            "--code",
            "105",
            "--ext",
            "topic=TopicTest",
            "--body",
            "hello",
            "--serialize",
            "rocketmq",
        ],
        b"",
    );
    let got = succeeded_json(&out);
    let keys: Vec<&str> = got
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, KEYS);
    assert_eq!(got["code"], 0);
    assert_eq!(got["flag"], 1);
    assert_eq!(got["serialize_type"], "ROCKETMQ");
    assert_eq!(got["ext_fields"]["topic"], "TopicTest");
    assert_eq!(got["body_hex"], "68656c6c6f");

    let oneway = remora(&["call", &served.addr, "--code", "34", "--oneway"], b"");
    assert!(oneway.status.success());
    assert!(oneway.stdout.is_empty());

    let bad_ext = remora(
        &["call", &served.addr, "--code", "1", "--ext", "novalue"],
        b"",
    );
    assert!(!bad_ext.status.success());

    let addr = served.addr.clone();
    drop(served);
    let refused = remora(&["call", &addr, "--code", "1", "--timeout-ms", "500"], b"");
    assert!(!refused.status.success());
    let err = String::from_utf8(refused.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("connect"), "{err}");
}

#[test]
fn call_times_out_with_one_line() {
    // A listener that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let out = remora(&["call", &addr, "--code", "1", "--timeout-ms", "200"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("timed out"), "{err}");
    drop(holder.join());
}

#[test]
fn serve_answers_in_the_configured_serialization() {
    let served = serve(&["--serialize", "rocketmq"]);
    let out = remora(
        &["call", &served.addr, "--code", "7", "--serialize", "json"],
        b"",
    );
    let got = succeeded_json(&out);
    assert_eq!(got["serialize_type"], "ROCKETMQ");
}

#[test]
fn bench_checks_every_response_and_prints_one_json_line_per_mode() {
    for backend in ["uring", "std"] {
        let out = remora(
            &[
                "bench",
                "--backend",
                backend,
                "--requests",
                "2000",
                "--inflight",
                "8",
                "--connections",
                "2",
                "--json",
            ],
            b"",
        );
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "rpc and raw");
        for (line, mode) in lines.iter().zip(["rpc", "raw"]) {
            let keys: Vec<&str> = line
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                [
                    "backend",
                    "mode",
                    "connections",
                    "inflight",
                    "payload",
                    "requests",
                    "errors",
                    "seconds",
                    "rps",
                    "p50_us",
                    "p99_us",
                    "p999_us",
                    "max_us",
                    "error_kinds",
                    "unfinished",
                    "stop",
                    "tls",
                    "connect_s",
                    "window_requests",
                    "window_unix",
                    "process_cpu_us_per_req",
                    "loop"
                ][..if backend == "uring" { 22 } else { 21 }]
            );
            assert_eq!(line["backend"], backend);
            // The window opens once every connection is made; it counts what it saw.
            let window = line["window_requests"].as_u64().unwrap();
            assert!(window > 0 && window <= 2000, "{backend}: {line}");
            if backend == "uring" {
                // The same loop carries both modes: one receive per response at least.
                let receives = line["loop"]["receives"].as_u64().unwrap();
                assert!(receives > 0 && receives <= 2000, "{backend}: {line}");
            }
            assert_eq!(line["mode"], mode);
            assert_eq!(line["requests"], 2000);
            assert_eq!(line["errors"], 0);
            assert_eq!(line["unfinished"], 0);
            assert_eq!(line["stop"], "requests");
        }
    }
}

#[test]
fn serve_uring_backend_answers() {
    let served = serve(&["--backend", "uring"]);
    let out = remora(&["call", &served.addr, "--code", "7", "--body", "u"], b"");
    let got = succeeded_json(&out);
    assert_eq!(got["body_hex"], "75");
}

#[test]
fn serve_refuses_connections_beyond_its_maximum_with_a_log_line() {
    use std::io::{BufRead, Read};
    for backend in ["std", "uring", "tokio"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
            .args(["serve", "--listen", "127.0.0.1:0", "--max-connections", "1"])
            .args(["--backend", backend])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start remora serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_string();
        let first = std::net::TcpStream::connect(&addr).unwrap();
        // The first is admitted and stays open; the second is closed at once.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut second = std::net::TcpStream::connect(&addr).unwrap();
        second
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(
            matches!(second.read(&mut buf), Ok(0) | Err(_)),
            "{backend}: refused"
        );
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            stderr.contains("WARN") && stderr.contains("connection refused: 1 connections open"),
            "{backend}: {stderr:?}"
        );
        drop(first);
    }
}

/// Runs `remora bench --json` with `args`; returns its exit status, its JSON line and how long it
/// took.
fn bench_json(args: &[&str]) -> (std::process::ExitStatus, Value, std::time::Duration) {
    let t0 = std::time::Instant::now();
    let out = remora(
        &[&["bench", "--mode", "rpc", "--json"][..], args].concat(),
        b"",
    );
    let took = t0.elapsed();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().next().unwrap_or_else(|| {
        panic!(
            "no JSON line; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status, serde_json::from_str(line).unwrap(), took)
}

#[test]
fn bench_against_a_silent_server_ends_on_time_and_says_timeouts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accept and hold every connection, never answering.
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(4).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(held);
    });
    for backend in ["uring", "std"] {
        let (status, line, took) = bench_json(&[
            "--backend",
            backend,
            "--target",
            &addr,
            "--duration",
            "1",
            "--timeout-ms",
            "400",
            "--inflight",
            "2",
        ]);
        assert!(!status.success(), "{backend}: nothing succeeded");
        assert!(
            took < std::time::Duration::from_secs(4),
            "{backend}: {took:?}"
        );
        assert_eq!(line["requests"], 0);
        assert_eq!(line["stop"], "duration");
        let timeouts = line["error_kinds"]["timeout"].as_u64().unwrap();
        assert!(timeouts >= 2, "{backend}: {line}");
        assert_eq!(line["errors"], timeouts, "{backend}: only timeouts");
    }
}

#[test]
fn bench_stops_early_when_its_server_dies() {
    for backend in ["uring", "std"] {
        let served = serve(&[]);
        let addr = served.addr.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(700));
            drop(served);
        });
        let (status, line, took) = bench_json(&[
            "--backend",
            backend,
            "--target",
            &addr,
            "--duration",
            "20",
            "--inflight",
            "4",
        ]);
        killer.join().unwrap();
        assert!(!status.success(), "{backend}");
        assert_eq!(line["stop"], "connections-lost", "{backend}: {line}");
        assert!(
            took < std::time::Duration::from_secs(8),
            "{backend}: {took:?}"
        );
        assert!(line["requests"].as_u64().unwrap() > 0);
        let kinds = &line["error_kinds"];
        let lost = kinds["lost"].as_u64().unwrap() + kinds["refused"].as_u64().unwrap();
        assert!(lost > 0, "{backend}: {line}");
        assert!(
            lost < 100_000,
            "{backend}: a dead server is not hammered: {line}"
        );
    }
}

/// `examples/custom_loop`, built (or found up to date) by the same cargo that runs this test, so
/// a focused `cargo test --test cli` never runs a stale copy.
fn custom_loop_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/..
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "--example", "custom_loop"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building examples/custom_loop");
    let example = profile_dir.join("examples/custom_loop");
    assert!(example.exists(), "{} missing", example.display());
    example
}

/// Runs `program` with `args` to completion, killing it after 60 s.
fn run_bounded(program: &std::path::Path, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not finish in 60 s", program.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn custom_loop_example_checks_1000_responses_from_remora_serve() {
    use std::io::{BufRead, BufReader};
    let example = custom_loop_example();
    for backend in ["std", "tokio"] {
        let mut server = Command::new(env!("CARGO_BIN_EXE_remora"))
            .args(["serve", "--listen", "127.0.0.1:0", "--backend", backend])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start remora serve");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_string();
        let out = run_bounded(&example, &[&addr]);
        let _ = server.kill();
        let _ = server.wait();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with("custom_loop: 1000/1000 responses checked, 32 in flight"),
            "{backend}: {stdout}"
        );
    }
}

#[test]
fn custom_loop_example_fails_clearly_on_a_refused_connection() {
    let example = custom_loop_example();
    // A port that was free a moment ago: nothing listens there.
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let out = run_bounded(&example, &[&addr]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect") && stderr.contains(&addr),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn serve_raw_mode_echoes_bytes_on_tokio() {
    use std::io::{BufRead, BufReader, Read};
    let mut server = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "tokio",
            "--mode",
            "raw",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start remora serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|rest| rest.strip_suffix(" (raw byte echo)"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // Not a frame: raw mode runs no protocol, it only echoes.
    sock.write_all(b"\xff\xff\xff\xffnot a frame").unwrap();
    let mut back = [0u8; 15];
    sock.read_exact(&mut back).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(&back, b"\xff\xff\xff\xffnot a frame");
}

#[test]
fn bench_std_then_keeps_the_calls_in_flight_from_one_thread() {
    let out = remora(
        &[
            "bench",
            "--backend",
            "std",
            "--std-then",
            "--mode",
            "rpc",
            "--requests",
            "3000",
            "--inflight",
            "32",
            "--json",
        ],
        b"",
    );
    let line = succeeded_json(&out);
    assert_eq!(line["backend"], "std");
    assert_eq!(line["requests"], 3000);
    assert_eq!(line["errors"], 0);
    assert_eq!(line["unfinished"], 0);
    assert_eq!(line["stop"], "requests");
}

#[test]
fn serve_std_dispatch_inline_answers_every_request() {
    let served = serve(&["--dispatch", "inline"]);
    let out = remora(
        &[
            "bench",
            "--backend",
            "std",
            "--target",
            &served.addr,
            "--mode",
            "rpc",
            "--requests",
            "2000",
            "--inflight",
            "16",
            "--json",
        ],
        b"",
    );
    let line = succeeded_json(&out);
    assert_eq!(line["requests"], 2000);
    assert_eq!(line["errors"], 0);
    // Only the std server has a choice.
    let refused = remora(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "uring",
            "--dispatch",
            "inline",
        ],
        b"",
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--dispatch applies to the std backend")
    );
}
