//! What every ingest adapter answers, as plain data: CORS, the store-failure answer and the
//! error bodies for unknown paths and methods. Adapters turn [`Response`] into their platform's
//! response type.

use std::borrow::Cow;

use smallvec::SmallVec;

/// Response headers: names, and values that are mostly constants (kept without copying).
pub type Headers = SmallVec<[(&'static str, Cow<'static, str>); 2]>;

/// Seconds a client is asked to wait after a store failure.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// Path of the push endpoint.
pub const RECORD_PATH: &str = "/record";
/// Path the original snippet loads the client from.
pub const CLIENT_PATH: &str = "/static/aggregatorClient.js";

/// A platform-free HTTP response: what every ingest answers, headers (CORS included) and all.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Headers,
    /// The body (JSON for every answer but the assets'; empty for 204 and `HEAD`).
    pub body: Cow<'static, str>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: String) -> Self {
        Response {
            status,
            headers: smallvec::smallvec![("content-type", "application/json".into())],
            body: body.into(),
        }
    }

    /// A JSON error `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        Response::json(status, body)
    }
}

/// The answer when the store could not take a push: 503 with `Retry-After`. Nothing of the push
/// was applied, so the client may send it again.
pub fn store_unavailable() -> Response {
    let mut r = Response::error(
        503,
        "store_unavailable",
        "the push could not be stored and nothing of it was applied; retry later",
    );
    r.headers
        .push(("retry-after", RETRY_AFTER_SECONDS.to_string().into()));
    r
}

/// 404 for an unknown path.
pub fn not_found() -> Response {
    Response::error(404, "not_found", "no such endpoint; push to POST /record")
}

/// 405 for a known path with the wrong method.
pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = Response::error(405, "method_not_allowed", &format!("use {allow}"));
    r.headers.push(("allow", allow.into()));
    r
}

/// Which origins may push. Browsers enforce CORS only on reading answers, and a `text/plain`
/// beacon needs no preflight, so pushes whose `Origin` is not allowed are also refused
/// ([`crate::Reason::OriginNotAllowed`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Cors {
    /// Any origin (the default, like the original aggregator).
    #[default]
    Any,
    /// Only these origins (exact `scheme://host[:port]`).
    List(Vec<String>),
}

impl Cors {
    /// From a comma-separated list; `*` or empty means any origin.
    pub fn parse(spec: &str) -> Cors {
        let list: Vec<String> = spec
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if list.is_empty() || list.iter().any(|s| s == "*") {
            Cors::Any
        } else {
            Cors::List(list)
        }
    }

    /// Whether a request with this `Origin` header may push. Requests without one (not from a
    /// browser page) are allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (Cors::Any, _) | (_, None) => true,
            (Cors::List(list), Some(o)) => list.iter().any(|a| a == o),
        }
    }

    /// CORS headers for an answer to a request with this `Origin`.
    pub fn headers(&self, origin: Option<&str>) -> Headers {
        match self {
            Cors::Any => smallvec::smallvec![("access-control-allow-origin", "*".into())],
            Cors::List(_) => match origin {
                Some(o) if self.allows(Some(o)) => smallvec::smallvec![
                    ("access-control-allow-origin", o.to_owned().into()),
                    ("vary", "Origin".into()),
                ],
                _ => smallvec::smallvec![("vary", "Origin".into())],
            },
        }
    }

    /// The answer to an `OPTIONS` preflight.
    pub fn preflight(&self, origin: Option<&str>) -> Response {
        let mut headers = self.headers(origin);
        headers.push(("access-control-allow-methods", "POST, GET, OPTIONS".into()));
        headers.push(("access-control-allow-headers", "Content-Type".into()));
        headers.push(("access-control-max-age", "86400".into()));
        Response {
            status: 204,
            headers,
            body: Cow::Borrowed(""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_any_and_list() {
        assert_eq!(Cors::parse(""), Cors::Any);
        assert_eq!(Cors::parse("*"), Cors::Any);
        let c = Cors::parse("https://a.example, https://b.example/");
        assert_eq!(
            c,
            Cors::List(vec!["https://a.example".into(), "https://b.example".into()])
        );
        assert!(c.allows(None));
        assert!(c.allows(Some("https://b.example")));
        assert!(!c.allows(Some("https://evil.example")));
        assert_eq!(
            c.headers(Some("https://a.example"))[0],
            ("access-control-allow-origin", "https://a.example".into())
        );
        assert!(
            c.headers(Some("https://evil.example"))
                .iter()
                .all(|(k, _)| *k != "access-control-allow-origin")
        );
        let p = Cors::Any.preflight(Some("https://x.example"));
        assert_eq!(p.status, 204);
        assert!(
            p.headers
                .iter()
                .any(|(k, v)| *k == "access-control-allow-methods" && v.contains("POST"))
        );
    }

    #[test]
    fn store_unavailable_says_retry_after() {
        let r = store_unavailable();
        assert_eq!(r.status, 503);
        assert!(r.headers.contains(&("retry-after", "1".into())));
        assert!(r.body.contains("\"error\":\"store_unavailable\""));
    }
}
