//! Fixed-point quantization of model updates into `Z_{2^bits}`, shared by
//! secure aggregation and homomorphic encryption ([`crate::he`]).
//!
//! A client clips its update `Δ` to L2 norm `clip`, weights it by
//! `w = num_examples / max_examples` (so `w ≤ 1`), multiplies by `scale`,
//! rounds each coordinate stochastically (unbiased: `E[q] = scale·w·Δ_i`)
//! and stores the integer in two's complement mod `2^bits`. One trailing
//! element carries `num_examples` as a raw integer. Summing encoded updates
//! mod `2^bits` then sums the integers exactly, as long as nothing wraps; the
//! [`Quantizer`] picks `scale` so that a sum of `max_summands` updates
//! never can. The server decodes the example-weighted mean
//! `Σ w_k Δ_k / Σ w_k` and the total example count.
//!
//! ```
//! use cohort_privacy::quantize::{Quantizer, add_mod};
//! use rand::SeedableRng;
//! let q = Quantizer::for_weighted_sum(1.0, 32, 10, 1_000)?;
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let a = q.encode_update(&[0.1, -0.2], 500, &mut rng)?;
//! let b = q.encode_update(&[0.3, 0.0], 1_000, &mut rng)?;
//! let mut sum = a.values.clone();
//! add_mod(&mut sum, &b.values, q.bits());
//! let (mean, count) = q.decode_weighted_mean(&sum)?;
//! assert_eq!(count, 1_500);
//! assert!((mean[0] - (0.1 * 500.0 + 0.3 * 1000.0) / 1500.0).abs() < 1e-4);
//! # Ok::<(), cohort_privacy::quantize::QuantizeError>(())
//! ```

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Smallest accepted number of quantization levels per `clip` (`scale·clip`).
pub const MIN_LEVELS: u64 = 1 << 8;

/// Everything quantization can reject. Each message names the problem and,
/// where there is one, the fix.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantizeError {
    #[error("bits must be in 8..=62, got {0}")]
    InvalidBits(u32),
    #[error("clip (L2 norm bound) must be finite and positive, got {0}")]
    InvalidClip(f64),
    #[error("max_summands must be at least 1, got 0")]
    NoSummands,
    #[error("max_examples must be at least 1, got 0")]
    NoExamples,
    #[error(
        "example counts could wrap: {max_summands} updates of up to {max_examples} examples \
         can sum to more than 2^{bits} - 1; use more bits or a smaller max_examples"
    )]
    CountsCouldWrap {
        max_summands: u32,
        max_examples: u64,
        bits: u32,
    },
    #[error(
        "quantization too coarse: {bits} bits summed over up to {max_summands} updates leave \
         {levels} levels per clip (need at least {MIN_LEVELS}); use more bits or fewer clients \
         per aggregate"
    )]
    TooCoarse {
        bits: u32,
        max_summands: u32,
        levels: u64,
    },
    #[error("update coordinate {index} is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("num_examples {num_examples} exceeds max_examples {max_examples}")]
    TooManyExamples {
        num_examples: u64,
        max_examples: u64,
    },
    #[error(
        "wrong length: expected {expected} values of {bytes_per_value} bytes ({} bytes), got {got_bytes} bytes",
        expected.saturating_mul(*bytes_per_value)
    )]
    WrongLength {
        expected: usize,
        bytes_per_value: usize,
        got_bytes: usize,
    },
    #[error("value {value} at index {index} is not below 2^{bits}")]
    ValueOutOfRange { index: usize, value: u64, bits: u32 },
    #[error("sum is empty: it must end with the example-count element")]
    EmptySum,
    #[error("total example count is 0: no weighted mean exists")]
    ZeroTotalCount,
    #[error(
        "total example count {count} exceeds {max_summands} × {max_examples}: the sum is not \
         a sum of at most max_summands updates from this quantizer"
    )]
    CountTooLarge {
        count: u64,
        max_summands: u32,
        max_examples: u64,
    },
    #[error("serialized scale {got} does not match {expected} recomputed from the parameters")]
    ScaleMismatch { got: f64, expected: f64 },
    #[error("unsupported bit width {0} for packing (must be 1..=64)")]
    InvalidPackBits(u32),
}

/// Quantization parameters for a sum of weighted, clipped updates. Built
/// only through [`Quantizer::for_weighted_sum`]; deserialization recomputes
/// and checks the scale, so a deserialized value is always valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawQuantizer")]
pub struct Quantizer {
    clip: f64,
    bits: u32,
    max_summands: u32,
    max_examples: u64,
    scale: f64,
    /// `L`: bound on `|q|` of one coordinate of one encoded update.
    #[serde(skip)]
    per_update_bound: u64,
}

#[derive(Deserialize)]
struct RawQuantizer {
    clip: f64,
    bits: u32,
    max_summands: u32,
    max_examples: u64,
    scale: Option<f64>,
}

impl TryFrom<RawQuantizer> for Quantizer {
    type Error = QuantizeError;

