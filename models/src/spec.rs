//! Model, optimizer and training configuration, as written in job TOML files.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Upper bound on the number of parameters of a model (2^28 ≈ 268 million, 1 GiB of `f32`).
///
/// Job configurations are user input and parameter vectors travel over the network; the bound
/// keeps a typo such as `hidden = [10000000]` from turning into an out-of-memory crash on every
/// hospital client. It is far above anything a tabular model needs.
pub const MAX_PARAMETERS: usize = 1 << 28;

/// Architecture of a binary classifier over tabular features.
///
/// Every model ends in a single output, the logit of the positive class, so that all
/// architectures share one loss, one metric pipeline and one parameter layout (see the crate
/// documentation for the flat order).
///
/// In TOML: `kind = "logistic"` or `kind = "mlp"` with `hidden = [32, 16]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelSpec {
    /// Logistic regression: one dense layer `n_features -> 1`.
    Logistic,
    /// Multi-layer perceptron with ReLU activations after every hidden layer.
    Mlp {
        /// Widths of the hidden layers, input side first. Must be non-empty and non-zero.
        hidden: Vec<usize>,
        /// Split learning: the layer after which the network is cut into a bottom part (at
        /// the data) and a top part, named like the parameter layout (`"layers.0"` is the
        /// first hidden layer, its ReLU included). `None` cuts after the first hidden layer;
        /// ignored by ordinary federated training.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cut: Option<String>,
    },
}

impl ModelSpec {
    /// Checks the architecture itself (independent of the data).
    ///
    /// An MLP needs at least one hidden layer (otherwise it is logistic regression and should
    /// say so) and no zero widths (a zero-width layer cuts the gradient and makes the model
    /// constant). Errors name `model.hidden` so they can be traced back to the job file.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            ModelSpec::Logistic => Ok(()),
            ModelSpec::Mlp { hidden, .. } => {
                if hidden.is_empty() {
                    return Err(ModelError::config(
                        "model.hidden",
                        "an mlp needs at least one hidden layer (use kind = \"logistic\" for none)",
                    ));
                }
                if let Some(i) = hidden.iter().position(|&w| w == 0) {
                    return Err(ModelError::config(
                        format!("model.hidden[{i}]"),
                        "layer width must be at least 1",
                    ));
                }
                self.bottom_layers().map(|_| ())
            }
        }
    }

    /// Checks the architecture together with the number of input features.
    ///
    /// On top of [`ModelSpec::validate`] this rejects zero features and models whose parameter
    /// count overflows or exceeds [`MAX_PARAMETERS`]. Every function of this crate that
    /// allocates a parameter vector calls it first.
    pub fn validate_for(&self, n_features: usize) -> Result<(), ModelError> {
        self.validate()?;
        if n_features == 0 {
            return Err(ModelError::config(
                "n_features",
                "a model needs at least one input feature",
            ));
        }
        let count = self.checked_num_parameters(n_features).ok_or_else(|| {
            ModelError::config("model.hidden", "the parameter count overflows usize")
        })?;
        if count > MAX_PARAMETERS {
            return Err(ModelError::config(
                "model.hidden",
                format!(
                    "the model would have {count} parameters, more than the limit of {MAX_PARAMETERS}"
                ),
            ));
        }
        Ok(())
    }

    /// Split learning: how many dense layers the bottom part holds (the cut is after the ReLU
    /// of the last of them). `[model] cut = "layers.K"` gives `K + 1`; without `cut`, 1.
    ///
    /// Logistic regression has no hidden layer to cut after, and the output layer cannot be
    /// the cut (the top part would be empty): both are errors naming `model.cut`.
    pub fn bottom_layers(&self) -> Result<usize, ModelError> {
        let ModelSpec::Mlp { hidden, cut } = self else {
            return Err(ModelError::config(
                "model.kind",
                "split learning needs an mlp: logistic regression has no hidden layer to cut after",
            ));
        };
        let Some(cut) = cut else {
            return Ok(1);
        };
        let index = cut
            .strip_prefix("layers.")
            .and_then(|k| k.parse::<usize>().ok())
            .ok_or_else(|| {
                ModelError::config(
                    "model.cut",
                    format!("{cut:?} is not a layer name; use \"layers.K\" for hidden layer K"),
                )
            })?;
        if index >= hidden.len() {
            return Err(ModelError::config(
                "model.cut",
                format!(
                    "{cut:?} is not a hidden layer: the model has hidden layers layers.0 to layers.{} (the output layer cannot be the cut)",
                    hidden.len() - 1
                ),
            ));
        }
        Ok(index + 1)
    }

    /// `(fan_in, fan_out)` of each dense layer, input side first; the last layer has one output
    /// (the logit of the positive class).
    pub fn layer_shapes(&self, n_features: usize) -> Vec<(usize, usize)> {
        match self {
            ModelSpec::Logistic => vec![(n_features, 1)],
            ModelSpec::Mlp { hidden, .. } => {
                let mut shapes = Vec::with_capacity(hidden.len() + 1);
                let mut fan_in = n_features;
                for &width in hidden {
                    shapes.push((fan_in, width));
                    fan_in = width;
                }
                shapes.push((fan_in, 1));
                shapes
            }
        }
    }

    /// Total number of parameters (weights and biases) for `n_features` inputs.
    ///
    /// Saturates at `usize::MAX` instead of overflowing; use [`ModelSpec::validate_for`] to turn
    /// absurd sizes into an error.
    pub fn num_parameters(&self, n_features: usize) -> usize {
        self.checked_num_parameters(n_features)
            .unwrap_or(usize::MAX)
    }

    fn checked_num_parameters(&self, n_features: usize) -> Option<usize> {
        self.layer_shapes(n_features)
            .into_iter()
            .try_fold(0usize, |acc, (fan_in, fan_out)| {
                fan_in
                    .checked_mul(fan_out)?
                    .checked_add(fan_out)?
                    .checked_add(acc)
            })
    }
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-8
}

