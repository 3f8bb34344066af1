//! `remora bench`: a closed-loop load generator. C connections × N requests in flight each;
//! every response body is checked against its request; latency goes into an hdrhistogram.
//!
//! `--mode raw` sends the very same frame bytes over the same kind of sockets to a server that
//! echoes bytes, with no protocol processing on either side: the machine's ceiling, which the
//! `rpc` run is compared to in the same invocation (`--mode both`, the default).
//!
//! A run lasts its `--duration` plus at most a second: calls still in flight then are reported
//! as unfinished, not waited for (each call's timeout is cut to fit). It stops early when its
//! connections are lost and no call succeeds for a second (the server is gone), and every
//! failure is counted by kind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use remora_core::{codes, CallError, Codec, Command, SerializeType};

/// Which driver moves the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring, one event loop per thread (`remora_uring::EventLoop`).
    Uring,
    /// Blocking std::net threads.
    Std,
    /// tokio (epoll).
    Tokio,
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
    /// Draw a progress bar on stderr (`indicatif`; the summary is printed either way).
    pub progress: bool,
    /// Each call's timeout (cut short at the end of a timed run).
    pub timeout: Duration,
    /// Sign every request (ACL), as a client with credentials does.
    pub signer: Option<remora_core::acl::Signer>,
    /// Connect over TLS (rpc mode).
    pub tls: Option<Tls>,
    /// std rpc: keep the calls in flight with `Client::call_then` from one thread (each
    /// continuation starts the next call) instead of a blocking thread per call.
    pub std_then: bool,
}

/// `bench --tls`: the client's configuration, and the embedded server's (none with `--target`).
#[derive(Clone, Debug)]
pub struct Tls {
    /// What the load generator's connections use.
    pub client: remora_tls::ClientTls,
    /// What the embedded server serves with.
    pub server: Option<remora_tls::ServerTls>,
}

impl Plan {
    /// How the load generator's connections to `addr` are secured.
    fn secure(&self, addr: SocketAddr) -> Result<remora_tls::Secure, String> {
        match &self.tls {
            Some(tls) => remora_tls::Secure::client(tls.client.clone(), &addr.to_string(), CONNECT)
                .map_err(|e| format!("TLS to {addr}: {e}")),
            None => Ok(remora_tls::Secure::plain()),
        }
    }
}

/// Connect timeout of the load generator's connections (it bounds their TLS handshakes too).
const CONNECT: Duration = Duration::from_secs(3);

/// How long a run may outlast its `--duration` (calls still in flight are then unfinished).
const GRACE: Duration = Duration::from_secs(1);

/// A run whose connections fail and where nothing succeeds for this long stops early.
const GIVE_UP_AFTER: Duration = Duration::from_secs(1);

/// Failed calls by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Errors {
    /// No response before the call's timeout.
    pub timeout: u64,
    /// The connection ended (closed, reset, protocol violation) before the response.
    pub lost: u64,
    /// No connection could be made (refused, or the reconnect backoff not yet due).
    pub refused: u64,
    /// A response whose body is not the request's.
    pub wrong_body: u64,
    /// A response with a code other than SUCCESS.
    pub error_code: u64,
    /// Anything else (too many in flight, backpressure, encoding).
    pub other: u64,
}

impl Errors {
    fn json(&self) -> String {
        format!(
            "{{\"timeout\":{},\"lost\":{},\"refused\":{},\"wrong_body\":{},\"error_code\":{},\"other\":{}}}",
            self.timeout, self.lost, self.refused, self.wrong_body, self.error_code, self.other
        )
    }

    /// One line: each kind and its count.
    pub fn text(&self) -> String {
        format!(
            "timeout {}  lost {}  refused {}  wrong body {}  error code {}  other {}",
            self.timeout, self.lost, self.refused, self.wrong_body, self.error_code, self.other
        )
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `--duration` passed.
    Duration,
    /// `--requests` were made.
    Requests,
    /// The connections were lost and none could be re-established for [`GIVE_UP_AFTER`].
    ConnectionsLost,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Duration => "duration",
            Stop::Requests => "requests",
            Stop::ConnectionsLost => "connections-lost",
        }
    }
}

/// One run's figures.
#[derive(Debug)]
pub struct Report {
    /// Driver.
    pub backend: Backend,
    /// Mode.
    pub mode: Mode,
    /// Whether it ran over TLS.
    pub tls: bool,
    /// Responses received and checked.
    pub requests: u64,
    /// Failed calls and mismatched responses.
    pub errors: u64,
    /// The same, by kind.
    pub error_kinds: Errors,
    /// Calls still in flight when the run ended (not waited for).
    pub unfinished: u64,
    /// Why the run ended.
    pub stop: Stop,
    /// Wall time of the measured window: from the moment every connection was made to the
    /// stop (connecting 10,000 connections takes a while and is not load).
    pub seconds: f64,
    /// Responses received and checked within the window (what [`rps`](Self::rps) counts).
    pub window_requests: u64,
    /// Time spent connecting before the window opened.
    pub connect_seconds: f64,
    /// CPU time (user + system) of this whole process (load generator and embedded server)
    /// within the window, from `/proc/self/stat` (10 ms ticks); `None` where that is not
    /// readable.
    pub cpu_seconds: Option<f64>,
    /// The window's start and end, seconds since the Unix epoch.
    pub window_unix: (f64, f64),
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// The uring load generator's loops, added up (`None` on other backends): turns,
    /// completions, receives, receives that found no provided buffer, sends.
    pub loop_counts: Option<remora_uring::LoopCounts>,
}

