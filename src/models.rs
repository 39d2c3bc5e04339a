//! `cohort model`: downloading a job's model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cohort_models::Metrics;
use serde::Serialize;

use crate::developer::{self, Developer};

/// A model saved to disk, as `cohort model get --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadedModel {
    pub dir: PathBuf,
    pub job_id: String,
    pub metrics: Option<Metrics>,
    pub parameters_sha256: String,
    pub round: u32,
    /// A vertical job's model: the first layer only; the label site kept
    /// the top part (its name and the top's digest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_top: Option<cohort_models::KeptTop>,
}

impl DownloadedModel {
    pub fn summary(&self) -> String {
        let mut out = format!(
            "model of {} round {} saved to {}",
            self.job_id,
            self.round,
            self.dir.display()
        );
        if let Some(top) = &self.kept_top {
            out.push_str(&format!(
                "\nthe first layer of a vertical model: its top part (SHA-256 {}) stays at the \
                 label site {}; evaluate it there with `cohort evaluate --model {} --top-from \
                 ITS_DATA_DIR --data FILE`",
                top.sha256,
                top.site,
                self.dir.display()
            ));
        }
        out
    }
}

/// Downloads a job's model (latest round, or `round`) into `out`.
pub async fn get(
    dev: &mut Developer,
    job_id: &str,
    round: Option<u32>,
    out: &Path,
) -> Result<DownloadedModel> {
    let card = developer::download_model(dev, job_id, round, out).await?;
    Ok(DownloadedModel {
        dir: out.to_path_buf(),
        job_id: card.job_id,
        metrics: card.metrics,
        parameters_sha256: card.parameters_sha256,
        round: card.round,
        kept_top: card.kept_top,
    })
}

/// The model formats `cohort model export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// ONNX (IR 8, opset 13): preprocessed features in, probability out.
    Onnx,
}

/// `cohort model export --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedModel {
    pub bytes: u64,
    pub format: ExportFormat,
    pub input: &'static str,
    pub output: &'static str,
    pub path: PathBuf,
}

impl ExportedModel {
    pub fn summary(&self) -> String {
        format!(
            "{} written ({} bytes; input `{}`: preprocessed features, output `{}`)",
            self.path.display(),
            self.bytes,
            self.input,
            self.output
        )
    }
}

/// Writes the model in `model_dir` as an ONNX file at `out`.
pub fn export_onnx(model_dir: &Path, out: &Path) -> Result<()> {
    export(model_dir, ExportFormat::Onnx, out).map(|_| ())
}

/// Writes the model in `model_dir` in `format` at `out`.
pub fn export(model_dir: &Path, format: ExportFormat, out: &Path) -> Result<ExportedModel> {
    let (card, params) = cohort_models::load_model(model_dir)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let bytes = match format {
        ExportFormat::Onnx => cohort_models::to_onnx(&card, &params)?,
    };
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(ExportedModel {
        bytes: bytes.len() as u64,
        format,
        input: cohort_models::ONNX_INPUT,
        output: cohort_models::ONNX_OUTPUT,
        path: out.to_path_buf(),
    })
}
