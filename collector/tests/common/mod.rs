//! Starts the real `pum-collector` binary for tests, and reads its `/metrics`.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `pum-collector standalone`.
pub struct Server {
    pub child: Child,
    pub ingest: String,
    pub metrics: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts standalone on free ports over `data_dir`, with extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_limited(data_dir, extra, None)
    }

    /// Starts standalone as [`Server::start`], with its open-file limit lowered to `nofile`
    /// (`ulimit -n`) when given.
    pub fn start_limited(data_dir: &Path, extra: &[&str], nofile: Option<u64>) -> Server {
        let bin = env!("CARGO_BIN_EXE_pum-collector");
        let mut command = match nofile {
            // `exec` keeps the child's pid the server's, so signals reach it.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args([
                "standalone",
                "--ingest-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("PUM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pum-collector starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut ingest, mut metrics) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while ingest.is_none() || metrics.is_none() {
            assert!(
                Instant::now() < deadline,
                "server did not announce its ports"
            );
            let line = lines
                .next()
                .expect("server printed its ports")
                .expect("line");
            if let Some(rest) = line.strip_prefix("pum: ingest listening on ") {
                ingest = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("pum: metrics listening on ") {
                metrics = Some(rest.to_owned());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            ingest: ingest.unwrap_or_default(),
            metrics: metrics.unwrap_or_default(),
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn record_url(&self) -> String {
        format!("{}/record", self.ingest)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// The server's resident memory now and at its peak, in bytes (`VmRSS`, `VmHWM`).
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/PID/status"))
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }

    /// The scrape, parsed.
    pub async fn scrape(&self, client: &reqwest::Client) -> Scrape {
        let resp = client.get(&self.metrics).send().await.expect("scrape");
        assert_eq!(resp.status(), 200);
        Scrape::parse(&resp.text().await.expect("text"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that every series in `expected` has its value in `scrape` (to a millionth: sums of
/// observations print as floats).
pub fn assert_totals(scrape: &Scrape, expected: &BTreeMap<String, f64>) {
    for (series, want) in expected {
        let got = scrape.get(series);
        assert!(
            (got - want).abs() < 1e-6 * want.max(1.0),
            "{series}: got {got}, want {want}\n{}",
            scrape.text
        );
    }
}

/// A parsed text exposition: `name{labels}` as printed -> value. Panics on any line that is not
/// valid exposition text, so a test that scrapes also checks the page parses.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment line: {line}");
            let split = match line.find('}') {
                Some(i) => i + 1,
                None => line.find(' ').expect("a sample line has a value"),
            };
            let (series, value) = line.split_at(split);
            let value: f64 = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate series {series}"
            );
        }
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// A sample's value, 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}