/// Local optimizer used by each client.
///
/// In TOML: `kind = "sgd"`, `learning_rate = 0.1`, `momentum = 0.9`, or `kind = "adam"`,
/// `learning_rate = 0.001` (betas and epsilon default to the values of Kingma & Ba).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// Stochastic gradient descent with optional heavy-ball momentum:
    /// `v = momentum * v + g; w -= learning_rate * v`.
    Sgd {
        /// Step size, > 0.
        learning_rate: f64,
        /// Heavy-ball momentum in `[0, 1)`; 0 means plain SGD.
        #[serde(default)]
        momentum: f64,
    },
    /// Adam (Kingma & Ba 2015) with bias correction.
    Adam {
        /// Step size, > 0.
        learning_rate: f64,
        /// Decay of the first-moment estimate, in `[0, 1)`.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Decay of the second-moment estimate, in `[0, 1)`.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Denominator guard, > 0.
        #[serde(default = "default_epsilon")]
        epsilon: f64,
    },
}

impl OptimizerSpec {
    /// Checks ranges: learning rate finite and positive, momentum and betas in `[0, 1)`,
    /// epsilon finite and positive.
    ///
    /// A momentum or beta of 1 never forgets and makes the update grow without bound, which
    /// would only surface later as a confusing "diverged" error.
    pub fn validate(&self) -> Result<(), ModelError> {
        fn positive(field: &str, v: f64) -> Result<(), ModelError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ModelError::config(
                    field,
                    format!("must be finite and > 0, got {v}"),
                ))
            }
        }
        fn unit(field: &str, v: f64) -> Result<(), ModelError> {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(ModelError::config(
                    field,
                    format!("must be in [0, 1), got {v}"),
                ))
            }
        }
        match *self {
            OptimizerSpec::Sgd {
                learning_rate,
                momentum,
            } => {
                positive("optimizer.learning_rate", learning_rate)?;
                unit("optimizer.momentum", momentum)
            }
            OptimizerSpec::Adam {
                learning_rate,
                beta1,
                beta2,
                epsilon,
            } => {
                positive("optimizer.learning_rate", learning_rate)?;
                unit("optimizer.beta1", beta1)?;
                unit("optimizer.beta2", beta2)?;
                positive("optimizer.epsilon", epsilon)
            }
        }
    }

    /// The learning rate, whichever the optimizer.
    pub fn learning_rate(&self) -> f64 {
        match *self {
            OptimizerSpec::Sgd { learning_rate, .. }
            | OptimizerSpec::Adam { learning_rate, .. } => learning_rate,
        }
    }
}

/// Settings of one round of local training on a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the local data, ≥ 1.
    pub epochs: usize,
    /// Examples per gradient step, ≥ 1 (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Local optimizer; its state starts fresh every round.
    pub optimizer: OptimizerSpec,
    /// Seed of the per-epoch shuffles (epoch `e` uses `ChaCha8Rng::seed_from_u64(seed + e)`).
    pub seed: u64,
    /// FedProx: adds `mu/2 * ||w - w_start||^2` to the local loss (Li et al. 2020), which keeps
    /// clients with skewed data from drifting far from the global model. `None` or 0 = plain
    /// FedAvg local training.
    pub proximal_mu: Option<f64>,
    /// Record-level differential privacy: train with DP-SGD
    /// ([`crate::DpSgdConfig`]) instead of plain mini-batch SGD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<crate::DpSgdConfig>,
}

