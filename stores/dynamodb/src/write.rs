//! The write path: a push as one conditional put of its log item, and the allowlist's
//! description as one conditional put.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use pum_shared::own::{self, Op, Operations};
use pum_shared::store::{Merged, Push};
use pum_shared::{Allowlist, StoreError};

use crate::{
    DESCRIPTION, DynamoStore, EXPIRES, KEY, RECORD, REGION, allowlist_key, attribute_s, encode,
    unavailable, write_units,
};

impl DynamoStore {
    /// Writes a push's log item: one conditional `PutItem`. Replayed if an item with its key is
    /// there already.
    pub(crate) async fn write_push(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        // The fold decodes the record with the allowlist stored under its fingerprint: make sure
        // it is there (once per process; the ingest describes it before its first push anyway).
        self.describe_once(push.allowlist).await?;
        // Values the totals could not hold are refused here, where the push can still be
        // answered, rather than by the fold.
        for (key, value) in push.delta.iter() {
            if encode::components(value)
                .iter()
                .any(|(_, n)| *n > encode::MAX_NUMBER)
            {
                return Err(StoreError::Unavailable(format!(
                    "a value of {} exceeds DynamoDB's 38 digits",
                    key.metric()
                )));
            }
        }
        // The log item's key: the client's batch id, or for a push without one a random key
        // that no batch id can be (`#` is outside their alphabet), which still makes the SDK's
        // own retry of the write count once.
        let id = match push.batch {
            Some(id) => id.as_str().to_owned(),
            None => format!("#{:016x}{:016x}", random_u64(), random_u64()),
        };
        // DynamoDB's TTL deletes by its own clock: count the window from the later of the push's
        // time and this machine's, so that a push stamped in the past is remembered as long.
        let now_ms = push.now_ms.max(wall_clock_ms());
        let expires = now_ms
            .saturating_add(duration_ms(self.settings.batch_ttl))
            .div_ceil(1000);
        // The item carries the billable operations counted since the last one, its own write
        // included.
        let taken = self.ops.take();
        let (item, units) = match self.log_item(push, id, expires, taken) {
            Ok(built) => built,
            Err(e) => {
                self.ops.give_back(taken);
                return Err(e);
            }
        };
        match self.put_new(&self.settings.log_table, item).await {
            Ok(true) => {
                self.stats.log_writes.fetch_add(1, Ordering::Relaxed);
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                Ok(Merged::Applied)
            }
            Ok(false) => {
                // A put refused by its condition is billed all the same; it stored nothing.
                self.ops.give_back(taken);
                self.ops.count(Op::DynamoWriteUnits, units as f64);
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                Ok(Merged::Replayed)
            }
            Err(e) => {
                self.ops.give_back(taken);
                Err(e)
            }
        }
    }

    /// Puts `item` into `table` unless an item with its key is there: true if it was written,
    /// false if the condition refused it.
    async fn put_new(
        &self,
        table: &str,
        item: HashMap<String, AttributeValue>,
    ) -> Result<bool, StoreError> {
        let sent = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The push's log item, carrying `taken` operations plus the write of the item itself, and
    /// the write units the item costs (1 per KB of its size, which the count in it is part of).
    fn log_item(
        &self,
        push: &Push<'_>,
        id: String,
        expires: u64,
        taken: own::Counts,
    ) -> Result<(HashMap<String, AttributeValue>, usize), StoreError> {
        let mut units = 1;
        loop {
            let mut carried = taken;
            carried[Op::DynamoWriteUnits as usize] += Operations::millionths(units as f64);
            let with = push.with_operations(carried);
            let item = HashMap::from([
                (KEY.to_owned(), attribute_s(&id)),
                (
                    RECORD.to_owned(),
                    AttributeValue::B(Blob::new(with.record()?)),
                ),
                (REGION.to_owned(), attribute_s(&self.settings.region)),
                (EXPIRES.to_owned(), AttributeValue::N(expires.to_string())),
            ]);
            let needs = write_units(&item);
            // The count's own digits can push the item over a KB boundary: settle on a count
            // that pays for the item it is in (a larger one grows by a byte at most).
            if needs <= units {
                return Ok((item, units));
            }
            units = needs;
        }
    }

    /// Describes `allowlist` unless this process did already.
    async fn describe_once(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        let fingerprint = allowlist.fingerprint();
        if self.known_allowlist(fingerprint).is_some() {
            return Ok(());
        }
        self.put_description(allowlist).await
    }

    /// An allowlist this process described or read back (shared: the ingest asks on every push,
    /// the fold on every record).
    pub(crate) fn known_allowlist(&self, fingerprint: u64) -> Option<Arc<Allowlist>> {
        self.allowlists
            .lock()
            .ok()
            .and_then(|m| m.get(&fingerprint).cloned())
    }

    /// Remembers an allowlist described or read back.
    pub(crate) fn remember_allowlist(&self, allowlist: Arc<Allowlist>) {
        if let Ok(mut m) = self.allowlists.lock() {
            m.insert(allowlist.fingerprint(), allowlist);
        }
    }

    /// Stores the allowlist's description under its fingerprint, once: a conditional put that
    /// finds the item there already changes nothing.
    pub(crate) async fn put_description(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        let item = HashMap::from([
            (KEY.to_owned(), attribute_s(&allowlist_key(allowlist))),
            (
                DESCRIPTION.to_owned(),
                AttributeValue::S(allowlist.description()),
            ),
        ]);
        let units = write_units(&item);
        // Written or refused by its condition (written before), the put is billed.
        self.put_new(&self.settings.table, item).await?;
        self.ops.count(Op::DynamoWriteUnits, units as f64);
        self.remember_allowlist(Arc::new(allowlist.clone()));
        Ok(())
    }
}

/// Jittered exponential backoff: 10 ms, 20 ms, ... up to 320 ms, +-50%.
pub(crate) fn backoff(attempt: u32, nonce: u64) -> Duration {
    let base = 10u64 << attempt.min(5);
    let jitter = nonce.rotate_left(attempt) % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A 64-bit FNV-1a hash of `parts`, finished with splitmix64's mixer so that every input bit
/// reaches the low bits a shard is taken from.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
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

pub(crate) fn wall_clock_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    u64::try_from(since.unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// 64 random bits: std's randomly keyed hasher over a counter, the time and the process.
pub(crate) fn random_u64() -> u64 {
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
