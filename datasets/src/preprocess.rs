//! Global preprocessing built from client statistics, and the example matrices models use.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::LocalStatistics;
use crate::error::DataError;
use crate::schema::ResolvedSchema;

/// Imputation and standardization of one numeric column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericTransform {
    pub name: String,
    /// Value substituted for missing cells (before standardization).
    pub fill: f64,
    pub mean: f64,
    /// Population standard deviation; 1.0 for a constant column so that it maps to 0 instead
    /// of dividing by zero.
    pub std: f64,
}

/// One-hot encoding of one categorical column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalTransform {
    pub name: String,
    pub categories: Vec<String>,
    /// Index of the category substituted for missing cells (the global mode).
    pub fill: usize,
}

/// The one preprocessing every client applies, merged from all clients' statistics. Stored
/// with every model so that evaluation reproduces training-time features exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub schema: ResolvedSchema,
    pub numeric: Vec<NumericTransform>,
    pub categorical: Vec<CategoricalTransform>,
}

impl Preprocessing {
    /// Merges client statistics.
    ///
    /// Means and variances are exact: the clients' (count, mean, M2) triples are combined with
    /// the parallel update of Chan et al., which gives the same result as computing over the
    /// pooled rows. The numeric imputation value is the count-weighted mean of the clients'
    /// medians. This only approximates the global median (exact when clients share a
    /// distribution, biased when they differ strongly), but needs no raw values; a
    /// robust-to-outliers fill matters more here than exactness. The categorical fill is the
    /// global mode (ties go to the category declared first).
    pub fn merge(schema: &ResolvedSchema, stats: &[LocalStatistics]) -> Result<Self, DataError> {
        if stats.is_empty() {
            return Err(stats_err("no client statistics to merge"));
        }
        for (client, s) in stats.iter().enumerate() {
            check_shape(schema, client, s)?;
        }

        let mut numeric = Vec::with_capacity(schema.numeric.len());
        for (j, name) in schema.numeric.iter().enumerate() {
            let (mut n, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
            let (mut median_sum, mut median_weight) = (0.0f64, 0.0f64);
            for s in stats {
                let m = &s.numeric[j];
                if m.count == 0 {
                    continue;
                }
                let nb = m.count as f64;
                let total = n + nb;
                let delta = m.mean - mean;
                mean += delta * nb / total;
                m2 += m.m2 + delta * delta * n * nb / total;
                n = total;
                if let Some(median) = m.median {
                    median_sum += median * nb;
                    median_weight += nb;
                }
            }
            if n == 0.0 {
                return Err(stats_err(format!(
                    "numeric column `{name}` has no values at any client"
                )));
            }
            numeric.push(NumericTransform {
                name: name.clone(),
                fill: median_sum / median_weight,
                mean,
                std: standard_deviation(m2 / n),
            });
        }

        let mut categorical = Vec::with_capacity(schema.categorical.len());
        for (j, (name, categories)) in schema.categorical.iter().enumerate() {
            let mut totals = vec![0u64; categories.len()];
            for s in stats {
                for (t, c) in totals.iter_mut().zip(&s.categorical[j]) {
                    *t = t.saturating_add(*c);
                }
            }
            categorical.push(categorical_transform(name, categories, &totals)?);
        }

        Ok(Preprocessing {
            schema: schema.clone(),
            numeric,
            categorical,
        })
    }

    /// Length of the produced feature vectors.
    pub fn n_features(&self) -> usize {
        self.numeric.len()
            + self
                .categorical
                .iter()
                .map(|c| c.categories.len())
                .sum::<usize>()
    }

    /// The fields are public (and deserialized from stored models), so check that transforms
    /// agree with the schema before using them.
    pub(crate) fn check_consistent(&self) -> Result<(), DataError> {
        let numeric_ok = self.numeric.len() == self.schema.numeric.len()
            && self
                .numeric
                .iter()
                .zip(&self.schema.numeric)
                .all(|(t, n)| &t.name == n && t.std > 0.0 && t.std.is_finite());
        let categorical_ok = self.categorical.len() == self.schema.categorical.len()
            && self
                .categorical
                .iter()
                .zip(&self.schema.categorical)
                .all(|(t, (n, cats))| &t.name == n && &t.categories == cats && t.fill < cats.len());
        if numeric_ok && categorical_ok {
            Ok(())
        } else {
            Err(DataError::SchemaMismatch {
                message: "preprocessing transforms do not match its own schema".to_owned(),
            })
        }
    }
}

/// The population standard deviation for a variance; 1.0 for a constant
/// (or degenerate) column, so that it maps to 0 instead of dividing by zero.
pub(crate) fn standard_deviation(variance: f64) -> f64 {
    let std = variance.max(0.0).sqrt();
    if std.is_finite() && std > 0.0 {
        std
    } else {
        1.0
    }
}

/// A categorical column's one-hot transform from its consortium-wide
/// category counts: the fill is the mode (ties go to the category declared
/// first).
pub(crate) fn categorical_transform(
    name: &str,
    categories: &[String],
    totals: &[u64],
) -> Result<CategoricalTransform, DataError> {
    let (fill, &max) = totals
        .iter()
        .enumerate()
        .rev() // max_by_key returns the last maximum; reversing makes ties go to the first
        .max_by_key(|(_, c)| **c)
        .ok_or_else(|| stats_err(format!("categorical column `{name}` has no categories")))?;
    if max == 0 {
        return Err(stats_err(format!(
            "categorical column `{name}` has no values at any client"
        )));
    }
    Ok(CategoricalTransform {
        name: name.to_owned(),
        categories: categories.to_vec(),
        fill,
    })
}

pub(crate) fn stats_err(message: impl Into<String>) -> DataError {
    DataError::Statistics {
        message: message.into(),
    }
}

fn check_shape(
    schema: &ResolvedSchema,
    client: usize,
    s: &LocalStatistics,
) -> Result<(), DataError> {
    let who = format!("client {}", client + 1);
    if s.numeric.len() != schema.numeric.len() {
        return Err(stats_err(format!(
            "{who} sent {} numeric columns, schema has {}",
            s.numeric.len(),
            schema.numeric.len()
        )));
    }
    if s.categorical.len() != schema.categorical.len() {
        return Err(stats_err(format!(
            "{who} sent {} categorical columns, schema has {}",
            s.categorical.len(),
            schema.categorical.len()
        )));
    }
    if s.positives > s.rows {
        return Err(stats_err(format!(
            "{who} reports {} positives in {} rows",
            s.positives, s.rows
        )));
    }
    for (m, name) in s.numeric.iter().zip(&schema.numeric) {
        let bad = m.count > s.rows
            || !m.mean.is_finite()
            || !m.m2.is_finite()
            || m.m2 < 0.0
            || (m.count > 0 && !m.median.is_some_and(f64::is_finite));
        if bad {
            return Err(stats_err(format!(
                "{who} sent invalid moments for numeric column `{name}`"
            )));
        }
    }
    for (counts, (name, cats)) in s.categorical.iter().zip(&schema.categorical) {
        if counts.len() != cats.len() {
            return Err(stats_err(format!(
                "{who} sent {} counts for categorical column `{name}`, schema declares {} categories",
                counts.len(),
                cats.len()
            )));
        }
    }
    Ok(())
}

/// Row-major feature matrix with 0/1 labels: what models train and evaluate on.
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    /// `len() * n_features` values, row after row.
    pub features: Vec<f32>,
    /// One 0.0/1.0 per row.
    pub labels: Vec<f32>,
    pub n_features: usize,
}

