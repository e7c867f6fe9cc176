//! The allowlist: which metrics, labels and label values a push may carry.
//!
//! The format is the original aggregator's, unchanged: each source (a JSON file) is
//! `{"allowedMetrics": [...]}`, and each metric has `name`, `help`, `type` (`counter` or
//! `histogram`), `labels` (each `{"name", "allowedValues": [...]}`) and, for histograms,
//! `buckets`. Optional extensions:
//! - `maxValue` (metric): the largest increment or observation one sample may carry for that
//!   metric (default: [`Limits`](crate::Limits)).
//! - `otherValue` (label): recorded instead of a value not in `allowedValues`, where the sample
//!   would otherwise be rejected.
//! - `source` (label): `"country"`: the edge fills the label in from the request (see
//!   [`crate::ingest::RequestContext`]); needs `otherValue`.
//!
//! Sources are compiled once, at start-up, into an [`Allowlist`]; anything wrong stops start-up
//! with a [`ConfigError`] naming the source, the metric and the field. The core reads no files:
//! adapters pass each source's name and text.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

/// Histogram buckets used when a histogram gives none: the original aggregator's (prom-client's)
/// defaults, in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The built-in browser pack: navigation timing phases, page load and Core Web Vitals, as sent
/// by pum's browser client. Bucket bounds sit on the Web Vitals good/poor thresholds.
pub const BROWSER_PACK: &str = include_str!("../packs/browser.json");

/// The example allowlist pum runs on when given no config (the demo page's metrics).
pub const EXAMPLE_ALLOWLIST: &str = include_str!("../../examples/allowlist/example.json");

/// A configuration error, naming where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {}{}{message}", metric.as_ref().map(|m| format!("metric {m:?}: ")).unwrap_or_default(), field.as_ref().map(|f| format!("field {f:?}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The file (or pack) the error is in.
    pub source_name: String,
    /// The metric, by name where it has one, else by position (`#3`).
    pub metric: Option<String>,
    /// The field, as a path inside the metric (`labels[1].allowedValues`).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The kind of a metric, with what that kind needs.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricKind {
    /// A counter: pushes carry increments.
    Counter,
    /// A classic histogram: pushes carry observations.
    Histogram {
        /// Upper bounds, strictly increasing and finite; `+Inf` is implied.
        buckets: Vec<f64>,
    },
}

impl MetricKind {
    /// The wire name of the kind (`counter`, `histogram`).
    pub fn as_str(&self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Histogram { .. } => "histogram",
        }
    }
}

/// Where a metric's definition came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A user's config source, by name.
    Config(String),
    /// A built-in pack, by name.
    Pack(&'static str),
    /// pum's own metric; never accepted from a push.
    Internal,
}

impl Origin {
    /// The source name a [`ConfigError`] about the metric gives: the file, or the pack; `None`
    /// for pum's own metrics.
    pub fn source_name(&self) -> Option<String> {
        match self {
            Origin::Config(name) => Some(name.clone()),
            Origin::Pack(pack) => Some(format!("built-in pack {pack:?}")),
            Origin::Internal => None,
        }
    }
}

/// Where the edge takes a label's value from, for labels the push does not set (extension
/// `"source"` of a label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    /// The client's country (ISO 3166-1 alpha-2, upper case) as the edge platform reports it:
    /// Cloudflare's `request.cf.country`, CloudFront's `CloudFront-Viewer-Country`.
    Country,
}

impl LabelSource {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelSource::Country => "country",
        }
    }
}

/// One allowed label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpec {
    /// The label name.
    pub name: String,
    /// Allowed values in config order.
    pub allowed_values: Vec<String>,
    /// Extension `"source"`: the edge fills the label in; a push may not set it.
    pub source: Option<LabelSource>,
    /// Extension `"otherValue"`: the value recorded instead of a value not in `allowedValues`
    /// (instead of rejecting the sample). Required with `source`.
    pub other_value: Option<String>,
    /// The name and allowed values (with `otherValue`), shared by every series key.
    interned_name: Arc<str>,
    interned_values: Vec<Arc<str>>,
    /// Each allowed value's position in `allowedValues` (the first, if listed twice).
    allowed: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    /// The same, by the address of the shared string (what a series key holds).
    by_address: ByAddress,
    interned_other: Option<Arc<str>>,
}

/// Positions by the address of a shared string: a lookup hashes one number instead of the text.
/// An address stands for one string while the allowlist holds that string, which it does for its
/// whole life, so a string found here is the allowlist's own. Copies of an allowlist (rebuilt
/// from its description) hold other strings at other addresses: the maps never take part in
/// comparing allowlists.
#[derive(Clone, Debug, Default)]
struct ByAddress(HashMap<usize, usize, foldhash::fast::FixedState>);

impl PartialEq for ByAddress {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ByAddress {
    fn of<'a>(strings: impl IntoIterator<Item = (&'a Arc<str>, usize)>) -> Self {
        ByAddress(strings.into_iter().map(|(s, i)| (address(s), i)).collect())
    }

    fn get(&self, s: &Arc<str>) -> Option<usize> {
        self.0.get(&address(s)).copied()
    }
}

fn address(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}

impl LabelSpec {
    fn new(name: &str, values: Vec<String>) -> Self {
        let interned_values: Vec<Arc<str>> = values.iter().map(|v| Arc::from(v.as_str())).collect();
        let mut allowed = HashMap::with_capacity_and_hasher(values.len(), Default::default());
        for (position, value) in interned_values.iter().enumerate() {
            allowed.entry(value.clone()).or_insert(position);
        }
        let by_address = ByAddress::of(allowed.iter().map(|(v, p)| (v, *p)));
        LabelSpec {
            name: name.to_owned(),
            interned_name: Arc::from(name),
            interned_values,
            allowed,
            by_address,
            allowed_values: values,
            source: None,
            other_value: None,
            interned_other: None,
        }
    }

    fn with_other_value(mut self, other: Option<String>) -> Self {
        self.interned_other = other.as_deref().map(Arc::from);
        self.other_value = other;
        self
    }

    /// Whether `value` is allowed.
    pub fn allows(&self, value: &str) -> bool {
        self.allowed.contains_key(value)
    }

    /// The position of `value` in `allowedValues` (the first, if it is listed twice).
    pub fn position(&self, value: &str) -> Option<usize> {
        self.allowed.get(value).copied()
    }

