//! HTTP tests of the real `pum-collector standalone` process, bound to port 0.

mod common;

use std::collections::BTreeMap;

use common::{Server, assert_totals};
use pum_shared::corpus::{
    bad_pushes, demo_batch as batch, demo_counter as counter, demo_histogram as histogram,
    demo_totals as expected_totals,
};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

async fn push(
    client: &reqwest::Client,
    server: &Server,
    body: &Value,
    content_type: &str,
) -> (u16, Value) {
    let resp = client
        .post(server.record_url())
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .expect("push");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("answers are JSON");
    (status, body)
}

#[tokio::test]
async fn seed_format_pushes_appear_exactly_in_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let c = client();
    let batches: Vec<Value> = (0..30).map(batch).collect();
    for (i, b) in batches.iter().enumerate() {
        // Beacons arrive as text/plain, fetch() pushes as application/json: both are accepted.
        let ct = if i % 2 == 0 {
            "text/plain;charset=UTF-8"
        } else {
            "application/json"
        };
        let (status, body) = push(&c, &server, b, ct).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"accepted": 3, "rejected": []}));
    }
    let scrape = server.scrape(&c).await;
    assert_totals(&scrape, &expected_totals(&batches));
    assert_eq!(scrape.get("metrics_aggregator_record_total"), 30.0);
    assert_eq!(scrape.get("pum_pushes_total{result=\"accepted\"}"), 30.0);
    assert_eq!(scrape.get("pum_samples_accepted_total"), 90.0);
    assert!(
        scrape
            .text
            .contains("# TYPE demo_third_party_api_seconds histogram")
    );
    assert!(
        scrape
            .text
            .contains("# TYPE demo_feature_usage_total counter")
    );
    assert!(scrape.get("pum_store_write_seconds_count") >= 30.0);
}

