//! Standalone mode: ingest, the embedded store and `/metrics` in one process.
//!
//! The two HTTP apps are plain functions of their state ([`ingest_app`], [`metrics_app`]), and
//! [`run`] takes its listeners and its shutdown signal from the caller, so tests bind port 0 and
//! stop the server when they like. Both listeners run on [`crate::server`], with its timeouts
//! and connection bounds; push bodies are read within `--body-timeout` and count against one
//! memory budget ([`BODY_BUDGET_BYTES`]), so slow or unfinished bodies cannot grow memory
//! without bound.

use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use pum_shared::http::{self as core_http, Cors};
use pum_shared::ratelimit::{Decision, RateLimit, RateLimiter, parse_client};
use pum_shared::store::store_push;
use pum_shared::{Aggregate, Allowlist, BodyError, Ingest, Limits, PushOutcome, Reason, Store};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::render::{AggregateCollector, Totals};
use crate::server::{self, ConnectionMetrics, HttpLimits};
use crate::telemetry::SelfMetrics;
use pum_embedded::{COMPACT_AFTER_BYTES, EmbeddedStore};

/// Push body bytes held in memory at once, over all connections: 32 MiB (or four of the largest
/// bodies, if that is more). A body waits for room, within its timeout, before more of it is
/// read; realistic beacons (about 1.4 KB) never wait.
pub const BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// The browser client, as built from `static/src`.
const CLIENT_JS: &str = include_str!("../../static/aggregatorClient.js");
/// The demo page with the original snippet.
const DEMO_HTML: &str = include_str!("../../static/demo/index.html");
/// The demo page with the CSP-friendly install.
const DEMO_CSP_HTML: &str = include_str!("../../static/demo/csp.html");
/// The demo page's script for the CSP-friendly page.
const DEMO_JS: &str = include_str!("../../static/demo/demo.js");

/// Everything standalone mode needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The compiled allowlist.
    pub allowlist: Allowlist,
    /// Push limits.
    pub limits: Limits,
    /// Origins allowed to push.
    pub cors: Cors,
    /// The embedded store's directory.
    pub data_dir: PathBuf,
    /// Interval between `fsync`s of the store's log.
    pub sync_interval: Duration,
    /// Bearer token required on `/metrics`, if any.
    pub metrics_token: Option<String>,
    /// Timeouts and connection bounds of the listeners.
    pub http: HttpLimits,
    /// Per-client rate limit of pushes.
    pub rate_limit: RateLimit,
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

/// Shared state of the standalone apps.
pub struct Standalone {
    ingest: Ingest,
    cors: Cors,
    store: Arc<EmbeddedStore>,
    telemetry: SelfMetrics,
    registry: Registry,
    metrics_token: Option<String>,
    body_timeout: Duration,
    /// Permits are KiB of push body held in memory.
    body_budget: Semaphore,
    limiter: Mutex<RateLimiter>,
    client_ip_header: Option<HeaderName>,
    /// The rate limiter's clock.
    epoch: Instant,
}

impl Totals for EmbeddedStore {
    fn with_totals(&self, f: &mut dyn FnMut(&Aggregate)) -> bool {
        EmbeddedStore::with_totals(self, |t| f(t)).is_ok()
    }
}

impl Standalone {
    /// Builds the state over an opened store.
    pub fn new(settings: &Settings, store: Arc<EmbeddedStore>) -> anyhow::Result<Arc<Self>> {
        let allowlist = Arc::new(settings.allowlist.clone());
        let telemetry = SelfMetrics::new();
        let registry = Registry::new();
        telemetry.register(&registry)?;
        registry.register(Box::new(AggregateCollector::new(
            Arc::clone(&allowlist),
            Arc::clone(&store) as Arc<dyn Totals>,
            telemetry.clone(),
        )))?;
        let budget_kib = BODY_BUDGET_BYTES.max(4 * settings.limits.max_body_bytes) / 1024;
        Ok(Arc::new(Standalone {
            ingest: Ingest::new(settings.allowlist.clone(), settings.limits.clone()),
            cors: settings.cors.clone(),
            store,
            telemetry,
            registry,
            metrics_token: settings.metrics_token.clone(),
            body_timeout: settings.http.body_timeout,
            body_budget: Semaphore::new(budget_kib),
            limiter: Mutex::new(RateLimiter::new(settings.rate_limit.clone())),
            client_ip_header: settings.client_ip_header.clone(),
            epoch: Instant::now(),
        }))
    }

