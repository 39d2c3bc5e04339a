//! The discrete Gaussian `N_Z(0, n)` by boxes and rejection, exact, for
//! variances of 1024 and more.
//!
//! CKS's sampler ([`super::cks`]) draws a discrete Laplace candidate and
//! keeps it about 70 % of the time, each step a chain of exact coins: about
//! 90 ns a draw at DP-SGD's 2^24 grid points per standard deviation, which
//! made noise most of a DP-SGD step on a wide model. This sampler spends
//! that work once, on a table:
//!
//! * the magnitudes `0..J·w` (`J·w ≥ 8σ`) are cut into `J` boxes of width
//!   `w = 2^b`, `σ/w ∈ [32, 64)`. Box `j` gets an integer weight
//!   `V_j ≥ C·f(j·w)`, `f(m) = exp(-m²/2n)` its largest mass and `C` a
//!   constant that fills the table; a **tail** bucket gets
//!   `V_T ≥ C·f(J·w)/(w·(1 - exp(-1/t)))`; a **padding** bucket the rest of
//!   `K·2^64` for `K` columns of an alias table (Vose), built in exact
//!   integer arithmetic;
//! * a draw picks a bucket from the alias table (a column's bits and a
//!   64-bit comparison), a magnitude `m` uniformly in its box, and keeps it
//!   with probability `a(m) = C·f(m)/V_j ≤ 1`. So `P(m) ∝ C·f(m)/w` on the
//!   boxes. The tail draws `m = J·w + g` with `P(g) = (1 - ρ)ρ^g`,
//!   `ρ = exp(-1/t)`, `t = 2^k ≥ n/(J·w)` (so `ρ^g` bounds `f` from above,
//!   `f` being log-concave) and keeps it with probability
//!   `C·f(m)/(w·V_T·(1-ρ)ρ^g) ≤ 1`: again `P(m) ∝ C·f(m)/w`. Padding
//!   restarts the draw, and so does `m = 0` with a negative sign (as CKS
//!   Algorithm 2 does), so every integer gets `exp(-y²/2n)` up to one
//!   constant;
//! * a box's acceptance `a(m) = r_j·exp(-δ)` (`r_j = C·f(jw)/V_j` from the
//!   table, `δ = (m² - (jw)²)/2n ≤ 1/2`) is decided by comparing a uniform
//!   `U` with it lazily: first against the bounds `1 - δ ≤ exp(-δ) ≤ 1 - δ
//!   + δ²/2`, then against a degree-12 Taylor polynomial, both in `f64`
//!   with a margin of `2^-40` that exceeds their rounding and truncation
//!   error (below `2^-44`, see [`BoxGaussian::box_acceptance`]), and only
//!   when `U` falls within that margin (probability `2^-39`) against
//!   rigorous fixed-point enclosures ([`super::exact`]) with as many more
//!   bits of `U` as it takes. Every comparison therefore has the outcome
//!   the exact `U < a(m)` has.
//!
//! About 99 % of candidates are kept. The tail, beyond eight standard
//! deviations, is drawn about once in 10^15 draws, and the tests exercise
//! it with a table that reaches one standard deviation only.

use super::cks::RandomBits;
use super::exact::{Enclosure, div_ceil, uniform_below};
use num_bigint::BigUint;
use rand::RngCore;

/// Smallest variance the boxes take: `σ ≥ 32`, so a box is at least one
/// integer wide.
pub(super) const MIN_VARIANCE: u128 = 1024;

/// Largest variance (exclusive): keeps `2n`, `(J·w)²` and the tail's
/// `2·n·t` well inside `u128` and `f64`'s exact integers where they meet.
pub(super) const MAX_VARIANCE: u128 = 1 << 62;

/// The boxes reach `REACH_SIGMAS` standard deviations.
const REACH_SIGMAS: u128 = 8;

/// Margin of the floating-point tiers, against their error of at most
/// `2^-44`.
const FAST_MARGIN: f64 = 1.0 / (1u64 << 40) as f64;

/// Binary digits of the table's enclosures.
const TABLE_SCALE: u32 = 192;

/// `2^64` as an `f64` (exact).
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

