//! pum's own process metrics, made from their one declaration in [`pum_shared::own`] (which also
//! declares the counters of pushes, samples and rejections, which travel through the store).

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use pum_shared::own::{self, OwnMetric};

/// The collector's own metrics. Cloning shares them.
#[derive(Clone)]
pub struct SelfMetrics {
    /// `pum_store_write_seconds`: time to merge one push into the store.
    pub store_write_seconds: Histogram,
    /// `pum_store_read_seconds`: time to read the totals from the store (on each scrape for the
    /// embedded store, on each refresh for remote sources).
    pub store_read_seconds: Histogram,
    /// `pum_store_errors_total{op="read"|"write"}`: failed store operations.
    pub store_errors_total: IntCounterVec,
    /// `pum_series`: series held in the totals.
    pub series: IntGauge,
    /// `pum_series_skipped`: series not rendered because the allowlist no longer has their metric
    /// or their buckets changed.
    pub series_skipped: IntGauge,
    /// `pum_snapshot_age_seconds`: seconds since the totals were last read successfully from
    /// the store (always 0 for the embedded store, which is read on every scrape).
    pub snapshot_age_seconds: IntGauge,
    /// `pum_fold_lag_seconds`: how far a folding store's totals trailed at its latest fold;
    /// reported by the aggregate collector, and only for such a store.
    pub fold_lag_seconds: Gauge,
    /// `pum_http_connections{listener="ingest"|"metrics"}`: connections open now.
    pub connections: IntGaugeVec,
    /// `pum_http_connections_closed_total{listener, reason}`: connections closed, by why:
    /// `closed` (by the client, or after an answer), `header_timeout`, `idle_timeout`, `evicted`
    /// (closed to admit a new one at the connection bound), `refused` (503 at the bound) and
    /// `shutdown` (dropped at the shutdown deadline).
    pub connections_closed_total: IntCounterVec,
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SelfMetrics {
    /// Creates the metrics (unregistered).
    pub fn new() -> Self {
        // The options are constants, covered by tests: creation cannot fail.
        let hist = |m: OwnMetric| {
            Histogram::with_opts(
                HistogramOpts::new(m.name, m.help).buckets(own::LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid histogram options")
        };
        let opts = |m: OwnMetric| Opts::new(m.name, m.help);
        let labels = |m: OwnMetric| m.labels.iter().map(|(l, _)| *l).collect::<Vec<_>>();
        let counters =
            |m: OwnMetric| IntCounterVec::new(opts(m), &labels(m)).expect("valid counter options");
        let gauge = |m: OwnMetric| IntGauge::with_opts(opts(m)).expect("valid gauge options");
        SelfMetrics {
            store_write_seconds: hist(own::STORE_WRITE_SECONDS),
            store_read_seconds: hist(own::STORE_READ_SECONDS),
            store_errors_total: counters(own::STORE_ERRORS),
            series: gauge(own::SERIES),
            series_skipped: gauge(own::SERIES_SKIPPED),
            snapshot_age_seconds: gauge(own::SNAPSHOT_AGE),
            fold_lag_seconds: Gauge::with_opts(opts(own::FOLD_LAG)).expect("valid gauge options"),
            connections: IntGaugeVec::new(
                opts(own::HTTP_CONNECTIONS),
                &labels(own::HTTP_CONNECTIONS),
            )
            .expect("valid gauge options"),
            connections_closed_total: counters(own::HTTP_CONNECTIONS_CLOSED),
        }
    }

    /// Registers every metric in `registry`, except `pum_series`, `pum_series_skipped` and
    /// `pum_fold_lag_seconds`: the aggregate collector sets and reports those in the same pass
    /// that counts them, so they are fresh on every scrape (registered apart, they showed the
    /// previous scrape's count), and the lag only for a store that folds.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.store_write_seconds.clone()))?;
        registry.register(Box::new(self.store_read_seconds.clone()))?;
        registry.register(Box::new(self.store_errors_total.clone()))?;
        registry.register(Box::new(self.snapshot_age_seconds.clone()))?;
        registry.register(Box::new(self.connections.clone()))?;
        registry.register(Box::new(self.connections_closed_total.clone()))?;
        // Both ops show from the start, so rate() works before the first error.
        self.store_errors_total.with_label_values(&["read"]);
        self.store_errors_total.with_label_values(&["write"]);
        Ok(())
    }
}
