//! Statement 1 end to end at a small size: honest proofs verify, and every
//! way of reusing or forging one is rejected.

use cohort_proofs::keys::setup_update_norm;
use cohort_proofs::{Context, FixedPoint, ProofError, hash, prove_update, verify_update};
use rand::SeedableRng;

fn context() -> Context {
    Context {
        job_id: "job-1".into(),
        round: 3,
        client: "hospital-a".into(),
    }
}

#[test]
fn honest_proofs_verify_and_every_substitution_is_rejected() {
    let len = 40;
    let (pk, vk) = setup_update_norm(len).unwrap();
    let grid = FixedPoint::for_clip(1.0).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let delta: Vec<f32> = (0..len).map(|i| (i as f32 - 20.0) / 30.0).collect();
    let u = grid.encode(&delta, &mut rng).unwrap();
    let ctx = context();
    let proof = prove_update(&pk, &ctx, &grid, &u).unwrap();
    assert_eq!(proof.update_hash, hash::update_hash(&u));
    verify_update(&vk, &ctx, grid.bound, proof.update_hash, &proof.proof).unwrap();

    // The keys survive their wire form.
    let vk2 = cohort_proofs::VerifyingKey::from_bytes(&vk.to_bytes()).unwrap();
    assert_eq!(vk2, vk);
    let pk2 = cohort_proofs::ProvingKey::from_bytes(&pk.to_bytes()).unwrap();
    assert_eq!(pk2.verifying_key(), vk);

    let invalid = |c: &Context, bound: u64, h, p: &[u8]| verify_update(&vk, c, bound, h, p);
    // Another round, hospital or job.
    let mut other = ctx.clone();
    other.round += 1;
    assert!(matches!(
        invalid(&other, grid.bound, proof.update_hash, &proof.proof),
        Err(ProofError::Invalid)
    ));
    let mut other = ctx.clone();
    other.client = "hospital-b".into();
    assert!(matches!(
        invalid(&other, grid.bound, proof.update_hash, &proof.proof),
        Err(ProofError::Invalid)
    ));
    let mut other = ctx.clone();
    other.job_id = "job-2".into();
    assert!(matches!(
        invalid(&other, grid.bound, proof.update_hash, &proof.proof),
        Err(ProofError::Invalid)
    ));
    // A looser bound.
    assert!(matches!(
        invalid(&ctx, grid.bound + 1, proof.update_hash, &proof.proof),
        Err(ProofError::Invalid)
    ));
    // Another update: the submitted vector differs from the proved one.
    let mut boosted = u.clone();
    boosted[0] += 1;
    let h = hash::update_hash(&boosted);
    assert!(matches!(
        invalid(&ctx, grid.bound, h, &proof.proof),
        Err(ProofError::Invalid)
    ));
    // Truncated, random and bit-flipped bytes never panic.
    assert!(matches!(
        invalid(&ctx, grid.bound, proof.update_hash, &proof.proof[..100]),
        Err(ProofError::MalformedProof(_))
    ));
    let random: Vec<u8> = (0..128u32).map(|i| (i * 37 % 251) as u8).collect();
    assert!(invalid(&ctx, grid.bound, proof.update_hash, &random).is_err());
    for byte in [0, 40, 70, 127] {
        let mut flipped = proof.proof.clone();
        flipped[byte] ^= 0x04;
        assert!(
            invalid(&ctx, grid.bound, proof.update_hash, &flipped).is_err(),
            "flip at {byte}"
        );
    }
    // Keys from outside are checked too.
    assert!(cohort_proofs::VerifyingKey::from_bytes(&[1, 2, 3]).is_err());
    let mut bad = vk.to_bytes();
    bad.truncate(bad.len() - 1);
    assert!(cohort_proofs::VerifyingKey::from_bytes(&bad).is_err());
}

#[test]
fn the_prover_refuses_an_update_outside_the_bound() {
    let len = 8;
    let (pk, _) = setup_update_norm(len).unwrap();
    let grid = FixedPoint::for_clip(1.0).unwrap();
    let mut over = vec![0i32; len];
    over[0] = grid.bound as i32;
    over[1] = 1;
    let refused = prove_update(&pk, &context(), &grid, &over).unwrap_err();
    assert!(matches!(refused, ProofError::Refused(_)), "{refused}");
    assert!(refused.to_string().contains("exceeds"), "{refused}");
    let short = prove_update(&pk, &context(), &grid, &over[..4]).unwrap_err();
    assert!(matches!(short, ProofError::WrongLength { .. }), "{short}");
}
