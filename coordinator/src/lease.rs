//! One writer among several coordinators that share a PostgreSQL database:
//! the active coordinator holds a lease (one row, `coordinator_lease`) and
//! renews it; the others stand by, each taking the lease over once it has
//! expired — within [`LeaseSettings::ttl`] plus one retry after the active
//! one dies, wherever it died.
//!
//! Time is the database server's (`now()` in every statement), so the
//! coordinators' clocks need not agree. Each takeover increments the
//! lease's epoch, and the holder's store is fenced with `(holder, epoch)`
//! ([`crate::store::Store::set_fence`]): every database write first checks,
//! in its own transaction, that the lease is still its own, so a
//! coordinator that lost the lease without noticing (a network partition,
//! a long pause) cannot commit a round the new holder also commits. Object
//! writes cannot take part in a database transaction; they are checked
//! against the lease's local validity instead ([`Fence::check`]), which
//! ends a quarter of the lease's duration before the database could give
//! the lease away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::StoreError;
use crate::store::sql::{Database, Dialect, Row, values};

/// How long a lease lasts unless renewed, and how often a standby tries.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    pub ttl: Duration,
    pub retry: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            retry: Duration::from_secs(1),
        }
    }
}

/// Who holds the lease, as a standby sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holder {
    pub holder: String,
    pub epoch: i64,
    /// Seconds until the lease expires unless renewed (negative: expired).
    pub expires_in_secs: f64,
}

/// The outcome of one try at the lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Acquired { epoch: i64 },
    Held(Holder),
}

