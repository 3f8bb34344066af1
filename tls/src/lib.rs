//! TLS for Remora's remoting connections: a sans-IO layer, written once for every driver,
//! between the socket bytes and the [`remora_core::Connection`] machine.
//!
//! ```text
//!  socket ──ciphertext──▶ Session::handle_input ──plaintext──▶ Connection ──▶ poll_event
//!  socket ◀─ciphertext── Session::poll_transmit ◀─plaintext── Connection ◀── send_request
//! ```
//!
//! A driver builds one [`ClientTls`] or [`ServerTls`] at start-up (PEM files, trust, mode) and
//! wraps each connection in a [`Session`] — [`Session::client`], [`Session::server`], or
//! [`Session::plain`] without TLS — then drives the session exactly as it drove the
//! connection: feed it socket bytes and time, write what it gives, drain its events. The
//! session never touches a socket or a clock; handshake deadlines are `Instant`s the driver
//! passes in and reads back from [`Session::poll_timeout`].
//!
//! # Why a crate of its own, not a feature of `remora-core`
//! rustls 0.23 with `default-features = false` and its `ring` provider does build without any
//! dependency's `std` feature. It still does not belong in the core: TLS needs fresh entropy
//! from the operating system for every handshake (ring's `SystemRandom`) and wall-clock time
//! to check certificate validity — the core never reads a clock or a global RNG; ring brings a
//! C and assembly build into a crate that is otherwise pure Rust; rustls's buffered API, the
//! simple one, is `std`-only; and loading PEM files or the system trust store is I/O. Every
//! driver is `std` anyway, so the layer is a small `std` crate that all of them share.
//!
//! # Server modes ([`ServerMode`])
//! - `Disabled`: plaintext only.
//! - `Permissive`: TLS and plaintext on one port. The first byte decides: `0x16` (a TLS
//!   handshake record) starts TLS, anything else is plaintext (a remoting frame starts with
//!   `0x00`).
//! - `Enforcing`: TLS only; a plaintext first byte fails the session with
//!   [`TlsError::PlaintextPeer`], whose `Display` is the log line.
//!
//! # Failures
//! Every failure is a [`TlsError`], available from [`Session::tls_error`] once the
//! connection under the session has closed: an untrusted certificate, a name mismatch, a
//! missing client certificate, a plaintext peer on an enforcing port, malformed bytes, a
//! refusal by the peer, a handshake past its deadline, a transport closed mid-handshake. When
//! the handshake did not complete, every request waiting on the connection fails with
//! [`CloseReason::HandshakeFailed`](remora_core::CloseReason::HandshakeFailed) and
//! `written: false`: none is ever reported as possibly delivered.
//!
//! # Trust
//! A client trusts a CA file ([`ClientTlsBuilder::trust_ca_file`]) or the operating system's
//! store ([`ClientTlsBuilder::trust_system_roots`], via `rustls-native-certs`: private CAs
//! installed system-wide are honoured, and the roots follow OS updates).
//! [`ClientTlsBuilder::insecure_accept_any_server_certificate`] exists for test setups only.
//!
//! # Wiring a driver
//! The drivers in this workspace (`remora-std`, `remora-tokio`, `remora-uring`) each hold one
//! [`Secure`] (plaintext, a TLS client to one server, or a TLS server) and wrap every new
//! connection with [`Secure::session`]; that is the whole of their TLS code besides using the
//! session where they used the connection. The steps, for a driver of your own:
//! - At start-up: build a [`Secure`] from the user's flags — [`Secure::client`]`(ClientTls,
//!   "host:port", connect_timeout)` (the host is the SNI name; the connect timeout bounds the
//!   handshake too) or [`Secure::server`]`(ServerTls)` — or [`Secure::plain`]. A `ConfigError`
//!   is a start-up error.
//! - Per connection: [`Secure::session`]`(conn, now)` after the TCP connect or `accept` (or, by
//!   hand, [`Session::outbound`] / [`Session::inbound`] with explicit deadlines).
//! - Then replace every `Connection` transport call by the `Session` call of the same name
//!   (`handle_read`, `handle_eof`, `poll_transmit`, `take_transmit`, `handle_sent`,
//!   `handle_timeout`, `poll_timeout`, `poll_event`, …); [`Session::poll_transmit`] takes
//!   `&mut self`. Queries read through `Deref`; sends go through
//!   [`Session::connection_mut`]. Keep the drain order.
//! - Turn a request's failure into the caller's error with [`Session::call_error`] (and a
//!   refused send with [`Session::send_error`]): a failed handshake becomes
//!   [`CallError::Connect`](remora_core::CallError::Connect) carrying the [`TlsError`].
//! - On [`Event::Closed`](remora_core::Event::Closed): flush [`Session::poll_transmit`] best
//!   effort (a TLS alert), close the socket, and log [`Session::tls_error`] if it is `Some`
//!   (for an enforcing server refusing plaintext this is the "refused a plaintext connection"
//!   line).
//! - Requests already queued fail by themselves through the connection's events, with
//!   `written: false` when the handshake failed.
//!
//! `tls/tests/socket.rs` has a complete blocking driver loop over `std::net::TcpStream` in
//! about 60 lines.
//!
//! # Example
//! A client and a server session exchanging a request in memory:
//! ```
//! use remora_core::{Command, Config, Connection, Event, Instant};
//! use remora_tls::{ClientTls, ServerMode, ServerTls, Session};
//! use core::time::Duration;
//!
//! let cert = rcgen::generate_simple_self_signed(vec!["broker.test".into()]).unwrap();
//! let server_tls = ServerTls::builder()
//!     .certificate(vec![cert.cert.der().clone()], cert.key_pair.serialize_der().try_into().unwrap())
//!     .mode(ServerMode::Enforcing)
//!     .build()
//!     .unwrap();
//! let client_tls = ClientTls::builder().trust_cas(vec![cert.cert.der().clone()]).unwrap().build().unwrap();
//!
//! let now = Instant::ZERO;
//! let deadline = now + Duration::from_secs(3);
//! let mut client =
//!     Session::client(Connection::new(Config::default()), &client_tls, "broker.test", deadline).unwrap();
//! let mut server = Session::server(Connection::new(Config::default()), &server_tls, deadline);
//!
//! // Queued before the handshake: it waits for it.
//! let id = client.send_request(Command::request(105), deadline, now).unwrap();
//! // What each driver does: move the bytes across, both ways, until nothing moves.
//! for _ in 0..10 {
//!     if let Some(bytes) = client.take_transmit() { server.handle_input(&bytes, now); }
//!     while let Some(event) = server.poll_event() {
//!         if let Event::Request { request, command } = event {
//!             server.send_response(request, command.response(0)).unwrap();
//!         }
//!     }
//!     if let Some(bytes) = server.take_transmit() { client.handle_input(&bytes, now); }
//! }
//! assert!(matches!(client.poll_event(), Some(Event::Response { id: got, .. }) if got == id));
//! ```

pub mod config;
mod secure;
mod session;

pub use config::{
    certificates_from_pem, certificates_from_pem_file, private_key_from_pem_file, ClientTls,
    ClientTlsBuilder, ConfigError, ServerMode, ServerTls, ServerTlsBuilder,
    DEFAULT_HANDSHAKE_TIMEOUT,
};
pub use secure::{host_of, Secure};
pub use session::{Session, TlsError, TLS_HANDSHAKE_BYTE};

/// rustls, re-exported for its types ([`rustls::AlertDescription`], certificate types).
pub use rustls;
