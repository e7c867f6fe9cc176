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
//! metrics, which travel in the same delta as the data (see [`crate::config::internal`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::aggregate::{Aggregate, SeriesKey, to_micros};
use crate::config::{Allowlist, MetricKind, MetricSpec, internal};
use crate::limits::Limits;

macro_rules! reasons {
    ($($variant:ident = $code:literal, $push:literal, $status:literal, $doc:literal;)*) => {
        /// Why a push was refused or a sample rejected. The code ([`Reason::as_str`]) is stable:
        /// it is the `error`/`reason` in answers and the `reason` label of pum's counters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable machine-readable code.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $code,)* }
            }

            /// Whether the reason refuses a whole push (else it rejects one sample).
            pub fn is_push_level(self) -> bool {
                match self { $(Reason::$variant => $push,)* }
            }

            /// The HTTP status of a push refused for this reason.
            pub fn status(self) -> u16 {
                match self { $(Reason::$variant => $status,)* }
            }
        }
    };
}

reasons! {
    InvalidJson = "invalid_json", true, 400, "The body is not valid JSON (or is nested too deep).";
    NotAnArray = "not_an_array", true, 400, "The body is JSON but not an array of samples.";
    EmptyBatch = "empty_batch", true, 400, "The array holds no samples.";
    BodyTooLarge = "body_too_large", true, 413, "The body is larger than the limit.";
    TooManySamples = "too_many_samples", true, 413, "The array holds more samples than the limit.";
    UnsupportedMediaType = "unsupported_media_type", true, 415, "The Content-Type is neither application/json nor text/plain.";
    OriginNotAllowed = "origin_not_allowed", true, 403, "The request's Origin is not in the origin allowlist.";
    RateLimited = "rate_limited", true, 429, "The client sent more pushes than the edge's rate limit allows.";
    NoValidSamples = "no_valid_samples", true, 400, "Every sample was rejected; each is listed with its reason.";
    InvalidSample = "invalid_sample", false, 400, "The sample is not a JSON object of the sample shape.";
    MissingMetricName = "missing_metric_name", false, 400, "The sample has no metricName.";
    InvalidMetricName = "invalid_metric_name", false, 400, "metricName is not a string.";
    UnknownMetric = "unknown_metric", false, 400, "The metric is not in the allowlist.";
    MissingMetricType = "missing_metric_type", false, 400, "The sample has no metricType.";
    TypeMismatch = "type_mismatch", false, 400, "metricType is not the allowlisted type of the metric.";
    InvalidLabels = "invalid_labels", false, 400, "labels is not an object of label names to values.";
    UnknownLabel = "unknown_label", false, 400, "A label name is not allowlisted for the metric.";
    InvalidLabelValue = "invalid_label_value", false, 400, "A label value is not a string.";
    LabelValueTooLong = "label_value_too_long", false, 400, "A label value is longer than the limit.";
    LabelValueNotAllowed = "label_value_not_allowed", false, 400, "A label value is not in the label's allowedValues.";
    MissingValue = "missing_value", false, 400, "A counter has no inc, or a histogram no observations.";
    InvalidValue = "invalid_value", false, 400, "inc or an observation is not a number, or observations is not an array.";
    TooManyObservations = "too_many_observations", false, 400, "A histogram sample carries more observations than the limit.";
    ValueOutOfRange = "value_out_of_range", false, 400, "A value is negative, not finite, or above the metric's maximum.";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

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

/// What the edge knows about a request, for labels the allowlist fills in at the edge
/// ([`crate::config::LabelSource`]). Nothing here is stored except through such labels.
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
        Ingest { allowlist, limits }
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
        if !content_type.is_some_and(is_accepted_content_type) {
            return self.refuse(
                Reason::UnsupportedMediaType,
                "send the samples as application/json or text/plain",
            );
        }
        if body.len() > self.limits.max_body_bytes {
            return self.refuse(
                Reason::BodyTooLarge,
                &format!(
                    "the body is larger than {} bytes",
                    self.limits.max_body_bytes
                ),
            );
        }
        let samples: Vec<&RawValue> = match serde_json::from_slice(body) {
            Ok(s) => s,
            Err(e) => {
                let first = body.iter().find(|b| !b.is_ascii_whitespace());
                let json_but_not_array =
                    first != Some(&b'[') && serde_json::from_slice::<de::IgnoredAny>(body).is_ok();
                return if json_but_not_array {
                    self.refuse(
                        Reason::NotAnArray,
                        "the body must be a JSON array of samples",
                    )
                } else {
                    self.refuse(
                        Reason::InvalidJson,
                        &format!("the body is not valid JSON: {e}"),
                    )
                };
            }
        };
        if samples.is_empty() {
            return self.refuse(Reason::EmptyBatch, "the array holds no samples");
        }
        if samples.len() > self.limits.max_samples {
            return self.refuse(
                Reason::TooManySamples,
                &format!(
                    "{} samples; at most {} are allowed in one push",
                    samples.len(),
                    self.limits.max_samples
                ),
            );
        }

        let mut delta = Aggregate::new();
        let mut accepted = 0usize;
        let mut rejected = Vec::new();
        for (index, raw) in samples.iter().enumerate() {
            match self.sample(ctx, raw, &mut delta) {
                Ok(()) => accepted += 1,
                Err((metric, reason, message)) => rejected.push(Rejection {
                    index,
                    metric,
                    reason,
                    message,
                }),
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
            count_push(&mut delta, 0, &rejected, Some(Reason::NoValidSamples));
            return PushOutcome {
                status: Reason::NoValidSamples.status(),
                body,
                delta,
                accepted,
                rejected,
                refused: Some(Reason::NoValidSamples),
            };
        }
        count_push(&mut delta, accepted, &rejected, None);
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
        count_push(&mut delta, 0, &[], Some(reason));
        PushOutcome {
            status: reason.status(),
            body,
            delta,
            accepted: 0,
            rejected: Vec::new(),
            refused: Some(reason),
        }
    }

    /// Validates one sample and, if valid, adds it to `delta`.
    fn sample(
        &self,
        ctx: &RequestContext,
        raw: &RawValue,
        delta: &mut Aggregate,
    ) -> Result<(), (Option<String>, Reason, String)> {
        let shape_error = "a sample must be an object with metricName, metricType, labels and inc or observations";
        // serde would also read a struct from an array of its fields; a sample is an object.
        if !raw.get().trim_start().starts_with('{') {
            return Err((None, Reason::InvalidSample, shape_error.into()));
        }
        let sample: RawSample<'_> = serde_json::from_str(raw.get())
            .map_err(|e| (None, Reason::InvalidSample, format!("{shape_error}: {e}")))?;
        let name = match sample.metric_name {
            None => {
                return Err((
                    None,
                    Reason::MissingMetricName,
                    "metricName is missing".into(),
                ));
            }
            Some(raw) => match serde_json::from_str::<Str<'_>>(raw.get()) {
                Ok(Str(name)) => name,
                Err(_) => {
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
            .filter(|s| s.origin != crate::config::Origin::Internal)
        else {
            return fail(
                Reason::UnknownMetric,
                "the metric is not in the allowlist".into(),
            );
        };
        match sample
            .metric_type
            .map(|t| serde_json::from_str::<Str<'_>>(t.get()))
        {
            None => {
                return fail(
                    Reason::MissingMetricType,
                    format!(
                        "metricType is missing; this metric is a {}",
                        spec.kind.as_str()
                    ),
                );
            }
            Some(Ok(Str(t))) if t == spec.kind.as_str() => {}
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
                let inc = number(raw, max).map_err(|(r, m)| err(r, format!("inc {m}")))?;
                delta.add_counter(key, to_micros(inc));
            }
            MetricKind::Histogram { .. } => {
                let Some(raw) = sample.observations else {
                    return fail(
                        Reason::MissingValue,
                        "a histogram sample needs observations".into(),
                    );
                };
                let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
                    return fail(
                        Reason::InvalidValue,
                        "observations must be an array of numbers".into(),
                    );
                };
                if items.is_empty() {
                    return fail(Reason::MissingValue, "observations is empty".into());
                }
                if items.len() > self.limits.max_observations {
                    return fail(
                        Reason::TooManyObservations,
                        format!(
                            "{} observations; at most {} are allowed in one sample",
                            items.len(),
                            self.limits.max_observations
                        ),
                    );
                }
                let max = max.unwrap_or(self.limits.max_observation);
                // Check every observation before recording any: a sample is accepted whole.
                let mut values = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    values.push(
                        number(item, max)
                            .map_err(|(r, m)| err(r, format!("observation {i} {m}")))?,
                    );
                }
                delta.observe_all(
                    key,
                    spec.bucket_count(),
                    values.iter().map(|v| (spec.bucket_of(*v), to_micros(*v))),
                );
            }
        }
        Ok(())
    }

    fn series_key(
        &self,
        ctx: &RequestContext,
        spec: &MetricSpec,
        labels: Option<RawLabels<'_>>,
    ) -> Result<SeriesKey, (Reason, String)> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(RawLabels(Some(items))) = labels {
            pairs.reserve(items.len());
            for (Str(name), raw) in items {
                let Some(label) = spec.label(&name).filter(|l| l.source.is_none()) else {
                    return Err((
                        Reason::UnknownLabel,
                        format!(
                            "label {:?} is not allowed for this metric{}",
                            cut(&name, 100),
                            if spec.label(&name).is_some() {
                                " (the edge fills it in)"
                            } else {
                                ""
                            }
                        ),
                    ));
                };
                let Ok(Str(value)) = serde_json::from_str::<Str<'_>>(raw.get()) else {
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
                let value = if label.allows(&value) {
                    value.into_owned()
                } else if let Some(other) = &label.other_value {
                    other.clone()
                } else {
                    return Err((
                        Reason::LabelValueNotAllowed,
                        format!(
                            "{:?} is not an allowed value of label {name:?}",
                            cut(&value, 100)
                        ),
                    ));
                };
                pairs.push((name.into_owned(), value));
            }
        } else if labels.is_some_and(|l| l.0.is_none()) {
            return Err((
                Reason::InvalidLabels,
                "labels must be an object of label names to string values".into(),
            ));
        }
        for label in spec.labels.iter().filter(|l| l.source.is_some()) {
            let given = match label.source {
                Some(crate::config::LabelSource::Country) => ctx.country.as_deref(),
                None => None,
            };
            let value = given
                .and_then(|v| label.resolve(v))
                .or(label.other_value.as_deref())
                .unwrap_or_default();
            pairs.push((label.name.clone(), value.to_owned()));
        }
        pairs.sort_unstable();
        if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err((Reason::InvalidLabels, "a label is given twice".into()));
        }
        Ok(SeriesKey {
            metric: spec.name.clone(),
            labels: pairs,
        })
    }
}

