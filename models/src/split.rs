//! Split learning: a network cut into a bottom part, which runs where the data is, and a top
//! part, which runs elsewhere (the coordinator in SplitFed, the label site in vertical split
//! learning).
//!
//! The flat order puts layers input side first, so the bottom part's parameters are a prefix
//! of the whole model's vector and the top part's the rest: [`SplitLayout::join`] is a plain
//! concatenation, and a split model is stored, signed and evaluated as one ordinary model.
//!
//! Each side trains on its own: the bottom turns a batch into activations at the cut and,
//! given the gradient of the batch's mean loss with respect to those activations, takes an
//! optimizer step ([`BottomPart`]); the top takes activations and labels, takes its step and
//! returns that gradient ([`TopPart`]). Together one step of each is one step of the unsplit
//! network on the same batch.
//!
//! Vertical split learning cuts *inside* the first layer instead: every site multiplies its
//! own columns by its rows of the first weight matrix (plus a bias), the label site sums the
//! sites' pre-activations, and its top part starts with the first layer's ReLU
//! ([`TopPart::vertical`]). The sum of the sites' parts is the first layer of the network on
//! the joined columns, with the biases added up ([`join_vertical`]).
//!
//! [`norm_leak_auc`] measures how much the gradients a label site sends back reveal about its
//! labels (the norm attack of Li et al. 2022), and [`equalize_gradient_norms`] is the
//! max-norm defence of the same paper.

use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use cohort_datasets::Examples;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::net::{self, DenseNet, LayerTensors};
use crate::train::{Hyper, Slot, apply, layer_gradients, missing_gradient};
use crate::{ModelError, ModelSpec, OptimizerSpec};

/// Where a model of a given input width is cut, and how long each part's vector is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitLayout {
    /// `(fan_in, fan_out)` of the bottom part's layers.
    pub bottom_shapes: Vec<(usize, usize)>,
    /// `(fan_in, fan_out)` of the top part's layers; the last has one output.
    pub top_shapes: Vec<(usize, usize)>,
}

impl SplitLayout {
    /// The cut of `spec` (its `[model] cut`, by default after the first hidden layer) for
    /// `n_features` inputs.
    pub fn new(spec: &ModelSpec, n_features: usize) -> Result<Self, ModelError> {
        spec.validate_for(n_features)?;
        let bottom_layers = spec.bottom_layers()?;
        let mut shapes = spec.layer_shapes(n_features);
        let top_shapes = shapes.split_off(bottom_layers);
        Ok(Self {
            bottom_shapes: shapes,
            top_shapes,
        })
    }

    /// Number of activations per example at the cut.
    pub fn cut_width(&self) -> usize {
        self.bottom_shapes.last().map_or(0, |&(_, o)| o)
    }

    /// Length of the bottom part's parameter vector.
    pub fn bottom_len(&self) -> usize {
        count(&self.bottom_shapes)
    }

    /// Length of the top part's parameter vector.
    pub fn top_len(&self) -> usize {
        count(&self.top_shapes)
    }

    /// The bottom and top parts of a whole model's vector.
    pub fn split<'a>(&self, params: &'a [f32]) -> Result<(&'a [f32], &'a [f32]), ModelError> {
        let expected = self.bottom_len() + self.top_len();
        if params.len() != expected {
            return Err(ModelError::ParameterCount {
                expected,
                actual: params.len(),
                n_features: self.bottom_shapes.first().map_or(0, |&(i, _)| i),
            });
        }
        Ok(params.split_at(self.bottom_len()))
    }

    /// The whole model's vector from its parts.
    pub fn join(&self, bottom: &[f32], top: &[f32]) -> Result<Vec<f32>, ModelError> {
        if bottom.len() != self.bottom_len() || top.len() != self.top_len() {
            return Err(ModelError::InvalidData(format!(
                "parts of {} and {} values do not fit a cut model of {} + {}",
                bottom.len(),
                top.len(),
                self.bottom_len(),
                self.top_len()
            )));
        }
        let mut out = Vec::with_capacity(bottom.len() + top.len());
        out.extend_from_slice(bottom);
        out.extend_from_slice(top);
        Ok(out)
    }
}

