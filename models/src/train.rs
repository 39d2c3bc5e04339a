//! Local mini-batch training with burn autodiff.

use burn::tensor::Tensor;
use cohort_datasets::Examples;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::dp_sgd::{self, DpSgdPlan, LayerGradients};
use crate::net::{self, LayerTensors};
use crate::{ModelError, ModelSpec, OptimizerSpec, TrainConfig};

/// Result of one round of local training.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Updated parameters in the documented flat order.
    pub parameters: Vec<f32>,
    /// Mean binary cross-entropy over the examples of the last epoch, measured on the fly
    /// (each batch before its update). The FedProx penalty is not included, so the value is
    /// comparable across different `proximal_mu`.
    pub loss: f64,
    /// Number of local examples (the weight of this client in federated averaging).
    pub examples: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Examples visited over all steps (under DP-SGD the Poisson batches
    /// vary in size; this count stays in the hospital).
    pub samples: u64,
}

/// Trains `start` on `data` for `cfg.epochs` epochs and returns the new parameters.
///
/// * Each epoch visits the examples in an order shuffled by
///   `ChaCha8Rng::seed_from_u64(cfg.seed + epoch)`, in batches of `cfg.batch_size` (the last
///   one may be smaller), so a round is reproducible from its configuration.
/// * Loss: mean binary cross-entropy on logits, computed in a numerically stable form.
/// * Optimizer state (momentum, Adam moments) starts from zero every call: in federated
///   learning each round starts from a fresh global model.
/// * FedProx: with `mu = cfg.proximal_mu > 0`, the gradient `mu * (w - start)` of the penalty
///   `mu/2 * ||w - start||^2` is added to every step.
///
/// Gradients come from burn's autodiff on the CPU (`flex`) backend; the optimizer updates are
/// whole-tensor operations, so the cost per step is a handful of passes over the parameters.
///
/// # Errors
///
/// Invalid configuration, empty or malformed data, `n_features` mismatch, a bad `start` vector,
/// or [`ModelError::Diverged`] when the loss or the parameters stop being finite.
pub fn train(
    spec: &ModelSpec,
    start: &[f32],
    data: &Examples,
    cfg: &TrainConfig,
) -> Result<TrainOutcome, ModelError> {
    cfg.validate()?;
    if let Some(dp) = &cfg.dp {
        dp.validate()?;
    }
    let n_features = data.n_features;
    net::check_model_and_data(spec, start, data)?;

    let n = data.labels.len();
    let mu = cfg.mu();
    let device = net::cpu();
    let autodiff = device.clone().autodiff();

    let mut tensors = LayerTensors::from_flat(spec, n_features, start, &device)?;
    let mut weight_slots: Vec<Slot<2>> = Vec::with_capacity(tensors.weights.len());
    let mut bias_slots: Vec<Slot<1>> = Vec::with_capacity(tensors.biases.len());
    for (w, b) in tensors.weights.iter().zip(&tensors.biases) {
        weight_slots.push(Slot::new(w, mu > 0.0));
        bias_slots.push(Slot::new(b, mu > 0.0));
    }

    let dp_plan = cfg.dp.map(|_| DpSgdPlan::new(n, cfg.batch_size));
    let mut sampler = cfg.dp.map(|_| dp_sgd::sampling_rng());
    let mut noise = match (&cfg.dp, &dp_plan) {
        (Some(dp), Some(plan)) => {
            let steps = usize::try_from(plan.steps(cfg.epochs)).unwrap_or(usize::MAX);
            Some(dp_sgd::noise_ahead(start.len(), dp, steps)?)
        }
        _ => None,
    };
    let mut order: Vec<usize> = (0..n).collect();
    let mut step: i32 = 0;
    let mut samples: u64 = 0;
    let mut last_loss = f64::NAN;
    for epoch in 0..cfg.epochs {
        let mut loss_sum = 0.0f64;
        let mut seen = 0usize;
        let batches = match &dp_plan {
            Some(plan) => plan.steps_per_epoch as usize,
            None => {
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(epoch as u64));
                order.sort_unstable();
                order.shuffle(&mut rng);
                n.div_ceil(cfg.batch_size)
            }
        };
        for batch in 0..batches {
            step = step.saturating_add(1);
            // The step's gradient, how many examples it saw, and the sum of
            // their losses.
            let (grads, drawn, batch_loss) =
                match (&cfg.dp, &dp_plan, sampler.as_mut(), noise.as_mut()) {
                    (Some(dp), Some(plan), Some(rng), Some(noise)) => {
                        dp_sgd::noisy_gradient(spec, &tensors, data, dp, plan, rng, noise)?
                    }
                    _ => {
                        let rows = &order[batch * cfg.batch_size..]
                            [..cfg.batch_size.min(n - batch * cfg.batch_size)];
                        let (grads, mean) = batch_gradient(&tensors, data, rows, &autodiff)?;
                        (grads, rows.len(), mean * rows.len() as f64)
                    }
                };
            if !batch_loss.is_finite() {
                return Err(ModelError::Diverged {
                    epoch,
                    batch,
                    loss: batch_loss / drawn.max(1) as f64,
                });
            }
            loss_sum += batch_loss;
            seen += drawn;
            let hyper = Hyper {
                optimizer: &cfg.optimizer,
                mu,
                step,
            };
            apply(
                &mut tensors,
                grads,
                &mut weight_slots,
                &mut bias_slots,
                &hyper,
            );
        }
        last_loss = loss_sum / seen.max(1) as f64;
        samples += seen as u64;
    }

    let parameters = tensors.to_flat()?;
    if crate::params::check_finite(&parameters).is_err() {
        return Err(ModelError::Diverged {
            epoch: cfg.epochs - 1,
            batch: n.div_ceil(cfg.batch_size) - 1,
            loss: last_loss,
        });
    }
    Ok(TrainOutcome {
        parameters,
        loss: last_loss,
        examples: n,
        steps: step.max(0) as u64,
        samples,
    })
}

