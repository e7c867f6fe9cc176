//! The fold: the log table's stream, merged into the totals exactly once.
//!
//! The platform (a DynamoDB Streams event source mapping in AWS, a local poller in tests) hands
//! the fold the log items inserted into one stream shard, in the shard's order, in batches; it
//! may hand a batch again (a retry after an error or a timeout), and a function may die after
//! writing part of a batch. [`DynamoStore::fold`] applies each record once all the same:
//!
//! 1. It reads the shard's **checkpoint** (`checkpoint:{shard id}` in the totals table, read
//!    strongly consistently): the position of the last record applied. Records at or before it
//!    were applied and are skipped. Positions are sequence numbers, compared as the big integers
//!    they are (up to 40 digits; a string comparison would be wrong across lengths).
//! 2. It decodes every other `INSERT` with the allowlist of its fingerprint (the
//!    `allowlist:{fingerprint}` item, read once per process) and sums the records per totals
//!    item: one `ADD` per item touched, however many pushes touched it.
//! 3. It writes the sums in chunks of at most [`crate::Settings::fold_chunk_items`] items (99:
//!    one `TransactWriteItems` holds 100), each chunk whole records, in order. Every chunk's
//!    transaction also puts the checkpoint at the chunk's last record, **conditioned on the
//!    checkpoint being exactly what the previous chunk left** (or absent, for a shard's first).
//!    A chunk thus commits with its position or not at all; a fold that dies between chunks
//!    leaves the checkpoint at the last chunk it wrote, and the retry skips up to there.
//! 4. A chunk whose condition fails was raced by another fold of the same records (a
//!    re-delivery overlapping a slow invocation): the fold reads the checkpoint again and starts
//!    over from it, skipping whatever the other applied.
//!
//! A record too big for one chunk alone (a push touching more than 99 items: only with an
//! allowlist of about a hundred metrics, all in one push) is cut into parts; the checkpoint then
//! also names how many parts of the record at its sequence number are applied.
//!
//! A record that does not decode (a corrupted item: the ingest writes only what it encoded) is
//! skipped rather than stop the fold of every push after it: it adds one to
//! `pum_log_records_dropped_total` in the transaction whose checkpoint moves past it, and is
//! logged with its key. A record of another version (written by a newer ingest before this fold
//! was updated) is not: the fold fails, and the platform retries the batch until it is updated.
//!
//! Removals (DynamoDB's TTL deleting old log items) and modifications are ignored: only an
//! insert is a push.
//!
//! The checkpoint also holds when it was written (`folded_ms`) and when the last record it
//! applied was accepted (`record_secs`), from which the collector can tell the fold's lag.
//!
//! **Which shard**: Lambda's DynamoDB stream events do not name the stream shard of their
//! records, except with a tumbling window (`TumblingWindowInSeconds` on the event source
//! mapping), whose events carry `shardId`: the fold's mapping sets one for that reason only.

use std::cmp::Ordering as Cmp;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnConsumedCapacity, TransactWriteItem, Update,
};
use pum_shared::own::{self, Op, Operations};
use pum_shared::{Allowlist, SeriesKey, StoreError, record};

use crate::encode::Component;
use crate::write::{backoff, fnv1a, random_u64};
use crate::{
    CHECKPOINT_PREFIX, DESCRIPTION, DisplayErrorContext, DynamoStore, EXPIRES, KEY,
    MAX_TERMS_PER_UPDATE, MAX_TRANSACTION_ITEMS, attribute_s, encode, unavailable,
};

/// How long a checkpoint outlives its shard's last fold before DynamoDB's TTL deletes it: twice
/// a stream's 24-hour retention, after which no record of the shard can come again. Stream shards
/// are replaced every few hours, so checkpoints of closed ones would otherwise pile up.
const CHECKPOINT_TTL_SECS: u64 = 2 * 24 * 3600;
/// Attempts of one chunk when it conflicts with another transaction or is throttled.
const CONFLICT_ATTEMPTS: u32 = 6;
/// Times a fold starts over from a checkpoint that moved under it.
const RESTARTS: u32 = 3;

