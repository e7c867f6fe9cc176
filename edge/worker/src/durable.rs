//! The `Shard` Durable Object: runs [`pum_shard::Shard`] over the object's SQLite storage
//! ([`crate::sql`]), folds on its alarm and publishes to KV. What a shard stores, how it folds
//! and what each write costs is in `pum_shard`; this is the glue to the runtime.
//!
//! Durability: a push's row is written with `sql.exec` and the object answers after it; the
//! runtime's output gate holds the answer until the write is confirmed, and if the write fails
//! the answer never leaves and the object restarts. So `applied` means stored, and anything
//! else means nothing was stored. The alarm is scheduled before the row is written, so a failure
//! to schedule it cannot follow a stored row. `pum_shard::Shard::merge` checks the batch id and
//! appends without yielding, so concurrent duplicates cannot both pass.
//!
//! Publishing: an alarm that has records to fold or totals to publish first schedules the next
//! alarm, then folds (one transaction), then writes KV. If it dies anywhere after the first step,
//! the next alarm runs on a fresh object, which starts out assuming KV is behind (`dirty`), and
//! publishes. So every acknowledged push reaches KV.

use std::cell::RefCell;

use pum_shard::ShardError;
use pum_shared::Merged;
use worker::{Date, DurableObject, Env, Request, Response, Result, State, durable_object};

use crate::route;
use crate::settings::{FOLD_SECONDS, env_text};
use crate::sql::DurableSql;
use crate::store::KV_BINDING;

/// One shard.
#[durable_object]
pub struct Shard {
    state: State,
    env: Env,
    fold_interval_ms: f64,
    /// Borrowed only in synchronous code, never across an await.
    shard: RefCell<pum_shard::Shard<DurableSql>>,
    mem: RefCell<Memory>,
}

/// What the object keeps in memory between events besides the shard (lost when it is evicted).
struct Memory {
    /// Whether an alarm is known to be scheduled.
    alarm_set: bool,
    /// Whether KV may be behind the totals. A fresh object cannot know, so it starts `true`: its
    /// first alarm publishes.
    dirty: bool,
    /// When KV was last written, in ms since the epoch.
    last_kv_write_ms: f64,
    stats: Stats,
}

/// The object's counters since it started, beside the shard's.
#[derive(Default, serde::Serialize)]
struct Stats {
    alarms_set: u64,
    kv_writes: u64,
    errors: u64,
}

fn shard_error(e: ShardError) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

fn now_ms() -> u64 {
    Date::now().as_millis()
}

impl DurableObject for Shard {
    fn new(state: State, env: Env) -> Self {
        let fold_interval_ms = pum_shard::fold_interval_ms(env_text(&env, FOLD_SECONDS).as_deref());
        let shard = pum_shard::Shard::new(DurableSql::new(state.storage()));
        Shard {
            state,
            env,
            fold_interval_ms,
            shard: RefCell::new(shard),
            mem: RefCell::new(Memory {
                alarm_set: false,
                dirty: true,
                last_kv_write_ms: 0.0,
                stats: Stats::default(),
            }),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let url = req.inner().url();
        let (path, query) = route::split(&url);
        let name = route::param(query, "shard").map(str::to_owned);
        let done = match path {
            "/merge" => {
                let record = req.bytes().await?;
                if let Err(e) = self.schedule_if_unset().await {
                    self.mem.borrow_mut().stats.errors += 1;
                    worker::console_error!("pum shard: scheduling the alarm failed: {e}");
                    return Response::error("not stored", 503);
                }
                let mut shard = self.shard.borrow_mut();
                shard.name(name.as_deref()).and_then(|_| {
                    Ok(match shard.merge(&record, now_ms())? {
                        Merged::Applied => "applied",
                        Merged::Replayed => "replayed",
                    })
                })
            }
            "/describe" => {
                let description = req.text().await?;
                self.shard.borrow_mut().describe(&description).map(|()| "")
            }
            "/stats" => return self.stats(name),
            _ => return Response::error("not found", 404),
        };
        match done {
            Ok("") => Ok(Response::empty()?.with_status(204)),
            Ok(text) => Response::ok(text),
            Err(ShardError::UnknownAllowlist(_)) => Response::error("unknown_allowlist", 409),
            Err(e @ (ShardError::BadRecord(_) | ShardError::BadDescription(_))) => {
                Response::error(e.to_string(), 400)
            }
            Err(e) => {
                self.mem.borrow_mut().stats.errors += 1;
                worker::console_error!("pum shard: nothing was stored: {e}");
                Response::error("not stored", 503)
            }
        }
    }

    async fn alarm(&self) -> Result<Response> {
        self.mem.borrow_mut().alarm_set = false;
        let pending = self.shard.borrow_mut().pending().map_err(shard_error)?;
        if pending == 0 && !self.mem.borrow().dirty {
            // Nothing to fold or publish: the shard rests until the next push.
            return Response::empty();
        }
        // The next alarm first, so that dying after the fold cannot leave KV behind for good.
        self.schedule(self.fold_interval_ms).await?;
        if let Err(e) = self.fold_and_publish().await {
            self.mem.borrow_mut().stats.errors += 1;
            worker::console_error!("pum shard: fold or publish failed; retrying: {e}");
            self.schedule(pum_shard::RETRY_MS).await?;
        }
        Response::empty()
    }
}

impl Shard {
    async fn schedule(&self, delay_ms: f64) -> Result<()> {
        self.state.storage().set_alarm(delay_ms as i64).await?;
        let mut m = self.mem.borrow_mut();
        m.alarm_set = true;
        m.stats.alarms_set += 1;
        Ok(())
    }

