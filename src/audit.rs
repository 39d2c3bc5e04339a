//! What a validator runs against a coordinator's ledger: `cohort verify
//! ledger` and `cohort ledger show`. Reads the SQLite file read-only and
//! trusts nothing in it that a signature or the Merkle root does not back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cohort_ledger::{AuditReport, Entry, SeenCheckpoint, audit};

/// Where checkpoints seen by earlier runs are remembered by default.
pub fn default_state_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cohort").join("seen-checkpoints.json")
}

type SeenMap = BTreeMap<String, SeenCheckpoint>;

fn read_state(path: &Path) -> Result<SeenMap> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a checkpoint state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SeenMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Checks the whole ledger in `data_dir` and, when it passes, remembers its
/// checkpoint in `state` so that a later rewrite of history is detected.
pub fn verify_ledger(data_dir: &Path, state: &Path) -> Result<AuditReport> {
    verify_contents(read_ledger(data_dir)?, state)
}

/// A coordinator's ledger as its data directory holds it.
pub fn read_ledger(data_dir: &Path) -> Result<cohort_coordinator::store::LedgerContents> {
    let contents = cohort_coordinator::store::read_ledger_at(data_dir)?;
    if contents.checkpoint.is_none() {
        bail!(
            "{} holds no signed checkpoint: not a Cohort coordinator's data directory, or its ledger was removed",
            data_dir.display()
        );
    }
    Ok(contents)
}

/// A coordinator's ledger as its PostgreSQL database holds it.
pub fn read_ledger_from_database(url: &str) -> Result<cohort_coordinator::store::LedgerContents> {
    let contents = cohort_coordinator::store::read_ledger_from_database(url)?;
    if contents.checkpoint.is_none() {
        bail!(
            "{} holds no signed checkpoint: not a Cohort coordinator's database, or its ledger was removed",
            cohort_coordinator::store::redacted(url)
        );
    }
    Ok(contents)
}

/// Downloads a running coordinator's ledger (checkpoint, then entries).
pub async fn fetch_ledger(
    dev: &mut crate::developer::Developer,
) -> Result<cohort_coordinator::store::LedgerContents> {
    use cohort_protocol::v1::{GetLedgerRequest, ledger_frame::Frame};
    let mut stream = dev
        .get_ledger(GetLedgerRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut contents = cohort_coordinator::store::LedgerContents::default();
    while let Some(frame) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
    {
        match frame.frame {
            Some(Frame::Checkpoint(c)) if contents.checkpoint.is_none() => {
                contents.checkpoint = Some(cohort_coordinator::store::StoredCheckpoint {
                    key_name: c.key_name,
                    note: c.note,
                });
            }
            Some(Frame::Entry(leaf)) if contents.checkpoint.is_some() => contents.leaves.push(leaf),
            Some(Frame::WithheldLeafHash(hash)) if contents.checkpoint.is_some() => {
                let hash: cohort_ledger::Hash = hash.try_into().map_err(|h: Vec<u8>| {
                    anyhow::anyhow!(
                        "the coordinator sent a withheld entry's leaf hash of {} bytes, not 32",
                        h.len()
                    )
                })?;
                contents.withheld.insert(contents.leaves.len() as u64, hash);
                contents.leaves.push(Vec::new());
            }
            Some(Frame::Opening(o))
                if !contents.leaves.is_empty()
                    && !contents
                        .withheld
                        .contains_key(&(contents.leaves.len() as u64 - 1)) =>
            {
                contents
                    .openings
                    .entry(contents.leaves.len() as u64 - 1)
                    .or_default()
                    .push(cohort_ledger::Opening {
                        name: o.name,
                        salt: o.salt,
                        body: o.body,
                    });
            }
            _ => bail!("the coordinator's ledger stream is out of order"),
        }
    }
    if contents.checkpoint.is_none() {
        bail!("the coordinator sent no checkpoint");
    }
    Ok(contents)
}

/// [`verify_ledger`] on a ledger already read (from disk or the network).
pub fn verify_contents(
    contents: cohort_coordinator::store::LedgerContents,
    state: &Path,
) -> Result<AuditReport> {
    let (report, seen, slot) = audit_contents(&contents, state)?;
    remember(report, seen, slot, state)
}

/// [`verify_contents`], then, given a chain, the checks of [`check_chain`];
/// the checkpoint is remembered only when both pass.
pub async fn verify_contents_on_chain(
    contents: cohort_coordinator::store::LedgerContents,
    state: &Path,
    chain: Option<&ChainOptions>,
) -> Result<LedgerVerification> {
    let (report, seen, slot) = audit_contents(&contents, state)?;
    let chain = match chain {
        Some(options) => Some(check_chain(&contents, options).await?),
        None => None,
    };
    Ok(LedgerVerification {
        report: remember(report, seen, slot, state)?,
        chain,
    })
}

fn audit_contents(
    contents: &cohort_coordinator::store::LedgerContents,
    state: &Path,
) -> Result<(AuditReport, SeenMap, String)> {
    let Some(checkpoint) = &contents.checkpoint else {
        bail!("the ledger has no signed checkpoint");
    };
    let seen = read_state(state)?;
    let slot = checkpoint.key_name.clone();
    let report = audit(
        &contents.leaves,
        &contents.withheld,
        &contents.openings,
        &checkpoint.note,
        &checkpoint.key_name,
        seen.get(&slot),
    )?;
    Ok((report, seen, slot))
}

fn remember(
    report: AuditReport,
    mut seen: SeenMap,
    slot: String,
    state: &Path,
) -> Result<AuditReport> {
    seen.insert(
        slot,
        SeenCheckpoint {
            origin: report.origin.clone(),
            size: report.entries,
            root: report.root.clone(),
        },
    );
    if let Some(dir) = state.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(state, serde_json::to_vec_pretty(&seen)?)
        .with_context(|| format!("writing {}", state.display()))?;
    Ok(report)
}

/// Where the ledger is anchored: `cohort verify ledger --rpc-url URL
/// --contract ADDR [--require-anchored]`.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    pub rpc_url: String,
    pub contract: String,
    /// Fail when an entry is not anchored yet, rather than report it.
    pub require_anchored: bool,
}

