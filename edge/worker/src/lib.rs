//! # pum-worker: pum's Cloudflare Worker
//!
//! The Worker is an adapter of the core (`pum-shared`'s [`pum_shared::app`]): it answers every
//! ingest route exactly as standalone and the Lambda do. What differs is where totals live.
//!
//! ```text
//! browser --POST /record?batch=ID--> Worker: the core validates, makes the push's delta record
//!            one Durable Object request --> Shard n (of PUM_SHARDS, default 1; by the batch
//!            id's hash, or at random for a push without one)
//!                 admits the record into the open group unless the batch id was applied within
//!                 the hour; the group (every push that arrived within PUM_COMMIT_WAIT_MS, 25 ms,
//!                 or while the last write was in flight) is written as ONE row of its SQLite
//!                 `pending` table; each push is answered once that row is durable
//!            <-- the core's answer; any failure: 503 + Retry-After, nothing applied
//! Shard alarm, every PUM_FOLD_SECONDS (default 10) while pushes arrive:
//!     fold `pending` into the cumulative `totals` (one transaction); every
//!     PUM_PUBLISH_SECONDS (default 30) while they change, publish the totals and the
//!     allowlists to Workers KV under `shard/<n>`
//! collector --GET /export (bearer PUM_EXPORT_TOKEN)--> Worker: every `shard/*` from KV
//! ```
//!
//! Workers KV has no atomic update, so read-modify-write counters on it lose increments; a
//! Durable Object is single-threaded and transactional, so merging there is exact. Pushes that
//! arrive together share a row write (one push at a time is one row each), and what folds and
//! KV writes cost is per shard per period, whatever the traffic. The Worker counts its requests
//! and its Durable Object requests and carries them into the totals in the next push it stores
//! (`pum_store_operations_total`); the shards count their rows, alarms and KV writes.
//!
//! Layout:
//! - [`settings`]: the Worker's configuration from its vars (`PUM_*`).
//! - [`export`]: the export endpoint's token check and document.
//! - [`route`]: a request URL's path and query.
//! - `pum_shard` (stores/shard): what a shard stores, how it folds and deduplicates, platform-free
//!   so that the store conformance suite runs on it natively.
//! - wasm32 only, all the code that touches the platform: `entry` (the fetch handler), `store`
//!   (the core's store over the shards), `durable` (the `Shard` Durable Object) and `sql` (the
//!   shard's SQL over the object's storage).
//! - `src/bin/assets.rs`: lays out the static assets and their `_headers` from the core
//!   (build.sh runs it).

pub mod export;
pub mod route;
pub mod settings;

#[cfg(target_arch = "wasm32")]
mod durable;
#[cfg(target_arch = "wasm32")]
mod entry;
#[cfg(target_arch = "wasm32")]
mod sql;
#[cfg(target_arch = "wasm32")]
mod store;
