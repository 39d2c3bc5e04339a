//! Privacy-loss-distribution (PLD) accountant for the Poisson-subsampled
//! Gaussian mechanism, following Google's `dp_accounting.pld` (0.6.0)
//! `PLDAccountant` under the add-or-remove-one neighbouring relation.
//!
//! * PLD of one subsampled-Gaussian step, for the ADD and the REMOVE
//!   adjacency separately (they differ when q < 1): Koskela, Jälkö, Honkela,
//!   "Computing Tight Differential Privacy Guarantees Using FFT" (AISTATS
//!   2020) and the `dp_accounting` supplementary note
//!   "Privacy Loss Distributions". REMOVE: `μ_upper = (1-q)N(0,σ²) + qN(-1,σ²)`,
//!   `μ_lower = N(0,σ²)`; ADD: `μ_upper = N(0,σ²)`,
//!   `μ_lower = (1-q)N(0,σ²) + qN(1,σ²)`.
//! * Pessimistic discretization on the grid `k·d` (d = 1e-4 by default) by
//!   "connect the dots": Doroshenko, Ghazi, Kamath, Kumar, Manurangsi,
//!   "Connect the Dots: Tighter Discrete Approximations of Privacy Loss
//!   Distributions" (PETS 2022), Algorithm 1, using the exact hockey-stick
//!   divergence of the continuous mechanism at every grid point; the noise
//!   tails beyond `Φ⁻¹(½e⁻⁵⁰)` go to the `+∞` atom.
//! * Composition by FFT (Koskela et al. 2020): `T`-fold self-composition as
//!   an FFT power with Chernoff-bound truncation of the support, and
//!   heterogeneous segments by FFT convolution; both move at most 1e-15 of
//!   tail mass to `+∞` (pessimistic).
//! * ε for δ from the hockey-stick divergence
//!   `δ(ε) = p_∞ + Σ_{ℓ>ε} p_ℓ (1 - e^{ε-ℓ})`, taking the maximum over the
//!   ADD and REMOVE distributions.

use super::math::{log_a_times_exp_b_plus_c, norm_cdf, norm_log_cdf, norm_ppf_from_log};
use super::{DpError, Segment};
use realfft::RealFftPlanner;
use realfft::num_complex::Complex;
use std::f64::consts::LN_2;

/// Default discretization interval of the privacy-loss grid, as
/// `PLDAccountant(value_discretization_interval=1e-4)`.
pub const DEFAULT_DISCRETIZATION: f64 = 1e-4;
/// `log_mass_truncation_bound` of `from_gaussian_mechanism`.
const LOG_MASS_TRUNCATION_BOUND: f64 = -50.0;
/// `tail_mass_truncation` used by `compose` and `self_compose`.
const TAIL_MASS_TRUNCATION: f64 = 1e-15;
/// Largest grid (number of f64 points) any step may allocate; the FFT buffer
/// is 16 bytes per point, so this caps it at 512 MiB.
pub const MAX_GRID_POINTS: u64 = 1 << 25;

/// A discretized privacy loss distribution: mass `probs[i]` on loss
/// `(lower + i)·d`, plus `inf_mass` on `+∞`.
#[derive(Debug, Clone)]
struct Pmf {
    lower: i64,
    probs: Vec<f64>,
    inf_mass: f64,
}

impl Pmf {
    fn identity() -> Self {
        Self {
            lower: 0,
            probs: vec![1.0],
            inf_mass: 0.0,
        }
    }

    /// Hockey-stick divergence at `epsilon` (`_get_delta_for_epsilon`).
    fn delta_for_epsilon(&self, d: f64, epsilon: f64) -> f64 {
        let mut delta = self.inf_mass;
        for (i, &p) in self.probs.iter().enumerate() {
            let loss = (self.lower + i as i64) as f64 * d;
            if loss > epsilon {
                delta += -(epsilon - loss).exp_m1() * p;
            }
        }
        delta
    }

