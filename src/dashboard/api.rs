//! The dashboard's JSON: the developer API's job statuses
//! ([`JobView::from_wire`], what `cohort job status --json` and the Python
//! package print), the ledger as `cohort ledger show/prove` and
//! `cohort verify ledger/model` read it, and rewards as `cohort rewards
//! show` reports them, cut down to what the token's holder may see.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use cohort_coordinator::JobSpec;
use cohort_coordinator::rewards::report::RewardsReport;
use cohort_coordinator::store::{JobRow, LedgerContents};
use cohort_coordinator::view::CoordinatorView;
use cohort_ledger::AuditReport;
use serde::Serialize;

use super::ledger_cache::ParsedLedger;
use super::token::{Claims, DashboardRole};
use crate::audit::{InclusionProof, IndexedEntry};
use crate::developer::JobView;

/// One line of the jobs list.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub job_id: String,
    pub name: String,
    pub state: String,
    pub rounds_completed: u32,
    pub rounds_total: u32,
    /// `federated`, `splitfed` or `vertical`.
    pub mode: String,
    /// `plain`, `secagg` or `he`.
    pub aggregation: String,
    /// The DP level (`record`, `client`) when the job trains under DP.
    pub dp_level: Option<String>,
    /// Whether the job values contributions and pays rewards.
    pub valuation: bool,
    /// Who submitted it (the developer certificate's name; none over
    /// plaintext gRPC).
    pub developer: Option<String>,
    pub created_at: String,
    /// For a finished job: its last event or ledger entry.
    pub finished_at: Option<String>,
    pub participants: Vec<String>,
}

