//! The shard's SQL on SQLite, for the tests: what the Durable Object's `SqlStorage` does, on a
//! file.

use pum_shard::{Param, Rows, Sql, SqlError, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// A SQLite connection as a shard's database.
pub struct Sqlite(pub rusqlite::Connection);

impl Sqlite {
    /// Opens (or creates) the database at `path`: a new connection, as a restarted object gets.
    pub fn open(path: &std::path::Path) -> Sqlite {
        Sqlite(rusqlite::Connection::open(path).expect("the database opens"))
    }
}

fn error(e: rusqlite::Error) -> SqlError {
    SqlError(e.to_string())
}

impl Sql for Sqlite {
    fn exec(&self, statement: &str, params: &[Param<'_>]) -> Result<Rows, SqlError> {
        let before = self.0.total_changes();
        let mut stmt = self.0.prepare(statement).map_err(error)?;
        let columns = stmt.column_count();
        let params = params.iter().map(|p| match p {
            Param::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        });
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(error)?;
        let mut out = Rows::default();
        while let Some(row) = rows.next().map_err(error)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Integer(i),
                    ValueRef::Real(f) => Value::Real(f),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.rows.push(values);
        }
        drop(rows);
        // SQLite counts the rows a statement changed; Durable Objects also bill the schema row
        // of each table created or dropped.
        let schema = (statement.starts_with("CREATE TABLE ")
            && !statement.contains("IF NOT EXISTS"))
            || statement.starts_with("DROP TABLE ");
        out.written = self.0.total_changes().saturating_sub(before) + u64::from(schema);
        Ok(out)
    }

    fn transaction<T, E: From<SqlError>>(
        &self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        self.0.execute_batch("BEGIN IMMEDIATE").map_err(error)?;
        match body() {
            Ok(value) => {
                self.0.execute_batch("COMMIT").map_err(error)?;
                Ok(value)
            }
            Err(e) => {
                self.0.execute_batch("ROLLBACK").map_err(error)?;
                Err(e)
            }
        }
    }
}
