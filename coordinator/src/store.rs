//! Durable coordinator state: a database for jobs, rounds, clients and the
//! ledger (a SQLite file, or PostgreSQL with `--database`; see [`sql`]),
//! and an object store for model versions.
//!
//! Crash safety rests on one ordering rule: a round's model (and server
//! optimizer state) is written to the object store *before* the database
//! transaction that records the round. A coordinator killed between the two
//! leaves an unreferenced object that the rerun of that round overwrites;
//! one killed after the commit resumes from the next round. The rounds
//! table's primary key makes recording a round twice impossible.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as ObjectPath};
use serde::{Deserialize, Serialize};

mod migrations;
pub mod postgres;
pub(crate) mod sql;
#[doc(hidden)]
pub mod testing;

pub use migrations::SCHEMA_VERSION;
pub use postgres::redacted;
pub(crate) use sql::{Database, Dialect, Row, values};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("database {url}: {message}")]
    DatabaseUrl { url: String, message: String },
    #[error(
        "the database's schema is version {found}, newer than this coordinator's ({known}): run a newer cohort"
    )]
    SchemaTooNew { found: i64, known: i64 },
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
    #[error(
        "lost the coordinator lease ({0}): another coordinator has taken over, so this one may no longer write the state"
    )]
    LeaseLost(String),
    #[error(
        "the ledger is signed by {recorded}, but this coordinator signs with {ours}: every coordinator of a consortium's state (a standby too) needs the same signing key: the same startup kit, or under --insecure a copy of the first coordinator's ledger-signing-key.pem"
    )]
    ForeignLedgerKey { recorded: String, ours: String },
}

impl StoreError {
    /// Whether the disk (or the database server's disk) is full: the job
    /// waits for space instead of failing, since nothing of the failed
    /// write was kept.
    pub fn is_out_of_space(&self) -> bool {
        const ENOSPC: i32 = 28;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && (io.raw_os_error() == Some(ENOSPC)
                    || io.kind() == std::io::ErrorKind::StorageFull)
            {
                return true;
            }
            if let Some(rusqlite::Error::SqliteFailure(failure, _)) =
                e.downcast_ref::<rusqlite::Error>()
                && failure.code == rusqlite::ErrorCode::DiskFull
            {
                return true;
            }
            source = e.source();
        }
        // PostgreSQL's disk_full (SQLSTATE 53100) arrives as the server's text.
        matches!(self, StoreError::Postgres(message)
            if message.contains("No space left on device") || message.contains("disk full"))
    }

    /// Whether the storage refuses writes: a file system mounted (or
    /// remounted by the kernel after I/O errors) read-only, a SQLite file
    /// that became read-only, or a PostgreSQL server that is now a read-only
    /// standby. Like a full disk, this is waited out rather than failing the
    /// job: nothing of the refused write was kept.
    pub fn is_read_only(&self) -> bool {
        const EROFS: i32 = 30;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && (io.raw_os_error() == Some(EROFS)
                    || io.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
            {
                return true;
            }
            if let Some(rusqlite::Error::SqliteFailure(failure, _)) =
                e.downcast_ref::<rusqlite::Error>()
                && failure.code == rusqlite::ErrorCode::ReadOnly
            {
                return true;
            }
            source = e.source();
        }
        // SQLSTATE 25006, read_only_sql_transaction: e.g. a primary demoted
        // to a hot standby.
        matches!(self, StoreError::Postgres(message)
            if message.contains("read-only transaction") || message.contains("Read-only file system"))
    }
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

/// Opens (creating or migrating) the SQLite file at `db_path`.
fn open_sqlite(db_path: &Path) -> Result<Database, StoreError> {
    let db_err = |source| StoreError::Database {
        path: db_path.to_path_buf(),
        source,
    };
    let db = rusqlite::Connection::open(db_path).map_err(db_err)?;
    // WAL + FULL sync: a committed round survives `kill -9` and power loss.
    db.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(db_err)?;
    migrations::migrate_sqlite(&db).map_err(db_err)?;
    Ok(Database::Sqlite(db))
}

/// Connects to the PostgreSQL database at `url`, creating or migrating
/// its schema.
pub(crate) fn open_postgres(url: &str) -> Result<Database, StoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::DatabaseUrl {
            url: redacted(url),
            message: "expected postgres://user:password@host:port/database".into(),
        });
    }
    let db = Database::Postgres(Box::new(postgres::PgConnection::connect(url)?));
    migrations::migrate_postgres(&db).map_err(|e| StoreError::DatabaseUrl {
        url: redacted(url),
        message: format!("preparing the schema: {e}"),
    })?;
    Ok(db)
}

