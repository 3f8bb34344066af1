//! The `remora` binary's TLS flags: `serve --tls-cert/--tls-key [--tls-mode] [--tls-client-ca]`
//! against `call --tls [--tls-ca] [--tls-server-name] [--tls-cert/--tls-key] [--tls-insecure]`,
//! and `bench --tls`. Certificates are made by the test (rcgen) in a temporary directory.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

fn remora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run remora")
}

/// PEM files in a directory of their own, removed when dropped: a CA, a server certificate for
/// `broker.test` (not for 127.0.0.1: the name must come from --tls-server-name), a client
/// certificate, and a rogue CA.
struct Files {
    dir: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("remora-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("remora test CA");
        let (rogue_cert, _) = ca("rogue CA");
        let leaf = |names: &[&str], file: &str| {
            let params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        };
        leaf(&["broker.test"], "server");
        leaf(&["client.test"], "client");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("rogue.pem"), rogue_cert.pem()).unwrap();
        Files { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }
}

/// `remora serve` with `args` on an ephemeral port; killed when dropped. `stderr()` kills it
/// and returns what it logged.
struct Served {
    child: std::process::Child,
    addr: String,
}

impl Served {
    fn start(args: &[String]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
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
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Served { child, addr }
    }

    fn stderr(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut text);
        text
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_serve_args(files: &Files, backend: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--backend".into(),
        backend.into(),
        "--tls-cert".into(),
        files.path("server.pem"),
        "--tls-key".into(),
        files.path("server.key"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `remora call ADDR --code 105 --body hi` with `extra` flags.
fn call(addr: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "call",
        addr,
        "--code",
        "105",
        "--body",
        "hi",
        "--timeout-ms",
        "3000",
    ];
    args.extend_from_slice(extra);
    remora(&args)
}

fn assert_echoed(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["code"], 0, "{what}");
    assert_eq!(response["body_hex"], "6869", "{what}");
}

fn assert_failed(out: &Output, needle: &str, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{what}: succeeded");
    assert!(stderr.contains(needle), "{what}: {stderr}");
    stderr
}

#[test]
fn an_enforcing_server_answers_tls_calls_and_refuses_plaintext_with_a_log_line() {
    let files = Files::new("enforcing");
    let ca = files.path("ca.pem");
    for backend in ["std", "tokio", "uring"] {
        let served = Served::start(&tls_serve_args(&files, backend, &[]));
        let tls = ["--tls", "--tls-ca", &ca, "--tls-server-name", "broker.test"];
        assert_echoed(&call(&served.addr, &tls), backend);
        // Plaintext against the TLS-only port: refused, and the server says why.
        let plain = call(&served.addr, &[]);
        assert!(!plain.status.success(), "{backend}: plaintext was answered");
        // The name is checked: the certificate is for broker.test, not 127.0.0.1.
        assert_failed(
            &call(&served.addr, &["--tls", "--tls-ca", &ca]),
            "another name",
            backend,
        );
        // A CA that did not issue the server's certificate.
        let rogue = files.path("rogue.pem");
        let untrusted = [
            "--tls",
            "--tls-ca",
            &rogue,
            "--tls-server-name",
            "broker.test",
        ];
        assert_failed(&call(&served.addr, &untrusted), "not trusted", backend);
        // Loudly insecure, and then it works.
        let insecure = call(&served.addr, &["--tls", "--tls-insecure"]);
        assert_echoed(&insecure, backend);
        assert!(String::from_utf8_lossy(&insecure.stderr).contains("NOT verified"));
        let log = served.stderr();
        assert!(
            log.contains("refused a plaintext connection on a TLS-only port"),
            "{backend}: {log}"
        );
    }
}

#[test]
fn a_permissive_server_answers_plaintext_and_tls_on_one_port() {
    let files = Files::new("permissive");
    let ca = files.path("ca.pem");
    let served = Served::start(&tls_serve_args(
        &files,
        "std",
        &["--tls-mode", "permissive"],
    ));
    assert_echoed(&call(&served.addr, &[]), "plaintext");
    let tls = ["--tls", "--tls-ca", &ca, "--tls-server-name", "broker.test"];
    assert_echoed(&call(&served.addr, &tls), "tls");
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let files = Files::new("mtls");
    let (ca, cert, key) = (
        files.path("ca.pem"),
        files.path("client.pem"),
        files.path("client.key"),
    );
    let served = Served::start(&tls_serve_args(&files, "std", &["--tls-client-ca", &ca]));
    let base = ["--tls", "--tls-ca", &ca, "--tls-server-name", "broker.test"];
    let mut with_cert = base.to_vec();
    with_cert.extend_from_slice(&["--tls-cert", &cert, "--tls-key", &key]);
    assert_echoed(&call(&served.addr, &with_cert), "with a client certificate");
    let stderr = assert_failed(&call(&served.addr, &base), "TLS", "without one");
    assert!(
        stderr.contains("never written") || stderr.contains("refused"),
        "{stderr}"
    );
}

#[test]
fn bad_tls_flags_are_errors_before_connecting() {
    let missing = remora(&[
        "call",
        "127.0.0.1:1",
        "--code",
        "105",
        "--tls",
        "--tls-ca",
        "/nonexistent/ca.pem",
    ]);
    assert_failed(&missing, "--tls-ca", "missing CA file");
    let serve = remora(&[
        "serve",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert_failed(&serve, "--tls-cert", "missing certificate");
    let lone = remora(&["serve", "--tls-cert", "x.pem"]);
    assert!(!lone.status.success(), "--tls-cert without --tls-key");
}

#[test]
fn bench_tls_runs_beside_plaintext_and_reports_both() {
    let out = remora(&[
        "bench",
        "--tls",
        "--backend",
        "std",
        "--requests",
        "200",
        "--connections",
        "1",
        "--inflight",
        "4",
        "--json",
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "a TLS run and a plaintext run");
    assert_eq!(lines[0]["tls"], true);
    assert_eq!(lines[1]["tls"], false);
    for line in &lines {
        assert_eq!(line["errors"], 0);
        assert_eq!(line["requests"], 200);
    }
    let raw = remora(&["bench", "--tls", "--mode", "raw", "--requests", "10", "-q"]);
    assert!(!raw.status.success(), "raw mode has no TLS");
}

/// A TLS name server in the test (remora_std, with the files' broker.test certificate)
/// answering topic T's route with `broker` as the writable master.
fn tls_name_server(files: &Files, broker: &str) -> remora_std::Server {
    use remora_core::{codes, Command as Frame};
    let tls = remora_tls::ServerTls::builder()
        .certificate_files(files.path("server.pem"), files.path("server.key"))
        .unwrap()
        .build()
        .unwrap();
    let body = format!(
        r#"{{"brokerDatas":[{{"brokerAddrs":{{0:"{broker}"}},"brokerName":"broker-a","cluster":"C"}}],"queueDatas":[{{"brokerName":"broker-a","perm":6,"readQueueNums":4,"writeQueueNums":4}}]}}"#
    );
    let answer = move |req: Frame| match req.ext("topic") {
        Some("T") if req.code == codes::GET_ROUTEINFO_BY_TOPIC => {
            req.response(codes::SUCCESS).with_body(body.clone())
        }
        _ => req.response(codes::TOPIC_NOT_EXIST),
    };
    let config = remora_std::ServerConfig {
        drain_timeout: std::time::Duration::ZERO,
        ..Default::default()
    };
    remora_std::Server::bind_tls("127.0.0.1:0", answer, config, tls).unwrap()
}

#[test]
fn call_namesrv_asks_the_name_servers_over_tls_too() {
    let files = Files::new("namesrv");
    let ca = files.path("ca.pem");
    let broker = Served::start(&tls_serve_args(&files, "std", &[]));
    let ns = tls_name_server(&files, &broker.addr);
    let namesrv = ns.local_addr().to_string();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "call",
            "--namesrv",
            &namesrv,
            "--topic",
            "T",
            "--code",
            "105",
            "--body",
            "hi",
            "--timeout-ms",
            "3000",
        ];
        args.extend_from_slice(extra);
        remora(&args)
    };
    let tls = ["--tls", "--tls-ca", &ca, "--tls-server-name", "broker.test"];
    let out = args(&tls);
    assert_echoed(&out, "call --namesrv --tls");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&broker.addr), "{stderr}");
    // Plaintext: the TLS-only name server does not answer.
    assert_failed(&args(&[]), "no name server answered", "plaintext");
    // An untrusted CA: the name server's handshake fails, and the error says so.
    let rogue = files.path("rogue.pem");
    let untrusted = [
        "--tls",
        "--tls-ca",
        &rogue,
        "--tls-server-name",
        "broker.test",
    ];
    assert_failed(&args(&untrusted), "not trusted", "untrusted CA");
}
