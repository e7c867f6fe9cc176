//! Hostile clients against the real `pum-collector standalone` binary: slow and unfinished
//! requests, idle and oversized connections, h2c, shutdown with requests half sent, and a store
//! that cannot sync. Each test prints the server's resident memory before and at its peak.
//!
//! The counts default to sizes that run in seconds; `PUM_HOSTILE_CONNECTIONS` scales the
//! connection floods (e.g. 10000). The tests run one at a time: they measure one server's memory
//! and open thousands of sockets.

mod common;

use std::time::{Duration, Instant};

use common::{Scrape, Server, assert_totals};
use pum_shared::corpus::{demo_batch as batch, demo_totals as expected_totals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one test at a time, with this process allowed as many open files as it may have.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    SERIAL.lock().await
}

fn flood_size(default: usize) -> usize {
    std::env::var("PUM_HOSTILE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Ingest connections closed for `reason`, as `/metrics` counts them.
fn closed(scrape: &Scrape, reason: &str) -> f64 {
    scrape.get(&format!(
        r#"pum_http_connections_closed_total{{listener="ingest",reason="{reason}"}}"#
    ))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Prints the server's memory before an attack and at its peak since; returns the peak.
fn report_rss(server: &Server, attack: &str, before: u64) -> u64 {
    let (_, peak) = server.rss();
    println!(
        "{attack}: rss before {:.1} MB, peak {:.1} MB",
        mb(before),
        mb(peak)
    );
    peak
}

/// Pushes one demo batch; returns the status, or `None` if the connection failed.
async fn try_push(server: &Server, i: usize) -> Option<u16> {
    client()
        .post(server.record_url())
        .header("content-type", "text/plain")
        .body(batch(i).to_string())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Pushes one demo batch; returns the status.
async fn push(server: &Server, i: usize) -> u16 {
    try_push(server, i).await.expect("push answered")
}

/// Waits up to `limit` for the server to close `tcp`; returns when it did, or `None`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads what the server answers until it closes the connection (or 10 s pass).
async fn answer(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slowloris_is_cut_within_the_header_timeout() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--header-timeout", "2s"]);
    let ingest = addr(&server.ingest);
    let n = flood_size(2000) / 10;
    let (before, _) = server.rss();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(&ingest).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            tcp.write_all(b"POST /record HTTP/1.1\r\nhost: pum\r\n")
                .await
                .expect("first bytes");
            // One more header byte every 200 ms, for as long as the server listens.
            loop {
                if tcp.write_all(b"x").await.is_err() {
                    return start.elapsed();
                }
                if closed_within(&mut tcp, Duration::from_millis(200))
                    .await
                    .is_some()
                {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "a slowloris connection was still open after 10 s"
                );
            }
        }));
    }
    // Meanwhile an honest client is served.
    assert_eq!(push(&server, 0).await, 200);
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.expect("task"));
    }
    report_rss(
        &server,
        &format!("slowloris x{n}, every connection cut within {slowest:?}"),
        before,
    );
    assert!(
        slowest < Duration::from_millis(3500),
        "cut after {slowest:?}, header timeout 2 s"
    );
    let scrape = server.scrape(&client()).await;
    assert!(
        closed(&scrape, "header_timeout") >= n as f64,
        "{}",
        scrape.text
    );
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_and_counted() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--body-timeout", "2s"]);
    assert_eq!(push(&server, 0).await, 200);
    let mut tcp = TcpStream::connect(addr(&server.ingest))
        .await
        .expect("connect");
    tcp.write_all(
        b"POST /record HTTP/1.1\r\nhost: pum\r\ncontent-type: text/plain\r\ncontent-length: 900\r\n\r\n[",
    )
    .await
    .expect("head");
    let start = Instant::now();
    let (mut read, mut write) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        while write.write_all(b" ").await.is_ok() && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut out)).await;
    let took = start.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""error":"body_timeout""#), "{text}");
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}, body timeout 2 s"
    );
    let scrape = server.scrape(&client()).await;
    assert_eq!(
        scrape.get(r#"pum_pushes_rejected_total{reason="body_timeout"}"#),
        1.0,
        "{}",
        scrape.text
    );
    assert_totals(&scrape, &expected_totals(&[batch(0)]));
}

