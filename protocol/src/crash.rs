//! Crash points: named places where a coordinator or hospital process can
//! be made to die on purpose, for fault-injection tests and for consortia
//! drilling their recovery (the idea of etcd's gofail and TiKV's fail-rs).
//!
//! `COHORT_CRASH_AT=POINT` (or `POINT@N`, the N-th time the point is
//! reached in this process; 1 when omitted) makes the process abort the
//! moment it reaches that point: no destructor runs, no buffer is flushed,
//! nothing is rolled back by the process itself, which is what a SIGKILL or
//! a power cut leaves behind. Unset, as in every normal run, a crash point
//! costs one atomic load.
//!
//! The points, where they sit, and what recovery must show, are listed in
//! docs/RELIABILITY.md.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms one crash point.
pub const CRASH_AT_ENV: &str = "COHORT_CRASH_AT";

/// Every crash point, for `--help` texts and for checking the variable.
pub const POINTS: &[&str] = &[
    "secagg-unmask",
    "secagg-statistics-unmask",
    "he-decrypt",
    "ledger-append",
    "model-write",
    "client-upload",
];

struct Armed {
    point: String,
    at: u64,
    reached: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(CRASH_AT_ENV).ok()?;
            let (point, at) = match spec.split_once('@') {
                Some((point, n)) => (point, n.parse().ok()?),
                None => (spec.as_str(), 1),
            };
            if !POINTS.contains(&point) {
                eprintln!(
                    "{CRASH_AT_ENV}={spec}: no such crash point (known: {}); ignored",
                    POINTS.join(", ")
                );
                return None;
            }
            Some(Armed {
                point: point.to_string(),
                at,
                reached: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Whether reaching `point` now is the armed crash; counts the visit.
pub fn due(point: &str) -> bool {
    armed()
        .is_some_and(|a| a.point == point && a.reached.fetch_add(1, Ordering::SeqCst) + 1 == a.at)
}

/// Aborts the process if `point` is the armed crash point and this is the
/// visit it names.
pub fn reached(point: &str) {
    if due(point) {
        abort(point);
    }
}

/// Dies at `point`, saying so on stderr first.
pub fn abort(point: &str) -> ! {
    eprintln!("{CRASH_AT_ENV}: crashing at {point}, as configured (fault injection)");
    std::process::abort()
}