    /// [`LabelSpec::position`] of a value given as a shared string: by its address when it is
    /// this label's own (as in the ingest's series keys), else by its text.
    pub fn position_of(&self, value: &Arc<str>) -> Option<usize> {
        self.by_address.get(value).or_else(|| self.position(value))
    }

    /// The shared allowed value at `position` in `allowedValues`.
    pub fn interned_value(&self, position: usize) -> Option<&Arc<str>> {
        self.interned_values.get(position)
    }

    /// The shared label name, for series keys.
    pub fn interned_name(&self) -> &Arc<str> {
        &self.interned_name
    }

    /// The shared `otherValue`, if set.
    pub fn interned_other(&self) -> Option<&Arc<str>> {
        self.interned_other.as_ref()
    }

    /// The shared string to record for `value`: itself if allowed, else `otherValue` if set.
    pub fn resolve(&self, value: &str) -> Option<&Arc<str>> {
        self.allowed
            .get_key_value(value)
            .map(|(shared, _)| shared)
            .or(self.interned_other.as_ref())
    }
}

/// One allowed metric, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    /// The metric name.
    pub name: String,
    /// Its help text.
    pub help: String,
    /// Counter or histogram.
    pub kind: MetricKind,
    /// Allowed labels, sorted by name.
    pub labels: Vec<LabelSpec>,
    /// The largest increment or observation one sample may carry, if the metric sets one.
    pub max_value: Option<f64>,
    /// Where it was defined.
    pub origin: Origin,
    /// The name, shared by every series key.
    interned_name: Arc<str>,
}

impl MetricSpec {
    /// The shared metric name, for series keys.
    pub fn interned_name(&self) -> &Arc<str> {
        &self.interned_name
    }

    /// The allowed label of that name.
    pub fn label(&self, name: &str) -> Option<&LabelSpec> {
        self.labels.iter().find(|l| l.name == name)
    }

    /// Number of histogram buckets including `+Inf` (0 for counters).
    pub fn bucket_count(&self) -> usize {
        match &self.kind {
            MetricKind::Counter => 0,
            MetricKind::Histogram { buckets } => buckets.len() + 1,
        }
    }

    /// The bucket an observation falls in: the first whose upper bound is `>= value`, else the
    /// `+Inf` bucket.
    pub fn bucket_of(&self, value: f64) -> usize {
        match &self.kind {
            MetricKind::Counter => 0,
            MetricKind::Histogram { buckets } => buckets.partition_point(|b| *b < value),
        }
    }
}

/// The compiled allowlist: every metric pum accepts or reports, checked.
///
/// Metrics are kept in name order, and a metric's position in that order is its stable index
/// ([`Allowlist::metric_index`]): delta records ([`crate::record`]) name a series' metric by it.
/// The allowlist describes itself ([`Allowlist::description`]) in a canonical text from which
/// [`Allowlist::from_description`] rebuilds it, so that a store can keep the allowlist its records
/// were written against; the [`Allowlist::fingerprint`] of that text is what a record carries to
/// say which allowlist decodes it.
#[derive(Debug, Clone)]
pub struct Allowlist {
    /// Every metric, sorted by name.
    metrics: Vec<MetricSpec>,
    // Looked up by name for every sample of every push: hashed, not searched in a tree (names
    // share long prefixes, which makes tree comparisons slow).
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    /// The same, by the address of the shared name (what a series key holds).
    by_address: ByAddress,
    /// [`fingerprint`] of the description, computed once: every push asks for it.
    fingerprint: u64,
}

impl Default for Allowlist {
    /// An allowlist with no metric at all, not even pum's own.
    fn default() -> Self {
        Allowlist::from_specs(Vec::new())
    }
}

/// The metrics of an allowlist being compiled, by name.
type Draft = HashMap<String, MetricSpec, foldhash::fast::RandomState>;

/// The source name of errors in a description read back ([`Allowlist::from_description`]).
pub const STORED_SOURCE: &str = "stored allowlist";

/// The version of the description format ([`Allowlist::description`]).
const DESCRIPTION_VERSION: u64 = 1;

