//! Public API behaviour: validation, monotonicity, composition, calibration.

use cohort_privacy::dp::{
    self, AccountantKind, CALIBRATION_RTOL, DpError, FractionalOrderMethod, PldAccountant,
    RdpAccountant, Segment, calibrate_noise, epsilon,
};

const KINDS: [AccountantKind; 2] = [AccountantKind::Rdp, AccountantKind::Pld];

fn seg(q: f64, sigma: f64, steps: u64) -> Segment {
    Segment::new(q, sigma, steps).unwrap()
}

fn eps(kind: AccountantKind, segments: &[Segment]) -> f64 {
    epsilon(kind, segments, 1e-5).unwrap().epsilon
}

#[test]
fn segment_rejects_bad_values_naming_them() {
    for q in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
        match Segment::new(q, 1.0, 10) {
            Err(DpError::InvalidSamplingRate(v)) => assert!(v == q || (v.is_nan() && q.is_nan())),
            other => panic!("q={q}: {other:?}"),
        }
    }
    for sigma in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        match Segment::new(0.1, sigma, 10) {
            Err(DpError::InvalidNoiseMultiplier(v)) => {
                assert!(v == sigma || (v.is_nan() && sigma.is_nan()))
            }
            other => panic!("sigma={sigma}: {other:?}"),
        }
    }
    assert_eq!(Segment::new(0.1, 1.0, 0), Err(DpError::InvalidSteps(0)));
    assert!(Segment::new(1.0, 1e-3, 1).is_ok());
    let msg = Segment::new(2.0, 1.0, 1).unwrap_err().to_string();
    assert!(msg.contains('2'), "{msg}");
}

#[test]
fn queries_reject_bad_delta_epsilon_and_empty_input() {
    let s = [seg(0.01, 1.0, 10)];
    for kind in KINDS {
        for d in [0.0, 1.0, -1e-5, f64::NAN] {
            assert!(
                matches!(epsilon(kind, &s, d), Err(DpError::InvalidDelta(_))),
                "{kind:?} {d}"
            );
        }
        for e in [-0.1, f64::INFINITY, f64::NAN] {
            assert!(
                matches!(dp::delta(kind, &s, e), Err(DpError::InvalidEpsilon(_))),
                "{kind:?} {e}"
            );
        }
        assert_eq!(epsilon(kind, &[], 1e-5), Err(DpError::NoSegments));
        assert!(matches!(
            calibrate_noise(kind, 0.01, 10, 1e-5, 0.0),
            Err(DpError::InvalidTargetEpsilon(_))
        ));
        assert!(matches!(
            calibrate_noise(kind, 0.0, 10, 1e-5, 1.0),
            Err(DpError::InvalidSamplingRate(_))
        ));
        assert_eq!(
            calibrate_noise(kind, 0.1, 0, 1e-5, 1.0),
            Err(DpError::InvalidSteps(0))
        );
        assert!(matches!(
            calibrate_noise(kind, 0.1, 10, 2.0, 1.0),
            Err(DpError::InvalidDelta(_))
        ));
    }
    assert_eq!(
        RdpAccountant::with_orders(vec![2.0, 0.5], FractionalOrderMethod::Exact).unwrap_err(),
        DpError::InvalidOrder(0.5)
    );
    assert_eq!(
        RdpAccountant::with_orders(vec![], FractionalOrderMethod::Exact).unwrap_err(),
        DpError::NoOrders
    );
    assert_eq!(
        PldAccountant::with_discretization(0.0).unwrap_err(),
        DpError::InvalidDiscretization(0.0)
    );
}

#[test]
fn oversized_pld_grid_is_an_error_not_an_allocation() {
    let mut acc = PldAccountant::with_discretization(1e-7).unwrap();
    let err = acc.compose(&seg(0.05, 0.5, 1)).unwrap_err();
    assert!(matches!(err, DpError::PldTooLarge { .. }), "{err:?}");
}

