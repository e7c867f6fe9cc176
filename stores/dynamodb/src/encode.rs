//! How series live in DynamoDB items: partition keys, attribute names and numbers.
//!
//! An aggregates item holds one *group* (or a share of it) of one writer region:
//!
//! - partition key `pk` = `{region}#{n}#{group}`, where the group is a metric name (the item
//!   holds only that metric) or [`SHARED_GROUP`] (the item holds pum's own counters, see
//!   [`group_of`]), and `n` numbers the group's items ([`items_for_group`]; 0 for most);
//! - one number attribute per series component, named `{component}|{labels}` in a metric's own
//!   item and `{metric}|{component}|{labels}` in the shared item. The component is `c` (a
//!   counter's total), `s` (a histogram's sum) or a bucket index (`0`, `1`, ...: per-bucket, not
//!   cumulative, counts, `+Inf` last). Labels are `name=value` pairs sorted by name and joined by
//!   `,`; `%`, `,`, `=`, `|` and control characters are percent-encoded, so every name parses back
//!   to exactly one series.
//!
//! Counter totals and sums are fixed-point millionths (see [`pum_shared::aggregate`]), written as
//! DynamoDB numbers: integers of up to 38 digits, added exactly by `ADD`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pum_shared::Allowlist;
use pum_shared::aggregate::{Overflow, SeriesKey, SeriesValue};
use pum_shared::allowlist::{MetricKind, MetricSpec};
use pum_shared::own;

/// The group of the shared item that holds pum's own counters.
pub const SHARED_GROUP: &str = "*";

/// The largest value a DynamoDB number holds exactly: 38 nines.
pub const MAX_NUMBER: u128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;

/// Which item group a metric is written to. pum's own counters ([`own::STORED`]: pushes by
/// result, refusals and rejections by reason, accepted samples, the original's record count,
/// billable operations) share one item, which nearly every fold touches anyway; every other
/// metric has its own items. A fold writes each item its batch touched once, so fewer items is
/// fewer writes.
pub fn group_of(metric: &str) -> &str {
    if own::STORED.iter().any(|m| m.name == metric) {
        SHARED_GROUP
    } else {
        metric
    }
}

/// The most bytes an aggregates item may come to, by its allowlist's bound: a metric (or the
/// shared group) that could hold more has its series spread over several items by a hash of the
/// series ([`items_for_group`]), far from DynamoDB's 400 KB an item.
pub const ITEM_BOUND_BYTES: u128 = 64 * 1024;

/// Items a group's series are spread over: enough that, were every series the allowlist allows
/// present, each item would stay within [`ITEM_BOUND_BYTES`]. 1 for any group of a few hundred
/// series.
pub fn items_for_group(allowlist: &Allowlist, group: &str) -> u32 {
    let bound: u128 = if group == SHARED_GROUP {
        allowlist
            .metrics()
            .filter(|m| group_of(&m.name) == SHARED_GROUP)
            .map(|m| bound_bytes(m, true))
            .fold(0, u128::saturating_add)
    } else {
        allowlist.get(group).map_or(0, |m| bound_bytes(m, false))
    };
    u32::try_from(bound.div_ceil(ITEM_BOUND_BYTES).clamp(1, 1 << 16)).unwrap_or(1 << 16)
}

/// The most bytes a metric's series could take as attributes: every combination of its labels'
/// values (each label also absent), each component named with the longest values and holding a
/// 38-digit number (21 bytes).
fn bound_bytes(spec: &MetricSpec, shared: bool) -> u128 {
    let mut series: u128 = 1;
    let mut name = 4 + if shared { spec.name.len() + 1 } else { 0 };
    for label in &spec.labels {
        let values = label.allowed_values.len() + usize::from(label.other_value.is_some()) + 1;
        series = series.saturating_mul(values as u128);
        let longest = label
            .allowed_values
            .iter()
            .chain(&label.other_value)
            .map(String::len)
            .max()
            .unwrap_or(0);
        // Percent-encoding can triple a value's bytes.
        name += label.name.len() + 3 * longest + 2;
    }
    let components = match spec.kind {
        MetricKind::Counter => 1,
        MetricKind::Histogram { .. } => spec.bucket_count() as u128 + 1,
    };
    series
        .saturating_mul(components)
        .saturating_mul(name as u128 + 21)
}

