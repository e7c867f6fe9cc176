//! Tests of the store's own guarantees, beyond the conformance suite (`tests/conformance.rs`):
//! torn tails, unreadable records, compaction while pushes arrive, failures that fail closed,
//! batch ids across failed writes, compaction and restarts, and the log's size per push.

use std::future::Future;
use std::io::Write;
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, Waker};

use pum_shared::{Ingest, Limits, SeriesKey, SeriesValue};

use super::*;

/// When the tests' pushes arrive.
const NOW_MS: u64 = 1_790_000_000_000;

/// The tests' allowlist: `t_total`, and `o_total{k="v"}`.
fn allowlist() -> Allowlist {
    list_with("")
}

/// The tests' allowlist with `extra` metrics (JSON objects, each followed by a comma).
fn list_with(extra: &str) -> Allowlist {
    let text = format!(
        r#"{{"allowedMetrics": [{extra}
            {{"name": "t_total", "help": "T.", "type": "counter"}},
            {{"name": "o_total", "help": "O.", "type": "counter",
              "labels": [{{"name": "k", "allowedValues": ["v"]}}]}}
        ]}}"#
    );
    Allowlist::compile([("test", text.as_str())], false).expect("compiles")
}

fn delta(n: u128) -> Aggregate {
    let mut a = Aggregate::new();
    a.add_counter(SeriesKey::new("t_total", &[]), n);
    a
}

fn id(n: u64) -> BatchId {
    BatchId::parse(&format!("test-batch-{n:08}")).expect("valid")
}

fn push<'a>(list: &'a Allowlist, batch: Option<&'a BatchId>, n: u128) -> Push<'a> {
    Push {
        batch,
        now_ms: NOW_MS,
        delta: delta(n),
        allowlist: list,
    }
}

/// Runs `f` to completion outside any other runtime.
fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn merge(s: &EmbeddedStore, batch: Option<&BatchId>, n: u128) -> Result<Merged, StoreError> {
    let list = allowlist();
    run(s.merge(&push(&list, batch, n)))
}

fn total(store: &EmbeddedStore) -> u128 {
    store
        .with_totals(|t| match t.get(&SeriesKey::new("t_total", &[])) {
            Some(SeriesValue::Counter { micros }) => *micros,
            _ => 0,
        })
        .expect("totals")
}

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).expect("opens").0
}

/// Makes every write of the log fail (a read-only handle in its place); returns the writable one.
fn break_writes(s: &EmbeddedStore, dir: &Path) -> Arc<File> {
    let generation = s.log.lock().expect("lock").generation;
    let read_only = Arc::new(File::open(log::path(dir, generation)).expect("log"));
    std::mem::replace(&mut s.log.lock().expect("lock").file, read_only)
}

fn mend_writes(s: &EmbeddedStore, writable: Arc<File>) {
    s.log.lock().expect("lock").file = writable;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_while_pushes_arrive_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(open(dir.path()));
    let list = Arc::new(allowlist());
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = std::thread::spawn({
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                s.compact().expect("compact");
                runs += 1;
            }
            runs
        }
    });
    let pushers: Vec<_> = (0..16u64)
        .map(|t| {
            let (s, list) = (Arc::clone(&s), Arc::clone(&list));
            tokio::spawn(async move {
                for i in 0..300 {
                    // Half the pushes carry a batch id.
                    let batch = id(t * 1000 + i);
                    let batch = i.is_multiple_of(2).then_some(&batch);
                    let merged = s.merge(&push(&list, batch, 1)).await.expect("merge");
                    assert_eq!(merged, Merged::Applied);
                }
            })
        })
        .collect();
    for p in pushers {
        p.await.expect("pusher");
    }
    stop.store(true, Ordering::Relaxed);
    let runs = compactor.join().expect("compactor");
    assert!(runs > 1, "compaction ran {runs} times");
    assert_eq!(total(&s), 4800);
    let Ok(s) = Arc::try_unwrap(s) else {
        panic!("the pushers are done with the store");
    };
    drop(s);
    let s = open(dir.path());
    assert_eq!(
        total(&s),
        4800,
        "after {runs} compactions during the pushes"
    );
    // Every id is remembered, whether the snapshot or a log holds it.
    for t in 0..16 {
        for i in (0..300).step_by(2) {
            let merged = s.merge(&push(&list, Some(&id(t * 1000 + i)), 1)).await;
            assert_eq!(merged.expect("merge"), Merged::Replayed, "{t} {i}");
        }
    }
    assert_eq!(total(&s), 4800);
}

