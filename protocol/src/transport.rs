//! How a peer dials the coordinator: mutual TLS with a consortium startup
//! kit, or plaintext HTTP/2 when the operator explicitly asked for it.

use std::sync::Arc;
use std::time::Duration;

use cohort_identity::Kit;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The security of a connection to the coordinator. There is no default:
/// every caller states which one it wants.
#[derive(Debug, Clone)]
pub enum Security {
    /// Plaintext HTTP/2 (`http://`). Anyone on the path can read and alter
    /// the traffic; only for a laptop or a test.
    Insecure,
    /// Mutual TLS (`https://`) with this member's kit.
    MutualTls(Arc<Kit>),
}

impl Security {
    pub fn scheme(&self) -> &'static str {
        match self {
            Security::Insecure => "http",
            Security::MutualTls(_) => "https",
        }
    }

    pub fn kit(&self) -> Option<&Kit> {
        match self {
            Security::Insecure => None,
            Security::MutualTls(kit) => Some(kit),
        }
    }

    pub fn kit_arc(&self) -> Option<Arc<Kit>> {
        match self {
            Security::Insecure => None,
            Security::MutualTls(kit) => Some(kit.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("coordinator URL `{url}`: {message}")]
pub struct EndpointError {
    pub url: String,
    pub message: String,
}

/// The coordinator addresses in a `--coordinator` value: one URL, or
/// several separated by commas (an active coordinator and its standbys),
/// each checked as [`endpoint`] checks it.
pub fn endpoints(
    urls: &str,
    security: &Security,
) -> Result<Vec<(String, Endpoint)>, EndpointError> {
    let listed: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if listed.is_empty() {
        return Err(EndpointError {
            url: urls.to_string(),
            message: "names no coordinator".into(),
        });
    }
    let standbys = listed.len() > 1;
    listed
        .into_iter()
        .map(|url| {
            let mut endpoint = endpoint(url, security)?;
            if standbys {
                // A coordinator that froze or was cut off (not one that
                // died: its sockets close at once) is noticed within 10 s,
                // so that the hospital moves on to the standby that took
                // over from it.
                endpoint = endpoint
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
            }
            Ok((url.to_string(), endpoint))
        })
        .collect()
}

/// Builds a channel to the coordinator. The URL is checked against the
/// security mode here, so a typo or a mismatch (`http://` with a TLS kit)
/// fails at start-up rather than as endless reconnects.
pub fn endpoint(url: &str, security: &Security) -> Result<Endpoint, EndpointError> {
    let bad = |message: String| EndpointError {
        url: url.to_string(),
        message,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("must start with http:// or https://".into()));
    };
    if !matches!(scheme, "http" | "https") {
        return Err(bad("must start with http:// or https://".into()));
    }
    if scheme != security.scheme() {
        return Err(bad(match security {
            Security::Insecure => {
                "https:// needs a startup kit (--tls DIR); --insecure speaks plaintext http://"
                    .into()
            }
            Security::MutualTls(_) => {
                "with --tls the coordinator is reached over https://, not http://".into()
            }
        }));
    }
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let Security::MutualTls(kit) = security else {
        return Ok(endpoint);
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return Err(bad("has no host".into()));
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&kit.ca_pem))
        .identity(Identity::from_pem(&kit.cert_pem, &kit.key_pem))
        .domain_name(host)
        .timeout(Duration::from_secs(10));
    endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))
}
