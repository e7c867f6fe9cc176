//! Renders aggregates for Prometheus with the `prometheus` crate: a custom [`Collector`] that
//! builds metric families from the latest totals on each scrape. No network I/O happens inside
//! `collect()`: it only reads totals already in memory ([`Latest`]).
//!
//! What a series means (its help, type and buckets) comes from the allowlists the store holds:
//! every ingest writes the allowlist it validates against into its store
//! ([`pum_shared::Store::describe`]), so the collector needs no copy of it. An allowlist given to
//! the collector (`--config`) comes first; where it differs from a stored one the difference is
//! logged, metric by metric. A series no allowlist describes as stored (an unknown metric, or
//! buckets that changed) is not rendered: it is logged once per metric and counted in
//! `pum_series_skipped`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricType};
use pum_shared::aggregate::{Overflow, micros_to_f64};
use pum_shared::allowlist::{MetricKind, MetricSpec};
use pum_shared::{Aggregate, Allowlist, Read, SeriesKey, SeriesValue, StoreError, Stored};

use crate::telemetry::SelfMetrics;

/// The latest totals read from a store, kept monotonic per shard, and the allowlists that
/// describe them.
pub struct Latest {
    given: Option<Arc<Allowlist>>,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    shards: BTreeMap<String, Aggregate>,
    total: Aggregate,
    /// The stored allowlists, oldest first (each once, by fingerprint).
    stored: Vec<Arc<Allowlist>>,
    last_ok: Option<Instant>,
    fold_lag: Option<std::time::Duration>,
}

impl Latest {
    /// Empty totals, rendered with `given` first (if any), then with the stored allowlists.
    pub fn new(given: Option<Allowlist>) -> Self {
        Latest {
            given: given.map(Arc::new),
            inner: RwLock::new(Inner::default()),
        }
    }

    /// Folds one read into the totals: each shard with [`Aggregate::merge_max`], so that a stale
    /// read (an eventually consistent KV or a lagging replica) never makes a counter go backwards.
    /// If the shards' sum would overflow a total, the totals served stay the last ones that were
    /// exact (nothing is pinned at a ceiling), and the error says which series; the snapshot age
    /// then grows, which the alert rules watch.
    pub fn update(&self, read: Stored, now: Instant) -> Result<(), Overflow> {
        let Ok(mut inner) = self.inner.write() else {
            return Ok(());
        };
        for list in read.allowlists {
            let fingerprint = list.fingerprint();
            if inner.stored.iter().any(|s| s.fingerprint() == fingerprint) {
                continue;
            }
            if let Some(given) = &self.given {
                log_differences(given, &list);
            }
            inner.stored.push(Arc::new(list));
        }
        for (shard, agg) in read.shards {
            match inner.shards.get_mut(&shard) {
                Some(seen) => seen.merge_max(&agg),
                None => {
                    inner.shards.insert(shard, agg);
                }
            }
        }
        let mut total = Aggregate::new();
        for agg in inner.shards.values() {
            total.try_merge(agg)?;
        }
        inner.total = total;
        inner.last_ok = Some(now);
        inner.fold_lag = read.fold_lag;
        Ok(())
    }

    /// When the last successful read was.
    pub fn last_ok(&self) -> Option<Instant> {
        self.inner.read().ok().and_then(|i| i.last_ok)
    }

    /// The specs that may describe `metric`: the given allowlist's, then the stored ones',
    /// newest first.
    fn specs<'a>(&'a self, inner: &'a Inner, metric: &str) -> Vec<&'a MetricSpec> {
        let given = self.given.iter().filter_map(|g| g.get(metric));
        given
            .chain(inner.stored.iter().rev().filter_map(|s| s.get(metric)))
            .collect()
    }
}

/// Reads `store` into `latest`, timing the read (`pum_store_read_seconds`) and counting a
/// failure (`pum_store_errors_total{op="read"}`).
pub async fn read_into<S: Read>(store: &S, latest: &Latest, telemetry: &SelfMetrics) {
    let timer = telemetry.store_read_seconds.start_timer();
    let read = store.read().await;
    timer.observe_duration();
    let folded = read.and_then(|r| latest.update(r, Instant::now()).map_err(StoreError::from));
    if let Err(e) = folded {
        telemetry
            .store_errors_total
            .with_label_values(&["read"])
            .inc();
        tracing::warn!(error = %e, "reading the store failed; serving the last totals");
    }
}

