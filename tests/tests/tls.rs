//! TLS on real connections: every driver pair as client and server, permissive and enforcing
//! servers, mutual TLS, and the failures (untrusted CA, wrong name, plaintext against an
//! enforcing port, refused client certificates), each a typed error with no request reported
//! as possibly delivered. Certificates are made by the test (rcgen). Every server binds
//! 127.0.0.1:0; every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use remora_core::{codes, CallError, Command};
use remora_tests::certs::{Ca, Leaf};
use remora_tls::{ClientTls, ServerMode, ServerTls, TlsError};

const TIMEOUT: Duration = Duration::from_secs(5);
const SERVER_NAME: &str = "broker.test";

// ---- certificates ----

/// A CA with a server certificate (for `broker.test` and 127.0.0.1) and a client certificate,
/// and a rogue CA nobody trusts, with its own.
struct Pki {
    ca: Ca,
    server: Leaf,
    client: Leaf,
    rogue_client: Leaf,
    rogue: Ca,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("remora test CA");
        let rogue = Ca::new("rogue CA");
        Pki {
            server: ca.issue(&[SERVER_NAME, "127.0.0.1"]),
            client: ca.issue(&["client.test"]),
            rogue_client: rogue.issue(&["client.test"]),
            ca,
            rogue,
        }
    }

    fn server_tls(&self, mode: ServerMode) -> ServerTls {
        ServerTls::builder()
            .certificate(vec![self.server.cert.clone()], self.server.key())
            .mode(mode)
            .build()
            .unwrap()
    }

    fn mtls_server_tls(&self) -> ServerTls {
        ServerTls::builder()
            .certificate(vec![self.server.cert.clone()], self.server.key())
            .client_cas(vec![self.ca.der()])
            .build()
            .unwrap()
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls::builder()
            .trust_cas(vec![self.ca.der()])
            .unwrap()
            .build()
            .unwrap()
    }

    fn client_tls_with(&self, leaf: &Leaf) -> ClientTls {
        ClientTls::builder()
            .trust_cas(vec![self.ca.der()])
            .unwrap()
            .client_certificate(vec![leaf.cert.clone()], leaf.key())
            .build()
            .unwrap()
    }
}

// ---- drivers ----

fn echo(request: Command) -> Command {
    request
        .response(codes::SUCCESS)
        .with_body(request.body_bytes())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    Std,
    Tokio,
    /// Server: remora_uring::Server (an io-uring EventLoop per thread). Client: the
    /// tokio-uring `remora_uring::Client`.
    Uring,
    /// Client only: a bare io-uring `EventLoop` (what `remora bench` drives).
    UringLoop,
}

/// Every server.
const DRIVERS: [Driver; 3] = [Driver::Std, Driver::Tokio, Driver::Uring];
/// Every client.
const CLIENTS: [Driver; 4] = [Driver::Std, Driver::Tokio, Driver::Uring, Driver::UringLoop];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

enum Served {
    Std(remora_std::Server),
    /// Dropped in field order: the server, then its runtime.
    Tokio {
        server: remora_tokio::Server,
        _rt: tokio::runtime::Runtime,
    },
    Uring(remora_uring::Server),
}

impl Served {
    fn start(driver: Driver, tls: Option<ServerTls>) -> Served {
        match driver {
            Driver::Std => {
                let config = remora_std::ServerConfig {
                    drain_timeout: Duration::ZERO,
                    ..Default::default()
                };
                Served::Std(match tls {
                    Some(tls) => {
                        remora_std::Server::bind_tls("127.0.0.1:0", echo, config, tls).unwrap()
                    }
                    None => remora_std::Server::bind_with("127.0.0.1:0", echo, config).unwrap(),
                })
            }
            Driver::Tokio => {
                let rt = runtime();
                let config = remora_tokio::ServerConfig {
                    drain_timeout: Duration::ZERO,
                    ..Default::default()
                };
                let server = rt
                    .block_on(async {
                        match tls {
                            Some(tls) => {
                                remora_tokio::Server::bind_tls("127.0.0.1:0", echo, config, tls)
                                    .await
                            }
                            None => remora_tokio::Server::bind("127.0.0.1:0", echo, config).await,
                        }
                    })
                    .unwrap();
                Served::Tokio { server, _rt: rt }
            }
            Driver::Uring => {
                let config = remora_uring::ServerConfig {
                    threads: 1,
                    drain_timeout: Duration::ZERO,
                    ..Default::default()
                };
                let handler = std::sync::Arc::new(echo);
                Served::Uring(
                    match tls {
                        Some(tls) => {
                            remora_uring::Server::bind_tls("127.0.0.1:0", handler, config, tls)
                        }
                        None => remora_uring::Server::bind_with("127.0.0.1:0", handler, config),
                    }
                    .unwrap(),
                )
            }
            Driver::UringLoop => unreachable!("a client only"),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Served::Std(s) => s.local_addr(),
            Served::Tokio { server, .. } => server.local_addr(),
            Served::Uring(s) => s.local_addr(),
        }
    }
}

