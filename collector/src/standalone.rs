//! Standalone mode: ingest, the embedded store and `/metrics` in one process.
//!
//! The ingest side is the core's app ([`pum_shared::app`]) behind standalone's adapter
//! ([`crate::ingest`]); the store is the embedded one ([`pum_embedded`]), timed and counted
//! ([`Timed`]); `/metrics` renders what the store holds, read on each scrape. [`run`] takes its
//! listeners and its shutdown signal from the caller, so tests bind port 0 and stop the server
//! when they like. Both listeners run on [`crate::server`], with its timeouts and connection
//! bounds.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use pum_embedded::{COMPACT_AFTER_BYTES, EmbeddedStore};
use pum_shared::app::App;
use pum_shared::http as core_http;
use pum_shared::{Allowlist, Merged, Push, Read, Store, StoreError, Stored};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::body::BODY_BUDGET_BYTES;
use crate::ingest::{Ingest, now_ms, to_response};
use crate::render::{AggregateCollector, Latest, read_into};
use crate::server::{self, ConnectionMetrics, HttpLimits};
use crate::telemetry::SelfMetrics;

/// Everything standalone mode needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ingest's settings: allowlist, limits, origins, rate limit.
    pub app: pum_shared::app::Settings,
    /// The embedded store's directory.
    pub data_dir: PathBuf,
    /// Interval between `fsync`s of the store's log.
    pub sync_interval: Duration,
    /// Bearer token required on `/metrics`, if any.
    pub metrics_token: Option<String>,
    /// Timeouts and connection bounds of the listeners.
    pub http: HttpLimits,
    /// Header whose last address names the client (behind a trusted proxy); else the peer's
    /// address does.
    pub client_ip_header: Option<HeaderName>,
}

/// Reads allowlist sources from a JSON file or a directory of `*.json` files (sorted by name),
/// or the built-in example when `path` is `None`, and compiles them.
pub fn load_allowlist(path: Option<&Path>, browser_pack: bool) -> anyhow::Result<Allowlist> {
    let Some(path) = path else {
        return Ok(Allowlist::compile(
            [(
                "built-in example allowlist",
                pum_shared::allowlist::EXAMPLE_ALLOWLIST,
            )],
            browser_pack,
        )?);
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the config: {e}", path.display()))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| {
            anyhow::anyhow!("{}: cannot list the config directory: {e}", path.display())
        })? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "json") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            anyhow::bail!(
                "{}: the config directory holds no *.json files",
                path.display()
            );
        }
    } else {
        files.push(path.to_owned());
    }
    let mut sources = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", f.display()))?;
        sources.push((f.display().to_string(), text));
    }
    Ok(Allowlist::compile(
        sources.iter().map(|(n, t)| (n.as_str(), t.as_str())),
        browser_pack,
    )?)
}

/// A store, timed and counted in pum's own metrics (`pum_store_write_seconds`,
/// `pum_store_errors_total{op="write"}`), with failures logged.
pub struct Timed<S> {
    store: Arc<S>,
    telemetry: SelfMetrics,
}

impl<S: Read + Send + Sync> Read for Timed<S> {
    async fn read(&self) -> Result<Stored, StoreError> {
        self.store.read().await
    }
}

impl Store for Timed<EmbeddedStore> {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        let timer = self.telemetry.store_write_seconds.start_timer();
        let result = self.store.merge(push).await;
        timer.observe_duration();
        if let Err(e) = &result
            && !matches!(e, StoreError::Overflow(_))
        {
            self.failed_write(e);
        }
        result
    }

    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        let result = self.store.describe(allowlist).await;
        if let Err(e) = &result {
            self.failed_write(e);
        }
        result
    }

    fn is_failed(&self) -> bool {
        self.store.is_failed()
    }
}

impl<S: Store> Timed<S> {
    fn failed_write(&self, e: &StoreError) {
        self.telemetry
            .store_errors_total
            .with_label_values(&["write"])
            .inc();
        // While the store is failed the sync loop reports it, once a tick, not once a push.
        if self.store.is_failed() {
            tracing::debug!(error = %e, "a push was refused: the store is failed");
        } else {
            tracing::error!(error = %e, "a push could not be stored");
        }
    }
}

/// What `/metrics` runs before each scrape (standalone reads its store; serve mode reads on a
/// timer of its own and passes none).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The public app: every request goes to the core, through standalone's adapter.
pub fn ingest_app(ingest: Arc<Ingest<Timed<EmbeddedStore>>>) -> Router {
    let handler =
        move |request: axum::extract::Request| crate::ingest::handle(Arc::clone(&ingest), request);
    // Pushes are matched by path, which axum does for less than it takes to reach a fallback.
    Router::new()
        .route(core_http::RECORD_PATH, axum::routing::any(handler.clone()))
        .fallback(handler)
}

/// The scrape app: `GET /metrics` (with the bearer token, if one is set), after `refresh`.
pub fn metrics_app(registry: Registry, token: Option<String>, refresh: Option<Refresh>) -> Router {
    let registry = Arc::new(registry);
    Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let registry = Arc::clone(&registry);
                let token = token.clone();
                let refresh = refresh.clone();
                async move { scrape(registry, token.as_deref(), &headers, refresh).await }
            }),
        )
        .route("/healthz", get(healthz))
        .fallback(|| async { to_response(core_http::not_found()) })
}

