//! Encryption of quantized updates, addition, threshold decryption.

use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use num_bigint::BigUint;
use rand::distr::{Distribution, Uniform};
use rand::{CryptoRng, RngCore};

use super::keys::{PublicKey, ThresholdKey, ternary};
use super::params::{DEGREE, ERROR_VARIANCE, HeParams, math};
use super::{HeError, wire};

/// One RLWE ciphertext `(c0, c1)` with `c0 + c1·s = ⌊Q·m/T⌋ + e`, in NTT
/// form.
#[derive(Debug, Clone, PartialEq)]
struct Ciphertext {
    c0: Poly,
    c1: Poly,
}

/// A whole update: `⌈values / N⌉` ciphertexts, one value per coefficient.
#[derive(Debug, Clone, PartialEq)]
pub struct EncryptedUpdate {
    parts: Vec<Ciphertext>,
}

/// `values` (each below `2^plaintext_bits`, the quantizer's encoding)
/// encrypted under the collective key.
pub fn encrypt<R: RngCore + CryptoRng>(
    params: &HeParams,
    key: &PublicKey,
    values: &[u64],
    rng: &mut R,
) -> Result<EncryptedUpdate, HeError> {
    if values.len() != params.values() {
        return Err(HeError::Length {
            got: values.len(),
            want: params.values(),
        });
    }
    let plaintext = 1u128 << params.plaintext_bits();
    if let Some(index) = values.iter().position(|&v| u128::from(v) >= plaintext) {
        return Err(HeError::PlaintextRange {
            index,
            bits: params.plaintext_bits(),
        });
    }
    let parts = values
        .chunks(DEGREE)
        .map(|chunk| {
            let mut message = encode(params, chunk)?;
            message += &Poly::small(&params.ctx, Representation::PowerBasis, ERROR_VARIANCE, rng)
                .map_err(math)?;
            message.change_representation(Representation::Ntt);
            let u = ternary(params, rng)?;
            let e2 =
                Poly::small(&params.ctx, Representation::Ntt, ERROR_VARIANCE, rng).map_err(math)?;
            Ok(Ciphertext {
                c0: &(&key.b * &u) + &message,
                c1: &(&key.a * &u) + &e2,
            })
        })
        .collect::<Result<Vec<_>, HeError>>()?;
    Ok(EncryptedUpdate { parts })
}

/// `⌊Q·m/T⌋ mod q_i = −(Q·m mod T) · T⁻¹ mod q_i`, since `Q·m ≡ 0 mod q_i`.
/// Unlike `⌊Q/T⌋·m`, these sum to `⌊Q·Σm/T⌋` up to the number of terms
/// even when `Σm` wraps past `T`.
pub(super) fn encode(params: &HeParams, chunk: &[u64]) -> Result<Poly, HeError> {
    let mask = (1u128 << params.plaintext_bits()) - 1;
    let mut coefficients = Vec::with_capacity(DEGREE * params.moduli.len());
    for (q, &t_inverse) in params.moduli.iter().zip(&params.t_inverse) {
        let row = (0..DEGREE).map(|i| {
            let m = chunk.get(i).copied().map_or(0, u128::from);
            let rest = q.reduce_u128((params.q_mod_t * m) & mask);
            q.mul(q.neg(rest), t_inverse)
        });
        coefficients.extend(row);
    }
    Poly::try_convert_from(coefficients, &params.ctx, false, Representation::PowerBasis)
        .map_err(math)
}

impl EncryptedUpdate {
    /// Adds another update under the same key, coefficient-wise.
    pub fn add_assign(&mut self, other: &EncryptedUpdate) -> Result<(), HeError> {
        if self.parts.len() != other.parts.len() {
            return Err(HeError::Length {
                got: other.parts.len(),
                want: self.parts.len(),
            });
        }
        for (mine, theirs) in self.parts.iter_mut().zip(&other.parts) {
            mine.c0 += &theirs.c0;
            mine.c1 += &theirs.c1;
        }
        Ok(())
    }

