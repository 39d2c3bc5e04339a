//! `cohort bench proofs`: statement 1 (well-formed update) at several
//! sizes: constraints, setup, prove and verify time, key and proof size,
//! and the process's peak memory during each size.

use anyhow::{Result, anyhow};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ProofBenchRow {
    #[serde(flatten)]
    pub numbers: cohort_proofs::bench::UpdateNormBench,
    /// Peak resident memory of the process during this size (MiB).
    pub peak_rss_mib: f64,
}

/// Runs every size (ascending), printing a line (or a JSON object) as each
/// finishes: the large ones take minutes.
pub fn run(mut sizes: Vec<usize>, json: bool) -> Result<Vec<ProofBenchRow>> {
    sizes.sort_unstable();
    let mut rows = Vec::new();
    if !json {
        println!(
            "{:>10} {:>12} {:>9} {:>10} {:>10} {:>9} {:>7} {:>9} {:>9} {:>10}",
            "params",
            "constraints",
            "setup s",
            "pk MiB",
            "pk load s",
            "prove s",
            "proof B",
            "hash ms",
            "verify ms",
            "peak MiB"
        );
    }
    for n in sizes {
        eprintln!("statement 1 at {n} parameters: setup, prove, verify ...");
        crate::bench::reset_peak_rss();
        let numbers = cohort_proofs::bench::update_norm(n).map_err(|e| anyhow!("{n}: {e}"))?;
        let row = ProofBenchRow {
            numbers,
            peak_rss_mib: crate::bench::peak_rss_mib(),
        };
        let b = &row.numbers;
        if json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>10} {:>12} {:>9.2} {:>10.1} {:>10.2} {:>9.2} {:>7} {:>9.2} {:>9.2} {:>10.0}",
                b.parameters,
                b.constraints,
                b.setup_seconds,
                b.proving_key_bytes as f64 / (1 << 20) as f64,
                b.key_load_seconds,
                b.prove_seconds,
                b.proof_bytes,
                b.hash_seconds * 1e3,
                b.verify_seconds * 1e3,
                row.peak_rss_mib
            );
        }
        rows.push(row);
    }
    Ok(rows)
}
