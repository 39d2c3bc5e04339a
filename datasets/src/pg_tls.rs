//! TLS to a PostgreSQL server, from libpq's own settings: `sslmode` and
//! `sslrootcert` in the connection URL (or `PGSSLMODE` and `PGSSLROOTCERT`
//! in the environment), so a hospital's IT team writes the URL it already
//! uses with `psql`.
//!
//! The server's certificate is always verified (rustls has no unverified
//! mode): against the CA certificates in `sslrootcert`, and its name (DNS
//! or IP) against the host connected to. So `require` and `verify-ca` are
//! as strict as `verify-full`, stricter than libpq, and need `sslrootcert`.
//!
//! | `sslmode` | without `sslrootcert` | with `sslrootcert` |
//! | --- | --- | --- |
//! | `disable` | plaintext | plaintext |
//! | unset, `prefer`, `allow` | plaintext | TLS, plaintext if the server has none |
//! | `require`, `verify-ca`, `verify-full` | refused, naming `sslrootcert` | TLS only |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The driver task of a connection: it ends when the client is dropped.
pub type Driver = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// A PostgreSQL connection's settings and how it is protected.
#[derive(Clone)]
pub struct PgTarget {
    pub config: Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Reads `url` (URL or key=value form) with its TLS settings; the
    /// error names the setting at fault.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, settings) = take_tls_settings(url)?;
        let mut config: Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            format!("not a PostgreSQL URL: {}", crate::sql::describe(&e))
        })?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mode = settings.mode.or_else(|| env("PGSSLMODE"));
        let root = settings
            .root
            .or_else(|| env("PGSSLROOTCERT"))
            .map(PathBuf::from);
        let tls = match (mode.as_deref(), root) {
            (Some("disable"), _) | (None | Some("prefer" | "allow"), None) => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            (None | Some("prefer" | "allow"), Some(root)) => {
                config.ssl_mode(SslMode::Prefer);
                Some(connector(&root)?)
            }
            (Some(mode @ ("require" | "verify-ca" | "verify-full")), None) => {
                return Err(format!(
                    "sslmode={mode}: the database server's certificate is verified, so name the \
                     CA that issued it with sslrootcert=FILE in the URL (or PGSSLROOTCERT)"
                ));
            }
            (Some("require" | "verify-ca" | "verify-full"), Some(root)) => {
                config.ssl_mode(SslMode::Require);
                Some(connector(&root)?)
            }
            (Some(other), _) => {
                return Err(format!(
                    "sslmode={other}: expected disable, allow, prefer, require, verify-ca or \
                     verify-full"
                ));
            }
        };
        Ok(PgTarget { config, tls })
    }

    /// Whether the connection will (or, with `prefer`, may) use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects and spawns the connection's driver on the current runtime.
    pub async fn connect(&self) -> Result<(Client, Driver), tokio_postgres::Error> {
        Ok(match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                (client, tokio::spawn(connection))
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                (client, tokio::spawn(connection))
            }
        })
    }
}

/// The TLS connector trusting the CA certificates of the PEM file `root`.
fn connector(root: &Path) -> Result<MakeRustlsConnect, String> {
    let bad = |e: String| format!("sslrootcert {}: {e}", root.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[derive(Debug, Default, PartialEq)]
struct TlsSettings {
    mode: Option<String>,
    root: Option<String>,
}

/// Libpq's TLS settings taken out of `url` (tokio-postgres knows neither
/// `sslrootcert` nor the `verify-*` modes), and the rest of it.
fn take_tls_settings(url: &str) -> Result<(String, TlsSettings), String> {
    let mut settings = TlsSettings::default();
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => settings.mode = Some(value),
            "sslrootcert" => settings.root = Some(value),
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => {
                return Err(format!(
                    "{key}: client certificates to the database are not supported; \
                     authenticate with a password (PGPASSWORD)"
                ));
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.contains("://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), settings));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value)?)? {
                kept.push(pair);
            }
        }
        let rest = match kept.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", kept.join("&")),
        };
        Ok((rest, settings))
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            if !take(key.trim(), value.trim_matches('\'').to_string())? {
                kept.push(token);
            }
        }
        Ok((kept.join(" "), settings))
    }
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`{value}` has a malformed %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{value}` is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_settings_are_taken_out_of_both_forms() {
        let (rest, s) = take_tls_settings(
            "postgres://omop@db.hospital/cdm?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://omop@db.hospital/cdm?application_name=x");
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.root.as_deref(), Some("/etc/ca dir/ca.pem"));
        let (rest, s) =
            take_tls_settings("host=db user=omop sslmode=require sslrootcert='/ca.pem'").unwrap();
        assert_eq!(rest, "host=db user=omop");
        assert_eq!(s.root.as_deref(), Some("/ca.pem"));
        let (rest, s) = take_tls_settings("postgres://db/cdm").unwrap();
        assert_eq!(
            (rest.as_str(), s),
            ("postgres://db/cdm", TlsSettings::default())
        );
    }

    #[test]
    fn unusable_tls_settings_are_named() {
        let err = PgTarget::parse("postgres://db/cdm?sslmode=verify-full").unwrap_err();
        assert!(err.contains("sslrootcert"), "{err}");
        let err = PgTarget::parse("postgres://db/cdm?sslmode=always").unwrap_err();
        assert!(err.contains("sslmode=always"), "{err}");
        let err = PgTarget::parse("postgres://db/cdm?sslcert=/c.pem").unwrap_err();
        assert!(err.contains("client certificates"), "{err}");
        let err =
            PgTarget::parse("postgres://db/cdm?sslmode=require&sslrootcert=/nonexistent/ca.pem")
                .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let err = PgTarget::parse("postgres://db/cdm?sslrootcert=%zz").unwrap_err();
        assert!(err.contains("%-escape"), "{err}");
        // No settings: plaintext, as before.
        assert!(!PgTarget::parse("postgres://db/cdm").unwrap().uses_tls());
        assert!(
            !PgTarget::parse("postgres://db/cdm?sslmode=disable&sslrootcert=/x")
                .unwrap()
                .uses_tls()
        );
    }
}
