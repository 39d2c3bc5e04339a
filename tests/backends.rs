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

/// One coordinator's command line (and its standby's, if any) and the
/// place their logs go.
struct Setup {
    dir: PathBuf,
    port: u16,
    /// A second coordinator's port, on the same database: hospitals and
    /// developers are given both addresses.
    standby_port: Option<u16>,
    database: Option<String>,
    objects: Option<String>,
    /// Run the coordinator with its data directory on a tmpfs of this many
    /// MiB, in a mount namespace of its own (`unshare`): a disk that fills.
    tmpfs_mib: Option<u32>,
    /// With `tmpfs_mib`: the object store on a second tmpfs of its own
    /// (`DATA_DIR/objects`), which the test turns read-only and back by
    /// creating `DIR/objects.ro` and `DIR/objects.rw` (a watcher inside the
    /// namespace remounts it; `DIR/objects.is-ro` says it is read-only).
    read_only_objects: bool,
}

impl Setup {
    fn url(&self) -> String {
        let mut url = format!("http://127.0.0.1:{}", self.port);
        if let Some(port) = self.standby_port {
            url.push_str(&format!(",http://127.0.0.1:{port}"));
        }
        url
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("coord")
    }

    fn standby_data_dir(&self) -> PathBuf {
        self.dir.join("coord-standby")
    }

    fn start_coordinator(&self, log: &str) -> Proc {
        self.start_coordinator_at(self.port, &self.data_dir(), log)
    }

    /// [`Setup::start_coordinator`], once its log says it is listening.
    fn start_listening_coordinator(&self, log: &str) -> Proc {
        let coordinator = self.start_coordinator(log);
        wait_for_log(
            &self.dir,
            log,
            "coordinator listening",
            Duration::from_secs(60),
        );
        coordinator
    }

    fn start_standby(&self, log: &str) -> Proc {
        let port = self.standby_port.expect("a setup without a standby");
        self.start_coordinator_at(port, &self.standby_data_dir(), log)
    }

