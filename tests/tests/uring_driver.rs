//! The io_uring driver against itself and against the std driver, and the fault cases.
//! Every server binds 127.0.0.1:0; every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use remora_core::{codes, CallError, Command, Config, SerializeType};
use remora_uring::{Client, ClientConfig, LocalClient, Server, ServerConfig};

use remora_tests::scenarios;

const SECOND: Duration = Duration::from_secs(1);

fn echo(request: Command) -> Command {
    let mut response = request
        .response(codes::SUCCESS)
        .with_body(request.body_bytes());
    response.set_ext_fields(request.ext_fields().to_ext_fields());
    response
}

fn uring_server(threads: usize) -> Server {
    Server::bind_with(
        "127.0.0.1:0",
        Arc::new(echo),
        ServerConfig {
            threads,
            ..ServerConfig::default()
        },
    )
    .unwrap()
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

#[test]
fn uring_client_and_server_many_concurrent_calls_without_cross_talk() {
    let server = uring_server(2);
    let addr = server.local_addr();
    tokio_uring::start(async move {
        let client = LocalClient::connect(
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
            tasks.push(tokio_uring::spawn(async move {
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
        client.close();
    });
}

#[test]
fn send_client_from_plain_threads_against_std_server() {
    let server = remora_std::Server::bind("127.0.0.1:0", echo).unwrap();
    let client = Client::connect(
        server.local_addr(),
        ClientConfig {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let body = format!("{t}/{i}").into_bytes();
                    let r = client
                        .call_blocking(Command::request(1).with_body(body.clone()), 5 * SECOND)
                        .unwrap();
                    assert_eq!(r.body(), &body[..]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    client.close();
    client.close();
    assert!(matches!(
        client.call_blocking(Command::request(1), SECOND),
        Err(CallError::Closed { written: false })
    ));
}

#[test]
fn std_client_against_uring_server() {
    let server = uring_server(1);
    let client = remora_std::Client::connect(server.local_addr(), Default::default()).unwrap();
    for i in 0..200u32 {
        let body = i.to_be_bytes().to_vec();
        let r = client
            .call(Command::request(1).with_body(body.clone()), 5 * SECOND)
            .unwrap();
        assert_eq!(r.body(), &body[..]);
    }
    client.close();
}

#[test]
fn timeouts_and_killed_server() {
    let server = slow_std_server(Duration::from_millis(600));
    let addr = server.local_addr();
    tokio_uring::start(async move {
        let client = LocalClient::connect(addr, ClientConfig::default()).await;
        scenarios::timeouts_and_killed_server(client.unwrap(), server).await;
    });
}

#[test]
fn reconnects_after_the_server_comes_back() {
    let server = remora_std::Server::bind("127.0.0.1:0", echo).unwrap();
    let addr = server.local_addr();
    tokio_uring::start(async move {
        let config = ClientConfig {
            reconnect: remora_core::backoff::Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = LocalClient::connect(addr, config).await.unwrap();
        let rebind = || remora_std::Server::bind(addr, echo).unwrap();
        scenarios::reconnects_after_the_server_comes_back(client, server, rebind).await;
    });
}

#[test]
fn corrupt_bytes_close_only_that_connection_and_unknown_codes_are_refused() {
    let server = Server::bind_with(
        "127.0.0.1:0",
        Arc::new(remora_core::NotSupported),
        ServerConfig {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let good = remora_std::Client::connect(server.local_addr(), Default::default()).unwrap();
    let r = good.call(Command::request(4242), SECOND).unwrap();
    assert_eq!(r.code, codes::REQUEST_CODE_NOT_SUPPORTED);
    assert_eq!(r.remark().unwrap(), " request type 4242 not supported");
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
    good.close();
}

#[test]
fn max_waiters_and_dropped_calls_cancel() {
    let server = slow_std_server(Duration::from_millis(300));
    let addr = server.local_addr();
    tokio_uring::start(async move {
        let config = ClientConfig {
            connection: Config {
                max_waiters: 2,
                ..Config::default()
            },
            ..Default::default()
        };
        let client = LocalClient::connect(addr, config).await.unwrap();
        scenarios::max_waiters_and_dropped_calls_cancel(client).await;
    });
}

#[test]
fn oneway_and_server_to_client_requests() {
    // A raw "broker" sends a request to a uring client and reads the handler's answer.
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
        loop {
            if let remora_core::Decoded::Command(cmd) = codec.decode(&mut buf).unwrap() {
                if cmd.is_response() {
                    return cmd;
                }
                assert!(
                    cmd.is_oneway(),
                    "only the client's oneway comes before the answer"
                );
                continue;
            }
            let n = sock.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
    });
    tokio_uring::start(async move {
        let handler: Arc<dyn remora_core::Handler> =
            Arc::new(|r: Command| r.response(codes::SUCCESS).with_body(&b"state"[..]));
        let client = LocalClient::connect_with_handler(addr, ClientConfig::default(), handler)
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
fn idle_connections_close_and_reopen_on_demand() {
    let server = uring_server(1);
    let addr = server.local_addr();
    tokio_uring::start(async move {
        let config = ClientConfig {
            idle_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        };
        let client = LocalClient::connect(addr, config).await.unwrap();
        scenarios::idle_connections_close_and_reopen_on_demand(client).await;
    });
}

#[test]
fn unread_outcomes_do_not_leak_into_later_calls() {
    let server = uring_server(1);
    let addr = server.local_addr();
    tokio_uring::start(async move {
        let client = LocalClient::connect(addr, ClientConfig::default()).await;
        scenarios::unread_outcomes_do_not_leak_into_later_calls(client.unwrap()).await;
    });
}
