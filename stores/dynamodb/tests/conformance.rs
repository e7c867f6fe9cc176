//! The store conformance suite, the fold's exactness, and DynamoDB-specific properties, against
//! DynamoDB Local (Amazon's emulator, behind a proxy that counts writes: see
//! `testing/local_dynamodb.py`).
//!
//! Why this server: the ingest writes each push as one conditional `PutItem` of its log item, and
//! the fold applies the log's stream in `TransactWriteItems` conditioned on a checkpoint, both of
//! which DynamoDB Local implements with DynamoDB's conditions and cancellation reasons; it also
//! has Streams. The fold here is driven from the server's real stream records by
//! [`StreamPoller`], which stands in for Lambda's event source mapping. The concurrency in these
//! tests is real on the client side (16 tasks merging at once, 8 pushing the same batch at once);
//! a restart is a new client and a new poller (which delivers the whole stream again) on the same
//! tables, and the server itself is killed and restarted in
//! `a_batch_is_replayed_after_the_server_restarts`.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pum_dynamodb::DynamoStore;
use pum_dynamodb::fold::LogRecord;
use pum_dynamodb::testing::{FoldedStore, LocalDynamo, StreamPoller};
use pum_shared::conformance::{Harness, allowlist, batch_id, delta, push};
use pum_shared::own::without_operations;
use pum_shared::{Aggregate, Allowlist, Merged, Read, SeriesKey, Store};

/// One server for the whole test binary; each harness gets fresh tables.
fn server() -> &'static LocalDynamo {
    static SERVER: OnceLock<LocalDynamo> = OnceLock::new();
    SERVER.get_or_init(LocalDynamo::start)
}

struct Dynamo {
    shards: u32,
    page_size: Option<i32>,
    chunk: usize,
}

impl Harness for Dynamo {
    type S = FoldedStore;
    async fn open(&mut self) -> FoldedStore {
        let (shards, page_size, chunk) = (self.shards, self.page_size, self.chunk);
        let store = server()
            .fresh_store("conf", |s| {
                s.shards = shards;
                s.page_size = page_size;
                s.fold_chunk_items = chunk;
            })
            .await;
        FoldedStore::new(server(), store).await
    }
    /// The store holds no state of its own: a new client on the same tables is a restarted
    /// Lambda or collector, and a new poller delivers the whole stream to the fold again.
    async fn reopen(&mut self, store: FoldedStore) -> FoldedStore {
        let settings = store.store.settings().clone();
        drop(store);
        FoldedStore::new(server(), DynamoStore::new(server().client(), settings)).await
    }
}

mod dynamodb_store {
    use super::*;
    pum_shared::store_conformance_tests!(Dynamo {
        shards: 16,
        page_size: None,
        chunk: 99
    });
}

/// One shard (every push on the same items), two-item scan pages (pagination on every read)
/// and folds of two items a transaction (checkpoints chained across chunks).
mod dynamodb_store_one_shard_small_pages_small_chunks {
    use super::*;
    pum_shared::store_conformance_tests!(Dynamo {
        shards: 1,
        page_size: Some(2),
        chunk: 2
    });
}

/// The store's totals without the billable operations it counts in them.
async fn data(store: &impl Read) -> Aggregate {
    without_operations(&store.read().await.expect("read").totals())
}

/// Every record the stream holds so far, by shard.
async fn stream(store: &DynamoStore) -> Vec<(String, Vec<LogRecord>)> {
    StreamPoller::new(server(), store)
        .await
        .poll()
        .await
        .expect("the stream reads")
}

async fn fold_all(store: &DynamoStore, records: &[(String, Vec<LogRecord>)]) -> (usize, usize) {
    let (mut applied, mut skipped) = (0, 0);
    for (shard, recs) in records {
        let folded = store.fold(shard, recs, 1).await.expect("fold");
        applied += folded.applied;
        skipped += folded.skipped;
    }
    (applied, skipped)
}

