//! The store conformance suite: written once, run against every [`Store`]: concurrent merges are
//! exact, a batch id is applied once (sequentially, concurrently and after a restart), what is
//! merged reads back, totals and the described allowlist survive a restart.
//!
//! A store's tests implement [`Harness`] and call [`store_conformance_tests!`](crate::store_conformance_tests)
//! once; the macro expands to one `#[tokio::test]` per property (the calling crate needs `tokio`
//! with the `macros` and `rt-multi-thread` features).

use std::future::Future;
use std::sync::Arc;

use crate::aggregate::{Aggregate, SeriesKey, SeriesValue};
use crate::allowlist::Allowlist;
use crate::batch::BatchId;
use crate::store::{Merged, Push, Read, Store};

/// Opens a store under test, and opens it again on the same data.
pub trait Harness: Send + 'static {
    /// The store.
    type S: Store + Send + Sync + 'static;
    /// Opens a fresh, empty store.
    fn open(&mut self) -> impl Future<Output = Self::S> + Send;
    /// Closes `store` as a stopped process would (no flush beyond what a merge already did) and
    /// opens the same data again.
    fn reopen(&mut self, store: Self::S) -> impl Future<Output = Self::S> + Send;
}

/// The allowlist of the suite's metrics: every delta the suite merges is valid under it (its
/// records encode), and the suite describes it to each store.
pub fn allowlist() -> Allowlist {
    let text = r#"{"allowedMetrics": [
        {"name": "conf_total", "help": "Conformance counter.", "type": "counter",
         "labels": [{"name": "k", "allowedValues": ["v0", "v1", "v2", "v3", "huge \"quoted\" ✓"]}]},
        {"name": "conf_seconds", "help": "Conformance histogram.", "type": "histogram",
         "buckets": [0.1, 1, 10]}
    ]}"#;
    Allowlist::compile([("conformance", text)], false).expect("the suite's allowlist compiles")
}

/// A push of `delta` under `batch`, at a fixed time.
pub fn push<'a>(
    allowlist: &'a Allowlist,
    batch: Option<&'a BatchId>,
    delta: Aggregate,
) -> Push<'a> {
    Push {
        batch,
        now_ms: 1_790_000_000_000,
        delta,
        allowlist,
    }
}

/// A batch id for `n`.
pub fn batch_id(n: u64) -> BatchId {
    BatchId::parse(&format!("conformance-{n:08}")).expect("a valid id")
}

/// A deterministic delta: `n` counter series and one histogram, varied by `seed`.
pub fn delta(seed: u64) -> Aggregate {
    let mut a = Aggregate::new();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    for _ in 0..3 {
        let label = format!("v{}", next() % 4);
        a.add_counter(
            SeriesKey::new("conf_total", &[("k", &label)]),
            u128::from(next() % 5_000_000),
        );
    }
    let observations: Vec<(usize, u128)> = (0..3)
        .map(|_| ((next() % 4) as usize, u128::from(next() % 9_000_000)))
        .collect();
    a.observe_all(SeriesKey::new("conf_seconds", &[]), 4, observations);
    a
}

fn expected(seeds: impl IntoIterator<Item = u64>) -> Aggregate {
    let mut total = Aggregate::new();
    for s in seeds {
        total.merge(&delta(s));
    }
    total
}

/// Many tasks merging at once lose nothing and count nothing twice.
pub async fn concurrent_merges_are_exact<H: Harness>(mut harness: H) {
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 25;
    let store = Arc::new(harness.open().await);
    let list = Arc::new(allowlist());
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        let list = Arc::clone(&list);
        handles.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let seed = t * PER_TASK + i;
                // Half the pushes carry a batch id, half do not (the original clients).
                let id = batch_id(seed);
                let batch = seed.is_multiple_of(2).then_some(&id);
                let merged = store
                    .merge(&push(&list, batch, delta(seed)))
                    .await
                    .expect("merge succeeds");
                assert_eq!(merged, Merged::Applied);
            }
        }));
    }
    for h in handles {
        h.await.expect("task completes");
    }
    let got = totals(&*store).await;
    assert_eq!(
        got,
        expected(0..TASKS * PER_TASK),
        "concurrent merges must sum exactly"
    );
    let hist = got
        .get(&SeriesKey::new("conf_seconds", &[]))
        .and_then(SeriesValue::count);
    assert_eq!(hist, Some(3 * TASKS * PER_TASK));
}

