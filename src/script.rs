//! `remora serve --script FILE`: a server that answers from a script of rules, to stand in for a
//! name server or a broker in tests.
//!
//! The script is `{"rules": [...]}`; each rule has an optional `code` (the request code it
//! matches; absent matches any), a `response` in the shape `remora encode` reads plus `body` (a
//! UTF-8 body as text), and optionally `delay_ms`, `action` (`respond`, the default; `drop`: no
//! answer; `close`: close the connection) and `comment`. The first matching rule wins; a request
//! no rule matches is echoed. Every response carries the request's opaque and the response flag.
//!
//! The core's `Handler` answers every request with one command, so it cannot drop a request or
//! close a connection: the script is served here by a small thread-per-connection loop over the
//! core's `Codec` over `std::net` sockets, with a timer thread per connection for delays so a
//! delayed answer does not hold up the ones behind it.

use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use remora_core::{Codec, Command, Decoded, Handler, SerializeType, FLAG_RESPONSE};
use serde_json::Value;

use crate::summary::{Class, StopSignal, Tally};
use crate::view;

/// Longest delay a rule may ask for (an hour): a typo should not park a request forever.
const MAX_DELAY_MS: u64 = 3_600_000;

/// What a rule does with a request it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer with the rule's response (or an echo if it has none).
    Respond,
    /// Never answer.
    Drop,
    /// Close the connection.
    Close,
}

/// One rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The request code it matches (`None`: any).
    pub code: Option<i32>,
    /// The response template (opaque and flag are the request's).
    pub response: Option<Command>,
    /// Whether the template names its own serialization.
    pub fixed_serialize: bool,
    /// Wait this long before acting.
    pub delay: Duration,
    /// What to do.
    pub action: Action,
}

/// A parsed script.
#[derive(Clone, Debug)]
pub struct Script {
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Send this response after the delay.
    Respond(Command, Duration),
    /// Do nothing.
    Drop,
    /// Close the connection after the delay.
    Close(Duration),
}

const RULE_KEYS: [&str; 5] = ["code", "response", "delay_ms", "action", "comment"];

impl Script {
    /// Parses a script; errors name the rule and the key.
    pub fn parse(text: &str) -> Result<Script, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let obj = root
            .as_object()
            .ok_or("expected an object {\"rules\": [...]}")?;
        if let Some(key) = obj.keys().find(|k| *k != "rules" && *k != "comment") {
            return Err(format!("unknown key {key:?} (expected \"rules\")"));
        }
        let rules = obj
            .get("rules")
            .and_then(Value::as_array)
            .ok_or("\"rules\" must be an array")?;
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::parse(r).map_err(|e| format!("rule {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Script { rules })
    }

    /// The first rule that matches `request`, and its index.
    pub fn rule_for(&self, request: &Command) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.code.map_or(true, |c| c == request.code))
    }

    /// What to do with `request` (`serialize`: the server's `--serialize`, if given).
    pub fn decide(&self, request: &Command, serialize: Option<SerializeType>) -> Decision {
        let Some((_, rule)) = self.rule_for(request) else {
            return Decision::Respond(
                in_kind(crate::echo(request.clone()), serialize),
                Duration::ZERO,
            );
        };
        match rule.action {
            Action::Drop => Decision::Drop,
            Action::Close => Decision::Close(rule.delay),
            Action::Respond => {
                let response = match &rule.response {
                    None => in_kind(crate::echo(request.clone()), serialize),
                    Some(template) => {
                        let mut r = template.clone();
                        r.opaque = request.opaque;
                        r.flag |= FLAG_RESPONSE;
                        if !rule.fixed_serialize {
                            r.serialize_type = serialize.unwrap_or(request.serialize_type);
                        }
                        r
                    }
                };
                Decision::Respond(response, rule.delay)
            }
        }
    }
}

fn in_kind(mut response: Command, serialize: Option<SerializeType>) -> Command {
    if let Some(ty) = serialize {
        response.serialize_type = ty;
    }
    response
}

