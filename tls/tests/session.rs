//! The TLS layer in memory: a real `Connection` on each side, certificates made by rcgen.

mod common;

use common::*;
use remora_core::{CloseReason, Event, RequestError};
use remora_tls::rustls::{AlertDescription, ProtocolVersion};
use remora_tls::{ClientTls, ConfigError, ServerMode, ServerTls, Session, TlsError};

fn never_written() -> RequestError {
    RequestError {
        closed: Some(CloseReason::HandshakeFailed),
        written: false,
    }
}

/// The client's events after a failed handshake: the queued request failed as never written,
/// then the connection closed.
fn assert_failed_unwritten(events: &[Event], id: remora_core::RequestId) {
    assert_eq!(
        events,
        &[
            Event::Failed {
                id,
                error: never_written(),
                token: ()
            },
            Event::Closed {
                reason: CloseReason::HandshakeFailed
            }
        ],
        "events: {events:?}"
    );
}

#[test]
fn requests_queued_before_the_handshake_are_answered_over_tls() {
    let pki = Pki::new();
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
    let a = client
        .send_request(request(b"a"), T0 + 3 * SEC, T0)
        .unwrap();
    let b = client
        .send_request(request(b"b"), T0 + 3 * SEC, T0)
        .unwrap();
    assert!(client.is_handshaking());
    // Only the ClientHello leaves before the handshake: no frame of the requests.
    let hello = client.take_transmit().unwrap();
    assert_eq!(hello[0], 0x16);
    assert!(client.take_transmit().is_none());
    server.handle_input(&hello, T0);

    let (client_events, server_events) = pump(&mut client, &mut server, T0);
    assert!(server_events.is_empty(), "{server_events:?}");
    let got: Vec<_> = client_events
        .iter()
        .map(|e| match e {
            Event::Response { id, response, .. } => (*id, response.body().to_vec()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, vec![(a, b"a".to_vec()), (b, b"b".to_vec())]);
    assert!(!client.is_handshaking() && client.is_tls() && server.is_tls());
    assert_eq!(client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(client.alpn_protocol(), None, "ALPN is unset by default");
    let suite = client.cipher_suite().map(|s| s.suite());
    assert_eq!(suite, server.cipher_suite().map(|s| s.suite()));
    assert!(suite.is_some());
    assert_eq!(
        client.poll_timeout(),
        None,
        "no handshake deadline once done"
    );
    assert_eq!(server.poll_timeout(), None);
    assert_eq!(server.connection().stats().requests_received, 2);

    // The server may call the client too.
    let id = server
        .send_request(request(b"s"), T0 + 3 * SEC, T0)
        .unwrap();
    let (_, server_events) = pump(&mut client, &mut server, T0);
    assert!(
        matches!(&server_events[..], [Event::Response { id: got, response, .. }]
        if *got == id && response.body() == b"s")
    );
}

#[test]
fn large_bodies_and_many_requests_cross_record_boundaries() {
    let pki = Pki::new();
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let big = client
        .send_request(
            remora_core::Command::request(1).with_body(body.clone()),
            T0 + 3 * SEC,
            T0,
        )
        .unwrap();
    let small: Vec<_> = (0..200)
        .map(|_| {
            client
                .send_request(request(b"x"), T0 + 3 * SEC, T0)
                .unwrap()
        })
        .collect();
    let (events, _) = pump(&mut client, &mut server, T0);
    assert_eq!(events.len(), 201);
    assert!(
        matches!(&events[0], Event::Response { id, response, .. } if *id == big && response.body()[..] == body[..])
    );
    for (event, id) in events[1..].iter().zip(small) {
        assert!(matches!(event, Event::Response { id: got, .. } if *got == id));
    }
}

#[test]
fn permissive_server_serves_plaintext_and_tls_clients_on_one_config() {
    let pki = Pki::new();
    let server_tls = pki.server_tls(ServerMode::Permissive);

    let mut tls_client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut tls_server = Session::server(conn(), &server_tls, T0 + SEC);
    let id = tls_client
        .send_request(request(b"tls"), T0 + 3 * SEC, T0)
        .unwrap();
    let (events, _) = pump(&mut tls_client, &mut tls_server, T0);
    assert!(
        matches!(&events[..], [Event::Response { id: got, response, .. }] if *got == id && response.body() == b"tls")
    );
    assert!(tls_server.is_tls());

    let mut plain_client = Session::plain(conn());
    let mut plain_server = Session::server(conn(), &server_tls, T0 + SEC);
    assert!(plain_server.is_handshaking(), "awaiting the first byte");
    assert_eq!(
        plain_server.poll_timeout(),
        None,
        "a permissive server does not time out a silent client before it chose TLS"
    );
    let id = plain_client
        .send_request(request(b"plain"), T0 + 3 * SEC, T0)
        .unwrap();
    let frame = plain_client.take_transmit().unwrap();
    assert_eq!(
        frame[0], 0x00,
        "a remoting frame starts with its length's high byte"
    );
    // Through the read-buffer path, split after the first byte.
    plain_server.read_buffer().extend_from_slice(&frame[..1]);
    plain_server.handle_read(1, T0);
    plain_server.read_buffer().extend_from_slice(&frame[1..]);
    plain_server.handle_read(frame.len() - 1, T0);
    let (events, _) = pump(&mut plain_client, &mut plain_server, T0);
    assert!(
        matches!(&events[..], [Event::Response { id: got, response, .. }] if *got == id && response.body() == b"plain")
    );
    assert!(!plain_server.is_tls() && !plain_server.is_handshaking());
}

#[test]
fn enforcing_server_refuses_a_plaintext_client_with_a_typed_reason() {
    let pki = Pki::new();
    let mut client = Session::plain(conn());
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
    client
        .send_request(request(b"hello"), T0 + 3 * SEC, T0)
        .unwrap();
    let frame = client.take_transmit().unwrap();
    server.handle_input(&frame, T0);
    assert_eq!(
        server.tls_error(),
        Some(&TlsError::PlaintextPeer { first_byte: 0 })
    );
    let line = server.tls_error().unwrap().to_string();
    assert!(line.contains("refused a plaintext connection"), "{line}");
    assert_eq!(
        server.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::HandshakeFailed
        })
    );
    assert!(server.is_closed());
    assert!(
        server.take_transmit().is_none(),
        "nothing is sent to a plaintext peer"
    );
}

/// Moves bytes between two sessions by exchanging buffers (`take_transmit_buffer`, a spare
/// per side, `take_transmit` when it gives nothing) until both are quiet, answering requests.
/// Returns the client's events other than requests.
fn pump_exchanging(client: &mut Session, server: &mut Session) -> Vec<Event> {
    let (mut seen, mut ignored) = (Vec::new(), Vec::new());
    let mut spares = (bytes::BytesMut::new(), bytes::BytesMut::new());
    // One exchange (or take) from `from` into `to`; whether anything moved.
    fn flow(from: &mut Session, to: &mut Session, spare: &mut bytes::BytesMut) -> bool {
        let n = from.take_transmit_buffer(spare);
        if n > 0 {
            assert_eq!(n, spare.len());
            to.handle_input(spare, T0);
            from.handle_sent(n);
            return true;
        }
        let Some(bytes) = from.take_transmit() else {
            return false;
        };
        to.handle_input(&bytes, T0);
        from.handle_sent(bytes.len());
        true
    }
    for _ in 0..200 {
        let moved = flow(client, server, &mut spares.0) | flow(server, client, &mut spares.1);
        answer(server, &mut ignored);
        answer(client, &mut seen);
        if !moved {
            assert!(ignored.is_empty(), "{ignored:?}");
            return seen;
        }
    }
    panic!("the sessions never went quiet");
}

/// Buffer exchanges carry a TLS session's records (handshake included) and a plaintext
/// session's frames, large bodies (their own chunks) included: every request is answered once.
#[test]
fn buffer_exchanges_carry_tls_and_plaintext_sessions() {
    let pki = Pki::new();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for tls in [true, false] {
        let (mut client, mut server) = if tls {
            (
                Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap(),
                Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC),
            )
        } else {
            (Session::plain(conn()), Session::plain(conn()))
        };
        let mut ids = Vec::new();
        for i in 0..20 {
            let cmd = if i % 5 == 2 {
                remora_core::Command::request(1).with_body(body.clone())
            } else {
                request(b"x")
            };
            ids.push(client.send_request(cmd, T0 + 3 * SEC, T0).unwrap());
        }
        let events = pump_exchanging(&mut client, &mut server);
        assert_eq!(events.len(), ids.len(), "tls {tls}");
        for ((event, id), i) in events.iter().zip(&ids).zip(0..) {
            let want = if i % 5 == 2 { &body[..] } else { b"x" };
            assert!(
                matches!(event, Event::Response { id: got, response, .. } if got == id && response.body() == want),
                "tls {tls}: {event:?}"
            );
        }
        assert_eq!(client.connection().unsent_len(), 0);
        assert_eq!(client.is_tls(), tls);
    }
}

