//! `serve --source cloudflare`: reads the Cloudflare Worker's `GET /export` (edge/worker).
//!
//! The Worker answers with every shard's cumulative snapshot, as its Durable Objects last
//! published them to Workers KV, and the allowlists they were validated against:
//!
//! ```json
//! {"v":1,"allowlists":[<description>, ...],"shards":[{"shard":"shard/0","snapshot":{"v":1,"series":[...]}}, ...]}
//! ```
//!
//! Each snapshot is `pum-shared`'s portable format, each allowlist its canonical description
//! ([`pum_shared::Allowlist::description`]), so the collector needs no copy of the allowlist.
//! Serve mode folds each shard into what it saw before with `merge_max`, so a stale KV read
//! never makes a counter go backwards.

use std::time::Duration;

use pum_shared::aggregate::Snapshot;
use pum_shared::{Aggregate, Allowlist, StoreError, Stored};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Reads a Worker's export endpoint with its bearer token.
#[derive(Debug, Clone)]
pub struct CloudflareSource {
    client: reqwest::Client,
    export_url: String,
    token: String,
}

/// The export document.
#[derive(Debug, Deserialize)]
struct ExportDocument {
    v: u32,
    /// Absent from the export of a Worker older than the allowlists in the store.
    #[serde(default)]
    allowlists: Vec<Box<RawValue>>,
    shards: Vec<ShardSnapshot>,
}

#[derive(Debug, Deserialize)]
struct ShardSnapshot {
    shard: String,
    snapshot: Snapshot,
}

