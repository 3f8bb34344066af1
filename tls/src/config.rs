//! What a TLS endpoint needs before its first connection: certificates, keys, trust, mode.
//!
//! Built once (reading PEM files) and shared by every [`Session`](crate::Session): the
//! configurations are cheap to clone (`Arc`s inside).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a TLS configuration could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// A PEM file could not be read or parsed.
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong (I/O or PEM syntax).
        error: pem::Error,
    },
    /// A PEM input held no certificate.
    NoCertificates {
        /// Where from (`"<memory>"` for in-memory PEM).
        path: PathBuf,
    },
    /// No trust anchor was usable: neither a CA file nor the system store gave one.
    NoTrustAnchors {
        /// What was tried.
        source: &'static str,
    },
    /// A client was configured without a trust decision (no CA, no system roots, not insecure).
    NoTrust,
    /// A server was configured without a certificate and key.
    NoCertificate,
    /// The server name is neither a DNS name nor an IP address.
    InvalidServerName(String),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    Rustls(rustls::Error),
    /// The client-certificate verifier could not be built from the client CAs.
    ClientVerifier(rustls::server::VerifierBuilderError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Pem { path, error } => {
                write!(f, "cannot read PEM file {}: {error}", path.display())
            }
            ConfigError::NoCertificates { path } => {
                write!(f, "no certificate in {}", path.display())
            }
            ConfigError::NoTrustAnchors { source } => {
                write!(f, "no usable trust anchor in {source}")
            }
            ConfigError::NoTrust => f.write_str(
                "no trust configured: give a CA file, use the system roots, or (tests only) \
                 accept any certificate",
            ),
            ConfigError::NoCertificate => f.write_str("a TLS server needs a certificate and key"),
            ConfigError::InvalidServerName(name) => {
                write!(f, "invalid TLS server name {name:?}")
            }
            ConfigError::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
            ConfigError::ClientVerifier(e) => write!(f, "client CA refused: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Pem { error, .. } => Some(error),
            ConfigError::Rustls(e) => Some(e),
            ConfigError::ClientVerifier(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for ConfigError {
    fn from(e: rustls::Error) -> Self {
        ConfigError::Rustls(e)
    }
}

/// The crypto provider every configuration here uses (rustls's `ring` provider).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub fn certificates_from_pem_file(
    path: impl AsRef<Path>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let path = path.as_ref();
    let pem_error = |error| ConfigError::Pem {
        path: path.to_owned(),
        error,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Every certificate in PEM text, in order.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let memory = || PathBuf::from("<memory>");
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ConfigError::Pem {
            path: memory(),
            error,
        })?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificates { path: memory() });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn private_key_from_pem_file(
    path: impl AsRef<Path>,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|error| ConfigError::Pem {
        path: path.to_owned(),
        error,
    })
}

fn root_store(
    certs: Vec<CertificateDer<'static>>,
    source: &'static str,
) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConfigError::NoTrustAnchors { source });
    }
    Ok(roots)
}

/// The operating system's trust store (via `rustls-native-certs`).
fn system_roots() -> Result<RootCertStore, ConfigError> {
    // Unreadable individual files are skipped; only an empty result is an error.
    let found = rustls_native_certs::load_native_certs();
    root_store(found.certs, "the system trust store")
}

/// How a server treats a connection's first bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServerMode {
    /// Plaintext only: TLS is not offered (RocketMQ's `tls.server.mode=disabled`).
    Disabled,
    /// TLS and plaintext on one port: a connection whose first byte opens a TLS handshake
    /// record (`0x16`) gets TLS, any other gets plaintext (`permissive`).
    Permissive,
    /// TLS only: a connection that starts with anything but a TLS handshake record is refused
    /// with [`TlsError::PlaintextPeer`](crate::TlsError::PlaintextPeer) (`enforcing`).
    #[default]
    Enforcing,
}