/// The U-shaped cut of a horizontal split (SplitFed with `u_shaped`): the hospital keeps the
/// bottom (up to `[model] cut`) and the head (the last layer, whose loss needs the labels); the
/// coordinator runs the middle in between. The flat order is bottom ‖ middle ‖ head, so the
/// three parts join by concatenation like [`SplitLayout`]'s two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UShapedLayout {
    pub bottom_shapes: Vec<(usize, usize)>,
    pub middle_shapes: Vec<(usize, usize)>,
    /// The last layer (one output).
    pub head_shapes: Vec<(usize, usize)>,
}

impl UShapedLayout {
    /// The U-shaped cut of `spec` for `n_features` inputs: [`SplitLayout::new`]'s cut, with
    /// the top's last layer going back to the hospital. The top must then keep a layer for
    /// the coordinator.
    pub fn new(spec: &ModelSpec, n_features: usize) -> Result<Self, ModelError> {
        let SplitLayout {
            bottom_shapes,
            mut top_shapes,
        } = SplitLayout::new(spec, n_features)?;
        if top_shapes.len() < 2 {
            return Err(ModelError::InvalidConfig {
                field: "model.cut".into(),
                reason: format!(
                    "a U-shaped split keeps the last layer at the hospital, and the {} layer(s) \
                     after this cut leave none for the coordinator: cut earlier or add a \
                     hidden layer",
                    top_shapes.len()
                ),
            });
        }
        let head_shapes = top_shapes.split_off(top_shapes.len() - 1);
        Ok(Self {
            bottom_shapes,
            middle_shapes: top_shapes,
            head_shapes,
        })
    }

    /// The ordinary cut this one refines (the bottom, then middle and head as one top): what
    /// [`BottomPart::new`] takes.
    pub fn outer(&self) -> SplitLayout {
        SplitLayout {
            bottom_shapes: self.bottom_shapes.clone(),
            top_shapes: [self.middle_shapes.clone(), self.head_shapes.clone()].concat(),
        }
    }

    /// Activations per example at the first cut (bottom → middle).
    pub fn cut_width(&self) -> usize {
        self.bottom_shapes.last().map_or(0, |&(_, o)| o)
    }

    /// Activations per example at the second cut (middle → head).
    pub fn head_width(&self) -> usize {
        self.middle_shapes.last().map_or(0, |&(_, o)| o)
    }

    pub fn bottom_len(&self) -> usize {
        count(&self.bottom_shapes)
    }

    pub fn middle_len(&self) -> usize {
        count(&self.middle_shapes)
    }

    pub fn head_len(&self) -> usize {
        count(&self.head_shapes)
    }

    /// The bottom, middle and head of a whole model's vector.
    pub fn split<'a>(&self, params: &'a [f32]) -> Result<ThreeParts<'a>, ModelError> {
        check_len(
            "model",
            self.bottom_len() + self.middle_len() + self.head_len(),
            params.len(),
        )?;
        let (bottom, rest) = params.split_at(self.bottom_len());
        let (middle, head) = rest.split_at(self.middle_len());
        Ok((bottom, middle, head))
    }
}

/// Bottom, middle and head of a U-shaped model's vector.
pub type ThreeParts<'a> = (&'a [f32], &'a [f32], &'a [f32]);

fn count(shapes: &[(usize, usize)]) -> usize {
    shapes.iter().map(|&(i, o)| i * o + o).sum()
}

/// The layout of a vertical split: each site's first-layer block and the label site's top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerticalLayout {
    /// Width of the first layer (the cut): every site's part outputs this many values.
    pub cut_width: usize,
    /// Layers after the first, on the label site.
    pub top_shapes: Vec<(usize, usize)>,
    /// Whether the first layer is hidden (an MLP: the top starts with its ReLU) or the output
    /// (logistic regression: the sum is the logit).
    pub hidden_cut: bool,
}

