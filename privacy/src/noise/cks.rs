//! The discrete Gaussian sampler of Canonne, Kamath and Steinke (NeurIPS
//! 2020, Algorithms 1–3) in machine integers.
//!
//! OpenDP implements the same algorithm over arbitrary-precision rationals
//! (`traits::samplers::cks20`) and asks OpenSSL for a few bytes per coin
//! flip; both cost about 20 µs per draw, which made noise 99% of a DP-SGD
//! step. Here the variance is an integer `n < 2^62`, so every rational the
//! algorithm compares is a ratio of `u128`s, and random bits come from a
//! ChaCha stream seeded by the operating system, drawn only as many at a
//! time as each comparison needs. Every step is the published one; the only
//! changes are the representation and the choice of `t` (below), and each
//! coin keeps its exact probability:
//!
//! * `Bernoulli(p/q)` compares a uniform binary fraction with the binary
//!   expansion of `p/q`, one digit at a time until they differ; for
//!   `Bernoulli(1/k)` with small `k`, 64 digits at a time from a table;
//! * `Bernoulli(γ/k)` inside Algorithm 1 is drawn as `Bernoulli(γ) ∧
//!   Bernoulli(1/k)`, which has the same law and never multiplies `q` by `k`;
//! * `exp(-a·b/q)` with `a·b ≥ 2^128` is split into factors
//!   `exp(-a·bᵢ/q)` with `Σbᵢ = b`, each representable;
//! * the Laplace proposal's scale `t` is a power of two near `σ` instead of
//!   `⌊σ⌋ + 1`. Algorithm 3 is exact for every `t > 0` (the acceptance
//!   probability is the target over the proposal, divided by its maximum
//!   `exp(σ²/2t²)`); `t` only sets how often a candidate is kept: at least
//!   65% of the time for `σ/t` in `[1/√2, √2]`, against 76% at `t ≈ σ`.
//!   In exchange `U ~ Uniform{0..t}` is `log2 t` bits with no rejection and
//!   `Bernoulli(U/t)` is one comparison of such a word with `U`.
//!
//! `noise::tests` checks the output against the exact probability mass
//! function with a χ² test and against OpenDP's sampler.

use rand::RngCore;

/// Largest variance (exclusive) the integer sampler takes: with `n < 2^62`,
/// `t ≤ 2^31`, `t² ≤ 2n` and the denominator `2·n·t²` stays below `2^126`.
const MAX_VARIANCE: u128 = 1 << 62;

/// `k` below which [`RandomBits::bernoulli_one_over`] reads `1/k` from
/// [`ONE_OVER`].
const ONE_OVER_TABLE: u128 = 64;

/// Binary digits of `1/k` per entry of [`ONE_OVER`].
const ONE_OVER_BITS: u32 = 16;

/// `(⌊2^16 / k⌋, 2^16 mod k)` for `k < ONE_OVER_TABLE`: `1/k` is
/// `(digits + rest/k) / 2^16`.
const ONE_OVER: [(u16, u16); ONE_OVER_TABLE as usize] = {
    let mut table = [(0u16, 0u16); ONE_OVER_TABLE as usize];
    let mut k = 2;
    while k < ONE_OVER_TABLE {
        let whole = 1u128 << ONE_OVER_BITS;
        table[k as usize] = ((whole / k) as u16, (whole % k) as u16);
        k += 1;
    }
    table
};

/// `(⌊2^64 / m!⌋, 2^64 mod m!, m!)` for `m <= 20` (`20! < 2^62`): `1/m!` is
/// `(digits + rest/m!) / 2^64`.
const INVERSE_FACTORIALS: [(u64, u64, u64); 21] = {
    let mut table = [(0u64, 0u64, 1u64); 21];
    let mut m = 1;
    let mut factorial: u128 = 1;
    while m < 21 {
        factorial *= m as u128;
        let whole = 1u128 << 64;
        table[m] = (
            (whole / factorial) as u64,
            (whole % factorial) as u64,
            factorial as u64,
        );
        m += 1;
    }
    table
};

/// A source of uniform bits that hands out exactly as many as asked for.
pub(super) struct RandomBits<R> {
    rng: R,
    pool: u64,
    left: u32,
}

impl<R: RngCore> RandomBits<R> {
    pub(super) fn new(rng: R) -> Self {
        Self {
            rng,
            pool: 0,
            left: 0,
        }
    }

