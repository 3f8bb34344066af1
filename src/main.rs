//! The `remora` command-line tool.

mod bench;
mod view;

use std::io::{self, Read, Write};
use std::process::ExitCode;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use remora_core::{codes, Codec, Command, Decoded, Limits, SerializeType};
use remora_std::{Client, ClientConfig, Mode, Server, ServerConfig};

/// Speak the Apache RocketMQ remoting protocol.
#[derive(Parser)]
#[command(name = "remora", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Decode a stream of frames; print one JSON object per frame.
    ///
    /// Input: `--hex`, `--file`, or raw bytes on stdin. Exits non-zero with a one-line reason if a
    /// frame is corrupt or the stream ends inside a frame.
    Decode {
        /// The frames as hex (whitespace ignored).
        #[arg(long, conflicts_with = "file")]
        hex: Option<String>,
        /// A file of raw frames.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Largest frame accepted, length prefix included.
        #[arg(long, default_value_t = remora_core::DEFAULT_MAX_FRAME_LEN)]
        max_frame_len: u32,
    },
    /// Send one request to a server and print its response (the JSON shape `decode` prints).
    ///
    /// Exits 0 when a response arrived, whatever its code; non-zero with a one-line error on a
    /// timeout, a refused connection or a protocol error.
    Call {
        /// Server address, e.g. 127.0.0.1:9876.
        addr: String,
        /// Request code, e.g. 105 (GET_ROUTEINFO_BY_TOPIC).
        #[arg(long)]
        code: i32,
        /// An extension field, `key=value`; repeatable.
        #[arg(long = "ext", value_name = "KEY=VALUE")]
        ext: Vec<String>,
        /// Remark.
        #[arg(long)]
        remark: Option<String>,
        /// Body, as text.
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// Body, from a file.
        #[arg(long)]
        body_file: Option<std::path::PathBuf>,
        /// Header serialization.
        #[arg(long, value_enum, default_value_t = Serialize::Json)]
        serialize: Serialize,
        /// How long to wait for the response.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Send a oneway request (no response is awaited; exits 0 once it is written).
        #[arg(long)]
        oneway: bool,
    },
    /// Run an echo server: every request is answered SUCCESS with its own body and ext fields.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9876")]
        listen: String,
        /// Which driver serves.
        #[arg(long, value_enum, default_value_t = Backend::Std)]
        backend: Backend,
        /// Answer with this header serialization (default: the request's).
        #[arg(long, value_enum)]
        serialize: Option<Serialize>,
    },
    /// Load-test a server: C connections x N requests in flight, every response checked.
    ///
    /// With no --target, starts a server on loopback. --mode both (the default) runs the real
    /// protocol (rpc) and then a byte echo of the same frames (raw, the machine's ceiling), and
    /// prints their ratio.
    Bench {
        /// External server to drive (rpc: a remoting echo server such as `remora serve`; raw: a
        /// byte echo server).
        #[arg(long)]
        target: Option<SocketAddr>,
        /// Which driver moves the bytes.
        #[arg(long, value_enum, default_value_t = Backend::Uring)]
        backend: Backend,
        /// What runs over the sockets.
        #[arg(long, value_enum, default_value_t = BenchMode::Both)]
        mode: BenchMode,
        /// Connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 128)]
        inflight: usize,
        /// Body bytes per request (at least 8).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Requests per run.
        #[arg(long, conflicts_with = "duration")]
        requests: Option<u64>,
        /// Seconds per run (default 5 when --requests is not given).
        #[arg(long)]
        duration: Option<f64>,
        /// Header serialization.
        #[arg(long, value_enum, default_value_t = Serialize::Json)]
        serialize: Serialize,
        /// Print one JSON line per run instead of text.
        #[arg(long)]
        json: bool,
        /// Load-generator I/O threads (uring).
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
        /// Embedded server threads.
        #[arg(long, default_value_t = 1)]
        server_threads: usize,
    },
    /// Encode commands given as JSON objects (the shape `decode` prints); print one hex frame each.
    ///
    /// Input: `--json`, or one or more objects on stdin. Only `code` is required.
    Encode {
        /// The command as a JSON object.
        #[arg(long)]
        json: Option<String>,
    },
}

