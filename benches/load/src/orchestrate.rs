//! The orchestrator: starts each server pinned to one CPU, the generator pinned to the other,
//! reads the server's CPU time around the measured window, checks pum's count and reports.
//!
//! Every child process is owned by a guard that kills it on drop, so the servers stop on every
//! path out of a run: success, error or panic.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::generate::GenReport;

/// The metric pum counts recorded pushes in (the original aggregator's name).
const RECORD_TOTAL: &str = "metrics_aggregator_record_total";

/// Arguments of a benchmark run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The pum server binary (build it with `cargo build --release -p pum-collector`).
    #[arg(long, default_value = "target/release/pum-collector")]
    pub pum: PathBuf,
    /// The baseline server binary (build it with `cargo build --release -p pum-loadbench`).
    #[arg(long, default_value = "target/release/pum-hello")]
    pub hello: PathBuf,
    /// The beacon sent as every request's body.
    #[arg(long, default_value = "fixtures/beacon.json")]
    pub beacon: PathBuf,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// Requests per measured run.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=5_000_000))]
    pub requests: u32,
    /// Requests sent before each measured run, not measured.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub warmup: u32,
    /// Rounds; each round runs hello, then pum.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// The CPU the server is pinned to.
    #[arg(long, default_value_t = 1)]
    pub server_cpu: usize,
    /// The CPU the load generator is pinned to.
    #[arg(long, default_value_t = 0)]
    pub generator_cpu: usize,
    /// The requests' `Content-Type`: what `navigator.sendBeacon` sends for a string body.
    #[arg(long, default_value = "text/plain;charset=UTF-8")]
    pub content_type: String,
    /// The requests' `Origin`, as a browser on another site sends it ("" for none).
    #[arg(long, default_value = "https://www.example.com")]
    pub origin: String,
    /// Also send the headers a browser adds to a beacon (user agent, accept, sec-fetch-*...).
    #[arg(long)]
    pub browser_headers: bool,
    /// Where pum's fresh data directories are made (default: the system's temp directory).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// An extra argument for `pum-collector standalone` (repeat for several).
    #[arg(long = "pum-arg", allow_hyphen_values = true)]
    pub pum_args: Vec<String>,
    /// Seconds to wait for a server to print its address.
    #[arg(long, default_value_t = 30)]
    pub startup_timeout: u64,
}

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Hello,
    Pum,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Hello => "hello",
            Target::Pum => "pum",
        }
    }
}

/// The figures of one measured run.
#[derive(Debug, Clone)]
struct RunFigures {
    round: u32,
    pushes: usize,
    wall_secs: f64,
    pushes_per_sec: f64,
    server_cpu_ms: f64,
    cpu_per_1000_ms: f64,
    server_cpu_pct: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    generator_cpu_pct: f64,
    /// Busy time of the server's CPU not spent by the server (other processes, interrupts).
    others_on_server_cpu_ms: f64,
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Guard {
    name: String,
    child: Child,
}

impl Guard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A child's stdout, line by line, with timeouts.
struct Lines {
    rx: Receiver<String>,
}

impl Lines {
    fn new(stdout: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, or `None` when the child closed its stdout.
    fn next(&self, timeout: Duration, what: &str) -> anyhow::Result<Option<String>> {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                bail!("timed out after {}s waiting for {what}", timeout.as_secs())
            }
        }
    }
}

/// A running server.
struct Server {
    guard: Guard,
    ingest: SocketAddr,
    metrics: Option<SocketAddr>,
    log: PathBuf,
    // Holds the data directory and the log until the server is gone (dropped after `guard`).
    _dir: tempfile::TempDir,
}

impl Server {
    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    if tail.is_empty() {
        "(the server's stderr is empty)".into()
    } else {
        format!("the server's stderr ends with:\n{tail}")
    }
}