impl VerticalLayout {
    /// The vertical cut of `spec`, whose first layer is summed across sites.
    pub fn new(spec: &ModelSpec) -> Result<Self, ModelError> {
        spec.validate()?;
        let mut shapes = spec.layer_shapes(1);
        let first = shapes.remove(0);
        Ok(Self {
            cut_width: first.1,
            hidden_cut: !shapes.is_empty(),
            top_shapes: shapes,
        })
    }

    /// Parameters of a site's part for `n_features` of its own columns.
    pub fn site_len(&self, n_features: usize) -> usize {
        n_features * self.cut_width + self.cut_width
    }

    /// Parameters of the label site's top part.
    pub fn top_len(&self) -> usize {
        count(&self.top_shapes)
    }
}

/// The parts of a whole model on the joined columns, the inverse of [`join_vertical`]: site
/// `i` gets the first-layer rows of its `site_features[i]` columns (in site order); the first
/// site gets the first layer's bias and the others zero, so the sum is unchanged.
pub fn split_vertical(
    layout: &VerticalLayout,
    full: &[f32],
    site_features: &[usize],
) -> Result<(Vec<Vec<f32>>, Vec<f32>), ModelError> {
    let width = layout.cut_width;
    let joined: usize = site_features.iter().sum();
    let first_layer = joined * width + width;
    check_len("model", first_layer + layout.top_len(), full.len())?;
    let (first, top) = full.split_at(first_layer);
    Ok((
        split_vertical_first_layer(layout, first, site_features)?,
        top.to_vec(),
    ))
}

/// The sites' parts of the first layer alone (weights on the joined columns, then the bias):
/// [`split_vertical`] without the top, which in a job stays at the label site.
pub fn split_vertical_first_layer(
    layout: &VerticalLayout,
    first_layer: &[f32],
    site_features: &[usize],
) -> Result<Vec<Vec<f32>>, ModelError> {
    let width = layout.cut_width;
    let joined: usize = site_features.iter().sum();
    check_len("first layer", joined * width + width, first_layer.len())?;
    let (weights, bias) = first_layer.split_at(joined * width);
    let mut sites = Vec::with_capacity(site_features.len());
    let mut offset = 0;
    for (i, &n) in site_features.iter().enumerate() {
        let mut part = weights[offset * width..(offset + n) * width].to_vec();
        if i == 0 {
            part.extend_from_slice(bias);
        } else {
            part.resize(part.len() + width, 0.0);
        }
        offset += n;
        sites.push(part);
    }
    Ok(sites)
}

/// The whole model on the joined columns from the vertical parts: the sites' first-layer
/// blocks stacked in site order (so the joined columns are the sites' columns in that order),
/// their biases summed, then the top.
pub fn join_vertical(
    layout: &VerticalLayout,
    sites: &[(usize, &[f32])],
    top: &[f32],
) -> Result<Vec<f32>, ModelError> {
    if top.len() != layout.top_len() {
        return Err(ModelError::InvalidData(format!(
            "top part of {} values, {} expected",
            top.len(),
            layout.top_len()
        )));
    }
    let mut whole = join_vertical_first_layer(layout, sites)?;
    whole.extend_from_slice(top);
    Ok(whole)
}

/// The first layer on the joined columns from the sites' parts: [`join_vertical`] without the
/// top.
pub fn join_vertical_first_layer(
    layout: &VerticalLayout,
    sites: &[(usize, &[f32])],
) -> Result<Vec<f32>, ModelError> {
    let width = layout.cut_width;
    let mut weights = Vec::new();
    let mut bias = vec![0.0f32; width];
    for (i, &(n_features, part)) in sites.iter().enumerate() {
        if part.len() != layout.site_len(n_features) {
            return Err(ModelError::InvalidData(format!(
                "site {i}: part of {} values, {} features × {width} + {width} expected",
                part.len(),
                n_features
            )));
        }
        let (w, b) = part.split_at(n_features * width);
        weights.extend_from_slice(w);
        for (acc, v) in bias.iter_mut().zip(b) {
            *acc += v;
        }
    }
    weights.extend_from_slice(&bias);
    Ok(weights)
}

