//! Per-hospital parts of an entry, sealed so that only those entitled read
//! them.
//!
//! A job's entries are read by every hospital enrolled in it, but what one
//! hospital reported (its row count, its update receipt, the ε it spent on
//! the job) is that hospital's business, its developer's and the auditors'.
//! So the signed entry carries, for each hospital, only its name and a
//! commitment `SHA-256("cohort/ledger/sealed/v1\0" ‖ salt ‖ body)` to the
//! part's canonical JSON `body`, with a fresh 32-byte random salt. The
//! coordinator keeps the [`Opening`]s (salt and body) beside the entry and
//! hands each reader those it may read; everyone else sees the commitment.
//!
//! Security argument, from SHA-256 alone: the commitment is *binding*
//! (opening it to a second body means a SHA-256 collision, so the
//! coordinator cannot show two readers two different parts under one signed
//! entry) and *hiding* (with 256 bits of secret salt, guessing a body, even
//! one with few possible values such as an ε, means finding a preimage
//! under an unknown prefix; SHA-256 modelled as a random oracle).

use rand::RngCore as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const SEAL_CONTEXT: &[u8] = b"cohort/ledger/sealed/v1\0";
const SALT_BYTES: usize = 32;

/// One hospital's part of an entry as every reader of the entry sees it:
/// whose it is, and the commitment to the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedPart {
    pub name: String,
    /// Hex SHA-256 of the context, the salt and the body.
    pub commitment: String,
}

/// What opens one [`SealedPart`]: the salt and the exact body committed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opening {
    /// The hospital whose part it opens.
    pub name: String,
    /// Hex of the 32-byte salt.
    pub salt: String,
    /// The part's canonical JSON.
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the part of `{name}` cannot be encoded: {reason}")]
    Encode { name: String, reason: String },
    #[error("the opening of `{name}`'s part has a salt that is not {SALT_BYTES} bytes of hex")]
    Salt { name: String },
    #[error(
        "the opening of `{name}`'s part does not match the commitment in the signed entry (a forged or altered opening)"
    )]
    Mismatch { name: String },
    #[error("the opening of `{name}`'s part is not a valid part: {reason}")]
    Body { name: String, reason: String },
    #[error("the entry seals no part of `{name}`, or it was opened twice")]
    NoPart { name: String },
}