#[test]
fn epsilon_grows_with_steps_and_sampling_rate_and_falls_with_noise() {
    for kind in KINDS {
        let by_steps: Vec<f64> = [1, 10, 100, 1000]
            .iter()
            .map(|&t| eps(kind, &[seg(0.01, 1.0, t)]))
            .collect();
        assert!(
            by_steps.windows(2).all(|w| w[0] < w[1]),
            "{kind:?} steps {by_steps:?}"
        );
        let by_q: Vec<f64> = [0.001, 0.01, 0.05, 0.2]
            .iter()
            .map(|&q| eps(kind, &[seg(q, 1.0, 100)]))
            .collect();
        assert!(by_q.windows(2).all(|w| w[0] < w[1]), "{kind:?} q {by_q:?}");
        let by_sigma: Vec<f64> = [0.7, 1.0, 1.5, 2.0, 4.0]
            .iter()
            .map(|&s| eps(kind, &[seg(0.05, s, 100)]))
            .collect();
        assert!(
            by_sigma.windows(2).all(|w| w[0] > w[1]),
            "{kind:?} sigma {by_sigma:?}"
        );
    }
}

#[test]
fn delta_and_epsilon_are_consistent() {
    let s = [seg(0.02, 1.2, 300)];
    for kind in KINDS {
        let e = epsilon(kind, &s, 1e-5).unwrap();
        let d = dp::delta(kind, &s, e.epsilon).unwrap();
        // δ(ε(δ)) ≤ δ, and slightly smaller ε must need a larger δ.
        assert!(d.delta <= 1e-5 * (1.0 + 1e-6), "{kind:?}: {d:?}");
        let d_less = dp::delta(kind, &s, e.epsilon * 0.95).unwrap();
        assert!(d_less.delta > 1e-5, "{kind:?}: {d_less:?}");
    }
}

#[test]
fn pld_is_tighter_than_rdp() {
    for s in [
        [seg(0.01, 1.0, 1000)],
        [seg(0.05, 2.0, 100)],
        [seg(1.0, 5.0, 10)],
    ] {
        let (r, p) = (eps(AccountantKind::Rdp, &s), eps(AccountantKind::Pld, &s));
        assert!(p < r, "{s:?}: PLD {p} RDP {r}");
    }
}

#[test]
fn heterogeneous_composition_is_consistent() {
    for kind in KINDS {
        // Splitting a segment changes nothing (up to discretization).
        let whole = eps(kind, &[seg(0.02, 1.0, 300)]);
        let split = eps(kind, &[seg(0.02, 1.0, 100), seg(0.02, 1.0, 200)]);
        assert!(
            (whole - split).abs() / whole < 2e-3,
            "{kind:?}: {whole} vs {split}"
        );
        // Order does not matter, mixing q = 1 (symmetric) and q < 1 segments.
        let a = [seg(1.0, 8.0, 5), seg(0.05, 1.0, 50)];
        let b = [seg(0.05, 1.0, 50), seg(1.0, 8.0, 5)];
        let (ea, eb) = (eps(kind, &a), eps(kind, &b));
        assert!((ea - eb).abs() / ea < 1e-3, "{kind:?}: {ea} vs {eb}");
        // A composition is worse than each of its parts.
        assert!(
            ea > eps(kind, &a[..1]) && ea > eps(kind, &a[1..]),
            "{kind:?}"
        );
    }
}

fn check_calibration(kind: AccountantKind, q: f64, steps: u64, target: f64) {
    let r = calibrate_noise(kind, q, steps, 1e-5, target).unwrap();
    assert_eq!(r.accountant, kind);
    assert!(r.epsilon <= target, "{kind:?}: {r:?}");
    let again = eps(kind, &[seg(q, r.noise_multiplier, steps)]);
    assert_eq!(again, r.epsilon, "{kind:?}: report is reproducible");
    // Smallest within the tolerance: a bit less noise misses the target.
    let less = r.noise_multiplier / (1.0 + 2.0 * CALIBRATION_RTOL);
    assert!(
        eps(kind, &[seg(q, less, steps)]) > target,
        "{kind:?}: {r:?}"
    );
    assert!(r.epsilon > 0.95 * target, "{kind:?}: {r:?}");
}

#[test]
fn calibration_round_trips_rdp() {
    check_calibration(AccountantKind::Rdp, 0.01, 1000, 2.0);
    check_calibration(AccountantKind::Rdp, 0.001, 10000, 0.5);
    check_calibration(AccountantKind::Rdp, 0.2, 50, 8.0);
    let r = calibrate_noise(AccountantKind::Rdp, 0.01, 1000, 1e-5, 2.0).unwrap();
    assert!(r.order.is_some());
}

