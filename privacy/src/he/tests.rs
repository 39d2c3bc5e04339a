use fhe_math::rq::{Poly, Representation};
use num_bigint::BigUint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::cipher::combine;
use super::*;

const SEED: [u8; 32] = [7; 32];

struct Job {
    params: HeParams,
    public: PublicKey,
    keys: Vec<ThresholdKey>,
    secrets: Vec<KeyShare>,
}

/// The whole ceremony, every message through its byte form.
fn ceremony(
    hospitals: u32,
    threshold: u32,
    bits: u32,
    values: usize,
    rng: &mut ChaCha20Rng,
) -> Job {
    let params = HeParams::new(hospitals, threshold, bits, values).unwrap();
    let (secrets, shares): (Vec<_>, Vec<_>) = (1..=hospitals)
        .map(|i| KeyShare::generate(&params, i, SEED, rng).unwrap())
        .unzip();
    let shares: Vec<PublicKeyShare> = shares
        .iter()
        .map(|s| PublicKeyShare::from_bytes(&params, &s.to_bytes()).unwrap())
        .collect();
    let public = public_key(&params, SEED, &shares).unwrap();
    let public = PublicKey::from_bytes(&params, &public.to_bytes()).unwrap();
    let dealt: Vec<Vec<SecretShare>> = secrets.iter().map(|s| s.deal(&params, rng)).collect();
    let keys = (1..=hospitals)
        .map(|j| {
            let mine: Vec<SecretShare> = dealt
                .iter()
                .map(|from| {
                    let share = &from[j as usize - 1];
                    SecretShare::from_bytes(&params, &share.to_bytes()).unwrap()
                })
                .collect();
            let key = ThresholdKey::combine(&params, j, &mine).unwrap();
            ThresholdKey::from_bytes(&params, &key.to_bytes()).unwrap()
        })
        .collect();
    Job {
        params,
        public,
        keys,
        secrets,
    }
}

fn random_update(params: &HeParams, rng: &mut ChaCha20Rng) -> Vec<u64> {
    let top = 1u64 << params.plaintext_bits();
    (0..params.values())
        .map(|_| rng.random_range(0..top))
        .collect()
}

fn plain_sum(params: &HeParams, updates: &[Vec<u64>]) -> Vec<u64> {
    let mask = (1u64 << params.plaintext_bits()) - 1;
    (0..params.values())
        .map(|i| updates.iter().fold(0u64, |s, u| s.wrapping_add(u[i])) & mask)
        .collect()
}

/// Every hospital encrypts; the coordinator adds the byte-form uploads.
fn encrypted_sum(job: &Job, updates: &[Vec<u64>], rng: &mut ChaCha20Rng) -> EncryptedUpdate {
    let mut sum: Option<EncryptedUpdate> = None;
    for update in updates {
        let upload = encrypt(&job.params, &job.public, update, rng)
            .unwrap()
            .to_bytes();
        let received = EncryptedUpdate::from_bytes(&job.params, &upload).unwrap();
        match &mut sum {
            None => sum = Some(received),
            Some(s) => s.add_assign(&received).unwrap(),
        }
    }
    sum.unwrap()
}

fn shares(
    job: &Job,
    set: &[u32],
    sum: &EncryptedUpdate,
    rng: &mut ChaCha20Rng,
) -> Vec<DecryptionShare> {
    set.iter()
        .map(|&j| {
            let share = job.keys[j as usize - 1]
                .decryption_share(&job.params, set, sum, rng)
                .unwrap();
            DecryptionShare::from_bytes(&job.params, &share.to_bytes()).unwrap()
        })
        .collect()
}

/// Every hospital encrypts a random update; the encrypted sum and the
/// plaintext sum mod 2^bits.
fn round_of_random_updates(job: &Job, rng: &mut ChaCha20Rng) -> (EncryptedUpdate, Vec<u64>) {
    let updates: Vec<Vec<u64>> = (0..job.params.hospitals())
        .map(|_| random_update(&job.params, rng))
        .collect();
    (
        encrypted_sum(job, &updates, rng),
        plain_sum(&job.params, &updates),
    )
}

