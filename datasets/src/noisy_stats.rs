//! The preprocessing statistics of a job under differential privacy: the
//! same three passes as [`SecureStatistics`], with every hospital's sums
//! noised before they leave it, and the coordinator's reading made robust
//! to that noise.
//!
//! **What a hospital releases.** Per pass, its vector of sums (counts,
//! histograms, fixed-point sums of values in `[-1, 1]`), all in fixed point
//! with [`DP_FRACTION_BITS`], plus discrete Gaussian noise of standard
//! deviation `σ·Δ` per coordinate, where `Δ` is the pass's L2 sensitivity
//! ([`StatisticsPass::dp_sensitivity`]). Each row adds at most 1 to at most
//! [`StatisticsPass::touched_per_row`] coordinates, so `Δ = √touched` for
//! one patient record ([`RowWeight::Row`], record-level DP). At client
//! level ([`RowWeight::Hospital`]) every row weighs `1/rows`, so a whole
//! hospital's vector is within the same `Δ` (a histogram of fractions has
//! L2 norm at most 1). A pass is then one Gaussian mechanism of multiplier
//! `σ`, three passes one accountant segment (`StatisticsPlan`). Rounding
//! the sums to `2^-16` moves each coordinate by at most `2^-17`, which the
//! 1 % [`ROUNDING_SLACK`] on `Δ` covers for vectors of up to a million
//! coordinates per touched one.
//!
//! Every hospital adds the full noise itself, not a share of it: its
//! guarantee then holds whoever else drops out or colludes with the
//! coordinator, at the price of `√hospitals` more noise on the sum than a
//! distributed share would leave. The secure sum hides the noisy terms too.
//!
//! **What the coordinator reads.** Magnitudes: the most populated bucket
//! (or group of buckets, for values spread over many magnitudes), doubled,
//! unless a higher one holds clearly more than noise, zeros set aside (they
//! fit any scale); values beyond the scale are clamped (and a column most
//! of whose values were clamped is refused: its scale came from a noise
//! peak). Means and variances from the noisy sums, the mean kept inside
//! the occupied range (the run of bins around the bulk, not a lone noise
//! peak in an empty bin) and the variance never below
//! twice what the noise alone can move it by (so that a column whose
//! spread the noise hides is scaled down, not blown up). Medians to one
//! bin of a [`DP_HISTOGRAM_BINS`]-bin histogram, with a three-bin window
//! for the fine pass. Modes of categorical columns from the noisy counts.
//! On small consortia the noise dominates: [`SecureStatistics::noise_summary`]
//! says by how much.

use serde::{Deserialize, Serialize};

use crate::dataset::LocalDataset;
use crate::error::DataError;
use crate::preprocess::{
    CategoricalTransform, NumericTransform, Preprocessing, standard_deviation, stats_err,
};
use crate::schema::ResolvedSchema;
use crate::secure_stats::{
    Contribution, MAGNITUDE_BUCKETS, SecureStatistics, StatisticsPass, UNIT_BUCKET, bin_edge,
    bucket_scale,
};

/// Fixed-point bits of every noisy sum.
pub const DP_FRACTION_BITS: u32 = 16;
/// Bins of the histograms under DP: coarse, since every bin carries noise.
pub const DP_HISTOGRAM_BINS: usize = 16;
/// The sensitivity's margin for rounding each sum to `2^-16`.
pub const ROUNDING_SLACK: f64 = 1.01;
/// A magnitude bucket above the most populated one sets the scale only
/// with more than this many noise standard deviations (a false positive
/// among ~5,000 buckets is then rarer than 1 in 500).
const SIGNIFICANT: f64 = 5.0;
/// A column's most populated magnitude bucket must hold more than this
/// many noise standard deviations, or the noise drowns the column: the
/// largest of ~160 buckets of pure noise exceeds it once in 200 columns
/// (and wider groups, being fewer, less often).
const DROWNED: f64 = 4.0;
/// A magnitude bucket right above the most populated ones extends the
/// scale with more than this many noise standard deviations.
const EXTEND: f64 = 2.0;
/// The widest group of magnitude buckets [`scale_bucket`] tries.
const MAX_GROUP: usize = 16;
/// A histogram bin with more than this many noise standard deviations is
/// taken to be occupied when bounding a column's spread.
const OCCUPIED: f64 = 2.0;
/// A histogram bin apart from a column's bulk counts as occupied with more
/// than this many noise standard deviations (an empty bin reaches it once
/// in 4,000).
const FAR_OCCUPIED: f64 = 3.5;
/// The most bins of a histogram taken together to continue a column's run
/// of occupied bins.
const RUN_WINDOW: usize = 3;

