//! The dashboard in a real browser (issue 20): `cohort demo --dashboard`
//! runs a real job over mutual TLS and leaves its dashboard serving; then
//! scripts/dashboard/browser-test.mjs drives Debian's Chromium with
//! playwright-core (pinned in scripts/dashboard/package-lock.json) through
//! the jobs list, the job page's curves, the ledger explorer's in-browser
//! inclusion proof (green for a real entry, red for an altered one) and a
//! request without a token (401). Screenshots go to
//! `<target dir>/dashboard-screenshots`.
//!
//! A second test runs `cohort coordinator --dashboard` as a process, opens
//! a submitted job's page before any hospital connects, then starts two
//! `cohort client` processes: the page must follow the job to its end
//! without a reload.
//!
//! Needs node, /usr/bin/chromium (or `CHROMIUM`) and `npm ci` in
//! scripts/dashboard. Without them the test skips with a message, unless
//! `COHORT_REQUIRE_BROWSER` is set (CI sets it), when it fails instead.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// scripts/dashboard when node, Chromium and playwright-core are all
/// there; `None` (skip) otherwise, unless the browser is required.
fn browser_tools() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dashboard");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!node).then_some("node"),
        (!chromium().is_file()).then_some("chromium (apt-get install chromium)"),
        (!dir.join("node_modules/playwright-core").is_dir())
            .then_some("playwright-core (npm ci in scripts/dashboard)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("COHORT_REQUIRE_BROWSER").is_none(),
        "COHORT_REQUIRE_BROWSER is set but the browser tests lack: {}",
        missing.join(", ")
    );
    eprintln!(
        "skipping the dashboard browser test: missing {}",
        missing.join(", ")
    );
    None
}

/// `<target dir>/dashboard-screenshots`, found from this test's own path
/// (`<target dir>/debug/deps/dashboard_browser-…`).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("dashboard-screenshots"))
        .unwrap_or_else(|| std::env::temp_dir().join("cohort-dashboard-screenshots"))
}

/// Ends the demo on drop (a failed assertion included).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_dashboard_passes_the_browser_checks() {
    let Some(tools) = browser_tools() else {
        return;
    };
    let workdir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["demo", "--dashboard", "127.0.0.1:0", "--rounds", "3"])
        .arg("--workdir")
        .arg(workdir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().unwrap();
    // The address and token come first; the report ends with "Finished in".
    let (mut url, mut token) = (None, None);
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(link) = line.strip_prefix("Dashboard: ") {
            url = link.split_once("?token=").map(|(u, _)| u.to_string());
        }
        if let Some(t) = line.strip_prefix("Dashboard token (operator, 24 h): ") {
            token = Some(t.trim().to_string());
        }
        if line.starts_with("Finished in") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the demo took too long"
        );
    }
    let url = url.expect("the demo printed the dashboard's address");
    let token = token.expect("the demo printed a token");
    assert!(
        demo.0.try_wait().unwrap().is_none(),
        "the dashboard keeps serving after the demo's report"
    );

    let shots = screenshot_dir();
    let out = Command::new("node")
        .arg("browser-test.mjs")
        .args([&url, &token])
        .arg(&shots)
        .current_dir(&tools)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser checks failed (Chromium must start: {})",
        chromium().display()
    );
    println!("dashboard screenshots: {}", shots.display());

    // Ctrl-C ends the demo's dashboard cleanly.
    // SAFETY: signals our own child process, by its id.
    unsafe {
        libc::kill(demo.0.id() as libc::pid_t, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            assert!(status.success(), "the demo ended with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "Ctrl-C did not end the demo");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cohort ARGS` in the background, stderr to `log`; killed on drop.
fn spawn(args: &[&str], log: &Path) -> Demo {
    Demo(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn cohort(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cohort {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn coordinator_dashboard_follows_a_running_job_without_reload() {
    let Some(tools) = browser_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    common::synthetic_oncology_csv(&csv, 400, 31);
    let files = common::split(&csv, &dir.path().join("split"), 2, 31);
    let data_dir = dir.path().join("coordinator");
    let port = common::free_port();
    let grpc = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("coordinator.log");
    let _coordinator = spawn(
        &[
            "coordinator",
            "--insecure",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--poll-timeout-secs",
            "1",
            "--dashboard",
            "127.0.0.1:0",
        ],
        &log,
    );
    // The coordinator logs where its dashboard listens.
    let started = Instant::now();
    let url = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find("dashboard on http://") {
            let rest = &text[at + "dashboard on ".len()..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            break rest[..end].to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dashboard address in the coordinator's log: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let token = cohort(&[
        "dashboard",
        "token",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--role",
        "operator",
        "--name",
        "ci",
    ]);
    let job_file = dir.path().join("job.toml");
    // Record-level DP and valuation, so the page has budgets and rewards.
    let job_toml = common::oncology_job(6, 2)
        + "\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 4.0\ndelta = 1e-5\nmax_grad_norm = 1.0\n"
        + "\n[valuation]\nmethod = \"exact\"\n";
    // Statistics noised for 400 rows in two hospitals sit near the noise
    // (tests/secagg.rs covers them); the developer gives them publicly.
    let job_toml = job_toml.clone() + &common::oncology_reference_preprocessing(&job_toml);
    std::fs::write(&job_file, job_toml).unwrap();
    let job = cohort(&[
        "job",
        "submit",
        job_file.to_str().unwrap(),
        "--coordinator",
        &grpc,
        "--insecure",
    ]);

    let shots = screenshot_dir();
    let mut node = Command::new("node")
        .args(["browser-test.mjs", "--live", &job, &url, &token])
        .arg(&shots)
        .current_dir(&tools)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut clients = Vec::new();
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("{line}");
        if line == "live: page open" {
            for (i, file) in files.iter().take(2).enumerate() {
                let name = format!("hospital-{i}");
                clients.push(spawn(
                    &[
                        "client",
                        "--insecure",
                        "--coordinator",
                        &grpc,
                        "--name",
                        &name,
                        "--data",
                        file.to_str().unwrap(),
                        "--data-dir",
                        dir.path().join(&name).to_str().unwrap(),
                    ],
                    &dir.path().join(format!("{name}.log")),
                ));
            }
        }
    }
    let status = node.wait().unwrap();
    assert!(
        status.success(),
        "the live-update browser checks failed; coordinator log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        clients.len(),
        2,
        "the page opened and the hospitals started"
    );
}
