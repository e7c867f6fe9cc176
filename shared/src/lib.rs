//! # pum-shared: the platform-free core of pum
//!
//! pum lets web pages push real-user measurements to an ingest at the edge, which validates each
//! push against an allowlist, pre-aggregates it exactly and stores the aggregates; a collector
//! serves them to Prometheus. This crate is everything those parts agree on, and nothing that ties
//! it to a platform:
//!
//! - [`allowlist`]: the allowlist (the original aggregator's JSON format), compiled once into a
//!   checked [`allowlist::Allowlist`]; bad config names its file, metric and field.
//! - [`ingest`]: the `POST /record` wire format, per-sample validation, and the JSON answers.
//! - [`reason`]: the stable [`Reason`] codes of every refusal and rejection.
//! - [`own`]: pum's own metrics, declared once.
//! - [`aggregate`]: exact, mergeable aggregates ([`aggregate::Aggregate`]), in fixed point so that
//!   merging is commutative and associative, and their snapshot encoding.
//! - [`app`]: the ingest as one function of a request: every route and answer, once.
//! - [`batch`]: batch ids, which make a retried push count once.
//! - [`record`]: the compact, versioned binary delta record of one validated push (allowlist
//!   fingerprint, series by stable index, fixed-point values, batch id), which every store appends
//!   and folds.
//! - [`http`]: CORS and the responses every adapter returns, as plain data.
//! - [`settings`]: one vocabulary of settings (`PUM_*`) for every ingest.
//! - [`ratelimit`]: per-client token buckets in bounded memory, asked before a push is read.
//! - [`store`]: the [`store::Store`] port that the embedded, Durable Object and DynamoDB stores
//!   implement, and (feature `conformance`) the one test suite they all pass.
//!
//! The core never reads the clock and never does I/O: adapters pass in what they need. It builds
//! for `wasm32-unknown-unknown` (where `SystemTime::now()` panics, one more reason for that rule).

pub mod aggregate;
pub mod allowlist;
pub mod app;
pub mod batch;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod own;
pub mod ratelimit;
pub mod reason;
pub mod record;
pub mod settings;
pub mod store;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod corpus;

pub use aggregate::{Aggregate, SeriesKey, SeriesValue};
pub use allowlist::{Allowlist, ConfigError};
pub use ingest::{BodyError, Ingest, PushOutcome};
pub use limits::Limits;
pub use ratelimit::{Decision, RateLimit, RateLimiter};
pub use reason::Reason;
pub use store::{Merged, Push, Read, Store, StoreError, Stored};

/// `Send` on native targets and nothing on wasm, where Worker futures and JS handles are not
/// `Send`. This alias is the only place the core distinguishes the targets.
#[cfg(not(target_arch = "wasm32"))]
pub trait SendOutsideWasm: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> SendOutsideWasm for T {}

/// `Send` on native targets and nothing on wasm, where Worker futures and JS handles are not
/// `Send`. This alias is the only place the core distinguishes the targets.
#[cfg(target_arch = "wasm32")]
pub trait SendOutsideWasm {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> SendOutsideWasm for T {}
