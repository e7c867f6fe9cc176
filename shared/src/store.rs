//! The store ports: [`Store`] to write pushes, [`Read`] to read totals. The stores live together
//! under `stores/` (embedded, DynamoDB, the Durable Object shard), each a crate of its own so that
//! each platform builds only its own; [`MemoryStore`] here is the reference.
//!
//! Every implementation passes the one conformance suite in [`crate::conformance`] (feature
//! `conformance`): concurrent merges are exact, a batch id is applied once, snapshots
//! round-trip, totals and the described allowlist survive a restart.

use std::future::Future;
use std::sync::Mutex;

use crate::SendOutsideWasm;
use crate::aggregate::{Aggregate, Overflow};
use crate::allowlist::Allowlist;
use crate::batch::{BatchId, Window};
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

/// A validated push, ready to store: what to add, under which batch id, and when it arrived.
#[derive(Clone, Debug)]
pub struct Push<'a> {
    /// The batch id the client named the push with, if it did ([`crate::batch`]).
    pub batch: Option<&'a BatchId>,
    /// When the push arrived, in milliseconds since the Unix epoch (the adapter's clock).
    pub now_ms: u64,
    /// What to add: the valid samples and pum's own counters about the push.
    pub delta: Aggregate,
    /// The allowlist the push was validated against (which also decodes its record).
    pub allowlist: &'a Allowlist,
}

impl<'a> Push<'a> {
    /// The push as a delta record ([`crate::record`]), for stores that keep or send the record.
    pub fn record(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(256);
        crate::record::encode(
            self.allowlist,
            self.batch.map(BatchId::as_str),
            self.now_ms / 1000,
            &self.delta,
            &mut out,
        )
        .map_err(|e| StoreError::Corrupt(format!("the push does not encode: {e}")))?;
        Ok(out)
    }

    /// The push with billable operations `taken` ([`crate::own::Operations::take`]) added to its
    /// delta, for a store that carries them in the push's record.
    pub fn with_operations(&self, taken: crate::own::Counts) -> Push<'a> {
        let mut delta = self.delta.clone();
        crate::own::Operations::add_to(&mut delta, taken);
        Push {
            batch: self.batch,
            now_ms: self.now_ms,
            delta,
            allowlist: self.allowlist,
        }
    }
}

/// What a store did with a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// The push was added.
    Applied,
    /// A push with the same batch id was added before, within the window: nothing was added.
    Replayed,
}

/// Merges `push` into `store` and says what to answer: `outcome` if the store took it (or had
/// taken it before, under the same batch id), or, if the store refused it as the push's fault
/// ([`StoreError::Overflow`]), the core's refusal for that reason, whose own small delta (counting
/// the refusal) is merged in its place. The result is the store's answer to the last merge: an
/// error left is server-side, to be answered with [`crate::http::store_unavailable`].
pub async fn store_push<S: Store>(
    store: &S,
    ingest: &Ingest,
    mut push: Push<'_>,
    outcome: PushOutcome,
) -> (PushOutcome, Result<Merged, StoreError>) {
    match store.merge(&push).await {
        Err(StoreError::Overflow(overflow)) => {
            let refusal = ingest.refuse_overflow(&overflow);
            push.delta = refusal.delta.clone();
            let stored = store.merge(&push).await;
            (refusal, stored)
        }
        stored => (outcome, stored),
    }
}

/// What a store holds: cumulative totals, by shard, and the allowlists they were validated
/// against.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// Every allowlist an ingest described to the store ([`Store::describe`]), each once.
    pub allowlists: Vec<Allowlist>,
    /// Cumulative totals of each shard, by shard name (one shard for a store that has no
    /// shards). The store's totals are the sum over shards.
    pub shards: Vec<(String, Aggregate)>,
    /// For a store whose totals are folded from a log of pushes after they are accepted (the
    /// DynamoDB store): how far they trailed at the latest fold, from the newest push it applied
    /// being accepted to its fold. `None` for stores whose totals include a push once it is
    /// answered.
    pub fold_lag: Option<std::time::Duration>,
}

impl Stored {
    /// The sum over shards.
    pub fn totals(&self) -> Aggregate {
        let mut total = Aggregate::new();
        for (_, shard) in &self.shards {
            total.merge(shard);
        }
        total
    }
}

/// The read port: what every store, and every reader of a remote store, gives the collector.
pub trait Read {
    /// The cumulative totals by shard and the allowlists that describe them.
    fn read(&self) -> impl Future<Output = Result<Stored, StoreError>> + SendOutsideWasm;
}

/// Where aggregates live. Merges are atomic (all of a delta or none of it), exact under
/// concurrency (the cumulative total is the sum of every merged delta, in any order) and applied
/// once per batch id within [`crate::batch::WINDOW_MS`].
pub trait Store: Read {
    /// Adds `push.delta` to the stored totals, all or nothing, unless a push with the same batch
    /// id was added within the window ([`Merged::Replayed`]).
    fn merge(
        &self,
        push: &Push<'_>,
    ) -> impl Future<Output = Result<Merged, StoreError>> + SendOutsideWasm;

    /// Records the allowlist pushes are validated against, so that readers of the store can
    /// render them without a copy of it. The ingest calls it before its first merge; storing
    /// an allowlist the store already holds changes nothing.
    fn describe(
        &self,
        allowlist: &Allowlist,
    ) -> impl Future<Output = Result<(), StoreError>> + SendOutsideWasm;

    /// Whether the store refuses writes for now (its log could not be made durable): the
    /// ingest's `/healthz` then answers 503.
    fn is_failed(&self) -> bool {
        false
    }
}

/// An in-memory store: the reference implementation of [`Store`], for tests and for adapters
/// whose durability lives elsewhere.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    totals: Aggregate,
    seen: Window,
    allowlists: Vec<Allowlist>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Memory>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))
    }
}

impl Read for MemoryStore {
    async fn read(&self) -> Result<Stored, StoreError> {
        let m = self.lock()?;
        Ok(Stored {
            allowlists: m.allowlists.clone(),
            shards: vec![("memory".to_owned(), m.totals.clone())],
            fold_lag: None,
        })
    }
}

impl Store for MemoryStore {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        let mut m = self.lock()?;
        if let Some(id) = push.batch
            && m.seen.contains(id.as_str())
        {
            return Ok(Merged::Replayed);
        }
        m.totals.try_merge(&push.delta)?;
        if let Some(id) = push.batch {
            m.seen.insert(id.as_str(), push.now_ms);
        }
        Ok(Merged::Applied)
    }

    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        let mut m = self.lock()?;
        let fingerprint = allowlist.fingerprint();
        if !m.allowlists.iter().any(|a| a.fingerprint() == fingerprint) {
            m.allowlists.push(allowlist.clone());
        }
        Ok(())
    }
}
