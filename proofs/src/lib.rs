//! Zero-knowledge proofs about client updates, checked by the coordinator
//! and by independent validators.
//!
//! Statement 1, *well-formed update* ([`circuits::update_norm`]): for the
//! exact integer vector `u` a hospital feeds into aggregation, every entry
//! is a 16-bit signed integer and `‖u‖₂ ≤ B`. The proof's public inputs
//! bind the job, the round, the hospital's name, the bound `B` and a
//! Poseidon hash of `u` that the coordinator recomputes from the update it
//! received ([`hash::update_hash`]), so a proof cannot be replayed in
//! another round, by another hospital, under a looser bound or for another
//! vector. Groth16 proofs are malleable (anyone can re-randomize one into
//! different bytes for the same statement), so nothing here uses a
//! proof's bytes as its identity: a proof is identified by its statement.
//!
//! Proof system: Groth16 on BN254 (arkworks), so that standard verifiers
//! (snarkjs, the EVM's pairing precompiles) check the same proofs
//! ([`snarkjs`] writes them in snarkjs's layout).
//!
//! Under secure aggregation the same statement is proved about the masked
//! input itself, one Pedersen commitment per entry blinded with the
//! hospital's SecAgg+ masks, with Bulletproofs ([`committed`]): the
//! coordinator checks each proof against the commitments that arrived and
//! sums them without seeing any update.

pub mod bench;
pub mod ceremony;
pub mod circuits;
pub mod committed;
pub mod encoding;
pub mod gadgets;
pub mod hash;
pub mod keys;
pub mod snarkjs;
mod statement;

pub use encoding::{ENTRY_BITS, FixedPoint};
pub use keys::{ProvingKey, VerifyingKey};
pub use statement::{
    Context, PROOF_BYTES, STATEMENT_UPDATE_NORM, STATEMENT_UPDATE_NORM_V1, UpdateProof,
    UpdateProofTask, is_update_norm, parse_proof, prove_update, verify_recorded, verify_update,
};

/// Everything proving and verifying can reject. Messages name the problem.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the update is not well formed: {0}; the prover refuses to prove a false statement")]
    Refused(String),
    #[error("the update has {got} entries, the circuit's keys are for {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("malformed proof bytes: {0}")]
    MalformedProof(String),
    #[error("malformed key bytes: {0}")]
    MalformedKey(String),
    #[error("the proof does not verify for this job, round, hospital, bound and update")]
    Invalid,
    #[error(
        "a proof made with this proving key does not verify under the key's own verifying key: \
         the key is corrupt, or was set up for another version of the circuit (by another \
         Cohort release?)"
    )]
    KeyMismatch,
    #[error("proof system failure: {0}")]
    Synthesis(String),
    #[error("invalid fixed-point encoding: {0}")]
    Encoding(String),
}

impl From<ark_relations::gr1cs::SynthesisError> for ProofError {
    fn from(e: ark_relations::gr1cs::SynthesisError) -> Self {
        ProofError::Synthesis(e.to_string())
    }
}

/// A CSPRNG for arkworks (which uses rand 0.8), seeded from the operating
/// system through rand 0.9's thread RNG.
pub(crate) fn ark_rng() -> ark_std::rand::rngs::StdRng {
    use ark_std::rand::SeedableRng;
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    ark_std::rand::rngs::StdRng::from_seed(seed)
}
