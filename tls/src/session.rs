//! [`Session`]: one connection's TLS (or plaintext) layer wrapped around its [`Connection`].

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use remora_core::{
    CallError, CloseReason, Command, ConnectError, Connection, Event, IncomingRequest, Instant,
    RequestError, RequestId, SendError,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError, ProtocolVersion};

use crate::config::{ClientTls, ConfigError, ServerMode, ServerTls};

/// The first byte of a TLS handshake record (`ContentType::Handshake`): what a ClientHello
/// starts with. A remoting frame starts with its length's high byte, `0x00` for any frame under
/// 16 MiB, so the two never meet in practice.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Ciphertext waiting to be written above which no more plaintext is taken from the
/// [`Connection`]: what has not been encrypted yet stays there, counted against its
/// `max_transmit_len`, and a request not begun can still be withdrawn.
const OUT_HIGH_WATER: usize = 256 * 1024;

/// Why the TLS layer gave up on a connection. The [`Connection`] under it is closed too (with
/// [`CloseReason::HandshakeFailed`](remora_core::CloseReason::HandshakeFailed) when the
/// handshake never completed, so that no request is reported as possibly delivered).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TlsError {
    /// The peer's certificate does not chain to a trusted CA, or is expired, not yet valid,
    /// revoked or badly signed.
    UntrustedCertificate(rustls::Error),
    /// The peer's certificate is valid but not for the name we connected to.
    NameMismatch(rustls::Error),
    /// A server requiring client certificates (mutual TLS) got none.
    ClientCertificateRequired,
    /// A server in [`ServerMode::Enforcing`] got a connection that does not start with a TLS
    /// handshake: a plaintext client.
    PlaintextPeer {
        /// The connection's first byte (a remoting frame starts with `0x00`).
        first_byte: u8,
    },
    /// The peer ended the handshake with a fatal alert: it refused our certificate, has no
    /// protocol version or cipher in common with us, or did not speak TLS.
    RefusedByPeer(AlertDescription),
    /// The peer sent bytes that are not a well-formed TLS handshake.
    Malformed(rustls::Error),
    /// The handshake did not complete before its deadline.
    HandshakeTimeout,
    /// The transport closed before the handshake completed.
    ClosedDuringHandshake,
    /// Any other TLS failure (no common version or cipher, a record that fails to decrypt).
    Protocol(rustls::Error),
}

