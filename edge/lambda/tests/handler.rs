//! The handler fed recorded API Gateway v2 (HTTP API) and Function URL events (`tests/data/`),
//! over the in-memory store and a store that fails: routing, CORS, the country header, the
//! bad-push corpus and the store-failure answer. No AWS and no network.

use lambda_http::{Body, Request, Response};
use pum_lambda::{App, Config, handle};
use pum_shared::corpus::bad_pushes;
use pum_shared::store::MemoryStore;
use pum_shared::{Aggregate, SeriesKey, SeriesValue, Store, StoreError};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("fixture exists")
}

fn event(name: &str) -> Request {
    lambda_http::request::from_str(&fixture(name)).expect("the fixture is a valid event")
}

/// The fixture with its body and content type replaced (the rest of the event stays real).
fn event_with_body(name: &str, content_type: Option<&str>, body: &[u8]) -> Request {
    let mut v: Value = serde_json::from_str(&fixture(name)).expect("json");
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
    lambda_http::request::from_str(&v.to_string()).expect("valid event")
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

fn config(vars: &[(&str, &str)]) -> Config {
    Config::from_env(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("config compiles")
}

fn app(vars: &[(&str, &str)]) -> App<MemoryStore> {
    App::new(config(vars), MemoryStore::new())
}

fn header<'a>(r: &'a Response<Body>, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn json_body(r: &Response<Body>) -> Value {
    serde_json::from_slice(r.body().as_ref()).expect("a JSON answer")
}

fn counter(agg: &Aggregate, metric: &str, labels: &[(&str, &str)]) -> u128 {
    match agg.get(&SeriesKey::new(metric, labels)) {
        Some(SeriesValue::Counter { micros }) => *micros,
        _ => 0,
    }
}

#[tokio::test]
async fn function_url_beacon_is_recorded_with_cors() {
    let app = app(&[]);
    let r = handle(&app, event("function-url-record-beacon.json")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(&r), json!({"accepted": 3, "rejected": []}));
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let totals = app.store().snapshot().await.expect("snapshot");
    assert_eq!(
        counter(
            &totals,
            "demo_feature_usage_total",
            &[("feature", "search")]
        ),
        3_000_000
    );
    assert_eq!(
        totals
            .get(&SeriesKey::new(
                "demo_third_party_api_seconds",
                &[("api", "maps")]
            ))
            .and_then(SeriesValue::count),
        Some(2)
    );
    assert_eq!(
        totals
            .get(&SeriesKey::new("browser_lcp_seconds", &[]))
            .and_then(SeriesValue::count),
        Some(1)
    );
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
    let totals = app.store().snapshot().await.expect("snapshot");
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
    assert_eq!(r.body().as_ref(), pum_lambda::CLIENT_JS.as_bytes());

    let r = handle(&app, event("apigw-v2-healthz.json")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(&r), json!({"status": "ok"}));

    let mut v: Value = serde_json::from_str(&fixture("apigw-v2-healthz.json")).expect("json");
    v["rawPath"] = json!("/nope");
    v["requestContext"]["http"]["path"] = json!("/nope");
    let r = handle(
        &app,
        lambda_http::request::from_str(&v.to_string()).expect("event"),
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_body(&r)["error"], "not_found");

    v["rawPath"] = json!("/record");
    v["requestContext"]["http"]["path"] = json!("/record");
    let r = handle(
        &app,
        lambda_http::request::from_str(&v.to_string()).expect("event"),
    )
    .await;
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), Some("POST, OPTIONS"));
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_refused_and_counted() {
    let app = app(&[("PUM_ALLOWED_ORIGINS", "https://other.example")]);
    let r = handle(&app, event("function-url-record-beacon.json")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(json_body(&r)["error"], "origin_not_allowed");
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let totals = app.store().snapshot().await.expect("snapshot");
    assert_eq!(
        counter(
            &totals,
            "pum_pushes_rejected_total",
            &[("reason", "origin_not_allowed")]
        ),
        1_000_000
    );
    assert_eq!(
        counter(
            &totals,
            "demo_feature_usage_total",
            &[("feature", "search")]
        ),
        0
    );
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
    let mut v: Value =
        serde_json::from_str(&fixture("apigw-v2-record-cloudfront.json")).expect("json");
    v["headers"]
        .as_object_mut()
        .expect("headers")
        .remove("cloudfront-viewer-country");
    let r = handle(
        &app,
        lambda_http::request::from_str(&v.to_string()).expect("event"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let totals = app.store().snapshot().await.expect("snapshot");
    assert_eq!(
        counter(
            &totals,
            "shop_checkout_total",
            &[("step", "paid"), ("country", "DE")]
        ),
        1_000_000
    );
    assert_eq!(
        counter(
            &totals,
            "shop_checkout_total",
            &[("step", "paid"), ("country", "other")]
        ),
        1_000_000
    );
}

#[tokio::test]
async fn the_bad_push_corpus_gets_the_standalone_answers() {
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
        assert_eq!(r.status().as_u16(), case.status, "{}", case.name);
        let body = json_body(&r);
        assert_eq!(
            body.get("error").and_then(Value::as_str),
            case.error.as_deref(),
            "{}: {body}",
            case.name
        );
        let reasons: Vec<&str> = body["rejected"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["reason"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(reasons, case.rejected, "{}: {body}", case.name);
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some("*"),
            "{}",
            case.name
        );
    }
}

#[tokio::test]
async fn too_large_is_checked_before_the_content_type_as_in_standalone() {
    let app = app(&[]);
    let body = vec![b'x'; 64 * 1024 + 1];
    let r = handle(
        &app,
        event_with_body("function-url-record-beacon.json", Some("image/png"), &body),
    )
    .await;
    assert_eq!(r.status(), 413);
    assert_eq!(json_body(&r)["error"], "body_too_large");
}

/// A store that is down.
struct Down;

impl Store for Down {
    async fn merge(&self, _: &str, _: &Aggregate) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn snapshot(&self) -> Result<Aggregate, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

#[tokio::test]
async fn a_store_failure_is_a_503_with_retry_after_and_cors() {
    let app = App::new(config(&[]), Down);
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

/// The cold start's error with `allowlist` as `PUM_ALLOWLIST_JSON`.
fn refused(allowlist: &str) -> pum_shared::ConfigError {
    match Config::from_env(|name| (name == "PUM_ALLOWLIST_JSON").then(|| allowlist.to_owned())) {
        Err(pum_lambda::ConfigError::Allowlist(e)) => e,
        other => panic!("the allowlist is refused: {other:?}"),
    }
}

#[test]
fn a_bad_allowlist_names_the_variable_metric_and_field() {
    let err = refused(
        r#"{"allowedMetrics": [{"name": "x_total", "help": "h", "type": "gauge", "labels": []}]}"#,
    );
    let text = err.to_string();
    assert!(text.contains("PUM_ALLOWLIST_JSON"), "{text}");
    assert!(text.contains("x_total"), "{text}");
    assert!(text.contains("type"), "{text}");
}

#[test]
fn a_max_value_that_could_overflow_a_total_fails_the_cold_start() {
    let err = refused(
        r#"{"allowedMetrics": [{"name": "x_total", "help": "h", "type": "counter", "maxValue": 1e300}]}"#,
    );
    assert_eq!(err.source_name, "PUM_ALLOWLIST_JSON");
    assert_eq!(err.metric.as_deref(), Some("x_total"));
    assert_eq!(err.field.as_deref(), Some("maxValue"));
}

#[tokio::test]
async fn a_push_that_would_overflow_a_total_is_refused_and_counted() {
    let store = MemoryStore::new();
    let mut seeded = Aggregate::new();
    seeded.add_counter(
        SeriesKey::new("demo_feature_usage_total", &[("feature", "search")]),
        u128::MAX,
    );
    store.merge("seed", &seeded).await.expect("seed");
    let app = App::new(config(&[]), store);
    let body = br#"[{"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":1}]"#;
    let r = handle(
        &app,
        event_with_body("function-url-record-beacon.json", Some("text/plain"), body),
    )
    .await;
    assert_eq!(r.status(), 422);
    assert_eq!(json_body(&r)["error"], "total_overflow");
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    let totals = app.store().snapshot().await.expect("snapshot");
    let search = &[("feature", "search")];
    assert_eq!(
        counter(&totals, "demo_feature_usage_total", search),
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

/// A recorded event, from another client address.
fn event_from(name: &str, source_ip: &str) -> Request {
    let mut v: Value = serde_json::from_str(&fixture(name)).expect("json");
    v["requestContext"]["http"]["sourceIp"] = json!(source_ip);
    lambda_http::request::from_str(&v.to_string()).expect("valid event")
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
    let before = app.store().snapshot().await.expect("snapshot");
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
    // The refusals wrote nothing.
    assert_eq!(app.store().snapshot().await.expect("snapshot"), before);

    // Another address is not limited; its push carries the three refusals.
    let r = handle(&app, event_from(beacon, "198.51.100.9")).await;
    assert_eq!(r.status(), 200);
    let totals = app.store().snapshot().await.expect("snapshot");
    assert_eq!(
        counter(&totals, "pum_pushes_total", &[("result", "accepted")]),
        3_000_000
    );
    assert_eq!(
        counter(&totals, "pum_pushes_total", &[("result", "rejected")]),
        3_000_000
    );
    assert_eq!(
        counter(
            &totals,
            "pum_pushes_rejected_total",
            &[("reason", "rate_limited")]
        ),
        3_000_000
    );
    assert_eq!(
        counter(
            &totals,
            "demo_feature_usage_total",
            &[("feature", "search")]
        ),
        9_000_000
    );

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
async fn rate_limiting_is_off_at_zero_and_on_by_default_with_the_core_defaults() {
    let off = app(&[("PUM_RATE_LIMIT", "0")]);
    for _ in 0..600 {
        let r = handle(&off, event("function-url-record-beacon.json")).await;
        assert_eq!(r.status(), 200);
    }
    // Unset, the core's defaults apply (50 a second, 500 at once).
    assert_eq!(config(&[]).rate_limit, pum_shared::RateLimit::default());
    assert!(config(&[]).rate_limit.is_on());
}

/// A store that fails while `down` is set.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

impl Store for Flaky {
    async fn merge(&self, batch: &str, delta: &Aggregate) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        self.inner.merge(batch, delta).await
    }
    async fn snapshot(&self) -> Result<Aggregate, StoreError> {
        self.inner.snapshot().await
    }
}

#[tokio::test]
async fn refusals_carried_by_a_push_the_store_failed_are_counted_by_the_next() {
    let app = App::new(config(LOW_LIMIT), Flaky::default());
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
    let totals = app.store().snapshot().await.expect("snapshot");
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

#[test]
fn a_bad_rate_limit_names_its_variable() {
    for (name, value) in [
        ("PUM_RATE_LIMIT", "fast"),
        ("PUM_RATE_LIMIT", "-1"),
        ("PUM_RATE_BURST", "0"),
        ("PUM_RATE_LIMIT_CLIENTS", "0"),
    ] {
        let err = Config::from_env(|n| (n == name).then(|| value.to_owned()))
            .expect_err("a bad rate limit");
        let text = err.to_string();
        assert!(text.starts_with(name), "{text}");
    }
}
