//! Checking a whole log without trusting whoever stored it.

use serde::{Deserialize, Serialize};

use crate::merkle::{Hash, MerkleLog, hash_leaf, verify_consistency};
use crate::note::verify_checkpoint;
use crate::record::{Entry, Record};

/// What a verifier remembers between runs, so that a rewritten history is
/// caught even if it was re-signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenCheckpoint {
    pub origin: String,
    pub size: u64,
    /// Hex.
    pub root: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub origin: String,
    pub entries: u64,
    pub root: String,
    pub coordinator_key: String,
    /// Set when an earlier checkpoint was given and the log extends it.
    pub consistent_with: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the log is empty")]
    Empty,
    #[error("entry {index}: {reason}")]
    Entry { index: u64, reason: String },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(
        "the log holds {entries} entries but its signed checkpoint covers {size}: entries were added or removed outside the coordinator"
    )]
    SizeMismatch { entries: u64, size: u64 },
    #[error("the entries do not hash to the signed checkpoint's root: an entry was altered")]
    RootMismatch,
    #[error(
        "history rewritten: the log no longer extends the checkpoint seen earlier (size {size}, root {root}): {reason}"
    )]
    Inconsistent {
        size: u64,
        root: String,
        reason: String,
    },
}

/// Verifies every entry's signature (all by the key named in entry 0), the
/// Merkle root against the latest signed checkpoint, and, given one, that
/// the log extends a checkpoint seen earlier.
pub fn audit(
    leaves: &[Vec<u8>],
    checkpoint_note: &str,
    key_name: &str,
    seen: Option<&SeenCheckpoint>,
) -> Result<AuditReport, AuditError> {
    let bad = |index: usize, reason: String| AuditError::Entry {
        index: index as u64,
        reason,
    };
    let first = leaves.first().ok_or(AuditError::Empty)?;
    let first = Entry::from_leaf(first).map_err(|e| bad(0, e.to_string()))?;
    let Record::CoordinatorKey { public_key, .. } = &first.record else {
        return Err(bad(
            0,
            "the first entry must publish the coordinator's key".into(),
        ));
    };
    let coordinator = cohort_identity::MessageVerifyingKey::from_hex(public_key)
        .map_err(|e| bad(0, e.to_string()))?;
    let mut log = MerkleLog::new();
    for (index, leaf) in leaves.iter().enumerate() {
        let entry = Entry::from_leaf(leaf).map_err(|e| bad(index, e.to_string()))?;
        let signer = entry.verify().map_err(|e| bad(index, e.to_string()))?;
        if signer != coordinator {
            return Err(bad(
                index,
                "signed by a key other than the coordinator's".into(),
            ));
        }
        log.append_leaf_hash(hash_leaf(leaf));
    }
    let checkpoint = verify_checkpoint(checkpoint_note, key_name, &coordinator)
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    if checkpoint.size != log.size() {
        return Err(AuditError::SizeMismatch {
            entries: log.size(),
            size: checkpoint.size,
        });
    }
    if checkpoint.root != log.current_root() {
        return Err(AuditError::RootMismatch);
    }
    let mut consistent_with = None;
    if let Some(seen) = seen.filter(|s| s.origin == checkpoint.origin) {
        let inconsistent = |reason: String| AuditError::Inconsistent {
            size: seen.size,
            root: seen.root.clone(),
            reason,
        };
        let old_root: Hash = hex::decode(&seen.root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| inconsistent("the remembered root is not a SHA-256 hash".into()))?;
        let proof = log
            .consistency_proof(seen.size, log.size())
            .map_err(|e| inconsistent(e.to_string()))?;
        verify_consistency(seen.size, log.size(), &old_root, &checkpoint.root, &proof)
            .map_err(|e| inconsistent(e.to_string()))?;
        consistent_with = Some(seen.size);
    }
    Ok(AuditReport {
        origin: checkpoint.origin,
        entries: log.size(),
        root: hex::encode(checkpoint.root),
        coordinator_key: coordinator.to_hex(),
        consistent_with,
    })
}
