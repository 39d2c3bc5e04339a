//! Identity plumbing for the CLI, the demo and the benchmarks: choosing
//! between mutual TLS and `--insecure`, and provisioning a throwaway
//! consortium on one machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cohort_coordinator::TlsSettings;
use cohort_identity::{CertificateAuthority, IssueRequest, Kit, Role};
use cohort_protocol::Security;

/// How a command connects, from its `--tls DIR` / `--insecure` flags. One of
/// the two is required: plaintext is never picked silently.
pub fn resolve_security(tls: Option<&Path>, insecure: bool, allowed: &[Role]) -> Result<Security> {
    match (tls, insecure) {
        (Some(_), true) => bail!("--tls and --insecure exclude each other"),
        (None, false) => bail!(
            "choose --tls DIR (mutual TLS with a startup kit from `cohort ca issue`) \
             or --insecure (plaintext, unauthenticated; for a laptop or a test)"
        ),
        (None, true) => {
            warn_insecure();
            Ok(Security::Insecure)
        }
        (Some(dir), false) => {
            let kit = load_kit(dir, allowed)?;
            Ok(Security::MutualTls(Arc::new(kit)))
        }
    }
}

/// The coordinator URL and security of a command's `--coordinator`,
/// `--tls` and `--insecure` flags; the URL defaults to this machine's port
/// 7070 in the chosen scheme.
pub fn resolve_connection(
    coordinator: Option<&str>,
    tls: Option<&Path>,
    insecure: bool,
    allowed: &[Role],
) -> Result<(String, Security)> {
    let security = resolve_security(tls, insecure, allowed)?;
    let url = coordinator
        .map(str::to_string)
        .unwrap_or_else(|| default_url(&security));
    Ok((url, security))
}

/// Reads a startup kit and checks it is current and of an allowed role.
pub fn load_kit(dir: &Path, allowed: &[Role]) -> Result<Kit> {
    let kit = Kit::load(dir)?;
    kit.expect_role(allowed)?;
    kit.check_current()?;
    Ok(kit)
}

fn warn_insecure() {
    eprintln!(
        "warning: --insecure: plaintext gRPC; anyone on the network path can read and alter \
         the traffic, and nobody is authenticated"
    );
}

/// The default coordinator URL for a security mode.
pub fn default_url(security: &Security) -> String {
    format!("{}://127.0.0.1:7070", security.scheme())
}

/// A consortium provisioned on one machine: a CA and kits for one
/// coordinator (serving 127.0.0.1 and localhost), one developer and the
/// given hospitals.
pub struct LocalConsortium {
    pub ca_dir: PathBuf,
    pub coordinator: Arc<Kit>,
    pub developer: Arc<Kit>,
    pub hospitals: Vec<Arc<Kit>>,
}

impl LocalConsortium {
    pub fn provision(dir: &Path, consortium: &str, hospitals: &[String]) -> Result<Self> {
        let ca_dir = dir.join("ca");
        let mut ca = CertificateAuthority::init(consortium, &ca_dir)
            .with_context(|| format!("creating a consortium CA in {}", ca_dir.display()))?;
        let mut issue = |role: Role, name: &str| -> Result<Arc<Kit>> {
            let kit = ca.issue(&IssueRequest::for_days(role, name, 30), &dir.join(name))?;
            Ok(Arc::new(kit))
        };
        let coordinator = issue(Role::Coordinator, "coordinator")?;
        let developer = issue(Role::Developer, "developer")?;
        let hospitals = hospitals
            .iter()
            .map(|name| issue(Role::Hospital, name))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ca_dir,
            coordinator,
            developer,
            hospitals,
        })
    }

    pub fn coordinator_tls(&self) -> TlsSettings {
        TlsSettings {
            kit: self.coordinator.clone(),
            crl: Some(self.ca_dir.join("crl.pem")),
        }
    }
}
