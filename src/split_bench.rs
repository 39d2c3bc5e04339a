//! `cohort bench split`: private set intersection throughput, SplitFed against FedAvg on the
//! bundled data over real gRPC, and vertical split learning epochs with and without the
//! label-leakage defence. Results go in docs/BENCHMARKS.md.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use cohort_datasets::psi;
use serde::Serialize;

use cohort_coordinator::job::Aggregation;

use crate::demo::{self, DemoOptions};
use crate::vertical::{self, VerticalOptions};

#[derive(Debug, Clone, Serialize)]
pub struct PsiBench {
    /// Ids at each of the two sites (half of them shared).
    pub ids_per_site: usize,
    pub threads: usize,
    pub seconds: f64,
    /// Ids of both sites aligned per second.
    pub ids_per_sec: f64,
    /// Hash-to-group and scalar multiplications per second (two per id per site).
    pub point_ops_per_sec: f64,
    pub intersection: usize,
}

/// Two sites of `ids` each, half shared, through the whole protocol on `threads` threads.
pub fn psi_throughput(ids: usize, threads: usize) -> Result<PsiBench> {
    let site = |offset: usize| -> Vec<Option<String>> {
        (offset..offset + ids)
            .map(|i| Some(format!("patient-{i:09}")))
            .collect()
    };
    let sites = [site(0), site(ids / 2)];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .context("building the thread pool")?;
    let started = Instant::now();
    let rows = pool
        .install(|| psi::run_in_process(b"bench", &sites))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(PsiBench {
        ids_per_site: ids,
        threads: threads.max(1),
        seconds,
        ids_per_sec: (2 * ids) as f64 / seconds,
        point_ops_per_sec: (4 * ids) as f64 / seconds,
        intersection: rows[0].len(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundsBench {
    pub mode: String,
    /// How the hospitals' updates (SplitFed: their parts) were summed.
    pub aggregation: String,
    pub rounds: u32,
    pub test_accuracy: f64,
    pub test_auc: f64,
    pub mean_round_secs: f64,
    /// SplitFed only: training samples that crossed the cut per round, and bytes up/down.
    pub samples_per_round: Option<f64>,
    pub samples_per_sec: Option<f64>,
    pub bytes_up_per_round: Option<f64>,
    pub bytes_down_per_round: Option<f64>,
}

/// The demo (3 hospitals, mutual TLS, real gRPC on loopback), federated, SplitFed, then
/// U-shaped SplitFed, under each of `aggregations`.
pub async fn rounds(
    rounds: u32,
    aggregations: &[Aggregation],
    workdir: &Path,
) -> Result<Vec<RoundsBench>> {
    let mut out = Vec::new();
    for &aggregation in aggregations {
        for (splitfed, u_shaped) in [(false, false), (true, false), (true, true)] {
            let mode = match (splitfed, u_shaped) {
                (false, _) => "federated",
                (true, false) => "splitfed",
                (true, true) => "splitfed-u-shaped",
            };
            let dir = workdir.join(format!("{mode}-{}", aggregation.as_str()));
            let report = demo::run(DemoOptions {
                workdir: Some(dir),
                rounds: Some(rounds),
                progress: false,
                splitfed,
                u_shaped,
                secure_aggregation: aggregation == Aggregation::Secagg,
                homomorphic_encryption: aggregation == Aggregation::He,
                ..Default::default()
            })
            .await?;
            out.push(rounds_bench(&report));
        }
    }
    Ok(out)
}

fn rounds_bench(report: &demo::DemoReport) -> RoundsBench {
    let exchanges: Vec<(f64, f64, f64)> = report
        .events
        .iter()
        .filter_map(|e| exchange_sizes(e))
        .collect();
    let per_round = |i: usize| -> Option<f64> {
        (!exchanges.is_empty()).then(|| {
            exchanges.iter().map(|t| [t.0, t.1, t.2][i]).sum::<f64>() / exchanges.len() as f64
        })
    };
    RoundsBench {
        mode: report.mode.clone(),
        aggregation: report.aggregation.clone(),
        rounds: report.rounds,
        test_accuracy: report.test_accuracy,
        test_auc: report.test_auc,
        mean_round_secs: report.mean_round_secs,
        samples_per_round: per_round(0),
        samples_per_sec: per_round(0).map(|s| s / report.mean_round_secs),
        bytes_up_per_round: per_round(1),
        bytes_down_per_round: per_round(2),
    }
}

/// Reads "split exchange of N samples, U bytes ... up, D bytes ... down" from a job event.
fn exchange_sizes(event: &str) -> Option<(f64, f64, f64)> {
    let rest = event.split("split exchange of ").nth(1)?;
    let numbers: Vec<f64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match numbers.as_slice() {
        [samples, up, down, ..] => Some((*samples, *up, *down)),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerticalBench {
    pub defence: Option<f64>,
    pub intersection: usize,
    pub psi_seconds: f64,
    pub seconds_per_epoch: f64,
    pub bytes_per_epoch: u64,
    pub validation_auc: f64,
    pub centralized_auc: f64,
    pub leak_auc: f64,
    pub worst_leak_auc: f64,
}

/// WDBC split by columns into `sites` sites keeping 90% of the rows each, trained without
/// and with the max-norm defence.
pub fn vertical_runs(sites: usize, epochs: usize, workdir: &Path) -> Result<Vec<VerticalBench>> {
    let files = vertical::write_wdbc_sites(workdir, sites, 0.9, 7)?;
    let mut out = Vec::new();
    for defence in [None, Some(1.0)] {
        let report = vertical::run(&VerticalOptions {
            epochs,
            defence,
            ..VerticalOptions::wdbc(files.clone())
        })?;
        out.push(VerticalBench {
            defence,
            intersection: report.intersection,
            psi_seconds: report.psi_seconds,
            seconds_per_epoch: report.seconds_per_epoch,
            bytes_per_epoch: report.bytes_per_epoch,
            validation_auc: report.validation.auc,
            centralized_auc: report.centralized.auc,
            leak_auc: report.leak_auc,
            worst_leak_auc: report.worst_leak_auc,
        });
    }
    Ok(out)
}

/// Everything `cohort bench split` measures, printed as a table or JSON lines.
pub async fn run_all(
    psi_ids: &[usize],
    threads: &[usize],
    rounds_count: u32,
    aggregations: &[Aggregation],
    vertical_epochs: usize,
    json: bool,
) -> Result<()> {
    let workdir = tempfile::Builder::new()
        .prefix("cohort-bench-split-")
        .tempdir()?;
    if !json {
        println!(
            "PSI (2 sites, half shared)\n    ids/site  threads  seconds   ids/s   point ops/s"
        );
    }
    for &ids in psi_ids {
        for &t in threads {
            eprintln!("PSI: {ids} ids per site on {t} thread(s) ...");
            let r = psi_throughput(ids, t)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{:>12}  {:>7}  {:>7.2}  {:>7.0}  {:>12.0}",
                    r.ids_per_site, r.threads, r.seconds, r.ids_per_sec, r.point_ops_per_sec
                );
            }
        }
    }
    eprintln!("FedAvg and SplitFed, {rounds_count} rounds each ...");
    let rounds = rounds(rounds_count, aggregations, workdir.path()).await?;
    if !json {
        println!(
            "\nWDBC, 3 hospitals, mutual TLS on loopback\n    mode               aggregation  rounds  accuracy  AUC     s/round  samples/s  bytes up/round  bytes down/round"
        );
    }
    for r in &rounds {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            println!(
                "    {:<17}  {:<11}  {:>6}  {:>8.4}  {:.4}  {:>7.3}  {:>9}  {:>14}  {:>16}",
                r.mode,
                r.aggregation,
                r.rounds,
                r.test_accuracy,
                r.test_auc,
                r.mean_round_secs,
                opt(r.samples_per_sec),
                opt(r.bytes_up_per_round),
                opt(r.bytes_down_per_round)
            );
        }
    }
    eprintln!(
        "vertical split learning, 3 sites, {vertical_epochs} epochs, without and with the defence ..."
    );
    let vertical = vertical_runs(3, vertical_epochs, &workdir.path().join("vertical"))?;
    if !json {
        println!(
            "\nVertical, WDBC over 3 sites\n    defence       shared  PSI s  s/epoch  bytes/epoch  val AUC  centralized AUC  leak AUC mean/worst"
        );
    }
    for v in &vertical {
        if json {
            println!("{}", serde_json::to_string(v)?);
        } else {
            println!(
                "    {:<12}  {:>6}  {:>5.2}  {:>7.3}  {:>11}  {:.4}   {:.4}           {:.3} / {:.3}",
                v.defence
                    .map_or("none".to_string(), |s| format!("max-norm {s}")),
                v.intersection,
                v.psi_seconds,
                v.seconds_per_epoch,
                v.bytes_per_epoch,
                v.validation_auc,
                v.centralized_auc,
                v.leak_auc,
                v.worst_leak_auc
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn exchange_sizes_read_the_runner_event() {
        let event = "round 3: split exchange of 822 samples, 55896 bytes of activations and \
                     labels up, 52608 bytes of gradients down";
        assert_eq!(
            super::exchange_sizes(event),
            Some((822.0, 55896.0, 52608.0))
        );
        assert_eq!(super::exchange_sizes("round 3: retrying"), None);
    }
}
