//! DP-SGD (Abadi et al. 2016) with per-sample gradients from one batched
//! backward pass.
//!
//! A dense layer computes `z = a·W + b`, so the gradient of one example's
//! loss with respect to `W` is the outer product `aᵢ ⊗ gᵢ` of the layer's
//! input and the loss gradient at its output, and with respect to `b` it is
//! `gᵢ`. Its squared norm is therefore `(‖aᵢ‖² + 1)·‖gᵢ‖²`: the per-example
//! norms need only the activations and output gradients that one ordinary
//! batched backward pass produces, never a `[batch, fan_in, fan_out]` tensor
//! (the "ghost norm" of Goodfellow 2015 and Li et al. 2022). With the clip
//! factors `cᵢ = min(1, C / (‖∇ᵢ‖ + 1e-6))` the clipped sum is again one
//! matrix product per layer, `Aᵀ·diag(c)·G`.
//!
//! Each step then
//! 1. draws its batch by Poisson sampling (every row independently with
//!    probability `q = batch_size / rows`) from the operating system's
//!    randomness, not from the job's seed: amplification by subsampling
//!    assumes nobody outside the hospital knows which rows were used;
//! 2. clips each example's gradient to `max_grad_norm` and sums;
//! 3. adds Gaussian noise of standard deviation `noise_multiplier ·
//!    max_grad_norm` from OpenDP's exact sampler ([`cohort_privacy::noise`]);
//! 4. divides by the expected batch size `q · rows` (not the drawn one,
//!    whose size would leak);
//! 5. hands the result to the optimizer, like any gradient.
//!
//! The privacy of the run is that of `epochs · ⌈rows / batch_size⌉` steps
//! of the Poisson-subsampled Gaussian mechanism with rate `q` and noise
//! multiplier `noise_multiplier` ([`DpSgdPlan`]); the accountant lives in
//! `cohort_privacy::dp`.

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};
use cohort_datasets::Examples;
use cohort_privacy::noise::{LatticeGaussian, NoiseAhead};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::net::{self, LayerTensors};
use crate::{ModelError, ModelSpec};

/// The DP-SGD settings of one local training run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSgdConfig {
    /// Noise standard deviation divided by `max_grad_norm`.
    pub noise_multiplier: f64,
    /// L2 bound each example's gradient is clipped to.
    pub max_grad_norm: f64,
}

impl DpSgdConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(ModelError::config(
                "dp.noise_multiplier",
                format!("must be finite and >= 0, got {}", self.noise_multiplier),
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return Err(ModelError::config(
                "dp.max_grad_norm",
                format!("must be finite and > 0, got {}", self.max_grad_norm),
            ));
        }
        Ok(())
    }
}

/// How many noisy steps at which sampling rate a DP-SGD run takes: what the
/// accountant composes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpSgdPlan {
    /// Poisson sampling rate `q = min(1, batch_size / rows)`.
    pub sampling_rate: f64,
    /// `⌈rows / batch_size⌉`: an epoch is as many steps as it takes to see
    /// `rows` examples in expectation.
    pub steps_per_epoch: u64,
}

impl DpSgdPlan {
    pub fn new(rows: usize, batch_size: usize) -> Self {
        let rows = rows.max(1);
        let batch_size = batch_size.max(1);
        Self {
            sampling_rate: (batch_size as f64 / rows as f64).min(1.0),
            steps_per_epoch: rows.div_ceil(batch_size) as u64,
        }
    }

    pub fn steps(&self, epochs: usize) -> u64 {
        self.steps_per_epoch.saturating_mul(epochs as u64)
    }

    /// Expected batch size `q · rows`, the divisor of the noisy sum.
    pub fn expected_batch(&self, rows: usize) -> f64 {
        (self.sampling_rate * rows as f64).max(1.0)
    }
}

/// Per-layer gradient tensors, shaped like [`LayerTensors`].
pub(crate) struct LayerGradients {
    pub(crate) weights: Vec<Tensor<2>>,
    pub(crate) biases: Vec<Tensor<1>>,
}

