//! Groth16 keys from a multi-party setup ceremony (`[proofs] setup =
//! "ceremony"`): the coordinator is started with finished ceremony files
//! (`--setup-ceremony FILE`, made with `cohort setup`), and a job takes the
//! keys of the one for its parameter count, after checking every
//! contribution's mathematics (`cohort_proofs::ceremony`) and that each was
//! signed by a validator of this consortium. A file is checked once per
//! process and its keys kept by its digest.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cohort_identity::{Kit, Role};
use cohort_ledger::{SetupCeremony, SetupContributor};
use cohort_proofs::ceremony::{self, CONTRIBUTION_CONTEXT, Ceremony, CeremonyError, Contribution};
use cohort_proofs::{ProvingKey, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "no setup ceremony for {entries} parameters was given to this coordinator: run \
         `cohort setup new --entries {entries} --out FILE`, have the validators contribute \
         (`cohort setup contribute FILE --tls KIT`, then `cohort setup seal FILE`, then again), \
         and restart the coordinator with --setup-ceremony FILE"
    )]
    Missing { entries: usize },
    #[error(
        "a setup ceremony's contributors are checked against the consortium's CA, and this \
         coordinator runs without one (--insecure)"
    )]
    NoConsortium,
    #[error("--setup-ceremony {path} is not a Cohort setup ceremony file (`cohort setup new`)")]
    NotACeremony { path: PathBuf },
    #[error("reading the setup ceremony {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the setup ceremony {path}: {source}")]
    Ceremony {
        path: PathBuf,
        source: CeremonyError,
    },
    #[error(
        "the setup ceremony {path} is not finished: each phase needs a contribution \
         (`cohort setup contribute`, `cohort setup seal`, `cohort setup contribute`)"
    )]
    Unfinished { path: PathBuf },
    #[error("the setup ceremony {path}: {phase} contribution {index} by {name:?}: {reason}")]
    Contributor {
        path: PathBuf,
        phase: ceremony::Phase,
        index: usize,
        name: String,
        reason: String,
    },
}

/// Checks that `contribution` was signed by the validator it names,
/// certified by `kit`'s consortium CA.
pub fn check_contributor(kit: &Kit, contribution: &Contribution) -> Result<(), String> {
    let principal = kit
        .verify_member(&contribution.certificate)
        .map_err(|e| format!("its certificate is not from this consortium: {e}"))?;
    if principal.name != contribution.contributor {
        return Err(format!(
            "it is signed by {:?}'s certificate",
            principal.name
        ));
    }
    if principal.role != Role::Validator {
        return Err(format!(
            "its contributor is a {}, and only validators contribute",
            principal.role.as_str()
        ));
    }
    principal
        .signing_key
        .verify(
            CONTRIBUTION_CONTEXT,
            &contribution.statement,
            &contribution.signature,
        )
        .map_err(|e| format!("its signature does not verify: {e}"))
}

/// The keys of a checked ceremony and what the ledger records of it.
#[derive(Clone)]
pub struct CeremonyKeys {
    pub proving: ProvingKey,
    pub verifying: VerifyingKey,
    pub record: SetupCeremony,
}

/// The ceremony files a coordinator was started with.
#[derive(Clone, Default)]
pub struct Ceremonies {
    pub paths: Vec<PathBuf>,
    /// The consortium, to check contributors against; `None` when the
    /// coordinator runs without TLS.
    pub kit: Option<Arc<Kit>>,
    /// Keys of the files already checked, by the file's SHA-256: a file is
    /// checked once per process, however many jobs take it (46 s at 10^4
    /// parameters), and again only if its bytes change.
    pub checked: Arc<Mutex<HashMap<String, CeremonyKeys>>>,
}

/// The SHA-256 of the ceremony a job's keys came from, from its
/// `proof_setup` ledger entry; `None` when the coordinator made them.
pub fn recorded_ceremony(
    store: &crate::store::Store,
    job_id: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    let contents = store.ledger()?;
    Ok(contents.leaves.iter().rev().find_map(|leaf| {
        match cohort_ledger::Entry::from_leaf(leaf).ok()?.record {
            cohort_ledger::Record::ProofSetup {
                job_id: j,
                ceremony: Some(c),
                ..
            } if j == job_id => Some(c.sha256),
            _ => None,
        }
    }))
}

