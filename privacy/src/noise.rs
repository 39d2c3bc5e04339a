//! Noise for differential privacy, drawn exactly on an integer lattice.
//!
//! A textbook Gaussian sampler (Box–Muller or ziggurat over `f64`) leaks
//! through the gaps and rounding of floating-point arithmetic: Mironov
//! (CCS 2012) recovered the exact input from such "noisy" outputs. Cohort
//! never adds floating-point noise. A vector is rounded to a grid `g = 2^k`,
//! a *discrete* Gaussian on that grid is added, and the integer result is
//! scaled back: OpenDP's construction (`measurements/noise`), with the grid
//! chosen so that the noise spans about 2^24 grid points.
//!
//! The discrete Gaussian is drawn from a table of boxes with rejection
//! ([`boxes`]): about 25 ns a draw at DP-SGD's variances, exact (each
//! candidate is kept by comparing a uniform number with its acceptance
//! probability, in `f64` where a proven margin decides and on rigorous
//! fixed-point enclosures, [`exact`], where it does not). Below a variance
//! of 1024 the rejection sampler of Canonne, Kamath and Steinke (NeurIPS
//! 2020) in `u128` arithmetic ([`cks`]; about 90 ns a draw, against 20 µs
//! for OpenDP's arbitrary-precision version of the same algorithm with bits
//! from OpenSSL) draws it. Both take their bits from a ChaCha12 stream
//! seeded by the operating system. OpenDP's sampler still serves the
//! variances outside the integer samplers' range, and the tests check them
//! against each other and against the exact distribution.
//!
//! **Accounting.** Rounding to the grid widens the L2 sensitivity of a
//! `d`-vector from `Δ` to at most `Δ + g·√d` (each coordinate moves by less
//! than `g/2`), so [`add_gaussian`] draws noise of standard deviation
//! `z·(Δ + g·√d)` for the multiplier `z` the accountant assumed, and the
//! variance in grid units is rounded up to an integer. The accountants
//! ([`crate::dp`]) treat the result as the continuous Gaussian mechanism:
//! with 2^24 grid points per standard deviation the discrete Gaussian is
//! within a negligible distance of it (Canonne et al., Thm. 7: the Rényi
//! divergences coincide up to a factor `1 + O(e^{-2π²σ²})`, σ in grid units).

mod boxes;
mod cks;
mod exact;

use boxes::BoxGaussian;
use cks::RandomBits;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use std::sync::Arc;

/// The noise's coins: ChaCha with 12 rounds, seeded by the operating
/// system, the generator `rand` ships as its `StdRng`. The best published
/// attacks on ChaCha reach 7 rounds; 12 keeps a wide margin and makes the
/// stream, a sixth of a draw's time at 20 rounds, cheaper.
type NoiseRng = ChaCha12Rng;

/// Failure of the noise sampler.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("noise standard deviation must be finite and >= 0, got {0}")]
    InvalidScale(f64),
    #[error("sensitivity must be finite and > 0, got {0}")]
    InvalidSensitivity(f64),
    #[error("cannot add noise to a non-finite value at index {0}")]
    NonFinite(usize),
    #[error("value {value} at index {index} is too large to round to the noise grid {grid:e}")]
    OutOfRange { index: usize, value: f32, grid: f64 },
    #[error(
        "noise multiplier {noise_multiplier} over {dimension} coordinates is beyond the \
         sampler's range"
    )]
    BeyondRange {
        noise_multiplier: f64,
        dimension: usize,
    },
    #[error("noise for {expected} values cannot go on {got}")]
    Length { expected: usize, got: usize },
    #[error("every noise vector drawn ahead was used")]
    Exhausted,
    #[error("OpenDP sampler failed: {0}")]
    Sampler(String),
}

/// Grid points per standard deviation of noise, as a power of two: the
/// grid of [`add_gaussian`] is `2^(⌊log2 std⌋ − GRID_BITS)`. Finer grids
/// cost more random bits; coarser ones widen the sensitivity by more
/// (`g·√d` is `z·√d·2^-24` of the noise: 0.06% for 10^6 coordinates at
/// `z = 10`, and the noise is raised to match).
pub const GRID_BITS: i32 = 24;

