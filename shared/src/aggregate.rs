//! Exact, mergeable aggregates.
//!
//! A push becomes a delta [`Aggregate`]; stores keep the cumulative [`Aggregate`]; the collector
//! renders it. Counter values and histogram sums are kept in fixed point (millionths, in a
//! `u128`) rather than `f64`: float addition is not associative, so `f64` totals would depend on
//! the order in which shards and batches were merged. With integers, merging is commutative and
//! associative, which is what lets every backend shard freely and still agree to the last unit.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Fixed-point units per unit of a value: values are kept in millionths.
pub const MICROS_PER_UNIT: f64 = 1_000_000.0;

/// Converts a finite, non-negative value to fixed point (rounded to the nearest millionth).
/// Callers validate first; negative or non-finite input saturates to 0.
pub fn to_micros(value: f64) -> u128 {
    let scaled = (value * MICROS_PER_UNIT).round();
    if scaled.is_finite() && scaled > 0.0 {
        scaled as u128
    } else {
        0
    }
}

/// Converts fixed point back to a float for rendering.
pub fn micros_to_f64(micros: u128) -> f64 {
    // Split so that large totals keep their fractional part as well as f64 allows.
    let whole = (micros / 1_000_000) as f64;
    let frac = (micros % 1_000_000) as f64 / MICROS_PER_UNIT;
    whole + frac
}

/// Identifies one series: a metric name and its label pairs, sorted by label name.
///
/// The strings are shared (`Arc<str>`): the ingest takes them from the compiled allowlist, so
/// building a push's keys copies no string. The key itself is shared too, with a hash of its
/// content computed once when it is built: a push's key is looked up in its delta and then in a
/// store's totals, and cloning a key (pum's own counters, every new series a store keeps) or
/// hashing it then costs no more than for a number.
#[derive(Clone)]
pub struct SeriesKey(Arc<KeyParts>);

struct KeyParts {
    metric: Arc<str>,
    labels: SmallVec<[(Arc<str>, Arc<str>); 2]>,
    hash: u64,
}

impl SeriesKey {
    /// A key with the given labels (sorted here, so callers may pass any order).
    pub fn new(metric: impl Into<Arc<str>>, labels: &[(&str, &str)]) -> Self {
        Self::from_parts(
            metric.into(),
            labels
                .iter()
                .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
                .collect(),
        )
    }

    /// A key from shared strings; the labels are sorted here if they are not yet.
    pub fn from_parts(metric: Arc<str>, mut labels: SmallVec<[(Arc<str>, Arc<str>); 2]>) -> Self {
        if !labels.is_sorted() {
            labels.sort();
        }
        let hash = std::hash::BuildHasher::hash_one(
            &foldhash::fast::FixedState::with_seed(0x7075_6d5f_6b65_7973),
            (&*metric, labels.as_slice()),
        );
        SeriesKey(Arc::new(KeyParts {
            metric,
            labels,
            hash,
        }))
    }

    /// The metric name.
    pub fn metric(&self) -> &Arc<str> {
        &self.0.metric
    }

    /// Label pairs sorted by name; labels a push did not set are absent.
    pub fn labels(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.0.labels
    }
}

impl PartialEq for SeriesKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        // Different hashes settle almost every comparison of different keys.
        self.0.hash == other.0.hash
            && (Arc::ptr_eq(&self.0, &other.0)
                || (self.0.metric == other.0.metric && self.0.labels == other.0.labels))
    }
}

impl Eq for SeriesKey {}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl Ord for SeriesKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.metric(), self.labels()).cmp(&(other.metric(), other.labels()))
    }
}

impl PartialOrd for SeriesKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesKey")
            .field("metric", self.metric())
            .field("labels", &self.labels())
            .finish()
    }
}

/// The cumulative (or, in a push, delta) value of one series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeriesValue {
    /// A counter, in millionths.
    Counter {
        /// The total in millionths of a unit.
        micros: u128,
    },
    /// A classic histogram.
    Histogram {
        /// Per-bucket (not cumulative) counts, one per configured upper bound and a last one for
        /// `+Inf`.
        buckets: Vec<u64>,
        /// Sum of observations in millionths of a unit.
        sum_micros: u128,
    },
}

impl SeriesValue {
    /// The number of observations of a histogram (the sum of its buckets), or `None` for a
    /// counter.
    pub fn count(&self) -> Option<u64> {
        match self {
            SeriesValue::Counter { .. } => None,
            SeriesValue::Histogram { buckets, .. } => {
                Some(buckets.iter().fold(0u64, |a, b| a.saturating_add(*b)))
            }
        }
    }