/// The checkpoint attribute holding the last applied sequence number.
pub const CHECKPOINT_SEQUENCE: &str = "seq";
/// The checkpoint attribute holding how many parts of the record at `seq` are applied (0: all).
pub const CHECKPOINT_PART: &str = "part";
/// The checkpoint attribute holding when it was written, Unix milliseconds.
pub const CHECKPOINT_FOLDED_MS: &str = "folded_ms";
/// The checkpoint attribute holding when the last applied record was accepted, Unix seconds.
pub const CHECKPOINT_RECORD_SECS: &str = "record_secs";

/// One record of the log table's stream, as the fold needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The stream's sequence number (decimal digits).
    pub sequence: String,
    /// Whether the record is an insert (a push); removals and modifications are ignored.
    pub insert: bool,
    /// The log item's key (the batch id, or the random key of a push without one).
    pub key: String,
    /// The writer's region (the log item's `region`).
    pub region: String,
    /// The push's delta record (the log item's `record`).
    pub record: Vec<u8>,
}

/// What one fold did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Records applied now.
    pub applied: usize,
    /// Records found applied before.
    pub skipped: usize,
    /// Transactions committed.
    pub chunks: usize,
}

/// A position in a shard: a sequence number and how many parts of its record are applied (0 for
/// all of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The sequence number.
    pub sequence: String,
    /// Parts of the record at `sequence` applied; 0 means the whole record.
    pub part: u32,
}

