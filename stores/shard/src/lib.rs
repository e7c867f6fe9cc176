//! # pum-shard: a shard of the Cloudflare store
//!
//! A shard is one Durable Object that merges pushes exactly. This crate is its platform-free
//! part: [`Shard`] does everything a shard does with its SQLite database through the small
//! [`Sql`] trait, which the Worker implements over the Durable Object's `SqlStorage`
//! (edge/worker/src/durable.rs) and the tests over a SQLite file, so that the store conformance
//! suite runs here, natively (tests/conformance.rs).
//!
//! Storage is billed per row written (whatever the row's size), so pushes share rows, and what a
//! fold writes does not grow with traffic:
//!
//! - `pending(id, record)`: the delta records ([`pum_shared::record`], about 100 to 300 bytes
//!   each) of a **group** of pushes, one row per group ([`group`]), durable before any push of
//!   the group is answered. Group commit: pushes are admitted into the open group
//!   ([`Shard::admit`]) and the group is written in one go ([`Shard::commit`]); the Durable
//!   Object writes the next group only once the last is durable, after waiting
//!   `PUM_COMMIT_WAIT_MS`, so that pushes arriving meanwhile share a row. One push at a time is
//!   one row each; 8 clients pushing at once about 0.15 rows each, 64 about 0.04. A push whose
//!   batch id was applied within [`pum_shared::batch::WINDOW_MS`] writes nothing.
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
//! however many pushes it folds. The publication ([`publish`]) goes to Workers KV under the
//! shard's own key every `PUM_PUBLISH_SECONDS` ([`DEFAULT_PUBLISH_SECONDS`]) while the totals
//! change, and never when they did not.
//!
//! Billable operations: each group's row also holds the shard's own record of the operations
//! counted since the last one ([`Shard::count`]: alarms, `setAlarm`, KV writes; the describes;
//! the folds' rows) and of the rows that write takes, so those counts are durable with the row
//! and folded into the totals as `pum_store_operations_total`. What follows the last group
//! before a shard rests (its last fold's rows, its KV write) waits in memory for the next group
//! or fold, and is lost if the object is evicted first.
//!
//! Exactly once: a shard remembers the batch ids it applied (pending or folded) for at least
//! the window, in memory as [`pum_shared::batch::Window`] (16 bytes an id), rebuilt from
//! `pending` and `folded` when the object starts. A Durable Object runs one event at a time and
//! [`Shard::admit`] checks and records the id without yielding, so of concurrent duplicates one
//! applies and the others are replays, answered once its group is durable; if that write fails,
//! the group's ids are forgotten again so that the retries apply. The window's rows are deleted
//! by the first fold an hour later, or by one last alarm when a shard rests
//! ([`Shard::sweep_due`]), so what a shard stores stays bounded. The Worker sends every push of
//! one batch id to the same shard ([`shard_for`]).
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
//! [`group`] (a group's row), [`publish`] (the KV value), and here the timing and routing of
//! shards.

pub mod group;
pub mod publish;
pub mod schema;
pub mod shard;
pub mod sql;

pub use shard::{Admitted, Committed, Folded, Shard, ShardError, Stats};
pub use sql::{Param, Rows, Sql, SqlError, Value};

/// Default seconds between a shard's folds while pushes arrive (`PUM_FOLD_SECONDS`): how long
/// pushes wait as rows of `pending` before they are added to the totals. Each fold costs about
/// 6 rows written and an alarm, whatever it folds.
pub const DEFAULT_FOLD_SECONDS: u32 = 10;
/// Default seconds between a shard's publications to Workers KV while its totals change
/// (`PUM_PUBLISH_SECONDS`): at most this long, plus the collector's refresh, before a push shows
/// on `/metrics`. A shard busy all month writes KV 2,592,000 / this many times: 86,400 writes
/// ($0.43 at $5 per million) at the default 30 s. A shard whose totals did not change writes
/// nothing.
pub const DEFAULT_PUBLISH_SECONDS: u32 = 30;
/// Default milliseconds a shard waits after the first push of a group before it writes the
/// group (`PUM_COMMIT_WAIT_MS`): pushes arriving meanwhile share its row, and so do those
/// arriving while the write is in flight. A push is answered that much later; browsers send
/// pushes in the background, so nobody waits for it. 0 writes at once, grouping only what
/// arrives during a write. Measured under `wrangler dev` with one shard: 8 clients pushing in a
/// loop wrote 0.50 rows per push at 0 ms, 0.30 at 10 ms and 0.15 at 25 ms.
pub const DEFAULT_COMMIT_WAIT_MS: u32 = 25;
/// Least time between two KV writes of one shard's key: Workers KV allows about one write per
/// second per key.
pub const KV_MIN_INTERVAL_MS: f64 = 1000.0;
/// Wait before retrying a failed fold or KV write.
pub const RETRY_MS: f64 = 5000.0;

