//! The global [`Preprocessing`] computed from sums only, so that it can be
//! built under secure aggregation: no hospital's own count, mean, median or
//! category counts ever reach the coordinator, only consortium-wide totals.
//!
//! Each hospital turns its rows into a vector of integers for a
//! [`StatisticsPass`] ([`LocalDataset::statistics_terms`]); the vectors are
//! summed mod 2^64 (by SecAgg+, [`SUM_BITS`]), and [`SecureStatistics`]
//! reads the sum and says which pass comes next. Three passes:
//!
//! 1. **Counts:** per numeric column the number of values and a histogram
//!    of their binary magnitudes (`|x| < 2^e`), and per categorical column
//!    the count of each declared category. This fixes each column's scale
//!    `s = 2^e` (every |x| < s), the categorical modes, and how many
//!    fixed-point bits the next sums can afford without overflowing 63 bits.
//! 2. **Location:** per numeric column the fixed-point sum of `x / s` (the
//!    mean) and a 256-bin histogram over `[-s, s)`, which locates the median
//!    to one bin.
//! 3. **Spread:** per numeric column the fixed-point sum of
//!    `((x - mean) / t)^2` (the variance; `t` bounds |x - mean| from the
//!    occupied bins) and a 256-bin histogram inside the median's bins.
//!
//! The mean and variance are exact up to the fixed-point rounding (at least
//! 2^-52·s per value at small consortia; ≥ 2^-30·s at 10^9 rows); the
//! median is the consortium's own median to within 1/65,536 of the column's
//! range `2s` (the centre of its fine bin), not the count-weighted mean of
//! the hospitals' medians that clear statistics give.
//!
//! What the coordinator still learns is the sums themselves: the
//! consortium's magnitude and value histograms. Without DP noise, a bin
//! that holds one patient's value in the whole consortium shows that a
//! value lies in that bin.

use serde::{Deserialize, Serialize};

use crate::dataset::LocalDataset;
use crate::error::DataError;
use crate::preprocess::{
    NumericTransform, Preprocessing, categorical_transform, standard_deviation, stats_err,
};
use crate::schema::ResolvedSchema;

/// The statistics vectors are summed mod `2^SUM_BITS`.
pub const SUM_BITS: u32 = 64;
/// Magnitude buckets: `|x| < 2^e` for `e` in `MIN_EXPONENT..=MAX_EXPONENT`
/// (smaller values count in the first bucket).
const MIN_EXPONENT: i32 = -32;
const MAX_EXPONENT: i32 = 128;
pub(crate) const MAGNITUDE_BUCKETS: usize = (MAX_EXPONENT - MIN_EXPONENT + 1) as usize;
/// The magnitude bucket of ±1 (`|x| < 2`).
pub(crate) const UNIT_BUCKET: usize = (1 - MIN_EXPONENT) as usize;
/// Bins of the location and spread histograms.
pub const HISTOGRAM_BINS: usize = 256;
/// More fixed-point bits than an f64 mantissa holds buy nothing.
const MAX_FRACTION_BITS: u32 = 52;

/// One pass of the computation: what each hospital sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "pass", rename_all = "snake_case")]
pub enum StatisticsPass {
    Counts,
    Location {
        /// Per numeric column, `s`: a power of two above every |x|.
        scales: Vec<f64>,
        fraction_bits: u32,
        /// Bins of the histogram over `[-s, s)`.
        #[serde(default = "default_bins")]
        bins: usize,
    },
    Spread {
        means: Vec<f64>,
        /// Per numeric column, `t`: a bound on |x - mean|.
        spreads: Vec<f64>,
        /// Per numeric column, the `[low, high)` that the fine histogram
        /// divides.
        windows: Vec<(f64, f64)>,
        fraction_bits: u32,
        /// Bins of the fine histogram.
        #[serde(default = "default_bins")]
        bins: usize,
    },
}

fn default_bins() -> usize {
    HISTOGRAM_BINS
}

/// What a hospital's row adds to one coordinate of a pass's sum.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Contribution {
    /// One more value (a count, a histogram bin).
    Count,
    /// A value in `[-1, 1]`, summed in fixed point.
    Fixed(f64),
}

