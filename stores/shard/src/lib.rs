//! A shard: one Durable Object that merges pushes exactly. This module is its platform-free part
//! (schema, encoding, folding, timing); `durable` runs it on the Workers runtime.
//!
//! Storage is the object's SQLite database, billed per row written (whatever the row's size), so
//! what a push writes is constant and small, and what a fold writes does not grow with traffic:
//!
//! - `pending(id, delta)`: each push's delta, appended as **one row**, durable before the push is
//!   answered.
//! - `totals(chunk, part)`: the shard's cumulative totals as one snapshot (`pum-shared`'s portable
//!   format), cut into parts of at most [`CHUNK_BYTES`] (a row holds at most 2 MB): one row for up
//!   to several thousand series.
//! - `meta(k, v)`: the shard's name (written once), which the alarm needs for its KV key.
//!
//! On the shard's alarm, every `FOLD_SECONDS` ([`DEFAULT_FOLD_SECONDS`] by default) while pushes
//! arrive, the pending pushes are merged into the totals, the totals rewritten and `pending`
//! emptied, in one transaction: a fold writes the totals' rows plus 2, however many pushes it
//! folds. The snapshot then goes to Workers KV under the shard's own key.
//!
//! Overflow: a push is acknowledged once its row is in `pending`, before it is folded, so the
//! shard cannot refuse it the way standalone does (`422 total_overflow`). What keeps that from
//! mattering is the start-up check ([`pum_shared::Limits::check`], run by the Worker's settings):
//! no metric may accept values for which [`pum_shared::limits::PLAUSIBLE_PUSHES`] (10^12) pushes
//! could overflow a total, and a shard sees only a share of the pushes. Should a fold still meet
//! a push that would take a total past what it holds (totals seeded from elsewhere), [`fold`]
//! leaves that push out whole and folds the rest: it stays in `pending`, the shard logs it on
//! every fold, and the totals stay exact. Nothing is ever pinned at a ceiling, and nothing
//! acknowledged is dropped.

use pum_shared::Aggregate;
use pum_shared::aggregate::{Overflow, SnapshotError};

/// The tables, created when a shard starts (a no-op when they exist). `pending` has a plain
/// integer key: `AUTOINCREMENT` would write a `sqlite_sequence` row per push, and a text key an
/// index row per write.
pub const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, delta TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS totals (chunk INTEGER PRIMARY KEY, part TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID",
];

/// Appends one push.
pub const INSERT_PENDING: &str = "INSERT INTO pending (delta) VALUES (?)";
/// Reads the pushes to fold, oldest first.
pub const SELECT_PENDING: &str = "SELECT delta FROM pending ORDER BY id";
/// Empties `pending` once its pushes are folded (the fold reads and empties it in one synchronous
/// transaction, so no push arrives in between). Dropping and recreating the table writes 2 rows
/// (its schema entry), whereas `DELETE` writes one per deleted row, that is one more per push
/// (measured with `cursor.rowsWritten`, which is what Durable Objects bill).
pub const RESET_PENDING: [&str; 2] = [
    "DROP TABLE pending",
    "CREATE TABLE pending (id INTEGER PRIMARY KEY, delta TEXT NOT NULL)",
];
/// Counts pushes not folded yet.
pub const COUNT_PENDING: &str = "SELECT count(*) AS n FROM pending";
/// Reads the totals' parts in order.
pub const SELECT_TOTALS: &str = "SELECT part FROM totals ORDER BY chunk";
/// Writes one part of the totals.
pub const UPSERT_TOTALS: &str = "INSERT OR REPLACE INTO totals (chunk, part) VALUES (?, ?)";
/// Drops parts beyond the current number (should the totals ever shrink).
pub const TRIM_TOTALS: &str = "DELETE FROM totals WHERE chunk >= ?";
/// Reads the shard's name.
pub const SELECT_NAME: &str = "SELECT v FROM meta WHERE k = 'name'";
/// Records the shard's name.
pub const INSERT_NAME: &str = "INSERT OR REPLACE INTO meta (k, v) VALUES ('name', ?)";

