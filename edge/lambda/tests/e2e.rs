//! End to end through `cargo lambda watch` (a local Lambda runtime that turns
//! `/lambda-url/pum-lambda/...` into Function URL events), against DynamoDB Local, read back by
//! the real `pum-collector serve --source dynamodb`, given no `--config`, and through the store's
//! read port. Everything on 127.0.0.1, free ports, started and stopped here.
//!
//! Scenarios run in order and report `N passed, N failed`. On a deployment with the settings
//! every ingest is checked with (the example allowlist, any origin, no rate limit):
//!
//! - the end-to-end suite every ingest passes (`pum-e2e`): every route and the bad-push corpus
//!   answered as the core answers, concurrent pushes counted exactly on `/metrics`, a batch
//!   (`?batch=ID`) sent twice in sequence and eight times at once counted once, a bad batch id
//!   answered 400 `invalid_batch_id`; and a batch sent again after the function was killed and
//!   started again (a new execution environment) counted once;
//! - a store that stops answering gives a 503 with `Retry-After`; once it is back (restarted
//!   from its files), the client's retry of that batch, and a batch applied before the kill, sent
//!   again, each count once.
//!
//! Then a second deployment with a custom `PUM_ALLOWLIST_JSON` and a low rate limit: the
//! allowlist is stored in the table and the collector renders the user's metric from it; one
//! client gets 429 with `Retry-After` while another is accepted, and the refusals are counted
//! without a write of their own.
//!
//! `cargo lambda watch` answers a body that is not UTF-8 with its own 500 before the function
//! runs (a Function URL passes such a body base64-encoded; `tests/handler.rs` feeds exactly that
//! event), so those requests of the suite's route table are not sent here. It also gives every
//! Function URL request the source address 127.0.0.1, so the rate limit scenario sends its second
//! client through the Lambda Invoke API that watch also serves
//! (`/2015-03-31/functions/pum-lambda/invocations`), with a recorded Function URL event whose
//! `requestContext.http.sourceIp` names that client: what the URL would hand the function for a
//! request from there.
//!
//! `cargo test -p pum-lambda --test e2e -- --bench N` instead pushes `fixtures/beacon.json` N
//! times, one at a time, each as a new batch, and prints latency, DynamoDB requests and write
//! units per push.
//!
//! Needs `cargo lambda` (pip install cargo-lambda), DynamoDB Local (Java 17, `npm ci` in
//! `stores/dynamodb/testing`), and a built `pum-collector` (`PUM_COLLECTOR_BIN`, default
//! `target/debug/pum-collector`). `edge/lambda/test.sh` provides all three.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use pum_dynamodb::testing::{FoldedStore, LocalDynamo, REGION};
use pum_dynamodb::write_units;
use pum_e2e::{Target, series_of};
use pum_shared::allowlist::EXAMPLE_ALLOWLIST;
use pum_shared::corpus::{demo_batch as batch, demo_totals as expected};
use pum_shared::{Allowlist, Read};
use serde_json::{Value, json};

const BEACON: &str = include_str!("../../../fixtures/beacon.json");
/// A recorded Function URL push event (tests/handler.rs feeds it too).
const FUNCTION_URL_EVENT: &str = include_str!("data/function-url-record-beacon.json");
/// The user's own metric of the second deployment.
const CUSTOM: &str = r#"{"allowedMetrics":[{"name":"shop_checkout_total","help":"Checkouts by step.","type":"counter","labels":[{"name":"step","allowedValues":["cart","paid"]}]}]}"#;
const FUNCTION: &str = "pum-lambda";
/// How long a push may take to show on the collector's `/metrics` (it reads every 200 ms).
const SETTLE: Duration = Duration::from_secs(15);

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
        RELEASE.store(true, Ordering::Relaxed);
        runtime.block_on(bench(n));
        return;
    }
    let failed = runtime.block_on(run_all());
    std::process::exit(i32::from(failed > 0));
}

