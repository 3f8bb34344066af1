//! The layer on real sockets: a tiny blocking driver over `std::net::TcpStream` on 127.0.0.1,
//! to show the sans-IO session works unchanged between a kernel socket pair. (Driver wiring in
//! remora-std / remora-uring comes separately; this is not a driver.)

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use common::*;
use remora_core::{CloseReason, Event, Instant};
use remora_tls::{ServerMode, ServerTls, Session, TlsError};

/// Every test's wall-clock bound.
const LIMIT: Duration = Duration::from_secs(10);

/// A monotonic clock in the core's terms.
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.0.elapsed().as_nanos() as u64)
    }
}

/// Drives `session` over a blocking `stream` until `done` says so (or the connection closed
/// and everything was flushed), handing each event to `on_event`. Panics past [`LIMIT`].
fn drive(
    stream: &mut TcpStream,
    session: &mut Session,
    mut on_event: impl FnMut(&mut Session, Event),
    done: impl Fn(&Session) -> bool,
) {
    let clock = Clock(std::time::Instant::now());
    stream
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    loop {
        assert!(
            clock.0.elapsed() < LIMIT,
            "the exchange did not finish in time"
        );
        // 1. write
        while let Some(bytes) = session.poll_transmit() {
            match stream.write(bytes) {
                Ok(n) if n > 0 => session.handle_written(n),
                _ => {
                    session.handle_disconnect();
                    break;
                }
            }
        }
        // 2. events (answers go back to step 1)
        let mut any = false;
        while let Some(event) = session.poll_event() {
            any = true;
            on_event(session, event);
        }
        if any {
            continue;
        }
        if done(session) || (session.is_closed() && session.poll_transmit().is_none()) || eof {
            return;
        }
        // 3. timer
        let now = clock.now();
        if session.poll_timeout().is_some_and(|t| t <= now) {
            session.handle_timeout(now);
            continue;
        }
        // read
        match stream.read(&mut buf) {
            Ok(0) => {
                eof = true;
                session.handle_disconnect();
            }
            Ok(n) => session.handle_input(&buf[..n], clock.now()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                eof = true;
                session.handle_disconnect();
            }
        }
    }
}

/// Accepts one connection within [`LIMIT`].
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let start = std::time::Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(start.elapsed() < LIMIT, "no client came");
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Serves one connection with an echo handler until it closes; returns the session.
fn serve_one(listener: TcpListener, tls: ServerTls) -> thread::JoinHandle<Session> {
    thread::spawn(move || {
        let mut stream = accept(&listener);
        let mut session = Session::server(conn(), &tls, Instant::from_nanos(0) + LIMIT);
        let mut seen = Vec::new();
        drive(
            &mut stream,
            &mut session,
            |s, e| {
                if let Event::Request { request, command } = e {
                    let body = command.body_bytes();
                    s.send_response(request, command.response(0).with_body(body))
                        .unwrap();
                } else {
                    seen.push(e);
                }
            },
            |_| false,
        );
        session
    })
}

/// Sends `n` requests, waits for every response, then closes; returns the bodies received.
fn call_n(stream: &mut TcpStream, session: &mut Session, n: usize) -> Vec<Vec<u8>> {
    let t = Instant::ZERO;
    let ids: Vec<_> = (0..n)
        .map(|i| {
            session
                .send_request(
                    remora_core::Command::request(105).with_body(format!("req {i}").into_bytes()),
                    t + LIMIT,
                    t,
                )
                .unwrap()
        })
        .collect();
    let mut bodies = vec![Vec::new(); n];
    let answered = std::cell::Cell::new(0usize);
    drive(
        stream,
        session,
        |_, e| match e {
            Event::Response { id, response, .. } => {
                let i = ids.iter().position(|x| *x == id).unwrap();
                bodies[i] = response.body().to_vec();
                answered.set(answered.get() + 1);
            }
            other => panic!("client got {other:?}"),
        },
        |_| answered.get() == n,
    );
    assert_eq!(answered.get(), n);
    // Close: drive() returns once the close (a TLS close_notify) is flushed.
    session.close();
    drive(stream, session, |_, _| {}, |_| false);
    bodies
}

#[test]
fn a_tls_exchange_over_a_loopback_socket() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve_one(listener, pki.server_tls(ServerMode::Enforcing));

    let mut stream = TcpStream::connect(addr).unwrap();
    let mut session = Session::client(
        conn(),
        &pki.client_tls(),
        &addr.ip().to_string(),
        Instant::ZERO + LIMIT,
    )
    .unwrap();
    let bodies = call_n(&mut stream, &mut session, 50);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body, format!("req {i}").as_bytes());
    }
    assert!(session.is_tls());
    drop(stream);

    let server = server.join().unwrap();
    assert!(server.is_tls());
    assert_eq!(server.connection().stats().requests_received, 50);
    assert_eq!(server.tls_error(), None);
    assert_eq!(
        server.connection().close_reason(),
        Some(CloseReason::ConnectionLost)
    );
}

#[test]
fn permissive_serves_a_plaintext_socket_and_enforcing_refuses_one() {
    let pki = Pki::new();
    for (mode, served) in [
        (ServerMode::Permissive, true),
        (ServerMode::Enforcing, false),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_one(listener, pki.server_tls(mode));
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut session = Session::plain(conn());
        if served {
            let bodies = call_n(&mut stream, &mut session, 3);
            assert_eq!(bodies[2], b"req 2");
        } else {
            let id = session
                .send_request(request(b"x"), Instant::ZERO + LIMIT, Instant::ZERO)
                .unwrap();
            let mut failed = None;
            drive(
                &mut stream,
                &mut session,
                |_, e| {
                    if let Event::Failed { id: got, error, .. } = e {
                        assert_eq!(got, id);
                        failed = Some(error);
                    }
                },
                |_| false,
            );
            // A plaintext client cannot know why; it sees the connection end.
            assert_eq!(
                failed.map(|e| e.closed),
                Some(Some(CloseReason::ConnectionLost))
            );
        }
        drop(stream);
        let server = server.join().unwrap();
        if served {
            assert!(!server.is_tls());
            assert_eq!(server.connection().stats().requests_received, 3);
        } else {
            assert_eq!(
                server.tls_error(),
                Some(&TlsError::PlaintextPeer { first_byte: 0 })
            );
        }
    }
}
