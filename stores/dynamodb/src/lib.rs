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
//! - the **log** table: one small item per push, written by the ingest ([`Store::merge`]) with
//!   one non-transactional conditional `PutItem` (one write unit): `pk` = the push's batch id (a
//!   random key for a push without one), `record` = the push's delta record
//!   ([`pum_shared::record`], binary, a few hundred bytes), `region` = the writer's region,
//!   `expires` = epoch seconds for DynamoDB's TTL, [`pum_shared::batch::WINDOW_MS`] after the push
//!   (by the later of the push's clock and the store's). Its stream (`NEW_IMAGE`) feeds the fold.
//!   It is never scanned.
//! - the **totals** table, which the collector scans:
//!   - one item per (writer region, group), or a few for a group whose allowlist allows more
//!     series than one item should hold ([`encode::items_for_group`]); a group is one metric, or
//!     the shared group of pum's own counters (see [`encode`] for the key and attribute layout).
//!     Each series component is a top-level number attribute that the fold `ADD`s to;
//!   - one item per allowlist an ingest validated against ([`Store::describe`]): `pk` =
//!     `allowlist:{fingerprint as 16 hex digits}`, `description` = the allowlist's canonical JSON
//!     ([`Allowlist::description`]). It is written once, by a conditional put; the fold decodes
//!     records with it and the collector renders from it;
//!   - one checkpoint per stream shard the fold has applied (`checkpoint:{shard id}`, see
//!     [`fold`]), which expires two days after its shard's last fold.
//!
//! ## One push, one write
//!
//! [`Store::merge`] writes the push's log item conditioned on `attribute_not_exists(pk)`. So:
//!
//! - **a batch counts once**: a push the client named (`POST /record?batch=ID`) is keyed by its
//!   id, so the same batch again, sent in sequence, at the same time from several execution
//!   environments, or after any restart, fails the condition: nothing is written and the merge
//!   answers [`Merged::Replayed`]. DynamoDB's TTL deletes the item some time after `expires`
//!   (usually within days), so a batch is applied at most once for at least the window;
//! - **retries cannot double count**: a push without an id gets a random key, so the SDK's own
//!   retry of its write after a lost answer fails the condition too;
//! - **all or nothing**: the push is one item; the fold applies each log item whole, exactly
//!   once ([`fold`]), so a push shows in the totals after the fold's batching window;
//! - **one write unit per push**: the item is under 1 KB for any realistic push.
//!
//! The fold sums each stream batch per totals item and writes the sums with `ADD`, so the
//! totals items take writes per fold batch, not per push: each region writes only its own items
//! (no global-table conflicts), one item per metric (`shards` items, with a push's share picked
//! from its key, if raised: a fold is the only writer of its stream shard, so one item takes
//! every stream shard's folds with room to spare).
//!
//! Reading ([`Read::read`]) scans the totals table page by page: the allowlists, and the
//! totals of each `{region}#{shard}`. The collector folds each shard separately with
//! `merge_max`, so an eventually consistent read can never make a counter go backwards.
//!
//! ## Overflow
//!
//! A push is acknowledged when its log item is written, before it is folded, so this store does
//! not check totals before writing (that would cost a read per push) and never answers
//! [`StoreError::Overflow`]. A DynamoDB number holds 38 significant digits (about 1e38
//! millionths, 1e32 units), less than a `u128` (3.4e38). What keeps that out of reach is the
//! start-up check every ingest runs ([`pum_shared::Limits::check`]): no metric may accept values
//! for which [`pum_shared::limits::PLAUSIBLE_PUSHES`] (10^12) pushes could take a total past
//! 3.4e38, and each item holds only one region's share of one of `shards` shards. Should an
//! `ADD` still need a 39th digit, DynamoDB refuses it: the fold's transaction is cancelled and
//! nothing of it is applied, so no total is ever pinned at a ceiling (the fold then fails that
//! batch until an operator steps in). Reading
//! sums items with checked arithmetic: a sum past what pum holds is reported as
//! [`StoreError::Corrupt`], never rounded down to a ceiling.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use pum_shared::batch::WINDOW_MS;
use pum_shared::own::Operations;
use pum_shared::store::{Merged, Push, Read, Store, Stored};
use pum_shared::{Allowlist, StoreError};

pub mod encode;
pub mod fold;
mod read;
#[cfg(feature = "testing")]
pub mod testing;
mod write;

pub use read::{item_size, write_units};

