//! `cohort bench proofs`: statement 1 (well-formed update) at several
//! sizes: constraints, setup, prove and verify time, key and proof size,
//! and the process's peak memory during each size; with `--statement
//! committed` the same statement over Pedersen commitments (secure
//! aggregation).

use anyhow::{Result, anyhow};
use serde::Serialize;

/// One size's numbers with the process's peak memory while measuring them.
#[derive(Debug, Serialize)]
pub struct BenchRow<T> {
    #[serde(flatten)]
    pub numbers: T,
    /// Peak resident memory of the process during this size (MiB).
    pub peak_rss_mib: f64,
}

/// Runs every size (ascending), printing a line (or a JSON object) as each
/// finishes: the large ones take minutes.
pub fn run(
    sizes: Vec<usize>,
    json: bool,
) -> Result<Vec<BenchRow<cohort_proofs::bench::UpdateNormBench>>> {
    run_sizes(
        sizes,
        json,
        &format!(
            "{:>10} {:>12} {:>9} {:>10} {:>10} {:>13} {:>9} {:>7} {:>9} {:>9} {:>10}",
            "params",
            "constraints",
            "setup s",
            "pk MiB",
            "pk load s",
            "1st prove s",
            "prove s",
            "proof B",
            "hash ms",
            "verify ms",
            "peak MiB"
        ),
        |n| format!("statement 1 at {n} parameters: setup, prove, verify ..."),
        cohort_proofs::bench::update_norm,
        |b, peak| {
            format!(
                "{:>10} {:>12} {:>9.2} {:>10.1} {:>10.2} {:>13.2} {:>9.2} {:>7} {:>9.2} {:>9.2} {:>10.0}",
                b.parameters,
                b.constraints,
                b.setup_seconds,
                b.proving_key_bytes as f64 / (1 << 20) as f64,
                b.key_load_seconds,
                b.first_prove_seconds,
                b.prove_seconds,
                b.proof_bytes,
                b.hash_seconds * 1e3,
                b.verify_seconds * 1e3,
                peak
            )
        },
    )
}

/// Hospitals whose committed updates are proved, verified and summed.
const COMMITTED_HOSPITALS: usize = 3;

/// [`run`] for the statement over commitments.
pub fn run_committed(
    sizes: Vec<usize>,
    json: bool,
) -> Result<Vec<BenchRow<cohort_proofs::bench::CommittedUpdateNormBench>>> {
    run_sizes(
        sizes,
        json,
        &format!(
            "{:>10} {:>10} {:>8} {:>9} {:>8} {:>9} {:>10} {:>8} {:>11} {:>9}",
            "params",
            "gates",
            "gens s",
            "prove s",
            "proof B",
            "verify s",
            "commit KiB",
            "open s",
            "sum check s",
            "peak MiB"
        ),
        |n| {
            format!(
                "statement 1 over commitments at {n} parameters, {COMMITTED_HOSPITALS} hospitals: prove, verify, open the sum ..."
            )
        },
        |n| cohort_proofs::bench::committed_update_norm(n, COMMITTED_HOSPITALS),
        |b, peak| {
            format!(
                "{:>10} {:>10} {:>8.2} {:>9.2} {:>8} {:>9.3} {:>10.0} {:>8.3} {:>11.3} {:>9.0}",
                b.parameters,
                b.multipliers,
                b.generators_seconds,
                b.prove_seconds,
                b.proof_bytes,
                b.verify_seconds,
                b.commitment_bytes as f64 / 1024.0,
                b.open_seconds,
                b.sum_check_seconds,
                peak
            )
        },
    )
}

/// Measures each size in ascending order with `measure`, announcing it on
/// stderr (`label`), and prints it as JSON or as a table row (`line`,
/// under `header`).
fn run_sizes<T: Serialize, E: std::fmt::Display>(
    mut sizes: Vec<usize>,
    json: bool,
    header: &str,
    label: impl Fn(usize) -> String,
    measure: impl Fn(usize) -> Result<T, E>,
    line: impl Fn(&T, f64) -> String,
) -> Result<Vec<BenchRow<T>>> {
    sizes.sort_unstable();
    if !json {
        println!("{header}");
    }
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("{}", label(n));
        crate::bench::reset_peak_rss();
        let numbers = measure(n).map_err(|e| anyhow!("{n}: {e}"))?;
        let row = BenchRow {
            numbers,
            peak_rss_mib: crate::bench::peak_rss_mib(),
        };
        if json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!("{}", line(&row.numbers, row.peak_rss_mib));
        }
        rows.push(row);
    }
    Ok(rows)
}
