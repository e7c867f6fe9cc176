//! # pum-lambda: pum's ingest as an AWS Lambda
//!
//! The same `POST /record` as `pum-collector standalone`, from the same core: a Function URL or
//! HTTP API event becomes a push for [`Ingest::push_with`], whose delta goes to DynamoDB
//! ([`pum_dynamodb::DynamoStore`]) before the core's answer is returned. Also CORS preflights,
//! `GET /healthz`, the original's `GET /status`, and the browser client at
//! `/static/aggregatorClient.js`.
//!
//! The handler ([`handle`]) is a plain async function of the [`App`] and the request, generic
//! over the [`Store`], so tests feed it recorded API Gateway v2 and Function URL events without
//! AWS. `main.rs` reads the configuration ([`Config::from_env`]) once per cold start and hands
//! the handler to `lambda_http::run`.
//!
//! Country labels (allowlist extension `"source": "country"`) come from CloudFront's
//! `CloudFront-Viewer-Country` header, present when CloudFront fronts the function and forwards
//! it.
//!
//! Pushes are rate limited per client address (`requestContext.http.sourceIp`, an IPv6 client by
//! its /64) before the body is read, with token buckets in the memory of the execution
//! environment: each environment Lambda runs keeps its own, so a client spread over `n` of them
//! may send up to `n` times the limit. A refused push is answered 429 with `Retry-After` and
//! writes nothing; the refusals are counted in the next push the environment stores.

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use lambda_http::http::{HeaderMap, Method, header};
use lambda_http::request::RequestContext as EventContext;
use lambda_http::{Body, Request, RequestExt, Response};
use pum_shared::http::{self as core_http, Cors};
use pum_shared::ingest::RequestContext;
use pum_shared::ratelimit::parse_client;
use pum_shared::store::store_push;
use pum_shared::{
    Allowlist, BodyError, Decision, Ingest, Limits, PushOutcome, RateLimit, RateLimiter, Reason,
    Store,
};

/// The browser client, as built from `static/src`.
pub const CLIENT_JS: &str = include_str!("../../../static/aggregatorClient.js");

/// The header CloudFront sets to the viewer's country (ISO 3166-1 alpha-2).
pub const COUNTRY_HEADER: &str = "cloudfront-viewer-country";

/// The Lambda's configuration, from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The compiled allowlist.
    pub allowlist: Allowlist,
    /// Origins allowed to push.
    pub cors: Cors,
    /// Push limits.
    pub limits: Limits,
    /// The per-client rate limit of pushes (per execution environment).
    pub rate_limit: RateLimit,
}

/// The variables of the rate limit: pushes a second, burst, clients tracked.
pub const RATE_VARS: [&str; 3] = ["PUM_RATE_LIMIT", "PUM_RATE_BURST", "PUM_RATE_LIMIT_CLIENTS"];

/// Why the configuration is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The allowlist does not compile; the error names the variable, metric and field.
    #[error(transparent)]
    Allowlist(#[from] pum_shared::ConfigError),
    /// A setting is out of range or not a number; the message names the variable.
    #[error("{0}")]
    Setting(String),
}

impl Config {
    /// Reads the configuration through `var` (the process environment in `main`):
    ///
    /// - `PUM_ALLOWLIST_JSON`: an allowlist in the original format (`{"allowedMetrics": [...]}`);
    ///   without it, pum's example allowlist. Either way the built-in browser pack is added
    ///   unless `PUM_NO_BROWSER_PACK` is `true` or `1`. Lambda caps all variables at 4 KB
    ///   together; a larger allowlist belongs in a build of its own.
    /// - `PUM_ALLOWED_ORIGINS`: comma-separated origins allowed to push; `*` (the default) for
    ///   any.
    /// - `PUM_RATE_LIMIT` (default 50): pushes a second one client address may send; `0` turns
    ///   rate limiting off. `PUM_RATE_BURST` (default 500): pushes at once, after a pause, before
    ///   the rate applies. `PUM_RATE_LIMIT_CLIENTS` (default 65536): addresses tracked at most,
    ///   which bounds memory (about 2 MB). See [`RateLimit`] for why these defaults.
    ///
    /// A bad allowlist fails the cold start with an error naming the variable, metric and field;
    /// so does a metric's `maxValue` that could overflow a total ([`Limits::check`]), and a bad
    /// rate limit with one naming the variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let browser_pack = !matches!(
            var("PUM_NO_BROWSER_PACK").as_deref().map(str::trim),
            Some("true" | "1")
        );
        let allowlist = match var("PUM_ALLOWLIST_JSON").filter(|s| !s.trim().is_empty()) {
            Some(json) => {
                Allowlist::compile([("PUM_ALLOWLIST_JSON", json.as_str())], browser_pack)?
            }
            None => Allowlist::compile(
                [(
                    "built-in example allowlist",
                    pum_shared::allowlist::EXAMPLE_ALLOWLIST,
                )],
                browser_pack,
            )?,
        };
        let limits = Limits::default();
        limits.check(&allowlist)?;
        let rate_limit = RateLimit::from_vars(RATE_VARS, &var).map_err(ConfigError::Setting)?;
        Ok(Config {
            allowlist,
            cors: Cors::parse(&var("PUM_ALLOWED_ORIGINS").unwrap_or_else(|| "*".into())),
            limits,
            rate_limit,
        })
    }
}

/// What the handler needs: the ingest core, the origin allowlist, the rate limiter and the
/// store.
pub struct App<S> {
    ingest: Ingest,
    cors: Cors,
    /// One per execution environment. A mutex, because an environment may run several events at
    /// once (Lambda Managed Instances); it is held only for one check, never across an await.
    limiter: Mutex<RateLimiter>,
    /// The rate limiter's clock: milliseconds since the app was made, monotonic.
    started: Instant,
    store: S,
}

