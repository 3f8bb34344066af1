//! The `remora` binary's ACL flags: `call`/`bench --access-key/--secret-key` against
//! `serve --acl FILE`.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `remora` with `args`; `secret_env` sets `REMORA_SECRET_KEY` (otherwise it is removed,
/// so the caller's environment cannot leak in).
fn remora(args: &[&str], secret_env: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_remora"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match secret_env {
        Some(secret) => command.env("REMORA_SECRET_KEY", secret),
        None => command.env_remove("REMORA_SECRET_KEY"),
    };
    command.output().expect("run remora")
}

/// `remora serve --acl FILE` on an ephemeral port; killed (and the file removed) when dropped.
struct Served {
    child: std::process::Child,
    addr: String,
    file: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn serve_acl(name: &str, accounts: &str, backend: &str) -> Served {
    use std::io::BufRead;
    let file = std::env::temp_dir().join(format!("remora-acl-{}-{name}.txt", std::process::id()));
    std::fs::write(&file, accounts).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--acl",
        ])
        .arg(&file)
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
    Served { child, addr, file }
}

fn response(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const ACCOUNTS: &str = "# test accounts\nrocketmq2=12345678\nops = s3cr=t\n";
/// RocketMQ's `ResponseCode.NO_PERMISSION`.
const NO_PERMISSION: i64 = 16;

#[test]
fn signed_calls_pass_serve_acl_and_unsigned_or_wrong_ones_get_no_permission() {
    for backend in ["std", "uring"] {
        let served = serve_acl(backend, ACCOUNTS, backend);
        let call = |extra: &[&str], env: Option<&str>| {
            let mut args = vec!["call", &served.addr, "--code", "105", "--body", "hi"];
            args.extend_from_slice(extra);
            response(&remora(&args, env))
        };

        // Signed with the secret from the command line.
        let ok = call(
            &["--access-key", "rocketmq2", "--secret-key", "12345678"],
            None,
        );
        assert_eq!(ok["code"], 0, "{backend}: {ok}");
        assert_eq!(ok["body_hex"], "6869");
        assert_eq!(ok["ext_fields"]["AccessKey"], "rocketmq2");
        assert!(ok["ext_fields"]["Signature"].is_string());

        // Signed with the secret from the environment, with a security token, and a secret
        // containing '='.
        let ok = call(
            &["--access-key", "ops", "--security-token", "tok"],
            Some("s3cr=t"),
        );
        assert_eq!(ok["code"], 0, "{backend}: {ok}");
        assert_eq!(ok["ext_fields"]["SecurityToken"], "tok");

        // Unsigned.
        let denied = call(&[], None);
        assert_eq!(denied["code"], NO_PERMISSION, "{backend}: {denied}");
        assert_eq!(
            denied["remark"],
            "ACL check failed: no AccessKey in the request"
        );
        // The wrong secret.
        let denied = call(&["--access-key", "rocketmq2", "--secret-key", "nope"], None);
        assert_eq!(denied["code"], NO_PERMISSION);
        assert_eq!(
            denied["remark"],
            "ACL check failed: the request's Signature does not match"
        );
        // An access key the file does not have.
        let denied = call(&["--access-key", "stranger", "--secret-key", "x"], None);
        assert_eq!(denied["code"], NO_PERMISSION);
        assert_eq!(
            denied["remark"],
            "ACL check failed: no ACL config for the request's AccessKey"
        );
    }
}

#[test]
fn access_key_without_a_secret_is_refused_before_connecting() {
    // No server: the flag check comes first (nothing listens on port 1).
    let out = remora(
        &["call", "127.0.0.1:1", "--code", "1", "--access-key", "ak"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("REMORA_SECRET_KEY"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn serve_refuses_a_malformed_acl_file() {
    let file = std::env::temp_dir().join(format!("remora-acl-{}-bad.txt", std::process::id()));
    std::fs::write(&file, "rocketmq2=12345678\njust-a-key\n").unwrap();
    let out = remora(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--acl",
            file.to_str().unwrap(),
        ],
        None,
    );
    std::fs::remove_file(&file).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn bench_signs_every_request() {
    let served = serve_acl("bench", ACCOUNTS, "std");
    let bench = |secret: &str| {
        remora(
            &[
                "bench",
                "--target",
                &served.addr,
                "--mode",
                "rpc",
                "--backend",
                "std",
                "--requests",
                "300",
                "--inflight",
                "4",
                "--json",
                "--access-key",
                "rocketmq2",
            ],
            Some(secret),
        )
    };
    let ok = bench("12345678");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let line: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(
        (line["requests"].as_u64(), line["errors"].as_u64()),
        (Some(300), Some(0))
    );

    // The wrong secret: every response is NO_PERMISSION, counted as an error.
    let denied = bench("wrong");
    assert!(!denied.status.success());
    let line: Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(
        (line["requests"].as_u64(), line["errors"].as_u64()),
        (Some(0), Some(300))
    );
}
