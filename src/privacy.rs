//! `cohort privacy` and `cohort client budget`: the differential-privacy
//! arithmetic a privacy officer runs, and a hospital's spending.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use cohort_client::budget::BudgetReport;
use cohort_privacy::dp::{self, AccountantKind, EpsilonReport, NoiseReport};

/// How the RDP accountant bounds fractional orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FractionalOrders {
    /// The signed series of Mironov et al.
    Exact,
    /// Absolute values of the binomial terms, as Google's dp_accounting 0.6
    /// sums them (looser at large epsilon), to reproduce its numbers.
    DpAccounting,
}

/// The Poisson-subsampled Gaussian mechanism run for some steps.
#[derive(Debug, Clone, Copy)]
pub struct Mechanism {
    pub sampling_rate: f64,
    pub steps: u64,
    pub delta: f64,
    pub accountant: AccountantKind,
}

/// The (ε, δ) guarantee of `mechanism` at `noise_multiplier`.
pub fn epsilon(
    mechanism: &Mechanism,
    noise_multiplier: f64,
    orders: FractionalOrders,
) -> Result<EpsilonReport> {
    let segment = dp::Segment::new(mechanism.sampling_rate, noise_multiplier, mechanism.steps)?;
    let delta = mechanism.delta;
    Ok(match (mechanism.accountant, orders) {
        (AccountantKind::Rdp, FractionalOrders::DpAccounting) => {
            let mut acc = dp::RdpAccountant::with_orders(
                dp::rdp::default_orders(),
                dp::FractionalOrderMethod::DpAccountingCompat,
            )?;
            acc.compose(&segment);
            let (epsilon, order) = acc.epsilon(delta)?;
            EpsilonReport {
                epsilon,
                delta,
                accountant: AccountantKind::Rdp,
                order: Some(order),
            }
        }
        (AccountantKind::Pld, FractionalOrders::DpAccounting) => {
            bail!("--rdp-fractional-orders applies to --accountant rdp only")
        }
        (accountant, FractionalOrders::Exact) => dp::epsilon(accountant, &[segment], delta)?,
    })
}

/// The smallest noise multiplier that keeps ε at or below `target_epsilon`.
pub fn noise(mechanism: &Mechanism, target_epsilon: f64) -> Result<NoiseReport> {
    Ok(dp::calibrate_noise(
        mechanism.accountant,
        mechanism.sampling_rate,
        mechanism.steps,
        mechanism.delta,
        target_epsilon,
    )?)
}

pub fn render_epsilon(report: &EpsilonReport) -> String {
    let mut out = format!(
        "epsilon {:.4} at delta {:e} ({:?} accountant",
        report.epsilon, report.delta, report.accountant
    );
    match report.order {
        Some(order) => out.push_str(&format!(", order {order})\n")),
        None => out.push_str(")\n"),
    }
    out
}

pub fn render_noise(report: &NoiseReport) -> String {
    format!(
        "noise multiplier {:.4} gives epsilon {:.4} <= {} at delta {:e} ({:?} accountant)\n",
        report.noise_multiplier,
        report.epsilon,
        report.target_epsilon,
        report.delta,
        report.accountant
    )
}

/// A hospital's budget: spent, remaining, and each job's share.
pub fn render_budget(r: &BudgetReport) -> String {
    let mut out = String::new();
    let _ = match (r.max_epsilon, r.remaining) {
        (Some(max), Some(remaining)) => writeln!(
            out,
            "privacy budget: epsilon {:.4} spent of {max}, {remaining:.4} remaining (delta {:e})",
            r.spent, r.delta
        ),
        _ => writeln!(
            out,
            "no privacy budget set; epsilon {:.4} spent (delta {:e})",
            r.spent, r.delta
        ),
    };
    if r.jobs.is_empty() {
        out.push_str("no job has spent anything yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<38} {:>9} {:>8} {:>6} {:>8} {:>7} {:>8}",
        "job", "epsilon", "delta", "stats", "rounds", "sigma", "q"
    );
    let or_dash = |v: Option<f64>, precision: usize| {
        v.map_or("-".to_string(), |v| format!("{v:.precision$}"))
    };
    for j in &r.jobs {
        let _ = writeln!(
            out,
            "{:<38} {:>9.4} {:>8.0e} {:>6} {:>8} {:>7} {:>8}",
            j.job_id,
            j.epsilon,
            j.delta,
            j.statistics_passes,
            format!("{}/{}", j.rounds.len(), j.planned_rounds),
            or_dash(j.noise_multiplier, 3),
            or_dash(j.sampling_rate, 4)
        );
    }
    if r.jobs.iter().any(|j| j.statistics_passes > 0) {
        out.push_str(
            "stats: passes of noisy preprocessing statistics released; epsilon includes them\n",
        );
    }
    out
}