    /// `k` uniform bits, `0 <= k <= 64`. Unused bits of a word are
    /// independent of everything drawn, so discarding them keeps the
    /// output uniform.
    pub(super) fn bits(&mut self, k: u32) -> u64 {
        debug_assert!(k <= 64);
        if k == 0 {
            return 0;
        }
        if k == 64 {
            return self.rng.next_u64();
        }
        if k > self.left {
            self.pool = self.rng.next_u64();
            self.left = 64;
        }
        let out = self.pool & ((1u64 << k) - 1);
        self.pool >>= k;
        self.left -= k;
        out
    }

    /// `Bernoulli(p/q)` for `q < 2^127`: a uniform binary fraction compared
    /// with the binary expansion of `p/q`, one digit at a time, until they
    /// differ (two digits on average, instead of `log2 q` bits for a
    /// uniform integer below `q`).
    fn bernoulli(&mut self, p: u128, q: u128) -> bool {
        debug_assert!((1..1 << 127).contains(&q));
        if p == 0 {
            return false;
        }
        if p >= q {
            return true;
        }
        let mut remainder = p;
        loop {
            remainder <<= 1;
            let digit = remainder >= q;
            if digit {
                remainder -= q;
            }
            let coin = self.bits(1) == 1;
            if coin != digit {
                // The fraction is below p/q exactly when it has the 0
                // where p/q has the 1.
                return digit;
            }
            if remainder == 0 {
                // p/q ended and every digit so far matched: the fraction
                // is at least p/q.
                return false;
            }
        }
    }

    /// `Bernoulli(1/k)`, `k >= 1`, for Algorithm 1's loop counter: a 16-bit
    /// word against the first 16 binary digits of `1/k` (from a table for
    /// small `k`), one comparison instead of a digit at a time. The word
    /// decides unless it equals those digits (probability `2^-16`); then
    /// the rest of the expansion does.
    fn bernoulli_one_over(&mut self, k: u128) -> bool {
        match k {
            0 | 1 => true,
            2 => self.bits(1) == 1,
            3..ONE_OVER_TABLE => {
                let (digits, rest) = ONE_OVER[k as usize];
                let word = self.bits(ONE_OVER_BITS) as u16;
                if word != digits {
                    return word < digits;
                }
                self.bernoulli(u128::from(rest), k)
            }
            _ => self.bernoulli(1, k),
        }
    }

    /// `Bernoulli(exp(-γ))` for `γ = p/q <= 1` (CKS Algorithm 1): the
    /// parity of the first `K` with `Bernoulli(γ/K) = 0`.
    fn bernoulli_exp_at_most_one(&mut self, p: u128, q: u128) -> bool {
        let mut k: u128 = 1;
        while self.bernoulli(p, q) && self.bernoulli_one_over(k) {
            k += 1;
        }
        k % 2 == 1
    }

    /// `Bernoulli(exp(-1))`: Algorithm 1 at `γ = 1`, whose counter has
    /// `P(K > m) = 1/m!`, with every coin of the loop read off one uniform
    /// `U`: `K` is the first `m >= 2` with `U >= 1/m!`. A 64-bit word
    /// settles each comparison unless it equals the first 64 digits of
    /// `1/m!` (then the rest of `1/m!`'s expansion does, on fresh bits).
    /// The word's low half is drawn only when its high half ties the high
    /// half of those digits (probability about `2^-32`): bits are
    /// independent, so drawing them late changes nothing but the ChaCha
    /// output spent, which halves;
    /// past `1/20!` (probability `4·10^-19`), `U·20!` is uniform again and
    /// the loop goes on with fresh `Bernoulli(1/m)` coins.
    fn bernoulli_exp_minus_one(&mut self) -> bool {
        let high = self.bits(32);
        let mut word: Option<u64> = None;
        // An index loop: `enumerate().skip(2)` cost a twentieth of a draw.
        #[allow(clippy::needless_range_loop)]
        for m in 2..INVERSE_FACTORIALS.len() {
            let (digits, rest, factorial) = INVERSE_FACTORIALS[m];
            let at_least = if high != digits >> 32 {
                high > digits >> 32
            } else {
                let word = match word {
                    Some(word) => word,
                    None => *word.insert((high << 32) | self.bits(32)),
                };
                word > digits
                    || (word == digits && !self.bernoulli(u128::from(rest), u128::from(factorial)))
            };
            if at_least {
                return m % 2 == 1;
            }
        }
        let mut k = INVERSE_FACTORIALS.len() as u128;
        while self.bernoulli_one_over(k) {
            k += 1;
        }
        k % 2 == 1
    }