/// One side of a split network with its own optimizer state.
struct Part {
    shapes: Vec<(usize, usize)>,
    tensors: LayerTensors,
    weight_slots: Vec<Slot<2>>,
    bias_slots: Vec<Slot<1>>,
    optimizer: OptimizerSpec,
    step: i32,
    autodiff: Device,
    /// Biases held at their value: in vertical learning only one site trains the first
    /// layer's bias (the others' would each take the same step, and their sum would move
    /// too fast).
    frozen_biases: bool,
}

impl Part {
    fn new(
        shapes: Vec<(usize, usize)>,
        params: &[f32],
        optimizer: &OptimizerSpec,
    ) -> Result<Self, ModelError> {
        optimizer.validate()?;
        crate::params::check_finite(params)?;
        let device = net::cpu();
        let n_features = shapes.first().map_or(0, |&(i, _)| i);
        let tensors = LayerTensors::from_shapes(&shapes, n_features, params, &device)?;
        let weight_slots = tensors
            .weights
            .iter()
            .map(|w| Slot::new(w, false))
            .collect();
        let bias_slots = tensors.biases.iter().map(|b| Slot::new(b, false)).collect();
        Ok(Self {
            shapes,
            tensors,
            weight_slots,
            bias_slots,
            optimizer: optimizer.clone(),
            step: 0,
            autodiff: device.autodiff(),
            frozen_biases: false,
        })
    }

    /// Reads the parameter gradients off `grads` and takes one optimizer step.
    fn step_from(
        &mut self,
        net: &DenseNet,
        grads: &mut burn::tensor::Gradients,
    ) -> Result<(), ModelError> {
        let mut gradients = layer_gradients(net, grads)?;
        if self.frozen_biases {
            gradients.biases = gradients.biases.iter().map(Tensor::zeros_like).collect();
        }
        self.step = self.step.saturating_add(1);
        let hyper = Hyper {
            optimizer: &self.optimizer,
            mu: 0.0,
            step: self.step,
        };
        apply(
            &mut self.tensors,
            gradients,
            &mut self.weight_slots,
            &mut self.bias_slots,
            &hyper,
        );
        Ok(())
    }

    fn parameters(&self) -> Result<Vec<f32>, ModelError> {
        let params = self.tensors.to_flat()?;
        crate::params::check_finite(&params).map_err(|_| ModelError::Diverged {
            epoch: 0,
            batch: self.step.max(0) as usize,
            loss: f64::NAN,
        })?;
        Ok(params)
    }
}

/// A forward pass waiting for its gradient.
struct Pending {
    net: DenseNet,
    output: Tensor<2>,
    rows: usize,
}

/// The part of a split network that runs where the features are.
pub struct BottomPart {
    part: Part,
    relu_last: bool,
    pending: Option<Pending>,
}

impl BottomPart {
    /// The bottom of a horizontal split (SplitFed): its layers end in a ReLU.
    pub fn new(
        layout: &SplitLayout,
        params: &[f32],
        optimizer: &OptimizerSpec,
    ) -> Result<Self, ModelError> {
        check_len("bottom part", layout.bottom_len(), params.len())?;
        Ok(Self {
            part: Part::new(layout.bottom_shapes.clone(), params, optimizer)?,
            relu_last: true,
            pending: None,
        })
    }

    /// A site's first-layer block in vertical split learning (pre-activations, no ReLU).
    /// Exactly one site trains the first layer's bias (`trains_bias`; the label site, which
    /// [`split_vertical`] gives the bias); the others keep theirs, zero, fixed.
    pub fn vertical(
        layout: &VerticalLayout,
        n_features: usize,
        params: &[f32],
        optimizer: &OptimizerSpec,
        trains_bias: bool,
    ) -> Result<Self, ModelError> {
        check_len("site part", layout.site_len(n_features), params.len())?;
        let mut part = Part::new(vec![(n_features, layout.cut_width)], params, optimizer)?;
        part.frozen_biases = !trains_bias;
        Ok(Self {
            part,
            relu_last: false,
            pending: None,
        })
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.part.shapes.first().map_or(0, |&(i, _)| i)
    }