impl CloudflareSource {
    /// A source for the Worker at `url` (its base URL, e.g. `https://pum.example.workers.dev`, or
    /// the full `.../export` URL), sending `token` as `Authorization: Bearer`.
    pub fn new(url: &str, token: &str) -> anyhow::Result<Self> {
        let url = url.trim().trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            anyhow::bail!(
                "--url {url:?} must start with https:// (or http:// for a local wrangler dev)"
            );
        }
        if token.is_empty() {
            anyhow::bail!("--token is empty: pass the Worker's PUM_EXPORT_TOKEN");
        }
        let export_url = if url.ends_with("/export") {
            url.to_owned()
        } else {
            format!("{url}/export")
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("pum-collector/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(CloudflareSource {
            client,
            export_url,
            token: token.to_owned(),
        })
    }

    /// The URL read.
    pub fn export_url(&self) -> &str {
        &self.export_url
    }

    /// One read at start-up that fails only on mistakes a retry cannot fix (a refused token, a URL
    /// that is not a pum Worker), so that they stop the collector with a clear message; an
    /// unreachable Worker is left to the refresh loop.
    pub async fn check(&self) -> anyhow::Result<()> {
        match self.fetch().await {
            Err(Fetch::Refused(status)) => anyhow::bail!(
                "{} answered {status}: the token was refused; pass the Worker's PUM_EXPORT_TOKEN as --token",
                self.export_url
            ),
            Err(Fetch::NotFound) => anyhow::bail!(
                "{} answered 404: --url must be the base URL of pum's Worker",
                self.export_url
            ),
            Err(Fetch::Store(e)) => {
                tracing::warn!(error = %e, "the first read of the Worker failed; retrying");
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    async fn fetch(&self) -> Result<Stored, Fetch> {
        let resp = self
            .client
            .get(&self.export_url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Fetch::Store(StoreError::Unavailable(format!("GET export: {e}"))))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 => return Err(Fetch::Refused(status)),
            404 => return Err(Fetch::NotFound),
            _ => {
                return Err(Fetch::Store(StoreError::Unavailable(format!(
                    "GET export answered {status}"
                ))));
            }
        }
        let text = resp
            .text()
            .await
            .map_err(|e| Fetch::Store(StoreError::Unavailable(format!("GET export: {e}"))))?;
        parse_export(&text).map_err(Fetch::Store)
    }
}

enum Fetch {
    Refused(u16),
    NotFound,
    Store(StoreError),
}

impl pum_shared::Read for CloudflareSource {
    async fn read(&self) -> Result<Stored, StoreError> {
        self.fetch().await.map_err(|e| match e {
            Fetch::Store(e) => e,
            Fetch::Refused(status) => {
                StoreError::Unavailable(format!("the Worker refused the export token ({status})"))
            }
            Fetch::NotFound => {
                StoreError::Unavailable("the export endpoint is not there (404)".into())
            }
        })
    }
}

/// Decodes the export document into per-shard totals and the allowlists that describe them.
pub fn parse_export(text: &str) -> Result<Stored, StoreError> {
    let doc: ExportDocument = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("the export is not the expected JSON: {e}")))?;
    if doc.v != 1 {
        return Err(StoreError::Corrupt(format!(
            "export version {} is not supported (this build reads version 1)",
            doc.v
        )));
    }
    let allowlists = doc
        .allowlists
        .iter()
        .map(|d| {
            Allowlist::from_description(d.get()).map_err(|e| {
                StoreError::Corrupt(format!("an allowlist of the export does not compile: {e}"))
            })
        })
        .collect::<Result<_, _>>()?;
    let shards = doc
        .shards
        .into_iter()
        .map(|s| {
            Aggregate::try_from(s.snapshot)
                .map(|agg| (s.shard.clone(), agg))
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", s.shard)))
        })
        .collect::<Result<_, _>>()?;
    Ok(Stored {
        allowlists,
        shards,
        fold_lag: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use pum_shared::{Read, SeriesKey, SeriesValue};

    const DOC: &str = r#"{"v":1,"shards":[
        {"shard":"shard/0","snapshot":{"v":1,"series":[{"metric":"a_total","labels":{"k":"v"},"counter":"2500000"}]}},
        {"shard":"shard/1","snapshot":{"v":1,"series":[{"metric":"h","labels":{},"buckets":[1,0,2],"sum":"7"}]}}]}"#;

    #[test]
    fn parses_the_workers_export() {
        let stored = parse_export(DOC).expect("parses");
        let shards = &stored.shards;
        assert!(stored.allowlists.is_empty(), "an export without allowlists");
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].0, "shard/0");
        assert_eq!(
            shards[0].1.get(&SeriesKey::new("a_total", &[("k", "v")])),
            Some(&SeriesValue::Counter { micros: 2_500_000 })
        );
        assert_eq!(
            shards[1].1.get(&SeriesKey::new("h", &[])),
            Some(&SeriesValue::Histogram {
                buckets: vec![1, 0, 2],
                sum_micros: 7
            })
        );
        assert!(matches!(
            parse_export(r#"{"v":2,"shards":[]}"#),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            parse_export("<html>"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn the_allowlists_of_the_export_are_compiled() {
        let list = Allowlist::example();
        let doc = format!(
            r#"{{"v":1,"allowlists":[{}],"shards":[]}}"#,
            list.description()
        );
        let stored = parse_export(&doc).expect("parses");
        assert_eq!(stored.allowlists.len(), 1);
        assert_eq!(stored.allowlists[0].fingerprint(), list.fingerprint());
        assert!(
            stored.allowlists[0]
                .get("demo_feature_usage_total")
                .is_some()
        );
        let bad = r#"{"v":1,"allowlists":[{"allowedMetrics":"no"}],"shards":[]}"#;
        assert!(matches!(parse_export(bad), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn urls_and_tokens_are_checked() {
        assert_eq!(
            CloudflareSource::new("https://pum.example.workers.dev/", "t")
                .expect("ok")
                .export_url(),
            "https://pum.example.workers.dev/export"
        );
        assert_eq!(
            CloudflareSource::new("http://127.0.0.1:8787/export", "t")
                .expect("ok")
                .export_url(),
            "http://127.0.0.1:8787/export"
        );
        assert!(CloudflareSource::new("pum.example.workers.dev", "t").is_err());
        assert!(CloudflareSource::new("https://pum.example.workers.dev", "").is_err());
    }

    #[tokio::test]
    async fn reads_with_the_token_and_stops_on_a_refused_one() {
        let app = Router::new().route(
            "/export",
            get(|headers: HeaderMap| async move {
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Bearer right") => (StatusCode::OK, DOC),
                    _ => (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = format!("http://{addr}");

        let good = CloudflareSource::new(&base, "right").expect("source");
        good.check().await.expect("the right token passes");
        assert_eq!(good.read().await.expect("reads").shards.len(), 2);

        let bad = CloudflareSource::new(&base, "wrong").expect("source");
        let e = bad
            .check()
            .await
            .expect_err("a refused token stops start-up");
        assert!(e.to_string().contains("EXPORT_TOKEN"), "{e}");
        assert!(matches!(bad.read().await, Err(StoreError::Unavailable(_))));

        let missing = CloudflareSource::new(&format!("{base}/nothing"), "right").expect("source");
        assert!(missing.check().await.is_err());
    }
}
