//! Distributed DP under secure aggregation: the distributed discrete
//! Gaussian mechanism (Kairouz, Liu and Steinke, ICML 2021).
//!
//! With client-level DP and `aggregation = "secagg"`, nobody adds noise to
//! the sum: each hospital adds discrete Gaussian noise N_Z(0, σ_c²) to its
//! own integer-encoded update before masking it, so the sum the coordinator
//! recovers carries the noise of every survivor, and no single party (the
//! coordinator included) has to be trusted to add it.
//!
//! **Calibration.** A round is accepted with at least `t` survivors (the
//! secure-aggregation threshold), so each hospital's share is sized for
//! the worst case: `σ_c = σ · Δ / √t`, where `σ` is the noise multiplier the
//! accountant chose and `Δ = clip · scale + √d` is the L2 sensitivity of one
//! encoded update in integer units (clipping to `clip`, scaling, and
//! stochastic rounding, which moves each of the `d` coordinates by less
//! than one). More survivors only add noise.
//!
//! **Accounting.** The sum of `m` independent N_Z(0, σ_c²) is not itself a
//! discrete Gaussian, but Kairouz et al. (Thm. 2) bound the difference by
//! `τ = 10 Σ_{k=1}^{m−1} exp(−2π² σ_c² k/(k+1))` in the concentrated-DP
//! parameter; [`DistributedNoise::new`] refuses a configuration whose `τ`
//! is not negligible next to `(Δ/σ_total)²`, and the accountants then treat
//! the round as the Gaussian mechanism with noise multiplier `σ`.
//!
//! **No wrap-around.** The noise widens the sum; [`summands_with_noise`]
//! picks the quantizer's summand bound so that `n` signals plus twelve
//! standard deviations of the total noise (a tail below 10⁻³²) still fit in
//! `2^(bits−1)`.

use crate::noise::{NoiseError, discrete_gaussian};
use crate::quantize::{QuantizeError, Quantizer};

/// Standard deviations of total noise reserved against wrap-around.
pub const NOISE_TAIL: f64 = 12.0;

#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
    #[error(transparent)]
    Noise(#[from] NoiseError),
    #[error("distributed DP needs at least one survivor and a noise multiplier > 0")]
    Degenerate,
    #[error(
        "per-hospital noise sigma {sigma_per_client:.3} is too small for the sum of discrete \
         Gaussians to be accounted as a Gaussian (Kairouz et al. tau {tau:e}); use more bits"
    )]
    NotNegligible { sigma_per_client: f64, tau: f64 },
    #[error(
        "with distributed DP noise, {members} hospitals' updates could wrap around mod 2^{bits}; \
         use more bits"
    )]
    CouldWrap { members: u32, bits: u32 },
}

/// The quantizer summand bound that leaves room for the noise of
/// `members` hospitals: `members` signals plus [`NOISE_TAIL`] standard
/// deviations of the total noise, in units of one signal.
pub fn summands_with_noise(
    members: u32,
    noise_multiplier: f64,
    min_survivors: u32,
) -> Result<u32, DistributedError> {
    if min_survivors == 0 || !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
        return Err(DistributedError::Degenerate);
    }
    // The total noise std is σ·Δ·√(m/t) ≤ σ·Δ·√(n/t); Δ exceeds clip·scale
    // by √d, which the extra 1% (and `check_no_wrap`) covers.
    let extra = NOISE_TAIL
        * noise_multiplier
        * (f64::from(members) / f64::from(min_survivors)).sqrt()
        * 1.01;
    let total = f64::from(members) + extra.ceil() + 1.0;
    if total > f64::from(u32::MAX) {
        return Err(DistributedError::CouldWrap { members, bits: 0 });
    }
    Ok(total as u32)
}

/// Client-level DP of an update released in two parts that are clipped
/// and noised separately (SplitFed: the hospital's part under distributed
/// noise, the coordinator's seat part with central noise): each part is
/// clipped to `clip/√2` and noised with standard deviation `σ·clip`, i.e.
/// multiplier `σ·√2` of its own bound. Each part then costs zCDP
/// `(clip/√2)² / (2σ²clip²) = 1/(4σ²)`, the two together `1/(2σ²)`:
/// exactly one Gaussian mechanism of multiplier `σ` at bound `clip`, which
/// is what the accountant charges. Returns each part's (bound, multiplier).
pub fn per_part(clip: f64, noise_multiplier: f64) -> (f64, f64) {
    (
        clip / std::f64::consts::SQRT_2,
        noise_multiplier * std::f64::consts::SQRT_2,
    )
}

/// The quantizer of a round under distributed DP: updates clipped to
/// `clip`, weighted equally (client level), and a summand bound with room
/// for the noise of `members` hospitals; checked with
/// [`DistributedNoise::new`] for updates of `dimension` coordinates.
pub fn quantizer(
    clip: f64,
    bits: u32,
    members: u32,
    noise_multiplier: f64,
    min_survivors: u32,
    dimension: usize,
) -> Result<Quantizer, DistributedError> {
    let summands = summands_with_noise(members, noise_multiplier, min_survivors)?;
    let quantizer = Quantizer::for_weighted_sum(clip, bits, summands, 1)?;
    DistributedNoise::new(
        &quantizer,
        dimension,
        noise_multiplier,
        min_survivors,
        members,
    )?;
    Ok(quantizer)
}

/// One hospital's share of the round's noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributedNoise {
    /// σ_c, in integer units of the encoding.
    pub sigma_per_client: f64,
    /// Δ, the L2 sensitivity of one encoded update in integer units.
    pub sensitivity: f64,
}

