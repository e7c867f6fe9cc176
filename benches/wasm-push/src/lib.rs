//! # pum-wasm-push: the Worker's CPU per push, without HTTP
//!
//! The design's budget for the Worker is CPU per push of the push path in wasm: at most 0.2 ms.
//! The push path is what the Worker and its Durable Object compute per push besides platform
//! I/O. [`Bench`] runs it in a loop, one push after the other, each with its own batch id:
//!
//! 1. the Worker: [`pum_shared::app::App::handle`] on the request the fetch handler builds
//!    (edge/worker/src/entry.rs): rate limit by client address, batch id, origin, then the body
//!    parsed and validated against the Worker's default allowlist (the example and the browser
//!    pack) into the push's delta and answer;
//! 2. its store (edge/worker/src/store.rs): the push's delta record and the shard it goes to;
//! 3. the shard (edge/worker/src/durable.rs, [`pum_shard::Shard::merge`]): the record decoded
//!    with the allowlist its fingerprint names, the batch id checked against the window, the
//!    record appended.
//!
//! Left out: HTTP, the request between the Worker and the Durable Object, and SQLite (the shard
//! runs over [`sql::MemorySql`], a few vectors). The shard's fold, which its alarm runs every few
//! seconds over all the records pending, is timed on its own ([`Bench::fold`]).
//!
//! Every push is checked: its answer must be the one expected and the shard must have applied
//! it; [`Bench::check`] then compares the shard's folded totals with the number of pushes times
//! the push's delta. So the bench cannot time a failure path.
//!
//! The same code runs as wasm under Node's V8, through the wasm-bindgen exports of `wasm.rs`,
//! and natively (src/main.rs), in one run of edge/worker/cpu-bench.sh; `count.rs` instruments
//! the wasm module to count the wasm instructions it executes.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use pum_shared::aggregate::{Aggregate, SeriesValue};
use pum_shared::app::{self, App, Method};
use pum_shared::ingest::RequestContext;
use pum_shared::settings;

#[cfg(not(target_arch = "wasm32"))]
pub mod count;
pub mod sql;
pub mod store;
#[cfg(target_arch = "wasm32")]
mod wasm;

use store::ShardStore;

/// The realistic page-load beacon: three counters, eight histogram observations, 1.4 KB.
const BEACON: &str = include_str!("../../../fixtures/beacon.json");
/// The bad-push corpus, whose case [`MIXED_CASE`] is a push with valid and invalid samples.
const CORPUS: &str = include_str!("../../../fixtures/bad-pushes.json");
/// The corpus case the mixed push is.
const MIXED_CASE: &str = "valid and invalid together";

/// The clock of the first push: 2026-01-01T00:00:00Z. Each push is a millisecond later.
const START_MS: u64 = 1_767_225_600_000;
/// Client addresses the pushes come from, in turn (from 198.18.0.0/15, the range for
/// benchmarks): each sends a push every 4 s of the bench's clock, well within the rate limit,
/// which is checked for every push as the Worker does.
const CLIENTS: u32 = 4096;
/// The origin of the pushes (any origin is allowed by default).
const ORIGIN: &str = "https://shop.example";
/// The country Cloudflare reports for the pushes.
const COUNTRY: &str = "DE";

/// A push the bench sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixture {
    /// fixtures/beacon.json, as `navigator.sendBeacon` sends it (`text/plain`).
    Beacon,
    /// The bad-push corpus's case "valid and invalid together": two samples accepted, two
    /// rejected, answered 200 with the rejections named.
    Mixed,
}

