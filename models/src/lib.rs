//! Models of Cohort as flat parameter vectors: initialisation, local training, evaluation and
//! downloadable artifacts.
//!
//! Every model is a binary classifier over tabular features: logistic regression or a ReLU
//! multi-layer perceptron ([`ModelSpec`]) whose single output is the logit of the positive
//! class. Outside this crate a model is nothing but a `Vec<f32>`; federated averaging,
//! differential privacy, secure aggregation and proofs all operate on that vector. Training
//! and evaluation use [burn](https://burn.dev) (pure-Rust `flex` CPU backend, autodiff) behind
//! this interface.
//!
//! # The flat parameter order
//!
//! **This order is a wire format. Every later stage depends on it; it must never change
//! silently.**
//!
//! For each dense layer `i = 0, 1, …` (input side first; see [`ModelSpec::layer_shapes`]):
//!
//! 1. its weight matrix `layers.{i}.weight`, shape `[fan_in, fan_out]`, **row-major with
//!    `fan_out` fastest**: the weight from input `r` to output `c` is at
//!    `offset + r * fan_out + c`;
//! 2. its bias `layers.{i}.bias`, shape `[fan_out]`.
//!
//! A layer computes `y = x · W + b` for a row vector `x`, followed by ReLU on every layer but
//! the last. For logistic regression with `d` features the vector is
//! `[w_0, …, w_{d-1}, b]` and the logit is `Σ x_j w_j + b`.
//!
//! [`parameter_layout`] lists the same order as named tensors with offsets; it is recorded in
//! every [`ModelCard`], and `model.safetensors` stores the tensors under these names and
//! shapes (its data section is byte-for-byte [`parameters_to_bytes`]). Values travel as
//! little-endian IEEE-754 `f32`, and [`parameters_sha256`] hashes exactly those bytes.
//!
//! # Determinism
//!
//! [`init_parameters`] is a documented function of the seed (ChaCha8), and [`train`] shuffles
//! each epoch with `ChaCha8Rng::seed_from_u64(seed + epoch)`, so a round can be replayed from
//! its configuration.

mod artifact;
mod candidates;
mod dp_sgd;
mod error;
mod metrics;
mod net;
mod onnx;
mod params;
mod spec;
mod split;
mod train;

pub use artifact::{
    CARD_FILE, KeptTop, MODEL_FORMAT, ModelCard, PrivacyGuarantee, SAFETENSORS_FILE, load_artifact,
    load_model, params_from_safetensors, safetensors_bytes, save_model, write_atomically,
};
pub use candidates::{MAX_CANDIDATE_VALUES, coalition_losses, coalition_model};
pub use dp_sgd::{DpSgdConfig, DpSgdPlan, clipped_gradient_sum};
pub use error::ModelError;
pub use metrics::{Metrics, evaluate, predict_proba, roc_auc};
pub use onnx::{ONNX_INPUT, ONNX_OUTPUT, to_onnx};
pub use params::{
    TensorInfo, check_parameters, init_parameters, parameter_layout, parameters_from_bytes,
    parameters_sha256, parameters_to_bytes,
};
pub use spec::{MAX_PARAMETERS, ModelSpec, OptimizerSpec, TrainConfig};
// Vertical split learning (issue 18): the label site's metrics from its logits.
pub use metrics::metrics_from_logits;
pub use split::{
    BottomPart, LabelSiteReport, MiddlePart, SplitLayout, TopPart, TopStep, UShapedLayout,
    VerticalBatch, VerticalLayout, equalize_gradient_norms, join_vertical,
    join_vertical_first_layer, norm_leak_auc, split_vertical, split_vertical_first_layer,
    vertical_schedule,
};
pub use train::{TrainOutcome, train};

#[cfg(test)]
mod split_tests;
#[cfg(test)]
mod tests;