    /// Activations at the cut for `rows` of `data`, `[rows.len(), cut_width]` row-major. The
    /// graph is kept for [`BottomPart::backward`].
    pub fn forward(&mut self, data: &Examples, rows: &[usize]) -> Result<Vec<f32>, ModelError> {
        if data.n_features != self.n_features() {
            return Err(ModelError::InvalidData(format!(
                "the data have {} features, the bottom part takes {}",
                data.n_features,
                self.n_features()
            )));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= data.labels.len()) {
            return Err(ModelError::InvalidData(format!(
                "row {r} of {} requested",
                data.labels.len()
            )));
        }
        let x = net::rows_tensor(data, rows, &self.part.autodiff);
        let net = self.part.tensors.to_net(true);
        let output = net.forward_with(x, self.relu_last);
        let values = net::tensor_to_vec(output.clone())?;
        self.pending = Some(Pending {
            net,
            output,
            rows: rows.len(),
        });
        Ok(values)
    }

    /// Activations for `rows` without keeping a graph (evaluation).
    pub fn predict(&self, data: &Examples, rows: &[usize]) -> Result<Vec<f32>, ModelError> {
        if data.n_features != self.n_features() || rows.iter().any(|&r| r >= data.labels.len()) {
            return Err(ModelError::InvalidData(format!(
                "rows of {} features requested from a bottom part of {}",
                data.n_features,
                self.n_features()
            )));
        }
        let x = net::rows_tensor(data, rows, &net::cpu());
        net::tensor_to_vec(
            self.part
                .tensors
                .to_net(false)
                .forward_with(x, self.relu_last),
        )
    }

    /// Takes one optimizer step from the gradient of the batch's loss with respect to the
    /// activations of the last [`BottomPart::forward`].
    pub fn backward(&mut self, grad_at_cut: &[f32]) -> Result<(), ModelError> {
        let pending = self.pending.take().ok_or_else(|| {
            ModelError::InvalidData("a gradient arrived without a forward pass".into())
        })?;
        let width = self.part.shapes.last().map_or(0, |&(_, o)| o);
        check_len(
            "gradient at the cut",
            pending.rows * width,
            grad_at_cut.len(),
        )?;
        crate::params::check_finite(grad_at_cut)?;
        let g = Tensor::<2>::from_data(
            TensorData::new(grad_at_cut.to_vec(), [pending.rows, width]),
            &self.part.autodiff,
        );
        // d/dθ Σ (output ⊙ g) is the vector-Jacobian product the chain rule needs.
        let surrogate = (pending.output * g).sum();
        let mut grads = surrogate.backward();
        self.part.step_from(&pending.net, &mut grads)
    }

    /// The current parameters (an error if they stopped being finite).
    pub fn parameters(&self) -> Result<Vec<f32>, ModelError> {
        self.part.parameters()
    }
}

/// The middle of a U-shaped split, at the coordinator: activations in, activations out, and
/// back from the gradient at its output to the gradient at its input. It never sees a label.
pub struct MiddlePart {
    part: Part,
    in_width: usize,
    out_width: usize,
    pending: Option<MiddlePending>,
}

struct MiddlePending {
    net: DenseNet,
    input: Tensor<2>,
    output: Tensor<2>,
    rows: usize,
}

impl MiddlePart {
    pub fn new(
        layout: &UShapedLayout,
        params: &[f32],
        optimizer: &OptimizerSpec,
    ) -> Result<Self, ModelError> {
        check_len("middle part", layout.middle_len(), params.len())?;
        Ok(Self {
            part: Part::new(layout.middle_shapes.clone(), params, optimizer)?,
            in_width: layout.cut_width(),
            out_width: layout.head_width(),
            pending: None,
        })
    }

