//! RocketMQ ACL 1.0 request signing, as the Java and C++ clients do it, and its server-side check.
//!
//! A client with ACL credentials signs every request before sending it ([`sign`], or a
//! [`Signer`] held by the driver); a server checks the signature before handling the request
//! ([`verify`], or a [`Verifier`] wrapped around its [`Handler`]). Everything here is a pure
//! function of the [`Command`]: no clock, no I/O.
//!
//! # The algorithm
//! As Apache RocketMQ's `AclClientRPCHook.doBeforeRequest`
//! (`apache/rocketmq`, `acl/src/main/java/org/apache/rocketmq/acl/common/AclClientRPCHook.java`)
//! does it:
//! 1. Add the ext field `AccessKey` (and `SecurityToken`, when the credentials have one) to the
//!    request, whose ext fields already carry its custom header.
//! 2. Put the ext fields into a `TreeMap<String, String>`: one value per key, keys in
//!    `String.compareTo` order, which compares UTF-16 code units (byte order for ASCII keys).
//! 3. The content is every value except `Signature`'s, concatenated in key order, as UTF-8,
//!    followed by the body bytes (`AclUtils.combineRequestContent`, same folder, `AclUtils.java`).
//!    Keys are not part of it.
//! 4. The signature is `Base64(HmacSHA1(secretKey as UTF-8, content))`, standard alphabet with
//!    padding (`AclUtils.calSignature` → `AclSigner.calSignature`, `AclSigner.java`), and is
//!    added as the ext field `Signature`.
//!
//! The broker recomputes it from the request as received, skipping `Signature`
//! (`acl/src/main/java/org/apache/rocketmq/acl/plain/PlainAccessResource.java`, `parse`), looks
//! the access key's secret up, and compares. [`verify`] does the same and compares in constant
//! time. When a decoded request carries a key twice, the last value counts, as in Java's
//! `HashMap` and [`Command::ext`](crate::Command::ext).
//!
//! The C++ client (`apache/rocketmq-client-cpp`, `src/common/ClientRPCHook.cpp`) signs the same
//! way, with its `OnsChannel` ext field among the signed ones; since it sends that field, its
//! requests verify here too.
//!
//! Not covered: ACL 2.0 (RocketMQ 5.3's authentication, a different scheme), and the broker's
//! tolerance, for clients of version 4.9.3 and older, of a `_UNIQUE_KEY_QUERY` field added after
//! signing: such a request fails [`verify`] with [`AclError::BadSignature`].
//!
//! # Example
//! ```
//! use remora_core::acl::{self, AclCredentials, AclError};
//! use remora_core::Command;
//!
//! let creds = AclCredentials::new("rocketmq2", "12345678");
//! let mut request = Command::request(10).with_ext("topic", "orders").with_body(&b"hi"[..]);
//! acl::sign(&mut request, &creds);
//! assert_eq!(request.ext(acl::ACCESS_KEY), Some("rocketmq2"));
//!
//! let secret_of = |access_key: &str| (access_key == "rocketmq2").then_some("12345678");
//! assert_eq!(acl::verify(&request, secret_of), Ok(()));
//!
//! request.set_body(bytes::Bytes::from_static(b"tampered"));
//! assert_eq!(acl::verify(&request, secret_of), Err(AclError::BadSignature));
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use crate::codec::codes;
use crate::codec::command::Command;
use crate::conn::call::Handler;

/// The ext field carrying the access key (`SessionCredentials.ACCESS_KEY`).
pub const ACCESS_KEY: &str = "AccessKey";
/// The ext field carrying the signature (`SessionCredentials.SIGNATURE`); the only field the
/// signature does not cover.
pub const SIGNATURE: &str = "Signature";
/// The ext field carrying the optional security token (`SessionCredentials.SECURITY_TOKEN`).
pub const SECURITY_TOKEN: &str = "SecurityToken";

/// An ACL 1.0 identity: the access key sent with each request, the secret key it is signed with,
/// and an optional security token sent (and signed) along.
///
/// `Debug` does not print the secret key or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AclCredentials {
    /// Sent as the `AccessKey` ext field; the server looks the secret up by it.
    pub access_key: String,
    /// The HMAC key. Never sent.
    pub secret_key: String,
    /// Sent as the `SecurityToken` ext field when set.
    pub security_token: Option<String>,
}