/// The sum over `rows` of each example's loss gradient clipped to L2 norm
/// `max_grad_norm`, in the flat parameter order, and the sum of their
/// losses. No noise: this is the deterministic part of a DP-SGD step.
pub fn clipped_gradient_sum(
    spec: &ModelSpec,
    params: &[f32],
    data: &Examples,
    rows: &[usize],
    max_grad_norm: f64,
) -> Result<(Vec<f32>, f64), ModelError> {
    net::check_model_and_data(spec, params, data)?;
    if let Some(&bad) = rows.iter().find(|&&r| r >= data.labels.len()) {
        return Err(ModelError::InvalidData(format!(
            "row {bad} requested from {} rows",
            data.labels.len()
        )));
    }
    let device = net::cpu();
    let tensors = LayerTensors::from_flat(spec, data.n_features, params, &device)?;
    let (grads, loss_sum) = clipped_sum(&tensors, data, rows, max_grad_norm)?;
    Ok((flatten(grads)?, loss_sum))
}

/// [`clipped_gradient_sum`] on tensors already on the device.
pub(crate) fn clipped_sum(
    tensors: &LayerTensors,
    data: &Examples,
    rows: &[usize],
    max_grad_norm: f64,
) -> Result<(LayerGradients, f64), ModelError> {
    let layers = tensors.weights.len();
    if rows.is_empty() {
        return Ok((
            LayerGradients {
                weights: tensors.weights.iter().map(Tensor::zeros_like).collect(),
                biases: tensors.biases.iter().map(Tensor::zeros_like).collect(),
            },
            0.0,
        ));
    }
    let device = tensors.weights[0].device();
    let x = net::rows_tensor(data, rows, &device);
    let y = net::labels_tensor(data, rows, &device);

    // Forward, keeping every layer's input and the ReLU masks.
    let mut inputs: Vec<Tensor<2>> = Vec::with_capacity(layers);
    let mut inactive = Vec::with_capacity(layers.saturating_sub(1));
    let mut h = x;
    for (l, (w, b)) in tensors.weights.iter().zip(&tensors.biases).enumerate() {
        let z = h.clone().matmul(w.clone()) + b.clone().unsqueeze_dim::<2>(0);
        inputs.push(h);
        if l + 1 < layers {
            inactive.push(z.clone().lower_equal_elem(0.0));
            h = relu(z);
        } else {
            h = z;
        }
    }
    let logits = h;
    let loss_sum = f64::from(
        net::bce_with_logits(logits.clone(), y.clone())
            .try_into_scalar::<f32>()
            .map_err(|e| ModelError::Backend(format!("reading the loss failed: {e:?}")))?,
    ) * rows.len() as f64;

    // Backward: the gradient of each example's own loss at every layer's
    // output, [batch, fan_out].
    let mut outputs: Vec<Tensor<2>> = Vec::with_capacity(layers);
    let mut g = sigmoid(logits) - y;
    for l in (0..layers).rev() {
        outputs.push(g.clone());
        if l > 0 {
            let back = g.matmul(tensors.weights[l].clone().transpose());
            g = back.mask_fill(inactive[l - 1].clone(), 0.0);
        }
    }
    outputs.reverse();

    // ‖∇ᵢ‖² = Σ_layers (‖aᵢ‖² + 1)·‖gᵢ‖².
    let mut norm_sq: Option<Tensor<2>> = None;
    for (a, g) in inputs.iter().zip(&outputs) {
        let term = (a.clone().square().sum_dim(1).add_scalar(1.0)) * g.clone().square().sum_dim(1);
        norm_sq = Some(match norm_sq {
            Some(acc) => acc + term,
            None => term,
        });
    }
    let norm = norm_sq
        .ok_or_else(|| ModelError::Backend("a model without layers".into()))?
        .sqrt();
    let factor = norm
        .add_scalar(1e-6)
        .recip()
        .mul_scalar(max_grad_norm)
        .clamp_max(1.0);

    let mut weights = Vec::with_capacity(layers);
    let mut biases = Vec::with_capacity(layers);
    for (a, g) in inputs.into_iter().zip(outputs) {
        let scaled = g * factor.clone();
        weights.push(a.transpose().matmul(scaled.clone()));
        biases.push(scaled.sum_dim(0).squeeze_dim::<1>(0));
    }
    Ok((LayerGradients { weights, biases }, loss_sum))
}

