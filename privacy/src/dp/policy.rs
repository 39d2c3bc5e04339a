//! A job's differential-privacy promise (`[privacy.dp]` in the job file)
//! and what one hospital makes of it.
//!
//! The coordinator validates the table and sends it, with the job's number
//! of rounds, to every hospital ([`JobDp`]). Each hospital then works out
//! its own [`HospitalPlan`]: its sampling rate and steps per round follow
//! from its own row count, and the noise multiplier is either the job's or
//! the smallest one that keeps *this hospital* within `target_epsilon` over
//! the whole job. The coordinator never needs, and never gets, the numbers
//! that would let it choose a weaker noise for one hospital.

use serde::{Deserialize, Serialize};

use super::{AccountantKind, DpError, Segment, calibrate_noise, calibrate_noise_after, epsilon};

/// What a DP guarantee protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpLevel {
    /// One patient record: DP-SGD in every hospital.
    #[default]
    Record,
    /// One hospital's whole dataset: clipped updates, noise on the sum.
    Client,
}

impl DpLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            DpLevel::Record => "record",
            DpLevel::Client => "client",
        }
    }
}

fn default_delta() -> f64 {
    1e-5
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_clipping_norm() -> f64 {
    1.0
}

/// How client-level DP bounds each hospital's update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clipping {
    /// Always `clipping_norm`.
    #[default]
    Fixed,
    /// Starts at `clipping_norm` and follows the `target_quantile` of the
    /// update norms, estimated privately each round (Andrew et al. 2021).
    Adaptive,
}

/// `statistics_epsilon` when neither it nor a smaller `target_epsilon`
/// says otherwise.
pub const DEFAULT_STATISTICS_EPSILON: f64 = 1.0;

/// Passes of the preprocessing statistics, each one release of noisy sums
/// (see `cohort_datasets::SecureStatistics`).
pub const STATISTICS_PASSES: u64 = 3;

fn default_target_quantile() -> f64 {
    0.5
}
fn default_clip_learning_rate() -> f64 {
    0.2
}

/// The job file's `[privacy.dp]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpPolicy {
    #[serde(default)]
    pub level: DpLevel,
    /// Per hospital, over the whole job. Needed unless `noise_multiplier`
    /// is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// 1e-5 by default: below 1/rows for any hospital with fewer than
    /// 100,000 patients, the usual requirement that δ be much smaller than
    /// the chance of picking any one record.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Per-example gradient clipping bound (record level).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// L2 bound on each hospital's whole update (client level); the
    /// starting bound with adaptive clipping.
    #[serde(default = "default_clipping_norm")]
    pub clipping_norm: f64,
    /// Client level: `"fixed"` or `"adaptive"`.
    #[serde(default)]
    pub clipping: Clipping,
    /// Adaptive clipping: the quantile of update norms the bound tracks.
    #[serde(default = "default_target_quantile")]
    pub target_quantile: f64,
    /// Adaptive clipping: geometric step size of the bound's update.
    #[serde(default = "default_clip_learning_rate")]
    pub clip_learning_rate: f64,
    /// Adaptive clipping: standard deviation of the noise on the count of
    /// unclipped updates [default: hospitals per round / 20].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipped_count_stddev: Option<f64>,
    /// If given, epsilon is computed from it instead of calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// What the preprocessing statistics (counts, means, variances,
    /// medians, category counts) may spend, per hospital, at `delta`: they
    /// are noised to it and charged to the hospital's budget before the
    /// training rounds. Part of `target_epsilon`, whose rest the rounds
    /// are calibrated to [default: a quarter of `target_epsilon`, at most
    /// 1; 1 with `noise_multiplier`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics_epsilon: Option<f64>,
    #[serde(default)]
    pub accountant: AccountantKind,
}

impl DpPolicy {
    /// A policy with the job file's defaults for every key but the level
    /// and what fixes the noise: `target_epsilon` or `noise_multiplier`.
    pub fn new(level: DpLevel, target_epsilon: Option<f64>, noise_multiplier: Option<f64>) -> Self {
        Self {
            level,
            target_epsilon,
            delta: default_delta(),
            max_grad_norm: default_max_grad_norm(),
            clipping_norm: default_clipping_norm(),
            clipping: Clipping::Fixed,
            target_quantile: default_target_quantile(),
            clip_learning_rate: default_clip_learning_rate(),
            clipped_count_stddev: None,
            noise_multiplier,
            statistics_epsilon: None,
            accountant: AccountantKind::default(),
        }
    }