#[test]
fn any_threshold_of_hospitals_decrypt_the_exact_sum() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // 10,000 values: two ciphertexts, the second partly padding.
    let job = ceremony(5, 3, 32, 10_000, &mut rng);
    let (sum, want) = round_of_random_updates(&job, &mut rng);
    // Sums wrap past 2^32 in about half the coordinates; still exact.
    for set in [
        vec![1, 2, 3],
        vec![1, 3, 5],
        vec![2, 3, 4, 5],
        vec![1, 2, 3, 4, 5],
    ] {
        let got = decrypt(&job.params, &sum, &shares(&job, &set, &sum, &mut rng)).unwrap();
        assert!(got == want, "decryptors {set:?}: wrong sum");
    }
}

#[test]
fn a_hospital_gone_after_encrypting_does_not_stop_decryption() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let job = ceremony(4, 3, 24, 3000, &mut rng);
    let (sum, want) = round_of_random_updates(&job, &mut rng);
    // Hospital 2 sent its ciphertext, then vanished: its update is in the
    // sum, and the other three decrypt it.
    let got = decrypt(&job.params, &sum, &shares(&job, &[1, 3, 4], &sum, &mut rng)).unwrap();
    assert!(got == want, "wrong sum");
}

#[test]
fn fewer_shares_than_the_threshold_decrypt_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let job = ceremony(5, 3, 32, 8192, &mut rng);
    let (sum, want) = round_of_random_updates(&job, &mut rng);

    // Asking for shares with a set below the threshold is refused.
    assert!(matches!(
        job.keys[0].decryption_share(&job.params, &[1, 2], &sum, &mut rng),
        Err(HeError::NotEnoughShares { have: 2, need: 3 })
    ));
    let all = shares(&job, &[1, 2, 3], &sum, &mut rng);
    assert!(matches!(
        decrypt(&job.params, &sum, &all[..2]),
        Err(HeError::MixedDecryptors)
    ));
    assert!(matches!(
        decrypt(&job.params, &sum, &[]),
        Err(HeError::NotEnoughShares { have: 0, .. })
    ));
    // And what two shares do compute, unchecked, is noise: about 1 in 2^32
    // coordinates agree with the sum by chance.
    let guess = combine(&job.params, &sum, &all[..2]).unwrap();
    let agree = guess.iter().zip(&want).filter(|(a, b)| a == b).count();
    assert!(agree < 5, "{agree} of {} coordinates decrypted", want.len());
    // A single hospital's own secret decrypts nothing either.
    let own = shares(&job, &[1, 2, 3], &sum, &mut rng);
    let guess = combine(&job.params, &sum, &own[..1]).unwrap();
    assert!(guess.iter().zip(&want).filter(|(a, b)| a == b).count() < 5);
}

#[test]
fn shares_from_different_sets_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let job = ceremony(4, 2, 16, 100, &mut rng);
    let (sum, _) = round_of_random_updates(&job, &mut rng);
    let a = shares(&job, &[1, 2], &sum, &mut rng);
    let b = shares(&job, &[3, 4], &sum, &mut rng);
    let mixed = vec![a[0].clone(), b[0].clone()];
    assert!(matches!(
        decrypt(&job.params, &sum, &mixed),
        Err(HeError::MixedDecryptors)
    ));
    assert!(matches!(
        job.keys[0].decryption_share(&job.params, &[2, 3], &sum, &mut rng),
        Err(HeError::NotADecryptor(1))
    ));
}

/// The error of one coefficient of `x − Σ encode(m)`, centred in
/// `(−Q/2, Q/2]`, as a magnitude.
fn max_error(params: &HeParams, x: &Poly, expected: &Poly) -> BigUint {
    let mut diff = x - expected;
    diff.change_representation(Representation::PowerBasis);
    let q = params.ctx.modulus().clone();
    let half = &q >> 1;
    Vec::<BigUint>::from(&diff)
        .into_iter()
        .map(|c| if c > half { &q - c } else { c })
        .max()
        .unwrap()
}