impl<S: Store> App<S> {
    /// An app over `store`.
    pub fn new(config: Config, store: S) -> Self {
        App {
            ingest: Ingest::new(config.allowlist, config.limits),
            cors: config.cors,
            limiter: Mutex::new(RateLimiter::new(config.rate_limit)),
            started: Instant::now(),
            store,
        }
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        // The limiter's state is valid whatever a panicking holder left: keep using it.
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

/// Handles one request. Never fails: every error is an answer.
pub async fn handle<S: Store>(app: &App<S>, req: Request) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    match path {
        core_http::RECORD_PATH => match *method {
            Method::POST => record(app, &req).await,
            Method::OPTIONS => respond(
                app.cors
                    .preflight(header_str(req.headers(), header::ORIGIN)),
                core_http::Headers::new(),
            ),
            _ => respond(
                core_http::method_not_allowed("POST, OPTIONS"),
                core_http::Headers::new(),
            ),
        },
        "/healthz" | "/status" | core_http::CLIENT_PATH
            if !matches!(*method, Method::GET | Method::HEAD) =>
        {
            respond(
                core_http::method_not_allowed("GET, HEAD"),
                core_http::Headers::new(),
            )
        }
        "/healthz" => respond(
            core_http::Response::json(200, r#"{"status":"ok"}"#.into()),
            core_http::Headers::new(),
        ),
        // The original aggregator's health check: 200, no body.
        "/status" => respond(
            core_http::Response {
                status: 200,
                headers: core_http::Headers::new(),
                body: String::new(),
            },
            core_http::Headers::new(),
        ),
        core_http::CLIENT_PATH => javascript(),
        _ => respond(core_http::not_found(), core_http::Headers::new()),
    }
}

/// The client's address as the Function URL or HTTP API saw it.
fn source_ip(req: &Request) -> Option<IpAddr> {
    match req.request_context_ref()? {
        EventContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref().and_then(parse_client),
        _ => None,
    }
}

async fn record<S: Store>(app: &App<S>, req: &Request) -> Response<Body> {
    let headers = req.headers();
    let origin = header_str(headers, header::ORIGIN);
    let cors = app.cors.headers(origin);
    // Function URLs and HTTP APIs always report the source address; an event without one is
    // not limited rather than lumped in with every other such event.
    if let Some(client) = source_ip(req) {
        let now_ms = u64::try_from(app.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let decision = app.limiter().check(client, now_ms);
        if let Decision::Limit { retry_after_secs } = decision {
            return respond(app.ingest.rate_limited(retry_after_secs), cors);
        }
    }
    let max = app.ingest.limits().max_body_bytes;
    let body: &[u8] = req.body().as_ref();
    // The same order of checks as standalone: origin, then size, then the core.
    let outcome = if !app.cors.allows(origin) {
        app.ingest.refuse(
            Reason::OriginNotAllowed,
            "this origin may not push here; add it to PUM_ALLOWED_ORIGINS",
        )
    } else if body.len() > max {
        app.ingest.refuse_body(BodyError::TooLarge)
    } else {
        let ctx = RequestContext {
            country: header_str(headers, header::HeaderName::from_static(COUNTRY_HEADER))
                .map(str::to_owned),
        };
        app.ingest
            .push_with(&ctx, header_str(headers, header::CONTENT_TYPE), body)
    };
    store_and_answer(app, req, outcome, cors).await
}

/// Merges the push's delta, then answers; a store failure is a 503 with `Retry-After` and
/// nothing of the push applied. A push that would overflow a total is answered with the core's
/// refusal ([`pum_shared::store::store_push`]); DynamoDB adds without that check (see
/// `pum_dynamodb`'s docs on overflow), other stores may make it.
async fn store_and_answer<S: Store>(
    app: &App<S>,
    req: &Request,
    mut outcome: PushOutcome,
    cors: core_http::Headers,
) -> Response<Body> {
    // The rate limiter's refusals since the last stored push travel with this one.
    let limited = app.limiter().take_refused();
    app.ingest
        .count_refused(&mut outcome.delta, Reason::RateLimited, limited);
    // The invocation's request id names the push: the store's retries of it are recognised.
    let batch_id = req
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    let (outcome, stored) = store_push(&app.store, &app.ingest, &batch_id, outcome).await;
    match stored {
        Ok(()) => respond(
            core_http::Response::json(outcome.status, outcome.body),
            cors,
        ),
        Err(e) => {
            tracing::error!(error = %e, "a push could not be stored");
            // Nothing of the delta was stored: the next one counts these refusals.
            app.limiter().return_refused(limited);
            respond(core_http::store_unavailable(), cors)
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Turns a core response and CORS headers into a Lambda response.
pub fn respond(r: core_http::Response, cors: core_http::Headers) -> Response<Body> {
    let mut builder = Response::builder().status(r.status);
    for (k, v) in r.headers.into_iter().chain(cors) {
        builder = builder.header(k, v.as_ref());
    }
    let body = if r.body.is_empty() {
        Body::Empty
    } else {
        Body::Text(r.body)
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn javascript() -> Response<Body> {
    respond(
        core_http::Response {
            status: 200,
            headers: smallvec::smallvec![
                ("content-type", "text/javascript; charset=utf-8".into()),
                // A week: the client changes rarely and the snippet's URL carries no version.
                (
                    "cache-control",
                    "public, max-age=604800, stale-while-revalidate=86400".into(),
                ),
                ("access-control-allow-origin", "*".into()),
            ],
            body: CLIENT_JS.to_owned(),
        },
        core_http::Headers::new(),
    )
}
