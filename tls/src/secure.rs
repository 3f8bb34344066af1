//! [`Secure`]: how a driver secures each new connection — the one value a client or server
//! holds, whatever its TLS settings.

use core::time::Duration;

use remora_core::{Connection, Instant};
use rustls::pki_types::ServerName;

use crate::config::{ClientTls, ConfigError, ServerTls};
use crate::session::Session;

/// How a driver secures its connections: plaintext, a TLS client to one server, or a TLS
/// server (in its [`ServerMode`](crate::ServerMode)). Built once (cheap to clone: `Arc`s
/// inside), then [`session`](Self::session) wraps each new [`Connection`] — the driver's loop
/// is the same for all three.
///
/// ```
/// use remora_core::{Config, Connection, Instant};
/// use remora_tls::Secure;
///
/// let plain = Secure::plain();
/// let session = plain.session(Connection::new(Config::default()), Instant::ZERO);
/// assert!(!session.is_tls() && !session.is_handshaking());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Secure(Kind);

#[derive(Clone, Debug, Default)]
enum Kind {
    #[default]
    Plain,
    Client {
        tls: ClientTls,
        name: ServerName<'static>,
        handshake_timeout: Duration,
    },
    Server(ServerTls),
}

impl Secure {
    /// No TLS: sessions pass every call straight to the connection.
    pub fn plain() -> Secure {
        Secure(Kind::Plain)
    }

    /// A TLS client to `addr` (`host:port`, `[v6]:port`, or a bare host): the host is the name
    /// sent as SNI and verified against the server's certificate, unless `tls` names another
    /// ([`ClientTlsBuilder::server_name`](crate::ClientTlsBuilder::server_name)). Each
    /// handshake must complete within `handshake_timeout` of the session's start — give the
    /// connect timeout. An unusable name is an error now, not at the first connection.
    pub fn client(
        tls: ClientTls,
        addr: &str,
        handshake_timeout: Duration,
    ) -> Result<Secure, ConfigError> {
        let name = tls.server_name_for(host_of(addr))?;
        Ok(Secure(Kind::Client {
            tls,
            name,
            handshake_timeout,
        }))
    }

    /// A TLS server: each accepted connection is treated by `tls`'s mode, and a TLS
    /// handshake must complete within its
    /// [`handshake_timeout`](crate::ServerTlsBuilder::handshake_timeout).
    pub fn server(tls: ServerTls) -> Secure {
        Secure(Kind::Server(tls))
    }

    /// Whether connections get TLS (a permissive server's may still be plaintext).
    pub fn is_tls(&self) -> bool {
        !matches!(self.0, Kind::Plain)
    }

    /// The session for a connection just connected (client) or accepted (server) at `now`.
    /// Never fails: a TLS client session rustls refuses to start is returned already failed
    /// (its [`tls_error`](Session::tls_error) says why; requests on it end unwritten).
    pub fn session<T>(&self, conn: Connection<T>, now: Instant) -> Session<T> {
        match &self.0 {
            Kind::Plain => Session::plain(conn),
            Kind::Client {
                tls,
                name,
                handshake_timeout,
            } => Session::client_named(conn, tls, name.clone(), now + *handshake_timeout),
            Kind::Server(tls) => Session::server(conn, tls, now + tls.handshake_timeout()),
        }
    }
}

/// The host part of an address: `host` of `host:port`, `v6` of `[v6]:port`; a bare host (or
/// a bare IPv6 address) is returned whole.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _port)) if !host.contains(':') => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_the_port_only() {
        assert_eq!(host_of("broker.test:10911"), "broker.test");
        assert_eq!(host_of("127.0.0.1:9876"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9876"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("broker.test"), "broker.test");
    }
}
