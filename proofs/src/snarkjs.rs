//! snarkjs's Groth16 JSON layout (curve `bn128`, which is BN254), so that
//! `snarkjs groth16 verify verification_key.json public.json proof.json`
//! — a verifier nobody here wrote — checks Cohort's proofs. Field elements
//! are decimal strings, points affine with a trailing `"1"`, and an `Fq2`
//! element is `[c0, c1]`.

use ark_bn254::{Fq2, G1Affine, G2Affine};
use ark_ec::AffineRepr;
use ark_ff::PrimeField;
use serde_json::{Value, json};

use crate::keys::VerifyingKey;
use crate::statement::{Context, parse_proof};
use crate::{ProofError, hash};

fn fq(x: &impl PrimeField) -> Value {
    Value::String(x.into_bigint().to_string())
}

fn g1(p: &G1Affine) -> Result<Value, ProofError> {
    let (x, y) = p
        .xy()
        .ok_or_else(|| ProofError::MalformedProof("a G1 point is at infinity".into()))?;
    Ok(json!([fq(&x), fq(&y), "1"]))
}

fn fq2(x: &Fq2) -> Value {
    json!([fq(&x.c0), fq(&x.c1)])
}

fn g2(p: &G2Affine) -> Result<Value, ProofError> {
    let (x, y) = p
        .xy()
        .ok_or_else(|| ProofError::MalformedProof("a G2 point is at infinity".into()))?;
    Ok(json!([fq2(&x), fq2(&y), ["1", "0"]]))
}

/// `(file name, contents)` for verification_key.json, proof.json and
/// public.json of one recorded proof.
pub fn export(
    vk: &VerifyingKey,
    context: &Context,
    bound: u64,
    update_hash_hex: &str,
    proof_hex: &str,
) -> Result<Vec<(&'static str, String)>, ProofError> {
    let update_hash = hash::from_hex(update_hash_hex)
        .ok_or_else(|| ProofError::MalformedProof("update hash is not a field element".into()))?;
    let proof_bytes =
        hex::decode(proof_hex).map_err(|e| ProofError::MalformedProof(format!("hex: {e}")))?;
    let proof = parse_proof(&proof_bytes)?;
    let inputs = context.public_inputs(bound, update_hash);
    let vk = &vk.inner;
    let ic = vk
        .gamma_abc_g1
        .iter()
        .map(g1)
        .collect::<Result<Vec<_>, _>>()?;
    let key = json!({
        "protocol": "groth16",
        "curve": "bn128",
        "nPublic": inputs.len(),
        "vk_alpha_1": g1(&vk.alpha_g1)?,
        "vk_beta_2": g2(&vk.beta_g2)?,
        "vk_gamma_2": g2(&vk.gamma_g2)?,
        "vk_delta_2": g2(&vk.delta_g2)?,
        "IC": ic,
    });
    let proof = json!({
        "pi_a": g1(&proof.a)?,
        "pi_b": g2(&proof.b)?,
        "pi_c": g1(&proof.c)?,
        "protocol": "groth16",
        "curve": "bn128",
    });
    let public: Vec<Value> = inputs
        .iter()
        .map(|x| Value::String(hash::to_decimal(x)))
        .collect();
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    Ok(vec![
        ("verification_key.json", pretty(&key)),
        ("proof.json", pretty(&proof)),
        ("public.json", pretty(&Value::Array(public))),
    ])
}

/// A verifying key as EVM words (decimal strings of 256-bit integers): G1
/// points `[x, y]`, G2 points `[x.c1, x.c0, y.c1, y.c0]` (the order of the
/// EIP-197 pairing precompile).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EvmVerifyingKey {
    pub alpha: [String; 2],
    pub beta: [String; 4],
    pub gamma: [String; 4],
    pub delta: [String; 4],
    pub ic: Vec<[String; 2]>,
}

/// One recorded proof as EVM words, with its public inputs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EvmProof {
    pub a: [String; 2],
    pub b: [String; 4],
    pub c: [String; 2],
    pub inputs: Vec<String>,
}

fn word(x: &impl PrimeField) -> String {
    x.into_bigint().to_string()
}

fn g1_words(p: &G1Affine) -> Result<[String; 2], ProofError> {
    let (x, y) = p
        .xy()
        .ok_or_else(|| ProofError::MalformedProof("a G1 point is at infinity".into()))?;
    Ok([word(&x), word(&y)])
}

fn g2_words(p: &G2Affine) -> Result<[String; 4], ProofError> {
    let (x, y) = p
        .xy()
        .ok_or_else(|| ProofError::MalformedProof("a G2 point is at infinity".into()))?;
    Ok([word(&x.c1), word(&x.c0), word(&y.c1), word(&y.c0)])
}

/// The job's verifying key for `contracts/CohortUpdateVerifier.sol`.
pub fn evm_verifying_key(vk: &VerifyingKey) -> Result<EvmVerifyingKey, ProofError> {
    let vk = &vk.inner;
    Ok(EvmVerifyingKey {
        alpha: g1_words(&vk.alpha_g1)?,
        beta: g2_words(&vk.beta_g2)?,
        gamma: g2_words(&vk.gamma_g2)?,
        delta: g2_words(&vk.delta_g2)?,
        ic: vk
            .gamma_abc_g1
            .iter()
            .map(g1_words)
            .collect::<Result<_, _>>()?,
    })
}

/// One recorded proof (as the ledger keeps it) for `verifyProof`.
pub fn evm_proof(
    context: &Context,
    bound: u64,
    update_hash_hex: &str,
    proof_hex: &str,
) -> Result<EvmProof, ProofError> {
    let update_hash = hash::from_hex(update_hash_hex)
        .ok_or_else(|| ProofError::MalformedProof("update hash is not a field element".into()))?;
    let proof_bytes =
        hex::decode(proof_hex).map_err(|e| ProofError::MalformedProof(format!("hex: {e}")))?;
    let proof = parse_proof(&proof_bytes)?;
    Ok(EvmProof {
        a: g1_words(&proof.a)?,
        b: g2_words(&proof.b)?,
        c: g1_words(&proof.c)?,
        inputs: context
            .public_inputs(bound, update_hash)
            .iter()
            .map(hash::to_decimal)
            .collect(),
    })
}
