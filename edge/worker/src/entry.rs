//! The Worker's fetch handler: turns the platform's request into the core's
//! ([`pum_shared::app`]), which answers every ingest route, and the core's answer back. The
//! export routes are the Worker's own. Workers Static Assets serve the client and the demo
//! pages before the Worker runs (wrangler.toml), with the core's headers (build.sh).

use std::cell::OnceCell;
use std::rc::Rc;

use futures_util::StreamExt;
use pum_shared::BodyError;
use pum_shared::app::{self, App, Body};
use pum_shared::http::{self, Response as CoreResponse};
use pum_shared::own::Op;
use pum_shared::ratelimit::parse_client;
use worker::{Context, Env, Headers, Method, Request, Response, Result, event};

use crate::export::{self, EXPORT_PATH, SHARD_STATS_PATH};
use crate::route;
use crate::settings::{Settings, env_text};
use crate::store::{self, ShardStore};

/// The ingest of this isolate: the core over the shards, and the Worker's own settings.
struct Ingest {
    app: App<ShardStore>,
    shards: u32,
    export_token: Option<String>,
}

thread_local! {
    /// Vars only change with a new deployment, which starts new isolates: check them once.
    static INGEST: OnceCell<Rc<std::result::Result<Ingest, String>>> = const { OnceCell::new() };
}

fn ingest(env: &Env) -> Rc<std::result::Result<Ingest, String>> {
    INGEST.with(|cell| {
        Rc::clone(cell.get_or_init(|| {
            let ingest = Settings::from_vars(|name| env_text(env, name)).map(|s| Ingest {
                app: App::new(s.app, ShardStore::new(env.clone(), s.shards)),
                shards: s.shards,
                export_token: s.export_token,
            });
            if let Err(e) = &ingest {
                worker::console_error!("pum: the Worker's configuration is invalid: {e}");
            }
            Rc::new(ingest)
        }))
    })
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let ingest = ingest(&env);
    let Ok(ingest) = ingest.as_ref() else {
        let message = "the Worker's configuration is invalid; its log says why (npx wrangler tail)";
        return respond(CoreResponse::error(500, "config_invalid", message));
    };
    // Every request is billed, exports and refusals too: the next push stored carries the count.
    ingest
        .app
        .store()
        .operations()
        .count(Op::WorkerRequests, 1.0);
    let url = req.inner().url();
    let (path, query) = route::split(&url);
    if let path @ (EXPORT_PATH | SHARD_STATS_PATH) = path {
        if !matches!(req.method(), Method::Get | Method::Head) {
            return respond(http::method_not_allowed("GET, HEAD"));
        }
        let token = ingest.export_token.as_deref();
        if !export::authorized(header(&req, "authorization").as_deref(), token) {
            return respond(export::unauthorized(token.is_some()));
        }
        return respond(match path {
            EXPORT_PATH => store::export(&env).await,
            _ => store::shard_stats(&env, ingest.shards).await,
        });
    }
    let [origin, content_type, if_none_match, client, length] = [
        "origin",
        "content-type",
        "if-none-match",
        "cf-connecting-ip",
        "content-length",
    ]
    .map(|name| header(&req, name));
    let country = req.cf().and_then(|cf| cf.country());
    let core = app::Request {
        method: app::Method::parse(req.method().as_ref()),
        path,
        query,
        origin: origin.as_deref(),
        content_type: content_type.as_deref(),
        if_none_match: if_none_match.as_deref(),
        country: country.as_deref(),
        // Cloudflare always sets CF-Connecting-IP; a request without a readable one is not
        // limited rather than lumped in with every other such request.
        client: client.as_deref().and_then(parse_client),
    };
    let body = StreamBody {
        req: &mut req,
        declared: length.and_then(|l| l.trim().parse().ok()),
    };
    let now_ms = js_sys::Date::now() as u64;
    respond(ingest.app.handle(&core, body, now_ms).await)
}

/// The request's body, read as a stream only if the push gets that far.
struct StreamBody<'a> {
    req: &'a mut Request,
    declared: Option<usize>,
}

impl Body for StreamBody<'_> {
    type Bytes = Vec<u8>;

    /// At most `max` bytes; a longer body is refused without reading the rest.
    async fn read(self, max: usize) -> std::result::Result<Vec<u8>, BodyError> {
        if self.declared.is_some_and(|l| l > max) {
            return Err(BodyError::TooLarge);
        }
        // No body at all reads as an empty one, as it does in standalone mode.
        let Ok(mut stream) = self.req.stream() else {
            return Ok(Vec::new());
        };
        let mut buf = Vec::with_capacity(self.declared.unwrap_or(0).min(max));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
            if buf.len() + chunk.len() > max {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }
}

/// Turns the core's answer into a Workers response.
fn respond(r: CoreResponse) -> Result<Response> {
    let headers = Headers::new();
    for (name, value) in &r.headers {
        headers.append(name, value)?;
    }
    let resp = if r.body.is_empty() {
        Response::empty()?
    } else {
        Response::from_bytes(r.body.as_bytes().to_vec())?
    };
    Ok(resp.with_status(r.status).with_headers(headers))
}
