//! Durable coordinator state: a SQLite file for jobs, rounds and clients,
//! and an object store for model versions.
//!
//! Crash safety rests on one ordering rule: a round's model (and server
//! optimizer state) is written to the object store *before* the SQLite
//! transaction that records the round. A coordinator killed between the two
//! leaves an unreferenced object that the rerun of that round overwrites;
//! one killed after the commit resumes from the next round. The rounds
//! table's primary key makes recording a round twice impossible.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as ObjectPath};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    #[error("object store URL `{url}`: {message}")]
    ObjectStoreUrl { url: String, message: String },
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record in the database: {0}")]
    Corrupt(String),
    #[error("rewards: {0}")]
    Rewards(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Completed,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            other => return Err(StoreError::Corrupt(format!("job state `{other}`"))),
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed)
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub spec_toml: String,
    pub state: JobState,
    pub error: Option<String>,
    pub created_at: String,
    pub rounds_total: u32,
    pub rounds_completed: u32,
    /// Set once the preparation phase enrolled the job's clients.
    pub enrollment: Option<Enrollment>,
    /// The developer's certificate name; `None` for jobs submitted to a
    /// coordinator running `--insecure`.
    pub submitted_by: Option<String>,
}

/// The outcome of a job's preparation phase, fixed for the rest of the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    pub participants: Vec<String>,
    pub preprocessing: cohort_datasets::Preprocessing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoundRow {
    pub job_id: String,
    pub round: u32,
    pub participants: Vec<String>,
    pub metrics: Option<cohort_models::Metrics>,
    pub train_loss: Option<f64>,
    pub attempts: u32,
    pub duration_secs: f64,
    pub model_key: String,
    pub model_sha256: String,
    pub completed_at: String,
    /// Compute time the slowest participant reported for fit / evaluation.
    pub slowest_fit_secs: f64,
    pub slowest_evaluate_secs: f64,
    /// The participants' updates as received (empty for round 0).
    pub updates: Vec<UpdateReceipt>,
    /// Under secure aggregation: hex SHA-256 of the recovered sum of the
    /// survivors' encoded updates (the only aggregate the coordinator saw).
    pub aggregate_sha256: Option<String>,
    /// Updates left out of the round (e.g. without a valid proof), and why.
    pub excluded: Vec<cohort_ledger::Exclusion>,
    /// Task and answer bytes on the wire (`None` for rounds recorded
    /// before they were counted).
    pub traffic: Option<crate::traffic::RoundTraffic>,
    /// Training-split accuracy and AUC (plain aggregation without DP).
    pub train_metrics: Option<crate::train_metrics::TrainMetrics>,
}

/// One aggregated update as the coordinator received it: the same record
/// the round's ledger entry carries.
pub use cohort_ledger::UpdateRecord as UpdateReceipt;

