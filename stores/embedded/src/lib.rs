//! The embedded store: standalone mode's durable [`Store`], in one data directory.
//!
//! Why a write-ahead log and not an embedded database: a push is a small delta that is merged
//! into totals held in memory anyway (the collector renders from them on every scrape), so what
//! must be durable is only the sequence of deltas. Appending one framed record per push with a
//! single `write` is the cheapest durable step there is: once `write` returns, the record is in
//! the kernel's page cache and survives `kill -9` of the process; an `fsync` on a timer (default
//! every second) bounds what a power loss can take. An engine with its own transactions would add
//! a second copy of the totals and an fsync or a B-tree update per push for nothing pum needs.
//!
//! Layout of the data directory, one module each:
//! - `wal-<gen>.log` ([`log`]): framed records `[len u32 LE][crc32 u32 LE][payload]`, each
//!   payload one push's delta record as the core defines it ([`pum_shared::record`]: the
//!   allowlist's fingerprint, series by index, fixed-point values, batch id, time).
//! - `allowlist-<fingerprint>.json` ([`allowlists`]): the description of each allowlist records
//!   were written against, written durably before the first of them; the store describes itself
//!   ([`Store::describe`]) and decodes its records with them.
//! - `snapshot.json` ([`snapshot`]): the totals and batch-id window of every record in logs
//!   below its generation.
//! - `LOCK`: held exclusively while a process uses the directory.
//!
//! Opening ([`recover`]) replays the logs since the snapshot. A batch id is applied once within
//! [`pum_shared::batch::WINDOW_MS`] ([`seen`]): the window is rebuilt from the snapshot and the
//! records' ids and times, so a replay is recognised after a restart, even after `kill -9`.
//!
//! Compaction rotates to a new log generation under the lock, then writes the snapshot of the
//! totals and window as of the rotation (taken from memory, less the records not yet written)
//! and deletes the older logs. A crash at any point leaves either the old snapshot and all logs
//! since it, or the new snapshot: opening replays logs with a generation at or above the
//! snapshot's, so nothing is lost or counted twice.

mod allowlists;
mod log;
mod recover;
mod seen;
mod snapshot;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pum_shared::batch::BatchId;
use pum_shared::record::{self, Record};
use pum_shared::{Aggregate, Allowlist, Merged, Push, Read, Store, StoreError, Stored};

use crate::allowlists::Allowlists;
use crate::log::LogFile;
use crate::seen::{Check, Seen};

/// Default interval between `fsync`s of the log: at most this much acknowledged data is at risk
/// from a power loss (none from a process crash).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Log size past which the background task compacts the log into the snapshot: 64 MiB.
pub const COMPACT_AFTER_BYTES: u64 = 64 * 1024 * 1024;

/// The name of the store's one shard in [`Stored::shards`].
const SHARD: &str = "embedded";

/// A spare write buffer larger than this is freed rather than kept for the next batch.
const SPARE_BUFFER_BYTES: usize = 1024 * 1024;

/// Errors opening the data directory. Each says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or a file in it could not be used.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// A log holds a whole record that this version cannot read; refusing to start rather than
    /// cut it off and lose what it holds.
    #[error("{path}: {reason}; it was written by another version of pum, or the file was changed")]
    CorruptLog {
        /// The log file.
        path: PathBuf,
        /// Which record.
        reason: String,
    },
    /// A log holds a record written against an allowlist whose file is missing: the record
    /// cannot be read without it.
    #[error(
        "{log}: the record at byte {at} was written against the allowlist described in {file}, which is missing; restore that file (from a backup of this directory) to start"
    )]
    MissingAllowlist {
        /// The log file.
        log: PathBuf,
        /// The record's offset in the log.
        at: usize,
        /// The allowlist's file.
        file: PathBuf,
    },
    /// A stored allowlist cannot be read; refusing to start rather than misread the records
    /// written against it.
    #[error(
        "{path}: the stored allowlist is unreadable ({reason}); it was written by another version of pum, or the file was changed"
    )]
    CorruptAllowlist {
        /// The allowlist's file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process holds the directory.
    #[error(
        "{0}: another pum process is using this data directory (stop it, or pass another --data-dir)"
    )]
    Locked(PathBuf),
    /// The snapshot cannot be read; refusing to start rather than lose its totals.
    #[error(
        "{path}: the snapshot is unreadable ({reason}); move it aside to start from the logs alone, which loses the totals it held"
    )]
    CorruptSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |error| OpenError::Io {
        path: path.to_owned(),
        error,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Records waiting to be written together (group commit), and what was applied with them.
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    /// The buffer of the last batch written, cleared, to take `buf`'s place.
    spare: Vec<u8>,
    /// The batch the records now in `buf` will be written in.
    open_batch: u64,
    /// Whether a writer is writing batches now.
    flushing: bool,
    /// The batch a writer has taken out of `buf` and not yet written (or, if its write failed,
    /// not yet taken out of memory again), with its records.
    in_flight: Option<(u64, Arc<Vec<u8>>)>,
    /// The batch ids applied, and which are not written yet.
    seen: Seen,
    /// Fingerprints of the allowlists stored durably: a record is queued only once its
    /// allowlist is, so that every log can be read back.
    described: Vec<u64>,
}