    /// Adds `other` into `self`. A histogram meeting a counter under one key (the config changed
    /// the metric's type) keeps the histogram; bucket vectors of different lengths are added
    /// element-wise as if the shorter were padded with zeros. Both rules keep the merge
    /// commutative and associative.
    fn add(&mut self, other: &SeriesValue) {
        self.combine(other, u64::saturating_add, u128::saturating_add);
    }

    /// Whether [`SeriesValue::add`] of `other` keeps every total exact: no counter, sum or bucket
    /// past its type's range, and no histogram's count (the sum of its buckets, which `_count`
    /// and the `+Inf` bucket show) past `u64`.
    fn can_add(&self, other: &SeriesValue) -> bool {
        match (self, other) {
            (SeriesValue::Counter { micros }, SeriesValue::Counter { micros: o }) => {
                micros.checked_add(*o).is_some()
            }
            (
                SeriesValue::Histogram {
                    buckets,
                    sum_micros,
                },
                SeriesValue::Histogram {
                    buckets: ob,
                    sum_micros: os,
                },
            ) => {
                // Every bucket's new count, and their sum (the new `_count`), must fit a u64.
                let mut count: u64 = 0;
                for i in 0..buckets.len().max(ob.len()) {
                    let b = buckets.get(i).copied().unwrap_or(0);
                    let o = ob.get(i).copied().unwrap_or(0);
                    match b.checked_add(o).and_then(|n| count.checked_add(n)) {
                        Some(c) => count = c,
                        None => return false,
                    }
                }
                sum_micros.checked_add(*os).is_some()
            }
            // The histogram replaces the counter, or the counter is dropped: nothing is added.
            (SeriesValue::Counter { .. }, SeriesValue::Histogram { .. })
            | (SeriesValue::Histogram { .. }, SeriesValue::Counter { .. }) => true,
        }
    }

    /// [`SeriesValue::add`] if [`SeriesValue::can_add`], in one pass: returns false, and leaves
    /// `self` as it was, if a total would not stay exact. (The check and the add in one loop cost
    /// what the add alone did.)
    fn try_add(&mut self, other: &SeriesValue) -> bool {
        if let (SeriesValue::Counter { micros }, SeriesValue::Counter { micros: o }) =
            (&mut *self, other)
        {
            return match micros.checked_add(*o) {
                Some(n) => {
                    *micros = n;
                    true
                }
                None => false,
            };
        }
        if let (
            SeriesValue::Histogram {
                buckets,
                sum_micros,
            },
            SeriesValue::Histogram {
                buckets: ob,
                sum_micros: os,
            },
        ) = (&mut *self, other)
            && ob.len() <= buckets.len()
        {
            let Some(sum) = sum_micros.checked_add(*os) else {
                return false;
            };
            let mut count: u64 = 0;
            for i in 0..buckets.len() {
                let next = match ob.get(i) {
                    Some(o) => buckets[i].checked_add(*o),
                    None => Some(buckets[i]),
                };
                match next.and_then(|n| count.checked_add(n).map(|c| (n, c))) {
                    Some((n, c)) => {
                        buckets[i] = n;
                        count = c;
                    }
                    None => {
                        for (b, o) in buckets.iter_mut().zip(ob).take(i) {
                            *b -= *o;
                        }
                        return false;
                    }
                }
            }
            *sum_micros = sum;
            return true;
        }
        // Longer bucket vectors in `other`, or a change of type: the general path.
        if !self.can_add(other) {
            return false;
        }
        self.add(other);
        true
    }

    /// Keeps, element by element, the larger of `self` and `other`: cumulative values only grow,
    /// so the larger one is the fresher read of the same shard.
    fn max_with(&mut self, other: &SeriesValue) {
        self.combine(other, Ord::max, Ord::max);
    }

    /// Combines `other` into `self` element by element with `count` (bucket counts) and `total`
    /// (counter and sum values), padding shorter bucket vectors with zeros. For merges both
    /// operations are commutative and associative with 0 as identity.
    fn combine(
        &mut self,
        other: &SeriesValue,
        count: impl Fn(u64, u64) -> u64,
        total: impl Fn(u128, u128) -> u128,
    ) {
        match (&mut *self, other) {
            (SeriesValue::Counter { micros }, SeriesValue::Counter { micros: o }) => {
                *micros = total(*micros, *o);
            }
            (
                SeriesValue::Histogram {
                    buckets,
                    sum_micros,
                },
                SeriesValue::Histogram {
                    buckets: ob,
                    sum_micros: os,
                },
            ) => {
                if buckets.len() < ob.len() {
                    buckets.resize(ob.len(), 0);
                }
                for (b, o) in buckets.iter_mut().zip(ob) {
                    *b = count(*b, *o);
                }
                *sum_micros = total(*sum_micros, *os);
            }
            (SeriesValue::Counter { .. }, SeriesValue::Histogram { .. }) => *self = other.clone(),
            (SeriesValue::Histogram { .. }, SeriesValue::Counter { .. }) => {}
        }
    }
}