    /// The middle's activations (after its last ReLU) for a batch of `rows` activations from
    /// the bottom, checked (shape, finite); the graph is kept for [`MiddlePart::backward`].
    pub fn forward(&mut self, rows: usize, activations: &[f32]) -> Result<Vec<f32>, ModelError> {
        if rows == 0 {
            return Err(ModelError::EmptyData);
        }
        if activations.len() != rows * self.in_width {
            return Err(ModelError::InvalidData(format!(
                "{} activations for {rows} rows of width {}",
                activations.len(),
                self.in_width
            )));
        }
        if let Some(i) = activations.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidData(format!(
                "activation {} of row {} is not finite",
                i % self.in_width,
                i / self.in_width
            )));
        }
        let input = Tensor::<2>::from_data(
            TensorData::new(activations.to_vec(), [rows, self.in_width]),
            &self.part.autodiff,
        )
        .require_grad();
        let net = self.part.tensors.to_net(true);
        let output = net.forward_with(input.clone(), true);
        let values = net::tensor_to_vec(output.clone())?;
        self.pending = Some(MiddlePending {
            net,
            input,
            output,
            rows,
        });
        Ok(values)
    }

    /// One optimizer step from the gradient of the batch's loss with respect to the last
    /// [`MiddlePart::forward`]'s output; returns the gradient with respect to its input.
    pub fn backward(&mut self, grad_out: &[f32]) -> Result<Vec<f32>, ModelError> {
        let pending = self.pending.take().ok_or_else(|| {
            ModelError::InvalidData("a gradient arrived without a forward pass".into())
        })?;
        check_len(
            "gradient at the head",
            pending.rows * self.out_width,
            grad_out.len(),
        )?;
        crate::params::check_finite(grad_out)?;
        let g = Tensor::<2>::from_data(
            TensorData::new(grad_out.to_vec(), [pending.rows, self.out_width]),
            &self.part.autodiff,
        );
        let surrogate = (pending.output * g).sum();
        let mut grads = surrogate.backward();
        let grad_in = net::tensor_to_vec(
            pending
                .input
                .grad_remove(&mut grads)
                .ok_or_else(|| missing_gradient("input of the middle part"))?,
        )?;
        self.part.step_from(&pending.net, &mut grads)?;
        Ok(grad_in)
    }

    /// Whether a forward pass waits for its gradient.
    pub fn awaits_gradient(&self) -> bool {
        self.pending.is_some()
    }

    /// The current parameters (an error if they stopped being finite).
    pub fn parameters(&self) -> Result<Vec<f32>, ModelError> {
        self.part.parameters()
    }
}

/// What one step of the top part produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TopStep {
    /// Mean binary cross-entropy of the batch, before the step.
    pub loss: f64,
    /// Gradient of the mean loss with respect to each activation, `[rows, cut_width]`.
    pub grad_at_cut: Vec<f32>,
}

/// The part of a split network that holds the labels' loss.
pub struct TopPart {
    part: Part,
    cut_width: usize,
    relu_first: bool,
}

impl TopPart {
    /// The top of a horizontal split: takes the bottom's (already activated) outputs.
    pub fn new(
        layout: &SplitLayout,
        params: &[f32],
        optimizer: &OptimizerSpec,
    ) -> Result<Self, ModelError> {
        check_len("top part", layout.top_len(), params.len())?;
        Ok(Self {
            part: Part::new(layout.top_shapes.clone(), params, optimizer)?,
            cut_width: layout.cut_width(),
            relu_first: false,
        })
    }

    /// The head of a U-shaped split, at the hospital: takes the middle's (activated) outputs
    /// and the hospital's labels.
    pub fn head(
        layout: &UShapedLayout,
        params: &[f32],
        optimizer: &OptimizerSpec,
    ) -> Result<Self, ModelError> {
        check_len("head", layout.head_len(), params.len())?;
        Ok(Self {
            part: Part::new(layout.head_shapes.clone(), params, optimizer)?,
            cut_width: layout.head_width(),
            relu_first: false,
        })
    }

