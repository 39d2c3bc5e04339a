//! The one place that knows which database holds the coordinator's state:
//! a SQLite file (the default) or a PostgreSQL server (`--database
//! postgres://...`). [`Database`] runs the same statements on either, so
//! every [`super::Store`] method is written once.
//!
//! Statements are written in SQLite's dialect with numbered parameters
//! (`?1`, `?2`, ...); for PostgreSQL the parameters are renumbered `$1`,
//! `$2`, ... and the few statements whose dialects differ ask
//! [`Database::dialect`]. Values cross as [`Value`] (the five types SQLite
//! has); on PostgreSQL they convert to whatever type the server inferred
//! for the parameter or column, refusing lossy conversions.

use std::fmt;

use super::StoreError;

/// Which SQL dialect a [`Database`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One SQL value, as SQLite types them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `[Value]` from a list of expressions, each converted with `Value::from`.
macro_rules! values {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*][..] };
}
pub(crate) use values;

/// A column value that converts from a [`Value`].
pub trait FromValue: Sized {
    fn from_value(v: Value) -> Result<Self, String>;
}

impl FromValue for Value {
    fn from_value(v: Value) -> Result<Self, String> {
        Ok(v)
    }
}
impl FromValue for i64 {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i),
            other => Err(format!("expected an integer, found {}", other.type_name())),
        }
    }
}
impl FromValue for u32 {
    fn from_value(v: Value) -> Result<Self, String> {
        let i = i64::from_value(v)?;
        u32::try_from(i).map_err(|_| format!("{i} is out of range"))
    }
}
impl FromValue for u64 {
    fn from_value(v: Value) -> Result<Self, String> {
        let i = i64::from_value(v)?;
        u64::try_from(i).map_err(|_| format!("{i} is out of range"))
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            // SQLite keeps a REAL that holds an integer as an integer.
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a real, found {}", other.type_name())),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {}", other.type_name())),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            other => Err(format!("expected a blob, found {}", other.type_name())),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `idx` as `T`; a missing column or another type is a corrupt
    /// record, named by the column's index.
    pub fn get<T: FromValue>(&self, idx: usize) -> Result<T, StoreError> {
        let value = self
            .0
            .get(idx)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("no column {idx} in the result")))?;
        T::from_value(value).map_err(|e| StoreError::Corrupt(format!("column {idx}: {e}")))
    }
}

/// An open connection to the coordinator's database.
pub enum Database {
    Sqlite(rusqlite::Connection),
    Postgres(Box<super::postgres::PgConnection>),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Database::Sqlite(_) => "Database::Sqlite",
            Database::Postgres(_) => "Database::Postgres",
        })
    }
}

impl Database {
    pub fn dialect(&self) -> Dialect {
        match self {
            Database::Sqlite(_) => Dialect::Sqlite,
            Database::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Fences every later write with the coordinator lease (PostgreSQL
    /// only; a SQLite file has a single writer): see [`crate::lease`].
    pub fn fence(
        &self,
        holder: &str,
        epoch: i64,
        idle_limit: std::time::Duration,
    ) -> Result<(), StoreError> {
        match self {
            Database::Postgres(db) => db.fence(holder, epoch, idle_limit),
            Database::Sqlite(_) => Ok(()),
        }
    }

    /// A session setting (PostgreSQL's `SET`), kept across reconnects;
    /// nothing on SQLite.
    pub fn set(&self, statement: &str) -> Result<(), StoreError> {
        match self {
            Database::Postgres(db) => db.set(statement),
            Database::Sqlite(_) => Ok(()),
        }
    }

    /// Runs one statement; returns the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        match self {
            Database::Sqlite(db) => {
                let n = db.execute(
                    sql,
                    rusqlite::params_from_iter(params.iter().map(to_sqlite)),
                )?;
                Ok(n as u64)
            }
            Database::Postgres(db) => db.execute(sql, params),
        }
    }

    /// Runs one query and returns all its rows.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        match self {
            Database::Sqlite(db) => {
                let mut stmt = db.prepare_cached(sql)?;
                let columns = stmt.column_count();
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(params.iter().map(to_sqlite)))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(from_sqlite(row.get_ref(i)?));
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Database::Postgres(db) => db
                .query(sql, params)
                .map(|rows| rows.into_iter().map(Row).collect()),
        }
    }

    /// The first row of a query, if any.
    pub fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row of a query that always returns one (`COUNT(*)`).
    pub fn query_one(&self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row from `{sql}`")))
    }

    /// Runs several statements without parameters (schema changes).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(db) => Ok(db.execute_batch(sql)?),
            Database::Postgres(db) => db.batch(sql),
        }
    }

    /// Runs `f` in one transaction: all of its changes are committed, or
    /// (on an error or a panic) none.
    pub fn transaction<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        struct RollbackUnlessCommitted<'a>(&'a Database, bool);
        impl Drop for RollbackUnlessCommitted<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    // After a failed COMMIT there may be nothing to roll back.
                    let _ = self.0.end_transaction("ROLLBACK");
                }
            }
        }
        match self {
            Database::Sqlite(_) => self.batch("BEGIN")?,
            Database::Postgres(db) => db.begin()?,
        }
        let mut guard = RollbackUnlessCommitted(self, false);
        let result = f(self)?;
        self.end_transaction("COMMIT")?;
        guard.1 = true;
        Ok(result)
    }

    fn end_transaction(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(_) => self.batch(sql),
            Database::Postgres(db) => db.end(sql),
        }
    }
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Int(i) => V::Integer(*i),
        Value::Real(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
        Value::Blob(b) => V::Blob(b.clone()),
    }
}

fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => Value::Null,
        V::Integer(i) => Value::Int(i),
        V::Real(f) => Value::Real(f),
        V::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        V::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// SQLite's `?N` parameters as PostgreSQL's `$N`. The statements this
/// module runs hold no `?` inside string literals.
pub(super) fn dollar_parameters(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_for_postgres() {
        assert_eq!(
            dollar_parameters("SELECT a FROM t WHERE b = ?1 AND (?2 = 0 OR c > ?12)"),
            "SELECT a FROM t WHERE b = $1 AND ($2 = 0 OR c > $12)"
        );
    }

    #[test]
    fn columns_of_the_wrong_type_are_named() {
        let row = Row(vec![Value::Text("x".into()), Value::Int(-1)]);
        let err = row.get::<i64>(0).unwrap_err().to_string();
        assert!(
            err.contains("column 0: expected an integer, found text"),
            "{err}"
        );
        let err = row.get::<u32>(1).unwrap_err().to_string();
        assert!(err.contains("-1 is out of range"), "{err}");
        assert_eq!(row.get::<Option<f64>>(1).unwrap(), Some(-1.0));
        assert!(row.get::<String>(2).is_err());
    }
}