/// What `cohort verify ledger` checked: the log, and the chain if given.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LedgerVerification {
    #[serde(flatten)]
    pub report: AuditReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainCheck>,
}

/// What was compared with the anchor contract, all of it matching.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainCheck {
    /// The node, without path or query.
    pub node: String,
    pub chain_id: u64,
    pub contract: String,
    /// Leaf hashes the contract holds; each equals the log's at its index.
    pub anchored_entries: u64,
    /// Log entries not anchored yet (the coordinator anchors in the
    /// background, so the newest may lag).
    pub pending_entries: u64,
    pub first_pending: Option<EntryRef>,
    /// The contract's latest checkpoint; its root equals the log's root at
    /// that tree size.
    pub checkpoint: Option<AnchoredCheckpoint>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryRef {
    pub index: u64,
    pub job_id: Option<String>,
    pub what: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AnchoredCheckpoint {
    pub tree_size: u64,
    /// Hex.
    pub root: String,
}

/// Names an entry for a message: its index, and what it records.
fn entry_ref(index: u64, leaf: &[u8]) -> EntryRef {
    use cohort_ledger::Record;
    if leaf.is_empty() {
        return EntryRef {
            index,
            job_id: None,
            what: "an entry of another tenant's job, withheld".to_string(),
        };
    }
    let (job_id, what) = match Entry::from_leaf(leaf).map(|e| e.record) {
        Ok(Record::CoordinatorKey { .. }) => (None, "the coordinator's key".to_string()),
        Ok(Record::JobCreated { job_id, .. }) => {
            (Some(job_id.clone()), format!("job {job_id} created"))
        }
        Ok(Record::ClientsEnrolled { job_id, .. }) => {
            (Some(job_id.clone()), format!("job {job_id} enrollment"))
        }
        Ok(Record::RoundCompleted { job_id, round, .. }) => {
            (Some(job_id.clone()), format!("job {job_id} round {round}"))
        }
        Ok(Record::RoundValued { job_id, round, .. }) => (
            Some(job_id.clone()),
            format!("job {job_id} round {round} values"),
        ),
        Ok(Record::RewardsPaid { job_id, round, .. }) => (
            Some(job_id.clone()),
            format!("job {job_id} round {round} rewards"),
        ),
        Ok(Record::ValidatorsPaid { job_id, round, .. }) => (
            Some(job_id.clone()),
            format!("job {job_id} round {round} validator rewards"),
        ),
        Ok(Record::ProofSetup {
            job_id, ceremony, ..
        }) => (
            Some(job_id.clone()),
            match ceremony {
                Some(c) => format!(
                    "job {job_id} update-proof key from a ceremony of {} contributions",
                    c.contributors.len()
                ),
                None => format!("job {job_id} update-proof key"),
            },
        ),
        Ok(Record::Attestation {
            job_id,
            round,
            validator,
            ..
        }) => (
            Some(job_id.clone()),
            format!("job {job_id} round {round} attestation by {validator}"),
        ),
        Err(_) => (None, "an unreadable entry".to_string()),
    };
    EntryRef {
        index,
        job_id,
        what,
    }
}

/// Checks the ledger against its anchor contract: every anchored leaf hash
/// equals the log's entry at that index, the contract holds no entry the
/// log lacks, and the contract's latest checkpoint root is the log's root
/// at that size. Entries not anchored yet are reported, or refused with
/// `require_anchored`.
pub async fn check_chain(
    contents: &cohort_coordinator::store::LedgerContents,
    options: &ChainOptions,
) -> Result<ChainCheck> {
    use cohort_ledger::MerkleLog;
    let leaves = &contents.leaves;
    let contract = cohort_ledger_evm::AnchorContract::new(&options.rpc_url, &options.contract)?;
    let chain_id = contract.check_deployed().await?;
    let anchored = contract.entry_count().await?;
    let local = leaves.len() as u64;
    let hashes = contents.leaf_hashes();
    let comparable = anchored.min(local);
    let theirs = contract.entries(0, comparable).await?;
    if theirs.len() as u64 != comparable {
        bail!(
            "the contract says it holds {anchored} entries but returned {}",
            theirs.len()
        );
    }
    if let Some(index) = theirs.iter().zip(&hashes).position(|(a, b)| a != b) {
        let entry = entry_ref(index as u64, &leaves[index]);
        bail!(
            "entry {index} ({}) does not match the chain: the contract anchors leaf hash {} at index {index}, but the log's entry hashes to {}: the entry was changed after it was anchored",
            entry.what,
            hex::encode(theirs[index]),
            hex::encode(hashes[index])
        );
    }
    if anchored > local {
        let extra = contract.entries(local, 1).await?;
        bail!(
            "the chain anchors {anchored} entries but the log holds only {local}: entry {local} (leaf hash {}){} is missing from the log",
            extra.first().map(hex::encode).unwrap_or_default(),
            if anchored > local + 1 {
                " and those after it"
            } else {
                ""
            }
        );
    }
    let checkpoint = match contract.latest_checkpoint().await? {
        Some((size, root)) => {
            let log = MerkleLog::from_leaf_hashes(hashes.iter().copied());
            let ours = log
                .root(size)
                .with_context(|| format!("the chain's latest checkpoint has tree size {size}"))?;
            if ours != root {
                bail!(
                    "the chain's latest checkpoint (tree size {size}) has root {}, but the log's first {size} entries hash to {}",
                    hex::encode(root),
                    hex::encode(ours)
                );
            }
            Some(AnchoredCheckpoint {
                tree_size: size,
                root: hex::encode(root),
            })
        }
        None => None,
    };
    let pending = local - anchored;
    let first_pending = (pending > 0).then(|| entry_ref(anchored, &leaves[anchored as usize]));
    if let Some(first) = &first_pending
        && options.require_anchored
    {
        bail!(
            "{pending} of the log's {local} entries are not anchored on chain yet, the first being entry {} ({}); without --require-anchored they are reported as pending",
            first.index,
            first.what
        );
    }
    Ok(ChainCheck {
        node: contract.node().to_string(),
        chain_id,
        contract: contract.address().to_string(),
        anchored_entries: anchored,
        pending_entries: pending,
        first_pending,
        checkpoint,
    })
}

/// The ledger's entries (index, entry), optionally only those of one job.
/// Entries are parsed, not verified: run `verify_ledger` for that.
pub fn ledger_entries(data_dir: &Path, job: Option<&str>) -> Result<Vec<(u64, Entry)>> {
    entries_in(&cohort_coordinator::store::read_ledger_at(data_dir)?, job)
}

/// [`ledger_entries`] of a ledger already read.
pub fn entries_in(
    contents: &cohort_coordinator::store::LedgerContents,
    job: Option<&str>,
) -> Result<Vec<(u64, Entry)>> {
    let mut out = Vec::new();
    for (index, entry) in contents.entries() {
        let entry = entry.with_context(|| format!("ledger entry {index}"))?;
        if job.is_none() || entry.record.job_id() == job {
            out.push((index, entry));
        }
    }
    Ok(out)
}

/// The key that signs a coordinator's ledger and models, from the first
/// entry of its ledger in its data directory.
pub fn coordinator_key(data_dir: &Path) -> Result<cohort_identity::MessageVerifyingKey> {
    key_in(&cohort_coordinator::store::read_ledger_at(data_dir)?.leaves)
        .with_context(|| format!("the ledger in {}", data_dir.display()))
}

/// [`coordinator_key`] from the ledger wherever it is.
pub async fn coordinator_key_from(
    source: &LedgerSource,
) -> Result<cohort_identity::MessageVerifyingKey> {
    key_in(&source.read().await?.leaves)
}

fn key_in(leaves: &[Vec<u8>]) -> Result<cohort_identity::MessageVerifyingKey> {
    let first = leaves.first().context("the ledger has no entries")?;
    match Entry::from_leaf(first)?.record {
        cohort_ledger::Record::CoordinatorKey { public_key, .. } => {
            Ok(cohort_identity::MessageVerifyingKey::from_hex(&public_key)?)
        }
        _ => bail!("the ledger's first entry does not publish the coordinator's key"),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelVerification {
    pub files: Vec<cohort_ledger::model_signing::Resource>,
    pub signature_sha256: String,
    /// The ledger entry that records this signature (with `--data-dir`).
    pub ledger_entry: Option<u64>,
    pub job_id: Option<String>,
    pub round: Option<u32>,
}

/// Checks a downloaded model directory: its files against `model.sig`, the
/// signature against the coordinator's key (`public_key` PEM, or the key
/// its ledger publishes) and, given the coordinator's data directory, that
/// the verified ledger records this very signature.
pub fn verify_model(
    dir: &Path,
    public_key: Option<&Path>,
    data_dir: Option<&Path>,
    state: &Path,
) -> Result<ModelVerification> {
    let ledger = match data_dir {
        Some(data_dir) => Some((read_ledger(data_dir)?, data_dir.display().to_string())),
        None => None,
    };
    verify_model_against(dir, public_key, ledger, state)
}

/// [`verify_model`] against a ledger already read (from a data directory,
/// a PostgreSQL database or a running coordinator), named by `ledger.1` in
/// messages.
pub fn verify_model_against(
    dir: &Path,
    public_key: Option<&Path>,
    ledger: Option<(cohort_coordinator::store::LedgerContents, String)>,
    state: &Path,
) -> Result<ModelVerification> {
    use sha2::Digest as _;
    let key = match (public_key, &ledger) {
        (Some(pem), _) => cohort_identity::MessageVerifyingKey::from_spki_pem(
            &std::fs::read_to_string(pem).with_context(|| format!("reading {}", pem.display()))?,
        )?,
        (None, Some((contents, name))) => {
            key_in(&contents.leaves).with_context(|| format!("the ledger in {name}"))?
        }
        (None, None) => bail!(
            "give the coordinator's key (--public-key), or its state (--data-dir or --database)"
        ),
    };
    let sig_path = dir.join(cohort_ledger::model_signing::SIGNATURE_FILE);
    let bundle = std::fs::read_to_string(&sig_path).with_context(|| {
        format!(
            "{} (a model downloaded with `cohort model get` has one)",
            sig_path.display()
        )
    })?;
    let files = cohort_ledger::model_signing::verify_model(dir, &bundle, &key)?;
    let signature_sha256 = hex::encode(sha2::Sha256::digest(bundle.as_bytes()));
    let mut found = (None, None, None);
    if let Some((contents, name)) = ledger {
        let readable = contents.clone();
        verify_contents(contents, state)?;
        for (index, entry) in entries_in(&readable, None)? {
            if let cohort_ledger::Record::RoundCompleted {
                job_id,
                round,
                model_signature_sha256,
                ..
            } = entry.record
                && model_signature_sha256 == signature_sha256
            {
                found = (Some(index), Some(job_id), Some(round));
            }
        }
        if found.0.is_none() {
            bail!("the ledger in {name} records no model with this signature");
        }
    }
    Ok(ModelVerification {
        files,
        signature_sha256,
        ledger_entry: found.0,
        job_id: found.1,
        round: found.2,
    })
}

/// Where `cohort verify ledger` reads the ledger from.
pub enum LedgerSource {
    /// The coordinator's data directory, read-only.
    DataDir(PathBuf),
    /// The coordinator's PostgreSQL database (`--database`), read-only.
    Database(String),
    /// A running coordinator, over the network.
    Coordinator {
        url: String,
        security: cohort_protocol::Security,
    },
}

/// Reads the ledger from `source` and checks it ([`verify_contents_on_chain`]).
pub async fn verify_ledger_from(
    source: &LedgerSource,
    state: &Path,
    chain: Option<&ChainOptions>,
) -> Result<LedgerVerification> {
    verify_contents_on_chain(source.read().await?, state, chain).await
}

impl LedgerSource {
    /// The ledger's entries and signed checkpoint, wherever they are.
    pub async fn read(&self) -> Result<cohort_coordinator::store::LedgerContents> {
        match self {
            LedgerSource::DataDir(dir) => read_ledger(dir),
            LedgerSource::Database(url) => read_ledger_from_database(url),
            LedgerSource::Coordinator { url, security } => {
                let mut dev = crate::developer::connect(url, security).await?;
                fetch_ledger(&mut dev).await
            }
        }
    }

    /// Where the ledger is, for messages (a database's password hidden).
    pub fn describe(&self) -> String {
        match self {
            LedgerSource::DataDir(dir) => dir.display().to_string(),
            LedgerSource::Database(url) => cohort_datasets::sql::redacted(url),
            LedgerSource::Coordinator { url, .. } => url.clone(),
        }
    }

    /// `--data-dir DIR` or `--database URL` (the coordinator's own state,
    /// read-only); exactly one.
    pub fn stored(data_dir: Option<PathBuf>, database: Option<String>) -> Result<Self> {
        match (data_dir, database) {
            (Some(dir), None) => Ok(LedgerSource::DataDir(dir)),
            (None, Some(url)) => Ok(LedgerSource::Database(url)),
            (Some(_), Some(_)) => bail!("give --data-dir or --database, not both"),
            (None, None) => {
                bail!("give the coordinator's --data-dir, or its --database (postgres://...)")
            }
        }
    }
}

impl LedgerVerification {
    /// `cohort verify ledger`'s report: the log, then the chain if checked.
    pub fn summary(&self) -> String {
        let report = &self.report;
        let mut out = format!(
            "ledger OK: {} entries, root {}, signed by {} (key {}…){}\n",
            report.entries,
            report.root,
            report.origin,
            report
                .coordinator_key
                .get(..16)
                .unwrap_or(&report.coordinator_key),
            report
                .consistent_with
                .map(|n| format!(", extends the {n}-entry checkpoint seen before"))
                .unwrap_or_default()
        );
        if report.withheld > 0 {
            out.push_str(&format!(
                "{} of them belong to other tenants' jobs: withheld from this reader, checked by their leaf hashes only\n",
                report.withheld
            ));
        }
        if report.opened + report.sealed > 0 {
            out.push_str(&format!(
                "hospitals' parts (enrolment counts, update receipts and ε): {} opened and matching their commitments, {} sealed to this reader\n",
                report.opened, report.sealed
            ));
        }
        if let Some(c) = &self.chain {
            out.push_str(&format!(
                "chain OK: {} entries anchored on contract {} (chain {}) match the log{}{}\n",
                c.anchored_entries,
                c.contract,
                c.chain_id,
                c.checkpoint
                    .as_ref()
                    .map(|k| format!(", and so does its checkpoint of {} entries", k.tree_size))
                    .unwrap_or_default(),
                c.first_pending
                    .as_ref()
                    .map(|p| format!(
                        "; {} pending, from entry {} ({})",
                        c.pending_entries, p.index, p.what
                    ))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

impl ModelVerification {
    pub fn summary(&self) -> String {
        format!(
            "model OK: {} files signed by the coordinator{}",
            self.files.len(),
            match (&self.job_id, self.round, self.ledger_entry) {
                (Some(job), Some(round), Some(entry)) =>
                    format!("; recorded on the ledger as {job} round {round} (entry {entry})"),
                _ => String::new(),
            }
        )
    }
}

/// A ledger entry with its position (`cohort ledger show --json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexedEntry {
    pub entry: Entry,
    pub index: u64,
}

/// [`ledger_entries`] as [`IndexedEntry`] values.
pub async fn indexed_entries(
    source: &LedgerSource,
    job: Option<&str>,
) -> Result<Vec<IndexedEntry>> {
    Ok(readable_entries(source, job).await?.0)
}

/// [`indexed_entries`], and how many entries of the log the source
/// withheld from this reader (other tenants' jobs, over the network).
pub async fn readable_entries(
    source: &LedgerSource,
    job: Option<&str>,
) -> Result<(Vec<IndexedEntry>, usize)> {
    let contents = source.read().await?;
    let entries = entries_in(&contents, job)?
        .into_iter()
        .map(|(index, entry)| IndexedEntry { entry, index })
        .collect();
    Ok((entries, contents.withheld.len()))
}

/// One line per entry: index, time, record as JSON.
pub fn render_entries(entries: &[IndexedEntry]) -> Result<String> {
    let mut out = String::new();
    for e in entries {
        out.push_str(&format!(
            "{:>6}  {}  {}\n",
            e.index,
            e.entry.at,
            serde_json::to_string(&e.entry.record)?
        ));
    }
    Ok(out)
}

/// Deploys the anchor contract with the account whose key is in `key_file`.
pub async fn deploy_anchor(
    rpc_url: &str,
    key_file: &Path,
) -> Result<cohort_ledger_evm::Deployment> {
    let key = cohort_ledger_evm::EvmKey::from_file(key_file)?;
    cohort_ledger_evm::deploy(rpc_url, &key)
        .await
        .context("deploying the ledger anchor contract")
}

/// What `cohort ledger deploy` tells the operator besides the address.
pub fn deployment_summary(d: &cohort_ledger_evm::Deployment) -> String {
    format!(
        "deployed on chain {} in block {} (transaction {}, {} gas); only {} may append",
        d.chain_id, d.block, d.transaction, d.gas_used, d.owner
    )
}

/// An entry's inclusion proof (RFC 9162) in the log as its data directory
/// holds it, in hex: enough to recompute the root by hand.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InclusionProof {
    pub index: u64,
    pub tree_size: u64,
    /// The entry's bytes as the log stores them (UTF-8 JSON).
    pub leaf: String,
    /// SHA-256(0x00 || leaf).
    pub leaf_hash: String,
    /// Sibling hashes, leaf side first.
    pub proof: Vec<String>,
    /// The root the proof leads to: compare with the signed checkpoint's.
    pub root: String,
}

/// The openings a coordinator's data directory keeps for entry `index`'s
/// sealed parts (hospitals' enrolment counts and update receipts; see
/// `cohort_ledger::sealed`): each opens the commitment named after its
/// hospital in the entry. Empty for an entry without sealed parts.
pub fn ledger_openings(data_dir: &Path, index: u64) -> Result<Vec<cohort_ledger::Opening>> {
    let contents = read_ledger(data_dir)?;
    let size = contents.leaves.len() as u64;
    if index >= size {
        bail!("the ledger has {size} entries; there is no entry {index}");
    }
    Ok(contents.openings.get(&index).cloned().unwrap_or_default())
}

pub fn inclusion_proof(data_dir: &Path, index: u64) -> Result<InclusionProof> {
    inclusion_proof_in(&read_ledger(data_dir)?.leaves, index)
}

/// [`inclusion_proof`] in a ledger already read (the dashboard proves
/// against the checkpoint it read in the same transaction).
pub fn inclusion_proof_in(leaves: &[Vec<u8>], index: u64) -> Result<InclusionProof> {
    let size = leaves.len() as u64;
    let leaf = leaves
        .get(usize::try_from(index).unwrap_or(usize::MAX))
        .with_context(|| format!("the ledger has {size} entries; there is no entry {index}"))?;
    let mut log = cohort_ledger::MerkleLog::new();
    for l in leaves {
        log.append(l);
    }
    Ok(InclusionProof {
        index,
        tree_size: size,
        leaf: String::from_utf8_lossy(leaf).into_owned(),
        leaf_hash: hex::encode(cohort_ledger::hash_leaf(leaf)),
        proof: log
            .inclusion_proof(index, size)?
            .iter()
            .map(hex::encode)
            .collect(),
        root: hex::encode(log.root(size)?),
    })
}