    /// The label site's top in vertical split learning: takes the summed first-layer
    /// pre-activations (empty for logistic regression, whose sum is the logit).
    pub fn vertical(
        layout: &VerticalLayout,
        params: &[f32],
        optimizer: &OptimizerSpec,
    ) -> Result<Self, ModelError> {
        check_len("top part", layout.top_len(), params.len())?;
        Ok(Self {
            part: Part::new(layout.top_shapes.clone(), params, optimizer)?,
            cut_width: layout.cut_width,
            relu_first: layout.hidden_cut,
        })
    }

    /// Activations per example at the cut.
    pub fn cut_width(&self) -> usize {
        self.cut_width
    }

    /// Checks a batch that arrived from elsewhere: `labels.len()` rows of `cut_width`
    /// finite activations and labels of exactly 0 or 1.
    pub fn check_batch(&self, activations: &[f32], labels: &[f32]) -> Result<(), ModelError> {
        if labels.is_empty() {
            return Err(ModelError::EmptyData);
        }
        if activations.len() != labels.len() * self.cut_width {
            return Err(ModelError::InvalidData(format!(
                "{} activations for {} rows of width {}",
                activations.len(),
                labels.len(),
                self.cut_width
            )));
        }
        if let Some(i) = activations.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidData(format!(
                "activation {} of row {} is not finite",
                i % self.cut_width,
                i / self.cut_width
            )));
        }
        if let Some(i) = labels.iter().position(|&y| y != 0.0 && y != 1.0) {
            return Err(ModelError::InvalidData(format!(
                "label of row {i} is {}, expected 0 or 1",
                labels[i]
            )));
        }
        Ok(())
    }

    /// Forward and backward on one batch, one optimizer step; returns the loss and the
    /// gradient at the cut.
    pub fn step(&mut self, activations: &[f32], labels: &[f32]) -> Result<TopStep, ModelError> {
        self.check_batch(activations, labels)?;
        let rows = labels.len();
        let device = &self.part.autodiff;
        let x = Tensor::<2>::from_data(
            TensorData::new(activations.to_vec(), [rows, self.cut_width]),
            device,
        )
        .require_grad();
        let y = Tensor::<2>::from_data(TensorData::new(labels.to_vec(), [rows, 1]), device);
        let net = self.part.tensors.to_net(true);
        let h = if self.relu_first {
            relu(x.clone())
        } else {
            x.clone()
        };
        let loss = net::bce_with_logits(net.forward(h), y);
        let mut grads = loss.backward();
        let loss_value = f64::from(
            loss.try_into_scalar::<f32>()
                .map_err(|e| ModelError::Backend(format!("reading the loss failed: {e:?}")))?,
        );
        if !loss_value.is_finite() {
            return Err(ModelError::Diverged {
                epoch: 0,
                batch: self.part.step.max(0) as usize,
                loss: loss_value,
            });
        }
        let grad_at_cut = net::tensor_to_vec(
            x.grad_remove(&mut grads)
                .ok_or_else(|| missing_gradient("input at the cut"))?,
        )?;
        self.part.step_from(&net, &mut grads)?;
        Ok(TopStep {
            loss: loss_value,
            grad_at_cut,
        })
    }

    /// Logits for a batch of activations, without a step (evaluation).
    pub fn predict(&self, activations: &[f32]) -> Result<Vec<f32>, ModelError> {
        let rows = activations.len() / self.cut_width.max(1);
        check_len("activations", rows * self.cut_width, activations.len())?;
        let device = net::cpu();
        let x = Tensor::<2>::from_data(
            TensorData::new(activations.to_vec(), [rows, self.cut_width]),
            &device,
        );
        let h = if self.relu_first { relu(x) } else { x };
        net::tensor_to_vec(self.part.tensors.to_net(false).forward(h))
    }

    /// The current parameters (an error if they stopped being finite).
    pub fn parameters(&self) -> Result<Vec<f32>, ModelError> {
        self.part.parameters()
    }
}