/// A merge refused by [`Aggregate::try_merge`]: it would take a total of this series past what
/// its type holds (a counter or sum past `u128::MAX` millionths, a bucket or a histogram's count
/// past `u64::MAX`). Stores answer it as the push's fault: see
/// [`StoreError::Overflow`](crate::StoreError::Overflow).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("adding to series {} would overflow its total", SeriesName(&self.key))]
pub struct Overflow {
    /// The first series found that would overflow.
    pub key: SeriesKey,
}

/// A series as Prometheus writes it: `name{label="value",...}`.
struct SeriesName<'a>(&'a SeriesKey);

impl std::fmt::Display for SeriesName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.metric())?;
        if self.0.labels().is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (k, v)) in self.0.labels().iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            write!(f, "{comma}{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// A set of series with their values: a push's delta, or a store's cumulative totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    series: SeriesMap,
}

/// A small aggregate ([`Aggregate::small`]) moves its series to a hash map past this many.
const FEW: usize = 32;

/// The series of an aggregate. A push's delta holds a few dozen series at most: a vector holds
/// them in one small allocation, and a lookup compares the keys' cached hashes one after the
/// other, which beats building, probing and freeing a hash table for every push. Other
/// aggregates (a store's totals), and a small one past [`FEW`] series, use a hash map, where a
/// lookup hashes the key once and compares it with a candidate or two. Keys are bounded by the
/// allowlist, so the map's fast seeded hash (foldhash) serves better than SipHash, whose
/// resistance to crafted keys buys nothing here.
#[derive(Clone, Debug)]
enum SeriesMap {
    Few(Vec<(SeriesKey, SeriesValue)>),
    Many(HashMap<SeriesKey, SeriesValue, foldhash::fast::RandomState>),
}

impl Default for SeriesMap {
    fn default() -> Self {
        SeriesMap::Many(HashMap::default())
    }
}

impl PartialEq for SeriesMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for SeriesMap {}