/// Whether `cargo lambda watch` builds the function optimised (the benchmark's CPU figures).
static RELEASE: AtomicBool = AtomicBool::new(false);

/// How often the stand-in for the event source mapping folds the log's stream.
const FOLD_EVERY: Duration = Duration::from_millis(500);

/// The fold, run every [`FOLD_EVERY`] until dropped.
struct FoldLoop(tokio::task::JoinHandle<()>);

impl FoldLoop {
    fn start(store: FoldedStore) -> FoldLoop {
        FoldLoop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLD_EVERY).await;
                if let Err(e) = store.fold_now().await {
                    eprintln!("e2e: the fold failed (retried): {e}");
                }
            }
        }))
    }
}

impl Drop for FoldLoop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

/// A batch id for the `n`th batch of a scenario.
fn batch_id(scenario: &str, n: usize) -> String {
    format!("e2e-{scenario}-{n:08}")
}

/// The local deployment: tables, the Lambda under `cargo lambda watch`, the fold (driven from
/// the log table's stream by a local poller every [`FOLD_EVERY`], standing in for Lambda's event
/// source mapping and its batching window), and a reader of the tables.
struct Deployment {
    dynamo: LocalDynamo,
    /// The tables, read as the collector reads them (strongly consistent here), and the fold.
    reader: FoldedStore,
    /// The poller folding every [`FOLD_EVERY`]; the benchmark stops it to fold when it chooses.
    fold: Option<FoldLoop>,
    env_file: PathBuf,
    concurrency: usize,
    function: Function,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

/// The function under `cargo lambda watch`.
struct Function {
    url: String,
    /// The Lambda Invoke API of the function, as `cargo lambda watch` serves it.
    invoke_url: String,
    _watch: Proc,
}

impl Function {
    /// Starts `cargo lambda watch` with `env_file` and at most `concurrency` execution
    /// environments; returns once the function answers.
    async fn start(
        env_file: &std::path::Path,
        concurrency: usize,
        client: &reqwest::Client,
    ) -> Self {
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
            .args(["-p", FUNCTION, "--bin", FUNCTION])
            .args(RELEASE.load(Ordering::Relaxed).then_some("--release"))
            .arg("--env-file")
            .arg(env_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(watch_log()).expect("log file"))
            .spawn()
            .expect("cargo lambda watch starts (pip install cargo-lambda)");
        let watch = Proc(watch);
        let url = format!("http://127.0.0.1:{port}/lambda-url/{FUNCTION}");
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
        Function {
            url,
            invoke_url: format!(
                "http://127.0.0.1:{port}/2015-03-31/functions/{FUNCTION}/invocations"
            ),
            _watch: watch,
        }
    }
}

impl Deployment {
    /// With extra lines for the function's environment file and at most `concurrency` function
    /// instances (execution environments).
    async fn start(env: &str, concurrency: usize) -> Deployment {
        let dynamo = LocalDynamo::start();
        let reader = dynamo.fresh_store("pum-e2e", |s| s.shards = 1).await;
        let reader = FoldedStore::new(&dynamo, reader).await;
        let fold = FoldLoop::start(reader.clone());
        let settings = reader.store.settings();
        let dir = tempfile::tempdir().expect("tempdir");
        // An env file rather than --env-var, which splits values on commas.
        let env_file = dir.path().join("lambda.env");
        std::fs::write(
            &env_file,
            format!(
                "PUM_TABLE={}\nPUM_LOG_TABLE={}\n\
                 PUM_DYNAMODB_ENDPOINT={}\nAWS_REGION={REGION}\nAWS_ACCESS_KEY_ID=test\n\
                 AWS_SECRET_ACCESS_KEY=test\nAWS_EC2_METADATA_DISABLED=true\nPUM_LOG=warn\n{env}",
                settings.table,
                settings.log_table,
                dynamo.endpoint()
            ),
        )
        .expect("env file");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let function = Function::start(&env_file, concurrency, &client).await;
        Deployment {
            dynamo,
            reader,
            fold: Some(fold),
            env_file,
            concurrency,
            function,
            _dir: dir,
            client,
        }
    }