impl StatisticsPass {
    pub fn name(&self) -> &'static str {
        match self {
            StatisticsPass::Counts => "counts",
            StatisticsPass::Location { .. } => "location",
            StatisticsPass::Spread { .. } => "spread",
        }
    }

    /// The length of every hospital's vector for this pass.
    pub fn len(&self, schema: &ResolvedSchema) -> usize {
        let numeric = schema.numeric.len();
        match self {
            StatisticsPass::Counts => {
                numeric * (1 + MAGNITUDE_BUCKETS)
                    + schema
                        .categorical
                        .iter()
                        .map(|(_, c)| c.len())
                        .sum::<usize>()
            }
            StatisticsPass::Location { bins, .. } => numeric * (1 + bins),
            StatisticsPass::Spread { bins, .. } => numeric * (2 + bins),
        }
    }

    /// The histograms' bins (none in the counts pass).
    fn bins(&self) -> usize {
        match self {
            StatisticsPass::Counts => 0,
            StatisticsPass::Location { bins, .. } | StatisticsPass::Spread { bins, .. } => *bins,
        }
    }

    /// The fixed-point bits of the pass's sums (none in the counts pass).
    pub fn fraction_bits(&self) -> Option<u32> {
        match self {
            StatisticsPass::Counts => None,
            StatisticsPass::Location { fraction_bits, .. }
            | StatisticsPass::Spread { fraction_bits, .. } => Some(*fraction_bits),
        }
    }

    fn check_shape(&self, numeric: usize) -> Result<(), DataError> {
        let ok = match self {
            StatisticsPass::Counts => true,
            StatisticsPass::Location {
                scales,
                fraction_bits,
                ..
            } => {
                scales.len() == numeric
                    && scales.iter().all(|s| s.is_finite() && *s > 0.0)
                    && *fraction_bits <= MAX_FRACTION_BITS
            }
            StatisticsPass::Spread {
                means,
                spreads,
                windows,
                fraction_bits,
                ..
            } => {
                means.len() == numeric
                    && spreads.len() == numeric
                    && windows.len() == numeric
                    && means.iter().all(|m| m.is_finite())
                    && spreads.iter().all(|t| t.is_finite() && *t > 0.0)
                    && windows
                        .iter()
                        .all(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo < hi)
                    && *fraction_bits <= MAX_FRACTION_BITS
            }
        } && (matches!(self, StatisticsPass::Counts)
            || (1..=HISTOGRAM_BINS).contains(&self.bins()));
        if ok {
            Ok(())
        } else {
            Err(stats_err(format!(
                "the {} pass does not describe this schema's {numeric} numeric columns",
                self.name()
            )))
        }
    }
}

/// The bucket of `|x| < 2^e`, or an error for a value no bucket holds.
fn magnitude_bucket(x: f64, column: &str) -> Result<usize, DataError> {
    let magnitude = x.abs();
    if !magnitude.is_finite() {
        return Err(stats_err(format!("column `{column}` holds {x}")));
    }
    // |x| = 1.f × 2^(biased - 1023) < 2^(biased - 1022) for normal numbers.
    let biased = ((magnitude.to_bits() >> 52) & 0x7ff) as i32;
    let e = (biased - 1022).max(MIN_EXPONENT);
    if e > MAX_EXPONENT {
        return Err(stats_err(format!(
            "column `{column}` holds {x}, beyond ±2^{MAX_EXPONENT}"
        )));
    }
    Ok((e - MIN_EXPONENT) as usize)
}

pub(crate) fn bucket_scale(bucket: usize) -> f64 {
    2f64.powi(bucket as i32 + MIN_EXPONENT)
}

/// The bin of `x` in a histogram of `bins` bins over `[low, high)`,
/// clamped to the ends.
fn bin(x: f64, low: f64, high: f64, bins: usize) -> usize {
    let position = (x - low) / (high - low) * bins as f64;
    (position.max(0.0) as usize).min(bins - 1)
}

pub(crate) fn bin_edge(i: usize, low: f64, high: f64, bins: usize) -> f64 {
    low + (high - low) * (i as f64 / bins as f64)
}

/// `value · 2^bits`, rounded, as a term of a sum mod 2^64.
fn fixed(value: f64, bits: u32) -> u64 {
    (value * 2f64.powi(bits as i32)).round() as i64 as u64
}