#[tokio::test]
async fn bad_input_gets_its_answer_and_loses_nothing_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let c = client();
    let good: Vec<Value> = (0..5).map(batch).collect();
    let mut expected = expected_totals(&good);
    for b in &good[..3] {
        assert_eq!(push(&c, &server, b, "application/json").await.0, 200);
    }
    let mut rejected_by_reason: BTreeMap<String, f64> = BTreeMap::new();
    let mut refused_by_reason: BTreeMap<String, f64> = BTreeMap::new();
    let cases = bad_pushes();
    for case in &cases {
        let mut req = c.post(server.record_url()).body(case.body.clone());
        if let Some(ct) = &case.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: answer is not JSON: {e}", case.name));
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(
            body.get("error").and_then(Value::as_str),
            case.error.as_deref(),
            "{}: {body}",
            case.name
        );
        let reasons: Vec<&str> = body["rejected"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["reason"].as_str().expect("reason"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(reasons, case.rejected, "{}: {body}", case.name);
        for r in &case.rejected {
            *rejected_by_reason.entry(r.clone()).or_default() += 1.0;
        }
        if let Some(e) = &case.error {
            *refused_by_reason.entry(e.clone()).or_default() += 1.0;
        }
    }
    for b in &good[3..] {
        assert_eq!(push(&c, &server, b, "text/plain").await.0, 200);
    }
    // The mixed case pushed one valid counter and one valid histogram of its own.
    for (k, v) in expected_totals(&[json!([counter("search", 1.0), histogram("maps", &[0.2])])]) {
        *expected.entry(k).or_default() += v;
    }
    let scrape = server.scrape(&c).await;
    assert_totals(&scrape, &expected);
    for (reason, n) in &rejected_by_reason {
        assert_eq!(
            scrape.get(&format!(
                "pum_samples_rejected_total{{reason=\"{reason}\"}}"
            )),
            *n,
            "{reason}"
        );
    }
    for (reason, n) in &refused_by_reason {
        assert_eq!(
            scrape.get(&format!("pum_pushes_rejected_total{{reason=\"{reason}\"}}")),
            *n,
            "{reason}"
        );
    }
    // The server is still healthy.
    let health = c
        .get(format!("{}/healthz", server.ingest))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_give_exact_totals() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 960 pushes from one address in a second or two: over the default rate limit.
    let server = Server::start(dir.path(), &["--rate-limit", "0"]);
    const CLIENTS: usize = 24;
    const PER_CLIENT: usize = 40;
    let url = server.record_url();
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for i in 0..PER_CLIENT {
                let b = batch(t * PER_CLIENT + i);
                let resp = c
                    .post(&url)
                    .header("content-type", "text/plain")
                    .body(b.to_string())
                    .send()
                    .await
                    .expect("push");
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let all: Vec<Value> = (0..CLIENTS * PER_CLIENT).map(batch).collect();
    let scrape = server.scrape(&client()).await;
    assert_totals(&scrape, &expected_totals(&all));
    assert_eq!(
        scrape.get("metrics_aggregator_record_total"),
        (CLIENTS * PER_CLIENT) as f64
    );
}

#[tokio::test]
async fn acknowledged_pushes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client();
    let first: Vec<Value> = (0..200).map(batch).collect();
    let server = Server::start(dir.path(), &["--sync-interval", "1h"]);
    for b in &first {
        assert_eq!(push(&c, &server, b, "application/json").await.0, 200);
    }
    // No fsync has run (the interval is an hour) and no shutdown code runs.
    server.kill();
    let server = Server::start(dir.path(), &[]);
    let scrape = server.scrape(&c).await;
    assert_totals(&scrape, &expected_totals(&first));
    // pum's own gauges are counted in the scrape that shows them, the first one included.
    assert!(scrape.get("pum_series") > 0.0, "{}", scrape.text);
    assert_eq!(
        scrape.get("pum_series"),
        server.scrape(&c).await.get("pum_series")
    );
    let second: Vec<Value> = (200..260).map(batch).collect();
    for b in &second {
        assert_eq!(push(&c, &server, b, "text/plain").await.0, 200);
    }
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    let server = Server::start(dir.path(), &[]);
    let all: Vec<Value> = (0..260).map(batch).collect();
    let scrape = server.scrape(&c).await;
    assert_totals(&scrape, &expected_totals(&all));
    assert_eq!(scrape.get("metrics_aggregator_record_total"), 260.0);
}

#[tokio::test]
async fn cors_origins_and_preflight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--allowed-origins", "https://shop.example"]);
    let c = client();
    let pre = c
        .request(reqwest::Method::OPTIONS, server.record_url())
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(
        pre.headers()["access-control-allow-methods"]
            .to_str()
            .expect("str")
            .contains("POST")
    );

    let ok = c
        .post(server.record_url())
        .header("origin", "https://shop.example")
        .header("content-type", "text/plain")
        .body(batch(0).to_string())
        .send()
        .await
        .expect("push");
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://shop.example"
    );

    let evil = c
        .post(server.record_url())
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(batch(1).to_string())
        .send()
        .await
        .expect("push");
    assert_eq!(evil.status(), 403);
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let body: Value = evil.json().await.expect("json");
    assert_eq!(body["error"], "origin_not_allowed");
    let scrape = server.scrape(&c).await;
    assert_totals(&scrape, &expected_totals(&[batch(0)]));
    assert_eq!(
        scrape.get("pum_pushes_rejected_total{reason=\"origin_not_allowed\"}"),
        1.0
    );
}

