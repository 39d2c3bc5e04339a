//! Evaluation: probabilities, loss, confusion counts and ROC AUC.

use cohort_datasets::Examples;
use serde::{Deserialize, Serialize};

use crate::net;
use crate::{ModelError, ModelSpec};

/// Quality of a model on one example set (or, via [`Metrics::aggregate`], on several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean binary cross-entropy.
    pub loss: f64,
    /// Fraction of examples classified correctly at threshold 0.5.
    pub accuracy: f64,
    /// Area under the ROC curve (0.5 when only one class is present).
    pub auc: f64,
    /// Positives predicted positive.
    pub true_positives: u64,
    /// Negatives predicted positive.
    pub false_positives: u64,
    /// Negatives predicted negative.
    pub true_negatives: u64,
    /// Positives predicted negative.
    pub false_negatives: u64,
    /// Number of examples evaluated.
    pub examples: u64,
}

impl Metrics {
    /// Combines per-client metrics into federation-wide metrics.
    ///
    /// Loss and accuracy are example-weighted means (exact, since both are per-example means);
    /// confusion counts and examples are summed. AUC is the example-weighted mean of the
    /// per-client AUCs, which is only an approximation of the pooled AUC: the exact value needs
    /// all scores in one ranking, and clients do not share scores. Returns `None` when there is
    /// nothing to aggregate (no parts, or zero examples in total).
    pub fn aggregate(parts: &[Metrics]) -> Option<Metrics> {
        let examples: u64 = parts.iter().map(|m| m.examples).sum();
        if examples == 0 {
            return None;
        }
        let total = examples as f64;
        let weighted = |f: fn(&Metrics) -> f64| {
            parts.iter().map(|m| f(m) * m.examples as f64).sum::<f64>() / total
        };
        Some(Metrics {
            loss: weighted(|m| m.loss),
            accuracy: weighted(|m| m.accuracy),
            auc: weighted(|m| m.auc),
            true_positives: parts.iter().map(|m| m.true_positives).sum(),
            false_positives: parts.iter().map(|m| m.false_positives).sum(),
            true_negatives: parts.iter().map(|m| m.true_negatives).sum(),
            false_negatives: parts.iter().map(|m| m.false_negatives).sum(),
            examples,
        })
    }
}

/// Probability of the positive class for every example, in example order.
pub fn predict_proba(
    spec: &ModelSpec,
    params: &[f32],
    data: &Examples,
) -> Result<Vec<f32>, ModelError> {
    Ok(net::predict_logits(spec, params, data)?
        .into_iter()
        .map(sigmoid)
        .collect())
}

fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Evaluates `params` on `data`: mean BCE loss, accuracy and confusion counts at threshold 0.5,
/// and ROC AUC.
///
/// The loss is computed from the logits in f64 (stable for confidently wrong predictions), and
/// the AUC ranks logits rather than probabilities: the ranking is the same, but logits do not
/// saturate to exactly 0 or 1 in f32 and so produce fewer artificial ties.
pub fn evaluate(spec: &ModelSpec, params: &[f32], data: &Examples) -> Result<Metrics, ModelError> {
    let logits = net::predict_logits(spec, params, data)?;
    metrics_from_logits(&logits, &data.labels)
}

/// Metrics of logits against labels (0/1): what [`evaluate`] reports, for a model whose
/// logits were computed elsewhere (the label site of vertical split learning).
pub fn metrics_from_logits(logits: &[f32], labels: &[f32]) -> Result<Metrics, ModelError> {
    let mut loss = 0.0f64;
    let (mut tp, mut fp, mut tn, mut fneg) = (0u64, 0u64, 0u64, 0u64);
    for (&z, &y) in logits.iter().zip(labels) {
        loss += net::bce_scalar(f64::from(z), f64::from(y));
        // p >= 0.5 exactly when the logit is >= 0.
        match (z >= 0.0, y > 0.5) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fneg += 1,
        }
    }
    let n = logits.len().min(labels.len());
    if !loss.is_finite() {
        return Err(ModelError::Backend(
            "evaluation produced a non-finite loss".into(),
        ));
    }
    Ok(Metrics {
        loss: loss / n as f64,
        accuracy: (tp + tn) as f64 / n as f64,
        auc: roc_auc(logits, labels),
        true_positives: tp,
        false_positives: fp,
        true_negatives: tn,
        false_negatives: fneg,
        examples: n as u64,
    })
}