/// Runs the whole benchmark and prints the report. Fails on any non-2xx answer, lost or double
/// counted push, or broken server.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    for (flag, bin, package) in [
        ("--pum", &args.pum, "pum-collector"),
        ("--hello", &args.hello, "pum-loadbench"),
    ] {
        anyhow::ensure!(
            bin.is_file(),
            "{flag} {}: no such file; build it with `cargo build --release -p {package}` \
             (or run benches/load.sh)",
            bin.display()
        );
    }
    let which = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    anyhow::ensure!(
        which.is_ok_and(|s| s.success()),
        "`taskset` (util-linux) is needed to pin the server and the generator to their CPUs"
    );
    let beacon = std::fs::read(&args.beacon)
        .with_context(|| format!("--beacon {}: cannot read", args.beacon.display()))?;
    let samples = serde_json::from_slice::<serde_json::Value>(&beacon)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .with_context(|| format!("--beacon {}: not a JSON array", args.beacon.display()))?;
    let tick_ms = 1000.0 / clock_ticks_per_sec() as f64;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        eprintln!(
            "pum-loadbench: warning: this process may use {cpus} CPU; the server and the \
             generator will share it"
        );
    }

    println!(
        "pum load benchmark: beacon {} ({} B, {samples} samples, {}), {} keep-alive connections, \
         {} requests per run after {} warmup, {} round(s); server on CPU {}, generator on CPU {}; \
         CPU from /proc/PID/stat ({tick_ms} ms ticks)",
        args.beacon.display(),
        beacon.len(),
        args.content_type,
        args.connections,
        args.requests,
        args.warmup,
        args.rounds,
        args.server_cpu,
        args.generator_cpu,
    );

    let mut hello_runs = Vec::new();
    let mut pum_runs = Vec::new();
    for round in 1..=args.rounds {
        for target in [Target::Hello, Target::Pum] {
            eprint!("round {round}: {} ... ", target.name());
            let _ = std::io::stderr().flush();
            let figures = run_once(&args, target, round, tick_ms).with_context(|| {
                format!("round {round}, {}: the benchmark run failed", target.name())
            })?;
            eprintln!(
                "{:.0} pushes/s, {:.1} ms CPU per 1000",
                figures.pushes_per_sec, figures.cpu_per_1000_ms
            );
            match target {
                Target::Hello => hello_runs.push(figures),
                Target::Pum => pum_runs.push(figures),
            }
        }
    }

    println!();
    print_table(
        &format!(
            "hello ({}): answers 204, body drained",
            args.hello.display()
        ),
        &hello_runs,
    );
    println!();
    print_table(
        &format!(
            "pum ({} standalone, fresh data dir per run)",
            args.pum.display()
        ),
        &pum_runs,
    );
    println!();
    let hello = Summary::of(&hello_runs);
    let pum = Summary::of(&pum_runs);
    let ratio = pum.median.cpu_per_1000_ms / hello.median.cpu_per_1000_ms;
    let best_ratio = pum.best.cpu_per_1000_ms / hello.best.cpu_per_1000_ms;
    println!(
        "server CPU per 1000 pushes: pum {:.1} ms, hello {:.1} ms, ratio {:.2}x \
         (median of {} rounds; target at most 2.5x: {})",
        pum.median.cpu_per_1000_ms,
        hello.median.cpu_per_1000_ms,
        ratio,
        args.rounds,
        if ratio <= 2.5 { "met" } else { "NOT met" },
    );
    println!(
        "best rounds: pum {:.1} ms, hello {:.1} ms, ratio {:.2}x",
        pum.best.cpu_per_1000_ms, hello.best.cpu_per_1000_ms, best_ratio
    );
    println!(
        "pushes/s (median): pum {:.0}, hello {:.0}; p99 (median): pum {:.2} ms, hello {:.2} ms",
        pum.median.pushes_per_sec,
        hello.median.pushes_per_sec,
        pum.median.p99_ms,
        hello.median.p99_ms
    );
    println!(
        "pushes counted by pum: equal to the 2xx answers in every run (zero lost, zero double \
         counted); non-2xx answers: 0"
    );
    Ok(())
}