impl std::str::FromStr for ServerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disabled" => Ok(ServerMode::Disabled),
            "permissive" => Ok(ServerMode::Permissive),
            "enforcing" => Ok(ServerMode::Enforcing),
            other => Err(format!(
                "unknown TLS mode {other:?}: expected disabled, permissive or enforcing"
            )),
        }
    }
}

/// A TLS server's configuration: its certificate chain and key, its [`ServerMode`], and
/// optionally the CAs whose client certificates it requires (mutual TLS).
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) mode: ServerMode,
    pub(crate) handshake_timeout: Duration,
}

/// How long a server gives a TLS handshake by default ([`ServerTlsBuilder::handshake_timeout`]).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A builder; [`ServerTlsBuilder::certificate`] (or `_files`) is required.
    pub fn builder() -> ServerTlsBuilder {
        ServerTlsBuilder::default()
    }

    /// A configuration made directly with rustls (other protocol versions, cipher suites, a
    /// certificate resolver), accepted in `mode`.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>, mode: ServerMode) -> Self {
        ServerTls {
            config,
            mode,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// How long an accepted connection's TLS handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The mode connections are accepted in.
    pub fn mode(&self) -> ServerMode {
        self.mode
    }

    /// The rustls configuration, for inspection.
    pub fn rustls_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

/// Builds a [`ServerTls`].
#[derive(Default)]
pub struct ServerTlsBuilder {
    chain: Vec<CertificateDer<'static>>,
    key: Option<PrivateKeyDer<'static>>,
    client_cas: Vec<CertificateDer<'static>>,
    mode: ServerMode,
    alpn: Vec<Vec<u8>>,
    handshake_timeout: Option<Duration>,
}

impl ServerTlsBuilder {
    /// How long an accepted connection's TLS handshake may take (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]): a client that connects and stalls, or sends half a
    /// handshake, is dropped then with [`TlsError::HandshakeTimeout`](crate::TlsError).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// The server's certificate chain (leaf first) and private key.
    pub fn certificate(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.chain = chain;
        self.key = Some(key);
        self
    }

    /// The server's certificate chain and private key, from PEM files.
    pub fn certificate_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        let chain = certificates_from_pem_file(cert)?;
        let key = private_key_from_pem_file(key)?;
        Ok(self.certificate(chain, key))
    }

    /// Require every client to present a certificate issued by one of these CAs (mutual TLS).
    pub fn client_cas(mut self, cas: Vec<CertificateDer<'static>>) -> Self {
        self.client_cas = cas;
        self
    }

    /// [`client_cas`](Self::client_cas) from a PEM file.
    pub fn client_ca_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let cas = certificates_from_pem_file(path)?;
        Ok(self.client_cas(cas))
    }

    /// How first bytes are treated (default [`ServerMode::Enforcing`]).
    pub fn mode(mut self, mode: ServerMode) -> Self {
        self.mode = mode;
        self
    }

    /// ALPN protocols to accept, most preferred first. Unset by default: RocketMQ peers do not
    /// negotiate ALPN.
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// The configuration, or why it is unusable (a key that does not match the certificate, a
    /// client CA file without a usable CA).
    pub fn build(self) -> Result<ServerTls, ConfigError> {
        let key = self.key.ok_or(ConfigError::NoCertificate)?;
        if self.chain.is_empty() {
            return Err(ConfigError::NoCertificate);
        }
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if self.client_cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            let roots = root_store(self.client_cas, "the client CA file")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(ConfigError::ClientVerifier)?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut config = builder.with_single_cert(self.chain, key)?;
        config.alpn_protocols = self.alpn;
        Ok(ServerTls {
            config: Arc::new(config),
            mode: self.mode,
            handshake_timeout: self.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        })
    }
}

