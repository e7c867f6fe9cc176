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

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::aggregate::{Aggregate, Overflow, SeriesKey, to_micros};
use crate::allowlist::{Allowlist, MetricKind, MetricSpec};
use crate::limits::Limits;
use crate::own::OwnKeys;
pub use crate::reason::Reason;

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

    /// Validates one sample and, if valid, adds it to `delta`. The same checks, in the same
    /// order, whichever path decoded the sample.
    fn check<'a, K: LabelName, V: Field<'a>, N: Number, O: Observations>(
        &self,
        ctx: &RequestContext,
        sample: Sample<K, V, N, O>,
        delta: &mut Aggregate,
    ) -> Result<(), (Option<String>, Reason, String)> {
        let name = match sample.metric_name {
            None => {
                return Err((
                    None,
                    Reason::MissingMetricName,
                    "metricName is missing".into(),
                ));
            }
            Some(raw) => match raw.string() {
                Some(name) => name,
                None => {
                    return Err((
                        None,
                        Reason::InvalidMetricName,
                        "metricName must be a string".into(),
                    ));
                }
            },
        };
        let err = |reason: Reason, message: String| (Some(cut(&name, 200)), reason, message);
        let fail = |reason: Reason, message: String| Err(err(reason, message));
        let Some(spec) = self
            .allowlist
            .get(&name)
            .filter(|s| s.origin != crate::allowlist::Origin::Internal)
        else {
            return fail(
                Reason::UnknownMetric,
                "the metric is not in the allowlist".into(),
            );
        };
        match sample.metric_type.map(Field::string) {
            None => {
                return fail(
                    Reason::MissingMetricType,
                    format!(
                        "metricType is missing; this metric is a {}",
                        spec.kind.as_str()
                    ),
                );
            }
            Some(Some(t)) if t == spec.kind.as_str() => {}
            Some(_) => {
                return fail(
                    Reason::TypeMismatch,
                    format!(
                        "metricType must be {:?} for this metric",
                        spec.kind.as_str()
                    ),
                );
            }
        }
        let key = self
            .series_key(ctx, spec, sample.labels)
            .map_err(|(r, m)| err(r, m))?;
        let max = spec.max_value;
        match &spec.kind {
            MetricKind::Counter => {
                let Some(raw) = sample.inc else {
                    return fail(Reason::MissingValue, "a counter sample needs inc".into());
                };
                let max = max.unwrap_or(self.limits.max_increment);
                let inc = raw
                    .number(max)
                    .map_err(|(r, m)| err(r, format!("inc {m}")))?;
                delta.add_counter(key, to_micros(inc));
            }
            MetricKind::Histogram { .. } => {
                let Some(raw) = sample.observations else {
                    return fail(
                        Reason::MissingValue,
                        "a histogram sample needs observations".into(),
                    );
                };
                let max = max.unwrap_or(self.limits.max_observation);
                // Every observation is checked before any is recorded: a sample is accepted whole.
                let values = raw
                    .values(self.limits.max_observations, max)
                    .map_err(|(r, m)| err(r, m))?;
                delta.observe_all(
                    key,
                    spec.bucket_count(),
                    values.iter().map(|v| (spec.bucket_of(*v), to_micros(*v))),
                );
            }
        }
        Ok(())
    }

    fn series_key<'a, K: LabelName, V: Field<'a>>(
        &self,
        ctx: &RequestContext,
        spec: &MetricSpec,
        labels: Option<Labels<K, V>>,
    ) -> Result<SeriesKey, (Reason, String)> {
        // The shared strings of the series, as they are found: the metric, then each label's
        // name and value.
        let mut pairs: SmallVec<[(&Arc<str>, &Arc<str>); 2]> = SmallVec::new();
        match labels {
            None | Some(Labels(Some(_))) => {}
            Some(Labels(None)) => {
                return Err((
                    Reason::InvalidLabels,
                    "labels must be an object of label names to string values".into(),
                ));
            }
        }
        if let Some(Labels(Some(items))) = labels {
            for (name, raw) in items {
                let name = name.name();
                let Some(label) = spec.label(name).filter(|l| l.source.is_none()) else {
                    return Err((
                        Reason::UnknownLabel,
                        format!(
                            "label {:?} is not allowed for this metric{}",
                            cut(name, 100),
                            if spec.label(name).is_some() {
                                " (the edge fills it in)"
                            } else {
                                ""
                            }
                        ),
                    ));
                };
                let Some(value) = raw.string() else {
                    return Err((
                        Reason::InvalidLabelValue,
                        format!("the value of label {name:?} must be a string"),
                    ));
                };
                if value.len() > self.limits.max_label_value_len {
                    return Err((
                        Reason::LabelValueTooLong,
                        format!(
                            "the value of label {name:?} is longer than {} bytes",
                            self.limits.max_label_value_len
                        ),
                    ));
                }
                let Some(value) = label.resolve(&value) else {
                    return Err((
                        Reason::LabelValueNotAllowed,
                        format!(
                            "{:?} is not an allowed value of label {name:?}",
                            cut(&value, 100)
                        ),
                    ));
                };
                pairs.push((label.interned_name(), value));
            }
        }
        for label in spec.labels.iter().filter(|l| l.source.is_some()) {
            let given = match label.source {
                Some(crate::allowlist::LabelSource::Country) => ctx.country.as_deref(),
                None => None,
            };
            // `otherValue` is required with `source`, so a value always resolves.
            if let Some(value) = given
                .and_then(|v| label.resolve(v))
                .or(label.interned_other())
            {
                pairs.push((label.interned_name(), value));
            }
        }
        let metric = spec.interned_name();
        keys::get_or_make(metric, &pairs, || {
            let mut owned: SmallVec<[(Arc<str>, Arc<str>); 2]> = pairs
                .iter()
                .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
                .collect();
            owned.sort_unstable();
            if owned.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err((Reason::InvalidLabels, "a label is given twice".into()));
            }
            Ok(SeriesKey::from_parts(Arc::clone(metric), owned))
        })
    }
}