/// Which of a group's `items` a series goes to: a hash of its labels (the metric's name too, in
/// the shared group).
pub fn item_of(key: &SeriesKey, items: u32) -> u32 {
    if items <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for byte in s.bytes().chain([0xff]) {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(key.metric());
    for (name, value) in key.labels() {
        eat(name);
        eat(value);
    }
    (h % u64::from(items)) as u32
}

/// The partition key of an aggregates item.
pub fn partition_key(region: &str, shard: u32, group: &str) -> String {
    format!("{region}#{shard}#{group}")
}

/// A parsed partition key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemKey {
    /// The writer region.
    pub region: String,
    /// The shard.
    pub shard: u32,
    /// The group (a metric name or [`SHARED_GROUP`]).
    pub group: String,
}

/// Parses a partition key written by [`partition_key`].
pub fn parse_partition_key(pk: &str) -> Option<ItemKey> {
    let mut parts = pk.splitn(3, '#');
    let region = parts.next()?;
    let shard = parts.next()?.parse().ok()?;
    let group = parts.next()?;
    if region.is_empty() || group.is_empty() {
        return None;
    }
    Some(ItemKey {
        region: region.to_owned(),
        shard,
        group: group.to_owned(),
    })
}

/// One component of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// A counter's total, in millionths.
    Counter,
    /// A histogram's sum, in millionths.
    Sum,
    /// A histogram bucket's (non-cumulative) count.
    Bucket(usize),
}

fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | ',' | '=' | '|' | '\u{0}'..='\u{1f}' | '\u{7f}' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The attribute name of one component of `key` in an item of `group`.
pub fn attribute_name(group: &str, key: &SeriesKey, component: Component) -> String {
    let mut out = String::with_capacity(32);
    if group == SHARED_GROUP {
        escape(&mut out, key.metric());
        out.push('|');
    }
    match component {
        Component::Counter => out.push('c'),
        Component::Sum => out.push('s'),
        Component::Bucket(i) => {
            let _ = write!(out, "{i}");
        }
    }
    out.push('|');
    for (i, (name, value)) in key.labels().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(&mut out, name);
        out.push('=');
        escape(&mut out, value);
    }
    out
}

/// Parses an attribute name of an item of `group` back into its series and component.
pub fn parse_attribute_name(group: &str, name: &str) -> Option<(SeriesKey, Component)> {
    let (metric, rest) = if group == SHARED_GROUP {
        let (m, rest) = name.split_once('|')?;
        (unescape(m)?, rest)
    } else {
        (group.to_owned(), name)
    };
    let (component, labels) = rest.split_once('|')?;
    let component = match component {
        "c" => Component::Counter,
        "s" => Component::Sum,
        digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Component::Bucket(digits.parse().ok()?)
        }
        _ => return None,
    };
    let mut pairs: smallvec::SmallVec<[(std::sync::Arc<str>, std::sync::Arc<str>); 2]> =
        smallvec::SmallVec::new();
    if !labels.is_empty() {
        for pair in labels.split(',') {
            let (k, v) = pair.split_once('=')?;
            pairs.push((unescape(k)?.into(), unescape(v)?.into()));
        }
    }
    if metric.is_empty() || pairs.windows(2).any(|w| w[0].0 >= w[1].0) {
        return None;
    }
    Some((SeriesKey::from_parts(metric.into(), pairs), component))
}

/// The components to `ADD` for one series of a delta. A counter always writes its total (zero
/// too, so the series exists); a histogram writes its non-zero buckets, always its last bucket
/// (so that a reader knows how many buckets it has) and its sum.
pub fn components(value: &SeriesValue) -> Vec<(Component, u128)> {
    match value {
        SeriesValue::Counter { micros } => vec![(Component::Counter, *micros)],
        SeriesValue::Histogram {
            buckets,
            sum_micros,
        } => {
            let last = buckets.len().saturating_sub(1);
            let mut out: Vec<(Component, u128)> = buckets
                .iter()
                .enumerate()
                .filter(|(i, n)| **n > 0 || *i == last)
                .map(|(i, n)| (Component::Bucket(i), u128::from(*n)))
                .collect();
            out.push((Component::Sum, *sum_micros));
            out
        }
    }
}

/// Adds `value` to a total read so far, if the sum fits.
fn add_to(total: &mut Option<u128>, value: u128) -> Option<()> {
    *total = Some(total.unwrap_or(0).checked_add(value)?);
    Some(())
}

/// Collects components read back from items into series values.
#[derive(Debug, Default)]
pub struct SeriesBuilder {
    series: BTreeMap<SeriesKey, Parts>,
}

#[derive(Debug, Default)]
struct Parts {
    counter: Option<u128>,
    sum: Option<u128>,
    buckets: BTreeMap<usize, u64>,
}