#[test]
fn calibration_round_trips_pld() {
    check_calibration(AccountantKind::Pld, 0.05, 20, 1.0);
    check_calibration(AccountantKind::Pld, 1.0, 4, 3.0);
}

#[test]
fn calibration_reports_unreachable_targets() {
    match calibrate_noise(AccountantKind::Rdp, 1.0, 1_000_000, 1e-5, 1e-3) {
        Err(DpError::CalibrationUnachievable {
            target_epsilon,
            max_noise_multiplier,
            epsilon_at_max,
        }) => {
            assert_eq!(target_epsilon, 1e-3);
            assert_eq!(max_noise_multiplier, dp::CALIBRATION_RANGE.1);
            assert!(epsilon_at_max > 1e-3);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reports_serialize_for_the_cli() {
    let r = epsilon(AccountantKind::Pld, &[seg(0.01, 1.0, 10)], 1e-5).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["accountant"], "pld");
    assert!(v["order"].is_null());
    assert_eq!(v["delta"], 1e-5);
    let r = calibrate_noise(AccountantKind::Rdp, 0.01, 100, 1e-5, 3.0).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["accountant"], "rdp");
    for key in [
        "noise_multiplier",
        "epsilon",
        "target_epsilon",
        "delta",
        "sampling_rate",
        "steps",
        "order",
    ] {
        assert!(!v[key].is_null(), "{key} missing in {v}");
    }
}

#[test]
fn segments_and_kinds_deserialize_with_validation() {
    let s: Segment =
        serde_json::from_str(r#"{"sampling_rate": 0.01, "noise_multiplier": 1.1, "steps": 500}"#)
            .unwrap();
    assert_eq!(s, seg(0.01, 1.1, 500));
    assert_eq!(serde_json::to_value(s).unwrap()["steps"], 500);
    let bad = serde_json::from_str::<Segment>(
        r#"{"sampling_rate": 0, "noise_multiplier": 1, "steps": 5}"#,
    );
    assert!(bad.unwrap_err().to_string().contains("sampling rate"));
    assert_eq!("PLD".parse::<AccountantKind>(), Ok(AccountantKind::Pld));
    assert_eq!("rdp".parse::<AccountantKind>(), Ok(AccountantKind::Rdp));
    assert!("gdp".parse::<AccountantKind>().is_err());
    assert_eq!(
        serde_json::from_str::<AccountantKind>(r#""rdp""#).unwrap(),
        AccountantKind::Rdp
    );
    assert_eq!(AccountantKind::default(), AccountantKind::Pld);
}

#[test]
fn extreme_inputs_give_finite_answers_or_errors_never_panics() {
    // Tiny noise: every RDP order stays finite (log space throughout).
    let mut acc = RdpAccountant::new();
    acc.compose(&seg(0.5, 0.05, 100));
    assert!(acc.rdp().iter().all(|r| r.is_finite() && *r > 0.0));
    assert!(acc.epsilon(1e-5).unwrap().0.is_finite());
    // Huge noise and tiny sampling rates: epsilon near zero, not NaN.
    for kind in KINDS {
        for s in [seg(0.5, 1e4, 100), seg(1e-9, 1.0, 1000), seg(1.0, 1e6, 1)] {
            let e = eps(kind, &[s]);
            assert!((0.0..0.1).contains(&e), "{kind:?} {s:?}: {e}");
        }
    }
    // Absurd step counts: RDP answers, PLD refuses to allocate.
    let huge = [seg(0.01, 1.0, 1_000_000_000_000)];
    assert!(eps(AccountantKind::Rdp, &huge).is_finite());
    assert!(matches!(
        epsilon(AccountantKind::Pld, &huge, 1e-5),
        Err(DpError::PldTooLarge { .. })
    ));
    let max = [seg(0.01, 1.0, u64::MAX)];
    assert!(matches!(
        epsilon(AccountantKind::Pld, &max, 1e-5),
        Err(DpError::PldTooLarge { .. })
    ));
}
