//! Parameters of a job's homomorphic aggregation and the noise analysis
//! they rest on.

use std::sync::Arc;

use fhe_math::rns::ScalingFactor;
use fhe_math::rq::Context;
use fhe_math::rq::scaler::Scaler;
use fhe_math::zq::Modulus;
use fhe_math::zq::primes::generate_prime;
use num_bigint::BigUint;

use super::HeError;

/// Ring degree `N`: one ciphertext carries `N` coefficients, one value each.
pub const DEGREE: usize = 8192;

/// The largest `log2 Q` at degree 8192 for 128-bit security against the
/// classical attacks of the HomomorphicEncryption.org standard (Albrecht et
/// al., "Homomorphic Encryption Security Standard", 2018, Table 1: ternary
/// secret, error σ ≈ 3.2).
pub const MAX_LOG_MODULUS: u32 = 218;

/// Statistical security of the smudging: the whole decryption of a round
/// (every coefficient of every ciphertext) is within statistical distance
/// `2^-40` of one computed from the sum alone.
pub const STATISTICAL_SECURITY: u32 = 40;

/// Variance of the centred binomial error (σ ≈ 3.16, the standard's σ).
pub(super) const ERROR_VARIANCE: usize = 10;

/// The centred binomial with variance `v` is a difference of two sums of
/// `2v` bits, so no error coefficient exceeds `2v` in magnitude.
pub const ERROR_BOUND: u128 = 2 * ERROR_VARIANCE as u128;

/// Bits of each ciphertext prime (fhe-math takes moduli below 2^62).
const PRIME_BITS: usize = 62;

/// Upper bounds, in absolute value, on the error of one coefficient. All
/// are worst cases (every distribution involved is bounded), not tail
/// bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseBounds {
    /// A fresh encryption under the collective key of `H` hospitals:
    /// `e_pk·u + e1 + e2·s` with `‖e_pk‖ ≤ H·B`, `‖s‖ ≤ H`, `u` ternary,
    /// each product of degree-`N` polynomials at most `N` times the
    /// product of the norms: `2·N·H·B + B`.
    pub fresh: u128,
    /// The sum of `H` encryptions plus the `< H` lost by encoding each
    /// value as `⌊Q·m/T⌋`.
    pub sum: u128,
    /// Half-width of the uniform smudging noise every decryption share
    /// carries: `sum · 2^(λ + ⌈log2 n⌉)` for `n` coefficients a round, so
    /// that by a union bound the whole round is `2^-λ`-close.
    pub smudging: u128,
    /// What decryption tolerates: `⌊Q / 2T⌋ − 1`. Must exceed
    /// `sum + H·smudging`.
    pub tolerance: BigUint,
}

/// The parameters of one job: who holds keys, how many must cooperate to
/// decrypt, what a plaintext coefficient holds, and the ring.
#[derive(Debug, Clone)]
pub struct HeParams {
    hospitals: u32,
    threshold: u32,
    plaintext_bits: u32,
    values: usize,
    bounds: NoiseBounds,
    pub(super) ctx: Arc<Context>,
    pub(super) moduli: Vec<Modulus>,
    /// Rounds `T·x/Q` into the plaintext context (one prime above `T`).
    pub(super) scaler: Arc<Scaler>,
    /// `Q mod T`, for the encoding `⌊Q·m/T⌋`.
    pub(super) q_mod_t: u128,
    /// `T^-1 mod q_i`.
    pub(super) t_inverse: Vec<u64>,
}