/// ROC AUC via the Mann–Whitney U statistic, with average ranks for tied scores (a tie between
/// a positive and a negative counts one half).
///
/// A label above 0.5 is positive. Returns 0.5 when one class is absent: the AUC is undefined
/// then, and 0.5 ("no better than chance") keeps aggregation and dashboards free of NaN. Only
/// the first `min(scores.len(), labels.len())` pairs are used. NaN scores rank above every
/// number (IEEE total order), so they never panic the sort.
pub fn roc_auc(scores: &[f32], labels: &[f32]) -> f64 {
    let n = scores.len().min(labels.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));

    let mut positives = 0u64;
    let mut rank_sum_pos = 0.0f64; // sum of 1-based ranks of the positives
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && scores[idx[j]].total_cmp(&scores[idx[i]]).is_eq() {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        for &k in &idx[i..j] {
            if labels[k] > 0.5 {
                positives += 1;
                rank_sum_pos += avg_rank;
            }
        }
        i = j;
    }
    let negatives = n as u64 - positives;
    if positives == 0 || negatives == 0 {
        return 0.5;
    }
    let p = positives as f64;
    let u = rank_sum_pos - p * (p + 1.0) / 2.0;
    u / (p * negatives as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_known_cases() {
        // Perfect, inverted and random-ish rankings.
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0]), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]), 0.0);
        // sklearn.metrics.roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) == 0.75
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
        // All scores tied: every positive/negative pair counts one half.
        assert_eq!(roc_auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]), 0.5);
        // One tie across classes: pairs (p=0.5 vs n=0.5) count 1/2, others decided.
        // positives {0.5, 0.9}, negatives {0.5, 0.1}: wins = 1 + 0.5 + 1 + 1 = 3.5 of 4.
        assert_eq!(roc_auc(&[0.5, 0.9, 0.5, 0.1], &[1.0, 1.0, 0.0, 0.0]), 0.875);
        // One class absent: documented 0.5.
        assert_eq!(roc_auc(&[0.1, 0.9], &[1.0, 1.0]), 0.5);
        assert_eq!(roc_auc(&[], &[]), 0.5);
        // NaN does not panic.
        let auc = roc_auc(&[f32::NAN, 0.2, 0.3], &[1.0, 0.0, 1.0]);
        assert!((0.0..=1.0).contains(&auc));
    }

    #[test]
    fn aggregate_weights_by_examples() {
        let a = Metrics {
            loss: 1.0,
            accuracy: 0.5,
            auc: 0.6,
            true_positives: 1,
            false_positives: 2,
            true_negatives: 3,
            false_negatives: 4,
            examples: 10,
        };
        let b = Metrics {
            loss: 0.0,
            accuracy: 1.0,
            auc: 1.0,
            true_positives: 10,
            false_positives: 0,
            true_negatives: 20,
            false_negatives: 0,
            examples: 30,
        };
        let m = Metrics::aggregate(&[a.clone(), b]).unwrap();
        assert!((m.loss - 0.25).abs() < 1e-12);
        assert!((m.accuracy - 0.875).abs() < 1e-12);
        assert!((m.auc - 0.9).abs() < 1e-12);
        assert_eq!(
            (
                m.true_positives,
                m.false_positives,
                m.true_negatives,
                m.false_negatives,
                m.examples
            ),
            (11, 2, 23, 4, 40)
        );
        assert_eq!(Metrics::aggregate(std::slice::from_ref(&a)).unwrap(), a);
        assert!(Metrics::aggregate(&[]).is_none());
        let empty = Metrics {
            examples: 0,
            ..a.clone()
        };
        assert!(Metrics::aggregate(&[empty]).is_none());
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-6);
    }
}
