//! The measurement of `cohort bench proofs` without building the whole
//! `cohort` binary: `cargo run --release -p cohort-proofs --example
//! bench_update_norm -- [--committed] 10000 100000` prints one JSON object
//! per size (`--committed`: the statement over Pedersen commitments that
//! secure aggregation uses, for 3 hospitals).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut committed = false;
    let mut sizes = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--committed" {
            committed = true;
        } else {
            sizes.push(arg.parse::<usize>()?);
        }
    }
    for n in sizes {
        let row = if committed {
            serde_json::to_string(&cohort_proofs::bench::committed_update_norm(n, 3)?)?
        } else {
            serde_json::to_string(&cohort_proofs::bench::update_norm(n)?)?
        };
        println!("{row}");
    }
    Ok(())
}