/// Compares two sequence numbers as the unsigned integers they spell.
pub fn compare_sequences(a: &str, b: &str) -> Cmp {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Sums of one chunk: totals item -> attribute -> amount.
type Sums = BTreeMap<String, BTreeMap<String, u128>>;

/// One transaction's worth of whole records (or one part of a huge record).
struct Chunk {
    sums: Sums,
    end: Position,
    records: usize,
    record_secs: u64,
}

impl DynamoStore {
    /// Folds `records`, all of stream shard `shard`, into the totals, each exactly once whatever
    /// was folded before (see the [module docs](self)). `now_ms` is written in the checkpoint.
    pub async fn fold(
        &self,
        shard: &str,
        records: &[LogRecord],
        now_ms: u64,
    ) -> Result<Folded, StoreError> {
        self.fold_at_most(shard, records, now_ms, usize::MAX).await
    }

    /// [`DynamoStore::fold`], stopping after `chunks` transactions as if the function died
    /// there: for tests of a fold killed mid-batch.
    pub async fn fold_at_most(
        &self,
        shard: &str,
        records: &[LogRecord],
        now_ms: u64,
        chunks: usize,
    ) -> Result<Folded, StoreError> {
        let mut inserts: Vec<&LogRecord> = records.iter().filter(|r| r.insert).collect();
        inserts.sort_by(|a, b| compare_sequences(&a.sequence, &b.sequence));
        let mut done = Folded::default();
        let mut restarts = 0;
        'over: loop {
            let mut at = self.read_checkpoint(shard).await?;
            let plan = self.plan_chunks(&inserts, at.as_ref()).await?;
            // Records this fold applied before a restart are in the checkpoint now: not skips.
            let planned = plan.iter().map(|c| c.records).sum::<usize>();
            done.skipped = inserts.len().saturating_sub(planned + done.applied);
            for chunk in plan {
                if done.chunks >= chunks {
                    return Ok(done);
                }
                if self.commit(shard, &chunk, at.as_ref(), now_ms).await? {
                    done.chunks += 1;
                    done.applied += chunk.records;
                    self.stats
                        .folded
                        .fetch_add(chunk.records as u64, Ordering::Relaxed);
                    at = Some(chunk.end);
                } else {
                    restarts += 1;
                    if restarts > RESTARTS {
                        return Err(StoreError::Unavailable(format!(
                            "the checkpoint of stream shard {shard} keeps moving: is another \
                             fold running on it?"
                        )));
                    }
                    continue 'over;
                }
            }
            self.stats
                .fold_skipped
                .fetch_add(done.skipped as u64, Ordering::Relaxed);
            return Ok(done);
        }
    }

    /// The shard's checkpoint, read strongly consistently.
    pub async fn read_checkpoint(&self, shard: &str) -> Result<Option<Position>, StoreError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.settings.table)
            .key(KEY, attribute_s(&checkpoint_key(shard)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        self.count_read(got.item());
        let Some(item) = got.item() else {
            return Ok(None);
        };
        let sequence = match item.get(CHECKPOINT_SEQUENCE) {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => return Err(corrupt_checkpoint(shard)),
        };
        let part = match item.get(CHECKPOINT_PART) {
            Some(AttributeValue::N(n)) => n.parse().map_err(|_| corrupt_checkpoint(shard))?,
            _ => return Err(corrupt_checkpoint(shard)),
        };
        Ok(Some(Position { sequence, part }))
    }

    /// The chunks that apply what of `records` lies after `at`.
    async fn plan_chunks(
        &self,
        records: &[&LogRecord],
        at: Option<&Position>,
    ) -> Result<Vec<Chunk>, StoreError> {
        let capacity = self
            .settings
            .fold_chunk_items
            .clamp(1, MAX_TRANSACTION_ITEMS - 2);
        let mut chunks = Vec::new();
        let mut current: Option<Chunk> = None;
        for r in records {
            let parts_done = match at {
                Some(at) => match compare_sequences(&r.sequence, &at.sequence) {
                    Cmp::Less => continue,
                    Cmp::Equal if at.part == 0 => continue,
                    Cmp::Equal => at.part,
                    Cmp::Greater => 0,
                },
                None => 0,
            };
            let (items, record_secs) = self.record_items(r).await?;
            if items.len() <= capacity && parts_done == 0 {
                let fits = current
                    .as_ref()
                    .is_none_or(|c| fits(&c.sums, &items, capacity));
                if !fits && let Some(c) = current.take() {
                    chunks.push(c);
                }
                let c = current.get_or_insert_with(|| Chunk {
                    sums: Sums::new(),
                    end: Position {
                        sequence: r.sequence.clone(),
                        part: 0,
                    },
                    records: 0,
                    record_secs,
                });
                add_sums(&mut c.sums, items)?;
                c.end = Position {
                    sequence: r.sequence.clone(),
                    part: 0,
                };
                c.records += 1;
                c.record_secs = c.record_secs.max(record_secs);
                continue;
            }
            // A record bigger than a chunk: its parts, each a chunk of its own.
            if let Some(c) = current.take() {
                chunks.push(c);
            }
            let items: Vec<_> = items.into_iter().collect();
            let parts: Vec<_> = items.chunks(capacity).collect();
            let n = parts.len();
            for (i, part) in parts.into_iter().enumerate().skip(parts_done as usize) {
                let mut sums = Sums::new();
                add_sums(&mut sums, part.iter().cloned().collect())?;
                let last = i + 1 == n;
                chunks.push(Chunk {
                    sums,
                    end: Position {
                        sequence: r.sequence.clone(),
                        part: if last {
                            0
                        } else {
                            u32::try_from(i + 1).unwrap_or(u32::MAX)
                        },
                    },
                    records: usize::from(last),
                    record_secs,
                });
            }
        }
        chunks.extend(current);
        Ok(chunks)
    }

    /// A record's contribution: totals item -> attribute -> amount, and when it was accepted.
    async fn record_items(&self, r: &LogRecord) -> Result<(Sums, u64), StoreError> {
        let fingerprint = match record::peek_fingerprint(&r.record) {
            Ok(f) => f,
            Err(e) => return self.undecodable(r, e),
        };
        let allowlist = match self.known_allowlist(fingerprint) {
            Some(a) => a,
            None => self.read_allowlist(fingerprint).await?,
        };
        let decoded = match record::decode(&r.record, &allowlist) {
            Ok(d) => d,
            Err(e) => return self.undecodable(r, e),
        };
        // Terms by group and by which of the group's items their series hashes to.
        let mut items: HashMap<&str, u32> = HashMap::new();
        let mut groups: BTreeMap<(&str, u32), Vec<(String, u128)>> = BTreeMap::new();
        for (key, value) in decoded.delta.iter() {
            let group = encode::group_of(key.metric());
            let n = *items
                .entry(group)
                .or_insert_with(|| encode::items_for_group(&allowlist, group));
            let terms = groups.entry((group, encode::item_of(key, n))).or_default();
            for (component, n) in encode::components(value) {
                terms.push((encode::attribute_name(group, key, component), n));
            }
        }
        let shards = self.settings.shards.max(1);
        let base = (fnv1a(&[&r.region, &r.key]) % u64::from(shards)) as u32;
        let mut sums = Sums::new();
        for ((group, slot), terms) in groups {
            let n = items.get(group).copied().unwrap_or(1);
            for (j, chunk) in terms.chunks(MAX_TERMS_PER_UPDATE).enumerate() {
                // Further chunks of an item's terms go to further items: an update's expression
                // stays small, and the reader sums every item anyway.
                let j = u32::try_from(j).unwrap_or(u32::MAX);
                let shard = base
                    .saturating_add(shards.saturating_mul(j))
                    .saturating_mul(n)
                    .saturating_add(slot);
                let item = sums
                    .entry(encode::partition_key(&r.region, shard, group))
                    .or_default();
                for (name, n) in chunk {
                    add_one(item, name.clone(), *n)?;
                }
            }
        }
        Ok((sums, decoded.at_secs))
    }

    /// What a record that does not decode adds: if a newer pum wrote it (another version), an
    /// error, so that the platform retries until the fold is updated too; otherwise one to
    /// `pum_log_records_dropped_total`, in the same transaction as the checkpoint that moves past
    /// it, so that one bad item cannot stop the fold of every push after it.
    fn undecodable(
        &self,
        r: &LogRecord,
        e: record::RecordError,
    ) -> Result<(Sums, u64), StoreError> {
        if let record::RecordError::Version(_) = e {
            return Err(StoreError::Unavailable(format!(
                "log item {:?}: {e}: the fold waits (its batch is retried) until it is updated",
                r.key
            )));
        }
        tracing::error!(key = %r.key, sequence = %r.sequence, error = %e, "a log record does not decode: skipped, counted in pum_log_records_dropped_total");
        self.stats.fold_dropped.fetch_add(1, Ordering::Relaxed);
        let mut sums = Sums::new();
        let dropped = SeriesKey::new(own::LOG_RECORDS_DROPPED, &[]);
        add_own(&mut sums, &r.region, &dropped, Operations::millionths(1.0))?;
        // No acceptance time: the chunk keeps its other records'.
        Ok((sums, 0))
    }

    /// Reads the allowlist stored under `fingerprint`.
    async fn read_allowlist(&self, fingerprint: u64) -> Result<Arc<Allowlist>, StoreError> {
        let pk = format!("{}{fingerprint:016x}", crate::ALLOWLIST_PREFIX);
        let got = self
            .client
            .get_item()
            .table_name(&self.settings.table)
            .key(KEY, attribute_s(&pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        self.count_read(got.item());
        let Some(AttributeValue::S(text)) = got.item().and_then(|i| i.get(DESCRIPTION)) else {
            return Err(StoreError::Unavailable(format!(
                "no allowlist {pk:?} to decode a log record with"
            )));
        };
        let allowlist = Arc::new(Allowlist::from_description(text).map_err(|e| {
            StoreError::Corrupt(format!("item {pk:?}: the allowlist does not read: {e}"))
        })?);
        self.remember_allowlist(Arc::clone(&allowlist));
        Ok(allowlist)
    }

    /// Commits one chunk with its checkpoint, conditioned on the checkpoint being `at`. False if
    /// the condition failed (the checkpoint moved under this fold).
    async fn commit(
        &self,
        shard: &str,
        chunk: &Chunk,
        at: Option<&Position>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        // The transaction also carries the billable operations counted since the last one.
        let taken = self.ops.take();
        let built = self.transaction(shard, chunk, at, now_ms, taken);
        let items = match built {
            Ok(items) => items,
            Err(e) => {
                self.ops.give_back(taken);
                return Err(e);
            }
        };
        let count = items.len() as u64;
        let nonce = random_u64();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            let err = match sent {
                Ok(out) => {
                    self.stats.item_writes.fetch_add(count, Ordering::Relaxed);
                    // DynamoDB says what it billed; a server that does not is counted at the
                    // least a transaction costs, 2 units an item.
                    let units: f64 = out
                        .consumed_capacity()
                        .iter()
                        .filter_map(|c| c.capacity_units())
                        .sum();
                    let units = units.max(2.0 * count as f64);
                    self.ops.count(Op::DynamoWriteUnits, units);
                    return Ok(true);
                }
                Err(e) => e,
            };
            match classify(&err, items.len() - 1) {
                Outcome::Moved => {
                    self.ops.give_back(taken);
                    return Ok(false);
                }
                Outcome::Retry if attempt < CONFLICT_ATTEMPTS => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt, nonce)).await;
                }
                _ => {
                    self.ops.give_back(taken);
                    tracing::warn!(error = %DisplayErrorContext(&err), "fold TransactWriteItems failed");
                    return Err(StoreError::Unavailable(format!(
                        "DynamoDB TransactWriteItems failed: {}",
                        DisplayErrorContext(&err)
                    )));
                }
            }
        }
    }

    /// A chunk's transaction: its sums plus `ops` added to this region's shared item, and the
    /// checkpoint last (its index names it in a cancellation).
    fn transaction(
        &self,
        shard: &str,
        chunk: &Chunk,
        at: Option<&Position>,
        now_ms: u64,
        ops: own::Counts,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut sums = chunk.sums.clone();
        for (op, n) in Op::ALL.into_iter().zip(ops) {
            if n > 0 {
                add_own(
                    &mut sums,
                    &self.settings.region,
                    &own::operations_key(op),
                    n,
                )?;
            }
        }
        let mut items = Vec::with_capacity(sums.len() + 1);
        for (pk, terms) in &sums {
            items.push(self.update(pk, terms)?);
        }
        items.push(self.checkpoint_put(shard, chunk, at, now_ms)?);
        Ok(items)
    }

    /// Counts the read units of a strongly consistent `GetItem` that found `item` (1 per 4 KB,
    /// 1 for none).
    fn count_read(&self, item: Option<&HashMap<String, AttributeValue>>) {
        let size = item.map_or(0, crate::item_size);
        self.ops
            .count(Op::DynamoReadUnits, size.div_ceil(4096).max(1) as f64);
    }

    fn update(
        &self,
        pk: &str,
        terms: &BTreeMap<String, u128>,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut expression = String::from("ADD ");
        let mut names = HashMap::with_capacity(terms.len());
        let mut values = HashMap::with_capacity(terms.len());
        for (i, (name, n)) in terms.iter().enumerate() {
            if i > 0 {
                expression.push_str(", ");
            }
            expression.push_str(&format!("#a{i} :a{i}"));
            names.insert(format!("#a{i}"), name.clone());
            values.insert(format!(":a{i}"), AttributeValue::N(n.to_string()));
        }
        let update = Update::builder()
            .table_name(&self.settings.table)
            .key(KEY, attribute_s(pk))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn checkpoint_put(
        &self,
        shard: &str,
        chunk: &Chunk,
        at: Option<&Position>,
        now_ms: u64,
    ) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.settings.table)
            .item(KEY, attribute_s(&checkpoint_key(shard)))
            .item(CHECKPOINT_SEQUENCE, attribute_s(&chunk.end.sequence))
            .item(
                CHECKPOINT_PART,
                AttributeValue::N(chunk.end.part.to_string()),
            )
            .item(CHECKPOINT_FOLDED_MS, AttributeValue::N(now_ms.to_string()))
            .item(
                EXPIRES,
                AttributeValue::N((now_ms / 1000 + CHECKPOINT_TTL_SECS).to_string()),
            )
            .item(
                CHECKPOINT_RECORD_SECS,
                AttributeValue::N(chunk.record_secs.to_string()),
            );
        let put = match at {
            None => put
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", KEY),
            Some(at) => put
                .condition_expression("#s = :s AND #p = :p")
                .expression_attribute_names("#s", CHECKPOINT_SEQUENCE)
                .expression_attribute_names("#p", CHECKPOINT_PART)
                .expression_attribute_values(":s", attribute_s(&at.sequence))
                .expression_attribute_values(":p", AttributeValue::N(at.part.to_string())),
        };
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(unavailable)?)
            .build())
    }
}