async fn scrape(
    registry: Arc<Registry>,
    token: Option<&str>,
    headers: &HeaderMap,
    refresh: Option<Refresh>,
) -> Response {
    if let Some(token) = token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token) {
            let mut r =
                core_http::Response::error(401, "unauthorized", "a valid bearer token is required");
            r.headers.push(("www-authenticate", "Bearer".into()));
            return to_response(r);
        }
    }
    if let Some(refresh) = refresh {
        refresh().await;
    }
    // Rendering 100k series takes tens of milliseconds: keep it off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .map(|()| buf)
    })
    .await;
    match rendered {
        Ok(Ok(buf)) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        _ => to_response(core_http::Response::error(
            500,
            "render_failed",
            "the metrics could not be rendered",
        )),
    }
}

async fn healthz() -> Response {
    to_response(core_http::Response::json(200, r#"{"status":"ok"}"#.into()))
}

/// Runs standalone mode until `shutdown` resolves, then stops accepting, gives requests in
/// progress `settings.http.shutdown_timeout` to finish, drops the rest, flushes and compacts the
/// store.
pub async fn run(
    settings: Settings,
    ingest_listener: TcpListener,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (store, recovery) = EmbeddedStore::open(&settings.data_dir)?;
    tracing::info!(
        dir = %settings.data_dir.display(),
        replayed = recovery.replayed,
        truncated_bytes = recovery.truncated_bytes,
        "embedded store opened"
    );
    let store = Arc::new(store);
    let telemetry = SelfMetrics::new();
    let registry = Registry::new();
    telemetry.register(&registry)?;
    let latest = Arc::new(Latest::new(Some(settings.app.ingest.allowlist().clone())));
    registry.register(Box::new(AggregateCollector::new(
        Arc::clone(&latest),
        telemetry.clone(),
    )))?;
    let budget_kib = BODY_BUDGET_BYTES.max(4 * settings.app.ingest.limits().max_body_bytes) / 1024;
    let timed = Timed {
        store: Arc::clone(&store),
        telemetry: telemetry.clone(),
    };
    let ingest = Arc::new(Ingest {
        app: App::new(settings.app.clone(), timed),
        client_ip_header: settings.client_ip_header.clone(),
        body_timeout: settings.http.body_timeout,
        body_budget: Semaphore::new(budget_kib),
    });
    let refresh: Refresh = {
        let (store, latest, telemetry) =
            (Arc::clone(&store), Arc::clone(&latest), telemetry.clone());
        Arc::new(move || {
            let (store, latest, telemetry) =
                (Arc::clone(&store), Arc::clone(&latest), telemetry.clone());
            Box::pin(async move { read_into(&*store, &latest, &telemetry).await })
        })
    };
    let stop = CancellationToken::new();
    let syncer = tokio::spawn(sync_loop(
        Arc::clone(&ingest),
        Arc::clone(&store),
        telemetry.clone(),
        settings.sync_interval,
        stop.clone(),
    ));
    let ingest_server = tokio::spawn(server::serve(
        ingest_listener,
        ingest_app(Arc::clone(&ingest)),
        settings.http.clone(),
        ConnectionMetrics::new(&telemetry, "ingest"),
        stop.clone(),
    ));
    let metrics = tokio::spawn(server::serve(
        metrics_listener,
        metrics_app(registry, settings.metrics_token.clone(), Some(refresh)),
        settings.http.for_metrics(),
        ConnectionMetrics::new(&telemetry, "metrics"),
        stop.clone(),
    ));
    shutdown.await;
    stop.cancel();
    let (a, b) = tokio::join!(ingest_server, metrics);
    a?;
    b?;
    let _ = syncer.await;
    ingest.app.store_rate_limited(now_ms()).await;
    let closing = Arc::clone(&store);
    tokio::task::spawn_blocking(move || closing.close()).await??;
    tracing::info!("stopped; the store is flushed");
    Ok(())
}

/// Every `interval`: fsyncs the log, and compacts it when it is large or when the store failed
/// (a compaction that succeeds makes it durable again).
async fn sync_loop(
    ingest: Arc<Ingest<Timed<EmbeddedStore>>>,
    store: Arc<EmbeddedStore>,
    telemetry: SelfMetrics,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        // Rate limited pushes are counted with the next push; with none, they are stored here.
        ingest.app.store_rate_limited(now_ms()).await;
        let s = Arc::clone(&store);
        let result = tokio::task::spawn_blocking(move || {
            if !s.is_failed() {
                s.sync()?;
            }
            if s.is_failed() || s.log_bytes() > COMPACT_AFTER_BYTES {
                s.compact()?;
            }
            Ok::<_, StoreError>(())
        })
        .await;
        let error = match result {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        telemetry
            .store_errors_total
            .with_label_values(&["write"])
            .inc();
        tracing::error!(
            %error,
            "syncing or compacting the store failed; pushes are refused until it is written durably again"
        );
    }
}