/// What one unit of a noisy sum is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowWeight {
    /// Each row weighs 1: record-level DP.
    Row,
    /// A hospital's rows weigh 1 together: client-level DP, and statistics
    /// that average the hospitals (each hospital's mean counts once).
    Hospital,
}

/// The noise a pass's sums carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatisticsNoise {
    /// Each hospital's noise, as a multiple of the pass's sensitivity.
    pub noise_multiplier: f64,
    /// Hospitals whose noise the sums carry.
    pub hospitals: usize,
    pub weight: RowWeight,
}

impl StatisticsNoise {
    /// Standard deviation of the noise on each coordinate of `pass`'s
    /// sum, in value units.
    pub fn std(&self, pass: &StatisticsPass, schema: &ResolvedSchema) -> f64 {
        self.noise_multiplier * pass.dp_sensitivity(schema) * (self.hospitals as f64).sqrt()
    }
}

/// The coordinator's state of a noisy computation.
#[derive(Debug, Clone)]
pub(crate) struct Noisy {
    noise: StatisticsNoise,
    /// Per numeric column, its noisy count (floored at one unit).
    counts: Vec<f64>,
    /// Per numeric column, the noise's standard error on its mean.
    mean_errors: Vec<f64>,
    /// Per numeric column, the estimated standard deviation.
    stds: Vec<f64>,
}

impl StatisticsPass {
    /// Coordinates of the pass's sum that one row adds to, at most.
    pub fn touched_per_row(&self, schema: &ResolvedSchema) -> usize {
        let numeric = schema.numeric.len();
        match self {
            StatisticsPass::Counts => 2 * numeric + schema.categorical.len(),
            StatisticsPass::Location { .. } | StatisticsPass::Spread { .. } => 2 * numeric,
        }
    }

    /// L2 sensitivity of a hospital's noisy terms, in value units.
    pub fn dp_sensitivity(&self, schema: &ResolvedSchema) -> f64 {
        (self.touched_per_row(schema) as f64).sqrt() * ROUNDING_SLACK
    }
}

impl LocalDataset {
    /// This hospital's sums of `pass` in fixed point with
    /// [`DP_FRACTION_BITS`], before noise: `round(2^16 · w · Σ)` per
    /// coordinate, `w` the weight of a row. The caller adds the noise.
    pub fn dp_statistics_terms(
        &self,
        pass: &StatisticsPass,
        weight: RowWeight,
    ) -> Result<Vec<i64>, DataError> {
        if let Some(bits) = pass.fraction_bits()
            && bits != DP_FRACTION_BITS
        {
            return Err(stats_err(format!(
                "a statistics pass under differential privacy sums with {DP_FRACTION_BITS} \
                 fraction bits; this {} pass asks for {bits}",
                pass.name()
            )));
        }
        let mut sums = vec![0f64; pass.len(self.schema())];
        self.visit_statistics(pass, |at, contribution| {
            sums[at] += match contribution {
                Contribution::Count => 1.0,
                Contribution::Fixed(v) => v,
            };
        })?;
        let w = match weight {
            RowWeight::Row => 1.0,
            RowWeight::Hospital => 1.0 / self.n_rows().max(1) as f64,
        };
        let unit = 2f64.powi(DP_FRACTION_BITS as i32);
        Ok(sums.iter().map(|s| (s * w * unit).round() as i64).collect())
    }
}

/// The 0-based bin at which the cumulative mass of `histogram`, starting
/// from `before`, exceeds `rank`.
fn bin_of_mass(histogram: &[f64], before: f64, rank: f64) -> Option<usize> {
    let mut seen = before;
    histogram.iter().position(|&c| {
        seen += c;
        seen > rank
    })
}