impl AclCredentials {
    /// Credentials without a security token.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        AclCredentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            security_token: None,
        }
    }

    /// Sets the security token.
    pub fn with_security_token(mut self, token: impl Into<String>) -> Self {
        self.security_token = Some(token.into());
        self
    }
}

impl fmt::Debug for AclCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclCredentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a request failed [`verify`]. Its `Display` is the reason [`Verifier`] puts in the remark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AclError {
    /// The request has no `AccessKey` ext field.
    MissingAccessKey,
    /// The lookup knows no secret for the request's access key.
    UnknownAccessKey,
    /// The request has no `Signature` ext field.
    MissingSignature,
    /// The `Signature` ext field does not match the request: it was altered, or signed with
    /// another secret.
    BadSignature,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AclError::MissingAccessKey => "no AccessKey in the request",
            AclError::UnknownAccessKey => "no ACL config for the request's AccessKey",
            AclError::MissingSignature => "no Signature in the request",
            AclError::BadSignature => "the request's Signature does not match",
        })
    }
}

impl core::error::Error for AclError {}

/// Calls `chunk` with each piece of the content to sign, in order: the ext field values except
/// `Signature`'s, one per key (the last one), in Java `String` key order, then the body.
fn for_each_content_chunk(cmd: &Command, mut chunk: impl FnMut(&[u8])) {
    let mut fields: Vec<(&str, &str)> = cmd
        .ext_fields()
        .iter()
        .filter(|(k, _)| *k != SIGNATURE)
        .collect();
    // Stable, so among equal keys the wire order stays and the last entry is the last one sent.
    fields.sort_by(|a, b| java_string_cmp(a.0, b.0));
    for (i, (key, value)) in fields.iter().enumerate() {
        let superseded = fields.get(i + 1).is_some_and(|(next, _)| next == key);
        if !superseded {
            chunk(value.as_bytes());
        }
    }
    chunk(cmd.body());
}

/// Java's `String.compareTo`: lexicographic over UTF-16 code units. It differs from byte
/// (code point) order only between a supplementary character and one in U+E000..=U+FFFF.
fn java_string_cmp(a: &str, b: &str) -> core::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// The bytes [`signature`] signs: the ext field values in key order (without `Signature`'s),
/// then the body. For logging and comparing with another implementation; signing does not
/// build it.
pub fn signed_content(cmd: &Command) -> Vec<u8> {
    let mut content = Vec::new();
    for_each_content_chunk(cmd, |chunk| content.extend_from_slice(chunk));
    content
}

fn mac(cmd: &Command, secret_key: &str) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret_key.as_bytes())
        .expect("HMAC takes a key of any length");
    for_each_content_chunk(cmd, |chunk| mac.update(chunk));
    mac.finalize().into_bytes().into()
}

/// The signature of `cmd` under `secret_key`, as it stands: `Base64(HmacSHA1(secret_key,
/// content))` over [`signed_content`]. Covers every ext field but `Signature` (so it is the same
/// before and after [`sign`] adds that field, and the same however the fields are ordered).
pub fn signature(cmd: &Command, secret_key: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(cmd, secret_key))
}

/// Signs `cmd` as Java's `AclClientRPCHook` does: sets the `AccessKey` ext field (and
/// `SecurityToken`, when the credentials have one), then `Signature` over the result.
///
/// Call it last, once the header and body are final: any later change breaks the signature.
/// Signing again (a retry) replaces the fields and gives the same signature for the same
/// request.
pub fn sign(cmd: &mut Command, creds: &AclCredentials) {
    cmd.ext_fields_mut()
        .insert(ACCESS_KEY, creds.access_key.as_str());
    if let Some(token) = &creds.security_token {
        cmd.ext_fields_mut().insert(SECURITY_TOKEN, token.as_str());
    }
    let signature = signature(cmd, &creds.secret_key);
    cmd.ext_fields_mut().insert(SIGNATURE, signature);
}