/// Everything the job page shows.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    pub summary: JobSummary,
    /// Exactly what `cohort job status --json` prints (a hospital sees only
    /// its own update receipts and epsilon).
    pub status: JobView,
    pub privacy: PrivacyView,
    /// `cohort rewards show JOB`: values and rewards per hospital per
    /// round, for `[valuation]` jobs once a round is paid.
    pub rewards: Option<RewardsReport>,
    pub model: Option<ModelView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrivacyView {
    pub aggregation: String,
    pub dp_level: Option<String>,
    /// The job's epsilon per hospital over the whole job (its budget here;
    /// each hospital's client also enforces its own across jobs).
    pub target_epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub hospitals: Vec<HospitalBudget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HospitalBudget {
    pub name: String,
    /// The epsilon its latest update receipt reports spent on this job.
    pub epsilon_spent: Option<f64>,
}

/// The latest round's model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelView {
    pub round: u32,
    pub model_sha256: String,
    pub signature: SignatureStatus,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SignatureStatus {
    /// `cohort verify model` passes on the stored files: signed by the key
    /// the ledger publishes, and the ledger records this signature.
    Verified {
        signature_sha256: String,
        ledger_entry: Option<u64>,
        files: usize,
    },
    /// The model has no signature bundle (stored before signing existed).
    Unsigned,
    Invalid {
        reason: String,
    },
}

/// The ledger explorer's page.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerView {
    pub checkpoint: CheckpointView,
    /// `cohort verify ledger`'s report, or why it failed.
    pub verified: Option<AuditReport>,
    pub verification_error: Option<String>,
    pub entries: Vec<IndexedEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointView {
    pub key_name: String,
    /// The signed note (C2SP): origin, size, base64 root, blank line,
    /// signature lines. The browser reads the root from here.
    pub note: String,
}

/// An entry's inclusion proof with the checkpoint read alongside it.
#[derive(Debug, Clone, Serialize)]
pub struct ProofView {
    pub proof: InclusionProof,
    pub checkpoint: CheckpointView,
}

fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn participants(row: &JobRow) -> &[String] {
    row.enrollment
        .as_ref()
        .map(|e| e.participants.as_slice())
        .unwrap_or_default()
}

/// A developer sees the jobs it submitted, a hospital those it was
/// enrolled in, an operator all.
pub fn may_see(claims: &Claims, row: &JobRow) -> bool {
    match claims.role {
        DashboardRole::Operator => true,
        DashboardRole::Developer => row.submitted_by.as_deref() == Some(claims.name.as_str()),
        DashboardRole::Hospital => participants(row).contains(&claims.name),
    }
}

fn summary(row: &JobRow, view: &JobView, last_entry: Option<&String>) -> JobSummary {
    // A stored job's file parsed when it was submitted; one that no longer
    // does (an older format) still lists, without the parts it names.
    let spec = JobSpec::from_toml(&row.spec_toml).ok();
    let finished_at = if row.state.is_finished() {
        let last_event = view.events.last().map(|e| &e.at);
        match (last_event, last_entry) {
            (Some(a), Some(b)) => Some(a.max(b).clone()),
            (a, b) => a.or(b).cloned(),
        }
    } else {
        None
    };
    JobSummary {
        job_id: row.id.clone(),
        name: row.name.clone(),
        state: view.state.clone(),
        rounds_completed: view.rounds_completed,
        rounds_total: view.rounds_total,
        mode: spec
            .as_ref()
            .map(|s| label(&s.training.mode))
            .unwrap_or_default(),
        aggregation: spec
            .as_ref()
            .map(|s| label(&s.privacy.aggregation))
            .unwrap_or_default(),
        dp_level: spec
            .as_ref()
            .and_then(|s| s.privacy.dp.as_ref())
            .map(|dp| label(&dp.level)),
        valuation: spec.as_ref().is_some_and(|s| s.valuation.is_some()),
        developer: row.submitted_by.clone(),
        created_at: row.created_at.clone(),
        finished_at,
        participants: view.participants.clone(),
    }
}

fn job_view(view: &CoordinatorView, row: &JobRow) -> Result<JobView> {
    JobView::from_wire(view.status(row)?)
}

/// `GET /api/jobs`: the jobs the caller may see, newest first.
pub fn jobs(
    view: &CoordinatorView,
    claims: &Claims,
    ledger: &ParsedLedger,
) -> Result<Vec<JobSummary>> {
    let last = &ledger.last_entry_at;
    let mut out = Vec::new();
    for row in view.jobs()?.iter().filter(|r| may_see(claims, r)) {
        // A summary needs no rounds (a long job's receipts run to hundreds
        // of megabytes).
        let status = JobView::from_wire(view.status_without_rounds(row)?)?;
        out.push(summary(row, &status, last.get(&row.id)));
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    Ok(out)
}

/// The job `id` if it exists and the caller may see it (`None` either way
/// otherwise: a job's existence is not disclosed to those who may not see it).
pub fn visible_job(view: &CoordinatorView, claims: &Claims, id: &str) -> Result<Option<JobRow>> {
    Ok(view.job(id)?.filter(|row| may_see(claims, row)))
}

/// `GET /api/jobs/{id}` without the model's signature check (which reads
/// the stored files; see [`check_signature`]).
pub fn job_detail(
    view: &CoordinatorView,
    claims: &Claims,
    row: &JobRow,
    ledger: &ParsedLedger,
) -> Result<JobDetail> {
    let mut status = job_view(view, row)?;
    let summary = summary(row, &status, ledger.last_entry_at.get(&row.id));
    let spec = JobSpec::from_toml(&row.spec_toml).ok();
    let dp = spec.as_ref().and_then(|s| s.privacy.dp.as_ref());
    let rewards = if summary.valuation {
        // Nothing paid yet is not an error on a page that updates live.
        crate::rewards::show(&ledger.contents, Some(&row.id)).ok()
    } else {
        None
    };
    let mut detail = JobDetail {
        privacy: PrivacyView {
            aggregation: summary.aggregation.clone(),
            dp_level: summary.dp_level.clone(),
            target_epsilon: dp.and_then(|d| d.target_epsilon),
            delta: dp.map(|d| d.delta),
            hospitals: status
                .participants
                .iter()
                .map(|name| HospitalBudget {
                    name: name.clone(),
                    epsilon_spent: status.dp_epsilon.get(name).copied(),
                })
                .collect(),
        },
        model: status.rounds.last().map(|r| ModelView {
            round: r.round,
            model_sha256: r.model_sha256.clone(),
            signature: SignatureStatus::Unsigned,
        }),
        summary,
        status: {
            if claims.role == DashboardRole::Hospital {
                status.dp_epsilon.retain(|name, _| *name == claims.name);
                for round in &mut status.rounds {
                    round.updates.retain(|u| u.client == claims.name);
                }
            }
            status
        },
        rewards,
    };
    if claims.role == DashboardRole::Hospital {
        detail.privacy.hospitals.retain(|h| h.name == claims.name);
        if let Some(report) = &mut detail.rewards {
            report.hospitals.retain(|h| h.name == claims.name);
            report.validators.clear();
            for round in &mut report.rounds {
                round.hospitals.retain(|h| h.name == claims.name);
                round.validators.clear();
            }
        }
    }
    Ok(detail)
}

/// Runs `cohort verify model` on a stored model: its files against their
/// signature bundle, the bundle against the key the ledger publishes, and
/// the ledger (in `data_dir`) for the entry that records the signature.
pub fn check_signature(
    data_dir: &Path,
    card: &[u8],
    body: &[u8],
    signature: &[u8],
) -> Result<SignatureStatus> {
    let scratch = tempfile::tempdir().context("a scratch directory for the model check")?;
    let model_dir = scratch.path().join("model");
    std::fs::create_dir_all(&model_dir)?;
    std::fs::write(model_dir.join("model.json"), card)?;
    std::fs::write(model_dir.join("model.safetensors"), body)?;
    std::fs::write(
        model_dir.join(cohort_ledger::model_signing::SIGNATURE_FILE),
        signature,
    )?;
    let state = scratch.path().join("seen-checkpoints.json");
    Ok(
        match crate::audit::verify_model(&model_dir, None, Some(data_dir), &state) {
            Ok(v) => SignatureStatus::Verified {
                signature_sha256: v.signature_sha256,
                ledger_entry: v.ledger_entry,
                files: v.files.len(),
            },
            Err(e) => SignatureStatus::Invalid {
                reason: format!("{e:#}"),
            },
        },
    )
}

fn checkpoint_view(ledger: &LedgerContents) -> Result<CheckpointView> {
    let checkpoint = ledger
        .checkpoint
        .as_ref()
        .context("the ledger has no signed checkpoint yet")?;
    Ok(CheckpointView {
        key_name: checkpoint.key_name.clone(),
        note: checkpoint.note.clone(),
    })
}

/// Which ledger entries the caller may read: an operator all; others the
/// entries of the jobs they may see, and those of no job (the
/// coordinator's key). Of the hospitals' sealed parts of those entries
/// (enrolment counts, update receipts), a hospital reads its own only, as
/// over gRPC; the others stay commitments.
pub struct LedgerScope {
    jobs: Option<BTreeSet<String>>,
    hospital: Option<String>,
}

impl LedgerScope {
    pub fn of(view: &CoordinatorView, claims: &Claims) -> Result<Self> {
        let hospital = (claims.role == DashboardRole::Hospital).then(|| claims.name.clone());
        if claims.role == DashboardRole::Operator {
            return Ok(Self {
                jobs: None,
                hospital,
            });
        }
        Ok(Self {
            jobs: Some(
                view.jobs()?
                    .into_iter()
                    .filter(|row| may_see(claims, row))
                    .map(|row| row.id)
                    .collect(),
            ),
            hospital,
        })
    }

    /// May the caller read the sealed part `opening` opens?
    pub fn may_open(&self, opening: &cohort_ledger::Opening) -> bool {
        self.hospital
            .as_ref()
            .is_none_or(|name| *name == opening.name)
    }

    pub fn allows(&self, entry: &cohort_ledger::Entry) -> bool {
        match (&self.jobs, entry.record.job_id()) {
            (None, _) | (_, None) => true,
            (Some(jobs), Some(job)) => jobs.contains(job),
        }
    }
}

/// `GET /api/ledger`: the entries in `scope`, the checkpoint, and `cohort
/// verify ledger`'s verdict on the whole log (remembering checkpoints in
/// `state`, so that a rewritten history shows here as it would to an
/// auditor).
pub fn ledger(mut ledger: LedgerContents, state: &Path, scope: &LedgerScope) -> Result<LedgerView> {
    ledger.retain_openings(|_, opening| scope.may_open(opening));
    let checkpoint = checkpoint_view(&ledger)?;
    let entries = crate::audit::entries_in(&ledger, None)?
        .into_iter()
        .filter(|(_, entry)| scope.allows(entry))
        .map(|(index, entry)| IndexedEntry { entry, index })
        .collect();
    let (verified, verification_error) = match crate::audit::verify_contents(ledger, state) {
        Ok(report) => (Some(report), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Ok(LedgerView {
        checkpoint,
        verified,
        verification_error,
        entries,
    })
}

/// `GET /api/ledger/{index}/proof`: [`crate::audit::inclusion_proof`], with the
/// checkpoint of the same read.
pub fn proof(ledger: &LedgerContents, index: u64) -> Result<ProofView> {
    Ok(ProofView {
        proof: crate::audit::inclusion_proof_in(&ledger.leaves, index)?,
        checkpoint: checkpoint_view(ledger)?,
    })
}
