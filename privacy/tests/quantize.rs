//! Quantization: error bounds, unbiasedness, wrap safety, validation, wire form.

use cohort_privacy::quantize::{QuantizeError, Quantizer, add_mod, pack, sub_mod, unpack};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The weighted mean the server should recover, in f64.
fn true_mean(q: &Quantizer, updates: &[(Vec<f32>, u64)], max_examples: u64) -> Vec<f64> {
    let dim = updates[0].0.len();
    let mut acc = vec![0.0f64; dim];
    let mut wsum = 0.0;
    for (delta, n) in updates {
        let norm = delta
            .iter()
            .map(|&d| f64::from(d).powi(2))
            .sum::<f64>()
            .sqrt();
        let c = if norm > q.clip() {
            q.clip() / norm
        } else {
            1.0
        };
        let w = *n as f64 / max_examples as f64;
        for (a, &d) in acc.iter_mut().zip(delta) {
            *a += w * c * f64::from(d);
        }
        wsum += w;
    }
    acc.iter().map(|a| a / wsum).collect()
}

#[test]
fn round_trip_error_is_bounded() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for (bits, clients, max_examples) in [(32, 10, 1_000), (20, 8, 100), (48, 100, 50_000)] {
        let q = Quantizer::for_weighted_sum(1.5, bits, clients, max_examples).unwrap();
        let updates: Vec<(Vec<f32>, u64)> = (0..clients)
            .map(|i| {
                // Some updates far beyond the clip, some well inside it.
                let spread = if i % 3 == 0 { 3.0 } else { 0.2 };
                let delta = (0..40).map(|_| rng.random_range(-spread..spread)).collect();
                (delta, rng.random_range(1..=max_examples))
            })
            .collect();
        let mut sum = vec![0u64; 41];
        let mut any_clipped = false;
        for (delta, n) in &updates {
            let enc = q.encode_update(delta, *n, &mut rng).unwrap();
            assert_eq!(enc.values.len(), 41);
            any_clipped |= enc.clipped;
            add_mod(&mut sum, &enc.values, bits);
        }
        assert!(any_clipped);
        let (mean, count) = q.decode_weighted_mean(&sum).unwrap();
        assert_eq!(count, updates.iter().map(|u| u.1).sum::<u64>());
        let expect = true_mean(&q, &updates, max_examples);
        // Each of the n roundings is off by < 1 unit; the mean divides the
        // sum by scale · Σw (Σw = count / max_examples).
        let wsum = count as f64 / max_examples as f64;
        let bound = clients as f64 / (q.scale() * wsum);
        for (m, e) in mean.iter().zip(&expect) {
            let tol = bound + 1e-6 * e.abs().max(1e-3); // plus f32 rounding
            assert!(
                (f64::from(*m) - e).abs() <= tol,
                "bits={bits}: {m} vs {e} (tol {tol})"
            );
        }
    }
}

#[test]
fn error_within_n_over_scale_when_weights_sum_to_at_least_one() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let n = 5u32;
    let q = Quantizer::for_weighted_sum(1.0, 24, n, 10).unwrap();
    let updates: Vec<(Vec<f32>, u64)> = (0..n)
        .map(|_| ((0..20).map(|_| rng.random_range(-0.2..0.2)).collect(), 10))
        .collect();
    let mut sum = vec![0u64; 21];
    for (d, k) in &updates {
        add_mod(
            &mut sum,
            &q.encode_update(d, *k, &mut rng).unwrap().values,
            24,
        );
    }
    let (mean, _) = q.decode_weighted_mean(&sum).unwrap();
    for (m, e) in mean.iter().zip(true_mean(&q, &updates, 10)) {
        assert!((f64::from(*m) - e).abs() <= f64::from(n) / q.scale() + 1e-7);
    }
}

#[test]
fn stochastic_rounding_is_unbiased() {
    // One update, weight 1, no clipping: q_i = round(delta_i · scale).
    let q = Quantizer::for_weighted_sum(1.0, 16, 1, 1).unwrap();
    assert_eq!(q.scale(), 32_766.0);
    let fracs = [0.1, 0.37, 0.5, 0.73, 0.9];
    let delta: Vec<f32> = fracs
        .iter()
        .enumerate()
        .map(|(i, f)| ((i as f64 * 10.0 - 20.0 + f) / q.scale()) as f32)
        .collect();
    let target: Vec<f64> = delta.iter().map(|&d| f64::from(d) * q.scale()).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let trials = 20_000;
    let mut means = vec![0.0f64; delta.len()];
    for _ in 0..trials {
        let enc = q.encode_update(&delta, 1, &mut rng).unwrap();
        for (m, &v) in means.iter_mut().zip(&enc.values) {
            let signed = if v >= 1 << 15 {
                v as i64 - (1 << 16)
            } else {
                v as i64
            };
            *m += signed as f64 / trials as f64;
        }
    }
    for (m, t) in means.iter().zip(&target) {
        // σ ≤ 0.5 per trial: 5σ/√N ≈ 0.018; nearest rounding would be off by ≥ 0.1.
        assert!((m - t).abs() < 0.018, "mean {m} vs target {t}");
    }
}

