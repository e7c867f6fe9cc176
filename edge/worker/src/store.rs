//! The Worker's [`Store`]: each push's record goes to one shard (a Durable Object) in one
//! request; reading is what the shards published to Workers KV.
//!
//! A push with a batch id goes to the shard its id hashes to ([`pum_shard::shard_for`]), so that
//! a retry reaches the shard that remembers the id; one without goes to a shard at random. A
//! shard that does not hold the push's allowlist yet answers `409 unknown_allowlist`: the store
//! then describes it to that shard and sends the record again, once. So [`Store::describe`]
//! needs no request of its own: each shard is described when it first needs to be.
//!
//! The shard's protocol (edge/worker/src/durable.rs): `POST /merge` with the record answers 200
//! `applied` or `replayed`, 409 `unknown_allowlist`, 400 for a record that does not decode, 503
//! when nothing was stored; `POST /describe` with a description answers 204.

use std::collections::BTreeSet;

use pum_shard::publish::{KV_PREFIX, Publication};
use pum_shared::batch::BatchId;
use pum_shared::http::{self, Response as CoreResponse};
use pum_shared::own::{Op, Operations};
use pum_shared::{Aggregate, Allowlist, Merged, Push, Read, Store, StoreError, Stored};
use worker::{Env, Method, Request, RequestInit, Stub};

/// The Durable Object namespace binding of the shards (wrangler.toml `durable_objects`).
pub const SHARD_BINDING: &str = "SHARD";
/// The KV namespace binding the shards publish to (wrangler.toml `kv_namespaces`).
pub const KV_BINDING: &str = "SNAPSHOTS";

/// The shards of this deployment.
pub struct ShardStore {
    env: Env,
    shards: u32,
    /// Billable operations of this isolate not yet stored: carried by the next push it stores.
    ops: Operations,
}

impl ShardStore {
    /// The store over `shards` shards of `env`'s namespace.
    pub fn new(env: Env, shards: u32) -> Self {
        ShardStore {
            env,
            shards,
            ops: Operations::default(),
        }
    }

    /// The isolate's billable operations not yet stored (the Worker's requests, counted by the
    /// fetch handler, and its Durable Object requests): the next push stored carries them into
    /// the totals, as `pum_store_operations_total`.
    pub fn operations(&self) -> &Operations {
        &self.ops
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Sends `body` to `op` of shard `name`; returns the status and the answer's text.
async fn send(stub: &Stub, name: &str, op: &str, body: &[u8]) -> Result<(u16, String), StoreError> {
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(js_sys::Uint8Array::from(body).into()));
    let url = format!("https://shard/{op}?shard={name}");
    let req = Request::new_with_init(&url, &init).map_err(unavailable)?;
    let mut resp = stub.fetch_with_request(req).await.map_err(unavailable)?;
    let text = resp.text().await.map_err(unavailable)?;
    Ok((resp.status_code(), text))
}

impl Store for ShardStore {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        let merged = self.send_record(push).await;
        if let Err(e) = &merged {
            // The core answers 503 and nothing of the push is applied; the log says why.
            worker::console_error!("pum: a push could not be stored: {e}");
        }
        merged
    }

    async fn describe(&self, _allowlist: &Allowlist) -> Result<(), StoreError> {
        // Each shard asks for the allowlist when it first needs it (see the module docs).
        Ok(())
    }
}

impl ShardStore {
    /// Sends the push's record to its shard, describing the allowlist to the shard if it asks.
    /// The record carries the operations counted so far, its own request to the shard
    /// included; a push that stores nothing gives them back for the next one.
    async fn send_record(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        self.ops.count(Op::DoRequests, 1.0);
        let taken = self.ops.take();
        let merged = self.send_carrying(push, taken).await;
        if !matches!(merged, Ok(Merged::Applied)) {
            self.ops.give_back(taken);
        }
        merged
    }

