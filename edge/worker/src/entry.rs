//! The Worker's fetch handler: turns the platform's request into the core's, hands the delta to
//! one shard, and turns the core's answer back into a response. It mirrors
//! `pum-collector standalone`'s ingest app (collector/src/standalone.rs) route for route: origin
//! check first, then the body limit, then the core; CORS headers on every answer of `/record`.
//! Before all of them, the client's address (`CF-Connecting-IP`) is checked against the rate
//! limit, kept in this isolate's memory: a refused push reads no body and costs no Durable Object
//! request, and the refusals are counted in the next push this isolate stores.
//! The client script is not served here: Workers Static Assets serve `/static/*` before the
//! Worker runs (see wrangler.toml).

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use futures_util::StreamExt;
use pum_shared::http::{self as core_http};
use pum_shared::ingest::RequestContext;
use pum_shared::ratelimit::parse_client;
use pum_shared::{BodyError, Decision, RateLimiter, Reason};
use wasm_bindgen::JsValue;
use worker::{Context, Env, Headers, Method, Request, RequestInit, Response, Result, event};

use crate::export::{self, EXPORT_PATH};
use crate::settings::Settings;
use pum_shard as shard;

/// The Durable Object namespace binding of the shards (wrangler.toml `durable_objects`).
pub(crate) const SHARD_BINDING: &str = "SHARD";
/// The KV namespace binding the shards write their snapshots to (wrangler.toml `kv_namespaces`).
pub(crate) const KV_BINDING: &str = "SNAPSHOTS";
/// Export of each shard's live counters (rows written, KV writes), for checking costs.
const SHARD_STATS_PATH: &str = "/export/shards";

thread_local! {
    /// Vars only change with a new deployment, which starts new isolates: check them once.
    static SETTINGS: OnceCell<Rc<std::result::Result<Settings, String>>> = const { OnceCell::new() };
    /// The rate limiter of this isolate: per isolate, not shared with other isolates or
    /// locations (see crate::settings).
    static LIMITER: RefCell<Option<RateLimiter>> = const { RefCell::new(None) };
}

/// Runs `f` on this isolate's rate limiter, made on first use from the settings.
fn with_limiter<T>(s: &Settings, f: impl FnOnce(&mut RateLimiter) -> T) -> T {
    LIMITER.with(|cell| {
        let mut limiter = cell.borrow_mut();
        f(limiter.get_or_insert_with(|| RateLimiter::new(s.rate_limit.clone())))
    })
}

fn settings(env: &Env) -> Rc<std::result::Result<Settings, String>> {
    SETTINGS.with(|cell| {
        Rc::clone(cell.get_or_init(|| {
            let s = Settings::from_vars(|name| env_text(env, name));
            if let Err(e) = &s {
                worker::console_error!("pum: the Worker's configuration is invalid: {e}");
            }
            Rc::new(s)
        }))
    })
}

