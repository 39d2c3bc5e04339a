//! `cohort job`: job files and how a job's state reads on a terminal. The
//! calls to the coordinator live in [`crate::developer`].

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::developer::JobView;

/// Reads a job file and checks it the way the coordinator will, so a broken
/// file fails before any connection is made.
pub fn read_job_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    cohort_coordinator::JobSpec::from_toml(&text)
        .with_context(|| format!("{} was not submitted", path.display()))?;
    Ok(text)
}

/// A job's state, rounds, privacy spending and notes, one line each.
pub fn render_status(v: &JobView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} ({}): {}, {}/{} rounds",
        v.job_id, v.name, v.state, v.rounds_completed, v.rounds_total
    );
    if let Some(e) = &v.error {
        let _ = writeln!(out, "error: {e}");
    }
    if !v.participants.is_empty() {
        let _ = writeln!(out, "participants: {}", v.participants.join(", "));
    }
    for r in &v.rounds {
        let traffic = match (r.task_bytes_sent, r.answer_bytes_received) {
            (Some(sent), Some(received)) => format!(
                "  {} sent, {} received",
                indicatif::HumanBytes(sent),
                indicatif::HumanBytes(received)
            ),
            _ => String::new(),
        };
        let _ = match &r.metrics {
            Some(m) => writeln!(
                out,
                "  round {:>3}: {} clients  loss {:.4}  acc {:.4}  auc {:.4}  {:.2}s{traffic}",
                r.round,
                r.participants.len(),
                m.loss,
                m.accuracy,
                m.auc,
                r.duration_secs
            ),
            None => writeln!(
                out,
                "  round {:>3}: {} clients  (no evaluation){traffic}",
                r.round,
                r.participants.len()
            ),
        };
    }
    if !v.dp_epsilon.is_empty() {
        let spent: Vec<String> = v
            .dp_epsilon
            .iter()
            .map(|(name, eps)| format!("{name} {eps:.3}"))
            .collect();
        let _ = writeln!(
            out,
            "privacy spent (epsilon per hospital): {}",
            spent.join(", ")
        );
    }
    for e in &v.events {
        let _ = writeln!(out, "  note {}: {}", e.at, e.message);
    }
    out
}

/// One line per job: id, name, state and progress.
pub fn render_list(jobs: &[JobView]) -> String {
    let mut out = String::new();
    for j in jobs {
        let _ = writeln!(
            out,
            "{}  {:<20} {:<10} {}/{} rounds",
            j.job_id, j.name, j.state, j.rounds_completed, j.rounds_total
        );
    }
    out
}

/// A job given as JSON (a Python dict) as job-file TOML, checked the way the
/// coordinator checks it: an unknown or misspelt key is refused by name.
pub fn job_toml_from_json(json: &str) -> Result<String> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("the job is not valid JSON")?;
    if !value.is_object() {
        anyhow::bail!("a job is a table of sections (name, data, model, training, ...)");
    }
    let text = toml::to_string(&value).context("the job cannot be written as TOML")?;
    cohort_coordinator::JobSpec::from_toml(&text)?;
    Ok(text)
}

/// Checks job-file TOML the way the coordinator will.
pub fn validate_job_toml(text: &str) -> Result<()> {
    cohort_coordinator::JobSpec::from_toml(text)?;
    Ok(())
}