impl TlsError {
    fn from_rustls(error: rustls::Error) -> TlsError {
        use rustls::Error as E;
        match error {
            E::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsError::NameMismatch(error),
            E::InvalidCertificate(_) => TlsError::UntrustedCertificate(error),
            E::NoCertificatesPresented => TlsError::ClientCertificateRequired,
            E::AlertReceived(alert) => TlsError::RefusedByPeer(alert),
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_) => TlsError::Malformed(error),
            _ => TlsError::Protocol(error),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::UntrustedCertificate(e) => {
                write!(f, "TLS: the peer's certificate is not trusted: {e}")
            }
            TlsError::NameMismatch(e) => {
                write!(f, "TLS: the peer's certificate is for another name: {e}")
            }
            TlsError::ClientCertificateRequired => {
                f.write_str("TLS: the client presented no certificate and one is required")
            }
            TlsError::PlaintextPeer { first_byte } => write!(
                f,
                "TLS: refused a plaintext connection on a TLS-only port (first byte {first_byte:#04x}, \
                 a TLS handshake starts with 0x16)"
            ),
            TlsError::RefusedByPeer(alert) => {
                write!(f, "TLS: the peer refused the handshake (alert {alert:?})")
            }
            TlsError::Malformed(e) => write!(f, "TLS: the peer sent a malformed handshake: {e}"),
            TlsError::HandshakeTimeout => f.write_str("TLS: the handshake timed out"),
            TlsError::ClosedDuringHandshake => {
                f.write_str("TLS: the connection closed during the handshake")
            }
            TlsError::Protocol(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::UntrustedCertificate(e)
            | TlsError::NameMismatch(e)
            | TlsError::Malformed(e)
            | TlsError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

/// Alerts by which a peer refuses the handshake (our certificate, or the session itself).
/// Received before any application data, they mean the peer's application saw nothing: a TLS
/// 1.3 client finishes its side of the handshake before the server has checked the client's
/// certificate, so this is how a refused client certificate arrives.
fn is_refusal(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
            | AlertDescription::CertificateRequired
    )
}

enum State {
    /// No TLS: bytes go straight to and from the connection.
    Plain,
    /// A server that has not seen its first byte yet.
    Sniff {
        config: Arc<rustls::ServerConfig>,
        enforcing: bool,
    },
    /// TLS, handshaking or established.
    Tls(Box<rustls::Connection>),
    /// TLS failed or the transport ended; only `out` (an alert) may still be written.
    Done,
}

/// One connection's secure layer: the remoting [`Connection`] with TLS (or plaintext) under it,
/// driven sans-IO like the connection itself. The driver moves *socket* bytes and time; the
/// session turns ciphertext into plaintext for the connection and back.
///
/// A driver uses a `Session` where it used a `Connection`: the same inputs and outputs by the
/// same names, with the same drain order (see [`Connection`]), except that
/// [`poll_transmit`](Self::poll_transmit) takes `&mut self` (it encrypts what the connection
/// queued). Plaintext sessions ([`Session::plain`]) pass every call straight through, without
/// a copy, so a driver needs one code path for both.
///
/// # Inputs
/// - [`handle_input`](Self::handle_input), or [`read_buffer`](Self::read_buffer) +
///   [`handle_read`](Self::handle_read): bytes read from the socket.
/// - [`handle_written`](Self::handle_written): how many bytes of
///   [`poll_transmit`](Self::poll_transmit) the socket accepted.
/// - [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout), which
///   includes the handshake deadline.
/// - [`handle_disconnect`](Self::handle_disconnect): EOF, reset or an I/O error.
/// - The application's [`send_request`](Self::send_request), [`send_oneway`](Self::send_oneway),
///   [`send_response`](Self::send_response), [`dismiss`](Self::dismiss),
///   [`cancel`](Self::cancel), [`close`](Self::close).
///
/// # Outputs, drained in this order after every input
/// 1. [`poll_transmit`](Self::poll_transmit) (or [`take_transmit`](Self::take_transmit)) to the
///    socket, reporting [`handle_written`](Self::handle_written);
/// 2. [`poll_event`](Self::poll_event) until `None`;
/// 3. [`poll_timeout`](Self::poll_timeout) for the timer.
///
/// When the connection has closed (an [`Event::Closed`]), write what `poll_transmit` still
/// gives (a TLS alert or `close_notify`), best effort, then close the socket; if the close came
/// from TLS, [`tls_error`](Self::tls_error) says why (for the log line).
///
/// # Guarantees
/// - Requests queued before the handshake completes wait in the connection (their own
///   deadlines run); none of their bytes leaves before the peer is authenticated.
/// - A handshake that fails — untrusted certificate, name mismatch, plaintext peer on an
///   enforcing server, malformed bytes, a refusal by the peer (including the TLS 1.3 refusal of
///   our client certificate, which arrives just after our side completes), its deadline, or the
///   transport closing — fails every waiting request with
///   [`CloseReason::HandshakeFailed`](remora_core::CloseReason::HandshakeFailed) and
///   `written: false`: never "may have reached the peer".
/// - After the handshake, the connection's bytes count as written (for
///   [`RequestError::written`](remora_core::RequestError::written)) when they are encrypted into
///   the session's outgoing buffer, as [`Connection::take_transmit`] counts them when taken: a
///   request is never reported unwritten when it may have left. At most 256 KiB of ciphertext
///   waits in the session; the rest stays in the connection, under its `max_transmit_len`, where
///   a request not yet begun can still be withdrawn.
/// - Nothing the peer sends makes it panic; every failure is a [`TlsError`].
pub struct Session<T = ()> {
    conn: Connection<T>,
    state: State,
    /// Ciphertext (TLS records) waiting to be written.
    out: BytesMut,
    /// Socket bytes read through [`read_buffer`](Self::read_buffer) while not plaintext.
    inbuf: BytesMut,
    /// While handshaking: when to give up.
    handshake_deadline: Option<Instant>,
    /// Deadline an enforcing or TLS-choosing server applies once it knows it is TLS.
    pending_deadline: Option<Instant>,
    /// Whether the peer has sent application data (then an alert is no longer a refusal).
    peer_data_seen: bool,
    /// Whether this connection chose TLS (it stays so after the session ends).
    tls: bool,
    error: Option<TlsError>,
}

impl<T> fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Plain => "plain",
            State::Sniff { .. } => "awaiting first byte",
            State::Tls(tls) if tls.is_handshaking() => "tls handshaking",
            State::Tls(_) => "tls",
            State::Done => "done",
        };
        f.debug_struct("Session")
            .field("state", &state)
            .field("out", &self.out.len())
            .field("error", &self.error)
            .field("conn", &self.conn)
            .finish()
    }
}