    /// Length of [`EncryptedUpdate::to_bytes`] under `params`.
    pub fn encoded_len(params: &HeParams) -> usize {
        wire::encoded_len(params, 0, 2 * params.ciphertexts())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let polys: Vec<Poly> = self
            .parts
            .iter()
            .flat_map(|c| [c.c0.clone(), c.c1.clone()])
            .collect();
        wire::encode(0, &[], &polys)
    }

    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Self, HeError> {
        let (_, _, polys) = wire::decode(params, bytes, 2 * params.ciphertexts())?;
        let mut polys = polys.into_iter();
        let mut parts = Vec::with_capacity(params.ciphertexts());
        while let (Some(c0), Some(c1)) = (polys.next(), polys.next()) {
            parts.push(Ciphertext { c0, c1 });
        }
        Ok(Self { parts })
    }
}

/// Hospital `index`'s part of decrypting one sum: `λ_j·S_j·c1 + E_j` per
/// ciphertext, `λ_j` its Lagrange coefficient in the set `decryptors`, `E_j`
/// uniform in `[−B, B]` with `B` = [`super::NoiseBounds::smudging`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecryptionShare {
    pub index: u32,
    /// The set the Lagrange coefficient was computed for: all shares of a
    /// decryption must name the same set, and come from all of it.
    pub decryptors: Vec<u32>,
    parts: Vec<Poly>,
}

impl ThresholdKey {
    /// This hospital's decryption share of `sum`, to be combined with those
    /// of the other `decryptors` (at least the threshold, this one among
    /// them).
    ///
    /// A hospital must give at most one share per ciphertext. The
    /// smudging argument covers one share: two shares of the same `c1` for
    /// different decryptor sets are `λ·S_j·c1 + E` and `λ'·S_j·c1 + E'`
    /// with known `λ, λ'`, a pair the analysis says nothing about. A round
    /// whose decryptor set changes must start over with fresh keys. The caller
    /// must only decrypt sums: the coordinator chooses `sum`, so the
    /// scheme trusts it (semi-honestly, as SecAgg+ does) not to submit one
    /// hospital's ciphertext alone.
    pub fn decryption_share<R: RngCore + CryptoRng>(
        &self,
        params: &HeParams,
        decryptors: &[u32],
        sum: &EncryptedUpdate,
        rng: &mut R,
    ) -> Result<DecryptionShare, HeError> {
        let decryptors = check_decryptors(params, decryptors)?;
        if !decryptors.contains(&self.index) {
            return Err(HeError::NotADecryptor(self.index));
        }
        if sum.parts.len() != params.ciphertexts() {
            return Err(HeError::Length {
                got: sum.parts.len(),
                want: params.ciphertexts(),
            });
        }
        let key = &self.share * &lagrange_at_zero(params, &decryptors, self.index)?;
        let parts = sum
            .parts
            .iter()
            .map(|c| Ok(&(&key * &c.c1) + &smudging(params, rng)?))
            .collect::<Result<Vec<_>, HeError>>()?;
        Ok(DecryptionShare {
            index: self.index,
            decryptors,
            parts,
        })
    }
}

/// Sorted, distinct, known parties, at least the threshold of them.
fn check_decryptors(params: &HeParams, decryptors: &[u32]) -> Result<Vec<u32>, HeError> {
    let mut sorted = decryptors.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != decryptors.len() {
        return Err(HeError::Malformed("a decryptor is named twice".into()));
    }
    for &d in &sorted {
        params.check_party(d)?;
    }
    if sorted.len() < params.threshold() as usize {
        return Err(HeError::NotEnoughShares {
            have: sorted.len(),
            need: params.threshold(),
        });
    }
    Ok(sorted)
}

/// `λ_j = Π_{m ≠ j} m / (m − j) mod Q` over the set `decryptors`.
fn lagrange_at_zero(params: &HeParams, decryptors: &[u32], j: u32) -> Result<BigUint, HeError> {
    let q = params.ctx.modulus();
    let mut numerator = BigUint::from(1u32);
    let mut denominator = BigUint::from(1u32);
    let mut negative = false;
    for &m in decryptors.iter().filter(|&&m| m != j) {
        numerator *= m;
        denominator *= m.abs_diff(j);
        negative ^= m < j;
    }
    let inverse = (denominator % q)
        .modinv(q)
        .ok_or_else(|| HeError::Math("Lagrange denominator not invertible".into()))?;
    let lambda = numerator * inverse % q;
    Ok(if negative && lambda != BigUint::ZERO {
        q - lambda
    } else {
        lambda
    })
}

