//! Hospital data read from a PostgreSQL database (an OMOP CDM instance, a
//! data warehouse) through one SQL query that yields one row per patient.
//!
//! The query runs inside a `READ ONLY` transaction and through the extended
//! protocol, which refuses more than one statement: a query file cannot
//! write to the hospital's database, by mistake or otherwise. Every column
//! is cast to `text` by PostgreSQL itself (the query is wrapped as
//! `SELECT q."col"::text, ... FROM (QUERY) AS q`), so numbers, dates and
//! booleans reach the crate's validation in their canonical text form, as a
//! CSV cell would, and a bad cell is reported by column and row the same way.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use crate::pg_tls::PgTarget;

use crate::error::DataError;
use crate::table::RawTable;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQL query file's text, checked to be one non-empty statement.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlQuery {
    text: String,
    source_name: String,
}

impl SqlQuery {
    /// Reads a query file (`--data-query`).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::new(&text, &path.display().to_string())
    }

    /// A query from its text; `source_name` names it in errors. A trailing
    /// semicolon is allowed (the query is embedded as a subquery).
    pub fn new(text: &str, source_name: &str) -> Result<Self, DataError> {
        let trimmed = text.trim().trim_end_matches(';').trim_end();
        if trimmed.is_empty() {
            return Err(DataError::Mapping {
                source_name: source_name.to_owned(),
                message:
                    "the query is empty; it must be one SELECT that yields one row per patient"
                        .to_owned(),
            });
        }
        Ok(SqlQuery {
            text: trimmed.to_owned(),
            source_name: source_name.to_owned(),
        })
    }

    /// Where the query came from.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
}

/// Runs `query` against the PostgreSQL database at `url` and returns its
/// result as a table of text cells (SQL `NULL` is a missing cell).
///
/// Without a password in the URL, `PGPASSWORD` from the environment is
/// used, so that the password need not appear on a command line. TLS
/// follows libpq's `sslmode` and `sslrootcert` ([`crate::pg_tls`]):
/// `?sslmode=verify-full&sslrootcert=/etc/ssl/hospital-ca.pem` encrypts the
/// connection and verifies the server; without them it is plaintext, for a
/// client next to the database or behind a tunnel.
pub fn read_postgres(url: &str, query: &SqlQuery) -> Result<RawTable, DataError> {
    let source_name = redacted(url);
    let failed = |message: String| DataError::Database {
        source_name: source_name.clone(),
        message,
    };
    let mut target = PgTarget::parse(url).map_err(failed)?;
    let config = &mut target.config;
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("cohort-client");
    }
    let text = query.text.clone();
    let query_name = query.source_name.clone();
    // tokio-postgres is async and this crate's callers may or may not be
    // inside a runtime; a thread with a runtime of its own works for both.
    let result = std::thread::Builder::new()
        .name("cohort-sql-source".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| QueryFailure::Connect(format!("starting its I/O thread: {e}")))?;
            runtime.block_on(run_query(&target, &text))
        })
        .map_err(|e| failed(format!("starting its I/O thread: {e}")))?
        .join()
        .map_err(|_| failed("the query thread panicked".to_owned()))?;
    let (names, cells) = result.map_err(|failure| match failure {
        QueryFailure::Connect(message) => failed(message),
        QueryFailure::Query(message) => DataError::Database {
            source_name: source_name.clone(),
            message: format!("query `{query_name}`: {message}"),
        },
        QueryFailure::Columns(error) => error,
    })?;
    RawTable::from_columns(names, cells).map(|table| table.with_source(&source_name))
}

enum QueryFailure {
    Connect(String),
    Query(String),
    Columns(DataError),
}

type Columns = (Vec<String>, Vec<Vec<Option<String>>>);

async fn run_query(target: &PgTarget, query: &str) -> Result<Columns, QueryFailure> {
    let (mut client, driver) = target
        .connect()
        .await
        .map_err(|e| QueryFailure::Connect(describe(&e)))?;
    let result = async {
        let query_error = |e: tokio_postgres::Error| QueryFailure::Query(describe(&e));
        let transaction = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(query_error)?;
        let statement = transaction.prepare(query).await.map_err(query_error)?;
        let names: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        if names.is_empty() {
            return Err(QueryFailure::Query(
                "it returns no columns; it must be a SELECT that yields one row per patient"
                    .to_owned(),
            ));
        }
        let mut seen = BTreeSet::new();
        if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(QueryFailure::Columns(DataError::DuplicateColumn {
                column: twice.clone(),
            }));
        }
        let as_text = names
            .iter()
            .map(|n| format!("q.{}::text", quote_identifier(n)))
            .collect::<Vec<_>>()
            .join(", ");
        // Only a query PostgreSQL accepts as a subquery (SELECT, WITH ...
        // SELECT, VALUES, TABLE) gets past this: a DELETE ... RETURNING is
        // refused here, before anything runs.
        let table = transaction
            .prepare(&format!("SELECT {as_text} FROM ({query}) AS q"))
            .await
            .map_err(|e| {
                QueryFailure::Query(format!(
                    "it is not a SELECT whose result can be read as a table ({})",
                    describe(&e)
                ))
            })?;
        let rows = transaction.query(&table, &[]).await.map_err(query_error)?;
        let mut cells = vec![Vec::with_capacity(rows.len()); names.len()];
        for row in &rows {
            for (i, column) in cells.iter_mut().enumerate() {
                column.push(row.try_get::<_, Option<String>>(i).map_err(query_error)?);
            }
        }
        // Read-only: nothing to keep.
        transaction.rollback().await.map_err(query_error)?;
        Ok((names, cells))
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A database URL with its password (if any) hidden, for messages and
/// logs; by hand rather than with a URL parser, so that a URL too
/// malformed to parse is still shown without its password.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end]
        .rfind('@')
        .map(|i| scheme_end + i)
    else {
        return url.to_string();
    };
    match url[scheme_end..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..scheme_end + colon], &url[at..]),
        None => url.to_string(),
    }
}

/// What went wrong talking to the server, with the server's own message
/// (e.g. `password authentication failed for user "cohort"`) when it sent one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_from_messages() {
        assert_eq!(
            redacted("postgres://omop:s3cret@db.hospital:5432/cdm"),
            "postgres://omop:***@db.hospital:5432/cdm"
        );
        assert_eq!(
            redacted("postgres://omop@db.hospital/cdm"),
            "postgres://omop@db.hospital/cdm"
        );
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[test]
    fn an_empty_query_is_refused_by_name() {
        let error = SqlQuery::new(" ;\n", "features.sql")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("features.sql") && error.contains("empty"),
            "{error}"
        );
        let query = SqlQuery::new("SELECT 1 AS one;\n", "q.sql").unwrap();
        assert_eq!(query.text, "SELECT 1 AS one");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_identifier("?column?"), "\"?column?\"");
    }

    #[test]
    fn an_unreachable_server_is_named_without_its_password() {
        let query = SqlQuery::new("SELECT 1 AS one", "q.sql").unwrap();
        // Port 1 on loopback: nothing listens there.
        let error = read_postgres("postgres://omop:s3cret@127.0.0.1:1/cdm", &query)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("127.0.0.1:1") && !error.contains("s3cret"),
            "{error}"
        );
    }
}
