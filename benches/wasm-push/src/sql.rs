//! [`MemorySql`]: the shard's statements ([`pum_shard::schema`]) over a few vectors, so that the
//! bench runs the real [`pum_shard::Shard`] without SQLite. What a Durable Object's SQL costs
//! (the call into the runtime, SQLite, the write) is platform I/O, which the bench leaves out.
//! A statement it does not know is an error, so the bench stops if the shard's SQL changes
//! rather than measure a failure.

use std::cell::RefCell;

use pum_shard::schema;
use pum_shard::{Param, Rows, Sql, SqlError, Value};

/// The tables a shard reads and writes, in memory.
#[derive(Debug, Default)]
pub struct MemorySql {
    tables: RefCell<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    pending: Vec<Vec<u8>>,
    totals: Vec<String>,
    allowlists: Vec<(String, String)>,
    folded: Vec<(i64, String)>,
    name: Option<String>,
}

fn integer(params: &[Param<'_>], i: usize) -> Result<i64, SqlError> {
    match params.get(i) {
        Some(Param::Integer(n)) => Ok(*n),
        other => Err(SqlError(format!(
            "parameter {i}: an integer, not {other:?}"
        ))),
    }
}

fn text<'a>(params: &[Param<'a>], i: usize) -> Result<&'a str, SqlError> {
    match params.get(i) {
        Some(Param::Text(t)) => Ok(t),
        other => Err(SqlError(format!("parameter {i}: text, not {other:?}"))),
    }
}

fn written(n: u64) -> Rows {
    Rows {
        rows: Vec::new(),
        written: n,
    }
}

fn rows(rows: Vec<Vec<Value>>) -> Rows {
    Rows { rows, written: 0 }
}

impl Sql for MemorySql {
    fn exec(&self, statement: &str, params: &[Param<'_>]) -> Result<Rows, SqlError> {
        let mut t = self.tables.borrow_mut();
        // The push's statement first: it is the one per push.
        if statement == schema::INSERT_PENDING {
            let Some(Param::Blob(record)) = params.first() else {
                return Err(SqlError("INSERT_PENDING takes a blob".into()));
            };
            t.pending.push(record.to_vec());
            return Ok(written(1));
        }
        if schema::SCHEMA.contains(&statement) || statement == schema::RESET_PENDING[1] {
            return Ok(written(0));
        }
        Ok(match statement {
            // No table of an earlier version to migrate.
            schema::PENDING_DEFINITION => rows(Vec::new()),
            schema::SELECT_PENDING => rows(
                t.pending
                    .iter()
                    .map(|r| vec![Value::Blob(r.clone())])
                    .collect(),
            ),
            schema::COUNT_PENDING => rows(vec![vec![Value::Integer(t.pending.len() as i64)]]),
            s if s == schema::RESET_PENDING[0] => {
                t.pending.clear();
                written(1)
            }
            schema::SELECT_TOTALS => rows(
                t.totals
                    .iter()
                    .map(|p| vec![Value::Text(p.clone())])
                    .collect(),
            ),
            schema::UPSERT_TOTALS => {
                let (chunk, part) = (integer(params, 0)? as usize, text(params, 1)?);
                if chunk >= t.totals.len() {
                    t.totals.resize(chunk + 1, String::new());
                }
                t.totals[chunk] = part.to_owned();
                written(1)
            }
            schema::TRIM_TOTALS => {
                let keep = integer(params, 0)? as usize;
                let gone = t.totals.len().saturating_sub(keep);
                t.totals.truncate(keep);
                written(gone as u64)
            }
            schema::SELECT_ALLOWLISTS => {
                t.allowlists.sort();
                rows(
                    t.allowlists
                        .iter()
                        .map(|(f, d)| vec![Value::Text(f.clone()), Value::Text(d.clone())])
                        .collect(),
                )
            }
            schema::INSERT_ALLOWLIST => {
                let (fingerprint, description) = (text(params, 0)?, text(params, 1)?);
                if t.allowlists.iter().any(|(f, _)| f == fingerprint) {
                    written(0)
                } else {
                    t.allowlists
                        .push((fingerprint.to_owned(), description.to_owned()));
                    written(1)
                }
            }
            schema::SELECT_FOLDED => rows(
                t.folded
                    .iter()
                    .map(|(at, ids)| vec![Value::Integer(*at), Value::Text(ids.clone())])
                    .collect(),
            ),
            schema::INSERT_FOLDED => {
                let (at, ids) = (integer(params, 0)?, text(params, 1)?);
                t.folded.push((at, ids.to_owned()));
                written(1)
            }
            schema::SWEEP_FOLDED => {
                let horizon = integer(params, 0)?;
                let before = t.folded.len();
                t.folded.retain(|(at, _)| *at >= horizon);
                written((before - t.folded.len()) as u64)
            }
            schema::SELECT_NAME => rows(
                t.name
                    .iter()
                    .map(|n| vec![Value::Text(n.clone())])
                    .collect(),
            ),
            schema::INSERT_NAME => {
                t.name = Some(text(params, 0)?.to_owned());
                written(1)
            }
            other => {
                return Err(SqlError(format!(
                    "the bench's in-memory SQL does not know {other:?}"
                )));
            }
        })
    }

    /// Runs `body`. Nothing is rolled back: a failed fold fails the bench.
    fn transaction<T, E: From<SqlError>>(
        &self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        body()
    }
}