    async fn send_carrying(
        &self,
        push: &Push<'_>,
        taken: pum_shared::own::Counts,
    ) -> Result<Merged, StoreError> {
        let record = push.with_operations(taken).record()?;
        let batch = push.batch.map(BatchId::as_str);
        let index = pum_shard::shard_for(batch, js_sys::Math::random(), self.shards);
        let name = pum_shard::shard_name(index);
        let ns = self
            .env
            .durable_object(SHARD_BINDING)
            .map_err(unavailable)?;
        let stub = ns.get_by_name(&name).map_err(unavailable)?;
        let mut described = false;
        loop {
            match send(&stub, &name, "merge", &record).await? {
                (200, text) if text == "applied" => return Ok(Merged::Applied),
                (200, text) if text == "replayed" => return Ok(Merged::Replayed),
                (409, _) if !described => {
                    // The description, and the record again: two more requests.
                    self.ops.count(Op::DoRequests, 2.0);
                    let description = push.allowlist.description();
                    match send(&stub, &name, "describe", description.as_bytes()).await? {
                        (204, _) => described = true,
                        (status, text) => {
                            return Err(unavailable(format!(
                                "shard {name} refused the allowlist: {status} {text}"
                            )));
                        }
                    }
                }
                (status, text) => {
                    return Err(unavailable(format!(
                        "shard {name} answered {status} {text}"
                    )));
                }
            }
        }
    }
}

impl Read for ShardStore {
    async fn read(&self) -> Result<Stored, StoreError> {
        let corrupt =
            |key: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{key}: {e}"));
        let mut stored = Stored::default();
        let mut seen = BTreeSet::new();
        for (key, text) in publications(&self.env).await.map_err(unavailable)? {
            let p = Publication::parse(&text).map_err(|e| corrupt(&key, &e))?;
            for a in p.allowlists {
                if seen.insert(a.get().to_owned()) {
                    let list =
                        Allowlist::from_description(a.get()).map_err(|e| corrupt(&key, &e))?;
                    stored.allowlists.push(list);
                }
            }
            let totals = Aggregate::from_json(p.snapshot.get()).map_err(|e| corrupt(&key, &e))?;
            stored.shards.push((key, totals));
        }
        Ok(stored)
    }
}

/// Every shard's publication in KV: `(key, text)`.
pub async fn publications(env: &Env) -> worker::Result<Vec<(String, String)>> {
    let kv = env.kv(KV_BINDING)?;
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut list = kv.list().prefix(KV_PREFIX.to_owned());
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

/// `GET /export`: the export document ([`crate::export::document`]).
pub async fn export(env: &Env) -> CoreResponse {
    match publications(env).await {
        Ok(pairs) => {
            let (doc, skipped) = crate::export::document(pairs);
            if !skipped.is_empty() {
                worker::console_error!(
                    "pum: publications that do not parse were left out: {skipped:?}"
                );
            }
            let mut r = CoreResponse::json(200, doc);
            r.headers.push(("cache-control", "no-store".into()));
            r
        }
        Err(e) => {
            worker::console_error!("pum: reading the publications failed: {e}");
            http::store_unavailable()
        }
    }
}

/// `GET /export/shards`: each shard's counters since it last started (pushes, rows written, KV
/// writes). Wakes every shard: for checking what pushes cost, not for scraping.
pub async fn shard_stats(env: &Env, shards: u32) -> CoreResponse {
    let calls = (0..shards).map(|i| async move {
        let name = pum_shard::shard_name(i);
        let stub = env.durable_object(SHARD_BINDING)?.get_by_name(&name)?;
        let mut resp = stub
            .fetch_with_str(&format!("https://shard/stats?shard={name}"))
            .await?;
        resp.text().await
    });
    let answers: worker::Result<Vec<String>> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect();
    match answers {
        Ok(answers) => CoreResponse::json(200, format!(r#"{{"shards":[{}]}}"#, answers.join(","))),
        Err(e) => {
            worker::console_error!("pum: reading the shards' counters failed: {e}");
            http::store_unavailable()
        }
    }
}