#[test]
fn disabled_mode_is_plaintext() {
    let pki = Pki::new();
    let mut client = Session::plain(conn());
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Disabled), T0 + SEC);
    assert!(!server.is_handshaking());
    let id = client
        .send_request(request(b"p"), T0 + 3 * SEC, T0)
        .unwrap();
    let (events, _) = pump(&mut client, &mut server, T0);
    assert!(matches!(&events[..], [Event::Response { id: got, .. }] if *got == id));
}

#[test]
fn untrusted_server_certificate_fails_the_handshake_and_no_request_counts_as_written() {
    let pki = Pki::new();
    let rogue = ServerTls::builder()
        .certificate(vec![pki.rogue_server.cert.clone()], pki.rogue_server.key())
        .build()
        .unwrap();
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &rogue, T0 + SEC);
    let id = client
        .send_request(request(b"secret"), T0 + 3 * SEC, T0)
        .unwrap();
    let (client_events, server_events) = pump(&mut client, &mut server, T0);
    assert!(
        matches!(client.tls_error(), Some(TlsError::UntrustedCertificate(_))),
        "{:?}",
        client.tls_error()
    );
    assert_failed_unwritten(&client_events, id);
    // The client told the server why, with an alert.
    assert!(
        matches!(server.tls_error(), Some(TlsError::RefusedByPeer(_))),
        "{:?}",
        server.tls_error()
    );
    assert_eq!(
        server_events,
        vec![Event::Closed {
            reason: CloseReason::HandshakeFailed
        }]
    );
    assert_eq!(
        server.connection().stats().bytes_in,
        0,
        "no plaintext reached the server"
    );
}

