//! Checking a whole log without trusting whoever stored it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::merkle::{Hash, MerkleLog, hash_leaf, verify_consistency};
use crate::note::verify_checkpoint;
use crate::record::{Entry, Record};
use crate::sealed::Opening;

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
    /// Entries held as their leaf hash only (another tenant's job, withheld
    /// from this reader): counted in the root, their contents unchecked.
    #[serde(skip_serializing_if = "is_zero")]
    pub withheld: u64,
    /// Hospitals' parts of entries (`crate::sealed`) this reader was given
    /// the openings of, each checked against its commitment.
    #[serde(skip_serializing_if = "is_zero")]
    pub opened: u64,
    /// Hospitals' parts that stay sealed to this reader (another hospital's
    /// receipts in a job it shares): counted, their contents unread.
    #[serde(skip_serializing_if = "is_zero")]
    pub sealed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Entries a reader may not read, by index: their RFC 6962 leaf hashes,
/// which is all the root needs. Their place in `leaves` holds no bytes.
pub type Withheld = BTreeMap<u64, Hash>;

/// The openings of sealed parts a reader holds, by entry index.
pub type Openings = BTreeMap<u64, Vec<Opening>>;

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
/// the log extends a checkpoint seen earlier. A `withheld` entry enters the
/// root by its leaf hash; the first entry (the coordinator's key) cannot
/// be withheld. Every opening must open a sealed part of its entry.
pub fn audit(
    leaves: &[Vec<u8>],
    withheld: &Withheld,
    openings: &Openings,
    checkpoint_note: &str,
    key_name: &str,
    seen: Option<&SeenCheckpoint>,
) -> Result<AuditReport, AuditError> {
    let bad = |index: usize, reason: String| AuditError::Entry {
        index: index as u64,
        reason,
    };
    let first = leaves.first().ok_or(AuditError::Empty)?;
    if withheld.contains_key(&0) {
        return Err(bad(0, "the coordinator's key entry was withheld".into()));
    }
    if let Some((&index, _)) = withheld.range(leaves.len() as u64..).next() {
        return Err(bad(
            index as usize,
            "withheld, but the log is shorter".into(),
        ));
    }
    let first = Entry::from_leaf(first).map_err(|e| bad(0, e.to_string()))?;
    let Record::CoordinatorKey { public_key, .. } = &first.record else {
        return Err(bad(
            0,
            "the first entry must publish the coordinator's key".into(),
        ));
    };
    let coordinator = cohort_identity::MessageVerifyingKey::from_hex(public_key)
        .map_err(|e| bad(0, e.to_string()))?;
    if let Some((&index, _)) = openings
        .iter()
        .find(|(i, _)| withheld.contains_key(i) || **i >= leaves.len() as u64)
    {
        return Err(bad(
            index as usize,
            "openings given for an entry that is withheld or not in the log".into(),
        ));
    }
    let (mut opened, mut sealed) = (0u64, 0u64);
    let mut log = MerkleLog::new();
    for (index, leaf) in leaves.iter().enumerate() {
        if let Some(hash) = withheld.get(&(index as u64)) {
            if !leaf.is_empty() {
                return Err(bad(index, "both withheld and present".into()));
            }
            log.append_leaf_hash(*hash);
            continue;
        }
        let entry = Entry::from_leaf(leaf).map_err(|e| bad(index, e.to_string()))?;
        let signer = entry.verify().map_err(|e| bad(index, e.to_string()))?;
        if signer != coordinator {
            return Err(bad(
                index,
                "signed by a key other than the coordinator's".into(),
            ));
        }
        let given = openings.get(&(index as u64)).map_or(&[][..], Vec::as_slice);
        let mut view = entry.record;
        view.unseal(given).map_err(|e| bad(index, e.to_string()))?;
        opened += given.len() as u64;
        sealed += view.sealed_parts() as u64;
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
        withheld: withheld.len() as u64,
        opened,
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    /// A log of three entries with its checkpoint, signed by one key.
    fn log() -> (Vec<Vec<u8>>, String) {
        log_of(vec![
            Record::JobCreated {
                job_id: "j1".into(),
                name: "one".into(),
                job_sha256: "00".into(),
                submitted_by: None,
            },
            Record::JobCreated {
                job_id: "j2".into(),
                name: "two".into(),
                job_sha256: "00".into(),
                submitted_by: None,
            },
        ])
    }

    /// A log of the coordinator's key entry then `records`, signed by one
    /// key, with its checkpoint.
    fn log_of(records: Vec<Record>) -> (Vec<Vec<u8>>, String) {
        let key = cohort_identity::MessageSigningKey::generate().unwrap();
        let leaf = |record: Record| {
            Entry::sign(record, "2026-12-06T00:00:00Z".into(), &key)
                .unwrap()
                .to_leaf()
                .unwrap()
        };
        let leaves: Vec<Vec<u8>> = std::iter::once(Record::CoordinatorKey {
            name: "test".into(),
            public_key: key.verifying_key().to_hex(),
        })
        .chain(records)
        .map(leaf)
        .collect();
        let mut merkle = MerkleLog::new();
        for l in &leaves {
            merkle.append(l);
        }
        let checkpoint = crate::Checkpoint {
            origin: "test".into(),
            size: merkle.size(),
            root: merkle.current_root(),
        };
        let note = crate::sign_checkpoint(&checkpoint, "test", &key).unwrap();
        (leaves, note)
    }

    #[test]
    fn a_withheld_entry_counts_by_its_leaf_hash_and_a_wrong_hash_is_caught() {
        let (mut leaves, note) = log();
        let mut withheld = Withheld::new();
        withheld.insert(2, hash_leaf(&leaves[2]));
        leaves[2].clear();
        let report = audit(&leaves, &withheld, &Openings::new(), &note, "test", None).unwrap();
        assert_eq!((report.entries, report.withheld), (3, 1));

        withheld.insert(2, [7u8; 32]);
        assert!(matches!(
            audit(&leaves, &withheld, &Openings::new(), &note, "test", None),
            Err(AuditError::RootMismatch)
        ));
    }

    fn receipt(client: &str, epsilon: &str) -> crate::UpdateRecord {
        crate::UpdateRecord {
            client: client.into(),
            task_id: format!("j1-1-{client}"),
            num_examples: 100,
            parameter_count: 10,
            update_sha256: "00".into(),
            signature: String::new(),
            dataset_sha256: "00".into(),
            dp_epsilon: Some(epsilon.into()),
            proof: None,
        }
    }

    #[test]
    fn sealed_parts_open_only_with_their_own_openings() {
        let round = Record::RoundCompleted {
            job_id: "j1".into(),
            round: 1,
            model_sha256: "00".into(),
            model_signature_sha256: "00".into(),
            updates: vec![receipt("a", "1.25"), receipt("b", "2.5")],
            sealed_updates: Vec::new(),
            aggregate_sha256: None,
            accuracy: None,
            auc: None,
            excluded: Vec::new(),
            kept_top_sha256: None,
        };
        let (sealed, openings) = round.clone().seal().unwrap();
        let (leaves, note) = log_of(vec![sealed]);
        // Nothing of either receipt is in the signed bytes.
        let text = String::from_utf8(leaves[1].clone()).unwrap();
        assert!(!text.contains("1.25") && !text.contains("j1-1-a"), "{text}");

        let none = audit(
            &leaves,
            &Withheld::new(),
            &Openings::new(),
            &note,
            "test",
            None,
        )
        .unwrap();
        assert_eq!((none.opened, none.sealed), (0, 2));
        // Hospital a's view: its own receipt, b's still sealed.
        let mine = Openings::from([(1, vec![openings[0].clone()])]);
        let report = audit(&leaves, &Withheld::new(), &mine, &note, "test", None).unwrap();
        assert_eq!((report.opened, report.sealed), (1, 1));
        let view = Entry::open(&leaves[1], &mine[&1]).unwrap();
        let Record::RoundCompleted {
            updates,
            sealed_updates,
            ..
        } = &view.record
        else {
            panic!("{view:?}")
        };
        assert_eq!(updates, &[receipt("a", "1.25")]);
        assert_eq!(sealed_updates.len(), 1);
        assert_eq!(sealed_updates[0].name, "b");
        // Everything opened: the receipts as they were.
        let all = Entry::open(&leaves[1], &openings).unwrap();
        assert_eq!(all.record, round);

        // A forged opening (another ε for b) and an opening of an entry
        // that seals nothing both fail the audit, naming the entry.
        let mut forged = openings[1].clone();
        forged.body = forged.body.replace("2.5", "0.5");
        let err = audit(
            &leaves,
            &Withheld::new(),
            &Openings::from([(1, vec![forged])]),
            &note,
            "test",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = audit(
            &leaves,
            &Withheld::new(),
            &Openings::from([(0, vec![openings[0].clone()])]),
            &note,
            "test",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("seals no part"), "{err}");
    }

    #[test]
    fn the_coordinator_key_cannot_be_withheld_nor_an_entry_beyond_the_log() {
        let (leaves, note) = log();
        let first = Withheld::from([(0, hash_leaf(&leaves[0]))]);
        let err = audit(&leaves, &first, &Openings::new(), &note, "test", None).unwrap_err();
        assert!(err.to_string().contains("coordinator's key"), "{err}");
        let beyond = Withheld::from([(3, [0u8; 32])]);
        let err = audit(&leaves, &beyond, &Openings::new(), &note, "test", None).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
        let both = Withheld::from([(1, hash_leaf(&leaves[1]))]);
        let err = audit(&leaves, &both, &Openings::new(), &note, "test", None).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
    }
}
