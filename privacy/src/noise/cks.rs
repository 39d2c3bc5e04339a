//! The discrete Gaussian sampler of Canonne, Kamath and Steinke (NeurIPS
//! 2020, Algorithms 1–3) in machine integers.
//!
//! OpenDP implements the same algorithm over arbitrary-precision rationals
//! (`traits::samplers::cks20`) and asks OpenSSL for a few bytes per coin
//! flip; both cost about 20 µs per draw, which made noise 99% of a DP-SGD
//! step. Here the variance is an integer `n < 2^62`, so every rational the
//! algorithm compares is a ratio of `u128`s, and random bits come from a
//! ChaCha20 stream seeded by the operating system, drawn only as many at a
//! time as each comparison needs. Every step is the published one; the only
//! change is the representation, and each coin keeps its exact probability:
//!
//! * `Bernoulli(p/q)` compares a uniform integer below `q` (rejection
//!   sampling on `⌈log2 q⌉` bits, never a modulo) with `p`;
//! * `Bernoulli(γ/k)` inside Algorithm 1 is drawn as `Bernoulli(γ) ∧
//!   Bernoulli(1/k)`, which has the same law and never multiplies `q` by `k`;
//! * `exp(-a·b/q)` with `a·b ≥ 2^128` is split into factors
//!   `exp(-a·bᵢ/q)` with `Σbᵢ = b`, each representable.
//!
//! `noise::tests` checks the output against the exact probability mass
//! function with a χ² test and against OpenDP's sampler.

use rand::RngCore;

/// Largest variance (exclusive) the integer sampler takes: with `n < 2^62`,
/// `t = ⌊√n⌋ + 1 ≤ 2^31` and the denominator `2·n·t²` stays below `2^125`.
const MAX_VARIANCE: u128 = 1 << 62;

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

    /// `k` uniform bits, `1 <= k <= 64`. Unused bits of a word are
    /// independent of everything drawn, so discarding them keeps the
    /// output uniform.
    fn bits(&mut self, k: u32) -> u64 {
        debug_assert!((1..=64).contains(&k));
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

    /// Uniform on `0..m`, `m >= 1`, by rejection on the bit length of `m - 1`.
    fn below(&mut self, m: u128) -> u128 {
        if m <= 1 {
            return 0;
        }
        let width = 128 - (m - 1).leading_zeros();
        loop {
            let x = if width <= 64 {
                u128::from(self.bits(width))
            } else {
                u128::from(self.bits(64)) | (u128::from(self.bits(width - 64)) << 64)
            };
            if x < m {
                return x;
            }
        }
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

    /// `Bernoulli(exp(-γ))` for `γ = p/q <= 1` (CKS Algorithm 1): the
    /// parity of the first `K` with `Bernoulli(γ/K) = 0`.
    fn bernoulli_exp_at_most_one(&mut self, p: u128, q: u128) -> bool {
        let mut k: u128 = 1;
        while self.bernoulli(p, q) && self.bernoulli(1, k) {
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
            if !self.bernoulli_exp_at_most_one(1, 1) {
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

    /// Discrete Laplace with integer scale `t >= 1` (CKS Algorithm 2), as
    /// `(positive, magnitude)`: `P(x) ∝ exp(-|x|/t)`.
    pub(super) fn discrete_laplace(&mut self, t: u128) -> (bool, u128) {
        loop {
            let mut u = self.below(t);
            while !self.bernoulli_exp(u, t) {
                u = self.below(t);
            }
            // Geometric(1 - e^-1). A u64 counter cannot overflow: reaching
            // 2^64 needs 2^64 consecutive successes of probability 1/e.
            let mut v: u64 = 0;
            while self.bernoulli_exp_at_most_one(1, 1) {
                v += 1;
            }
            let positive = self.bits(1) == 1;
            let magnitude = u128::from(v) * t + u;
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
    /// `t = ⌊√n⌋ + 1`, the scale of the Laplace proposal.
    scale: u128,
    /// `2·n·t²`.
    denominator: u128,
}

impl DiscreteGaussian {
    pub(super) fn new(variance: u128) -> Option<Self> {
        if !(1..MAX_VARIANCE).contains(&variance) {
            return None;
        }
        // Exact: n < 2^62 fits a u64.
        let scale = u128::from((variance as u64).isqrt()) + 1;
        Some(Self {
            variance,
            scale,
            denominator: 2 * variance * scale * scale,
        })
    }

    /// One draw: a discrete Laplace candidate `y` with scale `t`, kept with
    /// probability `exp(-(|y| - n/t)² / 2n) = exp(-(|y|·t - n)² / (2·n·t²))`.
    pub(super) fn sample<R: RngCore>(&self, bits: &mut RandomBits<R>) -> i128 {
        loop {
            let (positive, magnitude) = bits.discrete_laplace(self.scale);
            // magnitude < 2^96 (see the counter there) and t <= 2^31.
            let distance = (magnitude * self.scale).abs_diff(self.variance);
            if bits.bernoulli_exp_product(distance, distance, self.denominator) {
                let value = magnitude as i128;
                return if positive { value } else { -value };
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn uniform_below_covers_the_range_evenly() {
        let mut rng = bits(1);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        for c in counts {
            assert_frequency(c, 70_000, 1.0 / 7.0, "below(7)");
        }
        let big = (1u128 << 100) + 12345;
        assert!((0..1000).all(|_| rng.below(big) < big));
        assert_eq!(rng.below(1), 0);
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
        let t = 3u128;
        let draws: Vec<(bool, u128)> = (0..trials).map(|_| rng.discrete_laplace(t)).collect();
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