/// The partition key attribute of both tables.
pub const KEY: &str = "pk";
/// The TTL attribute of the log table (epoch seconds).
pub const EXPIRES: &str = "expires";
/// The attribute of a log item that holds the push's delta record (binary).
pub const RECORD: &str = "record";
/// The attribute of a log item that names the writer's region.
pub const REGION: &str = "region";
/// The start of a fold checkpoint's partition key; the stream shard's id follows.
pub const CHECKPOINT_PREFIX: &str = "checkpoint:";
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
    /// The totals table.
    pub table: String,
    /// The log table, whose stream the fold consumes.
    pub log_table: String,
    /// The writer's region, put in every key it writes (`AWS_REGION` in a Lambda).
    pub region: String,
    /// Totals items per metric and region the fold spreads pushes over. Default 1: an item is
    /// written once per fold invocation of each stream shard, far below the 1,000 write units a
    /// second one item takes; more items only make each fold write more.
    pub shards: u32,
    /// How long after a push its log item expires (DynamoDB's TTL deletes it later). Default
    /// [`WINDOW_MS`], one hour: the window within which a batch id is applied at most once. A
    /// shorter one would break that promise.
    pub batch_ttl: Duration,
    /// Strongly consistent scans (twice the read units), for readers that must see their own
    /// writes; the collector needs no more than eventual consistency.
    pub consistent_reads: bool,
    /// Items per scan page; `None` lets DynamoDB fill 1 MB pages.
    pub page_size: Option<i32>,
    /// Most totals items the fold writes in one transaction, beside its checkpoint. Default
    /// [`MAX_TRANSACTION_ITEMS`] - 1; tests lower it to make a fold take several transactions.
    pub fold_chunk_items: usize,
}

impl Settings {
    /// Settings for `table` (and `{table}-log`), written as `region`, with the defaults.
    pub fn new(table: impl Into<String>, region: impl Into<String>) -> Self {
        let table = table.into();
        Settings {
            log_table: format!("{table}-log"),
            table,
            region: region.into(),
            shards: 1,
            batch_ttl: Duration::from_millis(WINDOW_MS),
            consistent_reads: false,
            page_size: None,
            fold_chunk_items: MAX_TRANSACTION_ITEMS - 1,
        }
    }
}

/// What the store did, counted since it was created.
#[derive(Debug, Default)]
pub struct Stats {
    /// Log items written (one per push applied).
    pub log_writes: AtomicU64,
    /// Pushes applied.
    pub applied: AtomicU64,
    /// Pushes found applied before (a batch sent again, or a retry).
    pub replayed: AtomicU64,
    /// The fold's `TransactWriteItems` requests sent (retries included).
    pub transactions: AtomicU64,
    /// Item writes of the fold's transactions that succeeded (checkpoints included).
    pub item_writes: AtomicU64,
    /// Log records the fold applied.
    pub folded: AtomicU64,
    /// Log records the fold found applied before (a batch delivered again).
    pub fold_skipped: AtomicU64,
    /// Log records the fold could not decode and skipped.
    pub fold_dropped: AtomicU64,
    /// Fold transactions retried after a conflict or throttling.
    pub retried: AtomicU64,
    /// Scan pages read.
    pub scan_pages: AtomicU64,
}

/// The SDK's HTTP client: rustls with ring (no OpenSSL to link).
pub fn http_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Builds an SDK config: TLS through rustls with ring, short timeouts (a push waits on the
/// store; a hung store must become a 503 well within the Lambda's own timeout) and the standard
/// retry mode. With `endpoint_url` (a local server), the credentials still come from the usual
/// chain: set static ones in the environment.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
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
    /// Allowlists described (by this process) or read back (by the fold), by fingerprint.
    allowlists: Arc<Mutex<HashMap<u64, Arc<Allowlist>>>>,
    /// Billable operations not yet written: carried by the next log item (the ingest) or fold
    /// transaction (the fold) into the totals.
    ops: Arc<Operations>,
}

impl DynamoStore {
    /// A store over an SDK client.
    pub fn new(client: Client, settings: Settings) -> Self {
        DynamoStore {
            client,
            settings: Arc::new(settings),
            stats: Arc::default(),
            allowlists: Arc::default(),
            ops: Arc::default(),
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

    /// Billable operations counted and not yet written. The Lambda functions count their own
    /// invocations here; the store counts its DynamoDB units itself.
    pub fn operations(&self) -> &Operations {
        &self.ops
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates both tables (on-demand; TTL and a `NEW_IMAGE` stream on the log table). For local servers and tests;
    /// in AWS, `template.yaml` creates them.
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        for table in [&self.settings.table, &self.settings.log_table] {
            let stream = (table == &self.settings.log_table).then(|| {
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
                    .build()
            });
            self.client
                .create_table()
                .table_name(table)
                .set_stream_specification(stream.transpose().map_err(unavailable)?)
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
        // Log items expire after the batch window, checkpoints two days after their last fold.
        for table in [&self.settings.log_table, &self.settings.table] {
            self.client
                .update_time_to_live()
                .table_name(table)
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
        }
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