#[derive(Debug)]
pub(super) struct BoxGaussian {
    variance: u128,
    /// `w = 2^width_bits`.
    width_bits: u32,
    /// `J`.
    boxes: usize,
    /// `K = 2^column_bits` alias columns.
    column_bits: u32,
    /// Column `i` picks bucket `i` when a uniform 64-bit word is below
    /// `threshold[i]`, else `alias[i]`. Buckets `0..J` are boxes, `J` the
    /// tail, `J + 1` padding.
    threshold: Vec<u64>,
    alias: Vec<u16>,
    /// `V_j` for the boxes.
    weights: Vec<u128>,
    /// `r_j = C·f(j·w)/V_j` to within `2^-52`.
    ratio: Vec<f64>,
    tail_weight: u128,
    /// `C`.
    fill: u128,
    /// `t = 2^tail_bits`, the tail's geometric scale.
    tail_bits: u32,
    /// `1/(2n)` in `f64`.
    inverse_two_n: f64,
    /// Whether the floating-point tiers may decide (tests turn them off to
    /// check the exact path alone).
    fast: bool,
}

impl BoxGaussian {
    pub(super) fn new(variance: u128) -> Option<Self> {
        Self::with_reach(variance, REACH_SIGMAS, true)
    }

    /// The table with boxes up to `reach` standard deviations, and the
    /// floating-point tiers on or off.
    pub(super) fn with_reach(variance: u128, reach: u128, fast: bool) -> Option<Self> {
        if !(MIN_VARIANCE..MAX_VARIANCE).contains(&variance) || reach == 0 {
            return None;
        }
        // ⌊log2 σ⌋ = ⌊⌊log2 n⌋/2⌋, so σ/w ∈ [32, 64).
        let width_bits = variance.ilog2() / 2 - 5;
        let width = 1u128 << width_bits;
        // J·w ≥ reach·σ: (J·w)² ≥ reach²·n.
        let boxes = (reach * reach * variance).isqrt().div_ceil(width) as usize + 1;
        let reach_end = boxes as u128 * width;
        // Within a box δ < (2J - 1)·w²/2n, at most 1/2 for the Taylor tier.
        if (2 * boxes as u128) * width * width > variance {
            return None;
        }
        // The tail's scale: the smallest t = 2^k with t·J·w ≥ n.
        let mut tail_bits = 0;
        while reach_end << tail_bits < variance {
            tail_bits += 1;
        }
        let buckets = boxes + 2;
        let column_bits = (buckets as u64).next_power_of_two().ilog2();
        let columns = 1usize << column_bits;
        if buckets > usize::from(u16::MAX) {
            return None;
        }

        // exp(j²w²/2n) for j = 0..=J: E_{j+1} = E_j·D_j, D_j = exp((2j+1)w²/2n).
        let two_n = 2 * variance;
        let mut growth = Enclosure::exp(width * width, two_n, TABLE_SCALE);
        let growth_step = Enclosure::exp(width * width, variance, TABLE_SCALE);
        let unit = BigUint::from(1u32) << TABLE_SCALE;
        let mut inverse_mass = vec![Enclosure {
            lo: unit.clone(),
            hi: unit.clone(),
            scale: TABLE_SCALE,
        }];
        for _ in 0..boxes {
            let next = inverse_mass[inverse_mass.len() - 1].mul(&growth);
            inverse_mass.push(next);
            growth = growth.mul(&growth_step);
        }
        let at_reach = &inverse_mass[boxes];
        let tail_rate = Enclosure::exp(1, 1 << tail_bits, TABLE_SCALE);

        // C fills K·2^64 but for a sliver of padding; retried smaller in
        // the unlikely case the rounded-up weights overshoot.
        let capacity = (columns as u128) << 64;
        let approximate_mass: f64 = (0..boxes)
            .map(|j| (-((j as f64 * width as f64).powi(2)) / two_n as f64).exp())
            .sum::<f64>()
            + (-((reach_end as f64).powi(2)) / two_n as f64).exp() * (1u128 << tail_bits) as f64
                / width as f64
                * 2.0;
        let mut fill = (capacity as f64 * (1.0 - 1.0 / (1u64 << 20) as f64) / approximate_mass)
            .min(u128::MAX as f64) as u128;
        let big = |x: u128| BigUint::from(x);
        let (weights, tail_weight) = loop {
            let scaled_fill = big(fill) << TABLE_SCALE;
            let weights: Vec<u128> = inverse_mass[..boxes]
                .iter()
                .map(|e| u128::try_from(div_ceil(&scaled_fill, &e.lo)).ok())
                .collect::<Option<_>>()?;
            // V_T ≥ C·f(J·w)/(w·(1-ρ)) = C·2^s·E_1/(w·E_J·(E_1 - 2^s)).
            let tail_weight = u128::try_from(div_ceil(
                &(&scaled_fill * &tail_rate.lo),
                &(big(width) * &at_reach.lo * (&tail_rate.lo - &unit)),
            ))
            .ok()?;
            let total = weights
                .iter()
                .try_fold(tail_weight, |sum, &w| sum.checked_add(w))?;
            if total <= capacity {
                break (weights, tail_weight);
            }
            fill -= fill >> 10;
        };
        let padding = capacity - weights.iter().sum::<u128>() - tail_weight;

        let ratio = inverse_mass[..boxes]
            .iter()
            .zip(&weights)
            .map(|(e, &v)| {
                // ⌊C·2^(s+64)/(E_j,hi·V_j)⌋ ≤ r_j·2^64 ≤ 2^64.
                let below = (big(fill) << (TABLE_SCALE + 64)) / (&e.hi * big(v));
                u128::try_from(below).unwrap_or(u128::MAX) as f64 / TWO_64
            })
            .collect();

        let mut bucket_weights: Vec<u128> = weights.clone();
        bucket_weights.push(tail_weight);
        bucket_weights.push(padding);
        bucket_weights.resize(columns, 0);
        let (threshold, alias) = alias_table(bucket_weights);

        Some(Self {
            variance,
            width_bits,
            boxes,
            column_bits,
            threshold,
            alias,
            weights,
            ratio,
            tail_weight,
            fill,
            tail_bits,
            inverse_two_n: 1.0 / two_n as f64,
            fast,
        })
    }