    fn start_coordinator_at(&self, port: u16, data_dir: &std::path::Path, log: &str) -> Proc {
        let mut args = vec![
            "coordinator".to_string(),
            "--insecure".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--poll-timeout-secs".into(),
            "1".into(),
        ];
        if let Some(objects) = &self.objects {
            args.extend(["--object-store".into(), objects.clone()]);
        }
        let mut command = match self.tmpfs_mib {
            None => Command::new(BIN),
            Some(mib) => {
                std::fs::create_dir_all(data_dir).unwrap();
                let mut command = Command::new("unshare");
                let script = if self.read_only_objects {
                    // The mounts finish before the coordinator starts (only
                    // the watcher runs in the background). $$ stays this
                    // process's id after `exec`: the watcher ends with the
                    // coordinator.
                    "mount -t tmpfs -o size=\"$1\"m cohort-test-disk \"$2\" \
                     && mkdir \"$2/objects\" \
                     && mount -t tmpfs -o size=64m cohort-test-objects \"$2/objects\" \
                     || exit 1; \
                     (while kill -0 $$ 2>/dev/null; do \
                           if [ -e \"$3.ro\" ] && mount -o remount,ro \"$2/objects\" 2>/dev/null; then \
                             rm -f \"$3.ro\"; touch \"$3.is-ro\"; fi; \
                           if [ -e \"$3.rw\" ] && mount -o remount,rw \"$2/objects\"; then \
                             rm -f \"$3.rw\" \"$3.is-ro\"; fi; \
                           sleep 0.1; \
                         done) & \
                     shift 3 && exec \"$@\""
                } else {
                    "mount -t tmpfs -o size=\"$1\"m cohort-test-disk \"$2\" && shift 3 && exec \"$@\""
                };
                command
                    .args(unshare_mount_namespace())
                    .args(["sh", "-c", script, "sh", &mib.to_string()])
                    .arg(data_dir)
                    .arg(self.dir.join("objects"))
                    .arg(BIN);
                command
            }
        };
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
        cohort_json(&all)
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

    /// Waits for `job` to finish; it must have completed with rounds
    /// 1..=`rounds` recorded once each.
    fn completes_with_every_round_once(&self, job: &str, rounds: u32) -> Value {
        let done = self.wait_until(job, |s| s["state"] == "completed" || s["state"] == "failed");
        assert_eq!(done["state"], "completed", "{done:#}");
        let recorded: Vec<u64> = done["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["round"].as_u64().unwrap())
            .collect();
        assert_eq!(recorded, (1..=u64::from(rounds)).collect::<Vec<_>>());
        done
    }

    /// Downloads `job`'s model and verifies its signature against the
    /// ledger key kept in `key_dir` (a coordinator's data directory).
    fn model_verifies(&self, job: &str, key_dir: &std::path::Path) {
        let model = self.dir.join("model");
        self.developer(&[
            "model",
            "get",
            job,
            "--out",
            model.to_str().unwrap(),
            "--json",
        ]);
        assert!(model.join("model.safetensors").metadata().unwrap().len() > 0);
        let verified = cohort_json(&[
            "verify",
            "model",
            model.to_str().unwrap(),
            "--public-key",
            &write_key_of(self, key_dir),
            "--json",
        ]);
        assert!(verified["signature_sha256"].is_string(), "{verified:#}");
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
    // Rounds take milliseconds here: enough of them that the kill lands
    // mid-job (30 were once all done before it).
    let rounds = 300;
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
    let done = setup.completes_with_every_round_once(&job, rounds);
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
    // Coordinator key, job created, enrollment, one entry per round.
    assert_eq!(audit["entries"], 3 + 1 + u64::from(rounds), "{audit:#}");

    setup.model_verifies(&job, &setup.data_dir());
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

/// The ledger key a coordinator keeps in `data_dir` under `--insecure`,
/// as a PEM file for `cohort verify model`.
fn write_key_of(setup: &Setup, data_dir: &std::path::Path) -> String {
    let key = setup.dir.join("coordinator.pub.pem").display().to_string();
    let pem = std::fs::read(data_dir.join("ledger-signing-key.pem")).unwrap();
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
        standby_port: None,
        tmpfs_mib: None,
        read_only_objects: false,
        database: Some(database.url().to_string()),
        objects: None,
    };
    let done = job_survives_a_restart(&setup);
    // An auditor with read access to the database checks the same ledger
    // straight from it.
    let audit = cohort_json(&[
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
    // The rest of an auditor's tools read the same database: the model
    // downloaded above, checked against its key and found on its ledger.
    let verified = cohort_json(&[
        "verify",
        "model",
        dir.path().join("model").to_str().unwrap(),
        "--database",
        database.url(),
        "--state",
        dir.path().join("seen-db.json").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(verified["job_id"], done["job_id"], "{verified:#}");
    assert_eq!(verified["round"].as_u64(), Some(rounds), "{verified:#}");
    let entries = cohort_json(&["ledger", "show", "--database", database.url(), "--json"]);
    assert_eq!(entries.as_array().unwrap().len() as u64, 3 + 1 + rounds);
    let out = cohort_output(&["coordinator", "signing-key", "--database", database.url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published = std::fs::read_to_string(write_key_of(&setup, &setup.data_dir())).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), published);
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

/// Waits until the log file `name` in `dir` contains `text`.
/// Waits for the coordinator to log `stall` (its storage refusing writes),
/// then checks for 3 s that the job stays running without recording a
/// round (`why` says what recording one would mean).
fn assert_job_stalls(setup: &Setup, dir: &std::path::Path, job: &str, stall: &str, why: &str) {
    wait_for_log(dir, "coord.log", stall, Duration::from_secs(60));
    let stalled = setup.status(job).unwrap();
    assert_eq!(stalled["state"], "running", "{stalled:#}");
    std::thread::sleep(Duration::from_secs(3));
    let still = setup.status(job).unwrap();
    assert_eq!(still["state"], "running", "{still:#}");
    assert_eq!(
        still["rounds_completed"], stalled["rounds_completed"],
        "{why}"
    );
}

fn wait_for_log(dir: &std::path::Path, name: &str, text: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{name} did not say `{text}` within {limit:?}: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two coordinators on one PostgreSQL database and one object store, the
/// hospitals and the developer given both addresses, and a long job
/// running on the active one.
struct Pair {
    setup: Setup,
    active: Proc,
    _standby: Proc,
    _clients: Vec<Proc>,
    job: String,
    rounds: u32,
}

impl Pair {
    fn start(database: &TestDatabase, dir: &std::path::Path) -> Pair {
        let shared = dir.join("shared-objects");
        std::fs::create_dir_all(&shared).unwrap();
        let setup = Setup {
            dir: dir.to_path_buf(),
            port: free_port(),
            standby_port: Some(free_port()),
            database: Some(database.url().to_string()),
            objects: Some(format!("file://{}", shared.display())),
            tmpfs_mib: None,
            read_only_objects: false,
        };
        let csv = dir.join("oncology.csv");
        synthetic_oncology_csv(&csv, 600, 37);
        let files = split(&csv, &dir.join("parts"), 3, 5);
        let active = setup.start_listening_coordinator("active.log");
        // Both sign the one ledger with one key: under mutual TLS the same
        // startup kit, under --insecure a copy of the key file.
        std::fs::create_dir_all(setup.standby_data_dir()).unwrap();
        std::fs::copy(
            setup.data_dir().join("ledger-signing-key.pem"),
            setup.standby_data_dir().join("ledger-signing-key.pem"),
        )
        .unwrap();
        let standby = setup.start_standby("standby.log");
        wait_for_log(dir, "standby.log", "standing by", Duration::from_secs(60));
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", setup.standby_port.unwrap())).is_err(),
            "the standby listens before it holds the lease"
        );
        let clients = setup.start_clients(&files);
        // Rounds take milliseconds here: enough of them that what the test
        // does to the active coordinator lands mid-job.
        let rounds = 300;
        let job = setup.submit(&oncology_job(rounds, 3));
        setup.wait_until(&job, |s| s["rounds_completed"].as_u64() >= Some(2));
        Pair {
            setup,
            active,
            _standby: standby,
            _clients: clients,
            job,
            rounds,
        }
    }

    /// Waits for the standby to serve, then for a round to complete under
    /// it; returns both times, counted from `since`.
    fn standby_serves(&self, since: Instant, completed_before: u64) -> (Duration, Duration) {
        wait_for_log(
            &self.setup.dir,
            "standby.log",
            "coordinator listening",
            Duration::from_secs(30),
        );
        let serving = since.elapsed();
        // The developer's commands, given both addresses, reach the standby.
        self.setup.wait_until(&self.job, |s| {
            s["rounds_completed"].as_u64() > Some(completed_before + 1)
        });
        (serving, since.elapsed())
    }

    /// The job completes with every round recorded once, the ledger
    /// verifies from the database, and the model verifies against the
    /// coordinators' key.
    fn completes_once(&self, database: &TestDatabase) {
        let setup = &self.setup;
        setup.completes_with_every_round_once(&self.job, self.rounds);
        let log = std::fs::read_to_string(setup.dir.join("standby.log")).unwrap();
        assert!(log.contains("took over as the active coordinator"), "{log}");
        assert!(log.contains("resuming unfinished job"), "{log}");
        let audit = cohort_json(&[
            "verify",
            "ledger",
            "--database",
            database.url(),
            "--state",
            setup.dir.join("seen-db.json").to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(
            audit["entries"],
            3 + 1 + u64::from(self.rounds),
            "{audit:#}"
        );
        setup.model_verifies(&self.job, &setup.data_dir());
    }
}

/// The active coordinator is SIGKILLed mid-job: the standby, which was not
/// even listening, holds the lease and serves within 10 s and resumes the
/// job, which completes as if nothing happened.
#[test]
fn a_standby_coordinator_takes_over_when_the_active_one_is_killed() {
    let Some(server) = postgres_server() else {
        return;
    };
    let database = TestDatabase::create(&server, "standby").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut pair = Pair::start(&database, dir.path());
    pair.active.0.kill().unwrap();
    let killed = Instant::now();
    pair.active.0.wait().unwrap();
    let completed_before = rounds_recorded_in(&pair.setup, &pair.job);
    assert!(
        completed_before < u64::from(pair.rounds) - 1,
        "the job ended before the kill"
    );
    let (serving, training) = pair.standby_serves(killed, completed_before);
    eprintln!(
        "killed: the standby served {:.2} s later; a round completed under it {:.2} s later",
        serving.as_secs_f64(),
        training.as_secs_f64()
    );
    assert!(
        serving < Duration::from_secs(10),
        "the standby took {serving:?} to take over"
    );
    // What an operator sees: the standby holds the lease after one takeover.
    let lease = cohort_json(&[
        "coordinator",
        "lease",
        "--database",
        database.url(),
        "--json",
    ]);
    assert_eq!(lease["held"], true, "{lease:#}");
    assert_eq!(lease["holder"]["epoch"], 2, "{lease:#}");
    let standby = format!("127.0.0.1:{} ", pair.setup.standby_port.unwrap());
    assert!(
        lease["holder"]["holder"]
            .as_str()
            .unwrap()
            .contains(&standby),
        "{lease:#}"
    );
    // Pointed at a database no coordinator uses, it says so and creates
    // nothing there.
    let elsewhere = TestDatabase::create(&server, "no_coordinator").unwrap();
    let out = cohort_output(&["coordinator", "lease", "--database", elsewhere.url()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no coordinator of this version has run"),
        "{stderr}"
    );
    pair.completes_once(&database);
}

/// The active coordinator freezes (SIGSTOP: a long pause, or a partition
/// from the database it cannot see) while its lease runs out; the standby
/// takes over. When the old one wakes, in the middle of whatever it was
/// doing, it finds the lease gone: it writes nothing and stops serving.
#[test]
fn a_coordinator_that_wakes_up_without_its_lease_writes_nothing_and_stops() {
    let Some(server) = postgres_server() else {
        return;
    };
    let database = TestDatabase::create(&server, "standby_pause").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut pair = Pair::start(&database, dir.path());
    let pid = pair.active.0.id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let paused = Instant::now();
    let completed_before = rounds_recorded_in(&pair.setup, &pair.job);
    let (serving, training) = pair.standby_serves(paused, completed_before);
    eprintln!(
        "paused: the standby served {:.2} s later; a round completed under it {:.2} s later",
        serving.as_secs_f64(),
        training.as_secs_f64()
    );
    signal("-CONT");
    let woke = Instant::now();
    let status = loop {
        if let Some(status) = pair.active.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            woke.elapsed() < Duration::from_secs(30),
            "the coordinator that lost its lease is still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("active.log")).unwrap();
    assert!(log.contains("lost the coordinator lease"), "{log}");
    pair.completes_once(&database);
}

/// `unshare`'s flags for a mount namespace in which a tmpfs can be
/// mounted: a user namespace of its own where unprivileged ones are
/// allowed, else (as root) just the mount namespace.
fn unshare_mount_namespace() -> &'static [&'static str] {
    static FLAGS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        let candidates: [&'static [&'static str]; 2] =
            [&["--user", "--map-root-user", "--mount"], &["--mount"]];
        for flags in candidates {
            let works = Command::new("unshare")
                .args(flags)
                .args(["sh", "-c", "mount -t tmpfs -o size=1m probe /mnt"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if works {
                return flags;
            }
        }
        panic!(
            "this machine cannot mount a tmpfs in a mount namespace (`unshare --user \
             --map-root-user --mount` and `unshare --mount` both failed): the full-disk test \
             needs one (util-linux's unshare, and unprivileged user namespaces or root)"
        )
    })
}

/// The coordinator's data directory fills up mid-job (a 24 MiB tmpfs, a
/// ballast file written until the kernel refuses): rounds fail with a
/// clear error and the job waits instead of failing; once the ballast is
/// removed it goes on, and the job completes with every round recorded
/// once, the SQLite ledger intact and the model verifiable.
#[test]
fn a_full_disk_stalls_the_job_and_it_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        dir: dir.path().to_path_buf(),
        port: free_port(),
        standby_port: None,
        database: None,
        objects: None,
        tmpfs_mib: Some(24),
        read_only_objects: false,
    };
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 600, 41);
    let files = split(&csv, &dir.path().join("parts"), 2, 5);
    let coordinator = setup.start_listening_coordinator("coord.log");
    // The data directory as the coordinator sees it: on its tmpfs.
    let disk = PathBuf::from(format!("/proc/{}/root", coordinator.0.id()))
        .join(setup.data_dir().strip_prefix("/").unwrap());
    assert!(disk.join("coordinator.sqlite").exists());
    let _clients = setup.start_clients(&files);
    let rounds = 300;
    let job = setup.submit(&oncology_job(rounds, 2));
    setup.wait_until(&job, |s| s["rounds_completed"].as_u64() >= Some(2));

    let ballast = disk.join("ballast");
    fill(&ballast);
    assert_job_stalls(
        &setup,
        dir.path(),
        &job,
        "storage is full",
        "rounds were recorded on a full disk",
    );
    let log = std::fs::read_to_string(dir.path().join("coord.log")).unwrap();
    assert!(
        log.contains("No space left on device") || log.contains("disk is full"),
        "{log}"
    );

    std::fs::remove_file(&ballast).unwrap();
    setup.completes_with_every_round_once(&job, rounds);
    // The SQLite file itself (copied out: SQLite resolves the /proc/PID/root
    // link to this namespace's empty mount point), now that nothing writes.
    let copy = dir.path().join("state-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["coordinator.sqlite", "coordinator.sqlite-wal"] {
        if disk.join(name).exists() {
            std::fs::copy(disk.join(name), copy.join(name)).unwrap();
        }
    }
    let audit = cohort_json(&[
        "verify",
        "ledger",
        "--data-dir",
        copy.to_str().unwrap(),
        "--state",
        dir.path().join("seen.json").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(audit["entries"], 3 + 1 + u64::from(rounds), "{audit:#}");
    setup.model_verifies(&job, &disk);
}

/// The coordinator's object store turns read-only mid-job (its own tmpfs,
/// remounted read-only inside the coordinator's mount namespace): model
/// writes fail with EROFS, the job waits instead of failing, and once the
/// store is writable again it goes on and completes with every round
/// recorded once and the model verifiable.
#[test]
fn a_read_only_object_store_stalls_the_job_and_it_resumes_when_writable() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup {
        dir: dir.path().to_path_buf(),
        port: free_port(),
        standby_port: None,
        database: None,
        objects: None,
        tmpfs_mib: Some(64),
        read_only_objects: true,
    };
    setup.objects = Some(format!("file://{}/objects", setup.data_dir().display()));
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 600, 43);
    let files = split(&csv, &dir.path().join("parts"), 2, 5);
    let coordinator = setup.start_listening_coordinator("coord.log");
    let _clients = setup.start_clients(&files);
    let rounds = 200;
    let job = setup.submit(&oncology_job(rounds, 2));
    setup.wait_until(&job, |s| s["rounds_completed"].as_u64() >= Some(2));

    let switch = dir.path().join("objects");
    let flag = |suffix: &str| PathBuf::from(format!("{}.{suffix}", switch.display()));
    std::fs::write(flag("ro"), "").unwrap();
    let start = Instant::now();
    while !flag("is-ro").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the object store was never remounted read-only"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_job_stalls(
        &setup,
        dir.path(),
        &job,
        "storage is read-only",
        "rounds were recorded while the object store refused writes",
    );
    let log = std::fs::read_to_string(dir.path().join("coord.log")).unwrap();
    assert!(log.contains("Read-only file system"), "{log}");
    if let Some(line) = log.lines().find(|l| l.contains("storage is read-only")) {
        eprintln!("{line}");
    }

    std::fs::write(flag("rw"), "").unwrap();
    setup.completes_with_every_round_once(&job, rounds);
    let disk = PathBuf::from(format!("/proc/{}/root", coordinator.0.id()))
        .join(setup.data_dir().strip_prefix("/").unwrap());
    setup.model_verifies(&job, &disk);
}

/// Writes `path` until the file system refuses another byte.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 1 << 12, 1] {
        let bytes = vec![0xa5u8; chunk];
        while file.write_all(&bytes).and_then(|()| file.flush()).is_ok() {}
    }
    let _ = file.sync_all();
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
        standby_port: None,
        tmpfs_mib: None,
        read_only_objects: false,
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
