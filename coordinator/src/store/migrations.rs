//! The coordinator's schema on both backends, and the migrations that
//! bring an older database up to it.
//!
//! SQLite keeps its version in `PRAGMA user_version`; PostgreSQL in the
//! one-row table `cohort_schema_version`. Both stand at [`SCHEMA_VERSION`]:
//! a schema change adds a step to [`SQLITE_MIGRATIONS`] *and* one to
//! [`POSTGRES_MIGRATIONS`] (a test checks that they agree).

use super::StoreError;
use super::sql::{Database, values};

pub(super) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_toml TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    rounds_total INTEGER NOT NULL,
    enrollment_json TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    participants_json TEXT NOT NULL,
    metrics_json TEXT,
    train_loss REAL,
    attempts INTEGER NOT NULL,
    duration_secs REAL NOT NULL,
    model_key TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    completed_at TEXT NOT NULL,
    slowest_fit_secs REAL NOT NULL DEFAULT 0,
    slowest_evaluate_secs REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    quality_summary_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    idx INTEGER PRIMARY KEY,
    entry BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    key_name TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS emission_schedule (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    initial TEXT NOT NULL,
    halving TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS round_values (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    height INTEGER NOT NULL UNIQUE,
    valuation_json TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    at TEXT NOT NULL,
    message TEXT NOT NULL
);
";

/// Schema changes after the first release, applied in order: entry `i`
/// takes `user_version` from `i + 1` to `i + 2`. A database created before
/// versions were tracked reads as version 1.
pub(super) const SQLITE_MIGRATIONS: &[&str] = &[
    // 2: who submitted a job (the certificate name under mutual TLS).
    "ALTER TABLE jobs ADD COLUMN submitted_by TEXT;",
    // 3: receipts of the updates each round aggregated.
    "ALTER TABLE rounds ADD COLUMN updates_json TEXT;",
    // 4: digest of a securely aggregated round's recovered sum.
    "ALTER TABLE rounds ADD COLUMN aggregate_sha256 TEXT;",
    // 5 (update proofs, issue 16): updates a round left out, and why.
    "ALTER TABLE rounds ADD COLUMN excluded_json TEXT;",
    // 6 (dashboard, issue 20): task and answer bytes on the wire.
    "ALTER TABLE rounds ADD COLUMN task_bytes_sent INTEGER;
     ALTER TABLE rounds ADD COLUMN answer_bytes_received INTEGER;
     ALTER TABLE rounds ADD COLUMN train_metrics_json TEXT;",
    // 7: the adaptive clipping bound after each round of a client-level DP
    // job, so that a restarted coordinator goes on from it.
    "CREATE TABLE IF NOT EXISTS clip_bounds (
        job_id TEXT NOT NULL,
        round INTEGER NOT NULL,
        bound REAL NOT NULL,
        PRIMARY KEY (job_id, round)
    );",
    // 8: nothing for SQLite, which has one writer by construction; on
    // PostgreSQL the lease that lets one coordinator of several write
    // (`coordinator_lease`, see `crate::lease`).
    "",
    // 9: the openings of each ledger entry's sealed parts (hospitals'
    // enrolment counts and update receipts), written with the entry.
    "ALTER TABLE ledger ADD COLUMN openings_json TEXT;",
];

/// The schema version this coordinator writes (and reads).
pub const SCHEMA_VERSION: i64 = SQLITE_MIGRATIONS.len() as i64 + 1;

pub(super) fn migrate_sqlite(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    db.execute_batch(SQLITE_SCHEMA)?;
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in SQLITE_MIGRATIONS.iter().enumerate() {
        let target = i as i64 + 2;
        if version.max(1) < target {
            let tx = db.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.execute_batch(&format!("PRAGMA user_version = {target};"))?;
            tx.commit()?;
        }
    }
    Ok(())
}