#[derive(Debug, Clone)]
pub struct ClientRow {
    pub name: String,
    pub first_seen: String,
    pub last_seen: String,
    pub quality_summary_json: String,
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

const SCHEMA: &str = "
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
const MIGRATIONS: &[&str] = &[
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
];

/// SQLite integers are signed.
fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn migrate(db: &Connection) -> rusqlite::Result<()> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
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

pub struct Store {
    db: Mutex<Connection>,
    db_path: PathBuf,
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl Store {
    /// Opens (creating if needed) `DATA_DIR/coordinator.sqlite` and the
    /// object store: `DATA_DIR/objects` unless a URL (`file:///…`,
    /// `memory:///`, `s3://…` with the `s3` feature) is given.
    pub fn open(data_dir: &Path, object_store_url: Option<&str>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let db_path = data_dir.join("coordinator.sqlite");
        let db_err = |source| StoreError::Database {
            path: db_path.clone(),
            source,
        };
        let db = Connection::open(&db_path).map_err(db_err)?;
        // WAL + FULL sync: a committed round survives `kill -9` and power loss.
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;
        migrate(&db).map_err(db_err)?;

        let (objects, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match object_store_url {
            None => {
                let dir = data_dir.join("objects");
                std::fs::create_dir_all(&dir).map_err(|source| StoreError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                (Arc::new(fs), ObjectPath::default())
            }
            Some(raw) => {
                let bad = |message: String| StoreError::ObjectStoreUrl {
                    url: raw.to_string(),
                    message,
                };
                let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
                let (store, prefix) =
                    object_store::parse_url(&url).map_err(|e| bad(e.to_string()))?;
                (Arc::from(store), prefix)
            }
        };
        Ok(Self {
            db: Mutex::new(db),
            db_path,
            objects,
            prefix,
        })
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Runs `f` in one SQLite transaction: all of it is committed, or none.
    pub(crate) fn transaction<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let result = f(&tx)?;
        tx.commit()?;
        Ok(result)
    }

    /// The ledger's entries in order, and its latest signed checkpoint with
    /// the name of the key that signed it.
    pub fn ledger(&self) -> Result<LedgerContents, StoreError> {
        read_ledger(&self.db())
    }

    /// What changes whenever the ledger grows (its entry count and signed
    /// checkpoint), without reading the entries: readers that cache the
    /// parsed ledger re-read it only when this changes.
    pub fn ledger_stamp(&self) -> Result<(u64, Option<String>), StoreError> {
        let db = self.db();
        let count: i64 = db.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))?;
        let note = db
            .query_row("SELECT note FROM ledger_checkpoint WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok((u64::try_from(count).unwrap_or_default(), note))
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_job(&self, job: &JobRow) -> Result<(), StoreError> {
        Self::insert_job_in(&self.db(), job)
    }

    /// [`Store::insert_job`] inside a caller's transaction.
    pub(crate) fn insert_job_in(db: &Connection, job: &JobRow) -> Result<(), StoreError> {
        db.execute(
            "INSERT INTO jobs (id, name, spec_toml, state, error, created_at, rounds_total, submitted_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                job.id,
                job.name,
                job.spec_toml,
                job.state.as_str(),
                job.error,
                job.created_at,
                job.rounds_total,
                job.submitted_by
            ],
        )?;
        Ok(())
    }

    pub fn set_job_state(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE jobs SET state = ?2, error = ?3 WHERE id = ?1",
            params![id, state.as_str(), error],
        )?;
        Ok(())
    }

    pub fn set_enrollment(&self, id: &str, enrollment: &Enrollment) -> Result<(), StoreError> {
        Self::set_enrollment_in(&self.db(), id, enrollment)
    }

    /// [`Store::set_enrollment`] inside a caller's transaction.
    pub(crate) fn set_enrollment_in(
        db: &Connection,
        id: &str,
        enrollment: &Enrollment,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(enrollment)
            .map_err(|e| StoreError::Corrupt(format!("encoding enrollment: {e}")))?;
        db.execute(
            "UPDATE jobs SET enrollment_json = ?2 WHERE id = ?1",
            params![id, json],
        )?;
        Ok(())
    }

    const JOB_COLUMNS: &str =
        "j.id, j.name, j.spec_toml, j.state, j.error, j.created_at, j.rounds_total,
         (SELECT COUNT(*) FROM rounds r WHERE r.job_id = j.id AND r.round > 0), j.enrollment_json,
         j.submitted_by";

    fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(JobRow, String, Option<String>)> {
        Ok((
            JobRow {
                id: row.get(0)?,
                name: row.get(1)?,
                spec_toml: row.get(2)?,
                state: JobState::Pending,
                error: row.get(4)?,
                created_at: row.get(5)?,
                rounds_total: row.get(6)?,
                rounds_completed: row.get(7)?,
                enrollment: None,
                submitted_by: row.get(9)?,
            },
            row.get(3)?,
            row.get(8)?,
        ))
    }

    fn finish_job(parts: (JobRow, String, Option<String>)) -> Result<JobRow, StoreError> {
        let (mut job, state, enrollment) = parts;
        job.state = JobState::parse(&state)?;
        job.enrollment = enrollment
            .map(|e| serde_json::from_str(&e))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("job {} enrollment: {e}", job.id)))?;
        Ok(job)
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {} FROM jobs j WHERE j.id = ?1", Self::JOB_COLUMNS);
        let parts = self
            .db()
            .query_row(&sql, params![id], Self::job_from_row)
            .optional()?;
        parts.map(Self::finish_job).transpose()
    }

