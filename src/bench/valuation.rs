//! `cohort bench valuation`: sampled and partition valuation against exact
//! Shapley on the same federation (rank correlation, mean absolute error,
//! candidate models scored), and what valuation adds to a round's wall
//! time. Jobs run in this process over loopback gRPC, each hospital
//! scoring candidates on its own validation split.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cohort_datasets::{PartitionScheme, SplitOptions};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::{median, process_cpu_seconds};
use crate::developer;
use crate::local::{LocalFederation, LocalHospital};
use cohort_coordinator::valuation::{PERMUTATION, STRATIFIED};

#[derive(Debug, Clone, Serialize)]
pub struct ValuationBench {
    pub hospitals: usize,
    pub shuffled_label_hospitals: Vec<String>,
    pub rounds: u32,
    /// Mean per-round value of each hospital under exact Shapley.
    pub exact: BTreeMap<String, f64>,
    pub exact_evaluations_per_round: f64,
    pub methods: Vec<MethodAccuracy>,
    pub overhead: Option<Overhead>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MethodAccuracy {
    pub method: String,
    pub aggregation: String,
    pub values: BTreeMap<String, f64>,
    /// Partition valuation: the mean over its groupings.
    pub spearman: f64,
    pub mean_absolute_error: f64,
    pub evaluations_per_round: f64,
    /// Partition valuation: Spearman of each grouping's job (the first
    /// one's values are `values`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spearman_per_grouping: Vec<f64>,
}

/// One partition-valuation job's accuracy against exact Shapley.
struct GroupingAccuracy {
    values: BTreeMap<String, f64>,
    spearman: f64,
    mae: f64,
    evaluations: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub hospitals: usize,
    /// Rows of the data dealt to the hospitals (the bundled WDBC unless
    /// `--overhead-data` named a file).
    pub data_rows: usize,
    pub rounds: u32,
    /// Jobs run each way, alternating without and with valuation so that
    /// a change in the machine's load falls on both.
    pub jobs_each: u32,
    pub method: String,
    pub evaluations_per_round: f64,
    pub median_round_secs_without: f64,
    /// The slowest hospital's evaluation task per round (with valuation it
    /// scores the candidate models too), median over the rounds.
    pub median_evaluate_secs_without: f64,
    pub median_evaluate_secs_with: f64,
    pub median_round_secs_with: f64,
    /// (with − without) / without.
    pub added_fraction: f64,
    /// CPU seconds this process (coordinator and every hospital) spent per
    /// round, over whole jobs: unlike wall time, hardly moved by other
    /// load on the machine.
    pub cpu_secs_per_round_without: f64,
    pub cpu_secs_per_round_with: f64,
    /// (with − without) / without, in CPU time.
    pub added_cpu_fraction: f64,
}

/// Splits WDBC into `hospitals` parts (Dirichlet α = 1, so sizes and label
/// mixes differ) and shuffles the labels of every fourth part.
fn hospitals(dir: &std::path::Path, n: usize) -> Result<(Vec<LocalHospital>, Vec<String>)> {
    hospitals_from(crate::WDBC_CSV, dir, n)
}

/// `n` hospitals holding Dirichlet(1) parts of `csv` (WDBC's columns), every
/// fourth with its labels shuffled.
fn hospitals_from(
    csv: &[u8],
    dir: &std::path::Path,
    n: usize,
) -> Result<(Vec<LocalHospital>, Vec<String>)> {
    let split = cohort_datasets::split_bytes(
        csv,
        &dir.join("data"),
        &SplitOptions {
            parts: n,
            label: Some("diagnosis".into()),
            scheme: PartitionScheme::Dirichlet { alpha: 1.0 },
            test_fraction: 0.0,
            seed: 11,
        },
    )?;
    let mut shuffled = Vec::new();
    let mut out = Vec::new();
    for (i, part) in split.parts.iter().enumerate() {
        let name = format!("bench-{i:02}");
        if i % 4 == 3 {
            shuffle_labels(&part.file, "diagnosis", i as u64)?;
            shuffled.push(name.clone());
        }
        out.push(LocalHospital {
            name,
            data: part.file.clone(),
            options: Default::default(),
        });
    }
    Ok((out, shuffled))
}

fn shuffle_labels(file: &std::path::Path, label: &str, seed: u64) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().to_string();
    let Some(column) = header.split(',').position(|c| c == label) else {
        bail!("{} has no column {label}", file.display());
    };
    let mut rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let mut labels: Vec<String> = rows.iter().map(|r| r[column].clone()).collect();
    labels.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    for (row, l) in rows.iter_mut().zip(labels) {
        row[column] = l;
    }
    let mut text = header + "\n";
    for row in rows {
        text += &(row.join(",") + "\n");
    }
    std::fs::write(file, text)?;
    Ok(())
}

