//! Downloadable model artifacts: `model.safetensors` plus a `model.json` model card.
//!
//! The safetensors file is written by this module directly (the format is an 8-byte
//! little-endian header length, a JSON header and the raw data) rather than through
//! `safetensors::serialize`, for two reasons: its data section is then byte-for-byte the
//! canonical flat vector ([`parameters_to_bytes`]), and the header is deterministic (sorted
//! keys), so the same model always produces the same file and the same object-store hash.
//! Reading goes through the `safetensors` crate, which validates untrusted files thoroughly.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::params::{check_finite, parameter_layout, parameters_sha256};
use crate::{Metrics, ModelError, ModelSpec, TensorInfo, check_parameters};

/// Value of [`ModelCard::format`] written by this version.
pub const MODEL_FORMAT: &str = "cohort-model/1";
/// File name of the weights inside an artifact directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// File name of the model card inside an artifact directory.
pub const CARD_FILE: &str = "model.json";

/// Everything a user needs to use a trained model outside Cohort: architecture, feature
/// order, preprocessing, provenance and a checksum of the weights. Stored as `model.json`
/// next to `model.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Artifact format version, [`MODEL_FORMAT`].
    pub format: String,
    /// Architecture.
    pub model: ModelSpec,
    /// Number of input features (after preprocessing).
    pub n_features: usize,
    /// Names of the input features, in input order.
    pub feature_names: Vec<String>,
    /// The flat parameter order, tensor by tensor (see [`parameter_layout`]).
    pub parameter_order: Vec<TensorInfo>,
    /// Data specification the model was trained for.
    pub data: cohort_datasets::DataSpec,
    /// Preprocessing to apply to raw rows before feeding the model.
    pub preprocessing: cohort_datasets::Preprocessing,
    /// Federated job identifier.
    pub job_id: String,
    /// Human-readable job name.
    pub job_name: String,
    /// Federated round that produced the parameters.
    pub round: u32,
    /// Federated evaluation metrics of these parameters, if evaluated.
    pub metrics: Option<Metrics>,
    /// Hex SHA-256 of the little-endian flat `f32` vector ([`parameters_sha256`]).
    pub parameters_sha256: String,
    /// The differential-privacy guarantee the parameters were trained under;
    /// absent when the job made no DP promise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyGuarantee>,
    /// Vertical split learning: the parameters here are the first layer only (every site's
    /// block and the bias); the rest of the network never left the label site, which keeps
    /// it under this digest. Absent for a whole model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_top: Option<KeptTop>,
}

/// The top part of a vertical model, kept by its label site: what the card knows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptTop {
    /// The label site that trained it and holds it.
    pub site: String,
    /// Its number of parameters (the layers after the first).
    pub values: usize,
    /// Hex SHA-256 of its little-endian flat `f32` vector ([`parameters_sha256`]).
    pub sha256: String,
}

/// What a model's training promised each hospital, as recorded in its card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyGuarantee {
    /// `"record"` (one patient) or `"client"` (one hospital's dataset).
    pub level: String,
    /// The largest epsilon any hospital reported having spent on the job up
    /// to these parameters: the guarantee that holds for every hospital.
    pub epsilon: f64,
    pub delta: f64,
    /// `"pld"` or `"rdp"`.
    pub accountant: String,
    /// The job's per-hospital target, if it set one.
    pub target_epsilon: Option<f64>,
    /// Each hospital's reported spending on the job, by name.
    pub hospitals: std::collections::BTreeMap<String, f64>,
}

impl ModelCard {
    /// Fills the fields derived from the parameters — `format`, `parameter_order`,
    /// `parameters_sha256` — after checking that `params` fits `model`/`n_features`.
    ///
    /// Call this before [`save_model`] / [`safetensors_bytes`], which refuse cards that do not
    /// describe the parameters they are given.
    pub fn bind_parameters(&mut self, params: &[f32]) -> Result<(), ModelError> {
        self.check_stored_parameters(params)?;
        self.format = MODEL_FORMAT.to_string();
        self.parameter_order = self.stored_layout()?;
        self.parameters_sha256 = parameters_sha256(params);
        Ok(())
    }

    /// The tensors this artifact stores: the whole layout, or only the first layer's when
    /// the label site kept the top ([`KeptTop`]).
    fn stored_layout(&self) -> Result<Vec<TensorInfo>, ModelError> {
        let mut layout = parameter_layout(&self.model, self.n_features);
        if let Some(top) = &self.kept_top {
            layout.truncate(2);
            let total = self.model.num_parameters(self.n_features);
            if self.first_layer_len() + top.values != total {
                return Err(ModelError::InvalidCard(format!(
                    "the kept top part has {} values; the model's layers after the first have {}",
                    top.values,
                    total.saturating_sub(self.first_layer_len())
                )));
            }
        }
        Ok(layout)
    }

