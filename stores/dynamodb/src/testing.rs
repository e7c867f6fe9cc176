//! A local DynamoDB for tests and benchmarks (feature `testing`).
//!
//! [`LocalDynamo`] runs `testing/local_dynamodb.py`: Amazon's DynamoDB Local behind a proxy that
//! counts requests, with its tables kept in a directory across a kill, on 127.0.0.1 and a free
//! port. It needs `python3`, Java 17 or later, and `npm ci` run in `stores/dynamodb/testing`
//! (`edge/lambda/test.sh` sees to both; set `PUM_PYTHON` to use another interpreter). The server
//! is killed when the value is dropped.
//!
//! [`StreamPoller`] reads the log table's stream from that server and stands in for Lambda's
//! event source mapping; [`FoldedStore`] is a store whose merge writes the log item and then
//! folds the stream with it, as the ingest and the fold function do in AWS.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodbstreams as streams;
use pum_shared::store::{Merged, Push, Read, Store, Stored};
use pum_shared::{Allowlist, StoreError};

use crate::fold::{Folded, LogRecord};
use crate::{DynamoStore, KEY, RECORD, REGION as REGION_ATTRIBUTE, Settings, unavailable};

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
            .http_client(crate::http_client())
            .build();
        Client::from_conf(config)
    }

    /// A client of the server's DynamoDB Streams API, with static test credentials.
    pub fn streams_client(&self) -> streams::Client {
        let config = streams::Config::builder()
            .behavior_version(streams::config::BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "pum-test"))
            .http_client(crate::http_client())
            .build();
        streams::Client::from_conf(config)
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

/// Reads the log table's stream as Lambda's event source mapping would: every shard, in order,
/// each record handed on once per poller (a new poller starts again from the oldest record,
/// which is a re-delivery of everything: the fold's checkpoints must make it harmless).
///
/// It stands in for the mapping in tests only: it has no batching window and no parallelism of
/// its own. Like the mapping, it hands a batch on again when its fold failed:
/// [`StreamPoller::rewind`] goes back to where it was before.
pub struct StreamPoller {
    client: streams::Client,
    stream_arn: String,
    /// The last sequence number handed on, by shard.
    after: HashMap<String, String>,
}

impl StreamPoller {
    /// A poller of `store`'s log table on `server`.
    pub async fn new(server: &LocalDynamo, store: &DynamoStore) -> StreamPoller {
        let table = store
            .client()
            .describe_table()
            .table_name(&store.settings().log_table)
            .send()
            .await
            .expect("the log table is there");
        let stream_arn = table
            .table()
            .and_then(|t| t.latest_stream_arn())
            .expect("the log table has a stream")
            .to_owned();
        StreamPoller {
            client: server.streams_client(),
            stream_arn,
            after: HashMap::new(),
        }
    }

    /// Where the poller is: the last sequence number handed on, by shard.
    pub fn positions(&self) -> HashMap<String, String> {
        self.after.clone()
    }

    /// Goes back to `positions`, so that the next poll hands on again what came after them.
    pub fn rewind(&mut self, positions: HashMap<String, String>) {
        self.after = positions;
    }