    /// Asks the rate limiter about the client of a push: its address from the trusted proxy
    /// header when one is set (and parses), else the connection's peer.
    fn rate_limit(&self, parts: &axum::http::request::Parts) -> Decision {
        let from_header = self
            .client_ip_header
            .as_ref()
            .and_then(|name| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .and_then(parse_client);
        let client = from_header.or_else(|| server::peer().map(|p| p.ip()));
        let (Some(client), Ok(mut limiter)) = (client, self.limiter.lock()) else {
            return Decision::Allow;
        };
        limiter.check(client, self.epoch.elapsed().as_millis() as u64)
    }

    /// Stores the count of pushes refused by the rate limiter since the last call (refusals cost
    /// no store write each; they are counted here, once a sync interval).
    async fn store_rate_limited(&self) {
        let n = self
            .limiter
            .lock()
            .map(|mut l| l.take_refused())
            .unwrap_or(0);
        if n == 0 {
            return;
        }
        let mut delta = Aggregate::new();
        self.ingest
            .count_refused(&mut delta, Reason::RateLimited, n);
        if self.store.merge("", &delta).await.is_err()
            && let Ok(mut l) = self.limiter.lock()
        {
            l.return_refused(n);
        }
    }
}

/// The public app: `POST /record`, CORS, the client, the demo pages and `/healthz`.
pub fn ingest_app(state: Arc<Standalone>) -> Router {
    Router::new()
        .route(
            core_http::RECORD_PATH,
            axum::routing::post(record)
                .options(preflight)
                .fallback(|| async {
                    to_response(
                        core_http::method_not_allowed("POST, OPTIONS"),
                        core_http::Headers::new(),
                    )
                }),
        )
        .route("/healthz", get(ingest_healthz))
        // The original aggregator's health check.
        .route("/status", get(|| async { StatusCode::OK }))
        .route(
            core_http::CLIENT_PATH,
            get(|headers: HeaderMap| async move { javascript(CLIENT_JS, &headers) }),
        )
        .route(
            "/static/demo.js",
            get(|headers: HeaderMap| async move { javascript(DEMO_JS, &headers) }),
        )
        .route("/", get(|| async { html(DEMO_HTML, None) }))
        .route("/demo", get(|| async { html(DEMO_HTML, None) }))
        .route(
            "/demo/csp",
            get(|| async {
                html(
                    DEMO_CSP_HTML,
                    Some("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'"),
                )
            }),
        )
        .fallback(|| async { to_response(core_http::not_found(), core_http::Headers::new()) })
        .with_state(state)
}

/// The scrape app: `GET /metrics` (with the bearer token, if one is set).
pub fn metrics_app(registry: Registry, token: Option<String>) -> Router {
    let registry = Arc::new(registry);
    Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let registry = Arc::clone(&registry);
                let token = token.clone();
                async move { scrape(registry, token.as_deref(), &headers).await }
            }),
        )
        .route("/healthz", get(healthz))
        .fallback(|| async { to_response(core_http::not_found(), core_http::Headers::new()) })
}

async fn scrape(registry: Arc<Registry>, token: Option<&str>, headers: &HeaderMap) -> Response {
    if let Some(token) = token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token) {
            let mut r =
                core_http::Response::error(401, "unauthorized", "a valid bearer token is required");
            r.headers.push(("www-authenticate", "Bearer".into()));
            return to_response(r, core_http::Headers::new());
        }
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
        _ => to_response(
            core_http::Response::error(500, "render_failed", "the metrics could not be rendered"),
            core_http::Headers::new(),
        ),
    }
}

