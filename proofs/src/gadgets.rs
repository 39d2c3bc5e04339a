//! Reusable constraint gadgets for statements about integer vectors.

use ark_bn254::Fr;
use ark_crypto_primitives::sponge::constraints::CryptographicSpongeVar;
use ark_crypto_primitives::sponge::poseidon::constraints::PoseidonSpongeVar;
use ark_r1cs_std::fields::fp::FpVar;
use ark_r1cs_std::prelude::*;
use ark_relations::gr1cs::{ConstraintSystemRef, SynthesisError};

use crate::encoding::ENTRY_BITS;
use crate::hash::{ENTRIES_PER_ELEMENT, offset_entry, poseidon_config};

/// A vector of signed 16-bit integers held as witness bits: the bit
/// decomposition is the range check, and both the signed values and the
/// packed field elements are linear combinations of the bits (free).
pub struct SignedVectorVar {
    /// The entries' values `u_i` (as field elements, `p − |u_i|` if negative).
    pub entries: Vec<FpVar<Fr>>,
    /// The offset entries `u_i + 2^15`, packed 15 per element as in
    /// [`crate::hash::pack`].
    pub packed: Vec<FpVar<Fr>>,
}

impl SignedVectorVar {
    /// Allocates `len` entries as witnesses (`values` is `None` during
    /// setup, when only the shape matters).
    pub fn new_witness(
        cs: ConstraintSystemRef<Fr>,
        len: usize,
        values: Option<&[i32]>,
    ) -> Result<Self, SynthesisError> {
        let offset = FpVar::constant(Fr::from(1u64 << (ENTRY_BITS - 1)));
        let mut entries = Vec::with_capacity(len);
        let mut packed = Vec::with_capacity(len.div_ceil(ENTRIES_PER_ELEMENT));
        let mut packed_bits: Vec<Boolean<Fr>> = Vec::new();
        for i in 0..len {
            let raw = values.map(|v| offset_entry(v[i]));
            let bits = (0..ENTRY_BITS)
                .map(|j| {
                    Boolean::new_witness(cs.clone(), || {
                        raw.map(|r| (r >> j) & 1 == 1)
                            .ok_or(SynthesisError::AssignmentMissing)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            entries.push(Boolean::le_bits_to_fp(&bits)? - &offset);
            packed_bits.extend(bits);
            if packed_bits.len() == ENTRIES_PER_ELEMENT * ENTRY_BITS as usize || i + 1 == len {
                packed.push(Self::packed_element(cs.clone(), &packed_bits)?);
                packed_bits.clear();
            }
        }
        Ok(Self { entries, packed })
    }

    /// The field element whose little-endian bits are `bits`, as a witness
    /// with one constraint tying it to them. Absorbed as the 240-term
    /// combination of its bits, every Poseidon row that mixes it would
    /// repeat those terms; as one variable, only this row holds them.
    fn packed_element(
        cs: ConstraintSystemRef<Fr>,
        bits: &[Boolean<Fr>],
    ) -> Result<FpVar<Fr>, SynthesisError> {
        let combination = Boolean::le_bits_to_fp(bits)?;
        let element = FpVar::new_witness(cs, || combination.value())?;
        element.enforce_equal(&combination)?;
        Ok(element)
    }

    /// Enforces `Σ u_i² ≤ bound²` for a `bound` below 2^16. The entries are
    /// below 2^15 in absolute value and there are far fewer than 2^200 of
    /// them, so the sum cannot wrap the field, and `bound² − Σ u_i²` fits
    /// 33 bits exactly when it is not negative.
    pub fn enforce_norm_at_most(&self, bound: &FpVar<Fr>) -> Result<(), SynthesisError> {
        let _bits = bound.to_bits_le_with_top_bits_zero(ENTRY_BITS as usize)?;
        // One linear combination over all the squares: a running `sum +=`
        // makes a chain of n nested combinations, which the constraint
        // system inlines into n²/2 stored terms (out of memory at 10^5).
        let squares = self
            .entries
            .iter()
            .map(FpVar::square)
            .collect::<Result<Vec<_>, _>>()?;
        let sum: FpVar<Fr> = squares.iter().sum();
        let slack = bound.square()? - sum;
        let _bits = slack.to_bits_le_with_top_bits_zero(2 * ENTRY_BITS as usize + 1)?;
        Ok(())
    }

    /// `Poseidon(len, packed…)`, as [`crate::hash::update_hash`].
    pub fn hash(&self, cs: ConstraintSystemRef<Fr>) -> Result<FpVar<Fr>, SynthesisError> {
        let mut sponge = PoseidonSpongeVar::new(cs, poseidon_config());
        sponge.absorb(&FpVar::constant(Fr::from(self.entries.len() as u64)))?;
        sponge.absorb(&self.packed)?;
        Ok(sponge.squeeze_field_elements(1)?.remove(0))
    }
}