    fn first_layer_len(&self) -> usize {
        let (fan_in, fan_out) = self.model.layer_shapes(self.n_features)[0];
        fan_in * fan_out + fan_out
    }

    /// How many values the artifact's parameters have.
    fn stored_len(&self) -> usize {
        match &self.kept_top {
            Some(_) => self.first_layer_len(),
            None => self.model.num_parameters(self.n_features),
        }
    }

    fn check_stored_parameters(&self, params: &[f32]) -> Result<(), ModelError> {
        if self.kept_top.is_none() {
            return check_parameters(&self.model, self.n_features, params);
        }
        self.model.validate_for(self.n_features)?;
        self.stored_layout()?;
        if params.len() != self.stored_len() {
            return Err(ModelError::InvalidData(format!(
                "the first layer of a vertical model has {} values, {} given",
                self.stored_len(),
                params.len()
            )));
        }
        check_finite(params)
    }

    /// The whole model from this artifact's first layer and the top part its label site
    /// kept: checked against the card's digest of that top, and described by a card of a
    /// whole model (no [`KeptTop`]).
    pub fn join_kept_top(
        &self,
        first_layer: &[f32],
        top: &[f32],
    ) -> Result<(ModelCard, Vec<f32>), ModelError> {
        let Some(kept) = &self.kept_top else {
            return Err(ModelError::InvalidCard(
                "this model is whole; it has no top part kept elsewhere".into(),
            ));
        };
        self.check_stored_parameters(first_layer)?;
        let actual = parameters_sha256(top);
        if actual != kept.sha256 {
            return Err(ModelError::ChecksumMismatch {
                expected: kept.sha256.clone(),
                actual,
            });
        }
        let mut whole = first_layer.to_vec();
        whole.extend_from_slice(top);
        let mut card = self.clone();
        card.kept_top = None;
        card.bind_parameters(&whole)?;
        Ok((card, whole))
    }

