//! A load harness against [`rocketmq-transport`](https://crates.io/crates/rocketmq-transport)
//! 1.0.0, the Rust reference implementation's bounded TCP transport, for comparing it with
//! `remora bench` in the same run (`tools/transport_cmp.sh`, issue 9).
//!
//! ```text
//! transport_echo server [--listen 127.0.0.1:0] [--threads T] [--for SECS]
//! transport_echo client --target ADDR [--inflight N] [--duration SECS] [--payload BYTES]
//!                       [--serialize json|rocketmq] [--threads T] [--json]
//! transport_echo pair   [client options]     # both in this process, the server on its own runtime
//! ```
//!
//! * `server`: a `TransportServer` whose `RequestProcessor` answers every request SUCCESS with
//!   the request's body, in the request's header serialization. It prints `listening on ADDR`
//!   and serves until killed, or for `--for` seconds.
//! * `client`: one `TransportClient` (one connection to the target), `--inflight` tasks each
//!   calling in a closed loop for `--duration` seconds. Requests are code 310 with no extension
//!   fields and a `--payload`-byte body starting with a per-task sequence number, as
//!   `remora bench` sends them; every response must be SUCCESS with the request's body. It
//!   prints requests/s, latency p50/p99 and the process's CPU time per request (`getrusage`:
//!   user + system, so with `pair` the server's share is included).
//! * `pair`: `server` on loopback and `client` against it, in one process (the shape of
//!   `remora bench` with its embedded server).
//!
//! `--threads` is the worker count of each tokio runtime (default 1: `remora bench` drives its
//! load and its embedded server with one thread each, except its std backend, which uses a
//! thread per caller).
//!
//! Build: `cargo build --release -p remora-benches --features transport --bin transport_echo`
//! (needs Rust >= 1.95, a C compiler, and the crates.io index).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use cheetah_string::CheetahString;
use rocketmq_protocol::protocol::remoting_command::RemotingCommand;
use rocketmq_protocol::protocol::SerializeType;
use rocketmq_runtime::RuntimeContext;
use rocketmq_transport::api::{
    DefaultRequestProcessor, OutboundRequestOutcome, RemotingRequest, RemotingResponse,
    RequestDeadline, RequestProcessor, ResponseAction, ServerConfig, TransportClient,
    TransportClientConfig, TransportServer,
};

/// SEND_MESSAGE_V2, the code `remora bench` sends.
const REQUEST_CODE: i32 = 310;
/// ResponseCode::Success.
const SUCCESS: i32 = 0;
/// Each call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers every request SUCCESS with its own body, in the request's serialization.
#[derive(Clone)]
struct Echo;

impl RequestProcessor for Echo {
    async fn process(
        &mut self,
        request: &mut RemotingRequest,
    ) -> Result<ResponseAction, rocketmq_error::SharedError> {
        let serialize = request.command().serialize_type();
        let body = request.command_mut().take_body().unwrap_or_default();
        let head = RemotingCommand::create_response_command_with_code(SUCCESS)
            .set_serialize_type(serialize);
        let response = RemotingResponse::bytes(head, body).map_err(|e| {
            eprintln!("transport_echo: response not made: {e:?}");
            Arc::new(
                rocketmq_error::Error::new(&rocketmq_error::CORE_ARGUMENT_INVALID).with_context(
                    rocketmq_error::ErrorContext::new()
                        .with_secret_presence(rocketmq_error::fields::MESSAGE_PRESENT),
                ),
            )
        })?;
        Ok(ResponseAction::Reply(response))
    }
}

