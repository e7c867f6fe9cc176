//! [`Shard`]: what a shard does with its database, whatever runs it (see the crate docs).

use std::collections::BTreeMap;

use pum_shared::aggregate::{Aggregate, Overflow};
use pum_shared::allowlist::{Allowlist, ConfigError};
use pum_shared::batch::{WINDOW_MS, Window};
use pum_shared::own::{Counts, Op, Operations};
use pum_shared::record::{self, RecordError};
use pum_shared::store::Merged;

use crate::group;
use crate::publish;
use crate::schema::{self, CHUNK_BYTES};
use crate::sql::{Param, Sql, SqlError, Value};

/// Why a shard refused or failed an operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShardError {
    /// The record names an allowlist the shard does not hold: describe it
    /// ([`Shard::describe`]), then send the record again.
    #[error("the shard holds no allowlist with fingerprint {0:016x}")]
    UnknownAllowlist(u64),
    /// The record does not decode: nothing was stored.
    #[error("the record does not decode: {0}")]
    BadRecord(#[from] RecordError),
    /// The allowlist description does not compile: nothing was stored.
    #[error("the allowlist description does not compile: {0}")]
    BadDescription(ConfigError),
    /// A statement failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// The shard's storage holds what it cannot read.
    #[error("the shard's storage is corrupt: {0}")]
    Corrupt(String),
}

/// What a fold did.
#[derive(Debug, Default, PartialEq)]
pub struct Folded {
    /// Pending records merged into the totals.
    pub pushes: usize,
    /// Why each record left pending was left there: merging it would take a total past what it
    /// holds (see the crate docs).
    pub kept: Vec<Overflow>,
    /// Rows the fold wrote.
    pub written: u64,
}

/// Where an admitted push stands ([`Shard::admit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// In group `group`: answer `merged` once that group's commit is durable. A replay waits
    /// too, so that it is never answered before the write of the push it repeats.
    Queued {
        /// The group's number.
        group: u64,
        /// The answer.
        merged: Merged,
    },
}

/// What a commit wrote ([`Shard::commit`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// The group's number: every push admitted into it is answered once this commit is durable.
    pub group: u64,
    /// Records written.
    pub records: usize,
    /// Rows written: 1 for a group (more only past [`CHUNK_BYTES`]), 0 when it held replays only.
    pub rows: u64,
}

/// A shard's counters since it started (served on the Worker's `/export/shards`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Pushes stored.
    pub pushes: u64,
    /// Commits that wrote rows (one row per group of pushes).
    pub commits: u64,
    /// Pushes whose batch id was already applied: answered, not stored.
    pub replays: u64,
    /// Rows the stored pushes wrote.
    pub rows_written_by_pushes: u64,
    /// Folds that merged at least one record.
    pub folds: u64,
    /// Records folded.
    pub pushes_folded: u64,
    /// Rows the folds wrote.
    pub rows_written_by_folds: u64,
    /// Rows the allowlists described wrote.
    pub rows_written_by_describes: u64,
}

/// One shard over its database `Q`. Its methods run synchronously and take `&mut self`: a
/// Durable Object runs one at a time, and a native caller holds it behind a lock.
///
/// What it reads from storage (the totals, the allowlists, the batch ids of the window) it keeps
/// in memory from the first use; when a fold fails it forgets all of it and reads storage again,
/// which the failed transaction left as it was.
pub struct Shard<Q> {
    sql: Q,
    state: Option<State>,
    /// The batch ids applied within the window, pending or folded: loaded by the first merge.
    seen: Option<Window>,
    /// The group being filled: written by the next [`Shard::commit`].
    open: Open,
    /// Billable operations not yet in the totals: the next fold that writes them adds them.
    ops: Operations,
    name: Option<String>,
    stats: Stats,
}

/// The group being filled.
#[derive(Debug, Default)]
struct Open {
    number: u64,
    rows: group::Rows,
    /// The allowlist of its first record, which also encodes the shard's own record.
    fingerprint: Option<u64>,
    /// The batch ids of its records, taken out of the window again if its write fails.
    ids: Vec<String>,
}

