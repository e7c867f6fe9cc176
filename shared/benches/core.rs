//! Criterion benches of the core: what one push costs the ingest, and what the store and the
//! collector pay per push and per snapshot.
//!
//! - `push/beacon`: parse and validate the realistic 1.4 KB beacon (`fixtures/beacon.json`: three
//!   counter increments, eight histogram observations) into its delta and answer.
//! - `push/refused_invalid_json`: a push refused whole (the beacon cut in half).
//! - `merge/beacon_delta_into_10k`: merge that delta into a cumulative aggregate of 10k series,
//!   as a store does for every push.
//! - `snapshot/encode_10k`, `snapshot/decode_10k`: the snapshot JSON of those 10k series, as the
//!   stores write it and the collector reads it.
//! - `record/encode_beacon`, `record/decode_beacon`: the beacon's delta as a delta record (with a
//!   22-character batch id), as the ingest writes it for every push and a store's fold reads it.
//!
//! `cargo bench -p pum-shared --bench core` (add `-- --quick` for a smoke run). Benchmarks
//! measure; no test asserts a time.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use pum_shared::aggregate::to_micros;
use pum_shared::record;
use pum_shared::{Aggregate, Allowlist, Ingest, Limits, SeriesKey, SeriesValue};

/// The realistic beacon, shared with the tests, the fuzz seeds and the load benchmark.
const BEACON: &str = include_str!("../../fixtures/beacon.json");

/// Series in the cumulative aggregate of the merge and snapshot benches.
const SERIES: usize = 10_000;

fn ingest() -> Ingest {
    Ingest::new(Allowlist::example(), Limits::default())
}

/// A cumulative aggregate of about [`SERIES`] series shaped like the example allowlist's: half
/// counters, half 12-bucket histograms, with a high-cardinality `page` label to reach the count,
/// and the beacon's own series, so that merging its delta updates series that exist (the steady
/// state of a store).
fn cumulative(beacon_delta: &Aggregate) -> Aggregate {
    let features = ["search", "share", "export"];
    let phases = [
        "redirect",
        "dns",
        "connect",
        "tls",
        "request",
        "response",
        "dom_processing",
        "load_event",
    ];
    let mut agg = Aggregate::new();
    agg.merge(beacon_delta);
    let mut i = 0usize;
    while agg.len() < SERIES {
        let page = format!("/page/{i:05}");
        if i.is_multiple_of(2) {
            let feature = features[i % features.len()];
            agg.add_counter(
                SeriesKey::new(
                    "demo_feature_usage_total",
                    &[("feature", feature), ("page", &page)],
                ),
                to_micros(1000.0 + i as f64),
            );
        } else {
            let phase = phases[i % phases.len()];
            let buckets = (0..12u64).map(|b| (i as u64 % 97) * b + 1).collect();
            agg.add_value(
                SeriesKey::new(
                    "browser_navigation_phase_seconds",
                    &[("page", &page), ("phase", phase)],
                ),
                SeriesValue::Histogram {
                    buckets,
                    sum_micros: to_micros(12_345.678_9 + i as f64),
                },
            );
        }
        i += 1;
    }
    agg
}

fn push(c: &mut Criterion) {
    let ingest = ingest();
    let beacon = BEACON.as_bytes();
    let first = ingest.push(Some("text/plain;charset=UTF-8"), beacon);
    assert_eq!(first.status, 200, "the beacon is accepted: {}", first.body);
    assert!(first.rejected.is_empty(), "the beacon is accepted whole");
    let cut = &beacon[..beacon.len() / 2];
    assert_eq!(
        ingest.push(Some("application/json"), cut).status,
        400,
        "half a beacon is refused"
    );

    let mut group = c.benchmark_group("push");
    group.throughput(Throughput::Bytes(beacon.len() as u64));
    group.bench_function("beacon", |b| {
        b.iter(|| {
            ingest.push(
                black_box(Some("text/plain;charset=UTF-8")),
                black_box(beacon),
            )
        })
    });
    group.throughput(Throughput::Bytes(cut.len() as u64));
    group.bench_function("refused_invalid_json", |b| {
        b.iter(|| ingest.push(black_box(Some("application/json")), black_box(cut)))
    });
    group.finish();
}

fn merge(c: &mut Criterion) {
    let delta = ingest()
        .push(Some("text/plain;charset=UTF-8"), BEACON.as_bytes())
        .delta;
    let mut total = cumulative(&delta);
    let mut group = c.benchmark_group("merge");
    // Merge into the same aggregate again and again: the delta's series already exist, as in a
    // store's steady state, and no clone of 10k series pollutes the measurement.
    group.bench_function("beacon_delta_into_10k", |b| {
        b.iter(|| total.merge(black_box(&delta)))
    });
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let delta = ingest()
        .push(Some("text/plain;charset=UTF-8"), BEACON.as_bytes())
        .delta;
    let total = cumulative(&delta);
    let text = total.to_json();
    assert_eq!(
        Aggregate::from_json(&text).expect("the snapshot decodes"),
        total,
        "the snapshot round-trips"
    );

    let mut group = c.benchmark_group("snapshot");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(20);
    group.bench_function("encode_10k", |b| b.iter(|| black_box(&total).to_json()));
    group.bench_function("decode_10k", |b| {
        b.iter(|| Aggregate::from_json(black_box(&text)).expect("the snapshot decodes"))
    });
    group.finish();
}

fn record(c: &mut Criterion) {
    let ingest = ingest();
    let delta = ingest
        .push(Some("text/plain;charset=UTF-8"), BEACON.as_bytes())
        .delta;
    let list = ingest.allowlist();
    let batch = Some("Vq3xY0-Jk_w2Lm9PqRs1Ab");
    let at_secs = 1_751_000_000;
    let mut bytes = Vec::new();
    record::encode(list, batch, at_secs, &delta, &mut bytes).expect("the beacon encodes");
    assert_eq!(
        record::decode(&bytes, list).map(|r| r.delta),
        Ok(delta.clone()),
        "the record round-trips"
    );

    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    // Into one buffer, cleared each time: the allocation is the caller's to reuse.
    let mut out = Vec::with_capacity(2 * bytes.len());
    group.bench_function("encode_beacon", |b| {
        b.iter(|| {
            out.clear();
            record::encode(list, batch, at_secs, black_box(&delta), &mut out)
                .expect("the beacon encodes");
            out.len()
        })
    });
    group.bench_function("decode_beacon", |b| {
        b.iter(|| record::decode(black_box(&bytes), list).expect("the record decodes"))
    });
    group.finish();
}

// What `criterion_group!` and `criterion_main!` expand to, written out: the macro's generated
// `pub fn` would trip the workspace's `missing_docs` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    push(&mut c);
    merge(&mut c);
    snapshot(&mut c);
    record(&mut c);
    c.final_summary();
}
