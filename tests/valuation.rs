//! Contribution valuation against misbehaving hospitals, end to end over
//! loopback gRPC: a free rider sending all-zero updates earns (near)
//! nothing, and a hospital that joins with a copy of another's data does
//! not earn, together with its twin, much more than the original earns
//! alone.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cohort::developer;
use cohort::local::{LocalFederation, LocalHospital};
use cohort_client::ClientOptions;
use cohort_client::misbehave::Misbehave;
use common::*;

fn hospital(name: &str, data: &Path, misbehave: Option<Misbehave>) -> LocalHospital {
    LocalHospital {
        name: name.into(),
        data: data.to_path_buf(),
        options: ClientOptions {
            misbehave,
            ..Default::default()
        },
    }
}

/// Runs an exact-Shapley `[valuation]` job on `hospitals`; each
/// hospital's part of everything emitted to the job.
async fn shares(dir: &Path, hospitals: &[LocalHospital]) -> BTreeMap<String, f64> {
    valued(dir, hospitals, "method = \"exact\"\n").await.0
}

/// Runs a job with the given `[valuation]` table on `hospitals`: each
/// hospital's part of everything emitted, and per round the method the
/// ledger records and the candidates it scored.
async fn valued(
    dir: &Path,
    hospitals: &[LocalHospital],
    table: &str,
) -> (BTreeMap<String, f64>, Vec<(String, u64)>) {
    let federation = LocalFederation::start(dir, hospitals, false, Duration::from_secs(1))
        .await
        .unwrap();
    let mut dev = federation.developer().await.unwrap();
    let n = hospitals.len() as u32;
    let job = oncology_job(4, n) + "\n[valuation]\n" + table;
    let id = developer::submit(&mut dev, &job).await.unwrap();
    let view = tokio::time::timeout(
        Duration::from_secs(300),
        developer::wait(&mut dev, &id, false),
    )
    .await
    .expect("job did not finish in time")
    .unwrap();
    federation.shutdown().await;
    assert_eq!(view.state, "completed", "{view:#?}");
    let contents = cohort::audit::read_ledger(&dir.join("coordinator")).unwrap();
    let report = cohort::rewards::show(&contents, Some(&id)).unwrap();
    cohort::rewards::verify(&contents).unwrap();
    let emitted = report.emitted as f64;
    let shares = report
        .hospitals
        .iter()
        .map(|h| (h.name.clone(), h.reward as f64 / emitted))
        .collect();
    let methods = report
        .rounds
        .iter()
        .map(|r| (r.method.clone(), r.utility_evaluations))
        .collect();
    (shares, methods)
}

/// The free rider earns at most 5 % of the emission and under a quarter of
/// the smallest honest hospital's part.
fn assert_free_rider_earns_near_nothing(shares: &BTreeMap<String, f64>) {
    let honest = shares
        .iter()
        .filter(|(n, _)| *n != "free-rider")
        .map(|(_, s)| *s)
        .fold(f64::INFINITY, f64::min);
    assert!(
        shares["free-rider"] <= 0.05 && shares["free-rider"] < honest / 4.0,
        "{shares:?}"
    );
}

fn parts(dir: &Path) -> Vec<PathBuf> {
    let csv = dir.join("oncology.csv");
    synthetic_oncology_csv(&csv, 1200, 31);
    split(&csv, &dir.join("parts"), 3, 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_free_rider_earns_near_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = parts(dir.path());
    let hospitals = [
        hospital("hospital-0", &files[0], None),
        hospital("hospital-1", &files[1], None),
        hospital("hospital-2", &files[2], None),
        hospital("free-rider", &files[3], Some(Misbehave::Freeride)),
    ];
    let shares = shares(dir.path(), &hospitals).await;
    assert_free_rider_earns_near_nothing(&shares);
}

/// Above `exact_up_to` (6) hospitals the default method is stratified
/// sampling: 8 hospitals, one of them a free rider, score 48 candidates a
/// round instead of exact Shapley's 256, and the free rider still earns
/// (near) nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_free_rider_earns_near_nothing_under_sampled_valuation() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 1600, 37);
    let files = split(&csv, &dir.path().join("parts"), 7, 9);
    let mut hospitals: Vec<LocalHospital> = files[..7]
        .iter()
        .enumerate()
        .map(|(i, f)| hospital(&format!("hospital-{i}"), f, None))
        .collect();
    hospitals.push(hospital("free-rider", &files[7], Some(Misbehave::Freeride)));
    let (shares, rounds) = valued(dir.path(), &hospitals, "").await;
    assert!(!rounds.is_empty());
    for (method, candidates) in &rounds {
        assert_eq!(method, "stratified-shapley");
        assert!(*candidates <= 50, "{candidates} candidates scored");
    }
    assert_free_rider_earns_near_nothing(&shares);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copied_dataset_earns_no_more_than_the_original_alone() {
    let dir = tempfile::tempdir().unwrap();
    let files = parts(dir.path());
    let honest = || {
        vec![
            hospital("hospital-0", &files[0], None),
            hospital("hospital-1", &files[1], None),
            hospital("hospital-2", &files[2], None),
        ]
    };
    let alone = shares(&dir.path().join("alone"), &honest()).await;
    let mut with_twin = honest();
    with_twin.push(hospital("twin-of-0", &files[0], None));
    let twinned = shares(&dir.path().join("twinned"), &with_twin).await;
    let pair = twinned["hospital-0"] + twinned["twin-of-0"];
    println!("alone {alone:?}\nwith a twin {twinned:?}");
    assert!(
        pair <= 1.2 * alone["hospital-0"],
        "the twins earn {pair:.3} of the emission together, the original alone {:.3}",
        alone["hospital-0"]
    );
}