/// The mean-loss gradient of one batch, from burn's autodiff, and the loss.
fn batch_gradient(
    tensors: &LayerTensors,
    data: &Examples,
    rows: &[usize],
    autodiff: &burn::tensor::Device,
) -> Result<(LayerGradients, f64), ModelError> {
    let x = net::rows_tensor(data, rows, autodiff);
    let y = net::labels_tensor(data, rows, autodiff);
    // Forward and backward on a graph whose leaves are the current parameters.
    let model = tensors.to_net(true);
    let loss = net::bce_with_logits(model.forward(x), y);
    let mut grads = loss.backward();
    let loss_value = f64::from(
        loss.try_into_scalar::<f32>()
            .map_err(|e| ModelError::Backend(format!("reading the loss failed: {e:?}")))?,
    );
    Ok((layer_gradients(&model, &mut grads)?, loss_value))
}

/// Takes every layer's weight and bias gradient off `grads`.
pub(crate) fn layer_gradients(
    model: &net::DenseNet,
    grads: &mut burn::tensor::Gradients,
) -> Result<LayerGradients, ModelError> {
    let mut weights = Vec::with_capacity(model.layers.len());
    let mut biases = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        weights.push(
            layer
                .weight
                .grad_remove(grads)
                .ok_or_else(|| missing_gradient("weight"))?,
        );
        let bias = layer
            .bias
            .as_ref()
            .ok_or_else(|| missing_gradient("bias"))?;
        biases.push(
            bias.grad_remove(grads)
                .ok_or_else(|| missing_gradient("bias"))?,
        );
    }
    Ok(LayerGradients { weights, biases })
}

/// One optimizer step on every layer. The graph that produced `grads` is
/// gone by now, so the updates can reuse buffers instead of allocating.
pub(crate) fn apply(
    tensors: &mut LayerTensors,
    grads: LayerGradients,
    weight_slots: &mut [Slot<2>],
    bias_slots: &mut [Slot<1>],
    hyper: &Hyper<'_>,
) {
    let weights = std::mem::take(&mut tensors.weights);
    tensors.weights = weights
        .into_iter()
        .zip(grads.weights)
        .zip(weight_slots.iter_mut())
        .map(|((w, g), slot)| slot.update(w, g, hyper))
        .collect();
    let biases = std::mem::take(&mut tensors.biases);
    tensors.biases = biases
        .into_iter()
        .zip(grads.biases)
        .zip(bias_slots.iter_mut())
        .map(|((b, g), slot)| slot.update(b, g, hyper))
        .collect();
}

pub(crate) fn missing_gradient(what: &str) -> ModelError {
    ModelError::Backend(format!("autodiff produced no gradient for a layer {what}"))
}

/// Hyper-parameters of one optimizer step.
pub(crate) struct Hyper<'a> {
    pub(crate) optimizer: &'a OptimizerSpec,
    pub(crate) mu: f64,
    /// 1-based step counter (Adam bias correction).
    pub(crate) step: i32,
}

/// Optimizer state of one parameter tensor.
pub(crate) struct Slot<const D: usize> {
    /// The round's starting value, kept only for FedProx.
    start: Option<Tensor<D>>,
    /// Momentum buffer (SGD) or first moment (Adam).
    first: Option<Tensor<D>>,
    /// Second moment (Adam).
    second: Option<Tensor<D>>,
}

impl<const D: usize> Slot<D> {
    pub(crate) fn new(value: &Tensor<D>, keep_start: bool) -> Self {
        Self {
            start: keep_start.then(|| value.clone()),
            first: None,
            second: None,
        }
    }

    /// Returns the updated value. All operations are whole-tensor and run on non-autodiff
    /// tensors, so no graph is recorded for the optimizer.
    pub(crate) fn update(
        &mut self,
        value: Tensor<D>,
        grad: Tensor<D>,
        hyper: &Hyper<'_>,
    ) -> Tensor<D> {
        let grad = match &self.start {
            Some(start) if hyper.mu > 0.0 => {
                grad + (value.clone() - start.clone()).mul_scalar(hyper.mu)
            }
            _ => grad,
        };
        match *hyper.optimizer {
            OptimizerSpec::Sgd {
                learning_rate,
                momentum,
            } => {
                let direction = if momentum > 0.0 {
                    // PyTorch convention: the first step uses the raw gradient as velocity.
                    let v = match self.first.take() {
                        Some(v) => v.mul_scalar(momentum) + grad,
                        None => grad,
                    };
                    self.first = Some(v.clone());
                    v
                } else {
                    grad
                };
                value - direction.mul_scalar(learning_rate)
            }
            OptimizerSpec::Adam {
                learning_rate,
                beta1,
                beta2,
                epsilon,
            } => {
                let m = match self.first.take() {
                    Some(m) => m.mul_scalar(beta1) + grad.clone().mul_scalar(1.0 - beta1),
                    None => grad.clone().mul_scalar(1.0 - beta1),
                };
                let g2 = grad.square().mul_scalar(1.0 - beta2);
                let v = match self.second.take() {
                    Some(v) => v.mul_scalar(beta2) + g2,
                    None => g2,
                };
                let bias1 = 1.0 - beta1.powi(hyper.step);
                let bias2 = 1.0 - beta2.powi(hyper.step);
                let denom = v.clone().div_scalar(bias2).sqrt().add_scalar(epsilon);
                let update = m.clone().mul_scalar(learning_rate / bias1) / denom;
                self.first = Some(m);
                self.second = Some(v);
                value - update
            }
        }
    }
}