    /// Kills `cargo lambda watch` and its function, and starts them again: a new execution
    /// environment, with nothing of the last one's memory.
    async fn restart_function(&mut self) {
        let old = std::mem::replace(
            &mut self.function,
            Function::start(&self.env_file, self.concurrency, &self.client).await,
        );
        drop(old);
    }

    /// The deployment as the end-to-end suite sees it, with `/metrics` from `collector`.
    fn target(&self, collector: &Collector) -> Target {
        let mut t = Target::new(
            "cargo lambda watch",
            &self.function.url,
            &collector.metrics,
            SETTLE,
        );
        t.text_bodies_only = true;
        t
    }

    /// Pushes `body` to `/record`, with `?{query}` if given.
    async fn push(
        &self,
        query: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let url = match query {
            Some(q) => format!("{}/record?{q}", self.function.url),
            None => format!("{}/record", self.function.url),
        };
        let mut req = self
            .client
            .post(url)
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
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        Answer {
            status,
            text,
            body,
            retry_after,
            cors,
        }
    }

    /// Pushes `batch` as the batch `id`.
    /// Pushes push `i` of a benchmark workload ([`workload_push`]).
    async fn push_workload(&self, scenario: &str, mixed: bool, i: usize) -> Answer {
        let (id, body) = workload_push(scenario, mixed, i);
        let query = format!("batch={id}");
        self.push(Some(&query), Some("text/plain;charset=UTF-8"), body)
            .await
    }