/// The series keys a thread made lately, by the addresses of their shared strings.
///
/// A push's series are mostly the ones pushed before, named by the allowlist's shared strings:
/// looking the key up by those addresses costs less than sorting, hashing and allocating it
/// again, and hands out the same key the store's totals already hold (compared by pointer). An
/// address stands for one string as long as the cached key holds that string, which it does
/// while the entry lives, so an entry can never name another string. The cache is per thread
/// (no lock) and direct-mapped: [`keys::SLOTS`] entries, a new key taking the place of the one
/// in its slot.
mod keys {
    use std::cell::RefCell;
    use std::sync::Arc;

    use crate::aggregate::SeriesKey;

    /// Entries per thread.
    pub(super) const SLOTS: usize = 1024;

    /// Label pairs a cached key may have; keys with more are made every time.
    const MAX_PAIRS: usize = 2;

    /// The metric's address, then each label's name and value addresses in the push's order,
    /// then zeros.
    type Addresses = [usize; 1 + 2 * MAX_PAIRS];

    thread_local! {
        static KEYS: RefCell<Vec<Option<(Addresses, SeriesKey)>>> = const {
            RefCell::new(Vec::new())
        };
    }

    fn address(s: &Arc<str>) -> usize {
        Arc::as_ptr(s).cast::<u8>() as usize
    }

