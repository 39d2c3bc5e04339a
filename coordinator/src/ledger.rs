//! The coordinator's side of the embedded ledger: every job's story (job
//! created, each round with the receipts of the updates it aggregated) is
//! appended as a signed entry to an RFC 9162 Merkle log in the same database
//! transaction as the state it describes, and a signed checkpoint (C2SP
//! signed note) is kept for the latest tree. `cohort verify ledger` checks
//! it all without trusting the coordinator.
//!
//! With an [`Anchor`] (`--ledger evm`), [`spawn_anchoring`] also records
//! every committed entry's leaf hash and the root after it outside the
//! coordinator, in the background.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort_identity::{Kit, MessageSigningKey};
use cohort_ledger::{
    Anchor, AnchorError, Checkpoint, Entry, Hash, MerkleLog, Record, hash_leaf, sign_checkpoint,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::store::{Database, Store, StoreError, now, values};

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

/// A log's first entry names the key that signs it; a coordinator with
/// another key (a standby given another startup kit, or a data directory
/// that is not the one the log was started from) would append entries that
/// no audit accepts, so it is refused before it writes anything.
fn check_signer(first_leaf: &[u8], signer: &LedgerSigner) -> Result<(), StoreError> {
    let entry = Entry::from_leaf(first_leaf)
        .map_err(|e| StoreError::Corrupt(format!("the ledger's first entry: {e}")))?;
    let Record::CoordinatorKey { name, public_key } = entry.record else {
        return Err(StoreError::Corrupt(
            "the ledger's first entry does not publish the coordinator's key".into(),
        ));
    };
    let ours = signer.key().verifying_key().to_hex();
    if public_key != ours {
        return Err(StoreError::ForeignLedgerKey {
            recorded: format!("{name} ({}…)", public_key.get(..16).unwrap_or(&public_key)),
            ours: format!("{} ({}…)", signer.name(), ours.get(..16).unwrap_or(&ours)),
        });
    }
    Ok(())
}

pub struct Ledger {
    signer: LedgerSigner,
    name: String,
    log: Mutex<MerkleLog>,
    /// The committed tree size, for whoever anchors the log elsewhere.
    committed: watch::Sender<u64>,
}

impl Ledger {
    /// Loads the log from the store; a new log starts with an entry that
    /// publishes the signing key.
    pub fn open(store: &Store, signer: LedgerSigner) -> Result<Self, StoreError> {
        let leaves = store.ledger()?.leaves;
        if let Some(first) = leaves.first() {
            check_signer(first, &signer)?;
        }
        let log = MerkleLog::from_leaf_hashes(leaves.iter().map(|l| hash_leaf(l)));
        let name = signer.name();
        let ledger = Self {
            signer,
            name,
            committed: watch::Sender::new(log.size()),
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
        with: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.append_all(store, |_| Ok(vec![record]), with)
    }

    /// Like [`Ledger::append`] with several records, all or none; `records`
    /// may read the transaction (after `with` ran) to make them.
    pub fn append_all<R>(
        &self,
        store: &Store,
        records: impl FnOnce(&Database) -> Result<Vec<Record>, StoreError>,
        with: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let corrupt = |e: String| StoreError::Corrupt(format!("ledger: {e}"));
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let start = log.size();
        // Until the transaction commits, the entries must be undone on failure.
        let undo = |log: &mut MerkleLog| {
            *log = MerkleLog::from_leaf_hashes(log.leaf_hashes()[..start as usize].to_vec());
        };
        let committed = store.transaction(|tx| {
            let result = with(tx)?;
            let mut leaves = Vec::new();
            for record in records(tx)? {
                // Hospitals' parts are sealed here, whoever made the record,
                // so that no entry is signed with them open.
                let (record, openings) = record.seal().map_err(|e| corrupt(e.to_string()))?;
                let entry = Entry::sign(record, now(), self.signer.key())
                    .map_err(|e| corrupt(e.to_string()))?;
                let leaf = entry.to_leaf().map_err(|e| corrupt(e.to_string()))?;
                let openings = match openings.is_empty() {
                    true => None,
                    false => {
                        Some(serde_json::to_string(&openings).map_err(|e| corrupt(e.to_string()))?)
                    }
                };
                let index = log.append_leaf_hash(hash_leaf(&leaf));
                leaves.push((index, leaf, openings));
            }
            let checkpoint = Checkpoint::new(self.name.clone(), log.size(), log.current_root())
                .map_err(|e| corrupt(e.to_string()))?;
            let note = sign_checkpoint(&checkpoint, &self.name, self.signer.key())
                .map_err(|e| corrupt(e.to_string()))?;
            for (index, leaf, openings) in leaves {
                tx.execute(
                    "INSERT INTO ledger (idx, entry, openings_json) VALUES (?1, ?2, ?3)",
                    values![index as i64, leaf, openings],
                )?;
            }
            tx.execute(
                "INSERT INTO ledger_checkpoint (id, key_name, note) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET key_name = excluded.key_name, note = excluded.note",
                values![&self.name, note],
            )?;
            // Every row of the append is written, nothing committed.
            cohort_protocol::crash::reached("ledger-append");
            Ok(result)
        });
        match &committed {
            Ok(_) => {
                self.committed.send_replace(log.size());
            }
            Err(_) => undo(&mut log),
        }
        committed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MerkleLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of committed entries. (An append holds the lock until its
    /// transaction ends, so the log seen through it is always committed.)
    pub fn size(&self) -> u64 {
        self.lock().size()
    }

    /// Leaf hashes `start..end` (clamped to the log).
    pub fn leaf_hashes(&self, start: u64, end: u64) -> Vec<Hash> {
        let log = self.lock();
        let end = end.min(log.size()) as usize;
        let start = (start as usize).min(end);
        log.leaf_hashes()[start..end].to_vec()
    }

    /// Up to `max` leaf hashes from `start`, and the root of the tree they
    /// complete; `None` when nothing follows `start`.
    fn batch_from(&self, start: u64, max: usize) -> Option<(Vec<Hash>, Hash)> {
        let log = self.lock();
        if start >= log.size() {
            return None;
        }
        let end = log.size().min(start + max.max(1) as u64);
        let root = log.root(end).ok()?;
        Some((
            log.leaf_hashes()[start as usize..end as usize].to_vec(),
            root,
        ))
    }
}

/// Waits between failed anchoring attempts, doubling up to the maximum.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Leaf hashes read back from the anchor per call when comparing.
const COMPARE_PAGE: u64 = 1024;

/// Anchors every committed entry's leaf hash and the checkpoint root after
/// it on `anchor`, in the background: an append never waits for the chain.
/// It first catches up with entries committed but never anchored (a crash
/// between the SQLite commit and the anchoring, or a chain that was down)
/// and checks that what is anchored already is this log; then it follows
/// new commits, several per transaction when they queue up. Failures to
/// reach the chain are retried with backoff; anchored history that
/// contradicts the log (or a wrong contract or key) stops it with an
/// error. When `stop` turns true it finishes the backlog it has, giving
/// up at the first failure, and returns.
pub fn spawn_anchoring(
    ledger: Arc<Ledger>,
    anchor: Arc<dyn Anchor>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let target = anchor.describe();
        let mut commits = ledger.committed.subscribe();
        let mut verified: Option<u64> = None;
        let mut delay = RETRY_MIN;
        info!(%target, entries = ledger.size(), "ledger anchoring started");
        loop {
            match anchor_step(&ledger, anchor.as_ref(), &mut verified).await {
                Ok(true) => delay = RETRY_MIN,
                Ok(false) => {
                    delay = RETRY_MIN;
                    if *stop.borrow() {
                        return;
                    }
                    tokio::select! {
                        changed = commits.changed() => if changed.is_err() { return },
                        _ = stop.changed() => {}
                    }
                }
                Err(AnchorError::Fatal(reason)) => {
                    error!(%target, "ledger anchoring STOPPED, nothing more will be anchored until the coordinator restarts: {reason}");
                    return;
                }
                Err(AnchorError::Retry(reason)) => {
                    if *stop.borrow() {
                        warn!(%target, "ledger anchoring failed at shutdown; the next start catches up: {reason}");
                        return;
                    }
                    warn!(%target, retry_in_secs = delay.as_secs(), "ledger anchoring failed, will retry: {reason}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    })
}

/// One round of anchoring: `Ok(true)` if it anchored something, `Ok(false)`
/// if the anchor already holds the whole log.
async fn anchor_step(
    ledger: &Ledger,
    anchor: &dyn Anchor,
    verified: &mut Option<u64>,
) -> Result<bool, AnchorError> {
    let first_time = verified.is_none();
    if first_time {
        anchor.check().await?;
    }
    let anchored = anchor.anchored_count().await?;
    let local = ledger.size();
    // What the anchor holds must be this log, entry by entry: compare what
    // was not compared yet (everything, on the first round).
    let mut index = verified.unwrap_or(0);
    let comparable = anchored.min(local);
    while index < comparable {
        let theirs = anchor
            .anchored_leaves(index, (comparable - index).min(COMPARE_PAGE))
            .await?;
        if theirs.is_empty() {
            return Err(AnchorError::Retry(format!(
                "the anchor holds {anchored} entries but returned none from index {index}"
            )));
        }
        let ours = ledger.leaf_hashes(index, index + theirs.len() as u64);
        if let Some(offset) = theirs.iter().zip(&ours).position(|(a, b)| a != b) {
            let at = index + offset as u64;
            return Err(AnchorError::Fatal(format!(
                "entry {at} is anchored with leaf hash {}, but the log's entry {at} hashes to {}: the anchor holds another history (another writer with this key, or a log that was rewritten)",
                hex::encode(theirs[offset]),
                hex::encode(ours[offset])
            )));
        }
        index += theirs.len() as u64;
    }
    *verified = Some(index);
    if anchored > local {
        return Err(AnchorError::Fatal(format!(
            "the anchor holds {anchored} entries but the log only {local}: entries {local}.. were anchored by another writer with this key, or the log lost entries"
        )));
    }
    if first_time && anchored < local {
        info!(
            anchored,
            committed = local,
            "catching up: {} committed ledger entries are not anchored yet",
            local - anchored
        );
    }
    let Some((leaves, root)) = ledger.batch_from(anchored, anchor.max_batch()) else {
        return Ok(false);
    };
    let started = Instant::now();
    let count = leaves.len() as u64;
    let receipt = anchor.anchor(anchored, &leaves, root).await?;
    info!(
        first = anchored,
        last = anchored + count - 1,
        tree_size = anchored + count,
        reference = %receipt.reference,
        block = %receipt.block.map_or("-".into(), |b| b.to_string()),
        cost = %receipt.cost.map_or("-".into(), |c| c.to_string()),
        secs = %format_args!("{:.3}", started.elapsed().as_secs_f64()),
        "ledger entries anchored"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cohort_ledger::{AnchorFuture, AnchorReceipt};

    use super::*;
    use crate::store::testing::TestBackend;

    /// An anchor in memory, enforcing the contract's rule (append at the
    /// count, nowhere else); it can be told to fail its next calls.
    #[derive(Default)]
    struct MemoryAnchor {
        leaves: Mutex<Vec<Hash>>,
        roots: Mutex<Vec<(u64, Hash)>>,
        failures: AtomicUsize,
        calls: AtomicUsize,
    }

    impl MemoryAnchor {
        fn leaves(&self) -> Vec<Hash> {
            self.leaves.lock().unwrap().clone()
        }
        fn latest_root(&self) -> Option<(u64, Hash)> {
            self.roots.lock().unwrap().last().copied()
        }
    }

    impl Anchor for MemoryAnchor {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn check(&self) -> AnchorFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
        fn anchored_count(&self) -> AnchorFuture<'_, u64> {
            Box::pin(async { Ok(self.leaves.lock().unwrap().len() as u64) })
        }
        fn anchored_leaves(&self, start: u64, count: u64) -> AnchorFuture<'_, Vec<Hash>> {
            Box::pin(async move {
                let leaves = self.leaves.lock().unwrap();
                let end = (start + count).min(leaves.len() as u64) as usize;
                Ok(leaves[(start as usize).min(end)..end].to_vec())
            })
        }
        fn anchor<'a>(
            &'a self,
            first_index: u64,
            leaves: &'a [Hash],
            root: Hash,
        ) -> AnchorFuture<'a, AnchorReceipt> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(AnchorError::Retry("node unreachable".into()));
                }
                let mut ours = self.leaves.lock().unwrap();
                if first_index != ours.len() as u64 {
                    return Err(AnchorError::Retry("UnexpectedIndex".into()));
                }
                ours.extend_from_slice(leaves);
                self.roots.lock().unwrap().push((ours.len() as u64, root));
                Ok(AnchorReceipt {
                    reference: "memory".into(),
                    block: None,
                    cost: None,
                })
            })
        }
        fn max_batch(&self) -> usize {
            2
        }
    }

    fn job(n: u32) -> Record {
        Record::JobCreated {
            job_id: format!("job-{n}"),
            name: "test".into(),
            job_sha256: "00".repeat(32),
            submitted_by: None,
        }
    }

    #[test]
    fn a_coordinator_with_another_key_is_refused_before_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let backend = TestBackend::Sqlite;
        let (store, _ledger) = open(dir.path(), &backend);
        let stranger = MessageSigningKey::load_or_create(&dir.path().join("other.pem")).unwrap();
        let err = Ledger::open(&store, LedgerSigner::Own(Box::new(stranger)))
            .err()
            .expect("a ledger signed by another key was opened");
        assert!(matches!(err, StoreError::ForeignLedgerKey { .. }), "{err}");
        assert!(err.to_string().contains("ledger-signing-key.pem"), "{err}");
        assert_eq!(store.ledger().unwrap().leaves.len(), 1);
    }

    /// An enrolment appended open is signed sealed, on both backends; its
    /// openings come back from the store and open it, and a reader that
    /// keeps only one hospital's opening sees the other's part sealed.
    #[test]
    fn appended_parts_are_signed_sealed_and_their_openings_stored_beside_them() {
        for backend in TestBackend::all("ledger_sealed_parts") {
            let dir = tempfile::tempdir().unwrap();
            let (store, ledger) = open(dir.path(), &backend);
            let participant = |name: &str, rows| cohort_ledger::EnrolledClient {
                name: name.into(),
                rows,
                quality_summary_sha256: "00".repeat(32),
            };
            let open_record = Record::ClientsEnrolled {
                job_id: "job-1".into(),
                participants: vec![participant("h1", 120), participant("h2", 340)],
                preprocessing_sha256: "00".repeat(32),
                sealed_participants: Vec::new(),
            };
            ledger
                .append(&store, open_record.clone(), |_| Ok(()))
                .unwrap();
            let mut contents = store.ledger().unwrap();
            let leaf = String::from_utf8(contents.leaves[1].clone()).unwrap();
            assert!(
                !leaf.contains("\"rows\"") && leaf.contains("sealed_participants"),
                "{leaf}"
            );
            assert_eq!(contents.openings[&1].len(), 2, "{}", backend.name());
            let (_, all) = contents.entries().nth(1).unwrap();
            assert_eq!(all.unwrap().record, open_record, "{}", backend.name());

            contents.retain_openings(|_, opening| opening.name == "h2");
            let (_, mine) = contents.entries().nth(1).unwrap();
            let mine = mine.unwrap().record;
            assert_eq!(mine.enrolled_names(), ["h2", "h1"]);
            let Record::ClientsEnrolled {
                participants,
                sealed_participants,
                ..
            } = mine
            else {
                panic!("{mine:?}")
            };
            assert_eq!(participants, [participant("h2", 340)]);
            assert_eq!(sealed_participants.len(), 1);
            assert_eq!(sealed_participants[0].name, "h1");
        }
    }

    fn open(dir: &std::path::Path, backend: &TestBackend) -> (Store, Arc<Ledger>) {
        let store = backend.open(dir, None).unwrap();
        let key = MessageSigningKey::load_or_create(&dir.join("key.pem")).unwrap();
        let ledger = Ledger::open(&store, LedgerSigner::Own(Box::new(key))).unwrap();
        (store, Arc::new(ledger))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn catches_up_then_follows_commits_in_batches_and_retries() {
        for backend in TestBackend::all("anchoring_catches_up") {
            catches_up_then_follows_commits(&backend).await;
        }
    }

    async fn catches_up_then_follows_commits(backend: &TestBackend) {
        let dir = tempfile::tempdir().unwrap();
        let (store, ledger) = open(dir.path(), backend);
        // Committed while nothing anchored (a crash, or a chain that was down).
        for n in 0..4 {
            ledger.append(&store, job(n), |_| Ok(())).unwrap();
        }
        let anchor = Arc::new(MemoryAnchor::default());
        let (stop, stopped) = watch::channel(false);
        let task = spawn_anchoring(ledger.clone(), anchor.clone(), stopped);
        until("catch-up", || anchor.leaves().len() == 5).await;
        // Two leaves a call: 5 entries took 3 transactions.
        assert_eq!(anchor.calls.load(Ordering::SeqCst), 3);
        assert_eq!(anchor.leaves(), ledger.leaf_hashes(0, 5));
        let (size, root) = anchor.latest_root().unwrap();
        assert_eq!((size, root), (5, ledger.lock().root(5).unwrap()));

        // A chain that fails once: retried, nothing lost.
        anchor.failures.store(1, Ordering::SeqCst);
        ledger.append(&store, job(9), |_| Ok(())).unwrap();
        until("the retry", || anchor.leaves().len() == 6).await;
        assert_eq!(anchor.latest_root().unwrap().0, 6);

        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn stops_when_the_anchor_holds_another_history() {
        for backend in TestBackend::all("anchoring_stops") {
            stops_on_another_history(&backend).await;
        }
    }

    async fn stops_on_another_history(backend: &TestBackend) {
        let dir = tempfile::tempdir().unwrap();
        let (store, ledger) = open(dir.path(), backend);
        ledger.append(&store, job(1), |_| Ok(())).unwrap();
        let anchor = Arc::new(MemoryAnchor::default());
        let mut forged = ledger.leaf_hashes(0, 2);
        forged[1][0] ^= 1;
        anchor.leaves.lock().unwrap().extend(forged.clone());
        let (_stop, stopped) = watch::channel(false);
        let task = spawn_anchoring(ledger.clone(), anchor.clone(), stopped);
        // It gives up rather than anchoring on top of a conflict.
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(anchor.leaves(), forged);
        assert_eq!(anchor.calls.load(Ordering::SeqCst), 0);

        // More anchored than committed: also another history.
        let anchor = Arc::new(MemoryAnchor::default());
        anchor
            .leaves
            .lock()
            .unwrap()
            .extend(ledger.leaf_hashes(0, 2).into_iter().chain([[7u8; 32]]));
        let (_stop, stopped) = watch::channel(false);
        let task = spawn_anchoring(ledger.clone(), anchor.clone(), stopped);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(anchor.calls.load(Ordering::SeqCst), 0);
    }
}
