//! The coordinator on the backends an institution already operates: its
//! state in a real PostgreSQL server (`--database postgres://...`) and its
//! models in a real S3-compatible object store (`--object-store
//! s3://bucket/prefix`), as separate processes on loopback: a job across
//! two hospitals, a coordinator killed mid-job and restarted from what the
//! backends hold, the ledger verified, the model served back.
//!
//! PostgreSQL: `COHORT_TEST_POSTGRES_URL` names a server the test may
//! create a database on (each test makes its own). S3: `COHORT_TEST_S3_BUCKET`
//! names a bucket, reached with the standard `AWS_*` variables
//! (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, credentials, region). Without them
//! the tests skip with a message, unless `COHORT_REQUIRE_POSTGRES` /
//! `COHORT_REQUIRE_S3` is set (CI sets both), when they fail instead.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cohort_coordinator::store::testing::{TestDatabase, postgres_server};
use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// `s3://BUCKET/PREFIX` unique to this call, or `None` (skip) when no
/// bucket is configured and `COHORT_REQUIRE_S3` is unset.
fn s3_prefix(label: &str) -> Option<String> {
    match std::env::var("COHORT_TEST_S3_BUCKET") {
        Ok(bucket) if !bucket.is_empty() => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            Some(format!(
                "s3://{bucket}/{label}-{}-{nanos}",
                std::process::id()
            ))
        }
        _ => {
            assert!(
                std::env::var_os("COHORT_REQUIRE_S3").is_none(),
                "COHORT_REQUIRE_S3 is set but COHORT_TEST_S3_BUCKET is not (a bucket on the S3 server that AWS_ENDPOINT_URL names)"
            );
            eprintln!("COHORT_TEST_S3_BUCKET is not set: skipping the S3 test");
            None
        }
    }
}