/// Logs, metric by metric, where an allowlist given to the collector differs from one an ingest
/// stored.
fn log_differences(given: &Allowlist, stored: &Allowlist) {
    for spec in stored.metrics() {
        match given.get(&spec.name) {
            None => tracing::warn!(
                metric = %spec.name,
                "the store's allowlist has a metric the given --config does not; rendering it from the store's"
            ),
            Some(g)
                if g != spec
                    && (g.kind != spec.kind || g.help != spec.help || g.labels != spec.labels) =>
            {
                tracing::warn!(
                    metric = %spec.name,
                    "the given --config describes this metric differently from the allowlist the ingest stored; rendering from --config where it fits the stored series"
                )
            }
            Some(_) => {}
        }
    }
    for spec in given.metrics() {
        if stored.get(&spec.name).is_none() {
            tracing::warn!(
                metric = %spec.name,
                "the given --config has a metric the store's allowlist does not"
            );
        }
    }
}

/// The collector of every described metric's series.
pub struct AggregateCollector {
    latest: Arc<Latest>,
    telemetry: SelfMetrics,
    descs: Vec<Desc>,
    /// Metrics whose skipped series were logged already.
    logged: Mutex<HashSet<String>>,
}

impl AggregateCollector {
    /// A collector over `latest`.
    pub fn new(latest: Arc<Latest>, telemetry: SelfMetrics) -> Self {
        let mut descs = Vec::new();
        for gauge in [&telemetry.series, &telemetry.series_skipped] {
            descs.extend(gauge.desc().into_iter().cloned());
        }
        descs.extend(telemetry.fold_lag_seconds.desc().into_iter().cloned());
        AggregateCollector {
            latest,
            telemetry,
            descs,
            logged: Mutex::new(HashSet::new()),
        }
    }
}

impl Collector for AggregateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut out = match self.latest.inner.read() {
            Ok(inner) => {
                let (mut families, skipped) = families(&self.latest, &inner, &self.telemetry);
                self.log_skipped(skipped);
                if let Some(lag) = inner.fold_lag {
                    self.telemetry.fold_lag_seconds.set(lag.as_secs_f64());
                    families.extend(self.telemetry.fold_lag_seconds.collect());
                }
                families
            }
            Err(_) => {
                self.telemetry
                    .store_errors_total
                    .with_label_values(&["read"])
                    .inc();
                Vec::new()
            }
        };
        // Counted by `families` just now: reported here so a scrape shows this pass's counts.
        out.extend(self.telemetry.series.collect());
        out.extend(self.telemetry.series_skipped.collect());
        out
    }
}