impl SeriesMap {
    fn len(&self) -> usize {
        match self {
            SeriesMap::Few(v) => v.len(),
            SeriesMap::Many(m) => m.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &SeriesValue)> {
        let (few, many) = match self {
            SeriesMap::Few(v) => (Some(v.iter().map(|(k, v)| (k, v))), None),
            SeriesMap::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn get(&self, key: &SeriesKey) -> Option<&SeriesValue> {
        match self {
            SeriesMap::Few(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            SeriesMap::Many(m) => m.get(key),
        }
    }

    fn get_mut(&mut self, key: &SeriesKey) -> Option<&mut SeriesValue> {
        match self {
            SeriesMap::Few(v) => v.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            SeriesMap::Many(m) => m.get_mut(key),
        }
    }

    fn remove(&mut self, key: &SeriesKey) {
        match self {
            SeriesMap::Few(v) => v.retain(|(k, _)| k != key),
            SeriesMap::Many(m) => {
                m.remove(key);
            }
        }
    }

    /// Adds a series that is not there yet.
    fn insert_new(&mut self, key: SeriesKey, value: SeriesValue) -> &mut SeriesValue {
        if let SeriesMap::Few(v) = self
            && v.len() == FEW
        {
            let mut m = HashMap::with_capacity_and_hasher(4 * FEW, Default::default());
            m.extend(v.drain(..));
            *self = SeriesMap::Many(m);
        }
        match self {
            SeriesMap::Few(v) => {
                v.push((key, value));
                let last = v.len() - 1;
                &mut v[last].1
            }
            SeriesMap::Many(m) => match m.entry(key) {
                Entry::Vacant(e) => e.insert(value),
                Entry::Occupied(e) => {
                    let slot = e.into_mut();
                    *slot = value;
                    slot
                }
            },
        }
    }

    /// The value of `key`, made by `new` if the series is not there yet.
    fn get_or_insert_with(
        &mut self,
        key: SeriesKey,
        new: impl FnOnce() -> SeriesValue,
    ) -> &mut SeriesValue {
        let found = match self {
            SeriesMap::Few(v) => v.iter().position(|(k, _)| *k == key),
            SeriesMap::Many(_) => None,
        };
        match (self, found) {
            (SeriesMap::Few(v), Some(i)) => &mut v[i].1,
            (SeriesMap::Many(m), _) => m.entry(key).or_insert_with(new),
            (this, None) => this.insert_new(key, new()),
        }
    }
}

impl Aggregate {
    /// An empty aggregate.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty aggregate for a few series, such as one push's delta, with room for `series`.
    /// It keeps them in a vector (see [`SeriesMap`]) until it holds more than a few dozen.
    pub fn small(series: usize) -> Self {
        Aggregate {
            series: SeriesMap::Few(Vec::with_capacity(series.min(FEW))),
        }
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether there are no series.
    pub fn is_empty(&self) -> bool {
        self.series.len() == 0
    }

    /// The series in key order (series of one metric are contiguous).
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &SeriesValue)> {
        let mut all: Vec<_> = self.series.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// The series in no particular order (cheaper than [`Aggregate::iter`]).
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&SeriesKey, &SeriesValue)> {
        self.series.iter()
    }

    /// The value of one series.
    pub fn get(&self, key: &SeriesKey) -> Option<&SeriesValue> {
        self.series.get(key)
    }

    /// Adds `micros` to a counter series.
    ///
    /// Within one push's delta the addition saturates rather than fails, and cannot reach the
    /// ceiling: [`Limits::check`](crate::Limits::check) refuses, at start-up, any maximum for
    /// which one push could add more than `u128::MAX /`
    /// [`PLAUSIBLE_PUSHES`](crate::limits::PLAUSIBLE_PUSHES) to a series.
    pub fn add_counter(&mut self, key: SeriesKey, micros: u128) {
        self.add_value(key, SeriesValue::Counter { micros });
    }

    /// Records observations, each `(bucket index, value in millionths)`, in a histogram with
    /// `bucket_count` buckets (including `+Inf`). Saturating, for the reason given at
    /// [`Aggregate::add_counter`]: within one push the caps keep every count and sum far below
    /// the ceiling.
    pub fn observe_all(
        &mut self,
        key: SeriesKey,
        bucket_count: usize,
        observations: impl IntoIterator<Item = (usize, u128)>,
    ) {
        let value = self
            .series
            .get_or_insert_with(key, || SeriesValue::Histogram {
                buckets: vec![0; bucket_count],
                sum_micros: 0,
            });
        if let SeriesValue::Histogram {
            buckets,
            sum_micros,
        } = value
        {
            for (bucket, micros) in observations {
                if buckets.len() <= bucket {
                    buckets.resize(bucket + 1, 0);
                }
                buckets[bucket] = buckets[bucket].saturating_add(1);
                *sum_micros = sum_micros.saturating_add(micros);
            }
        }
    }

    /// Adds one series value.
    pub fn add_value(&mut self, key: SeriesKey, value: SeriesValue) {
        match self.series.get_mut(&key) {
            Some(mine) => mine.add(&value),
            None => {
                self.series.insert_new(key, value);
            }
        }
    }

    /// Adds every series of `other` into `self`. Commutative and associative. A total that
    /// would overflow saturates: stores fold pushes into their totals with
    /// [`Aggregate::try_merge`], and this is for sums already known to fit (records checked when
    /// they were written, a test's expectations).
    pub fn merge(&mut self, other: &Aggregate) {
        for (key, value) in other.series.iter() {
            match self.series.get_mut(key) {
                Some(mine) => mine.add(value),
                None => {
                    self.series.insert_new(key.clone(), value.clone());
                }
            }
        }
    }

    /// Adds every series of `other` into `self` if every total stays exact; if any would
    /// overflow, changes nothing and says which. Where it succeeds it equals
    /// [`Aggregate::merge`]. Stores fold with it so that no total ever sticks at a ceiling.
    pub fn try_merge(&mut self, other: &Aggregate) -> Result<(), Overflow> {
        // One pass, as `merge` does (a store's hot path): each series is checked as it is added,
        // and on the rare refusal what was done is undone. `undo` records what subtraction
        // cannot restore: a series this merge created (`None`), or one whose value it replaced
        // (a histogram over a counter).
        let mut undo: Vec<(usize, Option<SeriesValue>)> = Vec::new();
        for (i, (key, value)) in other.series.iter().enumerate() {
            match self.series.get_mut(key) {
                Some(mine) => {
                    if matches!(
                        (&*mine, value),
                        (SeriesValue::Counter { .. }, SeriesValue::Histogram { .. })
                    ) {
                        undo.push((i, Some(mine.clone())));
                    }
                    if !mine.try_add(value) {
                        self.unmerge(other, i, &undo);
                        return Err(Overflow { key: key.clone() });
                    }
                }
                None => {
                    undo.push((i, None));
                    self.series.insert_new(key.clone(), value.clone());
                }
            }
        }
        Ok(())
    }

    /// Takes the first `n` series of `other` (in its iteration order, which has not changed) out
    /// again after [`Aggregate::try_merge`] added them.
    fn unmerge(&mut self, other: &Aggregate, n: usize, undo: &[(usize, Option<SeriesValue>)]) {
        let mut undo = undo.iter().peekable();
        for (i, (key, value)) in other.series.iter().take(n).enumerate() {
            let special = undo.next_if(|(at, _)| *at == i).map(|(_, old)| old);
            match (special, self.series.get_mut(key)) {
                (Some(None), _) => self.series.remove(key),
                (Some(Some(old)), Some(mine)) => *mine = old.clone(),
                (None, Some(mine)) => {
                    mine.combine(value, u64::saturating_sub, u128::saturating_sub)
                }
                (Some(Some(_)), None) => {}
                (None, None) => {}
            }
        }
    }

    /// Undoes a [`Aggregate::merge`] of `other` (a store whose write failed after it merged in
    /// memory). Series the merge created stay, at zero.
    pub fn subtract(&mut self, other: &Aggregate) {
        for (key, value) in other.series.iter() {
            if let Some(mine) = self.series.get_mut(key) {
                mine.combine(value, u64::saturating_sub, u128::saturating_sub);
            }
        }
    }

    /// Keeps, per series, the larger of `self` and `other` (see [`SeriesValue`]): a collector
    /// folds each read of a shard into what it saw before, so a stale read never makes a counter
    /// go backwards.
    pub fn merge_max(&mut self, other: &Aggregate) {
        for (key, value) in other.series.iter() {
            match self.series.get_mut(key) {
                Some(mine) => mine.max_with(value),
                None => {
                    self.series.insert_new(key.clone(), value.clone());
                }
            }
        }
    }

    /// Encodes as the snapshot JSON format (see [`Snapshot`]).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Snapshot::from(self)).unwrap_or_else(|_| String::from("{}"))
    }

    /// Decodes the snapshot JSON format.
    pub fn from_json(text: &str) -> Result<Self, SnapshotError> {
        let snapshot: Snapshot = serde_json::from_str(text).map_err(SnapshotError::Json)?;
        Aggregate::try_from(snapshot)
    }
}

/// A snapshot that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not the snapshot JSON shape.
    #[error("snapshot is not valid JSON of the expected shape: {0}")]
    Json(serde_json::Error),
    /// A version this build does not read.
    #[error("snapshot version {0} is not supported (this build reads version 1)")]
    Version(u32),
    /// A series entry that is neither a counter nor a histogram, or a number that is not one.
    #[error("snapshot series {0:?} is malformed: {1}")]
    Series(String, &'static str),
}

/// The portable snapshot format, version 1: what KV, DynamoDB exports, the export endpoint and
/// the embedded store's files hold. Fixed-point totals are decimal strings, so that JavaScript
/// and DynamoDB readers never round them.
///
/// ```json
/// {"v":1,"series":[
///   {"metric":"clicks_total","labels":{"button":"buy"},"counter":"3000000"},
///   {"metric":"api_seconds","labels":{},"buckets":[1,0,2],"sum":"5400000"}]}
/// ```
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version, 1.
    pub v: u32,
    /// Every series.
    pub series: Vec<SnapshotSeries>,
}

/// One series of a [`Snapshot`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotSeries {
    /// Metric name.
    pub metric: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Counter total in millionths, as a decimal string (counters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
    /// Per-bucket counts, `+Inf` last (histograms only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<u64>>,
    /// Sum in millionths, as a decimal string (histograms only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
}

impl From<&Aggregate> for Snapshot {
    fn from(agg: &Aggregate) -> Self {
        let series = agg
            .iter()
            .map(|(key, value)| {
                let labels = key
                    .labels()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                match value {
                    SeriesValue::Counter { micros } => SnapshotSeries {
                        metric: key.metric().to_string(),
                        labels,
                        counter: Some(micros.to_string()),
                        buckets: None,
                        sum: None,
                    },
                    SeriesValue::Histogram {
                        buckets,
                        sum_micros,
                    } => SnapshotSeries {
                        metric: key.metric().to_string(),
                        labels,
                        counter: None,
                        buckets: Some(buckets.clone()),
                        sum: Some(sum_micros.to_string()),
                    },
                }
            })
            .collect();
        Snapshot { v: 1, series }
    }
}

impl TryFrom<Snapshot> for Aggregate {
    type Error = SnapshotError;

    fn try_from(snapshot: Snapshot) -> Result<Self, SnapshotError> {
        if snapshot.v != 1 {
            return Err(SnapshotError::Version(snapshot.v));
        }
        let mut agg = Aggregate::new();
        for s in snapshot.series {
            let value = match (s.counter, s.buckets, s.sum) {
                (Some(c), None, None) => SeriesValue::Counter {
                    micros: c
                        .parse()
                        .map_err(|_| SnapshotError::Series(s.metric.clone(), "bad counter"))?,
                },
                (None, Some(buckets), Some(sum)) => SeriesValue::Histogram {
                    buckets,
                    sum_micros: sum
                        .parse()
                        .map_err(|_| SnapshotError::Series(s.metric.clone(), "bad sum"))?,
                },
                _ => {
                    return Err(SnapshotError::Series(
                        s.metric,
                        "needs either counter, or buckets and sum",
                    ));
                }
            };
            let key = SeriesKey::from_parts(
                s.metric.into(),
                s.labels
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            );
            agg.add_value(key, value);
        }
        Ok(agg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(buckets: &[u64], sum: u128) -> SeriesValue {
        SeriesValue::Histogram {
            buckets: buckets.to_vec(),
            sum_micros: sum,
        }
    }

    #[test]
    fn micros_round_trip() {
        assert_eq!(to_micros(1.5), 1_500_000);
        assert_eq!(to_micros(0.000_000_4), 0);
        assert_eq!(to_micros(-1.0), 0);
        assert_eq!(to_micros(f64::NAN), 0);
        assert_eq!(micros_to_f64(2_250_000), 2.25);
    }

    #[test]
    fn counters_and_histograms_add() {
        let k = SeriesKey::new("c", &[("b", "2"), ("a", "1")]);
        assert_eq!(&*k.labels()[0].0, "a");
        let mut a = Aggregate::new();
        a.add_counter(k.clone(), 3);
        a.add_counter(k.clone(), 4);
        assert_eq!(a.get(&k), Some(&SeriesValue::Counter { micros: 7 }));

        let h = SeriesKey::new("h", &[]);
        a.observe_all(h.clone(), 3, [(0, 10), (2, 20)]);
        a.observe_all(h.clone(), 3, [(2, 5)]);
        assert_eq!(a.get(&h), Some(&hist(&[1, 0, 2], 35)));
        assert_eq!(a.get(&h).and_then(SeriesValue::count), Some(3));
    }

    #[test]
    fn type_conflicts_resolve_the_same_in_any_order() {
        let k = SeriesKey::new("x", &[]);
        let mut c = Aggregate::new();
        c.add_counter(k.clone(), 5);
        let mut h = Aggregate::new();
        h.add_value(k.clone(), hist(&[1, 2], 3));
        let mut ch = c.clone();
        ch.merge(&h);
        let mut hc = h.clone();
        hc.merge(&c);
        assert_eq!(ch, hc);
        assert_eq!(ch.get(&k), Some(&hist(&[1, 2], 3)));
    }

    #[test]
    fn bucket_lengths_pad() {
        let k = SeriesKey::new("x", &[]);
        let mut a = Aggregate::new();
        a.add_value(k.clone(), hist(&[1, 1], 2));
        let mut b = Aggregate::new();
        b.add_value(k.clone(), hist(&[1, 1, 1], 3));
        a.merge(&b);
        assert_eq!(a.get(&k), Some(&hist(&[2, 2, 1], 5)));
    }

    #[test]
    fn subtract_undoes_merge() {
        let mut total = Aggregate::new();
        total.add_counter(SeriesKey::new("c", &[]), 10);
        total.add_value(SeriesKey::new("h", &[]), hist(&[1, 2], 30));
        let before = total.clone();
        let mut delta = Aggregate::new();
        delta.add_counter(SeriesKey::new("c", &[]), 4);
        delta.add_value(SeriesKey::new("h", &[]), hist(&[0, 1], 7));
        total.merge(&delta);
        total.subtract(&delta);
        assert_eq!(total, before);
    }

    #[test]
    fn try_merge_refuses_an_overflow_and_changes_nothing() {
        let c = SeriesKey::new("c", &[("k", "v")]);
        let h = SeriesKey::new("h", &[]);
        let mut totals = Aggregate::new();
        totals.add_counter(c.clone(), u128::MAX - 5);
        totals.add_value(h.clone(), hist(&[1, 2], 30));
        let before = totals.clone();

        // One series fits, the other does not: neither is added.
        let mut delta = Aggregate::new();
        delta.add_value(h.clone(), hist(&[1, 1], 1));
        delta.add_counter(c.clone(), 6);
        assert_eq!(totals.try_merge(&delta), Err(Overflow { key: c.clone() }));
        assert_eq!(totals, before);
        assert_eq!(
            Overflow { key: c.clone() }.to_string(),
            "adding to series c{k=\"v\"} would overflow its total"
        );

        // Up to the last unit is fine.
        let mut delta = Aggregate::new();
        delta.add_counter(c.clone(), 5);
        delta.add_value(h.clone(), hist(&[1, 1], 1));
        totals.try_merge(&delta).expect("fits exactly");
        assert_eq!(
            totals.get(&c),
            Some(&SeriesValue::Counter { micros: u128::MAX })
        );

        // A bucket, a sum, and a count whose buckets each fit but whose sum does not.
        let mut totals = Aggregate::new();
        totals.add_value(h.clone(), hist(&[u64::MAX - 1, 0], u128::MAX - 1));
        for (buckets, sum) in [(&[2, 0][..], 0), (&[0, 0], 2), (&[0, 2], 0)] {
            let mut delta = Aggregate::new();
            delta.add_value(h.clone(), hist(buckets, sum));
            let before = totals.clone();
            assert!(totals.try_merge(&delta).is_err(), "{buckets:?} {sum}");
            assert_eq!(totals, before);
        }
        let mut delta = Aggregate::new();
        delta.add_value(h.clone(), hist(&[1, 0, 0], 1));
        totals.try_merge(&delta).expect("fits exactly");
        assert_eq!(totals.get(&h).and_then(SeriesValue::count), Some(u64::MAX));
    }

    #[test]
    fn merge_max_keeps_freshest() {
        let k = SeriesKey::new("x", &[]);
        let mut seen = Aggregate::new();
        seen.add_counter(k.clone(), 10);
        let mut stale = Aggregate::new();
        stale.add_counter(k.clone(), 7);
        seen.merge_max(&stale);
        assert_eq!(seen.get(&k), Some(&SeriesValue::Counter { micros: 10 }));
        let mut fresh = Aggregate::new();
        fresh.add_counter(k.clone(), 12);
        seen.merge_max(&fresh);
        assert_eq!(seen.get(&k), Some(&SeriesValue::Counter { micros: 12 }));
    }

    #[test]
    fn snapshot_round_trips_exactly() {
        let mut a = Aggregate::new();
        a.add_counter(SeriesKey::new("c", &[("k", "v\"q")]), u128::MAX - 1);
        a.add_value(
            SeriesKey::new("h", &[]),
            hist(&[u64::MAX, 0, 3], 123_456_789),
        );
        let text = a.to_json();
        assert_eq!(Aggregate::from_json(&text).expect("decodes"), a);
    }

    #[test]
    fn snapshot_errors_are_clear() {
        assert!(matches!(
            Aggregate::from_json(r#"{"v":2,"series":[]}"#),
            Err(SnapshotError::Version(2))
        ));
        assert!(matches!(
            Aggregate::from_json(r#"{"v":1,"series":[{"metric":"m","counter":"x"}]}"#),
            Err(SnapshotError::Series(_, "bad counter"))
        ));
        assert!(matches!(
            Aggregate::from_json(r#"{"v":1,"series":[{"metric":"m"}]}"#),
            Err(SnapshotError::Series(..))
        ));
        assert!(matches!(
            Aggregate::from_json("[]"),
            Err(SnapshotError::Json(_))
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Totals with values anywhere in their range, near the ceilings most of all, so that
        /// merging two of them overflows about as often as not.
        fn arb_totals() -> impl Strategy<Value = Aggregate> {
            let big = prop_oneof![
                0u128..1_000,
                (0u128..1_000).prop_map(|d| u128::MAX - d),
                (0u128..1_000).prop_map(|d| u128::MAX / 2 - d),
            ];
            let count = prop_oneof![
                0u64..1_000,
                (0u64..1_000).prop_map(|d| u64::MAX - d),
                (0u64..1_000).prop_map(|d| u64::MAX / 2 - d),
                (0u64..1_000).prop_map(|d| u64::MAX / 4 - d),
            ];
            let counter = (0..3usize, big.clone()).prop_map(|(m, v)| {
                (
                    SeriesKey::new(format!("c{m}"), &[]),
                    SeriesValue::Counter { micros: v },
                )
            });
            // Three buckets always: `exact` compares bucket vectors, which padding would lengthen.
            let histogram = (0..2usize, prop::collection::vec(count, 3), big)
                .prop_filter(
                    "a stored histogram's count fits in a u64",
                    |(_, buckets, _)| {
                        buckets.iter().map(|b| u128::from(*b)).sum::<u128>() <= u128::from(u64::MAX)
                    },
                )
                .prop_map(|(m, buckets, sum)| {
                    (
                        SeriesKey::new(format!("h{m}"), &[]),
                        SeriesValue::Histogram {
                            buckets,
                            sum_micros: sum,
                        },
                    )
                });
            prop::collection::vec(prop_oneof![counter, histogram], 0..5).prop_map(|series| {
                let mut a = Aggregate::new();
                for (key, value) in series {
                    // One value per series: a total as a store holds it, never saturated.
                    if a.get(&key).is_none() {
                        a.add_value(key, value);
                    }
                }
                a
            })
        }

        /// Whether merging `b` into `a` is exact, judged without `can_add`: a saturating merge
        /// was exact if subtracting `b` again gives back every series of `a`, and every
        /// histogram's buckets add up, in a u128, to at most `u64::MAX`.
        fn exact(a: &Aggregate, b: &Aggregate) -> bool {
            let mut merged = a.clone();
            merged.merge(b);
            let counts_fit = merged.iter_unordered().all(|(_, v)| match v {
                SeriesValue::Histogram { buckets, .. } => {
                    buckets.iter().map(|b| u128::from(*b)).sum::<u128>() <= u128::from(u64::MAX)
                }
                SeriesValue::Counter { .. } => true,
            });
            merged.subtract(b);
            counts_fit && a.iter_unordered().all(|(k, v)| merged.get(k) == Some(v))
        }

        proptest! {
            #[test]
            fn try_merge_is_merge_or_nothing(a in arb_totals(), b in arb_totals()) {
                let mut tried = a.clone();
                match tried.try_merge(&b) {
                    Ok(()) => {
                        let mut merged = a.clone();
                        merged.merge(&b);
                        prop_assert_eq!(&tried, &merged);
                        prop_assert!(exact(&a, &b), "an inexact merge was taken");
                    }
                    Err(Overflow { key }) => {
                        prop_assert_eq!(&tried, &a, "a refused merge changed the totals");
                        prop_assert!(a.get(&key).is_some() && b.get(&key).is_some());
                        prop_assert!(!exact(&a, &b), "an exact merge was refused");
                    }
                }
            }

            #[test]
            fn try_merge_refuses_the_same_in_either_order(a in arb_totals(), b in arb_totals()) {
                let mut ab = a.clone();
                let mut ba = b.clone();
                let (first, second) = (ab.try_merge(&b), ba.try_merge(&a));
                prop_assert_eq!(first.is_ok(), second.is_ok());
                if first.is_ok() {
                    prop_assert_eq!(ab, ba);
                }
            }
        }
    }

    #[test]
    fn small_and_large_aggregates_agree() {
        let key = |i: usize| SeriesKey::new("c", &[("i", &i.to_string())]);
        // Grown one series at a time past the vector's size, and made large up front.
        let mut grown = Aggregate::small(4);
        let mut large = Aggregate::new();
        for round in 0..3u128 {
            for i in 0..3 * FEW {
                let mut delta = Aggregate::small(2);
                delta.add_counter(key(i), round + i as u128);
                delta.observe_all(SeriesKey::new("h", &[]), 2, [(i % 2, 5)]);
                grown.merge(&delta);
                large.merge(&delta);
            }
        }
        assert!(matches!(grown.series, SeriesMap::Many(_)));
        assert_eq!(grown.len(), 3 * FEW + 1);
        assert_eq!(grown, large);
        for i in 0..3 * FEW {
            let want = 3 * i as u128 + 3;
            assert_eq!(
                grown.get(&key(i)),
                Some(&SeriesValue::Counter { micros: want })
            );
        }
        let n = 3 * 3 * FEW as u64;
        assert_eq!(
            grown.get(&SeriesKey::new("h", &[])),
            Some(&hist(&[n / 2, n / 2], 5 * n as u128))
        );
        // A small aggregate equals a large one with the same series, whatever their order.
        let mut few = Aggregate::small(FEW);
        let mut many = Aggregate::new();
        for i in 0..FEW {
            few.add_counter(key(i), 1);
            many.add_counter(key(FEW - 1 - i), 1);
        }
        assert!(matches!(few.series, SeriesMap::Few(_)));
        assert!(matches!(many.series, SeriesMap::Many(_)));
        assert_eq!(few, many);
        many.add_counter(key(0), 1);
        assert_ne!(few, many);
    }
}
