//! The consortium's root certificate authority.
//!
//! A CA directory holds:
//! - `ca.crt`: the root certificate (ECDSA P-256), public;
//! - `ca.key`: its private key, mode 600, never leaves the operator;
//! - `ca.json`: the consortium name, every certificate issued and whether
//!   it was revoked, and the CRL number;
//! - `crl.pem`: the current certificate revocation list, signed by the CA.
//!   The coordinator reads a copy of it and reloads it when it changes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::kit::{Kit, write_private, write_public};
use crate::principal::{member_uri, signing_key_uri};
use crate::signing::MessageSigningKey;
use crate::{IdentityError, Role, check_name};

pub const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const STATE_FILE: &str = "ca.json";
pub const CRL_FILE: &str = "crl.pem";

/// How long a consortium root stays valid.
const CA_VALIDITY_DAYS: i64 = 3650;
/// Tolerates clocks a few minutes apart across hospitals.
const CLOCK_SKEW: Duration = Duration::minutes(5);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedRecord {
    /// Lowercase hex, as in [`crate::Principal::serial`].
    pub serial: String,
    pub role: Role,
    pub name: String,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CaState {
    consortium: String,
    created_at: String,
    crl_number: u64,
    issued: Vec<IssuedRecord>,
}

/// What to put in a member certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub role: Role,
    pub name: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DNS names and IP addresses the coordinator is reached at (TLS server
    /// names). Only for the coordinator role.
    pub hosts: Vec<String>,
}

impl IssueRequest {
    /// A certificate valid from now (less a little clock skew) for `days`.
    pub fn for_days(role: Role, name: &str, days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            role,
            name: name.to_string(),
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::days(i64::from(days)),
            hosts: Vec::new(),
        }
    }
}

pub struct CertificateAuthority {
    dir: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    state: CaState,
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn random_serial() -> Result<Vec<u8>, IdentityError> {
    let mut bytes = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Certificate("system random generator failed".into()))?;
    // Positive, and no leading zero byte, so every encoding agrees.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(bytes)
}

fn read_text(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(IdentityError::io(path))
}

