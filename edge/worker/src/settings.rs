//! The Worker's configuration, read from its vars and secrets (`wrangler.toml` `[vars]`,
//! `wrangler secret put`, `wrangler dev --var`) and checked once per isolate.
//!
//! The ingest's settings are the vocabulary every ingest shares ([`pum_shared::settings`]:
//! `PUM_ALLOWLIST_JSON`, `PUM_BROWSER_PACK`, `PUM_ALLOWED_ORIGINS`, `PUM_RATE_LIMIT`,
//! `PUM_RATE_BURST`, `PUM_RATE_LIMIT_CLIENTS`); without `PUM_ALLOWLIST_JSON`, the allowlist
//! compiled in from `PUM_ALLOWLIST` at build time (build.rs) applies, else the example. The
//! Worker adds:
//!
//! | name | default | what |
//! | --- | --- | --- |
//! | `PUM_SHARDS` | `1` | Durable Objects pushes are spread over (1 to 1024) |
//! | `PUM_FOLD_SECONDS` | `10` | seconds between a shard's folds while pushes arrive (1 to 3600) |
//! | `PUM_PUBLISH_SECONDS` | `30` | seconds between a shard's KV writes while its totals change (1 to 3600): how long before a push shows on `/metrics`, and what KV costs |
//! | `PUM_COMMIT_WAIT_MS` | `25` | milliseconds a shard waits to group pushes into one row write (0 to 1000) |
//! | `PUM_EXPORT_TOKEN` | none | bearer token of `GET /export`; a secret. Without it the export refuses every request. |
//!
//! The rate limit is kept in each isolate's memory, not shared across isolates or locations:
//! Cloudflare runs many isolates of a Worker, in every location, so a client spread over `n` of
//! them may send up to `n` times the limit. It stops one client hammering one location cheaply
//! (a refused push costs no Durable Object request); for a limit across all of Cloudflare, add a
//! WAF rate limiting rule in front (docs/cloudflare.md). The client is `CF-Connecting-IP` (an
//! IPv6 client by its /64).

use pum_shared::app;
use pum_shared::settings;

/// The allowlist compiled in at build time from `PUM_ALLOWLIST` (see build.rs), as a JSON array
/// of `[file name, text]`; empty when the build had none.
const BUILT_IN: &str = include_str!(concat!(env!("OUT_DIR"), "/allowlist.json"));

/// Shards pushes are spread over.
pub const SHARDS: &str = "PUM_SHARDS";
/// The export's bearer token.
pub const EXPORT_TOKEN: &str = "PUM_EXPORT_TOKEN";

/// Default number of shards. One Durable Object takes about 1,000 requests a second, and
/// pushes to one shard share its row writes (group commit) and its folds and KV writes, so one
/// is both enough and cheapest up to several hundred pushes a second (docs/cloudflare.md, "What
/// it costs").
pub const DEFAULT_SHARDS: u32 = 1;
/// Most shards a deployment may use.
pub const MAX_SHARDS: u32 = 1024;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ingest's settings: allowlist, limits, origins, rate limit.
    pub app: app::Settings,
    /// Number of shards.
    pub shards: u32,
    /// The shards' timing (read by the shards themselves; checked here, so that a bad var
    /// refuses pushes with `config_invalid` instead of being ignored).
    pub timing: pum_shard::Timing,
    /// The export endpoint's bearer token, if one is set.
    pub export_token: Option<String>,
}

impl Settings {
    /// Reads the settings through `var`, which returns a var's text (JSON text for a var that
    /// is a TOML table or array) or `None` when it is unset. An error names the var and, for the
    /// allowlist, the metric and field.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let built_in: Vec<(String, String)> = serde_json::from_str(BUILT_IN).unwrap_or_default();
        let allowlist = settings::allowlist(&var, &built_in)?;
        let app = settings::ingest(&var, allowlist)?;
        let shards = match var(SHARDS).as_deref().map(str::trim) {
            None | Some("") => DEFAULT_SHARDS,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_SHARDS).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "{SHARDS} is {s:?}; it must be a whole number from 1 to {MAX_SHARDS}"
                    ));
                }
            },
        };
        let timing = pum_shard::Timing::from_vars(&var)?;
        Ok(Settings {
            app,
            shards,
            timing,
            export_token: var(EXPORT_TOKEN).filter(|t| !t.is_empty()),
        })
    }
}

/// A var's text: a string var as is, a TOML table or array var as JSON.
#[cfg(target_arch = "wasm32")]
pub(crate) fn env_text(env: &worker::Env, name: &str) -> Option<String> {
    let v = js_sys::Reflect::get(env, &wasm_bindgen::JsValue::from_str(name)).ok()?;
    if v.is_undefined() || v.is_null() {
        return None;
    }
    if let Some(s) = v.as_string() {
        return Some(s);
    }
    js_sys::JSON::stringify(&v).ok().and_then(|s| s.as_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pum_shared::RateLimit;
    use pum_shared::http::Cors;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_example_allowlist_any_origin_one_shard_no_token() {
        let s = settings(&[]).expect("defaults");
        let list = s.app.ingest.allowlist();
        assert!(list.get("demo_feature_usage_total").is_some());
        assert!(list.get("browser_lcp_seconds").is_some());
        assert_eq!(s.app.cors, Cors::Any);
        assert_eq!(s.app.rate_limit, RateLimit::default());
        assert_eq!(s.shards, DEFAULT_SHARDS);
        assert_eq!(s.export_token, None);
    }

    #[test]
    fn the_shared_vocabulary_applies() {
        let one = r#"{"allowedMetrics":[{"name":"a_total","help":"h","type":"counter"}]}"#;
        let s = settings(&[
            ("PUM_ALLOWLIST_JSON", one),
            ("PUM_BROWSER_PACK", "false"),
            ("PUM_ALLOWED_ORIGINS", "https://a.example"),
            ("PUM_RATE_LIMIT", "0"),
        ])
        .expect("ok");
        let list = s.app.ingest.allowlist();
        assert!(list.get("a_total").is_some());
        assert!(list.get("browser_lcp_seconds").is_none());
        assert!(!s.app.cors.allows(Some("https://b.example")));
        assert!(!s.app.rate_limit.is_on());
    }

    #[test]
    fn shards_and_token() {
        let s = settings(&[("PUM_SHARDS", "16"), ("PUM_EXPORT_TOKEN", "t0ken")]).expect("ok");
        assert_eq!(s.shards, 16);
        assert_eq!(s.export_token.as_deref(), Some("t0ken"));
        assert_eq!(
            settings(&[("PUM_EXPORT_TOKEN", "")])
                .expect("ok")
                .export_token,
            None
        );
    }

    #[test]
    fn bad_settings_name_the_var() {
        for (var, value) in [
            ("PUM_SHARDS", "0"),
            ("PUM_SHARDS", "many"),
            ("PUM_ALLOWLIST_JSON", "{"),
            ("PUM_BROWSER_PACK", "yes"),
            ("PUM_RATE_BURST", "0"),
            ("PUM_FOLD_SECONDS", "0"),
            ("PUM_PUBLISH_SECONDS", "an hour"),
            ("PUM_COMMIT_WAIT_MS", "5000"),
        ] {
            let e = settings(&[(var, value)]).expect_err("refused");
            assert!(e.contains(var), "{var}: {e}");
        }
    }
}
