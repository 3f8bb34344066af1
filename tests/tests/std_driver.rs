//! The blocking std driver, client against server over loopback, and against raw sockets.
//! Every server binds 127.0.0.1:0; every wait is bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use remora_core::{codes, Codec, Command, Config, Decoded, SerializeType};
use remora_std::{Client, ClientConfig, Error, Mode, NotSupported, Server, ServerConfig};

const SECOND: Duration = Duration::from_secs(1);

/// Answers SUCCESS with the request's body and ext fields.
fn echo(request: Command) -> Command {
    let mut response = request
        .response(codes::SUCCESS)
        .with_body(request.body_bytes());
    response.set_ext_fields(request.ext_fields().to_ext_fields());
    response
}

fn echo_server() -> Server {
    Server::bind("127.0.0.1:0", echo).unwrap()
}

fn client(server: &Server, config: ClientConfig) -> Client {
    Client::connect(server.local_addr(), config).unwrap()
}

/// A server whose handler sleeps `delay` before echoing.
fn slow_server(delay: Duration, config: ServerConfig) -> Server {
    Server::bind_with(
        "127.0.0.1:0",
        move |request: Command| {
            std::thread::sleep(delay);
            echo(request)
        },
        config,
    )
    .unwrap()
}

#[test]
fn many_threads_share_one_connection_without_cross_talk() {
    let server = echo_server();
    let client = client(&server, ClientConfig::default());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let ty = if i % 2 == 0 {
                        SerializeType::Json
                    } else {
                        SerializeType::RocketMq
                    };
                    let tag = format!("t{t}-c{i}");
                    let request = Command::request(100)
                        .with_ext("tag", tag.as_str())
                        .with_body(tag.clone().into_bytes())
                        .with_serialize_type(ty);
                    let response = client.call(request, 5 * SECOND).unwrap();
                    assert_eq!(response.code, codes::SUCCESS);
                    assert_eq!(response.body(), tag.as_bytes());
                    assert_eq!(response.ext("tag").unwrap(), tag.as_str());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(client.connections(), 1);
    assert_eq!(server.connections(), 1);
    client.close();
}

#[test]
fn timeouts_fire_and_say_the_request_was_written() {
    let server = slow_server(Duration::from_millis(500), ServerConfig::default());
    let client = client(&server, ClientConfig::default());
    let started = Instant::now();
    let err = client
        .call(Command::request(1), Duration::from_millis(50))
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { written: true }), "{err}");
    assert!(err.may_have_reached_peer());
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(450),
        "{took:?}"
    );
    client.close();
}

#[test]
fn killed_server_fails_every_pending_call_promptly() {
    let server = slow_server(
        Duration::from_secs(3),
        ServerConfig {
            drain_timeout: Duration::ZERO,
            ..ServerConfig::default()
        },
    );
    let client = client(&server, ClientConfig::default());
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                let outcome = client.call(Command::request(1), 20 * SECOND);
                (outcome, Instant::now())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    drop(server); // stops with no drain: connections are cut
    for call in calls {
        let (outcome, ended) = call.join().unwrap();
        let err = outcome.unwrap_err();
        assert!(
            matches!(err, Error::ConnectionLost { written: true }),
            "{err}"
        );
        let after = ended.saturating_duration_since(killed);
        assert!(
            after < SECOND,
            "a call failed only {after:?} after the kill"
        );
    }
    client.close();
}

#[test]
fn max_waiters_refuses_at_once_without_writing() {
    let server = slow_server(Duration::from_millis(400), ServerConfig::default());
    let config = ClientConfig {
        connection: Config {
            max_waiters: 2,
            ..Config::default()
        },
        ..ClientConfig::default()
    };
    let client = client(&server, config);
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || client.call(Command::request(1), 5 * SECOND))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let err = client.call(Command::request(1), 5 * SECOND).unwrap_err();
    assert!(matches!(err, Error::TooManyInFlight), "{err}");
    assert!(err.is_safe_to_retry());
    assert!(started.elapsed() < Duration::from_millis(100));
    for b in busy {
        b.join().unwrap().unwrap();
    }
    client.close();
}

