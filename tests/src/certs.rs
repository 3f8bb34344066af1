//! Certificates for the TLS tests, made fresh by each test with rcgen: a CA and the leaves it
//! signs. Test data: failures panic.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use remora_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate signed by a [`Ca`], with its private key.
pub struct Leaf {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Leaf {
    /// The leaf's private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.clone()).expect("an rcgen key is a valid private key")
    }
}

impl Ca {
    /// A new CA whose common name is `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key pair");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Ca { cert, key }
    }

    /// The CA's certificate (DER), for trust stores.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("valid subject names");
        let key = KeyPair::generate().expect("a key pair");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a leaf signed by the CA");
        Leaf {
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }
}