/// The partition key of a stream shard's checkpoint.
pub fn checkpoint_key(shard: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{shard}")
}

fn corrupt_checkpoint(shard: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "the checkpoint of stream shard {shard} does not read"
    ))
}

/// Whether `items` can join a chunk holding `sums` without passing `capacity` items or an
/// update's attribute limit.
fn fits(sums: &Sums, items: &Sums, capacity: usize) -> bool {
    let new = items.keys().filter(|pk| !sums.contains_key(*pk)).count();
    if sums.len() + new > capacity {
        return false;
    }
    items.iter().all(|(pk, terms)| {
        let Some(have) = sums.get(pk) else {
            return true;
        };
        let added = terms.keys().filter(|a| !have.contains_key(*a)).count();
        have.len() + added <= MAX_TERMS_PER_UPDATE
    })
}

fn add_sums(sums: &mut Sums, items: Sums) -> Result<(), StoreError> {
    for (pk, terms) in items {
        let item = sums.entry(pk).or_default();
        for (name, n) in terms {
            add_one(item, name, n)?;
        }
    }
    Ok(())
}

/// Adds `n` to pum's own counter `key` in `region`'s item of own counters.
fn add_own(sums: &mut Sums, region: &str, key: &SeriesKey, n: u128) -> Result<(), StoreError> {
    let name = encode::attribute_name(encode::SHARED_GROUP, key, Component::Counter);
    let item = sums
        .entry(encode::partition_key(region, 0, encode::SHARED_GROUP))
        .or_default();
    add_one(item, name, n)
}