impl<T> Session<T> {
    fn with_state(conn: Connection<T>, state: State, handshake_deadline: Option<Instant>) -> Self {
        Session {
            conn,
            tls: matches!(state, State::Tls(_)),
            state,
            out: BytesMut::new(),
            inbuf: BytesMut::new(),
            handshake_deadline,
            pending_deadline: None,
            peer_data_seen: false,
            error: None,
        }
    }

    /// A plaintext session: every call goes straight to `conn`.
    pub fn plain(conn: Connection<T>) -> Self {
        Session::with_state(conn, State::Plain, None)
    }

    /// A TLS client session to `host` (the host part of the address connected to; the
    /// configured server name, if any, replaces it for SNI and verification). The ClientHello
    /// is ready in [`poll_transmit`](Self::poll_transmit) at once. The handshake must complete
    /// by `handshake_deadline` — give the connect deadline, so that connect + handshake stay
    /// within the connect timeout.
    pub fn client(
        conn: Connection<T>,
        tls: &ClientTls,
        host: &str,
        handshake_deadline: Instant,
    ) -> Result<Self, ConfigError> {
        let name: ServerName<'static> = tls.server_name_for(host)?;
        let client = rustls::ClientConnection::new(tls.config.clone(), name)?;
        Ok(Session::with_state(
            conn,
            State::Tls(Box::new(client.into())),
            Some(handshake_deadline),
        ))
    }

    /// A TLS client session verifying `name`. Never fails: a session rustls refuses to start
    /// is returned already failed, as a handshake failure ([`TlsError::Protocol`]).
    pub(crate) fn client_named(
        conn: Connection<T>,
        tls: &ClientTls,
        name: ServerName<'static>,
        handshake_deadline: Instant,
    ) -> Self {
        match rustls::ClientConnection::new(tls.config.clone(), name) {
            Ok(client) => Session::with_state(
                conn,
                State::Tls(Box::new(client.into())),
                Some(handshake_deadline),
            ),
            Err(e) => {
                let mut session = Session::with_state(conn, State::Done, None);
                session.fail(TlsError::Protocol(e), true);
                session
            }
        }
    }

    /// A server session for an accepted connection, in `tls`'s [`ServerMode`]. A TLS handshake
    /// must complete by `handshake_deadline`. In permissive mode the deadline applies only once
    /// the first byte chose TLS (a plaintext client may be idle, as on a plaintext port).
    pub fn server(conn: Connection<T>, tls: &ServerTls, handshake_deadline: Instant) -> Self {
        match tls.mode {
            ServerMode::Disabled => Session::plain(conn),
            ServerMode::Permissive => {
                let mut session = Session::with_state(
                    conn,
                    State::Sniff {
                        config: tls.config.clone(),
                        enforcing: false,
                    },
                    None,
                );
                session.pending_deadline = Some(handshake_deadline);
                session
            }
            ServerMode::Enforcing => Session::with_state(
                conn,
                State::Sniff {
                    config: tls.config.clone(),
                    enforcing: true,
                },
                Some(handshake_deadline),
            ),
        }
    }

    /// A client session: TLS with `tls`, plaintext without — so a driver holding an
    /// `Option<ClientTls>` needs no branch. See [`Session::client`].
    pub fn outbound(
        conn: Connection<T>,
        tls: Option<&ClientTls>,
        host: &str,
        handshake_deadline: Instant,
    ) -> Result<Self, ConfigError> {
        match tls {
            Some(tls) => Session::client(conn, tls, host, handshake_deadline),
            None => Ok(Session::plain(conn)),
        }
    }