/// What queueing a push did.
enum Queued {
    /// Nothing: the push's allowlist is not stored yet.
    Undescribed,
    /// Nothing: its batch id was applied and written.
    Replayed,
    /// Nothing: its batch id was applied, in this batch, not written yet.
    Pending(u64),
    /// Its record is queued in this batch, and its delta merged into memory; the first push to
    /// find no writer under way leads the writing.
    Applied { batch: u64, leader: bool },
}

/// Which batches are written: every batch below `done`, except the `failed` ones.
#[derive(Default)]
struct Commits {
    done: u64,
    /// The most recent failed batches, with why (bounded; a waiter looks right after its batch
    /// is done).
    failed: VecDeque<(u64, String)>,
}

/// The embedded store. See the crate docs for its format and guarantees.
pub struct EmbeddedStore {
    dir: PathBuf,
    /// Locked after `queue` or `log` when they are needed too, never before.
    totals: Mutex<Aggregate>,
    /// Locked after `queue` when both are needed, never before.
    log: Mutex<LogFile>,
    queue: Mutex<Queue>,
    /// Locked last, or alone: nothing else is locked while it is held.
    allowlists: Mutex<Allowlists>,
    commits: tokio::sync::watch::Sender<Commits>,
    /// Set when the log could not be synced or compacted, or a failed write could not be cut
    /// off: what is acknowledged might not be on disk, so pushes are refused (503) until a
    /// compaction writes every total durably again.
    failed: AtomicBool,
    // Held for the life of the store; dropping it releases the directory.
    _lock: File,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir)
            .finish()
    }
}

/// What opening the store found, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Log records replayed.
    pub replayed: u64,
    /// Bytes of a torn last record cut off.
    pub truncated_bytes: u64,
}

