//! Proving and checking statement 1 for one hospital's update in one round.

use std::sync::{Arc, Mutex};

use ark_bn254::{Bn254, Fr};
use ark_groth16::Groth16;
use ark_relations::gr1cs::Matrix;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use serde::{Deserialize, Serialize};

use crate::circuits::update_norm::UpdateNormCircuit;
use crate::encoding::{FixedPoint, check_well_formed};
use crate::keys::{ProvingKey, VerifyingKey};
use crate::{ProofError, hash};

/// The statement's name in tasks, receipts and attestations.
pub const STATEMENT_UPDATE_NORM: &str = "update-norm/v2";

/// The same statement with the width-5 Poseidon of earlier releases. Its
/// records verify as v2's do: the hash is a recorded public input.
pub const STATEMENT_UPDATE_NORM_V1: &str = "update-norm/v1";

/// Whether a recorded statement is the Groth16 update-norm one (any
/// version).
pub fn is_update_norm(statement: &str) -> bool {
    statement == STATEMENT_UPDATE_NORM || statement == STATEMENT_UPDATE_NORM_V1
}

/// Compressed Groth16 proof on BN254: A (G1), B (G2), C (G1).
pub const PROOF_BYTES: usize = 128;

/// Who proves what, where: the public context of a proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub job_id: String,
    pub round: u32,
    pub client: String,
}

impl Context {
    /// The public inputs: job tag, round, client tag, bound, update hash.
    pub fn public_inputs(&self, bound: u64, update_hash: Fr) -> [Fr; 5] {
        [
            hash::tag("cohort/proofs/job", &self.job_id),
            Fr::from(u64::from(self.round)),
            hash::tag("cohort/proofs/client", &self.client),
            Fr::from(bound),
            update_hash,
        ]
    }
}

/// What a FIT task asks of a hospital when the job requires update proofs
/// (`TaskHeader.proofs_json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProofTask {
    pub statement: String,
    pub grid: FixedPoint,
    pub parameter_count: u64,
    /// Hex SHA-256 of the proving key's bytes (fetched with
    /// `HospitalService.GetProvingKey`).
    pub proving_key_sha256: String,
    /// Hex SHA-256 of the verifying key's bytes (on the ledger).
    pub verifying_key_sha256: String,
}

/// A proof and the statement it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateProof {
    pub bound: u64,
    pub update_hash: Fr,
    pub proof: Vec<u8>,
}

/// Proves that `entries` is a well-formed update under `grid`'s bound.
/// Refuses (without proving) a vector outside the bound or the entry
/// range: Groth16 would otherwise emit a proof that merely fails to verify.
pub fn prove_update(
    pk: &ProvingKey,
    context: &Context,
    grid: &FixedPoint,
    entries: &[i32],
) -> Result<UpdateProof, ProofError> {
    if entries.len() != pk.len {
        return Err(ProofError::WrongLength {
            expected: pk.len,
            got: entries.len(),
        });
    }
    check_well_formed(entries, grid.bound)?;
    let update_hash = hash::update_hash(entries);
    let circuit = UpdateNormCircuit {
        len: pk.len,
        public: context.public_inputs(grid.bound, update_hash),
        entries: Some(entries),
    };
    let proof = groth16_proof(circuit, pk)?;
    let mut bytes = Vec::with_capacity(PROOF_BYTES);
    proof
        .serialize_compressed(&mut bytes)
        .expect("serializing into a Vec cannot fail");
    // A key for another shape of the circuit (an older release's, or a
    // corrupt download) still yields proof bytes, which the coordinator
    // would reject as invalid with no hint why. Three pairings say so here.
    match verify_update(
        &pk.verifying_key(),
        context,
        grid.bound,
        update_hash,
        &bytes,
    ) {
        Ok(()) => {}
        Err(ProofError::Invalid) => return Err(ProofError::KeyMismatch),
        Err(e) => return Err(e),
    }
    Ok(UpdateProof {
        bound: grid.bound,
        update_hash,
        proof: bytes,
    })
}

