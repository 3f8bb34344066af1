//! `remora bench`: a closed-loop load generator. C connections × N requests in flight each;
//! every response body is checked against its request; latency goes into an hdrhistogram.
//!
//! `--mode raw` sends the very same frame bytes over the same kind of sockets to a server that
//! echoes bytes, with no protocol processing on either side: the machine's ceiling, which the
//! `rpc` run is compared to in the same invocation (`--mode both`, the default).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use remora_core::{codes, Codec, Command, SerializeType};

/// Which driver moves the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring (tokio-uring), thread per core.
    Uring,
    /// Blocking std::net threads.
    Std,
}

/// What runs over the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Remora clients and servers: encode, decode, match, check.
    Rpc,
    /// Byte echo of the same frames: no protocol work anywhere.
    Raw,
}

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Driver.
    pub backend: Backend,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub inflight: usize,
    /// Body bytes per request (at least 8: a sequence number checked on the way back).
    pub payload: usize,
    /// Stop after this many requests…
    pub requests: Option<u64>,
    /// …or after this long.
    pub duration: Option<Duration>,
    /// Header serialization.
    pub serialize: SerializeType,
    /// External server; `None` starts one on loopback.
    pub target: Option<SocketAddr>,
    /// I/O threads for the load generator (uring) and the embedded server.
    pub client_threads: usize,
    /// Threads of the embedded server.
    pub server_threads: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// One run's figures.