/// Uniform coefficients in `[−B, B]`, `B` the smudging bound, in NTT form.
fn smudging<R: RngCore + CryptoRng>(params: &HeParams, rng: &mut R) -> Result<Poly, HeError> {
    let bound = params.bounds().smudging;
    // One `Uniform` for the whole polynomial: it precomputes the rejection
    // zone that `random_range` would recompute with a 128-bit division on
    // every draw.
    let uniform = Uniform::new_inclusive(0, 2 * bound)
        .map_err(|e| HeError::Math(format!("smudging range: {e}")))?;
    let draws: Vec<u128> = (0..DEGREE).map(|_| uniform.sample(rng)).collect();
    let mut coefficients = Vec::with_capacity(DEGREE * params.moduli.len());
    for q in &params.moduli {
        coefficients.extend(draws.iter().map(|&d| {
            // d − B mod q, without leaving unsigned arithmetic.
            if d >= bound {
                q.reduce_u128(d - bound)
            } else {
                q.neg(q.reduce_u128(bound - d))
            }
        }));
    }
    let mut poly =
        Poly::try_convert_from(coefficients, &params.ctx, false, Representation::PowerBasis)
            .map_err(math)?;
    poly.change_representation(Representation::Ntt);
    Ok(poly)
}

/// The plaintext sum from `sum` and the shares of every hospital in one
/// decryptor set of at least the threshold: `round(T·(c0 + Σ d_j)/Q) mod T`.
pub fn decrypt(
    params: &HeParams,
    sum: &EncryptedUpdate,
    shares: &[DecryptionShare],
) -> Result<Vec<u64>, HeError> {
    let Some(first) = shares.first() else {
        return Err(HeError::NotEnoughShares {
            have: 0,
            need: params.threshold(),
        });
    };
    let decryptors = check_decryptors(params, &first.decryptors)?;
    let mut from: Vec<u32> = shares.iter().map(|s| s.index).collect();
    from.sort_unstable();
    if shares.iter().any(|s| s.decryptors != decryptors) || from != decryptors {
        return Err(HeError::MixedDecryptors);
    }
    combine(params, sum, shares)
}

/// [`decrypt`] without its checks: what a coordinator holding fewer shares
/// than the threshold could compute (tests show it is noise).
pub(super) fn combine(
    params: &HeParams,
    sum: &EncryptedUpdate,
    shares: &[DecryptionShare],
) -> Result<Vec<u64>, HeError> {
    if let Some(s) = shares.iter().find(|s| s.parts.len() != sum.parts.len()) {
        return Err(HeError::Length {
            got: s.parts.len(),
            want: sum.parts.len(),
        });
    }
    let plaintext = 1u64 << params.plaintext_bits();
    let first = &params.moduli[0];
    let mut out = Vec::with_capacity(sum.parts.len() * DEGREE);
    for (i, c) in sum.parts.iter().enumerate() {
        let mut x = c.c0.clone();
        for share in shares {
            x += &share.parts[i];
        }
        x.change_representation(Representation::PowerBasis);
        let scaled = x.scale(&params.scaler).map_err(math)?;
        let row = scaled.coefficients();
        // The scaler rounds the centred phase, so a negative result comes
        // back as q_0 − |v|: shift by T before reducing mod T.
        out.extend(
            row.row(0)
                .iter()
                .map(|&v| first.reduce(v + plaintext) & (plaintext - 1)),
        );
    }
    out.truncate(params.values());
    Ok(out)
}

impl DecryptionShare {
    /// Length of [`DecryptionShare::to_bytes`] for a set of `decryptors`.
    pub fn encoded_len(params: &HeParams, decryptors: usize) -> usize {
        wire::encoded_len(params, decryptors, params.ciphertexts())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self.index, &self.decryptors, &self.parts)
    }

    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Self, HeError> {
        let (index, decryptors, parts) = wire::decode(params, bytes, params.ciphertexts())?;
        params.check_party(index)?;
        Ok(Self {
            index,
            decryptors,
            parts,
        })
    }
}

#[cfg(test)]
impl EncryptedUpdate {
    pub(super) fn parts_for_tests(&self) -> Vec<(Poly, Poly)> {
        self.parts
            .iter()
            .map(|c| (c.c0.clone(), c.c1.clone()))
            .collect()
    }
}

#[cfg(test)]
impl DecryptionShare {
    pub(super) fn parts_for_tests(&self) -> &[Poly] {
        &self.parts
    }
}