/// Checks `cmd`'s signature as the broker does: reads its `AccessKey`, asks `lookup` for that
/// key's secret, recomputes [`signature`] and compares it with the `Signature` field in constant
/// time.
///
/// `lookup` returns anything string-like (`&str`, `&String`, `String`, `Arc<str>`), or `None`
/// for an access key it does not know. It is not called when the request has no access key.
pub fn verify<S: AsRef<str>>(
    cmd: &Command,
    lookup: impl FnOnce(&str) -> Option<S>,
) -> Result<(), AclError> {
    let access_key = cmd.ext(ACCESS_KEY).ok_or(AclError::MissingAccessKey)?;
    let secret = lookup(access_key).ok_or(AclError::UnknownAccessKey)?;
    let given = cmd.ext(SIGNATURE).ok_or(AclError::MissingSignature)?;
    let expected = signature(cmd, secret.as_ref());
    // Lengths are public (a valid signature is always 28 characters); contents are compared in
    // constant time.
    if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(AclError::BadSignature)
    }
}

/// A client's signing hook: holds the credentials; the driver calls [`Signer::sign`] on each
/// request just before sending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    credentials: AclCredentials,
}

impl Signer {
    /// A signer with `credentials`.
    pub fn new(credentials: AclCredentials) -> Self {
        Signer { credentials }
    }

    /// The credentials it signs with.
    pub fn credentials(&self) -> &AclCredentials {
        &self.credentials
    }

    /// Signs `cmd`: see [`sign`].
    pub fn sign(&self, cmd: &mut Command) {
        sign(cmd, &self.credentials);
    }
}

impl From<AclCredentials> for Signer {
    fn from(credentials: AclCredentials) -> Self {
        Signer::new(credentials)
    }
}

/// A [`Handler`] that lets through only requests that pass [`verify`], and answers the others
/// `NO_PERMISSION` ([`codes::NO_PERMISSION`]) with the reason as the remark, without calling the
/// inner handler.
///
/// `lookup` maps an access key to its secret, as for [`verify`]; it is called once per request,
/// from any of the driver's threads.
///
/// # Example
/// ```
/// use remora_core::acl::{self, AclCredentials, Verifier};
/// use remora_core::{codes, Command, Handler};
///
/// let server = Verifier::new(
///     |request: Command| request.response(codes::SUCCESS),
///     |access_key: &str| (access_key == "rocketmq2").then_some("12345678"),
/// );
///
/// let mut request = Command::request(105).with_ext("topic", "orders");
/// assert_eq!(server.handle(request.clone()).code, codes::NO_PERMISSION);
/// acl::sign(&mut request, &AclCredentials::new("rocketmq2", "12345678"));
/// assert_eq!(server.handle(request).code, codes::SUCCESS);
/// ```
pub struct Verifier<H, L> {
    inner: H,
    lookup: L,
}

impl<H, L, S> Verifier<H, L>
where
    H: Handler,
    L: Fn(&str) -> Option<S> + Send + Sync + 'static,
    S: AsRef<str>,
{
    /// Wraps `inner`, checking each request with the secrets `lookup` gives.
    pub fn new(inner: H, lookup: L) -> Self {
        Verifier { inner, lookup }
    }
}

impl<H, L> Verifier<H, L> {
    /// The wrapped handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }

    /// The wrapped handler and the lookup.
    pub fn into_parts(self) -> (H, L) {
        (self.inner, self.lookup)
    }
}

impl<H, L, S> Handler for Verifier<H, L>
where
    H: Handler,
    L: Fn(&str) -> Option<S> + Send + Sync + 'static,
    S: AsRef<str>,
{
    fn handle(&self, request: Command) -> Command {
        match verify(&request, &self.lookup) {
            Ok(()) => self.inner.handle(request),
            Err(e) => request
                .response(codes::NO_PERMISSION)
                .with_remark(format!("ACL check failed: {e}")),
        }
    }
}

impl<H: fmt::Debug, L> fmt::Debug for Verifier<H, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A [`Signer`] signs every attempt a cluster client sends.
impl crate::Hook for Signer {
    fn before_send(&self, request: &mut Command) {
        self.sign(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, Decoded, SerializeType};
    use alloc::collections::BTreeMap;
    use alloc::string::ToString;
    use alloc::sync::Arc;
    use bytes::{Bytes, BytesMut};
    use core::sync::atomic::{AtomicUsize, Ordering};

    const AK: &str = "rocketmq2";
    const SK: &str = "12345678";

    /// Ext fields in non-sorted insertion order, a body, and a security token.
    fn signed_request() -> Command {
        let mut cmd = Command::request(10)
            .with_opaque(7)
            .with_ext("topic", "TopicTest")
            .with_ext("queueId", "3")
            .with_ext("b", "bee")
            .with_ext("Zeta", "z")
            .with_body(&b"hello body"[..]);
        sign(
            &mut cmd,
            &AclCredentials::new(AK, SK).with_security_token("tok"),
        );
        cmd
    }

    fn secrets(access_key: &str) -> Option<&'static str> {
        (access_key == AK).then_some(SK)
    }