/// The whole schema at version [`POSTGRES_BASE_VERSION`], as a new
/// PostgreSQL database gets it. The same tables and columns as SQLite's
/// (after its migrations), with PostgreSQL's types: 64-bit integers
/// throughout, so that every value SQLite holds fits.
const POSTGRES_SCHEMA: &str = "
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_toml TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    rounds_total BIGINT NOT NULL,
    enrollment_json TEXT,
    submitted_by TEXT,
    -- Submission order (SQLite's rowid), for listing jobs.
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE TABLE rounds (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round BIGINT NOT NULL,
    participants_json TEXT NOT NULL,
    metrics_json TEXT,
    train_loss DOUBLE PRECISION,
    attempts BIGINT NOT NULL,
    duration_secs DOUBLE PRECISION NOT NULL,
    model_key TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    completed_at TEXT NOT NULL,
    slowest_fit_secs DOUBLE PRECISION NOT NULL DEFAULT 0,
    slowest_evaluate_secs DOUBLE PRECISION NOT NULL DEFAULT 0,
    updates_json TEXT,
    aggregate_sha256 TEXT,
    excluded_json TEXT,
    task_bytes_sent BIGINT,
    answer_bytes_received BIGINT,
    train_metrics_json TEXT,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE clients (
    name TEXT PRIMARY KEY,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    quality_summary_json TEXT NOT NULL
);
CREATE TABLE ledger (
    idx BIGINT PRIMARY KEY,
    entry BYTEA NOT NULL
);
CREATE TABLE ledger_checkpoint (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    key_name TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE emission_schedule (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    initial TEXT NOT NULL,
    halving TEXT NOT NULL
);
CREATE TABLE round_values (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round BIGINT NOT NULL,
    height BIGINT NOT NULL UNIQUE,
    valuation_json TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    at TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE clip_bounds (
    job_id TEXT NOT NULL,
    round BIGINT NOT NULL,
    bound DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, round)
);
";

/// The version [`POSTGRES_SCHEMA`] creates (SQLite's version when
/// PostgreSQL support was added).
const POSTGRES_BASE_VERSION: i64 = 7;

/// Schema changes after [`POSTGRES_BASE_VERSION`]: `(version, SQL)`, in order.
pub(super) const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (
        8,
        "CREATE TABLE coordinator_lease (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        acquired_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );",
    ),
    (9, "ALTER TABLE ledger ADD COLUMN openings_json TEXT;"),
];

/// The newest version PostgreSQL's migrations reach.
pub(super) fn postgres_version() -> i64 {
    POSTGRES_MIGRATIONS
        .last()
        .map_or(POSTGRES_BASE_VERSION, |(version, _)| *version)
}

/// Any number, the same for every coordinator: the advisory lock that
/// keeps two coordinators starting at once from both creating the schema.
const MIGRATION_LOCK: i64 = 0x636f_686f_7274;

/// Creates or migrates the schema of a PostgreSQL database, in one
/// transaction; refuses a database a newer coordinator has written.
pub(super) fn migrate_postgres(db: &Database) -> Result<(), StoreError> {
    db.transaction(|tx| {
        tx.execute("SELECT pg_advisory_xact_lock(?1)", values![MIGRATION_LOCK])?;
        // Not a notice in the coordinator's log at every start.
        tx.batch("SET LOCAL client_min_messages = warning")?;
        tx.batch(
            "CREATE TABLE IF NOT EXISTS cohort_schema_version (
                id BIGINT PRIMARY KEY CHECK (id = 1),
                version BIGINT NOT NULL
            );",
        )?;
        let found: Option<i64> = tx
            .query_opt(
                "SELECT version FROM cohort_schema_version WHERE id = 1",
                &[],
            )?
            .map(|row| row.get(0))
            .transpose()?;
        let mut version = match found {
            Some(version) => version,
            None => {
                tx.batch(POSTGRES_SCHEMA)?;
                tx.execute(
                    "INSERT INTO cohort_schema_version (id, version) VALUES (1, ?1)",
                    values![POSTGRES_BASE_VERSION],
                )?;
                POSTGRES_BASE_VERSION
            }
        };
        if version > postgres_version() {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known: postgres_version(),
            });
        }
        for (target, sql) in POSTGRES_MIGRATIONS {
            if version < *target {
                tx.batch(sql)?;
                tx.execute(
                    "UPDATE cohort_schema_version SET version = ?1 WHERE id = 1",
                    values![*target],
                )?;
                version = *target;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_reach_the_same_schema_version() {
        assert_eq!(postgres_version(), SCHEMA_VERSION);
    }
}
