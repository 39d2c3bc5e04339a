//! Partitioning one CSV into per-hospital files, for demos and simulations.
//!
//! Real federations are rarely IID: hospitals differ in case mix. The Dirichlet scheme is the
//! usual way (Hsu et al. 2019) to simulate that label skew with one knob, `alpha`: small values
//! give each hospital a few dominant classes, large values approach IID.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::table::{IN_MEMORY, parse_csv_text};

/// Label key used in reports for rows whose label cell is empty.
pub const MISSING_LABEL_KEY: &str = "(missing)";

/// Upper bound on Dirichlet redraws before giving up; each draw is cheap.
const MAX_DIRICHLET_ATTEMPTS: usize = 1000;

/// How rows are dealt to hospitals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionScheme {
    /// Shuffled and dealt evenly (stratified by label when a label is given).
    Iid,
    /// Per class, proportions over hospitals drawn from `Dir(alpha)`; requires a label.
    Dirichlet { alpha: f64 },
}

/// Options for [`split_file`] / [`split_bytes`].
#[derive(Debug, Clone, PartialEq)]
pub struct SplitOptions {
    /// Number of hospital files.
    pub parts: usize,
    /// Label column used for stratification, Dirichlet skew and the report.
    pub label: Option<String>,
    pub scheme: PartitionScheme,
    /// Fraction held out as `test.csv` (in `[0, 1)`; 0 writes no test file).
    pub test_fraction: f64,
    pub seed: u64,
}

/// One written file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartReport {
    pub file: PathBuf,
    pub rows: usize,
    /// Rows per label value (trimmed text); empty when no label was given.
    pub label_counts: BTreeMap<String, usize>,
}

/// What [`split_file`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub parts: Vec<PartReport>,
    pub test: Option<PartReport>,
}

/// Splits a CSV file into `out_dir/hospital_1.csv` .. `hospital_N.csv` (plus `test.csv` when
/// `test_fraction > 0`), each with the input's header and the cells' text unchanged.
pub fn split_file(
    input: &Path,
    out_dir: &Path,
    opts: &SplitOptions,
) -> Result<SplitReport, DataError> {
    let bytes = std::fs::read(input).map_err(|e| DataError::io(input, e))?;
    split_impl(&bytes, &input.display().to_string(), out_dir, opts)
}

/// Same as [`split_file`] for a CSV held in memory (the demo embeds its data).
pub fn split_bytes(
    csv: &[u8],
    out_dir: &Path,
    opts: &SplitOptions,
) -> Result<SplitReport, DataError> {
    split_impl(csv, IN_MEMORY, out_dir, opts)
}

fn partition_err(message: impl Into<String>) -> DataError {
    DataError::Partition(message.into())
}

fn split_impl(
    csv: &[u8],
    source: &str,
    out_dir: &Path,
    opts: &SplitOptions,
) -> Result<SplitReport, DataError> {
    if opts.parts < 1 {
        return Err(partition_err("the number of parts must be at least 1"));
    }
    if !(0.0..1.0).contains(&opts.test_fraction) {
        return Err(partition_err(format!(
            "test fraction must be in [0, 1), got {}",
            opts.test_fraction
        )));
    }
    if let PartitionScheme::Dirichlet { alpha } = opts.scheme {
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(partition_err(format!(
                "Dirichlet alpha must be a positive number, got {alpha}"
            )));
        }
        if opts.label.is_none() {
            return Err(partition_err(
                "the Dirichlet scheme needs a label column to skew",
            ));
        }
    }

    let (names, cells) = parse_csv_text(csv, source)?;
    let n_rows = cells.first().map_or(0, Vec::len);
    let labels: Option<Vec<String>> =
        match &opts.label {
            None => None,
            Some(label) => {
                let idx = names.iter().position(|n| n == label).ok_or_else(|| {
                    DataError::MissingColumn {
                        key: "split label".to_owned(),
                        column: label.clone(),
                    }
                })?;
                Some(
                    cells[idx]
                        .iter()
                        .map(|c| match c.as_deref().map(str::trim) {
                            Some(t) if !t.is_empty() => t.to_owned(),
                            _ => MISSING_LABEL_KEY.to_owned(),
                        })
                        .collect(),
                )
            }
        };

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let all: Vec<usize> = (0..n_rows).collect();

    // Test set first, stratified by label, so every hospital split shares one held-out set.
    let (test, pool) = if opts.test_fraction > 0.0 {
        let mut test = Vec::new();
        let mut pool = Vec::new();
        for mut group in groups(&all, labels.as_deref()) {
            group.shuffle(&mut rng);
            let k = (group.len() as f64 * opts.test_fraction).round() as usize;
            test.extend_from_slice(&group[..k]);
            pool.extend_from_slice(&group[k..]);
        }
        (Some(test), pool)
    } else {
        (None, all)
    };

    if opts.parts > pool.len() {
        return Err(partition_err(format!(
            "{} parts requested but only {} rows are available{}",
            opts.parts,
            pool.len(),
            if test.is_some() {
                " after holding out the test set"
            } else {
                ""
            }
        )));
    }

    let assignment = match opts.scheme {
        PartitionScheme::Iid => deal_iid(&pool, labels.as_deref(), opts.parts, &mut rng),
        PartitionScheme::Dirichlet { alpha } => {
            // The check above guarantees a label for Dirichlet.
            let labels = labels
                .as_deref()
                .ok_or_else(|| partition_err("the Dirichlet scheme needs a label column"))?;
            deal_dirichlet(&pool, labels, opts.parts, alpha, &mut rng)?
        }
    };

    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let mut parts = Vec::with_capacity(opts.parts);
    for (i, rows) in assignment.into_iter().enumerate() {
        let path = out_dir.join(format!("hospital_{}.csv", i + 1));
        parts.push(write_part(&path, &names, &cells, rows, labels.as_deref())?);
    }
    let test = match test {
        Some(rows) => Some(write_part(
            &out_dir.join("test.csv"),
            &names,
            &cells,
            rows,
            labels.as_deref(),
        )?),
        None => None,
    };
    Ok(SplitReport { parts, test })
}

