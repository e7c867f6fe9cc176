//! # pum-dynamodb: pum's aggregates in DynamoDB
//!
//! [`DynamoStore`] implements the core's [`Store`] port for the AWS Lambda ingest, and reads the
//! same tables for `pum-collector serve --source dynamodb`. It lives in its own crate rather than
//! behind a feature of `pum-shared` so that the core's builds (wasm32 included, and every other
//! engineer's `cargo build`) never unify an AWS feature in, and so that the Lambda and the
//! collector share one implementation.
//!
//! ## Tables and items
//!
//! Two tables, each with a string partition key `pk` and nothing else:
//!
//! - the **aggregates** table: one item per (writer region, shard, group); a group is one
//!   metric, or the shared group of pum's per-push counters (see [`encode`] for the key and
//!   attribute layout). Each series component is a top-level number attribute that pushes `ADD`
//!   to.
//! - the **batches** table: one small marker item per applied push (`pk` = the push's token,
//!   `expires` = epoch seconds for DynamoDB's TTL). The collector never reads it, so it costs no
//!   scan.
//!
//! ## One push, one transaction
//!
//! [`Store::merge`] writes a push's whole delta in one `TransactWriteItems`: one `Update` per
//! item the delta touches, plus a `Put` of the push's marker conditioned on
//! `attribute_not_exists(pk)`. So:
//!
//! - **all or nothing**: a failed push changes nothing, as the core's contract asks;
//! - **retries cannot double count**: the marker is written in the same transaction as the
//!   counts, so a retry of an applied push (by the SDK after a lost answer, or by this store
//!   after a conflict) fails its condition and is recognised as already applied. The transaction
//!   also carries a `ClientRequestToken` derived from the push, which DynamoDB honours for 10
//!   minutes on top of the marker;
//! - **no hot item**: each push picks its shard from its token, so one metric's writes spread
//!   over `shards` items (each DynamoDB item takes about 1,000 write units a second);
//! - **no global-table conflicts**: the writer's region is in every key, so replicas never
//!   write the same item;
//! - **writes per push**: one item write per distinct user metric, one for pum's own per-push
//!   counters (up to four metrics), one marker: never more than the push's distinct metrics.
//!   A histogram series writes only its touched buckets, its last bucket and its sum.
//!
//! Limits: an item update is cut into chunks of at most [`MAX_TERMS_PER_UPDATE`] attributes
//! (DynamoDB's expression limits); further chunks of a group go to the next shards' items.
//! A transaction holds at most 100 items; a push that touches more (only with an allowlist of
//! about a hundred metrics or more, all in one push) is written as several transactions, each
//! atomic and idempotent on its own.
//!
//! Reading ([`DynamoStore::read_shards`], [`Store::snapshot`]) scans the aggregates table page
//! by page and sums. The collector folds each `{region}#{shard}` separately with `merge_max`, so
//! an eventually consistent read can never make a counter go backwards.
//!
//! ## Overflow
//!
//! A push's `ADD`s are its fold: they commit in the transaction that acknowledges it, so this
//! store does not check totals before writing (that would cost a read per push) and never
//! answers [`StoreError::Overflow`]. A DynamoDB number holds 38 significant digits (about 1e38
//! millionths, 1e32 units), less than a `u128` (3.4e38). What keeps that out of reach is the
//! start-up check the Lambda runs ([`pum_shared::Limits::check`] in `Config::from_env`): no metric
//! may accept values for which [`pum_shared::limits::PLAUSIBLE_PUSHES`] (10^12) pushes could take
//! a total past 3.4e38, and each item holds only one region's share of one of `shards` shards.
//! Should an `ADD` still need a 39th digit, DynamoDB refuses it (AWS documents an exception for
//! numbers past 38 digits of precision): the transaction is cancelled, the push is answered 503
//! and nothing of it is applied, so no total is ever pinned at a ceiling. Reading sums items
//! with checked arithmetic: a sum past what pum holds is reported as [`StoreError::Corrupt`],
//! never rounded down to a ceiling.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, Update,
};
use pum_shared::{Aggregate, Store, StoreError};

pub mod encode;
#[cfg(feature = "testing")]
pub mod testing;

use encode::SeriesBuilder;

/// The partition key attribute of both tables.
pub const KEY: &str = "pk";
/// The TTL attribute of the batches table (epoch seconds).
pub const EXPIRES: &str = "expires";
/// Most attributes one `Update` adds to: keeps its expression well under DynamoDB's limits
/// (4 KB of expression text, 300 operators). A realistic push adds to a few dozen at most.
pub const MAX_TERMS_PER_UPDATE: usize = 100;
/// Most items in one `TransactWriteItems`.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Attempts of one transaction when it conflicts with another on a hot item.
const CONFLICT_ATTEMPTS: u32 = 6;