impl SeriesBuilder {
    /// Adds one component read from an item. Components of one series met twice (which the item
    /// design never produces within one shard) are added. A value past what pum holds (a bucket
    /// count past `u64`, a sum past `u128`) is refused, never saturated: the reader reports it.
    pub fn add(
        &mut self,
        key: SeriesKey,
        component: Component,
        value: u128,
    ) -> Result<(), Overflow> {
        let parts = self.series.entry(key.clone()).or_default();
        let added = match component {
            Component::Counter => add_to(&mut parts.counter, value),
            Component::Sum => add_to(&mut parts.sum, value),
            Component::Bucket(i) => u64::try_from(value).ok().and_then(|n| {
                let b = parts.buckets.entry(i).or_default();
                *b = b.checked_add(n)?;
                Some(())
            }),
        };
        added.ok_or(Overflow { key })
    }

    /// The series. A series with any histogram component is a histogram (as the core's merge
    /// keeps a histogram that meets a counter); its buckets run up to the highest index written.
    pub fn build(self) -> impl Iterator<Item = (SeriesKey, SeriesValue)> {
        self.series.into_iter().map(|(key, parts)| {
            let value = if parts.buckets.is_empty() && parts.sum.is_none() {
                SeriesValue::Counter {
                    micros: parts.counter.unwrap_or(0),
                }
            } else {
                let len = parts.buckets.keys().next_back().map_or(0, |i| i + 1);
                let mut buckets = vec![0u64; len];
                for (i, n) in parts.buckets {
                    buckets[i] = n;
                }
                SeriesValue::Histogram {
                    buckets,
                    sum_micros: parts.sum.unwrap_or(0),
                }
            };
            (key, value)
        })
    }
}

/// Parses a DynamoDB number that must be a non-negative integer. DynamoDB answers integers in
/// plain digits; exponent forms (`1.5E+3`, as some emulators answer) are accepted when exact.
pub fn parse_number(text: &str) -> Option<u128> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let shift = exponent - i32::try_from(frac.len()).ok()?;
    if shift >= 0 {
        let mut value: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        for _ in 0..shift {
            value = value.checked_mul(10)?;
        }
        Some(value)
    } else {
        // Only trailing zeros may be cut off.
        let cut = usize::try_from(-shift).ok()?;
        if cut > digits.len() {
            return digits.bytes().all(|b| b == b'0').then_some(0);
        }
        let (keep, drop) = digits.split_at(digits.len() - cut);
        if !drop.bytes().all(|b| b == b'0') {
            return None;
        }
        if keep.is_empty() {
            Some(0)
        } else {
            keep.parse().ok()
        }
    }
}

