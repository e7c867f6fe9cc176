//! The store conformance suite, and DynamoDB-specific properties, against DynamoDB Local
//! (Amazon's emulator, behind a proxy that counts writes: see `testing/local_dynamodb.py`).
//!
//! Why this server: the store writes each push as one `TransactWriteItems` with a conditional
//! dedupe item, which DynamoDB Local implements with DynamoDB's cancellation reasons, applying
//! concurrent transactions exactly. The concurrency in these tests is real on the client side
//! (16 tasks merging at once, 8 pushing the same batch at once); a restart is a new client on the
//! same tables, and the server itself is killed and restarted in
//! `a_batch_is_replayed_after_the_server_restarts`.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use pum_dynamodb::DynamoStore;
use pum_dynamodb::testing::LocalDynamo;
use pum_shared::conformance::{Harness, allowlist, batch_id, delta, push};
use pum_shared::{Aggregate, Merged, Read, SeriesKey, SeriesValue, Store};

/// One server for the whole test binary; each harness gets fresh tables.
fn server() -> &'static LocalDynamo {
    static SERVER: OnceLock<LocalDynamo> = OnceLock::new();
    SERVER.get_or_init(LocalDynamo::start)
}

struct Dynamo {
    shards: u32,
    page_size: Option<i32>,
}

impl Harness for Dynamo {
    type S = DynamoStore;
    async fn open(&mut self) -> DynamoStore {
        let (shards, page_size) = (self.shards, self.page_size);
        server()
            .fresh_store("conf", |s| {
                s.shards = shards;
                s.page_size = page_size;
            })
            .await
    }
    /// The store holds no state of its own: a new client on the same tables is a restarted
    /// Lambda or collector.
    async fn reopen(&mut self, store: DynamoStore) -> DynamoStore {
        let settings = store.settings().clone();
        drop(store);
        DynamoStore::new(server().client(), settings)
    }
}

mod dynamodb_store {
    use super::*;
    pum_shared::store_conformance_tests!(Dynamo {
        shards: 16,
        page_size: None
    });
}

