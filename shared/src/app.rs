//! The ingest as one function of a request: every route and every answer of the ingest side.
//!
//! Standalone, the Worker and the Lambda each turn their platform's request into a [`Request`]
//! (method, path, query, the few headers pum reads, the client's address), hand over a [`Body`]
//! that reads the body when asked, supply a [`Store`] and the clock, and turn the [`Response`]
//! back into theirs. Everything else is here, once:
//!
//! | route | methods | answer |
//! | --- | --- | --- |
//! | `/record` | `POST` | the push ([`App::handle`]); `?batch=ID` names it ([`crate::batch`]) |
//! | `/record` | `OPTIONS` | the CORS preflight |
//! | `/healthz` | `GET`, `HEAD` | `{"status":"ok"}`, or 503 while the store refuses writes |
//! | `/status` | `GET`, `HEAD` | 200, empty: the original aggregator's health check |
//! | [`ASSETS`] | `GET`, `HEAD` | the browser client and the demo pages, with their cache and CSP headers |
//! | a known path | any other | 405 with `Allow` |
//! | anything else | any | 404 |
//!
//! A push is checked in this order, cheapest first, so that a refused push costs as little as
//! possible: the client's rate limit (before the body is read: a refusal costs no store write,
//! and is counted in the next push stored), the batch id, the origin, the body (its size, then
//! its samples). Every other refusal is stored as pum's own counters, like a push.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::SendOutsideWasm;
use crate::batch::BatchId;
use crate::http::{self, Cors, Response};
use crate::ingest::{BodyError, Ingest, PushOutcome, RequestContext};
use crate::ratelimit::{Decision, RateLimit, RateLimiter};
use crate::reason::Reason;
use crate::store::{Merged, Push, Store, store_push};

/// The request method, as far as the ingest tells methods apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: answered as `GET`, without the body.
    Head,
    /// `POST`.
    Post,
    /// `OPTIONS`.
    Options,
    /// Any other.
    Other,
}

