//! `cohort data`: splitting a file into hospitals' files, and a hospital's
//! commitment to its data.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use cohort_datasets::{SplitOptions, SplitReport};
use serde::Serialize;

/// `cohort data commitment --json`.
#[derive(Debug, Clone, Serialize)]
pub struct DataCommitment {
    pub dataset_sha256: String,
    pub rows: usize,
}

/// The commitment the hospital's client sent for `data` in the job that
/// produced the model in `model_dir`.
pub fn commitment(model_dir: &Path, data: &Path) -> Result<DataCommitment> {
    let (dataset_sha256, rows) = crate::evaluate::dataset_commitment(model_dir, data)?;
    Ok(DataCommitment {
        dataset_sha256,
        rows,
    })
}

impl DataCommitment {
    pub fn summary(&self) -> String {
        format!("{}  ({} rows)", self.dataset_sha256, self.rows)
    }
}

pub fn split(input: &Path, out: &Path, options: &SplitOptions) -> Result<SplitReport> {
    Ok(cohort_datasets::split_file(input, out, options)?)
}

/// One line per file written: path, rows, label counts.
pub fn render_split(report: &SplitReport) -> String {
    let mut out = String::new();
    for p in report.parts.iter().chain(report.test.iter()) {
        let _ = writeln!(
            out,
            "{}  {} rows  {:?}",
            p.file.display(),
            p.rows,
            p.label_counts
        );
    }
    out
}
