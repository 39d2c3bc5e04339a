//! Agreement with Google's `dp_accounting` (version recorded in the fixture)
//! on the grid q ∈ {0.001, 0.01, 0.05} × σ ∈ {0.5, 1, 2} × T ∈ {1, 100, 1000,
//! 10000} at δ = 1e-5, plus three heterogeneous compositions.

mod common;

use cohort_privacy::dp::{
    self, AccountantKind, FractionalOrderMethod, PldAccountant, RdpAccountant, rdp,
};
use common::{Case, rel};

fn compat_rdp(case: &Case) -> RdpAccountant {
    let mut acc = RdpAccountant::with_orders(
        rdp::default_orders(),
        FractionalOrderMethod::DpAccountingCompat,
    )
    .unwrap();
    case.segments.iter().for_each(|s| acc.compose(s));
    acc
}

#[test]
fn fixture_metadata_and_default_orders() {
    let fx = common::load();
    assert_eq!(fx.version, "0.6.0");
    assert_eq!(fx.rdp_orders, rdp::default_orders());
    assert_eq!(fx.cases.len(), 3 * 3 * 4 + 3);
}

/// In `DpAccountingCompat` mode the RDP curve is dp_accounting's, order by
/// order, including the orders it drops (reported as +inf here).
#[test]
fn rdp_compat_matches_dp_accounting_per_order() {
    let fx = common::load();
    for case in &fx.cases {
        let acc = compat_rdp(case);
        for ((order, got), want) in acc.orders().iter().zip(acc.rdp()).zip(&case.rdp_values) {
            match want {
                Some(want) => assert!(
                    rel(*got, *want) < 1e-8,
                    "{} order {order}: {got} vs dp_accounting {want}",
                    case.label
                ),
                None => assert!(
                    got.is_infinite(),
                    "{} order {order}: {got}, dp_accounting dropped it",
                    case.label
                ),
            }
        }
    }
}

/// The acceptance bar: RDP epsilon within 0.5% of dp_accounting at every grid
/// point, with the same optimal order; the same for delta at epsilon = 1.
#[test]
fn rdp_compat_epsilon_delta_and_order_match_dp_accounting() {
    let fx = common::load();
    for case in &fx.cases {
        let acc = compat_rdp(case);
        let (eps, order) = acc.epsilon(fx.delta).unwrap();
        assert!(
            rel(eps, case.rdp_epsilon) < 0.005,
            "{}: {eps} vs {}",
            case.label,
            case.rdp_epsilon
        );
        assert_eq!(order, case.rdp_order, "{}", case.label);
        let (delta, _) = acc.delta(fx.epsilon_for_delta).unwrap();
        assert!(
            rel(delta, case.rdp_delta_for_epsilon) < 0.005,
            "{}: delta {delta} vs {}",
            case.label,
            case.rdp_delta_for_epsilon
        );
    }
}

/// Grid points where dp_accounting 0.6.0's absolute-value fractional series
/// (and, for q=0.05 σ=0.5, its dropped orders 1.1-1.5) makes its RDP epsilon
/// more than 0.5% looser than the exact series.
const LOOSE_IN_DP_ACCOUNTING: [(f64, f64, u64); 4] = [
    (0.01, 0.5, 10000),
    (0.05, 0.5, 1000),
    (0.05, 0.5, 10000),
    (0.05, 1.0, 10000),
];

/// The default (exact) RDP accountant is never looser than dp_accounting,
/// agrees within 0.5% except at the documented points, and is always an upper
/// bound on the tight PLD epsilon.
#[test]
fn rdp_exact_is_never_looser_than_dp_accounting() {
    let fx = common::load();
    for case in &fx.cases {
        let report = dp::epsilon(AccountantKind::Rdp, &case.segments, fx.delta).unwrap();
        let eps = report.epsilon;
        assert!(
            eps <= case.rdp_epsilon * (1.0 + 1e-9),
            "{}: {eps} > {}",
            case.label,
            case.rdp_epsilon
        );
        assert!(
            eps >= case.pld_epsilon,
            "{}: RDP {eps} below PLD {}",
            case.label,
            case.pld_epsilon
        );
        let s = &case.segments[0];
        let key = (s.sampling_rate(), s.noise_multiplier(), s.steps());
        let documented = case.segments.len() == 1 && LOOSE_IN_DP_ACCOUNTING.contains(&key);
        let r = rel(eps, case.rdp_epsilon);
        if documented {
            assert!(
                r >= 0.005,
                "{}: now within 0.5% ({r}); update the list",
                case.label
            );
        } else {
            assert!(
                r < 0.005,
                "{}: exact {eps} vs dp_accounting {} ({r})",
                case.label,
                case.rdp_epsilon
            );
        }
    }
}

fn check_pld(filter: impl Fn(&Case) -> bool) -> usize {
    let fx = common::load();
    let mut checked = 0;
    for case in fx.cases.iter().filter(|c| filter(c)) {
        let mut acc = PldAccountant::new();
        for s in &case.segments {
            acc.compose(s).unwrap();
        }
        let eps = acc.epsilon(fx.delta).unwrap();
        assert!(
            rel(eps, case.pld_epsilon) < 0.01,
            "{}: PLD {eps} vs {}",
            case.label,
            case.pld_epsilon
        );
        let delta = acc.delta(fx.epsilon_for_delta).unwrap();
        let want = case.pld_delta_for_epsilon;
        // Below ~1e-11 both are at the noise floor of FFT rounding and the 1e-15
        // tail truncations; compare absolutely there.
        assert!(
            rel(delta, want) < 0.01 || (delta - want).abs() < 1e-12,
            "{}: PLD delta {delta} vs {want}",
            case.label
        );
        checked += 1;
    }
    checked
}

fn heavy(case: &Case) -> bool {
    // Grid points with more than ~10^6 PLD grid points (slow in a debug build).
    case.segments.len() > 1
        || case
            .segments
            .iter()
            .any(|s| s.noise_multiplier() == 0.5 && s.sampling_rate() >= 0.01 && s.steps() >= 1000)
}

#[test]
fn pld_matches_dp_accounting_q0001() {
    assert_eq!(
        check_pld(|c| !heavy(c) && c.segments[0].sampling_rate() == 0.001),
        12
    );
}

#[test]
fn pld_matches_dp_accounting_q001() {
    assert!(
        check_pld(|c| !heavy(c) && c.segments[0].sampling_rate() == 0.01 && c.segments.len() == 1)
            >= 10
    );
}

#[test]
fn pld_matches_dp_accounting_q005() {
    assert!(
        check_pld(|c| !heavy(c) && c.segments[0].sampling_rate() == 0.05 && c.segments.len() == 1)
            >= 10
    );
}

#[test]
fn pld_matches_dp_accounting_heavy() {
    assert_eq!(check_pld(heavy), 7);
}