#[test]
fn a_certificate_for_another_name_is_a_name_mismatch() {
    let pki = Pki::new();
    let mut client = Session::client(conn(), &pki.client_tls(), "other.test", T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
    let id = client
        .send_request(request(b"x"), T0 + 3 * SEC, T0)
        .unwrap();
    let (events, _) = pump(&mut client, &mut server, T0);
    assert!(
        matches!(client.tls_error(), Some(TlsError::NameMismatch(_))),
        "{:?}",
        client.tls_error()
    );
    assert_failed_unwritten(&events, id);
}

#[test]
fn the_configured_server_name_replaces_the_host_and_ip_addresses_verify_too() {
    let pki = Pki::new();
    let renamed = ClientTls::builder()
        .trust_cas(vec![pki.ca.der()])
        .unwrap()
        .server_name(SERVER_NAME)
        .build()
        .unwrap();
    for (tls, host) in [(&renamed, "10.1.2.3"), (&pki.client_tls(), "127.0.0.1")] {
        let mut client = Session::client(conn(), tls, host, T0 + SEC).unwrap();
        let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
        let id = client
            .send_request(request(b"x"), T0 + 3 * SEC, T0)
            .unwrap();
        let (events, _) = pump(&mut client, &mut server, T0);
        assert!(
            matches!(&events[..], [Event::Response { id: got, .. }] if *got == id),
            "{host}: {:?}",
            client.tls_error()
        );
    }
}

#[test]
fn mutual_tls_accepts_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let client_tls = ClientTls::builder()
        .trust_cas(vec![pki.ca.der()])
        .unwrap()
        .client_certificate(vec![pki.client.cert.clone()], pki.client.key())
        .build()
        .unwrap();
    let mut client = Session::client(conn(), &client_tls, SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &pki.mtls_server_tls(), T0 + SEC);
    let id = client
        .send_request(request(b"m"), T0 + 3 * SEC, T0)
        .unwrap();
    let (events, _) = pump(&mut client, &mut server, T0);
    assert!(matches!(&events[..], [Event::Response { id: got, .. }] if *got == id));
    assert_eq!(
        server.peer_certificates().map(|c| c[0].clone()),
        Some(pki.client.cert.clone())
    );
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_and_its_request_was_never_written() {
    let pki = Pki::new();
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &pki.mtls_server_tls(), T0 + SEC);
    let id = client
        .send_request(request(b"m"), T0 + 3 * SEC, T0)
        .unwrap();
    let (client_events, _) = pump(&mut client, &mut server, T0);
    assert_eq!(
        server.tls_error(),
        Some(&TlsError::ClientCertificateRequired)
    );
    // TLS 1.3: the client finished its side and sent the request before the server refused;
    // the refusal still reports the request as never delivered (the server decrypted none).
    assert_eq!(
        client.tls_error(),
        Some(&TlsError::RefusedByPeer(
            AlertDescription::CertificateRequired
        ))
    );
    assert_failed_unwritten(&client_events, id);
    assert_eq!(server.connection().stats().bytes_in, 0);
}