impl Report {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.window_requests as f64 / self.seconds.max(1e-9)
    }

    /// CPU time of the process per request within the window, in microseconds.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        self.cpu_seconds
            .map(|cpu| cpu * 1e6 / self.window_requests.max(1) as f64)
    }

    /// The one-line JSON object `--json` prints.
    pub fn json(&self, plan: &Plan) -> String {
        let h = &self.latency;
        format!(
            "{{\"backend\":\"{}\",\"mode\":\"{}\",\"connections\":{},\"inflight\":{},\"payload\":{},\"requests\":{},\"errors\":{},\"seconds\":{:.3},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"error_kinds\":{},\"unfinished\":{},\"stop\":\"{}\",\"tls\":{}{}{}}}",
            match self.backend { Backend::Uring => "uring", Backend::Std => "std", Backend::Tokio => "tokio" },
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
            self.error_kinds.json(),
            self.unfinished,
            self.stop.name(),
            self.tls,
            format_args!(
                ",\"connect_s\":{:.3},\"window_requests\":{},\"window_unix\":[{:.3},{:.3}]{}",
                self.connect_seconds,
                self.window_requests,
                self.window_unix.0,
                self.window_unix.1,
                match self.cpu_us_per_request() {
                    Some(us) => format!(",\"process_cpu_us_per_req\":{us:.2}"),
                    None => String::new(),
                }
            ),
            match self.loop_counts {
                Some(c) => format!(
                    ",\"loop\":{{\"turns\":{},\"completions\":{},\"receives\":{},\"receives_without_buffer\":{},\"sends\":{}}}",
                    c.turns, c.completions, c.receives, c.receives_without_buffer, c.sends
                ),
                None => String::new(),
            },
        )
    }

    /// The human-readable summary.
    pub fn text(&self, plan: &Plan) -> String {
        let h = &self.latency;
        format!(
            "{:?}/{:?}{}: {} conn x {} in flight, {} B payload\n  requests {}  errors {}  unfinished {}  seconds {:.2}  rps {:.0}\n  errors: {}\n  stopped: {}\n  latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.backend,
            self.mode,
            if self.tls { "+tls" } else { "" },
            plan.connections,
            plan.inflight,
            plan.payload,
            self.requests,
            self.errors,
            self.unfinished,
            self.seconds,
            self.rps(),
            self.error_kinds.text(),
            match self.stop {
                Stop::Duration => "the duration passed".to_string(),
                Stop::Requests => "every request was made".to_string(),
                Stop::ConnectionsLost => format!(
                    "connections lost and not re-established within {} s",
                    GIVE_UP_AFTER.as_secs()
                ),
            },
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
    /// Calls begun (done + errors + unfinished).
    started: AtomicU64,
    timeout: AtomicU64,
    lost: AtomicU64,
    refused: AtomicU64,
    wrong_body: AtomicU64,
    error_code: AtomicU64,
    other: AtomicU64,
    stop: AtomicBool,
    limit: Option<u64>,
    /// When a timed run ends: no call may wait past it plus the grace. Set when the measured
    /// window opens (every load thread connected); unset while connecting.
    ends_at: std::sync::OnceLock<Instant>,
    /// Load threads done connecting.
    connected: std::sync::atomic::AtomicUsize,
    /// Load threads in the run.
    threads: usize,
    /// The measured window's start: when, and the responses and process CPU time then.
    opened: std::sync::OnceLock<(Instant, u64, Option<f64>, f64)>,
    /// The run's duration (the window's length).
    duration: Option<Duration>,
    /// Each call's timeout.
    call_timeout: Duration,
    /// The uring load threads' loop counts, added as each thread ends.
    loop_counts: std::sync::Mutex<Option<remora_uring::LoopCounts>>,
}

/// What became of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Timeout,
    Lost,
    Refused { retry_in: Option<Duration> },
    WrongBody,
    ErrorCode,
    Other,
}

impl Outcome {
    fn of(result: &Result<Command, CallError>, seq: u64, payload: usize) -> Outcome {
        match result {
            Ok(resp) if resp.code != codes::SUCCESS => Outcome::ErrorCode,
            Ok(resp) if body_matches(resp.body(), seq, payload) => Outcome::Ok,
            Ok(_) => Outcome::WrongBody,
            Err(CallError::Timeout { .. }) => Outcome::Timeout,
            Err(
                CallError::ConnectionLost { .. }
                | CallError::Protocol { .. }
                | CallError::Closed { .. },
            ) => Outcome::Lost,
            Err(CallError::Connect(_)) => Outcome::Refused { retry_in: None },
            Err(CallError::Unavailable { retry_in }) => Outcome::Refused {
                retry_in: Some(*retry_in),
            },
            Err(_) => Outcome::Other,
        }
    }

    /// How long a caller should pause before its next call: a failed connection is not
    /// hammered (the client reconnects with its own backoff).
    fn pause(self) -> Option<Duration> {
        match self {
            Outcome::Lost | Outcome::Refused { retry_in: None } => Some(Duration::from_millis(10)),
            Outcome::Refused { retry_in: Some(d) } => {
                Some(d.clamp(Duration::from_millis(1), Duration::from_millis(50)))
            }
            _ => None,
        }
    }
}

impl Progress {
    fn new(plan: &Plan, threads: usize) -> Progress {
        Progress {
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            started: AtomicU64::new(0),
            timeout: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            wrong_body: AtomicU64::new(0),
            error_code: AtomicU64::new(0),
            other: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            limit: plan.requests,
            ends_at: std::sync::OnceLock::new(),
            connected: std::sync::atomic::AtomicUsize::new(0),
            threads,
            opened: std::sync::OnceLock::new(),
            duration: plan.duration,
            call_timeout: plan.timeout,
            loop_counts: std::sync::Mutex::new(None),
        }
    }