impl HeParams {
    /// Parameters for `hospitals` key holders of whom any `threshold` can
    /// decrypt, plaintexts in `Z_{2^plaintext_bits}` (the quantizer's
    /// modulus) and updates of `values` coefficients. Picks the fewest
    /// 62-bit primes whose product leaves room for the smudging, and
    /// refuses a configuration that would need more than 128-bit security
    /// allows at degree 8192.
    pub fn new(
        hospitals: u32,
        threshold: u32,
        plaintext_bits: u32,
        values: usize,
    ) -> Result<Self, HeError> {
        if threshold < 2 || threshold > hospitals {
            return Err(HeError::Threshold {
                threshold,
                hospitals,
            });
        }
        if !(8..=60).contains(&plaintext_bits) {
            return Err(HeError::PlaintextBits(plaintext_bits));
        }
        if values == 0 {
            return Err(HeError::Empty);
        }
        let h = u128::from(hospitals);
        let n = DEGREE as u128;
        let fresh = 2 * n * h * ERROR_BOUND + ERROR_BOUND;
        let sum = h * fresh + h;
        let coefficients = values.div_ceil(DEGREE) * DEGREE;
        let coefficient_bits = usize::BITS - (coefficients - 1).leading_zeros();
        let shift = STATISTICAL_SECURITY + coefficient_bits;
        let smudging = sum
            .checked_shl(shift)
            .filter(|s| s >> shift == sum)
            .ok_or(HeError::TooManyHospitals(hospitals))?;
        let needed = BigUint::from(sum) + BigUint::from(h) * BigUint::from(smudging) + 1u32;
        let plaintext = BigUint::from(1u32) << plaintext_bits;

        let mut primes = Vec::new();
        let mut upper = 1u64 << PRIME_BITS;
        loop {
            let prime = generate_prime(PRIME_BITS, 2 * DEGREE as u64, upper)
                .ok_or_else(|| HeError::Math("no NTT-friendly prime left".into()))?;
            primes.push(prime);
            upper = prime;
            let modulus: BigUint = primes.iter().map(|&p| BigUint::from(p)).product();
            if modulus.bits() > u64::from(MAX_LOG_MODULUS) {
                return Err(HeError::Insecure {
                    log_modulus: modulus.bits() as u32,
                    hospitals,
                    plaintext_bits,
                });
            }
            let tolerance = &modulus / (&plaintext * 2u32) - 1u32;
            if tolerance < needed {
                continue;
            }
            let ctx = Context::new_arc(&primes, DEGREE).map_err(math)?;
            let plain_ctx = Context::new_arc(&primes[..1], DEGREE).map_err(math)?;
            let scaler = Scaler::new(
                &ctx,
                &plain_ctx,
                ScalingFactor::new(&plaintext, ctx.modulus()),
            )
            .map_err(math)?;
            let moduli = primes
                .iter()
                .map(|&p| Modulus::new(p).map_err(math))
                .collect::<Result<Vec<_>, _>>()?;
            let t_mod = |m: &Modulus| m.pow(2, u64::from(plaintext_bits));
            let t_inverse = moduli
                .iter()
                .map(|m| {
                    m.inv(t_mod(m))
                        .ok_or_else(|| HeError::Math("T not invertible".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let q_mod_t = (&modulus % &plaintext)
                .iter_u64_digits()
                .next()
                .map_or(0, u128::from);
            return Ok(Self {
                hospitals,
                threshold,
                plaintext_bits,
                values,
                bounds: NoiseBounds {
                    fresh,
                    sum,
                    smudging,
                    tolerance,
                },
                ctx,
                moduli,
                scaler: Arc::new(scaler),
                q_mod_t,
                t_inverse,
            });
        }
    }

    pub fn hospitals(&self) -> u32 {
        self.hospitals
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    pub fn plaintext_bits(&self) -> u32 {
        self.plaintext_bits
    }

    /// Coefficients per update.
    pub fn values(&self) -> usize {
        self.values
    }

    /// Ciphertexts per update.
    pub fn ciphertexts(&self) -> usize {
        self.values.div_ceil(DEGREE)
    }

    pub fn bounds(&self) -> &NoiseBounds {
        &self.bounds
    }

    /// `log2 Q`, rounded up.
    pub fn log_modulus(&self) -> u64 {
        self.ctx.modulus().bits()
    }

    pub fn primes(&self) -> Vec<u64> {
        self.moduli.iter().map(|m| **m).collect()
    }

    pub(super) fn check_party(&self, index: u32) -> Result<(), HeError> {
        if (1..=self.hospitals).contains(&index) {
            Ok(())
        } else {
            Err(HeError::UnknownParty {
                index,
                hospitals: self.hospitals,
            })
        }
    }
}

pub(super) fn math(e: fhe_math::Error) -> HeError {
    HeError::Math(e.to_string())
}
