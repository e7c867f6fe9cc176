//! # pum-dynamodb: pum's aggregates in DynamoDB
//!
//! [`DynamoStore`] implements the core's [`Store`] and [`Read`] ports for the AWS Lambda ingest,
//! and reads the same table for `pum-collector serve --source dynamodb`. It lives in its own crate
//! rather than behind a feature of `pum-shared` so that the core's builds (wasm32 included) never
//! unify an AWS feature in, and so that the Lambda and the collector share one implementation.
//!
//! ## Tables and items
//!
//! Two tables, each with a string partition key `pk` and nothing else:
//!
//! - the **aggregates** table, which the collector scans:
//!   - one item per (writer region, shard, group); a group is one metric, or the shared group of
//!     pum's per-push counters (see [`encode`] for the key and attribute layout). Each series
//!     component is a top-level number attribute that pushes `ADD` to;
//!   - one item per allowlist an ingest validated against ([`Store::describe`]): `pk` =
//!     `allowlist:{fingerprint as 16 hex digits}`, `description` = the allowlist's canonical JSON
//!     ([`Allowlist::description`]). It is written once, by a conditional put, when an execution
//!     environment stores its first push; the collector renders from it.
//! - the **batches** table: one small dedupe item per push (`pk` = the push's batch id, `expires`
//!   = epoch seconds for DynamoDB's TTL, [`pum_shared::batch::WINDOW_MS`] after the push, by the
//!   later of the push's clock and the store's). It is never scanned: the collector's reads grow with series, not with pushes.
//!
//! ## One push, one transaction
//!
//! [`Store::merge`] writes a push's whole delta in one `TransactWriteItems`: one `Update` per
//! item the delta touches, plus a `Put` of the push's dedupe item conditioned on
//! `attribute_not_exists(pk)`. So:
//!
//! - **all or nothing**: a failed push changes nothing, as the core's contract asks;
//! - **a batch counts once**: a push the client named (`POST /record?batch=ID`) is keyed by its
//!   id, so the same batch again, sent in sequence, at the same time from several execution
//!   environments, or after any restart, fails the condition: nothing is added and the merge
//!   answers [`Merged::Replayed`]. DynamoDB's TTL deletes the item some time after `expires`
//!   (usually within days), so a batch is applied at most once for at least the window;
//! - **retries cannot double count**: a push without an id gets a random one, so the store's
//!   own retries of it (by the SDK after a lost answer, or by this store after a conflict) are
//!   recognised too. The transaction also carries a `ClientRequestToken`, which DynamoDB honours
//!   for 10 minutes on top of the dedupe item;
//! - **no hot item**: each push picks its shard from its id, so one metric's writes spread
//!   over `shards` items (each DynamoDB item takes about 1,000 write units a second);
//! - **no global-table conflicts**: the writer's region is in every aggregates key, so replicas
//!   never write the same item;
//! - **writes per push**: one item write per distinct user metric, one for pum's own per-push
//!   counters (up to four metrics), one dedupe item. A histogram series writes only its touched
//!   buckets, its last bucket and its sum.
//!
//! Limits: an item update is cut into chunks of at most [`MAX_TERMS_PER_UPDATE`] attributes
//! (DynamoDB's expression limits); further chunks of a group go to the next shards' items.
//! A transaction holds at most 100 items; a push that touches more (only with an allowlist of
//! about a hundred metrics or more, all in one push) is written as several transactions, each
//! atomic and applied once on its own (dedupe items `{id}#1`, `{id}#2`, ...).
//!
//! Reading ([`Read::read`]) scans the aggregates table page by page: the allowlists, and the
//! totals of each `{region}#{shard}`. The collector folds each shard separately with
//! `merge_max`, so an eventually consistent read can never make a counter go backwards.
//!
//! ## Overflow
//!
//! A push's `ADD`s are its fold: they commit in the transaction that acknowledges it, so this
//! store does not check totals before writing (that would cost a read per push) and never
//! answers [`StoreError::Overflow`]. A DynamoDB number holds 38 significant digits (about 1e38
//! millionths, 1e32 units), less than a `u128` (3.4e38). What keeps that out of reach is the
//! start-up check every ingest runs ([`pum_shared::Limits::check`]): no metric may accept values
//! for which [`pum_shared::limits::PLAUSIBLE_PUSHES`] (10^12) pushes could take a total past
//! 3.4e38, and each item holds only one region's share of one of `shards` shards. Should an
//! `ADD` still need a 39th digit, DynamoDB refuses it: the transaction is cancelled, the push is
//! answered 503 and nothing of it is applied, so no total is ever pinned at a ceiling. Reading
//! sums items with checked arithmetic: a sum past what pum holds is reported as
//! [`StoreError::Corrupt`], never rounded down to a ceiling.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use pum_shared::batch::WINDOW_MS;
use pum_shared::store::{Merged, Push, Read, Store, Stored};
use pum_shared::{Allowlist, StoreError};

pub mod encode;
mod read;
#[cfg(feature = "testing")]
pub mod testing;
mod write;

pub use read::item_size;

/// The partition key attribute of both tables.
pub const KEY: &str = "pk";
/// The TTL attribute of the batches table (epoch seconds).
pub const EXPIRES: &str = "expires";
/// The attribute of an allowlist item that holds its description.
pub const DESCRIPTION: &str = "description";
/// The start of an allowlist item's partition key; the fingerprint follows.
pub const ALLOWLIST_PREFIX: &str = "allowlist:";
/// Most attributes one `Update` adds to: keeps its expression well under DynamoDB's limits
/// (4 KB of expression text, 300 operators). A realistic push adds to a few dozen at most.
pub const MAX_TERMS_PER_UPDATE: usize = 100;
/// Most items in one `TransactWriteItems`.
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// Where and how the store writes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The aggregates table.
    pub table: String,
    /// The batches (dedupe) table.
    pub batch_table: String,
    /// The writer's region, put in every key it writes (`AWS_REGION` in a Lambda).
    pub region: String,
    /// Shards per metric. Default 16: each item takes about 1,000 write units a second, so a
    /// region takes about `shards * 1000 / (2 * item KB)` pushes a second of any one metric.
    pub shards: u32,
    /// How long after a push its dedupe item expires (DynamoDB's TTL deletes it later). Default
    /// [`WINDOW_MS`], one hour: the window within which a batch id is applied at most once. A
    /// shorter one would break that promise.
    pub batch_ttl: Duration,
    /// Strongly consistent scans (twice the read units), for readers that must see their own
    /// writes; the collector needs no more than eventual consistency.
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
            batch_ttl: Duration::from_millis(WINDOW_MS),
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
    /// Item writes of the transactions that succeeded (dedupe items included).
    pub item_writes: AtomicU64,
    /// Pushes applied.
    pub applied: AtomicU64,
    /// Pushes found applied before (a batch sent again, or a retry).
    pub replayed: AtomicU64,
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
}

impl Read for DynamoStore {
    async fn read(&self) -> Result<Stored, StoreError> {
        self.scan().await
    }
}

impl Store for DynamoStore {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        if push.delta.is_empty() && push.batch.is_none() {
            return Ok(Merged::Applied);
        }
        self.write_push(push).await
    }

    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        self.put_description(allowlist).await
    }
}

/// The partition key of an allowlist's item.
pub fn allowlist_key(allowlist: &Allowlist) -> String {
    format!("{ALLOWLIST_PREFIX}{:016x}", allowlist.fingerprint())
}

fn attribute_s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
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