#[derive(Debug)]
pub struct Report {
    /// Driver.
    pub backend: Backend,
    /// Mode.
    pub mode: Mode,
    /// Responses received and checked.
    pub requests: u64,
    /// Failed calls and mismatched responses.
    pub errors: u64,
    /// Wall time of the measured run.
    pub seconds: f64,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    /// The one-line JSON object `--json` prints.
    pub fn json(&self, plan: &Plan) -> String {
        let h = &self.latency;
        format!(
            "{{\"backend\":\"{}\",\"mode\":\"{}\",\"connections\":{},\"inflight\":{},\"payload\":{},\"requests\":{},\"errors\":{},\"seconds\":{:.3},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
            match self.backend { Backend::Uring => "uring", Backend::Std => "std" },
            match self.mode { Mode::Rpc => "rpc", Mode::Raw => "raw" },
            plan.connections,
            plan.inflight,
            plan.payload,
            self.requests,
            self.errors,
            self.seconds,
            self.rps(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        )
    }

    /// The human-readable summary.
    pub fn text(&self, plan: &Plan) -> String {
        let h = &self.latency;
        format!(
            "{:?}/{:?}: {} conn x {} in flight, {} B payload\n  requests {}  errors {}  seconds {:.2}  rps {:.0}\n  latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.backend,
            self.mode,
            plan.connections,
            plan.inflight,
            plan.payload,
            self.requests,
            self.errors,
            self.seconds,
            self.rps(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Shared between load threads and the progress display.
struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
    issued: AtomicU64,
    stop: AtomicBool,
    limit: Option<u64>,
}

impl Progress {
    /// Claims the right to issue one more request.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }
}

/// The request whose frame both modes send: code 310-like, ext-free, `payload` body bytes
/// starting with sequence number `seq`.
fn request(seq: u64, payload: usize, ty: SerializeType, buf: &mut BytesMut) -> Command {
    buf.reserve(payload);
    buf.put_u64(seq);
    buf.put_bytes(b'r', payload.saturating_sub(8));
    Command::request(codes::SEND_MESSAGE_V2)
        .with_body(buf.split().freeze())
        .with_serialize_type(ty)
}

fn body_matches(body: &[u8], seq: u64, payload: usize) -> bool {
    body.len() == payload.max(8) && body[..8] == seq.to_be_bytes()
}

/// Runs `mode` per `plan` and returns its figures.
pub fn run(plan: &Plan, mode: Mode) -> Result<Report, String> {
    let (server, addr) = match plan.target {
        Some(addr) => (None, addr),
        None => {
            let s = EmbeddedServer::start(plan, mode)?;
            let addr = s.addr;
            (Some(s), addr)
        }
    };
    let progress = Arc::new(Progress {
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        limit: plan.requests,
    });
    let (tx, rx) = mpsc::channel::<Result<Histogram<u64>, String>>();
    let threads = match plan.backend {
        Backend::Uring => plan.client_threads.max(1).min(plan.connections.max(1)),
        Backend::Std => plan.connections.max(1),
    };
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        // Connections t, t+threads, ... belong to thread t.
        let conns = (t..plan.connections).step_by(threads).count();
        let plan = plan.clone();
        let progress = Arc::clone(&progress);
        let tx = tx.clone();
        handles.push(std::thread::spawn(move || {
            let outcome = match (plan.backend, mode) {
                (Backend::Uring, Mode::Rpc) => uring_rpc(&plan, addr, conns, &progress),
                (Backend::Uring, Mode::Raw) => uring_raw(&plan, addr, conns, &progress),
                (Backend::Std, Mode::Rpc) => std_rpc(&plan, addr, &progress),
                (Backend::Std, Mode::Raw) => std_raw(&plan, addr, &progress),
            };
            let _ = tx.send(outcome);
        }));
    }
    drop(tx);
    show_progress(plan, &progress, started, &handles);
    let mut latency = histogram();
    for outcome in rx {
        latency.add(outcome?).map_err(|e| e.to_string())?;
    }
    for h in handles {
        let _ = h.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(server);
    Ok(Report {
        backend: plan.backend,
        mode,
        requests: progress.done.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
        seconds,
        latency,
    })
}

fn show_progress(
    plan: &Plan,
    progress: &Progress,
    started: Instant,
    handles: &[std::thread::JoinHandle<()>],
) {
    // Poll often (so a run's end is seen within ~10 ms), draw every 200 ms.
    let tick = Duration::from_millis(10);
    let mut ticks = 0u64;
    loop {
        std::thread::sleep(tick);
        ticks += 1;
        let elapsed = started.elapsed();
        if let Some(d) = plan.duration {
            if elapsed >= d {
                progress.stop.store(true, Ordering::Relaxed);
            }
        }
        let done = progress.done.load(Ordering::Relaxed);
        let fraction = match (plan.requests, plan.duration) {
            (Some(n), _) => done as f64 / n.max(1) as f64,
            (None, Some(d)) => elapsed.as_secs_f64() / d.as_secs_f64(),
            (None, None) => 0.0,
        }
        .min(1.0);
        if plan.progress && ticks % 20 == 0 {
            let width = 30;
            let filled = (fraction * width as f64) as usize;
            eprint!(
                "\r[{}{}] {:>3.0}% {} req {:.0} rps {} err ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                fraction * 100.0,
                done,
                done as f64 / elapsed.as_secs_f64(),
                progress.errors.load(Ordering::Relaxed)
            );
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
    }
    if plan.progress {
        eprintln!();
    }
}

/// The server `remora bench` starts when no `--target` is given.
struct EmbeddedServer {
    addr: SocketAddr,
    _uring: Option<remora_uring::Server>,
    _std: Option<remora_std::Server>,
    raw_stop: Option<Arc<AtomicBool>>,
}

impl EmbeddedServer {
    fn start(plan: &Plan, mode: Mode) -> Result<EmbeddedServer, String> {
        let echo = |request: Command| {
            let body = request.body_bytes();
            request.response(codes::SUCCESS).with_body(body)
        };
        let mut server = EmbeddedServer {
            addr: "127.0.0.1:0".parse().expect("literal address"),
            _uring: None,
            _std: None,
            raw_stop: None,
        };
        match (plan.backend, mode) {
            (Backend::Uring, Mode::Rpc) => {
                let config = remora_uring::ServerConfig {
                    threads: plan.server_threads.max(1),
                    ..Default::default()
                };
                let s = remora_uring::Server::bind_with("127.0.0.1:0", Arc::new(echo), config)
                    .map_err(|e| format!("starting the uring server: {e}"))?;
                server.addr = s.local_addr();
                server._uring = Some(s);
            }
            (Backend::Std, Mode::Rpc) => {
                let config = remora_std::ServerConfig {
                    workers: plan.server_threads.max(1),
                    ..Default::default()
                };
                let s = remora_std::Server::bind_with("127.0.0.1:0", echo, config)
                    .map_err(|e| format!("starting the std server: {e}"))?;
                server.addr = s.local_addr();
                server._std = Some(s);
            }
            (backend, Mode::Raw) => {
                let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                server.addr = listener.local_addr().map_err(|e| e.to_string())?;
                let stop = Arc::new(AtomicBool::new(false));
                server.raw_stop = Some(Arc::clone(&stop));
                let threads = plan.server_threads.max(1);
                match backend {
                    Backend::Uring => raw_uring_server(listener, threads, stop),
                    Backend::Std => raw_std_server(listener, stop),
                }
            }
        }
        Ok(server)
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(stop) = &self.raw_stop {
            stop.store(true, Ordering::Relaxed);
            // Wake the acceptors.
            for _ in 0..4 {
                let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
            }
        }
    }
}

/// A byte echo server on io_uring: `threads` threads share the listener's accepts.
fn raw_uring_server(listener: TcpListener, threads: usize, stop: Arc<AtomicBool>) {
    let listener = Arc::new(listener);
    for _ in 0..threads {
        let listener = Arc::clone(&listener);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            tokio_uring::start(async move {
                let fd = listener.try_clone().expect("clone listener");
                let listener = tokio_uring::net::TcpListener::from_std(fd);
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let _ = stream.set_nodelay(true);
                    tokio_uring::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let (r, b) = stream.read(buf).await;
                            let n = match r {
                                Ok(n) if n > 0 => n,
                                _ => return,
                            };
                            let (r, slice) = stream
                                .write_all(tokio_uring::buf::BoundedBuf::slice(b, ..n))
                                .await;
                            if r.is_err() {
                                return;
                            }
                            buf = slice.into_inner();
                        }
                    });
                }
            });
        });
    }
}

