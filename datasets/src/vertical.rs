//! Vertical partitioning: one table's columns dealt to sites that hold different facts about
//! overlapping sets of patients (`cohort data split-vertical`), and reading a site's file back
//! as aligned, standardized features for vertical split learning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::table::{IN_MEMORY, RawTable, parse_csv_text};
use crate::{LabelValue, read_table};

/// Options for [`split_vertical_bytes`] / [`split_vertical_file`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerticalSplitOptions {
    /// Number of site files (at least 2).
    pub sites: usize,
    /// The id column every site keeps.
    pub id: String,
    /// The label column; only the first site (the label site) keeps it.
    pub label: String,
    /// Columns written to no site.
    pub drop: Vec<String>,
    /// Fraction of the rows each site keeps, drawn independently per site, so that the
    /// sites' id sets overlap without being equal (1 keeps every row everywhere).
    pub keep: f64,
    pub seed: u64,
}

/// One written site file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteReport {
    pub file: PathBuf,
    pub rows: usize,
    /// The feature columns of this site.
    pub columns: Vec<String>,
    pub has_label: bool,
}

/// What [`split_vertical_file`] wrote, and the true intersection size to check PSI against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerticalSplitReport {
    pub sites: Vec<SiteReport>,
    /// Rows present at every site.
    pub common_rows: usize,
}

/// Splits a CSV into `out_dir/site_1.csv` .. `site_N.csv` by columns: every file keeps the id
/// column, the first also the label, the other columns are dealt round-robin in file order.
pub fn split_vertical_file(
    input: &Path,
    out_dir: &Path,
    opts: &VerticalSplitOptions,
) -> Result<VerticalSplitReport, DataError> {
    let bytes = std::fs::read(input).map_err(|e| DataError::io(input, e))?;
    split_vertical_impl(&bytes, &input.display().to_string(), out_dir, opts)
}

/// Same as [`split_vertical_file`] for a CSV held in memory.
pub fn split_vertical_bytes(
    csv: &[u8],
    out_dir: &Path,
    opts: &VerticalSplitOptions,
) -> Result<VerticalSplitReport, DataError> {
    split_vertical_impl(csv, IN_MEMORY, out_dir, opts)
}

fn partition_err(message: impl Into<String>) -> DataError {
    DataError::Partition(message.into())
}

fn split_vertical_impl(
    csv: &[u8],
    source: &str,
    out_dir: &Path,
    opts: &VerticalSplitOptions,
) -> Result<VerticalSplitReport, DataError> {
    if opts.sites < 2 {
        return Err(partition_err("a vertical split needs at least 2 sites"));
    }
    if !(opts.keep > 0.0 && opts.keep <= 1.0) {
        return Err(partition_err(format!(
            "keep must be a fraction in (0, 1], got {}",
            opts.keep
        )));
    }
    let (names, cells) = parse_csv_text(csv, source)?;
    let index_of = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| DataError::MissingColumn {
                key: "the vertical split options".into(),
                column: name.to_string(),
            })
    };
    let id = index_of(&opts.id)?;
    let label = index_of(&opts.label)?;
    let features: Vec<usize> = (0..names.len())
        .filter(|&c| c != id && c != label && !opts.drop.contains(&names[c]))
        .collect();
    if features.len() < opts.sites {
        return Err(partition_err(format!(
            "{} feature columns cannot be dealt to {} sites",
            features.len(),
            opts.sites
        )));
    }
    let n_rows = cells.first().map_or(0, Vec::len);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut present = vec![0usize; n_rows];
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let mut sites = Vec::with_capacity(opts.sites);
    for site in 0..opts.sites {
        let mut columns = vec![id];
        if site == 0 {
            columns.push(label);
        }
        columns.extend(features.iter().skip(site).step_by(opts.sites));
        let mut rows: Vec<usize> = (0..n_rows)
            .filter(|_| rng.random::<f64>() < opts.keep)
            .collect();
        // Each site lists its patients in its own order.
        rows.shuffle(&mut rng);
        for &r in &rows {
            present[r] += 1;
        }
        let mut text = String::new();
        let header: Vec<&str> = columns.iter().map(|&c| names[c].as_str()).collect();
        text.push_str(&csv_line(header.iter().copied()));
        for &r in &rows {
            text.push_str(&csv_line(
                columns
                    .iter()
                    .map(|&c| cells[c][r].as_deref().unwrap_or_default()),
            ));
        }
        let file = out_dir.join(format!("site_{}.csv", site + 1));
        std::fs::write(&file, text).map_err(|e| DataError::io(&file, e))?;
        sites.push(SiteReport {
            file,
            rows: rows.len(),
            columns: columns
                .iter()
                .filter(|&&c| c != id && c != label)
                .map(|&c| names[c].clone())
                .collect(),
            has_label: site == 0,
        });
    }
    Ok(VerticalSplitReport {
        sites,
        common_rows: present.iter().filter(|&&p| p == opts.sites).count(),
    })
}