impl LocalDataset {
    /// This hospital's term of a pass's sum: counts and fixed-point sums
    /// over its rows, never a row.
    pub fn statistics_terms(&self, pass: &StatisticsPass) -> Result<Vec<u64>, DataError> {
        let bits = pass.fraction_bits().unwrap_or(0);
        let mut terms = vec![0u64; pass.len(self.schema())];
        self.visit_statistics(pass, |at, contribution| {
            terms[at] = terms[at].wrapping_add(match contribution {
                Contribution::Count => 1,
                Contribution::Fixed(v) => fixed(v, bits),
            });
        })?;
        Ok(terms)
    }

    /// Calls `add` with the coordinate and the contribution of every value
    /// of every row to the pass's sum. Each row adds at most one
    /// contribution of magnitude at most 1 to at most
    /// [`StatisticsPass::touched_per_row`] coordinates.
    pub(crate) fn visit_statistics(
        &self,
        pass: &StatisticsPass,
        mut add: impl FnMut(usize, Contribution),
    ) -> Result<(), DataError> {
        let schema = self.schema();
        pass.check_shape(schema.numeric.len())?;
        let numeric = self.numeric_columns();
        match pass {
            StatisticsPass::Counts => {
                let mut at = 0;
                for (column, name) in numeric.iter().zip(&schema.numeric) {
                    for x in column.iter().flatten() {
                        add(at, Contribution::Count);
                        add(at + 1 + magnitude_bucket(*x, name)?, Contribution::Count);
                    }
                    at += 1 + MAGNITUDE_BUCKETS;
                }
                for (column, (_, categories)) in
                    self.categorical_columns().iter().zip(&schema.categorical)
                {
                    for index in column.iter().flatten() {
                        add(at + *index as usize, Contribution::Count);
                    }
                    at += categories.len();
                }
            }
            StatisticsPass::Location { scales, bins, .. } => {
                for (j, (column, &s)) in numeric.iter().zip(scales).enumerate() {
                    let at = j * (1 + bins);
                    for &x in column.iter().flatten() {
                        add(at, Contribution::Fixed((x / s).clamp(-1.0, 1.0)));
                        add(at + 1 + bin(x, -s, s, *bins), Contribution::Count);
                    }
                }
            }
            StatisticsPass::Spread {
                means,
                spreads,
                windows,
                bins,
                ..
            } => {
                for (j, column) in numeric.iter().enumerate() {
                    let at = j * (2 + bins);
                    let (mean, t, (low, high)) = (means[j], spreads[j], windows[j]);
                    for &x in column.iter().flatten() {
                        let d = ((x - mean) / t).clamp(-1.0, 1.0);
                        add(at, Contribution::Fixed(d * d));
                        if x < low {
                            add(at + 1, Contribution::Count);
                        } else if x < high {
                            add(at + 2 + bin(x, low, high, *bins), Contribution::Count);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The coordinator's side: reads each pass's sum and says what comes next.
#[derive(Debug, Clone)]
pub struct SecureStatistics {
    pub(crate) schema: ResolvedSchema,
    /// The pass whose sum comes next; it carries what earlier sums found.
    pub(crate) pass: StatisticsPass,
    /// Per numeric column, its values in the consortium (from the counts).
    counts: Vec<u64>,
    pub(crate) categorical: Vec<crate::CategoricalTransform>,
    /// Under differential privacy: the noise the sums carry, and what
    /// the noisy passes found so far.
    pub(crate) noisy: Option<crate::noisy_stats::Noisy>,
}

/// Ranks (0-based) of the lower and upper median among `n` values.
fn median_ranks(n: u64) -> (u64, u64) {
    ((n - 1) / 2, n / 2)
}

/// The histogram bin holding the value of 0-based `rank`, counting from
/// `before` values below the histogram; `None` when the rank lies above.
fn bin_of_rank(histogram: &[u64], before: u64, rank: u64) -> Option<usize> {
    let mut seen = before;
    histogram.iter().position(|&c| {
        seen += c;
        seen > rank
    })
}

fn fraction_bits_for(count: u64) -> u32 {
    // Sums of `count` terms of at most 2^bits each stay below 2^62.
    let count_bits = 64 - count.leading_zeros();
    62u32.saturating_sub(count_bits).min(MAX_FRACTION_BITS)
}

impl SecureStatistics {
    pub fn new(schema: &ResolvedSchema) -> Self {
        SecureStatistics {
            schema: schema.clone(),
            pass: StatisticsPass::Counts,
            counts: Vec::new(),
            categorical: Vec::new(),
            noisy: None,
        }
    }

    /// The pass whose sum [`SecureStatistics::absorb`] expects next.
    pub fn pass(&self) -> &StatisticsPass {
        &self.pass
    }

    /// Reads the sum of the current pass over the consortium's hospitals:
    /// the preprocessing after the last pass, `None` before (the next pass
    /// is then [`SecureStatistics::pass`]). A sum that no honest hospitals
    /// could have produced (a histogram holding more values than the
    /// column, a wrong length) is an error.
    pub fn absorb(&mut self, sum: &[u64]) -> Result<Option<Preprocessing>, DataError> {
        let expected = self.pass.len(&self.schema);
        if sum.len() != expected {
            return Err(stats_err(format!(
                "the {} pass summed {} values, expected {expected}",
                self.pass.name(),
                sum.len()
            )));
        }
        if self.noisy.is_some() {
            return self.absorb_noisy(sum);
        }
        let next = match self.pass.clone() {
            StatisticsPass::Counts => self.absorb_counts(sum)?,
            StatisticsPass::Location {
                scales,
                fraction_bits,
                ..
            } => self.absorb_location(sum, &scales, fraction_bits)?,
            StatisticsPass::Spread {
                means,
                spreads,
                windows,
                fraction_bits,
                ..
            } => {
                return self
                    .finish(sum, &means, &spreads, &windows, fraction_bits)
                    .map(Some);
            }
        };
        self.pass = next;
        Ok(None)
    }

    fn max_count(&self) -> u64 {
        self.counts.iter().copied().max().unwrap_or(1)
    }

    fn absorb_counts(&mut self, sum: &[u64]) -> Result<StatisticsPass, DataError> {
        let mut at = 0;
        let mut counts = Vec::with_capacity(self.schema.numeric.len());
        let mut scales = Vec::with_capacity(self.schema.numeric.len());
        for name in &self.schema.numeric {
            let count = sum[at];
            let buckets = &sum[at + 1..at + 1 + MAGNITUDE_BUCKETS];
            at += 1 + MAGNITUDE_BUCKETS;
            if count == 0 {
                return Err(stats_err(format!(
                    "numeric column `{name}` has no values at any client"
                )));
            }
            if buckets.iter().try_fold(0u64, |a, &b| a.checked_add(b)) != Some(count) {
                return Err(stats_err(format!(
                    "numeric column `{name}`: the magnitude histogram does not add up to its {count} values"
                )));
            }
            let top = buckets.iter().rposition(|&b| b > 0).unwrap_or(0);
            counts.push(count);
            scales.push(bucket_scale(top));
        }
        let mut categorical = Vec::with_capacity(self.schema.categorical.len());
        for (name, categories) in &self.schema.categorical {
            let totals = &sum[at..at + categories.len()];
            at += categories.len();
            categorical.push(categorical_transform(name, categories, totals)?);
        }
        self.counts = counts;
        self.categorical = categorical;
        Ok(StatisticsPass::Location {
            scales,
            fraction_bits: fraction_bits_for(self.max_count()),
            bins: HISTOGRAM_BINS,
        })
    }

    fn absorb_location(
        &mut self,
        sum: &[u64],
        scales: &[f64],
        fraction_bits: u32,
    ) -> Result<StatisticsPass, DataError> {
        let unit = 2f64.powi(fraction_bits as i32);
        let numeric = scales.len();
        let (mut means, mut spreads, mut windows) = (
            Vec::with_capacity(numeric),
            Vec::with_capacity(numeric),
            Vec::with_capacity(numeric),
        );
        for (j, name) in self.schema.numeric.iter().enumerate() {
            let at = j * (1 + HISTOGRAM_BINS);
            let (count, s) = (self.counts[j], scales[j]);
            let histogram = &sum[at + 1..at + 1 + HISTOGRAM_BINS];
            if histogram.iter().try_fold(0u64, |a, &b| a.checked_add(b)) != Some(count) {
                return Err(stats_err(format!(
                    "numeric column `{name}`: the value histogram does not add up to its {count} values"
                )));
            }
            let mean = (sum[at] as i64) as f64 / unit * s / count as f64;
            if mean.is_nan() || mean.abs() > s {
                return Err(stats_err(format!(
                    "numeric column `{name}`: the summed mean {mean} lies outside its values' range ±{s}"
                )));
            }
            // The occupied bins bound every value, hence |x - mean|.
            let first = histogram.iter().position(|&b| b > 0).unwrap_or(0);
            let last = histogram.iter().rposition(|&b| b > 0).unwrap_or(0);
            let (low, high) = (
                bin_edge(first, -s, s, HISTOGRAM_BINS),
                bin_edge(last + 1, -s, s, HISTOGRAM_BINS),
            );
            let spread = (mean - low).max(high - mean);
            let spread = if spread > 0.0 { spread } else { s };
            let (lower, upper) = median_ranks(count);
            let window_first = bin_of_rank(histogram, 0, lower).unwrap_or(last);
            let window_last = bin_of_rank(histogram, 0, upper).unwrap_or(last);
            means.push(mean);
            spreads.push(spread);
            windows.push((
                bin_edge(window_first, -s, s, HISTOGRAM_BINS),
                bin_edge(window_last + 1, -s, s, HISTOGRAM_BINS),
            ));
        }
        Ok(StatisticsPass::Spread {
            means,
            spreads,
            windows,
            fraction_bits: fraction_bits_for(self.max_count()),
            bins: HISTOGRAM_BINS,
        })
    }

    fn finish(
        &self,
        sum: &[u64],
        means: &[f64],
        spreads: &[f64],
        windows: &[(f64, f64)],
        fraction_bits: u32,
    ) -> Result<Preprocessing, DataError> {
        let unit = 2f64.powi(fraction_bits as i32);
        let mut numeric = Vec::with_capacity(means.len());
        for (j, name) in self.schema.numeric.iter().enumerate() {
            let at = j * (2 + HISTOGRAM_BINS);
            let count = self.counts[j];
            let (below, histogram) = (sum[at + 1], &sum[at + 2..at + 2 + HISTOGRAM_BINS]);
            let inside = histogram.iter().try_fold(0u64, |a, &b| a.checked_add(b));
            if inside
                .and_then(|i| i.checked_add(below))
                .is_none_or(|n| n > count)
            {
                return Err(stats_err(format!(
                    "numeric column `{name}`: the median histogram holds more than its {count} values"
                )));
            }
            let variance = sum[at] as f64 / unit * spreads[j] * spreads[j] / count as f64;
            let (low, high) = windows[j];
            let value_at = |rank: u64| match bin_of_rank(histogram, below, rank) {
                _ if rank < below => low,
                Some(i) => {
                    (bin_edge(i, low, high, HISTOGRAM_BINS)
                        + bin_edge(i + 1, low, high, HISTOGRAM_BINS))
                        / 2.0
                }
                None => high,
            };
            let (lower, upper) = median_ranks(count);
            numeric.push(NumericTransform {
                name: name.clone(),
                fill: (value_at(lower) + value_at(upper)) / 2.0,
                mean: means[j],
                std: standard_deviation(variance),
            });
        }
        Ok(Preprocessing {
            schema: self.schema.clone(),
            numeric,
            categorical: self.categorical.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DataSpec;
    use crate::table::read_csv_bytes;

    fn dataset(csv: &str, spec: &str) -> LocalDataset {
        let spec: DataSpec = toml::from_str(spec).unwrap();
        let table = read_csv_bytes(csv.as_bytes()).unwrap();
        LocalDataset::from_table(&table, &spec).unwrap()
    }

    const SPEC: &str = r#"
label = "y"
positive = "1"
numeric = ["a", "b"]
[categorical]
c = ["x", "y", "z"]
"#;

    /// Runs the passes over `parts`, summing their terms mod 2^64 as secure
    /// aggregation would.
    fn secure(parts: &[LocalDataset]) -> Result<Preprocessing, DataError> {
        let mut state = SecureStatistics::new(parts[0].schema());
        loop {
            let pass = state.pass().clone();
            let mut sum = vec![0u64; pass.len(parts[0].schema())];
            for part in parts {
                for (s, t) in sum.iter_mut().zip(part.statistics_terms(&pass)?) {
                    *s = s.wrapping_add(t);
                }
            }
            if let Some(prep) = state.absorb(&sum)? {
                return Ok(prep);
            }
        }
    }

    fn rows(values: &[(f64, Option<f64>, &str)]) -> String {
        let mut csv = String::from("a,b,c,y\n");
        for (i, (a, b, c)) in values.iter().enumerate() {
            let b = b.map_or(String::new(), |b| b.to_string());
            csv.push_str(&format!("{a},{b},{c},{}\n", i % 2));
        }
        csv
    }

    #[test]
    fn the_secure_passes_give_the_pooled_mean_std_and_median() {
        let mut rng = 12345u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let cats = ["x", "y", "z"];
        let parts: Vec<Vec<(f64, Option<f64>, &str)>> = [40, 73, 18]
            .iter()
            .enumerate()
            .map(|(h, &n)| {
                (0..n)
                    .map(|i| {
                        let a = 500.0 + 300.0 * next() + 100.0 * h as f64;
                        let b = (i % 7 != 0).then(|| -0.002 + 0.001 * next());
                        (a, b, cats[(i * (h + 1)) % 3])
                    })
                    .collect()
            })
            .collect();
        let datasets: Vec<LocalDataset> = parts.iter().map(|p| dataset(&rows(p), SPEC)).collect();
        let pooled_rows: Vec<_> = parts.iter().flatten().copied().collect();
        let pooled = dataset(&rows(&pooled_rows), SPEC);
        let exact = Preprocessing::merge(pooled.schema(), &[pooled.statistics()]).unwrap();
        let got = secure(&datasets).unwrap();

        assert_eq!(got.schema, exact.schema);
        assert_eq!(got.categorical, exact.categorical);
        for (g, e) in got.numeric.iter().zip(&exact.numeric) {
            let range = 2.0 * g.mean.abs().max(e.fill.abs()).max(1e-300);
            assert!((g.mean - e.mean).abs() <= 1e-9 * e.std, "{g:?} vs {e:?}");
            assert!((g.std - e.std).abs() <= 1e-6 * e.std, "{g:?} vs {e:?}");
            // The median: within a fine bin of the pooled median.
            assert!(
                (g.fill - e.fill).abs() <= 4.0 * range / 65536.0,
                "{g:?} vs {e:?}"
            );
        }
    }

    #[test]
    fn a_constant_column_and_a_single_value_come_out_exactly() {
        let one = dataset(&rows(&[(7.0, Some(3.5), "x")]), SPEC);
        let two = dataset(&rows(&[(7.0, None, "z"), (7.0, None, "z")]), SPEC);
        let prep = secure(&[one, two]).unwrap();
        assert_eq!(prep.numeric[0].mean, 7.0);
        assert_eq!(prep.numeric[0].std, 1.0);
        assert!((prep.numeric[0].fill - 7.0).abs() < 16.0 / 65536.0);
        assert_eq!(prep.numeric[1].mean, 3.5);
        assert!((prep.numeric[1].fill - 3.5).abs() < 8.0 / 65536.0);
        assert_eq!(prep.categorical[0].fill, 2);
    }

    #[test]
    fn inconsistent_sums_are_refused_by_name() {
        let ds = dataset(&rows(&[(1.0, Some(2.0), "x"), (3.0, Some(4.0), "y")]), SPEC);
        let mut state = SecureStatistics::new(ds.schema());
        let mut sum = ds.statistics_terms(state.pass()).unwrap();
        let short = state.absorb(&sum[1..]).unwrap_err().to_string();
        assert!(short.contains("expected"), "{short}");
        sum[0] += 5; // column `a` claims more values than its histogram holds
        let err = state.absorb(&sum).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("magnitude"), "{err}");
    }

    #[test]
    fn a_column_without_values_anywhere_is_an_error() {
        let ds = dataset(&rows(&[(1.0, None, "x")]), SPEC);
        let err = secure(&[ds]).unwrap_err().to_string();
        assert!(err.contains("`b`") && err.contains("no values"), "{err}");
    }

    #[test]
    fn a_pass_for_another_schema_is_refused() {
        let ds = dataset(&rows(&[(1.0, Some(2.0), "x")]), SPEC);
        let pass = StatisticsPass::Location {
            scales: vec![1.0],
            fraction_bits: 30,
            bins: HISTOGRAM_BINS,
        };
        let err = ds.statistics_terms(&pass).unwrap_err().to_string();
        assert!(err.contains("location"), "{err}");
    }

    #[test]
    fn magnitudes_land_below_their_power_of_two() {
        for x in [1.0, 0.75, 1e-12, 3.0, -1024.0, 1e30, 0.0] {
            let scale = bucket_scale(magnitude_bucket(x, "a").unwrap());
            assert!(x.abs() < scale, "{x} not below {scale}");
            assert!(
                x.abs() >= scale / 2.0 || scale == bucket_scale(0),
                "{x}: {scale}"
            );
        }
        assert!(magnitude_bucket(1e300, "a").is_err());
    }
}
