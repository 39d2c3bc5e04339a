//! The measurement of `cohort bench proofs` without building the whole
//! `cohort` binary: `cargo run --release -p cohort-proofs --example
//! bench_update_norm -- [--committed [--hospitals=N]] 10000 100000` prints
//! one JSON object per size (`--committed`: the statement over Pedersen
//! commitments that secure aggregation uses, for N hospitals, default 3).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut committed = false;
    let mut hospitals = 3;
    let mut sizes = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--committed" {
            committed = true;
        } else if let Some(n) = arg.strip_prefix("--hospitals=") {
            hospitals = n.parse()?;
        } else {
            sizes.push(arg.parse::<usize>()?);
        }
    }
    for n in sizes {
        let row = if committed {
            serde_json::to_string(&cohort_proofs::bench::committed_update_norm(n, hospitals)?)?
        } else {
            serde_json::to_string(&cohort_proofs::bench::update_norm(n)?)?
        };
        println!("{row}");
    }
    Ok(())
}