    async fn push_batch(&self, id: &str, batch: &Value) -> Answer {
        let query = format!("batch={id}");
        self.push(Some(&query), Some("text/plain"), batch.to_string())
            .await
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
            .post(&self.function.invoke_url)
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

    /// What the tables hold, named as `/metrics` names it, rendered with the allowlist the
    /// table holds: through the read port, strongly consistent, with no collector between.
    async fn totals(&self) -> BTreeMap<String, f64> {
        self.reader.fold_now().await.expect("the fold");
        let stored = self.reader.read().await.expect("the tables read");
        let allowlist = stored.allowlists.first().cloned().unwrap_or_default();
        series_of(&stored.totals(), &allowlist)
    }

    /// Checks that the totals moved by exactly `want` since `before`. DynamoDB Local's stream can
    /// show a record a moment after its write, so this folds and reads until they have (or
    /// [`SETTLE`] passes), then once more, so that a count applied twice still fails.
    async fn assert_moved(&self, before: &BTreeMap<String, f64>, want: &BTreeMap<String, f64>) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let moved = mismatch(before, &self.totals().await, want).is_none();
            if moved || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_deltas(before, &self.totals().await, want);
    }
}

struct Answer {
    status: u16,
    text: String,
    body: Value,
    retry_after: Option<String>,
    cors: Option<String>,
}

fn get(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

/// The first series of `expected` that did not move by exactly its value between two reads.
fn mismatch(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    expected: &BTreeMap<String, f64>,
) -> Option<String> {
    expected.iter().find_map(|(series, want)| {
        let got = get(after, series) - get(before, series);
        ((got - want).abs() >= 1e-6 * want.abs().max(1.0))
            .then(|| format!("{series}: moved by {got}, want {want}"))
    })
}

/// Checks that every series of `expected` moved by exactly its value between two reads.
fn assert_deltas(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    expected: &BTreeMap<String, f64>,
) {
    if let Some(wrong) = mismatch(before, after, expected) {
        panic!("{wrong}");
    }
}

fn accepted(n: usize) -> (String, f64) {
    ("pum_pushes_total{result=\"accepted\"}".into(), n as f64)
}

/// Waits until the collector shows what the tables hold (it reads them every 200 ms), so that a
/// scenario starts from totals that every push before it is in.
async fn settled(d: &Deployment, t: &Target) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (want, got) = (d.totals().await, t.scrape().await);
        if want.iter().all(|(series, v)| get(&got, series) == *v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the collector does not catch up with the tables"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// DynamoDB Local killed: the push is a 503 with `Retry-After` and nothing applied. Restarted
/// from its files: the client's retry of that batch counts once, and a batch applied before the
/// kill, sent again, counts nothing.
async fn a_store_outage_is_a_503_and_batches_count_once_across_it(d: &mut Deployment) {
    let before = d.totals().await;
    let (applied, retried) = (batch(5), batch(7));
    let (applied_id, retried_id) = (batch_id("outage", 5), batch_id("outage", 7));
    let a = d.push_batch(&applied_id, &applied).await;
    assert_eq!(a.status, 200, "{}", a.text);
    d.dynamo.kill();
    let a = d.push_batch(&retried_id, &retried).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.body["error"], "store_unavailable");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(a.cors.as_deref(), Some("*"));
    d.dynamo.restart();
    // The client retries after Retry-After; an old batch arrives again too.
    for (id, b) in [(&retried_id, &retried), (&applied_id, &applied)] {
        let a = d.push_batch(id, b).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body, json!({"accepted": 3, "rejected": []}));
    }
    let mut want = expected(&[applied, retried]);
    want.extend([accepted(2)]);
    d.assert_moved(&before, &want).await;
}

/// The user's allowlist is in the table, and the collector, given no `--config`, renders the
/// user's metric from it.
async fn a_custom_allowlist_is_stored_and_rendered_without_config(d: &Deployment) {
    let push = json!([
        {"metricName": "shop_checkout_total", "metricType": "counter", "labels": {"step": "paid"}, "inc": 2},
        {"metricName": "shop_checkout_total", "metricType": "counter", "labels": {"step": "cart"}, "inc": 5}
    ]);
    let a = d.push_batch(&batch_id("custom", 1), &push).await;
    assert_eq!(a.status, 200, "{}", a.text);
    d.reader.fold_now().await.expect("the fold");
    let stored = d.reader.read().await.expect("read");
    let want = Allowlist::compile(
        [
            ("PUM_ALLOWLIST_JSON[0]", CUSTOM),
            ("PUM_ALLOWLIST_JSON[1]", EXAMPLE_ALLOWLIST),
        ],
        true,
    )
    .expect("the deployment's allowlist compiles");
    let fingerprints: Vec<u64> = stored
        .allowlists
        .iter()
        .map(Allowlist::fingerprint)
        .collect();
    assert_eq!(
        fingerprints,
        vec![want.fingerprint()],
        "the allowlist stored"
    );
    assert_eq!(stored.allowlists[0].description(), want.description());
    let collector = Collector::start(d).await;
    let deadline = Instant::now() + SETTLE;
    let text = loop {
        let text = collector.scrape(&d.client).await;
        if text.contains("shop_checkout_total{") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        text.contains("# HELP shop_checkout_total Checkouts by step."),
        "the collector renders the stored allowlist's metric:\n{text}"
    );
    for line in [
        "shop_checkout_total{step=\"paid\"} 2\n",
        "shop_checkout_total{step=\"cart\"} 5\n",
    ] {
        assert!(text.contains(line), "{line}in\n{text}");
    }
}

/// Under a low rate limit and one execution environment: the Function URL's client
/// (127.0.0.1), which pushed once in the scenario before, gets two more pushes, then 429 with
/// `Retry-After`, while another client is accepted; accepted totals are exact, and the refusals
/// are counted, carried by the next push stored, without a DynamoDB write of their own.
async fn one_client_is_rate_limited_and_another_is_not(d: &Deployment) {
    let before = d.totals().await;
    d.dynamo.reset_stats();
    let batches: Vec<Value> = (0..4).map(batch).collect();
    for b in &batches[..2] {
        let a = d.push(None, Some("text/plain"), b.to_string()).await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    for _ in 0..2 {
        let a = d
            .push(None, Some("text/plain"), batch(99).to_string())
            .await;
        assert_eq!(a.status, 429, "{}", a.text);
        assert_eq!(a.body["error"], "rate_limited", "{}", a.text);
        let retry: u32 = a
            .retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=1000).contains(&retry), "Retry-After {retry}");
        assert_eq!(a.cors.as_deref(), Some("*"));
    }
    for b in &batches[2..] {
        let (status, body) = d.invoke_push_from("198.51.100.7", b).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"accepted": 3, "rejected": []}));
    }
    // 4 pushes stored, 2 refused: the refusals wrote nothing.
    assert_eq!(d.dynamo.stat("PutItem"), 4.0, "{}", d.dynamo.stats());
    let mut want = expected(&batches);
    want.extend([accepted(4)]);
    want.insert("pum_pushes_total{result=\"rejected\"}".into(), 2.0);
    want.insert(
        "pum_pushes_rejected_total{reason=\"rate_limited\"}".into(),
        2.0,
    );
    d.assert_moved(&before, &want).await;
}