#[tokio::test]
async fn metrics_token_client_script_and_unknown_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--metrics-token", "s3cret"]);
    let c = client();
    let denied = c.get(&server.metrics).send().await.expect("scrape");
    assert_eq!(denied.status(), 401);
    let wrong = c
        .get(&server.metrics)
        .bearer_auth("nope")
        .send()
        .await
        .expect("scrape");
    assert_eq!(wrong.status(), 401);
    let ok = c
        .get(&server.metrics)
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("scrape");
    assert_eq!(ok.status(), 200);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .expect("str")
            .starts_with("text/plain")
    );

    let js = c
        .get(format!("{}/static/aggregatorClient.js", server.ingest))
        .send()
        .await
        .expect("client");
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .expect("str")
            .starts_with("text/javascript")
    );
    assert!(
        js.headers()["cache-control"]
            .to_str()
            .expect("str")
            .contains("max-age=604800")
    );
    let etag = js.headers()["etag"].clone();
    assert!(js.text().await.expect("text").len() > 1000);
    let cached = c
        .get(format!("{}/static/aggregatorClient.js", server.ingest))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(cached.status(), 304);

    let missing = c
        .get(format!("{}/nope", server.ingest))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.expect("json")["error"],
        "not_found"
    );
    let wrong_method = c.get(server.record_url()).send().await.expect("405");
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST, OPTIONS");
    let status = c
        .get(format!("{}/status", server.ingest))
        .send()
        .await
        .expect("status");
    assert_eq!(
        status.status(),
        200,
        "the original aggregator's /status still answers"
    );
}

#[test]
fn a_bad_config_stops_start_up_naming_file_metric_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("shop.json");
    std::fs::write(
        &cfg,
        r#"{"allowedMetrics":[{"name":"checkout_total","help":"h","type":"counter","labels":[{"name":"step","allowedValues":"all"}]}]}"#,
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pum-collector"))
        .args([
            "standalone",
            "--ingest-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shop.json"), "{err}");
    assert!(err.contains("\"checkout_total\""), "{err}");
    assert!(err.contains("\"labels[0].allowedValues\""), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is started on a bad config"
    );
}

#[test]
fn check_config_accepts_the_seed_format_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"allowedMetrics":[{"name":"a_total","help":"h","type":"counter","labels":[]}]}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"allowedMetrics":[{"name":"b_seconds","help":"h","type":"histogram","labels":[{"name":"x","allowedValues":["1"]}],"buckets":[1,2]}]}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pum-collector"))
        .args(["check-config", "--no-browser-pack", "--config"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("a_total") && text.contains("b_seconds"),
        "{text}"
    );
    assert!(!text.contains("browser_lcp_seconds"), "{text}");
}