    #[test]
    fn known_answer() {
        let cmd = signed_request();
        // Keys sorted as Java's TreeMap does (byte order for ASCII; upper case first):
        // AccessKey, SecurityToken, Zeta, b, queueId, topic.
        assert_eq!(
            signed_content(&cmd),
            b"rocketmq2tokzbee3TopicTesthello body"
        );
        // Computed independently:
        // python3 -c "import hmac,hashlib,base64; print(base64.b64encode(hmac.new(b'12345678',
        //   b'rocketmq2tokzbee3TopicTesthello body', hashlib.sha1).digest()).decode())"
        assert_eq!(cmd.ext(SIGNATURE), Some("WCAPEOc7S7K0eVzQm2KM5UyT3eg="));
        assert_eq!(cmd.ext(ACCESS_KEY), Some(AK));
        assert_eq!(cmd.ext(SECURITY_TOKEN), Some("tok"));
        // The signature does not cover itself.
        assert_eq!(signature(&cmd, SK), "WCAPEOc7S7K0eVzQm2KM5UyT3eg=");
    }

    #[test]
    fn key_order_is_java_utf16_order() {
        // U+1F600 is the surrogate pair D83D DE00 in UTF-16, so Java sorts it before U+FF61,
        // though its UTF-8 bytes (F0 ..) sort after (EF ..).
        let cmd = Command::request(1)
            .with_ext("\u{FF61}", "bmp")
            .with_ext("a", "1")
            .with_ext("\u{1F600}", "astral");
        assert_eq!(signed_content(&cmd), b"1astralbmp");
        // python3: keys sorted by k.encode('utf-16-be'), content b'1astralbmp', key b'secret'.
        assert_eq!(signature(&cmd, "secret"), "3nPSkS3Opna/AlxzJ1fJE6pk0zw=");
    }

    #[test]
    fn insertion_order_and_old_signature_do_not_matter() {
        let a = Command::request(1)
            .with_ext("x", "1")
            .with_ext("y", "2")
            .with_body(&b"b"[..]);
        let b = Command::request(1)
            .with_ext("y", "2")
            .with_ext(SIGNATURE, "stale")
            .with_ext("x", "1")
            .with_body(&b"b"[..]);
        assert_eq!(signature(&a, SK), signature(&b, SK));
        assert_eq!(signed_content(&Command::request(1)), b"");
    }

    #[test]
    fn duplicate_key_last_value_counts() {
        let mut dup = Command::request(1);
        dup.ext_fields_mut().push("k", "first");
        dup.ext_fields_mut().push("a", "A");
        dup.ext_fields_mut().push("k", "last");
        assert_eq!(signed_content(&dup), b"Alast");
        let single = Command::request(1).with_ext("a", "A").with_ext("k", "last");
        assert_eq!(signature(&dup, SK), signature(&single, SK));
    }

    #[test]
    fn sign_then_verify() {
        let cmd = signed_request();
        assert_eq!(verify(&cmd, secrets), Ok(()));
        // Re-signing (a retry) is idempotent.
        let mut again = cmd.clone();
        sign(
            &mut again,
            &AclCredentials::new(AK, SK).with_security_token("tok"),
        );
        assert_eq!(again, cmd);
        // Lookups may return owned or borrowed strings.
        let map: BTreeMap<String, String> = [(AK.to_string(), SK.to_string())].into();
        assert_eq!(verify(&cmd, |ak| map.get(ak)), Ok(()));
        assert_eq!(verify(&cmd, |ak| map.get(ak).cloned()), Ok(()));
    }

    #[test]
    fn signature_survives_the_wire() {
        let codec = Codec::default();
        for ty in [SerializeType::Json, SerializeType::RocketMq] {
            let cmd = signed_request();
            let mut wire = BytesMut::new();
            codec.encode_as(&cmd, ty, &mut wire).unwrap();
            let Decoded::Command(got) = codec.decode(&mut wire).unwrap() else {
                panic!("incomplete frame");
            };
            assert_eq!(verify(&got, secrets), Ok(()), "{ty:?}");
        }
    }

