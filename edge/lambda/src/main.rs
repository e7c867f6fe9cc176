//! The `pum-lambda` bootstrap: reads the configuration once per cold start and serves events.
//!
//! Environment, besides the settings every ingest shares ([`pum_lambda::settings`]):
//!
//! - `PUM_TABLE` (required): the aggregates table (the allowlist's item); `PUM_LOG_TABLE` the log table
//!   (default `{PUM_TABLE}-log`).
//! - `AWS_REGION` (set by Lambda): the writer region, written in every log item (the fold keys
//!   the region's aggregates by it).
//! - `PUM_DYNAMODB_ENDPOINT`: an endpoint override, for a local DynamoDB-compatible server.
//! - `PUM_LOG`: log filter (default `info`).

use std::sync::Arc;

use lambda_http::{Request, service_fn};
use pum_dynamodb::DynamoStore;
use pum_lambda::handle;
use pum_shared::app::App;
use pum_shared::own::Op;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    pum_lambda::init_logging();
    let app = Arc::new(init().await?);
    lambda_http::run(service_fn(move |req: Request| {
        let app = Arc::clone(&app);
        // Every invocation is billed, whatever it answers: counted here, it travels with the
        // next push's log item into the totals (pum_store_operations_total).
        app.store().operations().count(Op::LambdaInvocations, 1.0);
        async move { Ok::<_, std::convert::Infallible>(handle(&app, req).await) }
    }))
    .await
}

async fn init() -> anyhow::Result<App<DynamoStore>> {
    let var = |name: &str| std::env::var(name).ok();
    let config = pum_lambda::settings(var).map_err(anyhow::Error::msg)?;
    let store = pum_lambda::store(var, |settings| {
        if let Some(log) = var("PUM_LOG_TABLE").filter(|s| !s.is_empty()) {
            settings.log_table = log;
        }
        Ok(())
    })
    .await?;
    let settings = store.settings();
    tracing::info!(
        table = %settings.table,
        log_table = %settings.log_table,
        region = %settings.region,
        metrics = config.ingest.allowlist().len(),
        rate_limit = config.rate_limit.per_second,
        rate_burst = config.rate_limit.burst,
        "pum-lambda ready"
    );
    Ok(App::new(config, store))
}