/// The Gaussian mechanism on a vector with L2 sensitivity `sensitivity`:
/// `values + N(0, (noise_multiplier · sensitivity)²)` coordinate-wise,
/// drawn exactly on a grid (see the module documentation), widened so
/// that the grid costs no privacy, and spread over the machine's cores.
///
/// The result is rounded to `f32` once, after the noise is added.
pub fn add_gaussian(
    values: &[f32],
    noise_multiplier: f64,
    sensitivity: f64,
) -> Result<Vec<f32>, NoiseError> {
    let mechanism = LatticeGaussian::new(values.len(), noise_multiplier, sensitivity)?;
    mechanism.check(values)?;
    let noise = mechanism.draw()?;
    mechanism.apply(values, noise)
}

/// Values per piece of work in [`LatticeGaussian::draw`]: about 0.3 ms of
/// draws.
const DRAW_PIECE: usize = 4096;

/// [`add_gaussian`] for vectors of one length, split in two: the noise does
/// not depend on the values, so it can be drawn before they exist
/// ([`NoiseAhead`]) and added when they do.
#[derive(Debug, Clone)]
pub struct LatticeGaussian {
    len: usize,
    grid: f64,
    /// `None` when the standard deviation is zero: the mechanism adds
    /// nothing.
    noise: Option<DiscreteGaussian>,
}

/// Noise for one vector, in grid units, from [`LatticeGaussian::draw`].
/// [`LatticeGaussian::apply`] takes it by value: no noise is used twice.
/// Whoever knows the noise can take it off the result, so it neither
/// prints nor clones.
pub struct LatticeNoise(Vec<i64>);

impl std::fmt::Debug for LatticeNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatticeNoise({} values)", self.0.len())
    }
}

impl LatticeGaussian {
    /// The mechanism for vectors of `len` values.
    pub fn new(len: usize, noise_multiplier: f64, sensitivity: f64) -> Result<Self, NoiseError> {
        if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(NoiseError::InvalidScale(noise_multiplier));
        }
        if !(sensitivity.is_finite() && sensitivity > 0.0) {
            return Err(NoiseError::InvalidSensitivity(sensitivity));
        }
        let std = noise_multiplier * sensitivity;
        if std == 0.0 || len == 0 {
            return Ok(Self {
                len,
                grid: 1.0,
                noise: None,
            });
        }
        if !std.is_normal() {
            return Err(NoiseError::InvalidScale(std));
        }
        let exponent = (std.log2().floor() as i32 - GRID_BITS).clamp(-1000, 1000);
        let grid = 2f64.powi(exponent);
        let widened = std + noise_multiplier * grid * (len as f64).sqrt();
        // +1 covers the rounding of the f64 square: the variance only grows.
        let variance = ((widened / grid).powi(2).ceil() + 1.0) as u128;
        let Some(noise) = DiscreteGaussian::new(variance) else {
            return Err(NoiseError::BeyondRange {
                noise_multiplier,
                dimension: len,
            });
        };
        Ok(Self {
            len,
            grid,
            noise: Some(noise),
        })
    }

    /// Fresh noise for one vector, from a CSPRNG seeded by the operating
    /// system, spread over the machine's cores ([`draw_in_pieces`]).
    pub fn draw(&self) -> Result<LatticeNoise, NoiseError> {
        let Some(noise) = &self.noise else {
            return Ok(LatticeNoise(Vec::new()));
        };
        draw_in_pieces(noise, self.len).map(LatticeNoise)
    }

    /// Whether `values` can take this mechanism's noise: the right length,
    /// finite, and within the grid's range.
    pub fn check(&self, values: &[f32]) -> Result<(), NoiseError> {
        if values.len() != self.len {
            return Err(NoiseError::Length {
                expected: self.len,
                got: values.len(),
            });
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(NoiseError::NonFinite(i));
        }
        if self.noise.is_none() {
            return Ok(());
        }
        let limit = 2f64.powi(62);
        if let Some(index) = values
            .iter()
            .position(|&v| (f64::from(v) / self.grid).abs() >= limit)
        {
            return Err(NoiseError::OutOfRange {
                index,
                value: values[index],
                grid: self.grid,
            });
        }
        Ok(())
    }

    /// `values` rounded to the grid, plus `noise`, back in `f32`.
    pub fn apply(&self, values: &[f32], noise: LatticeNoise) -> Result<Vec<f32>, NoiseError> {
        self.check(values)?;
        if self.noise.is_none() {
            return Ok(values.to_vec());
        }
        if noise.0.len() != values.len() {
            return Err(NoiseError::Length {
                expected: values.len(),
                got: noise.0.len(),
            });
        }
        let grid = self.grid;
        // |on_grid| < 2^62 (checked above) and |noise| < 2^63: the sum is
        // exact in i128, and in i64 unless both are near their bounds.
        Ok(values
            .iter()
            .zip(noise.0)
            .map(|(&v, n)| {
                let on_grid = (f64::from(v) / grid).round() as i64;
                let noisy = match on_grid.checked_add(n) {
                    Some(sum) => sum as f64,
                    None => (i128::from(on_grid) + i128::from(n)) as f64,
                };
                (noisy * grid) as f32
            })
            .collect())
    }
}