/// DynamoDB's size of a number attribute value, in bytes: one byte per two significant digits,
/// plus one.
pub fn number_size(text: &str) -> usize {
    let digits: String = text
        .split(['e', 'E'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_spread_over_items_only_past_the_bound() {
        let example = Allowlist::example();
        for m in example.metrics() {
            assert_eq!(
                items_for_group(&example, group_of(&m.name)),
                1,
                "{}",
                m.name
            );
        }
        // 4,000 values of 26 bytes: about 350 KB were every series there.
        let values: Vec<String> = (0..4000).map(|i| format!("\"value-{i:020}\"")).collect();
        let text = format!(
            r#"{{"allowedMetrics": [{{"name": "wide_total", "help": "W.", "type": "counter",
                "labels": [{{"name": "k", "allowedValues": [{}]}}]}}]}}"#,
            values.join(",")
        );
        let list = Allowlist::compile([("wide", text.as_str())], false).expect("compiles");
        let n = items_for_group(&list, "wide_total");
        assert!((4..=8).contains(&n), "{n} items");
        let mut seen = vec![0u32; n as usize];
        for i in 0..4000 {
            let key = SeriesKey::new("wide_total", &[("k", &format!("value-{i:020}"))]);
            seen[item_of(&key, n) as usize] += 1;
        }
        // Each item gets its share, give or take: none near 400 KB.
        assert!(
            seen.iter()
                .all(|c| (*c as f64) < 1.5 * 4000.0 / f64::from(n)),
            "{seen:?}"
        );
    }

    #[test]
    fn partition_keys_round_trip() {
        let pk = partition_key("eu-west-1", 7, "browser_lcp_seconds");
        assert_eq!(pk, "eu-west-1#7#browser_lcp_seconds");
        let k = parse_partition_key(&pk).expect("parses");
        assert_eq!((k.region.as_str(), k.shard), ("eu-west-1", 7));
        assert_eq!(k.group, "browser_lcp_seconds");
        assert_eq!(
            parse_partition_key("r#1#*").map(|k| k.group),
            Some("*".into())
        );
        assert!(parse_partition_key("r#x#m").is_none());
        assert!(parse_partition_key("r#1").is_none());
    }

    #[test]
    fn attribute_names_round_trip_any_label_value() {
        let key = SeriesKey::new(
            "m_total",
            &[("a", "x,y=z|w%"), ("b", ""), ("c", "tab\there ✓")],
        );
        for group in ["m_total", SHARED_GROUP] {
            for comp in [Component::Counter, Component::Sum, Component::Bucket(11)] {
                let name = attribute_name(group, &key, comp);
                assert_eq!(
                    parse_attribute_name(group, &name),
                    Some((key.clone(), comp)),
                    "{name}"
                );
            }
        }
        assert_eq!(
            attribute_name(
                "m",
                &SeriesKey::new("m", &[("phase", "dns")]),
                Component::Bucket(3)
            ),
            "3|phase=dns"
        );
        assert_eq!(
            attribute_name(
                SHARED_GROUP,
                &SeriesKey::new("pum_pushes_total", &[("result", "accepted")]),
                Component::Counter
            ),
            "pum_pushes_total|c|result=accepted"
        );
        assert_eq!(
            attribute_name("m", &SeriesKey::new("m", &[]), Component::Counter),
            "c|"
        );
        for bad in ["", "c", "x|", "c|a", "c|b=1,a=2", "c|a=%zz"] {
            assert!(parse_attribute_name("m", bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn groups() {
        assert_eq!(group_of(own::PUSHES), SHARED_GROUP);
        assert_eq!(group_of(own::RECORD_TOTAL), SHARED_GROUP);
        assert_eq!(group_of(own::SAMPLES_REJECTED), SHARED_GROUP);
        assert_eq!(group_of(own::STORE_OPERATIONS), SHARED_GROUP);
        assert_eq!(group_of("browser_lcp_seconds"), "browser_lcp_seconds");
    }

    #[test]
    fn histograms_write_nonzero_buckets_the_last_one_and_the_sum() {
        let v = SeriesValue::Histogram {
            buckets: vec![0, 2, 0, 0],
            sum_micros: 5,
        };
        assert_eq!(
            components(&v),
            vec![
                (Component::Bucket(1), 2),
                (Component::Bucket(3), 0),
                (Component::Sum, 5)
            ]
        );
        let mut b = SeriesBuilder::default();
        let key = SeriesKey::new("h", &[]);
        for (c, n) in components(&v) {
            b.add(key.clone(), c, n).expect("fits");
        }
        assert_eq!(b.build().collect::<Vec<_>>(), vec![(key, v)]);
    }

    #[test]
    fn components_past_what_pum_holds_are_refused_not_saturated() {
        let key = SeriesKey::new("h", &[]);
        let overflow = Err(Overflow { key: key.clone() });
        let mut b = SeriesBuilder::default();
        b.add(key.clone(), Component::Sum, u128::MAX).expect("fits");
        assert_eq!(b.add(key.clone(), Component::Sum, 1), overflow);
        b.add(key.clone(), Component::Bucket(0), u128::from(u64::MAX))
            .expect("fits");
        assert_eq!(b.add(key.clone(), Component::Bucket(0), 1), overflow);
        assert_eq!(
            b.add(key.clone(), Component::Bucket(1), u128::from(u64::MAX) + 1),
            overflow
        );
        let mut c = SeriesBuilder::default();
        c.add(key.clone(), Component::Counter, u128::MAX - 1)
            .expect("fits");
        assert_eq!(c.add(key.clone(), Component::Counter, 2), overflow);
        let built: Vec<_> = c.build().collect();
        assert_eq!(
            built,
            vec![(
                key,
                SeriesValue::Counter {
                    micros: u128::MAX - 1
                }
            )],
            "a refused component changes nothing"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(
            parse_number("55340232221128654845"),
            Some(55_340_232_221_128_654_845)
        );
        assert_eq!(parse_number(&MAX_NUMBER.to_string()), Some(MAX_NUMBER));
        assert_eq!(parse_number("1E+3"), Some(1000));
        assert_eq!(parse_number("1.5e3"), Some(1500));
        assert_eq!(parse_number("1500.000"), Some(1500));
        assert_eq!(parse_number("0E-7"), Some(0));
        assert_eq!(parse_number("1.5"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("x"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(number_size("0"), 1);
        assert_eq!(number_size("1000000"), 2);
        assert_eq!(number_size("1234"), 3);
    }
}
