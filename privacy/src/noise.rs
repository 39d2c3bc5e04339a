//! Noise for differential privacy, drawn by OpenDP's exact samplers.
//!
//! A textbook Gaussian sampler (Box–Muller or ziggurat over `f64`) leaks
//! through the gaps and rounding of floating-point arithmetic: Mironov
//! (CCS 2012) recovered the exact input from such "noisy" outputs. OpenDP
//! (0.16, `use-openssl`) avoids this: a float input is rounded to the grid
//! 2^k, a *discrete* Gaussian on that grid is drawn with the rejection
//! sampler of Canonne, Kamath and Steinke (NeurIPS 2020) in exact rational
//! arithmetic, and the sum is mapped back to the nearest float. Its random
//! bits come from OpenSSL's CSPRNG. The construction and its proofs are
//! OpenDP's (`measurements/noise`), reviewed by its maintainers; Cohort only
//! calls it.
//!
//! The accountants ([`crate::dp`]) treat this noise as the continuous
//! Gaussian of the same standard deviation; the discrete Gaussian on a grid
//! much finer than its standard deviation is within a negligible distance of
//! it (Canonne et al., Thm. 7: the Rényi divergences coincide up to a factor
//! `1 + O(e^{-2π²σ²})` in grid units), which OpenDP's choice of `k` ensures.

use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;

/// Failure of the noise sampler.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("noise standard deviation must be finite and >= 0, got {0}")]
    InvalidScale(f64),
    #[error("cannot add noise to a non-finite value at index {0}")]
    NonFinite(usize),
    #[error("OpenDP sampler failed: {0}")]
    Sampler(String),
}

/// Noise grid of [`add_gaussian`]: values are rounded to multiples of
/// 2^-60 before the discrete Gaussian on that grid is added. OpenDP's
/// default (2^-1074, the smallest subnormal) is exact for every float but
/// samples four times slower; at 2^-60 the rounding moves a value by less
/// than 10^-18, and the L2 sensitivity of a `d`-vector by at most
/// `sqrt(d) · 2^-61` (under 10^-15 for a billion parameters), which the
/// accountants may ignore next to a clipping bound of order 1.
pub const GAUSSIAN_GRID_EXPONENT: i32 = -60;

/// `values + N(0, std²)` coordinate-wise, with exact sampling, spread over
/// the machine's cores (each draw costs tens of microseconds: OpenDP pulls
/// its random bits from OpenSSL a few bytes at a time).
///
/// The result is rounded to `f32` once, after the noise is added in `f64`.
pub fn add_gaussian(values: &[f32], std: f64) -> Result<Vec<f32>, NoiseError> {
    if !(std.is_finite() && std >= 0.0) {
        return Err(NoiseError::InvalidScale(std));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(NoiseError::NonFinite(i));
    }
    if std == 0.0 || values.is_empty() {
        return Ok(values.to_vec());
    }
    in_parallel(values, |part| add_gaussian_serial(part, std))
}

fn add_gaussian_serial(values: &[f32], std: f64) -> Result<Vec<f32>, NoiseError> {
    let mechanism = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(values.len()),
        L2Distance::<f64>::default(),
        std,
        Some(GAUSSIAN_GRID_EXPONENT),
    )
    .map_err(sampler_error)?;
    let input: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    let noisy = mechanism.invoke(&input).map_err(sampler_error)?;
    Ok(noisy.into_iter().map(|v| v as f32).collect())
}

fn sampler_error(e: opendp::error::Error) -> NoiseError {
    NoiseError::Sampler(format!(
        "{:?}: {}",
        e.variant,
        e.message.unwrap_or_default()
    ))
}

/// `len` independent draws of the discrete Gaussian N_Z(0, σ²) (σ in integer
/// units), exact.
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
    let zeros = vec![0i64; len];
    in_parallel(&zeros, |part| {
        let mechanism = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L2Distance::<i64>::default(),
            sigma,
            None,
        )
        .map_err(sampler_error)?;
        mechanism.invoke(&part.to_vec()).map_err(sampler_error)
    })
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
        let noisy = add_gaussian(&zeros, 2.0).unwrap();
        let (mean, var) = moments(noisy.iter().map(|&v| f64::from(v)));
        // Standard errors: mean 2/sqrt(n) = 0.014; variance 4*sqrt(2/n) = 0.04.
        assert!(mean.abs() < 0.07, "mean {mean}");
        assert!((var - 4.0).abs() < 0.2, "variance {var}");
        // Fresh randomness on every call.
        assert_ne!(noisy, add_gaussian(&zeros, 2.0).unwrap());
    }

    #[test]
    fn gaussian_noise_is_added_to_the_input() {
        let values = vec![1000.0f32; 5_000];
        let noisy = add_gaussian(&values, 0.5).unwrap();
        let (mean, var) = moments(noisy.iter().map(|&v| f64::from(v)));
        assert!((mean - 1000.0).abs() < 0.05, "mean {mean}");
        assert!((var - 0.25).abs() < 0.03, "variance {var}");
        assert_eq!(add_gaussian(&values, 0.0).unwrap(), values);
    }

    #[test]
    fn discrete_gaussian_has_the_requested_moments() {
        let noise = discrete_gaussian(20_000, 30.0).unwrap();
        let (mean, var) = moments(noise.iter().map(|&v| v as f64));
        assert!(mean.abs() < 1.0, "mean {mean}");
        assert!((var / 900.0 - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            add_gaussian(&[1.0], f64::NAN),
            Err(NoiseError::InvalidScale(_))
        ));
        assert!(matches!(
            add_gaussian(&[1.0, f32::INFINITY], 1.0),
            Err(NoiseError::NonFinite(1))
        ));
        assert!(matches!(
            discrete_gaussian(3, -1.0),
            Err(NoiseError::InvalidScale(_))
        ));
    }
}
