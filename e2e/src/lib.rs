//! # pum-e2e: one end-to-end suite for every ingest
//!
//! The same checks run against standalone (`pum-collector standalone`), the Worker under
//! `wrangler dev` and the Lambda under `cargo lambda watch`, each given only by its base URL and
//! the `/metrics` that shows its totals ([`Target`]). What an ingest must answer is not written
//! here: it is what the core answers ([`pum_shared::app`]), run in-process over a memory store
//! for the same request ([`Expected`]). So the ingests answer identically, or a check names the
//! request, the ingest and what differs.
//!
//! - [`answers_match_the_core`]: every route, the CORS preflight, the assets, the whole bad-push
//!   corpus, a bad batch id: status, JSON body, CORS and cache headers.
//! - [`counts_exactly`]: concurrent pushes, with and without batch ids, show on `/metrics` as
//!   exactly what the core counts for them, series by series.
//! - [`replays_count_once`]: the same batch sent again, in sequence and concurrently, is
//!   answered as the original and counted once.
//! - [`replay_after_restart_counts_once`]: and again after the ingest was killed and restarted.
//!
//! Each ingest must run with the example allowlist, any origin, and rate limiting off. Every step
//! waits until what it pushed shows on `/metrics`, so the next one starts from settled totals.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pum_shared::aggregate::micros_to_f64;
use pum_shared::allowlist::MetricKind;
use pum_shared::app::{self, App, Method};
use pum_shared::corpus::bad_pushes;
use pum_shared::http::{self, Cors};
use pum_shared::store::MemoryStore;
use pum_shared::{Aggregate, Allowlist, Ingest, Limits, RateLimit, Read, SeriesValue};
use serde_json::Value;

/// The realistic beacon every count is made of.
pub const BEACON: &str = include_str!("../../fixtures/beacon.json");

/// An ingest under test.
pub struct Target {
    /// For messages: `standalone`, `wrangler dev`, `cargo lambda watch`.
    pub name: String,
    /// The base URL: `POST {base}/record` pushes.
    pub base: String,
    /// The `/metrics` URL that shows the ingest's totals (standalone's own, or a
    /// `pum-collector serve` reading the edge's store).
    pub metrics: String,
    /// How long a push may take to show on `/metrics` (edges fold and publish on timers).
    pub settle: Duration,
    /// Whether only bodies of UTF-8 text can reach the ingest: `cargo lambda watch` answers any
    /// other body with its own 500 before the function runs (its Function URL events carry the
    /// body as text). The suite then leaves those cases of the corpus out, saying so; the
    /// Lambda's handler tests send them as the base64 events AWS sends.
    pub text_bodies_only: bool,
    /// The HTTP client.
    pub client: reqwest::Client,
}

impl Target {
    /// A target with a fresh client.
    pub fn new(name: &str, base: &str, metrics: &str, settle: Duration) -> Target {
        Target {
            name: name.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            metrics: metrics.to_owned(),
            settle,
            text_bodies_only: false,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        }
    }

