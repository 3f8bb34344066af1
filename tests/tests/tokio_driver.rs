//! The tokio driver against itself and against the std and io_uring drivers, and the fault
//! cases: kill mid-flight, timeouts, reconnect, corrupt bytes, server → client requests, busy
//! answers, graceful stop. Every server binds 127.0.0.1:0; every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_core::{codes, CallError, Command, Config, SerializeType};
use remora_tokio::{Client, ClientConfig, Dispatch, Server, ServerConfig};

use remora_tests::scenarios;

const SECOND: Duration = Duration::from_secs(1);

fn echo(request: Command) -> Command {
    let mut response = request
        .response(codes::SUCCESS)
        .with_body(request.body_bytes());
    response.set_ext_fields(request.ext_fields().to_ext_fields());
    response
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A tokio echo server on a runtime of its own (kept alive by the returned pair).
fn tokio_server(config: ServerConfig) -> (tokio::runtime::Runtime, Server) {
    let rt = runtime();
    let server = rt
        .block_on(Server::bind("127.0.0.1:0", echo, config))
        .unwrap();
    (rt, server)
}

fn slow_std_server(delay: Duration) -> remora_std::Server {
    remora_std::Server::bind_with(
        "127.0.0.1:0",
        move |r: Command| {
            std::thread::sleep(delay);
            echo(r)
        },
        remora_std::ServerConfig {
            drain_timeout: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap()
}

/// 16 tasks × 100 calls over a pool of two connections, alternating header types: every
/// response is its own request's.
async fn many_calls(addr: SocketAddr) {
    let client = Client::connect(
        addr,
        ClientConfig {
            pool_size: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let tag = format!("t{t}-c{i}");
                let ty = if i % 2 == 0 {
                    SerializeType::Json
                } else {
                    SerializeType::RocketMq
                };
                let request = Command::request(100)
                    .with_ext("tag", tag.as_str())
                    .with_body(tag.clone().into_bytes())
                    .with_serialize_type(ty);
                let response = client.call(request, 5 * SECOND).await.unwrap();
                assert_eq!(response.body(), tag.as_bytes());
                assert_eq!(response.ext("tag").unwrap(), tag.as_str());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(client.connections() >= 1);
    client.close();
    assert!(matches!(
        client.call(Command::request(1), SECOND).await,
        Err(CallError::Closed { written: false })
    ));
}

#[test]
fn tokio_client_and_server_many_concurrent_calls_without_cross_talk() {
    let (_rt, server) = tokio_server(ServerConfig::default());
    runtime().block_on(many_calls(server.local_addr()));
}

#[test]
fn tokio_client_on_a_current_thread_runtime() {
    let (_rt, server) = tokio_server(ServerConfig::default());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(many_calls(server.local_addr()));
}

#[test]
fn tokio_client_against_std_and_uring_servers() {
    let std_server = remora_std::Server::bind("127.0.0.1:0", echo).unwrap();
    let uring_server = remora_uring::Server::bind_with(
        "127.0.0.1:0",
        Arc::new(echo),
        remora_uring::ServerConfig {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = runtime();
    rt.block_on(many_calls(std_server.local_addr()));
    rt.block_on(many_calls(uring_server.local_addr()));
}

#[test]
fn std_and_uring_clients_against_tokio_server() {
    let (_rt, server) = tokio_server(ServerConfig::default());
    let addr = server.local_addr();
    let std_client = remora_std::Client::connect(addr, Default::default()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = std_client.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let body = format!("{t}/{i}").into_bytes();
                    let r = client
                        .call(Command::request(1).with_body(body.clone()), 5 * SECOND)
                        .unwrap();
                    assert_eq!(r.body(), &body[..]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std_client.close();
    tokio_uring::start(async move {
        let client = remora_uring::LocalClient::connect(addr, Default::default())
            .await
            .unwrap();
        for i in 0..200u32 {
            let body = i.to_be_bytes().to_vec();
            let r = client
                .call(
                    Command::request(1)
                        .with_body(body.clone())
                        .with_serialize_type(SerializeType::RocketMq),
                    5 * SECOND,
                )
                .await
                .unwrap();
            assert_eq!(r.body(), &body[..]);
        }
        client.close();
    });
}

#[test]
fn timeouts_and_killed_server() {
    let server = slow_std_server(Duration::from_millis(600));
    let addr = server.local_addr();
    runtime().block_on(async move {
        let client = Client::connect(addr, ClientConfig::default()).await;
        scenarios::timeouts_and_killed_server(client.unwrap(), server).await;
    });
}

#[test]
fn close_fails_calls_in_flight_saying_they_were_written() {
    let server = slow_std_server(Duration::from_millis(500));
    let addr = server.local_addr();
    runtime().block_on(async move {
        let client = Client::connect(addr, ClientConfig::default())
            .await
            .unwrap();
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.call(Command::request(1), 10 * SECOND).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.close();
        for call in calls {
            let err = call.await.unwrap().unwrap_err();
            assert!(matches!(err, CallError::Closed { written: true }), "{err}");
        }
    });
}

#[test]
fn reconnects_after_the_server_comes_back() {
    let server = remora_std::Server::bind("127.0.0.1:0", echo).unwrap();
    let addr = server.local_addr();
    runtime().block_on(async move {
        let config = ClientConfig {
            reconnect: remora_core::backoff::Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = Client::connect(addr, config).await.unwrap();
        let rebind = || remora_std::Server::bind(addr, echo).unwrap();
        scenarios::reconnects_after_the_server_comes_back(client, server, rebind).await;
    });
}

#[test]
fn corrupt_bytes_close_only_that_connection_and_unknown_codes_are_refused() {
    let rt = runtime();
    let server = rt
        .block_on(Server::bind(
            "127.0.0.1:0",
            remora_core::NotSupported,
            ServerConfig::default(),
        ))
        .unwrap();
    let good = remora_std::Client::connect(server.local_addr(), Default::default()).unwrap();
    let r = good.call(Command::request(4242), SECOND).unwrap();
    assert_eq!(r.code, codes::REQUEST_CODE_NOT_SUPPORTED);
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.write_all(&[0x7f, 0xff, 0xff, 0xff, 9, 9, 9, 9])
        .unwrap();
    raw.set_read_timeout(Some(2 * SECOND)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        raw.read(&mut buf).unwrap_or(0),
        0,
        "corrupt connection closed, unanswered"
    );
    for _ in 0..5 {
        assert_eq!(
            good.call(Command::request(7), SECOND).unwrap().code,
            codes::REQUEST_CODE_NOT_SUPPORTED
        );
    }
    assert_eq!(server.connections(), 1, "only the good connection is left");
    good.close();
}

#[test]
fn corrupt_response_fails_the_tokio_clients_calls_as_a_protocol_error() {
    // A raw "server" answers the first request with garbage.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(2 * SECOND)).unwrap();
        let mut buf = [0u8; 256];
        let _ = sock.read(&mut buf).unwrap();
        sock.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        let _ = sock.read(&mut buf); // until the client hangs up
    });
    runtime().block_on(async move {
        let client = Client::connect(addr, ClientConfig::default())
            .await
            .unwrap();
        let err = client
            .call(Command::request(1), 5 * SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::Protocol { written: true, .. }),
            "{err}"
        );
        client.close();
    });
    peer.join().unwrap();
}

#[test]
fn max_waiters_and_dropped_calls_cancel() {
    let server = slow_std_server(Duration::from_millis(300));
    let addr = server.local_addr();
    runtime().block_on(async move {
        let config = ClientConfig {
            connection: Config {
                max_waiters: 2,
                ..Config::default()
            },
            ..Default::default()
        };
        let client = Client::connect(addr, config).await.unwrap();
        scenarios::max_waiters_and_dropped_calls_cancel(client).await;
    });
}

/// Waits (bounded) for the server to list a connection.
fn first_peer(server: &Server) -> remora_tokio::Peer {
    let deadline = Instant::now() + 2 * SECOND;
    loop {
        if let Some(p) = server.peers().into_iter().find(|p| !p.is_closed()) {
            return p;
        }
        assert!(Instant::now() < deadline, "no connection accepted");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tokio_server_sends_requests_to_tokio_and_uring_client_handlers() {
    let (rt, server) = tokio_server(ServerConfig::default());
    let addr = server.local_addr();
    let oneways = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&oneways);
    let client = rt
        .block_on(Client::connect_with_handler(
            addr,
            ClientConfig::default(),
            move |request: Command| {
                if request.is_oneway() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                request
                    .response(codes::SUCCESS)
                    .with_remark("tokio client here")
            },
        ))
        .unwrap();
    let peer = first_peer(&server);
    let response = rt
        .block_on(peer.call(Command::request(39), 2 * SECOND))
        .unwrap();
    assert_eq!(response.remark().unwrap(), "tokio client here");
    peer.oneway(Command::oneway(40)).unwrap();
    let deadline = Instant::now() + 2 * SECOND;
    while oneways.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "oneway never handled");
        std::thread::sleep(Duration::from_millis(5));
    }
    client.close();
    let deadline = Instant::now() + 2 * SECOND;
    while !peer.is_closed() {
        assert!(
            Instant::now() < deadline,
            "the server never saw the client go"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // A uring client's handler answers the tokio server too.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let uring = std::thread::spawn(move || {
        tokio_uring::start(async move {
            let handler: Arc<dyn remora_core::Handler> =
                Arc::new(|r: Command| r.response(codes::SUCCESS).with_body(&b"uring"[..]));
            let client =
                remora_uring::LocalClient::connect_with_handler(addr, Default::default(), handler)
                    .await
                    .unwrap();
            ready_tx.send(()).unwrap();
            let done = tokio::task::spawn_blocking(move || done_rx.recv_timeout(5 * SECOND));
            let _ = done.await;
            client.close();
        })
    });
    ready_rx.recv_timeout(5 * SECOND).unwrap();
    let peer = first_peer(&server);
    let response = rt
        .block_on(peer.call(Command::request(39), 2 * SECOND))
        .unwrap();
    assert_eq!(response.body(), b"uring");
    done_tx.send(()).unwrap();
    uring.join().unwrap();
}

#[test]
fn raw_broker_request_reaches_the_tokio_client_handler() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let broker = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(2 * SECOND)).unwrap();
        let codec = remora_core::Codec::default();
        let mut frame = bytes::BytesMut::new();
        codec
            .encode(&Command::request(39).with_opaque(-5), &mut frame)
            .unwrap();
        sock.write_all(&frame).unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut chunk = [0u8; 1024];
        // The handler's answer and the client's oneway, in whichever order they come.
        let (mut answer, mut oneway) = (None, None);
        while answer.is_none() || oneway.is_none() {
            if let remora_core::Decoded::Command(cmd) = codec.decode(&mut buf).unwrap() {
                if cmd.is_response() {
                    assert!(answer.replace(cmd).is_none(), "answered once");
                } else {
                    assert!(cmd.is_oneway(), "{cmd:?}");
                    oneway = Some(cmd.code);
                }
                continue;
            }
            let n = sock.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(oneway, Some(34));
        answer.unwrap()
    });
    runtime().block_on(async move {
        let client = Client::connect_with_handler(addr, ClientConfig::default(), |r: Command| {
            r.response(codes::SUCCESS).with_body(&b"state"[..])
        })
        .await
        .unwrap();
        client.oneway(Command::oneway(34)).await.unwrap();
        let answer = tokio::task::spawn_blocking(move || broker.join().unwrap())
            .await
            .unwrap();
        assert!(answer.is_response());
        assert_eq!((answer.opaque, answer.body()), (-5, &b"state"[..]));
        client.close();
    });
}

#[test]
fn blocking_dispatch_answers_busy_beyond_max_incoming_and_stops_gracefully() {
    let rt = runtime();
    let server = rt
        .block_on(Server::bind(
            "127.0.0.1:0",
            |r: Command| {
                std::thread::sleep(Duration::from_millis(300));
                echo(r)
            },
            ServerConfig {
                connection: Config {
                    max_incoming: 1,
                    ..Config::default()
                },
                dispatch: Dispatch::Blocking,
                drain_timeout: 5 * SECOND,
                ..ServerConfig::default()
            },
        ))
        .unwrap();
    let addr = server.local_addr();
    let client = remora_std::Client::connect(addr, Default::default()).unwrap();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            std::thread::spawn(move || {
                client
                    .call(Command::request(1).with_body(vec![i]), 5 * SECOND)
                    .unwrap()
            })
        })
        .collect();
    let codes: Vec<i32> = calls.into_iter().map(|c| c.join().unwrap().code).collect();
    assert_eq!(
        codes.iter().filter(|&&c| c == codes::SUCCESS).count(),
        1,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|&&c| c == codes::SYSTEM_BUSY).count(),
        2,
        "{codes:?}"
    );

    // A request in flight when stop begins is still answered; then the port is closed.
    let slow = {
        let client = client.clone();
        std::thread::spawn(move || {
            client.call(Command::request(1).with_body(&b"last"[..]), 5 * SECOND)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    rt.block_on(server.stop());
    let answered = slow.join().unwrap().unwrap();
    assert_eq!(answered.body(), b"last");
    assert!(
        TcpStream::connect_timeout(&addr, SECOND).is_err(),
        "no more connections accepted"
    );
    client.close();
}

#[test]
fn calls_end_when_the_connections_runtime_is_dropped() {
    let server = slow_std_server(Duration::from_millis(2000));
    let addr = server.local_addr();
    // The connection's task lives on `owner`; the call is awaited on another runtime.
    let owner = runtime();
    let client = owner
        .block_on(Client::connect(addr, ClientConfig::default()))
        .unwrap();
    let caller = runtime();
    let call = caller.spawn({
        let client = client.clone();
        async move { client.call(Command::request(1), 20 * SECOND).await }
    });
    std::thread::sleep(Duration::from_millis(100));
    let dropped = Instant::now();
    drop(owner);
    let err = caller.block_on(call).unwrap().unwrap_err();
    assert!(
        matches!(err, CallError::ConnectionLost { written: true }),
        "{err}"
    );
    assert!(dropped.elapsed() < 2 * SECOND);
}

#[test]
fn idle_connections_close_and_reopen_on_demand() {
    let (_rt, server) = tokio_server(ServerConfig::default());
    let addr = server.local_addr();
    runtime().block_on(async move {
        let config = ClientConfig {
            idle_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        };
        let client = Client::connect(addr, config).await.unwrap();
        scenarios::idle_connections_close_and_reopen_on_demand(client).await;
    });
}

#[test]
fn unread_outcomes_do_not_leak_into_later_calls() {
    let (_rt, server) = tokio_server(ServerConfig::default());
    let addr = server.local_addr();
    runtime().block_on(async move {
        let client = Client::connect(addr, ClientConfig::default()).await;
        scenarios::unread_outcomes_do_not_leak_into_later_calls(client.unwrap()).await;
    });
}