/// Largest part of the totals in one row, in bytes (Durable Object SQLite rows hold at most 2 MB).
pub const CHUNK_BYTES: usize = 1_000_000;

/// Default seconds between folds while pushes arrive (the `FOLD_SECONDS` var): the totals reach KV
/// about this often, and what folds and KV writes cost is per shard per fold, whatever the traffic.
/// Five seconds is fresh enough for Prometheus scraping every 15 s or more, and costs a fifth of
/// folding every second.
pub const DEFAULT_FOLD_SECONDS: u32 = 5;
/// Least time between two KV writes of one shard's key: Workers KV allows about one write per
/// second per key.
pub const KV_MIN_INTERVAL_MS: f64 = 1000.0;
/// Wait before retrying a failed fold or KV write.
pub const RETRY_MS: f64 = 5000.0;

/// Prefix of the KV keys the shards write.
pub const KV_PREFIX: &str = "shard/";

/// The KV key of a shard's snapshot.
pub fn kv_key(shard: &str) -> String {
    format!("{KV_PREFIX}{shard}")
}

/// The name of shard `index` (also its Durable Object name).
pub fn shard_name(index: u32) -> String {
    index.to_string()
}

/// Picks a shard from a uniform `random` in `[0, 1)`. Merging is commutative and associative, so
/// where a push lands does not matter to the totals; spreading at random keeps every shard's
/// request rate at `1/shards` of the traffic.
pub fn pick_shard(random: f64, shards: u32) -> u32 {
    let shards = shards.max(1);
    ((random * f64::from(shards)) as u32).min(shards - 1)
}

/// Reads the `FOLD_SECONDS` var: whole seconds from 1 to 3600, else the default.
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

/// Cuts a snapshot into parts of at most `max` bytes, at character boundaries.
pub fn chunks(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        out.push(part);
        rest = tail;
    }
    out
}

/// Rebuilds a shard's totals from its `totals` parts (none: a new shard).
pub fn totals_from_parts<'a>(
    parts: impl IntoIterator<Item = &'a str>,
) -> Result<Aggregate, SnapshotError> {
    let text: String = parts.into_iter().collect();
    if text.is_empty() {
        return Ok(Aggregate::new());
    }
    Aggregate::from_json(&text)
}

/// What a fold did.
#[derive(Debug, Default, PartialEq)]
pub struct Folded {
    /// Pending pushes merged into the totals.
    pub pushes: usize,
    /// Pending pushes left out, each whole, because merging it would overflow a total: their
    /// positions among the deltas given, and why. They stay pending (see the module docs).
    pub kept: Vec<(usize, Overflow)>,
}