fn unavailable(what: &str) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("{what}: {e}"))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, replaying its logs.
    pub fn open(dir: impl Into<PathBuf>) -> Result<(Self, Recovery), OpenError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Locked(dir));
        }
        let found = recover::load(&dir)?;
        let wal_path = log::path(&dir, found.generation);
        let log = log::open(&dir, found.generation).map_err(io_err(&wal_path))?;
        sync_dir(&dir).map_err(io_err(&dir))?;
        let described = found.allowlists.all().iter().map(Allowlist::fingerprint);
        let queue = Queue {
            seen: Seen::new(found.window),
            described: described.collect(),
            ..Queue::default()
        };
        let store = EmbeddedStore {
            dir,
            totals: Mutex::new(found.totals),
            log: Mutex::new(log),
            queue: Mutex::new(queue),
            allowlists: Mutex::new(found.allowlists),
            commits: tokio::sync::watch::Sender::new(Commits::default()),
            failed: AtomicBool::new(false),
            _lock: lock,
        };
        Ok((store, found.recovery))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn locked<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
        m.lock()
            .map_err(|_| StoreError::Unavailable("store lock poisoned".into()))
    }

    /// Stores `allowlist` durably, once per fingerprint, and lets records of it be queued.
    fn describe_now(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        Self::locked(&self.allowlists)?
            .describe(&self.dir, allowlist)
            .map_err(unavailable("storing the allowlist"))?;
        let fingerprint = allowlist.fingerprint();
        let mut q = Self::locked(&self.queue)?;
        if !q.described.contains(&fingerprint) {
            q.described.push(fingerprint);
        }
        Ok(())
    }

    /// Appends one push's record to the log, sharing one `write` with the pushes that arrive
    /// meanwhile (group commit), and merges its delta into the totals; all or nothing, and once
    /// per batch id.
    ///
    /// The delta is merged into memory when its record is queued, so that a caller that stops
    /// waiting (a client that hangs up) leaves memory and log agreeing. The first push to find
    /// no write under way leads: it yields once, so that the pushes already ready to run can
    /// queue their records, then writes every queued record with one `write` and repeats while
    /// records keep arriving. On a machine serving many pushes at once this turns one syscall
    /// per push into one per batch. If a write fails, its records are subtracted from memory
    /// again, their batch ids forgotten, and every push of the batch gets the error.
    ///
    /// A push whose batch id was applied is answered [`Merged::Replayed`] once the record that
    /// applied it is written; if that write fails, it gets the error too (its client retries).
    async fn merge_grouped(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        if self.is_failed() {
            return Err(StoreError::Unavailable(
                "the log could not be made durable; refusing pushes until a compaction writes the store durably again".into(),
            ));
        }
        let (batch, leader) = loop {
            match self.queue_push(push)? {
                Queued::Undescribed => self.describe_now(push.allowlist)?,
                Queued::Replayed => return Ok(Merged::Replayed),
                // Its answer is the original's; then look again, as the original may have been
                // forgotten meanwhile and applied again by a retry.
                Queued::Pending(original) => self.written(original).await?,
                Queued::Applied { batch, leader } => break (batch, leader),
            }
        };
        if leader {
            // Flushes even if this future is dropped while it yields.
            let guard = FlushOnDrop(self);
            tokio::task::yield_now().await;
            drop(guard);
        }
        self.written(batch).await?;
        Ok(Merged::Applied)
    }

    /// Queues the push's record and merges it into memory, unless its batch id was applied
    /// (or its allowlist is not stored yet).
    fn queue_push(&self, push: &Push<'_>) -> Result<Queued, StoreError> {
        thread_local! {
            /// Where a push's record is encoded, outside the queue's lock (which is then held
            /// for a copy, not an encoding); kept for the thread's next push.
            static RECORD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let id = push.batch.map(BatchId::as_str);
        RECORD.with_borrow_mut(|framed| {
            framed.clear();
            if framed.capacity() > SPARE_BUFFER_BYTES {
                framed.shrink_to(SPARE_BUFFER_BYTES);
            }
            let at_secs = push.now_ms / 1000;
            log::frame(framed, |out| {
                record::encode(push.allowlist, id, at_secs, &push.delta, out)
            })
            .map_err(|e| StoreError::Corrupt(format!("the push does not encode: {e}")))?;
            let mut q = Self::locked(&self.queue)?;
            if !q.described.contains(&push.allowlist.fingerprint()) {
                return Ok(Queued::Undescribed);
            }
            if let Some(id) = id {
                match q.seen.check(id) {
                    Check::New => {}
                    Check::Written => return Ok(Queued::Replayed),
                    Check::Pending(original) => return Ok(Queued::Pending(original)),
                }
            }
            // A push that would overflow a total is refused by `apply` before its record is
            // queued: it writes nothing to the log.
            self.apply(&push.delta)?;
            q.buf.extend_from_slice(framed);
            let batch = q.open_batch;
            if let Some(id) = id {
                q.seen.applied(id, push.now_ms, batch);
            }
            let leader = !q.flushing;
            q.flushing = true;
            Ok(Queued::Applied { batch, leader })
        })
    }

    /// Waits until group-commit batch `batch` is written; an error if its write failed.
    async fn written(&self, batch: u64) -> Result<(), StoreError> {
        let mut commits = self.commits.subscribe();
        let failed = match commits.wait_for(|c| c.done > batch).await {
            Ok(c) => c
                .failed
                .iter()
                .find(|(b, _)| *b == batch)
                .map(|(_, why)| why.clone()),
            Err(_) => Some("the store is closed".into()),
        };
        match failed {
            Some(why) => Err(StoreError::Unavailable(format!("writing the log: {why}"))),
            None => Ok(()),
        }
    }

    /// Merges `delta` into the totals, or nothing if a total would overflow.
    fn apply(&self, delta: &Aggregate) -> Result<(), StoreError> {
        Self::locked(&self.totals)?.try_merge(delta)?;
        Ok(())
    }

    /// Writes queued batches until the queue is empty (the leader's loop).
    fn flush_batches(&self) {
        while let Some((records, batch)) = self.take_batch() {
            let failed = self.append(&records, batch).err();
            self.finish_batch(records, batch, failed);
        }
    }

    /// Takes the queued records out of the queue, as the next batch to write; `None` (and no
    /// writer under way) if there are none.
    fn take_batch(&self) -> Option<(Arc<Vec<u8>>, u64)> {
        let mut q = self.queue.lock().ok()?;
        if q.buf.is_empty() {
            q.flushing = false;
            return None;
        }
        let batch = q.open_batch;
        q.open_batch += 1;
        let spare = std::mem::take(&mut q.spare);
        let records = Arc::new(std::mem::replace(&mut q.buf, spare));
        q.in_flight = Some((batch, Arc::clone(&records)));
        Some((records, batch))
    }

    /// Ends the write of a batch: if it `failed`, takes its records out of memory again; then
    /// tells its pushes.
    fn finish_batch(&self, records: Arc<Vec<u8>>, batch: u64, failed: Option<String>) {
        if let Ok(mut q) = self.queue.lock() {
            if failed.is_some() {
                // Undone under the queue's lock, with `in_flight` cleared in the same step, so
                // that compaction sees the batch either in memory and in flight or in neither.
                self.unapply(&records, &mut q.seen);
            }
            q.seen.done(batch);
            q.in_flight = None;
            if let Ok(mut spare) = Arc::try_unwrap(records)
                && spare.capacity() <= SPARE_BUFFER_BYTES
            {
                spare.clear();
                q.spare = spare;
            }
        }
        self.commits.send_modify(|c| {
            c.done = batch + 1;
            if let Some(why) = failed {
                c.failed.push_back((batch, why));
                if c.failed.len() > 4096 {
                    c.failed.pop_front();
                }
            }
        });
    }

    /// Appends whole records to the log, or nothing (and says why).
    fn append(&self, records: &[u8], batch: u64) -> Result<(), String> {
        let Ok(mut log) = self.log.lock() else {
            return Err("store lock poisoned".into());
        };
        log.append(records, batch).map_err(|e| {
            if e.torn {
                // Records appended after the partial one would not replay: refuse pushes until
                // a compaction starts a new log.
                self.failed.store(true, Ordering::Release);
            }
            e.error.to_string()
        })
    }

    /// Decodes records this process queued (every one's allowlist is stored, see
    /// [`Queue::described`]) and hands each to `each`.
    fn decode_own(&self, records: &[u8], mut each: impl FnMut(Record)) {
        let Ok(lists) = self.allowlists.lock() else {
            return;
        };
        for (_, payload) in log::frames(records) {
            let decoded = record::peek_fingerprint(payload)
                .ok()
                .and_then(|fingerprint| lists.get(fingerprint))
                .and_then(|list| record::decode(payload, list).ok());
            if let Some(record) = decoded {
                each(record);
            }
        }
    }

    /// Takes the records of a batch that could not be written out of memory again: their deltas
    /// out of the totals, their batch ids out of `seen`.
    fn unapply(&self, records: &[u8], seen: &mut Seen) {
        let Ok(mut totals) = self.totals.lock() else {
            return;
        };
        self.decode_own(records, |record| {
            totals.subtract(&record.delta);
            if let Some(id) = &record.batch {
                seen.forget(id);
            }
        });
    }

    /// Runs `f` on the current totals without copying them.
    pub fn with_totals<R>(&self, f: impl FnOnce(&Aggregate) -> R) -> Result<R, StoreError> {
        Ok(f(&*Self::locked(&self.totals)?))
    }

    /// Flushes the log to disk (`fsync`). Writers are not blocked while the disk works. A
    /// failure marks the store failed (see [`EmbeddedStore::is_failed`]).
    pub fn sync(&self) -> Result<(), StoreError> {
        let file = Arc::clone(&Self::locked(&self.log)?.file);
        file.sync_data().map_err(|e| {
            self.failed.store(true, Ordering::Release);
            StoreError::Unavailable(format!("syncing the log: {e}"))
        })
    }

    /// Whether the store refuses pushes because the log could not be synced or compacted. A
    /// compaction that succeeds (it writes every total to a new, fsynced snapshot) clears it.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Size of the current log in bytes.
    pub fn log_bytes(&self) -> u64 {
        self.log.lock().map(|l| l.bytes).unwrap_or(0)
    }

    /// Folds the logs into a new snapshot and deletes them. Safe to run while pushes arrive.
    ///
    /// The snapshot is taken from the totals and the batch-id window in memory, not rebuilt from
    /// the files (which would decode every record a second time). Under the queue's lock no
    /// push can be queued or merged into memory, and under the log's lock no batch is being
    /// written; the log is rotated there, so every record written so far is in a log below the
    /// new generation. Memory holds exactly those records plus the ones not written yet (still
    /// queued, or in flight), which will go to the new log: their deltas and batch ids are taken
    /// out of the snapshot.
    ///
    /// A failure marks the store failed; a success clears the mark, since the snapshot then holds
    /// every total durably, whatever became of the logs' unsynced pages.
    pub fn compact(&self) -> Result<(), StoreError> {
        let result = self.compact_once();
        self.failed.store(result.is_err(), Ordering::Release);
        result
    }

    fn compact_once(&self) -> Result<(), StoreError> {
        let (new_gen, mut totals, mut window, unwritten) = {
            let q = Self::locked(&self.queue)?;
            let mut log = Self::locked(&self.log)?;
            let new_gen = log.generation + 1;
            let mut file =
                log::open(&self.dir, new_gen).map_err(unavailable("opening a new log"))?;
            file.written = log.written;
            *log = file;
            let totals = Self::locked(&self.totals)?.clone();
            // Cloning copies its tables: the lock is held for a copy, not a rebuild.
            let window = q.seen.window().clone();
            let mut unwritten = q.buf.clone();
            if let Some((batch, records)) = &q.in_flight
                && log.written != Some(*batch)
            {
                unwritten.extend_from_slice(records);
            }
            (new_gen, totals, window, unwritten)
        };
        // Outside the locks: pushes keep flowing while the disk works. The old logs need no
        // fsync: the snapshot holds all they hold, and is fsynced before they are deleted.
        self.decode_own(&unwritten, |record| {
            totals.subtract(&record.delta);
            if let Some(id) = &record.batch {
                window.remove(id);
            }
        });
        snapshot::write(&self.dir, new_gen, &totals, &window)
            .map_err(unavailable("writing the snapshot"))?;
        let logs = log::list(&self.dir).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        for g in logs.into_iter().filter(|g| *g < new_gen) {
            fs::remove_file(log::path(&self.dir, g))
                .map_err(unavailable("removing a compacted log"))?;
        }
        Ok(())
    }

    /// Flushes and compacts, for a clean shutdown.
    pub fn close(&self) -> Result<(), StoreError> {
        self.sync()?;
        self.compact()
    }
}

/// Makes the leader of a group commit write its batch even if its future is dropped.
struct FlushOnDrop<'a>(&'a EmbeddedStore);

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        self.0.flush_batches();
    }
}

impl Read for EmbeddedStore {
    /// One shard, `embedded`, and every allowlist the store was described with.
    async fn read(&self) -> Result<Stored, StoreError> {
        let allowlists = Self::locked(&self.allowlists)?.all().to_vec();
        let totals = self.with_totals(Aggregate::clone)?;
        Ok(Stored {
            allowlists,
            shards: vec![(SHARD.to_owned(), totals)],
            fold_lag: None,
        })
    }
}

impl Store for EmbeddedStore {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        self.merge_grouped(push).await
    }

    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        self.describe_now(allowlist)
    }

    fn is_failed(&self) -> bool {
        EmbeddedStore::is_failed(self)
    }
}
