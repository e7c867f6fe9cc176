//! The two decoders of a push body. The fast path reads the body once, typed, recording each
//! sample as it goes ([`Stream`]); anything it cannot type sends the push down the slow path,
//! which reads each sample raw ([`raw_sample`]) so that each field is judged on its own and each
//! problem named.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use super::{Ingest, Rejection, RequestContext};
use crate::aggregate::Aggregate;
use crate::reason::Reason;

/// One sample, generic over how its fields are held: typed ([`TypedSample`], the fast path's
/// single pass) or raw ([`RawSample`], the slow path, where each field is judged on its own).
#[derive(Deserialize)]
#[serde(bound(
    deserialize = "K: Deserialize<'de>, V: Deserialize<'de>, N: Deserialize<'de>, O: Deserialize<'de>"
))]
pub(super) struct Sample<K, V, N, O> {
    #[serde(rename = "metricName", default = "Option::default")]
    pub(super) metric_name: Option<V>,
    #[serde(rename = "metricType", default = "Option::default")]
    pub(super) metric_type: Option<V>,
    #[serde(default = "Option::default")]
    pub(super) labels: Option<Labels<K, V>>,
    #[serde(default = "Option::default")]
    pub(super) inc: Option<N>,
    #[serde(default = "Option::default")]
    pub(super) observations: Option<O>,
}

/// A sample read in one pass, every field already of its type and every string borrowed from
/// the body (a string with escapes is left to the slow path).
pub(super) type TypedSample<'a> = Sample<&'a str, &'a str, f64, Few<f64>>;

/// Observations kept inline: a sample usually carries one or two, and reading them then
/// allocates nothing.
pub(super) type Few<T> = SmallVec<[T; 2]>;

/// A sample whose fields are kept raw, so that each can be judged with its own reason.
pub(super) type RawSample<'a> = Sample<Str<'a>, &'a RawValue, &'a RawValue, &'a RawValue>;

/// The fast path's sample. Written out rather than derived: the derived reader goes through an
/// `Option` and a generic field for every value, and this one is the hot path of every push.
/// Anything it does not take as is (a missing colon, a value of another type, an escaped string,
/// a field given twice) is an error, which sends the push down the slow path.
pub(super) struct Typed<'a>(TypedSample<'a>);

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
pub(super) struct Stream<'i> {
    pub(super) ingest: &'i Ingest,
    pub(super) ctx: &'i RequestContext,
    pub(super) delta: &'i mut Aggregate,
    pub(super) accepted: &'i mut usize,
    pub(super) rejected: &'i mut Vec<Rejection>,
}

impl Stream<'_> {
    /// Whether the whole body was read as 1 to `max_samples` typed samples. If not (a part does
    /// not have its type, or the count is out of bounds), what was recorded must be dropped: the
    /// slow path starts over and names each problem.
    pub(super) fn read(&mut self, body: &[u8]) -> bool {
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
pub(super) fn raw_sample(raw: &RawValue) -> Result<RawSample<'_>, String> {
    let shape_error =
        "a sample must be an object with metricName, metricType, labels and inc or observations";
    // serde would also read a struct from an array of its fields; a sample is an object.
    if !raw.get().trim_start().starts_with('{') {
        return Err(shape_error.into());
    }
    serde_json::from_str(raw.get()).map_err(|e| format!("{shape_error}: {e}"))
}

/// A string field (metric name, type, label value).
pub(super) trait Field<'a> {
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
pub(super) trait LabelName {
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
pub(super) trait Number {
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
pub(super) trait Observations {
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
pub(super) struct Str<'a>(pub(super) Cow<'a, str>);

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
pub(super) struct Labels<K, V>(pub(super) Option<SmallVec<[(K, V); 2]>>);

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