impl Fixture {
    /// Every fixture, in the order of the report.
    pub const ALL: [Fixture; 2] = [Fixture::Beacon, Fixture::Mixed];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Fixture::Beacon => "beacon",
            Fixture::Mixed => "mixed",
        }
    }

    /// The fixture named `name`.
    pub fn parse(name: &str) -> Result<Fixture, String> {
        Fixture::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("no fixture {name:?}: beacon or mixed"))
    }

    /// Its `Content-Type`, body and the number of samples it must have accepted.
    fn push(self) -> Result<(&'static str, String, usize), String> {
        match self {
            Fixture::Beacon => Ok(("text/plain;charset=UTF-8", BEACON.to_owned(), 11)),
            Fixture::Mixed => {
                let corpus: serde_json::Value =
                    serde_json::from_str(CORPUS).map_err(|e| format!("bad-pushes.json: {e}"))?;
                let case = corpus["cases"]
                    .as_array()
                    .and_then(|cases| cases.iter().find(|c| c["name"] == MIXED_CASE))
                    .ok_or_else(|| format!("bad-pushes.json has no case {MIXED_CASE:?}"))?;
                let content_type = match case["contentType"].as_str() {
                    Some("application/json") => "application/json",
                    other => return Err(format!("{MIXED_CASE}: content type {other:?}")),
                };
                let accepted = case["accepted"].as_u64().unwrap_or(0) as usize;
                Ok((content_type, case["bodyJson"].to_string(), accepted))
            }
        }
    }
}

/// What every push of a fixture must be answered, and add.
struct Expected {
    status: u16,
    body: String,
    delta: Aggregate,
}

/// The push path over one shard, with the state it keeps between pushes (the rate limiter's
/// buckets, the shard's window of batch ids, its pending records and totals).
pub struct Bench {
    app: App<ShardStore>,
    fixture: Fixture,
    content_type: &'static str,
    body: String,
    expected: Expected,
    /// Pushes sent so far: the next push's batch id, client and clock follow from it.
    sent: u64,
    /// The next push's query string, reused.
    query: String,
}

/// Runs a future that never waits: the bench's store does no I/O.
fn ready<F: Future>(f: F) -> Result<F::Output, String> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err("the push path waited, which the bench's store never does".into()),
    }
}

/// `delta` `n` times over, computed on its own rather than by merging.
fn times(delta: &Aggregate, n: u64) -> Aggregate {
    let mut out = Aggregate::new();
    for (key, value) in delta.iter() {
        let value = match value {
            SeriesValue::Counter { micros } => SeriesValue::Counter {
                micros: micros * u128::from(n),
            },
            SeriesValue::Histogram {
                buckets,
                sum_micros,
            } => SeriesValue::Histogram {
                buckets: buckets.iter().map(|b| b * n).collect(),
                sum_micros: sum_micros * u128::from(n),
            },
        };
        out.add_value(key.clone(), value);
    }
    out
}

impl Bench {
    /// The Worker's ingest with its default settings (wrangler.toml's vars) over an empty
    /// shard, and the push of `fixture`.
    pub fn new(fixture: Fixture) -> Result<Bench, String> {
        let no_vars = |_: &str| None::<String>;
        let allowlist = settings::allowlist(&no_vars, &[])?;
        let app_settings = settings::ingest(&no_vars, allowlist)?;
        let (content_type, body, accepted) = fixture.push()?;
        let ctx = RequestContext {
            country: Some(COUNTRY.to_owned()),
        };
        let outcome = app_settings
            .ingest
            .push_with(&ctx, Some(content_type), body.as_bytes());
        if outcome.accepted != accepted || outcome.refused.is_some() {
            return Err(format!(
                "the {} push accepted {} samples (refused: {:?}), not {accepted}",
                fixture.name(),
                outcome.accepted,
                outcome.refused
            ));
        }
        Ok(Bench {
            app: App::new(app_settings, ShardStore::new()),
            fixture,
            content_type,
            body,
            expected: Expected {
                status: outcome.status,
                body: outcome.body,
                delta: outcome.delta,
            },
            sent: 0,
            query: String::with_capacity(64),
        })
    }

    /// The push's body size in bytes.
    pub fn body_bytes(&self) -> usize {
        self.body.len()
    }