#[test]
fn noise_stays_within_the_bounds_the_smudging_is_sized_for() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let hospitals = 5;
    let job = ceremony(hospitals, 3, 32, 8192, &mut rng);
    let bounds = job.params.bounds().clone();
    let n = BigUint::from(hospitals);

    // The analysis: smudging is 2^(λ + log2 n) times the sum's bound, and
    // the sum decrypts with every share's smudging on it.
    assert_eq!(bounds.smudging, bounds.sum << (STATISTICAL_SECURITY + 13));
    assert!(
        BigUint::from(bounds.sum) + &n * BigUint::from(bounds.smudging) < bounds.tolerance,
        "{bounds:?}"
    );
    assert!(job.params.log_modulus() <= u64::from(MAX_LOG_MODULUS));

    // The measurement: the actual error of a sum of encryptions under the
    // collective key is inside the worst-case bound...
    let updates: Vec<Vec<u64>> = (0..hospitals)
        .map(|_| random_update(&job.params, &mut rng))
        .collect();
    let sum = encrypted_sum(&job, &updates, &mut rng);
    let mut secret = Poly::zero(&job.params.ctx, Representation::Ntt);
    for s in &job.secrets {
        secret += &s.secret;
    }
    let mut encoded = Poly::zero(&job.params.ctx, Representation::PowerBasis);
    for u in &updates {
        encoded += &super::cipher::encode(&job.params, u).unwrap();
    }
    encoded.change_representation(Representation::Ntt);
    let part = &sum.parts_for_tests()[0];
    let plain = &part.0 + &(&part.1 * &secret);
    let fresh = max_error(&job.params, &plain, &encoded);
    assert!(
        fresh <= BigUint::from(bounds.sum),
        "{fresh} > {}",
        bounds.sum
    );
    assert!(
        fresh > BigUint::from(1000u32),
        "suspiciously small error {fresh}"
    );

    // ...and the smudged decryption's error is dominated by the smudging,
    // yet still inside what decryption tolerates.
    let set = [1, 2, 4];
    let all = shares(&job, &set, &sum, &mut rng);
    let mut smudged = part.0.clone();
    for share in &all {
        smudged += &share.parts_for_tests()[0];
    }
    let total = max_error(&job.params, &smudged, &encoded);
    assert!(total < bounds.tolerance);
    assert!(
        total > BigUint::from(bounds.smudging) >> 2u32,
        "no smudging in the shares"
    );
}

#[test]
fn messages_round_trip_and_malformed_ones_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let job = ceremony(3, 2, 16, 9000, &mut rng);
    let update = random_update(&job.params, &mut rng);
    let upload = encrypt(&job.params, &job.public, &update, &mut rng).unwrap();
    let bytes = upload.to_bytes();
    // Two ciphertexts of two polynomials, k primes, 8192 coefficients of
    // 8 bytes each, plus the framing.
    let k = job.params.primes().len();
    assert_eq!(bytes.len(), 4 + 4 + 4 + 4 + 4 * (4 + k * 8192 * 8));
    assert_eq!(
        EncryptedUpdate::from_bytes(&job.params, &bytes).unwrap(),
        upload
    );

    let refused = |b: &[u8]| {
        matches!(
            EncryptedUpdate::from_bytes(&job.params, b),
            Err(HeError::Malformed(_))
        )
    };
    assert!(refused(&bytes[..bytes.len() - 1]));
    assert!(refused(&[bytes.as_slice(), &[0]].concat()));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(refused(&magic));
    // A coefficient at or above its prime.
    let mut high = bytes.clone();
    high[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(refused(&high));
    // A public-key share where a whole update belongs.
    let (_, pk_share) = KeyShare::generate(&job.params, 1, SEED, &mut rng).unwrap();
    assert!(refused(&pk_share.to_bytes()));

    assert!(matches!(
        encrypt(&job.params, &job.public, &update[1..], &mut rng),
        Err(HeError::Length {
            got: 8999,
            want: 9000
        })
    ));
    let mut too_big = update.clone();
    too_big[17] = 1 << 16;
    assert!(matches!(
        encrypt(&job.params, &job.public, &too_big, &mut rng),
        Err(HeError::PlaintextRange {
            index: 17,
            bits: 16
        })
    ));
}