    /// What the preprocessing statistics spend: `statistics_epsilon`, or
    /// its default.
    pub fn statistics_epsilon(&self) -> f64 {
        self.statistics_epsilon
            .unwrap_or(match self.target_epsilon {
                Some(target) => (target / 4.0).min(DEFAULT_STATISTICS_EPSILON),
                None => DEFAULT_STATISTICS_EPSILON,
            })
    }

    /// Checks ranges; errors name the key as it appears in the job file.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((format!("privacy.dp.{key}"), msg));
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("delta", format!("must be in (0, 1), got {}", self.delta));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad(
                "max_grad_norm",
                format!("must be finite and > 0, got {}", self.max_grad_norm),
            );
        }
        if !(self.clipping_norm.is_finite() && self.clipping_norm > 0.0) {
            return bad(
                "clipping_norm",
                format!("must be finite and > 0, got {}", self.clipping_norm),
            );
        }
        if self.clipping == Clipping::Adaptive {
            if self.level != DpLevel::Client {
                return bad(
                    "clipping",
                    "adaptive clipping is for level = \"client\"".into(),
                );
            }
            if !(self.target_quantile > 0.0 && self.target_quantile < 1.0) {
                return bad(
                    "target_quantile",
                    format!("must be in (0, 1), got {}", self.target_quantile),
                );
            }
            if !(self.clip_learning_rate.is_finite() && self.clip_learning_rate > 0.0) {
                return bad(
                    "clip_learning_rate",
                    format!("must be finite and > 0, got {}", self.clip_learning_rate),
                );
            }
            if let Some(s) = self.clipped_count_stddev
                && !(s.is_finite() && s > 0.0)
            {
                return bad(
                    "clipped_count_stddev",
                    format!("must be finite and > 0, got {s}"),
                );
            }
        }
        match (self.target_epsilon, self.noise_multiplier) {
            (None, None) => {
                return bad(
                    "target_epsilon",
                    "give target_epsilon (the noise is calibrated to it) or noise_multiplier"
                        .into(),
                );
            }
            (Some(e), _) if !(e.is_finite() && e > 0.0) => {
                return bad("target_epsilon", format!("must be finite and > 0, got {e}"));
            }
            (_, Some(s)) if !(s.is_finite() && s > 0.0) => {
                return bad(
                    "noise_multiplier",
                    format!("must be finite and > 0, got {s}"),
                );
            }
            _ => {}
        }
        let statistics = self.statistics_epsilon();
        if !(statistics.is_finite() && statistics > 0.0) {
            return bad(
                "statistics_epsilon",
                format!("must be finite and > 0, got {statistics}"),
            );
        }
        if let Some(target) = self.target_epsilon
            && statistics >= target
        {
            return bad(
                "statistics_epsilon",
                format!(
                    "{statistics} leaves nothing of target_epsilon {target} for the training rounds"
                ),
            );
        }
        Ok(())
    }
}

impl DpPolicy {
    /// Adaptive clipping releases two Gaussian mechanisms a round: the
    /// clipped sum (noise `σ_Δ · C`) and the count of unclipped updates
    /// (noise `σ_b`, sensitivity 1/2 once centred). Together they are
    /// exactly one Gaussian mechanism with multiplier `σ` when
    /// `σ⁻² = σ_Δ⁻² + (2σ_b)⁻²` (Andrew et al. 2021, Thm. 1), so the
    /// accounting is unchanged. Returns `(σ_Δ, σ_b)`, with `σ_b` defaulting
    /// to `hospitals / 20`; errors when `σ_b ≤ σ/2` leaves nothing for the
    /// sum.
    pub fn adaptive_noise(
        &self,
        noise_multiplier: f64,
        hospitals_per_round: u32,
    ) -> Result<(f64, f64), String> {
        let count_stddev = self
            .clipped_count_stddev
            .unwrap_or(f64::from(hospitals_per_round) / 20.0);
        let rest = noise_multiplier.powi(-2) - (2.0 * count_stddev).powi(-2);
        if rest.is_nan() || rest <= 0.0 {
            return Err(format!(
                "clipped_count_stddev {count_stddev} must exceed half the noise multiplier \
                 ({noise_multiplier:.4} / 2) so that noise is left for the updates"
            ));
        }
        Ok((rest.powf(-0.5), count_stddev))
    }
}