/// Starts the server, drives the generator, measures and checks.
fn run_once(
    args: &RunArgs,
    target: Target,
    round: u32,
    tick_ms: f64,
) -> anyhow::Result<RunFigures> {
    let server = start_server(args, target)?;
    let generator_exe = std::env::current_exe().context("finding pum-loadbench's own path")?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(args.generator_cpu.to_string())
        .arg(generator_exe)
        .arg("generate")
        .arg("--addr")
        .arg(server.ingest.to_string())
        .arg("--path")
        .arg("/record")
        .arg("--body")
        .arg(&args.beacon)
        .arg("--content-type")
        .arg(&args.content_type)
        .arg("--connections")
        .arg(args.connections.to_string())
        .arg("--requests")
        .arg(args.requests.to_string())
        .arg("--warmup")
        .arg(args.warmup.to_string());
    if !args.origin.is_empty() {
        cmd.arg("--origin").arg(&args.origin);
    }
    if args.browser_headers {
        cmd.arg("--browser-headers");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the generator under taskset")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let mut generator = Guard {
        name: "generator".into(),
        child,
    };
    let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
        bail!("the generator's pipes were not set up");
    };
    let lines = Lines::new(stdout);
    let long = Duration::from_secs(600);

    match lines.next(long, "the generator's warmup")? {
        Some(l) if l == "ready" => {}
        other => bail!(
            "the generator stopped before its warmup ended ({other:?}; see its stderr above); {}",
            server.log_tail()
        ),
    }
    let server_cpu0 = process_cpu_ticks(server.guard.pid())?;
    let generator_cpu0 = process_cpu_ticks(generator.pid())?;
    let busy0 = cpu_busy_ticks(args.server_cpu)?;
    go(&mut stdin)?;
    let report = match lines.next(long, "the generator's report")? {
        Some(l) => serde_json::from_str::<GenReport>(&l)
            .with_context(|| format!("the generator's report is not JSON: {l}"))?,
        None => bail!(
            "the generator stopped before reporting (see its stderr above); {}",
            server.log_tail()
        ),
    };
    let server_cpu1 = process_cpu_ticks(server.guard.pid())?;
    let generator_cpu1 = process_cpu_ticks(generator.pid())?;
    let busy1 = cpu_busy_ticks(args.server_cpu)?;
    let status = generator
        .child
        .wait()
        .context("waiting for the generator")?;
    anyhow::ensure!(
        status.success(),
        "the {} exited with {status}",
        generator.name
    );

    // Every answer must have been 2xx, and every request answered.
    for (phase, stats, wanted) in [
        ("warmup", &report.warmup, args.warmup as usize),
        ("measured", &report.measured, args.requests as usize),
    ] {
        if stats.non_2xx > 0 || stats.errors > 0 || stats.ok != wanted {
            bail!(
                "{phase} phase: {} of {wanted} requests answered 2xx, {} answered otherwise, {} got \
                 no answer; first failure: {}",
                stats.ok,
                stats.non_2xx,
                stats.errors,
                stats.first_failure.as_deref().unwrap_or("none recorded")
            );
        }
    }
    if target == Target::Pum {
        let metrics = server.metrics.context("pum printed no metrics address")?;
        let counted = scrape_record_total(metrics)?;
        let answered = report.warmup.ok + report.measured.ok;
        if counted != answered as f64 {
            bail!(
                "pum counted {counted} pushes in {RECORD_TOTAL} but answered {answered} with 2xx \
                 ({}): {}",
                if counted < answered as f64 {
                    "pushes were lost"
                } else {
                    "pushes were counted twice"
                },
                server.log_tail()
            );
        }
    }
    // The server dies here, before the next one starts.
    drop(server);

    let m = &report.measured;
    let server_cpu_ms = (server_cpu1 - server_cpu0) as f64 * tick_ms;
    let busy_ms = busy1.saturating_sub(busy0) as f64 * tick_ms;
    let wall_ms = m.wall_secs * 1000.0;
    Ok(RunFigures {
        round,
        pushes: m.ok,
        wall_secs: m.wall_secs,
        pushes_per_sec: m.ok as f64 / m.wall_secs,
        server_cpu_ms,
        cpu_per_1000_ms: server_cpu_ms / m.ok as f64 * 1000.0,
        server_cpu_pct: 100.0 * server_cpu_ms / wall_ms,
        p50_ms: m.latency_ns.p50 as f64 / 1e6,
        p99_ms: m.latency_ns.p99 as f64 / 1e6,
        max_ms: m.latency_ns.max as f64 / 1e6,
        generator_cpu_pct: 100.0 * (generator_cpu1 - generator_cpu0) as f64 * tick_ms / wall_ms,
        others_on_server_cpu_ms: (busy_ms - server_cpu_ms).max(0.0),
    })
}