/// Three calls from a new `driver` client to `addr` (over TLS with `tls`): the outcome of each.
fn calls(
    driver: Driver,
    addr: SocketAddr,
    tls: Option<ClientTls>,
) -> Vec<Result<Vec<u8>, CallError>> {
    calls_n(driver, addr, tls, 3)
}

/// The outcome of a new `driver` client's one call (its first connection's).
fn first_call(
    driver: Driver,
    addr: SocketAddr,
    tls: Option<ClientTls>,
) -> Result<Vec<u8>, CallError> {
    calls_n(driver, addr, tls, 1).remove(0)
}

/// `n` calls from a new `driver` client to `addr` (over TLS with `tls`): the outcome of each.
fn calls_n(
    driver: Driver,
    addr: SocketAddr,
    tls: Option<ClientTls>,
    n: usize,
) -> Vec<Result<Vec<u8>, CallError>> {
    let addr = addr.to_string();
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| format!("call {i}").into_bytes()).collect();
    match driver {
        Driver::Std => {
            let config = remora_std::ClientConfig {
                connect_timeout: TIMEOUT,
                ..Default::default()
            };
            let client = match tls {
                Some(tls) => {
                    remora_std::Client::lazy_tls(&addr, config, remora_std::NotSupported, tls)
                }
                None => remora_std::Client::lazy(addr.as_str(), config, remora_std::NotSupported),
            }
            .unwrap();
            let out = bodies
                .iter()
                .map(|b| {
                    let outcome = client
                        .call(Command::request(10).with_body(b.clone()), TIMEOUT)
                        .map(|r| r.body().to_vec());
                    std::thread::sleep(backoff(&outcome));
                    outcome
                })
                .collect();
            client.close();
            out
        }
        Driver::Tokio => {
            let config = remora_tokio::ClientConfig {
                connect_timeout: TIMEOUT,
                ..Default::default()
            };
            runtime().block_on(async {
                let handler = remora_core::NotSupported;
                let client = match tls {
                    Some(tls) => remora_tokio::Client::lazy_tls(&addr, config, handler, tls),
                    None => remora_tokio::Client::lazy(addr.as_str(), config, handler),
                }
                .unwrap();
                let mut out = Vec::new();
                for b in &bodies {
                    let call = client.call(Command::request(10).with_body(b.clone()), TIMEOUT);
                    let outcome = call.await.map(|r| r.body().to_vec());
                    tokio::time::sleep(backoff(&outcome)).await;
                    out.push(outcome);
                }
                client.close();
                out
            })
        }
        Driver::Uring => {
            let config = remora_uring::ClientConfig {
                connect_timeout: TIMEOUT,
                threads: 1,
                ..Default::default()
            };
            // The client connects its threads at once: a failed handshake may already be
            // known here (or come with the first call).
            let client = match tls {
                Some(tls) => remora_uring::Client::connect_tls(&addr, config, tls),
                None => remora_uring::Client::connect(addr.as_str(), config),
            };
            let client = match client {
                Ok(client) => client,
                Err(e) => return bodies.iter().map(|_| Err(e.clone())).collect(),
            };
            let out = bodies
                .iter()
                .map(|b| {
                    let outcome = client
                        .call_blocking(Command::request(10).with_body(b.clone()), TIMEOUT)
                        .map(|r| r.body().to_vec());
                    std::thread::sleep(backoff(&outcome));
                    outcome
                })
                .collect();
            client.close();
            out
        }
        Driver::UringLoop => {
            use remora_uring::{EventLoop, LoopConfig};
            let secure = match tls {
                Some(tls) => remora_tls::Secure::client(tls, &addr, TIMEOUT).unwrap(),
                None => remora_tls::Secure::plain(),
            };
            let mut lp = EventLoop::new(
                remora_core::Config::default(),
                LoopConfig::default(),
                std::sync::Arc::new(remora_core::NotSupported),
            )
            .unwrap();
            let conn = lp
                .connect_secure(addr.parse().unwrap(), TIMEOUT, &secure)
                .unwrap();
            let give_up = std::time::Instant::now() + 2 * TIMEOUT;
            let mut out = Vec::new();
            for b in &bodies {
                let request = Command::request(10).with_body(b.clone());
                if let Err(e) = lp.call(conn, request, TIMEOUT, 7) {
                    out.push(Err(e));
                    continue;
                }
                let mut done = Vec::new();
                while done.is_empty() {
                    assert!(std::time::Instant::now() < give_up, "the loop's call hung");
                    lp.turn(Duration::from_millis(50), &mut done).unwrap();
                }
                let completion = done.remove(0);
                assert_eq!(completion.token, 7);
                out.push(completion.outcome.map(|r| r.body().to_vec()));
            }
            lp.close_all();
            out
        }
    }
}