fn expected(seeds: impl IntoIterator<Item = u64>) -> Aggregate {
    let mut total = Aggregate::new();
    for seed in seeds {
        total.merge(&delta(seed));
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_fold_exactly_in_one_pass() {
    let store = server().fresh_store("concurrent", |_| {}).await;
    let list = std::sync::Arc::new(allowlist());
    let mut handles = Vec::new();
    for t in 0..16u64 {
        let (store, list) = (store.clone(), std::sync::Arc::clone(&list));
        handles.push(tokio::spawn(async move {
            for i in 0..10 {
                let seed = t * 10 + i;
                let id = batch_id(seed);
                let batch = seed.is_multiple_of(2).then_some(&id);
                let merged = store.merge(&push(&list, batch, delta(seed))).await;
                assert_eq!(merged.expect("merge"), Merged::Applied);
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    assert!(
        data(&store).await.is_empty(),
        "nothing is in the totals before the fold"
    );
    let records = stream(&store).await;
    assert_eq!(fold_all(&store, &records).await, (160, 0));
    assert_eq!(data(&store).await, expected(0..160));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_delivered_twice_is_applied_once() {
    let store = server().fresh_store("twice", |_| {}).await;
    let list = allowlist();
    for seed in 0..30 {
        store
            .merge(&push(&list, Some(&batch_id(seed)), delta(seed)))
            .await
            .expect("merge");
    }
    let records = stream(&store).await;
    assert_eq!(fold_all(&store, &records).await, (30, 0));
    assert_eq!(fold_all(&store, &records).await, (0, 30), "delivered again");
    // A later batch that overlaps the first (re-delivered from an older position).
    for seed in 30..40 {
        store
            .merge(&push(&list, Some(&batch_id(seed)), delta(seed)))
            .await
            .expect("merge");
    }
    let records = stream(&store).await;
    assert_eq!(fold_all(&store, &records).await, (10, 30));
    assert_eq!(data(&store).await, expected(0..40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fold_killed_after_its_first_chunk_and_retried_is_exact() {
    // Three totals items per transaction (a record touches three: two metrics and pum's own
    // counters) and 16 shards: 40 pushes take many chunks.
    let store = server()
        .fresh_store("killed", |s| {
            s.fold_chunk_items = 3;
            s.shards = 16;
        })
        .await;
    let list = allowlist();
    for seed in 0..40 {
        store
            .merge(&push(&list, Some(&batch_id(seed)), delta(seed)))
            .await
            .expect("merge");
    }
    let records = stream(&store).await;
    assert_eq!(records.len(), 1, "DynamoDB Local: one stream shard");
    let (shard, recs) = &records[0];
    let first = store
        .fold_at_most(shard, recs, 1, 1)
        .await
        .expect("the first chunk");
    assert_eq!(first.chunks, 1);
    assert!(first.applied >= 1 && first.applied < 40, "{first:?}");
    let partial = data(&store).await;
    assert_ne!(partial, expected(0..40), "the fold stopped part way");
    assert_eq!(partial, expected(0..first.applied as u64));
    // The platform retries the whole batch.
    let retried = store.fold(shard, recs, 2).await.expect("the retry");
    assert_eq!(retried.applied + first.applied, 40);
    assert_eq!(retried.skipped, first.applied);
    assert!(retried.chunks > 1, "{retried:?}");
    assert_eq!(data(&store).await, expected(0..40));
    let checkpoint = store.read_checkpoint(shard).await.expect("checkpoint");
    assert_eq!(
        checkpoint.map(|c| c.sequence),
        recs.last().map(|r| r.sequence.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_replayed_after_the_server_restarts() {
    let mut server = LocalDynamo::start();
    let store = server.fresh_store("restart", |_| {}).await;
    let folded = FoldedStore::new(&server, store.clone()).await;
    let list = allowlist();
    let id = batch_id(1);
    let merged = folded.merge(&push(&list, Some(&id), delta(1))).await;
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
    let folded = FoldedStore::new(&server, store).await;
    let merged = folded.merge(&push(&list, Some(&id), delta(1))).await;
    assert_eq!(merged.expect("merge"), Merged::Replayed);
    assert_eq!(data(&folded).await, delta(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_items_live_in_the_log_table_with_their_record_and_a_ttl_of_at_least_the_window() {
    let store = server().fresh_store("log", |_| {}).await;
    let list = allowlist();
    let id = batch_id(7);
    let mut p = push(&list, Some(&id), delta(7));
    let now_secs = p.now_ms / 1000;
    store.merge(&p).await.expect("merge");
    p.batch = None;
    store.merge(&p).await.expect("merge");
    let log = store
        .client()
        .scan()
        .table_name(&store.settings().log_table)
        .consistent_read(true)
        .send()
        .await
        .expect("scan");
    let mut keys = Vec::new();
    for item in log.items() {
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
        assert_eq!(item["region"].as_s().ok(), Some(&store.settings().region));
        let record = item["record"].as_b().expect("a binary record");
        let decoded = pum_shared::record::decode(record.as_ref(), &list).expect("decodes");
        assert_eq!(without_operations(&decoded.delta), delta(7));
        let size = pum_dynamodb::item_size(item);
        assert!(size < 1024, "{key}: one write unit, {size} bytes");
        keys.push(key);
    }
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].starts_with('#'), "a push without an id: {keys:?}");
    assert_eq!(keys[1], id.as_str());
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name(&store.settings().log_table)
        .send()
        .await
        .expect("describe ttl");
    let ttl = ttl.time_to_live_description().expect("a TTL");
    assert_eq!(ttl.attribute_name(), Some("expires"));
    // The totals table holds series and nothing per push.
    let records = stream(&store).await;
    fold_all(&store, &records).await;
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
    let other = Allowlist::example();
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
    // One fold serves both regions' log items, each into its own region's items.
    let records = stream(&first).await;
    assert_eq!(fold_all(&first, &records).await, (40, 0));
    let shards = first.read().await.expect("read").shards;
    assert!(shards.iter().any(|(s, _)| s.starts_with("eu-west-1#")));
    assert!(shards.iter().any(|(s, _)| s.starts_with("us-east-1#")));
    assert!(shards.len() > 2, "pushes spread over shards: {shards:?}");
    assert!(shards.len() <= 8);
    let mut total = Aggregate::new();
    for (_, agg) in &shards {
        total.merge(agg);
    }
    assert_eq!(without_operations(&total), expected);
    assert_eq!(data(&second).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_log_write_per_push_and_one_fold_transaction_per_batch() {
    let store = server().fresh_store("writes", |_| {}).await;
    let list = allowlist();
    for seed in 0..20 {
        store
            .merge(&push(&list, Some(&batch_id(seed)), delta(seed)))
            .await
            .expect("merge");
    }
    let stats = store.stats();
    assert_eq!(stats.log_writes.load(Ordering::Relaxed), 20);
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 0);
    // 20 pushes over 16 shards of two metrics: at most 32 totals items, one transaction.
    let records = stream(&store).await;
    assert_eq!(fold_all(&store, &records).await, (20, 0));
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);
    let items = stats.item_writes.load(Ordering::Relaxed);
    assert!((3..=33).contains(&items), "{items} item writes");
    assert_eq!(data(&store).await, expected(0..20));
}

/// An allowlist with one metric of 600 label values and 120 histograms: a push can touch more
/// totals items than one transaction holds.
fn huge_allowlist() -> Allowlist {
    let values: Vec<String> = (0..600).map(|i| format!("\"v{i}\"")).collect();
    let mut metrics = vec![format!(
        r#"{{"name": "many_total", "help": "Many.", "type": "counter",
            "labels": [{{"name": "k", "allowedValues": [{}]}}]}}"#,
        values.join(",")
    )];
    for m in 0..120 {
        metrics.push(format!(
            r#"{{"name": "m{m}_seconds", "help": "M.", "type": "histogram", "buckets": [1, 2]}}"#
        ));
    }
    let text = format!(r#"{{"allowedMetrics": [{}]}}"#, metrics.join(","));
    Allowlist::compile([("huge", text.as_str())], false).expect("compiles")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_pushes_are_folded_in_parts_and_still_exact() {
    let store = server().fresh_store("huge", |s| s.shards = 2).await;
    let mut d = Aggregate::new();
    // 600 series of one metric: six items of one group.
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
    let list = huge_allowlist();
    let id = batch_id(1);
    let first = store.merge(&push(&list, Some(&id), d.clone())).await;
    assert_eq!(first.expect("merge"), Merged::Applied);
    let again = store.merge(&push(&list, Some(&id), d.clone())).await;
    assert_eq!(again.expect("a replay"), Merged::Replayed);
    store
        .merge(&push(&list, Some(&batch_id(2)), d.clone()))
        .await
        .expect("merge");
    let records = stream(&store).await;
    let (shard, recs) = &records[0];
    // Killed after the first part of the first record, then retried: still exact.
    let part = store.fold_at_most(shard, recs, 1, 1).await.expect("fold");
    assert_eq!((part.applied, part.chunks), (0, 1));
    let rest = store.fold(shard, recs, 2).await.expect("fold");
    assert_eq!(rest.applied, 2);
    assert!(rest.chunks >= 3, "{rest:?}");
    let mut want = d.clone();
    want.merge(&d);
    assert_eq!(data(&store).await, want);
    assert_eq!(store.fold(shard, recs, 3).await.expect("fold").skipped, 2);
    assert_eq!(data(&store).await, want);
}

/// The store's `pum_store_operations_total`, by op.
async fn operations(store: &DynamoStore) -> std::collections::BTreeMap<String, f64> {
    pum_shared::own::operations_in(&store.read().await.expect("read").totals())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billable_operations_are_counted_in_the_totals_they_cost() {
    let store = server().fresh_store("operations", |_| {}).await;
    let list = allowlist();
    store.describe(&list).await.expect("describe");
    let description = store.item_sizes().await.expect("items")[0].1;
    let ids: Vec<_> = (0..6).map(batch_id).collect();
    for (n, id) in ids.iter().take(5).enumerate() {
        let p = push(&list, Some(id), delta(n as u64));
        assert_eq!(store.merge(&p).await.expect("merge"), Merged::Applied);
    }
    // A batch sent again: its put is refused by the condition, and billed.
    let again = push(&list, Some(&ids[0]), delta(0));
    assert_eq!(store.merge(&again).await.expect("merge"), Merged::Replayed);
    // What the Lambda adapter counts for its invocations.
    store
        .operations()
        .count(pum_shared::own::Op::LambdaInvocations, 6.0);
    let stats = store.stats();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    for (shard, recs) in stream(&store).await {
        store.fold(&shard, &recs, now_ms).await.expect("fold");
    }
    let first_fold = stats.item_writes.load(Ordering::Relaxed);
    // The fold's own writes travel with the next write it makes.
    let last = push(&list, Some(&ids[5]), delta(5));
    assert_eq!(store.merge(&last).await.expect("merge"), Merged::Applied);
    for (shard, recs) in stream(&store).await {
        store.fold(&shard, &recs, now_ms).await.expect("fold");
    }
    let ops = operations(&store).await;
    // Every item here is under 1 KB but the allowlist's description: 1 unit per KB, 2 for a
    // transaction's item.
    let want = description.div_ceil(1024) + 6 + 1 + 2 * first_fold as usize;
    assert_eq!(
        ops.get("dynamodb_write_units"),
        Some(&(want as f64)),
        "{ops:?}"
    );
    assert_eq!(ops.get("lambda_invocations"), Some(&6.0), "{ops:?}");
    // Each fold read its stream shard's checkpoint (strongly consistent: 1 unit); the first
    // fold's reads are carried by the second's transaction.
    let reads = ops.get("dynamodb_read_units").copied().unwrap_or(0.0);
    assert!(reads >= 1.0, "{ops:?}");
    assert_eq!(data(&store).await, expected(0..6));
    // The fold's lag: from the newest push it applied being accepted (the pushes' fixed time)
    // to the fold.
    let lag = store.read().await.expect("read").fold_lag.expect("a lag");
    let want = Duration::from_millis(now_ms - push(&list, None, Aggregate::new()).now_ms);
    assert!(
        lag.abs_diff(want) < Duration::from_secs(2),
        "lag {lag:?}, want about {want:?}"
    );
}

/// Puts a log item as the ingest would, with `record` as its record.
async fn put_log_item(store: &DynamoStore, key: &str, record: Vec<u8>) {
    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::AttributeValue;
    store
        .client()
        .put_item()
        .table_name(&store.settings().log_table)
        .item(pum_dynamodb::KEY, AttributeValue::S(key.to_owned()))
        .item(pum_dynamodb::RECORD, AttributeValue::B(Blob::new(record)))
        .item(
            pum_dynamodb::REGION,
            AttributeValue::S(store.settings().region.clone()),
        )
        .send()
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_that_does_not_decode_is_dropped_and_counted_and_another_version_waits() {
    let store = server().fresh_store("undecodable", |_| {}).await;
    let list = allowlist();
    let ids: Vec<_> = (0..3).map(batch_id).collect();
    let first = push(&list, Some(&ids[0]), delta(0));
    store.merge(&first).await.expect("merge");
    // This allowlist's header, then bytes that are no series.
    let mut corrupt = vec![pum_shared::record::VERSION];
    corrupt.extend(list.fingerprint().to_le_bytes());
    corrupt.extend([0xff, 0xff, 0xff]);
    put_log_item(&store, "corrupted-item-0001", corrupt).await;
    let second = push(&list, Some(&ids[1]), delta(1));
    store.merge(&second).await.expect("merge");
    let records = stream(&store).await;
    fold_all(&store, &records).await;
    let mut want = expected(0..2);
    want.add_counter(
        SeriesKey::new(pum_shared::own::LOG_RECORDS_DROPPED, &[]),
        1_000_000,
    );
    assert_eq!(data(&store).await, want);
    assert_eq!(store.stats().fold_dropped.load(Ordering::Relaxed), 1);
    // A record of a version this fold does not read: the fold fails and applies nothing, so
    // that the platform retries it until the fold is updated.
    let mut newer = vec![pum_shared::record::VERSION + 1];
    newer.extend(list.fingerprint().to_le_bytes());
    put_log_item(&store, "newer-version-0001", newer).await;
    let third = push(&list, Some(&ids[2]), delta(2));
    store.merge(&third).await.expect("merge");
    for (shard, recs) in stream(&store).await {
        let e = store.fold(&shard, &recs, 3).await.expect_err("waits");
        assert!(e.to_string().contains("version"), "{e}");
    }
    assert_eq!(store.stats().fold_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(data(&store).await, want);
}
