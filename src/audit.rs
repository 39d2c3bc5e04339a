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
    let contents = cohort_coordinator::store::read_ledger_at(data_dir)?;
    if contents.checkpoint.is_none() {
        bail!(
            "{} holds no signed checkpoint: not a Cohort coordinator's data directory, or its ledger was removed",
            data_dir.display()
        );
    }
    verify_contents(contents, state)
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
    let Some(checkpoint) = contents.checkpoint else {
        bail!("the ledger has no signed checkpoint");
    };
    let mut seen = read_state(state)?;
    let slot = checkpoint.key_name.clone();
    let report = audit(
        &contents.leaves,
        &checkpoint.note,
        &checkpoint.key_name,
        seen.get(&slot),
    )?;
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

/// The ledger's entries (index, entry), optionally only those of one job.
/// Entries are parsed, not verified: run `verify_ledger` for that.
pub fn ledger_entries(data_dir: &Path, job: Option<&str>) -> Result<Vec<(u64, Entry)>> {
    let leaves = cohort_coordinator::store::read_ledger_at(data_dir)?.leaves;
    let mut out = Vec::new();
    for (index, leaf) in leaves.iter().enumerate() {
        let entry = Entry::from_leaf(leaf).with_context(|| format!("ledger entry {index}"))?;
        if job.is_none() || entry.record.job_id() == job {
            out.push((index as u64, entry));
        }
    }
    Ok(out)
}

/// The key that signs a coordinator's ledger and models, from the first
/// entry of its ledger.
pub fn coordinator_key(data_dir: &Path) -> Result<cohort_identity::MessageVerifyingKey> {
    let leaves = cohort_coordinator::store::read_ledger_at(data_dir)?.leaves;
    let first = leaves
        .first()
        .with_context(|| format!("{} holds no ledger", data_dir.display()))?;
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
    use sha2::Digest as _;
    let key = match (public_key, data_dir) {
        (Some(pem), _) => cohort_identity::MessageVerifyingKey::from_spki_pem(
            &std::fs::read_to_string(pem).with_context(|| format!("reading {}", pem.display()))?,
        )?,
        (None, Some(data_dir)) => coordinator_key(data_dir)?,
        (None, None) => bail!("give the coordinator's key (--public-key) or its --data-dir"),
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
    if let Some(data_dir) = data_dir {
        verify_ledger(data_dir, state)?;
        for (index, entry) in ledger_entries(data_dir, None)? {
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
            bail!(
                "the ledger in {} records no model with this signature",
                data_dir.display()
            );
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
