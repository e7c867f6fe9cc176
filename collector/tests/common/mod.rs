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
        let mut child = Command::new(env!("CARGO_BIN_EXE_pum-collector"))
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
