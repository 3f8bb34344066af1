//! `remora serve --metrics`: after a known number of calls, `/metrics` says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use remora_core::Command;
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
        if backend != "tokio" {
            // The server's own counts (the tokio server keeps no Budget snapshot); the core
            // counts requests that want an answer, not oneways.
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
        }
        assert!(get(&served.metrics, "/").0.contains("404"), "{backend}");
        client.close();
    }
}