    /// Claims the right to issue one more request.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed)
            || self.ends_at.get().is_some_and(|&t| Instant::now() >= t)
        {
            return false;
        }
        let claimed = match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        };
        if claimed {
            self.started.fetch_add(1, Ordering::Relaxed);
        }
        claimed
    }

    /// The timeout for a call starting now: the plan's, cut to end within the grace.
    fn timeout(&self) -> Duration {
        match self.ends_at.get() {
            Some(&end) => {
                let left = (end + GRACE).saturating_duration_since(Instant::now());
                self.call_timeout
                    .min(left.saturating_sub(Duration::from_millis(50)))
                    .max(Duration::from_millis(1))
            }
            None => self.call_timeout,
        }
    }

    /// Counts a call's outcome; returns how long to pause before the next one.
    fn record(&self, outcome: Outcome) -> Option<Duration> {
        let counter = match outcome {
            Outcome::Ok => {
                self.done.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Outcome::Timeout => &self.timeout,
            Outcome::Lost => &self.lost,
            Outcome::Refused { .. } => &self.refused,
            Outcome::WrongBody => &self.wrong_body,
            Outcome::ErrorCode => &self.error_code,
            Outcome::Other => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        outcome.pause()
    }

    /// A load thread has made its connections: the measured window opens once all have.
    fn connected(&self) {
        if self.connected.fetch_add(1, Ordering::AcqRel) + 1 >= self.threads {
            self.open_window();
        }
    }

    /// Opens the measured window (once): the duration runs from now.
    fn open_window(&self) -> (Instant, u64, Option<f64>, f64) {
        *self.opened.get_or_init(|| {
            let now = Instant::now();
            if let Some(d) = self.duration {
                let _ = self.ends_at.set(now + d);
            }
            (
                now,
                self.done.load(Ordering::Relaxed),
                process_cpu(),
                unix_now(),
            )
        })
    }

    /// A uring load thread's loop is done: its counts join the run's.
    fn add_loop_counts(&self, c: remora_uring::LoopCounts) {
        let mut total = self.loop_counts.lock().unwrap_or_else(|e| e.into_inner());
        let t = total.get_or_insert_with(Default::default);
        t.turns += c.turns;
        t.completions += c.completions;
        t.receives += c.receives;
        t.receives_without_buffer += c.receives_without_buffer;
        t.sends += c.sends;
    }

    /// Raw mode: `n` frames failed with their connection.
    fn lost_frames(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
        self.errors.fetch_add(n, Ordering::Relaxed);
    }

    fn errors(&self) -> Errors {
        Errors {
            timeout: self.timeout.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            wrong_body: self.wrong_body.load(Ordering::Relaxed),
            error_code: self.error_code.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

/// The request whose frame both modes send: code 310-like, ext-free, `payload` body bytes
/// starting with sequence number `seq`.
fn request(seq: u64, plan: &Plan, buf: &mut BytesMut) -> Command {
    buf.reserve(plan.payload);
    buf.put_u64(seq);
    buf.put_bytes(b'r', plan.payload.saturating_sub(8));
    let mut request = Command::request(codes::SEND_MESSAGE_V2)
        .with_body(buf.split().freeze())
        .with_serialize_type(plan.serialize);
    if let Some(signer) = &plan.signer {
        signer.sign(&mut request);
    }
    request
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
    let started = Instant::now();
    let threads = match plan.backend {
        Backend::Uring | Backend::Tokio => plan.client_threads.max(1).min(plan.connections.max(1)),
        Backend::Std => plan.connections.max(1),
    };
    let progress = Arc::new(Progress::new(plan, threads));
    let (tx, rx) = mpsc::channel::<Result<Histogram<u64>, String>>();
    let mut handles = Vec::new();
    for t in 0..threads {
        // Connections t, t+threads, ... belong to thread t.
        let conns = (t..plan.connections).step_by(threads).count();
        let plan = plan.clone();
        let progress = Arc::clone(&progress);
        let tx = tx.clone();
        handles.push(std::thread::spawn(move || {
            let outcome = match (plan.backend, mode) {
                (Backend::Uring, _) => {
                    // The loop (and its connections) is closed after the figures are handed
                    // over: closing 10,000 connections must not push them past the grace.
                    let run = if mode == Mode::Rpc {
                        uring_rpc
                    } else {
                        uring_raw
                    };
                    let mut event_loop = None;
                    let outcome = run(&plan, addr, conns, &progress, &mut event_loop);
                    let _ = tx.send(outcome);
                    drop(event_loop);
                    return;
                }
                (Backend::Std, Mode::Rpc) if plan.std_then => std_rpc_then(&plan, addr, &progress),
                (Backend::Std, Mode::Rpc) => std_rpc(&plan, addr, &progress),
                (Backend::Std, Mode::Raw) => std_raw(&plan, addr, &progress),
                (Backend::Tokio, Mode::Rpc) => tokio_rpc(&plan, addr, conns, &progress),
                (Backend::Tokio, Mode::Raw) => tokio_raw(&plan, addr, conns, &progress),
            };
            let _ = tx.send(outcome);
        }));
    }
    drop(tx);
    let (stop, stopped_at, window) = show_progress(plan, &progress, started, &handles);
    // Collect what the load threads measured; those still busy a grace after the stop are
    // left behind (their calls are reported unfinished).
    let give_up = stopped_at + GRACE;
    let mut latency = histogram();
    let mut pending = handles.len();
    while pending > 0 {
        let left = give_up.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(outcome) => {
                pending -= 1;
                latency.add(outcome?).map_err(|e| e.to_string())?;
            }
            Err(_) => break,
        }
    }
    for h in handles {
        if h.is_finished() {
            let _ = h.join();
        }
    }
    drop(server);
    let requests = progress.done.load(Ordering::Relaxed);
    let errors = progress.errors.load(Ordering::Relaxed);
    let started_calls = progress.started.load(Ordering::Relaxed);
    let loop_counts = *progress
        .loop_counts
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Ok(Report {
        backend: plan.backend,
        mode,
        tls: plan.tls.is_some() && mode == Mode::Rpc,
        requests,
        errors,
        error_kinds: progress.errors(),
        unfinished: started_calls.saturating_sub(requests + errors),
        stop,
        seconds: window.seconds,
        window_requests: window.requests,
        connect_seconds: window.connect_seconds,
        cpu_seconds: window.cpu_seconds,
        window_unix: window.unix,
        latency,
        loop_counts,
    })
}

/// Draws progress until the run should end; says why it ended and when it was told to stop.
fn show_progress(
    plan: &Plan,
    progress: &Progress,
    started: Instant,
    handles: &[std::thread::JoinHandle<()>],
) -> (Stop, Instant, Window) {
    // Poll often (so a run's end is seen within ~10 ms), draw every 200 ms.
    let tick = Duration::from_millis(10);
    let mut ticks = 0u64;
    let mut stop: Option<(Stop, Instant)> = None;
    // Progress as of the last success: when connections keep failing and nothing succeeds
    // for GIVE_UP_AFTER, the server is gone.
    let mut last_done = 0;
    let mut last_success = started;
    let mut conn_failures_then = 0;
    // The measured window's end: the responses and CPU time then.
    let mut closed: Option<(u64, Option<f64>, f64)> = None;
    // Drawn only when asked (the caller asks only when stderr is a terminal).
    let bar = plan.progress.then(|| {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:30}] {percent:>3}% {msg}")
                .expect("valid progress template")
                .progress_chars("#>-"),
        );
        bar
    });
    loop {
        std::thread::sleep(tick);
        ticks += 1;
        let elapsed = started.elapsed();
        let done = progress.done.load(Ordering::Relaxed);
        let conn_failures =
            progress.lost.load(Ordering::Relaxed) + progress.refused.load(Ordering::Relaxed);
        if done != last_done {
            last_done = done;
            last_success = Instant::now();
            conn_failures_then = conn_failures;
        }
        if progress.opened.get().is_none() {
            // Threads that ended without connecting (an error) do not hold the window up.
            let finished = handles.iter().filter(|h| h.is_finished()).count();
            if progress.connected.load(Ordering::Acquire) + finished >= handles.len() {
                progress.open_window();
            }
        }
        if stop.is_none() {
            if progress.ends_at.get().is_some_and(|&t| Instant::now() >= t) {
                stop = Some((Stop::Duration, Instant::now()));
            } else if conn_failures > conn_failures_then && last_success.elapsed() >= GIVE_UP_AFTER
            {
                stop = Some((Stop::ConnectionsLost, Instant::now()));
            }
            if stop.is_some() {
                progress.stop.store(true, Ordering::Relaxed);
                closed = Some((done, process_cpu(), unix_now()));
            }
        }
        let fraction = match (plan.requests, plan.duration) {
            (Some(n), _) => done as f64 / n.max(1) as f64,
            (None, Some(d)) => elapsed.as_secs_f64() / d.as_secs_f64(),
            (None, None) => 0.0,
        }
        .min(1.0);
        if let Some(bar) = bar.as_ref().filter(|_| ticks % 20 == 0) {
            bar.set_position((fraction * 1000.0) as u64);
            bar.set_message(format!(
                "{} req {:.0} rps {} err",
                done,
                done as f64 / elapsed.as_secs_f64(),
                progress.errors.load(Ordering::Relaxed)
            ));
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if stop.is_some_and(|(_, at)| at.elapsed() >= GRACE) {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (stop, stopped_at) = stop.unwrap_or((Stop::Requests, Instant::now()));
    let (end_done, end_cpu, end_unix) = closed.unwrap_or_else(|| {
        (
            progress.done.load(Ordering::Relaxed),
            process_cpu(),
            unix_now(),
        )
    });
    let (open_at, open_done, open_cpu, open_unix) = progress
        .opened
        .get()
        .copied()
        .unwrap_or((started, 0, None, end_unix));
    let window = Window {
        seconds: stopped_at.saturating_duration_since(open_at).as_secs_f64(),
        requests: end_done.saturating_sub(open_done),
        connect_seconds: open_at.saturating_duration_since(started).as_secs_f64(),
        cpu_seconds: open_cpu.zip(end_cpu).map(|(a, b)| (b - a).max(0.0)),
        unix: (open_unix, end_unix),
    };
    (stop, stopped_at, window)
}

/// The measured part of a run: from every connection made to the stop.
struct Window {
    seconds: f64,
    requests: u64,
    connect_seconds: f64,
    cpu_seconds: Option<f64>,
    unix: (f64, f64),
}

/// Wall-clock time, seconds since the Unix epoch (to line the window up with samples taken
/// outside the process, such as a server's CPU time).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This process's CPU time so far (user + system, seconds), from `/proc/self/stat`.
fn process_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: state is the
    // first, utime the 12th and stime the 13th; both in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The server `remora bench` starts when no `--target` is given.
struct EmbeddedServer {
    addr: SocketAddr,
    /// The uring protocol server, or (raw mode) the byte echo on the same loops.
    _uring: Option<remora_uring::Server>,
    _std: Option<remora_std::Server>,
    /// The tokio server and its runtime (dropped in field order: server, then runtime).
    _tokio: Option<(remora_tokio::Server, tokio::runtime::Runtime)>,
    _tokio_raw: Option<tokio::runtime::Runtime>,
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
            _tokio: None,
            _tokio_raw: None,
            raw_stop: None,
        };
        let tls = plan.tls.as_ref().and_then(|t| t.server.clone());
        match (plan.backend, mode) {
            (Backend::Uring, mode) => {
                let mut config = remora_uring::ServerConfig {
                    threads: plan.server_threads.max(1),
                    ..Default::default()
                };
                config.budget.max_connections =
                    config.budget.max_connections.max(plan.connections + 100);
                if mode == Mode::Raw {
                    // The same loops as the protocol server, echoing bytes: rpc / raw compares
                    // the loop with and without the protocol.
                    let s = remora_uring::Server::bind_echo("127.0.0.1:0", config)
                        .map_err(|e| format!("starting the uring echo server: {e}"))?;
                    server.addr = s.local_addr();
                    server._uring = Some(s);
                    return Ok(server);
                }
                let s = match tls {
                    Some(tls) => {
                        remora_uring::Server::bind_tls("127.0.0.1:0", Arc::new(echo), config, tls)
                    }
                    None => remora_uring::Server::bind_with("127.0.0.1:0", Arc::new(echo), config),
                }
                .map_err(|e| format!("starting the uring server: {e}"))?;
                server.addr = s.local_addr();
                server._uring = Some(s);
            }
            (Backend::Std, Mode::Rpc) => {
                // The echo never blocks: answered on each connection's reader, as the tokio
                // server does by default (`--server-threads` workers stay for the rest).
                let config = remora_std::ServerConfig {
                    workers: plan.server_threads.max(1),
                    dispatch: remora_std::Dispatch::Inline,
                    ..Default::default()
                };
                let s = match tls {
                    Some(tls) => remora_std::Server::bind_tls("127.0.0.1:0", echo, config, tls),
                    None => remora_std::Server::bind_with("127.0.0.1:0", echo, config),
                }
                .map_err(|e| format!("starting the std server: {e}"))?;
                server.addr = s.local_addr();
                server._std = Some(s);
            }
            (Backend::Tokio, Mode::Rpc) => {
                let rt = tokio_runtime(plan.server_threads)?;
                let config = remora_tokio::ServerConfig::default();
                let s = rt
                    .block_on(async {
                        match tls {
                            Some(tls) => {
                                remora_tokio::Server::bind_tls("127.0.0.1:0", echo, config, tls)
                                    .await
                            }
                            None => remora_tokio::Server::bind("127.0.0.1:0", echo, config).await,
                        }
                    })
                    .map_err(|e| format!("starting the tokio server: {e}"))?;
                server.addr = s.local_addr();
                server._tokio = Some((s, rt));
            }
            (Backend::Tokio, Mode::Raw) => {
                let rt = tokio_runtime(plan.server_threads)?;
                let listener = rt
                    .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                    .map_err(|e| format!("starting the tokio echo server: {e}"))?;
                server.addr = listener.local_addr().map_err(|e| e.to_string())?;
                rt.spawn(tokio_echo(listener));
                // Dropping the runtime ends the echo tasks.
                server._tokio_raw = Some(rt);
            }
            (backend, Mode::Raw) => {
                let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                server.addr = listener.local_addr().map_err(|e| e.to_string())?;
                let stop = Arc::new(AtomicBool::new(false));
                server.raw_stop = Some(Arc::clone(&stop));
                let _ = backend;
                raw_std_server(listener, stop);
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

/// A byte echo server on std threads, one per connection.
pub(crate) fn raw_std_server(listener: TcpListener, stop: Arc<AtomicBool>) {
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

/// The load generator's io_uring loop, kept in `keep` so that its connections are closed only
/// after the figures are handed over.
fn bench_loop<'a>(
    plan: &Plan,
    keep: &'a mut Option<remora_uring::EventLoop>,
) -> Result<&'a mut remora_uring::EventLoop, String> {
    let lp = remora_uring::EventLoop::new(
        bench_connection(plan),
        remora_uring::LoopConfig::default(),
        Arc::new(remora_core::NotSupported),
    )
    .map_err(|e| format!("starting an io_uring loop: {e}"))?;
    Ok(keep.insert(lp))
}

/// The rpc load on one thread: one `remora_uring::EventLoop` drives all of the thread's
/// connections; each of the `inflight` workers per connection starts its next call as soon as its
/// last one completes.
fn uring_rpc(
    plan: &Plan,
    addr: SocketAddr,
    conns: usize,
    progress: &Arc<Progress>,
    keep: &mut Option<remora_uring::EventLoop>,
) -> Result<Histogram<u64>, String> {
    use remora_uring::{ConnId, EventLoop};
    let inflight = plan.inflight.max(1);
    let lp = bench_loop(plan, keep)?;
    let secure = plan.secure(addr)?;
    let mut ids: Vec<ConnId> = Vec::with_capacity(conns);
    for _ in 0..conns {
        ids.push(
            lp.connect_secure(addr, CONNECT, &secure)
                .map_err(|e| format!("connecting to {addr}: {e}"))?,
        );
    }
    // The measured window opens once every connection has had a call complete: connecting and
    // each connection's first exchange (its buffers allocated, TCP's first round trip) are
    // one-time costs, not load; at 10,000 × 1 they would otherwise be spread over a few calls
    // per connection.
    let mut cold = vec![true; conns];
    let mut cold_left = conns;
    if cold_left == 0 {
        progress.connected();
    }
    let workers = conns * inflight;
    // Per worker: the sequence number and start of its call in flight.
    let mut seq: Vec<u64> = (0..workers)
        .map(|t| (((t / inflight) as u64) << 48) | (((t % inflight) as u64) << 32))
        .collect();
    let mut t0 = vec![Instant::now(); workers];
    let mut deferred: Vec<(Instant, usize)> = Vec::new();
    let mut hist = histogram();
    let mut buf = BytesMut::new();
    let mut start = |lp: &mut EventLoop,
                     t: usize,
                     seq: &mut [u64],
                     t0: &mut [Instant],
                     deferred: &mut Vec<(Instant, usize)>| {
        if !progress.claim() {
            return;
        }
        let c = t / inflight;
        seq[t] += 1;
        t0[t] = Instant::now();
        let mut result = lp.call(
            ids[c],
            request(seq[t], plan, &mut buf),
            progress.timeout(),
            t as u64,
        );
        if matches!(
            result,
            Err(CallError::Closed { .. } | CallError::ConnectionLost { written: false })
        ) {
            // The connection is gone: reconnect (bounded) and try once more.
            result = match lp.connect_secure(addr, Duration::from_millis(200), &secure) {
                Ok(id) => {
                    ids[c] = id;
                    lp.call(
                        id,
                        request(seq[t], plan, &mut buf),
                        progress.timeout(),
                        t as u64,
                    )
                }
                Err(e) => Err(CallError::Connect(e.into())),
            };
        }
        if let Err(e) = result {
            let pause = progress.record(Outcome::of(&Err(e), seq[t], plan.payload));
            deferred.push((Instant::now() + pause.unwrap_or_default(), t));
        }
    };
    for t in 0..workers {
        start(lp, t, &mut seq, &mut t0, &mut deferred);
    }
    let mut done = Vec::with_capacity(workers);
    while lp.calls_in_flight() > 0 || !deferred.is_empty() {
        let now = Instant::now();
        let wait = deferred
            .iter()
            .map(|(at, _)| at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(100));
        lp.turn(wait, &mut done)
            .map_err(|e| format!("io_uring: {e}"))?;
        for completion in done.drain(..) {
            let t = completion.token as usize;
            if std::mem::take(&mut cold[t / inflight]) {
                cold_left -= 1;
                if cold_left == 0 {
                    progress.connected();
                }
            }
            let outcome = Outcome::of(&completion.outcome, seq[t], plan.payload);
            if outcome == Outcome::Ok {
                let _ = hist.record(t0[t].elapsed().as_micros() as u64);
            }
            match progress.record(outcome) {
                None => start(lp, t, &mut seq, &mut t0, &mut deferred),
                Some(pause) => deferred.push((Instant::now() + pause, t)),
            }
        }
        if !deferred.is_empty() {
            let now = Instant::now();
            let due: Vec<usize> = deferred
                .iter()
                .filter(|(at, _)| *at <= now)
                .map(|&(_, t)| t)
                .collect();
            deferred.retain(|(at, _)| *at > now);
            for t in due {
                start(lp, t, &mut seq, &mut t0, &mut deferred);
            }
        }
    }
    progress.add_loop_counts(lp.counts());
    Ok(hist)
}

/// The frame the raw mode sends: exactly what the rpc mode would encode.
fn raw_frame(plan: &Plan) -> Vec<u8> {
    let mut body = BytesMut::new();
    let mut frame = BytesMut::new();
    Codec::default()
        .encode(&request(1, plan, &mut body), &mut frame)
        .expect("a bench request encodes");
    frame.to_vec()
}

/// The raw load on one thread: the same `remora_uring::EventLoop` as the rpc load, its
/// connections raw (no machine traffic): each keeps `inflight` copies of the frame in flight,
/// topped up as echoes come back (the [`RawHandler`](remora_uring::RawHandler) below runs inside
/// the loop's turn, as the machine does in rpc mode).
fn uring_raw(
    plan: &Plan,
    addr: SocketAddr,
    conns: usize,
    progress: &Arc<Progress>,
    keep: &mut Option<remora_uring::EventLoop>,
) -> Result<Histogram<u64>, String> {
    use std::cell::RefCell;
    use std::rc::Rc;
    let frame = Arc::new(raw_frame(plan));
    let load = Rc::new(RefCell::new(RawLoad {
        flows: Vec::with_capacity(conns),
        outstanding: 0,
        ended: Vec::new(),
        cold: Vec::with_capacity(conns),
        cold_left: conns,
        progress: Arc::clone(progress),
    }));
    let lp = bench_loop(plan, keep)?;
    lp.set_raw(Box::new(RawLoadHandler(Rc::clone(&load))));
    let mut ids = Vec::with_capacity(conns);
    for _ in 0..conns {
        let id = lp
            .connect_raw(addr, CONNECT)
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let mut load = load.borrow_mut();
        let i = id.index();
        if load.flows.len() <= i {
            load.flows.resize_with(i + 1, || None);
        }
        load.flows[i] = Some(RawFlow::new(&frame, plan.inflight, progress));
        if load.cold.len() <= i {
            load.cold.resize(i + 1, false);
        }
        load.cold[i] = true;
        ids.push(id);
    }
    // First frames out; from then on the handler tops each connection up.
    for id in ids {
        let mut load = load.borrow_mut();
        let Some(Some(flow)) = load.flows.get_mut(id.index()) else {
            continue;
        };
        flow.top_up();
        let started = flow.outstanding;
        if lp.send_raw(id, &flow.out).is_ok() {
            load.outstanding += started;
        }
    }
    let mut done = Vec::new();
    if conns == 0 {
        progress.connected();
    }
    // Until every frame is back, or the grace after the window's end has passed.
    let within = || {
        progress
            .ends_at
            .get()
            .map_or(true, |&t| Instant::now() < t + GRACE)
    };
    while load.borrow().outstanding > 0 && within() {
        lp.turn(Duration::from_millis(100), &mut done)
            .map_err(|e| format!("io_uring: {e}"))?;
    }
    // Frames still in flight now are the run's unfinished calls; the caller closes the loop
    // after handing these figures over.
    progress.add_loop_counts(lp.counts());
    let mut load = load.borrow_mut();
    let mut hist = histogram();
    for part in std::mem::take(&mut load.ended) {
        hist.add(part).map_err(|e| e.to_string())?;
    }
    for flow in load.flows.iter_mut().filter_map(Option::take) {
        hist.add(flow.hist).map_err(|e| e.to_string())?;
    }
    Ok(hist)
}

/// One load thread's raw connections, by `ConnId::index`, and the frames in flight on all.
struct RawLoad {
    flows: Vec<Option<RawFlow>>,
    outstanding: usize,
    /// The latency of connections that closed during the run.
    ended: Vec<Histogram<u64>>,
    /// Connections with no echo back yet, and how many: the measured window opens once every
    /// connection has had one (as in rpc mode).
    cold: Vec<bool>,
    cold_left: usize,
    progress: Arc<Progress>,
}

impl RawLoad {
    /// `conn` has had an echo back (or ended): once all have, the window opens.
    fn warm(&mut self, conn: usize) {
        if self.cold.get_mut(conn).is_some_and(std::mem::take) {
            self.cold_left -= 1;
            if self.cold_left == 0 {
                self.progress.connected();
            }
        }
    }
}

/// Counts the echoes of a raw connection and sends its next frames, inside the loop's turn.
struct RawLoadHandler(std::rc::Rc<std::cell::RefCell<RawLoad>>);

impl remora_uring::RawHandler for RawLoadHandler {
    fn on_input(&mut self, conn: remora_uring::ConnId, input: &[u8], output: &mut BytesMut) {
        let mut load = self.0.borrow_mut();
        let Some(Some(flow)) = load.flows.get_mut(conn.index()) else {
            return;
        };
        let before = flow.outstanding;
        flow.echoed(input);
        flow.top_up();
        output.extend_from_slice(&flow.out);
        let after = flow.outstanding;
        let echoed = after < before + flow.out.len() / flow.frame.len().max(1);
        load.outstanding = load.outstanding + after - before;
        if echoed {
            load.warm(conn.index());
        }
    }

    fn on_closed(&mut self, conn: remora_uring::ConnId) {
        let mut load = self.0.borrow_mut();
        let Some(flow) = load.flows.get_mut(conn.index()).and_then(Option::take) else {
            return;
        };
        load.outstanding -= flow.outstanding;
        // Its frames in flight failed with it; its latency still counts.
        let hist = flow.finish();
        load.ended.push(hist);
        load.warm(conn.index());
    }
}

/// The client connections' machine: room for twice the calls in flight.
fn bench_connection(plan: &Plan) -> remora_core::Config {
    remora_core::Config {
        max_waiters: plan.inflight.max(1) * 2,
        ..Default::default()
    }
}

/// One rpc caller's loop state (a thread or task that keeps one call in flight): its sequence
/// number, request buffer, the start of its call and its latency.
struct Caller {
    seq: u64,
    buf: BytesMut,
    t0: Instant,
    hist: Histogram<u64>,
}

impl Caller {
    fn new(seq: u64) -> Caller {
        Caller {
            seq,
            buf: BytesMut::new(),
            t0: Instant::now(),
            hist: histogram(),
        }
    }

    /// The next request; its latency is counted from now.
    fn next(&mut self, plan: &Plan) -> Command {
        self.seq += 1;
        let req = request(self.seq, plan, &mut self.buf);
        self.t0 = Instant::now();
        req
    }

    /// Records the call's outcome; `Some` is how long to pause before the next (the server
    /// asked for it, or the run is stopping).
    fn done(
        &mut self,
        result: &Result<Command, CallError>,
        plan: &Plan,
        progress: &Progress,
    ) -> Option<Duration> {
        let outcome = Outcome::of(result, self.seq, plan.payload);
        if outcome == Outcome::Ok {
            let _ = self.hist.record(self.t0.elapsed().as_micros() as u64);
        }
        progress.record(outcome)
    }
}

/// The histograms of a run's threads or tasks, added up (`None`: one panicked).
fn merge(parts: impl Iterator<Item = Option<Histogram<u64>>>) -> Result<Histogram<u64>, String> {
    let mut hist = histogram();
    for part in parts {
        let part = part.ok_or("a load thread or task panicked")?;
        hist.add(part).map_err(|e| e.to_string())?;
    }
    Ok(hist)
}

/// Awaits every task in order.
async fn join_all<F: std::future::Future>(tasks: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await);
    }
    out
}

/// Raw mode's client side of one connection: up to `inflight` copies of the frame in flight,
/// topped up in one write, each echo checked and timed.
struct RawFlow {
    frame: Arc<Vec<u8>>,
    inflight: usize,
    progress: Arc<Progress>,
    sent: std::collections::VecDeque<Instant>,
    /// The frames to write next.
    out: Vec<u8>,
    acc: Vec<u8>,
    outstanding: usize,
    hist: Histogram<u64>,
}

impl RawFlow {
    fn new(frame: &Arc<Vec<u8>>, inflight: usize, progress: &Arc<Progress>) -> RawFlow {
        let (inflight, len) = (inflight.max(1), frame.len());
        RawFlow {
            frame: Arc::clone(frame),
            inflight,
            progress: Arc::clone(progress),
            sent: std::collections::VecDeque::with_capacity(inflight),
            out: Vec::with_capacity(len * inflight),
            acc: Vec::with_capacity(len * inflight * 2),
            outstanding: 0,
            hist: histogram(),
        }
    }

    /// Fills `out` with the frames that may be sent now; false once nothing is in flight and
    /// the run wants no more.
    fn top_up(&mut self) -> bool {
        self.out.clear();
        while self.outstanding < self.inflight && self.progress.claim() {
            self.out.extend_from_slice(&self.frame);
            self.sent.push_back(Instant::now());
            self.outstanding += 1;
        }
        self.outstanding > 0
    }

    /// Bytes that came back.
    fn echoed(&mut self, read: &[u8]) {
        let (frame, sent) = (&self.frame[..], &mut self.sent);
        let n = echoed_frames(
            &mut self.acc,
            read,
            frame,
            sent,
            &mut self.hist,
            &self.progress,
        );
        self.outstanding -= n;
    }

    /// The connection's latency; frames still in flight failed with it.
    fn finish(self) -> Histogram<u64> {
        if self.outstanding > 0 {
            self.progress.lost_frames(self.outstanding as u64);
        }
        self.hist
    }
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
            progress.record(Outcome::WrongBody);
        }
    }
    acc.drain(..whole * len);
    whole
}

