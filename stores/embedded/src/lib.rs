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
//! Layout of the data directory:
//! - `wal-<gen>.log`: records `[len u32 LE][crc32 u32 LE][payload]`. A delta record holds one
//!   push in the compact binary encoding of [`encode_delta`], which names its strings by number in
//!   the process's [`Dictionary`]; a strings record ([`encode_strings`]) defines numbers, and is
//!   written in the same `write` ahead of the first record of the file that uses them. (Strings
//!   spelt out in every record made the log larger than the pushes themselves.)
//! - `snapshot.json`: `{"generation": G, "totals": <snapshot>}`: totals of every record in logs with a
//!   generation below `G`. Written to a temporary file, fsynced, then renamed over the old one.
//! - `LOCK`: held exclusively while a process uses the directory.
//!
//! Compaction rotates to a new log generation under the lock, then writes the snapshot of the
//! totals as of the rotation (taken from memory, less the records not yet written) and deletes
//! the older logs. A crash at any point leaves either the old snapshot and all logs since it, or
//! the new snapshot: opening replays logs with a generation at or above the snapshot's, so
//! nothing is lost or counted twice. A torn record at
//! the end of the newest log (a crash mid-`write`) is cut off; it was never acknowledged.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pum_shared::aggregate::Snapshot;
use pum_shared::{Aggregate, SeriesKey, SeriesValue, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Default interval between `fsync`s of the log: at most this much acknowledged data is at risk
/// from a power loss (none from a process crash).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Log size past which the background task compacts the log into the snapshot: 64 MiB.
pub const COMPACT_AFTER_BYTES: u64 = 64 * 1024 * 1024;

/// Largest record accepted on replay (a push is at most 64 KiB of JSON; its delta is smaller).
const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;

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

#[derive(Serialize)]
struct SnapshotOut {
    generation: u64,
    totals: Snapshot,
}

#[derive(Deserialize)]
struct SnapshotIn {
    generation: u64,
    totals: Snapshot,
}

/// The log file being appended to.
struct LogFile {
    /// Shared with [`EmbeddedStore::sync`], which fsyncs it outside the log's lock: a handle of
    /// its own, opened with the file, rather than one duplicated at each sync (under file
    /// descriptor exhaustion the duplicate failed, and acknowledged pushes went unsynced).
    file: Arc<File>,
    generation: u64,
    /// Length of the whole records in the file.
    bytes: u64,
    /// How many dictionary strings the file defines (numbers `0..defined`).
    defined: usize,
    /// The last batch of the group commit written (to this file or an earlier one).
    written: Option<u64>,
}

/// Records waiting to be written together (group commit).
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    /// Dictionary strings the records in `buf` use (numbers below this).
    strings: usize,
    /// The batch the records now in `buf` will be written in.
    open_batch: u64,
    /// Whether a writer is writing batches now.
    flushing: bool,
    /// The batch a writer has taken out of `buf` and not yet written (or, if its write failed,
    /// not yet taken out of memory again), with its records.
    in_flight: Option<(u64, Arc<Vec<u8>>)>,
}

/// Which batches are written: every batch below `done`, except the `failed` ones.
#[derive(Default)]
struct Commits {
    done: u64,
    /// The most recent failed batches (bounded; a waiter looks right after its batch is done).
    failed: std::collections::VecDeque<u64>,
}