#[test]
fn the_ceremony_needs_every_hospital_and_correct_addresses() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let params = HeParams::new(3, 2, 16, 10).unwrap();
    let (secrets, pk): (Vec<_>, Vec<_>) = (1..=3)
        .map(|i| KeyShare::generate(&params, i, SEED, &mut rng).unwrap())
        .unzip();
    assert!(matches!(
        public_key(&params, SEED, &pk[..2]),
        Err(HeError::Missing(3))
    ));
    let twice = vec![pk[0].clone(), pk[0].clone(), pk[2].clone()];
    assert!(matches!(
        public_key(&params, SEED, &twice),
        Err(HeError::Duplicate(1))
    ));
    let dealt: Vec<Vec<SecretShare>> = secrets.iter().map(|s| s.deal(&params, &mut rng)).collect();
    let for_two: Vec<SecretShare> = dealt
        .iter()
        .map(|d| SecretShare::from_bytes(&params, &d[1].to_bytes()).unwrap())
        .collect();
    assert!(matches!(
        ThresholdKey::combine(&params, 1, &for_two),
        Err(HeError::Misaddressed {
            recipient: 2,
            index: 1,
            ..
        })
    ));
    assert!(matches!(
        KeyShare::generate(&params, 4, SEED, &mut rng),
        Err(HeError::UnknownParty {
            index: 4,
            hospitals: 3
        })
    ));
}

#[test]
fn impossible_parameters_are_refused_up_front() {
    assert!(matches!(
        HeParams::new(5, 1, 32, 100),
        Err(HeError::Threshold { .. })
    ));
    assert!(matches!(
        HeParams::new(5, 6, 32, 100),
        Err(HeError::Threshold { .. })
    ));
    assert!(matches!(
        HeParams::new(5, 3, 61, 100),
        Err(HeError::PlaintextBits(61))
    ));
    assert!(matches!(HeParams::new(5, 3, 32, 0), Err(HeError::Empty)));
    // A hundred thousand hospitals with 60-bit plaintexts would need a
    // fourth prime: more than 218 bits of modulus.
    assert!(matches!(
        HeParams::new(100_000, 3, 60, 100_000_000),
        Err(HeError::Insecure { .. })
    ));
    // Ten hospitals at 32 bits fit in two primes (124 bits); 60-bit
    // plaintexts need a third.
    let p = HeParams::new(10, 7, 32, 1_000_000).unwrap();
    assert_eq!(p.primes().len(), 2);
    assert_eq!(p.ciphertexts(), 123);
    assert_eq!(
        HeParams::new(10, 7, 60, 1_000_000).unwrap().primes().len(),
        3
    );
}

