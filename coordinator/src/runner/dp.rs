//! Client-level differential privacy on the coordinator's side.
//!
//! With `aggregation = "plain"` the coordinator adds the noise itself, so
//! it must be trusted to: it sees each hospital's clipped update, sums
//! them and adds Gaussian noise of standard deviation `σ · clipping_norm`
//! (OpenDP's exact sampler) before any strategy or store sees anything.
//! Under secure aggregation the hospitals add the noise instead
//! ([`cohort_privacy::distributed`]) and nothing here runs.

use cohort_privacy::dp::{DpLevel, JobDp};

use super::RunError;
use crate::job::JobSpec;
use crate::strategy::ClientUpdate;

/// The noise multiplier of a client-level job (the same calibration every
/// hospital runs for itself), `None` for any other job.
pub(super) fn client_level_noise(spec: &JobSpec) -> Result<Option<(JobDp, f64)>, RunError> {
    let Some(job) = spec.job_dp() else {
        return Ok(None);
    };
    if job.policy.level != DpLevel::Client {
        return Ok(None);
    }
    let plan = job
        .client_plan()
        .map_err(|e| RunError::Failed(format!("client-level DP: {e}")))?;
    Ok(Some((job, plan.noise_multiplier)))
}

/// Plain aggregation under client-level DP: the updates clipped to
/// `clip`, summed, noised, and divided by their number, handed on as one
/// update (uniform weights: a hospital's influence is bounded by `clip`
/// whatever its size).
pub(super) fn noisy_mean(
    updates: Vec<ClientUpdate>,
    clip: f64,
    noise_multiplier: f64,
) -> Result<ClientUpdate, RunError> {
    let Some(first) = updates.first() else {
        return Err(RunError::Failed("client-level DP: no updates".into()));
    };
    let mut sum = vec![0.0f64; first.delta.len()];
    let mut total_examples = 0;
    let count = updates.len();
    for update in &updates {
        let norm = update
            .delta
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt();
        let factor = if norm > clip { clip / norm } else { 1.0 };
        for (s, v) in sum.iter_mut().zip(&update.delta) {
            *s += factor * f64::from(*v);
        }
        total_examples += update.num_examples;
    }
    drop(updates);
    let sum: Vec<f32> = sum.into_iter().map(|v| v as f32).collect();
    let noisy = cohort_privacy::noise::add_gaussian(&sum, noise_multiplier * clip)
        .map_err(|e| RunError::Failed(format!("client-level DP noise: {e}")))?;
    Ok(ClientUpdate {
        client: format!("noisy mean of {count} clipped updates"),
        delta: noisy.into_iter().map(|v| v / count as f32).collect(),
        num_examples: total_examples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_of_clipped_updates_plus_calibrated_noise() {
        let update = |client: &str, value: f32| ClientUpdate {
            client: client.into(),
            delta: vec![value; 4000],
            num_examples: 10,
        };
        // Norm 3 * sqrt(4000) clipped to 2: each coordinate 2 / sqrt(4000).
        let updates = vec![update("a", 3.0), update("b", 3.0)];
        let mean = noisy_mean(updates, 2.0, 1.5).unwrap();
        assert_eq!(mean.num_examples, 20);
        let clipped = 2.0 / 4000f64.sqrt();
        let n = mean.delta.len() as f64;
        let avg = mean.delta.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = mean
            .delta
            .iter()
            .map(|&v| (f64::from(v) - avg).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        // Noise std on the sum 1.5 * 2 = 3, on the mean of two 1.5.
        assert!((avg - clipped).abs() < 0.1, "{avg} vs {clipped}");
        assert!((var.sqrt() / 1.5 - 1.0).abs() < 0.05, "std {}", var.sqrt());
    }
}
