//! The single error type of this crate.
//!
//! Every message is meant to be shown to a data manager at a hospital, who can fix the file but
//! cannot read a backtrace: row-level errors therefore always name the column, the 1-based data
//! row (the header is not counted, so data row `r` is line `r + 1` of a CSV file) and the problem.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while reading, validating, preprocessing or partitioning data.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("cannot access `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file could not be parsed as a table at all (malformed CSV, corrupt Parquet, ...).
    #[error("cannot read `{source_name}` as a table: {message}")]
    Format {
        source_name: String,
        message: String,
    },

    /// The file extension does not tell us which reader to use.
    #[error(
        "`{}`: unsupported file extension, expected .csv, .parquet or .pq",
        path.display()
    )]
    UnsupportedExtension { path: PathBuf },

    /// The header names the same column twice, so a column reference would be ambiguous.
    #[error("column `{column}` appears more than once in the header")]
    DuplicateColumn { column: String },

    /// A column named by the spec (or by split options) is not in the file.
    #[error("missing column `{column}` (named in {key})")]
    MissingColumn { key: String, column: String },

    /// The table has a header but no data rows.
    #[error("`{source_name}` has no data rows")]
    NoRows { source_name: String },

    /// A numeric feature cell is neither missing nor a finite number.
    #[error("column `{column}`, row {row}: `{value}` is not a number")]
    InvalidNumber {
        column: String,
        row: usize,
        value: String,
    },

    /// A categorical feature cell holds a value that was not declared in the spec.
    #[error(
        "column `{column}`, row {row}: `{value}` is not an allowed category (allowed: {})",
        quote_list(allowed)
    )]
    UnknownCategory {
        column: String,
        row: usize,
        value: String,
        allowed: Vec<String>,
    },

    /// A label cell matches neither declared class.
    #[error(
        "column `{column}`, row {row}: label value `{value}` is neither positive `{positive}` nor negative `{negative}`"
    )]
    InvalidLabel {
        column: String,
        row: usize,
        value: String,
        positive: String,
        negative: String,
    },

    /// A label cell is empty or a missing-value token; rows without an outcome cannot be used.
    #[error("column `{column}`, row {row}: label is missing")]
    MissingLabel { column: String, row: usize },

    /// The `[data]` spec is inconsistent; `key` is the TOML key to fix (e.g. `data.numeric`).
    #[error("{key}: {message}")]
    Spec { key: String, message: String },

    /// A preprocessing was built for a different schema than the dataset it is applied to.
    #[error("schema mismatch: {message}")]
    SchemaMismatch { message: String },

    /// Client statistics cannot be merged (wrong shape, non-finite values, or no values at all).
    #[error("invalid statistics: {message}")]
    Statistics { message: String },

    /// Example sets with different feature counts cannot be combined.
    #[error("feature count mismatch: part {part} has {found} features, expected {expected}")]
    FeatureMismatch {
        part: usize,
        expected: usize,
        found: usize,
    },

    /// An `Examples` value whose feature buffer does not match its row count and width.
    #[error("invalid examples: {0}")]
    InvalidExamples(String),

    /// The requested partitioning is impossible or the options are invalid.
    #[error("cannot partition data: {0}")]
    Partition(String),

    /// A mapping from a source's records to a feature table (a FHIR mapping file, a SQL query
    /// file) is invalid; `source_name` is the file, `message` names the entry to fix.
    #[error("`{source_name}`: {message}")]
    Mapping {
        source_name: String,
        message: String,
    },

    /// Reading from a database failed: it could not be reached, refused the login, or refused
    /// the query. `source_name` is the database URL without its password.
    #[error("database `{source_name}`: {message}")]
    Database {
        source_name: String,
        message: String,
    },
}

impl DataError {
    pub(crate) fn spec(key: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Spec {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

fn quote_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
