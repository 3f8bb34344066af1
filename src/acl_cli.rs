//! ACL on the command line: `--access-key`/`--secret-key`/`--security-token` for the commands
//! that send requests (`call`, `bench`), and `serve --acl FILE` for the echo server.
//!
//! The secret can come from the environment variable [`SECRET_ENV`] instead of the command
//! line, so it stays out of shell history and `ps`.
//!
//! # The `--acl` file
//! One account per line, `ACCESS_KEY=SECRET_KEY` (split at the first `=`, so a secret may
//! contain `=`; surrounding spaces are trimmed). Blank lines and lines starting with `#` are
//! ignored. An access key given twice, or a line without `=` or with an empty side, is an
//! error naming the line.
//!
//! ```text
//! # remora serve --acl accounts.txt
//! rocketmq2=12345678
//! ops = s3cr=t
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use remora_core::acl::{AclCredentials, Signer, Verifier};
use remora_core::{Command, Handler};

/// The environment variable `--secret-key` is read from when not given.
pub const SECRET_ENV: &str = "REMORA_SECRET_KEY";

/// Request signing (RocketMQ ACL 1.0: HmacSHA1 over the ext fields and body).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SignArgs {
    /// ACL access key: sign every request with it and the secret key.
    #[arg(long, value_name = "AK")]
    pub access_key: Option<String>,
    /// ACL secret key (prefer the environment variable, which stays out of shell history).
    #[arg(long, value_name = "SK", env = SECRET_ENV, hide_env_values = true)]
    pub secret_key: Option<String>,
    /// ACL security token (STS credentials), signed along.
    #[arg(long, value_name = "TOKEN")]
    pub security_token: Option<String>,
}

impl SignArgs {
    /// The signer these flags ask for: `None` without `--access-key` (a secret in the
    /// environment alone signs nothing).
    pub fn signer(&self) -> Result<Option<Signer>, String> {
        let Some(access_key) = &self.access_key else {
            if self.security_token.is_some() {
                return Err("--security-token needs --access-key".into());
            }
            return Ok(None);
        };
        let secret = self.secret_key.as_deref().ok_or_else(|| {
            format!("--access-key needs --secret-key or the {SECRET_ENV} environment variable")
        })?;
        if access_key.is_empty() || secret.is_empty() {
            return Err("--access-key and the secret key must not be empty".into());
        }
        let mut credentials = AclCredentials::new(access_key.as_str(), secret);
        if let Some(token) = &self.security_token {
            credentials = credentials.with_security_token(token.as_str());
        }
        Ok(Some(Signer::new(credentials)))
    }
}

/// Access key → secret key, from an `--acl` file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AclTable(HashMap<String, String>);

impl AclTable {
    /// Parses the file format described in the module docs; errors name the line.
    pub fn parse(text: &str) -> Result<AclTable, String> {
        let mut table = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let number = number + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, secret) = line
                .split_once('=')
                .ok_or_else(|| format!("line {number}: expected ACCESS_KEY=SECRET_KEY"))?;
            let (key, secret) = (key.trim(), secret.trim());
            if key.is_empty() || secret.is_empty() {
                return Err(format!("line {number}: empty access key or secret key"));
            }
            if table.insert(key.to_owned(), secret.to_owned()).is_some() {
                return Err(format!("line {number}: access key {key:?} given twice"));
            }
        }
        Ok(AclTable(table))
    }

    /// Reads and parses an `--acl` file.
    pub fn load(path: &Path) -> Result<AclTable, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--acl {}: {e}", path.display()))?;
        let table = AclTable::parse(&text).map_err(|e| format!("--acl {}: {e}", path.display()))?;
        if table.0.is_empty() {
            return Err(format!("--acl {}: no account in the file", path.display()));
        }
        Ok(table)
    }

    /// The secret for `access_key`.
    pub fn secret(&self, access_key: &str) -> Option<&str> {
        self.0.get(access_key).map(String::as_str)
    }
}

/// `inner`, behind an ACL check when `acl` names a file: requests that fail verification are
/// answered `NO_PERMISSION` (16) with the reason as remark, by [`Verifier`].
pub fn guard(inner: impl Handler, acl: Option<&PathBuf>) -> Result<Arc<dyn Handler>, String> {
    Ok(match acl {
        None => Arc::new(inner),
        Some(path) => {
            let table = AclTable::load(path)?;
            Arc::new(Verifier::new(inner, move |access_key: &str| {
                table.secret(access_key).map(str::to_owned)
            }))
        }
    })
}

/// Signs `request` when `signer` is set.
pub fn sign(signer: Option<&Signer>, request: &mut Command) {
    if let Some(signer) = signer {
        signer.sign(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_file_format() {
        let table =
            AclTable::parse("# accounts\n\nrocketmq2=12345678\n  ops = s3cr=t  \n").unwrap();
        assert_eq!(table.secret("rocketmq2"), Some("12345678"));
        assert_eq!(table.secret("ops"), Some("s3cr=t"));
        assert_eq!(table.secret("nobody"), None);
        assert_eq!(
            AclTable::parse("a=1\nb\n").unwrap_err(),
            "line 2: expected ACCESS_KEY=SECRET_KEY"
        );
        assert_eq!(
            AclTable::parse("a=1\na=2\n").unwrap_err(),
            "line 2: access key \"a\" given twice"
        );
        assert!(AclTable::parse("=x\n").is_err());
        assert!(AclTable::parse("x=\n").is_err());
    }

    #[test]
    fn signer_from_flags() {
        let none = SignArgs::default();
        assert!(none.signer().unwrap().is_none());
        let env_only = SignArgs {
            secret_key: Some("s".into()),
            ..SignArgs::default()
        };
        assert!(env_only.signer().unwrap().is_none());
        let no_secret = SignArgs {
            access_key: Some("ak".into()),
            ..SignArgs::default()
        };
        assert!(no_secret.signer().unwrap_err().contains(SECRET_ENV));
        let full = SignArgs {
            access_key: Some("ak".into()),
            secret_key: Some("sk".into()),
            security_token: Some("tok".into()),
        };
        let signer = full.signer().unwrap().unwrap();
        let mut request = Command::request(10);
        sign(Some(&signer), &mut request);
        assert_eq!(request.ext(remora_core::acl::ACCESS_KEY), Some("ak"));
        assert_eq!(request.ext(remora_core::acl::SECURITY_TOKEN), Some("tok"));
        assert!(remora_core::acl::verify(&request, |_: &str| Some("sk")).is_ok());
    }
}
