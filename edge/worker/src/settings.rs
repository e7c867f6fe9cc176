//! The Worker's configuration, read from its vars and secrets (`wrangler.toml` `[vars]`,
//! `wrangler secret put`, `wrangler dev --var`) and checked once per isolate.
//!
//! | name | default | what |
//! | --- | --- | --- |
//! | `ALLOWLIST_JSON` | the build's allowlist | the allowlist: one `{"allowedMetrics": [...]}` object, or an array of them (one per file of a config directory); a JSON string or a TOML table. Vars hold a few KB at most: for more, build with `PUM_ALLOWLIST` |
//! | `BROWSER_PACK` | `true` | whether the built-in browser pack (navigation timing, Core Web Vitals) is allowed too |
//! | `ALLOWED_ORIGINS` | `*` | origins allowed to push, comma-separated, as `--allowed-origins` |
//! | `SHARDS` | `4` | Durable Objects pushes are spread over (1 to 1024) |
//! | `FOLD_SECONDS` | `5` | seconds between a shard's folds while pushes arrive (1 to 3600; read by the shards, see `pum_shard`) |
//! | `EXPORT_TOKEN` | none | bearer token of `GET /export`; a secret. Without it the export refuses every request. |
//! | `RATE_LIMIT` | `50` | pushes a second one client address (`CF-Connecting-IP`; an IPv6 client by its /64) may send; `0` turns rate limiting off. Counted per isolate: see below |
//! | `RATE_BURST` | `500` | pushes a client may send at once before `RATE_LIMIT` applies (at least 1) |
//! | `RATE_LIMIT_CLIENTS` | `65536` | client addresses each isolate tracks at most (bounds its memory: about 2 MB at the default) |
//!
//! The rate limit is kept in each isolate's memory, not shared across isolates or locations:
//! Cloudflare runs many isolates of a Worker, in every location, so a client spread over `n` of
//! them may send up to `n` times the limit. It stops one client hammering one location cheaply
//! (a refused push costs no Durable Object request); for a limit across all of Cloudflare, add a
//! WAF rate limiting rule in front (docs/cloudflare.md).

use pum_shared::http::Cors;
use pum_shared::{Allowlist, Ingest, Limits, RateLimit};

/// The allowlist compiled in at build time from `PUM_ALLOWLIST` (see build.rs), as a JSON array
/// of `[file name, text]`; empty when the build had none, and the example allowlist applies.
const BUILT_IN: &str = include_str!(concat!(env!("OUT_DIR"), "/allowlist.json"));

/// Default number of shards. A Durable Object handles about 1,000 simple requests a second, so 4
/// shards take a few thousand pushes a second; each shard costs a fold every `FOLD_SECONDS` while
/// pushes arrive, so fewer is cheaper (docs/cloudflare.md, "What it costs").
pub const DEFAULT_SHARDS: u32 = 4;
/// Most shards a deployment may use.
pub const MAX_SHARDS: u32 = 1024;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ingest core over the compiled allowlist.
    pub ingest: Ingest,
    /// Origins allowed to push.
    pub cors: Cors,
    /// Number of shards.
    pub shards: u32,
    /// The export endpoint's bearer token, if one is set.
    pub export_token: Option<String>,
    /// The per-client rate limit of pushes (per isolate).
    pub rate_limit: RateLimit,
}

/// The vars of the rate limit: pushes a second, burst, clients tracked.
pub const RATE_VARS: [&str; 3] = ["RATE_LIMIT", "RATE_BURST", "RATE_LIMIT_CLIENTS"];

impl Settings {
    /// Reads the settings through `var`, which returns a var's text (JSON text for a var that
    /// is a TOML table or array) or `None` when it is unset. An error names the var and, for the
    /// allowlist, the metric and field.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let browser_pack = match var("BROWSER_PACK").as_deref().map(str::trim) {
            None | Some("") | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(format!(
                    "BROWSER_PACK is {other:?}; it must be \"true\" or \"false\""
                ));
            }
        };
        let built_in: Vec<(String, String)> = serde_json::from_str(BUILT_IN).unwrap_or_default();
        let allowlist = match var("ALLOWLIST_JSON").filter(|s| !s.trim().is_empty()) {
            None if !built_in.is_empty() => Allowlist::compile(
                built_in.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                browser_pack,
            ),
            None => Allowlist::compile(
                [(
                    "built-in example allowlist",
                    pum_shared::allowlist::EXAMPLE_ALLOWLIST,
                )],
                browser_pack,
            ),
            Some(text) => {
                let sources = allowlist_sources(&text)?;
                Allowlist::compile(
                    sources.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                    browser_pack,
                )
            }
        }
        .map_err(|e| e.to_string())?;
        // The Worker runs on the default limits; a metric's maxValue could still be too large.
        let limits = Limits::default();
        limits.check(&allowlist).map_err(|e| e.to_string())?;
        let shards = match var("SHARDS").as_deref().map(str::trim) {
            None | Some("") => DEFAULT_SHARDS,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_SHARDS).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "SHARDS is {s:?}; it must be a whole number from 1 to {MAX_SHARDS}"
                    ));
                }
            },
        };
        let rate_limit = RateLimit::from_vars(RATE_VARS, &var)?;
        Ok(Settings {
            ingest: Ingest::new(allowlist, limits),
            cors: Cors::parse(var("ALLOWED_ORIGINS").as_deref().unwrap_or("*")),
            shards,
            export_token: var("EXPORT_TOKEN").filter(|t| !t.is_empty()),
            rate_limit,
        })
    }
}

