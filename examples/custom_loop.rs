//! The point of a sans-IO core: a `remora_core::Connection` driven by a hand-written event loop
//! over a non-blocking socket and poll(2) (through `mio`), with no async runtime and no driver
//! crate. It sends 1,000 requests with 32 in flight, checks every response body, and prints one
//! line.
//!
//! ```text
//! remora serve --listen 127.0.0.1:9876 &
//! cargo run --release --example custom_loop -- 127.0.0.1:9876
//! ```
//!
//! Exits 0 when every response came back with its own body; non-zero with a one-line reason
//! otherwise (refused connection, timeout, wrong body, connection lost).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use remora_core::{codes, Command, Config, Connection, Event, Instant};

const REQUESTS: u64 = 1_000;
const IN_FLIGHT: usize = 32;
const TIMEOUT: Duration = Duration::from_secs(5);
/// The whole run gives up after this long, whatever happens.
const GIVE_UP: Duration = Duration::from_secs(30);
const SOCKET: Token = Token(0);

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: custom_loop HOST:PORT   (a `remora serve` echo server)");
        return ExitCode::from(2);
    };
    match run(&addr) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("custom_loop: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("not an IP address and port: {e}"))?;
    // A blocking connect keeps the example short (and reports a refused connection at once);
    // everything after it is non-blocking.
    let std_stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("cannot connect: {e}"))?;
    std_stream.set_nodelay(true).map_err(|e| e.to_string())?;
    std_stream
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let mut stream = TcpStream::from_std(std_stream);

    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(16);

    // The machine. The loop below only moves bytes, reads the clock and waits.
    let mut conn = Connection::new(Config {
        max_waiters: IN_FLIGHT,
        ..Config::default()
    });
    let origin = std::time::Instant::now();
    let now = || Instant::from_nanos(origin.elapsed().as_nanos() as u64);
    // What each request in flight expects back, at its RequestId's dense index.
    let mut expected: Vec<Option<u64>> = vec![None; IN_FLIGHT.next_power_of_two()];
    let (mut sent, mut checked) = (0u64, 0u64);
    let mut chunk = vec![0u8; 64 * 1024];

    loop {
        if origin.elapsed() > GIVE_UP {
            return Err(format!(
                "gave up after {GIVE_UP:?} with {checked} responses"
            ));
        }
        // 1. Hand on the machine's events. First, before queueing more: a request's slot (and
        //    so its `index`) is free again once its outcome is queued, even before it is read.
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Response { id, response, .. } => {
                    let want = expected[id.index(&conn)]
                        .take()
                        .ok_or("a response for no request of ours")?;
                    if response.code != codes::SUCCESS || response.body()[..] != body(want)[..] {
                        return Err(format!(
                            "request {want}: code {} body {:?}",
                            response.code,
                            String::from_utf8_lossy(response.body())
                        ));
                    }
                    checked += 1;
                }
                Event::Failed { id, error, .. } => {
                    let which = expected[id.index(&conn)].take();
                    return Err(format!("request {which:?}: {error}"));
                }
                Event::Closed { reason } => return Err(format!("connection closed: {reason}")),
                Event::Request { request, command } => {
                    // This example serves nothing: answer what a server asks "not supported".
                    let _ = conn.send_response(
                        request,
                        command.response(codes::REQUEST_CODE_NOT_SUPPORTED),
                    );
                }
                Event::Oneway { .. } => {}
            }
        }
        if checked == REQUESTS {
            let elapsed = origin.elapsed();
            return Ok(format!(
                "custom_loop: {checked}/{REQUESTS} responses checked, {IN_FLIGHT} in flight, {:.1} ms, {:.0} req/s",
                elapsed.as_secs_f64() * 1e3,
                checked as f64 / elapsed.as_secs_f64()
            ));
        }
        // Keep IN_FLIGHT requests queued or in flight.
        while sent < REQUESTS && conn.pending_requests() < IN_FLIGHT {
            let t = now();
            let request = Command::request(codes::SEND_MESSAGE_V2).with_body(body(sent));
            let id = conn
                .send_request(request, t + TIMEOUT, t)
                .map_err(|e| format!("request {sent} refused: {e}"))?;
            expected[id.index(&conn)] = Some(sent);
            sent += 1;
        }

        // 2. Write what the machine has queued, until it is all written or the socket is full.
        while let Some(bytes) = conn.poll_transmit() {
            match stream.write(bytes) {
                Ok(n) => conn.handle_written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write failed: {e}")),
            }
        }

        // 3. Wait for the socket or the machine's next deadline, whichever comes first.
        let wait = conn
            .poll_timeout()
            .map(|at| Duration::from_nanos(at.as_nanos().saturating_sub(now().as_nanos())));
        match poll.poll(&mut events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        conn.handle_timeout(now());

        // mio is edge-triggered: read until the socket has nothing more.
        if events.iter().any(|e| e.is_readable() || e.is_read_closed()) {
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => {
                        conn.handle_disconnect();
                        break;
                    }
                    Ok(n) => conn.handle_input(&chunk[..n], now()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read failed: {e}")),
                }
            }
        }
    }
}

/// Request `seq`'s body; the echo server sends it back.
fn body(seq: u64) -> Vec<u8> {
    format!("custom loop request {seq}").into_bytes()
}
