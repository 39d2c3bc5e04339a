//! Preparation of a job under secure or homomorphic aggregation: the
//! global preprocessing (means, standard deviations, medians, categorical
//! modes) is built from secure sums over the enrolled hospitals
//! ([`cohort_datasets::SecureStatistics`]: three passes, each one SecAgg+
//! session), so no hospital's own statistics reach the coordinator. Under
//! differential privacy every hospital noises its sums first and the
//! coordinator reads them as noisy (`SecureStatistics::with_noise`).

use cohort_datasets::{
    Preprocessing, ResolvedSchema, RowWeight, SUM_BITS, SecureStatistics, StatisticsNoise,
};
use cohort_privacy::dp::DpLevel;
use cohort_privacy::secagg::Params;
use cohort_protocol::v1::{SecAggTask, TaskHeader, TaskKind};

use super::secagg::{MaskedInput, SecureSession, SecureSum};
use super::{RunError, Runner, json};
use crate::job::JobSpec;
use crate::registry::TaskAnswer;
use crate::store::JobRow;

impl Runner {
    /// The preprocessing of `members` (who agreed on `schema`), from
    /// secure sums. `Err` when a pass was abandoned (every pass must sum
    /// the same hospitals, so preparation is tried again), with the
    /// hospitals that failed it.
    pub(super) async fn secure_statistics(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        prepare: &TaskHeader,
        schema: &ResolvedSchema,
        members: &[String],
        attempt: u32,
    ) -> Result<Result<Preprocessing, Vec<String>>, RunError> {
        let config = &spec.privacy.secagg;
        let n = members.len() as u32;
        let Ok((params, k)) =
            Params::from_fractions(n, config.neighbours, config.threshold, SUM_BITS)
        else {
            self.note(
                &job.id,
                format!(
                    "preparation attempt {attempt}: {n} hospitals are too few to sum their statistics securely{}; retrying",
                    if spec.privacy.dp.is_some() {
                        " (a job under differential privacy sums them, noised, and needs two hospitals or more)"
                    } else {
                        ""
                    }
                ),
            );
            return Ok(Err(Vec::new()));
        };
        let mut statistics = match spec.job_dp() {
            None => SecureStatistics::new(schema),
            Some(dp) => {
                let plan = dp.statistics_plan().map_err(|e| {
                    RunError::Failed(format!("the job's DP settings for its statistics: {e}"))
                })?;
                SecureStatistics::with_noise(
                    schema,
                    StatisticsNoise {
                        noise_multiplier: plan.noise_multiplier,
                        hospitals: members.len(),
                        weight: match dp.policy.level {
                            DpLevel::Record => RowWeight::Row,
                            DpLevel::Client => RowWeight::Hospital,
                        },
                    },
                )
            }
        };
        loop {
            let pass = statistics.pass();
            let pass_json = json(pass)?;
            let secure = SecureSession {
                label: format!("preparation ({} statistics)", pass.name()),
                attempt,
                session: cohort_protocol::secagg_statistics_session(
                    &job.id, &pass_json, attempt, members,
                ),
                params: params.clone(),
                neighbours: k,
                header: prepare.clone(),
                secagg: SecAggTask {
                    statistics_json: pass_json,
                    ..Default::default()
                },
                input: (
                    TaskKind::SecaggStatistics,
                    "masked statistics",
                    "sent their masked statistics",
                ),
                body: None,
                splits: Default::default(),
                input_len: pass.len(schema),
                committed: false,
                needed: members.len(),
                timeout_secs: spec.training.round_timeout_secs,
                unmask_crash_point: "secagg-statistics-unmask",
            };
            let summed = self
                .secure_sum(job, secure, members, |_, answer| match answer {
                    TaskAnswer::MaskedStatistics(masked) => Ok((MaskedInput::Words(masked), ())),
                    _ => Err("answered a statistics task with something else".into()),
                })
                .await?;
            let sum = match summed {
                SecureSum::Summed(sum, _) => sum,
                SecureSum::Committed(..) => {
                    return Err(RunError::Failed(
                        "statistics are summed as words, not commitments".into(),
                    ));
                }
                SecureSum::Abandoned(failed) => return Ok(Err(failed)),
            };
            let done = statistics.absorb(&sum).map_err(|e| {
                RunError::Failed(format!("summing the hospitals' statistics securely: {e}"))
            })?;
            if let Some(preprocessing) = done {
                let noise = match statistics.noise_summary() {
                    Some(summary) => format!(
                        ", each hospital's sums noised for differential privacy (statistics_epsilon {}): {summary}",
                        spec.privacy
                            .dp
                            .as_ref()
                            .map_or(0.0, |dp| dp.statistics_epsilon())
                    ),
                    None => String::new(),
                };
                self.note_event(
                    &job.id,
                    format!(
                        "preparation: preprocessing statistics of {n} hospitals summed under secure aggregation (3 passes){noise}"
                    ),
                );
                return Ok(Ok(preprocessing));
            }
        }
    }
}
