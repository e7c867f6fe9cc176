//! Standalone's ingest adapter: turns a hyper request into the core's ([`pum_shared::app`]),
//! which owns every route and answer, and the core's answer back into a hyper response.
//!
//! What is standalone's own: the client's address (the peer, or the last hop of
//! `--client-ip-header` behind a trusted proxy), and how a push body is read
//! ([`crate::body`]: within `--body-timeout`, against one memory budget over all connections).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pum_shared::app::{self, App, Method};
use pum_shared::ratelimit::parse_client;
use pum_shared::{Store, http};
use tokio::sync::Semaphore;

use crate::body::Reader;
use crate::server;

/// The ingest side of standalone: the core's app and how bodies are read.
pub struct Ingest<S> {
    /// The core.
    pub app: App<S>,
    /// Header whose last address names the client; else the peer does.
    pub client_ip_header: Option<HeaderName>,
    /// Time a body has to arrive whole.
    pub body_timeout: Duration,
    /// Permits are KiB of push body held in memory.
    pub body_budget: Semaphore,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Answers one request of the public listener.
pub async fn handle<S: Store + Send + Sync>(
    ingest: Arc<Ingest<S>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let h = &parts.headers;
    let text = |name: HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let from_header = ingest.client_ip_header.as_ref().and_then(|n| h.get(n));
    let client = from_header
        .and_then(|v| v.to_str().ok())
        .and_then(parse_client)
        .or_else(|| server::peer().map(|p| p.ip()));
    let mut req = app::Request::new(
        Method::parse(parts.method.as_str()),
        parts.uri.path(),
        parts.uri.query(),
    );
    req.origin = text(header::ORIGIN);
    req.content_type = text(header::CONTENT_TYPE);
    req.if_none_match = text(header::IF_NONE_MATCH);
    req.client = client;
    let reader = Reader::new(body, &ingest.body_budget, ingest.body_timeout);
    to_response(ingest.app.handle(&req, reader, now_ms()).await)
}

/// Turns a core response into an axum response.
pub fn to_response(r: http::Response) -> Response {
    let Ok(status) = StatusCode::from_u16(r.status) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = match r.body {
        Cow::Borrowed(s) => Body::from(s),
        Cow::Owned(s) => Body::from(s),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers: &mut HeaderMap = response.headers_mut();
    for (k, v) in r.headers {
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
            Ok(value) => headers.append(name, value),
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
    }
    response
}
