//! The store port. Implementations live where their dependencies do: the embedded store in
//! `collector/`, the Durable Object store in the Worker, the DynamoDB store behind a feature.
//!
//! Every implementation passes the one conformance suite in [`crate::conformance`] (feature
//! `conformance`): concurrent merges are exact, snapshots round-trip, totals survive a restart.

use std::future::Future;
use std::sync::Mutex;

use crate::SendOutsideWasm;
use crate::aggregate::Aggregate;

/// A store failure. Both variants are server-side: the push is answered 503 with `Retry-After`
/// and nothing of it is applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the write.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with data pum cannot read.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// Where aggregates live. Merges are atomic (all of a delta or none of it) and exact under
/// concurrency: the cumulative total is the sum of every merged delta, in any order.
pub trait Store {
    /// Adds `delta` to the stored totals, all or nothing. `batch_id` identifies the push: a store
    /// that may see the same merge twice (a retried request) uses it to apply it once.
    fn merge(
        &self,
        batch_id: &str,
        delta: &Aggregate,
    ) -> impl Future<Output = Result<(), StoreError>> + SendOutsideWasm;

    /// The cumulative totals.
    fn snapshot(&self) -> impl Future<Output = Result<Aggregate, StoreError>> + SendOutsideWasm;
}

/// An in-memory store: the reference implementation of [`Store`], for tests and for adapters
/// whose durability lives elsewhere.
#[derive(Debug, Default)]
pub struct MemoryStore {
    totals: Mutex<Aggregate>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    async fn merge(&self, _batch_id: &str, delta: &Aggregate) -> Result<(), StoreError> {
        let mut totals = self
            .totals
            .lock()
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))?;
        totals.merge(delta);
        Ok(())
    }

    async fn snapshot(&self) -> Result<Aggregate, StoreError> {
        self.totals
            .lock()
            .map(|t| t.clone())
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))
    }
}