/// The embedded store. See the module docs for its format and guarantees.
pub struct EmbeddedStore {
    dir: PathBuf,
    totals: Mutex<Aggregate>,
    log: Mutex<LogFile>,
    queue: Mutex<Queue>,
    /// Locked after `queue` or `log` when both are needed, never before.
    dict: Mutex<Dictionary>,
    commits: tokio::sync::watch::Sender<Commits>,
    /// Set when the log could not be synced or compacted: what is acknowledged might not be on
    /// disk, so pushes are refused (503) until a compaction writes every total durably again.
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

/// Reads the snapshot and replays the logs from its generation on; logs older than the
/// snapshot are deleted, and a torn tail is cut off the newest log. Returns the totals, the
/// newest generation seen and what was replayed.
fn load(dir: &Path) -> Result<(Aggregate, u64, Recovery), OpenError> {
    let snap_path = dir.join("snapshot.json");
    let (mut totals, generation) = match fs::read_to_string(&snap_path) {
        Ok(text) => {
            let corrupt = |reason: String| OpenError::CorruptSnapshot {
                path: snap_path.clone(),
                reason,
            };
            let snap: SnapshotIn =
                serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
            let totals = Aggregate::try_from(snap.totals).map_err(|e| corrupt(e.to_string()))?;
            (totals, snap.generation)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Aggregate::new(), 0),
        Err(e) => return Err(io_err(&snap_path)(e)),
    };
    let mut logs = list_logs(dir)?;
    logs.sort_unstable();
    let mut recovery = Recovery {
        replayed: 0,
        truncated_bytes: 0,
    };
    let newest = logs.last().copied().unwrap_or(generation).max(generation);
    for &g in &logs {
        let path = log_path(dir, g);
        if g < generation {
            // Already folded into the snapshot; a crash stopped its deletion.
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let (records, good_len, file_len) = replay(&path, &mut totals)?;
        recovery.replayed += records;
        if good_len < file_len {
            recovery.truncated_bytes += file_len - good_len;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(good_len).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
    }
    Ok((totals, newest, recovery))
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
        let (totals, newest, recovery) = load(&dir)?;
        let wal_path = log_path(&dir, newest);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)
            .map_err(io_err(&wal_path))?;
        let bytes = file.seek(SeekFrom::End(0)).map_err(io_err(&wal_path))?;
        sync_dir(&dir).map_err(io_err(&dir))?;
        let store = EmbeddedStore {
            dir,
            totals: Mutex::new(totals),
            log: Mutex::new(LogFile {
                file: Arc::new(file),
                generation: newest,
                bytes,
                // This process numbers its strings afresh: its first write defines them again.
                defined: 0,
                written: None,
            }),
            queue: Mutex::new(Queue::default()),
            dict: Mutex::new(Dictionary::new()),
            commits: tokio::sync::watch::Sender::new(Commits::default()),
            failed: AtomicBool::new(false),
            _lock: lock,
        };
        Ok((store, recovery))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn locked<'a, T>(m: &'a Mutex<T>) -> Result<MutexGuard<'a, T>, StoreError> {
        m.lock()
            .map_err(|_| StoreError::Unavailable("store lock poisoned".into()))
    }

    /// Appends whole records to the log, or nothing: a failed write is cut off again. The records
    /// use dictionary strings below `strings`; those the file does not define yet are written
    /// ahead of them, in the same `write`.
    fn append(&self, records: &[u8], strings: usize, batch: u64) -> Result<(), StoreError> {
        let mut log = Self::locked(&self.log)?;
        let mut definitions = Vec::new();
        if log.defined < strings {
            let dict = Self::locked(&self.dict)?;
            let new = &dict.strings()[log.defined..strings];
            frame_into(&mut definitions, |out| {
                encode_strings(log.defined, new, out)
            });
            definitions.extend_from_slice(records);
        }
        let bytes = if definitions.is_empty() {
            records
        } else {
            &definitions
        };
        if let Err(e) = (&*log.file).write_all(bytes) {
            let keep = log.bytes;
            let _ = log.file.set_len(keep);
            return Err(StoreError::Unavailable(format!("writing the log: {e}")));
        }
        log.bytes += bytes.len() as u64;
        log.defined = log.defined.max(strings);
        log.written = Some(batch);
        Ok(())
    }

    /// Frames `delta` as a record at the end of `out`; returns the number of dictionary strings
    /// it may use.
    fn encode(&self, delta: &Aggregate, out: &mut Vec<u8>) -> Result<usize, StoreError> {
        let mut dict = Self::locked(&self.dict)?;
        frame_into(out, |out| encode_delta(delta, &mut dict, out));
        Ok(dict.len())
    }

    /// Merges `delta` into the totals, or nothing if a total would overflow.
    fn apply(&self, delta: &Aggregate) -> Result<(), StoreError> {
        Self::locked(&self.totals)?.try_merge(delta)?;
        Ok(())
    }