#[tokio::test]
async fn idle_connections_do_not_starve_health_checks_or_pushes() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // 1024 open files: the flood is larger than what the process may hold. The log is synced
    // every 100 ms meanwhile, and must keep being synced.
    let server = Server::start_limited(dir.path(), &["--sync-interval", "100ms"], Some(1024));
    let (before, _) = server.rss();
    let n = flood_size(2000);
    let ingest = addr(&server.ingest);
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&ingest)).await {
            Ok(Ok(tcp)) => idle.push(tcp),
            other => panic!("connect {} of {n}: {other:?}", idle.len()),
        }
    }
    // A few more on the metrics listener, beyond its budget of 64.
    let mut idle_metrics = Vec::new();
    for _ in 0..100 {
        idle_metrics.push(
            TcpStream::connect(addr(&server.metrics))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = client();
    let health = c
        .get(format!("{}/healthz", server.ingest))
        .send()
        .await
        .expect("ingest /healthz answers during the flood");
    assert_eq!(health.status(), 200);
    let health = c
        .get(server.metrics.replace("/metrics", "/healthz"))
        .send()
        .await
        .expect("metrics /healthz answers during the flood");
    assert_eq!(health.status(), 200);
    assert_eq!(push(&server, 1).await, 200);
    let scrape = server.scrape(&c).await;
    assert_totals(&scrape, &expected_totals(&[batch(1)]));
    let peak = report_rss(&server, &format!("idle connections x{n}"), before);
    assert!(
        closed(&scrape, "evicted") > 0.0,
        "the flood was over the bound, so idle connections were closed for new ones\n{}",
        scrape.text
    );
    assert!(
        scrape.get(r#"pum_http_connections{listener="ingest"}"#) <= 1024.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.get(r#"pum_store_errors_total{op="write"}"#),
        0.0,
        "the log kept being synced during the flood\n{}",
        scrape.text
    );
    assert!(peak < 100_000_000, "peak rss {:.1} MB", mb(peak));
}

#[tokio::test]
async fn huge_unfinished_headers_do_not_grow_memory() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let (before, _) = server.rss();
    let n = flood_size(2000) / 2;
    let ingest = addr(&server.ingest);
    let header: &'static [u8] = Box::leak(vec![b'a'; 390 * 1024].into_boxed_slice());
    let mut tasks = Vec::new();
    for _ in 0..n {
        let ingest = ingest.clone();
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(&ingest).await.expect("connect");
            let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nx-big: ").await;
            let _ = tcp.write_all(header).await;
            answer(&mut tcp).await
        }));
    }
    let mut refused = 0;
    for t in tasks {
        let text = t.await.expect("task");
        if text.starts_with("HTTP/1.1 431") {
            refused += 1;
        }
    }
    let peak = report_rss(
        &server,
        &format!("390 KB unfinished heads x{n}, {refused} answered 431"),
        before,
    );
    assert!(refused > 0, "no connection was answered 431");
    assert!(
        peak < before + 64_000_000,
        "peak rss {:.1} MB from {:.1} MB",
        mb(peak),
        mb(before)
    );
    assert_eq!(push(&server, 2).await, 200);
}

/// The HTTP/2 connection preface with an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the server answered the preface with an HTTP/2 SETTINGS frame.
async fn speaks_h2c(server: &Server) -> (bool, String) {
    let mut tcp = TcpStream::connect(addr(&server.ingest))
        .await
        .expect("connect");
    tcp.write_all(H2_PREFACE).await.expect("preface");
    let mut buf = vec![0u8; 64];
    let n = match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    let got = &buf[..n];
    (
        n >= 9 && got[3] == 0x04,
        String::from_utf8_lossy(got).into_owned(),
    )
}