impl Allowlist {
    /// Compiles config sources (name, JSON text) and, if `browser_pack`, the built-in browser
    /// pack. pum's internal metrics are always added.
    pub fn compile<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
        browser_pack: bool,
    ) -> Result<Allowlist, ConfigError> {
        let mut draft = Draft::default();
        add_internal(&mut draft);
        if browser_pack {
            add_source(&mut draft, Origin::Pack("browser"), BROWSER_PACK)?;
        }
        for (name, text) in sources {
            add_source(&mut draft, Origin::Config(name.to_owned()), text)?;
        }
        Ok(Allowlist::from_specs(draft.into_values().collect()))
    }

    /// The example allowlist (see [`EXAMPLE_ALLOWLIST`]) with the browser pack.
    pub fn example() -> Allowlist {
        // Both inputs are compiled into the binary and covered by tests.
        Allowlist::compile([("built-in example allowlist", EXAMPLE_ALLOWLIST)], true)
            .unwrap_or_default()
    }

    /// Orders checked metrics by name, indexes them and takes the fingerprint.
    fn from_specs(mut metrics: Vec<MetricSpec>) -> Allowlist {
        metrics.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let index = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| (m.interned_name.clone(), i))
            .collect();
        let by_address = ByAddress::of(
            metrics
                .iter()
                .enumerate()
                .map(|(i, m)| (&m.interned_name, i)),
        );
        let mut list = Allowlist {
            metrics,
            index,
            by_address,
            fingerprint: 0,
        };
        list.fingerprint = fingerprint(list.description().as_bytes());
        list
    }

    /// The metric of that name.
    pub fn get(&self, name: &str) -> Option<&MetricSpec> {
        self.index.get(name).and_then(|i| self.metrics.get(*i))
    }

    /// Every metric, by name (the order of [`Allowlist::metric_index`]).
    pub fn metrics(&self) -> impl ExactSizeIterator<Item = &MetricSpec> {
        self.metrics.iter()
    }

    /// The stable index of the metric of that name: its position in [`Allowlist::metrics`].
    /// Equal allowlists (same [`Allowlist::fingerprint`]) give each metric the same index.
    pub fn metric_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// [`Allowlist::metric_index`] of a name given as a shared string: by its address when it is
    /// this allowlist's own (as in the ingest's series keys), else by its text.
    pub fn metric_index_of(&self, name: &Arc<str>) -> Option<usize> {
        self.by_address
            .get(name)
            .or_else(|| self.metric_index(name))
    }

    /// The metric at a stable index (see [`Allowlist::metric_index`]).
    pub fn metric_at(&self, index: usize) -> Option<&MetricSpec> {
        self.metrics.get(index)
    }

    /// Number of metrics, internal ones included.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// Whether there are no metrics at all.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// A 64-bit FNV-1a hash of [`Allowlist::description`]: equal for equal allowlists, on every
    /// platform and in every release that writes the same description; computed once, when the
    /// allowlist is compiled. It names the allowlist a delta record was written against. (Not
    /// std's `DefaultHasher` nor foldhash: both may change between releases, and foldhash is
    /// seeded per process.)
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The whole allowlist, pum's own metrics and packs included, as canonical JSON: the same
    /// allowlist gives the same bytes on every platform, and [`Allowlist::from_description`]
    /// rebuilds it exactly.
    ///
    /// `{"v":1,"metrics":[...]}`, metrics sorted by name, each in the config format's spelling
    /// with its origin: `{"name","help","type","buckets"?,"labels":[{"name","allowedValues",
    /// "otherValue"?,"source"?}],"maxValue"?,"origin"}`. Labels are in the compiled order (by
    /// name), allowed values in config order; histograms always list their buckets; absent
    /// options are left out. `origin` is `"internal"`, `"pack:<name>"` or `"config"` (not the file:
    /// the same content read from another path describes the same allowlist).
    /// There is no whitespace; strings and numbers are written as RFC 8785 (JSON
    /// Canonicalization) writes them: the shortest decimal that reads back as the same `f64`,
    /// laid out as JavaScript's `Number.prototype.toString` does.
    pub fn description(&self) -> String {
        let mut out = String::with_capacity(64 + 320 * self.metrics.len());
        out.push_str(r#"{"v":1,"metrics":["#);
        for (i, m) in self.metrics.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(r#"{"name":"#);
            write_string(&mut out, &m.name);
            out.push_str(r#","help":"#);
            write_string(&mut out, &m.help);
            out.push_str(r#","type":"#);
            write_string(&mut out, m.kind.as_str());
            if let MetricKind::Histogram { buckets } = &m.kind {
                out.push_str(r#","buckets":["#);
                for (j, b) in buckets.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_number(&mut out, *b);
                }
                out.push(']');
            }
            out.push_str(r#","labels":["#);
            for (j, label) in m.labels.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"name":"#);
                write_string(&mut out, &label.name);
                out.push_str(r#","allowedValues":["#);
                for (k, value) in label.allowed_values.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    write_string(&mut out, value);
                }
                out.push(']');
                if let Some(other) = &label.other_value {
                    out.push_str(r#","otherValue":"#);
                    write_string(&mut out, other);
                }
                if let Some(source) = label.source {
                    out.push_str(r#","source":"#);
                    write_string(&mut out, source.as_str());
                }
                out.push('}');
            }
            out.push(']');
            if let Some(max) = m.max_value {
                out.push_str(r#","maxValue":"#);
                write_number(&mut out, max);
            }
            out.push_str(r#","origin":"#);
            match &m.origin {
                Origin::Internal => write_string(&mut out, "internal"),
                Origin::Pack(pack) => write_string(&mut out, &format!("pack:{pack}")),
                // Where a config metric was read from is left out: the same allowlist
                // read from another path has the same fingerprint.
                Origin::Config(_) => write_string(&mut out, "config"),
            }
            out.push('}');
        }
        out.push_str("]}");
        out
    }

    /// Rebuilds an allowlist from its [`Allowlist::description`]: same metrics, same origins
    /// (pum's own metrics stay internal, pack metrics stay the pack's), same description and
    /// fingerprint. Each metric is checked as config is; errors name [`STORED_SOURCE`], the
    /// metric and the field.
    pub fn from_description(text: &str) -> Result<Allowlist, ConfigError> {
        let err = |metric: Option<String>, field: Option<&str>, message: String| ConfigError {
            source_name: STORED_SOURCE.to_owned(),
            metric,
            field: field.map(str::to_owned),
            message,
        };
        let root: Value = serde_json::from_str(text)
            .map_err(|e| err(None, None, format!("not valid JSON: {e}")))?;
        match root.get("v") {
            Some(v) if v.as_u64() == Some(DESCRIPTION_VERSION) => {}
            Some(v) => {
                return Err(err(
                    None,
                    Some("v"),
                    format!("version {v} is not supported (this build reads version 1)"),
                ));
            }
            None => {
                return Err(err(
                    None,
                    None,
                    "expected an object with \"v\" and a \"metrics\" array".into(),
                ));
            }
        }
        let Some(Value::Array(items)) = root.get("metrics") else {
            return Err(err(
                None,
                Some("metrics"),
                "must be an array of metrics".into(),
            ));
        };
        let mut specs = Vec::with_capacity(items.len());
        for (i, raw) in items.iter().enumerate() {
            let origin = parse_origin(raw.get("origin")).map_err(|message| {
                let metric = raw.get("name").and_then(Value::as_str);
                let metric = metric.map_or_else(|| format!("#{}", i + 1), str::to_owned);
                err(Some(metric), Some("origin"), message)
            })?;
            let spec = parse_metric(raw, i, origin)
                .map_err(|(metric, field, message)| err(metric, field.as_deref(), message))?;
            specs.push(spec);
        }
        // The numbers once more, read exactly: serde_json's `Value` may round a long decimal to
        // a neighbour of the `f64` it was written from, and a bucket one bit off would be another
        // allowlist, with another fingerprint. std's parser rounds correctly.
        let exact: ExactNumbers<'_> = serde_json::from_str(text)
            .map_err(|e| err(None, Some("metrics"), format!("malformed: {e}")))?;
        let mut draft = Draft::default();
        for (mut spec, numbers) in specs.into_iter().zip(exact.metrics) {
            numbers
                .apply(&mut spec)
                .map_err(|(field, message)| err(Some(spec.name.clone()), Some(field), message))?;
            if draft.contains_key(&spec.name) {
                return Err(err(
                    Some(spec.name.clone()),
                    Some("name"),
                    "is listed twice".into(),
                ));
            }
            draft.insert(spec.name.clone(), spec);
        }
        Ok(Allowlist::from_specs(draft.into_values().collect()))
    }
}

/// A description's numbers as written, to be read exactly (see [`Allowlist::from_description`]).
#[derive(serde::Deserialize)]
struct ExactNumbers<'a> {
    #[serde(borrow)]
    metrics: Vec<MetricNumbers<'a>>,
}

/// One metric's numbers as written.
#[derive(serde::Deserialize)]
struct MetricNumbers<'a> {
    #[serde(borrow, default)]
    buckets: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, rename = "maxValue")]
    max_value: Option<&'a RawValue>,
}

impl MetricNumbers<'_> {
    /// Replaces the spec's buckets and maximum (read through `Value`) with the exact ones.
    fn apply(&self, spec: &mut MetricSpec) -> Result<(), (&'static str, String)> {
        let exact = |raw: &RawValue| raw.get().trim().parse::<f64>().ok();
        if let (MetricKind::Histogram { buckets }, Some(raw)) = (&mut spec.kind, &self.buckets) {
            let mut out: Vec<f64> = Vec::with_capacity(raw.len());
            for (i, item) in raw.iter().enumerate() {
                let Some(b) = exact(item).filter(|b| b.is_finite()) else {
                    return Err(("buckets", format!("item {i} must be a finite number")));
                };
                if out.last().is_some_and(|prev| *prev >= b) {
                    return Err((
                        "buckets",
                        format!("must be strictly increasing (item {i} is {b})"),
                    ));
                }
                out.push(b);
            }
            *buckets = out;
        }
        if let Some(raw) = self.max_value {
            match exact(raw) {
                Some(m) if m.is_finite() && m > 0.0 => spec.max_value = Some(m),
                _ => return Err(("maxValue", "must be a positive number".into())),
            }
        }
        Ok(())
    }
}

/// Reads a description's `origin` (see [`Allowlist::description`]).
fn parse_origin(raw: Option<&Value>) -> Result<Origin, String> {
    let Some(text) = raw.and_then(Value::as_str) else {
        return Err("must be \"internal\", \"pack:<name>\" or \"config\"".into());
    };
    if text == "internal" {
        return Ok(Origin::Internal);
    }
    if text == "config" {
        return Ok(Origin::Config(STORED_SOURCE.to_owned()));
    }
    match text.strip_prefix("pack:") {
        Some("browser") => Ok(Origin::Pack("browser")),
        Some(pack) => Err(format!("{pack:?} is not a built-in pack of this build")),
        None => Err(format!(
            "{text:?} must be \"internal\", \"pack:<name>\" or \"config\""
        )),
    }
}

/// 64-bit FNV-1a: tiny, and fixed forever by its definition, which is what a fingerprint kept in
/// stores needs.
fn fingerprint(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(PRIME)
    })
}

