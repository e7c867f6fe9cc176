//! What a shard publishes to Workers KV, under its own key: its folded totals and the
//! allowlists they were validated against, so that a reader renders them without a copy of the
//! allowlist.
//!
//! ```json
//! {"allowlists":[<description>, ...],"snapshot":{"v":1,"series":[...]}}
//! ```
//!
//! Each description is an allowlist's canonical JSON ([`pum_shared::Allowlist::description`]);
//! the snapshot is `pum-shared`'s portable format. A value an earlier version wrote, a bare
//! snapshot, reads as one with no allowlists.

use pum_shared::Aggregate;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Prefix of the KV keys the shards write.
pub const KV_PREFIX: &str = "shard/";

/// The KV key of a shard's publication.
pub fn kv_key(shard: &str) -> String {
    format!("{KV_PREFIX}{shard}")
}

/// The publication of `totals` under the allowlists `descriptions` (each JSON).
pub fn publication<'a>(
    descriptions: impl IntoIterator<Item = &'a str>,
    totals: &Aggregate,
) -> String {
    let mut out = String::from(r#"{"allowlists":["#);
    for (i, d) in descriptions.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(d.trim());
    }
    out.push_str(r#"],"snapshot":"#);
    out.push_str(&totals.to_json());
    out.push('}');
    out
}

/// A publication read back, its parts as the JSON text they were written as.
#[derive(Debug)]
pub struct Publication<'a> {
    /// The allowlists' descriptions.
    pub allowlists: Vec<&'a RawValue>,
    /// The totals' snapshot.
    pub snapshot: &'a RawValue,
}

impl<'a> Publication<'a> {
    /// Reads a publication (or a bare snapshot, as an earlier version wrote).
    pub fn parse(text: &'a str) -> Result<Publication<'a>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(borrow, default)]
            allowlists: Vec<&'a RawValue>,
            #[serde(borrow)]
            snapshot: Option<&'a RawValue>,
        }
        let wire: Wire<'a> = serde_json::from_str(text)?;
        Ok(match wire.snapshot {
            Some(snapshot) => Publication {
                allowlists: wire.allowlists,
                snapshot,
            },
            None => Publication {
                allowlists: Vec::new(),
                snapshot: serde_json::from_str(text)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pum_shared::SeriesKey;

    #[test]
    fn a_publication_reads_back_and_so_does_a_bare_snapshot() {
        let mut totals = Aggregate::new();
        totals.add_counter(SeriesKey::new("a_total", &[("k", "v")]), 5);
        let text = publication([r#"{"x":1}"#, r#" {"y":[2]} "#], &totals);
        let p = Publication::parse(&text).expect("parses");
        let got: Vec<&str> = p.allowlists.iter().map(|r| r.get()).collect();
        assert_eq!(got, [r#"{"x":1}"#, r#"{"y":[2]}"#]);
        assert_eq!(
            Aggregate::from_json(p.snapshot.get()).expect("snapshot"),
            totals
        );
        let bare = totals.to_json();
        let p = Publication::parse(&bare).expect("a bare snapshot");
        assert!(p.allowlists.is_empty());
        assert_eq!(p.snapshot.get(), bare);
        assert!(Publication::parse("{broken").is_err());
        assert_eq!(kv_key("3"), "shard/3");
    }
}
