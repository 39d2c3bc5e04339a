//! The coordinator's state on a PostgreSQL server (`--database
//! postgres://...`), through tokio-postgres.
//!
//! The store is synchronous (its callers hold no `.await` across it, and
//! round commits run inside a closure), while tokio-postgres is async. The
//! connection's socket is therefore driven by a dedicated OS thread with
//! its own single-threaded tokio runtime, and the store's calls wait for
//! their answers with `futures::executor::block_on`, which needs no runtime:
//! the client half only exchanges messages with that thread over channels.
//! This works from inside the coordinator's tokio tasks and from plain
//! threads alike, unlike the sync `postgres` crate (which starts a runtime
//! of its own and panics inside another) or `block_in_place` (which panics
//! on the current-thread runtimes tests use). A call blocks its worker
//! thread for one round trip, as a SQLite write blocks it for an fsync.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};

use super::StoreError;
use super::sql::{Value, dollar_parameters};

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub use cohort_datasets::sql::{describe, redacted};

/// One open connection and the statements prepared on it. A connection
/// the server closed (a restart, a failover, an administrator) is opened
/// again by the next statement outside a transaction; inside one, the
/// statement fails, since the transaction's earlier work is gone.
pub struct PgConnection {
    url: String,
    client: RefCell<Client>,
    /// Prepared statements by their SQL as written (SQLite's dialect).
    statements: RefCell<HashMap<String, Statement>>,
    in_transaction: std::cell::Cell<bool>,
    /// The coordinator lease (holder, epoch) every write must still hold:
    /// see [`PgConnection::fence`].
    fence: RefCell<Option<(String, i64)>>,
    /// `SET` statements this connection runs again whenever it reconnects.
    session: RefCell<Vec<String>>,
}