struct State {
    /// The folded totals.
    totals: Aggregate,
    /// The allowlists described, by fingerprint; each compiled when first needed.
    allowlists: BTreeMap<u64, Described>,
}

struct Described {
    description: String,
    compiled: Option<Allowlist>,
}

impl State {
    fn allowlist(&mut self, fingerprint: u64) -> Result<&Allowlist, ShardError> {
        let d = self
            .allowlists
            .get_mut(&fingerprint)
            .ok_or(ShardError::UnknownAllowlist(fingerprint))?;
        if d.compiled.is_none() {
            let compiled = Allowlist::from_description(&d.description).map_err(|e| {
                ShardError::Corrupt(format!(
                    "allowlist {fingerprint:016x} does not compile: {e}"
                ))
            })?;
            d.compiled = Some(compiled);
        }
        d.compiled
            .as_ref()
            .ok_or_else(|| ShardError::Corrupt("an allowlist was not compiled".into()))
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<record::Record, ShardError> {
        let allowlist = self.allowlist(record::peek_fingerprint(bytes)?)?;
        Ok(record::decode(bytes, allowlist)?)
    }
}

impl<Q: Sql> Shard<Q> {
    /// A shard over `sql`. Nothing is read until the first operation, which creates the tables
    /// if they are not there.
    pub fn new(sql: Q) -> Self {
        Shard {
            sql,
            state: None,
            seen: None,
            open: Open::default(),
            ops: Operations::default(),
            name: None,
            stats: Stats::default(),
        }
    }

    /// Counts `n` billable operations of the platform (alarms, `setAlarm`, KV writes), added to
    /// the totals by the next fold that writes them.
    pub fn count(&self, op: Op, n: f64) {
        self.ops.count(op, n);
    }

    /// The counters since this shard started.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stores one push's record at once: [`Shard::admit`], then [`Shard::commit`] (for callers
    /// that do not group, such as the native tests and the conformance suite).
    pub fn merge(&mut self, bytes: &[u8], now_ms: u64) -> Result<Merged, ShardError> {
        let Admitted::Queued { merged, .. } = self.admit(bytes, now_ms)?;
        self.commit(now_ms)?;
        Ok(merged)
    }

    /// Admits one push's record into the open group, written by the next [`Shard::commit`],
    /// unless its batch id was applied within [`WINDOW_MS`] (answered [`Merged::Replayed`] once
    /// that commit is durable, nothing written). A record under an allowlist the shard does not
    /// hold is refused with [`ShardError::UnknownAllowlist`], one that does not decode with
    /// [`ShardError::BadRecord`]: nothing of either is kept.
    ///
    /// Checking and admitting do not yield, so of concurrent duplicates one is applied and the
    /// others wait for its group and are answered as replays.
    pub fn admit(&mut self, bytes: &[u8], now_ms: u64) -> Result<Admitted, ShardError> {
        let Shard {
            sql,
            state,
            seen,
            open,
            stats,
            ..
        } = self;
        let state = loaded(sql, state)?;
        // A row that does not decode would stop every later fold: check it before it is stored.
        let record = state.decode(bytes)?;
        let seen = window(sql, seen, now_ms)?;
        let group = open.number;
        if let Some(id) = record.batch {
            if !seen.insert(&id, now_ms) {
                stats.replays += 1;
                let merged = Merged::Replayed;
                return Ok(Admitted::Queued { group, merged });
            }
            open.ids.push(id);
        }
        open.rows.push(bytes);
        open.fingerprint.get_or_insert(record.fingerprint);
        let merged = Merged::Applied;
        Ok(Admitted::Queued { group, merged })
    }

    /// The number of the open group: the group the next [`Shard::admit`] joins and the next
    /// [`Shard::commit`] writes.
    pub fn open_group(&self) -> u64 {
        self.open.number
    }

    /// Drops the open group unwritten, forgetting its batch ids, and opens the next: for a
    /// caller that cannot write it (a write before it failed, or the alarm could not be
    /// scheduled), whose pushes are then all answered with the error. Returns its number.
    pub fn abandon(&mut self) -> u64 {
        let next = Open {
            number: self.open.number + 1,
            ..Open::default()
        };
        let open = std::mem::replace(&mut self.open, next);
        self.forget(&open.ids);
        open.number
    }

