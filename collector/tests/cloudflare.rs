//! End-to-end tests of the Cloudflare Worker (edge/worker) under real local workerd: each test
//! starts `wrangler dev` on its own ports with its state in a temporary `--persist-to`, pushes to
//! it, and reads the totals back through `pum-collector serve --source cloudflare`, which renders
//! them from the allowlists the shards stored (no `--config`). The end-to-end suite every ingest
//! passes (`pum-e2e`) runs here against `wrangler dev`, with a replay after `kill -9`.
//!
//! They need Node, the root package.json's tools and a built Worker, so `cargo test` alone skips
//! them (`#[ignore]`); `edge/worker/test.sh` installs and builds what they need and runs them with
//! `--ignored`. scripts/test.sh runs that script, so CI always runs them.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Scrape, Server};
use pum_e2e::Target;
use pum_shared::corpus::{bad_pushes, demo_batch as batch, demo_totals as expected_totals};
use serde_json::{Value, json};

const TOKEN: &str = "test-export-token";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

/// Whether `GET /healthz` answers 200 (a bare HTTP/1.0 request: no client to set up).
fn healthy(base: &str) -> bool {
    let addr = base.trim_start_matches("http://");
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut status = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut status).is_ok()
        && &status[9..12] == b"200"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `wrangler dev`, stopped with its whole process group (wrangler's node and workerd).
struct Worker {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Worker {
    fn start(persist: &Path, vars: &[(&str, &str)]) -> Worker {
        let root = root();
        let port = free_port();
        let log = persist.with_extension(format!("wrangler-{port}.log"));
        let out = File::create(&log).expect("log file");
        let mut cmd = Command::new(root.join("node_modules/.bin/wrangler"));
        cmd.current_dir(&root)
            .args(["dev", "--ip", "127.0.0.1", "--port", &port.to_string()])
            .args(["--inspector-port", &free_port().to_string()])
            .arg("--persist-to")
            .arg(persist)
            .args([
                "--show-interactive-dev-session=false",
                "--log-level",
                "warn",
            ])
            .args(["--var", &format!("PUM_EXPORT_TOKEN:{TOKEN}")]);
        // Fold and publish every second (the fastest), so that totals arrive quickly, unless
        // the test sets them.
        for (k, v) in [("PUM_FOLD_SECONDS", "1"), ("PUM_PUBLISH_SECONDS", "1")] {
            if !vars.iter().any(|(name, _)| *name == k) {
                cmd.args(["--var", &format!("{k}:{v}")]);
            }
        }
        for (k, v) in vars {
            cmd.args(["--var", &format!("{k}:{v}")]);
        }
        let path = format!(
            "{}:{}",
            root.join("node_modules/.bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = cmd
            .env("PATH", path)
            .env("PUM_WORKER_PREBUILT", "1")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .env("CI", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("wrangler starts (npm ci in the repository root)");
        // edge/worker/test.sh stops these process groups should the test run itself be killed.
        if let Ok(file) = std::env::var("PUM_WRANGLER_PIDS") {
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(file) {
                let _ = writeln!(f, "{}", child.id());
            }
        }
        let worker = Worker {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        worker.wait_ready();
        worker
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let ok = healthy(&self.url);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "wrangler dev did not come up:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn record_url(&self) -> String {
        format!("{}/record", self.url)
    }

    /// Kills wrangler and workerd with SIGKILL: nothing gets to flush anything.
    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `pum-collector serve --source cloudflare` against a Worker.
struct Collector {
    child: Child,
    metrics: String,
}

impl Collector {
    fn start(worker: &Worker) -> Collector {
        Collector::start_with(worker, &[])
    }

    /// With extra flags.
    fn start_with(worker: &Worker, extra: &[&str]) -> Collector {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pum-collector"))
            .args(["serve", "--source", "cloudflare", "--url", &worker.url])
            .args(extra)
            .args(["--token", TOKEN, "--refresh", "200ms"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("PUM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pum-collector starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let metrics = loop {
            let line = lines
                .next()
                .expect("the collector printed its address")
                .expect("line");
            if let Some(rest) = line.strip_prefix("pum: metrics listening on ") {
                break rest.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Collector { child, metrics }
    }

    async fn scrape(&self, client: &reqwest::Client) -> Scrape {
        let resp = client.get(&self.metrics).send().await.expect("scrape");
        assert_eq!(resp.status(), 200);
        Scrape::parse(&resp.text().await.expect("text"))
    }

    /// Scrapes until `done` holds (the tests make the shards fold and publish every second), then
    /// returns that scrape; panics with the last scrape after a minute.
    async fn scrape_until(
        &self,
        client: &reqwest::Client,
        done: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        self.scrape_until_expected(client, &BTreeMap::new(), done)
            .await
    }

    /// As [`Collector::scrape_until`], also waiting for `expected`, and naming the series that
    /// differ if they never arrive.
    async fn scrape_until_expected(
        &self,
        client: &reqwest::Client,
        expected: &BTreeMap<String, f64>,
        done: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let scrape = self.scrape(client).await;
            if done(&scrape) && matches(&scrape, expected) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "the totals did not arrive; differing (series, got, want): {:?}\n{}",
                mismatches(&scrape, expected),
                scrape.text
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .expect("client")
}

/// The series of `expected` whose scraped value differs: `(series, got, want)`.
fn mismatches(scrape: &Scrape, expected: &BTreeMap<String, f64>) -> Vec<(String, f64, f64)> {
    expected
        .iter()
        .map(|(series, want)| (series.clone(), scrape.get(series), *want))
        .filter(|(_, got, want)| (got - want).abs() >= 1e-6 * want.max(1.0))
        .collect()
}

fn matches(scrape: &Scrape, expected: &BTreeMap<String, f64>) -> bool {
    mismatches(scrape, expected).is_empty()
}

async fn push(client: &reqwest::Client, url: &str, body: &Value, ct: &str) -> (u16, Value) {
    let resp = client
        .post(url)
        .header("content-type", ct)
        .body(body.to_string())
        .send()
        .await
        .expect("push");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("answers are JSON"))
}

/// Pushes `batches` over `connections` concurrent clients, each sending its next push when the
/// last is answered; every one must be acknowledged. `url` may end in `?batch=`: each push then
/// names a batch id of its own.
async fn push_concurrently(url: &str, batches: &[Value], connections: usize) {
    let batches = Arc::new(batches.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (batches, next, url) = (Arc::clone(&batches), Arc::clone(&next), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let c = client();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = batches.get(i) else { break };
                let url = match url.strip_suffix("?batch=") {
                    Some(base) => format!("{base}?batch=concurrent-{i:012}"),
                    None => url.clone(),
                };
                let (status, body) = push(&c, &url, b, "text/plain;charset=UTF-8").await;
                assert_eq!(status, 200, "push {i}: {body}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("pusher");
    }
}

/// A counter of `/export/shards`, summed over the shards.
fn sum_over_shards(stats: &Value, counter: &str) -> u64 {
    stats["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter_map(|s| s["stats"][counter].as_u64())
        .sum()
}

async fn stats(client: &reqwest::Client, worker: &Worker) -> Value {
    client
        .get(format!("{}/export/shards", worker.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON")
}

/// The Worker as the end-to-end suite needs it (the example allowlist, any origin, no rate
/// limit), with a collector showing its totals.
fn e2e_target(state: &Path) -> (Worker, Collector, Target) {
    let worker = Worker::start(state, &[("PUM_RATE_LIMIT", "0")]);
    let collector = Collector::start(&worker);
    let target = Target::new(
        "wrangler dev",
        &worker.url,
        &collector.metrics,
        Duration::from_secs(60),
    );
    (worker, collector, target)
}

/// Waits until the Worker has folded everything it took and the collector shows all of it (the
/// pushes it counts stop moving): each step of the end-to-end suite measures from a quiet start,
/// while the edge shows a push only after a fold, a KV write and a refresh.
async fn settle(worker: &Worker, target: &Target) {
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = stats(&c, worker).await;
        let pending: Option<u64> = stats["shards"]
            .as_array()
            .map(|shards| shards.iter().filter_map(|s| s["pending"].as_u64()).sum());
        if pending == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "never folded: {stats}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pushes = |scrape: BTreeMap<String, f64>| -> Vec<(String, f64)> {
        scrape
            .into_iter()
            .filter(|(k, _)| k.starts_with("pum_pushes_total"))
            .collect()
    };
    let mut last = pushes(target.scrape().await);
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = pushes(target.scrape().await);
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "the totals keep moving: {now:?}");
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn the_worker_passes_the_end_to_end_suite_and_a_replay_after_kill_9_counts_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (worker, collector, target) = e2e_target(&state);
    // The core's answers; exact counts; a batch sent twice in sequence and 8 times at once,
    // counted once: the suite every ingest passes.
    settle(&worker, &target).await;
    pum_e2e::run(&target).await;
    settle(&worker, &target).await;
    let mut running = Some((worker, collector));
    let target = pum_e2e::replay_after_restart_counts_once(target, |_| {
        let (mut worker, collector) = running.take().expect("the Worker runs");
        // kill -9 of wrangler and workerd: the batch exists only as a pending row.
        worker.kill();
        drop(collector);
        let (worker, collector, target) = e2e_target(&state);
        running = Some((worker, collector));
        std::future::ready(target)
    })
    .await;
    // What the shards wrote: one row per group of pushes stored, none for a replay.
    let (worker, _collector) = running.take().expect("the Worker runs");
    settle(&worker, &target).await;
    let stats = stats(&client(), &worker).await;
    for s in stats["shards"].as_array().expect("shards") {
        let st = &s["stats"];
        assert_eq!(st["rows_written_by_pushes"], st["commits"], "{stats}");
        assert!(st["commits"].as_u64() <= st["pushes"].as_u64(), "{stats}");
    }
    let replays = sum_over_shards(&stats, "replays");
    assert_eq!(replays, 1, "the replay after the restart: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn seed_pushes_appear_exactly_on_metrics_at_one_row_per_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::start(&dir.path().join("state"), &[]);
    let c = client();
    let batches: Vec<Value> = (0..30).map(batch).collect();
    for (i, b) in batches.iter().enumerate() {
        // Beacons arrive as text/plain, fetch() pushes as application/json: both are accepted.
        let ct = if i % 2 == 0 {
            "text/plain;charset=UTF-8"
        } else {
            "application/json"
        };
        let (status, body) = push(&c, &worker.record_url(), b, ct).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"accepted": 3, "rejected": []}));
    }
    let collector = Collector::start(&worker);
    let expected = expected_totals(&batches);
    let scrape = collector
        .scrape_until_expected(&c, &expected, |s| {
            s.get("metrics_aggregator_record_total") >= 30.0
        })
        .await;
    assert_eq!(scrape.get("metrics_aggregator_record_total"), 30.0);
    assert_eq!(scrape.get("pum_pushes_total{result=\"accepted\"}"), 30.0);
    assert_eq!(scrape.get("pum_samples_accepted_total"), 90.0);
    assert!(
        scrape
            .text
            .contains("# TYPE demo_third_party_api_seconds histogram")
    );

    // What the pushes cost: one after the other, each push is a group of its own, one row.
    let stats = stats(&c, &worker).await;
    let shards = stats["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 1, "the default SHARDS: {stats}");
    let mut pushes = 0;
    for s in shards {
        let st = &s["stats"];
        assert_eq!(st["rows_written_by_pushes"], st["pushes"], "{stats}");
        // A fold writes the totals (one row here) and recreates `pending` (2 rows), however many
        // pushes it folds.
        assert_eq!(
            st["rows_written_by_folds"].as_u64(),
            st["folds"].as_u64().map(|f| 3 * f),
            "{stats}"
        );
        assert!(st["kv_writes"].as_u64() <= st["folds"].as_u64(), "{stats}");
        pushes += st["pushes"].as_u64().expect("pushes");
    }
    assert!(pushes <= 30, "{stats}");
    println!("shard counters after 30 pushes: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn concurrent_pushes_are_all_counted_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // The default rate limit (a burst of 500 from one address) takes these pushes from one
    // address; a restart starts a new isolate with every bucket full.
    let mut worker = Worker::start(&state, &[]);
    let c = client();
    // 400 pushes over 20 connections.
    let batches: Vec<Value> = (0..400).map(batch).collect();
    push_concurrently(&worker.record_url(), &batches, 20).await;
    let mut expected = expected_totals(&batches);
    {
        let collector = Collector::start(&worker);
        let scrape = collector
            .scrape_until_expected(&c, &expected, |s| {
                s.get("pum_pushes_total{result=\"accepted\"}") >= 400.0
            })
            .await;
        assert_eq!(scrape.get("pum_pushes_total{result=\"accepted\"}"), 400.0);
    }

    // More pushes, acknowledged, then wrangler and workerd are killed (SIGKILL: nothing gets to
    // flush): first at once, so that these pushes exist only as pending rows; then a little over
    // a second later, while the shards are folding and writing KV.
    let mut pushed = 400;
    for wait_ms in [0, 1100] {
        let late: Vec<Value> = (pushed..pushed + 25).map(batch).collect();
        push_concurrently(&worker.record_url(), &late, 10).await;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        worker.kill();
        pushed += late.len();
        for (k, v) in expected_totals(&late) {
            *expected.entry(k).or_default() += v;
        }
        worker = Worker::start(&state, &[]);
        // A fresh collector: the totals come from the restarted store, not a collector's memory.
        let collector = Collector::start(&worker);
        let want = pushed as f64;
        let scrape = collector
            .scrape_until_expected(&c, &expected, |s| {
                s.get("pum_pushes_total{result=\"accepted\"}") >= want
            })
            .await;
        assert_eq!(scrape.get("pum_pushes_total{result=\"accepted\"}"), want);
        assert_eq!(scrape.get("metrics_aggregator_record_total"), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn concurrent_pushes_share_row_writes_and_count_exactly() {
    // Rows written per push at 8 and at 64 clients pushing in a loop, with the default shards
    // and commit wait: group commit must take it to at most 0.5 and 0.1.
    for (clients, pushes, most) in [(8, 240, 0.5), (64, 640, 0.1)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let worker = Worker::start(&dir.path().join("state"), &[("PUM_RATE_LIMIT", "0")]);
        let c = client();
        let batches: Vec<Value> = (0..pushes).map(batch).collect();
        let url = format!("{}?batch=", worker.record_url());
        push_concurrently(&url, &batches, clients).await;
        // The shards' counters live in memory: read them at once.
        let counters = stats(&c, &worker).await;
        let stored = sum_over_shards(&counters, "pushes");
        let rows = sum_over_shards(&counters, "rows_written_by_pushes");
        let per_push = rows as f64 / stored as f64;
        println!("{clients} clients: {pushes} pushes, {rows} rows written, {per_push:.3} a push");
        assert_eq!(stored, pushes as u64, "{counters}");
        assert!(
            per_push <= most,
            "{clients} clients: {per_push:.3} rows a push: {counters}"
        );

        // Exact all the same: every push once, and the same pushes again are all replays.
        push_concurrently(&url, &batches, clients).await;
        let collector = Collector::start(&worker);
        let want = pushes as f64;
        let scrape = collector
            .scrape_until_expected(&c, &expected_totals(&batches), |s| {
                s.get("pum_pushes_total{result=\"accepted\"}") >= want
            })
            .await;
        assert_eq!(scrape.get("pum_pushes_total{result=\"accepted\"}"), want);
        let counters = stats(&c, &worker).await;
        assert_eq!(
            sum_over_shards(&counters, "replays"),
            pushes as u64,
            "{counters}"
        );
        // What the platform bills, counted in the totals: a Worker request and a Durable
        // Object request for each push stored (the replays' wait for a later push to carry
        // them), and the rows the stored groups took.
        let op = |name: &str| scrape.get(&format!("pum_store_operations_total{{op=\"{name}\"}}"));
        assert!(op("worker_requests") >= want, "{}", scrape.text);
        assert!(op("do_requests") >= want, "{}", scrape.text);
        assert!(op("sqlite_rows_written") >= rows as f64, "{}", scrape.text);
        assert!(op("sqlite_rows_written") < want, "{}", scrape.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn an_idle_shard_writes_no_kv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::start(&dir.path().join("state"), &[]);
    let c = client();
    let batches: Vec<Value> = (0..5).map(batch).collect();
    push_concurrently(&worker.record_url(), &batches, 5).await;
    let collector = Collector::start(&worker);
    collector
        .scrape_until_expected(&c, &expected_totals(&batches), |s| {
            s.get("metrics_aggregator_record_total") >= 5.0
        })
        .await;
    let kv_writes = |stats: &Value| sum_over_shards(stats, "kv_writes");
    let mut before = stats(&c, &worker).await;
    // Published: nothing pending, KV up to date.
    let deadline = Instant::now() + Duration::from_secs(30);
    while before["shards"][0]["dirty"] != json!(false) || before["shards"][0]["pending"] != 0 {
        assert!(Instant::now() < deadline, "never published: {before}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        before = stats(&c, &worker).await;
    }
    assert!(kv_writes(&before) >= 1, "{before}");
    // Five publish periods with nothing new: no alarm fires, nothing is written.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = stats(&c, &worker).await;
    assert_eq!(kv_writes(&after), kv_writes(&before), "{before}\n{after}");
    assert_eq!(
        sum_over_shards(&after, "alarms"),
        sum_over_shards(&before, "alarms"),
        "{before}\n{after}"
    );
    assert!(
        sum_over_shards(&after, "pushes") >= 1,
        "the shard was not restarted: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn bad_pushes_get_the_same_answers_as_standalone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let standalone = Server::start(&dir.path().join("standalone"), &[]);
    let worker = Worker::start(&dir.path().join("state"), &[]);
    let c = client();
    let cases = bad_pushes();
    for case in &cases {
        let mut answers = Vec::new();
        for url in [standalone.record_url(), worker.record_url()] {
            let mut req = c.post(&url).body(case.body.clone());
            if let Some(ct) = &case.content_type {
                req = req.header("content-type", ct);
            }
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let cors = resp
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            let body: Value = resp
                .json()
                .await
                .unwrap_or_else(|e| panic!("{}: the answer is not JSON: {e}", case.name));
            answers.push((status, body, cors));
        }
        let (standalone_answer, worker_answer) = (&answers[0], &answers[1]);
        assert_eq!(worker_answer, standalone_answer, "{}", case.name);
        assert_eq!(worker_answer.0, case.status, "{}", case.name);
        assert_eq!(
            worker_answer.1.get("error").and_then(Value::as_str),
            case.error.as_deref(),
            "{}",
            case.name
        );
    }
    // Every refusal and rejection is counted, as standalone counts them.
    let collector = Collector::start(&worker);
    let reference = standalone.scrape(&c).await;
    let counted = |s: &Scrape| -> BTreeMap<String, f64> {
        s.samples
            .iter()
            .filter(|(k, _)| {
                k.starts_with("pum_samples_rejected_total")
                    || k.starts_with("pum_pushes_rejected_total")
                    || k.starts_with("pum_pushes_total")
                    || k.starts_with("pum_samples_accepted_total")
                    || k.starts_with("demo_")
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    let want = counted(&reference);
    assert!(want.len() > 10, "{}", reference.text);
    let got = collector.scrape_until(&c, |s| counted(s) == want).await;
    assert_eq!(counted(&got), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn export_token_cors_country_and_assets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allowlist = r#"{"allowedMetrics":[{"name":"checkout_total","help":"Checkouts.","type":"counter","labels":[{"name":"country","source":"country","allowedValues":["DE","US"],"otherValue":"other"}]}]}"#;
    let worker = Worker::start(
        &dir.path().join("state"),
        &[
            ("PUM_ALLOWLIST_JSON", allowlist),
            ("PUM_BROWSER_PACK", "false"),
            ("PUM_ALLOWED_ORIGINS", "https://shop.example"),
            ("PUM_SHARDS", "2"),
        ],
    );
    let c = client();

    // The export: no token, a wrong one, the right one.
    let export = format!("{}/export", worker.url);
    for auth in [None, Some("Bearer wrong"), Some("test-export-token")] {
        let mut req = c.get(&export);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("export");
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(
            resp.headers().get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"], "unauthorized");
    }
    let resp = c
        .get(&export)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["v"], 1);
    let resp = c
        .post(&export)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("POST export");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");

    // A collector with a wrong token stops at start-up, naming the problem.
    let out = Command::new(env!("CARGO_BIN_EXE_pum-collector"))
        .args(["serve", "--source", "cloudflare", "--url", &worker.url])
        .args(["--token", "wrong", "--metrics-listen", "127.0.0.1:0"])
        .output()
        .expect("collector runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("EXPORT_TOKEN"), "{stderr}");

    // CORS: the preflight, an allowed origin, a refused one.
    let resp = c
        .request(reqwest::Method::OPTIONS, worker.record_url())
        .header("origin", "https://shop.example")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .expect("str")
            .contains("POST")
    );
    let sample = json!([{"metricName": "checkout_total", "metricType": "counter", "inc": 2}]);
    for (origin, status) in [("https://shop.example", 200), ("https://evil.example", 403)] {
        let resp = c
            .post(worker.record_url())
            .header("origin", origin)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(sample.to_string())
            .send()
            .await
            .expect("push");
        assert_eq!(resp.status(), status, "{origin}");
        let acao = resp.headers().get("access-control-allow-origin").cloned();
        let body: Value = resp.json().await.expect("JSON");
        if status == 200 {
            assert_eq!(acao.expect("ACAO"), origin);
            assert_eq!(body, json!({"accepted": 1, "rejected": []}));
        } else {
            assert!(acao.is_none());
            assert_eq!(body["error"], "origin_not_allowed");
        }
    }
    // The country label comes from request.cf.country (local workerd reports US), never from the
    // push.
    let spoofed = json!([{"metricName": "checkout_total", "metricType": "counter", "labels": {"country": "DE"}, "inc": 1}]);
    let (status, body) = push(&c, &worker.record_url(), &spoofed, "application/json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["rejected"][0]["reason"], "unknown_label");
    // A batch id that is not one is refused before the body is read.
    let resp = c
        .post(format!("{}?batch=short!", worker.record_url()))
        .header("origin", "https://shop.example")
        .body(sample.to_string())
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"], "invalid_batch_id", "{body}");

    // The shards store the allowlist the Worker validates with, and the export carries it: the
    // custom metric, with its help and labels, and no browser pack.
    let exported = || async {
        let resp = c
            .get(&export)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("export");
        resp.json::<Value>().await.expect("JSON")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let lists = loop {
        let doc = exported().await;
        let lists = doc["allowlists"].as_array().cloned().unwrap_or_default();
        if !lists.is_empty() {
            break lists;
        }
        assert!(
            Instant::now() < deadline,
            "no allowlist in the export: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(lists.len(), 1, "{lists:?}");
    let metrics = lists[0]["metrics"].as_array().expect("metrics");
    let checkout = metrics
        .iter()
        .find(|m| m["name"] == "checkout_total")
        .unwrap_or_else(|| panic!("checkout_total is not in {lists:?}"));
    assert_eq!(checkout["help"], "Checkouts.");
    assert_eq!(checkout["labels"][0]["allowedValues"], json!(["DE", "US"]));
    assert!(
        !metrics.iter().any(|m| m["name"] == "browser_lcp_seconds"),
        "{lists:?}"
    );
    // So the collector renders the Worker's metrics with no copy of the allowlist.
    let collector = Collector::start(&worker);
    let scrape = collector
        .scrape_until(&c, |s| {
            s.get("checkout_total{country=\"US\"}") >= 2.0
                && s.get("pum_pushes_rejected_total{reason=\"origin_not_allowed\"}") >= 1.0
        })
        .await;
    assert_eq!(scrape.get("checkout_total{country=\"US\"}"), 2.0);
    assert_eq!(
        scrape.get("pum_pushes_rejected_total{reason=\"origin_not_allowed\"}"),
        1.0
    );
    assert!(
        scrape.text.contains("# HELP checkout_total Checkouts."),
        "{}",
        scrape.text
    );

    // Routes: health, the original's /status, unknown paths and methods.
    let resp = c
        .get(format!("{}/healthz", worker.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("JSON"),
        json!({"status": "ok"})
    );
    let resp = c
        .get(worker.record_url())
        .send()
        .await
        .expect("GET /record");
    assert_eq!(resp.status(), 405);
    assert_eq!(
        resp.json::<Value>().await.expect("JSON")["error"],
        "method_not_allowed"
    );
    let resp = c
        .get(format!("{}/nope", worker.url))
        .send()
        .await
        .expect("404");
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.expect("JSON")["error"],
        "not_found"
    );

    // The client script, served by Workers Static Assets at the original snippet's URL.
    let resp = c
        .get(format!("{}/static/aggregatorClient.js", worker.url))
        .send()
        .await
        .expect("client");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("str")
            .contains("javascript")
    );
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .expect("str")
            .contains("max-age=604800")
    );
    let served = resp.text().await.expect("text");
    let shipped =
        std::fs::read_to_string(root().join("static/aggregatorClient.js")).expect("client");
    assert_eq!(served, shipped);
    let resp = c.get(&worker.url).send().await.expect("demo");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text()
            .await
            .expect("text")
            .contains("/static/aggregatorClient.js")
    );
}

/// A client whose connections come from `addr`. Any 127.x.y.z reaches wrangler's loopback
/// listener, and `wrangler dev` hands the Worker the connection's address as `CF-Connecting-IP`
/// (as Cloudflare does; a header the client sends itself would pass through locally, which
/// Cloudflare never lets happen), so each such client is a different address to the Worker.
fn client_from(addr: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(addr.parse::<std::net::IpAddr>().expect("an address"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
async fn one_address_is_rate_limited_while_another_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One token every 1000 s, three at once: a client has three pushes, then none for as long as
    // the test could take.
    let worker = Worker::start(
        &dir.path().join("state"),
        &[("PUM_RATE_LIMIT", "0.001"), ("PUM_RATE_BURST", "3")],
    );
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    let batches: Vec<Value> = (0..4).map(batch).collect();
    for body in &batches[..3] {
        let (status, answer) = push(&a, &worker.record_url(), body, "text/plain").await;
        assert_eq!(status, 200, "{answer}");
    }
    for _ in 0..2 {
        let resp = a
            .post(worker.record_url())
            .header("origin", "https://shop.example")
            .header("content-type", "text/plain;charset=UTF-8")
            .body(batch(99).to_string())
            .send()
            .await
            .expect("push");
        assert_eq!(resp.status(), 429);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "*");
        let retry: u32 = h["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=1000).contains(&retry), "Retry-After {retry}");
        let answer: Value = resp.json().await.expect("JSON");
        assert_eq!(answer["error"], "rate_limited", "{answer}");
    }
    // Another address is accepted; its push carries the two refusals.
    let (status, answer) = push(&b, &worker.record_url(), &batches[3], "application/json").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"accepted": 3, "rejected": []}));

    let c = client();
    let collector = Collector::start(&worker);
    let mut expected = expected_totals(&batches);
    expected.insert("pum_pushes_total{result=\"accepted\"}".into(), 4.0);
    expected.insert("pum_pushes_total{result=\"rejected\"}".into(), 2.0);
    expected.insert(
        "pum_pushes_rejected_total{reason=\"rate_limited\"}".into(),
        2.0,
    );
    let scrape = collector
        .scrape_until_expected(&c, &expected, |_| true)
        .await;
    assert!(mismatches(&scrape, &expected).is_empty());
    assert_eq!(scrape.get("metrics_aggregator_record_total"), 4.0);
    // The refusals cost no Durable Object request: the shards took the 4 pushes stored.
    let stats = stats(&c, &worker).await;
    let pushes = sum_over_shards(&stats, "pushes");
    assert_eq!(pushes, 4, "{stats}");
}

#[test]
#[ignore = "needs wrangler and a built Worker: run edge/worker/test.sh"]
fn deploy_dry_run_succeeds_under_one_megabyte_gzipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = root();
    let path = format!(
        "{}:{}",
        root.join("node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(root.join("node_modules/.bin/wrangler"))
        .current_dir(&root)
        .args(["deploy", "--dry-run", "--outdir"])
        .arg(dir.path())
        .env("PATH", path)
        .env("PUM_WORKER_PREBUILT", "1")
        .env("WRANGLER_SEND_METRICS", "false")
        .stdin(Stdio::null())
        .output()
        .expect("wrangler runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // "Total Upload: 1234.56 KiB / gzip: 456.78 KiB"
    let line = text
        .lines()
        .find(|l| l.contains("Total Upload"))
        .unwrap_or_else(|| panic!("no upload size in:\n{text}"));
    let gzip_kib: f64 = line
        .split("gzip:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the size in {line:?}"));
    println!("wrangler deploy --dry-run: {}", line.trim());
    assert!(gzip_kib < 1024.0, "{line}");
    for binding in ["SHARD", "SNAPSHOTS", "Shard"] {
        assert!(text.contains(binding), "{binding} missing:\n{text}");
    }
}