impl PgConnection {
    /// Connects to `url` (`postgres://user:password@host:port/database`,
    /// with libpq's `sslmode`/`sslrootcert` for TLS: see
    /// [`cohort_datasets::pg_tls`]), naming the problem when the URL is
    /// malformed, the server does not answer or refuses the credentials.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let failed = |message: String| StoreError::DatabaseUrl {
            url: redacted(url),
            message,
        };
        let mut target = cohort_datasets::pg_tls::PgTarget::parse(url).map_err(failed)?;
        let config = &mut target.config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("cohort-coordinator");
        }
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("cohort-postgres".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = sender.send(Err(format!("starting its I/O thread: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match target.connect().await {
                        Ok((client, driver)) => {
                            let _ = sender.send(Ok(client));
                            // Runs until the client is dropped or the
                            // server goes away; the next call then fails
                            // with the reason.
                            if let Ok(Err(e)) = driver.await {
                                tracing::error!("PostgreSQL connection lost: {}", describe(&e));
                            }
                        }
                        Err(e) => {
                            let _ = sender.send(Err(describe(&e)));
                        }
                    }
                });
            })
            .map_err(|e| failed(format!("starting its I/O thread: {e}")))?;
        let client = receiver
            .recv()
            .map_err(|_| failed("its I/O thread stopped".into()))?
            .map_err(failed)?;
        Ok(Self {
            url: url.to_string(),
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            in_transaction: std::cell::Cell::new(false),
            fence: RefCell::new(None),
            session: RefCell::new(Vec::new()),
        })
    }

    /// The client, connected again first if the server closed it.
    fn client(&self) -> Result<std::cell::Ref<'_, Client>, StoreError> {
        if self.client.borrow().is_closed() {
            if self.in_transaction.get() {
                return Err(StoreError::Postgres(
                    "the connection to the server was lost in the middle of a transaction, which the server rolled back".into(),
                ));
            }
            tracing::warn!(database = %redacted(&self.url), "PostgreSQL connection closed; connecting again");
            let fresh = Self::connect(&self.url)?;
            for statement in self.session.borrow().iter() {
                wait(fresh.client.borrow().batch_execute(statement))?;
            }
            *self.client.borrow_mut() = fresh.client.into_inner();
            self.statements.borrow_mut().clear();
        }
        Ok(self.client.borrow())
    }

    /// From now on every transaction, and every statement run outside
    /// one, first checks in the same transaction that `holder` still holds
    /// the coordinator lease at `epoch` (row-locking it until commit). A
    /// coordinator that lost the lease to a standby, say after a network
    /// partition it did not notice, can then no longer change the state:
    /// its writes fail with [`StoreError::LeaseLost`] instead of
    /// interleaving with the new holder's.
    ///
    /// The holder's own transactions hold the lease row locked while they
    /// run, so one left open by a frozen holder would keep a standby from
    /// ever taking the lease: the server ends any transaction of this
    /// connection that sits idle for longer than `idle_limit`.
    pub fn fence(&self, holder: &str, epoch: i64, idle_limit: Duration) -> Result<(), StoreError> {
        self.set(&format!(
            "SET idle_in_transaction_session_timeout = {}",
            idle_limit.as_millis().max(1)
        ))?;
        *self.fence.borrow_mut() = Some((holder.to_string(), epoch));
        Ok(())
    }

    /// Runs a `SET` statement now and again after every reconnect.
    pub fn set(&self, statement: &str) -> Result<(), StoreError> {
        self.batch(statement)?;
        self.session.borrow_mut().push(statement.to_string());
        Ok(())
    }

    pub fn begin(&self) -> Result<(), StoreError> {
        self.batch("BEGIN")?;
        self.in_transaction.set(true);
        let fence = self.fence.borrow().clone();
        if let Some((holder, epoch)) = fence {
            let held = self.query(
                "SELECT 1 FROM coordinator_lease WHERE id = 1 AND holder = ?1 AND epoch = ?2 \
                 FOR SHARE",
                &[Value::Text(holder.clone()), Value::Int(epoch)],
            );
            match held {
                Ok(rows) if !rows.is_empty() => {}
                Ok(_) => {
                    self.end("ROLLBACK")?;
                    return Err(StoreError::LeaseLost(format!(
                        "`{holder}` no longer holds the coordinator lease at epoch {epoch}"
                    )));
                }
                Err(e) => {
                    let _ = self.end("ROLLBACK");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// COMMIT or ROLLBACK: the transaction is over either way.
    pub fn end(&self, sql: &str) -> Result<(), StoreError> {
        let ended = wait(self.client.borrow().batch_execute(sql));
        self.in_transaction.set(false);
        ended
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        // Connect again first if needed: that forgets the statements
        // prepared on the closed connection.
        drop(self.client()?);
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = wait(self.client()?.prepare(&dollar_parameters(sql)))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        if !self.in_transaction.get() && self.fence.borrow().is_some() {
            // A fenced write is checked inside a transaction of its own.
            self.begin()?;
            let result = self.execute(sql, params);
            return match result {
                Ok(n) => self.end("COMMIT").map(|()| n),
                Err(e) => {
                    let _ = self.end("ROLLBACK");
                    Err(e)
                }
            };
        }
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        wait(self.client()?.execute(&statement, &params))
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, StoreError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = wait(self.client()?.query(&statement, &params))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| column(row, i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect()
    }

    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        wait(self.client()?.batch_execute(sql))
    }
}

fn wait<T>(
    future: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    futures::executor::block_on(future).map_err(|e| StoreError::Postgres(describe(&e)))
}

/// Column `i` of `row` as a [`Value`], whatever the server's type.
fn column(row: &tokio_postgres::Row, i: usize) -> Result<Value, StoreError> {
    let ty = row.columns()[i].type_().clone();
    let bad = |e: tokio_postgres::Error| {
        StoreError::Corrupt(format!("column {i} ({ty}): {}", describe(&e)))
    };
    let value = match ty {
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map_err(bad)?
            .map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(bad)?
            .map(|v| Value::Real(v.into())),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(bad)?
            .map(Value::Blob),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map(Value::Text),
        other => {
            return Err(StoreError::Corrupt(format!(
                "column {i} has type {other}, which the store does not read"
            )));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

/// A [`Value`] as whatever type the server inferred for the parameter;
/// integers that do not fit a narrower column are refused, not truncated.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql_checked(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql_checked(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql_checked(ty, out),
            (Value::Int(v), &Type::FLOAT8) => (*v as f64).to_sql_checked(ty, out),
            (Value::Real(v), &Type::FLOAT8) => v.to_sql_checked(ty, out),
            (Value::Text(v), _) => v.as_str().to_sql_checked(ty, out),
            (Value::Blob(v), _) => v.as_slice().to_sql_checked(ty, out),
            (value, ty) => Err(format!("cannot store {value:?} in a column of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`.
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden_even_in_malformed_urls() {
        use super::redacted;
        assert_eq!(
            redacted("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redacted("postgres://u:p@w@h:bad/db"),
            "postgres://u:***@h:bad/db"
        );
        assert_eq!(redacted("postgres://u@h/db?x=@"), "postgres://u@h/db?x=@");
        assert_eq!(redacted("postgres://h/db"), "postgres://h/db");
        assert_eq!(redacted("not a url"), "not a url");
    }
}