#[test]
fn a_failed_write_is_undone_and_its_batch_id_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let writable = break_writes(&s, dir.path());
    assert!(merge(&s, Some(&id(1)), 5).is_err());
    assert_eq!(total(&s), 0, "the failed push is taken out of memory again");
    mend_writes(&s, writable);
    assert_eq!(merge(&s, Some(&id(1)), 5).expect("merge"), Merged::Applied);
    assert_eq!(merge(&s, Some(&id(1)), 5).expect("merge"), Merged::Replayed);
    assert_eq!(total(&s), 5);
    drop(s);
    let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.replayed, 1);
    assert_eq!(total(&s), 5);
    assert_eq!(merge(&s, Some(&id(1)), 5).expect("merge"), Merged::Replayed);
}

#[test]
fn a_duplicate_during_the_original_write_gets_the_original_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let list = allowlist();
    let batch = id(1);
    let (original, duplicate) = (push(&list, Some(&batch), 5), push(&list, Some(&batch), 5));
    // On one thread, `join` polls the original until its leader yields (record queued, write
    // not begun), then the duplicate, which finds the id pending; then the write happens.
    let writable = break_writes(&s, dir.path());
    let (a, b) = run(async { tokio::join!(s.merge(&original), s.merge(&duplicate)) });
    assert!(a.is_err(), "the original's write fails");
    assert!(b.is_err(), "so the duplicate is not acknowledged: {b:?}");
    assert_eq!(total(&s), 0);
    mend_writes(&s, writable);
    let (a, b) = run(async { tokio::join!(s.merge(&original), s.merge(&duplicate)) });
    assert_eq!(
        (a.expect("merge"), b.expect("merge")),
        (Merged::Applied, Merged::Replayed)
    );
    assert_eq!(total(&s), 5);
    drop(s);
    let s = open(dir.path());
    assert_eq!(total(&s), 5);
}

#[tokio::test]
async fn a_log_that_cannot_be_synced_refuses_pushes_until_a_compaction_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = allowlist();
    // fsync of /dev/null fails (EINVAL): a log whose sync fails, without mocks.
    std::os::unix::fs::symlink("/dev/null", log::path(dir.path(), 0)).expect("symlink");
    // A directory where the snapshot's temporary file goes makes compaction fail too.
    fs::create_dir(dir.path().join("snapshot.json.tmp")).expect("blocker");
    let s = open(dir.path());
    s.merge(&push(&list, None, 5))
        .await
        .expect("merge before the failure is seen");
    assert!(s.sync().is_err());
    assert!(s.is_failed());
    assert!(Store::is_failed(&s), "the port says so too (healthz)");
    assert!(s.merge(&push(&list, None, 7)).await.is_err());
    assert_eq!(total(&s), 5, "a refused push changes nothing");
    assert!(s.compact().is_err());
    assert!(s.is_failed(), "a failed compaction keeps the store failed");
    assert!(s.merge(&push(&list, None, 7)).await.is_err());
    fs::remove_dir(dir.path().join("snapshot.json.tmp")).expect("unblock");
    s.compact().expect("compaction writes every total durably");
    assert!(!s.is_failed());
    s.merge(&push(&list, None, 9))
        .await
        .expect("merge after recovery");
    s.close().expect("close");
    drop(s);
    let s = open(dir.path());
    assert_eq!(
        total(&s),
        14,
        "acknowledged pushes kept, refused ones absent"
    );
}

#[test]
fn a_push_that_would_overflow_a_total_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    merge(&s, None, u128::MAX - 1).expect("merge");
    let written = s.log_bytes();
    let err = merge(&s, Some(&id(1)), 2).expect_err("overflows");
    assert!(matches!(err, StoreError::Overflow(_)), "{err}");
    assert_eq!(s.log_bytes(), written, "nothing of it reaches the log");
    assert_eq!(total(&s), u128::MAX - 1);
    assert_eq!(
        merge(&s, Some(&id(1)), 1).expect("what fits is taken"),
        Merged::Applied,
        "the refused push did not take its batch id"
    );
    drop(s);
    let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.replayed, 2);
    assert_eq!(total(&s), u128::MAX);
}