fn assert_echoed(outcomes: &[Result<Vec<u8>, CallError>], what: &str) {
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(body) => assert_eq!(body, format!("call {i}").as_bytes(), "{what}"),
            Err(e) => panic!("{what}: call {i} failed: {e}"),
        }
    }
}

/// How long to wait before the next call: the pool's reconnect delay after a failed
/// connection (bounded), else nothing.
fn backoff(outcome: &Result<Vec<u8>, CallError>) -> Duration {
    match outcome {
        Err(CallError::Unavailable { retry_in }) => (*retry_in).min(Duration::from_secs(1)),
        _ => Duration::ZERO,
    }
}

/// The TLS error that refuses a `driver` client's calls: four calls on one client (waiting out
/// the reconnect delay between them) all fail, none as possibly delivered, and the TLS error
/// reaches a caller. (A TLS 1.3 server refuses a client certificate after the client's side of
/// the handshake is done: when the refusal lands between the connect and the first call, that
/// call finds the pool waiting to reconnect, and a later one carries the error.)
fn refusal(driver: Driver, addr: SocketAddr, tls: ClientTls) -> TlsError {
    let outcomes = calls_n(driver, addr, Some(tls), 4);
    for outcome in &outcomes {
        let error = outcome
            .as_ref()
            .expect_err("a refused client got an answer");
        assert!(!error.may_have_reached_peer(), "{driver:?}: {error}");
    }
    outcomes
        .iter()
        .find(|o| matches!(o, Err(CallError::Connect(_))))
        .map(tls_error)
        .unwrap_or_else(|| panic!("{driver:?}: no call carried the TLS error: {outcomes:?}"))
}