/// The constraint matrices of the update-norm circuit over some number of
/// entries, with the counts the prover needs beside them.
struct CircuitShape {
    len: usize,
    matrices: Vec<Matrix<Fr>>,
    num_inputs: usize,
    num_witnesses: usize,
    num_constraints: usize,
}

/// The last circuit shape a proof built: one slot, so that a hospital
/// proving round after round for one job keeps one copy (about 40 bytes per
/// matrix entry; 10^5 entries: 2.0 M constraints) and a new size replaces it.
static LAST_SHAPE: Mutex<Option<Arc<CircuitShape>>> = Mutex::new(None);

/// A Groth16 proof of `circuit` under `pk`, as arkworks'
/// `create_random_proof_with_reduction` makes it, except that the
/// constraint matrices are built (and their linear combinations inlined)
/// only for the first proof of a size: later proofs synthesize the
/// witness alone and reuse them. The matrices depend on the circuit's
/// size only, never on the witness (every entry allocates the same
/// variables and constraints), and [`prove_update`] verifies the result.
fn groth16_proof(
    circuit: UpdateNormCircuit<'_>,
    pk: &ProvingKey,
) -> Result<ark_groth16::Proof<Bn254>, ProofError> {
    use ark_relations::gr1cs::{
        ConstraintSynthesizer, ConstraintSystem, OptimizationGoal, R1CS_PREDICATE_LABEL,
        SynthesisMode,
    };
    use ark_std::UniformRand;
    let cached = LAST_SHAPE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .filter(|shape| shape.len == pk.len);
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Prove {
        construct_matrices: cached.is_none(),
        generate_lc_assignments: false,
    });
    circuit.generate_constraints(cs.clone())?;
    cs.finalize();
    let shape = match cached {
        Some(shape) => shape,
        None => {
            let mut matrices = cs
                .to_matrices()?
                .remove(R1CS_PREDICATE_LABEL)
                .ok_or(ark_relations::gr1cs::SynthesisError::PredicateNotFound)?;
            matrices.truncate(3);
            let shape = Arc::new(CircuitShape {
                len: pk.len,
                matrices,
                num_inputs: cs.num_instance_variables(),
                num_witnesses: cs.num_witness_variables(),
                num_constraints: cs.num_constraints(),
            });
            *LAST_SHAPE.lock().unwrap_or_else(|e| e.into_inner()) = Some(shape.clone());
            shape
        }
    };
    let mut assignment = cs.instance_assignment()?;
    assignment.extend(cs.witness_assignment()?);
    if cs.num_instance_variables() != shape.num_inputs
        || assignment.len() != shape.num_inputs + shape.num_witnesses
    {
        return Err(ProofError::Synthesis(format!(
            "the witness has {} variables, the circuit's kept matrices {}",
            assignment.len(),
            shape.num_inputs + shape.num_witnesses
        )));
    }
    drop(cs);
    let mut rng = crate::ark_rng();
    Ok(Groth16::<Bn254>::create_proof_with_reduction_and_matrices(
        &pk.inner,
        Fr::rand(&mut rng),
        Fr::rand(&mut rng),
        &shape.matrices,
        shape.num_inputs,
        shape.num_constraints,
        &assignment,
    )?)
}

/// Parses untrusted proof bytes (points checked on the curve and in the
/// subgroup).
pub fn parse_proof(bytes: &[u8]) -> Result<ark_groth16::Proof<Bn254>, ProofError> {
    if bytes.len() != PROOF_BYTES {
        return Err(ProofError::MalformedProof(format!(
            "{} bytes, a proof has {PROOF_BYTES}",
            bytes.len()
        )));
    }
    ark_groth16::Proof::<Bn254>::deserialize_compressed(bytes)
        .map_err(|e| ProofError::MalformedProof(e.to_string()))
}