/// Writes a JSON string as RFC 8785 does: `"` and `\` escaped, the control characters with a
/// short escape where JSON has one and as `\u00xx` otherwise, everything else as itself.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let n = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[n >> 4]));
                out.push(char::from(HEX[n & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes a finite number as RFC 8785 does (ECMAScript's `Number::toString`): the shortest
/// digits that read back as the same `f64`, in plain notation for magnitudes from 1e-6 up to
/// 1e21 and in exponent notation (`1.5e-7`, `1e+21`) beyond. The digits are std's shortest
/// round-trip digits (`{:e}`); the layout is written here, so that it is fixed by the standard
/// rather than by a formatting crate's choices. Non-finite numbers (never in a checked
/// allowlist) are written as `null`.
fn write_number(out: &mut String, x: f64) {
    use std::fmt::Write;
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    if x == 0.0 {
        // Also -0, as ECMAScript writes it.
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // `d[.ddd]e[-]x`: the value is d.ddd × 10^x.
    let sci = format!("{:e}", x.abs());
    let Some((mantissa, exponent)) = sci.split_once('e') else {
        out.push_str(&sci);
        return;
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        out.push_str(&sci);
        return;
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // In ECMAScript's terms: k digits s, and the value is s × 10^(n-k).
    let k = digits.len() as i32;
    let n = exponent + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let sign = if n - 1 < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{}", (n - 1).abs());
    }
}

fn add_internal(draft: &mut Draft) {
    for own in crate::own::STORED {
        let labels = own
            .labels
            .iter()
            .map(|(name, values)| LabelSpec::new(name, values.list()))
            .collect();
        let spec = MetricSpec {
            interned_name: Arc::from(own.name),
            name: own.name.to_owned(),
            help: own.help.to_owned(),
            kind: MetricKind::Counter,
            labels,
            max_value: None,
            origin: Origin::Internal,
        };
        draft.insert(spec.name.clone(), spec);
    }
}

fn add_source(draft: &mut Draft, origin: Origin, text: &str) -> Result<(), ConfigError> {
    let source_name = origin.source_name().unwrap_or_default();
    let err = |metric: Option<String>, field: Option<String>, message: String| ConfigError {
        source_name: source_name.clone(),
        metric,
        field,
        message,
    };
    let root: Value =
        serde_json::from_str(text).map_err(|e| err(None, None, format!("not valid JSON: {e}")))?;
    let metrics = match root.get("allowedMetrics") {
        Some(Value::Array(m)) => m,
        Some(_) => {
            return Err(err(
                None,
                Some("allowedMetrics".into()),
                "must be an array of metrics".into(),
            ));
        }
        None => {
            return Err(err(
                None,
                None,
                "expected an object with an \"allowedMetrics\" array".into(),
            ));
        }
    };
    for (i, raw) in metrics.iter().enumerate() {
        let spec = parse_metric(raw, i, origin.clone()).map_err(|(m, f, msg)| err(m, f, msg))?;
        if let Some(existing) = draft.get(&spec.name) {
            let message = match &existing.origin {
                Origin::Internal => "is one of pum's own metrics; choose another name".into(),
                Origin::Pack(p) => format!(
                    "is already defined by the built-in pack {p:?}; rename it or turn the pack off"
                ),
                Origin::Config(other) => format!("is already defined in {other}"),
            };
            return Err(err(Some(spec.name.clone()), Some("name".into()), message));
        }
        draft.insert(spec.name.clone(), spec);
    }
    Ok(())
}

type FieldError = (Option<String>, Option<String>, String);

fn parse_metric(raw: &Value, index: usize, origin: Origin) -> Result<MetricSpec, FieldError> {
    let position = format!("#{}", index + 1);
    let Some(obj) = raw.as_object() else {
        return Err((Some(position), None, "must be an object".into()));
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err((
                Some(position),
                Some("name".into()),
                "must be a string".into(),
            ));
        }
        None => return Err((Some(position), Some("name".into()), "is missing".into())),
    };
    let fail =
        |field: &str, message: String| Err((Some(name.clone()), Some(field.to_owned()), message));
    if !is_metric_name(&name) {
        return fail(
            "name",
            "must match [a-zA-Z_:][a-zA-Z0-9_:]* (a Prometheus metric name)".into(),
        );
    }
    let help = match obj.get("help") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return fail("help", "must not be empty".into()),
        Some(_) => return fail("help", "must be a string".into()),
        None => return fail("help", "is missing".into()),
    };
    let kind_name = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return fail("type", "must be a string".into()),
        None => return fail("type", "is missing (counter or histogram)".into()),
    };
    let kind = match kind_name {
        "counter" => {
            if obj.get("buckets").is_some_and(|b| !b.is_null()) {
                return fail("buckets", "only histograms have buckets".into());
            }
            MetricKind::Counter
        }
        "histogram" => MetricKind::Histogram {
            buckets: match obj.get("buckets") {
                None | Some(Value::Null) => DEFAULT_BUCKETS.to_vec(),
                Some(b) => match parse_buckets(b) {
                    Ok(b) => b,
                    Err(msg) => return fail("buckets", msg),
                },
            },
        },
        other => {
            return fail(
                "type",
                format!("{other:?} is not a supported type (counter or histogram)"),
            );
        }
    };
    let mut labels = Vec::new();
    match obj.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (j, item) in items.iter().enumerate() {
                let field = format!("labels[{j}]");
                let label = parse_label(item, &kind).map_err(|(sub, msg)| {
                    (Some(name.clone()), Some(format!("{field}{sub}")), msg)
                })?;
                if labels.iter().any(|l: &LabelSpec| l.name == label.name) {
                    return fail(
                        &format!("{field}.name"),
                        format!("label {:?} is listed twice", label.name),
                    );
                }
                labels.push(label);
            }
        }
        Some(_) => return fail("labels", "must be an array".into()),
    }
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    let max_value = match obj.get("maxValue") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(m) if m.is_finite() && m > 0.0 => Some(m),
            _ => return fail("maxValue", "must be a positive number".into()),
        },
    };
    Ok(MetricSpec {
        interned_name: Arc::from(name.as_str()),
        name,
        help,
        kind,
        labels,
        max_value,
        origin,
    })
}

