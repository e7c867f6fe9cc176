use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::aggregate::{SeriesKey, SeriesValue};
use crate::corpus::bad_pushes;
use crate::own;
use crate::store::{MemoryStore, Merged, Read, StoreError, Stored};
use crate::{Allowlist, Limits};

const NOW: u64 = 1_790_000_000_000;
const BEACON: &str = include_str!("../../../fixtures/beacon.json");
const ORIGIN: &str = "https://www.example.com";

fn settings(cors: &str, rate: f64) -> Settings {
    Settings {
        ingest: Ingest::new(Allowlist::example(), Limits::default()),
        cors: Cors::parse(cors),
        rate_limit: RateLimit {
            per_second: rate,
            burst: 1.0,
            max_clients: 16,
        },
    }
}

fn app() -> App<MemoryStore> {
    App::new(settings("*", 0.0), MemoryStore::new())
}

fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// One request of the table.
struct Case<'a> {
    name: &'a str,
    method: Method,
    path: &'a str,
    query: Option<&'a str>,
    content_type: Option<&'a str>,
    origin: Option<&'a str>,
    body: &'a [u8],
}

fn case<'a>(name: &'a str, method: Method, path: &'a str) -> Case<'a> {
    Case {
        name,
        method,
        path,
        query: None,
        content_type: None,
        origin: None,
        body: b"",
    }
}

/// The answer as pinned: status, headers (an asset's ETag as a placeholder: it changes with the
/// asset) and the body (an asset's by its path: it changes with every build of the client).
fn pinned(name: &str, r: &Response) -> Value {
    let headers: BTreeMap<&str, String> = r
        .headers
        .iter()
        .map(|(k, v)| {
            let v = if *k == "etag" {
                "<etag>".to_owned()
            } else {
                v.to_string()
            };
            (*k, v)
        })
        .collect();
    let body = match serde_json::from_str::<Value>(&r.body) {
        Ok(json) => json,
        Err(_) if r.body.is_empty() => Value::Null,
        Err(_) => match ASSETS.iter().find(|a| a.body == r.body) {
            Some(a) => Value::String(format!("<the asset of {}>", a.path)),
            None => Value::String(format!("<{} bytes of something else>", r.body.len())),
        },
    };
    json!({"case": name, "status": r.status, "headers": headers, "body": body})
}

async fn run(app: &App<MemoryStore>, c: &Case<'_>) -> Response {
    let mut req = Request::new(c.method, c.path, c.query);
    req.content_type = c.content_type;
    req.origin = c.origin;
    app.handle(&req, c.body, NOW).await
}

fn counter(totals: &crate::Aggregate, metric: &str, labels: &[(&str, &str)]) -> u128 {
    match totals.get(&SeriesKey::new(metric, labels)) {
        Some(SeriesValue::Counter { micros }) => *micros / 1_000_000,
        None => 0,
        other => panic!("{metric} is not a counter: {other:?}"),
    }
}

