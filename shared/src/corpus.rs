//! The bad-push corpus (`fixtures/bad-pushes.json`), decoded for tests of every adapter.

use serde::Deserialize;
use serde_json::Value;

/// The corpus file, as shipped.
pub const BAD_PUSHES: &str = include_str!("../../fixtures/bad-pushes.json");

/// One bad push and the answer it must get.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case is.
    pub name: String,
    /// `Content-Type` to send, if any.
    pub content_type: Option<String>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Expected status.
    pub status: u16,
    /// Expected `error` code, for refused pushes.
    pub error: Option<String>,
    /// Expected number of accepted samples.
    pub accepted: usize,
    /// Expected reasons of the rejected samples, in order.
    pub rejected: Vec<String>,
}

impl Case {
    /// Checks an answer (status and JSON body) against the case: the status, the `error` code
    /// and the reasons of the rejected samples, in order. The error says what differs.
    pub fn check(&self, status: u16, body: &str) -> Result<(), String> {
        let name = &self.name;
        let json: Value = serde_json::from_str(body)
            .map_err(|e| format!("{name}: the answer is not JSON ({e}): {body}"))?;
        if status != self.status {
            return Err(format!(
                "{name}: status {status}, want {}: {body}",
                self.status
            ));
        }
        let error = json.get("error").and_then(Value::as_str);
        if error != self.error.as_deref() {
            return Err(format!(
                "{name}: error {error:?}, want {:?}: {body}",
                self.error
            ));
        }
        let reasons: Vec<&str> = json
            .get("rejected")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|r| r["reason"].as_str()).collect())
            .unwrap_or_default();
        if reasons != self.rejected {
            return Err(format!(
                "{name}: rejected {reasons:?}, want {:?}: {body}",
                self.rejected
            ));
        }
        let accepted = json.get("accepted").and_then(Value::as_u64).unwrap_or(0);
        if accepted != self.accepted as u64 {
            return Err(format!(
                "{name}: accepted {accepted}, want {}: {body}",
                self.accepted
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCase {
    name: String,
    content_type: Option<String>,
    body: Option<String>,
    body_json: Option<Value>,
    generate: Option<Generate>,
    status: u16,
    error: Option<String>,
    accepted: usize,
    rejected: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Generate {
    prefix: String,
    repeat: String,
    times: usize,
    separator: String,
    suffix: String,
    #[serde(default)]
    raw_bytes: bool,
}

/// Every case of the corpus.
pub fn bad_pushes() -> Vec<Case> {
    #[derive(Deserialize)]
    struct File {
        cases: Vec<RawCase>,
    }
    let file: File = serde_json::from_str(BAD_PUSHES).expect("fixtures/bad-pushes.json parses");
    file.cases
        .into_iter()
        .map(|c| {
            let body = if let Some(b) = c.body {
                b.into_bytes()
            } else if let Some(j) = c.body_json {
                j.to_string().into_bytes()
            } else if let Some(g) = c.generate {
                let unit: Vec<u8> = if g.raw_bytes {
                    unescape(&g.repeat)
                } else {
                    g.repeat.into_bytes()
                };
                let mut out = g.prefix.into_bytes();
                for i in 0..g.times {
                    if i > 0 {
                        out.extend_from_slice(g.separator.as_bytes());
                    }
                    out.extend_from_slice(&unit);
                }
                out.extend_from_slice(g.suffix.as_bytes());
                out
            } else {
                Vec::new()
            };
            Case {
                name: c.name,
                content_type: c.content_type,
                body,
                status: c.status,
                error: c.error,
                accepted: c.accepted,
                rejected: c.rejected,
            }
        })
        .collect()
}

/// Turns `\xNN` escapes into raw bytes.
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && i + 3 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 2..i + 4], 16)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A valid push of the example allowlist's demo metrics, varied by `i`: two counter samples and
/// a histogram sample of three observations. Every adapter's tests push these and compare
/// `/metrics` with [`demo_totals`].
pub fn demo_batch(i: usize) -> Value {
    let features = ["search", "share", "export"];
    let apis = ["maps", "payments"];
    serde_json::json!([
        demo_counter(features[i % 3], 1.0),
        demo_counter(features[(i + 1) % 3], (i % 4) as f64 + 0.25),
        demo_histogram(apis[i % 2], &[0.01 * (i % 50) as f64, 0.3, (i % 9) as f64]),
    ])
}

/// A `demo_feature_usage_total` sample.
pub fn demo_counter(feature: &str, inc: f64) -> Value {
    serde_json::json!({"metricName": "demo_feature_usage_total", "metricType": "counter", "labels": {"feature": feature}, "inc": inc})
}

/// A `demo_third_party_api_seconds` sample.
pub fn demo_histogram(api: &str, observations: &[f64]) -> Value {
    serde_json::json!({"metricName": "demo_third_party_api_seconds", "metricType": "histogram", "labels": {"api": api}, "observations": observations})
}

/// What pushes of demo samples add to each series as `/metrics` renders it
/// (`name{labels}` -> value), computed independently of pum's own aggregation.
pub fn demo_totals(batches: &[Value]) -> std::collections::BTreeMap<String, f64> {
    let bounds = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
    let mut out = std::collections::BTreeMap::<String, f64>::new();
    for batch in batches {
        for s in batch.as_array().expect("a push is an array") {
            if s["metricType"] == "counter" {
                let f = s["labels"]["feature"].as_str().expect("feature");
                *out.entry(format!("demo_feature_usage_total{{feature=\"{f}\"}}"))
                    .or_default() += s["inc"].as_f64().expect("inc");
                continue;
            }
            let api = s["labels"]["api"].as_str().expect("api");
            for o in s["observations"].as_array().expect("observations") {
                let o = o.as_f64().expect("number");
                for le in bounds.iter().filter(|le| o <= **le) {
                    *out.entry(format!(
                        "demo_third_party_api_seconds_bucket{{api=\"{api}\",le=\"{le}\"}}"
                    ))
                    .or_default() += 1.0;
                }
                for series in [
                    format!("demo_third_party_api_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}}"),
                    format!("demo_third_party_api_seconds_count{{api=\"{api}\"}}"),
                ] {
                    *out.entry(series).or_default() += 1.0;
                }
                *out.entry(format!("demo_third_party_api_seconds_sum{{api=\"{api}\"}}"))
                    .or_default() += o;
            }
        }
    }
    out
}