#[test]
fn client_reconnects_after_the_server_comes_back() {
    let server = echo_server();
    let addr = server.local_addr();
    let config = ClientConfig {
        reconnect: remora_core::backoff::Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            ..Default::default()
        },
        ..ClientConfig::default()
    };
    let client = Client::connect(addr, config).unwrap();
    client.call(Command::request(1), SECOND).unwrap();
    drop(server);
    // While it is down: errors that say nothing was written (or the connection was lost).
    let mut saw_down = false;
    for _ in 0..20 {
        match client.call(Command::request(1), SECOND) {
            Err(e) => {
                saw_down = true;
                if !matches!(e, Error::ConnectionLost { .. }) {
                    assert!(!e.may_have_reached_peer(), "{e}");
                }
            }
            Ok(_) => panic!("call succeeded with the server down"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(saw_down);
    let _server = Server::bind(addr, echo).unwrap();
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        match client.call(Command::request(1).with_body(&b"back"[..]), SECOND) {
            Ok(response) => {
                assert_eq!(response.body(), b"back");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    client.close();
}

#[test]
fn oneway_is_handled_and_never_answered() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::bind("127.0.0.1:0", move |request: Command| {
        tx.lock().unwrap().send(request.body_bytes()).unwrap();
        echo(request)
    })
    .unwrap();
    // Over a raw socket, so any answer would be seen.
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    let mut frame = BytesMut::new();
    Codec::default()
        .encode(&Command::oneway(34).with_body(&b"ping"[..]), &mut frame)
        .unwrap();
    raw.write_all(&frame).unwrap();
    assert_eq!(&rx.recv_timeout(2 * SECOND).unwrap()[..], b"ping");
    raw.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    match raw.read(&mut buf) {
        Err(e) => assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        Ok(n) => panic!("server answered a oneway with {n} bytes"),
    }
    // And through the client API.
    let client = client(&server, ClientConfig::default());
    client
        .oneway(Command::oneway(34).with_body(&b"pong"[..]))
        .unwrap();
    assert_eq!(&rx.recv_timeout(2 * SECOND).unwrap()[..], b"pong");
    client.close();
}

#[test]
fn server_can_send_requests_to_a_client_handler() {
    let server = echo_server();
    let client = Client::connect_with_handler(
        server.local_addr(),
        ClientConfig::default(),
        |request: Command| request.response(codes::SUCCESS).with_remark("client here"),
    )
    .unwrap();
    let deadline = Instant::now() + 2 * SECOND;
    let peer = loop {
        if let Some(p) = server.peers().pop() {
            break p;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    };
    let response = peer.call(Command::request(39), 2 * SECOND).unwrap();
    assert_eq!(response.remark().unwrap(), "client here");
    // A client without a handler answers REQUEST_CODE_NOT_SUPPORTED.
    let plain = Client::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let closed = peer.addr();
    client.close();
    let deadline = Instant::now() + 2 * SECOND;
    let peer = loop {
        // The closed client's connection may still be listed until the server sees it end.
        let fresh = server.peers().into_iter().find(|p| p.addr() != closed);
        if let Some(p) = fresh.filter(|p| !p.is_closed()) {
            break p;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    };
    let response = peer.call(Command::request(4242), 2 * SECOND).unwrap();
    assert_eq!(response.code, codes::REQUEST_CODE_NOT_SUPPORTED);
    plain.close();
}

#[test]
fn corrupt_bytes_close_only_that_connection() {
    let server = echo_server();
    let client = client(&server, ClientConfig::default());
    client.call(Command::request(1), SECOND).unwrap();
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .unwrap();
    raw.set_read_timeout(Some(2 * SECOND)).unwrap();
    let mut buf = [0u8; 16];
    let n = raw.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the corrupt connection is closed without an answer");
    for i in 0..10 {
        let response = client
            .call(Command::request(1).with_body(vec![i]), SECOND)
            .unwrap();
        assert_eq!(response.body(), &[i]);
    }
    client.close();
}

#[test]
fn unknown_codes_get_request_code_not_supported() {
    let server = Server::bind("127.0.0.1:0", NotSupported).unwrap();
    let client = client(&server, ClientConfig::default());
    let response = client.call(Command::request(777), SECOND).unwrap();
    assert_eq!(response.code, codes::REQUEST_CODE_NOT_SUPPORTED);
    assert_eq!(
        response.remark().unwrap(),
        " request type 777 not supported"
    );
    client.close();
}

#[test]
fn overloaded_connection_is_answered_system_busy() {
    let server = slow_server(
        Duration::from_millis(300),
        ServerConfig {
            connection: Config {
                max_incoming: 1,
                ..Config::default()
            },
            ..ServerConfig::default()
        },
    );
    let client = client(&server, ClientConfig::default());
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || client.call(Command::request(1), 5 * SECOND).unwrap().code)
        })
        .collect();
    let codes_seen: Vec<i32> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(codes_seen.contains(&codes::SUCCESS), "{codes_seen:?}");
    assert!(codes_seen.contains(&codes::SYSTEM_BUSY), "{codes_seen:?}");
    client.close();
}

#[test]
fn close_fails_calls_in_flight_and_is_idempotent() {
    let server = slow_server(
        2 * SECOND,
        ServerConfig {
            drain_timeout: Duration::ZERO,
            ..ServerConfig::default()
        },
    );
    let client = client(&server, ClientConfig::default());
    let pending = {
        let client = client.clone();
        std::thread::spawn(move || client.call(Command::request(1), 10 * SECOND))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    client.close();
    client.close();
    let err = pending.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Closed { written: true }), "{err}");
    assert!(started.elapsed() < SECOND);
    assert!(matches!(
        client.call(Command::request(1), SECOND),
        Err(Error::Closed { written: false })
    ));
}

#[test]
fn pool_short_mode_and_idle_expiry() {
    let server = slow_server(Duration::from_millis(100), ServerConfig::default());
    // Pool: concurrent callers spread over up to 3 connections.
    let pooled = client(
        &server,
        ClientConfig {
            pool_size: 3,
            ..ClientConfig::default()
        },
    );
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let c = pooled.clone();
            std::thread::spawn(move || c.call(Command::request(1), 5 * SECOND).unwrap())
        })
        .collect();
    for c in calls {
        c.join().unwrap();
    }
    assert!(
        pooled.connections() >= 2,
        "{} connections",
        pooled.connections()
    );
    pooled.close();

    // Short mode: a connection per call, none kept.
    let short = client(
        &server,
        ClientConfig {
            mode: Mode::Short,
            ..ClientConfig::default()
        },
    );
    short.call(Command::request(1), SECOND).unwrap();
    assert_eq!(short.connections(), 0);
    short.close();

    // Idle expiry: the connection closes when unused, and reopens on demand.
    let idle = client(
        &server,
        ClientConfig {
            mode: Mode::Long {
                idle_timeout: Some(Duration::from_millis(100)),
            },
            ..ClientConfig::default()
        },
    );
    idle.call(Command::request(1), SECOND).unwrap();
    let deadline = Instant::now() + 3 * SECOND;
    while idle.connections() > 0 {
        assert!(Instant::now() < deadline, "idle connection never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    idle.call(Command::request(1), SECOND).unwrap();
    assert_eq!(idle.connections(), 1);
    idle.close();
}

#[test]
fn graceful_stop_drains_requests_in_flight() {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    let server = Server::bind("127.0.0.1:0", move |request: Command| {
        std::thread::sleep(Duration::from_millis(200));
        counter.fetch_add(1, Ordering::SeqCst);
        echo(request)
    })
    .unwrap();
    let client = client(&server, ClientConfig::default());
    let pending = {
        let client = client.clone();
        std::thread::spawn(move || client.call(Command::request(1), 5 * SECOND))
    };
    std::thread::sleep(Duration::from_millis(50));
    server.stop();
    assert!(
        pending.join().unwrap().is_ok(),
        "the request in flight was answered before the stop"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
    client.close();
}

#[test]
fn server_to_client_request_from_a_raw_broker() {
    // A "broker" on a raw socket sends a request to the client and reads the answer.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let broker = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(2 * SECOND)).unwrap();
        let codec = Codec::default();
        let mut frame = BytesMut::new();
        codec
            .encode(&Command::request(39).with_opaque(-5), &mut frame)
            .unwrap();
        sock.write_all(&frame).unwrap();
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Decoded::Command(cmd) = codec.decode(&mut buf).unwrap() {
                return cmd;
            }
            let n = sock.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
    });
    let client = Client::connect_with_handler(addr, ClientConfig::default(), |r: Command| {
        r.response(codes::SUCCESS).with_body(&b"state"[..])
    })
    .unwrap();
    let answer = broker.join().unwrap();
    assert!(answer.is_response());
    assert_eq!((answer.opaque, answer.body()), (-5, &b"state"[..]));
    client.close();
}