/// An object store and the prefix inside it, from `--object-store`. S3
/// buckets take their credentials, region and endpoint from the standard
/// `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_ALLOW_HTTP`, ...).
fn parse_object_store_url(url: &url::Url) -> Result<(Box<dyn ObjectStore>, ObjectPath), String> {
    #[cfg(feature = "s3")]
    if url.scheme() == "s3" || url.scheme() == "s3a" {
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_url(url.as_str())
            .build()
            .map_err(|e| e.to_string())?;
        let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| e.to_string())?;
        return Ok((Box::new(store), prefix));
    }
    object_store::parse_url(url).map_err(|e| e.to_string())
}

/// SQLite integers are signed.
fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where the coordinator's state lives.
#[derive(Debug, Clone)]
pub enum StateLocation {
    /// `DATA_DIR/coordinator.sqlite`.
    Sqlite(PathBuf),
    /// A PostgreSQL database (its URL with the password hidden).
    Postgres(String),
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StateLocation::Postgres(url) => f.write_str(url),
        }
    }
}

pub struct Store {
    db: Mutex<Database>,
    location: StateLocation,
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The coordinator lease that writes must still hold, once set.
    fence: std::sync::OnceLock<Arc<crate::lease::Fence>>,
}

impl Store {
    /// Opens (creating if needed) `DATA_DIR/coordinator.sqlite` and the
    /// object store: `DATA_DIR/objects` unless a URL (`file:///…`,
    /// `memory:///`, `s3://…` with the `s3` feature) is given.
    pub fn open(data_dir: &Path, object_store_url: Option<&str>) -> Result<Self, StoreError> {
        Self::open_with_database(data_dir, None, object_store_url)
    }

