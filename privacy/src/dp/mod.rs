//! Differential-privacy accounting for the Poisson-subsampled Gaussian
//! mechanism (DP-SGD, and DP-FedAvg with Poisson client sampling), composed
//! over heterogeneous segments of steps.
//!
//! Two accountants, both under the add-or-remove-one neighbouring relation:
//! * [`AccountantKind::Pld`] (default): privacy loss distributions, tight up to
//!   a pessimistic 1e-4 discretization; see [`pld`].
//! * [`AccountantKind::Rdp`]: Rényi DP with the conversion of Canonne–Kamath–
//!   Steinke 2020; looser but cheap; see [`rdp`].
//!
//! The small stable API used by the CLI is [`epsilon`], [`delta`] and
//! [`calibrate_noise`]:
//!
//! ```
//! use cohort_privacy::dp::{AccountantKind, Segment, epsilon, calibrate_noise};
//! let segments = [Segment::new(0.01, 1.1, 1000)?];
//! let report = epsilon(AccountantKind::Pld, &segments, 1e-5)?;
//! assert!(report.epsilon > 0.0 && report.epsilon < 3.0);
//! let noise = calibrate_noise(AccountantKind::Rdp, 0.01, 1000, 1e-5, 2.0)?;
//! assert!(noise.epsilon <= 2.0);
//! # Ok::<(), cohort_privacy::dp::DpError>(())
//! ```

mod error;
mod math;
pub mod pld;
pub mod policy;
pub mod rdp;