/// The noise of `count` uses of a [`LatticeGaussian`], drawn on a
/// background thread at most two vectors ahead of their use, so that
/// DP-SGD draws a step's noise while it computes the gradients it goes on.
/// Dropping it stops the thread after the vector in progress.
pub struct NoiseAhead {
    mechanism: LatticeGaussian,
    left: usize,
    ahead: Option<(NoiseReceiver, std::thread::JoinHandle<()>)>,
}

type NoiseReceiver = std::sync::mpsc::Receiver<Result<LatticeNoise, NoiseError>>;

impl NoiseAhead {
    /// Starts drawing; where no thread can be started, [`NoiseAhead::next`]
    /// draws in place.
    pub fn start(mechanism: LatticeGaussian, count: usize) -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let drawn = mechanism.clone();
        let ahead = std::thread::Builder::new()
            .name("dp-noise".into())
            .spawn(move || {
                for _ in 0..count {
                    if sender.send(drawn.draw()).is_err() {
                        return;
                    }
                }
            })
            .ok()
            .map(|worker| (receiver, worker));
        Self {
            mechanism,
            left: count,
            ahead,
        }
    }

    /// `values` with the next vector's noise added
    /// ([`LatticeGaussian::apply`]).
    pub fn add(&mut self, values: &[f32]) -> Result<Vec<f32>, NoiseError> {
        self.mechanism.check(values)?;
        let noise = self.next()?;
        self.mechanism.apply(values, noise)
    }

    fn next(&mut self) -> Result<LatticeNoise, NoiseError> {
        if self.left == 0 {
            return Err(NoiseError::Exhausted);
        }
        self.left -= 1;
        match &self.ahead {
            Some((receiver, _)) => receiver
                .recv()
                .map_err(|_| NoiseError::Sampler("the noise thread stopped".into()))?,
            None => self.mechanism.draw(),
        }
    }
}

impl Drop for NoiseAhead {
    fn drop(&mut self) {
        if let Some((receiver, worker)) = self.ahead.take() {
            drop(receiver);
            // A panic there was already reported by `next` as a stopped
            // thread, or concerned noise nobody asked for.
            let _ = worker.join();
        }
    }
}

/// An exact sampler of `N_Z(0, n)` for one integer variance: boxes
/// ([`boxes`]) from [`boxes::MIN_VARIANCE`] on, CKS's rejection from a
/// discrete Laplace ([`cks`]) below.
#[derive(Debug, Clone)]
enum DiscreteGaussian {
    /// Shared by the threads that draw: the table is a few tens of KiB.
    Boxes(Arc<BoxGaussian>),
    Cks(cks::DiscreteGaussian),
}

impl DiscreteGaussian {
    fn new(variance: u128) -> Option<Self> {
        // The tests build a table for every variance in range; CKS stays
        // as the fallback all the same.
        (variance >= boxes::MIN_VARIANCE)
            .then(|| BoxGaussian::new(variance))
            .flatten()
            .map(|table| Self::Boxes(Arc::new(table)))
            .or_else(|| cks::DiscreteGaussian::new(variance).map(Self::Cks))
    }

    fn sample<R: rand::RngCore>(&self, bits: &mut RandomBits<R>) -> i128 {
        match self {
            Self::Boxes(table) => table.sample(bits),
            Self::Cks(cks) => cks.sample(bits),
        }
    }
}

