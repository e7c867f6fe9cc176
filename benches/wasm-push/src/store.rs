//! [`ShardStore`]: the Worker's store (edge/worker/src/store.rs) and the Durable Object it sends
//! each record to (edge/worker/src/durable.rs), in one process and without their platform I/O.
//! Per push it does what those do besides the request between them: encode the push's record,
//! pick its shard, then, as the shard, decode the record with the allowlist its fingerprint
//! names, check the batch id against the window and append the record
//! ([`pum_shard::Shard::merge`] over [`MemorySql`]).

use std::sync::{Mutex, MutexGuard};

use pum_shard::{Shard, ShardError, Stats};
use pum_shared::aggregate::Aggregate;
use pum_shared::batch::BatchId;
use pum_shared::{Allowlist, Merged, Push, Read, Store, StoreError, Stored};

use crate::sql::MemorySql;

/// Shards the Worker spreads pushes over by default (`PUM_SHARDS`). The bench runs one shard,
/// which takes every push; the Worker's choice of shard is computed all the same.
const SHARDS: u32 = 4;

/// One shard behind the Worker's store.
pub struct ShardStore {
    shard: Mutex<Shard<MemorySql>>,
}

fn failed(e: ShardError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl ShardStore {
    /// A store over an empty shard.
    pub fn new() -> Self {
        ShardStore {
            shard: Mutex::new(Shard::new(MemorySql::default())),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Shard<MemorySql>>, StoreError> {
        self.shard
            .lock()
            .map_err(|_| StoreError::Unavailable("the shard's lock is poisoned".into()))
    }

    /// The shard's counters.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        Ok(self.lock()?.stats().clone())
    }

    /// Folds the pending records into the shard's totals, as its alarm does; returns how many.
    pub fn fold(&self, now_ms: u64) -> Result<usize, StoreError> {
        let folded = self.lock()?.fold(now_ms).map_err(failed)?;
        if let Some(overflow) = folded.kept.first() {
            return Err(StoreError::Overflow(overflow.clone()));
        }
        Ok(folded.pushes)
    }

    /// The shard's totals.
    pub fn totals(&self) -> Result<Aggregate, StoreError> {
        Ok(self.lock()?.read().map_err(failed)?.1)
    }
}

impl Default for ShardStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for ShardStore {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        // The Worker's side (ShardStore::send_record): the record and the shard it goes to.
        let record = push.record()?;
        let batch = push.batch.map(BatchId::as_str);
        let name = pum_shard::shard_name(pum_shard::shard_for(batch, 0.5, SHARDS));
        // The Durable Object's side (Shard::fetch, `/merge`).
        let mut shard = self.lock()?;
        shard.name(Some(&name)).map_err(failed)?;
        shard.merge(&record, push.now_ms).map_err(failed)
    }

    /// Describes the allowlist to the shard at once. The Worker does it when the shard first
    /// answers `409 unknown_allowlist`: once per shard, not per push.
    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        self.lock()?
            .describe(&allowlist.description())
            .map_err(failed)
    }
}

impl Read for ShardStore {
    async fn read(&self) -> Result<Stored, StoreError> {
        let (allowlists, totals) = self.lock()?.read().map_err(failed)?;
        Ok(Stored {
            allowlists,
            shards: vec![("0".to_owned(), totals)],
            fold_lag: None,
        })
    }
}
