//! `pum_shard`'s [`Sql`] over a Durable Object's SQLite storage.

use pum_shard::{Param, Rows, Sql, SqlError, Value};
use wasm_bindgen::closure::ScopedClosure;
use wasm_bindgen::{JsCast, JsValue};
use worker::{SqlStorage, SqlStorageValue, Storage};

/// The object's storage, as a shard's database.
pub struct DurableSql {
    storage: Storage,
    sql: SqlStorage,
}

impl DurableSql {
    /// Over `storage`.
    pub fn new(storage: Storage) -> Self {
        let sql = storage.sql();
        DurableSql { storage, sql }
    }
}

fn error(e: impl std::fmt::Debug) -> SqlError {
    SqlError(format!("{e:?}"))
}

impl Sql for DurableSql {
    fn exec(&self, statement: &str, params: &[Param<'_>]) -> Result<Rows, SqlError> {
        let bindings: Vec<SqlStorageValue> = params
            .iter()
            .map(|p| match *p {
                Param::Integer(i) => SqlStorageValue::Integer(i),
                Param::Text(s) => SqlStorageValue::String(s.to_owned()),
                Param::Blob(b) => SqlStorageValue::Blob(b.to_vec()),
            })
            .collect();
        let cursor = self.sql.exec(statement, bindings).map_err(error)?;
        let mut rows = Vec::new();
        for row in cursor.raw() {
            let row = row.map_err(error)?.into_iter().map(|v| match v {
                SqlStorageValue::Null => Value::Null,
                SqlStorageValue::Boolean(b) => Value::Integer(i64::from(b)),
                SqlStorageValue::Integer(i) => Value::Integer(i),
                SqlStorageValue::Float(f) => Value::Real(f),
                SqlStorageValue::String(s) => Value::Text(s),
                SqlStorageValue::Blob(b) => Value::Blob(b),
            });
            rows.push(row.collect());
        }
        // Final once the cursor is consumed.
        let written = cursor.rows_written() as u64;
        Ok(Rows { rows, written })
    }

    /// `storage.transactionSync`: the runtime rolls back what `body` wrote if it throws, which
    /// the callback does when `body` returns an error.
    fn transaction<T, E: From<SqlError>>(
        &self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut body = Some(body);
        let mut outcome: Option<Result<T, E>> = None;
        let called = {
            let mut run = || -> Result<JsValue, JsValue> {
                let Some(body) = body.take() else {
                    return Err(JsValue::from_str("the transaction ran twice"));
                };
                let failed = match body() {
                    Ok(value) => {
                        outcome = Some(Ok(value));
                        false
                    }
                    Err(e) => {
                        outcome = Some(Err(e));
                        true
                    }
                };
                if failed {
                    Err(JsValue::from_str("rolled back"))
                } else {
                    Ok(JsValue::UNDEFINED)
                }
            };
            let callback =
                ScopedClosure::<dyn FnMut() -> Result<JsValue, JsValue>>::borrow_mut(&mut run);
            let raw: &JsValue = self.storage.as_raw();
            js_sys::Reflect::get(raw, &JsValue::from_str("transactionSync"))
                .and_then(|f| f.dyn_into::<js_sys::Function>())
                .and_then(|f| f.call1(raw, callback.as_js_value()))
        };
        match (called, outcome) {
            (Ok(_), Some(done)) => done,
            (Err(_), Some(Err(e))) => Err(e),
            (Err(js), _) => Err(error(js).into()),
            (Ok(_), None) => Err(SqlError("the transaction did not run".into()).into()),
        }
    }
}
