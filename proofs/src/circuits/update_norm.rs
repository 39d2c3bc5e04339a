//! Statement 1, well-formed update: every entry of `u` is a 16-bit signed
//! integer, `‖u‖₂ ≤ B`, and `hash = Poseidon(d, pack(u))`.
//!
//! Public inputs, in order: job tag, round, client tag, `B`, hash. The
//! context tags are not otherwise used by the constraints: Groth16 (with
//! arkworks' QAP reduction, which adds an `x_i · 1 = x_i` row per input)
//! binds every public input into the proof, which is all they need.

use ark_bn254::Fr;
use ark_r1cs_std::fields::fp::FpVar;
use ark_r1cs_std::prelude::*;
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};

use crate::gadgets::SignedVectorVar;

/// The circuit for vectors of `len` entries. `entries` is `None` for
/// the key setup.
pub struct UpdateNormCircuit<'a> {
    pub len: usize,
    pub public: [Fr; 5],
    pub entries: Option<&'a [i32]>,
}

impl ConstraintSynthesizer<Fr> for UpdateNormCircuit<'_> {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let [job, round, client, bound, hash] = self.public;
        for value in [job, round, client] {
            let _context: FpVar<Fr> = FpVar::new_input(cs.clone(), || Ok(value))?;
        }
        let bound = FpVar::new_input(cs.clone(), || Ok(bound))?;
        let hash = FpVar::new_input(cs.clone(), || Ok(hash))?;
        if let Some(e) = self.entries
            && e.len() != self.len
        {
            return Err(SynthesisError::Unsatisfiable);
        }
        let vector = SignedVectorVar::new_witness(cs.clone(), self.len, self.entries)?;
        vector.enforce_norm_at_most(&bound)?;
        vector.hash(cs)?.enforce_equal(&hash)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_relations::gr1cs::ConstraintSystem;

    fn satisfied(entries: &[i32], bound: u64, hash: Fr) -> bool {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let circuit = UpdateNormCircuit {
            len: entries.len(),
            public: [
                Fr::from(1u64),
                Fr::from(2u64),
                Fr::from(3u64),
                Fr::from(bound),
                hash,
            ],
            entries: Some(entries),
        };
        circuit.generate_constraints(cs.clone()).unwrap();
        cs.is_satisfied().unwrap()
    }

    #[test]
    fn the_constraints_accept_exactly_bounded_vectors_with_their_hash() {
        let u = [3, -4, 0, 12, -32768, 32767];
        let norm = (9 + 16 + 144 + 32768u64 * 32768 + 32767 * 32767) as f64;
        let b = norm.sqrt().ceil() as u64;
        let h = crate::hash::update_hash(&u);
        assert!(b < 1 << 16);
        assert!(satisfied(&u, b, h));
        assert!(
            !satisfied(&u, b - 1, h),
            "a norm above the bound must not satisfy"
        );
        assert!(
            !satisfied(&u, b, h + Fr::from(1u64)),
            "another hash must not satisfy"
        );
        let small = [3, -4];
        assert!(satisfied(&small, 5, crate::hash::update_hash(&small)));
        assert!(!satisfied(&small, 4, crate::hash::update_hash(&small)));
    }
}
