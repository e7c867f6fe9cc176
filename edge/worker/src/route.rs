//! The path and query of a request URL, read without a URL parser: the Worker needs only these
//! two, and a full parser (the `url` crate, with its IDNA tables) is about a fifth of the upload.
//! The runtime hands the Worker absolute, already normalised URLs.

/// Splits an absolute URL (`https://host/path?query#fragment`) into its path (`/` when it has
/// none) and its query (without `?`; `None` when it has none). The fragment is dropped.
pub fn split(url: &str) -> (&str, Option<&str>) {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (path_and_query, rooted) = match after_scheme.find(['/', '?']) {
        Some(i) => (&after_scheme[i..], after_scheme[i..].starts_with('/')),
        None => ("", false),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    (if rooted { path } else { "/" }, query)
}

/// The first value of query parameter `name`, as written (names and values pum uses need no
/// decoding: shard names are digits).
pub fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_path_and_query() {
        assert_eq!(
            split("https://h/record?batch=x"),
            ("/record", Some("batch=x"))
        );
        assert_eq!(split("https://h/export"), ("/export", None));
        assert_eq!(split("https://h"), ("/", None));
        assert_eq!(split("https://h?x=1"), ("/", Some("x=1")));
        assert_eq!(
            split("http://h:8787/a/b?c=d&e#frag"),
            ("/a/b", Some("c=d&e"))
        );
        assert_eq!(split("https://h/p?"), ("/p", Some("")));
        assert_eq!(split("https://h/p#x?y"), ("/p", None));
    }

    #[test]
    fn finds_the_first_value() {
        let q = Some("shard=3&x&shard=4&y=");
        assert_eq!(param(q, "shard"), Some("3"));
        assert_eq!(param(q, "x"), Some(""));
        assert_eq!(param(q, "y"), Some(""));
        assert_eq!(param(q, "z"), None);
        assert_eq!(param(None, "shard"), None);
    }
}
