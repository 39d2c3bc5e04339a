//! Training-split accuracy and ROC AUC per round: each hospital's fit
//! answer may carry its trained model's accuracy and AUC on its own
//! training split (plain aggregation without differential privacy only;
//! the client withholds them otherwise). They are collected per job and
//! round as answers arrive and, when the round is recorded, averaged over
//! the round's participants weighted by their examples, like the training
//! loss. A job that promises DP never records them, whatever arrives.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A round's training-split quality, example-weighted over the hospitals
/// that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    pub accuracy: f64,
    pub auc: f64,
}

#[derive(Debug, Clone, Copy)]
struct Report {
    examples: u64,
    metrics: TrainMetrics,
}

/// Reports of the rounds in progress, by job, round and hospital (a
/// hospital answering a retried round again replaces its report).
#[derive(Debug, Default)]
pub struct TrainMetricsTally {
    reports: Mutex<HashMap<(String, u32), HashMap<String, Report>>>,
}

impl TrainMetricsTally {
    /// Keeps `client`'s report if it is a pair of fractions.
    pub fn report(
        &self,
        job_id: &str,
        round: u32,
        client: &str,
        examples: u64,
        metrics: TrainMetrics,
    ) {
        let valid = |x: f64| (0.0..=1.0).contains(&x);
        if examples == 0 || !valid(metrics.accuracy) || !valid(metrics.auc) {
            return;
        }
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports
            .entry((job_id.to_string(), round))
            .or_default()
            .insert(client.to_string(), Report { examples, metrics });
    }

    /// Drops what is left of a job that ended (rounds it never recorded).
    pub fn forget_job(&self, job_id: &str) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.retain(|(job, _), _| job != job_id);
    }

    /// The round's example-weighted means over `participants` (`None` when
    /// none of them reported), forgetting the round's reports.
    pub fn take(&self, job_id: &str, round: u32, participants: &[String]) -> Option<TrainMetrics> {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let round_reports = reports.remove(&(job_id.to_string(), round))?;
        let (mut examples, mut accuracy, mut auc) = (0u64, 0.0, 0.0);
        for report in participants.iter().filter_map(|p| round_reports.get(p)) {
            let weight = report.examples as f64;
            examples += report.examples;
            accuracy += report.metrics.accuracy * weight;
            auc += report.metrics.auc * weight;
        }
        (examples > 0).then(|| TrainMetrics {
            accuracy: accuracy / examples as f64,
            auc: auc / examples as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(accuracy: f64, auc: f64) -> TrainMetrics {
        TrainMetrics { accuracy, auc }
    }

    #[test]
    fn weighted_over_participants_only_and_nonsense_is_dropped() {
        let tally = TrainMetricsTally::default();
        tally.report("j", 1, "a", 100, m(0.9, 0.8));
        tally.report("j", 1, "b", 300, m(0.5, 0.6));
        tally.report("j", 1, "late", 1000, m(0.0, 0.0));
        tally.report("j", 1, "liar", 1000, m(7.0, 0.5));
        tally.report("j", 1, "nan", 1000, m(f64::NAN, 0.5));
        let participants = ["a".to_string(), "b".to_string(), "liar".to_string()];
        let mean = tally.take("j", 1, &participants).unwrap();
        assert!((mean.accuracy - 0.6).abs() < 1e-12, "{mean:?}");
        assert!((mean.auc - 0.65).abs() < 1e-12, "{mean:?}");
        assert_eq!(tally.take("j", 1, &participants), None);
        tally.report("j", 2, "late", 10, m(0.5, 0.5));
        assert_eq!(tally.take("j", 2, &participants), None);
        tally.report("j", 3, "a", 10, m(0.5, 0.5));
        tally.forget_job("j");
        assert_eq!(tally.take("j", 3, &participants), None);
    }
}
