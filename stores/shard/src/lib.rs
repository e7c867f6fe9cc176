//! # pum-shard: a shard of the Cloudflare store
//!
//! A shard is one Durable Object that merges pushes exactly. This crate is its platform-free
//! part: [`Shard`] does everything a shard does with its SQLite database through the small
//! [`Sql`] trait, which the Worker implements over the Durable Object's `SqlStorage`
//! (edge/worker/src/durable.rs) and the tests over a SQLite file, so that the store conformance
//! suite runs here, natively (tests/conformance.rs).
//!
//! Storage is billed per row written (whatever the row's size), so what a push writes is
//! constant and small, and what a fold writes does not grow with traffic:
//!
//! - `pending(id, record)`: each push's delta record ([`pum_shared::record`], about 100 to 300
//!   bytes), appended as **one row**, durable before the push is answered. A push whose batch id
//!   was applied within [`pum_shared::batch::WINDOW_MS`] writes nothing.
//! - `totals(chunk, part)`: the shard's cumulative totals as one snapshot (`pum-shared`'s
//!   portable format), cut into parts of at most [`schema::CHUNK_BYTES`]: one row for up to
//!   several thousand series.
//! - `folded(id, at_ms, ids)`: the batch ids each fold applied, **one row per fold** (newline
//!   separated), deleted by the first fold an hour later.
//! - `allowlists(fingerprint, description)`: each allowlist the shard was given, written once.
//! - `meta(k, v)`: the shard's name (written once), which the alarm needs for its KV key.
//!
//! On the shard's alarm, every `PUM_FOLD_SECONDS` ([`DEFAULT_FOLD_SECONDS`] by default) while
//! pushes arrive, the pending records are decoded with the allowlist their fingerprint names,
//! merged into the totals, the totals rewritten, `pending` emptied, the applied batch ids
//! recorded and those older than the window deleted, in one transaction ([`Shard::fold`]). A
//! fold writes the totals' rows, plus 2 (recreating `pending`), plus 1 when it applied batch
//! ids, plus the expired fold rows it deletes (about one per fold once traffic is steady):
//! however many pushes it folds. The publication ([`publish`]) then goes to Workers KV under the
//! shard's own key.
//!
//! Exactly once: a shard remembers the batch ids it applied (pending or folded) for at least
//! the window, in memory as [`pum_shared::batch::Window`] (16 bytes an id), rebuilt from
//! `pending` and `folded` when the object starts. A Durable Object runs one event at a time and
//! [`Shard::merge`] checks and appends without yielding, so concurrent duplicates cannot both
//! pass. The Worker sends every push of one batch id to the same shard ([`shard_for`]).
//!
//! Allowlists: a record carries its allowlist's fingerprint, not the allowlist. A shard refuses
//! a record whose allowlist it does not hold ([`ShardError::UnknownAllowlist`]); the Worker then
//! describes the allowlist ([`Shard::describe`]) and sends the record again. Each is compiled
//! once per object, when first needed.
//!
//! Overflow: a push is acknowledged once its row is in `pending`, before it is folded, so the
//! shard cannot refuse it the way standalone does (`422 total_overflow`). What keeps that from
//! mattering is the start-up check ([`pum_shared::Limits::check`], run by the Worker's settings):
//! no metric may accept values for which [`pum_shared::limits::PLAUSIBLE_PUSHES`] (10^12) pushes
//! could overflow a total, and a shard sees only a share of the pushes. Should a fold still meet
//! a record that would take a total past what it holds (totals seeded from elsewhere), it leaves
//! that record out whole and folds the rest: it stays in `pending`, the shard logs it on every
//! fold, and the totals stay exact. Nothing is ever pinned at a ceiling, and nothing
//! acknowledged is dropped.
//!
//! Layout: [`sql`] (the trait), [`schema`] (tables and statements), [`shard`] (the logic),
//! [`publish`] (the KV value), and here the timing and routing of shards.