#[test]
fn mutual_tls_refuses_a_client_certificate_from_an_untrusted_ca() {
    let pki = Pki::new();
    let client_tls = ClientTls::builder()
        .trust_cas(vec![pki.ca.der()])
        .unwrap()
        .client_certificate(vec![pki.rogue_client.cert.clone()], pki.rogue_client.key())
        .build()
        .unwrap();
    let mut client = Session::client(conn(), &client_tls, SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &pki.mtls_server_tls(), T0 + SEC);
    let id = client
        .send_request(request(b"m"), T0 + 3 * SEC, T0)
        .unwrap();
    let (client_events, _) = pump(&mut client, &mut server, T0);
    assert!(
        matches!(server.tls_error(), Some(TlsError::UntrustedCertificate(_))),
        "{:?}",
        server.tls_error()
    );
    assert!(
        matches!(client.tls_error(), Some(TlsError::RefusedByPeer(_))),
        "{:?}",
        client.tls_error()
    );
    assert_failed_unwritten(&client_events, id);
}

#[test]
fn garbage_instead_of_a_handshake_is_malformed_on_either_side() {
    let pki = Pki::new();
    // A server that gets a handshake byte followed by nonsense.
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
    // A ClientHello record whose message is empty.
    server.handle_input(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00], T0);
    assert!(
        matches!(server.tls_error(), Some(TlsError::Malformed(_))),
        "{:?}",
        server.tls_error()
    );
    assert_eq!(
        server.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::HandshakeFailed
        })
    );
    assert!(
        server.take_transmit().is_some(),
        "an alert tells the peer why: {:?}",
        server.tls_error()
    );

    // A handshake message claiming 16 MiB: refused before anything is buffered for it.
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
    server.handle_input(
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
        T0,
    );
    assert!(
        matches!(server.tls_error(), Some(TlsError::Malformed(_))),
        "{:?}",
        server.tls_error()
    );
    assert!(server.is_closed());

    // A client whose "server" answers with a plaintext remoting frame.
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let id = client
        .send_request(request(b"x"), T0 + 3 * SEC, T0)
        .unwrap();
    let _hello = client.take_transmit().unwrap();
    let mut plain = Session::plain(conn());
    plain.send_oneway(request(b"not tls")).unwrap();
    let frame = plain.take_transmit().unwrap();
    client.handle_input(&frame, T0);
    assert!(
        matches!(client.tls_error(), Some(TlsError::Malformed(_))),
        "{:?}",
        client.tls_error()
    );
    let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert_failed_unwritten(&events, id);
}

