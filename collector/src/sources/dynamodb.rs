//! `serve --source dynamodb`: reads the table the Lambda ingest writes (see `pum-dynamodb`).
//!
//! Each refresh scans the aggregates table page by page ([`DynamoStore`]'s read port): the
//! allowlists the ingests stored (so the collector needs no `--config`) and the totals of each
//! `{region}#{shard}`. Serve mode folds each shard with `merge_max`, so eventually consistent
//! reads (half the read units of strongly consistent ones) never make a counter go backwards.
//! The batches table, one item per push, is never read. Read latency and errors are counted by
//! serve mode around [`Read::read`] (`pum_store_read_seconds`, `pum_store_errors_total{op="read"}`).
//!
//! IAM: the collector needs `dynamodb:Scan` on the aggregates table and nothing else.

use pum_dynamodb::{DynamoStore, Settings};
use pum_shared::{Read, StoreError, Stored};

/// The DynamoDB tables of a Lambda deployment, read-only.
pub struct DynamoDbSource {
    store: DynamoStore,
}

impl DynamoDbSource {
    /// Connects to `table` in `region` (default: the AWS environment's), at `endpoint_url` if
    /// given (a local DynamoDB-compatible server). Credentials come from the usual AWS chain:
    /// environment, profile, web identity (EKS), container or instance role.
    pub async fn connect(
        table: &str,
        region: Option<&str>,
        endpoint_url: Option<&str>,
    ) -> anyhow::Result<DynamoDbSource> {
        let config = pum_dynamodb::sdk_config(region, endpoint_url).await;
        let region = config
            .region()
            .map(ToString::to_string)
            .ok_or_else(|| anyhow::anyhow!("no AWS region: pass --region or set AWS_REGION"))?;
        // The collector only reads; the region here is not written anywhere.
        let settings = Settings::new(table, region);
        Ok(DynamoDbSource {
            store: DynamoStore::from_config(&config, settings),
        })
    }
}

impl Read for DynamoDbSource {
    async fn read(&self) -> Result<Stored, StoreError> {
        self.store.read().await
    }
}