impl Examples {
    /// The dataset commitment: hex SHA-256 over the preprocessed rows in file
    /// order (a domain tag, the row and feature counts as little-endian
    /// u64, every feature value, then every label, as little-endian f32).
    /// A hospital reproduces it from its file and a model card
    /// (`cohort data commitment`); it reveals nothing about the rows.
    pub fn commitment(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"cohort-dataset-v1\0");
        hasher.update((self.labels.len() as u64).to_le_bytes());
        hasher.update((self.n_features as u64).to_le_bytes());
        for chunk in self.features.chunks(4096).chain(self.labels.chunks(4096)) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            hasher.update(&bytes);
        }
        hex::encode(hasher.finalize())
    }

    /// Checks that `features` holds exactly `labels.len()` rows of `n_features`.
    pub fn new(features: Vec<f32>, labels: Vec<f32>, n_features: usize) -> Result<Self, DataError> {
        if features.len() != labels.len() * n_features {
            return Err(DataError::InvalidExamples(format!(
                "{} feature values for {} rows of {n_features} features",
                features.len(),
                labels.len()
            )));
        }
        Ok(Examples {
            features,
            labels,
            n_features,
        })
    }

    /// Empty set with a fixed width.
    pub fn empty(n_features: usize) -> Self {
        Examples {
            features: Vec::new(),
            labels: Vec::new(),
            n_features,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.n_features..(i + 1) * self.n_features]
    }

    /// Number of rows labelled 1.
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l > 0.5).count()
    }

    /// Seeded stratified split into `(train, validation)`.
    ///
    /// Stratifying keeps the class balance of small hospital datasets in both parts, which
    /// matters for rare outcomes. Per class (0 then 1) the row indices are shuffled with one
    /// `ChaCha8Rng::seed_from_u64(seed)` and `round(n_class * fraction)` go to validation: at
    /// least one when the class has at least 2 rows and `fraction > 0`, and always at most
    /// `n_class - 1` (a single-row class stays in training), so that training sees every class
    /// present. `fraction` is clamped
    /// to `[0, 1]` (NaN counts as 0). Both parts keep the original row order.
    pub fn stratified_split(&self, validation_fraction: f64, seed: u64) -> (Examples, Examples) {
        let fraction = if validation_fraction.is_nan() {
            0.0
        } else {
            validation_fraction.clamp(0.0, 1.0)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut in_validation = vec![false; self.len()];
        for class in [false, true] {
            let mut idx: Vec<usize> = (0..self.len())
                .filter(|&i| (self.labels[i] > 0.5) == class)
                .collect();
            idx.shuffle(&mut rng);
            let n = idx.len();
            let mut k = (n as f64 * fraction).round() as usize;
            if n >= 2 && fraction > 0.0 {
                k = k.max(1);
            }
            k = k.min(n.saturating_sub(1));
            for &i in &idx[..k] {
                in_validation[i] = true;
            }
        }
        let mut train = Examples::empty(self.n_features);
        let mut validation = Examples::empty(self.n_features);
        for (i, &v) in in_validation.iter().enumerate() {
            let target = if v { &mut validation } else { &mut train };
            target.features.extend_from_slice(self.row(i));
            target.labels.push(self.labels[i]);
        }
        (train, validation)
    }

    /// Concatenates example sets of equal width (e.g. several local files of one hospital).
    /// Concatenating nothing gives an empty set of width 0.
    pub fn concat(parts: &[Examples]) -> Result<Examples, DataError> {
        let Some(first) = parts.first() else {
            return Ok(Examples::empty(0));
        };
        let n_features = first.n_features;
        let mut out = Examples::empty(n_features);
        for (i, p) in parts.iter().enumerate() {
            if p.features.len() != p.len() * p.n_features {
                return Err(DataError::InvalidExamples(format!(
                    "part {} has {} feature values for {} rows of {} features",
                    i + 1,
                    p.features.len(),
                    p.len(),
                    p.n_features
                )));
            }
            if p.n_features != n_features {
                return Err(DataError::FeatureMismatch {
                    part: i + 1,
                    expected: n_features,
                    found: p.n_features,
                });
            }
            out.features.extend_from_slice(&p.features);
            out.labels.extend_from_slice(&p.labels);
        }
        Ok(out)
    }
}