#[test]
fn a_plaintext_server_closes_on_a_client_hello_and_the_client_reports_it() {
    let pki = Pki::new();
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::plain(conn());
    let id = client
        .send_request(request(b"x"), T0 + 3 * SEC, T0)
        .unwrap();
    let hello = client.take_transmit().unwrap();
    server.handle_input(&hello, T0);
    // The plaintext server reads the ClientHello as an oversized frame and closes.
    assert!(matches!(
        server.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Corrupt(_)
        })
    ));
    // Its driver closes the socket; the client's driver sees EOF.
    client.handle_disconnect();
    assert_eq!(client.tls_error(), Some(&TlsError::ClosedDuringHandshake));
    let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert_failed_unwritten(&events, id);
}

#[test]
fn a_stalled_handshake_fails_at_its_deadline() {
    let pki = Pki::new();
    let deadline = T0 + SEC;
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, deadline).unwrap();
    let id = client
        .send_request(request(b"x"), T0 + 3 * SEC, T0)
        .unwrap();
    assert!(client.take_transmit().is_some());
    // The server never answers.
    assert_eq!(client.poll_timeout(), Some(deadline));
    client.handle_timeout(remora_core::Instant::from_nanos(deadline.as_nanos() - 1));
    assert!(client.tls_error().is_none() && client.poll_event().is_none());
    client.handle_timeout(deadline);
    assert_eq!(client.tls_error(), Some(&TlsError::HandshakeTimeout));
    let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert_failed_unwritten(&events, id);
    assert_eq!(client.poll_timeout(), None);

    // An enforcing server whose client never sends a byte, and one that stops mid-handshake.
    let mut silent = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), deadline);
    assert_eq!(silent.poll_timeout(), Some(deadline));
    silent.handle_timeout(deadline);
    assert_eq!(silent.tls_error(), Some(&TlsError::HandshakeTimeout));

    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, deadline).unwrap();
    let hello = client.take_transmit().unwrap();
    let mut permissive = Session::server(conn(), &pki.server_tls(ServerMode::Permissive), deadline);
    permissive.handle_input(&hello[..10], T0);
    assert_eq!(
        permissive.poll_timeout(),
        Some(deadline),
        "once the first byte chose TLS, the deadline applies"
    );
    permissive.handle_timeout(deadline);
    assert_eq!(permissive.tls_error(), Some(&TlsError::HandshakeTimeout));
}

#[test]
fn a_request_deadline_still_ends_a_request_waiting_for_the_handshake() {
    let pki = Pki::new();
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + 5 * SEC).unwrap();
    let id = client.send_request(request(b"x"), T0 + SEC, T0).unwrap();
    assert_eq!(client.poll_timeout(), Some(T0 + SEC));
    client.handle_timeout(T0 + SEC);
    assert_eq!(
        client.poll_event(),
        Some(Event::Failed {
            id,
            error: RequestError {
                closed: None,
                written: false
            },
            token: ()
        })
    );
    assert!(client.tls_error().is_none(), "the handshake goes on");
    assert_eq!(client.poll_timeout(), Some(T0 + 5 * SEC));
}