/// `pum-collector serve --source dynamodb` on a deployment's table, without `--config`.
struct Collector {
    metrics: String,
    _proc: Proc,
}

impl Collector {
    async fn start(d: &Deployment) -> Collector {
        let bin = std::env::var("PUM_COLLECTOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target/debug/pum-collector"));
        let mut child = Command::new(&bin)
            .args(["serve", "--source", "dynamodb"])
            .args(["--table", &d.reader.store.settings().table])
            .args(["--region", REGION, "--endpoint-url", &d.dynamo.endpoint()])
            .args(["--metrics-listen", "127.0.0.1:0", "--refresh", "200ms"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("PUM_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout");
        let proc = Proc(child);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("pum: metrics listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let metrics = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .expect("the collector announces its address");
        Collector {
            metrics,
            _proc: proc,
        }
    }

    async fn scrape(&self, client: &reqwest::Client) -> String {
        let resp = client.get(&self.metrics).send().await.expect("scrape");
        resp.text().await.expect("text")
    }
}

/// The scenarios' results, printed as they finish.
#[derive(Default)]
struct Results(Vec<bool>);

impl Results {
    /// Runs one scenario as its own task (a panic fails it, not the run); its output if it
    /// passed.
    async fn run<T: Send + 'static>(
        &mut self,
        name: &str,
        scenario: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let t = Instant::now();
        let out = tokio::spawn(scenario).await.ok();
        println!(
            "test {name} ... {} ({:.1}s)",
            if out.is_some() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        self.0.push(out.is_some());
        out
    }
}

/// After the suite's pushes: the function's invocations and the store's write units reach
/// `/metrics` through the log and the fold, and the fold reports its lag.
async fn billable_operations_and_the_fold_lag_show_on_metrics(t: &Target) {
    let before = t.scrape().await;
    let op = |m: &BTreeMap<String, f64>, op: &str| {
        get(m, &format!("pum_store_operations_total{{op=\"{op}\"}}"))
    };
    let pushes = |m: &BTreeMap<String, f64>| {
        ["accepted", "partial", "rejected"]
            .iter()
            .map(|r| get(m, &format!("pum_pushes_total{{result=\"{r}\"}}")))
            .sum::<f64>()
    };
    // Every push is an invocation, and every push that reached the store one write unit at
    // least (carried with a later push, so the latest ones may still be on their way).
    assert!(
        op(&before, "lambda_invocations") >= pushes(&before) * 0.9,
        "{before:?}"
    );
    assert!(
        op(&before, "dynamodb_write_units") >= pushes(&before) * 0.9,
        "{before:?}"
    );
    // Ten more pushes: at least ten more invocations and write units.
    for _ in 0..10 {
        assert_eq!(t.push_beacon(None).await.status, 200);
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = t.scrape().await;
        let grew = |o: &str| op(&now, o) - op(&before, o);
        if grew("lambda_invocations") >= 10.0 && grew("dynamodb_write_units") >= 10.0 {
            let lag = get(&now, "pum_fold_lag_seconds");
            assert!(
                now.contains_key("pum_fold_lag_seconds")
                    && (0.0..=SETTLE.as_secs_f64()).contains(&lag),
                "the fold's lag: {lag}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "{before:?} -> {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_all() -> usize {
    let mut results = Results::default();
    let started = Instant::now();
    let d = Deployment::start("PUM_RATE_LIMIT=0\n", 4).await;
    let collector = Collector::start(&d).await;
    println!(
        "e2e: deployment up in {:.1}s (table {}, function {}, collector {})",
        started.elapsed().as_secs_f64(),
        d.reader.store.settings().table,
        d.function.url,
        collector.metrics,
    );
    let t = Arc::new(d.target(&collector));
    let s = Arc::clone(&t);
    results
        .run("suite_answers_match_the_core", async move {
            pum_e2e::answers_match_the_core(&s).await
        })
        .await;
    settled(&d, &t).await;
    let s = Arc::clone(&t);
    results
        .run("suite_counts_exactly", async move {
            pum_e2e::counts_exactly(&s).await
        })
        .await;
    settled(&d, &t).await;
    let s = Arc::clone(&t);
    results
        .run(
            "billable_operations_and_the_fold_lag_show_on_metrics",
            async move { billable_operations_and_the_fold_lag_show_on_metrics(&s).await },
        )
        .await;
    let s = Arc::clone(&t);
    results
        .run(
            "suite_replays_count_once_in_sequence_and_8_at_once",
            async move { pum_e2e::replays_count_once(&s).await },
        )
        .await;
    settled(&d, &t).await;
    drop(t);
    let d = results
        .run(
            "suite_replay_after_the_function_restarts_counts_once",
            async move {
                let mut d = d;
                let (function, c) = (&mut d, &collector);
                let t = function.target(c);
                pum_e2e::replay_after_restart_counts_once(t, |_| async move {
                    function.restart_function().await;
                    function.target(c)
                })
                .await;
                d
            },
        )
        .await;
    if let Some(mut d) = d {
        results
            .run(
                "a_store_outage_is_a_503_and_batches_count_once_across_a_restart",
                async move { a_store_outage_is_a_503_and_batches_count_once_across_it(&mut d).await },
            )
            .await;
    }

    let env = format!(
        "PUM_ALLOWLIST_JSON='[{CUSTOM},{}]'\nPUM_RATE_LIMIT=0.001\nPUM_RATE_BURST=3\n",
        serde_json::to_string(
            &serde_json::from_str::<Value>(EXAMPLE_ALLOWLIST).expect("the example is JSON")
        )
        .expect("one line")
    );
    let d = Arc::new(Deployment::start(&env, 1).await);
    let s = Arc::clone(&d);
    results
        .run(
            "a_custom_allowlist_is_stored_and_rendered_without_config",
            async move { a_custom_allowlist_is_stored_and_rendered_without_config(&s).await },
        )
        .await;
    let s = Arc::clone(&d);
    results
        .run(
            "one_client_is_rate_limited_and_another_is_not",
            async move { one_client_is_rate_limited_and_another_is_not(&s).await },
        )
        .await;
    let failed = results.0.iter().filter(|ok| !**ok).count();
    if failed > 0 {
        println!("e2e: the function's log is in {}", watch_log().display());
    }
    println!();
    println!("e2e: {} passed, {failed} failed", results.0.len() - failed);
    failed
}

/// One push of a benchmark workload: its batch id and its body. The beacon mix is
/// `fixtures/beacon.json` (what the snippet sends for a page view); the mixed workload cycles
/// through that, a custom counter and histogram push, a one-counter push and a push with one
/// sample refused (accepted in part).
fn workload_push(name: &str, mixed: bool, i: usize) -> (String, String) {
    let id = batch_id(name, i);
    if !mixed {
        return (id, BEACON.to_owned());
    }
    let body = match i % 4 {
        0 => BEACON.to_owned(),
        1 => batch(i).to_string(),
        2 => json!([pum_shared::corpus::demo_counter("search", 1.0)]).to_string(),
        _ => {
            let mut b = batch(i);
            if let Some(samples) = b.as_array_mut() {
                samples.push(json!({"metricName": "not_allowlisted_total", "metricType": "counter", "labels": {}, "inc": 1}));
            }
            b.to_string()
        }
    };
    (id, body)
}

/// Every item of `table`, by key.
async fn items_of(
    d: &Deployment,
    table: &str,
) -> BTreeMap<String, HashMap<String, AttributeValue>> {
    let mut out = BTreeMap::new();
    let mut start = None;
    loop {
        let page = d
            .reader
            .store
            .client()
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan");
        for item in page.items() {
            if let Some(AttributeValue::S(pk)) = item.get("pk") {
                out.insert(pk.clone(), item.clone());
            }
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return out,
        }
    }
}

/// The stored `pum_store_operations_total`, by op.
async fn stored_ops(d: &Deployment) -> BTreeMap<String, f64> {
    pum_shared::own::operations_in(&d.reader.read().await.expect("read").totals())
}

/// The function process under `cargo lambda watch` (its optimised build): user plus system CPU
/// seconds so far and peak resident memory in MB, from `/proc`.
fn function_process() -> Option<(f64, f64)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !first.ends_with(b"release/pum-lambda") {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
        let hwm_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        // USER_HZ is 100 on Linux.
        return Some((ticks / 100.0, hwm_kb / 1024.0));
    }
    None
}

async fn bench(n: usize) {
    let mut d = Deployment::start("PUM_RATE_LIMIT=0\n", 4).await;
    // Warm up (the first invocations start the function instances).
    for i in 0..10 {
        let a = d
            .push(
                Some(&format!("batch={}", batch_id("warm", i))),
                Some("text/plain;charset=UTF-8"),
                BEACON,
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    // From here the benchmark folds when it chooses, as the event source mapping would at the
    // end of a batching window.
    d.fold = None;
    d.reader.fold_now().await.expect("the fold");
    let cpu_before = function_process();
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let query = format!("batch={}", batch_id("latency", i));
        let t = Instant::now();
        let a = d
            .push(Some(&query), Some("text/plain;charset=UTF-8"), BEACON)
            .await;
        latencies.push(t.elapsed());
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let cpu_after = function_process();
    d.reader.fold_now().await.expect("the fold");
    // Baseline in the same run: the same path without the store (GET /healthz through watch).
    let mut health = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = d
            .client
            .get(format!("{}/healthz", d.function.url))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status(), 200);
        health.push(t.elapsed());
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
    println!(
        "bench: {n} pushes of fixtures/beacon.json ({} bytes), each a new batch, one at a time through cargo lambda watch (optimised build)",
        BEACON.len(),
    );
    println!("bench: latency per push: {}", summary(latencies));
    println!(
        "bench: baseline, GET /healthz (no store): {}",
        summary(health)
    );
    if let (Some((cpu0, _)), Some((cpu1, rss))) = (cpu_before, cpu_after) {
        let per_push = (cpu1 - cpu0) * 1000.0 / n as f64;
        println!(
            "bench: the ingest function's CPU per push: {per_push:.3} ms; peak resident memory {rss:.1} MB. \
             Lambda gives 128 MB {:.3} of a vCPU (1,769 MB: one), so that CPU takes about {:.2} ms of a push at 128 MB, {:.2} ms at 256 MB",
            128.0 / 1769.0,
            per_push * 1769.0 / 128.0,
            per_push * 1769.0 / 256.0
        );
    }
    // Write units per accepted push, one fold per `per_fold` pushes: 90 is one default
    // batching window (90 s) at 1 push a second, 1,000 the default batch size (reached within a
    // second at 1,000 pushes a second).
    let settings = d.reader.store.settings().clone();
    let mut worst: f64 = 0.0;
    for (name, mixed) in [("beacon", false), ("mixed", true)] {
        for per_fold in [90usize, 1000] {
            let scenario = format!("{name}{per_fold}");
            let totals_before = items_of(&d, &settings.table).await;
            let ops_before = stored_ops(&d).await;
            for i in 0..per_fold {
                let a = d.push_workload(&scenario, mixed, i).await;
                assert_eq!(a.status, 200, "{scenario} push {i}: {}", a.text);
            }
            let log = items_of(&d, &settings.log_table).await;
            let prefix = format!("e2e-{scenario}-");
            let log_units: usize = log
                .iter()
                .filter(|(pk, _)| pk.starts_with(&prefix))
                .map(|(_, item)| write_units(item))
                .sum();
            let folded = d.reader.fold_now().await.expect("the fold");
            let totals_after = items_of(&d, &settings.table).await;
            // The fold writes each item it adds to, and the checkpoint, in a transaction: 2
            // units per KB of the item after the write (the larger of before and after).
            let mut fold_units = 0usize;
            let mut touched = 0usize;
            for (pk, item) in &totals_after {
                if totals_before.get(pk) != Some(item) {
                    fold_units += 2 * write_units(item);
                    touched += 1;
                }
            }
            let ops_after = stored_ops(&d).await;
            let counted = ops_after
                .get("dynamodb_write_units")
                .copied()
                .unwrap_or(0.0)
                - ops_before
                    .get("dynamodb_write_units")
                    .copied()
                    .unwrap_or(0.0);
            let per_push = (log_units + fold_units) as f64 / per_fold as f64;
            worst = worst.max(per_push);
            println!(
                "bench: {name}, {per_fold} pushes per fold: log {log_units} units, fold {fold_units} units ({touched} items in {} transactions): {per_push:.3} write units per accepted push ({:.3} log, {:.3} fold); pum_store_operations_total{{op=\"dynamodb_write_units\"}} grew {counted:.0} (each fold's own writes are counted with the next)",
                folded.chunks,
                log_units as f64 / per_fold as f64,
                fold_units as f64 / per_fold as f64,
            );
        }
    }
    // Pushes that add no data, each billed apart: a push refused whole (its record carries its
    // rejection counts) and a batch sent again (a put refused by its condition, billed the item
    // it found).
    let before = items_of(&d, &settings.log_table).await.len();
    for i in 0..10 {
        let a = d
            .push(
                Some(&format!("batch={}", batch_id("refused", i))),
                Some("text/plain;charset=UTF-8"),
                "not json",
            )
            .await;
        assert_eq!(a.status, 400, "{}", a.text);
    }
    let log = items_of(&d, &settings.log_table).await;
    let refused_units: usize = log
        .iter()
        .filter(|(pk, _)| pk.starts_with("e2e-refused-"))
        .map(|(_, item)| write_units(item))
        .sum();
    println!(
        "bench: 10 pushes refused whole: {} log items, {refused_units} write units",
        log.len() - before
    );
    for i in 0..10 {
        let a = d.push_workload("mixed90", true, i).await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let replayed_units: usize = (0..10)
        .map(|i| log.get(&batch_id("mixed90", i)).map_or(0, write_units))
        .sum();
    println!(
        "bench: 10 batches sent again: {} new log items, {replayed_units} write units (refused puts)",
        items_of(&d, &settings.log_table).await.len() - log.len()
    );
    println!(
        "bench: write units per accepted push, the most of the four: {worst:.3} (at most 1.2)"
    );
    let ops = stored_ops(&d).await;
    println!("bench: pum_store_operations_total after the run: {ops:?}");
}
