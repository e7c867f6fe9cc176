//! The `Shard` Durable Object: runs [`pum_shard::Shard`] over the object's SQLite storage
//! ([`crate::sql`]), writes pushes by group commit, folds on its alarm and publishes to KV. What
//! a shard stores, how it folds and what each write costs is in `pum_shard`; this is the glue to
//! the runtime.
//!
//! Group commit: a push is admitted into the open group at once (its record checked, its batch
//! id looked up and recorded, without yielding, so concurrent duplicates cannot both apply).
//! One request at a time writes: it waits `PUM_COMMIT_WAIT_MS` (0 by default), makes sure the
//! alarm is set, writes the open group as one row and waits for `storage.sync()`, that is until
//! the row is durable. Pushes arriving meanwhile join the next group, which the first of them
//! writes as soon as the write in flight is done. Every push is answered only once its group is
//! durable (the runtime's output gate would hold the answer until then anyway), so `applied`
//! means stored, and anything else means nothing was stored. A replay waits for the group it
//! was admitted with, so it is never answered before the push it repeats is durable. When a
//! write fails, its group and the open one are answered 503 and their batch ids forgotten, so
//! that the clients' retries apply.
//!
//! Alarm: while pushes arrive, one every `PUM_FOLD_SECONDS`; it folds the pending rows into the
//! totals (one transaction) and, when the totals changed and the last publication is
//! `PUM_PUBLISH_SECONDS` old, writes them to KV. Alarms are retried by the runtime until they
//! succeed, and a fresh object assumes KV is behind (`dirty`), so every acknowledged push
//! reaches KV. A shard with nothing new writes nothing; once idle, one last alarm when its
//! window of batch ids has expired deletes their rows.

use std::cell::RefCell;
use std::time::Duration;

use futures_channel::oneshot;
use pum_shard::{Admitted, ShardError, Timing};
use pum_shared::Merged;
use pum_shared::own::Op;
use worker::{
    Date, Delay, DurableObject, Env, Request, Response, Result, ScheduledTime, State,
    durable_object,
};

use crate::route;
use crate::settings::env_text;
use crate::sql::DurableSql;
use crate::store::KV_BINDING;

/// One shard.
#[durable_object]
pub struct Shard {
    state: State,
    env: Env,
    timing: Timing,
    /// Borrowed only in synchronous code, never across an await.
    shard: RefCell<pum_shard::Shard<DurableSql>>,
    mem: RefCell<Memory>,
    commits: RefCell<Commits>,
}

/// What the object keeps in memory between events besides the shard (lost when it is evicted).
struct Memory {
    /// The alarm as last set or read: `None` until known, then when it fires (`None` when no
    /// alarm is set).
    alarm: Option<Option<f64>>,
    /// Whether KV may be behind the totals. A fresh object cannot know, so it starts `true`: its
    /// first alarm publishes.
    dirty: bool,
    /// When KV was last written, in ms since the epoch.
    last_kv_write_ms: f64,
    stats: Stats,
}

/// The writes of groups: who writes, which groups are done, who waits.
#[derive(Default)]
struct Commits {
    /// Whether a request is writing a group (waiting to group, writing, or waiting for the
    /// write to be durable).
    writing: bool,
    /// Groups numbered below this are finished.
    finished: u64,
    /// Groups that failed, with why (the last few).
    failed: Vec<(u64, String)>,
    /// Requests waiting for the write in flight to finish.
    waiters: Vec<oneshot::Sender<()>>,
}

/// Failed groups remembered: a failure answers every request of its group before the next
/// write starts, so a few are plenty.
const FAILED_KEPT: usize = 16;

