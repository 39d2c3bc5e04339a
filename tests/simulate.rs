//! `cohort simulate` as a researcher runs it: the bundled WDBC file dealt
//! to a dozen virtual hospitals, a real coordinator and clients over
//! loopback gRPC in one process, one JSON line per round.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

fn job(dir: &Path, rounds: u32, clients: u32) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/wdbc-mlp.toml"
    ))
    .unwrap()
    .replace("rounds = 20", &format!("rounds = {rounds}"))
    .replace("min_clients = 3", &format!("min_clients = {clients}"))
    .replace(
        "clients_per_round = 3",
        &format!("clients_per_round = {clients}"),
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn simulate(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("simulate")
        .args(args)
        .arg("--data")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/data/wdbc.csv"))
        .output()
        .unwrap()
}

#[test]
fn a_job_runs_on_a_dozen_virtual_hospitals_with_a_json_line_per_round() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 3, 8);
    let workdir = dir.path().join("run");
    let out = simulate(&[
        job.to_str().unwrap(),
        "--clients",
        "12",
        "--alpha",
        "2",
        "--workdir",
        workdir.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for (i, round) in lines[..3].iter().enumerate() {
        assert_eq!(round["round"], i as u64 + 1);
        assert_eq!(round["participants"], 8);
        assert!(round["round_s"].as_f64().unwrap() > 0.0);
        assert!(round["auc"].as_f64().unwrap() > 0.5, "{round}");
        assert!(round["rss_mb"].as_f64().unwrap() > 1.0);
    }
    let summary = &lines[3];
    assert_eq!(summary["state"], "completed", "{summary}");
    assert_eq!(summary["clients"], 12);
    assert_eq!(summary["rounds"], 3);
    let preparation = summary["preparation_s"].as_f64().unwrap();
    assert!(preparation > 0.0 && preparation < 60.0, "{summary}");
    // Twelve hospital files were dealt, and a coordinator kept its state.
    let dealt = std::fs::read_dir(workdir.join("hospitals"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "csv")
        })
        .count();
    assert_eq!(dealt, 12);
    assert!(workdir.join("coordinator").is_dir());
}

#[test]
fn impossible_simulations_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 2, 5);
    let job = job.to_str().unwrap();
    for (args, needle) in [
        (vec![job, "--clients", "4"], "needs 5 hospitals a round"),
        (
            vec![job, "--clients", "8", "--alpha", "0"],
            "--alpha must be a positive",
        ),
        (vec![job, "--clients", "600"], "600"),
        (vec!["missing.toml", "--clients", "8"], "missing.toml"),
    ] {
        let out = simulate(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `cohort simulate ... --json | head -1`: once the reader has gone, the
/// command leaves quietly with SIGPIPE's status, not a panic report.
#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 20, 3);
    let mut child = Command::new(BIN)
        .arg("simulate")
        .arg(&job)
        .args(["--clients", "3", "--json", "--data"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/data/wdbc.csv"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("{\"round\":1"), "{first}");
    // The pipe's read end is closed here.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_dp_job_takes_its_preprocessing_from_the_developers_reference_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = job(dir.path(), 2, 3);
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/wdbc.csv");
    let cli = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let out = cli(&[
        "data",
        "preprocessing",
        data,
        "--job",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("[preprocessing.numeric]"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("std =")).count(),
        30,
        "{table}"
    );
    let json: Value = serde_json::from_slice(
        &cli(&[
            "data",
            "preprocessing",
            data,
            "--job",
            path.to_str().unwrap(),
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(json["rows"], 569);

    // Pasted into a DP job, it is the preprocessing: no statistics are
    // released, and the job trains.
    let private = std::fs::read_to_string(&path).unwrap()
        + "\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 2.0\naccountant = \"rdp\"\n"
        + &table;
    std::fs::write(&path, private).unwrap();
    let out = simulate(&[path.to_str().unwrap(), "--clients", "3", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["state"], "completed", "{stdout}");

    // Reference data without one of the job's columns is refused by name.
    let text = std::fs::read_to_string(data).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let drop = header.iter().position(|c| *c == "texture_mean").unwrap();
    let keep = |line: &str| {
        line.split(',')
            .enumerate()
            .filter(|(i, _)| *i != drop)
            .map(|(_, c)| c)
            .collect::<Vec<_>>()
            .join(",")
    };
    let partial: Vec<String> = text.lines().map(keep).collect();
    let reference = dir.path().join("partial.csv");
    std::fs::write(&reference, partial.join("\n") + "\n").unwrap();
    let job_file = dir.path().join("listed.toml");
    std::fs::write(
        &job_file,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "numeric = \"*\"",
                "numeric = [\"radius_mean\", \"texture_mean\"]",
            )
            .split("\n[preprocessing")
            .next()
            .unwrap(),
    )
    .unwrap();
    let out = cli(&[
        "data",
        "preprocessing",
        reference.to_str().unwrap(),
        "--job",
        job_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("texture_mean"), "{err}");
}