impl Opening {
    /// Seals `value`, the part of hospital `name`: a fresh random salt.
    pub fn seal<T: Serialize>(name: &str, value: &T) -> Result<(SealedPart, Opening), SealError> {
        let body = serde_json::to_string(value).map_err(|e| SealError::Encode {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let mut salt = [0u8; SALT_BYTES];
        rand::rng().fill_bytes(&mut salt);
        let commitment = commitment(&salt, &body);
        Ok((
            SealedPart {
                name: name.to_string(),
                commitment,
            },
            Opening {
                name: name.to_string(),
                salt: hex::encode(salt),
                body,
            },
        ))
    }

    /// Checks the opening against `part` and parses its body, which must be
    /// in canonical form (the form it was committed in).
    pub fn open<T: DeserializeOwned + Serialize>(&self, part: &SealedPart) -> Result<T, SealError> {
        let name = || self.name.clone();
        if part.name != self.name {
            return Err(SealError::NoPart { name: name() });
        }
        let salt: [u8; SALT_BYTES] = hex::decode(&self.salt)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| SealError::Salt { name: name() })?;
        if commitment(&salt, &self.body) != part.commitment {
            return Err(SealError::Mismatch { name: name() });
        }
        let body_error = |reason: String| SealError::Body {
            name: name(),
            reason,
        };
        let value: T = serde_json::from_str(&self.body).map_err(|e| body_error(e.to_string()))?;
        if serde_json::to_string(&value).map_err(|e| body_error(e.to_string()))? != self.body {
            return Err(body_error("not in canonical form".into()));
        }
        Ok(value)
    }
}

fn commitment(salt: &[u8; SALT_BYTES], body: &str) -> String {
    let mut h = Sha256::new();
    h.update(SEAL_CONTEXT);
    h.update(salt);
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// Seals every part of `open` (`name_of` gives each one's hospital),
/// moving them to `sealed`; returns their openings. On an error nothing
/// moves.
pub(crate) fn seal_all<T: Serialize>(
    open: &mut Vec<T>,
    sealed: &mut Vec<SealedPart>,
    name_of: impl Fn(&T) -> &str,
) -> Result<Vec<Opening>, SealError> {
    let (parts, openings): (Vec<SealedPart>, Vec<Opening>) = open
        .iter()
        .map(|part| Opening::seal(name_of(part), part))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    open.clear();
    sealed.extend(parts);
    Ok(openings)
}

/// Opens the parts of `sealed` that `openings` open, appending them to
/// `open` in the order sealed; the others stay sealed. `name_of` gives an
/// opened part's hospital, which must be the one it was sealed for. An
/// opening that matches no sealed part is an error.
pub(crate) fn open_all<T: DeserializeOwned + Serialize>(
    sealed: &mut Vec<SealedPart>,
    open: &mut Vec<T>,
    openings: &[Opening],
    name_of: impl Fn(&T) -> &str,
) -> Result<(), SealError> {
    for opening in openings {
        if !sealed.iter().any(|p| p.name == opening.name) {
            return Err(SealError::NoPart {
                name: opening.name.clone(),
            });
        }
    }
    let mut still_sealed = Vec::new();
    for part in std::mem::take(sealed) {
        match openings.iter().find(|o| o.name == part.name) {
            Some(opening) => {
                let value: T = opening.open(&part)?;
                if name_of(&value) != part.name {
                    return Err(SealError::Body {
                        name: part.name.clone(),
                        reason: format!("it is the part of `{}`", name_of(&value)),
                    });
                }
                open.push(value);
            }
            None => still_sealed.push(part),
        }
    }
    *sealed = still_sealed;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Part {
        name: String,
        epsilon: String,
    }

    fn part(name: &str, epsilon: &str) -> Part {
        Part {
            name: name.into(),
            epsilon: epsilon.into(),
        }
    }

    #[test]
    fn an_opening_opens_its_part_and_nothing_else() {
        let (sealed, opening) = Opening::seal("a", &part("a", "1.5")).unwrap();
        assert_eq!(opening.open::<Part>(&sealed).unwrap(), part("a", "1.5"));
        // The same value sealed again: another salt, another commitment,
        // so equal parts cannot be recognised across entries.
        let (again, other) = Opening::seal("a", &part("a", "1.5")).unwrap();
        assert_ne!(again.commitment, sealed.commitment);
        assert!(matches!(
            other.open::<Part>(&sealed),
            Err(SealError::Mismatch { .. })
        ));
    }

    #[test]
    fn an_altered_opening_is_refused() {
        let (sealed, opening) = Opening::seal("a", &part("a", "1.5")).unwrap();
        let mut body = opening.clone();
        body.body = body.body.replace("1.5", "0.5");
        assert!(matches!(
            body.open::<Part>(&sealed),
            Err(SealError::Mismatch { .. })
        ));
        let mut salt = opening.clone();
        salt.salt = "00".into();
        assert!(matches!(
            salt.open::<Part>(&sealed),
            Err(SealError::Salt { .. })
        ));
        let mut name = opening;
        name.name = "b".into();
        assert!(matches!(
            name.open::<Part>(&sealed),
            Err(SealError::NoPart { .. })
        ));
    }

    #[test]
    fn opening_some_parts_leaves_the_others_sealed() {
        let mut open = vec![part("a", "1"), part("b", "2"), part("c", "3")];
        let mut sealed = Vec::new();
        let openings = seal_all(&mut open, &mut sealed, |p: &Part| &p.name).unwrap();
        assert!(open.is_empty());
        open_all(&mut sealed, &mut open, &openings[1..2], |p: &Part| &p.name).unwrap();
        assert_eq!(open, [part("b", "2")]);
        assert_eq!(
            sealed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        // An opening of a part already opened (or never sealed) is refused.
        let err = open_all(&mut sealed, &mut open, &openings[1..2], |p: &Part| &p.name);
        assert!(matches!(err, Err(SealError::NoPart { .. })), "{err:?}");
    }

    #[test]
    fn a_part_opened_under_another_hospitals_name_is_refused() {
        // The coordinator seals b's part under a's name: a's opening holds b's part.
        let (sealed, opening) = Opening::seal("a", &part("b", "2")).unwrap();
        let err = open_all(
            &mut vec![sealed],
            &mut Vec::new(),
            &[opening],
            |p: &Part| &p.name,
        );
        assert!(matches!(err, Err(SealError::Body { .. })), "{err:?}");
    }
}
