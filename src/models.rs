//! `cohort model`: downloading a job's model.

use std::path::{Path, PathBuf};

use anyhow::Result;
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
}

impl DownloadedModel {
    pub fn summary(&self) -> String {
        format!(
            "model of {} round {} saved to {}",
            self.job_id,
            self.round,
            self.dir.display()
        )
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
    })
}
