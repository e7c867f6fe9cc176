//! pum's own process metrics, declared in one place. (The counters of pushes, samples and
//! rejections travel through the store with the data and are declared in
//! `pum_shared::config::internal`, so that every backend reports them.)

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Buckets for store latencies, in seconds: from 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

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
        // The options below are constants: creation cannot fail.
        let hist = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
                .expect("valid histogram options")
        };
        SelfMetrics {
            store_write_seconds: hist(
                "pum_store_write_seconds",
                "Time to merge one push into the store, in seconds.",
            ),
            store_read_seconds: hist(
                "pum_store_read_seconds",
                "Time to read the totals from the store, in seconds.",
            ),
            store_errors_total: IntCounterVec::new(
                Opts::new("pum_store_errors_total", "Failed store operations, by op (read, write)."),
                &["op"],
            )
            .expect("valid counter options"),
            series: IntGauge::new("pum_series", "Series held in the totals.").expect("valid gauge"),
            series_skipped: IntGauge::new(
                "pum_series_skipped",
                "Series not rendered because the allowlist no longer has their metric or their buckets changed.",
            )
            .expect("valid gauge"),
            snapshot_age_seconds: IntGauge::new(
                "pum_snapshot_age_seconds",
                "Seconds since the totals were last read successfully from the store.",
            )
            .expect("valid gauge"),
            connections: IntGaugeVec::new(
                Opts::new("pum_http_connections", "HTTP connections open now, by listener."),
                &["listener"],
            )
            .expect("valid gauge options"),
            connections_closed_total: IntCounterVec::new(
                Opts::new(
                    "pum_http_connections_closed_total",
                    "HTTP connections closed, by listener and reason (closed, header_timeout, idle_timeout, evicted, refused, shutdown).",
                ),
                &["listener", "reason"],
            )
            .expect("valid counter options"),
        }
    }

    /// Registers every metric in `registry`, except `pum_series` and `pum_series_skipped`: the
    /// aggregate collector sets and reports those in the same pass that counts them, so they
    /// are fresh on every scrape (registered apart, they showed the previous scrape's count).
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
