//! Fuzzes `POST /record`'s parse and validate ([`Ingest::push`]) over the example allowlist.
//!
//! The first byte of the input picks the `Content-Type` (seeds written by `scripts/fuzz.sh` start
//! with `0`, `application/json`); the rest is the body. On any input the push must not panic and
//! must answer as DESIGN.md says: 200 or a 4xx, a JSON body, every sample of an array accounted
//! for (accepted or rejected, by index), nothing outside the allowlist in the delta, and a delta
//! that survives the snapshot encoding unchanged.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pum_shared::{Aggregate, Allowlist, Ingest, Limits, Reason, SeriesValue};
use serde_json::value::RawValue;

static INGEST: LazyLock<Ingest> =
    LazyLock::new(|| Ingest::new(Allowlist::example(), Limits::default()));

/// Picked by the first byte modulo 8; the ASCII digits `0`..`7` pick the entry of that index.
const CONTENT_TYPES: [Option<&str>; 8] = [
    Some("application/json"),
    Some("text/plain;charset=UTF-8"),
    None,
    Some("application/x-www-form-urlencoded"),
    Some("Application/JSON; charset=utf-8"),
    Some("text/plain"),
    Some(""),
    Some("text/html"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let ingest = &*INGEST;
    let out = ingest.push(content_type, body);

    assert!(
        out.status == 200 || (400..500).contains(&out.status),
        "status {}: {}",
        out.status,
        out.body
    );
    let answer: serde_json::Value =
        serde_json::from_str(&out.body).expect("the answer is JSON");

    match out.refused {
        None => {
            assert_eq!(out.status, 200, "{}", out.body);
            assert!(out.accepted > 0, "{}", out.body);
            assert_eq!(
                answer.get("accepted").and_then(serde_json::Value::as_u64),
                Some(out.accepted as u64),
                "{}",
                out.body
            );
        }
        Some(reason) => {
            assert_eq!(out.status, reason.status(), "{}", out.body);
            assert_eq!(out.accepted, 0, "{}", out.body);
            assert_eq!(
                answer.get("error").and_then(serde_json::Value::as_str),
                Some(reason.as_str()),
                "{}",
                out.body
            );
        }
    }

    // A push that was read as an array (not refused, or refused only because nothing in it was
    // valid) accounts for every sample: accepted or rejected by index, once each, in order.
    if matches!(out.refused, None | Some(Reason::NoValidSamples)) {
        let samples: Vec<&RawValue> =
            serde_json::from_slice(body).expect("a push read as samples is a JSON array");
        assert_eq!(
            out.accepted + out.rejected.len(),
            samples.len(),
            "{}",
            out.body
        );
        assert!(
            out.rejected.windows(2).all(|w| w[0].index < w[1].index),
            "{}",
            out.body
        );
        assert!(
            out.rejected.iter().all(|r| r.index < samples.len()),
            "{}",
            out.body
        );
        assert_eq!(
            answer
                .get("rejected")
                .and_then(serde_json::Value::as_array)
                .map(Vec::len),
            Some(out.rejected.len()),
            "{}",
            out.body
        );
    } else {
        assert!(out.rejected.is_empty(), "{}", out.body);
    }
    if out.accepted == 0 {
        assert!(
            out.delta.iter().all(|(k, _)| k.metric().starts_with("pum_")),
            "a push with nothing valid records only pum's own counters: {:?}",
            out.delta
        );
    }

    // Cardinality stays bounded: every series of the delta is allowlisted, label by label, and
    // a histogram has its configured buckets.
    for (key, value) in out.delta.iter() {
        let spec = ingest
            .allowlist()
            .get(key.metric())
            .unwrap_or_else(|| panic!("{} is not allowlisted", key.metric()));
        for (name, value) in key.labels() {
            assert!(
                spec.label(name).is_some_and(|l| l.allows(value)),
                "{}{{{name}={value:?}}} is not allowlisted",
                key.metric()
            );
        }
        if let SeriesValue::Histogram { buckets, .. } = value {
            assert_eq!(buckets.len(), spec.bucket_count(), "{}", key.metric());
        }
    }

    let text = out.delta.to_json();
    let back = Aggregate::from_json(&text).expect("the delta's snapshot decodes");
    assert_eq!(back, out.delta, "the delta round-trips through its snapshot");
});
