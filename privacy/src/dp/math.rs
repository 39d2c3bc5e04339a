//! Numerical helpers shared by the accountants, all in log space where
//! overflow or underflow could otherwise bite.

use std::f64::consts::{LN_2, PI, SQRT_2};

/// `log(exp(a) + exp(b))`, exact when either side is `-inf`.
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// `log(exp(a) - exp(b))` for `a >= b` (`-inf` when equal).
pub(crate) fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        return a;
    }
    if a <= b {
        return f64::NEG_INFINITY;
    }
    a + (-(b - a).exp()).ln_1p()
}

/// `log(a * exp(b) + c)`, as `dp_accounting.pld.common.log_a_times_exp_b_plus_c`.
/// The caller guarantees that the argument of the log is positive.
pub(crate) fn log_a_times_exp_b_plus_c(a: f64, b: f64, c: f64) -> f64 {
    if a == 0.0 {
        return c.ln();
    }
    if a < 0.0 {
        return log_sub(c.ln(), (-a).ln() + b);
    }
    if b == 0.0 {
        return (a + c).ln();
    }
    let d = b + a.ln();
    if c == 0.0 {
        d
    } else if c < 0.0 {
        log_sub(d, (-c).ln())
    } else {
        log_add(d, c.ln())
    }
}

/// `ln Γ(x)` (of `|Γ(x)|` for negative non-integer `x`), from `libm`.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// `log(erfc(x))`, accurate far into the right tail where `erfc` underflows.
///
/// For `x < 26` this is `ln(erfc(x))` (`libm`'s `erfc` has small relative
/// error down to ~1e-300); beyond, the asymptotic (Laurent) expansion
/// `erfc(x) ~ exp(-x²)/(x√π) · (1 - 1/(2x²) + 3/(4x⁴) - 15/(8x⁶) + 105/(16x⁸))`,
/// whose truncation error there is below 1e-13 relative.
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x < 26.0 {
        return libm::erfc(x).ln();
    }
    let x2 = x * x;
    let inv = 1.0 / x2;
    let series = 1.0 - 0.5 * inv + 0.75 * inv * inv - 1.875 * inv.powi(3) + 6.5625 * inv.powi(4);
    -x2 - x.ln() - 0.5 * PI.ln() + series.ln()
}

/// Standard normal CDF `Φ(x)`.
pub(crate) fn norm_cdf(x: f64) -> f64 {
    if x == f64::INFINITY {
        return 1.0;
    }
    if x == f64::NEG_INFINITY {
        return 0.0;
    }
    0.5 * libm::erfc(-x / SQRT_2)
}

/// `log Φ(x)` of the standard normal, accurate in the far left tail.
pub(crate) fn norm_log_cdf(x: f64) -> f64 {
    if x == f64::INFINITY {
        return 0.0;
    }
    if x == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    if x > 5.0 {
        // Φ(x) = 1 - Φ(-x); ln_1p keeps the tiny complement.
        return (-norm_cdf(-x)).ln_1p();
    }
    -LN_2 + log_erfc(-x / SQRT_2)
}

/// `x` with `log Φ(x) = log_p` for a left-tail probability (`log_p < ln 0.5`),
/// by Newton's method on `log Φ` from the asymptotic start `-sqrt(-2 log_p)`.
pub(crate) fn norm_ppf_from_log(log_p: f64) -> f64 {
    debug_assert!(log_p < -LN_2);
    let mut x = -(-2.0 * log_p).sqrt();
    for _ in 0..100 {
        let log_cdf = norm_log_cdf(x);
        let log_pdf = -0.5 * x * x - 0.5 * (2.0 * PI).ln();
        // d/dx log Φ(x) = φ(x)/Φ(x)
        let step = (log_cdf - log_p) / (log_pdf - log_cdf).exp();
        x -= step;
        if step.abs() <= 1e-14 * x.abs().max(1.0) {
            break;
        }
    }
    x
}

/// `ln(Σ exp(x_i))` over a slice; `-inf` for an empty slice.
pub(crate) fn log_sum_exp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + xs.map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_erfc_is_continuous_at_the_switch() {
        // References: scipy, log(2) + special.log_ndtr(-x * sqrt(2)).
        let cases = [
            (25.9, -674.637_351_895_319_2),
            (26.0, -679.831_199_763_194_6),
            (30.0, -903.974_117_110_644_2),
        ];
        for (x, want) in cases {
            let got = log_erfc(x);
            assert!(
                ((got - want) / want).abs() < 1e-13,
                "log_erfc({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn ppf_matches_scipy() {
        // scipy.stats.norm.ppf(0.5 * exp(-50)) = -9.745474864965935
        let x = norm_ppf_from_log(-50.0 - LN_2);
        assert!((x + 9.745_474_864_965_935).abs() < 1e-10, "{x}");
        let x = norm_ppf_from_log((0.025f64).ln());
        assert!((x + 1.959_963_984_540_054).abs() < 1e-10, "{x}");
    }

    #[test]
    fn log_space_helpers() {
        assert!((log_add(0.0, 0.0) - LN_2).abs() < 1e-15);
        assert_eq!(log_add(f64::NEG_INFINITY, 1.5), 1.5);
        assert!((log_sub(LN_2, 0.0)).abs() < 1e-15);
        assert!(
            (log_a_times_exp_b_plus_c(2.0, 0.5, 3.0) - (2.0 * 0.5f64.exp() + 3.0).ln()).abs()
                < 1e-14
        );
        assert!(
            (log_a_times_exp_b_plus_c(2.0, 0.5, -1.0) - (2.0 * 0.5f64.exp() - 1.0).ln()).abs()
                < 1e-14
        );
        assert!(
            (log_a_times_exp_b_plus_c(-0.5, 0.1, 1.0) - (1.0 - 0.5 * 0.1f64.exp()).ln()).abs()
                < 1e-14
        );
        assert!((norm_log_cdf(-40.0) - (-804.608_442_013_753_9)).abs() < 1e-9);
        assert!((norm_log_cdf(8.0) - (-6.220_960_574_271_742e-16)).abs() < 1e-28);
    }
}