async fn healthz() -> Response {
    to_response(
        core_http::Response::json(200, r#"{"status":"ok"}"#.into()),
        core_http::Headers::new(),
    )
}

/// The ingest's health: 503 while the store refuses pushes (its log could not be synced), so a
/// load balancer or a readiness probe sends pushes elsewhere.
async fn ingest_healthz(State(s): State<Arc<Standalone>>) -> Response {
    if s.store.is_failed() {
        return to_response(core_http::store_unavailable(), core_http::Headers::new());
    }
    healthz().await
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn record(State(s): State<Arc<Standalone>>, request: axum::extract::Request) -> Response {
    // Taking the request apart (instead of extracting a HeaderMap, which clones every header)
    // keeps the hot path free of copies.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let origin = header_str(headers, header::ORIGIN);
    let cors = s.cors.headers(origin);
    if let Decision::Limit { retry_after_secs } = s.rate_limit(&parts) {
        return to_response(s.ingest.rate_limited(retry_after_secs), cors);
    }
    let max = s.ingest.limits().max_body_bytes;
    let mut timed_out = false;
    let outcome = if s.cors.allows(origin) {
        let read = tokio::time::timeout(s.body_timeout, read_body(body, max, &s.body_budget)).await;
        match read {
            Ok(Ok((bytes, _held))) => s
                .ingest
                .push(header_str(headers, header::CONTENT_TYPE), &bytes),
            Ok(Err(e)) => s.ingest.refuse_body(e),
            Err(_) => {
                timed_out = true;
                s.ingest.refuse_body(BodyError::TimedOut)
            }
        }
    } else {
        s.ingest.refuse(
            Reason::OriginNotAllowed,
            "this origin may not push here; add it to --allowed-origins",
        )
    };
    let mut response = store_and_answer(&s, outcome, cors).await;
    if timed_out {
        // The rest of the body may still be on its way: the connection cannot be reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads at most `max` bytes of body. A larger body is still read (and dropped) up to
/// `DRAIN_FACTOR * max`, so that the client gets its 413 instead of a reset connection; beyond
/// that the connection is cut. What is kept counts against `budget` (KiB permits) until the
/// returned permit is dropped: reading waits while the budget is spent.
async fn read_body<'b>(
    mut body: Body,
    max: usize,
    budget: &'b Semaphore,
) -> Result<(Bytes, Option<SemaphorePermit<'b>>), BodyError> {
    use axum::body::HttpBody;
    use http_body_util::BodyExt;
    const DRAIN_FACTOR: usize = 16;
    // A body that arrives as one frame (a beacon read with its headers) is kept as it is; only a
    // body in several frames is copied together, into a buffer sized from Content-Length.
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut held: Option<SemaphorePermit<'b>> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            if total > max.saturating_mul(DRAIN_FACTOR) {
                return Err(BodyError::TooLarge);
            }
            continue;
        }
        let kib = u32::try_from(data.len().div_ceil(1024)).unwrap_or(u32::MAX);
        let permit = budget
            .acquire_many(kib)
            .await
            .map_err(|_| BodyError::Unreadable)?;
        match held.as_mut() {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        if first.is_none() && joined.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(earlier) = first.take() {
            let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            joined.reserve((earlier.len() + data.len() + hint).min(max));
            joined.extend_from_slice(&earlier);
        }
        joined.extend_from_slice(&data);
    }
    if total > max {
        return Err(BodyError::TooLarge);
    }
    Ok((first.unwrap_or_else(|| Bytes::from(joined)), held))
}

async fn store_and_answer(
    s: &Standalone,
    outcome: PushOutcome,
    cors: core_http::Headers,
) -> Response {
    let timer = s.telemetry.store_write_seconds.start_timer();
    // A push that would overflow a total comes back as the core's refusal (merged in its place,
    // so that it is counted), not as a store error.
    let (outcome, stored) = store_push(&*s.store, &s.ingest, "", outcome).await;
    timer.observe_duration();
    match stored {
        Ok(()) => to_response(
            core_http::Response::json(outcome.status, outcome.body),
            cors,
        ),
        Err(e) => {
            s.telemetry
                .store_errors_total
                .with_label_values(&["write"])
                .inc();
            // While the store is failed the sync loop reports it, once a tick, not once a push.
            if s.store.is_failed() {
                tracing::debug!(error = %e, "a push was refused: the store is failed");
            } else {
                tracing::error!(error = %e, "a push could not be stored");
            }
            to_response(core_http::store_unavailable(), cors)
        }
    }
}

async fn preflight(State(s): State<Arc<Standalone>>, headers: HeaderMap) -> Response {
    to_response(
        s.cors.preflight(header_str(&headers, header::ORIGIN)),
        core_http::Headers::new(),
    )
}

/// Serves a script with a week's cache and an ETag, so browsers revalidate cheaply after that.
fn javascript(body: &'static str, headers: &HeaderMap) -> Response {
    let etag = format!("\"{:08x}\"", crc32fast::hash(body.as_bytes()));
    let common = [
        (
            header::CACHE_CONTROL,
            "public, max-age=604800, stale-while-revalidate=86400",
        ),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    ];
    if header_str(headers, header::IF_NONE_MATCH)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, common, [(header::ETAG, etag)]).into_response();
    }
    (
        common,
        [
            (
                header::CONTENT_TYPE,
                "text/javascript; charset=utf-8".to_owned(),
            ),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}

fn html(body: &'static str, csp: Option<&'static str>) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    if let Some(csp) = csp {
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        );
    }
    r
}