    /// Algorithm 1 for `γ = u / 2^bits < 1`, where `Bernoulli(γ)` is
    /// whether a uniform `bits`-bit word is below `u`.
    fn bernoulli_exp_dyadic(&mut self, u: u64, bits: u32) -> bool {
        let mut k: u128 = 1;
        while self.bits(bits) < u && self.bernoulli_one_over(k) {
            k += 1;
        }
        k % 2 == 1
    }

    /// `Bernoulli(exp(-p/q))` for any `p/q >= 0`: `⌊γ⌋` coins of
    /// `exp(-1)`, then one of `exp(-(γ - ⌊γ⌋))`.
    pub(super) fn bernoulli_exp(&mut self, p: u128, q: u128) -> bool {
        if p < q {
            return self.bernoulli_exp_at_most_one(p, q);
        }
        let (whole, fraction) = (p / q, p % q);
        for _ in 0..whole {
            if !self.bernoulli_exp_minus_one() {
                return false;
            }
        }
        self.bernoulli_exp_at_most_one(fraction, q)
    }

    /// `Bernoulli(exp(-a·b/q))` without forming `a·b` when it would overflow:
    /// `exp(-a·b/q) = Π exp(-a·bᵢ/q)` for any split `b = Σ bᵢ`.
    pub(super) fn bernoulli_exp_product(&mut self, a: u128, mut b: u128, q: u128) -> bool {
        if let Some(p) = a.checked_mul(b) {
            return self.bernoulli_exp(p, q);
        }
        let step = u128::MAX / a;
        while b > step {
            if !self.bernoulli_exp(a * step, q) {
                return false;
            }
            b -= step;
        }
        self.bernoulli_exp(a * b, q)
    }

    /// `x >= 0` with `P(x) ∝ exp(-x/t)` for `t = 2^scale_bits`,
    /// `scale_bits <= 63`: the magnitude of CKS Algorithm 2, `x = U + t·V`.
    pub(super) fn geometric(&mut self, scale_bits: u32) -> u128 {
        debug_assert!(scale_bits < 64);
        // U uniform on 0..t, kept with probability exp(-U/t).
        let mut u = self.bits(scale_bits);
        while !self.bernoulli_exp_dyadic(u, scale_bits) {
            u = self.bits(scale_bits);
        }
        // Geometric(1 - e^-1). A u64 counter cannot overflow: reaching
        // 2^64 needs 2^64 consecutive successes of probability 1/e.
        let mut v: u64 = 0;
        while self.bernoulli_exp_minus_one() {
            v += 1;
        }
        (u128::from(v) << scale_bits) | u128::from(u)
    }

    /// Discrete Laplace with scale `t = 2^scale_bits`, `scale_bits <= 63`
    /// (CKS Algorithm 2), as `(positive, magnitude)`: `P(x) ∝ exp(-|x|/t)`.
    pub(super) fn discrete_laplace(&mut self, scale_bits: u32) -> (bool, u128) {
        loop {
            let magnitude = self.geometric(scale_bits);
            let positive = self.bits(1) == 1;
            if positive || magnitude != 0 {
                return (positive, magnitude);
            }
        }
    }
}

/// The discrete Gaussian N_Z(0, n) for an integer variance
/// `1 <= n < MAX_VARIANCE`, with the constants of CKS Algorithm 3.
#[derive(Debug, Clone, Copy)]
pub(super) struct DiscreteGaussian {
    variance: u128,
    /// `log2 t`, the Laplace proposal's scale `t`: the power of two nearest
    /// `σ = √n` on a log scale, so `σ/t ∈ [1/√2, √2)`.
    scale_bits: u32,
    /// `2·n·t²`.
    denominator: u128,
}

impl DiscreteGaussian {
    pub(super) fn new(variance: u128) -> Option<Self> {
        if !(1..MAX_VARIANCE).contains(&variance) {
            return None;
        }
        // With 2^l <= n < 2^(l+1), log2 σ is in [l/2, (l+1)/2).
        let l = variance.ilog2();
        let scale_bits = l.div_ceil(2);
        Some(Self {
            variance,
            scale_bits,
            denominator: variance << (2 * scale_bits + 1),
        })
    }

