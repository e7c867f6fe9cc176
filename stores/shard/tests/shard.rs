//! The shard's logic on a SQLite file: what each operation writes (what Durable Objects bill),
//! the allowlist handshake, overflow, the window of batch ids, and an upgrade from JSON rows.

mod sqlite;

use pum_shard::{Admitted, Committed, Shard, ShardError, schema};
use pum_shared::conformance::{allowlist, batch_id, delta, push};
use pum_shared::{Aggregate, Merged, SeriesKey, SeriesValue, own};
use rusqlite::params;
use sqlite::Sqlite;

const NOW: u64 = 1_790_000_000_000;
const WINDOW_MS: u64 = pum_shared::batch::WINDOW_MS;

fn record(seed: u64, batch: Option<u64>) -> Vec<u8> {
    let list = allowlist();
    let id = batch.map(batch_id);
    push(&list, id.as_ref(), delta(seed))
        .record()
        .expect("encodes")
}

fn open(dir: &tempfile::TempDir) -> Shard<Sqlite> {
    Shard::new(Sqlite::open(&dir.path().join("shard.sqlite")))
}

fn described(dir: &tempfile::TempDir) -> Shard<Sqlite> {
    let mut shard = open(dir);
    shard
        .describe(&allowlist().description())
        .expect("describes");
    shard
}

fn count(dir: &tempfile::TempDir, table: &str) -> i64 {
    let db = rusqlite::Connection::open(dir.path().join("shard.sqlite")).expect("opens");
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("counts")
}

#[test]
fn a_push_writes_one_row_a_replay_none_and_a_fold_a_constant_few() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = open(&dir);
    shard
        .describe(&allowlist().description())
        .expect("describes");
    shard.describe(&allowlist().description()).expect("again");
    assert_eq!(shard.stats().rows_written_by_describes, 1, "described once");
    for seed in 0..20 {
        assert_eq!(
            shard.merge(&record(seed, Some(seed)), NOW),
            Ok(Merged::Applied)
        );
    }
    assert_eq!(shard.merge(&record(3, Some(3)), NOW), Ok(Merged::Replayed));
    let stats = shard.stats().clone();
    assert_eq!((stats.pushes, stats.replays), (20, 1));
    assert_eq!(stats.rows_written_by_pushes, 20, "one row per push");

    // The totals (1 row), recreating pending (2), the batch ids applied (1): 20 pushes or 2.
    let folded = shard.fold(NOW + 5000).expect("folds");
    assert_eq!((folded.pushes, folded.written), (20, 4));
    shard.merge(&record(20, None), NOW).expect("merges");
    shard.merge(&record(21, Some(21)), NOW).expect("merges");
    assert_eq!(shard.fold(NOW + 10_000).expect("folds").written, 4);
    // Pushes without an id: no row of ids.
    shard.merge(&record(22, None), NOW).expect("merges");
    assert_eq!(shard.fold(NOW + 15_000).expect("folds").written, 3);
    // Nothing pending: nothing written.
    assert_eq!(shard.fold(NOW + 20_000).expect("folds").written, 0);
    assert_eq!(count(&dir, "folded"), 2);

    let mut want = Aggregate::new();
    for seed in 0..23 {
        want.merge(&delta(seed));
    }
    let (lists, totals) = shard.read().expect("reads");
    assert_eq!(own::without_operations(&totals), want);
    // Rows written, as each fold that folded pushes adds them: the describe (1) and the 20
    // pushes by the first fold, its own 4 and 2 pushes by the second, its 4 and 1 push by the
    // third; the third's own 3 wait for a fold that folds something.
    assert_eq!(
        own::operations_in(&totals).get("sqlite_rows_written"),
        Some(&32.0)
    );
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].fingerprint(), allowlist().fingerprint());
    // A replay is refused after the fold and after a restart too.
    assert_eq!(shard.merge(&record(3, Some(3)), NOW), Ok(Merged::Replayed));
    drop(shard);
    let mut shard = open(&dir);
    assert_eq!(
        shard.merge(&record(21, Some(21)), NOW + 30_000),
        Ok(Merged::Replayed)
    );
    assert_eq!(data(&mut shard), want);
}