/// Adds pum's own counters about one push to `delta`.
fn count_push(
    delta: &mut Aggregate,
    accepted: usize,
    rejected: &[Rejection],
    refused: Option<Reason>,
) {
    const ONE: u128 = 1_000_000;
    let result = match (refused, rejected.is_empty()) {
        (Some(_), _) => "rejected",
        (None, true) => "accepted",
        (None, false) => "partial",
    };
    delta.add_counter(SeriesKey::new(internal::PUSHES, &[("result", result)]), ONE);
    if let Some(reason) = refused {
        delta.add_counter(
            SeriesKey::new(internal::PUSHES_REJECTED, &[("reason", reason.as_str())]),
            ONE,
        );
    }
    if accepted > 0 {
        delta.add_counter(
            SeriesKey::new(internal::SAMPLES_ACCEPTED, &[]),
            accepted as u128 * ONE,
        );
        delta.add_counter(SeriesKey::new(internal::RECORD_TOTAL, &[]), ONE);
    }
    for r in rejected {
        delta.add_counter(
            SeriesKey::new(internal::SAMPLES_REJECTED, &[("reason", r.reason.as_str())]),
            ONE,
        );
    }
}

/// `application/json` or `text/plain` (what `sendBeacon` sends a string as), any parameters.
fn is_accepted_content_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json") || essence.eq_ignore_ascii_case("text/plain")
}