#[test]
fn extreme_updates_never_wrap() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (bits, n, max_ex) = (16, 3, 7);
    let q = Quantizer::for_weighted_sum(2.0, bits, n, max_ex).unwrap();
    for sign in [1.0f32, -1.0] {
        let mut sum = vec![0u64; 3];
        for _ in 0..n {
            let enc = q
                .encode_update(&[sign * 1e6, 0.0], max_ex, &mut rng)
                .unwrap();
            assert!(enc.clipped);
            add_mod(&mut sum, &enc.values, bits);
        }
        let (mean, count) = q.decode_weighted_mean(&sum).unwrap();
        assert_eq!(count, u64::from(n) * max_ex);
        assert!((mean[0] - sign * 2.0).abs() < 1e-3, "{mean:?}");
    }
}

#[test]
fn rejects_bad_and_wrap_prone_configurations() {
    assert_eq!(
        Quantizer::for_weighted_sum(1.0, 7, 1, 1).unwrap_err(),
        QuantizeError::InvalidBits(7)
    );
    assert_eq!(
        Quantizer::for_weighted_sum(1.0, 63, 1, 1).unwrap_err(),
        QuantizeError::InvalidBits(63)
    );
    for clip in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            Quantizer::for_weighted_sum(clip, 32, 1, 1),
            Err(QuantizeError::InvalidClip(_))
        ));
    }
    let e = Quantizer::for_weighted_sum(1.0, 16, 1_000, 1_000).unwrap_err();
    assert!(matches!(e, QuantizeError::CountsCouldWrap { .. }));
    assert!(e.to_string().contains("use more bits"), "{e}");
    let e = Quantizer::for_weighted_sum(1.0, 16, 1_000, 10).unwrap_err();
    assert!(matches!(e, QuantizeError::TooCoarse { levels: 31, .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("too coarse") && msg.contains("more bits") && msg.contains("fewer clients"),
        "{msg}"
    );
    // The smallest width that still gives 256 levels for one summand.
    assert!(Quantizer::for_weighted_sum(1.0, 10, 1, 1).is_ok());
    assert!(Quantizer::for_weighted_sum(1.0, 9, 1, 1).is_err());

    let q = Quantizer::for_weighted_sum(1.0, 32, 4, 100).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    assert!(matches!(
        q.encode_update(&[0.0, f32::NAN], 1, &mut rng),
        Err(QuantizeError::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        q.encode_update(&[0.0], 101, &mut rng),
        Err(QuantizeError::TooManyExamples {
            num_examples: 101,
            max_examples: 100
        })
    ));
    assert_eq!(
        q.decode_weighted_mean(&[]).unwrap_err(),
        QuantizeError::EmptySum
    );
    assert_eq!(
        q.decode_weighted_mean(&[5, 0]).unwrap_err(),
        QuantizeError::ZeroTotalCount
    );
    assert!(matches!(
        q.decode_weighted_mean(&[1 << 32, 1]),
        Err(QuantizeError::ValueOutOfRange { index: 0, .. })
    ));
    assert!(matches!(
        q.decode_weighted_mean(&[0, 401]),
        Err(QuantizeError::CountTooLarge { .. })
    ));
}

#[test]
fn serde_round_trip_checks_scale() {
    let q = Quantizer::for_weighted_sum(0.5, 40, 20, 5_000).unwrap();
    let json = serde_json::to_string(&q).unwrap();
    let back: Quantizer = serde_json::from_str(&json).unwrap();
    assert_eq!(back, q);
    let tampered = json.replace(&format!("{}", q.scale()), "1.0");
    assert!(serde_json::from_str::<Quantizer>(&tampered).is_err());
    let bad = r#"{"clip":1.0,"bits":70,"max_summands":1,"max_examples":1}"#;
    let e = serde_json::from_str::<Quantizer>(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bits"), "{e}");
}

#[test]
fn pack_unpack_round_trip_and_rejection() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    for bits in [1, 8, 31, 32, 33, 62, 64] {
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let values: Vec<u64> = (0..100).map(|_| rng.random::<u64>() & mask).collect();
        let bytes = pack(&values, bits);
        assert_eq!(bytes.len(), 100 * if bits <= 32 { 4 } else { 8 });
        assert_eq!(unpack(&bytes, bits, 100).unwrap(), values);
        assert!(matches!(
            unpack(&bytes, bits, 99),
            Err(QuantizeError::WrongLength { expected: 99, .. })
        ));
        assert!(unpack(&bytes[..bytes.len() - 1], bits, 100).is_err());
        if bits < 64 && bits != 32 {
            let mut big = bytes.clone();
            let w = if bits <= 32 { 4 } else { 8 };
            big[3 * w..4 * w].fill(0xff);
            assert!(matches!(
                unpack(&big, bits, 100),
                Err(QuantizeError::ValueOutOfRange { index: 3, .. })
            ));
        }
    }
    assert!(matches!(
        unpack(&[], 0, 0),
        Err(QuantizeError::InvalidPackBits(0))
    ));
    let mut acc = vec![5u64, (1 << 8) - 1];
    add_mod(&mut acc, &[(1 << 8) - 1, 1], 8);
    assert_eq!(acc, vec![4, 0]);
    sub_mod(&mut acc, &[5, 1], 8);
    assert_eq!(acc, vec![255, 255]);
}
