//! Startup kits: what one member of the consortium needs to connect.
//!
//! A kit directory holds:
//! - `cert.crt`: the member certificate (role and name bound in it);
//! - `key.pem`: its TLS private key (mode 600);
//! - `ca.crt`: the consortium root, to authenticate the other side;
//! - `signing-key.pem` (mode 600) and `signing-key.pub.pem`: the key for
//!   signing messages and ledger entries, bound into the certificate;
//! - `kit.json`: a summary for people and scripts;
//! - `crl.pem` (coordinator kits only): the revocation list as issued.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{CA_CERT_FILE, CRL_FILE, create_private_dir};
use crate::signing::MessageSigningKey;
use crate::{IdentityError, Principal, Role};

pub const CERT_FILE: &str = "cert.crt";
pub const KEY_FILE: &str = "key.pem";
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
pub const SIGNING_PUBLIC_KEY_FILE: &str = "signing-key.pub.pem";
pub const SUMMARY_FILE: &str = "kit.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KitSummary {
    pub consortium: String,
    pub role: Role,
    pub name: String,
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// Hex of the uncompressed P-256 point.
    pub signing_public_key: String,
}

#[derive(Debug)]
pub struct Kit {
    pub dir: PathBuf,
    pub consortium: String,
    pub principal: Principal,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub signing_key: MessageSigningKey,
}

impl Kit {
    pub(crate) fn write(
        dir: &Path,
        consortium: &str,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        signing_key: &MessageSigningKey,
        crl_pem: Option<&str>,
    ) -> Result<Kit, IdentityError> {
        create_private_dir(dir)?;
        let principal = Principal::from_certificate(&first_certificate(dir, cert_pem)?)?;
        let signing_public = rcgen::KeyPair::from_pem(signing_key.to_pem())?.public_key_pem();
        write_public(&dir.join(CERT_FILE), cert_pem.as_bytes())?;
        write_private(&dir.join(KEY_FILE), key_pem.as_bytes())?;
        write_public(&dir.join(CA_CERT_FILE), ca_pem.as_bytes())?;
        write_private(&dir.join(SIGNING_KEY_FILE), signing_key.to_pem().as_bytes())?;
        write_public(
            &dir.join(SIGNING_PUBLIC_KEY_FILE),
            signing_public.as_bytes(),
        )?;
        if let Some(crl) = crl_pem {
            write_public(&dir.join(CRL_FILE), crl.as_bytes())?;
        }
        let summary = KitSummary {
            consortium: consortium.to_string(),
            role: principal.role,
            name: principal.name.clone(),
            serial: principal.serial.clone(),
            not_after: principal.not_after,
            signing_public_key: principal.signing_key.to_hex(),
        };
        let json = serde_json::to_vec_pretty(&summary)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        write_public(&dir.join(SUMMARY_FILE), &json)?;
        Kit::load(dir)
    }

