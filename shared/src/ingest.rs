//! `POST /record`: parse a push, validate each sample, and turn the valid ones into a delta.
//!
//! The wire format is the original aggregator's: a JSON array of samples,
//!
//! ```json
//! [{"metricName": "clicks_total", "metricType": "counter", "labels": {"button": "buy"}, "inc": 1},
//!  {"metricName": "api_seconds", "metricType": "histogram", "labels": {}, "observations": [0.12, 3.4]}]
//! ```
//!
//! sent as `application/json` or, by `navigator.sendBeacon`, as `text/plain`.
//!
//! A body that is not JSON, not an array, too large, empty or with too many samples is refused
//! whole. Otherwise each sample is judged on its own: the valid ones are recorded and each
//! rejected one is named in the answer (index, metric, reason). Nothing valid is dropped because
//! a neighbour was bad. Every refusal and rejection is counted by its [`Reason`] in pum's own
//! metrics, which travel in the same delta as the data (see [`crate::own`]).

use serde::Serialize;
use serde::de;
use serde_json::value::RawValue;

use crate::aggregate::{Aggregate, Overflow};
use crate::allowlist::Allowlist;
use crate::limits::Limits;
use crate::own::OwnKeys;
pub use crate::reason::Reason;
use decode::{Field, LabelName, Number, Observations, Sample, Stream, raw_sample};

/// One rejected sample, as named in the answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejection {
    /// Position of the sample in the pushed array.
    pub index: usize,
    /// Its metricName, if it had a readable one (cut to 200 bytes).
    pub metric: Option<String>,
    /// Why.
    pub reason: Reason,
    /// What, for a person.
    pub message: String,
}

/// The result of one push: what to store, and what to answer.
#[derive(Clone, Debug)]
pub struct PushOutcome {
    /// HTTP status to answer once `delta` is stored.
    pub status: u16,
    /// JSON body to answer.
    pub body: String,
    /// Everything to merge into the store: the valid samples and pum's own counters about this
    /// push (so refusals are counted too). Merge it whole before answering; if the store fails,
    /// answer [`crate::http::store_unavailable`] instead and nothing of the push is applied.
    pub delta: Aggregate,
    /// Number of samples accepted.
    pub accepted: usize,
    /// Rejected samples.
    pub rejected: Vec<Rejection>,
    /// Set when the whole push was refused.
    pub refused: Option<Reason>,
}

/// Why an adapter could not read a push's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The body is longer than [`Limits::max_body_bytes`].
    TooLarge,
    /// The body could not be read (the client broke off, the platform failed to stream it).
    Unreadable,
    /// The body did not arrive within the server's body timeout.
    TimedOut,
}

/// What the edge knows about a request, for labels the allowlist fills in at the edge
/// ([`crate::allowlist::LabelSource`]). Nothing here is stored except through such labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's country, ISO 3166-1 alpha-2 (e.g. `DE`), if the platform reports one.
    pub country: Option<String>,
}

/// The ingest core: an allowlist and limits. Cheap to share; holds no mutable state.
#[derive(Clone, Debug)]
pub struct Ingest {
    allowlist: Allowlist,
    limits: Limits,
    keys: OwnKeys,
}

#[derive(Serialize)]
struct Answer<'a> {
    accepted: usize,
    rejected: &'a [Rejection],
}

#[derive(Serialize)]
struct Refusal<'a> {
    error: Reason,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<&'a [Rejection]>,
}

impl Ingest {
    /// An ingest core over a compiled allowlist.
    pub fn new(allowlist: Allowlist, limits: Limits) -> Self {
        Ingest {
            allowlist,
            limits,
            keys: OwnKeys::new(),
        }
    }

    /// The allowlist.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Handles one push body with its `Content-Type`, with no request context.
    pub fn push(&self, content_type: Option<&str>, body: &[u8]) -> PushOutcome {
        self.push_with(&RequestContext::default(), content_type, body)
    }