/// Splits `ALLOWLIST_JSON` into named sources: an object is one source, an array holds one per
/// element.
fn allowlist_sources(text: &str) -> Result<Vec<(String, String)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("ALLOWLIST_JSON is not valid JSON: {e}"))?;
    match value {
        serde_json::Value::Array(items) => Ok(items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("ALLOWLIST_JSON[{i}]"), item.to_string()))
            .collect()),
        _ => Ok(vec![("ALLOWLIST_JSON".to_owned(), text.to_owned())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_example_allowlist_any_origin_four_shards_no_token() {
        let s = settings(&[]).expect("defaults");
        assert!(
            s.ingest
                .allowlist()
                .get("demo_feature_usage_total")
                .is_some()
        );
        assert!(s.ingest.allowlist().get("browser_lcp_seconds").is_some());
        assert_eq!(s.cors, Cors::Any);
        assert_eq!(s.shards, DEFAULT_SHARDS);
        assert_eq!(s.export_token, None);
        assert_eq!(s.rate_limit, RateLimit::default());
    }

    #[test]
    fn own_allowlist_replaces_the_example() {
        let one = r#"{"allowedMetrics":[{"name":"a_total","help":"h","type":"counter"}]}"#;
        let s = settings(&[("ALLOWLIST_JSON", one), ("BROWSER_PACK", "false")]).expect("ok");
        assert!(s.ingest.allowlist().get("a_total").is_some());
        assert!(
            s.ingest
                .allowlist()
                .get("demo_feature_usage_total")
                .is_none()
        );
        assert!(s.ingest.allowlist().get("browser_lcp_seconds").is_none());
        let two = format!(
            r#"[{one}, {{"allowedMetrics":[{{"name":"b_total","help":"h","type":"counter"}}]}}]"#
        );
        let s = settings(&[("ALLOWLIST_JSON", &two)]).expect("ok");
        assert!(s.ingest.allowlist().get("b_total").is_some());
    }

    #[test]
    fn bad_settings_name_what_is_wrong() {
        let e = settings(&[("ALLOWLIST_JSON", "{")]).expect_err("bad json");
        assert!(e.contains("ALLOWLIST_JSON"), "{e}");
        let e = settings(&[(
            "ALLOWLIST_JSON",
            r#"[{"allowedMetrics":[{"name":"x","help":"h","type":"gauge"}]}]"#,
        )])
        .expect_err("bad type");
        assert!(e.contains("ALLOWLIST_JSON[0]") && e.contains('x'), "{e}");
        let e = settings(&[(
            "ALLOWLIST_JSON",
            r#"{"allowedMetrics":[{"name":"x_total","help":"h","type":"counter","maxValue":1e300}]}"#,
        )])
        .expect_err("a maxValue that could overflow a total");
        assert!(
            e.starts_with("ALLOWLIST_JSON: metric \"x_total\": field \"maxValue\": "),
            "{e}"
        );
        let e = settings(&[(
            "ALLOWLIST_JSON",
            r#"{"allowedMetrics":[{"name":"x_total","help":"h","type":"counter","labels":[{"name":"v","allowedValues":[""]}]}]}"#,
        )])
        .expect_err("an empty label value");
        assert!(e.contains("\"labels[0].allowedValues[0]\""), "{e}");
        assert!(settings(&[("SHARDS", "0")]).is_err());
        assert!(settings(&[("SHARDS", "many")]).is_err());
        assert!(settings(&[("BROWSER_PACK", "yes")]).is_err());
        for (var, value) in [
            ("RATE_LIMIT", "lots"),
            ("RATE_LIMIT", "-5"),
            ("RATE_BURST", "0"),
            ("RATE_LIMIT_CLIENTS", "0"),
        ] {
            let e = settings(&[(var, value)]).expect_err("bad rate limit");
            assert!(e.starts_with(var), "{e}");
        }
    }

    #[test]
    fn rate_limit_vars() {
        let s = settings(&[
            ("RATE_LIMIT", "2"),
            ("RATE_BURST", "3"),
            ("RATE_LIMIT_CLIENTS", "100"),
        ])
        .expect("ok");
        assert_eq!(
            s.rate_limit,
            RateLimit {
                per_second: 2.0,
                burst: 3.0,
                max_clients: 100
            }
        );
        let s = settings(&[("RATE_LIMIT", "0")]).expect("off");
        assert!(!s.rate_limit.is_on());
    }

    #[test]
    fn origins_shards_and_token() {
        let s = settings(&[
            ("ALLOWED_ORIGINS", "https://a.example, https://b.example"),
            ("SHARDS", "16"),
            ("EXPORT_TOKEN", "t0ken"),
        ])
        .expect("ok");
        assert!(s.cors.allows(Some("https://b.example")));
        assert!(!s.cors.allows(Some("https://c.example")));
        assert_eq!(s.shards, 16);
        assert_eq!(s.export_token.as_deref(), Some("t0ken"));
    }
}
