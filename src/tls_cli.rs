//! TLS on the command line: `serve --tls-cert F --tls-key F [--tls-mode M] [--tls-client-ca F]`
//! and `call`/`bench --tls [--tls-ca F] [--tls-server-name N] [--tls-cert F --tls-key F]
//! [--tls-insecure]`.

use std::path::PathBuf;

use remora_tls::{ClientTls, ServerMode, ServerTls};

/// `remora serve`'s TLS flags.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// enforcing: TLS only, plaintext clients are refused (a line on stderr says so);
    /// permissive: TLS and plaintext on the one port (told apart by the first byte).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Mode::Enforcing, requires = "tls_cert")]
    pub tls_mode: Mode,
    /// Require client certificates issued by a CA in this PEM file (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// `--tls-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TLS only.
    #[default]
    Enforcing,
    /// TLS and plaintext on one port.
    Permissive,
}

impl ServeArgs {
    /// The server's TLS, if --tls-cert was given.
    pub fn server_tls(&self) -> Result<Option<ServerTls>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut builder = ServerTls::builder()
            .certificate_files(cert, key)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?
            .mode(match self.tls_mode {
                Mode::Enforcing => ServerMode::Enforcing,
                Mode::Permissive => ServerMode::Permissive,
            });
        if let Some(ca) = &self.tls_client_ca {
            builder = builder
                .client_ca_file(ca)
                .map_err(|e| format!("--tls-client-ca: {e}"))?;
        }
        builder.build().map(Some).map_err(|e| format!("TLS: {e}"))
    }
}

/// `remora call`'s and `remora bench`'s TLS flags (for `call --namesrv`, the name servers'
/// connections too).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ClientArgs {
    /// Connect over TLS (trusting the system's CAs unless --tls-ca is given).
    #[arg(long)]
    pub tls: bool,
    /// Trust the CAs in this PEM file instead of the system's.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        conflicts_with = "tls_insecure"
    )]
    pub tls_ca: Option<PathBuf>,
    /// The name to send as SNI and to verify the server's certificate against (default: the
    /// host of the address).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// Present this client certificate chain (PEM) when the server asks (mutual TLS); needs
    /// --tls-key.
    #[arg(long = "tls-cert", value_name = "FILE", requires_all = ["tls", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "tls-key", value_name = "FILE", requires_all = ["tls", "client_cert"])]
    pub client_key: Option<PathBuf>,
    /// INSECURE, for test setups only: accept any server certificate, for any name. Anyone on
    /// the path can impersonate the server.
    #[arg(long, requires = "tls")]
    pub tls_insecure: bool,
}

impl ClientArgs {
    /// The client's TLS, if --tls was given. --tls-insecure prints a warning on stderr.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, String> {
        if !self.tls {
            return Ok(None);
        }
        let mut builder = ClientTls::builder();
        builder = match (&self.tls_ca, self.tls_insecure) {
            (_, true) => {
                eprintln!(
                    "warning: --tls-insecure: the server's certificate is NOT verified; \
                     anyone on the path can impersonate it (test setups only)"
                );
                builder.insecure_accept_any_server_certificate()
            }
            (Some(ca), false) => builder
                .trust_ca_file(ca)
                .map_err(|e| format!("--tls-ca: {e}"))?,
            (None, false) => builder
                .trust_system_roots()
                .map_err(|e| format!("--tls (system roots): {e}"))?,
        };
        if let Some(name) = &self.tls_server_name {
            builder = builder.server_name(name.as_str());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            builder = builder
                .client_certificate_files(cert, key)
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
        }
        builder.build().map(Some).map_err(|e| format!("TLS: {e}"))
    }

    /// Whether any trust or identity flag was given (they do not apply to `bench`'s embedded
    /// server, which makes its own certificate).
    pub fn has_trust_flags(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_server_name.is_some()
            || self.client_cert.is_some()
            || self.tls_insecure
    }
}

/// A fresh self-signed certificate for 127.0.0.1 and `localhost`, for `bench`'s embedded
/// server, and a client that trusts exactly it (verified, not `--tls-insecure`).
pub fn ephemeral_pair() -> Result<(ServerTls, ClientTls), String> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .map_err(|e| format!("making a certificate: {e}"))?;
    let der = cert.cert.der().clone();
    let key = remora_tls::rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der())
        .map_err(|e| format!("the certificate's key: {e}"))?;
    let server = ServerTls::builder()
        .certificate(vec![der.clone()], key)
        .mode(ServerMode::Enforcing)
        .build()
        .map_err(|e| format!("TLS: {e}"))?;
    let client = ClientTls::builder()
        .trust_cas(vec![der])
        .and_then(|b| b.build())
        .map_err(|e| format!("TLS: {e}"))?;
    Ok((server, client))
}
