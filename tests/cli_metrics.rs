//! `remora serve --metrics`: after a known number of calls, `/metrics` says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use remora_core::{Codec, Command, Decoded};
use remora_std::{Client, ClientConfig};

/// `remora serve --metrics` on ephemeral ports; killed when dropped.
struct Served {
    child: Child,
    addr: String,
    metrics: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(backend: &str) -> Served {
    let mut child = Process::new(env!("CARGO_BIN_EXE_remora"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .args(["--backend", backend])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start remora serve");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    line.clear();
    out.read_line(&mut line).unwrap();
    let metrics = line
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
        .to_string();
    Served {
        child,
        addr,
        metrics,
    }
}

/// `GET path` over plain HTTP/1.1; the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_the_calls_a_server_handled() {
    for backend in ["std", "tokio", "uring"] {
        let served = serve(backend);
        let client = Client::connect(&served.addr, ClientConfig::default()).unwrap();
        let (calls, oneways, body) = (7, 2, b"twelve bytes");
        for _ in 0..calls {
            let request = Command::request(105).with_body(&body[..]);
            let response = client.call(request, Duration::from_secs(5)).unwrap();
            assert_eq!(response.code, 0);
        }
        for _ in 0..oneways {
            client.oneway(Command::request(34)).unwrap();
        }
        // The oneways are handled after they are written: wait (bounded) for the count.
        let mut text = String::new();
        for _ in 0..100 {
            let (status, body) = get(&served.metrics, "/metrics");
            assert_eq!(status, "HTTP/1.1 200 OK", "{backend}");
            text = body;
            let handled = r#"remora_requests_total{side="server",code="34",outcome="success"}"#;
            if value(&text, handled) == Some(f64::from(oneways)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let want = [
            (
                r#"remora_requests_total{side="server",code="105",outcome="success"}"#,
                f64::from(calls),
            ),
            (
                r#"remora_requests_total{side="server",code="34",outcome="success"}"#,
                f64::from(oneways),
            ),
            (
                r#"remora_request_duration_seconds_count{side="server"}"#,
                f64::from(calls + oneways),
            ),
            (
                r#"remora_body_bytes_total{side="server",direction="in"}"#,
                (calls as usize * body.len()) as f64,
            ),
            (r#"remora_requests_in_flight{side="server"}"#, 0.0),
        ];
        for (series, number) in want {
            assert_eq!(
                value(&text, series),
                Some(number),
                "{backend}: {series} in\n{text}"
            );
        }
        // The server's own counts; the core counts requests that want an answer, not oneways.
        for series in [
            "remora_server_requests_total",
            "remora_server_responses_total",
        ] {
            assert_eq!(
                value(&text, series),
                Some(f64::from(calls)),
                "{backend}:\n{text}"
            );
        }
        assert_eq!(
            value(&text, "remora_server_accepted_total"),
            Some(1.0),
            "{backend}"
        );
        assert_eq!(
            value(&text, "remora_server_connections"),
            Some(1.0),
            "{backend}"
        );
        assert!(get(&served.metrics, "/").0.contains("404"), "{backend}");
        client.close();
    }
}

/// Sends SIGTERM to `child` and waits (at most 10 s) for it to exit; its status and the rest of
/// its stdout.
fn terminate(mut child: Child, stdout: impl Read) -> (std::process::ExitStatus, String) {
    let sent = Process::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("remora serve did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut rest = String::new();
    let mut stdout = stdout;
    stdout.read_to_string(&mut rest).unwrap();
    (status, rest)
}

/// `name: value` from a summary.
fn summary_value(summary: &str, name: &str) -> Option<u64> {
    summary.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

/// A connection to `addr`, retrying (bounded) while the server starts.
fn connect_when_up(addr: &str) -> TcpStream {
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                return stream;
            }
            Err(e) if std::time::Instant::now() > give_up => panic!("{addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Writes `request` as one frame; the frame's length.
fn send(stream: &mut TcpStream, request: &Command) -> u64 {
    let mut frame = bytes::BytesMut::new();
    Codec::default().encode(request, &mut frame).unwrap();
    stream.write_all(&frame).unwrap();
    frame.len() as u64
}

/// Reads one frame; the command and the frame's length.
fn receive(stream: &mut TcpStream) -> (Command, u64) {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).unwrap();
    let mut frame = prefix.to_vec();
    frame.resize(4 + u32::from_be_bytes(prefix) as usize, 0);
    stream.read_exact(&mut frame[4..]).unwrap();
    let len = frame.len() as u64;
    match Codec::default().decode(&mut bytes::BytesMut::from(&frame[..])) {
        Ok(Decoded::Command(cmd)) => (cmd, len),
        other => panic!("not one frame: {other:?}"),
    }
}

#[test]
fn serve_stops_on_sigterm_with_a_summary_of_what_it_served() {
    let script = std::env::temp_dir().join(format!("remora-stop-{}.json", std::process::id()));
    std::fs::write(&script, r#"{"rules": [{"code": 11, "action": "drop"}]}"#).unwrap();
    let script = script.to_str().unwrap().to_string();
    let (calls, body) = (5u64, b"twelve bytes");
    for (backend, extra) in [
        ("std", vec![]),
        ("uring", vec![]),
        ("tokio", vec![]),
        ("std", vec!["--script", script.as_str()]),
    ] {
        for quiet in [false, true] {
            let what = format!("{backend} {extra:?} quiet={quiet}");
            // --quiet does not say where it listens: give it a port that was free a moment ago.
            let listen = if quiet {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().to_string()
            } else {
                "127.0.0.1:0".to_string()
            };
            let mut child = Process::new(env!("CARGO_BIN_EXE_remora"))
                .args(["serve", "--listen", &listen, "--backend", backend])
                .args(&extra)
                .args(quiet.then_some("--quiet"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start remora serve");
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let addr = if quiet {
                listen
            } else {
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                line.trim()
                    .strip_prefix("listening on ")
                    .unwrap_or_else(|| panic!("{what}: unexpected first line {line:?}"))
                    .to_string()
            };
            let mut stream = connect_when_up(&addr);
            let (mut dropped, mut bytes_in, mut bytes_out) = (0, 0, 0);
            if !extra.is_empty() {
                // The script drops code 11; the calls after it show it was read.
                bytes_in += send(&mut stream, &Command::request(11).with_body(&body[..]));
                dropped = 1;
            }
            for opaque in 0..calls {
                let request = Command::request(105)
                    .with_body(&body[..])
                    .with_opaque(opaque as i32);
                bytes_in += send(&mut stream, &request);
                let (response, len) = receive(&mut stream);
                assert_eq!(
                    (response.code, response.opaque),
                    (0, opaque as i32),
                    "{what}"
                );
                bytes_out += len;
            }
            drop(stream);
            let mut stderr = child.stderr.take().unwrap();
            let (status, summary) = terminate(child, out);
            assert!(status.success(), "{what}: exit status {status}\n{summary}");
            let mut chatter = String::new();
            stderr.read_to_string(&mut chatter).unwrap();
            assert!(
                summary.starts_with("stopped by SIGTERM after "),
                "{what}: the summary comes first after startup:\n{summary}"
            );
            if quiet {
                assert!(chatter.is_empty(), "{what}: --quiet printed {chatter:?}");
            }
            let len = body.len() as u64;
            for (name, want) in [
                ("connections accepted", 1),
                ("connections refused", 0),
                ("requests handled", calls + dropped),
                ("requests success", calls),
                ("requests dropped", dropped),
                ("requests error_response", 0),
                ("busy answers", 0),
                ("bytes in", bytes_in),
                ("bytes out", bytes_out),
                ("body bytes in", (calls + dropped) * len),
                ("body bytes out", calls * len),
            ] {
                assert_eq!(
                    summary_value(&summary, name),
                    Some(want),
                    "{what}: {name} in\n{summary}"
                );
            }
        }
    }
    let _ = std::fs::remove_file(&script);
}
