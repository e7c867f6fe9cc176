//! The `Shard` Durable Object: appends each push as one row, folds on its alarm, publishes its
//! cumulative snapshot to KV. What it stores and how it folds is in [`pum_shard`].
//!
//! Durability: a push's row is written with `sql.exec` and the object answers after it; the
//! runtime's output gate holds the answer until the write is confirmed, and if the write fails
//! the answer never leaves and the object restarts. So a 204 means stored, and anything else
//! means nothing was stored. The alarm is scheduled before the row is written, so a failure to
//! schedule it cannot follow a stored row.
//!
//! Publishing: an alarm that has pushes to fold or totals to publish first schedules the next
//! alarm, then folds (one transaction), then writes KV. If it dies anywhere after the first step,
//! the next alarm runs on a fresh object, which starts out assuming KV is behind (`dirty`), and
//! publishes. So every acknowledged push reaches KV.

use std::cell::RefCell;
use std::rc::Rc;

use pum_shared::Aggregate;
use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;
use wasm_bindgen::closure::Closure;
use worker::{
    Date, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue, State,
    durable_object,
};

use crate::entry::{KV_BINDING, env_text};
use pum_shard as shard;

/// One shard.
#[durable_object]
pub struct Shard {
    state: State,
    env: Env,
    fold_interval_ms: f64,
    mem: RefCell<Memory>,
}

/// What a shard keeps in memory between events (lost when it is evicted; rebuilt from storage).
struct Memory {
    /// The shard's name, once known (from a push, or from `meta`).
    name: Option<String>,
    /// Cumulative totals, loaded from `totals` when first needed.
    totals: Option<Aggregate>,
    /// Whether an alarm is known to be scheduled.
    alarm_set: bool,
    /// Whether KV may be behind the totals. A fresh object cannot know, so it starts `true`: its
    /// first alarm publishes.
    dirty: bool,
    /// When KV was last written, in ms since the epoch.
    last_kv_write_ms: f64,
    stats: Stats,
}

/// Counters since the shard started, served on `/export/shards`.
#[derive(Default, serde::Serialize)]
struct Stats {
    pushes: u64,
    rows_written_by_pushes: u64,
    folds: u64,
    pushes_folded: u64,
    rows_written_by_folds: u64,
    alarms_set: u64,
    kv_writes: u64,
    errors: u64,
}

impl DurableObject for Shard {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        for statement in shard::SCHEMA {
            if let Err(e) = sql.exec(statement, None) {
                worker::console_error!("pum shard: creating the schema failed: {e}");
            }
        }
        let fold_interval_ms = shard::fold_interval_ms(env_text(&env, "FOLD_SECONDS").as_deref());
        Shard {
            state,
            env,
            fold_interval_ms,
            mem: RefCell::new(Memory {
                name: None,
                totals: None,
                alarm_set: false,
                dirty: true,
                last_kv_write_ms: 0.0,
                stats: Stats::default(),
            }),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let shard = req
            .url()?
            .query_pairs()
            .find(|(k, _)| k == "shard")
            .map(|(_, v)| v.into_owned());
        match req.path().as_str() {
            "/merge" => {
                let body = req.text().await?;
                match self.merge(shard, body).await {
                    Ok(()) => Ok(Response::empty()?.with_status(204)),
                    Err(e) => {
                        self.mem.borrow_mut().stats.errors += 1;
                        worker::console_error!("pum shard: a push was not stored: {e}");
                        Response::error("not stored", 503)
                    }
                }
            }
            "/stats" => self.stats(shard),
            _ => Response::error("not found", 404),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        self.mem.borrow_mut().alarm_set = false;
        let pending = self.pending_count()?;
        if pending == 0 && !self.mem.borrow().dirty {
            // Nothing to fold or publish: the shard rests until the next push.
            return Response::empty();
        }
        // The next alarm first, so that dying after the fold cannot leave KV behind for good.
        self.schedule(self.fold_interval_ms).await?;
        if let Err(e) = self.fold_and_publish().await {
            self.mem.borrow_mut().stats.errors += 1;
            worker::console_error!("pum shard: fold or publish failed; retrying: {e}");
            self.schedule(shard::RETRY_MS).await?;
        }
        Response::empty()
    }
}

impl Shard {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    async fn schedule(&self, delay_ms: f64) -> Result<()> {
        self.state.storage().set_alarm(delay_ms as i64).await?;
        let mut m = self.mem.borrow_mut();
        m.alarm_set = true;
        m.stats.alarms_set += 1;
        Ok(())
    }

