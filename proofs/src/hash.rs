//! The circuit-friendly commitment to an update: Poseidon (BN254, width 9,
//! rate 8, x^5, 8 full and 63 partial rounds, the parameters of the
//! Poseidon paper for 128-bit security at that width, round constants and
//! MDS from its Grain LFSR as arkworks generates them) over the entries
//! packed 15 to a field element. The coordinator recomputes it from the
//! update it received; the circuit recomputes it from its witness.
//!
//! Why width 9 (statement `update-norm/v2`; v1 had width 5, rate 4, 60
//! partial rounds): 3.4 constraints per entry instead of 5, so that 10^5
//! entries fit a 2^21 evaluation domain instead of 2^22. Its rows are
//! denser, which costs the setup and a job's first proof (the matrices'
//! inlining); later proofs reuse the matrices and gain (docs/BENCHMARKS.md).

use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_crypto_primitives::sponge::poseidon::{
    PoseidonConfig, PoseidonSponge, find_poseidon_ark_and_mds,
};
use ark_crypto_primitives::sponge::{CryptographicSponge, FieldBasedCryptographicSponge};
use ark_ff::{BigInteger, PrimeField};
use sha2::{Digest, Sha256};

use crate::encoding::ENTRY_BITS;

/// Entries per field element: 15 × 16 = 240 bits < 254.
pub const ENTRIES_PER_ELEMENT: usize = 15;
const RATE: usize = 8;
const FULL_ROUNDS: u64 = 8;
const PARTIAL_ROUNDS: u64 = 63;
const ALPHA: u64 = 5;

/// The sponge's parameters (computed once).
pub fn poseidon_config() -> &'static PoseidonConfig<Fr> {
    static CONFIG: OnceLock<PoseidonConfig<Fr>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let (ark, mds) = find_poseidon_ark_and_mds::<Fr>(
            u64::from(Fr::MODULUS_BIT_SIZE),
            RATE,
            FULL_ROUNDS,
            PARTIAL_ROUNDS,
            0,
        );
        PoseidonConfig::new(
            FULL_ROUNDS as usize,
            PARTIAL_ROUNDS as usize,
            ALPHA,
            mds,
            ark,
            RATE,
            1,
        )
    })
}

/// An entry as the unsigned 16-bit value the circuit decomposes:
/// `u + 2^15`.
pub fn offset_entry(u: i32) -> u64 {
    (i64::from(u) + (1i64 << (ENTRY_BITS - 1))) as u64
}

/// Entries packed little-endian, 15 per field element.
pub fn pack(entries: &[i32]) -> Vec<Fr> {
    entries
        .chunks(ENTRIES_PER_ELEMENT)
        .map(|chunk| {
            let mut acc = Fr::from(0u64);
            let mut shift = Fr::from(1u64);
            let step = Fr::from(1u64 << ENTRY_BITS);
            for &u in chunk {
                acc += shift * Fr::from(offset_entry(u));
                shift *= step;
            }
            acc
        })
        .collect()
}

/// `Poseidon(d, packed entries…)`: the update's public commitment.
pub fn update_hash(entries: &[i32]) -> Fr {
    let mut sponge = PoseidonSponge::new(poseidon_config());
    sponge.absorb(&Fr::from(entries.len() as u64));
    sponge.absorb(&pack(entries));
    sponge.squeeze_native_field_elements(1)[0]
}

/// A string as a field element: SHA-256 under a domain tag, 31 bytes, so
/// names of any length fit a public input.
pub fn tag(domain: &str, value: &str) -> Fr {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    let digest = h.finalize();
    Fr::from_le_bytes_mod_order(&digest[..31])
}

/// Hex of a field element's 32 little-endian bytes.
pub fn to_hex(x: &Fr) -> String {
    hex::encode(x.into_bigint().to_bytes_le())
}

/// Decimal of a field element (snarkjs's notation).
pub fn to_decimal(x: &Fr) -> String {
    x.into_bigint().to_string()
}

/// Inverse of [`to_hex`]; `None` unless it is 32 bytes of a canonical
/// field element.
pub fn from_hex(text: &str) -> Option<Fr> {
    let bytes = hex::decode(text).ok()?;
    if bytes.len() != 32 {
        return None;
    }
    let x = Fr::from_le_bytes_mod_order(&bytes);
    (to_hex(&x) == text.to_ascii_lowercase()).then_some(x)
}
