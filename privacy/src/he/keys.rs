//! The per-job key ceremony: a collective public key whose secret key no
//! party ever holds, Shamir-shared so that any `t` hospitals can decrypt.
//!
//! 1. Everyone derives the common random polynomial `a` from the job's
//!    public seed.
//! 2. Hospital `i` draws a ternary secret `s_i` and publishes
//!    `b_i = −a·s_i + e_i`; the collective key is `(Σ b_i, a)`, an RLWE
//!    public key for `s = Σ s_i`.
//! 3. Hospital `i` Shamir-shares `s_i` coefficient-wise over `Z_Q` with a
//!    random polynomial of degree `t − 1` and sends share `f_i(j)` to
//!    hospital `j`, encrypted to `j` (the coordinator only relays).
//! 4. Hospital `j` keeps `S_j = Σ_i f_i(j)`, a Shamir share of `s`. Any
//!    `t` of them determine `s`; fewer reveal nothing about it.
//!
//! Shamir over `Z_Q` with `Q` a product of primes is Shamir over each
//! `Z_{q_k}` at once; the evaluation points `1..=H` differ by less than any
//! `q_k`, so every Lagrange denominator is invertible.

use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use num_bigint::BigUint;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::params::{DEGREE, ERROR_VARIANCE, HeParams, math};
use super::{HeError, wire};

/// The common random polynomial `a`, derived from the job's public seed so
/// that anyone can check it.
pub(super) fn common_random_poly(params: &HeParams, seed: [u8; 32]) -> Poly {
    Poly::random_from_seed(&params.ctx, Representation::Ntt, seed)
}

/// Uniform ternary coefficients in `{−1, 0, 1}`, by rejection on two bits.
pub(super) fn ternary<R: RngCore + CryptoRng>(
    params: &HeParams,
    rng: &mut R,
) -> Result<Poly, HeError> {
    let mut coefficients = vec![0i64; DEGREE];
    let mut pool = 0u64;
    let mut left = 0u32;
    for c in coefficients.iter_mut() {
        loop {
            if left < 2 {
                pool = rng.next_u64();
                left = 64;
            }
            let two = pool & 3;
            pool >>= 2;
            left -= 2;
            if two != 3 {
                *c = two as i64 - 1;
                break;
            }
        }
    }
    let mut poly = Poly::try_convert_from(
        coefficients.as_slice(),
        &params.ctx,
        false,
        Representation::PowerBasis,
    )
    .map_err(math)?;
    coefficients.zeroize();
    poly.change_representation(Representation::Ntt);
    Ok(poly)
}

/// A hospital's own secret `s_i`. It never leaves the hospital; only its
/// Shamir shares do, each encrypted to its recipient.
pub struct KeyShare {
    index: u32,
    pub(super) secret: Poly,
}

impl Drop for KeyShare {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// `b_i = −a·s_i + e_i`, public.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicKeyShare {
    pub index: u32,
    pub(super) poly: Poly,
}

/// The collective public key `(b, a)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicKey {
    pub(super) b: Poly,
    pub(super) a: Poly,
}

/// `f_dealer(recipient)`: one Shamir share of the dealer's secret, for the
/// recipient's eyes only (the caller encrypts it to the recipient).
pub struct SecretShare {
    pub dealer: u32,
    pub recipient: u32,
    poly: Poly,
}

impl Drop for SecretShare {
    fn drop(&mut self) {
        self.poly.zeroize();
    }
}

/// `S_j = Σ_i f_i(j)`: hospital `j`'s share of the collective secret.
pub struct ThresholdKey {
    pub(super) index: u32,
    pub(super) share: Poly,
}

impl Drop for ThresholdKey {
    fn drop(&mut self) {
        self.share.zeroize();
    }
}

impl KeyShare {
    /// Draws hospital `index`'s secret and its public-key share for the
    /// job whose common random polynomial comes from `seed`.
    pub fn generate<R: RngCore + CryptoRng>(
        params: &HeParams,
        index: u32,
        seed: [u8; 32],
        rng: &mut R,
    ) -> Result<(Self, PublicKeyShare), HeError> {
        params.check_party(index)?;
        let secret = ternary(params, rng)?;
        let a = common_random_poly(params, seed);
        let error =
            Poly::small(&params.ctx, Representation::Ntt, ERROR_VARIANCE, rng).map_err(math)?;
        let poly = &error - &(&a * &secret);
        Ok((Self { index, secret }, PublicKeyShare { index, poly }))
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The secret in the clear: for the hospital's own storage only.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self.index, &[], std::slice::from_ref(&self.secret))
    }

