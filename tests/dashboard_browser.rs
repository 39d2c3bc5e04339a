//! The dashboard in a real browser (issue 20): `cohort demo --dashboard`
//! runs a real job over mutual TLS and leaves its dashboard serving; then
//! scripts/dashboard/browser-test.mjs drives Debian's Chromium with
//! playwright-core (pinned in scripts/dashboard/package-lock.json) through
//! the jobs list, the job page's curves, the ledger explorer's in-browser
//! inclusion proof (green for a real entry, red for an altered one) and a
//! request without a token (401). Screenshots go to
//! `<target dir>/dashboard-screenshots`.
//!
//! Needs node, /usr/bin/chromium (or `CHROMIUM`) and `npm ci` in
//! scripts/dashboard. Without them the test skips with a message, unless
//! `COHORT_REQUIRE_BROWSER` is set (CI sets it), when it fails instead.

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