/// `len` draws of `noise` on every core, each core with its own CSPRNG
/// seeded by the operating system. The cores take pieces of [`DRAW_PIECE`]
/// values as they come free rather than one fixed share each: with a DP-SGD
/// step computing its gradients on one core, fixed halves left the other
/// idle for about a fifth of every step.
fn draw_in_pieces(noise: &DiscreteGaussian, len: usize) -> Result<Vec<i64>, NoiseError> {
    let mut out = vec![0i64; len];
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(len.div_ceil(DRAW_PIECE));
    let pieces = std::sync::Mutex::new(out.chunks_mut(DRAW_PIECE));
    let next_piece = || {
        pieces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next()
    };
    // A draw beyond i64 is more than 2^32 standard deviations out
    // (σ < 2^31): refused, never truncated.
    let beyond = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut bits = RandomBits::new(NoiseRng::from_os_rng());
                while let Some(piece) = next_piece() {
                    for slot in piece {
                        match i64::try_from(noise.sample(&mut bits)) {
                            Ok(draw) => *slot = draw,
                            Err(_) => beyond.store(true, std::sync::atomic::Ordering::Relaxed),
                        }
                    }
                }
            });
        }
    });
    if beyond.into_inner() {
        return Err(NoiseError::Sampler(
            "a draw fell outside 64-bit integers".into(),
        ));
    }
    Ok(out)
}

fn sampler_error(e: opendp::error::Error) -> NoiseError {
    NoiseError::Sampler(format!(
        "{:?}: {}",
        e.variant,
        e.message.unwrap_or_default()
    ))
}

/// `len` independent draws of the discrete Gaussian N_Z(0, σ²) (σ in integer
/// units), exact; a variance of 1024 or more is first rounded up to an
/// integer.
///
/// This is the per-client noise of the distributed discrete Gaussian
/// mechanism (Kairouz, Liu and Steinke, ICML 2021): clients add it to their
/// integer-encoded updates before masking, so that the sum carries the
/// calibrated noise without any party adding it alone.
pub fn discrete_gaussian(len: usize, sigma: f64) -> Result<Vec<i64>, NoiseError> {
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(NoiseError::InvalidScale(sigma));
    }
    if sigma == 0.0 || len == 0 {
        return Ok(vec![0; len]);
    }
    let variance = sigma * sigma;
    // Rounding σ² up to an integer raises σ by less than 2^-11.
    let rounded = (variance >= MIN_ROUNDED_VARIANCE)
        .then(|| DiscreteGaussian::new((variance.ceil() + 1.0) as u128))
        .flatten();
    if let Some(noise) = rounded {
        return draw_in_pieces(&noise, len);
    }
    in_parallel(&vec![0i64; len], |part| {
        opendp_discrete_gaussian(part, sigma)
    })
}

/// Below this variance, rounding it up to an integer would noticeably
/// raise the noise; such draws go to OpenDP, which takes any rational σ.
const MIN_ROUNDED_VARIANCE: f64 = 1024.0;

fn opendp_discrete_gaussian(zeros: &[i64], sigma: f64) -> Result<Vec<i64>, NoiseError> {
    let mechanism = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L2Distance::<i64>::default(),
        sigma,
        None,
    )
    .map_err(sampler_error)?;
    mechanism.invoke(&zeros.to_vec()).map_err(sampler_error)
}

/// Runs `work` on chunks of `input` on every core and concatenates the
/// results in order.
fn in_parallel<T: Sync, U: Send>(
    input: &[T],
    work: impl Fn(&[T]) -> Result<Vec<U>, NoiseError> + Sync,
) -> Result<Vec<U>, NoiseError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(input.len().div_ceil(256))
        .max(1);
    let chunk = input.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let work = &work;
        let workers: Vec<_> = input
            .chunks(chunk)
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        let mut out = Vec::with_capacity(input.len());
        for worker in workers {
            let part = worker
                .join()
                .map_err(|_| NoiseError::Sampler("a noise thread panicked".into()))??;
            out.extend(part);
        }
        Ok(out)
    })
}

/// Generators for tests that need to choose the bits a sampler reads.
#[cfg(test)]
mod scripted {
    use rand::RngCore;
    use rand_chacha::ChaCha12Rng;

    /// Hands out the given words in order, then, if given, the words of a
    /// stream.
    pub(super) struct Words {
        words: std::collections::VecDeque<u64>,
        then: Option<ChaCha12Rng>,
    }

    impl Words {
        pub(super) fn new(words: &[u64], then: Option<ChaCha12Rng>) -> Self {
            Self {
                words: words.iter().copied().collect(),
                then,
            }
        }
    }

