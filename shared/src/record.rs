//! The delta record: one validated push, as every store appends and folds it.
//!
//! A push's delta ([`Aggregate`]) is encoded once, here, into a few hundred bytes that the
//! embedded log and the Durable Object store as they are, and that a fold decodes again. Three
//! choices keep it small, exact and safe to keep:
//!
//! - **The allowlist's fingerprint says which allowlist decodes it.** A record names metrics,
//!   label values and buckets by their positions in the allowlist it was written against, so it
//!   carries that allowlist's [`Allowlist::fingerprint`]; [`decode`] refuses a record of any other
//!   allowlist, and [`peek_fingerprint`] lets a reader pick the right one first (stores keep each
//!   allowlist's [`Allowlist::description`], from which [`Allowlist::from_description`] rebuilds
//!   it).
//! - **Stable indices keep it small.** A series is a metric index (the metric's position in name
//!   order, [`Allowlist::metric_index`]) and one small code per label of the metric, instead of
//!   names and values as text: the realistic beacon's delta (14 series, pum's own counters
//!   included) takes 130 bytes with a 22-character batch id, where its snapshot JSON takes 1.5 KB.
//! - **Fixed point keeps merging exact.** Values are the aggregate's own integers (millionths and
//!   counts), not floats: folding records in any order or grouping gives the same totals to the
//!   last unit, as [`crate::aggregate`] explains.
//!
//! # Layout, version 1
//!
//! Numbers marked *varint* are unsigned LEB128 (7 bits a byte, least significant group first, the
//! high bit set on every byte but the last), in their shortest form: any other form is refused,
//! so that one delta has one encoding.
//!
//! | bytes | what |
//! | --- | --- |
//! | 1 | [`VERSION`] (1) |
//! | 8 | the allowlist's fingerprint, `u64` little-endian |
//! | varint | `at_secs`: when the push was accepted, Unix seconds (the adapter's clock) |
//! | 1 | batch id length, 0 for a push without a batch id |
//! | that many | the batch id, UTF-8 (ids are 16 to 64 of `A-Za-z0-9_-`) |
//! | varint | number of series |
//! | per series | the series, as below, in any order (a series given twice is refused) |
//!
//! A series:
//!
//! | bytes | what |
//! | --- | --- |
//! | varint | the metric's stable index in the allowlist |
//! | per label of the metric, in the allowlist's order (by name) | a varint code: `0` the series does not have the label; `1..=n` the `n` `allowedValues`, in order (a value listed twice has the first one's code); `n + 1` the label's `otherValue`; `n + 2` any other value, which follows as a varint length and that many bytes of UTF-8 (a validated push never has one, but any [`Aggregate`] of the allowlist's metrics round-trips) |
//! | counter | its value in millionths, varint (up to `u128`) |
//! | histogram | varint number of non-zero buckets; per non-zero bucket, in increasing order, its index (the last one is `+Inf`) and its count (varints, up to `u64`); then the sum in millionths (varint, up to `u128`) |
//!
//! Whether a metric is a counter or a histogram, how many buckets it has and what its labels are
//! comes from the allowlist, so the record does not repeat it. Every error a record can carry is a
//! [`RecordError`]: no input makes [`decode`] panic or allocate more than the input and the
//! allowlist bound.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::aggregate::{Aggregate, SeriesKey, SeriesValue};
use crate::allowlist::{Allowlist, MetricKind};

/// The record format version this build writes and reads.
pub const VERSION: u8 = 1;

/// The most bytes a batch id may have in a record (its length is one byte).
pub const MAX_BATCH_LEN: usize = 255;

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the allowlist it was written against.
    pub fingerprint: u64,
    /// The push's batch id, if it had one.
    pub batch: Option<String>,
    /// When the push was accepted, in Unix seconds.
    pub at_secs: u64,
    /// The push's delta.
    pub delta: Aggregate,
}