fn check_len(what: &str, expected: usize, actual: usize) -> Result<(), ModelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ModelError::InvalidData(format!(
            "{what} has {actual} values, {expected} expected"
        )))
    }
}

/// Label leakage by the norm attack (Li et al. 2022): the ROC AUC of each example's gradient
/// norm at the cut as a score for its label, `grads` being `[labels.len(), width]` row-major.
///
/// Reported as `max(auc, 1 - auc)`: an attacker who sees that small norms go with positives
/// just flips the score. 0.5 means the norms say nothing about the labels, 1.0 that they give
/// every label away.
pub fn norm_leak_auc(grads: &[f32], width: usize, labels: &[f32]) -> f64 {
    let norms: Vec<f32> = grads
        .chunks(width.max(1))
        .map(|g| g.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    let auc = crate::roc_auc(&norms, labels);
    auc.max(1.0 - auc)
}

/// The max-norm defence (Li et al. 2022, §5): adds to each example's gradient isotropic
/// Gaussian noise of variance `(max_norm² - ‖gᵢ‖²) / width` per coordinate, `max_norm` being the
/// largest norm in the batch, so that every example's gradient has the same expected squared
/// norm and the norm no longer ranks positives above negatives.
///
/// `scale` multiplies the noise standard deviation (1 is the paper's heuristic). The noise
/// comes from the caller's `rng`, which must be secret to the label site.
pub fn equalize_gradient_norms(grads: &mut [f32], width: usize, scale: f64, rng: &mut impl Rng) {
    if width == 0 || grads.is_empty() {
        return;
    }
    let norms2: Vec<f64> = grads
        .chunks(width)
        .map(|g| g.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
        .collect();
    let max2 = norms2.iter().copied().fold(0.0, f64::max);
    for (g, n2) in grads.chunks_mut(width).zip(norms2) {
        let sigma = scale * ((max2 - n2).max(0.0) / width as f64).sqrt();
        if sigma > 0.0 {
            for v in g {
                *v += (sigma * standard_normal(rng)) as f32;
            }
        }
    }
}

/// One standard normal draw (Box–Muller).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What the label site of a vertical job reports after a round (`VERTICAL_STEP_TRAIN`):
/// the joined model's metrics on the held-out shared rows and how much the gradients it sent
/// leaked its labels. Aggregates only; the labels stay at the label site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSiteReport {
    pub validation: crate::Metrics,
    /// Mean training loss over the round's last epoch.
    pub train_loss: f64,
    /// [`norm_leak_auc`] of the gradients sent, mean over the round's epochs.
    pub leak_auc: f64,
    /// The epoch of the round whose gradients leaked most (an attacker sees
    /// every epoch).
    pub worst_leak_auc: f64,
    /// The max-norm defence's noise scale, if it was on.
    pub defence: Option<f64>,
}

/// One batch of a vertical exchange: how many rows, and whether it trains (or only
/// evaluates, with no gradient back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerticalBatch {
    pub rows: usize,
    pub train: bool,
}

/// The batches of one vertical round, the same at every site and at the coordinator's relay:
/// `epochs` passes over `train_rows` in batches of `batch_size`, then the `validation_rows`
/// in batches of `batch_size`.
pub fn vertical_schedule(
    train_rows: usize,
    validation_rows: usize,
    epochs: usize,
    batch_size: usize,
) -> Vec<VerticalBatch> {
    let batch_size = batch_size.max(1);
    let chunks = |n: usize, train: bool| {
        (0..n.div_ceil(batch_size)).map(move |i| VerticalBatch {
            rows: batch_size.min(n - i * batch_size),
            train,
        })
    };
    let mut out: Vec<VerticalBatch> = Vec::new();
    for _ in 0..epochs {
        out.extend(chunks(train_rows, true));
    }
    out.extend(chunks(validation_rows, false));
    out
}
