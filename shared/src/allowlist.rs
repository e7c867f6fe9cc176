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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

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
    allowed: HashSet<Arc<str>, foldhash::fast::RandomState>,
    interned_other: Option<Arc<str>>,
}

impl LabelSpec {
    fn new(name: &str, values: Vec<String>) -> Self {
        LabelSpec {
            name: name.to_owned(),
            interned_name: Arc::from(name),
            allowed: values.iter().map(|v| Arc::from(v.as_str())).collect(),
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
        self.allowed.contains(value)
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
        self.allowed.get(value).or(self.interned_other.as_ref())
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
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    // Looked up by name for every sample of every push: hashed, not searched in a tree (names
    // share long prefixes, which makes tree comparisons slow).
    metrics: HashMap<String, MetricSpec, foldhash::fast::RandomState>,
}

impl Allowlist {
    /// Compiles config sources (name, JSON text) and, if `browser_pack`, the built-in browser
    /// pack. pum's internal metrics are always added.
    pub fn compile<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
        browser_pack: bool,
    ) -> Result<Allowlist, ConfigError> {
        let mut list = Allowlist::default();
        list.add_internal();
        if browser_pack {
            list.add_source(Origin::Pack("browser"), BROWSER_PACK)?;
        }
        for (name, text) in sources {
            list.add_source(Origin::Config(name.to_owned()), text)?;
        }
        Ok(list)
    }

    /// The example allowlist (see [`EXAMPLE_ALLOWLIST`]) with the browser pack.
    pub fn example() -> Allowlist {
        // Both inputs are compiled into the binary and covered by tests.
        Allowlist::compile([("built-in example allowlist", EXAMPLE_ALLOWLIST)], true)
            .unwrap_or_default()
    }

    /// The metric of that name.
    pub fn get(&self, name: &str) -> Option<&MetricSpec> {
        self.metrics.get(name)
    }

    /// Every metric, by name.
    pub fn metrics(&self) -> impl Iterator<Item = &MetricSpec> {
        let mut all: Vec<&MetricSpec> = self.metrics.values().collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }

    /// Number of metrics, internal ones included.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// Whether there are no metrics at all.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    fn add_internal(&mut self) {
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
            self.metrics.insert(spec.name.clone(), spec);
        }
    }

    fn add_source(&mut self, origin: Origin, text: &str) -> Result<(), ConfigError> {
        let source_name = origin.source_name().unwrap_or_default();
        let err = |metric: Option<String>, field: Option<String>, message: String| ConfigError {
            source_name: source_name.clone(),
            metric,
            field,
            message,
        };
        let root: Value = serde_json::from_str(text)
            .map_err(|e| err(None, None, format!("not valid JSON: {e}")))?;
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
            let spec =
                parse_metric(raw, i, origin.clone()).map_err(|(m, f, msg)| err(m, f, msg))?;
            if let Some(existing) = self.metrics.get(&spec.name) {
                let message = match &existing.origin {
                    Origin::Internal => "is one of pum's own metrics; choose another name".into(),
                    Origin::Pack(p) => format!(
                        "is already defined by the built-in pack {p:?}; rename it or turn the pack off"
                    ),
                    Origin::Config(other) => format!("is already defined in {other}"),
                };
                return Err(err(Some(spec.name.clone()), Some("name".into()), message));
            }
            self.metrics.insert(spec.name.clone(), spec);
        }
        Ok(())
    }
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
}