/// Merges pending deltas (snapshot JSON) into `totals`. A delta that does not decode fails the
/// whole fold and leaves `totals` as it was, so that nothing is half-applied. A delta that would
/// take a total past what it holds is left out whole and named in [`Folded::kept`]; the others
/// are folded, so one such push never holds back the rest of the shard.
pub fn fold<'a>(
    totals: &mut Aggregate,
    deltas: impl IntoIterator<Item = &'a str>,
) -> Result<Folded, SnapshotError> {
    let deltas = deltas
        .into_iter()
        .map(Aggregate::from_json)
        .collect::<Result<Vec<_>, _>>()?;
    let mut folded = Folded::default();
    for (i, delta) in deltas.iter().enumerate() {
        match totals.try_merge(delta) {
            Ok(()) => folded.pushes += 1,
            Err(overflow) => folded.kept.push((i, overflow)),
        }
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pum_shared::{SeriesKey, SeriesValue};

    fn delta(feature: &str, micros: u128) -> String {
        let mut a = Aggregate::new();
        a.add_counter(
            SeriesKey::new("demo_feature_usage_total", &[("feature", feature)]),
            micros,
        );
        a.observe_all(SeriesKey::new("h_seconds", &[]), 3, [(1, 5)]);
        a.to_json()
    }

    #[test]
    fn folding_sums_and_the_parts_round_trip() {
        let mut totals = Aggregate::new();
        let pushes = [delta("search", 1), delta("search", 2), delta("share", 4)];
        let folded = |n| Folded {
            pushes: n,
            kept: Vec::new(),
        };
        assert_eq!(
            fold(&mut totals, pushes.iter().map(String::as_str)).expect("fold"),
            folded(3)
        );
        assert_eq!(
            fold(&mut totals, [delta("share", 1).as_str()]).expect("fold"),
            folded(1)
        );
        assert_eq!(
            totals.get(&SeriesKey::new(
                "demo_feature_usage_total",
                &[("feature", "share")]
            )),
            Some(&SeriesValue::Counter { micros: 5 })
        );
        assert_eq!(
            totals.get(&SeriesKey::new("h_seconds", &[])),
            Some(&SeriesValue::Histogram {
                buckets: vec![0, 4, 0],
                sum_micros: 20
            })
        );
        // Cut small, with a multi-byte label value across a cut.
        totals.add_counter(SeriesKey::new("x_total", &[("k", "ünïcødé")]), 1);
        let text = totals.to_json();
        for max in [5, 7, 64, CHUNK_BYTES] {
            let parts = chunks(&text, max);
            assert!(parts.iter().all(|p| p.len() <= max));
            assert_eq!(totals_from_parts(parts).expect("parts"), totals);
        }
        assert_eq!(chunks(&text, CHUNK_BYTES).len(), 1);
        assert_eq!(totals_from_parts([]).expect("empty"), Aggregate::new());
    }

    #[test]
    fn a_bad_delta_fails_the_whole_fold_and_changes_nothing() {
        let mut totals = Aggregate::new();
        let good = delta("search", 1);
        assert!(fold(&mut totals, [good.as_str(), "{nope"]).is_err());
        assert_eq!(totals, Aggregate::new());
    }

    #[test]
    fn a_push_that_would_overflow_a_total_is_kept_out_whole_and_the_rest_folded() {
        let search = SeriesKey::new("demo_feature_usage_total", &[("feature", "search")]);
        let mut totals = Aggregate::new();
        totals.add_counter(search.clone(), u128::MAX - 3);
        let before = totals.clone();
        let pushes = [delta("share", 2), delta("search", 4), delta("search", 3)];
        let got = fold(&mut totals, pushes.iter().map(String::as_str)).expect("fold");
        assert_eq!(got.pushes, 2);
        assert_eq!(
            got.kept,
            vec![(
                1,
                Overflow {
                    key: search.clone()
                }
            )]
        );
        assert_eq!(
            totals.get(&search),
            Some(&SeriesValue::Counter { micros: u128::MAX })
        );
        // The kept push's histogram was not folded either: 2 observations, not 3.
        assert_eq!(
            totals
                .get(&SeriesKey::new("h_seconds", &[]))
                .and_then(SeriesValue::count),
            Some(2)
        );
        // Folded again later, it is kept out again; the totals do not move.
        let after = totals.clone();
        let again = fold(&mut totals, [pushes[1].as_str()]).expect("fold");
        assert_eq!((again.pushes, again.kept.len()), (0, 1));
        assert_eq!(totals, after);
        assert_ne!(totals, before);
    }

    #[test]
    fn pending_is_recreated_as_created() {
        assert_eq!(
            SCHEMA[0].replace("IF NOT EXISTS ", ""),
            RESET_PENDING[1],
            "the table the fold recreates must be the one the schema creates"
        );
    }

    #[test]
    fn shards_are_picked_in_range() {
        assert_eq!(pick_shard(0.0, 8), 0);
        assert_eq!(pick_shard(0.999_999, 8), 7);
        assert_eq!(pick_shard(1.0, 8), 7);
        assert_eq!(pick_shard(0.5, 0), 0);
        assert_eq!(kv_key(&shard_name(3)), "shard/3");
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