/// The shard's totals, folded and pending, without pum's count of billable operations.
fn data(shard: &mut Shard<Sqlite>) -> Aggregate {
    own::without_operations(&shard.read().expect("reads").1)
}

#[test]
fn a_record_under_an_unknown_allowlist_is_refused_until_described() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = open(&dir);
    // A new shard's first request may be a push, named.
    assert_eq!(shard.name(Some("7")), Ok(Some("7".to_owned())));
    let r = record(1, Some(1));
    assert_eq!(
        shard.merge(&r, NOW),
        Err(ShardError::UnknownAllowlist(allowlist().fingerprint()))
    );
    assert!(matches!(
        shard.merge(b"not a record", NOW),
        Err(ShardError::BadRecord(_) | ShardError::UnknownAllowlist(_))
    ));
    assert!(matches!(
        shard.describe("{not an allowlist"),
        Err(ShardError::BadDescription(_))
    ));
    assert_eq!(shard.stats().rows_written_by_pushes, 0);
    assert_eq!(shard.pending(), Ok(0));
    shard
        .describe(&allowlist().description())
        .expect("describes");
    assert_eq!(shard.merge(&r, NOW), Ok(Merged::Applied));
    // The allowlist is stored: a restarted shard takes the batch's replay as one.
    drop(shard);
    let mut shard = open(&dir);
    assert_eq!(
        shard.name(Some("8")),
        Ok(Some("7".to_owned())),
        "named once"
    );
    assert_eq!(shard.merge(&r, NOW), Ok(Merged::Replayed));
    let publication = shard.publication().expect("publishes");
    let p = pum_shard::publish::Publication::parse(&publication).expect("parses");
    assert_eq!(p.allowlists.len(), 1);
    assert_eq!(p.allowlists[0].get(), allowlist().description());
}

#[test]
fn batch_ids_are_forgotten_by_the_first_fold_after_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = described(&dir);
    shard.merge(&record(1, Some(1)), NOW).expect("merges");
    shard.fold(NOW).expect("folds");
    assert_eq!(count(&dir, "folded"), 1);
    // Within the window the row stays; the first fold after it deletes it.
    shard.fold(NOW + WINDOW_MS - 1).expect("folds");
    assert_eq!(count(&dir, "folded"), 1);
    let folded = shard.fold(NOW + WINDOW_MS + 1).expect("folds");
    assert_eq!(folded.written, 1, "the expired row");
    assert_eq!(count(&dir, "folded"), 0);
    // A restarted shard past the window applies the id again.
    drop(shard);
    let mut shard = open(&dir);
    assert_eq!(
        shard.merge(&record(1, Some(1)), NOW + 2 * WINDOW_MS),
        Ok(Merged::Applied)
    );
}

#[test]
fn a_record_that_would_overflow_stays_pending_whole_and_the_rest_fold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SeriesKey::new("conf_total", &[("k", "v0")]);
    // Totals seeded from elsewhere, just under the ceiling.
    let mut seeded = Aggregate::new();
    seeded.add_counter(key.clone(), u128::MAX - 3);
    {
        let db = rusqlite::Connection::open(dir.path().join("shard.sqlite")).expect("opens");
        db.execute_batch(schema::SCHEMA.join(";").as_str())
            .expect("schema");
        db.execute(schema::UPSERT_TOTALS, params![0, seeded.to_json()])
            .expect("seeds");
    }
    let mut shard = described(&dir);
    let list = allowlist();
    let mut big = Aggregate::new();
    big.add_counter(key.clone(), 4);
    big.observe_all(SeriesKey::new("conf_seconds", &[]), 4, [(1, 5)]);
    let big = push(&list, None, big).record().expect("encodes");
    let mut other = Aggregate::new();
    other.add_counter(SeriesKey::new("conf_total", &[("k", "v1")]), 2);
    let other = push(&list, None, other).record().expect("encodes");
    for r in [&other, &big, &other] {
        shard.merge(r, NOW).expect("merges");
    }
    let folded = shard.fold(NOW).expect("folds");
    assert_eq!(folded.pushes, 2);
    assert_eq!(folded.kept.len(), 1);
    assert_eq!(folded.kept[0].key, key);
    assert_eq!(shard.pending(), Ok(1));
    let (_, totals) = shard.read().expect("reads");
    assert_eq!(
        totals.get(&key),
        Some(&SeriesValue::Counter {
            micros: u128::MAX - 3
        })
    );
    assert_eq!(
        totals.get(&SeriesKey::new("conf_seconds", &[])),
        None,
        "the kept record's histogram is not folded either"
    );
    // Folded again, it stays out; the totals do not move.
    let again = shard.fold(NOW + 1000).expect("folds");
    assert_eq!((again.pushes, again.kept.len(), again.written), (0, 1, 0));
    assert_eq!(shard.read().expect("reads").1, totals);
}