    /// Handles one push body with its `Content-Type`; labels with a `source` are filled in
    /// from `ctx`.
    pub fn push_with(
        &self,
        ctx: &RequestContext,
        content_type: Option<&str>,
        body: &[u8],
    ) -> PushOutcome {
        self.push_inner(ctx, content_type, body, true)
    }

    /// [`Ingest::push_with`], with the fast path optional so that tests can check both paths
    /// give the same outcome.
    fn push_inner(
        &self,
        ctx: &RequestContext,
        content_type: Option<&str>,
        body: &[u8],
        fast_path: bool,
    ) -> PushOutcome {
        if !content_type.is_some_and(is_accepted_content_type) {
            return self.refuse(
                Reason::UnsupportedMediaType,
                "send the samples as application/json or text/plain",
            );
        }
        if body.len() > self.limits.max_body_bytes {
            return self.refuse_body(BodyError::TooLarge);
        }
        // The fast path reads the body once, recording typed samples as it goes. Anything it
        // cannot type (a string where a number belongs, a sample that is not an object, ...)
        // sends the push down the slow path, which starts over and reads each field on its own
        // to name each problem.
        let mut delta = Aggregate::new();
        let mut accepted = 0usize;
        let mut rejected = Vec::new();
        let fast = fast_path
            && Stream {
                ingest: self,
                ctx,
                delta: &mut delta,
                accepted: &mut accepted,
                rejected: &mut rejected,
            }
            .read(body);
        if !fast {
            delta = Aggregate::new();
            accepted = 0;
            rejected.clear();
            let samples = match self.raw_samples(body) {
                Ok(samples) => samples,
                Err(refusal) => return refusal,
            };
            for (index, raw) in samples.iter().enumerate() {
                match raw_sample(raw) {
                    Ok(sample) => {
                        self.record(ctx, index, sample, &mut delta, &mut accepted, &mut rejected)
                    }
                    Err(message) => rejected.push(Rejection {
                        index,
                        metric: None,
                        reason: Reason::InvalidSample,
                        message,
                    }),
                }
            }
        }
        if accepted == 0 {
            let message = "no sample in the push was valid; each is listed with its reason";
            let body = serde_json::to_string(&Refusal {
                error: Reason::NoValidSamples,
                message,
                rejected: Some(&rejected),
            })
            .unwrap_or_default();
            let mut delta = Aggregate::new();
            self.keys
                .count(&mut delta, 0, &rejected, Some(Reason::NoValidSamples));
            return PushOutcome {
                status: Reason::NoValidSamples.status(),
                body,
                delta,
                accepted,
                rejected,
                refused: Some(Reason::NoValidSamples),
            };
        }
        self.keys.count(&mut delta, accepted, &rejected, None);
        let body = serde_json::to_string(&Answer {
            accepted,
            rejected: &rejected,
        })
        .unwrap_or_default();
        PushOutcome {
            status: 200,
            body,
            delta,
            accepted,
            rejected,
            refused: None,
        }
    }

    /// Refuses a whole push (the adapter found the body too large while reading it, the origin is
    /// not allowed, the client is rate limited, ...). The outcome's delta counts the refusal.
    pub fn refuse(&self, reason: Reason, message: &str) -> PushOutcome {
        let body = serde_json::to_string(&Refusal {
            error: reason,
            message,
            rejected: None,
        })
        .unwrap_or_default();
        let mut delta = Aggregate::new();
        self.keys.count(&mut delta, 0, &[], Some(reason));
        PushOutcome {
            status: reason.status(),
            body,
            delta,
            accepted: 0,
            rejected: Vec::new(),
            refused: Some(reason),
        }
    }

    /// The answer to a push refused by the rate limiter ([`crate::ratelimit`]): 429 with
    /// `Retry-After`, and the JSON of every refusal. Nothing is stored for it: the adapter counts
    /// it later with [`Ingest::count_refused`].
    pub fn rate_limited(&self, retry_after_secs: u32) -> crate::http::Response {
        let reason = Reason::RateLimited;
        let message = format!("too many pushes from this address; retry in {retry_after_secs} s");
        let body = serde_json::to_string(&Refusal {
            error: reason,
            message: &message,
            rejected: None,
        })
        .unwrap_or_default();
        let mut r = crate::http::Response::json(reason.status(), body);
        r.headers
            .push(("retry-after", retry_after_secs.to_string().into()));
        r
    }