fn flatten(grads: LayerGradients) -> Result<Vec<f32>, ModelError> {
    LayerTensors {
        weights: grads.weights,
        biases: grads.biases,
    }
    .to_flat()
}

/// One noisy, normalised DP-SGD gradient: Poisson batch, clipped sum, noise,
/// division by the expected batch size. Returns the gradient, the drawn
/// batch size and its loss sum (both stay in the hospital).
pub(crate) fn noisy_gradient(
    spec: &ModelSpec,
    tensors: &LayerTensors,
    data: &Examples,
    dp: &DpSgdConfig,
    plan: &DpSgdPlan,
    rng: &mut StdRng,
    noise: &mut NoiseAhead,
) -> Result<(LayerGradients, usize, f64), ModelError> {
    let n = data.labels.len();
    let rows = poisson_rows(n, plan.sampling_rate, rng);
    let (grads, loss_sum) = clipped_sum(tensors, data, &rows, dp.max_grad_norm)?;
    let flat = flatten(grads)?;
    let noisy = noise.add(&flat).map_err(noise_error)?;
    let scale = (1.0 / plan.expected_batch(n)) as f32;
    let normalised: Vec<f32> = noisy.into_iter().map(|v| v * scale).collect();
    let device = tensors.weights[0].device();
    let split = LayerTensors::from_flat(spec, data.n_features, &normalised, &device)?;
    Ok((
        LayerGradients {
            weights: split.weights,
            biases: split.biases,
        },
        rows.len(),
        loss_sum,
    ))
}

/// The noise of every step of a DP-SGD run on `parameters` values, drawn
/// on its own thread while the steps compute their gradients.
pub(crate) fn noise_ahead(
    parameters: usize,
    dp: &DpSgdConfig,
    steps: usize,
) -> Result<NoiseAhead, ModelError> {
    let mechanism = LatticeGaussian::new(parameters, dp.noise_multiplier, dp.max_grad_norm)
        .map_err(noise_error)?;
    Ok(NoiseAhead::start(mechanism, steps))
}

fn noise_error(e: cohort_privacy::noise::NoiseError) -> ModelError {
    ModelError::Backend(format!("DP noise: {e}"))
}

/// Poisson sampling of `0..n` at rate `q`: every row independently with
/// probability `q`, drawn by skipping geometrically distributed gaps, so a
/// step costs O(q·n) draws rather than one per row.
pub(crate) fn poisson_rows(n: usize, q: f64, rng: &mut StdRng) -> Vec<usize> {
    if q >= 1.0 {
        return (0..n).collect();
    }
    if q <= 0.0 {
        return Vec::new();
    }
    let log_miss = (-q).ln_1p();
    let mut rows = Vec::with_capacity((q * n as f64 * 1.25) as usize + 8);
    let mut next = 0usize;
    loop {
        // Rows skipped before the next one taken: Geometric(q) failures,
        // floor(ln U / ln(1 − q)) with U uniform in (0, 1].
        let u: f64 = 1.0 - rng.random::<f64>();
        let skip = (u.ln() / log_miss).floor();
        if !skip.is_finite() || skip >= (n - next) as f64 {
            return rows;
        }
        next += skip as usize;
        rows.push(next);
        next += 1;
        if next >= n {
            return rows;
        }
    }
}

/// The batch sampler's randomness: the operating system's, never a seed the
/// coordinator knows.
pub(crate) fn sampling_rng() -> StdRng {
    StdRng::from_os_rng()
}
