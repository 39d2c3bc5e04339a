//! `cohort evaluate`: apply a downloaded model, with the schema and
//! preprocessing stored in its card, to a new labelled file.

use std::path::Path;

use anyhow::{Context, Result};
use cohort_datasets::{DataSpec, Examples, LocalDataset, NumericColumns, Preprocessing};
use cohort_models::{Metrics, ModelCard};

/// The job's data spec pinned to the model's resolved feature layout, so a
/// new file whose columns come in another order (or with extra columns)
/// still lines up with the training features.
pub fn pinned_spec_for(data: &DataSpec, preprocessing: &Preprocessing) -> DataSpec {
    let schema = &preprocessing.schema;
    DataSpec {
        numeric: NumericColumns::Listed(schema.numeric.clone()),
        categorical: schema.categorical.iter().cloned().collect(),
        ..data.clone()
    }
}

/// `data` preprocessed exactly as the model in `model_dir` was trained.
fn model_examples(model_dir: &Path, data: &Path) -> Result<(ModelCard, Vec<f32>, Examples)> {
    let (card, params) = cohort_models::load_model(model_dir)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let dataset = LocalDataset::load(data, &pinned_spec_for(&card.data, &card.preprocessing))
        .with_context(|| format!("{} does not fit the model's schema", data.display()))?;
    let examples = dataset.preprocess(&card.preprocessing)?;
    Ok((card, params, examples))
}

pub fn evaluate_file(model_dir: &Path, data: &Path) -> Result<(ModelCard, Metrics)> {
    let (card, params, examples) = model_examples(model_dir, data)?;
    let metrics = cohort_models::evaluate(&card.model, &params, &examples)?;
    Ok((card, metrics))
}

/// The dataset commitment a hospital's client sent for `data` in the job
/// that produced the model: compare it with the ledger's round entries.
pub fn dataset_commitment(model_dir: &Path, data: &Path) -> Result<(String, usize)> {
    let (_, _, examples) = model_examples(model_dir, data)?;
    Ok((examples.commitment(), examples.len()))
}

/// `cohort evaluate`'s one-line summary.
pub fn render_metrics(m: &Metrics) -> String {
    format!(
        "examples {}  accuracy {:.4}  auc {:.4}  loss {:.4}  (tp {} fp {} tn {} fn {})",
        m.examples,
        m.accuracy,
        m.auc,
        m.loss,
        m.true_positives,
        m.false_positives,
        m.true_negatives,
        m.false_negatives
    )
}

/// A model's inputs and outputs on a labelled file: the preprocessed
/// feature rows the network sees, its probability of the positive class for
/// each, and the labels. What the PyTorch and ONNX parity checks compare.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Predictions {
    pub feature_names: Vec<String>,
    /// One row per example, `feature_names.len()` values each.
    pub features: Vec<Vec<f32>>,
    pub probabilities: Vec<f32>,
    pub labels: Vec<f32>,
}

pub fn predict_file(model_dir: &Path, data: &Path) -> Result<Predictions> {
    let (card, params, examples) = model_examples(model_dir, data)?;
    let probabilities = cohort_models::predict_proba(&card.model, &params, &examples)?;
    Ok(Predictions {
        feature_names: card.feature_names,
        features: (0..examples.len())
            .map(|i| examples.row(i).to_vec())
            .collect(),
        probabilities,
        labels: examples.labels,
    })
}