/// Header serialization, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Serialize {
    /// JSON header.
    Json,
    /// ROCKETMQ binary header.
    Rocketmq,
}

impl From<Serialize> for SerializeType {
    fn from(s: Serialize) -> SerializeType {
        match s {
            Serialize::Json => SerializeType::Json,
            Serialize::Rocketmq => SerializeType::RocketMq,
        }
    }
}

/// `remora bench --mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchMode {
    /// The remoting protocol through Remora's client and server.
    Rpc,
    /// A byte echo of the same frames: no protocol processing.
    Raw,
    /// rpc, then raw, and their ratio.
    Both,
}

/// Which driver moves the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// Blocking std::net threads.
    Std,
    /// io_uring, thread per core.
    Uring,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Decode {
            hex,
            file,
            max_frame_len,
        } => decode(hex, file, max_frame_len),
        Cmd::Encode { json } => encode(json),
        Cmd::Call {
            addr,
            code,
            ext,
            remark,
            body,
            body_file,
            serialize,
            timeout_ms,
            oneway,
        } => {
            let body = match (body, body_file) {
                (Some(text), _) => Ok(text.into_bytes()),
                (None, Some(path)) => {
                    std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))
                }
                (None, None) => Ok(vec![]),
            };
            body.and_then(|body| {
                let mut request = Command::request(code)
                    .with_body(body)
                    .with_serialize_type(serialize.into());
                if let Some(remark) = remark {
                    request = request.with_remark(remark);
                }
                for pair in &ext {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("--ext {pair:?}: expected KEY=VALUE"))?;
                    request = request.with_ext(k, v);
                }
                call(&addr, request, Duration::from_millis(timeout_ms), oneway)
            })
        }
        Cmd::Serve {
            listen,
            backend,
            serialize,
        } => serve(&listen, backend, serialize.map(Into::into)),
        Cmd::Bench {
            target,
            backend,
            mode,
            connections,
            inflight,
            payload,
            requests,
            duration,
            serialize,
            json,
            client_threads,
            server_threads,
        } => {
            let plan = bench::Plan {
                backend: match backend {
                    Backend::Uring => bench::Backend::Uring,
                    Backend::Std => bench::Backend::Std,
                },
                connections: connections.max(1),
                inflight: inflight.max(1),
                payload: payload.max(8),
                requests,
                duration: match (requests, duration) {
                    (Some(_), _) => None,
                    (None, d) => Some(Duration::from_secs_f64(d.unwrap_or(5.0).max(0.1))),
                },
                serialize: serialize.into(),
                target,
                client_threads,
                server_threads,
                progress: !json,
            };
            run_bench(&plan, mode, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn decode(
    hex: Option<String>,
    file: Option<std::path::PathBuf>,
    max_frame_len: u32,
) -> Result<(), String> {
    let input = match (hex, file) {
        (Some(hex), _) => view::unhex(&hex).map_err(|e| format!("--hex: {e}"))?,
        (None, Some(path)) => {
            std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?
        }
        (None, None) => {
            let mut buf = vec![];
            io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading stdin: {e}"))?;
            buf
        }
    };
    let codec = Codec::new(Limits {
        max_frame_len,
        ..Limits::default()
    });
    let mut buf = BytesMut::from(&input[..]);
    let mut out = io::stdout().lock();
    let mut frames = 0usize;
    loop {
        match codec.decode(&mut buf) {
            Ok(Decoded::Command(cmd)) => {
                frames += 1;
                writeln!(out, "{}", view::to_json(&cmd)).map_err(|e| e.to_string())?;
            }
            Ok(Decoded::Incomplete { .. }) if buf.is_empty() && frames > 0 => return Ok(()),
            Ok(Decoded::Incomplete { .. }) if buf.is_empty() => return Err("no input".into()),
            Ok(Decoded::Incomplete { needed }) => {
                return Err(format!(
                    "frame {} truncated: {} bytes present, at least {needed} more needed",
                    frames + 1,
                    buf.len()
                ))
            }
            Err(e) => return Err(format!("frame {}: {e}", frames + 1)),
        }
    }
}

fn call(addr: &str, request: Command, timeout: Duration, oneway: bool) -> Result<(), String> {
    let config = ClientConfig {
        mode: Mode::Short,
        connect_timeout: timeout,
        ..ClientConfig::default()
    };
    let client = Client::connect(addr, config).map_err(|e| format!("{addr}: {e}"))?;
    let outcome = if oneway {
        client.oneway(request).map(|()| None)
    } else {
        client.call(request, timeout).map(Some)
    };
    client.close();
    if let Some(response) = outcome.map_err(|e| format!("{addr}: {e}"))? {
        println!("{}", view::to_json(&response));
    }
    Ok(())
}

/// Answers SUCCESS with the request's body and ext fields.
fn echo(request: Command) -> Command {
    let mut response = request
        .response(codes::SUCCESS)
        .with_body(request.body_bytes());
    response.set_ext_fields(request.ext_fields().to_ext_fields());
    response
}

fn serve(listen: &str, backend: Backend, serialize: Option<SerializeType>) -> Result<(), String> {
    let mut config = ServerConfig::default();
    config.connection.serialize_type = serialize;
    match backend {
        Backend::Std => {
            let server =
                Server::bind_with(listen, echo, config).map_err(|e| format!("{listen}: {e}"))?;
            println!("listening on {}", server.local_addr());
            io::stdout().flush().map_err(|e| e.to_string())?;
            loop {
                std::thread::park();
            }
        }
        Backend::Uring => {
            let config = remora_uring::ServerConfig {
                connection: config.connection,
                ..Default::default()
            };
            let server = remora_uring::Server::bind_with(listen, std::sync::Arc::new(echo), config)
                .map_err(|e| format!("{listen}: {e}"))?;
            println!("listening on {}", server.local_addr());
            io::stdout().flush().map_err(|e| e.to_string())?;
            loop {
                std::thread::park();
            }
        }
    }
}

fn run_bench(plan: &bench::Plan, mode: BenchMode, json: bool) -> Result<(), String> {
    let modes: &[bench::Mode] = match mode {
        BenchMode::Rpc => &[bench::Mode::Rpc],
        BenchMode::Raw => &[bench::Mode::Raw],
        BenchMode::Both => &[bench::Mode::Rpc, bench::Mode::Raw],
    };
    let mut reports = Vec::new();
    for &m in modes {
        let report = bench::run(plan, m)?;
        if json {
            println!("{}", report.json(plan));
        } else {
            println!("{}", report.text(plan));
        }
        reports.push(report);
    }
    if let [rpc, raw] = &reports[..] {
        if !json {
            println!(
                "rpc / raw requests per second: {:.2}",
                rpc.rps() / raw.rps().max(1e-9)
            );
        }
    }
    if reports.iter().any(|r| r.errors > 0) {
        return Err(format!(
            "{} requests failed or came back wrong",
            reports.iter().map(|r| r.errors).sum::<u64>()
        ));
    }
    Ok(())
}

fn encode(json: Option<String>) -> Result<(), String> {
    let text = match json {
        Some(text) => text,
        None => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("reading stdin: {e}"))?;
            text
        }
    };
    let codec = Codec::default();
    let mut out = io::stdout().lock();
    let mut count = 0;
    for value in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        count += 1;
        let value = value.map_err(|e| format!("object {count}: invalid JSON: {e}"))?;
        let cmd = view::from_json(&value).map_err(|e| format!("object {count}: {e}"))?;
        let mut frame = BytesMut::new();
        codec
            .encode(&cmd, &mut frame)
            .map_err(|e| format!("object {count}: {e}"))?;
        writeln!(out, "{}", view::hex(&frame)).map_err(|e| e.to_string())?;
    }
    if count == 0 {
        return Err("no JSON object given".into());
    }
    Ok(())
}