    /// The key of `metric` with `pairs`, from the cache or from `make` (whose error is passed
    /// on and not cached).
    pub(super) fn get_or_make<E>(
        metric: &Arc<str>,
        pairs: &[(&Arc<str>, &Arc<str>)],
        make: impl FnOnce() -> Result<SeriesKey, E>,
    ) -> Result<SeriesKey, E> {
        if pairs.len() > MAX_PAIRS {
            return make();
        }
        let mut id: Addresses = [0; 1 + 2 * MAX_PAIRS];
        id[0] = address(metric);
        for (i, (k, v)) in pairs.iter().enumerate() {
            id[1 + 2 * i] = address(k);
            id[2 + 2 * i] = address(v);
        }
        // Fibonacci hashing of the addresses picks the slot.
        let mixed = id.iter().fold(0u64, |h, a| {
            (h ^ *a as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        let slot = (mixed >> (64 - SLOTS.trailing_zeros())) as usize;
        KEYS.with(|cache| {
            if let Some(Some((cached, key))) = cache.borrow().get(slot)
                && *cached == id
            {
                return Ok(key.clone());
            }
            let key = make()?;
            let mut cache = cache.borrow_mut();
            if cache.is_empty() {
                cache.resize(SLOTS, None);
            }
            cache[slot] = Some((id, key.clone()));
            Ok(key)
        })
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

/// One sample, generic over how its fields are held: typed ([`TypedSample`], the fast path's
/// single pass) or raw ([`RawSample`], the slow path, where each field is judged on its own).
#[derive(Deserialize)]
#[serde(bound(
    deserialize = "K: Deserialize<'de>, V: Deserialize<'de>, N: Deserialize<'de>, O: Deserialize<'de>"
))]
struct Sample<K, V, N, O> {
    #[serde(rename = "metricName", default = "Option::default")]
    metric_name: Option<V>,
    #[serde(rename = "metricType", default = "Option::default")]
    metric_type: Option<V>,
    #[serde(default = "Option::default")]
    labels: Option<Labels<K, V>>,
    #[serde(default = "Option::default")]
    inc: Option<N>,
    #[serde(default = "Option::default")]
    observations: Option<O>,
}

/// A sample read in one pass, every field already of its type and every string borrowed from
/// the body (a string with escapes is left to the slow path).
type TypedSample<'a> = Sample<&'a str, &'a str, f64, Few<f64>>;

/// Observations kept inline: a sample usually carries one or two, and reading them then
/// allocates nothing.
type Few<T> = SmallVec<[T; 2]>;

/// A sample whose fields are kept raw, so that each can be judged with its own reason.
type RawSample<'a> = Sample<Str<'a>, &'a RawValue, &'a RawValue, &'a RawValue>;

/// The fast path's sample. Written out rather than derived: the derived reader goes through an
/// `Option` and a generic field for every value, and this one is the hot path of every push.
/// Anything it does not take as is (a missing colon, a value of another type, an escaped string,
/// a field given twice) is an error, which sends the push down the slow path.
struct Typed<'a>(TypedSample<'a>);

impl<'de> Deserialize<'de> for Typed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Typed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sample object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
                    match slot.replace(value) {
                        None => Ok(()),
                        Some(_) => Err(E::custom("a field is given twice")),
                    }
                }
                let mut s = Sample {
                    metric_name: None,
                    metric_type: None,
                    labels: None,
                    inc: None,
                    observations: None,
                };
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::MetricName => once(&mut s.metric_name, map.next_value()?)?,
                        Key::MetricType => once(&mut s.metric_type, map.next_value()?)?,
                        Key::Labels => once(&mut s.labels, map.next_value()?)?,
                        Key::Inc => once(&mut s.inc, map.next_value()?)?,
                        Key::Observations => once(&mut s.observations, map.next_value()?)?,
                        Key::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Typed(s))
            }
        }
        d.deserialize_map(V)
    }
}

/// A field name of a sample, as the fast path reads it.
enum Key {
    MetricName,
    MetricType,
    Labels,
    Inc,
    Observations,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "metricName" => Key::MetricName,
                    "metricType" => Key::MetricType,
                    "labels" => Key::Labels,
                    "inc" => Key::Inc,
                    "observations" => Key::Observations,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The fast path: reads the body in one pass, recording each sample as soon as it is read.
struct Stream<'i> {
    ingest: &'i Ingest,
    ctx: &'i RequestContext,
    delta: &'i mut Aggregate,
    accepted: &'i mut usize,
    rejected: &'i mut Vec<Rejection>,
}

impl Stream<'_> {
    /// Whether the whole body was read as 1 to `max_samples` typed samples. If not (a part does
    /// not have its type, or the count is out of bounds), what was recorded must be dropped: the
    /// slow path starts over and names each problem.
    fn read(&mut self, body: &[u8]) -> bool {
        // UTF-8 is checked once for the whole body, so the parser need not check each string.
        let Ok(text) = std::str::from_utf8(body) else {
            return false;
        };
        let mut de = serde_json::Deserializer::from_str(text);
        matches!(
            de::DeserializeSeed::deserialize(&mut *self, &mut de),
            Ok(n) if n > 0
        ) && de.end().is_ok()
    }
}

impl<'de> de::DeserializeSeed<'de> for &mut Stream<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &mut Stream<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of samples")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut index = 0;
        while let Some(Typed(sample)) = seq.next_element::<Typed<'de>>()? {
            if index == self.ingest.limits.max_samples {
                return Err(de::Error::custom("too many samples"));
            }
            if index == 0 {
                // Room for a typical push's series and pum's own counters in one small
                // allocation; made only once the body turns out to hold samples.
                *self.delta = Aggregate::small(16);
            }
            self.ingest.record(
                self.ctx,
                index,
                sample,
                self.delta,
                self.accepted,
                self.rejected,
            );
            index += 1;
        }
        Ok(index)
    }
}

/// Reads one raw sample; the error says why it is not a sample.
fn raw_sample(raw: &RawValue) -> Result<RawSample<'_>, String> {
    let shape_error =
        "a sample must be an object with metricName, metricType, labels and inc or observations";
    // serde would also read a struct from an array of its fields; a sample is an object.
    if !raw.get().trim_start().starts_with('{') {
        return Err(shape_error.into());
    }
    serde_json::from_str(raw.get()).map_err(|e| format!("{shape_error}: {e}"))
}