/// The magnitude bucket whose power of two scales a column, from its
/// noisy magnitude histogram: the top of the most populated group of
/// buckets, doubled, or higher where the buckets right above it hold more
/// than a little noise or a higher group clearly more than noise.
/// Groups are single buckets where the data stand out of the noise, and
/// wider (up to [`MAX_GROUP`] buckets, a factor 2^16) where a column's
/// values spread over many magnitudes; the noise of a group of `g` is
/// `√g·std`. `None` when no grouping stands out: the noise drowns the
/// column.
fn scale_bucket(buckets: &[f64], std: f64) -> Option<usize> {
    let last = buckets.len() - 1;
    std::iter::successors(Some(1usize), |g| (*g < MAX_GROUP).then_some(g * 2)).find_map(|g| {
        // Group `i` is buckets i..i+g (sliding, so that no boundary
        // splits a column's values).
        let groups: Vec<f64> = buckets.windows(g).map(|w| w.iter().sum()).collect();
        let noise = std * (g as f64).sqrt();
        let mode = argmax(&groups);
        (groups[mode] > DROWNED * noise).then(|| {
            let top_of = |group: usize| (group + g - 1).min(last);
            let significant = groups
                .iter()
                .rposition(|&b| b > SIGNIFICANT * noise)
                .map_or(0, top_of);
            // The buckets right above the mode that hold more than a
            // little noise are the column's upper values (a few tests, so
            // a low bar costs at most an extra doubling); the scale is
            // the top of those, or the mode's doubled, whichever is higher.
            let mut upper = top_of(mode);
            while upper < last && buckets[upper + 1] > EXTEND * std {
                upper += 1;
            }
            (top_of(mode) + 1).max(upper).max(significant).min(last)
        })
    })
}

/// The bins of a noisy histogram that hold the column's values, first and
/// last: the run of bins above [`OCCUPIED`] noise standard deviations
/// around the median's and the fullest bin, where a few bins together
/// above the bar of their summed noise continue the run (the thin tails of
/// a column hold a few values per bin, and noise takes one or two below
/// the bar now and then), widened to any bin beyond it that
/// holds more than [`FAR_OCCUPIED`] (data apart from the bulk). A lone bin
/// above `OCCUPIED` away from the bulk is a noise peak more often than
/// data (one empty bin in 40 reaches it), and taking it would stretch
/// the spread, and with it the variance's noise floor, by the whole gap.
/// The whole range when nothing stands out.
fn occupied_range(histogram: &[f64], median_bin: usize, std: f64) -> (usize, usize) {
    let occupied = |i: usize| histogram[i] > OCCUPIED * std;
    let last_bin = histogram.len() - 1;
    // The next bin of the run after `at` stepping by `step`: the k-th
    // (k ≤ RUN_WINDOW) when the k bins up to it hold more than `OCCUPIED`
    // standard deviations of their summed noise.
    let next = |at: usize, step: isize| {
        let mut mass = 0.0;
        (1..=RUN_WINDOW)
            .map_while(|k| {
                at.checked_add_signed(step * k as isize)
                    .filter(|&bin| bin <= last_bin)
                    .map(|bin| (k, bin))
            })
            .find(|&(k, bin)| {
                mass += histogram[bin];
                mass > OCCUPIED * std * (k as f64).sqrt()
            })
            .map(|(_, bin)| bin)
    };
    let reach = |from: usize, step: isize| {
        std::iter::successors(Some(from), |&at| next(at, step))
            .last()
            .unwrap_or(from)
    };
    // Around the median's bin, and around the fullest bin (the median's
    // may fall in a noisy dip between two occupied ones).
    let run = [median_bin, argmax(histogram)]
        .into_iter()
        .filter(|&bin| occupied(bin))
        .map(|bin| (reach(bin, -1), reach(bin, 1)))
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    let far = |b: &f64| *b > FAR_OCCUPIED * std;
    let apart = histogram
        .iter()
        .position(far)
        .zip(histogram.iter().rposition(far));
    match (run, apart) {
        (Some((first, last)), Some((far_first, far_last))) => {
            (first.min(far_first), last.max(far_last))
        }
        (Some(range), None) | (None, Some(range)) => range,
        (None, None) => (0, last_bin),
    }
}

/// [`scale_bucket`] of a column's magnitude histogram with its zeros set
/// aside: a zero fits every scale, so the first bucket (`|x| < 2^-32`,
/// where zeros count) never sets one. Without that, a column of counts
/// or indicators that is mostly zeros took a scale of `2^-31` from its
/// zeros and clamped every other value. Where the noise hides every
/// magnitude but the zeros, the column reads as zeros and ones (the
/// scale an indicator gets). `None` when not even the zeros stand out.
fn column_scale_bucket(buckets: &[f64], std: f64) -> Option<usize> {
    scale_bucket(&buckets[1..], std)
        .map(|bucket| bucket + 1)
        .or_else(|| (buckets[0] > DROWNED * std).then_some(UNIT_BUCKET + 1))
}