impl TrainConfig {
    /// Checks epochs, batch size, optimizer ranges and `proximal_mu` (finite, ≥ 0).
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.epochs == 0 {
            return Err(ModelError::config("train.epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ModelError::config("train.batch_size", "must be at least 1"));
        }
        self.optimizer.validate()?;
        if let Some(mu) = self.proximal_mu
            && !(mu.is_finite() && mu >= 0.0)
        {
            return Err(ModelError::config(
                "train.proximal_mu",
                format!("must be finite and >= 0, got {mu}"),
            ));
        }
        Ok(())
    }

    /// The effective FedProx coefficient (0 when disabled).
    pub fn mu(&self) -> f64 {
        self.proximal_mu.unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_shapes_and_counts() {
        assert_eq!(ModelSpec::Logistic.layer_shapes(5), vec![(5, 1)]);
        assert_eq!(ModelSpec::Logistic.num_parameters(5), 6);
        let mlp = ModelSpec::Mlp {
            hidden: vec![4, 3],
            cut: None,
        };
        assert_eq!(mlp.layer_shapes(5), vec![(5, 4), (4, 3), (3, 1)]);
        assert_eq!(mlp.num_parameters(5), 5 * 4 + 4 + 4 * 3 + 3 + 3 + 1);
    }

    #[test]
    fn validate_names_the_field() {
        let err = ModelSpec::Mlp {
            hidden: vec![],
            cut: None,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("model.hidden"), "{err}");
        let err = ModelSpec::Mlp {
            hidden: vec![3, 0],
            cut: None,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("model.hidden[1]"), "{err}");
        assert!(ModelSpec::Logistic.validate().is_ok());
        assert!(ModelSpec::Logistic.validate_for(0).is_err());
        let huge = ModelSpec::Mlp {
            hidden: vec![usize::MAX / 2, usize::MAX / 2],
            cut: None,
        };
        assert!(huge.validate_for(10).is_err());
        assert_eq!(huge.num_parameters(10), usize::MAX);
        let big = ModelSpec::Mlp {
            hidden: vec![MAX_PARAMETERS],
            cut: None,
        };
        assert!(big.validate_for(10).is_err());
    }

    #[test]
    fn optimizer_ranges() {
        let ok = OptimizerSpec::Sgd {
            learning_rate: 0.1,
            momentum: 0.9,
        };
        assert!(ok.validate().is_ok());
        for (lr, m) in [
            (0.0, 0.0),
            (-1.0, 0.0),
            (f64::NAN, 0.0),
            (0.1, 1.0),
            (0.1, -0.1),
        ] {
            let spec = OptimizerSpec::Sgd {
                learning_rate: lr,
                momentum: m,
            };
            assert!(spec.validate().is_err(), "{spec:?}");
        }
        let adam = OptimizerSpec::Adam {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 1.0,
            epsilon: 1e-8,
        };
        assert!(
            adam.validate()
                .unwrap_err()
                .to_string()
                .contains("optimizer.beta2")
        );
    }

    #[test]
    fn serde_shapes_match_the_job_file_format() {
        let spec: ModelSpec = serde_json::from_str(r#"{"kind":"mlp","hidden":[32,16]}"#).unwrap();
        assert_eq!(
            spec,
            ModelSpec::Mlp {
                hidden: vec![32, 16],
                cut: None,
            }
        );
        let spec: ModelSpec = serde_json::from_str(r#"{"kind":"logistic"}"#).unwrap();
        assert_eq!(spec, ModelSpec::Logistic);
        assert!(serde_json::from_str::<ModelSpec>(r#"{"kind":"mlp","hiden":[3]}"#).is_err());

        let opt: OptimizerSpec =
            serde_json::from_str(r#"{"kind":"adam","learning_rate":0.01}"#).unwrap();
        assert_eq!(
            opt,
            OptimizerSpec::Adam {
                learning_rate: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8
            }
        );
        let opt: OptimizerSpec =
            serde_json::from_str(r#"{"kind":"sgd","learning_rate":0.5}"#).unwrap();
        assert_eq!(
            opt,
            OptimizerSpec::Sgd {
                learning_rate: 0.5,
                momentum: 0.0
            }
        );
    }

    #[test]
    fn train_config_validation() {
        let mut cfg = TrainConfig {
            epochs: 1,
            batch_size: 8,
            optimizer: OptimizerSpec::Sgd {
                learning_rate: 0.1,
                momentum: 0.0,
            },
            seed: 0,
            proximal_mu: Some(0.1),
            dp: None,
        };
        assert!(cfg.validate().is_ok());
        cfg.proximal_mu = Some(-1.0);
        assert!(cfg.validate().is_err());
        cfg.proximal_mu = None;
        cfg.batch_size = 0;
        assert!(cfg.validate().is_err());
    }
}
