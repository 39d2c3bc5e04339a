//! `cohort bench load`: developer API latency under load, and what that
//! load does to the rounds running beside it. The same job runs twice on
//! the same federation of hospitals (in this process, over loopback gRPC):
//! once alone, and once while `callers` developers each send status,
//! list and model-download calls back to back until it finishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use super::{every_hospital_job, iid_hospitals, median};
use crate::developer;
use crate::local::LocalFederation;

/// What `cohort bench load` runs (its flags).
#[derive(Debug, Clone, Serialize)]
pub struct LoadOptions {
    pub clients: usize,
    pub callers: usize,
    pub rounds: u32,
    /// The job's hidden-layer width and local epochs.
    pub hidden: usize,
    pub local_epochs: u32,
    /// The coordinator's `--developer-share`.
    pub developer_share: f64,
    /// Pairs of jobs run (one alone, then one under load, back to back).
    pub repeats: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadBench {
    #[serde(flatten)]
    pub options: LoadOptions,
    /// Each pair's median loaded round over its median round alone, minus
    /// one: the spread behind `round_slowdown`.
    pub pair_slowdowns: Vec<f64>,
    pub median_round_secs_alone: f64,
    pub median_round_secs_loaded: f64,
    /// The median of every loaded round over the median of every round
    /// alone, minus one.
    pub round_slowdown: f64,
    pub calls: Vec<CallLatency>,
}

/// One kind of developer call under load.
#[derive(Debug, Clone, Serialize)]
pub struct CallLatency {
    pub call: String,
    pub count: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first error, if any (its text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl LoadBench {
    /// The report as `cohort bench load` prints it without `--json`.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{} hospitals, {} rounds, hidden layer {}, {} local epochs, developer share {}: median round {:.3} s alone, {:.3} s under {} callers ({:+.1} %)\n\
             call     calls  errors   p50 ms   p99 ms   max ms\n",
            self.options.clients,
            self.options.rounds,
            self.options.hidden,
            self.options.local_epochs,
            self.options.developer_share,
            self.median_round_secs_alone,
            self.median_round_secs_loaded,
            self.options.callers,
            100.0 * self.round_slowdown
        );
        if self.pair_slowdowns.len() > 1 {
            let pairs: Vec<String> = self
                .pair_slowdowns
                .iter()
                .map(|s| format!("{:+.1} %", 100.0 * s))
                .collect();
            text = format!(
                "{text}pairs ({} alone then loaded, back to back): {}\n",
                self.options.repeats,
                pairs.join(", ")
            );
        }
        for c in &self.calls {
            text += &format!(
                "{:<7} {:>6} {:>7} {:>8.2} {:>8.2} {:>8.2}\n",
                c.call, c.count, c.errors, c.p50_ms, c.p99_ms, c.max_ms
            );
        }
        if let Some(e) = self.calls.iter().find_map(|c| c.first_error.as_ref()) {
            text += &format!("first error: {e}\n");
        }
        text
    }
}

const CALLS: [&str; 3] = ["status", "list", "model"];

/// `clients` hospitals, `rounds` rounds, `callers` concurrent developers,
/// each on its own connection (plaintext, so that the coordinator's
/// per-member call cap, which under mutual TLS would group them all under
/// the one developer certificate, does not refuse them).
pub async fn load(options: LoadOptions) -> Result<LoadBench> {
    let LoadOptions {
        clients,
        callers,
        rounds,
        hidden,
        local_epochs,
        developer_share,
        repeats,
    } = options;
    if repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    if clients < 2 || [callers, rounds as usize, hidden, local_epochs as usize].contains(&0) {
        bail!(
            "--clients must be at least 2, --callers, --rounds, --hidden and --local-epochs at least 1"
        );
    }
    cohort_coordinator::limits::DeveloperShare::check(developer_share)?;
    let dir = tempfile::Builder::new()
        .prefix("cohort-bench-load-")
        .tempdir()?;
    let hospitals = iid_hospitals(dir.path(), clients)?;
    let job = every_hospital_job(clients, hidden, rounds).replace(
        "local_epochs = 1",
        &format!("local_epochs = {local_epochs}"),
    );
    let federation = LocalFederation::start_configured(
        dir.path(),
        &hospitals,
        false,
        Duration::from_secs(5),
        |config| config.developer_share = developer_share,
    )
    .await?;
    let outcome = measure(&federation, &job, callers, repeats, dir.path()).await;
    federation.shutdown().await;
    let Measured { pairs, latencies } = outcome?;
    let alone: Vec<f64> = pairs.iter().flat_map(|p| p.0.iter().copied()).collect();
    let loaded: Vec<f64> = pairs.iter().flat_map(|p| p.1.iter().copied()).collect();
    let (a, b) = (median(&alone), median(&loaded));
    let pair_slowdowns = pairs
        .iter()
        .map(|(alone, loaded)| median(loaded) / median(alone) - 1.0)
        .collect();
    let calls = CALLS
        .iter()
        .zip(latencies)
        .map(|(name, (mut ms, errors))| {
            ms.sort_by(f64::total_cmp);
            let at = |q: f64| {
                ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            CallLatency {
                call: name.to_string(),
                count: ms.len() + errors.len(),
                errors: errors.len(),
                p50_ms: at(0.5),
                p99_ms: at(0.99),
                max_ms: ms.last().copied().unwrap_or(f64::NAN),
                first_error: errors.into_iter().next(),
            }
        })
        .collect();
    Ok(LoadBench {
        options,
        pair_slowdowns,
        median_round_secs_alone: a,
        median_round_secs_loaded: b,
        round_slowdown: b / a - 1.0,
        calls,
    })
}

/// Per call kind: the latencies (ms) of the calls that succeeded and the
/// errors of those that did not.
type Latencies = Vec<(Vec<f64>, Vec<String>)>;

/// Round times of the jobs alone and under load, pair by pair (the two
/// jobs of a pair run back to back, so that both meet the machine in the
/// same state), and the calls' latencies over all loaded jobs.
struct Measured {
    pairs: Vec<(Vec<f64>, Vec<f64>)>,
    latencies: Latencies,
}

async fn measure(
    federation: &LocalFederation,
    job: &str,
    callers: usize,
    repeats: u32,
    dir: &std::path::Path,
) -> Result<Measured> {
    let mut dev = federation.developer().await?;
    let mut pairs = Vec::new();
    let mut latencies: Latencies = vec![(Vec::new(), Vec::new()); CALLS.len()];
    for pair in 1..=repeats {
        eprintln!("pair {pair}/{repeats}: job alone ...");
        let alone_id = developer::submit(&mut dev, job).await?;
        let alone = finished(developer::wait(&mut dev, &alone_id, false).await?)?;
        eprintln!("pair {pair}/{repeats}: job under {callers} concurrent developer callers ...");
        let (loaded, calls) =
            under_load(federation, &mut dev, job, &alone_id, callers, dir).await?;
        for (all, these) in latencies.iter_mut().zip(calls) {
            all.0.extend(these.0);
            all.1.extend(these.1);
        }
        pairs.push((alone, loaded));
    }
    Ok(Measured { pairs, latencies })
}

/// Runs `job` while `callers` developers call the coordinator back to back
/// (model downloads from `model_job`, which has finished); its round times
/// and the calls' latencies.
async fn under_load(
    federation: &LocalFederation,
    dev: &mut developer::Developer,
    job: &str,
    model_job: &str,
    callers: usize,
    dir: &std::path::Path,
) -> Result<(Vec<f64>, Latencies)> {
    let alone_id = model_job.to_string();
    let loaded_id = developer::submit(dev, job).await?;
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let mut dev = federation.developer().await?;
        let done = done.clone();
        // Model downloads read the job that already finished: the loaded
        // one has no model until its first round.
        let (status_job, model_job) = (loaded_id.clone(), alone_id.clone());
        let out = dir.join(format!("caller-{caller}"));
        tasks.push(tokio::spawn(async move {
            let mut latencies: Latencies = vec![(Vec::new(), Vec::new()); CALLS.len()];
            let mut turn = caller;
            while !done.load(Ordering::Relaxed) {
                let kind = turn % CALLS.len();
                turn += 1;
                let started = Instant::now();
                let result = match kind {
                    0 => developer::status(&mut dev, &status_job).await.map(drop),
                    1 => developer::list(&mut dev).await.map(drop),
                    _ => developer::download_model(&mut dev, &model_job, None, &out)
                        .await
                        .map(drop),
                };
                let ms = started.elapsed().as_secs_f64() * 1e3;
                match result {
                    Ok(()) => latencies[kind].0.push(ms),
                    Err(e) => latencies[kind].1.push(format!("{e:#}")),
                }
            }
            latencies
        }));
    }
    let loaded = developer::wait(dev, &loaded_id, false).await;
    done.store(true, Ordering::Relaxed);
    let mut merged: Latencies = vec![(Vec::new(), Vec::new()); CALLS.len()];
    for task in tasks {
        for (all, mine) in merged.iter_mut().zip(task.await?) {
            all.0.extend(mine.0);
            all.1.extend(mine.1);
        }
    }
    Ok((finished(loaded?)?, merged))
}

/// The round wall times of a job that completed.
fn finished(view: developer::JobView) -> Result<Vec<f64>> {
    if view.state != "completed" {
        bail!(
            "benchmark job {}: {}",
            view.state,
            view.error.unwrap_or_default()
        );
    }
    Ok(view.rounds.iter().map(|r| r.duration_secs).collect())
}