    /// [`EmbeddedStore::merge_grouped`] outside an async runtime, for tests.
    #[cfg(test)]
    pub fn merge_sync(&self, delta: &Aggregate) -> Result<(), StoreError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .block_on(self.merge_grouped(delta))
    }

    /// Appends one delta to the log, sharing one `write` with the pushes that arrive meanwhile
    /// (group commit), and merges it into the totals; all or nothing.
    ///
    /// The delta is merged into memory when its record is queued, so that a caller that stops
    /// waiting (a client that hangs up) leaves memory and log agreeing. The first push to find
    /// no write under way leads: it yields once, so that the pushes already ready to run can
    /// queue their records, then writes every queued record with one `write` and repeats while
    /// records keep arriving. On a machine serving many pushes at once this turns one syscall
    /// per push into one per batch. If a write fails, its records are subtracted from memory
    /// again and every push of the batch gets the error.
    pub async fn merge_grouped(&self, delta: &Aggregate) -> Result<(), StoreError> {
        if self.is_failed() {
            return Err(StoreError::Unavailable(
                "the log could not be synced; refusing pushes until the store is written durably again".into(),
            ));
        }
        let (batch, leader) = {
            let mut q = Self::locked(&self.queue)?;
            // A push that would overflow a total is refused by `apply`, and its record taken off
            // the queue again before the queue's lock is released: it writes nothing to the log.
            let keep = q.buf.len();
            match self.encode(delta, &mut q.buf) {
                Ok(strings) => q.strings = strings,
                Err(e) => {
                    q.buf.truncate(keep);
                    return Err(e);
                }
            }
            if let Err(e) = self.apply(delta) {
                q.buf.truncate(keep);
                return Err(e);
            }
            let leader = !q.flushing;
            q.flushing = true;
            (q.open_batch, leader)
        };
        if leader {
            // Flushes even if this future is dropped while it yields.
            let guard = FlushOnDrop(self);
            tokio::task::yield_now().await;
            drop(guard);
        }
        let mut commits = self.commits.subscribe();
        let failed = commits
            .wait_for(|c| c.done > batch)
            .await
            .map(|c| c.failed.contains(&batch))
            .unwrap_or(true);
        if failed {
            return Err(StoreError::Unavailable("writing the log failed".into()));
        }
        Ok(())
    }

    /// Writes queued batches until the queue is empty (the leader's loop).
    fn flush_batches(&self) {
        loop {
            let (buf, strings, batch) = {
                let Ok(mut q) = self.queue.lock() else { return };
                if q.buf.is_empty() {
                    q.flushing = false;
                    return;
                }
                let batch = q.open_batch;
                q.open_batch += 1;
                let buf = Arc::new(std::mem::take(&mut q.buf));
                q.in_flight = Some((batch, Arc::clone(&buf)));
                (buf, q.strings, batch)
            };
            let ok = self.append(&buf, strings, batch).is_ok();
            if let Ok(mut q) = self.queue.lock() {
                if !ok {
                    // Undone under the queue's lock, with `in_flight` cleared in the same step,
                    // so that compaction sees the batch either in memory and in flight or in
                    // neither.
                    self.unapply(&buf);
                }
                q.in_flight = None;
            }
            self.commits.send_modify(|c| {
                c.done = batch + 1;
                if !ok {
                    c.failed.push_back(batch);
                    if c.failed.len() > 4096 {
                        c.failed.pop_front();
                    }
                }
            });
        }
    }

    /// Decodes records this process encoded (queued or in flight) into one aggregate.
    fn decode_own(&self, records: &[u8]) -> Aggregate {
        let mut pending = Aggregate::new();
        if let Ok(mut strings) = self.dict.lock().map(|d| d.strings().to_vec()) {
            // These records were encoded by this process with this dictionary: they decode.
            let _ = replay_bytes(records, &mut strings, &mut pending);
        }
        pending
    }

    /// Subtracts the deltas of records that could not be written.
    fn unapply(&self, records: &[u8]) {
        let pending = self.decode_own(records);
        if let Ok(mut mine) = self.totals.lock() {
            mine.subtract(&pending);
        }
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
    /// The snapshot is taken from the totals in memory, not rebuilt from the files (which would
    /// decode every record a second time). Under the queue's lock no push can be queued or
    /// merged into memory, and under the log's lock no batch is being written; the log is rotated
    /// there, so every record written so far is in a log below the new generation. Memory holds
    /// exactly those records plus the ones not written yet (still queued, or in flight), which
    /// will go to the new log: they are taken out of the snapshot.
    ///
    /// A failure marks the store failed; a success clears the mark, since the snapshot then holds
    /// every total durably, whatever became of the logs' unsynced pages.
    pub fn compact(&self) -> Result<(), StoreError> {
        let result = self.compact_once();
        self.failed.store(result.is_err(), Ordering::Release);
        result
    }

    fn compact_once(&self) -> Result<(), StoreError> {
        let unavailable =
            |what: &str, e: io::Error| StoreError::Unavailable(format!("{what}: {e}"));
        let (new_gen, totals) = {
            let q = Self::locked(&self.queue)?;
            let mut log = Self::locked(&self.log)?;
            let new_gen = log.generation + 1;
            let path = log_path(&self.dir, new_gen);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| unavailable("opening a new log", e))?;
            let written = log.written;
            *log = LogFile {
                file: Arc::new(file),
                generation: new_gen,
                bytes: 0,
                defined: 0,
                written,
            };
            let mut totals = Self::locked(&self.totals)?.clone();
            let mut unwritten = q.buf.clone();
            if let Some((batch, records)) = &q.in_flight
                && written != Some(*batch)
            {
                unwritten.extend_from_slice(records);
            }
            if !unwritten.is_empty() {
                totals.subtract(&self.decode_own(&unwritten));
            }
            (new_gen, totals)
        };
        // Outside the locks: pushes keep flowing while the disk works. The old logs need no
        // fsync: the snapshot holds all they hold, and is fsynced before they are deleted.
        let text = serde_json::to_string(&SnapshotOut {
            generation: new_gen,
            totals: Snapshot::from(&totals),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let tmp = self.dir.join("snapshot.json.tmp");
        let mut f = File::create(&tmp).map_err(|e| unavailable("writing the snapshot", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| unavailable("writing the snapshot", e))?;
        fs::rename(&tmp, self.dir.join("snapshot.json"))
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| unavailable("replacing the snapshot", e))?;
        let logs = list_logs(&self.dir).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        for g in logs.into_iter().filter(|g| *g < new_gen) {
            fs::remove_file(log_path(&self.dir, g))
                .map_err(|e| unavailable("removing a compacted log", e))?;
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

impl Store for EmbeddedStore {
    async fn merge(&self, _batch_id: &str, delta: &Aggregate) -> Result<(), StoreError> {
        self.merge_grouped(delta).await
    }

    async fn snapshot(&self) -> Result<Aggregate, StoreError> {
        self.with_totals(Aggregate::clone)
    }
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation:020}.log"))
}

fn list_logs(dir: &Path) -> Result<Vec<u64>, OpenError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            out.push(g);
        }
    }
    Ok(out)
}