    /// One draw.
    pub(super) fn sample<R: RngCore>(&self, bits: &mut RandomBits<R>) -> i128 {
        loop {
            let bucket = self.bucket(bits);
            let magnitude = if bucket < self.boxes {
                let offset = u128::from(bits.bits(self.width_bits));
                if !self.box_acceptance(bucket, offset, bits) {
                    continue;
                }
                ((bucket as u128) << self.width_bits) | offset
            } else if bucket == self.boxes {
                match self.tail(bits) {
                    Some(magnitude) => magnitude,
                    None => continue,
                }
            } else {
                continue;
            };
            let positive = bits.bits(1) == 1;
            if positive || magnitude != 0 {
                let value = magnitude as i128;
                return if positive { value } else { -value };
            }
        }
    }

    /// A bucket from the alias table: a uniform column, then a uniform
    /// 64-bit word against its threshold, read 32 bits at a time (the low
    /// half decides only when the high half ties).
    fn bucket<R: RngCore>(&self, bits: &mut RandomBits<R>) -> usize {
        let column = bits.bits(self.column_bits) as usize;
        let threshold = self.threshold[column];
        let high = bits.bits(32);
        let below = if high != threshold >> 32 {
            high < threshold >> 32
        } else {
            (high << 32 | bits.bits(32)) < threshold
        };
        if below {
            column
        } else {
            usize::from(self.alias[column])
        }
    }

