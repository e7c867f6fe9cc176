//! # pum-worker: pum's Cloudflare Worker
//!
//! The Worker serves the same `POST /record` as `pum-collector standalone`, from the same core
//! (`pum-shared`): same validation, answers, limits and CORS. What differs is where totals live.
//!
//! ```text
//! browser --POST /record--> Worker: validate, turn the push into a delta (pum-shared)
//!            one Durable Object request --> Shard n (of SHARDS, picked at random)
//!                 appends the delta as ONE row of its SQLite `pending` table, answers 204
//!                 (the row is durable before the answer: output gates hold it until written)
//!            <-- 204: the Worker answers the push; any failure: 503 + Retry-After, nothing applied
//! Shard alarm, every FOLD_SECONDS (default 5) while pushes arrive:
//!     fold `pending` into the cumulative `totals` (one transaction), then write the shard's
//!     cumulative snapshot to Workers KV under `shard/<n>` (its own key, <= 1 write/s)
//! collector --GET /export (bearer EXPORT_TOKEN)--> Worker: every `shard/*` snapshot from KV
//! ```
//!
//! Workers KV has no atomic update, so read-modify-write counters on it lose increments; a
//! Durable Object is single-threaded and transactional, so merging there is exact. Rows written
//! per push are constant (one), and what folds and KV writes cost is per shard per fold, whatever
//! the traffic.
//!
//! Layout:
//! - [`settings`]: the Worker's configuration from its vars (allowlist, origins, shards, token,
//!   rate limit).
//! - `pum_shard` (stores/shard): what a shard stores and how it folds, platform-free so it is
//!   tested natively.
//! - [`export`]: the export endpoint's token check and document.
//! - `entry` and `durable` (wasm32 only): the Workers runtime glue, the fetch handler and the
//!   `Shard` Durable Object. They are all the code that touches the platform.

pub mod export;
pub mod settings;

#[cfg(target_arch = "wasm32")]
mod durable;
#[cfg(target_arch = "wasm32")]
mod entry;
