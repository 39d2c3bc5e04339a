//! The measurement of `cohort bench proofs` without building the whole
//! `cohort` binary: `cargo run --release -p cohort-proofs --example
//! bench_update_norm -- 10000 100000` prints one JSON object per size.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    for n in sizes {
        let row = cohort_proofs::bench::update_norm(n)?;
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}
