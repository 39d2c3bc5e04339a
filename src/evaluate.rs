//! `cohort evaluate`: apply a downloaded model, with the schema and
//! preprocessing stored in its card, to a new labelled file.

use std::path::Path;

use anyhow::{Context, Result, bail};
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
    let examples = examples_for(&card, data)?;
    Ok((card, params, examples))
}

fn examples_for(card: &ModelCard, data: &Path) -> Result<Examples> {
    let dataset = LocalDataset::load(data, &pinned_spec_for(&card.data, &card.preprocessing))
        .with_context(|| format!("{} does not fit the model's schema", data.display()))?;
    Ok(dataset.preprocess(&card.preprocessing)?)
}

pub fn evaluate_file(model_dir: &Path, data: &Path) -> Result<(ModelCard, Metrics)> {
    let (card, params, examples) = model_examples(model_dir, data)?;
    let metrics = cohort_models::evaluate(&card.model, &params, &examples)?;
    Ok((card, metrics))
}

/// The whole model of a vertical job, at its label site: the first layer
/// downloaded from the coordinator (`model_dir`) joined with the top part the
/// label site kept in `label_site_data_dir` (its client's `--data-dir`),
/// found by the digest in the card and checked against it.
pub fn join_kept_top(
    model_dir: &Path,
    label_site_data_dir: &Path,
) -> Result<(ModelCard, Vec<f32>)> {
    let (card, first_layer) = cohort_models::load_artifact(model_dir)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let Some(kept) = &card.kept_top else {
        bail!(
            "the model in {} is whole; --top-from is for the first layer of a vertical model, \
             whose top part its label site kept",
            model_dir.display()
        );
    };
    let top = cohort_client::kept_top::load(label_site_data_dir, &card.job_id, &kept.sha256)?;
    Ok(card.join_kept_top(&first_layer, &top)?)
}

/// `cohort evaluate`: [`evaluate_file`], or with `top_from`
/// [`evaluate_with_kept_top`].
pub fn evaluate_model(
    model_dir: &Path,
    top_from: Option<&Path>,
    data: &Path,
) -> Result<(ModelCard, Metrics)> {
    match top_from {
        None => evaluate_file(model_dir, data),
        Some(dir) => evaluate_with_kept_top(model_dir, dir, data),
    }
}

/// [`evaluate_file`] of a vertical model at its label site ([`join_kept_top`]).
pub fn evaluate_with_kept_top(
    model_dir: &Path,
    label_site_data_dir: &Path,
    data: &Path,
) -> Result<(ModelCard, Metrics)> {
    let (card, params) = join_kept_top(model_dir, label_site_data_dir)?;
    let examples = examples_for(&card, data)?;
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
