//! `cohort simulate`: many virtual hospitals in this process against the
//! real coordinator, for algorithm research at scale.
//!
//! The data file is dealt to `--clients` hospitals (IID, or label skew
//! drawn from Dirichlet(α)); a coordinator and one client per hospital then
//! run in this process over loopback gRPC without TLS
//! ([`crate::local::LocalFederation`]): every task, update and answer
//! crosses a real socket through the same code a deployment runs, only the
//! certificates are left out. The job is submitted and followed through
//! the developer API like any other. Each completed round is reported with
//! its wall time, metrics and this process's resident memory, so that a
//! long run shows whether memory stays flat.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cohort_datasets::{PartitionScheme, SplitOptions};
use serde::Serialize;

use crate::developer;
use crate::local::{LocalFederation, LocalHospital};

/// How the data file is dealt to the virtual hospitals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partition {
    Iid,
    Dirichlet { alpha: f64 },
}

pub struct SimulateOptions {
    pub job: PathBuf,
    pub clients: usize,
    pub data: PathBuf,
    pub partition: Partition,
    pub seed: u64,
    /// Where the hospitals' files and the coordinator's state go; a new
    /// temporary directory (removed afterwards) when `None`.
    pub workdir: Option<PathBuf>,
}

/// One completed round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundLine {
    pub round: u32,
    pub round_s: f64,
    pub participants: usize,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub auc: Option<f64>,
    /// Resident memory of this process (coordinator and every hospital)
    /// when the round was seen completed, MiB.
    pub rss_mb: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job_id: String,
    pub state: String,
    pub error: Option<String>,
    pub clients: usize,
    pub rounds: u32,
    /// From submission until the hospitals were enrolled: their data
    /// checked and the preprocessing built (under secagg or he, from
    /// three secure sums).
    pub preparation_s: f64,
    pub median_round_s: f64,
    /// Resident memory after rounds 10, 100 and 1,000 (those reached).
    pub rss_mb_at_round: BTreeMap<u32, f64>,
    pub peak_rss_mb: f64,
}

/// Runs the job on `clients` virtual hospitals; `each_round` sees every
/// completed round as soon as it is recorded.
pub async fn simulate(
    o: &SimulateOptions,
    mut each_round: impl FnMut(&RoundLine),
) -> Result<Summary> {
    let job_toml = std::fs::read_to_string(&o.job)
        .with_context(|| format!("reading the job file {}", o.job.display()))?;
    let spec = cohort_coordinator::JobSpec::from_toml(&job_toml)
        .with_context(|| format!("job file {}", o.job.display()))?;
    if o.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let needed = spec
        .training
        .min_clients
        .max(spec.training.clients_per_round) as usize;
    if needed > o.clients {
        bail!(
            "the job needs {needed} hospitals a round (training.min_clients / clients_per_round) \
             but --clients is {}",
            o.clients
        );
    }
    if let Partition::Dirichlet { alpha } = o.partition
        && !(alpha.is_finite() && alpha > 0.0)
    {
        bail!("--alpha must be a positive number, got {alpha}");
    }
    let temporary;
    let workdir: &Path = match &o.workdir {
        Some(dir) => dir,
        None => {
            temporary = tempfile::Builder::new()
                .prefix("cohort-simulate-")
                .tempdir()?;
            temporary.path()
        }
    };
    let split = cohort_datasets::split_file(
        &o.data,
        &workdir.join("hospitals"),
        &SplitOptions {
            parts: o.clients,
            label: Some(spec.data.label.clone()),
            scheme: match o.partition {
                Partition::Iid => PartitionScheme::Iid,
                Partition::Dirichlet { alpha } => PartitionScheme::Dirichlet { alpha },
            },
            test_fraction: 0.0,
            seed: o.seed,
        },
    )
    .with_context(|| format!("dealing {} to {} hospitals", o.data.display(), o.clients))?;
    if let Some(empty) = split.parts.iter().position(|p| p.rows == 0) {
        bail!(
            "hospital {empty} would get no rows: {} has too few for {} hospitals",
            o.data.display(),
            o.clients
        );
    }
    let width = (o.clients - 1).to_string().len();
    let hospitals: Vec<LocalHospital> = split
        .parts
        .iter()
        .enumerate()
        .map(|(i, part)| LocalHospital {
            name: format!("sim-{i:0width$}"),
            data: part.file.clone(),
            options: Default::default(),
        })
        .collect();
    crate::bench::reset_peak_rss();
    let federation =
        LocalFederation::start(workdir, &hospitals, false, Duration::from_secs(1)).await?;
    let run = follow(&federation, &job_toml, o.clients, &mut each_round).await;
    federation.shutdown().await;
    run
}

