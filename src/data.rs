//! `cohort data`: checking a hospital's data source, splitting a file into
//! hospitals' files, a hospital's commitment to its data, and a job's
//! public preprocessing from reference data.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use cohort_datasets::{
    DataSource, DataSpec, LocalDataset, Preprocessing, PublicPreprocessing, QualitySummary,
    SourceReport, SplitOptions, SplitReport,
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

/// `cohort data preprocessing`: a job's `[preprocessing]` table computed
/// from reference data the model developer may publish (its own data, a
/// public cohort), never from a hospital's.
#[derive(Debug, Clone, Serialize)]
pub struct ReferencePreprocessing {
    pub rows: usize,
    pub preprocessing: PublicPreprocessing,
}

pub fn reference_preprocessing(
    reference: &Path,
    job_file: &Path,
) -> Result<ReferencePreprocessing> {
    let text = crate::jobs::read_job_file(job_file)?;
    reference_preprocessing_of(reference, &text)
        .with_context(|| format!("the [data] of {}", job_file.display()))
}

/// [`reference_preprocessing`] for a job given as TOML text.
pub fn reference_preprocessing_of(
    reference: &Path,
    job_toml: &str,
) -> Result<ReferencePreprocessing> {
    let spec = cohort_coordinator::JobSpec::from_toml(job_toml)?;
    reference_preprocessing_for(&DataSource::File(reference.to_path_buf()), &spec.data)
}

/// [`reference_preprocessing`] for a job's `[data]` table.
pub fn reference_preprocessing_for(
    source: &DataSource,
    data: &DataSpec,
) -> Result<ReferencePreprocessing> {
    let table = source.read().with_context(|| format!("reading {source}"))?;
    let dataset = LocalDataset::from_table(&table, data)
        .with_context(|| format!("{source} does not fit the job's [data]"))?;
    let merged = Preprocessing::merge(dataset.schema(), &[dataset.statistics()])
        .with_context(|| format!("the statistics of {source}"))?;
    Ok(ReferencePreprocessing {
        rows: dataset.n_rows(),
        preprocessing: PublicPreprocessing::from_preprocessing(&merged),
    })
}

impl ReferencePreprocessing {
    /// The table as it goes into a job file, a line per column.
    pub fn toml(&self) -> String {
        let key = |name: &str| {
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                name.to_string()
            } else {
                toml::Value::String(name.to_string()).to_string()
            }
        };
        let mut out = format!(
            "# Statistics of {} reference rows; paste into the job file. No hospital\n\
             # then computes or releases any (nor spends privacy budget on them).\n\
             [preprocessing.numeric]\n",
            self.rows
        );
        for (name, column) in &self.preprocessing.numeric {
            let fill = column
                .fill
                .map_or(String::new(), |f| format!(", fill = {f:?}"));
            let _ = writeln!(
                out,
                "{} = {{ mean = {:?}, std = {:?}{fill} }}",
                key(name),
                column.mean,
                column.std
            );
        }
        if !self.preprocessing.categorical.is_empty() {
            out.push_str("[preprocessing.categorical]\n");
            for (name, fill) in &self.preprocessing.categorical {
                let _ = writeln!(out, "{} = {}", key(name), toml::Value::String(fill.clone()));
            }
        }
        out
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
