//! The SQL a shard needs, as a trait: the Durable Object's `SqlStorage` implements it on the
//! Workers runtime (edge/worker), and a SQLite connection natively (this crate's tests), so that
//! the shard's logic is one piece of code, tested where it runs.

/// A value bound to a statement's `?`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Param<'a> {
    /// An integer. Durable Object SQL passes numbers through JavaScript: keep them within
    /// ±2^53 (timestamps in ms are), and store wider ones as text.
    Integer(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// A value read from a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// An integer.
    Integer(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            // Durable Object SQL reads a whole number beyond 2^53 as a float.
            Value::Real(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a blob.
    pub fn as_blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}

/// What a statement returned: its rows, and how many rows it wrote (what Durable Objects bill:
/// `cursor.rowsWritten`, which counts index and schema rows too).
#[derive(Debug, Default, PartialEq)]
pub struct Rows {
    /// The rows, each its columns in order.
    pub rows: Vec<Vec<Value>>,
    /// Rows written.
    pub written: u64,
}

/// A failed statement or transaction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("SQL: {0}")]
pub struct SqlError(pub String);

/// A SQLite database, as a Durable Object holds one: statements run synchronously, and nothing
/// else runs on the database while one does.
pub trait Sql {
    /// Runs one statement with its `?` parameters, to completion.
    fn exec(&self, statement: &str, params: &[Param<'_>]) -> Result<Rows, SqlError>;

    /// Runs `body` as one transaction: what its statements wrote commits if it returns `Ok`,
    /// and is rolled back if it returns `Err`.
    fn transaction<T, E: From<SqlError>>(
        &self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E>;
}