pub use error::DpError;
pub use pld::PldAccountant;
pub use policy::{Clipping, DpLevel, DpPolicy, HospitalPlan, JobDp, StatisticsPlan};
pub use rdp::{FractionalOrderMethod, RdpAccountant};

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Which accountant to use. Parses from / serializes as `"rdp"` or `"pld"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountantKind {
    /// Rényi DP (Mironov–Talwar–Zhang 2019 + Canonne–Kamath–Steinke 2020).
    Rdp,
    /// Privacy loss distributions (connect-the-dots + FFT); tight. Default.
    #[default]
    Pld,
}

impl FromStr for AccountantKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rdp" => Ok(Self::Rdp),
            "pld" => Ok(Self::Pld),
            _ => Err(format!(
                "unknown accountant {s:?} (expected \"rdp\" or \"pld\")"
            )),
        }
    }
}

/// `steps` steps of the Poisson-subsampled Gaussian mechanism with sampling
/// rate `q` and noise multiplier `σ` (noise std / L2 sensitivity).
/// Constructed only through [`Segment::new`] (deserialization goes through
/// it too), so it is always valid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSegment")]
pub struct Segment {
    sampling_rate: f64,
    noise_multiplier: f64,
    steps: u64,
}

#[derive(Deserialize)]
struct RawSegment {
    sampling_rate: f64,
    noise_multiplier: f64,
    steps: u64,
}

impl TryFrom<RawSegment> for Segment {
    type Error = DpError;

    fn try_from(raw: RawSegment) -> Result<Self, DpError> {
        Segment::new(raw.sampling_rate, raw.noise_multiplier, raw.steps)
    }
}

impl Segment {
    /// `q ∈ (0, 1]`, `σ > 0` finite, `steps ≥ 1`.
    pub fn new(sampling_rate: f64, noise_multiplier: f64, steps: u64) -> Result<Self, DpError> {
        if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
            return Err(DpError::InvalidSamplingRate(sampling_rate));
        }
        if !(noise_multiplier > 0.0 && noise_multiplier.is_finite()) {
            return Err(DpError::InvalidNoiseMultiplier(noise_multiplier));
        }
        if steps == 0 {
            return Err(DpError::InvalidSteps(steps));
        }
        Ok(Self {
            sampling_rate,
            noise_multiplier,
            steps,
        })
    }

    pub fn sampling_rate(&self) -> f64 {
        self.sampling_rate
    }

    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// Result of [`epsilon`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpsilonReport {
    pub epsilon: f64,
    pub delta: f64,
    pub accountant: AccountantKind,
    /// Optimal RDP order (RDP only).
    pub order: Option<f64>,
}

/// Result of [`delta`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeltaReport {
    pub delta: f64,
    pub epsilon: f64,
    pub accountant: AccountantKind,
    /// Optimal RDP order (RDP only).
    pub order: Option<f64>,
}

/// Result of [`calibrate_noise`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoiseReport {
    /// Smallest noise multiplier found (within relative [`CALIBRATION_RTOL`])
    /// whose epsilon is at most `target_epsilon`.
    pub noise_multiplier: f64,
    /// Epsilon at `noise_multiplier` (≤ `target_epsilon`).
    pub epsilon: f64,
    pub target_epsilon: f64,
    pub delta: f64,
    pub sampling_rate: f64,
    pub steps: u64,
    pub accountant: AccountantKind,
    /// Optimal RDP order at `noise_multiplier` (RDP only).
    pub order: Option<f64>,
}

pub(crate) fn check_delta(delta: f64) -> Result<(), DpError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(DpError::InvalidDelta(delta))
    }
}

pub(crate) fn check_epsilon(epsilon: f64) -> Result<(), DpError> {
    if epsilon >= 0.0 && epsilon.is_finite() {
        Ok(())
    } else {
        Err(DpError::InvalidEpsilon(epsilon))
    }
}

fn rdp_for(segments: &[Segment]) -> Result<RdpAccountant, DpError> {
    if segments.is_empty() {
        return Err(DpError::NoSegments);
    }
    let mut acc = RdpAccountant::new();
    segments.iter().for_each(|s| acc.compose(s));
    Ok(acc)
}

fn pld_for(segments: &[Segment]) -> Result<PldAccountant, DpError> {
    if segments.is_empty() {
        return Err(DpError::NoSegments);
    }
    let mut acc = PldAccountant::new();
    for s in segments {
        acc.compose(s)?;
    }
    Ok(acc)
}

/// ε at `delta` for the composition of `segments` (in order; composition
/// is commutative).
pub fn epsilon(
    kind: AccountantKind,
    segments: &[Segment],
    delta: f64,
) -> Result<EpsilonReport, DpError> {
    check_delta(delta)?;
    let (epsilon, order) = match kind {
        AccountantKind::Rdp => {
            let (e, o) = rdp_for(segments)?.epsilon(delta)?;
            (e, Some(o))
        }
        AccountantKind::Pld => (pld_for(segments)?.epsilon(delta)?, None),
    };
    Ok(EpsilonReport {
        epsilon,
        delta,
        accountant: kind,
        order,
    })
}

/// δ at `epsilon` for the composition of `segments`.
pub fn delta(
    kind: AccountantKind,
    segments: &[Segment],
    epsilon: f64,
) -> Result<DeltaReport, DpError> {
    check_epsilon(epsilon)?;
    let (delta, order) = match kind {
        AccountantKind::Rdp => {
            let (d, o) = rdp_for(segments)?.delta(epsilon)?;
            (d, Some(o))
        }
        AccountantKind::Pld => (pld_for(segments)?.delta(epsilon)?, None),
    };
    Ok(DeltaReport {
        delta,
        epsilon,
        accountant: kind,
        order,
    })
}

/// Relative tolerance of [`calibrate_noise`] on the noise multiplier.
pub const CALIBRATION_RTOL: f64 = 1e-3;
/// Noise multipliers searched by [`calibrate_noise`].
pub const CALIBRATION_RANGE: (f64, f64) = (0.1, 1000.0);

/// Smallest noise multiplier σ in [`CALIBRATION_RANGE`] such that `steps`
/// steps at sampling rate `q` are (`target_epsilon`, `delta`)-DP under `kind`.
///
/// Bracketing by doubling/halving from σ = 1, then geometric bisection until
/// `hi/lo - 1 ≤ CALIBRATION_RTOL`; the returned σ is the upper end of the
/// bracket, so its epsilon (reported) is always ≤ the target. If even the
/// lower end of the range meets the target, that end is returned. A PLD
/// evaluation that would exceed [`pld::MAX_GRID_POINTS`] (only at very small σ
/// with many steps) counts as "target not met", which can only make the
/// result larger (safe), never smaller.
pub fn calibrate_noise(
    kind: AccountantKind,
    sampling_rate: f64,
    steps: u64,
    delta: f64,
    target_epsilon: f64,
) -> Result<NoiseReport, DpError> {
    calibrate_noise_after(kind, &[], sampling_rate, steps, delta, target_epsilon)
}

/// [`calibrate_noise`] for steps that follow `spent` (mechanisms already
/// run or planned at a fixed noise): the smallest σ such that `spent` and
/// the `steps` together are (`target_epsilon`, `delta`)-DP. The report's
/// epsilon is that of the whole composition.
pub fn calibrate_noise_after(
    kind: AccountantKind,
    spent: &[Segment],
    sampling_rate: f64,
    steps: u64,
    delta: f64,
    target_epsilon: f64,
) -> Result<NoiseReport, DpError> {
    check_delta(delta)?;
    if !(target_epsilon > 0.0 && target_epsilon.is_finite()) {
        return Err(DpError::InvalidTargetEpsilon(target_epsilon));
    }
    // Validate q and steps once, with a placeholder σ.
    Segment::new(sampling_rate, 1.0, steps)?;
    let eval = |sigma: f64| -> Result<(f64, Option<f64>), DpError> {
        let mut seg = spent.to_vec();
        seg.push(Segment::new(sampling_rate, sigma, steps)?);
        match epsilon(kind, &seg, delta) {
            Ok(r) => Ok((r.epsilon, r.order)),
            Err(DpError::PldTooLarge { .. }) => Ok((f64::INFINITY, None)),
            Err(e) => Err(e),
        }
    };
    let (min_sigma, max_sigma) = CALIBRATION_RANGE;
    let meets = |e: f64| e <= target_epsilon;

    // Bracket: lo fails (or is the range floor), hi meets.
    // PLD evaluations are costly (about 0.1 s for a job's DP-SGD steps);
    // Rényi DP's calibration is cheap and lands just above PLD's, so the
    // search starts there and steps by a quarter instead of doubling.
    let (mut hi, step) = match kind {
        AccountantKind::Pld => match calibrate_noise_after(
            AccountantKind::Rdp,
            spent,
            sampling_rate,
            steps,
            delta,
            target_epsilon,
        ) {
            Ok(rdp) => (rdp.noise_multiplier, 1.25),
            Err(_) => (1.0, 2.0),
        },
        AccountantKind::Rdp => (1.0, 2.0),
    };
    let mut hi_eval = eval(hi)?;
    let mut lo;
    if meets(hi_eval.0) {
        loop {
            if hi <= min_sigma {
                return Ok(report(
                    kind,
                    sampling_rate,
                    steps,
                    delta,
                    target_epsilon,
                    hi,
                    hi_eval,
                ));
            }
            let next = (hi / step).max(min_sigma);
            let e = eval(next)?;
            if meets(e.0) {
                hi = next;
                hi_eval = e;
            } else {
                lo = next;
                break;
            }
        }
    } else {
        loop {
            if hi >= max_sigma {
                return Err(DpError::CalibrationUnachievable {
                    target_epsilon,
                    max_noise_multiplier: max_sigma,
                    epsilon_at_max: hi_eval.0,
                });
            }
            lo = hi;
            hi = (hi * step).min(max_sigma);
            hi_eval = eval(hi)?;
            if meets(hi_eval.0) {
                break;
            }
        }
    }
    while hi / lo - 1.0 > CALIBRATION_RTOL {
        let mid = (lo * hi).sqrt();
        let e = eval(mid)?;
        if meets(e.0) {
            hi = mid;
            hi_eval = e;
        } else {
            lo = mid;
        }
    }
    Ok(report(
        kind,
        sampling_rate,
        steps,
        delta,
        target_epsilon,
        hi,
        hi_eval,
    ))
}

fn report(
    kind: AccountantKind,
    sampling_rate: f64,
    steps: u64,
    delta: f64,
    target_epsilon: f64,
    sigma: f64,
    (epsilon, order): (f64, Option<f64>),
) -> NoiseReport {
    NoiseReport {
        noise_multiplier: sigma,
        epsilon,
        target_epsilon,
        delta,
        sampling_rate,
        steps,
        accountant: kind,
        order,
    }
}