/// A record that cannot be written or read.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RecordError {
    /// The record's version is not one this build reads.
    #[error("record version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    /// The bytes end inside the record.
    #[error("record is truncated: it ends inside its {0}")]
    Truncated(&'static str),
    /// A number is not a shortest LEB128 encoding, or does not fit its type.
    #[error("record's {0} is not a valid number")]
    Varint(&'static str),
    /// The record was written against another allowlist.
    #[error("record was written against allowlist {record:016x}, not this one ({allowlist:016x})")]
    Fingerprint {
        /// The record's fingerprint.
        record: u64,
        /// The fingerprint of the allowlist it was to be decoded with.
        allowlist: u64,
    },
    /// A metric index, label value code or bucket index that the allowlist has no entry for.
    #[error("record's {field} {value} is out of range")]
    Index {
        /// Which index.
        field: &'static str,
        /// Its value.
        value: u128,
    },
    /// A series written twice, or bucket indices out of order.
    #[error("record repeats a {0}, or has them out of order")]
    Repeated(&'static str),
    /// The batch id or a label value is not UTF-8.
    #[error("record's {0} is not UTF-8")]
    Utf8(&'static str),
    /// Bytes after the last series.
    #[error("record is followed by {0} more bytes")]
    Trailing(usize),
    /// (Encoding) A series of a metric the allowlist does not have.
    #[error("metric {0:?} is not in the allowlist")]
    UnknownMetric(String),
    /// (Encoding) A series with a label its metric does not have (or has twice).
    #[error(
        "a series of metric {metric:?} has a label {label:?} that the allowlist does not give it, or has it twice"
    )]
    UnknownLabel {
        /// The metric.
        metric: String,
        /// The label.
        label: String,
    },
    /// (Encoding) A series whose value is not of its metric's kind, or a histogram with another
    /// number of buckets than its metric's.
    #[error("a series of metric {0:?} is not of the allowlist's kind or number of buckets")]
    Shape(String),
    /// (Encoding) A batch id that is empty or longer than [`MAX_BATCH_LEN`] bytes.
    #[error("a batch id of {0} bytes cannot be recorded (1 to 255)")]
    Batch(usize),
}

/// Appends the record of a push (its batch id, when it was accepted, its delta) to `out`.
///
/// The delta must be of `allowlist`'s metrics, as every validated push is: a series of another
/// metric, with a label its metric does not have, or of another kind or number of buckets is an
/// error (never dropped), and so is a batch id of 0 or more than [`MAX_BATCH_LEN`] bytes. On an
/// error `out` is left as it was.
pub fn encode(
    allowlist: &Allowlist,
    batch: Option<&str>,
    at_secs: u64,
    delta: &Aggregate,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let start = out.len();
    let written = encode_into(allowlist, batch, at_secs, delta, out);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn encode_into(
    allowlist: &Allowlist,
    batch: Option<&str>,
    at_secs: u64,
    delta: &Aggregate,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    // Length 0 says "no batch id", so an empty id cannot be written.
    let batch: &[u8] = match batch {
        None => &[],
        Some(id) if (1..=MAX_BATCH_LEN).contains(&id.len()) => id.as_bytes(),
        Some(id) => return Err(RecordError::Batch(id.len())),
    };
    // About what the beacon takes; a push's delta is a few dozen series at most.
    out.reserve(16 + batch.len() + 12 * delta.len());
    out.push(VERSION);
    out.extend_from_slice(&allowlist.fingerprint().to_le_bytes());
    put(out, at_secs);
    out.push(batch.len() as u8);
    out.extend_from_slice(batch);
    put(out, delta.len() as u64);
    // In the delta's own order: decoding refuses a series given twice, and nothing needs equal
    // deltas to give equal bytes (sorting the series cost a fifth of the encoding).
    // A push's series of one metric tend to come together: the last metric's index is kept.
    let mut last: Option<(&Arc<str>, usize)> = None;
    for (key, value) in delta.iter_unordered() {
        let index = match last {
            Some((name, index)) if Arc::ptr_eq(name, key.metric()) => index,
            _ => allowlist
                .metric_index_of(key.metric())
                .ok_or_else(|| RecordError::UnknownMetric(key.metric().to_string()))?,
        };
        last = Some((key.metric(), index));
        encode_series(allowlist, index, key, value, out)?;
    }
    Ok(())
}

/// Writes one series: its metric's index (`index`, found by the caller), its label codes and its
/// value.
fn encode_series(
    allowlist: &Allowlist,
    index: usize,
    key: &SeriesKey,
    value: &SeriesValue,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let unknown = || RecordError::UnknownMetric(key.metric().to_string());
    let spec = allowlist.metric_at(index).ok_or_else(unknown)?;
    put(out, index as u64);
    // Both the key's labels and the spec's are sorted by name: one walk pairs them.
    let labels = key.labels();
    let mut next = 0;
    for label in &spec.labels {
        let Some((_, value)) = labels.get(next).filter(|(name, _)| **name == *label.name) else {
            out.push(0);
            continue;
        };
        next += 1;
        let n = label.allowed_values.len() as u64;
        if let Some(position) = label.position_of(value) {
            put(out, position as u64 + 1);
        } else if label.other_value.as_deref() == Some(&**value) {
            put(out, n + 1);
        } else {
            put(out, n + 2);
            put(out, value.len() as u64);
            out.extend_from_slice(value.as_bytes());
        }
    }
    if let Some((name, _)) = labels.get(next) {
        return Err(RecordError::UnknownLabel {
            metric: spec.name.clone(),
            label: name.to_string(),
        });
    }
    match (&spec.kind, value) {
        (MetricKind::Counter, SeriesValue::Counter { micros }) => put_u128(out, *micros),
        (
            MetricKind::Histogram { .. },
            SeriesValue::Histogram {
                buckets,
                sum_micros,
            },
        ) if buckets.len() == spec.bucket_count() => {
            put(out, buckets.iter().filter(|c| **c != 0).count() as u64);
            for (i, count) in buckets.iter().enumerate().filter(|(_, c)| **c != 0) {
                put(out, i as u64);
                put(out, *count);
            }
            put_u128(out, *sum_micros);
        }
        _ => return Err(RecordError::Shape(spec.name.clone())),
    }
    Ok(())
}

/// Decodes a record written against `allowlist` (which must have the record's fingerprint: see
/// [`peek_fingerprint`]). The decoded keys share the allowlist's strings, as the ingest's do.
pub fn decode(bytes: &[u8], allowlist: &Allowlist) -> Result<Record, RecordError> {
    let mut r = Reader(bytes);
    let header = r.header()?;
    if header.fingerprint != allowlist.fingerprint() {
        return Err(RecordError::Fingerprint {
            record: header.fingerprint,
            allowlist: allowlist.fingerprint(),
        });
    }
    let count = r.varint("series count")?;
    // `small` takes no more room than a few dozen series, whatever the count says.
    let mut delta = Aggregate::small(usize::try_from(count).unwrap_or(usize::MAX));
    for _ in 0..count {
        let index = r.varint("metric index")?;
        let spec = usize::try_from(index)
            .ok()
            .and_then(|i| allowlist.metric_at(i))
            .ok_or(RecordError::Index {
                field: "metric index",
                value: index,
            })?;
        let mut labels = SmallVec::new();
        for label in &spec.labels {
            let code = r.varint("label value code")?;
            let n = label.allowed_values.len() as u128;
            let value = match code {
                0 => continue,
                c if c <= n => label.interned_value((c - 1) as usize).cloned(),
                c if c == n + 1 => label.interned_other().cloned(),
                c if c == n + 2 => {
                    let len = r.varint("label value length")?;
                    let text = r.take(len, "label value")?;
                    let text =
                        std::str::from_utf8(text).map_err(|_| RecordError::Utf8("label value"))?;
                    Some(Arc::from(text))
                }
                _ => None,
            };
            let value = value.ok_or(RecordError::Index {
                field: "label value code",
                value: code,
            })?;
            // In the spec's order, which is by name: the key needs no sort.
            labels.push((label.interned_name().clone(), value));
        }
        let key = SeriesKey::from_parts(spec.interned_name().clone(), labels);
        let value = match &spec.kind {
            MetricKind::Counter => SeriesValue::Counter {
                micros: r.varint("counter value")?,
            },
            MetricKind::Histogram { .. } => {
                let mut buckets = vec![0u64; spec.bucket_count()];
                let nonzero = r.varint("number of buckets")?;
                if nonzero > buckets.len() as u128 {
                    return Err(RecordError::Index {
                        field: "number of buckets",
                        value: nonzero,
                    });
                }
                let mut first_free = 0;
                for _ in 0..nonzero {
                    let i = r.varint("bucket index")?;
                    let slot = usize::try_from(i)
                        .ok()
                        .filter(|i| *i < buckets.len())
                        .ok_or(RecordError::Index {
                            field: "bucket index",
                            value: i,
                        })?;
                    if slot < first_free {
                        return Err(RecordError::Repeated("bucket index"));
                    }
                    buckets[slot] = r.u64("bucket count")?;
                    first_free = slot + 1;
                }
                SeriesValue::Histogram {
                    buckets,
                    sum_micros: r.varint("histogram sum")?,
                }
            }
        };
        if delta.get(&key).is_some() {
            return Err(RecordError::Repeated("series"));
        }
        delta.add_value(key, value);
    }
    if !r.0.is_empty() {
        return Err(RecordError::Trailing(r.0.len()));
    }
    Ok(Record {
        fingerprint: header.fingerprint,
        batch: header.batch.map(str::to_owned),
        at_secs: header.at_secs,
        delta,
    })
}

/// The fingerprint of the allowlist a record was written against, to pick the allowlist that
/// decodes it.
pub fn peek_fingerprint(bytes: &[u8]) -> Result<u64, RecordError> {
    let mut r = Reader(bytes);
    r.version()?;
    r.fingerprint()
}

/// A record's batch id, read without the allowlist (a store checks it before it folds).
pub fn peek_batch(bytes: &[u8]) -> Result<Option<&str>, RecordError> {
    Reader(bytes).header().map(|h| h.batch)
}

/// What comes before a record's series.
struct Header<'a> {
    fingerprint: u64,
    at_secs: u64,
    batch: Option<&'a str>,
}

/// Reads a record from the front.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: u128, what: &'static str) -> Result<&'a [u8], RecordError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= self.0.len())
            .ok_or(RecordError::Truncated(what))?;
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, RecordError> {
        let (first, rest) = self.0.split_first().ok_or(RecordError::Truncated(what))?;
        self.0 = rest;
        Ok(*first)
    }

    fn version(&mut self) -> Result<(), RecordError> {
        match self.byte("version")? {
            VERSION => Ok(()),
            other => Err(RecordError::Version(other)),
        }
    }

    fn fingerprint(&mut self) -> Result<u64, RecordError> {
        let bytes = self.take(8, "fingerprint")?;
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| RecordError::Truncated("fingerprint"))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn header(&mut self) -> Result<Header<'a>, RecordError> {
        self.version()?;
        let fingerprint = self.fingerprint()?;
        let at_secs = self.u64("time")?;
        let len = self.byte("batch id length")?;
        let batch = match len {
            0 => None,
            n => Some(
                std::str::from_utf8(self.take(u128::from(n), "batch id")?)
                    .map_err(|_| RecordError::Utf8("batch id"))?,
            ),
        };
        Ok(Header {
            fingerprint,
            at_secs,
            batch,
        })
    }

    /// An unsigned LEB128 number of up to 128 bits, in its shortest form.
    fn varint(&mut self, what: &'static str) -> Result<u128, RecordError> {
        let mut value: u128 = 0;
        // 19 groups of 7 bits hold 128 bits; the 19th may only use its low 2.
        for group in 0..19 {
            let byte = self.byte(what)?;
            let bits = u128::from(byte & 0x7f);
            if group == 18 && bits > 0b11 {
                return Err(RecordError::Varint(what));
            }
            value |= bits << (7 * group);
            if byte & 0x80 == 0 {
                // A last group of 0 after others is a longer form of a shorter number.
                if byte == 0 && group > 0 {
                    return Err(RecordError::Varint(what));
                }
                return Ok(value);
            }
        }
        Err(RecordError::Varint(what))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        u64::try_from(self.varint(what)?).map_err(|_| RecordError::Varint(what))
    }
}