fn parse_buckets(raw: &Value) -> Result<Vec<f64>, String> {
    let Some(items) = raw.as_array() else {
        return Err("must be an array of numbers".into());
    };
    if items.is_empty() {
        return Err("must not be empty (omit it for the default buckets)".into());
    }
    let mut out: Vec<f64> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(b) = item.as_f64().filter(|b| b.is_finite()) else {
            return Err(format!("item {i} must be a finite number"));
        };
        if out.last().is_some_and(|prev| *prev >= b) {
            return Err(format!("must be strictly increasing (item {i} is {b})"));
        }
        out.push(b);
    }
    Ok(out)
}

fn parse_label(raw: &Value, kind: &MetricKind) -> Result<LabelSpec, (String, String)> {
    let Some(obj) = raw.as_object() else {
        return Err((
            String::new(),
            "must be an object with name and allowedValues".into(),
        ));
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err((".name".into(), "must be a string".into())),
        None => return Err((".name".into(), "is missing".into())),
    };
    if !is_label_name(name) {
        return Err((
            ".name".into(),
            format!("{name:?} must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"),
        ));
    }
    if name == "le" && matches!(kind, MetricKind::Histogram { .. }) {
        return Err((
            ".name".into(),
            "\"le\" is reserved for histogram buckets".into(),
        ));
    }
    let values = match obj.get("allowedValues") {
        Some(Value::Array(v)) => v,
        Some(_) => {
            return Err((
                ".allowedValues".into(),
                "must be an array of strings".into(),
            ));
        }
        None => return Err((".allowedValues".into(), "is missing".into())),
    };
    if values.is_empty() {
        return Err((".allowedValues".into(), "must not be empty".into()));
    }
    let mut out = Vec::with_capacity(values.len());
    for (k, v) in values.iter().enumerate() {
        match v {
            Value::String(s) if s.is_empty() => {
                return Err((format!(".allowedValues[{k}]"), empty_value(name)));
            }
            Value::String(s) => out.push(s.clone()),
            _ => return Err((format!(".allowedValues[{k}]"), "must be a string".into())),
        }
    }
    let other = match obj.get("otherValue") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            return Err((".otherValue".into(), empty_value(name)));
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err((".otherValue".into(), "must be a non-empty string".into())),
    };
    let mut label = LabelSpec::new(name, out).with_other_value(other);
    label.source = match obj.get("source") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "country" => Some(LabelSource::Country),
        Some(_) => {
            return Err((
                ".source".into(),
                "must be \"country\" (the only value the edge fills in)".into(),
            ));
        }
    };
    if label.source.is_some() && label.other_value.is_none() {
        return Err((
            ".otherValue".into(),
            "is required with source, for values not in allowedValues (e.g. \"other\")".into(),
        ));
    }
    Ok(label)
}