#[test]
fn close_sends_close_notify_and_the_peer_sees_the_end() {
    let pki = Pki::new();
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &pki.server_tls(ServerMode::Enforcing), T0 + SEC);
    pump(&mut client, &mut server, T0);
    assert!(!client.is_handshaking() && !server.is_handshaking());
    let pending = server
        .send_request(request(b"late"), T0 + 3 * SEC, T0)
        .unwrap();
    let wire = server.take_transmit().unwrap();
    client.close();
    client.handle_input(&wire, T0); // ignored: closed
    let notify = client.take_transmit().expect("close_notify");
    server.handle_input(&notify, T0);
    let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(
        events,
        vec![
            Event::Failed {
                id: pending,
                error: RequestError {
                    closed: Some(CloseReason::ConnectionLost),
                    written: true
                },
                token: ()
            },
            Event::Closed {
                reason: CloseReason::ConnectionLost
            }
        ]
    );
    assert_eq!(
        server.tls_error(),
        None,
        "a clean close is not a TLS failure"
    );
}

#[test]
fn the_insecure_verifier_accepts_any_certificate_for_any_name() {
    let pki = Pki::new();
    let rogue = ServerTls::builder()
        .certificate(vec![pki.rogue_server.cert.clone()], pki.rogue_server.key())
        .build()
        .unwrap();
    let insecure = ClientTls::builder()
        .insecure_accept_any_server_certificate()
        .build()
        .unwrap();
    assert!(insecure.is_insecure() && !pki.client_tls().is_insecure());
    let mut client = Session::client(conn(), &insecure, "anything.test", T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &rogue, T0 + SEC);
    let id = client
        .send_request(request(b"x"), T0 + 3 * SEC, T0)
        .unwrap();
    let (events, _) = pump(&mut client, &mut server, T0);
    assert!(matches!(&events[..], [Event::Response { id: got, .. }] if *got == id));
}

