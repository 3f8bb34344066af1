//! `remora_uring::EventLoop` (the one-loop-per-thread driver under `Server` and the bench) in
//! each of its receive modes: provided-buffer ring with single-shot receives (the default), with
//! multishot receives, and each connection's own buffer (the fallback for kernels without buffer
//! rings). Bodies that span many provided buffers and partial sends must come back byte for
//! byte: a buffer given back to the kernel too early, or a send buffer freed before its
//! completion, corrupts them. Every server binds 127.0.0.1:0; every wait is bounded.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use remora_core::{codes, CallError, Command, Config, NotSupported};
use remora_uring::{Completion, EventLoop, LoopConfig, Server, ServerConfig};

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