/// Where and how the store writes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The aggregates table.
    pub table: String,
    /// The batches (idempotency marker) table.
    pub batch_table: String,
    /// The writer's region, put in every key it writes (`AWS_REGION` in a Lambda).
    pub region: String,
    /// Shards per metric. Default 16: each item takes about 1,000 write units a second, so a
    /// region takes about `shards * 1000 / (2 * item KB)` pushes a second of any one metric.
    pub shards: u32,
    /// How long a push's marker is kept (DynamoDB's TTL deletes it later). Default 1 hour: far
    /// longer than any retry.
    pub batch_ttl: Duration,
    /// Strongly consistent scans (twice the read units). [`Store::snapshot`] callers that must
    /// see their own writes set it; the collector needs no more than eventual consistency.
    pub consistent_reads: bool,
    /// Items per scan page; `None` lets DynamoDB fill 1 MB pages.
    pub page_size: Option<i32>,
}

impl Settings {
    /// Settings for `table` (and `{table}-batches`), written as `region`, with the defaults.
    pub fn new(table: impl Into<String>, region: impl Into<String>) -> Self {
        let table = table.into();
        Settings {
            batch_table: format!("{table}-batches"),
            table,
            region: region.into(),
            shards: 16,
            batch_ttl: Duration::from_secs(3600),
            consistent_reads: false,
            page_size: None,
        }
    }
}

/// What the store did, counted since it was created.
#[derive(Debug, Default)]
pub struct Stats {
    /// `TransactWriteItems` requests sent (retries included).
    pub transactions: AtomicU64,
    /// Item writes of the transactions that succeeded (markers included).
    pub item_writes: AtomicU64,
    /// Pushes merged (applied now).
    pub merged: AtomicU64,
    /// Pushes found already applied (a retry).
    pub already_applied: AtomicU64,
    /// Transactions retried after a conflict or throttling.
    pub retried: AtomicU64,
    /// Scan pages read.
    pub scan_pages: AtomicU64,
}

/// Builds an SDK config: TLS through rustls with ring, short timeouts (a push waits on the
/// store; a hung store must become a 503 well within the Lambda's own timeout) and the standard
/// retry mode. With `endpoint_url` (a local server), the credentials still come from the usual
/// chain: set static ones in the environment.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(7))
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// pum's aggregates in DynamoDB. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
}

/// One item write of a push: an `Update` of one group's chunk.
struct ItemUpdate {
    pk: String,
    terms: Vec<(String, u128)>,
}

impl DynamoStore {
    /// A store over an SDK client.
    pub fn new(client: Client, settings: Settings) -> Self {
        DynamoStore {
            client,
            settings: Arc::new(settings),
            stats: Arc::default(),
        }
    }

