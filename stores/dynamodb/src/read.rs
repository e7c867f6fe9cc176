//! The read path: one scan of the totals table, page by page, into every shard's totals and
//! every allowlist described.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use pum_shared::store::Stored;
use pum_shared::{Aggregate, Allowlist, StoreError};

use crate::encode::{self, SeriesBuilder};
use crate::fold::{CHECKPOINT_FOLDED_MS, CHECKPOINT_RECORD_SECS};
use crate::{ALLOWLIST_PREFIX, CHECKPOINT_PREFIX, DESCRIPTION, DynamoStore, KEY, unavailable};

/// Stream shards whose latest fold is older than this are left out of the lag: they were
/// replaced, or have had no pushes since.
const LAG_HORIZON_MS: u64 = 3_600_000;

/// A checkpoint's lag at its latest fold, if that fold was within [`LAG_HORIZON_MS`] of `now_ms`.
fn checkpoint_lag(item: &HashMap<String, AttributeValue>, now_ms: u64) -> Option<Duration> {
    let number = |name: &str| match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
        _ => None,
    };
    let folded_ms = number(CHECKPOINT_FOLDED_MS)?;
    // 0: the checkpoint's records were all skipped as undecodable, and tell no time.
    let record_ms = number(CHECKPOINT_RECORD_SECS)
        .filter(|s| *s > 0)?
        .saturating_mul(1000);
    (now_ms.saturating_sub(folded_ms) <= LAG_HORIZON_MS)
        .then(|| Duration::from_millis(folded_ms.saturating_sub(record_ms)))
}

impl DynamoStore {
    /// Scans the totals table.
    pub(crate) async fn scan(&self) -> Result<Stored, StoreError> {
        let mut shards: BTreeMap<String, SeriesBuilder> = BTreeMap::new();
        let mut allowlists: BTreeMap<String, Allowlist> = BTreeMap::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        let now_ms = crate::write::wall_clock_ms();
        let mut fold_lag: Option<Duration> = None;
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
                let pk = match item.get(KEY) {
                    Some(AttributeValue::S(pk)) => pk,
                    _ => return Err(StoreError::Corrupt("an item has no string pk".into())),
                };
                if pk.starts_with(ALLOWLIST_PREFIX) {
                    allowlists.insert(pk.clone(), read_allowlist(pk, item)?);
                } else if pk.starts_with(CHECKPOINT_PREFIX) {
                    if let Some(lag) = checkpoint_lag(item, now_ms) {
                        fold_lag = fold_lag.max(Some(lag));
                    }
                } else {
                    read_item(pk, item, &mut shards)?;
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        let shards = shards
            .into_iter()
            .map(|(shard, builder)| {
                let mut agg = Aggregate::new();
                for (key, value) in builder.build() {
                    agg.add_value(key, value);
                }
                (shard, agg)
            })
            .collect();
        Ok(Stored {
            allowlists: allowlists.into_values().collect(),
            shards,
            // Before the first fold, nothing trails yet.
            fold_lag: Some(fold_lag.unwrap_or_default()),
        })
    }

    /// Every totals item with its size in bytes as DynamoDB bills it (attribute names plus
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
}

fn read_allowlist(
    pk: &str,
    item: &HashMap<String, AttributeValue>,
) -> Result<Allowlist, StoreError> {
    let Some(AttributeValue::S(text)) = item.get(DESCRIPTION) else {
        return Err(StoreError::Corrupt(format!(
            "item {pk:?}: no string {DESCRIPTION}"
        )));
    };
    Allowlist::from_description(text)
        .map_err(|e| StoreError::Corrupt(format!("item {pk:?}: the allowlist does not read: {e}")))
}

fn read_item(
    pk: &str,
    item: &HashMap<String, AttributeValue>,
    shards: &mut BTreeMap<String, SeriesBuilder>,
) -> Result<(), StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(what);
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

/// The write units DynamoDB bills for writing `item` outside a transaction: 1 per KB of it.
pub fn write_units(item: &HashMap<String, AttributeValue>) -> usize {
    item_size(item).div_ceil(1024).max(1)
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