/// Why a label value may not be empty: Prometheus takes `label=""` for the label being absent,
/// so `x{v=""}` and `x` would be two series of pum's and one of Prometheus's.
fn empty_value(label: &str) -> String {
    format!(
        "label {label:?}: a value must not be empty (Prometheus reads an empty label value as no label, which would merge this series with the one without the label)"
    )
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    !s.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Allowlist, ConfigError> {
        Allowlist::compile([("a.json", text)], false)
    }

    fn error(text: &str) -> (Option<String>, Option<String>, String) {
        let e = compile(text).expect_err("should fail");
        assert_eq!(e.source_name, "a.json");
        (e.metric, e.field, e.message)
    }

    #[test]
    fn seed_format_compiles() {
        let list = compile(
            r#"{"allowedMetrics":[
                {"name":"clicks_total","help":"h","type":"counter","labels":[{"name":"z","allowedValues":["1"]},{"name":"a","allowedValues":["x","y"]}]},
                {"name":"api_seconds","help":"h","type":"histogram","labels":[],"buckets":[0.1,1]},
                {"name":"api2_seconds","help":"h","type":"histogram","labels":[]}
            ]}"#,
        )
        .expect("compiles");
        let c = list.get("clicks_total").expect("present");
        assert_eq!(c.kind, MetricKind::Counter);
        assert_eq!(c.labels[0].name, "a", "labels are sorted");
        assert!(
            c.label("a")
                .is_some_and(|l| l.allows("y") && !l.allows("q"))
        );
        let h = list.get("api_seconds").expect("present");
        assert_eq!(h.bucket_count(), 3);
        assert_eq!(h.bucket_of(0.05), 0);
        assert_eq!(h.bucket_of(0.1), 0, "le is inclusive");
        assert_eq!(h.bucket_of(0.5), 1);
        assert_eq!(h.bucket_of(7.0), 2);
        assert_eq!(
            list.get("api2_seconds").map(|m| m.kind.clone()),
            Some(MetricKind::Histogram {
                buckets: DEFAULT_BUCKETS.to_vec()
            })
        );
        assert!(
            list.get(crate::own::PUSHES).is_some(),
            "internal metrics are always there"
        );
    }

    #[test]
    fn shipped_pack_and_example_compile() {
        let list = Allowlist::compile([("example", EXAMPLE_ALLOWLIST)], true).expect("compiles");
        assert!(list.get("browser_lcp_seconds").is_some());
        assert!(list.get("demo_feature_usage_total").is_some());
        assert_eq!(Allowlist::example().len(), list.len());
        // The Web Vitals thresholds are bucket bounds, so "% good" is exact.
        for (metric, bounds) in [
            ("browser_lcp_seconds", [2.5, 4.0]),
            ("browser_inp_seconds", [0.2, 0.5]),
            ("browser_cls", [0.1, 0.25]),
            ("browser_fcp_seconds", [1.8, 3.0]),
            ("browser_ttfb_seconds", [0.8, 1.8]),
        ] {
            let Some(MetricKind::Histogram { buckets }) = list.get(metric).map(|m| &m.kind) else {
                panic!("{metric} missing or not a histogram");
            };
            for b in bounds {
                assert!(buckets.contains(&b), "{metric} lacks bucket {b}");
            }
        }
    }

    #[test]
    fn errors_name_file_metric_and_field() {
        assert_eq!(error("nope").0, None);
        assert!(error("nope").2.starts_with("not valid JSON"));
        assert_eq!(
            error("{}").2,
            "expected an object with an \"allowedMetrics\" array"
        );
        assert_eq!(
            error(r#"{"allowedMetrics":{}}"#).1.as_deref(),
            Some("allowedMetrics")
        );
        assert_eq!(
            error(r#"{"allowedMetrics":[1]}"#),
            (Some("#1".into()), None, "must be an object".into())
        );
        assert_eq!(
            error(r#"{"allowedMetrics":[{"help":"h","type":"counter"}]}"#),
            (Some("#1".into()), Some("name".into()), "is missing".into())
        );
        let cases = [
            (r#"{"name":"1bad","help":"h","type":"counter"}"#, "name"),
            (r#"{"name":"m","type":"counter"}"#, "help"),
            (r#"{"name":"m","help":" ","type":"counter"}"#, "help"),
            (r#"{"name":"m","help":"h"}"#, "type"),
            (r#"{"name":"m","help":"h","type":"gauge"}"#, "type"),
            (
                r#"{"name":"m","help":"h","type":"counter","buckets":[1]}"#,
                "buckets",
            ),
            (
                r#"{"name":"m","help":"h","type":"histogram","buckets":[2,1]}"#,
                "buckets",
            ),
            (
                r#"{"name":"m","help":"h","type":"histogram","buckets":[]}"#,
                "buckets",
            ),
            (
                r#"{"name":"m","help":"h","type":"histogram","buckets":["1"]}"#,
                "buckets",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","labels":{}}"#,
                "labels",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","labels":[{"allowedValues":["a"]}]}"#,
                "labels[0].name",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","labels":[{"name":"__x","allowedValues":["a"]}]}"#,
                "labels[0].name",
            ),
            (
                r#"{"name":"m","help":"h","type":"histogram","labels":[{"name":"le","allowedValues":["a"]}]}"#,
                "labels[0].name",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","labels":[{"name":"a"}]}"#,
                "labels[0].allowedValues",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","labels":[{"name":"a","allowedValues":[]}]}"#,
                "labels[0].allowedValues",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","labels":[{"name":"a","allowedValues":[1]}]}"#,
                "labels[0].allowedValues[0]",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","labels":[{"name":"a","allowedValues":["x"]},{"name":"a","allowedValues":["y"]}]}"#,
                "labels[1].name",
            ),
            (
                r#"{"name":"m","help":"h","type":"counter","maxValue":-1}"#,
                "maxValue",
            ),
        ];
        for (metric, field) in cases {
            let (m, f, msg) = error(&format!(r#"{{"allowedMetrics":[{metric}]}}"#));
            assert_eq!(f.as_deref(), Some(field), "{metric}: {msg}");
            assert!(m.is_some(), "{metric}");
        }
    }

    #[test]
    fn empty_label_values_are_refused_naming_file_metric_and_label() {
        let e = compile(
            r#"{"allowedMetrics":[{"name":"x_total","help":"h","type":"counter","labels":[{"name":"v","allowedValues":["a","b",""]}]}]}"#,
        )
        .expect_err("an empty allowed value");
        assert_eq!(e.source_name, "a.json");
        assert_eq!(e.metric.as_deref(), Some("x_total"));
        assert_eq!(e.field.as_deref(), Some("labels[0].allowedValues[2]"));
        assert!(
            e.message
                .starts_with("label \"v\": a value must not be empty"),
            "{e}"
        );
        let e = compile(
            r#"{"allowedMetrics":[{"name":"y_seconds","help":"h","type":"histogram","labels":[{"name":"a","allowedValues":["1"]},{"name":"w","allowedValues":["x"],"otherValue":""}]}]}"#,
        )
        .expect_err("an empty otherValue");
        assert_eq!(
            (
                e.source_name.as_str(),
                e.metric.as_deref(),
                e.field.as_deref()
            ),
            ("a.json", Some("y_seconds"), Some("labels[1].otherValue"))
        );
        assert!(
            e.message
                .starts_with("label \"w\": a value must not be empty"),
            "{e}"
        );
        // Nothing the project ships has one.
        for metric in Allowlist::example().metrics() {
            for label in &metric.labels {
                assert!(label.allowed_values.iter().all(|v| !v.is_empty()));
                assert_ne!(label.other_value.as_deref(), Some(""));
            }
        }
    }

    #[test]
    fn duplicates_and_reserved_names_are_refused() {
        let one = r#"{"allowedMetrics":[{"name":"m","help":"h","type":"counter"}]}"#;
        let e = Allowlist::compile([("a.json", one), ("b.json", one)], false).expect_err("dup");
        assert_eq!(e.source_name, "b.json");
        assert_eq!(e.message, "is already defined in a.json");
        let e = compile(
            r#"{"allowedMetrics":[{"name":"pum_pushes_total","help":"h","type":"counter"}]}"#,
        )
        .expect_err("reserved");
        assert!(e.message.contains("pum's own"));
        let e = Allowlist::compile(
            [(
                "a.json",
                r#"{"allowedMetrics":[{"name":"browser_cls","help":"h","type":"counter"}]}"#,
            )],
            true,
        )
        .expect_err("pack clash");
        assert!(e.message.contains("pack"), "{e}");
        assert_eq!(
            e.to_string(),
            "a.json: metric \"browser_cls\": field \"name\": is already defined by the built-in pack \"browser\"; rename it or turn the pack off"
        );
    }

    /// An allowlist with every extension and awkward numbers and strings.
    const RICH: &str = r#"{"allowedMetrics":[
        {"name":"checkout_total","help":"Checkouts \"quoted\", back\\slash, tab\t, é, \u0001.","type":"counter",
         "labels":[{"name":"step","allowedValues":["cart","pay","cart"],"otherValue":"other"},
                   {"name":"country","allowedValues":["DE","FR"],"otherValue":"XX","source":"country"}],
         "maxValue":12.5},
        {"name":"odd_seconds","help":"h","type":"histogram","labels":[],
         "buckets":[-1e21,-0.5,0,1e-7,0.000001,0.1,0.30000000000000004,1,123456.789,9007199254740993,1e21,1.7976931348623157e308],
         "maxValue":0.000123}
    ]}"#;

    fn rich() -> Allowlist {
        Allowlist::compile([("rich.json", RICH)], false).expect("compiles")
    }

    fn assert_round_trips(list: &Allowlist) {
        let text = list.description();
        let back = Allowlist::from_description(&text).expect("reads back");
        // The same metrics; a config metric's file is not described.
        let described = |m: &MetricSpec| {
            let mut m = m.clone();
            if let Origin::Config(source) = &mut m.origin {
                *source = STORED_SOURCE.to_owned();
            }
            m
        };
        assert!(
            back.metrics().cloned().eq(list.metrics().map(described)),
            "same metrics"
        );
        assert_eq!(back.description(), text);
        assert_eq!(back.fingerprint(), list.fingerprint());
        assert_eq!(back.len(), list.len());
        for (i, m) in list.metrics().enumerate() {
            assert_eq!(back.metric_index(&m.name), Some(i));
        }
    }

    #[test]
    fn description_round_trips() {
        let without_pack =
            Allowlist::compile([("example.json", EXAMPLE_ALLOWLIST)], false).expect("compiles");
        let example = Allowlist::example();
        assert_round_trips(&without_pack);
        assert_round_trips(&example);
        assert_round_trips(&rich());
        assert_round_trips(&Allowlist::default());
        assert_ne!(without_pack.fingerprint(), example.fingerprint());

        let back = Allowlist::from_description(&example.description()).expect("reads back");
        let origin = |name: &str| back.get(name).map(|m| m.origin.clone());
        assert_eq!(origin(crate::own::PUSHES), Some(Origin::Internal));
        assert_eq!(origin("browser_lcp_seconds"), Some(Origin::Pack("browser")));
        assert_eq!(
            origin("demo_feature_usage_total"),
            Some(Origin::Config(STORED_SOURCE.into()))
        );
        // Every metric is there, pum's own included.
        assert_eq!(
            back.metrics()
                .filter(|m| m.origin == Origin::Internal)
                .count(),
            crate::own::STORED.len()
        );
    }

    #[test]
    fn rich_description_is_exact() {
        let list = rich();
        let text = list.description();
        assert!(text.starts_with(r#"{"v":1,"metrics":["#), "{text}");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        let names: Vec<&str> = value["metrics"]
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert!(names.is_sorted(), "metrics by name: {names:?}");
        assert!(text.contains(concat!(
            r#"{"name":"checkout_total","help":"Checkouts \"quoted\", back\\slash, tab\t, é, \u0001.","type":"counter","#,
            r#""labels":[{"name":"country","allowedValues":["DE","FR"],"otherValue":"XX","source":"country"},"#,
            r#"{"name":"step","allowedValues":["cart","pay","cart"],"otherValue":"other"}],"#,
            r#""maxValue":12.5,"origin":"config"}"#
        )));
        assert!(text.contains(concat!(
            r#"{"name":"odd_seconds","help":"h","type":"histogram","#,
            r#""buckets":[-1e+21,-0.5,0,1e-7,0.000001,0.1,0.30000000000000004,1,123456.789,9007199254740992,1e+21,1.7976931348623157e+308],"#,
            r#""labels":[],"maxValue":0.000123,"origin":"config"}"#
        )), "{text}");
        assert!(text.contains(
            r#"{"name":"pum_samples_accepted_total","help":"Samples accepted and aggregated.","type":"counter","labels":[],"origin":"internal"}"#
        ));
    }

    #[test]
    fn fingerprint_is_stable_and_follows_every_field() {
        // Two allowlists compiled apart (their hash maps seeded differently) agree.
        let a = Allowlist::compile([("built-in example allowlist", EXAMPLE_ALLOWLIST)], true)
            .expect("compiles");
        let b = Allowlist::example();
        assert_eq!(a.description(), b.description());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(rich().fingerprint(), rich().fingerprint());
        assert_eq!(
            a.fingerprint(),
            fingerprint(a.description().as_bytes()),
            "the cached fingerprint is the description's"
        );

        let base = r#"{"allowedMetrics":[
            {"name":"m_total","help":"h","type":"counter","labels":[{"name":"l","allowedValues":["a","b"]}]},
            {"name":"s_seconds","help":"h","type":"histogram","buckets":[0.1,1]}]}"#;
        let edits = [
            (
                r#""help":"h","type":"counter""#,
                r#""help":"h2","type":"counter""#,
            ),
            ("[0.1,1]", "[0.1,2]"),
            ("[0.1,1]", "[0.1,1,2]"),
            ("[0.1,1]", "[0.1000000000000001,1]"),
            (r#"["a","b"]"#, r#"["b","a"]"#),
            (r#"["a","b"]"#, r#"["a","c"]"#),
            (r#"["a","b"]"#, r#"["a","b","c"]"#),
            (r#"["a","b"]"#, r#"["a","b"],"otherValue":"o""#),
            (
                r#"["a","b"]"#,
                r#"["a","b"],"otherValue":"o","source":"country""#,
            ),
            (r#""labels":[{"#, r#""maxValue":5,"labels":[{"#),
            (r#""name":"l""#, r#""name":"k""#),
        ];
        let base_list = Allowlist::compile([("a.json", base)], false).expect("compiles");
        let mut seen = vec![base_list.fingerprint()];
        for (from, to) in edits {
            assert!(base.contains(from), "{from}");
            let edited = base.replacen(from, to, 1);
            let list = Allowlist::compile([("a.json", edited.as_str())], false).expect(to);
            assert!(!seen.contains(&list.fingerprint()), "{from} -> {to}");
            seen.push(list.fingerprint());
        }
        let moved = Allowlist::compile([("elsewhere/b.json", base)], false).expect("compiles");
        assert_eq!(
            moved.fingerprint(),
            base_list.fingerprint(),
            "the same content from another file is the same allowlist"
        );
    }

    #[test]
    fn stable_indices_follow_name_order() {
        let list = Allowlist::example();
        let names: Vec<&str> = list.metrics().map(|m| m.name.as_str()).collect();
        assert!(names.is_sorted());
        for (i, name) in names.iter().enumerate() {
            assert_eq!(list.metric_index(name), Some(i));
            assert_eq!(list.metric_at(i).map(|m| m.name.as_str()), Some(*name));
            assert_eq!(list.get(name).map(|m| m.name.as_str()), Some(*name));
        }
        assert_eq!(list.metric_index("nope"), None);
        assert!(list.metric_at(names.len()).is_none());
        let label = list
            .get(crate::own::PUSHES)
            .and_then(|m| m.label("result"))
            .expect("result");
        assert_eq!(label.position("partial"), Some(1));
        assert_eq!(label.interned_value(1).map(|v| &**v), Some("partial"));
        assert_eq!(label.position("nope"), None);
        assert!(label.interned_value(3).is_none());
    }

    #[test]
    fn stored_description_errors_name_the_field() {
        let error = |text: &str| {
            let e = Allowlist::from_description(text).expect_err(text);
            assert_eq!(e.source_name, STORED_SOURCE);
            (e.metric, e.field, e.message)
        };
        assert!(error("nope").2.starts_with("not valid JSON"));
        assert_eq!(error(r#"{"metrics":[]}"#).1, None);
        assert_eq!(
            error(r#"{"v":2,"metrics":[]}"#),
            (
                None,
                Some("v".into()),
                "version 2 is not supported (this build reads version 1)".into()
            )
        );
        assert_eq!(error(r#"{"v":1}"#).1.as_deref(), Some("metrics"));
        let metric = |fields: &str| {
            error(&format!(
                r#"{{"v":1,"metrics":[{{"name":"m","help":"h","type":"counter"{fields}}}]}}"#
            ))
        };
        assert_eq!(
            metric("").0.zip(metric("").1),
            Some(("m".into(), "origin".into()))
        );
        assert_eq!(
            metric(r#","origin":"pack:nope""#).1.as_deref(),
            Some("origin")
        );
        assert_eq!(
            metric(r#","origin":"elsewhere""#).1.as_deref(),
            Some("origin")
        );
        assert_eq!(
            metric(r#","origin":"internal","labels":[{"name":"a"}]"#)
                .1
                .as_deref(),
            Some("labels[0].allowedValues")
        );
        let twice = r#"{"name":"m","help":"h","type":"counter","origin":"internal"}"#;
        assert_eq!(
            error(&format!(r#"{{"v":1,"metrics":[{twice},{twice}]}}"#)),
            (
                Some("m".into()),
                Some("name".into()),
                "is listed twice".into()
            )
        );
        let unsorted = r#"{"v":1,"metrics":[
            {"name":"s_seconds","help":"h","type":"histogram","buckets":[1,0.5],"origin":"internal"}]}"#;
        assert_eq!(error(unsorted).1.as_deref(), Some("buckets"));
    }

    #[test]
    fn long_decimals_read_back_exactly() {
        // serde_json's `Value` reads these a bit off (0.41502743413813004 as
        // 0.4150274341381301): the description's numbers are read with std's exact parser.
        let text = r#"{"v":1,"metrics":[{"name":"s_seconds","help":"h","type":"histogram","buckets":[0.11900336421660629,0.41502743413813004],"labels":[],"maxValue":0.18772749242338982,"origin":"config"}]}"#;
        let list = Allowlist::from_description(text).expect("reads");
        assert_eq!(list.description(), text);
        let spec = list.get("s_seconds").expect("there");
        assert_eq!(
            spec.kind,
            MetricKind::Histogram {
                buckets: vec![0.11900336421660629, 0.41502743413813004]
            }
        );
        assert_eq!(spec.max_value, Some(0.18772749242338982));
        assert_round_trips(&list);
    }

    #[test]
    fn numbers_are_written_as_ecmascript_does() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-2.5, "-2.5"),
            (100.0, "100"),
            (0.005, "0.005"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-9, "1.5e-9"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e21, "1e+21"),
            (1.25e22, "1.25e+22"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ];
        for (x, want) in cases {
            let mut out = String::new();
            write_number(&mut out, x);
            assert_eq!(out, want, "{x:e}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn numbers_read_back_exactly(bits in any::<u64>()) {
                let x = f64::from_bits(bits);
                prop_assume!(x.is_finite());
                let mut out = String::new();
                write_number(&mut out, x);
                let back: f64 = out.parse().expect("a number");
                prop_assert!(back == x, "{} -> {}", x, out);
                let json: Value = serde_json::from_str(&out).expect("valid JSON");
                prop_assert!(json.is_number());
            }

            #[test]
            fn strings_read_back_exactly(s in any::<String>()) {
                let mut out = String::new();
                write_string(&mut out, &s);
                let back: String = serde_json::from_str(&out).expect("valid JSON");
                prop_assert_eq!(back, s);
            }
        }
    }
}