/// Replays one log into `totals`: returns (records, length of the whole records, file length).
fn replay(path: &Path, totals: &mut Aggregate) -> Result<(u64, u64, u64), OpenError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let (records, good) =
        replay_bytes(&bytes, &mut Vec::new(), totals).map_err(|reason| OpenError::CorruptLog {
            path: path.to_owned(),
            reason,
        })?;
    Ok((records, good as u64, bytes.len() as u64))
}

/// Merges the delta records among the whole records at the start of `bytes` into `totals`,
/// reading strings records into `strings`; returns how many deltas there were and the length the
/// whole records take. Stops at the first torn record (short, or failing its CRC): a crash cut it
/// mid-write, so it was never acknowledged. A whole record that does not decode is an error:
/// cutting it off would lose acknowledged data.
fn replay_bytes(
    bytes: &[u8],
    strings: &mut Vec<Arc<str>>,
    totals: &mut Aggregate,
) -> Result<(u64, usize), String> {
    let mut pos = 0usize;
    let mut records = 0u64;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_BYTES {
            break;
        }
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len as usize) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let unreadable =
            || format!("the record at byte {pos} is not one this version of pum reads");
        match payload.first() {
            Some(&RECORD_STRINGS) => decode_strings(payload, strings).ok_or_else(unreadable)?,
            _ => {
                totals.merge(&decode_delta(payload, strings).ok_or_else(unreadable)?);
                records += 1;
            }
        }
        pos += 8 + len as usize;
    }
    Ok((records, pos))
}

/// First byte of a record that defines dictionary strings.
const RECORD_STRINGS: u8 = 2;
/// First byte of a record that holds one push's delta.
const RECORD_DELTA: u8 = 3;

/// Largest number of histogram buckets a record may carry.
const MAX_BUCKETS: u64 = u16::MAX as u64;

/// The strings records name by number: metric names, label names and label values.
///
/// A push repeats the same few dozen strings (they come from the allowlist), so a record names
/// each by its number in this dictionary rather than spelling it out: that makes a record about a
/// tenth of the size of one with inline strings, and replaying it allocates no string. Numbers
/// are given out once per process and never change; each log file holds the definitions its
/// records use, written ahead of them (see [`EmbeddedStore`]), so every file can be read alone.
#[derive(Debug, Default)]
pub struct Dictionary {
    ids: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    /// The number of each string by the address of the `Arc` it was first given as. The ingest
    /// hands out the allowlist's shared strings, so almost every lookup is found here without
    /// hashing the string. An address cannot be reused while `strings` holds its `Arc`.
    by_address: HashMap<usize, u32, foldhash::fast::RandomState>,
    /// The bytes naming the series encoded lately (see [`Dictionary::series_name`]).
    named: Named,
    strings: Vec<Arc<str>>,
}

/// The numbers naming one series in a record; a series with a label or two fits inline.
type SeriesName = smallvec::SmallVec<[u8; 8]>;

/// A direct-mapped cache of series names, by the key's hash.
#[derive(Debug)]
struct Named(Vec<Option<(SeriesKey, SeriesName)>>);

/// Slots of [`Named`].
const NAMED: usize = 1024;

impl Default for Named {
    fn default() -> Self {
        Named(vec![None; NAMED])
    }
}

impl Named {
    fn slot(&self, key: &SeriesKey) -> usize {
        let hash = std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), key);
        (hash % NAMED as u64) as usize
    }
}