    impl RngCore for Words {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            match (self.words.pop_front(), &mut self.then) {
                (Some(word), _) => word,
                (None, Some(stream)) => stream.next_u64(),
                (None, None) => panic!("the test gave too few words"),
            }
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(8) {
                chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(xs: impl Iterator<Item = f64>) -> (f64, f64) {
        let v: Vec<f64> = xs.collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn gaussian_noise_has_the_requested_moments() {
        let zeros = vec![0.0f32; 20_000];
        let noisy = add_gaussian(&zeros, 2.0, 1.0).unwrap();
        let (mean, var) = moments(noisy.iter().map(|&v| f64::from(v)));
        // Standard errors: mean 2/sqrt(n) = 0.014; variance 4*sqrt(2/n) = 0.04.
        assert!(mean.abs() < 0.07, "mean {mean}");
        assert!((var - 4.0).abs() < 0.2, "variance {var}");
        // Fresh randomness on every call.
        assert_ne!(noisy, add_gaussian(&zeros, 2.0, 1.0).unwrap());
    }

    #[test]
    fn gaussian_noise_is_added_to_the_input() {
        let values = vec![1000.0f32; 5_000];
        let noisy = add_gaussian(&values, 0.5, 1.0).unwrap();
        let (mean, var) = moments(noisy.iter().map(|&v| f64::from(v)));
        assert!((mean - 1000.0).abs() < 0.05, "mean {mean}");
        assert!((var - 0.25).abs() < 0.03, "variance {var}");
        assert_eq!(add_gaussian(&values, 0.0, 1.0).unwrap(), values);
    }

    #[test]
    fn discrete_gaussian_has_the_requested_moments() {
        let noise = discrete_gaussian(20_000, 30.0).unwrap();
        let (mean, var) = moments(noise.iter().map(|&v| v as f64));
        assert!(mean.abs() < 1.0, "mean {mean}");
        assert!((var / 900.0 - 1.0).abs() < 0.05, "variance {var}");
    }

    /// Pearson χ² of `draws` against N_Z(0, n) over the integers within
    /// three standard deviations, pooled in bins of `width`, plus both
    /// tails. (Tails beyond four deviations expected under one draw each
    /// made the statistic heavy-tailed: one rare extra draw failed CI.)
    fn chi_square(draws: &[i64], n: f64, width: i64) -> (f64, usize) {
        let sigma = n.sqrt();
        let reach = (3.0 * sigma) as i64 / width * width + width;
        let mass = |x: i64| (-((x * x) as f64) / (2.0 * n)).exp();
        let total: f64 = (-reach * 3..=reach * 3).map(mass).sum();
        let bins = (2 * reach / width) as usize;
        let mut expected = vec![0.0; bins + 2];
        let mut observed = vec![0.0; bins + 2];
        let bin = |x: i64| {
            if x < -reach {
                0
            } else if x >= reach {
                bins + 1
            } else {
                1 + ((x + reach) / width) as usize
            }
        };
        for x in -reach * 3..=reach * 3 {
            expected[bin(x)] += mass(x) / total * draws.len() as f64;
        }
        for &x in draws {
            observed[bin(x)] += 1.0;
        }
        let stat = observed
            .iter()
            .zip(&expected)
            .map(|(o, e)| (o - e) * (o - e) / e)
            .sum();
        (stat, bins + 1)
    }

    #[test]
    fn integer_sampler_matches_the_exact_distribution() {
        // 2000 is in the integer sampler's range; the +1 of rounding up is
        // part of the distribution it promises.
        let draws = discrete_gaussian(200_000, 2000f64.sqrt()).unwrap();
        let (stat, dof) = chi_square(&draws, 2001.0, 5);
        // χ² with ~72 degrees of freedom: mean 72, sd 12; 5 sd of slack.
        let bound = dof as f64 + 5.0 * (2.0 * dof as f64).sqrt();
        assert!(stat < bound, "chi-square {stat} with {dof} dof");
    }

    /// Draws of the integer sampler at variance `n`, on one thread.
    fn integer_draws(n: u128, count: usize, seed: u64) -> Vec<i64> {
        let noise = DiscreteGaussian::new(n).unwrap();
        let mut bits = RandomBits::new(NoiseRng::seed_from_u64(seed));
        (0..count).map(|_| noise.sample(&mut bits) as i64).collect()
    }

    #[test]
    fn integer_sampler_is_exact_at_both_ends_of_its_proposal_scale() {
        // The Laplace proposal's scale t is a power of two with σ/t in
        // [1/√2, √2): 2049 puts σ near t/√2 (t = 64), 8191 near t·√2.
        for (n, seed) in [(2049u128, 11), (8191, 12)] {
            let draws = integer_draws(n, 150_000, seed);
            let (stat, dof) = chi_square(&draws, n as f64, 8);
            let bound = dof as f64 + 5.0 * (2.0 * dof as f64).sqrt();
            assert!(stat < bound, "n = {n}: chi-square {stat} with {dof} dof");
        }
    }

    /// Draws of a box table built with `reach` standard deviations and the
    /// floating-point tiers on or off, on one thread.
    fn box_draws(n: u128, reach: u128, fast: bool, count: usize, seed: u64) -> Vec<i64> {
        let table = BoxGaussian::with_reach(n, reach, fast).unwrap();
        let mut bits = RandomBits::new(NoiseRng::seed_from_u64(seed));
        (0..count).map(|_| table.sample(&mut bits) as i64).collect()
    }

    fn assert_chi_square(draws: &[i64], n: u128, width: i64, what: &str) {
        let (stat, dof) = chi_square(draws, n as f64, width);
        let bound = dof as f64 + 5.0 * (2.0 * dof as f64).sqrt();
        assert!(stat < bound, "{what}: chi-square {stat} with {dof} dof");
    }

    #[test]
    fn boxes_wider_than_one_integer_give_the_exact_distribution() {
        // σ = 1024 in boxes of 32; σ ≈ 2^12.5 in boxes of 128.
        for (n, width, seed) in [(1u128 << 20, 64, 21), (3 << 24, 256, 22)] {
            let draws = box_draws(n, 8, true, 200_000, seed);
            assert_chi_square(&draws, n, width, &format!("n = {n}"));
        }
    }

    #[test]
    fn the_tail_beyond_the_boxes_gives_the_exact_distribution() {
        // Boxes to one standard deviation: a third of the draws come from
        // the tail (its geometric proposal, both of its coins).
        for (n, width, seed) in [(2001u128, 5, 23), (1 << 20, 64, 24)] {
            let draws = box_draws(n, 1, true, 150_000, seed);
            let beyond = draws
                .iter()
                .filter(|&&x| (x as f64).abs() >= (n as f64).sqrt())
                .count();
            assert!(beyond > 40_000, "n = {n}: {beyond} draws from the tail");
            assert_chi_square(&draws, n, width, &format!("n = {n}, reach 1"));
        }
    }

    #[test]
    fn the_exact_path_alone_gives_the_exact_distribution() {
        // Every acceptance decided on the fixed-point enclosures, as the
        // rare draws within the floating-point tiers' margin are.
        let n = 1u128 << 20;
        let draws = box_draws(n, 2, false, 40_000, 25);
        assert_chi_square(&draws, n, 128, "enclosures only");
    }

    /// `cargo test -p cohort-privacy --release -- --ignored --nocapture
    /// sampler_speed`: nanoseconds per draw on one core at the variances
    /// DP-SGD uses (σ of 2^24 to 2^25 grid points).
    #[test]
    #[ignore = "a timing, not a check"]
    fn sampler_speed() {
        for n in [1u128 << 48, 3 << 48, 1 << 49, 3 << 49] {
            let start = std::time::Instant::now();
            DiscreteGaussian::new(n).unwrap();
            println!("variance {n:e}: table built in {:?}", start.elapsed());
            // The fastest of five runs: the least disturbed by the machine.
            let ns = (0..5)
                .map(|seed| {
                    let start = std::time::Instant::now();
                    let draws = integer_draws(n, 1_000_000, seed);
                    start.elapsed().as_nanos() as f64 / draws.len() as f64
                })
                .fold(f64::INFINITY, f64::min);
            println!("variance {n:e}: {ns:.1} ns per draw");
        }
    }

    #[test]
    fn integer_sampler_agrees_with_opendp() {
        let sigma = 40.0;
        let ours = discrete_gaussian(20_000, sigma).unwrap();
        let theirs =
            in_parallel(&vec![0i64; 20_000], |p| opendp_discrete_gaussian(p, sigma)).unwrap();
        // Same law up to the rounding of σ² = 1600 to 1601: compare both
        // with the exact distribution of each and with each other's moments.
        let (ours_stat, dof) = chi_square(&ours, 1601.0, 8);
        let (theirs_stat, _) = chi_square(&theirs, 1600.0, 8);
        let bound = dof as f64 + 5.0 * (2.0 * dof as f64).sqrt();
        assert!(ours_stat < bound, "ours: chi-square {ours_stat}, {dof} dof");
        assert!(
            theirs_stat < bound,
            "OpenDP: chi-square {theirs_stat}, {dof} dof"
        );
        let (_, ours_var) = moments(ours.iter().map(|&v| v as f64));
        let (_, theirs_var) = moments(theirs.iter().map(|&v| v as f64));
        assert!(
            (ours_var / theirs_var - 1.0).abs() < 0.06,
            "{ours_var} vs {theirs_var}"
        );
    }

    #[test]
    fn grid_noise_is_widened_for_the_rounding() {
        // A value off the grid comes back with the requested spread (the
        // widening for 50,000 coordinates adds 0.002% to it).
        let values = vec![0.123_456_79f32; 50_000];
        let noisy = add_gaussian(&values, 3.0, 0.01).unwrap();
        let (mean, var) = moments(noisy.iter().map(|&v| f64::from(v)));
        assert!(
            (mean - 0.123_456_79).abs() < 0.03 * 0.03 * 5.0,
            "mean {mean}"
        );
        assert!((var / 0.03f64.powi(2) - 1.0).abs() < 0.03, "variance {var}");
    }

    #[test]
    fn noise_drawn_ahead_is_fresh_counted_and_the_right_law() {
        let mechanism = LatticeGaussian::new(20_000, 2.0, 1.0).unwrap();
        let mut ahead = NoiseAhead::start(mechanism.clone(), 2);
        let zeros = vec![0.0f32; 20_000];
        let first = ahead.add(&zeros).unwrap();
        let (mean, var) = moments(first.iter().map(|&v| f64::from(v)));
        assert!(mean.abs() < 0.07, "mean {mean}");
        assert!((var - 4.0).abs() < 0.2, "variance {var}");
        // A vector of the wrong length takes no noise and wastes none.
        assert!(matches!(
            ahead.add(&zeros[1..]),
            Err(NoiseError::Length {
                expected: 20_000,
                got: 19_999
            })
        ));
        assert_ne!(first, ahead.add(&zeros).unwrap(), "fresh noise per vector");
        assert!(matches!(ahead.add(&zeros), Err(NoiseError::Exhausted)));

        // Dropped with most of its vectors never asked for: the thread
        // stops after the one in progress instead of drawing them all.
        let start = std::time::Instant::now();
        drop(NoiseAhead::start(mechanism, 1_000_000));
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn lattice_noise_neither_prints_nor_fits_another_length() {
        let mechanism = LatticeGaussian::new(3, 1.0, 1.0).unwrap();
        let noise = mechanism.draw().unwrap();
        assert_eq!(format!("{noise:?}"), "LatticeNoise(3 values)");
        assert!(matches!(
            mechanism.apply(&[1.0, 2.0], noise),
            Err(NoiseError::Length {
                expected: 3,
                got: 2
            })
        ));
        // No noise to add: the values come back as they are.
        let silent = LatticeGaussian::new(2, 0.0, 1.0).unwrap();
        let none = silent.draw().unwrap();
        assert_eq!(silent.apply(&[1.5, -2.0], none).unwrap(), vec![1.5, -2.0]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            add_gaussian(&[1.0], 1.0, 0.0),
            Err(NoiseError::InvalidSensitivity(_))
        ));
        assert!(matches!(
            add_gaussian(&[1e30], 1e-20, 1e-20),
            Err(NoiseError::OutOfRange { index: 0, .. })
        ));
        assert!(matches!(
            add_gaussian(&[1.0], f64::NAN, 1.0),
            Err(NoiseError::InvalidScale(_))
        ));
        assert!(matches!(
            add_gaussian(&[1.0, f32::INFINITY], 1.0, 1.0),
            Err(NoiseError::NonFinite(1))
        ));
        assert!(matches!(
            discrete_gaussian(3, -1.0),
            Err(NoiseError::InvalidScale(_))
        ));
    }
}