    /// Shamir shares of this hospital's secret for hospitals `1..=H`
    /// (its own included), any `threshold` of which determine it.
    pub fn deal<R: RngCore + CryptoRng>(&self, params: &HeParams, rng: &mut R) -> Vec<SecretShare> {
        let coefficients: Vec<Poly> = (1..params.threshold())
            .map(|_| Poly::random(&params.ctx, Representation::Ntt, rng))
            .collect();
        (1..=params.hospitals())
            .map(|recipient| {
                let x = BigUint::from(recipient);
                // Horner: ((c_{t−1}·x + c_{t−2})·x + …)·x + s.
                let mut value = Poly::zero(&params.ctx, Representation::Ntt);
                for c in coefficients.iter().rev() {
                    value += c;
                    value = &value * &x;
                }
                value += &self.secret;
                SecretShare {
                    dealer: self.index,
                    recipient,
                    poly: value,
                }
            })
            .collect()
    }
}

/// The collective public key from every hospital's share (all `H` are
/// needed: a missing share would leave its secret out of `s`).
pub fn public_key(
    params: &HeParams,
    seed: [u8; 32],
    shares: &[PublicKeyShare],
) -> Result<PublicKey, HeError> {
    check_all_present(params, shares.iter().map(|s| s.index))?;
    let mut b = Poly::zero(&params.ctx, Representation::Ntt);
    for share in shares {
        b += &share.poly;
    }
    Ok(PublicKey {
        b,
        a: common_random_poly(params, seed),
    })
}

impl ThresholdKey {
    /// Hospital `index`'s key from the shares every hospital dealt it.
    pub fn combine(params: &HeParams, index: u32, shares: &[SecretShare]) -> Result<Self, HeError> {
        params.check_party(index)?;
        if let Some(s) = shares.iter().find(|s| s.recipient != index) {
            return Err(HeError::Misaddressed {
                dealer: s.dealer,
                recipient: s.recipient,
                index,
            });
        }
        check_all_present(params, shares.iter().map(|s| s.dealer))?;
        let mut share = Poly::zero(&params.ctx, Representation::Ntt);
        for s in shares {
            share += &s.poly;
        }
        Ok(Self { index, share })
    }
}

/// Every party `1..=H` exactly once.
fn check_all_present(params: &HeParams, indices: impl Iterator<Item = u32>) -> Result<(), HeError> {
    let mut seen = vec![false; params.hospitals() as usize];
    for index in indices {
        params.check_party(index)?;
        let slot = &mut seen[index as usize - 1];
        if *slot {
            return Err(HeError::Duplicate(index));
        }
        *slot = true;
    }
    match seen.iter().position(|s| !s) {
        Some(missing) => Err(HeError::Missing(missing as u32 + 1)),
        None => Ok(()),
    }
}

impl PublicKeyShare {
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self.index, &[], std::slice::from_ref(&self.poly))
    }

    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Self, HeError> {
        let (index, _, mut polys) = wire::decode(params, bytes, 1)?;
        params.check_party(index)?;
        Ok(Self {
            index,
            poly: polys.remove(0),
        })
    }
}

impl PublicKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(0, &[], &[self.b.clone(), self.a.clone()])
    }

    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Self, HeError> {
        let (_, _, mut polys) = wire::decode(params, bytes, 2)?;
        let a = polys.remove(1);
        let b = polys.remove(0);
        Ok(Self { b, a })
    }
}

impl SecretShare {
    /// The share in the clear: encrypt it to `recipient` before it leaves.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(
            self.dealer,
            &[self.recipient],
            std::slice::from_ref(&self.poly),
        )
    }

    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Self, HeError> {
        let (dealer, recipients, mut polys) = wire::decode(params, bytes, 1)?;
        let [recipient] = recipients[..] else {
            return Err(HeError::Malformed(
                "a secret share names one recipient".into(),
            ));
        };
        params.check_party(dealer)?;
        params.check_party(recipient)?;
        Ok(Self {
            dealer,
            recipient,
            poly: polys.remove(0),
        })
    }
}

impl ThresholdKey {
    /// For the hospital's own durable storage only.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self.index, &[], std::slice::from_ref(&self.share))
    }

    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Self, HeError> {
        let (index, _, mut polys) = wire::decode(params, bytes, 1)?;
        params.check_party(index)?;
        Ok(Self {
            index,
            share: polys.remove(0),
        })
    }
}
