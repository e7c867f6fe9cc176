//! `GET /export`: every shard's cumulative totals and the allowlists that describe them, for
//! `pum-collector serve --source cloudflare`. The caller must send
//! `Authorization: Bearer <PUM_EXPORT_TOKEN>`.
//!
//! The document is
//!
//! ```json
//! {"v":1,"allowlists":[<description>, ...],"shards":[{"shard":"shard/0","snapshot":{"v":1,"series":[...]}}, ...]}
//! ```
//!
//! where each description is an allowlist's canonical JSON
//! ([`pum_shared::Allowlist::description`]), each once, and each `snapshot` is the portable
//! snapshot format of `pum-shared` (cumulative totals of that shard). They are read from
//! Workers KV, where each shard publishes its own key ([`pum_shard::publish`]) at most about once
//! a second: reading them wakes no Durable Object, so scrapes cost nothing on the ingest path.
//! KV reads may be stale by up to about a minute at other locations; the collector keeps the
//! highest value it has seen per shard, so a stale read never makes a counter go backwards, and
//! every acknowledged push reaches KV on the shard's next fold.

use pum_shard::publish::Publication;
use pum_shared::http::Response;

/// Path of the export endpoint.
pub const EXPORT_PATH: &str = "/export";
/// Path of each shard's live counters (rows written, KV writes), for checking costs.
pub const SHARD_STATS_PATH: &str = "/export/shards";

/// Whether an `Authorization` header carries the configured token. Without a configured token
/// nothing is authorized. The comparison takes the same time wherever the first difference is.
pub fn authorized(authorization: Option<&str>, token: Option<&str>) -> bool {
    let (Some(header), Some(token)) = (authorization, token.filter(|t| !t.is_empty())) else {
        return false;
    };
    let Some(given) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The answer to an export request without the right token.
pub fn unauthorized(token_configured: bool) -> Response {
    let message = if token_configured {
        "send Authorization: Bearer <PUM_EXPORT_TOKEN>"
    } else {
        "the export is disabled: set the Worker's PUM_EXPORT_TOKEN secret (wrangler secret put PUM_EXPORT_TOKEN)"
    };
    let mut r = Response::error(401, "unauthorized", message);
    r.headers.push(("www-authenticate", "Bearer".into()));
    r
}

/// The export document from `(KV key, publication)` pairs, sorted by key. A value that does not
/// parse is left out (and named in the second result) rather than failing the whole export.
pub fn document(mut shards: Vec<(String, String)>) -> (String, Vec<String>) {
    shards.sort();
    let mut allowlists: Vec<&str> = Vec::new();
    let mut parts = Vec::new();
    let mut skipped = Vec::new();
    for (key, text) in &shards {
        let Ok(p) = Publication::parse(text) else {
            skipped.push(key.clone());
            continue;
        };
        for a in p.allowlists {
            if !allowlists.contains(&a.get()) {
                allowlists.push(a.get());
            }
        }
        let key = serde_json::to_string(key).unwrap_or_default();
        parts.push(format!(
            r#"{{"shard":{key},"snapshot":{}}}"#,
            p.snapshot.get()
        ));
    }
    let doc = format!(
        r#"{{"v":1,"allowlists":[{}],"shards":[{}]}}"#,
        allowlists.join(","),
        parts.join(",")
    );
    (doc, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_authorized() {
        let t = Some("s3cret");
        assert!(authorized(Some("Bearer s3cret"), t));
        assert!(!authorized(Some("Bearer s3cre"), t));
        assert!(!authorized(Some("Bearer s3cret2"), t));
        assert!(!authorized(Some("s3cret"), t));
        assert!(!authorized(None, t));
        assert!(!authorized(Some("Bearer "), Some("")));
        assert!(!authorized(Some("Bearer s3cret"), None));
        let r = unauthorized(true);
        assert_eq!(r.status, 401);
        assert!(r.body.contains(r#""error":"unauthorized""#));
        assert!(unauthorized(false).body.contains("PUM_EXPORT_TOKEN"));
    }

    #[test]
    fn document_holds_each_snapshot_and_each_allowlist_once() {
        let (doc, skipped) = document(vec![
            (
                "shard/1".into(),
                r#"{"allowlists":[{"a":1}],"snapshot":{"v":1,"series":[]}}"#.into(),
            ),
            (
                "shard/0".into(),
                r#"{"allowlists":[{"a":1},{"b":2}],"snapshot":{"v":1,"series":[{"metric":"a","labels":{},"counter":"1"}]}}"#.into(),
            ),
            ("shard/2".into(), "{broken".into()),
            // As an earlier version published: a bare snapshot.
            ("shard/3".into(), r#"{"v":1,"series":[]}"#.into()),
        ]);
        assert_eq!(skipped, vec!["shard/2".to_owned()]);
        let v: serde_json::Value = serde_json::from_str(&doc).expect("json");
        assert_eq!(v["v"], 1);
        assert_eq!(v["allowlists"], serde_json::json!([{"a": 1}, {"b": 2}]));
        assert_eq!(v["shards"][0]["shard"], "shard/0");
        assert_eq!(v["shards"][0]["snapshot"]["series"][0]["counter"], "1");
        assert_eq!(v["shards"][1]["shard"], "shard/1");
        assert_eq!(v["shards"][2]["shard"], "shard/3");
        assert_eq!(v["shards"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            document(Vec::new()).0,
            r#"{"v":1,"allowlists":[],"shards":[]}"#
        );
    }
}
