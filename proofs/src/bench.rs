//! Measurements behind `cohort bench proofs` (docs/BENCHMARKS.md).

use std::time::Instant;

use ark_bn254::Fr;
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem, SynthesisMode};
use rand::Rng;
use serde::Serialize;

use crate::circuits::update_norm::UpdateNormCircuit;
use crate::{Context, FixedPoint, ProofError, hash, keys, prove_update, verify_update};

/// One size's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateNormBench {
    pub parameters: usize,
    pub constraints: usize,
    pub setup_seconds: f64,
    pub proving_key_bytes: usize,
    /// Client, once per job: parsing the downloaded proving key, every
    /// point checked on the curve and in its subgroup.
    pub key_load_seconds: f64,
    /// Client: encoding on the grid and proving.
    pub prove_seconds: f64,
    pub proof_bytes: usize,
    /// Coordinator or validator: the Poseidon hash of the received update.
    pub hash_seconds: f64,
    pub verify_seconds: f64,
}

/// Setup, prove and verify statement 1 once for `parameters` random
/// updates at the 16-bit grid of clip 1.
pub fn update_norm(parameters: usize) -> Result<UpdateNormBench, ProofError> {
    let constraints = {
        let cs = ConstraintSystem::<Fr>::new_ref();
        cs.set_mode(SynthesisMode::Setup);
        UpdateNormCircuit {
            len: parameters,
            public: [Fr::from(0u64); 5],
            entries: None,
        }
        .generate_constraints(cs.clone())?;
        cs.num_constraints()
    };
    let started = Instant::now();
    let (pk, vk) = keys::setup_update_norm(parameters)?;
    let setup_seconds = started.elapsed().as_secs_f64();
    let pk_bytes = pk.to_bytes();
    let proving_key_bytes = pk_bytes.len();
    let started = Instant::now();
    let pk = crate::ProvingKey::from_bytes(&pk_bytes)?;
    let key_load_seconds = started.elapsed().as_secs_f64();
    drop(pk_bytes);
    let grid = FixedPoint::for_clip(1.0)?;
    let mut rng = rand::rng();
    let delta: Vec<f32> = (0..parameters)
        .map(|_| rng.random_range(-1.0f32..1.0) / (parameters as f32).sqrt())
        .collect();
    let context = Context {
        job_id: "bench".into(),
        round: 1,
        client: "hospital".into(),
    };
    let started = Instant::now();
    let entries = grid.encode(&delta, &mut rng)?;
    let proof = prove_update(&pk, &context, &grid, &entries)?;
    let prove_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let update_hash = hash::update_hash(&entries);
    let hash_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    verify_update(&vk, &context, grid.bound, update_hash, &proof.proof)?;
    let verify_seconds = started.elapsed().as_secs_f64();
    Ok(UpdateNormBench {
        parameters,
        constraints,
        setup_seconds,
        proving_key_bytes,
        key_load_seconds,
        prove_seconds,
        proof_bytes: proof.proof.len(),
        hash_seconds,
        verify_seconds,
    })
}