/// Turns a core response and CORS headers into an axum response.
pub fn to_response(r: core_http::Response, cors: core_http::Headers) -> Response {
    let Ok(status) = StatusCode::from_u16(r.status) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut response = Response::new(Body::from(r.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (k, v) in r.headers.into_iter().chain(cors) {
        // The names pum sends on every answer are taken ready-made instead of parsed.
        let name = match k {
            "content-type" => header::CONTENT_TYPE,
            "access-control-allow-origin" => header::ACCESS_CONTROL_ALLOW_ORIGIN,
            "vary" => header::VARY,
            other => match HeaderName::from_bytes(other.as_bytes()) {
                Ok(name) => name,
                Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            },
        };
        let value = match v {
            Cow::Borrowed(v) => Ok(HeaderValue::from_static(v)),
            Cow::Owned(v) => HeaderValue::try_from(v),
        };
        match value {
            Ok(value) => {
                headers.append(name, value);
            }
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
    response
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
    let state = Standalone::new(&settings, Arc::clone(&store))?;
    let stop = CancellationToken::new();

    let syncer = tokio::spawn(sync_loop(
        Arc::clone(&state),
        settings.sync_interval,
        stop.clone(),
    ));
    let ingest = tokio::spawn(server::serve(
        ingest_listener,
        ingest_app(Arc::clone(&state)),
        settings.http.clone(),
        ConnectionMetrics::new(&state.telemetry, "ingest"),
        stop.clone(),
    ));
    let metrics = tokio::spawn(server::serve(
        metrics_listener,
        metrics_app(state.registry.clone(), state.metrics_token.clone()),
        settings.http.for_metrics(),
        ConnectionMetrics::new(&state.telemetry, "metrics"),
        stop.clone(),
    ));
    shutdown.await;
    stop.cancel();
    let (a, b) = tokio::join!(ingest, metrics);
    a?;
    b?;
    let _ = syncer.await;
    state.store_rate_limited().await;
    let closing = Arc::clone(&store);
    tokio::task::spawn_blocking(move || closing.close()).await??;
    tracing::info!("stopped; the store is flushed");
    Ok(())
}

/// Every `interval`: fsyncs the log, and compacts it when it is large or when the store failed
/// (a compaction that succeeds makes it durable again).
async fn sync_loop(state: Arc<Standalone>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        state.store_rate_limited().await;
        let s = Arc::clone(&state.store);
        let result = tokio::task::spawn_blocking(move || {
            if !s.is_failed() {
                s.sync()?;
            }
            if s.is_failed() || s.log_bytes() > COMPACT_AFTER_BYTES {
                s.compact()?;
            }
            Ok::<_, pum_shared::StoreError>(())
        })
        .await;
        let error = match result {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        state
            .telemetry
            .store_errors_total
            .with_label_values(&["write"])
            .inc();
        tracing::error!(
            %error,
            "syncing or compacting the store failed; pushes are refused until it is written durably again"
        );
    }
}