/// One shard (every push on the same items) and two-item scan pages (pagination on every read).
mod dynamodb_store_one_shard_small_pages {
    use super::*;
    pum_shared::store_conformance_tests!(Dynamo {
        shards: 1,
        page_size: Some(2)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_replayed_after_the_server_restarts() {
    let mut server = LocalDynamo::start();
    let store = server.fresh_store("restart", |_| {}).await;
    let list = allowlist();
    let id = batch_id(1);
    let merged = store.merge(&push(&list, Some(&id), delta(1))).await;
    assert_eq!(merged.expect("merge"), Merged::Applied);
    server.kill();
    assert!(
        store
            .merge(&push(&list, Some(&id), delta(1)))
            .await
            .is_err(),
        "a store that is down fails the merge"
    );
    server.restart();
    let store = DynamoStore::new(server.client(), store.settings().clone());
    let merged = store.merge(&push(&list, Some(&id), delta(1))).await;
    assert_eq!(merged.expect("merge"), Merged::Replayed);
    assert_eq!(store.read().await.expect("read").totals(), delta(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedupe_items_live_in_the_batches_table_with_a_ttl_of_at_least_the_window() {
    let store = server().fresh_store("dedupe", |_| {}).await;
    let list = allowlist();
    let id = batch_id(7);
    let mut p = push(&list, Some(&id), delta(7));
    let now_secs = p.now_ms / 1000;
    store.merge(&p).await.expect("merge");
    p.batch = None;
    store.merge(&p).await.expect("merge");
    let batches = store
        .client()
        .scan()
        .table_name(&store.settings().batch_table)
        .consistent_read(true)
        .send()
        .await
        .expect("scan");
    let mut keys = Vec::new();
    for item in batches.items() {
        let key = item["pk"].as_s().expect("a string key").clone();
        let expires: u64 = item["expires"]
            .as_n()
            .expect("a number")
            .parse()
            .expect("epoch seconds");
        assert!(
            expires >= now_secs + pum_shared::batch::WINDOW_MS / 1000,
            "{key}: expires {expires}"
        );
        keys.push(key);
    }
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].starts_with('#'), "a push without an id: {keys:?}");
    assert_eq!(keys[1], id.as_str());
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name(&store.settings().batch_table)
        .send()
        .await
        .expect("describe ttl");
    let ttl = ttl.time_to_live_description().expect("a TTL");
    assert_eq!(ttl.attribute_name(), Some("expires"));
    // The aggregates table holds series and nothing per push.
    for (pk, _) in store.item_sizes().await.expect("items") {
        assert!(!pk.contains(id.as_str()), "{pk}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_allowlist_is_written_once_and_read_back() {
    let store = server().fresh_store("describe", |_| {}).await;
    let list = allowlist();
    store.describe(&list).await.expect("describe");
    store
        .describe(&list)
        .await
        .expect("describing again changes nothing");
    let other = pum_shared::Allowlist::example();
    store.describe(&other).await.expect("describe another");
    let stored = store.read().await.expect("read");
    let mut want = vec![list.fingerprint(), other.fingerprint()];
    want.sort();
    let mut got: Vec<u64> = stored.allowlists.iter().map(|a| a.fingerprint()).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(stored.shards.is_empty(), "allowlist items are not shards");
    let sizes = store.item_sizes().await.expect("items");
    assert!(
        sizes.iter().all(|(pk, _)| pk.starts_with("allowlist:")),
        "{sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_and_regions_are_separate_items_and_sum() {
    let first = server().fresh_store("regions", |s| s.shards = 4).await;
    let mut settings = first.settings().clone();
    settings.region = "us-east-1".into();
    let second = DynamoStore::new(server().client(), settings);
    let list = allowlist();
    let mut expected = Aggregate::new();
    for i in 0..40u64 {
        let store = if i % 2 == 0 { &first } else { &second };
        store
            .merge(&push(&list, Some(&batch_id(i)), delta(i)))
            .await
            .expect("merge");
        expected.merge(&delta(i));
    }
    let shards = first.read().await.expect("read").shards;
    assert!(shards.iter().any(|(s, _)| s.starts_with("eu-west-1#")));
    assert!(shards.iter().any(|(s, _)| s.starts_with("us-east-1#")));
    assert!(shards.len() > 2, "pushes spread over shards: {shards:?}");
    assert!(shards.len() <= 8);
    let mut total = Aggregate::new();
    for (_, agg) in &shards {
        total.merge(agg);
    }
    assert_eq!(total, expected);
    assert_eq!(second.read().await.expect("read").totals(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_write_per_item_and_one_transaction_per_push() {
    let store = server().fresh_store("writes", |_| {}).await;
    // Three metrics: a counter with two series, a histogram, and two of pum's per-push counters
    // (which share one item).
    let mut d = Aggregate::new();
    d.add_counter(SeriesKey::new("a_total", &[("k", "x")]), 1_000_000);
    d.add_counter(SeriesKey::new("a_total", &[("k", "y")]), 2_000_000);
    d.observe_all(
        SeriesKey::new("b_seconds", &[]),
        5,
        [(1, 300_000), (4, 9_000_000)],
    );
    d.add_counter(
        SeriesKey::new("pum_pushes_total", &[("result", "accepted")]),
        1_000_000,
    );
    d.add_counter(
        SeriesKey::new("metrics_aggregator_record_total", &[]),
        1_000_000,
    );
    let list = allowlist();
    store
        .merge(&push(&list, Some(&batch_id(1)), d.clone()))
        .await
        .expect("merge");
    let stats = store.stats();
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);
    // a_total, b_seconds, the shared item, the dedupe item: 4 writes for 4 distinct metrics.
    assert_eq!(stats.item_writes.load(Ordering::Relaxed), 4);
    assert_eq!(store.read().await.expect("read").totals(), d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_pushes_are_chunked_and_still_exact() {
    let store = server().fresh_store("huge", |s| s.shards = 2).await;
    let mut d = Aggregate::new();
    // 600 series of one metric: three chunks of one group, on three items.
    for i in 0..600 {
        d.add_counter(SeriesKey::new("many_total", &[("k", &format!("v{i}"))]), i);
    }
    // 120 metrics: more items than one transaction holds.
    for m in 0..120 {
        d.observe_all(
            SeriesKey::new(format!("m{m}_seconds"), &[]),
            3,
            [(m % 3, 7)],
        );
    }
    let list = allowlist();
    let id = batch_id(1);
    let first = store.merge(&push(&list, Some(&id), d.clone())).await;
    assert_eq!(first.expect("merge"), Merged::Applied);
    let again = store.merge(&push(&list, Some(&id), d.clone())).await;
    assert_eq!(again.expect("a replay"), Merged::Replayed);
    assert_eq!(store.read().await.expect("read").totals(), d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn type_changes_and_bucket_changes_read_back_as_the_core_merges_them() {
    let store = server().fresh_store("types", |s| s.shards = 1).await;
    let key = SeriesKey::new("x", &[]);
    let mut counter = Aggregate::new();
    counter.add_counter(key.clone(), 5);
    let mut hist = Aggregate::new();
    hist.add_value(
        key.clone(),
        SeriesValue::Histogram {
            buckets: vec![1, 0, 0],
            sum_micros: 3,
        },
    );
    let mut longer = Aggregate::new();
    longer.add_value(
        key.clone(),
        SeriesValue::Histogram {
            buckets: vec![0, 0, 0, 0, 2],
            sum_micros: 4,
        },
    );
    let list = allowlist();
    let mut expected = Aggregate::new();
    for d in [&counter, &hist, &longer] {
        store
            .merge(&push(&list, None, d.clone()))
            .await
            .expect("merge");
        expected.merge(d);
    }
    assert_eq!(store.read().await.expect("read").totals(), expected);
}
