//! The flat parameter vector: initialisation, validation, layout, hashing and byte encoding.
//!
//! See the crate documentation for the flat order; [`parameter_layout`] is its machine-readable
//! form.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ModelError, ModelSpec};

/// Where one named tensor lives inside the flat parameter vector.
///
/// Written into the model card so that a user can slice the flat vector (or check the
/// safetensors file) without knowing this crate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    /// `layers.{i}.weight` or `layers.{i}.bias`.
    pub name: String,
    /// `[fan_in, fan_out]` for weights (row-major, fan_out fastest), `[fan_out]` for biases.
    pub shape: Vec<usize>,
    /// Index of the tensor's first element in the flat vector (in elements, not bytes).
    pub offset: usize,
}

impl TensorInfo {
    /// Number of elements of the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements (never the case for valid models).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The documented flat order as a list of named tensors: for each dense layer `i`,
/// `layers.{i}.weight` `[fan_in, fan_out]` followed by `layers.{i}.bias` `[fan_out]`.
pub fn parameter_layout(spec: &ModelSpec, n_features: usize) -> Vec<TensorInfo> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    for (i, (fan_in, fan_out)) in spec.layer_shapes(n_features).into_iter().enumerate() {
        out.push(TensorInfo {
            name: format!("layers.{i}.weight"),
            shape: vec![fan_in, fan_out],
            offset,
        });
        offset = offset.saturating_add(fan_in.saturating_mul(fan_out));
        out.push(TensorInfo {
            name: format!("layers.{i}.bias"),
            shape: vec![fan_out],
            offset,
        });
        offset = offset.saturating_add(fan_out);
    }
    out
}

/// Deterministic He/Kaiming-uniform initialisation; biases are zero.
///
/// Weight `w` of a layer with `fan_in` inputs is `(2u - 1) * sqrt(6 / fan_in)` where
/// `u = (next_u32() >> 8) / 2^24` is drawn from `ChaCha8Rng::seed_from_u64(seed)` in flat order
/// (biases draw nothing). The scheme keeps ReLU activations at unit variance, and it is spelled
/// out here, in plain Rust rather than the backend's RNG, so that any party (a verifier, a Python
/// script) can reproduce the starting point of a job from its seed.
///
/// # Panics
///
/// Panics (or aborts on allocation failure) if the model is absurdly large; call
/// [`ModelSpec::validate_for`] first, as every other entry point of this crate does.
pub fn init_parameters(spec: &ModelSpec, n_features: usize, seed: u64) -> Vec<f32> {
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    const CHUNK: usize = 16 * 1024;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = Vec::with_capacity(spec.num_parameters(n_features));
    // Random words are generated in chunks so that the hot loop stays cheap even when this crate
    // is compiled without optimisations (models reach 10^7 parameters in tests).
    let mut words = vec![0u8; CHUNK * 4];
    for (fan_in, fan_out) in spec.layer_shapes(n_features) {
        let bound = (6.0 / fan_in as f64).sqrt() as f32;
        let mut remaining = fan_in * fan_out;
        while remaining > 0 {
            let take = remaining.min(CHUNK);
            let bytes = &mut words[..take * 4];
            rng.fill_bytes(bytes);
            params.extend(bytes.chunks_exact(4).map(|b| {
                let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let u = (word >> 8) as f32 * SCALE;
                (2.0 * u - 1.0) * bound
            }));
            remaining -= take;
        }
        params.resize(params.len() + fan_out, 0.0);
    }
    params
}

/// Checks that `params` fits the model: right length and every value finite.
///
/// This is the gate for parameter vectors received from the network.
pub fn check_parameters(
    spec: &ModelSpec,
    n_features: usize,
    params: &[f32],
) -> Result<(), ModelError> {
    spec.validate_for(n_features)?;
    let expected = spec.num_parameters(n_features);
    if params.len() != expected {
        return Err(ModelError::ParameterCount {
            expected,
            actual: params.len(),
            n_features,
        });
    }
    check_finite(params)
}

/// Errors with the index of the first NaN/infinite value.
pub(crate) fn check_finite(params: &[f32]) -> Result<(), ModelError> {
    match params.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(ModelError::NonFiniteParameter {
            index,
            value: params[index],
        }),
        None => Ok(()),
    }
}

