//! `remora_uring::EventLoop` (the one-loop-per-thread driver under `Server` and the bench) in
//! each of its receive modes: provided-buffer ring with single-shot receives (the default), with
//! multishot receives, and each connection's own buffer (the fallback for kernels without buffer
//! rings). Bodies that span many provided buffers and partial sends must come back byte for
//! byte: a buffer given back to the kernel too early, or a send buffer freed before its
//! completion, corrupts them. Every server binds 127.0.0.1:0; every wait is bounded.

use std::cell::RefCell;
use std::io::Read;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use remora_core::{codes, CallError, Command, Config, NotSupported};
use remora_uring::{Completion, ConnId, EventLoop, LoopConfig, RawHandler, Server, ServerConfig};

fn echo(request: Command) -> Command {
    let body = request.body_bytes();
    request.response(codes::SUCCESS).with_body(body)
}

fn modes() -> [(&'static str, LoopConfig); 3] {
    let small = LoopConfig {
        // Few, small buffers: big bodies span many of them and the ring runs dry under load.
        buffers: 8,
        buffer_size: 4096,
        ..LoopConfig::default()
    };
    [
        ("select", small),
        (
            "multishot",
            LoopConfig {
                multishot_recv: true,
                ..small
            },
        ),
        (
            "own",
            LoopConfig {
                single_shot: true,
                ..small
            },
        ),
    ]
}

/// A body whose every byte depends on its call and position.
fn body(call: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| (call.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Turns `lp` until `n` completions arrived or `limit` passed.
fn collect(lp: &mut EventLoop, n: usize, limit: Duration) -> Vec<Completion> {
    let give_up = Instant::now() + limit;
    let mut done = Vec::new();
    while done.len() < n && Instant::now() < give_up {
        lp.turn(Duration::from_millis(50), &mut done).unwrap();
    }
    done
}

#[test]
fn every_mode_echoes_bodies_byte_for_byte_across_buffers_and_partial_sends() {
    for (name, io) in modes() {
        let server = Server::bind_with(
            "127.0.0.1:0",
            Arc::new(echo),
            ServerConfig {
                threads: 2,
                io,
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let mut lp = EventLoop::new(Config::default(), io, Arc::new(NotSupported)).unwrap();
        assert_eq!(lp.uses_buffer_ring(), name != "own", "{name}");
        let conns: Vec<_> = (0..4)
            .map(|_| {
                lp.connect(server.local_addr(), Duration::from_secs(3))
                    .unwrap()
            })
            .collect();
        // Sizes from empty to 1 MiB (far beyond socket buffers: partial sends), all in flight
        // at once on four connections.
        let sizes = [0usize, 1, 100, 4095, 4096, 4097, 70_000, 1 << 20];
        let mut expected = Vec::new();
        for round in 0..3u64 {
            for (i, &len) in sizes.iter().enumerate() {
                let call = round * 100 + i as u64;
                let conn = conns[(call % 4) as usize];
                let request = Command::request(codes::SEND_MESSAGE_V2).with_body(body(call, len));
                lp.call(conn, request, Duration::from_secs(20), call)
                    .unwrap();
                expected.push(call);
            }
        }
        let done = collect(&mut lp, expected.len(), Duration::from_secs(30));
        assert_eq!(done.len(), expected.len(), "{name}: completions");
        for c in &done {
            let call = c.token;
            let len = sizes[(call % 100) as usize];
            let response = c.outcome.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(response.code, codes::SUCCESS, "{name}");
            assert!(
                response.body() == body(call, len),
                "{name}: body of call {call}"
            );
        }
        let mut tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
        tokens.sort_unstable();
        expected.sort_unstable();
        assert_eq!(tokens, expected, "{name}: each call completes exactly once");
        drop(lp);
        let stats = server.stats();
        assert_eq!(stats.requests, expected.len() as u64, "{name}");
    }
}

#[test]
fn calls_time_out_and_fail_when_the_peer_goes() {
    for (name, io) in modes() {
        // A peer that accepts, reads a little, never answers, and then goes away.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            std::thread::sleep(Duration::from_millis(400));
            drop(stream);
        });
        let mut lp = EventLoop::new(Config::default(), io, Arc::new(NotSupported)).unwrap();
        let conn = lp.connect(addr, Duration::from_secs(3)).unwrap();
        let started = Instant::now();
        lp.call(conn, Command::request(1), Duration::from_millis(100), 1)
            .unwrap();
        lp.call(conn, Command::request(2), Duration::from_secs(20), 2)
            .unwrap();
        let first = collect(&mut lp, 1, Duration::from_secs(5));
        assert_eq!(first.len(), 1, "{name}");
        assert_eq!(first[0].token, 1, "{name}");
        assert!(
            matches!(first[0].outcome, Err(CallError::Timeout { .. })),
            "{name}: {:?}",
            first[0].outcome
        );
        assert!(started.elapsed() >= Duration::from_millis(100), "{name}");
        // The peer closes: the other call fails at once, long before its 20 s deadline.
        let second = collect(&mut lp, 1, Duration::from_secs(5));
        assert_eq!(second.len(), 1, "{name}");
        assert_eq!(second[0].token, 2, "{name}");
        let err = second[0].outcome.as_ref().unwrap_err();
        assert!(err.may_have_reached_peer(), "{name}: {err:?}");
        assert!(!matches!(err, CallError::Timeout { .. }), "{name}: {err:?}");
        assert_eq!(lp.calls_in_flight(), 0, "{name}");
        // A call on the closed connection is refused as never sent.
        let refused = lp.call(conn, Command::request(3), Duration::from_secs(1), 3);
        assert!(
            matches!(refused, Err(CallError::Closed { written: false })),
            "{name}"
        );
        peer.join().unwrap();
    }
}

#[test]
fn closing_the_loop_completes_every_call_once() {
    for (name, io) in modes() {
        let server = Server::bind_with(
            "127.0.0.1:0",
            Arc::new(echo),
            ServerConfig {
                threads: 1,
                io,
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let mut lp = EventLoop::new(Config::default(), io, Arc::new(NotSupported)).unwrap();
        let conn = lp
            .connect(server.local_addr(), Duration::from_secs(3))
            .unwrap();
        for t in 0..100u64 {
            lp.call(conn, Command::request(t as i32), Duration::from_secs(5), t)
                .unwrap();
        }
        // Closed before anything was submitted: every call fails, never written.
        lp.close(conn);
        let mut done = Vec::new();
        lp.turn(Duration::ZERO, &mut done).unwrap();
        assert_eq!(done.len(), 100, "{name}");
        assert!(done
            .iter()
            .all(|c| matches!(c.outcome, Err(CallError::Closed { written: false }))));
        assert_eq!(lp.calls_in_flight(), 0, "{name}");
    }
}

/// A raw client's view: the bytes that came back on each connection, and which closed.
#[derive(Default)]
struct Collected {
    bytes: std::collections::HashMap<usize, Vec<u8>>,
    closed: Vec<usize>,
}

struct Collector(Rc<RefCell<Collected>>);

impl RawHandler for Collector {
    fn on_input(&mut self, conn: ConnId, input: &[u8], _output: &mut BytesMut) {
        let mut c = self.0.borrow_mut();
        c.bytes
            .entry(conn.index())
            .or_default()
            .extend_from_slice(input);
    }

    fn on_closed(&mut self, conn: ConnId) {
        self.0.borrow_mut().closed.push(conn.index());
    }
}

#[test]
fn the_loops_byte_echo_returns_every_byte_in_order_in_every_mode() {
    for (name, io) in modes() {
        let mut server = Server::bind_echo(
            "127.0.0.1:0",
            ServerConfig {
                threads: 2,
                io,
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let addr = server.local_addr();
        // A raw client on a loop of its own (the bench's raw load generator's path).
        let seen = Rc::new(RefCell::new(Collected::default()));
        let mut lp = EventLoop::new(Config::default(), io, Arc::new(NotSupported)).unwrap();
        lp.set_raw(Box::new(Collector(Rc::clone(&seen))));
        let conns: Vec<ConnId> = (0..4)
            .map(|_| lp.connect_raw(addr, Duration::from_secs(3)).unwrap())
            .collect();
        // Many provided buffers' worth per connection (the test's buffers are 4 KiB, 8 of
        // them), sent in pieces of several sizes; a different pattern on each connection.
        let mut sent: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
        for (i, &conn) in conns.iter().enumerate() {
            for (k, len) in [1usize, 7, 4096, 4097, 100_000, 300_000]
                .into_iter()
                .enumerate()
            {
                let piece = body((i * 10 + k) as u64, len);
                lp.send_raw(conn, &piece).unwrap();
                sent[i].extend_from_slice(&piece);
            }
        }
        let total: usize = sent.iter().map(Vec::len).sum();
        let give_up = Instant::now() + Duration::from_secs(30);
        let mut none = Vec::new();
        while seen.borrow().bytes.values().map(Vec::len).sum::<usize>() < total
            && Instant::now() < give_up
        {
            lp.turn(Duration::from_millis(50), &mut none).unwrap();
        }
        for (i, conn) in conns.iter().enumerate() {
            let got = seen
                .borrow()
                .bytes
                .get(&conn.index())
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                got.len(),
                sent[i].len(),
                "{name}: bytes back on connection {i}"
            );
            assert!(
                got == sent[i],
                "{name}: connection {i} echoed byte for byte"
            );
        }
        assert!(none.is_empty(), "{name}: raw connections complete no calls");
        // A plain std client gets the same.
        let mut std_client = std::net::TcpStream::connect(addr).unwrap();
        std_client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let piece = body(99, 50_000);
        std::io::Write::write_all(&mut std_client, &piece).unwrap();
        let mut back = vec![0u8; piece.len()];
        std_client.read_exact(&mut back).unwrap();
        assert!(back == piece, "{name}: std client's bytes echoed");
        // Stopping the server closes its connections: the loop's handler hears of each.
        server.stop();
        let give_up = Instant::now() + Duration::from_secs(10);
        while seen.borrow().closed.len() < conns.len() && Instant::now() < give_up {
            lp.turn(Duration::from_millis(50), &mut none).unwrap();
        }
        let mut closed = seen.borrow().closed.clone();
        closed.sort_unstable();
        let mut expected: Vec<usize> = conns.iter().map(|c| c.index()).collect();
        expected.sort_unstable();
        assert_eq!(
            closed, expected,
            "{name}: each connection's end is reported once"
        );
        assert!(
            matches!(
                lp.send_raw(conns[0], b"x"),
                Err(CallError::Closed { written: false })
            ),
            "{name}: a closed raw connection refuses bytes"
        );
    }
}

#[test]
fn a_raw_connection_needs_a_raw_handler_and_a_protocol_connection_takes_no_raw_bytes() {
    let server = Server::bind_echo("127.0.0.1:0", ServerConfig::default()).unwrap();
    let mut lp = EventLoop::new(
        Config::default(),
        LoopConfig::default(),
        Arc::new(NotSupported),
    )
    .unwrap();
    let err = lp
        .connect_raw(server.local_addr(), Duration::from_secs(3))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let conn = lp
        .connect(server.local_addr(), Duration::from_secs(3))
        .unwrap();
    assert!(matches!(
        lp.send_raw(conn, b"abc"),
        Err(CallError::Closed { written: false })
    ));
}

#[test]
fn more_answers_in_one_turn_than_provided_buffers_are_all_received() {
    // Two provided buffers on the client's loop, 64 connections each with a call in flight:
    // the answers arrive while the loop is not looking, so most receives of the next turn find
    // the ring empty (ENOBUFS) and must be armed again until every answer is in.
    let server = Server::bind_with(
        "127.0.0.1:0",
        Arc::new(echo),
        ServerConfig {
            threads: 1,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let io = LoopConfig {
        buffers: 2,
        buffer_size: 4096,
        ..LoopConfig::default()
    };
    let mut lp = EventLoop::new(Config::default(), io, Arc::new(NotSupported)).unwrap();
    assert!(lp.uses_buffer_ring());
    let conns: Vec<_> = (0..64)
        .map(|_| {
            lp.connect(server.local_addr(), Duration::from_secs(3))
                .unwrap()
        })
        .collect();
    let rounds = 5u64;
    let mut done = Vec::new();
    for round in 0..rounds {
        for (i, &conn) in conns.iter().enumerate() {
            let call = round * 1000 + i as u64;
            let request = Command::request(codes::SEND_MESSAGE_V2).with_body(body(call, 300));
            lp.call(conn, request, Duration::from_secs(20), call)
                .unwrap();
        }
        // Submit, then let every answer arrive before the next look.
        lp.turn(Duration::ZERO, &mut done).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let got = collect(&mut lp, conns.len() - done.len(), Duration::from_secs(20));
        done.extend(got);
        assert_eq!(
            done.len(),
            conns.len(),
            "round {round}: every call answered"
        );
        for c in done.drain(..) {
            let response = c.outcome.as_ref().unwrap();
            assert!(response.body() == body(c.token, 300), "call {}", c.token);
        }
    }
    let counts = lp.counts();
    assert!(
        counts.receives_without_buffer > 0,
        "the ring ran dry at least once: {counts:?}"
    );
    assert_eq!(lp.calls_in_flight(), 0);
}

#[test]
fn a_two_thread_server_spreads_its_connections_over_both_loops() {
    // One SO_REUSEPORT listener per thread: the kernel hashes each connection to one of them.
    // All 64 landing on one of two listeners has odds of 2^-63.
    let server = Server::bind_with(
        "127.0.0.1:0",
        Arc::new(echo),
        ServerConfig {
            threads: 2,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let conns: Vec<_> = (0..64)
        .map(|_| std::net::TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut per_thread = server.connections_per_thread();
    while per_thread.iter().sum::<usize>() < conns.len() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
        per_thread = server.connections_per_thread();
    }
    assert_eq!(per_thread.len(), 2);
    assert_eq!(
        per_thread.iter().sum::<usize>(),
        conns.len(),
        "{per_thread:?}"
    );
    assert!(
        per_thread.iter().all(|&n| n > 0),
        "both loops took connections: {per_thread:?}"
    );
}
