//! `cohort rewards show|verify`: contribution values and halving rewards
//! read from a coordinator's ledger (its data directory or the network),
//! after checking the ledger's signatures and Merkle root; [`token`]: the
//! same payouts as an ERC-20 token on an EVM chain.

pub mod token;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cohort_coordinator::rewards::report::{self, RewardsReport, Verification};
use cohort_coordinator::store::LedgerContents;
use cohort_ledger::Entry;
use serde::Serialize;

/// The ledger's entries after its signatures and root check out.
pub(crate) fn verified_entries(contents: &LedgerContents) -> Result<Vec<Entry>> {
    let Some(checkpoint) = &contents.checkpoint else {
        bail!("the ledger has no signed checkpoint");
    };
    cohort_ledger::audit(
        &contents.leaves,
        &contents.withheld,
        &contents.openings,
        &checkpoint.note,
        &checkpoint.key_name,
        None,
    )?;
    Ok(crate::audit::entries_in(contents, None)?
        .into_iter()
        .map(|(_, entry)| entry)
        .collect())
}

/// `cohort rewards show [JOB]`: totals per hospital and validator, and
/// every paid round.
pub fn show(contents: &LedgerContents, job: Option<&str>) -> Result<RewardsReport> {
    let entries = verified_entries(contents)?;
    let report = report::report(&entries, job);
    if let Some(job) = job
        && report.rounds.is_empty()
    {
        bail!(
            "the ledger records no rewards for job {job} (is it a [valuation] job, and has a round completed?)"
        );
    }
    Ok(report)
}

/// `cohort rewards verify`: every payout recomputed from the ledger alone.
pub fn verify(contents: &LedgerContents) -> Result<Verification> {
    let entries = verified_entries(contents)?;
    Ok(report::verify(&entries)?)
}

/// The ledger from a data directory or a running coordinator.
pub async fn load(source: &crate::audit::LedgerSource) -> Result<LedgerContents> {
    source.read().await
}

/// `cohort rewards show` options besides where the ledger is.
pub struct ShowOptions {
    pub job: Option<String>,
    /// Write the per-round plot here (SVG).
    pub plot: Option<std::path::PathBuf>,
    /// Price rewards with this `height,price` CSV.
    pub price_csv: Option<std::path::PathBuf>,
    /// Base units in one priced token.
    pub price_unit: u64,
}

/// What `cohort rewards show` prints: the report, priced when asked.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Shown {
    Plain(RewardsReport),
    Priced(PricedReport),
}

impl Shown {
    pub fn summary(&self) -> String {
        match self {
            Shown::Plain(report) => render(report),
            Shown::Priced(priced) => {
                let mut text = render(&priced.report);
                for (name, amount) in &priced.currency.hospitals {
                    let _ = writeln!(text, "{name}: {amount:.2} in the reference currency");
                }
                text
            }
        }
    }
}