    /// Reads a kit and checks that its parts belong together: the
    /// certificate is signed by the kit's CA and binds the kit's signing
    /// key, and the private keys are not readable by other users.
    pub fn load(dir: &Path) -> Result<Kit, IdentityError> {
        let not_kit = |reason: String| IdentityError::NotAKit {
            path: dir.to_path_buf(),
            reason,
        };
        for file in [CERT_FILE, KEY_FILE, CA_CERT_FILE, SIGNING_KEY_FILE] {
            if !dir.join(file).is_file() {
                return Err(not_kit(format!(
                    "{file} is missing (a kit is written by `cohort ca issue`)"
                )));
            }
        }
        check_private_permissions(&dir.join(KEY_FILE))?;
        check_private_permissions(&dir.join(SIGNING_KEY_FILE))?;
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file)).map_err(IdentityError::io(dir.join(file)))
        };
        let cert_pem = read(CERT_FILE)?;
        let key_pem = read(KEY_FILE)?;
        let ca_pem = read(CA_CERT_FILE)?;
        let signing_key = MessageSigningKey::from_pem(&read(SIGNING_KEY_FILE)?)
            .map_err(|e| not_kit(format!("{SIGNING_KEY_FILE}: {e}")))?;
        let cert_der = first_certificate(&dir.join(CERT_FILE), &cert_pem)?;
        let ca_der = first_certificate(&dir.join(CA_CERT_FILE), &ca_pem)?;
        let principal = Principal::from_certificate(&cert_der)?;
        if principal.signing_key != signing_key.verifying_key() {
            return Err(not_kit(format!(
                "{SIGNING_KEY_FILE} is not the signing key bound in {CERT_FILE}"
            )));
        }
        let tls_key =
            rcgen::KeyPair::from_pem(&key_pem).map_err(|e| not_kit(format!("{KEY_FILE}: {e}")))?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| not_kit(format!("{CERT_FILE}: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&tls_key)
        {
            return Err(not_kit(format!(
                "{KEY_FILE} is not the private key of {CERT_FILE}"
            )));
        }
        let (_, ca) = X509Certificate::from_der(&ca_der)
            .map_err(|e| not_kit(format!("{CA_CERT_FILE}: {e}")))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| not_kit(format!("{CERT_FILE} was not issued by {CA_CERT_FILE}")))?;
        let consortium = ca
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Kit {
            dir: dir.to_path_buf(),
            consortium,
            principal,
            cert_pem,
            key_pem,
            ca_pem,
            signing_key,
        })
    }

    /// Refuses a kit whose certificate has expired, with the date, so a
    /// member learns it before the other side rejects the handshake.
    pub fn check_current(&self) -> Result<(), IdentityError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if self.principal.not_after < now {
            let at = time::OffsetDateTime::from_unix_timestamp(self.principal.not_after)
                .map(crate::ca::rfc3339)
                .unwrap_or_default();
            return Err(IdentityError::Validity(format!(
                "the certificate in {} expired at {at}; ask the consortium operator for a new kit",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Refuses a kit made for another role (a hospital kit on a coordinator).
    pub fn expect_role(&self, allowed: &[Role]) -> Result<(), IdentityError> {
        if allowed.contains(&self.principal.role) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        Err(IdentityError::NotAKit {
            path: self.dir.clone(),
            reason: format!(
                "it belongs to {}, but this command needs a {} kit",
                self.principal,
                names.join(" or ")
            ),
        })
    }

    /// Reads another member's certificate, relayed by the coordinator, and
    /// accepts it only if this kit's consortium CA issued it and it is
    /// within its validity period. (Revocation is enforced by the
    /// coordinator, which holds the revocation list.)
    pub fn verify_member(&self, cert_der: &[u8]) -> Result<Principal, IdentityError> {
        let bad = |reason: String| IdentityError::Certificate(reason);
        let ca_der = self.ca_der()?;
        let (_, ca) = X509Certificate::from_der(&ca_der)
            .map_err(|e| bad(format!("consortium CA certificate: {e}")))?;
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| bad(format!("not a valid X.509 certificate: {e}")))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| bad("the certificate was not issued by this consortium's CA".into()))?;
        if !cert.validity().is_valid() {
            return Err(bad(
                "the certificate is not within its validity period".into()
            ));
        }
        Principal::from_certificate(cert_der)
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, IdentityError> {
        first_certificate(&self.dir.join(CERT_FILE), &self.cert_pem)
    }

    pub fn ca_der(&self) -> Result<CertificateDer<'static>, IdentityError> {
        first_certificate(&self.dir.join(CA_CERT_FILE), &self.ca_pem)
    }
}

pub(crate) fn first_certificate(
    path: &Path,
    pem: &str,
) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::NotAKit {
        path: path.to_path_buf(),
        reason: format!("no PEM certificate: {e}"),
    })
}

pub(crate) fn check_private_permissions(path: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(IdentityError::io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyPermissions {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a crash never leaves
/// half a key or half a revocation list.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(path.file_name().unwrap_or_default());
    tmp.push(".tmp");
    let tmp = dir.join(tmp);
    // A leftover from a crash would keep its old mode through `open`.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(IdentityError::io(&tmp))?;
    file.write_all(bytes).map_err(IdentityError::io(&tmp))?;
    file.sync_all().map_err(IdentityError::io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(IdentityError::io(path))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    write_atomic(path, bytes, 0o600)
}

pub(crate) fn write_public(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    write_atomic(path, bytes, 0o644)
}