    pub fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM jobs j ORDER BY j.created_at, j.rowid",
            Self::JOB_COLUMNS
        );
        let db = self.db();
        let mut stmt = db.prepare(&sql)?;
        let rows = stmt
            .query_map([], Self::job_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(Self::finish_job).collect()
    }

    /// Records a completed round. Fails (and changes nothing) if the round
    /// was already recorded.
    pub fn record_round(&self, row: &RoundRow) -> Result<(), StoreError> {
        Self::record_round_in(&self.db(), row)
    }

    /// [`Store::record_round`] inside a caller's transaction.
    pub(crate) fn record_round_in(db: &Connection, row: &RoundRow) -> Result<(), StoreError> {
        let participants = serde_json::to_string(&row.participants)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let metrics = row
            .metrics
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let updates =
            serde_json::to_string(&row.updates).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let excluded =
            serde_json::to_string(&row.excluded).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let train_metrics = row
            .train_metrics
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        db.execute(
            "INSERT INTO rounds (job_id, round, participants_json, metrics_json, train_loss,
                attempts, duration_secs, model_key, model_sha256, completed_at,
                slowest_fit_secs, slowest_evaluate_secs, updates_json, aggregate_sha256,
                excluded_json, task_bytes_sent, answer_bytes_received, train_metrics_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18)",
            params![
                row.job_id,
                row.round,
                participants,
                metrics,
                row.train_loss,
                row.attempts,
                row.duration_secs,
                row.model_key,
                row.model_sha256,
                row.completed_at,
                row.slowest_fit_secs,
                row.slowest_evaluate_secs,
                updates,
                row.aggregate_sha256,
                excluded,
                row.traffic.map(|t| sql_count(t.task_bytes_sent)),
                row.traffic.map(|t| sql_count(t.answer_bytes_received)),
                train_metrics
            ],
        )?;
        Ok(())
    }

    /// Every recorded round of a job, the initial model (round 0) included.
    pub fn rounds(&self, job_id: &str) -> Result<Vec<RoundRow>, StoreError> {
        self.rounds_after(job_id, 0)
    }

    /// The job's recorded rounds numbered above `after` (round 0, the
    /// initial model, only when `after` is 0), in order.
    pub fn rounds_after(&self, job_id: &str, after: u32) -> Result<Vec<RoundRow>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT job_id, round, participants_json, metrics_json, train_loss, attempts,
                    duration_secs, model_key, model_sha256, completed_at,
                    slowest_fit_secs, slowest_evaluate_secs, updates_json, aggregate_sha256,
                    excluded_json, task_bytes_sent, answer_bytes_received, train_metrics_json
             FROM rounds WHERE job_id = ?1 AND (?2 = 0 OR round > ?2) ORDER BY round",
        )?;
        // A JSON column that does not parse is reported like any other
        // column that does not convert, naming the column index.
        fn json_column<T: serde::de::DeserializeOwned>(
            r: &rusqlite::Row<'_>,
            idx: usize,
        ) -> rusqlite::Result<Option<T>> {
            r.get::<_, Option<String>>(idx)?
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        idx,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
        }
        let rows = stmt
            .query_map(params![job_id, after], |r| {
                Ok(RoundRow {
                    job_id: r.get(0)?,
                    round: r.get(1)?,
                    participants: json_column(r, 2)?.unwrap_or_default(),
                    metrics: json_column(r, 3)?,
                    train_loss: r.get(4)?,
                    attempts: r.get(5)?,
                    duration_secs: r.get(6)?,
                    model_key: r.get(7)?,
                    model_sha256: r.get(8)?,
                    completed_at: r.get(9)?,
                    slowest_fit_secs: r.get(10)?,
                    slowest_evaluate_secs: r.get(11)?,
                    updates: json_column(r, 12)?.unwrap_or_default(),
                    aggregate_sha256: r.get(13)?,
                    excluded: json_column(r, 14)?.unwrap_or_default(),
                    traffic: match (
                        r.get::<_, Option<i64>>(15)?
                            .and_then(|n| u64::try_from(n).ok()),
                        r.get::<_, Option<i64>>(16)?
                            .and_then(|n| u64::try_from(n).ok()),
                    ) {
                        (Some(task_bytes_sent), Some(answer_bytes_received)) => {
                            Some(crate::traffic::RoundTraffic {
                                task_bytes_sent,
                                answer_bytes_received,
                            })
                        }
                        _ => None,
                    },
                    train_metrics: json_column(r, 17)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("rounds of job {job_id}: {e}")))?;
        Ok(rows)
    }

    /// Records the adaptive clipping bound a job's round ended with.
    pub fn set_clip_bound(&self, job_id: &str, round: u32, bound: f64) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT OR REPLACE INTO clip_bounds (job_id, round, bound) VALUES (?1, ?2, ?3)",
            params![job_id, round, bound],
        )?;
        Ok(())
    }

    /// The adaptive clipping bound round `round` of a job ended with.
    pub fn clip_bound(&self, job_id: &str, round: u32) -> Result<Option<f64>, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT bound FROM clip_bounds WHERE job_id = ?1 AND round = ?2",
                params![job_id, round],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Notable things that happened to a job (clients dropped, rounds
    /// retried), kept for the developer and for audits.
    pub fn add_event(&self, job_id: &str, message: &str) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO events (job_id, at, message) VALUES (?1, ?2, ?3)",
            params![job_id, now(), message],
        )?;
        Ok(())
    }

    pub fn events(&self, job_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.events_after(job_id, 0)
    }

    /// The job's events after the first `skip`, in order.
    pub fn events_after(
        &self,
        job_id: &str,
        skip: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT at, message FROM events WHERE job_id = ?1 ORDER BY id LIMIT -1 OFFSET ?2",
        )?;
        let rows = stmt
            .query_map(params![job_id, skip], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn upsert_client(&self, name: &str, quality_summary_json: &str) -> Result<(), StoreError> {
        let at = now();
        self.db().execute(
            "INSERT INTO clients (name, first_seen, last_seen, quality_summary_json)
             VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET last_seen = ?2, quality_summary_json = ?3",
            params![name, at, quality_summary_json],
        )?;
        Ok(())
    }

    /// The consortium's emission schedule `(initial, halving)`, fixed by
    /// its first payout; `None` before any.
    pub fn emission_schedule(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Self::emission_schedule_in(&self.db())
    }

    fn emission_schedule_in(db: &Connection) -> Result<Option<(u64, u64)>, StoreError> {
        let row: Option<(String, String)> = db
            .query_row(
                "SELECT initial, halving FROM emission_schedule WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(initial, halving)| {
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|e| StoreError::Corrupt(format!("emission schedule {s:?}: {e}")))
            };
            Ok((parse(&initial)?, parse(&halving)?))
        })
        .transpose()
    }

    /// The consortium's next reward height (rounds paid so far, all jobs),
    /// inside the transaction that pays it; records the schedule with the
    /// first payout and refuses a different one later.
    pub(crate) fn next_height_in(db: &Connection, schedule: (u64, u64)) -> Result<u64, StoreError> {
        match Self::emission_schedule_in(db)? {
            None => {
                db.execute(
                    "INSERT INTO emission_schedule (id, initial, halving) VALUES (1, ?1, ?2)",
                    params![schedule.0.to_string(), schedule.1.to_string()],
                )?;
            }
            Some(stored) if stored != schedule => {
                return Err(StoreError::Rewards(format!(
                    "the consortium's emission schedule is {} base units halving every {} rounds; this coordinator was started with {} / {}",
                    stored.0, stored.1, schedule.0, schedule.1
                )));
            }
            Some(_) => {}
        }
        let paid: i64 = db.query_row("SELECT COUNT(*) FROM round_values", [], |r| r.get(0))?;
        Ok(paid as u64)
    }

    /// Records a round's valuation (JSON) at its reward height.
    pub(crate) fn record_valuation_in(
        db: &Connection,
        job_id: &str,
        round: u32,
        height: u64,
        valuation_json: &str,
    ) -> Result<(), StoreError> {
        db.execute(
            "INSERT INTO round_values (job_id, round, height, valuation_json) VALUES (?1, ?2, ?3, ?4)",
            params![job_id, round, height as i64, valuation_json],
        )?;
        Ok(())
    }

    /// Every valued round of a job: `(round, height, valuation JSON)`.
    pub fn valuations(&self, job_id: &str) -> Result<Vec<(u32, u64, String)>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT round, height, valuation_json FROM round_values WHERE job_id = ?1 ORDER BY round",
        )?;
        let rows = stmt
            .query_map(params![job_id], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT name, first_seen, last_seen, quality_summary_json FROM clients ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ClientRow {
                    name: r.get(0)?,
                    first_seen: r.get(1)?,
                    last_seen: r.get(2)?,
                    quality_summary_json: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn object_path(&self, key: &str) -> ObjectPath {
        self.prefix
            .parts()
            .chain(key.split('/').map(object_store::path::PathPart::from))
            .collect()
    }

    pub async fn put_object(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.objects
            .put(&self.object_path(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    pub async fn get_object(&self, key: &str) -> Result<bytes::Bytes, StoreError> {
        Ok(self
            .objects
            .get(&self.object_path(key))
            .await?
            .bytes()
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> JobRow {
        JobRow {
            id: id.into(),
            name: "n".into(),
            spec_toml: "x".into(),
            state: JobState::Pending,
            error: None,
            created_at: now(),
            rounds_total: 3,
            rounds_completed: 0,
            enrollment: None,
            submitted_by: Some("dev".into()),
        }
    }

    #[test]
    fn a_database_from_before_submitters_were_recorded_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Connection::open(dir.path().join("coordinator.sqlite")).unwrap();
            db.execute_batch(SCHEMA).unwrap();
            db.execute_batch("PRAGMA user_version = 1;").unwrap();
            db.execute(
                "INSERT INTO jobs (id, name, spec_toml, state, created_at, rounds_total)
                 VALUES ('old', 'n', 'x', 'pending', 'now', 3)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Some("memory:///")).unwrap();
        assert_eq!(store.job("old").unwrap().unwrap().submitted_by, None);
        store.insert_job(&job("new")).unwrap();
        drop(store);
        // Reopening does not apply the migration twice.
        let store = Store::open(dir.path(), Some("memory:///")).unwrap();
        assert_eq!(
            store.job("new").unwrap().unwrap().submitted_by.as_deref(),
            Some("dev")
        );
    }

    fn round(job_id: &str, round: u32) -> RoundRow {
        RoundRow {
            job_id: job_id.into(),
            round,
            participants: vec!["a".into()],
            metrics: None,
            train_loss: Some(0.5),
            attempts: 1,
            duration_secs: 0.1,
            model_key: format!("k{round}"),
            model_sha256: "00".into(),
            completed_at: now(),
            slowest_fit_secs: 0.0,
            slowest_evaluate_secs: 0.0,
            updates: Vec::new(),
            aggregate_sha256: None,
            excluded: Vec::new(),
            train_metrics: (round > 0).then_some(crate::train_metrics::TrainMetrics {
                accuracy: 0.75,
                auc: 0.5,
            }),
            traffic: (round > 0).then_some(crate::traffic::RoundTraffic {
                task_bytes_sent: 1000 + u64::from(round),
                answer_bytes_received: 500,
            }),
        }
    }

    #[tokio::test]
    async fn state_survives_reopen_and_rounds_are_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), None).unwrap();
            store.insert_job(&job("j1")).unwrap();
            store.record_round(&round("j1", 0)).unwrap();
            store.record_round(&round("j1", 1)).unwrap();
            assert!(store.record_round(&round("j1", 1)).is_err());
            store.set_job_state("j1", JobState::Running, None).unwrap();
            store
                .put_object("jobs/j1/model", vec![1, 2, 3])
                .await
                .unwrap();
            store.set_clip_bound("j1", 1, 0.8).unwrap();
            store.set_clip_bound("j1", 1, 0.75).unwrap();
        }
        let store = Store::open(dir.path(), None).unwrap();
        assert_eq!(store.clip_bound("j1", 1).unwrap(), Some(0.75));
        assert_eq!(store.clip_bound("j1", 2).unwrap(), None);
        let j = store.job("j1").unwrap().unwrap();
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.rounds_completed, 1);
        let rounds = store.rounds("j1").unwrap();
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[0].traffic, None);
        assert_eq!(rounds[1].traffic.unwrap().task_bytes_sent, 1001);
        assert_eq!(rounds[1].traffic.unwrap().answer_bytes_received, 500);
        assert_eq!(rounds[0].train_metrics, None);
        assert_eq!(rounds[1].train_metrics.unwrap().accuracy, 0.75);
        assert_eq!(
            &store.get_object("jobs/j1/model").await.unwrap()[..],
            &[1, 2, 3]
        );
        assert!(store.job("nope").unwrap().is_none());
    }

    #[test]
    fn a_follower_reads_only_the_rounds_and_events_it_has_not_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store.insert_job(&job("j1")).unwrap();
        for r in 0..=4 {
            store.record_round(&round("j1", r)).unwrap();
        }
        for e in ["a", "b", "c"] {
            store.add_event("j1", e).unwrap();
        }
        let numbers = |after| -> Vec<u32> {
            store
                .rounds_after("j1", after)
                .unwrap()
                .iter()
                .map(|r| r.round)
                .collect()
        };
        assert_eq!(numbers(0), vec![0, 1, 2, 3, 4]);
        assert_eq!(numbers(2), vec![3, 4]);
        assert_eq!(numbers(4), Vec::<u32>::new());
        let messages = |skip| -> Vec<String> {
            store
                .events_after("j1", skip)
                .unwrap()
                .into_iter()
                .map(|(_, m)| m)
                .collect()
        };
        assert_eq!(messages(0), ["a", "b", "c"]);
        assert_eq!(messages(2), ["c"]);
        assert!(messages(u32::MAX).is_empty());
    }

    #[test]
    fn bad_object_store_url_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(dir.path(), Some("nope://x")).err().unwrap();
        assert!(err.to_string().contains("nope://x"), "{err}");
    }
}