/// What a task tells a hospital about the job's DP promise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDp {
    pub policy: DpPolicy,
    /// Rounds the job plans; the hospital's worst case is taking part in
    /// every one of them.
    pub rounds: u32,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Expected examples per DP-SGD step.
    pub batch_size: u32,
    /// Whether the hospitals release noisy preprocessing statistics (the
    /// job gives no public `[preprocessing]`): only then is part of
    /// `target_epsilon` kept for them.
    #[serde(default = "released")]
    pub noised_statistics: bool,
}

fn released() -> bool {
    true
}

/// One hospital's share of a job: the mechanism it runs each round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HospitalPlan {
    pub sampling_rate: f64,
    pub steps_per_round: u64,
    pub noise_multiplier: f64,
    pub rounds: u32,
}

impl HospitalPlan {
    /// The mechanism of `rounds` rounds as one accountant segment (`None`
    /// for zero rounds).
    pub fn segment(&self, rounds: u32) -> Result<Option<Segment>, DpError> {
        if rounds == 0 {
            return Ok(None);
        }
        Segment::new(
            self.sampling_rate,
            self.noise_multiplier,
            self.steps_per_round.saturating_mul(u64::from(rounds)),
        )
        .map(Some)
    }

    /// ε at `delta` after `rounds` rounds (0 for none).
    pub fn epsilon(
        &self,
        accountant: AccountantKind,
        rounds: u32,
        delta: f64,
    ) -> Result<f64, DpError> {
        match self.segment(rounds)? {
            Some(s) => Ok(epsilon(accountant, &[s], delta)?.epsilon),
            None => Ok(0.0),
        }
    }
}

/// How a hospital noises its preprocessing statistics: each pass is one
/// Gaussian mechanism of multiplier `noise_multiplier` on the pass's sums
/// (no sampling), so the statistics are one accountant segment of
/// [`STATISTICS_PASSES`] steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatisticsPlan {
    pub noise_multiplier: f64,
    pub passes: u64,
}

impl StatisticsPlan {
    /// `passes` releases as one accountant segment (`None` for none).
    pub fn segment(&self, passes: u64) -> Result<Option<Segment>, DpError> {
        if passes == 0 {
            return Ok(None);
        }
        Segment::new(1.0, self.noise_multiplier, passes).map(Some)
    }
}

impl JobDp {
    /// The statistics' noise: the smallest multiplier that keeps the
    /// passes within the policy's `statistics_epsilon` at its delta. It
    /// depends on the job file alone, so the coordinator, which reads the
    /// noisy sums, and every hospital, which adds the noise, agree on it.
    pub fn statistics_plan(&self) -> Result<StatisticsPlan, DpError> {
        let report = calibrate_noise(
            self.policy.accountant,
            1.0,
            STATISTICS_PASSES,
            self.policy.delta,
            self.policy.statistics_epsilon(),
        )?;
        Ok(StatisticsPlan {
            noise_multiplier: report.noise_multiplier,
            passes: STATISTICS_PASSES,
        })
    }

    /// Client level: each round is one Gaussian mechanism on the sum of
    /// the hospitals' clipped updates (sensitivity `clipping_norm`). No
    /// amplification by sampling is claimed: the coordinator picks each
    /// round's hospitals with a seed in the job file, so a hospital must
    /// assume it takes part in every round.
    pub fn client_plan(&self) -> Result<HospitalPlan, DpError> {
        self.plan(1.0, 1)
    }