#[test]
fn pending_json_rows_of_an_earlier_version_are_folded_on_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = rusqlite::Connection::open(dir.path().join("shard.sqlite")).expect("opens");
        db.execute_batch(
            "CREATE TABLE pending (id INTEGER PRIMARY KEY, delta TEXT NOT NULL);
             CREATE TABLE totals (chunk INTEGER PRIMARY KEY, part TEXT NOT NULL);",
        )
        .expect("old schema");
        db.execute(schema::UPSERT_TOTALS, params![0, delta(1).to_json()])
            .expect("totals");
        for seed in [2, 3] {
            db.execute(
                "INSERT INTO pending (delta) VALUES (?)",
                params![delta(seed).to_json()],
            )
            .expect("pending");
        }
    }
    let mut shard = described(&dir);
    shard.merge(&record(4, Some(4)), NOW).expect("merges");
    let mut want = Aggregate::new();
    for seed in 1..=4 {
        want.merge(&delta(seed));
    }
    assert_eq!(data(&mut shard), want);
    assert_eq!(shard.pending(), Ok(1));
    shard.fold(NOW).expect("folds");
    drop(shard);
    assert_eq!(data(&mut open(&dir)), want);
}

/// Runs `sql` on the shard's database from another connection (a fault, or its repair).
fn alter(dir: &tempfile::TempDir, sql: &str) {
    let db = rusqlite::Connection::open(dir.path().join("shard.sqlite")).expect("opens");
    db.execute_batch(sql).expect("alters");
}

#[test]
fn pushes_admitted_while_a_write_is_in_flight_are_written_as_one_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = described(&dir);
    // One push committed alone, as the first of a burst is.
    assert_eq!(shard.merge(&record(0, Some(0)), NOW), Ok(Merged::Applied));
    let before = shard.stats().clone();
    // Eight arrive while that write is in flight: two repeat one another, one repeats the push
    // already written, one has no batch id.
    let burst = [
        record(1, Some(1)),
        record(2, Some(2)),
        record(2, Some(2)),
        record(0, Some(0)),
        record(3, None),
        record(4, Some(4)),
        record(5, Some(5)),
        record(6, Some(6)),
    ];
    let answers: Vec<_> = burst
        .iter()
        .map(|r| shard.admit(r, NOW).expect("admits"))
        .collect();
    let group = match answers[0] {
        Admitted::Queued { group, .. } => group,
    };
    let merged: Vec<Merged> = answers
        .iter()
        .map(|a| match *a {
            Admitted::Queued { group: g, merged } => {
                assert_eq!(g, group, "every push waits for the same commit");
                merged
            }
        })
        .collect();
    let (a, r) = (Merged::Applied, Merged::Replayed);
    assert_eq!(merged, [a, a, r, r, a, a, a, a]);
    let committed = shard.commit(NOW).expect("commits");
    assert_eq!(
        committed,
        Committed {
            group,
            records: 6,
            rows: 1
        },
        "six records, one row"
    );
    assert_eq!(count(&dir, "pending"), 2);
    let stats = shard.stats();
    assert_eq!(
        stats.rows_written_by_pushes - before.rows_written_by_pushes,
        1
    );
    assert_eq!((stats.pushes, stats.commits, stats.replays), (7, 2, 2));
    // The next commit is the next group; with nothing admitted it writes nothing.
    assert_eq!(
        shard.commit(NOW).expect("commits"),
        Committed {
            group: group + 1,
            records: 0,
            rows: 0
        }
    );

    let mut want = Aggregate::new();
    for seed in 0..=6 {
        want.merge(&delta(seed));
    }
    assert_eq!(data(&mut shard), want);
    assert_eq!(shard.fold(NOW).expect("folds").pushes, 7);
    assert_eq!(data(&mut shard), want);
    // After a restart the ids in the group are still known, folded or pending.
    shard.admit(&record(7, Some(7)), NOW).expect("admits");
    shard.commit(NOW).expect("commits");
    drop(shard);
    let mut shard = open(&dir);
    for id in [1, 2, 6, 7] {
        assert_eq!(
            shard.merge(&record(id, Some(id)), NOW + 1000),
            Ok(Merged::Replayed),
            "batch {id}"
        );
    }
    want.merge(&delta(7));
    assert_eq!(data(&mut shard), want);
}

