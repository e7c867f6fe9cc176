//! # pum-lambda: pum's ingest as an AWS Lambda
//!
//! A thin adapter around the core's ingest ([`pum_shared::app::App`]), which owns every route
//! and answer: `POST /record` (with `?batch=ID`), its CORS preflight, `/healthz`, `/status`, the
//! browser client and demo pages. This crate turns a Function URL or HTTP API (payload 2.0)
//! event into the core's [`CoreRequest`] ([`request`]), supplies the clock and the store
//! ([`pum_dynamodb::DynamoStore`] in `main.rs`, any [`Store`] in tests), and turns the core's
//! answer back into the event's response ([`respond`]).
//!
//! What the core reads of an event:
//!
//! - the method, `rawPath` and `rawQueryString` (the batch id travels in the query, so that a
//!   browser's retry of a batch counts once);
//! - `Origin`, `Content-Type`, `If-None-Match`, and CloudFront's `CloudFront-Viewer-Country` for
//!   country labels (present when CloudFront fronts the function and forwards it);
//! - `requestContext.http.sourceIp`, the client of the per-client rate limit (an IPv6 client by
//!   its /64). Its token buckets live in the memory of the execution environment: each
//!   environment Lambda runs keeps its own, so a client spread over `n` of them may send up to
//!   `n` times the limit;
//! - the body, which `lambda_http` has already decoded from base64 where the event was.
//!
//! Configuration is the settings every ingest shares ([`pum_shared::settings`]: `PUM_ALLOWLIST_JSON`,
//! `PUM_BROWSER_PACK`, `PUM_ALLOWED_ORIGINS`, `PUM_RATE_*`), read once per cold start
//! ([`settings`]), plus the store's own variables (see `main.rs`).
//!
//! The crate's second binary, `pum-fold` (`src/bin/fold.rs`), is the fold function: it consumes
//! the log table's stream ([`stream`]) and merges it into the totals with
//! [`pum_dynamodb::DynamoStore::fold`].

pub mod stream;

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use lambda_http::http::{HeaderMap, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use pum_shared::Store;
use pum_shared::app::{App, Method, Request as CoreRequest, Settings};
use pum_shared::ratelimit::parse_client;

/// The header CloudFront sets to the viewer's country (ISO 3166-1 alpha-2).
pub const COUNTRY_HEADER: &str = "cloudfront-viewer-country";

/// The functions' store: the totals table `PUM_TABLE` in the Lambda's region (`AWS_REGION`),
/// through `PUM_DYNAMODB_ENDPOINT` if set (a local server), with `more` settings read by the
/// function itself.
pub async fn store(
    var: impl Fn(&str) -> Option<String>,
    more: impl FnOnce(&mut pum_dynamodb::Settings) -> anyhow::Result<()>,
) -> anyhow::Result<pum_dynamodb::DynamoStore> {
    use anyhow::Context as _;
    let table = var("PUM_TABLE").context("PUM_TABLE must name the aggregates table")?;
    let endpoint = var("PUM_DYNAMODB_ENDPOINT").filter(|s| !s.is_empty());
    let sdk = pum_dynamodb::sdk_config(None, endpoint.as_deref()).await;
    let region = sdk
        .region()
        .map(ToString::to_string)
        .context("AWS_REGION is not set")?;
    let mut settings = pum_dynamodb::Settings::new(table, region);
    more(&mut settings)?;
    Ok(pum_dynamodb::DynamoStore::from_config(&sdk, settings))
}

/// Logs to stdout for CloudWatch, filtered by `PUM_LOG` (default `info`), without times (the
/// platform adds them) or colours: both functions' first step.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PUM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .with_ansi(false)
        .init();
}

/// The ingest's settings from the environment (read through `var`): the allowlist and everything
/// else of [`pum_shared::settings`]. The error names the variable (and, for the allowlist, the
/// metric and field); it fails the cold start.
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let allowlist = pum_shared::settings::allowlist(&var, &[])?;
    pum_shared::settings::ingest(&var, allowlist)
}

/// Answers one event. Never fails: every error is an answer.
pub async fn handle<S: Store>(app: &App<S>, event: Request) -> Response<Body> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let answer = app
        .handle(&request(&event), event.body().as_ref(), now_ms)
        .await;
    respond(answer)
}

/// What the core reads of an event.
pub fn request(event: &Request) -> CoreRequest<'_> {
    let headers = event.headers();
    CoreRequest {
        method: Method::parse(event.method().as_str()),
        path: event.uri().path(),
        query: event.uri().query(),
        origin: header_str(headers, header::ORIGIN.as_str()),
        content_type: header_str(headers, header::CONTENT_TYPE.as_str()),
        if_none_match: header_str(headers, header::IF_NONE_MATCH.as_str()),
        country: header_str(headers, COUNTRY_HEADER),
        client: source_ip(event),
    }
}

/// The client's address as the Function URL or HTTP API saw it. Function URLs and HTTP APIs
/// always report it; an event without one is not rate limited rather than lumped in with every
/// other such event.
fn source_ip(event: &Request) -> Option<IpAddr> {
    match event.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref().and_then(parse_client),
        _ => None,
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Turns the core's answer into the event's response.
pub fn respond(answer: pum_shared::http::Response) -> Response<Body> {
    let mut builder = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        builder = builder.header(*name, value.as_ref());
    }
    let body = if answer.body.is_empty() {
        Body::Empty
    } else {
        Body::Text(answer.body.into_owned())
    };
    builder.body(body).unwrap_or_else(|_| {
        // Only a header value the core never writes (a control character) gets here.
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}