    /// Checks the card on its own: format, architecture, feature names and the documented
    /// parameter order.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.format != MODEL_FORMAT {
            return Err(ModelError::InvalidCard(format!(
                "unsupported format {:?}, expected {MODEL_FORMAT:?}",
                self.format
            )));
        }
        self.model.validate_for(self.n_features)?;
        if !self.feature_names.is_empty() && self.feature_names.len() != self.n_features {
            return Err(ModelError::InvalidCard(format!(
                "{} feature names for {} features",
                self.feature_names.len(),
                self.n_features
            )));
        }
        if self.parameter_order != self.stored_layout()? {
            return Err(ModelError::InvalidCard(
                "parameter_order does not match the documented layout for this model".into(),
            ));
        }
        Ok(())
    }

    /// Validates the card and checks that `params` is the vector it describes.
    fn check_params(&self, params: &[f32]) -> Result<(), ModelError> {
        self.validate()?;
        self.check_stored_parameters(params)?;
        let actual = parameters_sha256(params);
        if actual != self.parameters_sha256 {
            return Err(ModelError::ChecksumMismatch {
                expected: self.parameters_sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// `__metadata__` of the safetensors file: provenance readable without the card.
    fn safetensors_metadata(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("format", self.format.clone()),
            ("job_id", self.job_id.clone()),
            ("job_name", self.job_name.clone()),
            ("round", self.round.to_string()),
            ("parameters_sha256", self.parameters_sha256.clone()),
        ])
    }
}

#[derive(Serialize)]
struct HeaderEntry<'a> {
    dtype: &'static str,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

/// The exact bytes of `model.safetensors` for `params` as described by `card`.
///
/// Tensors `layers.{i}.weight` `[fan_in, fan_out]` and `layers.{i}.bias` `[fan_out]`, dtype
/// F32, with the job id, name, round, format and parameter hash in `__metadata__`. The data
/// section is the flat vector in the documented order. The card must be bound to `params`
/// (see [`ModelCard::bind_parameters`]).
pub fn safetensors_bytes(card: &ModelCard, params: &[f32]) -> Result<Vec<u8>, ModelError> {
    card.check_params(params)?;

    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(card.safetensors_metadata())?,
    );
    for info in &card.parameter_order {
        let begin = info.offset * 4;
        let entry = HeaderEntry {
            dtype: "F32",
            shape: &info.shape,
            data_offsets: [begin, begin + info.len() * 4],
        };
        header.insert(info.name.clone(), serde_json::to_value(entry)?);
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The format asks for the data section to start 8-byte aligned; pad with spaces.
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut out = Vec::with_capacity(8 + header.len() + params.len() * 4);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for v in params {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Extracts the flat parameter vector from safetensors `bytes`, checking them against `card`:
/// exactly the expected tensor names, F32 dtype and shapes, metadata consistent with the card
/// (where present), finite values, and the SHA-256 recorded in the card.
pub fn params_from_safetensors(card: &ModelCard, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    card.validate()?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors(e.to_string()))?;
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Safetensors(e.to_string()))?;
    if let Some(meta) = metadata.metadata() {
        for (key, expected) in card.safetensors_metadata() {
            if let Some(found) = meta.get(key)
                && *found != expected
            {
                return Err(ModelError::Safetensors(format!(
                    "metadata {key} is {found:?} but the model card says {expected:?}"
                )));
            }
        }
    }

    let layout = &card.parameter_order;
    if st.len() != layout.len() {
        return Err(ModelError::Safetensors(format!(
            "file has {} tensors, the model has {}",
            st.len(),
            layout.len()
        )));
    }
    let total = card.stored_len();
    let mut params = Vec::with_capacity(total);
    for info in layout {
        let view = st
            .tensor(&info.name)
            .map_err(|e| ModelError::Safetensors(format!("tensor {}: {e}", info.name)))?;
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::Safetensors(format!(
                "tensor {} has dtype {:?}, expected F32",
                info.name,
                view.dtype()
            )));
        }
        if view.shape() != info.shape.as_slice() {
            return Err(ModelError::Safetensors(format!(
                "tensor {} has shape {:?}, expected {:?}",
                info.name,
                view.shape(),
                info.shape
            )));
        }
        // Shapes were checked, so the byte length is right; decode in flat order.
        params.extend(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    if params.len() != total {
        return Err(ModelError::ParameterCount {
            expected: total,
            actual: params.len(),
            n_features: card.n_features,
        });
    }
    check_finite(&params)?;
    let actual = parameters_sha256(&params);
    if actual != card.parameters_sha256 {
        return Err(ModelError::ChecksumMismatch {
            expected: card.parameters_sha256.clone(),
            actual,
        });
    }
    Ok(params)
}

/// Writes `DIR/model.safetensors` and `DIR/model.json` (pretty-printed), creating `DIR`.
///
/// Each file is written to a temporary sibling, flushed to disk and renamed into place, so a
/// crash never leaves a truncated file under the final name. The weights are written first:
/// a reader that sees a new card with old weights gets a checksum error rather than silently
/// mixed artifacts.
pub fn save_model(dir: &Path, card: &ModelCard, params: &[f32]) -> Result<(), ModelError> {
    let weights = safetensors_bytes(card, params)?;
    let mut json = serde_json::to_vec_pretty(card)?;
    json.push(b'\n');
    fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomically(&dir.join(SAFETENSORS_FILE), &weights)?;
    write_atomically(&dir.join(CARD_FILE), &json)?;
    Ok(())
}

/// Reads an artifact directory written by [`save_model`] and verifies it: card format and
/// layout, tensor names, shapes and dtype, finiteness and the SHA-256 of the parameters.
/// A vertical model whose top its label site kept is refused (it cannot run alone): read it
/// with [`load_artifact`] and join the top with [`ModelCard::join_kept_top`].
pub fn load_model(dir: &Path) -> Result<(ModelCard, Vec<f32>), ModelError> {
    let (card, params) = load_artifact(dir)?;
    if let Some(top) = &card.kept_top {
        return Err(ModelError::TopKept {
            site: top.site.clone(),
        });
    }
    Ok((card, params))
}

/// [`load_model`] without its refusal of a first layer whose top is kept at a label site.
pub fn load_artifact(dir: &Path) -> Result<(ModelCard, Vec<f32>), ModelError> {
    let card_path = dir.join(CARD_FILE);
    let json = fs::read(&card_path).map_err(|source| ModelError::Io {
        path: card_path.clone(),
        source,
    })?;
    let card: ModelCard = serde_json::from_slice(&json)?;
    card.validate()?;
    let weights_path = dir.join(SAFETENSORS_FILE);
    let bytes = fs::read(&weights_path).map_err(|source| ModelError::Io {
        path: weights_path,
        source,
    })?;
    let params = params_from_safetensors(&card, &bytes)?;
    Ok((card, params))
}

/// Writes `bytes` to a temporary sibling of `path`, flushes it to disk and renames it into place:
/// a crash never leaves a truncated file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io_err = |path: &Path| {
        let path: PathBuf = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so concurrent saves never share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}-{unique}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        // Best effort: do not leave the partial temporary behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}