/// The accuracy comparison's job: the demo job with one hidden layer of 16
/// and one local epoch, so that exact Shapley's 2^n candidates stay cheap.
fn job(n: usize, rounds: u32, extra: &str) -> String {
    demo_job(n, rounds, extra)
        .replace("hidden = [32, 16]", "hidden = [16]")
        .replace("local_epochs = 2", "local_epochs = 1")
}

/// The demo job (`cohort demo`) on `n` hospitals, all of them every round:
/// the overhead measurement's job, as a user would run it.
fn demo_job(n: usize, rounds: u32, extra: &str) -> String {
    crate::DEMO_JOB
        .replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace("min_clients = 3", &format!("min_clients = {n}"))
        .replace("clients_per_round = 3", &format!("clients_per_round = {n}"))
        .replace("round_timeout_secs = 120", "round_timeout_secs = 600")
        + extra
}

/// Runs a job to completion; returns its id and per-round wall times.
/// The job's id and, per round, its wall time and its slowest evaluation.
async fn run(federation: &LocalFederation, job: &str) -> Result<(String, Vec<(f64, f64)>)> {
    let mut dev = federation.developer().await?;
    let id = developer::submit(&mut dev, job).await?;
    let view = developer::wait(&mut dev, &id, false).await?;
    if view.state != "completed" {
        bail!(
            "benchmark job {}: {}",
            view.state,
            view.error.unwrap_or_default()
        );
    }
    Ok((
        id,
        view.rounds
            .iter()
            .map(|r| (r.duration_secs, r.slowest_evaluate_secs))
            .collect(),
    ))
}