/// The std load generator's client (one connection).
fn std_client(plan: &Plan, addr: SocketAddr) -> Result<remora_std::Client, String> {
    let config = remora_std::ClientConfig {
        connection: bench_connection(plan),
        ..Default::default()
    };
    match &plan.tls {
        Some(tls) => remora_std::Client::connect_tls(&addr.to_string(), config, tls.client.clone()),
        None => remora_std::Client::connect(addr, config),
    }
    .map_err(|e| format!("connecting to {addr}: {e}"))
}

/// std rpc with `call_then`: `inflight` callers kept going by their continuations (on the
/// connection's reader thread), started here; a caller that must pause (the server asked,
/// or the run is stopping) comes back here to sleep, and each reports here when it is done.
fn std_rpc_then(
    plan: &Plan,
    addr: SocketAddr,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    enum Report {
        Pause(usize, Duration),
        Done,
    }
    struct Run {
        client: remora_std::Client,
        plan: Plan,
        progress: Arc<Progress>,
        callers: Vec<Mutex<Caller>>,
        reports: Mutex<mpsc::Sender<Report>>,
    }
    impl Run {
        fn report(&self, report: Report) {
            let _ = self
                .reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(report);
        }

        /// Starts caller `w`'s next call (or reports it done or pausing).
        fn start(self: &Arc<Self>, w: usize) {
            loop {
                if !self.progress.claim() {
                    return self.report(Report::Done);
                }
                let request = lock(&self.callers[w]).next(&self.plan);
                let run = Arc::clone(self);
                let then = move |result| {
                    // (The caller's lock is let go before its next call takes it again.)
                    let pause = lock(&run.callers[w]).done(&result, &run.plan, &run.progress);
                    match pause {
                        Some(pause) => run.report(Report::Pause(w, pause)),
                        None => run.start(w),
                    }
                };
                let sent = self
                    .client
                    .call_then(request, self.progress.timeout(), then);
                let Err(e) = sent else { return };
                let pause = lock(&self.callers[w]).done(&Err(e), &self.plan, &self.progress);
                if let Some(pause) = pause {
                    return self.report(Report::Pause(w, pause));
                }
            }
        }
    }
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    let client = std_client(plan, addr)?;
    progress.connected();
    let callers = plan.inflight.max(1);
    let (tx, rx) = mpsc::channel();
    let run = Arc::new(Run {
        client: client.clone(),
        plan: plan.clone(),
        progress: Arc::clone(progress),
        callers: (0..callers)
            .map(|w| Mutex::new(Caller::new((w as u64) << 32)))
            .collect(),
        reports: Mutex::new(tx),
    });
    for w in 0..callers {
        run.start(w);
    }
    // Every call ends (response, timeout or error), so every caller reports done; the bound
    // is a backstop.
    let bound = plan.duration.unwrap_or(Duration::from_secs(3600)) + plan.timeout + GRACE * 5;
    let until = Instant::now() + bound;
    let mut done = 0;
    while done < callers {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Report::Done) => done += 1,
            Ok(Report::Pause(w, pause)) => {
                std::thread::sleep(pause);
                run.start(w);
            }
            Err(_) => {
                client.close();
                return Err(format!("{} callers did not finish", callers - done));
            }
        }
    }
    client.close();
    merge(
        run.callers
            .iter()
            .map(|c| Some(std::mem::replace(&mut lock(c).hist, histogram()))),
    )
}

