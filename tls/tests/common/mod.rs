//! Certificates made by the tests (rcgen) and an in-memory link between two sessions.
#![allow(dead_code)]

use core::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use remora_core::{Command, Config, Connection, Event, Instant};
use remora_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use remora_tls::{ClientTls, ServerMode, ServerTls, Session};

/// A certificate authority that can issue leaf certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key_der.clone()).unwrap()
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for these names (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

pub const SERVER_NAME: &str = "broker.test";
pub const T0: Instant = Instant::ZERO;
pub const SEC: Duration = Duration::from_secs(1);

/// The usual cast: a CA, a server certificate for `broker.test` and 127.0.0.1, a client
/// certificate, and a rogue CA that nobody trusts with its own server and client certificates.
pub struct Pki {
    pub ca: Ca,
    pub server: Leaf,
    pub client: Leaf,
    pub rogue_server: Leaf,
    pub rogue_client: Leaf,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("remora test CA");
        let rogue = Ca::new("rogue CA");
        Pki {
            server: ca.issue(&[SERVER_NAME, "127.0.0.1"]),
            client: ca.issue(&["client.test"]),
            rogue_server: rogue.issue(&[SERVER_NAME]),
            rogue_client: rogue.issue(&["client.test"]),
            ca,
        }
    }

    pub fn server_tls(&self, mode: ServerMode) -> ServerTls {
        ServerTls::builder()
            .certificate(vec![self.server.cert.clone()], self.server.key())
            .mode(mode)
            .build()
            .unwrap()
    }

    /// A server that requires client certificates issued by the CA.
    pub fn mtls_server_tls(&self) -> ServerTls {
        ServerTls::builder()
            .certificate(vec![self.server.cert.clone()], self.server.key())
            .client_cas(vec![self.ca.der()])
            .build()
            .unwrap()
    }

    pub fn client_tls(&self) -> ClientTls {
        ClientTls::builder()
            .trust_cas(vec![self.ca.der()])
            .unwrap()
            .build()
            .unwrap()
    }
}

pub fn conn() -> Connection {
    Connection::new(Config::default())
}

/// Moves bytes between two sessions until neither has anything to write (at most 64 rounds),
/// answering every request on either side with its own body. Returns the events other than
/// requests, per side: (client's, server's).
pub fn pump(client: &mut Session, server: &mut Session, now: Instant) -> (Vec<Event>, Vec<Event>) {
    let mut seen = (Vec::new(), Vec::new());
    for _ in 0..64 {
        let mut moved = false;
        if let Some(bytes) = client.take_transmit() {
            server.handle_input(&bytes, now);
            moved = true;
        }
        answer(server, &mut seen.1);
        if let Some(bytes) = server.take_transmit() {
            client.handle_input(&bytes, now);
            moved = true;
        }
        answer(client, &mut seen.0);
        if !moved {
            return seen;
        }
    }
    panic!("the sessions never went quiet");
}

/// Answers every request with SUCCESS and its body; collects the other events.
pub fn answer(session: &mut Session, seen: &mut Vec<Event>) {
    while let Some(event) = session.poll_event() {
        match event {
            Event::Request { request, command } => {
                let body = command.body_bytes();
                session
                    .send_response(request, command.response(0).with_body(body))
                    .unwrap();
            }
            other => seen.push(other),
        }
    }
}

pub fn request(body: &'static [u8]) -> Command {
    Command::request(105).with_body(body)
}