/// The TLS error a failed call carries; the call was never written.
fn tls_error(outcome: &Result<Vec<u8>, CallError>) -> TlsError {
    match outcome {
        Err(e @ CallError::Connect(inner)) => {
            assert!(!e.may_have_reached_peer());
            inner
                .get()
                .downcast_ref::<TlsError>()
                .unwrap_or_else(|| panic!("not a TLS error: {inner}"))
                .clone()
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

// ---- tests ----

#[test]
fn every_driver_pair_talks_over_tls() {
    let pki = Pki::new();
    for server in DRIVERS {
        let served = Served::start(server, Some(pki.server_tls(ServerMode::Enforcing)));
        for client in CLIENTS {
            let outcomes = calls(client, served.addr(), Some(pki.client_tls()));
            assert_echoed(&outcomes, &format!("{client:?} client → {server:?} server"));
        }
    }
}

#[test]
fn a_permissive_server_serves_plaintext_and_tls_clients_on_one_port() {
    let pki = Pki::new();
    for server in DRIVERS {
        let served = Served::start(server, Some(pki.server_tls(ServerMode::Permissive)));
        for client in CLIENTS {
            let what = format!("{client:?} → permissive {server:?}");
            assert_echoed(&calls(client, served.addr(), Some(pki.client_tls())), &what);
            assert_echoed(&calls(client, served.addr(), None), &what);
        }
    }
}

#[test]
fn an_enforcing_server_refuses_plaintext_clients() {
    let pki = Pki::new();
    for server in DRIVERS {
        let served = Served::start(server, Some(pki.server_tls(ServerMode::Enforcing)));
        for client in CLIENTS {
            {
                let outcome = first_call(client, served.addr(), None);
                let error = outcome.expect_err("plaintext on an enforcing port");
                assert!(
                    matches!(error, CallError::ConnectionLost { .. }),
                    "{client:?} → enforcing {server:?}: {error}"
                );
            }
        }
    }
}

#[test]
fn a_tls_client_against_a_plaintext_server_fails_unwritten() {
    for server in DRIVERS {
        let served = Served::start(server, None);
        let pki = Pki::new();
        for client in CLIENTS {
            {
                let error = refusal(client, served.addr(), pki.client_tls());
                assert!(
                    matches!(
                        error,
                        TlsError::ClosedDuringHandshake | TlsError::Malformed(_)
                    ),
                    "{client:?} → plaintext {server:?}: {error}"
                );
            }
        }
    }
}

#[test]
fn mutual_tls_accepts_the_right_client_certificate_and_refuses_others() {
    let pki = Pki::new();
    for server in DRIVERS {
        let served = Served::start(server, Some(pki.mtls_server_tls()));
        for client in CLIENTS {
            let what = format!("{client:?} → mTLS {server:?}");
            assert_echoed(
                &calls(
                    client,
                    served.addr(),
                    Some(pki.client_tls_with(&pki.client)),
                ),
                &what,
            );
            {
                let error = refusal(client, served.addr(), pki.client_tls());
                assert!(
                    matches!(error, TlsError::RefusedByPeer(_)),
                    "{what}, no certificate: {error}"
                );
            }
            {
                let rogue = pki.client_tls_with(&pki.rogue_client);
                let error = refusal(client, served.addr(), rogue);
                assert!(
                    matches!(error, TlsError::RefusedByPeer(_)),
                    "{what}, rogue certificate: {error}"
                );
            }
        }
    }
}

#[test]
fn an_untrusted_ca_or_a_wrong_name_fails_with_a_typed_error() {
    let pki = Pki::new();
    let rogue_trust = ClientTls::builder()
        .trust_cas(vec![pki.rogue.der()])
        .unwrap()
        .build()
        .unwrap();
    let wrong_name = ClientTls::builder()
        .trust_cas(vec![pki.ca.der()])
        .unwrap()
        .server_name("other.test")
        .build()
        .unwrap();
    let right_name = ClientTls::builder()
        .trust_cas(vec![pki.ca.der()])
        .unwrap()
        .server_name(SERVER_NAME)
        .build()
        .unwrap();
    for server in DRIVERS {
        let served = Served::start(server, Some(pki.server_tls(ServerMode::Enforcing)));
        for client in CLIENTS {
            let what = format!("{client:?} → {server:?}");
            {
                let error = refusal(client, served.addr(), rogue_trust.clone());
                assert!(
                    matches!(error, TlsError::UntrustedCertificate(_)),
                    "{what}, untrusted: {error}"
                );
            }
            {
                let error = refusal(client, served.addr(), wrong_name.clone());
                assert!(
                    matches!(error, TlsError::NameMismatch(_)),
                    "{what}, wrong name: {error}"
                );
            }
            assert_echoed(
                &calls(client, served.addr(), Some(right_name.clone())),
                &what,
            );
        }
    }
}

#[test]
fn a_stalled_handshake_ends_at_the_connect_timeout_on_every_client() {
    // A server that accepts and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while held.len() < CLIENTS.len() && std::time::Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        held
    });
    let pki = Pki::new();
    let tls = pki.client_tls();
    for client in CLIENTS {
        let started = std::time::Instant::now();
        let outcome = short_connect_call(client, addr, tls.clone());
        let error = tls_error(&outcome);
        assert!(
            matches!(error, TlsError::HandshakeTimeout),
            "{client:?}: {error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{client:?}: the handshake was not bounded by the connect timeout"
        );
    }
    drop(held.join().unwrap());
}

/// One call from a new `driver` client with a 300 ms connect timeout (which bounds the
/// handshake) and a longer call timeout: against a stalled server, the handshake's deadline
/// must be what ends it.
fn short_connect_call(
    driver: Driver,
    addr: SocketAddr,
    tls: ClientTls,
) -> Result<Vec<u8>, CallError> {
    let connect = Duration::from_millis(300);
    let addr_text = addr.to_string();
    let request = || Command::request(10).with_body(&b"never"[..]);
    match driver {
        Driver::Std => {
            let config = remora_std::ClientConfig {
                connect_timeout: connect,
                ..Default::default()
            };
            let client =
                remora_std::Client::lazy_tls(&addr_text, config, remora_std::NotSupported, tls)
                    .unwrap();
            client.call(request(), TIMEOUT).map(|r| r.body().to_vec())
        }
        Driver::Tokio => {
            let config = remora_tokio::ClientConfig {
                connect_timeout: connect,
                ..Default::default()
            };
            runtime().block_on(async {
                let client = remora_tokio::Client::lazy_tls(
                    &addr_text,
                    config,
                    remora_core::NotSupported,
                    tls,
                )
                .unwrap();
                client
                    .call(request(), TIMEOUT)
                    .await
                    .map(|r| r.body().to_vec())
            })
        }
        Driver::Uring => {
            let config = remora_uring::ClientConfig {
                connect_timeout: connect,
                threads: 1,
                ..Default::default()
            };
            let client = remora_uring::Client::connect_tls(&addr_text, config, tls)?;
            let outcome = client
                .call_blocking(request(), TIMEOUT)
                .map(|r| r.body().to_vec());
            client.close();
            outcome
        }
        Driver::UringLoop => {
            let secure = remora_tls::Secure::client(tls, &addr_text, connect).unwrap();
            let mut lp = remora_uring::EventLoop::new(
                remora_core::Config::default(),
                remora_uring::LoopConfig::default(),
                std::sync::Arc::new(remora_core::NotSupported),
            )
            .unwrap();
            let conn = lp.connect_secure(addr, connect, &secure).unwrap();
            lp.call(conn, request(), TIMEOUT, 1)?;
            let mut done = Vec::new();
            let give_up = std::time::Instant::now() + 2 * TIMEOUT;
            while done.is_empty() && std::time::Instant::now() < give_up {
                lp.turn(Duration::from_millis(50), &mut done).unwrap();
            }
            done.remove(0).outcome.map(|r| r.body().to_vec())
        }
    }
}

#[test]
fn a_server_drops_a_client_that_never_finishes_its_handshake() {
    use std::io::Read;
    let pki = Pki::new();
    for server in DRIVERS {
        let tls = ServerTls::builder()
            .certificate(vec![pki.server.cert.clone()], pki.server.key())
            .handshake_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let served = Served::start(server, Some(tls));
        // Connects and sends nothing: the server must close it at the handshake deadline.
        let mut stream = std::net::TcpStream::connect(served.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let read = stream.read(&mut buf);
        assert!(
            matches!(read, Ok(0)) || read.is_err() && started.elapsed() < Duration::from_secs(4),
            "{server:?}: {read:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{server:?}: a silent client was kept past the handshake timeout"
        );
    }
}

#[test]
fn a_server_answering_garbage_fails_the_handshake_as_malformed_on_every_client() {
    // A server that answers a ClientHello with an HTTP error and keeps the connection open.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        use std::io::Write;
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while held.len() < CLIENTS.len() && std::time::Instant::now() < until {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                    held.push(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        held
    });
    let pki = Pki::new();
    for client in CLIENTS {
        let error = tls_error(&short_connect_call(client, addr, pki.client_tls()));
        assert!(
            matches!(error, TlsError::Malformed(_)),
            "{client:?}: {error}"
        );
    }
    drop(held.join().unwrap());
}
