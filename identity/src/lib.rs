//! Consortium identity for Cohort.
//!
//! A consortium has one root certificate authority ([`ca`]). Every member
//! (hospital, developer, validator, coordinator) receives a startup kit
//! ([`kit`]): an X.509 certificate that binds its role and name, the TLS
//! private key, the CA certificate, and a separate ECDSA P-256 key for
//! signing messages and ledger entries whose public half is also bound in
//! the certificate ([`signing`]). [`principal`] reads those bindings back
//! out of a peer's certificate, [`revocation`] reads the CA's revocation
//! list, and [`tls`] builds the rustls configuration for mutual TLS whose
//! revocation list can be swapped while the server runs.
//!
//! This crate knows nothing about gRPC; the coordinator and the clients
//! wire it into their transport.

pub mod ca;
pub mod kit;
pub mod principal;
pub mod revocation;
pub mod signing;
pub mod tls;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use ca::{CertificateAuthority, IssueRequest, IssuedRecord};
pub use kit::Kit;
pub use principal::Principal;
pub use revocation::RevocationList;
pub use signing::{MessageSigningKey, MessageVerifyingKey};

/// What a member of the consortium may do; bound into its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds data; pulls tasks and sends updates.
    Hospital,
    /// Submits jobs and reads their own jobs and models.
    Developer,
    /// Reads everything, changes nothing.
    Validator,
    /// Runs the coordinator (the TLS server).
    Coordinator,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Hospital,
        Role::Developer,
        Role::Validator,
        Role::Coordinator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hospital => "hospital",
            Role::Developer => "developer",
            Role::Validator => "validator",
            Role::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

/// Member and consortium names end up in certificates, URIs, database keys
/// and log lines: keep them boring.
pub fn check_name(what: &str, name: &str) -> Result<(), IdentityError> {
    let bad = |reason: &str| IdentityError::BadName {
        what: what.to_string(),
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if name.starts_with(['-', '.']) {
        return Err(bad("must not start with `-` or `.`"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad("may only contain letters, digits, `-`, `_` and `.`"));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} `{name}` {reason}")]
    BadName {
        what: String,
        name: String,
        reason: String,
    },
    #[error("unknown role `{0}` (expected hospital, developer, validator or coordinator)")]
    UnknownRole(String),
    #[error("{path} already holds a certificate authority; refusing to overwrite it")]
    CaExists { path: PathBuf },
    #[error("{path} is not a Cohort certificate authority directory: {reason}")]
    NotACa { path: PathBuf, reason: String },
    #[error("{path} is not a Cohort startup kit: {reason}")]
    NotAKit { path: PathBuf, reason: String },
    #[error(
        "{path} is readable by other users (mode {mode:o}); a private key must be mode 600 (chmod 600 {path})"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("`{name}` already holds a {existing} certificate; one name has one role")]
    RoleConflict { name: String, existing: Role },
    #[error("no certificate was ever issued to `{0}`")]
    UnknownMember(String),
    #[error("every certificate of `{0}` is already revoked")]
    AlreadyRevoked(String),
    #[error("invalid validity: {0}")]
    Validity(String),
    #[error("`{0}` is neither a DNS name nor an IP address")]
    BadHost(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("revocation list {path}: {reason}")]
    RevocationList { path: PathBuf, reason: String },
    #[error("signature: {0}")]
    Signature(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl IdentityError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| IdentityError::Io { path, source }
    }
}

impl From<rcgen::Error> for IdentityError {
    fn from(e: rcgen::Error) -> Self {
        IdentityError::Certificate(e.to_string())
    }
}
