//! The store port. Implementations live where their dependencies do: the embedded store in
//! `collector/`, the Durable Object store in the Worker, the DynamoDB store behind a feature.
//!
//! Every implementation passes the one conformance suite in [`crate::conformance`] (feature
//! `conformance`): concurrent merges are exact, snapshots round-trip, totals survive a restart.

use std::future::Future;
use std::sync::Mutex;

use crate::SendOutsideWasm;
use crate::aggregate::{Aggregate, Overflow};
use crate::ingest::{Ingest, PushOutcome};

/// A store failure. Nothing of the push is applied, whichever the variant.
///
/// [`StoreError::Unavailable`] and [`StoreError::Corrupt`] are server-side: the push is answered
/// 503 with `Retry-After` and counted as a store error. [`StoreError::Overflow`] is the push's
/// own outcome, not a fault of the store: it is answered with the core's refusal
/// ([`crate::Reason::TotalOverflow`], see [`store_push`]) and is not a store error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the write.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with data pum cannot read.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// Merging the push would take a stored total past what it holds exactly. Start-up refuses
    /// limits under which a plausible number of pushes could do this
    /// ([`crate::Limits::check`]), so it means totals seeded from elsewhere or limits bypassed.
    #[error(transparent)]
    Overflow(#[from] Overflow),
}

/// Merges a push's delta into `store` and says what to answer: `outcome` if the store took it,
/// or, if the store refused it as the push's fault ([`StoreError::Overflow`]), the core's
/// refusal for that reason, whose own small delta (counting the refusal) is merged in its place.
/// The result is the store's answer to the last merge: an error left is server-side, to be
/// answered with [`crate::http::store_unavailable`].
pub async fn store_push<S: Store>(
    store: &S,
    ingest: &Ingest,
    batch_id: &str,
    outcome: PushOutcome,
) -> (PushOutcome, Result<(), StoreError>) {
    match store.merge(batch_id, &outcome.delta).await {
        Err(StoreError::Overflow(overflow)) => {
            let refusal = ingest.refuse_overflow(&overflow);
            let stored = store.merge(batch_id, &refusal.delta).await;
            (refusal, stored)
        }
        stored => (outcome, stored),
    }
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
        Ok(totals.try_merge(delta)?)
    }

    async fn snapshot(&self) -> Result<Aggregate, StoreError> {
        self.totals
            .lock()
            .map(|t| t.clone())
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))
    }
}