    fn try_from(raw: RawQuantizer) -> Result<Self, Self::Error> {
        let q =
            Quantizer::for_weighted_sum(raw.clip, raw.bits, raw.max_summands, raw.max_examples)?;
        if let Some(s) = raw.scale
            && s != q.scale
        {
            return Err(QuantizeError::ScaleMismatch {
                got: s,
                expected: q.scale,
            });
        }
        Ok(q)
    }
}

/// One client's encoded update: `delta.len()` quantized coordinates followed
/// by `num_examples`, all in `0..2^bits`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedUpdate {
    pub values: Vec<u64>,
    /// Whether clipping changed the update (its L2 norm exceeded `clip`).
    pub clipped: bool,
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Quantizer {
    /// For a sum of up to `max_summands` weighted updates, each clipped to
    /// L2 norm `clip` and weighted by `num_examples / max_examples` (≤ 1),
    /// plus one trailing count element (`num_examples`, raw integer).
    ///
    /// Picks the largest scale such that the sum can never wrap mod
    /// `2^bits`: with `L = ⌊(2^(bits-1) − 1) / max_summands⌋`, every
    /// coordinate of every update satisfies `|q| ≤ scale·clip + 1 ≤ L` after
    /// stochastic rounding, so the signed sum stays in
    /// `[−2^(bits−1)+1, 2^(bits−1)−1]`; and the counts sum to at most
    /// `max_summands · max_examples < 2^bits`.
    ///
    /// Errors when `bits` is not in `8..=62`, `clip` is not finite and
    /// positive, the counts could wrap, or fewer than `2^8` quantization
    /// levels per `clip` remain.
    pub fn for_weighted_sum(
        clip: f64,
        bits: u32,
        max_summands: u32,
        max_examples: u64,
    ) -> Result<Self, QuantizeError> {
        if !(8..=62).contains(&bits) {
            return Err(QuantizeError::InvalidBits(bits));
        }
        if !(clip.is_finite() && clip > 0.0) {
            return Err(QuantizeError::InvalidClip(clip));
        }
        if max_summands == 0 {
            return Err(QuantizeError::NoSummands);
        }
        if max_examples == 0 {
            return Err(QuantizeError::NoExamples);
        }
        let total = u128::from(max_summands) * u128::from(max_examples);
        if total > u128::from(mask(bits)) {
            return Err(QuantizeError::CountsCouldWrap {
                max_summands,
                max_examples,
                bits,
            });
        }
        let half = (1u64 << (bits - 1)) - 1;
        let per_update_bound = half / u64::from(max_summands);
        let levels = per_update_bound.saturating_sub(1);
        if levels < MIN_LEVELS {
            return Err(QuantizeError::TooCoarse {
                bits,
                max_summands,
                levels,
            });
        }
        // levels ≤ 2^61 is exactly representable up to rounding; scale·clip
        // may exceed `levels` by an ulp, which `encode_update` clamps away.
        let scale = levels as f64 / clip;
        Ok(Self {
            clip,
            bits,
            max_summands,
            max_examples,
            scale,
            per_update_bound,
        })
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Integer units per unit of (weighted, clipped) update coordinate.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn clip(&self) -> f64 {
        self.clip
    }

    pub fn max_summands(&self) -> u32 {
        self.max_summands
    }

    pub fn max_examples(&self) -> u64 {
        self.max_examples
    }

    /// Clip (L2) `delta`, weight it by `num_examples / max_examples`, scale,
    /// stochastically round (unbiased), map into `Z_{2^bits}` (two's
    /// complement), and append `num_examples`. Output length
    /// `delta.len() + 1`. Errors on non-finite input or
    /// `num_examples > max_examples`.
    // Spelled as specified; `CryptoRng` already implies `RngCore`.
    #[allow(clippy::implied_bounds_in_impls)]
    pub fn encode_update(
        &self,
        delta: &[f32],
        num_examples: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<EncodedUpdate, QuantizeError> {
        if num_examples > self.max_examples {
            return Err(QuantizeError::TooManyExamples {
                num_examples,
                max_examples: self.max_examples,
            });
        }
        let mut norm_sq = 0.0f64;
        for (index, &value) in delta.iter().enumerate() {
            if !value.is_finite() {
                return Err(QuantizeError::NonFinite { index, value });
            }
            norm_sq += f64::from(value) * f64::from(value);
        }
        let norm = norm_sq.sqrt();
        let clipped = norm > self.clip;
        let clip_factor = if clipped { self.clip / norm } else { 1.0 };
        let weight = num_examples as f64 / self.max_examples as f64;
        let factor = clip_factor * weight * self.scale;
        // |v| ≤ scale·clip ≤ L − 1 mathematically; clamp float excess so
        // rounding can never leave [−L, L].
        let limit = (self.per_update_bound - 1) as f64;
        let m = mask(self.bits);
        let mut values = Vec::with_capacity(delta.len() + 1);
        for &d in delta {
            let v = (f64::from(d) * factor).clamp(-limit, limit);
            let q = stochastic_round(v, rng);
            values.push((q as u64) & m);
        }
        values.push(num_examples);
        Ok(EncodedUpdate { values, clipped })
    }

    /// From a sum of encoded updates (mod `2^bits`): the example-weighted
    /// mean delta `Σ w_k Δ_k / Σ w_k` and the total example count.
    pub fn decode_weighted_mean(&self, sum: &[u64]) -> Result<(Vec<f32>, u64), QuantizeError> {
        let Some((&count, coords)) = sum.split_last() else {
            return Err(QuantizeError::EmptySum);
        };
        let m = mask(self.bits);
        if let Some((index, &value)) = sum.iter().enumerate().find(|&(_, &v)| v > m) {
            return Err(QuantizeError::ValueOutOfRange {
                index,
                value,
                bits: self.bits,
            });
        }
        if count == 0 {
            return Err(QuantizeError::ZeroTotalCount);
        }
        if u128::from(count) > u128::from(self.max_summands) * u128::from(self.max_examples) {
            return Err(QuantizeError::CountTooLarge {
                count,
                max_summands: self.max_summands,
                max_examples: self.max_examples,
            });
        }
        // Σ q ≈ scale · Σ (n_k / max_examples) Δ_k and Σ w_k = count / max_examples.
        let denom = self.scale * count as f64 / self.max_examples as f64;
        let sign_bit = 1u64 << (self.bits - 1);
        let mean = coords
            .iter()
            .map(|&v| {
                let signed = if v & sign_bit != 0 {
                    v as i64 - (1i64 << self.bits)
                } else {
                    v as i64
                };
                (signed as f64 / denom) as f32
            })
            .collect();
        Ok((mean, count))
    }
}

/// `⌊v⌋ + Bernoulli(v − ⌊v⌋)`: unbiased, and within 1 of `v`.
fn stochastic_round(v: f64, rng: &mut impl RngCore) -> i64 {
    let floor = v.floor();
    let frac = v - floor;
    // Uniform in [0, 1) with 53 random bits.
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    floor as i64 + i64::from(u < frac)
}

/// `acc[i] = (acc[i] + x[i]) mod 2^bits`.
///
/// # Panics
/// If the lengths differ (a programming error: lengths of wire input are
/// checked by [`unpack`]).
pub fn add_mod(acc: &mut [u64], x: &[u64], bits: u32) {
    assert_eq!(acc.len(), x.len(), "add_mod: length mismatch");
    let m = mask(bits);
    for (a, &b) in acc.iter_mut().zip(x) {
        *a = a.wrapping_add(b) & m;
    }
}

/// `acc[i] = (acc[i] − x[i]) mod 2^bits`.
///
/// # Panics
/// If the lengths differ.
pub fn sub_mod(acc: &mut [u64], x: &[u64], bits: u32) {
    assert_eq!(acc.len(), x.len(), "sub_mod: length mismatch");
    let m = mask(bits);
    for (a, &b) in acc.iter_mut().zip(x) {
        *a = a.wrapping_sub(b) & m;
    }
}

/// Bytes per value on the wire: 4 when `bits ≤ 32`, else 8.
pub fn bytes_per_value(bits: u32) -> usize {
    if bits <= 32 { 4 } else { 8 }
}

/// Wire form: 4 bytes little-endian per value when `bits ≤ 32`, else 8.
/// Values must be below `2^bits`; higher bits are dropped.
pub fn pack(values: &[u64], bits: u32) -> Vec<u8> {
    let m = mask(bits);
    let width = bytes_per_value(bits);
    let mut out = Vec::with_capacity(values.len() * width);
    if width == 4 {
        for &v in values {
            out.extend_from_slice(&((v & m) as u32).to_le_bytes());
        }
    } else {
        for &v in values {
            out.extend_from_slice(&(v & m).to_le_bytes());
        }
    }
    out
}

/// Inverse of [`pack`]. Rejects a byte length other than
/// `expected_len × bytes_per_value(bits)`, values `≥ 2^bits`, and `bits`
/// outside `1..=64`.
pub fn unpack(bytes: &[u8], bits: u32, expected_len: usize) -> Result<Vec<u64>, QuantizeError> {
    if !(1..=64).contains(&bits) {
        return Err(QuantizeError::InvalidPackBits(bits));
    }
    let width = bytes_per_value(bits);
    if expected_len.checked_mul(width) != Some(bytes.len()) {
        return Err(QuantizeError::WrongLength {
            expected: expected_len,
            bytes_per_value: width,
            got_bytes: bytes.len(),
        });
    }
    let m = mask(bits);
    let mut out = Vec::with_capacity(expected_len);
    for (index, chunk) in bytes.chunks_exact(width).enumerate() {
        let value = if width == 4 {
            u64::from(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        } else {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            u64::from_le_bytes(b)
        };
        if value > m {
            return Err(QuantizeError::ValueOutOfRange { index, value, bits });
        }
        out.push(value);
    }
    Ok(out)
}