/// Little-endian encoding of the flat vector: 4 bytes per value, in flat order.
///
/// This is the canonical byte form used for hashing, the safetensors data section and
/// transport, so that every party hashes exactly the same bytes.
pub fn parameters_to_bytes(params: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(params.len() * 4);
    for v in params {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Inverse of [`parameters_to_bytes`]. Errors if the length is not a multiple of 4.
///
/// Values are not checked for finiteness here; use [`check_parameters`] for that.
pub fn parameters_from_bytes(bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ModelError::ByteLength(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Lower-case hex SHA-256 of [`parameters_to_bytes`]`(params)`, computed without materialising
/// the byte vector.
pub fn parameters_sha256(params: &[f32]) -> String {
    let mut hasher = Sha256::new();
    if cfg!(target_endian = "little") {
        // The values' memory already is their little-endian encoding.
        hasher.update(bytemuck::cast_slice::<f32, u8>(params));
    } else {
        let mut buf = Vec::with_capacity(4 * 4096);
        for chunk in params.chunks(4096) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            hasher.update(&buf);
        }
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_deterministic_bounded_and_biases_zero() {
        let spec = ModelSpec::Mlp {
            hidden: vec![7, 5],
            cut: None,
        };
        let a = init_parameters(&spec, 4, 42);
        let b = init_parameters(&spec, 4, 42);
        let c = init_parameters(&spec, 4, 43);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), spec.num_parameters(4));
        for info in parameter_layout(&spec, 4) {
            let slice = &a[info.offset..info.offset + info.len()];
            if info.name.ends_with("bias") {
                assert!(slice.iter().all(|&v| v == 0.0), "{}", info.name);
            } else {
                let bound = (6.0 / info.shape[0] as f32).sqrt();
                assert!(slice.iter().all(|v| v.abs() <= bound), "{}", info.name);
                assert!(slice.iter().any(|&v| v != 0.0));
            }
        }
    }

    #[test]
    fn init_matches_the_documented_recipe() {
        let params = init_parameters(&ModelSpec::Logistic, 3, 9);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let bound = (6.0f64 / 3.0).sqrt() as f32;
        for &p in &params[..3] {
            let u = (rng.next_u32() >> 8) as f32 / 16_777_216.0;
            assert_eq!(p, (2.0 * u - 1.0) * bound);
        }
        assert_eq!(params[3], 0.0);
    }

    #[test]
    fn layout_is_contiguous_and_covers_everything() {
        let spec = ModelSpec::Mlp {
            hidden: vec![3],
            cut: None,
        };
        let layout = parameter_layout(&spec, 2);
        let names: Vec<_> = layout.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "layers.0.weight",
                "layers.0.bias",
                "layers.1.weight",
                "layers.1.bias"
            ]
        );
        assert_eq!(layout[0].shape, vec![2, 3]);
        assert_eq!(layout[1].offset, 6);
        assert_eq!(layout[2].offset, 9);
        assert_eq!(layout[2].shape, vec![3, 1]);
        assert_eq!(layout[3].offset, 12);
        assert_eq!(layout[3].offset + layout[3].len(), spec.num_parameters(2));
    }

    #[test]
    fn check_reports_length_and_first_bad_index() {
        let spec = ModelSpec::Logistic;
        assert!(check_parameters(&spec, 2, &[0.0, 1.0, 2.0]).is_ok());
        match check_parameters(&spec, 2, &[0.0, 1.0]) {
            Err(ModelError::ParameterCount {
                expected: 3,
                actual: 2,
                n_features: 2,
            }) => {}
            other => panic!("{other:?}"),
        }
        match check_parameters(&spec, 2, &[0.0, f32::NAN, f32::INFINITY]) {
            Err(ModelError::NonFiniteParameter { index: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bytes_round_trip_and_hash() {
        let params = vec![1.0f32, -2.5, 0.0, f32::MIN_POSITIVE];
        let bytes = parameters_to_bytes(&params);
        assert_eq!(&bytes[..4], &1.0f32.to_le_bytes());
        assert_eq!(parameters_from_bytes(&bytes).unwrap(), params);
        assert!(matches!(
            parameters_from_bytes(&bytes[..5]),
            Err(ModelError::ByteLength(5))
        ));
        let expected = hex::encode(Sha256::digest(&bytes));
        assert_eq!(parameters_sha256(&params), expected);
        // Hash of the empty vector is the well-known SHA-256 of "".
        assert_eq!(
            parameters_sha256(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Chunking must not matter.
        let long: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        assert_eq!(
            parameters_sha256(&long),
            hex::encode(Sha256::digest(parameters_to_bytes(&long)))
        );
    }
}
