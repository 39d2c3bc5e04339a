//! The `cohort` binary as users run it: coordinator and hospitals as
//! separate processes on loopback.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// A child process that is killed when the test ends, pass or fail.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn cohort(args: &[&str]) -> Value {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cohort {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cohort {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_coordinator(port: u16, data_dir: &Path, log: &Path) -> Proc {
    spawn(
        &[
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--poll-timeout-secs",
            "1",
        ],
        log,
    )
}

fn start_clients(url: &str, files: &[PathBuf], dir: &Path) -> Vec<Proc> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = format!("hospital-{i}");
            spawn(
                &[
                    "client",
                    "--coordinator",
                    url,
                    "--data",
                    f.to_str().unwrap(),
                    "--name",
                    &name,
                    "--data-dir",
                    dir.join(&name).to_str().unwrap(),
                ],
                &dir.join(format!("{name}.log")),
            )
        })
        .collect()
}

/// Writes a job file and submits it with `cohort job submit --json`.
fn submit_job_file(dir: &Path, job_toml: &str, url: &str) -> String {
    let job_file = dir.join("job.toml");
    std::fs::write(&job_file, job_toml).unwrap();
    // `job submit` retries nothing: give the coordinator a moment to bind.
    std::thread::sleep(Duration::from_millis(500));
    let submitted = cohort(&[
        "job",
        "submit",
        job_file.to_str().unwrap(),
        "--coordinator",
        url,
        "--json",
    ]);
    submitted["job_id"].as_str().unwrap().to_string()
}

fn status(url: &str, job: &str) -> Option<Value> {
    let out = Command::new(BIN)
        .args(["job", "status", job, "--coordinator", url, "--json"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())?
}

fn wait_until(url: &str, job: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(s) = status(url, job)
            && done(&s)
        {
            return s;
        }
        assert!(start.elapsed() < limit, "timed out waiting on job {job}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_processes_train_on_an_unseen_csv_and_match_centralized_logistic_regression() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 1500, 21);
    let split = cohort(&[
        "data",
        "split",
        csv.to_str().unwrap(),
        "--parts",
        "3",
        "--out",
        dir.path().join("parts").to_str().unwrap(),
        "--label",
        "recurrence",
        "--test-fraction",
        "0.25",
        "--seed",
        "4",
        "--json",
    ]);
    let files: Vec<PathBuf> = split["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p["file"].as_str().unwrap()))
        .collect();
    let test_file = PathBuf::from(split["test"]["file"].as_str().unwrap());

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _coordinator = start_coordinator(
        port,
        &dir.path().join("coord"),
        &dir.path().join("coord.log"),
    );
    let _clients = start_clients(&url, &files, dir.path());
    let job = submit_job_file(dir.path(), &oncology_job(10, 3), &url);
    let done = wait_until(&url, &job, Duration::from_secs(300), |s| {
        s["state"] != "running" && s["state"] != "pending"
    });
    assert_eq!(done["state"], "completed", "{done:#}");
    assert_eq!(done["rounds_completed"], 10);
    assert_eq!(done["rounds"].as_array().unwrap().len(), 10);

    let model_dir = dir.path().join("model");
    cohort(&[
        "model",
        "get",
        &job,
        "--coordinator",
        &url,
        "--out",
        model_dir.to_str().unwrap(),
        "--json",
    ]);
    let federated = cohort(&[
        "evaluate",
        "--model",
        model_dir.to_str().unwrap(),
        "--data",
        test_file.to_str().unwrap(),
        "--json",
    ]);

    let spec = cohort_coordinator::JobSpec::from_toml(&oncology_job(10, 3)).unwrap();
    let parts: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let central =
        cohort::demo::centralized_baseline(&spec, &parts, &test_file, dir.path()).unwrap();
    let auc = federated["auc"].as_f64().unwrap();
    assert!(
        (auc - central.auc).abs() <= 0.03,
        "federated AUC {auc} vs centralized {}",
        central.auc
    );
    assert!(auc > 0.7, "the synthetic label is learnable: {auc}");
    assert_eq!(federated["examples"].as_u64().unwrap(), central.examples);
}

#[test]
fn coordinator_killed_mid_round_resumes_and_records_every_round_once() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 900, 22);
    let files = split(&csv, &dir.path().join("parts"), 3, 8);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = dir.path().join("coord");
    let mut coordinator = start_coordinator(port, &data_dir, &dir.path().join("coord-1.log"));
    let _clients = start_clients(&url, &files[..3], dir.path());
    let rounds = 30;
    let job = submit_job_file(dir.path(), &oncology_job(rounds, 3), &url);

    // Kill while round 3 is under way.
    wait_until(&url, &job, Duration::from_secs(120), |s| {
        s["rounds_completed"].as_u64() >= Some(2)
    });
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let before = status(&url, &job);
    assert!(before.is_none(), "the coordinator is down");

    let _restarted = start_coordinator(port, &data_dir, &dir.path().join("coord-2.log"));
    let done = wait_until(&url, &job, Duration::from_secs(300), |s| {
        s["state"] == "completed" || s["state"] == "failed"
    });
    assert_eq!(done["state"], "completed", "{done:#}");
    let recorded: Vec<u64> = done["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(recorded, (1..=u64::from(rounds)).collect::<Vec<_>>());
    let log = std::fs::read_to_string(dir.path().join("coord-2.log")).unwrap();
    assert!(log.contains("resuming"), "{log}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Command::new(BIN)
        .args([
            "evaluate",
            "--model",
            dir.path().to_str().unwrap(),
            "--data",
            "nope.csv",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("model"));

    let job = dir.path().join("job.toml");
    std::fs::write(&job, oncology_job(0, 3)).unwrap();
    let out = Command::new(BIN)
        .args([
            "job",
            "submit",
            job.to_str().unwrap(),
            "--coordinator",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("training.rounds"));

    let out = Command::new(BIN)
        .args([
            "client",
            "--coordinator",
            "127.0.0.1:7070",
            "--data",
            "x.csv",
            "--name",
            "a",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://"));
}
