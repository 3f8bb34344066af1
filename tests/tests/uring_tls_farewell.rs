//! The tokio-uring client's last words over TLS, seen by a plain rustls server on a thread: a
//! handshake it refuses ends with an alert saying why (not a bare EOF), and a connection it
//! closes ends with `close_notify` (a clean end, not a truncation). Certificates are made by
//! the test (rcgen); the server binds 127.0.0.1:0 and every read is bounded by a timeout.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use remora_tls::rustls;
use remora_tls::rustls::pki_types::PrivateKeyDer;
use remora_tls::{ClientTls, ServerMode, ServerTls};

/// A server certificate for 127.0.0.1 from a CA of its own, and that CA's certificate.
fn server_tls() -> (ServerTls, rustls::pki_types::CertificateDer<'static>) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let tls = ServerTls::builder()
        .certificate(vec![cert.der().clone()], key)
        .mode(ServerMode::Enforcing)
        .build()
        .unwrap();
    (tls, ca.der().clone())
}

/// Accepts one connection, runs rustls over it and reads until it ends: Ok with what was read
/// after the handshake (a clean end: `close_notify`), or the error that ended it.
fn one_connection(tls: ServerTls) -> (String, std::thread::JoinHandle<std::io::Result<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config: Arc<rustls::ServerConfig> = Arc::clone(tls.rustls_config());
    let thread = std::thread::spawn(move || {
        let (tcp, _) = listener.accept()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink)
    });
    (addr, thread)
}

fn config() -> remora_uring::ClientConfig {
    remora_uring::ClientConfig {
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

#[test]
fn a_refused_handshake_ends_with_an_alert() {
    let (tls, _ca) = server_tls();
    let (addr, server) = one_connection(tls);
    // Trusts another CA: the server's certificate is refused.
    let (_, other_ca) = server_tls();
    let client_tls = ClientTls::builder()
        .trust_cas(vec![other_ca])
        .unwrap()
        .build()
        .unwrap();
    tokio_uring::start(async {
        let connected = remora_uring::LocalClient::connect_tls(&addr, config(), client_tls).await;
        assert!(
            matches!(connected, Err(remora_core::CallError::Connect(_))),
            "{:?}",
            connected.err()
        );
        // Gives the connection's tasks their turn to write (bounded).
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let ended = server.join().unwrap().unwrap_err();
    let why = ended
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(why, Some(rustls::Error::AlertReceived(_))),
        "the server saw {ended:?}, not an alert"
    );
}

#[test]
fn a_closed_connection_ends_with_close_notify() {
    let (tls, ca) = server_tls();
    let (addr, server) = one_connection(tls);
    let client_tls = ClientTls::builder()
        .trust_cas(vec![ca])
        .unwrap()
        .build()
        .unwrap();
    tokio_uring::start(async {
        let client = remora_uring::LocalClient::connect_tls(&addr, config(), client_tls)
            .await
            .unwrap();
        client.close();
        // Gives the connection's tasks their turn to write (bounded).
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    // A clean end: no UnexpectedEof (a truncation), nothing read after the handshake.
    assert_eq!(server.join().unwrap().unwrap(), 0);
}
