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