/// A string field (metric name, type, label value).
trait Field<'a> {
    /// The string, or `None` if the field is not one.
    fn string(self) -> Option<Cow<'a, str>>;
}

impl<'a> Field<'a> for Str<'a> {
    fn string(self) -> Option<Cow<'a, str>> {
        Some(self.0)
    }
}

impl<'a> Field<'a> for &'a str {
    fn string(self) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(self))
    }
}

/// A label name as either path holds it.
trait LabelName {
    fn name(&self) -> &str;
}

impl LabelName for &str {
    fn name(&self) -> &str {
        self
    }
}

impl LabelName for Str<'_> {
    fn name(&self) -> &str {
        &self.0
    }
}

impl<'a> Field<'a> for &'a RawValue {
    fn string(self) -> Option<Cow<'a, str>> {
        serde_json::from_str::<Str<'a>>(self.get())
            .ok()
            .map(|s| s.0)
    }
}

/// A number field (`inc`, an observation), checked to lie in `0..=max`.
trait Number {
    fn number(&self, max: f64) -> Result<f64, (Reason, String)>;
}

impl Number for f64 {
    fn number(&self, max: f64) -> Result<f64, (Reason, String)> {
        let v = *self;
        if v.is_finite() && v >= 0.0 && v <= max {
            Ok(v)
        } else {
            Err((
                Reason::ValueOutOfRange,
                format!("is {v}; it must be between 0 and {max}"),
            ))
        }
    }
}

impl Number for &RawValue {
    fn number(&self, max: f64) -> Result<f64, (Reason, String)> {
        let text = self.get();
        match serde_json::from_str::<f64>(text) {
            Ok(v) => v.number(max),
            // A JSON number that does not fit an f64 (1e400) is out of range, not of the wrong
            // type.
            Err(_) if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => Err((
                Reason::ValueOutOfRange,
                format!("is out of range; it must be between 0 and {max}"),
            )),
            Err(_) => Err((Reason::InvalidValue, "must be a number".into())),
        }
    }
}

/// The `observations` field: 1 to `limit` numbers, each in `0..=max`.
trait Observations {
    fn values(self, limit: usize, max: f64) -> Result<Few<f64>, (Reason, String)>;
}

/// Checks the count of observations, then each observation; returns them as numbers.
fn check_observations<N: Number>(
    items: &[N],
    limit: usize,
    max: f64,
) -> Result<Few<f64>, (Reason, String)> {
    if items.is_empty() {
        return Err((Reason::MissingValue, "observations is empty".into()));
    }
    if items.len() > limit {
        return Err((
            Reason::TooManyObservations,
            format!(
                "{} observations; at most {limit} are allowed in one sample",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.number(max)
                .map_err(|(r, m)| (r, format!("observation {i} {m}")))
        })
        .collect()
}

impl Observations for Few<f64> {
    fn values(self, limit: usize, max: f64) -> Result<Few<f64>, (Reason, String)> {
        // The same checks as for raw observations, keeping the vector the parser made.
        if self.is_empty() || self.len() > limit || self.iter().any(|v| v.number(max).is_err()) {
            return check_observations(&self, limit, max);
        }
        Ok(self)
    }
}

impl Observations for &RawValue {
    fn values(self, limit: usize, max: f64) -> Result<Few<f64>, (Reason, String)> {
        let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(self.get()) else {
            return Err((
                Reason::InvalidValue,
                "observations must be an array of numbers".into(),
            ));
        };
        check_observations(&items, limit, max)
    }
}

/// A string borrowed from the body where it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The labels of a sample: an object of names to values; `None` when `labels` is not an
/// object. An empty array is taken as no labels, as the original aggregator did.
struct Labels<K, V>(Option<SmallVec<[(K, V); 2]>>);

impl<'de, K: Deserialize<'de>, T: Deserialize<'de>> Deserialize<'de> for Labels<K, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K, T>(std::marker::PhantomData<(K, T)>);
        impl<'de, K: Deserialize<'de>, T: Deserialize<'de>> Visitor<'de> for V<K, T> {
            type Value = Labels<K, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut items = SmallVec::new();
                while let Some(entry) = map.next_entry::<K, T>()? {
                    items.push(entry);
                }
                Ok(Labels(Some(items)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut empty = true;
                while seq.next_element::<de::IgnoredAny>()?.is_some() {
                    empty = false;
                }
                Ok(Labels(if empty { Some(SmallVec::new()) } else { None }))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Labels(Some(SmallVec::new())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Labels(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Labels(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Labels(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Labels(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Labels(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests;