/// Sends `body` to `/record` as a chunked request, one chunk per part, each written on its own
/// so that the server receives them as separate frames; returns the status line and the body.
async fn push_in_chunks(server: &Server, parts: &[&[u8]]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.ingest.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let head = format!(
        "POST /record HTTP/1.1\r\nhost: {addr}\r\ncontent-type: text/plain\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    for part in parts {
        let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
        chunk.extend_from_slice(part);
        chunk.extend_from_slice(b"\r\n");
        tcp.write_all(&chunk).await.expect("chunk");
        tcp.flush().await.expect("flush");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tcp.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("answer");
    let answer = String::from_utf8(answer).expect("utf-8 answer");
    let status = answer[9..12].parse().expect("status code");
    let (_, body) = answer.split_once("\r\n\r\n").expect("head and body");
    // The answer may itself be chunked; its JSON is the line that starts with `{`.
    let json = body
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {answer}"));
    (status, serde_json::from_str(json).expect("JSON answer"))
}

#[tokio::test]
async fn a_body_sent_in_chunks_is_read_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--max-body-bytes", "4096"]);
    let body = batch(0).to_string();
    let bytes = body.as_bytes();
    let (a, rest) = bytes.split_at(bytes.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let (status, answer) = push_in_chunks(&server, &[a, b, c]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rejected"], json!([]), "{answer}");
    let scrape = server.scrape(&client()).await;
    assert_totals(&scrape, &expected_totals(&[batch(0)]));
    // Over the limit in total, though every chunk is under it: refused whole, nothing counted.
    let big = vec![b' '; 3000];
    let (status, answer) = push_in_chunks(&server, &[&big, &big, bytes]).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "body_too_large");
    let scrape = server.scrape(&client()).await;
    assert_totals(&scrape, &expected_totals(&[batch(0)]));
}

/// Runs `pum-collector` with `args` to its end; returns its exit code and its stderr.
fn run_to_end(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pum-collector"))
        .args(args)
        .env("PUM_LOG", "warn")
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check-config` and `standalone` (on a fresh data directory) with `config` as the allowlist
/// and `extra` flags; returns what each printed on stderr, after checking that both exited 1 and
/// that standalone created nothing.
fn both_refuse(config: &str, extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("shop.json");
    std::fs::write(&cfg, config).expect("write");
    let data = dir.path().join("data");
    let extra: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
    let mut check: Vec<&std::ffi::OsStr> = vec!["check-config".as_ref(), "--config".as_ref()];
    check.push(cfg.as_os_str());
    check.extend(&extra);
    let (code, check_err) = run_to_end(&check);
    assert_eq!(code, Some(1), "check-config refuses: {check_err}");
    let mut start: Vec<&std::ffi::OsStr> = vec![
        "standalone".as_ref(),
        "--ingest-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--metrics-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ];
    start.extend(&extra);
    let (code, start_err) = run_to_end(&start);
    assert_eq!(code, Some(1), "standalone does not start: {start_err}");
    assert!(!data.exists(), "nothing is started on a refused config");
    (check_err, start_err)
}

#[test]
fn an_empty_label_value_is_refused_at_start_up_naming_file_metric_and_label() {
    let (check, start) = both_refuse(
        r#"{"allowedMetrics":[{"name":"x_total","help":"h","type":"counter","labels":[{"name":"v","allowedValues":["a",""]}]}]}"#,
        &[],
    );
    for err in [check, start] {
        assert!(err.contains("shop.json"), "{err}");
        assert!(err.contains("metric \"x_total\""), "{err}");
        assert!(
            err.contains("field \"labels[0].allowedValues[1]\": label \"v\""),
            "{err}"
        );
    }
    let (check, _) = both_refuse(
        r#"{"allowedMetrics":[{"name":"x_total","help":"h","type":"counter","labels":[{"name":"v","allowedValues":["a"],"otherValue":""}]}]}"#,
        &[],
    );
    assert!(
        check.contains("metric \"x_total\": field \"labels[0].otherValue\": label \"v\""),
        "{check}"
    );
}

#[test]
fn a_max_value_or_limit_that_could_overflow_a_total_is_refused_at_start_up() {
    let (check, start) = both_refuse(
        r#"{"allowedMetrics":[{"name":"bytes_total","help":"h","type":"counter","maxValue":1e300}]}"#,
        &[],
    );
    for err in [check, start] {
        assert!(
            err.contains(
                "shop.json: metric \"bytes_total\": field \"maxValue\": 1e300 could overflow"
            ),
            "{err}"
        );
    }
    let ok = r#"{"allowedMetrics":[{"name":"bytes_total","help":"h","type":"counter","maxValue":1e15}]}"#;
    let (check, start) = both_refuse(ok, &["--max-increment", "1e20"]);
    for err in [check, start] {
        assert!(
            err.contains("--max-increment: 1e20 could overflow"),
            "{err}"
        );
    }
    let (_, start) = both_refuse(ok, &["--max-observations", "1000000"]);
    assert!(start.contains("--max-observations: "), "{start}");
    // What is safe depends on the flags: 1e19 a sample is not with 200 samples a push, and is
    // with 10.
    let big = r#"{"allowedMetrics":[{"name":"bytes_total","help":"h","type":"counter","maxValue":1e19}]}"#;
    let (check, _) = both_refuse(big, &[]);
    assert!(
        check.contains("field \"maxValue\": 1e19 could overflow"),
        "{check}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("shop.json");
    std::fs::write(&cfg, big).expect("write");
    let args = [
        "check-config".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--max-samples".as_ref(),
        "10".as_ref(),
    ];
    let (code, err) = run_to_end(&args);
    assert_eq!(code, Some(0), "{err}");
}

/// The snapshot file of the embedded store, as a test writes it to seed totals.
fn seed_snapshot(data_dir: &std::path::Path, series: Value) {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let snapshot = json!({"generation": 0, "totals": {"v": 1, "series": series}});
    std::fs::write(data_dir.join("snapshot.json"), snapshot.to_string()).expect("seed");
}

/// The exact counter totals in a data directory's snapshot, by `metric{label}` as the snapshot
/// names them.
fn snapshot_counters(data_dir: &std::path::Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(data_dir.join("snapshot.json")).expect("snapshot");
    let snapshot: Value = serde_json::from_str(&text).expect("json");
    snapshot["totals"]["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| {
            let counter = s["counter"].as_str()?.to_owned();
            Some((format!("{}{}", s["metric"].as_str()?, s["labels"]), counter))
        })
        .collect()
}

#[tokio::test]
async fn a_push_that_would_overflow_a_total_is_refused_and_nothing_sticks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Half a unit below the most a counter holds, in millionths.
    let seeded = u128::MAX - 500_000;
    seed_snapshot(
        &data,
        json!([{"metric": "demo_feature_usage_total", "labels": {"feature": "search"}, "counter": seeded.to_string()}]),
    );
    let c = client();
    let server = Server::start(&data, &[]);
    let search = "demo_feature_usage_total{feature=\"search\"}";
    let share = "demo_feature_usage_total{feature=\"share\"}";
    let refused = "pum_pushes_rejected_total{reason=\"total_overflow\"}";
    let before = server.scrape(&c).await;
    assert!(before.get(search) > 3.4e32, "{}", before.text);

    let (status, body) = push(&c, &server, &json!([counter("search", 1.0)]), "text/plain").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "total_overflow", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("demo_feature_usage_total")),
        "{body}"
    );
    // A push with another series too is refused whole: nothing of it is recorded.
    let both = json!([counter("share", 1.0), counter("search", 0.6)]);
    let (status, body) = push(&c, &server, &both, "application/json").await;
    assert_eq!((status, &body["error"]), (422, &json!("total_overflow")));
    // Another series, and what still fits of this one, are taken.
    let (status, body) = push(&c, &server, &json!([counter("share", 1.0)]), "text/plain").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = push(&c, &server, &json!([counter("search", 0.4)]), "text/plain").await;
    assert_eq!(status, 200, "{body}");

    let scrape = server.scrape(&c).await;
    assert_eq!(scrape.get(search), before.get(search));
    assert_eq!(scrape.get(share), 1.0);
    assert_eq!(scrape.get(refused), 2.0, "{}", scrape.text);
    assert_eq!(scrape.get("pum_pushes_total{result=\"rejected\"}"), 2.0);
    assert_eq!(scrape.get("pum_store_errors_total{op=\"write\"}"), 0.0);

    // The log replays to the same totals (no shutdown code runs), then a clean stop writes them
    // exactly into the snapshot.
    server.kill();
    let server = Server::start(&data, &[]);
    let replayed = server.scrape(&c).await;
    for series in [search, share, refused] {
        assert_eq!(replayed.get(series), scrape.get(series), "{series}");
    }
    assert!(server.terminate().success());
    let exact = snapshot_counters(&data);
    assert_eq!(
        exact[r#"demo_feature_usage_total{"feature":"search"}"#],
        (seeded + 400_000).to_string()
    );
    assert_eq!(
        exact[r#"demo_feature_usage_total{"feature":"share"}"#],
        "1000000"
    );
    assert_eq!(
        exact[r#"pum_pushes_rejected_total{"reason":"total_overflow"}"#],
        "2000000"
    );
}