fn add_one(item: &mut BTreeMap<String, u128>, name: String, n: u128) -> Result<(), StoreError> {
    let sum = item.entry(name).or_default();
    *sum = sum
        .checked_add(n)
        .filter(|s| *s <= encode::MAX_NUMBER)
        .ok_or_else(|| {
            StoreError::Unavailable("a fold's sum exceeds DynamoDB's 38 digits".into())
        })?;
    Ok(())
}

enum Outcome {
    Moved,
    Retry,
    Fail,
}

fn classify(err: &SdkError<TransactWriteItemsError>, checkpoint_index: usize) -> Outcome {
    let Some(service) = err.as_service_error() else {
        return Outcome::Fail;
    };
    match service {
        TransactWriteItemsError::TransactionCanceledException(e) => {
            let reasons = e.cancellation_reasons();
            let code = |i: usize| reasons.get(i).and_then(|r| r.code()).unwrap_or("None");
            if code(checkpoint_index) == "ConditionalCheckFailed" {
                Outcome::Moved
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_as_integers() {
        assert_eq!(compare_sequences("9", "10"), Cmp::Less);
        assert_eq!(compare_sequences("000010", "10"), Cmp::Equal);
        assert_eq!(
            compare_sequences(
                "49999999999999999999999999999999999999",
                "100000000000000000000000000000000000000"
            ),
            Cmp::Less
        );
        assert_eq!(compare_sequences("21", "3"), Cmp::Greater);
    }

    #[test]
    fn chunks_fit_items_and_attributes() {
        let mut sums = Sums::new();
        sums.entry("a".into()).or_default().insert("x".into(), 1);
        let mut more = Sums::new();
        more.entry("b".into()).or_default().insert("x".into(), 1);
        assert!(fits(&sums, &more, 2));
        assert!(!fits(&sums, &more, 1));
        let mut same = Sums::new();
        same.entry("a".into()).or_default().insert("x".into(), 1);
        assert!(fits(&sums, &same, 1), "an item already in the chunk");
    }
}