/// What is merged is what a snapshot returns, through the portable encoding too.
pub async fn snapshot_round_trips<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    assert!(totals(&store).await.is_empty(), "a new store is empty");
    let mut big = delta(7);
    big.add_counter(
        SeriesKey::new("conf_total", &[("k", "huge \"quoted\" ✓")]),
        u128::from(u64::MAX) * 3,
    );
    let list = allowlist();
    store
        .merge(&push(&list, Some(&batch_id(1)), big.clone()))
        .await
        .expect("merge");
    let got = totals(&store).await;
    assert_eq!(got, big);
    assert_eq!(Aggregate::from_json(&got.to_json()).expect("decodes"), big);
}

/// Totals survive closing and reopening the store, and merging goes on from them.
pub async fn restart_keeps_totals<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let list = allowlist();
    for seed in 0..50 {
        let id = batch_id(seed);
        store
            .merge(&push(&list, (seed % 3 != 0).then_some(&id), delta(seed)))
            .await
            .expect("merge");
    }
    let store = harness.reopen(store).await;
    assert_eq!(totals(&store).await, expected(0..50));
    for seed in 50..60 {
        store
            .merge(&push(&list, Some(&batch_id(seed)), delta(seed)))
            .await
            .expect("merge");
    }
    let store = harness.reopen(store).await;
    assert_eq!(totals(&store).await, expected(0..60));
}

/// A batch id is applied once: pushed again in sequence, pushed by many tasks at once, and
/// pushed again after a restart, it adds nothing and is answered [`Merged::Replayed`]; a push
/// without an id is applied every time.
pub async fn batch_applies_once<H: Harness>(mut harness: H) {
    const TASKS: usize = 8;
    let store = Arc::new(harness.open().await);
    let list = Arc::new(allowlist());
    let once = batch_id(1);
    let first = store.merge(&push(&list, Some(&once), delta(1))).await;
    assert_eq!(first.expect("merge"), Merged::Applied);
    let again = store.merge(&push(&list, Some(&once), delta(1))).await;
    assert_eq!(
        again.expect("merge"),
        Merged::Replayed,
        "a sequential replay"
    );
    // The same new batch from many tasks at once: exactly one applies it.
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let (store, list) = (Arc::clone(&store), Arc::clone(&list));
        handles.push(tokio::spawn(async move {
            let id = batch_id(2);
            store
                .merge(&push(&list, Some(&id), delta(2)))
                .await
                .expect("merge")
        }));
    }
    let mut applied = 0;
    for h in handles {
        if h.await.expect("task completes") == Merged::Applied {
            applied += 1;
        }
    }
    assert_eq!(applied, 1, "concurrent duplicates: exactly one applies");
    // Without an id, the same delta twice counts twice.
    for _ in 0..2 {
        let merged = store.merge(&push(&list, None, delta(3))).await;
        assert_eq!(merged.expect("merge"), Merged::Applied);
    }
    let want = expected([1, 2, 3, 3]);
    assert_eq!(totals(&*store).await, want);
    let Ok(store) = Arc::try_unwrap(store) else {
        panic!("every task has finished with the store");
    };
    let store = harness.reopen(store).await;
    for id in [1, 2] {
        let merged = store
            .merge(&push(&list, Some(&batch_id(id)), delta(id)))
            .await;
        assert_eq!(
            merged.expect("merge"),
            Merged::Replayed,
            "a replay after a restart"
        );
    }
    assert_eq!(totals(&store).await, want);
}

/// What an ingest describes is read back, once however often it is described, across a restart.
pub async fn describes_itself<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    assert!(
        store.read().await.expect("read").allowlists.is_empty(),
        "a new store holds no allowlist"
    );
    let list = allowlist();
    store.describe(&list).await.expect("describe");
    store.describe(&list).await.expect("describe again");
    store
        .merge(&push(&list, None, delta(1)))
        .await
        .expect("merge");
    let store = harness.reopen(store).await;
    let stored = store.read().await.expect("read").allowlists;
    let fingerprints: Vec<u64> = stored.iter().map(Allowlist::fingerprint).collect();
    assert_eq!(fingerprints, vec![list.fingerprint()]);
    assert_eq!(stored[0].description(), list.description());
}

/// The store's totals, without the billable operations a store may count in them
/// ([`crate::own::STORE_OPERATIONS`]): the suite checks what the pushes add.
async fn totals<S: Store>(store: &S) -> Aggregate {
    crate::own::without_operations(&store.read().await.expect("read").totals())
}

/// Expands to one test per property of the suite, each given a fresh harness from `$harness`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($harness:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_concurrent_merges_are_exact() {
            $crate::conformance::concurrent_merges_are_exact($harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_snapshot_round_trips() {
            $crate::conformance::snapshot_round_trips($harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_restart_keeps_totals() {
            $crate::conformance::restart_keeps_totals($harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_batch_applies_once() {
            $crate::conformance::batch_applies_once($harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_describes_itself() {
            $crate::conformance::describes_itself($harness).await;
        }
    };
}
