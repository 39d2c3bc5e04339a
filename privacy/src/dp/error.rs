use thiserror::Error;

/// Everything the accountants can reject. Each variant names the offending value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DpError {
    #[error("sampling rate must be in (0, 1], got {0}")]
    InvalidSamplingRate(f64),
    #[error("noise multiplier must be positive and finite, got {0}")]
    InvalidNoiseMultiplier(f64),
    #[error("number of steps must be at least 1, got {0}")]
    InvalidSteps(u64),
    #[error("delta must be in (0, 1), got {0}")]
    InvalidDelta(f64),
    #[error("epsilon must be non-negative and finite, got {0}")]
    InvalidEpsilon(f64),
    #[error("target epsilon must be positive and finite, got {0}")]
    InvalidTargetEpsilon(f64),
    #[error("RDP order must be finite and greater than 1, got {0}")]
    InvalidOrder(f64),
    #[error("at least one RDP order is required")]
    NoOrders,
    #[error("at least one segment is required")]
    NoSegments,
    #[error("PLD discretization interval must be positive and finite, got {0}")]
    InvalidDiscretization(f64),
    #[error(
        "privacy loss distribution would need {points} grid points (limit {limit}); \
         use a coarser discretization or the RDP accountant"
    )]
    PldTooLarge { points: u64, limit: u64 },
    #[error(
        "target epsilon {target_epsilon} is not reachable: even noise multiplier \
         {max_noise_multiplier} gives epsilon {epsilon_at_max}"
    )]
    CalibrationUnachievable {
        target_epsilon: f64,
        max_noise_multiplier: f64,
        epsilon_at_max: f64,
    },
}
