//! `cohort demo --vertical`: vertical split learning as a deployment runs it.
//! WDBC is split by columns into three site files (the diagnosis at the
//! first), a coordinator and three site clients start on loopback with a
//! throwaway consortium's mutual TLS, and the job
//! `examples/wdbc-vertical.toml` is submitted like any job: the coordinator
//! relays the private set intersection and every batch's activations and
//! gradients. Beside it, the same network trained on the joined columns in
//! one place ([`crate::vertical::run`]) on the same held-out patients.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cohort_coordinator::JobSpec;
use cohort_models::Metrics;
use serde::Serialize;

use crate::developer;
use crate::local::{LocalFederation, LocalHospital};
use crate::vertical::{VerticalOptions, write_wdbc_sites};

/// The vertical job file the demo submits (`examples/wdbc-vertical.toml`).
pub const VERTICAL_JOB: &str = include_str!("../examples/wdbc-vertical.toml");

#[derive(Debug, Clone, Serialize)]
pub struct VerticalJobReport {
    pub job_id: String,
    pub transport: String,
    pub sites: Vec<String>,
    /// The held-out shared patients' metrics of the last round (the label
    /// site's report).
    pub validation: Metrics,
    /// The centralized model on the same held-out patients.
    pub centralized: Metrics,
    /// The job's events: the intersection's size, each round's exchange,
    /// AUC and label leakage.
    pub events: Vec<String>,
    pub defence: Option<f64>,
    pub workdir: PathBuf,
    /// The first layer, as the coordinator stored and signed it.
    pub model_dir: PathBuf,
    /// The label site's client data directory, which keeps the top part
    /// (`cohort evaluate --top-from`).
    pub label_site_data_dir: PathBuf,
    pub seconds: f64,
}

/// Runs the demo; `defence` sets `[vertical] max_norm_defence`.
pub async fn demo(
    workdir: Option<PathBuf>,
    seed: u64,
    defence: Option<f64>,
    progress: bool,
) -> Result<VerticalJobReport> {
    let started = Instant::now();
    let workdir = match workdir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("cohort-vertical-")
            .tempdir()?
            .keep(),
    };
    let files = write_wdbc_sites(&workdir.join("data"), 3, 0.9, seed)?;
    let mut spec = JobSpec::from_toml(VERTICAL_JOB)?;
    spec.training.seed = seed;
    spec.vertical = Some(cohort_coordinator::vertical::VerticalSpec {
        max_norm_defence: defence,
    });
    spec.validate()?;
    let job_toml = toml::to_string(&spec)?;
    let sites: Vec<LocalHospital> = files
        .iter()
        .enumerate()
        .map(|(i, file)| LocalHospital {
            name: format!("site-{}", i + 1),
            data: file.clone(),
            options: Default::default(),
        })
        .collect();
    let federation = LocalFederation::start(&workdir, &sites, true, Duration::from_secs(2)).await?;
    let outcome = async {
        let mut dev = federation.developer().await?;
        let job_id = developer::submit(&mut dev, &job_toml).await?;
        let view = developer::wait(&mut dev, &job_id, progress).await?;
        if view.state != "completed" {
            bail!(
                "vertical demo job {job_id} {}: {}",
                view.state,
                view.error.unwrap_or_default()
            );
        }
        let model_dir = workdir.join("model");
        developer::download_model(&mut dev, &job_id, None, &model_dir).await?;
        Ok((job_id, model_dir, view))
    }
    .await;
    let transport = match &federation.developer {
        cohort_protocol::Security::MutualTls(_) => "mutual TLS",
        cohort_protocol::Security::Insecure => "plaintext",
    };
    federation.shutdown().await;
    let (job_id, model_dir, view) = outcome?;
    let validation = view
        .last_metrics()
        .cloned()
        .context("the vertical job recorded no metrics")?;
    // The centralized model: the in-process run's, over as many epochs as
    // the job trained, on the same shared patients and hold-out.
    let t = &spec.training;
    let centralized = crate::vertical::run(&VerticalOptions {
        epochs: (t.rounds * t.local_epochs) as usize,
        batch_size: t.batch_size as usize,
        optimizer: t.optimizer.clone(),
        validation_fraction: spec.data.validation_fraction,
        seed,
        model: spec.model.clone(),
        ..VerticalOptions::wdbc(files)
    })?
    .centralized;
    let label_site = view
        .participants
        .first()
        .context("the vertical job recorded no sites")?;
    let label_site_data_dir = workdir.join("clients").join(label_site);
    Ok(VerticalJobReport {
        job_id,
        transport: transport.to_string(),
        sites: view.participants.clone(),
        validation,
        centralized,
        events: view.events.into_iter().map(|e| e.message).collect(),
        defence,
        workdir,
        model_dir,
        label_site_data_dir,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The text form of a [`VerticalJobReport`].
pub fn render(r: &VerticalJobReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Vertical split learning over gRPC ({}): job {}, sites {} (the first holds the labels)",
        r.transport,
        r.job_id,
        r.sites.join(", ")
    );
    for e in &r.events {
        let _ = writeln!(out, "  {e}");
    }
    let _ = writeln!(out, "Held-out shared patients: {}", r.validation.examples);
    let _ = writeln!(out, "                      accuracy    ROC AUC    loss");
    let _ = writeln!(
        out,
        "  vertical (Cohort)     {:.4}     {:.4}    {:.4}",
        r.validation.accuracy, r.validation.auc, r.validation.loss
    );
    let _ = writeln!(
        out,
        "  centralized baseline  {:.4}     {:.4}    {:.4}",
        r.centralized.accuracy, r.centralized.auc, r.centralized.loss
    );
    let _ = writeln!(
        out,
        "Model: the first layer (the sites' blocks joined, signed) in {}; the top part never \
         left {} and stays in {} (evaluate there: cohort evaluate --model {} --top-from {} \
         --data FILE)   workdir {}   {:.1} s",
        r.model_dir.display(),
        r.sites
            .first()
            .map(String::as_str)
            .unwrap_or("the label site"),
        r.label_site_data_dir.display(),
        r.model_dir.display(),
        r.label_site_data_dir.display(),
        r.workdir.display(),
        r.seconds
    );
    out
}