    /// Whether box `j`'s candidate `m = j·w + offset` is kept: `U < a(m) =
    /// r_j·exp(-δ)`, `δ = offset·(2jw + offset)/2n`.
    ///
    /// Error of the floating-point tiers, for `δ ≤ 1/2`: `δ`, the numerator
    /// and `2n` each converted to `f64`, `1/2n` and the product each rounded
    /// once, is within `4·2^-53` relative, so within `2^-52` absolute;
    /// the degree-12 Taylor polynomial's truncation is below
    /// `(1/2)^13/13! < 2^-45` and its Horner rounding below `2^-47`; `r_j`
    /// is within `2^-52`, the products round within `2^-52`. Below `2^-44`
    /// in all, a sixteenth of [`FAST_MARGIN`].
    fn box_acceptance<R: RngCore>(&self, j: usize, offset: u128, bits: &mut RandomBits<R>) -> bool {
        let base = (j as u128) << self.width_bits;
        if !self.fast {
            let first = bits.bits(64);
            return self.box_acceptance_exactly(j, base + offset, first, bits);
        }
        // offset·(2jw + offset) < 2J·w² ≤ n < 2^62: exact in u64, and
        // converted to f64 in one instruction.
        let numerator = (offset * (2 * base + offset)) as u64;
        let delta = numerator as f64 * self.inverse_two_n;
        let ratio = self.ratio[j];
        // 1 - δ ≤ exp(-δ) ≤ 1 - δ + δ²/2.
        let below = ratio * (1.0 - delta);
        let above = ratio * (1.0 - delta + 0.5 * delta * delta);
        let high = bits.bits(32);
        if let Some(decided) = decide_on_high_half(high, below, above) {
            return decided;
        }
        let word = high << 32 | bits.bits(32);
        if let Some(decided) = decide_on_word(word, below, above) {
            return decided;
        }
        let close = ratio * exp_minus_taylor(delta);
        if let Some(decided) = decide_on_word(word, close, close) {
            return decided;
        }
        self.box_acceptance_exactly(j, base + offset, word, bits)
    }

    /// `U < C·exp(-m²/2n)/V_j` for `U` starting with the digits `first`,
    /// on enclosures alone.
    fn box_acceptance_exactly<R: RngCore>(
        &self,
        j: usize,
        magnitude: u128,
        first: u64,
        bits: &mut RandomBits<R>,
    ) -> bool {
        let weight = BigUint::from(self.weights[j]);
        let fill = BigUint::from(self.fill);
        uniform_below(
            first,
            || bits.bits(64),
            |precision| {
                // p·2^P = C·2^(P+s)/(V_j·E), E = exp(m²/2n)·2^s.
                let scale = precision + 64;
                let e = Enclosure::exp(magnitude * magnitude, 2 * self.variance, scale);
                let numerator = &fill << (precision + scale);
                (
                    &numerator / (&weight * &e.hi),
                    div_ceil(&numerator, &(&weight * &e.lo)),
                )
            },
        )
    }

    /// The tail: `m = J·w + g`, `g` geometric with ratio `ρ = exp(-1/t)`,
    /// kept with probability `κ·exp(-(γ(m) - γ(J·w) - g/t))`, `γ(m) =
    /// m²/2n`, `κ = C·f(J·w)/(w·V_T·(1-ρ)) ≤ 1`; `None` when refused.
    fn tail<R: RngCore>(&self, bits: &mut RandomBits<R>) -> Option<u128> {
        let reach_end = (self.boxes as u128) << self.width_bits;
        let g = bits.geometric(self.tail_bits);
        let t = 1u128 << self.tail_bits;
        let two_n = 2 * self.variance;
        // γ(m) - γ(J·w) - g/t = g·(t·(2J·w + g) - 2n)/(2n·t) ≥ 0 as t·J·w ≥ n.
        let slope = t * (2 * reach_end + g) - two_n;
        if !bits.bernoulli_exp_product(g, slope, two_n * t) {
            return None;
        }
        let first = bits.bits(64);
        let fill = BigUint::from(self.fill);
        let scaled_tail = BigUint::from(self.tail_weight) << self.width_bits;
        let kept = uniform_below(
            first,
            || bits.bits(64),
            |precision| {
                // κ·2^P = C·2^s·E_1·2^P/(w·V_T·E_J·(E_1 - 2^s)), decreasing
                // in both enclosures.
                let scale = precision + 64;
                let unit = BigUint::from(1u32) << scale;
                let at_reach = Enclosure::exp(reach_end * reach_end, two_n, scale);
                let rate = Enclosure::exp(1, t, scale);
                let numerator = |e1: &BigUint| (&fill * e1) << (scale + precision);
                let denominator = |ej: &BigUint, e1: &BigUint| &scaled_tail * ej * (e1 - &unit);
                (
                    numerator(&rate.hi) / denominator(&at_reach.hi, &rate.hi),
                    div_ceil(&numerator(&rate.lo), &denominator(&at_reach.lo, &rate.lo)),
                )
            },
        );
        kept.then_some(reach_end + g)
    }
}