    /// Like [`Store::open`], with the state in the PostgreSQL database at
    /// `database_url` (`postgres://user:password@host:port/database`)
    /// instead of SQLite when one is given. The schema is created or
    /// migrated on first use; a malformed URL, an unreachable server or
    /// refused credentials are errors naming the problem.
    pub fn open_with_database(
        data_dir: &Path,
        database_url: Option<&str>,
        object_store_url: Option<&str>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let (db, location) = match database_url {
            None => {
                let db_path = data_dir.join("coordinator.sqlite");
                (
                    open_sqlite(&db_path)?,
                    StateLocation::Sqlite(db_path.clone()),
                )
            }
            Some(url) => (open_postgres(url)?, StateLocation::Postgres(redacted(url))),
        };

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
                let (store, prefix) = parse_object_store_url(&url).map_err(bad)?;
                (Arc::from(store), prefix)
            }
        };
        Ok(Self {
            db: Mutex::new(db),
            location,
            objects,
            prefix,
            fence: std::sync::OnceLock::new(),
        })
    }

    /// From now on, every write needs `fence`'s lease: database writes check
    /// it in their own transaction, object writes against its local
    /// validity (see [`crate::lease`]). Set once, by the coordinator that
    /// acquired the lease.
    pub fn set_fence(&self, fence: Arc<crate::lease::Fence>) -> Result<(), StoreError> {
        self.db()
            .fence(fence.holder(), fence.epoch(), fence.ttl())?;
        let _ = self.fence.set(fence);
        Ok(())
    }

    /// The SQLite file, when the state is in one.
    pub fn db_path(&self) -> Option<&Path> {
        match &self.location {
            StateLocation::Sqlite(path) => Some(path),
            StateLocation::Postgres(_) => None,
        }
    }

    /// Where the state lives, for logs and messages (no password).
    pub fn location(&self) -> &StateLocation {
        &self.location
    }

    /// Runs `f` in one database transaction: all of it is committed, or none.
    pub(crate) fn transaction<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.db().transaction(f)
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
        let count: i64 = db.query_one("SELECT COUNT(*) FROM ledger", &[])?.get(0)?;
        let note = db
            .query_opt("SELECT note FROM ledger_checkpoint WHERE id = 1", &[])?
            .map(|r| r.get(0))
            .transpose()?;
        Ok((u64::try_from(count).unwrap_or_default(), note))
    }

    fn db(&self) -> MutexGuard<'_, Database> {
        // A panic while holding the lock cannot leave the database
        // inconsistent (transactions roll back), so a poisoned lock is
        // still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_job(&self, job: &JobRow) -> Result<(), StoreError> {
        Self::insert_job_in(&self.db(), job)
    }

    /// [`Store::insert_job`] inside a caller's transaction.
    pub(crate) fn insert_job_in(db: &Database, job: &JobRow) -> Result<(), StoreError> {
        db.execute(
            "INSERT INTO jobs (id, name, spec_toml, state, error, created_at, rounds_total, submitted_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            values![
                &job.id,
                &job.name,
                &job.spec_toml,
                job.state.as_str(),
                job.error.as_deref(),
                &job.created_at,
                job.rounds_total,
                job.submitted_by.as_deref()
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
            values![id, state.as_str(), error],
        )?;
        Ok(())
    }

    pub fn set_enrollment(&self, id: &str, enrollment: &Enrollment) -> Result<(), StoreError> {
        Self::set_enrollment_in(&self.db(), id, enrollment)
    }

    /// [`Store::set_enrollment`] inside a caller's transaction.
    pub(crate) fn set_enrollment_in(
        db: &Database,
        id: &str,
        enrollment: &Enrollment,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(enrollment)
            .map_err(|e| StoreError::Corrupt(format!("encoding enrollment: {e}")))?;
        db.execute(
            "UPDATE jobs SET enrollment_json = ?2 WHERE id = ?1",
            values![id, json],
        )?;
        Ok(())
    }

    const JOB_COLUMNS: &str =
        "j.id, j.name, j.spec_toml, j.state, j.error, j.created_at, j.rounds_total,
         (SELECT COUNT(*) FROM rounds r WHERE r.job_id = j.id AND r.round > 0), j.enrollment_json,
         j.submitted_by";

    fn job_from_row(row: &Row) -> Result<JobRow, StoreError> {
        let id: String = row.get(0)?;
        let state: String = row.get(3)?;
        let enrollment: Option<String> = row.get(8)?;
        Ok(JobRow {
            name: row.get(1)?,
            spec_toml: row.get(2)?,
            state: JobState::parse(&state)?,
            error: row.get(4)?,
            created_at: row.get(5)?,
            rounds_total: row.get(6)?,
            rounds_completed: row.get(7)?,
            enrollment: enrollment
                .map(|e| serde_json::from_str(&e))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("job {id} enrollment: {e}")))?,
            submitted_by: row.get(9)?,
            id,
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {} FROM jobs j WHERE j.id = ?1", Self::JOB_COLUMNS);
        let row = self.db().query_opt(&sql, values![id])?;
        row.as_ref().map(Self::job_from_row).transpose()
    }

    pub fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let db = self.db();
        let order = match db.dialect() {
            Dialect::Sqlite => "j.rowid",
            Dialect::Postgres => "j.seq",
        };
        let sql = format!(
            "SELECT {} FROM jobs j ORDER BY j.created_at, {order}",
            Self::JOB_COLUMNS
        );
        let rows = db.query(&sql, &[])?;
        rows.iter().map(Self::job_from_row).collect()
    }

    /// Records a completed round. Fails (and changes nothing) if the round
    /// was already recorded.
    pub fn record_round(&self, row: &RoundRow) -> Result<(), StoreError> {
        Self::record_round_in(&self.db(), row)
    }

    /// [`Store::record_round`] inside a caller's transaction.
    pub(crate) fn record_round_in(db: &Database, row: &RoundRow) -> Result<(), StoreError> {
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
            values![
                &row.job_id,
                row.round,
                participants,
                metrics,
                row.train_loss,
                row.attempts,
                row.duration_secs,
                &row.model_key,
                &row.model_sha256,
                &row.completed_at,
                row.slowest_fit_secs,
                row.slowest_evaluate_secs,
                updates,
                row.aggregate_sha256.as_deref(),
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
        let rows = self.db().query(
            "SELECT job_id, round, participants_json, metrics_json, train_loss, attempts,
                    duration_secs, model_key, model_sha256, completed_at,
                    slowest_fit_secs, slowest_evaluate_secs, updates_json, aggregate_sha256,
                    excluded_json, task_bytes_sent, answer_bytes_received, train_metrics_json
             FROM rounds WHERE job_id = ?1 AND (?2 = 0 OR round > ?2) ORDER BY round",
            values![job_id, after],
        )?;
        // A JSON column that does not parse is reported like any other
        // column that does not convert, naming the column index.
        fn json_column<T: serde::de::DeserializeOwned>(
            r: &Row,
            idx: usize,
        ) -> Result<Option<T>, StoreError> {
            r.get::<Option<String>>(idx)?
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("column {idx}: {e}")))
        }
        let round_row = |r: &Row| -> Result<RoundRow, StoreError> {
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
                    r.get::<Option<i64>>(15)?
                        .and_then(|n| u64::try_from(n).ok()),
                    r.get::<Option<i64>>(16)?
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
        };
        rows.iter()
            .map(round_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("rounds of job {job_id}: {e}")))
    }

    /// Records the adaptive clipping bound a job's round ended with.
    pub fn set_clip_bound(&self, job_id: &str, round: u32, bound: f64) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO clip_bounds (job_id, round, bound) VALUES (?1, ?2, ?3)
             ON CONFLICT (job_id, round) DO UPDATE SET bound = excluded.bound",
            values![job_id, round, bound],
        )?;
        Ok(())
    }

    /// The adaptive clipping bound round `round` of a job ended with.
    pub fn clip_bound(&self, job_id: &str, round: u32) -> Result<Option<f64>, StoreError> {
        self.db()
            .query_opt(
                "SELECT bound FROM clip_bounds WHERE job_id = ?1 AND round = ?2",
                values![job_id, round],
            )?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Notable things that happened to a job (clients dropped, rounds
    /// retried), kept for the developer and for audits.
    pub fn add_event(&self, job_id: &str, message: &str) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO events (job_id, at, message) VALUES (?1, ?2, ?3)",
            values![job_id, now(), message],
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
        // Both dialects need a LIMIT to take an OFFSET: the largest one.
        self.db()
            .query(
                "SELECT at, message FROM events WHERE job_id = ?1 ORDER BY id LIMIT ?3 OFFSET ?2",
                values![job_id, skip, i64::MAX],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
    }

    pub fn upsert_client(&self, name: &str, quality_summary_json: &str) -> Result<(), StoreError> {
        let at = now();
        self.db().execute(
            "INSERT INTO clients (name, first_seen, last_seen, quality_summary_json)
             VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET last_seen = ?2, quality_summary_json = ?3",
            values![name, at, quality_summary_json],
        )?;
        Ok(())
    }

    /// The consortium's emission schedule `(initial, halving)`, fixed by
    /// its first payout; `None` before any.
    pub fn emission_schedule(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Self::emission_schedule_in(&self.db())
    }

    fn emission_schedule_in(db: &Database) -> Result<Option<(u64, u64)>, StoreError> {
        let row = db.query_opt(
            "SELECT initial, halving FROM emission_schedule WHERE id = 1",
            &[],
        )?;
        row.map(|r| {
            let parse = |s: String| {
                s.parse::<u64>()
                    .map_err(|e| StoreError::Corrupt(format!("emission schedule {s:?}: {e}")))
            };
            Ok((parse(r.get(0)?)?, parse(r.get(1)?)?))
        })
        .transpose()
    }

    /// The consortium's next reward height (rounds paid so far, all jobs),
    /// inside the transaction that pays it; records the schedule with the
    /// first payout and refuses a different one later.
    pub(crate) fn next_height_in(db: &Database, schedule: (u64, u64)) -> Result<u64, StoreError> {
        match Self::emission_schedule_in(db)? {
            None => {
                db.execute(
                    "INSERT INTO emission_schedule (id, initial, halving) VALUES (1, ?1, ?2)",
                    values![schedule.0.to_string(), schedule.1.to_string()],
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
        db.query_one("SELECT COUNT(*) FROM round_values", &[])?
            .get::<u64>(0)
    }

    /// Records a round's valuation (JSON) at its reward height.
    pub(crate) fn record_valuation_in(
        db: &Database,
        job_id: &str,
        round: u32,
        height: u64,
        valuation_json: &str,
    ) -> Result<(), StoreError> {
        db.execute(
            "INSERT INTO round_values (job_id, round, height, valuation_json) VALUES (?1, ?2, ?3, ?4)",
            values![job_id, round, sql_count(height), valuation_json],
        )?;
        Ok(())
    }

    /// Every valued round of a job: `(round, height, valuation JSON)`.
    pub fn valuations(&self, job_id: &str) -> Result<Vec<(u32, u64, String)>, StoreError> {
        self.db()
            .query(
                "SELECT round, height, valuation_json FROM round_values WHERE job_id = ?1 ORDER BY round",
                values![job_id],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .collect()
    }

    pub fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        self.db()
            .query(
                "SELECT name, first_seen, last_seen, quality_summary_json FROM clients ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(ClientRow {
                    name: r.get(0)?,
                    first_seen: r.get(1)?,
                    last_seen: r.get(2)?,
                    quality_summary_json: r.get(3)?,
                })
            })
            .collect()
    }

    fn object_path(&self, key: &str) -> ObjectPath {
        self.prefix
            .parts()
            .chain(key.split('/').map(object_store::path::PathPart::from))
            .collect()
    }

    pub async fn put_object(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        if let Some(fence) = self.fence.get() {
            fence.check()?;
        }
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
    use testing::{TestBackend, TestDatabase, postgres_server};

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
            let db = rusqlite::Connection::open(dir.path().join("coordinator.sqlite")).unwrap();
            db.execute_batch(migrations::SQLITE_SCHEMA).unwrap();
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
        for backend in TestBackend::all("survives_reopen") {
            let dir = tempfile::tempdir().unwrap();
            let open = || backend.open(dir.path(), None).unwrap();
            {
                let store = open();
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
            let store = open();
            let name = backend.name();
            assert_eq!(store.clip_bound("j1", 1).unwrap(), Some(0.75), "{name}");
            assert_eq!(store.clip_bound("j1", 2).unwrap(), None);
            let j = store.job("j1").unwrap().unwrap();
            assert_eq!(j.state, JobState::Running);
            assert_eq!(j.rounds_completed, 1);
            assert_eq!(j.submitted_by.as_deref(), Some("dev"));
            let rounds = store.rounds("j1").unwrap();
            assert_eq!(rounds.len(), 2, "{name}");
            assert_eq!(rounds[0].traffic, None);
            assert_eq!(rounds[1].traffic.unwrap().task_bytes_sent, 1001);
            assert_eq!(rounds[1].traffic.unwrap().answer_bytes_received, 500);
            assert_eq!(rounds[0].train_metrics, None);
            assert_eq!(rounds[1].train_metrics.unwrap().accuracy, 0.75);
            assert_eq!(
                rounds[1],
                round("j1", 1).with_completed_at(&rounds[1].completed_at)
            );
            assert_eq!(
                &store.get_object("jobs/j1/model").await.unwrap()[..],
                &[1, 2, 3]
            );
            assert!(store.job("nope").unwrap().is_none());
        }
    }

    impl RoundRow {
        fn with_completed_at(mut self, at: &str) -> Self {
            self.completed_at = at.to_string();
            self
        }
    }

    #[test]
    fn jobs_clients_events_and_payouts_read_back_alike_on_both_backends() {
        for backend in TestBackend::all("read_back") {
            let dir = tempfile::tempdir().unwrap();
            let store = backend.open(dir.path(), Some("memory:///")).unwrap();
            let name = backend.name();
            // Listed in submission order, ties on the timestamp included.
            let mut second = job("b-second");
            second.created_at = "2026-01-01T00:00:00Z".into();
            let mut first = job("z-first");
            first.created_at = second.created_at.clone();
            store.insert_job(&first).unwrap();
            store.insert_job(&second).unwrap();
            let ids: Vec<String> = store.jobs().unwrap().into_iter().map(|j| j.id).collect();
            assert_eq!(ids, ["z-first", "b-second"], "{name}");
            store
                .set_job_state("z-first", JobState::Failed, Some("no clients"))
                .unwrap();
            let failed = store.job("z-first").unwrap().unwrap();
            assert_eq!(
                (failed.state, failed.error.as_deref()),
                (JobState::Failed, Some("no clients"))
            );

            store.upsert_client("h-b", "{}").unwrap();
            store.upsert_client("h-a", "{\"rows\":1}").unwrap();
            store.upsert_client("h-a", "{\"rows\":2}").unwrap();
            let clients = store.clients().unwrap();
            assert_eq!(clients.len(), 2, "{name}");
            assert_eq!(
                (
                    clients[0].name.as_str(),
                    clients[0].quality_summary_json.as_str()
                ),
                ("h-a", "{\"rows\":2}")
            );

            // Payouts: the schedule is fixed by the first, heights count up.
            store.record_round(&round("z-first", 1)).unwrap();
            let heights = store
                .transaction(|tx| {
                    let h0 = Store::next_height_in(tx, (50, 2))?;
                    Store::record_valuation_in(tx, "z-first", 1, h0, "{}")?;
                    let h1 = Store::next_height_in(tx, (50, 2))?;
                    Ok((h0, h1))
                })
                .unwrap();
            assert_eq!(heights, (0, 1));
            assert_eq!(store.emission_schedule().unwrap(), Some((50, 2)));
            assert_eq!(
                store.valuations("z-first").unwrap(),
                [(1, 0, "{}".to_string())]
            );
            let refused = store.transaction(|tx| Store::next_height_in(tx, (60, 2)));
            assert!(
                refused
                    .unwrap_err()
                    .to_string()
                    .contains("emission schedule is 50")
            );

            // Ledger rows, as the ledger module writes them.
            assert_eq!(store.ledger_stamp().unwrap(), (0, None));
            store
                .transaction(|tx| {
                    tx.execute("INSERT INTO ledger (idx, entry) VALUES (?1, ?2)", values![0i64, vec![0u8, 255, 7]])?;
                    tx.execute(
                        "INSERT INTO ledger_checkpoint (id, key_name, note) VALUES (1, ?1, ?2)
                         ON CONFLICT(id) DO UPDATE SET key_name = excluded.key_name, note = excluded.note",
                        values!["k", "note"],
                    )?;
                    Ok(())
                })
                .unwrap();
            let ledger = store.ledger().unwrap();
            assert_eq!(ledger.leaves, [vec![0u8, 255, 7]], "{name}");
            assert_eq!(store.ledger_stamp().unwrap(), (1, Some("note".to_string())));
        }
    }

    #[test]
    fn a_failed_transaction_changes_nothing_on_either_backend() {
        for backend in TestBackend::all("atomic") {
            let dir = tempfile::tempdir().unwrap();
            let store = backend.open(dir.path(), Some("memory:///")).unwrap();
            store.insert_job(&job("j1")).unwrap();
            store.record_round(&round("j1", 0)).unwrap();
            // The first insert succeeds, the second collides: neither stays.
            let failed = store.transaction(|tx| {
                Store::record_round_in(tx, &round("j1", 1))?;
                Store::record_round_in(tx, &round("j1", 0))
            });
            assert!(failed.is_err(), "{}", backend.name());
            assert_eq!(store.rounds("j1").unwrap().len(), 1, "{}", backend.name());
            // A panic inside a transaction rolls back too, and the store
            // stays usable.
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = store.transaction(|tx| -> Result<(), StoreError> {
                    Store::record_round_in(tx, &round("j1", 1))?;
                    panic!("in the middle of a round's commit");
                });
            }));
            assert!(panicked.is_err());
            assert_eq!(store.rounds("j1").unwrap().len(), 1, "{}", backend.name());
            store.record_round(&round("j1", 1)).unwrap();
            assert_eq!(store.rounds("j1").unwrap().len(), 2);
        }
    }

    #[test]
    fn a_follower_reads_only_the_rounds_and_events_it_has_not_seen() {
        for backend in TestBackend::all("follower") {
            let dir = tempfile::tempdir().unwrap();
            let store = backend.open(dir.path(), None).unwrap();
            a_follower_reads_only_what_it_has_not_seen(&store);
        }
    }

    fn a_follower_reads_only_what_it_has_not_seen(store: &Store) {
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
    fn a_postgres_database_is_migrated_once_and_a_newer_one_refused() {
        let Some(server) = postgres_server() else {
            return;
        };
        let database = TestDatabase::create(&server, "migrated_once").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let open =
            || Store::open_with_database(dir.path(), Some(database.url()), Some("memory:///"));
        let store = open().unwrap();
        store.insert_job(&job("j1")).unwrap();
        drop(store);
        // Reopening keeps the data and does not create the schema again.
        let store = open().unwrap();
        assert!(store.job("j1").unwrap().is_some());
        let version = |store: &Store| -> i64 {
            store
                .db()
                .query_one("SELECT version FROM cohort_schema_version", &[])
                .unwrap()
                .get(0)
                .unwrap()
        };
        assert_eq!(version(&store), SCHEMA_VERSION);
        // Nothing of the state went to the data directory.
        assert!(!dir.path().join("coordinator.sqlite").exists());
        store
            .db()
            .execute(
                "UPDATE cohort_schema_version SET version = ?1",
                values![SCHEMA_VERSION + 1],
            )
            .unwrap();
        drop(store);
        let err = open().err().unwrap().to_string();
        assert!(err.contains("newer than this coordinator"), "{err}");
        if let Some(password) = url::Url::parse(&server).unwrap().password() {
            assert!(!err.contains(password), "{err}");
        }
    }

    #[test]
    fn a_postgres_connection_the_server_closed_is_opened_again() {
        let Some(server) = postgres_server() else {
            return;
        };
        let database = TestDatabase::create(&server, "reconnect").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_database(dir.path(), Some(database.url()), Some("memory:///"))
            .unwrap();
        store.insert_job(&job("j1")).unwrap();
        let admin = Database::Postgres(Box::new(postgres::PgConnection::connect(&server).unwrap()));
        let backend_pid = |store: &Store| -> i64 {
            store
                .db()
                .query_one("SELECT pg_backend_pid()", &[])
                .unwrap()
                .get(0)
                .unwrap()
        };
        let terminate = |pid: i64| {
            admin
                .execute("SELECT pg_terminate_backend(?1)", values![pid])
                .unwrap();
            // Until the I/O thread has seen the socket close.
            std::thread::sleep(std::time::Duration::from_millis(300));
        };
        terminate(backend_pid(&store));
        assert!(store.job("j1").unwrap().is_some());
        // Lost inside a transaction: that transaction fails, nothing of it
        // stays, and the store goes on.
        let pid = backend_pid(&store);
        let failed = store.transaction(|tx| {
            Store::insert_job_in(tx, &job("j2"))?;
            terminate(pid);
            Store::insert_job_in(tx, &job("j3"))
        });
        let err = failed.unwrap_err().to_string();
        assert!(err.contains("lost in the middle of a transaction"), "{err}");
        assert!(store.job("j2").unwrap().is_none());
        assert!(store.job("j3").unwrap().is_none());
        store.insert_job(&job("j4")).unwrap();
    }

    #[test]
    fn bad_database_urls_are_named_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let open = |url: &str| {
            Store::open_with_database(dir.path(), Some(url), Some("memory:///"))
                .err()
                .unwrap()
                .to_string()
        };
        let err = open("mysql://u:secret@localhost/db");
        assert!(err.contains("expected postgres://"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = open("postgres://u:secret@localhost:notaport/db");
        assert!(
            err.contains("not a PostgreSQL URL") && !err.contains("secret"),
            "{err}"
        );
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = open(&format!("postgres://u:secret@127.0.0.1:{port}/db"));
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.contains("refused") || err.contains("connect"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn a_wrong_postgres_password_or_database_is_named() {
        let Some(server) = postgres_server() else {
            return;
        };
        let mut url = url::Url::parse(&server).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let open = |url: &url::Url| {
            Store::open_with_database(dir.path(), Some(url.as_str()), Some("memory:///"))
                .err()
                .unwrap()
                .to_string()
        };
        let mut missing = url.clone();
        missing.set_path("/cohort_no_such_database");
        let err = open(&missing);
        assert!(
            err.contains("cohort_no_such_database") && err.contains("does not exist"),
            "{err}"
        );
        if url.password().is_some() {
            url.set_password(Some("certainly-wrong")).unwrap();
            let err = open(&url);
            assert!(err.contains("password authentication failed"), "{err}");
            assert!(!err.contains("certainly-wrong"), "{err}");
        } else {
            eprintln!("COHORT_TEST_POSTGRES_URL has no password: not testing a wrong one");
        }
    }

    #[test]
    fn bad_object_store_url_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(dir.path(), Some("nope://x")).err().unwrap();
        assert!(err.to_string().contains("nope://x"), "{err}");
    }
}

/// A ledger as stored: its entries in order (canonical bytes, the Merkle
/// leaves) and its latest signed checkpoint. Read over the network by a
/// developer or hospital, the entries of other tenants' jobs are withheld:
/// only their leaf hashes come, and their place in `leaves` is empty.
#[derive(Debug, Clone, Default)]
pub struct LedgerContents {
    pub leaves: Vec<Vec<u8>>,
    pub withheld: cohort_ledger::Withheld,
    /// The openings of sealed parts this reader holds (all of them, read
    /// from the store; a hospital's own, fetched from a coordinator).
    pub openings: cohort_ledger::Openings,
    /// The signed note and the name of the key that signed it.
    pub checkpoint: Option<StoredCheckpoint>,
}

impl LedgerContents {
    /// Every entry's RFC 6962 leaf hash, withheld ones included.
    pub fn leaf_hashes(&self) -> Vec<cohort_ledger::Hash> {
        self.leaves
            .iter()
            .enumerate()
            .map(|(i, leaf)| match self.withheld.get(&(i as u64)) {
                Some(hash) => *hash,
                None => cohort_ledger::hash_leaf(leaf),
            })
            .collect()
    }

    /// The entries this reader holds, with their indices, in order, each
    /// with the sealed parts this reader holds the openings of opened.
    /// Parsed and opened, not verified: `cohort_ledger::audit` does that.
    pub fn entries(
        &self,
    ) -> impl Iterator<Item = (u64, Result<cohort_ledger::Entry, cohort_ledger::EntryError>)> + '_
    {
        self.readable().map(|(i, leaf)| {
            let openings = self.openings.get(&i).map_or(&[][..], Vec::as_slice);
            (i, cohort_ledger::Entry::open(leaf, openings))
        })
    }

    /// Keeps the openings for which `keep(index, opening)` holds (what a
    /// reader may read), drops the others.
    pub fn retain_openings(&mut self, keep: impl Fn(u64, &cohort_ledger::Opening) -> bool) {
        for (index, openings) in &mut self.openings {
            openings.retain(|o| keep(*index, o));
        }
        self.openings.retain(|_, openings| !openings.is_empty());
    }

    /// The entries this reader holds, with their indices, in order.
    pub fn readable(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.leaves
            .iter()
            .enumerate()
            .map(|(i, leaf)| (i as u64, leaf.as_slice()))
            .filter(|(i, _)| !self.withheld.contains_key(i))
    }
}

#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub key_name: String,
    pub note: String,
}

pub(crate) fn read_ledger(db: &Database) -> Result<LedgerContents, StoreError> {
    // A database opened read-only is not migrated: one written before
    // entries had sealed parts has no openings column, and no openings.
    let has_openings = db
        .query_one(
            match db {
                Database::Sqlite(_) => {
                    "SELECT COUNT(*) FROM pragma_table_info('ledger') WHERE name = 'openings_json'"
                }
                Database::Postgres(_) => {
                    "SELECT COUNT(*) FROM information_schema.columns
                     WHERE table_name = 'ledger' AND column_name = 'openings_json'"
                }
            },
            &[],
        )?
        .get::<i64>(0)?
        > 0;
    let rows = db.query(
        match has_openings {
            true => "SELECT entry, openings_json FROM ledger ORDER BY idx",
            false => "SELECT entry, NULL FROM ledger ORDER BY idx",
        },
        &[],
    )?;
    let mut leaves = Vec::with_capacity(rows.len());
    let mut openings = cohort_ledger::Openings::new();
    for (index, row) in rows.iter().enumerate() {
        leaves.push(row.get::<Vec<u8>>(0)?);
        if let Some(json) = row.get::<Option<String>>(1)? {
            let parsed: Vec<cohort_ledger::Opening> = serde_json::from_str(&json).map_err(|e| {
                StoreError::Corrupt(format!("the openings of ledger entry {index}: {e}"))
            })?;
            openings.insert(index as u64, parsed);
        }
    }
    let checkpoint = db
        .query_opt(
            "SELECT key_name, note FROM ledger_checkpoint WHERE id = 1",
            &[],
        )?
        .map(|r| {
            Ok::<_, StoreError>(StoredCheckpoint {
                key_name: r.get(0)?,
                note: r.get(1)?,
            })
        })
        .transpose()?;
    Ok(LedgerContents {
        leaves,
        withheld: Default::default(),
        openings,
        checkpoint,
    })
}

/// Reads a coordinator's ledger straight from `DATA_DIR/coordinator.sqlite`,
/// read-only, as a validator does: nothing is created or migrated.
pub fn read_ledger_at(data_dir: &Path) -> Result<LedgerContents, StoreError> {
    let db_path = data_dir.join("coordinator.sqlite");
    let db =
        rusqlite::Connection::open_with_flags(&db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Database {
                path: db_path.clone(),
                source,
            })?;
    read_ledger(&Database::Sqlite(db))
}

/// Reads a coordinator's ledger from its PostgreSQL database (`--database`),
/// in one read-only transaction: nothing is created or migrated.
pub fn read_ledger_from_database(url: &str) -> Result<LedgerContents, StoreError> {
    let db = Database::Postgres(Box::new(postgres::PgConnection::connect(url)?));
    db.transaction(|tx| {
        tx.batch("SET TRANSACTION READ ONLY")?;
        read_ledger(tx)
    })
}
