//! Tabular hospital data for Cohort: reading CSV/Parquet files, PostgreSQL (OMOP CDM) queries and
//! FHIR Bulk Data exports ([`DataSource`]), validating them against the
//! job's `[data]` spec, computing the aggregate statistics a client shares, applying the
//! federation-wide preprocessing, and partitioning a single file into simulated hospitals.
//!
//! The flow on a client is
//! [`read_table`] → [`LocalDataset::from_table`] → [`LocalDataset::statistics`] (sent to the
//! coordinator) → [`Preprocessing::merge`] (on the coordinator) →
//! [`LocalDataset::preprocess`] → [`Examples::stratified_split`].

mod dataset;
mod error;
pub mod fhir;
mod noisy_stats;
pub mod pg_tls;
mod preprocess;
pub mod psi;
mod public_preprocessing;
mod schema;
mod secure_stats;
mod source;
mod spec;
mod split;
pub mod sql;
mod table;
mod vertical;

pub use dataset::{LocalDataset, LocalStatistics, NumericMoments};
pub use error::DataError;
pub use noisy_stats::{DP_FRACTION_BITS, DP_HISTOGRAM_BINS, RowWeight, StatisticsNoise};
pub use preprocess::{CategoricalTransform, Examples, NumericTransform, Preprocessing};
pub use public_preprocessing::{PublicNumeric, PublicPreprocessing};
pub use schema::{ResolvedSchema, resolve_schema};
pub use secure_stats::{HISTOGRAM_BINS, SUM_BITS, SecureStatistics, StatisticsPass};
pub use source::{DataSource, SourceReport};
pub use spec::{DataSpec, LabelValue, MAX_VALIDATION_FRACTION, NumericColumns};
pub use split::{
    MISSING_LABEL_KEY, PartReport, PartitionScheme, SplitOptions, SplitReport, split_bytes,
    split_file,
};
pub use table::{
    ColumnQuality, MISSING_TOKENS, QualitySummary, RawTable, is_missing_token, read_csv_bytes,
    read_table,
};
pub use vertical::{
    LabelColumn, SiteReport, SiteTable, VerticalAlignment, VerticalSiteInfo, VerticalSplitOptions,
    VerticalSplitReport, split_vertical_bytes, split_vertical_file, vertical_holdout,
};

#[cfg(test)]
mod tests;