/// `[lo, hi)` in 64-bit units for the real interval `[below - margin,
/// above + margin]`: `U < lo·2^-64` is surely below the value, `U ≥
/// hi·2^-64` surely not.
fn word_bounds(below: f64, above: f64) -> (u128, u128) {
    // Saturating conversions: below 0 gives 0, above 2^64 keeps its value
    // in u128. Scaling by 2^64 is exact.
    let lo = ((below - FAST_MARGIN) * TWO_64) as u128;
    let hi = ((above + FAST_MARGIN) * TWO_64).ceil() as u128;
    (lo, hi)
}

/// The decision when `U`'s first 32 digits are `high`, or `None`: `U ∈
/// [high, high + 1)·2^-32`, compared in `f64`, where `high` and `high + 1`
/// are exact and scaling by `2^32` is exact; the subtraction and addition of
/// the margin round by at most `2^-53`, inside the margin's slack.
fn decide_on_high_half(high: u64, below: f64, above: f64) -> Option<bool> {
    const TWO_32: f64 = 4_294_967_296.0;
    let high = high as f64;
    if high + 1.0 <= (below - FAST_MARGIN) * TWO_32 {
        Some(true)
    } else if high >= (above + FAST_MARGIN) * TWO_32 {
        Some(false)
    } else {
        None
    }
}

/// The decision when `U`'s first 64 digits are `word`, or `None`.
fn decide_on_word(word: u64, below: f64, above: f64) -> Option<bool> {
    let (lo, hi) = word_bounds(below, above);
    let word = u128::from(word);
    if word < lo {
        Some(true)
    } else if word >= hi {
        Some(false)
    } else {
        None
    }
}

/// `exp(-δ)` for `0 ≤ δ ≤ 1/2` by its Taylor polynomial of degree 12.
fn exp_minus_taylor(delta: f64) -> f64 {
    // (-1)^k / k!, highest degree first.
    const COEFFICIENTS: [f64; 13] = {
        let mut c = [0.0; 13];
        let mut k = 0;
        let mut factorial = 1.0;
        while k < 13 {
            if k > 0 {
                factorial *= k as f64;
            }
            c[12 - k] = if k % 2 == 0 { 1.0 } else { -1.0 } / factorial;
            k += 1;
        }
        c
    };
    COEFFICIENTS
        .iter()
        .fold(0.0, |sum, &coefficient| sum * delta + coefficient)
}

/// Vose's alias table for integer weights summing to `columns·2^64`:
/// column `i` keeps bucket `i` for the part of its `2^64` below
/// `threshold[i]` and gives the rest to `alias[i]`. Exact: every column's
/// share is an integer.
fn alias_table(mut weights: Vec<u128>) -> (Vec<u64>, Vec<u16>) {
    const FULL: u128 = 1 << 64;
    let columns = weights.len();
    debug_assert_eq!(weights.iter().sum::<u128>(), (columns as u128) << 64);
    let mut threshold = vec![u64::MAX; columns];
    let mut alias: Vec<u16> = (0..columns as u16).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) =
        (0..columns).partition(|&i| weights[i] < FULL);
    while let (Some(&l), Some(&g)) = (small.last(), large.last()) {
        small.pop();
        threshold[l] = weights[l] as u64;
        alias[l] = g as u16;
        weights[g] -= FULL - weights[l];
        if weights[g] < FULL {
            large.pop();
            small.push(g);
        }
    }
    // What is left has exactly 2^64: threshold u64::MAX with itself as
    // alias keeps it whatever the word.
    debug_assert!(small.iter().chain(&large).all(|&i| weights[i] == FULL));
    (threshold, alias)
}

#[cfg(test)]
mod tests {
    use super::super::scripted::Words;
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha12Rng;

    fn bits(seed: u64) -> RandomBits<ChaCha12Rng> {
        RandomBits::new(ChaCha12Rng::seed_from_u64(seed))
    }

