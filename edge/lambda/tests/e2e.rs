//! End to end through `cargo lambda watch` (a local Lambda runtime that turns
//! `/lambda-url/pum-lambda/...` into Function URL events), against a local DynamoDB-compatible
//! server, read back by the real `pum-collector serve --source dynamodb`. Everything on
//! 127.0.0.1, free ports, started and stopped here.
//!
//! Scenarios run in order against one deployment and report `N passed, N failed`:
//! seed-format pushes appear exactly on /metrics; hundreds of concurrent pushes are all counted;
//! the bad-push corpus gets standalone's answers; a store that stops answering gives a 503 with
//! `Retry-After` and, once it is back, the retried push counts once. Then a second deployment
//! with a low rate limit: one client gets 429 with `Retry-After` while another is accepted, and
//! the refusals are counted without a write of their own.
//!
//! `cargo lambda watch` gives every Function URL request the source address 127.0.0.1, so the
//! rate limit scenario sends its second client through the Lambda Invoke API that watch also
//! serves (`/2015-03-31/functions/pum-lambda/invocations`), with a recorded Function URL event
//! whose `requestContext.http.sourceIp` names that client: what the URL would hand the function
//! for a request from there.
//!
//! `cargo test -p pum-lambda --test e2e -- --bench N` instead pushes `fixtures/beacon.json` N
//! times, one at a time, and prints latency per push and DynamoDB writes per push.
//!
//! Needs `cargo lambda` (pip install cargo-lambda), python3 with `moto[server]`, and a built
//! `pum-collector` (`PUM_COLLECTOR_BIN`, default `target/debug/pum-collector`). `edge/lambda/test.sh`
//! provides all three.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pum_dynamodb::testing::{LocalDynamo, REGION};
use pum_shared::corpus::{bad_pushes, demo_batch as batch, demo_totals as expected};
use serde_json::{Value, json};

const BEACON: &str = include_str!("../../../fixtures/beacon.json");
/// A recorded Function URL push event (tests/handler.rs feeds it too).
const FUNCTION_URL_EVENT: &str = include_str!("data/function-url-record-beacon.json");
/// The rate limit of the second deployment: one token every 1000 s, three at once, so that a
/// client has three pushes and then none for as long as the test could take.
const LOW_RATE_LIMIT: &str = "PUM_RATE_LIMIT=0.001\nPUM_RATE_BURST=3\n";
const FUNCTION: &str = "pum-lambda";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // `cargo test -- --list` asks which tests exist.
        println!("e2e: test");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(n) = args
        .iter()
        .position(|a| a == "--bench")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok())
    {
        runtime.block_on(bench(n));
        return;
    }
    let failed = runtime.block_on(run_all());
    std::process::exit(i32::from(failed > 0));
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the function's and cargo lambda watch's own output goes.
fn watch_log() -> PathBuf {
    workspace_root().join("target/pum-lambda-watch.log")
}