#[derive(Clone, Debug)]
struct Opts {
    listen: String,
    target: Option<SocketAddr>,
    inflight: usize,
    duration: f64,
    payload: usize,
    serialize: SerializeType,
    threads: usize,
    serve_for: Option<f64>,
    json: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: transport_echo server [--listen ADDR] [--threads T] [--for SECS]\n       \
         transport_echo client --target ADDR [--inflight N] [--duration SECS] [--payload BYTES] \
         [--serialize json|rocketmq] [--threads T] [--json]\n       \
         transport_echo pair [client options]"
    );
    std::process::exit(2)
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        listen: "127.0.0.1:0".into(),
        target: None,
        inflight: 1,
        duration: 5.0,
        payload: 64,
        serialize: SerializeType::JSON,
        threads: 1,
        serve_for: None,
        json: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen" => o.listen = value(),
            "--target" => o.target = Some(value().parse().unwrap_or_else(|_| usage())),
            "--inflight" => o.inflight = value().parse().unwrap_or_else(|_| usage()),
            "--duration" => o.duration = value().parse().unwrap_or_else(|_| usage()),
            "--payload" => o.payload = value().parse().unwrap_or_else(|_| usage()),
            "--threads" => o.threads = value().parse().unwrap_or_else(|_| usage()),
            "--for" => o.serve_for = Some(value().parse().unwrap_or_else(|_| usage())),
            "--serialize" => {
                o.serialize = match value().as_str() {
                    "json" => SerializeType::JSON,
                    "rocketmq" => SerializeType::ROCKETMQ,
                    _ => usage(),
                }
            }
            "--json" => o.json = true,
            _ => usage(),
        }
    }
    o.inflight = o.inflight.max(1);
    o.payload = o.payload.max(8);
    o.threads = o.threads.max(1);
    o
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Starts the echo server on `rt`; returns its address once it listens.
fn start_server(rt: &tokio::runtime::Runtime, listen: &str) -> SocketAddr {
    let (host, port) = listen.rsplit_once(':').unwrap_or_else(|| usage());
    let config = Arc::new(ServerConfig {
        listen_port: port.parse().unwrap_or_else(|_| usage()),
        bind_address: host.to_string(),
        ..ServerConfig::default()
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    rt.spawn(async move {
        let context = RuntimeContext::from_current("transport-echo-server");
        let server = TransportServer::new(config, context.service_context("echo-server"), Echo);
        let outcome = server
            .try_run_with_shutdown_report_and_startup(std::future::pending::<()>(), ready_tx)
            .await;
        if let Err(e) = outcome {
            eprintln!("transport_echo: server failed: {e}");
            std::process::exit(1);
        }
    });
    match rt.block_on(ready_rx) {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            eprintln!("transport_echo: server did not start: {e}");
            std::process::exit(1)
        }
        Err(_) => {
            eprintln!("transport_echo: server did not start");
            std::process::exit(1)
        }
    }
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value we pass; RUSAGE_SELF is a
    // valid `who`. A failure leaves it zeroed (reported as 0 CPU, never as garbage).
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    wrong: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

/// The closed-loop load: `inflight` tasks over one client connection for `duration`.
fn run_client(rt: &tokio::runtime::Runtime, target: SocketAddr, o: &Opts) {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (client, context) = rt.block_on(async {
        let context = RuntimeContext::from_current("transport-echo-client");
        let config = Arc::new(TransportClientConfig::default());
        let client = TransportClient::builder(
            config,
            DefaultRequestProcessor,
            context.service_context("echo-client"),
        )
        .build()
        .unwrap_or_else(|e| {
            eprintln!("transport_echo: client: {e}");
            std::process::exit(1)
        });
        let client = Arc::new(client);
        if let Err(e) = client.start().await {
            eprintln!("transport_echo: client start: {e}");
            std::process::exit(1)
        }
        (client, context)
    });
    let target_name = CheetahString::from_string(target.to_string());
    // Warm-up: one call opens the connection (not timed).
    let warm = rt.block_on(client.invoke_request_with_deadline(
        Some(&target_name),
        request(0, o),
        RequestDeadline::after(CALL_TIMEOUT),
    ));
    if !matches!(warm, Ok(OutboundRequestOutcome::Response(ref r)) if r.code() == SUCCESS) {
        eprintln!("transport_echo: first call to {target} failed: {warm:?}");
        std::process::exit(1);
    }
    let cpu_before = cpu_time();
    let started = Instant::now();
    let tasks: Vec<_> = (0..o.inflight)
        .map(|t| {
            let (client, counts, stop, target_name, o) = (
                Arc::clone(&client),
                Arc::clone(&counts),
                Arc::clone(&stop),
                target_name.clone(),
                o.clone(),
            );
            rt.spawn(async move {
                let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut seq = (t as u64) << 40;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let req = request(seq, &o);
                    let expected = req.body().cloned();
                    let sent = Instant::now();
                    let outcome = client
                        .invoke_request_with_deadline(
                            Some(&target_name),
                            req,
                            RequestDeadline::after(CALL_TIMEOUT),
                        )
                        .await;
                    let took = sent.elapsed();
                    match outcome {
                        Ok(OutboundRequestOutcome::Response(r))
                            if r.code() == SUCCESS && r.body() == expected.as_ref() =>
                        {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                            latencies.push(took.as_micros().min(u32::MAX as u128) as u32);
                        }
                        Ok(OutboundRequestOutcome::Response(_)) => {
                            counts.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            counts.rejected.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(_) => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.duration));
    stop.store(true, Ordering::Relaxed);
    // Requests completed by the stop; those still in flight finish (bounded by their timeout)
    // but are not counted in the rate.
    let seconds = started.elapsed().as_secs_f64();
    let ok_at_stop = counts.ok.load(Ordering::Relaxed);
    let cpu = cpu_time().saturating_sub(cpu_before);
    let mut latencies: Vec<u32> = rt.block_on(async {
        let mut all = Vec::new();
        for task in tasks {
            if let Ok(l) = task.await {
                all.extend(l);
            }
        }
        all
    });
    latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let rps = ok_at_stop as f64 / seconds;
    let cpu_us = if ok_at_stop > 0 {
        cpu.as_secs_f64() * 1e6 / ok_at_stop as f64
    } else {
        0.0
    };
    let wrong = counts.wrong.load(Ordering::Relaxed);
    let rejected = counts.rejected.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    if o.json {
        println!(
            "{{\"impl\":\"rocketmq-transport\",\"inflight\":{},\"payload\":{},\"serialize\":\"{}\",\
             \"requests\":{},\"seconds\":{:.3},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{},\
             \"cpu_us_per_req\":{:.2},\"wrong\":{},\"rejected\":{},\"failed\":{}}}",
            o.inflight,
            o.payload,
            o.serialize,
            ok_at_stop,
            seconds,
            rps,
            pct(0.50),
            pct(0.99),
            cpu_us,
            wrong,
            rejected,
            failed
        );
    } else {
        println!(
            "rocketmq-transport 1 conn x {} in flight, {} B, {}: {} requests in {:.2} s = {:.0} req/s; \
             latency us p50 {} p99 {}; CPU {:.2} us/req; wrong {} rejected {} failed {}",
            o.inflight,
            o.payload,
            o.serialize,
            ok_at_stop,
            seconds,
            rps,
            pct(0.50),
            pct(0.99),
            cpu_us,
            wrong,
            rejected,
            failed
        );
    }
    rt.block_on(async {
        client.shutdown_with_report(Duration::from_secs(2)).await;
        context.shutdown_tasks(Duration::from_secs(2)).await;
    });
}

/// Code 310, no extension fields, a `payload`-byte body starting with `seq`.
fn request(seq: u64, o: &Opts) -> RemotingCommand {
    let mut body = BytesMut::with_capacity(o.payload);
    body.put_u64(seq);
    body.put_bytes(b'r', o.payload - 8);
    let body: Bytes = body.freeze();
    RemotingCommand::create_remoting_command(REQUEST_CODE)
        .set_serialize_type(o.serialize)
        .set_body(body)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        usage()
    };
    let o = parse(rest);
    match mode.as_str() {
        "server" => {
            let rt = runtime(o.threads);
            let addr = start_server(&rt, &o.listen);
            println!("listening on {addr}");
            match o.serve_for {
                Some(secs) => std::thread::sleep(Duration::from_secs_f64(secs)),
                None => loop {
                    std::thread::park();
                },
            }
            // Bounded end: the runtime's tasks are dropped with it.
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        "client" => {
            let Some(target) = o.target else { usage() };
            let rt = runtime(o.threads);
            run_client(&rt, target, &o);
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        "pair" => {
            let server_rt = runtime(o.threads);
            let addr = start_server(&server_rt, &o.listen);
            let rt = runtime(o.threads);
            run_client(&rt, addr, &o);
            rt.shutdown_timeout(Duration::from_secs(1));
            server_rt.shutdown_timeout(Duration::from_secs(1));
        }
        _ => usage(),
    }
}