    fn forget(&mut self, ids: &[String]) {
        if let Some(seen) = &mut self.seen {
            for id in ids {
                seen.remove(id);
            }
        }
    }

    /// Writes the open group's records as one row of `pending` (more rows, in one transaction,
    /// only past [`CHUNK_BYTES`]) and opens the next group. A group of replays only writes
    /// nothing. If the write fails, the group's batch ids are forgotten again, so that the
    /// clients' retries apply, and every push of the group is to be answered with the error.
    ///
    /// The row also carries the shard's own record: the billable operations counted since the
    /// last one ([`Shard::count`], the describes, the folds' rows) and the rows of this write,
    /// so that they are stored with it and folded with the pushes.
    pub fn commit(&mut self, now_ms: u64) -> Result<Committed, ShardError> {
        let next = Open {
            number: self.open.number + 1,
            ..Open::default()
        };
        let mut open = std::mem::replace(&mut self.open, next);
        let mut done = Committed {
            group: open.number,
            records: open.rows.records(),
            rows: 0,
        };
        let carried = match open.fingerprint {
            Some(fingerprint) => {
                let taken = self.ops.take();
                match self.own_record(&open.rows, fingerprint, taken, now_ms) {
                    Ok(record) => {
                        open.rows.push_own(&record);
                        Some(taken)
                    }
                    Err(e) => {
                        // Left for a fold to carry.
                        self.ops.give_back(taken);
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let rows = open.rows.rows();
        let written = match rows {
            [] => Ok(0),
            [row] => self
                .sql
                .exec(schema::INSERT_PENDING, &[Param::Blob(row)])
                .map(|r| r.written),
            _ => self.sql.transaction(|| {
                let mut written = 0;
                for row in rows {
                    written += self
                        .sql
                        .exec(schema::INSERT_PENDING, &[Param::Blob(row)])?
                        .written;
                }
                Ok::<_, SqlError>(written)
            }),
        };
        match written {
            Ok(written) => {
                done.rows = written;
                if done.records > 0 {
                    self.stats.pushes += done.records as u64;
                    self.stats.commits += 1;
                    self.stats.rows_written_by_pushes += written;
                }
                Ok(done)
            }
            Err(e) => {
                if let Some(taken) = carried {
                    self.ops.give_back(taken);
                }
                self.forget(&open.ids);
                Err(e.into())
            }
        }
    }

    /// The shard's own record for a write of `rows`: `taken` and the rows the write takes once
    /// the record is in it, under the allowlist `fingerprint` (every allowlist holds pum's own
    /// metrics).
    fn own_record(
        &mut self,
        rows: &group::Rows,
        fingerprint: u64,
        mut taken: Counts,
        now_ms: u64,
    ) -> Result<Vec<u8>, ShardError> {
        /// More than an own record takes: 7 counters of up to 2^128 millionths.
        const OWN_RECORD_MAX: usize = 256;
        let written = rows.rows().len() + usize::from(rows.starts_row(OWN_RECORD_MAX));
        taken[Op::SqliteRowsWritten as usize] += Operations::millionths(written as f64);
        let mut delta = Aggregate::new();
        Operations::add_to(&mut delta, taken);
        let state = loaded(&self.sql, &mut self.state)?;
        let allowlist = state.allowlist(fingerprint)?;
        let mut out = Vec::with_capacity(64);
        record::encode(allowlist, None, now_ms / 1000, &delta, &mut out)?;
        Ok(out)
    }

    /// Stores an allowlist ([`Allowlist::description`]) under its fingerprint, once: describing
    /// one the shard holds writes nothing.
    pub fn describe(&mut self, description: &str) -> Result<(), ShardError> {
        let Shard {
            sql, state, stats, ..
        } = self;
        let state = loaded(sql, state)?;
        let allowlist =
            Allowlist::from_description(description).map_err(ShardError::BadDescription)?;
        let fingerprint = allowlist.fingerprint();
        if state.allowlists.contains_key(&fingerprint) {
            return Ok(());
        }
        let key = format!("{fingerprint:016x}");
        let params = [Param::Text(&key), Param::Text(description)];
        let written = sql.exec(schema::INSERT_ALLOWLIST, &params)?.written;
        stats.rows_written_by_describes += written;
        self.ops.count(Op::SqliteRowsWritten, written as f64);
        state.allowlists.insert(
            fingerprint,
            Described {
                description: description.to_owned(),
                compiled: Some(allowlist),
            },
        );
        Ok(())
    }

    /// Folds every pending record into the totals, in one transaction: the records read, the
    /// totals rewritten, `pending` emptied, the batch ids applied recorded and those older than
    /// the window forgotten, together or not at all. A record that would take a total past what
    /// it holds stays pending whole (named in [`Folded::kept`]).
    ///
    /// The shards' own records in the groups (see [`Shard::commit`]) add to the totals, as
    /// `pum_store_operations_total`; a fold that folds records also adds the operations counted
    /// since (its own rows are counted for the next).
    pub fn fold(&mut self, now_ms: u64) -> Result<Folded, ShardError> {
        let Shard {
            sql,
            state: slot,
            ops,
            stats,
            ..
        } = self;
        let state = loaded(sql, slot)?;
        let taken = ops.take();
        match sql.transaction(|| fold_pending(sql, state, now_ms, taken)) {
            Ok(folded) => {
                if folded.pushes > 0 {
                    stats.folds += 1;
                    stats.pushes_folded += folded.pushes as u64;
                } else {
                    // Nothing was written to carry them.
                    ops.give_back(taken);
                }
                stats.rows_written_by_folds += folded.written;
                ops.count(Op::SqliteRowsWritten, folded.written as f64);
                Ok(folded)
            }
            Err(e) => {
                ops.give_back(taken);
                // The totals in memory may hold part of what was rolled back.
                *slot = None;
                Err(e)
            }
        }
    }

    /// When the batch ids in storage will all be older than the window, so that a fold then
    /// deletes them all (ms since the epoch); `None` when there are none. An idle shard sweeps
    /// its window then, so that what it stores stays bounded.
    pub fn sweep_due(&mut self) -> Result<Option<u64>, ShardError> {
        let Shard { sql, state, .. } = self;
        loaded(sql, state)?;
        let rows = sql.exec(schema::NEWEST_FOLDED, &[])?.rows;
        Ok(first(&rows)
            .and_then(Value::as_i64)
            .map(|newest| newest.max(0) as u64 + WINDOW_MS + 1))
    }

    /// The shard's totals, folded and pending, and its allowlists.
    pub fn read(&mut self) -> Result<(Vec<Allowlist>, Aggregate), ShardError> {
        let Shard { sql, state, .. } = self;
        let state = loaded(sql, state)?;
        let mut totals = state.totals.clone();
        for row in sql.exec(schema::SELECT_PENDING, &[])?.rows {
            let entries = records_of(&row)?;
            for bytes in entries.pushes.into_iter().chain(entries.own) {
                let record = state.decode(bytes)?;
                // A record that would overflow stays pending, outside the totals.
                let _ = totals.try_merge(&record.delta);
            }
        }
        let fingerprints: Vec<u64> = state.allowlists.keys().copied().collect();
        let mut allowlists = Vec::with_capacity(fingerprints.len());
        for f in fingerprints {
            allowlists.push(state.allowlist(f)?.clone());
        }
        Ok((allowlists, totals))
    }

    /// What the shard publishes to Workers KV: its folded totals and its allowlists
    /// ([`publish::publication`]).
    pub fn publication(&mut self) -> Result<String, ShardError> {
        let Shard { sql, state, .. } = self;
        let state = loaded(sql, state)?;
        let descriptions = state.allowlists.values().map(|d| d.description.as_str());
        Ok(publish::publication(descriptions, &state.totals))
    }

    /// Rows (groups of records) waiting for the next fold.
    pub fn pending(&mut self) -> Result<u64, ShardError> {
        let Shard { sql, state, .. } = self;
        loaded(sql, state)?;
        let rows = sql.exec(schema::COUNT_PENDING, &[])?.rows;
        first(&rows)
            .and_then(Value::as_i64)
            .map(|n| n as u64)
            .ok_or_else(|| ShardError::Corrupt("count(*) answered no number".into()))
    }

    /// Series in the folded totals, once they are loaded.
    pub fn series(&self) -> Option<usize> {
        self.state.as_ref().map(|s| s.totals.len())
    }

    /// The shard's name: the stored one, else `given`, which is then stored (once ever).
    pub fn name(&mut self, given: Option<&str>) -> Result<Option<String>, ShardError> {
        if self.name.is_none() {
            loaded(&self.sql, &mut self.state)?;
            let rows = self.sql.exec(schema::SELECT_NAME, &[])?.rows;
            self.name = match (first(&rows).and_then(Value::as_text), given) {
                (Some(stored), _) => Some(stored.to_owned()),
                (None, Some(given)) => {
                    self.sql.exec(schema::INSERT_NAME, &[Param::Text(given)])?;
                    Some(given.to_owned())
                }
                (None, None) => None,
            };
        }
        Ok(self.name.clone())
    }
}

/// The shard's state, read from storage on first use (creating the tables if needed).
fn loaded<'a, Q: Sql>(sql: &Q, slot: &'a mut Option<State>) -> Result<&'a mut State, ShardError> {
    if slot.is_none() {
        for statement in schema::SCHEMA {
            sql.exec(statement, &[])?;
        }
        let parts = sql.exec(schema::SELECT_TOTALS, &[])?.rows;
        let mut text = String::new();
        for row in &parts {
            text.push_str(row.first().and_then(Value::as_text).unwrap_or(""));
        }
        let mut totals = if text.is_empty() {
            Aggregate::new()
        } else {
            Aggregate::from_json(&text)
                .map_err(|e| ShardError::Corrupt(format!("the totals do not decode: {e}")))?
        };
        migrate_json_pending(sql, &mut totals)?;
        let mut allowlists = BTreeMap::new();
        for row in sql.exec(schema::SELECT_ALLOWLISTS, &[])?.rows {
            let (Some(key), Some(description)) = (
                row.first().and_then(Value::as_text),
                row.get(1).and_then(Value::as_text),
            ) else {
                return Err(ShardError::Corrupt("an allowlists row".into()));
            };
            let fingerprint = u64::from_str_radix(key, 16)
                .map_err(|_| ShardError::Corrupt(format!("allowlist fingerprint {key:?}")))?;
            let described = Described {
                description: description.to_owned(),
                compiled: None,
            };
            allowlists.insert(fingerprint, described);
        }
        *slot = Some(State { totals, allowlists });
    }
    slot.as_mut()
        .ok_or_else(|| ShardError::Corrupt("the state did not load".into()))
}

/// An earlier version stored each push as JSON text in `pending(id, delta)`: fold those into
/// the totals and recreate `pending` for records, in one transaction, so that an upgrade loses
/// nothing acknowledged.
fn migrate_json_pending<Q: Sql>(sql: &Q, totals: &mut Aggregate) -> Result<(), ShardError> {
    let definition = sql.exec(schema::PENDING_DEFINITION, &[])?.rows;
    let old = first(&definition)
        .and_then(Value::as_text)
        .is_some_and(|d| d.contains("delta TEXT"));
    if !old {
        return Ok(());
    }
    sql.transaction(|| {
        for row in sql.exec(schema::SELECT_PENDING_JSON, &[])?.rows {
            let text = row.first().and_then(Value::as_text).unwrap_or("");
            let delta = Aggregate::from_json(text)
                .map_err(|e| ShardError::Corrupt(format!("a JSON pending row: {e}")))?;
            totals
                .try_merge(&delta)
                .map_err(|e| ShardError::Corrupt(format!("a JSON pending row: {e}")))?;
        }
        write_totals(sql, totals)?;
        for statement in schema::RESET_PENDING {
            sql.exec(statement, &[])?;
        }
        Ok(())
    })
}

/// The batch ids of the window, read from storage by the first merge: those folded (at their
/// fold's time) and those pending (at `now_ms`, later than they arrived, so kept longer, never
/// shorter).
fn window<'a, Q: Sql>(
    sql: &Q,
    slot: &'a mut Option<Window>,
    now_ms: u64,
) -> Result<&'a mut Window, ShardError> {
    if slot.is_none() {
        let mut seen = Window::new();
        for row in sql.exec(schema::SELECT_FOLDED, &[])?.rows {
            let at = row.first().and_then(Value::as_i64).unwrap_or(0).max(0) as u64;
            let ids = row.get(1).and_then(Value::as_text).unwrap_or("");
            for id in ids.split('\n').filter(|id| !id.is_empty()) {
                seen.insert(id, at);
            }
        }
        for row in sql.exec(schema::SELECT_PENDING, &[])?.rows {
            for bytes in records_of(&row)?.pushes {
                if let Some(id) = record::peek_batch(bytes)? {
                    seen.insert(id, now_ms);
                }
            }
        }
        *slot = Some(seen);
    }
    slot.as_mut()
        .ok_or_else(|| ShardError::Corrupt("the batch ids did not load".into()))
}

/// The body of the fold's transaction; `ops` are added to the totals if it folds anything.
fn fold_pending<Q: Sql>(
    sql: &Q,
    state: &mut State,
    now_ms: u64,
    ops: Counts,
) -> Result<Folded, ShardError> {
    let rows = sql.exec(schema::SELECT_PENDING, &[])?.rows;
    let mut folded = Folded::default();
    let mut kept = group::Rows::default();
    let mut ids = Vec::new();
    let mut carried = Aggregate::new();
    Operations::add_to(&mut carried, ops);
    for row in &rows {
        let entries = records_of(row)?;
        for bytes in entries.pushes {
            let record = state.decode(bytes)?;
            match state.totals.try_merge(&record.delta) {
                Ok(()) => {
                    folded.pushes += 1;
                    ids.extend(record.batch);
                }
                Err(overflow) => {
                    kept.push(bytes);
                    folded.kept.push(overflow);
                }
            }
        }
        for bytes in entries.own {
            carried.merge(&state.decode(bytes)?.delta);
        }
    }
    let mut written = 0;
    if folded.pushes > 0 {
        // Counts of operations stay far below a total's limit (2^128 millionths); one that
        // would not fit is left out rather than stop every fold.
        let _ = state.totals.try_merge(&carried);
        written += write_totals(sql, &state.totals)?;
        for statement in schema::RESET_PENDING {
            written += sql.exec(statement, &[])?.written;
        }
        for row in kept.rows() {
            written += sql
                .exec(schema::INSERT_PENDING, &[Param::Blob(row)])?
                .written;
        }
        let at = Param::Integer(now_ms as i64);
        for text in schema::join_ids(ids.iter().map(String::as_str), CHUNK_BYTES) {
            written += sql
                .exec(schema::INSERT_FOLDED, &[at, Param::Text(&text)])?
                .written;
        }
    }
    let horizon = now_ms.saturating_sub(WINDOW_MS) as i64;
    written += sql
        .exec(schema::SWEEP_FOLDED, &[Param::Integer(horizon)])?
        .written;
    folded.written = written;
    Ok(folded)
}

/// Rewrites the totals: one row per [`CHUNK_BYTES`] of their snapshot. Returns rows written.
fn write_totals<Q: Sql>(sql: &Q, totals: &Aggregate) -> Result<u64, SqlError> {
    let text = totals.to_json();
    let parts = schema::chunks(&text, CHUNK_BYTES);
    let mut written = 0;
    for (i, part) in parts.iter().enumerate() {
        let params = [Param::Integer(i as i64), Param::Text(part)];
        written += sql.exec(schema::UPSERT_TOTALS, &params)?.written;
    }
    let trim = [Param::Integer(parts.len() as i64)];
    written += sql.exec(schema::TRIM_TOTALS, &trim)?.written;
    Ok(written)
}

fn first(rows: &[Vec<Value>]) -> Option<&Value> {
    rows.first().and_then(|r| r.first())
}

/// The records of a row of `pending` ([`group::entries`]).
fn records_of(row: &[Value]) -> Result<group::Entries<'_>, ShardError> {
    row.first()
        .and_then(Value::as_blob)
        .and_then(group::entries)
        .ok_or_else(|| ShardError::Corrupt("a pending row holds no records".into()))
}