impl CertificateAuthority {
    /// Creates a new consortium root in `dir` (created if missing; refused
    /// if it already holds a CA).
    pub fn init(consortium: &str, dir: &Path) -> Result<Self, IdentityError> {
        check_name("consortium name", consortium)?;
        if dir.join(CA_KEY_FILE).exists() || dir.join(STATE_FILE).exists() {
            return Err(IdentityError::CaExists {
                path: dir.to_path_buf(),
            });
        }
        create_private_dir(dir)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{consortium} root CA"));
        dn.push(DnType::OrganizationName, consortium);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(SerialNumber::from(random_serial()?));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_private(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
        write_public(&dir.join(CA_CERT_FILE), cert_pem.as_bytes())?;
        let issuer = Issuer::new(params, key);
        let mut ca = Self {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer,
            state: CaState {
                consortium: consortium.to_string(),
                created_at: rfc3339(now),
                crl_number: 0,
                issued: Vec::new(),
            },
        };
        // An empty list from the start: the coordinator always has one to load.
        ca.publish_crl()?;
        ca.save_state()?;
        Ok(ca)
    }

    pub fn open(dir: &Path) -> Result<Self, IdentityError> {
        let not_ca = |reason: String| IdentityError::NotACa {
            path: dir.to_path_buf(),
            reason,
        };
        for file in [CA_CERT_FILE, CA_KEY_FILE, STATE_FILE] {
            if !dir.join(file).is_file() {
                return Err(not_ca(format!("{file} is missing (run `cohort ca init`)")));
            }
        }
        crate::kit::check_private_permissions(&dir.join(CA_KEY_FILE))?;
        let cert_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let key = KeyPair::from_pem(&read_text(&dir.join(CA_KEY_FILE))?)
            .map_err(|e| not_ca(format!("{CA_KEY_FILE}: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| not_ca(format!("{CA_CERT_FILE}: {e}")))?;
        let state: CaState = serde_json::from_str(&read_text(&dir.join(STATE_FILE))?)
            .map_err(|e| not_ca(format!("{STATE_FILE}: {e}")))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer,
            state,
        })
    }

    pub fn consortium(&self) -> &str {
        &self.state.consortium
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL_FILE)
    }

    pub fn issued(&self) -> &[IssuedRecord] {
        &self.state.issued
    }

    /// Issues a member certificate and writes its startup kit to `out`.
    pub fn issue(&mut self, request: &IssueRequest, out: &Path) -> Result<Kit, IdentityError> {
        check_name("member name", &request.name)?;
        if request.not_after <= request.not_before {
            return Err(IdentityError::Validity(
                "the certificate would expire before it becomes valid".into(),
            ));
        }
        if !request.hosts.is_empty() && request.role != Role::Coordinator {
            return Err(IdentityError::Validity(format!(
                "--host names a TLS server; only a coordinator certificate carries them, not a {}",
                request.role
            )));
        }
        if let Some(existing) =
            self.state.issued.iter().find(|r| {
                r.name == request.name && r.role != request.role && r.revoked_at.is_none()
            })
        {
            return Err(IdentityError::RoleConflict {
                name: request.name.clone(),
                existing: existing.role,
            });
        }
        if out.join(crate::kit::KEY_FILE).exists() {
            return Err(IdentityError::NotAKit {
                path: out.to_path_buf(),
                reason: "it already holds a private key; refusing to overwrite it".into(),
            });
        }

        let tls_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let signing_key = MessageSigningKey::generate()?;
        let serial = random_serial()?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, request.name.as_str());
        dn.push(DnType::OrganizationName, self.state.consortium.as_str());
        dn.push(DnType::OrganizationalUnitName, request.role.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = request.not_before;
        params.not_after = request.not_after;
        params.serial_number = Some(SerialNumber::from(serial.clone()));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let uri = |s: String| {
            s.try_into()
                .map(SanType::URI)
                .map_err(|e: rcgen::Error| IdentityError::Certificate(e.to_string()))
        };
        params.subject_alt_names = vec![
            uri(member_uri(request.role, &request.name))?,
            uri(signing_key_uri(&signing_key.verifying_key()))?,
        ];
        if request.role == Role::Coordinator {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            let hosts = if request.hosts.is_empty() {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                request.hosts.clone()
            };
            for host in hosts {
                params.subject_alt_names.push(host_san(&host)?);
            }
        }
        let cert = params.signed_by(&tls_key, &self.issuer)?;

        let record = IssuedRecord {
            serial: hex::encode(&serial),
            role: request.role,
            name: request.name.clone(),
            not_before: rfc3339(request.not_before),
            not_after: rfc3339(request.not_after),
            revoked_at: None,
        };
        let crl = (request.role == Role::Coordinator)
            .then(|| read_text(&self.crl_path()))
            .transpose()?;
        let kit = Kit::write(
            out,
            &self.state.consortium,
            &cert.pem(),
            &tls_key.serialize_pem(),
            &self.cert_pem,
            &signing_key,
            crl.as_deref(),
        )?;
        self.state.issued.push(record);
        self.save_state()?;
        Ok(kit)
    }

    /// Revokes every live certificate issued to `name` and republishes the
    /// revocation list. Returns the revoked records.
    pub fn revoke(&mut self, name: &str) -> Result<Vec<IssuedRecord>, IdentityError> {
        check_name("member name", name)?;
        if !self.state.issued.iter().any(|r| r.name == name) {
            return Err(IdentityError::UnknownMember(name.to_string()));
        }
        let now = rfc3339(OffsetDateTime::now_utc());
        let mut revoked = Vec::new();
        for record in self.state.issued.iter_mut() {
            if record.name == name && record.revoked_at.is_none() {
                record.revoked_at = Some(now.clone());
                revoked.push(record.clone());
            }
        }
        if revoked.is_empty() {
            return Err(IdentityError::AlreadyRevoked(name.to_string()));
        }
        // The list first: a crash between the two writes leaves the index
        // saying "not revoked", and revoking again repairs it.
        self.publish_crl()?;
        self.save_state()?;
        Ok(revoked)
    }

    fn publish_crl(&mut self) -> Result<(), IdentityError> {
        self.state.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for record in &self.state.issued {
            let Some(at) = &record.revoked_at else {
                continue;
            };
            let serial = hex::decode(&record.serial).map_err(|e| IdentityError::NotACa {
                path: self.dir.clone(),
                reason: format!("{STATE_FILE}: serial `{}`: {e}", record.serial),
            })?;
            let revocation_time =
                OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .unwrap_or(now);
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + Duration::days(365),
            crl_number: SerialNumber::from(self.state.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        write_public(&self.crl_path(), crl.pem()?.as_bytes())
    }

    fn save_state(&self) -> Result<(), IdentityError> {
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        write_private(&self.dir.join(STATE_FILE), &json)
    }
}

fn host_san(host: &str) -> Result<SanType, IdentityError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        });
    if !valid_dns {
        return Err(IdentityError::BadHost(host.to_string()));
    }
    host.to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| IdentityError::BadHost(host.to_string()))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(IdentityError::io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(IdentityError::io(dir))?;
    }
    Ok(())
}
