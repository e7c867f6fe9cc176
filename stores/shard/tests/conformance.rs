//! The store conformance suite against the shard's logic, on a SQLite file: a store that sends
//! each push's record to one shard as the Worker does (describing the allowlist when the shard
//! asks for it) and folds every few pushes as the shard's alarm does; reopening is a new
//! connection on the same file, as a restarted Durable Object gets.

mod sqlite;

use std::sync::Mutex;

use pum_shard::{Shard, ShardError};
use pum_shared::conformance::Harness;
use pum_shared::{Allowlist, Merged, Push, Read, Store, StoreError, Stored};
use sqlite::Sqlite;

/// Pushes between two folds: odd, so that folds fall between the suite's duplicates.
const FOLD_EVERY: u64 = 7;

struct ShardStore {
    shard: Mutex<(Shard<Sqlite>, u64)>,
}

impl ShardStore {
    fn open(path: &std::path::Path) -> Self {
        ShardStore {
            shard: Mutex::new((Shard::new(Sqlite::open(path)), 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Shard<Sqlite>, u64)> {
        self.shard.lock().expect("not poisoned")
    }
}

fn store_error(e: ShardError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Read for ShardStore {
    async fn read(&self) -> Result<Stored, StoreError> {
        let (allowlists, totals) = self.lock().0.read().map_err(store_error)?;
        Ok(Stored {
            allowlists,
            shards: vec![("shard/0".to_owned(), totals)],
            fold_lag: None,
        })
    }
}

impl Store for ShardStore {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        let record = push.record()?;
        let mut guard = self.lock();
        let (shard, merges) = &mut *guard;
        let merged = match shard.merge(&record, push.now_ms) {
            Err(ShardError::UnknownAllowlist(_)) => {
                shard
                    .describe(&push.allowlist.description())
                    .map_err(store_error)?;
                shard.merge(&record, push.now_ms)
            }
            other => other,
        }
        .map_err(store_error)?;
        *merges += 1;
        if *merges % FOLD_EVERY == 0 {
            shard.fold(push.now_ms).map_err(store_error)?;
        }
        Ok(merged)
    }

    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        self.lock()
            .0
            .describe(&allowlist.description())
            .map_err(store_error)
    }
}

struct File(tempfile::TempDir);

impl File {
    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("shard.sqlite")
    }
}

impl Harness for File {
    type S = ShardStore;
    async fn open(&mut self) -> ShardStore {
        ShardStore::open(&self.path())
    }
    async fn reopen(&mut self, store: ShardStore) -> ShardStore {
        // Dropped without a fold: what is pending stays pending, as in a killed object.
        drop(store);
        ShardStore::open(&self.path())
    }
}

fn file() -> File {
    File(tempfile::tempdir().expect("tempdir"))
}

mod shard_store {
    use super::*;
    pum_shared::store_conformance_tests!(file());
}