impl Dictionary {
    /// An empty dictionary.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of `s`, given out now if `s` is new.
    fn id(&mut self, s: &Arc<str>) -> u32 {
        let address = Arc::as_ptr(s).cast::<u8>() as usize;
        if let Some(id) = self.by_address.get(&address) {
            return *id;
        }
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(Arc::clone(s));
        self.ids.insert(Arc::clone(s), id);
        self.by_address.insert(address, id);
        id
    }

    /// The bytes that name `key` in a record: the numbers of its metric, its label count and its
    /// labels' names and values. A push names the series of the pushes before it, so these are
    /// kept for the series named lately (by content: a number never changes once given).
    fn series_name(&mut self, key: &SeriesKey) -> &[u8] {
        let slot = self.named.slot(key);
        let hit = matches!(&self.named.0[slot], Some((named, _)) if named == key);
        if !hit {
            let mut name = Vec::with_capacity(8);
            put_varint(&mut name, self.id(key.metric()).into());
            put_varint(&mut name, key.labels().len() as u128);
            for (k, v) in key.labels() {
                put_varint(&mut name, self.id(k).into());
                put_varint(&mut name, self.id(v).into());
            }
            self.named.0[slot] = Some((key.clone(), SeriesName::from_vec(name)));
        }
        match &self.named.0[slot] {
            Some((_, name)) => name,
            None => &[],
        }
    }

    /// Number of strings defined so far.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether no string is defined yet.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// The strings, by number.
    pub fn strings(&self) -> &[Arc<str>] {
        &self.strings
    }
}

#[inline]
fn put_varint(out: &mut Vec<u8>, n: u128) {
    // Most numbers (string numbers, counts, bucket indexes) are below 128, which LEB128 writes
    // as the number itself in one byte.
    if n < 0x80 {
        out.push(n as u8);
    } else {
        put_long_varint(out, n);
    }
}

#[inline(never)]
fn put_long_varint(out: &mut Vec<u8>, n: u128) {
    // Most of the rest fit 64 bits, whose encoder is cheaper; the bytes are the same.
    match u64::try_from(n) {
        Ok(n) => out.extend_from_slice(unsigned_varint::encode::u64(
            n,
            &mut unsigned_varint::encode::u64_buffer(),
        )),
        Err(_) => out.extend_from_slice(unsigned_varint::encode::u128(
            n,
            &mut unsigned_varint::encode::u128_buffer(),
        )),
    }
}

/// Frames `payload` (written by `write`) as a record `[len u32 LE][crc32 u32 LE][payload]` at
/// the end of `out`.
fn frame_into(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    write(out);
    let len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes the definitions of dictionary strings `first..first + strings.len()`: the record
/// byte, the first number and the count, then each string's length and bytes.
pub fn encode_strings(first: usize, strings: &[Arc<str>], out: &mut Vec<u8>) {
    out.push(RECORD_STRINGS);
    put_varint(out, first as u128);
    put_varint(out, strings.len() as u128);
    for s in strings {
        put_varint(out, s.len() as u128);
        out.extend_from_slice(s.as_bytes());
    }
}

/// Encodes a delta compactly: the record byte, then per series the dictionary numbers of its
/// metric and labels and its value (`0` + total for a counter; `1` + bucket count + the non-zero
/// buckets as (index, count) + sum for a histogram); every number a LEB128 varint.
pub fn encode_delta(delta: &Aggregate, dict: &mut Dictionary, out: &mut Vec<u8>) {
    // Room for a typical series, so the buffer grows once per record rather than per number.
    out.reserve(16 * delta.len() + 1);
    out.push(RECORD_DELTA);
    for (key, value) in delta.iter_unordered() {
        out.extend_from_slice(dict.series_name(key));
        match value {
            SeriesValue::Counter { micros } => {
                out.push(0);
                put_varint(out, *micros);
            }
            SeriesValue::Histogram {
                buckets,
                sum_micros,
            } => {
                out.push(1);
                let buckets = &buckets[..buckets.len().min(MAX_BUCKETS as usize)];
                put_varint(out, buckets.len() as u128);
                put_varint(out, buckets.iter().filter(|b| **b > 0).count() as u128);
                for (i, b) in buckets.iter().enumerate().filter(|(_, b)| **b > 0) {
                    put_varint(out, i as u128);
                    put_varint(out, (*b).into());
                }
                put_varint(out, *sum_micros);
            }
        }
    }
}

/// Reads the numbers and strings of a record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (head, tail) = self.0.split_first()?;
        self.0 = tail;
        Some(*head)
    }

    fn u128(&mut self) -> Option<u128> {
        let (n, rest) = unsigned_varint::decode::u128(self.0).ok()?;
        self.0 = rest;
        Some(n)
    }

    fn u64(&mut self) -> Option<u64> {
        let (n, rest) = unsigned_varint::decode::u64(self.0).ok()?;
        self.0 = rest;
        Some(n)
    }

    fn index(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    fn string_ref(&mut self, strings: &[Arc<str>]) -> Option<Arc<str>> {
        strings.get(self.index()?).cloned()
    }

    fn string(&mut self) -> Option<Arc<str>> {
        let n = self.index()?;
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        std::str::from_utf8(head).ok().map(Arc::from)
    }
}