/// Appends `payload` to the log of generation 0, framed.
fn append_record(dir: &Path, payload: &[u8]) {
    let mut record = Vec::new();
    log::frame(&mut record, |out| {
        out.extend_from_slice(payload);
        Ok::<(), ()>(())
    })
    .expect("frames");
    let mut f = OpenOptions::new()
        .append(true)
        .open(log::path(dir, 0))
        .expect("log");
    f.write_all(&record).expect("write");
}

#[test]
fn a_whole_record_that_does_not_decode_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = allowlist();
    {
        let s = open(dir.path());
        merge(&s, None, 5).expect("merge");
    }
    // Well framed, of a stored allowlist, naming a metric it does not have.
    let mut payload = vec![record::VERSION];
    payload.extend_from_slice(&list.fingerprint().to_le_bytes());
    payload.extend_from_slice(&[0, 0, 1, 90, 1]);
    append_record(dir.path(), &payload);
    let err = EmbeddedStore::open(dir.path()).expect_err("refuses");
    assert!(matches!(err, OpenError::CorruptLog { .. }), "{err}");
    assert!(err.to_string().contains("wal-"), "{err}");
    assert!(err.to_string().contains("at byte"), "{err}");
}

#[test]
fn a_record_whose_allowlist_is_missing_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        merge(&s, None, 5).expect("merge");
    }
    let file = allowlists::path(dir.path(), allowlist().fingerprint());
    fs::remove_file(&file).expect("the merge stored its allowlist");
    let err = EmbeddedStore::open(dir.path()).expect_err("refuses");
    assert!(matches!(err, OpenError::MissingAllowlist { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&*file.to_string_lossy()), "{text}");
    assert!(text.contains("wal-"), "{text}");
}

#[test]
fn an_unreadable_allowlist_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        run(s.describe(&allowlist())).expect("describe");
    }
    let file = allowlists::path(dir.path(), allowlist().fingerprint());
    for text in [
        "{not json".to_owned(),
        // Readable, but another allowlist than the one its name says.
        list_with(r#"{"name": "x_total", "help": "X.", "type": "counter"},"#).description(),
    ] {
        fs::write(&file, text).expect("write");
        let err = EmbeddedStore::open(dir.path()).expect_err("refuses");
        assert!(matches!(err, OpenError::CorruptAllowlist { .. }), "{err}");
        assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    }
}

#[test]
fn the_store_describes_itself_once_per_allowlist_and_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = allowlist();
    let s = open(dir.path());
    run(s.describe(&list)).expect("describe");
    run(s.describe(&list)).expect("describe again");
    let file = allowlists::path(dir.path(), list.fingerprint());
    assert_eq!(
        fs::read_to_string(&file).expect("stored"),
        list.description()
    );
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("allowlist-"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // A leftover temporary file (a crash while one was written) is cleaned up on opening.
    drop(s);
    let mut tmp = file.into_os_string();
    tmp.push(".tmp");
    fs::write(&tmp, "partial").expect("write");
    let s = open(dir.path());
    assert!(!Path::new(&tmp).exists());
    let stored = run(s.read()).expect("read").allowlists;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].description(), list.description());
}

#[test]
fn records_of_two_allowlists_replay_each_with_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = allowlist();
    // A metric named before the others moves every index: a record read with the wrong
    // allowlist would name another metric.
    let second = list_with(r#"{"name": "a_total", "help": "A.", "type": "counter"},"#);
    assert_ne!(first.fingerprint(), second.fingerprint());
    {
        let s = open(dir.path());
        run(s.merge(&push(&first, None, 5))).expect("merge");
        run(s.merge(&push(&second, None, 7))).expect("merge under the new config");
        let mut other = Aggregate::new();
        other.add_counter(SeriesKey::new("a_total", &[]), 11);
        let mut p = push(&second, None, 0);
        p.delta = other;
        run(s.merge(&p)).expect("merge");
    }
    let s = open(dir.path());
    assert_eq!(total(&s), 12);
    let a = s
        .with_totals(|t| t.get(&SeriesKey::new("a_total", &[])).cloned())
        .expect("totals");
    assert_eq!(a, Some(SeriesValue::Counter { micros: 11 }));
    let mut stored: Vec<u64> = run(s.read())
        .expect("read")
        .allowlists
        .iter()
        .map(Allowlist::fingerprint)
        .collect();
    stored.sort_unstable();
    let mut want = vec![first.fingerprint(), second.fingerprint()];
    want.sort_unstable();
    assert_eq!(stored, want);
}