/// A name for this process as the lease's holder: the host, the address
/// it serves and its process id, plus a random part so that a restarted
/// process is never mistaken for the one before it.
pub fn holder_name(listen: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!(
        "{host} {listen} pid {} #{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn postgres_only(db: &Database) -> Result<(), StoreError> {
    match db.dialect() {
        Dialect::Postgres => Ok(()),
        Dialect::Sqlite => Err(StoreError::Postgres(
            "the coordinator lease needs the PostgreSQL backend (--database postgres://...)".into(),
        )),
    }
}

/// Takes the lease if nobody holds it or its holder let it expire.
pub(crate) fn try_acquire(
    db: &Database,
    holder: &str,
    ttl: Duration,
) -> Result<Attempt, StoreError> {
    postgres_only(db)?;
    let acquired = db.query_opt(
        "INSERT INTO coordinator_lease (id, holder, epoch, acquired_at, expires_at)
         VALUES (1, ?1, 1, now(), now() + make_interval(secs => ?2))
         ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder,
             epoch = coordinator_lease.epoch + 1, acquired_at = now(),
             expires_at = EXCLUDED.expires_at
         WHERE coordinator_lease.expires_at <= now()
         RETURNING epoch",
        values![holder, ttl.as_secs_f64()],
    )?;
    if let Some(row) = acquired {
        return Ok(Attempt::Acquired { epoch: row.get(0)? });
    }
    match current(db)? {
        Some(held) => Ok(Attempt::Held(held)),
        // Released between the two statements: try again next time.
        None => Ok(Attempt::Held(Holder {
            holder: String::new(),
            epoch: 0,
            expires_in_secs: 0.0,
        })),
    }
}

/// The lease's holder, if anyone ever took it.
pub(crate) fn current(db: &Database) -> Result<Option<Holder>, StoreError> {
    postgres_only(db)?;
    db.query_opt(
        "SELECT holder, epoch, EXTRACT(EPOCH FROM (expires_at - now()))::float8
         FROM coordinator_lease WHERE id = 1",
        &[],
    )?
    .map(|row: Row| {
        Ok(Holder {
            holder: row.get(0)?,
            epoch: row.get(1)?,
            expires_in_secs: row.get(2)?,
        })
    })
    .transpose()
}

/// The lease's holder on the PostgreSQL database at `url`, for operators
/// (`cohort coordinator lease`); reads only.
pub fn holder(url: &str) -> Result<Option<Holder>, StoreError> {
    // Connected without migrating: this must not create a schema in a
    // database that was named by mistake.
    let db = Database::Postgres(Box::new(crate::store::postgres::PgConnection::connect(
        url,
    )?));
    current(&db).map_err(|e| match e {
        StoreError::Postgres(message) if message.contains("coordinator_lease") => {
            StoreError::Postgres(format!(
                "{message} (no coordinator of this version has run on this database)"
            ))
        }
        other => other,
    })
}

/// Extends the lease by `ttl` from now; `false` if it is no longer this
/// holder's (a standby took it over after it expired).
pub(crate) fn renew(
    db: &Database,
    holder: &str,
    epoch: i64,
    ttl: Duration,
) -> Result<bool, StoreError> {
    postgres_only(db)?;
    let changed = db.execute(
        "UPDATE coordinator_lease SET expires_at = now() + make_interval(secs => ?3)
         WHERE id = 1 AND holder = ?1 AND epoch = ?2",
        values![holder, epoch, ttl.as_secs_f64()],
    )?;
    Ok(changed == 1)
}

/// Lets the lease expire now, so that a standby need not wait it out.
pub(crate) fn release(db: &Database, holder: &str, epoch: i64) -> Result<(), StoreError> {
    postgres_only(db)?;
    db.execute(
        "UPDATE coordinator_lease SET expires_at = now()
         WHERE id = 1 AND holder = ?1 AND epoch = ?2",
        values![holder, epoch],
    )?;
    Ok(())
}

/// The lease as the holder's store sees it.
#[derive(Debug)]
pub struct Fence {
    holder: String,
    epoch: i64,
    ttl: Duration,
    /// Until when this process may act as the holder without hearing from
    /// the database again.
    valid_until: Mutex<Instant>,
    lost: watch::Sender<Option<String>>,
}

impl Fence {
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// How long the lease lasts unless renewed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this process may still write as the lease's holder.
    pub fn check(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.lost.borrow().clone() {
            return Err(StoreError::LeaseLost(reason));
        }
        let valid_until = *self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        if Instant::now() >= valid_until {
            return Err(StoreError::LeaseLost(
                "not renewed in time; it may have passed to a standby".into(),
            ));
        }
        Ok(())
    }

    fn extend(&self, until: Instant) {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    fn lose(&self, reason: String) {
        self.lost.send_if_modified(|lost| {
            if lost.is_none() {
                *lost = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// The lease this process holds, renewed by a thread of its own until it
/// is released (or dropped), or lost.
pub struct Lease {
    fence: Arc<Fence>,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    /// Waits until this process holds the lease on the PostgreSQL
    /// database at `url`, calling `waiting` with the current holder after
    /// each try that found it taken. The lease has a connection of its
    /// own, which renews it from a thread of its own.
    pub async fn acquire(
        url: &str,
        holder: String,
        settings: LeaseSettings,
        mut waiting: impl FnMut(&Holder) + Send,
    ) -> Result<Lease, StoreError> {
        let url = url.to_string();
        let mut db = tokio::task::spawn_blocking(move || {
            let db = crate::store::open_postgres(&url)?;
            // Never wait long on the row: its holder may be frozen inside a
            // transaction (which the server ends after the lease's duration).
            db.set("SET lock_timeout = '1s'")?;
            Ok::<_, StoreError>(db)
        })
        .await
        .map_err(|e| StoreError::Postgres(format!("the lease's thread failed: {e}")))??;
        loop {
            let name = holder.clone();
            let asked = Instant::now();
            let (back, attempt) = tokio::task::spawn_blocking(move || {
                let attempt = try_acquire(&db, &name, settings.ttl);
                (db, attempt)
            })
            .await
            .map_err(|e| StoreError::Postgres(format!("the lease's thread failed: {e}")))?;
            db = back;
            match attempt {
                Ok(Attempt::Acquired { epoch }) => {
                    return Ok(Self::start(db, holder, epoch, settings, asked));
                }
                Ok(Attempt::Held(held)) => waiting(&held),
                // A database that is restarting, a row its frozen holder
                // still locks: a standby keeps standing by.
                Err(e) => warn!("trying for the coordinator lease: {e}; trying again"),
            }
            tokio::time::sleep(settings.retry).await;
        }
    }

    fn start(
        db: Database,
        holder: String,
        epoch: i64,
        settings: LeaseSettings,
        asked: Instant,
    ) -> Lease {
        let fence = Arc::new(Fence {
            holder,
            epoch,
            ttl: settings.ttl,
            valid_until: Mutex::new(asked + valid_for(settings.ttl)),
            lost: watch::Sender::new(None),
        });
        info!(
            holder = fence.holder,
            epoch, "holding the coordinator lease"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let fence = fence.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("cohort-lease".into())
                .spawn(move || renew_until_stopped(db, &fence, &stop, settings.ttl))
                .ok()
        };
        if renewer.is_none() {
            fence.lose("could not start the thread that renews it".into());
        }
        Lease {
            fence,
            stop,
            renewer,
        }
    }

    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Resolves with the reason once the lease is lost.
    pub async fn lost(&self) -> String {
        let mut lost = self.fence.lost.subscribe();
        let reason = lost
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The sender lives in `self.fence`: not reached while `self` is.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops renewing and lets the lease expire at once, so that a
    /// standby takes over without waiting; blocks for one round trip.
    pub fn release(mut self) {
        self.stop_renewing();
    }

    fn stop_renewing(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.renewer.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_renewing();
    }
}

/// How long after asking the database to extend the lease by `ttl` this
/// process may still count on holding it: a quarter less, for the round
/// trip and for clocks that run at slightly different rates.
fn valid_for(ttl: Duration) -> Duration {
    ttl.mul_f64(0.75)
}

fn renew_until_stopped(db: Database, fence: &Fence, stop: &AtomicBool, ttl: Duration) {
    let every = ttl / 3;
    let mut next = Instant::now() + every;
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                if fence.check().is_ok()
                    && let Err(e) = release(&db, &fence.holder, fence.epoch)
                {
                    warn!("could not release the coordinator lease ({e}); it expires on its own");
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(every));
        }
        let asked = Instant::now();
        next = asked + every;
        match renew(&db, &fence.holder, fence.epoch, ttl) {
            Ok(true) => fence.extend(asked + valid_for(ttl)),
            Ok(false) => {
                let by = match current(&db) {
                    Ok(Some(h)) => format!("taken over by `{}` at epoch {}", h.holder, h.epoch),
                    _ => "taken over".into(),
                };
                fence.lose(by);
                return;
            }
            Err(e) => {
                if fence.check().is_err() {
                    fence.lose(format!("could not renew it in time: {e}"));
                    return;
                }
                warn!("renewing the coordinator lease failed ({e}); trying again");
                next = Instant::now() + every.min(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{TestDatabase, postgres_server};

    fn connect(url: &str) -> Database {
        crate::store::open_postgres(url).unwrap()
    }

    #[test]
    fn one_holder_at_a_time_and_a_standby_takes_over_an_expired_lease() {
        let Some(server) = postgres_server() else {
            return;
        };
        let database = TestDatabase::create(&server, "lease").unwrap();
        let (a, b) = (connect(database.url()), connect(database.url()));
        let ttl = Duration::from_millis(600);
        assert_eq!(
            try_acquire(&a, "a", ttl).unwrap(),
            Attempt::Acquired { epoch: 1 }
        );
        let Attempt::Held(held) = try_acquire(&b, "b", ttl).unwrap() else {
            panic!("two holders at once");
        };
        assert_eq!((held.holder.as_str(), held.epoch), ("a", 1));
        assert!(held.expires_in_secs > 0.0 && held.expires_in_secs <= 0.6);
        // Renewed, it stays a's.
        std::thread::sleep(Duration::from_millis(400));
        assert!(renew(&a, "a", 1, ttl).unwrap());
        std::thread::sleep(Duration::from_millis(400));
        assert!(matches!(
            try_acquire(&b, "b", ttl).unwrap(),
            Attempt::Held(_)
        ));
        // Not renewed, it passes to b with a new epoch, and a cannot renew.
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(
            try_acquire(&b, "b", ttl).unwrap(),
            Attempt::Acquired { epoch: 2 }
        );
        assert!(!renew(&a, "a", 1, ttl).unwrap());
        // A release hands it on at once.
        release(&b, "b", 2).unwrap();
        assert_eq!(
            try_acquire(&a, "a", ttl).unwrap(),
            Attempt::Acquired { epoch: 3 }
        );
    }

    #[test]
    fn a_store_fenced_by_a_lost_lease_writes_nothing() {
        let Some(server) = postgres_server() else {
            return;
        };
        let database = TestDatabase::create(&server, "fence").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            crate::store::Store::open_with_database(
                dir.path(),
                Some(database.url()),
                Some("memory:///"),
            )
            .unwrap()
        };
        let (old, new) = (open(), open());
        let lease_db = connect(database.url());
        let ttl = Duration::from_millis(300);
        let Attempt::Acquired { epoch } = try_acquire(&lease_db, "old", ttl).unwrap() else {
            panic!("lease taken");
        };
        let fence = Arc::new(Fence {
            holder: "old".into(),
            epoch,
            ttl,
            valid_until: Mutex::new(Instant::now() + valid_for(ttl)),
            lost: watch::Sender::new(None),
        });
        old.set_fence(fence.clone()).unwrap();
        old.upsert_client("hospital-a", "{}").unwrap();
        // The old holder stalls; a standby takes over.
        std::thread::sleep(Duration::from_millis(400));
        assert!(fence.check().is_err(), "the local validity did not end");
        assert!(matches!(
            try_acquire(&lease_db, "new", ttl).unwrap(),
            Attempt::Acquired { .. }
        ));
        let err = old.upsert_client("hospital-b", "{}").unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost(_)), "{err}");
        let err = old
            .transaction(|tx| tx.execute("DELETE FROM clients", &[]))
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost(_)), "{err}");
        let names: Vec<String> = new.clients().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["hospital-a"]);
        let err = futures::executor::block_on(old.put_object("jobs/x/model", vec![1])).unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost(_)), "{err}");
    }
}
