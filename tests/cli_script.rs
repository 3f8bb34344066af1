//! `remora serve --script` standing in for a name server and a broker, and `remora call
//! --namesrv` following the route they give: a producer-shaped exchange (route lookup 105,
//! heartbeat 34, send 10) and the failures a script injects (busy, drop, close, delay).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use remora_core::route::TopicRoute;
use remora_core::{codes, CallError, Command as Frame, SerializeType};
use remora_std::{Client, ClientConfig};
use serde_json::Value;

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");

struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_script(path: &str) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["serve", "--listen", "127.0.0.1:0", "--script", path])
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

fn remora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run remora")
}

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("remora-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn client(addr: &str) -> Client {
    Client::connect(addr, ClientConfig::default()).unwrap()
}

/// The sample broker, and the sample name server rewritten to point at it.
fn sample_pair() -> (Served, Served, TempFile) {
    let broker = serve_script(&format!("{SAMPLES}/broker-script.json"));
    let ns_script = std::fs::read_to_string(format!("{SAMPLES}/namesrv-script.json"))
        .unwrap()
        .replace("127.0.0.1:10911", &broker.addr);
    let file = TempFile::new("namesrv.json", &ns_script);
    let ns = serve_script(file.path());
    (broker, ns, file)
}

#[test]
fn the_sample_name_server_names_the_sample_broker() {
    let ns = serve_script(&format!("{SAMPLES}/namesrv-script.json"));
    let c = client(&ns.addr);
    let resp = c
        .call(
            Frame::request(codes::GET_ROUTEINFO_BY_TOPIC).with_ext("topic", "AnyTopic"),
            Duration::from_secs(3),
        )
        .unwrap();
    assert_eq!(resp.code, codes::SUCCESS);
    let route = TopicRoute::parse(resp.body()).unwrap();
    assert_eq!(route.writable_masters(), ["127.0.0.1:10911"]);
    c.close();
}