    /// A server session: in `tls`'s mode with `tls`, plaintext without. See
    /// [`Session::server`].
    pub fn inbound(
        conn: Connection<T>,
        tls: Option<&ServerTls>,
        handshake_deadline: Instant,
    ) -> Self {
        match tls {
            Some(tls) => Session::server(conn, tls, handshake_deadline),
            None => Session::plain(conn),
        }
    }

    // ---- state ----

    /// The connection under the layer, for its queries (stats, pending counts, close reason).
    pub fn connection(&self) -> &Connection<T> {
        &self.conn
    }

    /// The connection under the layer, for its *application* inputs: sending
    /// ([`Outgoing::send`](remora_core::Outgoing::send), `send_request_with`), answering,
    /// [`Budget::sync`](remora_core::Budget::sync). Its transport inputs and outputs
    /// (`handle_*`, `read_buffer`, `poll_transmit`, `take_transmit`) must go through the
    /// session instead, or plaintext would bypass TLS.
    pub fn connection_mut(&mut self) -> &mut Connection<T> {
        &mut self.conn
    }

    /// Bytes queued for the peer and not yet reported written: the connection's
    /// ([`Connection::unsent_len`]) plus the ciphertext waiting in the session. What a server
    /// waits on before it closes a connection gracefully.
    #[must_use]
    pub fn unsent_len(&self) -> usize {
        self.conn.unsent_len() + self.out.len()
    }

    /// Whether the connection is ready to count as connected: `None` while the TLS handshake is
    /// under way, `Some(Ok(()))` once it completed (at once for plaintext), `Some(Err(_))` once
    /// the connection closed first — [`CallError::Connect`] carrying the [`TlsError`] when TLS
    /// failed. A client driver waits for this before it hands a new connection to its pool, so
    /// a failed handshake is a failed connect.
    pub fn connect_outcome(&self) -> Option<Result<(), CallError>> {
        if self.conn.is_closed() {
            return Some(Err(match &self.error {
                Some(tls) => CallError::Connect(ConnectError::new(tls.clone())),
                None => CallError::ConnectionLost { written: false },
            }));
        }
        (!self.is_handshaking()).then_some(Ok(()))
    }

    /// What a request refused by this connection with `error` returns to its caller:
    /// [`call_error`](Self::call_error)'s mapping for a request sent after the handshake
    /// already failed.
    pub fn send_error(&self, error: SendError) -> CallError {
        match (&self.error, error, self.conn.close_reason()) {
            (Some(tls), SendError::Closed, Some(CloseReason::HandshakeFailed)) => {
                CallError::Connect(ConnectError::new(tls.clone()))
            }
            (_, error, _) => CallError::from(error),
        }
    }

    /// What a request that ended with `error` on this connection returns to its caller: the
    /// core's [`CallError`], except that a request failed by a TLS handshake becomes
    /// [`CallError::Connect`] carrying the [`TlsError`] (downcast it from
    /// [`ConnectError::get`]): the connection was never usable, and the request never left.
    pub fn call_error(&self, error: RequestError) -> CallError {
        match (&self.error, error.closed) {
            (Some(tls), Some(CloseReason::HandshakeFailed)) => {
                CallError::Connect(ConnectError::new(tls.clone()))
            }
            _ => CallError::from(error),
        }
    }