    /// A store over a client built from `config`.
    pub fn from_config(config: &SdkConfig, settings: Settings) -> Self {
        Self::new(Client::new(config), settings)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the store did so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates both tables (on-demand, TTL on the batches table). For local servers and tests;
    /// in AWS, `template.yaml` creates them.
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        for table in [&self.settings.table, &self.settings.batch_table] {
            self.client
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(KEY)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(unavailable)?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(KEY)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(unavailable)?,
                )
                .send()
                .await
                .map_err(unavailable)?;
        }
        self.client
            .update_time_to_live()
            .table_name(&self.settings.batch_table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(EXPIRES)
                    .enabled(true)
                    .build()
                    .map_err(unavailable)?,
            )
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Reads the whole aggregates table, page by page: cumulative totals per
    /// `{region}#{shard}`.
    pub async fn read_shards(&self) -> Result<Vec<(String, Aggregate)>, StoreError> {
        let mut shards: BTreeMap<String, SeriesBuilder> = BTreeMap::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.settings.table)
                .consistent_read(self.settings.consistent_reads)
                .set_limit(self.settings.page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            self.stats.scan_pages.fetch_add(1, Ordering::Relaxed);
            for item in page.items() {
                read_item(item, &mut shards)?;
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        Ok(shards
            .into_iter()
            .map(|(shard, builder)| {
                let mut agg = Aggregate::new();
                for (key, value) in builder.build() {
                    agg.add_value(key, value);
                }
                (shard, agg)
            })
            .collect())
    }

    /// Every aggregates item with its size in bytes as DynamoDB bills it (attribute names plus
    /// values), for benchmarks and the cost figures in `docs/aws.md`.
    pub async fn item_sizes(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.settings.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            for item in page.items() {
                let pk = match item.get(KEY) {
                    Some(AttributeValue::S(s)) => s.clone(),
                    _ => String::new(),
                };
                out.push((pk, item_size(item)));
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }

    /// The item writes of a push, grouped and chunked, in a deterministic order.
    fn plan(&self, token: &Token, delta: &Aggregate) -> Result<Vec<ItemUpdate>, StoreError> {
        let mut groups: BTreeMap<&str, Vec<(String, u128)>> = BTreeMap::new();
        for (key, value) in delta.iter() {
            let group = encode::group_of(key.metric());
            let terms = groups.entry(group).or_default();
            for (component, n) in encode::components(value) {
                if n > encode::MAX_NUMBER {
                    return Err(StoreError::Unavailable(format!(
                        "a value of {} exceeds DynamoDB's 38 digits",
                        key.metric()
                    )));
                }
                terms.push((encode::attribute_name(group, key, component), n));
            }
        }
        let base = token.shard(self.settings.shards.max(1));
        let mut updates = Vec::new();
        for (group, terms) in groups {
            for (j, chunk) in terms.chunks(MAX_TERMS_PER_UPDATE).enumerate() {
                // Further chunks of a group go to the next shards' items: a transaction may not
                // write one item twice, and the reader sums every shard anyway.
                let shard = base.saturating_add(u32::try_from(j).unwrap_or(u32::MAX));
                updates.push(ItemUpdate {
                    pk: encode::partition_key(&self.settings.region, shard, group),
                    terms: chunk.to_vec(),
                });
            }
        }
        Ok(updates)
    }

    fn update(&self, u: &ItemUpdate) -> Result<TransactWriteItem, StoreError> {
        let mut expression = String::from("ADD ");
        let mut names = HashMap::with_capacity(u.terms.len());
        let mut values = HashMap::with_capacity(u.terms.len());
        for (i, (name, n)) in u.terms.iter().enumerate() {
            if i > 0 {
                expression.push_str(", ");
            }
            expression.push_str(&format!("#a{i} :a{i}"));
            names.insert(format!("#a{i}"), name.clone());
            values.insert(format!(":a{i}"), AttributeValue::N(n.to_string()));
        }
        let update = Update::builder()
            .table_name(&self.settings.table)
            .key(KEY, AttributeValue::S(u.pk.clone()))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn marker(&self, marker: &str, expires: u64) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.settings.batch_table)
            .item(KEY, AttributeValue::S(marker.to_owned()))
            .item(EXPIRES, AttributeValue::N(expires.to_string()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes one transaction: `updates` and the marker, retrying conflicts. The marker is the
    /// last item, so its cancellation reason says whether the push was applied before.
    async fn transact(
        &self,
        marker: &str,
        updates: &[ItemUpdate],
        expires: u64,
    ) -> Result<(), StoreError> {
        let mut items = Vec::with_capacity(updates.len() + 1);
        for u in updates {
            items.push(self.update(u)?);
        }
        items.push(self.marker(marker, expires)?);
        let count = items.len() as u64;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            // A token per attempt: DynamoDB answers a reused token with the first outcome for 10
            // minutes, and a cancelled first attempt must not cancel the retry. Across attempts
            // the marker keeps the push exactly-once; within one attempt the SDK's own retries
            // reuse its token.
            let token = Token::of(&[marker, &attempt.to_string()]);
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(token.hex())
                .send()
                .await;
            let err = match sent {
                Ok(_) => {
                    self.stats.item_writes.fetch_add(count, Ordering::Relaxed);
                    self.stats.merged.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => e,
            };
            match classify(&err, items.len() - 1) {
                Outcome::AlreadyApplied => {
                    self.stats.already_applied.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Outcome::Retry if attempt < CONFLICT_ATTEMPTS => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt, &token)).await;
                }
                _ => {
                    tracing::warn!(error = %DisplayErrorContext(&err), "TransactWriteItems failed");
                    return Err(StoreError::Unavailable(format!(
                        "DynamoDB TransactWriteItems failed: {}",
                        DisplayErrorContext(&err)
                    )));
                }
            }
        }
    }
}

impl Store for DynamoStore {
    async fn merge(&self, batch_id: &str, delta: &Aggregate) -> Result<(), StoreError> {
        if delta.is_empty() {
            return Ok(());
        }
        let batch_id = if batch_id.is_empty() {
            random_id()
        } else {
            batch_id.to_owned()
        };
        // The token names the push in this deployment: the same batch id in another table or
        // region is another push.
        let token = Token::of(&[&self.settings.table, &self.settings.region, &batch_id]);
        let updates = self.plan(&token, delta)?;
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.settings.batch_ttl)
            .as_secs();
        let per_transaction = MAX_TRANSACTION_ITEMS - 1;
        if updates.len() <= per_transaction {
            return self.transact(&token.hex(), &updates, expires).await;
        }
        for (part, chunk) in updates.chunks(per_transaction).enumerate() {
            let marker = format!("{}-{part}", token.hex());
            self.transact(&marker, chunk, expires).await?;
        }
        Ok(())
    }

    async fn snapshot(&self) -> Result<Aggregate, StoreError> {
        let mut total = Aggregate::new();
        for (shard, agg) in self.read_shards().await? {
            total
                .try_merge(&agg)
                .map_err(|e| StoreError::Corrupt(format!("summing shard {shard}: {e}")))?;
        }
        Ok(total)
    }
}

fn read_item(
    item: &HashMap<String, AttributeValue>,
    shards: &mut BTreeMap<String, SeriesBuilder>,
) -> Result<(), StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(what);
    let pk = match item.get(KEY) {
        Some(AttributeValue::S(pk)) => pk,
        _ => return Err(corrupt("an item has no string pk".into())),
    };
    let key = encode::parse_partition_key(pk)
        .ok_or_else(|| corrupt(format!("item {pk:?}: not a pum partition key")))?;
    let builder = shards
        .entry(format!("{}#{}", key.region, key.shard))
        .or_default();
    for (name, value) in item {
        if name == KEY {
            continue;
        }
        let (series, component) = encode::parse_attribute_name(&key.group, name)
            .ok_or_else(|| corrupt(format!("item {pk:?}: attribute {name:?} is not a series")))?;
        let n = match value {
            AttributeValue::N(n) => encode::parse_number(n),
            _ => None,
        }
        .ok_or_else(|| corrupt(format!("item {pk:?}: attribute {name:?} is not a count")))?;
        builder
            .add(series, component, n)
            .map_err(|e| corrupt(format!("item {pk:?}: {e}")))?;
    }
    Ok(())
}

