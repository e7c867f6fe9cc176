//! Serve mode: read aggregates from a remote store (the Cloudflare deployment, DynamoDB) on a
//! short refresh loop and serve them on `/metrics`, rendered exactly as standalone renders.
//!
//! A source returns cumulative totals per shard. Each read of a shard is folded into what was
//! seen before with [`Aggregate::merge_max`]: cumulative values only grow, so a stale read (an
//! eventually consistent KV or a lagging replica) can never make a counter go backwards. The
//! rendered totals are the sum over shards.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus::Registry;
use pum_shared::aggregate::Overflow;
use pum_shared::{Aggregate, Allowlist, StoreError};
use tokio::net::TcpListener;

use tokio_util::sync::CancellationToken;

use crate::render::{AggregateCollector, Totals};
use crate::server::{self, ConnectionMetrics, HttpLimits};
use crate::standalone::metrics_app;
use crate::telemetry::SelfMetrics;

/// A remote store the collector reads.
pub trait Source: Send + Sync + 'static {
    /// Reads the cumulative totals of every shard, keyed by a stable shard id.
    fn read(&self) -> impl Future<Output = Result<Vec<(String, Aggregate)>, StoreError>> + Send;
}

/// The latest totals of a remote source, kept monotonic per shard.
#[derive(Default)]
pub struct Latest {
    inner: RwLock<LatestInner>,
}

#[derive(Default)]
struct LatestInner {
    shards: BTreeMap<String, Aggregate>,
    total: Aggregate,
    last_ok: Option<Instant>,
}

impl Latest {
    /// Folds one read into the totals. If the shards' sum would overflow a total, the totals
    /// served stay the last ones that were exact (nothing is pinned at a ceiling), and the error
    /// says which series; the snapshot age then grows, which the alert rules watch.
    pub fn update(&self, read: Vec<(String, Aggregate)>, now: Instant) -> Result<(), Overflow> {
        let Ok(mut inner) = self.inner.write() else {
            return Ok(());
        };
        for (shard, agg) in read {
            inner.shards.entry(shard).or_default().merge_max(&agg);
        }
        let mut total = Aggregate::new();
        for agg in inner.shards.values() {
            total.try_merge(agg)?;
        }
        inner.total = total;
        inner.last_ok = Some(now);
        Ok(())
    }

    /// When the last successful read was.
    pub fn last_ok(&self) -> Option<Instant> {
        self.inner.read().ok().and_then(|i| i.last_ok)
    }
}

impl Totals for Latest {
    fn with_totals(&self, f: &mut dyn FnMut(&Aggregate)) -> bool {
        match self.inner.read() {
            Ok(inner) => {
                f(&inner.total);
                true
            }
            Err(_) => false,
        }
    }
}

/// Settings of serve mode.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The allowlist the totals are rendered with (the same one the edge validates with).
    pub allowlist: Allowlist,
    /// How often the source is read.
    pub refresh: Duration,
    /// Bearer token required on `/metrics`, if any.
    pub metrics_token: Option<String>,
    /// Timeouts and connection bounds of the listener.
    pub http: HttpLimits,
}

/// Reads `source` every `refresh` and serves `/metrics` on `listener` until `shutdown`.
pub async fn run<S: Source>(
    source: S,
    settings: ServeSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let latest = Arc::new(Latest::default());
    let telemetry = SelfMetrics::new();
    let registry = Registry::new();
    telemetry.register(&registry)?;
    registry.register(Box::new(AggregateCollector::new(
        Arc::new(settings.allowlist.clone()),
        Arc::clone(&latest) as Arc<dyn Totals>,
        telemetry.clone(),
    )))?;
    let started = Instant::now();
    let reader_latest = Arc::clone(&latest);
    let reader_telemetry = telemetry.clone();
    let reader = tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let timer = reader_telemetry.store_read_seconds.start_timer();
            let result = source.read().await;
            timer.observe_duration();
            let folded = result.and_then(|read| {
                reader_latest
                    .update(read, Instant::now())
                    .map_err(StoreError::from)
            });
            if let Err(e) = folded {
                reader_telemetry
                    .store_errors_total
                    .with_label_values(&["read"])
                    .inc();
                tracing::warn!(error = %e, "reading the store failed; serving the last totals");
            }
            let age = reader_latest.last_ok().unwrap_or(started).elapsed();
            reader_telemetry
                .snapshot_age_seconds
                .set(age.as_secs() as i64);
        }
    });
    let app = metrics_app(registry, settings.metrics_token.clone());
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        app,
        settings.http.for_metrics(),
        ConnectionMetrics::new(&telemetry, "metrics"),
        stop.clone(),
    ));
    shutdown.await;
    stop.cancel();
    server.await?;
    reader.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pum_shared::{SeriesKey, SeriesValue};

    fn agg(n: u128) -> Aggregate {
        let mut a = Aggregate::new();
        a.add_counter(SeriesKey::new("x_total", &[]), n);
        a
    }

    fn total(latest: &Latest) -> u128 {
        let mut out = 0;
        latest.with_totals(&mut |t| {
            if let Some(SeriesValue::Counter { micros }) = t.get(&SeriesKey::new("x_total", &[])) {
                out = *micros;
            }
        });
        out
    }

    #[test]
    fn stale_reads_never_go_backwards_and_shards_add_up() {
        let latest = Latest::default();
        let now = Instant::now();
        let update = |read: Vec<(&str, u128)>| {
            let read = read.into_iter().map(|(s, n)| (s.to_owned(), agg(n)));
            latest.update(read.collect(), now)
        };
        update(vec![("a", 10), ("b", 5)]).expect("fits");
        assert_eq!(total(&latest), 15);
        // Shard a read from a stale replica; shard b missing from this read.
        update(vec![("a", 7)]).expect("fits");
        assert_eq!(total(&latest), 15);
        update(vec![("a", 12), ("b", 6)]).expect("fits");
        assert_eq!(total(&latest), 18);
        // Shards whose sum would overflow: the last exact totals stay.
        let e = update(vec![("a", u128::MAX - 5)]).expect_err("overflows");
        assert_eq!(e.key, SeriesKey::new("x_total", &[]));
        assert_eq!(total(&latest), 18);
    }
}
