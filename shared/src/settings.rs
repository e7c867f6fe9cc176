//! One vocabulary of settings for every ingest. Standalone reads them as environment variables
//! (and flags), the Lambda as environment variables, the Worker as vars (`wrangler.toml`
//! `[vars]`, `wrangler secret put`): the same names, values and defaults everywhere.
//!
//! | name | default | what |
//! | --- | --- | --- |
//! | `PUM_ALLOWLIST_JSON` | the build's or the example allowlist | the allowlist as JSON text: one `{"allowedMetrics": [...]}` object, or an array of them (one per file of a config directory). Standalone reads files instead (`--config`, `PUM_CONFIG`) |
//! | `PUM_BROWSER_PACK` | `true` | whether the built-in browser pack (navigation timing, Core Web Vitals) is allowed too |
//! | `PUM_ALLOWED_ORIGINS` | `*` | origins allowed to push, comma-separated; `*` for any |
//! | `PUM_RATE_LIMIT` | `50` | pushes a second one client address may send; `0` turns rate limiting off |
//! | `PUM_RATE_BURST` | `500` | pushes a client may send at once before the rate applies |
//! | `PUM_RATE_LIMIT_CLIENTS` | `65536` | client addresses tracked at most (bounds memory: about 2 MB) |
//!
//! Each platform adds its own (standalone's listeners and timeouts, the Worker's `PUM_SHARDS`,
//! the Lambda's `PUM_TABLE`), with the same prefix.

use crate::allowlist::{Allowlist, EXAMPLE_ALLOWLIST};
use crate::app::Settings;
use crate::http::Cors;
use crate::ingest::Ingest;
use crate::limits::Limits;
use crate::ratelimit::RateLimit;

/// The allowlist as JSON text.
pub const ALLOWLIST_JSON: &str = "PUM_ALLOWLIST_JSON";
/// Whether the browser pack is allowed.
pub const BROWSER_PACK: &str = "PUM_BROWSER_PACK";
/// Origins allowed to push.
pub const ALLOWED_ORIGINS: &str = "PUM_ALLOWED_ORIGINS";
/// The rate limit's variables: pushes a second, burst, clients tracked.
pub const RATE_LIMIT: [&str; 3] = ["PUM_RATE_LIMIT", "PUM_RATE_BURST", "PUM_RATE_LIMIT_CLIENTS"];

/// Reads a boolean setting: `true`/`1` or `false`/`0`; unset or empty is `default`.
pub fn flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(format!(
            "{name} is {other:?}; it must be \"true\" or \"false\""
        )),
    }
}

/// The allowlist from `PUM_ALLOWLIST_JSON` and `PUM_BROWSER_PACK`, read through `var`; without
/// `PUM_ALLOWLIST_JSON`, `built_in` (sources compiled into the build: name and text), or the
/// example allowlist when there are none. The error names the variable, metric and field.
pub fn allowlist(
    var: &impl Fn(&str) -> Option<String>,
    built_in: &[(String, String)],
) -> Result<Allowlist, String> {
    let browser_pack = flag(BROWSER_PACK, var(BROWSER_PACK).as_deref(), true)?;
    let compiled = match var(ALLOWLIST_JSON).filter(|s| !s.trim().is_empty()) {
        Some(text) => {
            let sources = json_sources(&text)?;
            Allowlist::compile(
                sources.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                browser_pack,
            )
        }
        None if !built_in.is_empty() => Allowlist::compile(
            built_in.iter().map(|(n, t)| (n.as_str(), t.as_str())),
            browser_pack,
        ),
        None => Allowlist::compile(
            [("built-in example allowlist", EXAMPLE_ALLOWLIST)],
            browser_pack,
        ),
    };
    compiled.map_err(|e| e.to_string())
}

/// Splits `PUM_ALLOWLIST_JSON` into named sources: an object is one source, an array holds one
/// per element.
fn json_sources(text: &str) -> Result<Vec<(String, String)>, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("{ALLOWLIST_JSON} is not valid JSON: {e}"))?;
    match value {
        serde_json::Value::Array(items) => Ok(items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{ALLOWLIST_JSON}[{i}]"), item.to_string()))
            .collect()),
        _ => Ok(vec![(ALLOWLIST_JSON.to_owned(), text.to_owned())]),
    }
}