    /// Smallest ε ≥ 0 with hockey-stick divergence ≤ `delta`
    /// (`_get_epsilon_for_delta`).
    fn epsilon_for_delta(&self, d: f64, delta: f64) -> f64 {
        if self.inf_mass > delta {
            return f64::INFINITY;
        }
        let (mut mass_upper, mut mass_lower) = (self.inf_mass, 0.0f64);
        for (i, &p) in self.probs.iter().enumerate().rev() {
            let loss = (self.lower + i as i64) as f64 * d;
            if mass_upper > delta
                && mass_lower > 0.0
                && ((mass_upper - delta) / mass_lower).ln() >= loss
            {
                break;
            }
            mass_upper += p;
            mass_lower += (-loss).exp() * p;
            if mass_upper >= delta && mass_lower == 0.0 {
                return loss.max(0.0);
            }
        }
        if mass_upper <= mass_lower + delta {
            return 0.0;
        }
        ((mass_upper - delta) / mass_lower).ln()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adjacency {
    Add,
    Remove,
}

/// Privacy loss of the Poisson-subsampled Gaussian with sensitivity 1
/// (`GaussianPrivacyLoss` of `dp_accounting`).
struct SubsampledGaussianLoss {
    sigma: f64,
    q: f64,
    adjacency: Adjacency,
}

fn is_close(a: f64, b: f64) -> bool {
    // Python's math.isclose with its default rel_tol=1e-9.
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

impl SubsampledGaussianLoss {
    fn loss_without_subsampling_remove(&self, x: f64) -> f64 {
        (-0.5 - x) / (self.sigma * self.sigma)
    }

    fn inverse_without_subsampling_remove(&self, loss: f64) -> f64 {
        -0.5 - loss * self.sigma * self.sigma
    }

    fn loss_remove(&self, x: f64) -> f64 {
        let l = self.loss_without_subsampling_remove(x);
        if self.q == 1.0 {
            l
        } else {
            log_a_times_exp_b_plus_c(self.q, l, 1.0 - self.q)
        }
    }

    fn privacy_loss(&self, x: f64) -> f64 {
        match self.adjacency {
            Adjacency::Remove => self.loss_remove(x),
            Adjacency::Add => -self.loss_remove(-x),
        }
    }

    /// Largest x whose privacy loss is at least `loss`.
    fn inverse_privacy_loss(&self, loss: f64) -> f64 {
        let q = self.q;
        match self.adjacency {
            Adjacency::Remove => {
                if q == 1.0 {
                    return self.inverse_without_subsampling_remove(loss);
                }
                if is_close(loss, (-q).ln_1p()) {
                    return self.inverse_without_subsampling_remove(f64::NEG_INFINITY);
                }
                let l = log_a_times_exp_b_plus_c(1.0 / q, loss, 1.0 - 1.0 / q);
                self.inverse_without_subsampling_remove(l)
            }
            Adjacency::Add => {
                if q == 1.0 {
                    return 1.0 + self.inverse_without_subsampling_remove(loss);
                }
                if is_close(loss, -(-q).ln_1p()) {
                    return 1.0 + self.inverse_without_subsampling_remove(f64::INFINITY);
                }
                let l = -log_a_times_exp_b_plus_c(1.0 / q, -loss, 1.0 - 1.0 / q);
                1.0 + self.inverse_without_subsampling_remove(l)
            }
        }
    }

    fn mu_upper_cdf(&self, x: f64) -> f64 {
        let s = self.sigma;
        match self.adjacency {
            Adjacency::Add => norm_cdf(x / s),
            Adjacency::Remove if self.q == 1.0 => norm_cdf((x + 1.0) / s),
            Adjacency::Remove => {
                (1.0 - self.q) * norm_cdf(x / s) + self.q * norm_cdf((x + 1.0) / s)
            }
        }
    }

    fn mu_lower_log_cdf(&self, x: f64) -> f64 {
        let s = self.sigma;
        match self.adjacency {
            Adjacency::Remove => norm_log_cdf(x / s),
            Adjacency::Add if self.q == 1.0 => norm_log_cdf((x - 1.0) / s),
            Adjacency::Add => super::math::log_add(
                (-self.q).ln_1p() + norm_log_cdf(x / s),
                self.q.ln() + norm_log_cdf((x - 1.0) / s),
            ),
        }
    }

    /// Exact hockey-stick divergence of the continuous mechanism.
    fn delta_for_epsilon(&self, eps: f64) -> f64 {
        let q = self.q;
        if q < 1.0 {
            match self.adjacency {
                Adjacency::Add if eps >= -(-q).ln_1p() => return 0.0,
                Adjacency::Remove if eps <= (-q).ln_1p() => return (-eps.exp_m1()).clamp(0.0, 1.0),
                _ => {}
            }
        }
        let x = self.inverse_privacy_loss(eps);
        let delta = self.mu_upper_cdf(x) - (eps + self.mu_lower_log_cdf(x)).exp();
        if delta.is_nan() {
            0.0
        } else {
            delta.clamp(0.0, 1.0)
        }
    }

    /// Connect-the-dots PMF (`create_pmf_pessimistic_connect_dots_fixed_gap`).
    fn connect_the_dots(&self, d: f64) -> Result<Pmf, DpError> {
        let z = norm_ppf_from_log(LOG_MASS_TRUNCATION_BOUND - LN_2);
        let mut lower_x = self.sigma * z;
        let mut upper_x = -lower_x;
        match self.adjacency {
            Adjacency::Add => upper_x += 1.0,
            Adjacency::Remove => lower_x -= 1.0,
        }
        let eps_upper = self.privacy_loss(lower_x);
        let eps_lower = self.privacy_loss(upper_x);
        let k_hi = (eps_upper / d).ceil();
        let k_lo = (eps_lower / d).floor();
        let points = k_hi - k_lo + 1.0;
        if points.is_nan() || points > MAX_GRID_POINTS as f64 {
            return Err(DpError::PldTooLarge {
                points: points as u64,
                limit: MAX_GRID_POINTS,
            });
        }
        let (k_lo, k_hi) = (k_lo as i64, k_hi as i64);
        let mut deltas: Vec<f64> = (k_lo..=k_hi)
            .map(|k| self.delta_for_epsilon(k as f64 * d))
            .collect();
        if deltas.len() == 1 {
            return Ok(Pmf {
                lower: k_lo,
                probs: vec![1.0 - deltas[0]],
                inf_mass: deltas[0],
            });
        }
        // Hockey-stick divergence is non-increasing in ε; remove rounding noise.
        for i in 1..deltas.len() {
            deltas[i] = deltas[i].min(deltas[i - 1]);
        }
        let n = deltas.len();
        let (em1, e) = (d.exp_m1(), d.exp());
        let diff = |i: usize| deltas[i + 1] - deltas[i];
        let mut probs = vec![0.0; n];
        probs[0] = 1.0 - deltas[0] + diff(0) / em1;
        for (i, p) in probs.iter_mut().enumerate().take(n - 1).skip(1) {
            *p = (diff(i) - diff(i - 1) * e) / em1;
        }
        probs[n - 1] = diff(n - 2) / (-d).exp_m1();
        for p in &mut probs {
            *p = p.max(0.0);
        }
        Ok(Pmf {
            lower: k_lo,
            probs,
            inf_mass: deltas[n - 1],
        })
    }
}

/// Smallest even 5-smooth integer ≥ `n` (a fast length for a real FFT).
fn fast_len(n: usize) -> usize {
    2 * smooth_len(n.div_ceil(2).max(1))
}

/// Smallest 5-smooth integer ≥ `n`.
fn smooth_len(n: usize) -> usize {
    let mut best = n.next_power_of_two();
    let mut p5 = 1usize;
    while p5 < best {
        let mut p35 = p5;
        while p35 < best {
            let mut m = p35;
            while m < n {
                m *= 2;
            }
            best = best.min(m);
            p35 *= 3;
        }
        p5 *= 5;
    }
    best
}

fn check_size(points: usize) -> Result<(), DpError> {
    if points as u64 > MAX_GRID_POINTS {
        return Err(DpError::PldTooLarge {
            points: points as u64,
            limit: MAX_GRID_POINTS,
        });
    }
    Ok(())
}

/// `(lower, upper)` index bounds that hold all but `tail` of the mass of the
/// `times`-fold self-convolution of `probs` (Chernoff bound,
/// `dp_accounting.pld.common.compute_self_convolve_bounds`).
fn self_convolve_bounds(probs: &[f64], times: u64, tail: f64) -> (i64, i64) {
    let len = probs.len();
    let mut upper = (len as i64 - 1).saturating_mul(i64::try_from(times).unwrap_or(i64::MAX));
    let mut lower = 0i64;
    for o in (-20..0).chain(1..21) {
        let order = f64::from(o) / len as f64;
        // Σ_i p_i e^{i·order}; |i·order| ≤ 20, so the running power cannot
        // overflow, and its accumulated rounding (~len·ε) is irrelevant for a
        // truncation bound.
        let factor = order.exp();
        let (mut w, mut s) = (1.0f64, 0.0f64);
        for &p in probs {
            s += p * w;
            w *= factor;
        }
        let log_mgf = s.ln();
        let bound = (times as f64 * log_mgf + (2.0 / tail).ln()) / order;
        if !bound.is_finite() {
            continue;
        }
        if o > 0 {
            upper = upper.min(bound.ceil() as i64);
        } else {
            lower = lower.max(bound.floor() as i64);
        }
    }
    (lower, upper)
}

fn complex_powu(z: Complex<f64>, n: u64) -> Complex<f64> {
    if n <= 64 {
        // Binary exponentiation: exact enough and cheap for small n.
        let (mut base, mut acc, mut e) = (z, Complex::new(1.0, 0.0), n);
        while e > 0 {
            if e & 1 == 1 {
                acc *= base;
            }
            base *= base;
            e >>= 1;
        }
        acc
    } else {
        let (r, theta) = z.to_polar();
        if r == 0.0 {
            return Complex::new(0.0, 0.0);
        }
        Complex::from_polar((n as f64 * r.ln()).exp(), n as f64 * theta)
    }
}

/// Forward real FFT of `input` (length `n`, scratch: overwritten); `n/2 + 1` bins.
fn spectrum_of(input: &mut [f64], planner: &mut RealFftPlanner<f64>) -> Vec<Complex<f64>> {
    let fft = planner.plan_fft_forward(input.len());
    let mut out = fft.make_output_vec();
    fft.process(input, &mut out)
        .expect("buffer lengths come from the plan");
    out
}

/// Unnormalized inverse real FFT of a Hermitian half-spectrum, length `n`.
fn inverse_of(
    mut spectrum: Vec<Complex<f64>>,
    n: usize,
    planner: &mut RealFftPlanner<f64>,
) -> Vec<f64> {
    // The DC (and, for even n, Nyquist) bins of a real signal's spectrum are
    // real; drop the rounding noise that powers/products leave there.
    spectrum[0].im = 0.0;
    if n.is_multiple_of(2) {
        spectrum[n / 2].im = 0.0;
    }
    let fft = planner.plan_fft_inverse(n);
    let mut out = fft.make_output_vec();
    fft.process(&mut spectrum, &mut out)
        .expect("buffer lengths come from the plan");
    out
}

/// `times`-fold composition of `pmf` with itself (`DensePLDPmf.self_compose`).
fn self_compose(pmf: &Pmf, times: u64, planner: &mut RealFftPlanner<f64>) -> Result<Pmf, DpError> {
    let (lo, hi) = self_convolve_bounds(&pmf.probs, times, TAIL_MASS_TRUNCATION);
    let too_large = DpError::PldTooLarge {
        points: u64::MAX,
        limit: MAX_GRID_POINTS,
    };
    let out_len = usize::try_from(hi.saturating_sub(lo).saturating_add(1)).unwrap_or(usize::MAX);
    check_size(out_len.max(pmf.probs.len()))?;
    let lower = i64::try_from(times)
        .ok()
        .and_then(|t| pmf.lower.checked_mul(t))
        .and_then(|l| l.checked_add(lo))
        .ok_or(too_large)?;
    let n = fast_len(out_len.max(pmf.probs.len()));
    check_size(n)?;
    let mut real = vec![0.0; n];
    real[..pmf.probs.len()].copy_from_slice(&pmf.probs);
    let mut spectrum = spectrum_of(&mut real, planner);
    for z in &mut spectrum {
        *z = complex_powu(*z, times);
    }
    let buf = inverse_of(spectrum, n, planner);
    let scale = 1.0 / n as f64;
    let shift = lo.rem_euclid(n as i64) as usize;
    let probs = (0..out_len).map(|k| buf[(k + shift) % n] * scale).collect();
    let inf_mass = TAIL_MASS_TRUNCATION - (times as f64 * (-pmf.inf_mass).ln_1p()).exp_m1();
    Ok(Pmf {
        lower,
        probs,
        inf_mass,
    })
}

/// Composition of two PMFs by FFT convolution, then pessimistic truncation of
/// at most `TAIL_MASS_TRUNCATION` (`DensePLDPmf.compose`).
fn compose(a: &Pmf, b: &Pmf, planner: &mut RealFftPlanner<f64>) -> Result<Pmf, DpError> {
    let full = a.probs.len() + b.probs.len() - 1;
    check_size(full)?;
    let n = fast_len(full);
    let mut ra = vec![0.0; n];
    ra[..a.probs.len()].copy_from_slice(&a.probs);
    let mut rb = vec![0.0; n];
    rb[..b.probs.len()].copy_from_slice(&b.probs);
    let mut fa = spectrum_of(&mut ra, planner);
    let fb = spectrum_of(&mut rb, planner);
    for (x, y) in fa.iter_mut().zip(&fb) {
        *x *= *y;
    }
    let conv = inverse_of(fa, n, planner);
    let scale = 1.0 / n as f64;
    let probs: Vec<f64> = conv[..full].iter().map(|v| v * scale).collect();
    let inf_mass = a.inf_mass + b.inf_mass - a.inf_mass * b.inf_mass;
    // _truncate_tails with pessimistic_estimate=True.
    let half = TAIL_MASS_TRUNCATION / 2.0;
    let prefix = |it: &mut dyn Iterator<Item = &f64>| {
        let mut s = 0.0;
        let mut count = 0usize;
        for v in it {
            s += v;
            if s > half {
                return count;
            }
            count += 1;
        }
        count
    };
    let left = prefix(&mut probs.iter());
    let right = (full - prefix(&mut probs.iter().rev())).max(left + 1);
    let left_mass: f64 = probs[..left].iter().sum();
    let right_mass: f64 = probs[right..].iter().sum();
    let mut kept = probs[left..right].to_vec();
    kept[0] += left_mass;
    Ok(Pmf {
        lower: a.lower + b.lower + left as i64,
        probs: kept,
        inf_mass: inf_mass + right_mass,
    })
}

/// PLD accountant (tight; the default for users). Composes heterogeneous
/// segments of the Poisson-subsampled Gaussian under add-or-remove-one
/// adjacency and reports the worse of the ADD and REMOVE distributions.
#[derive(Debug, Clone)]
pub struct PldAccountant {
    discretization: f64,
    remove: Pmf,
    /// `None` while the distribution is symmetric (only q = 1 segments so far).
    add: Option<Pmf>,
    empty: bool,
}

impl Default for PldAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl PldAccountant {
    /// Discretization interval [`DEFAULT_DISCRETIZATION`] (1e-4).
    pub fn new() -> Self {
        Self {
            discretization: DEFAULT_DISCRETIZATION,
            remove: Pmf::identity(),
            add: None,
            empty: true,
        }
    }

    /// Custom (positive, finite) discretization interval; coarser is faster
    /// and looser, still an upper bound.
    pub fn with_discretization(discretization: f64) -> Result<Self, DpError> {
        if !(discretization.is_finite() && discretization > 0.0) {
            return Err(DpError::InvalidDiscretization(discretization));
        }
        Ok(Self {
            discretization,
            ..Self::new()
        })
    }

    pub fn discretization(&self) -> f64 {
        self.discretization
    }

    /// Number of grid points currently held (largest of ADD and REMOVE).
    pub fn grid_points(&self) -> usize {
        self.remove
            .probs
            .len()
            .max(self.add.as_ref().map_or(0, |a| a.probs.len()))
    }

    /// Adds `segment.steps()` steps of the subsampled Gaussian. For q < 1 the
    /// independent ADD and REMOVE distributions are built on two threads.
    pub fn compose(&mut self, segment: &Segment) -> Result<(), DpError> {
        let (q, sigma, steps) = (
            segment.sampling_rate(),
            segment.noise_multiplier(),
            segment.steps(),
        );
        let d = self.discretization;
        let first = self.empty;
        let segment_pmf = |adjacency, planner: &mut RealFftPlanner<f64>| {
            let single = SubsampledGaussianLoss {
                sigma,
                q,
                adjacency,
            }
            .connect_the_dots(d)?;
            self_compose(&single, steps, planner)
        };
        if q == 1.0 {
            // Symmetric: ADD and REMOVE coincide for this segment.
            let mut planner = RealFftPlanner::new();
            let seg = segment_pmf(Adjacency::Remove, &mut planner)?;
            if first {
                self.remove = seg;
            } else {
                if let Some(add) = &self.add {
                    self.add = Some(compose(add, &seg, &mut planner)?);
                }
                self.remove = compose(&self.remove, &seg, &mut planner)?;
            }
        } else {
            let side = |adjacency, previous: &Pmf| {
                let mut planner = RealFftPlanner::new();
                let seg = segment_pmf(adjacency, &mut planner)?;
                if first {
                    Ok(seg)
                } else {
                    compose(previous, &seg, &mut planner)
                }
            };
            let previous_add = self.add.as_ref().unwrap_or(&self.remove);
            let previous_remove = &self.remove;
            let (remove, add) = std::thread::scope(|scope| {
                let add = scope.spawn(|| side(Adjacency::Add, previous_add));
                let remove = side(Adjacency::Remove, previous_remove);
                (
                    remove,
                    add.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                )
            });
            self.remove = remove?;
            self.add = Some(add?);
        }
        self.empty = false;
        Ok(())
    }

    /// Smallest ε with δ(ε) ≤ `delta` for both adjacencies.
    pub fn epsilon(&self, delta: f64) -> Result<f64, DpError> {
        super::check_delta(delta)?;
        let d = self.discretization;
        let eps = self.remove.epsilon_for_delta(d, delta);
        Ok(match &self.add {
            Some(add) => eps.max(add.epsilon_for_delta(d, delta)),
            None => eps,
        })
    }

    /// Hockey-stick divergence δ(ε), the max over both adjacencies.
    pub fn delta(&self, epsilon: f64) -> Result<f64, DpError> {
        super::check_epsilon(epsilon)?;
        let d = self.discretization;
        let delta = self.remove.delta_for_epsilon(d, epsilon);
        Ok(match &self.add {
            Some(add) => delta.max(add.delta_for_epsilon(d, epsilon)),
            None => delta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_len_is_smooth_and_minimal() {
        assert_eq!(fast_len(1), 2);
        assert_eq!(fast_len(7), 8);
        assert_eq!(fast_len(11), 12);
        assert_eq!(fast_len(1001), 1024);
        assert_eq!(fast_len(1025), 1080);
        for n in 1..2000 {
            let m = fast_len(n);
            assert!(m >= n && m.is_multiple_of(2));
            let mut r = m;
            for p in [2, 3, 5] {
                while r.is_multiple_of(p) {
                    r /= p;
                }
            }
            assert_eq!(r, 1, "{m} not 5-smooth");
        }
    }

    #[test]
    fn single_step_pmf_is_a_distribution() {
        for adjacency in [Adjacency::Add, Adjacency::Remove] {
            let pmf = SubsampledGaussianLoss {
                sigma: 1.0,
                q: 0.01,
                adjacency,
            }
            .connect_the_dots(1e-3)
            .unwrap();
            let total: f64 = pmf.probs.iter().sum::<f64>() + pmf.inf_mass;
            assert!((total - 1.0).abs() < 1e-9, "{adjacency:?}: {total}");
            assert!(pmf.probs.iter().all(|p| *p >= 0.0));
        }
    }

    #[test]
    fn full_batch_matches_analytic_gaussian() {
        // q = 1, T steps of N(0, σ²) = one Gaussian with σ/√T; Balle & Wang 2018:
        // δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2), μ = √T/σ.
        let (sigma, steps, eps) = (2.0, 16u64, 1.0);
        let mut acc = PldAccountant::new();
        acc.compose(&Segment::new(1.0, sigma, steps).unwrap())
            .unwrap();
        let mu = (steps as f64).sqrt() / sigma;
        let exact = norm_cdf(-eps / mu + mu / 2.0) - eps.exp() * norm_cdf(-eps / mu - mu / 2.0);
        let got = acc.delta(eps).unwrap();
        assert!(got >= exact * (1.0 - 1e-9), "pessimistic: {got} < {exact}");
        assert!((got - exact) / exact < 1e-3, "{got} vs {exact}");
    }
}