/// `call_then` from one thread: each continuation starts the next call, so `IN_FLIGHT` calls
/// stay in flight with no thread per call; every continuation runs once, with its own answer.
#[test]
fn call_then_keeps_many_calls_in_flight_from_one_thread() {
    const IN_FLIGHT: usize = 64;
    const CALLS: usize = 3_000;
    let server = echo_server();
    let client = client(&server, ClientConfig::default());
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<Command, Error>)>();
    let started = Arc::new(AtomicUsize::new(0));

    fn start(
        client: &Client,
        started: &Arc<AtomicUsize>,
        done: &mpsc::Sender<(usize, Result<Command, Error>)>,
    ) {
        let n = started.fetch_add(1, Ordering::Relaxed);
        if n >= CALLS {
            return;
        }
        let ty = if n % 2 == 0 {
            SerializeType::Json
        } else {
            SerializeType::RocketMq
        };
        let request = Command::request(7)
            .with_serialize_type(ty)
            .with_body(n.to_le_bytes().to_vec());
        let (next_client, next_started, next_done) =
            (client.clone(), Arc::clone(started), done.clone());
        client
            .call_then(request, 10 * SECOND, move |outcome| {
                next_done.send((n, outcome)).unwrap();
                start(&next_client, &next_started, &next_done);
            })
            .unwrap();
    }
    for _ in 0..IN_FLIGHT {
        start(&client, &started, &done_tx);
    }
    let mut seen = vec![false; CALLS];
    for _ in 0..CALLS {
        let (n, outcome) = done_rx.recv_timeout(20 * SECOND).expect("every call ends");
        let response = outcome.unwrap();
        assert_eq!(response.code, codes::SUCCESS);
        assert_eq!(
            response.body(),
            &n.to_le_bytes()[..],
            "call {n} got another's answer"
        );
        assert!(
            !std::mem::replace(&mut seen[n], true),
            "call {n} ended twice"
        );
    }
    assert!(
        done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "no extra outcome"
    );
    assert_eq!(client.connections(), 1);
    client.close();
}