/// The object's counters since it started, beside the shard's.
#[derive(Default, serde::Serialize)]
struct Stats {
    alarms: u64,
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
        // The Worker checks these vars and refuses every push when they are invalid.
        let timing = Timing::from_vars(|name| env_text(&env, name)).unwrap_or_default();
        let shard = pum_shard::Shard::new(DurableSql::new(state.storage()));
        Shard {
            state,
            env,
            timing,
            shard: RefCell::new(shard),
            mem: RefCell::new(Memory {
                alarm: None,
                dirty: true,
                last_kv_write_ms: 0.0,
                stats: Stats::default(),
            }),
            commits: RefCell::new(Commits::default()),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let url = req.inner().url();
        let (path, query) = route::split(&url);
        let name = route::param(query, "shard");
        let done = match path {
            "/merge" => {
                let record = req.bytes().await?;
                match self.merge(name, &record).await {
                    Ok(Merged::Applied) => Ok("applied"),
                    Ok(Merged::Replayed) => Ok("replayed"),
                    Err(e) => Err(e),
                }
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
        {
            let mut m = self.mem.borrow_mut();
            m.alarm = Some(None);
            m.stats.alarms += 1;
        }
        self.shard.borrow().count(Op::DoRequests, 1.0);
        let next = match self.fold_and_publish().await {
            Ok(next) => next,
            Err(e) => {
                self.mem.borrow_mut().stats.errors += 1;
                worker::console_error!("pum shard: fold or publish failed; retrying: {e}");
                Some(now_ms() as f64 + pum_shard::RETRY_MS)
            }
        };
        if let Some(at) = next {
            self.alarm_by(at).await?;
        }
        Response::empty()
    }
}

impl Shard {
    /// Admits the push into the open group and answers once its group is durable.
    async fn merge(
        &self,
        name: Option<&str>,
        record: &[u8],
    ) -> std::result::Result<Merged, ShardError> {
        let Admitted::Queued { group, merged } = {
            let mut shard = self.shard.borrow_mut();
            shard.name(name)?;
            shard.admit(record, now_ms())?
        };
        loop {
            {
                let c = self.commits.borrow();
                if group < c.finished {
                    return match c.failed.iter().find(|(g, _)| *g == group) {
                        Some((_, why)) => Err(ShardError::Sql(pum_shard::SqlError(why.clone()))),
                        None => Ok(merged),
                    };
                }
            }
            let writing = self.commits.borrow().writing;
            if writing {
                let (done, wait) = oneshot::channel();
                self.commits.borrow_mut().waiters.push(done);
                let _ = wait.await;
            } else {
                self.write_group().await;
            }
        }
    }

    /// Writes the open group and waits until it is durable; then wakes the requests waiting.
    async fn write_group(&self) {
        self.commits.borrow_mut().writing = true;
        let outcome = self.commit_open().await;
        let mut c = self.commits.borrow_mut();
        c.writing = false;
        let (group, failed) = outcome;
        if let Some(why) = failed {
            self.mem.borrow_mut().stats.errors += 1;
            worker::console_error!("pum shard: a group of pushes was not stored: {why}");
            // The open group may hold replays of the group that failed: it fails too.
            let open = self.shard.borrow_mut().abandon();
            c.failed.push((group, why.clone()));
            c.failed.push((open, why));
            let excess = c.failed.len().saturating_sub(FAILED_KEPT);
            c.failed.drain(..excess);
            c.finished = open + 1;
        } else {
            c.finished = group + 1;
        }
        for waiter in c.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Writes the open group: its number, and why it failed if it did.
    async fn commit_open(&self) -> (u64, Option<String>) {
        if self.timing.commit_wait_ms > 0 {
            Delay::from(Duration::from_millis(self.timing.commit_wait_ms.into())).await;
        }
        // The alarm before the row, so that a stored row always has an alarm to fold it.
        let fold_at = now_ms() as f64 + self.timing.fold_ms;
        if let Err(e) = self.alarm_by(fold_at).await {
            let group = self.shard.borrow().open_group();
            return (group, Some(format!("scheduling the alarm failed: {e}")));
        }
        let committed = {
            let mut shard = self.shard.borrow_mut();
            let group = shard.open_group();
            shard.commit(now_ms()).map_err(|e| (group, e))
        };
        match committed {
            Ok(c) if c.rows == 0 => (c.group, None),
            // Until the row is durable, pushes arriving join the next group.
            Ok(c) => match self.state.storage().sync().await {
                Ok(()) => (c.group, None),
                Err(e) => (c.group, Some(format!("the write did not complete: {e}"))),
            },
            Err((group, e)) => (group, Some(e.to_string())),
        }
    }

    /// Makes sure an alarm fires at `at` (ms since the epoch) or earlier.
    async fn alarm_by(&self, at: f64) -> Result<()> {
        let known = self.mem.borrow().alarm;
        let current = match known {
            Some(current) => current,
            None => {
                let read = self.state.storage().get_alarm().await?.map(|t| t as f64);
                self.mem.borrow_mut().alarm = Some(read);
                read
            }
        };
        if current.is_some_and(|c| c <= at) {
            return Ok(());
        }
        let date = js_sys::Date::new(&at.into());
        self.state
            .storage()
            .set_alarm(ScheduledTime::new(date))
            .await?;
        // `setAlarm` is billed as a row written.
        self.shard.borrow().count(Op::SqliteRowsWritten, 1.0);
        let mut m = self.mem.borrow_mut();
        m.alarm = Some(Some(at));
        m.stats.alarms_set += 1;
        Ok(())
    }

    /// Folds pending records into the totals (one transaction), then publishes to KV if KV is
    /// behind and the last publication is old enough. Returns when the next alarm is due.
    async fn fold_and_publish(&self) -> Result<Option<f64>> {
        let now = now_ms();
        let folded = self.shard.borrow_mut().fold(now).map_err(shard_error)?;
        for overflow in &folded.kept {
            worker::console_error!(
                "pum shard: a pending push is not folded, it stays pending: {overflow}"
            );
        }
        let publish_at = {
            let mut m = self.mem.borrow_mut();
            m.dirty |= folded.pushes > 0;
            m.last_kv_write_ms + self.timing.publish_ms
        };
        if self.mem.borrow().dirty && now as f64 >= publish_at {
            self.publish().await?;
        }
        let now = now_ms() as f64;
        let pending = self.shard.borrow_mut().pending().map_err(shard_error)?;
        Ok(if self.mem.borrow().dirty {
            let m = self.mem.borrow();
            Some(
                (m.last_kv_write_ms + self.timing.publish_ms)
                    .max(now + pum_shard::KV_MIN_INTERVAL_MS),
            )
        } else if pending > 0 {
            // Records a fold had to leave pending (see `pum_shard`, overflow).
            Some(now + self.timing.fold_ms)
        } else {
            // At rest: one more alarm when the window of batch ids has expired, to delete it.
            let due = self.shard.borrow_mut().sweep_due().map_err(shard_error)?;
            due.map(|d| d as f64)
        })
    }

    /// Writes the totals and allowlists to the shard's KV key.
    async fn publish(&self) -> Result<()> {
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
        let kv = self.env.kv(KV_BINDING)?;
        // A fresh object cannot know whether KV is behind: it reads the key (a tenth of a
        // write's price) and writes only if it differs, so that waking a resting shard (its
        // sweep alarm) writes nothing.
        let fresh = self.mem.borrow().last_kv_write_ms == 0.0;
        if fresh && kv.get(&key).text().await?.as_deref() == Some(publication.as_str()) {
            let mut m = self.mem.borrow_mut();
            m.dirty = false;
            m.last_kv_write_ms = now_ms() as f64;
            return Ok(());
        }
        kv.put(&key, publication)?.execute().await?;
        self.shard.borrow().count(Op::KvWrites, 1.0);
        // Only alarms fold, and they do not overlap, so what was written is still current.
        let mut m = self.mem.borrow_mut();
        m.dirty = false;
        m.last_kv_write_ms = now_ms() as f64;
        m.stats.kv_writes += 1;
        Ok(())
    }

    fn stats(&self, name: Option<&str>) -> Result<Response> {
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
            "shard": stored.as_deref().or(name),
            "pending": pending,
            "series": shard.series(),
            "dirty": m.dirty,
            "stats": All { shard: shard.stats(), object: &m.stats },
        }))
    }
}
