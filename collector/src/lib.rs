//! # pum-collector
//!
//! The collector serves pum's aggregates to Prometheus on `/metrics`. In standalone mode the same
//! process also runs the ingest (`POST /record`) over an embedded durable store: one binary, no
//! cloud, and a drop-in for the original Node aggregator.
//!
//! - [`body`]: how standalone reads a push body: timeout and memory budget.
//! - [`cli`]: the command line (every flag also from a `PUM_*` variable).
//! - [`ingest`]: standalone's adapter to the core's ingest ([`pum_shared::app`]).
//! - [`standalone`]: the ingest and metrics apps and [`standalone::run`].
//! - [`serve`]: serve mode, reading a remote store on a refresh loop.
//! - [`server`]: the HTTP server under every listener: timeouts, connection bound, shutdown.
//! - [`sources`]: the remote stores serve mode reads.
//! - [`render`]: the `prometheus` collector that renders aggregates.
//! - [`telemetry`]: the collector's own metrics.

pub mod body;
pub mod cli;
pub mod ingest;
pub mod render;
pub mod serve;
pub mod server;
pub mod sources;
pub mod standalone;
pub mod telemetry;