    async fn merge(&self, shard: Option<String>, delta: String) -> Result<()> {
        // Only deltas the Worker made reach here, but a row that does not decode would stop every
        // later fold: check it before it is stored.
        Aggregate::from_json(&delta).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.remember_name(shard)?;
        if !self.mem.borrow().alarm_set {
            if self.state.storage().get_alarm().await?.is_none() {
                self.schedule(self.fold_interval_ms).await?;
            } else {
                self.mem.borrow_mut().alarm_set = true;
            }
        }
        let cursor = self
            .sql()
            .exec(shard::INSERT_PENDING, vec![SqlStorageValue::String(delta)])?;
        let written = cursor.rows_written() as u64;
        let mut m = self.mem.borrow_mut();
        m.stats.pushes += 1;
        m.stats.rows_written_by_pushes += written;
        Ok(())
    }

    /// Learns the shard's name from the first push after a start, and records it once ever.
    fn remember_name(&self, shard: Option<String>) -> Result<()> {
        if self.mem.borrow().name.is_some() {
            return Ok(());
        }
        let name = match (self.stored_name()?, shard) {
            (Some(stored), _) => stored,
            (None, Some(given)) => {
                self.sql().exec(
                    shard::INSERT_NAME,
                    vec![SqlStorageValue::String(given.clone())],
                )?;
                given
            }
            (None, None) => return Err("a push without a shard name".into()),
        };
        self.mem.borrow_mut().name = Some(name);
        Ok(())
    }

    fn stored_name(&self) -> Result<Option<String>> {
        #[derive(serde::Deserialize)]
        struct Row {
            v: String,
        }
        let rows: Vec<Row> = self.sql().exec(shard::SELECT_NAME, None)?.to_array()?;
        Ok(rows.into_iter().next().map(|r| r.v))
    }

    fn pending_count(&self) -> Result<u64> {
        #[derive(serde::Deserialize)]
        struct Row {
            n: f64,
        }
        let row: Row = self.sql().exec(shard::COUNT_PENDING, None)?.one()?;
        Ok(row.n as u64)
    }

    /// Folds pending pushes into the totals (one transaction), then writes the snapshot to KV if
    /// KV is behind and the key's last write is a second old (else the next alarm does).
    async fn fold_and_publish(&self) -> Result<()> {
        self.fold()?;
        let (name, dirty, wait) = {
            let m = self.mem.borrow();
            let now = Date::now().as_millis() as f64;
            (
                m.name.clone(),
                m.dirty,
                shard::kv_wait_ms(now, m.last_kv_write_ms),
            )
        };
        if !dirty || wait > 0.0 {
            return Ok(());
        }
        let Some(name) = name.or(self.stored_name()?) else {
            // A shard that never took a push has nothing to publish.
            self.mem.borrow_mut().dirty = false;
            return Ok(());
        };
        let snapshot = match &self.mem.borrow().totals {
            Some(t) => t.to_json(),
            None => return Err("the totals are not loaded".into()),
        };
        self.env
            .kv(KV_BINDING)?
            .put(&shard::kv_key(&name), snapshot)?
            .execute()
            .await?;
        // Only alarms fold, and they do not overlap, so the totals written are still current.
        let mut m = self.mem.borrow_mut();
        m.dirty = false;
        m.last_kv_write_ms = Date::now().as_millis() as f64;
        m.name = Some(name);
        m.stats.kv_writes += 1;
        Ok(())
    }

