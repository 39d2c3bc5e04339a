//! Bridge between the flat parameter vector and burn tensors/modules.
//!
//! burn 0.22 tensors carry no backend type parameter: a [`Tensor<D>`] lives on a runtime
//! [`Device`], and automatic differentiation is a property of the device (or of the tensor,
//! via [`Tensor::autodiff`]). This crate always computes on the pure-Rust `flex` CPU backend.
//!
//! Conversions are O(n) bulk copies (`TensorData::new(Vec<f32>, shape)` in, `into_vec` out); no
//! per-element tensor operation is ever issued, so 10^7-parameter models convert in
//! milliseconds.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use cohort_datasets::Examples;

use crate::{ModelError, ModelSpec};

/// The compute device: burn's pure-Rust CPU backend.
pub(crate) fn cpu() -> Device {
    Device::flex()
}

/// A stack of dense layers with ReLU between them and a single-logit output.
///
/// Uses burn's own [`Linear`], whose weight is stored as `[d_input, d_output]`, i.e. exactly the
/// `[fan_in, fan_out]` row-major block of the flat layout, so conversion is a straight copy.
#[derive(Module, Debug)]
pub(crate) struct DenseNet {
    pub(crate) layers: Vec<Linear>,
}

/// Per-layer weight (`[fan_in, fan_out]`) and bias (`[fan_out]`) tensors.
pub(crate) struct LayerTensors {
    pub(crate) weights: Vec<Tensor<2>>,
    pub(crate) biases: Vec<Tensor<1>>,
}

impl LayerTensors {
    /// Splits a flat vector (already checked by `check_parameters`) into per-layer tensors.
    pub(crate) fn from_flat(
        spec: &ModelSpec,
        n_features: usize,
        params: &[f32],
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::from_shapes(&spec.layer_shapes(n_features), n_features, params, device)
    }

    /// Like [`LayerTensors::from_flat`] for an explicit list of `(fan_in, fan_out)` layers
    /// (a part of a split network).
    pub(crate) fn from_shapes(
        shapes: &[(usize, usize)],
        n_features: usize,
        params: &[f32],
        device: &Device,
    ) -> Result<Self, ModelError> {
        let shapes = shapes.to_vec();
        let mut weights = Vec::with_capacity(shapes.len());
        let mut biases = Vec::with_capacity(shapes.len());
        let mut rest = params;
        for (fan_in, fan_out) in shapes {
            let (w, tail) = split(rest, fan_in * fan_out, params.len(), n_features)?;
            let (b, tail) = split(tail, fan_out, params.len(), n_features)?;
            rest = tail;
            weights.push(Tensor::<2>::from_data(
                TensorData::new(w.to_vec(), [fan_in, fan_out]),
                device,
            ));
            biases.push(Tensor::<1>::from_data(
                TensorData::new(b.to_vec(), [fan_out]),
                device,
            ));
        }
        if !rest.is_empty() {
            return Err(ModelError::ParameterCount {
                expected: params.len() - rest.len(),
                actual: params.len(),
                n_features,
            });
        }
        Ok(Self { weights, biases })
    }

    /// Concatenates the tensors back into the flat order.
    pub(crate) fn to_flat(&self) -> Result<Vec<f32>, ModelError> {
        let total: usize = self
            .weights
            .iter()
            .map(|w| w.shape().num_elements())
            .chain(self.biases.iter().map(|b| b.shape().num_elements()))
            .sum();
        let mut out = Vec::with_capacity(total);
        for (w, b) in self.weights.iter().zip(&self.biases) {
            out.extend_from_slice(&tensor_to_vec(w.clone())?);
            out.extend_from_slice(&tensor_to_vec(b.clone())?);
        }
        Ok(out)
    }

    /// Wraps the tensors as burn parameters. With `track_gradients`, the parameters are moved
    /// onto the autodiff graph and marked as requiring gradients; the tensors in `self` are
    /// untouched (clones share storage, so this is cheap).
    pub(crate) fn to_net(&self, track_gradients: bool) -> DenseNet {
        let layers = self
            .weights
            .iter()
            .zip(&self.biases)
            .map(|(w, b)| {
                let (w, b) = if track_gradients {
                    (w.clone().autodiff(), b.clone().autodiff())
                } else {
                    (w.clone(), b.clone())
                };
                Linear {
                    weight: Param::from_tensor(w),
                    bias: Some(Param::from_tensor(b)),
                }
            })
            .collect();
        DenseNet { layers }
    }
}

fn split(
    params: &[f32],
    n: usize,
    total: usize,
    n_features: usize,
) -> Result<(&[f32], &[f32]), ModelError> {
    if params.len() < n {
        return Err(ModelError::ParameterCount {
            expected: total - params.len() + n,
            actual: total,
            n_features,
        });
    }
    Ok(params.split_at(n))
}