/// The local deployment: table, Lambda under `cargo lambda watch`, collector.
struct Deployment {
    dynamo: LocalDynamo,
    table: String,
    url: String,
    /// The Lambda Invoke API of the function, as `cargo lambda watch` serves it.
    invoke_url: String,
    metrics: String,
    _watch: Proc,
    _collector: Proc,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Deployment {
    async fn start() -> Deployment {
        Deployment::start_with("", 4).await
    }

    /// With extra lines for the function's environment file and at most `concurrency` function
    /// instances (execution environments).
    async fn start_with(env: &str, concurrency: usize) -> Deployment {
        let dynamo = LocalDynamo::start();
        let store = dynamo.fresh_store("pum-e2e", |_| {}).await;
        let table = store.settings().table.clone();
        let batch_table = store.settings().batch_table.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        // An env file rather than --env-var, which splits values on commas.
        let env_file = dir.path().join("lambda.env");
        std::fs::write(
            &env_file,
            format!(
                "PUM_TABLE={table}\nPUM_BATCH_TABLE={batch_table}\nPUM_SHARDS=4\n\
                 PUM_DYNAMODB_ENDPOINT={}\nAWS_REGION={REGION}\nAWS_ACCESS_KEY_ID=test\n\
                 AWS_SECRET_ACCESS_KEY=test\nAWS_EC2_METADATA_DISABLED=true\nPUM_LOG=warn\n{env}",
                dynamo.endpoint()
            ),
        )
        .expect("env file");
        let port = free_port();
        let watch = Command::new("cargo")
            .current_dir(workspace_root())
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "--disable-cors",
                "--quiet",
            ])
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            .args(["--concurrency", &concurrency.to_string(), "--timeout", "30"])
            .args(["-p", FUNCTION, "--bin", FUNCTION, "--env-file"])
            .arg(&env_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(watch_log()).expect("log file"))
            .spawn()
            .expect("cargo lambda watch starts (pip install cargo-lambda)");
        let watch = Proc(watch);
        let url = format!("http://127.0.0.1:{port}/lambda-url/{FUNCTION}");
        let invoke_url =
            format!("http://127.0.0.1:{port}/2015-03-31/functions/{FUNCTION}/invocations");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            if let Ok(r) = client.get(format!("{url}/healthz")).send().await
                && r.status() == 200
            {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(watch_log()).unwrap_or_default();
                panic!("cargo lambda watch did not serve the function:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let collector_bin = std::env::var("PUM_COLLECTOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target/debug/pum-collector"));
        let mut collector = Command::new(&collector_bin)
            .args(["serve", "--source", "dynamodb", "--table", &table])
            .args(["--region", REGION, "--endpoint-url", &dynamo.endpoint()])
            .args(["--metrics-listen", "127.0.0.1:0", "--refresh", "200ms"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("PUM_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", collector_bin.display()));
        let stdout = collector.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let metrics = loop {
            let line = lines
                .next()
                .expect("the collector announces its address")
                .expect("line");
            if let Some(rest) = line.strip_prefix("pum: metrics listening on ") {
                break rest.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Deployment {
            dynamo,
            table,
            url,
            invoke_url,
            metrics,
            _watch: watch,
            _collector: Proc(collector),
            _dir: dir,
            client,
        }
    }

    async fn push(&self, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Answer {
        let mut req = self
            .client
            .post(format!("{}/record", self.url))
            .header("origin", "https://shop.example")
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("push answered");
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after");
        let cors = header("access-control-allow-origin");
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            body,
            retry_after,
            cors,
        }
    }

    /// Invokes the function with the recorded Function URL push event, as sent from
    /// `source_ip`, through the Invoke API; returns the function's status and JSON body.
    async fn invoke_push_from(&self, source_ip: &str, body: &Value) -> (u16, Value) {
        let mut event: Value = serde_json::from_str(FUNCTION_URL_EVENT).expect("event");
        event["requestContext"]["http"]["sourceIp"] = json!(source_ip);
        event["headers"]["x-forwarded-for"] = json!(source_ip);
        event["headers"]["content-length"] = json!(body.to_string().len().to_string());
        event["body"] = json!(body.to_string());
        let resp = self
            .client
            .post(&self.invoke_url)
            .json(&event)
            .send()
            .await
            .expect("invocation answered");
        assert_eq!(resp.status(), 200, "the invocation itself succeeds");
        let out: Value = resp.json().await.expect("a Lambda HTTP response");
        let status = out["statusCode"].as_u64().expect("statusCode") as u16;
        let body = out["body"]
            .as_str()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (status, body)
    }

    async fn scrape(&self) -> BTreeMap<String, f64> {
        let text = self
            .client
            .get(&self.metrics)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        parse(&text)
    }

    /// Waits until the collector has read `pushes` recorded pushes in all, then scrapes.
    async fn scrape_after(&self, pushes: f64) -> BTreeMap<String, f64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.scrape().await;
            let seen: f64 = s
                .iter()
                .filter(|(k, _)| k.starts_with("pum_pushes_total{"))
                .map(|(_, v)| v)
                .sum();
            if seen >= pushes || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
    cors: Option<String>,
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = line.rfind(' ').expect("a sample line has a value");
        let value: f64 = line[split + 1..]
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        out.insert(line[..split].to_owned(), value);
    }
    out
}

fn get(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

fn pushes(s: &BTreeMap<String, f64>) -> f64 {
    s.iter()
        .filter(|(k, _)| k.starts_with("pum_pushes_total{"))
        .map(|(_, v)| v)
        .sum()
}

/// Checks that every series of `expected` moved by exactly its value between two scrapes.
fn assert_deltas(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    expected: &BTreeMap<String, f64>,
) {
    for (series, want) in expected {
        let got = get(after, series) - get(before, series);
        assert!(
            (got - want).abs() < 1e-6 * want.abs().max(1.0),
            "{series}: moved by {got}, want {want}"
        );
    }
}

async fn seed_format_pushes_appear_exactly(d: &Deployment) {
    let before = d.scrape().await;
    let batches: Vec<Value> = (0..20).map(batch).collect();
    for (i, b) in batches.iter().enumerate() {
        let ct = if i % 2 == 0 {
            "text/plain;charset=UTF-8"
        } else {
            "application/json"
        };
        let a = d.push(Some(ct), b.to_string()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body, json!({"accepted": 3, "rejected": []}));
        assert_eq!(a.cors.as_deref(), Some("*"));
    }
    let after = d.scrape_after(pushes(&before) + 20.0).await;
    let mut want = expected(&batches);
    want.insert("pum_pushes_total{result=\"accepted\"}".into(), 20.0);
    want.insert("pum_samples_accepted_total".into(), 60.0);
    want.insert("metrics_aggregator_record_total".into(), 20.0);
    assert_deltas(&before, &after, &want);
    assert!(get(&after, "pum_store_read_seconds_count") > 0.0);
}

async fn concurrent_pushes_are_all_counted(d: &Arc<Deployment>) {
    const PUSHES: usize = 300;
    const IN_FLIGHT: usize = 32;
    let before = d.scrape().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PUSHES {
        let d = Arc::clone(d);
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let a = d.push(Some("text/plain"), batch(i).to_string()).await;
            assert_eq!(a.status, 200, "push {i}: {}", a.body);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("push task");
    }
    let after = d.scrape_after(pushes(&before) + PUSHES as f64).await;
    let batches: Vec<Value> = (0..PUSHES).map(batch).collect();
    let mut want = expected(&batches);
    want.insert(
        "pum_pushes_total{result=\"accepted\"}".into(),
        PUSHES as f64,
    );
    assert_deltas(&before, &after, &want);
}

async fn bad_pushes_get_the_standalone_answers(d: &Deployment) {
    let before = d.scrape().await;
    let cases = bad_pushes();
    let mut rejected: BTreeMap<String, f64> = BTreeMap::new();
    let mut refused: BTreeMap<String, f64> = BTreeMap::new();
    let mut sent = 0usize;
    for case in &cases {
        if std::str::from_utf8(&case.body).is_err() {
            // cargo lambda watch answers a body that is not UTF-8 with its own 500 before the
            // function runs. A Function URL passes such a body base64-encoded; tests/handler.rs
            // feeds exactly that event and checks the answer.
            println!(
                "e2e: {:?} not sent through cargo lambda watch (see tests/handler.rs)",
                case.name
            );
            continue;
        }
        sent += 1;
        let a = d
            .push(case.content_type.as_deref(), case.body.clone())
            .await;
        assert_eq!(a.status, case.status, "{}: {}", case.name, a.body);
        assert_eq!(
            a.body.get("error").and_then(Value::as_str),
            case.error.as_deref(),
            "{}: {}",
            case.name,
            a.body
        );
        let reasons: Vec<&str> = a.body["rejected"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["reason"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(reasons, case.rejected, "{}: {}", case.name, a.body);
        for r in &case.rejected {
            *rejected.entry(r.clone()).or_default() += 1.0;
        }
        if let Some(e) = &case.error {
            *refused.entry(e.clone()).or_default() += 1.0;
        }
    }
    let after = d.scrape_after(pushes(&before) + sent as f64).await;
    let mut want = BTreeMap::new();
    for (reason, n) in rejected {
        want.insert(
            format!("pum_samples_rejected_total{{reason=\"{reason}\"}}"),
            n,
        );
    }
    for (reason, n) in refused {
        want.insert(
            format!("pum_pushes_rejected_total{{reason=\"{reason}\"}}"),
            n,
        );
    }
    // The one mixed case recorded one valid counter and one valid observation.
    want.insert("pum_pushes_total{result=\"partial\"}".into(), 1.0);
    assert_deltas(&before, &after, &want);
}

async fn a_store_outage_is_a_503_and_the_retry_counts_once(d: &mut Deployment) {
    let before = d.scrape().await;
    let body = batch(7).to_string();
    d.dynamo.kill();
    let a = d.push(Some("text/plain"), body.clone()).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body["error"], "store_unavailable");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(a.cors.as_deref(), Some("*"));
    // The collector counts its failed reads meanwhile and keeps serving the last totals.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&d.scrape().await, "pum_store_errors_total{op=\"read\"}") == 0.0 {
        assert!(Instant::now() < deadline, "read errors are counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.dynamo.restart();
    // The client retries after Retry-After.
    let a = d.push(Some("text/plain"), body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let after = d.scrape_after(pushes(&before) + 1.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_more = d.scrape().await;
    let mut want = expected(&[batch(7)]);
    want.insert("pum_pushes_total{result=\"accepted\"}".into(), 1.0);
    assert_deltas(&before, &after, &want);
    assert_deltas(&before, &after_more, &want);
}

/// Under a low rate limit and one execution environment: the Function URL's client
/// (127.0.0.1) gets three pushes, then 429 with `Retry-After`, while another client is accepted;
/// accepted totals are exact, and the refusals are counted, carried by the next push stored,
/// without a DynamoDB write of their own.
async fn one_client_is_rate_limited_and_another_is_not(d: &Deployment) {
    let before = d.scrape().await;
    d.dynamo.reset_stats();
    let batches: Vec<Value> = (0..4).map(batch).collect();
    for b in &batches[..3] {
        let a = d.push(Some("text/plain"), b.to_string()).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    for _ in 0..2 {
        let a = d.push(Some("text/plain"), batch(99).to_string()).await;
        assert_eq!(a.status, 429, "{}", a.body);
        assert_eq!(a.body["error"], "rate_limited", "{}", a.body);
        let retry: u32 = a
            .retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=1000).contains(&retry), "Retry-After {retry}");
        assert_eq!(a.cors.as_deref(), Some("*"));
    }
    let (status, body) = d.invoke_push_from("198.51.100.7", &batches[3]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"accepted": 3, "rejected": []}));
    // 4 pushes stored, 2 refused: the refusals wrote nothing.
    assert_eq!(
        d.dynamo.stat("TransactWriteItems"),
        4,
        "{}",
        d.dynamo.stats()
    );
    let after = d.scrape_after(pushes(&before) + 6.0).await;
    let mut want = expected(&batches);
    want.insert("pum_pushes_total{result=\"accepted\"}".into(), 4.0);
    want.insert("pum_pushes_total{result=\"rejected\"}".into(), 2.0);
    want.insert(
        "pum_pushes_rejected_total{reason=\"rate_limited\"}".into(),
        2.0,
    );
    assert_deltas(&before, &after, &want);
}

async fn run_all() -> usize {
    let started = Instant::now();
    let mut d = Deployment::start().await;
    println!(
        "e2e: deployment up in {:.1}s (table {}, function {}, collector {})",
        started.elapsed().as_secs_f64(),
        d.table,
        d.url,
        d.metrics
    );
    let mut results: Vec<(&str, bool)> = Vec::new();
    macro_rules! scenario {
        ($name:literal, $fut:expr) => {{
            let t = Instant::now();
            let ok = tokio::spawn($fut).await.is_ok();
            println!(
                "test {} ... {} ({:.1}s)",
                $name,
                if ok { "ok" } else { "FAILED" },
                t.elapsed().as_secs_f64()
            );
            results.push(($name, ok));
        }};
    }
    let shared = Arc::new(d);
    {
        let s = Arc::clone(&shared);
        scenario!("seed_format_pushes_appear_exactly_on_metrics", async move {
            seed_format_pushes_appear_exactly(&s).await
        });
    }
    {
        let s = Arc::clone(&shared);
        scenario!(
            "hundreds_of_concurrent_pushes_are_all_counted",
            async move { concurrent_pushes_are_all_counted(&s).await }
        );
    }
    {
        let s = Arc::clone(&shared);
        scenario!("bad_push_corpus_gets_the_standalone_answers", async move {
            bad_pushes_get_the_standalone_answers(&s).await
        });
    }
    d = match Arc::try_unwrap(shared) {
        Ok(d) => d,
        Err(_) => panic!("scenarios hold no deployment"),
    };
    let t = Instant::now();
    let outage = {
        let handle = tokio::spawn(async move {
            a_store_outage_is_a_503_and_the_retry_counts_once(&mut d).await;
            d
        });
        handle.await
    };
    let ok = outage.is_ok();
    println!(
        "test store_outage_is_a_503_and_the_retried_push_counts_once ... {} ({:.1}s)",
        if ok { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    results.push(("store_outage", ok));
    if let Ok(d) = outage {
        drop(d);
    }

    let t = Instant::now();
    let limited = Deployment::start_with(LOW_RATE_LIMIT, 1).await;
    let ok =
        tokio::spawn(async move { one_client_is_rate_limited_and_another_is_not(&limited).await })
            .await
            .is_ok();
    println!(
        "test one_client_is_rate_limited_and_another_is_not ... {} ({:.1}s)",
        if ok { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    results.push(("rate_limit", ok));
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    if failed > 0 {
        println!("e2e: the function's log is in {}", watch_log().display());
    }
    println!();
    println!("e2e: {} passed, {failed} failed", results.len() - failed);
    failed
}

async fn bench(n: usize) {
    let d = Deployment::start().await;
    // Warm up (the first invocations start the function instances).
    for _ in 0..10 {
        let a = d.push(Some("text/plain;charset=UTF-8"), BEACON).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    d.dynamo.reset_stats();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let a = d.push(Some("text/plain;charset=UTF-8"), BEACON).await;
        latencies.push(t.elapsed());
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let transactions = d.dynamo.stat("TransactWriteItems");
    let items = d.dynamo.stat("TransactWriteItems.items");
    // Baselines in the same run: the same path without the store (GET /healthz through watch),
    // and the store without the path (the beacon's delta merged straight into the local server).
    let mut health = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = d
            .client
            .get(format!("{}/healthz", d.url))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status(), 200);
        health.push(t.elapsed());
    }
    let ingest = pum_shared::Ingest::new(
        pum_shared::Allowlist::compile(
            [("example", pum_shared::allowlist::EXAMPLE_ALLOWLIST)],
            true,
        )
        .expect("allowlist"),
        pum_shared::Limits::default(),
    );
    let delta = ingest.push(Some("text/plain"), BEACON.as_bytes()).delta;
    let direct = pum_dynamodb::DynamoStore::new(
        d.dynamo.client(),
        pum_dynamodb::Settings::new(d.table.clone(), REGION),
    );
    let mut merges = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        pum_shared::Store::merge(&direct, &format!("bench-{i}"), &delta)
            .await
            .expect("merge");
        merges.push(t.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let summary = |mut v: Vec<Duration>| {
        v.sort();
        let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
        format!(
            "mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms",
            mean,
            ms(v[v.len() / 2]),
            ms(v[(v.len() * 99 / 100).min(v.len() - 1)])
        )
    };
    let beacon: Value = serde_json::from_str(BEACON).expect("beacon parses");
    let metrics: std::collections::BTreeSet<&str> = beacon
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["metricName"].as_str())
        .collect();
    println!(
        "bench: {n} pushes of fixtures/beacon.json ({} bytes, {} samples, {} user metrics) one at a time through cargo lambda watch",
        BEACON.len(),
        beacon.as_array().map_or(0, Vec::len),
        metrics.len()
    );
    println!(
        "bench: latency per push through watch: {}",
        summary(latencies)
    );
    println!(
        "bench: baseline, GET /healthz through watch (no store): {}",
        summary(health)
    );
    println!(
        "bench: baseline, the beacon's merge straight into the local server (no watch): {}",
        summary(merges)
    );
    println!(
        "bench: DynamoDB requests per push: {:.2} TransactWriteItems, {:.2} item writes (counted at the server)",
        transactions as f64 / n as f64,
        items as f64 / n as f64
    );
    let store = pum_dynamodb::DynamoStore::new(
        d.dynamo.client(),
        pum_dynamodb::Settings::new(d.table.clone(), REGION),
    );
    let sizes = store.item_sizes().await.expect("item sizes");
    let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
    for (pk, size) in &sizes {
        let group = pk.splitn(3, '#').nth(2).unwrap_or("").to_owned();
        let max = per_group.entry(group).or_default();
        *max = (*max).max(*size);
    }
    let mut wcu = 2; // the marker: under 1 KB, transactional
    for (group, size) in &per_group {
        let units = 2 * size.div_ceil(1024);
        wcu += units;
        println!(
            "bench: item {group}: {size} bytes -> {units} write units per transactional write"
        );
    }
    println!(
        "bench: write units per push (items as now, marker included): {wcu}; per million pushes: {wcu} million"
    );
}