fn csv_line<'a>(cells: impl Iterator<Item = &'a str>) -> String {
    let mut line = cells
        .map(|c| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// One site's file for vertical learning: its ids, its numeric feature columns and, at the
/// label site, the labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteTable {
    pub ids: Vec<Option<String>>,
    /// Feature column names, file order.
    pub columns: Vec<String>,
    /// Column-major values; `None` is a missing cell.
    values: Vec<Vec<Option<f64>>>,
    /// Labels (0/1) when the file has the label column.
    pub labels: Option<Vec<Option<u8>>>,
}

/// The label column and its positive value, for the site that has it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelColumn {
    pub name: String,
    pub positive: LabelValue,
}

impl SiteTable {
    /// Reads a site's CSV/Parquet file: `id` must be a column; every other column not in
    /// `drop` (and not the label) must be numeric.
    pub fn load(
        path: &Path,
        id: &str,
        label: &LabelColumn,
        drop: &[String],
    ) -> Result<Self, DataError> {
        Self::from_table(&read_table(path)?, id, label, drop)
    }

    pub fn from_table(
        table: &RawTable,
        id: &str,
        label: &LabelColumn,
        drop: &[String],
    ) -> Result<Self, DataError> {
        let ids = table
            .column(id)
            .ok_or_else(|| DataError::MissingColumn {
                key: "data.id".into(),
                column: id.to_string(),
            })?
            .to_vec();
        let labels = table.column(&label.name).map(|cells| {
            cells
                .iter()
                .map(|c| c.as_deref().map(|v| u8::from(label.positive.matches(v))))
                .collect()
        });
        let mut columns = Vec::new();
        let mut values = Vec::new();
        for name in table.columns() {
            if name == id || name == label.name || drop.contains(&name) {
                continue;
            }
            let cells = table.column(&name).unwrap_or_default();
            let mut col = Vec::with_capacity(cells.len());
            for (row, cell) in cells.iter().enumerate() {
                col.push(match cell {
                    None => None,
                    Some(text) => Some(text.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                        DataError::Partition(format!(
                            "{}: column `{name}` row {row}: {text:?} is not a number (vertical sites \
                             take numeric features only)",
                            table.source()
                        ))
                    })?),
                });
            }
            columns.push(name);
            values.push(col);
        }
        Ok(Self {
            ids,
            columns,
            values,
            labels,
        })
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.columns.len()
    }

    /// The features of `rows` (in that order), standardized with the mean and standard
    /// deviation of each column over `fit_rows`, missing cells at the mean (0 after
    /// standardization). Row-major.
    pub fn standardized(&self, rows: &[usize], fit_rows: &[usize]) -> Vec<f32> {
        let stats = self.column_transforms(fit_rows);
        let mut out = Vec::with_capacity(rows.len() * self.values.len());
        for &r in rows {
            for (col, t) in self.values.iter().zip(&stats) {
                out.push(col[r].map_or(0.0, |v| ((v - t.mean) / t.std) as f32));
            }
        }
        out
    }

    /// Each column's standardization over `fit_rows` as the preprocessing of a model card
    /// (missing cells filled with the mean): aggregate statistics, never a row.
    pub fn column_transforms(&self, fit_rows: &[usize]) -> Vec<crate::NumericTransform> {
        self.values
            .iter()
            .zip(&self.columns)
            .map(|(col, name)| {
                let present: Vec<f64> = fit_rows.iter().filter_map(|&r| col[r]).collect();
                let n = present.len().max(1) as f64;
                let mean = present.iter().sum::<f64>() / n;
                let var = present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                crate::NumericTransform {
                    name: name.clone(),
                    fill: mean,
                    mean,
                    std: if var > 0.0 { var.sqrt() } else { 1.0 },
                }
            })
            .collect()
    }

    /// Per-class row counts at the label site (for reports).
    pub fn label_counts(&self) -> BTreeMap<u8, usize> {
        let mut counts = BTreeMap::new();
        for y in self.labels.iter().flatten().flatten() {
            *counts.entry(*y).or_default() += 1;
        }
        counts
    }
}

/// What a site of a vertical job reports when it enrolls (`VERTICAL_STEP_ENROLL`): counts
/// and column names, never a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerticalSiteInfo {
    /// The file has the job's label column: this site holds the labels.
    pub label_site: bool,
    /// Its feature columns, file order.
    pub columns: Vec<String>,
    /// Ids it put into the intersection (at the label site: rows with a label).
    pub ids: usize,
}

/// What a site reports once aligned (`VERTICAL_STEP_ALIGN`): the shared rows it will train
/// and validate on, and its columns' standardization over its training rows (so the joined
/// model's card can preprocess a joined file like the sites did).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerticalAlignment {
    pub shared: usize,
    pub train: usize,
    pub validation: usize,
    pub transforms: Vec<crate::NumericTransform>,
}

/// The seeded train/validation split of `shared` aligned positions, the same at every site:
/// (training positions, validation positions), each ascending. At least one row trains.
pub fn vertical_holdout(
    shared: usize,
    validation_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut positions: Vec<usize> = (0..shared).collect();
    positions.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
    let n_validation = ((shared as f64) * validation_fraction).round() as usize;
    let (validation, train) = positions.split_at(n_validation.min(shared.saturating_sub(1)));
    let (mut train, mut validation) = (train.to_vec(), validation.to_vec());
    train.sort_unstable();
    validation.sort_unstable();
    (train, validation)
}