/// A byte echo server on std threads, one per connection.
fn raw_std_server(listener: TcpListener, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(n) if n > 0 => n,
                        _ => return,
                    };
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn uring_rpc(
    plan: &Plan,
    addr: SocketAddr,
    conns: usize,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let plan = plan.clone();
    let progress = Arc::clone(progress);
    tokio_uring::start(async move {
        let hist = Rc::new(std::cell::RefCell::new(histogram()));
        let mut tasks = Vec::new();
        for c in 0..conns {
            let config = remora_uring::ClientConfig {
                connection: remora_core::Config {
                    max_waiters: plan.inflight.max(1) * 2,
                    ..Default::default()
                },
                ..Default::default()
            };
            let client = remora_uring::LocalClient::connect(addr, config)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            for w in 0..plan.inflight.max(1) {
                let client = client.clone();
                let plan = plan.clone();
                let progress = Arc::clone(&progress);
                let hist = Rc::clone(&hist);
                tasks.push(tokio_uring::spawn(async move {
                    let mut buf = BytesMut::new();
                    let mut seq = ((c as u64) << 48) | ((w as u64) << 32);
                    while progress.claim() {
                        seq += 1;
                        let req = request(seq, plan.payload, plan.serialize, &mut buf);
                        let t0 = Instant::now();
                        match client.call(req, Duration::from_secs(10)).await {
                            Ok(resp) if body_matches(resp.body(), seq, plan.payload) => {
                                let _ = hist.borrow_mut().record(t0.elapsed().as_micros() as u64);
                                progress.done.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                progress.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            let _ = client;
        }
        for t in tasks {
            let _ = t.await;
        }
        let h = hist.borrow().clone();
        Ok(h)
    })
}

/// The frame the raw mode sends: exactly what the rpc mode would encode.
fn raw_frame(plan: &Plan) -> Vec<u8> {
    let mut body = BytesMut::new();
    let mut frame = BytesMut::new();
    Codec::default()
        .encode(
            &request(1, plan.payload, plan.serialize, &mut body),
            &mut frame,
        )
        .expect("a bench request encodes");
    frame.to_vec()
}

fn uring_raw(
    plan: &Plan,
    addr: SocketAddr,
    conns: usize,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let frame = Rc::new(raw_frame(plan));
    let inflight = plan.inflight.max(1);
    let progress = Arc::clone(progress);
    tokio_uring::start(async move {
        let hist = Rc::new(std::cell::RefCell::new(histogram()));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let stream = tokio_uring::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let frame = Rc::clone(&frame);
            let progress = Arc::clone(&progress);
            let hist = Rc::clone(&hist);
            tasks.push(tokio_uring::spawn(async move {
                let len = frame.len();
                let mut sent = std::collections::VecDeque::with_capacity(inflight);
                let mut out = Vec::with_capacity(len * inflight);
                let mut acc: Vec<u8> = Vec::with_capacity(len * inflight * 2);
                let mut buf = vec![0u8; 64 * 1024];
                let mut outstanding = 0;
                loop {
                    // Top up to `inflight` frames in flight, in one write.
                    out.clear();
                    while outstanding < inflight && progress.claim() {
                        out.extend_from_slice(&frame);
                        sent.push_back(Instant::now());
                        outstanding += 1;
                    }
                    if !out.is_empty() {
                        let (r, o) = stream.write_all(out).await;
                        out = o;
                        if r.is_err() {
                            progress
                                .errors
                                .fetch_add(outstanding as u64, Ordering::Relaxed);
                            return;
                        }
                    }
                    if outstanding == 0 {
                        return;
                    }
                    let (r, b) = stream.read(buf).await;
                    buf = b;
                    let n = match r {
                        Ok(n) if n > 0 => n,
                        _ => {
                            progress
                                .errors
                                .fetch_add(outstanding as u64, Ordering::Relaxed);
                            return;
                        }
                    };
                    outstanding -= echoed_frames(
                        &mut acc,
                        &buf[..n],
                        &frame,
                        &mut sent,
                        &mut hist.borrow_mut(),
                        &progress,
                    );
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let h = hist.borrow().clone();
        Ok(h)
    })
}

/// Raw mode's accounting: appends `read` to `acc`, and for every whole frame now in it checks it
/// against `frame` (a mismatch is an error) and records the latency since its send. Returns how
/// many frames came back.
fn echoed_frames(
    acc: &mut Vec<u8>,
    read: &[u8],
    frame: &[u8],
    sent: &mut std::collections::VecDeque<Instant>,
    hist: &mut Histogram<u64>,
    progress: &Progress,
) -> usize {
    acc.extend_from_slice(read);
    let len = frame.len();
    let whole = acc.len() / len;
    for echoed in acc.chunks_exact(len).take(whole) {
        let t0 = sent.pop_front().expect("a frame was sent");
        if echoed == frame {
            let _ = hist.record(t0.elapsed().as_micros() as u64);
            progress.done.fetch_add(1, Ordering::Relaxed);
        } else {
            progress.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    acc.drain(..whole * len);
    whole
}

fn std_rpc(
    plan: &Plan,
    addr: SocketAddr,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let config = remora_std::ClientConfig {
        connection: remora_core::Config {
            max_waiters: plan.inflight.max(1) * 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let client = remora_std::Client::connect(addr, config)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let callers: Vec<_> = (0..plan.inflight.max(1))
        .map(|w| {
            let client = client.clone();
            let plan = plan.clone();
            let progress = Arc::clone(progress);
            std::thread::spawn(move || {
                let mut hist = histogram();
                let mut buf = BytesMut::new();
                let mut seq = (w as u64) << 32;
                while progress.claim() {
                    seq += 1;
                    let req = request(seq, plan.payload, plan.serialize, &mut buf);
                    let t0 = Instant::now();
                    match client.call(req, Duration::from_secs(10)) {
                        Ok(resp) if body_matches(resp.body(), seq, plan.payload) => {
                            let _ = hist.record(t0.elapsed().as_micros() as u64);
                            progress.done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist
            })
        })
        .collect();
    let mut hist = histogram();
    for c in callers {
        let h = c
            .join()
            .map_err(|_| "a caller thread panicked".to_string())?;
        hist.add(h).map_err(|e| e.to_string())?;
    }
    client.close();
    Ok(hist)
}

fn std_raw(
    plan: &Plan,
    addr: SocketAddr,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let frame = raw_frame(plan);
    let len = frame.len();
    let inflight = plan.inflight.max(1);
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut hist = histogram();
    let mut sent = std::collections::VecDeque::with_capacity(inflight);
    let mut out = Vec::with_capacity(len * inflight);
    let mut acc = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut outstanding = 0;
    loop {
        out.clear();
        while outstanding < inflight && progress.claim() {
            out.extend_from_slice(&frame);
            sent.push_back(Instant::now());
            outstanding += 1;
        }
        if !out.is_empty() && stream.write_all(&out).is_err() {
            progress
                .errors
                .fetch_add(outstanding as u64, Ordering::Relaxed);
            break;
        }
        if outstanding == 0 {
            break;
        }
        let n = match stream.read(&mut buf) {
            Ok(n) if n > 0 => n,
            _ => {
                progress
                    .errors
                    .fetch_add(outstanding as u64, Ordering::Relaxed);
                break;
            }
        };
        outstanding -= echoed_frames(&mut acc, &buf[..n], &frame, &mut sent, &mut hist, progress);
    }
    Ok(hist)
}
