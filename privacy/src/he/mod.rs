//! Threshold homomorphic aggregation: updates summed while encrypted, and
//! no single party, coordinator or hospital, able to decrypt anything.
//!
//! **Scheme.** Additive BFV-style RLWE encryption over
//! `R_Q = Z_Q[X]/(X^N + 1)`, `N` = [`DEGREE`] = 8192, `Q` a product of
//! 62-bit NTT primes (ring arithmetic from `fhe-math`, the math layer of
//! fhe.rs). A plaintext is one coefficient per value in `Z_T`,
//! `T = 2^bits` the modulus of the quantizer that secure aggregation
//! uses ([`crate::quantize`]), so an update encodes the same way in both
//! modes and its sum decodes the same way. Only additions are ever
//! evaluated, so there are no relinearisation or Galois keys.
//!
//! **Keys** ([`keys`]). A ceremony among the hospitals (once per round
//! attempt in Cohort's rounds, see [`HospitalRound`]): the common random
//! polynomial comes from a public seed; every hospital contributes a
//! public-key share and Shamir-shares its secret among all hospitals. Any `t` hospitals can
//! decrypt a sum; `t − 1` learn nothing about the secret key. `t ≥ 2` is
//! enforced: with `t = 1` one hospital could decrypt alone.
//!
//! **Decryption.** The coordinator sends the summed ciphertext to a set of
//! at least `t` hospitals; each returns `λ_j·S_j·c1 + E_j`, `λ_j` its
//! Lagrange coefficient. `E_j` is the smudging noise: uniform on
//! `[−B_sm, B_sm]` with `B_sm = 2^(λ + ⌈log2 n⌉) · B_sum`, where `B_sum`
//! bounds the error of the summed ciphertext in every coefficient (a
//! worst-case bound, [`NoiseBounds`]), `n` counts the coefficients of the
//! round and `λ` = [`STATISTICAL_SECURITY`] = 40. For each coefficient the
//! share is then within statistical distance `B_sum / (2·B_sm + 1)` of one
//! computed without the secret-dependent error, and by a union bound the
//! whole round within `2^-λ`: shares reveal the sum and nothing else.
//! [`HeParams::new`] picks `Q` so that `B_sum + H·B_sm < Q/(2T)`, i.e. the
//! sum still decrypts exactly with every share's smudging on it, and
//! refuses parameters whose `log2 Q` exceeds the HomomorphicEncryption.org
//! bound for 128-bit security at this degree ([`MAX_LOG_MODULUS`]).
//!
//! **Dropouts.** A hospital that vanishes after sending its ciphertext does
//! not stop the round: any `t` of the others decrypt.
//!
//! **Why not TFHE.** TFHE-style schemes encrypt a few bits per ciphertext
//! and bootstrap every operation; an addition of encrypted integers costs
//! milliseconds, so summing 10^6 parameters from 10 hospitals would take
//! hours. A packed RLWE ciphertext carries 8192 values and adds them in
//! one pass of machine-word additions.

mod cipher;
mod keys;
mod params;
mod round;
mod wire;

#[cfg(test)]
mod tests;

pub use cipher::{DecryptionShare, EncryptedUpdate, decrypt, encrypt};
pub use keys::{KeyShare, PublicKey, PublicKeyShare, SecretShare, ThresholdKey, public_key};
pub use params::{
    DEGREE, ERROR_BOUND, HeParams, MAX_LOG_MODULUS, NoiseBounds, STATISTICAL_SECURITY,
};
pub use round::{Advert, HeConfig, HospitalRound, crp_seed, sealed_share_len};
pub use wire::{frame_list, unframe_list};

/// Signed integers as plaintexts mod `2^bits` (two's complement), for
/// updates encrypted as integers rather than through a quantizer (update
/// proofs under homomorphic aggregation encrypt the proved grid entries).
pub fn signed_to_plaintext(values: &[i32], bits: u32) -> Vec<u64> {
    let modulus = 1i64 << bits;
    values
        .iter()
        .map(|&v| i64::from(v).rem_euclid(modulus) as u64)
        .collect()
}

/// The signed integers of plaintexts mod `2^bits`, centred on 0: a sum of
/// [`signed_to_plaintext`] values whose true magnitude stays below
/// `2^(bits−1)`.
pub fn plaintext_to_signed(values: &[u64], bits: u32) -> Vec<i64> {
    let modulus = 1i64 << bits;
    let half = modulus >> 1;
    values
        .iter()
        .map(|&v| {
            let v = (v & (modulus as u64 - 1)) as i64;
            if v >= half { v - modulus } else { v }
        })
        .collect()
}

/// What can go wrong setting up, encrypting or decrypting.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    #[error(
        "decryption threshold {threshold} must be at least 2 (so that no hospital decrypts \
         alone) and at most the {hospitals} hospitals"
    )]
    Threshold { threshold: u32, hospitals: u32 },
    #[error("plaintext bits must be in 8..=60, got {0}")]
    PlaintextBits(u32),
    #[error("an update must have at least one value")]
    Empty,
    #[error("{0} hospitals are too many for the smudging bound to fit")]
    TooManyHospitals(u32),
    #[error(
        "{hospitals} hospitals with {plaintext_bits}-bit plaintexts need a modulus of more than \
         {log_modulus} bits, beyond 128-bit security at degree 8192 (at most 218 bits); use \
         fewer bits"
    )]
    Insecure {
        log_modulus: u32,
        hospitals: u32,
        plaintext_bits: u32,
    },
    #[error("party {index} is not one of hospitals 1..={hospitals}")]
    UnknownParty { index: u32, hospitals: u32 },
    #[error("party {0} appears twice")]
    Duplicate(u32),
    #[error("nothing from party {0}, and every hospital's part is needed")]
    Missing(u32),
    #[error("a share from {dealer} for {recipient} was given to {index}")]
    Misaddressed {
        dealer: u32,
        recipient: u32,
        index: u32,
    },
    #[error("{got} values where the job's updates have {want}")]
    Length { got: usize, want: usize },
    #[error("value at index {index} does not fit in {bits} bits")]
    PlaintextRange { index: usize, bits: u32 },
    #[error("decryption needs shares from at least {need} hospitals, got {have}")]
    NotEnoughShares { have: usize, need: u32 },
    #[error("hospital {0} is not in the decryptor set it was asked to decrypt for")]
    NotADecryptor(u32),
    #[error("decryption shares computed for different decryptor sets cannot be combined")]
    MixedDecryptors,
    #[error("this hospital already gave its decryption share for this round attempt")]
    AlreadyShared,
    #[error("malformed HE message: {0}")]
    Malformed(String),
    #[error("ring arithmetic failed: {0}")]
    Math(String),
}