/// The ingest's settings over `allowlist`, the rest read through `var`: origins and rate limit,
/// with default limits, which the allowlist is checked against ([`Limits::check`]). The error
/// names the variable.
pub fn ingest(
    var: &impl Fn(&str) -> Option<String>,
    allowlist: Allowlist,
) -> Result<Settings, String> {
    let limits = Limits::default();
    limits.check(&allowlist).map_err(|e| e.to_string())?;
    Ok(Settings {
        ingest: Ingest::new(allowlist, limits),
        cors: Cors::parse(var(ALLOWED_ORIGINS).as_deref().unwrap_or("*")),
        rate_limit: RateLimit::from_vars(RATE_LIMIT, var)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_are_the_example_allowlist_with_the_pack_any_origin_default_rate() {
        let var = vars(&[]);
        let s = ingest(&var, allowlist(&var, &[]).expect("allowlist")).expect("settings");
        let list = s.ingest.allowlist();
        assert!(list.get("demo_feature_usage_total").is_some());
        assert!(list.get("browser_lcp_seconds").is_some());
        assert_eq!(s.cors, Cors::Any);
        assert_eq!(s.rate_limit, RateLimit::default());
    }

    #[test]
    fn own_allowlist_built_in_sources_and_the_pack_switch() {
        let one = r#"{"allowedMetrics":[{"name":"a_total","help":"h","type":"counter"}]}"#;
        let var = vars(&[(ALLOWLIST_JSON, one), (BROWSER_PACK, "false")]);
        let list = allowlist(&var, &[]).expect("compiles");
        assert!(list.get("a_total").is_some());
        assert!(list.get("demo_feature_usage_total").is_none());
        assert!(list.get("browser_lcp_seconds").is_none());
        let two = format!(
            r#"[{one}, {{"allowedMetrics":[{{"name":"b_total","help":"h","type":"counter"}}]}}]"#
        );
        let list = allowlist(&vars(&[(ALLOWLIST_JSON, &two)]), &[]).expect("compiles");
        assert!(list.get("b_total").is_some() && list.get("browser_lcp_seconds").is_some());
        let built_in = [("file.json".to_owned(), one.to_owned())];
        let list = allowlist(&vars(&[]), &built_in).expect("compiles");
        assert!(list.get("a_total").is_some());
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let e = allowlist(&vars(&[(ALLOWLIST_JSON, "{")]), &[]).expect_err("bad json");
        assert!(e.contains(ALLOWLIST_JSON), "{e}");
        let e = allowlist(
            &vars(&[(
                ALLOWLIST_JSON,
                r#"[{"allowedMetrics":[{"name":"x","help":"h","type":"gauge"}]}]"#,
            )]),
            &[],
        )
        .expect_err("bad type");
        assert!(
            e.contains("PUM_ALLOWLIST_JSON[0]") && e.contains('x'),
            "{e}"
        );
        let e = allowlist(&vars(&[(BROWSER_PACK, "yes")]), &[]).expect_err("bad flag");
        assert!(e.starts_with(BROWSER_PACK), "{e}");
        let big = r#"{"allowedMetrics":[{"name":"x_total","help":"h","type":"counter","maxValue":1e300}]}"#;
        let var = vars(&[(ALLOWLIST_JSON, big)]);
        let e = ingest(&var, allowlist(&var, &[]).expect("compiles")).expect_err("overflow");
        assert!(e.contains("maxValue"), "{e}");
        for (name, value) in [
            ("PUM_RATE_LIMIT", "lots"),
            ("PUM_RATE_BURST", "0"),
            ("PUM_RATE_LIMIT_CLIENTS", "0"),
        ] {
            let var = vars(&[(name, value)]);
            let e = ingest(&var, Allowlist::example()).expect_err("bad rate limit");
            assert!(e.starts_with(name), "{e}");
        }
    }
}