/// Reads a float tensor back into a `Vec<f32>` (one bulk copy).
pub(crate) fn tensor_to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    t.try_into_data()
        .map_err(|e| ModelError::Backend(format!("reading a tensor back failed: {e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Backend(format!("tensor is not f32: {e:?}")))
}

impl DenseNet {
    /// Logits `[batch, 1]` for inputs `[batch, n_features]`.
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, false)
    }

    /// ReLU after every layer but the last, and after the last too with `relu_last` (the
    /// bottom part of a split network ends in a hidden layer).
    pub(crate) fn forward_with(&self, x: Tensor<2>, relu_last: bool) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last || relu_last {
                h = relu(h);
            }
        }
        h
    }

    /// Back to per-layer tensors (used by tests to check the flat→module→flat identity).
    #[cfg(test)]
    pub(crate) fn to_tensors(&self) -> Result<LayerTensors, ModelError> {
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for layer in &self.layers {
            weights.push(layer.weight.val());
            biases.push(
                layer
                    .bias
                    .as_ref()
                    .ok_or_else(|| ModelError::Backend("layer without bias".into()))?
                    .val(),
            );
        }
        Ok(LayerTensors { weights, biases })
    }
}

/// Mean binary cross-entropy on logits, `mean((1 - y) * z - log_sigmoid(z))`.
///
/// Algebraically equal to `-(y log σ(z) + (1-y) log(1-σ(z)))` but never evaluates `log(0)` or
/// `exp` of a large number, and it is smooth everywhere (its gradient is exactly `σ(z) - y`,
/// also at `z = 0`), unlike the `max(z, 0) - zy + log1p(exp(-|z|))` form.
pub(crate) fn bce_with_logits(logits: Tensor<2>, labels: Tensor<2>) -> Tensor<1> {
    let log_p = burn::tensor::activation::log_sigmoid(logits.clone());
    (labels.neg().add_scalar(1.0) * logits - log_p).mean()
}

/// Stable scalar BCE on one logit, in f64 (evaluation computes its loss outside the graph).
pub(crate) fn bce_scalar(logit: f64, label: f64) -> f64 {
    // log(1 + exp(-|z|)) + max(z, 0) - z*y
    logit.max(0.0) - logit * label + (-logit.abs()).exp().ln_1p()
}

/// Validates an example set.
///
/// Data come from hospital files, so inconsistencies are errors, not panics: there must be at
/// least one example, the feature matrix must be `len × n_features`, labels exactly 0 or 1, and all features finite (a single NaN
/// would otherwise surface as a misleading "training diverged").
pub(crate) fn check_data(data: &Examples) -> Result<(), ModelError> {
    let n_features = data.n_features;
    let rows = data.labels.len();
    if rows == 0 {
        return Err(ModelError::EmptyData);
    }
    if rows.checked_mul(n_features) != Some(data.features.len()) {
        return Err(ModelError::InvalidData(format!(
            "{} feature values for {rows} labels × {n_features} features",
            data.features.len()
        )));
    }
    if let Some(i) = data.labels.iter().position(|&y| y != 0.0 && y != 1.0) {
        return Err(ModelError::InvalidData(format!(
            "label of row {i} is {}, expected 0 or 1",
            data.labels[i]
        )));
    }
    if let Some(i) = data.features.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::InvalidData(format!(
            "feature {} of row {} is not finite",
            i % n_features,
            i / n_features
        )));
    }
    Ok(())
}

/// Checks `params` against `spec` for the width of `data`, then `data` itself.
///
/// The model's input width is implied by the length of the parameter vector, so data of the
/// wrong width shows up as a [`ModelError::ParameterCount`] naming the data's width.
pub(crate) fn check_model_and_data(
    spec: &ModelSpec,
    params: &[f32],
    data: &Examples,
) -> Result<(), ModelError> {
    crate::check_parameters(spec, data.n_features, params)?;
    check_data(data)
}

/// The given rows as an input tensor `[rows, n_features]`.
pub(crate) fn rows_tensor(data: &Examples, rows: &[usize], device: &Device) -> Tensor<2> {
    let d = data.n_features;
    let mut buf = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        buf.extend_from_slice(&data.features[r * d..(r + 1) * d]);
    }
    Tensor::<2>::from_data(TensorData::new(buf, [rows.len(), d]), device)
}

/// Labels of `rows` as a `[rows, 1]` tensor.
pub(crate) fn labels_tensor(data: &Examples, rows: &[usize], device: &Device) -> Tensor<2> {
    let buf: Vec<f32> = rows.iter().map(|&r| data.labels[r]).collect();
    Tensor::<2>::from_data(TensorData::new(buf, [rows.len(), 1]), device)
}

/// Logits for every example, computed in chunks so that a wide hidden layer on a large
/// evaluation set does not allocate `rows × width` floats at once.
pub(crate) fn predict_logits(
    spec: &ModelSpec,
    params: &[f32],
    data: &Examples,
) -> Result<Vec<f32>, ModelError> {
    check_model_and_data(spec, params, data)?;
    const CHUNK_FLOATS: usize = 1 << 22;
    let widest = spec
        .layer_shapes(data.n_features)
        .iter()
        .map(|&(i, o)| i.max(o))
        .max()
        .unwrap_or(1);
    let rows_per_chunk = (CHUNK_FLOATS / widest).max(1);

    let device = cpu();
    let net = LayerTensors::from_flat(spec, data.n_features, params, &device)?.to_net(false);
    let all: Vec<usize> = (0..data.labels.len()).collect();
    let mut logits = Vec::with_capacity(all.len());
    for rows in all.chunks(rows_per_chunk) {
        let x = rows_tensor(data, rows, &device);
        logits.extend(tensor_to_vec(net.forward(x))?);
    }
    Ok(logits)
}