fn cohort_output(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn cohort(args: &[&str]) -> Value {
    let out = cohort_output(args);
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

/// One coordinator's command line and the place its logs go.
struct Setup {
    dir: PathBuf,
    port: u16,
    database: Option<String>,
    objects: Option<String>,
}

impl Setup {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("coord")
    }

    fn start_coordinator(&self, log: &str) -> Proc {
        let mut args = vec![
            "coordinator".to_string(),
            "--insecure".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--data-dir".into(),
            self.data_dir().display().to_string(),
            "--poll-timeout-secs".into(),
            "1".into(),
        ];
        if let Some(objects) = &self.objects {
            args.extend(["--object-store".into(), objects.clone()]);
        }
        let mut command = Command::new(BIN);
        command.args(&args);
        // The URL travels in the environment, as the help advises.
        if let Some(database) = &self.database {
            command.env("COHORT_DATABASE_URL", database);
        }
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        Proc(command.stdout(Stdio::null()).stderr(log).spawn().unwrap())
    }

    fn start_clients(&self, files: &[PathBuf]) -> Vec<Proc> {
        files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                let name = format!("hospital-{i}");
                let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
                Proc(
                    Command::new(BIN)
                        .args([
                            "client",
                            "--insecure",
                            "--coordinator",
                            &self.url(),
                            "--name",
                            &name,
                            "--data",
                            file.to_str().unwrap(),
                            "--data-dir",
                            self.dir.join(&name).to_str().unwrap(),
                        ])
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .unwrap(),
                )
            })
            .collect()
    }

    fn developer(&self, args: &[&str]) -> Value {
        let url = self.url();
        let mut all = args.to_vec();
        all.extend(["--insecure", "--coordinator", &url]);
        cohort(&all)
    }

    fn status(&self, job: &str) -> Option<Value> {
        let out = cohort_output(&[
            "job",
            "status",
            job,
            "--json",
            "--insecure",
            "--coordinator",
            &self.url(),
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    }

    fn wait_until(&self, job: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(job)
                && done(&s)
            {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "timed out waiting on job {job}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn submit(&self, job_toml: &str) -> String {
        let job_file = self.dir.join("job.toml");
        std::fs::write(&job_file, job_toml).unwrap();
        let start = Instant::now();
        // The coordinator may still be connecting to its database.
        loop {
            let url = self.url();
            let out = cohort_output(&[
                "job",
                "submit",
                job_file.to_str().unwrap(),
                "--json",
                "--insecure",
                "--coordinator",
                &url,
            ]);
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                return v["job_id"].as_str().unwrap().to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "job submit failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Two hospitals train a job; the coordinator is killed after round 2 and
/// restarted on the same backends; the job completes with every round
/// recorded once, the ledger verifies over gRPC, and the model comes back
/// with `cohort model get`.
fn job_survives_a_restart(setup: &Setup) -> Value {
    let csv = setup.dir.join("oncology.csv");
    synthetic_oncology_csv(&csv, 600, 31);
    let files = split(&csv, &setup.dir.join("parts"), 2, 5);
    let mut coordinator = setup.start_coordinator("coord-1.log");
    let _clients = setup.start_clients(&files);
    let rounds = 30;
    let job = setup.submit(&oncology_job(rounds, 2));
    setup.wait_until(&job, |s| s["rounds_completed"].as_u64() >= Some(2));
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    // Killed mid-job (this is what the restart has to resume from).
    let recorded_before = rounds_recorded_in(setup, &job);
    assert!(
        recorded_before < u64::from(rounds),
        "the job ended before the kill"
    );
    coordinator.0.wait().unwrap();

    let _restarted = setup.start_coordinator("coord-2.log");
    let done = setup.wait_until(&job, |s| {
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
    let log = std::fs::read_to_string(setup.dir.join("coord-2.log")).unwrap();
    assert!(log.contains("resuming"), "{log}");

    let state = setup.dir.join("seen.json");
    let audit = setup.developer(&[
        "verify",
        "ledger",
        "--state",
        state.to_str().unwrap(),
        "--json",
    ]);
    // Coordinator key, job created, enrollment, rounds 0..=30.
    assert_eq!(audit["entries"], 3 + 1 + u64::from(rounds), "{audit:#}");

    let model = setup.dir.join("model");
    setup.developer(&[
        "model",
        "get",
        &job,
        "--out",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert!(model.join("model.safetensors").metadata().unwrap().len() > 0);
    let verified = cohort(&[
        "verify",
        "model",
        model.to_str().unwrap(),
        "--public-key",
        &write_coordinator_key(setup),
        "--json",
    ]);
    assert!(verified["signature_sha256"].is_string(), "{verified:#}");
    done
}

/// How many rounds of `job` the coordinator's database holds, read with
/// the store itself while no coordinator runs.
fn rounds_recorded_in(setup: &Setup, job: &str) -> u64 {
    let store = cohort_coordinator::store::Store::open_with_database(
        &setup.data_dir(),
        setup.database.as_deref(),
        Some("memory:///"),
    )
    .unwrap();
    u64::from(store.job(job).unwrap().unwrap().rounds_completed)
}

/// The coordinator's ledger key (kept in the data directory under
/// `--insecure`), as a PEM file for `cohort verify model`.
fn write_coordinator_key(setup: &Setup) -> String {
    let key = setup.dir.join("coordinator.pub.pem").display().to_string();
    let pem = std::fs::read(setup.data_dir().join("ledger-signing-key.pem")).unwrap();
    let signing =
        cohort_identity::MessageSigningKey::from_pem(&String::from_utf8(pem).unwrap()).unwrap();
    std::fs::write(&key, signing.verifying_key().spki_pem()).unwrap();
    key
}

#[test]
fn a_job_on_postgres_survives_a_coordinator_restart() {
    let Some(server) = postgres_server() else {
        return;
    };
    let database = TestDatabase::create(&server, "job_restart").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        dir: dir.path().to_path_buf(),
        port: free_port(),
        database: Some(database.url().to_string()),
        objects: None,
    };
    let done = job_survives_a_restart(&setup);
    // An auditor with read access to the database checks the same ledger
    // straight from it.
    let audit = cohort(&[
        "verify",
        "ledger",
        "--database",
        database.url(),
        "--state",
        dir.path().join("seen-db.json").to_str().unwrap(),
        "--json",
    ]);
    let rounds = done["rounds"].as_array().unwrap().len() as u64;
    assert_eq!(audit["entries"], 3 + 1 + rounds, "{audit:#}");
    // The state was in PostgreSQL, not in a SQLite file beside the models.
    assert!(!setup.data_dir().join("coordinator.sqlite").exists());
    let log = std::fs::read_to_string(dir.path().join("coord-1.log")).unwrap();
    assert!(log.contains("coordinator state opened"), "{log}");
    if let Some(password) = url_password(database.url()) {
        assert!(
            !log.contains(&password),
            "the log shows the password: {log}"
        );
    }
}

#[test]
fn models_land_in_s3_and_come_back_after_a_restart() {
    let Some(objects) = s3_prefix("job-restart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        dir: dir.path().to_path_buf(),
        port: free_port(),
        database: None,
        objects: Some(objects),
    };
    job_survives_a_restart(&setup);
    // Nothing went to the local object directory.
    let local = setup.data_dir().join("objects");
    assert!(
        !local.exists() || std::fs::read_dir(&local).unwrap().next().is_none(),
        "models were written to {}",
        local.display()
    );
}

#[test]
fn a_coordinator_names_a_bad_database_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = Command::new(BIN)
        .args([
            "coordinator",
            "--insecure",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            dir.path().join("coord").to_str().unwrap(),
            "--database",
            &format!("postgres://cohort:hunter2@127.0.0.1:{port}/cohort"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

fn url_password(url: &str) -> Option<String> {
    let at = url.find('@')?;
    let credentials = &url[url.find("://")? + 3..at];
    credentials.split_once(':').map(|(_, p)| p.to_string())
}