/// Every route and the whole bad-push corpus, pinned in one table: what every ingest answers.
#[test]
fn every_route_and_the_bad_push_corpus_answer_as_pinned() {
    use Method::*;
    let beacon = BEACON.as_bytes();
    let mut table = vec![
        Case {
            body: beacon,
            content_type: Some("text/plain;charset=UTF-8"),
            origin: Some(ORIGIN),
            ..case("push: the beacon", Post, "/record")
        },
        Case {
            body: beacon,
            content_type: Some("application/json"),
            query: Some("batch=abcdefghijklmnop0123"),
            ..case("push: the beacon with a batch id", Post, "/record")
        },
        Case {
            body: beacon,
            content_type: Some("application/json"),
            query: Some("batch=abcdefghijklmnop0123"),
            ..case("push: the same batch again", Post, "/record")
        },
        Case {
            body: beacon,
            content_type: Some("application/json"),
            query: Some("batch=too-short"),
            ..case("push: a bad batch id", Post, "/record")
        },
        Case {
            origin: Some(ORIGIN),
            ..case("preflight", Options, "/record")
        },
        case("record: GET", Get, "/record"),
        case("record: PUT", Other, "/record"),
        case("healthz", Get, "/healthz"),
        case("healthz: HEAD", Head, "/healthz"),
        case("healthz: POST", Post, "/healthz"),
        case("status", Get, "/status"),
        case("status: DELETE", Other, "/status"),
        case("not found", Get, "/nope"),
        case("not found: POST", Post, "/record/"),
    ];
    for a in ASSETS {
        table.push(case(a.path, Get, a.path));
    }
    table.push(case("client: HEAD", Head, http::CLIENT_PATH));
    table.push(case("client: POST", Post, http::CLIENT_PATH));
    let corpus = bad_pushes();
    let names: Vec<String> = corpus
        .iter()
        .map(|c| format!("corpus: {}", c.name))
        .collect();
    for (c, name) in corpus.iter().zip(&names) {
        table.push(Case {
            body: &c.body,
            content_type: c.content_type.as_deref(),
            ..case(name, Post, "/record")
        });
    }

    let app = app();
    let answers: Vec<Response> = block(async {
        let mut out = Vec::new();
        for c in &table {
            out.push(run(&app, c).await);
        }
        out
    });
    // The corpus's own expectations hold...
    let first = table.len() - corpus.len();
    for (c, r) in corpus.iter().zip(&answers[first..]) {
        c.check(r.status, &r.body).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.headers
                .contains(&("access-control-allow-origin", "*".into())),
            "{}: CORS on every answer of /record",
            c.name
        );
    }
    // ...a replay is answered as the original...
    assert_eq!(answers[1], answers[2]);
    // ...and every answer is as pinned.
    let pinned: Vec<Value> = table
        .iter()
        .zip(&answers)
        .map(|(c, r)| pinned(c.name, r))
        .collect();
    insta::assert_json_snapshot!("answers", pinned);

    // What was stored: the beacon twice (its replay not at all), and each refusal and rejection
    // once, by reason.
    let stored = block(app.store().read()).expect("read").totals();
    let lcp = stored
        .get(&SeriesKey::new("browser_lcp_seconds", &[]))
        .and_then(SeriesValue::count);
    assert_eq!(lcp, Some(2));
    let mut refused: BTreeMap<&str, u128> = BTreeMap::new();
    for r in &answers {
        let json: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        if let Some(e) = json.get("error").and_then(Value::as_str)
            && r.status != 404
            && r.status != 405
        {
            *refused
                .entry(
                    Reason::ALL
                        .iter()
                        .find(|x| x.as_str() == e)
                        .expect("a reason")
                        .as_str(),
                )
                .or_default() += 1;
        }
    }
    for (reason, n) in &refused {
        assert_eq!(
            counter(&stored, own::PUSHES_REJECTED, &[("reason", reason)]),
            *n,
            "{reason}"
        );
    }
    assert_eq!(counter(&stored, own::PUSHES, &[("result", "accepted")]), 2);
}

#[test]
fn head_answers_as_get_without_a_body_and_etags_revalidate() {
    let app = app();
    block(async {
        let get = app
            .handle(
                &Request::new(Method::Get, http::CLIENT_PATH, None),
                &b""[..],
                NOW,
            )
            .await;
        assert_eq!(get.status, 200);
        assert!(get.body.contains("prometheusAggregator"));
        let head = app
            .handle(
                &Request::new(Method::Head, http::CLIENT_PATH, None),
                &b""[..],
                NOW,
            )
            .await;
        assert_eq!(
            (head.status, head.headers.clone()),
            (200, get.headers.clone())
        );
        assert!(head.body.is_empty());
        let etag = get
            .headers
            .iter()
            .find(|(k, _)| *k == "etag")
            .map(|(_, v)| v.to_string())
            .expect("an ETag");
        let mut again = Request::new(Method::Get, http::CLIENT_PATH, None);
        let tags = format!("\"other\", {etag}");
        again.if_none_match = Some(&tags);
        let r = app.handle(&again, &b""[..], NOW).await;
        assert_eq!(r.status, 304);
        assert!(r.body.is_empty());
    });
}

#[test]
fn the_origin_allowlist_refuses_before_the_body_is_read() {
    struct Unread;
    impl Body for Unread {
        type Bytes = Vec<u8>;
        async fn read(self, _: usize) -> Result<Vec<u8>, BodyError> {
            panic!("the body of a refused push is not read")
        }
    }
    let app = App::new(settings("https://a.example", 0.0), MemoryStore::new());
    let mut req = Request::new(Method::Post, "/record", None);
    req.origin = Some("https://evil.example");
    req.content_type = Some("application/json");
    let r = block(app.handle(&req, Unread, NOW));
    assert_eq!(r.status, 403);
    assert!(r.body.contains("origin_not_allowed"));
    assert!(r.headers.contains(&("vary", "Origin".into())));
    assert!(
        !r.headers
            .iter()
            .any(|(k, _)| *k == "access-control-allow-origin")
    );
}

