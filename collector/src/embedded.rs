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
//! - `wal-<gen>.log`: records `[len u32 LE][crc32 u32 LE][delta]`, one per push, the delta in
//!   the compact binary encoding of [`encode_delta`] (a JSON encoding cost more CPU than the rest
//!   of the store together).
//! - `snapshot.json`: `{"gen": G, "totals": <snapshot>}`: totals of every record in logs with a
//!   generation below `G`. Written to a temporary file, fsynced, then renamed over the old one.
//! - `LOCK`: held exclusively while a process uses the directory.
//!
//! Compaction rotates to a new log generation under the lock, then writes the snapshot of the
//! totals as of the rotation and deletes the older logs. A crash at any point leaves either the
//! old snapshot and all logs since it, or the new snapshot: opening replays logs with a
//! generation at or above the snapshot's, so nothing is lost or counted twice. A torn record at
//! the end of the newest log (a crash mid-`write`) is cut off; it was never acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
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
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
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
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
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
    file: File,
    generation: u64,
    /// Length of the whole records in the file.
    bytes: u64,
}

/// Records waiting to be written together (group commit).
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    /// The batch the records now in `buf` will be written in.
    open_batch: u64,
    /// Whether a writer is writing batches now.
    flushing: bool,
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
    commits: tokio::sync::watch::Sender<Commits>,
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

