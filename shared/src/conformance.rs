//! The store conformance suite: written once, run against every [`Store`].
//!
//! A store's tests implement [`Harness`] and call [`store_conformance_tests!`](crate::store_conformance_tests)
//! once; the macro expands to one `#[tokio::test]` per property (the calling crate needs `tokio`
//! with the `macros` and `rt-multi-thread` features).

use std::future::Future;
use std::sync::Arc;

use crate::aggregate::{Aggregate, SeriesKey, SeriesValue};
use crate::store::Store;

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
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let seed = t * PER_TASK + i;
                store
                    .merge(&format!("batch-{seed}"), &delta(seed))
                    .await
                    .expect("merge succeeds");
            }
        }));
    }
    for h in handles {
        h.await.expect("task completes");
    }
    let got = store.snapshot().await.expect("snapshot");
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
    assert!(
        store.snapshot().await.expect("snapshot").is_empty(),
        "a new store is empty"
    );
    let mut big = delta(7);
    big.add_counter(
        SeriesKey::new("conf_total", &[("k", "huge \"quoted\" ✓")]),
        u128::from(u64::MAX) * 3,
    );
    store.merge("a", &big).await.expect("merge");
    let got = store.snapshot().await.expect("snapshot");
    assert_eq!(got, big);
    assert_eq!(Aggregate::from_json(&got.to_json()).expect("decodes"), big);
}

/// Totals survive closing and reopening the store, and merging goes on from them.
pub async fn restart_keeps_totals<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    for seed in 0..50 {
        store
            .merge(&format!("r-{seed}"), &delta(seed))
            .await
            .expect("merge");
    }
    let store = harness.reopen(store).await;
    assert_eq!(store.snapshot().await.expect("snapshot"), expected(0..50));
    for seed in 50..60 {
        store
            .merge(&format!("r-{seed}"), &delta(seed))
            .await
            .expect("merge");
    }
    let store = harness.reopen(store).await;
    assert_eq!(store.snapshot().await.expect("snapshot"), expected(0..60));
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
    };
}
