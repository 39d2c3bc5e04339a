//! `cohort ca`: the consortium's certificate authority.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use cohort_identity::{CertificateAuthority, IssueRequest, IssuedRecord, Role};
use serde::Serialize;

/// A root CA just created (`cohort ca init --json`).
#[derive(Debug, Clone, Serialize)]
pub struct CreatedCa {
    pub ca_certificate: PathBuf,
    pub consortium: String,
    pub crl: PathBuf,
    pub dir: PathBuf,
}

pub fn init(consortium: &str, out: &Path) -> Result<CreatedCa> {
    let ca = CertificateAuthority::init(consortium, out)?;
    Ok(CreatedCa {
        ca_certificate: out.join("ca.crt"),
        consortium: ca.consortium().to_string(),
        crl: ca.crl_path(),
        dir: out.to_path_buf(),
    })
}

impl CreatedCa {
    pub fn summary(&self) -> String {
        format!(
            "consortium `{}` root CA created in {}\n  share:      {} and crl.pem\n  keep secret: {} (mode 600)\n",
            self.consortium,
            self.dir.display(),
            self.ca_certificate.display(),
            self.dir.join("ca.key").display()
        )
    }
}

/// A startup kit just issued (`cohort ca issue --json`).
#[derive(Debug, Clone, Serialize)]
pub struct IssuedKit {
    pub dir: PathBuf,
    /// The member as it reads in logs, e.g. `hospital \`st-mary\``.
    #[serde(skip)]
    pub member: String,
    pub name: String,
    pub not_after: i64,
    pub role: Role,
    pub serial: String,
    pub signing_public_key: String,
}

/// What `cohort ca issue` asks for.
#[derive(Debug, Clone)]
pub struct KitRequest {
    pub role: Role,
    pub name: String,
    pub days: u32,
    /// Coordinator only: names clients use to reach it.
    pub hosts: Vec<String>,
}

pub fn issue(ca: &Path, request: &KitRequest, out: &Path) -> Result<IssuedKit> {
    let mut authority = CertificateAuthority::open(ca)?;
    let mut issue = IssueRequest::for_days(request.role, &request.name, request.days.max(1));
    issue.hosts = request.hosts.clone();
    let kit = authority.issue(&issue, out)?;
    let p = &kit.principal;
    Ok(IssuedKit {
        dir: out.to_path_buf(),
        member: p.to_string(),
        name: p.name.clone(),
        not_after: p.not_after,
        role: p.role,
        serial: p.serial.clone(),
        signing_public_key: p.signing_key.to_hex(),
    })
}

impl IssuedKit {
    pub fn summary(&self) -> String {
        format!(
            "startup kit for {} written to {} (serial {})\n  hand the whole directory to its owner over a trusted channel\n",
            self.member,
            self.dir.display(),
            self.serial
        )
    }
}

/// A member revoked (`cohort ca revoke --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Revocation {
    pub crl: PathBuf,
    pub revoked: Vec<IssuedRecord>,
}

pub fn revoke(ca: &Path, name: &str) -> Result<Revocation> {
    let mut authority = CertificateAuthority::open(ca)?;
    let revoked = authority.revoke(name)?;
    Ok(Revocation {
        crl: authority.crl_path(),
        revoked,
    })
}

impl Revocation {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for r in &self.revoked {
            let _ = writeln!(out, "revoked {} `{}` (serial {})", r.role, r.name, r.serial);
        }
        let _ = writeln!(
            out,
            "copy {} to the coordinator's --crl path; it is reloaded within seconds",
            self.crl.display()
        );
        out
    }
}

/// Every certificate the CA issued.
pub fn list(ca: &Path) -> Result<Vec<IssuedRecord>> {
    Ok(CertificateAuthority::open(ca)?.issued().to_vec())
}

pub fn render_list(issued: &[IssuedRecord]) -> String {
    let mut out = String::new();
    for r in issued {
        let _ = writeln!(
            out,
            "{:<12} {:<24} serial {}  until {}  {}",
            r.role,
            r.name,
            r.serial,
            r.not_after,
            r.revoked_at
                .as_ref()
                .map(|at| format!("REVOKED {at}"))
                .unwrap_or_default()
        );
    }
    out
}