#[tokio::test]
async fn h2c_is_refused_unless_turned_on() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let (h2, got) = speaks_h2c(&server).await;
    assert!(!h2, "h2c served by default: {got:?}");
    drop(server);
    let server = Server::start(dir.path(), &["--http2"]);
    let (h2, got) = speaks_h2c(&server).await;
    assert!(h2, "--http2 did not serve h2c: {got:?}");
}

#[tokio::test]
async fn connections_past_the_bound_are_refused_when_all_are_busy() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--max-connections", "4"]);
    let ingest = addr(&server.ingest);
    // Four requests in progress: their bodies are still coming.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(&ingest).await.expect("connect");
        tcp.write_all(
            b"POST /record HTTP/1.1\r\nhost: pum\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n[",
        )
        .await
        .expect("head");
        busy.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fifth = TcpStream::connect(&ingest).await.expect("connect");
    let text = answer(&mut fifth).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    // Once they are gone, pushes are served again (a connection refused meanwhile may be
    // reset rather than answered: the server does not read what it refuses).
    drop(busy);
    let mut status = None;
    for _ in 0..50 {
        status = try_push(&server, 3).await;
        if status == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(200));
    let scrape = server.scrape(&client()).await;
    assert!(closed(&scrape, "refused") >= 1.0, "{}", scrape.text);
}

#[tokio::test]
async fn sigterm_with_half_sent_requests_exits_within_the_deadline() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &["--shutdown-timeout", "2s"]);
    let batches: Vec<_> = (0..5).map(batch).collect();
    for i in 0..5 {
        assert_eq!(push(&server, i).await, 200);
    }
    let ingest = addr(&server.ingest);
    // One request with half its head, one with its head and half its body.
    let mut half_head = TcpStream::connect(&ingest).await.expect("connect");
    half_head
        .write_all(b"POST /record HTTP/1.1\r\nhost: pum\r\n")
        .await
        .expect("half a head");
    let mut half_body = TcpStream::connect(&ingest).await.expect("connect");
    half_body
        .write_all(
            b"POST /record HTTP/1.1\r\nhost: pum\r\ncontent-type: text/plain\r\ncontent-length: 500\r\n\r\n[{",
        )
        .await
        .expect("half a body");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    server.signal_term();
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM with a 2 s deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = start.elapsed();
    println!("exited {status} {took:?} after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "exited before the deadline: {took:?}"
    );
    drop((half_head, half_body));
    drop(server);
    let server = Server::start(dir.path(), &[]);
    assert_totals(&server.scrape(&client()).await, &expected_totals(&batches));
}