fn argmax(values: &[f64]) -> usize {
    // The first of equal maxima.
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

impl SecureStatistics {
    /// The computation for a job under differential privacy: the passes
    /// ask for [`DP_FRACTION_BITS`] and [`DP_HISTOGRAM_BINS`], and the sums
    /// are read as carrying `noise`.
    pub fn with_noise(schema: &ResolvedSchema, noise: StatisticsNoise) -> Self {
        let mut statistics = SecureStatistics::new(schema);
        statistics.noisy = Some(Noisy {
            noise,
            counts: Vec::new(),
            mean_errors: Vec::new(),
            stds: Vec::new(),
        });
        statistics
    }

    /// Under DP, once the statistics are done: how much the noise blurs
    /// the columns' means, in units of their estimated standard deviation
    /// (the median and the largest over the numeric columns).
    pub fn noise_summary(&self) -> Option<String> {
        let noisy = self.noisy.as_ref()?;
        let mut ratios: Vec<(f64, &str)> = noisy
            .mean_errors
            .iter()
            .zip(&noisy.stds)
            .zip(&self.schema.numeric)
            .map(|((e, s), name)| (e / s, name.as_str()))
            .collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
        let median = ratios[ratios.len() / 2].0;
        let (largest, column) = ratios[ratios.len() - 1];
        Some(format!(
            "the noise's standard error on a column's mean is {median:.3} of its standard \
             deviation (median over columns; largest {largest:.3}, `{column}`)"
        ))
    }

    pub(crate) fn absorb_noisy(&mut self, sum: &[u64]) -> Result<Option<Preprocessing>, DataError> {
        // A copy: a sum refused below leaves the state as it was.
        let Some(noisy) = self.noisy.clone() else {
            return Err(stats_err("no noise configured"));
        };
        let unit = 2f64.powi(DP_FRACTION_BITS as i32);
        let values: Vec<f64> = sum.iter().map(|&v| (v as i64) as f64 / unit).collect();
        let std = noisy.noise.std(&self.pass, &self.schema);
        let (noisy, result) = match self.pass.clone() {
            StatisticsPass::Counts => {
                let (noisy, next) = self.noisy_counts(noisy, &values, std)?;
                self.pass = next;
                (noisy, None)
            }
            StatisticsPass::Location { scales, bins, .. } => {
                let next = self.noisy_location(&noisy, &values, std, &scales, bins)?;
                self.pass = next;
                let mean_errors = noisy
                    .counts
                    .iter()
                    .zip(&scales)
                    .map(|(count, s)| std * s / count)
                    .collect();
                (
                    Noisy {
                        mean_errors,
                        ..noisy
                    },
                    None,
                )
            }
            StatisticsPass::Spread {
                means,
                spreads,
                windows,
                bins,
                ..
            } => {
                let (noisy, done) =
                    self.noisy_spread(noisy, &values, std, &means, &spreads, &windows, bins);
                (noisy, Some(done))
            }
        };
        self.noisy = Some(noisy);
        Ok(result)
    }

    fn noisy_counts(
        &mut self,
        noisy: Noisy,
        v: &[f64],
        std: f64,
    ) -> Result<(Noisy, StatisticsPass), DataError> {
        let mut at = 0;
        let mut counts = Vec::with_capacity(self.schema.numeric.len());
        let mut scales = Vec::with_capacity(self.schema.numeric.len());
        for name in &self.schema.numeric {
            counts.push(v[at].max(1.0));
            let buckets = &v[at + 1..at + 1 + MAGNITUDE_BUCKETS];
            at += 1 + MAGNITUDE_BUCKETS;
            let Some(top) = column_scale_bucket(buckets, std) else {
                return Err(stats_err(format!(
                    "the differential-privacy noise drowns numeric column `{name}`: no range of \
                     its magnitudes holds clearly more values than noise of standard deviation \
                     {std:.1} per magnitude ({} hospitals at noise multiplier {:.2}); raise \
                     privacy.dp.statistics_epsilon, give the column's statistics in the job's \
                     [preprocessing] table, or train on more rows",
                    noisy.noise.hospitals, noisy.noise.noise_multiplier
                )));
            };
            scales.push(bucket_scale(top));
        }
        let mut categorical = Vec::with_capacity(self.schema.categorical.len());
        for (name, categories) in &self.schema.categorical {
            let totals = &v[at..at + categories.len()];
            at += categories.len();
            categorical.push(CategoricalTransform {
                name: name.clone(),
                categories: categories.clone(),
                fill: argmax(totals),
            });
        }
        self.categorical = categorical;
        Ok((
            Noisy { counts, ..noisy },
            StatisticsPass::Location {
                scales,
                fraction_bits: DP_FRACTION_BITS,
                bins: DP_HISTOGRAM_BINS,
            },
        ))
    }

    fn noisy_location(
        &self,
        noisy: &Noisy,
        v: &[f64],
        std: f64,
        scales: &[f64],
        bins: usize,
    ) -> Result<StatisticsPass, DataError> {
        let numeric = scales.len();
        let (mut means, mut spreads, mut windows) = (
            Vec::with_capacity(numeric),
            Vec::with_capacity(numeric),
            Vec::with_capacity(numeric),
        );
        for (j, (&s, name)) in scales.iter().zip(&self.schema.numeric).enumerate() {
            let at = j * (1 + bins);
            let histogram = &v[at + 1..at + 1 + bins];
            // Values beyond the scale land, clamped, in the end bins. Most
            // of a column there means its scale came from a noise peak
            // that passed for data (rare, but a scale far too small would
            // blow the feature up): refuse rather than standardize.
            let clamped = histogram[0].max(0.0) + histogram[bins - 1].max(0.0);
            if clamped > 0.5 * noisy.counts[j] && clamped > DROWNED * std {
                return Err(stats_err(format!(
                    "the differential-privacy noise drowns numeric column `{name}`: most of its \
                     values lie beyond the scale ±{s:e} read from its noisy magnitudes; raise \
                     privacy.dp.statistics_epsilon, give the column's statistics in the job's \
                     [preprocessing] table, or train on more rows"
                )));
            }
            let cleaned: Vec<f64> = histogram.iter().map(|b| b.max(0.0)).collect();
            let total: f64 = cleaned.iter().sum();
            let median_bin = bin_of_mass(&cleaned, 0.0, total / 2.0).unwrap_or(bins / 2);
            let (first, last) = occupied_range(histogram, median_bin, std);
            let (low, high) = (
                bin_edge(first, -s, s, bins),
                bin_edge(last + 1, -s, s, bins),
            );
            let mean = (v[at] * s / noisy.counts[j]).clamp(low, high);
            let spread = (mean - low).max(high - mean);
            let (window_first, window_last) =
                (median_bin.saturating_sub(1), (median_bin + 1).min(bins - 1));
            means.push(mean);
            spreads.push(if spread > 0.0 { spread } else { s });
            windows.push((
                bin_edge(window_first, -s, s, bins),
                bin_edge(window_last + 1, -s, s, bins),
            ));
        }
        Ok(StatisticsPass::Spread {
            means,
            spreads,
            windows,
            fraction_bits: DP_FRACTION_BITS,
            bins: DP_HISTOGRAM_BINS,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn noisy_spread(
        &self,
        noisy: Noisy,
        v: &[f64],
        std: f64,
        means: &[f64],
        spreads: &[f64],
        windows: &[(f64, f64)],
        bins: usize,
    ) -> (Noisy, Preprocessing) {
        let mut numeric = Vec::with_capacity(means.len());
        let mut stds = Vec::with_capacity(means.len());
        for (j, name) in self.schema.numeric.iter().enumerate() {
            let at = j * (2 + bins);
            let (count, t) = (noisy.counts[j], spreads[j]);
            // What the noise alone moves the variance by; every |x - mean|
            // was clamped to t.
            let noise_floor = 2.0 * std * t * t / count;
            let variance = (v[at] * t * t / count).clamp(noise_floor.min(t * t), t * t);
            let (low, high) = windows[j];
            let below = v[at + 1].max(0.0);
            let cleaned: Vec<f64> = v[at + 2..at + 2 + bins]
                .iter()
                .map(|b| b.max(0.0))
                .collect();
            let rank = (below + cleaned.iter().sum::<f64>()) / 2.0;
            let fill = if rank < below {
                low
            } else {
                match bin_of_mass(&cleaned, below, rank) {
                    Some(i) => {
                        (bin_edge(i, low, high, bins) + bin_edge(i + 1, low, high, bins)) / 2.0
                    }
                    None => high,
                }
            };
            let deviation = standard_deviation(variance);
            stds.push(deviation);
            numeric.push(NumericTransform {
                name: name.clone(),
                fill,
                mean: means[j],
                std: deviation,
            });
        }
        (
            Noisy { stds, ..noisy },
            Preprocessing {
                schema: self.schema.clone(),
                numeric,
                categorical: self.categorical.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DataSpec;
    use crate::table::read_csv_bytes;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    const SPEC: &str = r#"
label = "y"
positive = "1"
numeric = ["age", "marker"]
[categorical]
stage = ["I", "II", "III"]
"#;

    fn dataset(rows: &[(f64, Option<f64>, &str)]) -> LocalDataset {
        let mut csv = String::from("age,marker,stage,y\n");
        for (i, (a, m, c)) in rows.iter().enumerate() {
            let m = m.map_or(String::new(), |m| m.to_string());
            csv.push_str(&format!("{a},{m},{c},{}\n", i % 2));
        }
        let spec: DataSpec = toml::from_str(SPEC).unwrap();
        LocalDataset::from_table(&read_csv_bytes(csv.as_bytes()).unwrap(), &spec).unwrap()
    }

    /// `n` rows: age ~ 60 ± 10, marker ~ 1000 ± 50 (missing in one row
    /// in ten), stage II most often.
    fn hospital(n: usize, seed: u64) -> LocalDataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let age = Normal::new(60.0, 10.0).unwrap();
        let marker = Normal::new(1000.0, 50.0).unwrap();
        let rows: Vec<_> = (0..n)
            .map(|i| {
                let stage = ["I", "II", "II", "III"][rng.random_range(0..4)];
                let m = (i % 10 != 0).then(|| marker.sample(&mut rng));
                (age.sample(&mut rng), m, stage)
            })
            .collect();
        dataset(&rows)
    }

    /// Runs the noisy passes: each hospital adds Gaussian noise of
    /// `σ·Δ` to its terms, as the client does with exact discrete noise.
    fn preprocessing(
        parts: &[LocalDataset],
        sigma: f64,
        weight: RowWeight,
        seed: u64,
    ) -> (Preprocessing, SecureStatistics) {
        let schema = parts[0].schema();
        let noise = StatisticsNoise {
            noise_multiplier: sigma,
            hospitals: parts.len(),
            weight,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut state = SecureStatistics::with_noise(schema, noise);
        let unit = 2f64.powi(DP_FRACTION_BITS as i32);
        loop {
            let pass = state.pass().clone();
            let gauss = Normal::new(0.0, sigma * pass.dp_sensitivity(schema) * unit).unwrap();
            let mut sum = vec![0u64; pass.len(schema)];
            for part in parts {
                let terms = part.dp_statistics_terms(&pass, weight).unwrap();
                for (s, t) in sum.iter_mut().zip(terms) {
                    let noised = t + gauss.sample(&mut rng).round() as i64;
                    *s = s.wrapping_add(noised as u64);
                }
            }
            if let Some(prep) = state.absorb(&sum).unwrap() {
                return (prep, state);
            }
        }
    }

    fn exact(parts: &[LocalDataset]) -> Preprocessing {
        let stats: Vec<_> = parts.iter().map(|p| p.statistics()).collect();
        Preprocessing::merge(parts[0].schema(), &stats).unwrap()
    }

    #[test]
    fn with_enough_rows_the_noisy_statistics_are_close_to_the_exact_ones() {
        let parts: Vec<_> = (0..3).map(|h| hospital(20_000, h)).collect();
        let exact = exact(&parts);
        // σ = 8 per pass is about ε 1 for the three passes at δ 1e-5.
        let (got, state) = preprocessing(&parts, 8.0, RowWeight::Row, 1);
        assert_eq!(got.categorical[0].fill, 1, "stage II is the mode");
        for (g, e) in got.numeric.iter().zip(&exact.numeric) {
            assert!((g.mean - e.mean).abs() < 0.05 * e.std, "{g:?} vs {e:?}");
            assert!((g.std / e.std - 1.0).abs() < 0.15, "{g:?} vs {e:?}");
            // The median to a fine bin of a window three coarse bins wide.
            assert!((g.fill - e.fill).abs() < 0.5 * e.std, "{g:?} vs {e:?}");
        }
        let summary = state.noise_summary().unwrap();
        assert!(summary.contains("median over columns"), "{summary}");
    }

    #[test]
    fn hospital_weights_average_the_hospitals() {
        // Two hospitals of very different sizes and ages: the client-level
        // mean weighs each hospital once.
        let young = dataset(&vec![(30.0, Some(1.0), "I"); 4_000]);
        let old = dataset(&vec![(70.0, Some(1.0), "I"); 40_000]);
        let (got, _) = preprocessing(&[young, old], 0.002, RowWeight::Hospital, 2);
        assert!(
            (got.numeric[0].mean - 50.0).abs() < 2.0,
            "{:?}",
            got.numeric[0]
        );
    }

    #[test]
    fn noise_that_drowns_a_column_is_an_error_naming_it() {
        let parts: Vec<_> = (0..3).map(|h| hospital(60, 10 + h)).collect();
        let schema = parts[0].schema();
        let noise = StatisticsNoise {
            noise_multiplier: 30.0,
            hospitals: 3,
            weight: RowWeight::Row,
        };
        let mut state = SecureStatistics::with_noise(schema, noise);
        let pass = state.pass().clone();
        let mut sum = vec![0u64; pass.len(schema)];
        for part in &parts {
            for (s, t) in sum
                .iter_mut()
                .zip(part.dp_statistics_terms(&pass, RowWeight::Row).unwrap())
            {
                *s = s.wrapping_add(t as u64);
            }
        }
        // Even without the noise itself, the sums cannot stand out of it.
        let err = state.absorb(&sum).unwrap_err().to_string();
        assert!(
            err.contains("`age`")
                && err.contains("statistics_epsilon")
                && err.contains("[preprocessing]"),
            "{err}"
        );
    }

    #[test]
    fn a_scale_from_a_noise_peak_is_caught_by_the_clamped_values() {
        // The counts pass as if noise had put a peak at |x| < 2^-20 and
        // hidden the real magnitudes: the scale comes out far too small,
        // and the location pass sees every value clamped to its ends.
        let parts = [hospital(2_000, 21)];
        let schema = parts[0].schema();
        let noise = StatisticsNoise {
            noise_multiplier: 1.0,
            hospitals: 1,
            weight: RowWeight::Row,
        };
        let mut state = SecureStatistics::with_noise(schema, noise);
        let unit = 2f64.powi(DP_FRACTION_BITS as i32);
        let mut counts = parts[0]
            .dp_statistics_terms(state.pass(), RowWeight::Row)
            .unwrap();
        for j in 0..schema.numeric.len() {
            let at = j * (1 + MAGNITUDE_BUCKETS);
            for b in &mut counts[at + 1..at + 1 + MAGNITUDE_BUCKETS] {
                *b = 0;
            }
            counts[at + 1 + 12] = (500.0 * unit) as i64;
        }
        let sum: Vec<u64> = counts.iter().map(|&t| t as u64).collect();
        assert!(state.absorb(&sum).unwrap().is_none());
        let location = parts[0]
            .dp_statistics_terms(state.pass(), RowWeight::Row)
            .unwrap();
        let sum: Vec<u64> = location.iter().map(|&t| t as u64).collect();
        let err = state.absorb(&sum).unwrap_err().to_string();
        assert!(
            err.contains("`age`") && err.contains("beyond the scale"),
            "{err}"
        );
    }

    #[test]
    fn noise_near_the_data_still_gives_finite_scaled_down_features() {
        let parts: Vec<_> = (0..3).map(|h| hospital(60, 10 + h)).collect();
        let exact = exact(&parts);
        for seed in 0..20 {
            let (got, state) = preprocessing(&parts, 4.0, RowWeight::Row, seed);
            for (g, e) in got.numeric.iter().zip(&exact.numeric) {
                assert!(g.mean.is_finite() && g.fill.is_finite(), "{g:?}");
                assert!(g.std.is_finite() && g.std > 0.0, "{g:?}");
                // Never blown up: a standardized value stays within a
                // few units of where the exact statistics put it.
                assert!(g.std >= 0.2 * e.std, "seed {seed}: {g:?} vs {e:?}");
            }
            assert!(state.noise_summary().is_some());
        }
    }

    /// `n` rows shaped like a clinical table: age ~ 60 ± 11, positive
    /// nodes `⌊(4U)²⌋` (a quarter zeros, the rest up to 15), a 0/1
    /// indicator in three rows of ten, and tumour sizes around 20 mm.
    fn clinical(n: usize, seed: u64) -> LocalDataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let age = Normal::new(60.0f64, 11.0).unwrap();
        let size = Normal::new(3.0f64, 0.5).unwrap();
        let mut csv = String::from("age,nodes,smoker,size,y\n");
        for i in 0..n {
            let nodes = (rng.random::<f64>() * 4.0).powi(2).floor();
            let smoker = u8::from(rng.random::<f64>() < 0.3);
            csv.push_str(&format!(
                "{:.0},{nodes},{smoker},{:.1},{}\n",
                age.sample(&mut rng),
                size.sample(&mut rng).exp(),
                i % 2
            ));
        }
        let spec: DataSpec = toml::from_str(
            "label = \"y\"\npositive = \"1\"\nnumeric = [\"age\", \"nodes\", \"smoker\", \"size\"]\n",
        )
        .unwrap();
        LocalDataset::from_table(&read_csv_bytes(csv.as_bytes()).unwrap(), &spec).unwrap()
    }

    /// Five hospitals of 240 rows at ε 1 and 2 (σ 8 and 4 for the three
    /// passes), 200 noise draws each: never refused, every spread within a
    /// factor 3 and every mean within four of the noise's standard errors.
    /// Columns mostly of zeros once took a scale of 2^-31 from them (and
    /// the job was refused), and a noise peak in an empty bin of the
    /// location histogram stretched a spread threefold, at ε 2 in one draw
    /// of 30.
    #[test]
    fn clinical_columns_survive_the_noise_of_small_consortia() {
        let parts: Vec<_> = (0..5).map(|h| clinical(240, 40 + h)).collect();
        let exact = exact(&parts);
        let mut failures = Vec::new();
        for sigma in [4.0, 8.0] {
            for seed in 0..200 {
                let run =
                    std::panic::catch_unwind(|| preprocessing(&parts, sigma, RowWeight::Row, seed));
                let Ok((got, state)) = run else {
                    failures.push(format!("σ {sigma} seed {seed}: refused"));
                    continue;
                };
                let errors = &state.noisy.as_ref().unwrap().mean_errors;
                for ((g, e), error) in got.numeric.iter().zip(&exact.numeric).zip(errors) {
                    if (g.mean - e.mean).abs() > 4.0 * error
                        || g.std < 0.3 * e.std
                        || g.std > 3.0 * e.std
                    {
                        failures.push(format!("σ {sigma} seed {seed}: {g:?} vs {e:?}"));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of 400: {failures:#?}",
            failures.len()
        );
    }

    /// The L2 distance between two term vectors, in value units.
    fn distance(a: &[i64], b: &[i64]) -> f64 {
        let unit = 2f64.powi(DP_FRACTION_BITS as i32);
        a.iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64 / unit).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    fn passes(schema: &ResolvedSchema) -> Vec<StatisticsPass> {
        vec![
            StatisticsPass::Counts,
            StatisticsPass::Location {
                scales: vec![128.0, 2048.0],
                fraction_bits: DP_FRACTION_BITS,
                bins: DP_HISTOGRAM_BINS,
            },
            StatisticsPass::Spread {
                means: vec![60.0, 1000.0],
                spreads: vec![40.0, 200.0],
                windows: vec![(50.0, 70.0), (950.0, 1050.0)],
                fraction_bits: DP_FRACTION_BITS,
                bins: DP_HISTOGRAM_BINS,
            },
        ]
        .into_iter()
        .inspect(|p| assert!(p.len(schema) > 0))
        .collect()
    }

    #[test]
    fn one_record_moves_the_terms_by_at_most_the_sensitivity() {
        let base: Vec<(f64, Option<f64>, &str)> = (0..50)
            .map(|i| (40.0 + i as f64, Some(990.0 + i as f64), "II"))
            .collect();
        // Extreme rows: beyond every scale, inside the median windows, on
        // the bins' edges.
        for extra in [
            (1e9, Some(-1e9), "III"),
            (60.0, Some(1000.0), "I"),
            (-127.9, None, "II"),
        ] {
            let without = dataset(&base);
            let mut rows = base.clone();
            rows.push(extra);
            let with = dataset(&rows);
            for pass in passes(without.schema()) {
                let d = distance(
                    &with.dp_statistics_terms(&pass, RowWeight::Row).unwrap(),
                    &without.dp_statistics_terms(&pass, RowWeight::Row).unwrap(),
                );
                let bound = pass.dp_sensitivity(without.schema());
                assert!(d <= bound, "{extra:?} {}: {d} > {bound}", pass.name());
            }
        }
    }

    #[test]
    fn one_hospital_moves_the_weighted_terms_by_at_most_the_sensitivity() {
        let whole = hospital(5_000, 3);
        for pass in passes(whole.schema()) {
            let terms = whole
                .dp_statistics_terms(&pass, RowWeight::Hospital)
                .unwrap();
            let d = distance(&terms, &vec![0; terms.len()]);
            let bound = pass.dp_sensitivity(whole.schema());
            assert!(d <= bound, "{}: {d} > {bound}", pass.name());
            assert!(d > 0.0, "{}: {d}", pass.name());
        }
    }

    #[test]
    fn a_pass_with_other_fraction_bits_is_refused_under_dp() {
        let ds = hospital(10, 4);
        let pass = StatisticsPass::Location {
            scales: vec![128.0, 2048.0],
            fraction_bits: 40,
            bins: DP_HISTOGRAM_BINS,
        };
        let err = ds
            .dp_statistics_terms(&pass, RowWeight::Row)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("16 fraction bits") && err.contains("40"),
            "{err}"
        );
    }
}
