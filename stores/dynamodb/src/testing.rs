//! A local DynamoDB for tests and benchmarks (feature `testing`).
//!
//! [`LocalDynamo`] runs `testing/local_dynamodb.py`: Amazon's DynamoDB Local behind a proxy that
//! counts requests, with its tables kept in a directory across a kill, on 127.0.0.1 and a free
//! port. It needs `python3`, Java 17 or later, and `npm ci` run in `stores/dynamodb/testing`
//! (`edge/lambda/test.sh` sees to both; set `PUM_PYTHON` to use another interpreter). The server
//! is killed when the value is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};

use crate::{DynamoStore, Settings};

/// The launcher script.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testing/local_dynamodb.py");

/// The region tests sign with and write as.
pub const REGION: &str = "eu-west-1";

/// A running local DynamoDB.
pub struct LocalDynamo {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl LocalDynamo {
    /// Starts a server that keeps its tables across a kill.
    pub fn start() -> LocalDynamo {
        let mut server = LocalDynamo {
            child: None,
            port: 0,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let python = std::env::var("PUM_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(python);
        cmd.arg(SCRIPT)
            .args(["--port", &self.port.to_string(), "--db-path"])
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("python3 runs testing/local_dynamodb.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(port) = line
                    .strip_prefix("local-dynamodb listening on http://127.0.0.1:")
                    .and_then(|p| p.trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                    break;
                }
            }
            for _ in lines {}
        });
        let port = match rx.recv_timeout(Duration::from_secs(150)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "DynamoDB Local did not start (are Java 17 and `npm ci` in \
                     stores/dynamodb/testing there? edge/lambda/test.sh installs both)"
                );
            }
        };
        self.port = port;
        self.child = Some(child);
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: the server stops answering at once (DynamoDB Local dies with its wrapper).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same tables.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The port may linger for a moment after the kill.
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "port {} stays taken", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn();
    }

    /// A client with static test credentials.
    pub fn client(&self) -> Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "pum-test"))
            .timeout_config(
                aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .build(),
            )
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .build();
        Client::from_conf(config)
    }

    /// A store over fresh tables with a unique name (`{prefix}-{n}`), created now.
    pub async fn fresh_store(
        &self,
        prefix: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> DynamoStore {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut settings = Settings::new(name, REGION);
        settings.consistent_reads = true;
        tweak(&mut settings);
        let store = DynamoStore::new(self.client(), settings);
        store.create_tables().await.expect("tables are created");
        store
    }

    /// The server's request counts by operation, and `TransactWriteItems.items` (items the
    /// transactions carried), as JSON.
    pub fn stats(&self) -> String {
        self.control("GET")
    }

    /// Zeroes the request counts.
    pub fn reset_stats(&self) {
        self.control("POST");
    }

    fn control(&self, method: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connects");
        write!(
            stream,
            "{method} /_pum/stats HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )
        .expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reads");
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// One count from [`LocalDynamo::stats`] (0 if there is none yet).
    pub fn stat(&self, name: &str) -> f64 {
        serde_json::from_str::<serde_json::Value>(&self.stats())
            .ok()
            .and_then(|v| v.get(name).and_then(serde_json::Value::as_f64))
            .unwrap_or(0.0)
    }
}

impl Drop for LocalDynamo {
    fn drop(&mut self) {
        self.kill();
    }
}