#[test]
fn torn_tail_is_cut_and_later_records_follow_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        merge(&s, Some(&id(1)), 5).expect("merge");
        merge(&s, None, 7).expect("merge");
    }
    // Simulate a crash in the middle of a third write.
    let log = log::path(dir.path(), 0);
    let mut f = OpenOptions::new().append(true).open(&log).expect("log");
    f.write_all(&[40, 0, 0, 0, 1, 2, 3]).expect("write");
    drop(f);
    let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(
        rec,
        Recovery {
            replayed: 2,
            truncated_bytes: 7
        }
    );
    assert_eq!(total(&s), 12);
    merge(&s, None, 1).expect("merge");
    drop(s);
    let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.replayed, 3);
    assert_eq!(total(&s), 13);
    assert_eq!(merge(&s, Some(&id(1)), 5).expect("merge"), Merged::Replayed);
}

#[test]
fn compaction_keeps_totals_and_drops_old_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..10 {
        merge(&s, None, i).expect("merge");
    }
    s.compact().expect("compact");
    merge(&s, None, 100).expect("merge");
    assert_eq!(log::list(dir.path()).expect("list"), vec![1]);
    drop(s);
    let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(
        rec.replayed, 1,
        "only the record after the snapshot is replayed"
    );
    assert_eq!(total(&s), 145);
}

#[test]
fn the_batch_id_window_survives_compaction_and_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for n in 0..10 {
        merge(&s, Some(&id(n)), 1).expect("merge");
    }
    s.compact().expect("compact");
    for n in 10..20 {
        merge(&s, Some(&id(n)), 1).expect("merge");
    }
    // Killed: no close. Ids 0..10 are only in the snapshot, 10..20 only in the log.
    drop(s);
    let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.replayed, 10);
    for n in 0..20 {
        assert_eq!(
            merge(&s, Some(&id(n)), 1).expect("merge"),
            Merged::Replayed,
            "{n}"
        );
    }
    // Closed: everything is in the snapshot, and nothing in a log.
    s.close().expect("close");
    drop(s);
    let (s, rec) = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.replayed, 0);
    for n in 0..20 {
        assert_eq!(
            merge(&s, Some(&id(n)), 1).expect("merge"),
            Merged::Replayed,
            "{n}"
        );
    }
    assert_eq!(total(&s), 20);
    assert_eq!(merge(&s, Some(&id(20)), 1).expect("merge"), Merged::Applied);
}

/// Polls `f` once: a merge that leads its group commit stops there, its record queued and its
/// delta and batch id in memory, not yet written.
fn poll_once<F: Future<Output = Result<Merged, StoreError>>>(f: std::pin::Pin<&mut F>) {
    let polled = f.poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(polled, Poll::Pending),
        "the leader yields before it writes: {polled:?}"
    );
}

#[test]
fn ids_not_written_at_compaction_stay_out_of_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = allowlist();
    let s = open(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (one, two) = (id(1), id(2));
    // Queued, compacted, then written to the new log: counted once, remembered after a
    // restart.
    let second = push(&list, Some(&two), 7);
    {
        let mut merging = pin!(s.merge(&second));
        poll_once(merging.as_mut());
        s.compact().expect("compact");
        assert_eq!(rt.block_on(merging).expect("merge"), Merged::Applied);
    }
    // Queued, compacted, then its write fails: not in the snapshot, so it applies after a
    // restart. (Last: a later compaction would write the window again from memory, where the
    // id is forgotten by then.)
    let first = push(&list, Some(&one), 5);
    {
        let mut merging = pin!(s.merge(&first));
        poll_once(merging.as_mut());
        s.compact().expect("compact");
        let writable = break_writes(&s, dir.path());
        assert!(rt.block_on(merging).is_err());
        mend_writes(&s, writable);
    }
    drop(s);
    let s = open(dir.path());
    assert_eq!(total(&s), 7);
    assert_eq!(merge(&s, Some(&id(2)), 7).expect("merge"), Merged::Replayed);
    assert_eq!(merge(&s, Some(&id(1)), 5).expect("merge"), Merged::Applied);
    assert_eq!(total(&s), 12);
}