/// Decodes [`encode_delta`]'s output, naming strings from `strings` (a dictionary's strings);
/// `None` if it is not a well-formed delta record.
pub fn decode_delta(bytes: &[u8], strings: &[Arc<str>]) -> Option<Aggregate> {
    let mut r = Reader(bytes);
    if r.u8()? != RECORD_DELTA {
        return None;
    }
    let mut delta = Aggregate::new();
    while !r.0.is_empty() {
        let metric = r.string_ref(strings)?;
        let n = r.index()?;
        let mut labels = smallvec::SmallVec::with_capacity(n.min(16));
        for _ in 0..n {
            labels.push((r.string_ref(strings)?, r.string_ref(strings)?));
        }
        let value = match r.u8()? {
            0 => SeriesValue::Counter { micros: r.u128()? },
            1 => {
                let len = r.u64().filter(|n| *n <= MAX_BUCKETS)? as usize;
                let mut buckets = vec![0; len];
                for _ in 0..r.index()? {
                    let i = r.index()?;
                    *buckets.get_mut(i)? = r.u64()?;
                }
                SeriesValue::Histogram {
                    buckets,
                    sum_micros: r.u128()?,
                }
            }
            _ => return None,
        };
        delta.add_value(SeriesKey::from_parts(metric, labels), value);
    }
    Some(delta)
}

