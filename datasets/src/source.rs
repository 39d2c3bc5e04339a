//! Where a hospital's table comes from: a CSV/Parquet file, a PostgreSQL
//! database (an OMOP CDM instance) through a SQL query, or a FHIR Bulk Data
//! export through a mapping file. Every source yields the same
//! [`RawTable`], so validation, statistics and preprocessing do not know
//! which one they read.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::fhir::{FhirMapping, FhirReport, read_export};
use crate::sql::{SqlQuery, read_postgres, redacted};
use crate::table::{RawTable, read_table};

/// A hospital's data source, as the command line names it.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A CSV (`.csv`) or Parquet (`.parquet`, `.pq`) file.
    File(PathBuf),
    /// A PostgreSQL database and a query that yields one row per patient.
    Postgres { url: String, query: SqlQuery },
    /// A directory of FHIR Bulk Data NDJSON files and the mapping that turns
    /// them into one row per Patient.
    Fhir {
        export: PathBuf,
        mapping: Box<FhirMapping>,
    },
}

/// What reading a source found, beyond the table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceReport {
    File,
    Postgres,
    Fhir(FhirReport),
}

impl DataSource {
    /// The source named by `--data` and its companion flags: a
    /// `postgres://` URL needs `--data-query`; a FHIR export directory
    /// needs `--fhir-mapping`; anything else is a file.
    pub fn from_args(
        data: &str,
        query: Option<&Path>,
        fhir_mapping: Option<&Path>,
    ) -> Result<Self, DataError> {
        let is_url = data.starts_with("postgres://") || data.starts_with("postgresql://");
        let refuse = |message: String| DataError::Mapping {
            source_name: if is_url {
                redacted(data)
            } else {
                data.to_owned()
            },
            message,
        };
        if is_url {
            if fhir_mapping.is_some() {
                return Err(refuse(
                    "--fhir-mapping is for a FHIR export directory, not a database".into(),
                ));
            }
            let query = query.ok_or_else(|| {
                refuse(
                    "a database needs --data-query FILE: one SELECT that yields one row per \
                     patient, with the job's columns"
                        .into(),
                )
            })?;
            return Ok(DataSource::Postgres {
                url: data.to_owned(),
                query: SqlQuery::load(query)?,
            });
        }
        if query.is_some() {
            return Err(refuse(
                "--data-query needs --data postgres://USER@HOST/DATABASE".into(),
            ));
        }
        let path = PathBuf::from(data);
        match fhir_mapping {
            Some(mapping) => {
                if !path.is_dir() {
                    return Err(refuse(
                        "--fhir-mapping needs --data to be the directory of a FHIR Bulk Data \
                         export (its .ndjson files)"
                            .into(),
                    ));
                }
                Ok(DataSource::Fhir {
                    export: path,
                    mapping: Box::new(FhirMapping::load(mapping)?),
                })
            }
            None if path.is_dir() => Err(refuse(
                "is a directory; for a FHIR Bulk Data export give --fhir-mapping FILE, \
                 otherwise name a CSV or Parquet file"
                    .into(),
            )),
            None => Ok(DataSource::File(path)),
        }
    }

    /// Reads the whole table. A database is queried and an export read
    /// again on every call.
    pub fn read(&self) -> Result<RawTable, DataError> {
        self.read_reported().map(|(table, _)| table)
    }

    /// [`DataSource::read`], with what the reader found on the way.
    pub fn read_reported(&self) -> Result<(RawTable, SourceReport), DataError> {
        match self {
            DataSource::File(path) => Ok((read_table(path)?, SourceReport::File)),
            DataSource::Postgres { url, query } => {
                Ok((read_postgres(url, query)?, SourceReport::Postgres))
            }
            DataSource::Fhir { export, mapping } => {
                let (table, report) = read_export(export, mapping)?;
                Ok((table, SourceReport::Fhir(report)))
            }
        }
    }

    /// Whether [`DataSource::read`] is cheap and stable enough to repeat for
    /// every task: true for a file; a database or an export is read once and
    /// kept, so that every round of a job sees the same rows.
    pub fn is_file(&self) -> bool {
        matches!(self, DataSource::File(_))
    }

    /// The file, for a file source.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataSource::File(path) => Some(path),
            _ => None,
        }
    }
}

impl From<PathBuf> for DataSource {
    fn from(path: PathBuf) -> Self {
        DataSource::File(path)
    }
}

/// The source for messages and logs; a database's password is hidden.
impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::File(path) => write!(f, "{}", path.display()),
            DataSource::Postgres { url, query } => {
                write!(f, "{} (query {})", redacted(url), query.source_name())
            }
            DataSource::Fhir { export, mapping } => write!(
                f,
                "FHIR export {} ({} columns by mapping)",
                export.display(),
                mapping.columns().len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_that_do_not_fit_the_source_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let query = dir.path().join("q.sql");
        std::fs::write(&query, "SELECT 1 AS one").unwrap();
        let error = |data: &str, q: Option<&Path>, m: Option<&Path>| {
            DataSource::from_args(data, q, m).unwrap_err().to_string()
        };
        let e = error("postgres://omop:pw@db/cdm", None, None);
        assert!(e.contains("--data-query") && !e.contains("pw@"), "{e}");
        let e = error("postgres://db/cdm", Some(&query), Some(&query));
        assert!(e.contains("--fhir-mapping"), "{e}");
        let e = error("data/wdbc.csv", Some(&query), None);
        assert!(e.contains("--data-query needs"), "{e}");
        let e = error(dir.path().to_str().unwrap(), None, None);
        assert!(e.contains("--fhir-mapping"), "{e}");
        let e = error("data/wdbc.csv", None, Some(&query));
        assert!(e.contains("directory of a FHIR"), "{e}");
        let source =
            DataSource::from_args("postgres://omop:pw@db/cdm", Some(&query), None).unwrap();
        assert!(!source.is_file());
        assert_eq!(
            source.to_string(),
            format!("postgres://omop:***@db/cdm (query {})", query.display())
        );
    }
}