/// A ledger as stored: its entries in order (canonical bytes, the Merkle
/// leaves) and its latest signed checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LedgerContents {
    pub leaves: Vec<Vec<u8>>,
    /// The signed note and the name of the key that signed it.
    pub checkpoint: Option<StoredCheckpoint>,
}

#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub key_name: String,
    pub note: String,
}

pub(crate) fn read_ledger(db: &Connection) -> Result<LedgerContents, StoreError> {
    let mut stmt = db.prepare("SELECT entry FROM ledger ORDER BY idx")?;
    let leaves = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let checkpoint = db
        .query_row(
            "SELECT key_name, note FROM ledger_checkpoint WHERE id = 1",
            [],
            |r| {
                Ok(StoredCheckpoint {
                    key_name: r.get(0)?,
                    note: r.get(1)?,
                })
            },
        )
        .optional()?;
    Ok(LedgerContents { leaves, checkpoint })
}

/// Reads a coordinator's ledger straight from `DATA_DIR/coordinator.sqlite`,
/// read-only, as a validator does: nothing is created or migrated.
pub fn read_ledger_at(data_dir: &Path) -> Result<LedgerContents, StoreError> {
    let db_path = data_dir.join("coordinator.sqlite");
    let db = Connection::open_with_flags(&db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Database {
            path: db_path.clone(),
            source,
        })?;
    read_ledger(&db)
}