    /// Whether this connection speaks (or spoke) TLS: `false` for plaintext, and for a server
    /// that has not yet seen its first byte or refused a plaintext one.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn is_plain(&self) -> bool {
        matches!(self.state, State::Plain)
    }

    /// A server that has not seen its client's first byte.
    fn awaits_first_byte(&self) -> bool {
        matches!(self.state, State::Sniff { .. })
    }

    /// Whether the TLS handshake is still under way (or a server still awaits its first byte).
    pub fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Sniff { .. } => true,
            State::Tls(tls) => tls.is_handshaking(),
            State::Plain | State::Done => false,
        }
    }

    /// Why TLS failed, once it has.
    pub fn tls_error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    /// Whether the connection is closed (the socket may be closed once
    /// [`poll_transmit`](Self::poll_transmit) is empty).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// The negotiated TLS version, once the handshake completed.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.state {
            State::Tls(tls) => tls.protocol_version(),
            _ => None,
        }
    }

    /// The negotiated cipher suite, once the handshake completed.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        match &self.state {
            State::Tls(tls) => tls.negotiated_cipher_suite(),
            _ => None,
        }
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.state {
            State::Tls(tls) => tls.alpn_protocol(),
            _ => None,
        }
    }

    /// The peer's certificate chain (a server sees the client's only under mutual TLS).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.state {
            State::Tls(tls) => tls.peer_certificates(),
            _ => None,
        }
    }

    // ---- application inputs (see Connection) ----

    /// [`Connection::send_request_with`].
    pub fn send_request_with(
        &mut self,
        cmd: Command,
        deadline: Instant,
        now: Instant,
        token: T,
    ) -> Result<RequestId, SendError> {
        self.conn.send_request_with(cmd, deadline, now, token)
    }

    /// [`Connection::send_request`]. Before the handshake completes the request waits (its
    /// deadline running) and is written once the peer is authenticated.
    pub fn send_request(
        &mut self,
        cmd: Command,
        deadline: Instant,
        now: Instant,
    ) -> Result<RequestId, SendError>
    where
        T: Default,
    {
        self.conn.send_request(cmd, deadline, now)
    }

    /// [`Connection::send_oneway`].
    pub fn send_oneway(&mut self, cmd: Command) -> Result<(), SendError> {
        self.conn.send_oneway(cmd)
    }

    /// [`Connection::send_response`].
    pub fn send_response(
        &mut self,
        request: IncomingRequest,
        response: Command,
    ) -> Result<(), SendError> {
        self.conn.send_response(request, response)
    }

    /// [`Connection::dismiss`].
    pub fn dismiss(&mut self, request: IncomingRequest) {
        self.conn.dismiss(request)
    }

    /// [`Connection::cancel`].
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.conn.cancel(id)
    }

    /// [`Connection::close`]; a TLS session also queues its `close_notify`.
    pub fn close(&mut self) {
        self.conn.close();
        if let State::Tls(tls) = &mut self.state {
            tls.send_close_notify();
            flush(tls, &mut self.out);
        }
    }

    // ---- transport inputs ----

    /// Bytes read from the socket, in order.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        match self.state {
            State::Plain => self.conn.handle_input(data, now),
            State::Sniff { .. } => self.sniff(data, now),
            State::Tls(_) => self.read_tls(data, now),
            State::Done => {}
        }
    }

    /// The buffer the socket may read into directly (append only), then
    /// [`handle_read`](Self::handle_read). For plaintext it is the connection's own buffer.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        match self.state {
            State::Plain => self.conn.read_buffer(),
            _ => &mut self.inbuf,
        }
    }

    /// `appended` bytes were added to [`read_buffer`](Self::read_buffer).
    pub fn handle_read(&mut self, appended: usize, now: Instant) {
        if self.is_plain() {
            self.conn.handle_read(appended, now);
            return;
        }
        let mut data = std::mem::take(&mut self.inbuf);
        self.handle_input(&data, now);
        data.clear();
        if self.is_plain() {
            // The first bytes chose plaintext; later reads go to the connection's buffer.
            return;
        }
        self.inbuf = data;
    }

    /// The socket accepted the first `n` bytes of [`poll_transmit`](Self::poll_transmit).
    pub fn handle_written(&mut self, n: usize) {
        if self.is_plain() {
            self.conn.handle_written(n);
        } else {
            let n = n.min(self.out.len());
            self.out.advance(n);
        }
    }

    /// The peer finished sending (a TCP FIN): [`Connection::handle_eof`] — what it asked
    /// before is still answered. During the handshake this is
    /// [`TlsError::ClosedDuringHandshake`] and no request counts as written; a server's peer
    /// that closes before its first byte just closes (no TLS error: a probe, a health check).
    pub fn handle_eof(&mut self) {
        match self.state {
            State::Plain => self.conn.handle_eof(),
            State::Sniff { .. } => self.handle_disconnect(),
            _ if self.is_handshaking() => self.fail(TlsError::ClosedDuringHandshake, true),
            State::Tls(_) => self.conn.handle_eof(),
            _ => self.conn.handle_disconnect(),
        }
    }

    /// The clock reached `now`: a handshake past its deadline fails, then
    /// [`Connection::handle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .handshake_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            self.fail(TlsError::HandshakeTimeout, true);
        }
        self.conn.handle_timeout(now);
    }

    /// The socket is gone (EOF, reset, I/O error). During the handshake this is
    /// [`TlsError::ClosedDuringHandshake`] and no request counts as written.
    pub fn handle_disconnect(&mut self) {
        if self.awaits_first_byte() {
            // Nothing was said: not a TLS failure (a port probe, a health check).
            self.state = State::Done;
            self.handshake_deadline = None;
            self.pending_deadline = None;
            self.conn.handle_disconnect();
        } else if self.is_handshaking() {
            self.fail(TlsError::ClosedDuringHandshake, true);
        } else {
            if !self.is_plain() {
                self.state = State::Done;
            }
            self.conn.handle_disconnect();
        }
    }

    // ---- outputs ----

    /// The bytes to write to the socket next: the connection's frames (plaintext), or TLS
    /// records — handshake messages, then the connection's frames encrypted, once the
    /// handshake has completed. `None` when there is nothing.
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        if self.is_plain() {
            return self.conn.poll_transmit();
        }
        self.encrypt();
        (!self.out.is_empty()).then(|| &self.out[..])
    }

    /// Takes what [`poll_transmit`](Self::poll_transmit) would show, counted as written at once
    /// (see [`Connection::take_transmit`]). Report the bytes with
    /// [`handle_sent`](Self::handle_sent) once the socket took them.
    pub fn take_transmit(&mut self) -> Option<Bytes> {
        if self.is_plain() {
            return self.conn.take_transmit();
        }
        self.encrypt();
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Takes what [`poll_transmit`](Self::poll_transmit) would show by exchanging buffers with
    /// `spare` (emptied first), counted as written at once: the connection's transmit buffer
    /// ([`Connection::take_transmit_buffer`]) for plaintext, the TLS records for TLS. Returns
    /// how many bytes `spare` now holds; 0, `spare` untouched, when there is nothing or when
    /// the next bytes are a chunk of their own ([`take_transmit`](Self::take_transmit) gives
    /// those). Report the bytes with [`handle_sent`](Self::handle_sent) once the socket took
    /// them.
    pub fn take_transmit_buffer(&mut self, spare: &mut BytesMut) -> usize {
        if self.is_plain() {
            return self.conn.take_transmit_buffer(spare);
        }
        self.encrypt();
        if self.out.is_empty() {
            return 0;
        }
        spare.clear();
        core::mem::swap(&mut self.out, spare);
        spare.len()
    }

    /// The socket took `n` bytes given out by [`take_transmit`](Self::take_transmit)
    /// ([`Connection::handle_sent`]: they stop counting as unsent, so
    /// [`Connection::wants_read`] can turn true again). Encrypted bytes were already reported to
    /// the connection when they were encrypted, so only plaintext is passed on.
    pub fn handle_sent(&mut self, n: usize) {
        if self.is_plain() {
            self.conn.handle_sent(n);
        }
    }

    /// [`Connection::poll_event`].
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.conn.poll_event()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: the connection's
    /// earliest request deadline or the handshake deadline, whichever is first.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.conn.poll_timeout(), self.handshake_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----

    fn sniff(&mut self, data: &[u8], now: Instant) {
        let Some(&first_byte) = data.first() else {
            return;
        };
        let State::Sniff { config, enforcing } = &self.state else {
            return;
        };
        if first_byte == TLS_HANDSHAKE_BYTE {
            match rustls::ServerConnection::new(config.clone()) {
                Ok(server) => {
                    self.state = State::Tls(Box::new(server.into()));
                    self.tls = true;
                    if let Some(deadline) = self.pending_deadline.take() {
                        self.handshake_deadline = Some(deadline);
                    }
                    self.read_tls(data, now);
                }
                Err(e) => self.fail(TlsError::Protocol(e), true),
            }
        } else if *enforcing {
            self.fail(TlsError::PlaintextPeer { first_byte }, true);
        } else {
            self.state = State::Plain;
            self.handshake_deadline = None;
            self.pending_deadline = None;
            self.conn.handle_input(data, now);
        }
    }

    /// Feeds ciphertext to rustls and hands the plaintext it yields to the connection.
    fn read_tls(&mut self, mut data: &[u8], now: Instant) {
        while !data.is_empty() {
            let State::Tls(tls) = &mut self.state else {
                return;
            };
            // Never called with an empty slice: rustls reads 0 bytes as EOF.
            match tls.read_tls(&mut data) {
                Ok(n) if n > 0 => {}
                // rustls refuses more when its buffer is full (a record beyond its limits);
                // taking nothing would loop forever, and dropping bytes would corrupt the stream.
                result => {
                    let during_handshake = tls.is_handshaking();
                    let reason = match result {
                        Err(e) => e.to_string(),
                        Ok(_) => "TLS input refused".into(),
                    };
                    self.fail(
                        TlsError::Malformed(rustls::Error::General(reason)),
                        during_handshake,
                    );
                    return;
                }
            }
            let was_handshaking = tls.is_handshaking();
            let io = match tls.process_new_packets() {
                Ok(io) => io,
                Err(e) => {
                    let refusal = matches!(e, rustls::Error::AlertReceived(alert) if is_refusal(alert))
                        && !self.peer_data_seen;
                    self.fail(TlsError::from_rustls(e), was_handshaking || refusal);
                    return;
                }
            };
            if !tls.is_handshaking() {
                self.handshake_deadline = None;
            }
            let n = io.plaintext_bytes_to_read();
            if n > 0 {
                let buf = self.conn.read_buffer();
                let start = buf.len();
                buf.resize(start + n, 0);
                if tls.reader().read_exact(&mut buf[start..]).is_err() {
                    // rustls said n bytes were ready; never expected, but not a panic.
                    buf.truncate(start);
                    self.fail(
                        TlsError::Protocol(rustls::Error::General(
                            "plaintext shorter than announced".into(),
                        )),
                        false,
                    );
                    return;
                }
                self.peer_data_seen = true;
                self.conn.handle_read(n, now);
            }
            if io.peer_has_closed() {
                // close_notify: the peer's side of the stream has ended (it may still read
                // what we owe it, as after a FIN).
                if tls.is_handshaking() {
                    self.fail(TlsError::ClosedDuringHandshake, true);
                } else {
                    self.conn.handle_eof();
                }
                return;
            }
        }
    }

    /// Moves the connection's plaintext into TLS records in `out` (once the handshake has
    /// completed), plus whatever rustls itself has to send.
    fn encrypt(&mut self) {
        let State::Tls(tls) = &mut self.state else {
            return;
        };
        if !tls.is_handshaking() {
            while self.out.len() < OUT_HIGH_WATER {
                let Some(plain) = self.conn.poll_transmit() else {
                    break;
                };
                let n = tls.writer().write(plain).unwrap_or(0);
                if n == 0 {
                    break;
                }
                self.conn.handle_written(n);
                flush(tls, &mut self.out);
            }
        }
        flush(tls, &mut self.out);
    }

    /// Gives up on TLS: queues rustls's alert (if any) and closes the connection, as a handshake
    /// failure (no request written) when `handshake` is true.
    fn fail(&mut self, error: TlsError, handshake: bool) {
        if let State::Tls(tls) = &mut self.state {
            flush(tls, &mut self.out);
        }
        self.state = State::Done;
        self.handshake_deadline = None;
        self.pending_deadline = None;
        self.error.get_or_insert(error);
        if handshake {
            self.conn.handle_handshake_failure();
        } else {
            self.conn.handle_disconnect();
        }
    }
}

/// The connection's queries (pending counts, stats, close reason,
/// [`wants_read`](Connection::wants_read)) read through the session. Only shared access: the
/// connection's transport inputs and outputs must go through the session
/// ([`connection_mut`](Session::connection_mut) exists for the application's).
impl<T> std::ops::Deref for Session<T> {
    type Target = Connection<T>;

    fn deref(&self) -> &Connection<T> {
        &self.conn
    }
}

/// Moves every TLS record rustls has ready into `out`.
fn flush(tls: &mut rustls::Connection, out: &mut BytesMut) {
    while tls.wants_write() {
        // Writing into memory cannot fail.
        match tls.write_tls(&mut out.writer()) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
