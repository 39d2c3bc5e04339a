//! A hospital's validated local dataset and the aggregate statistics it shares.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::preprocess::{Examples, Preprocessing};
use crate::schema::{ResolvedSchema, resolve_schema};
use crate::spec::{DataSpec, values_equal};
use crate::table::{RawTable, read_table};

/// Every cell of a local file parsed against a [`ResolvedSchema`].
///
/// Parsing happens once, up front, so that all data problems surface when the hospital
/// registers its file rather than halfway through a federated round.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalDataset {
    schema: ResolvedSchema,
    /// Per numeric column, per row; `None` = missing (imputed during preprocessing).
    numeric: Vec<Vec<Option<f64>>>,
    /// Per categorical column, per row: index into the declared categories.
    categorical: Vec<Vec<Option<u32>>>,
    labels: Vec<u8>,
}

/// Moments of one numeric column over its non-missing values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericMoments {
    /// Number of non-missing values.
    pub count: u64,
    /// Mean of the non-missing values (0 when `count` is 0).
    pub mean: f64,
    /// Sum of squared deviations from `mean` (Welford's M2), so that variances can be pooled
    /// exactly across clients.
    pub m2: f64,
    /// Local median; `None` when `count` is 0.
    pub median: Option<f64>,
}

/// What a client sends so that the coordinator can build one global [`Preprocessing`].
/// Aggregates only: no value of an individual row can be recovered from it (apart from the
/// median, which is an observed value when the count is odd; it is what makes imputation with
/// a robust statistic possible without sharing rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalStatistics {
    pub rows: u64,
    /// One entry per schema numeric column, in schema order.
    pub numeric: Vec<NumericMoments>,
    /// Per schema categorical column: counts per declared category (missing cells not counted).
    pub categorical: Vec<Vec<u64>>,
    /// Rows of class 1.
    pub positives: u64,
}

impl LocalDataset {
    /// Reads, resolves and validates a local file.
    pub fn load(path: &Path, spec: &DataSpec) -> Result<Self, DataError> {
        let table = read_table(path)?;
        Self::from_table(&table, spec)
    }

