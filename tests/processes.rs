//! The `cohort` binary as users run it: coordinator and hospitals as
//! separate processes on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

fn spawn(args: &[&str], log: &Path) -> Proc {
    spawn_with(args, log, &[])
}

fn spawn_with(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// How the processes of one test talk: plaintext, or mutual TLS with kits
/// made by `cohort ca` in a directory (one kit per member name).
#[derive(Clone)]
enum Net {
    Insecure { port: u16 },
    Tls { port: u16, pki: PathBuf },
}

impl Net {
    /// Provisions a consortium with the `cohort ca` commands, as an
    /// operator would: a CA, a coordinator, a developer and `hospitals`.
    fn tls(dir: &Path, hospitals: usize) -> Net {
        let pki = dir.join("pki");
        let ca = pki.join("ca");
        cohort_json(&[
            "ca",
            "init",
            "--consortium",
            "test-net",
            "--out",
            ca.to_str().unwrap(),
            "--json",
        ]);
        let mut members = vec![
            ("coordinator", "coordinator".to_string()),
            ("developer", "developer".to_string()),
        ];
        members.extend((0..hospitals).map(|i| ("hospital", format!("hospital-{i}"))));
        for (role, name) in members {
            let issued = cohort_json(&[
                "ca",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--role",
                role,
                "--name",
                &name,
                "--out",
                pki.join(&name).to_str().unwrap(),
                "--json",
            ]);
            assert_eq!(issued["name"], name.as_str());
        }
        Net::Tls {
            port: free_port(),
            pki,
        }
    }

    fn url(&self) -> String {
        match self {
            Net::Insecure { port } => format!("http://127.0.0.1:{port}"),
            Net::Tls { port, .. } => format!("https://127.0.0.1:{port}"),
        }
    }

    /// The flags a command run by `member` needs to reach the coordinator.
    fn args(&self, member: &str) -> Vec<String> {
        let mut args = match self {
            Net::Insecure { .. } => vec!["--insecure".to_string()],
            Net::Tls { pki, .. } => vec!["--tls".into(), pki.join(member).display().to_string()],
        };
        if member != "coordinator" {
            args.extend(["--coordinator".to_string(), self.url()]);
        }
        args
    }

    fn port(&self) -> u16 {
        match self {
            Net::Insecure { port } | Net::Tls { port, .. } => *port,
        }
    }
}

fn with(args: &[&str], extra: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

fn start_coordinator(net: &Net, data_dir: &Path, log: &Path) -> Proc {
    start_coordinator_with(net, data_dir, log, &[])
}

fn start_coordinator_with(net: &Net, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Proc {
    let args = with(
        &[
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{}", net.port()),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--poll-timeout-secs",
            "1",
        ],
        &net.args("coordinator"),
    );
    spawn_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        log,
        env,
    )
}

fn start_clients(net: &Net, files: &[PathBuf], dir: &Path) -> Vec<Proc> {
    start_clients_with(net, files, dir, &[])
}

fn start_clients_with(net: &Net, files: &[PathBuf], dir: &Path, flags: &[&str]) -> Vec<Proc> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| start_client(net, f, dir, i, flags))
        .collect()
}

/// Starts `hospital-{i}` on `file`, with its data dir and log in `dir`.
fn start_client(net: &Net, file: &Path, dir: &Path, i: usize, flags: &[&str]) -> Proc {
    start_client_with(net, file, dir, i, flags, &[])
}

fn start_client_with(
    net: &Net,
    file: &Path,
    dir: &Path,
    i: usize,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let name = format!("hospital-{i}");
    let mut extra = net.args(&name);
    extra.extend(flags.iter().map(|f| f.to_string()));
    if matches!(net, Net::Insecure { .. }) {
        extra.extend(["--name".to_string(), name.clone()]);
    }
    let args = with(
        &[
            "client",
            "--data",
            file.to_str().unwrap(),
            "--data-dir",
            dir.join(&name).to_str().unwrap(),
        ],
        &extra,
    );
    spawn_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.join(format!("{name}.log")),
        env,
    )
}