/// The parameter count a ceremony file is for, from its first bytes.
fn entries_of(path: &Path) -> Result<Option<usize>, std::io::Error> {
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(ceremony::HEADER_BYTES as u64)
        .read_to_end(&mut head)?;
    Ok(ceremony::entries_of(&head))
}

impl Ceremonies {
    /// The bytes of the given ceremony file whose SHA-256 is `sha256`, if
    /// it is still one of this coordinator's and unchanged.
    pub fn file_with_digest(&self, sha256: &str) -> Option<Vec<u8>> {
        self.paths.iter().find_map(|path| {
            let bytes = std::fs::read(path).ok()?;
            (ceremony::digest(&bytes) == sha256).then_some(bytes)
        })
    }

    /// Checks at startup that every file is there and is a ceremony, so
    /// that a wrong path is named before a job needs it. Their
    /// contributions are checked when a job takes one: they may be added
    /// to until then.
    pub fn check_files(&self) -> Result<(), SetupError> {
        for path in &self.paths {
            let entries = entries_of(path).map_err(|source| SetupError::Read {
                path: path.clone(),
                source,
            })?;
            if entries.is_none() {
                return Err(SetupError::NotACeremony { path: path.clone() });
            }
        }
        Ok(())
    }

    /// The keys for `entries` parameters from the first ceremony for that
    /// size, fully checked. Slow (pairings and an FFT over the group): run
    /// it off the async runtime.
    pub fn keys_for(&self, entries: usize) -> Result<CeremonyKeys, SetupError> {
        let kit = self.kit.as_deref().ok_or(SetupError::NoConsortium)?;
        let read = |path: &Path, source| SetupError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut found = None;
        for path in &self.paths {
            if entries_of(path).map_err(|e| read(path, e))? == Some(entries) {
                found = Some(path);
                break;
            }
        }
        let path = found.ok_or(SetupError::Missing { entries })?;
        let bytes = std::fs::read(path).map_err(|e| read(path, e))?;
        let sha256 = ceremony::digest(&bytes);
        if let Some(keys) = self.checked_keys().get(&sha256) {
            return Ok(keys.clone());
        }
        let in_file = |source| SetupError::Ceremony {
            path: path.clone(),
            source,
        };
        let verified = Ceremony::from_bytes(&bytes)
            .and_then(|c| c.verify())
            .map_err(in_file)?;
        let mut contributors = Vec::new();
        for c in &verified.contributions {
            check_contributor(kit, c).map_err(|reason| SetupError::Contributor {
                path: path.clone(),
                phase: c.phase,
                index: c.index,
                name: c.contributor.clone(),
                reason,
            })?;
            contributors.push(SetupContributor {
                phase: c.phase.to_string(),
                name: c.contributor.clone(),
                certificate: hex::encode(&c.certificate),
                signature: hex::encode(&c.signature),
            });
        }
        let (proving, verifying) = verified
            .keys
            .ok_or_else(|| SetupError::Unfinished { path: path.clone() })?;
        let keys = CeremonyKeys {
            proving,
            verifying,
            record: SetupCeremony {
                sha256: sha256.clone(),
                contributors,
            },
        };
        self.checked_keys().insert(sha256, keys.clone());
        Ok(keys)
    }