    /// Adds `n` pushes refused for `reason` to `delta`, a delta about to be stored: the same
    /// counters [`Ingest::refuse`] puts in a refusal's delta, `n` times. This is how refusals
    /// that were not stored one by one (rate limiting) get counted.
    pub fn count_refused(&self, delta: &mut Aggregate, reason: Reason, n: u64) {
        if n > 0 {
            self.keys.refused(delta, reason, n);
        }
    }

    /// Refuses a push whose delta the store would not take because it would overflow a total
    /// ([`crate::StoreError::Overflow`]). The answer names the metric, which the client sent;
    /// the outcome's delta counts the refusal.
    pub fn refuse_overflow(&self, overflow: &Overflow) -> PushOutcome {
        self.refuse(
            Reason::TotalOverflow,
            &format!(
                "adding this push would overflow the stored total of {}; nothing of it was recorded",
                cut(overflow.key.metric(), 200)
            ),
        )
    }

    /// Splits a body into raw samples, or refuses it whole with the reason.
    fn raw_samples<'a>(&self, body: &'a [u8]) -> Result<Vec<&'a RawValue>, PushOutcome> {
        let samples: Vec<&RawValue> = match serde_json::from_slice(body) {
            Ok(s) => s,
            Err(e) => {
                let first = body.iter().find(|b| !b.is_ascii_whitespace());
                let json_but_not_array =
                    first != Some(&b'[') && serde_json::from_slice::<de::IgnoredAny>(body).is_ok();
                return Err(if json_but_not_array {
                    self.refuse(
                        Reason::NotAnArray,
                        "the body must be a JSON array of samples",
                    )
                } else {
                    self.refuse(
                        Reason::InvalidJson,
                        &format!("the body is not valid JSON: {e}"),
                    )
                });
            }
        };
        if samples.is_empty() {
            return Err(self.refuse(Reason::EmptyBatch, "the array holds no samples"));
        }
        if samples.len() > self.limits.max_samples {
            return Err(self.refuse(
                Reason::TooManySamples,
                &format!(
                    "{} samples; at most {} are allowed in one push",
                    samples.len(),
                    self.limits.max_samples
                ),
            ));
        }
        Ok(samples)
    }

    /// Checks one sample and records it in `delta`, or its rejection.
    fn record<'a, K: LabelName, V: Field<'a>, N: Number, O: Observations>(
        &self,
        ctx: &RequestContext,
        index: usize,
        sample: Sample<K, V, N, O>,
        delta: &mut Aggregate,
        accepted: &mut usize,
        rejected: &mut Vec<Rejection>,
    ) {
        match self.check(ctx, sample, delta) {
            Ok(()) => *accepted += 1,
            Err((metric, reason, message)) => rejected.push(Rejection {
                index,
                metric,
                reason,
                message,
            }),
        }
    }

    /// Refuses a push whose body could not be read, with the same answer on every platform.
    pub fn refuse_body(&self, error: BodyError) -> PushOutcome {
        match error {
            BodyError::TooLarge => self.refuse(
                Reason::BodyTooLarge,
                &format!(
                    "the body is larger than {} bytes",
                    self.limits.max_body_bytes
                ),
            ),
            BodyError::Unreadable => self.refuse(Reason::InvalidJson, "the body could not be read"),
            BodyError::TimedOut => self.refuse(
                Reason::BodyTimeout,
                "the body did not arrive in time; send it whole, at once",
            ),
        }
    }
}

/// `application/json` or `text/plain` (what `sendBeacon` sends a string as), any parameters.
fn is_accepted_content_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json") || essence.eq_ignore_ascii_case("text/plain")
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

mod check;
mod decode;
mod keys;

#[cfg(test)]
mod tests;