    /// Moves every pending push into the totals, in one synchronous transaction: the pushes read,
    /// the totals written and `pending` emptied commit together or not at all.
    fn fold(&self) -> Result<()> {
        let storage = self.state.storage();
        let sql = storage.sql();
        let totals = match self.mem.borrow_mut().totals.take() {
            Some(t) => t,
            None => load_totals(&sql)?,
        };
        let outcome: Rc<RefCell<Option<(Aggregate, usize, u64)>>> = Rc::new(RefCell::new(None));
        let slot = Rc::clone(&outcome);
        let body = Closure::once_into_js(move || -> std::result::Result<JsValue, JsValue> {
            let done =
                fold_in_transaction(&sql, totals).map_err(|e| JsValue::from_str(&e.to_string()))?;
            *slot.borrow_mut() = Some(done);
            Ok(JsValue::UNDEFINED)
        });
        let raw: &JsValue = storage.as_raw();
        let transaction_sync: js_sys::Function =
            js_sys::Reflect::get(raw, &JsValue::from_str("transactionSync"))?.dyn_into()?;
        // On failure the transaction rolled back and the in-memory totals went with the closure:
        // the next fold reloads them from storage, which is consistent.
        transaction_sync.call1(raw, &body)?;
        let Some((totals, pushes, written)) = outcome.borrow_mut().take() else {
            return Err("the fold transaction did not run".into());
        };
        let mut m = self.mem.borrow_mut();
        m.totals = Some(totals);
        if pushes > 0 {
            m.dirty = true;
            m.stats.folds += 1;
            m.stats.pushes_folded += pushes as u64;
            m.stats.rows_written_by_folds += written;
        }
        Ok(())
    }

    fn stats(&self, shard: Option<String>) -> Result<Response> {
        let pending = self.pending_count()?;
        let m = self.mem.borrow();
        let body = serde_json::json!({
            "shard": m.name.clone().or(shard),
            "pending": pending,
            "series": m.totals.as_ref().map(Aggregate::len),
            "dirty": m.dirty,
            "stats": &m.stats,
        });
        Response::from_json(&body)
    }
}

fn load_totals(sql: &SqlStorage) -> Result<Aggregate> {
    #[derive(serde::Deserialize)]
    struct Row {
        part: String,
    }
    let rows: Vec<Row> = sql.exec(shard::SELECT_TOTALS, None)?.to_array()?;
    shard::totals_from_parts(rows.iter().map(|r| r.part.as_str()))
        .map_err(|e| worker::Error::RustError(format!("the stored totals do not decode: {e}")))
}

/// The body of the fold transaction. Returns the new totals, the pushes folded and the rows
/// written.
fn fold_in_transaction(sql: &SqlStorage, mut totals: Aggregate) -> Result<(Aggregate, usize, u64)> {
    #[derive(serde::Deserialize)]
    struct Row {
        delta: String,
    }
    let rows: Vec<Row> = sql.exec(shard::SELECT_PENDING, None)?.to_array()?;
    if rows.is_empty() {
        return Ok((totals, 0, 0));
    }
    let folded = shard::fold(&mut totals, rows.iter().map(|r| r.delta.as_str()))
        .map_err(|e| worker::Error::RustError(format!("a pending push does not decode: {e}")))?;
    for (_, overflow) in &folded.kept {
        worker::console_error!(
            "pum shard: a pending push is not folded, it stays pending: {overflow}"
        );
    }
    if folded.pushes == 0 {
        // Only pushes that would overflow: nothing changed, nothing to write.
        return Ok((totals, 0, 0));
    }
    let text = totals.to_json();
    let parts = shard::chunks(&text, shard::CHUNK_BYTES);
    let mut written = 0u64;
    for (i, part) in parts.iter().enumerate() {
        let c = sql.exec(
            shard::UPSERT_TOTALS,
            vec![
                SqlStorageValue::Integer(i as i64),
                SqlStorageValue::String((*part).to_owned()),
            ],
        )?;
        written += c.rows_written() as u64;
    }
    let c = sql.exec(
        shard::TRIM_TOTALS,
        vec![SqlStorageValue::Integer(parts.len() as i64)],
    )?;
    written += c.rows_written() as u64;
    for statement in shard::RESET_PENDING {
        written += sql.exec(statement, None)?.rows_written() as u64;
    }
    for (i, _) in &folded.kept {
        let kept = SqlStorageValue::String(rows[*i].delta.clone());
        written += sql.exec(shard::INSERT_PENDING, vec![kept])?.rows_written() as u64;
    }
    Ok((totals, folded.pushes, written))
}
