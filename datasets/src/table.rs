//! Reading CSV/Parquet files into an untyped table of text cells.
//!
//! Nothing is inferred here on purpose: a reader that guesses types would turn a stray `abc` in
//! a numeric column into a whole string column (or a null) and the hospital would never learn
//! which row is broken. Keeping text lets [`crate::LocalDataset`] report the exact cell.

use std::collections::{BTreeSet, HashSet};
use std::io::Cursor;
use std::path::Path;

use polars::prelude::{
    Column, CsvReadOptions, DataFrame, DataType, ParquetReader, PolarsError, SerReader,
};
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Cell texts (compared case-insensitively, after trimming) that mean "no value".
pub const MISSING_TOKENS: [&str; 6] = ["", "na", "n/a", "nan", "null", "?"];

/// Whether a cell's text denotes a missing value.
pub fn is_missing_token(cell: &str) -> bool {
    let t = cell.trim();
    MISSING_TOKENS.iter().any(|tok| t.eq_ignore_ascii_case(tok))
}

/// A table of optional text cells, column-major, with missing-value tokens already mapped to
/// `None` and surrounding whitespace trimmed.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTable {
    source: String,
    names: Vec<String>,
    cells: Vec<Vec<Option<String>>>,
    rows: usize,
}

/// Per-column missingness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnQuality {
    pub name: String,
    pub missing: u64,
    /// Non-missing cells / rows; 1.0 for a table without rows (nothing is missing).
    pub completeness: f64,
}

/// Data-quality summary that can leave the hospital: counts and column names only, never a
/// value or a row, so it is safe to show on the coordinator's dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualitySummary {
    pub rows: u64,
    pub columns: Vec<ColumnQuality>,
    /// Rows identical (in every cell, missing included) to an earlier row.
    pub duplicate_rows: u64,
    /// Columns with at most one distinct non-missing value; they carry no information.
    pub constant_columns: Vec<String>,
}

/// Reads a CSV (`.csv`) or Parquet (`.parquet`, `.pq`) file, chosen by extension.
pub fn read_table(path: &Path) -> Result<RawTable, DataError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let source = path.display().to_string();
    match ext.as_deref() {
        Some("csv") => {
            let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
            read_csv_bytes_named(&bytes, &source)
        }
        Some("parquet") | Some("pq") => {
            let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let df = ParquetReader::new(file)
                .finish()
                .map_err(|e| format_error(&source, e))?;
            RawTable::from_dataframe(&df, &source)
        }
        _ => Err(DataError::UnsupportedExtension {
            path: path.to_path_buf(),
        }),
    }
}

/// Parses an in-memory CSV (with header) the same way [`read_table`] parses a `.csv` file.
pub fn read_csv_bytes(csv: &[u8]) -> Result<RawTable, DataError> {
    read_csv_bytes_named(csv, IN_MEMORY)
}

pub(crate) const IN_MEMORY: &str = "<in-memory CSV>";

fn read_csv_bytes_named(csv: &[u8], source: &str) -> Result<RawTable, DataError> {
    let (names, cells) = parse_csv_text(csv, source)?;
    let cells = cells
        .into_iter()
        .map(|col| col.into_iter().map(normalize_cell).collect())
        .collect();
    RawTable::new(source, names, cells)
}

/// Column names plus column-major cells, as parsed (before missing-token normalization).
pub(crate) type TextColumns = (Vec<String>, Vec<Vec<Option<String>>>);

/// Parses CSV with every column as text, keeping cell text verbatim (only empty cells become
/// `None`). Used directly by the partitioner, which must not alter cells.
pub(crate) fn parse_csv_text(csv: &[u8], source: &str) -> Result<TextColumns, DataError> {
    check_header_unique(csv, source)?;
    // infer_schema_length = 0 makes polars type every column as String (no inference).
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .into_reader_with_file_handle(Cursor::new(csv))
        .finish()
        .map_err(|e| format_error(source, e))?;
    dataframe_text(&df, source)
}

/// Polars silently renames duplicate header fields (`a`, `a_duplicated_0`), which would let a
/// spec refer to a column that does not exist in the file; reject duplicates up front.
fn check_header_unique(csv: &[u8], source: &str) -> Result<(), DataError> {
    let header = match csv.iter().position(|&b| b == b'\n') {
        Some(end) => &csv[..end],
        None => csv,
    };
    let header = std::str::from_utf8(header).map_err(|_| DataError::Format {
        source_name: source.to_owned(),
        message: "header is not valid UTF-8".to_owned(),
    })?;
    let header = header.strip_prefix('\u{feff}').unwrap_or(header);
    let mut seen = BTreeSet::new();
    for field in split_header(header.trim_end_matches('\r')) {
        if !seen.insert(field.clone()) {
            return Err(DataError::DuplicateColumn { column: field });
        }
    }
    Ok(())
}

/// Minimal RFC 4180 field splitter for a single header line.
fn split_header(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    fields.push(current);
    fields
}