#[test]
fn configuration_from_pem_files_and_its_errors() {
    let pki = Pki::new();
    let dir = std::env::temp_dir().join(format!("remora-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = write("server.pem", &pki.server.cert_pem);
    let key = write("server.key", &pki.server.key_pem);
    let ca = write("ca.pem", &pki.ca.cert.pem());
    let client_cert = write("client.pem", &pki.client.cert_pem);
    let client_key = write("client.key", &pki.client.key_pem);
    let empty = write("empty.pem", "nothing here\n");

    let server_tls = ServerTls::builder()
        .certificate_files(&cert, &key)
        .unwrap()
        .client_ca_file(&ca)
        .unwrap()
        .mode("permissive".parse().unwrap())
        .build()
        .unwrap();
    assert_eq!(server_tls.mode(), ServerMode::Permissive);
    let client_tls = ClientTls::builder()
        .trust_ca_file(&ca)
        .unwrap()
        .client_certificate_files(&client_cert, &client_key)
        .unwrap()
        .build()
        .unwrap();
    let mut client = Session::client(conn(), &client_tls, SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &server_tls, T0 + SEC);
    let id = client
        .send_request(request(b"f"), T0 + 3 * SEC, T0)
        .unwrap();
    let (events, _) = pump(&mut client, &mut server, T0);
    assert!(matches!(&events[..], [Event::Response { id: got, .. }] if *got == id));

    assert!(matches!(
        ClientTls::builder().trust_ca_file(dir.join("missing.pem")),
        Err(ConfigError::Pem { .. })
    ));
    assert!(matches!(
        ClientTls::builder().trust_ca_file(&empty),
        Err(ConfigError::NoCertificates { .. })
    ));
    assert!(matches!(
        ClientTls::builder().build(),
        Err(ConfigError::NoTrust)
    ));
    assert!(matches!(
        ServerTls::builder().build(),
        Err(ConfigError::NoCertificate)
    ));
    // A key that is not the certificate's.
    assert!(matches!(
        ServerTls::builder()
            .certificate_files(&cert, &client_key)
            .unwrap()
            .build(),
        Err(ConfigError::Rustls(_))
    ));
    assert!(matches!(
        Session::client(conn(), &pki.client_tls(), "not a name!", T0 + SEC),
        Err(ConfigError::InvalidServerName(_))
    ));
    assert!("strict".parse::<ServerMode>().is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small deterministic generator (xorshift), so the test needs no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_end_in_a_typed_error_never_a_panic_or_a_hang() {
    let pki = Pki::new();
    let permissive = pki.server_tls(ServerMode::Permissive);
    let enforcing = pki.mtls_server_tls();
    let client_tls = pki.client_tls();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut sessions = [
            Session::server(conn(), &permissive, T0 + SEC),
            Session::server(conn(), &enforcing, T0 + SEC),
            Session::client(conn(), &client_tls, SERVER_NAME, T0 + SEC).unwrap(),
        ];
        // At least one byte: a permissive server waits for its first byte without a deadline.
        let len = 1 + (rng.next() % 600) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 2 == 0 {
            // A plausible TLS record header, so the garbage reaches rustls's parsers.
            bytes[0] = 0x16;
            if bytes.len() > 2 {
                bytes[1] = 0x03;
                bytes[2] = (rng.next() % 4) as u8;
            }
        }
        for session in &mut sessions {
            let _ = session.take_transmit();
            for chunk in bytes.chunks(1 + (rng.next() % 64) as usize) {
                session.handle_input(chunk, T0);
            }
            let _ = session.take_transmit();
            // Whatever state it is in, its deadline ends it with a typed error.
            session.handle_timeout(T0 + SEC);
            assert!(
                session.is_closed() || !session.is_handshaking(),
                "round {round}: {session:?}"
            );
            if session.is_tls() {
                assert!(session.tls_error().is_some(), "round {round}: {session:?}");
            }
        }
    }
}

#[test]
fn sessions_and_errors_can_cross_threads_and_options_pick_plaintext() {
    fn send<T: Send + 'static>() {}
    fn shared<T: Send + Sync + Clone + std::error::Error + 'static>() {}
    send::<Session>();
    shared::<TlsError>();
    let _ = remora_core::ConnectError::new(TlsError::HandshakeTimeout);

    let pki = Pki::new();
    let plain = Session::outbound(conn(), None, SERVER_NAME, T0 + SEC).unwrap();
    assert!(!plain.is_tls() && !plain.is_handshaking());
    let plain = Session::inbound(conn(), None, T0 + SEC);
    assert!(!plain.is_handshaking());
    let mut client =
        Session::outbound(conn(), Some(&pki.client_tls()), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::inbound(
        conn(),
        Some(&pki.server_tls(ServerMode::Enforcing)),
        T0 + SEC,
    );
    pump(&mut client, &mut server, T0);
    assert!(client.is_tls() && server.is_tls() && !client.is_handshaking());
}

#[test]
fn a_tls12_only_server_is_reached_by_the_default_client() {
    use remora_tls::rustls;
    let pki = Pki::new();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![pki.server.cert.clone()], pki.server.key())
    .unwrap();
    let server_tls = ServerTls::from_rustls(std::sync::Arc::new(config), ServerMode::Enforcing);
    let mut client = Session::client(conn(), &pki.client_tls(), SERVER_NAME, T0 + SEC).unwrap();
    let mut server = Session::server(conn(), &server_tls, T0 + SEC);
    let id = client
        .send_request(request(b"12"), T0 + 3 * SEC, T0)
        .unwrap();
    let (events, _) = pump(&mut client, &mut server, T0);
    assert!(matches!(&events[..], [Event::Response { id: got, .. }] if *got == id));
    assert_eq!(client.protocol_version(), Some(ProtocolVersion::TLSv1_2));
}

#[test]
fn a_peer_that_closes_before_its_first_byte_is_not_a_tls_failure() {
    let pki = Pki::new();
    for mode in [ServerMode::Enforcing, ServerMode::Permissive] {
        for eof in [true, false] {
            let mut server = Session::server(conn(), &pki.server_tls(mode), T0 + SEC);
            if eof {
                server.handle_eof();
            } else {
                server.handle_disconnect();
            }
            assert!(server.is_closed(), "{mode:?}");
            assert_eq!(
                server.tls_error(),
                None,
                "{mode:?}: a port probe is no TLS error"
            );
            assert_eq!(
                server.poll_timeout(),
                None,
                "{mode:?}: no handshake deadline left"
            );
        }
    }
}
