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
    let Some(checkpoint) = contents.checkpoint else {
        bail!(
            "{} holds no signed checkpoint: not a Cohort coordinator's data directory, or its ledger was removed",
            data_dir.display()
        );
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
