//! The `pum-fold` bootstrap: the fold function on the log table's stream.
//!
//! Lambda's event source mapping hands it the log items the ingest wrote, one stream shard's
//! batch at a time, in order; it folds each batch into the totals exactly once
//! ([`pum_dynamodb::fold`]) and fails the invocation if it cannot, so that the mapping retries
//! the batch (the shard's checkpoint makes a retry apply only what was not applied).
//!
//! Environment:
//!
//! - `PUM_TABLE` (required): the totals table (which also holds the allowlists and the
//!   checkpoints).
//! - `PUM_SHARDS`: totals items per metric and region (default 1; see
//!   [`pum_dynamodb::Settings::shards`]).
//! - `AWS_REGION` (set by Lambda).
//! - `PUM_DYNAMODB_ENDPOINT`: an endpoint override, for a local DynamoDB-compatible server.
//! - `PUM_LOG`: log filter (default `info`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_lambda_events::event::dynamodb::{TimeWindowEvent, TimeWindowEventResponse};
use lambda_runtime::{LambdaEvent, service_fn};
use pum_dynamodb::DynamoStore;
use pum_shared::own::Op;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    pum_lambda::init_logging();
    let store = Arc::new(init().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<TimeWindowEvent>| {
        let store = Arc::clone(&store);
        async move { fold(&store, &event.payload).await }
    }))
    .await
}

async fn init() -> anyhow::Result<DynamoStore> {
    let var = |name: &str| std::env::var(name).ok();
    let store = pum_lambda::store(var, |settings| {
        if let Some(shards) = var("PUM_SHARDS") {
            settings.shards = shards
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .context("PUM_SHARDS must be a number from 1 to 1000")?;
        }
        Ok(())
    })
    .await?;
    let settings = store.settings();
    tracing::info!(table = %settings.table, shards = settings.shards, "pum-fold ready");
    Ok(store)
}

async fn fold(
    store: &DynamoStore,
    event: &TimeWindowEvent,
) -> Result<TimeWindowEventResponse, lambda_runtime::Error> {
    // Billed whatever it does: carried by the next transaction this process commits.
    store.operations().count(Op::LambdaInvocations, 1.0);
    let (shard, records) = pum_lambda::stream::log_records(event)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let folded = store.fold(&shard, &records, now_ms).await?;
    tracing::info!(
        shard = %shard,
        applied = folded.applied,
        skipped = folded.skipped,
        transactions = folded.chunks,
        "folded"
    );
    // No window state is kept: each invocation folds what it was given.
    Ok(pum_lambda::stream::folded())
}
