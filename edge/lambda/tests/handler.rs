//! The adapter fed recorded API Gateway v2 (HTTP API) and Function URL events (`tests/data/`),
//! over the in-memory store and stores that fail: what the core reads of an event (method, path,
//! query, headers, source address, body) and how its answers come back. The answers themselves
//! are the core's, pinned in `shared`; here they are checked as they leave a Lambda. No AWS and
//! no network.

use lambda_http::{Body, Request, Response};
use pum_lambda::{handle, settings};
use pum_shared::app::App;
use pum_shared::corpus::bad_pushes;
use pum_shared::store::{MemoryStore, Merged, Push, Read, Stored};
use pum_shared::{Aggregate, Allowlist, SeriesKey, SeriesValue, Store, StoreError};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("fixture exists")
}

fn event(name: &str) -> Request {
    lambda_http::request::from_str(&fixture(name)).expect("the fixture is a valid event")
}

/// A fixture changed by `edit` (the rest of the event stays real).
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> Request {
    let mut v: Value = serde_json::from_str(&fixture(name)).expect("json");
    edit(&mut v);
    lambda_http::request::from_str(&v.to_string()).expect("valid event")
}

/// The fixture with its body and content type replaced.
fn event_with_body(name: &str, content_type: Option<&str>, body: &[u8]) -> Request {
    edited(name, |v| {
        let headers = v["headers"].as_object_mut().expect("headers");
        headers.remove("content-type");
        if let Some(ct) = content_type {
            headers.insert("content-type".into(), json!(ct));
        }
        headers.insert("content-length".into(), json!(body.len().to_string()));
        match std::str::from_utf8(body) {
            Ok(text) => {
                v["body"] = json!(text);
                v["isBase64Encoded"] = json!(false);
            }
            Err(_) => {
                v["body"] = json!(base64(body));
                v["isBase64Encoded"] = json!(true);
            }
        }
    })
}

/// A recorded event, from another client address.
fn event_from(name: &str, source_ip: &str) -> Request {
    edited(name, |v| {
        v["requestContext"]["http"]["sourceIp"] = json!(source_ip)
    })
}

