//! The write path: a push as one transaction of `ADD` updates and its dedupe item, and the
//! allowlist's description as one conditional put.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use pum_shared::store::{Merged, Push};
use pum_shared::{Aggregate, Allowlist, StoreError};

use crate::{
    DESCRIPTION, DisplayErrorContext, DynamoStore, EXPIRES, KEY, MAX_TERMS_PER_UPDATE,
    MAX_TRANSACTION_ITEMS, allowlist_key, attribute_s, encode, unavailable,
};

/// Attempts of one transaction when it conflicts with another on a hot item.
const CONFLICT_ATTEMPTS: u32 = 6;

/// One item write of a push: an `Update` of one group's chunk.
struct ItemUpdate {
    pk: String,
    terms: Vec<(String, u128)>,
}

/// What one transaction found.
enum Written {
    Applied,
    Replayed,
}

impl DynamoStore {
    /// Writes a push: one transaction, or one per [`MAX_TRANSACTION_ITEMS`] - 1 items for a push
    /// that touches more. Replayed only if every part was applied before.
    pub(crate) async fn write_push(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        // The dedupe item's key: the client's batch id, or for a push without one a random key
        // that no batch id can be (`#` is outside their alphabet), which still makes the store's
        // own retries of it count once.
        let id = match push.batch {
            Some(id) => id.as_str().to_owned(),
            None => format!("#{:016x}{:016x}", random_u64(), random_u64()),
        };
        let updates = self.plan(&id, &push.delta)?;
        // DynamoDB's TTL deletes by its own clock: count the window from the later of the push's
        // time and this machine's, so that a push stamped in the past is remembered as long.
        let now_ms = push.now_ms.max(wall_clock_ms());
        let expires = now_ms
            .saturating_add(duration_ms(self.settings.batch_ttl))
            .div_ceil(1000);
        let per_transaction = MAX_TRANSACTION_ITEMS - 1;
        if updates.len() <= per_transaction {
            let written = self.transact(&id, &updates, expires).await?;
            return Ok(self.count(written));
        }
        let mut merged = Merged::Replayed;
        for (part, chunk) in updates.chunks(per_transaction).enumerate() {
            let key = if part == 0 {
                id.clone()
            } else {
                format!("{id}#{part}")
            };
            if let Written::Applied = self.transact(&key, chunk, expires).await? {
                merged = Merged::Applied;
            }
        }
        Ok(self.count(match merged {
            Merged::Applied => Written::Applied,
            Merged::Replayed => Written::Replayed,
        }))
    }

    fn count(&self, written: Written) -> Merged {
        match written {
            Written::Applied => {
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                Merged::Applied
            }
            Written::Replayed => {
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                Merged::Replayed
            }
        }
    }

    /// Stores the allowlist's description under its fingerprint, once: a conditional put that
    /// finds the item there already changes nothing.
    pub(crate) async fn put_description(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        let sent = self
            .client
            .put_item()
            .table_name(&self.settings.table)
            .item(KEY, attribute_s(&allowlist_key(allowlist)))
            .item(DESCRIPTION, AttributeValue::S(allowlist.description()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The item writes of a push, grouped and chunked, in a deterministic order.
    fn plan(&self, id: &str, delta: &Aggregate) -> Result<Vec<ItemUpdate>, StoreError> {
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
        let shards = self.settings.shards.max(1);
        let base = (fnv1a(&[&self.settings.region, id]) % u64::from(shards)) as u32;
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
            .key(KEY, attribute_s(&u.pk))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn dedupe_item(&self, key: &str, expires: u64) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.settings.batch_table)
            .item(KEY, attribute_s(key))
            .item(EXPIRES, AttributeValue::N(expires.to_string()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes one transaction: `updates` and the dedupe item `key`, retrying conflicts. The dedupe
    /// item is the last item, so its cancellation reason says whether the push was applied
    /// before.
    async fn transact(
        &self,
        key: &str,
        updates: &[ItemUpdate],
        expires: u64,
    ) -> Result<Written, StoreError> {
        let mut items = Vec::with_capacity(updates.len() + 1);
        for u in updates {
            items.push(self.update(u)?);
        }
        items.push(self.dedupe_item(key, expires)?);
        let count = items.len() as u64;
        // A token per call and attempt: DynamoDB answers a token it saw in the last 10 minutes
        // with that call's outcome (or refuses it if the items differ), so a token shared with an
        // earlier push of the same batch would hide the replay, and a cancelled attempt's token
        // would cancel the retry. The SDK's own retries of one attempt reuse its token.
        let nonce = random_u64();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            let token = format!("{nonce:016x}{:016x}", fnv1a(&[key, &attempt.to_string()]));
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(token)
                .send()
                .await;
            let err = match sent {
                Ok(_) => {
                    self.stats.item_writes.fetch_add(count, Ordering::Relaxed);
                    return Ok(Written::Applied);
                }
                Err(e) => e,
            };
            match classify(&err, items.len() - 1) {
                Outcome::Replayed => return Ok(Written::Replayed),
                Outcome::Retry if attempt < CONFLICT_ATTEMPTS => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt, nonce)).await;
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

enum Outcome {
    Replayed,
    Retry,
    Fail,
}

fn classify(err: &SdkError<TransactWriteItemsError>, dedupe_index: usize) -> Outcome {
    let Some(service) = err.as_service_error() else {
        return Outcome::Fail;
    };
    match service {
        TransactWriteItemsError::TransactionCanceledException(e) => {
            let reasons = e.cancellation_reasons();
            let code = |i: usize| reasons.get(i).and_then(|r| r.code()).unwrap_or("None");
            if code(dedupe_index) == "ConditionalCheckFailed" {
                Outcome::Replayed
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
fn backoff(attempt: u32, nonce: u64) -> Duration {
    let base = 10u64 << attempt.min(5);
    let jitter = nonce.rotate_left(attempt) % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A 64-bit FNV-1a hash of `parts`, finished with splitmix64's mixer so that every input bit
/// reaches the low bits a shard is taken from.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn wall_clock_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    u64::try_from(since.unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// 64 random bits: std's randomly keyed hasher over a counter, the time and the process.
fn random_u64() -> u64 {
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
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spread_over_shards_and_random_keys_differ() {
        assert_eq!(fnv1a(&["eu-west-1", "a"]), fnv1a(&["eu-west-1", "a"]));
        assert_ne!(fnv1a(&["eu-west-1", "a"]), fnv1a(&["eu-west-1a", ""]));
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[(fnv1a(&["r", &i.to_string()]) % 16) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "shards spread: {seen:?}");
        assert_ne!(random_u64(), random_u64());
    }
}