    /// Resolves `spec` against the table and parses every used cell, failing on the first bad
    /// cell (column by column in schema order, label first).
    pub fn from_table(table: &RawTable, spec: &DataSpec) -> Result<Self, DataError> {
        let schema = resolve_schema(spec, &table.columns())?;
        if table.n_rows() == 0 {
            return Err(DataError::NoRows {
                source_name: table.source().to_owned(),
            });
        }
        let cells = |name: &str| {
            table.column(name).ok_or_else(|| DataError::MissingColumn {
                key: "data".to_owned(),
                column: name.to_owned(),
            })
        };

        let label_cells = cells(&schema.label)?;
        let labels = label_cells
            .iter()
            .enumerate()
            .map(|(i, cell)| parse_label(&schema, i + 1, cell.as_deref()))
            .collect::<Result<Vec<u8>, _>>()?;

        let mut numeric = Vec::with_capacity(schema.numeric.len());
        for name in &schema.numeric {
            let col = cells(name)?
                .iter()
                .enumerate()
                .map(|(i, cell)| parse_number(name, i + 1, cell.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            numeric.push(col);
        }

        let mut categorical = Vec::with_capacity(schema.categorical.len());
        for (name, allowed) in &schema.categorical {
            let col = cells(name)?
                .iter()
                .enumerate()
                .map(|(i, cell)| parse_category(name, allowed, i + 1, cell.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            categorical.push(col);
        }

        Ok(LocalDataset {
            schema,
            numeric,
            categorical,
            labels,
        })
    }

    /// Per numeric column, per row (`None`: missing).
    pub(crate) fn numeric_columns(&self) -> &[Vec<Option<f64>>] {
        &self.numeric
    }

    /// Per categorical column, per row: the declared category's index.
    pub(crate) fn categorical_columns(&self) -> &[Vec<Option<u32>>] {
        &self.categorical
    }

    pub fn schema(&self) -> &ResolvedSchema {
        &self.schema
    }

    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// Class per row (1 = positive).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Number of positive rows.
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l == 1).count()
    }

    /// Sufficient statistics for federated preprocessing; see [`Preprocessing::merge`].
    pub fn statistics(&self) -> LocalStatistics {
        let numeric = self
            .numeric
            .iter()
            .map(|col| moments(col.iter().flatten().copied().collect()))
            .collect();
        let categorical = self
            .categorical
            .iter()
            .zip(&self.schema.categorical)
            .map(|(col, (_, cats))| {
                let mut counts = vec![0u64; cats.len()];
                for idx in col.iter().flatten() {
                    counts[*idx as usize] += 1;
                }
                counts
            })
            .collect();
        LocalStatistics {
            rows: self.labels.len() as u64,
            numeric,
            categorical,
            positives: self.positives() as u64,
        }
    }

    /// Imputes, standardizes and one-hot encodes with a global preprocessing, which must have
    /// been built for exactly this schema (otherwise feature positions would silently differ).
    pub fn preprocess(&self, prep: &Preprocessing) -> Result<Examples, DataError> {
        prep.check_consistent()?;
        if prep.schema != self.schema {
            return Err(DataError::SchemaMismatch {
                message: describe_difference(&prep.schema, &self.schema),
            });
        }
        let n_features = prep.n_features();
        let n = self.n_rows();
        let mut features = Vec::with_capacity(n * n_features);
        for r in 0..n {
            for (col, t) in self.numeric.iter().zip(&prep.numeric) {
                let x = col[r].unwrap_or(t.fill);
                features.push(((x - t.mean) / t.std) as f32);
            }
            for (col, t) in self.categorical.iter().zip(&prep.categorical) {
                let hot = col[r].map_or(t.fill, |i| i as usize);
                features.extend((0..t.categories.len()).map(|k| if k == hot { 1.0 } else { 0.0 }));
            }
        }
        let labels = self.labels.iter().map(|&l| f32::from(l)).collect();
        Ok(Examples {
            features,
            labels,
            n_features,
        })
    }
}

fn describe_difference(expected: &ResolvedSchema, found: &ResolvedSchema) -> String {
    if expected.label != found.label {
        format!(
            "preprocessing label is `{}`, dataset label is `{}`",
            expected.label, found.label
        )
    } else if expected.positive != found.positive || expected.negative != found.negative {
        "preprocessing and dataset use different label values".to_owned()
    } else if expected.numeric != found.numeric {
        format!(
            "preprocessing numeric columns {:?} differ from dataset numeric columns {:?}",
            expected.numeric, found.numeric
        )
    } else {
        "preprocessing and dataset declare different categorical columns or categories".to_owned()
    }
}

/// Mean and M2 by two passes (more accurate than streaming Welford for data already in memory).
fn moments(mut values: Vec<f64>) -> NumericMoments {
    let count = values.len() as u64;
    if values.is_empty() {
        return NumericMoments {
            count: 0,
            mean: 0.0,
            m2: 0.0,
            median: None,
        };
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let m2 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let median = if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    };
    NumericMoments {
        count,
        mean,
        m2,
        median: Some(median),
    }
}

fn parse_label(schema: &ResolvedSchema, row: usize, cell: Option<&str>) -> Result<u8, DataError> {
    let Some(value) = cell else {
        return Err(DataError::MissingLabel {
            column: schema.label.clone(),
            row,
        });
    };
    if values_equal(&schema.positive, value) {
        return Ok(1);
    }
    match &schema.negative {
        None => Ok(0),
        Some(negative) if values_equal(negative, value) => Ok(0),
        Some(negative) => Err(DataError::InvalidLabel {
            column: schema.label.clone(),
            row,
            value: value.to_owned(),
            positive: schema.positive.clone(),
            negative: negative.clone(),
        }),
    }
}

fn parse_number(column: &str, row: usize, cell: Option<&str>) -> Result<Option<f64>, DataError> {
    let Some(text) = cell else { return Ok(None) };
    match text.trim().parse::<f64>() {
        // Infinity would poison every pooled mean, so it is rejected like any other non-number.
        Ok(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(DataError::InvalidNumber {
            column: column.to_owned(),
            row,
            value: text.to_owned(),
        }),
    }
}

fn parse_category(
    column: &str,
    allowed: &[String],
    row: usize,
    cell: Option<&str>,
) -> Result<Option<u32>, DataError> {
    let Some(text) = cell else { return Ok(None) };
    let t = text.trim();
    // Exact text first, so that declared categories "1" and "1.0" (if anyone does that) stay
    // distinct; numeric equality second, for exports that write 1 as 1.0.
    let idx = allowed
        .iter()
        .position(|c| c == t)
        .or_else(|| allowed.iter().position(|c| values_equal(c, t)));
    match idx {
        Some(i) => Ok(Some(i as u32)),
        None => Err(DataError::UnknownCategory {
            column: column.to_owned(),
            row,
            value: text.to_owned(),
            allowed: allowed.to_vec(),
        }),
    }
}