impl Method {
    /// From the method's name (case-sensitive, as HTTP has it).
    pub fn parse(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// What the ingest reads of a request, besides its body.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string, without the `?`.
    pub query: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Content-Type` header.
    pub content_type: Option<&'a str>,
    /// The `If-None-Match` header.
    pub if_none_match: Option<&'a str>,
    /// The client's country (ISO 3166-1 alpha-2), where the platform reports it (Cloudflare's
    /// `request.cf.country`, CloudFront's `CloudFront-Viewer-Country`).
    pub country: Option<&'a str>,
    /// The client's address, for the rate limit: the peer, or the last hop of a trusted proxy's
    /// header ([`crate::ratelimit::parse_client`]).
    pub client: Option<IpAddr>,
}

impl<'a> Request<'a> {
    /// A request with no headers and no client address.
    pub fn new(method: Method, path: &'a str, query: Option<&'a str>) -> Self {
        Request {
            method,
            path,
            query,
            origin: None,
            content_type: None,
            if_none_match: None,
            country: None,
            client: None,
        }
    }
}

/// A request's body, read only if the push gets that far.
pub trait Body {
    /// The body's bytes.
    type Bytes: AsRef<[u8]>;
    /// Reads the whole body, at most `max` bytes: a longer one is [`BodyError::TooLarge`].
    fn read(
        self,
        max: usize,
    ) -> impl Future<Output = Result<Self::Bytes, BodyError>> + SendOutsideWasm;
}

/// A body already in memory (the Lambda's event).
impl<'b> Body for &'b [u8] {
    type Bytes = &'b [u8];
    async fn read(self, max: usize) -> Result<&'b [u8], BodyError> {
        if self.len() > max {
            return Err(BodyError::TooLarge);
        }
        Ok(self)
    }
}

/// A static file the ingest serves.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Its path.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its `Cache-Control`, if any.
    pub cache_control: Option<&'static str>,
    /// Its `Content-Security-Policy`, if any.
    pub csp: Option<&'static str>,
    /// Whether any origin may read it (`Access-Control-Allow-Origin: *`).
    pub cors: bool,
    /// The content.
    pub body: &'static str,
}

/// A week, then revalidation: the client changes rarely and the snippet's URL carries no version.
const SCRIPT_CACHE: &str = "public, max-age=604800, stale-while-revalidate=86400";
const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// The demo page, served at `/` and at `/demo`.
const DEMO: Asset = Asset {
    path: "/",
    content_type: HTML,
    cache_control: None,
    csp: None,
    cors: false,
    body: include_str!("../../static/demo/index.html"),
};

/// The browser client and the demo pages. The Worker serves the same files from Workers Static
/// Assets (no Worker request per load), with these headers through the `_headers` file its build
/// writes from [`headers_file`].
pub const ASSETS: &[Asset] = &[
    Asset {
        path: http::CLIENT_PATH,
        content_type: JS,
        cache_control: Some(SCRIPT_CACHE),
        csp: None,
        cors: true,
        body: include_str!("../../static/aggregatorClient.js"),
    },
    Asset {
        path: "/static/demo.js",
        content_type: JS,
        cache_control: Some(SCRIPT_CACHE),
        csp: None,
        cors: true,
        body: include_str!("../../static/demo/demo.js"),
    },
    DEMO,
    Asset {
        path: "/demo",
        ..DEMO
    },
    Asset {
        path: "/demo/csp",
        content_type: HTML,
        cache_control: None,
        csp: Some("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'"),
        cors: false,
        body: include_str!("../../static/demo/csp.html"),
    },
];

/// The asset headers as a Cloudflare `_headers` file.
pub fn headers_file() -> String {
    let mut out = String::new();
    for a in ASSETS {
        let mut lines = Vec::new();
        if let Some(c) = a.cache_control {
            lines.push(format!("  Cache-Control: {c}"));
        }
        if let Some(c) = a.csp {
            lines.push(format!("  Content-Security-Policy: {c}"));
        }
        if a.cors {
            lines.push("  Access-Control-Allow-Origin: *".to_owned());
        }
        if !lines.is_empty() {
            out.push_str(a.path);
            out.push('\n');
            out.push_str(&lines.join("\n"));
            out.push('\n');
        }
    }
    out
}

/// What an ingest is configured with, besides its store.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The ingest core: allowlist and limits.
    pub ingest: Ingest,
    /// Origins allowed to push.
    pub cors: Cors,
    /// The per-client rate limit.
    pub rate_limit: RateLimit,
}

/// The ingest: settings, rate limiter and store. One per process (per Worker isolate, per Lambda
/// execution environment).
pub struct App<S> {
    ingest: Ingest,
    cors: Cors,
    /// A mutex because a process may run several requests at once; held for one check, never
    /// across an await.
    limiter: Mutex<RateLimiter>,
    store: S,
    /// Whether the store has been given the allowlist ([`Store::describe`]).
    described: AtomicBool,
    /// Set when the limiter may hold refusals not stored yet: a push takes the limiter's lock
    /// to collect them only then.
    refusals: AtomicBool,
}

impl<S: Store> App<S> {
    /// An ingest over `store`.
    pub fn new(settings: Settings, store: S) -> Self {
        App {
            limiter: Mutex::new(RateLimiter::new(settings.rate_limit)),
            ingest: settings.ingest,
            cors: settings.cors,
            store,
            described: AtomicBool::new(false),
            refusals: AtomicBool::new(false),
        }
    }

    /// The ingest core.
    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        // The limiter's state is valid whatever a panicking holder left: keep using it.
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one request. `now_ms` is the time in milliseconds since the Unix epoch. Never
    /// fails: every error is an answer.
    pub async fn handle<B: Body>(&self, req: &Request<'_>, body: B, now_ms: u64) -> Response {
        let get = matches!(req.method, Method::Get | Method::Head);
        let mut response = match req.path {
            http::RECORD_PATH => match req.method {
                Method::Post => self.record(req, body, now_ms).await,
                Method::Options => self.cors.preflight(req.origin),
                _ => http::method_not_allowed("POST, OPTIONS"),
            },
            "/healthz" if get => {
                if self.store.is_failed() {
                    http::store_unavailable()
                } else {
                    Response::json(200, r#"{"status":"ok"}"#.into())
                }
            }
            "/status" if get => Response {
                status: 200,
                headers: http::Headers::new(),
                body: Cow::Borrowed(""),
            },
            path => match ASSETS.iter().find(|a| a.path == path) {
                Some(asset) if get => serve(asset, req.if_none_match),
                Some(_) => http::method_not_allowed("GET, HEAD"),
                None if matches!(path, "/healthz" | "/status") => {
                    http::method_not_allowed("GET, HEAD")
                }
                None => http::not_found(),
            },
        };
        if req.method == Method::Head {
            response.body = Cow::Borrowed("");
        }
        response
    }

    /// Stores the count of pushes refused by the rate limiter since they were last stored.
    /// Refusals travel with the next push stored; an ingest that may see no push for a while
    /// (standalone, on a timer and when it stops) calls this so that they are not held back.
    /// Whether they are stored now (false: they stay for the next push or call).
    pub async fn store_rate_limited(&self, now_ms: u64) -> bool {
        if self.limiter().refused() == 0 {
            return true;
        }
        self.refusals.store(true, Ordering::Release);
        let nothing = PushOutcome {
            status: 204,
            body: String::new(),
            delta: crate::Aggregate::new(),
            accepted: 0,
            rejected: Vec::new(),
            refused: None,
        };
        let answer = self.save(None, nothing, now_ms, http::Headers::new()).await;
        answer.status == 204
    }

    async fn record<B: Body>(&self, req: &Request<'_>, body: B, now_ms: u64) -> Response {
        let cors = self.cors.headers(req.origin);
        // Rate limiting first: a refused push reads no body and writes nothing now.
        if let Some(client) = req.client
            && let Decision::Limit { retry_after_secs } = self.limiter().check(client, now_ms)
        {
            self.refusals.store(true, Ordering::Release);
            return with_cors(self.ingest.rate_limited(retry_after_secs), cors);
        }
        let (batch, outcome) = match BatchId::from_query(req.query) {
            Err(()) => (
                None,
                self.ingest.refuse(
                    Reason::InvalidBatchId,
                    "the batch parameter must be 16 to 64 characters of A-Z, a-z, 0-9, _ and -",
                ),
            ),
            Ok(_) if !self.cors.allows(req.origin) => (
                None,
                self.ingest.refuse(
                    Reason::OriginNotAllowed,
                    "this origin may not push here; add it to the ingest's allowed origins (PUM_ALLOWED_ORIGINS)",
                ),
            ),
            Ok(batch) => {
                let outcome = match body.read(self.ingest.limits().max_body_bytes).await {
                    Ok(bytes) => {
                        let ctx = RequestContext {
                            country: req.country.map(str::to_owned),
                        };
                        self.ingest
                            .push_with(&ctx, req.content_type, bytes.as_ref())
                    }
                    Err(e) => self.ingest.refuse_body(e),
                };
                (batch, outcome)
            }
        };
        let timed_out = outcome.refused == Some(Reason::BodyTimeout);
        let mut response = self.save(batch.as_ref(), outcome, now_ms, cors).await;
        if timed_out {
            // The rest of the body may still be on its way: the connection cannot be reused.
            response.headers.push(("connection", "close".into()));
        }
        response
    }

    /// Stores a push's delta (with the rate limiter's refusals since the last push stored), then
    /// answers: the outcome's answer, or 503 with `Retry-After` and nothing applied.
    async fn save(
        &self,
        batch: Option<&BatchId>,
        mut outcome: PushOutcome,
        now_ms: u64,
        cors: http::Headers,
    ) -> Response {
        if !self.described.load(Ordering::Acquire) {
            if self.store.describe(self.ingest.allowlist()).await.is_err() {
                return with_cors(http::store_unavailable(), cors);
            }
            self.described.store(true, Ordering::Release);
        }
        let limited = if self.refusals.swap(false, Ordering::AcqRel) {
            self.limiter().take_refused()
        } else {
            0
        };
        self.ingest
            .count_refused(&mut outcome.delta, Reason::RateLimited, limited);
        let push = Push {
            batch,
            now_ms,
            delta: std::mem::take(&mut outcome.delta),
            allowlist: self.ingest.allowlist(),
        };
        let (outcome, stored) = store_push(&self.store, &self.ingest, push, outcome).await;
        // The refusals went into the store only with a delta that was applied: not with a
        // replay (nothing added) nor with an overflow (its refusal was stored in its place).
        let carried =
            matches!(stored, Ok(Merged::Applied)) && outcome.refused != Some(Reason::TotalOverflow);
        if !carried && limited > 0 {
            self.limiter().return_refused(limited);
            self.refusals.store(true, Ordering::Release);
        }
        match stored {
            Ok(_) if outcome.body.is_empty() => Response {
                status: outcome.status,
                headers: cors,
                body: Cow::Borrowed(""),
            },
            Ok(_) => with_cors(Response::json(outcome.status, outcome.body), cors),
            // Nothing of the delta was stored: the next push counts the refusals.
            Err(_) => with_cors(http::store_unavailable(), cors),
        }
    }
}

fn with_cors(mut r: Response, cors: http::Headers) -> Response {
    r.headers.extend(cors);
    r
}

/// Serves an asset, or 304 when the client holds the same version (`If-None-Match`).
fn serve(asset: &Asset, if_none_match: Option<&str>) -> Response {
    let etag = format!("\"{:08x}\"", fnv1a32(asset.body.as_bytes()));
    let mut headers = http::Headers::new();
    headers.push(("content-type", asset.content_type.into()));
    if let Some(c) = asset.cache_control {
        headers.push(("cache-control", c.into()));
    }
    if let Some(c) = asset.csp {
        headers.push(("content-security-policy", c.into()));
    }
    if asset.cors {
        headers.push(("access-control-allow-origin", "*".into()));
    }
    let fresh = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    headers.push(("etag", etag.into()));
    Response {
        status: if fresh { 304 } else { 200 },
        headers,
        body: Cow::Borrowed(if fresh { "" } else { asset.body }),
    }
}

/// A 32-bit FNV-1a hash: the assets' ETag, the same on every platform.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests;
