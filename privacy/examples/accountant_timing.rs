//! Wall-clock of the accountants on the largest fixture case and of a
//! calibration. Run optimized:
//! `cargo run --release -p cohort-privacy --example accountant_timing`

use cohort_privacy::dp::{AccountantKind, Segment, calibrate_noise, epsilon};
use std::time::Instant;

fn main() -> Result<(), cohort_privacy::dp::DpError> {
    let delta = 1e-5;
    for (q, sigma, steps) in [
        (0.05, 0.5, 10_000),
        (0.01, 1.0, 10_000),
        (0.001, 2.0, 10_000),
    ] {
        let segments = [Segment::new(q, sigma, steps)?];
        for kind in [AccountantKind::Rdp, AccountantKind::Pld] {
            let t = Instant::now();
            let r = epsilon(kind, &segments, delta)?;
            println!(
                "{kind:?} q={q} sigma={sigma} T={steps}: epsilon {:.4} (order {:?}) in {:.3}s",
                r.epsilon,
                r.order,
                t.elapsed().as_secs_f64()
            );
        }
    }
    for kind in [AccountantKind::Rdp, AccountantKind::Pld] {
        let t = Instant::now();
        let r = calibrate_noise(kind, 0.01, 1000, delta, 2.0)?;
        println!(
            "{kind:?} calibrate q=0.01 T=1000 target 2.0: sigma {:.4} (epsilon {:.4}) in {:.3}s",
            r.noise_multiplier,
            r.epsilon,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