impl Rule {
    fn parse(v: &Value) -> Result<Rule, String> {
        let obj = v.as_object().ok_or("expected an object")?;
        if let Some(key) = obj.keys().find(|k| !RULE_KEYS.contains(&k.as_str())) {
            return Err(format!("unknown key {key:?}"));
        }
        let code = match obj.get("code") {
            None | Some(Value::Null) => None,
            Some(c) => Some(
                c.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or("\"code\" must be an integer within i32")?,
            ),
        };
        let delay_ms = match obj.get("delay_ms") {
            None | Some(Value::Null) => 0,
            Some(d) => d
                .as_u64()
                .filter(|&d| d <= MAX_DELAY_MS)
                .ok_or_else(|| format!("\"delay_ms\" must be an integer 0..={MAX_DELAY_MS}"))?,
        };
        let action = match obj.get("action").map(|a| a.as_str()) {
            None | Some(Some("respond")) => Action::Respond,
            Some(Some("drop")) => Action::Drop,
            Some(Some("close")) => Action::Close,
            Some(_) => return Err("\"action\" must be \"respond\", \"drop\" or \"close\"".into()),
        };
        let (response, fixed_serialize) = match obj.get("response") {
            None | Some(Value::Null) => (None, false),
            Some(r) => {
                let (cmd, fixed) = response(r).map_err(|e| format!("response: {e}"))?;
                (Some(cmd), fixed)
            }
        };
        if response.is_some() && action != Action::Respond {
            return Err(format!(
                "a \"response\" with action {:?} would never be sent",
                obj["action"].as_str().unwrap_or_default()
            ));
        }
        Ok(Rule {
            code,
            response,
            fixed_serialize,
            delay: Duration::from_millis(delay_ms),
            action,
        })
    }
}

/// A response template: the `encode` view plus `body` (text).
fn response(v: &Value) -> Result<(Command, bool), String> {
    let mut obj = v.as_object().ok_or("expected an object")?.clone();
    let body = obj.remove("body");
    if body.is_some() && obj.contains_key("body_hex") {
        return Err("give \"body\" or \"body_hex\", not both".into());
    }
    let fixed = obj.contains_key("serialize_type");
    let mut cmd = view::from_json(&Value::Object(obj))?;
    match body {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => cmd = cmd.with_body(text.into_bytes()),
        Some(_) => return Err("\"body\" must be a string".into()),
    }
    cmd.set_response(true);
    Ok((cmd, fixed))
}

/// A code no server answers with: what [`pass`] answers, so a gate built on it (such as the ACL
/// check of `serve --acl`) can be told apart from its own refusals.
const PASSED: i32 = i32::MIN;

/// The handler behind a gate: marks a request that got through.
pub fn pass(request: Command) -> Command {
    request.response(PASSED)
}

/// How [`serve`] serves.
pub struct Options {
    /// `--serialize`: answer with this header serialization.
    pub serialize: Option<SerializeType>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// A handler wrapping [`pass`]: each request goes through it first, and whatever it answers
    /// other than [`pass`]'s mark is sent instead of the script's answer.
    pub gate: Option<Arc<dyn Handler>>,
    /// Print nothing while serving (no `listening on`, no line per request or refusal).
    pub quiet: bool,
}

/// The open connections, to close when the server stops.
type Open = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Serves `script` on `listen` until SIGINT or SIGTERM; then stops accepting, closes every
/// connection (answers a rule still delays are not sent), waits for the connection threads
/// (at most [`DRAIN`]) and prints the summary.
pub fn serve(listen: &str, script: Script, options: Options) -> Result<(), String> {
    let stop = StopSignal::register()?;
    let tally = Arc::new(Tally::new());
    let listener = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if !options.quiet {
        println!("listening on {addr}");
    }
    io::stdout().flush().map_err(|e| e.to_string())?;
    let open: Open = Arc::default();
    let stopping = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let acceptor = {
        let (open, stopping, counts, tally) = (
            Arc::clone(&open),
            Arc::clone(&stopping),
            Arc::clone(&counts),
            Arc::clone(&tally),
        );
        let script = Arc::new(script);
        std::thread::Builder::new()
            .name("remora-script-accept".into())
            .spawn(move || {
                accept(
                    &listener, &script, &options, &open, &stopping, &counts, &tally,
                )
            })
            .map_err(|e| format!("cannot start the accept thread: {e}"))?
    };
    let signal = stop.wait();
    stopping.store(true, Ordering::Release);
    // Wake the acceptor from its blocking accept.
    let _ = TcpStream::connect_timeout(&wake_addr(addr), Duration::from_secs(1));
    let _ = acceptor.join();
    for stream in lock(&open).values() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    let give_up = Instant::now() + DRAIN;
    while counts.running.load(Ordering::Acquire) > 0 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    let server = remora_core::Snapshot {
        accepted: counts.accepted.load(Ordering::Relaxed),
        refused: counts.refused.load(Ordering::Relaxed),
        bytes_in: counts.bytes_in.load(Ordering::Relaxed),
        bytes_out: counts.bytes_out.load(Ordering::Relaxed),
        ..remora_core::Snapshot::default()
    };
    tally.print(signal, &server)
}