/// Checks a proof for `entries`-hash `update_hash` in `context` under
/// `bound`.
pub fn verify_update(
    vk: &VerifyingKey,
    context: &Context,
    bound: u64,
    update_hash: Fr,
    proof: &[u8],
) -> Result<(), ProofError> {
    let proof = parse_proof(proof)?;
    let pvk = ark_groth16::prepare_verifying_key(&vk.inner);
    let inputs = context.public_inputs(bound, update_hash);
    match Groth16::<Bn254>::verify_proof(&pvk, &proof, &inputs) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ProofError::Invalid),
        Err(e) => Err(ProofError::Synthesis(e.to_string())),
    }
}

/// [`verify_update`] for a proof as the ledger records it (hex fields).
pub fn verify_recorded(
    vk: &VerifyingKey,
    context: &Context,
    bound: u64,
    update_hash_hex: &str,
    proof_hex: &str,
) -> Result<(), ProofError> {
    let update_hash = hash::from_hex(update_hash_hex)
        .ok_or_else(|| ProofError::MalformedProof("update hash is not a field element".into()))?;
    let proof =
        hex::decode(proof_hex).map_err(|e| ProofError::MalformedProof(format!("hex: {e}")))?;
    verify_update(vk, context, bound, update_hash, &proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::setup_update_norm;

    #[test]
    fn a_proving_key_mixed_from_two_setups_is_refused_by_name() {
        let (mut mixed, _) = setup_update_norm(8).unwrap();
        let (other, other_vk) = setup_update_norm(8).unwrap();
        mixed.inner.l_query = other.inner.l_query.clone();
        let grid = FixedPoint::for_clip(1.0).unwrap();
        let context = Context {
            job_id: "job".into(),
            round: 1,
            client: "hospital".into(),
        };
        let entries = [1, -2, 3, 0, 0, 4, -5, 6];
        assert!(matches!(
            prove_update(&mixed, &context, &grid, &entries),
            Err(ProofError::KeyMismatch)
        ));
        let proof = prove_update(&other, &context, &grid, &entries).unwrap();
        verify_update(
            &other_vk,
            &context,
            grid.bound,
            proof.update_hash,
            &proof.proof,
        )
        .unwrap();
    }

    /// Proofs made with kept matrices verify like the first one, for
    /// another update and after another size took the slot; a false
    /// statement is still refused and a wrong one still fails.
    #[test]
    fn proofs_with_kept_matrices_verify_and_bind_their_update() {
        let grid = FixedPoint::for_clip(1.0).unwrap();
        let context = Context {
            job_id: "job".into(),
            round: 2,
            client: "hospital".into(),
        };
        let (pk, vk) = setup_update_norm(6).unwrap();
        let (pk7, vk7) = setup_update_norm(7).unwrap();
        let prove_and_check = |pk: &ProvingKey, vk: &VerifyingKey, entries: &[i32]| {
            let proof = prove_update(pk, &context, &grid, entries).unwrap();
            verify_update(vk, &context, grid.bound, proof.update_hash, &proof.proof).unwrap();
            proof
        };
        let first = prove_and_check(&pk, &vk, &[1, 2, 3, -4, 5, 6]);
        let later = prove_and_check(&pk, &vk, &[0, -9, 3, 4, 5, 100]);
        prove_and_check(&pk7, &vk7, &[1, 1, 1, 1, 1, 1, 1]);
        prove_and_check(&pk, &vk, &[7, 7, 7, 7, 7, 7]);
        assert!(matches!(
            verify_update(&vk, &context, grid.bound, first.update_hash, &later.proof),
            Err(ProofError::Invalid)
        ));
        let over = grid.bound as i32;
        assert!(matches!(
            prove_update(&pk, &context, &grid, &[over, over, 0, 0, 0, 0]),
            Err(ProofError::Refused(_))
        ));
    }
}