#[test]
fn a_failed_commit_answers_its_whole_group_with_the_error_and_the_retries_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = described(&dir);
    shard.merge(&record(0, Some(0)), NOW).expect("merges");
    alter(
        &dir,
        "CREATE TRIGGER full BEFORE INSERT ON pending BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    );
    for seed in 1..=3 {
        shard.admit(&record(seed, Some(seed)), NOW).expect("admits");
    }
    let failed = shard.commit(NOW);
    assert!(
        matches!(&failed, Err(ShardError::Sql(e)) if e.0.contains("disk full")),
        "{failed:?}"
    );
    assert_eq!(count(&dir, "pending"), 1, "nothing of the group was stored");
    alter(&dir, "DROP TRIGGER full");
    // The clients retry: each applies once, and a repeat within the retries is a replay.
    for seed in 1..=3 {
        let Admitted::Queued { merged, .. } =
            shard.admit(&record(seed, Some(seed)), NOW).expect("admits");
        assert_eq!(merged, Merged::Applied, "batch {seed}");
    }
    let Admitted::Queued { merged, .. } = shard.admit(&record(2, Some(2)), NOW).expect("admits");
    assert_eq!(merged, Merged::Replayed);
    assert_eq!(shard.commit(NOW).expect("commits").records, 3);
    let mut want = Aggregate::new();
    for seed in 0..=3 {
        want.merge(&delta(seed));
    }
    assert_eq!(data(&mut shard), want);
}

#[test]
fn an_idle_shard_sweeps_its_window_when_all_of_it_has_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = described(&dir);
    assert_eq!(shard.sweep_due(), Ok(None), "nothing to sweep");
    shard.merge(&record(1, Some(1)), NOW).expect("merges");
    shard.fold(NOW).expect("folds");
    shard
        .merge(&record(2, Some(2)), NOW + 5000)
        .expect("merges");
    shard.fold(NOW + 5000).expect("folds");
    assert_eq!(count(&dir, "folded"), 2);
    let due = shard.sweep_due().expect("reads").expect("due");
    assert_eq!(
        due,
        NOW + 5000 + WINDOW_MS + 1,
        "when the newest has expired"
    );
    shard.fold(due - 1).expect("folds");
    assert_eq!(
        count(&dir, "folded"),
        1,
        "the newest is kept until it expires"
    );
    shard.fold(due).expect("folds");
    assert_eq!(count(&dir, "folded"), 0);
    assert_eq!(shard.sweep_due(), Ok(None));
}

#[test]
fn the_rows_a_group_writes_are_counted_in_its_own_row_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = described(&dir);
    shard.count(own::Op::KvWrites, 1.0);
    for seed in 0..3 {
        shard.admit(&record(seed, Some(seed)), NOW).expect("admits");
    }
    shard.commit(NOW).expect("commits");
    shard.merge(&record(3, None), NOW).expect("merges");
    // Evicted before any fold: a fresh object folds what the rows hold.
    drop(shard);
    let mut shard = open(&dir);
    assert_eq!(shard.fold(NOW).expect("folds").pushes, 4);
    let totals = shard.read().expect("reads").1;
    let ops = own::operations_in(&totals);
    // The describe's row and the two groups' rows; the KV write counted before the first.
    assert_eq!(ops.get("sqlite_rows_written"), Some(&3.0), "{ops:?}");
    assert_eq!(ops.get("kv_writes"), Some(&1.0), "{ops:?}");
    let mut want = Aggregate::new();
    for seed in 0..4 {
        want.merge(&delta(seed));
    }
    assert_eq!(own::without_operations(&totals), want);
}