/// Appends `value` as unsigned LEB128.
fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a 128-bit `value` as unsigned LEB128.
fn put_u128(out: &mut Vec<u8>, mut value: u128) {
    if let Ok(small) = u64::try_from(value) {
        return put(out, small);
    }
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ingest, Limits, own};

    const BEACON: &str = include_str!("../../fixtures/beacon.json");
    /// A batch id as the browser client makes them: 22 characters.
    const BATCH: &str = "Vq3xY0-Jk_w2Lm9PqRs1Ab";
    /// Mid-2025, in Unix seconds: a five-byte varint, as any date will be until 2106.
    const AT: u64 = 1_751_000_000;

    /// An allowlist with `otherValue` and an edge-filled label, which the example lacks.
    const RICH: &str = r#"{"allowedMetrics":[
        {"name":"checkout_total","help":"h","type":"counter",
         "labels":[{"name":"step","allowedValues":["cart","pay","cart"],"otherValue":"other"},
                   {"name":"country","allowedValues":["DE","FR"],"otherValue":"XX","source":"country"}]},
        {"name":"wait_seconds","help":"h","type":"histogram","buckets":[0.5,1,2],
         "labels":[{"name":"zone","allowedValues":["a","b"],"otherValue":"elsewhere"}]}
    ]}"#;

    fn rich() -> Allowlist {
        Allowlist::compile([("rich.json", RICH)], false).expect("compiles")
    }

    fn beacon() -> (Allowlist, Aggregate) {
        let ingest = Ingest::new(Allowlist::example(), Limits::default());
        let out = ingest.push(Some("text/plain;charset=UTF-8"), BEACON.as_bytes());
        assert_eq!(out.status, 200, "{}", out.body);
        assert!(out.rejected.is_empty(), "{}", out.body);
        (ingest.allowlist().clone(), out.delta)
    }

    fn record(list: &Allowlist, batch: Option<&str>, delta: &Aggregate) -> Vec<u8> {
        let mut out = Vec::new();
        encode(list, batch, AT, delta, &mut out).expect("encodes");
        out
    }

    #[test]
    fn the_beacon_is_a_small_record() {
        let (list, delta) = beacon();
        assert!(
            delta
                .get(&SeriesKey::new(own::PUSHES, &[("result", "accepted")]))
                .is_some(),
            "pum's own counters travel in the delta"
        );
        let bytes = record(&list, Some(BATCH), &delta);
        eprintln!(
            "the beacon's record: {} bytes ({} series; the beacon is {} bytes, its delta's snapshot JSON {})",
            bytes.len(),
            delta.len(),
            BEACON.len(),
            delta.to_json().len()
        );
        assert!(bytes.len() <= 256, "{} bytes", bytes.len());
        assert_eq!(
            decode(&bytes, &list),
            Ok(Record {
                fingerprint: list.fingerprint(),
                batch: Some(BATCH.into()),
                at_secs: AT,
                delta: delta.clone(),
            })
        );
        assert_eq!(peek_fingerprint(&bytes), Ok(list.fingerprint()));
        assert_eq!(peek_batch(&bytes), Ok(Some(BATCH)));
        let unnamed = record(&list, None, &delta);
        assert_eq!(unnamed.len(), bytes.len() - BATCH.len());
        assert_eq!(peek_batch(&unnamed), Ok(None));
        assert_eq!(decode(&unnamed, &list).map(|r| r.batch), Ok(None));
    }

    #[test]
    fn decoded_keys_share_the_allowlists_strings() {
        let (list, delta) = beacon();
        let decoded = decode(&record(&list, None, &delta), &list).expect("decodes");
        assert!(!decoded.delta.is_empty());
        for (key, _) in decoded.delta.iter() {
            let spec = list.get(key.metric()).expect("an allowlisted metric");
            assert!(Arc::ptr_eq(key.metric(), spec.interned_name()));
            for (name, value) in key.labels() {
                let label = spec.label(name).expect("an allowlisted label");
                assert!(Arc::ptr_eq(name, label.interned_name()));
                assert!(label.resolve(value).is_some_and(|v| Arc::ptr_eq(v, value)));
            }
        }
    }

    #[test]
    fn series_in_any_order_decode_to_the_same_delta_and_encode_appends() {
        let list = rich();
        let keys = [
            SeriesKey::new("checkout_total", &[("step", "pay")]),
            SeriesKey::new("checkout_total", &[("step", "other"), ("country", "XX")]),
            SeriesKey::new("checkout_total", &[("step", "cart")]),
            SeriesKey::new("checkout_total", &[("step", "typo")]),
            SeriesKey::new("checkout_total", &[]),
        ];
        let (mut forward, mut backward) = (Aggregate::small(8), Aggregate::small(8));
        for (i, key) in keys.iter().enumerate() {
            forward.add_counter(key.clone(), i as u128);
        }
        for (i, key) in keys.iter().enumerate().rev() {
            backward.add_counter(key.clone(), i as u128);
        }
        forward.observe_all(
            SeriesKey::new("wait_seconds", &[("zone", "b")]),
            4,
            [(3, 7)],
        );
        backward.observe_all(
            SeriesKey::new("wait_seconds", &[("zone", "b")]),
            4,
            [(3, 7)],
        );
        let bytes = record(&list, Some(BATCH), &forward);
        let other = record(&list, Some(BATCH), &backward);
        assert_eq!(bytes.len(), other.len());
        assert_eq!(
            decode(&other, &list).expect("decodes").delta,
            decode(&bytes, &list).expect("decodes").delta
        );
        let mut out = b"earlier".to_vec();
        encode(&list, Some(BATCH), AT, &forward, &mut out).expect("encodes");
        assert_eq!(&out[..7], b"earlier");
        assert_eq!(&out[7..], &bytes[..]);
        let decoded = decode(&bytes, &list).expect("decodes");
        assert_eq!(decoded.delta, forward);
    }

    #[test]
    fn encode_refuses_what_the_allowlist_does_not_describe() {
        let list = rich();
        let refused = |delta: Aggregate, batch: Option<&str>| {
            let mut out = b"kept".to_vec();
            let e = encode(&list, batch, AT, &delta, &mut out).expect_err("refused");
            assert_eq!(out, b"kept", "nothing is appended");
            e
        };
        let one = |key: SeriesKey, value: SeriesValue| {
            let mut delta = Aggregate::small(2);
            delta.add_counter(SeriesKey::new("checkout_total", &[]), 1);
            delta.add_value(key, value);
            delta
        };
        let counter = SeriesValue::Counter { micros: 1 };
        let histogram = |n: usize| SeriesValue::Histogram {
            buckets: vec![1; n],
            sum_micros: 1,
        };
        assert_eq!(
            refused(
                one(SeriesKey::new("nope_total", &[]), counter.clone()),
                None
            ),
            RecordError::UnknownMetric("nope_total".into())
        );
        assert_eq!(
            refused(
                one(
                    SeriesKey::new("checkout_total", &[("zone", "a")]),
                    counter.clone()
                ),
                None
            ),
            RecordError::UnknownLabel {
                metric: "checkout_total".into(),
                label: "zone".into()
            }
        );
        let twice = SeriesKey::from_parts(
            Arc::from("checkout_total"),
            smallvec::smallvec![
                (Arc::from("step"), Arc::from("cart")),
                (Arc::from("step"), Arc::from("pay"))
            ],
        );
        assert!(matches!(
            refused(one(twice, counter.clone()), None),
            RecordError::UnknownLabel { .. }
        ));
        let wait = || SeriesKey::new("wait_seconds", &[]);
        for value in [counter.clone(), histogram(3), histogram(5)] {
            assert_eq!(
                refused(one(wait(), value), None),
                RecordError::Shape("wait_seconds".into())
            );
        }
        assert_eq!(
            refused(
                one(SeriesKey::new("checkout_total", &[]), histogram(4)),
                None
            ),
            RecordError::Shape("checkout_total".into())
        );
        assert_eq!(
            refused(one(wait(), histogram(4)), Some("")),
            RecordError::Batch(0)
        );
        assert_eq!(
            refused(one(wait(), histogram(4)), Some(&"b".repeat(256))),
            RecordError::Batch(256)
        );
        let mut out = Vec::new();
        encode(
            &list,
            Some(&"b".repeat(255)),
            AT,
            &one(wait(), histogram(4)),
            &mut out,
        )
        .expect("255 bytes fit");
        assert_eq!(peek_batch(&out).map(|b| b.map(str::len)), Ok(Some(255)));
    }

    #[test]
    fn bad_records_are_errors() {
        let (list, delta) = beacon();
        let bytes = record(&list, Some(BATCH), &delta);
        let other = Allowlist::compile([("example", crate::allowlist::EXAMPLE_ALLOWLIST)], false)
            .expect("compiles");
        assert_eq!(
            decode(&bytes, &other),
            Err(RecordError::Fingerprint {
                record: list.fingerprint(),
                allowlist: other.fingerprint()
            })
        );
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            assert!(
                matches!(decode(cut, &list), Err(RecordError::Truncated(_))),
                "cut at {len}: {:?}",
                decode(cut, &list)
            );
            assert_eq!(peek_fingerprint(cut).is_ok(), len >= 9, "cut at {len}");
            let header = 1 + 8 + 5 + 1 + BATCH.len();
            assert_eq!(peek_batch(cut).is_ok(), len >= header, "cut at {len}");
        }
        let mut versioned = bytes.clone();
        versioned[0] = 2;
        assert_eq!(decode(&versioned, &list), Err(RecordError::Version(2)));
        assert_eq!(peek_fingerprint(&versioned), Err(RecordError::Version(2)));
        assert_eq!(peek_batch(&versioned), Err(RecordError::Version(2)));
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"\x00garbage");
        assert_eq!(decode(&longer, &list), Err(RecordError::Trailing(8)));
    }

    #[test]
    fn records_out_of_range_or_repeated_are_errors() {
        let list = rich();
        // A record of `series`, each written as its varints (and raw bytes where given).
        let hand = |series: &[&[u128]], raw: &[u8]| {
            let mut out = vec![VERSION];
            out.extend_from_slice(&list.fingerprint().to_le_bytes());
            put(&mut out, AT);
            out.push(0);
            put(&mut out, series.len() as u64);
            for numbers in series {
                for n in *numbers {
                    put_u128(&mut out, *n);
                }
            }
            out.extend_from_slice(raw);
            decode(&out, &list)
        };
        let index = |field, value| {
            Err(RecordError::Index {
                field,
                value: value as u128,
            })
        };
        let checkout = list.metric_index("checkout_total").expect("there") as u128;
        let wait = list.metric_index("wait_seconds").expect("there") as u128;
        // checkout_total{country, step}: country has 2 values and otherValue, step 3 and otherValue.
        let ok = hand(&[&[checkout, 3, 4, 5]], &[]).expect("decodes");
        assert_eq!(
            ok.delta.iter().next().map(|(k, v)| (k.clone(), v.clone())),
            Some((
                SeriesKey::new("checkout_total", &[("country", "XX"), ("step", "other")]),
                SeriesValue::Counter { micros: 5 }
            ))
        );
        assert_eq!(
            hand(&[&[list.len() as u128]], &[]),
            index("metric index", list.len())
        );
        assert_eq!(hand(&[&[checkout, 5]], &[]), index("label value code", 5));
        assert_eq!(
            hand(&[&[checkout, 4, 2]], &[0xff, 0xfe, 1, 1]),
            Err(RecordError::Utf8("label value"))
        );
        assert_eq!(
            hand(&[&[checkout, 0, 0, 1], &[checkout, 0, 0, 1]], &[]),
            Err(RecordError::Repeated("series"))
        );
        // wait_seconds{zone}: 4 buckets.
        assert!(hand(&[&[wait, 0, 2, 0, 1, 3, 9, 10]], &[]).is_ok());
        assert_eq!(hand(&[&[wait, 0, 5]], &[]), index("number of buckets", 5));
        assert_eq!(hand(&[&[wait, 0, 1, 4, 1]], &[]), index("bucket index", 4));
        assert_eq!(
            hand(&[&[wait, 0, 2, 3, 9, 0, 1, 10]], &[]),
            Err(RecordError::Repeated("bucket index"))
        );
        assert_eq!(
            hand(&[&[wait, 0, 1, 0, u128::from(u64::MAX) + 1, 0]], &[]),
            Err(RecordError::Varint("bucket count"))
        );
        let mut not_utf8 = vec![VERSION];
        not_utf8.extend_from_slice(&list.fingerprint().to_le_bytes());
        not_utf8.extend_from_slice(&[0, 2, 0xc3, 0x28, 0]);
        assert_eq!(peek_batch(&not_utf8), Err(RecordError::Utf8("batch id")));
    }

    #[test]
    fn numbers_take_their_shortest_form_only() {
        let read = |bytes: &[u8]| Reader(bytes).varint("n");
        let write = |n: u128| {
            let mut out = Vec::new();
            put_u128(&mut out, n);
            out
        };
        for n in [
            0,
            1,
            127,
            128,
            300,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX,
        ] {
            assert_eq!(read(&write(n)), Ok(n), "{n}");
        }
        assert_eq!(write(300), [0xac, 0x02]);
        assert_eq!(write(u128::MAX).len(), 19);
        assert_eq!(
            read(&[0x80, 0x00]),
            Err(RecordError::Varint("n")),
            "0 in two bytes"
        );
        assert_eq!(read(&[0xff, 0x80, 0x00]), Err(RecordError::Varint("n")));
        let mut past = vec![0xff; 18];
        past.push(0x04);
        assert_eq!(read(&past), Err(RecordError::Varint("n")), "129 bits");
        assert_eq!(read(&[0xff; 20]), Err(RecordError::Varint("n")));
        assert_eq!(read(&[0xff, 0xff]), Err(RecordError::Truncated("n")));
        let mut big = Vec::new();
        put_u128(&mut big, u128::from(u64::MAX) + 1);
        assert_eq!(Reader(&big).u64("n"), Err(RecordError::Varint("n")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any delta of the allowlist's metrics (pum's own counters among them): labels absent,
        /// allowed, `otherValue` or anything else; values anywhere in their range.
        fn arb_delta(list: Arc<Allowlist>) -> impl Strategy<Value = Aggregate> {
            let label = (0..4u8, any::<prop::sample::Index>(), "[a-z\"é]{0,5}");
            let count = prop_oneof![3 => Just(0u64), 2 => 0u64..10, 1 => any::<u64>()];
            let micros = prop_oneof![0u128..10_000_000, any::<u128>()];
            let series = (
                any::<prop::sample::Index>(),
                prop::collection::vec(label, 4),
                micros.clone(),
                prop::collection::vec(count, 16),
                micros,
            );
            prop::collection::vec(series, 0..40).prop_map(move |all| {
                let mut delta = Aggregate::small(all.len());
                for (metric, labels, micros, counts, sum) in all {
                    let spec = &list.metrics().collect::<Vec<_>>()[metric.index(list.len())];
                    assert!(spec.labels.len() <= labels.len());
                    let mut pairs: Vec<(&str, String)> = Vec::new();
                    for (label, (choice, pick, literal)) in spec.labels.iter().zip(&labels) {
                        let value = match choice {
                            0 => continue,
                            1 => pick.get(&label.allowed_values).clone(),
                            2 => label.other_value.clone().unwrap_or_else(|| literal.clone()),
                            _ => literal.clone(),
                        };
                        pairs.push((&label.name, value));
                    }
                    let pairs: Vec<(&str, &str)> =
                        pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let key = SeriesKey::new(spec.name.as_str(), &pairs);
                    let value = match &spec.kind {
                        MetricKind::Counter => SeriesValue::Counter { micros },
                        MetricKind::Histogram { .. } => SeriesValue::Histogram {
                            buckets: counts[..spec.bucket_count()].to_vec(),
                            sum_micros: sum,
                        },
                    };
                    delta.add_value(key, value);
                }
                delta
            })
        }

        fn round_trips(
            list: &Allowlist,
            delta: &Aggregate,
            batch: Option<&str>,
            at: u64,
        ) -> Result<(), TestCaseError> {
            let mut bytes = Vec::new();
            encode(list, batch, at, delta, &mut bytes).expect("encodes");
            let back = decode(&bytes, list).expect("decodes");
            prop_assert_eq!(
                back,
                Record {
                    fingerprint: list.fingerprint(),
                    batch: batch.map(str::to_owned),
                    at_secs: at,
                    delta: delta.clone(),
                }
            );
            Ok(())
        }

        fn example() -> Arc<Allowlist> {
            Arc::new(Allowlist::example())
        }

        proptest! {
            #[test]
            fn example_deltas_round_trip(
                delta in arb_delta(example()),
                batch in proptest::option::of("[A-Za-z0-9_-]{16,64}"),
                at in any::<u64>(),
            ) {
                round_trips(&example(), &delta, batch.as_deref(), at)?;
            }

            #[test]
            fn rich_deltas_round_trip(delta in arb_delta(Arc::new(rich())), at in any::<u64>()) {
                round_trips(&rich(), &delta, None, at)?;
            }

            #[test]
            fn damaged_records_never_panic(
                delta in arb_delta(example()),
                damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                cut in any::<prop::sample::Index>(),
            ) {
                let list = example();
                let mut bytes = Vec::new();
                encode(&list, Some(BATCH), AT, &delta, &mut bytes).expect("encodes");
                for (at, byte) in damage {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                let _ = decode(&bytes, &list);
                let _ = peek_batch(&bytes);
                let end = cut.index(bytes.len() + 1);
                let _ = decode(&bytes[..end], &list);
            }

            #[test]
            fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                let list = example();
                let _ = decode(&bytes, &list);
                let mut headed = vec![VERSION];
                headed.extend_from_slice(&list.fingerprint().to_le_bytes());
                headed.extend_from_slice(&bytes);
                let _ = decode(&headed, &list);
                let _ = peek_batch(&headed);
            }
        }
    }
}
