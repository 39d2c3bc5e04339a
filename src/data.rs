//! `cohort data`: checking a hospital's data source, splitting a file into
//! hospitals' files, and a hospital's commitment to its data.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use cohort_datasets::{
    DataSource, LocalDataset, QualitySummary, SourceReport, SplitOptions, SplitReport,
};
use serde::Serialize;

/// `cohort data check --json`: what a client would read from its source,
/// in counts only (no value or row leaves the check either), and whether
/// it fits a job's `[data]` section.
#[derive(Debug, Clone, Serialize)]
pub struct SourceCheck {
    /// The source, with a database password hidden.
    pub source: String,
    pub columns: Vec<String>,
    pub quality: QualitySummary,
    pub reader: SourceReport,
    /// With `--job`: the job's view of the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobFit>,
}

/// A table that passed a job's `[data]` validation.
#[derive(Debug, Clone, Serialize)]
pub struct JobFit {
    pub job: String,
    pub rows: usize,
    pub positives: usize,
    pub features: Vec<String>,
}

/// Reads `source` as `cohort client` would and, with `job_file`, validates
/// every used cell against that job's `[data]` section. A table that does
/// not fit is an error naming the column and row.
pub fn check(source: &DataSource, job_file: Option<&Path>) -> Result<SourceCheck> {
    let (table, reader) = source
        .read_reported()
        .with_context(|| format!("reading {source}"))?;
    let job = match job_file {
        Some(path) => {
            let text = crate::jobs::read_job_file(path)?;
            let spec = cohort_coordinator::JobSpec::from_toml(&text)?;
            let dataset = LocalDataset::from_table(&table, &spec.data).with_context(|| {
                format!("{source} does not fit the [data] of {}", path.display())
            })?;
            Some(JobFit {
                job: spec.name,
                rows: dataset.n_rows(),
                positives: dataset.positives(),
                features: dataset.schema().feature_names(),
            })
        }
        None => None,
    };
    Ok(SourceCheck {
        source: source.to_string(),
        columns: table.columns(),
        quality: table.quality(),
        reader,
        job,
    })
}

impl SourceCheck {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} rows, {} columns",
            self.source,
            self.quality.rows,
            self.columns.len()
        );
        if let SourceReport::Fhir(fhir) = &self.reader {
            let _ = writeln!(
                out,
                "FHIR export: {} files, {} resources, {} patients, {} resources used, \
                 {} referring to no Patient in the export",
                fhir.files, fhir.resources, fhir.patients, fhir.used, fhir.unlinked
            );
            for (kind, count) in &fhir.ignored {
                let _ = writeln!(out, "  ignored (not in the mapping): {count} {kind}");
            }
        }
        for column in &self.quality.columns {
            if column.missing > 0 {
                let _ = writeln!(
                    out,
                    "  {}: {} missing ({:.1} % complete)",
                    column.name,
                    column.missing,
                    100.0 * column.completeness
                );
            }
        }
        if self.quality.duplicate_rows > 0 {
            let _ = writeln!(out, "  {} duplicate rows", self.quality.duplicate_rows);
        }
        if !self.quality.constant_columns.is_empty() {
            let _ = writeln!(
                out,
                "  constant columns: {}",
                self.quality.constant_columns.join(", ")
            );
        }
        if let Some(job) = &self.job {
            let _ = writeln!(
                out,
                "fits job `{}`: {} rows ({} positive), {} features",
                job.job,
                job.rows,
                job.positives,
                job.features.len()
            );
        }
        out
    }
}

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