impl DistributedNoise {
    /// Calibrates σ_c for updates of `dimension` coordinates encoded by
    /// `quantizer`, noise multiplier `noise_multiplier` and at least
    /// `min_survivors` of `members` hospitals; checks that the noisy sum
    /// of all `members` cannot wrap and that τ is negligible.
    pub fn new(
        quantizer: &Quantizer,
        dimension: usize,
        noise_multiplier: f64,
        min_survivors: u32,
        members: u32,
    ) -> Result<Self, DistributedError> {
        if min_survivors == 0 || !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(DistributedError::Degenerate);
        }
        let sensitivity = quantizer.clip() * quantizer.scale() + (dimension as f64).sqrt();
        let sigma_per_client = noise_multiplier * sensitivity / f64::from(min_survivors).sqrt();
        // Kairouz et al., Thm. 2, for the largest round.
        let tau: f64 = (1..members.max(2))
            .map(|k| {
                let k = f64::from(k);
                (-2.0 * std::f64::consts::PI.powi(2) * sigma_per_client.powi(2) * k / (k + 1.0))
                    .exp()
            })
            .sum::<f64>()
            * 10.0;
        let l1 = sensitivity * (dimension as f64).sqrt();
        let rho = 0.5 / noise_multiplier.powi(2);
        if 0.5 * tau * l1 > 1e-9 * rho {
            return Err(DistributedError::NotNegligible {
                sigma_per_client,
                tau,
            });
        }
        // Signals of `members` hospitals plus the tail of their noise.
        let half = ((1u64 << (quantizer.bits() - 1)) - 1) as f64;
        let signal = f64::from(members) * (quantizer.clip() * quantizer.scale() + 1.0);
        let noise = NOISE_TAIL * sigma_per_client * f64::from(members).sqrt();
        if signal + noise > half {
            return Err(DistributedError::CouldWrap {
                members,
                bits: quantizer.bits(),
            });
        }
        Ok(Self {
            sigma_per_client,
            sensitivity,
        })
    }

    /// Adds this hospital's noise to an encoded update (all coordinates but
    /// the trailing example count), mod 2^bits.
    pub fn add_to(&self, encoded: &mut [u64], bits: u32) -> Result<(), DistributedError> {
        let Some((_, coordinates)) = encoded.split_last_mut() else {
            return Ok(());
        };
        let noise = discrete_gaussian(coordinates.len(), self.sigma_per_client)?;
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        for (value, n) in coordinates.iter_mut().zip(noise) {
            *value = value.wrapping_add(n as u64) & mask;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_parts_cost_what_one_whole_update_costs() {
        use crate::dp::{AccountantKind, Segment, epsilon};
        for sigma in [0.7, 1.1, 2.0, 5.0] {
            let (clip, part_sigma) = per_part(0.5, sigma);
            assert!((clip * clip * 2.0 - 0.25).abs() < 1e-12);
            // Each part at multiplier σ√2 of its own bound, both released
            // each round: two Gaussian steps, against one at σ.
            let whole = epsilon(
                AccountantKind::Rdp,
                &[Segment::new(1.0, sigma, 10).unwrap()],
                1e-5,
            )
            .unwrap()
            .epsilon;
            let parts = epsilon(
                AccountantKind::Rdp,
                &[Segment::new(1.0, part_sigma, 20).unwrap()],
                1e-5,
            )
            .unwrap()
            .epsilon;
            assert!(
                (whole - parts).abs() < 1e-9 * whole,
                "σ {sigma}: {whole} vs {parts}"
            );
        }
    }

    #[test]
    fn noise_is_sized_for_the_fewest_survivors_and_cannot_wrap() {
        let members = 10;
        let t = 7;
        let sigma = 1.2;
        let summands = summands_with_noise(members, sigma, t).unwrap();
        assert!(summands > members);
        let q = Quantizer::for_weighted_sum(1.0, 32, summands, 1).unwrap();
        let noise = DistributedNoise::new(&q, 1000, sigma, t, members).unwrap();
        let total_with_t = noise.sigma_per_client * f64::from(t).sqrt();
        assert!((total_with_t / noise.sensitivity - sigma).abs() < 1e-9);

        // The sum of the noise of `t` hospitals has the calibrated variance.
        let mut sums = vec![0i64; 4000];
        for _ in 0..t {
            for (s, n) in sums
                .iter_mut()
                .zip(discrete_gaussian(4000, noise.sigma_per_client).unwrap())
            {
                *s += n;
            }
        }
        let var = sums.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / sums.len() as f64;
        let want = (sigma * noise.sensitivity).powi(2);
        assert!((var / want - 1.0).abs() < 0.1, "{var} vs {want}");
    }

    #[test]
    fn the_count_is_left_alone_and_values_stay_in_range() {
        let q = Quantizer::for_weighted_sum(1.0, 24, summands_with_noise(3, 1.0, 2).unwrap(), 1)
            .unwrap();
        let noise = DistributedNoise::new(&q, 4, 1.0, 2, 3).unwrap();
        let mut encoded = vec![0, 1, 2, 3, 1];
        noise.add_to(&mut encoded, 24).unwrap();
        assert_eq!(encoded[4], 1);
        assert!(encoded.iter().all(|&v| v < 1 << 24));
        assert_ne!(&encoded[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn too_few_bits_are_refused() {
        // 8 bits leave almost no room for noise next to the signal.
        let q = Quantizer::for_weighted_sum(1.0, 16, 3, 1).unwrap();
        assert!(matches!(
            DistributedNoise::new(&q, 10, 1.0, 2, 3),
            Err(DistributedError::CouldWrap { .. })
        ));
        assert!(summands_with_noise(3, 0.0, 2).is_err());
    }
}