#[test]
fn rate_limited_pushes_are_refused_unread_and_counted_with_the_next_push() {
    let app = App::new(settings("*", 1.0), MemoryStore::new());
    let client: IpAddr = "192.0.2.7".parse().expect("an address");
    let other: IpAddr = "198.51.100.1".parse().expect("an address");
    let push = |who: IpAddr| {
        let mut req = Request::new(Method::Post, "/record", None);
        req.client = Some(who);
        req.content_type = Some("application/json");
        block(app.handle(&req, BEACON.as_bytes(), NOW))
    };
    assert_eq!(push(client).status, 200);
    let limited = push(client);
    assert_eq!(limited.status, 429);
    assert!(limited.headers.contains(&("retry-after", "1".into())));
    assert_eq!(push(client).status, 429);
    let stored = block(app.store().read()).expect("read").totals();
    assert_eq!(
        counter(&stored, own::PUSHES_REJECTED, &[("reason", "rate_limited")]),
        0,
        "refusals cost no write of their own"
    );
    assert_eq!(push(other).status, 200);
    let stored = block(app.store().read()).expect("read").totals();
    assert_eq!(
        counter(&stored, own::PUSHES_REJECTED, &[("reason", "rate_limited")]),
        2
    );
    // A refusal with no push after it is stored on request (standalone's timer).
    assert_eq!(push(client).status, 429);
    assert!(block(app.store_rate_limited(NOW)));
    let stored = block(app.store().read()).expect("read").totals();
    assert_eq!(
        counter(&stored, own::PUSHES_REJECTED, &[("reason", "rate_limited")]),
        3
    );
}

#[test]
fn refusals_carried_by_a_replay_are_not_lost() {
    let app = App::new(settings("*", 1.0), MemoryStore::new());
    let client: IpAddr = "192.0.2.9".parse().expect("an address");
    let push = |who: Option<IpAddr>, query: Option<&'static str>| {
        let mut req = Request::new(Method::Post, "/record", query);
        req.client = who;
        req.content_type = Some("application/json");
        block(app.handle(&req, BEACON.as_bytes(), NOW))
    };
    let batch = Some("batch=replayed-batch-000001");
    assert_eq!(push(None, batch).status, 200);
    assert_eq!(push(Some(client), None).status, 200);
    assert_eq!(push(Some(client), None).status, 429);
    // A replay stores nothing, so the refusal it would have carried waits for the next push.
    assert_eq!(push(None, batch).status, 200);
    let refused = |app: &App<MemoryStore>| {
        let stored = block(app.store().read()).expect("read").totals();
        counter(&stored, own::PUSHES_REJECTED, &[("reason", "rate_limited")])
    };
    assert_eq!(refused(&app), 0);
    assert_eq!(push(None, None).status, 200);
    assert_eq!(refused(&app), 1);
}

/// A store that fails every write until told otherwise.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    down: AtomicBool,
}

impl Read for Flaky {
    async fn read(&self) -> Result<Stored, StoreError> {
        self.inner.read().await
    }
}

impl Store for Flaky {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        self.inner.merge(push).await
    }
    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        self.inner.describe(allowlist).await
    }
    fn is_failed(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

#[test]
fn a_store_failure_is_a_503_with_nothing_applied_and_the_retry_counts_once() {
    let app = App::new(settings("*", 0.0), Flaky::default());
    let mut req = Request::new(Method::Post, "/record", Some("batch=retry-me-0123456789"));
    req.content_type = Some("application/json");
    app.store().down.store(true, Ordering::SeqCst);
    let r = block(app.handle(&req, BEACON.as_bytes(), NOW));
    assert_eq!(r.status, 503);
    assert!(r.headers.contains(&("retry-after", "1".into())));
    let health = block(app.handle(&Request::new(Method::Get, "/healthz", None), &b""[..], NOW));
    assert_eq!(health.status, 503);
    assert!(block(app.store().read()).expect("read").totals().is_empty());
    app.store().down.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        let r = block(app.handle(&req, BEACON.as_bytes(), NOW));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let stored = block(app.store().read()).expect("read");
    assert_eq!(
        counter(&stored.totals(), own::PUSHES, &[("result", "accepted")]),
        1
    );
    assert_eq!(
        stored
            .allowlists
            .iter()
            .map(Allowlist::fingerprint)
            .collect::<Vec<_>>(),
        vec![app.ingest().allowlist().fingerprint()],
        "the ingest described its allowlist to the store"
    );
}

#[test]
fn the_headers_file_carries_the_asset_policy() {
    let file = headers_file();
    assert!(file.contains(&format!(
        "{}\n  Cache-Control: {SCRIPT_CACHE}\n  Access-Control-Allow-Origin: *\n",
        http::CLIENT_PATH
    )));
    assert!(file.contains("/demo/csp\n  Content-Security-Policy: default-src 'self'"));
}
