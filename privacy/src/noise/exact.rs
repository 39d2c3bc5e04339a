//! Rigorous fixed-point enclosures of `exp(a/b)`, for building the boxed
//! sampler's tables and for settling the rare comparisons its
//! floating-point fast path leaves open.
//!
//! Every quantity is a pair of integers `lo ≤ x·2^scale ≤ hi`; every
//! operation rounds `lo` down and `hi` up, so the pair encloses the real
//! number whatever the precision. No floating point is involved.

use num_bigint::BigUint;

/// `lo ≤ x·2^scale ≤ hi` for a positive real `x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Enclosure {
    pub(super) lo: BigUint,
    pub(super) hi: BigUint,
    pub(super) scale: u32,
}

/// `⌈x / y⌉` for `y > 0`.
pub(super) fn div_ceil(x: &BigUint, y: &BigUint) -> BigUint {
    let (quotient, remainder) = (x / y, x % y);
    if remainder.bits() == 0 {
        quotient
    } else {
        quotient + 1u32
    }
}

impl Enclosure {
    /// `exp(a/b)` for `b > 0`: the Taylor series, every term rounded down
    /// for `lo` and up for `hi`, stopped once the terms fall below one unit
    /// and halve from term to term at least (`γ/(k+1) ≤ 1/2`), which bounds
    /// the rest of the series by the last term, added to `hi`.
    pub(super) fn exp(a: u128, b: u128, scale: u32) -> Self {
        debug_assert!(b > 0);
        let (a_big, b_big) = (BigUint::from(a), BigUint::from(b));
        let one = BigUint::from(1u32) << scale;
        let (mut term_lo, mut term_hi) = (one.clone(), one.clone());
        let (mut lo, mut hi) = (one.clone(), one);
        let mut k: u128 = 0;
        loop {
            k += 1;
            let divisor = &b_big * k;
            term_lo = &term_lo * &a_big / &divisor;
            term_hi = div_ceil(&(&term_hi * &a_big), &divisor);
            lo += &term_lo;
            hi += &term_hi;
            // Terms from k+1 on shrink by γ/(k+1) ≤ 1/2 or faster.
            let halving = BigUint::from(k + 1) * &b_big >= &a_big * 2u32;
            if halving && term_hi <= BigUint::from(1u32) {
                hi += &term_hi;
                return Self { lo, hi, scale };
            }
        }
    }

    /// `x·y` at the same scale.
    pub(super) fn mul(&self, other: &Self) -> Self {
        debug_assert_eq!(self.scale, other.scale);
        let unit = BigUint::from(1u32) << self.scale;
        Self {
            lo: (&self.lo * &other.lo) >> self.scale,
            hi: div_ceil(&(&self.hi * &other.hi), &unit),
            scale: self.scale,
        }
    }
}

/// Whether a uniform `U ∈ [0, 1)` whose first 64 binary digits are `first`
/// is below `p`, given enclosures of `p·2^precision` for any precision:
/// `U`'s further digits are drawn 64 at a time until `U`'s interval lies
/// on one side of `p`'s. (For `p` irrational this ends with probability 1,
/// after one more word all but a `2^-50`-ish fraction of the time.)
pub(super) fn uniform_below(
    first: u64,
    mut next_word: impl FnMut() -> u64,
    mut enclosure_at: impl FnMut(u32) -> (BigUint, BigUint),
) -> bool {
    let mut digits = BigUint::from(first);
    let mut precision = 64;
    loop {
        let (lo, hi) = enclosure_at(precision);
        // U ∈ [digits, digits + 1) / 2^precision: below p when
        // digits + 1 ≤ lo.
        if digits < lo {
            return true;
        }
        if digits >= hi {
            return false;
        }
        digits = (digits << 64u32) | BigUint::from(next_word());
        precision += 64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_f64(x: &BigUint, scale: u32) -> f64 {
        let bits = x.bits() as u32;
        let shift = bits.saturating_sub(60);
        let top: u64 = (x >> shift).try_into().unwrap();
        top as f64 * 2f64.powi(shift as i32 - scale as i32)
    }

    #[test]
    fn exp_encloses_the_real_value_tightly() {
        for (a, b) in [
            (0u128, 1u128),
            (1, 1),
            (1, 3),
            (7, 2),
            (64, 2),
            (1, 1 << 40),
        ] {
            let e = Enclosure::exp(a, b, 128);
            let want = (a as f64 / b as f64).exp();
            assert!(e.lo <= e.hi);
            // The pair is narrow: a few units at 2^-128 per unit of value.
            let width = as_f64(&(&e.hi - &e.lo), 128);
            assert!(width <= want * 1e-30, "exp({a}/{b}): width {width}");
            let mid = as_f64(&e.lo, 128);
            assert!(
                (mid / want - 1.0).abs() < 1e-14,
                "exp({a}/{b}): {mid} vs {want}"
            );
        }
        // exp(0) is exactly one.
        let zero = Enclosure::exp(0, 5, 64);
        assert_eq!(zero.lo, BigUint::from(1u32) << 64u32);
        assert_eq!(zero.hi, BigUint::from(1u32) << 64u32);
    }

    #[test]
    fn products_of_enclosures_enclose_the_product() {
        let (x, y) = (Enclosure::exp(1, 3, 100), Enclosure::exp(2, 3, 100));
        let whole = Enclosure::exp(1, 1, 100);
        let product = x.mul(&y);
        // exp(1/3)·exp(2/3) = e: the two enclosures of e overlap.
        assert!(product.lo <= whole.hi && whole.lo <= product.hi);
    }

    #[test]
    fn uniform_below_reads_more_digits_only_when_it_must() {
        // p = 1/2 exactly at any precision.
        let half = |precision: u32| {
            let v = BigUint::from(1u32) << (precision - 1);
            (v.clone(), v)
        };
        let mut words = 0;
        assert!(uniform_below(
            (1 << 63) - 1,
            || {
                words += 1;
                0
            },
            half
        ));
        assert_eq!(words, 0);
        assert!(!uniform_below(1 << 63, || unreachable!(), half));
        // An enclosure too wide at 64 digits: one more word decides.
        let wide = |precision: u32| {
            let v = BigUint::from(3u32) << (precision - 2);
            (&v - 5u32, v + 5u32)
        };
        let mut words = 0;
        assert!(uniform_below(
            3 << 62,
            || {
                words += 1;
                0
            },
            |p| if p == 64 {
                wide(p)
            } else {
                let v = BigUint::from(3u32) << (p - 2);
                (&v + 1u32, v + 1u32)
            }
        ));
        assert_eq!(words, 1);
    }
}
