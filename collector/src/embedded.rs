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
//! - `wal-<gen>.log`: records `[len u32 LE][crc32 u32 LE][delta as snapshot JSON]`, one per push.
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
use pum_shared::{Aggregate, Store, StoreError};
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

struct Inner {
    totals: Aggregate,
    wal: File,
    generation: u64,
    wal_bytes: u64,
}

/// The embedded store. See the module docs for its format and guarantees.
pub struct EmbeddedStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
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

        let snap_path = dir.join("snapshot.json");
        let (mut totals, generation) = match fs::read_to_string(&snap_path) {
            Ok(text) => {
                let snap: SnapshotIn =
                    serde_json::from_str(&text).map_err(|e| OpenError::CorruptSnapshot {
                        path: snap_path.clone(),
                        reason: e.to_string(),
                    })?;
                let totals =
                    Aggregate::try_from(snap.totals).map_err(|e| OpenError::CorruptSnapshot {
                        path: snap_path.clone(),
                        reason: e.to_string(),
                    })?;
                (totals, snap.generation)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Aggregate::new(), 0),
            Err(e) => return Err(io_err(&snap_path)(e)),
        };

        let mut logs = list_logs(&dir)?;
        logs.sort_unstable();
        let mut recovery = Recovery {
            replayed: 0,
            truncated_bytes: 0,
        };
        let newest = logs.last().copied().unwrap_or(generation).max(generation);
        for &g in &logs {
            let path = log_path(&dir, g);
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
        let wal_path = log_path(&dir, newest);
        let mut wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)
            .map_err(io_err(&wal_path))?;
        let wal_bytes = wal.seek(SeekFrom::End(0)).map_err(io_err(&wal_path))?;
        sync_dir(&dir).map_err(io_err(&dir))?;
        let store = EmbeddedStore {
            dir,
            inner: Mutex::new(Inner {
                totals,
                wal,
                generation: newest,
                wal_bytes,
            }),
            _lock: lock,
        };
        Ok((store, recovery))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("store lock poisoned".into()))
    }

    /// Appends one delta to the log and merges it into the totals, all or nothing.
    pub fn merge_sync(&self, delta: &Aggregate) -> Result<(), StoreError> {
        let payload = delta.to_json().into_bytes();
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        // A std mutex: the critical section is one `write` to the page cache and an in-memory
        // merge, never held across an await, and it keeps the log order equal to merge order.
        let mut inner = self.lock()?;
        if let Err(e) = inner.wal.write_all(&frame) {
            // Cut off whatever part of the frame reached the file, so the next record follows
            // the last whole one.
            let keep = inner.wal_bytes;
            let _ = inner.wal.set_len(keep);
            return Err(StoreError::Unavailable(format!("writing the log: {e}")));
        }
        inner.wal_bytes += frame.len() as u64;
        inner.totals.merge(delta);
        Ok(())
    }

    /// Runs `f` on the current totals without copying them.
    pub fn with_totals<R>(&self, f: impl FnOnce(&Aggregate) -> R) -> Result<R, StoreError> {
        Ok(f(&self.lock()?.totals))
    }

    /// Flushes the log to disk (`fsync`). Writers are not blocked while the disk works.
    pub fn sync(&self) -> Result<(), StoreError> {
        let wal = self
            .lock()?
            .wal
            .try_clone()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        wal.sync_data()
            .map_err(|e| StoreError::Unavailable(format!("syncing the log: {e}")))
    }

    /// Size of the current log in bytes.
    pub fn log_bytes(&self) -> u64 {
        self.lock().map(|i| i.wal_bytes).unwrap_or(0)
    }

    /// Folds the logs into a new snapshot and deletes them. Safe to run while pushes arrive.
    pub fn compact(&self) -> Result<(), StoreError> {
        let unavailable =
            |what: &str, e: io::Error| StoreError::Unavailable(format!("{what}: {e}"));
        // Rotate under the lock: later merges go to the new log, and `totals` is exactly what
        // the logs below the new generation hold.
        let (totals, new_gen, old_wal) = {
            let mut inner = self.lock()?;
            let new_gen = inner.generation + 1;
            let path = log_path(&self.dir, new_gen);
            let wal = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| unavailable("opening a new log", e))?;
            let old = std::mem::replace(&mut inner.wal, wal);
            inner.generation = new_gen;
            inner.wal_bytes = 0;
            (inner.totals.clone(), new_gen, old)
        };
        old_wal
            .sync_data()
            .map_err(|e| unavailable("syncing the log", e))?;
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

impl Store for EmbeddedStore {
    async fn merge(&self, _batch_id: &str, delta: &Aggregate) -> Result<(), StoreError> {
        self.merge_sync(delta)
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
        let Ok(delta) = std::str::from_utf8(payload)
            .map_err(|_| ())
            .and_then(|t| Aggregate::from_json(t).map_err(|_| ()))
        else {
            break;
        };
        totals.merge(&delta);
        records += 1;
        pos += 8 + len as usize;
    }
    Ok((records, pos as u64, bytes.len() as u64))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pum_shared::SeriesKey;

    fn delta(n: u128) -> Aggregate {
        let mut a = Aggregate::new();
        a.add_counter(SeriesKey::new("t_total", &[]), n);
        a
    }

    fn total(store: &EmbeddedStore) -> u128 {
        store
            .with_totals(|t| match t.get(&SeriesKey::new("t_total", &[])) {
                Some(pum_shared::SeriesValue::Counter { micros }) => *micros,
                _ => 0,
            })
            .expect("totals")
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