/// A shard's timing, from its vars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Between folds, ms.
    pub fold_ms: f64,
    /// Between publications, ms (at least [`KV_MIN_INTERVAL_MS`]).
    pub publish_ms: f64,
    /// Before a group is written, ms.
    pub commit_wait_ms: u32,
}

impl Timing {
    /// Reads `PUM_FOLD_SECONDS`, `PUM_PUBLISH_SECONDS` and `PUM_COMMIT_WAIT_MS` through `var`
    /// (`None` when unset). An error names the var and what it must be.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Timing, String> {
        let number = |name: &str, default: u32, max: u32, min: u32| -> Result<u32, String> {
            match var(name).as_deref().map(str::trim) {
                None | Some("") => Ok(default),
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        format!("{name} is {text:?}; it must be a whole number from {min} to {max}")
                    }),
            }
        };
        let fold = number(FOLD_SECONDS, DEFAULT_FOLD_SECONDS, 3600, 1)?;
        let publish = number(PUBLISH_SECONDS, DEFAULT_PUBLISH_SECONDS, 3600, 1)?;
        let wait = number(COMMIT_WAIT_MS, DEFAULT_COMMIT_WAIT_MS, 1000, 0)?;
        Ok(Timing {
            fold_ms: f64::from(fold) * 1000.0,
            publish_ms: (f64::from(publish) * 1000.0).max(KV_MIN_INTERVAL_MS),
            commit_wait_ms: wait,
        })
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::from_vars(|_| None).expect("the defaults are valid")
    }
}

/// Seconds between a shard's folds (1 to 3600).
pub const FOLD_SECONDS: &str = "PUM_FOLD_SECONDS";
/// Seconds between a shard's publications to KV (1 to 3600).
pub const PUBLISH_SECONDS: &str = "PUM_PUBLISH_SECONDS";
/// Milliseconds a shard waits to group pushes before writing them (0 to 1000).
pub const COMMIT_WAIT_MS: &str = "PUM_COMMIT_WAIT_MS";

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
    fn timing_from_vars() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let t = Timing::default();
        assert_eq!(t.fold_ms, f64::from(DEFAULT_FOLD_SECONDS) * 1000.0);
        assert_eq!(t.publish_ms, f64::from(DEFAULT_PUBLISH_SECONDS) * 1000.0);
        assert_eq!(t.commit_wait_ms, DEFAULT_COMMIT_WAIT_MS);
        let t = Timing::from_vars(vars(&[
            (FOLD_SECONDS, "1"),
            (PUBLISH_SECONDS, " 2 "),
            (COMMIT_WAIT_MS, "25"),
        ]))
        .expect("valid");
        assert_eq!(
            (t.fold_ms, t.publish_ms, t.commit_wait_ms),
            (1000.0, 2000.0, 25)
        );
        for (name, bad) in [
            (FOLD_SECONDS, "0"),
            (FOLD_SECONDS, "soon"),
            (PUBLISH_SECONDS, "3601"),
            (COMMIT_WAIT_MS, "1001"),
            (COMMIT_WAIT_MS, "-1"),
        ] {
            let e =
                Timing::from_vars(|n: &str| (n == name).then(|| bad.to_owned())).expect_err(bad);
            assert!(
                e.starts_with(name) && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
        assert_eq!(kv_wait_ms(10_000.0, 0.0), 0.0);
        assert_eq!(kv_wait_ms(10_000.0, 9_000.0), 0.0);
        assert_eq!(kv_wait_ms(10_000.0, 9_900.0), 900.0);
    }
}
