//! The fixed-point grid a proved update lives on in plain mode.
//!
//! Entries are 16-bit signed integers; the scale is a power of two so that
//! `u_i · 2^-k` is exactly an `f32` and the coordinator can read `u` back
//! from the `f32` update it received without any rounding ambiguity. The
//! integer bound is `B = ⌊2^k · clip⌋ < 2^15`.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::ProofError;

/// Bits per entry (two's complement range `[-2^15, 2^15 - 1]`).
pub const ENTRY_BITS: u32 = 16;
const MAX_ENTRY: i64 = (1 << (ENTRY_BITS - 1)) - 1;

/// The job's L2 clipping bound on the fixed-point grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// `k`: one unit of an entry is `2^-k` in update units.
    pub scale_log2: i32,
    /// `B`: the L2 bound on the integer vector.
    pub bound: u64,
}

impl FixedPoint {
    /// The finest grid on which an update of L2 norm `clip` fits 16-bit
    /// entries.
    pub fn for_clip(clip: f64) -> Result<Self, ProofError> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(ProofError::Encoding(format!(
                "the clipping bound must be finite and positive, got {clip}"
            )));
        }
        // Largest k with 2^k · clip ≤ 2^15 − 1.
        let k = ((MAX_ENTRY as f64) / clip).log2().floor() as i32;
        if !(-100..=100).contains(&k) {
            return Err(ProofError::Encoding(format!(
                "clipping bound {clip} is too far from 1 for a 16-bit grid"
            )));
        }
        let bound = (2f64.powi(k) * clip).floor() as u64;
        Ok(Self {
            scale_log2: k,
            bound: bound.min(MAX_ENTRY as u64),
        })
    }

    fn scale(&self) -> f64 {
        2f64.powi(self.scale_log2)
    }

    /// Clips `delta` so that its quantization provably stays within `B`,
    /// then rounds stochastically (unbiased) to the grid. Each entry moves
    /// by less than one unit, so `‖u − v‖ < √d`; clipping `v` to
    /// `B − √d` keeps `‖u‖ ≤ B` without a retry.
    pub fn encode(&self, delta: &[f32], rng: &mut impl RngCore) -> Result<Vec<i32>, ProofError> {
        let slack = (delta.len() as f64).sqrt();
        let target = self.bound as f64 - slack;
        if target <= 0.0 {
            return Err(ProofError::Encoding(format!(
                "{} entries need more than the bound {} of rounding room; use a larger clip",
                delta.len(),
                self.bound
            )));
        }
        let scale = self.scale();
        let mut norm_sq = 0.0f64;
        for (i, &d) in delta.iter().enumerate() {
            if !d.is_finite() {
                return Err(ProofError::Encoding(format!(
                    "entry {i} is not finite ({d})"
                )));
            }
            norm_sq += (f64::from(d) * scale).powi(2);
        }
        let norm = norm_sq.sqrt();
        let factor = if norm > target { target / norm } else { 1.0 };
        Ok(delta
            .iter()
            .map(|&d| {
                let v = f64::from(d) * scale * factor;
                let floor = v.floor();
                let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                (floor as i64 + i64::from(u < v - floor)) as i32
            })
            .collect())
    }

    /// The update as the `f32` values that travel (exact: |u| < 2^24).
    pub fn to_f32(&self, entries: &[i32]) -> Vec<f32> {
        let unit = 2f64.powi(-self.scale_log2);
        entries
            .iter()
            .map(|&u| (f64::from(u) * unit) as f32)
            .collect()
    }

    /// Each value at its nearest grid point, unchecked: what a drill client
    /// makes of an update it tampered with, which may leave the 16-bit
    /// range (`from_f32` refuses values off the grid instead).
    pub fn nearest(&self, values: &[f32]) -> Vec<i64> {
        let scale = self.scale();
        values
            .iter()
            .map(|&v| (f64::from(v) * scale).round() as i64)
            .collect()
    }

    /// The mean of `count` updates from the exact sum of their entries
    /// (what secure aggregation of committed updates recovers).
    pub fn mean_of_sum(&self, sum: &[i64], count: usize) -> Vec<f32> {
        let unit = 2f64.powi(-self.scale_log2) / count.max(1) as f64;
        sum.iter().map(|&s| (s as f64 * unit) as f32).collect()
    }

    /// Reads `u` back from a received update; refuses values that are not
    /// on the grid or not 16-bit.
    pub fn from_f32(&self, values: &[f32]) -> Result<Vec<i32>, ProofError> {
        let scale = self.scale();
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let x = f64::from(v) * scale;
                if !x.is_finite() || x.fract() != 0.0 || x.abs() > (MAX_ENTRY + 1) as f64 {
                    return Err(ProofError::Encoding(format!(
                        "entry {i} ({v}) is not a 16-bit multiple of 2^-{} (the job's grid)",
                        self.scale_log2
                    )));
                }
                Ok(x as i32)
            })
            .collect()
    }
}

/// What the prover checks before proving statement 1 (either proof
/// system): every entry a 16-bit signed integer and `‖u‖² ≤ B²`. A prover
/// refuses otherwise rather than emit a proof that would not verify.
pub fn check_well_formed(entries: &[i32], bound: u64) -> Result<(), ProofError> {
    let limit = 1i32 << (ENTRY_BITS - 1);
    if let Some((i, u)) = entries
        .iter()
        .enumerate()
        .find(|(_, u)| **u < -limit || **u >= limit)
    {
        return Err(ProofError::Refused(format!(
            "entry {i} is {u}, outside the 16-bit range"
        )));
    }
    let norm = norm_sq(entries);
    let bound_sq = u128::from(bound).pow(2);
    if norm > bound_sq {
        return Err(ProofError::Refused(format!(
            "‖u‖² = {norm} exceeds B² = {bound_sq}"
        )));
    }
    Ok(())
}

/// `Σ u_i²`, exactly.
pub fn norm_sq(entries: &[i32]) -> u128 {
    entries
        .iter()
        .map(|&u| (i128::from(u) * i128::from(u)) as u128)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn encoding_stays_within_the_bound_and_round_trips() {
        let fp = FixedPoint::for_clip(10.0).unwrap();
        assert!(fp.bound < 1 << 15 && fp.bound >= 1 << 14, "{fp:?}");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        // Far over the clip: clipped, and the rounding never crosses B.
        let delta: Vec<f32> = (0..500).map(|i| ((i % 7) as f32 - 3.0) * 4.0).collect();
        for _ in 0..20 {
            let u = fp.encode(&delta, &mut rng).unwrap();
            assert!(norm_sq(&u) <= u128::from(fp.bound).pow(2));
            assert_eq!(fp.from_f32(&fp.to_f32(&u)).unwrap(), u);
        }
        let off_grid = fp.from_f32(&[0.1]).unwrap_err().to_string();
        assert!(off_grid.contains("grid"), "{off_grid}");
        assert!(FixedPoint::for_clip(f64::NAN).is_err());
        assert!(fp.from_f32(&[f32::INFINITY]).is_err());
    }
}