/// A `call_then` call nobody waits for still times out (the reader wakes for its deadline),
/// once, saying it was written; a panicking continuation leaves the connection working.
#[test]
fn call_then_times_out_and_survives_a_panicking_continuation() {
    let server = slow_server(Duration::from_millis(600), ServerConfig::default());
    let client = client(&server, ClientConfig::default());
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let tx2 = tx.clone();
    client
        .call_then(
            Command::request(1),
            Duration::from_millis(100),
            move |outcome| {
                tx2.send(("timed", outcome, Instant::now())).unwrap();
            },
        )
        .unwrap();
    let (_, outcome, ended) = rx
        .recv_timeout(5 * SECOND)
        .expect("the timeout is reported");
    let err = outcome.unwrap_err();
    assert!(matches!(err, Error::Timeout { written: true }), "{err}");
    let took = ended - started;
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(550),
        "{took:?}"
    );

    client
        .call_then(Command::request(1), 5 * SECOND, |_| {
            panic!("a continuation that panics")
        })
        .unwrap();
    client
        .call_then(Command::request(2), 5 * SECOND, move |outcome| {
            tx.send(("after", outcome, Instant::now())).unwrap();
        })
        .unwrap();
    let (what, outcome, _) = rx.recv_timeout(5 * SECOND).expect("the next call ends");
    assert_eq!(what, "after");
    assert_eq!(outcome.unwrap().code, codes::SUCCESS);
    assert!(
        rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "each outcome once"
    );
    client.close();
}

