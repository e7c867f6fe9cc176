//! Renders aggregates for Prometheus with the `prometheus` crate: a custom [`Collector`] that
//! builds metric families from the latest totals on each scrape. No network I/O happens inside
//! `collect()`: it only reads totals already in memory.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricType};
use pum_shared::aggregate::micros_to_f64;
use pum_shared::allowlist::{MetricKind, MetricSpec};
use pum_shared::{Aggregate, Allowlist, SeriesKey, SeriesValue};

use crate::telemetry::SelfMetrics;

/// Something that holds the latest totals: the embedded store, or a remote source's last read.
pub trait Totals: Send + Sync {
    /// Runs `f` on the latest totals; `None` if they cannot be read now.
    fn with_totals(&self, f: &mut dyn FnMut(&Aggregate)) -> bool;
}

/// The collector of every allowlisted metric's series.
pub struct AggregateCollector {
    allowlist: Arc<Allowlist>,
    totals: Arc<dyn Totals>,
    telemetry: SelfMetrics,
    descs: Vec<Desc>,
}

impl AggregateCollector {
    /// A collector over `totals`, rendering the metrics of `allowlist`.
    pub fn new(allowlist: Arc<Allowlist>, totals: Arc<dyn Totals>, telemetry: SelfMetrics) -> Self {
        let mut descs: Vec<Desc> = allowlist
            .metrics()
            .filter_map(|m| {
                let labels = m.labels.iter().map(|l| l.name.clone()).collect();
                Desc::new(m.name.clone(), m.help.clone(), labels, Default::default()).ok()
            })
            .collect();
        for gauge in [&telemetry.series, &telemetry.series_skipped] {
            descs.extend(gauge.desc().into_iter().cloned());
        }
        AggregateCollector {
            allowlist,
            totals,
            telemetry,
            descs,
        }
    }
}

impl Collector for AggregateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut out = Vec::new();
        let timer = self.telemetry.store_read_seconds.start_timer();
        let ok = self.totals.with_totals(&mut |totals| {
            out = families(&self.allowlist, totals, &self.telemetry);
        });
        timer.observe_duration();
        if !ok {
            self.telemetry
                .store_errors_total
                .with_label_values(&["read"])
                .inc();
        }
        // Counted by `families` just now: reported here so a scrape shows this pass's counts.
        out.extend(self.telemetry.series.collect());
        out.extend(self.telemetry.series_skipped.collect());
        out
    }
}

/// Builds one family per allowlisted metric that has series. Series of metrics no longer in the
/// allowlist, or histograms whose bucket count no longer matches it, are skipped and counted.
pub fn families(
    allowlist: &Allowlist,
    totals: &Aggregate,
    telemetry: &SelfMetrics,
) -> Vec<proto::MetricFamily> {
    let mut out: Vec<proto::MetricFamily> = Vec::new();
    let mut current: Option<(&MetricSpec, Vec<proto::Metric>)> = None;
    let mut skipped = 0u64;
    // Series come sorted by metric name, so each family's series are contiguous.
    for (key, value) in totals.iter() {
        if current
            .as_ref()
            .is_none_or(|(spec, _)| *spec.name != **key.metric())
        {
            if let Some((spec, metrics)) = current.take() {
                out.push(family(spec, metrics));
            }
            current = allowlist.get(key.metric()).map(|spec| (spec, Vec::new()));
        }
        match current
            .as_mut()
            .and_then(|(spec, metrics)| metric(spec, key, value).map(|m| metrics.push(m)))
        {
            Some(()) => {}
            None => skipped += 1,
        }
    }
    if let Some((spec, metrics)) = current.take() {
        out.push(family(spec, metrics));
    }
    telemetry.series.set(totals.len() as i64);
    telemetry.series_skipped.set(skipped as i64);
    out.retain(|f| !f.get_metric().is_empty());
    out
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

    #[test]
    fn renders_cumulative_buckets_and_skips_mismatches() {
        let list = Allowlist::example();
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
        let telemetry = SelfMetrics::new();
        let fams = families(&list, &totals, &telemetry);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&fams, &mut text)
            .expect("encodes");
        let text = String::from_utf8(text).expect("utf8");
        insta::assert_snapshot!(text);
        assert_eq!(telemetry.series_skipped.get(), 2);
        assert_eq!(telemetry.series.get(), 4);
    }

    #[test]
    fn own_gauges_are_fresh_on_the_first_scrape() {
        struct Fixed(Aggregate);
        impl Totals for Fixed {
            fn with_totals(&self, f: &mut dyn FnMut(&Aggregate)) -> bool {
                f(&self.0);
                true
            }
        }
        let mut totals = Aggregate::new();
        totals.add_counter(SeriesKey::new("gone_total", &[]), 1);
        totals.add_counter(
            SeriesKey::new("demo_feature_usage_total", &[("feature", "search")]),
            1,
        );
        let telemetry = SelfMetrics::new();
        let registry = prometheus::Registry::new();
        telemetry.register(&registry).expect("registers");
        registry
            .register(Box::new(AggregateCollector::new(
                Arc::new(Allowlist::example()),
                Arc::new(Fixed(totals)),
                telemetry.clone(),
            )))
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