#[test]
fn a_producer_shaped_exchange_against_scripted_servers() {
    let (broker, ns, _file) = sample_pair();
    // Route lookup at the name server.
    let nsc = client(&ns.addr);
    let route_req = Frame::request(codes::GET_ROUTEINFO_BY_TOPIC)
        .with_ext("topic", "TopicTest")
        .with_opaque(77);
    let resp = nsc.call(route_req, Duration::from_secs(3)).unwrap();
    assert!(resp.is_response());
    let route = TopicRoute::parse(resp.body()).unwrap();
    let chosen = route.choose_writable(None).unwrap();
    assert_eq!(chosen.name, "broker-a");
    let master = chosen.master.clone().unwrap();
    assert_eq!(master, broker.addr);
    nsc.close();

    // Heartbeat and send at the broker, in both header serializations.
    let bc = client(&master);
    for ty in [SerializeType::Json, SerializeType::RocketMq] {
        let hb = bc
            .call(
                Frame::request(codes::HEART_BEAT)
                    .with_serialize_type(ty)
                    .with_body(r#"{"clientID":"c1","producerDataSet":[{"groupName":"g"}]}"#),
                Duration::from_secs(3),
            )
            .unwrap();
        assert_eq!(hb.code, codes::SUCCESS);
        assert_eq!(hb.serialize_type, ty, "answered in kind");
        let sent = bc
            .call(
                Frame::request(codes::SEND_MESSAGE)
                    .with_serialize_type(ty)
                    .with_ext("producerGroup", "g")
                    .with_ext("topic", "TopicTest")
                    .with_ext("queueId", "0")
                    .with_body("first message"),
                Duration::from_secs(3),
            )
            .unwrap();
        assert_eq!(sent.code, codes::SUCCESS);
        assert_eq!(sent.ext("queueId"), Some("0"));
        assert!(sent.ext("msgId").is_some());
    }
    // A code no rule names is echoed.
    let echo = bc
        .call(Frame::request(9999).with_body("x"), Duration::from_secs(3))
        .unwrap();
    assert_eq!((echo.code, echo.body()), (codes::SUCCESS, &b"x"[..]));
    bc.close();

    // The CLI does the same: route lookup (rotating past a dead name server), then the send.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let namesrv = format!("{dead};{}", ns.addr);
    let out = remora(&[
        "call",
        "--namesrv",
        &namesrv,
        "--topic",
        "TopicTest",
        "--code",
        "10",
        "--ext",
        "topic=TopicTest",
        "--body",
        "hello",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("broker-a") && stderr.contains(&broker.addr),
        "{stderr}"
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["code"], 0);
    assert_eq!(got["ext_fields"]["queueOffset"], "0");

    let out = remora(&[
        "call",
        "--namesrv",
        &ns.addr,
        "--topic",
        "T",
        "--broker",
        "broker-z",
        "--code",
        "10",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("broker-z"), "{err}");

    let out = remora(&["call", "--namesrv", &dead, "--topic", "T", "--code", "10"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no name server answered"), "{err}");
}

#[test]
fn a_script_injects_busy_drop_close_and_delay() {
    let script = TempFile::new(
        "faults.json",
        r#"{"rules": [
            {"code": 10, "response": {"code": 2, "remark": "[REJECTREQUEST]system busy, start flow control for a while"}},
            {"code": 11, "action": "drop"},
            {"code": 12, "action": "close"},
            {"code": 13, "delay_ms": 400, "response": {"code": 0, "body": "late"}},
            {"code": 14, "action": "close", "delay_ms": 200}
        ]}"#,
    );
    let served = serve_script(script.path());
    let c = client(&served.addr);
    let t = Duration::from_secs(3);

    let busy = c.call(Frame::request(10).with_opaque(5), t).unwrap();
    assert_eq!(busy.code, codes::SYSTEM_BUSY);
    assert!(busy.remark().unwrap().starts_with("[REJECTREQUEST]"));

    let dropped = c.call(Frame::request(11), Duration::from_millis(300));
    assert!(
        matches!(dropped, Err(CallError::Timeout { written: true })),
        "{dropped:?}"
    );

    // A delayed answer does not hold up the ones behind it on the same connection.
    let c2 = c.clone();
    let started = Instant::now();
    let late = std::thread::spawn(move || {
        let r = c2.call(Frame::request(13), Duration::from_secs(3));
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    let quick = c.call(Frame::request(34), t).unwrap();
    let quick_at = started.elapsed();
    assert_eq!(quick.code, codes::SUCCESS);
    let (late, late_at) = late.join().unwrap();
    let late = late.unwrap();
    assert_eq!(late.body(), b"late");
    assert!(late_at >= Duration::from_millis(400), "{late_at:?}");
    assert!(quick_at < late_at, "{quick_at:?} vs {late_at:?}");

    // Close: the connection ends and the call says the request may have reached the server.
    let closed = c.call(Frame::request(12), t);
    assert!(
        matches!(closed, Err(CallError::ConnectionLost { written: true })),
        "{closed:?}"
    );
    c.close();

    let c = client(&served.addr);
    let started = Instant::now();
    let closed = c.call(Frame::request(14), t);
    assert!(
        matches!(closed, Err(CallError::ConnectionLost { written: true })),
        "{closed:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    c.close();
}

#[test]
fn bad_scripts_exit_with_one_line() {
    let bad = TempFile::new(
        "bad.json",
        r#"{"rules": [{"code": 1, "action": "explode"}]}"#,
    );
    let out = remora(&["serve", "--listen", "127.0.0.1:0", "--script", bad.path()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("rule 1") && err.contains("action"), "{err}");

    let out = remora(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--script",
        "/nonexistent/x.json",
    ]);
    assert!(!out.status.success());

    let good = format!("{SAMPLES}/broker-script.json");
    let out = remora(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "uring",
        "--script",
        &good,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("std backend"));
}

#[test]
fn a_script_behind_acl_answers_only_signed_requests() {
    let acl = TempFile::new("acl.txt", "rocketmq2=12345678\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--acl",
            acl.path(),
            "--script",
        ])
        .arg(format!("{SAMPLES}/broker-script.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let served = Served {
        child,
        addr: line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_string(),
    };
    let unsigned = remora(&["call", &served.addr, "--code", "10"]);
    assert!(unsigned.status.success());
    let got: Value = serde_json::from_slice(&unsigned.stdout).unwrap();
    assert_eq!(got["code"], codes::NO_PERMISSION);

    let signed = remora(&[
        "call",
        &served.addr,
        "--code",
        "10",
        "--access-key",
        "rocketmq2",
        "--secret-key",
        "12345678",
    ]);
    assert!(signed.status.success());
    let got: Value = serde_json::from_slice(&signed.stdout).unwrap();
    assert_eq!(got["code"], 0);
    assert!(
        got["ext_fields"]["msgId"].is_string(),
        "the script answered: {got}"
    );
}

#[test]
fn a_script_server_refuses_connections_past_its_limit() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "1",
            "--script",
        ])
        .arg(format!("{SAMPLES}/broker-script.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let served = Served {
        child,
        addr: line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_string(),
    };
    let first = client(&served.addr);
    assert_eq!(
        first
            .call(Frame::request(34), Duration::from_secs(3))
            .unwrap()
            .code,
        codes::SUCCESS
    );
    let refused = remora(&["call", &served.addr, "--code", "34", "--timeout-ms", "2000"]);
    assert!(!refused.status.success(), "a second connection is refused");
    first.close();
    let start = Instant::now();
    loop {
        let out = remora(&["call", &served.addr, "--code", "34", "--timeout-ms", "2000"]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the place was never given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