/// Row indices grouped by label (in label order), or one group without a label.
fn groups(rows: &[usize], labels: Option<&[String]>) -> Vec<Vec<usize>> {
    match labels {
        None => vec![rows.to_vec()],
        Some(labels) => {
            let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for &r in rows {
                by_label.entry(&labels[r]).or_default().push(r);
            }
            by_label.into_values().collect()
        }
    }
}

/// Shuffles each class and deals all rows round-robin, so part sizes differ by at most one
/// and, with a label, every part gets (nearly) the global class ratio.
fn deal_iid(
    pool: &[usize],
    labels: Option<&[String]>,
    parts: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); parts];
    let mut k = 0;
    for mut group in groups(pool, labels) {
        group.shuffle(rng);
        for r in group {
            out[k % parts].push(r);
            k += 1;
        }
    }
    out
}

fn deal_dirichlet(
    pool: &[usize],
    labels: &[String],
    parts: usize,
    alpha: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, DataError> {
    let min_rows = 10.min(pool.len() / parts);
    let gamma = Gamma::new(alpha, 1.0)
        .map_err(|e| partition_err(format!("invalid Dirichlet alpha {alpha}: {e}")))?;
    let classes = groups(pool, Some(labels));
    for _ in 0..MAX_DIRICHLET_ATTEMPTS {
        let mut out = vec![Vec::new(); parts];
        for class in &classes {
            let mut rows = class.clone();
            rows.shuffle(rng);
            let proportions = dirichlet(&gamma, parts, rng);
            // Cumulative rounding: boundaries never decrease and the last one is exactly n.
            let n = rows.len();
            let mut start = 0;
            let mut cumulative = 0.0;
            for (k, p) in proportions.iter().enumerate() {
                cumulative += p;
                let end = if k + 1 == parts {
                    n
                } else {
                    ((cumulative * n as f64).round() as usize).clamp(start, n)
                };
                out[k].extend_from_slice(&rows[start..end]);
                start = end;
            }
        }
        if out.iter().all(|p| p.len() >= min_rows) {
            for p in &mut out {
                p.sort_unstable();
            }
            return Ok(out);
        }
    }
    Err(partition_err(format!(
        "no Dirichlet(alpha = {alpha}) draw gave every one of {parts} parts at least {min_rows} rows \
         in {MAX_DIRICHLET_ATTEMPTS} attempts; use a larger alpha or fewer parts"
    )))
}

/// Draws from a symmetric Dirichlet by normalizing Gamma(alpha, 1) samples.
fn dirichlet(gamma: &Gamma<f64>, parts: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut draws: Vec<f64> = (0..parts).map(|_| gamma.sample(rng)).collect();
    let sum: f64 = draws.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        draws.iter_mut().for_each(|d| *d /= sum);
    } else {
        // For tiny alpha every Gamma sample can underflow to 0; the limit of Dir(alpha) as
        // alpha -> 0 puts all mass on one uniformly chosen part, so do exactly that.
        let winner = rng.random_range(0..parts);
        draws
            .iter_mut()
            .enumerate()
            .for_each(|(k, d)| *d = f64::from(u8::from(k == winner)));
    }
    draws
}

fn write_part(
    path: &Path,
    names: &[String],
    cells: &[Vec<Option<String>>],
    mut rows: Vec<usize>,
    labels: Option<&[String]>,
) -> Result<PartReport, DataError> {
    // Keep the input's row order inside each file; it makes diffs against the source readable.
    rows.sort_unstable();
    let io = |e| DataError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::new(file);
    write_record(&mut w, names.iter().map(String::as_str)).map_err(io)?;
    for &r in &rows {
        write_record(&mut w, cells.iter().map(|c| c[r].as_deref().unwrap_or(""))).map_err(io)?;
    }
    w.flush().map_err(io)?;

    let mut label_counts = BTreeMap::new();
    if let Some(labels) = labels {
        for &r in &rows {
            *label_counts.entry(labels[r].clone()).or_insert(0) += 1;
        }
    }
    Ok(PartReport {
        file: path.to_path_buf(),
        rows: rows.len(),
        label_counts,
    })
}

/// Writes one CSV record, quoting only fields that need it so that plain cells are byte-for-byte
/// what the input held.
fn write_record<'a>(
    w: &mut impl Write,
    fields: impl Iterator<Item = &'a str>,
) -> std::io::Result<()> {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        if field.contains([',', '"', '\n', '\r']) {
            w.write_all(b"\"")?;
            w.write_all(field.replace('"', "\"\"").as_bytes())?;
            w.write_all(b"\"")?;
        } else {
            w.write_all(field.as_bytes())?;
        }
    }
    w.write_all(b"\n")
}
