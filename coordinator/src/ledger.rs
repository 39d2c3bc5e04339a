//! The coordinator's side of the embedded ledger: every job's story (job
//! created, each round with the receipts of the updates it aggregated) is
//! appended as a signed entry to an RFC 9162 Merkle log in the same SQLite
//! transaction as the state it describes, and a signed checkpoint (C2SP
//! signed note) is kept for the latest tree. `cohort verify ledger` checks
//! it all without trusting the coordinator.

use std::sync::{Arc, Mutex};

use cohort_identity::{Kit, MessageSigningKey};
use cohort_ledger::{Checkpoint, Entry, MerkleLog, Record, hash_leaf, sign_checkpoint};
use rusqlite::params;

use crate::store::{Store, StoreError, now};

/// The key that signs the coordinator's entries: its kit's signing key
/// under mutual TLS, else one kept in the data directory.
pub enum LedgerSigner {
    Kit(Arc<Kit>),
    Own(Box<MessageSigningKey>),
}

impl LedgerSigner {
    fn key(&self) -> &MessageSigningKey {
        match self {
            LedgerSigner::Kit(kit) => &kit.signing_key,
            LedgerSigner::Own(key) => key,
        }
    }

    /// The signed-note key name, which is also the log's origin line.
    fn name(&self) -> String {
        match self {
            LedgerSigner::Kit(kit) => format!("{}/{}", kit.consortium, kit.principal.name),
            LedgerSigner::Own(_) => "cohort/coordinator".to_string(),
        }
    }
}

pub struct Ledger {
    signer: LedgerSigner,
    name: String,
    log: Mutex<MerkleLog>,
}

impl Ledger {
    /// Loads the log from the store; a new log starts with an entry that
    /// publishes the signing key.
    pub fn open(store: &Store, signer: LedgerSigner) -> Result<Self, StoreError> {
        let leaves = store.ledger()?.leaves;
        let log = MerkleLog::from_leaf_hashes(leaves.iter().map(|l| hash_leaf(l)));
        let name = signer.name();
        let ledger = Self {
            signer,
            name,
            log: Mutex::new(log),
        };
        if leaves.is_empty() {
            let record = Record::CoordinatorKey {
                name: ledger.name.clone(),
                public_key: ledger.signer.key().verifying_key().to_hex(),
            };
            ledger.append(store, record, |_| Ok(()))?;
        }
        Ok(ledger)
    }

    /// The key that signs entries, checkpoints and models.
    pub fn signing_key(&self) -> &MessageSigningKey {
        self.signer.key()
    }

    /// Appends `record` and the new signed checkpoint in the same
    /// transaction as `with` (the state change the record describes).
    pub fn append<R>(
        &self,
        store: &Store,
        record: Record,
        with: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let corrupt = |e: String| StoreError::Corrupt(format!("ledger: {e}"));
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let entry =
            Entry::sign(record, now(), self.signer.key()).map_err(|e| corrupt(e.to_string()))?;
        let leaf = entry.to_leaf().map_err(|e| corrupt(e.to_string()))?;
        let index = log.append_leaf_hash(hash_leaf(&leaf));
        // Until the transaction commits, the entry must be undone on failure.
        let undo = |log: &mut MerkleLog| {
            *log = MerkleLog::from_leaf_hashes(log.leaf_hashes()[..index as usize].to_vec());
        };
        let note = Checkpoint::new(self.name.clone(), log.size(), log.current_root())
            .map_err(|e| corrupt(e.to_string()))
            .and_then(|checkpoint| {
                sign_checkpoint(&checkpoint, &self.name, self.signer.key())
                    .map_err(|e| corrupt(e.to_string()))
            });
        let note = match note {
            Ok(note) => note,
            Err(e) => {
                undo(&mut log);
                return Err(e);
            }
        };
        let committed = store.transaction(|tx| {
            let result = with(tx)?;
            tx.execute(
                "INSERT INTO ledger (idx, entry) VALUES (?1, ?2)",
                params![index as i64, leaf],
            )?;
            tx.execute(
                "INSERT INTO ledger_checkpoint (id, key_name, note) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET key_name = excluded.key_name, note = excluded.note",
                params![self.name, note],
            )?;
            Ok(result)
        });
        if committed.is_err() {
            undo(&mut log);
        }
        committed
    }
}