/// Parses a JSON number in `0..=max`.
fn number(raw: &RawValue, max: f64) -> Result<f64, (Reason, String)> {
    let text = raw.get();
    match serde_json::from_str::<f64>(text) {
        Ok(v) if v.is_finite() && v >= 0.0 && v <= max => Ok(v),
        Ok(v) => Err((
            Reason::ValueOutOfRange,
            format!("is {v}; it must be between 0 and {max}"),
        )),
        // A JSON number that does not fit an f64 (1e400) is out of range, not of the wrong type.
        Err(_) if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => Err((
            Reason::ValueOutOfRange,
            format!("is out of range; it must be between 0 and {max}"),
        )),
        Err(_) => Err((Reason::InvalidValue, "must be a number".into())),
    }
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

/// One sample, with each field kept raw so that each can be judged with its own reason.
#[derive(Deserialize)]
struct RawSample<'a> {
    #[serde(rename = "metricName", borrow, default)]
    metric_name: Option<&'a RawValue>,
    #[serde(rename = "metricType", borrow, default)]
    metric_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    labels: Option<RawLabels<'a>>,
    #[serde(borrow, default)]
    inc: Option<&'a RawValue>,
    #[serde(borrow, default)]
    observations: Option<&'a RawValue>,
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

/// The labels of a sample: an object of names to (raw) values; `None` when `labels` is not an
/// object. An empty array is taken as no labels, as the original aggregator did.
struct RawLabels<'a>(Option<Vec<(Str<'a>, &'a RawValue)>>);

impl<'de: 'a, 'a> Deserialize<'de> for RawLabels<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawLabels<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(entry) = map.next_entry::<Str<'a>, &'a RawValue>()? {
                    items.push(entry);
                }
                Ok(RawLabels(Some(items)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut empty = true;
                while seq.next_element::<de::IgnoredAny>()?.is_some() {
                    empty = false;
                }
                Ok(RawLabels(if empty { Some(Vec::new()) } else { None }))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawLabels(Some(Vec::new())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawLabels(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RawLabels(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RawLabels(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawLabels(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RawLabels(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests;
