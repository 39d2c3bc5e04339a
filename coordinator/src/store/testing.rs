//! Running the store's tests (and the binary's end-to-end tests) on both
//! backends: SQLite always, and PostgreSQL when `COHORT_TEST_POSTGRES_URL`
//! names a server the tests may create databases on. Each test gets a
//! database of its own, dropped when it ends, so tests run in parallel.
//!
//! Without the variable the PostgreSQL half is skipped with a message;
//! with `COHORT_REQUIRE_POSTGRES` set (CI sets it) a missing variable is a
//! failure instead.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::postgres::PgConnection;
use super::sql::Database;
use super::{Store, StoreError};

/// The PostgreSQL server the tests use, or `None` (skip). Panics when
/// `COHORT_REQUIRE_POSTGRES` is set and no server is named.
pub fn postgres_server() -> Option<String> {
    match std::env::var("COHORT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("COHORT_REQUIRE_POSTGRES").is_none(),
                "COHORT_REQUIRE_POSTGRES is set but COHORT_TEST_POSTGRES_URL is not \
                 (a postgres://user:password@host:port/database URL the tests may create databases with)"
            );
            eprintln!(
                "COHORT_TEST_POSTGRES_URL is not set: skipping the PostgreSQL half of this test"
            );
            None
        }
    }
}

/// A database of its own for one test, on the server of
/// `COHORT_TEST_POSTGRES_URL`; dropped (with its connections) when this is.
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `cohort_test_LABEL_...`, unique to this process and call.
    pub fn create(server: &str, label: &str) -> Result<Self, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "cohort_test_{label}_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = Database::Postgres(Box::new(PgConnection::connect(server)?));
        admin.batch(&format!("CREATE DATABASE \"{name}\""))?;
        let mut url = url::Url::parse(server).map_err(|e| StoreError::DatabaseUrl {
            url: super::redacted(server),
            message: e.to_string(),
        })?;
        url.set_path(&format!("/{name}"));
        Ok(Self {
            server: server.to_string(),
            name,
            url: url.to_string(),
        })
    }

    /// `postgres://.../cohort_test_...`: what `--database` takes.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(admin) = PgConnection::connect(&self.server) {
            let _ = Database::Postgres(Box::new(admin)).batch(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// One backend a store test runs on.
pub enum TestBackend {
    Sqlite,
    Postgres(TestDatabase),
}

impl TestBackend {
    /// SQLite, and PostgreSQL when a server is configured (see the module
    /// documentation).
    pub fn all(label: &str) -> Vec<TestBackend> {
        let mut backends = vec![TestBackend::Sqlite];
        if let Some(server) = postgres_server() {
            let database = TestDatabase::create(&server, label).unwrap_or_else(|e| {
                panic!(
                    "creating a test database on {}: {e}",
                    super::redacted(&server)
                )
            });
            backends.push(TestBackend::Postgres(database));
        }
        backends
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestBackend::Sqlite => "sqlite",
            TestBackend::Postgres(_) => "postgres",
        }
    }

    /// The `--database` URL, `None` for SQLite.
    pub fn database_url(&self) -> Option<&str> {
        match self {
            TestBackend::Sqlite => None,
            TestBackend::Postgres(db) => Some(db.url()),
        }
    }

    /// The store on this backend (SQLite in `data_dir`).
    pub fn open(
        &self,
        data_dir: &Path,
        object_store_url: Option<&str>,
    ) -> Result<Store, StoreError> {
        Store::open_with_database(data_dir, self.database_url(), object_store_url)
    }
}