    /// The plan of a hospital whose DP-SGD samples at rate `sampling_rate`
    /// and takes `steps_per_round` steps a round: the job's noise
    /// multiplier, or the smallest one that keeps the whole job, its
    /// statistics included, within `target_epsilon` at the job's delta.
    pub fn plan(&self, sampling_rate: f64, steps_per_round: u64) -> Result<HospitalPlan, DpError> {
        let rounds = self.rounds.max(1);
        let noise_multiplier = match (self.policy.noise_multiplier, self.policy.target_epsilon) {
            (Some(sigma), _) => sigma,
            (None, Some(target)) => {
                let spent: Vec<Segment> = match self.noised_statistics {
                    true => {
                        let statistics = self.statistics_plan()?;
                        statistics.segment(statistics.passes)?.into_iter().collect()
                    }
                    false => Vec::new(),
                };
                calibrate_noise_after(
                    self.policy.accountant,
                    &spent,
                    sampling_rate,
                    steps_per_round.saturating_mul(u64::from(rounds)),
                    self.policy.delta,
                    target,
                )?
                .noise_multiplier
            }
            (None, None) => return Err(DpError::InvalidTargetEpsilon(f64::NAN)),
        };
        let plan = HospitalPlan {
            sampling_rate,
            steps_per_round,
            noise_multiplier,
            rounds,
        };
        // Validates q, σ and the step count.
        plan.segment(rounds)?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(target: Option<f64>, sigma: Option<f64>) -> JobDp {
        JobDp {
            policy: DpPolicy::new(DpLevel::Record, target, sigma),
            rounds: 10,
            local_epochs: 1,
            batch_size: 32,
            noised_statistics: true,
        }
    }

    #[test]
    fn calibrated_plan_meets_the_target_over_all_rounds() {
        let plan = job(Some(2.0), None).plan(0.1, 10).unwrap();
        let eps = plan.epsilon(AccountantKind::Pld, 10, 1e-5).unwrap();
        assert!(eps <= 2.0 && eps > 1.9, "{eps}");
        let half = plan.epsilon(AccountantKind::Pld, 5, 1e-5).unwrap();
        assert!(half < eps);
        assert_eq!(plan.epsilon(AccountantKind::Pld, 0, 1e-5).unwrap(), 0.0);
    }

    #[test]
    fn the_statistics_and_the_rounds_together_meet_the_target() {
        let job = job(Some(2.0), None);
        let statistics = job.statistics_plan().unwrap();
        assert_eq!(statistics.passes, STATISTICS_PASSES);
        let alone = epsilon(
            AccountantKind::Pld,
            &[statistics.segment(3).unwrap().unwrap()],
            1e-5,
        )
        .unwrap()
        .epsilon;
        // A quarter of the target by default.
        assert!(alone <= 0.5 && alone > 0.49, "{alone}");
        let plan = job.plan(0.1, 10).unwrap();
        let mut segments = vec![statistics.segment(3).unwrap().unwrap()];
        segments.push(plan.segment(10).unwrap().unwrap());
        let total = epsilon(AccountantKind::Pld, &segments, 1e-5)
            .unwrap()
            .epsilon;
        assert!(total <= 2.0 && total > 1.95, "{total}");
        // The rounds alone spend less than the target: the statistics'
        // share is kept for them, unless the job gives them publicly.
        let rounds = plan.epsilon(AccountantKind::Pld, 10, 1e-5).unwrap();
        assert!(rounds < total - 0.05, "{rounds} vs {total}");
        let public = JobDp {
            noised_statistics: false,
            ..job
        };
        let whole = public.plan(0.1, 10).unwrap();
        let rounds = whole.epsilon(AccountantKind::Pld, 10, 1e-5).unwrap();
        assert!(rounds <= 2.0 && rounds > 1.95, "{rounds}");
    }

    #[test]
    fn statistics_epsilon_must_leave_room_for_the_rounds() {
        let mut p = job(Some(1.0), None).policy;
        assert_eq!(p.statistics_epsilon(), 0.25);
        p.statistics_epsilon = Some(1.0);
        let (key, msg) = p.validate().unwrap_err();
        assert_eq!(key, "privacy.dp.statistics_epsilon");
        assert!(msg.contains("nothing"), "{msg}");
        p.statistics_epsilon = Some(-1.0);
        assert_eq!(p.validate().unwrap_err().0, "privacy.dp.statistics_epsilon");
        let fixed = job(None, Some(1.3)).policy;
        assert_eq!(fixed.statistics_epsilon(), DEFAULT_STATISTICS_EPSILON);
        assert!(fixed.validate().is_ok());
    }

    #[test]
    fn a_given_noise_multiplier_is_used_as_is() {
        let plan = job(None, Some(1.3)).plan(0.1, 10).unwrap();
        assert_eq!(plan.noise_multiplier, 1.3);
    }

    #[test]
    fn policy_validation_names_the_key() {
        let mut p = job(None, None).policy;
        assert_eq!(p.validate().unwrap_err().0, "privacy.dp.target_epsilon");
        p.target_epsilon = Some(1.0);
        p.delta = 1.5;
        assert_eq!(p.validate().unwrap_err().0, "privacy.dp.delta");
        p.delta = 1e-5;
        p.max_grad_norm = -1.0;
        assert_eq!(p.validate().unwrap_err().0, "privacy.dp.max_grad_norm");
    }
}