    #[test]
    fn verify_errors() {
        let good = signed_request();

        let mut body = good.clone();
        body.set_body(Bytes::from_static(b"hello bodY"));
        assert_eq!(verify(&body, secrets), Err(AclError::BadSignature));

        let mut field = good.clone();
        field.ext_fields_mut().insert("queueId", "4");
        assert_eq!(verify(&field, secrets), Err(AclError::BadSignature));

        let mut added = good.clone();
        added.ext_fields_mut().insert("extra", "");
        // An empty value adds nothing to the content: Java accepts it too.
        assert_eq!(verify(&added, secrets), Ok(()));
        added.ext_fields_mut().insert("extra", "x");
        assert_eq!(verify(&added, secrets), Err(AclError::BadSignature));

        let mut token = good.clone();
        token.ext_fields_mut().remove(SECURITY_TOKEN);
        assert_eq!(verify(&token, secrets), Err(AclError::BadSignature));

        assert_eq!(
            verify(&good, |_| Some("87654321")),
            Err(AclError::BadSignature)
        );

        let mut truncated = good.clone();
        truncated
            .ext_fields_mut()
            .insert(SIGNATURE, "WCAPEOc7S7K0eVzQm2KM5UyT3eg");
        assert_eq!(verify(&truncated, secrets), Err(AclError::BadSignature));

        assert_eq!(
            verify(&good, |_| None::<&str>),
            Err(AclError::UnknownAccessKey)
        );

        let mut no_sig = good.clone();
        no_sig.ext_fields_mut().remove(SIGNATURE);
        assert_eq!(verify(&no_sig, secrets), Err(AclError::MissingSignature));

        let mut no_key = good.clone();
        no_key.ext_fields_mut().remove(ACCESS_KEY);
        let mut called = false;
        let lookup = |_: &str| {
            called = true;
            Some(SK)
        };
        assert_eq!(verify(&no_key, lookup), Err(AclError::MissingAccessKey));
        assert!(!called);
    }

    fn counting_server() -> (Arc<AtomicUsize>, impl Handler) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let inner = move |request: Command| {
            seen.fetch_add(1, Ordering::SeqCst);
            request.response(codes::SUCCESS).with_body(&b"ok"[..])
        };
        (calls, Verifier::new(inner, secrets))
    }

    #[test]
    fn verifier_rejects_without_calling_inner() {
        let (calls, server) = counting_server();
        let mut bad = signed_request();
        bad.ext_fields_mut().insert("topic", "Other");
        let response = server.handle(bad);
        assert_eq!(response.code, codes::NO_PERMISSION);
        assert!(response.is_response());
        assert_eq!(response.opaque, 7);
        let remark = response.remark().expect("a remark");
        assert!(
            remark.contains(&AclError::BadSignature.to_string()),
            "{remark}"
        );

        let unsigned = Command::request(10).with_opaque(8);
        let response = server.handle(unsigned);
        assert_eq!(response.code, codes::NO_PERMISSION);
        assert!(response
            .remark()
            .unwrap()
            .contains(&AclError::MissingAccessKey.to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn verifier_delegates_good_requests() {
        let (calls, server) = counting_server();
        let response = server.handle(signed_request());
        assert_eq!(response.code, codes::SUCCESS);
        assert_eq!(response.opaque, 7);
        assert_eq!(response.body(), b"ok");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn signer_matches_sign_and_hides_secrets() {
        let creds = AclCredentials::new(AK, SK).with_security_token("tok");
        let signer = Signer::from(creds.clone());
        let mut cmd = Command::request(10)
            .with_opaque(7)
            .with_ext("topic", "TopicTest")
            .with_ext("queueId", "3")
            .with_ext("b", "bee")
            .with_ext("Zeta", "z")
            .with_body(&b"hello body"[..]);
        signer.sign(&mut cmd);
        assert_eq!(cmd, signed_request());
        assert_eq!(signer.credentials(), &creds);
        let debug = format!("{:?}", Signer::new(creds.with_security_token("T0KEN")));
        assert!(debug.contains(AK) && !debug.contains(SK) && !debug.contains("T0KEN"));
    }

    #[test]
    fn error_is_an_error() {
        fn assert_error<E: core::error::Error + Send + Sync + 'static>(_: &E) {}
        assert_error(&AclError::UnknownAccessKey);
        assert_eq!(
            AclError::MissingSignature.to_string(),
            "no Signature in the request"
        );
    }
}