impl AggregateCollector {
    fn log_skipped(&self, skipped: Vec<(String, &'static str)>) {
        let Ok(mut logged) = self.logged.lock() else {
            return;
        };
        for (metric, why) in skipped {
            if logged.insert(metric.clone()) {
                tracing::warn!(%metric, "series of this metric are not rendered: {why}; counted in pum_series_skipped");
            }
        }
    }
}

/// Builds one family per described metric that has series, and says which metrics had series
/// skipped and why.
fn families(
    latest: &Latest,
    inner: &Inner,
    telemetry: &SelfMetrics,
) -> (Vec<proto::MetricFamily>, Vec<(String, &'static str)>) {
    let totals = &inner.total;
    let mut out: Vec<proto::MetricFamily> = Vec::new();
    let mut skipped_metrics = Vec::new();
    // The metric being rendered: its candidate specs, the spec its family uses, its series.
    let mut current: Option<(Vec<&MetricSpec>, Option<&MetricSpec>, Vec<proto::Metric>)> = None;
    let mut skipped = 0u64;
    let flush =
        |current: &mut Option<(Vec<&MetricSpec>, Option<&MetricSpec>, Vec<proto::Metric>)>,
         out: &mut Vec<proto::MetricFamily>| {
            if let Some((_, Some(spec), metrics)) = current.take() {
                out.push(family(spec, metrics));
            }
        };
    // Series come sorted by metric name, so each family's series are contiguous.
    for (key, value) in totals.iter() {
        if current
            .as_ref()
            .is_none_or(|(specs, _, _)| specs.first().is_none_or(|s| *s.name != **key.metric()))
        {
            flush(&mut current, &mut out);
            current = Some((latest.specs(inner, key.metric()), None, Vec::new()));
        }
        let Some((specs, chosen, metrics)) = current.as_mut() else {
            continue;
        };
        // The family's spec is the first that fits its first series; later series must fit it.
        let spec = match chosen {
            Some(spec) => Some(*spec),
            None => specs.iter().copied().find(|s| fits(s, value)),
        };
        match spec.and_then(|s| metric(s, key, value).map(|m| (s, m))) {
            Some((s, m)) => {
                *chosen = Some(s);
                metrics.push(m);
            }
            None => {
                skipped += 1;
                let why = if specs.is_empty() {
                    "no allowlist given or stored describes the metric"
                } else {
                    "its type or buckets differ from every allowlist given or stored"
                };
                if skipped_metrics
                    .last()
                    .is_none_or(|(m, _): &(String, _)| **m != **key.metric())
                {
                    skipped_metrics.push((key.metric().to_string(), why));
                }
            }
        }
    }
    flush(&mut current, &mut out);
    telemetry.series.set(totals.len() as i64);
    telemetry.series_skipped.set(skipped as i64);
    out.retain(|f| !f.get_metric().is_empty());
    (out, skipped_metrics)
}

/// Whether `spec` can render `value`: the same kind, and for histograms the same buckets.
fn fits(spec: &MetricSpec, value: &SeriesValue) -> bool {
    match (&spec.kind, value) {
        (MetricKind::Counter, SeriesValue::Counter { .. }) => true,
        (MetricKind::Histogram { buckets: bounds }, SeriesValue::Histogram { buckets, .. }) => {
            buckets.len() == bounds.len() + 1
        }
        _ => false,
    }
}

fn family(spec: &MetricSpec, metrics: Vec<proto::Metric>) -> proto::MetricFamily {
    let mut f = proto::MetricFamily::default();
    f.set_name(spec.name.clone());
    f.set_help(spec.help.clone());
    f.set_field_type(match spec.kind {
        MetricKind::Counter => MetricType::COUNTER,
        MetricKind::Histogram { .. } => MetricType::HISTOGRAM,
    });
    f.set_metric(metrics);
    f
}

fn metric(spec: &MetricSpec, key: &SeriesKey, value: &SeriesValue) -> Option<proto::Metric> {
    let mut m = proto::Metric::default();
    m.set_label(
        key.labels()
            .iter()
            .map(|(k, v)| {
                let mut p = proto::LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect(),
    );
    match (&spec.kind, value) {
        (MetricKind::Counter, SeriesValue::Counter { micros }) => {
            let mut c = proto::Counter::default();
            c.set_value(micros_to_f64(*micros));
            m.set_counter(c);
        }
        (
            MetricKind::Histogram { buckets: bounds },
            SeriesValue::Histogram {
                buckets,
                sum_micros,
            },
        ) if buckets.len() == bounds.len() + 1 => {
            let mut h = proto::Histogram::default();
            let mut cumulative = 0u64;
            let mut out = Vec::with_capacity(bounds.len());
            for (bound, count) in bounds.iter().zip(buckets) {
                cumulative = cumulative.saturating_add(*count);
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                out.push(b);
            }
            h.set_bucket(out);
            h.set_sample_count(value.count().unwrap_or(cumulative));
            h.set_sample_sum(micros_to_f64(*sum_micros));
            m.set_histogram(h);
        }
        _ => return None,
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    fn stored(totals: Aggregate, allowlists: Vec<Allowlist>) -> Stored {
        Stored {
            allowlists,
            shards: vec![("s".to_owned(), totals)],
            fold_lag: None,
        }
    }

    fn render(latest: &Latest, telemetry: &SelfMetrics) -> (String, Vec<(String, &'static str)>) {
        let inner = latest.inner.read().expect("lock");
        let (fams, skipped) = families(latest, &inner, telemetry);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&fams, &mut text)
            .expect("encodes");
        (String::from_utf8(text).expect("utf8"), skipped)
    }

    fn example_totals() -> Aggregate {
        let mut totals = Aggregate::new();
        totals.add_counter(
            SeriesKey::new("demo_feature_usage_total", &[("feature", "search")]),
            2_500_000,
        );
        totals.observe_all(
            SeriesKey::new("demo_third_party_api_seconds", &[("api", "maps")]),
            8,
            [(0, 50_000), (3, 300_000), (3, 300_000), (7, 7_000_000)],
        );
        // Wrong bucket count (the config changed): skipped, not mis-rendered.
        totals.observe_all(SeriesKey::new("browser_cls", &[]), 2, [(0, 1)]);
        // Not in the allowlist any more.
        totals.add_counter(SeriesKey::new("gone_total", &[]), 1);
        totals
    }

    #[test]
    fn renders_cumulative_buckets_and_skips_mismatches() {
        let latest = Latest::new(Some(Allowlist::example()));
        latest
            .update(stored(example_totals(), vec![]), Instant::now())
            .expect("fits");
        let telemetry = SelfMetrics::new();
        let (text, skipped) = render(&latest, &telemetry);
        insta::assert_snapshot!("renders_cumulative_buckets_and_skips_mismatches", text);
        assert_eq!(telemetry.series_skipped.get(), 2);
        assert_eq!(telemetry.series.get(), 4);
        assert_eq!(
            skipped.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
            ["browser_cls", "gone_total"]
        );
    }

    #[test]
    fn the_stored_allowlist_renders_without_a_given_one() {
        let custom = Allowlist::compile(
            [(
                "custom",
                r#"{"allowedMetrics":[{"name":"gone_total","help":"Custom help.","type":"counter"}]}"#,
            )],
            true,
        )
        .expect("compiles");
        // Nothing given: only what the store describes renders.
        let latest = Latest::new(None);
        latest
            .update(
                stored(example_totals(), vec![custom.clone()]),
                Instant::now(),
            )
            .expect("fits");
        let telemetry = SelfMetrics::new();
        let (text, skipped) = render(&latest, &telemetry);
        assert!(text.contains("# HELP gone_total Custom help.\n"), "{text}");
        assert!(text.contains("gone_total 0.000001"), "{text}");
        assert!(!text.contains("demo_feature_usage_total"), "{text}");
        assert_eq!(telemetry.series_skipped.get(), 3);
        assert!(skipped.iter().any(|(m, _)| m == "demo_feature_usage_total"));
        // The same totals with the example allowlist stored too: its metrics render as well.
        latest
            .update(
                stored(example_totals(), vec![Allowlist::example()]),
                Instant::now(),
            )
            .expect("fits");
        let (text, _) = render(&latest, &telemetry);
        assert!(
            text.contains("demo_feature_usage_total{feature=\"search\"} 2.5"),
            "{text}"
        );
        assert!(text.contains("# HELP gone_total Custom help.\n"), "{text}");
        assert_eq!(telemetry.series_skipped.get(), 1);
    }

    #[test]
    fn stale_reads_never_go_backwards_and_shards_add_up() {
        fn agg(n: u128) -> Aggregate {
            let mut a = Aggregate::new();
            a.add_counter(SeriesKey::new("x_total", &[]), n);
            a
        }
        let latest = Latest::new(None);
        let now = Instant::now();
        let update = |read: Vec<(&str, u128)>| {
            let shards = read
                .into_iter()
                .map(|(s, n)| (s.to_owned(), agg(n)))
                .collect();
            latest.update(
                Stored {
                    allowlists: vec![],
                    shards,
                    fold_lag: None,
                },
                now,
            )
        };
        let total = || {
            let inner = latest.inner.read().expect("lock");
            match inner.total.get(&SeriesKey::new("x_total", &[])) {
                Some(SeriesValue::Counter { micros }) => *micros,
                _ => 0,
            }
        };
        update(vec![("a", 10), ("b", 5)]).expect("fits");
        assert_eq!(total(), 15);
        // Shard a read from a stale replica; shard b missing from this read.
        update(vec![("a", 7)]).expect("fits");
        assert_eq!(total(), 15);
        update(vec![("a", 12), ("b", 6)]).expect("fits");
        assert_eq!(total(), 18);
        // Shards whose sum would overflow: the last exact totals stay.
        let e = update(vec![("a", u128::MAX - 5)]).expect_err("overflows");
        assert_eq!(e.key, SeriesKey::new("x_total", &[]));
        assert_eq!(total(), 18);
    }

    #[test]
    fn own_gauges_are_fresh_on_the_first_scrape() {
        let mut totals = Aggregate::new();
        totals.add_counter(SeriesKey::new("gone_total", &[]), 1);
        totals.add_counter(
            SeriesKey::new("demo_feature_usage_total", &[("feature", "search")]),
            1,
        );
        let latest = Arc::new(Latest::new(Some(Allowlist::example())));
        latest
            .update(stored(totals, vec![]), Instant::now())
            .expect("fits");
        let telemetry = SelfMetrics::new();
        let registry = prometheus::Registry::new();
        telemetry.register(&registry).expect("registers");
        registry
            .register(Box::new(AggregateCollector::new(latest, telemetry.clone())))
            .expect("registers");
        let gauge = |name: &str| {
            registry
                .gather()
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
        };
        assert_eq!(gauge("pum_series"), Some(2.0));
        assert_eq!(gauge("pum_series_skipped"), Some(1.0));
    }
}