fn std_rpc(
    plan: &Plan,
    addr: SocketAddr,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let client = std_client(plan, addr)?;
    progress.connected();
    let callers: Vec<_> = (0..plan.inflight.max(1))
        .map(|w| {
            let (client, plan) = (client.clone(), plan.clone());
            let progress = Arc::clone(progress);
            std::thread::spawn(move || {
                let mut caller = Caller::new((w as u64) << 32);
                while progress.claim() {
                    let req = caller.next(&plan);
                    let result = client.call(req, progress.timeout());
                    if let Some(pause) = caller.done(&result, &plan, &progress) {
                        std::thread::sleep(pause);
                    }
                }
                caller.hist
            })
        })
        .collect();
    let hist = merge(callers.into_iter().map(|c| c.join().ok()));
    client.close();
    hist
}

fn std_raw(
    plan: &Plan,
    addr: SocketAddr,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let frame = Arc::new(raw_frame(plan));
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    progress.connected();
    let mut flow = RawFlow::new(&frame, plan.inflight, progress);
    let mut buf = vec![0u8; 64 * 1024];
    while flow.top_up() {
        if !flow.out.is_empty() && stream.write_all(&flow.out).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => flow.echoed(&buf[..n]),
            _ => break,
        }
    }
    Ok(flow.finish())
}