    async fn schedule_if_unset(&self) -> Result<()> {
        if self.mem.borrow().alarm_set {
            return Ok(());
        }
        if self.state.storage().get_alarm().await?.is_none() {
            return self.schedule(self.fold_interval_ms).await;
        }
        self.mem.borrow_mut().alarm_set = true;
        Ok(())
    }

    /// Folds pending records into the totals (one transaction), then publishes to KV if KV is
    /// behind and the key's last write is a second old (else the next alarm does).
    async fn fold_and_publish(&self) -> Result<()> {
        let now = now_ms();
        let folded = self.shard.borrow_mut().fold(now).map_err(shard_error)?;
        for overflow in &folded.kept {
            worker::console_error!(
                "pum shard: a pending push is not folded, it stays pending: {overflow}"
            );
        }
        {
            let mut m = self.mem.borrow_mut();
            m.dirty |= folded.pushes > 0;
            if !m.dirty || pum_shard::kv_wait_ms(now as f64, m.last_kv_write_ms) > 0.0 {
                return Ok(());
            }
        }
        let (name, publication) = {
            let mut shard = self.shard.borrow_mut();
            let name = shard.name(None).map_err(shard_error)?;
            (name, shard.publication().map_err(shard_error)?)
        };
        let Some(name) = name else {
            // A shard that never took a push has nothing to publish.
            self.mem.borrow_mut().dirty = false;
            return Ok(());
        };
        let key = pum_shard::publish::kv_key(&name);
        self.env
            .kv(KV_BINDING)?
            .put(&key, publication)?
            .execute()
            .await?;
        // Only alarms fold, and they do not overlap, so what was written is still current.
        let mut m = self.mem.borrow_mut();
        m.dirty = false;
        m.last_kv_write_ms = now_ms() as f64;
        m.stats.kv_writes += 1;
        Ok(())
    }

    fn stats(&self, name: Option<String>) -> Result<Response> {
        #[derive(serde::Serialize)]
        struct All<'a> {
            #[serde(flatten)]
            shard: &'a pum_shard::Stats,
            #[serde(flatten)]
            object: &'a Stats,
        }
        let mut shard = self.shard.borrow_mut();
        let pending = shard.pending().map_err(shard_error)?;
        let stored = shard.name(None).map_err(shard_error)?;
        let m = self.mem.borrow();
        Response::from_json(&serde_json::json!({
            "shard": stored.or(name),
            "pending": pending,
            "series": shard.series(),
            "dirty": m.dirty,
            "stats": All { shard: shard.stats(), object: &m.stats },
        }))
    }
}
