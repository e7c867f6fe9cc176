//! Criterion bench of `/metrics`: rendering 10k series (5000 counters and 5000 histograms of
//! eight buckets) with the `prometheus` crate's text encoder, as a scrape of standalone or serve
//! mode does.
//!
//! `cargo bench -p pum-collector --bench render` (add `-- --quick` for a smoke run). Benchmarks
//! measure; no test asserts a time.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use prometheus::{Encoder, Registry, TextEncoder};
use std::time::Instant;

use pum_collector::render::{AggregateCollector, Latest};
use pum_collector::telemetry::SelfMetrics;
use pum_shared::aggregate::to_micros;
use pum_shared::{Aggregate, Allowlist, SeriesKey, Stored};

/// Pages, each with one counter and one histogram series.
const PAGES: usize = 5000;

fn render(c: &mut Criterion) {
    let pages: Vec<String> = (0..PAGES).map(|i| format!("/page/{i:04}")).collect();
    let config = serde_json::json!({"allowedMetrics": [
        {"name": "bench_clicks_total", "help": "Clicks by page.", "type": "counter",
         "labels": [{"name": "page", "allowedValues": pages}]},
        {"name": "bench_api_seconds", "help": "API latency by page.", "type": "histogram",
         "labels": [{"name": "page", "allowedValues": pages}],
         "buckets": [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]}
    ]})
    .to_string();
    let allowlist = Allowlist::compile([("bench", config.as_str())], false).expect("config");
    let mut totals = Aggregate::new();
    for (i, page) in pages.iter().enumerate() {
        totals.add_counter(
            SeriesKey::new("bench_clicks_total", &[("page", page)]),
            to_micros(1000.0 + i as f64),
        );
        totals.observe_all(
            SeriesKey::new("bench_api_seconds", &[("page", page)]),
            8,
            (0..8).map(|b| (b, to_micros(0.01 * (i + b) as f64))),
        );
    }
    // What a read of the store gives (standalone reads its store before each scrape).
    let stored = Stored {
        allowlists: vec![allowlist],
        shards: vec![("embedded".to_owned(), totals)],
        fold_lag: None,
    };
    let latest = Arc::new(Latest::new(None));
    latest.update(stored.clone(), Instant::now()).expect("fits");
    let registry = Registry::new();
    registry
        .register(Box::new(AggregateCollector::new(
            Arc::clone(&latest),
            SelfMetrics::new(),
        )))
        .expect("register");
    let scrape = || {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .expect("render");
        buf
    };
    let text = String::from_utf8(scrape()).expect("UTF-8");
    assert!(
        text.contains("bench_clicks_total{page=\"/page/0042\"} 1042"),
        "counters render"
    );
    assert!(
        text.contains("bench_api_seconds_bucket{page=\"/page/0042\",le=\"+Inf\"} 8"),
        "histograms render"
    );

    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(2 * PAGES as u64));
    group.bench_function("metrics_10k", |b| b.iter(|| black_box(scrape()).len()));
    // Standalone's scrape: the store's totals copied and folded in, then rendered.
    group.bench_function("metrics_10k_with_read", |b| {
        b.iter(|| {
            latest.update(stored.clone(), Instant::now()).expect("fits");
            black_box(scrape()).len()
        })
    });
    group.finish();
}

// What `criterion_group!` and `criterion_main!` expand to, written out: the macro's generated
// `pub fn` would trip the workspace's `missing_docs` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    render(&mut c);
    c.final_summary();
}