    /// Every record not handed on yet, by shard, each shard's in order.
    pub async fn poll(&mut self) -> Result<Vec<(String, Vec<LogRecord>)>, StoreError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let described = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            let Some(d) = described.stream_description() else {
                break;
            };
            shards.extend(
                d.shards()
                    .iter()
                    .filter_map(|s| s.shard_id().map(str::to_owned)),
            );
            match d.last_evaluated_shard_id() {
                Some(last) => start = Some(last.to_owned()),
                None => break,
            }
        }
        let mut out = Vec::new();
        for shard in shards {
            let records = self.poll_shard(&shard).await?;
            if !records.is_empty() {
                out.push((shard, records));
            }
        }
        Ok(out)
    }

    async fn poll_shard(&mut self, shard: &str) -> Result<Vec<LogRecord>, StoreError> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard);
        let request = match self.after.get(shard) {
            Some(seq) => request
                .shard_iterator_type(streams::types::ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            None => request.shard_iterator_type(streams::types::ShardIteratorType::TrimHorizon),
        };
        // DynamoDB Local has once answered a fresh stream's first request with
        // TrimmedDataAccessException: this poll reads nothing of the shard, and the next asks
        // again from the same position, as the platform retries.
        let mut iterator = match request.send().await {
            Ok(got) => got.shard_iterator().map(str::to_owned),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_trimmed_data_access_exception()) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(unavailable(e)),
        };
        let mut out = Vec::new();
        while let Some(it) = iterator.take() {
            let got = match self.client.get_records().shard_iterator(it).send().await {
                Ok(got) => got,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_trimmed_data_access_exception()) =>
                {
                    break;
                }
                Err(e) => return Err(unavailable(e)),
            };
            if got.records().is_empty() {
                break;
            }
            for r in got.records() {
                let Some(change) = r.dynamodb() else { continue };
                let Some(sequence) = change.sequence_number() else {
                    continue;
                };
                self.after.insert(shard.to_owned(), sequence.to_owned());
                out.push(log_record(r, change, sequence));
            }
            iterator = got.next_shard_iterator().map(str::to_owned);
        }
        Ok(out)
    }
}

fn log_record(
    r: &streams::types::Record,
    change: &streams::types::StreamRecord,
    sequence: &str,
) -> LogRecord {
    use streams::types::AttributeValue as V;
    let image = change.new_image();
    let string = |name: &str| match image.and_then(|i| i.get(name)) {
        Some(V::S(s)) => s.clone(),
        _ => String::new(),
    };
    LogRecord {
        sequence: sequence.to_owned(),
        insert: r.event_name() == Some(&streams::types::OperationType::Insert),
        key: string(KEY),
        region: string(REGION_ATTRIBUTE),
        record: match image.and_then(|i| i.get(RECORD)) {
            Some(V::B(b)) => b.as_ref().to_vec(),
            _ => Vec::new(),
        },
    }
}

/// A store whose merge writes the push's log item and then folds the log's stream (through a
/// [`StreamPoller`]): what the ingest and the fold function do together, so that the store
/// conformance suite holds of the pair.
#[derive(Clone)]
pub struct FoldedStore {
    /// The store the ingest writes with and the fold folds with.
    pub store: DynamoStore,
    poller: Arc<tokio::sync::Mutex<StreamPoller>>,
}

impl FoldedStore {
    /// `store` folded from its stream on `server`.
    pub async fn new(server: &LocalDynamo, store: DynamoStore) -> FoldedStore {
        let poller = StreamPoller::new(server, &store).await;
        FoldedStore {
            store,
            poller: Arc::new(tokio::sync::Mutex::new(poller)),
        }
    }

    /// Folds whatever the stream holds that this store's poller has not handed on yet. One fold
    /// at a time, as the event source mapping runs one invocation per shard at a time; a fold
    /// that fails leaves the poller where it was, so the next one gets the same records again.
    pub async fn fold_now(&self) -> Result<Folded, StoreError> {
        let mut poller = self.poller.lock().await;
        let before = poller.positions();
        let mut total = Folded::default();
        let folded = async {
            for (shard, records) in poller.poll().await? {
                let folded = self
                    .store
                    .fold(&shard, &records, crate::write::wall_clock_ms())
                    .await?;
                total.applied += folded.applied;
                total.skipped += folded.skipped;
                total.chunks += folded.chunks;
            }
            Ok(())
        }
        .await;
        if let Err(e) = folded {
            // The mapping retries a batch whose fold failed: the next fold gets it again.
            poller.rewind(before);
            return Err(e);
        }
        Ok(total)
    }
}

impl Read for FoldedStore {
    async fn read(&self) -> Result<Stored, StoreError> {
        self.store.read().await
    }
}

impl Store for FoldedStore {
    async fn merge(&self, push: &Push<'_>) -> Result<Merged, StoreError> {
        let merged = self.store.merge(push).await?;
        self.fold_now().await?;
        Ok(merged)
    }

    async fn describe(&self, allowlist: &Allowlist) -> Result<(), StoreError> {
        self.store.describe(allowlist).await
    }
}