    /// Pushes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn now_ms(&self) -> u64 {
        START_MS + self.sent
    }

    /// Sends `pushes` pushes, each with a new batch id, from the next client, a millisecond
    /// after the last. Fails at the first push answered otherwise than expected, or if the shard
    /// did not apply every one.
    pub fn run(&mut self, pushes: u32) -> Result<(), String> {
        let store = self.app.store();
        let before = store.stats().map_err(|e| e.to_string())?;
        let first_client = u32::from(Ipv4Addr::new(198, 18, 0, 0));
        for _ in 0..pushes {
            self.query.clear();
            // 24 characters of A-Za-z0-9: a valid batch id, new for every push.
            let _ = write!(self.query, "batch=pumbench{:016x}", self.sent);
            let client = Ipv4Addr::from(first_client + (self.sent % u64::from(CLIENTS)) as u32);
            let req = app::Request {
                method: Method::Post,
                path: "/record",
                query: Some(&self.query),
                origin: Some(ORIGIN),
                content_type: Some(self.content_type),
                if_none_match: None,
                country: Some(COUNTRY),
                client: Some(IpAddr::V4(client)),
            };
            let response = ready(self.app.handle(&req, self.body.as_bytes(), self.now_ms()))?;
            if response.status != self.expected.status || response.body != self.expected.body {
                return Err(format!(
                    "push {} of {} was answered {} {}, not {} {}",
                    self.sent,
                    self.fixture.name(),
                    response.status,
                    response.body,
                    self.expected.status,
                    self.expected.body
                ));
            }
            self.sent += 1;
        }
        let after = store.stats().map_err(|e| e.to_string())?;
        let (applied, replayed) = (after.pushes - before.pushes, after.replays - before.replays);
        if applied != u64::from(pushes) || replayed != 0 {
            return Err(format!(
                "the shard applied {applied} and replayed {replayed} of {pushes} pushes"
            ));
        }
        Ok(())
    }

    /// Folds the shard's pending records into its totals, as its alarm does; returns how many.
    pub fn fold(&mut self) -> Result<usize, String> {
        self.app
            .store()
            .fold(self.now_ms())
            .map_err(|e| e.to_string())
    }

    /// Checks the shard's totals, folded and pending: exactly the push's delta times the pushes
    /// sent, besides the rows the shard counts it wrote (`pum_store_operations_total`). Returns a
    /// line that says so.
    pub fn check(&self) -> Result<String, String> {
        let totals = self.app.store().totals().map_err(|e| e.to_string())?;
        let totals = pum_shared::own::without_operations(&totals);
        let expected = times(&self.expected.delta, self.sent);
        if totals != expected {
            let wrong = expected
                .iter()
                .find(|(k, v)| totals.get(k) != Some(*v))
                .map(|(k, v)| format!("{k:?}: {:?}, expected {v:?}", totals.get(k)));
            return Err(format!(
                "after {} {} pushes the shard's totals ({} series) are not the expected ({} \
                 series): {}",
                self.sent,
                self.fixture.name(),
                totals.len(),
                expected.len(),
                wrong.unwrap_or_else(|| "a series too many".into())
            ));
        }
        Ok(format!(
            "{} {} pushes applied; {} series, each the push's delta times {}",
            self.sent,
            self.fixture.name(),
            totals.len(),
            self.sent
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_push_is_applied_and_the_totals_add_up() {
        for fixture in Fixture::ALL {
            let mut bench = Bench::new(fixture).expect("the fixture is valid");
            bench.run(30).expect("pushed");
            assert_eq!(bench.fold(), Ok(30));
            bench.run(20).expect("pushed");
            // 30 folded and 20 pending.
            let checked = bench.check().expect("the totals add up");
            assert!(checked.starts_with("50 "), "{checked}");
        }
    }

    #[test]
    fn a_push_answered_otherwise_stops_the_bench() {
        let mut bench = Bench::new(Fixture::Beacon).expect("valid");
        bench.run(1).expect("pushed");
        // The same batch id again: answered as the push was, so only the shard's count shows
        // that it was replayed, not applied.
        bench.sent = 0;
        let e = bench.run(1).expect_err("a replay is not a push applied");
        assert!(e.contains("applied 0 and replayed 1"), "{e}");
    }
}