#[test]
fn client_level_dp_noise_is_added_before_encryption_and_survives_the_sum() {
    use crate::distributed::{DistributedNoise, quantizer};
    use crate::quantize::add_mod;

    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let (hospitals, threshold, dimension, sigma) = (5u32, 3u32, 2000usize, 1.0);
    // The secure-aggregation encoding with room for every hospital's noise,
    // as a client-level DP job under `aggregation = "he"` would use it.
    let q = quantizer(0.5, 32, hospitals, sigma, threshold, dimension).unwrap();
    let noise = DistributedNoise::new(&q, dimension, sigma, threshold, hospitals).unwrap();
    let job = ceremony(hospitals, threshold, q.bits(), dimension + 1, &mut rng);

    let mut noisy_sum = vec![0u64; dimension + 1];
    let mut clean_mean = vec![0f64; dimension];
    let mut sum: Option<EncryptedUpdate> = None;
    for _ in 0..hospitals {
        let delta: Vec<f32> = (0..dimension)
            .map(|_| rng.random_range(-0.005..0.005))
            .collect();
        for (m, d) in clean_mean.iter_mut().zip(&delta) {
            *m += f64::from(*d) / f64::from(hospitals);
        }
        let mut encoded = q.encode_update(&delta, 1, &mut rng).unwrap().values;
        noise.add_to(&mut encoded, q.bits()).unwrap();
        add_mod(&mut noisy_sum, &encoded, q.bits());
        let upload = encrypt(&job.params, &job.public, &encoded, &mut rng).unwrap();
        match &mut sum {
            None => sum = Some(upload),
            Some(s) => s.add_assign(&upload).unwrap(),
        }
    }
    let sum = sum.unwrap();
    let decrypted = decrypt(&job.params, &sum, &shares(&job, &[2, 3, 5], &sum, &mut rng)).unwrap();
    // The decrypted integers are exactly the noisy encodings' sum: nobody
    // after the hospitals could have added or removed noise.
    assert!(decrypted == noisy_sum, "wrong sum");
    let (mean, count) = q.decode_weighted_mean(&decrypted).unwrap();
    assert_eq!(count, u64::from(hospitals));
    // Noise of standard deviation σ·Δ·√(H/t) in integer units, over the
    // scale and the hospitals, in model units.
    let std = sigma * noise.sensitivity * (f64::from(hospitals) / f64::from(threshold)).sqrt()
        / q.scale()
        / f64::from(hospitals);
    let errors: Vec<f64> = mean
        .iter()
        .zip(&clean_mean)
        .map(|(m, c)| f64::from(*m) - c)
        .collect();
    let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
    assert!((rms / std - 1.0).abs() < 0.1, "noise rms {rms} vs {std}");
}

#[test]
fn commitment_blindings_cancel_over_all_members_and_signed_sums_decode() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let params = HeParams::new(3, 2, 20, 5).unwrap();
    let session = [3u8; 32];
    let (mut rounds, adverts): (Vec<HospitalRound>, Vec<Advert>) = (1..=3)
        .map(|i| HospitalRound::new(params.clone(), session, i, &mut rng).unwrap())
        .unzip();
    assert!(
        rounds[0].blindings(4).is_err(),
        "blindings need the adverts"
    );
    let updates: [Vec<i32>; 3] = [
        vec![-32767, 5, 0, 1, -1],
        vec![-32767, -9, 0, 32767, 2],
        vec![-32767, 3, 7, 32767, 0],
    ];
    let mut plain_sum = vec![0u64; 5];
    for (round, update) in rounds.iter_mut().zip(&updates) {
        let values = signed_to_plaintext(update, 20);
        round.encrypt_and_deal(&adverts, &values, &mut rng).unwrap();
        crate::quantize::add_mod(&mut plain_sum, &values, 20);
    }
    assert_eq!(
        plaintext_to_signed(&plain_sum, 20),
        vec![-98301, -1, 7, 65535, 1]
    );

    let blindings: Vec<Vec<_>> = rounds.iter().map(|r| r.blindings(4).unwrap()).collect();
    for j in 0..4 {
        let total: curve25519_dalek::scalar::Scalar = blindings.iter().map(|b| b[j]).sum();
        assert_eq!(total, curve25519_dalek::scalar::Scalar::ZERO);
        assert_ne!(blindings[0][j], curve25519_dalek::scalar::Scalar::ZERO);
    }
    // Another attempt (session) gives other blindings.
    let (mut other, other_adverts): (Vec<HospitalRound>, Vec<Advert>) = (1..=3)
        .map(|i| HospitalRound::new(params.clone(), [4u8; 32], i, &mut rng).unwrap())
        .unzip();
    other[0]
        .encrypt_and_deal(&other_adverts, &[0; 5], &mut rng)
        .unwrap();
    assert_ne!(other[0].blindings(4).unwrap(), blindings[0]);
}