    /// Sends one request; returns the answer as the suite compares it.
    pub async fn send(&self, r: &Req) -> Answer {
        let method = match r.method {
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Post => reqwest::Method::POST,
            Method::Options => reqwest::Method::OPTIONS,
            Method::Other => reqwest::Method::PUT,
        };
        let url = match &r.query {
            Some(q) => format!("{}{}?{q}", self.base, r.path),
            None => format!("{}{}", self.base, r.path),
        };
        let mut req = self.client.request(method, url).body(r.body.clone());
        if let Some(ct) = &r.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(o) = &r.origin {
            req = req.header("origin", o);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {} {}: {e}", self.name, r.method_name(), r.path));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Answer::new(status, headers, &body)
    }

    /// Pushes the beacon, with a batch id if given; returns status and body.
    pub async fn push_beacon(&self, batch: Option<&str>) -> Answer {
        self.send(&Req::push(BEACON.as_bytes(), batch)).await
    }

    /// Reads `/metrics` as series → value.
    pub async fn scrape(&self) -> BTreeMap<String, f64> {
        let text = self
            .client
            .get(&self.metrics)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: scraping {}: {e}", self.name, self.metrics))
            .text()
            .await
            .unwrap_or_default();
        parse_metrics(&text)
    }

    /// Waits until the totals moved from `before` by exactly `delta` on every series of `delta`,
    /// and no further: fails at once if a series went past its expected value (a double count),
    /// and after [`Target::settle`] if one is still short (a lost push).
    pub async fn await_delta(&self, before: &BTreeMap<String, f64>, delta: &BTreeMap<String, f64>) {
        let deadline = Instant::now() + self.settle;
        loop {
            let now = self.scrape().await;
            let mut short = Vec::new();
            for (series, want) in delta {
                let got = now.get(series).copied().unwrap_or(0.0)
                    - before.get(series).copied().unwrap_or(0.0);
                if got > want + 1e-6 * want.abs().max(1.0) {
                    panic!(
                        "{}: {series} moved by {got}, more than the {want} pushed: counted twice",
                        self.name
                    );
                }
                if got < want - 1e-6 * want.abs().max(1.0) {
                    short.push(format!("{series}: {got} of {want}"));
                }
            }
            if short.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: after {:?} the totals are still short: {short:?}",
                self.name,
                self.settle
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// One request of the suite.
#[derive(Clone, Debug)]
pub struct Req {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query, without `?`.
    pub query: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Origin`.
    pub origin: Option<String>,
    /// Body.
    pub body: Vec<u8>,
    /// What the check is, for messages.
    pub what: String,
}

impl Req {
    /// A request without headers or body.
    pub fn new(what: &str, method: Method, path: &str) -> Req {
        Req {
            method,
            path: path.to_owned(),
            query: None,
            content_type: None,
            origin: None,
            body: Vec::new(),
            what: what.to_owned(),
        }
    }

    /// A push of `body` as `text/plain` (as `sendBeacon` sends it), with a batch id if given.
    pub fn push(body: &[u8], batch: Option<&str>) -> Req {
        Req {
            query: batch.map(|b| format!("batch={b}")),
            content_type: Some("text/plain;charset=UTF-8".into()),
            body: body.to_vec(),
            ..Req::new("a push", Method::Post, http::RECORD_PATH)
        }
    }

    fn method_name(&self) -> &'static str {
        match self.method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Options => "OPTIONS",
            Method::Other => "PUT",
        }
    }
}

/// An answer as compared: status, the headers pum sets (names in lower case), and the body
/// (JSON parsed; anything else as text).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// The body, parsed if JSON.
    pub body: Value,
}

/// Headers whose values must be the same on every ingest.
const COMPARED: &[&str] = &[
    "content-type",
    "allow",
    "retry-after",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "cache-control",
    "content-security-policy",
];

impl Answer {
    fn new(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Answer {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            if COMPARED.contains(&k.as_str()) {
                map.entry(k)
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
        }
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
        };
        Answer {
            status,
            headers: map,
            body,
        }
    }
}

/// What the core answers and counts, in-process over a memory store.
pub struct Expected {
    app: App<MemoryStore>,
    clock: AtomicU64,
}

impl Default for Expected {
    fn default() -> Self {
        Self::new()
    }
}

impl Expected {
    /// The core with the settings every target runs with: the example allowlist, default
    /// limits, any origin, no rate limit.
    pub fn new() -> Expected {
        let settings = app::Settings {
            ingest: Ingest::new(Allowlist::example(), Limits::default()),
            cors: Cors::Any,
            rate_limit: RateLimit {
                per_second: 0.0,
                ..RateLimit::default()
            },
        };
        Expected {
            app: App::new(settings, MemoryStore::new()),
            clock: AtomicU64::new(now_ms()),
        }
    }

    /// The core's answer to `r`.
    pub async fn answer(&self, r: &Req) -> Answer {
        let mut req = app::Request::new(r.method, &r.path, r.query.as_deref());
        req.content_type = r.content_type.as_deref();
        req.origin = r.origin.as_deref();
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let resp = self.app.handle(&req, r.body.as_slice(), now).await;
        let headers = resp
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_string()))
            .collect();
        let body = if r.method == Method::Head {
            Vec::new()
        } else {
            resp.body.as_bytes().to_vec()
        };
        Answer::new(resp.status, headers, &body)
    }

    /// The series the core's store holds now, named as Prometheus shows them.
    pub async fn totals(&self) -> BTreeMap<String, f64> {
        let stored = self
            .app
            .store()
            .read()
            .await
            .expect("the memory store reads");
        series_of(&stored.totals(), self.app.ingest().allowlist())
    }
}

/// The series of `totals` as `/metrics` names them (`name{label="value"}`; a histogram's
/// `_bucket{...,le="..."}` cumulative, `_sum` and `_count`), written here from the exposition
/// format rather than taken from the collector, so that the suite checks the collector too.
pub fn series_of(totals: &Aggregate, allowlist: &Allowlist) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (key, value) in totals.iter() {
        let labels: Vec<String> = key
            .labels()
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let braces = |extra: Option<String>| {
            let all: Vec<String> = labels.iter().cloned().chain(extra).collect();
            if all.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", all.join(","))
            }
        };
        let name = key.metric();
        match (value, allowlist.get(name).map(|s| &s.kind)) {
            (SeriesValue::Counter { micros }, _) => {
                out.insert(format!("{name}{}", braces(None)), micros_to_f64(*micros));
            }
            (
                SeriesValue::Histogram {
                    buckets,
                    sum_micros,
                },
                Some(MetricKind::Histogram { buckets: bounds }),
            ) => {
                let mut cumulative = 0u64;
                for (i, count) in buckets.iter().enumerate() {
                    cumulative += count;
                    let le = bounds.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
                    let series = format!("{name}_bucket{}", braces(Some(format!("le=\"{le}\""))));
                    out.insert(series, cumulative as f64);
                }
                out.insert(
                    format!("{name}_sum{}", braces(None)),
                    micros_to_f64(*sum_micros),
                );
                out.insert(format!("{name}_count{}", braces(None)), cumulative as f64);
            }
            (SeriesValue::Histogram { .. }, _) => {
                panic!("{name} is not a histogram of the allowlist")
            }
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A fresh batch id: 24 characters, unique per call in this process and across runs.
pub fn batch_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("e2e-{:012x}-{n:07}", now_ms() & 0xffff_ffff_ffff)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses Prometheus text into series → value (comments skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = match line.find('}') {
            Some(i) => i + 1,
            None => line.find(' ').unwrap_or(line.len()),
        };
        let (series, value) = line.split_at(split);
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(series.trim().to_owned(), v);
        }
    }
    out
}

/// The requests whose answers every ingest must give as the core does.
pub fn route_table() -> Vec<Req> {
    use Method::*;
    let origin = |mut r: Req| {
        r.origin = Some("https://www.example.com".into());
        r
    };
    let mut table = vec![
        origin(Req::new("preflight", Options, http::RECORD_PATH)),
        Req::new("GET /record", Get, http::RECORD_PATH),
        Req::new("PUT /record", Other, http::RECORD_PATH),
        Req::new("healthz", Get, "/healthz"),
        Req::new("healthz: HEAD", Head, "/healthz"),
        Req::new("healthz: POST", Post, "/healthz"),
        Req::new("status", Get, "/status"),
        Req::new("not found", Get, "/no/such/path"),
        Req::new("the client script", Get, http::CLIENT_PATH),
        Req {
            what: "a bad batch id".into(),
            ..Req::push(BEACON.as_bytes(), Some("not-a-valid-id!"))
        },
        Req {
            what: "a push from a page".into(),
            ..origin(Req::push(BEACON.as_bytes(), None))
        },
    ];
    for case in bad_pushes() {
        table.push(Req {
            method: Post,
            path: http::RECORD_PATH.into(),
            query: None,
            content_type: case.content_type.clone(),
            origin: None,
            body: case.body.clone(),
            what: format!("bad push: {}", case.name),
        });
    }
    table
}

/// Every request of [`route_table`] gets the core's answer: the same status, JSON body, CORS
/// and cache headers.
pub async fn answers_match_the_core(t: &Target) {
    let expected = Expected::new();
    let before = t.scrape().await;
    let mut differences = Vec::new();
    for r in route_table() {
        if t.text_bodies_only && std::str::from_utf8(&r.body).is_err() {
            println!(
                "{}: {:?} not sent: its body is not UTF-8 text",
                t.name, r.what
            );
            continue;
        }
        let want = expected.answer(&r).await;
        let got = t.send(&r).await;
        if got != want {
            differences.push(format!(
                "{} ({} {}):\n  core: {want:?}\n  {}: {got:?}",
                r.what,
                r.method_name(),
                r.path,
                t.name
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} answers differently from the core:\n{}",
        t.name,
        differences.join("\n")
    );
    // What the table pushed (the corpus's refusals count too) shows before the next step.
    t.await_delta(&before, &expected.totals().await).await;
}

/// Pushes of the beacon from 8 clients at once, half with batch ids, show on `/metrics` as
/// exactly what the core counts for them.
pub async fn counts_exactly(t: &Target) {
    const PUSHES: usize = 32;
    let expected = Expected::new();
    let before = t.scrape().await;
    let ids: Vec<Option<String>> = (0..PUSHES).map(|i| (i % 2 == 0).then(batch_id)).collect();
    let answers = futures_util::future::join_all(ids.chunks(PUSHES / 8).map(|chunk| async move {
        let mut out = Vec::new();
        for id in chunk {
            out.push(t.push_beacon(id.as_deref()).await);
        }
        out
    }))
    .await;
    for (answer, id) in answers.into_iter().flatten().zip(&ids) {
        let want = expected
            .answer(&Req::push(BEACON.as_bytes(), id.as_deref()))
            .await;
        assert_eq!(answer, want, "{}: a push", t.name);
    }
    t.await_delta(&before, &expected.totals().await).await;
}

/// The same batch sent twice in sequence, then another sent 8 times at once: each answered as
/// the original, each counted once; a push without an id sent twice counts twice.
pub async fn replays_count_once(t: &Target) {
    let expected = Expected::new();
    let before = t.scrape().await;
    let once = batch_id();
    let first = t.push_beacon(Some(&once)).await;
    let again = t.push_beacon(Some(&once)).await;
    assert_eq!(first.status, 200, "{}: {first:?}", t.name);
    assert_eq!(
        again, first,
        "{}: a replay is answered as the original",
        t.name
    );
    let concurrent = batch_id();
    let answers =
        futures_util::future::join_all((0..8).map(|_| t.push_beacon(Some(&concurrent)))).await;
    let distinct: BTreeSet<String> = answers.iter().map(|a| format!("{a:?}")).collect();
    assert_eq!(
        distinct.len(),
        1,
        "{}: concurrent duplicates: {distinct:?}",
        t.name
    );
    assert_eq!(answers[0], first, "{}", t.name);
    for _ in 0..2 {
        assert_eq!(t.push_beacon(None).await.status, 200);
    }
    for id in [Some(once.as_str()), Some(concurrent.as_str()), None, None] {
        expected.answer(&Req::push(BEACON.as_bytes(), id)).await;
    }
    t.await_delta(&before, &expected.totals().await).await;
}

/// A batch pushed, the ingest killed and restarted by `restart` (which returns it running
/// again), the batch pushed again: counted once.
pub async fn replay_after_restart_counts_once<F, Fut>(t: Target, restart: F) -> Target
where
    F: FnOnce(Target) -> Fut,
    Fut: Future<Output = Target>,
{
    let expected = Expected::new();
    let before = t.scrape().await;
    let id = batch_id();
    let first = t.push_beacon(Some(&id)).await;
    assert_eq!(first.status, 200, "{}: {first:?}", t.name);
    expected
        .answer(&Req::push(BEACON.as_bytes(), Some(&id)))
        .await;
    let t = restart(t).await;
    let again = t.push_beacon(Some(&id)).await;
    assert_eq!(again, first, "{}: a replay after a restart", t.name);
    t.await_delta(&before, &expected.totals().await).await;
    t
}

/// The whole suite but the restart.
pub async fn run(t: &Target) {
    answers_match_the_core(t).await;
    counts_exactly(t).await;
    replays_count_once(t).await;
}