/// A TLS client's configuration: whom it trusts, the name it expects (when not the address's
/// host), its own certificate for mutual TLS, ALPN.
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: Option<ServerName<'static>>,
    insecure: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A builder; one trust decision is required.
    pub fn builder() -> ClientTlsBuilder {
        ClientTlsBuilder::default()
    }

    /// The name sent as SNI and checked against the server's certificate for a connection to
    /// `host` (an address's host part, DNS name or IP): the configured
    /// [`server_name`](ClientTlsBuilder::server_name) if any, else `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, ConfigError> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_owned())
                .map_err(|_| ConfigError::InvalidServerName(host.to_owned())),
        }
    }

    /// A configuration made directly with rustls (other protocol versions, a custom verifier),
    /// verifying `server_name` when given, else the host connected to.
    pub fn from_rustls(
        config: Arc<rustls::ClientConfig>,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        ClientTls {
            config,
            server_name,
            insecure: false,
        }
    }

    /// Whether this configuration accepts any server certificate (test setups only; a
    /// configuration from [`from_rustls`](Self::from_rustls) reports `false`).
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The rustls configuration, for inspection.
    pub fn rustls_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }
}

enum Trust {
    Unset,
    Roots(RootCertStore),
    InsecureAcceptAnyServerCertificate,
}

/// Builds a [`ClientTls`].
pub struct ClientTlsBuilder {
    trust: Trust,
    server_name: Option<String>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: Vec<Vec<u8>>,
}

impl Default for ClientTlsBuilder {
    fn default() -> Self {
        ClientTlsBuilder {
            trust: Trust::Unset,
            server_name: None,
            identity: None,
            alpn: Vec::new(),
        }
    }
}

impl ClientTlsBuilder {
    /// Trust servers whose chain ends at one of these CAs.
    pub fn trust_cas(mut self, cas: Vec<CertificateDer<'static>>) -> Result<Self, ConfigError> {
        self.trust = Trust::Roots(root_store(cas, "the given CAs")?);
        Ok(self)
    }

    /// [`trust_cas`](Self::trust_cas) from a PEM file.
    pub fn trust_ca_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let cas = certificates_from_pem_file(path)?;
        self.trust_cas(cas)
    }

    /// Trust the operating system's store (read now, via `rustls-native-certs`).
    pub fn trust_system_roots(mut self) -> Result<Self, ConfigError> {
        self.trust = Trust::Roots(system_roots()?);
        Ok(self)
    }

    /// **Insecure, for test setups only**: accept any server certificate, for any name, from
    /// any issuer. The handshake's signatures are still checked, but anyone on the path can
    /// impersonate the server. Named loudly so that it stands out in a review.
    pub fn insecure_accept_any_server_certificate(mut self) -> Self {
        self.trust = Trust::InsecureAcceptAnyServerCertificate;
        self
    }

    /// The name to send as SNI and to verify the certificate against, instead of the host of
    /// the address connected to.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Present this certificate chain and key when the server asks (mutual TLS).
    pub fn client_certificate(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.identity = Some((chain, key));
        self
    }

    /// [`client_certificate`](Self::client_certificate) from PEM files.
    pub fn client_certificate_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        let chain = certificates_from_pem_file(cert)?;
        let key = private_key_from_pem_file(key)?;
        Ok(self.client_certificate(chain, key))
    }

    /// ALPN protocols to offer, most preferred first. Unset by default.
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// The configuration, or why it is unusable.
    pub fn build(self) -> Result<ClientTls, ConfigError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let insecure = matches!(self.trust, Trust::InsecureAcceptAnyServerCertificate);
        let builder = match self.trust {
            Trust::Unset => return Err(ConfigError::NoTrust),
            Trust::Roots(roots) => builder.with_root_certificates(roots),
            Trust::InsecureAcceptAnyServerCertificate => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(InsecureAcceptAnyServerCertificate {
                    provider,
                })),
        };
        let mut config = match self.identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        let server_name = match self.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| ConfigError::InvalidServerName(name))?,
            ),
            None => None,
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            insecure,
        })
    }
}

/// Accepts every server certificate; checks only that the handshake is signed by the key in
/// it. For [`ClientTlsBuilder::insecure_accept_any_server_certificate`].
#[derive(Debug)]
struct InsecureAcceptAnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for InsecureAcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