/// How long [`serve`] waits for its connection threads to end when it stops.
pub const DRAIN: Duration = Duration::from_secs(5);

/// The accept loop's counts.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Bytes read from the connections.
    bytes_in: AtomicU64,
    /// Bytes written to them (whole answers).
    bytes_out: AtomicU64,
    /// Connection threads not yet ended.
    running: AtomicUsize,
}

fn wake_addr(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

fn accept(
    listener: &TcpListener,
    script: &Arc<Script>,
    options: &Options,
    open: &Open,
    stopping: &AtomicBool,
    counts: &Arc<Counts>,
    tally: &Arc<Tally>,
) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let max = options.max_connections;
        if counts.running.load(Ordering::Acquire) >= max {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            if !options.quiet {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                eprintln!("{peer}: connection refused: {max} connections open (--max-connections)");
            }
            continue; // dropping the stream closes it
        }
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        counts.accepted.fetch_add(1, Ordering::Relaxed);
        let id = next_id;
        next_id += 1;
        lock(open).insert(id, handle);
        let (script, open_now, counts_now, tally) = (
            Arc::clone(script),
            Arc::clone(open),
            Arc::clone(counts),
            Arc::clone(tally),
        );
        let (serialize, gate, quiet) = (options.serialize, options.gate.clone(), options.quiet);
        counts.running.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name("remora-script".into())
            .spawn(move || {
                let log = Log { quiet };
                let wire = Wire(&counts_now);
                connection(
                    stream,
                    &script,
                    serialize,
                    gate.as_deref(),
                    &tally,
                    log,
                    wire,
                );
                lock(&open_now).remove(&id);
                counts_now.running.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            lock(open).remove(&id);
            counts.running.fetch_sub(1, Ordering::AcqRel);
            if !options.quiet {
                eprintln!("cannot start a connection thread: {e}");
            }
        }
    }
}

/// Where a connection counts the bytes it reads and writes.
#[derive(Clone, Copy)]
struct Wire<'a>(&'a Arc<Counts>);

impl Wire<'_> {
    fn read(self, n: usize) {
        self.0.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Writes `frame` whole to `to`, counting it once written.
    fn write(counts: &Counts, to: &Mutex<TcpStream>, frame: &[u8]) -> io::Result<()> {
        lock(to).write_all(frame)?;
        counts
            .bytes_out
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A connection's lines on stderr (none with `--quiet`).
#[derive(Clone, Copy)]
struct Log {
    quiet: bool,
}

impl Log {
    fn line(self, text: std::fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A delayed job, ordered by due time (earliest first out of the max-heap).
struct Timed(Instant, u64, Job);

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.0, other.1).cmp(&(self.0, self.1))
    }
}

/// Runs jobs at their due times; ends when the sender is dropped and the heap is empty.
fn timer(jobs: mpsc::Receiver<(Instant, Job)>) {
    let mut heap = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|t: &Timed| t.0 <= now) {
            let Timed(_, _, job) = heap.pop().expect("peeked");
            job();
        }
        let next = match heap.peek() {
            Some(t) => jobs.recv_timeout(t.0 - now),
            None => jobs
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((due, job)) => {
                seq += 1;
                heap.push(Timed(due, seq, job));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if heap.is_empty() => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = heap.peek() {
                    std::thread::sleep(t.0.saturating_duration_since(Instant::now()));
                }
            }
        }
    }
}