/// A var's text: a string var as is, a TOML table or array var as JSON.
pub(crate) fn env_text(env: &Env, name: &str) -> Option<String> {
    let v = js_sys::Reflect::get(env, &JsValue::from_str(name)).ok()?;
    if v.is_undefined() || v.is_null() {
        return None;
    }
    if let Some(s) = v.as_string() {
        return Some(s);
    }
    js_sys::JSON::stringify(&v).ok().and_then(|s| s.as_string())
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let settings = settings(&env);
    let Ok(s) = settings.as_ref() else {
        return respond(
            core_http::Response::error(
                500,
                "config_invalid",
                "the Worker's configuration is invalid; its log says why (npx wrangler tail)",
            ),
            core_http::Headers::new(),
        );
    };
    let method = req.method();
    match req.path().as_str() {
        core_http::RECORD_PATH => match method {
            Method::Post => record(req, &env, s).await,
            Method::Options => respond(
                s.cors.preflight(header(&req, "origin").as_deref()),
                core_http::Headers::new(),
            ),
            _ => respond(
                core_http::method_not_allowed("POST, OPTIONS"),
                core_http::Headers::new(),
            ),
        },
        "/healthz" if is_get(&method) => respond(
            core_http::Response::json(200, r#"{"status":"ok"}"#.into()),
            core_http::Headers::new(),
        ),
        // The original aggregator's health check.
        "/status" if is_get(&method) => Ok(Response::empty()?.with_status(200)),
        EXPORT_PATH | SHARD_STATS_PATH if is_get(&method) => {
            if !export::authorized(
                header(&req, "authorization").as_deref(),
                s.export_token.as_deref(),
            ) {
                return respond(
                    export::unauthorized(s.export_token.is_some()),
                    core_http::Headers::new(),
                );
            }
            if req.path() == EXPORT_PATH {
                export_snapshots(&env).await
            } else {
                shard_stats(&env, s.shards).await
            }
        }
        "/healthz" | "/status" | EXPORT_PATH | SHARD_STATS_PATH => respond(
            core_http::method_not_allowed("GET"),
            core_http::Headers::new(),
        ),
        _ => respond(core_http::not_found(), core_http::Headers::new()),
    }
}

fn is_get(method: &Method) -> bool {
    matches!(method, Method::Get | Method::Head)
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

async fn record(mut req: Request, env: &Env, s: &Settings) -> Result<Response> {
    let origin = header(&req, "origin");
    let cors = s.cors.headers(origin.as_deref());
    // Cloudflare always sets CF-Connecting-IP; a request without a readable one is not limited
    // rather than lumped in with every other such request.
    if let Some(client) = header(&req, "cf-connecting-ip").and_then(|v| parse_client(&v)) {
        let now_ms = js_sys::Date::now() as u64;
        if let Decision::Limit { retry_after_secs } = with_limiter(s, |l| l.check(client, now_ms)) {
            return respond(s.ingest.rate_limited(retry_after_secs), cors);
        }
    }
    let max = s.ingest.limits().max_body_bytes;
    let mut outcome = if s.cors.allows(origin.as_deref()) {
        let ctx = RequestContext {
            country: req.cf().and_then(|cf| cf.country()),
        };
        match read_body(&mut req, max).await {
            Ok(bytes) => s
                .ingest
                .push_with(&ctx, header(&req, "content-type").as_deref(), &bytes),
            Err(e) => s.ingest.refuse_body(e),
        }
    } else {
        s.ingest.refuse(
            Reason::OriginNotAllowed,
            "this origin may not push here; add it to the Worker's ALLOWED_ORIGINS",
        )
    };
    // Every push, refused ones too, carries pum's own counters: one shard request each, as in
    // standalone mode every push is one merge. It also carries the rate limiter's refusals since
    // the last push stored, which cost no request of their own.
    let limited = with_limiter(s, RateLimiter::take_refused);
    s.ingest
        .count_refused(&mut outcome.delta, Reason::RateLimited, limited);
    match merge(env, s.shards, outcome.delta.to_json()).await {
        Ok(()) => respond(
            core_http::Response::json(outcome.status, outcome.body),
            cors,
        ),
        Err(e) => {
            worker::console_error!("pum: a push could not be stored: {e}");
            // Nothing of the delta was stored: the next one counts these refusals.
            with_limiter(s, |l| l.return_refused(limited));
            respond(core_http::store_unavailable(), cors)
        }
    }
}

/// Reads at most `max` bytes of body; a longer one is refused without reading the rest.
async fn read_body(req: &mut Request, max: usize) -> std::result::Result<Vec<u8>, BodyError> {
    let declared = header(req, "content-length").and_then(|l| l.trim().parse::<usize>().ok());
    if declared.is_some_and(|l| l > max) {
        return Err(BodyError::TooLarge);
    }
    // No body at all reads as an empty one, as it does in standalone mode.
    let Ok(mut stream) = req.stream() else {
        return Ok(Vec::new());
    };
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Sends a delta to one shard: exactly one Durable Object request. `Ok` means the shard has
/// stored it durably; on any error nothing of it was stored.
async fn merge(env: &Env, shards: u32, delta: String) -> Result<()> {
    let name = shard::shard_name(shard::pick_shard(js_sys::Math::random(), shards));
    let stub = env.durable_object(SHARD_BINDING)?.get_by_name(&name)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(JsValue::from_str(&delta)));
    let req = Request::new_with_init(&format!("https://shard/merge?shard={name}"), &init)?;
    let resp = stub.fetch_with_request(req).await?;
    match resp.status_code() {
        204 => Ok(()),
        status => Err(format!("shard {name} answered {status}").into()),
    }
}

/// `GET /export`: every shard's snapshot from KV.
async fn export_snapshots(env: &Env) -> Result<Response> {
    match read_snapshots(env).await {
        Ok(pairs) => {
            let (doc, skipped) = export::document(pairs);
            if !skipped.is_empty() {
                worker::console_error!(
                    "pum: snapshots that are not JSON were left out: {skipped:?}"
                );
            }
            let mut r = core_http::Response::json(200, doc);
            r.headers.push(("cache-control", "no-store".into()));
            respond(r, core_http::Headers::new())
        }
        Err(e) => {
            worker::console_error!("pum: reading the snapshots failed: {e}");
            respond(core_http::store_unavailable(), core_http::Headers::new())
        }
    }
}

async fn read_snapshots(env: &Env) -> Result<Vec<(String, String)>> {
    let kv = env.kv(KV_BINDING)?;
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut list = kv.list().prefix(shard::KV_PREFIX.to_owned());
        if let Some(c) = cursor.take() {
            list = list.cursor(c);
        }
        let page = list.execute().await?;
        keys.extend(page.keys.into_iter().map(|k| k.name));
        match page.cursor {
            Some(c) if !page.list_complete => cursor = Some(c),
            _ => break,
        }
    }
    let values = futures_util::future::join_all(keys.iter().map(|k| kv.get(k).text())).await;
    let mut pairs = Vec::with_capacity(keys.len());
    for (key, value) in keys.into_iter().zip(values) {
        if let Some(text) = value? {
            pairs.push((key, text));
        }
    }
    Ok(pairs)
}

/// `GET /export/shards`: each shard's counters since it last started (pushes, rows written, KV
/// writes). Wakes every shard: for checking what pushes cost, not for scraping.
async fn shard_stats(env: &Env, shards: u32) -> Result<Response> {
    let ns = env.durable_object(SHARD_BINDING)?;
    let mut calls = Vec::new();
    for i in 0..shards {
        let name = shard::shard_name(i);
        let stub = ns.get_by_name(&name)?;
        calls.push(async move {
            let mut resp = stub
                .fetch_with_str(&format!("https://shard/stats?shard={name}"))
                .await?;
            resp.text().await
        });
    }
    let mut out = String::from(r#"{"shards":["#);
    for (i, r) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&r?);
    }
    out.push_str("]}");
    respond(
        core_http::Response::json(200, out),
        core_http::Headers::new(),
    )
}

/// Turns a core response and CORS headers into a Workers response.
fn respond(r: core_http::Response, cors: core_http::Headers) -> Result<Response> {
    let headers = Headers::new();
    for (k, v) in r.headers.iter().chain(cors.iter()) {
        headers.append(k, v)?;
    }
    let resp = if r.body.is_empty() {
        Response::empty()?
    } else {
        Response::from_bytes(r.body.into_bytes())?
    };
    Ok(resp.with_status(r.status).with_headers(headers))
}
