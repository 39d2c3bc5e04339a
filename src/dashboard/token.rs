//! Dashboard access tokens: `v1.<claims>.<signature>`, both parts
//! unpadded base64url, the claims JSON signed (ECDSA P-256, the identity
//! crate's message signatures, under their own context) by a key the
//! coordinator keeps in its data directory. Whoever can read that
//! directory can mint tokens: the same people who can read the database
//! the dashboard shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cohort_identity::{MessageSigningKey, MessageVerifyingKey};
use serde::{Deserialize, Serialize};

/// The token-signing key, next to `coordinator.sqlite`.
pub const KEY_FILE: &str = "dashboard-token-key.pem";
/// Signature context: a dashboard token's signature verifies for nothing else.
const CONTEXT: &str = "cohort-dashboard-token-v1";
const PREFIX: &str = "v1.";
/// Longest lifetime a token may be issued for (a year).
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// What a token holder may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DashboardRole {
    /// The jobs it submitted (the name its developer certificate carries).
    Developer,
    /// The jobs it took part in, with only its own privacy budget and rewards.
    Hospital,
    /// Everything.
    Operator,
}

impl DashboardRole {
    pub fn as_str(self) -> &'static str {
        match self {
            DashboardRole::Developer => "developer",
            DashboardRole::Hospital => "hospital",
            DashboardRole::Operator => "operator",
        }
    }
}

impl std::str::FromStr for DashboardRole {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "developer" => Ok(DashboardRole::Developer),
            "hospital" => Ok(DashboardRole::Hospital),
            "operator" => Ok(DashboardRole::Operator),
            other => Err(TokenError::UnknownRole(other.to_string())),
        }
    }
}

/// The signed part of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub role: DashboardRole,
    /// The developer's or hospital's name as the coordinator records it
    /// (its certificate's); for an operator, who holds the token.
    pub name: String,
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown role `{0}`: expected developer, hospital or operator")]
    UnknownRole(String),
    #[error("name: {0}")]
    Name(String),
    #[error("--ttl-secs must be between 1 and {} seconds", MAX_TTL.as_secs())]
    Ttl,
    #[error(
        "{} is not a coordinator's data directory (it has no coordinator.sqlite)",
        .0.display()
    )]
    NotDataDir(PathBuf),
    #[error(transparent)]
    Key(#[from] cohort_identity::IdentityError),
    /// Every way a presented token can be wrong; callers answer 401 and
    /// say no more.
    #[error("invalid dashboard token")]
    Invalid,
    #[error("dashboard token expired")]
    Expired,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The data directory's token key, created on first use.
pub fn signing_key(data_dir: &Path) -> Result<MessageSigningKey, TokenError> {
    if !data_dir.join("coordinator.sqlite").is_file() {
        return Err(TokenError::NotDataDir(data_dir.to_path_buf()));
    }
    Ok(MessageSigningKey::load_or_create(&data_dir.join(KEY_FILE))?)
}

/// Signs a token for `role`/`name` valid for `ttl` from now.
pub fn issue(
    key: &MessageSigningKey,
    role: DashboardRole,
    name: &str,
    ttl: Duration,
) -> Result<String, TokenError> {
    cohort_coordinator::server::check_client_name(name).map_err(TokenError::Name)?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(TokenError::Ttl);
    }
    let issued_at = unix_now();
    let claims = Claims {
        role,
        name: name.to_string(),
        issued_at,
        expires_at: issued_at + ttl.as_secs(),
    };
    let body = serde_json::to_vec(&claims).map_err(|_| TokenError::Invalid)?;
    let signature = key.sign(CONTEXT, &body)?;
    Ok(format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// `cohort dashboard token`: a token signed with `data_dir`'s key.
pub fn issue_for(
    data_dir: &Path,
    role: DashboardRole,
    name: &str,
    ttl: Duration,
) -> Result<String, TokenError> {
    issue(&signing_key(data_dir)?, role, name, ttl)
}

/// Checks tokens against the coordinator's token key.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    key: MessageVerifyingKey,
}

impl TokenVerifier {
    pub fn new(key: MessageVerifyingKey) -> Self {
        Self { key }
    }

    /// The claims of a well-formed, correctly signed, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, unix_now())
    }

    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Invalid)?;
        let (body, signature) = rest.split_once('.').ok_or(TokenError::Invalid)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Invalid)?;
        self.key
            .verify(CONTEXT, &body, &signature)
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Invalid)?;
        if now >= claims.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unaltered_unexpired_and_under_their_key() {
        let key = MessageSigningKey::generate().unwrap();
        let verifier = TokenVerifier::new(key.verifying_key());
        let token = issue(
            &key,
            DashboardRole::Hospital,
            "hospital-a",
            Duration::from_secs(60),
        )
        .unwrap();
        let claims = verifier.verify(&token).unwrap();
        assert_eq!(claims.role, DashboardRole::Hospital);
        assert_eq!(claims.name, "hospital-a");
        assert!(matches!(
            verifier.verify_at(&token, claims.expires_at),
            Err(TokenError::Expired)
        ));
        // Another key's token, a claims part swapped for an operator's,
        // and garbage are all refused.
        let other = MessageSigningKey::generate().unwrap();
        let forged = issue(
            &other,
            DashboardRole::Operator,
            "mallory",
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(verifier.verify(&forged), Err(TokenError::Invalid)));
        let (_, forged_sig) = forged.rsplit_once('.').unwrap();
        let (real_body, _) = token.rsplit_once('.').unwrap();
        let spliced = format!("{real_body}.{forged_sig}");
        assert!(matches!(
            verifier.verify(&spliced),
            Err(TokenError::Invalid)
        ));
        for junk in ["", "v1.", "v1..", "Bearer x", "v2.abc.def"] {
            assert!(matches!(verifier.verify(junk), Err(TokenError::Invalid)));
        }
    }

    #[test]
    fn bad_names_and_lifetimes_are_refused_when_issuing() {
        let key = MessageSigningKey::generate().unwrap();
        let day = Duration::from_secs(86400);
        assert!(matches!(
            issue(&key, DashboardRole::Developer, "a b", day),
            Err(TokenError::Name(_))
        ));
        assert!(matches!(
            issue(&key, DashboardRole::Developer, "dev", Duration::ZERO),
            Err(TokenError::Ttl)
        ));
        assert!(matches!(
            "admin".parse::<DashboardRole>(),
            Err(TokenError::UnknownRole(_))
        ));
    }
}
