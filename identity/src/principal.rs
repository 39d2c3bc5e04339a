//! Who is on the other end: the role, name and signing key bound into a
//! member certificate.
//!
//! The bindings are two URI subject-alternative names, readable with any
//! X.509 tool (`openssl x509 -text`):
//! - `urn:cohort:member:<role>:<name>`
//! - `urn:cohort:signing-key:p256:<hex of the uncompressed public point>`
//!
//! Only a certificate that already passed chain verification against the
//! consortium CA (the TLS handshake does that) should be read with
//! [`Principal::from_certificate`].

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::signing::MessageVerifyingKey;
use crate::{IdentityError, Role, check_name};

const MEMBER_PREFIX: &str = "urn:cohort:member:";
const SIGNING_KEY_PREFIX: &str = "urn:cohort:signing-key:p256:";

pub(crate) fn member_uri(role: Role, name: &str) -> String {
    format!("{MEMBER_PREFIX}{role}:{name}")
}

pub(crate) fn signing_key_uri(key: &MessageVerifyingKey) -> String {
    format!("{SIGNING_KEY_PREFIX}{}", key.to_hex())
}

/// Serial numbers as lowercase hex without leading zero bytes, so that the
/// CA index, the revocation list and a peer certificate always agree.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let trimmed = &raw[start..];
    if trimmed.is_empty() {
        "00".into()
    } else {
        hex::encode(trimmed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    pub name: String,
    /// Certificate serial number, lowercase hex.
    pub serial: String,
    pub signing_key: MessageVerifyingKey,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// The certificate itself (DER), so that what this principal signed can
    /// be relayed to others together with the proof of who signed it.
    pub certificate_der: Vec<u8>,
}

impl Principal {
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::Certificate(reason);
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| bad(format!("not a valid X.509 certificate: {e}")))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| bad(format!("subject alternative names: {e}")))?
            .ok_or_else(|| bad("certificate has no subject alternative names".into()))?;
        let mut member = None;
        let mut signing_key = None;
        for general_name in &sans.value.general_names {
            let GeneralName::URI(uri) = general_name else {
                continue;
            };
            if let Some(rest) = uri.strip_prefix(MEMBER_PREFIX) {
                let (role, name) = rest
                    .split_once(':')
                    .ok_or_else(|| bad(format!("malformed member URI `{uri}`")))?;
                let role: Role = role.parse()?;
                check_name("member name", name)?;
                if member.replace((role, name.to_string())).is_some() {
                    return Err(bad("certificate names more than one member".into()));
                }
            } else if let Some(hex_key) = uri.strip_prefix(SIGNING_KEY_PREFIX) {
                let key = MessageVerifyingKey::from_hex(hex_key)?;
                if signing_key.replace(key).is_some() {
                    return Err(bad("certificate binds more than one signing key".into()));
                }
            }
        }
        let (role, name) =
            member.ok_or_else(|| bad("certificate binds no Cohort role and name".into()))?;
        let signing_key =
            signing_key.ok_or_else(|| bad("certificate binds no signing key".into()))?;
        Ok(Principal {
            role,
            name,
            serial: serial_hex(cert.raw_serial()),
            signing_key,
            not_after: cert.validity().not_after.timestamp(),
            certificate_der: der.to_vec(),
        })
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.role, self.name)
    }
}