#[test]
fn a_batch_written_but_not_yet_finished_at_compaction_is_in_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = allowlist();
    let s = open(dir.path());
    run(s.describe(&list)).expect("describe");
    let batch = id(1);
    let queued = s.queue_push(&push(&list, Some(&batch), 5)).expect("queued");
    assert!(matches!(queued, Queued::Applied { leader: true, .. }));
    // The leader's write, stopped between the `write` and telling the pushes of its batch:
    // the record is in the old log, which compaction deletes.
    let (records, n) = s.take_batch().expect("a batch");
    s.append(&records, n).expect("written");
    s.compact().expect("compact");
    s.finish_batch(records, n, None);
    assert!(s.take_batch().is_none());
    drop(s);
    let s = open(dir.path());
    assert_eq!(total(&s), 5, "in the snapshot, once");
    assert_eq!(merge(&s, Some(&batch), 5).expect("merge"), Merged::Replayed);
}

#[test]
fn a_stale_log_left_by_a_crashed_compaction_is_not_counted_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    merge(&s, None, 3).expect("merge");
    let old = fs::read(log::path(dir.path(), 0)).expect("read");
    s.compact().expect("compact");
    drop(s);
    // The crash came after the snapshot was renamed, before the old log was deleted.
    fs::write(log::path(dir.path(), 0), old).expect("restore");
    let s = open(dir.path());
    assert_eq!(total(&s), 3);
    assert_eq!(log::list(dir.path()).expect("list"), vec![1]);
}

#[test]
fn a_second_process_cannot_open_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _s = open(dir.path());
    assert!(matches!(
        EmbeddedStore::open(dir.path()),
        Err(OpenError::Locked(_))
    ));
}

#[test]
fn a_corrupt_snapshot_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("snapshot.json"), "{not json").expect("write");
    let err = EmbeddedStore::open(dir.path()).expect_err("refuses");
    assert!(err.to_string().contains("snapshot.json"), "{err}");
}

#[test]
fn read_gives_one_shard_and_the_allowlists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    merge(&s, None, 5).expect("merge");
    let stored = run(s.read()).expect("read");
    assert_eq!(stored.shards.len(), 1);
    assert_eq!(stored.shards[0].0, "embedded");
    assert_eq!(stored.totals(), delta(5));
    assert_eq!(stored.allowlists.len(), 1, "a merge stores its allowlist");
}

/// The realistic beacon that the benches, the fuzz seeds and the load benchmark share.
const BEACON: &str = include_str!("../../../fixtures/beacon.json");

#[test]
fn a_beacon_push_takes_at_most_256_bytes_of_log_plus_framing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ingest = Ingest::new(Allowlist::example(), Limits::default());
    let outcome = ingest.push(Some("text/plain;charset=UTF-8"), BEACON.as_bytes());
    assert_eq!(outcome.status, 200, "{}", outcome.body);
    let s = open(dir.path());
    // A 22-character id (128 bits, as a client sends), the longest id, none.
    let ids = [
        BatchId::parse("Zm9vYmFyYmF6cXV4MTIzNA").expect("valid"),
        BatchId::parse(&"x".repeat(64)).expect("valid"),
    ];
    let mut sizes = Vec::new();
    for (name, batch) in [
        ("22-char id", Some(&ids[0])),
        ("64-char id", Some(&ids[1])),
        ("no id", None),
    ] {
        let before = s.log_bytes();
        let p = Push {
            batch,
            now_ms: NOW_MS,
            delta: outcome.delta.clone(),
            allowlist: ingest.allowlist(),
        };
        assert_eq!(run(s.merge(&p)).expect("merge"), Merged::Applied);
        let bytes = s.log_bytes() - before;
        println!(
            "log bytes per beacon push, {name}: {bytes} (record {} + framing {})",
            bytes - 8,
            log::FRAME_BYTES
        );
        sizes.push(bytes);
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        largest <= 256 + log::FRAME_BYTES as u64,
        "a beacon push took {largest} bytes of log: {sizes:?}"
    );
}