    #[test]
    fn the_alias_table_gives_every_bucket_its_exact_share() {
        let full = 1u128 << 64;
        let weights = vec![3 * full / 2, full / 4, full / 4 + 7, 2 * full - 7];
        let (threshold, alias) = alias_table(weights.clone());
        let mut share = vec![0u128; weights.len()];
        for (i, (&t, &a)) in threshold.iter().zip(&alias).enumerate() {
            let kept = if usize::from(a) == i {
                full
            } else {
                u128::from(t)
            };
            share[i] += kept;
            share[usize::from(a)] += full - kept;
        }
        assert_eq!(share, weights);
    }

    #[test]
    fn box_weights_bound_the_mass_and_fill_the_table() {
        for n in [1024u128, 2001, 1 << 20, 3 << 47, 3 << 60] {
            let table = BoxGaussian::new(n).unwrap();
            let sigma = (n as f64).sqrt();
            assert!((32.0..64.0).contains(&(sigma / (1u64 << table.width_bits) as f64)));
            assert!(
                table.ratio.iter().all(|&r| r <= 1.0 && r > 0.999),
                "n = {n}"
            );
            let padding = (1u128 << (table.column_bits + 64))
                - table.weights.iter().sum::<u128>()
                - table.tail_weight;
            // Padding restarts well under 0.1 % of draws.
            assert!(
                padding < (1u128 << (table.column_bits + 64)) >> 10,
                "n = {n}"
            );
        }
        // Every variance in range gets a table.
        for bits in 10..62 {
            for n in [
                1u128 << bits,
                (1 << bits) + 1,
                (3 << bits) / 2,
                (2 << bits) - 1,
            ] {
                assert!(BoxGaussian::new(n).is_some(), "n = {n}");
            }
        }
        assert!(BoxGaussian::new(1023).is_none());
        assert!(BoxGaussian::new(1 << 62).is_none());
    }

    /// `box_acceptance` for `U`'s first 64 digits `word`: its first
    /// `bits(32)` takes a fresh word's low half, the second the high half.
    fn accepts(table: &BoxGaussian, j: usize, offset: u128, word: u64) -> bool {
        let then = ChaCha12Rng::seed_from_u64(word);
        let mut bits = RandomBits::new(Words::new(&[word.rotate_right(32)], Some(then)));
        table.box_acceptance(j, offset, &mut bits)
    }

    #[test]
    fn a_box_keeps_its_candidate_with_the_exact_probability() {
        // For candidates across the boxes, the word just below the exact
        // acceptance probability C·exp(-m²/2n)/V_j is accepted and the word
        // just above refused, at 2^-38 from it (outside the floating-point
        // tiers' margin) and at one unit from it (within it: the
        // enclosures decide).
        for n in [1u128 << 20, 3 << 47] {
            let table = BoxGaussian::new(n).unwrap();
            let mut rng = bits(7);
            for _ in 0..300 {
                let j = rng.bits(10) as usize % table.boxes;
                let offset = u128::from(rng.bits(table.width_bits));
                let m = ((j as u128) << table.width_bits) + offset;
                let e = Enclosure::exp(m * m, 2 * n, 192);
                let at = |e: &BigUint| {
                    let scaled = (BigUint::from(table.fill) << (192 + 64)) / (e * table.weights[j]);
                    u64::try_from(scaled).unwrap()
                };
                let (low, high) = (at(&e.hi), at(&e.lo));
                assert!(high - low <= 1, "a tight enclosure");
                // Independently, in f64: C·exp(-m²/2n)/V_j.
                let p = table.fill as f64 * (-((m * m) as f64) / (2 * n) as f64).exp()
                    / table.weights[j] as f64;
                assert!(
                    (low as f64 / TWO_64 - p).abs() < 1e-12,
                    "box {j}: {low} vs {p}"
                );
                for gap in [1u64 << 26, 1] {
                    if let Some(word) = low.checked_sub(gap) {
                        assert!(accepts(&table, j, offset, word), "n {n}, m {m}, below");
                    }
                    if let Some(word) = high.checked_add(gap) {
                        assert!(!accepts(&table, j, offset, word), "n {n}, m {m}, above");
                    }
                }
            }
        }
    }
}