fn go(stdin: &mut ChildStdin) -> anyhow::Result<()> {
    stdin
        .write_all(b"go\n")
        .and_then(|()| stdin.flush())
        .context("telling the generator to go")
}

/// Starts a server under `taskset` and waits for it to print its address(es).
fn start_server(args: &RunArgs, target: Target) -> anyhow::Result<Server> {
    let dir = match &args.data_root {
        Some(root) => tempfile::Builder::new()
            .prefix("pum-loadbench-")
            .tempdir_in(root),
        None => tempfile::Builder::new().prefix("pum-loadbench-").tempdir(),
    }
    .context("making a temporary directory")?;
    let log = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&log).context("creating the server's log file")?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(args.server_cpu.to_string());
    match target {
        Target::Hello => {
            cmd.arg(&args.hello).args(["--listen", "127.0.0.1:0"]);
        }
        Target::Pum => {
            let data = dir.path().join("data");
            cmd.arg(&args.pum)
                .arg("standalone")
                .args(["--ingest-listen", "127.0.0.1:0"])
                .args(["--metrics-listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(&data)
                .args(&args.pum_args);
            // Every push comes from one address: the limiter runs (its cost is measured) but
            // never refuses. (Variables, not flags, so that older builds run too.)
            cmd.env("PUM_RATE_LIMIT", "1e9")
                .env("PUM_RATE_BURST", "1e9");
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {} under taskset", target.name()))?;
    let stdout = child.stdout.take();
    let guard = Guard {
        name: target.name().into(),
        child,
    };
    let lines = Lines::new(stdout.context("the server's stdout was not piped")?);
    let deadline = Instant::now() + Duration::from_secs(args.startup_timeout);
    let (ingest_prefix, metrics_prefix) = match target {
        Target::Hello => ("hello listening on http://", None),
        Target::Pum => (
            "pum: ingest listening on http://",
            Some("pum: metrics listening on http://"),
        ),
    };
    let mut ingest = None;
    let mut metrics = None;
    while ingest.is_none() || (metrics_prefix.is_some() && metrics.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let what = format!("{} to print its address", guard.name);
        let Some(line) = lines.next(left, &what)? else {
            bail!(
                "{} exited before printing its address; {}",
                guard.name,
                log_tail(&log)
            );
        };
        if let Some(rest) = line.strip_prefix(ingest_prefix) {
            ingest = Some(parse_addr(rest)?);
        } else if let Some(rest) = metrics_prefix.and_then(|p| line.strip_prefix(p)) {
            metrics = Some(parse_addr(rest.trim_end_matches("/metrics"))?);
        }
    }
    // Keep draining stdout so that the server never blocks on a full pipe.
    std::thread::spawn(move || while lines.rx.recv().is_ok() {});
    Ok(Server {
        guard,
        ingest: ingest.context("no ingest address")?,
        metrics,
        log,
        _dir: dir,
    })
}

fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = s
        .trim()
        .parse()
        .with_context(|| format!("not an address: {s:?}"))?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the server listens on {addr}, not on loopback: refusing to send load there"
    );
    Ok(addr)
}

/// Reads `metrics_aggregator_record_total` from pum's `/metrics`.
fn scrape_record_total(addr: SocketAddr) -> anyhow::Result<f64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to pum's metrics at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .context("reading pum's /metrics")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("pum's /metrics answer has no header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "pum's /metrics answered {}",
        head.lines().next().unwrap_or_default()
    );
    // The body may be chunked; chunk-size lines never start with the metric's name.
    let mut total = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(RECORD_TOTAL) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("cannot read the value of {line:?}"))?;
        *total.get_or_insert(0.0) += value;
    }
    total.with_context(|| format!("pum's /metrics has no {RECORD_TOTAL}"))
}