/// DynamoDB's billed size of an item: attribute names plus values.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => encode::number_size(n),
                    _ => 1,
                }
        })
        .sum()
}

enum Outcome {
    AlreadyApplied,
    Retry,
    Fail,
}

fn classify(err: &SdkError<TransactWriteItemsError>, marker_index: usize) -> Outcome {
    let Some(service) = err.as_service_error() else {
        return Outcome::Fail;
    };
    match service {
        TransactWriteItemsError::TransactionCanceledException(e) => {
            let reasons = e.cancellation_reasons();
            let code = |i: usize| reasons.get(i).and_then(|r| r.code()).unwrap_or("None");
            if code(marker_index) == "ConditionalCheckFailed" {
                Outcome::AlreadyApplied
            } else if reasons.iter().any(|r| {
                matches!(
                    r.code(),
                    Some(
                        "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
                    )
                )
            }) {
                Outcome::Retry
            } else {
                Outcome::Fail
            }
        }
        TransactWriteItemsError::TransactionInProgressException(_) => Outcome::Retry,
        other if other.code() == Some("ThrottlingException") => Outcome::Retry,
        _ => Outcome::Fail,
    }
}

/// Jittered exponential backoff: 10 ms, 20 ms, ... up to 320 ms, +-50%.
fn backoff(attempt: u32, token: &Token) -> Duration {
    let base = 10u64 << attempt.min(5);
    let jitter = token.0 % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// A 128-bit FNV-1a hash of a push's identity: its idempotency token, marker key and shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token(u64, u64);

impl Token {
    fn of(parts: &[&str]) -> Token {
        let mut a: u64 = 0xcbf2_9ce4_8422_2325;
        let mut b: u64 = 0x6c62_272e_07bb_0142;
        for part in parts {
            for byte in part.bytes().chain([0xff]) {
                a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
                b = (b ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
        }
        Token(mix(a), mix(b))
    }

    /// 32 hex digits: within DynamoDB's 36-character client token.
    fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.0, self.1)
    }

    fn shard(&self, shards: u32) -> u32 {
        (self.1 % u64::from(shards)) as u32
    }
}

/// splitmix64's finalizer: spreads every input bit over the low bits the shard is taken from.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A fresh id for a push that came without one.
fn random_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("r{:016x}", h.finish())
}

fn unavailable(e: impl std::error::Error) -> StoreError {
    StoreError::Unavailable(DisplayErrorContext(&e).to_string())
}

/// Prints an error with its sources (the SDK's `Display` alone says only "service error").
struct DisplayErrorContext<'a, E: ?Sized>(&'a E);

impl<E: std::error::Error + ?Sized> std::fmt::Display for DisplayErrorContext<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_and_fit_dynamodb() {
        let t = Token::of(&["table", "eu-west-1", "req-1"]);
        assert_eq!(t, Token::of(&["table", "eu-west-1", "req-1"]));
        assert_ne!(t, Token::of(&["table", "eu-west-1", "req-2"]));
        assert_ne!(t, Token::of(&["table", "eu-west-1r", "eq-1"]));
        assert_eq!(t.hex().len(), 32);
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[Token::of(&[&i.to_string()]).shard(16) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "shards spread: {seen:?}");
        assert_ne!(random_id(), random_id());
    }
}
