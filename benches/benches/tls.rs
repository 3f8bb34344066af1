//! The TLS layer alone, no sockets: `remora_tls::Session` pairs in one thread, plaintext beside
//! TLS in the same run, so the cost of TLS is a same-run ratio.
//!
//! Ids:
//! - `tls/round_trip/{1,64}/{plain,tls}`: `batch` requests (64-byte bodies) from client to
//!   server and their responses back through established sessions (throughput: round trips per
//!   second). `plain` is `Session::plain`, i.e. the bare `Connection`.
//! - `tls/handshake`: a full TLS 1.3 handshake in memory, client and server (ECDSA P-256
//!   certificate from rcgen, the ring provider's default key exchange), until both are
//!   established.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use remora_core::{Command, Config, Connection, Event, Instant};
use remora_tls::rustls::pki_types::PrivateKeyDer;
use remora_tls::{ClientTls, ServerMode, ServerTls, Session};

const NAME: &str = "broker.test";

fn configs() -> (ClientTls, ServerTls) {
    let cert = rcgen::generate_simple_self_signed(vec![NAME.into()]).unwrap();
    let key = PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let server = ServerTls::builder()
        .certificate(vec![cert.cert.der().clone()], key)
        .mode(ServerMode::Enforcing)
        .build()
        .unwrap();
    let client = ClientTls::builder()
        .trust_cas(vec![cert.cert.der().clone()])
        .unwrap()
        .build()
        .unwrap();
    (client, server)
}

fn conn() -> Connection {
    Connection::new(Config::default())
}

/// Moves bytes both ways until neither side has any (answering requests on the server).
fn pump(client: &mut Session, server: &mut Session) {
    let now = Instant::ZERO;
    loop {
        let mut moved = false;
        while let Some(bytes) = client.take_transmit() {
            server.handle_input(&bytes, now);
            moved = true;
        }
        while let Some(event) = server.poll_event() {
            if let Event::Request { request, command } = event {
                let body = command.body_bytes();
                server
                    .send_response(request, command.response(0).with_body(body))
                    .unwrap();
            }
        }
        while let Some(bytes) = server.take_transmit() {
            client.handle_input(&bytes, now);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn pair(tls: Option<&(ClientTls, ServerTls)>) -> (Session, Session) {
    let deadline = Instant::ZERO + Duration::from_secs(3600);
    match tls {
        None => (Session::plain(conn()), Session::plain(conn())),
        Some((client, server)) => {
            let mut c = Session::client(conn(), client, NAME, deadline).unwrap();
            let mut s = Session::server(conn(), server, deadline);
            pump(&mut c, &mut s);
            assert!(!c.is_handshaking() && !s.is_handshaking());
            (c, s)
        }
    }
}

fn round_trips(client: &mut Session, server: &mut Session, batch: usize, body: &bytes::Bytes) {
    let now = Instant::ZERO;
    let deadline = now + Duration::from_secs(3600);
    for _ in 0..batch {
        let request = Command::request(310).with_body(body.clone());
        client.send_request(request, deadline, now).unwrap();
    }
    pump(client, server);
    let mut answered = 0;
    while let Some(event) = client.poll_event() {
        if let Event::Response { response, .. } = event {
            black_box(response);
            answered += 1;
        }
    }
    assert_eq!(answered, batch);
}

fn bench(c: &mut Criterion) {
    let tls = configs();
    let body = bytes::Bytes::from(vec![b'r'; 64]);
    for batch in [1usize, 64] {
        let mut group = c.benchmark_group(format!("tls/round_trip/{batch}"));
        group.throughput(Throughput::Elements(batch as u64));
        for (name, cfg) in [("plain", None), ("tls", Some(&tls))] {
            let (mut client, mut server) = pair(cfg);
            group.bench_function(name, |b| {
                b.iter(|| round_trips(&mut client, &mut server, batch, &body))
            });
        }
        group.finish();
    }
    c.bench_function("tls/handshake", |b| b.iter(|| black_box(pair(Some(&tls)))));
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
