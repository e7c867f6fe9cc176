//! Serve mode: read aggregates from a remote store (the Cloudflare deployment, DynamoDB) through
//! the read port ([`pum_shared::Read`]) on a short refresh loop and serve them on `/metrics`,
//! rendered exactly as standalone renders ([`crate::render`]): each shard kept monotonic, the
//! sum over shards shown, described by the allowlists the ingests stored.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use pum_shared::{Allowlist, Read};
use tokio::net::TcpListener;

use tokio_util::sync::CancellationToken;

use crate::render::{AggregateCollector, Latest, read_into};
use crate::server::{self, ConnectionMetrics, HttpLimits};
use crate::standalone::metrics_app;
use crate::telemetry::SelfMetrics;

/// Settings of serve mode.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// An allowlist to render with before the ones the store holds (`--config`); none needed.
    pub allowlist: Option<Allowlist>,
    /// How often the source is read.
    pub refresh: Duration,
    /// Bearer token required on `/metrics`, if any.
    pub metrics_token: Option<String>,
    /// Timeouts and connection bounds of the listener.
    pub http: HttpLimits,
}

/// Reads `source` every `refresh` and serves `/metrics` on `listener` until `shutdown`.
pub async fn run<S: Read + Send + Sync + 'static>(
    source: S,
    settings: ServeSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let latest = Arc::new(Latest::new(settings.allowlist.clone()));
    let telemetry = SelfMetrics::new();
    let registry = Registry::new();
    telemetry.register(&registry)?;
    registry.register(Box::new(AggregateCollector::new(
        Arc::clone(&latest),
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
            read_into(&source, &reader_latest, &reader_telemetry).await;
            let age = reader_latest.last_ok().unwrap_or(started).elapsed();
            reader_telemetry
                .snapshot_age_seconds
                .set(age.as_secs() as i64);
        }
    });
    let app = metrics_app(registry, settings.metrics_token.clone(), None);
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