pub mod publish;
pub mod schema;
pub mod shard;
pub mod sql;

pub use shard::{Folded, Shard, ShardError, Stats};
pub use sql::{Param, Rows, Sql, SqlError, Value};

/// Default seconds between folds while pushes arrive (`PUM_FOLD_SECONDS`): the totals reach KV
/// about this often, and what folds and KV writes cost is per shard per fold, whatever the
/// traffic. Five seconds is fresh enough for Prometheus scraping every 15 s or more, and costs a
/// fifth of folding every second.
pub const DEFAULT_FOLD_SECONDS: u32 = 5;
/// Least time between two KV writes of one shard's key: Workers KV allows about one write per
/// second per key.
pub const KV_MIN_INTERVAL_MS: f64 = 1000.0;
/// Wait before retrying a failed fold or KV write.
pub const RETRY_MS: f64 = 5000.0;

/// The name of shard `index` (also its Durable Object name).
pub fn shard_name(index: u32) -> String {
    index.to_string()
}

/// Picks the shard of a push among `shards`. A push with a batch id goes to the shard its id
/// hashes to, so that a retry reaches the shard that remembers the id; one without goes to a
/// shard picked by `random` (uniform in `[0, 1)`). Merging is commutative and associative, so
/// where a push lands does not matter to the totals, and both ways spread the traffic evenly.
///
/// Changing the number of shards moves most batch ids to another shard: a retry that arrives
/// across such a change may count again.
pub fn shard_for(batch: Option<&str>, random: f64, shards: u32) -> u32 {
    let shards = shards.max(1);
    match batch {
        // FNV-1a: stable across isolates, versions and platforms.
        Some(id) => {
            let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            (h % u64::from(shards)) as u32
        }
        None => ((random * f64::from(shards)) as u32).min(shards - 1),
    }
}

/// Reads `PUM_FOLD_SECONDS`: whole seconds from 1 to 3600, else the default.
pub fn fold_interval_ms(var: Option<&str>) -> f64 {
    let seconds = var
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|s| (1..=3600).contains(s))
        .unwrap_or(DEFAULT_FOLD_SECONDS);
    f64::from(seconds) * 1000.0
}

/// How long a shard must still wait before it may write its KV key again (0 when it may write
/// now).
pub fn kv_wait_ms(now_ms: f64, last_kv_write_ms: f64) -> f64 {
    (KV_MIN_INTERVAL_MS - (now_ms - last_kv_write_ms)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_picked_in_range_and_a_batch_always_to_the_same() {
        assert_eq!(shard_for(None, 0.0, 8), 0);
        assert_eq!(shard_for(None, 0.999_999, 8), 7);
        assert_eq!(shard_for(None, 1.0, 8), 7);
        assert_eq!(shard_for(None, 0.5, 0), 0);
        let id = "AbCdEfGh12345678";
        let at = shard_for(Some(id), 0.1, 8);
        assert!(at < 8);
        assert_eq!(
            shard_for(Some(id), 0.9, 8),
            at,
            "the random part is ignored"
        );
        // Ids spread over every shard.
        let mut hit = [0u32; 8];
        for i in 0..800 {
            hit[shard_for(Some(&format!("batch-{i:012}")), 0.0, 8) as usize] += 1;
        }
        assert!(hit.iter().all(|&n| n > 50), "{hit:?}");
    }

    #[test]
    fn fold_interval_and_kv_spacing() {
        assert_eq!(fold_interval_ms(None), 5000.0);
        assert_eq!(fold_interval_ms(Some("1")), 1000.0);
        assert_eq!(fold_interval_ms(Some("0")), 5000.0);
        assert_eq!(fold_interval_ms(Some("soon")), 5000.0);
        assert_eq!(kv_wait_ms(10_000.0, 0.0), 0.0);
        assert_eq!(kv_wait_ms(10_000.0, 9_000.0), 0.0);
        assert_eq!(kv_wait_ms(10_000.0, 9_900.0), 900.0);
    }
}