/// Downloads a job's latest model with `cohort model get` into `out`.
fn get_model(net: &Net, job: &str, out: &Path) -> PathBuf {
    cohort_as(
        net,
        &[
            "model",
            "get",
            job,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    out.to_path_buf()
}

fn cohort_as(net: &Net, args: &[&str]) -> Value {
    let args = with(args, &net.args("developer"));
    cohort_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Writes a job file and submits it with `cohort job submit --json`.
fn submit_job_file(dir: &Path, job_toml: &str, net: &Net) -> String {
    let job_file = dir.join("job.toml");
    std::fs::write(&job_file, job_toml).unwrap();
    // `job submit` retries nothing: give the coordinator a moment to bind.
    std::thread::sleep(Duration::from_millis(500));
    let submitted = cohort_as(
        net,
        &["job", "submit", job_file.to_str().unwrap(), "--json"],
    );
    submitted["job_id"].as_str().unwrap().to_string()
}

fn status(net: &Net, job: &str) -> Option<Value> {
    let out = Command::new(BIN)
        .args(["job", "status", job, "--json"])
        .args(net.args("developer"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())?
}

/// A hospital's privacy budget ledger, as `cohort client budget --json`
/// prints it.
fn client_budget(data_dir: &Path) -> Value {
    cohort_json(&[
        "client",
        "budget",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--json",
    ])
}

/// Waits (up to 5 minutes) for the job to complete or fail.
fn wait_finished(net: &Net, job: &str) -> Value {
    wait_until(net, job, Duration::from_secs(300), |s| {
        s["state"] == "completed" || s["state"] == "failed"
    })
}

/// The round numbers a finished job's status lists, in order.
fn recorded_rounds(done: &Value) -> Vec<u64> {
    done["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect()
}

fn wait_until(net: &Net, job: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(s) = status(net, job)
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
    let split = cohort_json(&[
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

    // Over mutual TLS, provisioned with `cohort ca` like a deployment.
    let net = Net::tls(dir.path(), 3);
    let _coordinator = start_coordinator(
        &net,
        &dir.path().join("coord"),
        &dir.path().join("coord.log"),
    );
    let _clients = start_clients(&net, &files, dir.path());
    let job = submit_job_file(dir.path(), &oncology_job(10, 3), &net);
    let done = wait_until(&net, &job, Duration::from_secs(300), |s| {
        s["state"] != "running" && s["state"] != "pending"
    });
    assert_eq!(done["state"], "completed", "{done:#}");
    assert_eq!(done["rounds_completed"], 10);
    assert_eq!(done["rounds"].as_array().unwrap().len(), 10);

    let model_dir = get_model(&net, &job, &dir.path().join("model"));
    let federated = cohort_json(&[
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

    // The same model as ONNX (its numbers are checked against onnxruntime in
    // python/tests/test_parity.py).
    let onnx = dir.path().join("model.onnx");
    let exported = cohort_json(&[
        "model",
        "export",
        "--model",
        model_dir.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        onnx.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(exported["input"], "features", "{exported:#}");
    assert_eq!(
        exported["bytes"].as_u64().unwrap(),
        std::fs::metadata(&onnx).unwrap().len()
    );

    // The developer audits the running coordinator's ledger over mutual TLS.
    let state = dir.path().join("seen.json");
    let audit = cohort_as(
        &net,
        &[
            "verify",
            "ledger",
            "--state",
            state.to_str().unwrap(),
            "--json",
        ],
    );
    // Coordinator key, job created, enrollment, rounds 0..=10.
    assert_eq!(audit["entries"], 14, "{audit:#}");
}

#[test]
fn coordinator_killed_mid_round_resumes_and_records_every_round_once() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 900, 22);
    let files = split(&csv, &dir.path().join("parts"), 3, 8);
    let net = Net::Insecure { port: free_port() };
    let data_dir = dir.path().join("coord");
    let mut coordinator = start_coordinator(&net, &data_dir, &dir.path().join("coord-1.log"));
    let _clients = start_clients(&net, &files[..3], dir.path());
    let rounds = 30;
    // Client-level DP with adaptive clipping: the bound each round ends
    // with must survive the kill.
    let job_toml = oncology_job(rounds, 3)
        + "\n[privacy.dp]\nlevel = \"client\"\ntarget_epsilon = 50.0\nclipping = \"adaptive\"\nclipped_count_stddev = 3.0\n";
    // Client-level statistics of three hospitals would drown in their
    // noise: the developer gives them publicly.
    let job_toml = job_toml.clone() + &oncology_reference_preprocessing(&job_toml);
    let job = submit_job_file(dir.path(), &job_toml, &net);

    // Kill while round 3 is under way.
    wait_until(&net, &job, Duration::from_secs(120), |s| {
        s["rounds_completed"].as_u64() >= Some(2)
    });
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let before = status(&net, &job);
    assert!(before.is_none(), "the coordinator is down");

    let _restarted = start_coordinator(&net, &data_dir, &dir.path().join("coord-2.log"));
    let done = wait_finished(&net, &job);
    assert_eq!(done["state"], "completed", "{done:#}");
    let recorded = recorded_rounds(&done);
    assert_eq!(recorded, (1..=u64::from(rounds)).collect::<Vec<_>>());
    let log = std::fs::read_to_string(dir.path().join("coord-2.log")).unwrap();
    assert!(log.contains("resuming"), "{log}");
    // Every round's clipping starts where the round before it ended, across
    // the restart too (the restarted coordinator reads the bound back).
    let mut last_after: std::collections::BTreeMap<u64, String> = Default::default();
    let mut starts: Vec<(u64, String)> = Vec::new();
    for event in done["events"].as_array().unwrap() {
        let message = event["message"].as_str().unwrap_or_default();
        let Some((head, bounds)) = message.split_once(": adaptive clipping bound ") else {
            continue;
        };
        let round: u64 = head.trim_start_matches("round ").parse().unwrap();
        let (before, after) = bounds.split_once(" -> ").unwrap();
        starts.push((round, before.to_string()));
        last_after.insert(round, after.to_string());
    }
    assert!(starts.len() >= rounds as usize, "{done:#}");
    for (round, before) in &starts {
        if let Some(previous) = last_after.get(&(round - 1)) {
            assert_eq!(
                before,
                previous,
                "round {round} did not start from round {}'s bound",
                round - 1
            );
        }
    }

    // The ledger survived the kill too: one entry per recorded round, all
    // signed, the tree matching its signed checkpoint.
    let state = dir.path().join("seen.json");
    let audit = cohort_json(&[
        "verify",
        "ledger",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--json",
    ]);
    // Coordinator key, job created, enrollment, rounds 0..=30.
    assert_eq!(audit["entries"], 3 + 1 + u64::from(rounds), "{audit:#}");
}

/// Where a crash test kills a process (`COHORT_CRASH_AT`, see
/// protocol/src/crash.rs): the coordinator, or hospital-0.
enum Victim {
    Coordinator,
    Hospital,
}

/// Arms crash point `point` in one process of a 3-hospital, 3-round job
/// under record-level DP and the aggregation `privacy` table, waits for
/// that process to die there, restarts it on the same data directory, and
/// checks what recovery promises: the job completes, every round is
/// recorded once, the ledger verifies, the served model verifies against
/// the ledger, and each hospital's ε as the coordinator reports it is
/// exactly what the hospital's own budget ledger spent, each round once.
fn crash_and_recover(privacy: &str, point: &str, victim: Victim) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 900, 41);
    let files = split(&csv, &dir.path().join("parts"), 3, 12);
    let net = Net::Insecure { port: free_port() };
    let data_dir = dir.path().join("coord");
    let crash = [("COHORT_CRASH_AT", point)];
    let none: [(&str, &str); 0] = [];
    let (coordinator_env, hospital_env) = match victim {
        Victim::Coordinator => (&crash[..], &none[..]),
        Victim::Hospital => (&none[..], &crash[..]),
    };
    let first_log = dir.path().join("coord-1.log");
    let mut coordinator = start_coordinator_with(&net, &data_dir, &first_log, coordinator_env);
    let mut hospital_0 = start_client_with(&net, &files[0], dir.path(), 0, &[], hospital_env);
    let _others = [
        start_client(&net, &files[1], dir.path(), 1, &[]),
        start_client(&net, &files[2], dir.path(), 2, &[]),
    ];
    let rounds = 3;
    // Half of the target for the noisy statistics: 900 rows stand well
    // out of their noise.
    let job_toml = oncology_job(rounds, 3)
        + privacy
        + "\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 4.0\ndelta = 1e-5\nmax_grad_norm = 1.0\n\
           statistics_epsilon = 2.0\n";
    let job = submit_job_file(dir.path(), &job_toml, &net);

    let (dying, log) = match victim {
        Victim::Coordinator => (&mut coordinator, first_log.clone()),
        Victim::Hospital => (&mut hospital_0, dir.path().join("hospital-0.log")),
    };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = dying.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{point}: never reached; {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{point}: {status:?}");
    let name = point.split('@').next().unwrap();
    assert!(said.contains(&format!("crashing at {name}")), "{said}");
    let _restarted = match victim {
        Victim::Coordinator => start_coordinator(&net, &data_dir, &dir.path().join("coord-2.log")),
        Victim::Hospital => start_client(&net, &files[0], dir.path(), 0, &[]),
    };

    let done = wait_finished(&net, &job);
    assert_eq!(
        done["state"],
        "completed",
        "{point}: {done:#}\nhospital-0: {}",
        std::fs::read_to_string(dir.path().join("hospital-0.log")).unwrap_or_default()
    );
    if privacy.contains("[proofs]") && matches!(victim, Victim::Hospital) {
        // The restarted hospital proves with the key it checked before the
        // crash, read back by its digest, not fetched and checked again.
        let said = std::fs::read_to_string(dir.path().join("hospital-0.log")).unwrap();
        assert!(
            said.contains("proving key read back from the data directory"),
            "{said}"
        );
        assert!(!said.contains("proving key fetched"), "{said}");
    }
    let recorded = recorded_rounds(&done);
    assert_eq!(
        recorded,
        (1..=u64::from(rounds)).collect::<Vec<_>>(),
        "{point}"
    );

    let audit = cohort_json(&[
        "verify",
        "ledger",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--state",
        dir.path().join("seen.json").to_str().unwrap(),
        "--json",
    ]);
    // Coordinator key, job created, enrollment (and, with proofs, the
    // job's verifying key), rounds 0..=3: the round the crash interrupted
    // is on the ledger once.
    let proof_key = u64::from(privacy.contains("[proofs]"));
    // A valued round adds its values and its payout.
    let per_round = if privacy.contains("[valuation]") {
        3
    } else {
        1
    };
    assert_eq!(
        audit["entries"],
        3 + proof_key + 1 + per_round * u64::from(rounds),
        "{point}: {audit:#}"
    );
    if privacy.contains("[valuation]") {
        // Each hospital's job-wide value on the ledger is the sum of its
        // round values, across the restart too (the restarted coordinator
        // sums the stored rounds; a running one adds to the last totals).
        let rewards = cohort_json(&[
            "rewards",
            "verify",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(rewards["rounds_paid"], rounds, "{point}: {rewards:#}");
    }
    let model = get_model(&net, &job, &dir.path().join("model"));
    let verified = cohort_json(&[
        "verify",
        "model",
        model.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--state",
        dir.path().join("seen.json").to_str().unwrap(),
        "--json",
    ]);
    // `verify model` exits non-zero on any mismatch; it names what it found.
    assert_eq!(verified["round"], rounds, "{point}: {verified:#}");

    for i in 0..3 {
        let name = format!("hospital-{i}");
        let budget = client_budget(&dir.path().join(&name));
        let spent = budget["jobs"][0]["epsilon"].as_f64().unwrap();
        let charged: Vec<u64> = budget["jobs"][0]["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap())
            .collect();
        assert_eq!(charged, vec![1, 2, 3], "{point} {name}: {budget:#}");
        // Three passes of noisy statistics, each paid once: a preparation
        // the restarted coordinator ran again got the same noisy sums.
        assert_eq!(
            budget["jobs"][0]["statistics_passes"], 3,
            "{point} {name}: {budget:#}"
        );
        let reported = done["dp_epsilon"][&name].as_f64().unwrap();
        assert!(
            (reported - spent).abs() < 1e-9,
            "{point} {name}: the coordinator reports ε {reported}, the hospital spent {spent}"
        );
    }
}

#[test]
fn coordinator_crashes_while_collecting_unmasking_shares() {
    // Three reveals a round: the fourth is round 2's first.
    crash_and_recover(
        "\n[privacy]\naggregation = \"secagg\"\n",
        "secagg-unmask@4",
        Victim::Coordinator,
    );
}

#[test]
fn coordinator_crashes_while_summing_the_preprocessing_statistics() {
    // Three reveals a statistics pass: the fifth is in the second pass.
    crash_and_recover(
        "\n[privacy]\naggregation = \"secagg\"\n",
        "secagg-statistics-unmask@5",
        Victim::Coordinator,
    );
}

#[test]
fn coordinator_crashes_while_collecting_decryption_shares() {
    crash_and_recover(
        "\n[privacy]\naggregation = \"he\"\n",
        "he-decrypt@3",
        Victim::Coordinator,
    );
}

#[test]
fn coordinator_crashes_inside_a_ledger_append() {
    // Appends: the coordinator's key, the job, the enrollment, round 0,
    // round 1: the fifth is round 1's.
    crash_and_recover("", "ledger-append@5", Victim::Coordinator);
}

#[test]
fn coordinator_crashes_inside_a_valued_rounds_ledger_append() {
    // Appends: the coordinator's key, the job, the enrollment, round 0,
    // round 1 (with its values and payout): the sixth is round 2's.
    crash_and_recover("\n[valuation]\n", "ledger-append@6", Victim::Coordinator);
}

#[test]
fn coordinator_crashes_between_a_model_and_its_card() {
    crash_and_recover("", "model-write@3", Victim::Coordinator);
}

#[test]
fn hospital_crashes_mid_upload() {
    crash_and_recover("", "client-upload@2", Victim::Hospital);
}

#[test]
fn hospital_crashes_mid_upload_of_a_proved_update_and_reads_its_checked_key_back() {
    crash_and_recover(
        "\n[proofs]\nupdate = \"norm\"\nclip = 4.0\n",
        "client-upload@2",
        Victim::Hospital,
    );
}

/// Runs `cohort ARGS` expecting it to fail with `needle` on stderr.
fn refused(args: &[&str], needle: &str) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("COHORT_TLS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cohort {args:?} succeeded");
    assert!(err.contains(needle), "cohort {args:?}: {err}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_str().unwrap();
    refused(&["evaluate", "--model", tmp, "--data", "nope.csv"], "model");

    let job = dir.path().join("job.toml");
    std::fs::write(&job, oncology_job(0, 3)).unwrap();
    let job = job.to_str().unwrap();
    let insecure = ["--insecure", "--coordinator", "http://127.0.0.1:9"];
    refused(
        &[&["job", "submit", job][..], &insecure].concat(),
        "training.rounds",
    );
    refused(
        &[
            "client",
            "--coordinator",
            "127.0.0.1:7070",
            "--data",
            "x.csv",
            "--name",
            "a",
            "--insecure",
        ],
        "http://",
    );

    // Plaintext is never chosen silently.
    refused(&["coordinator", "--data-dir", tmp], "or --insecure");
    refused(&["job", "list"], "choose --tls DIR");
    refused(
        &[
            "client",
            "--data",
            "x.csv",
            "--coordinator",
            "http://127.0.0.1:9",
        ],
        "or --insecure",
    );
    // --insecure warns.
    refused(
        &[&["job", "list"][..], &insecure].concat(),
        "warning: --insecure",
    );

    // A kit of the wrong role, a URL that does not match the mode, a name
    // that is not the certificate's.
    let ca = dir.path().join("ca");
    cohort_json(&[
        "ca",
        "init",
        "--consortium",
        "x",
        "--out",
        ca.to_str().unwrap(),
        "--json",
    ]);
    let kit = dir.path().join("h");
    let kit = kit.to_str().unwrap();
    cohort_json(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--role",
        "hospital",
        "--name",
        "h",
        "--out",
        kit,
        "--json",
    ]);
    refused(&["job", "list", "--tls", kit], "developer or validator kit");
    refused(
        &[
            "client",
            "--data",
            "x.csv",
            "--tls",
            kit,
            "--coordinator",
            "http://127.0.0.1:9",
        ],
        "https://",
    );
    refused(
        &["client", "--data", "x.csv", "--tls", kit, "--name", "other"],
        "does not match the certificate",
    );
    // Issuing from a directory that is not a CA, or over an existing kit.
    refused(
        &[
            "ca", "issue", "--ca", kit, "--role", "hospital", "--name", "z", "--out", tmp,
        ],
        "not a Cohort certificate authority",
    );
    refused(
        &[
            "ca",
            "issue",
            "--ca",
            ca.to_str().unwrap(),
            "--role",
            "hospital",
            "--name",
            "h2",
            "--out",
            kit,
        ],
        "refusing to overwrite",
    );
    refused(
        &[
            "ca",
            "revoke",
            "--ca",
            ca.to_str().unwrap(),
            "--name",
            "nobody",
        ],
        "no certificate was ever issued",
    );
}

/// `cohort privacy epsilon --json` as a privacy officer runs it, against the
/// dp_accounting fixture the privacy crate's tests use (single-segment
/// cases with q = 0.01).
#[test]
fn privacy_cli_agrees_with_the_dp_accounting_fixture() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("privacy/tests/fixtures/dp_accounting.json"),
    )
    .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let delta = fixture["delta"].as_f64().unwrap().to_string();
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let segments = case["segments"].as_array().unwrap();
        if segments.len() != 1 || segments[0]["sampling_rate"] != 0.01 {
            continue;
        }
        let s = &segments[0];
        let args = [
            s["sampling_rate"].to_string(),
            s["noise_multiplier"].to_string(),
            s["steps"].to_string(),
        ];
        let epsilon = |extra: &[&str]| {
            let mut argv = vec![
                "privacy",
                "epsilon",
                "--sampling-rate",
                &args[0],
                "--noise-multiplier",
                &args[1],
                "--steps",
                &args[2],
                "--delta",
                &delta,
                "--json",
            ];
            argv.extend_from_slice(extra);
            cohort_json(&argv)
        };
        for (accountant, key, tolerance) in
            [("pld", "pld_epsilon", 0.01), ("rdp", "rdp_epsilon", 0.005)]
        {
            let out = epsilon(&["--accountant", accountant]);
            let ours = out["epsilon"].as_f64().unwrap();
            let reference = case[key].as_f64().unwrap();
            // Where our RDP is tighter than dp_accounting's (it sums
            // |binomial| terms for fractional orders), it may only be lower.
            let relative = (ours - reference) / reference;
            assert!(
                relative.abs() <= tolerance || (accountant == "rdp" && relative < 0.0),
                "{accountant} {args:?}: {ours} vs {reference}"
            );
            if accountant == "rdp" {
                assert!(out["order"].is_number(), "{out}");
                // Reproducing dp_accounting's own fractional-order bound,
                // every point is within the 0.5%.
                let compat = epsilon(&[
                    "--accountant",
                    "rdp",
                    "--rdp-fractional-orders",
                    "dp-accounting",
                ]);
                let compat = compat["epsilon"].as_f64().unwrap();
                assert!(
                    ((compat - reference) / reference).abs() <= 0.005,
                    "dp-accounting mode {args:?}: {compat} vs {reference}"
                );
                assert!(compat >= ours * (1.0 - 1e-9));
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} fixture points checked");
    let noise = cohort_json(&[
        "privacy",
        "noise",
        "--target-epsilon",
        "3",
        "--sampling-rate",
        "0.01",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--json",
    ]);
    let sigma = noise["noise_multiplier"].as_f64().unwrap();
    assert!(
        noise["epsilon"].as_f64().unwrap() <= 3.0 && sigma > 0.5 && sigma < 1.5,
        "{noise}"
    );
}

/// Every byte the coordinator keeps: its data directory (SQLite database,
/// WAL, object store) and its log.
fn coordinator_bytes(data_dir: &Path, log: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = vec![(log.to_path_buf(), std::fs::read(log).unwrap())];
    walk(data_dir, &mut out);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secure_aggregation_leaves_no_individual_update_with_the_coordinator() {
    coordinator_keeps_no_individual_update(
        "\n[privacy]\naggregation = \"secagg\"\nsecagg = { threshold = 0.66, bits = 32 }\n",
    );
}

#[test]
fn homomorphic_aggregation_leaves_no_update_or_key_with_the_coordinator() {
    let dir = coordinator_keeps_no_individual_update(
        "\n[privacy]\naggregation = \"he\"\nhe = { threshold = 0.66, bits = 32 }\n",
    );
    // Nor any hospital's secret key material: its own key share and the
    // Shamir share of the collective secret it held, each round.
    let kept = coordinator_bytes(&dir.path().join("coord"), &dir.path().join("coord.log"));
    let mut checked = 0;
    for i in 0..3 {
        let keys = dir.path().join(format!("hospital-{i}/key-material"));
        for entry in std::fs::read_dir(&keys).unwrap() {
            let frames =
                cohort_privacy::he::unframe_list(&std::fs::read(entry.unwrap().path()).unwrap(), 2)
                    .unwrap();
            assert_eq!(frames.len(), 2, "key share and threshold key");
            for secret in frames {
                // Windows of 32 bytes from the polynomial's coefficients
                // (past the 24-byte header), raw and in hex.
                for start in [24, secret.len() / 2, secret.len() - 40] {
                    let window = &secret[start..start + 32];
                    for (path, bytes) in &kept {
                        assert!(
                            !contains(bytes, window)
                                && !contains(bytes, hex::encode(window).as_bytes()),
                            "{} holds a hospital's secret key material",
                            path.display()
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        checked,
        3 * 3 * 2 * 3,
        "3 hospitals x 3 rounds x 2 secrets x 3 windows"
    );
}

/// SplitFed under secure aggregation: the coordinator trains the seats
/// itself, but keeps nothing of any hospital's masked part update.
#[test]
fn secure_splitfed_leaves_no_individual_part_with_the_coordinator() {
    let job_toml = oncology_job(3, 3)
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [16, 8]")
        .replace("[training]", "[training]\nmode = \"splitfed\"")
        + "\n[privacy]\naggregation = \"secagg\"\nsecagg = { threshold = 0.66, bits = 32 }\n";
    // Split learning sends activations, which --require-secure-aggregation
    // refuses; the parts are masked all the same.
    coordinator_keeps_no_individual_update_of(&job_toml, &["--keep-contributions"]);
}

/// Runs a 3-hospital job with `privacy` and checks that nothing the
/// coordinator keeps contains any part of a hospital's encoded update.
fn coordinator_keeps_no_individual_update(privacy: &str) -> tempfile::TempDir {
    coordinator_keeps_no_individual_update_of(
        &(oncology_job(3, 3) + privacy),
        &["--keep-contributions", "--require-secure-aggregation"],
    )
}

/// [`coordinator_keeps_no_individual_update`] of `job_toml`, the hospitals
/// started with `flags`.
fn coordinator_keeps_no_individual_update_of(job_toml: &str, flags: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 900, 23);
    let files = split(&csv, &dir.path().join("parts"), 3, 5);
    let net = Net::tls(dir.path(), 3);
    let coord_dir = dir.path().join("coord");
    let coord_log = dir.path().join("coord.log");
    let _coordinator = start_coordinator(&net, &coord_dir, &coord_log);
    let _clients = start_clients_with(&net, &files[..3], dir.path(), flags);
    let job = submit_job_file(dir.path(), job_toml, &net);
    let done = wait_until(&net, &job, Duration::from_secs(300), |s| {
        s["state"] != "running" && s["state"] != "pending"
    });
    assert_eq!(done["state"], "completed", "{done:#}");

    // What each hospital contributed, from its own records.
    let mut contributions = Vec::new();
    for i in 0..3 {
        let kept = dir.path().join(format!("hospital-{i}/contributions"));
        for entry in std::fs::read_dir(&kept).unwrap() {
            contributions.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
    }
    assert_eq!(contributions.len(), 9, "3 hospitals x 3 rounds");

    let kept = coordinator_bytes(&coord_dir, &coord_log);
    // The search reads what it should: the masked updates' digests are in
    // the database (receipts) and the ledger.
    let masked_digest = done["rounds"][0]["updates"][0]["update_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        kept.iter()
            .any(|(_, bytes)| contains(bytes, masked_digest.as_bytes()))
    );
    for contribution in &contributions {
        let values: Vec<u32> = contribution
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut needles: Vec<Vec<u8>> = vec![sha256_hex(contribution).into_bytes()];
        for start in [0, values.len() / 3, values.len() - 9] {
            let raw = &contribution[start * 4..start * 4 + 32];
            // A window of mostly zero bytes would match any page of zeros.
            if raw.iter().filter(|b| **b == 0).count() > 16 {
                continue;
            }
            needles.push(raw.to_vec());
            needles.push(hex::encode(raw).into_bytes());
            let text: Vec<String> = values[start..start + 4]
                .iter()
                .map(u32::to_string)
                .collect();
            needles.push(text.join(",").into_bytes());
        }
        for (path, bytes) in &kept {
            for needle in &needles {
                assert!(
                    !contains(bytes, needle),
                    "{} holds part of a hospital's encoded update",
                    path.display()
                );
            }
        }
    }
    dir
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Record-level DP across processes: a hospital whose budget is too small
/// refuses the job (both epsilons in its reason) and the job goes on
/// without it; a hospital that dies between training and sending has the
/// round in its spending ledger; the others stay within the target, which
/// the job status, the ledger and the model card all record.
#[test]
fn dp_budgets_are_enforced_and_spending_survives_a_crash_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 1200, 29);
    let files = split(&csv, &dir.path().join("parts"), 4, 7);
    let net = Net::Insecure { port: free_port() };
    let coord_dir = dir.path().join("coord");
    let _coordinator = start_coordinator(&net, &coord_dir, &dir.path().join("coord.log"));
    let _capped = start_client(
        &net,
        &files[0],
        dir.path(),
        0,
        &["--max-epsilon", "0.5", "--delta", "1e-5"],
    );
    let mut crashing = start_client(
        &net,
        &files[1],
        dir.path(),
        1,
        &["--vanish-at", "before-send"],
    );
    let _others = [
        start_client(&net, &files[2], dir.path(), 2, &[]),
        start_client(&net, &files[3], dir.path(), 3, &[]),
    ];
    // All four must have registered before the job asks who is there.
    for i in 0..4 {
        let log = dir.path().join(format!("hospital-{i}.log"));
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("registered with the coordinator")
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "hospital-{i} never registered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let job_toml = oncology_job(3, 2)
        .replace("clients_per_round = 2", "clients_per_round = 4")
        .replace("round_timeout_secs = 60", "round_timeout_secs = 15")
        + "\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 2.0\ndelta = 1e-5\nmax_grad_norm = 1.0\n";
    // The statistics given publicly: the budgets at stake are the rounds'.
    let job_toml = job_toml.clone() + &oncology_reference_preprocessing(&job_toml);
    let job = submit_job_file(dir.path(), &job_toml, &net);
    let done = wait_until(&net, &job, Duration::from_secs(300), |s| {
        s["state"] != "running" && s["state"] != "pending"
    });
    assert_eq!(done["state"], "completed", "{done:#}");

    // The capped hospital refused at preparation, saying why in numbers.
    let events = done["events"].to_string();
    assert!(
        events.contains("hospital-0") && events.contains("privacy budget exceeded"),
        "{events}"
    );
    assert!(
        events.contains("needs epsilon") && events.contains("0.5 remaining"),
        "{events}"
    );
    let participants = done["participants"].to_string();
    assert!(!participants.contains("hospital-0"), "{participants}");
    let capped = client_budget(&dir.path().join("hospital-0"));
    assert_eq!(capped["max_epsilon"], 0.5);
    assert_eq!(capped["spent"], 0.0);
    assert_eq!(capped["jobs"].as_array().unwrap().len(), 0);

    // The crashed hospital trained round 1 and never sent it; its ledger
    // has the round anyway.
    assert!(
        crashing.0.try_wait().unwrap().is_some(),
        "hospital-1 should have vanished"
    );
    let crashed = client_budget(&dir.path().join("hospital-1"));
    assert_eq!(crashed["jobs"][0]["job_id"], job.as_str(), "{crashed:#}");
    assert_eq!(crashed["jobs"][0]["rounds"], serde_json::json!([1]));
    let spent_by_crashed = crashed["jobs"][0]["epsilon"].as_f64().unwrap();
    assert!(
        spent_by_crashed > 0.0 && spent_by_crashed < 2.0,
        "{crashed:#}"
    );
    assert!(crashed["spent"].as_f64().unwrap() > 0.0);

    // The hospitals that finished spent at most the target, and said so.
    for i in [2, 3] {
        let name = format!("hospital-{i}");
        let budget = client_budget(&dir.path().join(&name));
        let spent = budget["jobs"][0]["epsilon"].as_f64().unwrap();
        assert!(spent > 1.0 && spent <= 2.0, "{name}: {budget:#}");
        assert_eq!(budget["jobs"][0]["rounds"], serde_json::json!([1, 2, 3]));
        let reported = done["dp_epsilon"][&name].as_f64().unwrap();
        assert!(
            (reported - spent).abs() < 1e-9,
            "{name}: status {reported} vs ledger {spent}"
        );
    }
    // No training loss leaves a hospital under DP.
    for round in done["rounds"].as_array().unwrap() {
        assert!(round["train_loss"].is_null(), "{round:#}");
    }

    let model_dir = get_model(&net, &job, &dir.path().join("model"));
    let card: Value =
        serde_json::from_slice(&std::fs::read(model_dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["privacy"]["level"], "record", "{card:#}");
    assert_eq!(card["privacy"]["delta"], 1e-5);
    let eps = card["privacy"]["epsilon"].as_f64().unwrap();
    assert!(eps > 1.0 && eps <= 2.0, "{card:#}");

    // The spending is on the ledger too, and the ledger still verifies
    // entry by entry (epsilons travel as exact decimals, not floats).
    let verified = Command::new(BIN)
        .args([
            "verify",
            "ledger",
            "--coordinator",
            &net.url(),
            "--insecure",
        ])
        .arg("--state")
        .arg(dir.path().join("seen.json"))
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let shown = cohort_json(&[
        "ledger",
        "show",
        &job,
        "--data-dir",
        coord_dir.to_str().unwrap(),
        "--json",
    ])
    .to_string();
    assert!(shown.contains("dp_epsilon"), "{shown}");
}

/// Rewrites `file` with its `recurrence` labels shuffled among its rows: a
/// hospital whose data carries no signal (a free rider that still trains).
fn shuffle_labels(file: &Path, seed: u64) {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let label = header.split(',').position(|c| c == "recurrence").unwrap();
    let mut rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let mut labels: Vec<String> = rows.iter().map(|r| r[label].clone()).collect();
    labels.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    for (row, l) in rows.iter_mut().zip(labels) {
        row[label] = l;
    }
    let mut out = header + "\n";
    for row in rows {
        out += &(row.join(",") + "\n");
    }
    std::fs::write(file, out).unwrap();
}

/// Per-job checks of `cohort rewards show JOB --json`: every round pays
/// out exactly its emission, and the shuffled-label hospital has the
/// smallest value and at most half the smallest honest reward. Returns
/// each round's (height, emission).
fn check_rewards(net: &Net, job: &str, rounds: usize, free_rider: &str) -> Vec<(u64, u64)> {
    let shown = cohort_as(net, &["rewards", "show", job, "--json"]);
    let paid = shown["rounds"].as_array().unwrap();
    assert_eq!(paid.len(), rounds, "{shown:#}");
    let mut emissions = Vec::new();
    for r in paid {
        let emission = r["emission"].as_u64().unwrap();
        let sum: u64 = r["hospitals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["reward"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, emission, "round {r:#}");
        assert!(r["utility_evaluations"].as_u64().unwrap() >= 4, "{r:#}");
        emissions.push((r["height"].as_u64().unwrap(), emission));
    }
    let hospitals = shown["hospitals"].as_array().unwrap();
    assert_eq!(hospitals.len(), 4, "{shown:#}");
    for h in hospitals {
        eprintln!(
            "job {job}: {} value {} reward {}",
            h["name"], h["value"], h["reward"]
        );
    }
    let total: u64 = hospitals
        .iter()
        .map(|h| h["reward"].as_u64().unwrap())
        .sum();
    assert_eq!(total, shown["emitted"].as_u64().unwrap());
    let rider = hospitals.iter().find(|h| h["name"] == free_rider).unwrap();
    let honest: Vec<&Value> = hospitals
        .iter()
        .filter(|h| h["name"] != free_rider)
        .collect();
    let value = |h: &Value| h["value"].as_f64().unwrap();
    let reward = |h: &Value| h["reward"].as_u64().unwrap();
    assert!(
        honest.iter().all(|h| value(h) > value(rider)),
        "the shuffled-label hospital must have the smallest value: {shown:#}"
    );
    let least_honest = honest.iter().map(|h| reward(h)).min().unwrap();
    assert!(
        2 * reward(rider) <= least_honest,
        "the shuffled-label hospital earns at most half the smallest honest reward: {shown:#}"
    );
    emissions
}

#[test]
fn rewards_follow_value_halve_across_a_restart_and_verify_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 1600, 31);
    let files = split(&csv, &dir.path().join("parts"), 4, 7);
    shuffle_labels(&files[3], 5);
    let net = Net::Insecure { port: free_port() };
    let coord_dir = dir.path().join("coord");
    let schedule = ["--emission-initial", "1000003", "--emission-halving", "6"];
    let start = |log: &str| {
        let args = with(
            &[
                "coordinator",
                "--listen",
                &format!("127.0.0.1:{}", net.port()),
                "--data-dir",
                coord_dir.to_str().unwrap(),
                "--poll-timeout-secs",
                "1",
            ],
            &net.args("coordinator"),
        );
        let args = with(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &schedule.map(String::from),
        );
        spawn(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &dir.path().join(log),
        )
    };
    let coordinator = start("coord-1.log");
    let _clients = start_clients(&net, &files[..4], dir.path());
    let valued = |rounds: u32, privacy: &str| {
        oncology_job(rounds, 4).replace("local_epochs = 2", "local_epochs = 1")
            + privacy
            + "\n[valuation]\ngroup_size = 2\n"
    };
    let finish = |job: &str| {
        let done = wait_until(&net, job, Duration::from_secs(300), |s| {
            s["state"] != "running" && s["state"] != "pending"
        });
        assert_eq!(done["state"], "completed", "{done:#}");
    };

    // Plain: exact Shapley over the four hospitals' updates.
    let plain = submit_job_file(dir.path(), &valued(4, ""), &net);
    finish(&plain);
    let first = check_rewards(&net, &plain, 4, "hospital-3");
    assert_eq!(
        first,
        [(0, 1000003), (1, 1000003), (2, 1000003), (3, 1000003)]
    );

    // A restart: the height lives in the coordinator's SQLite.
    drop(coordinator);
    let coordinator = start("coord-2.log");
    let secagg = submit_job_file(
        dir.path(),
        // Partition valuation separates the members of a pair only as
        // groups change: six rounds show each of the three pairings twice.
        &valued(6, "\n[privacy]\naggregation = \"secagg\"\n"),
        &net,
    );
    finish(&secagg);
    let second = check_rewards(&net, &secagg, 6, "hospital-3");
    // Heights go on from 4; the emission halves at height 6.
    assert_eq!(
        second,
        [
            (4, 1000003),
            (5, 1000003),
            (6, 500001),
            (7, 500001),
            (8, 500001),
            (9, 500001)
        ]
    );

    // Secure aggregation only ever released group sums of two or more.
    let entries = cohort_json(&[
        "ledger",
        "show",
        &secagg,
        "--data-dir",
        coord_dir.to_str().unwrap(),
        "--json",
    ]);
    let text = entries.to_string();
    assert!(text.contains("partition-least-squares"), "{text}");
    assert!(text.contains("group_seed"), "{text}");

    // The SVG plot and the priced report.
    let svg = dir.path().join("rewards.svg");
    let prices = dir.path().join("prices.csv");
    std::fs::write(&prices, "height,price\n0,2.0\n6,3.5\n").unwrap();
    let priced = cohort_as(
        &net,
        &[
            "rewards",
            "show",
            "--plot",
            svg.to_str().unwrap(),
            "--price-csv",
            prices.to_str().unwrap(),
            "--price-unit",
            "1000000",
            "--json",
        ],
    );
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("hospital-3"));
    let emitted = priced["currency"]["emitted"].as_f64().unwrap();
    let expected = 6.0 * 1.000003 * 2.0 + 4.0 * 0.500001 * 3.5;
    assert!((emitted - expected).abs() < 1e-6, "{priced:#}");

    drop(coordinator);
    // Every payout recomputed from the ledger alone.
    let verified = cohort_json(&[
        "rewards",
        "verify",
        "--data-dir",
        coord_dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(verified["rounds_paid"], 10, "{verified:#}");
    assert_eq!(verified["partition_rounds_checked"], 6, "{verified:#}");
    assert_eq!(verified["emitted"], 6 * 1000003 + 4 * 500001);

    // The schedule is the consortium's: a restart with another one is refused.
    let refused = Command::new(BIN)
        .args([
            "coordinator",
            "--insecure",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            coord_dir.to_str().unwrap(),
            "--emission-initial",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--emission-initial 1000003"), "{stderr}");

    // A payout edited on the ledger (and re-signed with the coordinator's
    // own key) no longer verifies.
    let key = cohort_identity::MessageSigningKey::load_or_create(
        &coord_dir.join("ledger-signing-key.pem"),
    )
    .unwrap();
    rewrite_ledger(&coord_dir, &key, |record| match record {
        cohort_ledger::Record::RewardsPaid { hospitals, .. } => {
            hospitals[0].reward += 1;
            hospitals[1].reward -= 1;
            true
        }
        _ => false,
    });
    let tampered = Command::new(BIN)
        .args([
            "rewards",
            "verify",
            "--data-dir",
            coord_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!tampered.status.success());
    assert!(
        String::from_utf8_lossy(&tampered.stderr).contains("not the split"),
        "{}",
        String::from_utf8_lossy(&tampered.stderr)
    );
}

/// Vertical split learning in real processes (issue 18): the coordinator is
/// killed mid-job, and the restarted one aligns the sites again and goes on
/// from the first layer it stored and the digest of the top part the label
/// site kept in its `--data-dir`. At the end the label site runs the whole
/// model with `cohort model get` and `cohort evaluate --top-from`; without
/// its top the first layer refuses to run.
#[test]
fn a_vertical_job_resumes_after_a_coordinator_restart_with_the_top_at_the_label_site() {
    let dir = tempfile::tempdir().unwrap();
    let wdbc = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/wdbc.csv");
    let sites = dir.path().join("sites");
    cohort_json(&[
        "data",
        "split-vertical",
        wdbc.to_str().unwrap(),
        "--sites",
        "3",
        "--out",
        sites.to_str().unwrap(),
        "--id",
        "patient_id",
        "--label",
        "diagnosis",
        "--seed",
        "11",
        "--json",
    ]);
    let files: Vec<PathBuf> = (1..=3)
        .map(|i| sites.join(format!("site_{i}.csv")))
        .collect();
    let net = Net::Insecure { port: free_port() };
    let data_dir = dir.path().join("coord");
    let mut coordinator = start_coordinator(&net, &data_dir, &dir.path().join("coord-1.log"));
    // hospital-0 holds site_1.csv, the diagnosis: the label site.
    let _clients = start_clients(&net, &files, dir.path());
    let rounds: u32 = 12;
    let job_toml = include_str!("../examples/wdbc-vertical.toml")
        .replace("rounds = 2", &format!("rounds = {rounds}"))
        .replace("local_epochs = 10", "local_epochs = 1");
    let job = submit_job_file(dir.path(), &job_toml, &net);
    wait_until(&net, &job, Duration::from_secs(120), |s| {
        s["rounds_completed"].as_u64() >= Some(2)
    });
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let _restarted = start_coordinator(&net, &data_dir, &dir.path().join("coord-2.log"));
    let done = wait_finished(&net, &job);
    assert_eq!(done["state"], "completed", "{done:#}");
    let recorded = recorded_rounds(&done);
    assert_eq!(recorded, (1..=u64::from(rounds)).collect::<Vec<_>>());
    let aligned = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("private set intersection"))
        })
        .count();
    assert!(aligned >= 2, "aligned again after the restart: {done:#}");

    let model = dir.path().join("model");
    let got = cohort_as(
        &net,
        &[
            "model",
            "get",
            &job,
            "--out",
            model.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(got["kept_top"]["site"], "hospital-0", "{got:#}");
    let kept = got["kept_top"]["sha256"].as_str().unwrap().to_string();
    let label_site = dir.path().join("hospital-0");
    let top = label_site
        .join("vertical-tops")
        .join(&job)
        .join(format!("top-{kept}.f32"));
    assert!(top.is_file(), "{} is missing", top.display());
    let evaluate = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--model",
            model.to_str().unwrap(),
            "--data",
            wdbc.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        Command::new(BIN).args(&args).output().unwrap()
    };
    let refused = evaluate(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("never left the label site hospital-0"),
        "{stderr}"
    );
    let metrics = cohort_json(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        wdbc.to_str().unwrap(),
        "--top-from",
        label_site.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(metrics["examples"], 569, "{metrics:#}");
    assert!(metrics["auc"].as_f64().unwrap() >= 0.97, "{metrics:#}");
}