    fn checked_keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, CeremonyKeys>> {
        // The map is only read or inserted into whole: a panic elsewhere
        // cannot leave it half-written.
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_identity::{CertificateAuthority, IssueRequest};

    fn kit(ca: &mut CertificateAuthority, dir: &Path, role: Role, name: &str) -> Kit {
        ca.issue(&IssueRequest::for_days(role, name, 30), &dir.join(name))
            .unwrap()
    }

    fn contribute(ceremony: &mut Ceremony, kit: &Kit, as_name: &str) {
        let certificate = kit.cert_der().unwrap().to_vec();
        ceremony
            .contribute(as_name, &certificate, |statement| {
                kit.signing_key
                    .sign(CONTRIBUTION_CONTEXT, statement)
                    .map_err(|e| e.to_string())
            })
            .unwrap();
    }

    /// Only validators of this consortium contribute, each under its own
    /// name; the coordinator names the contribution that breaks the rule.
    #[test]
    fn contributions_are_checked_against_the_consortium() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateAuthority::init("c", &dir.path().join("ca")).unwrap();
        let validator = Arc::new(kit(&mut ca, dir.path(), Role::Validator, "validator-1"));
        let hospital = kit(&mut ca, dir.path(), Role::Hospital, "hospital-1");
        let mut other_ca = CertificateAuthority::init("d", &dir.path().join("other")).unwrap();
        let stranger = kit(
            &mut other_ca,
            &dir.path().join("o"),
            Role::Validator,
            "validator-2",
        );

        let cases: [(&Kit, &str, &str); 4] = [
            (&*validator, "validator-1", ""),
            (&hospital, "hospital-1", "only validators contribute"),
            (
                &*validator,
                "validator-9",
                "signed by \"validator-1\"'s certificate",
            ),
            (&stranger, "validator-2", "not from this consortium"),
        ];
        for (signer, name, problem) in cases {
            let mut ceremony = Ceremony::new(1).unwrap();
            contribute(&mut ceremony, signer, name);
            let path = dir.path().join(format!("{name}.ceremony"));
            std::fs::write(&path, ceremony.to_bytes()).unwrap();
            let ceremonies = Ceremonies {
                paths: vec![path],
                kit: Some(validator.clone()),
                ..Default::default()
            };
            ceremonies.check_files().unwrap();
            match ceremonies.keys_for(1) {
                // The powers phase alone gives no keys, once its contributor passed.
                Err(SetupError::Unfinished { .. }) if problem.is_empty() => {}
                Err(e @ SetupError::Contributor { .. }) if !problem.is_empty() => {
                    let e = e.to_string();
                    assert!(e.contains(problem) && e.contains(name), "{e}");
                }
                other => panic!("{name}: {:?}", other.err()),
            }
        }
        let missing = Ceremonies {
            paths: vec![],
            kit: Some(validator.clone()),
            ..Default::default()
        };
        let e = missing.keys_for(7).err().unwrap().to_string();
        assert!(e.contains("no setup ceremony for 7 parameters"), "{e}");
        let not_one = Ceremonies {
            paths: vec![dir.path().join("ca").join("ca.crt")],
            kit: None,
            ..Default::default()
        };
        assert!(matches!(
            not_one.check_files(),
            Err(SetupError::NotACeremony { .. })
        ));
    }

    /// A finished ceremony is checked once; a file whose bytes changed is
    /// checked again (here: refused), not served from what was kept.
    #[test]
    fn a_checked_file_is_kept_by_its_digest_and_a_changed_one_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateAuthority::init("c", &dir.path().join("ca")).unwrap();
        let validator = Arc::new(kit(&mut ca, dir.path(), Role::Validator, "validator-1"));
        let mut ceremony = Ceremony::new(1).unwrap();
        contribute(&mut ceremony, &validator, "validator-1");
        ceremony.seal_powers().unwrap();
        contribute(&mut ceremony, &validator, "validator-1");
        let path = dir.path().join("finished.ceremony");
        let bytes = ceremony.to_bytes();
        std::fs::write(&path, &bytes).unwrap();
        let ceremonies = Ceremonies {
            paths: vec![path.clone()],
            kit: Some(validator.clone()),
            ..Default::default()
        };
        let first = ceremonies.keys_for(1).unwrap();
        assert_eq!(first.record.sha256, ceremony::digest(&bytes));
        let again = ceremonies.keys_for(1).unwrap();
        assert_eq!(again.verifying, first.verifying);
        assert_eq!(ceremonies.checked_keys().len(), 1);

        let mut changed = bytes.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        assert!(matches!(
            ceremonies.keys_for(1),
            Err(SetupError::Ceremony { .. })
        ));
    }
}