fn connection(
    stream: TcpStream,
    script: &Script,
    serialize: Option<SerializeType>,
    gate: Option<&dyn Handler>,
    tally: &Tally,
    log: Log,
    wire: Wire<'_>,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(writer));
    let (timer_tx, timer_rx) = mpsc::channel::<(Instant, Job)>();
    let timer_thread = std::thread::Builder::new()
        .name("remora-script-timer".into())
        .spawn(move || timer(timer_rx));
    let codec = Codec::default();
    let mut reader = stream;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    'read: loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wire.read(n);
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let request = match codec.decode(&mut buf) {
                Ok(Decoded::Command(cmd)) => cmd,
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    log.line(format_args!("{peer}: corrupt frame, closing: {e}"));
                    let _ = reader.shutdown(Shutdown::Both);
                    break 'read;
                }
            };
            if request.is_response() {
                continue;
            }
            let refused = gate
                .map(|g| g.handle(request.clone()))
                .filter(|answer| answer.code != PASSED);
            let (decision, rule) = match refused {
                Some(answer) => (Decision::Respond(answer, Duration::ZERO), "acl".to_string()),
                None => (
                    script.decide(&request, serialize),
                    script
                        .rule_for(&request)
                        .map_or_else(|| "echo".to_string(), |(i, _)| format!("rule {}", i + 1)),
                ),
            };
            match decision {
                Decision::Drop => {
                    tally.handled(Class::Dropped, request.body().len(), 0);
                    log.line(format_args!(
                        "{peer}: code {} opaque {} -> {rule}: drop",
                        request.code, request.opaque
                    ));
                }
                Decision::Close(delay) => {
                    tally.handled(Class::Closed, request.body().len(), 0);
                    log.line(format_args!(
                        "{peer}: code {} opaque {} -> {rule}: close after {} ms",
                        request.code,
                        request.opaque,
                        delay.as_millis()
                    ));
                    if delay.is_zero() {
                        let _ = reader.shutdown(Shutdown::Both);
                        break 'read;
                    }
                    let w = Arc::clone(&writer);
                    let _ = timer_tx.send((
                        Instant::now() + delay,
                        Box::new(move || {
                            let _ = lock(&w).shutdown(Shutdown::Both);
                        }),
                    ));
                }
                Decision::Respond(response, delay) => {
                    let sent = if request.is_oneway() {
                        0
                    } else {
                        response.body().len()
                    };
                    tally.handled(Class::of_code(response.code), request.body().len(), sent);
                    log.line(format_args!(
                        "{peer}: code {} opaque {} -> {rule}: code {}{}",
                        request.code,
                        request.opaque,
                        response.code,
                        if request.is_oneway() {
                            " (oneway: not sent)"
                        } else {
                            ""
                        }
                    ));
                    if request.is_oneway() {
                        continue;
                    }
                    let mut frame = BytesMut::new();
                    if let Err(e) = codec.encode(&response, &mut frame) {
                        log.line(format_args!("{peer}: cannot encode the response: {e}"));
                        continue;
                    }
                    if delay.is_zero() {
                        if Wire::write(wire.0, &writer, &frame).is_err() {
                            break 'read;
                        }
                    } else {
                        let (w, counts) = (Arc::clone(&writer), Arc::clone(wire.0));
                        let _ = timer_tx.send((
                            Instant::now() + delay,
                            Box::new(move || {
                                let _ = Wire::write(&counts, &w, &frame);
                            }),
                        ));
                    }
                }
            }
        }
    }
    // Delayed answers to a connection that is gone have nowhere to go: end the timer now.
    let _ = lock(&writer).shutdown(Shutdown::Both);
    drop(timer_tx);
    if let Ok(t) = timer_thread {
        let _ = t.join();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_core::codes;

    const SCRIPT: &str = r#"{"rules": [
        {"code": 105, "response": {"code": 0, "body": "{\"brokerDatas\":[]}"}},
        {"code": 10, "response": {"code": 2, "remark": "[REJECTREQUEST]system busy", "ext_fields": {"k": "v"}}, "delay_ms": 5},
        {"code": 11, "action": "drop"},
        {"code": 12, "action": "close", "delay_ms": 7},
        {"code": 13, "response": {"code": 0, "serialize_type": "ROCKETMQ"}},
        {"code": 14, "delay_ms": 3, "comment": "echo after 3 ms"}
    ]}"#;

    #[test]
    fn the_first_matching_rule_decides_with_the_requests_opaque() {
        let s = Script::parse(SCRIPT).unwrap();
        let req = Command::request(105).with_opaque(42);
        let Decision::Respond(r, d) = s.decide(&req, None) else {
            panic!()
        };
        assert_eq!(
            (r.code, r.opaque, r.is_response(), d),
            (0, 42, true, Duration::ZERO)
        );
        assert_eq!(r.body(), b"{\"brokerDatas\":[]}");
        assert_eq!(r.serialize_type, SerializeType::Json);

        let req = Command::request(10)
            .with_opaque(7)
            .with_serialize_type(SerializeType::RocketMq);
        let Decision::Respond(r, d) = s.decide(&req, None) else {
            panic!()
        };
        assert_eq!(
            (r.code, r.opaque, d),
            (codes::SYSTEM_BUSY, 7, Duration::from_millis(5))
        );
        assert_eq!(r.serialize_type, SerializeType::RocketMq, "answers in kind");
        assert_eq!(r.ext("k"), Some("v"));
        assert_eq!(r.remark(), Some("[REJECTREQUEST]system busy"));
        let Decision::Respond(r, _) = s.decide(&req, Some(SerializeType::Json)) else {
            panic!()
        };
        assert_eq!(r.serialize_type, SerializeType::Json, "--serialize wins");

        assert_eq!(s.decide(&Command::request(11), None), Decision::Drop);
        assert_eq!(
            s.decide(&Command::request(12), None),
            Decision::Close(Duration::from_millis(7))
        );
        let Decision::Respond(r, _) = s.decide(&Command::request(13), Some(SerializeType::Json))
        else {
            panic!()
        };
        assert_eq!(
            r.serialize_type,
            SerializeType::RocketMq,
            "the rule's own type wins"
        );

        let echo_req = Command::request(14)
            .with_opaque(3)
            .with_ext("a", "b")
            .with_body("x");
        let Decision::Respond(r, d) = s.decide(&echo_req, None) else {
            panic!()
        };
        assert_eq!((r.code, r.opaque, d), (0, 3, Duration::from_millis(3)));
        assert_eq!((r.ext("a"), r.body()), (Some("b"), &b"x"[..]));

        // No rule: echo.
        let Decision::Respond(r, d) = s.decide(&Command::request(99).with_body("y"), None) else {
            panic!()
        };
        assert_eq!((r.code, r.body(), d), (0, &b"y"[..], Duration::ZERO));
    }

    #[test]
    fn a_rule_without_code_matches_everything() {
        let s = Script::parse(r#"{"rules":[{"code":1,"action":"drop"},{"response":{"code":17}}]}"#)
            .unwrap();
        assert_eq!(s.decide(&Command::request(1), None), Decision::Drop);
        let Decision::Respond(r, _) = s.decide(&Command::request(2), None) else {
            panic!()
        };
        assert_eq!(r.code, 17);
    }

    #[test]
    fn bad_scripts_are_refused_with_the_rule_and_key() {
        let cases = [
            ("", "invalid JSON"),
            ("[]", "expected an object"),
            (r#"{"rule": []}"#, "unknown key \"rule\""),
            (r#"{"rules": {}}"#, "must be an array"),
            (r#"{"rules": [{"cod": 1}]}"#, "rule 1: unknown key \"cod\""),
            (r#"{"rules": [{}, {"code": "x"}]}"#, "rule 2: \"code\""),
            (r#"{"rules": [{"action": "explode"}]}"#, "\"action\""),
            (r#"{"rules": [{"delay_ms": -1}]}"#, "\"delay_ms\""),
            (r#"{"rules": [{"delay_ms": 99999999999}]}"#, "\"delay_ms\""),
            (
                r#"{"rules": [{"response": {}}]}"#,
                "response: missing \"code\"",
            ),
            (
                r#"{"rules": [{"response": {"code": 0, "body": "a", "body_hex": "00"}}]}"#,
                "not both",
            ),
            (
                r#"{"rules": [{"response": {"code": 0, "body": 1}}]}"#,
                "\"body\" must be a string",
            ),
            (
                r#"{"rules": [{"action": "drop", "response": {"code": 0}}]}"#,
                "never be sent",
            ),
        ];
        for (text, want) in cases {
            let e = Script::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_timer_runs_jobs_in_due_order() {
        let (tx, rx) = mpsc::channel::<(Instant, Job)>();
        let order = Arc::new(Mutex::new(Vec::new()));
        let now = Instant::now();
        for (i, ms) in [(1, 30u64), (2, 10), (3, 20)] {
            let o = Arc::clone(&order);
            tx.send((
                now + Duration::from_millis(ms),
                Box::new(move || lock(&o).push(i)),
            ))
            .unwrap();
        }
        drop(tx);
        timer(rx); // returns once every job has run
        assert_eq!(*lock(&order), [2, 3, 1]);
    }
}