/// Reads the snapshot and replays the logs from its generation up to (not including)
/// `below`, or all of them; logs older than the snapshot are deleted, and a torn tail is cut
/// off the newest log. Returns the totals, the newest generation seen and what was replayed.
fn load(dir: &Path, below: Option<u64>) -> Result<(Aggregate, u64, Recovery), OpenError> {
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
        if below.is_some_and(|b| g >= b) {
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

/// A record: `[len u32 LE][crc32 u32 LE][delta]`.
fn frame(delta: &Aggregate) -> Vec<u8> {
    let mut frame = Vec::with_capacity(2048);
    frame.extend_from_slice(&[0; 8]);
    encode_delta(delta, &mut frame);
    let len = (frame.len() - 8) as u32;
    let crc = crc32fast::hash(&frame[8..]);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
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
        let (totals, newest, recovery) = load(&dir, None)?;
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
                file,
                generation: newest,
                bytes,
            }),
            queue: Mutex::new(Queue::default()),
            commits: tokio::sync::watch::Sender::new(Commits::default()),
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

    /// Appends whole records to the log, or nothing: a failed write is cut off again.
    fn append(&self, records: &[u8]) -> Result<(), StoreError> {
        let mut log = Self::locked(&self.log)?;
        if let Err(e) = log.file.write_all(records) {
            let keep = log.bytes;
            let _ = log.file.set_len(keep);
            return Err(StoreError::Unavailable(format!("writing the log: {e}")));
        }
        log.bytes += records.len() as u64;
        Ok(())
    }

    fn apply(&self, delta: &Aggregate) -> Result<(), StoreError> {
        Self::locked(&self.totals)?.merge(delta);
        Ok(())
    }

    /// Appends one delta to the log and merges it into the totals, all or nothing, without
    /// waiting for other pushes to share the write.
    pub fn merge_sync(&self, delta: &Aggregate) -> Result<(), StoreError> {
        self.append(&frame(delta))?;
        self.apply(delta)
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
        let record = frame(delta);
        let (batch, leader) = {
            let mut q = Self::locked(&self.queue)?;
            q.buf.extend_from_slice(&record);
            self.apply(delta)?;
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
            let (buf, batch) = {
                let Ok(mut q) = self.queue.lock() else { return };
                if q.buf.is_empty() {
                    q.flushing = false;
                    return;
                }
                let batch = q.open_batch;
                q.open_batch += 1;
                (std::mem::take(&mut q.buf), batch)
            };
            let ok = self.append(&buf).is_ok();
            if !ok {
                self.unapply(&buf);
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

    /// Subtracts the deltas of records that could not be written.
    fn unapply(&self, records: &[u8]) {
        let mut totals = Aggregate::new();
        replay_bytes(records, &mut totals);
        if let Ok(mut mine) = self.totals.lock() {
            mine.subtract(&totals);
        }
    }

    /// Runs `f` on the current totals without copying them.
    pub fn with_totals<R>(&self, f: impl FnOnce(&Aggregate) -> R) -> Result<R, StoreError> {
        Ok(f(&*Self::locked(&self.totals)?))
    }

    /// Flushes the log to disk (`fsync`). Writers are not blocked while the disk works.
    pub fn sync(&self) -> Result<(), StoreError> {
        let file = Self::locked(&self.log)?
            .file
            .try_clone()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        file.sync_data()
            .map_err(|e| StoreError::Unavailable(format!("syncing the log: {e}")))
    }

    /// Size of the current log in bytes.
    pub fn log_bytes(&self) -> u64 {
        self.log.lock().map(|l| l.bytes).unwrap_or(0)
    }

    /// Folds the logs into a new snapshot and deletes them. Safe to run while pushes arrive.
    ///
    /// The snapshot is built from the files (the old snapshot and the logs below the new
    /// generation), not from the totals in memory: a record written just before the rotation
    /// may not be merged into memory yet, but it is in its log.
    pub fn compact(&self) -> Result<(), StoreError> {
        let unavailable =
            |what: &str, e: io::Error| StoreError::Unavailable(format!("{what}: {e}"));
        // Rotate under the log's lock: every later write goes to the new log, every earlier one
        // is whole in an older log.
        let new_gen = {
            let mut log = Self::locked(&self.log)?;
            let new_gen = log.generation + 1;
            let path = log_path(&self.dir, new_gen);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| unavailable("opening a new log", e))?;
            let old = std::mem::replace(
                &mut *log,
                LogFile {
                    file,
                    generation: new_gen,
                    bytes: 0,
                },
            );
            old.file
                .sync_data()
                .map_err(|e| unavailable("syncing the log", e))?;
            new_gen
        };
        let (totals, _, _) =
            load(&self.dir, Some(new_gen)).map_err(|e| StoreError::Unavailable(e.to_string()))?;
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
    let (records, good) = replay_bytes(&bytes, totals);
    Ok((records, good as u64, bytes.len() as u64))
}

/// Merges the whole records at the start of `bytes` into `totals`; returns how many there were
/// and the length they take. Stops at the first torn or corrupt record.
fn replay_bytes(bytes: &[u8], totals: &mut Aggregate) -> (u64, usize) {
    let mut pos = 0usize;
    let mut records = 0u64;
    while bytes.len() - pos >= 8 {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        if len > MAX_RECORD_BYTES || bytes.len() - pos - 8 < len as usize {
            break;
        }
        let payload = &bytes[pos + 8..pos + 8 + len as usize];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(delta) = decode_delta(payload) else {
            break;
        };
        totals.merge(&delta);
        records += 1;
        pos += 8 + len as usize;
    }
    (records, pos)
}

/// Version byte of the record encoding.
const RECORD_VERSION: u8 = 1;

/// Encodes a delta compactly: a version byte, then per series the metric and labels as
/// length-prefixed strings and the value (`0` + u128 for a counter, `1` + bucket count + u64s +
/// u128 sum for a histogram), all little-endian.
pub fn encode_delta(delta: &Aggregate, out: &mut Vec<u8>) {
    fn string(out: &mut Vec<u8>, s: &str) {
        // Names and values come from the allowlist; they are far below 64 KiB.
        let len = s.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&s.as_bytes()[..len]);
    }
    out.push(RECORD_VERSION);
    for (key, value) in delta.iter_unordered() {
        string(out, &key.metric);
        out.push(key.labels.len().min(u8::MAX as usize) as u8);
        for (k, v) in key.labels.iter().take(u8::MAX as usize) {
            string(out, k);
            string(out, v);
        }
        match value {
            SeriesValue::Counter { micros } => {
                out.push(0);
                out.extend_from_slice(&micros.to_le_bytes());
            }
            SeriesValue::Histogram {
                buckets,
                sum_micros,
            } => {
                out.push(1);
                let n = buckets.len().min(u16::MAX as usize);
                out.extend_from_slice(&(n as u16).to_le_bytes());
                for b in &buckets[..n] {
                    out.extend_from_slice(&b.to_le_bytes());
                }
                out.extend_from_slice(&sum_micros.to_le_bytes());
            }
        }
    }
}

/// Decodes [`encode_delta`]'s output; `None` if it is not well formed.
pub fn decode_delta(bytes: &[u8]) -> Option<Aggregate> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, tail) = self.0.split_at_checked(n)?;
            self.0 = tail;
            Some(head)
        }
        fn u8(&mut self) -> Option<u8> {
            self.take(1).map(|b| b[0])
        }
        fn u16(&mut self) -> Option<u16> {
            self.take(2)?.try_into().ok().map(u16::from_le_bytes)
        }
        fn u64(&mut self) -> Option<u64> {
            self.take(8)?.try_into().ok().map(u64::from_le_bytes)
        }
        fn u128(&mut self) -> Option<u128> {
            self.take(16)?.try_into().ok().map(u128::from_le_bytes)
        }
        fn string(&mut self) -> Option<std::sync::Arc<str>> {
            let n = self.u16()? as usize;
            std::str::from_utf8(self.take(n)?).ok().map(Into::into)
        }
    }
    let mut r = Reader(bytes);
    if r.u8()? != RECORD_VERSION {
        return None;
    }
    let mut delta = Aggregate::new();
    while !r.0.is_empty() {
        let metric = r.string()?;
        let n = r.u8()? as usize;
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            labels.push((r.string()?, r.string()?));
        }
        let value = match r.u8()? {
            0 => SeriesValue::Counter { micros: r.u128()? },
            1 => {
                let n = r.u16()? as usize;
                let buckets = (0..n).map(|_| r.u64()).collect::<Option<Vec<u64>>>()?;
                SeriesValue::Histogram {
                    buckets,
                    sum_micros: r.u128()?,
                }
            }
            _ => return None,
        };
        delta.add_value(SeriesKey { metric, labels }, value);
    }
    Some(delta)
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
    fn records_round_trip_and_garbage_is_refused() {
        let mut d = pum_shared::conformance::delta(3);
        d.add_counter(SeriesKey::new("c", &[("k", "ü\"v")]), u128::MAX);
        let mut bytes = Vec::new();
        encode_delta(&d, &mut bytes);
        assert_eq!(decode_delta(&bytes).as_ref(), Some(&d));
        for cut in 0..bytes.len() {
            // A cut record decodes to nothing, or (cut between two series) to fewer series; the
            // frame's length and CRC keep such a record from being replayed.
            if let Some(partial) = decode_delta(&bytes[..cut]) {
                assert!(partial.len() < d.len(), "cut at {cut}");
            }
        }
        assert_eq!(decode_delta(&[2]), None);
        assert_eq!(decode_delta(&[1, 1, 0, b'x', 0, 9]), None);
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