/// `CLK_TCK`, the unit of the CPU times in `/proc` (100 on every common Linux).
fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// utime + stime of a process, all its threads (live and exited) included, in clock ticks.
fn process_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 is utime and 15 stime; fields[0] is field 3.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

/// Busy time of one CPU (everything but idle and iowait), in clock ticks.
fn cpu_busy_ticks(cpu: usize) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("/proc/stat has no {name}"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user).
    anyhow::ensure!(v.len() >= 8, "short {name} line in /proc/stat");
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// Per-column median and best over a target's runs.
struct Summary {
    median: RunFigures,
    best: RunFigures,
}

impl Summary {
    fn of(runs: &[RunFigures]) -> Self {
        let col = |f: fn(&RunFigures) -> f64| -> Vec<f64> {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let median = |f: fn(&RunFigures) -> f64| -> f64 {
            let v = col(f);
            let n = v.len();
            if n == 0 {
                f64::NAN
            } else if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        let min = |f: fn(&RunFigures) -> f64| col(f).first().copied().unwrap_or(f64::NAN);
        let max = |f: fn(&RunFigures) -> f64| col(f).last().copied().unwrap_or(f64::NAN);
        let pushes = runs.first().map_or(0, |r| r.pushes);
        let build = |pick: &dyn Fn(fn(&RunFigures) -> f64, bool) -> f64| RunFigures {
            round: 0,
            pushes,
            // `true`: lower is better.
            wall_secs: pick(|r| r.wall_secs, true),
            pushes_per_sec: pick(|r| r.pushes_per_sec, false),
            server_cpu_ms: pick(|r| r.server_cpu_ms, true),
            cpu_per_1000_ms: pick(|r| r.cpu_per_1000_ms, true),
            server_cpu_pct: pick(|r| r.server_cpu_pct, false),
            p50_ms: pick(|r| r.p50_ms, true),
            p99_ms: pick(|r| r.p99_ms, true),
            max_ms: pick(|r| r.max_ms, true),
            generator_cpu_pct: pick(|r| r.generator_cpu_pct, false),
            others_on_server_cpu_ms: pick(|r| r.others_on_server_cpu_ms, true),
        };
        Summary {
            median: build(&|f, _| median(f)),
            best: build(&|f, lower| if lower { min(f) } else { max(f) }),
        }
    }
}

fn print_table(title: &str, runs: &[RunFigures]) {
    println!("== {title}");
    println!(
        "{:<8} {:>8} {:>7} {:>9} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>12}",
        "round",
        "pushes",
        "wall s",
        "pushes/s",
        "server CPU",
        "CPU/1000",
        "srv %",
        "p50 ms",
        "p99 ms",
        "max ms",
        "gen %",
        "others on"
    );
    println!(
        "{:<8} {:>8} {:>7} {:>9} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>12}",
        "", "", "", "", "ms", "pushes ms", "", "", "", "", "", "srv CPU ms"
    );
    let row = |label: &str, r: &RunFigures| {
        println!(
            "{:<8} {:>8} {:>7.2} {:>9.0} {:>10.0} {:>10.2} {:>7.0} {:>7.2} {:>7.2} {:>7.2} {:>7.0} {:>12.0}",
            label,
            r.pushes,
            r.wall_secs,
            r.pushes_per_sec,
            r.server_cpu_ms,
            r.cpu_per_1000_ms,
            r.server_cpu_pct,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.generator_cpu_pct,
            r.others_on_server_cpu_ms
        );
    };
    for r in runs {
        row(&r.round.to_string(), r);
    }
    let s = Summary::of(runs);
    row("median", &s.median);
    row("best", &s.best);
}
