//! The load generator: `pum-loadbench generate`, run by the orchestrator as a child process
//! pinned to its own CPU.
//!
//! It opens N keep-alive HTTP/1.1 connections (hyper's low-level client: no pool, no retries,
//! nothing between the benchmark and the socket), then runs two phases over them. Each
//! connection sends the beacon, waits for the whole answer and sends the next one, until the
//! phase's shared request budget is spent.
//!
//! The protocol with the orchestrator is line-based, so that it can read the server's CPU time
//! while the server is idle, right before and right after the measured phase:
//!
//! 1. after the warmup the generator prints `ready` and waits for a line on stdin;
//! 2. it runs the measured phase and prints one JSON line, a [`GenReport`], then exits.
//!
//! A single-threaded runtime is enough: the server is the bottleneck being measured, and one
//! thread keeps the generator on exactly the one CPU it is pinned to.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// Headers a browser's `navigator.sendBeacon` adds to a cross-site POST (Chrome, abridged to
/// what every request carries); sent with `--browser-headers`.
const BROWSER_HEADERS: &[(&str, &str)] = &[
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    ),
    ("accept", "*/*"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-US,en;q=0.9"),
    ("referer", "https://www.example.com/products/42"),
    ("sec-fetch-dest", "empty"),
    ("sec-fetch-mode", "no-cors"),
    ("sec-fetch-site", "cross-site"),
];

/// Arguments of `pum-loadbench generate` (internal: the orchestrator passes them).
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The server's address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// The request path.
    #[arg(long, default_value = "/record")]
    pub path: String,
    /// The request body.
    #[arg(long)]
    pub body: PathBuf,
    /// The request's `Content-Type`.
    #[arg(long)]
    pub content_type: String,
    /// The request's `Origin`, if any.
    #[arg(long)]
    pub origin: Option<String>,
    /// Also send the headers a browser adds to a beacon.
    #[arg(long)]
    pub browser_headers: bool,
    /// Keep-alive connections.
    #[arg(long)]
    pub connections: usize,
    /// Requests in the measured phase.
    #[arg(long)]
    pub requests: usize,
    /// Requests in the warmup phase.
    #[arg(long)]
    pub warmup: usize,
    /// Longest a phase may take, in seconds, before the generator gives up.
    #[arg(long, default_value_t = 300)]
    pub phase_timeout: u64,
}

/// What one phase saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseStats {
    /// Requests attempted.
    pub sent: usize,
    /// Answers with a 2xx status.
    pub ok: usize,
    /// Answers with another status.
    pub non_2xx: usize,
    /// Requests that got no answer (connection error).
    pub errors: usize,
    /// The first non-2xx answer or error, described.
    pub first_failure: Option<String>,
    /// From the first request sent to the last answer read, in seconds.
    pub wall_secs: f64,
    /// Latency percentiles over every request of the phase, in nanoseconds.
    pub latency_ns: Percentiles,
}

/// Latency percentiles (nearest rank over every recorded latency).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: u64,
}

impl Percentiles {
    /// Computes the percentiles of `samples` (sorts it).
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |p: usize| samples[(n * p).div_ceil(100).clamp(1, n) - 1];
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Percentiles {
            p50: rank(50),
            p99: rank(99),
            max: samples[n - 1],
            mean: u64::try_from(sum / n as u128).unwrap_or(u64::MAX),
        }
    }
}

/// The generator's final answer to the orchestrator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenReport {
    /// The warmup phase.
    pub warmup: PhaseStats,
    /// The measured phase.
    pub measured: PhaseStats,
}

/// One request, ready to be cloned for every send.
struct Template {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Template {
    fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .body(Full::new(self.body.clone()))?;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

/// What one connection's task saw in one phase.
struct TaskOutcome {
    sender: Option<SendRequest<Full<Bytes>>>,
    stats: PhaseStats,
    latencies: Vec<u64>,
}

/// Runs the generator: warmup, `ready`, wait for stdin, measured phase, JSON report.
pub fn main(args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let body = std::fs::read(&args.body)
        .with_context(|| format!("{}: cannot read the body", args.body.display()))?;
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_str(&args.addr.to_string())?);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&args.content_type)?,
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(origin) = args.origin.as_deref().filter(|o| !o.is_empty()) {
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin)?);
    }
    if args.browser_headers {
        for (k, v) in BROWSER_HEADERS {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
    }
    let template = Arc::new(Template {
        path: args.path.clone(),
        headers,
        body: Bytes::from(body),
    });
    let timeout = Duration::from_secs(args.phase_timeout);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let senders = rt.block_on(connect(args.addr, args.connections, timeout))?;
    let (senders, warmup) = rt.block_on(phase(senders, args.warmup, &template, timeout))?;

    // The server is idle now: let the orchestrator read its CPU time, then go.
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("waiting for the orchestrator's go")?;
    anyhow::ensure!(line.trim() == "go", "expected `go` on stdin, got {line:?}");

    let (senders, measured) = rt.block_on(phase(senders, args.requests, &template, timeout))?;
    // Answer before closing the connections, so the orchestrator reads the server's CPU time
    // before the server sees the connections close.
    writeln!(
        out,
        "{}",
        serde_json::to_string(&GenReport { warmup, measured })?
    )?;
    out.flush()?;
    drop(senders);
    Ok(())
}