/// The beacon event with `rawQueryString` set as a Function URL sets it.
fn event_with_query(query: &str) -> Request {
    edited("function-url-record-batch.json", |v| {
        v["rawQueryString"] = json!(query);
    })
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn app_over<S: Store>(pairs: &[(&str, &str)], store: S) -> App<S> {
    App::new(settings(vars(pairs)).expect("settings"), store)
}

fn app(pairs: &[(&str, &str)]) -> App<MemoryStore> {
    app_over(pairs, MemoryStore::new())
}

fn header<'a>(r: &'a Response<Body>, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn json_body(r: &Response<Body>) -> Value {
    serde_json::from_slice(r.body().as_ref()).expect("a JSON answer")
}

async fn totals<S: Read>(store: &S) -> Aggregate {
    store.read().await.expect("read").totals()
}

fn counter(agg: &Aggregate, metric: &str, labels: &[(&str, &str)]) -> u128 {
    match agg.get(&SeriesKey::new(metric, labels)) {
        Some(SeriesValue::Counter { micros }) => *micros,
        _ => 0,
    }
}

const SEARCH: &[(&str, &str)] = &[("feature", "search")];

#[tokio::test]
async fn function_url_beacon_is_recorded_with_cors() {
    let app = app(&[]);
    let r = handle(&app, event("function-url-record-beacon.json")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(&r), json!({"accepted": 3, "rejected": []}));
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let totals = totals(app.store()).await;
    assert_eq!(
        counter(&totals, "demo_feature_usage_total", SEARCH),
        3_000_000
    );
    let count = |metric: &str, labels: &[(&str, &str)]| {
        totals
            .get(&SeriesKey::new(metric, labels))
            .and_then(SeriesValue::count)
    };
    assert_eq!(
        count("demo_third_party_api_seconds", &[("api", "maps")]),
        Some(2)
    );
    assert_eq!(count("browser_lcp_seconds", &[]), Some(1));
    assert_eq!(
        counter(&totals, "pum_pushes_total", &[("result", "accepted")]),
        1_000_000
    );
}

#[tokio::test]
async fn function_url_base64_body_is_decoded() {
    let app = app(&[]);
    let r = handle(&app, event("function-url-record-base64.json")).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let totals = totals(app.store()).await;
    assert_eq!(
        counter(
            &totals,
            "demo_feature_usage_total",
            &[("feature", "export")]
        ),
        2_000_000
    );
}

#[tokio::test]
async fn the_batch_id_comes_from_the_raw_query_string_and_a_batch_counts_once() {
    let app = app(&[]);
    for _ in 0..2 {
        let r = handle(&app, event("function-url-record-batch.json")).await;
        assert_eq!(r.status(), 200, "a replay gets the same answer");
        assert_eq!(json_body(&r), json!({"accepted": 3, "rejected": []}));
    }
    let once = totals(app.store()).await;
    assert_eq!(
        counter(&once, "demo_feature_usage_total", SEARCH),
        3_000_000
    );
    assert_eq!(
        counter(&once, "pum_pushes_total", &[("result", "accepted")]),
        1_000_000
    );
    // Among other parameters, and another batch: counted.
    let r = handle(&app, event_with_query("v=2&batch=another-batch-000001")).await;
    assert_eq!(r.status(), 200);
    let twice = totals(app.store()).await;
    assert_eq!(
        counter(&twice, "demo_feature_usage_total", SEARCH),
        6_000_000
    );
}

#[tokio::test]
async fn a_bad_batch_id_is_a_400_invalid_batch_id_and_nothing_of_the_push_is_recorded() {
    let app = app(&[]);
    for query in [
        "batch=short",
        "batch=has%20space-0000000",
        "batch=a&batch=b",
    ] {
        let r = handle(&app, event_with_query(query)).await;
        assert_eq!(r.status(), 400, "{query}");
        assert_eq!(json_body(&r)["error"], "invalid_batch_id", "{query}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    }
    let totals = totals(app.store()).await;
    assert_eq!(counter(&totals, "demo_feature_usage_total", SEARCH), 0);
    assert_eq!(
        counter(
            &totals,
            "pum_pushes_rejected_total",
            &[("reason", "invalid_batch_id")]
        ),
        3_000_000
    );
}

#[tokio::test]
async fn a_custom_allowlist_is_described_to_the_store() {
    let list = r#"{"allowedMetrics": [{"name": "shop_checkout_total", "help": "Checkouts.",
        "type": "counter", "labels": [{"name": "step", "allowedValues": ["paid"]}]}]}"#;
    let app = app(&[("PUM_ALLOWLIST_JSON", list), ("PUM_BROWSER_PACK", "false")]);
    let body = br#"[{"metricName":"shop_checkout_total","metricType":"counter","labels":{"step":"paid"},"inc":1}]"#;
    let r = handle(
        &app,
        event_with_body("function-url-record-beacon.json", Some("text/plain"), body),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let stored = app.store().read().await.expect("read");
    let want = Allowlist::compile([("PUM_ALLOWLIST_JSON", list)], false).expect("compiles");
    let fingerprints: Vec<u64> = stored
        .allowlists
        .iter()
        .map(Allowlist::fingerprint)
        .collect();
    assert_eq!(fingerprints, vec![want.fingerprint()]);
    assert!(stored.allowlists[0].get("shop_checkout_total").is_some());
    assert!(stored.allowlists[0].get("browser_lcp_seconds").is_none());
}

#[tokio::test]
async fn preflight_client_health_and_unknown_paths() {
    let app = app(&[("PUM_ALLOWED_ORIGINS", "https://shop.example")]);
    let r = handle(&app, event("function-url-preflight.json")).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(header(&r, "access-control-allow-methods").is_some_and(|m| m.contains("POST")));

    let r = handle(&app, event("function-url-client-js.json")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let client = pum_shared::app::ASSETS
        .iter()
        .find(|a| a.path == pum_shared::http::CLIENT_PATH)
        .expect("the client is an asset");
    assert_eq!(r.body().as_ref(), client.body.as_bytes());
    // The ETag comes back as If-None-Match: 304, no body.
    let etag = header(&r, "etag").expect("an ETag").to_owned();
    let r = handle(
        &app,
        edited("function-url-client-js.json", |v| {
            v["headers"]["if-none-match"] = json!(etag);
        }),
    )
    .await;
    assert_eq!(r.status(), 304);
    assert!(r.body().is_empty());

    let r = handle(&app, event("apigw-v2-healthz.json")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(&r), json!({"status": "ok"}));

    let path = |method: &str, path: &str| {
        edited("apigw-v2-healthz.json", |v| {
            v["rawPath"] = json!(path);
            v["requestContext"]["http"]["path"] = json!(path);
            v["requestContext"]["http"]["method"] = json!(method);
        })
    };
    let r = handle(&app, path("GET", "/nope")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_body(&r)["error"], "not_found");
    let r = handle(&app, path("GET", "/record")).await;
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), Some("POST, OPTIONS"));
    let r = handle(&app, path("HEAD", "/healthz")).await;
    assert_eq!(r.status(), 200);
    assert!(r.body().is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_refused_and_counted() {
    let app = app(&[("PUM_ALLOWED_ORIGINS", "https://other.example")]);
    let r = handle(&app, event("function-url-record-beacon.json")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(json_body(&r)["error"], "origin_not_allowed");
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let totals = totals(app.store()).await;
    assert_eq!(
        counter(
            &totals,
            "pum_pushes_rejected_total",
            &[("reason", "origin_not_allowed")]
        ),
        1_000_000
    );
    assert_eq!(counter(&totals, "demo_feature_usage_total", SEARCH), 0);
}

#[tokio::test]
async fn country_comes_from_cloudfront_viewer_country() {
    let allowlist = r#"{"allowedMetrics": [{"name": "shop_checkout_total", "help": "Checkouts.",
        "type": "counter", "labels": [{"name": "step", "allowedValues": ["paid"]},
        {"name": "country", "source": "country", "allowedValues": ["DE", "FR"], "otherValue": "other"}]}]}"#;
    let app = app(&[("PUM_ALLOWLIST_JSON", allowlist)]);
    let r = handle(&app, event("apigw-v2-record-cloudfront.json")).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    // Without the header (a Function URL called directly), the label takes its otherValue.
    let r = handle(
        &app,
        edited("apigw-v2-record-cloudfront.json", |v| {
            v["headers"]
                .as_object_mut()
                .expect("headers")
                .remove("cloudfront-viewer-country");
        }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let totals = totals(app.store()).await;
    for country in ["DE", "other"] {
        assert_eq!(
            counter(
                &totals,
                "shop_checkout_total",
                &[("step", "paid"), ("country", country)]
            ),
            1_000_000,
            "{country}"
        );
    }
}

#[tokio::test]
async fn the_bad_push_corpus_gets_the_cores_answers() {
    let app = app(&[]);
    let cases = bad_pushes();
    assert!(cases.len() > 30);
    for (i, case) in cases.iter().enumerate() {
        // Alternate the two event shapes.
        let fixture = if i % 2 == 0 {
            "function-url-record-beacon.json"
        } else {
            "apigw-v2-record-cloudfront.json"
        };
        let r = handle(
            &app,
            event_with_body(fixture, case.content_type.as_deref(), &case.body),
        )
        .await;
        let body = std::str::from_utf8(r.body().as_ref()).expect("a text answer");
        if let Err(e) = case.check(r.status().as_u16(), body) {
            panic!("{e}");
        }
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some("*"),
            "{}",
            case.name
        );
    }
}

/// A store that is down.
struct Down;

impl Read for Down {
    async fn read(&self) -> Result<Stored, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

impl Store for Down {
    async fn merge(&self, _: &Push<'_>) -> Result<Merged, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn describe(&self, _: &Allowlist) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

#[tokio::test]
async fn a_store_failure_is_a_503_with_retry_after_and_cors() {
    let app = app_over(&[], Down);
    let r = handle(&app, event("function-url-record-beacon.json")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    let body = json_body(&r);
    assert_eq!(body["error"], "store_unavailable");
    assert!(
        !body.to_string().contains("connection refused"),
        "no internals leak"
    );
}

#[test]
fn bad_settings_fail_the_cold_start_naming_the_variable_metric_and_field() {
    let err = settings(vars(&[(
        "PUM_ALLOWLIST_JSON",
        r#"{"allowedMetrics": [{"name": "x_total", "help": "h", "type": "gauge", "labels": []}]}"#,
    )]))
    .expect_err("a bad type");
    for part in ["PUM_ALLOWLIST_JSON", "x_total", "type"] {
        assert!(err.contains(part), "{err}");
    }
    let err = settings(vars(&[(
        "PUM_ALLOWLIST_JSON",
        r#"{"allowedMetrics": [{"name": "x_total", "help": "h", "type": "counter", "maxValue": 1e300}]}"#,
    )]))
    .expect_err("a maxValue that could overflow a total");
    assert!(err.contains("x_total") && err.contains("maxValue"), "{err}");
    for (name, value) in [
        ("PUM_RATE_LIMIT", "fast"),
        ("PUM_RATE_LIMIT", "-1"),
        ("PUM_RATE_BURST", "0"),
        ("PUM_RATE_LIMIT_CLIENTS", "0"),
        ("PUM_BROWSER_PACK", "yes"),
    ] {
        let err = settings(vars(&[(name, value)])).expect_err("a bad setting");
        assert!(err.starts_with(name), "{err}");
    }
    let off = settings(vars(&[("PUM_BROWSER_PACK", "false")])).expect("settings");
    assert!(off.ingest.allowlist().get("browser_lcp_seconds").is_none());
    let on = settings(vars(&[])).expect("settings");
    assert!(on.ingest.allowlist().get("browser_lcp_seconds").is_some());
    assert_eq!(on.rate_limit, pum_shared::RateLimit::default());
}

#[tokio::test]
async fn a_push_that_would_overflow_a_total_is_refused_and_counted() {
    let store = MemoryStore::new();
    let mut seeded = Aggregate::new();
    seeded.add_counter(
        SeriesKey::new("demo_feature_usage_total", SEARCH),
        u128::MAX,
    );
    let list = Allowlist::example();
    let seed = Push {
        batch: None,
        now_ms: 0,
        delta: seeded,
        allowlist: &list,
    };
    store.merge(&seed).await.expect("seed");
    let app = app_over(&[], store);
    let body = br#"[{"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":1}]"#;
    let r = handle(
        &app,
        event_with_body("function-url-record-beacon.json", Some("text/plain"), body),
    )
    .await;
    assert_eq!(r.status(), 422);
    assert_eq!(json_body(&r)["error"], "total_overflow");
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    let totals = totals(app.store()).await;
    assert_eq!(
        counter(&totals, "demo_feature_usage_total", SEARCH),
        u128::MAX
    );
    assert_eq!(
        counter(
            &totals,
            "pum_pushes_rejected_total",
            &[("reason", "total_overflow")]
        ),
        1_000_000
    );
}

/// One token every 1000 s, two at once: a client gets two pushes in, then none for the test.
const LOW_LIMIT: &[(&str, &str)] = &[("PUM_RATE_LIMIT", "0.001"), ("PUM_RATE_BURST", "2")];

#[tokio::test]
async fn one_source_ip_is_rate_limited_with_retry_after_and_others_are_not() {
    let app = app(LOW_LIMIT);
    let beacon = "function-url-record-beacon.json";
    for _ in 0..2 {
        let r = handle(&app, event_from(beacon, "203.0.113.24")).await;
        assert_eq!(r.status(), 200);
    }
    let before = totals(app.store()).await;
    for _ in 0..3 {
        let r = handle(&app, event_from(beacon, "203.0.113.24")).await;
        assert_eq!(r.status(), 429);
        let body = json_body(&r);
        assert_eq!(body["error"], "rate_limited", "{body}");
        let retry: u32 = header(&r, "retry-after")
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in seconds");
        assert!((1..=1000).contains(&retry), "Retry-After {retry}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    }
    assert_eq!(
        totals(app.store()).await,
        before,
        "the refusals wrote nothing"
    );

    // Another address is not limited; its push carries the three refusals.
    let r = handle(&app, event_from(beacon, "198.51.100.9")).await;
    assert_eq!(r.status(), 200);
    let totals = totals(app.store()).await;
    for (metric, labels, want) in [
        ("pum_pushes_total", &[("result", "accepted")], 3),
        ("pum_pushes_total", &[("result", "rejected")], 3),
        (
            "pum_pushes_rejected_total",
            &[("reason", "rate_limited")],
            3,
        ),
        ("demo_feature_usage_total", &[("feature", "search")], 9),
    ] {
        assert_eq!(
            counter(&totals, metric, labels),
            want * 1_000_000,
            "{metric}"
        );
    }

    // An IPv6 client is its /64: another address in it shares its bucket, the next /64 does not.
    for (ip, status) in [
        ("2001:db8:aa:1::1", 200),
        ("2001:db8:aa:1::2", 200),
        ("2001:db8:aa:1:ffff::3", 429),
        ("2001:db8:aa:2::1", 200),
    ] {
        let r = handle(&app, event_from(beacon, ip)).await;
        assert_eq!(r.status(), status, "{ip}");
    }
}

#[tokio::test]
async fn rate_limiting_is_off_at_zero() {
    let off = app(&[("PUM_RATE_LIMIT", "0")]);
    for _ in 0..600 {
        let r = handle(&off, event("function-url-record-beacon.json")).await;
        assert_eq!(r.status(), 200);
    }
}

/// A store that fails while `down` is set.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(())
    }
}

impl Read for Flaky {
    async fn read(&self) -> Result<Stored, StoreError> {
        self.inner.read().await
    }
}

impl Store for Flaky {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        self.check()?;
        self.inner.merge(push).await
    }
    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        self.check()?;
        self.inner.describe(allowlist).await
    }
}

#[tokio::test]
async fn refusals_carried_by_a_push_the_store_failed_are_counted_by_the_next() {
    let app = app_over(LOW_LIMIT, Flaky::default());
    let beacon = "function-url-record-beacon.json";
    for status in [200, 200, 429] {
        let r = handle(&app, event_from(beacon, "203.0.113.24")).await;
        assert_eq!(r.status(), status);
    }
    app.store()
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = handle(&app, event_from(beacon, "198.51.100.9")).await;
    assert_eq!(r.status(), 503);
    app.store()
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let r = handle(&app, event_from(beacon, "198.51.100.10")).await;
    assert_eq!(r.status(), 200);
    let totals = totals(app.store()).await;
    assert_eq!(
        counter(
            &totals,
            "pum_pushes_rejected_total",
            &[("reason", "rate_limited")]
        ),
        1_000_000
    );
    assert_eq!(
        counter(&totals, "pum_pushes_total", &[("result", "accepted")]),
        3_000_000
    );
}