async fn follow(
    federation: &LocalFederation,
    job_toml: &str,
    clients: usize,
    each_round: &mut impl FnMut(&RoundLine),
) -> Result<Summary> {
    let mut dev = federation.developer().await?;
    let submitted = std::time::Instant::now();
    let job_id = developer::submit(&mut dev, job_toml).await?;
    let mut preparation_s = None;
    let mut last_round = 0u32;
    let mut times = Vec::new();
    let mut rss_at = BTreeMap::new();
    loop {
        // Only what is new: a full status of a 1,000-hospital job outgrows
        // a gRPC message after a few dozen rounds.
        let view = developer::status_after(&mut dev, &job_id, last_round, u32::MAX).await?;
        if preparation_s.is_none() && !view.participants.is_empty() {
            preparation_s = Some(submitted.elapsed().as_secs_f64());
        }
        for round in &view.rounds {
            let rss_mb = crate::bench::rss_mib();
            let line = RoundLine {
                round: round.round,
                round_s: round.duration_secs,
                participants: round.participants.len(),
                loss: round.metrics.as_ref().map(|m| m.loss),
                accuracy: round.metrics.as_ref().map(|m| m.accuracy),
                auc: round.metrics.as_ref().map(|m| m.auc),
                rss_mb,
            };
            if [10, 100, 1000].contains(&round.round) {
                rss_at.insert(round.round, rss_mb);
            }
            times.push(round.duration_secs);
            last_round = round.round;
            each_round(&line);
        }
        if view.is_finished() {
            return Ok(Summary {
                job_id,
                state: view.state,
                error: view.error,
                clients,
                rounds: view.rounds_completed,
                preparation_s: preparation_s.unwrap_or(f64::NAN),
                median_round_s: crate::bench::median(&times),
                rss_mb_at_round: rss_at,
                peak_rss_mb: crate::bench::peak_rss_mib(),
            });
        }
        // Finely until enrolment, to time the preparation.
        let poll = if preparation_s.is_none() { 10 } else { 100 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
    }
}

/// A round as a status line.
pub fn round_text(line: &RoundLine) -> String {
    let metric = |m: Option<f64>| m.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    format!(
        "round {:>5}  {:>8.3} s  {:>5} hospitals  loss {}  acc {}  auc {}  rss {:.0} MiB",
        line.round,
        line.round_s,
        line.participants,
        metric(line.loss),
        metric(line.accuracy),
        metric(line.auc),
        line.rss_mb
    )
}

/// The run's outcome as text.
pub fn summary_text(s: &Summary) -> String {
    let at: Vec<String> = s
        .rss_mb_at_round
        .iter()
        .map(|(round, mb)| format!("{mb:.0} MiB after round {round}"))
        .collect();
    // A job that failed before its first round has no times to show.
    let seconds = |s: f64| {
        if s.is_finite() {
            format!("{s:.3} s")
        } else {
            "-".to_string()
        }
    };
    format!(
        "job {} {} on {} virtual hospitals: preparation {}, {} rounds, median {} a round; peak {:.0} MiB{}{}",
        s.job_id,
        s.state,
        s.clients,
        seconds(s.preparation_s),
        s.rounds,
        seconds(s.median_round_s),
        s.peak_rss_mb,
        if at.is_empty() {
            String::new()
        } else {
            format!(" ({})", at.join(", "))
        },
        s.error
            .as_ref()
            .map(|e| format!("\nerror: {e}"))
            .unwrap_or_default()
    )
}
