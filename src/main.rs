//! The `remora` command-line tool.
#![deny(missing_docs)]

mod acl_cli;
mod bench;
mod log;
mod observe;
mod pcap;
mod script;
mod summary;
mod tls_cli;
mod view;

use std::io::{self, IsTerminal, Read, Write};
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
        #[arg(long, conflicts_with_all = ["file", "pcap"])]
        hex: Option<String>,
        /// A tcpdump capture (pcap or pcapng): each TCP direction is reassembled and its frames
        /// printed in capture order, with `ts`, `src` and `dst`.
        #[arg(long, conflicts_with = "file")]
        pcap: Option<std::path::PathBuf>,
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
        /// Server address, e.g. 127.0.0.1:9876 (or give --namesrv and --topic).
        #[arg(required_unless_present = "namesrv", conflicts_with = "namesrv")]
        addr: Option<String>,
        /// Name servers, `HOST:PORT[;HOST:PORT...]`: ask them for --topic's route and send to the
        /// topic's master broker that accepts writes (printed on stderr). With --tls, the name
        /// servers are asked over TLS too, with the same trust and --tls-server-name.
        #[arg(long, requires = "topic")]
        namesrv: Option<String>,
        /// The topic whose broker to send to (with --namesrv).
        #[arg(long, requires = "namesrv")]
        topic: Option<String>,
        /// The broker name to send to (with --namesrv; default: the first that accepts writes).
        #[arg(long, requires = "namesrv")]
        broker: Option<String>,
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
        #[command(flatten)]
        acl: acl_cli::SignArgs,
        #[command(flatten)]
        tls: tls_cli::ClientArgs,
    },
    /// Run an echo server: every request is answered SUCCESS with its own body and ext fields.
    ///
    /// With --script FILE, answer from a script of rules instead (see the README): a stand-in
    /// name server or broker that answers, delays, drops or closes on demand.
    Serve {
        /// A script of rules, `{"rules": [...]}` (served by the std backend).
        #[arg(long)]
        script: Option<std::path::PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9876")]
        listen: String,
        /// Which driver serves.
        #[arg(long, value_enum, default_value_t = Backend::Std)]
        backend: Backend,
        /// Answer with this header serialization (default: the request's).
        #[arg(long, value_enum)]
        serialize: Option<Serialize>,
        /// Most connections open at once; more are refused with a line on stderr.
        #[arg(long, default_value_t = remora_core::BudgetConfig::default().max_connections)]
        max_connections: usize,
        /// std backend: where requests are handled (the uring and tokio servers answer on
        /// their event loops).
        #[arg(long, value_enum, default_value_t = ServeDispatch::Workers)]
        dispatch: ServeDispatch,
        /// Verify every request's ACL signature against this file of `ACCESS_KEY=SECRET_KEY`
        /// lines; others are answered NO_PERMISSION (16).
        #[arg(long, value_name = "FILE")]
        acl: Option<std::path::PathBuf>,
        /// rpc: the remoting echo server; raw: a plain byte echo (no protocol), the baseline
        /// `remora bench --mode raw --target` measures against.
        #[arg(long, value_enum, default_value_t = ServeMode::Rpc)]
        mode: ServeMode,
        /// Serve Prometheus metrics at http://ADDR/metrics (rpc mode), e.g. 127.0.0.1:9100.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        #[command(flatten)]
        tls: tls_cli::ServeArgs,
        /// Print nothing while serving (no `listening on`, no warnings, no script log): only
        /// the summary printed when SIGINT or SIGTERM stops the server (rpc mode and
        /// --script; `--mode raw` ignores it).
        #[arg(long, short)]
        quiet: bool,
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
        /// Seconds per run (default 5 when --requests is not given); a run ends at most a
        /// second later, reporting calls still in flight as unfinished.
        #[arg(long)]
        duration: Option<f64>,
        /// Each call's timeout, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
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
        /// std backend: keep the calls in flight with `Client::call_then` from one thread
        /// instead of a blocking thread per call in flight.
        #[arg(long)]
        std_then: bool,
        #[command(flatten)]
        acl: acl_cli::SignArgs,
        /// Serve Prometheus metrics at http://ADDR/metrics while it runs.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// No progress bar (it is drawn only when stderr is a terminal anyway).
        #[arg(long, short)]
        quiet: bool,
        /// Print every request span at this level or above (e.g. info) on stderr as it closes.
        #[arg(long, value_name = "LEVEL")]
        trace: Option<tracing::Level>,
        /// With --tls and no --target, the embedded server gets a fresh self-signed certificate
        /// the client trusts, and `--mode both` runs rpc over TLS, then plaintext, and prints
        /// their ratio.
        #[command(flatten)]
        tls: tls_cli::ClientArgs,
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
    /// tokio (epoll), a multi-threaded runtime.
    Tokio,
}