/// Applies a strings record to the dictionary `strings` of the file being read. A record may
/// start below the end (a new process numbers from 0 again), never above it.
fn decode_strings(bytes: &[u8], strings: &mut Vec<Arc<str>>) -> Option<()> {
    let mut r = Reader(bytes);
    if r.u8()? != RECORD_STRINGS {
        return None;
    }
    let first = r.index().filter(|f| *f <= strings.len())?;
    let count = r.index()?;
    strings.truncate(first);
    for _ in 0..count {
        strings.push(r.string()?);
    }
    r.0.is_empty().then_some(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(n: u128) -> Aggregate {
        let mut a = Aggregate::new();
        a.add_counter(SeriesKey::new("t_total", &[]), n);
        a
    }

    fn total(store: &EmbeddedStore) -> u128 {
        store
            .with_totals(|t| match t.get(&SeriesKey::new("t_total", &[])) {
                Some(SeriesValue::Counter { micros }) => *micros,
                _ => 0,
            })
            .expect("totals")
    }

    #[test]
    fn the_dictionary_numbers_strings_by_content_whatever_their_arc() {
        let mut dict = Dictionary::new();
        let kept: Vec<Arc<str>> = (0..600).map(|i| Arc::from(format!("s{i}"))).collect();
        let ids: Vec<u32> = kept.iter().map(|s| dict.id(s)).collect();
        assert_eq!(ids, (0..600).collect::<Vec<u32>>());
        for round in 0..3 {
            for (i, s) in kept.iter().enumerate() {
                // The same `Arc` (found by address), and a copy made and freed right away, whose
                // address the next copy may reuse for another string.
                assert_eq!(dict.id(s), i as u32, "round {round}");
                let copy: Arc<str> = Arc::from(&**s);
                assert_eq!(dict.id(&copy), i as u32, "round {round}");
            }
        }
        assert_eq!(dict.len(), 600);
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let mut d = pum_shared::conformance::delta(3);
        d.add_counter(SeriesKey::new("c", &[("k", "ü\"v")]), u128::MAX);
        d.add_value(
            SeriesKey::new("h", &[]),
            SeriesValue::Histogram {
                buckets: vec![0, 7, 0, u64::MAX],
                sum_micros: 1,
            },
        );
        let mut dict = Dictionary::new();
        let mut bytes = Vec::new();
        encode_delta(&d, &mut dict, &mut bytes);
        assert_eq!(decode_delta(&bytes, dict.strings()).as_ref(), Some(&d));
        // The strings travel in their own record, which a fresh reader can load.
        let mut defs = Vec::new();
        encode_strings(0, dict.strings(), &mut defs);
        let mut strings = Vec::new();
        assert_eq!(decode_strings(&defs, &mut strings), Some(()));
        assert_eq!(strings, dict.strings());
        assert_eq!(decode_delta(&bytes, &strings).as_ref(), Some(&d));
        // A second delta reuses the numbers: no new strings, and the same bytes whether its keys
        // are the same keys or copies of them.
        let before = dict.len();
        let mut again = Vec::new();
        encode_delta(&d, &mut dict, &mut again);
        assert_eq!(dict.len(), before);
        assert_eq!(again, bytes);
        let mut copied = Aggregate::new();
        for (key, value) in d.iter_unordered() {
            let labels: Vec<(&str, &str)> =
                key.labels().iter().map(|(k, v)| (&**k, &**v)).collect();
            copied.add_value(SeriesKey::new(&**key.metric(), &labels), value.clone());
        }
        let mut from_copies = Vec::new();
        encode_delta(&copied, &mut dict, &mut from_copies);
        assert_eq!(
            decode_delta(&from_copies, dict.strings()).as_ref(),
            Some(&d)
        );
        for cut in 0..bytes.len() {
            // A cut record decodes to nothing, or (cut between two series) to fewer series; the
            // frame's length and CRC keep such a record from being replayed.
            if let Some(partial) = decode_delta(&bytes[..cut], &strings) {
                assert!(partial.len() < d.len(), "cut at {cut}");
            }
        }
        // Unknown record byte, a number with no string, a strings record past the end.
        assert_eq!(decode_delta(&[1], &strings), None);
        assert_eq!(decode_delta(&[RECORD_DELTA, 200, 1], &strings), None);
        assert_eq!(decode_strings(&[RECORD_STRINGS, 99, 0], &mut strings), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn compaction_while_pushes_arrive_loses_and_doubles_nothing() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
        let s = Arc::new(s);
        let stop = Arc::new(AtomicBool::new(false));
        let compactor = std::thread::spawn({
            let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
            move || {
                let mut runs = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.compact().expect("compact");
                    runs += 1;
                }
                runs
            }
        });
        let pushers: Vec<_> = (0..16)
            .map(|_| {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    for _ in 0..300 {
                        s.merge_grouped(&delta(1)).await.expect("merge");
                    }
                })
            })
            .collect();
        for p in pushers {
            p.await.expect("pusher");
        }
        stop.store(true, Ordering::Relaxed);
        let runs = compactor.join().expect("compactor");
        assert!(runs > 1, "compaction ran {runs} times");
        assert_eq!(total(&s), 4800);
        drop(s);
        let (s, _) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            total(&s),
            4800,
            "after {runs} compactions during the pushes"
        );
    }

    #[tokio::test]
    async fn a_failed_write_is_undone_and_the_next_one_defines_its_strings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
        // A read-only handle makes every write of the log fail.
        let read_only = Arc::new(File::open(log_path(dir.path(), 0)).expect("log"));
        let writable = std::mem::replace(&mut s.log.lock().expect("lock").file, read_only);
        assert!(s.merge_grouped(&delta(5)).await.is_err());
        assert_eq!(total(&s), 0, "the failed push is taken out of memory again");
        s.log.lock().expect("lock").file = writable;
        // The failed write took the definition of the push's strings with it: this one must
        // write it again, or the log would not replay.
        s.merge_grouped(&delta(7)).await.expect("merge");
        assert_eq!(total(&s), 7);
        drop(s);
        let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(rec.replayed, 1);
        assert_eq!(total(&s), 7);
    }

    #[tokio::test]
    async fn a_log_that_cannot_be_synced_refuses_pushes_until_a_compaction_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        // fsync of /dev/null fails (EINVAL): a log whose sync fails, without mocks.
        std::os::unix::fs::symlink("/dev/null", log_path(dir.path(), 0)).expect("symlink");
        // A directory where the snapshot's temporary file goes makes compaction fail too.
        fs::create_dir(dir.path().join("snapshot.json.tmp")).expect("blocker");
        let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
        s.merge_grouped(&delta(5))
            .await
            .expect("merge before the failure is seen");
        assert!(s.sync().is_err());
        assert!(s.is_failed());
        assert!(s.merge_grouped(&delta(7)).await.is_err());
        assert_eq!(total(&s), 5, "a refused push changes nothing");
        assert!(s.compact().is_err());
        assert!(s.is_failed(), "a failed compaction keeps the store failed");
        assert!(s.merge_grouped(&delta(7)).await.is_err());
        fs::remove_dir(dir.path().join("snapshot.json.tmp")).expect("unblock");
        s.compact().expect("compaction writes every total durably");
        assert!(!s.is_failed());
        s.merge_grouped(&delta(9))
            .await
            .expect("merge after recovery");
        s.close().expect("close");
        drop(s);
        let (s, _) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            total(&s),
            14,
            "acknowledged pushes kept, refused ones absent"
        );
    }

    #[test]
    fn a_push_that_would_overflow_a_total_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
        s.merge_sync(&delta(u128::MAX - 1)).expect("merge");
        let written = s.log_bytes();
        let err = s.merge_sync(&delta(2)).expect_err("overflows");
        assert!(matches!(err, StoreError::Overflow(_)), "{err}");
        assert_eq!(s.log_bytes(), written, "nothing of it reaches the log");
        assert_eq!(total(&s), u128::MAX - 1);
        s.merge_sync(&delta(1)).expect("what fits is taken");
        drop(s);
        let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(rec.replayed, 2);
        assert_eq!(total(&s), u128::MAX);
    }

    #[test]
    fn a_whole_record_that_does_not_decode_stops_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
            s.merge_sync(&delta(5)).expect("merge");
        }
        // A well-framed record naming a string no strings record defined.
        let mut record = Vec::new();
        frame_into(&mut record, |out| {
            out.extend_from_slice(&[RECORD_DELTA, 90, 0, 0, 1])
        });
        let log = log_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&log).expect("log");
        f.write_all(&record).expect("write");
        drop(f);
        let err = EmbeddedStore::open(dir.path()).expect_err("refuses");
        assert!(matches!(err, OpenError::CorruptLog { .. }), "{err}");
        assert!(err.to_string().contains("wal-"), "{err}");
    }

    #[test]
    fn each_process_and_each_log_defines_its_strings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = |n: u128| {
            let mut a = Aggregate::new();
            a.add_counter(SeriesKey::new("o_total", &[("k", "v")]), n);
            a
        };
        for round in 0..3u128 {
            let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
            // Each process numbers from 0 in its own order; replay must not mix them up.
            if round % 2 == 0 {
                s.merge_sync(&delta(1)).expect("merge");
                s.merge_sync(&other(10)).expect("merge");
            } else {
                s.merge_sync(&other(10)).expect("merge");
                s.merge_sync(&delta(1)).expect("merge");
            }
            if round == 1 {
                s.compact().expect("compact");
                s.merge_sync(&other(10)).expect("merge");
            }
        }
        let (s, _) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(total(&s), 3);
        let o = s
            .with_totals(|t| t.get(&SeriesKey::new("o_total", &[("k", "v")])).cloned())
            .expect("totals");
        assert_eq!(o, Some(SeriesValue::Counter { micros: 40 }));
    }

    #[test]
    fn torn_tail_is_cut_and_later_records_follow_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
            s.merge_sync(&delta(5)).expect("merge");
            s.merge_sync(&delta(7)).expect("merge");
        }
        // Simulate a crash in the middle of a third write.
        let log = log_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&log).expect("log");
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).expect("write");
        drop(f);
        let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            rec,
            Recovery {
                replayed: 2,
                truncated_bytes: 7
            }
        );
        assert_eq!(total(&s), 12);
        s.merge_sync(&delta(1)).expect("merge");
        drop(s);
        let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(rec.replayed, 3);
        assert_eq!(total(&s), 13);
    }

    #[test]
    fn compaction_keeps_totals_and_drops_old_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
        for i in 0..10 {
            s.merge_sync(&delta(i)).expect("merge");
        }
        s.compact().expect("compact");
        s.merge_sync(&delta(100)).expect("merge");
        assert_eq!(list_logs(dir.path()).expect("list"), vec![1]);
        drop(s);
        let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            rec.replayed, 1,
            "only the record after the snapshot is replayed"
        );
        assert_eq!(total(&s), 145);
    }

    #[test]
    fn a_stale_log_left_by_a_crashed_compaction_is_not_counted_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = EmbeddedStore::open(dir.path()).expect("open");
        s.merge_sync(&delta(3)).expect("merge");
        let old = fs::read(log_path(dir.path(), 0)).expect("read");
        s.compact().expect("compact");
        drop(s);
        // The crash came after the snapshot was renamed, before the old log was deleted.
        fs::write(log_path(dir.path(), 0), old).expect("restore");
        let (s, _) = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(total(&s), 3);
        assert_eq!(list_logs(dir.path()).expect("list"), vec![1]);
    }

    #[test]
    fn a_second_process_cannot_open_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_s, _) = EmbeddedStore::open(dir.path()).expect("open");
        assert!(matches!(
            EmbeddedStore::open(dir.path()),
            Err(OpenError::Locked(_))
        ));
    }

    #[test]
    fn a_corrupt_snapshot_stops_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("snapshot.json"), "{not json").expect("write");
        let err = EmbeddedStore::open(dir.path()).expect_err("refuses");
        assert!(err.to_string().contains("snapshot.json"), "{err}");
    }
}