/// Per hospital: its mean per-round value (plain methods), or its latest
/// least-squares share (partition: fitted over every round) times the
/// job's mean total utility per round; and the mean number of candidates
/// scored per round.
fn values(
    data_dir: &std::path::Path,
    job: &str,
    latest: bool,
) -> Result<(BTreeMap<String, f64>, f64)> {
    let contents = crate::audit::read_ledger(data_dir)?;
    let report = crate::rewards::show(&contents, Some(job))?;
    let rounds = report.rounds.len().max(1) as f64;
    let evaluations = report
        .rounds
        .iter()
        .map(|r| r.utility_evaluations as f64)
        .sum::<f64>()
        / rounds;
    let values = if latest {
        // The last round's values are shares of that round's total; scaled
        // to the job's mean total they estimate each hospital's mean
        // value per round, the quantity exact Shapley's are compared by.
        let totals: Vec<f64> = report
            .rounds
            .iter()
            .map(|r| r.hospitals.iter().map(|h| h.value).sum())
            .collect();
        let mean_total = totals.iter().sum::<f64>() / rounds;
        let last_total = totals.last().copied().unwrap_or(0.0);
        report
            .rounds
            .last()
            .map(|r| {
                r.hospitals
                    .iter()
                    .map(|h| {
                        let scaled = if last_total.abs() > 1e-12 {
                            h.value / last_total * mean_total
                        } else {
                            h.value
                        };
                        (h.name.clone(), scaled)
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        report
            .hospitals
            .iter()
            .map(|h| (h.name.clone(), h.value / rounds))
            .collect()
    };
    Ok((values, evaluations))
}

/// Spearman's rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let ranks = |v: &[f64]| -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0 + 1.0;
            for k in i..=j {
                r[order[k]] = avg;
            }
            i = j + 1;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return f64::NAN;
    }
    cov / (va * vb).sqrt()
}

fn compare(exact: &BTreeMap<String, f64>, other: &BTreeMap<String, f64>) -> (f64, f64) {
    let names: Vec<&String> = exact.keys().collect();
    let a: Vec<f64> = names.iter().map(|n| exact[*n]).collect();
    let b: Vec<f64> = names
        .iter()
        .map(|n| other.get(*n).copied().unwrap_or(0.0))
        .collect();
    let mae = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64;
    (spearman(&a, &b), mae)
}

/// `hospitals` hospitals valued exactly, by permutation sampling and by
/// partition valuation under secure aggregation (groups of `group_size`);
/// then, with `overhead_hospitals` > 0, the round wall time of a plain job
/// with and without `[valuation]` at that many hospitals.
pub async fn valuation(
    n: usize,
    rounds: u32,
    (middle_orders, permutations): (Option<u32>, u32),
    (group_size, groupings): (u32, u32),
    (overhead_hospitals, overhead_jobs): (usize, u32),
    overhead_data: Option<&std::path::Path>,
) -> Result<ValuationBench> {
    if groupings == 0 {
        bail!("--groupings must be at least 1");
    }
    if overhead_jobs == 0 {
        bail!("--overhead-jobs must be at least 1");
    }
    if !(2..=12).contains(&n) {
        bail!("--hospitals must be in 2..=12 (exact Shapley is the reference)");
    }
    let dir = tempfile::Builder::new()
        .prefix("cohort-bench-valuation-")
        .tempdir()?;
    let (members, shuffled) = hospitals(dir.path(), n)?;
    let data_dir = dir.path().join("coordinator");
    let federation =
        LocalFederation::start(dir.path(), &members, false, Duration::from_secs(2)).await?;
    let runs = async {
        let exact_job = job(
            n,
            rounds,
            &format!("\n[valuation]\nmethod = \"exact\"\nexact_up_to = {n}\n"),
        );
        let (exact_id, _) = run(&federation, &exact_job).await?;
        eprintln!("exact Shapley job {exact_id} done");
        let stratified = job(
            n,
            rounds,
            &match middle_orders {
                Some(m) => format!("\n[valuation]\nmethod = \"stratified\"\nmiddle_orders = {m}\n"),
                None => "\n[valuation]\nmethod = \"stratified\"\n".to_string(),
            },
        );
        let (stratified_id, _) = run(&federation, &stratified).await?;
        eprintln!("stratified-sampling job {stratified_id} done");
        let sampled = job(
            n,
            rounds,
            &format!("\n[valuation]\nmethod = \"permutation\"\npermutations = {permutations}\n"),
        );
        let (sampled_id, _) = run(&federation, &sampled).await?;
        eprintln!("permutation-sampling job {sampled_id} done");
        let grouped = job(
            n,
            rounds,
            &format!(
                "\n[privacy]\naggregation = \"secagg\"\n\n[valuation]\ngroup_size = {group_size}\n"
            ),
        );
        let mut grouped_ids = Vec::new();
        for g in 1..=groupings {
            let (grouped_id, _) = run(&federation, &grouped).await?;
            eprintln!("secagg partition-valuation job {grouped_id} done ({g}/{groupings})");
            grouped_ids.push(grouped_id);
        }
        anyhow::Ok((exact_id, [stratified_id, sampled_id], grouped_ids))
    }
    .await;
    federation.shutdown().await;
    let (exact_id, sampled_ids, grouped_ids) = runs?;
    let (exact, exact_evaluations) = values(&data_dir, &exact_id, false)?;
    let mut methods = Vec::new();
    for (method, id) in [STRATIFIED, PERMUTATION].into_iter().zip(&sampled_ids) {
        let (values_sampled, evaluations) = values(&data_dir, id, false)?;
        let (spearman, mae) = compare(&exact, &values_sampled);
        methods.push(MethodAccuracy {
            method: method.into(),
            aggregation: "plain".into(),
            values: values_sampled,
            spearman,
            mean_absolute_error: mae,
            evaluations_per_round: evaluations,
            spearman_per_grouping: Vec::new(),
        });
    }
    let mut per_grouping = Vec::new();
    for id in &grouped_ids {
        let (values, evaluations) = values(&data_dir, id, true)?;
        let (spearman, mae) = compare(&exact, &values);
        per_grouping.push(GroupingAccuracy {
            values,
            spearman,
            mae,
            evaluations,
        });
    }
    let count = per_grouping.len() as f64;
    let mean = |f: fn(&GroupingAccuracy) -> f64| per_grouping.iter().map(f).sum::<f64>() / count;
    methods.push(MethodAccuracy {
        method: "partition-least-squares".into(),
        aggregation: "secagg".into(),
        spearman: mean(|g| g.spearman),
        mean_absolute_error: mean(|g| g.mae),
        evaluations_per_round: mean(|g| g.evaluations),
        spearman_per_grouping: per_grouping.iter().map(|g| g.spearman).collect(),
        values: per_grouping
            .into_iter()
            .next()
            .map(|g| g.values)
            .unwrap_or_default(),
    });
    let overhead = if overhead_hospitals > 0 {
        let csv = match overhead_data {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("reading --overhead-data {}", path.display()))?,
            None => crate::WDBC_CSV.to_vec(),
        };
        Some(overhead(&csv, overhead_hospitals, rounds, overhead_jobs).await?)
    } else {
        None
    };
    Ok(ValuationBench {
        hospitals: n,
        shuffled_label_hospitals: shuffled,
        rounds,
        exact,
        exact_evaluations_per_round: exact_evaluations,
        methods,
        overhead,
    })
}

async fn overhead(csv: &[u8], n: usize, rounds: u32, jobs_each: u32) -> Result<Overhead> {
    let dir = tempfile::Builder::new()
        .prefix("cohort-bench-valuation-")
        .tempdir()?;
    let (members, _) = hospitals_from(csv, dir.path(), n)?;
    // Data lines after the header.
    let data_rows = csv
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|line| !line.is_empty())
        .count();
    let data_dir = dir.path().join("coordinator");
    let federation =
        LocalFederation::start(dir.path(), &members, false, Duration::from_secs(2)).await?;
    let runs = async {
        let (mut without, mut with, mut with_id) = (Vec::new(), Vec::new(), String::new());
        let mut cpu = [0.0f64; 2];
        for _ in 0..jobs_each {
            let started = process_cpu_seconds();
            without.extend(run(&federation, &demo_job(n, rounds, "")).await?.1);
            let between = process_cpu_seconds();
            let (id, rounds) = run(&federation, &demo_job(n, rounds, "\n[valuation]\n")).await?;
            cpu[0] += between - started;
            cpu[1] += process_cpu_seconds() - between;
            with.extend(rounds);
            with_id = id;
        }
        anyhow::Ok((without, with_id, with, cpu))
    }
    .await;
    federation.shutdown().await;
    let (without, with_id, with, cpu) = runs?;
    let per_round = |seconds: f64| seconds / f64::from(rounds * jobs_each);
    let contents = crate::audit::read_ledger(&data_dir)?;
    let report = crate::rewards::show(&contents, Some(&with_id))?;
    let evaluations = report
        .rounds
        .iter()
        .map(|r| r.utility_evaluations as f64)
        .sum::<f64>()
        / report.rounds.len().max(1) as f64;
    let method = report
        .rounds
        .first()
        .map(|r| r.method.clone())
        .unwrap_or_default();
    let column = |rounds: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        median(&rounds.iter().map(f).collect::<Vec<_>>())
    };
    let (a, b) = (column(&without, |r| r.0), column(&with, |r| r.0));
    Ok(Overhead {
        hospitals: n,
        data_rows,
        rounds,
        jobs_each,
        method,
        evaluations_per_round: evaluations,
        median_round_secs_without: a,
        median_round_secs_with: b,
        median_evaluate_secs_without: column(&without, |r| r.1),
        median_evaluate_secs_with: column(&with, |r| r.1),
        added_fraction: (b - a) / a,
        cpu_secs_per_round_without: per_round(cpu[0]),
        cpu_secs_per_round_with: per_round(cpu[1]),
        added_cpu_fraction: (cpu[1] - cpu[0]) / cpu[0],
    })
}

#[cfg(test)]
mod tests {
    use super::spearman;

    #[test]
    fn spearman_of_orders_and_ties() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        let tied = spearman(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!(tied > 0.9 && tied < 1.0, "{tied}");
    }
}