/// `cohort rewards show`: reads and checks the ledger, writes the plot if
/// asked, prices the rewards if asked.
pub async fn show_from(
    source: &crate::audit::LedgerSource,
    options: &ShowOptions,
) -> Result<Shown> {
    let contents = load(source).await?;
    let report = show(&contents, options.job.as_deref())?;
    if let Some(path) = &options.plot {
        std::fs::write(path, plot_svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(match &options.price_csv {
        Some(csv) => Shown::Priced(price(report, &read_prices(csv, options.price_unit)?)),
        None => Shown::Plain(report),
    })
}

/// `cohort rewards verify` on a ledger from anywhere.
pub async fn verify_from(source: &crate::audit::LedgerSource) -> Result<Verification> {
    verify(&load(source).await?)
}

pub fn verification_summary(v: &Verification) -> String {
    format!(
        "rewards OK: {} rounds paid, {} base units emitted{}; {} partition-valued rounds isolate nobody{}",
        v.rounds_paid,
        v.emitted,
        v.schedule
            .map(|(e0, h)| format!(" (schedule {e0} halving every {h})"))
            .unwrap_or_default(),
        v.partition_rounds_checked,
        match v.validator_payouts_sealed {
            0 => String::new(),
            n => format!(
                "; {n} validator payouts checked by their totals only (which updates carried \
                 proofs is sealed to this reader)"
            ),
        }
    )
}

/// The report as a table.
pub fn render(report: &RewardsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "emitted: {} base units", report.emitted);
    let _ = writeln!(out, "{:<24} {:>14} {:>22}", "hospital", "value", "reward");
    for h in &report.hospitals {
        let _ = writeln!(out, "{:<24} {:>14.6} {:>22}", h.name, h.value, h.reward);
    }
    for v in &report.validators {
        let _ = writeln!(out, "{:<24} {:>14} {:>22}", v.name, "(validator)", v.reward);
    }
    for r in &report.rounds {
        let parts: Vec<String> = r
            .hospitals
            .iter()
            .map(|h| format!("{} {:.4} → {}", h.name, h.value, h.reward))
            .collect();
        let _ = writeln!(
            out,
            "job {} round {} (height {}, emission {}, {} evaluations, {}): {}",
            r.job_id,
            r.round,
            r.height,
            r.emission,
            r.utility_evaluations,
            r.method,
            parts.join(", ")
        );
    }
    out
}

/// Reference prices by reward height: from each listed height on, one
/// token of `unit` base units is worth `price` (until the next line).
#[derive(Debug, Clone)]
pub struct Prices {
    points: Vec<(u64, f64)>,
    pub unit: u64,
}

/// A CSV of `height,price` lines (a header line is allowed), heights
/// increasing.
pub fn read_prices(path: &Path, unit: u64) -> Result<Prices> {
    if unit == 0 {
        bail!("--price-unit must be at least 1 base unit");
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut points: Vec<(u64, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with(|c: char| c.is_ascii_alphabetic())) {
            continue;
        }
        let bad = |what: &str| anyhow::anyhow!("{} line {}: {what}", path.display(), i + 1);
        let (height, price) = line
            .split_once(',')
            .ok_or_else(|| bad("expected `height,price`"))?;
        let height: u64 = height
            .trim()
            .parse()
            .map_err(|_| bad("height is not a whole number"))?;
        let price: f64 = price
            .trim()
            .parse()
            .map_err(|_| bad("price is not a number"))?;
        if !price.is_finite() || price < 0.0 {
            return Err(bad("price must be a finite, non-negative number"));
        }
        if points.last().is_some_and(|(h, _)| *h >= height) {
            return Err(bad("heights must increase"));
        }
        points.push((height, price));
    }
    if points.is_empty() {
        bail!("{} holds no prices", path.display());
    }
    Ok(Prices { points, unit })
}

impl Prices {
    /// The price at `height` (the last line at or below it; the first
    /// line's before it).
    pub fn at(&self, height: u64) -> f64 {
        self.points
            .iter()
            .rev()
            .find(|(h, _)| *h <= height)
            .or(self.points.first())
            .map_or(0.0, |(_, p)| *p)
    }
}

/// Rewards in the reference currency, per hospital and per round.
#[derive(Debug, Clone, Serialize)]
pub struct PricedReport {
    #[serde(flatten)]
    pub report: RewardsReport,
    pub currency: CurrencyTotals,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurrencyTotals {
    pub emitted: f64,
    pub hospitals: Vec<(String, f64)>,
    /// `(job, round, hospital, amount)` for every payout.
    pub rounds: Vec<(String, u32, String, f64)>,
}

pub fn price(report: RewardsReport, prices: &Prices) -> PricedReport {
    let value = |units: u64, height: u64| units as f64 / prices.unit as f64 * prices.at(height);
    let mut hospitals: std::collections::BTreeMap<String, f64> = Default::default();
    let mut rounds = Vec::new();
    let mut emitted = 0.0;
    for r in &report.rounds {
        emitted += value(r.emission, r.height);
        for h in &r.hospitals {
            let amount = value(h.reward, r.height);
            *hospitals.entry(h.name.clone()).or_default() += amount;
            rounds.push((r.job_id.clone(), r.round, h.name.clone(), amount));
        }
    }
    PricedReport {
        report,
        currency: CurrencyTotals {
            emitted,
            hospitals: hospitals.into_iter().collect(),
            rounds,
        },
    }
}

/// Two charts side by side as one SVG: each hospital's value per round
/// (left) and its reward per round (right), one coloured line each.
pub fn plot_svg(report: &RewardsReport) -> String {
    const W: f64 = 480.0;
    const H: f64 = 300.0;
    const PAD: f64 = 48.0;
    const COLOURS: [&str; 10] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let mut names: Vec<&str> = report.hospitals.iter().map(|h| h.name.as_str()).collect();
    names.sort();
    let n_rounds = report.rounds.len().max(1);
    let series = |pick: &dyn Fn(&report::RoundHospital) -> f64| -> Vec<Vec<Option<f64>>> {
        names
            .iter()
            .map(|name| {
                report
                    .rounds
                    .iter()
                    .map(|r| r.hospitals.iter().find(|h| h.name == *name).map(pick))
                    .collect()
            })
            .collect()
    };
    let values = series(&|h| h.value);
    let rewards = series(&|h| h.reward as f64);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
        2.0 * W,
        H + 24.0 + 18.0 * names.len() as f64
    );
    svg.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (panel, (title, data)) in [
        ("value per round", &values),
        ("reward per round (base units)", &rewards),
    ]
    .into_iter()
    .enumerate()
    {
        let x0 = panel as f64 * W;
        let all: Vec<f64> = data.iter().flatten().flatten().copied().collect();
        let lo = all.iter().copied().fold(0.0f64, f64::min);
        let hi = all.iter().copied().fold(0.0f64, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        let x = |i: usize| x0 + PAD + (W - 2.0 * PAD) * i as f64 / (n_rounds.max(2) - 1) as f64;
        let y = |v: f64| H - PAD - (H - 2.0 * PAD) * (v - lo) / span;
        let _ = write!(
            svg,
            r#"<text x="{}" y="20" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + W / 2.0,
            escape(title)
        );
        let _ = write!(
            svg,
            r#"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="black"/><line x1="{a}" y1="{d}" x2="{a}" y2="{b}" stroke="black"/>"#,
            a = x0 + PAD,
            b = H - PAD,
            c = x0 + W - PAD,
            d = PAD
        );
        if lo < 0.0 {
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{z}" x2="{}" y2="{z}" stroke="#999" stroke-dasharray="4 3"/>"##,
                x0 + PAD,
                x0 + W - PAD,
                z = y(0.0)
            );
        }
        for (v, anchor_y) in [(hi, PAD), (lo, H - PAD)] {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                x0 + PAD - 4.0,
                anchor_y + 4.0,
                short(v)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">round (in payout order, {} rounds)</text>"#,
            x0 + W / 2.0,
            H - PAD + 20.0,
            report.rounds.len()
        );
        for (s, points) in data.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            let path: Vec<String> = points
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for (i, v) in points.iter().enumerate() {
                if let Some(v) = v {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                        x(i),
                        y(*v)
                    );
                }
            }
        }
    }
    for (s, name) in names.iter().enumerate() {
        let yy = H + 12.0 + 18.0 * s as f64;
        let total = report
            .hospitals
            .iter()
            .find(|h| h.name == *name)
            .map_or(0, |h| h.reward);
        let _ = write!(
            svg,
            r#"<rect x="{PAD}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{} (total reward {total})</text>"#,
            yy - 10.0,
            COLOURS[s % COLOURS.len()],
            PAD + 18.0,
            yy,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn short(v: f64) -> String {
    if v.abs() >= 1e5 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