/// Opens `n` HTTP/1.1 connections and spawns their drivers.
async fn connect(
    addr: SocketAddr,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<SendRequest<Full<Bytes>>>> {
    let mut senders = Vec::with_capacity(n);
    for i in 0..n {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .with_context(|| format!("connection {i} to {addr}: timed out"))?
            .with_context(|| format!("connection {i} to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake of connection {i}"))?;
        tokio::spawn(async move {
            // An error here also fails the pending request, which counts it.
            let _ = conn.await;
        });
        senders.push(sender);
    }
    Ok(senders)
}

/// Sends `total` requests over the live connections, each connection back to back.
async fn phase(
    senders: Vec<SendRequest<Full<Bytes>>>,
    total: usize,
    template: &Arc<Template>,
    timeout: Duration,
) -> anyhow::Result<(Vec<SendRequest<Full<Bytes>>>, PhaseStats)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let next = Arc::clone(&next);
            let template = Arc::clone(template);
            tokio::spawn(run_connection(sender, next, total, template))
        })
        .collect();
    let mut senders = Vec::new();
    let mut stats = PhaseStats::default();
    let mut latencies = Vec::with_capacity(total);
    let joined = tokio::time::timeout(timeout, async {
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.context("a connection task panicked")?);
        }
        Ok::<_, anyhow::Error>(outcomes)
    })
    .await
    .map_err(|_| anyhow::anyhow!("a phase took longer than {}s", timeout.as_secs()))??;
    stats.wall_secs = start.elapsed().as_secs_f64();
    for o in joined {
        stats.sent += o.stats.sent;
        stats.ok += o.stats.ok;
        stats.non_2xx += o.stats.non_2xx;
        stats.errors += o.stats.errors;
        if stats.first_failure.is_none() {
            stats.first_failure = o.stats.first_failure;
        }
        latencies.extend_from_slice(&o.latencies);
        senders.extend(o.sender);
    }
    stats.latency_ns = Percentiles::of(&mut latencies);
    anyhow::ensure!(
        !senders.is_empty() || total == 0,
        "every connection failed; first failure: {}",
        stats.first_failure.as_deref().unwrap_or("none recorded")
    );
    Ok((senders, stats))
}

/// One connection's loop: claim a request from the shared budget, send it, read the whole
/// answer, record the latency.
async fn run_connection(
    mut sender: SendRequest<Full<Bytes>>,
    next: Arc<AtomicUsize>,
    total: usize,
    template: Arc<Template>,
) -> TaskOutcome {
    let mut stats = PhaseStats::default();
    let mut latencies = Vec::new();
    while next.fetch_add(1, Ordering::Relaxed) < total {
        stats.sent += 1;
        let started = Instant::now();
        let answer = async {
            sender.ready().await?;
            let req = template.request()?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        }
        .await;
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match answer {
            Ok((status, _)) if status.is_success() => {
                stats.ok += 1;
                latencies.push(elapsed);
            }
            Ok((status, body)) => {
                stats.non_2xx += 1;
                latencies.push(elapsed);
                if stats.first_failure.is_none() {
                    let text = String::from_utf8_lossy(&body);
                    let text: String = text.chars().take(300).collect();
                    stats.first_failure = Some(format!("HTTP {status}: {text}"));
                }
            }
            Err(e) => {
                stats.errors += 1;
                if stats.first_failure.is_none() {
                    stats.first_failure = Some(format!("no answer: {e:#}"));
                }
                // The connection is unusable: leave the rest of the budget to the others.
                return TaskOutcome {
                    sender: None,
                    stats,
                    latencies,
                };
            }
        }
    }
    TaskOutcome {
        sender: Some(sender),
        stats,
        latencies,
    }
}

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p99, p.max), (50, 99, 100));
        assert_eq!(p.mean, 50);
        let mut one = vec![7];
        let p = Percentiles::of(&mut one);
        assert_eq!((p.p50, p.p99, p.max, p.mean), (7, 7, 7, 7));
        assert_eq!(Percentiles::of(&mut []).max, 0);
    }
}
