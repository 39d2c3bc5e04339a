//! The single error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong when validating, training, evaluating or (de)serialising a model.
///
/// Parameters and artifacts arrive over the network and from disk, so every malformed input is
/// reported through this type instead of a panic. Messages name the offending field or index so
/// that an operator can act on them without reading code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A configuration value (model, optimizer or training settings) is out of range.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// Dotted path of the offending setting, e.g. `model.hidden`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A parameter vector does not have the length the model architecture implies for the
    /// number of input features. (Data of the wrong width surfaces here too: the width the
    /// parameters were built for is only implied by their count.)
    #[error(
        "parameter vector has {actual} values but the model needs {expected} for {n_features} input features"
    )]
    ParameterCount {
        /// Length implied by the model specification and `n_features`.
        expected: usize,
        /// Length received.
        actual: usize,
        /// Number of input features the check assumed (the data's width when data is involved).
        n_features: usize,
    },

    /// A parameter vector contains NaN or an infinity.
    #[error("parameter {index} is not finite ({value})")]
    NonFiniteParameter {
        /// Index (in the documented flat order) of the first non-finite value.
        index: usize,
        /// The offending value.
        value: f32,
    },

    /// A vertical model's first layer without its top part, which the label site kept.
    #[error(
        "this is the first layer of a vertical model; its top part never left the label site \
         {site}: run it there, with the top that site kept (`cohort evaluate --top-from \
         ITS_DATA_DIR`)"
    )]
    TopKept {
        /// The label site holding the top part.
        site: String,
    },

    /// Training or evaluation was asked to run on zero examples.
    #[error("the dataset has no examples")]
    EmptyData,

    /// The example matrix or labels are internally inconsistent or contain bad values.
    #[error("invalid data: {0}")]
    InvalidData(String),

    /// The training loss or the parameters became NaN/infinite.
    #[error(
        "training diverged in epoch {epoch}, batch {batch} (loss {loss}); lower the learning rate or proximal_mu"
    )]
    Diverged {
        /// Zero-based epoch.
        epoch: usize,
        /// Zero-based batch within the epoch.
        batch: usize,
        /// The last observed loss (may itself be finite if only the parameters blew up).
        loss: f64,
    },

    /// A byte buffer that should hold little-endian `f32` values has a length that is not a
    /// multiple of four.
    #[error("byte length {0} is not a multiple of 4, so it cannot hold f32 values")]
    ByteLength(usize),

    /// The compute backend failed (e.g. a gradient was missing or a tensor could not be read back).
    #[error("compute backend error: {0}")]
    Backend(String),

    /// Reading or writing an artifact file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `model.json` could not be parsed or serialised.
    #[error("model card JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// The model card is inconsistent with itself or with the parameters.
    #[error("invalid model card: {0}")]
    InvalidCard(String),

    /// The safetensors file is malformed or does not match the model card.
    #[error("invalid safetensors file: {0}")]
    Safetensors(String),

    /// The parameters do not hash to the value recorded in the model card.
    #[error("parameter checksum mismatch: model card says {expected}, parameters hash to {actual}")]
    ChecksumMismatch {
        /// Hex SHA-256 recorded in the card.
        expected: String,
        /// Hex SHA-256 of the parameters actually present.
        actual: String,
    },
}

impl ModelError {
    /// Shorthand for [`ModelError::InvalidConfig`].
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