/// A single-threaded tokio runtime, for one thread's share of the load.
fn tokio_current() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a tokio runtime: {e}"))
}

/// A multi-threaded tokio runtime with `threads` workers.
fn tokio_runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("starting a tokio runtime: {e}"))
}

/// A plain tokio byte echo server (the epoll ceiling): a task per connection, read then
/// write back what was read. `remora serve --backend tokio --mode raw` runs it too.
pub async fn tokio_echo(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(n) if n > 0 => n,
                    _ => return,
                };
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn tokio_rpc(
    plan: &Plan,
    addr: SocketAddr,
    conns: usize,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let plan = plan.clone();
    let progress = Arc::clone(progress);
    tokio_current()?.block_on(async move {
        let mut tasks = Vec::new();
        let mut clients = Vec::new();
        for c in 0..conns {
            let config = remora_tokio::ClientConfig {
                connection: bench_connection(&plan),
                ..Default::default()
            };
            let client = match &plan.tls {
                Some(tls) => {
                    remora_tokio::Client::connect_tls(&addr.to_string(), config, tls.client.clone())
                        .await
                }
                None => remora_tokio::Client::connect(addr, config).await,
            }
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
            for w in 0..plan.inflight.max(1) {
                let (client, plan) = (client.clone(), plan.clone());
                let progress = Arc::clone(&progress);
                tasks.push(tokio::spawn(async move {
                    let mut caller = Caller::new(((c as u64) << 48) | ((w as u64) << 32));
                    while progress.claim() {
                        let req = caller.next(&plan);
                        let result = client.call(req, progress.timeout()).await;
                        if let Some(pause) = caller.done(&result, &plan, &progress) {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    caller.hist
                }));
            }
            clients.push(client);
        }
        progress.connected();
        let hist = merge(join_all(tasks).await.into_iter().map(|t| t.ok()));
        clients.iter().for_each(remora_tokio::Client::close);
        hist
    })
}

fn tokio_raw(
    plan: &Plan,
    addr: SocketAddr,
    conns: usize,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame = Arc::new(raw_frame(plan));
    let progress = Arc::clone(progress);
    tokio_current()?.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut flow = RawFlow::new(&frame, plan.inflight, &progress);
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while flow.top_up() {
                    if !flow.out.is_empty() && stream.write_all(&flow.out).await.is_err() {
                        break;
                    }
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => flow.echoed(&buf[..n]),
                        _ => break,
                    }
                }
                flow.finish()
            }));
        }
        progress.connected();
        merge(join_all(tasks).await.into_iter().map(|t| t.ok()))
    })
}