fn dataframe_text(df: &DataFrame, source: &str) -> Result<TextColumns, DataError> {
    let mut names = Vec::with_capacity(df.width());
    let mut cells = Vec::with_capacity(df.width());
    for column in df.columns() {
        names.push(column.name().to_string());
        cells.push(column_text(column, source)?);
    }
    Ok((names, cells))
}

fn column_text(column: &Column, source: &str) -> Result<Vec<Option<String>>, DataError> {
    let cast_err = |e: PolarsError| DataError::Format {
        source_name: source.to_owned(),
        message: format!(
            "column `{}` of type {} cannot be read as text: {e}",
            column.name(),
            column.dtype()
        ),
    };
    let text = if column.dtype() == &DataType::String {
        column.clone()
    } else {
        column.cast(&DataType::String).map_err(cast_err)?
    };
    let ca = text.str().map_err(cast_err)?;
    Ok(ca
        .downcast_iter()
        .flat_map(|array| array.iter().map(|v| v.map(str::to_owned)))
        .collect())
}

fn format_error(source: &str, e: PolarsError) -> DataError {
    DataError::Format {
        source_name: source.to_owned(),
        message: e.to_string(),
    }
}

fn normalize_cell(cell: Option<String>) -> Option<String> {
    let cell = cell?;
    if is_missing_token(&cell) {
        None
    } else {
        let trimmed = cell.trim();
        Some(if trimmed.len() == cell.len() {
            cell
        } else {
            trimmed.to_owned()
        })
    }
}

impl RawTable {
    /// Builds a table from column names and column-major cells (missing tokens are normalized
    /// like a file read). Useful for tests and for callers that already hold data in memory.
    pub fn from_columns(
        names: Vec<String>,
        cells: Vec<Vec<Option<String>>>,
    ) -> Result<Self, DataError> {
        let cells = cells
            .into_iter()
            .map(|col| col.into_iter().map(normalize_cell).collect())
            .collect();
        RawTable::new("<in-memory table>", names, cells)
    }

    fn new(
        source: &str,
        names: Vec<String>,
        cells: Vec<Vec<Option<String>>>,
    ) -> Result<Self, DataError> {
        if names.len() != cells.len() {
            return Err(DataError::Format {
                source_name: source.to_owned(),
                message: format!("{} column names but {} columns", names.len(), cells.len()),
            });
        }
        let mut seen = BTreeSet::new();
        for name in &names {
            if !seen.insert(name.as_str()) {
                return Err(DataError::DuplicateColumn {
                    column: name.clone(),
                });
            }
        }
        let rows = cells.first().map_or(0, Vec::len);
        if let Some((name, col)) = names.iter().zip(&cells).find(|(_, c)| c.len() != rows) {
            return Err(DataError::Format {
                source_name: source.to_owned(),
                message: format!("column `{name}` has {} rows, expected {rows}", col.len()),
            });
        }
        Ok(RawTable {
            source: source.to_owned(),
            names,
            cells,
            rows,
        })
    }

    fn from_dataframe(df: &DataFrame, source: &str) -> Result<Self, DataError> {
        let (names, cells) = dataframe_text(df, source)?;
        let cells = cells
            .into_iter()
            .map(|col| col.into_iter().map(normalize_cell).collect())
            .collect();
        RawTable::new(source, names, cells)
    }

    /// The same table, named after where it came from (a database, an export directory).
    pub(crate) fn with_source(mut self, source: &str) -> Self {
        self.source = source.to_owned();
        self
    }

    /// Where the table came from (a path, or a placeholder for in-memory data); used in errors.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Column names in file order.
    pub fn columns(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Number of data rows (the header is not counted).
    pub fn n_rows(&self) -> usize {
        self.rows
    }

    /// Cells of a column by name; `None` if there is no such column.
    pub fn column(&self, name: &str) -> Option<&[Option<String>]> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.cells[i].as_slice())
    }

    /// Counts-only quality summary; see [`QualitySummary`].
    pub fn quality(&self) -> QualitySummary {
        let rows = self.rows as u64;
        let mut columns = Vec::with_capacity(self.names.len());
        let mut constant_columns = Vec::new();
        for (name, col) in self.names.iter().zip(&self.cells) {
            let missing = col.iter().filter(|c| c.is_none()).count() as u64;
            let completeness = if rows == 0 {
                1.0
            } else {
                (rows - missing) as f64 / rows as f64
            };
            columns.push(ColumnQuality {
                name: name.clone(),
                missing,
                completeness,
            });
            let mut distinct = HashSet::new();
            let constant = col.iter().flatten().all(|v| {
                distinct.insert(v.as_str());
                distinct.len() <= 1
            });
            if constant {
                constant_columns.push(name.clone());
            }
        }
        let mut seen = HashSet::with_capacity(self.rows);
        let mut duplicate_rows = 0;
        for r in 0..self.rows {
            let row: Vec<Option<&str>> = self.cells.iter().map(|c| c[r].as_deref()).collect();
            if !seen.insert(row) {
                duplicate_rows += 1;
            }
        }
        QualitySummary {
            rows,
            columns,
            duplicate_rows,
            constant_columns,
        }
    }
}
