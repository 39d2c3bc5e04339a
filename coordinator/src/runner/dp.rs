//! Client-level differential privacy on the coordinator's side.
//!
//! With `aggregation = "plain"` the coordinator adds the noise itself, so
//! it must be trusted to: it sees each hospital's clipped update, sums
//! them and adds Gaussian noise of standard deviation `σ · clipping_norm`
//! (OpenDP's exact sampler) before any strategy or store sees anything.
//! Under secure aggregation the hospitals add the noise instead
//! ([`cohort_privacy::distributed`]) and nothing here runs.

use cohort_privacy::dp::{Clipping, DpLevel, JobDp};

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

/// [`JobSpec::encoded_client_dp`] as a round's error.
pub(super) fn encoded_noise(spec: &JobSpec) -> Result<Option<(f64, f64)>, RunError> {
    spec.encoded_client_dp()
        .map_err(|e| RunError::Failed(format!("client-level DP: {e}")))
}

/// Client-level DP in plain mode, across a job's rounds: the current
/// clipping bound and the noise of the sum (and, with adaptive clipping,
/// of the count of unclipped updates).
pub(super) struct PlainClientDp {
    clip: f64,
    update_noise: f64,
    adaptive: Option<Adaptive>,
}

struct Adaptive {
    count_stddev: f64,
    target_quantile: f64,
    learning_rate: f64,
}

impl PlainClientDp {
    /// `None` unless the job is client-level DP under plain aggregation.
    /// `resumed_bound`: the adaptive clipping bound the last recorded round
    /// ended with, when a restarted coordinator resumes the job (else it
    /// starts from `clipping_norm`).
    pub(super) fn new(
        spec: &JobSpec,
        resumed_bound: Option<f64>,
    ) -> Result<Option<Self>, RunError> {
        if spec.privacy.aggregation != crate::job::Aggregation::Plain {
            return Ok(None);
        }
        let Some((job, sigma)) = client_level_noise(spec)? else {
            return Ok(None);
        };
        let policy = &job.policy;
        let (update_noise, adaptive) = match policy.clipping {
            Clipping::Fixed => (sigma, None),
            Clipping::Adaptive => {
                let (update_noise, count_stddev) = policy
                    .adaptive_noise(sigma, spec.training.clients_per_round)
                    .map_err(|e| RunError::Failed(format!("adaptive clipping: {e}")))?;
                (
                    update_noise,
                    Some(Adaptive {
                        count_stddev,
                        target_quantile: policy.target_quantile,
                        learning_rate: policy.clip_learning_rate,
                    }),
                )
            }
        };
        let clip = match (&adaptive, resumed_bound) {
            (Some(_), Some(bound)) if bound.is_finite() && bound > 0.0 => bound,
            _ => policy.clipping_norm,
        };
        Ok(Some(Self {
            clip,
            update_noise,
            adaptive,
        }))
    }

    /// The round's single noisy update and, with adaptive clipping, the
    /// bound before and after this round.
    pub(super) fn aggregate(
        &mut self,
        updates: Vec<ClientUpdate>,
    ) -> Result<(ClientUpdate, Option<(f64, f64)>), RunError> {
        let Some(adaptive) = &self.adaptive else {
            return Ok((noisy_mean(updates, self.clip, self.update_noise)?, None));
        };
        let count = updates.len() as f64;
        let unclipped = updates.iter().filter(|u| l2(&u.delta) <= self.clip).count();
        let noisy = cohort_privacy::noise::add_gaussian(
            &[unclipped as f32],
            2.0 * adaptive.count_stddev,
            COUNT_SENSITIVITY,
        )
        .map_err(|e| RunError::Failed(format!("adaptive clipping noise: {e}")))?;
        let fraction = f64::from(noisy[0]) / count;
        let mean = noisy_mean(updates, self.clip, self.update_noise)?;
        let before = self.clip;
        // Geometric update toward the target quantile (Andrew et al. 2021).
        self.clip *= (-adaptive.learning_rate * (fraction - adaptive.target_quantile)).exp();
        Ok((mean, Some((before, self.clip))))
    }
}

/// L2 sensitivity of the count of unclipped updates once centred, the
/// convention of [`cohort_privacy::dp::DpPolicy::adaptive_noise`].
const COUNT_SENSITIVITY: f64 = 0.5;

fn l2(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt()
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
        let norm = l2(&update.delta);
        let factor = if norm > clip { clip / norm } else { 1.0 };
        for (s, v) in sum.iter_mut().zip(&update.delta) {
            *s += factor * f64::from(*v);
        }
        total_examples += update.num_examples;
    }
    drop(updates);
    let sum: Vec<f32> = sum.into_iter().map(|v| v as f32).collect();
    let noisy = cohort_privacy::noise::add_gaussian(&sum, noise_multiplier, clip)
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
    fn adaptive_clipping_follows_the_target_quantile() {
        let updates = |norm: f32| -> Vec<ClientUpdate> {
            (0..40)
                .map(|i| ClientUpdate {
                    client: format!("h{i}"),
                    delta: vec![norm, 0.0],
                    num_examples: 1,
                })
                .collect()
        };
        let mut dp = PlainClientDp {
            clip: 1.0,
            update_noise: 1.0,
            adaptive: Some(Adaptive {
                count_stddev: 2.0,
                target_quantile: 0.5,
                learning_rate: 0.2,
            }),
        };
        // Every update far inside the bound: it shrinks, round after round.
        for _ in 0..3 {
            let (_, change) = dp.aggregate(updates(0.01)).unwrap();
            let (before, after) = change.unwrap();
            assert!(after < before, "{before} -> {after}");
        }
        // Every update outside it: it grows.
        let (_, change) = dp.aggregate(updates(100.0)).unwrap();
        let (before, after) = change.unwrap();
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn the_noise_split_keeps_the_accounted_multiplier() {
        let policy = cohort_privacy::dp::DpPolicy {
            clipping: Clipping::Adaptive,
            ..cohort_privacy::dp::DpPolicy::new(DpLevel::Client, None, Some(1.0))
        };
        let (update, count) = policy.adaptive_noise(1.0, 100).unwrap();
        assert_eq!(count, 5.0);
        let combined = (update.powi(-2) + (2.0 * count).powi(-2)).powf(-0.5);
        assert!((combined - 1.0).abs() < 1e-12 && update > 1.0);
        assert!(policy.adaptive_noise(1.0, 5).is_err());
    }

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
