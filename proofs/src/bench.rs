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
    /// Client, first proof of a size in the process: encoding on the grid
    /// and proving, the circuit's constraint matrices built and kept.
    pub first_prove_seconds: f64,
    /// Client, every later proof (a job's later rounds): the same with the
    /// kept matrices.
    pub prove_seconds: f64,
    pub proof_bytes: usize,
    /// Coordinator or validator: the Poseidon hash of the received update.
    pub hash_seconds: f64,
    pub verify_seconds: f64,
}

/// Setup, prove twice (a job's first round and a later one) and verify
/// statement 1 for `parameters` random updates at the 16-bit grid of clip 1.
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
    let mut prove = || -> Result<_, ProofError> {
        let started = Instant::now();
        let entries = grid.encode(&delta, &mut rng)?;
        let proof = prove_update(&pk, &context, &grid, &entries)?;
        Ok((entries, proof, started.elapsed().as_secs_f64()))
    };
    let (_, _, first_prove_seconds) = prove()?;
    let (entries, proof, prove_seconds) = prove()?;
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
        first_prove_seconds,
        prove_seconds,
        proof_bytes: proof.proof.len(),
        hash_seconds,
        verify_seconds,
    })
}

/// One size's numbers for the statement over commitments (secure
/// aggregation, [`crate::committed`]).
#[derive(Debug, Clone, Serialize)]
pub struct CommittedUpdateNormBench {
    pub parameters: usize,
    pub multipliers: usize,
    /// Once per process and size: hashing the Bulletproofs generators to
    /// the group.
    pub generators_seconds: f64,
    /// Client: encoding on the grid, committing and proving.
    pub prove_seconds: f64,
    pub proof_bytes: usize,
    /// The masked input itself: one compressed point per entry.
    pub commitment_bytes: usize,
    /// Coordinator or validator, per hospital.
    pub verify_seconds: f64,
    /// Coordinator, per round: summing `contributors` hospitals'
    /// commitments, removing the blinding and finding the sum's logarithm
    /// (the one-off table of small multiples included).
    pub contributors: usize,
    pub open_seconds: f64,
    /// Coordinator, per round under homomorphic aggregation: checking the
    /// summed commitments against the decrypted sum
    /// ([`committed::check_sum`](crate::committed::check_sum)).
    pub sum_check_seconds: f64,
}

/// Proves and verifies the committed statement once per hospital for
/// `contributors` hospitals' random updates of `parameters` entries, then
/// opens their sum.
pub fn committed_update_norm(
    parameters: usize,
    contributors: usize,
) -> Result<CommittedUpdateNormBench, ProofError> {
    use crate::committed;
    use curve25519_dalek_ng::scalar::Scalar;
    let grid = FixedPoint::for_clip(1.0)?;
    let mut rng = rand::rng();
    let context = Context {
        job_id: "bench".into(),
        round: 1,
        client: "hospital".into(),
    };
    let started = Instant::now();
    committed::warm_generators(parameters, grid.bound)?;
    let generators_seconds = started.elapsed().as_secs_f64();
    let (mut prove_seconds, mut verify_seconds) = (0.0, 0.0);
    let mut sums = Vec::new();
    let mut blinding = vec![Scalar::zero(); parameters];
    let mut proof_bytes = 0;
    for hospital in 0..contributors {
        let delta: Vec<f32> = (0..parameters)
            .map(|_| rng.random_range(-1.0f32..1.0) / (parameters as f32).sqrt())
            .collect();
        let mut blindings: Vec<Scalar> = (0..parameters)
            .map(|_| {
                let mut wide = [0u8; 64];
                rng.fill(&mut wide[..]);
                Scalar::from_bytes_mod_order_wide(&wide)
            })
            .collect();
        if hospital + 1 == contributors {
            // The last hospital's blindings cancel the others' (as
            // homomorphic aggregation's pairwise ones do): the sum check
            // below then has a sum to check.
            for (r, total) in blindings.iter_mut().zip(&blinding) {
                *r = -total;
            }
        }
        let started = Instant::now();
        let entries = grid.encode(&delta, &mut rng)?;
        let update = committed::prove(&context, grid.bound, &entries, &blindings)?;
        prove_seconds += started.elapsed().as_secs_f64();
        proof_bytes = update.proof.len();
        let started = Instant::now();
        committed::verify(&context, grid.bound, &update.commitments, &update.proof)?;
        verify_seconds += started.elapsed().as_secs_f64();
        committed::add_into(&mut sums, &committed::decompress(&update.commitments)?);
        for (total, r) in blinding.iter_mut().zip(&blindings) {
            *total += r;
        }
    }
    let started = Instant::now();
    let sum = committed::open_sum(&sums, &blinding, contributors)?;
    let open_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    committed::check_sum(&sums, &sum)?;
    let sum_check_seconds = started.elapsed().as_secs_f64();
    Ok(CommittedUpdateNormBench {
        parameters,
        multipliers: committed::multipliers(parameters, grid.bound)?,
        generators_seconds,
        prove_seconds: prove_seconds / contributors as f64,
        proof_bytes,
        commitment_bytes: parameters * committed::COMMITMENT_BYTES,
        verify_seconds: verify_seconds / contributors as f64,
        contributors,
        open_seconds,
        sum_check_seconds,
    })
}
