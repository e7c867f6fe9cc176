//! Criterion benches of the embedded store's hot path, `merge`: what one push of the realistic
//! beacon (`fixtures/beacon.json`) costs the store, its record encoded, queued, written by the
//! group commit and merged into the totals.
//!
//! - `merge/beacon_sequential`: one push at a time (a `write` per push).
//! - `merge/beacon_8_concurrent`: eight tasks pushing at once, as a busy standalone ingest does
//!   (pushes share `write`s).
//! - `merge/beacon_8_concurrent_batch_ids`: the same, each push with its own batch id.
//!
//! Each sample opens a fresh store in a temporary directory (not timed), so the log does not grow
//! across samples. `cargo bench -p pum-embedded --bench merge` (add `-- --quick` for a smoke
//! run). Benchmarks measure; no test asserts a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use pum_embedded::EmbeddedStore;
use pum_shared::batch::BatchId;
use pum_shared::{Aggregate, Allowlist, Ingest, Limits, Push, Store};

/// The realistic beacon, shared with the tests, the fuzz seeds and the load benchmark.
const BEACON: &str = include_str!("../../../fixtures/beacon.json");

/// Tasks pushing at once in the concurrent benches.
const TASKS: u64 = 8;

struct Bench {
    ingest: Ingest,
    delta: Aggregate,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn new() -> Self {
        let ingest = Ingest::new(Allowlist::example(), Limits::default());
        let delta = ingest
            .push(Some("text/plain;charset=UTF-8"), BEACON.as_bytes())
            .delta;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        Bench {
            ingest,
            delta,
            runtime,
        }
    }

    /// Pushes the beacon `iters` times from `tasks` tasks into a fresh store, each push with a
    /// batch id of its own if `ids`; the time the pushes took.
    fn run(&self, iters: u64, tasks: u64, ids: bool) -> Duration {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = EmbeddedStore::open(dir.path()).expect("opens");
        let store = Arc::new(store);
        let list = Arc::new(self.ingest.allowlist().clone());
        self.runtime
            .block_on(store.describe(&list))
            .expect("describe");
        let per_task = iters.div_ceil(tasks);
        let batches: Vec<Vec<Option<BatchId>>> = (0..tasks)
            .map(|t| {
                (0..per_task)
                    .map(|i| {
                        ids.then(|| BatchId::parse(&format!("bench-{t:04}-{i:012}")).expect("id"))
                    })
                    .collect()
            })
            .collect();
        let start = Instant::now();
        self.runtime.block_on(async {
            let handles: Vec<_> = batches
                .into_iter()
                .map(|batches| {
                    let (store, list, delta) =
                        (Arc::clone(&store), Arc::clone(&list), self.delta.clone());
                    tokio::spawn(async move {
                        let mut push = Push {
                            batch: None,
                            now_ms: 1_790_000_000_000,
                            delta,
                            allowlist: &list,
                        };
                        for batch in &batches {
                            push.batch = batch.as_ref();
                            store.merge(&push).await.expect("merge");
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("task");
            }
        });
        start.elapsed()
    }
}

fn merge(c: &mut Criterion) {
    let bench = Bench::new();
    let mut group = c.benchmark_group("merge");
    group.throughput(Throughput::Elements(1));
    group.bench_function("beacon_sequential", |b| {
        b.iter_custom(|iters| bench.run(iters, 1, false))
    });
    group.bench_function("beacon_8_concurrent", |b| {
        b.iter_custom(|iters| bench.run(iters, TASKS, false))
    });
    group.bench_function("beacon_8_concurrent_batch_ids", |b| {
        b.iter_custom(|iters| bench.run(iters, TASKS, true))
    });
    group.finish();
}

// What `criterion_group!` and `criterion_main!` expand to, written out: the macro's generated
// `pub fn` would trip the workspace's `missing_docs` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    merge(&mut c);
    c.final_summary();
}