#[tokio::test]
async fn a_log_that_cannot_be_synced_answers_503_and_counts_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // fsync of /dev/null fails (EINVAL): a log that cannot be synced, from the real kernel.
    std::os::unix::fs::symlink("/dev/null", dir.path().join("wal-00000000000000000000.log"))
        .expect("symlink");
    // And compaction, which would recover, cannot write its snapshot while this is here.
    let blocker = dir.path().join("snapshot.json.tmp");
    std::fs::create_dir(&blocker).expect("blocker");
    let server = Server::start(dir.path(), &["--sync-interval", "100ms"]);
    let c = client();
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let resp = c
            .post(server.record_url())
            .header("content-type", "text/plain")
            .body(batch(i).to_string())
            .send()
            .await
            .expect("answered");
        match resp.status().as_u16() {
            200 => accepted.push(batch(i)),
            503 => {
                refused = Some(resp);
                break;
            }
            other => panic!("status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("a push was refused once the sync failed");
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"], "store_unavailable");
    let before = server.scrape(&c).await;
    for i in 100..105 {
        assert_eq!(push(&server, i).await, 503, "pushes stay refused");
    }
    let health = c
        .get(format!("{}/healthz", server.ingest))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 503);
    let after = server.scrape(&c).await;
    let pushes = r#"pum_pushes_total{result="accepted"}"#;
    assert_eq!(before.get(pushes), accepted.len() as f64, "{}", before.text);
    assert_eq!(after.get(pushes), accepted.len() as f64, "{}", after.text);
    assert_totals(&before, &expected_totals(&accepted));
    assert_totals(&after, &expected_totals(&accepted));
    assert!(after.get(r#"pum_store_errors_total{op="write"}"#) >= 5.0);
    // The disk recovers: the next compaction makes every total durable and pushes flow again.
    std::fs::remove_dir(&blocker).expect("unblock");
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = push(&server, 200).await;
        if status == 200 {
            accepted.push(batch(200));
            break;
        }
    }
    assert_eq!(status, 200, "pushes accepted again after recovery");
    drop(server);
    let server = Server::start(dir.path(), &[]);
    assert_totals(&server.scrape(&c).await, &expected_totals(&accepted));
}

/// Pushes one demo batch from `local` (a loopback address of this machine) with extra headers;
/// returns the status, the Retry-After header and the JSON answer.
async fn push_from(
    server: &Server,
    local: &str,
    headers: &[(&str, &str)],
    i: usize,
) -> (u16, Option<String>, serde_json::Value) {
    let client = reqwest::Client::builder()
        .local_address(Some(local.parse().expect("address")))
        .build()
        .expect("client");
    let mut request = client
        .post(server.record_url())
        .header("content-type", "text/plain")
        .body(batch(i).to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.send().await.expect("answered");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, resp.json().await.expect("JSON"))
}

#[tokio::test]
async fn the_rate_limit_answers_429_and_lets_other_clients_through() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &[
            "--rate-limit",
            "0.2",
            "--rate-burst",
            "3",
            "--sync-interval",
            "100ms",
        ],
    );
    let mut accepted = Vec::new();
    for i in 0..3 {
        let (status, _, answer) = push_from(&server, "127.0.0.1", &[], i).await;
        assert_eq!(status, 200, "{answer}");
        accepted.push(batch(i));
    }
    let (status, retry, answer) = push_from(&server, "127.0.0.1", &[], 3).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"], "rate_limited", "{answer}");
    let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    // Another address is another client.
    let (status, _, answer) = push_from(&server, "127.0.0.2", &[], 4).await;
    assert_eq!(status, 200, "{answer}");
    accepted.push(batch(4));
    // A client-sent X-Forwarded-For means nothing unless the header is trusted.
    let (status, _, _) = push_from(
        &server,
        "127.0.0.1",
        &[("x-forwarded-for", "203.0.113.9")],
        5,
    )
    .await;
    assert_eq!(status, 429);
    let mut scrape = server.scrape(&client()).await;
    for _ in 0..50 {
        if scrape.get(r#"pum_pushes_rejected_total{reason="rate_limited"}"#) >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = server.scrape(&client()).await;
    }
    assert_eq!(
        scrape.get(r#"pum_pushes_rejected_total{reason="rate_limited"}"#),
        2.0,
        "{}",
        scrape.text
    );
    assert_totals(&scrape, &expected_totals(&accepted));
    drop(server);

    // Behind a trusted proxy: the header's last hop is the client.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &[
            "--rate-limit",
            "0.2",
            "--rate-burst",
            "1",
            "--client-ip-header",
            "x-forwarded-for",
        ],
    );
    let via = |client: &'static str| [("x-forwarded-for", client)];
    let proxy = "127.0.0.1";
    assert_eq!(
        push_from(&server, proxy, &via("192.0.2.1, 198.51.100.1"), 0)
            .await
            .0,
        200
    );
    assert_eq!(
        push_from(&server, proxy, &via("198.51.100.1"), 1).await.0,
        429
    );
    assert_eq!(
        push_from(&server, proxy, &via("198.51.100.2"), 2).await.0,
        200
    );
    // IPv6 clients are one client per /64.
    assert_eq!(
        push_from(&server, proxy, &via("2001:db8:1:2::1"), 3)
            .await
            .0,
        200
    );
    assert_eq!(
        push_from(&server, proxy, &via("2001:db8:1:2::ffff"), 4)
            .await
            .0,
        429
    );
}
