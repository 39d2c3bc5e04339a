//! This hospital's terms of the preprocessing statistics' secure sums.
//!
//! Without DP they are its exact counts and fixed-point sums. Under DP
//! (the job has a `[privacy.dp]` table) they are noised here, with the
//! full noise of the job's statistics plan (`JobDp::statistics_plan`,
//! computed from the job file alone, never from the coordinator's say),
//! and the release is recorded in the hospital's budget before it leaves.
//! A pass the coordinator asks for again (a retried preparation that summed
//! the same hospitals) gets the same noisy terms: sending them again is
//! post-processing and costs nothing. The terms are kept in memory for the
//! current job only; a restarted hospital releases, and pays for, fresh
//! ones.

use std::collections::HashMap;
use std::sync::Mutex;

use cohort_datasets::{RowWeight, StatisticsPass};
use cohort_privacy::dp::DpLevel;
use cohort_protocol::v1::TaskHeader;
use tracing::info;

use crate::work::{Worker, parse};

/// One job's noisy terms, per pass (its JSON).
type JobTerms = (String, HashMap<String, Vec<u64>>);

/// Noisy terms already released, per pass, for one job.
#[derive(Default)]
pub(crate) struct Released(Mutex<Option<JobTerms>>);

impl Released {
    fn get(&self, job_id: &str, pass_json: &str) -> Option<Vec<u64>> {
        let released = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match released.as_ref() {
            Some((job, passes)) if job == job_id => passes.get(pass_json).cloned(),
            _ => None,
        }
    }

    fn keep(&self, job_id: &str, pass_json: &str, terms: &[u64]) {
        let mut released = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if released.as_ref().is_none_or(|(job, _)| job != job_id) {
            *released = Some((job_id.to_string(), HashMap::new()));
        }
        if let Some((_, passes)) = released.as_mut() {
            passes.insert(pass_json.to_string(), terms.to_vec());
        }
    }
}

impl Worker {
    /// The terms this hospital adds to the secure sum of the statistics
    /// pass `pass_json`: exact, or noised and paid for under DP.
    pub(crate) fn statistics_for_sum(
        &self,
        task: &TaskHeader,
        pass_json: &str,
    ) -> Result<Vec<u64>, String> {
        let pass: StatisticsPass = parse(pass_json, "statistics pass")?;
        let dataset = self.load(task)?;
        let Some(job) = self.job_dp(task)? else {
            return dataset
                .statistics_terms(&pass)
                .map_err(|e| format!("preprocessing statistics: {e}"));
        };
        if !job.noised_statistics {
            return Err(
                "the job gives its preprocessing publicly and its privacy plan keeps nothing \
                 for statistics; this hospital releases none"
                    .to_string(),
            );
        }
        if let Some(terms) = self.released_statistics().get(&task.job_id, pass_json) {
            info!(
                client = self.name(),
                job = task.job_id,
                pass = pass.name(),
                "statistics pass asked for again: resending the noisy terms already paid for"
            );
            return Ok(terms);
        }
        let weight = match job.policy.level {
            DpLevel::Record => RowWeight::Row,
            DpLevel::Client => RowWeight::Hospital,
        };
        let exact = dataset
            .dp_statistics_terms(&pass, weight)
            .map_err(|e| format!("preprocessing statistics: {e}"))?;
        let plan = job
            .statistics_plan()
            .map_err(|e| format!("cannot meet the job's DP settings: {e}"))?;
        let sigma = plan.noise_multiplier
            * pass.dp_sensitivity(dataset.schema())
            * 2f64.powi(cohort_datasets::DP_FRACTION_BITS as i32);
        let noise = cohort_privacy::noise::discrete_gaussian(exact.len(), sigma)
            .map_err(|e| format!("drawing the statistics' noise: {e}"))?;
        let terms: Vec<u64> = exact
            .iter()
            .zip(&noise)
            .map(|(t, n)| t.wrapping_add(*n) as u64)
            .collect();
        // The spending reaches the disk before the terms can leave.
        let epsilon = self.budget().spend_statistics(&task.job_id, &job, &plan)?;
        self.released_statistics()
            .keep(&task.job_id, pass_json, &terms);
        info!(
            client = self.name(),
            job = task.job_id,
            pass = pass.name(),
            noise_multiplier = plan.noise_multiplier,
            epsilon,
            "preprocessing statistics noised for differential privacy"
        );
        Ok(terms)
    }
}