    /// One draw: a discrete Laplace candidate `y` with scale `t`, kept with
    /// probability `exp(-(|y| - n/t)² / 2n) = exp(-(|y|·t - n)² / (2·n·t²))`.
    pub(super) fn sample<R: RngCore>(&self, bits: &mut RandomBits<R>) -> i128 {
        loop {
            let (positive, magnitude) = bits.discrete_laplace(self.scale_bits);
            // magnitude < 2^95 (see the counter there) and t <= 2^31.
            let distance = (magnitude << self.scale_bits).abs_diff(self.variance);
            if bits.bernoulli_exp_product(distance, distance, self.denominator) {
                let value = magnitude as i128;
                return if positive { value } else { -value };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scripted::Words;
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn bits(seed: u64) -> RandomBits<ChaCha20Rng> {
        RandomBits::new(ChaCha20Rng::seed_from_u64(seed))
    }

    /// |observed frequency - p| within five binomial standard errors.
    fn assert_frequency(hits: usize, trials: usize, p: f64, what: &str) {
        let freq = hits as f64 / trials as f64;
        let se = (p * (1.0 - p) / trials as f64).sqrt().max(1e-9);
        assert!(
            (freq - p).abs() < 5.0 * se,
            "{what}: frequency {freq}, expected {p}"
        );
    }

    #[test]
    fn exp_minus_one_coins_and_their_counter_have_algorithm_one_law() {
        let mut rng = bits(6);
        let trials = 200_000;
        let hits = (0..trials)
            .filter(|_| rng.bernoulli_exp_minus_one())
            .count();
        assert_frequency(hits, trials, (-1f64).exp(), "exp(-1)");
        // The table holds 1/m! exactly as digits + rest/m!.
        for (m, &(digits, rest, factorial)) in INVERSE_FACTORIALS.iter().enumerate().skip(2) {
            let exact: u128 = (1..=m as u128).product();
            assert_eq!(u128::from(factorial), exact);
            assert_eq!(
                u128::from(digits) * exact + u128::from(rest),
                1u128 << 64,
                "1/{m}!"
            );
        }
    }

    #[test]
    fn the_exp_minus_one_word_drawn_in_halves_decides_as_the_whole_word() {
        // For U = W / 2^64 just above 1/m!, K is m: W's high half alone
        // rules out every m' < m; at m it ties the high half of 1/m!'s
        // digits (0 from 13! > 2^32 on), so the low half is drawn and
        // decides.
        for (m, &(digits, _, _)) in INVERSE_FACTORIALS.iter().enumerate().skip(2) {
            let w = digits + 1;
            // `bits(32)` takes a fresh word's low half first, then its
            // high half: W's high half comes out first.
            let fresh = w.rotate_right(32);
            let mut rng = RandomBits::new(Words::new(&[fresh], None));
            assert_eq!(rng.bernoulli_exp_minus_one(), m % 2 == 1, "1/{m}!");
        }
    }

    #[test]
    fn bernoulli_exp_has_probability_exp_minus_gamma() {
        let mut rng = bits(2);
        let trials = 40_000;
        for (p, q) in [
            (0u128, 1u128),
            (1, 3),
            (1, 1),
            (5, 2),
            (7, 2),
            (1 << 100, 3 << 99),
        ] {
            let gamma = p as f64 / q as f64;
            let hits = (0..trials).filter(|_| rng.bernoulli_exp(p, q)).count();
            assert_frequency(hits, trials, (-gamma).exp(), &format!("exp(-{p}/{q})"));
        }
    }

    #[test]
    fn split_products_have_the_probability_of_the_whole() {
        let mut rng = bits(3);
        let trials = 40_000;
        // a·b = 2^129 overflows; a·b/q = 8/3, reached in three factors.
        let (a, b, q) = (1u128 << 66, 1u128 << 62, (1u128 << 126) + (1u128 << 125));
        let gamma = (a as f64) * (b as f64) / q as f64;
        let hits = (0..trials)
            .filter(|_| rng.bernoulli_exp_product(a, b, q))
            .count();
        assert_frequency(hits, trials, (-gamma).exp(), "split product");
    }

    #[test]
    fn discrete_laplace_has_the_right_tail() {
        let mut rng = bits(4);
        let trials = 50_000;
        let t = 4u128;
        let draws: Vec<(bool, u128)> = (0..trials).map(|_| rng.discrete_laplace(2)).collect();
        // P(|X| >= k) for k >= 1 is 2 e^{-k/t} / (1 + e^{-1/t}).
        let r = (-1.0 / t as f64).exp();
        for k in [1u128, 3, 6] {
            let hits = draws.iter().filter(|(_, m)| *m >= k).count();
            let p = 2.0 * r.powi(k as i32) / (1.0 + r);
            assert_frequency(hits, trials, p, &format!("P(|X| >= {k})"));
        }
        let positive = draws.iter().filter(|(s, m)| *s && *m > 0).count();
        let negative = draws.iter().filter(|(s, _)| !*s).count();
        assert_frequency(positive, positive + negative, 0.5, "sign");
    }
}
