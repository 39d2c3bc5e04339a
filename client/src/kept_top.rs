//! The top parts a label site keeps (vertical split learning): the layers
//! after the first, trained on its labels, never leave it. After each round
//! it writes the top it trained to
//! `DATA_DIR/vertical-tops/JOB_ID/top-SHA256.f32` (little-endian `f32`, the
//! flat order of the model's layers after the first) with a signed record
//! beside it (`top-SHA256.json`), and sends only the SHA-256; the
//! coordinator's round record and the ledger carry that digest, and the next
//! round, a restarted site, or `cohort evaluate --top-from DATA_DIR` at the
//! label site find the top by it.
//!
//! Files are named by digest, not round, so a retried round attempt never
//! overwrites the top another attempt (or a recorded round) started from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The folder of kept tops under a client's data directory.
pub const KEPT_TOPS_DIR: &str = "vertical-tops";

/// Signature context of a kept top's record (over [`KeptTopRecord::statement`]).
pub const KEPT_TOP_SIGNATURE_CONTEXT: &str = "cohort/vertical-kept-top/v1";

#[derive(Debug, thiserror::Error)]
pub enum KeptTopError {
    #[error("job id {0:?} cannot name a folder (letters, digits, `-` and `_` only)")]
    JobId(String),
    #[error("{0:?} is not a hex SHA-256")]
    Digest(String),
    #[error(
        "no top part with SHA-256 {sha256} of job {job_id} in {dir}: only the label site that \
         trained it has it (its client's --data-dir)"
    )]
    Missing {
        job_id: String,
        sha256: String,
        dir: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("writing the kept top: {0}")]
    Write(String),
}

/// What sits beside a kept top: where it came from, and the site's signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptTopRecord {
    pub job_id: String,
    /// The round whose training produced it.
    pub round: u32,
    pub values: usize,
    pub sha256: String,
    /// Hex signature with the site's kit signing key over [`Self::statement`]
    /// (empty for a site without a kit).
    pub signature: String,
}

impl KeptTopRecord {
    /// The bytes the signature covers.
    pub fn statement(&self) -> Vec<u8> {
        format!(
            "job {}\nround {}\nvalues {}\nsha256 {}\n",
            self.job_id, self.round, self.values, self.sha256
        )
        .into_bytes()
    }
}

fn job_dir(data_dir: &Path, job_id: &str) -> Result<PathBuf, KeptTopError> {
    let ok = !job_id.is_empty()
        && job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(KeptTopError::JobId(job_id.to_string()));
    }
    Ok(data_dir.join(KEPT_TOPS_DIR).join(job_id))
}

fn check_digest(sha256: &str) -> Result<(), KeptTopError> {
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(KeptTopError::Digest(sha256.to_string()))
    }
}

/// Where the top with `sha256` of `job_id` lives under `data_dir`.
pub fn top_path(data_dir: &Path, job_id: &str, sha256: &str) -> Result<PathBuf, KeptTopError> {
    check_digest(sha256)?;
    Ok(job_dir(data_dir, job_id)?.join(format!("top-{sha256}.f32")))
}

/// Writes `top`, trained in `round` of `job_id`, and its signed record;
/// returns its hex SHA-256.
pub fn keep(
    data_dir: &Path,
    job_id: &str,
    round: u32,
    top: &[f32],
    kit: Option<&cohort_identity::Kit>,
) -> Result<String, KeptTopError> {
    let sha256 = cohort_models::parameters_sha256(top);
    let path = top_path(data_dir, job_id, &sha256)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|source| KeptTopError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut record = KeptTopRecord {
        job_id: job_id.to_string(),
        round,
        values: top.len(),
        sha256: sha256.clone(),
        signature: String::new(),
    };
    if let Some(kit) = kit {
        let signature = kit
            .signing_key
            .sign(KEPT_TOP_SIGNATURE_CONTEXT, &record.statement())
            .map_err(|e| KeptTopError::Write(format!("signing: {e}")))?;
        record.signature = hex::encode(signature);
    }
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| KeptTopError::Write(e.to_string()))?;
    // The values first: a record never names a top that is not there.
    cohort_models::write_atomically(&path, &cohort_models::parameters_to_bytes(top))
        .map_err(|e| KeptTopError::Write(e.to_string()))?;
    cohort_models::write_atomically(&path.with_extension("json"), &json)
        .map_err(|e| KeptTopError::Write(e.to_string()))?;
    Ok(sha256)
}

/// The top with `sha256` of `job_id`, read back and checked against its
/// digest.
pub fn load(data_dir: &Path, job_id: &str, sha256: &str) -> Result<Vec<f32>, KeptTopError> {
    let path = top_path(data_dir, job_id, sha256)?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeptTopError::Missing {
                job_id: job_id.to_string(),
                sha256: sha256.to_string(),
                dir: data_dir.to_path_buf(),
            });
        }
        Err(source) => return Err(KeptTopError::Io { path, source }),
    };
    let damaged = |reason: String| KeptTopError::Damaged {
        path: path.clone(),
        reason,
    };
    let top = cohort_models::parameters_from_bytes(&bytes).map_err(|e| damaged(e.to_string()))?;
    let actual = cohort_models::parameters_sha256(&top);
    if actual != sha256 {
        return Err(damaged(format!("its SHA-256 is {actual}")));
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_top_comes_back_by_its_digest_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let top = vec![0.5f32, -1.25, 3.0];
        let sha = keep(dir.path(), "job-1", 2, &top, None).unwrap();
        assert_eq!(load(dir.path(), "job-1", &sha).unwrap(), top);
        let record: KeptTopRecord = serde_json::from_slice(
            &std::fs::read(
                top_path(dir.path(), "job-1", &sha)
                    .unwrap()
                    .with_extension("json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!((record.round, record.values), (2, 3));

        let other = cohort_models::parameters_sha256(&[1.0]);
        assert!(matches!(
            load(dir.path(), "job-1", &other),
            Err(KeptTopError::Missing { .. })
        ));
        assert!(matches!(
            load(dir.path(), "../job-1", &sha),
            Err(KeptTopError::JobId(_))
        ));
        assert!(matches!(
            load(dir.path(), "job-1", "../../etc"),
            Err(KeptTopError::Digest(_))
        ));
        let path = top_path(dir.path(), "job-1", &sha).unwrap();
        std::fs::write(
            &path,
            cohort_models::parameters_to_bytes(&[0.5, -1.25, 3.5]),
        )
        .unwrap();
        let err = load(dir.path(), "job-1", &sha).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