/// Calls in flight when the server dies end once each, with an error saying they were written;
/// a call that cannot be sent returns its error and its continuation never runs.
#[test]
fn call_then_ends_every_call_when_the_connection_is_lost() {
    let server = slow_server(
        Duration::from_secs(3),
        ServerConfig {
            drain_timeout: Duration::ZERO,
            ..ServerConfig::default()
        },
    );
    let config = ClientConfig {
        connection: Config {
            max_waiters: 6,
            ..Config::default()
        },
        ..ClientConfig::default()
    };
    let client = client(&server, config);
    let (tx, rx) = mpsc::channel();
    for i in 0..6 {
        let tx = tx.clone();
        client
            .call_then(Command::request(1), 20 * SECOND, move |outcome| {
                tx.send((i, outcome, Instant::now())).unwrap();
            })
            .unwrap();
    }
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = Arc::clone(&ran);
    let err = client
        .call_then(Command::request(1), 20 * SECOND, move |_| {
            ran2.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap_err();
    assert!(matches!(err, Error::TooManyInFlight), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    drop(server);
    let mut ended = [false; 6];
    for _ in 0..6 {
        let (i, outcome, at) = rx.recv_timeout(5 * SECOND).expect("every call ends");
        let after = at.saturating_duration_since(killed);
        assert!(
            after < SECOND,
            "a call failed only {after:?} after the kill"
        );
        let err = outcome.unwrap_err();
        assert!(
            matches!(err, Error::ConnectionLost { written: true }),
            "{err}"
        );
        assert!(
            !std::mem::replace(&mut ended[i], true),
            "call {i} ended twice"
        );
    }
    drop(tx);
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(
        ran.load(Ordering::Relaxed),
        0,
        "a refused call's continuation never runs"
    );
    client.close();
}

/// `Dispatch::Inline`: requests are handled on the connection's reader, in order; many threads'
/// calls, `call_then` calls and oneways are all answered (or handled) once; a slow inline
/// handler holds up only its own connection.
#[test]
fn inline_dispatch_answers_on_the_reader_and_holds_up_only_its_connection() {
    let oneways = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&oneways);
    let server = Server::bind_with(
        "127.0.0.1:0",
        move |request: Command| {
            if request.code == 9 {
                std::thread::sleep(2 * SECOND);
            }
            if request.is_oneway() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            echo(request)
        },
        ServerConfig {
            workers: 1,
            dispatch: remora_std::Dispatch::Inline,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let client = client(&server, ClientConfig::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let body = format!("t{t}-{i}");
                    let response = client
                        .call(Command::request(1).with_body(body.clone()), 10 * SECOND)
                        .unwrap();
                    assert_eq!(response.body(), body.as_bytes());
                }
            })
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    for i in 0..50u32 {
        let tx = tx.clone();
        client
            .call_then(
                Command::request(2).with_body(i.to_le_bytes().to_vec()),
                10 * SECOND,
                move |outcome| tx.send((i, outcome)).unwrap(),
            )
            .unwrap();
        client.oneway(Command::request(3)).unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    let mut answered = [false; 50];
    for _ in 0..50 {
        let (i, outcome) = rx.recv_timeout(10 * SECOND).expect("every call_then ends");
        assert_eq!(outcome.unwrap().body(), &i.to_le_bytes()[..]);
        assert!(!std::mem::replace(&mut answered[i as usize], true));
    }
    let deadline = Instant::now() + 5 * SECOND;
    while oneways.load(Ordering::Relaxed) < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        oneways.load(Ordering::Relaxed),
        50,
        "every oneway handled once"
    );

    // A slow request on one connection; another connection's call meanwhile is not held up.
    let slow = client.clone();
    let slow = std::thread::spawn(move || {
        let outcome = slow.call(Command::request(9), 10 * SECOND);
        (outcome, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(100));
    let other = Client::connect(server.local_addr(), ClientConfig::default()).unwrap();
    other.call(Command::request(1), 5 * SECOND).unwrap();
    let other_done = Instant::now();
    let (outcome, slow_done) = slow.join().unwrap();
    assert_eq!(outcome.unwrap().code, codes::SUCCESS);
    assert!(
        other_done < slow_done,
        "another connection's call waited for a slow inline handler"
    );
    other.close();
    client.close();
}