/// `remora serve --mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ServeMode {
    /// The remoting echo server.
    Rpc,
    /// A byte echo: every byte read is written back.
    Raw,
}

/// `remora serve --dispatch`: where the std server handles requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ServeDispatch {
    /// On the worker pool (handlers may block without holding up reading).
    Workers,
    /// On each connection's reader thread, between reads: a read's answers written together.
    Inline,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Decode {
            pcap: Some(path),
            max_frame_len,
            ..
        } => pcap::decode_file(&path, max_frame_len),
        Cmd::Decode {
            hex,
            file,
            pcap: None,
            max_frame_len,
        } => decode(hex, file, max_frame_len),
        Cmd::Encode { json } => encode(json),
        Cmd::Call {
            addr,
            namesrv,
            topic,
            broker,
            code,
            ext,
            remark,
            body,
            body_file,
            serialize,
            timeout_ms,
            oneway,
            acl,
            tls,
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
                acl_cli::sign(acl.signer()?.as_ref(), &mut request);
                let timeout = Duration::from_millis(timeout_ms);
                // With --namesrv, the name servers are asked over the same TLS as the broker.
                let tls = tls.client_tls()?;
                let addr = match (addr, namesrv, topic) {
                    (Some(addr), _, _) => addr,
                    (None, Some(namesrv), Some(topic)) => {
                        broker_for(&namesrv, &topic, broker.as_deref(), timeout, tls.clone())?
                    }
                    _ => return Err("give an address, or --namesrv and --topic".into()),
                };
                call(&addr, request, timeout, oneway, tls)
            })
        }
        Cmd::Serve {
            listen,
            backend,
            serialize,
            max_connections,
            acl,
            script: Some(path),
            tls,
            quiet,
            ..
        } => {
            if tls.tls_cert.is_some() {
                Err("--script serves plaintext only (no --tls-cert)".into())
            } else if backend == Backend::Uring {
                Err("--script is served by the std backend only: the server Handler answers every request, so it cannot drop one or close the connection".into())
            } else {
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))
                    .and_then(|text| {
                        script::Script::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
                    })
                    .and_then(|s| {
                        let gate = match &acl {
                            Some(_) => Some(acl_cli::guard(script::pass, acl.as_ref())?),
                            None => None,
                        };
                        let options = script::Options {
                            serialize: serialize.map(Into::into),
                            max_connections,
                            gate,
                            quiet,
                        };
                        script::serve(&listen, s, options)
                    })
            }
        }
        Cmd::Serve {
            mode: ServeMode::Raw,
            tls: tls_cli::ServeArgs {
                tls_cert: Some(_), ..
            },
            ..
        } => Err("--mode raw is a plaintext byte echo (no --tls-cert)".into()),
        Cmd::Serve {
            listen,
            backend,
            mode: ServeMode::Raw,
            max_connections,
            ..
        } => serve_raw(&listen, backend, max_connections),
        Cmd::Serve {
            listen,
            backend,
            serialize,
            max_connections,
            dispatch,
            acl,
            script: None,
            mode: ServeMode::Rpc,
            metrics,
            tls,
            quiet,
        } => tls.server_tls().and_then(|tls| {
            if dispatch == ServeDispatch::Inline && backend != Backend::Std {
                return Err("--dispatch applies to the std backend".into());
            }
            let mut config = ServerConfig::default();
            config.connection.serialize_type = serialize.map(Into::into);
            config.budget.max_connections = max_connections;
            if dispatch == ServeDispatch::Inline {
                config.dispatch = remora_std::Dispatch::Inline;
            }
            serve(
                &listen,
                backend,
                config,
                acl.as_ref(),
                metrics.as_deref(),
                quiet,
                tls,
            )
        }),
        Cmd::Bench {
            target,
            backend,
            mode,
            connections,
            inflight,
            payload,
            requests,
            duration,
            timeout_ms,
            serialize,
            json,
            client_threads,
            server_threads,
            std_then,
            acl,
            metrics,
            quiet,
            trace,
            tls,
        } => {
            if let Some(level) = trace {
                if let Err(e) = observe::trace(level) {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let _exporter = match metrics.as_deref().map(observe::serve_metrics).transpose() {
                Ok(served) => served.map(|(_, exporter)| {
                    if !quiet {
                        eprintln!("metrics on http://{}/metrics", exporter.local_addr());
                    }
                    exporter
                }),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let signer = match acl.signer() {
                Ok(signer) => signer,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let tls = match bench_tls(&tls, target) {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let plan = bench::Plan {
                backend: match backend {
                    Backend::Uring => bench::Backend::Uring,
                    Backend::Std => bench::Backend::Std,
                    Backend::Tokio => bench::Backend::Tokio,
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
                progress: !json && !quiet && io::stderr().is_terminal(),
                timeout: Duration::from_millis(timeout_ms.max(1)),
                signer,
                tls,
                std_then,
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

fn call(
    addr: &str,
    request: Command,
    timeout: Duration,
    oneway: bool,
    tls: Option<remora_tls::ClientTls>,
) -> Result<(), String> {
    let config = ClientConfig {
        mode: Mode::Short,
        connect_timeout: timeout,
        ..ClientConfig::default()
    };
    let client = match tls {
        Some(tls) => Client::connect_tls(addr, config, tls),
        None => Client::connect(addr, config),
    }
    .map_err(|e| format!("{addr}: {e}"))?;
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

/// Asks the name servers (over TLS with `tls`) for `topic`'s route and picks the master of
/// `broker` (or of the first broker that accepts writes); says what it chose on stderr.
fn broker_for(
    namesrv: &str,
    topic: &str,
    broker: Option<&str>,
    timeout: Duration,
    tls: Option<remora_tls::ClientTls>,
) -> Result<String, String> {
    use remora_core::route::TrackerConfig;
    use remora_std::namesrv::{FollowerConfig, RouteFollower};
    let config = FollowerConfig {
        tracker: TrackerConfig {
            ask_timeout: timeout,
            ..TrackerConfig::default()
        },
        tls,
    };
    let follower = RouteFollower::new(namesrv, topic, config);
    let route = follower.fetch()?;
    let chosen = route
        .choose_writable(broker)
        .map_err(|e| format!("topic {topic:?}: {e}"))?;
    let addr = chosen
        .master
        .clone()
        .ok_or("the chosen broker has no master")?;
    eprintln!(
        "topic {topic:?}: broker {} (cluster {:?}, perm {}, {} write queues), master {addr}",
        chosen.name, chosen.cluster, chosen.perm, chosen.write_queues
    );
    Ok(addr)
}

/// Answers SUCCESS with the request's body and ext fields.
fn echo(request: Command) -> Command {
    let mut response = request
        .response(codes::SUCCESS)
        .with_body(request.body_bytes());
    response.set_ext_fields(request.ext_fields().to_ext_fields());
    response
}

/// `remora serve` (rpc mode): serves until SIGINT or SIGTERM, then stops the server gracefully
/// (requests in flight are answered, up to the driver's drain timeout) and prints the summary.
fn serve(
    listen: &str,
    backend: Backend,
    config: ServerConfig,
    acl: Option<&std::path::PathBuf>,
    metrics: Option<&str>,
    quiet: bool,
    tls: Option<remora_tls::ServerTls>,
) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    let stop = summary::StopSignal::register()?;
    if !quiet {
        log::install();
    }
    let tally = Arc::new(summary::Tally::new());
    let handler = summary::Counted::new(acl_cli::guard(echo, acl)?, Arc::clone(&tally));
    // Says where it listens, then starts `--metrics` (with the server's own counts).
    let listening = |addr: SocketAddr, stats: Box<dyn Fn() -> remora_core::Snapshot + Send>| {
        if !quiet {
            println!("listening on {addr}");
        }
        let exporter = match metrics {
            Some(at) => {
                let (sink, exporter) = observe::serve_metrics(at)?;
                sink.add_server(stats);
                if !quiet {
                    println!("metrics on http://{}/metrics", exporter.local_addr());
                }
                Some(exporter)
            }
            None => None,
        };
        io::stdout().flush().map_err(|e| e.to_string())?;
        Ok::<_, String>(exporter)
    };
    let (signal, stats) = match backend {
        Backend::Std => {
            let server = Arc::new(
                match tls {
                    Some(tls) => Server::bind_tls(listen, handler, config, tls),
                    None => Server::bind_with(listen, handler, config),
                }
                .map_err(|e| format!("{listen}: {e}"))?,
            );
            let stats = Arc::clone(&server);
            let _exporter = listening(server.local_addr(), Box::new(move || stats.stats()))?;
            let signal = stop.wait();
            server.stop();
            (signal, server.stats())
        }
        Backend::Uring => {
            let config = remora_uring::ServerConfig {
                connection: config.connection,
                budget: config.budget,
                ..Default::default()
            };
            let handler = Arc::new(handler);
            let server = match tls {
                Some(tls) => remora_uring::Server::bind_tls(listen, handler, config, tls),
                None => remora_uring::Server::bind_with(listen, handler, config),
            }
            .map_err(|e| format!("{listen}: {e}"))?;
            let addr = server.local_addr();
            // `stop` takes the server by `&mut`; a scrape while it drains waits for it.
            let server = Arc::new(Mutex::new(server));
            let stats = Arc::clone(&server);
            let lock = |s: &Mutex<remora_uring::Server>| -> remora_core::Snapshot {
                s.lock().unwrap_or_else(|e| e.into_inner()).stats()
            };
            let _exporter = listening(addr, Box::new(move || lock(&stats)))?;
            let signal = stop.wait();
            let mut server = server.lock().unwrap_or_else(|e| e.into_inner());
            server.stop();
            (signal, server.stats())
        }
        Backend::Tokio => {
            let config = remora_tokio::ServerConfig {
                connection: config.connection,
                budget: config.budget,
                ..Default::default()
            };
            let rt = tokio_runtime()?;
            let server = Arc::new(
                rt.block_on(async {
                    match tls {
                        Some(tls) => {
                            remora_tokio::Server::bind_tls(listen, handler, config, tls).await
                        }
                        None => remora_tokio::Server::bind(listen, handler, config).await,
                    }
                })
                .map_err(|e| format!("{listen}: {e}"))?,
            );
            let stats = Arc::clone(&server);
            let _exporter = listening(server.local_addr(), Box::new(move || stats.stats()))?;
            let signal = stop.wait();
            rt.block_on(server.stop());
            (signal, server.stats())
        }
    };
    tally.print(signal, &stats)
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a tokio runtime: {e}"))
}

/// `remora serve --mode raw`: a byte echo server on the chosen driver.
fn serve_raw(listen: &str, backend: Backend, max_connections: usize) -> Result<(), String> {
    let print = |addr: std::net::SocketAddr| -> Result<(), String> {
        println!("listening on {addr} (raw byte echo)");
        io::stdout().flush().map_err(|e| e.to_string())
    };
    match backend {
        Backend::Tokio => {
            let rt = tokio_runtime()?;
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(listen))
                .map_err(|e| format!("{listen}: {e}"))?;
            print(listener.local_addr().map_err(|e| e.to_string())?)?;
            rt.block_on(bench::tokio_echo(listener));
            Ok(())
        }
        Backend::Uring => {
            // The protocol server's loops, threads and budget, echoing bytes.
            let mut config = remora_uring::ServerConfig::default();
            config.budget.max_connections = max_connections;
            let server = remora_uring::Server::bind_echo(listen, config)
                .map_err(|e| format!("{listen}: {e}"))?;
            print(server.local_addr())?;
            loop {
                std::thread::park();
            }
        }
        Backend::Std => {
            let listener =
                std::net::TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
            print(listener.local_addr().map_err(|e| e.to_string())?)?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            bench::raw_std_server(listener, stop);
            loop {
                std::thread::park();
            }
        }
    }
}

/// `bench --tls`: against `--target`, the flags' client; embedded, a fresh certificate.
fn bench_tls(
    args: &tls_cli::ClientArgs,
    target: Option<SocketAddr>,
) -> Result<Option<bench::Tls>, String> {
    if !args.tls {
        return Ok(None);
    }
    if target.is_some() {
        return Ok(args.client_tls()?.map(|client| bench::Tls {
            client,
            server: None,
        }));
    }
    if args.has_trust_flags() {
        return Err(
            "--tls-ca, --tls-server-name, --tls-cert and --tls-insecure apply to a \
                    --target server; the embedded server makes its own certificate"
                .into(),
        );
    }
    let (server, client) = tls_cli::ephemeral_pair()?;
    Ok(Some(bench::Tls {
        client,
        server: Some(server),
    }))
}

fn run_bench(plan: &bench::Plan, mode: BenchMode, json: bool) -> Result<(), String> {
    // With --tls: rpc over TLS, then (embedded server, --mode both) rpc in plaintext beside it.
    let plain = bench::Plan {
        tls: None,
        ..plan.clone()
    };
    let runs: Vec<(bench::Mode, &bench::Plan)> = match (mode, &plan.tls) {
        (BenchMode::Raw, Some(_)) => {
            return Err(
                "--tls measures the rpc mode (the raw mode is a plaintext byte echo)".into(),
            )
        }
        (BenchMode::Both, Some(tls)) if tls.server.is_some() => {
            vec![(bench::Mode::Rpc, plan), (bench::Mode::Rpc, &plain)]
        }
        (BenchMode::Rpc, _) | (BenchMode::Both, Some(_)) => vec![(bench::Mode::Rpc, plan)],
        (BenchMode::Raw, None) => vec![(bench::Mode::Raw, plan)],
        (BenchMode::Both, None) => vec![(bench::Mode::Rpc, plan), (bench::Mode::Raw, plan)],
    };
    let mut reports = Vec::new();
    for &(m, plan) in &runs {
        let report = bench::run(plan, m)?;
        if json {
            println!("{}", report.json(plan));
        } else {
            println!("{}", report.text(plan));
        }
        reports.push(report);
    }
    if let [first, second] = &reports[..] {
        if !json {
            let ratio = first.rps() / second.rps().max(1e-9);
            if first.tls {
                println!("tls / plaintext requests per second: {ratio:.2}");
            } else {
                println!("rpc / raw requests per second: {ratio:.2}");
            }
        }
    }
    if let Some(lost) = reports
        .iter()
        .find(|r| r.stop == bench::Stop::ConnectionsLost)
    {
        return Err(format!(
            "stopped early: connections lost and not re-established ({} requests done)",
            lost.requests
        ));
    }
    if let Some(none) = reports.iter().find(|r| r.requests == 0) {
        return Err(format!(
            "nothing succeeded ({} errors: {})",
            none.errors,
            none.error_kinds.text()
        ));
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
